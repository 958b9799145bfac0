//! Unit tests of the access protocol, with a fake gate that records and fails on demand.
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
    fn expose(&self, mode: Mode) -> Result<(), Error> {
        if self.fail_open.get() {
            return Err(Error::os("mprotect", io::Error::from_raw_os_error(12)));
        }
        self.opens.set(self.opens.get() + 1);
        self.open_for.set(Some(mode));
        Ok(())
    }
    fn conceal(&self) -> Result<(), Error> {
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
    fn epoch(&self) -> u64 {
        crate::sys::process_epoch()
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
    fn expose(&self, mode: Mode) -> Result<(), Error> {
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
    fn conceal(&self) -> Result<(), Error> {
        let previous = self.protection.swap(0, Ordering::SeqCst);
        assert!(
            previous == 1 || previous == 2,
            "closed memory that was not open"
        );
        Ok(())
    }
    fn epoch(&self) -> u64 {
        crate::sys::process_epoch()
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
pub(crate) fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
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
    let handle = thread::spawn(
        move || match shared.access.read(&shared.gate, entry, None) {
            Ok(held) => {
                assert_eq!(shared.gate.protection.load(Ordering::SeqCst), 1);
                entered_tx.send(Ok(())).unwrap();
                let _ = leave_rx.recv();
                held.finish().unwrap();
            }
            Err(error) => entered_tx.send(Err(error)).unwrap(),
        },
    );
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
            held.finish().unwrap();
        }
        Err(error) => entered_tx.send(Err(error)).unwrap(),
    });
    (entered_rx, leave_tx, handle)
}

/// Whether a writer is registered as waiting (for tests that must wait until one is).
pub(crate) fn writer_waiting(access: &Access) -> bool {
    access.state() & WRITER_WAITING != 0
}

/// How many readers the state word counts (published reads are not counted).
pub(crate) fn readers_counted(access: &Access) -> usize {
    readers(access.state())
}

fn writers_waiting(access: &Access) -> usize {
    access.waiting.lock().writers
}

pub(crate) fn readers_queued(access: &Access) -> usize {
    access.waiting.lock().queued
}

fn assert_idle(access: &Access) {
    assert_eq!(access.state() & !(OPEN | PUBLISHED), 0);
    let waiting = access.waiting.lock();
    assert_eq!(
        (waiting.writers, waiting.queued, waiting.overdue),
        (0, 0, 0)
    );
}

#[test]
fn first_reader_opens_and_last_reader_closes() {
    let access = Access::new();
    let gate = FakeGate::default();
    let first = access.read(&gate, Entry::Fresh, None).unwrap();
    let second = access.read(&gate, Entry::Fresh, None).unwrap();
    assert_eq!(
        gate.opens.get(),
        1,
        "the second reader joined without opening"
    );
    assert_eq!(readers(access.state()), 2);
    first.finish().unwrap();
    assert_eq!(
        gate.closes.get(),
        0,
        "memory stays open while a reader remains"
    );
    second.finish().unwrap();
    assert_eq!(gate.closes.get(), 1);
    assert_eq!(gate.open_for.get(), None);
    assert_eq!(access.state(), 0);
}

#[test]
fn failed_reprotect_is_returned_remembered_and_retried() {
    let access = Access::new();
    let gate = FakeGate::default();
    gate.fail_close.set(true);
    let held = access.read(&gate, Entry::Fresh, None).unwrap();
    assert!(matches!(held.finish(), Err(Error::Os { .. })));
    assert_eq!(readers(access.state()), 0, "the count is never stuck");
    assert_ne!(access.state() & OPEN, 0, "the failure is remembered");
    gate.fail_close.set(false);
    let held = access.read(&gate, Entry::Fresh, None).unwrap();
    assert_eq!(
        gate.opens.get(),
        1,
        "the still-open memory is joined, not reopened"
    );
    held.finish().unwrap();
    assert_eq!(gate.open_for.get(), None, "the retry closed the memory");
    assert_eq!(access.state(), 0);
}

