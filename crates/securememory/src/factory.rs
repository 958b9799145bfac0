//! Factories: the `SecretFactory` trait and the default protected-memory factory with its policy.

use crate::error::Error;
use crate::region::{Locking, Memory, Obtained, Region};
use crate::secret::{Protection, Secret};
use crate::sys::{self, SecretMemSupport};
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

/// Makes secrets.
///
/// ```
/// use securememory::{ProtectedMemorySecretFactory, Secret, SecretFactory};
///
/// fn load_key(factory: &dyn SecretFactory, raw: &mut [u8]) -> Result<Secret, securememory::Error> {
///     factory.new(raw)
/// }
/// let mut raw = vec![42u8; 32];
/// let key = load_key(&ProtectedMemorySecretFactory::default(), &mut raw)?;
/// assert_eq!(key.len(), 32);
/// assert!(raw.iter().all(|&b| b == 0));
/// # Ok::<(), securememory::Error>(())
/// ```
pub trait SecretFactory: Send + Sync {
    /// Copies `bytes` into a new secret, then wipes `bytes`.
    ///
    /// On failure `bytes` is left untouched, so the caller can retry or wipe it.
    ///
    /// # Errors
    /// [`Error::InvalidLength`] for an empty slice; the factory's own errors otherwise.
    // The name is the API contract (DESIGN §4), shared with the Go original's `New`.
    #[allow(clippy::new_ret_no_self, clippy::wrong_self_convention)]
    fn new(&self, bytes: &mut [u8]) -> Result<Secret, Error>;

    /// Makes a secret of `len` random bytes, generated directly in its protected memory.
    ///
    /// # Errors
    /// [`Error::InvalidLength`] for zero or an unmappable length; [`Error::Random`] when the
    /// OS random-number generator fails; the factory's own errors otherwise.
    fn create_random(&self, len: usize) -> Result<Secret, Error>;
}

/// Where a secret's bytes live.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Backing {
    /// Secret memory where the kernel offers it, anonymous memory otherwise.
    #[default]
    Auto,
    /// Private anonymous memory: locked, guarded and inaccessible while idle, but readable by the
    /// kernel (and so by root through `/proc/PID/mem`).
    Anonymous,
    /// `memfd_secret(2)` memory (Linux 5.14 and later): removed from the kernel's direct map, so
    /// not even root can read it from outside the process. Fails where unavailable.
    SecretMem,
}

impl Backing {
    fn name(self) -> &'static str {
        match self {
            Backing::Auto => "automatic",
            Backing::Anonymous => "anonymous",
            Backing::SecretMem => "memfd_secret",
        }
    }
}

/// What to do when memory cannot be locked in RAM.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MlockPolicy {
    /// Fail with [`Error::MemoryLockLimit`].
    #[default]
    Required,
    /// Go on with unlocked memory, log a warning once per factory, and report it in
    /// [`Secret::protection`].
    BestEffort,
    /// Never lock (secret memory is locked by the kernel regardless).
    Disabled,
}

/// The default factory: every secret in its own guarded, locked, access-controlled pages.
///
/// `Default` gives the safest configuration this OS supports: [`Backing::Auto`],
/// [`MlockPolicy::Required`], guard pages on. Use [`builder`](Self::builder) to change it.
///
/// ```
/// use securememory::{Backing, MlockPolicy, ProtectedMemorySecretFactory, SecretFactory};
///
/// let factory = ProtectedMemorySecretFactory::builder()
///     .backing(Backing::Anonymous)
///     .mlock(MlockPolicy::BestEffort)
///     .guard_pages(true)
///     .build();
/// let secret = factory.create_random(32)?;
/// println!("{:?}", secret.protection());
/// # Ok::<(), securememory::Error>(())
/// ```
#[derive(Debug)]
pub struct ProtectedMemorySecretFactory {
    backing: Backing,
    mlock: MlockPolicy,
    guard_pages: bool,
    warned_unlocked: AtomicBool,
}

impl Default for ProtectedMemorySecretFactory {
    fn default() -> Self {
        Self::builder().build()
    }
}

