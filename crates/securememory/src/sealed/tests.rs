use super::{
    build_cipher, scratch_area, scratch_len, Sealed, COUNTER_LEN, HEADER_LEN, MAX_LEN, NONCE_LEN,
    SCRUBBED_AFTER_KEY_SETUP, SCRUBBED_STACK,
};
use crate::region::{Memory, CANARY_LEN};
use crate::secret::{Shared, Store};
use crate::{Backing, Error, OnCorruption, ProtectedMemorySecretFactory, Secret, Strategy};
use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use std::hint::black_box;
use std::panic::{self, AssertUnwindSafe};

fn factory() -> ProtectedMemorySecretFactory {
    ProtectedMemorySecretFactory::builder()
        .strategy(Strategy::Sealed)
        .build()
}

fn sealed(secret: &Secret) -> &Sealed {
    match secret.store() {
        Store::Sealed(sealed) => sealed,
        Store::Mapped(_) => panic!("not a sealed secret"),
    }
}

/// A copy of what the secret stores: nonce, tag, ciphertext.
fn stored(secret: &Secret) -> Vec<u8> {
    // SAFETY: no access is in flight; the allocation lives as long as the secret.
    unsafe { (*sealed(secret).stored()).to_vec() }
}

/// Flips one bit of the stored bytes at `offset`.
fn flip(secret: &Secret, offset: usize) {
    // SAFETY: as in `stored`; the test owns the secret and no access is in flight.
    unsafe { (*sealed(secret).stored())[offset] ^= 1 };
}

/// A million sealed secrets must fit in memory: the handle and the shared state are multiplied
/// by every one of them.
#[test]
fn a_sealed_secret_is_small() {
    assert!(std::mem::size_of::<Secret>() <= 16);
    assert!(
        std::mem::size_of::<Shared>() <= 160,
        "{} bytes of state per secret",
        std::mem::size_of::<Shared>()
    );
}

#[test]
fn the_bytes_at_rest_are_ciphertext_and_read_back_as_written() {
    let plain = *b"a sealed secret of 32 bytes long";
    let secret = factory().new(&mut plain.clone()).unwrap();
    assert_eq!(secret.protection().strategy, Strategy::Sealed);
    let at_rest = stored(&secret);
    assert_eq!(at_rest.len(), HEADER_LEN + plain.len());
    assert!(!at_rest.windows(8).any(|w| plain.windows(8).any(|p| p == w)));
    assert!(secret.with_bytes(|b| b == plain).unwrap());
    secret.with_bytes_mut(|b| b.reverse()).unwrap();
    let mut reversed = plain;
    reversed.reverse();
    assert!(secret.with_bytes(|b| b == reversed).unwrap());
}

#[test]
fn every_seal_takes_a_fresh_nonce() {
    let factory = factory();
    let a = factory.new(&mut [7; 32]).unwrap();
    let b = factory.new(&mut [7; 32]).unwrap();
    let nonce = |s: &Secret| stored(s)[..COUNTER_LEN].to_vec();
    assert_ne!(nonce(&a), nonce(&b), "two secrets sealed under one nonce");
    assert_ne!(stored(&a)[HEADER_LEN..], stored(&b)[HEADER_LEN..]);
    let before = nonce(&a);
    a.with_bytes_mut(|_| ()).unwrap();
    assert_ne!(
        nonce(&a),
        before,
        "a write sealed again under the old nonce"
    );
    a.with_bytes(|_| ()).unwrap();
    let after_write = nonce(&a);
    a.with_bytes(|_| ()).unwrap();
    assert_eq!(nonce(&a), after_write, "a read sealed again");
}

