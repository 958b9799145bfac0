//! The holder: a small program that keeps one secret and obeys commands, so that probes in
//! another process can attack it.
//!
//! It runs as the hidden `securemem holder` subcommand. On start it creates a secret holding a
//! fresh random 32-byte marker (generated in place by `create_random`), reads it once inside an
//! access to send its hex to the parent over the stdout pipe (`marker <64 hex digits>`), wipes
//! that copy, and, once the access has ended, prints one `ready` line:
//!
//! ```text
//! ready pid=1234 addr=0x7f.. len=32 backing=secretmem strategy=protection-key locked=true
//!       dump_excluded=true fork_protected=true guard_pages=true kernel_invisible=true canary=true
//! ```
//!
//! `addr` is where an access finds the bytes: the secret's own mapping, or, for a sealed secret
//! (`strategy=sealed`), the holder's main thread's scratch area, which holds the plaintext only
//! during an access.
//!
//! Then it reads one command per line on stdin and answers one line on stdout. When the holder
//! touches memory it may not (the point of several commands), its SIGSEGV/SIGBUS handler first
//! writes `fault signal=N code=C addr=0x..` (the signal, `si_code` and `si_addr`) and then lets
//! the fault kill the process, so the probe learns both how it died and why the CPU refused:
//!
//! | command | what it does | answer |
//! |---|---|---|
//! | `enter` | enters `with_bytes` and stays inside, obeying commands, until `leave` | `inside addr=0x.. len=N` (where the bytes are during the access) |
//! | `leave` | (inside only) ends the access | `left` |
//! | `abort` | `std::process::abort()` (a kernel core dump), inside an access or not | — |
//! | `close` | `Secret::close` | `closed` or `error <message>` |
//! | `fork [0xADDR [0xKEY]]` | forks; the child reads the secret through the API and the raw pages at `ADDR` (default: where an access finds the bytes; opening every protection key first where the secret has one); given the address of a sealed secret's key page, it searches its memory for an expanded key, makes that page readable too (opening every key where the CPU has them) and reads it whole | `child api=.. raw=..` (with ` keys=opened` where it opened them; for a key page ` schedules=N`, the places of the child's memory that hold an expanded AES-256 key, and ` key=unmapped\|zeros\|bytes`), then `forked` |
//! | `touch [0xADDR]` | reads the secret's length in bytes at the address an access gives (or at `ADDR`) outside an access | dies of SIGSEGV, or `touched zeros` / `touched bytes=<hex>` |
//! | `rewrite` | `with_bytes_mut` that changes nothing (a sealed secret is sealed again, under a fresh nonce) | `rewritten` |
//! | `open` | `with_bytes` that reads nothing | `open with_bytes=R`, `R` being `Ok` or the error's variant name |
//! | `read-from-another-thread` | a second thread enters `with_bytes` and hands out the bytes' address; this thread reads them raw while that access runs | `reading addr=0x.. len=N`, then dies of SIGSEGV, or `read len=N` |
//! | `overflow` | writes one byte past the end inside `with_bytes_mut` | dies of SIGSEGV, or `overflowed` |
//! | `underflow` | writes one byte before the data page inside `with_bytes_mut` | dies of SIGSEGV, or `underflowed` |
//! | `underflow-in-page` | inside `with_bytes_mut`, flips the byte right before the secret (inside its data page, where the canary is), then `close`s | `underflow-in-page with_bytes_mut=R close=R`, each `R` being `Ok`, `Corrupted` or another error's variant name; dies of SIGSEGV when that byte is not mapped |
//! | `exit` | exits 0 | `bye` |
//!
//! When the library refuses to create the secret (for example `MlockPolicy::Required` under a
//! locked-memory limit it cannot meet), the holder prints `refused <error variant> <message>`
//! instead of the marker and exits with [`EXIT_REFUSED`].
//!
//! In memlock-limit mode (`--fill N`) it instead creates up to `N` small secrets and answers one
//! line per secret (`created I backing=.. strategy=.. locked=..` or `error I <message>`), then
//! `done`.

use crate::limits::MemlockLimit;
use securememory::{
    Backing, MlockPolicy, ProtectedMemorySecretFactory, Secret, SecretFactory, Strategy,
};
use std::io::{self, Write};
use std::sync::mpsc;

