//! The access protocol: who may touch a secret's memory, and when it changes protection.
//!
//! One atomic state word holds a reader count and a few flags. Many readers share an open
//! secret; the first reader in opens the memory (one protection change) and the last one out
//! closes it again. A reader that finds the memory already open joins with a single
//! compare-and-swap: no lock, no system call. Writers are exclusive. `close` refuses new accesses
//! at once, then waits for the ones in flight and tears the memory down.
//!
//! Every protection change happens while holding `waiting`, a mutex that also backs a condition
//! variable for waiting; so the memory can never be closed under a reader that joined through the
//! fast path (that needs [`OPEN`], which only a holder of the mutex clears).
//!
//! Where the memory opens per thread (a protection key: [`Gate::shared`] is false), readers do
//! not count themselves in the state word, which every reader would then write: each publishes
//! its read in its own thread's line (see [`slots`]) and only loads the state word. Writers and
//! `close` find them by scanning the lines. Nested reads of the same secret on one thread are
//! neither counted nor published: the outer read accounts for them.
//!
//! How memory is opened and closed is not this module's business: a [`Gate`] does it
//! (`mprotect`, a protection key, or later decrypt-into-scratch). That also lets the protocol
//! be model-checked with `loom` and fault-injected with a gate whose calls fail.
//!
//! # The state word
//!
//! | Part | Meaning | Set by | Cleared by |
//! |------|---------|--------|------------|
//! | [`CLOSED`] | no new access may begin | `close`, `close_in_forked_child` | never |
//! | [`WRITING`] | one writer holds the memory, or is about to once published readers are gone | a writer getting in (mutex held) | `leave_write`, a writer that found a published reader or failed to open (mutex held) |
//! | [`WRITER_WAITING`] | `Waiting::writers` is not zero | a writer registering in `write` (mutex held) | the last registered writer to get in or give up (mutex held) |
//! | [`OPEN`] | readable; readers may join without a protection change | the first reader in (mutex held); a failed conceal | the last reader out, a writer getting in (mutex held) |
//! | [`RELEASED`] | the memory is torn down | `close` after its teardown; `close_in_forked_child` | never |
//! | [`PUBLISHED`] | a reader has published a read (writers and `close` must scan) | the first reader to publish | never |
//! | reader count | counted readers inside | the fast path (needs `OPEN`), the slow path (mutex held) | `leave_read` (the last reader with the mutex held) |
//!
//! Which parts go together:
//! - `WRITING` excludes `OPEN` and counted readers. Published readers may still be inside while
//!   a writer that has just set it looks for them; finding one, it clears the flag again.
//! - Readers are counted only with `OPEN`. `OPEN` with no reader means that closing the memory
//!   failed (the next last reader, writer or `close` retries), that the last reader out left
//!   it to a reader arriving on the slow path, or that the gate is not shared (it opens per
//!   thread, and there is nothing to close between accesses).
//! - `RELEASED` comes only with `CLOSED`. After `close` it also means no writer and no reader;
//!   after `close_in_forked_child` the rest of the word is left as the fork found it.
//! - `WRITER_WAITING`, `CLOSED` and `PUBLISHED` go with anything.
//!
//! The mutex guards [`Waiting`]: the registered writers, the write phase, and the readers waiting
//! on the slow path (`queued` in the current phase, `overdue` since the last write ended).
//!
//! # Fairness
//!
//! Readers and writers take turns. A waiting writer sets `WRITER_WAITING`, and new readers queue
//! behind it instead of joining, so overlapping readers cannot starve it. When a write ends, every
//! reader waiting at that moment becomes *overdue*: it passes `WRITER_WAITING` (never a write in
//! progress), and no writer gets in before all overdue readers have joined or given up. So a
//! reader waits for at most one write (the one in progress, or the one it queued behind), and a
//! writer waits for the readers inside and the overdue ones, plus other writers (writers are not
//! ordered among themselves).
//!
//! # Lock order
//!
//! Reads of several secrets nest in any order: a thread that holds an access to another secret
//! reads with [`Entry::HoldingAnother`] and does not queue behind a waiting writer, which may be
//! waiting for that very access to end (such readers can delay a writer for as long as they keep
//! arriving). What remains is the rule of any reader-writer lock: a `write` inside an access to
//! another secret, taken in opposite orders by two threads, deadlocks. Take write accesses of
//! several secrets in one global order.

