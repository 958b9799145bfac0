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

use std::io;
use std::ptr::NonNull;

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
        let mut filled = 0;
        while filled < len {
            // SAFETY: the destination lies inside the writable data pages.
            let n = unsafe { libc::getrandom(secret.bytes().add(filled).cast(), len - filled, 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            filled += n as usize;
        }
        secret.protect(libc::PROT_NONE)?;
        Ok(secret)
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
        self.protect(libc::PROT_READ | libc::PROT_WRITE)?;
        // SAFETY: the pages are writable and this is the only reference to them.
        let bytes = unsafe { std::slice::from_raw_parts_mut(self.bytes(), self.len) };
        zeroize::Zeroize::zeroize(bytes);
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
}
