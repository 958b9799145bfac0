//! The raw system-call sequences a perfect implementation of `Secret` would make.
//!
//! A [`RawSecret`] keeps the same promises as a `Secret` with the same calls and nothing else:
//!
//! | step | anonymous | secret memory |
//! |---|---|---|
//! | create | `mmap(PROT_NONE)` of guard + data + guard, `mprotect(data, RW)`, `mlock`, `madvise(MADV_DONTDUMP)`, `madvise(MADV_WIPEONFORK)`, copy, `mprotect(NONE)` | `mmap(PROT_NONE)`, `memfd_secret`, `ftruncate`, `mmap(MAP_SHARED \| MAP_FIXED)`, `close(fd)`, `madvise(MADV_DONTFORK)`, copy, `mprotect(NONE)` |
//! | access | `mprotect(READ)`, read, `mprotect(NONE)` | the same |
//! | close | `mprotect(RW)`, wipe, `munlock`, `munmap` | `mprotect(RW)`, wipe, `munmap` |
//!
//! There is no locking, no state machine and no error recovery: this is the floor.
//!
//! A [`RawKeyedSecret`] is the floor of the protection-key strategy: the same mapping, tagged with
//! a protection key of its own instead of made inaccessible, and opened for the calling thread
//! only by writing its rights register (x86_64 PKU):
//!
//! | step | protection key |
//! |---|---|
//! | create | as above up to the copy, then `pkey_mprotect(data, RW, key)` (no `mprotect(NONE)`) |
//! | access | `RDPKRU`, `WRPKRU` (key readable), read, `WRPKRU` (key denied): no system call |
//! | close | `WRPKRU` (key writable), wipe, `WRPKRU` (key denied), `munlock` (anonymous only), `munmap` |
//!
//! The key is allocated once per process (`pkey_alloc` with access denied) and never freed;
//! it is the benchmarks' own, not the library's.
//!
//! A [`RawSealed`] is the floor of the sealed strategy: AES-256-GCM (RustCrypto `aes-gcm`, the
//! version the library uses) with a key schedule a [`RawSealer`] prepares once, and the
//! ciphertext in one heap allocation laid out as the library lays it out (`[nonce][tag]
//! [ciphertext]`, the allocation's address as associated data, a 64-bit counter and four zero
//! bytes as nonce):
//!
//! | step | sealed |
//! |---|---|
//! | create | allocate, copy (or `getrandom(2)`) into it, encrypt in place, wipe the source |
//! | access | copy the ciphertext into the caller's buffer, decrypt in place, read, wipe the buffer |
//! | write | as an access, then encrypt the buffer under a fresh nonce into the allocation, wipe the buffer |
//! | close | wipe, free |
//!
//! No guarded key page, no scratch mapping, no access protocol: what the cipher costs and nothing
//! else.

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

/// Where a raw secret's data pages come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RawBacking {
    /// Private anonymous memory, locked with `mlock`.
    Anonymous,
    /// `memfd_secret(2)` memory (locked by the kernel).
    SecretMem,
}

/// Secret bytes in their own guarded page(s), managed with bare system calls.
#[derive(Debug)]
pub struct RawSecret {
    base: NonNull<u8>,
    total_len: usize,
    data: NonNull<u8>,
    data_len: usize,
    len: usize,
    backing: RawBacking,
    /// The protection key the data pages are tagged with, if any: teardown then opens the key
    /// with `WRPKRU` to wipe instead of calling `mprotect`.
    key: Option<u32>,
}

// SAFETY: a raw secret is an owned mapping; callers serialise protection changes themselves.
unsafe impl Send for RawSecret {}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

pub use securememory::system::page_size;

/// Whether this process can have secret memory (`memfd_secret(2)`), as the library sees it.
pub fn secretmem_available() -> bool {
    securememory::system::check_secret_memory().is_ok()
}

