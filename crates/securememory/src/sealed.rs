//! Sealed secrets (`Strategy::Sealed`): the bytes exist at rest only as AES-256-GCM ciphertext
//! in ordinary heap memory; an access decrypts them into the calling thread's scratch area and
//! wipes it before returning.
//!
//! Three places hold something:
//!
//! - **The keeper** ([`Keeper`]): one guarded, locked, dump- and fork-excluded page per process
//!   (secret memory where the kernel offers it) holding the cipher's expanded key. Its key is
//!   generated in place and never leaves the page. Where the CPU has protection keys the page is
//!   tagged with the library's key and opened for the calling thread only while it encrypts or
//!   decrypts; elsewhere it is read-only to the whole process. A forked child gets a keeper of its
//!   own with a fresh key on first use (its parent's page is not mapped there, or holds zeros).
//! - **The scratch area** ([`Plaintext`]): per thread and per nesting depth, a guarded, locked
//!   mapping (secret memory where possible) into which an access decrypts, the bytes right
//!   against the trailing guard page so an overflow faults. It is wiped when the access ends,
//!   panics included, and holds zeros the rest of the time. Areas up to [`KEPT_SCRATCH_PAGES`]
//!   are kept for the thread's next access and freed when it exits; a larger secret gets one of
//!   its own for the duration of the access.
//! - **The ciphertext** ([`Sealed`]): one heap allocation per secret, `[counter][tag][ciphertext]`,
//!   wiped and freed on close. No mapping, no locked memory, no system call to make or free it.
//!
//! Nonces are 96 bits: a process-wide 64-bit counter (one per key, which is per process epoch)
//! followed by zeros, so a nonce is never used twice under one key; a secret stores only the
//! counter. Every seal takes a fresh one:
//! creation, and each `with_bytes_mut`. The associated data is the ciphertext's address, so
//! ciphertexts moved between secrets fail authentication as tampered ones do: with
//! [`Error::Corrupted`], never with garbage.
//!
//! The cipher's own stack frames may leave key stream (which XORed with the ciphertext gives
//! the plaintext) below the caller's stack pointer: each seal and open wipes
//! [`SCRUBBED_STACK`] bytes there afterwards.

use crate::access::{Gate, Mode};
use crate::error::Error;
use crate::policy::{MlockPolicy, Protection, Strategy};
use crate::region::{Memory, Region};
use crate::sys;
use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Key, Nonce, Tag};
use std::alloc::{self, Layout};
use std::cell::{Cell, UnsafeCell};
use std::mem::{align_of, size_of};
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};

const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;
/// What is stored of a nonce: its counter (the rest is zeros).
const COUNTER_LEN: usize = 8;
const TAG_LEN: usize = 16;
/// Where the ciphertext starts in a sealed secret's allocation.
const HEADER_LEN: usize = COUNTER_LEN + TAG_LEN;

/// The longest plaintext AES-GCM takes under one nonce (2^36 - 32 bytes).
const MAX_LEN: u64 = (1 << 36) - 32;

/// How much stack below the caller a seal or an open wipes. Optimised, the cipher's frames use
/// about 800 bytes; unoptimised (its generic code is built with the calling crate's profile),
/// about 11 KiB. `tests::the_cipher_stays_within_the_scrubbed_stack` checks the build it runs
/// in, and `tests::the_cipher_leaves_no_key_stream_on_the_stack` what an access leaves.
pub(crate) const SCRUBBED_STACK: usize = if cfg!(debug_assertions) {
    32 * 1024
} else {
    1536
};

/// Scratch areas up to this many pages are kept per thread and depth; a larger secret gets an
/// area of its own for each access, so that one large secret does not pin locked memory in every
/// thread that ever read it.
pub(crate) const KEPT_SCRATCH_PAGES: usize = 4;

/// Zeroes [`SCRUBBED_STACK`] bytes of stack below the caller's frame, where the frames of the
/// call it made just before lay.
#[inline(always)]
fn scrub_stack() {
    scrub_stack_of::<SCRUBBED_STACK>();
}

