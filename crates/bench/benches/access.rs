//! Access: `with_bytes` reading every byte, against the raw `mprotect` cycle, the raw `WRPKRU`
//! cycle and the peers.
//!
//! Groups are `access/<size>/<threads>`; rows are `raw-mprotect-<backing>` (the baseline of
//! page protection), `secret-<backing>` (`Strategy::PageProtection`), `raw-wrpkru` (the baseline
//! of protection keys: `RDPKRU`, `WRPKRU` open, read, `WRPKRU` deny, on a page tagged with a key,
//! in secret memory where the kernel offers it), `secret-protection-key`
//! (`Strategy::ProtectionKey` with the default backing), `secrets-crate` (with
//! `--features peers-libsodium`: libsodium's `sodium_mprotect_*` through `SecretVec`) and
//! `memsec-anonymous`. The protection-key rows are skipped, with a note, where the CPU or kernel
//! has no protection keys.
//!
//! Sealed secrets: `raw-aead-open` (the baseline: copy a ciphertext into a buffer, AES-256-GCM
//! decrypt in place with a prepared key schedule, read, wipe the buffer) and `secret-sealed`
//! (`Strategy::Sealed` with the default backing). With two threads on one secret, each raw
//! thread has a buffer of its own.
//!
//! Writes: `write/32B/<threads>` groups measure `with_bytes_mut` flipping a byte, against the
//! raw cycles opened for writing: `raw-mprotect-<backing>` (`mprotect(READ | WRITE)`),
//! `raw-wrpkru` (the key opened writable) and `raw-aead-open-seal` (open as above, then encrypt
//! under a fresh nonce back into the allocation). Each secret has been read once first, as a
//! secret in use has, so a write pays what writes of such a secret pay (under protection keys
//! and sealing, making every thread fence before it looks for readers).

#[cfg(target_os = "linux")]
mod common;

#[cfg(target_os = "linux")]
mod linux {
    use super::common::{self, ProtectionKeyRows, SealedRows};
    use criterion::{criterion_group, BenchmarkGroup};
    use criterion::{measurement::WallTime, Criterion};
    use securememory::Secret;
    #[cfg(feature = "peers-libsodium")]
    use securememory_bench::peers;
    use securememory_bench::peers::Memsec;
    use securememory_bench::raw::{RawKeyedSecret, RawSealed, RawSecret};
    use securememory_bench::threads::{aggregate, BusySibling};
    use securememory_bench::{touch, SIZES};
    use std::hint::black_box;
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    /// Times `iters` calls of `access`, with a busy sibling thread running when `sibling`.
    fn timed(iters: u64, sibling: bool, mut access: impl FnMut()) -> Duration {
        let busy = sibling.then(BusySibling::start);
        let start = Instant::now();
        for _ in 0..iters {
            access();
        }
        let elapsed = start.elapsed();
        drop(busy);
        elapsed
    }

