//! P9: a sealed secret (`Strategy::Sealed`) exists at rest only as ciphertext, and the key that
//! opens it is out of other processes' reach.
//!
//! What the library keeps, and how each piece is found from outside (the library exposes no
//! address but that of the bytes inside an access):
//!
//! - **the sealed bytes**: one ordinary heap allocation, `[nonce][tag][ciphertext]`, the nonce a
//!   64-bit little-endian counter, a fresh one at every seal (stored alone, or followed by the
//!   four zero bytes that make it a 12-byte AES-GCM nonce: both forms are looked for), the tag 16
//!   bytes. The probe reads the holder's writable private memory, has the secret rewritten
//!   (sealed again with the same plaintext), reads it again, and keeps the places where a block
//!   of that layout and the secret's length changed exactly as a fresh seal changes it: the
//!   counter one up, the tag and the ciphertext random-looking and different. Nothing else in a
//!   process changes so;
//! - **the key's page**: a locked, dump-excluded page between two guard pages, which is not the
//!   scratch area an access decrypts into ([`super::smaps::key_pages`]);
//! - **the scratch area**: where an access puts the plaintext (the holder's `ready` address).
//!
//! The key's page is not the only place the key could be: the cipher computes with it, and what
//! it leaves behind (the expanded key on the stack, in the vector registers) is as good as the
//! page. Those copies have a shape that gives them away whatever the key: AES-256 round keys in
//! a row satisfy the key expansion ([`key_schedules`], the search cold-boot attacks use). So
//! does the key stream: the ciphertext XOR the plaintext, which the probe knows both of.

use super::kernel_read::{
    maps, proc_mem_read, proc_mem_write, read_process, scan_process, vm_readv, Mapping, Read,
};
use super::smaps::{describe_mapping, key_pages, smaps, SmapsEntry};
use super::wipe::{ptrace, wait_stop};
use super::{contains, errno_name, Finding, ProbeError};
use crate::spawn::{Death, Holder, HolderOptions};
use std::collections::BTreeSet;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

/// The words that open every fact of a copy of the key (or of the key stream) found where it
/// must not be: what the key's page is for is lost by any such copy.
pub const KEY_COPY: &str = "a copy of the key";

/// Bytes of the nonce's counter at the start of the sealed bytes.
pub const COUNTER_LEN: usize = 8;
/// The forms of the stored nonce: its counter alone, or the whole 12-byte nonce (the counter
/// and four zero bytes).
pub const NONCE_LENS: [usize; 2] = [COUNTER_LEN, 12];
/// Bytes of the authentication tag after the nonce.
pub const TAG_LEN: usize = 16;

/// The largest mapping the search reads: larger ones are reserved address space, where a heap
/// allocation of a few dozen bytes does not live.
const MAX_MAPPING: usize = 64 << 20;

/// One block of sealed bytes found in the holder's memory.
#[derive(Clone, Debug)]
pub struct SealedBytes {
    /// Where the block starts.
    pub addr: usize,
    /// The mapping that holds it.
    pub mapping: Mapping,
    /// How many bytes of nonce the block starts with.
    pub nonce_len: usize,
    /// The nonce counter before and after the rewrite.
    pub counters: (u64, u64),
    /// How many bytes of the tag and ciphertext the rewrite changed.
    pub changed: usize,
    /// The block after the rewrite: what the secret is stored as now.
    pub stored: Vec<u8>,
}

impl SealedBytes {
    /// The tag and the ciphertext: what no other process may find once the secret is closed.
    pub fn sealed_part(&self) -> &[u8] {
        &self.stored[self.nonce_len..]
    }

    /// Where the ciphertext starts in [`stored`](Self::stored).
    pub fn header_len(&self) -> usize {
        self.nonce_len + TAG_LEN
    }

    /// The ciphertext as stored now.
    pub fn ciphertext(&self) -> &[u8] {
        &self.stored[self.header_len()..]
    }

    /// Evidence text.
    pub fn describe(&self) -> String {
        format!(
            "sealed bytes ([nonce][tag][ciphertext], {} bytes, {} of nonce) at {:#x} in {}: \
             rewriting the secret moved the nonce counter from {} to {} and changed {} of the {} \
             bytes of tag and ciphertext",
            self.stored.len(),
            self.nonce_len,
            self.addr,
            describe_mapping(&self.mapping),
            self.counters.0,
            self.counters.1,
            self.changed,
            self.stored.len() - self.nonce_len
        )
    }
}

