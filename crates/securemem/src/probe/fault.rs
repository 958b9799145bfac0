//! P3 (no access while idle), P7 (overflow and underflow are caught), P5 (a forked child never
//! sees the secret) and P8 (another thread's read during an access faults): the holder does the
//! forbidden thing and the probe watches what happens.

use super::{hex, Finding, ProbeError};
use crate::spawn::{Death, Fault, Holder, HolderOptions};

/// The signal a stray touch of a protected page raises on this OS.
const FAULT_SIGNALS: [i32; 2] = [libc::SIGSEGV, libc::SIGBUS];

fn signal_name(signal: i32) -> String {
    match signal {
        libc::SIGSEGV => "SIGSEGV".into(),
        libc::SIGBUS => "SIGBUS".into(),
        libc::SIGABRT => "SIGABRT".into(),
        libc::SIGKILL => "SIGKILL".into(),
        other => format!("signal {other}"),
    }
}

/// `si_code` of a SIGSEGV raised by a memory protection key (Linux's `SEGV_PKUERR`, which the
/// `libc` crate does not name).
pub const SEGV_PKUERR: i32 = 4;

/// `si_code` of a SIGSEGV on a page whose protection forbids the access.
const SEGV_ACCERR: i32 = 2;

/// `si_code` of a SIGSEGV on an address where nothing is mapped.
const SEGV_MAPERR: i32 = 1;

/// Why the CPU refused, from the fault handler's report.
pub fn fault_cause(fault: &Fault) -> String {
    let cause = match (fault.signal, fault.code) {
        (libc::SIGSEGV, SEGV_PKUERR) => "si_code SEGV_PKUERR, a protection key's fault".into(),
        (libc::SIGSEGV, SEGV_ACCERR) => "si_code SEGV_ACCERR, the page protection's fault".into(),
        (libc::SIGSEGV, SEGV_MAPERR) => "si_code SEGV_MAPERR, nothing mapped there".into(),
        (_, code) => format!("si_code {code}"),
    };
    format!("{cause}, at {:#x}", fault.addr)
}

fn death_text(signal: i32, fault: Option<&Fault>) -> String {
    match fault {
        Some(f) => format!("{} ({})", signal_name(signal), fault_cause(f)),
        None => signal_name(signal),
    }
}

fn expect_fault(
    options: &HolderOptions,
    promise: &'static str,
    command: &str,
    probe: &str,
) -> Result<Finding, ProbeError> {
    expect_fault_of(Holder::spawn(options)?, promise, command, probe)
}

fn expect_fault_of(
    mut holder: Holder,
    promise: &'static str,
    command: &str,
    probe: &str,
) -> Result<Finding, ProbeError> {
    let mut finding = Finding::new(promise, probe, Some(&holder.ready));
    let addr = holder.ready.addr;
    match holder.expect_death(command)? {
        Death::Died {
            signal: Some(signal),
            fault,
        } if FAULT_SIGNALS.contains(&signal) => {
            finding.saw(format!(
                "the holder was killed by {}",
                death_text(signal, fault.as_ref())
            ));
        }
        Death::Died {
            signal: Some(signal),
            ..
        } => finding.broke(format!(
            "the holder died of {} instead of a memory fault",
            signal_name(signal)
        )),
        Death::Died { signal: None, .. } => {
            finding.broke("the holder exited normally instead of faulting");
        }
        Death::Answered(answer) => finding.broke(format!(
            "the access at/near {addr:#x} went through: the holder answered {answer:?}"
        )),
    }
    Ok(finding)
}

/// P3: reads the secret's address outside an access; it must fault. A sealed secret has no
/// plaintext while idle at all: there the probe first reads every byte of the process from
/// outside (the plaintext must be nowhere), then has the holder read, outside an access, the
/// bytes where its accesses put the plaintext (they must be zeros, or fault).
///
/// # Errors
/// [`ProbeError::Broken`] when the holder misbehaves.
pub fn touch_idle(options: &HolderOptions) -> Result<Finding, ProbeError> {
    let probe = "read the raw address outside an access";
    let holder = Holder::spawn(options)?;
    if holder.ready.sealed() {
        touch_idle_sealed(holder, probe)
    } else {
        expect_fault_of(holder, "P3", "touch", probe)
    }
}

