//! Lifecycle: make a 32-byte secret and close it, against the raw system-call sequence and the
//! peers.
//!
//! Groups are `lifecycle/32B/new-close` and `lifecycle/32B/create_random-close`; rows are
//! `raw-sequence-<backing>` (the baseline of page protection), `secret-<backing>`
//! (`Strategy::PageProtection`), `raw-sequence-protection-key` (the baseline of protection keys:
//! the raw sequence of the default backing with `pkey_mprotect` tagging the pages instead of
//! `mprotect(NONE)`, and the wipe under `WRPKRU` instead of `mprotect(RW)`),
//! `secret-protection-key` (`Strategy::ProtectionKey`, the default backing; skipped where the CPU
//! has no protection keys), `secrets-crate` (`sodium_malloc` + `sodium_free`) and
//! `memsec-<backing>` (malloc, mprotect to no access, mprotect back, free).
//!
//! Sealed secrets: `raw-aead-seal` (the baseline: allocate, copy in or `getrandom(2)`, AES-256-GCM
//! encrypt in place with a prepared key schedule, wipe the source; then wipe and free) and
//! `secret-sealed` (`Strategy::Sealed`, the default backing). Its target is against the raw
//! page sequence of the default backing: a sealed secret needs no mapping of its own.

#[cfg(target_os = "linux")]
mod common;

#[cfg(target_os = "linux")]
mod linux {
    use super::common;
    use criterion::{criterion_group, Criterion};
    #[cfg(feature = "peers-libsodium")]
    use securememory_bench::peers;
    use securememory_bench::peers::Memsec;
    use securememory_bench::raw::{self, RawKeyedSecret, RawSecret};
    use std::hint::black_box;

    const LEN: usize = 32;

    fn new_close(c: &mut Criterion) {
        let source = common::pattern(LEN);
        let mut group = c.benchmark_group("lifecycle/32B/new-close");
        for (name, factory, raw_backing) in common::backings() {
            group.bench_function(format!("raw-sequence-{name}"), |b| {
                let mut buf = source.clone();
                b.iter(|| {
                    buf.copy_from_slice(&source);
                    let raw = RawSecret::new(black_box(&mut buf), raw_backing).expect("raw secret");
                    raw.close().expect("closing a raw secret");
                })
            });
            group.bench_function(format!("secret-{name}"), |b| {
                let mut buf = source.clone();
                b.iter(|| {
                    buf.copy_from_slice(&source);
                    let secret = factory.new(black_box(&mut buf)).expect("secret");
                    secret.close().expect("closing a secret");
                })
            });
        }
        if let Some(keys) = common::protection_key() {
            group.bench_function("raw-sequence-protection-key", |b| {
                let mut buf = source.clone();
                b.iter(|| {
                    buf.copy_from_slice(&source);
                    let raw = RawKeyedSecret::new(black_box(&mut buf), keys.raw_backing)
                        .expect("raw secret");
                    raw.close().expect("closing a raw secret");
                })
            });
            group.bench_function("secret-protection-key", |b| {
                let mut buf = source.clone();
                b.iter(|| {
                    buf.copy_from_slice(&source);
                    let secret = keys.factory.new(black_box(&mut buf)).expect("secret");
                    secret.close().expect("closing a secret");
                })
            });
        }
        if let Some(sealed) = common::sealed() {
            group.bench_function("raw-aead-seal", |b| {
                let mut buf = source.clone();
                b.iter(|| {
                    buf.copy_from_slice(&source);
                    sealed.sealer.seal(black_box(&mut buf)).close();
                })
            });
            group.bench_function("secret-sealed", |b| {
                let mut buf = source.clone();
                b.iter(|| {
                    buf.copy_from_slice(&source);
                    let secret = sealed.factory.new(black_box(&mut buf)).expect("secret");
                    secret.close().expect("closing a secret");
                })
            });
        }
        #[cfg(feature = "peers-libsodium")]
        group.bench_function("secrets-crate", |b| {
            b.iter(|| {
                let secret = peers::sodium(&source);
                drop(black_box(secret));
            })
        });
        let mut memsec = vec![("memsec-anonymous", false)];
        if raw::secretmem_available() {
            memsec.push(("memsec-secretmem", true));
        }
        for (name, secretmem) in memsec {
            group.bench_function(name, |b| {
                b.iter(|| drop(black_box(Memsec::new(&source, secretmem))))
            });
        }
        group.finish();
    }

    fn create_random_close(c: &mut Criterion) {
        let mut group = c.benchmark_group("lifecycle/32B/create_random-close");
        for (name, factory, raw_backing) in common::backings() {
            group.bench_function(format!("raw-sequence-{name}"), |b| {
                b.iter(|| {
                    let raw = RawSecret::random(black_box(LEN), raw_backing).expect("raw secret");
                    raw.close().expect("closing a raw secret");
                })
            });
            group.bench_function(format!("secret-{name}"), |b| {
                b.iter(|| {
                    let secret = factory.create_random(black_box(LEN)).expect("secret");
                    secret.close().expect("closing a secret");
                })
            });
        }
        if let Some(keys) = common::protection_key() {
            group.bench_function("raw-sequence-protection-key", |b| {
                b.iter(|| {
                    let raw = RawKeyedSecret::random(black_box(LEN), keys.raw_backing)
                        .expect("raw secret");
                    raw.close().expect("closing a raw secret");
                })
            });
            group.bench_function("secret-protection-key", |b| {
                b.iter(|| {
                    let secret = keys.factory.create_random(black_box(LEN)).expect("secret");
                    secret.close().expect("closing a secret");
                })
            });
        }
        if let Some(sealed) = common::sealed() {
            group.bench_function("raw-aead-seal", |b| {
                b.iter(|| {
                    let raw = sealed.sealer.random(black_box(LEN)).expect("raw secret");
                    raw.close();
                })
            });
            group.bench_function("secret-sealed", |b| {
                b.iter(|| {
                    let secret = sealed
                        .factory
                        .create_random(black_box(LEN))
                        .expect("secret");
                    secret.close().expect("closing a secret");
                })
            });
        }
        #[cfg(feature = "peers-libsodium")]
        group.bench_function("secrets-crate", |b| {
            b.iter(|| drop(black_box(secrets::SecretVec::<u8>::random(LEN))))
        });
        group.finish();
    }

    criterion_group! {
        name = benches;
        config = common::criterion();
        targets = new_close, create_random_close
    }
}

#[cfg(target_os = "linux")]
criterion::criterion_main!(linux::benches);

#[cfg(not(target_os = "linux"))]
fn main() {}
