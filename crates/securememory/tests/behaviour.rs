//! The public API contract (ARCHITECTURE.md), one test per rule, on the default factory and on each
//! backing where the rule could differ.

mod common;

use securememory::{
    Backing, Error, MlockPolicy, ProtectedMemorySecretFactory, Secret, SecretFactory, Strategy,
};
use std::io::Read;
use std::panic::{catch_unwind, AssertUnwindSafe};

fn factories() -> Vec<(&'static str, ProtectedMemorySecretFactory)> {
    let mut all = vec![
        ("default", common::default_factory()),
        ("anonymous", common::factory(Backing::Anonymous)),
        (
            "page-protection",
            common::builder().strategy(Strategy::PageProtection).build(),
        ),
        (
            "no-guard-pages",
            common::builder().guard_pages(false).build(),
        ),
    ];
    all.extend(common::protection_key_factory().map(|f| ("protection-key", f)));
    all
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + 7) as u8 | 1).collect()
}

#[test]
fn round_trip_preserves_bytes_at_page_boundaries() {
    for (name, factory) in factories() {
        for len in [1, 31, 4095, 4096, 4097, 64 * 1024 + 7] {
            let expected = pattern(len);
            let mut source = expected.clone();
            let secret = factory.new(&mut source).unwrap();
            assert_eq!(secret.len(), len, "{name}/{len}");
            assert!(!secret.is_empty());
            let matches = secret
                .with_bytes(|bytes| bytes == expected.as_slice())
                .unwrap();
            assert!(matches, "{name}/{len}: bytes changed on the way in");
            secret.close().unwrap();
        }
    }
}

#[test]
fn new_wipes_the_source_on_success() {
    let mut source = pattern(100);
    let secret = common::default_factory().new(&mut source).unwrap();
    assert!(
        source.iter().all(|&b| b == 0),
        "source not wiped: {source:?}"
    );
    assert!(secret.with_bytes(|b| b == pattern(100).as_slice()).unwrap());
}

#[test]
fn zero_length_is_invalid_and_leaves_the_source_alone() {
    let factory = common::default_factory();
    assert!(matches!(factory.new(&mut []), Err(Error::InvalidLength)));
    assert!(matches!(
        factory.create_random(0),
        Err(Error::InvalidLength)
    ));
    let message = factory.create_random(0).unwrap_err().to_string();
    assert!(message.contains("length"), "{message}");
}

#[test]
fn unmappable_length_is_invalid() {
    let factory = common::default_factory();
    for len in [usize::MAX, isize::MAX as usize] {
        assert!(
            matches!(factory.create_random(len), Err(Error::InvalidLength)),
            "{len}"
        );
    }
}

#[test]
fn random_secrets_differ() {
    let factory = common::default_factory();
    let a = factory.create_random(32).unwrap();
    let b = factory.create_random(32).unwrap();
    let a_bytes = a.with_bytes(|bytes| bytes.to_vec()).unwrap();
    let b_bytes = b.with_bytes(|bytes| bytes.to_vec()).unwrap();
    assert_ne!(a_bytes, b_bytes);
    assert_ne!(a_bytes, vec![0; 32], "random secret is all zeros");
}

#[test]
fn with_bytes_returns_the_callbacks_value() {
    let secret = common::default_factory()
        .new(&mut b"hello".to_vec())
        .unwrap();
    let copied: String = secret
        .with_bytes(|bytes| String::from_utf8(bytes.to_vec()).unwrap())
        .unwrap();
    assert_eq!(copied, "hello");
    let result: Result<u8, &str> = secret.with_bytes(|_| Err("inner")).unwrap();
    assert_eq!(result, Err("inner"));
}

#[test]
fn with_bytes_mut_changes_what_later_reads_see() {
    for (name, factory) in factories() {
        let secret = factory.new(&mut [1, 2, 3]).unwrap();
        let old = secret
            .with_bytes_mut(|bytes| {
                let old = bytes.to_vec();
                bytes.copy_from_slice(&[9, 8, 7]);
                old
            })
            .unwrap();
        assert_eq!(old, [1, 2, 3], "{name}");
        assert!(secret.with_bytes(|b| b == [9, 8, 7]).unwrap(), "{name}");
    }
}