#[test]
fn failed_reprotect_after_write_is_remembered() {
    let access = Access::new();
    let gate = FakeGate::default();
    gate.fail_close.set(true);
    let held = access.write(&gate).unwrap();
    assert!(held.finish().is_err());
    assert_eq!(access.state() & (WRITING | OPEN), OPEN);
    gate.fail_close.set(false);
    access
        .read(&gate, Entry::Fresh, None)
        .unwrap()
        .finish()
        .unwrap();
    assert_eq!(gate.open_for.get(), None);
    access.close(&gate, || Ok(())).unwrap();
}

/// A writer that fails to make memory writable leaves it as it found it: memory a failed
/// conceal left open is still readable, and the next reader joins it without opening it again.
#[test]
fn failed_write_exposure_leaves_open_memory_open() {
    let access = Access::new();
    let gate = FakeGate::default();
    gate.fail_close.set(true);
    assert!(access
        .read(&gate, Entry::Fresh, None)
        .unwrap()
        .finish()
        .is_err());
    gate.fail_close.set(false);
    gate.fail_open.set(true);
    assert!(access.write(&gate).is_err());
    gate.fail_open.set(false);
    assert_eq!(gate.open_for.get(), Some(Mode::Read));
    let opens = gate.opens.get();
    let held = access.read(&gate, Entry::Fresh, None).unwrap();
    assert_eq!(gate.opens.get(), opens, "the open memory was opened again");
    held.finish().unwrap();
    assert_eq!(gate.open_for.get(), None);
    assert_eq!(access.state(), 0);
}

#[test]
fn failed_open_leaves_no_reader_counted() {
    let access = Access::new();
    let gate = FakeGate::default();
    gate.fail_open.set(true);
    assert!(access.read(&gate, Entry::Fresh, None).is_err());
    assert!(access.write(&gate).is_err());
    assert_eq!(access.state(), 0);
    gate.fail_open.set(false);
    access
        .read(&gate, Entry::Fresh, None)
        .unwrap()
        .finish()
        .unwrap();
}

#[test]
fn close_refuses_new_accesses_and_runs_teardown_once() {
    let access = Access::new();
    let gate = FakeGate::default();
    let teardowns = Cell::new(0);
    access
        .close(&gate, || {
            teardowns.set(teardowns.get() + 1);
            Ok(())
        })
        .unwrap();
    access
        .close(&gate, || panic!("teardown ran twice"))
        .unwrap();
    assert_eq!(teardowns.get(), 1);
    assert!(matches!(
        access.read(&gate, Entry::Fresh, None),
        Err(Error::Closed)
    ));
    assert!(matches!(
        access.read(&gate, Entry::HoldingAnother, None),
        Err(Error::Closed)
    ));
    assert!(matches!(access.write(&gate), Err(Error::Closed)));
    assert_eq!(gate.opens.get(), 0);
}

/// A second `close` arriving while the first one waits for a reader returns only after the
/// first one's teardown: a caller whose `close` returned may rely on the memory being gone.
#[test]
fn a_second_close_returns_only_after_the_first_ones_teardown() {
    let shared = shared();
    let torn_down = Arc::new(AtomicBool::new(false));
    let (reader_in, reader_leave, reader) = spawn_reader(&shared, Entry::Fresh);
    expect_signal(&reader_in, "the reader got in").unwrap();
    let spawn_closer = |teardown: fn(&AtomicBool) -> Result<(), Error>| {
        let shared = Arc::clone(&shared);
        let torn_down = Arc::clone(&torn_down);
        let (returned_tx, returned) = mpsc::channel();
        let closer = thread::spawn(move || {
            let result = shared.access.close(&shared.gate, || teardown(&torn_down));
            returned_tx.send(torn_down.load(Ordering::SeqCst)).unwrap();
            result
        });
        (returned, closer)
    };
    let (first_returned, first) = spawn_closer(|torn_down| {
        torn_down.store(true, Ordering::SeqCst);
        Ok(())
    });
    wait_until("the first close starts", || shared.access.is_closed());
    let (second_returned, second) = spawn_closer(|_| panic!("teardown ran twice"));
    // Neither close can be seen waiting; give the second time to return early if it would.
    let early = second_returned.recv_timeout(Duration::from_millis(200));
    assert!(
        early.is_err(),
        "the second close returned while a reader was inside"
    );
    assert!(
        first_returned.try_recv().is_err(),
        "the first close did not wait"
    );
    reader_leave.send(()).unwrap();
    for (returned, which) in [(first_returned, "first"), (second_returned, "second")] {
        assert!(
            expect_signal(&returned, "a close returned"),
            "the {which} close returned before the teardown"
        );
    }
    first.join().unwrap().unwrap();
    second.join().unwrap().unwrap();
    reader.join().unwrap();
}

