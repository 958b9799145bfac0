//! Every way of loading a secret leaves no copy of its bytes behind: a child process loads a
//! marker one way, then scans every readable byte of its own memory (through `/proc/self/mem`,
//! as the promise probes scan another process) for it.
//!
//! The marker is never held in the clear outside the secret: the test keeps it masked and
//! unmasks it straight into the memory the library gives to fill, and the scan compares
//! unmasking as it goes. Secrets are sealed (ciphertext at rest, on every machine) or in secret
//! memory (which `/proc/self/mem` cannot read), so the secret itself is never what is found.

#![cfg(target_os = "linux")]

mod common;

use securememory::{Backing, Error, ProtectedMemorySecretFactory, Secret, Strategy};
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;

const MASK: u8 = 0x5c;
const LEN: usize = 48;

/// The marker, masked: `masked()[i] ^ MASK` is its byte `i`. Printable, so it can stand in a
/// string and a JSON document.
fn masked() -> [u8; LEN] {
    let mut random = [0u8; LEN];
    getrandom(&mut random);
    let alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    random.map(|r| alphabet[usize::from(r) % alphabet.len()] ^ MASK)
}

fn getrandom(buffer: &mut [u8]) {
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buffer))
        .expect("read /dev/urandom");
}

/// Writes the marker into `destination` (which must be `LEN` bytes).
fn unmask_into(masked: &[u8; LEN], destination: &mut [u8]) {
    for (d, m) in destination.iter_mut().zip(masked) {
        *d = m ^ MASK;
    }
}

/// Whether the marker lies anywhere in this process's readable memory.
fn marker_in_memory(masked: &[u8; LEN]) -> Option<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("read /proc/self/maps");
    let mem = File::open("/proc/self/mem").expect("open /proc/self/mem");
    let mut chunk = vec![0u8; 1 << 20];
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let range = fields.next().unwrap();
        let perms = fields.next().unwrap();
        if !perms.starts_with('r') || line.ends_with("[vvar]") || line.ends_with("[vsyscall]") {
            continue;
        }
        let (start, end) = range.split_once('-').unwrap();
        let (start, end) = (
            u64::from_str_radix(start, 16).unwrap(),
            u64::from_str_radix(end, 16).unwrap(),
        );
        let mut at = start;
        while at < end {
            let want = usize::try_from((end - at).min(chunk.len() as u64)).unwrap();
            // Overlap chunks by the marker's length, so one across a boundary is found.
            let Ok(got) = mem.read_at(&mut chunk[..want], at) else {
                break;
            };
            if got == 0 {
                break;
            }
            let found = chunk[..got]
                .windows(LEN)
                .position(|w| w.iter().zip(masked).all(|(b, m)| b ^ MASK == *m));
            if let Some(offset) = found {
                chunk.fill(0);
                return Some(format!("{:#x} in {line}", at + offset as u64));
            }
            if got < want || at + (got as u64) >= end {
                break;
            }
            at += (got - (LEN - 1)) as u64;
        }
    }
    chunk.fill(0);
    None
}

/// A reader that produces the marker, then `after`, unmasking into the caller's buffer.
struct MarkerReader<'a> {
    masked: &'a [u8; LEN],
    after: &'a [u8],
    at: usize,
}

impl Read for MarkerReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut n = 0;
        while n < buf.len() {
            if self.at < LEN {
                buf[n] = self.masked[self.at] ^ MASK;
            } else if let Some(&b) = self.after.get(self.at - LEN) {
                buf[n] = b;
            } else {
                break;
            }
            self.at += 1;
            n += 1;
        }
        Ok(n)
    }
}

/// The factories secrets are loaded into: sealed, and secret memory where the kernel has it.
fn factories() -> Vec<ProtectedMemorySecretFactory> {
    let mut all = vec![common::builder().strategy(Strategy::Sealed).build()];
    if !common::skip_without_secret_memory() {
        all.push(common::builder().backing(Backing::SecretMem).build());
    }
    all
}

/// Loads the marker with `load`, checks the secret holds it, and that no copy is left.
fn check(
    way: &str,
    load: impl Fn(&ProtectedMemorySecretFactory, &[u8; LEN]) -> Result<Secret, Error>,
) {
    for factory in factories() {
        let masked = masked();
        let secret = load(&factory, &masked).unwrap_or_else(|e| panic!("{way}: {e}"));
        let right = secret
            .with_bytes(|b| b.len() == LEN && b.iter().zip(&masked).all(|(b, m)| b ^ MASK == *m))
            .unwrap();
        assert!(right, "{way}: the secret does not hold the marker");
        if let Some(place) = marker_in_memory(&masked) {
            panic!(
                "{way} ({:?}) left a copy of the secret at {place}",
                secret.protection().strategy
            );
        }
    }
}

