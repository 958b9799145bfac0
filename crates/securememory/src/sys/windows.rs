//! Windows: `VirtualAlloc`, `VirtualProtect`, `VirtualLock`, `VirtualFree`.
//!
//! A reservation is `MEM_RESERVE` address space (any touch faults until committed); data pages
//! are committed inside it with `MEM_COMMIT`. Locking is bounded by the process's minimum
//! working set, which [`lock`] raises when it runs out. Windows has no fork, no per-range
//! exclusion from crash dumps, no `RLIMIT_CORE` and no secret memory.

use super::{PageProtection, SecretMemSupport};
use std::io;
use std::ptr::NonNull;
use std::sync::Mutex;
use windows_sys::Win32::Foundation::ERROR_WORKING_SET_QUOTA;
use windows_sys::Win32::System::Memory::{
    VirtualAlloc, VirtualFree, VirtualLock, VirtualProtect, VirtualUnlock, MEM_COMMIT, MEM_RELEASE,
    MEM_RESERVE, PAGE_NOACCESS, PAGE_PROTECTION_FLAGS, PAGE_READONLY, PAGE_READWRITE,
};
use windows_sys::Win32::System::SystemInformation::{GetSystemInfo, SYSTEM_INFO};
use windows_sys::Win32::System::Threading::{
    GetCurrentProcess, GetProcessWorkingSetSize, SetProcessWorkingSetSize,
};

/// How many pages beyond the amount that failed to lock [`lock`] adds to the working set, so
/// that the next few locks do not each need a raise.
const WORKING_SET_SLACK_PAGES: usize = 64;