/// The nonce counter of a block that starts like sealed bytes with a nonce of `nonce_len`
/// bytes: eight bytes of little-endian counter, then zeros.
fn counter(block: &[u8], nonce_len: usize) -> Option<u64> {
    let (count, zeros) = block.get(..nonce_len)?.split_at(COUNTER_LEN);
    zeros
        .iter()
        .all(|&b| b == 0)
        .then(|| u64::from_le_bytes(count.try_into().unwrap_or_default()))
}

/// Whether `bytes` look like the output of a cipher: few repeated values (48 random bytes take
/// about 44 distinct values; text, pointers and counters far fewer).
fn random_looking(bytes: &[u8]) -> bool {
    let mut seen = [false; 256];
    for &b in bytes {
        seen[usize::from(b)] = true;
    }
    let distinct = seen.iter().filter(|&&s| s).count();
    distinct * 4 >= bytes.len() * 3
}

/// The writable private mappings of `pid` and their bytes, read through `/proc/PID/mem`.
fn snapshot(pid: i32) -> Result<Vec<(Mapping, Vec<u8>)>, ProbeError> {
    let file = File::open(format!("/proc/{pid}/mem"))
        .map_err(|e| ProbeError::Skipped(format!("cannot open /proc/{pid}/mem: {e}")))?;
    let mappings =
        maps(pid).map_err(|e| ProbeError::Broken(format!("reading /proc/{pid}/maps: {e}")))?;
    Ok(mappings
        .into_iter()
        .filter(|m| m.perms.starts_with("rw") && m.perms.ends_with('p'))
        .filter(|m| m.end - m.start <= MAX_MAPPING)
        .filter_map(|m| {
            let mut bytes = vec![0u8; m.end - m.start];
            file.read_exact_at(&mut bytes, m.start as u64).ok()?;
            Some((m, bytes))
        })
        .collect())
}

/// Finds the holder's sealed bytes: reads its writable private memory, has the secret rewritten
/// (`rewrite`: sealed again under a fresh nonce), reads again, and returns every block of
/// `[nonce][tag][ciphertext]` of the secret's length whose nonce counter went up by one and whose
/// tag and ciphertext changed into other random-looking bytes. None for a secret that is not
/// sealed: rewriting it changes nothing.
///
/// # Errors
/// [`ProbeError::Skipped`] when the holder's memory cannot be read; [`ProbeError::Broken`] when
/// the holder misbehaves.
pub fn locate(holder: &mut Holder) -> Result<Vec<SealedBytes>, ProbeError> {
    let pid = holder.pid();
    let len = holder.ready.len;
    let before = snapshot(pid)?;
    holder.call("rewrite", "rewritten")?;
    let after = snapshot(pid)?;
    let mut found = Vec::new();
    for (m, old) in &before {
        let Some((_, new)) = after.iter().find(|(n, _)| n.start == m.start) else {
            continue;
        };
        let size = old.len().min(new.len());
        // The allocator aligns every block to at least 8 bytes, and so the library asks.
        for (at, nonce_len) in (0..size)
            .step_by(8)
            .flat_map(|at| NONCE_LENS.map(|n| (at, n)))
        {
            let block = nonce_len + TAG_LEN + len;
            if at + block > size {
                continue;
            }
            let (was, is) = (&old[at..at + block], &new[at..at + block]);
            let (Some(c0), Some(c1)) = (counter(was, nonce_len), counter(is, nonce_len)) else {
                continue;
            };
            if c1 != c0.wrapping_add(1) {
                continue;
            }
            let (was_sealed, is_sealed) = (&was[nonce_len..], &is[nonce_len..]);
            let changed = was_sealed
                .iter()
                .zip(is_sealed)
                .filter(|(a, b)| a != b)
                .count();
            // Two random bytes are equal one time in 256: a fresh seal changes nearly all.
            if changed * 8 >= was_sealed.len() * 7
                && random_looking(was_sealed)
                && random_looking(is_sealed)
            {
                found.push(SealedBytes {
                    addr: m.start + at,
                    mapping: m.clone(),
                    nonce_len,
                    counters: (c0, c1),
                    changed,
                    stored: is.to_vec(),
                });
            }
        }
    }
    Ok(found)
}