#[test]
fn every_access_on_a_closed_secret_is_closed_and_never_runs_the_callback() {
    let secret = common::default_factory().create_random(32).unwrap();
    assert!(!secret.is_closed());
    secret.close().unwrap();
    assert!(secret.is_closed());
    let mut ran = false;
    assert!(matches!(
        secret.with_bytes(|_| ran = true),
        Err(Error::Closed)
    ));
    assert!(matches!(
        secret.with_bytes_mut(|_| ran = true),
        Err(Error::Closed)
    ));
    assert!(!ran, "a callback ran on a closed secret");
    let error = secret.reader().read(&mut [0; 8]).unwrap_err();
    assert!(error.to_string().contains("closed"), "{error}");
    assert!(Error::Closed.to_string().contains("closed"));
}

#[test]
fn close_is_idempotent() {
    let secret = common::default_factory().create_random(8).unwrap();
    secret.close().unwrap();
    secret.close().unwrap();
    assert!(secret.is_closed());
}

#[test]
fn nested_reads_of_the_same_secret_work() {
    let secret = common::default_factory().new(&mut [5; 16]).unwrap();
    let sum = secret
        .with_bytes(|outer| {
            let inner = secret
                .with_bytes(|inner| {
                    let innermost = secret.with_bytes(|b| b[0]).unwrap();
                    inner[1] + innermost
                })
                .unwrap();
            outer[0] + inner
        })
        .unwrap();
    assert_eq!(sum, 15);
    // The memory is closed again afterwards: a write still works (it would deadlock if a
    // reader were left counted).
    common::within(common::DEADLINE, move || {
        secret.with_bytes_mut(|b| b[0] = 1).unwrap();
    });
}

#[test]
fn close_inside_a_read_is_an_error_not_a_deadlock() {
    common::within(common::DEADLINE, || {
        let secret = common::default_factory().create_random(8).unwrap();
        let inner = secret.with_bytes(|_| secret.close()).unwrap();
        assert!(
            matches!(
                inner,
                Err(Error::Reentrant {
                    operation: securememory::Operation::Close
                })
            ),
            "{inner:?}"
        );
        assert!(!secret.is_closed(), "a refused close must not close");
        secret.with_bytes(|_| ()).unwrap();
        secret.close().unwrap();
    });
}

#[test]
fn write_inside_a_read_and_access_inside_a_write_are_errors_not_deadlocks() {
    common::within(common::DEADLINE, || {
        let secret = common::default_factory().create_random(8).unwrap();
        let inner = secret
            .with_bytes(|_| secret.with_bytes_mut(|_| ()))
            .unwrap();
        assert!(matches!(inner, Err(Error::Reentrant { .. })), "{inner:?}");
        let inner = secret
            .with_bytes_mut(|_| secret.with_bytes(|_| ()))
            .unwrap();
        assert!(matches!(inner, Err(Error::Reentrant { .. })), "{inner:?}");
        let inner = secret
            .with_bytes_mut(|_| secret.with_bytes_mut(|_| ()))
            .unwrap();
        assert!(matches!(inner, Err(Error::Reentrant { .. })), "{inner:?}");
        let inner = secret.with_bytes_mut(|_| secret.close()).unwrap();
        assert!(matches!(inner, Err(Error::Reentrant { .. })), "{inner:?}");
        secret.close().unwrap();
    });
}

#[test]
fn accessing_another_secret_inside_an_access_works() {
    let factory = common::default_factory();
    let a = factory.new(&mut [1; 4]).unwrap();
    let b = factory.new(&mut [2; 4]).unwrap();
    let total = a
        .with_bytes(|x| b.with_bytes_mut(|y| x[0] + y[0]).unwrap())
        .unwrap();
    assert_eq!(total, 3);
    a.with_bytes(|_| b.close()).unwrap().unwrap();
    assert!(b.is_closed());
}

