//! P1: the secret's pages are locked in RAM — read from the kernel's own account of the holder's
//! memory, `/proc/PID/smaps`, with the other per-mapping flags the promises rely on.

use super::kernel_read::{parse_maps_line, Mapping};
use super::{Finding, ProbeError};
use crate::spawn::{Holder, HolderOptions};

/// One mapping's entry in `/proc/PID/smaps`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SmapsEntry {
    /// The mapping's header line, parsed.
    pub mapping: Option<Mapping>,
    /// `Size:` in kB.
    pub size_kb: u64,
    /// `Rss:` in kB.
    pub rss_kb: u64,
    /// `Locked:` in kB.
    pub locked_kb: u64,
    /// `ProtectionKey:` (the memory protection key the pages are tagged with), where the kernel
    /// shows it: on a CPU with protection keys.
    pub protection_key: Option<u64>,
    /// `VmFlags:` two-letter flags (`lo` locked, `dd` don't dump, `wf` wipe on fork, `dc` don't
    /// copy on fork, ...).
    pub flags: Vec<String>,
}

impl SmapsEntry {
    /// Whether the mapping has VmFlag `flag`.
    pub fn has(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }
}

/// Parses `/proc/PID/smaps`.
///
/// # Errors
/// When the file cannot be read.
pub fn smaps(pid: i32) -> std::io::Result<Vec<SmapsEntry>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    let mut entries: Vec<SmapsEntry> = Vec::new();
    for line in text.lines() {
        if let Some((key, value)) = line.split_once(':') {
            if !key.contains(' ') && !key.contains('-') {
                let Some(entry) = entries.last_mut() else {
                    continue;
                };
                let kb = || {
                    value
                        .split_whitespace()
                        .next()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0)
                };
                match key {
                    "Size" => entry.size_kb = kb(),
                    "Rss" => entry.rss_kb = kb(),
                    "Locked" => entry.locked_kb = kb(),
                    "ProtectionKey" => entry.protection_key = Some(kb()),
                    "VmFlags" => {
                        entry.flags = value.split_whitespace().map(str::to_string).collect();
                    }
                    _ => {}
                }
                continue;
            }
        }
        entries.push(SmapsEntry {
            mapping: parse_maps_line(line),
            ..SmapsEntry::default()
        });
    }
    Ok(entries)
}

/// The smaps entry of the mapping that contains `addr`.
pub fn entry_at(entries: &[SmapsEntry], addr: usize) -> Option<&SmapsEntry> {
    around(entries, addr).map(|(_, entry, _)| entry)
}

/// Finds the smaps entry of the mapping that contains `addr`, and its neighbours.
fn around(
    entries: &[SmapsEntry],
    addr: usize,
) -> Option<(Option<&SmapsEntry>, &SmapsEntry, Option<&SmapsEntry>)> {
    let i = entries.iter().position(|e| {
        e.mapping
            .as_ref()
            .is_some_and(|m| m.start <= addr && addr < m.end)
    })?;
    Some((
        i.checked_sub(1).map(|j| &entries[j]),
        &entries[i],
        entries.get(i + 1),
    ))
}

/// The pages that can hold a sealed secret's key in a holder: every locked (`lo`),
/// dump-excluded (`dd`) mapping that sits between two inaccessible guard mappings, other than
/// the one holding `scratch` (the area an access decrypts into); where some of them carry a
/// protection key, only those (the key's page is tagged with the library's key wherever the CPU
/// has them, a scratch area never is). The library exposes no address for its key; this is how
/// it looks from outside, and in a holder with one sealed secret there is one such page per kind
/// of memory in use (secret memory or anonymous). A holder of any other secret has none: its
/// only such mapping holds the secret itself. Without protection keys, the scratch area of a
/// second thread that read the secret would look the same: the probes read it from the main
/// thread only.
pub fn key_pages(entries: &[SmapsEntry], scratch: usize) -> Vec<SmapsEntry> {
    let candidates: Vec<SmapsEntry> = (0..entries.len())
        .filter(|&i| {
            let entry = &entries[i];
            let Some(m) = entry.mapping.as_ref() else {
                return false;
            };
            let before = i.checked_sub(1).map(|j| &entries[j]);
            let after = entries.get(i + 1);
            !(m.start <= scratch && scratch < m.end)
                && entry.has("lo")
                && entry.has("dd")
                && is_guard(before, |b| b.end == m.start)
                && is_guard(after, |a| a.start == m.end)
        })
        .map(|i| entries[i].clone())
        .collect();
    let tagged = |e: &SmapsEntry| e.protection_key.is_some_and(|k| k != 0);
    if candidates.iter().any(tagged) {
        candidates.into_iter().filter(tagged).collect()
    } else {
        candidates
    }
}

/// A mapping as evidence text: `0x..-0x.. perms name`.
pub fn describe_mapping(m: &Mapping) -> String {
    let name = if m.name.is_empty() {
        "anonymous"
    } else {
        &m.name
    };
    format!("{:#x}-{:#x} {} {name}", m.start, m.end, m.perms)
}

fn is_guard(neighbour: Option<&SmapsEntry>, adjacent: impl Fn(&Mapping) -> bool) -> bool {
    neighbour
        .and_then(|e| e.mapping.as_ref())
        .is_some_and(|m| adjacent(m) && m.perms.starts_with("---"))
}

