//! Factories: the `SecretFactory` trait and the default protected-memory factory with its policy.

use crate::error::Error;
use crate::policy::{Backing, MlockPolicy, Protection, Strategy};
use crate::region::{Memory, Region};
use crate::report::{Degradation, Lost, OnCorruption, Report, ReportChoices, Reporting};
use crate::sealed::{Keeper, Plaintext, Sealed};
use crate::secret::{Secret, Store};
use crate::sys::{self, ProtectionKey, SecretMemSupport};
use crate::usage::Tally;
use std::io;
use std::panic::Location;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

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
    // The name is part of the API contract (ARCHITECTURE.md), shared with the Go original's `New`.
    #[allow(clippy::new_ret_no_self, clippy::wrong_self_convention)]
    #[track_caller]
    fn new(&self, bytes: &mut [u8]) -> Result<Secret, Error>;

    /// Makes a secret of `len` random bytes, generated directly in its protected memory.
    ///
    /// # Errors
    /// [`Error::InvalidLength`] for zero or an unmappable length; [`Error::Random`] when the
    /// OS random-number generator fails; the factory's own errors otherwise.
    #[track_caller]
    fn create_random(&self, len: usize) -> Result<Secret, Error>;
}

/// The default factory: every secret in its own guarded, locked, access-controlled pages.
///
/// `Default` gives the safest configuration this OS supports: [`Backing::Auto`],
/// [`MlockPolicy::Required`], guard pages on. Use [`builder`](Self::builder) to change it.
///
/// A secret that gets less protection than the policy aimed for (unlocked under
/// [`MlockPolicy::BestEffort`], or in anonymous memory where [`Backing::Auto`] aimed for secret
/// memory) is reported once per factory, to `log` and as one line on stderr, and to a callback
/// for every such secret ([`FactoryBuilder::report`], [`FactoryBuilder::on_degraded`]).
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
    strategy: Strategy,
    guard_pages: bool,
    /// `None`: the default choices, shared by every factory made by [`Self::DEFAULT`] (which,
    /// being `const`, cannot allocate its own).
    reporting: Option<Arc<Reporting>>,
}

impl Default for ProtectedMemorySecretFactory {
    fn default() -> Self {
        Self::DEFAULT
    }
}

// The factory's only state that unwinding could catch half-changed is its report's "written
// once" flag, an atomic; a panic in the degradation callback leaves it as set or not set.
impl std::panic::UnwindSafe for ProtectedMemorySecretFactory {}
impl std::panic::RefUnwindSafe for ProtectedMemorySecretFactory {}

/// The reporting of factories made with the default choices.
fn default_reporting() -> &'static Arc<Reporting> {
    static DEFAULT: OnceLock<Arc<Reporting>> = OnceLock::new();
    DEFAULT.get_or_init(|| Arc::new(Reporting::new(ReportChoices::default())))
}

