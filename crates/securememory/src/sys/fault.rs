//! Test-only fault injection: make the next call of one operation on this thread fail, and
//! remember the reservations this thread made so a test can check they were given back. A
//! backend may also record its OS calls in a per-thread trace, for tests of their order.
//!
//! The library's calls reach these locals with `try_with`: a thread's scratch areas are unmapped
//! by a destructor of its own locals, when these may already be gone (nothing is planned then).

use super::Op;
use std::cell::RefCell;
use std::io;
use std::ptr::NonNull;

thread_local! {
    static PLANNED: RefCell<Vec<(Op, i32)>> = const { RefCell::new(Vec::new()) };
    static RESERVED: RefCell<Vec<(usize, usize)>> = const { RefCell::new(Vec::new()) };
    static AFTER_COMMIT: RefCell<Option<CommitHook>> = const { RefCell::new(None) };
    static TRACE: RefCell<Option<Vec<Call>>> = const { RefCell::new(None) };
}

type CommitHook = Box<dyn FnOnce(NonNull<u8>, usize)>;

/// Runs `hook` with the data pages right after the next anonymous commit on this thread, before
/// anything else is done to them.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub(crate) fn on_next_commit(hook: impl FnOnce(NonNull<u8>, usize) + 'static) {
    AFTER_COMMIT.with(|h| *h.borrow_mut() = Some(Box::new(hook)));
}

pub(crate) fn after_commit(addr: NonNull<u8>, len: usize) {
    if let Some(hook) = AFTER_COMMIT
        .try_with(|h| h.borrow_mut().take())
        .ok()
        .flatten()
    {
        hook(addr, len);
    }
}

/// Makes the next call of `op` on this thread fail with the OS error `errno`.
#[cfg_attr(not(any(target_os = "linux", windows)), allow(dead_code))] // No tests elsewhere use it.
pub(crate) fn fail_next(op: Op, errno: i32) {
    PLANNED.with(|planned| planned.borrow_mut().push((op, errno)));
}

/// The failures planned on this thread that no call has met yet, which are forgotten.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub(crate) fn take_planned() -> Vec<Op> {
    PLANNED.with(|planned| planned.borrow_mut().drain(..).map(|(op, _)| op).collect())
}

pub(crate) fn check(op: Op) -> io::Result<()> {
    PLANNED
        .try_with(|planned| {
            let mut planned = planned.borrow_mut();
            match planned.iter().position(|(o, _)| *o == op) {
                Some(i) => Err(io::Error::from_raw_os_error(planned.remove(i).1)),
                None => Ok(()),
            }
        })
        .unwrap_or(Ok(()))
}

pub(crate) fn record_reservation(addr: NonNull<u8>, len: usize) {
    let _ = RESERVED.try_with(|reserved| reserved.borrow_mut().push((addr.as_ptr() as usize, len)));
}

/// The `(address, length)` of every reservation this thread made since the last call.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub(crate) fn take_reservations() -> Vec<(usize, usize)> {
    RESERVED.with(|reserved| std::mem::take(&mut *reserved.borrow_mut()))
}

/// One OS call recorded in this thread's trace.
#[cfg_attr(not(windows), allow(dead_code))] // Only the Windows backend records its calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Call {
    /// The call, with the argument that says what it does where one does
    /// (`VirtualProtect(PAGE_NOACCESS)`).
    pub(crate) name: &'static str,
    /// The two numbers it was given or gave back that matter: the address and length of a
    /// range, or the minimum and maximum of a working set.
    pub(crate) args: (usize, usize),
    /// The OS error it failed with (an injected one included); `None` when it succeeded.
    pub(crate) error: Option<i32>,
}

/// Starts recording the OS calls this thread makes, dropping any earlier record.
#[cfg_attr(not(windows), allow(dead_code))]
pub(crate) fn start_trace() {
    TRACE.with(|trace| *trace.borrow_mut() = Some(Vec::new()));
}

/// The calls recorded since [`start_trace`]; recording stops.
#[cfg_attr(not(windows), allow(dead_code))]
pub(crate) fn take_trace() -> Vec<Call> {
    TRACE.with(|trace| trace.borrow_mut().take().unwrap_or_default())
}

/// Records one OS call and its outcome, while this thread's trace is on.
#[cfg_attr(not(windows), allow(dead_code))]
pub(crate) fn record_call<T>(name: &'static str, args: (usize, usize), result: &io::Result<T>) {
    let _ = TRACE.try_with(|trace| {
        if let Some(calls) = trace.borrow_mut().as_mut() {
            let error = result
                .as_ref()
                .err()
                .map(|e| e.raw_os_error().unwrap_or(-1));
            calls.push(Call { name, args, error });
        }
    });
}