use crate::error::Error;
use crate::sync::{light_barrier, AtomicUsize, Condvar, Mutex, MutexGuard, Ordering};
use std::time::Duration;

mod slots;
pub(crate) use slots::{this_threads_line, Line};

/// The two ways into a secret's memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    Read,
    Write,
}

/// What the calling thread already holds when it starts a read, which decides whether the read
/// may queue behind a waiting writer.
///
/// Lock-order rule: readers never deadlock on each other, whatever the order in which they nest
/// reads of several secrets. A `write` inside an access to another secret is different: two
/// threads taking the two secrets in opposite orders deadlock like with any reader-writer lock.
/// Take write accesses of several secrets in one global order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Entry {
    /// No other access on this thread: the read queues behind a waiting writer.
    Fresh,
    /// The thread already holds a read of this same secret: the read joins at once, even while a
    /// writer waits (that writer waits for this thread, which would otherwise wait for it).
    Nested,
    /// The thread holds an access to some other secret. The read passes a waiting writer, which
    /// may be waiting for a reader that waits for this thread's other access; it still waits for
    /// a write in progress.
    HoldingAnother,
}

/// Exposes and conceals the memory behind an [`Access`]: the one place that knows how a secret
/// is opened (a protection change today; a per-thread window for other strategies).
pub(crate) trait Gate {
    /// Makes the memory usable for `mode`.
    fn expose(&self, mode: Mode) -> Result<(), Error>;
    /// Makes the memory unusable again.
    fn conceal(&self) -> Result<(), Error>;
    /// Whether exposing opens the memory for every thread of the process (page protection), so
    /// that it must be concealed when the last access ends. A gate that opens a window for the
    /// calling thread only (protection keys) has nothing to conceal between accesses.
    fn shared(&self) -> bool {
        true
    }
    /// The memory belongs to the process this one was forked from. An access that began before
    /// the fork then ends without touching the access state, the mutex or the memory: they belong
    /// to the parent's threads.
    fn inherited(&self) -> bool {
        false
    }
    /// The epoch of the process the memory was made in (see `sys::process_epoch`): readers
    /// publish under it, and writers and `close` look for readers of it only. Lines of other
    /// epochs are taken for a forked child's leftovers and handed to new threads, so every gate
    /// of a process must answer the same.
    fn epoch(&self) -> u64;
}

/// `close` has started: no new access may begin.
const CLOSED: usize = 1;
/// A writer holds the memory exclusively.
const WRITING: usize = 1 << 1;
/// At least one writer is waiting: new readers queue behind it instead of joining, so a stream
/// of overlapping readers cannot starve it.
const WRITER_WAITING: usize = 1 << 2;
/// The memory is readable and readers may join without a protection change. Set with a reader
/// count of zero only when closing the memory failed (the next last reader, writer or `close`
/// retries), or when the last reader out left it to a reader arriving on the slow path.
const OPEN: usize = 1 << 3;
/// The memory is torn down: by `close` after its teardown, or by `close_in_forked_child`.
const RELEASED: usize = 1 << 4;
/// Some reader has published a read of this secret in its thread's line (see [`slots`]), so
/// writers and `close` must look for published readers.
const PUBLISHED: usize = 1 << 5;
/// One reader; the count occupies the bits from here up. It cannot overflow: a thread counts at
/// most one read of a secret (its nested reads are not counted) and holds it in a frame of its
/// stack, and no process has 2^26 threads (the count's room on 32-bit targets, 2^58 on 64-bit).
const ONE_READER: usize = 1 << 6;

