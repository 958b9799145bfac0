//! Capacity: how many live 32-byte secrets one process holds under a strategy, and what each
//! costs in mappings, resident memory, locked memory and time.
//!
//! [`measure`] makes secrets until it has the number asked for or the library refuses one, reading
//! `/proc/self/maps` (lines: mappings) and `/proc/self/status` (`VmRSS`, `VmLck`) before the first
//! and after the last, then closes them all. Each measurement belongs in a fresh process (the
//! `capacity` binary runs one per strategy): memory freed by an earlier one would stay with the
//! allocator and hide what the next one costs.
//!
//! [`Command`]s made by [`measurement`] with `unprivileged` drop to the `nobody` user (uid and
//! gid 65534, no supplementary groups, so no capabilities) with an `RLIMIT_MEMLOCK` of
//! [`DEFAULT_MEMLOCK`] before they run: root, or `CAP_IPC_LOCK`, may lock past the limit, so a
//! measurement as root says nothing about what an ordinary process can hold.

use securememory::{Error, ProtectedMemorySecretFactory, Secret, Strategy};
use std::fmt::Write as _;
use std::io;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

/// The soft and hard `RLIMIT_MEMLOCK` most distributions give an ordinary user: 8 MiB.
pub const DEFAULT_MEMLOCK: u64 = 8 << 20;

/// The uid and gid of `nobody`.
const NOBODY: u32 = 65534;

/// The length of every secret measured.
pub const SECRET_LEN: usize = 32;

/// What one measurement found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Capacity {
    /// `page-protection`, `protection-key` or `sealed`.
    pub strategy: String,
    /// Who the process ran as: uid, effective capabilities and `RLIMIT_MEMLOCK`.
    pub user: String,
    /// Where the first secret's bytes (sealed: its key page and scratch areas) live.
    pub backing: String,
    /// Secrets asked for.
    pub requested: u64,
    /// Secrets made and alive at once.
    pub live: u64,
    /// Whether each was read back (and found to hold its own bytes) before the closes: a secret
    /// that has been read costs more to close under protection keys and sealing (every thread
    /// fences before the close looks for readers).
    pub read_back: bool,
    /// Lines of `/proc/self/maps` after making them, less those before.
    pub new_mappings: i64,
    /// `VmRSS` after making them, less before, in bytes.
    pub resident_bytes: i64,
    /// `VmLck` after making them, less before, in bytes.
    pub locked_bytes: i64,
    /// Wall time to make them, in nanoseconds.
    pub create_ns: f64,
    /// Wall time to close and drop them, in nanoseconds.
    pub close_ns: f64,
    /// Lines of `/proc/self/maps` once all are closed, less those before making them.
    pub mappings_left: i64,
    /// `VmLck` once all are closed, less before making them, in bytes.
    pub locked_left: i64,
    /// Why making stopped short of `requested`, if it did: the library's error.
    pub stopped_by: Option<String>,
    /// Whether that error was [`Error::MemoryLockLimit`]: the locked-memory limit reached.
    pub memlock_limit_reached: bool,
}

impl Capacity {
    /// Resident bytes per live secret.
    pub fn resident_per_secret(&self) -> f64 {
        self.resident_bytes as f64 / self.live.max(1) as f64
    }

    /// Locked bytes per live secret.
    pub fn locked_per_secret(&self) -> f64 {
        self.locked_bytes as f64 / self.live.max(1) as f64
    }

    /// Nanoseconds to make one secret.
    pub fn create_ns_per_secret(&self) -> f64 {
        self.create_ns / self.live.max(1) as f64
    }

    /// Nanoseconds to close and drop one secret.
    pub fn close_ns_per_secret(&self) -> f64 {
        self.close_ns / self.live.max(1) as f64
    }

    /// One JSON object on one line; strings lose any `"` and `\` so that no escaping is needed.
    pub fn to_json(&self) -> String {
        let text = |s: &str| s.replace(['"', '\\', '\n'], " ");
        let mut out = String::from("{");
        let _ = write!(
            out,
            "\"strategy\": \"{}\", \"user\": \"{}\", \"backing\": \"{}\", \"requested\": {}, \
             \"live\": {}, \"read_back\": {}, \"new_mappings\": {}, \"resident_bytes\": {}, \"locked_bytes\": {}, \
             \"create_ns\": {:.0}, \"close_ns\": {:.0}, \"mappings_left\": {}, \
             \"locked_left\": {}, \"memlock_limit_reached\": {}, \"stopped_by\": ",
            text(&self.strategy),
            text(&self.user),
            text(&self.backing),
            self.requested,
            self.live,
            self.read_back,
            self.new_mappings,
            self.resident_bytes,
            self.locked_bytes,
            self.create_ns,
            self.close_ns,
            self.mappings_left,
            self.locked_left,
            self.memlock_limit_reached,
        );
        match &self.stopped_by {
            Some(reason) => {
                let _ = write!(out, "\"{}\"}}", text(reason));
            }
            None => out.push_str("null}"),
        }
        out
    }