#[test]
fn a_tampered_nonce_tag_or_ciphertext_is_corrupted_never_garbage() {
    let factory = factory();
    for offset in [0, COUNTER_LEN, HEADER_LEN, HEADER_LEN + 31] {
        let secret = factory.new(&mut [3; 32]).unwrap();
        flip(&secret, offset);
        let mut ran = false;
        let read = secret.with_bytes(|_| ran = true);
        assert!(matches!(read, Err(Error::Corrupted)), "{offset}: {read:?}");
        let written = secret.with_bytes_mut(|_| ran = true);
        assert!(matches!(written, Err(Error::Corrupted)), "{written:?}");
        assert!(!ran, "a callback saw bytes that failed authentication");
        // Flipping the bit back restores the secret: nothing was resealed over it.
        flip(&secret, offset);
        assert!(secret.with_bytes(|b| b == [3; 32]).unwrap());
    }
}

#[test]
fn a_ciphertext_moved_to_another_secret_fails_authentication() {
    let factory = factory();
    let a = factory.new(&mut [1; 32]).unwrap();
    let b = factory.new(&mut [2; 32]).unwrap();
    let from_a = stored(&a);
    // SAFETY: as in `stored`; same length.
    unsafe { (*sealed(&b).stored()).copy_from_slice(&from_a) };
    assert!(matches!(b.with_bytes(|_| ()), Err(Error::Corrupted)));
    assert!(a.with_bytes(|x| x == [1; 32]).unwrap());
}

#[test]
fn on_corruption_abort_applies_to_a_tampered_sealed_secret() {
    // Asked to, the test build's `abort` unwinds instead (see report.rs).
    crate::report::UNWIND_INSTEAD_OF_ABORT.with(|unwind| unwind.set(true));
    let factory = ProtectedMemorySecretFactory::builder()
        .strategy(Strategy::Sealed)
        .on_corruption(OnCorruption::Abort)
        .build();
    let secret = factory.new(&mut [4; 16]).unwrap();
    flip(&secret, HEADER_LEN);
    let aborted = panic::catch_unwind(AssertUnwindSafe(|| secret.with_bytes(|_| ())));
    crate::report::UNWIND_INSTEAD_OF_ABORT.with(|unwind| unwind.set(false));
    let payload = aborted.expect_err("a tampered secret under Abort did not abort");
    assert!(payload.is::<crate::report::Aborted>());
}

/// The permissions and protection key of the mapping holding `address`, from /proc/self/smaps.
#[cfg(target_os = "linux")]
fn mapping_of(address: usize) -> (String, u32) {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut found: Option<(String, u32)> = None;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or_default();
        if let Some((start, end)) = first.split_once('-') {
            let (Ok(start), Ok(end)) = (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            ) else {
                continue;
            };
            if found.is_some() {
                break;
            }
            if (start..end).contains(&address) {
                found = Some((fields.next().unwrap().to_owned(), 0));
            }
        } else if let (Some(mapping), "ProtectionKey:") = (found.as_mut(), first) {
            mapping.1 = fields.next().unwrap().parse().unwrap();
        }
    }
    found.unwrap_or_else(|| panic!("{address:#x} is not mapped"))
}

/// The keeper's page is never writable while idle: read-only to every thread, or tagged with a
/// protection key that every thread's rights deny outside a window.
#[cfg(target_os = "linux")]
#[test]
fn the_keepers_page_is_read_only_or_behind_a_protection_key() {
    let secret = factory().new(&mut [7; 16]).unwrap();
    let keeper = sealed(&secret).keeper;
    let (permissions, key) = mapping_of(keeper.region.bytes().as_ptr() as usize);
    if keeper.protection.strategy == Strategy::ProtectionKey {
        assert_ne!(key, 0, "the keeper's page is not tagged ({permissions})");
    } else {
        assert!(
            permissions.starts_with("r--"),
            "the keeper's page is {permissions}"
        );
    }
}

/// AES-GCM takes at most 2^36 - 32 bytes under one nonce: a seal takes that much, and no more.
#[test]
fn a_seal_takes_up_to_the_most_one_nonce_covers() {
    let most = usize::try_from(MAX_LEN).unwrap();
    assert_eq!(MAX_LEN, (1 << 36) - 32);
    assert!(Sealed::check_len(most).is_ok());
    assert!(matches!(
        Sealed::check_len(most + 1),
        Err(Error::InvalidLength)
    ));
    assert!(matches!(Sealed::check_len(0), Err(Error::InvalidLength)));
}

