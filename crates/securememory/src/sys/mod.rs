//! The operating-system layer: one safe(ish) function per OS operation.
//!
//! Everything above this module speaks of *operations* (reserve address space, commit pages,
//! protect, lock, exclude from dumps, exclude from fork, release); this module maps each one onto
//! the calls the running OS offers, one file per OS family:
//!
//! - `unix.rs`: the POSIX calls every Unix shares (`mmap`, `mprotect`, `mlock`,
//!   `munmap`, `getrlimit`, `pthread_atfork`);
//! - `linux.rs`: `memfd_secret(2)`, `MADV_DONTDUMP`, `MADV_WIPEONFORK`, `MADV_DONTFORK`;
//! - `bsd.rs`: macOS, FreeBSD and OpenBSD (`MAP_NOCORE`, `MAP_CONCEAL`, `minherit(2)`);
//! - `windows.rs`: `VirtualAlloc`, `VirtualLock`, `VirtualProtect`, `VirtualFree`.
//!
//! The module calls `libc` (and `windows-sys`) directly rather than going through `rustix`:
//! `memfd_secret(2)`, `minherit(2)` and the BSD map flags are not all exposed by `rustix`, and a
//! handful of thin wrappers with man-page references is easier to audit than two layers.
//!
//! Errors are `std::io::Error` carrying the OS error code; the layer above names the operation.

use std::io;
use std::ptr::NonNull;

#[cfg(unix)]
mod unix;

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
use linux as os;

#[cfg(all(unix, not(target_os = "linux")))]
mod bsd;
#[cfg(all(unix, not(target_os = "linux")))]
use bsd as os;

#[cfg(windows)]
mod windows;
#[cfg(windows)]
use windows as os;

#[cfg(test)]
pub(crate) mod fault;

pub(crate) use os::call;

/// What the data pages of a region may be used for right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PageProtection {
    /// Any touch faults.
    NoAccess,
    /// Reads are allowed, writes fault.
    ReadOnly,
    /// Reads and writes are allowed.
    ReadWrite,
}

/// The operations that the fault injector of the test build can make fail, and single calls
/// inside one where an operation makes several.
#[cfg(test)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Reserve,
    Commit,
    MapSecretMem,
    Protect,
    Lock,
    Unlock,
    ExcludeFromDump,
    ExcludeFromFork,
    Random,
    /// One `VirtualLock` call of Windows' [`lock`], which calls it again after raising the
    /// working set.
    #[cfg(windows)]
    VirtualLock,
    /// The `SetProcessWorkingSetSize` call of Windows' [`lock`].
    #[cfg(windows)]
    SetWorkingSetSize,
}

macro_rules! inject {
    ($op:ident) => {
        #[cfg(test)]
        fault::check(Op::$op)?;
    };
}

/// The size of a virtual-memory page, in bytes (`sysconf(_SC_PAGESIZE)`, `GetSystemInfo`).
pub(crate) fn page_size() -> usize {
    use std::sync::OnceLock;
    static PAGE_SIZE: OnceLock<usize> = OnceLock::new();
    *PAGE_SIZE.get_or_init(os::page_size)
}

/// Reserves `len` bytes of address space that fault on any touch and hold no memory yet.
///
/// On Unix this is an anonymous private `PROT_NONE` mapping (with `MAP_NOCORE` or `MAP_CONCEAL`
/// where the OS has one); on Windows a `MEM_RESERVE` allocation.
pub(crate) fn reserve(len: usize) -> io::Result<NonNull<u8>> {
    inject!(Reserve);
    let reserved = os::reserve(len);
    #[cfg(test)]
    if let Ok(addr) = &reserved {
        fault::record_reservation(*addr, len);
    }
    reserved
}

/// Backs `[addr, addr + len)` inside a reservation with private anonymous memory, readable and
/// writable.
///
/// # Safety
/// The range must lie inside a reservation made by [`reserve`] and hold nothing the caller still
/// needs.
pub(crate) unsafe fn commit_anonymous(addr: NonNull<u8>, len: usize) -> io::Result<()> {
    inject!(Commit);
    // SAFETY: forwarded from the caller.
    unsafe { os::commit_anonymous(addr, len) }?;
    #[cfg(test)]
    fault::after_commit(addr, len);
    Ok(())
}