/// Turns a Win32 `BOOL` result into `io::Result`, reading `GetLastError` on failure.
fn check(ret: windows_sys::core::BOOL) -> io::Result<()> {
    if ret != 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Hands the result of one Win32 call through; the test build records the call in the thread's
/// trace (`fault::start_trace`), so that tests can check the order of calls.
fn traced<T>(name: &'static str, args: (usize, usize), result: io::Result<T>) -> io::Result<T> {
    #[cfg(test)]
    super::fault::record_call(name, args, &result);
    #[cfg(not(test))]
    let _ = (name, args);
    result
}

/// The error the test build was told to fail the next `Op::$op` call with
/// (`fault::fail_next`), or `Ok` to make the call.
macro_rules! injected {
    ($op:ident) => {{
        #[cfg(test)]
        let planned = super::fault::check(super::Op::$op);
        #[cfg(not(test))]
        let planned: io::Result<()> = Ok(());
        planned
    }};
}

/// An address and a length, as recorded in the call trace.
fn range(addr: NonNull<u8>, len: usize) -> (usize, usize) {
    (addr.as_ptr() as usize, len)
}

/// The calls behind each operation, for error messages.
pub(crate) mod call {
    pub(crate) const RESERVE: &str = "VirtualAlloc(MEM_RESERVE)";
    pub(crate) const COMMIT: &str = "VirtualAlloc(MEM_COMMIT)";
    pub(crate) const SECRETMEM: &str = "memfd_secret";
    pub(crate) const PROTECT: &str = "VirtualProtect";
    pub(crate) const LOCK: &str = "VirtualLock";
    pub(crate) const UNLOCK: &str = "VirtualUnlock";
    pub(crate) const RELEASE: &str = "VirtualFree(MEM_RELEASE)";
    pub(crate) const EXCLUDE_FROM_DUMP: &str = "exclude from dumps";
    pub(crate) const EXCLUDE_ANONYMOUS_FROM_FORK: &str = "exclude from fork";
    pub(crate) const EXCLUDE_SECRETMEM_FROM_FORK: &str = "exclude from fork";
    pub(crate) const CORE_LIMIT: &str = "disable core dumps";
}

/// Windows has no fork; the answer is never used.
pub(super) fn child_keeps_data_mapping(secretmem: bool) -> bool {
    let _ = secretmem;
    true
}

/// `GetSystemInfo(&info)`—The size of a page (`dwPageSize`).
///
/// Reservations start on the coarser allocation granularity (64 KiB), but protection and
/// locking work per page.
///
/// # References
/// - [Microsoft](https://learn.microsoft.com/en-us/windows/win32/api/sysinfoapi/nf-sysinfoapi-getsysteminfo)
pub(super) fn page_size() -> usize {
    let mut info = SYSTEM_INFO::default();
    // SAFETY: `info` is a valid out-pointer; GetSystemInfo cannot fail.
    unsafe { GetSystemInfo(&mut info) };
    usize::try_from(info.dwPageSize)
        .ok()
        .filter(|s| s.is_power_of_two())
        .unwrap_or(4096)
}

/// `VirtualAlloc(NULL, len, MEM_RESERVE, PAGE_NOACCESS)`—Reserve address space that faults on
/// touch and holds no memory.
///
/// # References
/// - [Microsoft](https://learn.microsoft.com/en-us/windows/win32/api/memoryapi/nf-memoryapi-virtualalloc)
pub(super) fn reserve(len: usize) -> io::Result<NonNull<u8>> {
    // SAFETY: a fresh reservation at an address the system chooses aliases nothing.
    let ptr = unsafe { VirtualAlloc(std::ptr::null(), len, MEM_RESERVE, PAGE_NOACCESS) };
    let reserved = NonNull::new(ptr.cast()).ok_or_else(io::Error::last_os_error);
    traced(call::RESERVE, (ptr as usize, len), reserved)
}

/// `VirtualAlloc(addr, len, MEM_COMMIT, PAGE_READWRITE)`—Back reserved pages with zeroed,
/// readable and writable memory (charged against the commit limit).
///
/// # Safety
/// See [`super::commit_anonymous`].
///
/// # References
/// - [Microsoft](https://learn.microsoft.com/en-us/windows/win32/api/memoryapi/nf-memoryapi-virtualalloc)
pub(super) unsafe fn commit_anonymous(addr: NonNull<u8>, len: usize) -> io::Result<()> {
    // SAFETY: the caller guarantees the range lies inside its own reservation and holds nothing
    // it still needs.
    let ptr = unsafe { VirtualAlloc(addr.as_ptr().cast(), len, MEM_COMMIT, PAGE_READWRITE) };
    let committed = if ptr.is_null() {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    };
    traced(call::COMMIT, range(addr, len), committed)
}

/// `VirtualProtect(addr, len, prot, &old)`—Change the protection of committed pages.
///
/// # Safety
/// See [`super::protect`].
///
/// # References
/// - [Microsoft](https://learn.microsoft.com/en-us/windows/win32/api/memoryapi/nf-memoryapi-virtualprotect)
pub(super) unsafe fn protect(
    addr: NonNull<u8>,
    len: usize,
    prot: PageProtection,
) -> io::Result<()> {
    let (new, name) = match prot {
        PageProtection::NoAccess => (PAGE_NOACCESS, "VirtualProtect(PAGE_NOACCESS)"),
        PageProtection::ReadOnly => (PAGE_READONLY, "VirtualProtect(PAGE_READONLY)"),
        PageProtection::ReadWrite => (PAGE_READWRITE, "VirtualProtect(PAGE_READWRITE)"),
    };
    let mut old: PAGE_PROTECTION_FLAGS = 0;
    // SAFETY: the caller guarantees the range is its own committed pages; `old` is a valid
    // out-pointer (VirtualProtect fails when it is null).
    let protected = check(unsafe { VirtualProtect(addr.as_ptr().cast(), len, new, &mut old) });
    traced(name, range(addr, len), protected)
}

/// `VirtualLock(addr, len)`—Lock pages in the working set so they are never paged out; on
/// `ERROR_WORKING_SET_QUOTA`, raise the process's working set with
/// `SetProcessWorkingSetSize` by `len` plus some slack and retry once.
///
/// `VirtualLock` needs the pages committed and accessible (it fails on `PAGE_NOACCESS`): the
/// caller locks before it protects them. Pages stay locked across later `VirtualProtect` calls.
///
/// # Safety
/// See [`super::lock`].
///
/// # References
/// - [Microsoft `VirtualLock`](https://learn.microsoft.com/en-us/windows/win32/api/memoryapi/nf-memoryapi-virtuallock)
/// - [Microsoft `GetProcessWorkingSetSize`](https://learn.microsoft.com/en-us/windows/win32/api/memoryapi/nf-memoryapi-getprocessworkingsetsize)
/// - [Microsoft `SetProcessWorkingSetSize`](https://learn.microsoft.com/en-us/windows/win32/api/memoryapi/nf-memoryapi-setprocessworkingsetsize)
pub(super) unsafe fn lock(addr: NonNull<u8>, len: usize) -> io::Result<()> {
    // SAFETY: forwarded from the caller.
    let first = unsafe { virtual_lock(addr, len) };
    match first {
        Err(error) if error.raw_os_error() == Some(ERROR_WORKING_SET_QUOTA as i32) => {
            grow_working_set(len).map_err(|grow_error| {
                log::debug!("raising the working set for VirtualLock failed: {grow_error}");
                error
            })?;
            // SAFETY: as above.
            unsafe { virtual_lock(addr, len) }
        }
        other => other,
    }
}

/// `VirtualLock(addr, len)`—One attempt of [`lock`].
///
/// # Safety
/// See [`super::lock`].
unsafe fn virtual_lock(addr: NonNull<u8>, len: usize) -> io::Result<()> {
    let locked = injected!(VirtualLock).and_then(|()| {
        // SAFETY: the caller guarantees the range is its own committed, accessible pages.
        check(unsafe { VirtualLock(addr.as_ptr().cast(), len) })
    });
    traced(call::LOCK, range(addr, len), locked)
}

/// `GetProcessWorkingSetSize` + `SetProcessWorkingSetSize`—Raise the minimum and maximum working
/// set of this process by `len` plus [`WORKING_SET_SLACK_PAGES`] pages.
///
/// Serialized so that two threads raising at once cannot read the same old size and each set
/// it to only one raise.
fn grow_working_set(len: usize) -> io::Result<()> {
    static GROW: Mutex<()> = Mutex::new(());
    let _guard = GROW.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let extra = WORKING_SET_SLACK_PAGES
        .checked_mul(page_size())
        .and_then(|slack| slack.checked_add(len))
        .ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))?;
    // SAFETY: GetCurrentProcess returns a pseudo-handle with all access rights; it needs no
    // closing.
    let process = unsafe { GetCurrentProcess() };
    let (mut min, mut max) = (0usize, 0usize);
    // SAFETY: `min` and `max` are valid out-pointers.
    let got = check(unsafe { GetProcessWorkingSetSize(process, &mut min, &mut max) });
    traced("GetProcessWorkingSetSize", (min, max), got)?;
    let new_min = min.saturating_add(extra);
    let new_max = max.saturating_add(extra).max(new_min);
    let set = injected!(SetWorkingSetSize).and_then(|()| {
        // SAFETY: plain values; the system validates them.
        check(unsafe { SetProcessWorkingSetSize(process, new_min, new_max) })
    });
    traced("SetProcessWorkingSetSize", (new_min, new_max), set)
}