/// A sealed secret reports what its keeper's page got, as a sealed secret: its own backing
/// (each kind of memory has a keeper of its own), guard pages, and no canary (the tag stands in).
#[test]
fn a_sealed_secret_reports_its_own_keepers_protection() {
    let mut backings = vec![Backing::Anonymous];
    if matches!(
        crate::sys::secretmem_support(),
        crate::sys::SecretMemSupport::Available
    ) {
        backings.push(Backing::SecretMem);
    }
    // Both orders: whichever keeper was made first must not serve the other kind of memory.
    for order in [backings.clone(), backings.iter().rev().copied().collect()] {
        for backing in order {
            let secret = ProtectedMemorySecretFactory::builder()
                .strategy(Strategy::Sealed)
                .backing(backing)
                .build()
                .new(&mut [5; 8])
                .unwrap();
            let protection = secret.protection();
            assert_eq!(protection.strategy, Strategy::Sealed);
            assert_eq!(protection.backing, backing, "{protection:?}");
            assert!(
                protection.guard_pages && !protection.canary,
                "{protection:?}"
            );
        }
    }
}

/// Reads `len` bytes at `address` (scratch memory stays mapped and readable between accesses).
fn read_at(address: usize, len: usize) -> Vec<u8> {
    // SAFETY: the address is inside this thread's scratch area, which stays mapped and
    // readable while the thread lives.
    unsafe { std::slice::from_raw_parts(address as *const u8, len).to_vec() }
}

#[test]
fn the_scratch_area_holds_zeros_after_every_access_panics_included() {
    let secret = factory().new(&mut [0x5a; 48]).unwrap();
    let address = secret.with_bytes(|b| b.as_ptr() as usize).unwrap();
    assert_eq!(read_at(address, 48), [0; 48]);
    let seen = secret
        .with_bytes_mut(|b| {
            b[0] = 0x11;
            b.as_ptr() as usize
        })
        .unwrap();
    assert_eq!(
        seen, address,
        "one thread's accesses at one depth share an area"
    );
    assert_eq!(read_at(address, 48), [0; 48]);
    let panicked = panic::catch_unwind(AssertUnwindSafe(|| {
        secret.with_bytes(|b| {
            assert_eq!(b[0], 0x11);
            panic!("inside the access")
        })
    }));
    assert!(panicked.is_err());
    assert_eq!(read_at(address, 48), [0; 48], "a panic left the plaintext");
    let panicked = panic::catch_unwind(AssertUnwindSafe(|| {
        secret.with_bytes_mut(|b| {
            b[1] = 0x22;
            panic!("inside the write")
        })
    }));
    assert!(panicked.is_err());
    assert_eq!(read_at(address, 48), [0; 48], "a panic left the plaintext");
    // A write that panicked is not sealed: the secret keeps the bytes it had.
    assert!(secret.with_bytes(|b| b[0] == 0x11 && b[1] == 0x5a).unwrap());
}

#[test]
fn the_plaintext_ends_at_a_page_boundary_and_nested_accesses_get_their_own_areas() {
    let page = crate::system::page_size();
    let factory = factory();
    let a = factory.new(&mut [1; 100]).unwrap();
    let b = factory.new(&mut [2; 7]).unwrap();
    let (outer, inner, again) = a
        .with_bytes(|x| {
            let end = x.as_ptr() as usize + x.len();
            let inner = b
                .with_bytes(|y| (y.as_ptr() as usize + y.len(), y == [2; 7]))
                .unwrap();
            let again = a.with_bytes(|z| z.as_ptr() as usize + z.len()).unwrap();
            assert_eq!(x, [1; 100], "an inner access disturbed the outer plaintext");
            (end, inner, again)
        })
        .unwrap();
    assert!(inner.1);
    for end in [outer, inner.0, again] {
        assert_eq!(
            end % page,
            0,
            "the plaintext does not end against the guard page"
        );
    }
    // The inner accesses ran one after the other at the same depth, under the outer one.
    assert_ne!(outer, inner.0);
    assert_eq!(inner.0, again);
}

