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
//! Errors are [`OsError`]s: the call that failed, named as this OS names it, and the OS error.
//! Nothing above this module names a system call, an errno or a Windows error code; what the
//! layers above need to know of one (which limit ran short, what to do about it) they ask here.

use std::fmt;
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

use os::call;

/// An OS call that failed: which one (as this OS names it, e.g. `mlock` or `VirtualLock`) and
/// what the OS said.
#[derive(Debug)]
pub(crate) struct OsError {
    pub(crate) call: &'static str,
    pub(crate) source: io::Error,
}

impl OsError {
    fn of(call: &'static str) -> impl FnOnce(io::Error) -> OsError {
        move |source| OsError { call, source }
    }
}

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
    /// The probe of whether `memfd_secret(2)` is offered at all.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    ProbeSecretMem,
    /// Tagging pages with a protection key (`pkey_mprotect`).
    #[cfg_attr(
        not(all(target_os = "linux", target_arch = "x86_64")),
        allow(dead_code)
    )]
    Tag,
    /// One `VirtualLock` call of Windows' [`lock`], which calls it again after raising the
    /// working set.
    #[cfg(windows)]
    VirtualLock,
    /// The `SetProcessWorkingSetSize` call of Windows' [`lock`].
    #[cfg(windows)]
    SetWorkingSetSize,
}