/// The length of the marker secret, in bytes.
pub const MARKER_LEN: usize = 32;

/// Where the holder's secret lives (the factory's `Backing`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackingArg {
    /// `Backing::Auto`: secret memory where available, anonymous memory otherwise.
    #[default]
    Auto,
    /// `Backing::Anonymous`.
    Anonymous,
    /// `Backing::SecretMem`.
    Secretmem,
}

impl BackingArg {
    /// The library's value.
    pub fn backing(self) -> Backing {
        match self {
            BackingArg::Auto => Backing::Auto,
            BackingArg::Anonymous => Backing::Anonymous,
            BackingArg::Secretmem => Backing::SecretMem,
        }
    }

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            BackingArg::Auto => "auto",
            BackingArg::Anonymous => "anonymous",
            BackingArg::Secretmem => "secretmem",
        }
    }

    /// The library's name for the value (`Backing::Auto`).
    pub fn rust_name(self) -> &'static str {
        match self {
            BackingArg::Auto => "Backing::Auto",
            BackingArg::Anonymous => "Backing::Anonymous",
            BackingArg::Secretmem => "Backing::SecretMem",
        }
    }
}

/// What the holder's factory does when memory cannot be locked (the factory's `MlockPolicy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MlockArg {
    /// `MlockPolicy::Required` (the default factory's policy).
    #[default]
    Required,
    /// `MlockPolicy::BestEffort`.
    BestEffort,
    /// `MlockPolicy::Disabled`.
    Disabled,
}

impl MlockArg {
    /// The library's value.
    pub fn policy(self) -> MlockPolicy {
        match self {
            MlockArg::Required => MlockPolicy::Required,
            MlockArg::BestEffort => MlockPolicy::BestEffort,
            MlockArg::Disabled => MlockPolicy::Disabled,
        }
    }

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            MlockArg::Required => "required",
            MlockArg::BestEffort => "best-effort",
            MlockArg::Disabled => "disabled",
        }
    }

    /// The library's name for the value (`MlockPolicy::Required`).
    pub fn rust_name(self) -> &'static str {
        match self {
            MlockArg::Required => "MlockPolicy::Required",
            MlockArg::BestEffort => "MlockPolicy::BestEffort",
            MlockArg::Disabled => "MlockPolicy::Disabled",
        }
    }
}

/// How an access opens the holder's secret (the factory's `Strategy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StrategyArg {
    /// `Strategy::Auto`: protection keys for secrets in secret memory on a CPU that has them,
    /// page protection otherwise (`securememory::system::auto_strategy` says which, and why).
    #[default]
    Auto,
    /// `Strategy::PageProtection`.
    PageProtection,
    /// `Strategy::ProtectionKey`.
    ProtectionKey,
    /// `Strategy::Sealed`: AES-256-GCM ciphertext at rest, decrypted into the calling thread's
    /// scratch area for the duration of an access.
    Sealed,
}

impl StrategyArg {
    /// The library's value.
    pub fn strategy(self) -> Strategy {
        match self {
            StrategyArg::Auto => Strategy::Auto,
            StrategyArg::PageProtection => Strategy::PageProtection,
            StrategyArg::ProtectionKey => Strategy::ProtectionKey,
            StrategyArg::Sealed => Strategy::Sealed,
        }
    }

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        strategy_name(self.strategy())
    }

    /// The library's name for the value (`Strategy::Auto`).
    pub fn rust_name(self) -> &'static str {
        match self {
            StrategyArg::Auto => "Strategy::Auto",
            StrategyArg::PageProtection => "Strategy::PageProtection",
            StrategyArg::ProtectionKey => "Strategy::ProtectionKey",
            StrategyArg::Sealed => "Strategy::Sealed",
        }
    }
}

/// The command-line spelling of a library strategy, also used in the holder's `ready` line and
/// the JSON report (`protection-key`).
pub fn strategy_name(strategy: Strategy) -> &'static str {
    match strategy {
        Strategy::Auto => "auto",
        Strategy::PageProtection => "page-protection",
        Strategy::ProtectionKey => "protection-key",
        Strategy::Sealed => "sealed",
        _ => "unknown",
    }
}