/// Decrypts `ciphertext` in place with a cipher of this frame, leaving its frames' stack as it
/// is: the control that shows the scan below finds key stream where nothing wipes it.
#[inline(never)]
fn raw_open(cipher: &Aes256Gcm, nonce: &[u8], ciphertext: &mut [u8], tag: &[u8]) {
    let _ = black_box(cipher.decrypt_in_place_detached(
        Nonce::from_slice(nonce),
        b"",
        ciphertext,
        aes_gcm::Tag::from_slice(tag),
    ));
}

#[inline(never)]
fn library_open(secret: &Secret) {
    secret.with_bytes(|b| black_box(b[0])).unwrap();
}

/// Whether `needle` lies in the stack below this call's frame, where the frames of a call made
/// just before from the same caller were.
#[inline(never)]
fn on_the_stack_below(needle: &[u8]) -> bool {
    let marker = 0u8;
    let top = std::ptr::addr_of!(marker) as usize - 256;
    let span = 4 * SCRUBBED_STACK;
    // SAFETY: the span lies inside this thread's stack mapping (threads get far more than
    // this), below the live frames; it is only read.
    let below = unsafe { std::slice::from_raw_parts((top - span) as *const u8, span) };
    below.windows(needle.len()).any(|w| w == black_box(needle))
}

/// With all-zero plaintext, the key stream is the ciphertext itself: finding the ciphertext's
/// first block in the stack below an access means the cipher's frames were not wiped.
#[test]
fn the_cipher_leaves_no_key_stream_on_the_stack() {
    let secret = factory().new(&mut [0; 64]).unwrap();
    let at_rest = stored(&secret);
    let block: Vec<u8> = at_rest[HEADER_LEN..HEADER_LEN + 16].to_vec();
    library_open(&secret);
    assert!(
        !on_the_stack_below(&block),
        "an access left key stream on the stack"
    );

    // The control: a plain open of a zero plaintext, nothing wiping after it.
    let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&[9; 32]));
    let nonce = [1; NONCE_LEN];
    let mut buffer = [0u8; 64];
    let tag = cipher
        .encrypt_in_place_detached(Nonce::from_slice(&nonce), b"", &mut buffer)
        .unwrap();
    let stream: Vec<u8> = buffer[..16].to_vec();
    raw_open(&cipher, &nonce, &mut buffer, &tag);
    if !on_the_stack_below(&stream) {
        println!("note: this build's cipher left no key stream on the stack to find");
    }
}

const PAINT: u8 = 0xee;
const PAINTED: usize = 64 * 1024;

/// Fills the stack below the caller's frame with a pattern; where the painted area ends
/// (just below the caller's frame, where the frames of its next call begin).
#[inline(never)]
fn paint_below() -> usize {
    let mut area = [PAINT; PAINTED];
    black_box(&mut area);
    area.as_ptr() as usize + PAINTED
}

/// How far below `top` (an address in the caller's frame) the painted stack was disturbed.
#[inline(never)]
fn disturbed_below(top: usize) -> usize {
    // SAFETY: inside this thread's stack, below live frames; only read.
    let below = unsafe { std::slice::from_raw_parts((top - PAINTED) as *const u8, PAINTED) };
    below
        .iter()
        .position(|&b| b != PAINT)
        .map_or(0, |deepest| PAINTED - deepest)
}

