//! What reaches the operator when a secret gets less protection than the factory's policy aimed
//! for, when closing a dropped secret fails, and when a corrupted canary ends the process.
//!
//! A library cannot count on a `log` logger being installed: without one, `log::warn!` goes
//! nowhere. So by default every report also goes to stderr as one line starting with
//! `securememory:`; a factory's builder chooses otherwise ([`Report`], [`OnCorruption`],
//! [`FactoryBuilder::on_degraded`](crate::FactoryBuilder::on_degraded)).

use crate::error::Error;
use crate::policy::Protection;
use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A promise a secret went without because the machine could not give it and the policy let it
/// go.
///
/// ```
/// use securememory::{Lost, MlockPolicy, ProtectedMemorySecretFactory, Report};
///
/// let factory = ProtectedMemorySecretFactory::builder()
///     .mlock(MlockPolicy::BestEffort)
///     .report(Report::Silent)
///     .on_degraded(|degradation| {
///         for lost in &degradation.lost {
///             match lost {
///                 Lost::Locked => eprintln!("a secret may be swapped to disk"),
///                 Lost::KernelInvisible => eprintln!("a secret is readable by root"),
///                 other => eprintln!("a secret went without {other:?}"),
///             }
///         }
///     })
///     .build();
/// # let _ = factory;
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Lost {
    /// P1: the pages are not locked in RAM and may be swapped to disk
    /// ([`MlockPolicy::BestEffort`](crate::MlockPolicy::BestEffort) past the locked-memory
    /// limit).
    Locked,
    /// P6: the bytes are in anonymous memory, readable by the kernel and so by root through
    /// `/proc/PID/mem` ([`Backing::Auto`](crate::Backing::Auto) falling back from secret memory
    /// past the locked-memory limit).
    KernelInvisible,
}

/// A secret got less protection than its factory's policy aimed for.
///
/// Handed to the callback of
/// [`FactoryBuilder::on_degraded`](crate::FactoryBuilder::on_degraded) for every such secret,
/// and written (once per factory) to `log` and stderr as `Report` says. Its `Display` is the
/// line that is written.
///
/// ```
/// use securememory::{Degradation, MlockPolicy, ProtectedMemorySecretFactory, Report};
///
/// fn alert(degradation: &Degradation) {
///     // The reason, then the remedy: the line the report would write.
///     eprintln!("secret degraded: {degradation}");
///     eprintln!("  lost      {:?}", degradation.lost);
///     eprintln!("  asked for {:?}", degradation.requested);
///     eprintln!("  got       {:?}", degradation.obtained);
/// }
///
/// let factory = ProtectedMemorySecretFactory::builder()
///     .mlock(MlockPolicy::BestEffort)
///     .report(Report::Silent)
///     .on_degraded(alert)
///     .build();
/// # let _ = factory;
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Degradation {
    /// The promises lost, [`Lost::Locked`] first when both are.
    pub lost: Vec<Lost>,
    /// What the policy aimed for on this machine.
    pub requested: Protection,
    /// What the secret got (its [`Secret::protection`](crate::Secret::protection)).
    pub obtained: Protection,
    /// What happened and why, in words.
    pub reason: String,
    /// What to do about it, in words.
    pub remedy: String,
}

impl fmt::Display for Degradation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}; {}", self.reason, self.remedy)
    }
}

/// Where a factory's reports go: a degradation (once per factory) and an error that closing a
/// dropped secret met (each time; a drop has no caller to return it to).
///
/// A callback set with [`FactoryBuilder::on_degraded`](crate::FactoryBuilder::on_degraded) is
/// called whatever this says.
///
/// ```
/// use securememory::{MlockPolicy, ProtectedMemorySecretFactory, Report};
///
/// // A service whose logger is installed and collected: no duplicate on stderr.
/// let factory = ProtectedMemorySecretFactory::builder()
///     .mlock(MlockPolicy::BestEffort)
///     .report(Report::Log)
///     .build();
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Report {
    /// To `log` (`warn` for a degradation, `error` for a failed close on drop) and as one line
    /// on stderr, so that it reaches the operator even where no logger is installed.
    #[default]
    LogAndStderr,
    /// To `log` only: for programs that install a logger and collect what it writes.
    Log,
    /// Nowhere. [`Secret::protection`](crate::Secret::protection) still says what each secret
    /// got, and a callback still runs.
    Silent,
}

