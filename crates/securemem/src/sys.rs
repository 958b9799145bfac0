//! The few raw Linux calls the holder and the probes need that std does not offer.

use std::io;

/// `CAP_IPC_LOCK`: lets a process lock memory past `RLIMIT_MEMLOCK`.
pub const CAP_IPC_LOCK: u32 = 14;

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn capget() -> io::Result<[CapData; 2]> {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget fills two CapData structs for version 3 of the ABI.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &raw mut header, data.as_mut_ptr()) };
    if rc == 0 {
        Ok(data)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether this process has capability `cap` in its effective set.
pub fn has_capability(cap: u32) -> bool {
    capget().is_ok_and(|d| d[(cap / 32) as usize].effective & (1 << (cap % 32)) != 0)
}

/// Removes capability `cap` from this process's effective, permitted and inheritable sets
/// (the raw `capset` syscall, so no helper binary has to be able to reach our executable).
///
/// # Errors
/// The OS error of `capget`/`capset`.
pub fn drop_capability(cap: u32) -> io::Result<()> {
    let mut data = capget()?;
    let (word, bit) = ((cap / 32) as usize, 1u32 << (cap % 32));
    data[word].effective &= !bit;
    data[word].permitted &= !bit;
    data[word].inheritable &= !bit;
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    // SAFETY: capset reads two CapData structs for version 3 of the ABI.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &raw mut header, data.as_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if has_capability(cap) {
        return Err(io::Error::other("capability still effective after capset"));
    }
    Ok(())
}

#[cfg(target_env = "gnu")]
type Resource = libc::__rlimit_resource_t;
#[cfg(not(target_env = "gnu"))]
type Resource = libc::c_int;

// `rlim_t` is 32 bits wide on some 32-bit targets, so the cast is not always a no-op.
#[allow(clippy::unnecessary_cast)]
fn limit_value(v: libc::rlim_t) -> Option<u64> {
    (v != libc::RLIM_INFINITY).then_some(v as u64)
}

/// The soft and hard limits of `resource`; `None` means unlimited.
pub fn get_rlimit(resource: Resource) -> (Option<u64>, Option<u64>) {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills a valid rlimit.
    if unsafe { libc::getrlimit(resource, &mut r) } != 0 {
        return (None, None);
    }
    (limit_value(r.rlim_cur), limit_value(r.rlim_max))
}

/// Sets the soft limit of `resource` to `soft` (`u64::MAX`: unlimited) and, when given, the
/// hard limit to `hard`; the hard limit is otherwise kept.
///
/// # Errors
/// The OS error of `setrlimit`.
pub fn set_rlimit(resource: Resource, soft: u64, hard: Option<u64>) -> io::Result<()> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills a valid rlimit.
    if unsafe { libc::getrlimit(resource, &mut r) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let to_rlim = |v: u64| {
        if v == u64::MAX {
            libc::RLIM_INFINITY
        } else {
            v as libc::rlim_t
        }
    };
    if let Some(h) = hard {
        r.rlim_max = to_rlim(h);
    }
    r.rlim_cur = to_rlim(soft).min(r.rlim_max);
    // SAFETY: setrlimit reads a valid rlimit.
    if unsafe { libc::setrlimit(resource, &r) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The page size in bytes.
pub fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096)
}

/// Whether `memfd_secret(2)` works for this process, or why not.
pub fn memfd_secret() -> Result<(), io::Error> {
    // SAFETY: memfd_secret takes one flags argument and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_memfd_secret, libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the descriptor was just created and is closed once.
    unsafe { libc::close(fd as libc::c_int) };
    Ok(())
}

/// Whether a memory protection key can be allocated (`pkey_alloc(2)`), or why not.
pub fn pkey_alloc() -> Result<(), io::Error> {
    // SAFETY: pkey_alloc(0, 0) returns a new key or -1.
    let key = unsafe { libc::syscall(libc::SYS_pkey_alloc, 0, 0) };
    if key < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: frees the key just allocated.
    unsafe { libc::syscall(libc::SYS_pkey_free, key) };
    Ok(())
}
