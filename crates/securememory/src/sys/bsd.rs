//! Unix other than Linux: macOS (and the other Apple OSes), FreeBSD, DragonFly, OpenBSD, NetBSD,
//! Android, and a fallback without dump or fork protection for any other Unix.
//!
//! Everything but two operations is plain POSIX from [`unix`]. The two:
//!
//! | OS | out of core dumps | out of a forked child |
//! |---|---|---|
//! | FreeBSD | `MAP_NOCORE` when reserving | `minherit(INHERIT_ZERO)`: zeros in the child |
//! | DragonFly | `MAP_NOCORE` when reserving | `minherit(INHERIT_NONE)`: absent in the child |
//! | OpenBSD | `MAP_CONCEAL` when reserving | `minherit(MAP_INHERIT_ZERO)`: zeros in the child |
//! | NetBSD | — | `minherit(MAP_INHERIT_ZERO)`: zeros in the child |
//! | macOS, iOS, ... | — | `minherit(VM_INHERIT_NONE)`: absent in the child |
//! | Android | `madvise(MADV_DONTDUMP)` | `madvise(MADV_WIPEONFORK)`: zeros in the child |
//! | others | — | — |
//!
//! The dump flag is set on the whole reservation by [`reserve`] rather than later with
//! `madvise(MADV_NOCORE)` (FreeBSD, DragonFly): the range is out of dumps from the moment it
//! exists, guard pages included, at no extra system call, and `mprotect`/`mlock` keep the flag of
//! the map entry when they split it. [`exclude_from_dump`] therefore does nothing there and
//! reports `Ok(true)`, trusting that its range came from [`reserve`] (the contract of
//! [`super::exclude_from_dump`]).
//!
//! There is no `memfd_secret(2)` here: [`secretmem_support`] says unavailable and [`map_secretmem`]
//! fails with `ENOSYS`.

pub(super) use super::unix::{
    commit_anonymous, disable_core_dumps, epoch_word, memlock_limit, mlock as lock,
    mprotect as protect, munlock as unlock, munmap as release, page_size, process_epoch,
    write_lock_limit, write_remedy,
};
use super::{unix, SecretMemSupport};
use std::io;
use std::ptr::NonNull;

/// The `mmap(2)` flag that keeps a mapping out of core dumps from the moment it exists, or `0`
/// where the OS has none.
#[cfg(any(target_os = "freebsd", target_os = "dragonfly"))]
const NO_CORE_MAP_FLAG: libc::c_int = libc::MAP_NOCORE;
#[cfg(target_os = "openbsd")]
const NO_CORE_MAP_FLAG: libc::c_int = libc::MAP_CONCEAL;
#[cfg(not(any(target_os = "freebsd", target_os = "dragonfly", target_os = "openbsd")))]
const NO_CORE_MAP_FLAG: libc::c_int = 0;

/// The `minherit(2)` value that keeps the bytes of a range away from a forked child.
#[cfg(target_os = "freebsd")]
const FORK_INHERIT: libc::c_int = libc::INHERIT_ZERO;
#[cfg(target_os = "dragonfly")]
const FORK_INHERIT: libc::c_int = libc::INHERIT_NONE;
#[cfg(any(target_os = "openbsd", target_os = "netbsd"))]
const FORK_INHERIT: libc::c_int = libc::MAP_INHERIT_ZERO;
#[cfg(target_vendor = "apple")]
const FORK_INHERIT: libc::c_int = libc::VM_INHERIT_NONE;

/// The calls behind each operation, for error messages.
pub(crate) mod call {
    pub(crate) const RESERVE: &str = "mmap(PROT_NONE)";
    pub(crate) const COMMIT: &str = "mprotect(PROT_READ | PROT_WRITE)";
    pub(crate) const SECRETMEM: &str = "memfd_secret";
    pub(crate) const PROTECT: &str = "mprotect";
    pub(crate) const LOCK: &str = "mlock";
    pub(crate) const UNLOCK: &str = "munlock";
    pub(crate) const RELEASE: &str = "munmap";
    #[cfg(target_os = "android")]
    pub(crate) const EXCLUDE_FROM_DUMP: &str = "madvise(MADV_DONTDUMP)";
    #[cfg(not(target_os = "android"))]
    pub(crate) const EXCLUDE_FROM_DUMP: &str = "mmap(MAP_NOCORE)";
    #[cfg(target_os = "android")]
    pub(crate) const EXCLUDE_ANONYMOUS_FROM_FORK: &str = "madvise(MADV_WIPEONFORK)";
    #[cfg(not(target_os = "android"))]
    pub(crate) const EXCLUDE_ANONYMOUS_FROM_FORK: &str = "minherit";
    pub(crate) const EXCLUDE_SECRETMEM_FROM_FORK: &str = "minherit";
    pub(crate) const CORE_LIMIT: &str = "setrlimit(RLIMIT_CORE)";
}

