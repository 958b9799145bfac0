//! An access to a warm secret makes no heap allocation, under page protection with each backing,
//! under protection keys (where the CPU has them) and sealed (the plaintext goes to the thread's
//! scratch area, made by its first access, and a write seals into the allocation it has).
//!
//! A counting global allocator wraps the system one; it counts per thread, and only on a thread
//! that has switched counting on, so other tests and the harness's threads cannot disturb it.

use securememory::{Backing, ProtectedMemorySecretFactory, Strategy};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::hint::black_box;

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn count() {
    if COUNTING.try_with(Cell::get).unwrap_or(false) {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
    }
}

// SAFETY: every call forwards to the system allocator unchanged; counting allocates nothing.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: forwarded from the caller.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: forwarded from the caller.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: forwarded from the caller.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded from the caller.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made on this thread while `work` runs.
fn allocations_during(work: impl FnOnce()) -> usize {
    ALLOCATIONS.with(|n| n.set(0));
    COUNTING.with(|c| c.set(true));
    work();
    COUNTING.with(|c| c.set(false));
    ALLOCATIONS.with(Cell::get)
}

/// The factories measured: page protection with each backing, protection keys with the default
/// backing where this machine has them, and sealing with the default backing.
fn factories() -> Vec<(String, ProtectedMemorySecretFactory)> {
    let mut backings = vec![Backing::Anonymous];
    if securememory_bench_secretmem() {
        backings.push(Backing::SecretMem);
    }
    let mut all: Vec<_> = backings
        .into_iter()
        .map(|backing| {
            let factory = ProtectedMemorySecretFactory::builder()
                .backing(backing)
                .strategy(Strategy::PageProtection)
                .build();
            (format!("PageProtection, {backing:?}"), factory)
        })
        .collect();
    match securememory::system::check_protection_keys() {
        Ok(()) => all.push((
            "ProtectionKey".to_string(),
            ProtectedMemorySecretFactory::builder()
                .strategy(Strategy::ProtectionKey)
                .build(),
        )),
        Err(reason) => eprintln!("skipped: ProtectionKey: {reason}"),
    }
    all.push((
        "Sealed".to_string(),
        ProtectedMemorySecretFactory::builder()
            .strategy(Strategy::Sealed)
            .build(),
    ));
    all
}

fn securememory_bench_secretmem() -> bool {
    #[cfg(target_os = "linux")]
    {
        securememory_bench::raw::secretmem_available()
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

#[test]
fn the_counter_sees_allocations() {
    let n = allocations_during(|| drop(black_box(vec![1u8; 32])));
    assert_eq!(n, 1);
}

#[test]
fn ten_thousand_accesses_to_a_warm_secret_allocate_nothing() {
    for (name, factory) in factories() {
        let secret = factory.create_random(32).expect("a secret");
        // Warm up: thread-locals, lazily initialised statics, the first protection change, the
        // thread's scratch area.
        secret.with_bytes(|b| black_box(b[0])).expect("with_bytes");
        secret
            .with_bytes_mut(|b| black_box(b[0]))
            .expect("with_bytes_mut");
        let n = allocations_during(|| {
            for _ in 0..10_000 {
                let sum = secret
                    .with_bytes(|bytes| bytes.iter().fold(0u8, |a, &b| a ^ b))
                    .expect("with_bytes");
                black_box(sum);
            }
        });
        assert_eq!(n, 0, "{name}: {n} allocations in 10,000 accesses");
        let n = allocations_during(|| {
            for _ in 0..10_000 {
                secret
                    .with_bytes_mut(|bytes| bytes[0] ^= 1)
                    .expect("with_bytes_mut");
            }
        });
        assert_eq!(n, 0, "{name}: {n} allocations in 10,000 write accesses");
        secret.close().expect("close");
    }
}