#[test]
fn dropping_a_held_access_releases_it() {
    let access = Access::new();
    let gate = FakeGate::default();
    drop(access.read(&gate, Entry::Fresh, None).unwrap());
    assert_eq!(access.state(), 0);
    assert_eq!(gate.open_for.get(), None);
    drop(access.write(&gate).unwrap());
    assert_eq!(access.state(), 0);
}

/// The fast path itself: a reader that finds the memory open joins with no lock and no
/// protection change. Checked by joining while another thread holds the mutex, which a reader
/// on the slow path would wait for.
#[test]
fn readers_join_open_memory_without_taking_the_mutex() {
    for entry in [Entry::Fresh, Entry::HoldingAnother] {
        let shared = shared();
        let (holder_in, holder_leave, holder) = spawn_reader(&shared, Entry::Fresh);
        expect_signal(&holder_in, "the first reader got in").unwrap();
        let (locked_tx, locked_rx) = mpsc::channel();
        let (unlock_tx, unlock_rx) = mpsc::channel::<()>();
        let locker = {
            let shared = Arc::clone(&shared);
            thread::spawn(move || {
                let _waiting = shared.access.waiting.lock();
                locked_tx.send(()).unwrap();
                let _ = unlock_rx.recv();
            })
        };
        expect_signal(&locked_rx, "the mutex is held");
        let (joiner_in, joiner_leave, joiner) = spawn_reader(&shared, entry);
        let joined = joiner_in.recv_timeout(DEADLINE);
        // A reader that is not the last one out leaves without the mutex too.
        let left = joined.is_ok() && {
            drop(joiner_leave);
            let start = Instant::now();
            while !joiner.is_finished() && start.elapsed() < DEADLINE {
                thread::yield_now();
            }
            joiner.is_finished()
        };
        unlock_tx.send(()).unwrap();
        locker.join().unwrap();
        joined
            .unwrap_or_else(|_| panic!("a {entry:?} reader waited for the mutex to join"))
            .unwrap();
        assert!(left, "a {entry:?} reader waited for the mutex to leave");
        assert_eq!(readers(shared.access.state()), 1);
        assert_eq!(shared.gate.opens.load(Ordering::SeqCst), 1, "it joined");
        drop(holder_leave);
        holder.join().unwrap();
        joiner.join().unwrap();
        assert_idle(&shared.access);
    }
}

