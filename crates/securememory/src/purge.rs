//! Process-wide purge: close every live secret at once, on request, on a panic or on a
//! termination signal; and the list of live secrets with where each was made.

use crate::error::Error;
use crate::policy::Protection;
use crate::secret::Shared;
use std::fmt;
use std::panic::Location;
use std::sync::atomic::{AtomicBool, Ordering};

/// One live secret, as [`live_secrets`] and [`Purged`] describe it: never its bytes.
///
/// ```
/// use securememory::Secret;
///
/// let key = Secret::random(32)?;
/// for info in securememory::live_secrets() {
///     // "32 bytes made at src/keys.rs:4:11", then what it got.
///     println!("{info} ({:?}, {:?})", info.protection.strategy, info.protection.backing);
/// }
/// # drop(key);
/// # Ok::<(), securememory::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SecretInfo {
    /// Its length in bytes.
    pub len: usize,
    /// What protections it got.
    pub protection: Protection,
    /// Where it was made: the code that called its constructor
    /// ([`Secret::new`](crate::Secret::new),
    /// [`SecretFactory::create_random`](crate::SecretFactory::create_random), ...).
    pub created_at: &'static Location<'static>,
}

impl SecretInfo {
    fn of(secret: &Shared) -> SecretInfo {
        SecretInfo {
            len: secret.len(),
            protection: secret.protection(),
            created_at: secret.created_at(),
        }
    }
}

impl fmt::Display for SecretInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes made at {}", self.len, self.created_at)
    }
}

/// The secrets of this process that are neither closed nor dropped, in no particular order,
/// with where each was made: to find the secrets a program forgot to close.
///
/// ```
/// use securememory::{ProtectedMemorySecretFactory, SecretFactory};
///
/// let secret = ProtectedMemorySecretFactory::default().create_random(32)?;
/// let made_here = line!() - 1;
/// assert!(securememory::live_secrets()
///     .iter()
///     .any(|info| info.len == 32 && info.created_at.line() == made_here));
/// # Ok::<(), securememory::Error>(())
/// ```
pub fn live_secrets() -> Vec<SecretInfo> {
    Shared::live()
        .iter()
        .filter(|secret| !secret.is_closed())
        .map(|secret| SecretInfo::of(secret))
        .collect()
}

/// What [`purge`] did.
///
/// ```
/// use securememory::Secret;
///
/// let key = Secret::random(32)?;
/// // From inside an access, the secret being read is left open: waiting would never end.
/// let purged = key.with_bytes(|_| securememory::purge())?;
/// assert!(!purged.is_complete());
/// assert_eq!(purged.held_by_caller.len(), 1);
/// // Once the access has ended, another purge closes it.
/// assert!(securememory::purge().is_complete());
/// assert!(key.is_closed());
/// # Ok::<(), securememory::Error>(())
/// ```
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct Purged {
    /// Secrets this purge found open and closed: wiped, unlocked and unmapped (accesses in
    /// flight on other threads ended first).
    pub closed: usize,
    /// Secrets left open because the calling thread is inside an access to them
    /// ([`Error::Reentrant`]): waiting for that access would wait forever. Purge again once
    /// the access ends (their bytes stay readable until then).
    pub held_by_caller: Vec<SecretInfo>,
    /// Secrets whose close failed, with the error. Each is closed all the same: refused to
    /// every access, and its memory wiped, or left mapped and inaccessible where it could not
    /// be (see [`Secret::close`](crate::Secret::close)).
    pub failed: Vec<(SecretInfo, Error)>,
}

impl Purged {
    /// Whether every live secret is now closed and wiped.
    ///
    /// ```
    /// let purged = securememory::purge();
    /// if !purged.is_complete() {
    ///     eprintln!("left open: {:?}; failed: {:?}", purged.held_by_caller, purged.failed);
    /// }
    /// ```
    pub fn is_complete(&self) -> bool {
        self.held_by_caller.is_empty() && self.failed.is_empty()
    }
}