fn touch_idle_sealed(mut holder: Holder, probe: &str) -> Result<Finding, ProbeError> {
    let mut finding = Finding::new("P3", probe, Some(&holder.ready));
    let (addr, len) = (holder.ready.addr, holder.ready.len);
    let scan = super::kernel_read::scan_process(holder.pid(), &holder.marker)?;
    finding.saw(scan.describe());
    if scan.hits.is_empty() {
        finding.saw("idle, the plaintext is absent from every byte read from outside");
    } else {
        finding.broke(format!(
            "idle, the plaintext is readable from outside {}",
            scan.hits.join("; ")
        ));
    }
    let place = format!("the {len} bytes at {addr:#x}, where an access puts the plaintext,");
    match holder.expect_death("touch")? {
        Death::Answered(a) if a == "touched zeros" => {
            finding.saw(format!("{place} read as zeros outside an access"));
            holder.call("exit", "bye")?;
        }
        Death::Answered(a) => match a.strip_prefix("touched bytes=") {
            Some(seen) if seen == hex(&holder.marker) => {
                finding.broke(format!("{place} still hold the secret outside an access"));
            }
            Some(_) => {
                finding.saw(format!(
                    "{place} hold bytes that are not the secret outside an access"
                ));
                holder.call("exit", "bye")?;
            }
            None => {
                return Err(ProbeError::Broken(format!(
                    "holder answered {a:?} to \"touch\""
                )))
            }
        },
        Death::Died {
            signal: Some(signal),
            fault,
        } if FAULT_SIGNALS.contains(&signal) => finding.saw(format!(
            "reading {place} outside an access killed the holder by {}",
            death_text(signal, fault.as_ref())
        )),
        Death::Died { signal, .. } => {
            return Err(ProbeError::Broken(format!(
                "the holder ended ({}) reading its own scratch area",
                signal.map_or("exited".into(), signal_name)
            )))
        }
    }
    Ok(finding)
}

/// P7: writes one byte past the end of the secret inside a write access; it must fault.
///
/// # Errors
/// [`ProbeError::Broken`] when the holder misbehaves.
pub fn overflow(options: &HolderOptions) -> Result<Finding, ProbeError> {
    expect_fault(
        options,
        "P7",
        "overflow",
        "write one byte past the end inside with_bytes_mut",
    )
}

/// P7: writes one byte before the secret's first data page inside a write access; it must
/// fault on the leading guard page.
///
/// # Errors
/// [`ProbeError::Broken`] when the holder misbehaves.
pub fn underflow(options: &HolderOptions) -> Result<Finding, ProbeError> {
    expect_fault(
        options,
        "P7",
        "underflow",
        "write one byte before the data page inside with_bytes_mut",
    )
}

/// P7: inside a write access, flips the byte right before the secret, inside its data page
/// (where no guard page can catch it), then closes the secret. The library's canary must catch
/// it: `with_bytes_mut` and `close` both return `Error::Corrupted`.
///
/// # Errors
/// [`ProbeError::Skipped`] when the library placed no canary before the secret
/// (`Secret::protection().canary` is false); [`ProbeError::Broken`] when the holder misbehaves.
pub fn underflow_in_page(options: &HolderOptions) -> Result<Finding, ProbeError> {
    const COMMAND: &str = "underflow-in-page";
    let mut holder = Holder::spawn(options)?;
    if holder.ready.sealed() {
        return Err(ProbeError::Skipped(format!(
            "a sealed secret keeps no canary (Secret::protection().canary is false): an access \
             decrypts it into the thread's scratch area, right against the trailing guard page, \
             and a write below it lands in the unused part of that area, which nothing reads \
             back as this {}-byte secret; the sealed bytes themselves are authenticated (P9)",
            holder.ready.len
        )));
    }
    if !holder.ready.canary {
        return Err(ProbeError::Skipped(format!(
            "the library placed no canary before this {}-byte secret \
             (Secret::protection().canary is false), so nothing inside the data page can catch \
             an underflow",
            holder.ready.len
        )));
    }
    let mut finding = Finding::new(
        "P7",
        "write one byte before the secret, inside its page, inside with_bytes_mut, then close",
        Some(&holder.ready),
    );
    let answer = match holder.expect_death(COMMAND)? {
        Death::Answered(answer) => answer,
        Death::Died { signal, fault } => {
            let how = signal.map_or("exited normally".into(), |s| {
                format!("was killed by {}", death_text(s, fault.as_ref()))
            });
            finding.broke(format!(
                "the holder {how}: the byte before the secret at {:#x} is not in its writable \
                 data page, although the library reported a canary there",
                holder.ready.addr
            ));
            return Ok(finding);
        }
    };
    let result = |key: &str| {
        answer
            .strip_prefix(COMMAND)?
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            .map(str::to_string)
    };
    let (Some(written), Some(closed)) = (result("with_bytes_mut"), result("close")) else {
        return Err(ProbeError::Broken(format!(
            "unexpected answer {answer:?} to {COMMAND:?}"
        )));
    };
    for (call, got) in [("with_bytes_mut", written), ("close", closed)] {
        if got == "Corrupted" {
            finding.saw(format!("{call} returned Err(Corrupted)"));
        } else if got == "Ok" {
            finding.broke(format!(
                "{call} returned Ok: the overwritten canary went unnoticed"
            ));
        } else {
            finding.broke(format!(
                "{call} returned Err({got}) instead of Err(Corrupted)"
            ));
        }
    }
    holder.call("exit", "bye")?;
    Ok(finding)
}

