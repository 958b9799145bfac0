//! Helpers shared by the integration tests: the process helpers of [`process`], and the factories
//! the tests build. Every factory made here starts the process watchdog, so that a deadlock in
//! any test that uses one fails the run instead of hanging it.

#![allow(dead_code, unused_imports)] // Each test file uses its own subset.

mod process;

pub use process::*;

use securememory::{Backing, FactoryBuilder, ProtectedMemorySecretFactory, Strategy};

/// One way of making secrets that rules are checked with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Setup {
    pub backing: Backing,
    pub strategy: Strategy,
}

impl From<Backing> for Setup {
    fn from(backing: Backing) -> Setup {
        Setup {
            backing,
            strategy: Strategy::Auto,
        }
    }
}

impl Setup {
    /// Whether each secret gets pages of its own (and so a mapping, locked memory, guard pages):
    /// every strategy but [`Strategy::Sealed`], whose secrets are ciphertext on the heap.
    pub fn maps_each_secret(self) -> bool {
        self.strategy != Strategy::Sealed
    }

    /// A builder for a test's factory with this backing and strategy.
    pub fn builder(self) -> FactoryBuilder {
        builder().backing(self.backing).strategy(self.strategy)
    }
}

/// The setups most rules are checked with: the defaults (protection keys with secret memory on
/// a CPU that has them), page protection with the default backing, anonymous memory (page
/// protection, which `Strategy::Auto` keeps for it), and sealed secrets. A new strategy gets
/// every rule by adding a line here.
pub const SETUPS: [Setup; 4] = [
    Setup {
        backing: Backing::Auto,
        strategy: Strategy::Auto,
    },
    Setup {
        backing: Backing::Auto,
        strategy: Strategy::PageProtection,
    },
    Setup {
        backing: Backing::Anonymous,
        strategy: Strategy::Auto,
    },
    Setup {
        backing: Backing::Auto,
        strategy: Strategy::Sealed,
    },
];

/// The setups whose secrets each get pages of their own, for the rules about those pages.
pub fn mapping_setups() -> impl Iterator<Item = Setup> {
    SETUPS.into_iter().filter(|s| s.maps_each_secret())
}

/// A builder for a test's factory (starting from the defaults).
pub fn builder() -> FactoryBuilder {
    watchdog();
    ProtectedMemorySecretFactory::builder()
}

/// The default factory.
pub fn default_factory() -> ProtectedMemorySecretFactory {
    builder().build()
}

/// The default factory but for the backing (and strategy) of `setup`.
pub fn factory(setup: impl Into<Setup>) -> ProtectedMemorySecretFactory {
    setup.into().builder().build()
}

/// A factory for `Strategy::ProtectionKey`, where this machine has protection keys; `None`
/// (after saying that the protection-key cases are skipped) where it has not.
pub fn protection_key_factory() -> Option<ProtectedMemorySecretFactory> {
    match securememory::system::check_protection_keys() {
        Ok(()) => Some(builder().strategy(Strategy::ProtectionKey).build()),
        Err(reason) => {
            println!("skipped: the protection-key cases ({reason})");
            None
        }
    }
}

/// The configurations most rules are checked with: the defaults, page protection with each
/// backing, and protection keys where this machine has them.
pub fn configurations() -> Vec<(&'static str, ProtectedMemorySecretFactory)> {
    let mut all = vec![
        ("auto", factory(Backing::Auto)),
        (
            "page-protection",
            builder().strategy(Strategy::PageProtection).build(),
        ),
        ("anonymous", factory(Backing::Anonymous)),
        ("sealed", builder().strategy(Strategy::Sealed).build()),
    ];
    all.extend(protection_key_factory().map(|f| ("protection-key", f)));
    all
}
