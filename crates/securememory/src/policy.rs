//! The policy vocabulary: what a factory is asked for ([`Backing`], [`MlockPolicy`],
//! [`Strategy`]) and what a secret got ([`Protection`]). A leaf: it imports nothing of the crate, and every layer may
//! speak it.

/// Where a secret's bytes live.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Backing {
    /// Secret memory where the kernel offers it, anonymous memory otherwise.
    #[default]
    Auto,
    /// Private anonymous memory: locked, guarded and inaccessible while idle, but readable by the
    /// kernel (and so by root through `/proc/PID/mem`).
    Anonymous,
    /// `memfd_secret(2)` memory (Linux 5.14 and later): removed from the kernel's direct map, so
    /// not even root can read it from outside the process. Fails where unavailable.
    SecretMem,
}

impl Backing {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Backing::Auto => "automatic",
            Backing::Anonymous => "anonymous",
            Backing::SecretMem => "memfd_secret",
        }
    }
}

/// How an access opens a secret.
///
/// ```
/// use securememory::{ProtectedMemorySecretFactory, SecretFactory, Strategy};
///
/// let factory = ProtectedMemorySecretFactory::builder()
///     .strategy(Strategy::PageProtection)
///     .build();
/// let secret = factory.create_random(32)?;
/// assert_eq!(secret.protection().strategy, Strategy::PageProtection);
/// # Ok::<(), securememory::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Strategy {
    /// The strategy that keeps every promise [`Strategy::PageProtection`] keeps on this machine
    /// at the least cost: [`Strategy::ProtectionKey`] for secrets in secret memory on a CPU with
    /// protection keys, `PageProtection` otherwise. [`system::auto_strategy`] says which, and
    /// why.
    ///
    /// [`system::auto_strategy`]: crate::system::auto_strategy
    #[default]
    Auto,
    /// The pages of a secret are inaccessible (`PROT_NONE`) except while an access runs; the
    /// first access in makes them readable for every thread of the process, the last one out
    /// inaccessible again (two system calls, and a TLB shootdown once other threads run).
    PageProtection,
    /// The pages are tagged with the library's memory protection key (x86 PKU) and stay mapped
    /// readable; every thread's rights deny the key, and an access opens it for the calling
    /// thread only, with no system call (`WRPKRU`). Another thread's touch faults even during an
    /// access.
    ///
    /// What it does not defend against: code that can run `WRPKRU` (an attacker with code
    /// execution) opens any key, as it could call `mprotect`. While a window is open, every
    /// secret under the key is readable by the calling thread, and a thread created inside an
    /// access inherits the open rights (create threads outside accesses). Protection keys do not
    /// stop other processes (`/proc/PID/mem`, `process_vm_readv`) from reading anonymous memory;
    /// secret memory stops them. Needs Linux on an x86_64 CPU with PKU and a free key (15 per
    /// process, shared with every library in it).
    ProtectionKey,
    /// Ciphertext at rest, decrypted into a per-thread scratch area during an access. Not
    /// available in this version: asking for it is an error.
    Sealed,
}

impl Strategy {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Strategy::Auto => "Strategy::Auto",
            Strategy::PageProtection => "Strategy::PageProtection",
            Strategy::ProtectionKey => "Strategy::ProtectionKey",
            Strategy::Sealed => "Strategy::Sealed",
        }
    }
}

/// What to do when memory cannot be locked in RAM.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MlockPolicy {
    /// Fail with [`Error::MemoryLockLimit`](crate::Error::MemoryLockLimit).
    #[default]
    Required,
    /// Go on with unlocked memory, log a warning once per factory, and report it in
    /// [`Secret::protection`](crate::Secret::protection).
    BestEffort,
    /// Never lock (secret memory is locked by the kernel regardless).
    Disabled,
}

/// What protections a secret actually got on this machine.
///
/// A factory asks for protections; the OS decides what it can give. This report says what
/// happened for one secret, so callers (and `securemem doctor`) can tell a guarantee from a wish.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Protection {
    /// How an access opens the secret (never [`Strategy::Auto`]).
    pub strategy: Strategy,
    /// Where the bytes live: [`Backing::SecretMem`] or [`Backing::Anonymous`] (never `Auto`).
    pub backing: Backing,
    /// The pages are locked in RAM and are never swapped out.
    pub locked: bool,
    /// The pages are left out of core dumps (`MADV_DONTDUMP`, `MAP_NOCORE`, `MAP_CONCEAL`, or
    /// secret memory).
    pub dump_excluded: bool,
    /// A forked child never sees the bytes (it gets zeros or no mapping).
    pub fork_protected: bool,
    /// An inaccessible guard page sits on each side of the data.
    pub guard_pages: bool,
    /// A canary of 8 to 16 random bytes sits right before the secret's first byte and is
    /// checked after every write access and on close ([`Error::Corrupted`](crate::Error::Corrupted)). It covers only
    /// those bytes: a stray write further before the secret but inside its first page goes
    /// unnoticed. `false` when the page leaves fewer than 8 bytes before the secret (a secret of
    /// a page size or within 8 bytes of it), where the leading guard page, if any, is the only
    /// check.
    pub canary: bool,
    /// The pages are removed from the kernel's direct map: unreadable through `/proc/PID/mem`,
    /// `process_vm_readv` and ptrace, even by root (`memfd_secret(2)`).
    pub kernel_invisible: bool,
}
