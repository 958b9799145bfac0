//! What the running machine offers, with the numbers: the facts `doctor` prints before its
//! probes, and that explain a weaker result.

use serde::Serialize;

/// The machine's capabilities and settings that bear on the promises.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    /// Kernel release (`uname -r`).
    pub kernel: String,
    /// CPU architecture.
    pub arch: String,
    /// Page size in bytes.
    pub page_size: usize,
    /// `memfd_secret(2)` works here, or the error it gave.
    #[serde(serialize_with = "availability")]
    pub memfd_secret: Result<(), String>,
    /// The CPU advertises protection keys (`pku` and `ospke` in /proc/cpuinfo).
    pub pkeys_cpu: bool,
    /// `pkey_alloc(2)` works here, or the error it gave.
    #[serde(serialize_with = "availability")]
    pub pkey_alloc: Result<(), String>,
    /// The library can have `Strategy::ProtectionKey` here
    /// (`securememory::system::check_protection_keys`), or why not.
    #[serde(serialize_with = "availability")]
    pub protection_keys: Result<(), String>,
    /// Soft `RLIMIT_MEMLOCK` in bytes (`None`: unlimited).
    pub memlock_soft: Option<u64>,
    /// Hard `RLIMIT_MEMLOCK` in bytes (`None`: unlimited).
    pub memlock_hard: Option<u64>,
    /// This process holds `CAP_IPC_LOCK`, so the memlock limit does not apply to it.
    pub cap_ipc_lock: bool,
    /// `vm.max_map_count`: at most this many mappings per process.
    pub max_map_count: Option<u64>,
    /// `kernel.core_pattern`.
    pub core_pattern: String,
    /// Core dumps go to a program (`core_pattern` starts with `|`), which ignores `RLIMIT_CORE`.
    pub core_piped: bool,
    /// Soft `RLIMIT_CORE` in bytes (`None`: unlimited).
    pub core_soft: Option<u64>,
    /// Hard `RLIMIT_CORE` in bytes (`None`: unlimited).
    pub core_hard: Option<u64>,
    /// `fs.suid_dumpable`.
    pub suid_dumpable: Option<u64>,
    /// `kernel.yama.ptrace_scope`; `None` when Yama is not enabled.
    pub ptrace_scope: Option<u64>,
    /// Active swap devices and files.
    pub swap_devices: usize,
    /// `SwapTotal` in kB.
    pub swap_total_kb: u64,
    /// Where `gcore` is (needed by the gcore probe), or why not.
    #[serde(serialize_with = "found")]
    pub gcore: Result<String, String>,
    /// The effective user id.
    pub euid: u32,
}

/// `"available"`, or `"unavailable: <why>"`.
fn availability<S: serde::Serializer>(r: &Result<(), String>, s: S) -> Result<S::Ok, S::Error> {
    match r {
        Ok(()) => s.serialize_str("available"),
        Err(e) => s.serialize_str(&format!("unavailable: {e}")),
    }
}

/// The path, or `"missing: <why>"`.
fn found<S: serde::Serializer>(r: &Result<String, String>, s: S) -> Result<S::Ok, S::Error> {
    match r {
        Ok(path) => s.serialize_str(path),
        Err(e) => s.serialize_str(&format!("missing: {e}")),
    }
}