/// The factory settings a holder creates its secret with: what an application passes to
/// `ProtectedMemorySecretFactory::builder()`. Shared by `doctor` and `holder`, and passed from
/// one to the other by [`Policy::args`], so a new setting is added here once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::Args, serde::Serialize)]
pub struct Policy {
    /// The backing (`Backing::Auto`, the library's default, uses secret memory where the kernel
    /// offers it).
    #[arg(long, value_enum, default_value_t = BackingArg::Auto)]
    pub backing: BackingArg,
    /// What to do when memory cannot be locked (`MlockPolicy::Required`, the library's default,
    /// fails the secret).
    #[arg(long, value_enum, default_value_t = MlockArg::Required)]
    pub mlock: MlockArg,
    /// How an access opens a secret (`Strategy::Auto`, the library's default, uses protection
    /// keys for secrets in secret memory on a CPU that has them).
    #[arg(long, value_enum, default_value_t = StrategyArg::Auto)]
    pub strategy: StrategyArg,
}

impl Policy {
    /// The factory with these settings: the library's default factory itself when they are
    /// the defaults.
    pub fn factory(&self) -> ProtectedMemorySecretFactory {
        if *self == Policy::default() {
            ProtectedMemorySecretFactory::default()
        } else {
            ProtectedMemorySecretFactory::builder()
                .backing(self.backing.backing())
                .mlock(self.mlock.policy())
                .strategy(self.strategy.strategy())
                .build()
        }
    }

    /// The holder's command-line arguments for these settings.
    pub fn args(&self) -> Vec<String> {
        vec![
            "--backing".into(),
            self.backing.name().into(),
            "--mlock".into(),
            self.mlock.name().into(),
            "--strategy".into(),
            self.strategy.name().into(),
        ]
    }

    /// The settings as the library spells them.
    pub fn describe(&self) -> String {
        format!(
            "{}, {}, {}",
            self.backing.rust_name(),
            self.mlock.rust_name(),
            self.strategy.rust_name()
        )
    }
}

/// The holder's command line (`securemem holder ...`).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct HolderArgs {
    /// The factory's settings.
    #[command(flatten)]
    pub policy: Policy,
    /// Raise the soft core-dump limit to the hard one (otherwise it is set to 0, so that the
    /// fault probes do not spend time writing dumps).
    #[arg(long)]
    pub core_dumps: bool,
    /// Drop CAP_IPC_LOCK from this process before anything else, so RLIMIT_MEMLOCK applies
    /// even to root.
    #[arg(long)]
    pub drop_ipc_lock: bool,
    /// Set RLIMIT_MEMLOCK (soft and hard) to this many bytes (or `unlimited`).
    #[arg(long)]
    pub memlock_limit: Option<MemlockLimit>,
    /// Memlock-limit mode: create up to this many 32-byte secrets, report each, and exit.
    #[arg(long)]
    pub fill: Option<usize>,
}

/// The exit code of a holder whose secret the library refused to create (after its `refused`
/// line).
pub const EXIT_REFUSED: i32 = 3;

/// Runs the holder; returns the process exit code.
pub fn run(args: &HolderArgs) -> i32 {
    match run_inner(args) {
        Ok(()) => 0,
        Err(Stop::Refused) => EXIT_REFUSED,
        Err(Stop::Error(message)) => {
            let _ = send(&format!("error {}", one_line(&message)));
            1
        }
    }
}

/// Why the holder stopped early.
enum Stop {
    /// The library refused to create the secret; the `refused` line has been sent.
    Refused,
    /// Anything else, to be sent as an `error` line.
    Error(String),
}

impl From<String> for Stop {
    fn from(message: String) -> Self {
        Stop::Error(message)
    }
}

fn one_line(message: &str) -> String {
    message.replace(['\n', '\r'], " ")
}

