//! Every promise of the library (ARCHITECTURE.md, "The promises"), proven from outside the
//! process: each test starts a holder (`securemem holder`) with the default factory or with
//! `Backing::Anonymous`, attacks it from this process, and checks what really happened. The
//! whole suite of `securemem doctor` also runs under each strategy (`Strategy::ProtectionKey`
//! where the CPU has protection keys, `Strategy::PageProtection`, `Strategy::Sealed`), P8
//! (another thread's read during an access faults) is checked against all of them, and P9 (a
//! sealed secret is ciphertext at rest, its key out of reach) is shown to fail on secrets that
//! are not sealed.
//!
//! A probe whose prerequisite is missing prints `skipped: <reason>`; with `CI` set, a skip
//! fails the test. Protection keys are a property of the CPU, not a prerequisite a machine can
//! be set up with: where they are missing, the tests that need them say so and return.
//! Every wait in the probes has a timeout, so a hang fails instead of blocking.
#![cfg(target_os = "linux")]

use securemem::doctor::{probes, ProbeSpec, PER_THREAD, SEALED_AT_REST};
use securemem::holder::{BackingArg, MlockArg, StrategyArg};
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

fn with_strategy(backing: BackingArg, strategy: StrategyArg) -> HolderOptions {
    let mut options = options(backing);
    options.policy.strategy = strategy;
    options
}

/// Holders under `Strategy::ProtectionKey`, or `None` after saying why this machine has none.
fn protection_key(backing: BackingArg) -> Option<HolderOptions> {
    match securememory::system::check_protection_keys() {
        Ok(()) => Some(with_strategy(backing, StrategyArg::ProtectionKey)),
        Err(missing) => {
            println!("not run: {missing}");
            None
        }
    }
}

fn page_protection(backing: BackingArg) -> HolderOptions {
    with_strategy(backing, StrategyArg::PageProtection)
}

fn sealed(backing: BackingArg) -> HolderOptions {
    with_strategy(backing, StrategyArg::Sealed)
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

// Every probe of doctor's suite under each strategy.

/// Runs every probe of `securemem doctor` against holders made with `options`. A probe of a
/// promise in `broken` must find it broken (what the configuration cannot keep, shown rather
/// than assumed); every other probe must find its promise kept. All run before any failure is
/// reported, so one run names every probe that disagrees.
fn whole_suite(options: &HolderOptions, broken: &[&str]) {
    suite(
        options,
        &Expected {
            broken,
            ..Expected::default()
        },
    );
}

/// What a configuration's run of the whole suite must show, beyond every promise kept.
#[derive(Default)]
struct Expected<'a> {
    /// Promises, or single probes by name, the configuration cannot keep: they must be found
    /// broken.
    broken: &'a [&'a str],
    /// Probes the configuration makes no sense of (skipped whatever the machine offers).
    skipped: &'a [&'a str],
}

fn suite(options: &HolderOptions, expected: &Expected<'_>) {
    let mut wrong = Vec::new();
    let suite: Vec<ProbeSpec> = probes();
    for spec in &suite {
        let outcome = (spec.run)(options);
        let Some(finding) = (match outcome {
            Err(ProbeError::Skipped(reason)) if expected.skipped.contains(&spec.name) => {
                println!(
                    "skipped by design: {} {}: {reason}",
                    spec.promise, spec.name
                );
                continue;
            }
            outcome => ran(outcome),
        }) else {
            continue;
        };
        let kept = !expected
            .broken
            .iter()
            .any(|&b| b == spec.promise || b == spec.name);
        if finding.holds != kept {
            wrong.push(format!("{} {}: {finding}", spec.promise, spec.name));
        }
        if finding.ready.is_some() {
            assert_eq!(
                finding.strategy,
                options.policy.strategy.name(),
                "the holder got another strategy than asked: {finding}"
            );
        }
    }
    assert!(
        wrong.is_empty(),
        "probes that disagree ({} of {}):\n{}",
        wrong.len(),
        suite.len(),
        wrong.join("\n")
    );
}

/// Nothing is sealed under protection keys: the sealed promise's probes find no sealed bytes
/// and no key (and so show that they fail where there is nothing to find).
#[test]
fn every_probe_but_the_sealed_one_holds_under_protection_keys() {
    if let Some(options) = protection_key(BackingArg::Auto) {
        whole_suite(&options, &[SEALED_AT_REST]);
    }
}

