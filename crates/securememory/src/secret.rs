//! `Secret`: where its bytes are kept plus its access state. The public type.

use crate::access::{this_threads_line, Access, Entry, Gate, Mode};
use crate::error::{Error, Operation};
use crate::policy::Protection;
use crate::region::{Region, Window};
use crate::registry::Registry;
use crate::report::Reporting;
use crate::sealed::{Plaintext, Sealed};
use crate::usage::Tally;
use std::cell::Cell;
use std::fmt;
use std::io;
use std::panic::Location;
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::Arc;

/// A secret held in protected memory.
///
/// The bytes are readable only inside [`with_bytes`](Secret::with_bytes) (and writable only inside
/// [`with_bytes_mut`](Secret::with_bytes_mut)); the rest of the time their pages are
/// inaccessible, so a stray read faults. The memory is locked (never swapped), excluded from core
/// dumps and from forked children, and wiped when the secret is closed or dropped. Under
/// [`Strategy::Sealed`](crate::Strategy::Sealed) the bytes rest as ciphertext instead, and an
/// access decrypts them into the calling thread's scratch area for the duration of the callback.
///
/// Share a secret between threads with [`std::sync::Arc`]: readers on different threads overlap.
/// Under [`Strategy::ProtectionKey`](crate::Strategy::ProtectionKey) a read makes no system call
/// and writes no memory that another reader writes, so readers on different cores scale; under
/// page protection a reader that arrives while the memory is already open costs one atomic
/// operation, and the first one in and the last one out change the protection.
///
/// # Accesses to several secrets
///
/// A secret is a reader-writer lock: readers share it, [`with_bytes_mut`](Secret::with_bytes_mut)
/// excludes everyone, and a waiting writer holds back readers that arrive after it, so that it
/// is not starved (and readers that waited through a write go before the next writer, so that
/// they are not starved either). Reads nested across secrets are safe in any order: a thread
/// that already holds an access to another secret is let past a waiting writer. A *write*
/// access taken while holding an access to another secret is not: two threads doing that in
/// opposite orders (read A then write B, read B then write A; or write A then write B, and the
/// reverse) deadlock, as with any reader-writer lock. When one thread needs write access to a
/// secret while holding another, take the secrets in one order fixed for the whole program.
///
/// # Signals and forks
///
/// Accesses are not async-signal-safe: a signal handler that calls
/// [`with_bytes`](Secret::with_bytes), [`with_bytes_mut`](Secret::with_bytes_mut) or
/// [`close`](Secret::close) may deadlock on the lock held by the code it interrupted (for any
/// secret). Copy what a handler needs beforehand, or have it only set a flag. To wipe every
/// secret when SIGINT or SIGTERM ends the process, install `purge_on_termination` (Unix; see
/// [`purge`](crate::purge)), which does the work off the handler.
///
/// In a forked child every access fails with [`Error::Forked`] — however the child was made,
/// even with the raw `fork` system call — and the child never sees the bytes (zeros or no
/// mapping there). `close` and drop in a child return at once, without waiting for accesses
/// that threads of the parent had in flight. An access from whose callback the process forked
/// ends with `Forked` in the child; the callback must not touch the bytes after the fork there.
///
/// ```
/// use securememory::{ProtectedMemorySecretFactory, SecretFactory};
///
/// let factory = ProtectedMemorySecretFactory::default();
/// let mut key = *b"0123456789abcdef0123456789abcdef";
/// let secret = factory.new(&mut key)?;
/// assert_eq!(key, [0; 32], "the source is wiped");
/// let first = secret.with_bytes(|bytes| bytes[0])?;
/// assert_eq!(first, b'0');
/// secret.close()?;
/// assert!(secret.with_bytes(|_| ()).is_err());
/// # Ok::<(), securememory::Error>(())
/// ```
pub struct Secret {
    /// What a purge needs to close the secret, at an address that stays put while the
    /// `Secret` moves: the process's registry of live secrets holds a weak handle to it.
    shared: Arc<Shared>,
    /// The secret's place in the registry, given back when it is dropped.
    slot: u32,
}

/// The secret's state proper. One per secret, reached by the `Secret` (strongly) and by the
/// registry (weakly), so that a purge can close it from any thread while its owner moves or
/// drops it.
pub(crate) struct Shared {
    access: Access,
    store: Store,
    /// The making factory's choices of where reports go and what a corrupted canary does.
    reporting: Arc<Reporting>,
    /// The secret's share of the process's numbers, given back when the store is torn down.
    /// After `store`, so that a secret dropped without a teardown still gives it back.
    tally: Tally,
    /// Where the secret was made, for [`live_secrets`](crate::live_secrets).
    created_at: &'static Location<'static>,
}

