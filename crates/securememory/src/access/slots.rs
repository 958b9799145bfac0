//! Reader slots: how a reader of a secret opened per thread (a protection key) announces itself
//! without writing a cache line that other readers write.
//!
//! Every thread that reads such secrets claims one [`Line`] of a process-wide table, once, and
//! keeps it until it exits. A read *publishes* the secret's address in a free entry of the
//! thread's own line, then checks the secret's state word (a load: the word stays shared in every
//! reader's cache). Writers and `close` do the mirror image: they set a flag in the state word
//! with a read-modify-write, fence, and scan the table for entries naming the secret. Of a reader
//! and a writer racing, at least one sees the other (the classic store-buffering pattern with a
//! fence on each side): either the reader sees the flag and backs off to the counted path, or the
//! writer sees the entry and waits for it to go. This is the biased reader-writer lock of Dice
//! and Kogan (BRAVO, USENIX ATC 2019), with a slot per thread instead of a hashed one, so two
//! threads never share a line.
//!
//! The reader's fence is asymmetric where the OS allows: the reader only keeps the compiler from
//! reordering ([`light_barrier`]), and a writer or closer makes every running thread of the
//! process execute a full fence before it scans ([`barrier_all_threads`], `membarrier(2)`). The
//! expensive side runs only for secrets some reader ever published (the state word's `PUBLISHED`
//! flag, set once per secret by its first publisher with a read-modify-write), so a secret made
//! and closed without a read pays nothing. Where no such barrier exists, readers fence.
//!
//! Leaving needs no fence: the reader clears its entry and, when the state word says someone
//! may be waiting, notifies. A waiter that still sees the entry first forces every thread of the
//! process through a full barrier (`membarrier(2)`, [`barrier_all_threads`]) and looks again, so
//! a leaving reader either is seen gone or sees the waiter's flag and wakes it. Where no such
//! barrier exists the waiter looks again after a short sleep instead.
//!
//! # Forks
//!
//! A forked child inherits the table, with entries of the parent's threads that do not exist
//! there. Each line records the process epoch it was claimed in; scans skip lines of other
//! epochs, and a thread whose line is from an earlier epoch claims one afresh. A line of an
//! earlier epoch is free for the taking.

use crate::sync::{barrier_all_threads, fence, light_barrier, AtomicU64, AtomicUsize, Ordering};

/// Reads one thread may have published at once (nested reads of different secrets); further ones
/// take the counted path.
const ENTRIES: usize = 7;

/// Threads that can hold a line at once; threads beyond take the counted path.
#[cfg(not(loom))]
const LINES: usize = 256;
#[cfg(loom)]
const LINES: usize = 3;

/// A line no thread owns.
const FREE: u64 = 0;
/// A line being taken over: its entries are being cleared.
const CLAIMING: u64 = u64::MAX;

/// What a line's `owner` holds once claimed by a thread of the process in `epoch`: never
/// [`FREE`] (where the OS has no forks, the epoch is zero) nor [`CLAIMING`].
fn owner_in(epoch: u64) -> u64 {
    epoch % (CLAIMING - 1) + 1
}

/// One thread's slots. Aligned to two cache lines, which is what the adjacent-line prefetcher
/// of x86 CPUs moves together: a reader's publication never disturbs another reader's line.
#[repr(align(128))]
pub(crate) struct Line {
    /// [`owner_in`] the epoch of the process that claimed the line ([`FREE`] or [`CLAIMING`]
    /// otherwise).
    owner: AtomicU64,
    /// Addresses of the secrets (their `Access`) that the owner is reading; zero when free. Only
    /// the owner writes them.
    entries: [AtomicUsize; ENTRIES],
    /// Lets a model check leave the publication fence out, to show that it is needed.
    #[cfg(loom)]
    pub(crate) publication_fence: std::sync::atomic::AtomicBool,
}

impl Line {
    fn new() -> Line {
        Line {
            owner: AtomicU64::new(FREE),
            entries: std::array::from_fn(|_| AtomicUsize::new(0)),
            #[cfg(loom)]
            publication_fence: std::sync::atomic::AtomicBool::new(true),
        }
    }

