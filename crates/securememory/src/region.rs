//! `Region`: one owned mapping laid out as `[guard][data pages][guard]`.
//!
//! The secret's bytes sit at the *end* of the data pages, right against the trailing guard, so
//! reading or writing even one byte past the end faults. Guard pages are reserved address space
//! that is never committed, never locked, and always inaccessible; with secret-memory backing
//! they cost no secret-memory quota because only the data pages are mapped from the
//! `memfd_secret` descriptor.
//!
//! The trailing guard catches overflows at once. An underflow is caught by the leading guard only
//! when it leaves the data pages; inside them, a canary covers exactly the [`CANARY_LEN`] (16)
//! bytes right before the secret: a per-process random pattern, checked after every write access
//! and on destruction. A write further before the secret, but still inside the first data page, is
//! not noticed. Where the page leaves fewer than [`MIN_CANARY_LEN`] (8) bytes before the secret,
//! there is no canary.
//!
//! The region hands out raw pointers only; turning them into slices is the caller's job, inside
//! an access window. Dropping a region wipes its bytes, unlocks and unmaps it.

use crate::access::{Gate, Mode};
use crate::error::Error;
use crate::policy::{Backing, MlockPolicy, Protection, Strategy};
use crate::sys::{self, OsError, PageProtection, ProtectionKey, Shortage};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;

/// The most bytes of canary placed before a secret (fewer when the data pages leave less room).
pub(crate) const CANARY_LEN: usize = 16;

/// The fewest bytes worth a canary: a shorter one would be matched by chance too often (one
/// stray byte in 256 for a single byte), so below this there is none, and none is reported.
pub(crate) const MIN_CANARY_LEN: usize = 8;

fn canary_pattern() -> &'static [u8; CANARY_LEN] {
    static PATTERN: OnceLock<[u8; CANARY_LEN]> = OnceLock::new();
    PATTERN.get_or_init(|| {
        let mut pattern = [0xa5; CANARY_LEN];
        // A fixed pattern still catches accidental writes, which is what the canary is for.
        if getrandom::fill(&mut pattern).is_err() {
            pattern = [0xa5; CANARY_LEN];
        }
        pattern
    })
}

/// Where a region's data pages come from: a [`Backing`] once `Auto` has been decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Memory {
    Anonymous,
    SecretMem,
}

impl Memory {
    /// The backing a report names for this memory.
    pub(crate) fn backing(self) -> Backing {
        match self {
            Memory::SecretMem => Backing::SecretMem,
            Memory::Anonymous => Backing::Anonymous,
        }
    }
}

pub(crate) struct Region {
    base: NonNull<u8>,
    total_len: usize,
    data: NonNull<u8>,
    data_len: usize,
    len: usize,
    memory: Memory,
    locked: bool,
    /// The protection key the data pages are tagged with (`Strategy::ProtectionKey`); `None` when
    /// they are opened by page protection.
    key: Option<ProtectionKey>,
    /// The process epoch the region was made in: another one means a forked child.
    epoch: u64,
    /// Where the current epoch is read from (`sys::epoch_word`).
    epoch_word: &'static AtomicU64,
    released: AtomicBool,
    /// What the region got (set once its pages are committed).
    protection: Protection,
}

// SAFETY: a region is a plain owned mapping; every touch of its bytes goes through the access
// protocol in `access`, which serialises protection changes and excludes writers from readers.
unsafe impl Send for Region {}
// SAFETY: as above; `&Region` exposes only raw pointers and protection changes.
unsafe impl Sync for Region {}

/// Page-rounded sizes of a region for a secret of `len` bytes, or `None` when it cannot be mapped.
fn layout(len: usize, page: usize, guard_pages: bool) -> Option<(usize, usize)> {
    if len == 0 {
        return None;
    }
    let data_len = len.checked_next_multiple_of(page)?;
    let guard_len = if guard_pages { page } else { 0 };
    let total = data_len.checked_add(2 * guard_len)?;
    (total <= isize::MAX as usize).then_some((data_len, guard_len))
}

