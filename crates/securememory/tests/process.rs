//! Rules that involve the whole process (its address space, resource limits, capabilities,
//! fork), each checked in a child process of its own so other tests cannot interfere.
#![cfg(target_os = "linux")]

mod common;

use securememory::{Backing, Error, MlockPolicy, ProtectedMemorySecretFactory, SecretFactory};

const PAGE: usize = 4096;

#[test]
fn closed_secret_pages_are_unmapped() {
    const NAME: &str = "closed_secret_pages_are_unmapped";
    if !common::is_child(NAME) {
        common::in_child(NAME);
        return;
    }
    for backing in [Backing::Auto, Backing::Anonymous] {
        let factory = ProtectedMemorySecretFactory::builder()
            .backing(backing)
            .build();
        let secret = factory.create_random(100).unwrap();
        let address = secret.with_bytes(|b| b.as_ptr() as usize).unwrap();
        let last = address + 99;
        let guard_before = (address & !(PAGE - 1)) - PAGE;
        assert!(common::is_mapped(address) && common::is_mapped(last));
        assert!(
            common::is_mapped(guard_before),
            "leading guard page reserved"
        );
        assert!(common::is_mapped(last + 1), "trailing guard page reserved");
        secret.close().unwrap();
        for a in [address, last, guard_before, last + 1] {
            assert!(
                !common::is_mapped(a),
                "{backing:?}: {a:#x} still mapped after close"
            );
        }
    }
}

#[test]
fn dropped_secret_pages_are_unmapped() {
    const NAME: &str = "dropped_secret_pages_are_unmapped";
    if !common::is_child(NAME) {
        common::in_child(NAME);
        return;
    }
    let secret = ProtectedMemorySecretFactory::default()
        .create_random(32)
        .unwrap();
    let address = secret.with_bytes(|b| b.as_ptr() as usize).unwrap();
    drop(secret);
    assert!(!common::is_mapped(address));
}

/// Run as root without `CAP_IPC_LOCK` and with a 64 KiB locked-memory limit: 16 pages.
fn limit_memory_locking() -> u64 {
    const LIMIT: u64 = 64 * 1024;
    common::drop_ipc_lock_capability();
    common::set_memlock_limit(LIMIT);
    LIMIT
}

#[test]
fn mlock_required_fails_with_a_clear_error_once_the_limit_is_used() {
    const NAME: &str = "mlock_required_fails_with_a_clear_error_once_the_limit_is_used";
    if !common::is_child(NAME) {
        common::in_child(NAME);
        return;
    }
    let limit = limit_memory_locking();
    for backing in [Backing::Auto, Backing::Anonymous] {
        let factory = ProtectedMemorySecretFactory::builder()
            .backing(backing)
            .mlock(MlockPolicy::Required)
            .build();
        let mut held = Vec::new();
        let error = loop {
            let mut source = [0xabu8; 100];
            match factory.new(&mut source) {
                Ok(secret) => {
                    assert!(secret.protection().locked);
                    assert!(source.iter().all(|&b| b == 0));
                    held.push(secret);
                    assert!(
                        held.len() <= 16,
                        "{backing:?}: more pages locked than the limit"
                    );
                }
                Err(error) => {
                    assert!(
                        source.iter().all(|&b| b == 0xab),
                        "{backing:?}: the source was touched although new failed"
                    );
                    break error;
                }
            }
        };
        assert!(
            held.len() >= 8,
            "{backing:?}: only {} secrets fit",
            held.len()
        );
        let message = error.to_string();
        match &error {
            Error::MemoryLockLimit {
                requested,
                limit: Some(reported),
                ..
            } => {
                assert_eq!(*requested, PAGE, "page-rounded request");
                assert_eq!(*reported, limit);
            }
            other => panic!("{backing:?}: expected MemoryLockLimit, got {other:?}"),
        }
        for needle in [
            "RLIMIT_MEMLOCK",
            &limit.to_string(),
            "4096",
            "ulimit -l",
            "LimitMEMLOCK=",
            "--ulimit memlock=",
        ] {
            assert!(
                message.contains(needle),
                "{needle:?} missing from: {message}"
            );
        }
        // Closing secrets gives the budget back.
        held.pop().unwrap().close().unwrap();
        factory.create_random(32).unwrap();
    }
}

