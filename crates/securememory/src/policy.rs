//! The policy vocabulary: what a factory is asked for ([`Backing`], [`MlockPolicy`],
//! [`Strategy`]) and what a secret got ([`Protection`]). A leaf: it imports nothing of the crate, and every layer may
//! speak it.

/// Where a secret's bytes live.
///
/// ```
/// use securememory::{system, Backing, ProtectedMemorySecretFactory};
///
/// // Secret memory where this machine has it, anonymous memory elsewhere, and no surprise.
/// let backing = match system::check_secret_memory() {
///     Ok(()) => Backing::SecretMem,
///     Err(_) => Backing::Anonymous,
/// };
/// let factory = ProtectedMemorySecretFactory::builder().backing(backing).build();
/// let secret = factory.create_random(32)?;
/// assert_eq!(secret.protection().backing, backing);
/// assert_eq!(secret.protection().kernel_invisible, backing == Backing::SecretMem);
/// # Ok::<(), securememory::Error>(())
/// ```
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
    /// The bytes exist at rest only as AES-256-GCM ciphertext in ordinary heap memory; an access
    /// decrypts them into the calling thread's scratch area (guarded, locked, secret memory
    /// where the kernel offers it, the bytes right against a trailing guard page) and wipes it
    /// before returning, a panic included. [`with_bytes_mut`](crate::Secret::with_bytes_mut)
    /// seals the bytes again under a fresh nonce (a 64-bit counter under a key that is per
    /// process, so no nonce repeats under a key); if its callback panics, the secret keeps the
    /// bytes it had. A ciphertext changed at rest, or moved to another secret, fails
    /// authentication: the access returns [`Error::Corrupted`](crate::Error::Corrupted) (or the
    /// factory's [`OnCorruption`](crate::OnCorruption) policy applies), never other bytes.
    ///
    /// The key, with its expanded cipher state, is generated in place in one guarded, locked
    /// page per process that is left out of core dumps and forked children (secret memory where
    /// the kernel offers it); where the CPU has protection keys the page is tagged with one and
    /// opened for the calling thread only while it encrypts or decrypts, elsewhere it is
    /// read-only. A forked child makes a key of its own.
    ///
    /// Choose it for many secrets (a secret costs about 250 bytes of heap and no mapping and no
    /// locked memory of its own, so a million fit under the default 8 MiB `RLIMIT_MEMLOCK`),
    /// for many threads reading (no system call and no shared write per access), and where the
    /// CPU has no protection keys. What it trades: without protection keys the key page is
    /// readable by any code in the process (it stays invisible to other processes with secret
    /// memory); the plaintext exists only inside callbacks, in the calling thread's scratch
    /// area, readable by other threads of the process meanwhile; an access costs a decryption
    /// (about 0.2 µs for 32 bytes). [`MlockPolicy`] and
    /// [`guard_pages`](crate::FactoryBuilder::guard_pages) do not apply: the key page and the
    /// scratch areas are always locked and guarded, and a failure to lock them is an error.
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
///
/// ```
/// use securememory::{MlockPolicy, ProtectedMemorySecretFactory, Report};
///
/// // A tool that would rather run unlocked than not run; each secret says what it got.
/// let factory = ProtectedMemorySecretFactory::builder()
///     .mlock(MlockPolicy::BestEffort)
///     .report(Report::Log)
///     .build();
/// let secret = factory.create_random(32)?;
/// if !secret.protection().locked {
///     eprintln!("this secret may be swapped to disk");
/// }
/// # Ok::<(), securememory::Error>(())
/// ```
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
///
/// For a [`Strategy::Sealed`] secret, the fields describe the memory its plaintext and key live
/// in (the key page and the threads' scratch areas), not its ciphertext, which is ordinary heap
/// memory; `canary` is `false` (authentication covers the ciphertext instead).
///
/// ```
/// use securememory::{Backing, Secret, Strategy};
///
/// let key = Secret::random(32)?;
/// let got = key.protection();
/// assert_ne!(got.backing, Backing::Auto, "the backing obtained, never `Auto`");
/// assert_ne!(got.strategy, Strategy::Auto, "the strategy obtained, never `Auto`");
/// if !got.kernel_invisible {
///     eprintln!("root can read this key through /proc/PID/mem");
/// }
/// println!("{got:?}");
/// # Ok::<(), securememory::Error>(())
/// ```
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