/// Zeroes `N` bytes of stack below the caller's frame.
#[inline(never)]
fn scrub_stack_of<const N: usize>() {
    let mut area = [0u8; N];
    // SAFETY: a local array; `write_bytes` is a plain memset that `black_box` keeps.
    unsafe { ptr::write_bytes(area.as_mut_ptr(), 0, N) };
    std::hint::black_box(&mut area);
}

/// How much stack below it the making of a keeper wipes: building the key schedule returns a
/// kilobyte of state by value and expands the key in temporaries of its own, deeper than a seal
/// or an open goes. Once per process.
const SCRUBBED_AFTER_KEY_SETUP: usize = 16 * 1024;

/// Builds the cipher for `key` at `place`, in a frame of its own below the caller's, which the
/// caller then scrubs.
///
/// # Safety
/// `place` must be valid for writing an `Aes256Gcm` and aligned for it.
#[inline(never)]
unsafe fn build_cipher(key: &[u8], place: *mut Aes256Gcm) {
    assert_eq!(
        place as usize % align_of::<Aes256Gcm>(),
        0,
        "misaligned cipher"
    );
    // SAFETY: forwarded from the caller; writing does not read the old contents.
    unsafe { place.write(Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key))) };
}

/// Zeroes the vector registers the cipher uses (AES-NI and carry-less multiplication work in
/// them): round keys and key stream would otherwise stay there until other code overwrites them.
#[inline(always)]
fn clear_vector_registers() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: only zeroes registers the compiler is told are clobbered; no memory, no stack.
    unsafe {
        std::arch::asm!(
            "xorps xmm0, xmm0",
            "xorps xmm1, xmm1",
            "xorps xmm2, xmm2",
            "xorps xmm3, xmm3",
            "xorps xmm4, xmm4",
            "xorps xmm5, xmm5",
            "xorps xmm6, xmm6",
            "xorps xmm7, xmm7",
            "xorps xmm8, xmm8",
            "xorps xmm9, xmm9",
            "xorps xmm10, xmm10",
            "xorps xmm11, xmm11",
            "xorps xmm12, xmm12",
            "xorps xmm13, xmm13",
            "xorps xmm14, xmm14",
            "xorps xmm15, xmm15",
            out("xmm0") _, out("xmm1") _, out("xmm2") _, out("xmm3") _,
            out("xmm4") _, out("xmm5") _, out("xmm6") _, out("xmm7") _,
            out("xmm8") _, out("xmm9") _, out("xmm10") _, out("xmm11") _,
            out("xmm12") _, out("xmm13") _, out("xmm14") _, out("xmm15") _,
            options(nomem, nostack, preserves_flags),
        );
    }
    #[cfg(target_arch = "aarch64")]
    // SAFETY: as above, for all 32 NEON registers (the ABI restores only the low halves of
    // v8-v15 on return, so the cipher's use of them leaves their high halves behind).
    unsafe {
        std::arch::asm!(
            "movi v0.16b, #0",
            "movi v1.16b, #0",
            "movi v2.16b, #0",
            "movi v3.16b, #0",
            "movi v4.16b, #0",
            "movi v5.16b, #0",
            "movi v6.16b, #0",
            "movi v7.16b, #0",
            "movi v8.16b, #0",
            "movi v9.16b, #0",
            "movi v10.16b, #0",
            "movi v11.16b, #0",
            "movi v12.16b, #0",
            "movi v13.16b, #0",
            "movi v14.16b, #0",
            "movi v15.16b, #0",
            "movi v16.16b, #0",
            "movi v17.16b, #0",
            "movi v18.16b, #0",
            "movi v19.16b, #0",
            "movi v20.16b, #0",
            "movi v21.16b, #0",
            "movi v22.16b, #0",
            "movi v23.16b, #0",
            "movi v24.16b, #0",
            "movi v25.16b, #0",
            "movi v26.16b, #0",
            "movi v27.16b, #0",
            "movi v28.16b, #0",
            "movi v29.16b, #0",
            "movi v30.16b, #0",
            "movi v31.16b, #0",
            out("v0") _, out("v1") _, out("v2") _, out("v3") _,
            out("v4") _, out("v5") _, out("v6") _, out("v7") _,
            out("v8") _, out("v9") _, out("v10") _, out("v11") _,
            out("v12") _, out("v13") _, out("v14") _, out("v15") _,
            out("v16") _, out("v17") _, out("v18") _, out("v19") _,
            out("v20") _, out("v21") _, out("v22") _, out("v23") _,
            out("v24") _, out("v25") _, out("v26") _, out("v27") _,
            out("v28") _, out("v29") _, out("v30") _, out("v31") _,
            options(nomem, nostack, preserves_flags),
        );
    }
}