    /// Reads what [`Capacity::to_json`] wrote.
    pub fn from_json(line: &str) -> Option<Capacity> {
        let fields = flat_json(line)?;
        let get = |key: &str| {
            fields
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
        };
        let string = |key: &str| match get(key)? {
            Value::Text(text) => Some(text),
            _ => None,
        };
        let number = |key: &str| match get(key)? {
            Value::Number(n) => Some(n),
            _ => None,
        };
        Some(Capacity {
            strategy: string("strategy")?,
            user: string("user")?,
            backing: string("backing")?,
            requested: number("requested")? as u64,
            live: number("live")? as u64,
            read_back: match get("read_back")? {
                Value::Flag(flag) => flag,
                _ => return None,
            },
            new_mappings: number("new_mappings")? as i64,
            resident_bytes: number("resident_bytes")? as i64,
            locked_bytes: number("locked_bytes")? as i64,
            create_ns: number("create_ns")?,
            close_ns: number("close_ns")?,
            mappings_left: number("mappings_left")? as i64,
            locked_left: number("locked_left")? as i64,
            stopped_by: string("stopped_by"),
            memlock_limit_reached: match get("memlock_limit_reached")? {
                Value::Flag(flag) => flag,
                _ => return None,
            },
        })
    }
}

#[derive(Clone, Debug)]
enum Value {
    Text(String),
    Number(f64),
    Flag(bool),
    Null,
}

/// The fields of one flat JSON object whose strings hold no escapes.
fn flat_json(line: &str) -> Option<Vec<(String, Value)>> {
    let body = line.trim().strip_prefix('{')?.strip_suffix('}')?;
    let mut fields = Vec::new();
    let mut rest = body.trim();
    while !rest.is_empty() {
        let after_quote = rest.strip_prefix('"')?;
        let end = after_quote.find('"')?;
        let key = after_quote[..end].to_string();
        rest = after_quote[end + 1..]
            .trim_start()
            .strip_prefix(':')?
            .trim_start();
        let value;
        if let Some(text) = rest.strip_prefix('"') {
            let end = text.find('"')?;
            value = Value::Text(text[..end].to_string());
            rest = &text[end + 1..];
        } else {
            let end = rest.find(',').unwrap_or(rest.len());
            let raw = rest[..end].trim();
            value = match raw {
                "null" => Value::Null,
                "true" => Value::Flag(true),
                "false" => Value::Flag(false),
                number => Value::Number(number.parse().ok()?),
            };
            rest = &rest[end..];
        }
        fields.push((key, value));
        rest = rest.trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
    }
    Some(fields)
}

/// The strategy a name stands for.
pub fn strategy(name: &str) -> Option<Strategy> {
    match name {
        "page-protection" => Some(Strategy::PageProtection),
        "protection-key" => Some(Strategy::ProtectionKey),
        "sealed" => Some(Strategy::Sealed),
        _ => None,
    }
}

/// Lines of `/proc/self/maps`: one per mapping (a run of pages with the same protection and
/// backing).
pub fn mappings() -> io::Result<i64> {
    Ok(std::fs::read_to_string("/proc/self/maps")?.lines().count() as i64)
}

/// A `kB` field of `/proc/self/status` (`VmRSS`, `VmLck`), in bytes.
pub fn status_bytes(field: &str) -> io::Result<i64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|line| {
            let value = line.strip_prefix(field)?.strip_prefix(':')?;
            value.trim().strip_suffix("kB")?.trim().parse::<i64>().ok()
        })
        .map(|kib| kib * 1024)
        .ok_or_else(|| io::Error::other(format!("no {field} in /proc/self/status")))
}