/// What keeps a fresh reader off the fast path (besides memory that is not open).
const FRESH_BLOCKERS: usize = CLOSED | WRITING | WRITER_WAITING;
/// What keeps a reader holding another secret's access off the fast path: it passes a waiting
/// writer.
const HOLDING_ANOTHER_BLOCKERS: usize = CLOSED | WRITING;

fn readers(state: usize) -> usize {
    state / ONE_READER
}

/// State that only holders of the mutex read or write.
struct Waiting {
    /// Writers in `write` that have neither got in nor given up; `WRITER_WAITING` is set exactly
    /// while this is not zero.
    writers: usize,
    /// How many writes have ended (wrapping). A waiting reader remembers the phase it started
    /// waiting in; once the phase has moved on, the reader is overdue.
    phase: usize,
    /// Readers waiting on the slow path that started waiting in the current phase.
    queued: usize,
    /// Readers that were waiting when the last write ended and have neither joined nor given up.
    /// They pass `WRITER_WAITING`, and no writer gets in while this is not zero; so it is only
    /// ever raised (by `leave_write`) from zero, and the phase advances at most once while a
    /// reader waits.
    overdue: usize,
}

/// The access state of one secret. See the module documentation.
pub(crate) struct Access {
    state: AtomicUsize,
    /// Readers that found the memory closed and are on their way to open it (in `read_slow`).
    /// The last reader out hands the open memory over to them instead of closing it, so that
    /// readers queued behind each other do not each pay for a conceal and an expose.
    arriving: AtomicUsize,
    waiting: Mutex<Waiting>,
    changed: Condvar,
}

impl Access {
    pub(crate) fn new() -> Self {
        Access {
            state: AtomicUsize::new(0),
            arriving: AtomicUsize::new(0),
            waiting: Mutex::new(Waiting {
                writers: 0,
                phase: 0,
                queued: 0,
                overdue: 0,
            }),
            changed: Condvar::new(),
        }
    }

    /// Whether `close` has started.
    pub(crate) fn is_closed(&self) -> bool {
        // Acquire: a caller that sees the secret closed also sees what the closer did before.
        self.state.load(Ordering::Acquire) & CLOSED != 0
    }