/// Data pages from this size up are checked against the memory the process can still get
/// before they are touched. Below it, the check would cost more than the secret.
pub(crate) const CHECKED_SIZE: usize = 1 << 20;

/// Refuses a secret that could not be held in RAM, while no page of it is touched yet: locked
/// and secret memory cannot be swapped out, and the kernel answers a fault it cannot satisfy
/// with the OOM killer, not an error.
fn refuse_if_it_cannot_fit(data_len: usize) -> Result<(), Error> {
    if data_len < CHECKED_SIZE {
        return Ok(());
    }
    match sys::memory_available() {
        Some(available) if u64::try_from(data_len).map_or(true, |n| n > available) => {
            Err(Error::InsufficientMemory {
                requested: data_len,
                available,
            })
        }
        _ => Ok(()),
    }
}

/// The error for a refused map or lock call: the limit that ran short when one did, the call and
/// its OS error otherwise.
fn shortage(error: OsError, requested: usize, memory: Memory) -> Error {
    match sys::diagnose(&error, requested) {
        Some(Shortage::LockLimit) => Error::MemoryLockLimit {
            requested,
            limit: sys::memlock_limit(),
            backing: memory.backing(),
            source: error.source,
        },
        Some(Shortage::MapCount { in_use, limit }) => Error::MapCountLimit {
            in_use,
            limit,
            source: error.source,
        },
        Some(Shortage::Memory) | None => error.into(),
    }
}

impl Region {
    /// Maps a region for `len` bytes and leaves its data pages readable and writable, for the
    /// caller to fill and then [`Gate::conceal`].
    pub(crate) fn new(
        len: usize,
        memory: Memory,
        mlock: MlockPolicy,
        guard_pages: bool,
        key: Option<ProtectionKey>,
    ) -> Result<(Region, Protection), Error> {
        let page = sys::page_size();
        let (data_len, guard_len) = layout(len, page, guard_pages).ok_or(Error::InvalidLength)?;
        let total_len = data_len + 2 * guard_len;
        refuse_if_it_cannot_fit(data_len)?;
        let epoch = sys::process_epoch();
        let epoch_word = sys::epoch_word();
        let base = sys::reserve(total_len).map_err(|e| shortage(e, data_len, memory))?;
        // SAFETY: guard_len < total_len, so the data pages start inside the reservation.
        let data = unsafe { base.add(guard_len) };
        // From here on, dropping `region` unmaps the reservation (nothing is in it to wipe yet).
        let mut region = Region {
            base,
            total_len,
            data,
            data_len,
            len,
            memory,
            locked: false,
            key,
            epoch,
            epoch_word,
            released: AtomicBool::new(false),
            protection: Protection {
                strategy: Strategy::PageProtection,
                backing: memory.backing(),
                locked: false,
                dump_excluded: false,
                fork_protected: false,
                guard_pages: false,
                canary: false,
                kernel_invisible: false,
            },
        };
        match region.commit(mlock) {
            Ok(obtained) => {
                region.protection = obtained;
                Ok((region, obtained))
            }
            Err(error) => {
                region.unmap_unfilled();
                Err(error)
            }
        }
    }

    /// Unmaps a region that never held secret bytes, skipping the wipe (which could not work
    /// when committing the pages was what failed).
    fn unmap_unfilled(&self) {
        self.released.store(true, Ordering::Release);
        // SAFETY: exactly the reservation made in `new`; nothing uses it after this.
        if let Err(e) = unsafe { sys::unmap(self.base, self.total_len) } {
            log::error!(
                "unmapping an unfilled secret region failed: {}",
                Error::from(e)
            );
        }
    }

