//! The probe's side of a holder: spawning it in a fresh directory, talking to it with timeouts,
//! and waiting for it to die.

use crate::holder::{BackingArg, MlockArg, Policy, MARKER_LEN};
use crate::limits::MemlockLimit;
use crate::probe::{ProbeError, Refusal};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// How a holder is started.
#[derive(Clone, Debug)]
pub struct HolderOptions {
    /// The `securemem` executable that has the hidden `holder` subcommand.
    pub exe: PathBuf,
    /// The factory settings the holder creates its secret with.
    pub policy: Policy,
    /// Run the holder under this `RLIMIT_MEMLOCK` (soft and hard), without `CAP_IPC_LOCK`;
    /// `None`: under the caller's limit and capabilities.
    pub memlock: Option<MemlockLimit>,
    /// Let the holder write a kernel core dump (into its fresh working directory).
    pub core_dumps: bool,
    /// How long any single wait may last before the probe gives up.
    pub timeout: Duration,
}

impl HolderOptions {
    /// Options for `exe` with the default factory's settings, the caller's limits and a 30 s
    /// timeout.
    pub fn new(exe: impl Into<PathBuf>) -> Self {
        HolderOptions {
            exe: exe.into(),
            policy: Policy::default(),
            memlock: None,
            core_dumps: false,
            timeout: Duration::from_secs(30),
        }
    }

    /// The same options with other factory settings.
    #[must_use]
    pub fn with_policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// The same options with another backing.
    #[must_use]
    pub fn with_backing(mut self, backing: BackingArg) -> Self {
        self.policy.backing = backing;
        self
    }

    /// The same options with another mlock policy.
    #[must_use]
    pub fn with_mlock(mut self, mlock: MlockArg) -> Self {
        self.policy.mlock = mlock;
        self
    }

    /// The same options with the holder under `limit` and without `CAP_IPC_LOCK`.
    #[must_use]
    pub fn with_memlock(mut self, limit: Option<MemlockLimit>) -> Self {
        self.memlock = limit;
        self
    }
}

/// A directory removed (with everything in it) when dropped.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates a fresh, private directory under the system temporary directory.
    ///
    /// # Errors
    /// When the directory cannot be created.
    pub fn new(tag: &str) -> std::io::Result<Self> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!(
            "securemem-{tag}-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&path)?;
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        Ok(TempDir(path))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What the holder said about its secret when it started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ready {
    /// The holder's process id.
    pub pid: i32,
    /// The address of the secret's first byte, as an access finds it: in the secret's own
    /// mapping, or, for a sealed secret, in the holder's scratch area (plaintext only during an
    /// access).
    pub addr: usize,
    /// The secret's length.
    pub len: usize,
    /// `secretmem` or `anonymous`: the backing the secret got.
    pub backing: String,
    /// `page-protection`, `protection-key` or `sealed`: the strategy the secret got.
    pub strategy: String,
    /// `Protection::locked`.
    pub locked: bool,
    /// `Protection::dump_excluded`.
    pub dump_excluded: bool,
    /// `Protection::fork_protected`.
    pub fork_protected: bool,
    /// `Protection::guard_pages`.
    pub guard_pages: bool,
    /// `Protection::kernel_invisible`.
    pub kernel_invisible: bool,
    /// `Protection::canary`.
    pub canary: bool,
}

/// What the holder's fault handler reported before the fault killed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    /// The signal (`SIGSEGV`, `SIGBUS`).
    pub signal: i32,
    /// `si_code`: why the CPU refused (`SEGV_MAPERR`, `SEGV_ACCERR`, `SEGV_PKUERR`, ...).
    pub code: i32,
    /// `si_addr`: the address touched.
    pub addr: usize,
}

impl Fault {
    /// Parses the handler's `fault signal=N code=C addr=0x..` line.
    pub fn parse(line: &str) -> Option<Fault> {
        let rest = line.strip_prefix("fault ")?;
        Some(Fault {
            signal: field(rest, "signal")?.parse().ok()?,
            code: field(rest, "code")?.parse().ok()?,
            addr: usize::from_str_radix(field(rest, "addr")?.trim_start_matches("0x"), 16).ok()?,
        })
    }
}