/// Copies zeros of the cipher state's size through `memcpy`. Building the cipher moves its state
/// into the page with `memcpy`, which on CPUs with AVX-512 runs through vector registers that
/// compiled code never uses (glibc's EVEX variants use the upper sixteen) and so that nothing
/// else overwrites soon; a copy of the same size goes through the same registers.
#[inline(never)]
fn flush_copy_registers() {
    let zeros = [0u8; size_of::<Aes256Gcm>()];
    let mut sink = [0u8; size_of::<Aes256Gcm>()];
    // SAFETY: two distinct local arrays of the copied length.
    unsafe {
        ptr::copy_nonoverlapping(
            std::hint::black_box(zeros.as_ptr()),
            std::hint::black_box(sink.as_mut_ptr()),
            size_of::<Aes256Gcm>(),
        );
    }
    std::hint::black_box(&mut sink);
}

/// The process's cipher for one kind of memory: its expanded key in a guarded page.
pub(crate) struct Keeper {
    /// `[key][cipher]`, right-aligned in the region's data page: the raw key (wiped once the
    /// cipher is built) and the expanded cipher state.
    region: Region,
    protection: Protection,
    /// The next nonce's counter.
    nonces: AtomicU64,
}

/// The region's bytes: the raw key, then the cipher (kept 16-aligned by the right alignment).
const KEEPER_LEN: usize = KEY_LEN + size_of::<Aes256Gcm>().next_multiple_of(16);

/// The keepers of the current process epoch, by kind of memory (anonymous, secret memory).
/// Never freed: a page per kind per process. A forked child replaces its parent's (see
/// [`Keeper::get`]).
static KEEPERS: [AtomicPtr<Keeper>; 2] = [
    AtomicPtr::new(ptr::null_mut()),
    AtomicPtr::new(ptr::null_mut()),
];

fn memory_index(memory: Memory) -> usize {
    match memory {
        Memory::Anonymous => 0,
        Memory::SecretMem => 1,
    }
}