/// P5: the holder forks; the child asks the library for the bytes, then makes the inherited
/// page readable and reads it raw. Neither may give the marker.
///
/// # Errors
/// [`ProbeError::Broken`] when the holder misbehaves.
pub fn fork(options: &HolderOptions) -> Result<Finding, ProbeError> {
    let mut holder = Holder::spawn(options)?;
    let mut finding = Finding::new(
        "P5",
        "forked child reads the secret (API, then raw after mprotect)",
        Some(&holder.ready),
    );
    // A sealed secret's bytes are ordinary heap memory, which a child inherits: what keeps them
    // from it is that the key does not come along.
    let key_page = if holder.ready.sealed() {
        let keys = super::sealed::required_key_pages(&holder)?;
        let key = super::sealed::mapping_of(&keys[0]);
        finding.saw(format!(
            "the sealed bytes are inherited as heap memory; the sealing key's page is {}",
            super::smaps::describe_mapping(&key)
        ));
        Some(key.start)
    } else {
        None
    };
    match key_page {
        Some(key) => holder.send(&format!("fork {:#x} {key:#x}", holder.ready.addr))?,
        None => holder.send("fork")?,
    }
    let child = holder.answer("the child's report")?;
    if let Some(fault) = Fault::parse(&child) {
        // The child faulted before it could report anything: it saw nothing.
        finding.saw(format!(
            "the child was killed by {} before it read a byte",
            death_text(fault.signal, Some(&fault))
        ));
        holder.answer("forked")?;
        holder.call("exit", "bye")?;
        return Ok(finding);
    }
    let field = |key: &str| {
        child
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            .map(str::to_string)
    };
    let (Some(api), Some(raw)) = (field("api"), field("raw")) else {
        return Err(ProbeError::Broken(format!(
            "unexpected child report {child:?}"
        )));
    };
    let marker = hex(&holder.marker);
    match api.as_str() {
        "refused" => finding.saw("with_bytes in the child: refused (Error::Forked)"),
        a if a == marker => finding.broke("with_bytes in the child returned the secret"),
        other => finding.saw(format!("with_bytes in the child: {other}")),
    }
    let raw_read = if field("keys").is_some() {
        "raw read in the child, every protection key opened (WRPKRU)"
    } else {
        "raw read in the child"
    };
    match raw.as_str() {
        "unmapped" => finding.saw(format!("{raw_read}: the page is not mapped there (dc)")),
        "zeros" => finding.saw(format!("{raw_read}: zeros (wf)")),
        r if r == marker => finding.broke(format!("{raw_read}: the secret")),
        _ => finding.saw(format!("{raw_read}: bytes that are not the secret")),
    }
    if key_page.is_some() {
        match field("schedules").map(|n| n.parse::<u64>()) {
            Some(Ok(0)) if super::sealed::cpu_has_aes() => {
                finding.saw("no expanded AES-256 key in the child's memory");
            }
            Some(Ok(0)) => finding.saw(
                "this CPU has no AES instructions: the cipher keeps its round keys bitsliced, \
                 which the search for an expanded key in the child's memory does not recognise",
            ),
            Some(Ok(n)) => finding.broke(format!(
                "{} in the child: its memory holds round keys of an expanded AES-256 key ({n} \
                 places, three in a row), and with the sealed bytes it inherited it can open them",
                super::sealed::KEY_COPY
            )),
            _ => {
                return Err(ProbeError::Broken(format!(
                    "the child did not report its search for the key: {child:?}"
                )))
            }
        }
        let key_read = "the sealing key's page in the child, made readable (every protection \
                        key opened where the CPU has them)";
        match field("key").as_deref() {
            Some("unmapped") => finding.saw(format!("{key_read}: not mapped there (dc)")),
            Some("zeros") => finding.saw(format!("{key_read}: zeros (wf)")),
            Some("bytes") => finding.broke(format!(
                "{key_read}: not zeros: the child has the key to the sealed bytes it inherited"
            )),
            _ => {
                return Err(ProbeError::Broken(format!(
                    "the child did not report the key page: {child:?}"
                )))
            }
        }
    }
    holder.answer("forked")?;
    holder.call("exit", "bye")?;
    Ok(finding)
}