    /// Publishes a read of `address`; `None` when every entry is taken. Called by the owner
    /// only, after claiming the line.
    #[inline]
    pub(crate) fn publish(&self, address: usize) -> Option<&AtomicUsize> {
        // Relaxed: only the owner writes its entries, so it reads its own last store.
        let entry = self
            .entries
            .iter()
            .find(|entry| entry.load(Ordering::Relaxed) == 0)?;
        // Relaxed: the barrier below orders it before the state word's load.
        entry.store(address, Ordering::Relaxed);
        #[cfg(loom)]
        if self
            .publication_fence
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            light_barrier();
        }
        #[cfg(not(loom))]
        publication_barrier();
        Some(entry)
    }
}

/// How readers order their publication before their load of the state word: not decided yet,
/// with a fence of their own, or with only the cheap side of an asymmetric fence (writers and
/// `close` then make every thread fence before they scan).
#[cfg(not(loom))]
static PUBLICATION: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(UNDECIDED);
#[cfg(not(loom))]
const UNDECIDED: u8 = 0;
#[cfg(not(loom))]
const FENCED: u8 = 1;
#[cfg(not(loom))]
const ASYMMETRIC: u8 = 2;

/// The store of a publication, then the load of the state word: a writer or closer sets its
/// flag, makes the publications visible ([`see_publications`]), then scans. One of the two sees
/// the other. Where the OS can make every thread fence on demand, the reader's side costs nothing
/// at run time.
#[cfg(not(loom))]
#[inline]
fn publication_barrier() {
    // Relaxed: decided before this thread's first publication (in `claim`), never changed.
    if PUBLICATION.load(std::sync::atomic::Ordering::Relaxed) == ASYMMETRIC {
        light_barrier();
    } else {
        fence(Ordering::SeqCst);
    }
}

/// Decides, once per process and before any publication, whether readers need a fence of their
/// own.
#[cfg(not(loom))]
#[cold]
fn decide_publication_barrier() {
    use std::sync::atomic::Ordering::Relaxed;
    if PUBLICATION.load(Relaxed) == UNDECIDED {
        let decided = if barrier_all_threads() {
            ASYMMETRIC
        } else {
            FENCED
        };
        // The first decision stands: threads that published under it rely on it.
        let _ = PUBLICATION.compare_exchange(UNDECIDED, decided, Relaxed, Relaxed);
    }
}

/// After setting a flag that stops new publications (with a read-modify-write): makes every read
/// published before the flag visible to this thread's scan. Returns whether every thread of the
/// process was made to fence, so that a reader leaving from now on sees the flag.
pub(crate) fn see_publications() -> bool {
    #[cfg(all(test, not(loom)))]
    SEEN_BY_THIS_THREAD.with(|seen| seen.set(seen.get() + 1));
    if barrier_all_threads() {
        return true;
    }
    fence(Ordering::SeqCst);
    #[cfg(not(loom))]
    if PUBLICATION.load(std::sync::atomic::Ordering::Relaxed) == ASYMMETRIC {
        settle_unfenced_publications();
    }
    false
}

#[cfg(all(test, not(loom)))]
thread_local! {
    static SEEN_BY_THIS_THREAD: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// How many times this thread has called [`see_publications`] (a barrier on every thread, where
/// the OS has one), for tests of what spares it.
#[cfg(all(test, not(loom)))]
pub(crate) fn publications_seen_by_this_thread() -> usize {
    SEEN_BY_THIS_THREAD.with(|seen| seen.get())
}

/// Readers publish without a fence, but the barrier that made that safe is refused now (a
/// system-call filter installed since): give their stores the time to leave the CPUs' store
/// buffers, which takes nanoseconds, many times over. Spins rather than sleeps: the filter may
/// refuse sleeping too.
#[cfg(not(loom))]
#[cold]
fn settle_unfenced_publications() {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        log::warn!(
            "membarrier(2) is refused now although it worked earlier (a system-call filter?): \
             writers and close of secrets under protection keys now wait 50 µs for readers"
        );
    }
    let start = std::time::Instant::now();
    while start.elapsed() < std::time::Duration::from_micros(50) {
        std::hint::spin_loop();
    }
    fence(Ordering::SeqCst);
}