#[test]
fn panic_in_a_callback_releases_the_access() {
    for (name, factory) in factories() {
        let secret = factory.new(&mut [3; 8]).unwrap();
        let caught = catch_unwind(AssertUnwindSafe(|| {
            secret.with_bytes(|_| panic!("reader panics")).unwrap();
        }));
        assert!(caught.is_err());
        let caught = catch_unwind(AssertUnwindSafe(|| {
            secret.with_bytes_mut(|_| panic!("writer panics")).unwrap();
        }));
        assert!(caught.is_err());
        // A leftover reader or writer would make this write (or the close) wait forever.
        common::within(common::DEADLINE, move || {
            secret.with_bytes_mut(|b| b[0] = 4).unwrap();
            assert!(secret.with_bytes(|b| b[0] == 4).unwrap());
            secret.close().unwrap();
        });
        let _ = name;
    }
}

#[test]
fn reader_reads_in_parts_ends_with_zero_and_fails_after_close() {
    let secret = common::default_factory()
        .new(&mut b"0123456789".to_vec())
        .unwrap();
    let mut reader = secret.reader();
    let mut part = [0u8; 4];
    assert_eq!(reader.read(&mut part).unwrap(), 4);
    assert_eq!(&part, b"0123");
    assert_eq!(reader.read(&mut part).unwrap(), 4);
    assert_eq!(&part, b"4567");
    assert_eq!(reader.read(&mut part).unwrap(), 2);
    assert_eq!(&part[..2], b"89");
    assert_eq!(reader.read(&mut part).unwrap(), 0);
    assert_eq!(reader.read(&mut part).unwrap(), 0);
    assert_eq!(reader.read(&mut []).unwrap(), 0);
    let mut fresh = secret.reader();
    secret.close().unwrap();
    assert!(fresh.read(&mut part).is_err());
    assert!(reader.read(&mut part).is_err());
}

#[test]
fn io_copy_over_chained_readers() {
    let factory = common::default_factory();
    let first = factory.new(&mut b"user:".to_vec()).unwrap();
    let second = factory.new(&mut pattern(5000)).unwrap();
    let mut out = Vec::new();
    let copied = std::io::copy(&mut first.reader().chain(second.reader()), &mut out).unwrap();
    assert_eq!(copied, 5005);
    let mut expected = b"user:".to_vec();
    expected.extend(pattern(5000));
    assert_eq!(out, expected);
}

#[test]
fn thousands_of_live_secrets() {
    let factory = common::default_factory();
    let secrets: Vec<Secret> = (0..3000u32)
        .map(|i| factory.new(&mut i.to_le_bytes()).unwrap())
        .collect();
    for (i, secret) in secrets.iter().enumerate() {
        let value = secret
            .with_bytes(|b| u32::from_le_bytes(b.try_into().unwrap()))
            .unwrap();
        assert_eq!(value, i as u32);
    }
    for secret in &secrets {
        secret.close().unwrap();
    }
}

#[test]
fn debug_never_prints_the_bytes() {
    let secret = common::default_factory()
        .new(&mut b"hunter2-hunter2".to_vec())
        .unwrap();
    let printed = format!("{secret:?} {:?}", secret.reader());
    assert!(!printed.contains("hunter2"), "{printed}");
    assert!(!printed.contains("104, 117"), "{printed}");
    assert!(printed.contains("redacted"), "{printed}");
    // A reader says how far it has read, and of how much.
    let mut reader = secret.reader();
    std::io::Read::read(&mut reader, &mut [0; 4]).unwrap();
    let printed = format!("{reader:?}");
    assert!(
        printed.contains("SecretReader")
            && printed.contains("len: 15")
            && printed.contains("position: 4"),
        "{printed}"
    );
}

#[test]
fn secrets_and_factories_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Secret>();
    assert_send_sync::<ProtectedMemorySecretFactory>();
    assert_send_sync::<Error>();
    let _: &dyn SecretFactory = &common::default_factory();
}

