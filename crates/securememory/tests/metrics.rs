//! The numbers secrets leave behind: what reaches a `metrics` recorder and what `stats()` says,
//! through creation, close, drop and failed creation, checked against the kernel's own count of
//! locked memory. Each test runs in a child process of its own: the numbers and the recorder are
//! process-wide, and other tests' secrets would move them.
#![cfg(target_os = "linux")]

mod common;

use metrics::{Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName};
use metrics::{Metadata, Recorder, SharedString, Unit};
use securememory::{
    system, Backing, Error, MlockPolicy, Protection, Report, Secret, Stats, Strategy,
};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

const PAGE: u64 = 4096;

/// One metric's value: a counter's count, a gauge's level or a histogram's samples (whichever
/// its kind uses).
#[derive(Default)]
struct Value {
    count: AtomicU64,
    level: Mutex<f64>,
    samples: Mutex<Vec<f64>>,
}

impl CounterFn for Value {
    fn increment(&self, value: u64) {
        self.count.fetch_add(value, Ordering::Relaxed);
    }
    fn absolute(&self, value: u64) {
        self.count.fetch_max(value, Ordering::Relaxed);
    }
}

impl GaugeFn for Value {
    fn increment(&self, value: f64) {
        *self.level.lock().unwrap() += value;
    }
    fn decrement(&self, value: f64) {
        *self.level.lock().unwrap() -= value;
    }
    fn set(&self, value: f64) {
        *self.level.lock().unwrap() = value;
    }
}

impl HistogramFn for Value {
    fn record(&self, value: f64) {
        self.samples.lock().unwrap().push(value);
    }
}

/// The metric's kind, name and labels (sorted), as a recorder sees them.
type Id = (&'static str, String, Vec<(String, String)>);

/// A recorder that keeps every value, to be read back by the test.
#[derive(Default)]
struct Recorded {
    values: Mutex<BTreeMap<Id, Arc<Value>>>,
}

impl Recorded {
    /// Installs a fresh recorder as the process's global one (once per process).
    fn install() -> &'static Recorded {
        let recorded: &'static Recorded = Box::leak(Box::default());
        metrics::set_global_recorder(recorded).expect("no recorder installed yet");
        recorded
    }

    fn value(&self, kind: &'static str, key: &Key) -> Arc<Value> {
        let mut labels: Vec<(String, String)> = key
            .labels()
            .map(|label| (label.key().to_string(), label.value().to_string()))
            .collect();
        labels.sort();
        let id = (kind, key.name().to_string(), labels);
        self.values.lock().unwrap().entry(id).or_default().clone()
    }

    /// The value of the metric `name` of `kind` for secrets with `protection`'s strategy and
    /// backing, if anything was recorded under it.
    fn get(&self, kind: &'static str, name: &str, protection: &Protection) -> Option<Arc<Value>> {
        let id = (kind, name.to_string(), labels(protection));
        self.values.lock().unwrap().get(&id).cloned()
    }

    fn count(&self, name: &str, protection: &Protection) -> u64 {
        self.get("counter", name, protection)
            .map_or(0, |v| v.count.load(Ordering::Relaxed))
    }

    fn level(&self, name: &str, protection: &Protection) -> f64 {
        self.get("gauge", name, protection)
            .map_or(0.0, |v| *v.level.lock().unwrap())
    }

    fn samples(&self, name: &str, protection: &Protection) -> Vec<f64> {
        self.get("histogram", name, protection)
            .map_or_else(Vec::new, |v| v.samples.lock().unwrap().clone())
    }

    /// Every metric name recorded, with its kind.
    fn names(&self) -> Vec<(&'static str, String)> {
        let mut names: Vec<_> = self
            .values
            .lock()
            .unwrap()
            .keys()
            .map(|(kind, name, _)| (*kind, name.clone()))
            .collect();
        names.dedup();
        names
    }
}

impl Recorder for Recorded {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.value("counter", key))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.value("gauge", key))
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(self.value("histogram", key))
    }
}