/// Clears a published entry. Release: the read it covered happens before a writer or closer
/// that sees the entry clear.
#[inline]
pub(crate) fn withdraw(entry: &AtomicUsize) {
    entry.store(0, Ordering::Release);
}

/// The process-wide table of lines.
pub(crate) struct Table {
    lines: Box<[Line]>,
    /// One past the highest line ever claimed: scans stop there.
    claimed: AtomicUsize,
}

impl Table {
    fn new() -> Table {
        Table {
            lines: (0..LINES).map(|_| Line::new()).collect(),
            claimed: AtomicUsize::new(0),
        }
    }

    /// Claims a line for a thread of the process in `epoch`: a free one, or one left by a
    /// process this one was forked from. `None` when every line is taken.
    pub(crate) fn claim(&self, epoch: u64) -> Option<&Line> {
        #[cfg(not(loom))]
        decide_publication_barrier();
        let mine = owner_in(epoch);
        for (index, line) in self.lines.iter().enumerate() {
            // Relaxed: a guess for the CAS, which acquires.
            let owner = line.owner.load(Ordering::Relaxed);
            if owner == CLAIMING || owner == mine {
                continue;
            }
            if line
                .owner
                .compare_exchange(owner, CLAIMING, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
            {
                continue;
            }
            // Entries of a thread of an earlier process; no scan looks at a CLAIMING line.
            for entry in &line.entries {
                entry.store(0, Ordering::Relaxed);
            }
            // Release: a scanner that sees the epoch sees the cleared entries. A reader's own
            // publication fence orders this before anything it publishes.
            line.owner.store(mine, Ordering::Release);
            self.claimed.fetch_max(index + 1, Ordering::Release);
            return Some(line);
        }
        None
    }

    /// Gives a line claimed in `epoch` back when its thread exits. A line with an entry still
    /// published (a thread that ended inside a read) is kept out of use for good; one taken over
    /// since (this thread forked, and a thread of the child claimed it) is no longer this
    /// thread's to give.
    #[cfg_attr(loom, allow(dead_code))]
    fn release(&self, line: &Line, epoch: u64) {
        if line
            .entries
            .iter()
            .all(|entry| entry.load(Ordering::Relaxed) == 0)
        {
            // Release: the next owner's claim sees the entries clear. A failure means the line
            // is another thread's now.
            let _ = line.owner.compare_exchange(
                owner_in(epoch),
                FREE,
                Ordering::Release,
                Ordering::Relaxed,
            );
        }
    }

    /// Whether a thread of the process in `epoch` has a read of `address` published. The caller
    /// has set its flag in the secret's state word with a read-modify-write and fenced since.
    pub(crate) fn published(&self, address: usize, epoch: u64) -> bool {
        // Acquire: pairs with the claim's Release, so the lines scanned are set up.
        let claimed = self.claimed.load(Ordering::Acquire);
        let owner = owner_in(epoch);
        self.lines[..claimed].iter().any(|line| {
            // Acquire, here and for the entries: a cleared entry's read happened before.
            line.owner.load(Ordering::Acquire) == owner
                && line
                    .entries
                    .iter()
                    .any(|entry| entry.load(Ordering::Acquire) == address)
        })
    }
}

#[cfg(not(loom))]
pub(crate) fn table() -> &'static Table {
    static TABLE: std::sync::OnceLock<Table> = std::sync::OnceLock::new();
    TABLE.get_or_init(Table::new)
}

#[cfg(loom)]
pub(crate) fn table() -> &'static Table {
    ::loom::lazy_static! {
        static ref TABLE: Table = Table::new();
    }
    &TABLE
}

