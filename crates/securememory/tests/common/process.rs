//! Test helpers about the process: deadlines, running a test body in a child process (for
//! process-wide state: resource limits, capabilities, fork, the address space), limits,
//! capabilities and the address space. Shared by the integration tests and the library's own
//! unit tests.

#![allow(dead_code, unused_macros, unused_imports)] // Each test file uses its own subset.

use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// Long enough for a loaded CI machine, short enough that a deadlock fails the suite quickly.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Runs `body` on its own thread and panics if it does not finish within `limit`, so a deadlock
/// fails the test instead of hanging the run.
pub fn within<R: Send + 'static>(limit: Duration, body: impl FnOnce() -> R + Send + 'static) -> R {
    let (sender, receiver) = mpsc::channel();
    let worker = thread::spawn(move || {
        let _ = sender.send(body());
    });
    match receiver.recv_timeout(limit) {
        Ok(result) => {
            worker.join().expect("test body thread");
            result
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("timed out after {limit:?}: deadlock?"),
        Err(mpsc::RecvTimeoutError::Disconnected) => match worker.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("the body thread ended without sending"),
        },
    }
}

/// Ends the whole test process if it is still running after `DEADLINE` × 5, so that a deadlock
/// in a test that has no deadline of its own fails the run instead of hanging it. Idempotent.
///
/// Returns once the watchdog's thread runs: a thread starting maps memory of its own (its
/// signal stack), which must not land where a test has just unmapped a secret and is looking.
pub fn watchdog() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        let (running_tx, running) = std::sync::mpsc::channel();
        thread::spawn(move || {
            running_tx.send(()).unwrap();
            thread::sleep(DEADLINE * 5);
            eprintln!(
                "test process still running after {:?}: deadlock?",
                DEADLINE * 5
            );
            std::process::exit(101);
        });
        running.recv().unwrap();
    });
}

const CHILD_VAR: &str = "SECUREMEMORY_TEST_CHILD";

/// True in the child process that [`in_child`] started for `test`.
pub fn is_child(test: &str) -> bool {
    std::env::var(CHILD_VAR).is_ok_and(|name| name == test)
}