/// The labels the library documents for a secret with `protection`, sorted by name.
fn labels(protection: &Protection) -> Vec<(String, String)> {
    let backing = match protection.backing {
        Backing::Anonymous => "anonymous",
        Backing::SecretMem => "secretmem",
        other => panic!("a secret's backing is never {other:?}"),
    };
    let strategy = match protection.strategy {
        Strategy::PageProtection => "page-protection",
        Strategy::ProtectionKey => "protection-key",
        Strategy::Sealed => "sealed",
        other => panic!("a secret's strategy is never {other:?}"),
    };
    vec![
        ("backing".to_string(), backing.to_string()),
        ("strategy".to_string(), strategy.to_string()),
    ]
}

/// The data pages a secret of `len` bytes locks.
fn pages(len: usize) -> u64 {
    (len as u64).div_ceil(PAGE) * PAGE
}

/// The memory a secret of `len` bytes locks: its data pages, when they are locked; nothing
/// for a sealed secret (its ciphertext is on the heap, and the pages of its key and of the
/// threads' scratch areas are the process's, not the secret's).
fn locked_by(protection: &Protection, len: usize) -> f64 {
    if protection.locked && protection.strategy != Strategy::Sealed {
        pages(len) as f64
    } else {
        0.0
    }
}

/// The kernel's count of this process's locked memory, in bytes (`VmLck` in `/proc/self/status`).
fn vm_lck() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let line = status
        .lines()
        .find(|line| line.starts_with("VmLck:"))
        .expect("a VmLck line");
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("VmLck in kB");
    kb * 1024
}

/// What one secret with `protection` and `len` bytes adds to the recorder's numbers.
struct Expected {
    allocated: u64,
    in_use: f64,
    locked: f64,
    samples: usize,
}

fn assert_recorded(recorded: &Recorded, protection: &Protection, expected: &Expected, when: &str) {
    assert_eq!(
        recorded.count("secret.allocated", protection),
        expected.allocated,
        "secret.allocated {when} ({protection:?})"
    );
    assert_eq!(
        recorded.level("secret.inuse", protection),
        expected.in_use,
        "secret.inuse {when} ({protection:?})"
    );
    assert_eq!(
        recorded.level("secret.locked.bytes", protection),
        expected.locked,
        "secret.locked.bytes {when} ({protection:?})"
    );
    let samples = recorded.samples("secret.create.seconds", protection);
    assert_eq!(
        samples.len(),
        expected.samples,
        "secret.create.seconds samples {when} ({protection:?})"
    );
    assert!(
        samples.iter().all(|&s| s > 0.0 && s < 60.0),
        "creation times in seconds: {samples:?}"
    );
}