/// The line this thread has claimed. No destructor of its own, so that reading it on every
/// access costs no check of whether the thread is exiting; [`GiveBack`] returns the line.
#[cfg(not(loom))]
struct Claimed {
    line: std::cell::Cell<Option<&'static Line>>,
    /// The epoch the line was claimed in (`None` before the first claim): another one means
    /// this thread is now in a forked child and must claim afresh.
    epoch: std::cell::Cell<Option<u64>>,
}

/// Gives the thread's line back when the thread exits. Registered on the first claim.
#[cfg(not(loom))]
struct GiveBack;

#[cfg(not(loom))]
impl Drop for GiveBack {
    fn drop(&mut self) {
        CLAIMED.with(|claimed| {
            if let (Some(line), Some(epoch)) = (claimed.line.take(), claimed.epoch.get()) {
                // Reads in later destructors of this thread find no line (the epoch stays) and
                // take the counted path.
                table().release(line, epoch);
            }
        });
    }
}

#[cfg(not(loom))]
thread_local! {
    static CLAIMED: Claimed = const {
        Claimed {
            line: std::cell::Cell::new(None),
            epoch: std::cell::Cell::new(None),
        }
    };
    static GIVE_BACK: GiveBack = const { GiveBack };
}

/// The calling thread's line in the process of `epoch`, claimed on first use; `None` when the
/// table is full (this thread then reads through the counted path for good) or the thread is
/// exiting.
#[cfg(not(loom))]
#[inline]
pub(crate) fn this_threads_line(epoch: u64) -> Option<&'static Line> {
    CLAIMED.with(|claimed| {
        if claimed.epoch.get() == Some(epoch) {
            return claimed.line.get();
        }
        claim_for_this_thread(claimed, epoch)
    })
}

#[cfg(not(loom))]
#[cold]
fn claim_for_this_thread(claimed: &Claimed, epoch: u64) -> Option<&'static Line> {
    // Touching it registers its destructor; a thread already exiting claims nothing.
    let line = GIVE_BACK
        .try_with(|_| ())
        .ok()
        // A line from an earlier epoch belongs to a process this one was forked from; the
        // claim may take it back.
        .and_then(|()| table().claim(epoch));
    claimed.line.set(line);
    claimed.epoch.set(Some(epoch));
    line
}

