//! Secrets — keys, passwords, tokens — kept in memory that the rest of the process, the
//! operating system and other processes cannot casually see.
//!
//! A [`Secret`] holds its bytes in pages of their own that are
//!
//! - **locked** in RAM, never swapped (P1);
//! - **excluded from core dumps**, `gcore` included (P2);
//! - **inaccessible while idle**: readable only inside [`Secret::with_bytes`], so a stray read
//!   faults (P3);
//! - **wiped** when the secret is closed or dropped (P4);
//! - **not inherited** by a forked child (P5);
//! - **invisible to the kernel's direct map** and to other processes, root included, where Linux
//!   offers `memfd_secret(2)` (P6);
//! - **guarded**: an inaccessible page on each side, with the bytes right against the trailing
//!   one, so an overflow faults (P7).
//!
//! A protection that cannot be had on the running machine is an error or is reported in
//! [`Secret::protection`], never silently dropped; the caller picks the policy with
//! [`ProtectedMemorySecretFactory::builder`].
//!
//! ```
//! use securememory::{Error, ProtectedMemorySecretFactory, Secret, SecretFactory};
//!
//! let factory = ProtectedMemorySecretFactory::default();
//! let mut key_bytes = [7u8; 32];
//! let secret: Secret = factory.new(&mut key_bytes)?;      // copies, then wipes key_bytes
//! assert_eq!(key_bytes, [0; 32]);
//! let random: Secret = factory.create_random(32)?;       // generated in place
//! let n = secret.with_bytes(|bytes: &[u8]| bytes.len())?;
//! assert_eq!(n, 32);
//! random.with_bytes_mut(|bytes: &mut [u8]| bytes[0] ^= 1)?;
//! secret.close()?;                                        // idempotent; waits for accesses
//! assert!(matches!(secret.with_bytes(|_| ()), Err(Error::Closed)));
//! # Ok::<(), Error>(())
//! ```

mod access;
mod error;
mod factory;
mod policy;
mod region;
mod secret;
mod sync;
mod sys;

pub use error::Error;
pub use factory::{FactoryBuilder, ProtectedMemorySecretFactory, SecretFactory};
pub use policy::{Backing, MlockPolicy, Protection};
pub use secret::{Secret, SecretReader};

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
    sys::disable_core_dumps().map_err(|e| Error::os(sys::call::CORE_LIMIT, e))
}
