//! Rules that involve the whole process (its address space, resource limits, capabilities,
//! fork), each checked in a child process of its own so other tests cannot interfere.
#![cfg(target_os = "linux")]

mod common;

use securememory::{
    Backing, Degradation, Error, Lost, MlockPolicy, OnCorruption, Report, Strategy,
};
use std::os::unix::process::ExitStatusExt;
use std::sync::{Arc, Mutex};

const PAGE: usize = 4096;

#[test]
fn closed_secret_pages_are_unmapped() {
    common::in_child_process!();
    for backing in common::mapping_setups() {
        let factory = common::factory(backing);
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
        let addresses = [address, last, guard_before, last + 1];
        let before = addresses.map(common::mapping_at);
        secret.close().unwrap();
        for (a, was) in addresses.into_iter().zip(before) {
            let now = common::mapping_at(a);
            assert!(
                now.is_none() || now != was,
                "{backing:?}: {a:#x} still mapped after close: {now:?}"
            );
        }
    }
}

#[test]
fn dropped_secret_pages_are_unmapped() {
    common::in_child_process!();
    let secret = common::default_factory().create_random(32).unwrap();
    let address = secret.with_bytes(|b| b.as_ptr() as usize).unwrap();
    let before = common::mapping_at(address);
    drop(secret);
    let now = common::mapping_at(address);
    assert!(
        now.is_none() || now != before,
        "still mapped after drop: {now:?}"
    );
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
    common::in_child_process!();
    let limit = limit_memory_locking();
    for backing in common::mapping_setups() {
        let factory = backing.builder().mlock(MlockPolicy::Required).build();
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
    common::in_child_process!();
    limit_memory_locking();
    for backing in common::mapping_setups() {
        let factory = backing.builder().mlock(MlockPolicy::BestEffort).build();
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

/// The start of the stderr line that says secrets went unlocked.
const UNLOCKED_LINE: &str = "securememory: warning: secrets are not locked in RAM";
/// The start of the stderr line that says secrets fell back from secret memory.
const NOT_HIDDEN_LINE: &str = "securememory: warning: secrets are no longer hidden from the kernel";

/// Makes 40 one-page secrets with `builder`'s factory under the 64 KiB limit and returns what
/// its degradation callback received.
fn degradations(builder: securememory::FactoryBuilder) -> Vec<Degradation> {
    let received = Arc::new(Mutex::new(Vec::new()));
    let sink = received.clone();
    let factory = builder
        .on_degraded(move |d| sink.lock().unwrap().push(d.clone()))
        .build();
    let secrets: Vec<_> = (0..40)
        .map(|i| factory.new(&mut [i as u8; 32]).unwrap())
        .collect();
    let unlocked = secrets.iter().filter(|s| !s.protection().locked).count();
    let received = received.lock().unwrap().clone();
    assert!(unlocked > 0 || !received.is_empty(), "nothing was degraded");
    received
}

#[test]
fn degraded_protection_is_reported_once_on_stderr_without_a_logger_and_to_the_callback() {
    let test = common::this_test!();
    if common::is_child(test) {
        limit_memory_locking();
        // BestEffort past the limit: every unlocked secret reaches the callback.
        let got = degradations(
            common::builder()
                .backing(Backing::Anonymous)
                .mlock(MlockPolicy::BestEffort),
        );
        assert!((24..=32).contains(&got.len()), "{} degradations", got.len());
        for d in &got {
            assert_eq!(d.lost, [Lost::Locked]);
            assert!(d.requested.locked && !d.obtained.locked);
            assert_eq!(d.obtained.backing, Backing::Anonymous);
            assert!(d.reason.contains("RLIMIT_MEMLOCK (65536 bytes)"), "{d}");
            assert!(d.remedy.contains("ulimit -l"), "{d}");
        }
        // Switched off, and kept to `log` (no logger here): the callback still runs, stderr
        // gets nothing.
        for report in [Report::Silent, Report::Log] {
            let got = degradations(
                common::builder()
                    .backing(Backing::Anonymous)
                    .mlock(MlockPolicy::BestEffort)
                    .report(report),
            );
            assert!(!got.is_empty(), "{report:?}: the callback was not called");
        }
        // Auto falling back from secret memory past the limit (locking not asked for).
        if common::kernel_offers_secret_memory() {
            let got = degradations(
                common::builder()
                    .mlock(MlockPolicy::Disabled)
                    .strategy(Strategy::PageProtection),
            );
            assert!(!got.is_empty(), "no fallback from secret memory");
            for d in &got {
                assert_eq!(d.lost, [Lost::KernelInvisible]);
                assert_eq!(d.requested.backing, Backing::SecretMem);
                assert!(d.requested.kernel_invisible && !d.obtained.kernel_invisible);
                assert_eq!(d.obtained.backing, Backing::Anonymous);
            }
        }
        return;
    }
    let (status, stdout, stderr) = common::run_child(test);
    assert!(
        status.success(),
        "child failed ({status})\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let lines = |start: &str| stderr.lines().filter(|l| l.starts_with(start)).count();
    assert_eq!(lines(UNLOCKED_LINE), 1, "stderr:\n{stderr}");
    let fallback = usize::from(common::kernel_offers_secret_memory());
    assert_eq!(lines(NOT_HIDDEN_LINE), fallback, "stderr:\n{stderr}");
    assert_eq!(lines("securememory:"), 1 + fallback, "stderr:\n{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.starts_with(UNLOCKED_LINE))
        .unwrap();
    assert!(
        line.contains("RLIMIT_MEMLOCK (65536 bytes)") && line.contains("ulimit -l"),
        "{line}"
    );
}

/// Overwrites the canary of a new 32-byte secret of `factory` from inside `with_bytes_mut`.
fn corrupt(
    factory: &securememory::ProtectedMemorySecretFactory,
) -> (securememory::Secret, Result<(), Error>) {
    let secret = factory.new(&mut [0x5a; 32]).unwrap();
    assert!(secret.protection().canary);
    let result = secret.with_bytes_mut(|b| {
        // SAFETY: the byte right before the secret is in its (writable) data page: the
        // canary, overwritten on purpose.
        unsafe { *b.as_mut_ptr().sub(1) ^= 0xff };
    });
    (secret, result)
}

#[test]
fn on_corruption_abort_kills_the_process_and_says_why() {
    let test = common::this_test!();
    if common::is_child(test) {
        let factory = common::builder().on_corruption(OnCorruption::Abort).build();
        let (_secret, result) = corrupt(&factory);
        println!("survived the corruption: {result:?}");
        return;
    }
    let (status, stdout, stderr) = common::run_child(test);
    assert_eq!(
        status.signal(),
        Some(libc::SIGABRT),
        "child did not abort ({status})\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(!stdout.contains("survived"), "{stdout}");
    let line = "securememory: aborting the process (OnCorruption::Abort): a secret's memory was \
                corrupted (the canary right before it overwritten";
    assert_eq!(
        stderr.lines().filter(|l| l.starts_with(line)).count(),
        1,
        "stderr:\n{stderr}"
    );
}

#[test]
fn without_abort_corruption_is_an_error_and_a_stderr_line_on_drop() {
    let test = common::this_test!();
    if common::is_child(test) {
        let (secret, result) = corrupt(&common::default_factory());
        assert!(matches!(result, Err(Error::Corrupted)), "{result:?}");
        drop(secret);
        return;
    }
    let (status, stdout, stderr) = common::run_child(test);
    assert!(
        status.success(),
        "child failed ({status})\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let line = "securememory: error: closing a dropped secret failed: the secret's memory was \
                corrupted";
    assert_eq!(
        stderr.lines().filter(|l| l.starts_with(line)).count(),
        1,
        "stderr:\n{stderr}"
    );
}

#[test]
fn access_in_a_forked_child_fails_closed() {
    common::in_child_process!();
    for backing in common::SETUPS {
        let secret = common::factory(backing).new(&mut [7; 32]).unwrap();
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
    common::in_child_process!();
    let secret = match common::factory(Backing::SecretMem).new(&mut [7; 32]) {
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

#[test]
fn running_out_of_descriptors_is_reported_as_such_and_not_remembered() {
    common::in_child_process!();
    if common::skip_without_secret_memory() {
        return;
    }
    let secret_memory = common::factory(Backing::SecretMem);
    let auto = common::default_factory();
    // Use up every descriptor the process may open.
    let mut open = Vec::new();
    loop {
        match std::fs::File::open("/dev/null") {
            Ok(file) => open.push(file),
            Err(e) if e.raw_os_error() == Some(libc::EMFILE) => break,
            Err(e) => panic!("opening /dev/null: {e}"),
        }
        assert!(open.len() < 1 << 20, "no descriptor limit");
    }
    for (factory, name) in [(&secret_memory, "SecretMem"), (&auto, "Auto")] {
        let error = factory.create_random(32).unwrap_err();
        let message = error.to_string();
        match &error {
            Error::Os { operation, source } => {
                assert!(operation.contains("memfd_secret"), "{name}: {message}");
                assert_eq!(
                    source.raw_os_error(),
                    Some(libc::EMFILE),
                    "{name}: {message}"
                );
            }
            other => panic!("{name}: expected the EMFILE as itself, got {other:?}: {message}"),
        }
        for needle in ["RLIMIT_NOFILE", "ulimit -n"] {
            assert!(
                message.contains(needle),
                "{name}: {needle:?} missing: {message}"
            );
        }
    }
    drop(open);
    // The shortage was not taken for the kernel's answer: secret memory is there again.
    let secret = auto.create_random(32).unwrap();
    assert_eq!(secret.protection().backing, Backing::SecretMem);
    assert!(secret.protection().kernel_invisible);
    secret_memory.create_random(32).unwrap();
}

fn max_map_count() -> usize {
    std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn running_out_of_mappings_is_reported_as_the_mapping_limit() {
    common::in_child_process!();
    // The watchdog's thread needs mappings of its own: start it while there is room.
    common::watchdog();
    // Bring the process to vm.max_map_count: a large inaccessible reservation, every other page
    // made readable so that no two neighbours merge, until the kernel refuses.
    let limit = max_map_count();
    let pages = 2 * limit + 16;
    // SAFETY: a fresh reservation that aliases nothing; it is never touched.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            pages * PAGE,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    assert_ne!(base, libc::MAP_FAILED);
    let page = |i: usize| {
        base.cast::<u8>()
            .wrapping_add(i * PAGE)
            .cast::<libc::c_void>()
    };
    let mut split = Vec::new();
    for i in (1..pages - 1).step_by(2) {
        // SAFETY: a page of our own reservation.
        if unsafe { libc::mprotect(page(i), PAGE, libc::PROT_READ) } != 0 {
            break;
        }
        split.push(i);
    }
    assert!(split.len() < pages / 2 - 1, "never reached the limit");
    for backing in common::mapping_setups() {
        // Leave room for a few mappings, so that the library runs out of its own accord.
        for i in split.drain(split.len() - 3..) {
            // SAFETY: as above.
            assert_eq!(unsafe { libc::mprotect(page(i), PAGE, libc::PROT_NONE) }, 0);
        }
        let factory = common::factory(backing);
        let mut held = Vec::new();
        let error = loop {
            match factory.create_random(32) {
                Ok(secret) => held.push(secret),
                Err(error) => break error,
            }
            assert!(
                held.len() < 100,
                "{backing:?}: the mapping limit never came"
            );
        };
        let message = error.to_string();
        match &error {
            Error::MapCountLimit {
                limit: reported, ..
            } => assert_eq!(*reported, limit, "{message}"),
            other => panic!("{backing:?}: expected MapCountLimit, got {other:?}: {message}"),
        }
        assert!(message.contains("vm.max_map_count"), "{message}");
        assert!(!message.contains("RLIMIT_MEMLOCK"), "{message}");
        drop(held);
    }
}

fn mem_available() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let line = meminfo
        .lines()
        .find(|l| l.starts_with("MemAvailable:"))
        .unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

#[test]
fn a_secret_larger_than_available_memory_is_refused_before_it_is_touched() {
    common::in_child_process!();
    let len = usize::try_from(mem_available() + (1 << 30)).unwrap();
    for backing in common::SETUPS {
        let factory = common::factory(backing);
        let error = factory.create_random(len).unwrap_err();
        match &error {
            Error::InsufficientMemory {
                requested,
                available,
            } => {
                assert!(*requested >= len);
                assert!(*available < len as u64);
            }
            other => panic!("{backing:?}: expected InsufficientMemory, got {other:?}"),
        }
        assert!(error.to_string().contains("MemAvailable"), "{error}");
    }
}

/// The directory of a memory cgroup (v1 or v2) of this process's own, for a child test to move
/// into; `None` where none can be made (no permission, no memory controller).
fn memory_cgroup_for(test_pid: u32) -> Option<(std::path::PathBuf, &'static str)> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    for line in cgroups.lines() {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        let (mount, limit_file) = if controllers.split(',').any(|c| c == "memory") {
            ("/sys/fs/cgroup/memory", "memory.limit_in_bytes")
        } else if controllers.is_empty() {
            ("/sys/fs/cgroup", "memory.max")
        } else {
            continue;
        };
        let parent = std::path::Path::new(mount).join(path.trim_start_matches('/'));
        if !parent.join(limit_file).exists() {
            continue;
        }
        return Some((
            parent.join(format!("securememory-test-{test_pid}")),
            limit_file,
        ));
    }
    None
}

#[test]
fn a_secret_larger_than_its_memory_cgroup_allows_is_refused_before_it_is_touched() {
    let name = common::this_test!();
    const LIMIT: u64 = 256 << 20;
    if !common::is_child(name) {
        let Some((dir, limit_file)) = memory_cgroup_for(std::process::id()) else {
            println!("skipped: no memory cgroup to make a child in");
            return;
        };
        if std::fs::create_dir(&dir)
            .and_then(|()| std::fs::write(dir.join(limit_file), LIMIT.to_string()))
            .is_err()
        {
            let _ = std::fs::remove_dir(&dir);
            println!("skipped: cannot make a memory cgroup with a limit at {dir:?}");
            return;
        }
        let result = std::panic::catch_unwind(|| common::in_child(name));
        std::fs::remove_dir(&dir).unwrap();
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
        return;
    }
    let parent_pid = std::os::unix::process::parent_id();
    let (dir, _) = memory_cgroup_for(parent_pid).unwrap();
    let dir = dir.parent().unwrap().to_path_buf();
    let dir = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find(|p| p.ends_with(format!("securememory-test-{parent_pid}")))
        .unwrap();
    std::fs::write(dir.join("cgroup.procs"), std::process::id().to_string()).unwrap();
    for backing in common::SETUPS {
        let factory = common::factory(backing);
        let error = factory.create_random(1 << 30).unwrap_err();
        match &error {
            Error::InsufficientMemory { available, .. } => {
                assert!(*available <= LIMIT, "{available} > the cgroup's limit")
            }
            other => panic!("{backing:?}: expected InsufficientMemory, got {other:?}"),
        }
        // A secret that fits is still made.
        let secret = factory.create_random(2 << 20).unwrap();
        assert!(secret.with_bytes(|b| b.len()).unwrap() == 2 << 20);
    }
}

/// Collects what the library logs, for tests that check a warning is given.
struct Captured;

static LOGGED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

impl log::Log for Captured {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::Level::Warn
    }
    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            LOGGED.lock().unwrap().push(record.args().to_string());
        }
    }
    fn flush(&self) {}
}

#[test]
fn giving_up_secret_memory_with_mlock_disabled_is_logged() {
    common::in_child_process!();
    if common::skip_without_secret_memory() {
        return;
    }
    log::set_logger(&Captured).unwrap();
    log::set_max_level(log::LevelFilter::Warn);
    limit_memory_locking();
    let factory = common::builder().mlock(MlockPolicy::Disabled).build();
    let secrets: Vec<_> = (0..40)
        .map(|_| factory.create_random(32).unwrap())
        .collect();
    let last = secrets.last().unwrap().protection();
    assert_eq!(last.backing, Backing::Anonymous, "the limit never came");
    assert!(!last.kernel_invisible);
    let logged = LOGGED.lock().unwrap();
    assert_eq!(logged.len(), 1, "one warning per factory: {logged:?}");
    assert!(
        logged[0].contains("no longer hidden from the kernel")
            && logged[0].contains("RLIMIT_MEMLOCK"),
        "{logged:?}"
    );
}

/// `disable_core_dumps` lowers the soft core-dump limit to zero and leaves the hard limit, so
/// the process may raise the soft one again.
#[test]
fn disabling_core_dumps_zeroes_the_soft_limit_and_keeps_the_hard_one() {
    common::in_child_process!();
    let core_limit = || {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `limit` is a valid out-pointer.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_CORE, &mut limit) }, 0);
        limit
    };
    let set_core_limit = |limit: &libc::rlimit| {
        // SAFETY: `limit` is a valid, initialised rlimit.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_CORE, limit) }, 0);
    };
    let mut start = core_limit();
    if start.rlim_max == 0 {
        println!("note: the hard core-dump limit is zero here: nothing to lower");
        return;
    }
    start.rlim_cur = start.rlim_max;
    set_core_limit(&start);
    securememory::disable_core_dumps().unwrap();
    let lowered = core_limit();
    assert_eq!(
        (lowered.rlim_cur, lowered.rlim_max),
        (0, start.rlim_max),
        "the soft limit is zero, the hard one as it was"
    );
    set_core_limit(&start);
}

/// Secret memory asked for by name is not traded for anonymous memory past the lock limit,
/// whatever the locking policy (only `Backing::Auto` falls back): the error says so instead.
#[test]
fn secret_memory_asked_for_by_name_past_the_lock_limit_is_an_error_not_a_fallback() {
    common::in_child_process!();
    if !common::kernel_offers_secret_memory() {
        println!("note: this kernel offers no secret memory");
        return;
    }
    limit_memory_locking();
    for mlock in [
        MlockPolicy::BestEffort,
        MlockPolicy::Disabled,
        MlockPolicy::Required,
    ] {
        let factory = common::builder()
            .backing(Backing::SecretMem)
            .strategy(Strategy::PageProtection)
            .mlock(mlock)
            .build();
        let mut held = Vec::new();
        let error = loop {
            match factory.new(&mut [1; 100]) {
                Ok(secret) => {
                    assert_eq!(secret.protection().backing, Backing::SecretMem, "{mlock:?}");
                    held.push(secret);
                    assert!(held.len() <= 16, "{mlock:?}: more pages than the limit");
                }
                Err(error) => break error,
            }
        };
        assert!(
            matches!(
                error,
                Error::MemoryLockLimit {
                    backing: Backing::SecretMem,
                    ..
                }
            ),
            "{mlock:?}: {error:?}"
        );
    }
}