#[test]
fn a_recorder_sees_secrets_made_closed_purged_and_dropped_with_their_strategy_and_backing() {
    common::in_child_process!();
    let recorded = Recorded::install();
    let mut setups: Vec<_> = common::SETUPS.iter().map(|&s| common::factory(s)).collect();
    setups.extend(common::protection_key_factory());
    for factory in setups {
        let closed = factory.create_random(100).unwrap();
        let protection = closed.protection();
        // Earlier setups may have resolved to the same labels: measure from where they left.
        let base = recorded.count("secret.allocated", &protection);
        let samples = recorded.samples("secret.create.seconds", &protection).len();
        assert_eq!(recorded.level("secret.inuse", &protection), 1.0);
        let locked = locked_by(&protection, 100);
        let one = Expected {
            allocated: base,
            in_use: 1.0,
            locked,
            samples,
        };
        assert_recorded(recorded, &protection, &one, "after one creation");

        let dropped = factory.new(&mut [7; 5000]).unwrap();
        assert_eq!(dropped.protection(), protection);
        let locked_both = locked + locked_by(&protection, 5000);
        let two = Expected {
            allocated: base + 1,
            in_use: 2.0,
            locked: locked_both,
            samples: samples + 1,
        };
        assert_recorded(recorded, &protection, &two, "after two creations");
        closed.with_bytes(|b| b.len()).unwrap();
        closed.with_bytes_mut(|b| b[0] = 1).unwrap();
        assert_recorded(recorded, &protection, &two, "after accesses");

        closed.close().unwrap();
        let after_close = Expected {
            allocated: base + 1,
            in_use: 1.0,
            locked: locked_both - locked,
            samples: samples + 1,
        };
        assert_recorded(recorded, &protection, &after_close, "after close");
        closed.close().unwrap();
        assert_recorded(recorded, &protection, &after_close, "after a second close");
        drop(closed);
        assert_recorded(
            recorded,
            &protection,
            &after_close,
            "after dropping the closed",
        );

        drop(dropped);
        let none = Expected {
            allocated: base + 1,
            in_use: 0.0,
            locked: 0.0,
            samples: samples + 1,
        };
        assert_recorded(recorded, &protection, &none, "after drop");

        assert!(matches!(factory.new(&mut []), Err(Error::InvalidLength)));
        assert!(matches!(
            factory.create_random(usize::MAX),
            Err(Error::InvalidLength)
        ));
        assert_recorded(recorded, &protection, &none, "after refused creations");

        let purged = [
            factory.create_random(64).unwrap(),
            factory.new(&mut [9; 64]).unwrap(),
        ];
        assert!(purged.iter().all(|s| s.protection() == protection));
        let page = locked_by(&protection, 64);
        let made = Expected {
            allocated: base + 3,
            in_use: 2.0,
            locked: 2.0 * page,
            samples: samples + 3,
        };
        assert_recorded(recorded, &protection, &made, "before a purge");
        assert!(securememory::purge().is_complete());
        let after_purge = Expected {
            allocated: base + 3,
            in_use: 0.0,
            locked: 0.0,
            samples: samples + 3,
        };
        assert_recorded(recorded, &protection, &after_purge, "after a purge");
        drop(purged);
        assert_recorded(
            recorded,
            &protection,
            &after_purge,
            "after dropping the purged",
        );
    }
    let mut names = recorded.names();
    names.sort();
    assert_eq!(
        names,
        [
            ("counter", "secret.allocated".to_string()),
            ("gauge", "secret.inuse".to_string()),
            ("gauge", "secret.locked.bytes".to_string()),
            ("histogram", "secret.create.seconds".to_string()),
        ]
    );
}

/// A creation that fails after its memory was mapped (the lock refused past the limit) counts
/// nothing; an unlocked secret under `BestEffort` counts as in use with no locked bytes.
#[test]
fn a_failed_creation_counts_nothing_and_an_unlocked_secret_no_locked_bytes() {
    common::in_child_process!();
    let recorded = Recorded::install();
    common::drop_ipc_lock_capability();
    common::set_memlock_limit(0);
    let required = common::builder()
        .backing(Backing::Anonymous)
        .mlock(MlockPolicy::Required)
        .build();
    let refused = required.create_random(32);
    assert!(
        matches!(refused, Err(Error::MemoryLockLimit { .. })),
        "{refused:?}"
    );
    assert!(recorded.names().is_empty(), "{:?}", recorded.names());
    assert_eq!(securememory::stats().allocated, 0);
    assert_eq!(securememory::stats().in_use, 0);

    let best_effort = common::builder()
        .backing(Backing::Anonymous)
        .mlock(MlockPolicy::BestEffort)
        .report(Report::Silent)
        .build();
    let unlocked = best_effort.create_random(32).unwrap();
    let protection = unlocked.protection();
    assert!(!protection.locked);
    let expected = Expected {
        allocated: 1,
        in_use: 1.0,
        locked: 0.0,
        samples: 1,
    };
    assert_recorded(recorded, &protection, &expected, "for an unlocked secret");
    let stats = securememory::stats();
    assert_eq!((stats.in_use, stats.locked_bytes), (1, 0));
    assert_eq!(stats.memlock_limit, Some(0));
    assert_eq!(stats.memlock_headroom, Some(0));
    drop(unlocked);
    assert_eq!(recorded.level("secret.inuse", &protection), 0.0);
}

