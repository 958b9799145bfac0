//! The peer libraries, driven the way their users drive them.

use crate::touch;
use std::ptr::NonNull;

/// A `memsec` allocation kept `PROT_NONE` between accesses.
#[derive(Debug)]
pub struct Memsec {
    ptr: NonNull<[u8]>,
    secretmem: bool,
}

impl Memsec {
    /// Allocates with `memsec::malloc_sized` (or `memfd_secret_sized` when `secretmem`), copies
    /// `bytes` in and makes the memory inaccessible.
    ///
    /// # Panics
    /// When memsec fails to allocate.
    pub fn new(bytes: &[u8], secretmem: bool) -> Memsec {
        // SAFETY: memsec returns a fresh read-write allocation of the requested size.
        unsafe {
            let mut ptr = if secretmem {
                memsec::memfd_secret_sized(bytes.len()).expect("memsec::memfd_secret_sized")
            } else {
                memsec::malloc_sized(bytes.len()).expect("memsec::malloc_sized")
            };
            ptr.as_mut().copy_from_slice(bytes);
            memsec::mprotect(ptr, memsec::Prot::NoAccess);
            Memsec { ptr, secretmem }
        }
    }

    /// One access: `mprotect(READ)`, [`touch`], `mprotect(NONE)`.
    #[inline]
    pub fn access(&self) -> u8 {
        // SAFETY: the allocation is live; it is readable between the two mprotect calls.
        unsafe {
            memsec::mprotect(self.ptr, memsec::Prot::ReadOnly);
            let result = touch(self.ptr.as_ref());
            memsec::mprotect(self.ptr, memsec::Prot::NoAccess);
            result
        }
    }
}

impl Drop for Memsec {
    fn drop(&mut self) {
        // SAFETY: allocated by memsec and freed once. memsec checks its canary before it
        // unprotects, so the memory is made accessible first.
        unsafe {
            memsec::mprotect(self.ptr, memsec::Prot::ReadWrite);
            if self.secretmem {
                memsec::free_memfd_secret(self.ptr);
            } else {
                memsec::free(self.ptr);
            }
        }
    }
}

/// A `secrets::SecretVec` (libsodium `sodium_malloc`) holding a copy of `bytes`.
#[cfg(feature = "peers-libsodium")]
pub fn sodium(bytes: &[u8]) -> secrets::SecretVec<u8> {
    secrets::SecretVec::<u8>::new(bytes.len(), |s| s.copy_from_slice(bytes))
}

/// One access of a `secrets::SecretVec`: `borrow()` (`sodium_mprotect_readonly`), [`touch`],
/// and the drop of the borrow (`sodium_mprotect_noaccess`).
#[cfg(feature = "peers-libsodium")]
#[inline]
pub fn sodium_access(secret: &secrets::SecretVec<u8>) -> u8 {
    touch(&secret.borrow())
}
