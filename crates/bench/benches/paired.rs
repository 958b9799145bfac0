//! Paired ratios: each performance target measured as candidate against baseline in alternating
//! short blocks (see `securememory_bench::paired`), so the ratio survives a noisy machine.
//!
//! Prints one line per comparison and writes them as JSON lines to `target/paired.json`, which
//! `scripts/bench-report` reads. Arguments that are not flags filter comparisons by substring.

#[cfg(target_os = "linux")]
mod common;

#[cfg(target_os = "linux")]
fn main() {
    use securememory::{Secret, SecretFactory};
    use securememory_bench::paired::{compare, Paired};
    #[cfg(feature = "peers-libsodium")]
    use securememory_bench::peers;
    use securememory_bench::peers::Memsec;
    use securememory_bench::raw::{self, RawSecret};
    use securememory_bench::threads::{aggregate, BusySibling};
    use securememory_bench::touch;
    use std::hint::black_box;
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};

    const ACCESS_BLOCK: u64 = 1_000;
    const LIFECYCLE_BLOCK: u64 = 60;
    // Long blocks for two threads, so their start-up at the barrier weighs little.
    const SHARED_BLOCK: u64 = 10_000;

    fn timed(n: u64, mut op: impl FnMut()) -> Duration {
        let start = Instant::now();
        for _ in 0..n {
            op();
        }
        start.elapsed()
    }

    fn read(secret: &Secret) -> u8 {
        secret.with_bytes(touch).expect("with_bytes")
    }

    // Rounds per comparison; PAIRED_ROUNDS overrides.
    let rounds: usize = std::env::var("PAIRED_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(101);
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wanted = |name: &str| filters.is_empty() || filters.iter().any(|f| name.contains(f));
    let mut results: Vec<Paired> = Vec::new();
    let mut record = |p: Paired| {
        println!(
            "{:<55} {:>6.3}x  (IQR {:.3}-{:.3})  {:>9.1} ns vs {:>9.1} ns  [{}]",
            p.name,
            p.ratio,
            p.quartiles.0,
            p.quartiles.1,
            p.candidate_ns,
            p.baseline_ns,
            p.baseline
        );
        results.push(p);
    };
    let source = common::pattern(32);

    for (backing, factory, raw_backing) in common::backings() {
        let secret = factory.new(&mut source.clone()).expect("secret");
        let raw = RawSecret::new(&mut source.clone(), raw_backing).expect("raw secret");
        for sibling in [false, true] {
            let mode = if sibling {
                "1-thread-busy-sibling"
            } else {
                "1-thread"
            };
            let name = format!("access/32B/{mode}/secret-{backing}");
            if wanted(&name) {
                let busy = sibling.then(BusySibling::start);
                record(compare(
                    &name,
                    &format!("access/32B/{mode}/raw-mprotect-{backing}"),
                    rounds,
                    ACCESS_BLOCK,
                    |n| {
                        timed(n, || {
                            black_box(read(&secret));
                        })
                    },
                    |n| {
                        timed(n, || {
                            black_box(raw.access(touch));
                        })
                    },
                ));
                drop(busy);
            }
        }
        let name = format!("access/32B/2-threads-shared/secret-{backing}");
        if wanted(&name) {
            record(compare(
                &name,
                &format!("access/32B/1-thread/secret-{backing}"),
                rounds / 4 + 1,
                SHARED_BLOCK,
                |n| {
                    aggregate(2, n, |_, n| {
                        for _ in 0..n {
                            black_box(read(&secret));
                        }
                    })
                },
                |n| {
                    timed(n, || {
                        black_box(read(&secret));
                    })
                },
            ));
        }
        let name = format!("access/32B/2-threads-shared-vs-own-raw/secret-{backing}");
        if wanted(&name) {
            let raws: Vec<std::sync::Mutex<RawSecret>> = (0..2)
                .map(|_| {
                    let raw = RawSecret::new(&mut source.clone(), raw_backing).expect("raw");
                    std::sync::Mutex::new(raw)
                })
                .collect();
            record(compare(
                &name,
                &format!("access/32B/2-threads-own/raw-mprotect-{backing}"),
                rounds / 4 + 1,
                SHARED_BLOCK,
                |n| {
                    aggregate(2, n, |_, n| {
                        for _ in 0..n {
                            black_box(read(&secret));
                        }
                    })
                },
                |n| {
                    aggregate(2, n, |index, n| {
                        let raw = raws[index].lock().expect("a raw secret's lock");
                        for _ in 0..n {
                            black_box(raw.access(touch));
                        }
                    })
                },
            ));
        }
        let name = format!("reader/32B/read_to_end-{backing}");
        if wanted(&name) {
            let mut out = Vec::with_capacity(64);
            let mut copy = [0u8; 32];
            record(compare(
                &name,
                &format!("reader/32B/with_bytes-{backing}"),
                rounds,
                ACCESS_BLOCK,
                |n| {
                    timed(n, || {
                        out.clear();
                        black_box(secret.reader().read_to_end(&mut out).expect("read"));
                    })
                },
                |n| {
                    timed(n, || {
                        secret
                            .with_bytes(|b| copy.copy_from_slice(b))
                            .expect("with_bytes");
                        black_box(&mut copy);
                    })
                },
            ));
        }
        drop((secret, raw));
        let name = format!("lifecycle/32B/new-close/secret-{backing}");
        if wanted(&name) {
            let (mut a, mut b) = (source.clone(), source.clone());
            record(compare(
                &name,
                &format!("lifecycle/32B/new-close/raw-sequence-{backing}"),
                rounds,
                LIFECYCLE_BLOCK,
                |n| {
                    timed(n, || {
                        a.copy_from_slice(&source);
                        factory.new(&mut a).expect("new").close().expect("close");
                    })
                },
                |n| {
                    timed(n, || {
                        b.copy_from_slice(&source);
                        let r = RawSecret::new(&mut b, raw_backing).expect("raw");
                        r.close().expect("close");
                    })
                },
            ));
        }
        let name = format!("lifecycle/32B/create_random-close/secret-{backing}");
        if wanted(&name) {
            record(compare(
                &name,
                &format!("lifecycle/32B/create_random-close/raw-sequence-{backing}"),
                rounds,
                LIFECYCLE_BLOCK,
                |n| {
                    timed(n, || {
                        factory
                            .create_random(32)
                            .expect("new")
                            .close()
                            .expect("close")
                    })
                },
                |n| {
                    timed(n, || {
                        RawSecret::random(32, raw_backing)
                            .expect("raw")
                            .close()
                            .expect("close")
                    })
                },
            ));
        }
        let name = format!("lifecycle/32B/new-close/memsec-{backing}");
        if wanted(&name) {
            let secretmem = backing == "secretmem";
            let mut b = source.clone();
            record(compare(
                &name,
                &format!("lifecycle/32B/new-close/raw-sequence-{backing}"),
                rounds,
                LIFECYCLE_BLOCK,
                |n| timed(n, || drop(black_box(Memsec::new(&source, secretmem)))),
                |n| {
                    timed(n, || {
                        b.copy_from_slice(&source);
                        let r = RawSecret::new(&mut b, raw_backing).expect("raw");
                        r.close().expect("close");
                    })
                },
            ));
        }
    }

    let raw = RawSecret::new(&mut source.clone(), raw::RawBacking::Anonymous).expect("raw");
    #[cfg(feature = "peers-libsodium")]
    {
        let name = "access/32B/1-thread/secrets-crate";
        if wanted(name) {
            let sodium = peers::sodium(&source);
            record(compare(
                name,
                "access/32B/1-thread/raw-mprotect-anonymous",
                rounds,
                ACCESS_BLOCK,
                |n| {
                    timed(n, || {
                        black_box(peers::sodium_access(&sodium));
                    })
                },
                |n| {
                    timed(n, || {
                        black_box(raw.access(touch));
                    })
                },
            ));
        }
    }
    let name = "access/32B/1-thread/memsec-anonymous";
    if wanted(name) {
        let memsec = Memsec::new(&source, false);
        record(compare(
            name,
            "access/32B/1-thread/raw-mprotect-anonymous",
            rounds,
            ACCESS_BLOCK,
            |n| {
                timed(n, || {
                    black_box(memsec.access());
                })
            },
            |n| {
                timed(n, || {
                    black_box(raw.access(touch));
                })
            },
        ));
    }
    #[cfg(feature = "peers-libsodium")]
    {
        let name = "lifecycle/32B/new-close/secrets-crate";
        if wanted(name) {
            let mut b = source.clone();
            record(compare(
                name,
                "lifecycle/32B/new-close/raw-sequence-anonymous",
                rounds,
                LIFECYCLE_BLOCK,
                |n| timed(n, || drop(black_box(peers::sodium(&source)))),
                |n| {
                    timed(n, || {
                        b.copy_from_slice(&source);
                        let r = RawSecret::new(&mut b, raw::RawBacking::Anonymous).expect("raw");
                        r.close().expect("close");
                    })
                },
            ));
        }
    }

    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/paired.json");
    let mut file = std::fs::File::create(path).expect("creating target/paired.json");
    for p in &results {
        writeln!(file, "{}", p.to_json()).expect("writing target/paired.json");
    }
}

#[cfg(not(target_os = "linux"))]
fn main() {}