fn read_trim(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

fn read_num(path: &str) -> Option<u64> {
    read_trim(path)?.parse().ok()
}

impl Machine {
    /// Detects the machine's capabilities.
    pub fn detect() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let has_flag = |f: &str| {
            cpuinfo
                .lines()
                .filter(|l| l.starts_with("flags"))
                .any(|l| l.split_whitespace().any(|w| w == f))
        };
        let (memlock_soft, memlock_hard) = crate::sys::get_rlimit(libc::RLIMIT_MEMLOCK);
        let (core_soft, core_hard) = crate::sys::get_rlimit(libc::RLIMIT_CORE);
        let core_pattern = read_trim("/proc/sys/kernel/core_pattern").unwrap_or_default();
        let swaps = std::fs::read_to_string("/proc/swaps").unwrap_or_default();
        let swap_total_kb = std::fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("SwapTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        Machine {
            kernel: read_trim("/proc/sys/kernel/osrelease").unwrap_or_default(),
            arch: std::env::consts::ARCH.to_string(),
            page_size: crate::sys::page_size(),
            memfd_secret: securememory::system::check_secret_memory().map_err(|e| e.to_string()),
            pkeys_cpu: has_flag("pku") && has_flag("ospke"),
            pkey_alloc: crate::sys::pkey_alloc().map_err(|e| e.to_string()),
            protection_keys: securememory::system::check_protection_keys().map_err(|e| match e {
                securememory::Error::StrategyUnavailable { reason, .. } => reason,
                other => other.to_string(),
            }),
            memlock_soft,
            memlock_hard,
            cap_ipc_lock: crate::sys::has_ipc_lock(),
            max_map_count: read_num("/proc/sys/vm/max_map_count"),
            core_piped: core_pattern.starts_with('|'),
            core_pattern,
            core_soft,
            core_hard,
            suid_dumpable: read_num("/proc/sys/fs/suid_dumpable"),
            ptrace_scope: read_num("/proc/sys/kernel/yama/ptrace_scope"),
            swap_devices: swaps
                .lines()
                .skip(1)
                .filter(|l| !l.trim().is_empty())
                .count(),
            swap_total_kb,
            gcore: crate::probe::dump::gcore_path().map(|p| p.display().to_string()),
            // SAFETY: geteuid has no preconditions.
            euid: unsafe { libc::geteuid() },
        }
    }

    /// The facts as `(name, value)` rows for the plain report.
    pub fn rows(&self) -> Vec<(&'static str, String)> {
        let limit = |v: Option<u64>| v.map_or("unlimited".to_string(), |b| format!("{b} bytes"));
        let page = self.page_size as u64;
        let mut rows = vec![
            ("kernel", format!("{} ({})", self.kernel, self.arch)),
            ("page size", format!("{} bytes", self.page_size)),
            (
                "memfd_secret",
                match &self.memfd_secret {
                    Ok(()) => {
                        "available: secrets can be removed from the kernel's direct map".into()
                    }
                    Err(e) => format!(
                        "unavailable ({e}): needs Linux 5.14+, secretmem.enable=1 before 6.5"
                    ),
                },
            ),
            (
                "protection keys",
                match (&self.protection_keys, &self.pkey_alloc, self.pkeys_cpu) {
                    (Ok(()), _, _) => {
                        "available (pkey_alloc works; the library has its key)".into()
                    }
                    (Err(e), Ok(()), _) => {
                        format!("pkey_alloc works, but the library has none: {e}")
                    }
                    (Err(_), Err(e), true) => {
                        format!("CPU has pku/ospke but pkey_alloc fails ({e})")
                    }
                    (Err(_), Err(_), false) => "absent (CPU lacks pku/ospke)".into(),
                },
            ),
            (
                "RLIMIT_MEMLOCK",
                format!(
                    "soft {}, hard {}{}",
                    limit(self.memlock_soft),
                    limit(self.memlock_hard),
                    match (self.cap_ipc_lock, self.memlock_soft) {
                        (true, _) =>
                            " (this process has CAP_IPC_LOCK and is not bound by it)".to_string(),
                        (false, Some(s)) => format!(" = {} one-page secrets", s / page),
                        (false, None) => String::new(),
                    }
                ),
            ),
            (
                "vm.max_map_count",
                self.max_map_count.map_or("unknown".into(), |n| {
                    format!("{n} mappings per process (a secret with guard pages takes up to 3)")
                }),
            ),
            (
                "core dumps",
                format!(
                    "core_pattern {:?}{}; RLIMIT_CORE soft {}, hard {}",
                    self.core_pattern,
                    if self.core_piped {
                        " — piped to a program, which ignores RLIMIT_CORE"
                    } else {
                        " — written by the kernel, RLIMIT_CORE applies"
                    },
                    limit(self.core_soft),
                    limit(self.core_hard)
                ),
            ),
            (
                "fs.suid_dumpable",
                self.suid_dumpable
                    .map_or("unknown".into(), |v| v.to_string()),
            ),
            (
                "kernel.yama.ptrace_scope",
                self.ptrace_scope
                    .map_or("absent (Yama not enabled)".into(), |v| v.to_string()),
            ),
            (
                "swap",
                if self.swap_devices == 0 {
                    "none".to_string()
                } else {
                    format!("{} device(s), {} kB", self.swap_devices, self.swap_total_kb)
                },
            ),
        ];
        rows.push((
            "gcore",
            match &self.gcore {
                Ok(p) => p.clone(),
                Err(e) => e.clone(),
            },
        ));
        rows.push(("user", format!("euid {}", self.euid)));
        rows
    }
}
