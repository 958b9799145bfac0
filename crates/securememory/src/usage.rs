//! What this process's secrets hold: counted when a secret is made and when its memory is torn
//! down, never on the access path. Exported through the `metrics` facade (a no-op until the
//! program installs a recorder) and as plain numbers by [`stats`].
//!
//! The numbers live in process-wide atomics. Relaxed operations suffice: each is a count on its
//! own, read for monitoring, and orders nothing else.

use crate::policy::{Backing, Protection, Strategy};
use crate::sys;
use metrics::{Key, Label, Level, Metadata};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

/// Secrets made since the process started (a counter).
const ALLOCATED: &str = "secret.allocated";
/// Secrets made and not yet closed or dropped (a gauge).
const IN_USE: &str = "secret.inuse";
/// Bytes of locked memory held by live secrets (a gauge).
const LOCKED_BYTES: &str = "secret.locked.bytes";
/// Seconds from the first system call of a creation to the secret ready, concealed (a
/// histogram).
const CREATE_SECONDS: &str = "secret.create.seconds";

static MADE: AtomicU64 = AtomicU64::new(0);
static LIVE: AtomicU64 = AtomicU64::new(0);
static LOCKED: AtomicU64 = AtomicU64::new(0);

static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// The labels of every `(strategy, backing)` pair a [`Protection`] can name, built at compile
/// time so that emitting a metric allocates nothing.
static LABELS: [[[Label; 2]; 3]; 4] = [
    labels_for("auto"),
    labels_for("page-protection"),
    labels_for("protection-key"),
    labels_for("sealed"),
];

const fn labels_for(strategy: &'static str) -> [[Label; 2]; 3] {
    const fn pair(strategy: &'static str, backing: &'static str) -> [Label; 2] {
        [
            Label::from_static_parts("strategy", strategy),
            Label::from_static_parts("backing", backing),
        ]
    }
    [
        pair(strategy, "auto"),
        pair(strategy, "anonymous"),
        pair(strategy, "secretmem"),
    ]
}

fn labels(protection: &Protection) -> &'static [Label; 2] {
    let strategy = match protection.strategy {
        Strategy::Auto => 0,
        Strategy::PageProtection => 1,
        Strategy::ProtectionKey => 2,
        Strategy::Sealed => 3,
    };
    let backing = match protection.backing {
        Backing::Auto => 0,
        Backing::Anonymous => 1,
        Backing::SecretMem => 2,
    };
    &LABELS[strategy][backing]
}

/// One live secret's share of the numbers: added when the secret is made, taken away exactly
/// once when its memory is torn down (or, failing that, when the secret itself is dropped).
pub(crate) struct Tally {
    /// A thin reference: a sealed secret is small, and this is multiplied by every secret.
    labels: &'static [Label; 2],
    locked_bytes: u64,
    released: AtomicBool,
}

impl Tally {
    /// Counts a secret that was just made, `locked_bytes` of it locked, whose creation started
    /// at `started`. Call it only once the secret exists: a failed creation counts nothing.
    pub(crate) fn made(protection: &Protection, locked_bytes: usize, started: Instant) -> Tally {
        let seconds = started.elapsed().as_secs_f64();
        let locked_bytes = u64::try_from(locked_bytes).unwrap_or(u64::MAX);
        MADE.fetch_add(1, Ordering::Relaxed);
        LIVE.fetch_add(1, Ordering::Relaxed);
        LOCKED.fetch_add(locked_bytes, Ordering::Relaxed);
        let labels = labels(protection);
        metrics::with_recorder(|recorder| {
            let key = |name| Key::from_static_parts(name, labels);
            recorder
                .register_counter(&key(ALLOCATED), &METADATA)
                .increment(1);
            recorder
                .register_gauge(&key(IN_USE), &METADATA)
                .increment(1.0);
            recorder
                .register_gauge(&key(LOCKED_BYTES), &METADATA)
                .increment(locked_bytes as f64);
            recorder
                .register_histogram(&key(CREATE_SECONDS), &METADATA)
                .record(seconds);
        });
        Tally {
            labels,
            locked_bytes,
            released: AtomicBool::new(false),
        }
    }

    /// Takes the secret out of the numbers. Only the first call does anything, so that a close
    /// followed by a drop, or concurrent closes, count one release.
    pub(crate) fn released(&self) {
        if self.released.swap(true, Ordering::Relaxed) {
            return;
        }
        LIVE.fetch_sub(1, Ordering::Relaxed);
        LOCKED.fetch_sub(self.locked_bytes, Ordering::Relaxed);
        let labels = self.labels;
        metrics::with_recorder(|recorder| {
            let key = |name| Key::from_static_parts(name, labels);
            recorder
                .register_gauge(&key(IN_USE), &METADATA)
                .decrement(1.0);
            recorder
                .register_gauge(&key(LOCKED_BYTES), &METADATA)
                .decrement(self.locked_bytes as f64);
        });
    }
}