/// The holder's key pages, as [`key_pages`] finds them in its smaps.
///
/// # Errors
/// [`ProbeError::Broken`] when smaps cannot be read.
pub fn holder_key_pages(holder: &Holder) -> Result<Vec<SmapsEntry>, ProbeError> {
    let pid = holder.pid();
    let entries =
        smaps(pid).map_err(|e| ProbeError::Broken(format!("reading /proc/{pid}/smaps: {e}")))?;
    Ok(key_pages(&entries, holder.ready.addr))
}

/// The holder's key pages, which a sealed secret must have.
///
/// # Errors
/// [`ProbeError::Broken`] when none is found (the row that says so is P9's).
pub fn required_key_pages(holder: &Holder) -> Result<Vec<SmapsEntry>, ProbeError> {
    let pages = holder_key_pages(holder)?;
    if pages.is_empty() {
        return Err(ProbeError::Broken(
            "no page for the sealing key found in the holder's smaps (a locked, dump-excluded \
             page between guard pages besides the scratch area): see P9"
                .into(),
        ));
    }
    Ok(pages)
}

/// The mapping of a smaps entry (every entry [`key_pages`] returns has one).
pub fn mapping_of(entry: &SmapsEntry) -> Mapping {
    entry.mapping.clone().unwrap_or(Mapping {
        start: 0,
        end: 0,
        perms: String::new(),
        name: String::new(),
    })
}

/// Reads the key page from another process, through `/proc/PID/mem` and `process_vm_readv`:
/// both must be refused. Records what each did.
pub fn read_key_from_outside(pid: i32, key: &SmapsEntry, finding: &mut Finding) {
    let m = mapping_of(key);
    let len = m.end - m.start;
    let what = format!("the sealing key's page {}", describe_mapping(&m));
    let reads = [
        ("/proc/PID/mem", proc_mem_read(pid, m.start, len)),
        ("process_vm_readv", Ok(vm_readv(pid, m.start, len))),
    ];
    for (how, read) in reads {
        match read {
            Ok(Read::Refused(errno)) => {
                finding.saw(format!(
                    "{how} of {what}: refused with {}",
                    errno_name(errno)
                ));
            }
            Ok(Read::Bytes(bytes)) => {
                let nonzero = bytes.iter().filter(|&&b| b != 0).count();
                finding.broke(format!(
                    "{how} of {what} read {} bytes ({nonzero} of them not zero): another \
                     process reads the key, and with it opens the sealed bytes",
                    bytes.len()
                ));
            }
            Err(e) => finding.broke(format!("{how} of {what}: {e}")),
        }
    }
}

/// Checks the flags of a key page that keep it out of dumps, off disk and out of forked
/// children, as smaps shows them.
pub fn key_page_flags(key: &SmapsEntry, backing: &str, finding: &mut Finding) {
    let m = mapping_of(key);
    let mut facts = vec![format!(
        "Locked {} of {} kB, VmFlags {}",
        key.locked_kb,
        key.size_kb,
        key.flags.join(" ")
    )];
    if let Some(k) = key.protection_key.filter(|&k| k != 0) {
        facts.push(format!("ProtectionKey {k}"));
    }
    finding.saw(format!(
        "the sealing key's page {}: {}",
        describe_mapping(&m),
        facts.join(", ")
    ));
    let flag = |finding: &mut Finding, ok: bool, no: &str| {
        if !ok {
            finding.broke(format!("the sealing key's page: {no}"));
        }
    };
    flag(
        finding,
        key.locked_kb == key.size_kb && key.size_kb > 0 && key.has("lo"),
        "not (fully) locked",
    );
    flag(
        finding,
        key.has("dd"),
        "VmFlag dd missing: it goes into core dumps",
    );
    flag(
        finding,
        key.has("wf") || key.has("dc"),
        "neither VmFlag wf nor dc: a forked child inherits it",
    );
    let secretmem = m.name.starts_with("/secretmem");
    if backing == "secretmem" {
        flag(
            finding,
            secretmem,
            "the library reports secret memory, but the page is not /secretmem",
        );
    }
}