/// Whether a forked child still has the data pages mapped: yes where they are zero-filled there
/// (or not protected at all), no where `minherit(VM_INHERIT_NONE / INHERIT_NONE)` left them out.
pub(super) fn child_keeps_data_mapping(secretmem: bool) -> bool {
    let _ = secretmem;
    !cfg!(any(target_os = "dragonfly", target_vendor = "apple"))
}

/// `mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANON | MAP_NOCORE, -1, 0)`—Reserve address
/// space that faults on touch; `MAP_NOCORE` on FreeBSD and DragonFly, `MAP_CONCEAL` on OpenBSD
/// (left out of core dumps), no extra flag elsewhere.
///
/// # References
/// - [FreeBSD](https://man.freebsd.org/cgi/man.cgi?query=mmap&sektion=2)
/// - [DragonFly](https://man.dragonflybsd.org/?command=mmap&section=2)
/// - [OpenBSD](https://man.openbsd.org/mmap.2)
/// - [NetBSD](https://man.netbsd.org/mmap.2)
/// - [macOS](https://developer.apple.com/library/archive/documentation/System/Conceptual/ManPages_iPhoneOS/man2/mmap.2.html)
pub(super) fn reserve(len: usize) -> io::Result<NonNull<u8>> {
    unix::mmap_reserve(len, NO_CORE_MAP_FLAG)
}

/// `madvise(addr, len, advice)`—Give the kernel advice about a range.
///
/// # Safety
/// The range must be the caller's own mapping.
///
/// # References
/// - [Linux](https://man7.org/linux/man-pages/man2/madvise.2.html)
#[cfg(target_os = "android")]
unsafe fn madvise(addr: NonNull<u8>, len: usize, advice: libc::c_int) -> io::Result<()> {
    // SAFETY: the caller guarantees the range is its own mapping.
    unix::check(unsafe { libc::madvise(addr.as_ptr().cast(), len, advice) })
}

/// `MAP_NOCORE` / `MAP_CONCEAL`—Already done by [`reserve`] on FreeBSD, DragonFly and OpenBSD
/// (`Ok(true)`, no system call); `madvise(MADV_DONTDUMP)` on Android; `Ok(false)` on macOS,
/// NetBSD and the rest, which have no per-range exclusion from core dumps (use
/// [`disable_core_dumps`] there).
///
/// # Safety
/// See [`super::exclude_from_dump`].
///
/// # References
/// - [FreeBSD `MAP_NOCORE`](https://man.freebsd.org/cgi/man.cgi?query=mmap&sektion=2)
/// - [DragonFly `MAP_NOCORE`](https://man.dragonflybsd.org/?command=mmap&section=2)
/// - [OpenBSD `MAP_CONCEAL`](https://man.openbsd.org/mmap.2)
/// - [Android/Linux `MADV_DONTDUMP`](https://man7.org/linux/man-pages/man2/madvise.2.html)
pub(super) unsafe fn exclude_from_dump(addr: NonNull<u8>, len: usize) -> io::Result<bool> {
    #[cfg(target_os = "android")]
    {
        // SAFETY: forwarded from the caller: committed pages of a live reservation.
        unsafe { madvise(addr, len, libc::MADV_DONTDUMP) }?;
        Ok(true)
    }
    #[cfg(not(target_os = "android"))]
    {
        let _ = (addr, len);
        Ok(NO_CORE_MAP_FLAG != 0)
    }
}