/// The cipher's frames, seal and open, fit in the stack a seal or open wipes after it.
#[test]
fn the_cipher_stays_within_the_scrubbed_stack() {
    let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&[9; 32]));
    let nonce = [1; NONCE_LEN];
    let mut buffer = [0u8; 4096];
    let top = paint_below();
    let tag = seal(&cipher, &nonce, &mut buffer);
    let sealing = disturbed_below(top);
    let top = paint_below();
    raw_open(&cipher, &nonce, &mut buffer, &tag);
    let opening = disturbed_below(top);
    // The library calls the cipher from a frame of its own: a margin for it.
    for (what, depth) in [("seal", sealing), ("open", opening)] {
        println!("{what}: {depth} bytes of stack");
        assert!(
            depth + 128 <= SCRUBBED_STACK,
            "{what} used {depth} bytes of stack, more than the {SCRUBBED_STACK} wiped after it"
        );
        assert!(depth > 0, "the measurement saw no stack used by {what}");
    }
}

#[inline(never)]
fn seal(cipher: &Aes256Gcm, nonce: &[u8], buffer: &mut [u8]) -> aes_gcm::Tag {
    cipher
        .encrypt_in_place_detached(Nonce::from_slice(nonce), b"", buffer)
        .unwrap()
}

/// Making the cipher (key expansion and the kilobyte of state it returns by value) fits in the
/// stack a keeper's making wipes after it.
#[test]
fn the_key_setup_stays_within_the_stack_wiped_after_it() {
    let key = [9u8; 32];
    let mut place = Box::new(std::mem::MaybeUninit::<Aes256Gcm>::uninit());
    let top = paint_below();
    // SAFETY: a boxed place of the cipher's size and alignment, holding nothing yet.
    unsafe { build_cipher(&key, place.as_mut_ptr()) };
    let depth = disturbed_below(top);
    // SAFETY: just built.
    unsafe { place.assume_init_drop() };
    println!("key setup: {depth} bytes of stack");
    assert!(
        depth > 0,
        "the measurement saw no stack used by the key setup"
    );
    assert!(
        depth + 128 <= SCRUBBED_AFTER_KEY_SETUP,
        "the key setup used {depth} bytes of stack, more than the {SCRUBBED_AFTER_KEY_SETUP} \
         wiped after it"
    );
}

/// The cipher state (round keys, hash key) of `keeper`, copied out of its page.
#[cfg(target_arch = "x86_64")]
fn cipher_state(keeper: &super::Keeper) -> Vec<u8> {
    keeper.with_cipher(true, |cipher| {
        // SAFETY: the cipher is a live value of its size; its bytes are only copied.
        unsafe {
            std::slice::from_raw_parts(
                (cipher as *const Aes256Gcm).cast::<u8>(),
                std::mem::size_of::<Aes256Gcm>(),
            )
        }
        .to_vec()
    })
}