macro_rules! inject {
    ($op:ident, $call:expr) => {
        #[cfg(test)]
        fault::check(Op::$op).map_err(OsError::of($call))?;
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
pub(crate) fn reserve(len: usize) -> Result<NonNull<u8>, OsError> {
    inject!(Reserve, call::RESERVE);
    let reserved = os::reserve(len).map_err(OsError::of(call::RESERVE));
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
pub(crate) unsafe fn commit_anonymous(addr: NonNull<u8>, len: usize) -> Result<(), OsError> {
    inject!(Commit, call::COMMIT);
    // SAFETY: forwarded from the caller.
    unsafe { os::commit_anonymous(addr, len) }.map_err(OsError::of(call::COMMIT))?;
    #[cfg(test)]
    fault::after_commit(addr, len);
    Ok(())
}

/// Whether secret memory (`memfd_secret(2)`) can be had.
#[derive(Debug)]
#[cfg_attr(not(target_os = "linux"), allow(dead_code))] // Only Linux has secret memory.
pub(crate) enum SecretMemSupport {
    Available,
    /// Refused for good (no such call, or forbidden), and why in words; the answer is
    /// remembered.
    Unavailable(String),
    /// Refused for now (descriptors or memory exhausted); the next call asks again.
    Failed(OsError),
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

/// The library's memory protection key (x86 PKU): allocated once, with access denied, and kept
/// for the life of the process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ProtectionKey(u32);

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
use linux::pkey;

/// The library's protection key, or why this process has none (no PKU in the CPU or kernel, or
/// every key taken).
pub(crate) fn protection_key() -> Result<ProtectionKey, String> {
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    {
        pkey::library_key().map(ProtectionKey)
    }
    #[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
    {
        Err("memory protection keys are used on Linux on x86_64 (PKU) only".into())
    }
}

#[cfg_attr(
    not(all(target_os = "linux", target_arch = "x86_64")),
    allow(unused_variables, dead_code)
)] // Elsewhere no key can be had, so none of this runs.
impl ProtectionKey {
    /// Tags committed pages with the key (`pkey_mprotect(2)`), readable and writable as far as
    /// the page tables go: only a thread whose rights open the key may touch them.
    ///
    /// # Safety
    /// The range must be committed pages of a live reservation, and no thread may be using them
    /// without a window open (they become inaccessible to it).
    pub(crate) unsafe fn tag(self, addr: NonNull<u8>, len: usize) -> Result<(), OsError> {
        #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
        {
            inject!(Tag, "pkey_mprotect");
            // SAFETY: forwarded from the caller.
            unsafe { pkey::tag(addr, len, self.0) }.map_err(OsError::of("pkey_mprotect"))
        }
        #[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
        {
            Ok(())
        }
    }

    /// Opens the key for the calling thread only (read-only unless `write`) and returns the
    /// rights found, for [`close`](Self::close). No system call.
    #[inline]
    pub(crate) fn open(self, write: bool) -> u32 {
        #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
        {
            pkey::open(self.0, write)
        }
        #[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
        {
            0
        }
    }

    /// Puts back the rights [`open`](Self::open) found; the thread's outermost window closes the
    /// key whatever was found.
    #[inline]
    pub(crate) fn close(self, found: u32, outermost: bool) {
        #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
        pkey::close(self.0, found, outermost);
    }
}

/// Takes a key's tag off committed pages (back to the default key, which every thread may
/// use), readable and writable.
///
/// # Safety
/// As for [`ProtectionKey::tag`].
#[cfg_attr(
    not(all(target_os = "linux", target_arch = "x86_64")),
    allow(dead_code)
)]
pub(crate) unsafe fn untag(addr: NonNull<u8>, len: usize) -> Result<(), OsError> {
    // SAFETY: forwarded from the caller; key 0 is the default key.
    unsafe { ProtectionKey(0).tag(addr, len) }
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

/// Which limit made `error` happen when `requested` bytes were mapped or locked; `None` when the
/// error is not a shortage. On Linux this reads the process's standing from
/// `/proc`; elsewhere it goes by the error code alone.
pub(crate) fn diagnose(error: &OsError, requested: usize) -> Option<Shortage> {
    let locking = error.call == call::LOCK;
    let error = &error.source;
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
pub(crate) unsafe fn map_secretmem(addr: NonNull<u8>, len: usize) -> Result<(), OsError> {
    inject!(MapSecretMem, call::SECRETMEM);
    // SAFETY: forwarded from the caller.
    unsafe { os::map_secretmem(addr, len) }.map_err(OsError::of(call::SECRETMEM))
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
) -> Result<(), OsError> {
    inject!(Protect, call::PROTECT);
    // SAFETY: forwarded from the caller.
    unsafe { os::protect(addr, len, prot) }.map_err(OsError::of(call::PROTECT))
}

/// Locks committed pages in RAM so they are never swapped (`mlock(2)`, `VirtualLock`).
///
/// # Safety
/// The range must be committed pages of a live reservation, readable and writable.
pub(crate) unsafe fn lock(addr: NonNull<u8>, len: usize) -> Result<(), OsError> {
    inject!(Lock, call::LOCK);
    // SAFETY: forwarded from the caller.
    unsafe { os::lock(addr, len) }.map_err(OsError::of(call::LOCK))
}

/// Unlocks pages locked by [`lock`] (`munlock(2)`, `VirtualUnlock`).
///
/// # Safety
/// The range must be committed pages of a live reservation.
pub(crate) unsafe fn unlock(addr: NonNull<u8>, len: usize) -> Result<(), OsError> {
    inject!(Unlock, call::UNLOCK);
    // SAFETY: forwarded from the caller.
    unsafe { os::unlock(addr, len) }.map_err(OsError::of(call::UNLOCK))
}

/// Keeps the range out of core dumps. `Ok(false)` where the OS has no per-range mechanism
/// (macOS, NetBSD, Windows). FreeBSD, DragonFly and OpenBSD set it on the whole reservation in
/// [`reserve`] and report `Ok(true)` here without a call.
///
/// # Safety
/// The range must be committed pages of a live reservation.
pub(crate) unsafe fn exclude_from_dump(addr: NonNull<u8>, len: usize) -> Result<bool, OsError> {
    inject!(ExcludeFromDump, call::EXCLUDE_FROM_DUMP);
    // SAFETY: forwarded from the caller.
    unsafe { os::exclude_from_dump(addr, len) }.map_err(OsError::of(call::EXCLUDE_FROM_DUMP))
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
) -> Result<bool, OsError> {
    let call = if secretmem {
        call::EXCLUDE_SECRETMEM_FROM_FORK
    } else {
        call::EXCLUDE_ANONYMOUS_FROM_FORK
    };
    inject!(ExcludeFromFork, call);
    // SAFETY: forwarded from the caller.
    unsafe { os::exclude_from_fork(addr, len, secretmem) }.map_err(OsError::of(call))
}

/// Returns a whole reservation to the OS (`munmap(2)`, `VirtualFree(MEM_RELEASE)`). Unmapping
/// also drops any memory lock on it. (On Unix, a part of a reservation may be unmapped too.)
///
/// # Safety
/// `addr`/`len` must be exactly a reservation made by [`reserve`] (or, on Unix, a part of one);
/// nothing may use it after.
pub(crate) unsafe fn unmap(addr: NonNull<u8>, len: usize) -> Result<(), OsError> {
    // SAFETY: forwarded from the caller.
    unsafe { os::release(addr, len) }.map_err(OsError::of(call::RELEASE))
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
pub(crate) fn disable_core_dumps() -> Result<(), OsError> {
    os::disable_core_dumps().map_err(OsError::of(call::CORE_LIMIT))
}

/// A number that differs in a forked child from its parent's: the process's *epoch*. On Linux
/// it changes however the child was made (a `MADV_WIPEONFORK` witness page); elsewhere it counts
/// forks seen by `pthread_atfork`.
#[inline]
pub(crate) fn process_epoch() -> u64 {
    os::process_epoch()
}

/// Where [`process_epoch`] is read from: compared with an epoch taken earlier, one load tells
/// whether this process is a fork of the one that took it.
pub(crate) fn epoch_word() -> &'static std::sync::atomic::AtomicU64 {
    os::epoch_word()
}

/// Makes every running thread of the process pass a full memory barrier before this returns
/// (`membarrier(2)` on Linux, `FlushProcessWriteBuffers` on Windows): the expensive side of an
/// asymmetric fence. `false` where the OS has no such call.
#[cfg_attr(loom, allow(dead_code))] // The model checks stand in a fence.
pub(crate) fn barrier_all_threads() -> bool {
    #[cfg(target_os = "linux")]
    {
        os::barrier_all_threads()
    }
    #[cfg(windows)]
    {
        // SAFETY: FlushProcessWriteBuffers takes nothing and cannot fail.
        unsafe { windows_sys::Win32::System::Threading::FlushProcessWriteBuffers() };
        true
    }
    #[cfg(not(any(target_os = "linux", windows)))]
    {
        false
    }
}

/// Whether the OS itself says [`barrier_all_threads`] can work here (not asking that function):
/// what tests of it, and of what is built on it, compare with.
#[cfg(test)]
#[cfg_attr(loom, allow(dead_code))]
pub(crate) fn os_offers_barrier_all_threads() -> bool {
    #[cfg(target_os = "linux")]
    {
        os::kernel_offers_barrier_all_threads()
    }
    #[cfg(windows)]
    {
        true
    }
    #[cfg(not(any(target_os = "linux", windows)))]
    {
        false
    }
}

/// Installs the fork handlers (and, on Linux, the epoch's witness page) if that has not happened
/// yet. Call it before anything worth protecting exists, so that no fork goes unseen.
pub(crate) fn install_fork_handlers() {
    os::process_epoch();
}

/// Why the OS refused what [`diagnose`] calls a [`Shortage::LockLimit`], and what the limit is,
/// in words for an error message (`RLIMIT_MEMLOCK` and `ulimit -l`; the working set on Windows).
pub(crate) struct LockLimitText {
    pub(crate) limit: Option<u64>,
}

impl fmt::Display for LockLimitText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        os::write_lock_limit(f, self.limit)
    }
}

/// What to do about an OS error that says a resource of the process or system ran out (empty
/// for any other error), for the end of an error message.
pub(crate) struct Remedy<'a>(pub(crate) &'a io::Error);

impl fmt::Display for Remedy<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        os::write_remedy(f, self.0)
    }
}
