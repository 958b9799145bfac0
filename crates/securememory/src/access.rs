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

use crate::error::Error;
use crate::sync::{AtomicUsize, Condvar, Mutex, MutexGuard, Ordering};

/// The two ways into a secret's memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    Read,
    Write,
}

/// Opens and closes the memory behind an [`Access`].
pub(crate) trait Gate {
    /// Makes the memory usable for `mode`.
    fn open(&self, mode: Mode) -> Result<(), Error>;
    /// Makes the memory unusable again.
    fn close(&self) -> Result<(), Error>;
}

/// `close` has started: no new access may begin.
const CLOSED: usize = 1 << 0;
/// A writer holds the memory exclusively.
const WRITING: usize = 1 << 1;
/// At least one writer is waiting: new readers queue behind it instead of joining, so a stream
/// of overlapping readers cannot starve it.
const WRITER_WAITING: usize = 1 << 2;
/// The memory is readable and readers may join without a protection change. Set with a reader
/// count of zero only when closing the memory failed: the next last reader, writer or `close`
/// retries.
const OPEN: usize = 1 << 3;
/// `close` has finished tearing the memory down.
const RELEASED: usize = 1 << 4;
/// One reader; the count occupies the bits from here up.
const ONE_READER: usize = 1 << 5;

fn readers(state: usize) -> usize {
    state / ONE_READER
}