/// A secret (and a reference to one) can cross `catch_unwind` without `AssertUnwindSafe`, and
/// stays usable after a callback panicked.
#[test]
fn secrets_and_factories_are_unwind_safe() {
    fn assert_unwind_safe<T: std::panic::UnwindSafe + std::panic::RefUnwindSafe>() {}
    assert_unwind_safe::<Secret>();
    assert_unwind_safe::<&Secret>();
    assert_unwind_safe::<ProtectedMemorySecretFactory>();
    for setup in common::SETUPS {
        let secret = common::factory(setup).new(&mut [1, 2, 3]).unwrap();
        let panicked = std::panic::catch_unwind(|| secret.with_bytes(|_| panic!("in a callback")));
        assert!(panicked.is_err());
        assert_eq!(secret.with_bytes(|b| b.to_vec()).unwrap(), [1, 2, 3]);
    }
}

/// Typed, fallible and constant-time access keep the access rules of `with_bytes`.
#[test]
fn typed_fallible_and_constant_time_access_work_for_every_setup() {
    #[derive(Debug)]
    enum AppError {
        Secret(Error),
        Refused,
    }
    impl From<Error> for AppError {
        fn from(error: Error) -> Self {
            AppError::Secret(error)
        }
    }
    for setup in common::SETUPS {
        let factory = common::factory(setup);
        let key = factory.new(&mut [7u8; 32]).unwrap();
        assert_eq!(key.with_array(|k: &[u8; 32]| k[31]).unwrap(), 7);
        let mut ran = false;
        assert!(matches!(
            key.with_array(|_: &[u8; 16]| ran = true),
            Err(Error::InvalidLength)
        ));
        assert!(!ran, "{setup:?}: a callback of the wrong length ran");
        key.with_array_mut(|k: &mut [u8; 32]| k[0] = 9).unwrap();
        assert!(matches!(
            key.with_array_mut(|_: &mut [u8; 31]| ()),
            Err(Error::InvalidLength)
        ));

        let sum: Result<u32, AppError> =
            key.try_with_bytes(|b| Ok(b.iter().map(|&x| u32::from(x)).sum()));
        assert_eq!(sum.unwrap(), 9 + 31 * 7);
        let refused: Result<(), AppError> = key.try_with_bytes(|_| Err(AppError::Refused));
        assert!(matches!(refused, Err(AppError::Refused)));
        let written: Result<(), AppError> = key.try_with_bytes_mut(|b| {
            b[1] = 8;
            Err(AppError::Refused)
        });
        assert!(matches!(written, Err(AppError::Refused)));
        assert_eq!(
            key.with_bytes(|b| b[1]).unwrap(),
            8,
            "{setup:?}: a fallible write keeps what it wrote"
        );

        let mut expected = [7u8; 32];
        expected[..2].copy_from_slice(&[9, 8]);
        assert!(key.constant_time_eq(&expected).unwrap());
        assert!(!key.constant_time_eq(&[7; 32]).unwrap());
        assert!(!key.constant_time_eq(&expected[..31]).unwrap());
        let copy = factory.duplicate(&key).unwrap();
        assert!(key.constant_time_eq_secret(&copy).unwrap());
        assert!(key.constant_time_eq_secret(&key).unwrap(), "itself, nested");
        copy.with_bytes_mut(|b| b[5] ^= 1).unwrap();
        assert!(!key.constant_time_eq_secret(&copy).unwrap());

        key.close().unwrap();
        let closed: Result<(), AppError> = key.try_with_bytes(|_| Ok(()));
        assert!(matches!(closed, Err(AppError::Secret(Error::Closed))));
        assert!(matches!(
            key.constant_time_eq(&expected),
            Err(Error::Closed)
        ));
        assert!(matches!(factory.duplicate(&key), Err(Error::Closed)));
    }
}

#[test]
fn protection_reports_what_the_secret_got() {
    let secret = common::factory(Backing::Anonymous)
        .create_random(32)
        .unwrap();
    let p = secret.protection();
    assert_eq!(p.backing, Backing::Anonymous);
    assert!(!p.kernel_invisible);
    assert!(p.guard_pages && p.locked && p.fork_protected);
    #[cfg(target_os = "linux")]
    assert!(p.dump_excluded);

    let unguarded = common::builder()
        .guard_pages(false)
        .build()
        .create_random(32)
        .unwrap();
    assert!(!unguarded.protection().guard_pages);

    let unlocked = common::builder()
        .backing(Backing::Anonymous)
        .mlock(MlockPolicy::Disabled)
        .build()
        .create_random(32)
        .unwrap();
    assert!(!unlocked.protection().locked);
}

