//! A soak test: threads making, reading, writing, closing and dropping secrets under each other
//! at random, for a bounded time per setup, under a watchdog. No read may see a torn or wrong
//! byte (every secret holds one byte value throughout, and a write replaces all of it), no
//! operation may fail but with `Closed`, and at the end the locked memory and the mappings of
//! the process are back where they started.
//!
//! `SOAK_SECONDS` sets the time per setup (default 3; CI gives it more).

#![cfg(target_os = "linux")]

mod common;

use securememory::{Error, Secret};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

const THREADS: usize = 4;
const SLOTS: usize = 12;

type Slots = Arc<Vec<Mutex<Option<Arc<Secret>>>>>;

/// xorshift64*: a cheap random stream per thread.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> usize {
        (self.next() % n) as usize
    }
}

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn mappings() -> Vec<String> {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .map(|line| {
            line.split_whitespace()
                .take(2)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

/// Every byte of a secret is one value: a read that sees two saw a write half done.
fn uniform(bytes: &[u8]) -> Result<u8, String> {
    let first = bytes[0];
    match bytes.iter().position(|&b| b != first) {
        None => Ok(first),
        Some(at) => Err(format!(
            "torn read: byte 0 is {first}, byte {at} is {}",
            bytes[at]
        )),
    }
}

fn allowed<T>(result: Result<T, Error>, what: &str) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(Error::Closed) => None,
        Err(other) => panic!("{what} failed with {other:?}"),
    }
}

fn worker(
    factory: Arc<securememory::ProtectedMemorySecretFactory>,
    slots: Slots,
    stop: Arc<AtomicBool>,
    seed: u64,
    done: Arc<AtomicU64>,
) {
    let mut random = Random(seed | 1);
    let pick = |random: &mut Random| slots[random.below(SLOTS as u64)].lock().unwrap().clone();
    while !stop.load(Ordering::Relaxed) {
        match random.below(10) {
            0 | 1 => {
                let len = 1 + random.below(300);
                let value = random.next() as u8;
                let secret = Arc::new(factory.new(&mut vec![value; len]).expect("new"));
                let slot = random.below(SLOTS as u64);
                *slots[slot].lock().unwrap() = Some(secret);
            }
            2..=4 => {
                if let Some(secret) = pick(&mut random) {
                    if let Some(seen) = allowed(secret.with_bytes(uniform), "with_bytes") {
                        seen.unwrap_or_else(|torn| panic!("{torn}"));
                    }
                }
            }
            5 => {
                if let Some(secret) = pick(&mut random) {
                    let value = random.next() as u8;
                    allowed(secret.with_bytes_mut(|b| b.fill(value)), "with_bytes_mut");
                }
            }
            6 => {
                let (a, b) = (pick(&mut random), pick(&mut random));
                if let (Some(a), Some(b)) = (a, b) {
                    if let Some(inner) = allowed(
                        a.with_bytes(|x| (uniform(x), b.with_bytes(uniform))),
                        "nested",
                    ) {
                        inner.0.unwrap_or_else(|torn| panic!("{torn}"));
                        if let Some(seen) = allowed(inner.1, "inner read") {
                            seen.unwrap_or_else(|torn| panic!("{torn}"));
                        }
                    }
                }
            }
            7 => {
                if let Some(secret) = pick(&mut random) {
                    secret.close().expect("close");
                    assert!(matches!(secret.with_bytes(|_| ()), Err(Error::Closed)));
                }
            }
            8 => {
                let slot = random.below(SLOTS as u64);
                slots[slot].lock().unwrap().take();
            }
            _ => {
                if let Some(secret) = pick(&mut random) {
                    if let Some(copy) = allowed(factory.duplicate(&secret), "duplicate") {
                        let slot = random.below(SLOTS as u64);
                        *slots[slot].lock().unwrap() = Some(Arc::new(copy));
                    }
                }
            }
        }
        done.fetch_add(1, Ordering::Relaxed);
    }
}

fn soak(factory: Arc<securememory::ProtectedMemorySecretFactory>, seconds: u64, seed: u64) -> u64 {
    let slots: Slots = Arc::new((0..SLOTS).map(|_| Mutex::new(None)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..THREADS as u64)
        .map(|i| {
            let (factory, slots, stop, done) =
                (factory.clone(), slots.clone(), stop.clone(), done.clone());
            thread::spawn(move || worker(factory, slots, stop, seed.wrapping_mul(i + 7), done))
        })
        .collect();
    thread::sleep(Duration::from_secs(seconds));
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        if let Err(panic) = worker.join() {
            std::panic::resume_unwind(panic);
        }
    }
    drop(slots);
    done.load(Ordering::Relaxed)
}

#[test]
fn threads_racing_over_secrets_see_no_wrong_byte_and_leave_nothing_behind() {
    common::in_child_process!();
    let seconds: u64 = std::env::var("SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id());
    println!("seed {seed:#x}, {seconds} s per setup");
    for setup in common::SETUPS {
        let factory = Arc::new(common::factory(setup));
        let limit = Duration::from_secs(seconds + 120);
        let run = |seconds| {
            let factory = factory.clone();
            common::within(limit, move || soak(factory, seconds, seed))
        };
        // A first round makes what stays for the process's life (a sealed key page, the
        // allocator's per-thread arenas), so that the second must give back all it takes.
        run(1);
        let (locked, maps) = (status_kib("VmLck:"), mappings());
        let operations = run(seconds);
        println!("{setup:?}: {operations} operations");
        assert!(operations > 0);
        assert_eq!(
            status_kib("VmLck:"),
            locked,
            "{setup:?}: locked memory left behind"
        );
        let left: Vec<_> = mappings()
            .into_iter()
            .filter(|m| !maps.contains(m))
            .collect();
        assert!(
            left.len() <= 2,
            "{setup:?}: mappings left behind: {left:#?}"
        );
    }
}