/// Keys bind the threads of the process only: other processes read anonymous memory past
/// them (P6), which is why `Strategy::Auto` takes a key only for secret memory.
#[test]
fn every_probe_but_p6_and_the_sealed_one_holds_under_protection_keys_in_anonymous_memory() {
    if let Some(options) = protection_key(BackingArg::Anonymous) {
        whole_suite(&options, &["P6", SEALED_AT_REST]);
    }
}

/// Page protection opens a secret to every thread while an access runs, so another thread's
/// read goes through: P8 is not one of its promises.
#[test]
fn every_probe_but_the_per_thread_and_sealed_ones_holds_under_page_protection() {
    whole_suite(
        &page_protection(BackingArg::Auto),
        &[PER_THREAD, SEALED_AT_REST],
    );
}

#[test]
fn every_probe_but_p6_the_per_thread_and_sealed_ones_holds_under_page_protection_in_anonymous_memory(
) {
    whole_suite(
        &page_protection(BackingArg::Anonymous),
        &["P6", PER_THREAD, SEALED_AT_REST],
    );
}

/// The in-page underflow probe needs a canary, which a sealed secret does not keep: its
/// plaintext sits against the scratch area's trailing guard, and a write below it reaches no
/// secret.
const CANARY_PROBE: &str = "write one byte before the secret, inside its page";

/// A sealed secret decrypts into the calling thread's scratch area, which every thread of the
/// process can read during the access: P8 is not one of its promises.
#[test]
fn every_probe_but_the_per_thread_one_holds_for_sealed_secrets() {
    if let Err(e) = securememory::system::check_secret_memory() {
        skip(&format!("memfd_secret is unavailable here: {e}"));
        return;
    }
    suite(
        &sealed(BackingArg::Auto),
        &Expected {
            broken: &[PER_THREAD],
            skipped: &[CANARY_PROBE],
        },
    );
}

/// In anonymous memory other processes read the key's page (and the scratch area during an
/// access): P6 and the sealed promise's look from outside fail, as P6 does for every anonymous
/// secret.
#[test]
fn every_probe_but_p6_the_per_thread_one_and_the_key_from_outside_holds_for_sealed_secrets_in_anonymous_memory(
) {
    suite(
        &sealed(BackingArg::Anonymous),
        &Expected {
            broken: &["P6", PER_THREAD, AT_REST_PROBE],
            skipped: &[CANARY_PROBE],
        },
    );
}

/// The name of the sealed promise's probe that reads the process from outside.
const AT_REST_PROBE: &str =
    "read from outside, find the sealed bytes and the key's page, change a byte";

// P8: another thread's read of a secret during an access faults (protection keys only).

fn assert_faults_on_the_key(options: &HolderOptions) {
    let finding = assert_holds(probe::fault::read_from_another_thread(options)).expect("no skip");
    let seen = finding.evidence.join("; ");
    assert!(seen.contains("SEGV_PKUERR"), "{finding}");
    assert!(
        !seen.contains("ProtectionKey 0"),
        "smaps shows the pages under the library's key: {finding}"
    );
}

#[test]
fn another_threads_read_during_an_access_faults_on_the_protection_key() {
    if let Some(options) = protection_key(BackingArg::Auto) {
        assert_faults_on_the_key(&options);
    }
}

#[test]
fn another_threads_read_during_an_access_faults_on_the_protection_key_anonymous() {
    if let Some(options) = protection_key(BackingArg::Anonymous) {
        assert_faults_on_the_key(&options);
    }
}

/// The default factory takes a key wherever `system::auto_strategy` says it does.
#[test]
fn another_threads_read_during_an_access_faults_with_the_default_factory_where_auto_takes_a_key() {
    let (auto, why) = securememory::system::auto_strategy(securememory::Backing::Auto);
    let Some(finding) = ran(probe::fault::read_from_another_thread(&default_factory())) else {
        return;
    };
    if auto == securememory::Strategy::ProtectionKey && finding.backing == "secretmem" {
        assert!(finding.holds, "{finding}");
        assert!(finding.evidence.join("; ").contains("SEGV_PKUERR"));
    } else {
        println!("Strategy::Auto keeps page protection here: {why}");
        assert!(!finding.holds, "{finding}");
    }
}

