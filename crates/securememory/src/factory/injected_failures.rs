//! Every OS step of making a secret made to fail in turn: the error names the step, and nothing
//! stays mapped or locked. Each runs in a child process so the address-space checks see no other
//! test's mappings.

use super::common;
use super::*;
use crate::sys::fault;
use crate::sys::Op;

/// Waits for the forked child `pid` and returns its exit code; it must have exited.
fn exit_code_of(pid: libc::pid_t) -> i32 {
    let mut status = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status), "child status {status}");
    libc::WEXITSTATUS(status)
}

fn locked_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmLck:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A factory whose accesses change page protection: the calls most of these tests make fail.
fn factory(backing: Backing) -> ProtectedMemorySecretFactory {
    ProtectedMemorySecretFactory::builder()
        .backing(backing)
        .strategy(Strategy::PageProtection)
        .build()
}

/// Fails `op` once with `errno` while making a secret both ways (`new` and
/// `create_random`; only the latter uses randomness); checks the error, that `new` left its
/// source alone, and that nothing is left mapped or locked.
fn fails_cleanly(backing: Backing, op: Op, errno: i32, operation: &str) {
    fails_cleanly_with(|| factory(backing), op, errno, operation);
}

fn fails_cleanly_with(
    factory: impl Fn() -> ProtectedMemorySecretFactory,
    op: Op,
    errno: i32,
    operation: &str,
) {
    let locked_before = locked_kib();
    fault::take_reservations();
    let mut expected_reservations = 1;
    if op != Op::Random {
        fault::fail_next(op, errno);
        let mut source = [0x5au8; 48];
        let error = factory().new(&mut source).unwrap_err();
        assert_eq!(source, [0x5a; 48], "{op:?}: source touched on failure");
        assert!(error.to_string().contains(operation), "{op:?}: {error}");
        expected_reservations += 1;
    }
    fault::fail_next(op, errno);
    let error = factory().create_random(48).unwrap_err();
    assert!(error.to_string().contains(operation), "{op:?}: {error}");
    let reservations = fault::take_reservations();
    if op != Op::Reserve {
        assert_eq!(reservations.len(), expected_reservations, "{op:?}");
    }
    for (addr, len) in reservations {
        for offset in (0..len).step_by(sys::page_size()) {
            assert!(
                !common::is_mapped(addr + offset),
                "{op:?}: {:#x} still mapped",
                addr + offset
            );
        }
    }
    assert_eq!(locked_kib(), locked_before, "{op:?}: memory left locked");
    // The failure was one-shot: the factory works again.
    let secret = factory().new(&mut [1; 8]).unwrap();
    assert!(secret.with_bytes(|b| b == [1; 8]).unwrap());
}

#[test]
fn failures_making_anonymous_secrets_leave_nothing_behind() {
    common::in_child_process!();
    let eio = libc::EIO;
    fails_cleanly(Backing::Anonymous, Op::Reserve, libc::ENOMEM, "mmap");
    fails_cleanly(Backing::Anonymous, Op::Commit, eio, "mprotect");
    fails_cleanly(Backing::Anonymous, Op::Lock, eio, "mlock");
    fails_cleanly(Backing::Anonymous, Op::Lock, libc::EPERM, "RLIMIT_MEMLOCK");
    fails_cleanly(
        Backing::Anonymous,
        Op::ExcludeFromDump,
        eio,
        "MADV_DONTDUMP",
    );
    fails_cleanly(Backing::Anonymous, Op::ExcludeFromFork, eio, "madvise");
    fails_cleanly(Backing::Anonymous, Op::Protect, eio, "mprotect");
    fails_cleanly(Backing::Anonymous, Op::Random, eio, "random");
}