#[test]
fn nested_read_joins_while_a_read_is_held() {
    let access = Access::new();
    let gate = FakeGate::default();
    let outer = access.read(&gate, Entry::Fresh, None).unwrap();
    let inner = access.read(&gate, Entry::Nested, None).unwrap();
    assert_eq!(gate.opens.get(), 1);
    inner.finish().unwrap();
    assert_eq!(gate.closes.get(), 0);
    outer.finish().unwrap();
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
    assert_eq!(shared.access.waiting.lock().overdue, 0, "the reader is in");

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
        let mut waiting = shared.access.waiting.lock();
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
            let outer = first.access.read(&first.gate, Entry::Fresh, None).unwrap();
            report_tx.send(true).unwrap();
            if step_rx.recv().is_err() {
                return;
            }
            let inner = second
                .access
                .read(&second.gate, Entry::HoldingAnother, None);
            report_tx.send(inner.is_ok()).unwrap();
            let _ = step_rx.recv();
            inner.unwrap().finish().unwrap();
            outer.finish().unwrap();
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
    let held = access.read(&gate, Entry::Fresh, None).unwrap();
    let before = access.state();
    assert!(access.close_in_forked_child(), "the first call tears down");
    assert!(!access.close_in_forked_child(), "later calls do not");
    assert!(!access.close_in_forked_child());
    assert!(access.is_closed());
    assert_eq!(access.state(), before | CLOSED | RELEASED);
    access.close(&gate, || panic!("torn down twice")).unwrap();
    // In the child the read belongs to the parent's memory: ending it touches nothing.
    gate.inherited.set(true);
    assert!(matches!(held.finish(), Err(Error::Forked)));
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
            let _waiting = shared.access.waiting.lock();
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
            let later_close = shared
                .access
                .close(&shared.gate, || panic!("torn down twice"));
            closed_tx
                .send((first, second, later_close.is_ok()))
                .unwrap();
        });
    }
    let (first, second, later_close) = expect_signal(&closed_rx, "close_in_forked_child returned");
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
                Mode::Read => access.read(&gate, Entry::Fresh, None).unwrap(),
                Mode::Write => access.write(&gate).unwrap(),
            };
            let state = access.state();
            gate.inherited.set(true);
            if by_release {
                assert!(matches!(held.finish(), Err(Error::Forked)));
            } else {
                drop(held);
            }
            let case = format!("{mode:?}, by release: {by_release}");
            assert_eq!(access.state(), state, "{case}: the state changed");
            assert_eq!(gate.closes.get(), 0, "{case}: the memory was closed");
            assert_eq!(gate.open_for.get(), Some(mode));
            assert!(
                access.waiting.try_lock().is_some(),
                "{case}: mutex left locked"
            );
        }
    }
}

/// A gate that opens per thread (protection keys): nothing to expose or conceal for everyone, so
/// readers publish in their threads' lines instead of counting themselves in the state word.
#[derive(Default)]
struct PerThreadGate {
    torn_down: AtomicBool,
    fail_next_open: AtomicBool,
}

impl Gate for PerThreadGate {
    fn expose(&self, _: Mode) -> Result<(), Error> {
        assert!(
            !self.torn_down.load(Ordering::SeqCst),
            "opened after teardown"
        );
        if self.fail_next_open.swap(false, Ordering::SeqCst) {
            return Err(Error::os("pkey_mprotect", io::Error::from_raw_os_error(12)));
        }
        Ok(())
    }
    fn conceal(&self) -> Result<(), Error> {
        Ok(())
    }
    fn shared(&self) -> bool {
        false
    }
    fn epoch(&self) -> u64 {
        crate::sys::process_epoch()
    }
}

struct PerThread {
    access: Access,
    gate: PerThreadGate,
}

fn per_thread() -> Arc<PerThread> {
    Arc::new(PerThread {
        access: Access::new(),
        gate: PerThreadGate::default(),
    })
}

/// Whether some thread has a read of `access` published.
pub(crate) fn published(access: &Access) -> bool {
    slots::table().published(access.address(), crate::sys::process_epoch())
}

/// Starts a thread that reads with `entry` through its own line, reports whether it got in and
/// whether the read was published (rather than counted), then holds it until `leave` is sent.
fn spawn_line_reader(
    shared: &Arc<PerThread>,
    entry: Entry,
) -> (
    mpsc::Receiver<Result<bool, Error>>,
    mpsc::Sender<()>,
    thread::JoinHandle<()>,
) {
    let (entered_tx, entered_rx) = mpsc::channel();
    let (leave_tx, leave_rx) = mpsc::channel::<()>();
    let shared = Arc::clone(shared);
    let handle = thread::spawn(move || {
        let line = this_threads_line(shared.gate.epoch());
        assert!(line.is_some(), "no reader line for a new thread");
        match shared.access.read(&shared.gate, entry, line) {
            Ok(held) => {
                assert!(!shared.gate.torn_down.load(Ordering::SeqCst));
                let counted = readers(shared.access.state()) > 0;
                entered_tx.send(Ok(!counted)).unwrap();
                let _ = leave_rx.recv();
                held.finish().unwrap();
            }
            Err(error) => entered_tx.send(Err(error)).unwrap(),
        }
    });
    (entered_rx, leave_tx, handle)
}