    /// Starts a read. `entry` says what the calling thread already holds (see [`Entry`]).
    ///
    /// `line` is the calling thread's reader line, given for memory that opens per thread
    /// ([`Gate::shared`] false): the read is then published there, and no shared cache line is
    /// written (see [`slots`]). Without a line, or when the line is full or a writer or `close`
    /// is in the way, the read is counted in the state word.
    #[inline]
    pub(crate) fn read<'a, G: Gate>(
        &'a self,
        gate: &'a G,
        entry: Entry,
        line: Option<&'a Line>,
    ) -> Result<Held<'a, G>, Error> {
        let blockers = match entry {
            Entry::Nested => {
                // The thread's outer read keeps the memory open, and ends after this one: there
                // is nothing to count. Acquire: see `is_closed`.
                if self.is_closed() {
                    return Err(Error::Closed);
                }
                return Ok(Held::new(self, gate, Hold::Nested));
            }
            Entry::Fresh => FRESH_BLOCKERS,
            Entry::HoldingAnother => HOLDING_ANOTHER_BLOCKERS,
        };
        if let Some(line) = line {
            debug_assert!(
                !gate.shared(),
                "readers publish only where memory opens per thread"
            );
            if let Some(published) = self.try_publish(line, blockers) {
                return Ok(Held::new(self, gate, Hold::Published(published)));
            }
        }
        if !self.try_join_open(blockers) {
            self.read_slow(gate, entry)?;
        }
        Ok(Held::new(self, gate, Hold::Counted(Mode::Read)))
    }

    /// This access's address, which names it in reader lines.
    fn address(&self) -> usize {
        self as *const Access as usize
    }

    /// The fast path of memory opened per thread: publish the read in the thread's own line,
    /// then check that no writer or closer is in the way (see [`slots`]). `None` when the line
    /// is full or something in `blockers` is set; the read is then withdrawn.
    #[inline]
    fn try_publish<'a>(&self, line: &'a Line, blockers: usize) -> Option<&'a AtomicUsize> {
        let published = line.publish(self.address())?;
        // Acquire pairs with the Release of a writer that left before: its write happens before
        // this read. The publication's barrier orders this load after the entry's store.
        let mut state = self.state.load(Ordering::Acquire);
        if state & PUBLISHED == 0 {
            // Once per secret. A writer or closer whose flag comes first in this word's order
            // is seen here; one whose flag comes later sees PUBLISHED and scans.
            state = self.state.fetch_or(PUBLISHED, Ordering::AcqRel);
        }
        if state & blockers == 0 {
            return Some(published);
        }
        self.withdraw(published);
        None
    }

    /// Clears a published read, and wakes a writer or closer that may be waiting for it.
    #[inline]
    fn withdraw(&self, published: &AtomicUsize) {
        slots::withdraw(published);
        // The entry's store, then this load: a waiter that still saw the entry forces every
        // thread through a barrier and looks again, so either it sees the entry gone or this
        // load sees its flag.
        light_barrier();
        // Relaxed: the mutex orders the wake-up.
        if self.state.load(Ordering::Relaxed) & (WRITER_WAITING | WRITING | CLOSED) != 0 {
            self.wake_waiters();
        }
    }

    #[cold]
    fn wake_waiters(&self) {
        let _waiting = self.waiting.lock();
        self.changed.notify_all();
    }

    /// Waits until no thread has a read of this access published; with the mutex held, after
    /// setting a flag in the state word that keeps new reads from being published
    /// (`WRITER_WAITING` for fresh readers, `CLOSED` for all) with a read-modify-write. Returns
    /// whether it had to wait (and so let go of the mutex meanwhile).
    fn drain_published<G: Gate>(&self, gate: &G, waiting: &mut MutexGuard<'_, Waiting>) -> bool {
        // Acquire, after this thread's read-modify-write of its flag: a reader that published
        // before it also set PUBLISHED before it.
        if self.state.load(Ordering::Acquire) & PUBLISHED == 0 {
            return false;
        }
        let table = slots::table();
        let (address, epoch) = (self.address(), gate.epoch());
        let mut waited = false;
        loop {
            // Every read published before the flag is now seen; a reader that withdraws after
            // every thread fenced sees the flag and notifies under the mutex, which this thread
            // holds until it waits.
            let every_thread_fenced = slots::see_publications();
            if !table.published(address, epoch) {
                return waited;
            }
            waited = true;
            if every_thread_fenced {
                self.changed.wait(waiting);
            } else {
                // A reader's withdrawal may go unseen by both sides for a moment.
                self.changed.wait_timeout(waiting, Duration::from_millis(1));
            }
        }
    }

    /// Starts an exclusive write; waits for readers and other writers to leave.
    pub(crate) fn write<'a, G: Gate>(&'a self, gate: &'a G) -> Result<Held<'a, G>, Error> {
        let mut waiting = self.waiting.lock();
        waiting.writers += 1;
        // Relaxed: the flag only steers readers to the slow path, where the mutex orders
        // everything; a reader that misses it for a moment joins open memory, which is safe.
        self.state.fetch_or(WRITER_WAITING, Ordering::Relaxed);
        let result = self.write_locked(gate, &mut waiting);
        waiting.writers -= 1;
        if waiting.writers == 0 {
            // Relaxed, as above: readers that see the flag late wait on the condition variable,
            // which the notification below (under the mutex) wakes.
            self.state.fetch_and(!WRITER_WAITING, Ordering::Relaxed);
            // Readers queued behind the writer flag may go now.
            self.changed.notify_all();
        }
        result.map(|()| Held::new(self, gate, Hold::Counted(Mode::Write)))
    }

    /// Closes: refuses new accesses at once, waits for the ones in flight, then runs `teardown`
    /// exactly once. Concurrent and later calls return once the first one has finished.
    pub(crate) fn close<G: Gate>(
        &self,
        gate: &G,
        teardown: impl FnOnce() -> Result<(), Error>,
    ) -> Result<(), Error> {
        // AcqRel: the closer that wins must see every access that finished before it.
        let previous = self.state.fetch_or(CLOSED, Ordering::AcqRel);
        if previous & RELEASED != 0 {
            // Torn down already. Returning without the mutex also keeps a forked child, where the
            // mutex may stay locked by a thread that does not exist there, from waiting forever.
            return Ok(());
        }
        let mut waiting = self.waiting.lock();
        // Wake readers and writers waiting to get in, so they can fail with `Closed` now.
        self.changed.notify_all();
        if previous & CLOSED != 0 {
            // Acquire pairs with the Release that sets RELEASED: a later closer returns only
            // after the teardown's effects are visible to it.
            while self.state.load(Ordering::Acquire) & RELEASED == 0 {
                self.changed.wait(&mut waiting);
            }
            return Ok(());
        }
        loop {
            // Acquire pairs with the Release of the last reader or writer to leave: their
            // accesses happen before the teardown.
            let state = self.state.load(Ordering::Acquire);
            if readers(state) == 0 && state & WRITING == 0 {
                break;
            }
            self.changed.wait(&mut waiting);
        }
        if !gate.shared() {
            self.drain_published(gate, &mut waiting);
        }
        let result = teardown();
        // Release: closers that see RELEASED see the teardown done.
        self.state.fetch_or(RELEASED, Ordering::Release);
        self.changed.notify_all();
        result
    }

    /// Closes in a process forked from the one that used this access: marks it closed and torn
    /// down, without the mutex and without waiting. In the child the mutex may be held, and
    /// readers may be counted, by threads of the parent that do not exist there. Wakes no one
    /// either, as notifying may need locks such a thread held; callers refuse accesses in a
    /// forked child before they reach this protocol, so no one waits here. Safe to call any
    /// number of times.
    ///
    /// Returns `true` to the first call that marked it torn down, which then runs the child's
    /// teardown; `false` to every later call, and when `close` had finished before the fork.
    pub(crate) fn close_in_forked_child(&self) -> bool {
        // AcqRel: exactly one call wins, and it sees whatever an earlier close did.
        let previous = self.state.fetch_or(CLOSED | RELEASED, Ordering::AcqRel);
        previous & RELEASED == 0
    }

    /// The fast path: join readers while the memory is open and nothing in `blockers` is set.
    /// One CAS, usually on the first try.
    #[inline]
    fn try_join_open(&self, blockers: usize) -> bool {
        // Relaxed: only a first guess for the CAS below, which acquires.
        let mut state = self.state.load(Ordering::Relaxed);
        loop {
            if state & (blockers | OPEN) != OPEN {
                return false;
            }
            // Acquire pairs with the Release that published OPEN after the protection change
            // (and with the Release of a writer that finished before it).
            match self.state.compare_exchange_weak(
                state,
                state + ONE_READER,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(current) => state = current,
            }
        }
    }

    #[cold]
    fn read_slow<G: Gate>(&self, gate: &G, entry: Entry) -> Result<(), Error> {
        // SeqCst, with the load in `leave_read_slow`: either the last reader sees this arrival
        // and leaves the memory open, or this reader finds it closed and opens it itself.
        self.arriving.fetch_add(1, Ordering::SeqCst);
        let mut waiting = self.waiting.lock();
        let mut since = None;
        let result = self.read_slow_locked(gate, entry, &mut waiting, &mut since);
        if let Some(phase) = since {
            self.stop_waiting(&mut waiting, phase);
        }
        drop(waiting);
        self.arriving.fetch_sub(1, Ordering::SeqCst);
        result
    }

    /// `since` is the phase this reader started waiting in, once it has had to wait.
    fn read_slow_locked<G: Gate>(
        &self,
        gate: &G,
        entry: Entry,
        waiting: &mut MutexGuard<'_, Waiting>,
        since: &mut Option<usize>,
    ) -> Result<(), Error> {
        loop {
            // Acquire: a reader that finds the memory open (or a writer gone) sees what was
            // done before that state was published.
            let state = self.state.load(Ordering::Acquire);
            if state & CLOSED != 0 {
                return Err(Error::Closed);
            }
            // An overdue reader, or one holding another secret's access, passes a waiting writer.
            let overdue = since.is_some_and(|phase| phase != waiting.phase);
            let blockers = if overdue || entry == Entry::HoldingAnother {
                HOLDING_ANOTHER_BLOCKERS
            } else {
                FRESH_BLOCKERS
            };
            if state & blockers != 0 {
                if since.is_none() {
                    *since = Some(waiting.phase);
                    waiting.queued += 1;
                }
                self.changed.wait(waiting);
                continue;
            }
            if state & OPEN != 0 {
                if self
                    .state
                    .compare_exchange(
                        state,
                        state + ONE_READER,
                        Ordering::Acquire,
                        Ordering::Relaxed,
                    )
                    .is_ok()
                {
                    return Ok(());
                }
                continue;
            }
            debug_assert_eq!(readers(state), 0, "readers are counted only while OPEN");
            gate.expose(Mode::Read)?;
            return self.publish_first_reader(state, gate);
        }
    }

    /// A reader that waited since `since` has joined or given up; with the mutex held.
    fn stop_waiting(&self, waiting: &mut Waiting, since: usize) {
        if since == waiting.phase {
            waiting.queued -= 1;
        } else {
            waiting.overdue -= 1;
            if waiting.overdue == 0 {
                // Writers wait for the overdue readers to get in first.
                self.changed.notify_all();
            }
        }
    }

    /// After opening the memory for a first reader with the mutex held: count the reader and
    /// mark the memory open unless `close` started meanwhile, in which case the memory is closed
    /// again and the access refused.
    fn publish_first_reader<G: Gate>(&self, mut state: usize, gate: &G) -> Result<(), Error> {
        loop {
            if state & CLOSED != 0 {
                if let Err(error) = gate.conceal() {
                    // Release: whoever retries the conceal sees the memory as this thread left it.
                    self.state.fetch_or(OPEN, Ordering::Release);
                    log::warn!("closing memory after a refused access failed: {error}");
                }
                return Err(Error::Closed);
            }
            // Neither OPEN nor a reader can appear while the mutex is held: readers join on
            // their own only when OPEN is set, and the rest take the mutex.
            debug_assert_eq!(state & OPEN, 0);
            debug_assert_eq!(readers(state), 0);
            // Release publishes the protection change to readers joining on the fast path.
            match self.state.compare_exchange(
                state,
                state + OPEN + ONE_READER,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(()),
                Err(current) => state = current,
            }
        }
    }

    fn write_locked<G: Gate>(
        &self,
        gate: &G,
        waiting: &mut MutexGuard<'_, Waiting>,
    ) -> Result<(), Error> {
        loop {
            // Acquire pairs with the Release of the readers and writer that left before.
            let state = self.state.load(Ordering::Acquire);
            if state & CLOSED != 0 {
                return Err(Error::Closed);
            }
            // Readers that waited through the last write go before the next one.
            if readers(state) > 0 || state & WRITING != 0 || waiting.overdue > 0 {
                self.changed.wait(waiting);
                continue;
            }
            if !gate.shared() {
                match self.write_per_thread(state, gate, waiting) {
                    Some(result) => return result,
                    None => continue,
                }
            }
            // WRITING replaces OPEN before the memory is made writable, in one step that also
            // finds no reader counted: memory left open without readers (handed over, or a
            // failed conceal) would otherwise let a reader holding another secret join on the
            // fast path between this check and the flag.
            // AcqRel: after the readers that left (Acquire); before this writer's exposure.
            if self
                .state
                .compare_exchange(
                    state,
                    (state | WRITING) & !OPEN,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_err()
            {
                continue;
            }
            if let Err(error) = gate.expose(Mode::Write) {
                // Release: as it was; memory that was open is still readable.
                self.state
                    .fetch_update(Ordering::Release, Ordering::Relaxed, |now| {
                        Some((now & !WRITING) | (state & OPEN))
                    })
                    .ok();
                self.changed.notify_all();
                return Err(error);
            }
            return Ok(());
        }
    }

    /// A writer's way in where memory opens per thread, from a `state` with no reader counted
    /// and no writer in. Readers published in their threads' lines are not counted, so there is
    /// no single compare-and-swap that finds none and lets the writer in; instead:
    ///
    /// 1. With `WRITER_WAITING` set (fresh readers no longer publish), wait for the published
    ///    reads to end.
    /// 2. Set `WRITING` (no reader publishes any more) and look once more. A reader holding
    ///    another secret's access may have published between the two steps (it passes a waiting
    ///    writer); then clear `WRITING` again and start over, rather than keep the flag while
    ///    waiting: that reader may be about to read a secret whose writer waits for a reader
    ///    that waits for this secret.
    ///
    /// `None` when the caller must look at the state word again.
    fn write_per_thread<G: Gate>(
        &self,
        state: usize,
        gate: &G,
        waiting: &mut MutexGuard<'_, Waiting>,
    ) -> Option<Result<(), Error>> {
        if self.drain_published(gate, waiting) {
            return None;
        }
        // AcqRel: a read-modify-write, after which readers no longer publish. Counted readers
        // join only with the mutex or with OPEN, which this clears.
        self.state
            .compare_exchange(
                state,
                (state | WRITING) & !OPEN,
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .ok()?;
        // Without PUBLISHED when the flag went in, every reader to publish since sees the flag
        // (see `try_publish`); with it, one that published before the flag must be seen here.
        let slipped_in = state & PUBLISHED != 0 && {
            slots::see_publications();
            slots::table().published(self.address(), gate.epoch())
        };
        let refused = if slipped_in {
            None
        } else {
            match gate.expose(Mode::Write) {
                Ok(()) => return Some(Ok(())),
                Err(error) => Some(Err(error)),
            }
        };
        // Release: whoever gets in next sees the memory as this writer left it.
        self.state.fetch_and(!WRITING, Ordering::Release);
        self.changed.notify_all();
        refused
    }

    /// The end of a read: one CAS unless this is the last reader, who closes the memory.
    #[inline]
    fn leave_read<G: Gate>(&self, gate: &G) -> Result<(), Error> {
        // Relaxed: a first guess for the CAS below, which releases.
        let mut state = self.state.load(Ordering::Relaxed);
        // Memory opened per thread needs no conceal: the last reader out leaves it open for the
        // next one, unless a writer or a closer waits for the count to reach zero (they wait on
        // the condition variable, which the slow path notifies). Both flags are set with a
        // read-modify-write of the same word, so the CAS below fails if one arrives meanwhile.
        let keeps_open = !gate.shared();
        while readers(state) > 1
            || (keeps_open && readers(state) == 1 && state & (WRITER_WAITING | CLOSED) == 0)
        {
            // Release: this reader's reads happen before the last reader closes the memory.
            match self.state.compare_exchange_weak(
                state,
                state - ONE_READER,
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(()),
                Err(current) => state = current,
            }
        }
        self.leave_read_slow(gate)
    }

    #[cold]
    fn leave_read_slow<G: Gate>(&self, gate: &G) -> Result<(), Error> {
        let _waiting = self.waiting.lock();
        // Relaxed: a first guess for the CAS below, which orders.
        let mut state = self.state.load(Ordering::Relaxed);
        loop {
            debug_assert!(readers(state) > 0, "leaving a read that was not entered");
            // A reader queued to enter takes the open memory over: it is not idle.
            let last = readers(state) == 1 && self.arriving.load(Ordering::SeqCst) == 0;
            let next = if last {
                (state - ONE_READER) & !OPEN
            } else {
                state - ONE_READER
            };
            // AcqRel: this reader's reads happen before the conceal (Release), and the conceal
            // sees every other reader's leave (Acquire).
            match self
                .state
                .compare_exchange(state, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) if !last => {
                    if readers(next) == 0 {
                        // Handed over: writers and closers wait for the count to reach zero.
                        self.changed.notify_all();
                    }
                    return Ok(());
                }
                Ok(_) => break,
                Err(current) => state = current,
            }
        }
        // OPEN is clear and no reader is counted: no one can join until the mutex is released.
        let result = gate.conceal();
        if result.is_err() {
            // Release: the retrying last reader, writer or closer sees the memory left open.
            self.state.fetch_or(OPEN, Ordering::Release);
        }
        self.changed.notify_all();
        result
    }

    fn leave_write<G: Gate>(&self, gate: &G) -> Result<(), Error> {
        let mut waiting = self.waiting.lock();
        let result = gate.conceal();
        let reopened = if result.is_err() { OPEN } else { 0 };
        // Relaxed: a first guess for the CAS below, whose Release publishes the write.
        let mut state = self.state.load(Ordering::Relaxed);
        loop {
            match self.state.compare_exchange(
                state,
                (state & !WRITING) | reopened,
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(current) => state = current,
            }
        }
        // A new phase: the readers waiting now go before the next writer.
        debug_assert_eq!(waiting.overdue, 0, "a writer got in before overdue readers");
        waiting.phase = waiting.phase.wrapping_add(1);
        waiting.overdue += waiting.queued;
        waiting.queued = 0;
        self.changed.notify_all();
        result
    }

    #[cfg(test)]
    fn state(&self) -> usize {
        self.state.load(Ordering::SeqCst)
    }
}

