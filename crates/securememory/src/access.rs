//! The access protocol: who may touch a secret's memory, and when it changes protection.
//!
//! One atomic state word holds a reader count and a few flags. Many readers share an open
//! secret; the first reader in opens the memory (one protection change) and the last one out
//! closes it again. A reader that finds the memory already open joins with a single
//! compare-and-swap: no lock, no system call. Writers are exclusive. `close` refuses new accesses
//! at once, then waits for the ones in flight and tears the memory down.
//!
//! Every protection change happens while holding `slow`, a mutex that also backs a condition
//! variable for waiting; so the memory can never be closed under a reader that joined through the
//! fast path (that needs [`OPEN`], which only a holder of the mutex clears).
//!
//! How memory is opened and closed is not this module's business: a [`Gate`] does it
//! (`mprotect` today; protection keys or decrypt-into-scratch later). That also lets the protocol
//! be model-checked with `loom` and fault-injected with a gate whose calls fail.
//!
//! # The state word
//!
//! | Part | Meaning | Set by | Cleared by |
//! |------|---------|--------|------------|
//! | [`CLOSED`] | no new access may begin | `close`, `close_in_forked_child` | never |
//! | [`WRITING`] | one writer holds the memory | a writer getting in (mutex held) | `leave_write` (mutex held) |
//! | [`WRITER_WAITING`] | `Waiting::writers` is not zero | a writer registering in `write` (mutex held) | the last registered writer to get in or give up (mutex held) |
//! | [`OPEN`] | readable; readers may join without a protection change | the first reader in (mutex held); a failed close | the last reader out, a writer getting in (mutex held) |
//! | [`RELEASED`] | the memory is torn down | `close` after its teardown; `close_in_forked_child` | never |
//! | reader count | readers inside | the fast path (needs `OPEN`), a nested read (needs a reader inside), the slow path (mutex held) | `leave_read` (the last reader with the mutex held) |
//!
//! Which parts go together:
//! - `WRITING` excludes `OPEN` and readers.
//! - Readers are counted only with `OPEN`. `OPEN` with no reader means that closing the memory
//!   failed (the next last reader, writer or `close` retries), or that the last reader out left
//!   it to a reader arriving on the slow path.
//! - `RELEASED` comes only with `CLOSED`. After `close` it also means no writer and no reader;
//!   after `close_in_forked_child` the rest of the word is left as the fork found it.
//! - `WRITER_WAITING` and `CLOSED` go with anything.
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
use crate::sync::{AtomicUsize, Condvar, Mutex, MutexGuard, Ordering};

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

/// Opens and closes the memory behind an [`Access`].
pub(crate) trait Gate {
    /// Makes the memory usable for `mode`.
    fn open(&self, mode: Mode) -> Result<(), Error>;
    /// Makes the memory unusable again.
    fn close(&self) -> Result<(), Error>;
    /// The memory belongs to the process this one was forked from. An access that began before
    /// the fork then ends without touching the access state, the mutex or the memory: they belong
    /// to the parent's threads.
    fn inherited(&self) -> bool {
        false
    }
}

/// `close` has started: no new access may begin.
const CLOSED: usize = 1 << 0;
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
/// One reader; the count occupies the bits from here up.
const ONE_READER: usize = 1 << 5;

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
    /// readers queued behind each other do not each pay for a close and an open.
    arriving: AtomicUsize,
    slow: Mutex<Waiting>,
    changed: Condvar,
}