impl Keeper {
    /// The keeper of this process for `memory`, made on first use.
    ///
    /// # Errors
    /// What mapping and locking one page can meet ([`Error::MemoryLockLimit`] and the like),
    /// [`Error::Random`] when no key can be generated, the tagging of the page.
    pub(crate) fn get(memory: Memory) -> Result<&'static Keeper, Error> {
        let slot = &KEEPERS[memory_index(memory)];
        loop {
            // Acquire: pairs with the Release that published the keeper.
            let current = slot.load(Ordering::Acquire);
            // SAFETY: a published keeper is never freed.
            if let Some(keeper) = unsafe { current.as_ref() } {
                if !keeper.region.in_forked_child() {
                    return Ok(keeper);
                }
            }
            let fresh = Box::into_raw(Box::new(Keeper::new(memory)?));
            // Release: publishes the keeper. One replaced (a parent's, in a forked child) is
            // leaked: its page is not this process's to unmap.
            match slot.compare_exchange(current, fresh, Ordering::AcqRel, Ordering::Acquire) {
                // SAFETY: just published; never freed.
                Ok(_) => return Ok(unsafe { &*fresh }),
                // SAFETY: ours, never published; dropping it wipes and unmaps its page.
                Err(_) => drop(unsafe { Box::from_raw(fresh) }),
            }
        }
    }

    fn new(memory: Memory) -> Result<Keeper, Error> {
        let key = sys::protection_key().ok();
        let (region, protection) =
            Region::new(KEEPER_LEN, memory, MlockPolicy::Required, true, key)?;
        let raw_key = region.bytes();
        // SAFETY: the region's bytes are readable and writable (just mapped) and nothing else
        // refers to them.
        let key_bytes = unsafe { std::slice::from_raw_parts_mut(raw_key.as_ptr(), KEY_LEN) };
        getrandom::fill(key_bytes).map_err(Error::from_random)?;
        // SAFETY: the cipher's place lies inside the region's bytes, after the key.
        let place = unsafe { raw_key.as_ptr().add(KEY_LEN).cast::<Aes256Gcm>() };
        // SAFETY: the place is inside the writable region, aligned, and holds nothing yet.
        unsafe { build_cipher(key_bytes, place) };
        flush_copy_registers();
        zeroize::Zeroize::zeroize(key_bytes);
        // The key schedule was built in `build_cipher`'s frame, below this one, and in vector
        // registers.
        clear_vector_registers();
        scrub_stack_of::<SCRUBBED_AFTER_KEY_SETUP>();
        region.conceal_keeper()?;
        Ok(Keeper {
            region,
            protection,
            nonces: AtomicU64::new(0),
        })
    }

    /// Runs `seal_or_open` with the cipher, its page open for this thread only (protection
    /// keys) for the duration, then wipes the stack the cipher used. `outermost`: no other
    /// protection-key window is open on this thread.
    #[inline(always)]
    fn with_cipher<R>(&self, outermost: bool, seal_or_open: impl FnOnce(&Aes256Gcm) -> R) -> R {
        let result = self.run_cipher(outermost, seal_or_open);
        // The cipher's frames all lay below this one (`run_cipher` is never inlined), where
        // this wipes; its round keys and key stream stay in vector registers otherwise, which
        // ptrace, core dumps and a forked child's copy of them would show.
        clear_vector_registers();
        scrub_stack();
        result
    }

    /// Opens the key page for this thread (protection keys), runs `seal_or_open`, closes it.
    /// In a frame of its own, so that nothing of the cipher's is left in the caller's.
    #[inline(never)]
    fn run_cipher<R>(&self, outermost: bool, seal_or_open: impl FnOnce(&Aes256Gcm) -> R) -> R {
        let window = self.region.open_window(Mode::Read, outermost);
        // SAFETY: the cipher was written in `new` and is never moved or written again until
        // the keeper is dropped (never, once published); the window makes the page readable.
        let cipher = unsafe {
            &*self
                .region
                .bytes()
                .as_ptr()
                .add(KEY_LEN)
                .cast::<Aes256Gcm>()
        };
        let result = seal_or_open(cipher);
        drop(window);
        result
    }

    /// The counter of a nonce never used before under this keeper's key.
    fn next_nonce(&self) -> [u8; COUNTER_LEN] {
        let count = self.nonces.fetch_add(1, Ordering::Relaxed);
        assert!(count < u64::MAX, "the nonces of a sealing key ran out");
        count.to_le_bytes()
    }

    /// What the keeper's page got (locked, dump- and fork-excluded, secret memory), as the
    /// protection of every secret it seals.
    pub(crate) fn protection(&self) -> Protection {
        Protection {
            strategy: Strategy::Sealed,
            guard_pages: true,
            canary: false,
            ..self.protection
        }
    }

    pub(crate) fn memory(&self) -> Memory {
        self.region.memory()
    }
}

/// One sealed secret: its ciphertext and the keeper that sealed it.
pub(crate) struct Sealed {
    /// `[nonce counter][tag][ciphertext]`, `HEADER_LEN + len` bytes from the global allocator.
    sealed: NonNull<u8>,
    len: usize,
    keeper: &'static Keeper,
    released: AtomicBool,
}