/// Wipes and closes every live secret of the process, whatever factory or thread made it.
///
/// Each secret is closed as [`Secret::close`](crate::Secret::close) closes it: new accesses
/// are refused at once, accesses in flight on other threads are waited for (so a purge waits
/// as long as the longest of them), then the memory is wiped, unlocked and unmapped. Secrets
/// the calling thread is itself inside an access to cannot be waited for and are left open;
/// the result names them. Afterwards every access to a purged secret returns
/// [`Error::Closed`], and dropping it does nothing more.
///
/// No lock is held while a secret is closed, so secrets made or dropped by other threads
/// meanwhile neither block nor are harmed: a secret made after the purge started may be
/// left open.
///
/// ```
/// use securememory::{Error, ProtectedMemorySecretFactory, SecretFactory};
///
/// let secret = ProtectedMemorySecretFactory::default().create_random(32)?;
/// let purged = securememory::purge();
/// assert!(purged.closed >= 1 && purged.is_complete());
/// assert!(matches!(secret.with_bytes(|_| ()), Err(Error::Closed)));
/// # Ok::<(), securememory::Error>(())
/// ```
pub fn purge() -> Purged {
    let mut purged = Purged::default();
    for secret in Shared::live() {
        if secret.is_closed() {
            continue;
        }
        match secret.close() {
            Ok(()) => purged.closed += 1,
            Err(Error::Reentrant { .. }) => purged.held_by_caller.push(SecretInfo::of(&secret)),
            Err(error) => purged.failed.push((SecretInfo::of(&secret), error)),
        }
    }
    purged
}

/// Makes every panic purge the process's secrets before it goes on as it would have: the
/// panic hook installed before this call (the default one prints the message) runs after the
/// purge, and then the panic unwinds or aborts as the program is built to.
///
/// Opt-in, because it ends every secret of the process, not only those of the panicking
/// thread: meant for programs where a panic is fatal. Installing it twice does nothing more.
/// A hook set later with [`std::panic::set_hook`] replaces it (unless it chains to it).
///
/// The purge runs on the panicking thread: it waits for accesses other threads have in
/// flight, and a secret that thread was reading or writing when it panicked is left open
/// (its access ends while the panic unwinds).
///
/// ```
/// use securememory::Secret;
///
/// securememory::purge_on_panic();
/// let key = Secret::random(32)?;
/// // A panic on any thread wipes every secret of the process, then goes on as before.
/// let _ = std::thread::spawn(|| panic!("a fatal bug")).join();
/// assert!(key.is_closed());
/// # Ok::<(), securememory::Error>(())
/// ```
pub fn purge_on_panic() {
    static INSTALLED: AtomicBool = AtomicBool::new(false);
    if INSTALLED.swap(true, Ordering::AcqRel) {
        return;
    }
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        purge();
        previous(info);
    }));
}

#[cfg(unix)]
pub use termination::purge_on_termination;

/// The termination hook: a signal handler that only writes a byte, and a thread that purges.
#[cfg(unix)]
mod termination {
    use super::purge;
    use crate::error::Error;
    use std::io;
    use std::sync::atomic::{AtomicI32, Ordering};
    use std::sync::{Mutex, PoisonError};

    /// The signals the hook handles.
    const SIGNALS: [libc::c_int; 2] = [libc::SIGINT, libc::SIGTERM];

    /// The write end of the pipe to the purging thread; -1 until the hook is installed.
    static WAKE: AtomicI32 = AtomicI32::new(-1);

    /// Whether the hook is installed; held while installing, so two callers install once.
    static INSTALLED: Mutex<bool> = Mutex::new(false);

    /// Makes SIGINT and SIGTERM purge the process's secrets (see [`purge`](crate::purge)), then
    /// lets the signal do what it would have done: the disposition found when the hook was
    /// installed is put back and the signal raised again, so by default the process dies of
    /// it (exit status and core-dump rules as without the hook), and a handler the program
    /// had installed before runs.
    ///
    /// A signal the process ignores (`SIG_IGN`, e.g. SIGINT of a background job) is left
    /// ignored. Installing twice does nothing more. The hook acts once: after the first
    /// signal, the earlier disposition stays.
    ///
    /// # Async-signal-safety
    ///
    /// A signal handler may interrupt any code, the library's own locks and the allocator
    /// included, so this handler does one thing only: it writes the signal's number as one
    /// byte to a pipe (`write(2)` is async-signal-safe; the pipe is made and its descriptor
    /// stored in an atomic before the handler is installed; `errno` is preserved). A thread
    /// started by this call waits on the other end; it purges, with locks and allocation
    /// available to it, puts the earlier disposition back and sends the signal to the process
    /// again. The price of doing the work off the handler: the purge waits for accesses in
    /// flight, as a wipe done inside the handler could not (their bytes are open), so the
    /// process dies only once they end; and a process whose threads are all stopped or that
    /// exits first is not purged.
    ///
    /// Unix only: Windows console programs get no SIGTERM, and a console control handler is
    /// not offered.
    ///
    /// # Errors
    /// [`Error::Os`] when the pipe, the thread or the handler cannot be made; the earlier
    /// dispositions then stay.
    ///
    /// ```
    /// // Early in `main`: from now on SIGINT and SIGTERM wipe every secret, then end the
    /// // process as they would have.
    /// securememory::purge_on_termination()?;
    /// # Ok::<(), securememory::Error>(())
    /// ```
    pub fn purge_on_termination() -> Result<(), Error> {
        let mut installed = INSTALLED.lock().unwrap_or_else(PoisonError::into_inner);
        if *installed {
            return Ok(());
        }
        let (read, write) = pipe()?;
        WAKE.store(write, Ordering::Release);
        let mut previous = Vec::with_capacity(SIGNALS.len());
        for signal in SIGNALS {
            match install(signal) {
                Ok(Some(earlier)) => previous.push((signal, earlier)),
                Ok(None) => {}
                Err(error) => {
                    restore(&previous);
                    return Err(error);
                }
            }
        }
        let spawned = std::thread::Builder::new()
            .name("securememory-purge".into())
            .spawn(move || purge_on_signal(read, &previous));
        if let Err(error) = spawned {
            // The handlers stay, writing to a pipe no one reads: harmless, but no purge.
            return Err(Error::os("spawn", error));
        }
        *installed = true;
        Ok(())
    }