/// Configures a [`ProtectedMemorySecretFactory`].
#[derive(Clone, Copy, Debug)]
#[must_use]
pub struct FactoryBuilder {
    backing: Backing,
    mlock: MlockPolicy,
    guard_pages: bool,
}

impl FactoryBuilder {
    /// Where secrets' bytes live (default [`Backing::Auto`]).
    pub fn backing(mut self, backing: Backing) -> Self {
        self.backing = backing;
        self
    }

    /// What to do when memory cannot be locked (default [`MlockPolicy::Required`]).
    pub fn mlock(mut self, policy: MlockPolicy) -> Self {
        self.mlock = policy;
        self
    }

    /// Whether to put an inaccessible guard page on each side of every secret (default on).
    pub fn guard_pages(mut self, enabled: bool) -> Self {
        self.guard_pages = enabled;
        self
    }

    /// Makes the factory.
    pub fn build(self) -> ProtectedMemorySecretFactory {
        // Install the fork handler before any secret exists.
        sys::fork_generation();
        ProtectedMemorySecretFactory {
            backing: self.backing,
            mlock: self.mlock,
            guard_pages: self.guard_pages,
            warned_unlocked: AtomicBool::new(false),
        }
    }
}

impl ProtectedMemorySecretFactory {
    /// A builder starting from the defaults.
    pub fn builder() -> FactoryBuilder {
        FactoryBuilder {
            backing: Backing::Auto,
            mlock: MlockPolicy::Required,
            guard_pages: true,
        }
    }

    fn locking(&self) -> Locking {
        match self.mlock {
            MlockPolicy::Required => Locking::Required,
            MlockPolicy::BestEffort => Locking::BestEffort,
            MlockPolicy::Disabled => Locking::Disabled,
        }
    }

    /// Maps a writable region for `len` bytes under this factory's policy.
    fn region(&self, len: usize) -> Result<(Region, Protection), Error> {
        let locking = self.locking();
        let anonymous = || Region::new(len, Memory::Anonymous, locking, self.guard_pages);
        let secret_memory = || Region::new(len, Memory::SecretMem, locking, self.guard_pages);
        let mut gave_up_secretmem = false;
        let made = match self.backing {
            Backing::Anonymous => anonymous(),
            Backing::SecretMem => match sys::secretmem_support() {
                SecretMemSupport::Available => secret_memory(),
                SecretMemSupport::Unavailable(error) => Err(Error::BackingUnavailable {
                    backing: Backing::SecretMem.name(),
                    reason: secretmem_refusal(&error),
                }),
                SecretMemSupport::Failed(error) => Err(Error::os(sys::call::SECRETMEM, error)),
            },
            Backing::Auto => match sys::secretmem_support() {
                SecretMemSupport::Available => match secret_memory() {
                    // Secret memory is charged to RLIMIT_MEMLOCK; past it, anonymous memory
                    // may still be had (unlocked) when the policy allows.
                    Err(Error::MemoryLockLimit { .. }) if locking != Locking::Required => {
                        gave_up_secretmem = true;
                        anonymous()
                    }
                    made => made,
                },
                SecretMemSupport::Unavailable(_) => anonymous(),
                // A momentary shortage (descriptors, memory) is reported, not papered over with
                // weaker memory.
                SecretMemSupport::Failed(error) => Err(Error::os(sys::call::SECRETMEM, error)),
            },
        };
        let (region, obtained) = made.map_err(|error| match error {
            Error::MemoryLockLimit {
                requested,
                limit,
                source,
                ..
            } => Error::MemoryLockLimit {
                requested,
                limit,
                backing: self.backing,
                source,
            },
            error => error,
        })?;
        let secretmem = region.is_secretmem();
        self.report_lost_protection(&obtained, locking, gave_up_secretmem);
        let protection = Protection {
            backing: if secretmem {
                Backing::SecretMem
            } else {
                Backing::Anonymous
            },
            locked: obtained.locked,
            dump_excluded: obtained.dump_excluded,
            fork_protected: obtained.fork_protected,
            guard_pages: self.guard_pages,
            canary: obtained.canary,
            kernel_invisible: secretmem,
        };
        Ok((region, protection))
    }