/// Who this process is, as far as locking memory goes: uid, effective capabilities, and the
/// soft `RLIMIT_MEMLOCK`.
pub fn user() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .map(|value| value.split_whitespace().next().unwrap_or("").to_string())
            .unwrap_or_else(|| "?".to_string())
    };
    let limit = match securememory::system::memlock_limit() {
        Some(bytes) if bytes % (1 << 20) == 0 => format!("{} MiB", bytes >> 20),
        Some(bytes) => format!("{bytes} bytes"),
        None => "unlimited".to_string(),
    };
    format!(
        "uid {}, CapEff {}, RLIMIT_MEMLOCK {limit}",
        field("Uid"),
        field("CapEff")
    )
}

/// A 32-byte pattern that differs from one secret to the next, so that reading them back shows
/// that each holds its own bytes.
fn pattern(index: u64) -> [u8; SECRET_LEN] {
    let mut bytes = [0xa5u8; SECRET_LEN];
    bytes[..8].copy_from_slice(&index.to_le_bytes());
    bytes
}

/// Makes up to `count` live secrets with `new(&mut buf)` under `strategy` (the default backing),
/// reads each back when `read_back`, then closes them.
///
/// # Errors
/// When `/proc/self` cannot be read, or a secret made reads back wrong or fails to close.
pub fn measure(strategy_name: &str, count: u64, read_back: bool) -> io::Result<Capacity> {
    let strategy = strategy(strategy_name)
        .ok_or_else(|| io::Error::other(format!("unknown strategy {strategy_name}")))?;
    let factory = ProtectedMemorySecretFactory::builder()
        .strategy(strategy)
        .build();
    let wanted = usize::try_from(count).map_err(io::Error::other)?;
    // The handles are the caller's, not the library's: their vector is made resident before the
    // first reading, so that it is not counted.
    let mut secrets: Vec<Secret> = Vec::with_capacity(wanted);
    let spare = secrets.spare_capacity_mut();
    // SAFETY: the spare capacity is `wanted` writable slots of `MaybeUninit<Secret>`, which any
    // bytes may fill; nothing reads them as secrets.
    unsafe { std::ptr::write_bytes(spare.as_mut_ptr(), 0, spare.len()) };
    let (maps_before, rss_before, locked_before) =
        (mappings()?, status_bytes("VmRSS")?, status_bytes("VmLck")?);
    let mut stopped_by = None;
    let mut memlock_limit_reached = false;
    let started = Instant::now();
    for index in 0..count {
        let mut bytes = pattern(index);
        match factory.new(&mut bytes) {
            Ok(secret) => secrets.push(secret),
            Err(error) => {
                memlock_limit_reached = matches!(error, Error::MemoryLockLimit { .. });
                stopped_by = Some(error.to_string());
                break;
            }
        }
    }
    let create_ns = started.elapsed().as_secs_f64() * 1e9;
    let (maps_after, rss_after, locked_after) =
        (mappings()?, status_bytes("VmRSS")?, status_bytes("VmLck")?);
    let backing = secrets.first().map_or_else(
        || "none".to_string(),
        |secret| format!("{:?}", secret.protection().backing),
    );
    for (index, secret) in secrets.iter().enumerate().filter(|_| read_back) {
        let expected = pattern(index as u64);
        let same = secret
            .with_bytes(|bytes| bytes == expected)
            .map_err(io::Error::other)?;
        if !same {
            return Err(io::Error::other(format!("secret {index} reads back wrong")));
        }
    }
    let live = secrets.len() as u64;
    let started = Instant::now();
    for secret in secrets.drain(..) {
        secret.close().map_err(io::Error::other)?;
    }
    let close_ns = started.elapsed().as_secs_f64() * 1e9;
    Ok(Capacity {
        strategy: strategy_name.to_string(),
        user: user(),
        backing,
        requested: count,
        live,
        read_back,
        new_mappings: maps_after - maps_before,
        resident_bytes: rss_after - rss_before,
        locked_bytes: locked_after - locked_before,
        create_ns,
        close_ns,
        mappings_left: mappings()? - maps_before,
        locked_left: status_bytes("VmLck")? - locked_before,
        stopped_by,
        memlock_limit_reached,
    })
}