/// P9: a holder keeps a sealed secret; from outside, the probe reads every readable byte of the
/// process while the secret is idle (the plaintext must be nowhere), finds the sealed bytes
/// (they must be there, and change under a fresh nonce when the secret is rewritten), finds the
/// key's page (excluded from dumps, unreadable from outside), reads the process again while it
/// sits inside an access (the plaintext must stay out of reach), and last changes one byte of the
/// ciphertext: the next access must fail with `Corrupted` and leave the scratch area zeroed.
///
/// A secret that is not sealed fails it: its plaintext is readable from outside (anonymous
/// memory) or, wherever it is, nothing in the process is sealed bytes or a key's page.
///
/// # Errors
/// [`ProbeError::Skipped`] when the holder's memory cannot be read; [`ProbeError::Broken`] when
/// the holder misbehaves.
pub fn at_rest(options: &HolderOptions) -> Result<Finding, ProbeError> {
    let mut holder = Holder::spawn(options)?;
    let pid = holder.pid();
    let ready = holder.ready.clone();
    let marker = holder.marker;
    let mut finding = Finding::new(
        "P9",
        "read the process from outside idle and inside an access; find the sealed bytes and the \
         key's page; change one byte of the ciphertext",
        Some(&ready),
    );
    finding.saw(format!(
        "the library reports strategy {} for the secret",
        ready.strategy
    ));

    let idle = scan_process(pid, &marker)?;
    if idle.hits.is_empty() {
        finding.saw(format!(
            "idle: the plaintext is absent from every byte read from outside ({})",
            idle.describe()
        ));
    } else {
        finding.broke(format!(
            "idle: the plaintext is readable from outside {}",
            idle.hits.join("; ")
        ));
    }

    let sealed = locate(&mut holder)?;
    if sealed.is_empty() {
        finding.broke(format!(
            "no sealed bytes in the process: no block of [nonce][tag][ciphertext] for a {}-byte \
             secret in its writable private memory changed under a fresh nonce when the secret \
             was rewritten",
            ready.len
        ));
    }
    for s in &sealed {
        if contains(&s.stored, &marker) {
            finding.broke(format!("{}, and they hold the plaintext", s.describe()));
        } else {
            finding.saw(format!("{}; not the plaintext", s.describe()));
        }
    }

    let keys = holder_key_pages(&holder)?;
    if keys.is_empty() {
        finding.broke(
            "no page for a sealing key: no locked, dump-excluded page between guard pages \
             besides the one the bytes are read from",
        );
    }
    for key in &keys {
        key_page_flags(key, &ready.backing, &mut finding);
        read_key_from_outside(pid, key, &mut finding);
    }

    let inside_at = holder.enter()?;
    let inside = scan_process(pid, &marker)?;
    if inside.hits.is_empty() {
        finding.saw(format!(
            "inside an access (plaintext at {inside_at:#x}): the plaintext is absent from every \
             byte read from outside ({})",
            inside.describe()
        ));
    } else {
        finding.broke(format!(
            "inside an access the plaintext is readable from outside {}",
            inside.hits.join("; ")
        ));
    }
    holder.leave()?;

    if let Some(s) = sealed.first() {
        tamper(&mut holder, s, &mut finding)?;
    }
    holder.call("exit", "bye")?;
    Ok(finding)
}

/// Changes the first byte of the ciphertext from outside, then has the holder read the secret:
/// `with_bytes` must fail with `Corrupted` (no garbage handed out), and the scratch area must
/// hold zeros afterwards (what was decrypted, if anything, wiped).
fn tamper(holder: &mut Holder, s: &SealedBytes, finding: &mut Finding) -> Result<(), ProbeError> {
    let pid = holder.pid();
    let at = s.addr + s.header_len();
    let flipped = [!s.ciphertext()[0]];
    proc_mem_write(pid, at, &flipped)?;
    let answer = holder.call("open", "open ")?;
    match answer.strip_prefix("open with_bytes=") {
        Some("Corrupted") => finding.saw(format!(
            "one ciphertext byte at {at:#x} changed from outside: with_bytes returned \
             Err(Corrupted)"
        )),
        Some("Ok") => finding.broke(format!(
            "one ciphertext byte at {at:#x} changed from outside, and with_bytes returned Ok: \
             the change went unnoticed"
        )),
        Some(other) => finding.broke(format!(
            "one ciphertext byte at {at:#x} changed from outside: with_bytes returned \
             Err({other}) instead of Err(Corrupted)"
        )),
        None => {
            return Err(ProbeError::Broken(format!(
                "holder answered {answer:?} to \"open\""
            )))
        }
    }
    let scratch = holder.ready.addr;
    match holder.expect_death(&format!("touch {scratch:#x}"))? {
        Death::Answered(a) if a == "touched zeros" => finding.saw(format!(
            "after the refused access the scratch area at {scratch:#x} holds zeros"
        )),
        Death::Answered(a) if a.starts_with("touched bytes=") => finding.broke(format!(
            "after the refused access the scratch area at {scratch:#x} is not zeros: what was \
             decrypted is left there"
        )),
        Death::Answered(a) => {
            return Err(ProbeError::Broken(format!(
                "holder answered {a:?} to \"touch\""
            )))
        }
        Death::Died { .. } => {
            return Err(ProbeError::Broken(
                "the holder died reading its own scratch area outside an access".into(),
            ))
        }
    }
    Ok(())
}

