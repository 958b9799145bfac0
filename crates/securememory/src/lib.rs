#![doc = include_str!("../README.md")]
#![doc = include_str!("../docs/guide.md")]

mod access;
mod error;
mod factory;
mod interop;
mod policy;
mod purge;
mod region;
mod registry;
mod report;
mod sealed;
mod secret;
mod sync;
mod sys;
pub mod system;
mod usage;

pub use error::{Error, Operation};
pub use factory::{FactoryBuilder, ProtectedMemorySecretFactory, SecretFactory};
pub use policy::{Backing, MlockPolicy, Protection, Strategy};
#[cfg(unix)]
pub use purge::purge_on_termination;
pub use purge::{live_secrets, purge, purge_on_panic, Purged, SecretInfo};
pub use report::{Degradation, Lost, OnCorruption, Report};
pub use secret::{Secret, SecretReader};
pub use usage::{stats, Stats};

/// Lowers the soft core-dump limit (`RLIMIT_CORE`) of the whole process to zero.
///
/// An explicit, process-wide switch for where per-region exclusion is missing (macOS, Windows
/// minidumps aside) or as defence in depth. Secrets are already left out of Linux core dumps
/// without it. The hard limit is left alone, so the process can raise the soft limit again.
/// Note that Linux ignores `RLIMIT_CORE` when `/proc/sys/kernel/core_pattern` pipes dumps to a
/// program such as systemd-coredump.
///
/// # Errors
/// [`Error::Os`] when the OS refuses the change (or has no such limit, on Windows).
pub fn disable_core_dumps() -> Result<(), Error> {
    sys::disable_core_dumps().map_err(Error::from)
}
