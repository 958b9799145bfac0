//! Reader: `read_to_end` of a 32-byte secret, against one `with_bytes` access of it.
//!
//! The group is `reader/32B`; rows are `with_bytes-<backing>` (the baseline: one access that
//! copies the bytes out) and `read_to_end-<backing>` under `Strategy::PageProtection`, and
//! `with_bytes-sealed` and `read_to_end-sealed` under `Strategy::Sealed` (each `read` opens the
//! ciphertext once).

#[cfg(target_os = "linux")]
mod common;

#[cfg(target_os = "linux")]
mod linux {
    use super::common;
    use criterion::{criterion_group, Criterion};
    use std::hint::black_box;
    use std::io::Read;

    const LEN: usize = 32;

    fn reader(c: &mut Criterion) {
        let mut group = c.benchmark_group("reader/32B");
        let mut factories: Vec<_> = common::backings()
            .into_iter()
            .map(|(name, factory, _)| (name, factory))
            .collect();
        if let Some(sealed) = common::sealed() {
            factories.push(("sealed", sealed.factory));
        }
        for (name, factory) in factories {
            let secret = factory.new(&mut common::pattern(LEN)).expect("secret");
            group.bench_function(format!("with_bytes-{name}"), |b| {
                let mut out = [0u8; LEN];
                b.iter(|| {
                    secret
                        .with_bytes(|bytes| out.copy_from_slice(bytes))
                        .expect("with_bytes");
                    black_box(&mut out);
                })
            });
            group.bench_function(format!("read_to_end-{name}"), |b| {
                let mut out = Vec::with_capacity(2 * LEN);
                b.iter(|| {
                    out.clear();
                    let n = secret.reader().read_to_end(&mut out).expect("read_to_end");
                    black_box((n, &mut out));
                })
            });
            secret.close().expect("closing a secret");
        }
        group.finish();
    }

    criterion_group! {
        name = benches;
        config = common::criterion();
        targets = reader
    }
}

#[cfg(target_os = "linux")]
criterion::criterion_main!(linux::benches);

#[cfg(not(target_os = "linux"))]
fn main() {}
