//! P6: another process — root included — cannot read the secret: not through
//! `/proc/PID/mem` (which reads through `PROT_NONE` with `FOLL_FORCE`), not with
//! `process_vm_readv`, idle or while the holder sits inside an access.

use super::{errno_name, marker_hits, Finding, ProbeError};
use crate::spawn::{Holder, HolderOptions};
use std::fs::File;
use std::os::unix::fs::FileExt;

/// One mapping from `/proc/PID/maps`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// First address.
    pub start: usize,
    /// One past the last address.
    pub end: usize,
    /// `rwxp`-style permissions.
    pub perms: String,
    /// The path or pseudo-name (`[heap]`, `/secretmem (deleted)`), empty for anonymous memory.
    pub name: String,
}

/// Parses `/proc/PID/maps`.
///
/// # Errors
/// When the file cannot be read.
pub fn maps(pid: i32) -> std::io::Result<Vec<Mapping>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
    Ok(text.lines().filter_map(parse_maps_line).collect())
}

/// Parses one `/proc/PID/maps` (or `smaps` header) line.
pub fn parse_maps_line(line: &str) -> Option<Mapping> {
    let mut parts = line.split_whitespace();
    let (start, end) = parts.next()?.split_once('-')?;
    let perms = parts.next()?.to_string();
    let name = parts.skip(3).collect::<Vec<_>>().join(" ");
    Some(Mapping {
        start: usize::from_str_radix(start, 16).ok()?,
        end: usize::from_str_radix(end, 16).ok()?,
        perms,
        name,
    })
}

/// What reading a few bytes of another process gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Read {
    /// The kernel refused, with this errno.
    Refused(i32),
    /// These bytes came back.
    Bytes(Vec<u8>),
}

impl Read {
    /// Evidence text, naming what came back relative to the marker.
    pub fn describe(&self, marker: &[u8]) -> String {
        match self {
            Read::Refused(errno) => format!("refused with {}", errno_name(*errno)),
            Read::Bytes(b) if b == marker => "read the secret".to_string(),
            Read::Bytes(b) if b.iter().all(|&x| x == 0) => "read zeros".to_string(),
            Read::Bytes(b) => format!("read {} bytes that are not the secret", b.len()),
        }
    }
}

/// Reads `len` bytes at `addr` of process `pid` through `/proc/PID/mem`.
pub fn proc_mem_read(pid: i32, addr: usize, len: usize) -> Result<Read, ProbeError> {
    let file = File::open(format!("/proc/{pid}/mem"))
        .map_err(|e| ProbeError::Skipped(format!("cannot open /proc/{pid}/mem: {e}")))?;
    let mut buf = vec![0u8; len];
    match file.read_exact_at(&mut buf, addr as u64) {
        Ok(()) => Ok(Read::Bytes(buf)),
        Err(e) => Ok(Read::Refused(e.raw_os_error().unwrap_or(libc::EIO))),
    }
}

/// Writes `bytes` at `addr` of process `pid` through `/proc/PID/mem` (which writes through
/// `PROT_NONE` and protection keys, as a debugger does).
///
/// # Errors
/// [`ProbeError::Skipped`] when the file cannot be opened for writing; [`ProbeError::Broken`]
/// when the kernel refuses the write.
pub fn proc_mem_write(pid: i32, addr: usize, bytes: &[u8]) -> Result<(), ProbeError> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/{pid}/mem"))
        .map_err(|e| ProbeError::Skipped(format!("cannot open /proc/{pid}/mem to write: {e}")))?;
    file.write_all_at(bytes, addr as u64).map_err(|e| {
        ProbeError::Broken(format!(
            "writing {} bytes at {addr:#x} through /proc/{pid}/mem: {e}",
            bytes.len()
        ))
    })
}

/// Reads `len` bytes at `addr` of process `pid` with `process_vm_readv(2)`.
pub fn vm_readv(pid: i32, addr: usize, len: usize) -> Read {
    let mut buf = vec![0u8; len];
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: len,
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: len,
    };
    // SAFETY: `local` describes our own writable buffer; the remote range is only read by the
    // kernel, which checks it.
    let n = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
    if n < 0 {
        Read::Refused(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        buf.truncate(n as usize);
        Read::Bytes(buf)
    }
}

/// The result of reading every mapping of a process through `/proc/PID/mem`.
#[derive(Clone, Debug, Default)]
pub struct Scan {
    /// Mappings read completely or in part.
    pub ranges_read: usize,
    /// Bytes read.
    pub bytes_read: usize,
    /// Mappings (or parts) the kernel refused, with the errno.
    pub refused: Vec<(Mapping, i32)>,
    /// Where the marker was found.
    pub hits: Vec<String>,
}

impl Scan {
    /// Evidence text.
    pub fn describe(&self) -> String {
        let refused: Vec<String> = self
            .refused
            .iter()
            .map(|(m, e)| {
                let name = if m.name.is_empty() {
                    "anonymous"
                } else {
                    &m.name
                };
                format!("{:#x} {name}: {}", m.start, errno_name(*e))
            })
            .collect();
        format!(
            "read {} mappings ({} KiB) of the process through /proc/PID/mem, whatever their \
             protection; refused: [{}]",
            self.ranges_read,
            self.bytes_read / 1024,
            refused.join(", ")
        )
    }
}

/// Chunk size for whole-process scans: a hit spanning two chunks is still found because
/// consecutive chunks overlap by the marker's length.
const CHUNK: usize = 1 << 20;
/// Mappings larger than this are reserved address space (thread stacks, arenas), scanned only up
/// to this much so a scan never runs away.
const MAX_PER_MAPPING: usize = 256 << 20;

