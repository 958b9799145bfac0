//! The one error type of the crate.
//!
//! Each message reads once: an error the OS (or a reader) returned is the variant's
//! [`source`](std::error::Error::source), never also written into its message, so that chains
//! printed by `anyhow` (`{:#}`) or `tracing` say each clause once. Messages stay short (under
//! about 150 characters) and end with what to do.

use crate::policy::{Backing, Strategy};
use crate::sys::{LockLimitText, OsError, Remedy};
use std::fmt;
use std::io;

/// Everything that can go wrong with a secret or a factory.
///
/// Messages say what happened and, where the caller can do something about it, what to do. The
/// OS error behind one is its [`source`](std::error::Error::source):
///
/// ```
/// use securememory::{Error, ProtectedMemorySecretFactory, SecretFactory};
///
/// let error = ProtectedMemorySecretFactory::default().create_random(0).unwrap_err();
/// assert!(matches!(error, Error::InvalidLength));
/// println!("{error}"); // one line, with what to do
/// let mut source = std::error::Error::source(&error);
/// while let Some(cause) = source {
///     println!("  caused by: {cause}");
///     source = cause.source();
/// }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The secret is closed (or is being closed): it can no longer be read or written.
    #[error("the secret is closed: it can no longer be read or written")]
    Closed,

    /// A secret cannot have this length: zero, or too large to map.
    #[error(
        "invalid secret length: a secret holds at least 1 byte and no more than can be mapped \
         (or, read through a typed access, exactly the length asked for)"
    )]
    InvalidLength,

    /// Locking the secret's pages in RAM was refused because the process reached its
    /// locked-memory limit (on Windows: its working set had no room for more locked pages).
    #[error(
        "could not lock {requested} bytes: {}{}",
        LockLimitText { limit: *limit },
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
        "could not map a secret: {in_use} mappings in use, vm.max_map_count is {limit}; raise \
         it (`sysctl -w vm.max_map_count=N`) or close secrets"
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
        "a secret of {requested} bytes does not fit in the {available} bytes of memory left \
         (MemAvailable, memory cgroup); keep large data encrypted, its key in a secret"
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
        "{} backing is unavailable ({reason}); `Backing::Auto` falls back to anonymous memory",
        backing.name()
    )]
    BackingUnavailable {
        /// The backing that was asked for.
        backing: Backing,
        /// Why it cannot be had.
        reason: String,
    },

    /// The requested [`Strategy`](crate::Strategy) cannot be had on this machine (for example
    /// protection keys on a CPU without PKU). Never a silent fallback: ask for
    /// `Strategy::Auto` to get the best one available.
    #[error(
        "{} is unavailable ({reason}); `Strategy::Auto` takes the best this machine offers",
        strategy.name()
    )]
    StrategyUnavailable {
        /// The strategy that was asked for.
        strategy: Strategy,
        /// Why it cannot be had.
        reason: String,
    },

    /// The secret was asked to do something from inside an access to the same secret on the
    /// same thread that would deadlock (close or write inside a read, read or write inside a
    /// write).
    #[error(
        "{operation} called inside an access to the same secret on this thread; finish the \
         access first"
    )]
    Reentrant {
        /// What was asked for.
        operation: Operation,
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
    #[error("{operation} failed{}", Remedy(source))]
    Os {
        /// The operation, named after the call (`mmap`, `mprotect`, `mlock`, ...).
        operation: &'static str,
        /// The error the OS returned.
        source: io::Error,
    },

    /// The OS random-number generator failed.
    #[error("generating random bytes failed")]
    Random(#[source] io::Error),

    /// The reader a secret was being loaded from failed (the bytes read so far were wiped).
    #[error("reading the secret failed; its bytes read so far are wiped")]
    Read(#[source] io::Error),
}

/// An operation on a secret, as named by [`Error::Reentrant`].
///
/// ```
/// use securememory::{Error, Operation, Secret};
///
/// let secret = Secret::random(16)?;
/// let inner = secret.with_bytes(|_| secret.close())?;
/// assert!(matches!(inner, Err(Error::Reentrant { operation: Operation::Close })));
/// # Ok::<(), Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Operation {
    /// [`Secret::with_bytes`](crate::Secret::with_bytes) and the reads built on it.
    WithBytes,
    /// [`Secret::with_bytes_mut`](crate::Secret::with_bytes_mut) and the writes built on it.
    WithBytesMut,
    /// [`Secret::close`](crate::Secret::close).
    Close,
}

impl Operation {
    /// The method's name.
    pub fn name(self) -> &'static str {
        match self {
            Operation::WithBytes => "with_bytes",
            Operation::WithBytesMut => "with_bytes_mut",
            Operation::Close => "close",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
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
            // Secret memory is charged to the limit whatever the policy: `BestEffort` does not
            // help there (the variant's documentation says so).
            Backing::SecretMem => Ok(()),
            _ => f.write_str(" or `MlockPolicy::BestEffort`"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Error, Operation};
    use crate::{Backing, Strategy};
    use std::io;

    /// One of every variant, with the OS errors that make their messages longest.
    fn every_variant() -> Vec<Error> {
        let os = |code| io::Error::from_raw_os_error(code);
        vec![
            Error::Closed,
            Error::InvalidLength,
            Error::MemoryLockLimit {
                requested: 1 << 30,
                limit: Some(8 << 20),
                backing: Backing::SecretMem,
                source: os(11),
            },
            Error::MemoryLockLimit {
                requested: 4096,
                limit: None,
                backing: Backing::Anonymous,
                source: os(12),
            },
            Error::MapCountLimit {
                in_use: 65_530,
                limit: 65_530,
                source: os(12),
            },
            Error::InsufficientMemory {
                requested: 1 << 40,
                available: 1 << 33,
            },
            Error::BackingUnavailable {
                backing: Backing::SecretMem,
                reason: "the kernel has no memfd_secret(2)".into(),
            },
            Error::StrategyUnavailable {
                strategy: Strategy::ProtectionKey,
                reason: "the CPU has no PKU".into(),
            },
            Error::Reentrant {
                operation: Operation::WithBytesMut,
            },
            Error::Forked,
            Error::Corrupted,
            Error::os("mmap", os(12)),
            Error::os("memfd_secret", os(24)),
            Error::os("mprotect", os(22)),
            Error::Random(os(38)),
            Error::Read(io::Error::new(io::ErrorKind::UnexpectedEof, "early end")),
        ]
    }

    /// The chain as `anyhow` prints it with `{:#}`: each error's message, then its sources'.
    fn chain(error: &Error) -> Vec<String> {
        let mut clauses = vec![error.to_string()];
        let mut source = std::error::Error::source(error);
        while let Some(cause) = source {
            clauses.push(cause.to_string());
            source = cause.source();
        }
        clauses
    }

    #[test]
    fn every_error_says_each_clause_once_and_briefly() {
        for error in every_variant() {
            let clauses = chain(&error);
            let message = &clauses[0];
            assert!(
                message.len() <= 165,
                "{} characters: {message}",
                message.len()
            );
            for cause in &clauses[1..] {
                assert!(
                    !message.contains(cause.as_str()),
                    "the message repeats its source {cause:?}: {message}"
                );
            }
            assert!(!message.contains("os error"), "{message}");
        }
    }

    #[test]
    fn os_errors_are_the_source_of_the_errors_they_caused() {
        let with_source = every_variant()
            .into_iter()
            .filter(|e| {
                matches!(
                    e,
                    Error::MemoryLockLimit { .. }
                        | Error::MapCountLimit { .. }
                        | Error::Os { .. }
                        | Error::Random(_)
                        | Error::Read(_)
                )
            })
            .collect::<Vec<_>>();
        assert_eq!(with_source.len(), 8);
        for error in with_source {
            assert!(
                std::error::Error::source(&error).is_some(),
                "{error:?} hides its OS error"
            );
        }
    }

    #[test]
    fn messages_name_the_backing_or_strategy_they_are_about() {
        for (backing, name) in [
            (Backing::Auto, "automatic"),
            (Backing::Anonymous, "anonymous"),
            (Backing::SecretMem, "memfd_secret"),
        ] {
            let message = Error::BackingUnavailable {
                backing,
                reason: "why".into(),
            }
            .to_string();
            let expected = format!("{name} backing is unavailable (why)");
            assert!(message.starts_with(&expected), "{message}");
        }
        for (strategy, name) in [
            (Strategy::Auto, "Strategy::Auto"),
            (Strategy::PageProtection, "Strategy::PageProtection"),
            (Strategy::ProtectionKey, "Strategy::ProtectionKey"),
            (Strategy::Sealed, "Strategy::Sealed"),
        ] {
            let message = Error::StrategyUnavailable {
                strategy,
                reason: "why".into(),
            }
            .to_string();
            let expected = format!("{name} is unavailable (why)");
            assert!(message.starts_with(&expected), "{message}");
        }
    }

    /// `MlockPolicy::BestEffort` is offered where it helps: not for secret memory, which is
    /// charged to the limit whatever the policy.
    #[test]
    fn best_effort_is_offered_only_where_it_helps() {
        let over_limit = |backing| Error::MemoryLockLimit {
            requested: 4096,
            limit: Some(8192),
            backing,
            source: io::Error::from_raw_os_error(12),
        };
        for (backing, offered) in [
            (Backing::Auto, true),
            (Backing::Anonymous, true),
            (Backing::SecretMem, false),
        ] {
            let message = over_limit(backing).to_string();
            assert_eq!(
                message.ends_with(" or `MlockPolicy::BestEffort`"),
                offered,
                "{backing:?}: {message}"
            );
        }
    }

    /// Running out of descriptors or memory says which, and what to do.
    #[cfg(unix)]
    #[test]
    fn os_errors_of_exhaustion_say_what_ran_out() {
        for (errno, says) in [
            (libc::EMFILE, "mmap failed: RLIMIT_NOFILE is reached"),
            (libc::ENFILE, "mmap failed: fs.file-max is reached"),
            (libc::ENOMEM, "mmap failed: the system is out of memory"),
            (libc::EINVAL, "mmap failed"),
        ] {
            let message = Error::os("mmap", io::Error::from_raw_os_error(errno)).to_string();
            assert!(message.starts_with(says), "{message}");
        }
        let plain = Error::os("mmap", io::Error::from_raw_os_error(libc::EINVAL)).to_string();
        assert_eq!(plain, "mmap failed");
    }

    #[test]
    fn remedies_are_in_the_message() {
        let messages: Vec<String> = every_variant().iter().map(ToString::to_string).collect();
        #[cfg(unix)]
        for needle in [
            "RLIMIT_MEMLOCK (8388608 bytes)",
            "ulimit -l",
            "LimitMEMLOCK=",
        ] {
            let lock = &messages[2];
            assert!(lock.contains(needle), "{needle:?} missing from: {lock}");
        }
        assert!(
            messages[4].contains("sysctl -w vm.max_map_count"),
            "{}",
            messages[4]
        );
        assert!(messages[7].contains("Strategy::Auto"), "{}", messages[7]);
        assert_eq!(
            messages[8],
            "with_bytes_mut called inside an access to the same secret on this thread; finish \
             the access first"
        );
    }
}