/// On this machine (Linux 6.18) secret memory is available, and `Auto` must pick it.
#[cfg(target_os = "linux")]
#[test]
fn secretmem_backing_is_used_where_the_kernel_offers_it() {
    let probe = common::factory(Backing::SecretMem).create_random(32);
    match probe {
        Ok(secret) => {
            let p = secret.protection();
            assert_eq!(p.backing, Backing::SecretMem);
            assert!(p.kernel_invisible && p.locked && p.dump_excluded && p.fork_protected);
            let auto = common::default_factory().create_random(32).unwrap();
            assert_eq!(auto.protection().backing, Backing::SecretMem);
        }
        Err(Error::BackingUnavailable { .. }) if std::env::var_os("CI").is_none() => {
            eprintln!("skipped: memfd_secret unavailable on this kernel");
        }
        Err(other) => panic!("secret memory refused: {other}"),
    }
}

#[test]
fn underflow_inside_the_page_is_caught_by_the_canary() {
    for (name, factory) in factories() {
        let secret = factory.new(&mut [4; 32]).unwrap();
        assert!(secret.protection().canary, "{name}");
        let result = secret.with_bytes_mut(|bytes| {
            // A buggy write one byte below the slice, as unsafe code elsewhere might make.
            let below: *mut u8 = std::ptr::with_exposed_provenance_mut(bytes.as_ptr() as usize - 1);
            // SAFETY: (test) the byte below the secret is in the same writable data page.
            unsafe { below.write_volatile(!below.read_volatile()) };
        });
        assert!(
            matches!(result, Err(Error::Corrupted)),
            "{name}: {result:?}"
        );
        assert!(matches!(secret.close(), Err(Error::Corrupted)), "{name}");
        assert!(secret.is_closed());
        assert!(matches!(secret.with_bytes(|_| ()), Err(Error::Closed)));
    }
}

/// A stray fill of the bytes below a secret (a `memset` of zeros or of ones that starts early)
/// is caught whatever it writes: the canary is not a value such a fill would leave unchanged.
#[test]
fn an_underflow_filling_the_canary_with_any_one_byte_value_is_caught() {
    for (name, factory) in factories() {
        for fill in 0..=u8::MAX {
            let secret = factory.new(&mut [4; 32]).unwrap();
            let result = secret.with_bytes_mut(|bytes| {
                let canary_len = 16;
                let below: *mut u8 =
                    std::ptr::with_exposed_provenance_mut(bytes.as_ptr() as usize - canary_len);
                // SAFETY: (test) the 16 bytes below a 32-byte secret are in its data page.
                unsafe { std::ptr::write_bytes(below, fill, canary_len) };
            });
            assert!(
                matches!(result, Err(Error::Corrupted)),
                "{name}, fill {fill:#x}: {result:?}"
            );
            let closed = secret.close();
            assert!(
                matches!(closed, Err(Error::Corrupted)),
                "{name}, fill {fill:#x}: {closed:?}"
            );
        }
    }
}

#[test]
fn a_secret_that_fills_its_pages_needs_no_canary() {
    let secret = common::default_factory().create_random(4096).unwrap();
    assert!(!secret.protection().canary);
    secret.with_bytes_mut(|b| b[0] = 1).unwrap();
    secret.close().unwrap();
}

#[cfg(all(any(target_os = "linux", windows), target_arch = "x86_64"))] // 4 KiB pages.
#[test]
fn canary_is_reported_only_when_it_has_at_least_eight_bytes() {
    let factory = common::default_factory();
    for (len, canary) in [
        (32, true),
        (4088, true),
        (4089, false),
        (4095, false),
        (8191, false),
    ] {
        let secret = factory.create_random(len).unwrap();
        assert_eq!(
            secret.protection().canary,
            canary,
            "a {len}-byte secret leaves {} bytes before it in its first page",
            (4096 - len % 4096) % 4096
        );
    }
}
