//! P2: the secret never appears in a core dump, whether the kernel writes it (the process
//! aborts) or a debugger takes it from outside (`gcore`), idle or in the middle of an access.
//!
//! A dump of a sealed secret holds its sealed bytes (ordinary heap memory); what must stay out
//! is the key that opens them. The probe finds the key's page from outside and requires that
//! the dump has no bytes for it: no loaded segment with contents at its address, and, where the
//! page can be read from outside (anonymous memory), none of its contents anywhere in the file.

use super::kernel_read::{proc_mem_read, Mapping, Read};
use super::sealed::KEY_COPY;
use super::smaps::describe_mapping;
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

/// A sealed secret's key page, and what of it can be looked for in a dump.
struct KeyPage {
    mapping: Mapping,
    /// 32 bytes of its contents, where other processes can read them (anonymous memory); secret
    /// memory cannot be read from outside.
    sample: Option<Vec<u8>>,
}

/// The key pages of a sealed holder (none for another secret), read before the dump is taken.
fn key_pages(holder: &Holder) -> Result<Vec<KeyPage>, ProbeError> {
    if !holder.ready.sealed() {
        return Ok(Vec::new());
    }
    super::sealed::required_key_pages(holder)?
        .iter()
        .map(|entry| {
            let mapping = super::sealed::mapping_of(entry);
            let read = proc_mem_read(holder.pid(), mapping.start, mapping.end - mapping.start)?;
            let sample = match read {
                Read::Bytes(page) => distinctive(&page),
                Read::Refused(_) => None,
            };
            Ok(KeyPage { mapping, sample })
        })
        .collect()
}

/// The 32-byte, 16-aligned window of `page` with the most distinct values (part of the expanded
/// key, not of the zeros around it), when it is distinctive enough to be searched for.
fn distinctive(page: &[u8]) -> Option<Vec<u8>> {
    let distinct = |w: &[u8]| {
        let mut seen = [false; 256];
        w.iter().for_each(|&b| seen[usize::from(b)] = true);
        seen.iter().filter(|&&s| s).count()
    };
    page.chunks_exact(32)
        .chain(page.get(16..).unwrap_or_default().chunks_exact(32))
        .max_by_key(|w| distinct(w))
        .filter(|w| distinct(w) >= 24)
        .map(<[u8]>::to_vec)
}

/// One program header of an ELF64 core file.
struct Segment {
    /// `PT_LOAD` (1) for memory, `PT_NOTE` (4) for registers and process facts.
    kind: u32,
    /// Where its bytes are in the file.
    offset: u64,
    /// How many bytes the file holds for it.
    filesz: u64,
    /// The address of the memory it holds.
    vaddr: u64,
    /// The size of that memory.
    memsz: u64,
}

const PT_LOAD: u32 = 1;

/// The program headers of an ELF64 little-endian core file.
fn segments(elf: &[u8]) -> Option<Vec<Segment>> {
    let u16_at = |at: usize| Some(u16::from_le_bytes(elf.get(at..at + 2)?.try_into().ok()?));
    let u32_at = |at: usize| Some(u32::from_le_bytes(elf.get(at..at + 4)?.try_into().ok()?));
    let u64_at = |at: usize| Some(u64::from_le_bytes(elf.get(at..at + 8)?.try_into().ok()?));
    if elf.get(4) != Some(&2) || elf.get(5) != Some(&1) {
        return None; // not 64-bit little-endian
    }
    let phoff = usize::try_from(u64_at(0x20)?).ok()?;
    let phentsize = usize::from(u16_at(0x36)?);
    let mut phnum = usize::from(u16_at(0x38)?);
    if phnum == 0xffff {
        // PN_XNUM: the count is in the first section header's sh_info.
        let shoff = usize::try_from(u64_at(0x28)?).ok()?;
        phnum = usize::try_from(u32_at(shoff + 44)?).ok()?;
    }
    (0..phnum)
        .map(|i| {
            let at = phoff + i * phentsize;
            Some(Segment {
                kind: u32_at(at)?,
                offset: u64_at(at + 8)?,
                vaddr: u64_at(at + 16)?,
                filesz: u64_at(at + 32)?,
                memsz: u64_at(at + 40)?,
            })
        })
        .collect()
}

