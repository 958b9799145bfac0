//! `securemem doctor`: what this machine guarantees for secrets in memory, proven by running
//! every probe against child processes.

use crate::holder::{strategy_name, BackingArg, MlockArg, Policy, StrategyArg};
use crate::limits::{LimitSource, Limits, MemlockLimit};
use crate::machine::Machine;
use crate::probe::{self, Finding, ProbeError, Refusal};
use crate::spawn::{HolderOptions, Ready};
use securememory::Strategy;
use serde::Serialize;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The version of the JSON report's layout (`"schema"`), raised whenever a field changes
/// meaning or goes away.
pub const SCHEMA: u32 = 3;

/// Exit code: every required promise holds.
pub const EXIT_OK: u8 = 0;
/// Exit code: a required promise does not hold.
pub const EXIT_NOT_HELD: u8 = 1;
/// Exit code: the command line is wrong (clap's own errors exit with it too).
pub const EXIT_USAGE: u8 = 2;
/// Exit code: the probe itself broke (a holder could not be started, a probe hung or answered
/// nonsense), so a required promise could not be judged.
pub const EXIT_PROBE_BROKEN: u8 = 3;

/// The longest line of evidence in the plain report, in characters; `--json` keeps it whole.
pub const EVIDENCE_WIDTH: usize = 160;

/// A promise's verdict on this machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    /// Every probe of the promise ran and found it kept.
    Pass,
    /// A probe found the promise broken although the library claims its mechanism, or the
    /// library refused to create a secret with the settings and limits probed.
    Fail,
    /// The mechanism is not available in this configuration on this machine, or the probe's
    /// prerequisite is missing; the evidence says which.
    Unavailable,
    /// The probe itself broke (a holder that could not be started, a hang): no verdict.
    Error,
    /// Not a promise of the strategy the secrets got, because this machine cannot give the one
    /// that makes it (no protection keys): the evidence says what is missing. It never fails the
    /// exit code unless the promise is named with `--require`.
    Skip,
    /// Not a promise of the strategy the secrets got in this configuration (page protection
    /// opens a secret to every thread during an access; only sealed secrets are ciphertext at
    /// rest): the evidence says why that strategy.
    /// It never fails the exit code unless the promise is named with `--require`.
    #[serde(rename = "N/A")]
    NotApplicable,
}

impl Status {
    /// The word in the report.
    pub fn word(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Fail => "FAIL",
            Status::Unavailable => "UNAVAILABLE",
            Status::Error => "ERROR",
            Status::Skip => "SKIP",
            Status::NotApplicable => "N/A",
        }
    }
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
    /// Probes of one promise with an alternative tag stand in for each other: the promise is
    /// decided when every probe of one tag ran, the others being skipped.
    #[serde(skip)]
    pub alternative: Option<&'static str>,
}

impl ProbeResult {
    /// The result of probe `probe` from its outcome.
    pub fn new(
        probe: &str,
        alternative: Option<&'static str>,
        outcome: Result<Finding, ProbeError>,
    ) -> Self {
        let (finding, error) = match outcome {
            Ok(f) => (Some(f), None),
            Err(e) => (None, Some(e)),
        };
        ProbeResult {
            probe: probe.to_string(),
            holds: finding.as_ref().map(|f| f.holds),
            finding,
            error,
            alternative,
        }
    }

    fn ran_and_held(&self) -> bool {
        self.finding.as_ref().is_some_and(|f| f.holds)
    }

    fn skipped(&self) -> Option<&str> {
        match &self.error {
            Some(ProbeError::Skipped(reason)) => Some(reason),
            _ => None,
        }
    }
}

/// One row of the report.
#[derive(Clone, Debug, Serialize)]
pub struct PromiseRow {
    /// `P1` ... `P9`.
    pub id: &'static str,
    /// The promise in words.
    pub promise: &'static str,
    /// The verdict.
    pub status: Status,
    /// The evidence, one fact per entry, in full.
    pub evidence: Vec<String>,
    /// For anything not PASS: what to do, in one line.
    pub remedy: Option<String>,
    /// The probes behind the row.
    pub probes: Vec<ProbeResult>,
}

/// Which promises must hold for doctor to exit 0.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Requirement {
    /// The promises the exit code covers.
    pub promises: Vec<&'static str>,
    /// Whether an `UNAVAILABLE` promise among them is accepted (only without `--require` and
    /// `--strict`).
    pub unavailable_allowed: bool,
    /// Whether a promise among them that is not one of the probed strategy (`N/A`, `SKIP`) is
    /// accepted (all but `--require`, which names promises that must PASS).
    pub not_applicable_allowed: bool,
}

impl Default for Requirement {
    /// Every promise that this machine and configuration offer must hold.
    fn default() -> Self {
        Requirement {
            promises: PROMISES.iter().map(|&(id, _)| id).collect(),
            unavailable_allowed: true,
            not_applicable_allowed: true,
        }
    }
}

impl Requirement {
    /// Every promise of the probed strategy must PASS (`--strict`).
    pub fn strict() -> Self {
        Requirement {
            unavailable_allowed: false,
            ..Requirement::default()
        }
    }

    /// These promises must PASS (`--require`), in the report's order.
    pub fn listed(ids: &[&str]) -> Self {
        Requirement {
            promises: PROMISES
                .iter()
                .map(|&(id, _)| id)
                .filter(|id| ids.contains(id))
                .collect(),
            unavailable_allowed: false,
            not_applicable_allowed: false,
        }
    }

    /// The requirement in words.
    pub fn describe(&self) -> String {
        if self.unavailable_allowed {
            "every available promise must hold (UNAVAILABLE is accepted; --require P1,... or \
             --strict to demand more)"
                .into()
        } else if self.not_applicable_allowed {
            "every promise of the probed strategy must PASS (--strict; N/A and SKIP are accepted)"
                .into()
        } else {
            format!("{} must PASS (--require)", self.promises.join(", "))
        }
    }

    /// The exit code for these rows: [`EXIT_NOT_HELD`] when a required promise FAILs, or is
    /// UNAVAILABLE, SKIP or N/A and that is not accepted; otherwise [`EXIT_PROBE_BROKEN`] when
    /// a required promise could not be judged (ERROR); otherwise [`EXIT_OK`]. A promise found
    /// broken is an answer even when another probe broke, so it decides first.
    pub fn exit_code(&self, rows: &[PromiseRow]) -> u8 {
        let required: Vec<Status> = rows
            .iter()
            .filter(|r| self.promises.contains(&r.id))
            .map(|r| r.status)
            .collect();
        let unavailable_counts = !self.unavailable_allowed;
        let not_applicable_counts = !self.not_applicable_allowed;
        if required.contains(&Status::Fail)
            || (unavailable_counts && required.contains(&Status::Unavailable))
            || (not_applicable_counts
                && (required.contains(&Status::Skip) || required.contains(&Status::NotApplicable)))
        {
            EXIT_NOT_HELD
        } else if required.contains(&Status::Error) {
            EXIT_PROBE_BROKEN
        } else {
            EXIT_OK
        }
    }
}