/// The contrast that gives the rows above their meaning, and P8's N/A under page protection
/// and for sealed secrets (whose scratch area every thread can read).
#[test]
fn another_threads_read_during_an_access_goes_through_under_page_protection_and_sealing() {
    for options in [
        page_protection(BackingArg::Auto),
        page_protection(BackingArg::Anonymous),
        sealed(BackingArg::Auto),
    ] {
        let finding = ran(probe::fault::read_from_another_thread(&options)).expect("ran");
        assert!(!finding.holds, "{finding}");
        assert!(
            finding.evidence.iter().any(|e| e.contains("went through")),
            "{finding}"
        );
        assert_eq!(finding.strategy, options.policy.strategy.name());
    }
}

// How each strategy refuses a stray touch, as the CPU reports it (si_code).

#[test]
fn an_idle_secret_faults_on_its_protection_key() {
    for backing in [BackingArg::Auto, BackingArg::Anonymous] {
        let Some(options) = protection_key(backing) else {
            return;
        };
        let f = assert_holds(probe::fault::touch_idle(&options)).expect("no skip");
        assert!(f.evidence.join("; ").contains("SEGV_PKUERR"), "{f}");
    }
}

#[test]
fn an_idle_secret_faults_on_its_page_protection() {
    for backing in [BackingArg::Auto, BackingArg::Anonymous] {
        let f = assert_holds(probe::fault::touch_idle(&page_protection(backing))).expect("ran");
        assert!(f.evidence.join("; ").contains("SEGV_ACCERR"), "{f}");
    }
}

/// A sealed secret has nothing to fault on while idle: where its accesses put the plaintext,
/// the bytes are zeros, and no byte of the process read from outside holds it.
#[test]
fn an_idle_sealed_secret_has_no_plaintext_to_touch() {
    for backing in [BackingArg::Auto, BackingArg::Anonymous] {
        let f = assert_holds(probe::fault::touch_idle(&sealed(backing))).expect("ran");
        let seen = f.evidence.join("; ");
        assert!(seen.contains("read as zeros outside an access"), "{f}");
        assert!(seen.contains("plaintext is absent from every byte"), "{f}");
    }
}

/// A forked child that opens every key as well as the page finds zeros: the bytes are gone
/// from the child, not merely locked away.
#[test]
fn forked_child_with_every_key_open_reads_zeros_under_protection_keys_anonymous() {
    let Some(options) = protection_key(BackingArg::Anonymous) else {
        return;
    };
    let f = assert_holds(probe::fault::fork(&options)).expect("ran");
    assert!(
        f.evidence
            .iter()
            .any(|e| e.contains("every protection key opened") && e.contains("zeros")),
        "{f}"
    );
}

/// Keys do not stop other processes: an idle anonymous secret under a key is read by
/// `process_vm_readv`, which page protection refuses (README, `Strategy::ProtectionKey`).
#[test]
fn process_vm_readv_reads_an_idle_anonymous_secret_under_a_protection_key() {
    let Some(options) = protection_key(BackingArg::Anonymous) else {
        return;
    };
    let holder = Holder::spawn(&options).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(holder.ready.strategy, "protection-key");
    let (pid, addr, len) = (holder.pid(), holder.ready.addr, holder.ready.len);
    assert_eq!(
        vm_readv(pid, addr, len),
        Read::Bytes(holder.marker.to_vec())
    );
}

// P9: a sealed secret is ciphertext at rest, its key out of reach.

#[test]
fn a_sealed_secret_is_ciphertext_at_rest_with_its_key_out_of_reach() {
    let Some(f) = assert_holds(probe::sealed::at_rest(&sealed(BackingArg::Auto))) else {
        return;
    };
    if !require_secretmem(&f) {
        return;
    }
    let seen = f.evidence.join("; ");
    for fact in [
        "idle: the plaintext is absent",
        "sealed bytes ([nonce][tag][ciphertext], ",
        "moved the nonce counter from 0 to 1",
        "of the sealing key's page",
        "refused with EIO",
        "inside an access (plaintext at",
        "with_bytes returned Err(Corrupted)",
        "holds zeros",
    ] {
        assert!(seen.contains(fact), "{fact:?} missing: {f}");
    }
}