/// The path of a test inside its test binary (what `cargo test -- --exact` takes), from the type
/// name of a function defined in it (`crate::module::test::here`).
pub fn test_path(here: &'static str) -> &'static str {
    let path = here
        .strip_suffix("::here")
        .expect("a function named `here`");
    path.split_once("::").map_or(path, |(_crate, rest)| rest)
}

/// The path of the calling test inside its test binary, derived from where it is written, so a
/// renamed or moved test cannot go out of step with it.
macro_rules! this_test {
    () => {{
        fn here() {}
        common::test_path(std::any::type_name_of_val(&here))
    }};
}
pub(crate) use this_test;

/// Runs the rest of the calling test in a child process of its own: in the test process this
/// starts the child, waits for it and returns from the test; in the child it does nothing.
macro_rules! in_child_process {
    () => {
        let test = common::this_test!();
        if !common::is_child(test) {
            common::in_child(test);
            return;
        }
    };
}
pub(crate) use in_child_process;

/// Re-runs the test named `test` (its path inside the test binary, from [`this_test!`]) alone in
/// a child process, waits for it with a deadline and returns its standard output. Panics with the
/// child's output when it fails.
///
/// Most tests use [`in_child_process!`]; this is for those that do more in the parent.
pub fn in_child(test: &str) -> String {
    let (status, stdout, stderr) = run_child(test);
    assert!(
        status.success(),
        "child test {test} failed ({status})\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stdout.contains("1 passed"),
        "child test {test} did not run exactly one test:\n{stdout}"
    );
    stdout
}

/// Runs the test named `test` alone in a child process like [`in_child`], with a deadline, and
/// returns how it ended and what it printed (stdout, stderr), whatever that was: for tests whose
/// child is meant to die.
pub fn run_child(test: &str) -> (std::process::ExitStatus, String, String) {
    let exe = std::env::current_exe().expect("test binary path");
    // Under AddressSanitizer a fault would end the child with the sanitizer's report and exit
    // status 1; a child whose fault is the point must die of the signal, as it does without.
    let asan_options = match std::env::var("ASAN_OPTIONS") {
        Ok(options) if !options.is_empty() => format!("{options}:handle_segv=0"),
        _ => "handle_segv=0".to_string(),
    };
    let mut child = Command::new(exe)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_VAR, test)
        .env("ASAN_OPTIONS", asan_options)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn child test process");
    let started = Instant::now();
    loop {
        if child.try_wait().expect("wait for child").is_some() {
            break;
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            let output = child.wait_with_output().expect("collect child output");
            panic!(
                "child test {test} timed out\nstdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        thread::sleep(Duration::from_millis(10));
    }
    let output = child.wait_with_output().expect("collect child output");
    (
        output.status,
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Starts the test named `test` alone in a child process, its stdout piped, and returns it
/// without waiting: for tests that watch the child from outside while it runs.
pub fn spawn_child(test: &str) -> std::process::Child {
    Command::new(std::env::current_exe().expect("test binary path"))
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_VAR, test)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn child test process")
}

#[cfg(target_os = "linux")]
/// Drops `CAP_IPC_LOCK` from this process (effective, permitted and inheritable sets), so that
/// `RLIMIT_MEMLOCK` applies to it even when it runs as root.
pub fn drop_ipc_lock_capability() {
    use caps::{CapSet, Capability};
    for set in [CapSet::Effective, CapSet::Permitted, CapSet::Inheritable] {
        caps::drop(None, set, Capability::CAP_IPC_LOCK).expect("dropping CAP_IPC_LOCK");
    }
}

#[cfg(target_os = "linux")]
/// Sets this process's `RLIMIT_MEMLOCK` (soft and hard) to `bytes`.
pub fn set_memlock_limit(bytes: u64) {
    let limit = libc::rlimit {
        rlim_cur: bytes,
        rlim_max: bytes,
    };
    // SAFETY: a valid rlimit struct.
    let ret = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) };
    assert_eq!(ret, 0, "setrlimit: {}", std::io::Error::last_os_error());
}

#[cfg(target_os = "linux")]
/// Whether any mapping of this process covers `address` (from `/proc/self/maps`).
pub fn is_mapped(address: usize) -> bool {
    mapping_at(address).is_some()
}

#[cfg(target_os = "linux")]
/// The line of `/proc/self/maps` whose mapping covers `address`, if any. After a region is
/// unmapped, another mapping (an allocator's, under a sanitizer) may take its place: compare
/// lines to tell the two apart.
pub fn mapping_at(address: usize) -> Option<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("read /proc/self/maps");
    maps.lines()
        .find(|line| {
            let range = line.split_whitespace().next().unwrap_or("");
            let (start, end) = range.split_once('-').expect("maps range");
            let start = usize::from_str_radix(start, 16).expect("maps start");
            let end = usize::from_str_radix(end, 16).expect("maps end");
            (start..end).contains(&address)
        })
        .map(str::to_owned)
}

#[cfg(target_os = "linux")]
/// Whether this kernel offers `memfd_secret(2)`, asked without going through the library (whose
/// answer is what some tests check).
pub fn kernel_offers_secret_memory() -> bool {
    // SAFETY: memfd_secret takes one flags argument and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_memfd_secret, libc::O_CLOEXEC) };
    if fd < 0 {
        return false;
    }
    // SAFETY: the descriptor was just made and is ours.
    unsafe { libc::close(fd as libc::c_int) };
    true
}

#[cfg(target_os = "linux")]
/// `true` (after saying so) when secret memory is missing and the test must be skipped; fails
/// instead where it must be present (`CI` set).
pub fn skip_without_secret_memory() -> bool {
    if kernel_offers_secret_memory() {
        return false;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "memfd_secret missing in CI"
    );
    println!("skipped: memfd_secret unavailable");
    true
}