/// Where a secret's bytes are kept: in a mapping of their own, opened by page protection or a
/// protection key, or sealed (ciphertext, opened into the thread's scratch area).
pub(crate) enum Store {
    /// Boxed so that a sealed secret, of which a process may hold a million, does not carry a
    /// mapping's bookkeeping.
    Mapped(Box<Region>),
    Sealed(Sealed),
}

impl Store {
    #[inline]
    fn len(&self) -> usize {
        match self {
            Store::Mapped(region) => region.len(),
            Store::Sealed(sealed) => sealed.len(),
        }
    }

    #[inline]
    fn in_forked_child(&self) -> bool {
        match self {
            Store::Mapped(region) => region.in_forked_child(),
            Store::Sealed(sealed) => sealed.in_forked_child(),
        }
    }

    /// What the secret got.
    fn protection(&self) -> Protection {
        match self {
            Store::Mapped(region) => region.protection(),
            Store::Sealed(sealed) => sealed.protection(),
        }
    }

    /// Wipes and frees the bytes, once.
    fn destroy(&self) -> Result<(), Error> {
        match self {
            Store::Mapped(region) => region.destroy(),
            Store::Sealed(sealed) => {
                sealed.destroy();
                Ok(())
            }
        }
    }
}

impl Gate for Store {
    #[inline]
    fn expose(&self, mode: Mode) -> Result<(), Error> {
        match self {
            Store::Mapped(region) => region.expose(mode),
            Store::Sealed(sealed) => sealed.expose(mode),
        }
    }

    #[inline]
    fn conceal(&self) -> Result<(), Error> {
        match self {
            Store::Mapped(region) => region.conceal(),
            Store::Sealed(sealed) => sealed.conceal(),
        }
    }

    #[inline]
    fn shared(&self) -> bool {
        match self {
            Store::Mapped(region) => region.shared(),
            Store::Sealed(sealed) => sealed.shared(),
        }
    }

    #[inline]
    fn inherited(&self) -> bool {
        match self {
            Store::Mapped(region) => region.inherited(),
            Store::Sealed(sealed) => sealed.inherited(),
        }
    }

    #[inline]
    fn epoch(&self) -> u64 {
        match self {
            Store::Mapped(region) => region.epoch(),
            Store::Sealed(sealed) => sealed.epoch(),
        }
    }
}

/// The registry of the live secrets of one process, for [`purge`](crate::purge) and
/// [`live_secrets`](crate::live_secrets).
struct Live {
    /// The process epoch it belongs to (`sys::process_epoch`).
    epoch: u64,
    registry: Registry<Shared>,
}

/// The registry of the current process. A forked child gets a fresh one on first use and never
/// touches its parent's, whose lock a thread of the parent may have held at the fork (that
/// thread does not exist in the child); the parent's is left to the child's memory as it was.
static LIVE: AtomicPtr<Live> = AtomicPtr::new(ptr::null_mut());

fn live_registry() -> &'static Registry<Shared> {
    let epoch = crate::sys::process_epoch();
    loop {
        // Acquire: pairs with the Release that published the registry.
        let current = LIVE.load(Ordering::Acquire);
        // SAFETY: a published registry is never freed (see below).
        if let Some(live) = unsafe { current.as_ref() } {
            if live.epoch == epoch {
                return &live.registry;
            }
        }
        let fresh = Box::into_raw(Box::new(Live {
            epoch,
            registry: Registry::new(),
        }));
        // Release: publishes the fresh registry. The one replaced (a parent's) is leaked: its
        // secrets' handles are still in it, and it is freed by nothing.
        match LIVE.compare_exchange(current, fresh, Ordering::AcqRel, Ordering::Acquire) {
            // SAFETY: just published; never freed.
            Ok(_) => return unsafe { &(*fresh).registry },
            // SAFETY: ours, never published.
            Err(_) => drop(unsafe { Box::from_raw(fresh) }),
        }
    }
}

// One frame per access in progress on this thread, linked through the stack, so a thread can tell
// whether it is already inside an access to a given secret without allocating.
struct Frame {
    access: *const Access,
    mode: Mode,
    outer: *const Frame,
    /// Protection-key windows open on this thread, this frame's included: the outermost one
    /// closes the key whatever the rights were when it opened.
    windows: u32,
}