/// State that only holders of the mutex read or write.
struct Waiting {
    writers: usize,
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
            slow: Mutex::new(Waiting { writers: 0 }),
            changed: Condvar::new(),
        }
    }

    /// Whether `close` has started.
    pub(crate) fn is_closed(&self) -> bool {
        // Acquire: a caller that sees the secret closed also sees what the closer did before.
        self.state.load(Ordering::Acquire) & CLOSED != 0
    }

    /// Starts a read. `nested` says the calling thread already holds a read of this secret,
    /// which lets it join even while a writer waits (it would otherwise wait for itself).
    #[inline]
    pub(crate) fn read<'a, G: Gate>(
        &'a self,
        gate: &'a G,
        nested: bool,
    ) -> Result<Held<'a, G>, Error> {
        if nested {
            self.join_nested()?;
        } else if !self.try_join_open() {
            self.read_slow(gate)?;
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
        let mut waiting = self.slow.lock();
        // Wake readers queued behind a writer so they can fail with `Closed` now.
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

    /// The fast path: join readers while the memory is open. One CAS, usually on the first try.
    #[inline]
    fn try_join_open(&self) -> bool {
        let mut state = self.state.load(Ordering::Relaxed);
        loop {
            if state & (CLOSED | WRITING | WRITER_WAITING | OPEN) != OPEN
                || state > usize::MAX - ONE_READER
            {
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
    fn read_slow<G: Gate>(&self, gate: &G) -> Result<(), Error> {
        // SeqCst, with the load in `leave_read_slow`: either the last reader sees this arrival
        // and leaves the memory open, or this reader finds it closed and opens it itself.
        self.arriving.fetch_add(1, Ordering::SeqCst);
        let result = self.read_slow_locked(gate);
        self.arriving.fetch_sub(1, Ordering::SeqCst);
        result
    }

    fn read_slow_locked<G: Gate>(&self, gate: &G) -> Result<(), Error> {
        let mut waiting = self.slow.lock();
        loop {
            let state = self.state.load(Ordering::Acquire);
            if state & CLOSED != 0 {
                return Err(Error::Closed);
            }
            if state & (WRITING | WRITER_WAITING) != 0 {
                self.changed.wait(&mut waiting);
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
            if readers(state) > 0 || state & WRITING != 0 {
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
        let _waiting = self.slow.lock();
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
        self.changed.notify_all();
        result
    }

    #[cfg(test)]
    fn state(&self) -> usize {
        self.state.load(Ordering::SeqCst)
    }
}

/// An access in progress. [`Held::release`] ends it and reports a failure to close the memory;
/// dropping it (on a panic in the callback) ends it too and logs that failure instead.
pub(crate) struct Held<'a, G: Gate> {
    access: &'a Access,
    gate: &'a G,
    mode: Mode,
    done: bool,
}

impl<G: Gate> Held<'_, G> {
    #[inline]
    pub(crate) fn release(mut self) -> Result<(), Error> {
        self.done = true;
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
        if !self.done {
            if let Err(error) = self.leave() {
                log::error!("closing a secret's memory after a panic failed: {error}");
            }
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::io;

    /// A gate that records the protection it was left in and can be told to fail.
    #[derive(Default)]
    struct FakeGate {
        open_for: Cell<Option<Mode>>,
        opens: Cell<usize>,
        closes: Cell<usize>,
        fail_close: Cell<bool>,
        fail_open: Cell<bool>,
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
    }

    #[test]
    fn first_reader_opens_and_last_reader_closes() {
        let access = Access::new();
        let gate = FakeGate::default();
        let first = access.read(&gate, false).unwrap();
        let second = access.read(&gate, false).unwrap();
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
        let held = access.read(&gate, false).unwrap();
        assert!(matches!(held.release(), Err(Error::Os { .. })));
        assert_eq!(readers(access.state()), 0, "the count is never stuck");
        assert_ne!(access.state() & OPEN, 0, "the failure is remembered");
        gate.fail_close.set(false);
        let held = access.read(&gate, false).unwrap();
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
        access.read(&gate, false).unwrap().release().unwrap();
        assert_eq!(gate.open_for.get(), None);
        access.close(|| Ok(())).unwrap();
    }

    #[test]
    fn failed_open_leaves_no_reader_counted() {
        let access = Access::new();
        let gate = FakeGate::default();
        gate.fail_open.set(true);
        assert!(access.read(&gate, false).is_err());
        assert!(access.write(&gate).is_err());
        assert_eq!(access.state(), 0);
        gate.fail_open.set(false);
        access.read(&gate, false).unwrap().release().unwrap();
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
        assert!(matches!(access.read(&gate, false), Err(Error::Closed)));
        assert!(matches!(access.write(&gate), Err(Error::Closed)));
        assert_eq!(gate.opens.get(), 0);
    }

    #[test]
    fn dropping_a_held_access_releases_it() {
        let access = Access::new();
        let gate = FakeGate::default();
        drop(access.read(&gate, false).unwrap());
        assert_eq!(access.state(), 0);
        assert_eq!(gate.open_for.get(), None);
        drop(access.write(&gate).unwrap());
        assert_eq!(access.state(), 0);
    }

    #[test]
    fn nested_read_joins_while_a_read_is_held() {
        let access = Access::new();
        let gate = FakeGate::default();
        let outer = access.read(&gate, false).unwrap();
        let inner = access.read(&gate, true).unwrap();
        assert_eq!(gate.opens.get(), 1);
        inner.release().unwrap();
        assert_eq!(gate.closes.get(), 0);
        outer.release().unwrap();
        assert_eq!(gate.closes.get(), 1);
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
        match s.access.read(&s.gate, false) {
            Ok(held) => {
                s.gate.assert_readable();
                held.release().unwrap();
                true
            }
            Err(Error::Closed) => false,
            Err(other) => panic!("unexpected error {other}"),
        }
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
                    let held = s.access.read(&s.gate, false).unwrap();
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
            let held = s.access.write(&s.gate).unwrap();
            s.gate.assert_writable();
            held.release().unwrap();
            for r in readers {
                r.join().unwrap();
            }
            assert_eq!(s.gate.protection.load(SeqCst), 0, "memory left open");
            assert_eq!(s.access.state(), 0);
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
            let held = s.access.write(&s.gate).unwrap();
            s.gate.assert_writable();
            held.release().unwrap();
            t.join().unwrap();
            assert_eq!(s.gate.protection.load(SeqCst), 0);
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
