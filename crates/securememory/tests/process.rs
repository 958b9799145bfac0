//! Rules that involve the whole process (its address space, resource limits, capabilities,
//! fork), each checked in a child process of its own so other tests cannot interfere.
#![cfg(target_os = "linux")]

mod common;

use securememory::{Backing, Error, MlockPolicy, SecretFactory};

const PAGE: usize = 4096;

#[test]
fn closed_secret_pages_are_unmapped() {
    common::in_child_process!();
    for backing in common::SETUPS {
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
    for backing in common::SETUPS {
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
    for backing in common::SETUPS {
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
    for backing in common::SETUPS {
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