    fn commit(&mut self, mlock: MlockPolicy) -> Result<Protection, Error> {
        let (data, data_len) = (self.data, self.data_len);
        let secretmem = self.memory == Memory::SecretMem;
        let fork_protected = if secretmem {
            // From the descriptor's birth until the mapping is kept from children, no fork may
            // happen: a child would inherit the descriptor or the shared mapping and see every
            // later write. Errors are only interpreted once forks are allowed again.
            let mapped = {
                let _no_fork = sys::ForkExclusion::hold();
                // SAFETY: the data pages lie inside our reservation and hold nothing yet.
                unsafe { sys::map_secretmem(data, data_len) }.and_then(|()| {
                    // SAFETY: just mapped pages of our reservation.
                    unsafe { sys::exclude_from_fork(data, data_len, true) }
                })
            };
            // The kernel locks secret memory itself (charging it to RLIMIT_MEMLOCK) and
            // excludes it from dumps.
            mapped.map_err(|e| self.shortage(e))?
        } else {
            // SAFETY: the data pages lie inside our reservation and hold nothing yet.
            unsafe { sys::commit_anonymous(data, data_len) }.map_err(|e| self.shortage(e))?;
            false
        };
        if secretmem {
            self.locked = true;
        } else if mlock != MlockPolicy::Disabled {
            // SAFETY: committed, readable and writable pages of our reservation.
            match unsafe { sys::lock(data, data_len) } {
                Ok(()) => self.locked = true,
                Err(error) => match self.shortage(error) {
                    Error::MemoryLockLimit { .. } if mlock == MlockPolicy::BestEffort => {}
                    error => return Err(error),
                },
            }
        }
        let dump_excluded = if secretmem {
            true
        } else {
            // SAFETY: committed pages of our reservation.
            unsafe { sys::exclude_from_dump(data, data_len) }?
        };
        let fork_protected = if secretmem {
            fork_protected
        } else {
            // SAFETY: committed pages of our reservation.
            unsafe { sys::exclude_from_fork(data, data_len, false) }?
        };
        self.write_canary();
        Ok(Protection {
            strategy: if self.key.is_some() {
                Strategy::ProtectionKey
            } else {
                Strategy::PageProtection
            },
            backing: self.memory.backing(),
            locked: self.locked,
            dump_excluded,
            fork_protected,
            guard_pages: self.total_len > self.data_len,
            canary: self.canary_len() > 0,
            kernel_invisible: secretmem,
        })
    }

    /// The error for a refused map or lock call on the data pages.
    fn shortage(&self, error: OsError) -> Error {
        shortage(error, self.data_len, self.memory)
    }

    /// The first byte of the secret (right-aligned against the trailing guard).
    #[inline]
    pub(crate) fn bytes(&self) -> NonNull<u8> {
        // SAFETY: len <= data_len, so the result stays inside the data pages.
        unsafe { self.data.add(self.data_len - self.len) }
    }

    /// The secret's length in bytes.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// How many bytes of the region are locked in RAM: its data pages when they are locked
    /// (secret memory always is), none otherwise. Guard pages are never locked.
    pub(crate) fn locked_len(&self) -> usize {
        if self.locked {
            self.data_len
        } else {
            0
        }
    }

    /// The canary's length: the room left before the secret in its first data page, up to
    /// [`CANARY_LEN`], or zero when that room is under [`MIN_CANARY_LEN`].
    fn canary_len(&self) -> usize {
        let room = self.data_len - self.len;
        if room < MIN_CANARY_LEN {
            0
        } else {
            room.min(CANARY_LEN)
        }
    }

    fn canary(&self) -> NonNull<u8> {
        // SAFETY: canary_len <= data_len - len, so the canary stays inside the data pages.
        unsafe { self.bytes().sub(self.canary_len()) }
    }

    /// Writes the canary. The pages must be writable and no access in flight.
    fn write_canary(&self) {
        let len = self.canary_len();
        // SAFETY: the canary lies in the data pages, which are writable here (just committed),
        // and nothing else refers to those bytes.
        let canary = unsafe { std::slice::from_raw_parts_mut(self.canary().as_ptr(), len) };
        canary.copy_from_slice(&canary_pattern()[..len]);
    }