fn spawn_per_thread_writer(
    shared: &Arc<PerThread>,
) -> (mpsc::Receiver<()>, mpsc::Sender<()>, thread::JoinHandle<()>) {
    let (entered_tx, entered_rx) = mpsc::channel();
    let (leave_tx, leave_rx) = mpsc::channel::<()>();
    let shared = Arc::clone(shared);
    let handle = thread::spawn(move || {
        let held = shared.access.write(&shared.gate).unwrap();
        assert!(
            !published(&shared.access),
            "a writer beside a published reader"
        );
        entered_tx.send(()).unwrap();
        let _ = leave_rx.recv();
        held.finish().unwrap();
    });
    (entered_rx, leave_tx, handle)
}

/// Where memory opens per thread, a reader counted in the state word (it had no line) leaves
/// the memory open for the next one when it is the last out: there is nothing to conceal.
/// With a writer waiting it wakes the writer instead.
#[test]
fn the_last_counted_reader_leaves_per_thread_memory_open_unless_a_writer_waits() {
    let shared = per_thread();
    let held = shared
        .access
        .read(&shared.gate, Entry::Fresh, None)
        .unwrap();
    assert_eq!(readers(shared.access.state()), 1);
    held.finish().unwrap();
    assert_eq!(shared.access.state(), OPEN, "the memory was not left open");

    let (entered_tx, entered) = mpsc::channel();
    let (leave_tx, leave) = mpsc::channel::<()>();
    let reader = {
        let shared = Arc::clone(&shared);
        thread::spawn(move || {
            let held = shared
                .access
                .read(&shared.gate, Entry::Fresh, None)
                .unwrap();
            entered_tx.send(()).unwrap();
            let _ = leave.recv();
            held.finish().unwrap();
        })
    };
    expect_signal(&entered, "the counted reader got in");
    let (writer_in, writer_leave, writer) = spawn_per_thread_writer(&shared);
    wait_until("the writer waits", || writers_waiting(&shared.access) == 1);
    leave_tx.send(()).unwrap();
    expect_signal(&writer_in, "the writer was woken by the last reader out");
    writer_leave.send(()).unwrap();
    for thread in [reader, writer] {
        thread.join().unwrap();
    }
    assert_idle(&shared.access);
}

/// Where memory opens per thread, a writer refused by the gate leaves no flag behind: the next
/// writer and reader get in.
#[test]
fn a_refused_per_thread_writer_leaves_the_way_free() {
    let shared = per_thread();
    shared.gate.fail_next_open.store(true, Ordering::SeqCst);
    assert!(matches!(
        shared.access.write(&shared.gate),
        Err(Error::Os { .. })
    ));
    assert_idle(&shared.access);
    let (writer_in, writer_leave, writer) = spawn_per_thread_writer(&shared);
    expect_signal(&writer_in, "the next writer got in");
    writer_leave.send(()).unwrap();
    writer.join().unwrap();
    let (reader_in, reader_leave, reader) = spawn_line_reader(&shared, Entry::Fresh);
    assert!(expect_signal(&reader_in, "the next reader got in").unwrap());
    reader_leave.send(()).unwrap();
    reader.join().unwrap();
    assert_idle(&shared.access);
}

/// Only the first publication of a secret writes its state word (to set `PUBLISHED`); every
/// later read, nested ones included, leaves it untouched.
#[test]
fn published_reads_write_the_state_word_once_per_secret() {
    let shared = per_thread();
    let line = this_threads_line(shared.gate.epoch());
    let first = shared
        .access
        .read(&shared.gate, Entry::Fresh, line)
        .unwrap();
    assert_eq!(shared.access.state(), PUBLISHED);
    first.finish().unwrap();
    let outer = shared
        .access
        .read(&shared.gate, Entry::Fresh, line)
        .unwrap();
    assert_eq!(
        shared.access.state(),
        PUBLISHED,
        "a read wrote the state word"
    );
    assert!(published(&shared.access));
    let inner = shared
        .access
        .read(&shared.gate, Entry::Nested, line)
        .unwrap();
    assert_eq!(shared.access.state(), PUBLISHED, "a nested read wrote it");
    inner.finish().unwrap();
    assert!(
        published(&shared.access),
        "the nested read ended the outer one"
    );
    outer.finish().unwrap();
    assert!(!published(&shared.access));
    assert_eq!(shared.access.state(), PUBLISHED);
}

