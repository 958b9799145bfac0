//! Process-wide purge, its hooks and the list of live secrets. Purge closes every secret of the
//! process, so each test runs in a child process of its own.
#![cfg(target_os = "linux")]

mod common;

use securememory::{Backing, Error, MlockPolicy, Secret, SecretFactory, Strategy};
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

/// Factories of different policies, so that a purge is seen to reach all of them.
fn factories() -> Vec<securememory::ProtectedMemorySecretFactory> {
    common::SETUPS
        .iter()
        .map(|&setup| common::factory(setup))
        .collect()
}

#[test]
fn purge_closes_every_secret_of_several_factories_and_threads() {
    common::in_child_process!();
    let mut secrets: Vec<Secret> = Vec::new();
    let mut addresses = Vec::new();
    for factory in factories() {
        let made_here = factory.create_random(64).unwrap();
        let made_elsewhere = thread::scope(|s| {
            s.spawn(|| factory.new(&mut [7u8; 100]).unwrap())
                .join()
                .unwrap()
        });
        for secret in [made_here, made_elsewhere] {
            addresses.push(secret.with_bytes(|b| b.as_ptr() as usize).unwrap());
            secrets.push(secret);
        }
    }
    let before: Vec<_> = addresses.iter().map(|&a| common::mapping_at(a)).collect();
    let in_use = securememory::stats().in_use;
    assert_eq!(in_use, secrets.len() as u64);

    let purged = securememory::purge();
    assert_eq!(purged.closed, secrets.len(), "{purged:?}");
    assert!(purged.is_complete(), "{purged:?}");
    assert_eq!(securememory::stats().in_use, 0);
    assert!(securememory::live_secrets().is_empty());
    for (secret, (address, was)) in secrets.iter().zip(addresses.iter().zip(&before)) {
        assert!(secret.is_closed());
        assert!(matches!(secret.with_bytes(|_| ()), Err(Error::Closed)));
        assert!(matches!(secret.with_bytes_mut(|_| ()), Err(Error::Closed)));
        // A sealed secret's plaintext address is its thread's scratch area, which stays.
        if secret.protection().strategy != Strategy::Sealed {
            let now = common::mapping_at(*address);
            assert!(
                now.is_none() || now != *was,
                "{address:#x} still mapped after purge"
            );
        }
    }
    // A second purge finds nothing open, and drops after a purge are no-ops.
    assert_eq!(securememory::purge().closed, 0);
    drop(secrets);
    assert_eq!(securememory::stats().in_use, 0);
}

