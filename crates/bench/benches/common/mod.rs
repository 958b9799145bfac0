//! Settings and fixtures shared by the benchmark suites.

#![allow(dead_code)]

use criterion::Criterion;
use securememory::{Backing, ProtectedMemorySecretFactory, Strategy};
use securememory_bench::raw::{self, RawBacking};
use std::time::Duration;

/// Short settings so the whole suite runs in a few minutes on a small machine.
pub fn criterion() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_millis(2500))
        .sample_size(30)
        .configure_from_args()
}

/// The backings measured on this machine: each with its name, its factory and its raw twin.
pub fn backings() -> Vec<(&'static str, ProtectedMemorySecretFactory, RawBacking)> {
    let mut all = vec![(
        "anonymous",
        ProtectedMemorySecretFactory::builder()
            .backing(Backing::Anonymous)
            .build(),
        RawBacking::Anonymous,
    )];
    if raw::secretmem_available() {
        all.push((
            "secretmem",
            ProtectedMemorySecretFactory::builder()
                .backing(Backing::SecretMem)
                .build(),
            RawBacking::SecretMem,
        ));
    } else {
        eprintln!("memfd_secret(2) is unavailable here: secretmem rows are skipped");
    }
    all
}

/// Secret bytes of `len` bytes (a recognisable pattern, not random: the content is irrelevant).
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| i as u8).collect()
}

/// A factory for `Strategy::ProtectionKey`, where this machine has protection keys.
pub fn protection_key_factory() -> Option<ProtectedMemorySecretFactory> {
    match securememory::system::check_protection_keys() {
        Ok(()) => Some(
            ProtectedMemorySecretFactory::builder()
                .strategy(Strategy::ProtectionKey)
                .build(),
        ),
        Err(reason) => {
            eprintln!("protection-key rows are skipped: {reason}");
            None
        }
    }
}