#[test]
fn the_scan_finds_a_copy_left_behind() {
    common::in_child_process!();
    let masked = masked();
    let mut leaked = vec![0u8; LEN];
    unmask_into(&masked, &mut leaked);
    assert!(
        marker_in_memory(&masked).is_some(),
        "the scan missed a plain copy"
    );
    zeroize(&mut leaked);
    assert!(
        marker_in_memory(&masked).is_none(),
        "the marker outlived its wipe"
    );
}

fn zeroize(bytes: &mut [u8]) {
    for b in bytes.iter_mut() {
        // SAFETY: a valid, exclusive reference.
        unsafe { std::ptr::write_volatile(b, 0) };
    }
}

#[test]
fn new_leaves_no_copy() {
    common::in_child_process!();
    check("new", |factory, masked| {
        let mut source = [0u8; LEN];
        unmask_into(masked, &mut source);
        factory.new(&mut source)
    });
}

#[test]
fn new_with_leaves_no_copy() {
    common::in_child_process!();
    check("new_with", |factory, masked| {
        factory.new_with(LEN, |destination| {
            unmask_into(masked, destination);
            Ok::<(), Error>(())
        })
    });
}

#[test]
fn from_reader_leaves_no_copy() {
    common::in_child_process!();
    check("from_reader", |factory, masked| {
        let reader = MarkerReader {
            masked,
            after: b"",
            at: 0,
        };
        factory.from_reader(reader, LEN)
    });
}

#[test]
fn from_reader_until_a_newline_leaves_no_copy_and_keeps_the_rest() {
    common::in_child_process!();
    check("from_reader_until", |factory, masked| {
        let mut reader = MarkerReader {
            masked,
            after: b"\r\nthe next line",
            at: 0,
        };
        let secret = factory.from_reader_until(&mut reader, b'\n', 4096)?;
        let mut rest = String::new();
        reader.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "the next line", "read past the delimiter");
        Ok(secret)
    });
}

#[test]
fn from_reader_to_end_leaves_no_copy() {
    common::in_child_process!();
    check("from_reader_to_end", |factory, masked| {
        factory.from_reader_to_end(
            MarkerReader {
                masked,
                after: b"",
                at: 0,
            },
            1024,
        )
    });
}

#[test]
fn from_vec_and_from_string_leave_no_copy_in_the_whole_capacity() {
    common::in_child_process!();
    check("from_vec", |factory, masked| {
        let mut bytes = Vec::with_capacity(4 * LEN);
        bytes.resize(LEN, 0);
        unmask_into(masked, &mut bytes);
        // Some of the marker in the spare capacity too: a shrink before the wipe would miss it.
        bytes.extend_from_slice(&[0; LEN]);
        unmask_into(masked, &mut bytes[LEN..]);
        bytes.truncate(LEN);
        factory.from_vec(bytes)
    });
    check("from_string", |factory, masked| {
        let mut bytes = vec![0u8; LEN];
        unmask_into(masked, &mut bytes);
        factory.from_string(String::from_utf8(bytes).unwrap())
    });
}

#[test]
fn duplicate_leaves_no_copy() {
    common::in_child_process!();
    check("duplicate", |factory, masked| {
        let original = factory.new_with(LEN, |d| {
            unmask_into(masked, d);
            Ok::<(), Error>(())
        })?;
        let copy = factory.duplicate(&original)?;
        assert!(original.constant_time_eq_secret(&copy)?);
        Ok(copy)
    });
}

#[cfg(feature = "serde")]
#[test]
fn deserializing_leaves_no_copy_once_the_input_is_wiped() {
    common::in_child_process!();
    check("serde_json::from_slice", |_, masked| {
        let mut text = b"{\"token\": \"".to_vec();
        let at = text.len();
        text.resize(at + LEN, 0);
        unmask_into(masked, &mut text[at..]);
        text.extend_from_slice(b"\"}");
        #[derive(serde::Deserialize)]
        struct Config {
            token: Secret,
        }
        let config: Result<Config, _> = serde_json::from_slice(&text);
        zeroize(&mut text);
        Ok(config.expect("deserialize").token)
    });
}

#[test]
fn failed_loads_wipe_what_they_read() {
    common::in_child_process!();
    for factory in factories() {
        let masked = masked();
        // The reader ends early: nothing of what it gave may stay.
        let short = MarkerReader {
            masked: &masked,
            after: b"",
            at: 0,
        };
        assert!(matches!(
            factory.from_reader(short, LEN + 1),
            Err(Error::Read(_))
        ));
        // Longer than allowed.
        let long = MarkerReader {
            masked: &masked,
            after: b"",
            at: 0,
        };
        assert!(matches!(
            factory.from_reader_until(long, b'\n', LEN - 1),
            Err(Error::Read(_))
        ));
        assert!(matches!(
            factory.from_reader_until(&b"\n"[..], b'\n', 16),
            Err(Error::InvalidLength)
        ));
        assert!(
            marker_in_memory(&masked).is_none(),
            "a failed load left the marker"
        );
    }
}