thread_local! {
    static INNERMOST: Cell<*const Frame> = const { Cell::new(ptr::null()) };
}

/// The innermost frame of this thread's accesses in progress (null when there is none).
#[inline]
fn innermost() -> *const Frame {
    INNERMOST.with(Cell::get)
}

/// Links a frame for the duration of an access; unlinks it on drop, panics included.
struct Entered<'f> {
    frame: &'f Frame,
}

impl<'f> Entered<'f> {
    #[inline]
    fn link(frame: &'f Frame) -> Self {
        INNERMOST.with(|innermost| innermost.set(frame));
        Entered { frame }
    }
}

impl Drop for Entered<'_> {
    #[inline]
    fn drop(&mut self) {
        INNERMOST.with(|innermost| innermost.set(self.frame.outer));
    }
}

/// What this thread already holds of `access`, searching from frame `innermost` outwards.
#[inline]
fn held_from(mut frame: *const Frame, access: &Access) -> Option<Mode> {
    while !frame.is_null() {
        // SAFETY: linked frames live on this thread's stack until their `Entered` unlinks them,
        // which happens before they go out of scope.
        let f = unsafe { &*frame };
        if ptr::eq(f.access, access) {
            return Some(f.mode);
        }
        frame = f.outer;
    }
    None
}

/// Protection-key windows open on this thread, from its innermost frame.
#[inline]
fn windows_open(innermost: *const Frame) -> u32 {
    // SAFETY: as in `held_from`.
    unsafe { innermost.as_ref() }.map_or(0, |frame| frame.windows)
}

/// Whether no protection-key window is open on this thread (a window opened now is the
/// outermost one).
#[inline]
pub(crate) fn no_window_open() -> bool {
    windows_open(innermost()) == 0
}

impl Secret {
    pub(crate) fn from_store(
        store: Store,
        reporting: Arc<Reporting>,
        tally: Tally,
        created_at: &'static Location<'static>,
    ) -> Secret {
        let shared = Arc::new(Shared {
            access: Access::new(),
            store,
            reporting,
            tally,
            created_at,
        });
        let slot = live_registry().insert(&shared);
        Secret { shared, slot }
    }

    /// Runs `action` with the secret's bytes and returns its result.
    ///
    /// The bytes are readable only for the duration of the call. Many threads may read at once,
    /// and a thread may nest reads of the same secret. The slice cannot escape the closure; copy
    /// out only what you must, into memory you wipe.
    ///
    /// # Errors
    /// [`Error::Closed`] once [`close`](Secret::close) has started (the closure is not run);
    /// [`Error::Reentrant`] inside [`with_bytes_mut`](Secret::with_bytes_mut) of the same secret
    /// on the same thread; [`Error::Forked`] in a forked child; [`Error::Os`] when the memory
    /// cannot be made readable, or cannot be made inaccessible again afterwards (the closure
    /// has then run; the failure is retried by the next access and by `close`);
    /// [`Error::Corrupted`] when a sealed secret's ciphertext fails authentication (the closure
    /// is not run; see [`OnCorruption`](crate::OnCorruption)); what making the thread's scratch
    /// area can meet, on a thread's first access to a sealed secret.
    ///
    /// # Panics
    /// A panic in `action` propagates after the access is released.
    #[inline]
    pub fn with_bytes<R>(&self, action: impl FnOnce(&[u8]) -> R) -> Result<R, Error> {
        let outer = innermost();
        let entry = match held_from(outer, &self.shared.access) {
            Some(Mode::Read) => Entry::Nested,
            Some(Mode::Write) => {
                return Err(Error::Reentrant {
                    operation: Operation::WithBytes,
                })
            }
            // A writer waiting on this secret may be waiting for an access this thread holds
            // on another one: queueing behind it could deadlock.
            None if !outer.is_null() => Entry::HoldingAnother,
            None => Entry::Fresh,
        };
        self.refuse_in_forked_child()?;
        let store = &self.shared.store;
        // Memory opened per thread takes reads without a shared write: each thread publishes
        // its reads in a line of its own.
        // A nested read is accounted for by the outer one and needs no line.
        let line = if entry == Entry::Nested || store.shared() {
            None
        } else {
            this_threads_line(store.epoch())
        };
        let held = self.shared.access.read(store, entry, line)?;
        let result = match store {
            Store::Mapped(region) => {
                let (window, frame) = self.open(region, Mode::Read, outer);
                let entered = Entered::link(&frame);
                // SAFETY: the read access just taken keeps the pages readable and unmapped-proof
                // until `held` is released, which happens after the slice's last use inside
                // `action`.
                let bytes =
                    unsafe { std::slice::from_raw_parts(region.bytes().as_ptr(), region.len()) };
                let result = action(bytes);
                drop(window);
                drop(entered);
                result
            }
            Store::Sealed(sealed) => {
                let plaintext = self.open_sealed(sealed, outer)?;
                let frame = self.frame(Mode::Read, outer);
                let entered = Entered::link(&frame);
                let result = action(plaintext.bytes());
                drop(plaintext);
                drop(entered);
                result
            }
        };
        held.finish()?;
        Ok(result)
    }