/// Whether secret memory (`memfd_secret(2)`) can be had.
#[derive(Debug)]
#[cfg_attr(not(target_os = "linux"), allow(dead_code))] // Only Linux has secret memory.
pub(crate) enum SecretMemSupport {
    Available,
    /// Refused for good (no such call, or forbidden); the answer is remembered.
    Unavailable(io::Error),
    /// Refused for now (descriptors or memory exhausted); the next call asks again.
    Failed(io::Error),
}

/// Whether this kernel offers `memfd_secret(2)` to this process.
pub(crate) fn secretmem_support() -> SecretMemSupport {
    os::secretmem_support()
}

/// Keeps `fork(3)` from running while held, so that a descriptor or shared mapping being set up
/// is never inherited half-protected. Hold it from before `memfd_secret(2)` until the mapping is
/// excluded from fork; nothing that locks, allocates or logs may run meanwhile.
#[cfg(target_os = "linux")]
pub(crate) use os::ForkExclusion;

/// Without secret memory there is nothing a fork could inherit half-protected: this holds nothing.
#[cfg(not(target_os = "linux"))]
pub(crate) struct ForkExclusion(());

#[cfg(not(target_os = "linux"))]
impl ForkExclusion {
    pub(crate) fn hold() -> ForkExclusion {
        ForkExclusion(())
    }
}

/// What ran short when the OS refused to map or lock memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(target_os = "linux"), allow(dead_code))] // Only Linux tells them apart.
pub(crate) enum Shortage {
    /// The locked-memory limit (`RLIMIT_MEMLOCK`, the Windows working-set quota).
    LockLimit,
    /// The per-process limit on mappings (`vm.max_map_count`).
    MapCount { in_use: usize, limit: usize },
    /// Memory itself.
    Memory,
}

/// Which limit made `error` happen when `requested` bytes were mapped or (`locking`) locked;
/// `None` when the error is not a shortage. On Linux this reads the process's standing from
/// `/proc`; elsewhere it goes by the error code alone.
pub(crate) fn diagnose(error: &io::Error, requested: usize, locking: bool) -> Option<Shortage> {
    #[cfg(target_os = "linux")]
    {
        os::diagnose(error, requested, locking)
    }
    #[cfg(all(unix, not(target_os = "linux")))]
    {
        let _ = requested;
        let lock_limit = matches!(
            error.raw_os_error(),
            Some(libc::ENOMEM | libc::EPERM | libc::EAGAIN)
        );
        (locking && lock_limit).then_some(Shortage::LockLimit)
    }
    #[cfg(windows)]
    {
        let _ = requested;
        // ERROR_WORKING_SET_QUOTA (1453) and ERROR_NOT_ENOUGH_QUOTA (1816).
        let quota = matches!(error.raw_os_error(), Some(1453 | 1816));
        (locking && quota).then_some(Shortage::LockLimit)
    }
}

/// Bytes of memory this process can still get (the system's available memory, bounded by its
/// memory cgroup), where the OS says; `None` where it does not.
pub(crate) fn memory_available() -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        os::memory_available()
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

/// Backs `[addr, addr + len)` inside a reservation with secret memory (`memfd_secret(2)`),
/// readable and writable: memory removed from the kernel's direct map, locked by the kernel,
/// excluded from core dumps, and unreadable through `/proc/PID/mem` and `process_vm_readv`.
///
/// # Safety
/// As for [`commit_anonymous`].
pub(crate) unsafe fn map_secretmem(addr: NonNull<u8>, len: usize) -> io::Result<()> {
    inject!(MapSecretMem);
    // SAFETY: forwarded from the caller.
    unsafe { os::map_secretmem(addr, len) }
}