    fn one_thread(
        group: &mut BenchmarkGroup<'_, WallTime>,
        len: usize,
        sibling: bool,
        keys: Option<&ProtectionKeyRows>,
        sealed: Option<&SealedRows>,
    ) {
        let bytes = common::pattern(len);
        for (name, factory, raw_backing) in common::backings() {
            let raw = RawSecret::new(&mut bytes.clone(), raw_backing).expect("raw secret");
            group.bench_function(format!("raw-mprotect-{name}"), |b| {
                b.iter_custom(|iters| {
                    timed(iters, sibling, || {
                        black_box(raw.access(touch));
                    })
                })
            });
            raw.close().expect("closing a raw secret");
            let secret = factory.new(&mut bytes.clone()).expect("secret");
            group.bench_function(format!("secret-{name}"), |b| {
                b.iter_custom(|iters| {
                    timed(iters, sibling, || {
                        black_box(secret.with_bytes(touch).expect("with_bytes"));
                    })
                })
            });
            secret.close().expect("closing a secret");
        }
        if let Some(keys) = keys {
            let raw = RawKeyedSecret::new(&mut bytes.clone(), keys.raw_backing).expect("raw");
            group.bench_function("raw-wrpkru", |b| {
                b.iter_custom(|iters| {
                    timed(iters, sibling, || {
                        black_box(raw.access(touch));
                    })
                })
            });
            raw.close().expect("closing a raw secret");
            let secret = keys.factory.new(&mut bytes.clone()).expect("secret");
            group.bench_function("secret-protection-key", |b| {
                b.iter_custom(|iters| {
                    timed(iters, sibling, || {
                        black_box(secret.with_bytes(touch).expect("with_bytes"));
                    })
                })
            });
            secret.close().expect("closing a secret");
        }
        if let Some(sealed) = sealed {
            let raw = sealed.sealer.seal(&mut bytes.clone());
            let mut buffer = vec![0u8; len];
            group.bench_function("raw-aead-open", |b| {
                b.iter_custom(|iters| {
                    timed(iters, sibling, || {
                        black_box(sealed.sealer.open(&raw, &mut buffer, touch));
                    })
                })
            });
            raw.close();
            let secret = sealed.factory.new(&mut bytes.clone()).expect("secret");
            group.bench_function("secret-sealed", |b| {
                b.iter_custom(|iters| {
                    timed(iters, sibling, || {
                        black_box(secret.with_bytes(touch).expect("with_bytes"));
                    })
                })
            });
            secret.close().expect("closing a secret");
        }
        #[cfg(feature = "peers-libsodium")]
        {
            let sodium = peers::sodium(&bytes);
            group.bench_function("secrets-crate", |b| {
                b.iter_custom(|iters| {
                    timed(iters, sibling, || {
                        black_box(peers::sodium_access(&sodium));
                    })
                })
            });
        }
        let memsec = Memsec::new(&bytes, false);
        group.bench_function("memsec-anonymous", |b| {
            b.iter_custom(|iters| {
                timed(iters, sibling, || {
                    black_box(memsec.access());
                })
            })
        });
    }

    /// A plaintext buffer for each of two threads opening raw sealed secrets, made (and its
    /// pages touched) outside the measurement.
    fn buffers(len: usize) -> Vec<Mutex<Vec<u8>>> {
        (0..2).map(|_| Mutex::new(vec![0xffu8; len])).collect()
    }

    fn two_threads_shared(
        group: &mut BenchmarkGroup<'_, WallTime>,
        len: usize,
        keys: Option<&ProtectionKeyRows>,
        sealed: Option<&SealedRows>,
    ) {
        let bytes = common::pattern(len);
        for (name, factory, _) in common::backings() {
            let secret = factory.new(&mut bytes.clone()).expect("secret");
            group.bench_function(format!("secret-{name}"), |b| {
                b.iter_custom(|iters| {
                    aggregate(2, iters, |_, n| {
                        for _ in 0..n {
                            black_box(secret.with_bytes(touch).expect("with_bytes"));
                        }
                    })
                })
            });
            secret.close().expect("closing a secret");
        }
        if let Some(keys) = keys {
            // One page for both threads: each opens the key in its own rights register.
            let raw = RawKeyedSecret::new(&mut bytes.clone(), keys.raw_backing).expect("raw");
            group.bench_function("raw-wrpkru", |b| {
                b.iter_custom(|iters| {
                    aggregate(2, iters, |_, n| {
                        for _ in 0..n {
                            black_box(raw.access(touch));
                        }
                    })
                })
            });
            raw.close().expect("closing a raw secret");
            let secret = keys.factory.new(&mut bytes.clone()).expect("secret");
            group.bench_function("secret-protection-key", |b| {
                b.iter_custom(|iters| {
                    aggregate(2, iters, |_, n| {
                        for _ in 0..n {
                            black_box(secret.with_bytes(touch).expect("with_bytes"));
                        }
                    })
                })
            });
            secret.close().expect("closing a secret");
        }
        if let Some(sealed) = sealed {
            // One ciphertext for both threads, a buffer for each.
            let raw = sealed.sealer.seal(&mut bytes.clone());
            let buffers = buffers(len);
            group.bench_function("raw-aead-open", |b| {
                b.iter_custom(|iters| {
                    aggregate(2, iters, |index, n| {
                        let mut buffer = buffers[index].lock().expect("a buffer's lock");
                        for _ in 0..n {
                            black_box(sealed.sealer.open(&raw, &mut buffer, touch));
                        }
                    })
                })
            });
            raw.close();
            let secret = sealed.factory.new(&mut bytes.clone()).expect("secret");
            group.bench_function("secret-sealed", |b| {
                b.iter_custom(|iters| {
                    aggregate(2, iters, |_, n| {
                        for _ in 0..n {
                            black_box(secret.with_bytes(touch).expect("with_bytes"));
                        }
                    })
                })
            });
            secret.close().expect("closing a secret");
        }
    }

