//! Repeats one operation N times so that `strace -f -c` shows the system calls it costs.
//!
//! ```sh
//! cargo build --release -p securememory-bench --example syscalls
//! strace -f -c -o /tmp/new.txt target/release/examples/syscalls new-close secretmem 1000
//! strace -f -c -o /tmp/raw.txt target/release/examples/syscalls raw-new-close secretmem 1000
//! strace -f -e trace=mprotect -c target/release/examples/syscalls overlapping-reads anonymous 10000
//! ```
//!
//! Operations: `new-close`, `create_random-close`, `raw-new-close`, `raw-random-close`,
//! `access`, `raw-access`, `two-readers` (two threads each making N reads of one secret),
//! and `overlapping-reads` (one thread holds a read open while the main
//! thread makes N reads; compare its `mprotect` count with N = 0).

#[cfg(target_os = "linux")]
fn main() {
    use securememory::{Backing, ProtectedMemorySecretFactory, SecretFactory};
    use securememory_bench::raw::{RawBacking, RawSecret};
    use securememory_bench::touch;
    use std::hint::black_box;
    use std::sync::atomic::{AtomicBool, Ordering};

    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: syscalls OPERATION anonymous|secretmem N";
    let operation = args.get(1).expect(usage).as_str();
    let (backing, raw_backing) = match args.get(2).expect(usage).as_str() {
        "anonymous" => (Backing::Anonymous, RawBacking::Anonymous),
        "secretmem" => (Backing::SecretMem, RawBacking::SecretMem),
        other => panic!("unknown backing {other}; {usage}"),
    };
    let n: usize = args.get(3).expect(usage).parse().expect(usage);
    let factory = ProtectedMemorySecretFactory::builder()
        .backing(backing)
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
                RawSecret::new(&mut buf, raw_backing)
                    .expect("new")
                    .close()
                    .expect("close");
            }
        }
        "raw-random-close" => {
            for _ in 0..n {
                RawSecret::random(32, raw_backing)
                    .expect("random")
                    .close()
                    .expect("close");
            }
        }
        "access" => {
            let secret = factory.new(&mut buf).expect("new");
            for _ in 0..n {
                black_box(secret.with_bytes(touch).expect("with_bytes"));
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
