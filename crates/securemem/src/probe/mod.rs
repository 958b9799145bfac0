//! Probes: each one starts a holder, attacks it from outside the way the promise says it cannot
//! be attacked, and reports what it saw.
//!
//! A probe returns a [`Finding`] (the promise held or not, with the evidence), or a
//! [`ProbeError`]: [`Skipped`](ProbeError::Skipped) when a prerequisite of the probe is missing
//! on this machine (it says which), [`Broken`](ProbeError::Broken) when the probe itself went
//! wrong (a hang, a holder that would not start).

pub mod dump;
pub mod fault;
pub mod kernel_read;
pub mod memlock;
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
    /// The probe could not do its job (holder did not start, hung, answered nonsense).
    Broken(String),
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeError::Skipped(reason) => write!(f, "skipped: {reason}"),
            ProbeError::Broken(reason) => write!(f, "probe failed: {reason}"),
        }
    }
}

impl std::error::Error for ProbeError {}

/// What one probe saw.
#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    /// The promise (`P1` ... `P7`).
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
    /// What the library reported for the secret (`Secret::protection`).
    #[serde(skip)]
    pub ready: Option<Ready>,
}

impl Finding {
    fn new(promise: &'static str, probe: impl Into<String>, ready: Option<&Ready>) -> Self {
        Finding {
            promise,
            probe: probe.into(),
            holds: true,
            evidence: Vec::new(),
            backing: ready.map(|r| r.backing.clone()).unwrap_or_default(),
            ready: ready.cloned(),
        }
    }

    /// Records a fact that is consistent with the promise.
    fn saw(&mut self, fact: impl Into<String>) {
        self.evidence.push(fact.into());
    }

    /// Records a fact that breaks the promise.
    fn broke(&mut self, fact: impl Into<String>) {
        self.holds = false;
        self.evidence.push(fact.into());
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} [{}]: {}: {}",
            self.promise,
            self.probe,
            self.backing,
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
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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