    /// A pipe whose ends close on exec; the write end does not block (a full pipe already
    /// holds a wake-up).
    fn pipe() -> Result<(libc::c_int, libc::c_int), Error> {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors.
        if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
            return Err(Error::os("pipe", io::Error::last_os_error()));
        }
        for (fd, flags) in [(fds[0], 0), (fds[1], libc::O_NONBLOCK)] {
            // SAFETY: descriptors just made by `pipe`.
            let ok = unsafe {
                libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) == 0
                    && libc::fcntl(fd, libc::F_SETFL, flags) == 0
            };
            if !ok {
                return Err(Error::os("fcntl", io::Error::last_os_error()));
            }
        }
        Ok((fds[0], fds[1]))
    }

    /// Installs the handler for `signal`, unless the process ignores it; returns the
    /// disposition it replaced.
    fn install(signal: libc::c_int) -> Result<Option<libc::sigaction>, Error> {
        // SAFETY: a zeroed sigaction is a valid argument; `earlier` is written by the call.
        unsafe {
            let mut earlier: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(signal, std::ptr::null(), &mut earlier) != 0 {
                return Err(Error::os("sigaction", io::Error::last_os_error()));
            }
            if earlier.sa_sigaction == libc::SIG_IGN {
                return Ok(None);
            }
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(signal, &action, &mut earlier) != 0 {
                return Err(Error::os("sigaction", io::Error::last_os_error()));
            }
            Ok(Some(earlier))
        }
    }

    fn restore(previous: &[(libc::c_int, libc::sigaction)]) {
        for (signal, earlier) in previous {
            // SAFETY: a disposition the OS gave us for this signal.
            unsafe { libc::sigaction(*signal, earlier, std::ptr::null_mut()) };
        }
    }

    /// The handler: one `write(2)` of the signal's number, nothing else (no lock, no
    /// allocation).
    extern "C" fn on_signal(signal: libc::c_int) {
        let errno = errno::get();
        let fd = WAKE.load(Ordering::Acquire);
        let byte = signal as u8;
        // SAFETY: `fd` is the pipe's write end, open for the life of the process.
        unsafe { libc::write(fd, (&raw const byte).cast(), 1) };
        errno::set(errno);
    }

    /// The purging thread: waits for a signal's byte, purges, and lets the signal take its
    /// course.
    fn purge_on_signal(read: libc::c_int, previous: &[(libc::c_int, libc::sigaction)]) {
        loop {
            let mut byte = 0u8;
            // SAFETY: `read` is the pipe's read end; `byte` has room for one byte.
            let n = unsafe { libc::read(read, (&raw mut byte).cast(), 1) };
            if n == 1 {
                let signal = libc::c_int::from(byte);
                purge();
                restore(previous);
                // SAFETY: sending a signal to this process.
                unsafe { libc::kill(libc::getpid(), signal) };
                return;
            }
            if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
    }

    /// `errno`, saved and restored around the handler's `write` so that the interrupted code
    /// does not see it change.
    mod errno {
        #[cfg(any(target_os = "openbsd", target_os = "netbsd"))]
        use libc::__errno as location;
        #[cfg(any(target_os = "linux", target_os = "android"))]
        use libc::__errno_location as location;
        #[cfg(any(
            target_os = "macos",
            target_os = "ios",
            target_os = "freebsd",
            target_os = "dragonfly"
        ))]
        use libc::__error as location;

        pub(super) fn get() -> libc::c_int {
            // SAFETY: the calling thread's errno, always valid.
            unsafe { *location() }
        }

        pub(super) fn set(value: libc::c_int) {
            // SAFETY: as above.
            unsafe { *location() = value };
        }
    }
}
