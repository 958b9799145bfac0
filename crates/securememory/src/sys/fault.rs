//! Test-only fault injection: make the next call of one operation on this thread fail, and
//! remember the reservations this thread made so a test can check they were given back.

use super::Op;
use std::cell::RefCell;
use std::io;
use std::ptr::NonNull;

thread_local! {
    static PLANNED: RefCell<Vec<(Op, i32)>> = const { RefCell::new(Vec::new()) };
    static RESERVED: RefCell<Vec<(usize, usize)>> = const { RefCell::new(Vec::new()) };
    static AFTER_COMMIT: RefCell<Option<CommitHook>> = const { RefCell::new(None) };
}

type CommitHook = Box<dyn FnOnce(NonNull<u8>, usize)>;

/// Runs `hook` with the data pages right after the next anonymous commit on this thread, before
/// anything else is done to them.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub(crate) fn on_next_commit(hook: impl FnOnce(NonNull<u8>, usize) + 'static) {
    AFTER_COMMIT.with(|h| *h.borrow_mut() = Some(Box::new(hook)));
}

pub(crate) fn after_commit(addr: NonNull<u8>, len: usize) {
    if let Some(hook) = AFTER_COMMIT.with(|h| h.borrow_mut().take()) {
        hook(addr, len);
    }
}

/// Makes the next call of `op` on this thread fail with the OS error `errno`.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))] // The tests that use it are Linux-only.
pub(crate) fn fail_next(op: Op, errno: i32) {
    PLANNED.with(|planned| planned.borrow_mut().push((op, errno)));
}

pub(crate) fn check(op: Op) -> io::Result<()> {
    PLANNED.with(|planned| {
        let mut planned = planned.borrow_mut();
        match planned.iter().position(|(o, _)| *o == op) {
            Some(i) => Err(io::Error::from_raw_os_error(planned.remove(i).1)),
            None => Ok(()),
        }
    })
}

pub(crate) fn record_reservation(addr: NonNull<u8>, len: usize) {
    RESERVED.with(|reserved| reserved.borrow_mut().push((addr.as_ptr() as usize, len)));
}

/// The `(address, length)` of every reservation this thread made since the last call.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub(crate) fn take_reservations() -> Vec<(usize, usize)> {
    RESERVED.with(|reserved| std::mem::take(&mut *reserved.borrow_mut()))
}