    /// Logs, once per factory, that secrets go without a protection the policy let go: locking
    /// (`BestEffort` past the limit), or secret memory (`Auto` past the limit, whatever the
    /// mlock policy).
    fn report_lost_protection(
        &self,
        obtained: &Obtained,
        locking: Locking,
        gave_up_secretmem: bool,
    ) {
        let unlocked = !obtained.locked && locking == Locking::BestEffort;
        if !(unlocked || gave_up_secretmem) || self.warned_unlocked.swap(true, Ordering::Relaxed) {
            return;
        }
        let limit = sys::memlock_limit().map_or("unlimited".to_string(), |b| format!("{b} bytes"));
        if unlocked {
            let lost_secretmem = if gave_up_secretmem {
                " and, past the limit, no longer hidden from the kernel (memfd_secret memory is \
                 charged to the same limit)"
            } else {
                ""
            };
            log::warn!(
                "secrets are not locked in RAM and may be swapped{lost_secretmem}: the \
                 locked-memory limit RLIMIT_MEMLOCK ({limit}) is reached; raise it with `ulimit \
                 -l` or systemd `LimitMEMLOCK=` (further warnings from this factory are \
                 suppressed)"
            );
        } else {
            log::warn!(
                "secrets are no longer hidden from the kernel: memfd_secret memory is charged to \
                 the locked-memory limit RLIMIT_MEMLOCK ({limit}), which is reached, so new \
                 secrets go to anonymous memory (readable through /proc/PID/mem by root); raise \
                 the limit with `ulimit -l` or systemd `LimitMEMLOCK=` (further warnings from \
                 this factory are suppressed)"
            );
        }
    }

    /// Fills a fresh region with `fill`, makes it inaccessible, and wraps it in a secret. On any
    /// failure the region is wiped and unmapped (by its `Drop`).
    fn make(
        &self,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<(), Error>,
    ) -> Result<Secret, Error> {
        let (region, protection) = self.region(len)?;
        // SAFETY: `Region::new` left the pages readable and writable, and no other reference to
        // them exists until the secret is built; the slice is dead before the protection change.
        let bytes = unsafe { std::slice::from_raw_parts_mut(region.bytes().as_ptr(), len) };
        fill(bytes)?;
        crate::access::Gate::close(&region)?;
        Ok(Secret::from_region(region, protection))
    }
}

/// Why secret memory was refused for good, for [`Error::BackingUnavailable`].
fn secretmem_refusal(error: &io::Error) -> String {
    #[cfg(target_os = "linux")]
    match error.raw_os_error() {
        Some(libc::ENOSYS) => {
            return "memfd_secret(2) is not offered by this kernel (Linux 5.14+, \
                    secretmem.enable=1 before 6.5)"
                .into()
        }
        Some(libc::EPERM | libc::EACCES) => {
            return format!(
                "memfd_secret(2) is forbidden to this process, by a seccomp filter or a \
                 security policy ({error})"
            )
        }
        _ => {}
    }
    format!("memfd_secret(2) is not available here ({error})")
}

impl SecretFactory for ProtectedMemorySecretFactory {
    fn new(&self, bytes: &mut [u8]) -> Result<Secret, Error> {
        let secret = self.make(bytes.len(), |destination| {
            destination.copy_from_slice(bytes);
            Ok(())
        })?;
        zeroize::Zeroize::zeroize(bytes);
        Ok(secret)
    }

    fn create_random(&self, len: usize) -> Result<Secret, Error> {
        self.make(len, |destination| {
            #[cfg(test)]
            sys::fault::check(sys::Op::Random).map_err(Error::Random)?;
            getrandom::fill(destination).map_err(|e| {
                Error::Random(e.raw_os_error().map_or_else(
                    || io::Error::other(e.to_string()),
                    io::Error::from_raw_os_error,
                ))
            })
        })
    }
}

#[cfg(all(test, target_os = "linux"))]
#[path = "../tests/common/mod.rs"]
mod common;

/// Every OS step of making a secret made to fail in turn: the error names the step, and nothing
/// stays mapped or locked. Each runs in a child process so the address-space checks see no other
/// test's mappings.
#[cfg(all(test, target_os = "linux"))]
mod injected_failures {
    use super::common;
    use super::*;
    use crate::sys::fault;
    use crate::sys::Op;

