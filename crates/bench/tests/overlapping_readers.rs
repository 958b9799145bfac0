//! Readers that overlap an open access make no system call at all.
//!
//! Thread A holds a read of a secret open. Thread B then installs a seccomp filter on itself
//! alone that traps every system call (except `exit`, `exit_group` and `rt_sigreturn`) into a
//! `SIGSYS` handler which counts it and makes it fail with `ENOSYS` without running it. B then
//! reads the secret 10,000 times. The count of trapped calls in that window is the exact number
//! of system calls B's reads made — `mprotect`, `futex` or anything else — and must be zero.
//!
//! Two controls show the trap works: one `getpid()` in the window counts exactly one, and a read
//! of a second secret that no one holds open (so the first reader has to `mprotect`) is trapped
//! and fails. The secrets are pinned to `Strategy::PageProtection`, the strategy where only the
//! first reader in changes the protection.
//!
//! Under `Strategy::ProtectionKey` an access opens the key in the calling thread's rights
//! register, so even a lone read makes no system call; the second test counts them the same way
//! (skipped where the CPU has no protection keys). A write of a secret that has been read makes
//! one kind of call only, `membarrier` (every thread fences, so readers need no fence of their
//! own), which the test lets through its count and nothing else.
//!
//! Under `Strategy::Sealed` an access decrypts into the thread's scratch area (mapped by the
//! thread's first access) with a key page that is either open to reads or opened with `WRPKRU`:
//! after a warm-up access, reads make no system call and writes only `membarrier`, as under
//! protection keys. Making a sealed secret with `new(&mut buf)` and closing it allocates and
//! frees heap memory and takes a registry slot, and after a warm-up makes no system call.

#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

use securememory::{Backing, Error, ProtectedMemorySecretFactory, Secret, Strategy};
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

/// The counters are process-wide: the tests that count take turns.
static COUNTING_TURN: Mutex<()> = Mutex::new(());

fn counting_turn() -> MutexGuard<'static, ()> {
    COUNTING_TURN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

static COUNTING: AtomicBool = AtomicBool::new(false);
static TRAPPED: AtomicUsize = AtomicUsize::new(0);
static LAST_TRAPPED: AtomicI64 = AtomicI64::new(-1);
/// Trapped calls other than `membarrier`, which writers of a secret that has been read make to
/// see readers that published without a fence.
static TRAPPED_BESIDES_MEMBARRIER: AtomicUsize = AtomicUsize::new(0);

const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;

extern "C" fn on_sigsys(
    _signal: libc::c_int,
    info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
) {
    // The SIGSYS part of siginfo_t: `void *_call_addr; int _syscall; unsigned _arch;` after the
    // three leading ints, at offset 16 on 64-bit Linux.
    // SAFETY: the kernel passes a valid siginfo_t for SIGSYS.
    let number = unsafe { info.cast::<u8>().add(24).cast::<libc::c_int>().read() };
    if COUNTING.load(Ordering::SeqCst) {
        TRAPPED.fetch_add(1, Ordering::SeqCst);
        LAST_TRAPPED.store(i64::from(number), Ordering::SeqCst);
        if i64::from(number) != libc::SYS_membarrier {
            TRAPPED_BESIDES_MEMBARRIER.fetch_add(1, Ordering::SeqCst);
        }
    }
    // SAFETY: the kernel passes a valid ucontext_t; RAX is the trapped call's return value.
    unsafe {
        let context = &mut *context.cast::<libc::ucontext_t>();
        context.uc_mcontext.gregs[libc::REG_RAX as usize] = -i64::from(libc::ENOSYS);
    }
}

fn install_handler() {
    // SAFETY: a zeroed sigaction is valid; the handler is async-signal-safe (atomics only).
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigsys as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut action.sa_mask);
        assert_eq!(
            libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()),
            0
        );
    }
}

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump_if(k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    }
}

/// Traps every system call of the calling thread from now on, but the three it needs to exit and
/// to return from the handler.
fn trap_all_syscalls_of_this_thread() {
    let load = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    let ret = (libc::BPF_RET | libc::BPF_K) as u16;
    let program = [
        stmt(load, 4), // seccomp_data.arch
        jump_if(AUDIT_ARCH_X86_64, 1, 0),
        stmt(ret, libc::SECCOMP_RET_KILL_PROCESS),
        stmt(load, 0), // seccomp_data.nr
        jump_if(libc::SYS_rt_sigreturn as u32, 3, 0),
        jump_if(libc::SYS_exit as u32, 2, 0),
        jump_if(libc::SYS_exit_group as u32, 1, 0),
        stmt(ret, libc::SECCOMP_RET_TRAP),
        stmt(ret, libc::SECCOMP_RET_ALLOW),
    ];
    let filter = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: the program outlives the call (the kernel copies it); without TSYNC the filter
    // applies to this thread only.
    unsafe {
        assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
        assert_eq!(
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0,
                &filter as *const libc::sock_fprog
            ),
            0
        );
    }
}

