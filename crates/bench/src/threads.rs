//! Threads around a measurement: a busy sibling, and aggregate timing of parallel workers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

fn current_affinity() -> Option<libc::cpu_set_t> {
    // SAFETY: an all-zero cpu_set_t is a valid empty set; the call fills it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid out-pointer of the size given.
    let ret = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
    (ret == 0).then_some(set)
}

fn set_affinity(set: &libc::cpu_set_t) -> bool {
    // SAFETY: `set` is a valid cpu_set_t of the size given.
    unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(set), set) == 0 }
}

fn only(cpu: usize) -> libc::cpu_set_t {
    // SAFETY: an all-zero cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` is below CPU_SETSIZE for any CPU the kernel reports; CPU_SET checks it.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    set
}

/// The CPUs this thread may run on.
pub fn allowed_cpus() -> Vec<usize> {
    let Some(set) = current_affinity() else {
        return Vec::new();
    };
    (0..libc::CPU_SETSIZE as usize)
        .filter(|&cpu| {
            // SAFETY: `cpu` is below CPU_SETSIZE.
            unsafe { libc::CPU_ISSET(cpu, &set) }
        })
        .collect()
}

/// A thread of this process spinning on another CPU for as long as the value lives.
///
/// While it runs, every downgrade of a page protection (`mprotect` to `PROT_NONE`) must flush
/// the TLB of the sibling's CPU too, with an inter-processor interrupt: the cost that every
/// `mprotect`-based library pays in a real, multi-threaded server. The measuring thread is pinned
/// to one CPU and the sibling to another until the value is dropped, when the sibling stops and
/// the measuring thread's affinity is restored.
#[derive(Debug)]
pub struct BusySibling {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<u64>>,
    restore: Option<libc::cpu_set_t>,
}

impl BusySibling {
    /// Starts the sibling and returns once it is spinning.
    ///
    /// # Panics
    /// When the thread cannot be spawned, or when fewer than two CPUs are available (the sibling
    /// would then share the measuring thread's CPU and measure nothing useful).
    pub fn start() -> BusySibling {
        let cpus = allowed_cpus();
        assert!(
            cpus.len() >= 2,
            "a busy sibling needs two CPUs; this thread may use {cpus:?}"
        );
        let restore = current_affinity();
        let (mine, theirs) = (cpus[0], cpus[1]);
        assert!(set_affinity(&only(mine)), "pinning the measuring thread");
        let stop = Arc::new(AtomicBool::new(false));
        let running = Arc::new(AtomicBool::new(false));
        let handle = {
            let (stop, running) = (Arc::clone(&stop), Arc::clone(&running));
            std::thread::Builder::new()
                .name("busy-sibling".into())
                .spawn(move || {
                    set_affinity(&only(theirs));
                    running.store(true, Ordering::Release);
                    let mut spins = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        spins = std::hint::black_box(spins.wrapping_add(1));
                        std::hint::spin_loop();
                    }
                    spins
                })
                .expect("spawning the busy sibling")
        };
        while !running.load(Ordering::Acquire) {
            std::thread::yield_now();
        }
        BusySibling {
            stop,
            handle: Some(handle),
            restore,
        }
    }
}

impl Drop for BusySibling {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
        if let Some(set) = &self.restore {
            set_affinity(set);
        }
    }
}

/// Runs `work(thread_index, iters)` on `threads` threads at once and returns the wall time from
/// their common start (a barrier) to the last one's end, divided by `threads`.
///
/// Given to criterion's `iter_custom`, which divides by `iters`, this reports the time per
/// access of the aggregate: half the single-thread time means two threads doubled the
/// throughput; the single-thread time means they gained nothing.
pub fn aggregate<F>(threads: usize, iters: u64, work: F) -> Duration
where
    F: Fn(usize, u64) + Sync,
{
    let barrier = Barrier::new(threads + 1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|index| {
                let (barrier, work) = (&barrier, &work);
                scope.spawn(move || {
                    barrier.wait();
                    work(index, iters);
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        for handle in handles {
            handle.join().expect("a benchmark worker panicked");
        }
        start.elapsed() / threads as u32
    })
}