    /// Opens the calling thread's window onto the memory (protection keys; nothing under page
    /// protection) and makes the frame that records the access, to be linked inside `outer`.
    #[inline]
    fn open(&self, region: &Region, mode: Mode, outer: *const Frame) -> (Window, Frame) {
        let windows_outside = windows_open(outer);
        let window = region.open_window(mode, windows_outside == 0);
        let frame = Frame {
            access: &self.shared.access,
            mode,
            outer,
            windows: windows_outside + u32::from(window.is_open()),
        };
        (window, frame)
    }

    /// The frame that records an access opening no window, to be linked inside `outer`.
    #[inline]
    fn frame(&self, mode: Mode, outer: *const Frame) -> Frame {
        Frame {
            access: &self.shared.access,
            mode,
            outer,
            windows: windows_open(outer),
        }
    }

    /// Decrypts a sealed secret into this thread's scratch area; a failed authentication goes
    /// to the factory's corruption policy first.
    #[inline]
    fn open_sealed(&self, sealed: &Sealed, outer: *const Frame) -> Result<Plaintext, Error> {
        sealed.open(windows_open(outer) == 0).inspect_err(|error| {
            if let Error::Corrupted = error {
                self.shared.reporting.corrupted(|| ());
            }
        })
    }

    /// Runs `action` with exclusive, writable access to the secret's bytes.
    ///
    /// Waits for readers to leave; readers wait for it.
    ///
    /// # Errors
    /// As [`with_bytes`](Secret::with_bytes); also [`Error::Reentrant`] when called inside any
    /// access to the same secret on the same thread, and [`Error::Corrupted`] when the canary
    /// before the secret was overwritten during the call (under
    /// [`OnCorruption::Abort`](crate::OnCorruption::Abort) the bytes are wiped and the process
    /// aborts instead). A sealed secret ([`Strategy::Sealed`](crate::Strategy::Sealed)) is
    /// sealed again, under a fresh nonce, once `action` returns; if `action` panics, it keeps
    /// the bytes it had before the call.
    ///
    /// ```
    /// use securememory::{ProtectedMemorySecretFactory, SecretFactory};
    ///
    /// let secret = ProtectedMemorySecretFactory::default().create_random(16)?;
    /// secret.with_bytes_mut(|bytes| bytes.fill(7))?;
    /// assert!(secret.with_bytes(|bytes| bytes.iter().all(|&b| b == 7))?);
    /// # Ok::<(), securememory::Error>(())
    /// ```
    pub fn with_bytes_mut<R>(&self, action: impl FnOnce(&mut [u8]) -> R) -> Result<R, Error> {
        let outer = innermost();
        if held_from(outer, &self.shared.access).is_some() {
            return Err(Error::Reentrant {
                operation: Operation::WithBytesMut,
            });
        }
        self.refuse_in_forked_child()?;
        let store = &self.shared.store;
        let held = self.shared.access.write(store)?;
        let region = match store {
            Store::Mapped(region) => region,
            Store::Sealed(sealed) => {
                let mut plaintext = self.open_sealed(sealed, outer)?;
                let frame = self.frame(Mode::Write, outer);
                let entered = Entered::link(&frame);
                let result = action(plaintext.bytes_mut());
                drop(entered);
                // In a child forked from inside `action`, the keeper is not this process's.
                if !sealed.in_forked_child() {
                    sealed.reseal(&mut plaintext, windows_open(outer) == 0)?;
                }
                drop(plaintext);
                held.finish()?;
                return Ok(result);
            }
        };
        let (window, frame) = self.open(region, Mode::Write, outer);
        let entered = Entered::link(&frame);
        // SAFETY: the exclusive write access keeps the pages writable and excludes every other
        // reference until `held` is released, after the slice's last use inside `action`.
        let bytes =
            unsafe { std::slice::from_raw_parts_mut(region.bytes().as_ptr(), region.len()) };
        let result = action(bytes);
        // In a child forked from inside `action` the pages are not this process's to check (and
        // secret memory is not mapped at all); `finish` then reports `Forked`.
        let canary_intact = region.in_forked_child() || region.canary_intact();
        if !canary_intact {
            // SAFETY: as above: the write access is still held and the window still open, and
            // `action`'s slice is dead.
            let bytes =
                unsafe { std::slice::from_raw_parts_mut(region.bytes().as_ptr(), region.len()) };
            self.shared
                .reporting
                .corrupted(|| zeroize::Zeroize::zeroize(bytes));
        }
        drop(window);
        drop(entered);
        held.finish()?;
        if !canary_intact {
            return Err(Error::Corrupted);
        }
        Ok(result)
    }

