//! What a forked child gets of the parent's secrets: never the bytes, never a descriptor or a
//! mapping of secret memory, never a hang, and an explicit `Error::Forked` wherever it touches
//! an inherited secret, however the fork happened (a fork racing creation, a fork while another
//! thread is inside an access, the raw system call, a fork from inside one's own callback).
//!
//! Each test runs in a child test process of its own (`common::in_child`), which has a
//! deadline; the processes it forks arm `alarm` first, so that a hang ends them with SIGALRM
//! instead of blocking the test. Forked children of a multithreaded process do only simple
//! things (system calls, no allocation where avoidable) and leave with `_exit`, so they never
//! run the parent's destructors or the test harness.
#![cfg(target_os = "linux")]

mod common;

use securememory::{Backing, Error, Secret};
use std::fmt;
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

/// Seconds a forked child may take before SIGALRM ends it: ample for a few system calls, short
/// enough that a hang fails well within the child test process's deadline.
const CHILD_ALARM_SECS: libc::c_uint = 10;

/// Exit code of a forked child whose checks panicked (kept apart from every check's own code).
const CHILD_PANICKED: i32 = 99;

/// Leaves a forked child at once, without running destructors, atexit handlers or the rest of
/// the test harness, all of which belong to the parent.
fn exit_child(code: i32) -> ! {
    // SAFETY: _exit ends this process immediately; nothing runs after it.
    unsafe { libc::_exit(code) }
}

/// Runs the checks of a forked child and leaves with the code they return (or
/// [`CHILD_PANICKED`]), so that a panic cannot unwind into the parent's test harness.
fn run_child(checks: impl FnOnce() -> i32) -> ! {
    let code = panic::catch_unwind(AssertUnwindSafe(checks)).unwrap_or(CHILD_PANICKED);
    exit_child(code)
}

/// In a forked child: arm the alarm that turns a hang into SIGALRM.
fn arm_alarm() {
    // SAFETY: alarm only schedules a signal for this process.
    unsafe { libc::alarm(CHILD_ALARM_SECS) };
}

/// `fork()` through libc (which runs the `pthread_atfork` handlers). In the child, the alarm is
/// armed before returning.
fn fork() -> libc::pid_t {
    // SAFETY: the child only runs the simple checks of the calling test and leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", io::Error::last_os_error());
    if pid == 0 {
        arm_alarm();
    }
    pid
}

/// The raw fork system call, which bypasses libc and so every `pthread_atfork` handler (as a
/// sandbox, a language runtime or a `clone`-based spawner may). In the child, the alarm is armed
/// before returning.
fn raw_fork() -> libc::pid_t {
    #[cfg(any(target_arch = "x86_64", target_arch = "x86"))]
    // SAFETY: as for `fork`; the child runs no libc fork bookkeeping and needs none here.
    let ret = unsafe { libc::syscall(libc::SYS_fork) };
    // Architectures without a fork system call: clone with only the exit signal is a fork (the
    // remaining arguments are all zero, so their per-architecture order does not matter).
    #[cfg(not(any(target_arch = "x86_64", target_arch = "x86")))]
    // SAFETY: as above.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone,
            libc::SIGCHLD as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    assert!(ret >= 0, "raw fork: {}", io::Error::last_os_error());
    let pid = libc::pid_t::try_from(ret).expect("pid fits pid_t");
    if pid == 0 {
        arm_alarm();
    }
    pid
}

/// How a forked child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    Exited(i32),
    Signaled(i32),
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            End::Exited(code) => write!(f, "exited with code {code}"),
            End::Signaled(libc::SIGALRM) => write!(
                f,
                "killed by SIGALRM: hang (did not finish within {CHILD_ALARM_SECS} s)"
            ),
            End::Signaled(signal) => {
                let name = match signal {
                    libc::SIGSEGV => "SIGSEGV",
                    libc::SIGBUS => "SIGBUS",
                    libc::SIGABRT => "SIGABRT",
                    libc::SIGKILL => "SIGKILL",
                    libc::SIGILL => "SIGILL",
                    libc::SIGTRAP => "SIGTRAP",
                    _ => "?",
                };
                write!(f, "killed by signal {signal} ({name})")
            }
        }
    }
}