/// How a holder that was expected to die ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Death {
    /// It died: of this signal (`None`: it exited), after its handler reported this fault.
    Died {
        /// The signal that ended it.
        signal: Option<i32>,
        /// What its fault handler reported, if it ran.
        fault: Option<Fault>,
    },
    /// It survived and answered this line.
    Answered(String),
}

/// A running holder process.
pub struct Holder {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    timeout: Duration,
    /// What the holder reported on start.
    pub ready: Ready,
    /// The 32 random bytes in the holder's secret (the parent's plain copy, to scan for).
    pub marker: [u8; MARKER_LEN],
    dir: TempDir,
}

impl std::fmt::Debug for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Holder")
            .field("ready", &self.ready)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn spawn_lines(
    options: &HolderOptions,
    extra: &[String],
    dir: &Path,
) -> Result<(Child, Receiver<String>), ProbeError> {
    let mut cmd = Command::new(&options.exe);
    cmd.arg("holder")
        .args(options.policy.args())
        .args(extra)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if options.core_dumps {
        cmd.arg("--core-dumps");
    }
    if let Some(limit) = options.memlock {
        cmd.arg("--drop-ipc-lock")
            .arg("--memlock-limit")
            .arg(limit.to_string());
    }
    // SAFETY: only async-signal-safe calls (setrlimit) run between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            // The holder raises its soft limit to this hard limit itself; try to make it
            // unlimited here, which only works where the hard limit is already unlimited.
            let r = libc::rlimit {
                rlim_cur: libc::RLIM_INFINITY,
                rlim_max: libc::RLIM_INFINITY,
            };
            libc::setrlimit(libc::RLIMIT_CORE, &r);
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| ProbeError::Broken(format!("spawning {}: {e}", options.exe.display())))?;
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Ok((child, rx))
}