    fn two_threads_own(
        group: &mut BenchmarkGroup<'_, WallTime>,
        len: usize,
        keys: Option<&ProtectionKeyRows>,
        sealed: Option<&SealedRows>,
    ) {
        let bytes = common::pattern(len);
        for (name, factory, raw_backing) in common::backings() {
            let raws: Vec<Mutex<RawSecret>> = (0..2)
                .map(|_| {
                    Mutex::new(RawSecret::new(&mut bytes.clone(), raw_backing).expect("raw secret"))
                })
                .collect();
            group.bench_function(format!("raw-mprotect-{name}"), |b| {
                b.iter_custom(|iters| {
                    aggregate(2, iters, |index, n| {
                        let raw = raws[index].lock().expect("a raw secret's lock");
                        for _ in 0..n {
                            black_box(raw.access(touch));
                        }
                    })
                })
            });
            drop(raws);
            let secrets: Vec<Secret> = (0..2)
                .map(|_| factory.new(&mut bytes.clone()).expect("secret"))
                .collect();
            group.bench_function(format!("secret-{name}"), |b| {
                b.iter_custom(|iters| {
                    aggregate(2, iters, |index, n| {
                        for _ in 0..n {
                            black_box(secrets[index].with_bytes(touch).expect("with_bytes"));
                        }
                    })
                })
            });
        }
        if let Some(keys) = keys {
            let raws: Vec<RawKeyedSecret> = (0..2)
                .map(|_| RawKeyedSecret::new(&mut bytes.clone(), keys.raw_backing).expect("raw"))
                .collect();
            group.bench_function("raw-wrpkru", |b| {
                b.iter_custom(|iters| {
                    aggregate(2, iters, |index, n| {
                        for _ in 0..n {
                            black_box(raws[index].access(touch));
                        }
                    })
                })
            });
            drop(raws);
            let secrets: Vec<Secret> = (0..2)
                .map(|_| keys.factory.new(&mut bytes.clone()).expect("secret"))
                .collect();
            group.bench_function("secret-protection-key", |b| {
                b.iter_custom(|iters| {
                    aggregate(2, iters, |index, n| {
                        for _ in 0..n {
                            black_box(secrets[index].with_bytes(touch).expect("with_bytes"));
                        }
                    })
                })
            });
        }
        if let Some(sealed) = sealed {
            let raws: Vec<RawSealed> = (0..2)
                .map(|_| sealed.sealer.seal(&mut bytes.clone()))
                .collect();
            let buffers = buffers(len);
            group.bench_function("raw-aead-open", |b| {
                b.iter_custom(|iters| {
                    aggregate(2, iters, |index, n| {
                        let mut buffer = buffers[index].lock().expect("a buffer's lock");
                        for _ in 0..n {
                            black_box(sealed.sealer.open(&raws[index], &mut buffer, touch));
                        }
                    })
                })
            });
            drop(raws);
            let secrets: Vec<Secret> = (0..2)
                .map(|_| sealed.factory.new(&mut bytes.clone()).expect("secret"))
                .collect();
            group.bench_function("secret-sealed", |b| {
                b.iter_custom(|iters| {
                    aggregate(2, iters, |index, n| {
                        for _ in 0..n {
                            black_box(secrets[index].with_bytes(touch).expect("with_bytes"));
                        }
                    })
                })
            });
        }
    }

    /// A write: flips a byte and reads them all, so that the bytes really are written and read.
    #[inline]
    fn flip(bytes: &mut [u8]) -> u8 {
        bytes[0] ^= 1;
        touch(bytes)
    }

    /// Reads `secret` once, as a secret in use has been read: under protection keys and sealing,
    /// a write of such a secret makes every thread fence before it looks for readers.
    fn read_once(secret: &Secret) {
        black_box(secret.with_bytes(touch).expect("with_bytes"));
    }