/// Waits for our forked child `pid` and says how it ended.
fn wait_for(pid: libc::pid_t) -> End {
    let mut status = 0;
    loop {
        // SAFETY: waiting for our own child, with a valid status pointer.
        let ret = unsafe { libc::waitpid(pid, &mut status, 0) };
        if ret == pid {
            break;
        }
        let error = io::Error::last_os_error();
        assert!(
            ret == -1 && error.kind() == io::ErrorKind::Interrupted,
            "waitpid({pid}): {error}"
        );
    }
    if libc::WIFEXITED(status) {
        End::Exited(libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        End::Signaled(libc::WTERMSIG(status))
    } else {
        panic!("waitpid({pid}): unexpected status {status:#x}")
    }
}

/// What an access returned, as a small number a forked child can exit with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Forked = 0,
    Ok = 1,
    Closed = 2,
    Os = 3,
    Corrupted = 4,
    OtherError = 5,
}

impl Outcome {
    const ALL: [Outcome; 6] = [
        Outcome::Forked,
        Outcome::Ok,
        Outcome::Closed,
        Outcome::Os,
        Outcome::Corrupted,
        Outcome::OtherError,
    ];

    fn of<R>(result: &Result<R, Error>) -> Outcome {
        match result {
            Err(Error::Forked) => Outcome::Forked,
            Ok(_) => Outcome::Ok,
            Err(Error::Closed) => Outcome::Closed,
            Err(Error::Os { .. }) => Outcome::Os,
            Err(Error::Corrupted) => Outcome::Corrupted,
            Err(_) => Outcome::OtherError,
        }
    }

    fn from_code(code: i32) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| *o as i32 == code)
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Outcome::Forked => "Err(Forked)",
            Outcome::Ok => "Ok",
            Outcome::Closed => "Err(Closed)",
            Outcome::Os => "Err(Os)",
            Outcome::Corrupted => "Err(Corrupted)",
            Outcome::OtherError => "another error",
        })
    }
}

// ---------------------------------------------------------------------------------------------
// 1. A fork racing secret creation.

/// What a forked child found of secret memory in itself.
const RACE_CLEAN: i32 = 20;
const RACE_DESCRIPTOR: i32 = 21;
const RACE_MAPPING: i32 = 22;
const RACE_BOTH: i32 = 23;
const RACE_UNINSPECTABLE: i32 = 24;

/// What `/proc` shows for `memfd_secret` memory: the link of a descriptor
/// (`/secretmem (deleted)`) and the path column of a mapping.
const SECRETMEM: &[u8] = b"secretmem";

/// Forks made by one default run: enough to hit a window of a few system calls many times over,
/// and done in well under a second.
const RACE_FORKS: usize = 300;

/// Starts the line in which a child test process reports its counts, for the parent to pass on.
const RACE_REPORT: &str = "fork race:";

/// Set to a number of seconds to race that long instead (a long adversarial rerun).
const RACE_SECS_VAR: &str = "SECUREMEMORY_FORK_RACE_SECS";

/// The longest one child test process races, so that it stays inside `common::DEADLINE`; a
/// longer run is split into rounds of this length (rounded up to whole rounds).
const RACE_ROUND_SECS: u64 = 30;