/// The AES S-box.
const SBOX: [u8; 256] = [
    0x63, 0x7c, 0x77, 0x7b, 0xf2, 0x6b, 0x6f, 0xc5, 0x30, 0x01, 0x67, 0x2b, 0xfe, 0xd7, 0xab, 0x76,
    0xca, 0x82, 0xc9, 0x7d, 0xfa, 0x59, 0x47, 0xf0, 0xad, 0xd4, 0xa2, 0xaf, 0x9c, 0xa4, 0x72, 0xc0,
    0xb7, 0xfd, 0x93, 0x26, 0x36, 0x3f, 0xf7, 0xcc, 0x34, 0xa5, 0xe5, 0xf1, 0x71, 0xd8, 0x31, 0x15,
    0x04, 0xc7, 0x23, 0xc3, 0x18, 0x96, 0x05, 0x9a, 0x07, 0x12, 0x80, 0xe2, 0xeb, 0x27, 0xb2, 0x75,
    0x09, 0x83, 0x2c, 0x1a, 0x1b, 0x6e, 0x5a, 0xa0, 0x52, 0x3b, 0xd6, 0xb3, 0x29, 0xe3, 0x2f, 0x84,
    0x53, 0xd1, 0x00, 0xed, 0x20, 0xfc, 0xb1, 0x5b, 0x6a, 0xcb, 0xbe, 0x39, 0x4a, 0x4c, 0x58, 0xcf,
    0xd0, 0xef, 0xaa, 0xfb, 0x43, 0x4d, 0x33, 0x85, 0x45, 0xf9, 0x02, 0x7f, 0x50, 0x3c, 0x9f, 0xa8,
    0x51, 0xa3, 0x40, 0x8f, 0x92, 0x9d, 0x38, 0xf5, 0xbc, 0xb6, 0xda, 0x21, 0x10, 0xff, 0xf3, 0xd2,
    0xcd, 0x0c, 0x13, 0xec, 0x5f, 0x97, 0x44, 0x17, 0xc4, 0xa7, 0x7e, 0x3d, 0x64, 0x5d, 0x19, 0x73,
    0x60, 0x81, 0x4f, 0xdc, 0x22, 0x2a, 0x90, 0x88, 0x46, 0xee, 0xb8, 0x14, 0xde, 0x5e, 0x0b, 0xdb,
    0xe0, 0x32, 0x3a, 0x0a, 0x49, 0x06, 0x24, 0x5c, 0xc2, 0xd3, 0xac, 0x62, 0x91, 0x95, 0xe4, 0x79,
    0xe7, 0xc8, 0x37, 0x6d, 0x8d, 0xd5, 0x4e, 0xa9, 0x6c, 0x56, 0xf4, 0xea, 0x65, 0x7a, 0xae, 0x08,
    0xba, 0x78, 0x25, 0x2e, 0x1c, 0xa6, 0xb4, 0xc6, 0xe8, 0xdd, 0x74, 0x1f, 0x4b, 0xbd, 0x8b, 0x8a,
    0x70, 0x3e, 0xb5, 0x66, 0x48, 0x03, 0xf6, 0x0e, 0x61, 0x35, 0x57, 0xb9, 0x86, 0xc1, 0x1d, 0x9e,
    0xe1, 0xf8, 0x98, 0x11, 0x69, 0xd9, 0x8e, 0x94, 0x9b, 0x1e, 0x87, 0xe9, 0xce, 0x55, 0x28, 0xdf,
    0x8c, 0xa1, 0x89, 0x0d, 0xbf, 0xe6, 0x42, 0x68, 0x41, 0x99, 0x2d, 0x0f, 0xb0, 0x54, 0xbb, 0x16,
];