/// The sixteen-byte lanes of the vector registers the cipher and the copies of its state go
/// through: xmm0-15, and where the CPU has AVX-512, the whole of zmm16-31 (where the C
/// library's copies run).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn vector_register_lanes() -> Vec<[u8; 16]> {
    let mut low = [[0u8; 16]; 16];
    // SAFETY: stores sixteen registers into a local array of their size.
    unsafe {
        std::arch::asm!(
            "movdqu [{p}], xmm0",
            "movdqu [{p} + 16], xmm1",
            "movdqu [{p} + 32], xmm2",
            "movdqu [{p} + 48], xmm3",
            "movdqu [{p} + 64], xmm4",
            "movdqu [{p} + 80], xmm5",
            "movdqu [{p} + 96], xmm6",
            "movdqu [{p} + 112], xmm7",
            "movdqu [{p} + 128], xmm8",
            "movdqu [{p} + 144], xmm9",
            "movdqu [{p} + 160], xmm10",
            "movdqu [{p} + 176], xmm11",
            "movdqu [{p} + 192], xmm12",
            "movdqu [{p} + 208], xmm13",
            "movdqu [{p} + 224], xmm14",
            "movdqu [{p} + 240], xmm15",
            p = in(reg) low.as_mut_ptr(),
            options(nostack, preserves_flags),
        );
    }
    let mut lanes = low.to_vec();
    if std::arch::is_x86_feature_detected!("avx512f") {
        let mut high = [[0u8; 16]; 64];
        // SAFETY: the CPU has AVX-512; stores sixteen 64-byte registers into a local array of
        // their size.
        unsafe {
            std::arch::asm!(
                "vmovdqu64 [{p}], zmm16",
                "vmovdqu64 [{p} + 64], zmm17",
                "vmovdqu64 [{p} + 128], zmm18",
                "vmovdqu64 [{p} + 192], zmm19",
                "vmovdqu64 [{p} + 256], zmm20",
                "vmovdqu64 [{p} + 320], zmm21",
                "vmovdqu64 [{p} + 384], zmm22",
                "vmovdqu64 [{p} + 448], zmm23",
                "vmovdqu64 [{p} + 512], zmm24",
                "vmovdqu64 [{p} + 576], zmm25",
                "vmovdqu64 [{p} + 640], zmm26",
                "vmovdqu64 [{p} + 704], zmm27",
                "vmovdqu64 [{p} + 768], zmm28",
                "vmovdqu64 [{p} + 832], zmm29",
                "vmovdqu64 [{p} + 896], zmm30",
                "vmovdqu64 [{p} + 960], zmm31",
                p = in(reg) high.as_mut_ptr(),
                options(nostack, preserves_flags),
            );
        }
        lanes.extend_from_slice(&high);
    }
    lanes
}

/// Making a keeper leaves none of the cipher's state (round keys, hash key) in the vector
/// registers that built it and copied it into its page.
#[cfg(target_arch = "x86_64")]
#[test]
fn making_a_keeper_leaves_no_cipher_state_in_vector_registers() {
    let keeper = super::Keeper::new(Memory::Anonymous).unwrap();
    let lanes = vector_register_lanes();
    let state = cipher_state(&keeper);
    let secret_lanes: Vec<&[u8]> = state
        .chunks_exact(16)
        .filter(|chunk| chunk.iter().filter(|&&b| b != 0).count() > 4)
        .collect();
    assert!(
        secret_lanes.len() >= 15,
        "the cipher state shows no round keys"
    );
    for (register, lane) in lanes.iter().enumerate() {
        assert!(
            !secret_lanes.contains(&lane.as_slice()),
            "vector register lane {register} holds cipher state after a keeper was made"
        );
    }
}

/// The scratch area for a plaintext is the fewest whole pages that hold it and the canary.
#[test]
fn a_scratch_area_is_the_fewest_pages_that_hold_the_plaintext() {
    let page = crate::sys::page_size();
    for (len, pages) in [
        (1, 1),
        (page - CANARY_LEN, 1),
        (page - CANARY_LEN + 1, 2),
        (3 * page, 4),
    ] {
        let area = scratch_area(Memory::Anonymous, len).unwrap();
        assert_eq!(area.len(), scratch_len(pages), "for {len} bytes");
    }
}

/// The thread keeps its scratch area across accesses (no mapping per access) up to the kept
/// size; a larger secret gets an area of its own, unmapped after the access.
#[cfg(target_os = "linux")]
#[test]
fn scratch_areas_are_kept_up_to_the_kept_size_and_made_apart_beyond() {
    let most_kept = scratch_len(super::KEPT_SCRATCH_PAGES);
    std::thread::spawn(move || {
        for len in [64, most_kept] {
            let secret = factory().new(&mut vec![3; len]).unwrap();
            // A mark in the kept area, in front of the plaintext, that a fresh area would not
            // hold.
            let mark = secret
                .with_bytes(|b| {
                    let mark = b.as_ptr() as usize - 1;
                    // SAFETY: the byte before the plaintext is in the same area (larger than the
                    // plaintext by the canary's room at least), which this thread alone uses.
                    unsafe { *(mark as *mut u8) = 0xa5 };
                    mark
                })
                .unwrap();
            let (again, kept) = secret
                .with_bytes(|b| {
                    (
                        b.as_ptr() as usize - 1,
                        // SAFETY: as above.
                        unsafe { *(mark as *const u8) },
                    )
                })
                .unwrap();
            assert_eq!(
                (again, kept),
                (mark, 0xa5),
                "{len} bytes: the area was not kept"
            );
        }
        let secret = factory().new(&mut vec![3; most_kept + 1]).unwrap();
        let address = secret.with_bytes(|b| b.as_ptr() as usize).unwrap();
        assert!(
            !crate::factory::common::is_mapped(address),
            "the area of a secret larger than the kept ones stayed mapped"
        );
    })
    .join()
    .unwrap();
}