/// What to probe, and how.
#[derive(Clone, Debug)]
pub struct Options {
    /// The `securemem` executable that has the hidden `holder` subcommand.
    pub exe: PathBuf,
    /// The factory settings of the holders.
    pub policy: Policy,
    /// The holders' `RLIMIT_MEMLOCK` (without `CAP_IPC_LOCK`); `None`: the caller's.
    pub memlock: Option<MemlockLimit>,
    /// Which promises must hold.
    pub requirement: Requirement,
}

impl Options {
    /// The library's defaults, the caller's limits, every available promise.
    pub fn new(exe: impl Into<PathBuf>) -> Self {
        Options {
            exe: exe.into(),
            policy: Policy::default(),
            memlock: None,
            requirement: Requirement::default(),
        }
    }
}

/// The whole report.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The layout version of this report ([`SCHEMA`]).
    pub schema: u32,
    /// The version of securemem that wrote it.
    pub securemem_version: &'static str,
    /// The machine's capabilities.
    pub machine: Machine,
    /// The factory settings the holders used.
    pub policy: Policy,
    /// What `Strategy::Auto` resolves to here for the policy's backing, and why.
    pub auto_strategy: AutoStrategy,
    /// What the holders' secrets got (`Secret::protection`); `None` when no secret was created.
    pub got: Option<Got>,
    /// Whose locked-memory limit the holders ran under.
    pub limits: Limits,
    /// Which promises must hold.
    pub requirement: Requirement,
    /// One row per promise.
    pub promises: Vec<PromiseRow>,
    /// The process's exit code (see [`EXIT_OK`] and the others).
    pub exit_code: u8,
    /// `exit_code` is 0.
    pub ok: bool,
}

/// What `Strategy::Auto` resolves to on this machine, as the library decides it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AutoStrategy {
    /// The backing it was asked for (the policy's).
    pub backing: BackingArg,
    /// `page-protection` or `protection-key` (never `sealed`, which is only had by asking).
    pub strategy: &'static str,
    /// Why, in the library's words (`securememory::system::auto_strategy`).
    pub reason: String,
}

impl AutoStrategy {
    /// The library's answer for secrets with `backing`.
    pub fn detect(backing: BackingArg) -> Self {
        let (strategy, reason) = securememory::system::auto_strategy(backing.backing());
        AutoStrategy {
            backing,
            strategy: strategy_name(strategy),
            reason,
        }
    }
}

/// What a secret got, as the holders reported it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Got {
    /// `secretmem` or `anonymous`.
    pub backing: String,
    /// `page-protection`, `protection-key` or `sealed`.
    pub strategy: String,
}

/// The id of the promise that only a per-thread window keeps.
pub const PER_THREAD: &str = "P8";

/// The id of the promise that only sealed secrets keep.
pub const SEALED_AT_REST: &str = "P9";

/// The promises, in report order.
pub const PROMISES: [(&str, &str); 9] = [
    ("P1", "never swapped to disk (locked in RAM)"),
    ("P2", "never in a core dump, gcore included"),
    ("P3", "unreadable while idle"),
    ("P4", "wiped when closed"),
    ("P5", "not inherited by a forked child"),
    ("P6", "invisible to other processes, root included"),
    ("P7", "overflow and underflow are caught"),
    (
        PER_THREAD,
        "another thread's read of a secret during an access faults",
    ),
    (
        SEALED_AT_REST,
        "sealed at rest: only ciphertext while idle, its key out of reach",
    ),
];

/// The promise id as written in the report (`P1` ... `P9`), from user input (`p1` too).
///
/// # Errors
/// A message naming the valid ids.
pub fn promise_id(text: &str) -> Result<&'static str, String> {
    let wanted = text.trim();
    PROMISES
        .iter()
        .map(|&(id, _)| id)
        .find(|id| id.eq_ignore_ascii_case(wanted))
        .ok_or_else(|| format!("unknown promise {wanted:?}: the promises are P1 to P9"))
}

/// A probe: it attacks a holder started with the options given.
pub type ProbeFn = fn(&HolderOptions) -> Result<Finding, ProbeError>;

/// One probe of the suite.
pub struct ProbeSpec {
    /// The promise it tests.
    pub promise: &'static str,
    /// What it does, as the report names it.
    pub name: &'static str,
    /// Probes of one promise with an alternative tag stand in for each other.
    pub alternative: Option<&'static str>,
    /// The probe.
    pub run: ProbeFn,
}

const KERNEL_DUMP: Option<&str> = Some("kernel core dump");
const GCORE: Option<&str> = Some("gcore");

/// Every probe doctor runs, in report order: the suite that `securemem doctor` and the tests
/// share.
pub fn probes() -> Vec<ProbeSpec> {
    let spec = |promise, name, alternative, run: ProbeFn| ProbeSpec {
        promise,
        name,
        alternative,
        run,
    };
    vec![
        spec(
            "P1",
            "smaps of the secret's mapping",
            None,
            probe::smaps::locked,
        ),
        spec(
            "P1",
            "tight RLIMIT_MEMLOCK, MlockPolicy::Required",
            None,
            |o| probe::memlock::limit(o, MlockArg::Required),
        ),
        spec(
            "P1",
            "tight RLIMIT_MEMLOCK, MlockPolicy::BestEffort",
            None,
            |o| probe::memlock::limit(o, MlockArg::BestEffort),
        ),
        spec("P2", "kernel core dump, idle", KERNEL_DUMP, |o| {
            probe::dump::kernel_core_dump(o, false)
        }),
        spec(
            "P2",
            "kernel core dump, inside an access",
            KERNEL_DUMP,
            |o| probe::dump::kernel_core_dump(o, true),
        ),
        spec("P2", "gcore, idle", GCORE, |o| probe::dump::gcore(o, false)),
        spec("P2", "gcore, inside an access", GCORE, |o| {
            probe::dump::gcore(o, true)
        }),
        spec(
            "P3",
            "touch the raw address outside an access",
            None,
            probe::fault::touch_idle,
        ),
        spec("P4", "close, then scan", None, probe::wipe::close_wipes),
        spec("P5", "fork and read in the child", None, probe::fault::fork),
        spec("P6", "read from outside, idle", None, |o| {
            probe::kernel_read::kernel_read(o, false)
        }),
        spec("P6", "read from outside, inside an access", None, |o| {
            probe::kernel_read::kernel_read(o, true)
        }),
        spec(
            "P7",
            "write one byte past the end",
            None,
            probe::fault::overflow,
        ),
        spec(
            "P7",
            "write one byte before the data page",
            None,
            probe::fault::underflow,
        ),
        spec(
            "P7",
            "write one byte before the secret, inside its page",
            None,
            probe::fault::underflow_in_page,
        ),
        spec(
            PER_THREAD,
            "another thread reads during an access",
            None,
            probe::fault::read_from_another_thread,
        ),
        spec(
            SEALED_AT_REST,
            "read from outside, find the sealed bytes and the key's page, change a byte",
            None,
            probe::sealed::at_rest,
        ),
        spec(
            SEALED_AT_REST,
            "search memory and registers for copies of the key and the key stream",
            None,
            probe::sealed::key_copies,
        ),
    ]
}