    /// Whether the canary before the secret is intact. The pages must be readable (inside an
    /// access, or during destruction).
    pub(crate) fn canary_intact(&self) -> bool {
        let len = self.canary_len();
        // SAFETY: the canary lies in the data pages, readable per the caller; no one writes the
        // canary bytes through a reference (only a stray out-of-bounds write could).
        let canary = unsafe { std::slice::from_raw_parts(self.canary().as_ptr(), len) };
        canary == &canary_pattern()[..len]
    }

    /// Makes freshly filled pages inaccessible while idle: no access at all under page
    /// protection; tagged with the protection key (which every thread's rights deny) otherwise.
    pub(crate) fn conceal_when_idle(&self) -> Result<(), Error> {
        match self.key {
            // SAFETY: committed pages of our live reservation; the filling slice is dead.
            Some(key) => unsafe { key.tag(self.data, self.data_len) }.map_err(Error::from),
            None => self.set_protection(PageProtection::NoAccess),
        }
    }

    /// Makes the filled page of a sealing key inaccessible except through a window where it is
    /// tagged with a protection key; read-only to every thread otherwise (it is read at every
    /// access, which must not pay a system call).
    pub(crate) fn conceal_keeper(&self) -> Result<(), Error> {
        match self.key {
            Some(_) => self.conceal_when_idle(),
            None => self.set_protection(PageProtection::ReadOnly),
        }
    }

    /// The epoch the region was made in and where the current one is read, for whoever must
    /// tell a forked child without the region at hand.
    pub(crate) fn epoch_witness(&self) -> (u64, &'static AtomicU64) {
        (self.epoch, self.epoch_word)
    }

    /// What the region got.
    pub(crate) fn protection(&self) -> Protection {
        self.protection
    }

    /// Where the data pages come from.
    pub(crate) fn memory(&self) -> Memory {
        self.memory
    }

    /// Opens the calling thread's window onto the pages for the duration of the returned guard,
    /// where they are tagged with a protection key; does nothing under page protection (the
    /// access protocol's expose has opened them for every thread). `outermost` says that no
    /// other window is open on this thread: closing it then closes the key whatever the rights
    /// were when it opened.
    #[inline]
    pub(crate) fn open_window(&self, mode: Mode, outermost: bool) -> Window {
        match self.key {
            Some(key) => Window(Some((key, key.open(mode == Mode::Write), outermost))),
            None => Window(None),
        }
    }

    /// Whether this process is a fork of the one that made the region.
    #[inline]
    pub(crate) fn in_forked_child(&self) -> bool {
        // Relaxed: the epoch word changes only across a fork, which orders everything.
        self.epoch_word.load(Ordering::Relaxed) != self.epoch
    }

    fn set_protection(&self, prot: PageProtection) -> Result<(), Error> {
        // SAFETY: the data pages are committed pages of our live reservation; the access protocol
        // guarantees no slice into them outlives the access that the change ends.
        unsafe { sys::protect(self.data, self.data_len, prot) }.map_err(Error::from)
    }

