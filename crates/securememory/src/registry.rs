//! A process-wide table of weak handles: the live secrets a purge closes.
//!
//! A secret takes a slot when it is made and gives it back when it is dropped; nothing else
//! touches the table, so accesses never see it. The lock is held only to add, clear or copy
//! entries, never while a secret is closed (a close waits for accesses in flight): a purge
//! upgrades the handles under the lock, lets go of it, and closes what it got. A secret dropped
//! meanwhile is closed by whichever of the two comes first (closing is idempotent), and its
//! state is freed when the last strong handle goes.
//!
//! Per secret the table holds one `Option<Weak<T>>` (a pointer: 8 bytes on 64-bit targets)
//! and, once the slot is given back, its index on the free list (4 bytes).

use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

pub(crate) struct Registry<T> {
    slots: Mutex<Slots<T>>,
}

struct Slots<T> {
    entries: Vec<Option<Weak<T>>>,
    /// Slots given back, reused before the table grows.
    free: Vec<u32>,
}

impl<T> Registry<T> {
    pub(crate) const fn new() -> Self {
        Registry {
            slots: Mutex::new(Slots {
                entries: Vec::new(),
                free: Vec::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Slots<T>> {
        // A panic while the lock is held leaves the table consistent (each step is one push,
        // pop or store), so a poisoned lock is taken as it is.
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records `item`; returns the slot to give back with [`remove`](Self::remove).
    pub(crate) fn insert(&self, item: &Arc<T>) -> u32 {
        let handle = Some(Arc::downgrade(item));
        let mut slots = self.lock();
        if let Some(slot) = slots.free.pop() {
            slots.entries[slot as usize] = handle;
            return slot;
        }
        let slot = u32::try_from(slots.entries.len()).expect("fewer than 2^32 live secrets");
        slots.entries.push(handle);
        slot
    }

    /// Gives `slot` back.
    pub(crate) fn remove(&self, slot: u32) {
        let mut slots = self.lock();
        let handle = slots.entries[slot as usize].take();
        slots.free.push(slot);
        drop(slots);
        drop(handle);
    }

    /// The items still alive, in the order of their slots.
    pub(crate) fn live(&self) -> Vec<Arc<T>> {
        self.lock()
            .entries
            .iter()
            .filter_map(|entry| entry.as_ref().and_then(Weak::upgrade))
            .collect()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::Registry;
    use std::sync::Arc;

    #[test]
    fn slots_are_reused_and_dropped_items_are_not_listed() {
        let registry = Registry::new();
        let (a, b) = (Arc::new(1), Arc::new(2));
        let (slot_a, slot_b) = (registry.insert(&a), registry.insert(&b));
        assert_eq!(registry.live(), [a.clone(), b.clone()]);
        registry.remove(slot_a);
        assert_eq!(registry.live(), std::slice::from_ref(&b));
        let c = Arc::new(3);
        assert_eq!(registry.insert(&c), slot_a, "a freed slot is reused");
        drop(b);
        assert_eq!(
            registry.live(),
            [c],
            "a dropped item's handle no longer upgrades"
        );
        registry.remove(slot_b);
    }
}