// SAFETY: the allocation is owned; its bytes are written only under an exclusive write access
// (or before the secret is shared, or by the one teardown), read under a read access.
unsafe impl Send for Sealed {}
// SAFETY: as above.
unsafe impl Sync for Sealed {}

/// The nonce whose stored counter is `counter`: the counter, then zeros.
fn nonce(counter: &[u8]) -> [u8; NONCE_LEN] {
    let mut nonce = [0; NONCE_LEN];
    nonce[..COUNTER_LEN].copy_from_slice(counter);
    nonce
}

fn ciphertext_layout(len: usize) -> Option<Layout> {
    Layout::from_size_align(HEADER_LEN.checked_add(len)?, 8).ok()
}

impl Sealed {
    /// Seals `plaintext` (filled by the caller) under `keeper` into a new allocation. Wipes the
    /// scratch area when `plaintext` is dropped, success or not.
    pub(crate) fn seal(
        keeper: &'static Keeper,
        mut plaintext: Plaintext,
        outermost: bool,
    ) -> Result<Sealed, Error> {
        let len = plaintext.len;
        let layout = ciphertext_layout(len).ok_or(Error::InvalidLength)?;
        // SAFETY: the layout is not zero-sized.
        let sealed = NonNull::new(unsafe { alloc::alloc_zeroed(layout) })
            .unwrap_or_else(|| alloc::handle_alloc_error(layout));
        let sealed = Sealed {
            sealed,
            len,
            keeper,
            released: AtomicBool::new(false),
        };
        sealed.reseal(&mut plaintext, outermost)?;
        Ok(sealed)
    }

    /// The longest secret a seal takes.
    pub(crate) fn check_len(len: usize) -> Result<(), Error> {
        if len == 0 || u64::try_from(len).map_or(true, |len| len > MAX_LEN) {
            return Err(Error::InvalidLength);
        }
        ciphertext_layout(len)
            .map(|_| ())
            .ok_or(Error::InvalidLength)
    }

    /// The secret's length in bytes.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The associated data: where the ciphertext lives.
    #[inline]
    fn aad(&self) -> [u8; 8] {
        (self.sealed.as_ptr() as u64).to_le_bytes()
    }

    /// Decrypts into this thread's scratch area. The caller holds a read (or write) access.
    ///
    /// # Errors
    /// [`Error::Corrupted`] when the ciphertext fails authentication (the scratch area is
    /// wiped); what making a scratch area can meet.
    #[inline]
    pub(crate) fn open(&self, outermost: bool) -> Result<Plaintext, Error> {
        let mut plaintext = Plaintext::take(self.keeper.memory(), self.len)?;
        // SAFETY: the allocation holds HEADER_LEN + len bytes; the caller's access excludes
        // writers, so nothing writes them meanwhile.
        let stored = unsafe { std::slice::from_raw_parts(self.sealed.as_ptr(), HEADER_LEN) };
        let (counter, tag) = stored.split_at(COUNTER_LEN);
        let nonce = nonce(counter);
        let buffer = plaintext.bytes_mut();
        // SAFETY: as above.
        buffer.copy_from_slice(unsafe {
            std::slice::from_raw_parts(self.sealed.as_ptr().add(HEADER_LEN), self.len)
        });
        let aad = self.aad();
        let authentic = self.keeper.with_cipher(outermost, |cipher| {
            cipher
                .decrypt_in_place_detached(
                    Nonce::from_slice(&nonce),
                    &aad,
                    buffer,
                    Tag::from_slice(tag),
                )
                .is_ok()
        });
        if authentic {
            Ok(plaintext)
        } else {
            Err(Error::Corrupted)
        }
    }

