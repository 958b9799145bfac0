//! P2: the secret never appears in a core dump, whether the kernel writes it (the process
//! aborts) or a debugger takes it from outside (`gcore`), idle or in the middle of an access.

use super::{marker_hits, Finding, ProbeError};
use crate::spawn::{wait_with_timeout, Holder, HolderOptions};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Bytes that are certainly in any dump of a holder that has memory in it: its own command line,
/// which sits on the main thread's stack. Finding it shows the scan reads real memory contents.
const CONTROL: &[u8] = b"--backing";

fn state(inside: bool) -> &'static str {
    if inside {
        "inside an access"
    } else {
        "idle"
    }
}

/// Why kernel core dumps cannot be read back here, if they cannot.
pub fn kernel_dump_prerequisite() -> Result<(), String> {
    let pattern = std::fs::read_to_string("/proc/sys/kernel/core_pattern")
        .map_err(|e| format!("cannot read /proc/sys/kernel/core_pattern: {e}"))?;
    let pattern = pattern.trim();
    if let Some(program) = pattern.strip_prefix('|') {
        return Err(format!(
            "kernel.core_pattern pipes dumps to a program ({}); RLIMIT_CORE is ignored and the \
             dump does not land where this probe can read it",
            program.split_whitespace().next().unwrap_or(program)
        ));
    }
    if pattern.starts_with('/') {
        return Err(format!(
            "kernel.core_pattern writes dumps to an absolute path ({pattern}); this probe reads \
             dumps written to the crashing process's working directory"
        ));
    }
    let (_, hard) = crate::sys::get_rlimit(libc::RLIMIT_CORE);
    if hard == Some(0) {
        return Err("the hard RLIMIT_CORE is 0, so no kernel core dump can be written".into());
    }
    Ok(())
}

fn read_dump(path: &Path, holder: &Holder, finding: &mut Finding) -> Result<(), ProbeError> {
    let bytes = std::fs::read(path)
        .map_err(|e| ProbeError::Broken(format!("reading {}: {e}", path.display())))?;
    if !bytes.starts_with(b"\x7fELF") {
        return Err(ProbeError::Broken(format!(
            "{} is not an ELF core file",
            path.display()
        )));
    }
    if !super::contains(&bytes, CONTROL) {
        return Err(ProbeError::Broken(format!(
            "{} ({} bytes) does not even contain the holder's command line; the scan would \
             prove nothing",
            path.display(),
            bytes.len()
        )));
    }
    finding.saw(format!(
        "dump of {} bytes holds the holder's memory (its command line found)",
        bytes.len()
    ));
    match marker_hits(&bytes, &holder.marker) {
        Some(hits) => finding.broke(format!("secret found in the dump: {hits}")),
        None => finding.saw("the 32-byte marker is absent from the dump (raw and hex)"),
    }
    Ok(())
}

/// Makes the holder abort (idle or inside an access) so the kernel writes its core dump, then
/// scans the dump for the marker.
///
/// # Errors
/// [`ProbeError::Skipped`] when kernel dumps cannot be read back on this machine.
pub fn kernel_core_dump(options: &HolderOptions, inside: bool) -> Result<Finding, ProbeError> {
    kernel_dump_prerequisite().map_err(ProbeError::Skipped)?;
    let options = HolderOptions {
        core_dumps: true,
        ..options.clone()
    };
    let mut holder = Holder::spawn(&options)?;
    let mut finding = Finding::new(
        "P2",
        format!("kernel core dump, {}", state(inside)),
        Some(&holder.ready),
    );
    if inside {
        holder.enter()?;
    }
    holder.send("abort")?;
    let status = holder.wait_exit()?;
    use std::os::unix::process::ExitStatusExt;
    if status.signal() != Some(libc::SIGABRT) {
        return Err(ProbeError::Broken(format!(
            "the holder did not die of SIGABRT: {status}"
        )));
    }
    if !status.core_dumped() {
        return Err(ProbeError::Skipped(
            "the kernel wrote no core dump for the aborted holder (RLIMIT_CORE, \
             fs.suid_dumpable or core_pattern prevent it)"
                .into(),
        ));
    }
    let dump = std::fs::read_dir(holder.dir())
        .map_err(|e| ProbeError::Broken(format!("listing {}: {e}", holder.dir().display())))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.is_file())
        .ok_or_else(|| {
            ProbeError::Broken(format!(
                "the kernel reports a core dump but none is in {}",
                holder.dir().display()
            ))
        })?;
    finding.saw(format!(
        "holder killed by SIGABRT {}, core dumped",
        state(inside)
    ));
    read_dump(&dump, &holder, &mut finding)?;
    Ok(finding)
}

/// Where `gcore` is, or why the probe cannot run.
pub fn gcore_path() -> Result<PathBuf, String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("gcore"))
        .find(|p| p.is_file())
        .ok_or_else(|| "gcore (from gdb) is not installed: apt-get install gdb".to_string())
}

/// Takes a `gcore` of the holder (idle or inside an access) and scans it for the marker.
///
/// # Errors
/// [`ProbeError::Skipped`] without gdb.
pub fn gcore(options: &HolderOptions, inside: bool) -> Result<Finding, ProbeError> {
    let gcore = gcore_path().map_err(ProbeError::Skipped)?;
    let mut holder = Holder::spawn(options)?;
    let mut finding = Finding::new(
        "P2",
        format!("gcore, {}", state(inside)),
        Some(&holder.ready),
    );
    if inside {
        holder.enter()?;
    }
    let prefix = holder.dir().join("gcore");
    let log_path = holder.dir().join("gcore.log");
    let log = File::create(&log_path)
        .map_err(|e| ProbeError::Broken(format!("creating {}: {e}", log_path.display())))?;
    let log2 = log
        .try_clone()
        .map_err(|e| ProbeError::Broken(e.to_string()))?;
    let mut child = Command::new(&gcore)
        .arg("-o")
        .arg(&prefix)
        .arg(holder.pid().to_string())
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .spawn()
        .map_err(|e| ProbeError::Broken(format!("running {}: {e}", gcore.display())))?;
    let status = wait_with_timeout(&mut child, options.timeout.max(Duration::from_secs(60)))?;
    let dump = PathBuf::from(format!("{}.{}", prefix.display(), holder.pid()));
    if !status.success() || !dump.is_file() {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(3).collect();
        let reason = format!("gcore failed ({status}): {}", tail.join(" | "));
        return Err(
            if log.contains("ptrace") || log.contains("Operation not permitted") {
                ProbeError::Skipped(format!(
                    "{reason} (ptrace refused: kernel.yama.ptrace_scope or missing CAP_SYS_PTRACE)"
                ))
            } else {
                ProbeError::Broken(reason)
            },
        );
    }
    finding.saw(format!("gcore wrote {}", dump.display()));
    read_dump(&dump, &holder, &mut finding)?;
    if inside {
        holder.leave()?;
    }
    holder.call("exit", "bye")?;
    Ok(finding)
}