fn recv(lines: &Receiver<String>, timeout: Duration, what: &str) -> Result<String, ProbeError> {
    match lines.recv_timeout(timeout) {
        Ok(line) => Ok(line),
        Err(RecvTimeoutError::Timeout) => Err(ProbeError::Broken(format!(
            "the holder did not answer within {timeout:?} (waiting for {what})"
        ))),
        Err(RecvTimeoutError::Disconnected) => Err(ProbeError::Broken(format!(
            "the holder closed its output (waiting for {what})"
        ))),
    }
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

fn parse_ready(marker: &str, line: &str) -> Option<(Ready, [u8; MARKER_LEN])> {
    let flag = |k: &str| field(line, k).map(|v| v == "true");
    let ready = Ready {
        pid: field(line, "pid")?.parse().ok()?,
        addr: usize::from_str_radix(field(line, "addr")?.trim_start_matches("0x"), 16).ok()?,
        len: field(line, "len")?.parse().ok()?,
        backing: field(line, "backing")?.to_string(),
        strategy: field(line, "strategy")?.to_string(),
        locked: flag("locked")?,
        dump_excluded: flag("dump_excluded")?,
        fork_protected: flag("fork_protected")?,
        guard_pages: flag("guard_pages")?,
        kernel_invisible: flag("kernel_invisible")?,
        canary: flag("canary")?,
    };
    let marker = decode_hex(marker.strip_prefix("marker ")?)?;
    Some((ready, marker.try_into().ok()?))
}

/// Parses what follows `refused ` in a holder's first line: the error's variant name, then its
/// message.
fn parse_refusal(rest: &str) -> Option<Refusal> {
    let (error, message) = rest.split_once(' ')?;
    Some(Refusal {
        error: error.to_string(),
        message: message.to_string(),
    })
}

/// Decodes lowercase or uppercase hex.
pub fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if hex.len() % 2 != 0 {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

impl Ready {
    /// Whether the secret is sealed (`Strategy::Sealed`): ciphertext at rest, the plaintext at
    /// [`addr`](Self::addr) only during an access.
    pub fn sealed(&self) -> bool {
        self.strategy == crate::holder::strategy_name(securememory::Strategy::Sealed)
    }
}

impl Holder {
    /// Starts a holder in a fresh temporary directory and waits for its `ready` line.
    ///
    /// # Errors
    /// [`ProbeError::Refused`] when the library refused to create the secret with these
    /// settings; [`ProbeError::Broken`] when the holder cannot be started or does not report
    /// ready in time.
    pub fn spawn(options: &HolderOptions) -> Result<Holder, ProbeError> {
        let dir = TempDir::new("holder")
            .map_err(|e| ProbeError::Broken(format!("creating a temporary directory: {e}")))?;
        let (mut child, lines) = spawn_lines(options, &[], dir.path())?;
        let stdin = child.stdin.take();
        let first = recv(&lines, options.timeout, "marker");
        let second = match &first {
            Ok(m) if m.starts_with("marker ") => recv(&lines, options.timeout, "ready"),
            Ok(m) => Ok(m.clone()),
            Err(e) => Err(e.clone()),
        };
        let (marker, line) = match (first, second) {
            (Ok(m), Ok(l)) => (m, l),
            (Err(e), _) | (_, Err(e)) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        };
        if let Some(refusal) = marker.strip_prefix("refused ").and_then(parse_refusal) {
            let _ = wait_with_timeout(&mut child, options.timeout);
            return Err(ProbeError::Refused(refusal));
        }
        let Some((ready, marker)) = parse_ready(&marker, &line) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(ProbeError::Broken(format!(
                "the holder did not start: {}",
                line.strip_prefix("error ").unwrap_or(&line)
            )));
        };
        Ok(Holder {
            child,
            stdin,
            lines,
            timeout: options.timeout,
            ready,
            marker,
            dir,
        })
    }

    /// The holder's process id.
    pub fn pid(&self) -> i32 {
        self.ready.pid
    }

    /// The holder's working directory, where a kernel core dump lands.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Sends one command line without waiting for an answer.
    ///
    /// # Errors
    /// [`ProbeError::Broken`] when the holder's input is closed.
    pub fn send(&mut self, command: &str) -> Result<(), ProbeError> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| ProbeError::Broken("holder input already closed".into()))?;
        stdin
            .write_all(format!("{command}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .map_err(|e| ProbeError::Broken(format!("sending {command:?} to the holder: {e}")))
    }

    /// Waits for the next answer line.
    ///
    /// # Errors
    /// [`ProbeError::Broken`] on timeout or when the holder's output ends.
    pub fn answer(&mut self, what: &str) -> Result<String, ProbeError> {
        recv(&self.lines, self.timeout, what)
    }

    /// Sends `command` and waits for an answer that starts with `expected`.
    ///
    /// # Errors
    /// [`ProbeError::Broken`] on timeout or another answer.
    pub fn call(&mut self, command: &str, expected: &str) -> Result<String, ProbeError> {
        self.send(command)?;
        let line = self.answer(command)?;
        if line.starts_with(expected) {
            Ok(line)
        } else {
            Err(ProbeError::Broken(format!(
                "holder answered {line:?} to {command:?} (expected {expected:?})"
            )))
        }
    }

    /// Enters an access and stays inside it; returns where the bytes are during the access.
    ///
    /// # Errors
    /// As for [`call`](Self::call), and an answer without the address.
    pub fn enter(&mut self) -> Result<usize, ProbeError> {
        let line = self.call("enter", "inside")?;
        field(&line, "addr")
            .and_then(|a| usize::from_str_radix(a.trim_start_matches("0x"), 16).ok())
            .ok_or_else(|| ProbeError::Broken(format!("holder answered {line:?} to \"enter\"")))
    }

    /// Leaves the access entered with [`enter`](Self::enter).
    ///
    /// # Errors
    /// As for [`call`](Self::call).
    pub fn leave(&mut self) -> Result<(), ProbeError> {
        self.call("leave", "left").map(drop)
    }

    /// Sends `command`, which should kill the holder, and waits for it to die or answer.
    ///
    /// # Errors
    /// [`ProbeError::Broken`] on a timeout.
    pub fn expect_death(&mut self, command: &str) -> Result<Death, ProbeError> {
        self.send(command)?;
        self.await_death(command)
    }

    /// Waits for the holder to die or answer after `command` (already sent). A `fault` line of
    /// its fault handler is taken as the cause of the death that follows it.
    ///
    /// # Errors
    /// [`ProbeError::Broken`] on a timeout.
    pub fn await_death(&mut self, command: &str) -> Result<Death, ProbeError> {
        let mut fault = None;
        loop {
            match self.lines.recv_timeout(self.timeout) {
                Ok(line) => match Fault::parse(&line) {
                    Some(f) if fault.is_none() => fault = Some(f),
                    _ => return Ok(Death::Answered(line)),
                },
                Err(RecvTimeoutError::Disconnected) => {
                    return Ok(Death::Died {
                        signal: self.wait_signal()?,
                        fault,
                    })
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(ProbeError::Broken(format!(
                        "the holder neither died nor answered within {:?} after {command:?}",
                        self.timeout
                    )))
                }
            }
        }
    }

    /// Waits (with the timeout) for the holder to exit, killing it when it does not.
    ///
    /// # Errors
    /// [`ProbeError::Broken`] when it had to be killed.
    pub fn wait_exit(&mut self) -> Result<ExitStatus, ProbeError> {
        wait_with_timeout(&mut self.child, self.timeout)
    }

    /// The number of the signal that ended the holder, waiting for it to end.
    ///
    /// # Errors
    /// As for [`wait_exit`](Self::wait_exit).
    pub fn wait_signal(&mut self) -> Result<Option<i32>, ProbeError> {
        Ok(self.wait_exit()?.signal())
    }
}

/// Waits for `child` for at most `timeout`; kills it (and fails) when it runs longer.
///
/// # Errors
/// [`ProbeError::Broken`] on timeout or a failed wait.
pub fn wait_with_timeout(child: &mut Child, timeout: Duration) -> Result<ExitStatus, ProbeError> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(ProbeError::Broken(format!(
                    "process {} still running after {timeout:?}; killed",
                    child.id()
                )));
            }
            Err(e) => return Err(ProbeError::Broken(format!("waiting for a process: {e}"))),
        }
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        drop(self.stdin.take());
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Runs a holder in memlock-limit mode: without CAP_IPC_LOCK, with `RLIMIT_MEMLOCK` set to
/// `limit` bytes (whatever `options.memlock` says), creating up to `count` secrets. Returns its
/// answer lines (up to `done`).
///
/// # Errors
/// [`ProbeError::Broken`] when it cannot be run or hangs.
pub fn run_fill(
    options: &HolderOptions,
    limit: u64,
    count: usize,
) -> Result<Vec<String>, ProbeError> {
    let dir = TempDir::new("fill")
        .map_err(|e| ProbeError::Broken(format!("creating a temporary directory: {e}")))?;
    let options = options
        .clone()
        .with_memlock(Some(MemlockLimit::Bytes(limit)));
    let extra = ["--fill".to_string(), count.to_string()];
    let (mut child, lines) = spawn_lines(&options, &extra, dir.path())?;
    drop(child.stdin.take());
    let mut out = Vec::new();
    loop {
        match recv(&lines, options.timeout, "done") {
            Ok(line) if line == "done" => break,
            Ok(line) => {
                // An error before the first secret ("error <message>", no index) means the
                // holder could not even set up the limit.
                let starting_error = line.starts_with("error ")
                    && line
                        .split_whitespace()
                        .nth(1)
                        .is_none_or(|w| w.parse::<usize>().is_err());
                out.push(line);
                if starting_error {
                    break;
                }
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        }
    }
    wait_with_timeout(&mut child, options.timeout)?;
    Ok(out)
}
