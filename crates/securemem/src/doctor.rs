//! `securemem doctor`: what this machine guarantees for secrets in memory, proven by running
//! every probe against child processes.

use crate::holder::{BackingArg, MlockArg};
use crate::machine::Machine;
use crate::probe::{self, Finding, ProbeError};
use crate::spawn::HolderOptions;
use serde::Serialize;
use std::fmt::Write as _;
use std::path::PathBuf;

/// A promise's verdict on this machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    /// Every probe of the promise ran and found it kept.
    Pass,
    /// A probe found the promise broken although the library claims its mechanism, or a probe
    /// failed to run.
    Fail,
    /// The mechanism is not available in this configuration on this machine, or the probe's
    /// prerequisite is missing; the evidence says which.
    Unavailable,
}

/// One probe's result inside a promise row.
#[derive(Clone, Debug, Serialize)]
pub struct ProbeResult {
    /// What the probe did.
    pub probe: String,
    /// Whether the promise held against this probe; `None` when it did not run.
    pub holds: Option<bool>,
    /// The finding, when the probe ran (its evidence is in the row's).
    #[serde(skip)]
    pub finding: Option<Finding>,
    /// Why the probe did not run or did not finish.
    pub error: Option<ProbeError>,
}

/// One row of the report.
#[derive(Clone, Debug, Serialize)]
pub struct PromiseRow {
    /// `P1` ... `P7`.
    pub id: &'static str,
    /// The promise in words.
    pub promise: &'static str,
    /// The verdict.
    pub status: Status,
    /// The evidence, one fact per entry.
    pub evidence: Vec<String>,
    /// For anything not PASS: what to do, in one line.
    pub remedy: Option<String>,
    /// The probes behind the row.
    pub probes: Vec<ProbeResult>,
}

/// The whole report.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The machine's capabilities.
    pub machine: Machine,
    /// The backing the probes asked for.
    pub backing: BackingArg,
    /// The mlock policy of the probes' holders.
    pub mlock: MlockArg,
    /// One row per promise.
    pub promises: Vec<PromiseRow>,
    /// Every available promise holds (the exit code is 0 exactly then).
    pub ok: bool,
}

const PROMISES: [(&str, &str); 7] = [
    ("P1", "never swapped to disk (locked in RAM)"),
    ("P2", "never in a core dump, gcore included"),
    ("P3", "unreadable while idle"),
    ("P4", "wiped when closed"),
    ("P5", "not inherited by a forked child"),
    ("P6", "invisible to other processes, root included"),
    ("P7", "overflow and underflow are caught"),
];

type ProbeFn = fn(&HolderOptions) -> Result<Finding, ProbeError>;

fn probes() -> Vec<(&'static str, &'static str, ProbeFn)> {
    vec![
        ("P1", "smaps of the secret's mapping", probe::smaps::locked),
        ("P1", "tight RLIMIT_MEMLOCK, MlockPolicy::Required", |o| {
            probe::memlock::limit(o, MlockArg::Required)
        }),
        ("P1", "tight RLIMIT_MEMLOCK, MlockPolicy::BestEffort", |o| {
            probe::memlock::limit(o, MlockArg::BestEffort)
        }),
        ("P2", "kernel core dump, idle", |o| {
            probe::dump::kernel_core_dump(o, false)
        }),
        ("P2", "kernel core dump, inside an access", |o| {
            probe::dump::kernel_core_dump(o, true)
        }),
        ("P2", "gcore, idle", |o| probe::dump::gcore(o, false)),
        ("P2", "gcore, inside an access", |o| {
            probe::dump::gcore(o, true)
        }),
        (
            "P3",
            "touch the raw address outside an access",
            probe::fault::touch_idle,
        ),
        (
            "P4",
            "close under trace, then scan",
            probe::wipe::close_wipes,
        ),
        ("P5", "fork and read in the child", probe::fault::fork),
        ("P6", "read from outside, idle", |o| {
            probe::kernel_read::kernel_read(o, false)
        }),
        ("P6", "read from outside, inside an access", |o| {
            probe::kernel_read::kernel_read(o, true)
        }),
        ("P7", "write one byte past the end", probe::fault::overflow),
        (
            "P7",
            "write one byte before the data page",
            probe::fault::underflow,
        ),
        (
            "P7",
            "write one byte before the secret, inside its page",
            probe::fault::underflow_in_page,
        ),
    ]
}

