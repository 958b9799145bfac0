//! Helpers shared by the integration tests: the process helpers of [`process`], and the factories
//! the tests build. Every factory made here starts the process watchdog, so that a deadlock in
//! any test that uses one fails the run instead of hanging it.

#![allow(dead_code, unused_imports)] // Each test file uses its own subset.

mod process;

pub use process::*;

use securememory::{Backing, FactoryBuilder, ProtectedMemorySecretFactory};

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
