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

#[cfg(target_os = "linux")]
mod common;

#[cfg(target_os = "linux")]
mod linux {
    use super::common::{self, ProtectionKeyRows};
    use criterion::{criterion_group, BenchmarkGroup};
    use criterion::{measurement::WallTime, Criterion};
    use securememory::{Secret, SecretFactory};
    #[cfg(feature = "peers-libsodium")]
    use securememory_bench::peers;
    use securememory_bench::peers::Memsec;
    use securememory_bench::raw::{RawKeyedSecret, RawSecret};
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

    fn two_threads_shared(
        group: &mut BenchmarkGroup<'_, WallTime>,
        len: usize,
        keys: Option<&ProtectionKeyRows>,
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
    }

    fn two_threads_own(
        group: &mut BenchmarkGroup<'_, WallTime>,
        len: usize,
        keys: Option<&ProtectionKeyRows>,
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
    }

    fn access(c: &mut Criterion) {
        let keys = common::protection_key();
        let keys = keys.as_ref();
        for (size, len) in SIZES {
            let mut group = c.benchmark_group(format!("access/{size}/1-thread"));
            one_thread(&mut group, len, false, keys);
            group.finish();
            let mut group = c.benchmark_group(format!("access/{size}/1-thread-busy-sibling"));
            one_thread(&mut group, len, true, keys);
            group.finish();
            let mut group = c.benchmark_group(format!("access/{size}/2-threads-shared"));
            two_threads_shared(&mut group, len, keys);
            group.finish();
            let mut group = c.benchmark_group(format!("access/{size}/2-threads-own"));
            two_threads_own(&mut group, len, keys);
            group.finish();
        }
    }

    criterion_group! {
        name = benches;
        config = common::criterion();
        targets = access
    }
}

#[cfg(target_os = "linux")]
criterion::criterion_main!(linux::benches);

#[cfg(not(target_os = "linux"))]
fn main() {}