/// What a row's verdict depends on besides its probes.
#[derive(Clone, Debug)]
pub struct Context {
    /// The machine.
    pub machine: Machine,
    /// The holders' factory settings.
    pub policy: Policy,
    /// The holders' limits.
    pub limits: Limits,
    /// What `Strategy::Auto` resolves to here.
    pub auto: AutoStrategy,
}

/// Runs every probe (in parallel) and builds the report. `progress` is called with each row as
/// soon as all its probes have finished, and the time since the start.
pub fn run(options: &Options, progress: &mut dyn FnMut(&PromiseRow, Duration)) -> Report {
    let context = Context {
        machine: Machine::detect(),
        policy: options.policy,
        limits: Limits::for_holders(options.memlock),
        auto: AutoStrategy::detect(options.policy.backing),
    };
    let holder = HolderOptions::new(&options.exe)
        .with_policy(options.policy)
        .with_memlock(options.memlock);
    let specs = probes();
    let started = Instant::now();
    let mut results: Vec<Option<ProbeResult>> = vec![None; specs.len()];
    let mut rows: Vec<Option<PromiseRow>> = vec![None; PROMISES.len()];
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::channel();
        for (i, spec) in specs.iter().enumerate() {
            let (tx, holder, run) = (tx.clone(), &holder, spec.run);
            scope.spawn(move || {
                let outcome = std::panic::catch_unwind(|| run(holder))
                    .unwrap_or_else(|_| Err(ProbeError::Broken("the probe panicked".into())));
                let _ = tx.send((i, outcome));
            });
        }
        drop(tx);
        for (i, outcome) in rx {
            let spec = &specs[i];
            results[i] = Some(ProbeResult::new(spec.name, spec.alternative, outcome));
            let mine = || (0..specs.len()).filter(|&j| specs[j].promise == spec.promise);
            if mine().all(|j| results[j].is_some()) {
                let Some(k) = PROMISES.iter().position(|&(id, _)| id == spec.promise) else {
                    continue;
                };
                let probes = mine().filter_map(|j| results[j].clone()).collect();
                let row = judge(PROMISES[k].0, PROMISES[k].1, probes, &context);
                progress(&row, started.elapsed());
                rows[k] = Some(row);
            }
        }
    });
    let promises: Vec<PromiseRow> = PROMISES
        .iter()
        .zip(rows)
        .map(|(&(id, promise), row)| {
            row.unwrap_or_else(|| judge(id, promise, Vec::new(), &context))
        })
        .collect();
    let exit_code = options.requirement.exit_code(&promises);
    let got = promises
        .iter()
        .flat_map(|p| &p.probes)
        .filter_map(|p| p.finding.as_ref()?.ready.as_ref())
        .map(|r| Got {
            backing: r.backing.clone(),
            strategy: r.strategy.clone(),
        })
        .next();
    Report {
        schema: SCHEMA,
        securemem_version: env!("CARGO_PKG_VERSION"),
        machine: context.machine,
        policy: context.policy,
        auto_strategy: context.auto,
        got,
        limits: context.limits,
        requirement: options.requirement.clone(),
        promises,
        exit_code,
        ok: exit_code == EXIT_OK,
    }
}

/// The promise whose row a refusal of the library fails: the one whose mechanism could not be
/// had. Every other row is left unprobed.
pub fn refusal_owner(refusal: &Refusal) -> &'static str {
    match refusal.error.as_str() {
        "BackingUnavailable" => "P6",
        "StrategyUnavailable" => PER_THREAD,
        _ => "P1",
    }
}

fn refusal_remedy(refusal: &Refusal, c: &Context) -> String {
    match refusal.error.as_str() {
        "MemoryLockLimit" => {
            let mut remedy = format!(
                "raise the locked-memory limit the application runs under (systemd \
                 `LimitMEMLOCK=`, `ulimit -l`, `docker run --ulimit memlock=`; every secret \
                 takes at least one page, {} bytes) or grant it CAP_IPC_LOCK",
                c.machine.page_size
            );
            // Secret memory is charged to the limit whatever the policy, and sealed secrets lock
            // their key and scratch area whatever it says.
            if c.policy.mlock == MlockArg::Required
                && c.policy.backing != BackingArg::Secretmem
                && c.policy.strategy != StrategyArg::Sealed
            {
                remedy.push_str(", or accept unlocked secrets with MlockPolicy::BestEffort");
            }
            remedy
        }
        "BackingUnavailable" => "use Backing::Auto, which falls back to anonymous memory, or a \
            kernel with memfd_secret (Linux 5.14+, booted with secretmem.enable=1 before 6.5)"
            .into(),
        "StrategyUnavailable" => "use Strategy::Auto, which takes protection keys only where \
            they can be had, or run on an x86_64 CPU with protection keys (pku and ospke in \
            /proc/cpuinfo)"
            .into(),
        other => format!(
            "the library cannot create a secret here ({other}): act on its message in the \
             evidence"
        ),
    }
}

