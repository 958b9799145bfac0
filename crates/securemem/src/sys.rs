//! The few raw Linux calls the holder and the probes need that std does not offer.

use std::io;

/// Whether this thread has `CAP_IPC_LOCK` in its effective set (it lets a process lock memory
/// past `RLIMIT_MEMLOCK`).
pub fn has_ipc_lock() -> bool {
    caps::has_cap(
        None,
        caps::CapSet::Effective,
        caps::Capability::CAP_IPC_LOCK,
    )
    .unwrap_or(false)
}

/// Removes `CAP_IPC_LOCK` from this thread's effective, permitted and inheritable sets, so that
/// `RLIMIT_MEMLOCK` binds it even as root.
///
/// # Errors
/// The OS error of `capget`/`capset`, or the capability still being effective afterwards.
pub fn drop_ipc_lock() -> io::Result<()> {
    use caps::{CapSet, Capability};
    for set in [CapSet::Effective, CapSet::Permitted, CapSet::Inheritable] {
        caps::drop(None, set, Capability::CAP_IPC_LOCK).map_err(io::Error::other)?;
    }
    if has_ipc_lock() {
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

pub use securememory::system::page_size;

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
