//! Paired ratios: each performance target measured as candidate against baseline in alternating
//! short blocks (see `securememory_bench::paired`), so the ratio survives a noisy machine.
//!
//! Prints one line per comparison and writes them as JSON lines to `target/paired.json`, which
//! `scripts/bench-report` reads; a comparison is named by its candidate row and its baseline row
//! (one candidate may be compared with several baselines). Arguments that are not flags filter
//! comparisons by substring of either name.
//!
//! Page protection (`secret-<backing>`, pinned to `Strategy::PageProtection`) is compared with
//! the raw `mprotect` cycle and sequence; protection keys (`secret-protection-key`, skipped where
//! the CPU has none) with the raw `WRPKRU` cycle (`raw-wrpkru`), the raw `mprotect` cycle of the
//! same backing, itself without a busy sibling, itself on one thread (two threads' aggregate
//! throughput), and the raw sequence with `pkey_mprotect` (`raw-sequence-protection-key`).
//! Sealed secrets (`secret-sealed`) are compared with the raw AES-256-GCM open (`raw-aead-open`),
//! the raw `mprotect` cycle of the default backing, themselves without a busy sibling and on one
//! thread, the raw page sequence of the default backing and the raw seal (`raw-aead-seal`) for
//! their lifecycle, and the raw open and seal for writes (`raw-aead-open-seal`).

#[cfg(target_os = "linux")]
mod common;

