//! What the process may still get, read from `/proc` and the memory cgroup: used to tell one
//! shortage from another when the kernel answers only `ENOMEM`, and to refuse a secret that
//! could never fit in RAM before its pages are touched (touching them would wake the OOM
//! killer instead of returning an error).

use super::super::Shortage;
use std::fs;
use std::io::{self, Read};

/// Why a mapping or lock call was refused, from its error and the process's current standing.
/// `locking` says the refused call was `mlock`, whose ENOMEM may mean the locked-memory limit;
/// a mapping call's ENOMEM never does (secret memory over that limit gives EAGAIN).
pub(crate) fn diagnose(error: &io::Error, requested: usize, locking: bool) -> Option<Shortage> {
    match error.raw_os_error()? {
        // EPERM: mlock with a zero limit and no CAP_IPC_LOCK; EAGAIN: secret memory over the
        // limit (it is charged to RLIMIT_MEMLOCK).
        libc::EPERM | libc::EAGAIN => Some(Shortage::LockLimit),
        libc::ENOMEM => Some(diagnose_enomem(requested, locking)),
        _ => None,
    }
}

fn diagnose_enomem(requested: usize, locking: bool) -> Shortage {
    if locking && over_lock_limit(requested) {
        return Shortage::LockLimit;
    }
    match (mapping_count(), max_map_count()) {
        (Some(in_use), Some(limit)) => shortage_of_memory_or_mappings(in_use, limit),
        _ => Shortage::Memory,
    }
}

/// What an `ENOMEM` that was not the lock limit means, with `in_use` of `limit` mappings taken.
fn shortage_of_memory_or_mappings(in_use: usize, limit: usize) -> Shortage {
    // Making a secret adds up to three mappings (a reservation split into guard, data, guard).
    if in_use + 3 > limit {
        Shortage::MapCount { in_use, limit }
    } else {
        Shortage::Memory
    }
}

/// Whether locking `requested` more bytes would pass `RLIMIT_MEMLOCK`, for a process bound by it.
fn over_lock_limit(requested: usize) -> bool {
    let (Some(status), Some(limit)) = (Status::read(), super::super::unix::memlock_limit()) else {
        return false;
    };
    status.would_pass(limit, u64::try_from(requested).unwrap_or(u64::MAX))
}

/// The fields of `/proc/thread-self/status` that matter here.
struct Status {
    /// `VmLck`: bytes locked now (secret memory included).
    locked_bytes: u64,
    /// `CapEff` has `CAP_IPC_LOCK`: the locked-memory limit does not apply.
    ipc_lock: bool,
}

impl Status {
    fn read() -> Option<Status> {
        // The calling thread's: capabilities are per thread, and the kernel checks the caller's.
        Status::parse(&fs::read_to_string("/proc/thread-self/status").ok()?)
    }

    fn parse(text: &str) -> Option<Status> {
        let field = |name: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(name))
                .map(str::trim)
        };
        let locked_kib: u64 = field("VmLck:")?
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        let capabilities = u64::from_str_radix(field("CapEff:")?, 16).ok()?;
        const CAP_IPC_LOCK: u32 = 14;
        Some(Status {
            locked_bytes: locked_kib.saturating_mul(1024),
            ipc_lock: capabilities & (1 << CAP_IPC_LOCK) != 0,
        })
    }

    /// Whether locking `requested` more bytes passes `limit`, for a thread bound by it.
    fn would_pass(&self, limit: u64, requested: u64) -> bool {
        !self.ipc_lock && self.locked_bytes.saturating_add(requested) > limit
    }
}

