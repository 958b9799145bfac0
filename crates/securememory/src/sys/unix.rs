//! POSIX calls shared by every Unix this crate supports.

use super::PageProtection;
use std::fmt;
use std::io;
use std::ptr::NonNull;
#[cfg(not(target_os = "linux"))]
use std::sync::atomic::{AtomicU64, Ordering};
#[cfg(not(target_os = "linux"))]
use std::sync::Once;

/// `sysconf(_SC_PAGESIZE)`—The size of a page.
///
/// # References
/// - [POSIX](https://pubs.opengroup.org/onlinepubs/9799919799/functions/sysconf.html)
pub(super) fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size)
        .ok()
        .filter(|s| s.is_power_of_two())
        .unwrap_or(4096)
}

/// A libc call's `0` → `Ok`, anything else → the last OS error (`errno`).
pub(super) fn check(ret: libc::c_int) -> io::Result<()> {
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A raw system call's result: non-negative → `Ok` with it, `-1` → the last OS error.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))] // Only Linux makes raw system calls.
pub(super) fn check_syscall(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | extra, -1, 0)`—Reserve address
/// space that faults on touch.
///
/// # References
/// - [Linux](https://man7.org/linux/man-pages/man2/mmap.2.html)
/// - [FreeBSD](https://man.freebsd.org/cgi/man.cgi?query=mmap&sektion=2)
/// - [OpenBSD](https://man.openbsd.org/mmap.2)
/// - [macOS](https://developer.apple.com/library/archive/documentation/System/Conceptual/ManPages_iPhoneOS/man2/mmap.2.html)
pub(super) fn mmap_reserve(len: usize, extra_flags: libc::c_int) -> io::Result<NonNull<u8>> {
    // SAFETY: a fresh anonymous mapping at an address the kernel chooses aliases nothing.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANON | extra_flags,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    NonNull::new(ptr.cast()).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))
}

/// `mprotect(addr, len, PROT_READ | PROT_WRITE)`—Commit reserved pages by making them
/// writable: a private `PROT_NONE` mapping is not charged against overcommit until then, and the
/// kernel backs the pages with zeroed memory on first touch. `mprotect` (rather than
/// `mmap(MAP_FIXED)`) keeps the map entry, so flags set by `reserve` (`MAP_NOCORE`,
/// `MAP_CONCEAL`) stay on it.
///
/// # Safety
/// See [`super::commit_anonymous`].
pub(super) unsafe fn commit_anonymous(addr: NonNull<u8>, len: usize) -> io::Result<()> {
    // SAFETY: forwarded from the caller: the range is inside its own reservation.
    unsafe { mprotect(addr, len, PageProtection::ReadWrite) }
}

/// `mprotect(addr, len, prot)`—Change the protection of pages.
///
/// # Safety
/// See [`super::protect`].
///
/// # References
/// - [Linux](https://man7.org/linux/man-pages/man2/mprotect.2.html)
/// - [POSIX](https://pubs.opengroup.org/onlinepubs/9799919799/functions/mprotect.html)
/// - [FreeBSD](https://man.freebsd.org/cgi/man.cgi?query=mprotect&sektion=2)
/// - [OpenBSD](https://man.openbsd.org/mprotect.2)
/// - [macOS](https://developer.apple.com/library/archive/documentation/System/Conceptual/ManPages_iPhoneOS/man2/mprotect.2.html)
pub(super) unsafe fn mprotect(
    addr: NonNull<u8>,
    len: usize,
    prot: PageProtection,
) -> io::Result<()> {
    let flags = match prot {
        PageProtection::NoAccess => libc::PROT_NONE,
        PageProtection::ReadOnly => libc::PROT_READ,
        PageProtection::ReadWrite => libc::PROT_READ | libc::PROT_WRITE,
    };
    // SAFETY: the caller guarantees the range is its own committed pages.
    check(unsafe { libc::mprotect(addr.as_ptr().cast(), len, flags) })
}

/// `mlock(addr, len)`—Lock pages in RAM.
///
/// # Safety
/// See [`super::lock`].
///
/// # References
/// - [Linux](https://man7.org/linux/man-pages/man2/mlock.2.html)
/// - [POSIX](https://pubs.opengroup.org/onlinepubs/9799919799/functions/mlock.html)
/// - [FreeBSD](https://man.freebsd.org/cgi/man.cgi?query=mlock&sektion=2)
/// - [OpenBSD](https://man.openbsd.org/mlock.2)
/// - [macOS](https://developer.apple.com/library/archive/documentation/System/Conceptual/ManPages_iPhoneOS/man2/mlock.2.html)
#[cfg(not(target_os = "linux"))] // Linux calls the system call directly (linux.rs).
pub(super) unsafe fn mlock(addr: NonNull<u8>, len: usize) -> io::Result<()> {
    // SAFETY: the caller guarantees the range is its own committed pages.
    check(unsafe { libc::mlock(addr.as_ptr().cast(), len) })
}

/// `munlock(addr, len)`—Unlock pages.
///
/// # Safety
/// See [`super::unlock`].
///
/// # References
/// - [Linux](https://man7.org/linux/man-pages/man2/munlock.2.html)
/// - [POSIX](https://pubs.opengroup.org/onlinepubs/9799919799/functions/munlock.html)
/// - [FreeBSD](https://man.freebsd.org/cgi/man.cgi?query=munlock&sektion=2)
/// - [OpenBSD](https://man.openbsd.org/munlock.2)
/// - [macOS](https://developer.apple.com/library/archive/documentation/System/Conceptual/ManPages_iPhoneOS/man2/munlock.2.html)
#[cfg(not(target_os = "linux"))] // Linux calls the system call directly (linux.rs).
pub(super) unsafe fn munlock(addr: NonNull<u8>, len: usize) -> io::Result<()> {
    // SAFETY: the caller guarantees the range is its own committed pages.
    check(unsafe { libc::munlock(addr.as_ptr().cast(), len) })
}

/// `munmap(addr, len)`—Remove a mapping.
///
/// # Safety
/// See [`super::release`].
///
/// # References
/// - [Linux](https://man7.org/linux/man-pages/man2/munmap.2.html)
/// - [POSIX](https://pubs.opengroup.org/onlinepubs/9799919799/functions/munmap.html)
/// - [FreeBSD](https://man.freebsd.org/cgi/man.cgi?query=munmap&sektion=2)
/// - [OpenBSD](https://man.openbsd.org/munmap.2)
/// - [macOS](https://developer.apple.com/library/archive/documentation/System/Conceptual/ManPages_iPhoneOS/man2/munmap.2.html)
pub(super) unsafe fn munmap(addr: NonNull<u8>, len: usize) -> io::Result<()> {
    // SAFETY: the caller owns the whole mapping and never uses it again.
    check(unsafe { libc::munmap(addr.as_ptr().cast(), len) })
}

/// `getrlimit(RLIMIT_MEMLOCK)`—The soft limit on locked memory; `None` when unlimited.
///
/// # References
/// - [Linux](https://man7.org/linux/man-pages/man2/getrlimit.2.html)
pub(super) fn memlock_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid out-pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } != 0 {
        return None;
    }
    if limit.rlim_cur == libc::RLIM_INFINITY {
        None
    } else {
        #[allow(clippy::useless_conversion)] // rlim_t is u64 on most targets, not all.
        u64::try_from(limit.rlim_cur).ok()
    }
}

/// `setrlimit(RLIMIT_CORE, {0, hard})`—Lower the soft core-dump limit to zero.
///
/// The hard limit stays as it was so the process may raise the soft limit again.
///
/// # References
/// - [Linux](https://man7.org/linux/man-pages/man2/setrlimit.2.html)
pub(super) fn disable_core_dumps() -> io::Result<()> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid out-pointer.
    check(unsafe { libc::getrlimit(libc::RLIMIT_CORE, &mut limit) })?;
    limit.rlim_cur = 0;
    // SAFETY: `limit` is a valid, initialised rlimit.
    check(unsafe { libc::setrlimit(libc::RLIMIT_CORE, &limit) })
}

#[cfg(not(target_os = "linux"))] // Linux also recognises raw forks (linux/fork.rs).
static FORK_GENERATION: AtomicU64 = AtomicU64::new(0);

#[cfg(not(target_os = "linux"))]
extern "C" fn on_fork_in_child() {
    // Relaxed: the child has one thread at this point; later loads on it see the store.
    FORK_GENERATION.fetch_add(1, Ordering::Relaxed);
}

/// `pthread_atfork(NULL, NULL, child)`—Count forks so a child can tell it is one.
///
/// # References
/// - [POSIX](https://pubs.opengroup.org/onlinepubs/9799919799/functions/pthread_atfork.html)
#[cfg(not(target_os = "linux"))]
pub(super) fn process_epoch() -> u64 {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // SAFETY: the handler is async-signal-safe (one atomic add) and lives forever.
        let ret = unsafe { libc::pthread_atfork(None, None, Some(on_fork_in_child)) };
        if ret != 0 {
            log::warn!(
                "pthread_atfork failed ({}); a forked child cannot detect inherited secrets",
                io::Error::from_raw_os_error(ret)
            );
        }
    });
    FORK_GENERATION.load(Ordering::Relaxed)
}

/// The word [`process_epoch`] reads.
#[cfg(not(target_os = "linux"))]
pub(super) fn epoch_word() -> &'static std::sync::atomic::AtomicU64 {
    process_epoch();
    &FORK_GENERATION
}

/// The locked-memory limit, for [`super::LockLimitText`].
pub(super) fn write_lock_limit(f: &mut fmt::Formatter<'_>, limit: Option<u64>) -> fmt::Result {
    match limit {
        Some(bytes) => write!(f, "RLIMIT_MEMLOCK ({bytes} bytes) reached")?,
        None => f.write_str("RLIMIT_MEMLOCK (unlimited) refused")?,
    }
    f.write_str("; raise it (`ulimit -l`, `LimitMEMLOCK=`, `--ulimit memlock=`)")
}

/// What to do when descriptors or memory ran out, for [`super::Remedy`].
pub(super) fn write_remedy(f: &mut fmt::Formatter<'_>, error: &io::Error) -> fmt::Result {
    match error.raw_os_error() {
        Some(libc::EMFILE) => {
            f.write_str(": RLIMIT_NOFILE is reached; close descriptors or raise it (`ulimit -n`)")
        }
        Some(libc::ENFILE) => {
            f.write_str(": fs.file-max is reached; close files or raise it (`sysctl`)")
        }
        Some(libc::ENOMEM) => f.write_str(": the system is out of memory"),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_call_gives_its_errno_and_a_successful_one_its_result() {
        assert!(check(0).is_ok());
        // SAFETY: an unaligned address makes mprotect fail with EINVAL, changing nothing.
        let refused = unsafe {
            libc::mprotect(
                std::ptr::without_provenance_mut::<libc::c_void>(1),
                4096,
                libc::PROT_READ,
            )
        };
        assert_eq!(refused, -1);
        assert_eq!(
            check(refused).unwrap_err().raw_os_error(),
            Some(libc::EINVAL)
        );
        #[cfg(target_os = "linux")]
        {
            assert_eq!(check_syscall(0).unwrap(), 0);
            assert_eq!(check_syscall(7).unwrap(), 7);
            // SAFETY: closing a descriptor that cannot exist fails with EBADF.
            let refused = unsafe { libc::syscall(libc::SYS_close, -1) };
            assert_eq!(
                check_syscall(refused).unwrap_err().raw_os_error(),
                Some(libc::EBADF)
            );
        }
    }
}