/// Judges one promise from its probes' results.
pub fn judge(
    id: &'static str,
    promise: &'static str,
    probes: Vec<ProbeResult>,
    c: &Context,
) -> PromiseRow {
    let m = &c.machine;
    let requested = c.policy.backing;
    let mut evidence = Vec::new();
    // Broken findings of probes that attack a marker holder, which a missing mechanism can
    // excuse, and of the others (the limit probes), which nothing excuses.
    let mut broken = false;
    let mut broken_unexcused = false;
    let mut errors = false;
    let mut skipped: Vec<&ProbeResult> = Vec::new();
    let mut refusal: Option<Refusal> = None;
    let mut marker_backing = None;
    let mut reported_unlocked = false;
    let got = probes
        .iter()
        .find_map(|p| p.finding.as_ref()?.ready.as_ref());
    let got_strategy = got.map(|r| r.strategy.as_str());
    let sealed = got.is_some_and(Ready::sealed);
    // The per-thread promise is one of protection keys only, the sealed one of sealed secrets
    // only: under another strategy the probe shows what that strategy does, and the row says why
    // the secrets got it.
    let not_a_promise = got.and_then(|r| not_a_promise_here(id, r, c));
    for p in &probes {
        match (&p.finding, &p.error) {
            (Some(f), _) => {
                // What a probe saw where its promise does not apply is told in the order it
                // happened, the outcome last.
                let (verdict, facts) = match (f.holds, &not_a_promise) {
                    (true, _) => ("ok", f.facts_broken_first()),
                    (false, Some(_)) => ("seen", f.evidence.iter().map(String::as_str).collect()),
                    (false, None) => ("BROKEN", f.facts_broken_first()),
                };
                evidence.push(format!("{} [{verdict}]: {}", p.probe, facts.join("; ")));
                broken |= !f.holds;
                broken_unexcused |= !f.holds && f.ready.is_none();
                if let Some(r) = &f.ready {
                    marker_backing.get_or_insert(r.backing.clone());
                    reported_unlocked |= !r.locked;
                }
            }
            (None, Some(ProbeError::Skipped(reason))) => {
                evidence.push(format!("{} [skipped]: {reason}", p.probe));
                skipped.push(p);
            }
            (None, Some(ProbeError::Refused(r))) => {
                refusal.get_or_insert_with(|| r.clone());
            }
            (None, Some(ProbeError::Broken(reason))) => {
                evidence.push(format!("{} [probe failed]: {reason}", p.probe));
                errors = true;
            }
            (None, None) => {}
        }
    }
    if probes.is_empty() {
        evidence.push("no probe reported back".into());
        errors = true;
    }
    // Skipped probes are covered when, for probes that stand in for each other, every probe of
    // another alternative ran and held.
    let complete: Vec<&str> = probes
        .iter()
        .filter_map(|p| p.alternative)
        .filter(|&alt| {
            probes
                .iter()
                .filter(|q| q.alternative == Some(alt))
                .all(ProbeResult::ran_and_held)
        })
        .fold(Vec::new(), |mut v, alt| {
            if !v.contains(&alt) {
                v.push(alt);
            }
            v
        });
    let (covered, uncovered): (Vec<&ProbeResult>, Vec<&ProbeResult>) = skipped
        .iter()
        .partition(|p| p.alternative.is_some() && !complete.is_empty());
    let mut skip_reasons: Vec<&str> = Vec::new();
    for reason in uncovered.iter().filter_map(|p| p.skipped()) {
        if !skip_reasons.contains(&reason) {
            skip_reasons.push(reason);
        }
    }
    if !covered.is_empty() {
        let mut skipped_alts: Vec<&str> = Vec::new();
        for alt in covered.iter().filter_map(|p| p.alternative) {
            if !skipped_alts.contains(&alt) {
                skipped_alts.push(alt);
            }
        }
        evidence.push(format!(
            "decided by the {} probes; the {} probes were skipped (see above)",
            complete.join(" and "),
            skipped_alts.join(" and ")
        ));
    }

    let anonymous = marker_backing.as_deref() == Some("anonymous");
    // How other processes read anonymous memory: through PROT_NONE, or past a protection key,
    // which binds only the threads of the process itself.
    let read_through = if got_strategy == Some(strategy_name(Strategy::ProtectionKey)) {
        "through /proc/PID/mem and process_vm_readv, which protection keys do not stop"
    } else {
        "through /proc/PID/mem, which ignores PROT_NONE"
    };
    // A probe that finds a promise broken is a FAIL, unless the mechanism behind the promise is
    // one this configuration does not have, in which case the promise is unavailable here.
    let excuse = match id {
        "P6" | SEALED_AT_REST if anonymous && sealed => Some(match &m.memfd_secret {
            Ok(()) if requested == BackingArg::Anonymous => "the sealing key's page and the \
                scratch area are in anonymous memory (Backing::Anonymous was chosen): root reads \
                the key through /proc/PID/mem and process_vm_readv, which protection keys do not \
                stop, and with it opens the sealed bytes; and the plaintext during an access"
                .to_string(),
            Ok(()) => "memfd_secret works, but secret memory is charged to RLIMIT_MEMLOCK and \
                the limit is reached, so the sealing key and the scratch area are in anonymous \
                memory, where root reads the key (and with it opens the sealed bytes) and the \
                plaintext during an access"
                .to_string(),
            Err(e) => format!(
                "memfd_secret is unavailable ({e}), so the sealing key and the scratch area are \
                 in anonymous memory, where root reads the key through /proc/PID/mem and \
                 process_vm_readv (and with it opens the sealed bytes) and the plaintext during \
                 an access"
            ),
        }),
        "P6" if anonymous => Some(match &m.memfd_secret {
            Ok(()) if requested == BackingArg::Anonymous => format!(
                "the secret is in anonymous memory (Backing::Anonymous was chosen): root reads \
                 it {read_through}"
            ),
            Ok(()) => format!(
                "memfd_secret works, but secret memory is charged to RLIMIT_MEMLOCK and the \
                 limit is reached, so Backing::Auto fell back to anonymous memory, which root \
                 reads {read_through}"
            ),
            Err(e) => format!(
                "memfd_secret is unavailable ({e}), so secrets fall back to anonymous memory, \
                 which root reads {read_through}"
            ),
        }),
        "P1" if reported_unlocked && c.policy.mlock == MlockArg::Disabled => Some(
            "MlockPolicy::Disabled was chosen: the library does not lock anonymous memory".into(),
        ),
        "P1" if reported_unlocked => Some(format!(
            "secrets cannot be locked: the holders' RLIMIT_MEMLOCK soft limit is {} ({}), and \
             {} allows going on unlocked",
            c.limits.soft_text(),
            match c.limits.source {
                LimitSource::Caller => "the caller's",
                LimitSource::Option => "given with --memlock",
            },
            c.policy.mlock.rust_name()
        )),
        _ => None,
    };
    let owned_refusal = refusal.as_ref().filter(|r| refusal_owner(r) == id);
    let broken_for_real =
        broken_unexcused || (broken && excuse.is_none() && not_a_promise.is_none());
    let status = if broken_for_real || owned_refusal.is_some() {
        Status::Fail
    } else if errors {
        Status::Error
    } else if let Some(not) = &not_a_promise {
        not.status
    } else if refusal.is_some() || broken || !skip_reasons.is_empty() {
        Status::Unavailable
    } else {
        Status::Pass
    };
    if let Some(r) = &refusal {
        let owner = refusal_owner(r);
        evidence.insert(
            0,
            if owner == id {
                format!("the library refused the first secret: {}", r.message)
            } else {
                format!(
                    "not probed: the library refused to create a secret with these settings and \
                     limits (see {owner})"
                )
            },
        );
    } else if let (Some(reason), Status::Unavailable) = (&excuse, status) {
        if broken {
            evidence.insert(0, reason.clone());
        }
    } else if let (Some(not), Status::Skip | Status::NotApplicable) = (&not_a_promise, status) {
        evidence.splice(0..0, not.evidence.iter().cloned());
    }
    if id == "P1" && m.swap_devices == 0 {
        evidence.push("this machine has no swap at the moment".into());
    }
    let remedy = match status {
        Status::Pass => None,
        Status::Fail if broken_for_real => {
            Some("this promise is broken on this machine: report it with this output".into())
        }
        Status::Fail => owned_refusal.map(|r| refusal_remedy(r, c)),
        Status::Error => Some(
            "a probe could not run; rerun `securemem doctor` and report the evidence if it \
             persists"
                .into(),
        ),
        Status::Unavailable => Some(unavailable_remedy(
            id,
            c,
            refusal.as_ref(),
            excuse.is_some() && broken,
            &skip_reasons,
        )),
        Status::Skip | Status::NotApplicable => not_a_promise.map(|not| not.remedy),
    };
    PromiseRow {
        id,
        promise,
        status,
        remedy,
        evidence,
        probes,
    }
}

/// Why a promise is not one of the strategy the secrets got, and what would make it one.
struct NotAPromise {
    /// `SKIP` (the machine lacks what would make it one) or `N/A` (the configuration chose so).
    status: Status,
    /// The reasons, first in the row's evidence.
    evidence: Vec<String>,
    /// What to do about it, if anything.
    remedy: String,
}