/// The number of mappings of this process (lines of `/proc/self/maps`).
pub(crate) fn mapping_count() -> Option<usize> {
    let mut maps = fs::File::open("/proc/self/maps").ok()?;
    let mut buffer = [0u8; 64 * 1024];
    let mut lines = 0;
    loop {
        match maps.read(&mut buffer) {
            Ok(0) => return Some(lines),
            Ok(n) => lines += buffer[..n].iter().filter(|&&b| b == b'\n').count(),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
}

/// `vm.max_map_count`: the most mappings a process may have.
pub(crate) fn max_map_count() -> Option<usize> {
    read_number("/proc/sys/vm/max_map_count")
}

fn read_number<T: std::str::FromStr>(path: &str) -> Option<T> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Bytes of memory this process can still get: the least of the system's `MemAvailable` and the
/// headroom (limit − usage + reclaimable file cache) of its memory cgroup and every ancestor,
/// cgroup v1 or v2. `None` when none of it can be read.
pub(crate) fn memory_available() -> Option<u64> {
    let cgroups = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let mut least = system_available();
    for headroom in cgroups
        .lines()
        .filter_map(|line| cgroup_headroom(line, CGROUP_ROOT))
    {
        least = Some(least.map_or(headroom, |l| l.min(headroom)));
    }
    least
}

fn system_available() -> Option<u64> {
    let text = fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = text
        .lines()
        .find_map(|line| line.strip_prefix("MemAvailable:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib.saturating_mul(1024))
}

/// Where the cgroup hierarchies are mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The smallest headroom along one line of `/proc/self/cgroup` (`ID:CONTROLLERS:PATH`), if it
/// names a memory cgroup with a limit, in the hierarchies mounted under `root`.
fn cgroup_headroom(line: &str, root: &str) -> Option<u64> {
    let mut fields = line.splitn(3, ':');
    let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
    let v1 = controllers.split(',').any(|c| c == "memory");
    let v2 = controllers.is_empty();
    if !v1 && !v2 {
        return None;
    }
    let mounts: &[&str] = if v1 { &["/memory"] } else { &["", "/unified"] };
    let mut least: Option<u64> = None;
    for mount in mounts {
        let mut dir = Some(path.trim_end_matches('/'));
        while let Some(current) = dir {
            if let Some(headroom) = headroom_of(&format!("{root}{mount}{current}"), v1) {
                least = Some(least.map_or(headroom, |l| l.min(headroom)));
            }
            dir = current.rfind('/').map(|slash| &current[..slash]);
        }
    }
    least
}

/// Limit − usage + inactive file cache of one cgroup directory; `None` without a limit.
fn headroom_of(dir: &str, v1: bool) -> Option<u64> {
    let (limit_file, usage_file, inactive_key) = if v1 {
        (
            "memory.limit_in_bytes",
            "memory.usage_in_bytes",
            "total_inactive_file",
        )
    } else {
        ("memory.max", "memory.current", "inactive_file")
    };
    // "max" (v2) does not parse; v1 writes "unlimited" as a number near 2^63.
    let limit: u64 = read_number(&format!("{dir}/{limit_file}"))?;
    if limit >= 1 << 62 {
        return None;
    }
    let usage: u64 = read_number(&format!("{dir}/{usage_file}")).unwrap_or(0);
    let inactive_file = fs::read_to_string(format!("{dir}/memory.stat"))
        .ok()
        .and_then(|stat| {
            stat.lines()
                .find_map(|line| line.strip_prefix(inactive_key)?.strip_prefix(' '))
                .and_then(|value| value.trim().parse::<u64>().ok())
        })
        .unwrap_or(0);
    Some(limit.saturating_sub(usage.saturating_sub(inactive_file)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_read_from_proc() {
        let count = mapping_count().unwrap();
        let lines = fs::read_to_string("/proc/self/maps")
            .unwrap()
            .lines()
            .count();
        // Other tests' threads map and unmap meanwhile.
        assert!(
            count.abs_diff(lines) < 64,
            "{count} mappings counted, {lines} lines"
        );
        assert!(count > 5, "{count} mappings");
        let limit = max_map_count().unwrap();
        assert!(limit > count);
        for available in [memory_available().unwrap(), system_available().unwrap()] {
            assert!(available > 1 << 20, "{available} bytes available");
        }
        assert!(Status::read().is_some());
    }

    #[test]
    fn status_gives_the_locked_bytes_and_the_lock_capability() {
        let status =
            Status::parse("Name:\tx\nVmLck:\t    12 kB\nCapEff:\t0000000000004000\n").unwrap();
        assert_eq!(status.locked_bytes, 12 * 1024);
        assert!(status.ipc_lock);
        let every_other = Status::parse("VmLck:\t0 kB\nCapEff:\t000001ffffffbfff\n").unwrap();
        assert!(!every_other.ipc_lock);
        assert!(Status::parse("VmLck:\t0 kB\n").is_none());
        assert!(Status::parse("CapEff:\t0000000000004000\n").is_none());
    }

    #[test]
    fn the_lock_limit_is_passed_only_beyond_it_and_only_without_the_capability() {
        let bound = Status {
            locked_bytes: 1000,
            ipc_lock: false,
        };
        assert!(!bound.would_pass(2000, 999));
        assert!(!bound.would_pass(2000, 1000));
        assert!(bound.would_pass(2000, 1001));
        let near_the_top = Status {
            locked_bytes: u64::MAX - 1,
            ipc_lock: false,
        };
        assert!(near_the_top.would_pass(u64::MAX - 1, u64::MAX));
        let exempt = Status {
            locked_bytes: 1000,
            ipc_lock: true,
        };
        assert!(!exempt.would_pass(0, 1));
    }

    #[test]
    fn enomem_near_the_mapping_limit_is_the_mapping_limit() {
        assert_eq!(shortage_of_memory_or_mappings(0, 100), Shortage::Memory);
        assert_eq!(shortage_of_memory_or_mappings(97, 100), Shortage::Memory);
        assert_eq!(
            shortage_of_memory_or_mappings(98, 100),
            Shortage::MapCount {
                in_use: 98,
                limit: 100
            }
        );
    }

    /// A directory tree standing for the cgroup mounts, removed when dropped.
    struct FakeCgroups(std::path::PathBuf);

    impl FakeCgroups {
        fn new(name: &str) -> FakeCgroups {
            let root = std::env::temp_dir().join(format!(
                "securememory-cgroups-{}-{name}",
                std::process::id()
            ));
            let _ = fs::remove_dir_all(&root);
            fs::create_dir_all(&root).unwrap();
            FakeCgroups(root)
        }

        fn write(&self, file: &str, contents: &str) {
            let path = self.0.join(file);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, contents).unwrap();
        }

        fn headroom(&self, line: &str) -> Option<u64> {
            cgroup_headroom(line, self.0.to_str().unwrap())
        }
    }

    impl Drop for FakeCgroups {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn a_v2_cgroup_leaves_the_least_headroom_along_its_path() {
        let cgroups = FakeCgroups::new("v2");
        cgroups.write("a/memory.max", "1000000\n");
        cgroups.write("a/memory.current", "300000\n");
        cgroups.write(
            "a/memory.stat",
            "anon 1\ninactive_file 100000\nactive_file 7\n",
        );
        cgroups.write("a/b/memory.max", "max\n");
        cgroups.write("a/b/memory.current", "5\n");
        // Usage less the reclaimable file cache, from the limit.
        assert_eq!(cgroups.headroom("0::/a/b"), Some(800_000));
        cgroups.write("a/b/memory.max", "500000\n");
        cgroups.write("a/b/memory.current", "450000\n");
        assert_eq!(cgroups.headroom("0::/a/b"), Some(50_000));
        // Not a memory controller's line, and a path with no limit along it.
        assert_eq!(cgroups.headroom("3:cpu:/a/b"), None);
        assert_eq!(cgroups.headroom("0::/c"), None);
        // A hierarchy mounted under unified/ counts too.
        cgroups.write("unified/c/memory.max", "4096\n");
        assert_eq!(cgroups.headroom("0::/c"), Some(4096));
    }

    #[test]
    fn a_v1_memory_cgroup_leaves_the_least_headroom_along_its_path() {
        let cgroups = FakeCgroups::new("v1");
        // "Unlimited", as v1 writes it.
        cgroups.write("memory/x/memory.limit_in_bytes", "9223372036854771712\n");
        cgroups.write("memory/memory.limit_in_bytes", "2000000\n");
        cgroups.write("memory/memory.usage_in_bytes", "500000\n");
        cgroups.write("memory/memory.stat", "cache 9\ntotal_inactive_file 100\n");
        assert_eq!(cgroups.headroom("4:cpu,memory:/x"), Some(1_500_100));
        assert_eq!(cgroups.headroom("3:cpu:/x"), None);
        assert_eq!(cgroups.headroom("0::/x"), None);
        // Limits from 2^62 up are no limit; one below is.
        cgroups.write("memory/memory.limit_in_bytes", &format!("{}\n", 1u64 << 62));
        assert_eq!(cgroups.headroom("4:memory:/x"), None);
        cgroups.write(
            "memory/memory.limit_in_bytes",
            &format!("{}\n", (1u64 << 62) - 1),
        );
        assert_eq!(
            cgroups.headroom("4:memory:/x"),
            Some((1u64 << 62) - 1 - 499_900)
        );
    }

    #[test]
    fn enomem_far_from_every_limit_is_a_memory_shortage() {
        let error = io::Error::from_raw_os_error(libc::ENOMEM);
        // Root with CAP_IPC_LOCK, or a small request under any limit: neither lock nor maps.
        if Status::read().unwrap().ipc_lock {
            assert_eq!(diagnose(&error, 4096, true), Some(Shortage::Memory));
        }
        let eagain = io::Error::from_raw_os_error(libc::EAGAIN);
        assert_eq!(diagnose(&eagain, 4096, false), Some(Shortage::LockLimit));
        let eio = io::Error::from_raw_os_error(libc::EIO);
        assert_eq!(diagnose(&eio, 4096, true), None);
    }
}