    /// Runs `action` with the bytes as an array of exactly `N` bytes: for keys, whose types
    /// want a fixed size.
    ///
    /// ```
    /// use securememory::ProtectedMemorySecretFactory;
    ///
    /// let key = ProtectedMemorySecretFactory::DEFAULT.create_random(32)?;
    /// let first = key.with_array(|key: &[u8; 32]| key[0])?;
    /// assert!(key.with_array(|_: &[u8; 16]| ()).is_err(), "a 32-byte secret is no 16-byte key");
    /// # let _ = first;
    /// # Ok::<(), securememory::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidLength`] when the secret is not `N` bytes long (`action` is not run);
    /// those of [`with_bytes`](Secret::with_bytes).
    #[inline]
    pub fn with_array<const N: usize, R>(
        &self,
        action: impl FnOnce(&[u8; N]) -> R,
    ) -> Result<R, Error> {
        if self.len() != N {
            return Err(Error::InvalidLength);
        }
        self.with_bytes(|bytes| action(bytes.try_into().expect("the length was checked")))
    }

    /// Runs `action` with the bytes as a writable array of exactly `N` bytes.
    ///
    /// # Errors
    /// [`Error::InvalidLength`] when the secret is not `N` bytes long (`action` is not run);
    /// those of [`with_bytes_mut`](Secret::with_bytes_mut).
    pub fn with_array_mut<const N: usize, R>(
        &self,
        action: impl FnOnce(&mut [u8; N]) -> R,
    ) -> Result<R, Error> {
        if self.len() != N {
            return Err(Error::InvalidLength);
        }
        self.with_bytes_mut(|bytes| action(bytes.try_into().expect("the length was checked")))
    }

    /// As [`with_bytes`](Secret::with_bytes), for a fallible `action`: one `Result`, whose error
    /// type takes the library's [`Error`] too, so `?` works for both.
    ///
    /// ```
    /// use securememory::{Error, ProtectedMemorySecretFactory};
    ///
    /// #[derive(Debug)]
    /// enum AppError { Secret(Error), NotUtf8 }
    /// impl From<Error> for AppError {
    ///     fn from(e: Error) -> Self { AppError::Secret(e) }
    /// }
    ///
    /// let token = ProtectedMemorySecretFactory::DEFAULT.from_vec(b"abc".to_vec())?;
    /// let len: Result<usize, AppError> = token.try_with_bytes(|t| {
    ///     std::str::from_utf8(t).map(str::len).map_err(|_| AppError::NotUtf8)
    /// });
    /// assert_eq!(len.unwrap(), 3);
    /// # Ok::<(), Error>(())
    /// ```
    ///
    /// # Errors
    /// Those of [`with_bytes`](Secret::with_bytes), converted, and whatever `action` returns.
    #[inline]
    pub fn try_with_bytes<R, E: From<Error>>(
        &self,
        action: impl FnOnce(&[u8]) -> Result<R, E>,
    ) -> Result<R, E> {
        self.with_bytes(action)?
    }

