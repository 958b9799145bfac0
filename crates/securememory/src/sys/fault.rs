//! Test-only fault injection: make the next call of one operation on this thread fail.

use super::Op;
use std::cell::RefCell;
use std::io;

thread_local! {
    static PLANNED: RefCell<Vec<(Op, i32)>> = const { RefCell::new(Vec::new()) };
}

/// Makes the next call of `op` on this thread fail with the OS error `errno`.
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
