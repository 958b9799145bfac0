//! Memory protection keys (x86 PKU): the library's one key, tagging pages with it, and the
//! calling thread's rights register (PKRU).
//!
//! Pages tagged with a key stay readable and writable in the page tables; what decides whether
//! a thread may touch them is that thread's PKRU, which only it can change (`WRPKRU`, no system
//! call, no TLB shootdown). Keys are scarce (15 per process, shared with every library in it),
//! so the library allocates one, once, and never frees it.

use super::super::unix;
use std::io;
use std::ptr::NonNull;
use std::sync::OnceLock;

/// `PKEY_DISABLE_ACCESS` from `<sys/mman.h>` (not in the `libc` crate).
const PKEY_DISABLE_ACCESS: libc::c_ulong = 0x1;

/// The library's protection key, or why there is none.
pub(crate) fn library_key() -> Result<u32, String> {
    static KEY: OnceLock<Result<u32, String>> = OnceLock::new();
    KEY.get_or_init(|| {
        // PKEY_DISABLE_ACCESS as the initial rights: a new key is otherwise open on the
        // calling thread, which would leave every secret under it readable there.
        // SAFETY: pkey_alloc takes flags and initial rights and returns a key or -1.
        let key = unsafe { libc::syscall(libc::SYS_pkey_alloc, 0, PKEY_DISABLE_ACCESS) };
        match unix::check_syscall(key) {
            Ok(key) => u32::try_from(key).map_err(|_| format!("pkey_alloc returned {key}")),
            Err(error) => Err(refusal(&error)),
        }
    })
    .clone()
}

/// Why `pkey_alloc` gave no key, in words that say whether waiting or another machine helps.
fn refusal(error: &io::Error) -> String {
    match error.raw_os_error() {
        Some(libc::ENOSPC) => "every protection key of this process is taken (15 at most, shared \
                               with every library in the process)"
            .to_string(),
        Some(libc::EINVAL | libc::ENOSYS) => format!(
            "this CPU or kernel has no memory protection keys (x86 PKU, `pku` and `ospke` in \
             /proc/cpuinfo): {error}"
        ),
        _ => format!("pkey_alloc failed: {error}"),
    }
}

/// `pkey_mprotect(addr, len, PROT_READ | PROT_WRITE, key)`—Tags pages with `key`, readable and
/// writable as far as the page tables go.
///
/// # Safety
/// The range must be committed pages of the caller's own mapping.
///
/// # References
/// - [Linux](https://man7.org/linux/man-pages/man2/pkey_mprotect.2.html)
pub(crate) unsafe fn tag(addr: NonNull<u8>, len: usize, key: u32) -> io::Result<()> {
    // SAFETY: the caller guarantees the range is its own committed pages.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_pkey_mprotect,
            addr.as_ptr(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            key,
        )
    };
    unix::check_syscall(ret).map(drop)
}

/// The access-disable and write-disable bits of `key` in PKRU.
fn bits(key: u32) -> (u32, u32) {
    (1 << (2 * key), 1 << (2 * key + 1))
}

/// `RDPKRU`—This thread's protection-key rights.
#[inline]
pub(crate) fn read_rights() -> u32 {
    let rights: u32;
    // SAFETY: RDPKRU reads a register (ECX must be 0); it needs PKU, which `library_key`
    // succeeding shows the CPU and kernel have.
    unsafe {
        std::arch::asm!("rdpkru", in("ecx") 0, out("eax") rights, out("edx") _,
            options(nomem, nostack, preserves_flags));
    }
    rights
}

/// `WRPKRU`—Sets this thread's protection-key rights. Not `nomem`: the compiler must not move
/// a touch of the secret across it.
#[inline]
fn write_rights(rights: u32) {
    // SAFETY: WRPKRU writes a register (ECX and EDX must be 0); PKU is present (see
    // `read_rights`). Changing rights is memory-safe: a denied touch faults.
    unsafe {
        std::arch::asm!("wrpkru", in("eax") rights, in("ecx") 0, in("edx") 0,
            options(nostack, preserves_flags));
    }
}