/// Reads every mapping of process `pid` that `/proc/PID/mem` gives (as [`scan_process`] does) and
/// calls `look` with each piece: its mapping, its address and its bytes. Consecutive pieces of a
/// mapping overlap by `overlap` bytes, so a pattern that long is seen whole at least once.
/// Returns the mappings (or parts) the kernel refused.
///
/// # Errors
/// [`ProbeError::Skipped`] when the process's memory cannot be opened at all.
pub fn read_process(
    pid: i32,
    overlap: usize,
    mut look: impl FnMut(&Mapping, usize, &[u8]),
) -> Result<Vec<(Mapping, i32)>, ProbeError> {
    let file = File::open(format!("/proc/{pid}/mem"))
        .map_err(|e| ProbeError::Skipped(format!("cannot open /proc/{pid}/mem: {e}")))?;
    let mappings =
        maps(pid).map_err(|e| ProbeError::Broken(format!("reading /proc/{pid}/maps: {e}")))?;
    let mut refused = Vec::new();
    let mut buf = vec![0u8; CHUNK + overlap];
    for m in mappings {
        if m.name == "[vsyscall]" {
            continue;
        }
        let end = m.end.min(m.start.saturating_add(MAX_PER_MAPPING));
        let mut at = m.start;
        while at < end {
            let want = (end - at).min(buf.len());
            match file.read_at(&mut buf[..want], at as u64) {
                Ok(0) => break,
                Ok(n) => {
                    look(&m, at, &buf[..n]);
                    if at + n >= end {
                        break;
                    }
                    at += n.saturating_sub(overlap).max(1);
                }
                Err(e) => {
                    refused.push((m.clone(), e.raw_os_error().unwrap_or(libc::EIO)));
                    break;
                }
            }
        }
    }
    Ok(refused)
}

/// Reads every mapping of process `pid` through `/proc/PID/mem` and looks for `marker` (raw
/// and as hex).
///
/// # Errors
/// [`ProbeError::Skipped`] when the process's memory cannot be opened at all.
pub fn scan_process(pid: i32, marker: &[u8]) -> Result<Scan, ProbeError> {
    let file = File::open(format!("/proc/{pid}/mem"))
        .map_err(|e| ProbeError::Skipped(format!("cannot open /proc/{pid}/mem: {e}")))?;
    let mappings =
        maps(pid).map_err(|e| ProbeError::Broken(format!("reading /proc/{pid}/maps: {e}")))?;
    let mut scan = Scan::default();
    let mut buf = vec![0u8; CHUNK + marker.len() * 2];
    for m in mappings {
        if m.name == "[vsyscall]" {
            continue;
        }
        let end = m.end.min(m.start.saturating_add(MAX_PER_MAPPING));
        let mut at = m.start;
        let mut read_any = false;
        while at < end {
            let want = (end - at).min(buf.len());
            match file.read_at(&mut buf[..want], at as u64) {
                Ok(0) => break,
                Ok(n) => {
                    read_any = true;
                    scan.bytes_read += n;
                    if let Some(hit) = marker_hits(&buf[..n], marker) {
                        let name = if m.name.is_empty() {
                            "anonymous"
                        } else {
                            &m.name
                        };
                        scan.hits.push(format!(
                            "in mapping {:#x}-{:#x} {} {name} at {:#x}: {hit}",
                            m.start, m.end, m.perms, at
                        ));
                    }
                    if at + n >= end {
                        break;
                    }
                    at += n.saturating_sub(2 * marker.len()).max(1);
                }
                Err(e) => {
                    scan.refused
                        .push((m.clone(), e.raw_os_error().unwrap_or(libc::EIO)));
                    break;
                }
            }
        }
        if read_any {
            scan.ranges_read += 1;
        }
    }
    Ok(scan)
}

/// Reads the holder's secret from outside: `/proc/PID/mem` at its address, `process_vm_readv`
/// at its address, and `/proc/PID/mem` over every mapping — idle or inside an access. For a
/// sealed secret, whose address is the scratch area an access decrypts into, it also reads the
/// key's page, which must be refused as well.
///
/// # Errors
/// [`ProbeError::Broken`] when the holder misbehaves.
pub fn kernel_read(options: &HolderOptions, inside: bool) -> Result<Finding, ProbeError> {
    let mut holder = Holder::spawn(options)?;
    let pid = holder.pid();
    let state = if inside { "inside an access" } else { "idle" };
    let mut finding = Finding::new(
        "P6",
        format!("read from another process (/proc/PID/mem, process_vm_readv), {state}"),
        Some(&holder.ready),
    );
    if inside {
        holder.enter()?;
    }
    let (addr, len) = (holder.ready.addr, holder.ready.len);
    let marker = holder.marker;
    let mut judge = |what: &str, read: Read| {
        let text = format!("{what} at {addr:#x}: {}", read.describe(&marker));
        match read {
            Read::Bytes(b) if super::contains(&b, &marker) => finding.broke(text),
            _ => finding.saw(text),
        }
    };
    judge("/proc/PID/mem", proc_mem_read(pid, addr, len)?);
    judge("process_vm_readv", vm_readv(pid, addr, len));
    let scan = scan_process(pid, &marker)?;
    finding.saw(scan.describe());
    if scan.hits.is_empty() {
        finding.saw("marker absent from every readable byte of the process");
    } else {
        finding.broke(format!("marker found {}", scan.hits.join("; ")));
    }
    if holder.ready.sealed() {
        // What opens the sealed bytes, which any process that reads the heap has.
        for key in super::sealed::required_key_pages(&holder)? {
            super::sealed::read_key_from_outside(pid, &key, &mut finding);
        }
    }
    if inside {
        holder.leave()?;
    }
    holder.call("exit", "bye")?;
    Ok(finding)
}
