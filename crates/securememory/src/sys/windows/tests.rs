//! The Windows backend as its calls show it: the order of the calls (pages locked before they
//! become `PAGE_NOACCESS`), the page states `VirtualQuery` reports, the working-set growth when
//! `VirtualLock` runs out of quota, and what the errors say.
//!
//! The quota failures are injected (`Op::VirtualLock`, `Op::SetWorkingSetSize`): an emulation
//! such as Wine enforces no working-set quota, and a real Windows reaches one only after locking
//! far more than a test should.

use super::super::fault::{self, Call};
use super::super::{Op, PageProtection};
use super::{call, page_size, WORKING_SET_SLACK_PAGES};
use crate::{Backing, Error, MlockPolicy, ProtectedMemorySecretFactory, Secret};
use windows_sys::Win32::Foundation::{
    ERROR_ACCESS_DENIED, ERROR_COMMITMENT_LIMIT, ERROR_INVALID_PARAMETER, ERROR_NOT_ENOUGH_MEMORY,
    ERROR_WORKING_SET_QUOTA,
};
use windows_sys::Win32::System::Memory::{
    VirtualQuery, MEMORY_BASIC_INFORMATION, MEM_COMMIT, MEM_FREE, MEM_RESERVE, PAGE_NOACCESS,
    PAGE_PROTECTION_FLAGS, PAGE_READONLY, PAGE_READWRITE, VIRTUAL_ALLOCATION_TYPE,
};

#[path = "../../../tests/common/process.rs"]
mod common;

const NO_ACCESS: &str = "VirtualProtect(PAGE_NOACCESS)";
const READ_WRITE: &str = "VirtualProtect(PAGE_READWRITE)";
const GET_WORKING_SET: &str = "GetProcessWorkingSetSize";
const SET_WORKING_SET: &str = "SetProcessWorkingSetSize";
const QUOTA: i32 = ERROR_WORKING_SET_QUOTA as i32;

/// Words of Unix calls and remedies that no Windows error message may contain.
const UNIX_WORDS: [&str; 7] = [
    "mmap",
    "mprotect",
    "mlock",
    "madvise",
    "RLIMIT",
    "ulimit",
    "LimitMEMLOCK",
];

fn factory(policy: MlockPolicy) -> ProtectedMemorySecretFactory {
    ProtectedMemorySecretFactory::builder()
        .backing(Backing::Anonymous)
        .mlock(policy)
        .build()
}

/// The address of the (first) data page of `secret`.
fn data_page(secret: &Secret) -> usize {
    let first = secret.with_bytes(|bytes| bytes.as_ptr() as usize).unwrap();
    first & !(page_size() - 1)
}

/// What `VirtualQuery` says about the page at `addr`: its state and its protection.
fn query(addr: usize) -> (VIRTUAL_ALLOCATION_TYPE, PAGE_PROTECTION_FLAGS) {
    let mut info = MEMORY_BASIC_INFORMATION::default();
    let size = std::mem::size_of::<MEMORY_BASIC_INFORMATION>();
    // SAFETY: `info` is a valid out-buffer of `size` bytes; any address may be queried.
    let written = unsafe { VirtualQuery(addr as *const _, &mut info, size) };
    assert_eq!(
        written,
        size,
        "VirtualQuery({addr:#x}): {}",
        std::io::Error::last_os_error()
    );
    (info.State, info.Protect)
}

fn names(calls: &[Call]) -> Vec<&'static str> {
    calls.iter().map(|c| c.name).collect()
}

fn assert_all_succeeded(calls: &[Call]) {
    for c in calls {
        assert_eq!(c.error, None, "{c:?} failed in {calls:#?}");
    }
}

