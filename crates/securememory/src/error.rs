//! The one error type of the crate.

use crate::policy::Backing;
use crate::sys::{LockLimitText, OsError, Remedy};
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
    /// locked-memory limit (on Windows: its working set had no room for more locked pages).
    #[error(
        "could not lock {requested} bytes in RAM: {}{}",
        LockLimitText { limit: *limit, source },
        LockRemedy(*backing)
    )]
    MemoryLockLimit {
        /// The page-rounded number of bytes this secret needed locked.
        requested: usize,
        /// The soft `RLIMIT_MEMLOCK` of the process in bytes, `None` when unlimited (always
        /// `None` on Windows, which has no such limit).
        limit: Option<u64>,
        /// The backing the factory was asked for. [`Backing::SecretMem`] is charged to the limit
        /// whatever the [`MlockPolicy`](crate::MlockPolicy), so `BestEffort` is no way out there.
        backing: Backing,
        /// The error the OS returned.
        source: io::Error,
    },

    /// Mapping the secret's pages was refused because the process has as many memory mappings
    /// as `vm.max_map_count` allows. Each secret takes up to three (guard, data, guard).
    #[error(
        "could not map a secret: the process has reached its limit on memory mappings \
         (vm.max_map_count = {limit}, {in_use} in use); raise it with \
         `sysctl -w vm.max_map_count=N` (or in /etc/sysctl.d/), or close unused secrets"
    )]
    MapCountLimit {
        /// Mappings of the process when the call failed.
        in_use: usize,
        /// `vm.max_map_count`.
        limit: usize,
        /// The error the OS returned.
        #[source]
        source: io::Error,
    },

    /// The secret is larger than the memory this process can still get, so it was refused before
    /// any page was touched: its pages are locked in RAM (or are secret memory), and filling them
    /// would get the process killed by the OOM killer instead.
    #[error(
        "a secret of {requested} bytes does not fit: this process can get only {available} more \
         bytes of memory (the least of the system's MemAvailable and the headroom of its memory \
         cgroup); free memory, raise the cgroup's limit, or keep large data outside secret \
         memory (for example encrypted, with only its key in a secret)"
    )]
    InsufficientMemory {
        /// The page-rounded size of the secret's data pages.
        requested: usize,
        /// The bytes of memory the process could still get when it asked.
        available: u64,
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

    /// The requested [`Strategy`](crate::Strategy) cannot be had on this machine (for example
    /// protection keys on a CPU without PKU). Never a silent fallback: ask for
    /// `Strategy::Auto` to get the best one available.
    #[error(
        "{} is unavailable on this machine ({reason}); choose `Strategy::Auto` to use the best \
         strategy this machine offers",
        strategy.name()
    )]
    StrategyUnavailable {
        /// The strategy that was asked for.
        strategy: crate::Strategy,
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

    /// The secret's memory was corrupted: the canary right before the secret was overwritten
    /// (something wrote out of bounds, below the secret's first byte, while its memory was
    /// writable), or a sealed secret's ciphertext failed authentication (it was changed at rest).
    #[error(
        "the secret's memory was corrupted (a write below its first byte, or a changed sealed \
         ciphertext); treat its bytes as lost"
    )]
    Corrupted,

    /// An operating-system call failed.
    #[error("{operation} failed: {source}{}", Remedy(source))]
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

    /// The error for a failed `getrandom`.
    pub(crate) fn from_random(error: getrandom::Error) -> Self {
        Error::Random(error.raw_os_error().map_or_else(
            || io::Error::other(error.to_string()),
            io::Error::from_raw_os_error,
        ))
    }
}

impl From<OsError> for Error {
    fn from(error: OsError) -> Self {
        Error::os(error.call, error.source)
    }
}

/// What to do about a locked-memory limit besides raising it or closing secrets.
struct LockRemedy(Backing);

impl fmt::Display for LockRemedy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Backing::SecretMem => f.write_str(
                "; secret memory is charged to this limit whatever the `MlockPolicy`, so \
                 `BestEffort` does not help (`Backing::Auto` with `BestEffort` falls back to \
                 unlocked anonymous memory past it)",
            ),
            _ => f.write_str(", or choose `MlockPolicy::BestEffort`"),
        }
    }
}