/// Nested accesses to sealed secrets of either kind of memory each get a scratch area of their
/// own: the inner plaintext neither overwrites nor wipes the outer one.
#[test]
fn nested_plaintexts_keep_apart_whatever_their_memory() {
    let mut backings = vec![Backing::Anonymous];
    if matches!(
        crate::sys::secretmem_support(),
        crate::sys::SecretMemSupport::Available
    ) {
        backings.push(Backing::SecretMem);
    } else {
        println!("note: no secret memory here: anonymous memory only");
    }
    let make = |backing, fill| {
        ProtectedMemorySecretFactory::builder()
            .strategy(Strategy::Sealed)
            .backing(backing)
            .build()
            .new(&mut [fill; 40])
            .unwrap()
    };
    for &outer_backing in &backings {
        for &inner_backing in &backings {
            let outer = make(outer_backing, 1);
            let inner = make(inner_backing, 2);
            std::thread::spawn(move || {
                outer
                    .with_bytes(|o| {
                        let o_before = o.to_vec();
                        inner.with_bytes(|i| assert_eq!(i, [2; 40])).unwrap();
                        assert_eq!(o_before, [1; 40]);
                        assert_eq!(
                            o, [1; 40],
                            "{outer_backing:?} within {inner_backing:?}: the inner access \
                             touched the outer plaintext"
                        );
                    })
                    .unwrap();
            })
            .join()
            .unwrap();
        }
    }
}

/// Closing a sealed secret, or dropping one never closed, frees its ciphertext, and so does
/// dropping a seal that never became a secret (the way out of any failure after sealing). With
/// glibc told to map every allocation from 64 KiB up apart (and unmap it when freed), a larger
/// ciphertext shows it: its mapping goes.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn the_ciphertext_is_freed_on_close_and_on_drop() {
    use crate::factory::common;
    common::in_child_process!();
    // SAFETY: sets an allocator parameter of this child test process, before it allocates
    // what the test watches.
    assert_eq!(
        unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 10) },
        1
    );
    let len = 256 << 10;
    for way in ["close", "drop", "a seal's drop"] {
        let (address, freed): (usize, Box<dyn FnOnce()>) = if way == "a seal's drop" {
            let keeper = super::Keeper::get(Memory::Anonymous).unwrap();
            let plaintext = super::Plaintext::take(Memory::Anonymous, len).unwrap();
            let seal = Sealed::seal(keeper, plaintext, true).unwrap();
            (
                seal.stored() as *mut u8 as usize,
                Box::new(move || drop(seal)),
            )
        } else {
            let secret = ProtectedMemorySecretFactory::builder()
                .strategy(Strategy::Sealed)
                .backing(Backing::Anonymous)
                .build()
                .new(&mut vec![7; len])
                .unwrap();
            let address = sealed(&secret).stored() as *mut u8 as usize;
            if way == "close" {
                (address, Box::new(move || secret.close().unwrap()))
            } else {
                (address, Box::new(move || drop(secret)))
            }
        };
        assert!(common::is_mapped(address));
        freed();
        assert!(
            !common::is_mapped(address),
            "the ciphertext stayed allocated after {way}"
        );
    }
}