fn assert_stats(stats: Stats, in_use: u64, locked_bytes: u64, when: &str) {
    assert_eq!(
        (stats.in_use, stats.locked_bytes),
        (in_use, locked_bytes),
        "secrets in use and locked bytes {when}: {stats:?}"
    );
    assert_eq!(stats.memlock_limit, system::memlock_limit(), "{when}");
    assert_eq!(
        stats.memlock_headroom,
        stats.memlock_limit.map(|limit| limit - locked_bytes),
        "headroom {when}: {stats:?}"
    );
}

/// `stats()` follows secrets as they are made, closed (twice) and dropped, and its locked bytes
/// are what the kernel counts as locked (`VmLck`), anonymous and secret memory alike.
#[test]
fn stats_follow_secrets_and_match_the_kernels_locked_memory() {
    common::in_child_process!();
    common::drop_ipc_lock_capability();
    common::set_memlock_limit(1 << 20);
    let start = securememory::stats();
    assert_eq!(start.allocated, 0, "{start:?}");
    assert_stats(start, 0, 0, "before any secret");
    assert_eq!(start.memlock_headroom, Some(1 << 20));
    let kernel_start = vm_lck();

    let mut backings = vec![Backing::Anonymous];
    if !common::skip_without_secret_memory() {
        backings.push(Backing::SecretMem);
    }
    for &backing in &backings {
        let factory = common::factory(backing);
        let lens = [1, 4096, 5000];
        let secrets: Vec<Secret> = lens
            .iter()
            .map(|&len| factory.create_random(len).unwrap())
            .collect();
        assert!(secrets.iter().all(|s| s.protection().locked));
        let locked: u64 = lens.iter().map(|&len| pages(len)).sum();
        assert_stats(securememory::stats(), 3, locked, "with three secrets");
        assert_eq!(
            vm_lck() - kernel_start,
            locked,
            "VmLck with three secrets in {backing:?}"
        );

        let mut secrets = secrets.into_iter();
        let first = secrets.next().unwrap();
        first.close().unwrap();
        first.close().unwrap();
        let left = locked - pages(1);
        assert_stats(securememory::stats(), 2, left, "after closing one twice");
        assert_eq!(vm_lck() - kernel_start, left, "VmLck after a close");
        drop(first);
        drop(secrets.next());
        let left = left - pages(4096);
        assert_stats(securememory::stats(), 1, left, "after a drop");
        drop(secrets);
        assert_stats(securememory::stats(), 0, 0, "after every secret is gone");
        assert_eq!(vm_lck(), kernel_start, "VmLck after every secret is gone");
    }
    assert_eq!(securememory::stats().allocated, 3 * backings.len() as u64);
}

/// A forked child that closes and drops its copy of the parent's secret neither panics nor
/// counts it twice; the parent's numbers are its own.
#[test]
fn a_forked_child_releases_its_copy_once_and_leaves_the_parents_numbers_alone() {
    common::in_child_process!();
    let secret = common::default_factory().create_random(32).unwrap();
    let locked = securememory::stats().locked_bytes;
    assert_stats(securememory::stats(), 1, locked, "in the parent");
    // SAFETY: the child only closes, reads atomics and exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let before = securememory::stats();
            let closed = secret.close().is_ok() && secret.close().is_ok();
            drop(secret);
            let after = securememory::stats();
            let released_once = before.in_use == 1 && after.in_use == 0 && after.locked_bytes == 0;
            i32::from(!(closed && released_once))
        }))
        .unwrap_or(2);
        // SAFETY: ends the forked child without running the parent's exit handlers.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waits for the child just forked.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the forked child's numbers were wrong or it panicked (status {status:#x})"
    );
    assert_stats(
        securememory::stats(),
        1,
        locked,
        "in the parent after the child",
    );
    drop(secret);
    assert_stats(securememory::stats(), 0, 0, "in the parent after the drop");
}
