//! Every promise of the library (ARCHITECTURE.md, "The promises"), proven from outside the
//! process: each test starts a holder (`securemem holder`) with the default factory or with
//! `Backing::Anonymous`, attacks it from this process, and checks what really happened.
//!
//! A probe whose prerequisite is missing prints `skipped: <reason>`; with `CI` set, a skip
//! fails the test. Every wait in the probes has a timeout, so a hang fails instead of blocking.
#![cfg(target_os = "linux")]

use securemem::holder::{BackingArg, MlockArg};
use securemem::limits::MemlockLimit;
use securemem::probe::kernel_read::{proc_mem_read, vm_readv, Read};
use securemem::probe::{self, Finding, ProbeError};
use securemem::spawn::{Holder, HolderOptions};

fn options(backing: BackingArg) -> HolderOptions {
    HolderOptions::new(env!("CARGO_BIN_EXE_securemem")).with_backing(backing)
}

/// The default factory: `ProtectedMemorySecretFactory::default()`.
fn default_factory() -> HolderOptions {
    options(BackingArg::Auto)
}

fn anonymous() -> HolderOptions {
    options(BackingArg::Anonymous)
}

fn skip(reason: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("skipped: {reason} (CI is set: no probe may be skipped on these machines)");
    }
    println!("skipped: {reason}");
}

/// The finding, or `None` after printing why the probe was skipped.
fn ran(result: Result<Finding, ProbeError>) -> Option<Finding> {
    match result {
        Ok(finding) => {
            println!("{finding}");
            Some(finding)
        }
        Err(ProbeError::Skipped(reason)) => {
            skip(&reason);
            None
        }
        Err(error) => panic!("{error}"),
    }
}

fn assert_holds(result: Result<Finding, ProbeError>) -> Option<Finding> {
    let finding = ran(result)?;
    assert!(finding.holds, "promise broken: {finding}");
    Some(finding)
}

/// The default factory's secret is in secret memory, or the test is skipped (this machine's
/// kernel lacks memfd_secret).
fn require_secretmem(finding: &Finding) -> bool {
    if finding.backing == "secretmem" {
        true
    } else {
        skip(&format!(
            "the default factory gave {} memory: memfd_secret is unavailable on this kernel",
            finding.backing
        ));
        false
    }
}

// P2: never in a core dump, gcore included.

#[test]
fn secret_is_absent_from_kernel_core_dump() {
    assert_holds(probe::dump::kernel_core_dump(&default_factory(), false));
}

#[test]
fn secret_is_absent_from_kernel_core_dump_anonymous() {
    assert_holds(probe::dump::kernel_core_dump(&anonymous(), false));
}

#[test]
fn secret_is_absent_from_kernel_core_dump_taken_inside_access() {
    assert_holds(probe::dump::kernel_core_dump(&default_factory(), true));
}

#[test]
fn secret_is_absent_from_kernel_core_dump_taken_inside_access_anonymous() {
    assert_holds(probe::dump::kernel_core_dump(&anonymous(), true));
}

#[test]
fn secret_is_absent_from_gcore() {
    assert_holds(probe::dump::gcore(&default_factory(), false));
}

#[test]
fn secret_is_absent_from_gcore_anonymous() {
    assert_holds(probe::dump::gcore(&anonymous(), false));
}

#[test]
fn secret_is_absent_from_gcore_taken_inside_access() {
    assert_holds(probe::dump::gcore(&default_factory(), true));
}

#[test]
fn secret_is_absent_from_gcore_taken_inside_access_anonymous() {
    assert_holds(probe::dump::gcore(&anonymous(), true));
}

// P6: invisible to other processes, root included — secret memory only.

#[test]
fn proc_pid_mem_cannot_read_secretmem_secret() {
    if let Some(f) = assert_holds(probe::kernel_read::kernel_read(&default_factory(), false)) {
        require_secretmem(&f);
    }
}

#[test]
fn proc_pid_mem_cannot_read_secretmem_secret_inside_access() {
    if let Some(f) = assert_holds(probe::kernel_read::kernel_read(&default_factory(), true)) {
        require_secretmem(&f);
    }
}

/// The row the anonymous backend cannot pass, pinned down so the README stays true: the kernel
/// reads through `PROT_NONE` for `/proc/PID/mem` (`FOLL_FORCE`), while `process_vm_readv`
/// respects it. This is also the positive control of the probes: they do find a readable secret.
#[test]
fn proc_pid_mem_reads_anonymous_secret_through_prot_none() {
    let holder = Holder::spawn(&anonymous()).unwrap_or_else(|e| panic!("{e}"));
    let (pid, addr, len) = (holder.pid(), holder.ready.addr, holder.ready.len);
    assert_eq!(
        proc_mem_read(pid, addr, len).unwrap_or_else(|e| panic!("{e}")),
        Read::Bytes(holder.marker.to_vec()),
        "root reads an idle anonymous secret through /proc/PID/mem"
    );
    assert_eq!(
        vm_readv(pid, addr, len),
        Read::Refused(libc::EFAULT),
        "process_vm_readv honours PROT_NONE"
    );
    let finding = ran(probe::kernel_read::kernel_read(&anonymous(), false)).expect("no skip");
    assert!(
        !finding.holds,
        "the whole-process scan must find the anonymous secret: {finding}"
    );
}

#[test]
fn process_vm_readv_reads_anonymous_secret_inside_access() {
    let mut holder = Holder::spawn(&anonymous()).unwrap_or_else(|e| panic!("{e}"));
    holder.enter().unwrap_or_else(|e| panic!("{e}"));
    let (pid, addr, len) = (holder.pid(), holder.ready.addr, holder.ready.len);
    assert_eq!(
        vm_readv(pid, addr, len),
        Read::Bytes(holder.marker.to_vec())
    );
    holder.leave().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(vm_readv(pid, addr, len), Read::Refused(libc::EFAULT));
}

