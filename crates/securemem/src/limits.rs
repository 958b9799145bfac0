//! Whose locked-memory limit the holders run under: the caller's own (inherited, together with
//! any `CAP_IPC_LOCK` it holds), or one given on the command line (`--memlock`), which the
//! holder sets on itself after dropping `CAP_IPC_LOCK`, as a service without that capability
//! would run.

use serde::Serialize;
use std::fmt;
use std::str::FromStr;

/// A value for `RLIMIT_MEMLOCK`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemlockLimit {
    /// This many bytes.
    Bytes(u64),
    /// No limit (`RLIM_INFINITY`).
    Unlimited,
}

impl MemlockLimit {
    /// The limit in bytes; `None` when unlimited.
    pub fn bytes(self) -> Option<u64> {
        match self {
            MemlockLimit::Bytes(b) => Some(b),
            MemlockLimit::Unlimited => None,
        }
    }

    /// The value for [`crate::sys::set_rlimit`], where `u64::MAX` means unlimited.
    pub fn rlimit(self) -> u64 {
        self.bytes().unwrap_or(u64::MAX)
    }
}

impl FromStr for MemlockLimit {
    type Err = String;

    /// Plain bytes (`65536`), a binary K/M/G suffix (`64K`, `8M`, `1G`, also `KiB`, `MiB`, `GiB`;
    /// case-insensitive), or `unlimited` / `infinity`, as `ulimit -l` and systemd's
    /// `LimitMEMLOCK=` spell it.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let s = text.trim();
        let lower = s.to_ascii_lowercase();
        if lower == "unlimited" || lower == "infinity" {
            return Ok(MemlockLimit::Unlimited);
        }
        let digits = lower.trim_end_matches(|c: char| c.is_ascii_alphabetic());
        let shift = match &lower[digits.len()..] {
            "" | "b" => 0,
            "k" | "kib" => 10,
            "m" | "mib" => 20,
            "g" | "gib" => 30,
            other => {
                return Err(format!(
                    "unknown unit {other:?} in {text:?}: use bytes, K, M, G, or unlimited"
                ))
            }
        };
        let n: u64 = digits.trim().parse().map_err(|_| {
            format!("{text:?} is not a byte count: use e.g. 65536, 64K, 8M, 1G, or unlimited")
        })?;
        n.checked_mul(1 << shift)
            .filter(|&b| b != u64::MAX)
            .map(MemlockLimit::Bytes)
            .ok_or_else(|| format!("{text:?} is too large; use unlimited"))
    }
}

impl fmt::Display for MemlockLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemlockLimit::Bytes(b) => write!(f, "{b}"),
            MemlockLimit::Unlimited => f.write_str("unlimited"),
        }
    }
}

/// Where the holders' limits come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitSource {
    /// Inherited from the process that ran doctor.
    Caller,
    /// Given with `--memlock`.
    Option,
}

/// The locked-memory limit and capability the holders ran with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Limits {
    /// Whose limits these are.
    pub source: LimitSource,
    /// Soft `RLIMIT_MEMLOCK` in bytes (`None`: unlimited).
    pub memlock_soft: Option<u64>,
    /// Hard `RLIMIT_MEMLOCK` in bytes (`None`: unlimited).
    pub memlock_hard: Option<u64>,
    /// The holders have `CAP_IPC_LOCK`, which lifts the limit.
    pub cap_ipc_lock: bool,
}

impl Limits {
    /// The limits holders get: `given`, or this process's own.
    pub fn for_holders(given: Option<MemlockLimit>) -> Limits {
        match given {
            Some(limit) => Limits {
                source: LimitSource::Option,
                memlock_soft: limit.bytes(),
                memlock_hard: limit.bytes(),
                cap_ipc_lock: false,
            },
            None => {
                let (soft, hard) = crate::sys::get_rlimit(libc::RLIMIT_MEMLOCK);
                Limits {
                    source: LimitSource::Caller,
                    memlock_soft: soft,
                    memlock_hard: hard,
                    cap_ipc_lock: crate::sys::has_ipc_lock(),
                }
            }
        }
    }

    /// Whether the locked-memory limit binds the holders at all.
    pub fn binding(&self) -> bool {
        !self.cap_ipc_lock && self.memlock_soft.is_some()
    }

    /// The soft limit in words.
    pub fn soft_text(&self) -> String {
        bytes_text(self.memlock_soft)
    }

    /// One line saying whose limits the holders ran under, with the values.
    pub fn describe(&self) -> String {
        match self.source {
            LimitSource::Caller => format!(
                "the caller's: RLIMIT_MEMLOCK soft {}, hard {}, {}",
                bytes_text(self.memlock_soft),
                bytes_text(self.memlock_hard),
                if self.cap_ipc_lock {
                    "CAP_IPC_LOCK inherited (so the limit does not bind)"
                } else {
                    "no CAP_IPC_LOCK"
                }
            ),
            LimitSource::Option => format!(
                "given with --memlock: RLIMIT_MEMLOCK {} (soft and hard), CAP_IPC_LOCK dropped \
                 in the holders",
                bytes_text(self.memlock_soft)
            ),
        }
    }
}

/// `N bytes` or `unlimited`.
pub fn bytes_text(v: Option<u64>) -> String {
    v.map_or("unlimited".into(), |b| format!("{b} bytes"))
}

#[cfg(test)]
mod tests {
    use super::MemlockLimit::{self, Bytes, Unlimited};

    fn parse(s: &str) -> Result<MemlockLimit, String> {
        s.parse()
    }

    #[test]
    fn memlock_values_parse_like_ulimit_and_systemd() {
        assert_eq!(parse("0"), Ok(Bytes(0)));
        assert_eq!(parse("65536"), Ok(Bytes(65536)));
        assert_eq!(parse("64K"), Ok(Bytes(65536)));
        assert_eq!(parse("64kib"), Ok(Bytes(65536)));
        assert_eq!(parse("8M"), Ok(Bytes(8 << 20)));
        assert_eq!(parse("1G"), Ok(Bytes(1 << 30)));
        assert_eq!(parse("unlimited"), Ok(Unlimited));
        assert_eq!(parse("Infinity"), Ok(Unlimited));
        for bad in [
            "",
            "K",
            "-1",
            "1.5M",
            "12T",
            "lots",
            "99999999999999999999",
            "16777216T",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
        assert!(parse("17179869184G").is_err(), "overflow");
    }
}
