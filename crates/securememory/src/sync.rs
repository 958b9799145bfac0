//! The few synchronisation primitives `access` needs: the standard library's in normal builds
//! (futex-based on Linux), `loom`'s when the protocol is model-checked
//! (`RUSTFLAGS="--cfg loom"`), behind one small interface so that `access` reads the same in both.
//!
//! Poisoning is ignored: the mutex guards counters that every holder leaves consistent before
//! anything that can panic (callbacks run outside it), so a panic elsewhere leaves nothing torn.

#[cfg(loom)]
use loom::sync as base;
#[cfg(not(loom))]
use std::sync as base;

pub(crate) use base::atomic::{AtomicUsize, Ordering};

use std::ops::{Deref, DerefMut};
use std::sync::PoisonError;

pub(crate) struct Mutex<T>(base::Mutex<T>);

/// A held [`Mutex`]. The inner guard is only ever absent while [`Condvar::wait`] has handed it
/// to the condition variable.
pub(crate) struct MutexGuard<'a, T>(Option<base::MutexGuard<'a, T>>);

pub(crate) struct Condvar(base::Condvar);

impl<T> Mutex<T> {
    pub(crate) fn new(value: T) -> Self {
        Mutex(base::Mutex::new(value))
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
        MutexGuard(Some(self.0.lock().unwrap_or_else(PoisonError::into_inner)))
    }

    /// The guard when the mutex is free right now.
    #[cfg(all(test, not(loom)))]
    pub(crate) fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
        match self.0.try_lock() {
            Ok(guard) => Some(MutexGuard(Some(guard))),
            Err(std::sync::TryLockError::Poisoned(poisoned)) => {
                Some(MutexGuard(Some(poisoned.into_inner())))
            }
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }
}

impl<T> Deref for MutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.0
            .as_ref()
            .expect("guard present outside Condvar::wait")
    }
}

impl<T> DerefMut for MutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        self.0
            .as_mut()
            .expect("guard present outside Condvar::wait")
    }
}

impl Condvar {
    pub(crate) fn new() -> Self {
        Condvar(base::Condvar::new())
    }

    /// Releases `guard`'s mutex, sleeps until notified (or spuriously), and takes it again.
    pub(crate) fn wait<T>(&self, guard: &mut MutexGuard<'_, T>) {
        let inner = guard.0.take().expect("guard present outside Condvar::wait");
        guard.0 = Some(self.0.wait(inner).unwrap_or_else(PoisonError::into_inner));
    }

    pub(crate) fn notify_all(&self) {
        self.0.notify_all();
    }
}
