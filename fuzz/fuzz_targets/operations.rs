//! Fuzzes sequences of operations on a few secrets, and the constructors' inputs (lengths,
//! readers that fail part-way, delimiters), against a plain model: every result must be the
//! model's (bytes, `Closed`, `Reentrant`, `InvalidLength`, `Read`), and nothing may crash.
//!
//! Input: the first byte picks the strategy; then each operation is an opcode byte and its
//! arguments, taken from the bytes that follow.

#![no_main]

use libfuzzer_sys::fuzz_target;
use securememory::{Error, ProtectedMemorySecretFactory, Secret, Strategy};
use std::io::{self, Read};
use std::sync::OnceLock;

const SLOTS: usize = 3;

/// One factory per strategy, made once (a factory per input would only slow the fuzzer).
fn factory(choice: u8) -> &'static ProtectedMemorySecretFactory {
    static FACTORIES: OnceLock<Vec<ProtectedMemorySecretFactory>> = OnceLock::new();
    let all = FACTORIES.get_or_init(|| {
        let mut all = vec![
            ProtectedMemorySecretFactory::builder()
                .strategy(Strategy::PageProtection)
                .build(),
            ProtectedMemorySecretFactory::builder()
                .strategy(Strategy::Sealed)
                .build(),
        ];
        if securememory::system::check_protection_keys().is_ok() {
            all.push(
                ProtectedMemorySecretFactory::builder()
                    .strategy(Strategy::ProtectionKey)
                    .build(),
            );
        }
        all
    });
    &all[usize::from(choice) % all.len()]
}

/// The input, read a byte at a time; zeros once it runs out.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&first, rest)) => {
                self.0 = rest;
                first
            }
            None => 0,
        }
    }

    fn slot(&mut self) -> usize {
        usize::from(self.byte()) % SLOTS
    }

    fn len(&mut self) -> usize {
        usize::from(self.byte() % 80)
    }
}

/// A reader giving `bytes`, then failing if `fail` (else ending).
struct FlakyReader<'a> {
    bytes: &'a [u8],
    fail: bool,
}

impl Read for FlakyReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.bytes.is_empty() {
            return if self.fail {
                Err(io::Error::other("the source failed"))
            } else {
                Ok(0)
            };
        }
        let n = buf.len().min(self.bytes.len());
        buf[..n].copy_from_slice(&self.bytes[..n]);
        self.bytes = &self.bytes[n..];
        Ok(n)
    }
}

#[derive(Clone)]
enum Model {
    Empty,
    Open(Vec<u8>),
    Closed,
}

