//! Probes: each one starts a holder, attacks it from outside the way the promise says it cannot
//! be attacked, and reports what it saw.
//!
//! A probe returns a [`Finding`] (the promise held or not, with the evidence), or a
//! [`ProbeError`]: [`Skipped`](ProbeError::Skipped) when a prerequisite of the probe is missing
//! on this machine (it says which), [`Refused`](ProbeError::Refused) when the library refused to
//! create the holder's secret with the settings and limits given (what an application with them
//! would get), [`Broken`](ProbeError::Broken) when the probe itself went wrong (a hang, a holder
//! that would not start).

pub mod dump;
pub mod fault;
pub mod kernel_read;
pub mod memlock;
pub mod sealed;
pub mod smaps;
pub mod wipe;

use crate::spawn::Ready;
use serde::Serialize;
use std::fmt;

/// Why a probe produced no finding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "reason", rename_all = "lowercase")]
pub enum ProbeError {
    /// A prerequisite is missing on this machine (no gdb, dumps piped to a program, ...).
    Skipped(String),
    /// The library refused to create the holder's secret: a verdict on the settings and limits,
    /// not a failure of the probe.
    Refused(Refusal),
    /// The probe could not do its job (holder did not start, hung, answered nonsense).
    Broken(String),
}

/// The library's error when it refused to create a secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Refusal {
    /// The `securememory::Error` variant (`MemoryLockLimit`, `BackingUnavailable`, ...).
    pub error: String,
    /// The error's message.
    pub message: String,
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeError::Skipped(reason) => write!(f, "skipped: {reason}"),
            ProbeError::Refused(r) => write!(f, "the library refused the secret: {}", r.message),
            ProbeError::Broken(reason) => write!(f, "probe failed: {reason}"),
        }
    }
}

impl std::error::Error for ProbeError {}

/// What one probe saw.
#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    /// The promise (`P1` ... `P9`).
    pub promise: &'static str,
    /// What the probe did, in a few words.
    pub probe: String,
    /// Whether the promise held against this probe.
    pub holds: bool,
    /// What was observed, one fact per entry.
    pub evidence: Vec<String>,
    /// The backing the holder's secret got (`secretmem` or `anonymous`); empty when the probe
    /// ran no marker holder.
    pub backing: String,
    /// The strategy the holder's secret got (`page-protection`, `protection-key` or `sealed`);
    /// empty when the probe ran no marker holder.
    pub strategy: String,
    /// What the library reported for the secret (`Secret::protection`).
    #[serde(skip)]
    pub ready: Option<Ready>,
    /// Which entries of `evidence` break the promise.
    #[serde(skip)]
    pub broken_at: Vec<usize>,
}

impl Finding {
    /// A finding of `probe` for `promise` that holds until a fact breaks it.
    pub fn new(promise: &'static str, probe: impl Into<String>, ready: Option<&Ready>) -> Self {
        Finding {
            promise,
            probe: probe.into(),
            holds: true,
            evidence: Vec::new(),
            backing: ready.map(|r| r.backing.clone()).unwrap_or_default(),
            strategy: ready.map(|r| r.strategy.clone()).unwrap_or_default(),
            ready: ready.cloned(),
            broken_at: Vec::new(),
        }
    }

    /// Records a fact that is consistent with the promise.
    pub fn saw(&mut self, fact: impl Into<String>) {
        self.evidence.push(fact.into());
    }

    /// Records a fact that breaks the promise.
    pub fn broke(&mut self, fact: impl Into<String>) {
        self.holds = false;
        self.broken_at.push(self.evidence.len());
        self.evidence.push(fact.into());
    }

    /// The evidence with the facts that break the promise first, so a reader (or a shortened
    /// line) meets the reason before the context.
    pub fn facts_broken_first(&self) -> Vec<&str> {
        let broken = self.broken_at.iter().filter_map(|&i| self.evidence.get(i));
        let rest = (0..self.evidence.len())
            .filter(|i| !self.broken_at.contains(i))
            .map(|i| &self.evidence[i]);
        broken.chain(rest).map(String::as_str).collect()
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let got: Vec<&str> = [self.backing.as_str(), self.strategy.as_str()]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect();
        write!(
            f,
            "{} {} [{}]: {}: {}",
            self.promise,
            self.probe,
            got.join(", "),
            if self.holds { "holds" } else { "BROKEN" },
            self.evidence.join("; ")
        )
    }
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    find(haystack, needle).is_some()
}

/// The offset of the first occurrence of `needle` in `haystack`.
pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    let (&first, _) = needle.split_first()?;
    let mut start = 0;
    while start + needle.len() <= haystack.len() {
        let at = start
            + haystack[start..=haystack.len() - needle.len()]
                .iter()
                .position(|&b| b == first)?;
        if &haystack[at..at + needle.len()] == needle {
            return Some(at);
        }
        start = at + 1;
    }
    None
}

/// The marker as lowercase hex, the form in which the holder sent it.
pub fn hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

/// Where a marker (raw or as hex) shows up in `haystack`, as evidence text; `None` if nowhere.
fn marker_hits(haystack: &[u8], marker: &[u8]) -> Option<String> {
    let raw = find(haystack, marker);
    let hexed = find(haystack, hex(marker).as_bytes());
    match (raw, hexed) {
        (None, None) => None,
        (Some(r), None) => Some(format!("marker bytes at offset {r:#x}")),
        (None, Some(h)) => Some(format!("marker hex at offset {h:#x}")),
        (Some(r), Some(h)) => Some(format!(
            "marker bytes at offset {r:#x} and its hex at offset {h:#x}"
        )),
    }
}

/// The errno name for evidence text.
pub fn errno_name(code: i32) -> String {
    let name = match code {
        libc::EIO => "EIO",
        libc::EFAULT => "EFAULT",
        libc::EPERM => "EPERM",
        libc::EACCES => "EACCES",
        libc::ENOMEM => "ENOMEM",
        libc::ESRCH => "ESRCH",
        libc::EAGAIN => "EAGAIN",
        libc::EINVAL => "EINVAL",
        libc::ENOSYS => "ENOSYS",
        _ => return format!("errno {code}"),
    };
    name.to_string()
}