/// The model checks hand lines to their threads themselves; the library built for them (never
/// run) reads through the counted path.
#[cfg(loom)]
pub(crate) fn this_threads_line(_epoch: u64) -> Option<&'static Line> {
    None
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_published_read_is_seen_by_scans_of_its_epoch_only() {
        let table = Table::new();
        let line = table.claim(7).unwrap();
        let entry = line.publish(0x1000).unwrap();
        assert!(table.published(0x1000, 7));
        assert!(!table.published(0x2000, 7), "another secret");
        assert!(!table.published(0x1000, 8), "a forked child's scan");
        withdraw(entry);
        assert!(!table.published(0x1000, 7));
    }

    /// Every epoch names an owner that reads as neither free nor being claimed, and the
    /// epochs a process and its children have name different owners.
    #[test]
    fn every_epoch_names_an_owner_apart_from_free_and_claiming() {
        for epoch in [0, 1, 2, CLAIMING - 2, CLAIMING - 1, u64::MAX] {
            let owner = owner_in(epoch);
            assert!(owner != FREE && owner != CLAIMING, "{epoch}: {owner}");
        }
        assert_ne!(owner_in(0), owner_in(1));
        assert_ne!(owner_in(1), owner_in(2));
        assert_ne!(owner_in(CLAIMING - 3), owner_in(CLAIMING - 2));
    }

    /// Claiming a line decides how readers order their publications, once for the process:
    /// with the cheap side of an asymmetric barrier where the OS offers one, with a fence of
    /// their own otherwise.
    #[test]
    fn claiming_a_line_decides_the_publication_barrier() {
        let table = Table::new();
        table.claim(3).unwrap();
        let expected = if crate::sys::os_offers_barrier_all_threads() {
            ASYMMETRIC
        } else {
            FENCED
        };
        assert_eq!(
            PUBLICATION.load(std::sync::atomic::Ordering::Relaxed),
            expected
        );
    }

    /// Where the OS has no fork (Windows) the epoch is zero, which must not read as a free line.
    #[test]
    fn epoch_zero_claims_and_publishes_like_any_other() {
        let table = Table::new();
        let line = table.claim(0).unwrap();
        assert_ne!(line.owner.load(Ordering::Relaxed), FREE);
        line.publish(0x1000).unwrap();
        assert!(table.published(0x1000, 0));
        assert!(!std::ptr::eq(table.claim(0).unwrap(), line));
    }

    #[test]
    fn a_line_holds_reads_of_several_secrets_until_it_is_full() {
        let table = Table::new();
        let line = table.claim(1).unwrap();
        let entries: Vec<_> = (1..=ENTRIES)
            .map(|n| line.publish(n * 0x1000).expect("a free entry"))
            .collect();
        assert!(line.publish(0x9999_0000).is_none(), "a full line");
        withdraw(entries[3]);
        assert!(std::ptr::eq(line.publish(0xabc0).unwrap(), entries[3]));
        assert!((1..=ENTRIES)
            .filter(|&n| n != 4)
            .all(|n| table.published(n * 0x1000, 1)));
    }

    #[test]
    fn lines_are_claimed_once_each_and_reused_after_release() {
        let table = Table::new();
        let lines: Vec<&Line> = (0..LINES).map(|_| table.claim(1).unwrap()).collect();
        assert!(table.claim(1).is_none(), "every line is taken");
        let distinct: std::collections::HashSet<*const Line> =
            lines.iter().map(|line| *line as *const Line).collect();
        assert_eq!(distinct.len(), LINES);
        assert_eq!(table.claimed.load(Ordering::Relaxed), LINES);
        table.release(lines[5], 1);
        assert!(std::ptr::eq(table.claim(1).unwrap(), lines[5]));
    }

    #[test]
    fn a_line_left_with_a_read_published_is_never_reused() {
        let table = Table::new();
        let line = table.claim(1).unwrap();
        line.publish(0x1000).unwrap();
        table.release(line, 1);
        assert!(!std::ptr::eq(table.claim(1).unwrap(), line));
        assert!(table.published(0x1000, 1));
    }

    /// A forked child inherits the parent's lines with the reads its threads had published; the
    /// child's scans ignore them, and its threads take the lines over, cleared.
    #[test]
    fn a_forked_child_takes_over_the_parents_lines_cleared() {
        let table = Table::new();
        let parent = table.claim(1).unwrap();
        parent.publish(0x1000).unwrap();
        assert!(!table.published(0x1000, 2));
        let child = table.claim(2).unwrap();
        assert!(std::ptr::eq(child, parent), "the stale line is taken over");
        assert!(!table.published(0x1000, 1), "its entries were cleared");
        assert!(child.publish(0x1000).is_some());
        assert!(table.published(0x1000, 2));
        child.entries[0].store(0, Ordering::Relaxed);
        table.release(parent, 1);
        assert_eq!(
            child.owner.load(Ordering::Relaxed),
            owner_in(2),
            "the parent's thread gave away a line it no longer owns"
        );
    }

    /// With the real epoch: a made-up one would look like a forked parent's to the claims of
    /// other tests' threads, which would take this thread's line over (and theirs to it).
    #[test]
    fn this_threads_line_is_claimed_once_and_given_back_when_the_thread_exits() {
        let epoch = crate::sys::process_epoch();
        // More threads, one after the other, than the table has lines: each finds one only if
        // the ones before gave theirs back.
        for _ in 0..LINES + LINES / 4 {
            let (first, again) = std::thread::spawn(move || {
                let first = this_threads_line(epoch).expect("a line for a new thread");
                let again = this_threads_line(epoch).unwrap();
                (first as *const Line as usize, again as *const Line as usize)
            })
            .join()
            .unwrap();
            assert_eq!(first, again, "a thread claimed twice");
        }
    }
}