    /// Seals the (changed) plaintext again under a fresh nonce, in place of the old ciphertext.
    /// The caller holds the exclusive write access (or the secret is not shared yet).
    pub(crate) fn reseal(&self, plaintext: &mut Plaintext, outermost: bool) -> Result<(), Error> {
        let counter = self.keeper.next_nonce();
        let nonce = nonce(&counter);
        let aad = self.aad();
        let buffer = plaintext.bytes_mut();
        let tag = self
            .keeper
            .with_cipher(outermost, |cipher| {
                cipher.encrypt_in_place_detached(Nonce::from_slice(&nonce), &aad, buffer)
            })
            .map_err(|_| Error::InvalidLength)?;
        // SAFETY: the allocation holds HEADER_LEN + len bytes, and the caller's exclusive
        // access means no one reads them meanwhile.
        let stored =
            unsafe { std::slice::from_raw_parts_mut(self.sealed.as_ptr(), HEADER_LEN + self.len) };
        stored[..COUNTER_LEN].copy_from_slice(&counter);
        stored[COUNTER_LEN..HEADER_LEN].copy_from_slice(&tag);
        stored[HEADER_LEN..].copy_from_slice(buffer);
        Ok(())
    }

    /// The stored `[nonce counter][tag][ciphertext]`, for the library's own tests to read and tamper
    /// with.
    #[cfg(all(test, not(loom)))]
    pub(crate) fn stored(&self) -> *mut [u8] {
        ptr::slice_from_raw_parts_mut(self.sealed.as_ptr(), HEADER_LEN + self.len)
    }

    /// What the secret got: the protection of its key page and scratch memory.
    pub(crate) fn protection(&self) -> Protection {
        self.keeper.protection()
    }

    /// Whether this process is a fork of the one that sealed the secret.
    #[inline]
    pub(crate) fn in_forked_child(&self) -> bool {
        self.keeper.region.in_forked_child()
    }

    /// Wipes and frees the ciphertext. Runs once; later calls do nothing.
    pub(crate) fn destroy(&self) {
        if self.released.swap(true, Ordering::AcqRel) {
            return;
        }
        // SAFETY: no access is in flight (the caller holds the protocol closed): this is the only
        // reference to the allocation, which is freed with the layout it was made with.
        unsafe {
            let stored =
                std::slice::from_raw_parts_mut(self.sealed.as_ptr(), HEADER_LEN + self.len);
            zeroize::Zeroize::zeroize(stored);
            if let Some(layout) = ciphertext_layout(self.len) {
                alloc::dealloc(self.sealed.as_ptr(), layout);
            }
        }
    }
}

impl Drop for Sealed {
    fn drop(&mut self) {
        self.destroy();
    }
}

/// A sealed secret opens per thread (into the thread's scratch area): nothing to expose or
/// conceal for everyone, and readers publish rather than count themselves.
impl Gate for Sealed {
    #[inline]
    fn expose(&self, _: Mode) -> Result<(), Error> {
        Ok(())
    }

    #[inline]
    fn conceal(&self) -> Result<(), Error> {
        Ok(())
    }

    #[inline]
    fn shared(&self) -> bool {
        false
    }

    #[inline]
    fn inherited(&self) -> bool {
        self.in_forked_child()
    }

    #[inline]
    fn epoch(&self) -> u64 {
        self.keeper.region.epoch()
    }
}

/// This thread's scratch areas: one per nesting depth and kind of memory, made on first use.
struct Scratch {
    areas: UnsafeCell<Vec<Option<Region>>>,
    /// How many plaintexts this thread holds (the depth the next one takes).
    depth: Cell<usize>,
}

thread_local! {
    static SCRATCH: Scratch = const {
        Scratch {
            areas: UnsafeCell::new(Vec::new()),
            depth: Cell::new(0),
        }
    };
}

/// The bytes a scratch area of `pages` pages holds: all of them but room for the region's canary.
fn scratch_len(pages: usize) -> usize {
    pages * sys::page_size() - crate::region::CANARY_LEN
}

fn scratch_area(memory: Memory, len: usize) -> Result<Region, Error> {
    let page = sys::page_size();
    let pages = (len + crate::region::CANARY_LEN).div_ceil(page);
    Region::new(
        scratch_len(pages),
        memory,
        MlockPolicy::Required,
        true,
        None,
    )
    .map(|(area, _)| area)
}