    /// As [`with_bytes_mut`](Secret::with_bytes_mut), for a fallible `action` (see
    /// [`try_with_bytes`](Secret::try_with_bytes)). What `action` wrote stays even when it
    /// returns an error.
    ///
    /// # Errors
    /// Those of [`with_bytes_mut`](Secret::with_bytes_mut), converted, and whatever `action`
    /// returns.
    pub fn try_with_bytes_mut<R, E: From<Error>>(
        &self,
        action: impl FnOnce(&mut [u8]) -> Result<R, E>,
    ) -> Result<R, E> {
        self.with_bytes_mut(action)?
    }

    /// Whether the secret's bytes equal `other`, in time that depends on the length only (not
    /// on where the bytes differ): for comparing a presented token or MAC.
    ///
    /// ```
    /// use securememory::ProtectedMemorySecretFactory;
    ///
    /// let token = ProtectedMemorySecretFactory::DEFAULT.from_vec(b"s3cr3t".to_vec())?;
    /// assert!(token.constant_time_eq(b"s3cr3t")?);
    /// assert!(!token.constant_time_eq(b"s3cr3T")?);
    /// # Ok::<(), securememory::Error>(())
    /// ```
    ///
    /// # Errors
    /// Those of [`with_bytes`](Secret::with_bytes).
    pub fn constant_time_eq(&self, other: &[u8]) -> Result<bool, Error> {
        self.with_bytes(|bytes| bool::from(subtle::ConstantTimeEq::ct_eq(bytes, other)))
    }

    /// Whether two secrets hold the same bytes, compared as
    /// [`constant_time_eq`](Secret::constant_time_eq) does, inside accesses to both.
    ///
    /// # Errors
    /// Those of [`with_bytes`](Secret::with_bytes) on either.
    pub fn constant_time_eq_secret(&self, other: &Secret) -> Result<bool, Error> {
        self.with_bytes(|bytes| other.constant_time_eq(bytes))?
    }

    /// A reader over the secret's bytes: each `read` call is one access.
    ///
    /// ```
    /// use std::io::Read;
    /// use securememory::{ProtectedMemorySecretFactory, SecretFactory};
    ///
    /// let secret = ProtectedMemorySecretFactory::default().new(&mut *b"token".to_vec())?;
    /// let mut copy = Vec::new();
    /// secret.reader().read_to_end(&mut copy).unwrap();
    /// assert_eq!(copy, b"token");
    /// # Ok::<(), securememory::Error>(())
    /// ```
    pub fn reader(&self) -> SecretReader<'_> {
        SecretReader {
            secret: self,
            position: 0,
        }
    }

    /// The secret's length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.shared.store.len()
    }

    /// Always `false`: a secret holds at least one byte.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether [`close`](Secret::close) has started. True from the moment it is called.
    pub fn is_closed(&self) -> bool {
        self.shared.access.is_closed()
    }

    /// What protections this secret actually got on this machine.
    pub fn protection(&self) -> Protection {
        self.shared.store.protection()
    }

    /// Closes the secret: refuses new accesses at once, waits for accesses in flight, then
    /// wipes, unlocks and unmaps its memory.
    ///
    /// Idempotent: every call, concurrent ones included, returns once the secret is fully
    /// closed. Closing is terminal even when a step fails: the error is returned and the secret
    /// stays closed; memory that could not be wiped is left mapped and inaccessible rather than
    /// returned to the OS.
    ///
    /// # Errors
    /// [`Error::Reentrant`] when called from inside an access to this secret on the same thread
    /// (the secret stays open); [`Error::Os`] when wiping or unmapping failed;
    /// [`Error::Corrupted`] when the canary before the secret was found overwritten (the secret
    /// is wiped and unmapped all the same; under
    /// [`OnCorruption::Abort`](crate::OnCorruption::Abort) the process then aborts).
    ///
    /// A dropped secret has no caller to return an error to: its factory's
    /// [`Report`](crate::Report) says where it goes (by default `log` and one line on stderr).
    pub fn close(&self) -> Result<(), Error> {
        self.shared.close()
    }

    /// Where the bytes are kept, for the library's own tests.
    #[cfg(all(test, not(loom)))]
    pub(crate) fn store(&self) -> &Store {
        &self.shared.store
    }

    #[inline]
    fn refuse_in_forked_child(&self) -> Result<(), Error> {
        if self.shared.store.in_forked_child() {
            Err(Error::Forked)
        } else {
            Ok(())
        }
    }
}

// A panic inside an access ends it (`Held`'s drop) and leaves the access state consistent; a
// write that panicked leaves whatever bytes it wrote, which is what the caller asked for. The
// only interior state not already unwind-safe is the factory's degradation callback, which a
// secret never calls.
impl std::panic::UnwindSafe for Secret {}
impl std::panic::RefUnwindSafe for Secret {}