/// `VirtualUnlock(addr, len)`—Unlock pages locked by [`lock`].
///
/// # Safety
/// See [`super::unlock`].
///
/// # References
/// - [Microsoft](https://learn.microsoft.com/en-us/windows/win32/api/memoryapi/nf-memoryapi-virtualunlock)
pub(super) unsafe fn unlock(addr: NonNull<u8>, len: usize) -> io::Result<()> {
    // SAFETY: the caller guarantees the range is its own committed pages.
    let unlocked = check(unsafe { VirtualUnlock(addr.as_ptr().cast(), len) });
    traced(call::UNLOCK, range(addr, len), unlocked)
}

/// `VirtualFree(addr, 0, MEM_RELEASE)`—Release the whole reservation (and any lock on it).
///
/// `MEM_RELEASE` takes the base address and a size of zero and frees the whole reservation:
/// `len` is not passed on.
///
/// # Safety
/// See [`super::release`].
///
/// # References
/// - [Microsoft](https://learn.microsoft.com/en-us/windows/win32/api/memoryapi/nf-memoryapi-virtualfree)
pub(super) unsafe fn release(addr: NonNull<u8>, len: usize) -> io::Result<()> {
    // SAFETY: the caller guarantees `addr` is the base of its own reservation and nothing uses
    // it after.
    let released = check(unsafe { VirtualFree(addr.as_ptr().cast(), 0, MEM_RELEASE) });
    traced(call::RELEASE, range(addr, len), released)
}

/// No call—Windows has no per-range exclusion from crash dumps: always `Ok(false)`.
///
/// Which dumps are written is configured outside the process: Windows Error Reporting
/// (`WerAddExcludedApplication`, the `LocalDumps` registry key) and whoever calls
/// `MiniDumpWriteDump` (a debugger, a crash handler) with its own flags.
///
/// # Safety
/// See [`super::exclude_from_dump`]; nothing is touched.
///
/// # References
/// - [Microsoft `WerAddExcludedApplication`](https://learn.microsoft.com/en-us/windows/win32/api/werapi/nf-werapi-weraddexcludedapplication)
/// - [Microsoft `LocalDumps`](https://learn.microsoft.com/en-us/windows/win32/wer/collecting-user-mode-dumps)
pub(super) unsafe fn exclude_from_dump(addr: NonNull<u8>, len: usize) -> io::Result<bool> {
    let _ = (addr, len);
    Ok(false)
}