    fn locked_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("VmLck:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    fn factory(backing: Backing) -> ProtectedMemorySecretFactory {
        ProtectedMemorySecretFactory::builder()
            .backing(backing)
            .build()
    }

    /// Fails `op` once with `errno` while making a secret both ways (`new` and
    /// `create_random`; only the latter uses randomness); checks the error, that `new` left its
    /// source alone, and that nothing is left mapped or locked.
    fn fails_cleanly(backing: Backing, op: Op, errno: i32, operation: &str) {
        let locked_before = locked_kib();
        fault::take_reservations();
        let mut expected_reservations = 1;
        if op != Op::Random {
            fault::fail_next(op, errno);
            let mut source = [0x5au8; 48];
            let error = factory(backing).new(&mut source).unwrap_err();
            assert_eq!(source, [0x5a; 48], "{op:?}: source touched on failure");
            assert!(error.to_string().contains(operation), "{op:?}: {error}");
            expected_reservations += 1;
        }
        fault::fail_next(op, errno);
        let error = factory(backing).create_random(48).unwrap_err();
        assert!(error.to_string().contains(operation), "{op:?}: {error}");
        let reservations = fault::take_reservations();
        if op != Op::Reserve {
            assert_eq!(reservations.len(), expected_reservations, "{op:?}");
        }
        for (addr, len) in reservations {
            for offset in (0..len).step_by(sys::page_size()) {
                assert!(
                    !common::is_mapped(addr + offset),
                    "{op:?}: {:#x} still mapped",
                    addr + offset
                );
            }
        }
        assert_eq!(locked_kib(), locked_before, "{op:?}: memory left locked");
        // The failure was one-shot: the factory works again.
        let secret = factory(backing).new(&mut [1; 8]).unwrap();
        assert!(secret.with_bytes(|b| b == [1; 8]).unwrap());
    }

    #[test]
    fn failures_making_anonymous_secrets_leave_nothing_behind() {
        const NAME: &str =
            "factory::injected_failures::failures_making_anonymous_secrets_leave_nothing_behind";
        if !common::is_child(NAME) {
            common::in_child(NAME);
            return;
        }
        let eio = libc::EIO;
        fails_cleanly(Backing::Anonymous, Op::Reserve, libc::ENOMEM, "mmap");
        fails_cleanly(Backing::Anonymous, Op::Commit, eio, "mprotect");
        fails_cleanly(Backing::Anonymous, Op::Lock, eio, "mlock");
        fails_cleanly(Backing::Anonymous, Op::Lock, libc::EPERM, "RLIMIT_MEMLOCK");
        fails_cleanly(
            Backing::Anonymous,
            Op::ExcludeFromDump,
            eio,
            "MADV_DONTDUMP",
        );
        fails_cleanly(Backing::Anonymous, Op::ExcludeFromFork, eio, "madvise");
        fails_cleanly(Backing::Anonymous, Op::Protect, eio, "mprotect");
        fails_cleanly(Backing::Anonymous, Op::Random, eio, "random");
    }

    #[test]
    fn failures_making_secretmem_secrets_leave_nothing_behind() {
        const NAME: &str =
            "factory::injected_failures::failures_making_secretmem_secrets_leave_nothing_behind";
        if !common::is_child(NAME) {
            common::in_child(NAME);
            return;
        }
        if !matches!(sys::secretmem_support(), SecretMemSupport::Available) {
            assert!(
                std::env::var_os("CI").is_none(),
                "memfd_secret missing in CI"
            );
            eprintln!("skipped: memfd_secret unavailable");
            return;
        }
        let eio = libc::EIO;
        fails_cleanly(Backing::SecretMem, Op::Reserve, libc::ENOMEM, "mmap");
        fails_cleanly(Backing::SecretMem, Op::MapSecretMem, eio, "memfd_secret");
        fails_cleanly(
            Backing::SecretMem,
            Op::MapSecretMem,
            libc::EAGAIN,
            "RLIMIT_MEMLOCK",
        );
        fails_cleanly(Backing::SecretMem, Op::ExcludeFromFork, eio, "madvise");
        fails_cleanly(Backing::SecretMem, Op::Protect, eio, "mprotect");
        fails_cleanly(Backing::SecretMem, Op::Random, eio, "random");
    }