/// A plaintext in this thread's scratch area, right against the area's trailing guard page.
/// Wiped on drop.
pub(crate) struct Plaintext {
    bytes: NonNull<u8>,
    len: usize,
    /// The process epoch the area was made in, and where the current one is read: in a child
    /// forked during the access, the area is not the child's to wipe (secret memory is not even
    /// mapped there).
    epoch: u64,
    epoch_word: &'static AtomicU64,
    /// An area of its own, for a secret larger than the kept ones; freed on drop.
    own: Option<Region>,
}

impl Plaintext {
    /// Room for `len` bytes in this thread's scratch area at the next depth.
    ///
    /// # Errors
    /// What mapping and locking the area can meet, the first time at this depth (or for a
    /// large secret, each time).
    #[inline]
    pub(crate) fn take(memory: Memory, len: usize) -> Result<Plaintext, Error> {
        let fits = |area: &Region| area.len() >= len && !area.in_forked_child();
        if len > scratch_len(KEPT_SCRATCH_PAGES) {
            let area = scratch_area(memory, len)?;
            let (epoch, epoch_word) = area.epoch_witness();
            return Ok(Plaintext {
                bytes: Self::right_aligned(&area, len),
                len,
                epoch,
                epoch_word,
                own: Some(area),
            });
        }
        SCRATCH.with(|scratch| {
            let depth = scratch.depth.get();
            let index = depth * 2 + memory_index(memory);
            // SAFETY: only this thread touches its scratch, and no reference into `areas`
            // outlives this block (plaintexts keep raw pointers into the mappings, which do not
            // move when the vector does).
            let areas = unsafe { &mut *scratch.areas.get() };
            if areas.len() <= index {
                areas.resize_with(index + 1, || None);
            }
            let area = match &mut areas[index] {
                Some(area) if fits(area) => area,
                slot => {
                    // A forked child's inherited area is not its own to unmap where it was
                    // left out of the fork; `Region`'s teardown knows.
                    *slot = None;
                    slot.insert(scratch_area(memory, len)?)
                }
            };
            scratch.depth.set(depth + 1);
            let (epoch, epoch_word) = area.epoch_witness();
            Ok(Plaintext {
                bytes: Self::right_aligned(area, len),
                len,
                epoch,
                epoch_word,
                own: None,
            })
        })
    }

    fn right_aligned(area: &Region, len: usize) -> NonNull<u8> {
        // SAFETY: len <= area.len(), so the result lies inside the area's bytes.
        unsafe { area.bytes().add(area.len() - len) }
    }

    /// The plaintext.
    #[inline]
    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: `len` bytes of a live, readable and writable scratch area that only this
        // plaintext uses until it is dropped.
        unsafe { std::slice::from_raw_parts(self.bytes.as_ptr(), self.len) }
    }

    /// The plaintext, writable.
    #[inline]
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`; `&mut self` makes it exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.bytes.as_ptr(), self.len) }
    }
}

impl Drop for Plaintext {
    #[inline]
    fn drop(&mut self) {
        // Relaxed: the epoch word changes only across a fork, which orders everything.
        if self.epoch_word.load(Ordering::Relaxed) == self.epoch {
            // A plain memset: the area outlives the access and is reached again through the
            // pointer its thread keeps, so the compiler cannot drop these stores as dead (the
            // fence keeps them before the depth is given back), and a byte-wise volatile loop
            // costs more than the decryption once a secret is a few hundred bytes.
            // SAFETY: `len` bytes of the live area that this plaintext alone uses.
            unsafe { ptr::write_bytes(self.bytes.as_ptr(), 0, self.len) };
            std::sync::atomic::compiler_fence(Ordering::SeqCst);
        }
        if self.own.is_none() {
            // `try_with`: a plaintext dropped while the thread's locals are torn down has no
            // depth left to give back.
            let _ = SCRATCH.try_with(|scratch| scratch.depth.set(scratch.depth.get() - 1));
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests;