/// Writers and `close` of a secret that no reader ever published skip the scan of every
/// thread's line, and the barrier on every thread before it (a system call that interrupts them
/// all).
#[test]
fn writers_and_close_look_for_published_readers_only_after_a_publication() {
    let never_read = per_thread();
    let before = slots::publications_seen_by_this_thread();
    never_read
        .access
        .write(&never_read.gate)
        .unwrap()
        .finish()
        .unwrap();
    never_read
        .access
        .close(&never_read.gate, || Ok(()))
        .unwrap();
    assert_eq!(slots::publications_seen_by_this_thread(), before);

    let read = per_thread();
    let line = this_threads_line(read.gate.epoch());
    let held = read.access.read(&read.gate, Entry::Fresh, line).unwrap();
    held.finish().unwrap();
    read.access.write(&read.gate).unwrap().finish().unwrap();
    assert!(slots::publications_seen_by_this_thread() > before);
}

/// A published read begins and ends without the mutex while no writer or closer waits: it
/// writes nothing but its own line.
#[test]
fn published_reads_begin_and_end_without_taking_the_mutex() {
    let shared = per_thread();
    let (locked_tx, locked_rx) = mpsc::channel();
    let (unlock_tx, unlock_rx) = mpsc::channel::<()>();
    let locker = {
        let shared = Arc::clone(&shared);
        thread::spawn(move || {
            let _waiting = shared.access.waiting.lock();
            locked_tx.send(()).unwrap();
            let _ = unlock_rx.recv();
        })
    };
    expect_signal(&locked_rx, "the mutex is held");
    let (done_tx, done_rx) = mpsc::channel();
    let reader = {
        let shared = Arc::clone(&shared);
        thread::spawn(move || {
            let line = this_threads_line(shared.gate.epoch());
            for _ in 0..2 {
                let held = shared
                    .access
                    .read(&shared.gate, Entry::Fresh, line)
                    .unwrap();
                held.finish().unwrap();
            }
            done_tx.send(()).unwrap();
        })
    };
    let done = done_rx.recv_timeout(DEADLINE);
    unlock_tx.send(()).unwrap();
    locker.join().unwrap();
    reader.join().unwrap();
    done.expect("a published read waited for the mutex");
}

/// A published read names its own secret: a writer of another secret does not wait for it, and
/// that other secret does not count as read.
#[test]
fn a_writer_passes_published_readers_of_other_secrets() {
    let (read, written) = (per_thread(), per_thread());
    let (reader_in, reader_leave, reader) = spawn_line_reader(&read, Entry::Fresh);
    assert!(expect_signal(&reader_in, "the reader got in").unwrap());
    assert!(published(&read.access));
    assert!(
        !published(&written.access),
        "a read of one secret was taken for a read of another"
    );
    let (writer_in, writer_leave, writer) = spawn_per_thread_writer(&written);
    let got_in = writer_in.recv_timeout(DEADLINE);
    reader_leave.send(()).unwrap();
    reader.join().unwrap();
    got_in.expect("a writer waited for a reader of another secret");
    writer_leave.send(()).unwrap();
    writer.join().unwrap();
    assert_idle(&written.access);
}

#[test]
fn a_writer_waits_for_published_readers_and_fresh_readers_queue_behind_it() {
    let shared = per_thread();
    let (early_in, early_leave, early) = spawn_line_reader(&shared, Entry::Fresh);
    assert!(expect_signal(&early_in, "the early reader got in").unwrap());
    let (writer_in, writer_leave, writer) = spawn_per_thread_writer(&shared);
    wait_until("the writer waits", || writers_waiting(&shared.access) == 1);
    let (late_in, late_leave, late) = spawn_line_reader(&shared, Entry::Fresh);
    wait_until("the late reader queues behind the writer", || {
        readers_queued(&shared.access) == 1
    });
    assert!(writer_in.try_recv().is_err(), "the writer passed a reader");

    early_leave.send(()).unwrap();
    expect_signal(&writer_in, "the writer got in");
    assert!(late_in.try_recv().is_err(), "a reader passed the writer");
    writer_leave.send(()).unwrap();
    // Queued on the slow path, the late reader is counted rather than published.
    assert!(!expect_signal(&late_in, "the late reader got in").unwrap());
    late_leave.send(()).unwrap();
    for thread in [early, writer, late] {
        thread.join().unwrap();
    }
    assert_idle(&shared.access);
    assert!(!published(&shared.access));
}

