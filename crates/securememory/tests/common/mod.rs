//! Helpers shared by the integration tests: timeouts, and running a test body in a child
//! process (for process-wide state: resource limits, capabilities, fork, the address space).

#![allow(dead_code)] // Each test file uses its own subset.

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
pub fn watchdog() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        thread::spawn(|| {
            thread::sleep(DEADLINE * 5);
            eprintln!(
                "test process still running after {:?}: deadlock?",
                DEADLINE * 5
            );
            std::process::exit(101);
        });
    });
}

const CHILD_VAR: &str = "SECUREMEMORY_TEST_CHILD";

/// True in the child process that [`in_child`] started for `test`.
pub fn is_child(test: &str) -> bool {
    std::env::var(CHILD_VAR).is_ok_and(|name| name == test)
}

/// Re-runs the test named `test` (its path inside the test binary, e.g. `mlock_limit_required`)
/// alone in a child process, waits for it with a deadline and returns its standard output.
/// Panics with the child's output when it fails.
///
/// The test function must start with `if common::is_child(NAME) { ...body...; return; }`.
pub fn in_child(test: &str) -> String {
    let exe = std::env::current_exe().expect("test binary path");
    let mut child = Command::new(exe)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_VAR, test)
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
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "child test {test} failed ({})\nstdout:\n{stdout}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("1 passed"),
        "child test {test} did not run exactly one test:\n{stdout}"
    );
    stdout
}

#[cfg(target_os = "linux")]
/// Drops `CAP_IPC_LOCK` from this process (effective, permitted and inheritable sets), so that
/// `RLIMIT_MEMLOCK` applies to it even when it runs as root.
pub fn drop_ipc_lock_capability() {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    const CAP_IPC_LOCK: u32 = 14;
    let mut header = Header {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: capget with a v3 header fills two data structs.
    let ret = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    assert_eq!(ret, 0, "capget: {}", std::io::Error::last_os_error());
    let bit = 1u32 << CAP_IPC_LOCK;
    data[0].effective &= !bit;
    data[0].permitted &= !bit;
    data[0].inheritable &= !bit;
    // SAFETY: capset with a v3 header reads two data structs.
    let ret = unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) };
    assert_eq!(ret, 0, "capset: {}", std::io::Error::last_os_error());
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
    let maps = std::fs::read_to_string("/proc/self/maps").expect("read /proc/self/maps");
    maps.lines().any(|line| {
        let range = line.split_whitespace().next().unwrap_or("");
        let (start, end) = range.split_once('-').expect("maps range");
        let start = usize::from_str_radix(start, 16).expect("maps start");
        let end = usize::from_str_radix(end, 16).expect("maps end");
        (start..end).contains(&address)
    })
}
