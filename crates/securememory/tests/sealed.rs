//! What sets sealed secrets apart from the mapped strategies: no mapping, no locked memory and no
//! system call per secret. The rules every strategy keeps run for `Strategy::Sealed` through
//! `common::SETUPS` in the other test files.

#![cfg(target_os = "linux")]

mod common;

use securememory::{Backing, MlockPolicy, Secret, Strategy};

fn maps_lines() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .expect("read /proc/self/maps")
        .lines()
        .count()
}

/// The kernel's count of this process's locked memory, in KiB.
fn vm_lck_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmLck:"))
        .expect("VmLck in /proc/self/status");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Under a 64 KiB locked-memory limit (16 pages, without `CAP_IPC_LOCK`), where the mapped
/// strategies stop near 16 secrets, ten thousand sealed secrets take no mapping and no locked
/// memory beyond the key page and this thread's scratch area, and give nothing back but their
/// heap when closed.
#[test]
fn ten_thousand_sealed_secrets_take_no_mapping_and_no_locked_memory_each() {
    common::in_child_process!();
    common::drop_ipc_lock_capability();
    common::set_memlock_limit(64 * 1024);
    for backing in [Backing::Auto, Backing::Anonymous] {
        let factory = common::builder()
            .strategy(Strategy::Sealed)
            .backing(backing)
            .mlock(MlockPolicy::Required)
            .build();
        // The first secret makes the key page and this thread's scratch area.
        let first = factory.new(&mut [1; 32]).unwrap();
        assert!(first.protection().locked);
        let (maps, locked) = (maps_lines(), vm_lck_kib());
        let secrets: Vec<Secret> = (0..10_000u32)
            .map(|i| {
                let mut bytes = [0u8; 32];
                bytes[..4].copy_from_slice(&i.to_le_bytes());
                factory.new(&mut bytes).unwrap()
            })
            .collect();
        // The heap may grow by a mapping or a few (the vectors here, the registry); a mapping
        // per secret would be ten thousand.
        assert!(
            maps_lines() <= maps + 16,
            "{backing:?}: {} new mappings for 10,000 sealed secrets",
            maps_lines() - maps
        );
        assert_eq!(vm_lck_kib(), locked, "{backing:?}: locked memory grew");
        for (i, secret) in secrets.iter().enumerate() {
            assert!(secret
                .with_bytes(|b| b[..4] == (i as u32).to_le_bytes())
                .unwrap());
        }
        for secret in &secrets[..5_000] {
            secret.close().unwrap();
        }
        drop(secrets);
        assert_eq!(vm_lck_kib(), locked, "{backing:?}: locked memory moved");
        drop(first);
    }
}

/// The mapped strategies' memory-lock error is not a sealed secret's: with the limit used up by
/// mapped secrets, sealed ones whose key page and scratch area exist go on being made.
#[test]
fn sealed_secrets_go_on_where_mapped_ones_hit_the_locked_memory_limit() {
    common::in_child_process!();
    common::drop_ipc_lock_capability();
    common::set_memlock_limit(64 * 1024);
    let sealed = common::builder().strategy(Strategy::Sealed).build();
    let warm = sealed.create_random(32).unwrap();
    let mapped = common::builder()
        .strategy(Strategy::PageProtection)
        .backing(Backing::Anonymous)
        .build();
    let mut held = Vec::new();
    let error = loop {
        match mapped.create_random(32) {
            Ok(secret) => held.push(secret),
            Err(error) => break error,
        }
        assert!(held.len() <= 16, "more pages locked than the limit");
    };
    assert!(
        matches!(error, securememory::Error::MemoryLockLimit { .. }),
        "{error:?}"
    );
    let more: Vec<Secret> = (0..1000)
        .map(|_| sealed.create_random(32).unwrap())
        .collect();
    assert!(more
        .iter()
        .all(|s| s.with_bytes(|b| b.len()).unwrap() == 32));
    drop(warm);
}

/// A secret larger than the scratch areas a thread keeps (four pages) gets an area of its own
/// for each access, unmapped when the access ends: one large secret does not pin locked memory
/// in every thread that read it. In a child process of one thread, so that no other test maps
/// something at the freed address.
#[test]
fn a_large_sealed_secret_gets_an_area_of_its_own_for_each_access() {
    common::in_child_process!();
    let page = securememory::system::page_size();
    let len = 4 * page + 1;
    let factory = common::builder().strategy(Strategy::Sealed).build();
    let secret = factory.create_random(len).unwrap();
    let sum = |b: &[u8]| b.iter().map(|&x| u64::from(x)).sum::<u64>();
    let (first, first_sum) = secret
        .with_bytes(|b| (b.as_ptr() as usize, sum(b)))
        .unwrap();
    assert!(!common::is_mapped(first), "the area outlived the access");
    let (second, second_sum) = secret
        .with_bytes(|b| (b.as_ptr() as usize, sum(b)))
        .unwrap();
    assert!(!common::is_mapped(second), "the area outlived the access");
    assert_eq!(first_sum, second_sum);
    assert_eq!((first + len) % page, 0, "not against the trailing guard");
}