/// Why promise `id` is not one of the strategy the secrets got (what `ready` says), if it is not:
/// the per-thread promise outside protection keys, the sealed one outside sealed secrets.
fn not_a_promise_here(id: &str, ready: &Ready, c: &Context) -> Option<NotAPromise> {
    match id {
        PER_THREAD if ready.strategy != strategy_name(Strategy::ProtectionKey) => {
            Some(not_per_thread(ready, c))
        }
        SEALED_AT_REST if !ready.sealed() => Some(not_sealed(ready, c)),
        _ => None,
    }
}

/// Why `Strategy::Auto` gave the secrets what `ready` says.
fn auto_chose(ready: &Ready, c: &Context) -> String {
    let why = if c.auto.strategy == ready.strategy {
        c.auto.reason.clone()
    } else {
        format!(
            "{} put the secrets in {} memory (see P6), where a protection key would leave them \
             readable to other processes",
            c.auto.backing.rust_name(),
            ready.backing
        )
    };
    format!("Strategy::Auto chose it: {why}")
}

/// The strategy chosen on the command line, in words.
fn chosen(strategy: StrategyArg) -> String {
    format!(
        "{} was chosen (--strategy {})",
        strategy.rust_name(),
        strategy.name()
    )
}

/// The per-thread promise for secrets that got what `ready` says (not protection keys).
fn not_per_thread(ready: &Ready, c: &Context) -> NotAPromise {
    let key = strategy_name(Strategy::ProtectionKey);
    let got = strategy_rust_name(&ready.strategy);
    let what = if ready.sealed() {
        format!(
            "not a promise of {got}, which decrypts a secret into the calling thread's scratch \
             area, memory every thread of the process can read while the access runs"
        )
    } else {
        format!(
            "not a promise of {got}, which opens a secret to every thread of the process while \
             any access to it runs"
        )
    };
    let per_thread = "none needed for these secrets; for another thread's read to fault during \
                      an access";
    match (c.policy.strategy, &c.machine.protection_keys) {
        (StrategyArg::Auto, Err(missing)) => NotAPromise {
            status: Status::Skip,
            evidence: vec![
                format!("protection keys cannot be had here: {missing}"),
                format!("so Strategy::Auto gave these secrets {got}: {what}"),
            ],
            remedy: format!(
                "{per_thread}, run on an x86_64 CPU with protection keys (pku and ospke in \
                 /proc/cpuinfo) under Linux 4.9 or later"
            ),
        },
        (StrategyArg::Auto, Ok(())) => NotAPromise {
            status: Status::NotApplicable,
            evidence: vec![what, auto_chose(ready, c)],
            remedy: format!(
                "{per_thread}, keep secrets in secret memory (Backing::Auto on a kernel with \
                 memfd_secret), where Strategy::Auto takes a protection key, or choose \
                 Strategy::ProtectionKey (probe it with --strategy {key})"
            ),
        },
        (strategy, _) => NotAPromise {
            status: Status::NotApplicable,
            evidence: vec![what, chosen(strategy)],
            remedy: format!(
                "{per_thread}, choose Strategy::Auto or Strategy::ProtectionKey (probe it with \
                 --strategy {key})"
            ),
        },
    }
}

/// The sealed promise for secrets that got what `ready` says (not sealed).
fn not_sealed(ready: &Ready, c: &Context) -> NotAPromise {
    let got = strategy_rust_name(&ready.strategy);
    let how = if ready.strategy == strategy_name(Strategy::ProtectionKey) {
        "a protection key"
    } else {
        "page protection"
    };
    NotAPromise {
        status: Status::NotApplicable,
        evidence: vec![
            format!(
                "not a promise of {got}, which keeps a secret's bytes as they are in a mapping of \
                 their own, opened by {how}: there is no ciphertext and no key"
            ),
            match c.policy.strategy {
                StrategyArg::Auto => auto_chose(ready, c),
                strategy => chosen(strategy),
            },
        ],
        remedy: format!(
            "none needed for these secrets; for secrets kept as ciphertext while idle, with the \
             plaintext only in a scratch area during an access, choose Strategy::Sealed (probe it \
             with --strategy {})",
            strategy_name(Strategy::Sealed)
        ),
    }
}

fn unavailable_remedy(
    id: &str,
    c: &Context,
    refusal: Option<&Refusal>,
    excused: bool,
    skip_reasons: &[&str],
) -> String {
    let m = &c.machine;
    if let Some(r) = refusal {
        return format!(
            "see {}: once a secret can be created, run securemem doctor again",
            refusal_owner(r)
        );
    }
    match id {
        "P1" if excused && c.policy.mlock == MlockArg::Disabled => {
            "use MlockPolicy::Required (the library's default) or BestEffort".into()
        }
        "P1" if excused => "raise RLIMIT_MEMLOCK (`ulimit -l`, systemd `LimitMEMLOCK=`, \
            `docker run --ulimit memlock=`) or grant CAP_IPC_LOCK"
            .into(),
        "P6" | SEALED_AT_REST
            if excused && m.memfd_secret.is_ok() && c.policy.backing != BackingArg::Anonymous =>
        {
            "raise RLIMIT_MEMLOCK (`ulimit -l`, systemd `LimitMEMLOCK=`) or grant CAP_IPC_LOCK, \
             so secret memory can be had"
                .into()
        }
        "P6" | SEALED_AT_REST if excused => {
            "use Backing::Auto on Linux 5.14+ with memfd_secret enabled (boot \
            with secretmem.enable=1 on kernels before 6.5)"
                .into()
        }
        "P7" if !skip_reasons.is_empty() && c.policy.strategy == StrategyArg::Sealed => {
            "the scratch area's guard pages still catch what leaves it, and the sealed bytes are \
             authenticated (P9); for a canary right before the bytes, choose \
             Strategy::ProtectionKey or Strategy::PageProtection"
                .into()
        }
        "P7" if !skip_reasons.is_empty() => "the guard pages still catch what leaves the data \
            pages; for a canary inside them, use a securememory that reports \
            Secret::protection().canary for small secrets"
            .into(),
        "P2" if m.core_piped => "dumps go to a program: check what it stores (e.g. \
            `coredumpctl`), or set kernel.core_pattern=core to let this probe verify; to be sure, \
            call securememory::disable_core_dumps() AND disable the collector"
            .into(),
        _ => format!("to run the missing probe: {}", skip_reasons.join("; ")),
    }
}

/// `line` cut to at most `width` characters. A line of facts joined by `; ` keeps its first
/// facts and its last one (usually the conclusion), with `…` for what was left out; any other
/// line is cut at the end, with `…`.
pub fn clip(line: &str, width: usize) -> String {
    let len = |s: &str| s.chars().count();
    if len(line) <= width {
        return line.to_string();
    }
    let facts: Vec<&str> = line.split("; ").collect();
    if let [first, .., last] = facts[..] {
        let tail = format!("; …; {last}");
        if len(first) + len(&tail) <= width {
            let mut head = first.to_string();
            for fact in &facts[1..facts.len() - 1] {
                if len(&head) + 2 + len(fact) + len(&tail) > width {
                    break;
                }
                head.push_str("; ");
                head.push_str(fact);
            }
            return head + &tail;
        }
        // Room for the last fact behind the probe's name only.
        if let Some(end) = first.find("]: ") {
            let label = &first[..end + 3];
            if len(label) + len(last) + 3 <= width {
                return format!("{label}…; {last}");
            }
        }
    }
    let mut out: String = line.chars().take(width.saturating_sub(1)).collect();
    out.truncate(out.trim_end().len());
    out.push('…');
    out
}

