//! Fork safety on Linux.
//!
//! Two things `pthread_atfork` alone cannot give:
//!
//! - **Knowing that this process is a fork**, whatever made it: a child made with the raw `fork`
//!   or `clone` system call runs no atfork handler. A witness page marked `MADV_WIPEONFORK`
//!   holds this process's *epoch*, a nonzero number; the kernel hands every child a zeroed copy,
//!   so a zero there means "new process", which then takes a fresh epoch. Regions remember the
//!   epoch they were made in; an access compares it with the current one (one load).
//! - **Keeping a fork out of the moment a secret-memory region is being set up.** Between
//!   `memfd_secret` and `close` the process holds a descriptor, and between `mmap` and
//!   `MADV_DONTFORK` a shared mapping, that a child would inherit, seeing every later write of
//!   the parent. Creators hold a [`ForkExclusion`] over those steps; the atfork *prepare*
//!   handler waits until none is held and keeps new ones from starting until the fork is done.

use super::super::unix;
use std::io;
use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, Ordering};
use std::sync::Once;

/// The page whose contents the kernel zeroes in every child; null until installed, and null for
/// good where the kernel has no `MADV_WIPEONFORK` (before Linux 4.14).
static WITNESS: AtomicPtr<AtomicU64> = AtomicPtr::new(ptr::null_mut());

/// The last epoch handed out along this process's line of descent. Ordinary memory, so a child
/// continues the count of its parent and never reuses the parent's epoch.
static LAST_EPOCH: AtomicU64 = AtomicU64::new(0);

/// Forks seen by the atfork child handler: the epoch where the witness page is missing.
static ATFORK_CHILDREN: AtomicU64 = AtomicU64::new(0);

/// Threads inside a [`ForkExclusion`] (low half) and forks in progress (high half), in one word
/// so that a fork and a creator cannot both pass: the one whose update comes second sees the
/// other. Both sides wait on the word with `futex(2)`.
static EXCLUSION: AtomicU32 = AtomicU32::new(0);
const ONE_FORK: u32 = 1 << 16;
const CREATORS: u32 = ONE_FORK - 1;

static INSTALL: Once = Once::new();

fn install() {
    // SAFETY: the handlers only touch atomics and make futex calls, which is all that is allowed
    // around fork; they live for the whole program.
    let ret = unsafe {
        libc::pthread_atfork(
            Some(before_fork),
            Some(after_fork_in_parent),
            Some(after_fork_in_child),
        )
    };
    if ret != 0 {
        log::warn!(
            "pthread_atfork failed ({}); secret-memory descriptors may leak into a child forked \
             while a secret is created",
            io::Error::from_raw_os_error(ret)
        );
    }
    match map_witness() {
        Ok(witness) => WITNESS.store(witness, Ordering::Release),
        Err(error) => log::warn!(
            "MADV_WIPEONFORK unavailable ({error}); a child made without pthread_atfork (the raw \
             fork system call) is not recognised as one"
        ),
    }
}