fn race_secs() -> Option<u64> {
    let value = std::env::var(RACE_SECS_VAR).ok()?;
    let secs: u64 = value
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{RACE_SECS_VAR}={value:?} is not a number of seconds"));
    Some(secs.max(1))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Whether any descriptor of this process is a `memfd_secret` one (`None`: `/proc` could not be
/// read). Allocation-free, for a forked child of a multithreaded process.
fn has_secretmem_descriptor() -> Option<bool> {
    // SAFETY: a NUL-terminated path; the descriptor is closed below.
    let dir = unsafe {
        libc::open(
            c"/proc/self/fd".as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if dir < 0 {
        return None;
    }
    // u64s so the buffer is aligned for linux_dirent64.
    let mut entries = [0u64; 1024];
    let mut found = Some(false);
    'read: loop {
        // SAFETY: getdents64 fills at most the buffer's length.
        let n = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                dir,
                entries.as_mut_ptr(),
                std::mem::size_of_val(&entries),
            )
        };
        if n < 0 {
            found = None;
            break;
        }
        if n == 0 {
            break;
        }
        let n = n as usize;
        // SAFETY: the first n bytes were filled by the kernel.
        let bytes = unsafe { std::slice::from_raw_parts(entries.as_ptr().cast::<u8>(), n) };
        let mut at = 0;
        // linux_dirent64: d_ino (8), d_off (8), d_reclen (2), d_type (1), NUL-terminated d_name.
        while at + 19 < n {
            let reclen = usize::from(u16::from_ne_bytes([bytes[at + 16], bytes[at + 17]]));
            if reclen == 0 {
                break;
            }
            let name = &bytes[at + 19..(at + reclen).min(n)];
            if name.first().is_some_and(u8::is_ascii_digit) {
                let mut link = [0u8; 256];
                // SAFETY: d_name is NUL-terminated inside the record; readlinkat writes at most
                // the buffer's length.
                let len = unsafe {
                    libc::readlinkat(
                        dir,
                        name.as_ptr().cast(),
                        link.as_mut_ptr().cast(),
                        link.len(),
                    )
                };
                if len > 0 && contains(&link[..len as usize], SECRETMEM) {
                    found = Some(true);
                    break 'read;
                }
            }
            at += reclen;
        }
    }
    // SAFETY: our descriptor, closed once.
    unsafe { libc::close(dir) };
    found
}

/// Whether any mapping of this process is secret memory (`None`: `/proc` could not be read).
/// Allocation-free, for a forked child of a multithreaded process.
fn has_secretmem_mapping() -> Option<bool> {
    // SAFETY: a NUL-terminated path; the descriptor is closed below.
    let fd = unsafe {
        libc::open(
            c"/proc/self/maps".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return None;
    }
    let mut buffer = [0u8; 8192];
    // Bytes carried over from the previous read, so a match split across reads is seen.
    let mut kept = 0;
    let found = loop {
        // SAFETY: reads into the unused tail of the buffer.
        let n = unsafe { libc::read(fd, buffer[kept..].as_mut_ptr().cast(), buffer.len() - kept) };
        if n < 0 {
            break None;
        }
        if n == 0 {
            break Some(false);
        }
        let filled = kept + n as usize;
        if contains(&buffer[..filled], SECRETMEM) {
            break Some(true);
        }
        kept = (SECRETMEM.len() - 1).min(filled);
        buffer.copy_within(filled - kept..filled, 0);
    };
    // SAFETY: our descriptor, closed once.
    unsafe { libc::close(fd) };
    found
}

fn inspect_for_secret_memory() -> i32 {
    match (has_secretmem_descriptor(), has_secretmem_mapping()) {
        (Some(false), Some(false)) => RACE_CLEAN,
        (Some(true), Some(false)) => RACE_DESCRIPTOR,
        (Some(false), Some(true)) => RACE_MAPPING,
        (Some(true), Some(true)) => RACE_BOTH,
        _ => RACE_UNINSPECTABLE,
    }
}

#[test]
fn a_fork_racing_secret_creation_hands_the_child_no_secret_memory() {
    let name = common::this_test!();
    if !common::is_child(name) {
        let rounds = race_secs().map_or(1, |secs| secs.div_ceil(RACE_ROUND_SECS));
        for _ in 0..rounds {
            let output = common::in_child(name);
            for line in output.lines().filter(|l| l.contains(RACE_REPORT)) {
                println!("{line}");
            }
            if output.contains("skipped:") {
                println!("skipped: memfd_secret unavailable");
                break;
            }
        }
        return;
    }
    let factory = common::factory(Backing::SecretMem);
    match factory.create_random(32) {
        Err(Error::BackingUnavailable { .. }) if std::env::var_os("CI").is_none() => {
            println!("skipped: memfd_secret unavailable");
            return;
        }
        probe => drop(probe.unwrap()),
    }
    let factory = Arc::new(factory);
    let stop = Arc::new(AtomicBool::new(false));
    let made = Arc::new(AtomicUsize::new(0));
    let creator = {
        let (factory, stop, made) = (Arc::clone(&factory), Arc::clone(&stop), Arc::clone(&made));
        thread::spawn(move || -> Result<(), Error> {
            while !stop.load(Ordering::Relaxed) {
                drop(factory.new(&mut [0x5a; 64])?);
                drop(factory.create_random(64)?);
                made.fetch_add(2, Ordering::Relaxed);
            }
            Ok(())
        })
    };
    let started = Instant::now();
    while made.load(Ordering::Relaxed) == 0 && !creator.is_finished() {
        assert!(
            started.elapsed() < common::DEADLINE / 2,
            "the creating thread made no secret"
        );
        thread::yield_now();
    }

    let race_for = race_secs().map(|secs| Duration::from_secs(secs.min(RACE_ROUND_SECS)));
    let started = Instant::now();
    let (mut forks, mut clean, mut descriptors, mut mappings) = (0usize, 0usize, 0usize, 0usize);
    let mut odd = Vec::new();
    loop {
        let more = match race_for {
            Some(limit) => started.elapsed() < limit,
            None => forks < RACE_FORKS,
        };
        if !more || creator.is_finished() {
            break;
        }
        let pid = fork();
        if pid == 0 {
            run_child(inspect_for_secret_memory);
        }
        forks += 1;
        match wait_for(pid) {
            End::Exited(RACE_CLEAN) => clean += 1,
            End::Exited(RACE_DESCRIPTOR) => descriptors += 1,
            End::Exited(RACE_MAPPING) => mappings += 1,
            End::Exited(RACE_BOTH) => {
                descriptors += 1;
                mappings += 1;
            }
            End::Exited(RACE_UNINSPECTABLE) => odd.push("could not read /proc".to_string()),
            end => odd.push(end.to_string()),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let created = creator.join().expect("creating thread panicked");
    assert!(
        created.is_ok(),
        "creating secrets failed during the race: {created:?}"
    );
    let made = made.load(Ordering::Relaxed);
    println!(
        "{RACE_REPORT} {forks} forks racing {made} secret creations: {clean} clean, \
         {descriptors} with a memfd_secret descriptor, {mappings} with a secret-memory mapping"
    );
    assert!(
        descriptors == 0 && mappings == 0,
        "forked children inherited secret memory: of {forks} children forked while another \
         thread created {made} secrets, {descriptors} held a memfd_secret descriptor and \
         {mappings} a secret-memory mapping ({clean} clean)"
    );
    assert!(
        odd.is_empty(),
        "{} of {forks} forked children could not be inspected: {odd:?}",
        odd.len()
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Close and drop in a child forked while another thread was inside an access.

const HELD_ACCESS_NOT_REFUSED: i32 = 2;
const HELD_CALLBACK_RAN: i32 = 3;
const HELD_CLOSE_FAILED: i32 = 4;
const HELD_NOT_CLOSED: i32 = 5;
const HELD_ACCESS_AFTER_CLOSE_NOT_REFUSED: i32 = 6;
const HELD_STILL_SHARED: i32 = 7;

fn held_failure(code: i32) -> &'static str {
    match code {
        HELD_ACCESS_NOT_REFUSED => "an access did not return Err(Forked)",
        HELD_CALLBACK_RAN => "an access ran its callback",
        HELD_CLOSE_FAILED => "close returned an error",
        HELD_NOT_CLOSED => "is_closed() was false after close",
        HELD_ACCESS_AFTER_CLOSE_NOT_REFUSED => "an access after close did not return Err(Forked)",
        HELD_STILL_SHARED => "the secret was still shared in the child",
        CHILD_PANICKED => "a check panicked",
        _ => "unknown exit code",
    }
}

/// Both accesses refuse with `Forked` and run no callback; 0 or the failure's code.
fn refuses_access(secret: &Secret, code: i32) -> i32 {
    let mut ran = false;
    let read = secret.with_bytes(|_| ran = true);
    let write = secret.with_bytes_mut(|_| ran = true);
    if ran {
        HELD_CALLBACK_RAN
    } else if !matches!(read, Err(Error::Forked)) || !matches!(write, Err(Error::Forked)) {
        code
    } else {
        0
    }
}

/// Takes the only reference to `secret` in a forked child: the thread holding the other one
/// does not exist there, so its count is given up.
fn sole_owner(secret: Arc<Secret>) -> Option<Secret> {
    // SAFETY: the holding thread's clone will never be dropped in this process (the thread was
    // not forked); giving up its count leaves ours, which is live, as the last one.
    unsafe { Arc::decrement_strong_count(Arc::as_ptr(&secret)) };
    Arc::into_inner(secret)
}

/// The checks of a child forked while another thread held an access to `closed` and `dropped`:
/// accesses refuse with `Forked`, `close` returns Ok at once and sticks, dropping returns at
/// once (after a close, and without one).
fn close_and_drop_in_child(closed: Arc<Secret>, dropped: Arc<Secret>) -> i32 {
    let refused = refuses_access(&closed, HELD_ACCESS_NOT_REFUSED);
    if refused != 0 {
        return refused;
    }
    if closed.close().is_err() {
        return HELD_CLOSE_FAILED;
    }
    if !closed.is_closed() {
        return HELD_NOT_CLOSED;
    }
    let refused = refuses_access(&closed, HELD_ACCESS_AFTER_CLOSE_NOT_REFUSED);
    if refused != 0 {
        return refused;
    }
    let (Some(closed), Some(dropped)) = (sole_owner(closed), sole_owner(dropped)) else {
        return HELD_STILL_SHARED;
    };
    drop(closed);
    drop(dropped);
    0
}

/// One thread holds an access (`write`: with_bytes_mut, else with_bytes) to two secrets, blocked
/// inside the callback; the main thread forks; the child closes one and drops both.
fn close_and_drop_while_another_thread_holds_an_access(write: bool) {
    const KEY: [u8; 32] = [7; 32];
    const WRITTEN: [u8; 32] = [8; 32];
    let expected = if write { WRITTEN } else { KEY };
    for backing in common::SETUPS {
        let factory = common::factory(backing);
        let closed = Arc::new(factory.new(&mut KEY.clone()).unwrap());
        let dropped = Arc::new(factory.new(&mut KEY.clone()).unwrap());
        let label = format!("{backing:?} ({:?})", closed.protection().backing);
        let (inside_tx, inside_rx) = mpsc::channel();
        let (finish_tx, finish_rx) = mpsc::channel::<()>();
        let holder = {
            let (closed, dropped) = (Arc::clone(&closed), Arc::clone(&dropped));
            thread::spawn(move || -> Result<bool, Error> {
                let wait_inside = || {
                    inside_tx.send(()).unwrap();
                    finish_rx.recv().unwrap();
                };
                if write {
                    closed.with_bytes_mut(|a| {
                        dropped.with_bytes_mut(|b| {
                            wait_inside();
                            a.copy_from_slice(&WRITTEN);
                            b.copy_from_slice(&WRITTEN);
                        })
                    })??;
                    Ok(true)
                } else {
                    closed.with_bytes(|a| {
                        dropped.with_bytes(|b| {
                            wait_inside();
                            a == KEY && b == KEY
                        })
                    })?
                }
            })
        };
        inside_rx
            .recv_timeout(common::DEADLINE / 2)
            .expect("the holding thread never got inside its access");

        let pid = fork();
        if pid == 0 {
            run_child(move || close_and_drop_in_child(closed, dropped));
        }
        let end = wait_for(pid);

        finish_tx.send(()).unwrap();
        let held = holder.join().expect("holding thread panicked");
        assert!(
            matches!(held, Ok(true)),
            "{label}: the parent's access failed: {held:?}"
        );
        let access = if write {
            "with_bytes_mut"
        } else {
            "with_bytes"
        };
        match end {
            End::Exited(0) => {}
            End::Exited(code) => panic!(
                "{label}: in a child forked while another thread was inside {access}, {} \
                 (child {end})",
                held_failure(code)
            ),
            End::Signaled(_) => panic!(
                "{label}: in a child forked while another thread was inside {access}, close or \
                 drop did not return: child {end}"
            ),
        }
        for secret in [&closed, &dropped] {
            assert!(
                secret.with_bytes(|b| b == expected).unwrap(),
                "{label}: the parent no longer reads the right bytes"
            );
        }
    }
}

#[test]
fn close_and_drop_in_a_forked_child_return_although_a_thread_was_inside_with_bytes() {
    common::in_child_process!();
    close_and_drop_while_another_thread_holds_an_access(false);
}

#[test]
fn close_and_drop_in_a_forked_child_return_although_a_thread_was_inside_with_bytes_mut() {
    common::in_child_process!();
    close_and_drop_while_another_thread_holds_an_access(true);
}

// ---------------------------------------------------------------------------------------------
// 3. A child made with the raw fork system call.

#[test]
fn a_child_made_with_the_raw_fork_system_call_is_refused_access() {
    common::in_child_process!();
    for backing in common::SETUPS {
        let secret = common::factory(backing).new(&mut [7; 32]).unwrap();
        let label = format!("{backing:?} ({:?})", secret.protection().backing);
        let pid = raw_fork();
        if pid == 0 {
            run_child(|| {
                let mut ran = false;
                let read = Outcome::of(&secret.with_bytes(|_| ran = true));
                let write = Outcome::of(&secret.with_bytes_mut(|_| ran = true));
                ((read as i32) << 4) | ((write as i32) << 1) | i32::from(ran)
            });
        }
        let end = wait_for(pid);
        let End::Exited(code) = end else {
            panic!("{label}: the child made with the raw fork system call was {end}");
        };
        assert_ne!(code, CHILD_PANICKED, "{label}: the child's checks panicked");
        let read = Outcome::from_code(code >> 4);
        let write = Outcome::from_code((code >> 1) & 7);
        let ran = code & 1 == 1;
        let (Some(read), Some(write)) = (read, write) else {
            panic!("{label}: unexpected child exit code {code}");
        };
        assert!(
            read == Outcome::Forked && write == Outcome::Forked && !ran,
            "{label}: in a child made with the raw fork system call, with_bytes gave {read} and \
             with_bytes_mut gave {write} (expected Err(Forked)); a callback ran: {ran}"
        );
        assert!(
            secret.with_bytes(|b| b == [7; 32]).unwrap(),
            "{label}: parent unaffected"
        );
    }
}

/// Closing a multi-page secret in a forked child unmaps the guard pages the child inherited
/// (both of them), whether or not its data pages were left out of the fork, and the data pages
/// where the child has them (wiped on fork rather than left out).
#[test]
fn closing_in_a_forked_child_unmaps_both_guard_pages() {
    common::in_child_process!();
    let page = 4096;
    for backing in [Backing::Anonymous, Backing::SecretMem] {
        let factory = common::factory(backing);
        let secret = factory.create_random(3 * page - 64).unwrap();
        let label = format!("{backing:?} ({:?})", secret.protection().backing);
        if !secret.protection().guard_pages || securememory::system::page_size() != page {
            eprintln!("{label}: skipped: no guard pages of 4 KiB");
            continue;
        }
        let trailing = secret
            .with_bytes(|b| b.as_ptr() as usize + b.len())
            .unwrap();
        let leading = trailing - 4 * page;
        assert!(common::is_mapped(leading) && common::is_mapped(trailing));
        let pid = fork();
        if pid == 0 {
            run_child(|| {
                if secret.close().is_err() {
                    return 4;
                }
                i32::from(common::is_mapped(leading))
                    | i32::from(common::is_mapped(trailing)) << 1
                    | i32::from(common::is_mapped(leading + page)) << 3
            });
        }
        let end = wait_for(pid);
        assert!(
            matches!(end, End::Exited(0)),
            "{label}: the child ended {end} (1: leading guard left, 2: trailing guard left, \
             3: both, 4: close failed, 8 and more: data pages left)"
        );
        assert!(
            common::is_mapped(leading),
            "{label}: the parent's guard went"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 4. A fork from inside one's own callback.

/// Forks inside the callback of an access (`write`: with_bytes_mut, else with_bytes). The child
/// returns from the callback without touching the bytes and exits with what the access
/// returned; the parent finishes its access normally.
fn fork_inside_own_callback(write: bool) {
    const KEY: [u8; 32] = [7; 32];
    const WRITTEN: [u8; 32] = [8; 32];
    let access = if write {
        "with_bytes_mut"
    } else {
        "with_bytes"
    };
    for backing in common::SETUPS {
        let secret = common::factory(backing).new(&mut KEY.clone()).unwrap();
        let label = format!("{backing:?} ({:?})", secret.protection().backing);
        let mut forked = None;
        // A panic in the child must not unwind into the test harness; caught here, it is
        // re-raised in the parent and turned into an exit code in the child.
        let result = panic::catch_unwind(AssertUnwindSafe(|| {
            if write {
                secret.with_bytes_mut(|bytes| {
                    let pid = fork();
                    forked = Some(pid);
                    if pid == 0 {
                        // Secret memory is not mapped here: do not touch the bytes.
                        return None;
                    }
                    let right = bytes == KEY;
                    bytes.copy_from_slice(&WRITTEN);
                    Some(right)
                })
            } else {
                secret.with_bytes(|bytes| {
                    let pid = fork();
                    forked = Some(pid);
                    if pid == 0 {
                        return None;
                    }
                    Some(bytes == KEY)
                })
            }
        }));
        if forked == Some(0) {
            exit_child(match &result {
                Ok(returned) => Outcome::of(returned) as i32,
                Err(_) => CHILD_PANICKED,
            });
        }
        let result = result.unwrap_or_else(|panic| panic::resume_unwind(panic));
        let pid = forked.expect("the callback did not run in the parent");
        let end = wait_for(pid);
        let got = match end {
            End::Exited(CHILD_PANICKED) => "nothing: the child panicked".to_string(),
            End::Exited(code) => Outcome::from_code(code)
                .map_or_else(|| format!("unknown exit code {code}"), |o| o.to_string()),
            End::Signaled(_) => format!("nothing: the child was {end}"),
        };
        assert!(
            end == End::Exited(Outcome::Forked as i32),
            "{label}: in a child forked from inside its own {access} callback, {access} returned \
             {got} (expected Err(Forked))"
        );
        assert!(
            matches!(result, Ok(Some(true))),
            "{label}: the parent's {access} around the fork gave {result:?}"
        );
        let expected = if write { WRITTEN } else { KEY };
        assert!(
            secret.with_bytes(|b| b == expected).unwrap(),
            "{label}: the parent no longer reads the right bytes"
        );
    }
}

#[test]
fn forking_inside_with_bytes_ends_the_access_with_forked_in_the_child() {
    common::in_child_process!();
    fork_inside_own_callback(false);
}

#[test]
fn forking_inside_with_bytes_mut_ends_the_access_with_forked_in_the_child() {
    common::in_child_process!();
    fork_inside_own_callback(true);
}

/// A thread making and dropping secrets without pause, and forks meanwhile: every child makes,
/// writes, purges and closes secrets of its own, however the fork fell. (The process-wide list
/// of live secrets that purge walks may be locked by the making thread at the moment of the
/// fork; a child must not wait for that thread, which does not exist there.)
#[test]
fn a_child_forked_while_secrets_come_and_go_makes_and_purges_its_own() {
    common::in_child_process!();
    const FORKS: usize = 300;
    let factory = Arc::new(common::factory(Backing::Anonymous));
    let stop = Arc::new(AtomicBool::new(false));
    let made = Arc::new(AtomicUsize::new(0));
    let maker = {
        let (factory, stop, made) = (Arc::clone(&factory), Arc::clone(&stop), Arc::clone(&made));
        thread::spawn(move || -> Result<(), Error> {
            while !stop.load(Ordering::Relaxed) {
                drop(factory.create_random(32)?);
                made.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        })
    };
    while made.load(Ordering::Relaxed) == 0 && !maker.is_finished() {
        thread::yield_now();
    }
    for _ in 0..FORKS {
        let pid = fork();
        if pid == 0 {
            let factory = Arc::clone(&factory);
            run_child(move || {
                let Ok(secret) = factory.create_random(16) else {
                    return 1;
                };
                if secret.with_bytes_mut(|bytes| bytes[0] = 1).is_err() {
                    return 2;
                }
                if securememory::purge().closed != 1 || !secret.is_closed() {
                    return 3;
                }
                0
            });
        }
        let end = wait_for(pid);
        assert_eq!(
            end,
            End::Exited(0),
            "a child forked while secrets came and went: {end} (1: could not make a secret, 2: \
             could not write it, 3: purge did not close exactly its own secret)"
        );
    }
    stop.store(true, Ordering::Relaxed);
    maker.join().unwrap().unwrap();
}

/// A grandchild is a fork of its parent as much as a child is: the secrets its parent (itself a
/// forked child) made are refused to it and are not among its live secrets, and what it makes
/// (sealed secrets, with a key of its own, included) is its own.
#[test]
fn a_grandchild_is_refused_the_secrets_its_forked_parent_made() {
    common::in_child_process!();
    let sealed = || {
        common::builder()
            .strategy(securememory::Strategy::Sealed)
            .build()
    };
    // A secret of this process first, so that the child's epoch is one it takes after a fork,
    // not the first of the line.
    let parents = common::default_factory().new(&mut [1; 16]).unwrap();
    let pid = fork();
    if pid == 0 {
        run_child(|| {
            let secret = common::default_factory().new(&mut [3; 16]).unwrap();
            let sealed_secret = sealed().new(&mut [5; 16]).unwrap();
            if !secret.with_bytes(|b| b == [3; 16]).unwrap_or(false)
                || !sealed_secret.with_bytes(|b| b == [5; 16]).unwrap_or(false)
            {
                return 1;
            }
            let grandchild = fork();
            if grandchild == 0 {
                run_child(|| {
                    let refused = refuses_access(&secret, 2);
                    if refused != 0 {
                        return refused;
                    }
                    if !securememory::live_secrets().is_empty() {
                        return 5;
                    }
                    let own = common::default_factory().new(&mut [4; 16]).unwrap();
                    let own_sealed = sealed().new(&mut [6; 16]).unwrap();
                    if own.with_bytes(|b| b == [4; 16]).unwrap_or(false)
                        && own_sealed.with_bytes(|b| b == [6; 16]).unwrap_or(false)
                    {
                        0
                    } else {
                        3
                    }
                });
            }
            match wait_for(grandchild) {
                End::Exited(code) => code,
                _ => 4,
            }
        });
    }
    let end = wait_for(pid);
    drop(parents);
    assert!(
        matches!(end, End::Exited(0)),
        "the child could not use its own secrets (1), the grandchild was not refused its \
         parent's (2), listed them as its own (5), could not use its own (3), or ended \
         otherwise (4): {end}"
    );
}
