//! Helpers shared by the integration tests: the process helpers of [`process`], and the factories
//! the tests build. Every factory made here starts the process watchdog, so that a deadlock in
//! any test that uses one fails the run instead of hanging it.

#![allow(dead_code, unused_imports)] // Each test file uses its own subset.

mod process;

pub use process::*;

use securememory::{Backing, FactoryBuilder, ProtectedMemorySecretFactory, Strategy};

/// The backings most rules are checked with: the default, and anonymous memory.
pub const BACKINGS: [Backing; 2] = [Backing::Auto, Backing::Anonymous];

/// A builder for a test's factory (starting from the defaults).
pub fn builder() -> FactoryBuilder {
    watchdog();
    ProtectedMemorySecretFactory::builder()
}

/// The default factory.
pub fn default_factory() -> ProtectedMemorySecretFactory {
    builder().build()
}

/// The default factory but for `backing`.
pub fn factory(backing: Backing) -> ProtectedMemorySecretFactory {
    builder().backing(backing).build()
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

/// The configurations most rules are checked with: both backings under page protection, and
/// protection keys where this machine has them.
pub fn configurations() -> Vec<(&'static str, ProtectedMemorySecretFactory)> {
    let mut all = vec![
        ("auto", factory(Backing::Auto)),
        ("anonymous", factory(Backing::Anonymous)),
    ];
    all.extend(protection_key_factory().map(|f| ("protection-key", f)));
    all
}