#[test]
fn failures_making_secretmem_secrets_leave_nothing_behind() {
    common::in_child_process!();
    if !matches!(sys::secretmem_support(), SecretMemSupport::Available) {
        assert!(
            std::env::var_os("CI").is_none(),
            "memfd_secret missing in CI"
        );
        eprintln!("skipped: memfd_secret unavailable");
        return;
    }
    let eio = libc::EIO;
    fails_cleanly(Backing::SecretMem, Op::Reserve, libc::ENOMEM, "mmap");
    fails_cleanly(Backing::SecretMem, Op::MapSecretMem, eio, "memfd_secret");
    fails_cleanly(
        Backing::SecretMem,
        Op::MapSecretMem,
        libc::EAGAIN,
        "RLIMIT_MEMLOCK",
    );
    fails_cleanly(Backing::SecretMem, Op::ExcludeFromFork, eio, "madvise");
    fails_cleanly(Backing::SecretMem, Op::Protect, eio, "mprotect");
    fails_cleanly(Backing::SecretMem, Op::Random, eio, "random");
}

#[test]
fn failures_making_protection_key_secrets_leave_nothing_behind() {
    common::in_child_process!();
    if let Err(missing) = sys::protection_key() {
        eprintln!("skipped: no protection keys ({missing})");
        return;
    }
    let eio = libc::EIO;
    for backing in [Backing::Anonymous, Backing::Auto] {
        let factory = || {
            ProtectedMemorySecretFactory::builder()
                .backing(backing)
                .strategy(Strategy::ProtectionKey)
                .build()
        };
        fails_cleanly_with(factory, Op::Reserve, libc::ENOMEM, "mmap");
        fails_cleanly_with(factory, Op::Tag, eio, "pkey_mprotect");
        fails_cleanly_with(factory, Op::ExcludeFromFork, eio, "madvise");
        fails_cleanly_with(factory, Op::Random, eio, "random");
    }
}

/// A region whose pages could not be committed is unmapped as it is. Making its pages writable
/// to wipe them, as the teardown of a filled region does, would be refused by the same shortage
/// that failed the commit, and leave the reservation mapped.
#[test]
fn a_region_whose_commit_failed_is_unmapped_without_touching_its_pages() {
    common::in_child_process!();
    fault::take_reservations();
    fault::fail_next(Op::Commit, libc::ENOMEM);
    fault::fail_next(Op::Protect, libc::ENOMEM);
    factory(Backing::Anonymous).create_random(48).unwrap_err();
    assert_eq!(
        fault::take_planned(),
        [Op::Protect],
        "the protection of the unfilled region was changed"
    );
    let reservations = fault::take_reservations();
    assert_eq!(reservations.len(), 1);
    for (addr, len) in reservations {
        for offset in (0..len).step_by(sys::page_size()) {
            assert!(
                !common::is_mapped(addr + offset),
                "{:#x} still mapped",
                addr + offset
            );
        }
    }
}

#[test]
fn a_failed_unlock_on_close_does_not_hide_a_corrupted_canary() {
    let secret = factory(Backing::Anonymous).create_random(32).unwrap();
    let corrupted = secret.with_bytes_mut(|b| {
        // SAFETY: the byte right before the secret is in its (writable) data page: the
        // canary, overwritten on purpose.
        unsafe { *b.as_mut_ptr().sub(1) ^= 0xff };
    });
    assert!(matches!(corrupted, Err(Error::Corrupted)), "{corrupted:?}");
    fault::fail_next(Op::Unlock, libc::EIO);
    let closed = secret.close();
    assert!(matches!(closed, Err(Error::Corrupted)), "{closed:?}");
}

/// Close unlocks exactly the pages the secret locked itself: anonymous pages it locked (a
/// failure is reported), not pages it never locked, nor secret memory, which the kernel locks
/// and unlocks on its own.
#[test]
fn close_unlocks_only_anonymous_pages_it_locked() {
    let unlocked = |factory: ProtectedMemorySecretFactory| {
        let secret = factory.create_random(32).unwrap();
        fault::fail_next(Op::Unlock, libc::EIO);
        let closed = secret.close();
        let unlock_made = fault::take_planned().is_empty();
        (closed, unlock_made)
    };
    let (closed, unlock_made) = unlocked(factory(Backing::Anonymous));
    assert!(unlock_made, "locked anonymous pages were not unlocked");
    let error = closed.unwrap_err();
    assert!(error.to_string().contains("munlock"), "{error}");

    let never_locked = ProtectedMemorySecretFactory::builder()
        .backing(Backing::Anonymous)
        .mlock(MlockPolicy::Disabled)
        .build();
    let (closed, unlock_made) = unlocked(never_locked);
    assert!(!unlock_made, "pages never locked were unlocked");
    closed.unwrap();

    if matches!(sys::secretmem_support(), SecretMemSupport::Available) {
        let (closed, unlock_made) = unlocked(factory(Backing::SecretMem));
        assert!(!unlock_made, "secret memory was unlocked");
        closed.unwrap();
    } else {
        assert!(
            std::env::var_os("CI").is_none(),
            "memfd_secret missing in CI"
        );
        eprintln!("secret memory part skipped: memfd_secret unavailable");
    }
}