/// Whether round keys `a`, `b`, `c` (16 bytes each) follow one another in an AES-256 key
/// expansion: `c`'s words are `a`'s XORed with the word before, the first one through the
/// S-box (with the word rotated and a round constant added at every other round key).
fn expands(a: &[u8], b: &[u8], c: &[u8]) -> bool {
    if a.iter().all(|&x| x == 0) || c.iter().all(|&x| x == 0) {
        return false;
    }
    if (4..16).any(|k| c[k] != a[k] ^ c[k - 4]) {
        return false;
    }
    let d = [a[0] ^ c[0], a[1] ^ c[1], a[2] ^ c[2], a[3] ^ c[3]];
    let sub = |i: usize| SBOX[usize::from(b[i])];
    if d == [sub(12), sub(13), sub(14), sub(15)] {
        return true;
    }
    let rotated = [sub(13), sub(14), sub(15), sub(12)];
    d[1..] == rotated[1..] && (0..7).any(|i| d[0] ^ rotated[0] == 1 << i)
}

/// Where in `bytes` three round keys of an AES-256 key expansion lie in a row, in either order
/// (the offset of the lowest of the three). A whole expanded key (15 round keys) gives 13 such
/// places; nothing else gives one by chance (each takes 128 bits to agree).
pub fn key_schedules(bytes: &[u8]) -> Vec<usize> {
    let mut found = Vec::new();
    let mut at = 0;
    while at + 48 <= bytes.len() {
        let (x, y, z) = (
            &bytes[at..at + 16],
            &bytes[at + 16..at + 32],
            &bytes[at + 32..at + 48],
        );
        if expands(x, y, z) || expands(z, y, x) {
            found.push(at);
        }
        at += 4;
    }
    found
}

/// Whether this CPU has the AES instructions. Only then does the cipher keep its round keys in
/// the standard form [`key_schedules`] recognises; without them it keeps them bitsliced.
pub fn cpu_has_aes() -> bool {
    std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|info| {
        info.lines()
            .filter(|l| l.starts_with("flags"))
            .any(|l| l.split_whitespace().any(|f| f == "aes"))
    })
}

/// `NT_X86_XSTATE`: the register set with every vector register (`xmm`, and the upper halves).
const NT_X86_XSTATE: usize = 0x202;
/// `NT_PRFPREG`: the legacy floating-point and `xmm` register set.
const NT_PRFPREG: usize = 2;

/// The vector registers of thread `tid` (the `xsave` area, or at least the `fxsave` one), read
/// with ptrace as a debugger does: attach, stop it, read, let it go on.
///
/// # Errors
/// [`ProbeError::Skipped`] when ptrace is refused; [`ProbeError::Broken`] when the thread does not
/// stop in time.
pub fn vector_registers(tid: i32, timeout: Duration) -> Result<Vec<u8>, ProbeError> {
    ptrace(libc::PTRACE_SEIZE, tid, 0, 0).map_err(|e| {
        ProbeError::Skipped(format!(
            "ptrace(PTRACE_SEIZE) refused ({e}): kernel.yama.ptrace_scope or missing CAP_SYS_PTRACE"
        ))
    })?;
    let result = (|| {
        ptrace(libc::PTRACE_INTERRUPT, tid, 0, 0)
            .map_err(|e| ProbeError::Broken(format!("PTRACE_INTERRUPT: {e}")))?;
        wait_stop(tid, Instant::now() + timeout)?;
        for (set, size) in [(NT_X86_XSTATE, 1 << 16), (NT_PRFPREG, 512)] {
            let mut buf = vec![0u8; size];
            let mut iov = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            };
            if ptrace(libc::PTRACE_GETREGSET, tid, set, (&raw mut iov) as usize).is_ok() {
                buf.truncate(iov.iov_len);
                return Ok(buf);
            }
        }
        Err(ProbeError::Broken(format!(
            "PTRACE_GETREGSET gave neither NT_X86_XSTATE nor NT_PRFPREG: {}",
            std::io::Error::last_os_error()
        )))
    })();
    // The tracee is in a ptrace stop on every path that reaches here with the tracer attached.
    let _ = ptrace(libc::PTRACE_DETACH, tid, 0, 0);
    result
}