fn expect_read(secret: &Secret, model: &Model) {
    let got = secret.with_bytes(<[u8]>::to_vec);
    match (model, got) {
        (Model::Open(bytes), Ok(read)) => assert_eq!(&read, bytes),
        (Model::Closed, Err(Error::Closed)) => {}
        (_, got) => panic!("read gave {got:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let factory = factory(input.byte());
    let mut secrets: Vec<Option<Secret>> = (0..SLOTS).map(|_| None).collect();
    let mut model = vec![Model::Empty; SLOTS];
    let mut steps = 0;
    while !input.0.is_empty() && steps < 64 {
        steps += 1;
        let op = input.byte() % 9;
        let slot = input.slot();
        match op {
            // `new` from the input's bytes.
            0 => {
                let len = input.len();
                let mut source: Vec<u8> = (0..len).map(|_| input.byte()).collect();
                let expected = source.clone();
                match factory.new(&mut source) {
                    Ok(secret) => {
                        assert!(len > 0 && source.iter().all(|&b| b == 0));
                        secrets[slot] = Some(secret);
                        model[slot] = Model::Open(expected);
                    }
                    Err(Error::InvalidLength) => assert!(len == 0 && source.is_empty()),
                    Err(other) => panic!("new: {other:?}"),
                }
            }
            // `from_reader` with a reader that may end early or fail.
            1 => {
                let len = input.len();
                let available = input.len();
                let fail = input.byte() & 1 == 1;
                let bytes: Vec<u8> = (0..available).map(|_| input.byte()).collect();
                let made = factory.from_reader(
                    FlakyReader {
                        bytes: &bytes,
                        fail,
                    },
                    len,
                );
                match made {
                    Ok(secret) => {
                        assert!(len > 0 && available >= len);
                        model[slot] = Model::Open(bytes[..len].to_vec());
                        secrets[slot] = Some(secret);
                    }
                    Err(Error::InvalidLength) => assert_eq!(len, 0),
                    Err(Error::Read(_)) => assert!(available < len),
                    Err(other) => panic!("from_reader: {other:?}"),
                }
            }
            // `from_reader_until` a delimiter, with a maximum.
            2 => {
                let delimiter = input.byte();
                let max = input.len();
                let available = input.len();
                let fail = input.byte() & 1 == 1;
                let bytes: Vec<u8> = (0..available).map(|_| input.byte()).collect();
                let end = bytes.iter().position(|&b| b == delimiter);
                let line = &bytes[..end.unwrap_or(bytes.len())];
                let mut kept = line;
                if delimiter == b'\n' {
                    kept = kept.strip_suffix(b"\r").unwrap_or(kept);
                }
                let made = factory.from_reader_until(
                    FlakyReader {
                        bytes: &bytes,
                        fail,
                    },
                    delimiter,
                    max,
                );
                // What reading up to the delimiter, at most `max` bytes, must give.
                let expected = if max == 0 {
                    Err("InvalidLength")
                } else if line.len() > max || (end.is_none() && fail) {
                    Err("Read")
                } else if kept.is_empty() {
                    Err("InvalidLength")
                } else {
                    Ok(kept.to_vec())
                };
                match (made, expected) {
                    (Ok(secret), Ok(kept)) => {
                        model[slot] = Model::Open(kept);
                        secrets[slot] = Some(secret);
                    }
                    (Err(Error::InvalidLength), Err("InvalidLength")) => {}
                    (Err(Error::Read(_)), Err("Read")) => {}
                    (made, expected) => panic!(
                        "from_reader_until gave {:?}, expected {expected:?}",
                        made.map(|_| ())
                    ),
                }
            }
            3 => {
                if let Some(secret) = &secrets[slot] {
                    expect_read(secret, &model[slot]);
                }
            }
            4 => {
                let delta = input.byte();
                if let Some(secret) = &secrets[slot] {
                    let written = secret
                        .with_bytes_mut(|b| b.iter_mut().for_each(|x| *x = x.wrapping_add(delta)));
                    match (&mut model[slot], written) {
                        (Model::Open(bytes), Ok(())) => {
                            bytes.iter_mut().for_each(|x| *x = x.wrapping_add(delta))
                        }
                        (Model::Closed, Err(Error::Closed)) => {}
                        (_, got) => panic!("write gave {got:?}"),
                    }
                }
            }
            5 => {
                let other = input.slot();
                if let (Some(a), Some(b)) = (&secrets[slot], &secrets[other]) {
                    let got = a.with_bytes(|_| {
                        (b.with_bytes(|_| ()), b.with_bytes_mut(|_| ()), a.close())
                    });
                    if let Ok((read, write, close)) = got {
                        if matches!(model[other], Model::Open(_)) {
                            assert!(read.is_ok());
                        }
                        if slot == other {
                            assert!(matches!(write, Err(Error::Reentrant { .. })));
                        }
                        assert!(matches!(close, Err(Error::Reentrant { .. })));
                    } else {
                        assert!(matches!(model[slot], Model::Closed));
                    }
                }
            }
            6 => {
                if let Some(secret) = &secrets[slot] {
                    secret.close().expect("close");
                    model[slot] = Model::Closed;
                }
            }
            7 => {
                secrets[slot] = None;
                model[slot] = Model::Empty;
            }
            _ => {
                let to = input.slot();
                if let Some(source) = &secrets[slot] {
                    match (factory.duplicate(source), model[slot].clone()) {
                        (Ok(copy), Model::Open(bytes)) => {
                            secrets[to] = Some(copy);
                            model[to] = Model::Open(bytes);
                        }
                        (Err(Error::Closed), Model::Closed) => {}
                        (got, _) => panic!("duplicate gave {:?}", got.map(|_| ())),
                    }
                }
            }
        }
    }
    for (secret, model) in secrets.iter().zip(&model) {
        if let Some(secret) = secret {
            expect_read(secret, model);
        }
    }
});