/// Runs every probe (in parallel) and builds the report.
pub fn run(exe: PathBuf, backing: BackingArg) -> Report {
    let machine = Machine::detect();
    // Best effort, so the probes still run (and say what is weaker) where memory cannot be
    // locked; the P1 row then reports the secrets as not locked.
    let mlock = MlockArg::BestEffort;
    let options = HolderOptions::new(exe)
        .with_backing(backing)
        .with_mlock(mlock);
    let results: Vec<(&str, ProbeResult)> = std::thread::scope(|scope| {
        let handles: Vec<_> = probes()
            .into_iter()
            .map(|(id, name, f)| {
                let options = &options;
                (id, name, scope.spawn(move || f(options)))
            })
            .collect();
        handles
            .into_iter()
            .map(|(id, name, h)| {
                let outcome = h
                    .join()
                    .unwrap_or_else(|_| Err(ProbeError::Broken("the probe panicked".into())));
                let (finding, error) = match outcome {
                    Ok(f) => (Some(f), None),
                    Err(e) => (None, Some(e)),
                };
                (
                    id,
                    ProbeResult {
                        probe: name.to_string(),
                        holds: finding.as_ref().map(|f| f.holds),
                        finding,
                        error,
                    },
                )
            })
            .collect()
    });
    let promises: Vec<PromiseRow> = PROMISES
        .iter()
        .map(|&(id, promise)| {
            let probes: Vec<ProbeResult> = results
                .iter()
                .filter(|(p, _)| *p == id)
                .map(|(_, r)| r.clone())
                .collect();
            judge(id, promise, probes, &machine, backing)
        })
        .collect();
    let ok = promises.iter().all(|p| p.status != Status::Fail);
    Report {
        machine,
        backing,
        mlock,
        promises,
        ok,
    }
}