#[test]
fn a_reader_holding_another_secret_publishes_past_a_waiting_writer() {
    let shared = per_thread();
    let (first_in, first_leave, first) = spawn_line_reader(&shared, Entry::Fresh);
    assert!(expect_signal(&first_in, "the first reader got in").unwrap());
    let (writer_in, writer_leave, writer) = spawn_per_thread_writer(&shared);
    let started = Instant::now();
    while writers_waiting(&shared.access) != 1 {
        assert!(
            started.elapsed() < DEADLINE,
            "timed out waiting until the writer waits: state {:#b}, writer finished {}, \
             writer in {:?}, reader published {}",
            shared.access.state(),
            writer.is_finished(),
            writer_in.try_recv(),
            published(&shared.access),
        );
        thread::yield_now();
    }
    let (other_in, other_leave, other) = spawn_line_reader(&shared, Entry::HoldingAnother);
    assert!(expect_signal(&other_in, "the reader holding another got in").unwrap());
    first_leave.send(()).unwrap();
    first.join().unwrap();
    assert!(writer_in.try_recv().is_err(), "the writer passed a reader");
    other_leave.send(()).unwrap();
    expect_signal(&writer_in, "the writer got in");
    writer_leave.send(()).unwrap();
    for thread in [writer, other] {
        thread.join().unwrap();
    }
    assert_idle(&shared.access);
}

#[test]
fn close_waits_for_a_published_reader_and_refuses_new_ones() {
    let shared = per_thread();
    let (reader_in, reader_leave, reader) = spawn_line_reader(&shared, Entry::Fresh);
    assert!(expect_signal(&reader_in, "the reader got in").unwrap());
    let (closed_tx, closed_rx) = mpsc::channel();
    let closer = {
        let shared = Arc::clone(&shared);
        thread::spawn(move || {
            let result = shared.access.close(&shared.gate, || {
                shared.gate.torn_down.store(true, Ordering::SeqCst);
                Ok(())
            });
            closed_tx.send(result).unwrap();
        })
    };
    wait_until("close starts", || shared.access.is_closed());
    for entry in [Entry::Fresh, Entry::HoldingAnother] {
        let (late_in, late_leave, late) = spawn_line_reader(&shared, entry);
        let answer = expect_signal(&late_in, "the late reader was answered");
        drop(late_leave);
        late.join().unwrap();
        assert!(
            matches!(answer, Err(Error::Closed)),
            "{entry:?}: {answer:?}"
        );
    }
    assert!(closed_rx.try_recv().is_err(), "close did not wait");
    assert!(!shared.gate.torn_down.load(Ordering::SeqCst));
    reader_leave.send(()).unwrap();
    expect_signal(&closed_rx, "close returned").unwrap();
    assert!(shared.gate.torn_down.load(Ordering::SeqCst));
    for thread in [reader, closer] {
        thread.join().unwrap();
    }
    assert!(!published(&shared.access));
}

/// Under page protection too, a reader arriving while `close` waits for the readers inside is
/// refused, even one that holds another secret's access (which passes a waiting writer) and
/// finds the memory open.
#[test]
fn close_refuses_readers_arriving_while_it_waits_whatever_they_hold() {
    let shared = shared();
    let (holder_in, holder_leave, holder) = spawn_reader(&shared, Entry::Fresh);
    expect_signal(&holder_in, "the first reader got in").unwrap();
    let (closed_tx, closed_rx) = mpsc::channel();
    let closer = {
        let shared = Arc::clone(&shared);
        thread::spawn(move || {
            let result = shared.access.close(&shared.gate, || Ok(()));
            closed_tx.send(result).unwrap();
        })
    };
    wait_until("close starts", || shared.access.is_closed());
    for entry in [Entry::Fresh, Entry::HoldingAnother] {
        let (late_in, late_leave, late) = spawn_reader(&shared, entry);
        let answer = expect_signal(&late_in, "the late reader was answered");
        drop(late_leave);
        late.join().unwrap();
        assert!(
            matches!(answer, Err(Error::Closed)),
            "{entry:?}: {answer:?}"
        );
    }
    assert!(closed_rx.try_recv().is_err(), "close did not wait");
    holder_leave.send(()).unwrap();
    expect_signal(&closed_rx, "close returned").unwrap();
    for thread in [holder, closer] {
        thread.join().unwrap();
    }
}