/// Changes the protection of committed pages (`mprotect(2)`, `VirtualProtect`).
///
/// # Safety
/// The range must be committed pages of a live reservation, and no reference into it may be
/// used in a way the new protection forbids.
pub(crate) unsafe fn protect(
    addr: NonNull<u8>,
    len: usize,
    prot: PageProtection,
) -> io::Result<()> {
    inject!(Protect);
    // SAFETY: forwarded from the caller.
    unsafe { os::protect(addr, len, prot) }
}

/// Locks committed pages in RAM so they are never swapped (`mlock(2)`, `VirtualLock`).
///
/// # Safety
/// The range must be committed pages of a live reservation, readable and writable.
pub(crate) unsafe fn lock(addr: NonNull<u8>, len: usize) -> io::Result<()> {
    inject!(Lock);
    // SAFETY: forwarded from the caller.
    unsafe { os::lock(addr, len) }
}

/// Unlocks pages locked by [`lock`] (`munlock(2)`, `VirtualUnlock`).
///
/// # Safety
/// The range must be committed pages of a live reservation.
pub(crate) unsafe fn unlock(addr: NonNull<u8>, len: usize) -> io::Result<()> {
    inject!(Unlock);
    // SAFETY: forwarded from the caller.
    unsafe { os::unlock(addr, len) }
}

/// Keeps the range out of core dumps. `Ok(false)` where the OS has no per-range mechanism
/// (macOS, NetBSD, Windows). FreeBSD, DragonFly and OpenBSD set it on the whole reservation in
/// [`reserve`] and report `Ok(true)` here without a call.
///
/// # Safety
/// The range must be committed pages of a live reservation.
pub(crate) unsafe fn exclude_from_dump(addr: NonNull<u8>, len: usize) -> io::Result<bool> {
    inject!(ExcludeFromDump);
    // SAFETY: forwarded from the caller.
    unsafe { os::exclude_from_dump(addr, len) }
}

/// Keeps the bytes of the range away from forked children: zero-filled there for anonymous
/// memory (`MADV_WIPEONFORK`, `minherit(INHERIT_ZERO)`), absent there for shared secret memory
/// (`MADV_DONTFORK`, `minherit(VM_INHERIT_NONE)`). `Ok(false)` where the OS has nothing of the
/// kind; `Ok(true)` on Windows, which cannot fork.
///
/// # Safety
/// The range must be committed pages of a live reservation.
pub(crate) unsafe fn exclude_from_fork(
    addr: NonNull<u8>,
    len: usize,
    secretmem: bool,
) -> io::Result<bool> {
    inject!(ExcludeFromFork);
    // SAFETY: forwarded from the caller.
    unsafe { os::exclude_from_fork(addr, len, secretmem) }
}

/// Returns a whole reservation to the OS (`munmap(2)`, `VirtualFree(MEM_RELEASE)`). Unmapping
/// also drops any memory lock on it.
///
/// # Safety
/// `addr`/`len` must be exactly a reservation made by [`reserve`]; nothing may use it after.
pub(crate) unsafe fn release(addr: NonNull<u8>, len: usize) -> io::Result<()> {
    // SAFETY: forwarded from the caller.
    unsafe { os::release(addr, len) }
}

/// The soft limit on locked memory in bytes (`getrlimit(RLIMIT_MEMLOCK)`); `None` when unlimited
/// or when the OS has no such limit.
pub(crate) fn memlock_limit() -> Option<u64> {
    os::memlock_limit()
}

/// Whether a forked child still has a region's data pages mapped (zero-filled) after
/// [`exclude_from_fork`], as opposed to having no mapping there at all.
pub(crate) fn child_keeps_data_mapping(secretmem: bool) -> bool {
    os::child_keeps_data_mapping(secretmem)
}

/// Lowers the soft `RLIMIT_CORE` of the whole process to zero, leaving the hard limit alone.
pub(crate) fn disable_core_dumps() -> io::Result<()> {
    os::disable_core_dumps()
}

/// A number that differs in a forked child from its parent's. On Linux it changes however the
/// child was made (a `MADV_WIPEONFORK` witness page); elsewhere it counts forks seen by
/// `pthread_atfork`.
///
/// The first call installs the fork handlers, so call it before anything worth protecting
/// exists.
pub(crate) fn fork_generation() -> u64 {
    os::fork_generation()
}