struct Window {
    getpid_traps: usize,
    overlapping_traps: usize,
    overlapping_failures: usize,
    lone_traps: usize,
    lone_trapped_call: i64,
    lone_failed: bool,
}

/// On a fresh thread: trap every system call, then count those made by a `getpid()`, by 10,000
/// reads of `held` (which another thread holds open), and by one read of `lone`.
fn count_in_trapped_thread(held: &Secret, lone: &Secret) -> Window {
    trap_all_syscalls_of_this_thread();
    COUNTING.store(true, Ordering::SeqCst);
    // SAFETY: getpid has no preconditions.
    black_box(unsafe { libc::getpid() });
    let getpid_traps = TRAPPED.swap(0, Ordering::SeqCst);
    let mut overlapping_failures = 0;
    for _ in 0..10_000 {
        match held.with_bytes(|bytes| bytes.iter().fold(0u8, |a, &b| a ^ b)) {
            Ok(sum) => {
                black_box(sum);
            }
            Err(_) => overlapping_failures += 1,
        }
    }
    let overlapping_traps = TRAPPED.swap(0, Ordering::SeqCst);
    let lone_failed = lone.with_bytes(|bytes| black_box(bytes[0])).is_err();
    let lone_traps = TRAPPED.swap(0, Ordering::SeqCst);
    COUNTING.store(false, Ordering::SeqCst);
    Window {
        getpid_traps,
        overlapping_traps,
        overlapping_failures,
        lone_traps,
        lone_trapped_call: LAST_TRAPPED.load(Ordering::SeqCst),
        lone_failed,
    }
}

#[test]
fn readers_joining_an_open_access_make_no_system_call() {
    let _turn = counting_turn();
    install_handler();
    let mut backings = vec![Backing::Anonymous];
    if securememory_bench::raw::secretmem_available() {
        backings.push(Backing::SecretMem);
    }
    for backing in backings {
        let factory = ProtectedMemorySecretFactory::builder()
            .backing(backing)
            .strategy(Strategy::PageProtection)
            .build();
        let held = factory.create_random(32).expect("a secret");
        let lone = factory.create_random(32).expect("a second secret");
        let inside = AtomicBool::new(false);
        let done = AtomicBool::new(false);
        let window = std::thread::scope(|scope| {
            let holder = scope.spawn(|| {
                held.with_bytes(|_| {
                    inside.store(true, Ordering::SeqCst);
                    while !done.load(Ordering::SeqCst) {
                        std::hint::spin_loop();
                    }
                })
                .expect("the holding read");
            });
            while !inside.load(Ordering::SeqCst) {
                std::hint::spin_loop();
            }
            let window = scope
                .spawn(|| {
                    let window = count_in_trapped_thread(&held, &lone);
                    done.store(true, Ordering::SeqCst);
                    window
                })
                .join()
                .expect("the trapped reader");
            holder.join().expect("the holder");
            window
        });
        assert_eq!(
            window.getpid_traps, 1,
            "{backing:?}: the trap must see getpid()"
        );
        assert_eq!(
            window.overlapping_failures, 0,
            "{backing:?}: overlapping reads failed"
        );
        assert_eq!(
            window.overlapping_traps,
            0,
            "{backing:?}: 10,000 overlapping reads made system calls (last: {})",
            LAST_TRAPPED.load(Ordering::SeqCst)
        );
        assert!(
            window.lone_failed && window.lone_traps >= 1,
            "{backing:?}: a read that must mprotect was not trapped"
        );
        assert_eq!(
            window.lone_trapped_call,
            libc::SYS_mprotect,
            "{backing:?}: the lone read's system call"
        );
        held.close().expect("close");
        lone.close().expect("close");
    }
}

struct KeyWindow {
    getpid_traps: usize,
    read_traps: usize,
    read_failures: usize,
    write_traps: usize,
    write_failures: usize,
}

/// On the calling thread: trap every system call, then count those made by a `getpid()`, by
/// 10,000 reads of `secret` (which no other thread holds) and by 10,000 writes.
fn count_lone_accesses(secret: &Secret) -> KeyWindow {
    // The first access on a thread may set up per-thread state; what is counted is every later
    // one.
    secret
        .with_bytes(|bytes| black_box(bytes[0]))
        .expect("a read");
    secret
        .with_bytes_mut(|bytes| black_box(bytes[0]))
        .expect("a write");
    trap_all_syscalls_of_this_thread();
    COUNTING.store(true, Ordering::SeqCst);
    // SAFETY: getpid has no preconditions.
    black_box(unsafe { libc::getpid() });
    let getpid_traps = TRAPPED.swap(0, Ordering::SeqCst);
    let mut read_failures = 0;
    for _ in 0..10_000 {
        match secret.with_bytes(|bytes| bytes.iter().fold(0u8, |a, &b| a ^ b)) {
            Ok(sum) => {
                black_box(sum);
            }
            Err(_) => read_failures += 1,
        }
    }
    let read_traps = TRAPPED.swap(0, Ordering::SeqCst);
    TRAPPED_BESIDES_MEMBARRIER.store(0, Ordering::SeqCst);
    let mut write_failures = 0;
    for _ in 0..10_000 {
        if secret.with_bytes_mut(|bytes| bytes[0] ^= 1).is_err() {
            write_failures += 1;
        }
    }
    let write_traps = TRAPPED_BESIDES_MEMBARRIER.swap(0, Ordering::SeqCst);
    TRAPPED.store(0, Ordering::SeqCst);
    COUNTING.store(false, Ordering::SeqCst);
    KeyWindow {
        getpid_traps,
        read_traps,
        read_failures,
        write_traps,
        write_failures,
    }
}

