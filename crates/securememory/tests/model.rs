//! A model-based test: random sequences of operations on a few secrets, from a few threads,
//! compared step by step with a plain in-memory model of what every rule of the API contract
//! says they return. Shrinking gives a minimal failing sequence. Runs for every setup in
//! `common::SETUPS`, each case under a deadline so that a deadlock fails instead of hanging.
//!
//! `MODEL_CASES` sets the number of cases per setup (default 48).

#![cfg(target_os = "linux")]

mod common;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use securememory::{Error, Operation, ProtectedMemorySecretFactory, Secret};
use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

/// Secrets a sequence works on.
const SLOTS: usize = 3;

#[derive(Clone, Debug)]
enum Op {
    /// `new` from bytes `seed, seed+1, ...` of length `len` (0 must be refused).
    New {
        slot: usize,
        len: usize,
        seed: u8,
    },
    /// `create_random` of length `len`; the model learns the bytes from the first read.
    Random {
        slot: usize,
        len: usize,
    },
    /// `new_with` whose fill fails half the time.
    NewWith {
        slot: usize,
        len: usize,
        fail: bool,
    },
    Read {
        slot: usize,
    },
    /// `with_bytes_mut` adding `delta` to every byte.
    Write {
        slot: usize,
        delta: u8,
    },
    /// `reader()` read to the end in chunks of `chunk`.
    Reader {
        slot: usize,
        chunk: usize,
    },
    /// A read of `inner` inside a read of `outer`.
    Nested {
        outer: usize,
        inner: usize,
    },
    /// A write, a close and a read-inside-write attempted inside a read (or write) of `slot`.
    Reentrant {
        slot: usize,
        inside_write: bool,
    },
    /// A read on another thread.
    ReadElsewhere {
        slot: usize,
    },
    /// A write on another thread.
    WriteElsewhere {
        slot: usize,
        delta: u8,
    },
    Close {
        slot: usize,
    },
    Drop {
        slot: usize,
    },
    /// A read in a forked child: `Forked` there, nothing changed here.
    ForkedRead {
        slot: usize,
    },
    Duplicate {
        from: usize,
        to: usize,
    },
    ConstantTimeEq {
        slot: usize,
        flip: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let slot = 0..SLOTS;
    prop_oneof![
        3 => (slot.clone(), 0..70usize, any::<u8>()).prop_map(|(slot, len, seed)| Op::New { slot, len, seed }),
        1 => (slot.clone(), 1..40usize).prop_map(|(slot, len)| Op::Random { slot, len }),
        1 => (slot.clone(), 1..40usize, any::<bool>()).prop_map(|(slot, len, fail)| Op::NewWith { slot, len, fail }),
        4 => slot.clone().prop_map(|slot| Op::Read { slot }),
        3 => (slot.clone(), any::<u8>()).prop_map(|(slot, delta)| Op::Write { slot, delta }),
        1 => (slot.clone(), 1..9usize).prop_map(|(slot, chunk)| Op::Reader { slot, chunk }),
        2 => (slot.clone(), 0..SLOTS).prop_map(|(outer, inner)| Op::Nested { outer, inner }),
        1 => (slot.clone(), any::<bool>()).prop_map(|(slot, inside_write)| Op::Reentrant { slot, inside_write }),
        1 => slot.clone().prop_map(|slot| Op::ReadElsewhere { slot }),
        1 => (slot.clone(), any::<u8>()).prop_map(|(slot, delta)| Op::WriteElsewhere { slot, delta }),
        1 => slot.clone().prop_map(|slot| Op::Close { slot }),
        1 => slot.clone().prop_map(|slot| Op::Drop { slot }),
        1 => (slot.clone(), 0..SLOTS).prop_map(|(from, to)| Op::Duplicate { from, to }),
        1 => (slot.clone(), any::<bool>()).prop_map(|(slot, flip)| Op::ConstantTimeEq { slot, flip }),
        // Rare: a fork costs milliseconds.
        1 => slot.prop_map(|slot| Op::ForkedRead { slot }),
    ]
}

/// What the model knows of one slot.
#[derive(Clone, Debug)]
enum Model {
    Empty,
    /// Open, with these bytes (`None`: random, not read yet).
    Open(Option<Vec<u8>>),
    Closed,
}

struct World {
    secrets: Vec<Option<Arc<Secret>>>,
    model: Vec<Model>,
}

fn check(condition: bool, what: impl FnOnce() -> String) -> Result<(), TestCaseError> {
    if condition {
        Ok(())
    } else {
        Err(TestCaseError::fail(what()))
    }
}

impl World {
    fn new() -> World {
        World {
            secrets: vec![None; SLOTS],
            model: vec![Model::Empty; SLOTS],
        }
    }

