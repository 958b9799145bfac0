//! Linux: `memfd_secret(2)` and the `madvise(2)` flags that keep memory out of dumps and forks.

mod fork;
#[cfg(target_arch = "x86_64")]
pub(super) mod pkey;
mod resources;

pub(super) use super::unix::{
    commit_anonymous, disable_core_dumps, memlock_limit, mprotect as protect, munmap as release,
    page_size, write_lock_limit, write_remedy,
};
use super::{unix, OsError, SecretMemSupport};
pub(crate) use fork::ForkExclusion;
pub(super) use fork::{epoch as process_epoch, epoch_word};
pub(super) use resources::{diagnose, memory_available};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicI32, Ordering};

/// The calls behind each operation, for error messages.
pub(crate) mod call {
    pub(crate) const RESERVE: &str = "mmap(PROT_NONE)";
    pub(crate) const COMMIT: &str = "mprotect(PROT_READ | PROT_WRITE)";
    pub(crate) const SECRETMEM: &str = "memfd_secret + mmap";
    pub(crate) const PROTECT: &str = "mprotect";
    pub(crate) const LOCK: &str = "mlock";
    pub(crate) const UNLOCK: &str = "munlock";
    pub(crate) const RELEASE: &str = "munmap";
    pub(crate) const EXCLUDE_FROM_DUMP: &str = "madvise(MADV_DONTDUMP)";
    pub(crate) const EXCLUDE_ANONYMOUS_FROM_FORK: &str = "madvise(MADV_WIPEONFORK)";
    pub(crate) const EXCLUDE_SECRETMEM_FROM_FORK: &str = "madvise(MADV_DONTFORK)";
    pub(crate) const CORE_LIMIT: &str = "setrlimit(RLIMIT_CORE)";
}

/// `mlock(addr, len)`—Lock pages in RAM, through the raw system call.
///
/// Not through the libc symbol: an interposed `mlock` can pretend to succeed (AddressSanitizer's
/// does nothing and returns 0), and the library would then report pages locked that are not.
///
/// # Safety
/// See [`super::lock`].
///
/// # References
/// - [Linux](https://man7.org/linux/man-pages/man2/mlock.2.html)
pub(super) unsafe fn lock(addr: NonNull<u8>, len: usize) -> io::Result<()> {
    // SAFETY: the caller guarantees the range is its own committed pages.
    unix::check_syscall(unsafe { libc::syscall(libc::SYS_mlock, addr.as_ptr(), len) }).map(drop)
}

/// `munlock(addr, len)`—Unlock pages, through the raw system call (see [`lock`]).
///
/// # Safety
/// See [`super::unlock`].
///
/// # References
/// - [Linux](https://man7.org/linux/man-pages/man2/munlock.2.html)
pub(super) unsafe fn unlock(addr: NonNull<u8>, len: usize) -> io::Result<()> {
    // SAFETY: the caller guarantees the range is its own committed pages.
    unix::check_syscall(unsafe { libc::syscall(libc::SYS_munlock, addr.as_ptr(), len) }).map(drop)
}

/// Whether a forked child still has the data pages mapped: zero-filled anonymous memory
/// (`MADV_WIPEONFORK`) yes, secret memory (`MADV_DONTFORK`) no.
pub(super) fn child_keeps_data_mapping(secretmem: bool) -> bool {
    !secretmem
}

pub(super) fn reserve(len: usize) -> io::Result<NonNull<u8>> {
    unix::mmap_reserve(len, 0)
}

/// `madvise(addr, len, advice)`—Give the kernel advice about a range.
///
/// # References
/// - [Linux](https://man7.org/linux/man-pages/man2/madvise.2.html)
unsafe fn madvise(addr: NonNull<u8>, len: usize, advice: libc::c_int) -> io::Result<()> {
    // SAFETY: the caller guarantees the range is its own mapping.
    unix::check(unsafe { libc::madvise(addr.as_ptr().cast(), len, advice) })
}