/// The rights that open `key` (read-only unless `write`) from `found`, other keys left as found.
fn opened(found: u32, key: u32, write: bool) -> u32 {
    let (deny_access, deny_write) = bits(key);
    let open = found & !deny_access;
    if write {
        open & !deny_write
    } else {
        open | deny_write
    }
}

/// The rights that put back `found` after a window on `key`: the outermost window closes the
/// key whatever was found.
fn closed(found: u32, key: u32, outermost: bool) -> u32 {
    let (deny_access, _) = bits(key);
    if outermost {
        found | deny_access
    } else {
        found
    }
}

/// Opens `key` on the calling thread (read-only unless `write`) and returns the rights it found,
/// for [`close`].
#[inline]
pub(crate) fn open(key: u32, write: bool) -> u32 {
    let found = read_rights();
    write_rights(opened(found, key, write));
    found
}

/// Puts back the rights [`open`] found. The outermost window of a thread (`outermost`) closes
/// the key whatever was found: the rights are written from that known value, never from what
/// the register holds now (some kernels have restored it as "all open" after a signal).
#[inline]
pub(crate) fn close(key: u32, found: u32, outermost: bool) {
    write_rights(closed(found, key, outermost));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every key's two bits in PKRU: access-disable at 2·key, write-disable just above.
    #[test]
    fn each_key_has_its_own_two_bits() {
        assert_eq!(bits(0), (0b01, 0b10));
        assert_eq!(bits(1), (0b0100, 0b1000));
        assert_eq!(bits(5), (1 << 10, 1 << 11));
        assert_eq!(bits(15), (1 << 30, 1 << 31));
    }

    /// Opening a key clears its access-disable bit, clears its write-disable bit for a write and
    /// sets it for a read, and leaves every other key's bits as found.
    #[test]
    fn opening_a_key_changes_only_its_own_bits() {
        let every_key_closed = 0x5555_5554;
        let every_key_denied = u32::MAX;
        for key in [1, 2, 7, 15] {
            let (deny_access, deny_write) = bits(key);
            for found in [
                0,
                every_key_closed,
                every_key_denied,
                deny_access,
                deny_write,
            ] {
                let others = !(deny_access | deny_write);
                let read = opened(found, key, false);
                assert_eq!(read & others, found & others, "key {key}, found {found:#x}");
                assert_eq!(
                    read & (deny_access | deny_write),
                    deny_write,
                    "read of key {key}"
                );
                let write = opened(found, key, true);
                assert_eq!(
                    write & others,
                    found & others,
                    "key {key}, found {found:#x}"
                );
                assert_eq!(write & (deny_access | deny_write), 0, "write of key {key}");
            }
        }
    }

    /// A nested window puts back exactly what it found; the outermost one closes the key
    /// whatever it found (even a register some signal left all open) and leaves the rest.
    #[test]
    fn closing_puts_back_what_was_found_and_the_outermost_closes_the_key() {
        for key in [1, 2, 7, 15] {
            let (deny_access, deny_write) = bits(key);
            for found in [0, 0x5555_5554, u32::MAX, deny_write, 0x1234_5678] {
                assert_eq!(
                    closed(found, key, false),
                    found,
                    "key {key}, found {found:#x}"
                );
                assert_eq!(closed(found, key, true), found | deny_access, "key {key}");
            }
            let opened_then_closed = closed(0x5555_5554, key, true);
            assert_eq!(opened_then_closed, 0x5555_5554, "a closed key stays closed");
        }
    }

    /// Each reason `pkey_alloc` refuses says what it means for the caller.
    #[test]
    fn a_refused_key_says_why() {
        let refusal_of = |errno| refusal(&io::Error::from_raw_os_error(errno));
        assert!(refusal_of(libc::ENOSPC).contains("every protection key of this process is taken"));
        for errno in [libc::EINVAL, libc::ENOSYS] {
            let message = refusal_of(errno);
            assert!(message.contains("no memory protection keys"), "{message}");
            assert!(message.contains(&io::Error::from_raw_os_error(errno).to_string()));
        }
        let other = refusal_of(libc::ENOMEM);
        assert!(other.starts_with("pkey_alloc failed: "), "{other}");
        assert!(!other.contains("protection keys"), "{other}");
    }
}