    fn put(
        &mut self,
        slot: usize,
        made: Result<Secret, Error>,
        expected: Option<Vec<u8>>,
        len: usize,
    ) -> Result<(), TestCaseError> {
        match (made, len) {
            (Err(Error::InvalidLength), 0) => Ok(()),
            (Ok(secret), len) if len > 0 => {
                check(secret.len() == len, || {
                    format!("length {} for {len}", secret.len())
                })?;
                self.secrets[slot] = Some(Arc::new(secret));
                self.model[slot] = Model::Open(expected);
                Ok(())
            }
            (made, len) => Err(TestCaseError::fail(format!(
                "creating {len} bytes gave {made:?}"
            ))),
        }
    }

    /// Reads `slot` and compares with (or, for unread random bytes, teaches) the model.
    fn read(&mut self, slot: usize) -> Result<(), TestCaseError> {
        let Some(secret) = &self.secrets[slot] else {
            return Ok(());
        };
        let got = secret.with_bytes(<[u8]>::to_vec);
        match (&mut self.model[slot], got) {
            (Model::Open(known @ None), Ok(bytes)) => {
                *known = Some(bytes);
                Ok(())
            }
            (Model::Open(Some(expected)), Ok(bytes)) => check(&bytes == expected, || {
                format!("read {bytes:?}, model {expected:?}")
            }),
            (Model::Closed, Err(Error::Closed)) => Ok(()),
            (model, got) => Err(TestCaseError::fail(format!(
                "read gave {got:?}, model {model:?}"
            ))),
        }
    }

