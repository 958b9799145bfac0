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

pub(crate) use base::atomic::{fence, AtomicU64, AtomicUsize, Ordering};

use std::ops::{Deref, DerefMut};
use std::sync::PoisonError;
use std::time::Duration;

pub(crate) struct Mutex<T>(base::Mutex<T>);

/// A held [`Mutex`]. The inner guard is only ever absent while [`Condvar::wait`] has handed it
/// to the condition variable.
pub(crate) struct MutexGuard<'a, T>(Option<base::MutexGuard<'a, T>>);

/// A condition variable that makes no system call to notify when no one waits: the standard
/// library's wakes its futex on every `notify_all`, which would add a system call to every
/// access that ends. Notify only while holding the mutex the waiters wait with, so that a waiter
/// is either counted or has not yet checked its condition.
pub(crate) struct Condvar {
    inner: base::Condvar,
    /// Threads inside [`Condvar::wait`]; changed and read only with the mutex held.
    waiters: AtomicUsize,
}

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
        Condvar {
            inner: base::Condvar::new(),
            waiters: AtomicUsize::new(0),
        }
    }

    /// Releases `guard`'s mutex, sleeps until notified (or spuriously), and takes it again.
    pub(crate) fn wait<T>(&self, guard: &mut MutexGuard<'_, T>) {
        // Relaxed: the mutex (held here, and by every notifier) orders the count.
        self.waiters.fetch_add(1, Ordering::Relaxed);
        let inner = guard.0.take().expect("guard present outside Condvar::wait");
        guard.0 = Some(
            self.inner
                .wait(inner)
                .unwrap_or_else(PoisonError::into_inner),
        );
        self.waiters.fetch_sub(1, Ordering::Relaxed);
    }

    /// As [`wait`](Self::wait), but wakes after `timeout` at the latest (the model checker's
    /// condition variable never times out: it explores the notified wake-ups only).
    pub(crate) fn wait_timeout<T>(&self, guard: &mut MutexGuard<'_, T>, timeout: Duration) {
        // Relaxed: see `wait`.
        self.waiters.fetch_add(1, Ordering::Relaxed);
        let inner = guard.0.take().expect("guard present outside Condvar::wait");
        let (inner, _) = self
            .inner
            .wait_timeout(inner, timeout)
            .unwrap_or_else(PoisonError::into_inner);
        guard.0 = Some(inner);
        self.waiters.fetch_sub(1, Ordering::Relaxed);
    }

    /// Wakes every waiter. Call it with the waiters' mutex held.
    pub(crate) fn notify_all(&self) {
        // Relaxed: see `wait`.
        if self.waiters.load(Ordering::Relaxed) > 0 {
            self.inner.notify_all();
        }
    }
}

/// The cheap side of an asymmetric fence: orders this thread's earlier stores before its later
/// loads as far as a thread calling [`barrier_all_threads`] is concerned. Costs nothing at run
/// time (the heavy side makes the CPU fence); the model checker, which knows no such system
/// call, sees a full fence on both sides.
#[inline]
pub(crate) fn light_barrier() {
    #[cfg(not(loom))]
    std::sync::atomic::compiler_fence(Ordering::SeqCst);
    #[cfg(loom)]
    fence(Ordering::SeqCst);
}

/// The expensive side: makes every running thread of the process pass a full fence
/// (`membarrier(2)`), so their stores before a [`light_barrier`] are visible after this returns,
/// and their loads after it see what this thread stored before. `false` where the OS cannot.
pub(crate) fn barrier_all_threads() -> bool {
    #[cfg(not(loom))]
    {
        crate::sys::barrier_all_threads()
    }
    #[cfg(loom)]
    {
        fence(Ordering::SeqCst);
        true
    }
}