/// Configures a [`ProtectedMemorySecretFactory`].
///
/// ```
/// use securememory::{Backing, MlockPolicy, OnCorruption, ProtectedMemorySecretFactory, Strategy};
///
/// let factory = ProtectedMemorySecretFactory::builder()
///     .backing(Backing::Auto)
///     .mlock(MlockPolicy::Required)
///     .strategy(Strategy::Sealed)
///     .on_corruption(OnCorruption::Abort)
///     .build();
/// let key = factory.create_random(32)?;
/// assert_eq!(key.protection().strategy, Strategy::Sealed);
/// # Ok::<(), securememory::Error>(())
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct FactoryBuilder {
    backing: Backing,
    mlock: MlockPolicy,
    strategy: Strategy,
    guard_pages: bool,
    reporting: ReportChoices,
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

    /// How an access opens a secret (default [`Strategy::Auto`]). A strategy this machine cannot
    /// give is an error when a secret is made, never a silent fallback.
    pub fn strategy(mut self, strategy: Strategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// Whether to put an inaccessible guard page on each side of every secret (default on).
    pub fn guard_pages(mut self, enabled: bool) -> Self {
        self.guard_pages = enabled;
        self
    }

    /// Where reports go (default [`Report::LogAndStderr`]): the first secret that gets less
    /// protection than the policy aimed for (a [`Degradation`]; later ones of this factory are
    /// not written again), and each error that closing a dropped secret meets
    /// ([`Error::Corrupted`] included).
    ///
    /// By default both go to `log` and to stderr as one line starting with `securememory:`, so
    /// that they reach the operator where no logger is installed. [`Report::Log`] keeps them to
    /// `log`; [`Report::Silent`] drops them (the callback of
    /// [`on_degraded`](Self::on_degraded) still runs).
    ///
    /// ```
    /// use securememory::{MlockPolicy, ProtectedMemorySecretFactory, Report, SecretFactory};
    ///
    /// let factory = ProtectedMemorySecretFactory::builder()
    ///     .mlock(MlockPolicy::BestEffort)
    ///     .report(Report::Silent)
    ///     .build();
    /// // Nothing is written; each secret's protection says what it got.
    /// let secret = factory.create_random(32)?;
    /// let _locked = secret.protection().locked;
    /// # Ok::<(), securememory::Error>(())
    /// ```
    pub fn report(mut self, report: Report) -> Self {
        self.reporting.report = report;
        self
    }

    /// Calls `callback` for every secret that gets less protection than the policy aimed for,
    /// with what was lost, what was aimed for and obtained, why and what to do: to count them,
    /// to raise an alert, or to route the report to the program's own logging (with
    /// [`report(Report::Silent)`](Self::report) to write nothing else). Replaces a callback set
    /// before.
    ///
    /// The callback runs on the thread making the secret, before the secret is filled, and
    /// whatever [`report`](Self::report) says. A panic in it propagates out of the call that
    /// makes the secret, which then fails (the source bytes of `new` stay untouched). To refuse
    /// weaker protection outright rather than hear of it, keep [`MlockPolicy::Required`] and
    /// [`Backing::SecretMem`] (or `Auto` with `Required`), which make it an error.
    ///
    /// ```
    /// use securememory::{Lost, MlockPolicy, ProtectedMemorySecretFactory, Report, SecretFactory};
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    /// use std::sync::Arc;
    ///
    /// let unlocked = Arc::new(AtomicUsize::new(0));
    /// let counter = unlocked.clone();
    /// let factory = ProtectedMemorySecretFactory::builder()
    ///     .mlock(MlockPolicy::BestEffort)
    ///     .report(Report::Log)
    ///     .on_degraded(move |degradation| {
    ///         if degradation.lost.contains(&Lost::Locked) {
    ///             counter.fetch_add(1, Ordering::Relaxed);
    ///         }
    ///         eprintln!("secret degraded: {degradation}");
    ///     })
    ///     .build();
    /// let secret = factory.create_random(32)?;
    /// assert_eq!(secret.protection().locked, unlocked.load(Ordering::Relaxed) == 0);
    /// # Ok::<(), securememory::Error>(())
    /// ```
    pub fn on_degraded(mut self, callback: impl Fn(&Degradation) + Send + Sync + 'static) -> Self {
        self.reporting.on_degraded = Some(Arc::new(callback));
        self
    }

    /// What a secret does when it finds the canary before its bytes overwritten (default
    /// [`OnCorruption::ReturnError`]: return [`Error::Corrupted`]; see [`OnCorruption`] for why).
    /// [`OnCorruption::Abort`] wipes the secret, writes one line to stderr and aborts the process,
    /// as libsodium does.
    pub fn on_corruption(mut self, on_corruption: OnCorruption) -> Self {
        self.reporting.on_corruption = on_corruption;
        self
    }

    /// Makes the factory.
    pub fn build(self) -> ProtectedMemorySecretFactory {
        sys::install_fork_handlers();
        ProtectedMemorySecretFactory {
            backing: self.backing,
            mlock: self.mlock,
            strategy: self.strategy,
            guard_pages: self.guard_pages,
            reporting: Some(Arc::new(Reporting::new(self.reporting))),
        }
    }
}

impl ProtectedMemorySecretFactory {
    /// The default factory as a constant, for a `static` without `LazyLock`: the same choices as
    /// [`Default`] and [`builder`](Self::builder)`().build()`. Factories made this way share one
    /// report of lost protection (written once for all of them).
    ///
    /// ```
    /// use securememory::ProtectedMemorySecretFactory;
    ///
    /// static SECRETS: ProtectedMemorySecretFactory = ProtectedMemorySecretFactory::DEFAULT;
    ///
    /// // No trait to import: the constructors are the factory's own methods too.
    /// let key = SECRETS.create_random(32)?;
    /// assert_eq!(key.len(), 32);
    /// # Ok::<(), securememory::Error>(())
    /// ```
    pub const DEFAULT: ProtectedMemorySecretFactory = ProtectedMemorySecretFactory {
        backing: Backing::Auto,
        mlock: MlockPolicy::Required,
        strategy: Strategy::Auto,
        guard_pages: true,
        reporting: None,
    };

    /// Where this factory's reports go.
    fn reporting(&self) -> &Arc<Reporting> {
        self.reporting
            .as_ref()
            .unwrap_or_else(|| default_reporting())
    }

    /// A builder starting from the defaults.
    pub fn builder() -> FactoryBuilder {
        FactoryBuilder {
            backing: Backing::Auto,
            mlock: MlockPolicy::Required,
            strategy: Strategy::Auto,
            guard_pages: true,
            reporting: ReportChoices::default(),
        }
    }

    /// The protection key the strategy calls for with `memory`, if any. `Auto` takes one only
    /// for secret memory (see [`system::auto_strategy`](crate::system::auto_strategy)): under a
    /// key, anonymous memory would stay readable to other processes.
    fn protection_key(&self, memory: Memory) -> Result<Option<ProtectionKey>, Error> {
        let unavailable = |reason: String| Error::StrategyUnavailable {
            strategy: self.strategy,
            reason,
        };
        match self.strategy {
            Strategy::Auto if memory == Memory::SecretMem => Ok(sys::protection_key().ok()),
            Strategy::Auto | Strategy::PageProtection => Ok(None),
            Strategy::ProtectionKey => sys::protection_key().map(Some).map_err(unavailable),
            // The keeper of a sealed secret's key takes the key where the CPU has one.
            Strategy::Sealed => Ok(None),
        }
    }

    /// Maps a writable region for `len` bytes under this factory's policy.
    fn region(&self, len: usize) -> Result<(Region, Protection), Error> {
        let mlock = self.mlock;
        let guard_pages = self.guard_pages;
        let map = |memory| {
            let key = self.protection_key(memory)?;
            Region::new(len, memory, mlock, guard_pages, key)
        };
        let anonymous = || map(Memory::Anonymous);
        let secret_memory = || map(Memory::SecretMem);
        let mut gave_up_secretmem = false;
        let made = match self.preferred_memory()? {
            Memory::Anonymous => anonymous(),
            Memory::SecretMem => match secret_memory() {
                // Secret memory is charged to RLIMIT_MEMLOCK; past it, `Auto` may still have
                // anonymous memory (unlocked) when the policy allows.
                Err(Error::MemoryLockLimit { .. })
                    if self.backing == Backing::Auto && mlock != MlockPolicy::Required =>
                {
                    gave_up_secretmem = true;
                    anonymous()
                }
                made => made,
            },
        };
        let (region, protection) = made.map_err(|error| match error {
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
        self.report_lost_protection(&protection, gave_up_secretmem);
        Ok((region, protection))
    }

    /// Reports a secret that goes without a protection the policy let go: locking
    /// (`BestEffort` past the limit), or secret memory (`Auto` past the limit, whatever the
    /// mlock policy).
    fn report_lost_protection(&self, protection: &Protection, gave_up_secretmem: bool) {
        let unlocked = !protection.locked && self.mlock == MlockPolicy::BestEffort;
        if !(unlocked || gave_up_secretmem) {
            return;
        }
        let limit = sys::memlock_limit().map_or("unlimited".to_string(), |b| format!("{b} bytes"));
        let mut lost = Vec::with_capacity(2);
        let mut requested = *protection;
        if unlocked {
            lost.push(Lost::Locked);
            requested.locked = true;
        }
        if gave_up_secretmem {
            lost.push(Lost::KernelInvisible);
            requested.backing = Backing::SecretMem;
            requested.kernel_invisible = true;
            if let Ok(Some(_)) = self.protection_key(Memory::SecretMem) {
                requested.strategy = Strategy::ProtectionKey;
            }
        }
        let reason = if unlocked {
            let lost_secretmem = if gave_up_secretmem {
                " and, past the limit, no longer hidden from the kernel (memfd_secret memory is \
                 charged to the same limit)"
            } else {
                ""
            };
            format!(
                "secrets are not locked in RAM and may be swapped{lost_secretmem}: the \
                 locked-memory limit RLIMIT_MEMLOCK ({limit}) is reached"
            )
        } else {
            format!(
                "secrets are no longer hidden from the kernel: memfd_secret memory is charged to \
                 the locked-memory limit RLIMIT_MEMLOCK ({limit}), which is reached, so new \
                 secrets go to anonymous memory (readable through /proc/PID/mem by root)"
            )
        };
        self.reporting().degraded(&Degradation {
            lost,
            requested,
            obtained: *protection,
            reason,
            remedy: "raise the limit with `ulimit -l` or systemd `LimitMEMLOCK=`".to_string(),
        });
    }

    /// The memory this factory's backing asks for on this machine: what a mapped secret tries
    /// first, and where a sealed secret's key and scratch areas live. `Auto` takes secret
    /// memory where the kernel offers it; a momentary shortage (descriptors, memory) is
    /// reported, not papered over with weaker memory.
    fn preferred_memory(&self) -> Result<Memory, Error> {
        match self.backing {
            Backing::Anonymous => Ok(Memory::Anonymous),
            Backing::SecretMem => crate::system::check_secret_memory().map(|()| Memory::SecretMem),
            Backing::Auto => match sys::secretmem_support() {
                SecretMemSupport::Available => Ok(Memory::SecretMem),
                SecretMemSupport::Unavailable(_) => Ok(Memory::Anonymous),
                SecretMemSupport::Failed(error) => Err(error.into()),
            },
        }
    }

    /// Fills the calling thread's scratch area with `fill` and seals it into a new secret. On
    /// any failure the scratch area is wiped, and nothing is counted.
    fn make_sealed<E: From<Error>>(
        &self,
        len: usize,
        created_at: &'static Location<'static>,
        fill: impl FnOnce(&mut [u8]) -> Result<(), E>,
    ) -> Result<Secret, E> {
        let started = Instant::now();
        Sealed::check_len(len)?;
        let keeper = Keeper::get(self.preferred_memory()?)?;
        let mut plaintext = Plaintext::take(keeper.memory(), len)?;
        fill(plaintext.bytes_mut())?;
        let sealed = Sealed::seal(keeper, plaintext, crate::secret::no_window_open())?;
        let protection = keeper.protection();
        let tally = Tally::made(&protection, 0, started);
        Ok(Secret::from_store(
            Store::Sealed(sealed),
            self.reporting().clone(),
            tally,
            created_at,
        ))
    }

    /// Fills a fresh region with `fill`, makes it inaccessible, and wraps it in a secret. On any
    /// failure the region is wiped and unmapped (by its `Drop`), and nothing is counted.
    fn make<E: From<Error>>(
        &self,
        len: usize,
        created_at: &'static Location<'static>,
        fill: impl FnOnce(&mut [u8]) -> Result<(), E>,
    ) -> Result<Secret, E> {
        sys::install_fork_handlers();
        if self.strategy == Strategy::Sealed {
            return self.make_sealed(len, created_at, fill);
        }
        let started = Instant::now();
        let (region, protection) = self.region(len)?;
        // SAFETY: `Region::new` left the pages readable and writable, and no other reference to
        // them exists until the secret is built; the slice is dead before the protection change.
        let bytes = unsafe { std::slice::from_raw_parts_mut(region.bytes().as_ptr(), len) };
        fill(bytes)?;
        region.conceal_when_idle()?;
        let tally = Tally::made(&protection, region.locked_len(), started);
        Ok(Secret::from_store(
            Store::Mapped(Box::new(region)),
            self.reporting().clone(),
            tally,
            created_at,
        ))
    }
}

impl SecretFactory for ProtectedMemorySecretFactory {
    #[track_caller]
    fn new(&self, bytes: &mut [u8]) -> Result<Secret, Error> {
        ProtectedMemorySecretFactory::new(self, bytes)
    }

    #[track_caller]
    fn create_random(&self, len: usize) -> Result<Secret, Error> {
        ProtectedMemorySecretFactory::create_random(self, len)
    }
}

/// The constructors, also reachable without importing [`SecretFactory`]. Each fills the
/// secret's own memory (its pages, or for [`Strategy::Sealed`] the thread's scratch area): the
/// library makes no other copy of the bytes.
impl ProtectedMemorySecretFactory {
    /// Copies `bytes` into a new secret, then wipes `bytes`; on failure `bytes` is left
    /// untouched, so the caller can retry or wipe it. As [`SecretFactory::new`].
    ///
    /// # Errors
    /// [`Error::InvalidLength`] for an empty slice; what mapping and locking memory can meet.
    // The name is part of the API contract (ARCHITECTURE.md), shared with the Go original's `New`.
    #[allow(clippy::new_ret_no_self, clippy::wrong_self_convention)]
    #[track_caller]
    pub fn new(&self, bytes: &mut [u8]) -> Result<Secret, Error> {
        let secret = self.make(bytes.len(), Location::caller(), |destination| {
            destination.copy_from_slice(bytes);
            Ok::<(), Error>(())
        })?;
        zeroize::Zeroize::zeroize(bytes);
        Ok(secret)
    }

    /// Makes a secret of `len` random bytes, generated directly in its protected memory. As
    /// [`SecretFactory::create_random`].
    ///
    /// # Errors
    /// [`Error::InvalidLength`] for zero or an unmappable length; [`Error::Random`] when the
    /// OS random-number generator fails; what mapping and locking memory can meet.
    #[track_caller]
    pub fn create_random(&self, len: usize) -> Result<Secret, Error> {
        self.make(len, Location::caller(), |destination| {
            #[cfg(test)]
            sys::fault::check(sys::Op::Random).map_err(Error::Random)?;
            getrandom::fill(destination).map_err(Error::from_random)
        })
    }

    /// Makes a secret of `len` bytes that `fill` writes in place: for a key derivation's output,
    /// a decoder, anything that can write into a buffer it is given. `fill` gets the secret's
    /// memory, zeroed; when it fails, the memory is wiped and its error returned (any error
    /// type that a library [`Error`] converts into, so that `?` works for both).
    ///
    /// ```
    /// use securememory::{Error, ProtectedMemorySecretFactory};
    ///
    /// static SECRETS: ProtectedMemorySecretFactory = ProtectedMemorySecretFactory::DEFAULT;
    ///
    /// // A hex-encoded key decoded straight into protected memory.
    /// let hex = "00112233445566778899aabbccddeeff";
    /// let key = SECRETS.new_with(hex.len() / 2, |key: &mut [u8]| {
    ///     for (byte, pair) in key.iter_mut().zip(hex.as_bytes().chunks(2)) {
    ///         let pair = std::str::from_utf8(pair).map_err(|_| Error::InvalidLength)?;
    ///         *byte = u8::from_str_radix(pair, 16).map_err(|_| Error::InvalidLength)?;
    ///     }
    ///     Ok::<(), Error>(())
    /// })?;
    /// assert_eq!(key.with_bytes(|k| k[15])?, 0xff);
    /// # Ok::<(), Error>(())
    /// ```
    ///
    /// # Errors
    /// Those of [`new`](Self::new), and whatever `fill` returns.
    #[track_caller]
    pub fn new_with<E: From<Error>>(
        &self,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<(), E>,
    ) -> Result<Secret, E> {
        self.make(len, Location::caller(), fill)
    }

    /// Reads exactly `len` bytes from `reader` into a new secret. Give an unbuffered reader (a
    /// `File`, not a `BufReader`): a buffer between would keep a copy of the bytes.
    ///
    /// ```
    /// use securememory::ProtectedMemorySecretFactory;
    ///
    /// let mut source: &[u8] = b"0123456789abcdef";
    /// let key = ProtectedMemorySecretFactory::DEFAULT.from_reader(&mut source, 16)?;
    /// assert_eq!(key.len(), 16);
    /// # Ok::<(), securememory::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Read`] when the reader fails or ends before `len` bytes (what was read is
    /// wiped); those of [`new`](Self::new).
    #[track_caller]
    pub fn from_reader(&self, mut reader: impl io::Read, len: usize) -> Result<Secret, Error> {
        self.make(len, Location::caller(), |destination| {
            reader.read_exact(destination).map_err(Error::Read)
        })
    }

    /// Reads from `reader` up to the first `delimiter` (not kept; nor a `\r` right before a
    /// `\n` delimiter) or the end, into a new secret of exactly that length: a password line.
    /// Reads one byte per call, so that nothing past the delimiter is consumed; give an
    /// unbuffered reader (a buffer between would keep a copy of the bytes). The bytes go to a
    /// secret of `max_len` first, then to one of their length; the first is wiped and closed.
    ///
    /// ```
    /// use securememory::ProtectedMemorySecretFactory;
    ///
    /// let mut file: &[u8] = b"correct horse\r\nnext line";
    /// let password = ProtectedMemorySecretFactory::DEFAULT.from_reader_until(&mut file, b'\n', 1024)?;
    /// assert!(password.with_bytes(|p| p == b"correct horse")?);
    /// assert_eq!(file, b"next line");
    /// # Ok::<(), securememory::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Read`] when the reader fails, or when `max_len` bytes come without the delimiter
    /// or the end; [`Error::InvalidLength`] when nothing comes before them; those of
    /// [`new`](Self::new).
    #[track_caller]
    pub fn from_reader_until(
        &self,
        reader: impl io::Read,
        delimiter: u8,
        max_len: usize,
    ) -> Result<Secret, Error> {
        self.read_up_to(reader, Some(delimiter), max_len, Location::caller())
    }

    /// Reads `reader` to its end into a new secret of exactly that length, refusing more than
    /// `max_len` bytes: a key file. Reads into protected memory only, as
    /// [`from_reader_until`](Self::from_reader_until) does.
    ///
    /// # Errors
    /// [`Error::Read`] when the reader fails or has more than `max_len` bytes;
    /// [`Error::InvalidLength`] when it is empty; those of [`new`](Self::new).
    #[track_caller]
    pub fn from_reader_to_end(
        &self,
        reader: impl io::Read,
        max_len: usize,
    ) -> Result<Secret, Error> {
        self.read_up_to(reader, None, max_len, Location::caller())
    }

    fn read_up_to(
        &self,
        mut reader: impl io::Read,
        delimiter: Option<u8>,
        max_len: usize,
        created_at: &'static Location<'static>,
    ) -> Result<Secret, Error> {
        let mut len = 0;
        let staging = self.make(max_len, created_at, |buffer| {
            len = read_until(&mut reader, delimiter, buffer)?;
            Ok::<(), Error>(())
        })?;
        let made = staging.with_bytes(|staged| {
            let mut kept = &staged[..len];
            if delimiter == Some(b'\n') {
                kept = kept.strip_suffix(b"\r").unwrap_or(kept);
            }
            self.make(kept.len(), created_at, |destination| {
                destination.copy_from_slice(kept);
                Ok::<(), Error>(())
            })
        });
        let closed = staging.close();
        let secret = made??;
        closed?;
        Ok(secret)
    }

    /// Moves the bytes of `bytes` into a new secret and wipes the vector's whole capacity,
    /// success or not (it is consumed either way).
    ///
    /// ```
    /// use securememory::ProtectedMemorySecretFactory;
    ///
    /// let token = String::from("bearer-token").into_bytes();
    /// let secret = ProtectedMemorySecretFactory::DEFAULT.from_vec(token)?;
    /// assert_eq!(secret.len(), 12);
    /// # Ok::<(), securememory::Error>(())
    /// ```
    ///
    /// # Errors
    /// Those of [`new`](Self::new).
    #[track_caller]
    pub fn from_vec(&self, mut bytes: Vec<u8>) -> Result<Secret, Error> {
        let made = self.make(bytes.len(), Location::caller(), |destination| {
            destination.copy_from_slice(&bytes);
            Ok::<(), Error>(())
        });
        zeroize::Zeroize::zeroize(&mut bytes);
        made
    }

    /// Moves a string's bytes into a new secret and wipes its whole capacity, success or not.
    ///
    /// # Errors
    /// Those of [`new`](Self::new).
    #[track_caller]
    pub fn from_string(&self, text: String) -> Result<Secret, Error> {
        self.from_vec(text.into_bytes())
    }

    /// A new secret holding the bytes of `secret`, copied from its memory to the new one's
    /// with no copy between.
    ///
    /// ```
    /// use securememory::ProtectedMemorySecretFactory;
    ///
    /// let factory = ProtectedMemorySecretFactory::DEFAULT;
    /// let key = factory.create_random(32)?;
    /// let copy = factory.duplicate(&key)?;
    /// assert!(key.constant_time_eq_secret(&copy)?);
    /// # Ok::<(), securememory::Error>(())
    /// ```
    ///
    /// # Errors
    /// Those of [`Secret::with_bytes`] on `secret` ([`Error::Closed`] ...) and of
    /// [`new`](Self::new).
    #[track_caller]
    pub fn duplicate(&self, secret: &Secret) -> Result<Secret, Error> {
        self.make(secret.len(), Location::caller(), |destination| {
            secret.with_bytes(|source| destination.copy_from_slice(source))
        })
    }
}

/// The factory of [`Secret`]'s own constructors.
static DEFAULT_FACTORY: ProtectedMemorySecretFactory = ProtectedMemorySecretFactory::DEFAULT;

/// The front door: secrets made by the default factory
/// ([`ProtectedMemorySecretFactory::DEFAULT`]), with one import. Use a factory of your own for
/// other choices ([`ProtectedMemorySecretFactory::builder`]).
///
/// ```
/// use securememory::Secret;
///
/// let key = Secret::random(32)?;
/// let mut raw = *b"a token";
/// let token = Secret::new(&mut raw)?;
/// assert_eq!(raw, [0; 7], "the source is wiped");
/// assert!(token.constant_time_eq(b"a token")?);
/// # let _ = key;
/// # Ok::<(), securememory::Error>(())
/// ```
impl Secret {
    /// Copies `bytes` into a new secret and wipes them: [`ProtectedMemorySecretFactory::new`]
    /// with the default factory.
    ///
    /// # Errors
    /// See [`ProtectedMemorySecretFactory::new`].
    #[track_caller]
    pub fn new(bytes: &mut [u8]) -> Result<Secret, Error> {
        DEFAULT_FACTORY.new(bytes)
    }

    /// A secret of `len` random bytes: [`ProtectedMemorySecretFactory::create_random`] with the
    /// default factory.
    ///
    /// # Errors
    /// See [`ProtectedMemorySecretFactory::create_random`].
    #[track_caller]
    pub fn random(len: usize) -> Result<Secret, Error> {
        DEFAULT_FACTORY.create_random(len)
    }

    /// The bytes of `reader` to its end, at most `max_len`:
    /// [`ProtectedMemorySecretFactory::from_reader_to_end`] with the default factory.
    ///
    /// # Errors
    /// See [`ProtectedMemorySecretFactory::from_reader_to_end`].
    #[track_caller]
    pub fn from_reader_to_end(reader: impl io::Read, max_len: usize) -> Result<Secret, Error> {
        DEFAULT_FACTORY.from_reader_to_end(reader, max_len)
    }

    /// A secret of `len` bytes written in place by `fill`:
    /// [`ProtectedMemorySecretFactory::new_with`] with the default factory.
    ///
    /// # Errors
    /// See [`ProtectedMemorySecretFactory::new_with`].
    #[track_caller]
    pub fn new_with<E: From<Error>>(
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<(), E>,
    ) -> Result<Secret, E> {
        DEFAULT_FACTORY.new_with(len, fill)
    }

    /// Exactly `len` bytes read from `reader`: [`ProtectedMemorySecretFactory::from_reader`]
    /// with the default factory.
    ///
    /// # Errors
    /// See [`ProtectedMemorySecretFactory::from_reader`].
    #[track_caller]
    pub fn from_reader(reader: impl io::Read, len: usize) -> Result<Secret, Error> {
        DEFAULT_FACTORY.from_reader(reader, len)
    }

    /// The bytes of `reader` up to `delimiter`:
    /// [`ProtectedMemorySecretFactory::from_reader_until`] with the default factory.
    ///
    /// # Errors
    /// See [`ProtectedMemorySecretFactory::from_reader_until`].
    #[track_caller]
    pub fn from_reader_until(
        reader: impl io::Read,
        delimiter: u8,
        max_len: usize,
    ) -> Result<Secret, Error> {
        DEFAULT_FACTORY.from_reader_until(reader, delimiter, max_len)
    }

    /// A vector's bytes, its capacity wiped: [`ProtectedMemorySecretFactory::from_vec`] with the
    /// default factory.
    ///
    /// # Errors
    /// See [`ProtectedMemorySecretFactory::from_vec`].
    #[track_caller]
    pub fn from_vec(bytes: Vec<u8>) -> Result<Secret, Error> {
        DEFAULT_FACTORY.from_vec(bytes)
    }

    /// A string's bytes, its capacity wiped: [`ProtectedMemorySecretFactory::from_string`] with
    /// the default factory.
    ///
    /// # Errors
    /// See [`ProtectedMemorySecretFactory::from_string`].
    #[track_caller]
    pub fn from_string(text: String) -> Result<Secret, Error> {
        DEFAULT_FACTORY.from_string(text)
    }

    /// A new secret with the same bytes, made by the default factory:
    /// [`ProtectedMemorySecretFactory::duplicate`].
    ///
    /// # Errors
    /// See [`ProtectedMemorySecretFactory::duplicate`].
    #[track_caller]
    pub fn duplicate(&self) -> Result<Secret, Error> {
        DEFAULT_FACTORY.duplicate(self)
    }
}

/// Reads into `buffer` one byte per call until `delimiter` (not stored) or the end; the number
/// of bytes stored.
fn read_until(
    reader: &mut impl io::Read,
    delimiter: Option<u8>,
    buffer: &mut [u8],
) -> Result<usize, Error> {
    let mut len = 0;
    loop {
        let Some(slot) = buffer.get_mut(len..=len) else {
            // Full: only the end (or the delimiter) may come now.
            let mut next = 0u8;
            let more = match reader.read(std::slice::from_mut(&mut next)) {
                Ok(n) => n,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(Error::Read(error)),
            };
            let ended = more == 0 || Some(next) == delimiter;
            zeroize::Zeroize::zeroize(&mut next);
            if ended {
                break;
            }
            return Err(Error::Read(io::Error::new(
                io::ErrorKind::InvalidData,
                "longer than the most bytes allowed",
            )));
        };
        match reader.read(slot) {
            Ok(0) => break,
            Ok(_) if Some(slot[0]) == delimiter => {
                slot[0] = 0;
                break;
            }
            Ok(_) => len += 1,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(Error::Read(error)),
        }
    }
    if len == 0 {
        return Err(Error::InvalidLength);
    }
    Ok(len)
}

#[cfg(all(test, target_os = "linux"))]
#[path = "../tests/common/process.rs"]
pub(crate) mod common;

#[cfg(all(test, target_os = "linux"))]
mod injected_failures;

#[cfg(test)]
mod reading {
    use super::*;

    /// A reader of `bytes` that is interrupted before every byte it hands out (one per call),
    /// then fails with `error` when they run out (or ends, without one).
    struct Reader<'a> {
        bytes: &'a [u8],
        interrupt: bool,
        interrupted: bool,
        error: Option<io::ErrorKind>,
    }

    impl<'a> Reader<'a> {
        fn plain(bytes: &'a [u8]) -> Self {
            Reader {
                bytes,
                interrupt: false,
                interrupted: false,
                error: None,
            }
        }
        fn interrupted(bytes: &'a [u8]) -> Self {
            Reader {
                interrupt: true,
                ..Reader::plain(bytes)
            }
        }
        fn failing(bytes: &'a [u8]) -> Self {
            Reader {
                error: Some(io::ErrorKind::BrokenPipe),
                ..Reader::plain(bytes)
            }
        }
    }

    impl io::Read for Reader<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.interrupt && !std::mem::replace(&mut self.interrupted, true) {
                return Err(io::ErrorKind::Interrupted.into());
            }
            self.interrupted = false;
            match (self.bytes.split_first(), self.error) {
                (Some((&byte, rest)), _) if !buf.is_empty() => {
                    buf[0] = byte;
                    self.bytes = rest;
                    Ok(1)
                }
                (None, Some(kind)) => Err(kind.into()),
                _ => Ok(0),
            }
        }
    }

    /// What `read_until` stored and left unread, or its error.
    fn read(
        mut reader: Reader<'_>,
        delimiter: Option<u8>,
        max_len: usize,
    ) -> Result<(Vec<u8>, Vec<u8>), Error> {
        let mut buffer = vec![0xee; max_len];
        let len = read_until(&mut reader, delimiter, &mut buffer)?;
        assert!(
            buffer[len..].iter().all(|&b| b == 0xee || b == 0),
            "{buffer:?}"
        );
        buffer.truncate(len);
        Ok((buffer, reader.bytes.to_vec()))
    }

    #[test]
    fn read_until_stops_at_the_delimiter_or_the_end_interrupted_or_not() {
        for reader in [Reader::plain, Reader::interrupted] {
            let (kept, rest) = read(reader(b"abc\nrest"), Some(b'\n'), 8).unwrap();
            assert_eq!((&kept[..], &rest[..]), (&b"abc"[..], &b"rest"[..]));
            let (kept, rest) = read(reader(b"abc"), None, 8).unwrap();
            assert_eq!((&kept[..], &rest[..]), (&b"abc"[..], &b""[..]));
            // Full, then the end or the delimiter: accepted.
            let (kept, _) = read(reader(b"abc"), None, 3).unwrap();
            assert_eq!(kept, b"abc");
            let (kept, rest) = read(reader(b"abc\nrest"), Some(b'\n'), 3).unwrap();
            assert_eq!((&kept[..], &rest[..]), (&b"abc"[..], &b"rest"[..]));
        }
    }

    #[test]
    fn read_until_refuses_too_much_and_nothing() {
        for reader in [Reader::plain, Reader::interrupted] {
            let error = read(reader(b"abcd"), None, 3).unwrap_err();
            assert!(
                matches!(&error, Error::Read(e) if e.kind() == io::ErrorKind::InvalidData),
                "{error:?}"
            );
            let error = read(reader(b"abcd\n"), Some(b'\n'), 3).unwrap_err();
            assert!(matches!(error, Error::Read(_)), "{error:?}");
            for (bytes, delimiter) in [(&b""[..], None), (&b"\nrest"[..], Some(b'\n'))] {
                let error = read(reader(bytes), delimiter, 8).unwrap_err();
                assert!(matches!(error, Error::InvalidLength), "{error:?}");
            }
        }
    }

    #[test]
    fn read_until_returns_a_failing_readers_error() {
        for max_len in [8, 3] {
            let error = read(Reader::failing(b"abc"), None, max_len).unwrap_err();
            assert!(
                matches!(&error, Error::Read(e) if e.kind() == io::ErrorKind::BrokenPipe),
                "{max_len}: {error:?}"
            );
        }
    }

    /// A line read up to `\n` loses a `\r` before it (a line from a Windows file); other
    /// delimiters keep it.
    #[test]
    fn a_line_loses_its_carriage_return_other_delimiters_keep_it() {
        let factory = ProtectedMemorySecretFactory::default();
        let line = factory
            .from_reader_until(&b"pass\r\nrest"[..], b'\n', 16)
            .unwrap();
        assert!(line.with_bytes(|b| b == b"pass").unwrap());
        let field = factory
            .from_reader_until(&b"pass\r;rest"[..], b';', 16)
            .unwrap();
        assert!(field.with_bytes(|b| b == b"pass\r").unwrap());
    }
}