/// Where memory opens per thread, a reader arriving during a write waits for it, whatever it
/// holds: there is no `OPEN` to keep it out, only the writer's flag.
#[test]
fn published_readers_wait_for_a_write_in_progress() {
    for entry in [Entry::Fresh, Entry::HoldingAnother] {
        let shared = per_thread();
        let (writer_in, writer_leave, writer) = spawn_per_thread_writer(&shared);
        expect_signal(&writer_in, "the writer got in");
        let (reader_in, reader_leave, reader) = spawn_line_reader(&shared, entry);
        wait_until("the reader queues behind the write", || {
            readers_queued(&shared.access) == 1
        });
        assert!(
            reader_in.try_recv().is_err(),
            "{entry:?}: got in during a write"
        );
        writer_leave.send(()).unwrap();
        expect_signal(&reader_in, "the reader got in").unwrap();
        reader_leave.send(()).unwrap();
        for thread in [writer, reader] {
            thread.join().unwrap();
        }
        assert_idle(&shared.access);
    }
}

/// A shared gate whose exposure for writing first lets a test run something (another thread's
/// attempt to join) and waits for it: the window between a writer's check for readers and the
/// flag that keeps them out.
struct RacingGate {
    during_write_exposure: std::sync::Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl Gate for RacingGate {
    fn expose(&self, mode: Mode) -> Result<(), Error> {
        if mode == Mode::Write {
            if let Some(race) = self.during_write_exposure.lock().unwrap().take() {
                race();
            }
        }
        Ok(())
    }
    fn conceal(&self) -> Result<(), Error> {
        Ok(())
    }
    fn epoch(&self) -> u64 {
        crate::sys::process_epoch()
    }
}

/// Memory left open with no reader counted (here by a failed conceal) and a writer getting in:
/// a reader holding another secret, which passes `WRITER_WAITING` on the fast path, must not
/// join while the writer makes the memory writable; it waits for the write instead.
#[test]
fn a_writer_getting_in_shuts_out_fast_joiners_before_exposing() {
    struct Racing {
        access: Access,
        gate: RacingGate,
    }
    let shared = Arc::new(Racing {
        access: Access::new(),
        gate: RacingGate {
            during_write_exposure: std::sync::Mutex::new(None),
        },
    });
    // OPEN with no reader: what a conceal that failed leaves.
    shared.access.state.store(OPEN, Ordering::SeqCst);
    let (joined_tx, joined_rx) = mpsc::channel();
    let racer = Arc::clone(&shared);
    *shared.gate.during_write_exposure.lock().unwrap() = Some(Box::new(move || {
        let reader = thread::spawn(move || {
            let held = racer
                .access
                .read(&racer.gate, Entry::HoldingAnother, None)
                .unwrap();
            joined_tx.send(readers(racer.access.state())).unwrap();
            held.finish().unwrap();
        });
        // Either the reader joined already (the bug) or it waits for the mutex this writer holds.
        let joined_early = (0..200).any(|_| {
            thread::sleep(Duration::from_millis(1));
            reader.is_finished()
        });
        assert!(
            !joined_early,
            "a reader joined memory a writer was exposing"
        );
    }));
    let held = shared.access.write(&shared.gate).unwrap();
    assert_eq!(
        readers(shared.access.state()),
        0,
        "a reader counted beside the writer"
    );
    held.finish().unwrap();
    let readers_with_it = expect_signal(&joined_rx, "the reader got in after the write");
    assert_eq!(readers_with_it, 1);
}