// P1: locked in RAM, and honest under a tight locked-memory limit.

#[test]
fn secret_pages_are_locked_and_flagged_in_smaps() {
    if let Some(f) = assert_holds(probe::smaps::locked(&default_factory())) {
        require_secretmem(&f);
    }
}

#[test]
fn secret_pages_are_locked_and_flagged_in_smaps_anonymous() {
    assert_holds(probe::smaps::locked(&anonymous()));
}

#[test]
fn memlock_limit_with_required_policy_gives_error_naming_the_limit() {
    assert_holds(probe::memlock::limit(
        &default_factory(),
        MlockArg::Required,
    ));
}

#[test]
fn memlock_limit_with_required_policy_gives_error_naming_the_limit_anonymous() {
    assert_holds(probe::memlock::limit(&anonymous(), MlockArg::Required));
}

#[test]
fn memlock_limit_with_best_effort_policy_runs_and_reports_unlocked() {
    assert_holds(probe::memlock::limit(
        &default_factory(),
        MlockArg::BestEffort,
    ));
}

#[test]
fn memlock_limit_with_best_effort_policy_runs_and_reports_unlocked_anonymous() {
    assert_holds(probe::memlock::limit(&anonymous(), MlockArg::BestEffort));
}

/// `Backing::SecretMem` is charged to the locked-memory limit whatever the policy, so best
/// effort must be refused at the limit like `Required`, naming it.
#[test]
fn memlock_limit_on_secret_memory_is_refused_whatever_the_policy() {
    if let Err(e) = securememory::system::check_secret_memory() {
        skip(&format!("memfd_secret is unavailable here: {e}"));
        return;
    }
    for mlock in [MlockArg::Required, MlockArg::BestEffort] {
        assert_holds(probe::memlock::limit(
            &options(BackingArg::Secretmem),
            mlock,
        ));
    }
}

/// The default policy under a locked-memory limit of 0 without CAP_IPC_LOCK: the library
/// refuses the first secret, and the holder reports the library's error as such.
#[test]
fn holder_under_a_zero_memlock_limit_reports_the_library_refusal() {
    let options = default_factory().with_memlock(Some(MemlockLimit::Bytes(0)));
    match Holder::spawn(&options) {
        Err(ProbeError::Refused(refusal)) => {
            assert_eq!(refusal.error, "MemoryLockLimit", "{refusal:?}");
            assert!(refusal.message.contains("RLIMIT_MEMLOCK"), "{refusal:?}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let best_effort = options.with_mlock(MlockArg::BestEffort);
    let holder = Holder::spawn(&best_effort).unwrap_or_else(|e| panic!("{e}"));
    assert!(!holder.ready.locked, "{:?}", holder.ready);
}

// P3: unreadable while idle.

#[test]
fn idle_secret_faults_when_touched() {
    assert_holds(probe::fault::touch_idle(&default_factory()));
}

#[test]
fn idle_secret_faults_when_touched_anonymous() {
    assert_holds(probe::fault::touch_idle(&anonymous()));
}

// P4: wiped when closed.

#[test]
fn closed_secret_is_wiped_and_leaves_no_copy() {
    assert_holds(probe::wipe::close_wipes(&default_factory()));
}

#[test]
fn closed_secret_is_wiped_and_leaves_no_copy_anonymous() {
    let f = assert_holds(probe::wipe::close_wipes(&anonymous())).expect("no skip");
    assert!(
        f.evidence.iter().any(|e| e.contains("read as zeros")),
        "anonymous pages are readable at munmap and must be zeros: {f}"
    );
}

// P5: not inherited by a forked child.

#[test]
fn forked_child_never_sees_secret() {
    assert_holds(probe::fault::fork(&default_factory()));
}

#[test]
fn forked_child_never_sees_secret_anonymous() {
    assert_holds(probe::fault::fork(&anonymous()));
}

// P7: overflow and underflow are caught.

#[test]
fn write_past_end_faults() {
    assert_holds(probe::fault::overflow(&default_factory()));
}

#[test]
fn write_past_end_faults_anonymous() {
    assert_holds(probe::fault::overflow(&anonymous()));
}

#[test]
fn write_before_data_page_faults() {
    assert_holds(probe::fault::underflow(&default_factory()));
}

#[test]
fn write_before_data_page_faults_anonymous() {
    assert_holds(probe::fault::underflow(&anonymous()));
}

#[test]
fn underflow_inside_the_page_is_caught_by_the_canary() {
    assert_holds(probe::fault::underflow_in_page(&default_factory()));
}

#[test]
fn underflow_inside_the_page_is_caught_by_the_canary_anonymous() {
    assert_holds(probe::fault::underflow_in_page(&anonymous()));
}

// The holder itself: it announces a fresh marker and leaves no copy of it in its memory.

#[test]
fn holder_marker_is_fresh_and_reported_protections_match_the_default_factory() {
    let a = Holder::spawn(&default_factory()).unwrap_or_else(|e| panic!("{e}"));
    let b = Holder::spawn(&default_factory()).unwrap_or_else(|e| panic!("{e}"));
    assert_ne!(a.marker, b.marker);
    assert_ne!(a.marker, [0; 32]);
    assert_eq!(a.ready.len, 32);
    assert!(a.ready.locked && a.ready.dump_excluded && a.ready.fork_protected);
    assert!(a.ready.guard_pages);
    assert!(
        a.ready.canary,
        "a 32-byte secret leaves room for a canary in its page"
    );
    assert_eq!(a.ready.kernel_invisible, a.ready.backing == "secretmem");
}