#[test]
fn purge_waits_for_an_access_in_flight_on_another_thread() {
    common::in_child_process!();
    let secret = Arc::new(common::default_factory().new(&mut [1u8; 32]).unwrap());
    let (inside_tx, inside_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let reader = {
        let secret = secret.clone();
        thread::spawn(move || {
            secret
                .with_bytes(|bytes| {
                    inside_tx.send(()).unwrap();
                    release_rx.recv().unwrap();
                    // Still readable: the purge waits for this access.
                    bytes.iter().map(|&b| u32::from(b)).sum::<u32>()
                })
                .unwrap()
        })
    };
    inside_rx.recv().unwrap();
    let purging = thread::spawn(securememory::purge);
    common::within(Duration::from_secs(10), {
        let secret = secret.clone();
        move || {
            while !secret.is_closed() {
                thread::sleep(Duration::from_millis(1));
            }
        }
    });
    thread::sleep(Duration::from_millis(100));
    assert!(
        !purging.is_finished(),
        "purge returned with an access in flight"
    );
    release_tx.send(()).unwrap();
    assert_eq!(
        reader.join().unwrap(),
        32,
        "the access in flight saw the bytes"
    );
    let purged = purging.join().unwrap();
    assert_eq!(purged.closed, 1, "{purged:?}");
    assert!(matches!(secret.with_bytes(|_| ()), Err(Error::Closed)));
}

#[test]
fn purge_reports_a_secret_the_calling_thread_holds_and_closes_the_rest() {
    common::in_child_process!();
    let factory = common::default_factory();
    let held = factory.create_random(16).unwrap();
    let held_line = line!() - 1;
    let other = factory.create_random(24).unwrap();
    let purged = held
        .with_bytes(|_| securememory::purge())
        .expect("the read itself succeeds");
    assert_eq!(purged.closed, 1, "{purged:?}");
    assert!(!purged.is_complete());
    assert_eq!(purged.held_by_caller.len(), 1, "{purged:?}");
    let info = purged.held_by_caller[0];
    assert_eq!((info.len, info.created_at.line()), (16, held_line));
    assert!(other.is_closed() && !held.is_closed());
    // Once the access has ended, a purge closes it.
    let again = securememory::purge();
    assert_eq!(again.closed, 1, "{again:?}");
    assert!(again.is_complete() && held.is_closed());
}

#[test]
fn live_secrets_name_where_each_was_made() {
    common::in_child_process!();
    let factory = common::default_factory();
    let dyn_factory: &dyn SecretFactory = &factory;
    let a = factory.create_random(10).unwrap();
    let a_line = line!() - 1;
    let b = dyn_factory.new(&mut [3u8; 20]).unwrap();
    let b_line = line!() - 1;
    let make_c = || factory.create_random(30).unwrap();
    let c_line = line!() - 1;
    let c = thread::scope(|s| s.spawn(make_c).join().unwrap());
    let mut listed: Vec<(usize, u32, String)> = securememory::live_secrets()
        .iter()
        .map(|info| {
            (
                info.len,
                info.created_at.line(),
                info.created_at.file().to_string(),
            )
        })
        .collect();
    listed.sort();
    let file = file!().to_string();
    assert_eq!(
        listed,
        [
            (10, a_line, file.clone()),
            (20, b_line, file.clone()),
            (30, c_line, file)
        ]
    );
    b.close().unwrap();
    drop(c);
    let left = securememory::live_secrets();
    assert_eq!(
        left.iter().map(|i| i.len).collect::<Vec<_>>(),
        [10],
        "closed and dropped secrets are not listed"
    );
    let column = left[0].created_at.column();
    assert_eq!(
        left[0].to_string(),
        format!("10 bytes made at {}:{a_line}:{column}", file!())
    );
    drop(a);
}

/// A secret in anonymous memory under page protection (whose mapping a parent can watch in
/// `/proc/PID/maps`), and a second secret that a thread holds open for a while, so that the
/// purge, after closing the first, waits on the second and the process outlives the first's
/// teardown long enough for the parent to see it.
fn marker_and_a_held_secret() -> (Secret, usize) {
    let factory = common::builder()
        .backing(Backing::Anonymous)
        .strategy(Strategy::PageProtection)
        .mlock(MlockPolicy::BestEffort)
        .build();
    let marker = factory.new(&mut [0x5au8; 64]).unwrap();
    let address = marker.with_bytes(|b| b.as_ptr() as usize).unwrap();
    let held = Arc::new(factory.create_random(32).unwrap());
    let (inside_tx, inside_rx) = mpsc::channel();
    thread::spawn(move || {
        held.with_bytes(|_| {
            inside_tx.send(()).unwrap();
            thread::sleep(Duration::from_secs(3));
        })
    });
    inside_rx.recv().unwrap();
    (marker, address)
}

/// 64 bytes of another process's memory at `address`, if they can be read.
fn read_at(mem: &str, address: usize) -> Option<[u8; 64]> {
    use std::os::unix::fs::FileExt;
    let mut bytes = [0; 64];
    let file = std::fs::File::open(mem).ok()?;
    file.read_exact_at(&mut bytes, address as u64).ok()?;
    Some(bytes)
}

/// Watches the child: reads the marker's address from its stdout, then `/proc/PID/maps` until
/// the marker's mapping is gone while the process still lives. Returns how the child ended.
fn watch_marker_vanish(test: &str, before_signal: impl FnOnce(u32)) -> std::process::ExitStatus {
    let mut child = common::spawn_child(test);
    let pid = child.id();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let address = loop {
        line.clear();
        if stdout.read_line(&mut line).unwrap() == 0 {
            let output = child.wait_with_output().unwrap();
            panic!(
                "child ended early ({})\nstderr:\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        // The harness writes the test's name on the same line, before it.
        if let Some((_, rest)) = line.trim().split_once("MARKER ") {
            break usize::from_str_radix(rest, 16).unwrap();
        }
    };
    let maps = format!("/proc/{pid}/maps");
    let marker_line = |maps: &str| {
        maps.lines()
            .find(|l| {
                let (start, end) = l
                    .split_whitespace()
                    .next()
                    .unwrap()
                    .split_once('-')
                    .unwrap();
                let (start, end) = (
                    usize::from_str_radix(start, 16).unwrap(),
                    usize::from_str_radix(end, 16).unwrap(),
                );
                (start..end).contains(&address)
            })
            .map(str::to_owned)
    };
    let mapped = marker_line(&std::fs::read_to_string(&maps).unwrap());
    assert!(
        mapped.is_some(),
        "the marker is mapped before the hook runs"
    );
    let mem = format!("/proc/{pid}/mem");
    assert_eq!(
        read_at(&mem, address),
        Some([0x5a; 64]),
        "the marker's bytes are readable from outside before the hook runs"
    );
    before_signal(pid);
    let started = Instant::now();
    let vanished_while_alive = loop {
        assert!(started.elapsed() < Duration::from_secs(20), "no purge seen");
        // The process is alive while its maps can be read and it is not a zombie.
        let (Ok(now), Ok(status)) = (
            std::fs::read_to_string(&maps),
            std::fs::read_to_string(format!("/proc/{pid}/stat")),
        ) else {
            break false;
        };
        let zombie = status
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
        if zombie || now.is_empty() {
            break false;
        }
        let now = marker_line(&now);
        if now.is_none() || now != mapped {
            assert_ne!(
                read_at(&mem, address),
                Some([0x5a; 64]),
                "marker bytes left"
            );
            break true;
        }
        thread::sleep(Duration::from_millis(2));
    };
    let status = child.wait().unwrap();
    assert!(
        vanished_while_alive,
        "the marker's pages were not unmapped while the process lived ({status})"
    );
    status
}

#[test]
fn a_panic_with_the_hook_purges_before_the_process_dies() {
    let test = common::this_test!();
    if common::is_child(test) {
        securememory::purge_on_panic();
        let (_marker, address) = marker_and_a_held_secret();
        println!("MARKER {address:x}");
        thread::sleep(Duration::from_millis(200));
        panic!("the child panics with a secret live");
    }
    let status = watch_marker_vanish(test, |_| {});
    assert_eq!(
        status.code(),
        Some(101),
        "died as a failed test does: {status}"
    );
}

#[test]
fn sigterm_with_the_hook_purges_then_kills_the_process() {
    let test = common::this_test!();
    if common::is_child(test) {
        securememory::purge_on_termination().unwrap();
        securememory::purge_on_termination().unwrap();
        let (_marker, address) = marker_and_a_held_secret();
        println!("MARKER {address:x}");
        thread::sleep(Duration::from_secs(30));
        unreachable!("SIGTERM ends the process first");
    }
    let status = watch_marker_vanish(test, |pid| {
        // SAFETY: signalling our own child.
        assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) }, 0);
    });
    assert_eq!(
        status.signal(),
        Some(libc::SIGTERM),
        "died of the signal, as without the hook: {status}"
    );
}