#[test]
fn protection_key_reads_make_no_system_call_and_writes_only_membarrier() {
    if let Err(reason) = securememory::system::check_protection_keys() {
        eprintln!("skipped: {reason}");
        return;
    }
    lone_accesses_make_no_system_call_but_membarrier(Strategy::ProtectionKey, "");
}

#[test]
fn sealed_reads_make_no_system_call_and_writes_only_membarrier() {
    lone_accesses_make_no_system_call_but_membarrier(Strategy::Sealed, "sealed ");
}

/// 10,000 reads and 10,000 writes of one secret of `strategy` on a trapped thread: no system
/// call but `membarrier` (a write of a secret that has been read makes every thread fence, to
/// see readers that published without a fence of their own; refused here, the library falls
/// back to waiting). `what` names the secrets in messages.
fn lone_accesses_make_no_system_call_but_membarrier(strategy: Strategy, what: &str) {
    let _turn = counting_turn();
    install_handler();
    let factory = ProtectedMemorySecretFactory::builder()
        .strategy(strategy)
        .build();
    let secret = factory.create_random(32).expect("a secret");
    // A fresh thread: the seccomp filter stays with the thread that installed it (and a sealed
    // secret's first accesses there, outside the trap, map its scratch area).
    let window = std::thread::scope(|scope| {
        scope
            .spawn(|| count_lone_accesses(&secret))
            .join()
            .expect("the trapped thread")
    });
    assert_eq!(window.getpid_traps, 1, "the trap must see getpid()");
    assert_eq!(window.read_failures, 0, "{what}reads failed");
    assert_eq!(
        window.read_traps,
        0,
        "10,000 {what}reads made system calls (last: {})",
        LAST_TRAPPED.load(Ordering::SeqCst)
    );
    assert_eq!(window.write_failures, 0, "{what}writes failed");
    assert_eq!(
        window.write_traps,
        0,
        "10,000 {what}writes made system calls besides membarrier (last: {})",
        LAST_TRAPPED.load(Ordering::SeqCst)
    );
    secret.close().expect("close");
}

struct LifecycleWindow {
    getpid_traps: usize,
    traps: usize,
    failures: Vec<Error>,
}

/// On the calling thread: make and close a few sealed secrets (the key page, the thread's
/// scratch area, the allocator's free lists), then trap every system call and count those made
/// by 1,000 more `new(&mut buf)` + `close()`.
fn count_sealed_lifecycles(factory: &ProtectedMemorySecretFactory) -> LifecycleWindow {
    let source = [0x5au8; 32];
    let mut buf = source;
    let mut cycle = || {
        buf.copy_from_slice(&source);
        factory.new(&mut buf).and_then(|secret| secret.close())
    };
    for _ in 0..10 {
        cycle().expect("a warm-up new + close");
    }
    trap_all_syscalls_of_this_thread();
    COUNTING.store(true, Ordering::SeqCst);
    // SAFETY: getpid has no preconditions.
    black_box(unsafe { libc::getpid() });
    let getpid_traps = TRAPPED.swap(0, Ordering::SeqCst);
    let failures: Vec<Error> = (0..1_000).filter_map(|_| cycle().err()).collect();
    let traps = TRAPPED.swap(0, Ordering::SeqCst);
    COUNTING.store(false, Ordering::SeqCst);
    LifecycleWindow {
        getpid_traps,
        traps,
        failures,
    }
}

#[test]
fn sealed_new_and_close_make_no_system_call() {
    let _turn = counting_turn();
    install_handler();
    let factory = ProtectedMemorySecretFactory::builder()
        .strategy(Strategy::Sealed)
        .build();
    // Secrets that stay alive meanwhile, so the registry is not empty.
    let others: Vec<Secret> = (0..100)
        .map(|_| factory.create_random(32).expect("a secret"))
        .collect();
    let window = std::thread::scope(|scope| {
        scope
            .spawn(|| count_sealed_lifecycles(&factory))
            .join()
            .expect("the trapped thread")
    });
    assert_eq!(window.getpid_traps, 1, "the trap must see getpid()");
    assert!(
        window.failures.is_empty(),
        "{} of 1,000 sealed new + close failed, first: {:?}",
        window.failures.len(),
        window.failures.first()
    );
    assert_eq!(
        window.traps,
        0,
        "1,000 sealed new + close made system calls (last: {})",
        LAST_TRAPPED.load(Ordering::SeqCst)
    );
    for secret in others {
        secret.close().expect("close");
    }
}
