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
///
/// The factories are pinned to `Strategy::PageProtection`, so `secret-<backing>` rows measure
/// the `mprotect` strategy against the raw `mprotect` cycle whatever `Strategy::Auto` resolves
/// to on this machine.
pub fn backings() -> Vec<(&'static str, ProtectedMemorySecretFactory, RawBacking)> {
    let page_protection = |backing| {
        ProtectedMemorySecretFactory::builder()
            .backing(backing)
            .strategy(Strategy::PageProtection)
            .build()
    };
    let mut all = vec![(
        "anonymous",
        page_protection(Backing::Anonymous),
        RawBacking::Anonymous,
    )];
    if raw::secretmem_available() {
        all.push((
            "secretmem",
            page_protection(Backing::SecretMem),
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

/// What the protection-key rows measure: the library under `Strategy::ProtectionKey` with the
/// default backing, and the raw floor (`raw-wrpkru`, `raw-sequence-protection-key`) on the same
/// backing.
pub struct ProtectionKeyRows {
    /// A factory for `Strategy::ProtectionKey` with the default backing.
    pub factory: ProtectedMemorySecretFactory,
    /// The backing the factory's secrets get (secret memory where the kernel offers it).
    pub raw_backing: RawBacking,
    /// The name of that backing in the page-protection rows (`raw-mprotect-<backing>`).
    pub backing: &'static str,
}

/// The protection-key fixture, where this machine has protection keys for the library and for
/// the raw baselines; `None`, with a note, where it has not (the rows are then skipped).
pub fn protection_key() -> Option<ProtectionKeyRows> {
    let available = securememory::system::check_protection_keys()
        .map_err(|error| error.to_string())
        .and_then(|()| raw::protection_key().map(drop));
    if let Err(reason) = available {
        eprintln!("protection-key rows are skipped: {reason}");
        return None;
    }
    // `Backing::Auto` puts secrets in secret memory where the kernel offers it.
    let (raw_backing, backing) = if raw::secretmem_available() {
        (RawBacking::SecretMem, "secretmem")
    } else {
        (RawBacking::Anonymous, "anonymous")
    };
    Some(ProtectionKeyRows {
        factory: ProtectedMemorySecretFactory::builder()
            .strategy(Strategy::ProtectionKey)
            .build(),
        raw_backing,
        backing,
    })
}

/// What the sealed rows measure: the library under `Strategy::Sealed` with the default backing
/// (its key page and scratch areas in secret memory where the kernel offers it), and the raw
/// floor (`raw-aead-open`, `raw-aead-open-seal`, `raw-aead-seal`): the same cipher with a key
/// schedule prepared once.
pub struct SealedRows {
    /// A factory for `Strategy::Sealed` with the default backing.
    pub factory: ProtectedMemorySecretFactory,
    /// The raw cipher, prepared once.
    pub sealer: raw::RawSealer,
}

/// The sealed fixture; `None`, with a note, where this machine cannot seal (the rows are then
/// skipped).
pub fn sealed() -> Option<SealedRows> {
    let factory = ProtectedMemorySecretFactory::builder()
        .strategy(Strategy::Sealed)
        .build();
    let made = factory
        .create_random(32)
        .and_then(|secret| secret.close())
        .map_err(|error| error.to_string())
        .and_then(|()| raw::RawSealer::new().map_err(|error| error.to_string()));
    match made {
        Ok(sealer) => Some(SealedRows { factory, sealer }),
        Err(reason) => {
            eprintln!("sealed rows are skipped: {reason}");
            None
        }
    }
}

/// The name of the default backing in the page-protection rows (`raw-mprotect-<backing>`,
/// `raw-sequence-<backing>`): secret memory where the kernel offers it.
pub fn default_backing() -> (&'static str, RawBacking) {
    if raw::secretmem_available() {
        ("secretmem", RawBacking::SecretMem)
    } else {
        ("anonymous", RawBacking::Anonymous)
    }
}