#[cfg(target_os = "linux")]
fn main() {
    use securememory::Secret;
    use securememory_bench::paired::{compare, Paired};
    #[cfg(feature = "peers-libsodium")]
    use securememory_bench::peers;
    use securememory_bench::peers::Memsec;
    use securememory_bench::raw::{self, RawKeyedSecret, RawSecret};
    use securememory_bench::threads::{aggregate, BusySibling};
    use securememory_bench::touch;
    use std::hint::black_box;
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};

    const ACCESS_BLOCK: u64 = 1_000;
    const LIFECYCLE_BLOCK: u64 = 60;
    // Long blocks for two threads, so their start-up at the barrier weighs little.
    const SHARED_BLOCK: u64 = 10_000;
    // Protection-key accesses cost tens of nanoseconds: longer blocks still, so that starting
    // the threads (or the busy sibling) between blocks leaves no trace in the block measured.
    const KEY_THREADS_BLOCK: u64 = 100_000;
    // A sealed secret is made and closed in about a microsecond, against tens for a page: blocks
    // long enough that the sealed side is not lost in the timer's resolution.
    const SEALED_LIFECYCLE_BLOCK: u64 = 300;

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
    let wanted = |name: &str, baseline: &str| {
        filters.is_empty()
            || filters
                .iter()
                .any(|f| name.contains(f) || baseline.contains(f))
    };
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
            let baseline = format!("access/32B/{mode}/raw-mprotect-{backing}");
            if wanted(&name, &baseline) {
                let busy = sibling.then(BusySibling::start);
                record(compare(
                    &name,
                    &baseline,
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
        let baseline = format!("access/32B/1-thread/secret-{backing}");
        if wanted(&name, &baseline) {
            record(compare(
                &name,
                &baseline,
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
        let baseline = format!("access/32B/2-threads-own/raw-mprotect-{backing}");
        if wanted(&name, &baseline) {
            let raws: Vec<std::sync::Mutex<RawSecret>> = (0..2)
                .map(|_| {
                    let raw = RawSecret::new(&mut source.clone(), raw_backing).expect("raw");
                    std::sync::Mutex::new(raw)
                })
                .collect();
            record(compare(
                &name,
                &baseline,
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
        let baseline = format!("reader/32B/with_bytes-{backing}");
        if wanted(&name, &baseline) {
            let mut out = Vec::with_capacity(64);
            let mut copy = [0u8; 32];
            record(compare(
                &name,
                &baseline,
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
        let baseline = format!("lifecycle/32B/new-close/raw-sequence-{backing}");
        if wanted(&name, &baseline) {
            let (mut a, mut b) = (source.clone(), source.clone());
            record(compare(
                &name,
                &baseline,
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
        let baseline = format!("lifecycle/32B/create_random-close/raw-sequence-{backing}");
        if wanted(&name, &baseline) {
            record(compare(
                &name,
                &baseline,
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
        let baseline = format!("lifecycle/32B/new-close/raw-sequence-{backing}");
        if wanted(&name, &baseline) {
            let secretmem = backing == "secretmem";
            let mut b = source.clone();
            record(compare(
                &name,
                &baseline,
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

    if let Some(keys) = common::protection_key() {
        let secret = keys.factory.new(&mut source.clone()).expect("secret");
        let wrpkru = RawKeyedSecret::new(&mut source.clone(), keys.raw_backing).expect("raw");
        let mprotect = RawSecret::new(&mut source.clone(), keys.raw_backing).expect("raw");
        let alone = "access/32B/1-thread/secret-protection-key";
        let one_thread = |n| {
            timed(n, || {
                black_box(read(&secret));
            })
        };
        let raw_wrpkru = "access/32B/1-thread/raw-wrpkru";
        if wanted(alone, raw_wrpkru) {
            let raw = |n| {
                timed(n, || {
                    black_box(wrpkru.access(touch));
                })
            };
            record(compare(
                alone,
                raw_wrpkru,
                rounds,
                ACCESS_BLOCK,
                one_thread,
                raw,
            ));
        }
        let raw_mprotect = format!("access/32B/1-thread/raw-mprotect-{}", keys.backing);
        if wanted(alone, &raw_mprotect) {
            let raw = |n| {
                timed(n, || {
                    black_box(mprotect.access(touch));
                })
            };
            record(compare(
                alone,
                &raw_mprotect,
                rounds,
                ACCESS_BLOCK,
                one_thread,
                raw,
            ));
        }
        let name = "access/32B/1-thread-busy-sibling/secret-protection-key";
        if wanted(name, alone) {
            let with_sibling = |n| {
                let busy = BusySibling::start();
                let elapsed = one_thread(n);
                drop(busy);
                elapsed
            };
            record(compare(
                name,
                alone,
                rounds / 4 + 1,
                KEY_THREADS_BLOCK,
                with_sibling,
                one_thread,
            ));
        }
        let name = "access/32B/2-threads-shared/secret-protection-key";
        if wanted(name, alone) {
            let two_threads = |n| {
                aggregate(2, n, |_, n| {
                    for _ in 0..n {
                        black_box(read(&secret));
                    }
                })
            };
            record(compare(
                name,
                alone,
                rounds / 4 + 1,
                KEY_THREADS_BLOCK,
                two_threads,
                one_thread,
            ));
        }
        let name = "access/32B/2-threads-own/secret-protection-key";
        if wanted(name, alone) {
            let other = keys.factory.new(&mut source.clone()).expect("secret");
            let own = [&secret, &other];
            let two_threads = |n| {
                aggregate(2, n, |index, n| {
                    for _ in 0..n {
                        black_box(read(own[index]));
                    }
                })
            };
            record(compare(
                name,
                alone,
                rounds / 4 + 1,
                KEY_THREADS_BLOCK,
                two_threads,
                one_thread,
            ));
        }
        // The same scaling for the raw cycle: what two threads can gain on this machine at all.
        for mode in ["2-threads-shared", "2-threads-own"] {
            let name = format!("access/32B/{mode}/raw-wrpkru");
            if !wanted(&name, raw_wrpkru) {
                continue;
            }
            let other = RawKeyedSecret::new(&mut source.clone(), keys.raw_backing).expect("raw");
            let pages = if mode == "2-threads-own" {
                [&wrpkru, &other]
            } else {
                [&wrpkru, &wrpkru]
            };
            record(compare(
                &name,
                raw_wrpkru,
                rounds / 4 + 1,
                KEY_THREADS_BLOCK,
                |n| {
                    aggregate(2, n, |index, n| {
                        for _ in 0..n {
                            black_box(pages[index].access(touch));
                        }
                    })
                },
                |n| {
                    timed(n, || {
                        black_box(wrpkru.access(touch));
                    })
                },
            ));
        }
        drop((secret, wrpkru, mprotect));
        for (operation, group) in [
            ("new", "new-close"),
            ("create_random", "create_random-close"),
        ] {
            let name = format!("lifecycle/32B/{group}/secret-protection-key");
            let baseline = format!("lifecycle/32B/{group}/raw-sequence-protection-key");
            if !wanted(&name, &baseline) {
                continue;
            }
            let (mut a, mut b) = (source.clone(), source.clone());
            let random = operation == "create_random";
            record(compare(
                &name,
                &baseline,
                rounds,
                LIFECYCLE_BLOCK,
                |n| {
                    timed(n, || {
                        let secret = if random {
                            keys.factory.create_random(32)
                        } else {
                            a.copy_from_slice(&source);
                            keys.factory.new(&mut a)
                        };
                        secret.expect("secret").close().expect("close");
                    })
                },
                |n| {
                    timed(n, || {
                        let raw = if random {
                            RawKeyedSecret::random(32, keys.raw_backing)
                        } else {
                            b.copy_from_slice(&source);
                            RawKeyedSecret::new(&mut b, keys.raw_backing)
                        };
                        raw.expect("raw").close().expect("close");
                    })
                },
            ));
        }
    }

    if let Some(sealed) = common::sealed() {
        let (backing, raw_backing) = common::default_backing();
        let sealer = &sealed.sealer;
        let secret = sealed.factory.new(&mut source.clone()).expect("secret");
        let opened = sealer.seal(&mut source.clone());
        let mut buffer = [0u8; 32];
        let alone = "access/32B/1-thread/secret-sealed";
        let one_thread = |n| {
            timed(n, || {
                black_box(read(&secret));
            })
        };
        let raw_open = "access/32B/1-thread/raw-aead-open";
        if wanted(alone, raw_open) {
            record(compare(
                alone,
                raw_open,
                rounds,
                ACCESS_BLOCK,
                one_thread,
                |n| {
                    timed(n, || {
                        black_box(sealer.open(&opened, &mut buffer, touch));
                    })
                },
            ));
        }
        let raw_mprotect = format!("access/32B/1-thread/raw-mprotect-{backing}");
        if wanted(alone, &raw_mprotect) {
            let mprotect = RawSecret::new(&mut source.clone(), raw_backing).expect("raw");
            record(compare(
                alone,
                &raw_mprotect,
                rounds,
                ACCESS_BLOCK,
                one_thread,
                |n| {
                    timed(n, || {
                        black_box(mprotect.access(touch));
                    })
                },
            ));
        }
        let name = "access/32B/1-thread-busy-sibling/secret-sealed";
        if wanted(name, alone) {
            let with_sibling = |n| {
                let busy = BusySibling::start();
                let elapsed = one_thread(n);
                drop(busy);
                elapsed
            };
            record(compare(
                name,
                alone,
                rounds / 4 + 1,
                KEY_THREADS_BLOCK,
                with_sibling,
                one_thread,
            ));
        }
        let other = sealed.factory.new(&mut source.clone()).expect("secret");
        for (mode, own) in [
            ("2-threads-shared", [&secret, &secret]),
            ("2-threads-own", [&secret, &other]),
        ] {
            let name = format!("access/32B/{mode}/secret-sealed");
            if !wanted(&name, alone) {
                continue;
            }
            record(compare(
                &name,
                alone,
                rounds / 4 + 1,
                KEY_THREADS_BLOCK,
                |n| {
                    aggregate(2, n, |index, n| {
                        for _ in 0..n {
                            black_box(read(own[index]));
                        }
                    })
                },
                one_thread,
            ));
        }
        drop(other);
        // The same scaling for the raw open: what two threads can gain on this machine at all.
        let other = sealer.seal(&mut source.clone());
        for (mode, ciphertexts) in [
            ("2-threads-shared", [&opened, &opened]),
            ("2-threads-own", [&opened, &other]),
        ] {
            let name = format!("access/32B/{mode}/raw-aead-open");
            if !wanted(&name, raw_open) {
                continue;
            }
            let mut alone_buffer = [0u8; 32];
            record(compare(
                &name,
                raw_open,
                rounds / 4 + 1,
                KEY_THREADS_BLOCK,
                |n| {
                    aggregate(2, n, |index, n| {
                        let mut buffer = [0u8; 32];
                        for _ in 0..n {
                            black_box(sealer.open(ciphertexts[index], &mut buffer, touch));
                        }
                    })
                },
                |n| {
                    timed(n, || {
                        black_box(sealer.open(&opened, &mut alone_buffer, touch));
                    })
                },
            ));
        }
        drop(other);
        let name = "write/32B/1-thread/secret-sealed";
        let baseline = "write/32B/1-thread/raw-aead-open-seal";
        if wanted(name, baseline) {
            let mut written = sealer.seal(&mut source.clone());
            let flip = |bytes: &mut [u8]| {
                bytes[0] ^= 1;
                touch(bytes)
            };
            record(compare(
                name,
                baseline,
                rounds,
                ACCESS_BLOCK,
                |n| {
                    timed(n, || {
                        black_box(secret.with_bytes_mut(flip).expect("with_bytes_mut"));
                    })
                },
                |n| {
                    timed(n, || {
                        black_box(sealer.open_seal(&mut written, &mut buffer, flip));
                    })
                },
            ));
        }
        let name = "reader/32B/read_to_end-sealed";
        let baseline = "reader/32B/with_bytes-sealed";
        if wanted(name, baseline) {
            let mut out = Vec::with_capacity(64);
            let mut copy = [0u8; 32];
            record(compare(
                name,
                baseline,
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
        drop((secret, opened));
        for (operation, group) in [
            ("new", "new-close"),
            ("create_random", "create_random-close"),
        ] {
            let name = format!("lifecycle/32B/{group}/secret-sealed");
            let random = operation == "create_random";
            let (mut a, mut b) = (source.clone(), source.clone());
            let mut candidate = |n| {
                timed(n, || {
                    let secret = if random {
                        sealed.factory.create_random(32)
                    } else {
                        a.copy_from_slice(&source);
                        sealed.factory.new(&mut a)
                    };
                    secret.expect("secret").close().expect("close");
                })
            };
            let baseline = format!("lifecycle/32B/{group}/raw-sequence-{backing}");
            if wanted(&name, &baseline) {
                record(compare(
                    &name,
                    &baseline,
                    rounds,
                    SEALED_LIFECYCLE_BLOCK,
                    &mut candidate,
                    |n| {
                        timed(n, || {
                            let raw = if random {
                                RawSecret::random(32, raw_backing)
                            } else {
                                b.copy_from_slice(&source);
                                RawSecret::new(&mut b, raw_backing)
                            };
                            raw.expect("raw").close().expect("close");
                        })
                    },
                ));
            }
            let baseline = format!("lifecycle/32B/{group}/raw-aead-seal");
            if wanted(&name, &baseline) {
                record(compare(
                    &name,
                    &baseline,
                    rounds,
                    SEALED_LIFECYCLE_BLOCK,
                    &mut candidate,
                    |n| {
                        timed(n, || {
                            let raw = if random {
                                sealer.random(32).expect("raw")
                            } else {
                                b.copy_from_slice(&source);
                                sealer.seal(&mut b)
                            };
                            raw.close();
                        })
                    },
                ));
            }
        }
    }

    let raw = RawSecret::new(&mut source.clone(), raw::RawBacking::Anonymous).expect("raw");
    #[cfg(feature = "peers-libsodium")]
    {
        let name = "access/32B/1-thread/secrets-crate";
        if wanted(name, "access/32B/1-thread/raw-mprotect-anonymous") {
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
    if wanted(name, "access/32B/1-thread/raw-mprotect-anonymous") {
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
        if wanted(name, "lifecycle/32B/new-close/raw-sequence-anonymous") {
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