/// Windows refuses to lock `PAGE_NOACCESS` pages, which is why a secret's pages are locked while
/// still readable and writable, and only then made inaccessible.
#[test]
fn locking_no_access_pages_is_refused() {
    let page = page_size();
    let base = super::reserve(page).unwrap();
    // SAFETY: the range is the whole fresh reservation, used by nothing else.
    unsafe {
        super::commit_anonymous(base, page).unwrap();
        super::protect(base, page, PageProtection::NoAccess).unwrap();
        let refused = super::lock(base, page);
        assert!(refused.is_err(), "VirtualLock locked a PAGE_NOACCESS page");
        super::protect(base, page, PageProtection::ReadWrite).unwrap();
        super::lock(base, page).unwrap();
        super::unlock(base, page).unwrap();
        super::release(base, page).unwrap();
    }
}

#[test]
fn a_secrets_pages_are_locked_before_they_become_no_access() {
    let page = page_size();
    fault::start_trace();
    let secret = factory(MlockPolicy::Required)
        .new(&mut [0x5a; 100])
        .unwrap();
    let calls = fault::take_trace();
    assert!(secret.protection().locked);
    assert_all_succeeded(&calls);
    assert_eq!(
        names(&calls),
        [call::RESERVE, call::COMMIT, call::LOCK, NO_ACCESS],
        "{calls:#?}"
    );
    let data = data_page(&secret);
    assert_eq!(calls[0].args, (data - page, 3 * page), "reservation");
    for c in &calls[1..] {
        assert_eq!(c.args, (data, page), "{c:?}: not on the data page");
    }
    assert_eq!(query(data), (MEM_COMMIT, PAGE_NOACCESS), "idle data page");
}

#[test]
fn accesses_open_the_pages_read_only_or_read_write_and_close_them_again() {
    let page = page_size();
    let secret = factory(MlockPolicy::Required).new(&mut [1; 32]).unwrap();
    let data = data_page(&secret);
    assert_eq!(query(data - page).0, MEM_RESERVE, "leading guard page");
    assert_eq!(query(data + page).0, MEM_RESERVE, "trailing guard page");
    assert_eq!(query(data), (MEM_COMMIT, PAGE_NOACCESS));
    let reading = secret.with_bytes(|_| query(data)).unwrap();
    assert_eq!(reading, (MEM_COMMIT, PAGE_READONLY));
    assert_eq!(query(data), (MEM_COMMIT, PAGE_NOACCESS), "after a read");
    let writing = secret.with_bytes_mut(|_| query(data)).unwrap();
    assert_eq!(writing, (MEM_COMMIT, PAGE_READWRITE));
    assert_eq!(query(data), (MEM_COMMIT, PAGE_NOACCESS), "after a write");
}

/// The pages are made writable for the wipe, unlocked, and the reservation released.
#[test]
fn closing_wipes_unlocks_and_releases_in_that_order() {
    let page = page_size();
    let secret = factory(MlockPolicy::Required).new(&mut [1; 32]).unwrap();
    let data = data_page(&secret);
    fault::start_trace();
    secret.close().unwrap();
    let calls = fault::take_trace();
    assert_all_succeeded(&calls);
    assert_eq!(
        names(&calls),
        [READ_WRITE, call::UNLOCK, call::RELEASE],
        "{calls:#?}"
    );
    assert_eq!(calls[0].args, (data, page));
    assert_eq!(calls[1].args, (data, page));
    assert_eq!(calls[2].args, (data - page, 3 * page));
}

/// The calls of locking, in order: `VirtualLock` and the working-set calls.
fn lock_calls(calls: &[Call]) -> Vec<Call> {
    calls
        .iter()
        .filter(|c| matches!(c.name, call::LOCK | GET_WORKING_SET | SET_WORKING_SET))
        .copied()
        .collect()
}