fn run_inner(args: &HolderArgs) -> Result<(), Stop> {
    if args.drop_ipc_lock {
        crate::sys::drop_ipc_lock()
            .map_err(|e| format!("capset (dropping CAP_IPC_LOCK) failed: {e}"))?;
    }
    if let Some(limit) = args.memlock_limit {
        let value = limit.rlimit();
        crate::sys::set_rlimit(libc::RLIMIT_MEMLOCK, value, Some(value))
            .map_err(|e| format!("setrlimit(RLIMIT_MEMLOCK, {limit}) failed: {e}"))?;
    }
    let (_, core_hard) = crate::sys::get_rlimit(libc::RLIMIT_CORE);
    let core_soft = if args.core_dumps { core_hard } else { Some(0) };
    crate::sys::set_rlimit(libc::RLIMIT_CORE, core_soft.unwrap_or(u64::MAX), None)
        .map_err(|e| format!("setrlimit(RLIMIT_CORE) failed: {e}"))?;

    let factory = args.policy.factory();
    if let Some(count) = args.fill {
        fill(&factory, count);
        return Ok(());
    }
    let secret = match SecretFactory::create_random(&factory, MARKER_LEN) {
        Ok(secret) => secret,
        Err(e) => {
            // The library's own verdict on this policy and these limits, not a failure of the
            // holder: an application with the same settings would get this error.
            let _ = send(&format!(
                "refused {} {}",
                variant_name(&e),
                one_line(&e.to_string())
            ));
            return Err(Stop::Refused);
        }
    };
    announce(&secret)?;
    report_faults()?;
    Ok(serve(&secret)?)
}

fn fill(factory: &ProtectedMemorySecretFactory, count: usize) {
    let mut kept = Vec::with_capacity(count);
    for i in 0..count {
        match SecretFactory::create_random(factory, MARKER_LEN) {
            Ok(secret) => {
                let p = secret.protection();
                let _ = send(&format!(
                    "created {i} backing={} strategy={} locked={}",
                    backing_name(p.backing),
                    strategy_name(p.strategy),
                    p.locked
                ));
                kept.push(secret);
            }
            Err(e) => {
                let _ = send(&format!("error {i} {}", one_line(&e.to_string())));
                break;
            }
        }
    }
    let _ = send("done");
}

fn backing_name(backing: Backing) -> &'static str {
    match backing {
        Backing::SecretMem => "secretmem",
        Backing::Anonymous => "anonymous",
        _ => "auto",
    }
}

/// Sends the marker, then the `ready` line. The marker's hex is built in a stack buffer inside
/// the access and written with one `write(2)` (not through std's buffered stdout, whose heap
/// buffer would keep a copy), then the buffer is wiped. `ready` is sent only after the access
/// has ended, so a probe that reads it knows the secret is idle.
fn announce(secret: &Secret) -> Result<(), String> {
    let p = secret.protection();
    let addr = address(secret)?;
    let mut line = [0u8; 8 + 2 * MARKER_LEN];
    let written = secret
        .with_bytes(|bytes| {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            line[..7].copy_from_slice(b"marker ");
            for (i, &b) in bytes.iter().enumerate().take(MARKER_LEN) {
                line[7 + 2 * i] = HEX[usize::from(b >> 4)];
                line[7 + 2 * i + 1] = HEX[usize::from(b & 15)];
            }
            line[7 + 2 * MARKER_LEN] = b'\n';
            write_all_raw(&line)
        })
        .map_err(|e| format!("with_bytes: {e}"));
    wipe(&mut line);
    written?.map_err(|e| format!("write: {e}"))?;
    send(&format!(
        "ready pid={} addr={addr:#x} len={} backing={} strategy={} locked={} dump_excluded={} \
         fork_protected={} guard_pages={} kernel_invisible={} canary={}",
        std::process::id(),
        secret.len(),
        backing_name(p.backing),
        strategy_name(p.strategy),
        p.locked,
        p.dump_excluded,
        p.fork_protected,
        p.guard_pages,
        p.kernel_invisible,
        p.canary,
    ))
    .map_err(|e| format!("write: {e}"))
}

fn wipe(buf: &mut [u8]) {
    zeroize::Zeroize::zeroize(buf);
}

fn write_all_raw(mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: writes from a valid slice to the stdout descriptor.
        let n = unsafe { libc::write(1, buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        buf = &buf[n as usize..];
    }
    Ok(())
}

fn send(line: &str) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(line.as_bytes())?;
    out.write_all(b"\n")?;
    out.flush()
}