fn map_witness() -> io::Result<*mut AtomicU64> {
    let page = super::super::page_size();
    // SAFETY: a fresh private anonymous mapping aliases nothing.
    let addr = unsafe {
        libc::mmap(
            ptr::null_mut(),
            page,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the page was just mapped by us.
    if let Err(error) = unix::check(unsafe { libc::madvise(addr, page, libc::MADV_WIPEONFORK) }) {
        // SAFETY: our own mapping, unused.
        unsafe { libc::munmap(addr, page) };
        return Err(error);
    }
    let witness = addr.cast::<AtomicU64>();
    // SAFETY: page-aligned, writable, zeroed memory that lives forever; AtomicU64 has no drop.
    unsafe { (*witness).store(fresh_epoch(), Ordering::Relaxed) };
    Ok(witness)
}

fn fresh_epoch() -> u64 {
    LAST_EPOCH.fetch_add(1, Ordering::Relaxed) + 1
}

/// A number that identifies this process among its forks: it differs in every child, however
/// the child was made. The first call installs the fork handlers.
#[inline]
pub(crate) fn epoch() -> u64 {
    // Acquire pairs with the Release that published the page in `install`.
    let witness = WITNESS.load(Ordering::Acquire);
    if witness.is_null() {
        return epoch_without_witness();
    }
    // SAFETY: the witness page is mapped for the life of the process (and of its children).
    let witness = unsafe { &*witness };
    match witness.load(Ordering::Relaxed) {
        0 => rearm(witness),
        epoch => epoch,
    }
}

/// Before the handlers are installed, or where the kernel has no `MADV_WIPEONFORK`.
#[cold]
fn epoch_without_witness() -> u64 {
    INSTALL.call_once(install);
    if WITNESS.load(Ordering::Acquire).is_null() {
        ATFORK_CHILDREN.load(Ordering::Relaxed)
    } else {
        epoch()
    }
}

/// The word the epoch is read from: the witness page, or (without one) the count of forks the
/// atfork handler saw. Once a region has been made it differs from the region's epoch exactly
/// in a forked child (a zeroed witness included), so an access compares with one load.
pub(crate) fn epoch_word() -> &'static AtomicU64 {
    epoch();
    // Acquire: as in `epoch`; installed by the call above if ever.
    let witness = WITNESS.load(Ordering::Acquire);
    if witness.is_null() {
        &ATFORK_CHILDREN
    } else {
        // SAFETY: the witness page is mapped for the life of the process.
        unsafe { &*witness }
    }
}

/// A zeroed witness: this is a new process. The first thread to get here picks its epoch; the
/// others adopt it (one location, so every thread agrees on its value).
#[cold]
fn rearm(witness: &AtomicU64) -> u64 {
    let fresh = fresh_epoch();
    match witness.compare_exchange(0, fresh, Ordering::Relaxed, Ordering::Relaxed) {
        Ok(_) => fresh,
        Err(chosen) => chosen,
    }
}

/// Held while a descriptor or mapping that a child must not inherit is being set up; no fork
/// (through `fork(3)`) happens while one is held. Nothing that may take a lock, allocate or log
/// should run while it is held: the forking thread may hold such a lock while it waits.
pub(crate) struct ForkExclusion(());

impl ForkExclusion {
    pub(crate) fn hold() -> ForkExclusion {
        INSTALL.call_once(install);
        let mut state = EXCLUSION.load(Ordering::Relaxed);
        loop {
            if state >= ONE_FORK || state & CREATORS == CREATORS {
                futex_wait(&EXCLUSION, state);
                state = EXCLUSION.load(Ordering::Relaxed);
                continue;
            }
            // Acquire: the setup below happens after any fork that finished before it.
            match EXCLUSION.compare_exchange_weak(
                state,
                state + 1,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return ForkExclusion(()),
                Err(current) => state = current,
            }
        }
    }
}

impl Drop for ForkExclusion {
    fn drop(&mut self) {
        // Release: a fork that sees the count drop sees the setup finished (the system calls
        // that made and closed the descriptor have returned).
        let previous = EXCLUSION.fetch_sub(1, Ordering::Release);
        let creators = previous & CREATORS;
        if (previous >= ONE_FORK && creators == 1) || creators == CREATORS {
            futex_wake_all(&EXCLUSION);
        }
    }
}

extern "C" fn before_fork() {
    let mut state = EXCLUSION.fetch_add(ONE_FORK, Ordering::Acquire) + ONE_FORK;
    while state & CREATORS != 0 {
        futex_wait(&EXCLUSION, state);
        state = EXCLUSION.load(Ordering::Acquire);
    }
}

extern "C" fn after_fork_in_parent() {
    let previous = EXCLUSION.fetch_sub(ONE_FORK, Ordering::Release);
    if previous < 2 * ONE_FORK {
        futex_wake_all(&EXCLUSION);
    }
}

extern "C" fn after_fork_in_child() {
    // The child has one thread: no creator, and the parent's other forks are not its own.
    EXCLUSION.store(0, Ordering::Relaxed);
    ATFORK_CHILDREN.fetch_add(1, Ordering::Relaxed);
}

/// `futex(FUTEX_WAIT_PRIVATE)`—Sleeps while `word` holds `expected` (or until woken).
fn futex_wait(word: &AtomicU32, expected: u32) {
    // SAFETY: `word` is a valid, aligned u32 for the duration of the call; no timeout.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expected,
            ptr::null::<libc::timespec>(),
        )
    };
}

/// `futex(FUTEX_WAKE_PRIVATE)`—Wakes every thread sleeping on `word`.
fn futex_wake_all(word: &AtomicU32) {
    // SAFETY: `word` is a valid, aligned u32.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            i32::MAX,
        )
    };
}