    /// Wipes the secret, unlocks and unmaps. Runs once; later calls do nothing.
    ///
    /// When the pages cannot be made writable for wiping, they are left mapped, inaccessible and
    /// locked (leaked) rather than returned to the OS with the secret in them.
    pub(crate) fn destroy(&self) -> Result<(), Error> {
        if self.released.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let mut first_error = None;
        // A forked child holds zeros (MADV_WIPEONFORK) or nothing at all (MADV_DONTFORK) here.
        if !self.in_forked_child() {
            match self.key {
                // SAFETY: committed pages of our live reservation; no access is in flight.
                Some(_) => unsafe { sys::untag(self.data, self.data_len) }?,
                None => self.set_protection(PageProtection::ReadWrite)?,
            }
            if !self.canary_intact() {
                first_error = Some(Error::Corrupted);
            }
            // SAFETY: the pages are writable, and no access is in flight (the caller holds the
            // access protocol closed), so this is the only reference to the bytes.
            let bytes = unsafe { std::slice::from_raw_parts_mut(self.bytes().as_ptr(), self.len) };
            zeroize::Zeroize::zeroize(bytes);
            if self.locked && self.memory == Memory::Anonymous {
                // SAFETY: committed pages of our reservation.
                if let Err(e) = unsafe { sys::unlock(self.data, self.data_len) } {
                    first_error.get_or_insert(e.into());
                }
            }
        }
        if let Err(e) = self.unmap() {
            first_error.get_or_insert(e.into());
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Unmaps the reservation. In a forked child whose data pages were left out of the fork,
    /// only the guard pages are ours: the child may have mapped something else where the data
    /// pages were, and that must survive.
    fn unmap(&self) -> Result<(), OsError> {
        let secretmem = self.memory == Memory::SecretMem;
        if !self.in_forked_child() || sys::child_keeps_data_mapping(secretmem) {
            // SAFETY: exactly the reservation made in `new`; nothing uses it after this.
            return unsafe { sys::unmap(self.base, self.total_len) };
        }
        let guard_len = (self.total_len - self.data_len) / 2;
        if guard_len == 0 {
            return Ok(());
        }
        // SAFETY: the data pages end inside the reservation.
        let trailing = unsafe { self.data.add(self.data_len) };
        // SAFETY: the two guard ranges of our reservation (the child inherited them); a
        // forked child is a Unix process, where part of a mapping can be unmapped.
        unsafe { sys::unmap(self.base, guard_len) }?;
        // SAFETY: as above.
        unsafe { sys::unmap(trailing, guard_len) }
    }
}

/// Under a protection key, each access opens the key on its own thread only: exposing and
/// concealing the memory for everyone is then nothing to do.
impl Gate for Region {
    #[inline]
    fn expose(&self, mode: Mode) -> Result<(), Error> {
        if self.key.is_some() {
            return Ok(());
        }
        self.set_protection(match mode {
            Mode::Read => PageProtection::ReadOnly,
            Mode::Write => PageProtection::ReadWrite,
        })
    }

    #[inline]
    fn conceal(&self) -> Result<(), Error> {
        if self.key.is_some() {
            return Ok(());
        }
        self.set_protection(PageProtection::NoAccess)
    }

    #[inline]
    fn shared(&self) -> bool {
        self.key.is_none()
    }

    #[inline]
    fn inherited(&self) -> bool {
        self.in_forked_child()
    }

    #[inline]
    fn epoch(&self) -> u64 {
        self.epoch
    }
}

/// The calling thread's open protection-key window onto a region, closed on drop (panics
/// included): the key, the rights found when it opened, and whether it is the thread's
/// outermost window. Empty under page protection.
pub(crate) struct Window(Option<(ProtectionKey, u32, bool)>);

impl Window {
    /// Whether a protection-key window was opened.
    #[inline]
    pub(crate) fn is_open(&self) -> bool {
        self.0.is_some()
    }
}

impl Drop for Window {
    #[inline]
    fn drop(&mut self) {
        if let Some((key, found, outermost)) = self.0 {
            key.close(found, outermost);
        }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        if let Err(error) = self.destroy() {
            log::error!("releasing secret memory failed: {error}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_rounds_to_pages_and_adds_guards() {
        assert_eq!(layout(1, 4096, true), Some((4096, 4096)));
        assert_eq!(layout(4096, 4096, true), Some((4096, 4096)));
        assert_eq!(layout(4097, 4096, false), Some((8192, 0)));
    }

    #[test]
    fn layout_refuses_zero_and_unmappable_lengths() {
        assert_eq!(layout(0, 4096, true), None);
        assert_eq!(layout(usize::MAX, 4096, true), None);
        assert_eq!(layout(isize::MAX as usize, 4096, true), None);
    }

    /// The guard pages count against the largest mapping too: both of them.
    #[test]
    fn layout_counts_both_guard_pages_against_the_largest_mapping() {
        let largest = isize::MAX as usize + 1;
        assert_eq!(layout(largest - 2 * 4096, 4096, true), None);
        assert_eq!(
            layout(largest - 3 * 4096, 4096, true),
            Some((largest - 3 * 4096, 4096))
        );
        assert_eq!(
            layout(largest - 4096, 4096, false),
            Some((largest - 4096, 0))
        );
    }
}