/// P8: while one thread of the holder is inside `with_bytes`, another thread reads the secret's
/// bytes through the address the first one handed out. The finding holds only when that read
/// kills the holder with SIGSEGV *and* the fault is the protection key's (`SEGV_PKUERR`): a fault
/// for another reason would not show that the access opened the secret to its own thread only.
/// Under page protection the read goes through (the pages are open to every thread while an
/// access runs); the finding says so, and the report judges it against the strategy the secret
/// got. Before the read, `/proc/PID/smaps` shows from outside which key the pages carry.
///
/// # Errors
/// [`ProbeError::Broken`] when the holder misbehaves.
pub fn read_from_another_thread(options: &HolderOptions) -> Result<Finding, ProbeError> {
    const COMMAND: &str = "read-from-another-thread";
    let mut holder = Holder::spawn(options)?;
    let mut finding = Finding::new(
        "P8",
        "another thread reads the bytes while a thread is inside with_bytes",
        Some(&holder.ready),
    );
    finding.saw(format!(
        "the library reports strategy {} for the secret",
        holder.ready.strategy
    ));
    let pid = holder.pid();
    let entries = super::smaps::smaps(pid)
        .map_err(|e| ProbeError::Broken(format!("reading /proc/{pid}/smaps: {e}")))?;
    match super::smaps::entry_at(&entries, holder.ready.addr).map(|e| e.protection_key) {
        Some(Some(key)) => finding.saw(format!(
            "/proc/PID/smaps: the secret's mapping has ProtectionKey {key}"
        )),
        Some(None) => {
            finding.saw("/proc/PID/smaps shows no ProtectionKey (the kernel has no keys)")
        }
        None => {
            return Err(ProbeError::Broken(format!(
                "no mapping contains the secret's address {:#x}",
                holder.ready.addr
            )))
        }
    }
    holder.send(COMMAND)?;
    let reading = holder.answer(COMMAND)?;
    if let (true, Some(refused)) = (
        holder.ready.sealed(),
        reading.strip_prefix("error with_bytes: "),
    ) {
        // A sealed secret's first access on a thread makes that thread a scratch area of its
        // own, locked: the library's answer under a tight locked-memory limit, not the probe's.
        finding.broke(format!(
            "the other thread's access was refused (its scratch area is a locked mapping of its \
             own): {refused}"
        ));
        holder.call("exit", "bye")?;
        return Ok(finding);
    }
    let Some(target) = reading.strip_prefix("reading ") else {
        return Err(ProbeError::Broken(format!(
            "holder answered {reading:?} to {COMMAND:?}"
        )));
    };
    finding.saw(format!(
        "a thread without an access read {target} while another thread was inside with_bytes"
    ));
    match holder.await_death(COMMAND)? {
        Death::Died {
            signal: Some(libc::SIGSEGV),
            fault: Some(fault),
        } if fault.code == SEGV_PKUERR => finding.saw(format!(
            "killed by {}",
            death_text(libc::SIGSEGV, Some(&fault))
        )),
        Death::Died {
            signal: Some(libc::SIGSEGV),
            fault: Some(fault),
        } => finding.broke(format!(
            "the read faulted, but not on the protection key ({}), so it does not show that \
             the access was open to its own thread only",
            fault_cause(&fault)
        )),
        Death::Died {
            signal: Some(libc::SIGSEGV),
            fault: None,
        } => finding.broke(
            "killed by SIGSEGV, but its fault handler reported no si_code, so the fault cannot \
             be told to be the protection key's",
        ),
        Death::Died {
            signal: Some(signal),
            ..
        } => finding.broke(format!(
            "the holder died of {} instead of SIGSEGV",
            signal_name(signal)
        )),
        Death::Died { signal: None, .. } => {
            finding.broke("the holder exited instead of faulting");
        }
        Death::Answered(answer) if answer.starts_with("read ") => {
            finding.broke(format!(
                "the read went through: the holder answered {answer:?}"
            ));
            holder.call("exit", "bye")?;
        }
        Death::Answered(answer) => {
            return Err(ProbeError::Broken(format!(
                "holder answered {answer:?} to {COMMAND:?}"
            )))
        }
    }
    Ok(finding)
}