/// What a secret does when it finds the canary before its bytes overwritten
/// ([`Error::Corrupted`]): after [`with_bytes_mut`](crate::Secret::with_bytes_mut) and when it is
/// closed or dropped.
///
/// The default is [`OnCorruption::ReturnError`]. The canary sits in the secret's own pages,
/// which hold nothing else (no allocator data, no other object), so the stray write harmed only
/// the secret, and the write came from code the caller ran inside `with_bytes_mut`, which gets
/// the error back there: a service can drop the one request or key rather than die, and the
/// corrupted bytes are wiped when the secret is closed. A process that prefers libsodium's
/// answer — any sign of memory corruption ends it — chooses [`OnCorruption::Abort`].
///
/// ```
/// use securememory::{OnCorruption, ProtectedMemorySecretFactory};
///
/// let factory = ProtectedMemorySecretFactory::builder()
///     .on_corruption(OnCorruption::Abort)
///     .build();
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OnCorruption {
    /// Return [`Error::Corrupted`] from `with_bytes_mut` and `close`; a drop reports it as
    /// [`Report`] says.
    #[default]
    ReturnError,
    /// Wipe the secret's bytes, write one line to stderr saying why (whatever [`Report`] says),
    /// and end the process with [`std::process::abort`].
    Abort,
}

/// A callback for degradations.
pub(crate) type OnDegraded = Arc<dyn Fn(&Degradation) + Send + Sync>;

/// What a builder chose for reports: where they go, the callback, what corruption does.
#[derive(Clone, Default)]
pub(crate) struct ReportChoices {
    pub(crate) report: Report,
    pub(crate) on_degraded: Option<OnDegraded>,
    pub(crate) on_corruption: OnCorruption,
}

impl fmt::Debug for ReportChoices {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReportChoices")
            .field("report", &self.report)
            .field(
                "on_degraded",
                &self.on_degraded.as_ref().map(|_| "<callback>"),
            )
            .field("on_corruption", &self.on_corruption)
            .finish()
    }
}

/// A factory's reporting choices, shared with every secret it makes.
#[derive(Debug)]
pub(crate) struct Reporting {
    choices: ReportChoices,
    /// Whether a degradation was written already (to `log` and stderr: once per factory).
    degradation_written: AtomicBool,
}

impl Reporting {
    pub(crate) fn new(choices: ReportChoices) -> Self {
        Reporting {
            choices,
            degradation_written: AtomicBool::new(false),
        }
    }

    /// Hands `degradation` to the callback, and writes it the first time for this factory.
    pub(crate) fn degraded(&self, degradation: &Degradation) {
        if let Some(callback) = &self.choices.on_degraded {
            callback(degradation);
        }
        if self.choices.report == Report::Silent
            || self.degradation_written.swap(true, Ordering::Relaxed)
        {
            return;
        }
        let suppressed = "(further warnings from this factory are suppressed)";
        log::warn!("{degradation} {suppressed}");
        if self.choices.report == Report::LogAndStderr {
            stderr_line(format_args!("warning: {degradation} {suppressed}"));
        }
    }

    /// Reports an error that closing a dropped secret met.
    pub(crate) fn drop_failed(&self, error: &Error) {
        if self.choices.report == Report::Silent {
            return;
        }
        log::error!("closing a dropped secret failed: {error}");
        if self.choices.report == Report::LogAndStderr {
            stderr_line(format_args!(
                "error: closing a dropped secret failed: {error}"
            ));
        }
    }

    /// Ends the process when the policy says corruption (a canary overwritten, a sealed
    /// ciphertext that fails authentication) does: runs `wipe` (which wipes
    /// the secret's bytes where they are still there and writable), says why, and aborts.
    /// Returns, doing nothing, otherwise.
    pub(crate) fn corrupted(&self, wipe: impl FnOnce()) {
        if self.choices.on_corruption != OnCorruption::Abort {
            return;
        }
        wipe();
        let why = "a secret's memory was corrupted (the canary right before it overwritten by an \
                   out-of-bounds write, or its sealed ciphertext changed); the secret was wiped";
        log::error!("aborting the process: {why}");
        stderr_line(format_args!(
            "aborting the process (OnCorruption::Abort): {why}"
        ));
        abort();
    }
}

/// Writes `securememory: {line}` to stderr in one write, ignoring a failure (there is nowhere
/// else to report it).
fn stderr_line(line: fmt::Arguments<'_>) {
    let text = format!("securememory: {line}\n");
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

#[cfg(not(test))]
fn abort() {
    std::process::abort();
}

/// The library's own tests check what happens up to the abort in-process: there it unwinds
/// instead, when the test asks for that.
#[cfg(test)]
fn abort() {
    if UNWIND_INSTEAD_OF_ABORT.with(std::cell::Cell::get) {
        std::panic::panic_any(Aborted);
    }
    std::process::abort();
}

#[cfg(test)]
thread_local! {
    pub(crate) static UNWIND_INSTEAD_OF_ABORT: std::cell::Cell<bool> =
        const { std::cell::Cell::new(false) };
}

/// The panic payload of an abort that unwinds in a test.
#[cfg(test)]
pub(crate) struct Aborted;

#[cfg(test)]
mod tests;