/// The hook's thread waits on its pipe through other signals: one the program handles without
/// `SA_RESTART`, which interrupts the wait, does not end it, and SIGTERM still purges and kills.
#[test]
fn an_interrupted_wait_of_the_hook_goes_on() {
    static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    extern "C" fn on_usr1(_: libc::c_int) {
        INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
    }
    let test = common::this_test!();
    if common::is_child(test) {
        // SAFETY: a handler that only stores to an atomic, installed without SA_RESTART so that
        // it interrupts the system call it lands in.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_usr1 as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut action.sa_mask);
            assert_eq!(
                libc::sigaction(libc::SIGUSR1, &action, std::ptr::null_mut()),
                0
            );
        }
        securememory::purge_on_termination().unwrap();
        let secret = common::default_factory().create_random(16).unwrap();
        // The thread names itself once it runs.
        let started = Instant::now();
        let hook_thread = loop {
            let named = std::fs::read_dir("/proc/self/task")
                .unwrap()
                .map(|task| task.unwrap().path())
                .find(|task| {
                    std::fs::read_to_string(task.join("comm"))
                        .is_ok_and(|comm| comm.starts_with("securememory-pu"))
                });
            if let Some(task) = named {
                break task;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "no hook thread"
            );
            thread::sleep(Duration::from_millis(1));
        };
        let tid: libc::pid_t = hook_thread
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        // SAFETY: signalling a thread of this process with a signal it handles.
        assert_eq!(
            unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, libc::SIGUSR1) },
            0
        );
        let started = Instant::now();
        while !INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst) {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "SIGUSR1 not handled"
            );
            thread::sleep(Duration::from_millis(1));
        }
        // SAFETY: signalling this process.
        assert_eq!(unsafe { libc::kill(libc::getpid(), libc::SIGTERM) }, 0);
        thread::sleep(Duration::from_secs(5));
        drop(secret);
        panic!("SIGTERM did not end the process: the hook's thread had stopped waiting");
    }
    let (status, _, stderr) = common::run_child(test);
    assert_eq!(
        status.signal(),
        Some(libc::SIGTERM),
        "died of the signal: {status}\n{stderr}"
    );
}

/// The hook's signal handler leaves `errno` as the interrupted code had it, even when its write
/// fails: the hook's thread takes the first signal's byte and then waits in the purge for the
/// access this thread holds, so the next signals fill the pipe (64 KiB) and the handler's
/// writes fail with `EAGAIN` (they must not block: that would hang the process in its handler).
#[test]
fn the_hooks_handler_keeps_errno_and_never_blocks_on_a_full_pipe() {
    const SIGNALS: u32 = 1 << 17;
    const SET: libc::c_int = 4242;
    let test = common::this_test!();
    if common::is_child(test) {
        securememory::purge_on_termination().unwrap();
        let held = common::default_factory().create_random(16).unwrap();
        held.with_bytes(|_| {
            for sent in 0..SIGNALS {
                // SAFETY: this thread's errno; a signal to this thread, handled by the hook.
                let errno = unsafe {
                    *libc::__errno_location() = SET;
                    let tid = libc::gettid();
                    let sent = libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, libc::SIGTERM);
                    assert_eq!(sent, 0, "tgkill");
                    *libc::__errno_location()
                };
                if errno != SET {
                    println!("ERRNO {errno} AFTER SIGNAL {sent}");
                    return;
                }
            }
            println!("ERRNO KEPT");
        })
        .unwrap();
        thread::sleep(Duration::from_secs(5));
        panic!("the purge did not end the process once the access ended");
    }
    let (status, stdout, stderr) = common::run_child(test);
    assert!(
        stdout.contains("ERRNO KEPT"),
        "the handler changed errno: {status}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert_eq!(
        status.signal(),
        Some(libc::SIGTERM),
        "died of the signal once the access ended: {status}\n{stderr}"
    );
}
