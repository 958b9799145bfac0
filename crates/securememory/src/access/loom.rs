//! Model checks of the protocol: `RUSTFLAGS="--cfg loom" cargo test --release --lib loom`.
//! (Paths to the `loom` crate start with `::`: this module has the same name.)
use super::*;
use ::loom::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use ::loom::sync::Arc;
use ::loom::thread;

/// A gate that asserts the protocol's invariants as the memory opens and closes: no one
/// reads closed memory, no one writes outside a write, and nothing is touched after teardown.
#[derive(Default)]
struct CheckingGate {
    /// 0 closed, 1 open for reading, 2 open for writing, 3 torn down.
    protection: AtomicUsize,
}

impl Gate for CheckingGate {
    fn expose(&self, mode: Mode) -> Result<(), Error> {
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
    fn conceal(&self) -> Result<(), Error> {
        let previous = self.protection.swap(0, SeqCst);
        assert!(
            previous == 1 || previous == 2,
            "closed memory that was not open"
        );
        Ok(())
    }
    fn epoch(&self) -> u64 {
        1
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
    match s.access.read(&s.gate, entry, None) {
        Ok(held) => {
            s.gate.assert_readable();
            held.finish().unwrap();
            true
        }
        Err(Error::Closed) => false,
        Err(other) => panic!("unexpected error {other}"),
    }
}

fn write(s: &Shared) {
    let held = s.access.write(&s.gate).unwrap();
    s.gate.assert_writable();
    held.finish().unwrap();
}

/// Everything left as at the start: memory closed, no one counted or registered.
fn assert_idle(s: &Shared) {
    assert_eq!(s.gate.protection.load(SeqCst), 0, "memory left open");
    assert_eq!(s.access.state(), 0);
    let waiting = s.access.waiting.lock();
    assert_eq!(
        (waiting.writers, waiting.queued, waiting.overdue),
        (0, 0, 0)
    );
}

#[test]
fn loom_two_readers_open_once_and_close_last() {
    ::loom::model(|| {
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
    ::loom::model(|| {
        let s = shared();
        let t = {
            let s = s.clone();
            thread::spawn(move || {
                read(&s);
            })
        };
        s.access.close(&s.gate, || s.gate.teardown()).unwrap();
        t.join().unwrap();
        assert_eq!(s.gate.protection.load(SeqCst), 3);
    });
}

#[test]
fn loom_reader_arriving_after_close_started_is_refused_even_while_memory_is_open() {
    ::loom::model(|| {
        let s = shared();
        let (inside_tx, inside_rx) = ::loom::sync::mpsc::channel();
        let holder = {
            let s = s.clone();
            thread::spawn(move || {
                let held = s.access.read(&s.gate, Entry::Fresh, None).unwrap();
                inside_tx.send(()).unwrap();
                held.finish().unwrap();
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
        s.access.close(&s.gate, || s.gate.teardown()).unwrap();
        holder.join().unwrap();
        late.join().unwrap();
    });
}

#[test]
fn loom_readers_handing_over_to_each_other_and_a_writer_leave_memory_closed() {
    ::loom::model(|| {
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
    ::loom::model(|| {
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
    ::loom::model(|| {
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
    ::loom::model(|| {
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

/// Memory left open with no reader counted (a conceal that failed, or memory handed over to a
/// reader queued behind a writer): a reader holding another secret passes `WRITER_WAITING` on
/// the fast path, and must not get in beside a writer that is taking the memory.
#[test]
fn loom_reader_holding_another_access_racing_a_writer_over_open_memory() {
    ::loom::model(|| {
        let s = shared();
        s.access.state.store(OPEN, SeqCst);
        s.gate.protection.store(1, SeqCst);
        let writers_inside = Arc::new(AtomicUsize::new(0));
        let readers_inside = Arc::new(AtomicUsize::new(0));
        let t = {
            let (s, writers_inside, readers_inside) =
                (s.clone(), writers_inside.clone(), readers_inside.clone());
            thread::spawn(move || {
                let held = s.access.read(&s.gate, Entry::HoldingAnother, None).unwrap();
                readers_inside.fetch_add(1, SeqCst);
                assert_eq!(writers_inside.load(SeqCst), 0, "a reader beside a writer");
                s.gate.assert_readable();
                readers_inside.fetch_sub(1, SeqCst);
                held.finish().unwrap();
            })
        };
        let held = s.access.write(&s.gate).unwrap();
        writers_inside.fetch_add(1, SeqCst);
        assert_eq!(readers_inside.load(SeqCst), 0, "a writer beside a reader");
        s.gate.assert_writable();
        writers_inside.fetch_sub(1, SeqCst);
        held.finish().unwrap();
        t.join().unwrap();
    });
}

#[test]
fn loom_concurrent_closers_both_return_after_teardown() {
    ::loom::model(|| {
        let s = shared();
        let t = {
            let s = s.clone();
            thread::spawn(move || {
                s.access.close(&s.gate, || s.gate.teardown()).unwrap();
                assert_eq!(s.gate.protection.load(SeqCst), 3);
            })
        };
        s.access.close(&s.gate, || s.gate.teardown()).unwrap();
        assert_eq!(s.gate.protection.load(SeqCst), 3);
        t.join().unwrap();
    });
}

/// A gate that opens per thread (protection keys): nothing to expose or conceal for everyone.
/// It counts who is inside to check the protocol still excludes a writer from readers and
/// tears down only after both.
#[derive(Default)]
struct PerThreadGate {
    readers: AtomicUsize,
    writers: AtomicUsize,
    torn_down: AtomicUsize,
}

impl Gate for PerThreadGate {
    fn expose(&self, _: Mode) -> Result<(), Error> {
        Ok(())
    }
    fn conceal(&self) -> Result<(), Error> {
        Ok(())
    }
    fn shared(&self) -> bool {
        false
    }
    fn epoch(&self) -> u64 {
        1
    }
}

impl PerThreadGate {
    fn enter_read(&self) {
        assert_eq!(self.torn_down.load(SeqCst), 0, "read after teardown");
        self.readers.fetch_add(1, SeqCst);
        assert_eq!(self.writers.load(SeqCst), 0, "a reader beside a writer");
    }
    fn leave_read(&self) {
        self.readers.fetch_sub(1, SeqCst);
    }
    fn enter_write(&self) {
        assert_eq!(self.torn_down.load(SeqCst), 0, "write after teardown");
        assert_eq!(self.writers.fetch_add(1, SeqCst), 0, "two writers");
        assert_eq!(self.readers.load(SeqCst), 0, "a writer beside a reader");
    }
    fn leave_write(&self) {
        self.writers.fetch_sub(1, SeqCst);
    }
    fn teardown(&self) -> Result<(), Error> {
        assert_eq!(self.readers.load(SeqCst), 0, "teardown under a reader");
        assert_eq!(self.writers.load(SeqCst), 0, "teardown under a writer");
        self.torn_down.fetch_add(1, SeqCst);
        Ok(())
    }
}

/// With a per-thread gate the last reader leaves the memory open without the mutex: a writer
/// racing it must still wait for it, and a close racing both must wait for them.
#[test]
fn loom_per_thread_gate_keeps_writers_and_close_out_of_readers() {
    ::loom::model(|| {
        let access = Arc::new(Access::new());
        let gate = Arc::new(PerThreadGate::default());
        let reader = {
            let (access, gate) = (access.clone(), gate.clone());
            thread::spawn(move || {
                for _ in 0..2 {
                    match access.read(&*gate, Entry::Fresh, None) {
                        Ok(held) => {
                            gate.enter_read();
                            gate.leave_read();
                            held.finish().unwrap();
                        }
                        Err(Error::Closed) => return,
                        Err(other) => panic!("unexpected error {other}"),
                    }
                }
            })
        };
        let writer = {
            let (access, gate) = (access.clone(), gate.clone());
            thread::spawn(move || {
                if let Ok(held) = access.write(&*gate) {
                    gate.enter_write();
                    gate.leave_write();
                    held.finish().unwrap();
                }
            })
        };
        access.close(&*gate, || gate.teardown()).unwrap();
        reader.join().unwrap();
        writer.join().unwrap();
        assert_eq!(gate.torn_down.load(SeqCst), 1);
    });
}

/// Memory that opens per thread, as bytes the model checker watches: a read and a write (or the
/// teardown's wipe) not ordered by the protocol is reported as a data race.
#[derive(Default)]
struct WatchedBytes {
    byte: ::loom::cell::UnsafeCell<u8>,
}

impl Gate for WatchedBytes {
    fn expose(&self, _: Mode) -> Result<(), Error> {
        Ok(())
    }
    fn conceal(&self) -> Result<(), Error> {
        Ok(())
    }
    fn shared(&self) -> bool {
        false
    }
    fn epoch(&self) -> u64 {
        1
    }
}

impl WatchedBytes {
    fn read(&self) -> u8 {
        // SAFETY: the protocol under test orders this against every write; the model checker
        // reports it when it does not.
        self.byte.with(|byte| unsafe { *byte })
    }
    fn write(&self, value: u8) {
        // SAFETY: as for `read`.
        self.byte.with_mut(|byte| unsafe { *byte = value })
    }
}

/// Publishes and ends one read on the calling thread, so that the secret's `PUBLISHED` flag is
/// set and later publications rely on the barriers alone (the first one sets the flag with a
/// read-modify-write, which orders it by itself).
fn publish_once(access: &Access, bytes: &WatchedBytes) {
    let line = slots::table().claim(1).expect("a free line");
    let held = access.read(bytes, Entry::Fresh, Some(line)).unwrap();
    bytes.read();
    held.finish().unwrap();
}

/// A reader that publishes in its line (its thread's own), and a writer: each sees the other's
/// bytes whole or not at all. With `flagged`, the secret was published before, so the reader's
/// publication is ordered by the barriers only.
fn published_read_beside_a_write(entry: Entry, flagged: bool) {
    let access = Arc::new(Access::new());
    let bytes = Arc::new(WatchedBytes::default());
    if flagged {
        publish_once(&access, &bytes);
    }
    let reader = {
        let (access, bytes) = (access.clone(), bytes.clone());
        thread::spawn(move || {
            let line = slots::table().claim(1).expect("a free line");
            let held = access.read(&*bytes, entry, Some(line)).unwrap();
            let seen = bytes.read();
            held.finish().unwrap();
            seen
        })
    };
    let held = access.write(&*bytes).unwrap();
    bytes.write(1);
    held.finish().unwrap();
    let seen = reader.join().unwrap();
    assert!(seen <= 1);
    access.close(&*bytes, || Ok(())).unwrap();
}

/// A fresh reader publishing the secret's first read, racing a writer.
#[test]
fn loom_a_first_published_read_and_a_write_exclude_each_other() {
    ::loom::model(|| published_read_beside_a_write(Entry::Fresh, false));
}

/// A fresh reader publishing a later read (ordered by the barriers alone), racing a writer.
#[test]
fn loom_a_published_read_and_a_write_exclude_each_other() {
    ::loom::model(|| published_read_beside_a_write(Entry::Fresh, true));
}

/// A reader that holds another secret passes a waiting writer and publishes; the writer must
/// still find it once it sets `WRITING`.
#[test]
fn loom_a_read_holding_another_secret_slips_past_no_writer() {
    ::loom::model(|| published_read_beside_a_write(Entry::HoldingAnother, true));
}

/// `close` waits for a published read before wiping; a read that starts after it is refused.
fn close_beside_a_published_read(flagged: bool) {
    let access = Arc::new(Access::new());
    let bytes = Arc::new(WatchedBytes::default());
    if flagged {
        publish_once(&access, &bytes);
    }
    let reader = {
        let (access, bytes) = (access.clone(), bytes.clone());
        thread::spawn(move || {
            let line = slots::table().claim(1).expect("a free line");
            if let Ok(held) = access.read(&*bytes, Entry::Fresh, Some(line)) {
                bytes.read();
                held.finish().unwrap();
            }
        })
    };
    access
        .close(&*bytes, || {
            bytes.write(0);
            Ok(())
        })
        .unwrap();
    reader.join().unwrap();
}

#[test]
fn loom_close_waits_for_a_first_published_read() {
    ::loom::model(|| close_beside_a_published_read(false));
}

#[test]
fn loom_close_waits_for_a_published_read() {
    ::loom::model(|| close_beside_a_published_read(true));
}

/// Without the barrier between publishing a read and checking the state word, a reader and a
/// writer can each miss the other (store buffering): the model checker must find them inside
/// together.
#[test]
#[should_panic(expected = "Causality violation")]
fn loom_without_the_publication_fence_a_read_overlaps_a_write() {
    ::loom::model(|| {
        let access = Arc::new(Access::new());
        let bytes = Arc::new(WatchedBytes::default());
        publish_once(&access, &bytes);
        let reader = {
            let (access, bytes) = (access.clone(), bytes.clone());
            thread::spawn(move || {
                let line = slots::table().claim(1).expect("a free line");
                line.publication_fence
                    .store(false, std::sync::atomic::Ordering::Relaxed);
                let held = access.read(&*bytes, Entry::Fresh, Some(line)).unwrap();
                bytes.read();
                held.finish().unwrap();
            })
        };
        let held = access.write(&*bytes).unwrap();
        bytes.write(1);
        held.finish().unwrap();
        reader.join().unwrap();
    });
}