/// A fork between committing anonymous pages and `MADV_WIPEONFORK` gives the child a private
/// copy of zeroed pages: nothing the parent writes afterwards reaches it.
#[test]
fn a_child_forked_before_anonymous_pages_are_protected_sees_none_of_the_later_writes() {
    common::in_child_process!();
    let mut pipe = [0; 2];
    // SAFETY: a valid out-array of two descriptors.
    assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
    let child = std::rc::Rc::new(std::cell::Cell::new(0));
    let in_hook = child.clone();
    fault::on_next_commit(move |addr, len| {
        // SAFETY: this child test process has one thread that matters; the forked process
        // only reads its copy of the pages and leaves with _exit.
        let pid = unsafe { libc::fork() };
        if pid != 0 {
            in_hook.set(pid);
            return;
        }
        let mut byte = 0u8;
        // SAFETY: reading one byte into a local from our end of the pipe.
        let got = unsafe { libc::read(pipe[0], (&mut byte as *mut u8).cast(), 1) };
        // SAFETY: the committed pages are readable and writable, here as in the parent.
        let pages = unsafe { std::slice::from_raw_parts(addr.as_ptr(), len) };
        let code = if got != 1 {
            2
        } else if pages.iter().all(|&b| b == 0) {
            0
        } else {
            1
        };
        // SAFETY: leave the forked child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    });
    let secret = factory(Backing::Anonymous).new(&mut [0xab; 64]).unwrap();
    assert!(secret.with_bytes(|b| b == [0xab; 64]).unwrap());
    let pid = child.get();
    assert!(pid > 0, "the hook did not run");
    // SAFETY: one byte from a local to our end of the pipe.
    assert_eq!(unsafe { libc::write(pipe[1], [1u8].as_ptr().cast(), 1) }, 1);
    assert_eq!(
        exit_code_of(pid),
        0,
        "the child saw the parent's later writes (1) or got no go-ahead (2)"
    );
}

#[test]
fn failed_reprotect_after_an_access_is_returned_and_retried() {
    let secret = factory(Backing::Auto).new(&mut [9; 8]).unwrap();
    let mut ran = false;
    fault::fail_next(Op::Protect, libc::EIO);
    // The failure is in opening: the callback never runs.
    assert!(secret.with_bytes(|_| ran = true).is_err());
    assert!(!ran);
    // Let the open succeed and the close after the callback fail.
    let result = secret.with_bytes(|b| {
        fault::fail_next(Op::Protect, libc::EIO);
        b[0]
    });
    assert!(
        matches!(
            result,
            Err(Error::Os {
                operation: "mprotect",
                ..
            })
        ),
        "{result:?}"
    );
    // Remembered and retried: the next access works and leaves the memory closed.
    assert_eq!(secret.with_bytes(|b| b[0]).unwrap(), 9);
    secret.with_bytes_mut(|b| b[0] = 1).unwrap();
    secret.close().unwrap();
}

/// A secret belongs to the epoch of the process that made it: readers publish under it, and a
/// forked child's secrets are of the child's epoch, apart from its parent's (whose reader lines
/// the child hands to its own threads).
#[cfg(not(loom))]
#[test]
fn a_secret_is_of_the_epoch_of_the_process_that_made_it() {
    use crate::access::Gate;
    common::in_child_process!();
    let factories = [
        factory(Backing::Anonymous),
        ProtectedMemorySecretFactory::builder()
            .strategy(Strategy::Sealed)
            .build(),
    ];
    let parent_epoch = sys::process_epoch();
    for factory in &factories {
        let secret = factory.new(&mut [1; 8]).unwrap();
        assert_eq!(secret.store().epoch(), parent_epoch);
    }
    // SAFETY: this child test process runs this test alone; the forked process makes secrets
    // and leaves with _exit.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let child_epoch = sys::process_epoch();
        let own_epoch = factories.iter().all(|factory| {
            factory
                .new(&mut [2; 8])
                .is_ok_and(|secret| secret.store().epoch() == child_epoch)
        });
        let code = if child_epoch == parent_epoch {
            1
        } else if !own_epoch {
            2
        } else {
            0
        };
        // SAFETY: leave the forked child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    assert_eq!(
        exit_code_of(pid),
        0,
        "1: the child's epoch is its parent's; 2: a secret made in the child is not of its epoch"
    );
}

/// Secret memory found available is not probed for again.
#[test]
fn available_secret_memory_is_remembered() {
    common::in_child_process!();
    if !matches!(sys::secretmem_support(), sys::SecretMemSupport::Available) {
        println!("note: no secret memory here");
        return;
    }
    fault::fail_next(Op::ProbeSecretMem, libc::ENOSYS);
    let answer = crate::system::check_secret_memory();
    assert!(answer.is_ok(), "{answer:?}");
    assert_eq!(fault::take_planned().len(), 1, "probed again");
}

/// A passing refusal of secret memory (descriptors or memory exhausted) is an OS error, and the
/// next call asks again.
#[test]
fn a_passing_refusal_of_secret_memory_is_asked_again() {
    common::in_child_process!();
    for (errno, also) in [(libc::EMFILE, "EMFILE"), (libc::ENOMEM, "ENOMEM")] {
        fault::fail_next(Op::ProbeSecretMem, errno);
        let answer = crate::system::check_secret_memory();
        assert!(
            matches!(&answer, Err(Error::Os { operation, source })
                if operation.starts_with("memfd_secret") && source.raw_os_error() == Some(errno)),
            "{also}: {answer:?}"
        );
        assert!(fault::take_planned().is_empty());
    }
    if !matches!(sys::secretmem_support(), sys::SecretMemSupport::Available) {
        println!("note: no secret memory here");
    }
}

/// Secret memory refused for good (no such call, or forbidden) is unavailable, says why, and is
/// not asked for again.
#[test]
fn secret_memory_refused_for_good_is_unavailable_and_remembered() {
    common::in_child_process!();
    for (errno, says) in [
        (libc::ENOSYS, "not offered by this kernel"),
        (libc::EPERM, "forbidden to this process"),
        (libc::EACCES, "forbidden to this process"),
        (libc::EINVAL, "not available here"),
        (libc::EOPNOTSUPP, "not available here"),
    ] {
        refused_for_good(errno, says);
    }
}

/// In a forked child (the answer is remembered for the process): the probe refused with
/// `errno`.
fn refused_for_good(errno: i32, says: &str) {
    // SAFETY: a child that only probes, checks and leaves with _exit.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let code = std::panic::catch_unwind(|| {
            fault::fail_next(Op::ProbeSecretMem, errno);
            let unavailable = |answer: Result<(), Error>| match answer {
                Err(Error::BackingUnavailable {
                    backing: Backing::SecretMem,
                    reason,
                }) => reason.contains(says),
                _ => false,
            };
            let first = unavailable(crate::system::check_secret_memory());
            // Remembered: a second call does not probe, whatever is planned.
            fault::fail_next(Op::ProbeSecretMem, libc::EMFILE);
            let second = unavailable(crate::system::check_secret_memory());
            let probed_again = fault::take_planned().is_empty();
            match (first, second, probed_again) {
                (true, true, false) => 0,
                (false, _, _) => 1,
                (true, false, _) => 2,
                (true, true, true) => 3,
            }
        })
        .unwrap_or(4);
        // SAFETY: leave the forked child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    assert_eq!(
        exit_code_of(pid),
        0,
        "errno {errno}: not unavailable saying {says:?} (1), not remembered (2), probed again \
         (3), panicked (4)"
    );
}