impl RawSecret {
    /// Maps a guarded region with `backing`, copies `bytes` into it, wipes `bytes`, and makes the
    /// region inaccessible.
    ///
    /// # Errors
    /// The first system call that fails; the mapping is removed again.
    pub fn new(bytes: &mut [u8], backing: RawBacking) -> io::Result<RawSecret> {
        let secret = Self::map(bytes.len(), backing)?;
        // SAFETY: the data pages are readable and writable and nothing else refers to them.
        let destination = unsafe { std::slice::from_raw_parts_mut(secret.bytes(), secret.len) };
        destination.copy_from_slice(bytes);
        zeroize::Zeroize::zeroize(bytes);
        secret.protect(libc::PROT_NONE)?;
        Ok(secret)
    }

    /// Maps a guarded region with `backing`, fills it from `getrandom(2)`, and makes it
    /// inaccessible.
    ///
    /// # Errors
    /// The first system call that fails; the mapping is removed again.
    pub fn random(len: usize, backing: RawBacking) -> io::Result<RawSecret> {
        let secret = Self::map(len, backing)?;
        secret.fill_random()?;
        secret.protect(libc::PROT_NONE)?;
        Ok(secret)
    }

    fn fill_random(&self) -> io::Result<()> {
        let mut filled = 0;
        while filled < self.len {
            // SAFETY: the destination lies inside the writable data pages.
            let n =
                unsafe { libc::getrandom(self.bytes().add(filled).cast(), self.len - filled, 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            filled += n as usize;
        }
        Ok(())
    }

    fn map(len: usize, backing: RawBacking) -> io::Result<RawSecret> {
        let page = page_size();
        let data_len = len.max(1).next_multiple_of(page);
        let total_len = data_len + 2 * page;
        // SAFETY: a fresh anonymous mapping at an address the kernel chooses aliases nothing.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                total_len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(base.cast::<u8>()).expect("mmap returned null");
        // SAFETY: one page into a mapping of at least three.
        let data = unsafe { base.add(page) };
        let secret = RawSecret {
            base,
            total_len,
            data,
            data_len,
            len,
            backing,
            key: None,
        };
        if let Err(error) = secret.commit() {
            // SAFETY: exactly our mapping, unused from here on.
            unsafe { libc::munmap(base.as_ptr().cast(), total_len) };
            std::mem::forget(secret);
            return Err(error);
        }
        Ok(secret)
    }

    fn commit(&self) -> io::Result<()> {
        let data = self.data.as_ptr().cast::<libc::c_void>();
        let len = self.data_len;
        match self.backing {
            RawBacking::Anonymous => {
                // SAFETY: the data pages of our own mapping.
                unsafe {
                    check(libc::mprotect(
                        data,
                        len,
                        libc::PROT_READ | libc::PROT_WRITE,
                    ))?;
                    check(libc::mlock(data, len))?;
                    check(libc::madvise(data, len, libc::MADV_DONTDUMP))?;
                    check(libc::madvise(data, len, libc::MADV_WIPEONFORK))?;
                }
            }
            RawBacking::SecretMem => {
                // SAFETY: memfd_secret takes flags only.
                let fd = unsafe { libc::syscall(libc::SYS_memfd_secret, libc::O_CLOEXEC) };
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                let fd = fd as libc::c_int;
                // SAFETY: `fd` is ours; the fixed mapping replaces only our data pages; the
                // descriptor is closed whatever happens (the mapping keeps the memory).
                let result = unsafe {
                    check(libc::ftruncate(fd, len as libc::off_t)).and_then(|()| {
                        let mapped = libc::mmap(
                            data,
                            len,
                            libc::PROT_READ | libc::PROT_WRITE,
                            libc::MAP_SHARED | libc::MAP_FIXED,
                            fd,
                            0,
                        );
                        if mapped == libc::MAP_FAILED {
                            Err(io::Error::last_os_error())
                        } else {
                            Ok(())
                        }
                    })
                };
                // SAFETY: `fd` is ours and not used again.
                unsafe { libc::close(fd) };
                result?;
                // SAFETY: the data pages of our own mapping.
                check(unsafe { libc::madvise(data, len, libc::MADV_DONTFORK) })?;
            }
        }
        Ok(())
    }

    fn bytes(&self) -> *mut u8 {
        // SAFETY: len <= data_len, so this stays inside the data pages.
        unsafe { self.data.as_ptr().add(self.data_len - self.len) }
    }

    fn protect(&self, prot: libc::c_int) -> io::Result<()> {
        // SAFETY: the data pages of our own mapping; no slice into them outlives an access.
        check(unsafe { libc::mprotect(self.data.as_ptr().cast(), self.data_len, prot) })
    }

    /// The secret's length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always `false`: a raw secret holds at least one byte.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// One access: `mprotect(READ)`, `action` on the bytes, `mprotect(NONE)`.
    ///
    /// Not safe to call from two threads at once on the same secret (nothing counts readers);
    /// give each thread its own.
    ///
    /// # Panics
    /// When `mprotect` fails.
    #[inline]
    pub fn access<R>(&self, action: impl FnOnce(&[u8]) -> R) -> R {
        self.protect(libc::PROT_READ).expect("mprotect(PROT_READ)");
        // SAFETY: the pages are readable until the next protection change, after the slice's
        // last use.
        let result = action(unsafe { std::slice::from_raw_parts(self.bytes(), self.len) });
        self.protect(libc::PROT_NONE).expect("mprotect(PROT_NONE)");
        result
    }

    /// One write access: `mprotect(READ | WRITE)`, `action` on the bytes, `mprotect(NONE)`.
    ///
    /// # Panics
    /// When `mprotect` fails.
    #[inline]
    pub fn access_mut<R>(&mut self, action: impl FnOnce(&mut [u8]) -> R) -> R {
        self.protect(libc::PROT_READ | libc::PROT_WRITE)
            .expect("mprotect(PROT_READ | PROT_WRITE)");
        // SAFETY: the pages are writable until the next protection change, after the slice's
        // last use; `&mut self` excludes every other access.
        let result = action(unsafe { std::slice::from_raw_parts_mut(self.bytes(), self.len) });
        self.protect(libc::PROT_NONE).expect("mprotect(PROT_NONE)");
        result
    }

    /// Wipes, unlocks and unmaps: `mprotect(RW)`, wipe, `munlock` (anonymous only), `munmap`.
    ///
    /// # Errors
    /// The first system call that fails.
    pub fn close(self) -> io::Result<()> {
        let result = self.teardown();
        std::mem::forget(self);
        result
    }

    fn teardown(&self) -> io::Result<()> {
        let wipe = || {
            // SAFETY: the pages are writable and this is the only reference to them.
            let bytes = unsafe { std::slice::from_raw_parts_mut(self.bytes(), self.len) };
            zeroize::Zeroize::zeroize(bytes);
        };
        match self.key {
            Some(key) => {
                // The pages stay read-write in the page tables; only this thread's rights deny
                // the key, so opening it costs no system call.
                let found = pkru::open(key, true);
                wipe();
                pkru::close(key, found);
            }
            None => {
                self.protect(libc::PROT_READ | libc::PROT_WRITE)?;
                wipe();
            }
        }
        if self.backing == RawBacking::Anonymous {
            // SAFETY: the data pages of our own mapping.
            check(unsafe { libc::munlock(self.data.as_ptr().cast(), self.data_len) })?;
        }
        // SAFETY: exactly our mapping, unused from here on.
        check(unsafe { libc::munmap(self.base.as_ptr().cast(), self.total_len) })
    }
}

impl Drop for RawSecret {
    fn drop(&mut self) {
        let _ = self.teardown();
    }
}

/// `PKEY_DISABLE_ACCESS` from `<sys/mman.h>` (not in the `libc` crate).
const PKEY_DISABLE_ACCESS: libc::c_ulong = 0x1;

/// The benchmarks' protection key, or why there is none (no PKU in the CPU or kernel, not
/// x86_64, or every key of the process taken).
///
/// Allocated on first use with access denied on the calling thread (a new key is otherwise
/// open there), and never freed: a key is per process and scarce (15 at most).
pub fn protection_key() -> Result<u32, String> {
    static KEY: std::sync::OnceLock<Result<u32, String>> = std::sync::OnceLock::new();
    KEY.get_or_init(|| {
        if !cfg!(target_arch = "x86_64") {
            return Err("protection keys are measured on x86_64 only".to_string());
        }
        // SAFETY: pkey_alloc takes flags and initial rights and returns a key or -1.
        let key = unsafe { libc::syscall(libc::SYS_pkey_alloc, 0, PKEY_DISABLE_ACCESS) };
        if key < 0 {
            return Err(format!("pkey_alloc: {}", io::Error::last_os_error()));
        }
        u32::try_from(key).map_err(|_| format!("pkey_alloc returned {key}"))
    })
    .clone()
}

/// The calling thread's protection-key rights register (PKRU).
mod pkru {
    /// The access-disable and write-disable bits of `key`.
    fn bits(key: u32) -> (u32, u32) {
        (1 << (2 * key), 1 << (2 * key + 1))
    }

    /// Opens `key` on this thread (writable when `write`) and returns the rights found, for
    /// [`close`].
    #[inline]
    pub(super) fn open(key: u32, write: bool) -> u32 {
        let found = read();
        let (deny_access, deny_write) = bits(key);
        let open = found & !deny_access;
        write_rights(if write {
            open & !deny_write
        } else {
            open | deny_write
        });
        found
    }

    /// Denies `key` on this thread again, keeping every other key's rights as `open` found them.
    #[inline]
    pub(super) fn close(key: u32, found: u32) {
        write_rights(found | bits(key).0);
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    pub(super) fn read() -> u32 {
        let rights: u32;
        // SAFETY: RDPKRU reads a register (ECX must be 0). Only reached with a key from
        // `protection_key`, so the CPU and kernel have PKU.
        unsafe {
            core::arch::asm!("rdpkru", in("ecx") 0, out("eax") rights, out("edx") _,
                options(nomem, nostack, preserves_flags));
        }
        rights
    }

    /// Not `nomem`: the compiler must not move a touch of the secret across it.
    #[cfg(target_arch = "x86_64")]
    #[inline]
    fn write_rights(rights: u32) {
        // SAFETY: WRPKRU writes a register (ECX and EDX must be 0); PKU is present (see `read`).
        // Changing rights is memory-safe: a denied touch faults.
        unsafe {
            core::arch::asm!("wrpkru", in("eax") rights, in("ecx") 0, in("edx") 0,
                options(nostack, preserves_flags));
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    pub(super) fn read() -> u32 {
        unreachable!("no protection key can be had off x86_64")
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn write_rights(_: u32) {
        unreachable!("no protection key can be had off x86_64")
    }
}

/// Secret bytes in their own guarded page(s) tagged with [`protection_key`]: the floor of
/// `Strategy::ProtectionKey`.
///
/// Unlike a [`RawSecret`], any number of threads may access it at once: each opens the key in
/// its own rights register, and nothing is shared but the bytes they read.
#[derive(Debug)]
pub struct RawKeyedSecret {
    secret: RawSecret,
    key: u32,
}

// SAFETY: accesses only read the bytes, and the rights they change are the calling thread's.
unsafe impl Sync for RawKeyedSecret {}

impl RawKeyedSecret {
    /// Maps a guarded region with `backing`, copies `bytes` into it, wipes `bytes`, and tags the
    /// region with the benchmarks' protection key.
    ///
    /// # Errors
    /// No protection key (`Unsupported`), or the first system call that fails; the mapping is
    /// removed again.
    pub fn new(bytes: &mut [u8], backing: RawBacking) -> io::Result<RawKeyedSecret> {
        let key = key()?;
        let secret = RawSecret::map(bytes.len(), backing)?;
        // SAFETY: the data pages are readable and writable and nothing else refers to them.
        let destination = unsafe { std::slice::from_raw_parts_mut(secret.bytes(), secret.len) };
        destination.copy_from_slice(bytes);
        zeroize::Zeroize::zeroize(bytes);
        Self::tag(secret, key)
    }

    /// Maps a guarded region with `backing`, fills it from `getrandom(2)`, and tags it with the
    /// benchmarks' protection key.
    ///
    /// # Errors
    /// As for [`RawKeyedSecret::new`].
    pub fn random(len: usize, backing: RawBacking) -> io::Result<RawKeyedSecret> {
        let key = key()?;
        let secret = RawSecret::map(len, backing)?;
        secret.fill_random()?;
        Self::tag(secret, key)
    }

    fn tag(mut secret: RawSecret, key: u32) -> io::Result<RawKeyedSecret> {
        // SAFETY: the data pages of our own mapping.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_pkey_mprotect,
                secret.data.as_ptr(),
                secret.data_len,
                libc::PROT_READ | libc::PROT_WRITE,
                key,
            )
        };
        if ret != 0 {
            return Err(io::Error::last_os_error());
        }
        secret.key = Some(key);
        Ok(RawKeyedSecret { secret, key })
    }

    /// The secret's length in bytes.
    pub fn len(&self) -> usize {
        self.secret.len
    }

    /// Always `false`: a raw secret holds at least one byte.
    pub fn is_empty(&self) -> bool {
        self.secret.len == 0
    }

    /// One access: `RDPKRU`, `WRPKRU` opening the key for reading, `action` on the bytes,
    /// `WRPKRU` denying it again. No system call.
    ///
    /// A panic in `action` leaves the key open on this thread (no recovery: this is the floor).
    #[inline]
    pub fn access<R>(&self, action: impl FnOnce(&[u8]) -> R) -> R {
        let found = pkru::open(self.key, false);
        // SAFETY: the pages are mapped for the life of `self` and readable by this thread until
        // the key is closed, after the slice's last use.
        let secret = &self.secret;
        let result = action(unsafe { std::slice::from_raw_parts(secret.bytes(), secret.len) });
        pkru::close(self.key, found);
        result
    }

    /// One write access: `RDPKRU`, `WRPKRU` opening the key for writing, `action` on the bytes,
    /// `WRPKRU` denying it again. No system call.
    #[inline]
    pub fn access_mut<R>(&mut self, action: impl FnOnce(&mut [u8]) -> R) -> R {
        let found = pkru::open(self.key, true);
        let secret = &self.secret;
        // SAFETY: as in `access`, and the key is open for writing; `&mut self` excludes every
        // other access.
        let result = action(unsafe { std::slice::from_raw_parts_mut(secret.bytes(), secret.len) });
        pkru::close(self.key, found);
        result
    }

    /// Wipes, unlocks and unmaps: `WRPKRU`, wipe, `WRPKRU`, `munlock` (anonymous only),
    /// `munmap`.
    ///
    /// # Errors
    /// The first system call that fails.
    pub fn close(self) -> io::Result<()> {
        self.secret.close()
    }
}

fn key() -> io::Result<u32> {
    protection_key().map_err(|reason| io::Error::new(io::ErrorKind::Unsupported, reason))
}

const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Where the ciphertext starts in a raw sealed secret's allocation.
const HEADER_LEN: usize = NONCE_LEN + TAG_LEN;

/// A prepared AES-256-GCM cipher (the key schedule built once, in ordinary memory) and its
/// nonce counter: what every [`RawSealed`] is sealed and opened with.
pub struct RawSealer {
    cipher: Box<Aes256Gcm>,
    nonces: AtomicU64,
}

impl std::fmt::Debug for RawSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawSealer").finish_non_exhaustive()
    }
}

/// One raw sealed secret: `[nonce][tag][ciphertext]` in a heap allocation of its own.
#[derive(Debug)]
pub struct RawSealed {
    sealed: Box<[u8]>,
}

fn fill_random(bytes: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < bytes.len() {
        let rest = &mut bytes[filled..];
        // SAFETY: the destination is `rest`, writable for its length.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        filled += n as usize;
    }
    Ok(())
}

impl RawSealer {
    /// A cipher with a random key.
    ///
    /// # Errors
    /// When `getrandom(2)` fails.
    pub fn new() -> io::Result<RawSealer> {
        let mut key = [0u8; 32];
        fill_random(&mut key)?;
        let cipher = Box::new(Aes256Gcm::new(&key.into()));
        zeroize::Zeroize::zeroize(&mut key);
        Ok(RawSealer {
            cipher,
            nonces: AtomicU64::new(0),
        })
    }

    fn next_nonce(&self) -> [u8; NONCE_LEN] {
        let mut nonce = [0; NONCE_LEN];
        let count = self.nonces.fetch_add(1, Ordering::Relaxed);
        nonce[..8].copy_from_slice(&count.to_le_bytes());
        nonce
    }

    /// Encrypts the ciphertext part of `sealed` in place (it holds the plaintext) under a fresh
    /// nonce, and stores the nonce and the tag in front of it.
    fn seal_in_place(&self, sealed: &mut [u8]) {
        let nonce = self.next_nonce();
        let aad = (sealed.as_ptr() as u64).to_le_bytes();
        let (header, body) = sealed.split_at_mut(HEADER_LEN);
        let tag = self
            .cipher
            .encrypt_in_place_detached(Nonce::from_slice(&nonce), &aad, body)
            .expect("AES-GCM takes any length measured here");
        header[..NONCE_LEN].copy_from_slice(&nonce);
        header[NONCE_LEN..].copy_from_slice(&tag);
    }

    /// Allocates, copies `bytes` in, encrypts them in place and wipes `bytes`.
    pub fn seal(&self, bytes: &mut [u8]) -> RawSealed {
        let mut sealed = vec![0u8; HEADER_LEN + bytes.len()].into_boxed_slice();
        sealed[HEADER_LEN..].copy_from_slice(bytes);
        zeroize::Zeroize::zeroize(bytes);
        self.seal_in_place(&mut sealed);
        RawSealed { sealed }
    }

    /// Allocates, fills the ciphertext part from `getrandom(2)` and encrypts it in place.
    ///
    /// # Errors
    /// When `getrandom(2)` fails.
    pub fn random(&self, len: usize) -> io::Result<RawSealed> {
        let mut sealed = vec![0u8; HEADER_LEN + len].into_boxed_slice();
        fill_random(&mut sealed[HEADER_LEN..])?;
        self.seal_in_place(&mut sealed);
        Ok(RawSealed { sealed })
    }

    /// Decrypts `sealed` into `buffer` (which must be as long as the secret).
    fn open_into(&self, sealed: &RawSealed, buffer: &mut [u8]) {
        let aad = (sealed.sealed.as_ptr() as u64).to_le_bytes();
        let (header, body) = sealed.sealed.split_at(HEADER_LEN);
        let (nonce, tag) = header.split_at(NONCE_LEN);
        buffer.copy_from_slice(body);
        self.cipher
            .decrypt_in_place_detached(Nonce::from_slice(nonce), &aad, buffer, Tag::from_slice(tag))
            .expect("a raw sealed secret fails authentication");
    }

    /// One access: copy the ciphertext into `buffer`, decrypt it in place, `action` on it, wipe
    /// `buffer`. Any number of threads may open one secret at once, each with its own buffer.
    ///
    /// # Panics
    /// When `buffer` is not as long as the secret, or the ciphertext fails authentication.
    #[inline]
    pub fn open<R>(
        &self,
        sealed: &RawSealed,
        buffer: &mut [u8],
        action: impl FnOnce(&[u8]) -> R,
    ) -> R {
        self.open_into(sealed, buffer);
        let result = action(buffer);
        zeroize::Zeroize::zeroize(buffer);
        result
    }

    /// One write: open into `buffer`, `action` on it, encrypt it under a fresh nonce back into
    /// `sealed`, wipe `buffer`.
    ///
    /// # Panics
    /// As for [`RawSealer::open`].
    #[inline]
    pub fn open_seal<R>(
        &self,
        sealed: &mut RawSealed,
        buffer: &mut [u8],
        action: impl FnOnce(&mut [u8]) -> R,
    ) -> R {
        self.open_into(sealed, buffer);
        let result = action(buffer);
        sealed.sealed[HEADER_LEN..].copy_from_slice(buffer);
        zeroize::Zeroize::zeroize(buffer);
        self.seal_in_place(&mut sealed.sealed);
        result
    }
}

impl RawSealed {
    /// The secret's length in bytes.
    pub fn len(&self) -> usize {
        self.sealed.len() - HEADER_LEN
    }

    /// Whether the secret holds no byte.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Wipes and frees the ciphertext (as dropping does).
    pub fn close(self) {}
}

impl Drop for RawSealed {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.sealed[..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_secret_round_trips_with_both_backings() {
        let mut backings = vec![RawBacking::Anonymous];
        if secretmem_available() {
            backings.push(RawBacking::SecretMem);
        }
        for backing in backings {
            let mut bytes = *b"0123456789abcdef0123456789abcdef";
            let secret = RawSecret::new(&mut bytes, backing).unwrap();
            assert_eq!(bytes, [0; 32]);
            assert_eq!(
                secret.access(|b| b.to_vec()),
                b"0123456789abcdef0123456789abcdef"
            );
            secret.close().unwrap();
            let random = RawSecret::random(4096, backing).unwrap();
            assert_eq!(random.access(|b| b.len()), 4096);
            random.close().unwrap();
        }
    }

    #[test]
    fn raw_keyed_secret_round_trips_with_both_backings() {
        let key = match protection_key() {
            Ok(key) => key,
            Err(reason) => {
                eprintln!("skipped: {reason}");
                return;
            }
        };
        let mut backings = vec![RawBacking::Anonymous];
        if secretmem_available() {
            backings.push(RawBacking::SecretMem);
        }
        for backing in backings {
            let mut bytes = *b"0123456789abcdef0123456789abcdef";
            let secret = RawKeyedSecret::new(&mut bytes, backing).unwrap();
            assert_eq!(bytes, [0; 32]);
            let rights = pkru::read();
            assert_ne!(
                rights & (1 << (2 * key)),
                0,
                "the key is denied between accesses"
            );
            assert_eq!(
                secret.access(|b| b.to_vec()),
                b"0123456789abcdef0123456789abcdef"
            );
            assert_eq!(
                pkru::read(),
                rights,
                "an access leaves the rights as it found them"
            );
            std::thread::scope(|scope| {
                scope.spawn(|| assert_eq!(secret.access(|b| b[31]), b'f'));
            });
            secret.close().unwrap();
            assert_eq!(
                pkru::read(),
                rights,
                "a close leaves the rights as it found them"
            );
            let random = RawKeyedSecret::random(4096, backing).unwrap();
            assert_eq!(random.access(|b| b.len()), 4096);
            random.close().unwrap();
        }
    }

    #[test]
    fn raw_sealed_round_trips_and_reseals_under_fresh_nonces() {
        let sealer = RawSealer::new().unwrap();
        let mut bytes = *b"0123456789abcdef0123456789abcdef";
        let mut sealed = sealer.seal(&mut bytes);
        assert_eq!(bytes, [0; 32]);
        assert_ne!(
            &sealed.sealed[HEADER_LEN..],
            b"0123456789abcdef0123456789abcdef"
        );
        let mut buffer = [0u8; 32];
        let copy = sealer.open(&sealed, &mut buffer, |b| b.to_vec());
        assert_eq!(copy, b"0123456789abcdef0123456789abcdef");
        assert_eq!(buffer, [0; 32], "an access wipes its buffer");
        let nonce = sealed.sealed[..NONCE_LEN].to_vec();
        sealer.open_seal(&mut sealed, &mut buffer, |b| b[0] = b'X');
        assert_eq!(buffer, [0; 32], "a write wipes its buffer");
        assert_ne!(
            sealed.sealed[..NONCE_LEN],
            nonce[..],
            "a write takes a fresh nonce"
        );
        assert_eq!(sealer.open(&sealed, &mut buffer, |b| b[0]), b'X');
        sealed.sealed[HEADER_LEN] ^= 1;
        let tampered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            sealer.open(&sealed, &mut buffer, |b| b[0])
        }));
        assert!(
            tampered.is_err(),
            "a changed ciphertext fails authentication"
        );
        let random = sealer.random(4096).unwrap();
        let mut buffer = vec![0u8; 4096];
        assert_eq!(sealer.open(&random, &mut buffer, |b| b.len()), 4096);
    }
}
