//! `Strategy::ProtectionKey`: what a per-thread window gives and what it does not, checked by
//! the real effect (a fault, the rights register). Tests whose point is a fault run in a child
//! process of their own and check how it died. All are skipped, saying so, where the CPU or
//! kernel has no protection keys.
#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

mod common;

use securememory::{Backing, ProtectedMemorySecretFactory, Secret, Strategy};
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::sync::mpsc;
use std::thread;

/// `RDPKRU`: this thread's protection-key rights.
fn rights() -> u32 {
    let rights: u32;
    // SAFETY: RDPKRU reads a register; the CPU has PKU (the library got a key).
    unsafe {
        std::arch::asm!("rdpkru", in("ecx") 0, out("eax") rights, out("edx") _,
            options(nomem, nostack, preserves_flags));
    }
    rights
}

/// `WRPKRU`: sets this thread's rights, here to open every key the way a faulty kernel has
/// restored them after a signal.
fn set_rights(rights: u32) {
    // SAFETY: WRPKRU writes a register; the CPU has PKU.
    unsafe {
        std::arch::asm!("wrpkru", in("eax") rights, in("ecx") 0, in("edx") 0,
            options(nostack, preserves_flags));
    }
}

/// Reads one byte at `address` the way a stray pointer would.
fn stray_read(address: usize) -> u8 {
    // SAFETY: deliberately unsound where the page may not be read: the fault is the point.
    unsafe { std::ptr::read_volatile(address as *const u8) }
}

fn secret(factory: &ProtectedMemorySecretFactory) -> Secret {
    factory.new(&mut [0x5a; 32]).unwrap()
}

/// Prints `line` at once, so that the parent sees it even when the next step kills us.
fn say(line: &str) {
    println!("{line}");
    std::io::stdout().flush().unwrap();
}

/// In the child: a thread holds a read of the secret open while this thread reads its bytes.
fn read_from_another_thread_during_an_access(factory: ProtectedMemorySecretFactory) {
    let secret = secret(&factory);
    let (inside_tx, inside_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    thread::scope(|scope| {
        let secret = &secret;
        scope.spawn(move || {
            secret
                .with_bytes(|bytes| {
                    inside_tx.send(bytes.as_ptr() as usize).unwrap();
                    done_rx.recv().unwrap();
                })
                .unwrap();
        });
        let address = inside_rx.recv().unwrap();
        say("reading from another thread");
        let byte = stray_read(address);
        say(&format!("read {byte:#x}"));
        done_tx.send(()).unwrap();
    });
}

/// In the test process: runs `test` in a child, which must get as far as printing `reached`
/// and then die of SIGSEGV (`what` says what it means if it does not). `false` in the child,
/// which runs the body; `true` (the test is over) in the parent, and where there are no keys.
fn dies_of_a_fault_in_a_child(test: &str, reached: &str, what: &str) -> bool {
    if common::is_child(test) {
        return false;
    }
    if common::protection_key_factory().is_none() {
        return true;
    }
    let (status, stdout, stderr) = common::run_child(test);
    assert!(
        stdout.contains(reached),
        "the child did not get that far: {status}\n{stdout}\n{stderr}"
    );
    assert_eq!(
        status.signal(),
        Some(libc::SIGSEGV),
        "{what}: {status}\n{stdout}"
    );
    true
}

#[test]
fn another_threads_read_during_an_access_faults() {
    let reached = "reading from another thread";
    if dies_of_a_fault_in_a_child(
        common::this_test!(),
        reached,
        "another thread read the secret during an access",
    ) {
        return;
    }
    read_from_another_thread_during_an_access(common::protection_key_factory().unwrap());
}

/// The contrast that makes the test above mean something: page protection opens the pages for
/// every thread while any access runs.
#[test]
fn another_threads_read_during_an_access_succeeds_under_page_protection() {
    common::in_child_process!();
    let factory = common::builder().strategy(Strategy::PageProtection).build();
    read_from_another_thread_during_an_access(factory);
}

#[test]
fn a_stray_read_while_idle_faults() {
    if dies_of_a_fault_in_a_child(
        common::this_test!(),
        "reading while idle",
        "a stray read of an idle secret went through",
    ) {
        return;
    }
    let secret = secret(&common::protection_key_factory().unwrap());
    let address = secret.with_bytes(|bytes| bytes.as_ptr() as usize).unwrap();
    say("reading while idle");
    let byte = stray_read(address);
    say(&format!("read {byte:#x}"));
}

/// A thread created inside an access starts with its creator's rights, the window open: it can
/// read every secret under the key until it closes the key itself. Documented on
/// `Strategy::ProtectionKey`; this shows it.
#[test]
fn a_thread_created_inside_an_access_inherits_the_open_window() {
    common::in_child_process!();
    let Some(factory) = common::protection_key_factory() else {
        return;
    };
    let secret = secret(&factory);
    let (ended_tx, ended_rx) = mpsc::channel::<usize>();
    let spawned = secret
        .with_bytes(|_| {
            thread::spawn(move || {
                let address = ended_rx.recv().unwrap();
                stray_read(address)
            })
        })
        .unwrap();
    // The access has ended (told to the thread only now); the thread made inside it still reads.
    let address = secret.with_bytes(|bytes| bytes.as_ptr() as usize).unwrap();
    ended_tx.send(address).unwrap();
    assert_eq!(spawned.join().unwrap(), 0x5a);
}

#[test]
fn rights_are_put_back_after_an_access_even_when_opened_wholesale_inside_it() {
    let Some(factory) = common::protection_key_factory() else {
        return;
    };
    let secret = secret(&factory);
    let before = rights();
    secret.with_bytes(|_| set_rights(0)).unwrap();
    assert_eq!(
        rights(),
        before,
        "the access left other rights than it found"
    );
    secret.with_bytes_mut(|_| set_rights(0)).unwrap();
    assert_eq!(rights(), before);
}

extern "C" fn on_signal(_: libc::c_int) {}

#[test]
fn rights_are_put_back_after_a_signal_inside_an_access() {
    let Some(factory) = common::protection_key_factory() else {
        return;
    };
    // SAFETY: installs a handler that does nothing, for a signal this process raises itself.
    let previous =
        unsafe { libc::signal(libc::SIGUSR1, on_signal as *const () as libc::sighandler_t) };
    let secret = secret(&factory);
    let before = rights();
    let read = secret
        .with_bytes(|bytes| {
            // SAFETY: raising a signal whose handler was installed above.
            unsafe { libc::raise(libc::SIGUSR1) };
            bytes[0]
        })
        .unwrap();
    assert_eq!(read, 0x5a, "the window survived the signal");
    assert_eq!(
        rights(),
        before,
        "the access left other rights than it found"
    );
    // SAFETY: puts back the handler that was there.
    unsafe { libc::signal(libc::SIGUSR1, previous) };
}

#[test]
fn a_panic_inside_an_access_puts_the_rights_back() {
    let Some(factory) = common::protection_key_factory() else {
        return;
    };
    let secret = secret(&factory);
    let before = rights();
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        secret.with_bytes(|_| panic!("inside the access")).unwrap();
    }));
    assert!(panicked.is_err());
    assert_eq!(rights(), before);
    assert_eq!(secret.with_bytes(|b| b[0]).unwrap(), 0x5a);
}