#[test]
fn mlock_best_effort_continues_unlocked_and_reports_it() {
    const NAME: &str = "mlock_best_effort_continues_unlocked_and_reports_it";
    if !common::is_child(NAME) {
        common::in_child(NAME);
        return;
    }
    limit_memory_locking();
    for backing in [Backing::Auto, Backing::Anonymous] {
        let factory = ProtectedMemorySecretFactory::builder()
            .backing(backing)
            .mlock(MlockPolicy::BestEffort)
            .build();
        let secrets: Vec<_> = (0..40)
            .map(|i| factory.new(&mut [i as u8; 32]).unwrap())
            .collect();
        let locked = secrets.iter().filter(|s| s.protection().locked).count();
        assert!((8..=16).contains(&locked), "{backing:?}: {locked} locked");
        let unlocked = &secrets[secrets.len() - 1];
        assert!(!unlocked.protection().locked);
        assert_eq!(unlocked.protection().backing, Backing::Anonymous);
        for (i, s) in secrets.iter().enumerate() {
            assert!(s.with_bytes(|b| b == [i as u8; 32]).unwrap());
        }
        drop(secrets);
    }
}

#[test]
fn access_in_a_forked_child_fails_closed() {
    const NAME: &str = "access_in_a_forked_child_fails_closed";
    if !common::is_child(NAME) {
        common::in_child(NAME);
        return;
    }
    for backing in [Backing::Auto, Backing::Anonymous] {
        let secret = ProtectedMemorySecretFactory::builder()
            .backing(backing)
            .build()
            .new(&mut [7; 32])
            .unwrap();
        // SAFETY: this child test process runs one test on one thread; the forked process only
        // makes the accesses below and leaves with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let mut ran = false;
            let read = secret.with_bytes(|_| ran = true);
            let write = secret.with_bytes_mut(|_| ran = true);
            let code = if matches!(read, Err(Error::Forked))
                && matches!(write, Err(Error::Forked))
                && !ran
            {
                0
            } else {
                1
            };
            // SAFETY: leave the forked child without running the parent's destructors.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "{backing:?}: the forked child could access the secret (status {status})"
        );
        assert!(
            secret.with_bytes(|b| b == [7; 32]).unwrap(),
            "parent unaffected"
        );
    }
}

#[test]
fn dropping_in_a_forked_child_spares_what_the_child_mapped_in_the_hole() {
    const NAME: &str = "dropping_in_a_forked_child_spares_what_the_child_mapped_in_the_hole";
    if !common::is_child(NAME) {
        common::in_child(NAME);
        return;
    }
    let secret = match ProtectedMemorySecretFactory::builder()
        .backing(Backing::SecretMem)
        .build()
        .new(&mut [7; 32])
    {
        Err(Error::BackingUnavailable { .. }) if std::env::var_os("CI").is_none() => {
            println!("skipped: memfd_secret unavailable");
            return;
        }
        other => other.unwrap(),
    };
    let data_page = secret.with_bytes(|b| b.as_ptr() as usize).unwrap() & !(PAGE - 1);
    // SAFETY: see access_in_a_forked_child_fails_closed.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // Secret memory is not mapped in the child (MADV_DONTFORK): the child may use the hole.
        // SAFETY: MAP_FIXED_NOREPLACE maps only if the page is free in this process.
        let own = unsafe {
            libc::mmap(
                data_page as *mut libc::c_void,
                PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            )
        };
        let mapped_in_hole = own as usize == data_page;
        drop(secret);
        let code = if !mapped_in_hole {
            2
        } else if !common::is_mapped(data_page) {
            3
        } else if common::is_mapped(data_page - PAGE) || common::is_mapped(data_page + PAGE) {
            4
        } else {
            0
        };
        // SAFETY: leave the forked child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status), "child crashed: status {status}");
    let code = libc::WEXITSTATUS(status);
    assert_ne!(code, 2, "the data page was still mapped in the child");
    assert_ne!(
        code, 3,
        "closing in the child unmapped the child's own mapping"
    );
    assert_ne!(code, 4, "closing in the child left its guard pages mapped");
    assert_eq!(code, 0);
    assert!(
        secret.with_bytes(|b| b == [7; 32]).unwrap(),
        "parent unaffected"
    );
}