impl Drop for Tally {
    fn drop(&mut self) {
        self.released();
    }
}

/// This process's secrets in numbers, from [`stats`].
///
/// The same numbers the `metrics` facade receives (`secret.allocated`, `secret.inuse`,
/// `secret.locked.bytes`), summed over every strategy and backing, for programs that install no
/// recorder.
///
/// ```
/// let stats = securememory::stats();
/// assert!(stats.in_use <= stats.allocated);
/// if let (Some(limit), Some(headroom)) = (stats.memlock_limit, stats.memlock_headroom) {
///     println!("{headroom} of {limit} bytes of locked memory are left to secrets");
/// }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Secrets made since the process started (failed creations are not counted).
    pub allocated: u64,
    /// Secrets made and not yet closed or dropped. A secret counts from the moment it is made
    /// until its memory is torn down by its first `close` (or its drop); a close that failed
    /// to wipe or unmap still ends the count.
    pub in_use: u64,
    /// Bytes of locked memory held by the secrets in use: the whole data pages of each secret
    /// whose [`Protection::locked`] is true — secret memory included, which the kernel locks
    /// itself and charges to the same limit. Guard pages are reserved address space, never
    /// locked, and are not counted; neither is memory that other code of the process locked.
    pub locked_bytes: u64,
    /// The soft locked-memory limit, as [`system::memlock_limit`](crate::system::memlock_limit)
    /// says: `None` when unlimited or where the OS has no such limit.
    pub memlock_limit: Option<u64>,
    /// How many more bytes secrets may lock before reaching `memlock_limit`: the limit minus
    /// `locked_bytes`, or `None` where no limit applies.
    ///
    /// It counts only what secrets lock: memory the rest of the process locks (`mlockall`,
    /// other libraries) takes from the same limit, so the real headroom may be smaller. It is
    /// computed from the limit whether or not the process has `CAP_IPC_LOCK`, which lets a
    /// process lock past the limit: there it understates what can be locked.
    pub memlock_headroom: Option<u64>,
}

/// This process's secrets in numbers: how many were made, how many are live, how much memory
/// they hold locked, and how much more the locked-memory limit leaves them.
///
/// Cheap (a few atomic loads and one `getrlimit`), and the same numbers that go to the
/// `metrics` facade, for code without a recorder. In a forked child, the numbers start from the
/// parent's at the fork, and fall as the child closes or drops its copies of the parent's
/// secrets.
///
/// ```
/// use securememory::{ProtectedMemorySecretFactory, SecretFactory};
///
/// let before = securememory::stats();
/// let secret = ProtectedMemorySecretFactory::default().create_random(32)?;
/// let after = securememory::stats();
/// println!(
///     "{} secrets hold {} bytes locked; headroom {:?}",
///     after.in_use, after.locked_bytes, after.memlock_headroom
/// );
/// assert!(after.allocated > before.allocated);
/// secret.close()?;
/// # Ok::<(), securememory::Error>(())
/// ```
pub fn stats() -> Stats {
    let locked_bytes = LOCKED.load(Ordering::Relaxed);
    let memlock_limit = sys::memlock_limit();
    Stats {
        allocated: MADE.load(Ordering::Relaxed),
        in_use: LIVE.load(Ordering::Relaxed),
        locked_bytes,
        memlock_limit,
        memlock_headroom: memlock_limit.map(|limit| limit.saturating_sub(locked_bytes)),
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use crate::factory::common;

    /// A tally dropped without its release (a secret whose close never ran) still takes the
    /// secret out of the numbers.
    #[test]
    fn a_tally_dropped_unreleased_leaves_the_numbers_as_they_were() {
        common::in_child_process!();
        let before = stats();
        let protection = crate::ProtectedMemorySecretFactory::default()
            .new(&mut [1; 8])
            .unwrap()
            .protection();
        let between = stats();
        let tally = Tally::made(&protection, 4096, Instant::now());
        let counted = stats();
        assert_eq!(
            (counted.in_use, counted.locked_bytes),
            (between.in_use + 1, between.locked_bytes + 4096)
        );
        drop(tally);
        let after = stats();
        assert_eq!(
            (after.in_use, after.locked_bytes),
            (before.in_use, before.locked_bytes)
        );
    }
}