impl Drop for Secret {
    fn drop(&mut self) {
        if let Err(error) = self.close() {
            self.shared.reporting.drop_failed(&error);
        }
        // A secret inherited through a fork belongs to the parent's registry, which a forked
        // child never touches (see `LIVE`): the entry stays, and its weak handle no longer
        // upgrades.
        if !self.shared.store.in_forked_child() {
            live_registry().remove(self.slot);
        }
    }
}

impl Shared {
    /// The secrets of the process not yet dropped (closed ones included).
    pub(crate) fn live() -> Vec<Arc<Shared>> {
        live_registry().live()
    }

    pub(crate) fn close(&self) -> Result<(), Error> {
        if held_from(innermost(), &self.access).is_some() {
            return Err(Error::Reentrant {
                operation: Operation::Close,
            });
        }
        if self.store.in_forked_child() {
            // The reader counts and the lock may belong to threads of the parent, which do not
            // exist here: nothing to wait for, and nothing of the parent's to wipe.
            if self.access.close_in_forked_child() {
                let destroyed = self.store.destroy();
                self.tally.released();
                destroyed?;
            }
            return Ok(());
        }
        let closed = self.access.close(&self.store, || {
            let destroyed = self.store.destroy();
            self.tally.released();
            destroyed
        });
        if let Err(Error::Corrupted) = closed {
            // `destroy` wiped the bytes after finding the canary overwritten.
            self.reporting.corrupted(|| ());
        }
        closed
    }

    /// Whether `close` has started.
    pub(crate) fn is_closed(&self) -> bool {
        self.access.is_closed()
    }

    /// The secret's length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.store.len()
    }

    /// What protections the secret got.
    pub(crate) fn protection(&self) -> Protection {
        self.store.protection()
    }

    /// Where the secret was made.
    pub(crate) fn created_at(&self) -> &'static Location<'static> {
        self.created_at
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secret")
            .field("len", &self.len())
            .field("closed", &self.is_closed())
            .field("bytes", &format_args!("<redacted>"))
            .finish()
    }
}

/// An [`io::Read`] over a secret's bytes, made by [`Secret::reader`].
///
/// Each `read` call makes one access and copies as much as fits. At the end, `read` returns
/// `Ok(0)`; after the secret is closed it returns an error. Read into memory you wipe, or
/// straight into another secret:
///
/// ```
/// use securememory::Secret;
///
/// let original = Secret::from_vec(b"a key file's contents".to_vec())?;
/// let copy = Secret::from_reader(original.reader(), original.len())?;
/// assert!(copy.constant_time_eq_secret(&original)?);
/// # Ok::<(), securememory::Error>(())
/// ```
pub struct SecretReader<'a> {
    secret: &'a Secret,
    position: usize,
}

impl io::Read for SecretReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.secret.is_closed() {
            return Err(io::Error::other(Error::Closed));
        }
        let position = self.position;
        if position >= self.secret.len() || buf.is_empty() {
            return Ok(0);
        }
        let copied = self
            .secret
            .with_bytes(|bytes| {
                let rest = &bytes[position..];
                let n = rest.len().min(buf.len());
                buf[..n].copy_from_slice(&rest[..n]);
                n
            })
            .map_err(io::Error::other)?;
        self.position += copied;
        Ok(copied)
    }
}