#[test]
fn a_working_set_quota_failure_raises_the_working_set_and_locks_again() {
    let page = page_size();
    fault::start_trace();
    fault::fail_next(Op::VirtualLock, QUOTA);
    let secret = factory(MlockPolicy::Required).new(&mut [2; 32]).unwrap();
    let calls = fault::take_trace();
    assert!(secret.protection().locked);
    let data = data_page(&secret);
    let locking = lock_calls(&calls);
    assert_eq!(
        names(&locking),
        [call::LOCK, GET_WORKING_SET, SET_WORKING_SET, call::LOCK],
        "{calls:#?}"
    );
    assert_eq!(locking[0].args, (data, page));
    assert_eq!(locking[0].error, Some(QUOTA));
    assert_all_succeeded(&locking[1..]);
    // The working set grows by the pages that failed to lock plus the slack.
    let (min, max) = locking[1].args;
    let extra = page + WORKING_SET_SLACK_PAGES * page;
    let raised = (min + extra, (max + extra).max(min + extra));
    assert_eq!(locking[2].args, raised);
    assert_eq!(locking[3].args, (data, page));
    // Locked, then made inaccessible, as without the detour.
    assert_eq!(names(&calls).last(), Some(&NO_ACCESS), "{calls:#?}");
    assert!(secret.with_bytes(|b| b == [2; 32]).unwrap());
}

#[test]
fn a_quota_failure_that_outlasts_the_raise_is_the_lock_limit_with_windows_remedies() {
    let page = page_size();
    fault::fail_next(Op::VirtualLock, QUOTA);
    fault::fail_next(Op::VirtualLock, QUOTA);
    let mut source = [0x5a; 32];
    let error = factory(MlockPolicy::Required).new(&mut source).unwrap_err();
    assert_eq!(source, [0x5a; 32], "source touched on failure");
    let Error::MemoryLockLimit {
        requested,
        limit,
        source,
        ..
    } = &error
    else {
        panic!("not the lock limit: {error:?}");
    };
    assert_eq!((*requested, *limit), (page, None));
    assert_eq!(source.raw_os_error(), Some(QUOTA));
    let message = error.to_string();
    for expected in [
        "VirtualLock",
        "working set",
        "SetProcessWorkingSetSize",
        "job object",
        "MlockPolicy::BestEffort",
    ] {
        assert!(
            message.contains(expected),
            "{expected:?} missing: {message}"
        );
    }
    for unix in UNIX_WORDS {
        assert!(!message.contains(unix), "{unix:?} in: {message}");
    }

    // `BestEffort` goes on unlocked, and then has nothing to unlock.
    fault::fail_next(Op::VirtualLock, QUOTA);
    fault::fail_next(Op::VirtualLock, QUOTA);
    let secret = factory(MlockPolicy::BestEffort).new(&mut [3; 32]).unwrap();
    assert!(!secret.protection().locked);
    assert!(secret.with_bytes(|b| b == [3; 32]).unwrap());
    fault::start_trace();
    secret.close().unwrap();
    assert_eq!(names(&fault::take_trace()), [READ_WRITE, call::RELEASE]);
}

#[test]
fn a_refused_raise_reports_the_quota_failure_without_locking_again() {
    fault::start_trace();
    fault::fail_next(Op::VirtualLock, QUOTA);
    fault::fail_next(Op::SetWorkingSetSize, ERROR_ACCESS_DENIED as i32);
    let error = factory(MlockPolicy::Required)
        .create_random(32)
        .unwrap_err();
    let calls = fault::take_trace();
    match &error {
        Error::MemoryLockLimit { source, .. } => assert_eq!(source.raw_os_error(), Some(QUOTA)),
        other => panic!("not the lock limit: {other:?}"),
    }
    let locking = lock_calls(&calls);
    assert_eq!(
        names(&locking),
        [call::LOCK, GET_WORKING_SET, SET_WORKING_SET],
        "{calls:#?}"
    );
    assert_eq!(locking[2].error, Some(ERROR_ACCESS_DENIED as i32));
    assert_eq!(names(&calls).last(), Some(&call::RELEASE), "{calls:#?}");
}

/// Fails `op` once with `code` while making a secret both ways (`new` and `create_random`; only
/// the latter uses randomness): the error names the Windows call and says only Windows things,
/// `new` leaves its source alone, and every page of every reservation is free again.
/// An error as `anyhow` prints it with `{:#}`: its message, then each source's.
fn chain(error: &Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}