#[test]
fn nested_accesses_and_other_secrets_inside_one_keep_the_window_open() {
    let Some(factory) = common::protection_key_factory() else {
        return;
    };
    let (a, b) = (secret(&factory), factory.new(&mut [0x33; 8]).unwrap());
    let before = rights();
    let sum = a
        .with_bytes(|outer| {
            let inner = a.with_bytes(|again| again[1]).unwrap();
            let other = b.with_bytes(|other| other[0]).unwrap();
            // Still readable after both inner windows closed.
            u32::from(outer[0]) + u32::from(inner) + u32::from(other)
        })
        .unwrap();
    assert_eq!(sum, 0x5a + 0x5a + 0x33);
    assert_eq!(rights(), before);
}

#[test]
fn protection_keys_are_never_a_silent_fallback() {
    let keyed = common::builder().strategy(Strategy::ProtectionKey).build();
    match securememory::system::check_protection_keys() {
        Ok(()) => assert_eq!(
            keyed.create_random(32).unwrap().protection().strategy,
            Strategy::ProtectionKey
        ),
        Err(_) => assert!(matches!(
            keyed.create_random(32),
            Err(securememory::Error::StrategyUnavailable { .. })
        )),
    }
}

/// `Auto` takes a protection key exactly where it keeps every promise: secret memory (which other
/// processes cannot read anyway) on a CPU with keys; anonymous memory keeps page protection.
#[test]
fn auto_takes_a_protection_key_for_secret_memory_only() {
    let keys = securememory::system::check_protection_keys().is_ok();
    let secret_memory = securememory::system::check_secret_memory().is_ok();
    let auto = ProtectedMemorySecretFactory::default()
        .create_random(32)
        .unwrap();
    let expected = if keys && auto.protection().backing == Backing::SecretMem {
        Strategy::ProtectionKey
    } else {
        Strategy::PageProtection
    };
    assert_eq!(auto.protection().strategy, expected);
    assert_eq!(
        securememory::system::auto_strategy(Backing::Auto).0,
        if keys && secret_memory {
            Strategy::ProtectionKey
        } else {
            Strategy::PageProtection
        }
    );
    let anonymous = ProtectedMemorySecretFactory::builder()
        .backing(Backing::Anonymous)
        .build()
        .create_random(32)
        .unwrap();
    assert_eq!(anonymous.protection().strategy, Strategy::PageProtection);
    let (strategy, why) = securememory::system::auto_strategy(Backing::Anonymous);
    assert_eq!(strategy, Strategy::PageProtection);
    assert!(why.contains("/proc/PID/mem"), "{why}");
    if keys {
        eprintln!("this CPU has protection keys");
    } else {
        eprintln!("skipped: the protection-key half (this CPU has no memory protection keys)");
    }
}

/// The outermost window of a thread closes the key on its way out, whatever the rights were
/// before it (some kernels have restored them as "all open" after a signal).
#[test]
fn an_access_closes_the_key_even_when_the_thread_had_every_key_open() {
    let Some(factory) = common::protection_key_factory() else {
        return;
    };
    let secret = secret(&factory);
    let before = rights();
    set_rights(0);
    secret
        .with_bytes(|bytes| assert_eq!(bytes[0], 0x5a))
        .unwrap();
    let after = rights();
    set_rights(before);
    assert_ne!(after, 0, "the key was left open after the access");
    assert_eq!(
        after.count_ones(),
        1,
        "exactly the library's key is closed: {after:#x}"
    );
}