    #[test]
    fn a_failed_unlock_on_close_does_not_hide_a_corrupted_canary() {
        let secret = factory(Backing::Anonymous).create_random(32).unwrap();
        let corrupted = secret.with_bytes_mut(|b| {
            // SAFETY: the byte right before the secret is in its (writable) data page: the
            // canary, overwritten on purpose.
            unsafe { *b.as_mut_ptr().sub(1) ^= 0xff };
        });
        assert!(matches!(corrupted, Err(Error::Corrupted)), "{corrupted:?}");
        fault::fail_next(Op::Unlock, libc::EIO);
        let closed = secret.close();
        assert!(matches!(closed, Err(Error::Corrupted)), "{closed:?}");
    }

    /// A fork between committing anonymous pages and `MADV_WIPEONFORK` gives the child a private
    /// copy of zeroed pages: nothing the parent writes afterwards reaches it.
    #[test]
    fn a_child_forked_before_anonymous_pages_are_protected_sees_none_of_the_later_writes() {
        const NAME: &str = "factory::injected_failures::a_child_forked_before_anonymous_pages_are_protected_sees_none_of_the_later_writes";
        if !common::is_child(NAME) {
            common::in_child(NAME);
            return;
        }
        let mut pipe = [0; 2];
        // SAFETY: a valid out-array of two descriptors.
        assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
        let child = std::rc::Rc::new(std::cell::Cell::new(0));
        let in_hook = child.clone();
        fault::on_next_commit(move |addr, len| {
            // SAFETY: this child test process has one thread that matters; the forked process
            // only reads its copy of the pages and leaves with _exit.
            let pid = unsafe { libc::fork() };
            if pid != 0 {
                in_hook.set(pid);
                return;
            }
            let mut byte = 0u8;
            // SAFETY: reading one byte into a local from our end of the pipe.
            let got = unsafe { libc::read(pipe[0], (&mut byte as *mut u8).cast(), 1) };
            // SAFETY: the committed pages are readable and writable, here as in the parent.
            let pages = unsafe { std::slice::from_raw_parts(addr.as_ptr(), len) };
            let code = if got != 1 {
                2
            } else if pages.iter().all(|&b| b == 0) {
                0
            } else {
                1
            };
            // SAFETY: leave the forked child without running the parent's destructors.
            unsafe { libc::_exit(code) };
        });
        let secret = factory(Backing::Anonymous).new(&mut [0xab; 64]).unwrap();
        assert!(secret.with_bytes(|b| b == [0xab; 64]).unwrap());
        let pid = child.get();
        assert!(pid > 0, "the hook did not run");
        // SAFETY: one byte from a local to our end of the pipe.
        assert_eq!(unsafe { libc::write(pipe[1], [1u8].as_ptr().cast(), 1) }, 1);
        let mut status = 0;
        // SAFETY: waiting for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status), "child status {status}");
        assert_eq!(
            libc::WEXITSTATUS(status),
            0,
            "the child saw the parent's later writes (1) or got no go-ahead (2)"
        );
    }

    #[test]
    fn failed_reprotect_after_an_access_is_returned_and_retried() {
        let secret = factory(Backing::Auto).new(&mut [9; 8]).unwrap();
        let mut ran = false;
        fault::fail_next(Op::Protect, libc::EIO);
        // The failure is in opening: the callback never runs.
        assert!(secret.with_bytes(|_| ran = true).is_err());
        assert!(!ran);
        // Let the open succeed and the close after the callback fail.
        let result = secret.with_bytes(|b| {
            fault::fail_next(Op::Protect, libc::EIO);
            b[0]
        });
        assert!(
            matches!(
                result,
                Err(Error::Os {
                    operation: "mprotect",
                    ..
                })
            ),
            "{result:?}"
        );
        // Remembered and retried: the next access works and leaves the memory closed.
        assert_eq!(secret.with_bytes(|b| b[0]).unwrap(), 9);
        secret.with_bytes_mut(|b| b[0] = 1).unwrap();
        secret.close().unwrap();
    }
}
