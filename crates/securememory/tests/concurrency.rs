//! Many threads on one secret: readers overlap, writers exclude, close waits and wins.
//! Synchronisation is by barriers and channels, never by sleeping; every test has a deadline.

mod common;

use securememory::{Backing, Error, ProtectedMemorySecretFactory, Secret};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Barrier};
use std::thread;

fn secret_from(factory: &ProtectedMemorySecretFactory, bytes: &[u8]) -> Arc<Secret> {
    Arc::new(factory.new(&mut bytes.to_vec()).unwrap())
}

fn secret_of(backing: Backing, bytes: &[u8]) -> Arc<Secret> {
    let factory = common::factory(backing);
    Arc::new(factory.new(&mut bytes.to_vec()).unwrap())
}

fn key() -> Vec<u8> {
    (0..32u8).map(|i| i.wrapping_mul(37) ^ 0x5a).collect()
}

#[test]
fn eight_threads_reading_thousands_of_times_see_exact_bytes() {
    for (_, factory) in common::configurations() {
        let secret = secret_from(&factory, &key());
        common::within(common::DEADLINE, move || {
            let start = Arc::new(Barrier::new(8));
            let threads: Vec<_> = (0..8)
                .map(|_| {
                    let secret = Arc::clone(&secret);
                    let start = Arc::clone(&start);
                    thread::spawn(move || {
                        let expected = key();
                        start.wait();
                        for _ in 0..5000 {
                            assert!(secret.with_bytes(|b| b == expected.as_slice()).unwrap());
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
        });
    }
}

#[test]
fn close_waits_for_an_access_in_flight() {
    for (_, factory) in common::configurations() {
        let secret = secret_from(&factory, &key());
        common::within(common::DEADLINE, move || {
            let (inside_tx, inside_rx) = mpsc::channel();
            let (finish_tx, finish_rx) = mpsc::channel::<()>();
            let reader_done = Arc::new(AtomicBool::new(false));
            let reader = {
                let secret = Arc::clone(&secret);
                let reader_done = Arc::clone(&reader_done);
                thread::spawn(move || {
                    secret
                        .with_bytes(|bytes| {
                            inside_tx.send(()).unwrap();
                            finish_rx.recv().unwrap();
                            // Still readable although close() has been called meanwhile.
                            let ok = bytes == key().as_slice();
                            reader_done.store(true, Ordering::SeqCst);
                            ok
                        })
                        .unwrap()
                })
            };
            inside_rx.recv().unwrap();
            let (closing_tx, closing_rx) = mpsc::channel();
            let closer = {
                let secret = Arc::clone(&secret);
                let reader_done = Arc::clone(&reader_done);
                thread::spawn(move || {
                    closing_tx.send(()).unwrap();
                    secret.close().unwrap();
                    reader_done.load(Ordering::SeqCst)
                })
            };
            closing_rx.recv().unwrap();
            // close() marks the secret closed before waiting: spin (bounded by the deadline)
            // until the closer has got that far.
            while !secret.is_closed() {
                thread::yield_now();
            }
            assert!(matches!(secret.with_bytes(|_| ()), Err(Error::Closed)));
            finish_tx.send(()).unwrap();
            assert!(reader.join().unwrap(), "the reader saw wrong bytes");
            assert!(
                closer.join().unwrap(),
                "close returned before the access in flight finished"
            );
        });
    }
}

#[test]
fn close_waits_for_a_writer_in_flight() {
    let secret = secret_of(Backing::Auto, &[0; 16]);
    common::within(common::DEADLINE, move || {
        let (inside_tx, inside_rx) = mpsc::channel();
        let (finish_tx, finish_rx) = mpsc::channel::<()>();
        let writer = {
            let secret = Arc::clone(&secret);
            thread::spawn(move || {
                secret
                    .with_bytes_mut(|bytes| {
                        inside_tx.send(()).unwrap();
                        finish_rx.recv().unwrap();
                        bytes.fill(1);
                    })
                    .unwrap()
            })
        };
        inside_rx.recv().unwrap();
        let closer = {
            let secret = Arc::clone(&secret);
            thread::spawn(move || secret.close())
        };
        while !secret.is_closed() {
            thread::yield_now();
        }
        finish_tx.send(()).unwrap();
        writer.join().unwrap();
        closer.join().unwrap().unwrap();
    });
}

#[test]
fn readers_racing_a_close_see_exact_bytes_or_closed() {
    for (_, factory) in common::configurations() {
        for _round in 0..20 {
            let secret = secret_from(&factory, &key());
            common::within(common::DEADLINE, move || {
                let start = Arc::new(Barrier::new(5));
                let readers: Vec<_> = (0..4)
                    .map(|_| {
                        let secret = Arc::clone(&secret);
                        let start = Arc::clone(&start);
                        thread::spawn(move || {
                            let expected = key();
                            start.wait();
                            let mut seen_closed = false;
                            for _ in 0..500 {
                                match secret.with_bytes(|b| b == expected.as_slice()) {
                                    Ok(true) => assert!(!seen_closed, "read after Closed"),
                                    Ok(false) => panic!("a reader saw wrong bytes"),
                                    Err(Error::Closed) => seen_closed = true,
                                    Err(other) => panic!("unexpected error: {other}"),
                                }
                            }
                        })
                    })
                    .collect();
                start.wait();
                secret.close().unwrap();
                for r in readers {
                    r.join().unwrap();
                }
            });
        }
    }
}

#[test]
fn concurrent_closers_all_return_once_fully_closed() {
    for _round in 0..20 {
        let secret = secret_of(Backing::Auto, &key());
        common::within(common::DEADLINE, move || {
            let start = Arc::new(Barrier::new(4));
            let closers: Vec<_> = (0..4)
                .map(|_| {
                    let secret = Arc::clone(&secret);
                    let start = Arc::clone(&start);
                    thread::spawn(move || {
                        start.wait();
                        secret.close().unwrap();
                        assert!(secret.is_closed());
                        assert!(matches!(secret.with_bytes(|_| ()), Err(Error::Closed)));
                    })
                })
                .collect();
            for c in closers {
                c.join().unwrap();
            }
        });
    }
}

#[test]
fn writers_are_exclusive_readers_never_see_a_torn_write() {
    for (_, factory) in common::configurations() {
        let secret = secret_from(&factory, &[0; 64]);
        common::within(common::DEADLINE, move || {
            let start = Arc::new(Barrier::new(4));
            let writes = Arc::new(AtomicUsize::new(0));
            let mut threads = Vec::new();
            for _ in 0..2 {
                let secret = Arc::clone(&secret);
                let start = Arc::clone(&start);
                let writes = Arc::clone(&writes);
                threads.push(thread::spawn(move || {
                    start.wait();
                    for i in 0..300u32 {
                        secret
                            .with_bytes_mut(|bytes| {
                                // Write byte by byte: another writer or a reader inside this
                                // window would see a mix of two values.
                                let value = (i % 251) as u8;
                                for b in bytes.iter_mut() {
                                    *b = value;
                                    std::hint::black_box(&b);
                                }
                                assert!(bytes.iter().all(|&b| b == value), "writers overlapped");
                            })
                            .unwrap();
                        writes.fetch_add(1, Ordering::Relaxed);
                    }
                }));
            }
            for _ in 0..2 {
                let secret = Arc::clone(&secret);
                let start = Arc::clone(&start);
                threads.push(thread::spawn(move || {
                    start.wait();
                    for _ in 0..2000 {
                        let uniform = secret
                            .with_bytes(|bytes| bytes.iter().all(|&b| b == bytes[0]))
                            .unwrap();
                        assert!(uniform, "a reader saw a write in progress");
                    }
                }));
            }
            for t in threads {
                t.join().unwrap();
            }
            assert_eq!(writes.load(Ordering::Relaxed), 600);
        });
    }
}

#[test]
fn a_waiting_writer_is_not_starved_by_overlapping_readers() {
    let secret = secret_of(Backing::Auto, &[0; 8]);
    common::within(common::DEADLINE, move || {
        let stop = Arc::new(AtomicBool::new(false));
        let start = Arc::new(Barrier::new(4));
        let readers: Vec<_> = (0..3)
            .map(|_| {
                let secret = Arc::clone(&secret);
                let stop = Arc::clone(&stop);
                let start = Arc::clone(&start);
                thread::spawn(move || {
                    start.wait();
                    while !stop.load(Ordering::Relaxed) {
                        secret.with_bytes(|b| std::hint::black_box(b[0])).unwrap();
                    }
                })
            })
            .collect();
        start.wait();
        for i in 0..50u8 {
            secret.with_bytes_mut(|b| b[0] = i).unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            r.join().unwrap();
        }
    });
}

#[test]
fn a_reader_is_not_starved_by_continuous_writers() {
    for (_, factory) in common::configurations() {
        let secret = secret_from(&factory, &[0; 8]);
        common::within(common::DEADLINE, move || {
            let stop = Arc::new(AtomicBool::new(false));
            let writes = Arc::new(AtomicUsize::new(0));
            let start = Arc::new(Barrier::new(4));
            let writers: Vec<_> = (0..3)
                .map(|_| {
                    let secret = Arc::clone(&secret);
                    let stop = Arc::clone(&stop);
                    let writes = Arc::clone(&writes);
                    let start = Arc::clone(&start);
                    thread::spawn(move || {
                        start.wait();
                        while !stop.load(Ordering::Relaxed) {
                            secret
                                .with_bytes_mut(|b| b[0] = b[0].wrapping_add(1))
                                .unwrap();
                            writes.fetch_add(1, Ordering::Relaxed);
                        }
                    })
                })
                .collect();
            start.wait();
            // Read only once the writers are going, so that every read competes with them.
            while writes.load(Ordering::Relaxed) < 30 {
                thread::yield_now();
            }
            // Without fairness a single read here waited seconds behind the writers.
            for _ in 0..300 {
                secret.with_bytes(|b| std::hint::black_box(b[0])).unwrap();
            }
            stop.store(true, Ordering::Relaxed);
            for writer in writers {
                writer.join().unwrap();
            }
        });
    }
}