/// `madvise(MADV_DONTDUMP)`—Leave the range out of core dumps (VmFlag `dd`); gdb's `gcore`
/// honours it too.
pub(super) unsafe fn exclude_from_dump(addr: NonNull<u8>, len: usize) -> io::Result<bool> {
    // SAFETY: forwarded from the caller.
    unsafe { madvise(addr, len, libc::MADV_DONTDUMP) }?;
    Ok(true)
}

/// `madvise(MADV_WIPEONFORK)` for private anonymous memory (the child sees zeros);
/// `madvise(MADV_DONTFORK)` for secret memory, which is `MAP_SHARED` and refuses
/// `MADV_WIPEONFORK` (the range is absent in the child).
pub(super) unsafe fn exclude_from_fork(
    addr: NonNull<u8>,
    len: usize,
    secretmem: bool,
) -> io::Result<bool> {
    let advice = if secretmem {
        libc::MADV_DONTFORK
    } else {
        libc::MADV_WIPEONFORK
    };
    // SAFETY: forwarded from the caller.
    unsafe { madvise(addr, len, advice) }?;
    Ok(true)
}

/// `memfd_secret(O_CLOEXEC)`—A file descriptor for memory the kernel removes from its direct
/// map. (`FD_CLOEXEC` is refused with EINVAL; the flag must be `O_CLOEXEC`.)
///
/// # References
/// - [Linux](https://man7.org/linux/man-pages/man2/memfd_secret.2.html)
fn memfd_secret() -> io::Result<OwnedFd> {
    // SAFETY: memfd_secret takes one flags argument and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_memfd_secret, libc::O_CLOEXEC) };
    let fd = unix::check_syscall(fd)?;
    let fd = libc::c_int::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: a descriptor the kernel just made for us and that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Whether `memfd_secret(2)` can be had. A permanent refusal is remembered: ENOSYS (before Linux
/// 5.14, or `secretmem.enable=0`), EPERM/EACCES (a seccomp filter or security policy), EINVAL.
/// Anything else (EMFILE, ENFILE, ENOMEM) says only that this moment is bad: it is returned and
/// the next call asks again.
pub(super) fn secretmem_support() -> SecretMemSupport {
    /// 0: not known yet; -1: available; an errno: permanently refused with it.
    static ANSWER: AtomicI32 = AtomicI32::new(0);
    match ANSWER.load(Ordering::Relaxed) {
        -1 => return SecretMemSupport::Available,
        0 => {}
        errno => {
            return SecretMemSupport::Unavailable(refusal(&io::Error::from_raw_os_error(errno)))
        }
    }
    // The probe's descriptor is empty, but a child has no business with it either.
    let probed = {
        let _no_fork = ForkExclusion::hold();
        probe_memfd_secret()
    };
    match probed {
        Ok(_fd) => {
            ANSWER.store(-1, Ordering::Relaxed);
            SecretMemSupport::Available
        }
        Err(error) => match error.raw_os_error() {
            Some(
                errno @ (libc::ENOSYS
                | libc::EPERM
                | libc::EACCES
                | libc::EINVAL
                | libc::EOPNOTSUPP),
            ) => {
                ANSWER.store(errno, Ordering::Relaxed);
                SecretMemSupport::Unavailable(refusal(&error))
            }
            _ => SecretMemSupport::Failed(OsError {
                call: call::SECRETMEM,
                source: error,
            }),
        },
    }
}

fn probe_memfd_secret() -> io::Result<OwnedFd> {
    #[cfg(test)]
    super::fault::check(super::Op::ProbeSecretMem)?;
    memfd_secret()
}

/// Why `memfd_secret(2)` is refused for good, in words.
fn refusal(error: &io::Error) -> String {
    match error.raw_os_error() {
        Some(libc::ENOSYS) => "memfd_secret(2) is not offered by this kernel (Linux 5.14+, \
                               secretmem.enable=1 before 6.5)"
            .into(),
        Some(libc::EPERM | libc::EACCES) => format!(
            "memfd_secret(2) is forbidden to this process, by a seccomp filter or a security \
             policy ({error})"
        ),
        _ => format!("memfd_secret(2) is not available here ({error})"),
    }
}

/// `memfd_secret` + `ftruncate` + `mmap(MAP_SHARED | MAP_FIXED)` over the range, then `close`:
/// the mapping keeps the memory alive, and no descriptor is left for a child to inherit. The
/// caller holds a [`ForkExclusion`] from before this call until `MADV_DONTFORK` is applied.
///
/// The kernel charges the pages against `RLIMIT_MEMLOCK` here (EAGAIN when over it) and marks
/// the mapping locked (`lo`) and excluded from dumps (`dd`) itself; `mlock` on it fails with
/// ENOMEM and is not needed.
pub(super) unsafe fn map_secretmem(addr: NonNull<u8>, len: usize) -> io::Result<()> {
    let fd = memfd_secret()?;
    let size =
        libc::off_t::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `fd` is a valid descriptor we own.
    unix::check(unsafe { libc::ftruncate(fd.as_raw_fd(), size) })?;
    // SAFETY: the caller owns the range; MAP_FIXED replaces only it.
    let ptr = unsafe {
        libc::mmap(
            addr.as_ptr().cast(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_FIXED,
            fd.as_raw_fd(),
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`—Makes every running thread of the process
/// execute a full memory barrier before this returns. Registers the process on first use (and
/// again in a forked child, which starts unregistered). `false` where the kernel refuses it
/// (before 4.14, or a seccomp policy): callers then fall back to waiting with a timeout.
///
/// # References
/// - [Linux](https://man7.org/linux/man-pages/man2/membarrier.2.html)
#[cfg_attr(loom, allow(dead_code))] // The model checks stand in a fence.
pub(super) fn barrier_all_threads() -> bool {
    const PRIVATE_EXPEDITED: libc::c_int = 1 << 3;
    const REGISTER_PRIVATE_EXPEDITED: libc::c_int = 1 << 4;
    static REFUSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if REFUSED.load(Ordering::Relaxed) {
        return false;
    }
    let membarrier = |command: libc::c_int| {
        // SAFETY: membarrier takes a command, flags and a CPU id, and touches no memory of ours.
        unix::check_syscall(unsafe { libc::syscall(libc::SYS_membarrier, command, 0, 0) })
    };
    let done = membarrier(PRIVATE_EXPEDITED).is_ok()
        || (membarrier(REGISTER_PRIVATE_EXPEDITED).is_ok()
            && membarrier(PRIVATE_EXPEDITED).is_ok());
    if !done {
        REFUSED.store(true, Ordering::Relaxed);
    }
    done
}

/// Whether the kernel lists the private expedited barrier among its supported commands
/// (`MEMBARRIER_CMD_QUERY`): the kernel's own answer, for tests of [`barrier_all_threads`] and
/// of what is built on it.
#[cfg(test)]
#[cfg_attr(loom, allow(dead_code))]
pub(super) fn kernel_offers_barrier_all_threads() -> bool {
    const QUERY: libc::c_int = 0;
    const PRIVATE_EXPEDITED: libc::c_long = 1 << 3;
    // SAFETY: a query of the supported commands touches no memory of ours.
    let supported = unsafe { libc::syscall(libc::SYS_membarrier, QUERY, 0, 0) };
    supported >= 0 && supported & PRIVATE_EXPEDITED != 0
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// Every thread is made to fence exactly where the kernel offers the private expedited
    /// barrier, registering the process for it first.
    #[test]
    fn every_thread_is_made_to_fence_where_the_kernel_offers_it() {
        let offered = kernel_offers_barrier_all_threads();
        assert_eq!(barrier_all_threads(), offered);
        assert_eq!(barrier_all_threads(), offered, "a second call");
    }
}
