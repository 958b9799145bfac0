//! What this machine offers secrets, as the library itself sees it: for diagnostics
//! (`securemem doctor` asks here), capacity planning and tests. Each answer is the one the
//! factories act on.
//!
//! ```
//! use securememory::{system, Backing};
//!
//! println!("page size        {} bytes", system::page_size());
//! println!("RLIMIT_MEMLOCK   {:?}", system::memlock_limit());
//! println!("secret memory    {:?}", system::check_secret_memory().map_err(|e| e.to_string()));
//! println!("protection keys  {:?}", system::check_protection_keys().map_err(|e| e.to_string()));
//! println!("Strategy::Auto   {:?}", system::auto_strategy(Backing::Auto));
//! ```

use crate::error::Error;
use crate::policy::{Backing, Strategy};
use crate::sys::{self, SecretMemSupport};

/// The size of a memory page in bytes. Every secret takes whole pages (plus a guard page on each
/// side, which is reserved address space, not memory).
///
/// ```
/// assert!(securememory::system::page_size().is_power_of_two());
/// ```
pub fn page_size() -> usize {
    sys::page_size()
}

/// Whether secret memory (`memfd_secret(2)`: [`Backing::SecretMem`], and what
/// [`Backing::Auto`] prefers) can be had by this process now.
///
/// # Errors
/// [`Error::BackingUnavailable`] when the kernel does not offer it or the process may not use it
/// (an answer remembered for the life of the process); [`Error::Os`] when it failed only for the
/// moment (descriptors or memory exhausted), with what to do about it.
///
/// ```
/// match securememory::system::check_secret_memory() {
///     Ok(()) => println!("secrets can be hidden from the kernel here"),
///     Err(reason) => println!("no secret memory: {reason}"),
/// }
/// ```
pub fn check_secret_memory() -> Result<(), Error> {
    match sys::secretmem_support() {
        SecretMemSupport::Available => Ok(()),
        SecretMemSupport::Unavailable(reason) => Err(Error::BackingUnavailable {
            backing: Backing::SecretMem,
            reason,
        }),
        SecretMemSupport::Failed(error) => Err(error.into()),
    }
}

/// The soft limit on locked memory (`RLIMIT_MEMLOCK`) in bytes: `None` when unlimited or where
/// the OS has no such limit (Windows bounds locked pages by the working set instead). A process
/// with `CAP_IPC_LOCK` is not bound by it.
///
/// ```
/// use securememory::system;
///
/// match system::memlock_limit() {
///     // A secret under page protection or a protection key takes at least one locked page.
///     Some(bytes) => println!("room for {} such secrets", bytes / system::page_size() as u64),
///     None => println!("no locked-memory limit"),
/// }
/// ```
pub fn memlock_limit() -> Option<u64> {
    sys::memlock_limit()
}

/// Whether [`Strategy::ProtectionKey`] can be had: memory protection keys in the CPU and kernel
/// (x86 PKU on Linux) and a key for the library (allocated on first use and kept for the life of
/// the process).
///
/// # Errors
/// [`Error::StrategyUnavailable`] with what is missing.
///
/// ```
/// match securememory::system::check_protection_keys() {
///     Ok(()) => println!("Strategy::ProtectionKey can be had here"),
///     Err(missing) => println!("no protection keys: {missing}"),
/// }
/// ```
pub fn check_protection_keys() -> Result<(), Error> {
    sys::protection_key()
        .map(drop)
        .map_err(|reason| Error::StrategyUnavailable {
            strategy: Strategy::ProtectionKey,
            reason,
        })
}

/// What [`Strategy::Auto`] resolves to for secrets with `backing` on this machine, and why: the
/// answer the factories act on.
///
/// `Auto` picks [`Strategy::ProtectionKey`] only where it keeps every promise that
/// [`Strategy::PageProtection`] keeps: with secret memory, which other processes (root included)
/// cannot read whatever the page protection. Anonymous memory under a protection key stays
/// readable through `/proc/PID/mem` and `process_vm_readv`, which `PROT_NONE` refuses, so
/// there `Auto` keeps page protection. A secret that [`Backing::Auto`] had to put in anonymous
/// memory (past the locked-memory limit, under [`MlockPolicy::BestEffort`](crate::MlockPolicy))
/// gets page protection too.
///
/// ```
/// use securememory::{system, Backing, Strategy};
///
/// let (strategy, why) = system::auto_strategy(Backing::Auto);
/// assert_ne!(strategy, Strategy::Auto);
/// println!("Strategy::Auto is {strategy:?} here: {why}");
/// ```
pub fn auto_strategy(backing: Backing) -> (Strategy, String) {
    const ANONYMOUS_UNDER_A_KEY: &str = "a protection key would leave anonymous memory readable \
                                         to other processes (/proc/PID/mem, process_vm_readv), \
                                         which page protection refuses";
    let page_protection = |why: String| (Strategy::PageProtection, why);
    if backing == Backing::Anonymous {
        return page_protection(format!(
            "anonymous memory was asked for: {ANONYMOUS_UNDER_A_KEY}"
        ));
    }
    if let Err(error) = check_secret_memory() {
        return page_protection(format!(
            "secret memory is not available ({error}): {ANONYMOUS_UNDER_A_KEY}"
        ));
    }
    match sys::protection_key() {
        Ok(_) => (
            Strategy::ProtectionKey,
            "the CPU has memory protection keys and secrets live in secret memory, which other \
             processes cannot read whatever the protection: an access opens the secret to the \
             calling thread only, with no system call"
                .to_string(),
        ),
        Err(missing) => page_protection(format!("no protection keys: {missing}")),
    }
}