/// The library's name of a strategy from its command-line spelling
/// (`Strategy::ProtectionKey` for `protection-key`).
pub fn strategy_rust_name(name: &str) -> String {
    let camel: String = name
        .split('-')
        .map(|word| {
            let mut chars = word.chars();
            chars.next().map_or(String::new(), |first| {
                first.to_uppercase().chain(chars).collect()
            })
        })
        .collect();
    format!("Strategy::{camel}")
}

/// `text` broken at spaces into lines of at most `width` characters (a longer word stays whole).
pub fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() || lines.is_empty() {
        lines.push(line);
    }
    lines
}

impl Report {
    /// The backing the holders' secrets got, in words.
    pub fn backing_got(&self) -> String {
        let refused = self
            .promises
            .iter()
            .flat_map(|p| &p.probes)
            .any(|p| matches!(p.error, Some(ProbeError::Refused(_))));
        self.promises
            .iter()
            .flat_map(|p| &p.probes)
            .filter_map(|p| p.finding.as_ref())
            .find(|f| f.ready.is_some())
            .map_or(
                if refused {
                    "no secret: the library refused".to_string()
                } else {
                    "unknown".to_string()
                },
                |f| format!("got {}", f.backing),
            )
    }

    /// The report as plain text, evidence cut to [`EVIDENCE_WIDTH`] characters a line.
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
        let _ = writeln!(out, "\nProbed in child processes");
        let _ = writeln!(
            out,
            "  {:<26}{} ({}), {}, {}{}",
            "policy",
            self.policy.backing.rust_name(),
            self.backing_got(),
            self.policy.mlock.rust_name(),
            self.policy.strategy.rust_name(),
            self.got
                .as_ref()
                .map_or(String::new(), |g| format!(" (got {})", g.strategy))
        );
        let auto = &self.auto_strategy;
        let picks = format!(
            "picks {} for {} here: {}",
            strategy_rust_name(auto.strategy),
            auto.backing.rust_name(),
            auto.reason
        );
        for (i, line) in wrap(&picks, EVIDENCE_WIDTH - 28).iter().enumerate() {
            let label = if i == 0 { "Strategy::Auto" } else { "" };
            let _ = writeln!(out, "  {label:<26}{line}");
        }
        let _ = writeln!(out, "  {:<26}{}", "limits", self.limits.describe());
        if self.limits.source == LimitSource::Caller {
            let _ = writeln!(
                out,
                "  {:<26}(--memlock BYTES probes under the limit a service runs with)",
                ""
            );
        }
        let _ = writeln!(out, "  {:<26}{}", "required", self.requirement.describe());
        let _ = writeln!(out, "\nPromises");
        let width = self
            .promises
            .iter()
            .map(|r| r.promise.chars().count() + 2)
            .max()
            .unwrap_or(0);
        for row in &self.promises {
            let _ = writeln!(
                out,
                "  {} {:<width$}{}",
                row.id,
                row.promise,
                row.status.word()
            );
            for e in &row.evidence {
                let _ = writeln!(out, "{}", clip(&format!("       - {e}"), EVIDENCE_WIDTH));
            }
            if let Some(r) = &row.remedy {
                let _ = writeln!(out, "       remedy: {r}");
            }
        }
        let count = |s: Status| self.promises.iter().filter(|p| p.status == s).count();
        let rare: String = [Status::Error, Status::Skip, Status::NotApplicable]
            .into_iter()
            .filter(|&s| count(s) > 0)
            .map(|s| format!(", {} {}", count(s), s.word()))
            .collect();
        let _ = writeln!(
            out,
            "\n{}: {} PASS, {} FAIL, {} UNAVAILABLE{rare} (exit {})",
            if self.ok { "OK" } else { "NOT OK" },
            count(Status::Pass),
            count(Status::Fail),
            count(Status::Unavailable),
            self.exit_code
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context() -> Context {
        Context {
            machine: Machine::detect(),
            policy: Policy::default(),
            limits: Limits::for_holders(None),
            auto: AutoStrategy::detect(BackingArg::Auto),
        }
    }

    /// A context on a machine without protection keys, whatever this one has.
    fn context_without_keys() -> Context {
        let mut c = context();
        c.machine.protection_keys = Err("this CPU or kernel has no memory protection keys \
            (x86 PKU, `pku` and `ospke` in /proc/cpuinfo): Invalid argument (os error 22)"
            .into());
        c.auto = AutoStrategy {
            backing: BackingArg::Auto,
            strategy: "page-protection",
            reason: "no protection keys: this CPU or kernel has no memory protection keys".into(),
        };
        c
    }

    /// What a holder with `strategy` reported.
    fn ready(strategy: &str) -> Ready {
        Ready {
            pid: 1,
            addr: 0x1000,
            len: 32,
            backing: "secretmem".into(),
            strategy: strategy.into(),
            locked: true,
            dump_excluded: true,
            fork_protected: true,
            guard_pages: true,
            kernel_invisible: true,
            canary: true,
        }
    }

    /// The per-thread probe's result for a secret with `strategy`, the read refused or not.
    fn other_thread(strategy: &str, faulted: bool) -> ProbeResult {
        let mut f = Finding::new(PER_THREAD, "another thread reads", Some(&ready(strategy)));
        f.saw("a thread without an access read addr=0x1000 len=32");
        if faulted {
            f.saw("killed by SIGSEGV (si_code SEGV_PKUERR, a protection key's fault, at 0x1000)");
        } else {
            f.broke("the read went through: the holder answered \"read len=32\"");
        }
        ProbeResult::new("another thread reads during an access", None, Ok(f))
    }

    fn p8(probe: ProbeResult, c: &Context) -> PromiseRow {
        judge(PER_THREAD, "per thread", vec![probe], c)
    }

    #[test]
    fn the_per_thread_promise_is_skipped_where_keys_are_missing_and_fails_no_exit_code() {
        let c = context_without_keys();
        let row = p8(other_thread("page-protection", false), &c);
        assert_eq!(row.status, Status::Skip, "{row:?}");
        assert!(
            row.evidence[0].starts_with("protection keys cannot be had here: ")
                && row.evidence[0].contains("pku"),
            "the reason, plainly and first: {row:?}"
        );
        assert!(
            row.evidence[1].contains("not a promise of Strategy::PageProtection"),
            "{row:?}"
        );
        assert!(row.evidence[2].contains("[seen]") && row.evidence[2].ends_with("len=32\""));
        assert!(
            row.remedy.as_deref().unwrap_or("").contains("pku"),
            "{row:?}"
        );
        let rows = [row];
        assert_eq!(Requirement::default().exit_code(&rows), EXIT_OK);
        assert_eq!(Requirement::strict().exit_code(&rows), EXIT_OK);
        assert_eq!(
            Requirement::listed(&[PER_THREAD]).exit_code(&rows),
            EXIT_NOT_HELD
        );
    }

    #[test]
    fn the_per_thread_promise_is_not_applicable_under_page_protection() {
        let mut c = context();
        c.policy.strategy = StrategyArg::PageProtection;
        let row = p8(other_thread("page-protection", false), &c);
        assert_eq!(row.status, Status::NotApplicable, "{row:?}");
        assert!(
            row.evidence[1].contains("Strategy::PageProtection was chosen"),
            "{row:?}"
        );
        assert!(row
            .remedy
            .as_deref()
            .unwrap_or("")
            .contains("--strategy protection-key"));
        // Strategy::Auto that chose page protection says why, in the library's words.
        let mut c = context();
        c.auto = AutoStrategy {
            backing: BackingArg::Anonymous,
            strategy: "page-protection",
            reason: "anonymous memory was asked for".into(),
        };
        let row = p8(other_thread("page-protection", false), &c);
        if c.machine.protection_keys.is_ok() {
            assert_eq!(row.status, Status::NotApplicable, "{row:?}");
            assert_eq!(
                row.evidence[1],
                "Strategy::Auto chose it: anonymous memory was asked for"
            );
        }
    }

    #[test]
    fn the_per_thread_promise_holds_only_when_the_read_faults_on_the_key() {
        let c = context();
        assert_eq!(
            p8(other_thread("protection-key", true), &c).status,
            Status::Pass
        );
        let row = p8(other_thread("protection-key", false), &c);
        assert_eq!(row.status, Status::Fail, "{row:?}");
        assert!(row.evidence[0].contains("[BROKEN]: the read went through"));
        // Missing keys excuse nothing once the secret says it got one.
        let row = p8(
            other_thread("protection-key", false),
            &context_without_keys(),
        );
        assert_eq!(row.status, Status::Fail, "{row:?}");
    }

    #[test]
    fn an_unavailable_strategy_fails_the_per_thread_promise_and_leaves_the_others_unprobed() {
        let c = context_without_keys();
        let refused = || {
            ProbeResult::new(
                "probe",
                None,
                Err(ProbeError::Refused(Refusal {
                    error: "StrategyUnavailable".into(),
                    message: "Strategy::ProtectionKey is unavailable on this machine".into(),
                })),
            )
        };
        let row = p8(refused(), &c);
        assert_eq!(row.status, Status::Fail, "{row:?}");
        assert!(row.remedy.unwrap_or_default().contains("Strategy::Auto"));
        let p3 = judge("P3", "idle", vec![refused()], &c);
        assert_eq!(p3.status, Status::Unavailable);
        assert!(p3.remedy.unwrap_or_default().contains("see P8"));
    }

    /// A finding of the sealed promise's first probe for a secret with `strategy` in `backing`
    /// memory, kept or not.
    fn at_rest(strategy: &str, backing: &str, kept: bool) -> ProbeResult {
        let mut r = ready(strategy);
        r.backing = backing.into();
        let mut f = Finding::new(SEALED_AT_REST, "at rest", Some(&r));
        f.saw("idle: the plaintext is absent from every byte read from outside");
        if !kept {
            f.broke("no sealed bytes in the process");
        }
        ProbeResult::new("at rest", None, Ok(f))
    }

    #[test]
    fn the_sealed_promise_is_not_applicable_to_secrets_that_are_not_sealed() {
        let c = context();
        let row = judge(
            SEALED_AT_REST,
            "sealed",
            vec![at_rest("protection-key", "secretmem", false)],
            &c,
        );
        assert_eq!(row.status, Status::NotApplicable, "{row:?}");
        assert!(
            row.evidence[0].contains("not a promise of Strategy::ProtectionKey"),
            "{row:?}"
        );
        assert!(
            row.evidence[1].starts_with("Strategy::Auto chose it"),
            "{row:?}"
        );
        assert!(row.evidence[2].contains("[seen]"), "{row:?}");
        assert!(row
            .remedy
            .as_deref()
            .unwrap_or("")
            .contains("--strategy sealed"));
        let mut c = context();
        c.policy.strategy = StrategyArg::PageProtection;
        let row = judge(
            SEALED_AT_REST,
            "sealed",
            vec![at_rest("page-protection", "secretmem", false)],
            &c,
        );
        assert_eq!(row.status, Status::NotApplicable, "{row:?}");
        assert!(row.evidence[1].contains("--strategy page-protection"));
        let rows = [row];
        assert_eq!(Requirement::strict().exit_code(&rows), EXIT_OK);
        assert_eq!(
            Requirement::listed(&[SEALED_AT_REST]).exit_code(&rows),
            EXIT_NOT_HELD
        );
    }

    #[test]
    fn the_sealed_promise_is_judged_for_sealed_secrets() {
        let mut c = context();
        c.policy.strategy = StrategyArg::Sealed;
        let kept = judge(
            SEALED_AT_REST,
            "sealed",
            vec![at_rest("sealed", "secretmem", true)],
            &c,
        );
        assert_eq!(kept.status, Status::Pass, "{kept:?}");
        let broken = judge(
            SEALED_AT_REST,
            "sealed",
            vec![at_rest("sealed", "secretmem", false)],
            &c,
        );
        assert_eq!(broken.status, Status::Fail, "{broken:?}");
        // In anonymous memory the key is readable to root: the mechanism is missing, as for P6.
        c.policy.backing = BackingArg::Anonymous;
        let anonymous = judge(
            SEALED_AT_REST,
            "sealed",
            vec![at_rest("sealed", "anonymous", false)],
            &c,
        );
        assert_eq!(anonymous.status, Status::Unavailable, "{anonymous:?}");
        assert!(
            anonymous.evidence[0].contains("sealing key's page"),
            "{anonymous:?}"
        );
        assert!(anonymous
            .remedy
            .as_deref()
            .unwrap_or("")
            .contains("memfd_secret"));
    }

    #[test]
    fn the_per_thread_promise_says_why_a_sealed_secret_does_not_keep_it() {
        let mut c = context();
        c.policy.strategy = StrategyArg::Sealed;
        let row = p8(other_thread("sealed", false), &c);
        assert_eq!(row.status, Status::NotApplicable, "{row:?}");
        assert!(
            row.evidence[0].contains("Strategy::Sealed")
                && row.evidence[0].contains("scratch area"),
            "{row:?}"
        );
        assert_eq!(
            row.evidence[1],
            "Strategy::Sealed was chosen (--strategy sealed)"
        );
    }

    #[test]
    fn a_refused_sealed_secret_is_not_offered_best_effort() {
        let mut c = context();
        c.policy.strategy = StrategyArg::Sealed;
        let refusal = Refusal {
            error: "MemoryLockLimit".into(),
            message: "could not lock 4096 bytes: RLIMIT_MEMLOCK (0 bytes) reached".into(),
        };
        assert!(!refusal_remedy(&refusal, &c).contains("BestEffort"));
        c.policy.strategy = StrategyArg::Auto;
        assert!(refusal_remedy(&refusal, &c).contains("BestEffort"));
    }

    #[test]
    fn strategy_names_and_wrapping() {
        assert_eq!(
            strategy_rust_name("protection-key"),
            "Strategy::ProtectionKey"
        );
        assert_eq!(
            strategy_rust_name("page-protection"),
            "Strategy::PageProtection"
        );
        assert_eq!(strategy_rust_name("sealed"), "Strategy::Sealed");
        assert_eq!(wrap("aa bb cc dd", 5), ["aa bb", "cc dd"]);
        assert_eq!(wrap("", 5), [""]);
        assert_eq!(wrap("toolongword x", 4), ["toolongword", "x"]);
    }

    fn held(probe: &str, alternative: Option<&'static str>) -> ProbeResult {
        let mut f = Finding::new("P2", probe, None);
        f.saw("the 32-byte marker is absent from the dump (raw and hex)");
        ProbeResult::new(probe, alternative, Ok(f))
    }

    fn skipped(probe: &str, alternative: Option<&'static str>, why: &str) -> ProbeResult {
        ProbeResult::new(probe, alternative, Err(ProbeError::Skipped(why.into())))
    }

    const NO_GDB: &str = "gcore (from gdb) is not installed: apt-get install gdb";

    #[test]
    fn p2_passes_on_kernel_dumps_when_gcore_is_missing() {
        let c = context();
        let row = judge(
            "P2",
            "dumps",
            vec![
                held("kernel core dump, idle", KERNEL_DUMP),
                held("kernel core dump, inside an access", KERNEL_DUMP),
                skipped("gcore, idle", GCORE, NO_GDB),
                skipped("gcore, inside an access", GCORE, NO_GDB),
            ],
            &c,
        );
        assert_eq!(row.status, Status::Pass, "{row:?}");
        assert_eq!(row.remedy, None);
        assert!(
            row.evidence
                .iter()
                .any(|e| e.contains("gcore, idle [skipped]") && e.contains("gdb")),
            "{row:?}"
        );
        assert!(row
            .evidence
            .iter()
            .any(|e| e.contains("decided by the kernel core dump probes")));
    }

    #[test]
    fn p2_is_unavailable_only_when_neither_dump_can_run() {
        let c = context();
        let piped = "kernel.core_pattern pipes dumps to a program";
        let row = judge(
            "P2",
            "dumps",
            vec![
                skipped("kernel core dump, idle", KERNEL_DUMP, piped),
                skipped("kernel core dump, inside an access", KERNEL_DUMP, piped),
                skipped("gcore, idle", GCORE, NO_GDB),
                skipped("gcore, inside an access", GCORE, NO_GDB),
            ],
            &c,
        );
        assert_eq!(row.status, Status::Unavailable, "{row:?}");
        let remedy = row.remedy.expect("remedy");
        if !c.machine.core_piped {
            assert_eq!(
                remedy.matches(NO_GDB).count(),
                1,
                "each reason once: {remedy}"
            );
        }
        // One kernel dump skipped and one gcore skipped: no kind ran completely.
        let row = judge(
            "P2",
            "dumps",
            vec![
                held("kernel core dump, idle", KERNEL_DUMP),
                skipped("kernel core dump, inside an access", KERNEL_DUMP, piped),
                held("gcore, idle", GCORE),
                skipped("gcore, inside an access", GCORE, NO_GDB),
            ],
            &c,
        );
        assert_eq!(row.status, Status::Unavailable, "{row:?}");
    }

    #[test]
    fn a_skip_without_an_alternative_is_unavailable() {
        let row = judge(
            "P7",
            "overflow",
            vec![
                held("past the end", None),
                skipped("canary", None, "no canary"),
            ],
            &context(),
        );
        assert_eq!(row.status, Status::Unavailable);
    }

    #[test]
    fn a_refusal_fails_the_row_it_concerns_and_leaves_the_others_unprobed() {
        let c = context();
        let refused = || {
            ProbeResult::new(
                "probe",
                None,
                Err(ProbeError::Refused(Refusal {
                    error: "MemoryLockLimit".into(),
                    message: "could not lock 4096 bytes in RAM: RLIMIT_MEMLOCK 0 bytes".into(),
                })),
            )
        };
        let p1 = judge("P1", "locked", vec![refused()], &c);
        assert_eq!(p1.status, Status::Fail);
        assert!(p1.evidence[0].contains("RLIMIT_MEMLOCK"), "{p1:?}");
        assert!(p1.remedy.unwrap_or_default().contains("LimitMEMLOCK"));
        let p3 = judge("P3", "idle", vec![refused()], &c);
        assert_eq!(p3.status, Status::Unavailable);
        assert!(p3.remedy.unwrap_or_default().contains("see P1"));
    }

    #[test]
    fn exit_codes_follow_the_requirement() {
        let row = |id: &'static str, status| PromiseRow {
            id,
            promise: "",
            status,
            evidence: Vec::new(),
            remedy: None,
            probes: Vec::new(),
        };
        let rows = vec![
            row("P1", Status::Pass),
            row("P2", Status::Unavailable),
            row("P3", Status::Error),
            row("P8", Status::NotApplicable),
        ];
        assert_eq!(Requirement::listed(&["P1"]).exit_code(&rows), EXIT_OK);
        assert_eq!(Requirement::listed(&["P2"]).exit_code(&rows), EXIT_NOT_HELD);
        assert_eq!(
            Requirement::listed(&["P1", "P3"]).exit_code(&rows),
            EXIT_PROBE_BROKEN
        );
        assert_eq!(Requirement::default().exit_code(&rows), EXIT_PROBE_BROKEN);
        assert_eq!(Requirement::strict().exit_code(&rows), EXIT_NOT_HELD);
        assert_eq!(Requirement::listed(&["P8"]).exit_code(&rows), EXIT_NOT_HELD);
        let mut failing = rows.clone();
        failing.push(row("P4", Status::Fail));
        assert_eq!(Requirement::default().exit_code(&failing), EXIT_NOT_HELD);
    }

    #[test]
    fn clip_cuts_long_lines_with_an_ellipsis() {
        assert_eq!(clip("short", 10), "short");
        let long = "é".repeat(200);
        let cut = clip(&long, EVIDENCE_WIDTH);
        assert_eq!(cut.chars().count(), EVIDENCE_WIDTH);
        assert!(cut.ends_with('…'));
        let facts = format!("probe [ok]: first; {}; conclusion", "x".repeat(200));
        assert_eq!(clip(&facts, 40), "probe [ok]: first; …; conclusion");
        let long_first = format!("probe [ok]: {}; conclusion", "y".repeat(200));
        assert_eq!(clip(&long_first, 40), "probe [ok]: …; conclusion");
        let no_room = format!("probe [ok]: first; {}", "z".repeat(200));
        assert_eq!(clip(&no_room, 40).chars().count(), 40);
    }

    #[test]
    fn promise_ids_are_read_case_insensitively() {
        assert_eq!(promise_id("p6"), Ok("P6"));
        assert_eq!(promise_id(" P1 "), Ok("P1"));
        assert_eq!(promise_id("p8"), Ok("P8"));
        assert_eq!(promise_id("p9"), Ok(SEALED_AT_REST));
        assert!(promise_id("P10").is_err());
    }
}
