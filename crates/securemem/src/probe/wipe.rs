//! P4: closing a secret wipes it. Seen from outside in two ways:
//!
//! 1. the probe traces the holder while it closes the secret and stops it at the `munmap` that
//!    returns the secret's pages to the kernel — the last moment the bytes exist — and reads
//!    them there through `/proc/PID/mem`: they must be zeros (or unreadable, for secret memory,
//!    which the kernel itself zeroes when it frees it);
//! 2. after the close, it reads every mapping of the process: no copy of the marker may be left
//!    anywhere (heap, stack, the holder's own buffers).
//!
//! A sealed secret has no mapping of its own to unmap: its bytes at rest are a heap allocation
//! of ciphertext, and its plaintext exists only in the scratch area during an access. There the
//! probe finds the sealed bytes before the close ([`super::sealed::locate`]), and after it
//! requires that neither they nor the plaintext are anywhere in the process, and that the
//! scratch area holds zeros.

use super::kernel_read::{proc_mem_read, scan_process, Read};
use super::{Finding, ProbeError};
use crate::spawn::{Holder, HolderOptions};
use std::time::{Duration, Instant};

const PTRACE_GET_SYSCALL_INFO: libc::c_uint = 0x420e;
const PTRACE_SYSCALL_INFO_ENTRY: u8 = 1;
const PTRACE_EVENT_STOP: i32 = 128;

/// `struct ptrace_syscall_info` (Linux 5.3+), the architecture-independent view of a syscall
/// stop; the `entry` arm of its union is `nr` followed by six arguments.
#[repr(C)]
#[derive(Default)]
struct SyscallInfo {
    op: u8,
    pad: [u8; 3],
    arch: u32,
    instruction_pointer: u64,
    stack_pointer: u64,
    nr_and_args: [u64; 7],
    rest: [u64; 2],
}