/// Where the holder's readable memory, its key pages (`keys`) left out, holds an expanded
/// AES-256 key, as evidence text (empty: nowhere), and how many bytes were read.
fn schedules_in_memory(pid: i32, keys: &[Mapping]) -> Result<(Vec<String>, usize), ProbeError> {
    let mut places: Vec<(Mapping, BTreeSet<usize>)> = Vec::new();
    let mut bytes_read = 0;
    read_process(pid, 48, |m, at, bytes| {
        bytes_read += bytes.len();
        // The key's own page, where other processes can read it, is P6's and the other P9
        // probe's finding; this one looks for copies.
        if keys.iter().any(|k| k.start == m.start) {
            return;
        }
        let found = key_schedules(bytes);
        if found.is_empty() {
            return;
        }
        if places.last().is_none_or(|(p, _)| p.start != m.start) {
            places.push((m.clone(), BTreeSet::new()));
        }
        if let Some((_, set)) = places.last_mut() {
            set.extend(found.into_iter().map(|o| at + o));
        }
    })?;
    let text = places
        .iter()
        .map(|(m, set)| {
            let first: Vec<String> = set.iter().take(3).map(|a| format!("{a:#x}")).collect();
            format!(
                "{} places in {} (at {}{})",
                set.len(),
                describe_mapping(m),
                first.join(", "),
                if set.len() > 3 { ", ..." } else { "" }
            )
        })
        .collect();
    Ok((text, bytes_read))
}

/// Looks for the expanded key and for `stream` (the key stream of the current seal, when known)
/// in the holder's readable memory and its vector registers; `when` says in which state.
fn no_key_copies(
    holder: &Holder,
    keys: &[Mapping],
    stream: Option<&[u8]>,
    when: &str,
    finding: &mut Finding,
) -> Result<(), ProbeError> {
    let pid = holder.pid();
    let (places, bytes_read) = schedules_in_memory(pid, keys)?;
    if places.is_empty() {
        finding.saw(format!(
            "{when}: no expanded AES-256 key in the {} KiB of the process read from outside",
            bytes_read / 1024
        ));
    } else {
        finding.broke(format!(
            "{KEY_COPY} {when}: round keys of an expanded AES-256 key, three in a row, are \
             readable from outside in {}",
            places.join("; ")
        ));
    }
    let registers = vector_registers(pid, Duration::from_secs(10))?;
    let in_registers = key_schedules(&registers).len();
    if in_registers == 0 {
        finding.saw(format!(
            "{when}: no expanded AES-256 key in the thread's vector registers ({} bytes read with \
             ptrace, as a debugger or a core dump reads them)",
            registers.len()
        ));
    } else {
        finding.broke(format!(
            "{KEY_COPY} {when}: the thread's vector registers hold round keys of an expanded \
             AES-256 key ({in_registers} places, three in a row), which ptrace and every core \
             dump read"
        ));
    }
    if let Some(stream) = stream {
        for (i, block) in stream.chunks(16).enumerate() {
            let scan = scan_process(pid, block)?;
            let in_regs = contains(&registers, block);
            if scan.hits.is_empty() && !in_regs {
                finding.saw(format!(
                    "{when}: key stream block {i} (ciphertext XOR plaintext) is nowhere in the \
                     process's readable memory or registers"
                ));
            } else {
                let mut places = scan.hits.clone();
                if in_regs {
                    places.push("in the vector registers".into());
                }
                finding.broke(format!(
                    "{KEY_COPY} stream {when}: block {i} (ciphertext XOR plaintext, which opens \
                     the sealed bytes without the key) is readable from outside {}",
                    places.join("; ")
                ));
            }
        }
    }
    Ok(())
}