    fn apply(
        &mut self,
        factory: &ProtectedMemorySecretFactory,
        op: &Op,
    ) -> Result<(), TestCaseError> {
        match *op {
            Op::New { slot, len, seed } => {
                let mut source: Vec<u8> = (0..len).map(|i| seed.wrapping_add(i as u8)).collect();
                let expected = source.clone();
                let made = factory.new(&mut source);
                if made.is_ok() {
                    check(source.iter().all(|&b| b == 0), || "source not wiped".into())?;
                } else {
                    check(source == expected, || "source touched on failure".into())?;
                }
                self.put(slot, made, Some(expected), len)
            }
            Op::Random { slot, len } => {
                let made = factory.create_random(len);
                self.put(slot, made, None, len)
            }
            Op::NewWith { slot, len, fail } => {
                let made = factory.new_with(len, |b| {
                    b.fill(0x42);
                    if fail {
                        Err(Error::Corrupted)
                    } else {
                        Ok(())
                    }
                });
                if fail {
                    return check(matches!(made, Err(Error::Corrupted)), || {
                        format!("{made:?}")
                    });
                }
                self.put(slot, made, Some(vec![0x42; len]), len)
            }
            Op::Read { slot } => self.read(slot),
            Op::Write { slot, delta } | Op::WriteElsewhere { slot, delta } => {
                let Some(secret) = self.secrets[slot].clone() else {
                    return Ok(());
                };
                let elsewhere = matches!(op, Op::WriteElsewhere { .. });
                let write = move || {
                    secret.with_bytes_mut(|b| b.iter_mut().for_each(|x| *x = x.wrapping_add(delta)))
                };
                let result = if elsewhere {
                    std::thread::spawn(write).join().expect("writer thread")
                } else {
                    write()
                };
                match (&mut self.model[slot], result) {
                    (Model::Open(Some(bytes)), Ok(())) => {
                        bytes.iter_mut().for_each(|x| *x = x.wrapping_add(delta));
                        Ok(())
                    }
                    (Model::Open(None), Ok(())) => {
                        // Unknown random bytes stay unknown.
                        Ok(())
                    }
                    (Model::Closed, Err(Error::Closed)) => Ok(()),
                    (model, got) => Err(TestCaseError::fail(format!(
                        "write gave {got:?}, model {model:?}"
                    ))),
                }
            }
            Op::ReadElsewhere { slot } => {
                let Some(secret) = self.secrets[slot].clone() else {
                    return Ok(());
                };
                let got = std::thread::spawn(move || secret.with_bytes(<[u8]>::to_vec))
                    .join()
                    .expect("reader thread");
                match (&self.model[slot], got) {
                    (Model::Open(Some(expected)), Ok(bytes)) => {
                        check(&bytes == expected, || "read elsewhere differs".into())
                    }
                    (Model::Open(None), Ok(_)) | (Model::Closed, Err(Error::Closed)) => Ok(()),
                    (model, got) => Err(TestCaseError::fail(format!(
                        "read elsewhere gave {got:?}, model {model:?}"
                    ))),
                }
            }
            Op::Reader { slot, chunk } => {
                let Some(secret) = &self.secrets[slot] else {
                    return Ok(());
                };
                let mut reader = secret.reader();
                let mut all = Vec::new();
                let mut buf = vec![0u8; chunk];
                let result = loop {
                    match reader.read(&mut buf) {
                        Ok(0) => break Ok(all),
                        Ok(n) => all.extend_from_slice(&buf[..n]),
                        Err(e) => break Err(e),
                    }
                };
                match (&self.model[slot], result) {
                    (Model::Open(Some(expected)), Ok(bytes)) => {
                        check(&bytes == expected, || "reader differs".into())
                    }
                    (Model::Open(None), Ok(bytes)) => {
                        check(bytes.len() == secret.len(), || "reader length".into())
                    }
                    (Model::Closed, Err(_)) => Ok(()),
                    (model, got) => Err(TestCaseError::fail(format!(
                        "reader gave {got:?}, model {model:?}"
                    ))),
                }
            }
            Op::Nested { outer, inner } => {
                let (Some(a), Some(b)) = (&self.secrets[outer], &self.secrets[inner]) else {
                    return Ok(());
                };
                let got = a.with_bytes(|x| b.with_bytes(|y| (x.to_vec(), y.to_vec())));
                match (&self.model[outer], &self.model[inner], got) {
                    (Model::Closed, _, Err(Error::Closed)) => Ok(()),
                    (Model::Open(_), Model::Closed, Ok(Err(Error::Closed))) => Ok(()),
                    (Model::Open(x), Model::Open(y), Ok(Ok((gx, gy)))) => check(
                        x.as_ref().is_none_or(|x| *x == gx) && y.as_ref().is_none_or(|y| *y == gy),
                        || "nested read differs".into(),
                    ),
                    (mx, my, got) => Err(TestCaseError::fail(format!(
                        "nested read gave {got:?}, models {mx:?} {my:?}"
                    ))),
                }
            }
            Op::Reentrant { slot, inside_write } => {
                let Some(secret) = &self.secrets[slot] else {
                    return Ok(());
                };
                let inner = |s: &Secret| {
                    (
                        s.with_bytes_mut(|_| ()).err(),
                        s.close().err(),
                        s.with_bytes(|_| ()).err(),
                    )
                };
                let got = if inside_write {
                    secret.with_bytes_mut(|_| inner(secret))
                } else {
                    secret.with_bytes(|_| inner(secret))
                };
                match (&self.model[slot], got) {
                    (Model::Closed, Err(Error::Closed)) => Ok(()),
                    (Model::Open(_), Ok((write, close, read))) => {
                        let reentrant = |e: &Option<Error>, op: Operation| matches!(e, Some(Error::Reentrant { operation }) if *operation == op);
                        check(reentrant(&write, Operation::WithBytesMut), || {
                            format!("write inside: {write:?}")
                        })?;
                        check(reentrant(&close, Operation::Close), || {
                            format!("close inside: {close:?}")
                        })?;
                        if inside_write {
                            check(reentrant(&read, Operation::WithBytes), || {
                                format!("read inside a write: {read:?}")
                            })
                        } else {
                            check(read.is_none(), || format!("nested read: {read:?}"))
                        }
                    }
                    (model, got) => Err(TestCaseError::fail(format!(
                        "re-entrance gave {got:?}, model {model:?}"
                    ))),
                }
            }
            Op::Close { slot } => {
                let Some(secret) = &self.secrets[slot] else {
                    return Ok(());
                };
                check(secret.close().is_ok(), || "close failed".into())?;
                check(secret.is_closed(), || "not closed after close".into())?;
                self.model[slot] = Model::Closed;
                Ok(())
            }
            Op::Drop { slot } => {
                self.secrets[slot] = None;
                self.model[slot] = Model::Empty;
                Ok(())
            }
            Op::Duplicate { from, to } => {
                let Some(source) = self.secrets[from].clone() else {
                    return Ok(());
                };
                if let Model::Open(None) = self.model[from] {
                    self.read(from)?;
                }
                let made = factory.duplicate(&source);
                match (&self.model[from], made) {
                    (Model::Closed, Err(Error::Closed)) => Ok(()),
                    (Model::Open(Some(bytes)), Ok(copy)) => {
                        let bytes = bytes.clone();
                        let len = bytes.len();
                        self.put(to, Ok(copy), Some(bytes), len)
                    }
                    (model, got) => Err(TestCaseError::fail(format!(
                        "duplicate gave {got:?}, model {model:?}"
                    ))),
                }
            }
            Op::ConstantTimeEq { slot, flip } => {
                let Some(secret) = self.secrets[slot].clone() else {
                    return Ok(());
                };
                if let Model::Open(None) = self.model[slot] {
                    self.read(slot)?;
                }
                match &self.model[slot] {
                    Model::Open(Some(bytes)) => {
                        let mut other = bytes.clone();
                        if flip {
                            other[0] ^= 1;
                        }
                        check(secret.constant_time_eq(&other).ok() == Some(!flip), || {
                            "constant_time_eq".into()
                        })
                    }
                    _ => check(
                        matches!(secret.constant_time_eq(&[]), Err(Error::Closed)),
                        || "closed eq".into(),
                    ),
                }
            }
            Op::ForkedRead { slot } => {
                let Some(secret) = &self.secrets[slot] else {
                    return Ok(());
                };
                // SAFETY: the child only reads and exits with `_exit`.
                let pid = unsafe { libc::fork() };
                if pid == 0 {
                    let code = match secret.with_bytes(|_| ()) {
                        Err(Error::Forked) => 0,
                        _ => 1,
                    };
                    // SAFETY: ends the child at once, running nothing of the parent's.
                    unsafe { libc::_exit(code) };
                }
                let mut status = 0;
                // SAFETY: our own child.
                check(unsafe { libc::waitpid(pid, &mut status, 0) } == pid, || {
                    "waitpid".into()
                })?;
                check(
                    libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
                    || format!("the forked child's read was not Forked ({status:#x})"),
                )?;
                self.read(slot)
            }
        }
    }

    /// At the end: every open secret reads as the model says, and closes.
    fn finish(&mut self) -> Result<(), TestCaseError> {
        for slot in 0..SLOTS {
            self.read(slot)?;
            if let Some(secret) = self.secrets[slot].take() {
                check(secret.close().is_ok(), || "final close".into())?;
            }
        }
        Ok(())
    }
}

#[test]
fn random_operation_sequences_do_what_the_model_says_for_every_setup() {
    common::in_child_process!();
    let cases = std::env::var("MODEL_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(48);
    for setup in common::SETUPS {
        let factory = Arc::new(common::factory(setup));
        let mut runner = TestRunner::new(Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        });
        let result = runner.run(&proptest::collection::vec(op(), 1..40), |ops| {
            let factory = Arc::clone(&factory);
            common::within(Duration::from_secs(30), move || {
                let mut world = World::new();
                for op in &ops {
                    world.apply(&factory, op)?;
                }
                world.finish()
            })
        });
        if let Err(failure) = result {
            panic!("{setup:?}: {failure}");
        }
    }
}
