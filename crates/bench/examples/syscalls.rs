//! Repeats one operation N times so that `strace -f -c` shows the system calls it costs.
//!
//! ```sh
//! cargo build --release -p securememory-bench --example syscalls
//! strace -f -c -o /tmp/new.txt target/release/examples/syscalls new-close secretmem 1000
//! strace -f -c -o /tmp/raw.txt target/release/examples/syscalls raw-new-close secretmem 1000
//! strace -f -e trace=mprotect -c target/release/examples/syscalls overlapping-reads anonymous 10000
//! strace -f -c target/release/examples/syscalls access protection-key 10000
//! strace -f -c target/release/examples/syscalls new-close sealed 10000
//! ```
//!
//! `anonymous` and `secretmem` are `Strategy::PageProtection` with that backing (raw: the
//! `mprotect` cycle and sequence); `protection-key` is `Strategy::ProtectionKey` with the default
//! backing (raw: the `WRPKRU` cycle and the sequence with `pkey_mprotect`); `sealed` is
//! `Strategy::Sealed` with the default backing (raw: AES-256-GCM with a prepared key schedule,
//! the ciphertext on the heap).
//!
//! Operations: `new-close`, `create_random-close`, `raw-new-close`, `raw-random-close`,
//! `access`, `raw-access`, `two-readers` (two threads each making N reads of one secret),
//! and `overlapping-reads` (one thread holds a read open while the main
//! thread makes N reads; compare its `mprotect` count with N = 0).

#[cfg(target_os = "linux")]
fn main() {
    use securememory::{Backing, ProtectedMemorySecretFactory, Strategy};
    use securememory_bench::raw::{self, RawBacking, RawKeyedSecret, RawSealer, RawSecret};
    use securememory_bench::touch;
    use std::hint::black_box;
    use std::sync::atomic::{AtomicBool, Ordering};

    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: syscalls OPERATION anonymous|secretmem|protection-key|sealed N";
    let operation = args.get(1).expect(usage).as_str();
    let default_backing = if raw::secretmem_available() {
        RawBacking::SecretMem
    } else {
        RawBacking::Anonymous
    };
    let (backing, strategy, raw_backing) = match args.get(2).expect(usage).as_str() {
        "anonymous" => (
            Backing::Anonymous,
            Strategy::PageProtection,
            RawBacking::Anonymous,
        ),
        "secretmem" => (
            Backing::SecretMem,
            Strategy::PageProtection,
            RawBacking::SecretMem,
        ),
        "protection-key" => (Backing::Auto, Strategy::ProtectionKey, default_backing),
        "sealed" => (Backing::Auto, Strategy::Sealed, default_backing),
        other => panic!("unknown backing {other}; {usage}"),
    };
    let keyed = strategy == Strategy::ProtectionKey;
    let sealer = (strategy == Strategy::Sealed).then(|| RawSealer::new().expect("a raw sealer"));
    let n: usize = args.get(3).expect(usage).parse().expect(usage);
    let factory = ProtectedMemorySecretFactory::builder()
        .backing(backing)
        .strategy(strategy)
        .build();
    let source = [7u8; 32];
    let mut buf = source;
    match operation {
        "new-close" => {
            for _ in 0..n {
                buf.copy_from_slice(&source);
                factory.new(&mut buf).expect("new").close().expect("close");
            }
        }
        "create_random-close" => {
            for _ in 0..n {
                factory
                    .create_random(32)
                    .expect("create_random")
                    .close()
                    .expect("close");
            }
        }
        "raw-new-close" => {
            for _ in 0..n {
                buf.copy_from_slice(&source);
                if let Some(sealer) = &sealer {
                    sealer.seal(&mut buf).close();
                } else if keyed {
                    let raw = RawKeyedSecret::new(&mut buf, raw_backing).expect("new");
                    raw.close().expect("close");
                } else {
                    let raw = RawSecret::new(&mut buf, raw_backing).expect("new");
                    raw.close().expect("close");
                }
            }
        }
        "raw-random-close" => {
            for _ in 0..n {
                if let Some(sealer) = &sealer {
                    sealer.random(32).expect("random").close();
                } else if keyed {
                    let raw = RawKeyedSecret::random(32, raw_backing).expect("random");
                    raw.close().expect("close");
                } else {
                    let raw = RawSecret::random(32, raw_backing).expect("random");
                    raw.close().expect("close");
                }
            }
        }
        "access" => {
            let secret = factory.new(&mut buf).expect("new");
            for _ in 0..n {
                black_box(secret.with_bytes(touch).expect("with_bytes"));
            }
        }
        "raw-access" if sealer.is_some() => {
            let sealer = sealer.as_ref().expect("a raw sealer");
            let secret = sealer.seal(&mut buf);
            let mut buffer = [0u8; 32];
            for _ in 0..n {
                black_box(sealer.open(&secret, &mut buffer, touch));
            }
        }
        "raw-access" if keyed => {
            let secret = RawKeyedSecret::new(&mut buf, raw_backing).expect("new");
            for _ in 0..n {
                black_box(secret.access(touch));
            }
        }
        "raw-access" => {
            let secret = RawSecret::new(&mut buf, raw_backing).expect("new");
            for _ in 0..n {
                black_box(secret.access(touch));
            }
        }
        "overlapping-reads" => {
            let secret = factory.new(&mut buf).expect("new");
            let (inside, done) = (AtomicBool::new(false), AtomicBool::new(false));
            std::thread::scope(|scope| {
                scope.spawn(|| {
                    secret
                        .with_bytes(|_| {
                            inside.store(true, Ordering::SeqCst);
                            while !done.load(Ordering::SeqCst) {
                                std::hint::spin_loop();
                            }
                        })
                        .expect("holding read");
                });
                while !inside.load(Ordering::SeqCst) {
                    std::hint::spin_loop();
                }
                for _ in 0..n {
                    black_box(secret.with_bytes(touch).expect("with_bytes"));
                }
                done.store(true, Ordering::SeqCst);
            });
        }
        "two-readers" => {
            let secret = factory.new(&mut buf).expect("new");
            std::thread::scope(|scope| {
                for _ in 0..2 {
                    scope.spawn(|| {
                        for _ in 0..n {
                            black_box(secret.with_bytes(touch).expect("with_bytes"));
                        }
                    });
                }
            });
        }
        other => panic!("unknown operation {other}; {usage}"),
    }
}

#[cfg(not(target_os = "linux"))]
fn main() {}