/// Reads one command line from stdin with `read(2)`, one byte at a time, so no buffered reader
/// holds input across a fork. `None` at end of input.
fn command() -> Option<String> {
    let mut line = Vec::new();
    loop {
        let mut byte = 0u8;
        // SAFETY: reads one byte into a valid local.
        let n = unsafe { libc::read(0, (&raw mut byte).cast(), 1) };
        if n < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return None;
        }
        if n == 0 {
            return (!line.is_empty()).then(|| String::from_utf8_lossy(&line).into_owned());
        }
        if byte == b'\n' {
            return Some(String::from_utf8_lossy(&line).trim().to_string());
        }
        line.push(byte);
    }
}

fn serve(secret: &Secret) -> Result<(), String> {
    while let Some(line) = command() {
        let mut words = line.split_whitespace();
        let cmd = words.next().unwrap_or_default();
        let Some(addresses) = words.map(parse_address).collect::<Option<Vec<usize>>>() else {
            send(&format!("error not an address: {line}")).map_err(|e| e.to_string())?;
            continue;
        };
        match cmd {
            "enter" => {
                let result = secret.with_bytes(|bytes| {
                    let _ = send(&format!(
                        "inside addr={:#x} len={}",
                        bytes.as_ptr() as usize,
                        bytes.len()
                    ));
                    while let Some(inner) = command() {
                        match inner.as_str() {
                            "leave" => break,
                            "abort" => std::process::abort(),
                            other => {
                                let _ = send(&format!("error unknown command inside: {other}"));
                            }
                        }
                    }
                });
                match result {
                    Ok(()) => send("left"),
                    Err(e) => send(&format!("error {e}")),
                }
            }
            "abort" => std::process::abort(),
            "close" => match secret.close() {
                Ok(()) => send("closed"),
                Err(e) => send(&format!("error {}", one_line(&e.to_string()))),
            },
            "fork" => fork_and_read(
                secret,
                addresses.first().copied(),
                addresses.get(1).copied(),
            ),
            "touch" => {
                let addr = match addresses.first() {
                    Some(&addr) => addr,
                    None => address(secret)?,
                };
                touch(addr, secret.len())
            }
            "rewrite" => match secret.with_bytes_mut(|_| ()) {
                Ok(()) => send("rewritten"),
                Err(e) => send(&format!("error {}", one_line(&e.to_string()))),
            },
            "open" => send(&format!(
                "open with_bytes={}",
                outcome(&secret.with_bytes(|_| ()))
            )),
            "overflow" | "underflow" => {
                let r = secret.with_bytes_mut(|bytes| {
                    let target = if cmd == "overflow" {
                        bytes.as_mut_ptr() as usize + bytes.len()
                    } else {
                        (bytes.as_mut_ptr() as usize & !(crate::sys::page_size() - 1)) - 1
                    };
                    // SAFETY: deliberately not safe: writes one byte outside the secret's data
                    // to show that the guard page faults.
                    unsafe { std::ptr::write_volatile(target as *mut u8, 0x5a) };
                });
                match r {
                    Ok(()) => send(&format!("{cmd}ed")),
                    Err(e) => send(&format!("error {e}")),
                }
            }
            "underflow-in-page" => underflow_in_page(secret),
            "read-from-another-thread" => read_from_another_thread(secret),
            "exit" => {
                send("bye").map_err(|e| e.to_string())?;
                return Ok(());
            }
            _ => send(&format!("error unknown command: {line}")),
        }
        .map_err(|e| format!("write: {e}"))?;
    }
    Ok(())
}

/// `0x`-prefixed hex, as the holder prints addresses.
fn parse_address(text: &str) -> Option<usize> {
    usize::from_str_radix(text.strip_prefix("0x")?, 16).ok()
}

/// Reads `len` bytes at `addr` outside any access and answers what they hold: `touched zeros`,
/// or `touched bytes=<hex>` built on the stack (no heap copy of what might be the secret).
/// Where the memory is protected, the first read faults and the fault handler answers instead.
fn touch(addr: usize, len: usize) -> io::Result<()> {
    let mut raw = [0u8; MARKER_LEN];
    let len = len.min(MARKER_LEN);
    for (i, r) in raw.iter_mut().enumerate().take(len) {
        // SAFETY: deliberately not safe: reads memory that may be the secret's outside an
        // access, to show that it faults or holds nothing. Surviving a read of the secret is
        // the failure being probed for.
        *r = unsafe { std::ptr::read_volatile((addr + i) as *const u8) };
    }
    let mut line = RawLine::new();
    if raw[..len].iter().all(|&b| b == 0) {
        line.put(b"touched zeros\n");
    } else {
        let mut hexed = [0u8; 2 * MARKER_LEN];
        hex_into(&raw[..len], &mut hexed[..2 * len]);
        line.put(b"touched bytes=");
        line.put(&hexed[..2 * len]);
        line.put(b"\n");
        wipe(&mut hexed);
    }
    wipe(&mut raw);
    let written = write_all_raw(line.bytes());
    wipe(&mut line.buf);
    written
}