/// P9, the key: a holder keeps a sealed secret, and no copy of what opens it may be readable from
/// outside: no expanded AES-256 key anywhere in the process's readable memory or in its thread's
/// vector registers, and no key stream of the current seal, after the secret was created, after
/// it was rewritten and read, and inside an access. A holder with no sealing key at all (a secret
/// that is not sealed) fails it.
///
/// # Errors
/// [`ProbeError::Skipped`] on a CPU without AES instructions (the cipher then keeps its round keys
/// in a form this search does not recognise) or when the holder cannot be read or traced;
/// [`ProbeError::Broken`] when the holder misbehaves.
pub fn key_copies(options: &HolderOptions) -> Result<Finding, ProbeError> {
    if !cpu_has_aes() {
        return Err(ProbeError::Skipped(
            "this CPU has no AES instructions (no aes flag in /proc/cpuinfo), so the cipher keeps \
             its round keys bitsliced, which the search for copies of the key does not recognise"
                .into(),
        ));
    }
    let mut holder = Holder::spawn(options)?;
    let mut finding = Finding::new(
        "P9",
        "search the process's readable memory and registers for the expanded key and the key \
         stream",
        Some(&holder.ready),
    );
    let keys: Vec<Mapping> = holder_key_pages(&holder)?.iter().map(mapping_of).collect();
    if keys.is_empty() {
        finding.broke(
            "no page for a sealing key: the secret is not sealed, so there is no key to keep out \
             of reach",
        );
    }
    no_key_copies(
        &holder,
        &keys,
        None,
        "once the secret is created",
        &mut finding,
    )?;
    let sealed = locate(&mut holder)?;
    holder.call("open", "open with_bytes=Ok")?;
    let stream: Option<Vec<u8>> = sealed.first().map(|s| {
        s.ciphertext()
            .iter()
            .zip(holder.marker)
            .map(|(c, p)| c ^ p)
            .collect()
    });
    no_key_copies(
        &holder,
        &keys,
        stream.as_deref(),
        "once it is rewritten and read",
        &mut finding,
    )?;
    holder.enter()?;
    no_key_copies(
        &holder,
        &keys,
        stream.as_deref(),
        "inside an access",
        &mut finding,
    )?;
    holder.leave()?;
    holder.call("exit", "bye")?;
    Ok(finding)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// FIPS-197, appendix A.3: the first round keys of the expansion of the AES-256 key
    /// `603deb10...0914dff4`.
    const ROUND_KEYS: [[u8; 16]; 4] = [
        [
            0x60, 0x3d, 0xeb, 0x10, 0x15, 0xca, 0x71, 0xbe, 0x2b, 0x73, 0xae, 0xf0, 0x85, 0x7d,
            0x77, 0x81,
        ],
        [
            0x1f, 0x35, 0x2c, 0x07, 0x3b, 0x61, 0x08, 0xd7, 0x2d, 0x98, 0x10, 0xa3, 0x09, 0x14,
            0xdf, 0xf4,
        ],
        [
            0x9b, 0xa3, 0x54, 0x11, 0x8e, 0x69, 0x25, 0xaf, 0xa5, 0x1a, 0x8b, 0x5f, 0x20, 0x67,
            0xfc, 0xde,
        ],
        [
            0xa8, 0xb0, 0x9c, 0x1a, 0x93, 0xd1, 0x94, 0xcd, 0xbe, 0x49, 0x84, 0x6e, 0xb7, 0x5d,
            0x5b, 0x9a,
        ],
    ];

    #[test]
    fn the_search_finds_round_keys_of_a_known_expansion_in_either_order() {
        let mut bytes = vec![0x11u8; 12];
        ROUND_KEYS.iter().for_each(|k| bytes.extend_from_slice(k));
        bytes.extend_from_slice(&[0x22; 20]);
        // Both kinds of step: rotated with a round constant (0 -> 2) and substituted (1 -> 3).
        assert_eq!(key_schedules(&bytes), [12, 28]);
        let mut reversed = vec![0x33u8; 8];
        ROUND_KEYS
            .iter()
            .rev()
            .for_each(|k| reversed.extend_from_slice(k));
        assert_eq!(key_schedules(&reversed), [8, 24]);
    }

    #[test]
    fn the_search_finds_nothing_in_other_bytes() {
        // One bit of the third round key's last word, which both triples depend on.
        let mut broken = ROUND_KEYS.concat();
        broken[44] ^= 1;
        assert!(key_schedules(&broken).is_empty());
        assert!(key_schedules(&[0u8; 4096]).is_empty());
        let counting: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 251) as u8).collect();
        assert!(key_schedules(&counting).is_empty());
    }

    #[test]
    fn sealed_bytes_start_with_a_counter_nonce() {
        let mut block = [0u8; 12 + TAG_LEN + 4];
        block[0] = 7;
        assert_eq!(counter(&block, 12), Some(7));
        block[9] = 1;
        assert_eq!(counter(&block, 12), None);
        assert_eq!(counter(&block, COUNTER_LEN), Some(7));
        assert_eq!(counter(&block[..8], 12), None);
    }

    #[test]
    fn random_looking_tells_cipher_output_from_structure() {
        let cipher_like: Vec<u8> = (0..48u32).map(|i| (i * 97 + 13) as u8).collect();
        assert!(random_looking(&cipher_like));
        assert!(!random_looking(&[0u8; 48]));
        assert!(!random_looking(
            b"0123456789abcdef0123456789abcdef0123456789abcdef"
        ));
    }
}