/// The sealed promise's probes fail where nothing is sealed: the plaintext is read from
/// outside (anonymous memory), or, wherever it is, the process holds no sealed bytes and no
/// key's page. Without this, a PASS of P9 would show nothing.
#[test]
fn the_sealed_promise_fails_on_secrets_that_are_not_sealed() {
    let mut configurations = vec![
        page_protection(BackingArg::Anonymous),
        page_protection(BackingArg::Auto),
    ];
    configurations.extend(protection_key(BackingArg::Auto));
    for options in configurations {
        let f = ran(probe::sealed::at_rest(&options)).expect("ran");
        assert!(!f.holds, "{f}");
        let seen = f.evidence.join("; ");
        assert!(seen.contains("no sealed bytes in the process"), "{f}");
        assert!(seen.contains("no page for a sealing key"), "{f}");
        if f.backing == "anonymous" {
            assert!(
                seen.contains("idle: the plaintext is readable from outside"),
                "the idle scan finds an anonymous secret: {f}"
            );
        }
        if let Some(f) = ran(probe::sealed::key_copies(&options)) {
            assert!(!f.holds, "{f}");
            assert!(
                f.evidence
                    .iter()
                    .any(|e| e.contains("no page for a sealing key")),
                "{f}"
            );
        }
    }
}

#[test]
fn a_closed_sealed_secret_leaves_neither_plaintext_nor_sealed_bytes() {
    for backing in [BackingArg::Auto, BackingArg::Anonymous] {
        let f = assert_holds(probe::wipe::close_wipes(&sealed(backing))).expect("ran");
        let seen = f.evidence.join("; ");
        assert!(seen.contains("before close: sealed bytes"), "{f}");
        assert!(
            seen.contains("the 48 bytes of tag and ciphertext are absent"),
            "{f}"
        );
        assert!(seen.contains("holds zeros"), "{f}");
    }
}

/// Sealed secrets lock the key's page and the scratch area (during an access too), and the
/// limit binds those pages, not the number of secrets.
#[test]
fn sealed_secrets_lock_their_key_and_scratch_area() {
    let options = sealed(BackingArg::Auto);
    if let Some(f) = assert_holds(probe::smaps::locked(&options)) {
        let seen = f.evidence.join("; ");
        assert!(seen.contains("inside an access the plaintext at"), "{f}");
        assert!(seen.contains("the sealing key's page"), "{f}");
    }
    for mlock in [MlockArg::Required, MlockArg::BestEffort] {
        let f = assert_holds(probe::memlock::limit(&options, mlock)).expect("ran");
        let seen = f.evidence.join("; ");
        assert!(
            seen.contains("sealed secrets created and reported locked"),
            "{f}"
        );
        assert!(seen.contains("the first sealed secret is refused"), "{f}");
    }
}

/// What the key's page is for: no copy of the key (round keys in the vector registers or on
/// the stack, the key stream) where other processes, core dumps or forked children reach it.
#[test]
fn sealed_secrets_leave_no_copy_of_their_key() {
    let options = sealed(BackingArg::Auto);
    assert_holds(probe::sealed::key_copies(&options));
    assert_holds(probe::fault::fork(&options));
    for inside in [false, true] {
        assert_holds(probe::dump::kernel_core_dump(&options, inside));
        assert_holds(probe::dump::gcore(&options, inside));
    }
}

#[test]
fn holders_report_the_strategy_they_got() {
    let (auto, _) = securememory::system::auto_strategy(securememory::Backing::Auto);
    let holder = Holder::spawn(&default_factory()).unwrap_or_else(|e| panic!("{e}"));
    if holder.ready.backing == "secretmem" {
        assert_eq!(
            holder.ready.strategy,
            securemem::holder::strategy_name(auto),
            "{:?}",
            holder.ready
        );
    }
    let anonymous = Holder::spawn(&anonymous()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(anonymous.ready.strategy, "page-protection");
    let page = Holder::spawn(&page_protection(BackingArg::Auto)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(page.ready.strategy, "page-protection");
    let sealed = Holder::spawn(&sealed(BackingArg::Auto)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(sealed.ready.strategy, "sealed");
    assert!(sealed.ready.sealed() && sealed.ready.locked && !sealed.ready.canary);
    if let Some(options) = protection_key(BackingArg::Auto) {
        let key = Holder::spawn(&options).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(key.ready.strategy, "protection-key");
    } else {
        let refused = Holder::spawn(&with_strategy(BackingArg::Auto, StrategyArg::ProtectionKey));
        match refused {
            Err(ProbeError::Refused(r)) => assert_eq!(r.error, "StrategyUnavailable", "{r:?}"),
            other => panic!("expected the library to refuse: {other:?}"),
        }
    }
}