impl fmt::Debug for SecretReader<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretReader")
            .field("len", &self.secret.len())
            .field("position", &self.position)
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use crate::access::tests::{
        published, readers_counted, readers_queued, wait_until, writer_waiting,
    };
    use crate::{ProtectedMemorySecretFactory, Secret, Strategy};
    use std::sync::{mpsc, Arc, Barrier};
    use std::thread;
    use std::time::Duration;

    /// A sealed secret opens per thread: its reads are published in the reader's line, and no
    /// reader is counted in the shared state word.
    #[test]
    fn reads_of_a_sealed_secret_are_published_not_counted() {
        let factory = ProtectedMemorySecretFactory::builder()
            .strategy(Strategy::Sealed)
            .build();
        let secret = factory.new(&mut [3; 8]).unwrap();
        let (published, counted) = secret
            .with_bytes(|_| {
                let access = &secret.shared.access;
                (published(access), readers_counted(access))
            })
            .unwrap();
        assert!(published, "the read was not published");
        assert_eq!(counted, 0, "the read was counted");
    }

    /// A reader that holds no other secret's access queues behind a writer waiting for the
    /// memory, so that a stream of readers cannot starve the writer.
    #[test]
    fn a_fresh_reader_queues_behind_a_waiting_writer() {
        let secret = Arc::new(
            ProtectedMemorySecretFactory::default()
                .new(&mut [1; 8])
                .unwrap(),
        );
        let (holding_tx, holding) = mpsc::channel();
        let (release_tx, release) = mpsc::channel::<()>();
        let holder = {
            let secret = Arc::clone(&secret);
            thread::spawn(move || {
                secret
                    .with_bytes(|_| {
                        holding_tx.send(()).unwrap();
                        let _ = release.recv();
                    })
                    .unwrap();
            })
        };
        holding.recv_timeout(Duration::from_secs(10)).unwrap();
        let writer = {
            let secret = Arc::clone(&secret);
            thread::spawn(move || secret.with_bytes_mut(|bytes| bytes[0] = 2).unwrap())
        };
        wait_until("the writer waits", || writer_waiting(&secret.shared.access));
        let reader = {
            let secret = Arc::clone(&secret);
            thread::spawn(move || secret.with_bytes(|bytes| bytes[0]).unwrap())
        };
        let queued = {
            let start = std::time::Instant::now();
            while readers_queued(&secret.shared.access) == 0
                && !reader.is_finished()
                && start.elapsed() < Duration::from_secs(10)
            {
                thread::yield_now();
            }
            readers_queued(&secret.shared.access) == 1
        };
        release_tx.send(()).unwrap();
        holder.join().unwrap();
        writer.join().unwrap();
        let seen = reader.join().unwrap();
        assert!(queued, "the reader did not queue behind the waiting writer");
        assert_eq!(seen, 2, "the reader got in before the waiting writer");
    }

    /// Thread 1 reads A then B, thread 2 reads B then A, and a writer waits on each: the nested
    /// reads must pass the waiting writers (each writer waits for the other thread's outer read).
    #[test]
    fn crossed_nested_reads_of_two_secrets_pass_writers_waiting_on_both() {
        let factory = ProtectedMemorySecretFactory::default();
        let a: Arc<Secret> = Arc::new(factory.new(&mut [1; 8]).unwrap());
        let b: Arc<Secret> = Arc::new(factory.new(&mut [2; 8]).unwrap());
        let outer_held = Arc::new(Barrier::new(3));
        let (go_tx, go_rx) = (0..2)
            .map(|_| mpsc::channel::<()>())
            .unzip::<_, _, Vec<_>, Vec<_>>();
        let (done_tx, done_rx) = mpsc::channel();
        let mut go_rx = go_rx.into_iter();
        for (outer, inner) in [(a.clone(), b.clone()), (b.clone(), a.clone())] {
            let (outer_held, go, done) =
                (outer_held.clone(), go_rx.next().unwrap(), done_tx.clone());
            thread::spawn(move || {
                let sum = outer
                    .with_bytes(|o| {
                        outer_held.wait();
                        go.recv().unwrap();
                        inner.with_bytes(|i| o[0] + i[0]).unwrap()
                    })
                    .unwrap();
                done.send(sum).unwrap();
            });
        }
        outer_held.wait();
        for secret in [&a, &b] {
            let secret = secret.clone();
            thread::spawn(move || secret.with_bytes_mut(|bytes| bytes[0] += 10).unwrap());
        }
        wait_until("both writers wait", || {
            writer_waiting(&a.shared.access) && writer_waiting(&b.shared.access)
        });
        for go in &go_tx {
            go.send(()).unwrap();
        }
        let mut sums: Vec<u8> = (0..2)
            .map(|_| {
                done_rx
                    .recv_timeout(Duration::from_secs(10))
                    .expect("crossed nested reads deadlocked behind the waiting writers")
            })
            .collect();
        sums.sort_unstable();
        // Each outer read keeps its secret's writer out until the thread is done, so at most
        // the thread that finishes second sees one write (made after the other thread left).
        assert!(sums == [3, 3] || sums == [3, 13], "{sums:?}");
        wait_until("both writers are done", || {
            a.with_bytes(|x| x[0]).unwrap() == 11 && b.with_bytes(|x| x[0]).unwrap() == 12
        });
    }
}