fn judge(
    id: &'static str,
    promise: &'static str,
    probes: Vec<ProbeResult>,
    m: &Machine,
    requested: BackingArg,
) -> PromiseRow {
    let mut evidence = Vec::new();
    let mut broken = false;
    let mut failed_to_run = false;
    let mut skipped = Vec::new();
    let mut marker_backing = None;
    let mut reported_unlocked = false;
    for p in &probes {
        match (&p.finding, &p.error) {
            (Some(f), _) => {
                let verdict = if f.holds { "ok" } else { "BROKEN" };
                evidence.push(format!(
                    "{} [{verdict}]: {}",
                    p.probe,
                    f.evidence.join("; ")
                ));
                broken |= !f.holds;
                if let Some(r) = &f.ready {
                    marker_backing.get_or_insert(r.backing.clone());
                    reported_unlocked |= !r.locked;
                }
            }
            (None, Some(ProbeError::Skipped(reason))) => {
                evidence.push(format!("{} [skipped]: {reason}", p.probe));
                skipped.push(reason.clone());
            }
            (None, Some(ProbeError::Broken(reason))) => {
                evidence.push(format!("{} [probe failed]: {reason}", p.probe));
                failed_to_run = true;
            }
            (None, None) => {}
        }
    }
    let anonymous = marker_backing.as_deref() == Some("anonymous");
    // A probe that finds a promise broken is a FAIL, unless the mechanism behind the promise is
    // one this configuration does not have, in which case the promise is unavailable here.
    let unavailable_reason = match id {
        "P6" if anonymous => Some(match &m.memfd_secret {
            Ok(()) if requested == BackingArg::Anonymous => "the secret is in anonymous memory \
                (Backing::Anonymous was chosen): root reads it through /proc/PID/mem, which \
                ignores PROT_NONE"
                .to_string(),
            Ok(()) => "memfd_secret works, but secret memory is charged to RLIMIT_MEMLOCK and \
                the limit is reached, so Backing::Auto fell back to anonymous memory, which root \
                reads through /proc/PID/mem"
                .to_string(),
            Err(e) => format!(
                "memfd_secret is unavailable ({e}), so secrets fall back to anonymous memory, \
                 which root reads through /proc/PID/mem"
            ),
        }),
        "P1" if reported_unlocked => Some(format!(
            "secrets cannot be locked: RLIMIT_MEMLOCK soft limit is {}",
            m.memlock_soft
                .map_or("unlimited".into(), |b| format!("{b} bytes"))
        )),
        _ => None,
    };
    let remedy_for = |status: Status| -> Option<String> {
        if status == Status::Pass {
            return None;
        }
        Some(match id {
            "P1" if reported_unlocked => {
                "raise RLIMIT_MEMLOCK (`ulimit -l`, systemd `LimitMEMLOCK=`, \
                `docker run --ulimit memlock=`) or grant CAP_IPC_LOCK"
                    .into()
            }
            "P6" if unavailable_reason.is_some()
                && m.memfd_secret.is_ok()
                && requested != BackingArg::Anonymous =>
            {
                "raise RLIMIT_MEMLOCK (`ulimit -l`, \
                systemd `LimitMEMLOCK=`) or grant CAP_IPC_LOCK, so secret memory can be had"
                    .into()
            }
            "P6" if unavailable_reason.is_some() => "use Backing::Auto on Linux 5.14+ with \
                memfd_secret enabled (boot with secretmem.enable=1 on kernels before 6.5)"
                .into(),
            "P7" if !skipped.is_empty() && !broken && !failed_to_run => "the guard pages still \
                catch what leaves the data pages; for a canary inside them, use a securememory \
                that reports Secret::protection().canary for small secrets"
                .into(),
            "P2" if !skipped.is_empty() && !broken => {
                if m.core_piped {
                    "dumps go to a program: check what it stores (e.g. `coredumpctl`), or set \
                     kernel.core_pattern=core to let this probe verify; to be sure, call \
                     securememory::disable_core_dumps() AND disable the collector"
                        .into()
                } else {
                    format!("to run the missing probe: {}", skipped.join("; "))
                }
            }
            _ if failed_to_run => "a probe could not run; rerun `securemem doctor` and report the \
                evidence if it persists"
                .into(),
            _ if !skipped.is_empty() && !broken => {
                format!("to run the missing probe: {}", skipped.join("; "))
            }
            _ => "this promise is broken on this machine: report it with this output".into(),
        })
    };
    let status = if broken {
        if unavailable_reason.is_some() {
            Status::Unavailable
        } else {
            Status::Fail
        }
    } else if failed_to_run {
        Status::Fail
    } else if !skipped.is_empty() {
        Status::Unavailable
    } else {
        Status::Pass
    };
    if let Some(reason) = &unavailable_reason {
        if status == Status::Unavailable {
            evidence.insert(0, reason.clone());
        }
    }
    if id == "P1" && m.swap_devices == 0 {
        evidence.push("this machine has no swap at the moment".into());
    }
    PromiseRow {
        id,
        promise,
        status,
        remedy: remedy_for(status),
        evidence,
        probes,
    }
}

impl Report {
    /// The report as plain text.
    pub fn plain(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "securemem doctor: what this machine guarantees for secrets in memory\n"
        );
        let _ = writeln!(out, "Machine");
        for (name, value) in self.machine.rows() {
            let _ = writeln!(out, "  {name:<26}{value}");
        }
        let backing_got = self
            .promises
            .iter()
            .flat_map(|p| &p.probes)
            .filter_map(|p| p.finding.as_ref())
            .find(|f| f.ready.is_some())
            .map_or("unknown".to_string(), |f| f.backing.clone());
        let _ =
            writeln!(
            out,
            "\nPromises (probed in child processes; backing {} -> {backing_got}, MlockPolicy::{})",
            self.backing.name(),
            if self.mlock == MlockArg::BestEffort { "BestEffort" } else { "Required" },
        );
        for row in &self.promises {
            let status = match row.status {
                Status::Pass => "PASS",
                Status::Fail => "FAIL",
                Status::Unavailable => "UNAVAILABLE",
            };
            let _ = writeln!(out, "  {} {:<46}{status}", row.id, row.promise);
            for e in &row.evidence {
                let _ = writeln!(out, "       - {e}");
            }
            if let Some(r) = &row.remedy {
                let _ = writeln!(out, "       remedy: {r}");
            }
        }
        let fails = self
            .promises
            .iter()
            .filter(|p| p.status == Status::Fail)
            .count();
        let unavailable = self
            .promises
            .iter()
            .filter(|p| p.status == Status::Unavailable)
            .count();
        let _ = writeln!(
            out,
            "\n{}: {} PASS, {fails} FAIL, {unavailable} UNAVAILABLE",
            if self.ok { "OK" } else { "NOT OK" },
            self.promises.len() - fails - unavailable
        );
        out
    }
}