pub(super) fn ptrace(
    request: libc::c_uint,
    pid: i32,
    addr: usize,
    data: usize,
) -> std::io::Result<libc::c_long> {
    // SAFETY: every request used here takes integer addr/data, or (GET_SYSCALL_INFO) a pointer
    // to a buffer of `addr` bytes that the caller passes in `data`.
    let rc = unsafe { libc::ptrace(request, pid, addr, data) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Waits for the tracee to stop, polling so that a hang turns into an error at `deadline`.
pub(super) fn wait_stop(pid: i32, deadline: Instant) -> Result<i32, ProbeError> {
    loop {
        let mut status = 0;
        // SAFETY: waits for our traced child without blocking.
        let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG | libc::__WALL) };
        if rc == pid {
            if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
                return Err(ProbeError::Broken(format!(
                    "the holder ended while traced (status {status:#x})"
                )));
            }
            return Ok(status);
        }
        if rc < 0 {
            return Err(ProbeError::Broken(format!(
                "waitpid on the traced holder: {}",
                std::io::Error::last_os_error()
            )));
        }
        if Instant::now() > deadline {
            return Err(ProbeError::Broken(
                "the traced holder did not reach the secret's munmap in time".into(),
            ));
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Traces `pid` until it enters `munmap` on a range that holds `addr`, then reads `len` bytes at
/// `addr` and detaches. `start` runs once the tracer is attached (it sends the close command).
fn read_at_munmap(
    pid: i32,
    addr: usize,
    len: usize,
    timeout: Duration,
    start: impl FnOnce() -> Result<(), ProbeError>,
) -> Result<Read, ProbeError> {
    let deadline = Instant::now() + timeout;
    ptrace(
        libc::PTRACE_SEIZE,
        pid,
        0,
        libc::PTRACE_O_TRACESYSGOOD as usize,
    )
    .map_err(|e| {
        ProbeError::Skipped(format!(
            "ptrace(PTRACE_SEIZE) refused ({e}): kernel.yama.ptrace_scope or missing CAP_SYS_PTRACE"
        ))
    })?;
    let result = (|| {
        ptrace(libc::PTRACE_INTERRUPT, pid, 0, 0)
            .map_err(|e| ProbeError::Broken(format!("PTRACE_INTERRUPT: {e}")))?;
        wait_stop(pid, deadline)?;
        ptrace(libc::PTRACE_SYSCALL, pid, 0, 0)
            .map_err(|e| ProbeError::Broken(format!("PTRACE_SYSCALL: {e}")))?;
        start()?;
        loop {
            let status = wait_stop(pid, deadline)?;
            let signal = libc::WSTOPSIG(status);
            let mut inject = 0;
            if signal == (libc::SIGTRAP | 0x80) {
                let mut info = SyscallInfo::default();
                ptrace(
                    PTRACE_GET_SYSCALL_INFO,
                    pid,
                    std::mem::size_of::<SyscallInfo>(),
                    (&raw mut info) as usize,
                )
                .map_err(|e| ProbeError::Broken(format!("PTRACE_GET_SYSCALL_INFO: {e}")))?;
                let [nr, start, length, ..] = info.nr_and_args;
                if info.op == PTRACE_SYSCALL_INFO_ENTRY
                    && nr == libc::SYS_munmap as u64
                    && (start as usize) <= addr
                    && addr < (start + length) as usize
                {
                    return proc_mem_read(pid, addr, len);
                }
            } else if status >> 16 != PTRACE_EVENT_STOP {
                inject = signal as usize;
            }
            ptrace(libc::PTRACE_SYSCALL, pid, 0, inject)
                .map_err(|e| ProbeError::Broken(format!("PTRACE_SYSCALL: {e}")))?;
        }
    })();
    // The tracee is in a ptrace stop on every path that reaches here with the tracer attached.
    let _ = ptrace(libc::PTRACE_DETACH, pid, 0, 0);
    result
}

/// Closes the holder's secret under trace, reads its pages at the moment they are unmapped, then
/// scans the whole process for the marker.
///
/// # Errors
/// [`ProbeError::Skipped`] when ptrace is refused; [`ProbeError::Broken`] when the holder
/// misbehaves.
pub fn close_wipes(options: &HolderOptions) -> Result<Finding, ProbeError> {
    let mut holder = Holder::spawn(options)?;
    let pid = holder.pid();
    let (addr, len) = (holder.ready.addr, holder.ready.len);
    let marker = holder.marker;
    let mut finding = Finding::new(
        "P4",
        "close: pages read at their munmap, then the whole process scanned",
        Some(&holder.ready),
    );
    let before = scan_process(pid, &marker)?;
    if before.hits.is_empty() {
        finding.saw(
            "before close the marker is unreadable from outside (scan control: nothing to find)",
        );
    } else {
        finding.saw(
            "before close the marker is readable from outside (scan control: the scan finds it)",
        );
    }
    if holder.ready.sealed() {
        close_wipes_sealed(&mut holder, &mut finding)?;
        holder.call("exit", "bye")?;
        return Ok(finding);
    }
    let timeout = options.timeout;
    let at_munmap = read_at_munmap(pid, addr, len, timeout, || holder.send("close"))?;
    match &at_munmap {
        Read::Bytes(b) if b.iter().all(|&x| x == 0) => {
            finding.saw("at the secret's munmap its bytes read as zeros: wiped before release");
        }
        Read::Bytes(b) if *b == marker => {
            finding.broke("at the secret's munmap its bytes still hold the secret: not wiped");
        }
        Read::Bytes(_) => finding.broke(
            "at the secret's munmap its bytes are neither zeros nor the secret: not wiped",
        ),
        Read::Refused(_) => finding.saw(format!(
            "at the secret's munmap its pages are {} (secret memory; the kernel zeroes it on release)",
            at_munmap.describe(&marker)
        )),
    }
    let answer = holder.answer("closed")?;
    if answer != "closed" {
        return Err(ProbeError::Broken(format!("close answered {answer:?}")));
    }
    let after = scan_process(pid, &marker)?;
    finding.saw(after.describe());
    if after.hits.is_empty() {
        finding.saw("after close the marker is absent from every readable byte of the process");
    } else {
        finding.broke(format!(
            "after close the marker is still in the process {}",
            after.hits.join("; ")
        ));
    }
    holder.call("exit", "bye")?;
    Ok(finding)
}

/// The close of a sealed secret: its sealed bytes, found before, must be gone from the whole
/// process afterwards, and the scratch area must hold zeros.
fn close_wipes_sealed(holder: &mut Holder, finding: &mut Finding) -> Result<(), ProbeError> {
    let pid = holder.pid();
    let marker = holder.marker;
    let sealed = super::sealed::locate(holder)?;
    let Some(s) = sealed.first() else {
        return Err(ProbeError::Broken(
            "the sealed bytes could not be found before the close, so their wipe cannot be \
             watched: see P9"
                .into(),
        ));
    };
    finding.saw(format!("before close: {}", s.describe()));
    holder.call("close", "closed")?;
    let after = scan_process(pid, &marker)?;
    finding.saw(after.describe());
    if after.hits.is_empty() {
        finding.saw("after close the plaintext is absent from every readable byte of the process");
    } else {
        finding.broke(format!(
            "after close the plaintext is still in the process {}",
            after.hits.join("; ")
        ));
    }
    let residue = scan_process(pid, s.sealed_part())?;
    if residue.hits.is_empty() {
        finding.saw(format!(
            "after close the {} bytes of tag and ciphertext are absent from every readable byte \
             of the process",
            s.sealed_part().len()
        ));
    } else {
        finding.broke(format!(
            "after close the tag and ciphertext are still in the process {}",
            residue.hits.join("; ")
        ));
    }
    if let Read::Bytes(now) = proc_mem_read(pid, s.addr, s.stored.len())? {
        let zeros = now.iter().filter(|&&b| b == 0).count();
        finding.saw(format!(
            "the {} bytes at {:#x} that held them now hold {zeros} zero bytes (the rest is the \
             allocator's bookkeeping of the freed block)",
            now.len(),
            s.addr
        ));
    }
    let scratch = holder.ready.addr;
    let answer = holder.call(&format!("touch {scratch:#x}"), "touched ")?;
    if answer == "touched zeros" {
        finding.saw(format!(
            "the scratch area at {scratch:#x}, where the last access put the plaintext, holds \
             zeros"
        ));
    } else if answer.strip_prefix("touched bytes=") == Some(super::hex(&marker).as_str()) {
        finding.broke(format!(
            "the scratch area at {scratch:#x} still holds the plaintext after close"
        ));
    } else {
        finding.saw(format!(
            "the scratch area at {scratch:#x} holds bytes that are not the secret"
        ));
    }
    Ok(())
}