/// `minherit(addr, len, inherit)`—Set what a forked child gets of a range.
///
/// # Safety
/// The range must be the caller's own mapping.
///
/// # References
/// - [FreeBSD](https://man.freebsd.org/cgi/man.cgi?query=minherit&sektion=2)
/// - [DragonFly](https://man.dragonflybsd.org/?command=minherit&section=2)
/// - [OpenBSD](https://man.openbsd.org/minherit.2)
/// - [NetBSD](https://man.netbsd.org/minherit.2)
/// - [macOS](https://developer.apple.com/library/archive/documentation/System/Conceptual/ManPages_iPhoneOS/man2/minherit.2.html)
#[cfg(any(
    target_os = "freebsd",
    target_os = "dragonfly",
    target_os = "openbsd",
    target_os = "netbsd",
    target_vendor = "apple"
))]
unsafe fn minherit(addr: NonNull<u8>, len: usize, inherit: libc::c_int) -> io::Result<()> {
    // SAFETY: the caller guarantees the range is its own mapping; minherit changes only what a
    // future child inherits of it.
    unix::check(unsafe { libc::minherit(addr.as_ptr().cast(), len, inherit) })
}

/// `minherit(addr, len, INHERIT_ZERO)`—A forked child sees zeros in the range (FreeBSD ≥ 12,
/// OpenBSD and NetBSD with `MAP_INHERIT_ZERO`); `minherit(VM_INHERIT_NONE)` on macOS and
/// `minherit(INHERIT_NONE)` on DragonFly, which have no zero-fill inheritance: the range is
/// unmapped in the child. `madvise(MADV_WIPEONFORK)` on Android. `Ok(false)` elsewhere.
///
/// `secretmem` is always `false` here (there is no secret memory off Linux).
///
/// # Safety
/// See [`super::exclude_from_fork`].
///
/// # References
/// - [FreeBSD](https://man.freebsd.org/cgi/man.cgi?query=minherit&sektion=2)
/// - [DragonFly](https://man.dragonflybsd.org/?command=minherit&section=2)
/// - [OpenBSD](https://man.openbsd.org/minherit.2)
/// - [NetBSD](https://man.netbsd.org/minherit.2)
/// - [macOS](https://developer.apple.com/library/archive/documentation/System/Conceptual/ManPages_iPhoneOS/man2/minherit.2.html)
/// - [Android/Linux `MADV_WIPEONFORK`](https://man7.org/linux/man-pages/man2/madvise.2.html)
pub(super) unsafe fn exclude_from_fork(
    addr: NonNull<u8>,
    len: usize,
    secretmem: bool,
) -> io::Result<bool> {
    debug_assert!(!secretmem, "no secret memory off Linux");
    #[cfg(any(
        target_os = "freebsd",
        target_os = "dragonfly",
        target_os = "openbsd",
        target_os = "netbsd",
        target_vendor = "apple"
    ))]
    {
        // SAFETY: forwarded from the caller: committed pages of a live reservation.
        unsafe { minherit(addr, len, FORK_INHERIT) }?;
        Ok(true)
    }
    #[cfg(target_os = "android")]
    {
        // SAFETY: forwarded from the caller: committed pages of a live reservation.
        unsafe { madvise(addr, len, libc::MADV_WIPEONFORK) }?;
        Ok(true)
    }
    #[cfg(not(any(
        target_os = "freebsd",
        target_os = "dragonfly",
        target_os = "openbsd",
        target_os = "netbsd",
        target_vendor = "apple",
        target_os = "android"
    )))]
    {
        let _ = (addr, len);
        Ok(false)
    }
}

/// `memfd_secret(2)`—Linux only: always unavailable here (`ENOSYS`).
///
/// # References
/// - [Linux](https://man7.org/linux/man-pages/man2/memfd_secret.2.html)
pub(super) fn secretmem_support() -> SecretMemSupport {
    SecretMemSupport::Unavailable("memfd_secret(2) exists on Linux only".into())
}

/// `memfd_secret(2)`—Linux only: always fails with `ENOSYS` (kind
/// [`Unsupported`](io::ErrorKind::Unsupported)); callers check [`secretmem_support`] first.
///
/// # Safety
/// See [`super::map_secretmem`]; nothing is touched.
///
/// # References
/// - [Linux](https://man7.org/linux/man-pages/man2/memfd_secret.2.html)
pub(super) unsafe fn map_secretmem(addr: NonNull<u8>, len: usize) -> io::Result<()> {
    let _ = (addr, len);
    Err(io::Error::from_raw_os_error(libc::ENOSYS))
}