/// Reads the holder's `/proc/PID/smaps` entry for the secret and checks that it is locked
/// (`Locked:` equal to its size, VmFlag `lo`), excluded from dumps (`dd`), kept from forked
/// children (`wf` or `dc`), backed by secret memory when the library says so, and flanked by
/// inaccessible guard mappings. For a sealed secret that is the scratch area, checked again
/// during an access, and the key's page is checked the same way.
///
/// # Errors
/// [`ProbeError::Broken`] when smaps cannot be read or has no mapping at the secret's address.
pub fn locked(options: &HolderOptions) -> Result<Finding, ProbeError> {
    let mut holder = Holder::spawn(options)?;
    let ready = holder.ready.clone();
    let mut finding = Finding::new(
        "P1",
        "/proc/PID/smaps of the secret's mapping",
        Some(&ready),
    );
    let entries = smaps(holder.pid())
        .map_err(|e| ProbeError::Broken(format!("reading /proc/{}/smaps: {e}", holder.pid())))?;
    let (before, entry, after) = around(&entries, ready.addr).ok_or_else(|| {
        ProbeError::Broken(format!(
            "no mapping contains the secret's address {:#x}",
            ready.addr
        ))
    })?;
    let m = entry.mapping.clone().unwrap_or(Mapping {
        start: 0,
        end: 0,
        perms: String::new(),
        name: String::new(),
    });
    let name = if m.name.is_empty() {
        "anonymous"
    } else {
        &m.name
    };
    let summary = format!(
        "mapping {:#x}-{:#x} {} {name}: Size {} kB, Rss {} kB, Locked {} kB, VmFlags {}",
        m.start,
        m.end,
        m.perms,
        entry.size_kb,
        entry.rss_kb,
        entry.locked_kb,
        entry.flags.join(" ")
    );
    if entry.locked_kb == entry.size_kb && entry.size_kb > 0 && entry.has("lo") {
        finding.saw(format!("locked: {summary}"));
    } else {
        finding.broke(format!("not (fully) locked: {summary}"));
    }
    if !ready.locked {
        finding.broke("the library reports the secret as not locked");
    }
    let flag = |finding: &mut Finding, ok: bool, yes: &str, no: &str| {
        if ok {
            finding.saw(yes.to_string());
        } else {
            finding.broke(no.to_string());
        }
    };
    flag(
        &mut finding,
        entry.has("dd"),
        "VmFlag dd: excluded from core dumps",
        "VmFlag dd missing: the mapping goes into core dumps",
    );
    flag(
        &mut finding,
        entry.has("wf") || entry.has("dc"),
        if entry.has("wf") {
            "VmFlag wf: wiped in a forked child"
        } else {
            "VmFlag dc: not mapped in a forked child"
        },
        "neither VmFlag wf nor dc: a forked child inherits the pages",
    );
    let secretmem = m.name.starts_with("/secretmem");
    if ready.backing == "secretmem" {
        flag(
            &mut finding,
            secretmem,
            "backed by memfd_secret (/secretmem)",
            "the library reports secretmem backing but the mapping is not /secretmem",
        );
    } else if secretmem {
        finding.broke("the library reports anonymous backing but the mapping is /secretmem");
    } else {
        finding.saw("private anonymous memory (not secretmem)");
    }
    // Checked whatever the library reports: the default factory promises guard pages (P7).
    flag(
        &mut finding,
        is_guard(before, |b| b.end == m.start) && is_guard(after, |a| a.start == m.end),
        "inaccessible (---p) guard mappings right before and after",
        "no inaccessible guard mapping on both sides",
    );
    if ready.sealed() {
        locked_sealed(&mut holder, &mut finding)?;
    }
    holder.call("exit", "bye")?;
    Ok(finding)
}

/// The rest of P1 for a sealed secret: the mapping checked above is the scratch area, which
/// holds the plaintext only during an access, so its smaps is read again while the holder sits
/// inside one; and the page of the key that opens the sealed bytes must be locked too.
fn locked_sealed(holder: &mut Holder, finding: &mut Finding) -> Result<(), ProbeError> {
    let pid = holder.pid();
    finding.saw("the mapping above is the scratch area an access decrypts the sealed secret into");
    let inside = holder.enter()?;
    let entries =
        smaps(pid).map_err(|e| ProbeError::Broken(format!("reading /proc/{pid}/smaps: {e}")))?;
    holder.leave()?;
    match entry_at(&entries, inside) {
        Some(e) if e.locked_kb == e.size_kb && e.size_kb > 0 && e.has("lo") => {
            finding.saw(format!(
                "inside an access the plaintext at {inside:#x} is in a locked mapping (Locked {} \
                 of {} kB)",
                e.locked_kb, e.size_kb
            ));
        }
        Some(e) => finding.broke(format!(
            "inside an access the plaintext at {inside:#x} is in a mapping that is not (fully) \
             locked: Locked {} of {} kB, VmFlags {}",
            e.locked_kb,
            e.size_kb,
            e.flags.join(" ")
        )),
        None => {
            return Err(ProbeError::Broken(format!(
                "no mapping contains the plaintext's address {inside:#x} inside an access"
            )))
        }
    }
    for key in super::sealed::required_key_pages(holder)? {
        super::sealed::key_page_flags(&key, &holder.ready.backing, finding);
    }
    Ok(())
}