impl Access {
    pub(crate) fn new() -> Self {
        Access {
            state: AtomicUsize::new(0),
            arriving: AtomicUsize::new(0),
            slow: Mutex::new(Waiting {
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
    #[inline]
    pub(crate) fn read<'a, G: Gate>(
        &'a self,
        gate: &'a G,
        entry: Entry,
    ) -> Result<Held<'a, G>, Error> {
        match entry {
            Entry::Nested => self.join_nested()?,
            Entry::Fresh => {
                if !self.try_join_open(FRESH_BLOCKERS) {
                    self.read_slow(gate, entry)?;
                }
            }
            Entry::HoldingAnother => {
                if !self.try_join_open(HOLDING_ANOTHER_BLOCKERS) {
                    self.read_slow(gate, entry)?;
                }
            }
        }
        Ok(Held {
            access: self,
            gate,
            mode: Mode::Read,
            done: false,
        })
    }

    /// Starts an exclusive write; waits for readers and other writers to leave.
    pub(crate) fn write<'a, G: Gate>(&'a self, gate: &'a G) -> Result<Held<'a, G>, Error> {
        let mut waiting = self.slow.lock();
        waiting.writers += 1;
        self.state.fetch_or(WRITER_WAITING, Ordering::Relaxed);
        let result = self.write_locked(gate, &mut waiting);
        waiting.writers -= 1;
        if waiting.writers == 0 {
            self.state.fetch_and(!WRITER_WAITING, Ordering::Relaxed);
            // Readers queued behind the writer flag may go now.
            self.changed.notify_all();
        }
        result.map(|()| Held {
            access: self,
            gate,
            mode: Mode::Write,
            done: false,
        })
    }

    /// Closes: refuses new accesses at once, waits for the ones in flight, then runs `teardown`
    /// exactly once. Concurrent and later calls return once the first one has finished.
    pub(crate) fn close(&self, teardown: impl FnOnce() -> Result<(), Error>) -> Result<(), Error> {
        // AcqRel: the closer that wins must see every access that finished before it.
        let previous = self.state.fetch_or(CLOSED, Ordering::AcqRel);
        if previous & RELEASED != 0 {
            // Torn down already. Returning without the mutex also keeps a forked child, where the
            // mutex may stay locked by a thread that does not exist there, from waiting forever.
            return Ok(());
        }
        let mut waiting = self.slow.lock();
        // Wake readers and writers waiting to get in, so they can fail with `Closed` now.
        self.changed.notify_all();
        if previous & CLOSED != 0 {
            while self.state.load(Ordering::Acquire) & RELEASED == 0 {
                self.changed.wait(&mut waiting);
            }
            return Ok(());
        }
        loop {
            let state = self.state.load(Ordering::Acquire);
            if readers(state) == 0 && state & WRITING == 0 {
                break;
            }
            self.changed.wait(&mut waiting);
        }
        let result = teardown();
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
        let mut state = self.state.load(Ordering::Relaxed);
        loop {
            if state & (blockers | OPEN) != OPEN || state > usize::MAX - ONE_READER {
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

    /// A thread already reading joins again: the memory is open and cannot close under it.
    fn join_nested(&self) -> Result<(), Error> {
        let mut state = self.state.load(Ordering::Relaxed);
        loop {
            debug_assert!(readers(state) > 0, "a nested read needs an outer read");
            if state & CLOSED != 0 {
                return Err(Error::Closed);
            }
            if state > usize::MAX - ONE_READER {
                return Err(Error::Reentrant {
                    operation: "with_bytes",
                });
            }
            match self.state.compare_exchange_weak(
                state,
                state + ONE_READER,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(()),
                Err(current) => state = current,
            }
        }
    }

    #[cold]
    fn read_slow<G: Gate>(&self, gate: &G, entry: Entry) -> Result<(), Error> {
        // SeqCst, with the load in `leave_read_slow`: either the last reader sees this arrival
        // and leaves the memory open, or this reader finds it closed and opens it itself.
        self.arriving.fetch_add(1, Ordering::SeqCst);
        let mut waiting = self.slow.lock();
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
            let state = self.state.load(Ordering::Acquire);
            if state & CLOSED != 0 {
                return Err(Error::Closed);
            }
            // An overdue reader, or one holding another secret's access, passes a waiting writer.
            let overdue = since.is_some_and(|phase| phase != waiting.phase);
            let blockers = if overdue || entry == Entry::HoldingAnother {
                WRITING
            } else {
                WRITING | WRITER_WAITING
            };
            if state & blockers != 0 {
                if since.is_none() {
                    *since = Some(waiting.phase);
                    waiting.queued += 1;
                }
                self.changed.wait(waiting);
                continue;
            }
            if state > usize::MAX - ONE_READER {
                return Err(Error::Reentrant {
                    operation: "with_bytes",
                });
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
            gate.open(Mode::Read)?;
            return self.publish(state, OPEN + ONE_READER, gate);
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

    /// After opening the memory with the mutex held: add `bits` to the state unless `close`
    /// started meanwhile, in which case the memory is closed again and the access refused.
    fn publish<G: Gate>(&self, mut state: usize, bits: usize, gate: &G) -> Result<(), Error> {
        loop {
            if state & CLOSED != 0 {
                if let Err(error) = gate.close() {
                    self.state.fetch_or(OPEN, Ordering::Release);
                    log::warn!("closing memory after a refused access failed: {error}");
                }
                return Err(Error::Closed);
            }
            // Release publishes the protection change to readers joining on the fast path.
            match self.state.compare_exchange(
                state,
                (state | bits) & !(OPEN & !bits),
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
            let state = self.state.load(Ordering::Acquire);
            if state & CLOSED != 0 {
                return Err(Error::Closed);
            }
            // Readers that waited through the last write go before the next one.
            if readers(state) > 0 || state & WRITING != 0 || waiting.overdue > 0 {
                self.changed.wait(waiting);
                continue;
            }
            gate.open(Mode::Write)?;
            // WRITING replaces OPEN: readers may not join a writer.
            return self.publish(state, WRITING, gate);
        }
    }

    /// The end of a read: one CAS unless this is the last reader, who closes the memory.
    #[inline]
    fn leave_read<G: Gate>(&self, gate: &G) -> Result<(), Error> {
        let mut state = self.state.load(Ordering::Relaxed);
        while readers(state) > 1 {
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
        let _waiting = self.slow.lock();
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
        let result = gate.close();
        if result.is_err() {
            self.state.fetch_or(OPEN, Ordering::Release);
        }
        self.changed.notify_all();
        result
    }

    fn leave_write<G: Gate>(&self, gate: &G) -> Result<(), Error> {
        let mut waiting = self.slow.lock();
        let result = gate.close();
        let reopened = if result.is_err() { OPEN } else { 0 };
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

    /// Whether a writer is registered as waiting (for tests that must wait until one is).
    #[cfg(all(test, not(loom)))]
    pub(crate) fn writer_waiting(&self) -> bool {
        self.state() & WRITER_WAITING != 0
    }
}

/// An access in progress. [`Held::release`] ends it and reports a failure to close the memory;
/// dropping it (on a panic in the callback) ends it too and logs that failure instead.
///
/// When the gate says the memory was inherited through a fork (a thread that forked inside its
/// own access, now in the child), ending the access touches nothing: the state word, the mutex
/// and the memory belong to the parent's threads.
pub(crate) struct Held<'a, G: Gate> {
    access: &'a Access,
    gate: &'a G,
    mode: Mode,
    done: bool,
}

impl<G: Gate> Held<'_, G> {
    /// Ends the access. [`Error::Forked`] when the memory was inherited through a fork.
    #[inline]
    pub(crate) fn release(mut self) -> Result<(), Error> {
        self.done = true;
        if self.gate.inherited() {
            return Err(Error::Forked);
        }
        self.leave()
    }

    fn leave(&self) -> Result<(), Error> {
        match self.mode {
            Mode::Read => self.access.leave_read(self.gate),
            Mode::Write => self.access.leave_write(self.gate),
        }
    }
}

impl<G: Gate> Drop for Held<'_, G> {
    fn drop(&mut self) {
        if self.done || self.gate.inherited() {
            return;
        }
        if let Err(error) = self.leave() {
            log::error!("closing a secret's memory after a panic failed: {error}");
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::io;
    use std::sync::atomic::AtomicBool;
    use std::sync::{mpsc, Arc};
    use std::thread;
    use std::time::{Duration, Instant};

    /// A gate that records the protection it was left in and can be told to fail.
    #[derive(Default)]
    struct FakeGate {
        open_for: Cell<Option<Mode>>,
        opens: Cell<usize>,
        closes: Cell<usize>,
        fail_close: Cell<bool>,
        fail_open: Cell<bool>,
        inherited: Cell<bool>,
    }

    impl Gate for FakeGate {
        fn open(&self, mode: Mode) -> Result<(), Error> {
            if self.fail_open.get() {
                return Err(Error::os("mprotect", io::Error::from_raw_os_error(12)));
            }
            self.opens.set(self.opens.get() + 1);
            self.open_for.set(Some(mode));
            Ok(())
        }
        fn close(&self) -> Result<(), Error> {
            if self.fail_close.get() {
                return Err(Error::os("mprotect", io::Error::from_raw_os_error(12)));
            }
            self.closes.set(self.closes.get() + 1);
            self.open_for.set(None);
            Ok(())
        }
        fn inherited(&self) -> bool {
            self.inherited.get()
        }
    }

    /// A gate for tests with threads: counts opens and checks that the memory is opened and
    /// closed in a consistent order (0 closed, 1 readable, 2 writable).
    #[derive(Default)]
    struct SharedGate {
        protection: AtomicUsize,
        opens: AtomicUsize,
        fail_next_open: AtomicBool,
    }

    impl Gate for SharedGate {
        fn open(&self, mode: Mode) -> Result<(), Error> {
            if self.fail_next_open.swap(false, Ordering::SeqCst) {
                return Err(Error::os("mprotect", io::Error::from_raw_os_error(12)));
            }
            let (to, allowed_from) = match mode {
                Mode::Read => (1, 0),
                Mode::Write => (2, 1),
            };
            let previous = self.protection.swap(to, Ordering::SeqCst);
            assert!(
                previous <= allowed_from,
                "opened for {mode:?} in state {previous}"
            );
            self.opens.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        fn close(&self) -> Result<(), Error> {
            let previous = self.protection.swap(0, Ordering::SeqCst);
            assert!(
                previous == 1 || previous == 2,
                "closed memory that was not open"
            );
            Ok(())
        }
    }

    /// One secret's access state and gate, shared with threads that may outlive a failed test.
    struct Shared {
        access: Access,
        gate: SharedGate,
    }

    fn shared() -> Arc<Shared> {
        Arc::new(Shared {
            access: Access::new(),
            gate: SharedGate::default(),
        })
    }

    const DEADLINE: Duration = Duration::from_secs(10);

    /// Spins until `condition` holds; panics after the deadline, so a deadlock fails the test.
    fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
        let start = Instant::now();
        while !condition() {
            assert!(start.elapsed() < DEADLINE, "timed out waiting until {what}");
            thread::yield_now();
        }
    }

    /// Waits for a thread's signal with the deadline.
    fn expect_signal<T>(receiver: &mpsc::Receiver<T>, what: &str) -> T {
        receiver
            .recv_timeout(DEADLINE)
            .unwrap_or_else(|error| panic!("no signal that {what}: {error}"))
    }

    /// Starts a thread that takes a read with `entry`, reports `entered` (or the error), then
    /// holds the read until `leave` is sent (or dropped).
    fn spawn_reader(
        shared: &Arc<Shared>,
        entry: Entry,
    ) -> (
        mpsc::Receiver<Result<(), Error>>,
        mpsc::Sender<()>,
        thread::JoinHandle<()>,
    ) {
        let (entered_tx, entered_rx) = mpsc::channel();
        let (leave_tx, leave_rx) = mpsc::channel::<()>();
        let shared = Arc::clone(shared);
        let handle = thread::spawn(move || match shared.access.read(&shared.gate, entry) {
            Ok(held) => {
                assert_eq!(shared.gate.protection.load(Ordering::SeqCst), 1);
                entered_tx.send(Ok(())).unwrap();
                let _ = leave_rx.recv();
                held.release().unwrap();
            }
            Err(error) => entered_tx.send(Err(error)).unwrap(),
        });
        (entered_rx, leave_tx, handle)
    }

    /// Starts a thread that takes a write, reports it, then holds it until `leave` is sent.
    fn spawn_writer(
        shared: &Arc<Shared>,
    ) -> (
        mpsc::Receiver<Result<(), Error>>,
        mpsc::Sender<()>,
        thread::JoinHandle<()>,
    ) {
        let (entered_tx, entered_rx) = mpsc::channel();
        let (leave_tx, leave_rx) = mpsc::channel::<()>();
        let shared = Arc::clone(shared);
        let handle = thread::spawn(move || match shared.access.write(&shared.gate) {
            Ok(held) => {
                assert_eq!(shared.gate.protection.load(Ordering::SeqCst), 2);
                entered_tx.send(Ok(())).unwrap();
                let _ = leave_rx.recv();
                held.release().unwrap();
            }
            Err(error) => entered_tx.send(Err(error)).unwrap(),
        });
        (entered_rx, leave_tx, handle)
    }

    fn writers_waiting(access: &Access) -> usize {
        access.slow.lock().writers
    }

    fn readers_queued(access: &Access) -> usize {
        access.slow.lock().queued
    }

    fn assert_idle(access: &Access) {
        assert_eq!(access.state() & !OPEN, 0);
        let waiting = access.slow.lock();
        assert_eq!(
            (waiting.writers, waiting.queued, waiting.overdue),
            (0, 0, 0)
        );
    }

    #[test]
    fn first_reader_opens_and_last_reader_closes() {
        let access = Access::new();
        let gate = FakeGate::default();
        let first = access.read(&gate, Entry::Fresh).unwrap();
        let second = access.read(&gate, Entry::Fresh).unwrap();
        assert_eq!(
            gate.opens.get(),
            1,
            "the second reader joined without opening"
        );
        assert_eq!(readers(access.state()), 2);
        first.release().unwrap();
        assert_eq!(
            gate.closes.get(),
            0,
            "memory stays open while a reader remains"
        );
        second.release().unwrap();
        assert_eq!(gate.closes.get(), 1);
        assert_eq!(gate.open_for.get(), None);
        assert_eq!(access.state(), 0);
    }

    #[test]
    fn failed_reprotect_is_returned_remembered_and_retried() {
        let access = Access::new();
        let gate = FakeGate::default();
        gate.fail_close.set(true);
        let held = access.read(&gate, Entry::Fresh).unwrap();
        assert!(matches!(held.release(), Err(Error::Os { .. })));
        assert_eq!(readers(access.state()), 0, "the count is never stuck");
        assert_ne!(access.state() & OPEN, 0, "the failure is remembered");
        gate.fail_close.set(false);
        let held = access.read(&gate, Entry::Fresh).unwrap();
        assert_eq!(
            gate.opens.get(),
            1,
            "the still-open memory is joined, not reopened"
        );
        held.release().unwrap();
        assert_eq!(gate.open_for.get(), None, "the retry closed the memory");
        assert_eq!(access.state(), 0);
    }

    #[test]
    fn failed_reprotect_after_write_is_remembered() {
        let access = Access::new();
        let gate = FakeGate::default();
        gate.fail_close.set(true);
        let held = access.write(&gate).unwrap();
        assert!(held.release().is_err());
        assert_eq!(access.state() & (WRITING | OPEN), OPEN);
        gate.fail_close.set(false);
        access.read(&gate, Entry::Fresh).unwrap().release().unwrap();
        assert_eq!(gate.open_for.get(), None);
        access.close(|| Ok(())).unwrap();
    }

    #[test]
    fn failed_open_leaves_no_reader_counted() {
        let access = Access::new();
        let gate = FakeGate::default();
        gate.fail_open.set(true);
        assert!(access.read(&gate, Entry::Fresh).is_err());
        assert!(access.write(&gate).is_err());
        assert_eq!(access.state(), 0);
        gate.fail_open.set(false);
        access.read(&gate, Entry::Fresh).unwrap().release().unwrap();
    }

    #[test]
    fn close_refuses_new_accesses_and_runs_teardown_once() {
        let access = Access::new();
        let gate = FakeGate::default();
        let teardowns = Cell::new(0);
        access
            .close(|| {
                teardowns.set(teardowns.get() + 1);
                Ok(())
            })
            .unwrap();
        access.close(|| panic!("teardown ran twice")).unwrap();
        assert_eq!(teardowns.get(), 1);
        assert!(matches!(
            access.read(&gate, Entry::Fresh),
            Err(Error::Closed)
        ));
        assert!(matches!(
            access.read(&gate, Entry::HoldingAnother),
            Err(Error::Closed)
        ));
        assert!(matches!(access.write(&gate), Err(Error::Closed)));
        assert_eq!(gate.opens.get(), 0);
    }

    #[test]
    fn dropping_a_held_access_releases_it() {
        let access = Access::new();
        let gate = FakeGate::default();
        drop(access.read(&gate, Entry::Fresh).unwrap());
        assert_eq!(access.state(), 0);
        assert_eq!(gate.open_for.get(), None);
        drop(access.write(&gate).unwrap());
        assert_eq!(access.state(), 0);
    }

    #[test]
    fn nested_read_joins_while_a_read_is_held() {
        let access = Access::new();
        let gate = FakeGate::default();
        let outer = access.read(&gate, Entry::Fresh).unwrap();
        let inner = access.read(&gate, Entry::Nested).unwrap();
        assert_eq!(gate.opens.get(), 1);
        inner.release().unwrap();
        assert_eq!(gate.closes.get(), 0);
        outer.release().unwrap();
        assert_eq!(gate.closes.get(), 1);
    }

    #[test]
    fn reader_waiting_through_a_write_gets_in_before_the_next_writer() {
        let shared = shared();
        let (first_in, first_leave, first) = spawn_writer(&shared);
        expect_signal(&first_in, "the first writer got in").unwrap();
        let (reader_in, reader_leave, reader) = spawn_reader(&shared, Entry::Fresh);
        wait_until("the reader waits", || readers_queued(&shared.access) == 1);
        let (second_in, second_leave, second) = spawn_writer(&shared);
        wait_until("the second writer waits", || {
            writers_waiting(&shared.access) == 1
        });

        first_leave.send(()).unwrap();
        let mut next_in = None;
        wait_until("the reader or the second writer gets in", || {
            if let Ok(result) = reader_in.try_recv() {
                next_in = Some(("the reader", result));
            } else if let Ok(result) = second_in.try_recv() {
                next_in = Some(("the second writer", result));
            }
            next_in.is_some()
        });
        let (who, result) = next_in.unwrap();
        result.unwrap();
        assert_eq!(
            who, "the reader",
            "the reader that waited through the first write goes before the next writer"
        );
        let state = shared.access.state();
        assert_eq!(readers(state), 1);
        assert_eq!(state & (WRITING | WRITER_WAITING), WRITER_WAITING);
        assert_eq!(writers_waiting(&shared.access), 1);
        assert_eq!(shared.access.slow.lock().overdue, 0, "the reader is in");

        reader_leave.send(()).unwrap();
        expect_signal(&second_in, "the second writer got in").unwrap();
        second_leave.send(()).unwrap();
        for thread in [first, reader, second] {
            thread.join().unwrap();
        }
        assert_idle(&shared.access);
        assert_eq!(shared.gate.protection.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn overdue_reader_that_fails_to_open_lets_the_next_writer_in() {
        let shared = shared();
        let (first_in, first_leave, first) = spawn_writer(&shared);
        expect_signal(&first_in, "the first writer got in").unwrap();
        // The second writer waits first, so that it usually checks again (and waits for the
        // overdue reader) before the reader runs.
        let (second_in, second_leave, second) = spawn_writer(&shared);
        wait_until("the second writer waits", || {
            writers_waiting(&shared.access) == 1
        });
        let (reader_in, _reader_leave, reader) = spawn_reader(&shared, Entry::Fresh);
        wait_until("the reader waits", || readers_queued(&shared.access) == 1);

        shared.gate.fail_next_open.store(true, Ordering::SeqCst);
        first_leave.send(()).unwrap();
        let refused = expect_signal(&reader_in, "the reader gave up");
        assert!(matches!(refused, Err(Error::Os { .. })), "{refused:?}");
        // The writer waited for the overdue reader, which never got in: it must be woken.
        expect_signal(&second_in, "the second writer got in").unwrap();
        second_leave.send(()).unwrap();
        for thread in [first, reader, second] {
            thread.join().unwrap();
        }
        assert_idle(&shared.access);
    }

    #[test]
    fn writer_waiting_for_readers_gets_in_before_readers_arriving_after_it() {
        let shared = shared();
        let (early_in, early_leave, early) = spawn_reader(&shared, Entry::Fresh);
        expect_signal(&early_in, "the early reader got in").unwrap();
        let (writer_in, writer_leave, writer) = spawn_writer(&shared);
        wait_until("the writer waits", || writers_waiting(&shared.access) == 1);
        let (late_in, late_leave, late) = spawn_reader(&shared, Entry::Fresh);
        wait_until("the late reader queues behind the writer", || {
            readers_queued(&shared.access) == 1
        });
        assert_eq!(readers(shared.access.state()), 1, "the late reader joined");

        early_leave.send(()).unwrap();
        expect_signal(&writer_in, "the writer got in").unwrap();
        assert!(late_in.try_recv().is_err());
        assert_ne!(shared.access.state() & WRITING, 0);

        writer_leave.send(()).unwrap();
        expect_signal(&late_in, "the late reader got in").unwrap();
        late_leave.send(()).unwrap();
        for thread in [early, writer, late] {
            thread.join().unwrap();
        }
        assert_idle(&shared.access);
    }

    #[test]
    fn holding_another_passes_a_waiting_writer_and_fresh_does_not() {
        let shared = shared();
        let (holder_in, holder_leave, holder) = spawn_reader(&shared, Entry::Fresh);
        expect_signal(&holder_in, "the first reader got in").unwrap();
        let (writer_in, writer_leave, writer) = spawn_writer(&shared);
        wait_until("the writer waits", || writers_waiting(&shared.access) == 1);

        let (fresh_in, fresh_leave, fresh) = spawn_reader(&shared, Entry::Fresh);
        wait_until("the fresh reader queues behind the writer", || {
            readers_queued(&shared.access) == 1
        });
        let (other_in, other_leave, other) = spawn_reader(&shared, Entry::HoldingAnother);
        expect_signal(&other_in, "the reader holding another access got in").unwrap();
        assert_eq!(readers(shared.access.state()), 2);
        assert_eq!(readers_queued(&shared.access), 1, "it did not wait");
        assert_eq!(shared.gate.opens.load(Ordering::SeqCst), 1, "it joined");
        assert!(fresh_in.try_recv().is_err());

        holder_leave.send(()).unwrap();
        other_leave.send(()).unwrap();
        expect_signal(&writer_in, "the writer got in").unwrap();
        writer_leave.send(()).unwrap();
        expect_signal(&fresh_in, "the fresh reader got in").unwrap();
        fresh_leave.send(()).unwrap();
        for thread in [holder, writer, fresh, other] {
            thread.join().unwrap();
        }
        assert_idle(&shared.access);
    }

    #[test]
    fn holding_another_opens_closed_memory_past_a_waiting_writer() {
        let shared = shared();
        // A writer registered as waiting, as `write` does, with the memory closed.
        let register_writer = |shared: &Shared, registered: bool| {
            let mut waiting = shared.access.slow.lock();
            if registered {
                waiting.writers += 1;
                shared
                    .access
                    .state
                    .fetch_or(WRITER_WAITING, Ordering::Relaxed);
            } else {
                waiting.writers -= 1;
                shared
                    .access
                    .state
                    .fetch_and(!WRITER_WAITING, Ordering::Relaxed);
                shared.access.changed.notify_all();
            }
        };
        register_writer(&shared, true);
        let (fresh_in, fresh_leave, fresh) = spawn_reader(&shared, Entry::Fresh);
        wait_until("the fresh reader queues behind the writer", || {
            readers_queued(&shared.access) == 1
        });
        let (other_in, other_leave, other) = spawn_reader(&shared, Entry::HoldingAnother);
        expect_signal(&other_in, "the reader holding another access got in").unwrap();
        assert_eq!(shared.gate.opens.load(Ordering::SeqCst), 1, "it opened");
        assert_eq!(readers(shared.access.state()), 1);
        assert!(fresh_in.try_recv().is_err());

        register_writer(&shared, false);
        expect_signal(&fresh_in, "the fresh reader got in").unwrap();
        assert_eq!(shared.gate.opens.load(Ordering::SeqCst), 1, "it joined");
        fresh_leave.send(()).unwrap();
        other_leave.send(()).unwrap();
        fresh.join().unwrap();
        other.join().unwrap();
        assert_idle(&shared.access);
        assert_eq!(shared.gate.protection.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn holding_another_still_waits_for_a_write_in_progress() {
        let shared = shared();
        let (writer_in, writer_leave, writer) = spawn_writer(&shared);
        expect_signal(&writer_in, "the writer got in").unwrap();
        let (reader_in, reader_leave, reader) = spawn_reader(&shared, Entry::HoldingAnother);
        wait_until("the reader waits for the write", || {
            readers_queued(&shared.access) == 1
        });
        assert!(reader_in.try_recv().is_err());
        writer_leave.send(()).unwrap();
        expect_signal(&reader_in, "the reader got in").unwrap();
        reader_leave.send(()).unwrap();
        writer.join().unwrap();
        reader.join().unwrap();
        assert_idle(&shared.access);
    }

    #[test]
    fn crossed_reads_of_two_secrets_pass_writers_waiting_on_both() {
        let a = shared();
        let b = shared();
        // Thread 1 reads A then B; thread 2 reads B then A; a writer waits on each. Each thread
        // holds both reads until told to finish, so neither lets a writer in early.
        let cross = |first: &Arc<Shared>, second: &Arc<Shared>| {
            let (first, second) = (Arc::clone(first), Arc::clone(second));
            let (report_tx, report_rx) = mpsc::channel();
            let (step_tx, step_rx) = mpsc::channel::<()>();
            let handle = thread::spawn(move || {
                let outer = first.access.read(&first.gate, Entry::Fresh).unwrap();
                report_tx.send(true).unwrap();
                if step_rx.recv().is_err() {
                    return;
                }
                let inner = second.access.read(&second.gate, Entry::HoldingAnother);
                report_tx.send(inner.is_ok()).unwrap();
                let _ = step_rx.recv();
                inner.unwrap().release().unwrap();
                outer.release().unwrap();
            });
            (report_rx, step_tx, handle)
        };
        let (one_report, one_step, one) = cross(&a, &b);
        let (two_report, two_step, two) = cross(&b, &a);
        assert!(expect_signal(&one_report, "thread 1 reads A"));
        assert!(expect_signal(&two_report, "thread 2 reads B"));
        let (a_writer_in, a_writer_leave, a_writer) = spawn_writer(&a);
        let (b_writer_in, b_writer_leave, b_writer) = spawn_writer(&b);
        wait_until("writers wait on both", || {
            writers_waiting(&a.access) == 1 && writers_waiting(&b.access) == 1
        });

        one_step.send(()).unwrap();
        two_step.send(()).unwrap();
        assert!(expect_signal(&one_report, "thread 1 reads B"));
        assert!(expect_signal(&two_report, "thread 2 reads A"));
        assert!(a_writer_in.try_recv().is_err() && b_writer_in.try_recv().is_err());
        one_step.send(()).unwrap();
        two_step.send(()).unwrap();
        expect_signal(&a_writer_in, "the writer on A got in").unwrap();
        expect_signal(&b_writer_in, "the writer on B got in").unwrap();
        a_writer_leave.send(()).unwrap();
        b_writer_leave.send(()).unwrap();
        for thread in [one, two, a_writer, b_writer] {
            thread.join().unwrap();
        }
        assert_idle(&a.access);
        assert_idle(&b.access);
    }

    #[test]
    fn close_in_forked_child_marks_closed_and_released_once_without_waiting() {
        let access = Access::new();
        let gate = FakeGate::default();
        let held = access.read(&gate, Entry::Fresh).unwrap();
        let before = access.state();
        assert!(access.close_in_forked_child(), "the first call tears down");
        assert!(!access.close_in_forked_child(), "later calls do not");
        assert!(!access.close_in_forked_child());
        assert!(access.is_closed());
        assert_eq!(access.state(), before | CLOSED | RELEASED);
        access.close(|| panic!("torn down twice")).unwrap();
        // In the child the read belongs to the parent's memory: ending it touches nothing.
        gate.inherited.set(true);
        assert!(matches!(held.release(), Err(Error::Forked)));
        assert_eq!(readers(access.state()), 1);
    }

    #[test]
    fn close_in_forked_child_returns_while_another_thread_holds_the_mutex() {
        let shared = shared();
        let (holder_in, holder_leave, holder) = spawn_reader(&shared, Entry::Fresh);
        expect_signal(&holder_in, "a reader got in").unwrap();
        let (locked_tx, locked_rx) = mpsc::channel();
        let (unlock_tx, unlock_rx) = mpsc::channel::<()>();
        let locker = {
            let shared = Arc::clone(&shared);
            thread::spawn(move || {
                let _waiting = shared.access.slow.lock();
                locked_tx.send(()).unwrap();
                let _ = unlock_rx.recv();
            })
        };
        expect_signal(&locked_rx, "the mutex is held");
        // On yet another thread, so that waiting fails the test instead of hanging it.
        let (closed_tx, closed_rx) = mpsc::channel();
        {
            let shared = Arc::clone(&shared);
            thread::spawn(move || {
                let first = shared.access.close_in_forked_child();
                let second = shared.access.close_in_forked_child();
                let later_close = shared.access.close(|| panic!("torn down twice"));
                closed_tx
                    .send((first, second, later_close.is_ok()))
                    .unwrap();
            });
        }
        let (first, second, later_close) =
            expect_signal(&closed_rx, "close_in_forked_child returned");
        assert!(first && !second && later_close);
        assert!(shared.access.is_closed());
        assert_ne!(shared.access.state() & RELEASED, 0);
        unlock_tx.send(()).unwrap();
        locker.join().unwrap();
        drop(holder_leave);
        holder.join().unwrap();
    }

    #[test]
    fn ending_an_inherited_access_returns_forked_and_touches_nothing() {
        for mode in [Mode::Read, Mode::Write] {
            for by_release in [true, false] {
                let access = Access::new();
                let gate = FakeGate::default();
                let held = match mode {
                    Mode::Read => access.read(&gate, Entry::Fresh).unwrap(),
                    Mode::Write => access.write(&gate).unwrap(),
                };
                let state = access.state();
                gate.inherited.set(true);
                if by_release {
                    assert!(matches!(held.release(), Err(Error::Forked)));
                } else {
                    drop(held);
                }
                let case = format!("{mode:?}, by release: {by_release}");
                assert_eq!(access.state(), state, "{case}: the state changed");
                assert_eq!(gate.closes.get(), 0, "{case}: the memory was closed");
                assert_eq!(gate.open_for.get(), Some(mode));
                assert!(
                    access.slow.try_lock().is_some(),
                    "{case}: mutex left locked"
                );
            }
        }
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    //! Model checks of the protocol: `RUSTFLAGS="--cfg loom" cargo test --release --lib loom`.
    use super::*;
    use loom::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use loom::sync::Arc;
    use loom::thread;

    /// A gate that asserts the protocol's invariants as the memory opens and closes: no one
    /// reads closed memory, no one writes outside a write, and nothing is touched after teardown.
    #[derive(Default)]
    struct CheckingGate {
        /// 0 closed, 1 open for reading, 2 open for writing, 3 torn down.
        protection: AtomicUsize,
    }

    impl Gate for CheckingGate {
        fn open(&self, mode: Mode) -> Result<(), Error> {
            let previous = self.protection.swap(
                match mode {
                    Mode::Read => 1,
                    Mode::Write => 2,
                },
                SeqCst,
            );
            // A writer may take over memory left open for reading with no reader inside (handed
            // over to a reader queued behind the writer); a reader never reopens open memory.
            let allowed = match mode {
                Mode::Read => previous == 0,
                Mode::Write => previous <= 1,
            };
            assert!(allowed, "opened memory for {mode:?} in state {previous}");
            Ok(())
        }
        fn close(&self) -> Result<(), Error> {
            let previous = self.protection.swap(0, SeqCst);
            assert!(
                previous == 1 || previous == 2,
                "closed memory that was not open"
            );
            Ok(())
        }
    }

    impl CheckingGate {
        fn assert_readable(&self) {
            let p = self.protection.load(SeqCst);
            assert!(p == 1 || p == 2, "a reader ran on closed memory");
        }
        fn assert_writable(&self) {
            assert_eq!(
                self.protection.load(SeqCst),
                2,
                "a writer ran without write access"
            );
        }
        /// Teardown may find the memory open for reading (handed over to a reader that then
        /// found the secret closed); a reader still inside would fail `assert_readable`.
        fn teardown(&self) -> Result<(), Error> {
            let previous = self.protection.swap(3, SeqCst);
            assert!(previous < 2, "teardown during a write or twice: {previous}");
            Ok(())
        }
    }

    struct Shared {
        access: Access,
        gate: CheckingGate,
    }

    fn shared() -> Arc<Shared> {
        Arc::new(Shared {
            access: Access::new(),
            gate: CheckingGate::default(),
        })
    }

    fn read(s: &Shared) -> bool {
        read_as(s, Entry::Fresh)
    }

    fn read_as(s: &Shared, entry: Entry) -> bool {
        match s.access.read(&s.gate, entry) {
            Ok(held) => {
                s.gate.assert_readable();
                held.release().unwrap();
                true
            }
            Err(Error::Closed) => false,
            Err(other) => panic!("unexpected error {other}"),
        }
    }

    fn write(s: &Shared) {
        let held = s.access.write(&s.gate).unwrap();
        s.gate.assert_writable();
        held.release().unwrap();
    }

    /// Everything left as at the start: memory closed, no one counted or registered.
    fn assert_idle(s: &Shared) {
        assert_eq!(s.gate.protection.load(SeqCst), 0, "memory left open");
        assert_eq!(s.access.state(), 0);
        let waiting = s.access.slow.lock();
        assert_eq!(
            (waiting.writers, waiting.queued, waiting.overdue),
            (0, 0, 0)
        );
    }

    #[test]
    fn loom_two_readers_open_once_and_close_last() {
        loom::model(|| {
            let s = shared();
            let t = {
                let s = s.clone();
                thread::spawn(move || assert!(read(&s)))
            };
            assert!(read(&s));
            t.join().unwrap();
            assert_eq!(s.gate.protection.load(SeqCst), 0, "memory left open");
            assert_eq!(s.access.state(), 0);
        });
    }

    #[test]
    fn loom_reader_racing_close_never_reads_torn_down_memory() {
        loom::model(|| {
            let s = shared();
            let t = {
                let s = s.clone();
                thread::spawn(move || {
                    read(&s);
                })
            };
            s.access.close(|| s.gate.teardown()).unwrap();
            t.join().unwrap();
            assert_eq!(s.gate.protection.load(SeqCst), 3);
        });
    }

    #[test]
    fn loom_reader_arriving_after_close_started_is_refused_even_while_memory_is_open() {
        loom::model(|| {
            let s = shared();
            let (inside_tx, inside_rx) = loom::sync::mpsc::channel();
            let holder = {
                let s = s.clone();
                thread::spawn(move || {
                    let held = s.access.read(&s.gate, Entry::Fresh).unwrap();
                    inside_tx.send(()).unwrap();
                    held.release().unwrap();
                })
            };
            inside_rx.recv().unwrap();
            let late = {
                let s = s.clone();
                thread::spawn(move || {
                    let closed_before = s.access.is_closed();
                    let entered = read(&s);
                    assert!(!(closed_before && entered), "joined after close started");
                })
            };
            s.access.close(|| s.gate.teardown()).unwrap();
            holder.join().unwrap();
            late.join().unwrap();
        });
    }

    #[test]
    fn loom_readers_handing_over_to_each_other_and_a_writer_leave_memory_closed() {
        loom::model(|| {
            let s = shared();
            let readers: Vec<_> = (0..2)
                .map(|_| {
                    let s = s.clone();
                    thread::spawn(move || assert!(read(&s)))
                })
                .collect();
            write(&s);
            for r in readers {
                r.join().unwrap();
            }
            assert_idle(&s);
        });
    }

    #[test]
    fn loom_writer_excludes_reader() {
        loom::model(|| {
            let s = shared();
            let t = {
                let s = s.clone();
                thread::spawn(move || assert!(read(&s)))
            };
            write(&s);
            t.join().unwrap();
            assert_idle(&s);
        });
    }

    #[test]
    fn loom_reader_between_two_writers_gets_in() {
        // Every interleaving ends (loom reports a thread left waiting as a deadlock): no wake-up
        // is lost between a write ending, the reader turning overdue and the next writer.
        loom::model(|| {
            let s = shared();
            let reader = {
                let s = s.clone();
                thread::spawn(move || assert!(read(&s)))
            };
            let writer = {
                let s = s.clone();
                thread::spawn(move || write(&s))
            };
            write(&s);
            reader.join().unwrap();
            writer.join().unwrap();
            assert_idle(&s);
        });
    }

    #[test]
    fn loom_reader_holding_another_access_racing_a_writer() {
        loom::model(|| {
            let s = shared();
            let t = {
                let s = s.clone();
                thread::spawn(move || assert!(read_as(&s, Entry::HoldingAnother)))
            };
            write(&s);
            t.join().unwrap();
            assert_idle(&s);
        });
    }

    #[test]
    fn loom_concurrent_closers_both_return_after_teardown() {
        loom::model(|| {
            let s = shared();
            let t = {
                let s = s.clone();
                thread::spawn(move || {
                    s.access.close(|| s.gate.teardown()).unwrap();
                    assert_eq!(s.gate.protection.load(SeqCst), 3);
                })
            };
            s.access.close(|| s.gate.teardown()).unwrap();
            assert_eq!(s.gate.protection.load(SeqCst), 3);
            t.join().unwrap();
        });
    }
}