/// An access in progress. [`Held::finish`] ends it and reports a failure to conceal the memory;
/// dropping it (on a panic in the callback) ends it too and logs that failure instead.
///
/// When the gate says the memory was inherited through a fork (a thread that forked inside its
/// own access, now in the child), ending the access touches nothing: the state word, the mutex,
/// the reader line and the memory belong to the parent's threads.
pub(crate) struct Held<'a, G: Gate> {
    access: &'a Access,
    gate: &'a G,
    hold: Hold<'a>,
}

/// How an access in progress is accounted for.
enum Hold<'a> {
    /// Counted in the state word.
    Counted(Mode),
    /// A read inside a read of the same secret on the same thread: the outer one accounts for
    /// both.
    Nested,
    /// A read published in the thread's reader line (this entry).
    Published(&'a AtomicUsize),
}

impl<'a, G: Gate> Held<'a, G> {
    fn new(access: &'a Access, gate: &'a G, hold: Hold<'a>) -> Self {
        Held { access, gate, hold }
    }

    /// Ends the access. [`Error::Forked`] when the memory was inherited through a fork.
    #[inline]
    pub(crate) fn finish(self) -> Result<(), Error> {
        // Ended here: nothing left for the drop (which is for panics).
        let this = std::mem::ManuallyDrop::new(self);
        if this.gate.inherited() {
            return Err(Error::Forked);
        }
        this.leave()
    }

    #[inline]
    fn leave(&self) -> Result<(), Error> {
        match self.hold {
            Hold::Counted(Mode::Read) => self.access.leave_read(self.gate),
            Hold::Counted(Mode::Write) => self.access.leave_write(self.gate),
            Hold::Nested => Ok(()),
            Hold::Published(entry) => {
                self.access.withdraw(entry);
                Ok(())
            }
        }
    }
}

impl<G: Gate> Drop for Held<'_, G> {
    fn drop(&mut self) {
        if self.gate.inherited() {
            return;
        }
        if let Err(error) = self.leave() {
            log::error!("closing a secret's memory after a panic failed: {error}");
        }
    }
}

#[cfg(all(test, not(loom)))]
pub(crate) mod tests;

#[cfg(all(test, loom))]
mod loom;