/// What the dump's bytes at `offset` are: memory of a segment (with the address), or a note
/// (registers); the segment's index groups the places.
fn what_is_at(segments: &[Segment], offset: usize) -> (Option<usize>, String) {
    let offset = offset as u64;
    match segments
        .iter()
        .position(|s| s.offset <= offset && offset < s.offset + s.filesz)
    {
        Some(i) if segments[i].kind == PT_LOAD => {
            let s = &segments[i];
            (
                Some(i),
                format!("memory at {:#x}", s.vaddr + offset - s.offset),
            )
        }
        Some(i) => (Some(i), "the notes (registers and process facts)".into()),
        None => (None, format!("file offset {offset:#x}")),
    }
}

/// Checks that the dump holds no bytes of any sealing key page, and no expanded AES-256 key
/// anywhere (memory or registers).
fn keys_absent(bytes: &[u8], keys: &[KeyPage], finding: &mut Finding) -> Result<(), ProbeError> {
    if keys.is_empty() {
        return Ok(());
    }
    let segments = segments(bytes)
        .ok_or_else(|| ProbeError::Broken("the dump's program headers cannot be read".into()))?;
    for key in keys {
        let page = describe_mapping(&key.mapping);
        let start = key.mapping.start as u64;
        match segments
            .iter()
            .find(|s| s.kind == PT_LOAD && s.vaddr <= start && start < s.vaddr + s.memsz)
        {
            None => finding.saw(format!(
                "the sealing key's page {page} has no segment in the dump"
            )),
            Some(s) if s.filesz == 0 => finding.saw(format!(
                "the sealing key's page {page} has a segment without contents in the dump"
            )),
            Some(s) => finding.broke(format!(
                "the sealing key's page {page} is dumped: the segment at {:#x} carries {} bytes",
                s.vaddr, s.filesz
            )),
        }
        match &key.sample {
            Some(sample) if super::contains(bytes, sample) => finding.broke(format!(
                "{KEY_COPY} in the dump: 32 bytes of the sealing key's page {page}"
            )),
            Some(_) => finding.saw(format!(
                "32 bytes of the sealing key's page {page}, read from outside before the dump, \
                 are absent from it"
            )),
            None => {}
        }
    }
    if !super::sealed::cpu_has_aes() {
        finding.saw(
            "this CPU has no AES instructions: the cipher keeps its round keys bitsliced, which \
             the search for an expanded key in the dump does not recognise",
        );
        return Ok(());
    }
    let found = super::sealed::key_schedules(bytes);
    if found.is_empty() {
        finding.saw("no expanded AES-256 key anywhere in the dump (memory or registers)");
    } else {
        let mut places: Vec<(Option<usize>, String)> = Vec::new();
        for (segment, place) in found.iter().map(|&o| what_is_at(&segments, o)) {
            if segment.is_none() || !places.iter().any(|(s, _)| *s == segment) {
                places.push((segment, place));
            }
        }
        let places: Vec<String> = places.into_iter().map(|(_, place)| place).collect();
        finding.broke(format!(
            "{KEY_COPY} in the dump: round keys of an expanded AES-256 key, three in a row ({} \
             places), in {}",
            found.len(),
            places.join(", ")
        ));
    }
    Ok(())
}

fn read_dump(
    path: &Path,
    holder: &Holder,
    keys: &[KeyPage],
    finding: &mut Finding,
) -> Result<(), ProbeError> {
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
    keys_absent(&bytes, keys, finding)
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
    let keys = key_pages(&holder)?;
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
    read_dump(&dump, &holder, &keys, &mut finding)?;
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
    let keys = key_pages(&holder)?;
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
    read_dump(&dump, &holder, &keys, &mut finding)?;
    if inside {
        holder.leave()?;
    }
    holder.call("exit", "bye")?;
    Ok(finding)
}
