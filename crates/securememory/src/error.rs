//! The one error type of the crate.

use std::fmt;
use std::io;

/// Everything that can go wrong with a secret or a factory.
///
/// Messages say what happened and, where the caller can do something about it, what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The secret is closed (or is being closed): it can no longer be read or written.
    #[error("the secret is closed: it can no longer be read or written")]
    Closed,

    /// A secret cannot have this length: zero, or too large to map.
    #[error(
        "invalid secret length: a secret holds at least 1 byte and no more than the address \
         space can map"
    )]
    InvalidLength,

    /// Locking the secret's pages in RAM was refused because the process reached its
    /// locked-memory limit.
    #[error(
        "could not lock {requested} bytes in RAM: the process has reached its locked-memory \
         limit (RLIMIT_MEMLOCK {}; the OS said: {}); raise it with `ulimit -l`, systemd \
         `LimitMEMLOCK=`, or a container's `--ulimit memlock=`, close unused secrets, or \
         choose `MlockPolicy::BestEffort`",
        LimitDisplay(*limit),
        source
    )]
    MemoryLockLimit {
        /// The page-rounded number of bytes this secret needed locked.
        requested: usize,
        /// The soft `RLIMIT_MEMLOCK` of the process in bytes, `None` when unlimited.
        limit: Option<u64>,
        /// The error the OS returned.
        source: io::Error,
    },

    /// The requested backing cannot be had on this machine (for example `memfd_secret(2)` on a
    /// kernel older than 5.14, or switched off).
    #[error(
        "{backing} backing is unavailable on this machine ({reason}); choose `Backing::Auto` \
         to fall back to anonymous memory"
    )]
    BackingUnavailable {
        /// The backing that was asked for.
        backing: &'static str,
        /// Why it cannot be had.
        reason: String,
    },

    /// The secret was asked to do something from inside an access to the same secret on the
    /// same thread that would deadlock (close or write inside a read, read or write inside a
    /// write).
    #[error(
        "{operation} called from inside an access to the same secret on this thread; finish \
         the access first"
    )]
    Reentrant {
        /// What was asked for (`close`, `with_bytes_mut`, `with_bytes`).
        operation: &'static str,
    },

    /// The secret was created in a parent process; a forked child never sees its bytes.
    #[error("the secret belongs to the parent process: a forked child cannot access it")]
    Forked,

    /// The canary right before the secret was overwritten: something wrote out of bounds
    /// (below the secret's first byte) while its memory was writable.
    #[error(
        "the memory right before the secret was overwritten (an out-of-bounds write during \
         with_bytes_mut, or memory corruption elsewhere in the process); treat the secret's \
         bytes as corrupted"
    )]
    Corrupted,

    /// An operating-system call failed.
    #[error("{operation} failed: {source}")]
    Os {
        /// The operation, named after the call (`mmap`, `mprotect`, `mlock`, ...).
        operation: &'static str,
        /// The error the OS returned.
        source: io::Error,
    },

    /// The OS random-number generator failed.
    #[error("generating random bytes failed: {0}")]
    Random(#[source] io::Error),
}

impl Error {
    pub(crate) fn os(operation: &'static str, source: io::Error) -> Self {
        Error::Os { operation, source }
    }
}

struct LimitDisplay(Option<u64>);

impl fmt::Display for LimitDisplay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(bytes) => write!(f, "soft limit: {bytes} bytes"),
            None => f.write_str("soft limit: reported as unlimited"),
        }
    }
}