    fn one_thread_writes(
        group: &mut BenchmarkGroup<'_, WallTime>,
        sibling: bool,
        keys: Option<&ProtectionKeyRows>,
        sealed: Option<&SealedRows>,
    ) {
        let bytes = common::pattern(32);
        for (name, factory, raw_backing) in common::backings() {
            let mut raw = RawSecret::new(&mut bytes.clone(), raw_backing).expect("raw secret");
            group.bench_function(format!("raw-mprotect-{name}"), |b| {
                b.iter_custom(|iters| {
                    timed(iters, sibling, || {
                        black_box(raw.access_mut(flip));
                    })
                })
            });
            raw.close().expect("closing a raw secret");
            let secret = factory.new(&mut bytes.clone()).expect("secret");
            read_once(&secret);
            group.bench_function(format!("secret-{name}"), |b| {
                b.iter_custom(|iters| {
                    timed(iters, sibling, || {
                        black_box(secret.with_bytes_mut(flip).expect("with_bytes_mut"));
                    })
                })
            });
            secret.close().expect("closing a secret");
        }
        if let Some(keys) = keys {
            let mut raw = RawKeyedSecret::new(&mut bytes.clone(), keys.raw_backing).expect("raw");
            group.bench_function("raw-wrpkru", |b| {
                b.iter_custom(|iters| {
                    timed(iters, sibling, || {
                        black_box(raw.access_mut(flip));
                    })
                })
            });
            raw.close().expect("closing a raw secret");
            let secret = keys.factory.new(&mut bytes.clone()).expect("secret");
            read_once(&secret);
            group.bench_function("secret-protection-key", |b| {
                b.iter_custom(|iters| {
                    timed(iters, sibling, || {
                        black_box(secret.with_bytes_mut(flip).expect("with_bytes_mut"));
                    })
                })
            });
            secret.close().expect("closing a secret");
        }
        if let Some(sealed) = sealed {
            let mut raw = sealed.sealer.seal(&mut bytes.clone());
            let mut buffer = vec![0u8; bytes.len()];
            group.bench_function("raw-aead-open-seal", |b| {
                b.iter_custom(|iters| {
                    timed(iters, sibling, || {
                        black_box(sealed.sealer.open_seal(&mut raw, &mut buffer, flip));
                    })
                })
            });
            raw.close();
            let secret = sealed.factory.new(&mut bytes.clone()).expect("secret");
            read_once(&secret);
            group.bench_function("secret-sealed", |b| {
                b.iter_custom(|iters| {
                    timed(iters, sibling, || {
                        black_box(secret.with_bytes_mut(flip).expect("with_bytes_mut"));
                    })
                })
            });
            secret.close().expect("closing a secret");
        }
    }

    fn access(c: &mut Criterion) {
        let keys = common::protection_key();
        let keys = keys.as_ref();
        let sealed = common::sealed();
        let sealed = sealed.as_ref();
        for (size, len) in SIZES {
            let mut group = c.benchmark_group(format!("access/{size}/1-thread"));
            one_thread(&mut group, len, false, keys, sealed);
            group.finish();
            let mut group = c.benchmark_group(format!("access/{size}/1-thread-busy-sibling"));
            one_thread(&mut group, len, true, keys, sealed);
            group.finish();
            let mut group = c.benchmark_group(format!("access/{size}/2-threads-shared"));
            two_threads_shared(&mut group, len, keys, sealed);
            group.finish();
            let mut group = c.benchmark_group(format!("access/{size}/2-threads-own"));
            two_threads_own(&mut group, len, keys, sealed);
            group.finish();
        }
    }

    fn write(c: &mut Criterion) {
        let keys = common::protection_key();
        let sealed = common::sealed();
        for (mode, sibling) in [("1-thread", false), ("1-thread-busy-sibling", true)] {
            let mut group = c.benchmark_group(format!("write/32B/{mode}"));
            one_thread_writes(&mut group, sibling, keys.as_ref(), sealed.as_ref());
            group.finish();
        }
    }

    criterion_group! {
        name = benches;
        config = common::criterion();
        targets = access, write
    }
}

#[cfg(target_os = "linux")]
criterion::criterion_main!(linux::benches);

#[cfg(not(target_os = "linux"))]
fn main() {}