/// No call—A Windows process cannot be forked, so no child can ever inherit the bytes: always
/// `Ok(true)`. (`CreateProcess` starts a new address space; nothing of this one is copied.)
///
/// # Safety
/// See [`super::exclude_from_fork`]; nothing is touched.
///
/// # References
/// - [Microsoft `CreateProcess`](https://learn.microsoft.com/en-us/windows/win32/api/processthreadsapi/nf-processthreadsapi-createprocessw)
pub(super) unsafe fn exclude_from_fork(
    addr: NonNull<u8>,
    len: usize,
    secretmem: bool,
) -> io::Result<bool> {
    let _ = (addr, len, secretmem);
    Ok(true)
}

/// `memfd_secret(2)`—Linux only: always unavailable here.
///
/// # References
/// - [Linux](https://man7.org/linux/man-pages/man2/memfd_secret.2.html)
pub(super) fn secretmem_support() -> SecretMemSupport {
    SecretMemSupport::Unavailable("memfd_secret(2) exists on Linux only".into())
}

/// The working set's room for locked pages, for [`super::LockLimitText`]. Windows bounds locked
/// pages by the minimum working set, which a failed `VirtualLock` already makes [`lock`] raise
/// once; what is left to the caller is a larger working set from the start, or the job object
/// that caps it.
pub(super) fn write_lock_limit(
    f: &mut std::fmt::Formatter<'_>,
    limit: Option<u64>,
) -> std::fmt::Result {
    let _ = limit;
    f.write_str(
        "the working set is full (VirtualLock); raise it (`SetProcessWorkingSetSize`, the job \
         object's limit)",
    )
}

/// What to do when commit memory ran out, for [`super::Remedy`].
pub(super) fn write_remedy(f: &mut std::fmt::Formatter<'_>, error: &io::Error) -> std::fmt::Result {
    match error.raw_os_error() {
        // ERROR_NOT_ENOUGH_MEMORY, ERROR_OUTOFMEMORY, ERROR_COMMITMENT_LIMIT.
        Some(8 | 14 | 1455) => {
            f.write_str(": the commit limit is reached; free memory or enlarge the page file")
        }
        _ => Ok(()),
    }
}

/// `memfd_secret(2)`—Linux only: always fails with [`io::ErrorKind::Unsupported`]; callers
/// check [`secretmem_support`] first.
///
/// # Safety
/// See [`super::map_secretmem`]; nothing is touched.
///
/// # References
/// - [Linux](https://man7.org/linux/man-pages/man2/memfd_secret.2.html)
pub(super) unsafe fn map_secretmem(addr: NonNull<u8>, len: usize) -> io::Result<()> {
    let _ = (addr, len);
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "secret memory (memfd_secret) exists only on Linux",
    ))
}

/// No call—Windows has no locked-memory rlimit: always `None`. Locking is bounded by the
/// minimum working set instead, which [`lock`] raises as needed.
///
/// # References
/// - [Microsoft `VirtualLock`](https://learn.microsoft.com/en-us/windows/win32/api/memoryapi/nf-memoryapi-virtuallock)
pub(super) fn memlock_limit() -> Option<u64> {
    None
}

/// No call—Windows has no `RLIMIT_CORE`: always fails with [`io::ErrorKind::Unsupported`].
///
/// Crash dumps are written by Windows Error Reporting, configured outside the process: exclude
/// the program with `WerAddExcludedApplication`, or turn off `LocalDumps` in the registry.
///
/// # References
/// - [Microsoft `WerAddExcludedApplication`](https://learn.microsoft.com/en-us/windows/win32/api/werapi/nf-werapi-weraddexcludedapplication)
/// - [Microsoft `LocalDumps`](https://learn.microsoft.com/en-us/windows/win32/wer/collecting-user-mode-dumps)
pub(super) fn disable_core_dumps() -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "Windows has no per-process core-dump limit; configure Windows Error Reporting instead \
         (WerAddExcludedApplication, or the LocalDumps registry key)",
    ))
}

/// No call—Windows has no fork: always `0`.
pub(super) fn process_epoch() -> u64 {
    0
}

/// The word [`process_epoch`] reads: zero for good.
pub(super) fn epoch_word() -> &'static std::sync::atomic::AtomicU64 {
    static NO_FORKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    &NO_FORKS
}

#[cfg(test)]
mod tests;