/// Installs the handler that reports a memory fault before it kills the holder: it writes
/// `fault signal=N code=C addr=0x..` to stdout and returns. `SA_RESETHAND` has restored the
/// default action by then, so the faulting instruction runs again and the fault kills the
/// process as it would have without the handler: the probe sees the death and learns its cause.
fn report_faults() -> Result<(), String> {
    for signal in [libc::SIGSEGV, libc::SIGBUS] {
        // SAFETY: an all-zero sigaction is a valid value (no handler, no flags, empty mask).
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = on_fault as *const () as libc::sighandler_t;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_RESETHAND;
        // SAFETY: installs a handler with the three-argument signature SA_SIGINFO calls for;
        // the mask was zeroed above, which is an empty set.
        if unsafe { libc::sigaction(signal, &action, std::ptr::null_mut()) } != 0 {
            return Err(format!("sigaction: {}", io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// The fault handler: only async-signal-safe work (a stack buffer and one `write(2)`).
extern "C" fn on_fault(signal: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let (code, addr) = if info.is_null() {
        (0, 0)
    } else {
        // SAFETY: the kernel passes a valid siginfo_t for SA_SIGINFO handlers; si_addr is the
        // faulting address for SIGSEGV and SIGBUS.
        unsafe { ((*info).si_code, (*info).si_addr() as usize) }
    };
    let mut line = RawLine::new();
    line.put(b"fault signal=");
    line.put_decimal(signal.unsigned_abs().into());
    line.put(b" code=");
    line.put_decimal(code.unsigned_abs().into());
    line.put(b" addr=0x");
    line.put_hex(addr as u64);
    line.put(b"\n");
    let _ = write_all_raw(line.bytes());
}

/// A line built on the stack, for the fault handler and the forked child, where nothing may
/// allocate.
struct RawLine {
    buf: [u8; 256],
    len: usize,
}

impl RawLine {
    fn new() -> Self {
        RawLine {
            buf: [0; 256],
            len: 0,
        }
    }

    fn put(&mut self, s: &[u8]) {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s[..n]);
        self.len += n;
    }

    fn put_decimal(&mut self, mut v: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.put(&digits[i..]);
    }

    fn put_hex(&mut self, v: u64) {
        let mut digits = [0u8; 16];
        let mut i = digits.len();
        let mut v = v;
        loop {
            i -= 1;
            digits[i] = b"0123456789abcdef"[(v & 15) as usize];
            v >>= 4;
            if v == 0 {
                break;
            }
        }
        self.put(&digits[i..]);
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// A second thread enters `with_bytes`, hands this thread the address of the bytes and waits
/// inside the access; this thread, which holds no access, reads them raw meanwhile. Under a
/// protection key only the thread that opened the access may touch them, so the read faults;
/// page protection opens the pages to every thread while any access runs, so it goes through.
fn read_from_another_thread(secret: &Secret) -> io::Result<()> {
    let (inside_tx, inside_rx) = mpsc::channel::<(usize, usize)>();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    std::thread::scope(|scope| {
        // Created before the access it makes, so this thread's rights are not the ones that
        // access opens (a thread created inside an access would inherit them).
        let access = scope.spawn(move || {
            secret.with_bytes(|bytes| {
                let _ = inside_tx.send((bytes.as_ptr() as usize, bytes.len()));
                let _ = done_rx.recv();
            })
        });
        let Ok((addr, len)) = inside_rx.recv() else {
            return match access.join() {
                Ok(Err(e)) => send(&format!("error with_bytes: {}", one_line(&e.to_string()))),
                _ => send("error the access thread ended without entering"),
            };
        };
        let announced = send(&format!("reading addr={addr:#x} len={len}"));
        if announced.is_ok() {
            let mut folded = 0u8;
            for i in 0..len {
                let byte = std::ptr::with_exposed_provenance::<u8>(addr + i);
                // SAFETY: deliberately not safe: this thread holds no access to the secret and
                // reads its bytes while another thread's access runs, to show that the read
                // faults. The address was exposed by the `as usize` cast inside that access.
                folded |= unsafe { std::ptr::read_volatile(byte) };
            }
            std::hint::black_box(folded);
        }
        // Ends the other thread's access on every path, so the scope can end.
        drop(done_tx);
        let ended = access.join();
        announced?;
        match ended {
            Ok(Ok(())) => send(&format!("read len={len}")),
            Ok(Err(e)) => send(&format!("error with_bytes: {}", one_line(&e.to_string()))),
            Err(_) => send("error the access thread panicked"),
        }
    })
}

/// Writes one byte right below the secret's first byte, inside its data page, from inside a
/// write access, then closes the secret; answers with what `with_bytes_mut` and `close` returned.
fn underflow_in_page(secret: &Secret) -> io::Result<()> {
    let written = secret.with_bytes_mut(|bytes| {
        // Deliberately out of bounds: the byte just before the slice, in the same (writable)
        // data page, where the library keeps its canary. No guard page stands there, so only
        // the canary check can notice the write. The address comes from the exposed
        // provenance of the slice's mapping (the `as usize` cast exposes it).
        let below = std::ptr::with_exposed_provenance_mut::<u8>(bytes.as_ptr() as usize - 1);
        // SAFETY: deliberately not safe: a stray write just outside the slice, to show that
        // the canary catches it. The byte lies in the mapped, writable data page (or faults on
        // the leading guard page, which the probe reports); nothing in this process holds a
        // reference to it. The value is inverted so the byte changes whatever it held.
        unsafe { std::ptr::write_volatile(below, !std::ptr::read_volatile(below)) };
    });
    let closed = secret.close();
    send(&format!(
        "underflow-in-page with_bytes_mut={} close={}",
        outcome(&written),
        outcome(&closed)
    ))
}

/// `Ok`, or the library error's variant name (one word, for the answer line).
fn outcome<T>(result: &Result<T, securememory::Error>) -> String {
    match result {
        Ok(_) => "Ok".into(),
        Err(e) => variant_name(e),
    }
}

/// The library error's variant name, one word.
fn variant_name(error: &securememory::Error) -> String {
    if let securememory::Error::Corrupted = error {
        return "Corrupted".into();
    }
    let debug = format!("{error:?}");
    let name: String = debug
        .chars()
        .take_while(char::is_ascii_alphanumeric)
        .collect();
    if name.is_empty() {
        "Error".into()
    } else {
        name
    }
}

fn address(secret: &Secret) -> Result<usize, String> {
    secret
        .with_bytes(|b| b.as_ptr() as usize)
        .map_err(|e| format!("with_bytes: {e}"))
}

/// Forks. The child tries the API (`with_bytes`, which must refuse), then does what an attacker
/// in the child could: makes the inherited page at `at` (by default where an access finds the
/// bytes) readable (and, under a protection key, opens every key) and reads it raw; given
/// `key_page` (where a sealed secret's key lives in the parent), it searches its memory for an
/// expanded key, does the same to that page and says whether it holds anything. It reports and
/// exits; the parent waits for it and answers `forked`. Given `at`, the parent forks without
/// touching the secret first, so the child inherits the process as it was left.
fn fork_and_read(secret: &Secret, at: Option<usize>, key_page: Option<usize>) -> io::Result<()> {
    let addr = match at.map_or_else(|| address(secret), Ok) {
        Ok(a) => a,
        Err(e) => return send(&format!("error {e}")),
    };
    let page = crate::sys::page_size();
    let keyed = secret.protection().strategy == Strategy::ProtectionKey;
    // A sealed secret's key page carries the library's protection key wherever the CPU has
    // them. Asked here, so that the child asks the library nothing but for the bytes.
    let keys_here = key_page.is_some() && securememory::system::check_protection_keys().is_ok();
    // SAFETY: the holder is single-threaded, so the child inherits no lock held by another
    // thread; it only makes syscalls, reads the secret through the library, reads its own
    // memory (allocating buffers), formats into a stack buffer and `_exit`s.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return send(&format!("error fork: {}", io::Error::last_os_error()));
    }
    if pid == 0 {
        let mut line = RawLine::new();
        line.put(b"child api=");
        let mut api_hex = [0u8; 2 * MARKER_LEN];
        let api = secret.with_bytes(|bytes| {
            hex_into(bytes, &mut api_hex);
        });
        match api {
            Ok(()) => line.put(&api_hex),
            Err(securememory::Error::Forked) => line.put(b"refused"),
            Err(_) => line.put(b"error"),
        }
        line.put(b" raw=");
        if readable_in_child(addr, page, keyed) {
            let mut raw = [0u8; MARKER_LEN];
            for (i, r) in raw.iter_mut().enumerate() {
                // SAFETY: the page is mapped and readable in this child (mprotect succeeded,
                // and every protection key is open).
                *r = unsafe { std::ptr::read_volatile((addr + i) as *const u8) };
            }
            if raw.iter().all(|&b| b == 0) {
                line.put(b"zeros");
            } else {
                let mut raw_hex = [0u8; 2 * MARKER_LEN];
                hex_into(&raw, &mut raw_hex);
                line.put(&raw_hex);
            }
            if keyed {
                line.put(b" keys=opened");
            }
        } else {
            line.put(b"unmapped");
        }
        if key_page.is_some() {
            // What the child inherited beside the sealed bytes: a copy of the key it may not have.
            line.put(b" schedules=");
            line.put_decimal(key_schedules_in_this_process());
        }
        if let Some(key_page) = key_page {
            line.put(b" key=");
            if !readable_in_child(key_page, page, keys_here) {
                line.put(b"unmapped");
            } else {
                let mut nonzero = false;
                for i in 0..page {
                    // SAFETY: as above, for the key's page.
                    nonzero |= unsafe { std::ptr::read_volatile((key_page + i) as *const u8) } != 0;
                }
                line.put(if nonzero { b"bytes" } else { b"zeros" });
            }
        }
        line.put(b"\n");
        let _ = write_all_raw(line.bytes());
        // SAFETY: ends the child without running the parent's destructors or atexit handlers.
        unsafe { libc::_exit(0) };
    }
    let mut status = 0;
    // SAFETY: waits for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    send("forked")
}

/// How many places of this process's readable memory hold round keys of an expanded AES-256
/// key ([`crate::probe::sealed::key_schedules`]), read through `/proc/self/mem`.
fn key_schedules_in_this_process() -> u64 {
    let mut places = std::collections::BTreeSet::new();
    let pid = i32::try_from(std::process::id()).unwrap_or(0);
    let _ = crate::probe::kernel_read::read_process(pid, 48, |_, at, bytes| {
        places.extend(
            crate::probe::sealed::key_schedules(bytes)
                .into_iter()
                .map(|o| at + o),
        );
    });
    places.len() as u64
}

/// The attacker's move in a forked child: makes the page holding `addr` readable, and opens
/// every protection key where the page may carry one. `false` where the page is not mapped.
fn readable_in_child(addr: usize, page: usize, keyed: bool) -> bool {
    let page_start = addr & !(page - 1);
    // SAFETY: changes the protection of an inherited page of this child only.
    let rc = unsafe { libc::mprotect(page_start as *mut libc::c_void, page, libc::PROT_READ) };
    if rc != 0 {
        return false;
    }
    if keyed {
        open_every_key();
    }
    true
}

/// Opens every protection key for the calling thread (`WRPKRU` with no rights withheld), as
/// an attacker who runs code in the process can.
#[cfg(target_arch = "x86_64")]
fn open_every_key() {
    // SAFETY: WRPKRU writes this thread's key rights; it is called only for a secret under a
    // protection key, so the CPU has PKU.
    unsafe {
        std::arch::asm!("wrpkru", in("eax") 0u32, in("ecx") 0u32, in("edx") 0u32,
            options(nostack, preserves_flags));
    }
}

/// Protection keys exist on x86_64 only, so elsewhere there is no key to open.
#[cfg(not(target_arch = "x86_64"))]
fn open_every_key() {}

/// Hex of `bytes` into `out` (twice as long) without allocating: the marker must not be copied
/// to the heap.
fn hex_into(bytes: &[u8], out: &mut [u8]) {
    hex::encode_to_slice(bytes, out).expect("the output is twice as long as the input");
}