fn fails_cleanly(op: Op, code: u32, expected: &[&str]) {
    let code = code as i32;
    fault::take_reservations();
    let mut messages = Vec::new();
    if op != Op::Random {
        fault::fail_next(op, code);
        let mut source = [0x5a; 48];
        let error = factory(MlockPolicy::Required).new(&mut source).unwrap_err();
        assert_eq!(source, [0x5a; 48], "{op:?}: source touched on failure");
        messages.push(chain(&error));
    }
    fault::fail_next(op, code);
    let error = factory(MlockPolicy::Required)
        .create_random(48)
        .unwrap_err();
    messages.push(chain(&error));
    for message in &messages {
        for word in expected {
            assert!(
                message.contains(word),
                "{op:?}: {word:?} missing: {message}"
            );
        }
        for unix in UNIX_WORDS {
            assert!(!message.contains(unix), "{op:?}: {unix:?} in: {message}");
        }
    }
    let reservations = fault::take_reservations();
    if op != Op::Reserve {
        assert_eq!(reservations.len(), messages.len(), "{op:?}");
    }
    for (addr, len) in reservations {
        for offset in (0..len).step_by(page_size()) {
            let state = query(addr + offset).0;
            assert_eq!(
                state,
                MEM_FREE,
                "{op:?}: {:#x} still reserved",
                addr + offset
            );
        }
    }
    // The failure was one-shot: the factory works again.
    let secret = factory(MlockPolicy::Required).new(&mut [1; 8]).unwrap();
    assert!(secret.with_bytes(|b| b == [1; 8]).unwrap());
}

/// Runs in a child process of its own, so that no other test reserves memory where a failed
/// secret's reservation was before it is checked to be free.
#[test]
fn failures_making_secrets_name_the_windows_call_and_leave_nothing_behind() {
    common::in_child_process!();
    let commit_remedy = "page file";
    fails_cleanly(
        Op::Reserve,
        ERROR_NOT_ENOUGH_MEMORY,
        &["VirtualAlloc(MEM_RESERVE)", commit_remedy],
    );
    fails_cleanly(
        Op::Commit,
        ERROR_COMMITMENT_LIMIT,
        &["VirtualAlloc(MEM_COMMIT)", commit_remedy],
    );
    fails_cleanly(Op::Lock, ERROR_INVALID_PARAMETER, &["VirtualLock failed"]);
    fails_cleanly(
        Op::VirtualLock,
        ERROR_INVALID_PARAMETER,
        &["VirtualLock failed"],
    );
    fails_cleanly(
        Op::Lock,
        ERROR_WORKING_SET_QUOTA,
        &["VirtualLock", "SetProcessWorkingSetSize"],
    );
    fails_cleanly(Op::Protect, ERROR_INVALID_PARAMETER, &["VirtualProtect"]);
    fails_cleanly(Op::Random, ERROR_INVALID_PARAMETER, &["random"]);
}

#[test]
fn protection_reports_what_windows_gives() {
    let secret = ProtectedMemorySecretFactory::default()
        .create_random(32)
        .unwrap();
    let p = secret.protection();
    assert_eq!(p.backing, Backing::Anonymous, "Auto without secret memory");
    assert!(p.locked && p.guard_pages && p.canary);
    // No fork to keep the bytes from; no per-range exclusion from crash dumps.
    assert!(p.fork_protected);
    assert!(!p.dump_excluded && !p.kernel_invisible);
    let refused = ProtectedMemorySecretFactory::builder()
        .backing(Backing::SecretMem)
        .build()
        .create_random(32);
    assert!(
        matches!(refused, Err(Error::BackingUnavailable { .. })),
        "{refused:?}"
    );
}

#[test]
fn disable_core_dumps_is_unsupported_and_points_to_error_reporting() {
    let error = crate::disable_core_dumps().unwrap_err();
    assert!(
        matches!(&error, Error::Os { source, .. } if source.kind() == std::io::ErrorKind::Unsupported),
        "{error:?}"
    );
    let message = chain(&error);
    assert!(message.contains("WerAddExcludedApplication"), "{message}");
    assert!(!message.contains("RLIMIT"), "{message}");
}
