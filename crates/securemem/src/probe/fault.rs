//! P3 (no access while idle), P7 (overflow and underflow are caught) and P5 (a forked child never
//! sees the secret): the holder does the forbidden thing and the probe watches what happens.

use super::{hex, Finding, ProbeError};
use crate::spawn::{Holder, HolderOptions};

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

fn expect_fault(
    options: &HolderOptions,
    promise: &'static str,
    command: &str,
    probe: &str,
) -> Result<Finding, ProbeError> {
    let mut holder = Holder::spawn(options)?;
    let mut finding = Finding::new(promise, probe, Some(&holder.ready));
    let addr = holder.ready.addr;
    match holder.expect_death(command)? {
        Ok(Some(signal)) if FAULT_SIGNALS.contains(&signal) => {
            finding.saw(format!("the holder was killed by {}", signal_name(signal)));
        }
        Ok(Some(signal)) => finding.broke(format!(
            "the holder died of {} instead of a memory fault",
            signal_name(signal)
        )),
        Ok(None) => finding.broke("the holder exited normally instead of faulting"),
        Err(answer) => finding.broke(format!(
            "the access at/near {addr:#x} went through: the holder answered {answer:?}"
        )),
    }
    Ok(finding)
}

/// P3: reads the secret's address outside an access; it must fault.
///
/// # Errors
/// [`ProbeError::Broken`] when the holder misbehaves.
pub fn touch_idle(options: &HolderOptions) -> Result<Finding, ProbeError> {
    expect_fault(
        options,
        "P3",
        "touch",
        "read the raw address outside an access",
    )
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
        Err(answer) => answer,
        Ok(death) => {
            let how = death.map_or("exited normally".into(), |s| {
                format!("was killed by {}", signal_name(s))
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
    holder.send("fork")?;
    let child = holder.answer("the child's report")?;
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
    match raw.as_str() {
        "unmapped" => finding.saw("raw read in the child: the page is not mapped there (dc)"),
        "zeros" => finding.saw("raw read in the child: zeros (wf)"),
        r if r == marker => finding.broke("raw read in the child: the secret"),
        _ => finding.saw("raw read in the child: bytes that are not the secret"),
    }
    holder.answer("forked")?;
    holder.call("exit", "bye")?;
    Ok(finding)
}