/// A command that runs `capacity --measure STRATEGY COUNT [--no-read]` of the binary at `exe`,
/// which prints one [`Capacity`] as JSON; with `unprivileged`, as `nobody` with no capabilities
/// and an `RLIMIT_MEMLOCK` of that many bytes (a process that is not root keeps its user and
/// only lowers the limit).
pub fn measurement(
    exe: &Path,
    strategy: &str,
    count: u64,
    read_back: bool,
    unprivileged: Option<u64>,
) -> Command {
    let mut command = Command::new(exe);
    command
        .args(["--measure", strategy, &count.to_string()])
        .current_dir("/");
    if !read_back {
        command.arg("--no-read");
    }
    if let Some(memlock) = unprivileged {
        use std::os::unix::process::CommandExt;
        // SAFETY: between fork and exec the closure makes only async-signal-safe system calls
        // (setrlimit, setgroups, setgid, setuid) and allocates nothing.
        unsafe {
            command.pre_exec(move || {
                let limit = libc::rlimit {
                    rlim_cur: memlock,
                    rlim_max: memlock,
                };
                if libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) != 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::geteuid() == 0 {
                    // Leaving uid 0 for good clears the permitted and effective capabilities.
                    if libc::setgroups(0, std::ptr::null()) != 0
                        || libc::setgid(NOBODY) != 0
                        || libc::setuid(NOBODY) != 0
                    {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
    }
    command
}

/// A copy of a binary that `nobody` may run, removed when dropped: the build directory may lie
/// under one that only its owner may enter (a private temporary or home directory).
struct RunnableCopy {
    dir: std::path::PathBuf,
    exe: std::path::PathBuf,
}

impl RunnableCopy {
    fn of(exe: &Path) -> io::Result<RunnableCopy> {
        use std::os::unix::fs::PermissionsExt;
        static MADE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("securememory-capacity-{}-{n}", std::process::id()));
        std::fs::create_dir(&dir)?;
        let copy = RunnableCopy {
            exe: dir.join("capacity"),
            dir,
        };
        std::fs::set_permissions(&copy.dir, std::fs::Permissions::from_mode(0o755))?;
        std::fs::copy(exe, &copy.exe)?;
        std::fs::set_permissions(&copy.exe, std::fs::Permissions::from_mode(0o755))?;
        Ok(copy)
    }
}

impl Drop for RunnableCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs a [`measurement`] and reads its result.
///
/// # Errors
/// When the child cannot run, fails, or prints no result.
pub fn run_measurement(
    exe: &Path,
    strategy: &str,
    count: u64,
    read_back: bool,
    unprivileged: Option<u64>,
) -> io::Result<Capacity> {
    // Copying a binary and running it, while another thread forks, fails with ETXTBSY: the
    // forked child holds the copy's descriptor, still open for writing, until it execs. The
    // copy and the start of the child (`spawn` returns once it has exec'd) are made one at a
    // time.
    static STARTING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let starting = STARTING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // SAFETY: `geteuid` cannot fail and touches no memory.
    let as_nobody = unprivileged.is_some() && unsafe { libc::geteuid() } == 0;
    let copy = if as_nobody {
        Some(RunnableCopy::of(exe)?)
    } else {
        None
    };
    let exe = copy.as_ref().map_or(exe, |copy| copy.exe.as_path());
    let mut command = measurement(exe, strategy, count, read_back, unprivileged);
    let child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    drop(starting);
    let output = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(io::Error::other(format!(
            "capacity --measure {strategy} {count} failed ({}): {}{}",
            output.status,
            stdout,
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    stdout
        .lines()
        .find_map(Capacity::from_json)
        .ok_or_else(|| io::Error::other(format!("no result in {stdout:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_capacity_survives_json() {
        let capacity = Capacity {
            strategy: "sealed".into(),
            user: "uid 0, CapEff 000001ffffffffff, RLIMIT_MEMLOCK 8 MiB".into(),
            backing: "SecretMem".into(),
            requested: 10,
            live: 9,
            read_back: true,
            new_mappings: -2,
            resident_bytes: 4096,
            locked_bytes: 0,
            create_ns: 1234.0,
            close_ns: 99.0,
            mappings_left: 1,
            locked_left: 0,
            stopped_by: Some("memory: \"locked\" limit".into()),
            memlock_limit_reached: true,
        };
        let back = Capacity::from_json(&capacity.to_json()).unwrap();
        assert_eq!(back.stopped_by.as_deref(), Some("memory:  locked  limit"));
        assert_eq!(
            Capacity {
                stopped_by: capacity.stopped_by.clone(),
                ..back
            },
            capacity
        );
        let none = Capacity {
            stopped_by: None,
            ..capacity
        };
        assert_eq!(Capacity::from_json(&none.to_json()).unwrap(), none);
    }

    #[test]
    fn status_and_maps_are_read() {
        assert!(status_bytes("VmRSS").unwrap() > 0);
        assert!(status_bytes("VmLck").unwrap() >= 0);
        assert!(mappings().unwrap() > 0);
    }
}
