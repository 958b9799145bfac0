//! Creates, reads and closes secrets, and prints which protections this machine gave them.
//!
//! `cargo run --release --example quickstart`

use securememory::{Error, ProtectedMemorySecretFactory};
use std::sync::Arc;

fn main() -> Result<(), Error> {
    let factory = ProtectedMemorySecretFactory::default();

    // A key that arrived in an ordinary buffer: copied into protected pages, then wiped.
    let mut key = *b"an example 32-byte key material!";
    let secret = factory.new(&mut key)?;
    assert!(key.iter().all(|&b| b == 0), "the source buffer is wiped");

    // Readable only inside the callback.
    let checksum = secret.with_bytes(|bytes| bytes.iter().fold(0u8, |acc, b| acc ^ b))?;
    println!(
        "read {} bytes inside an access (xor checksum {checksum:#04x})",
        secret.len()
    );

    // Random bytes generated straight into protected memory, shared between threads.
    let random = Arc::new(factory.create_random(32)?);
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let random = Arc::clone(&random);
            std::thread::spawn(move || random.with_bytes(|bytes| bytes.len()))
        })
        .collect();
    for reader in readers {
        assert_eq!(reader.join().expect("reader thread")?, 32);
    }

    let p = secret.protection();
    println!("protections on this machine:");
    println!("  backing           {:?}", p.backing);
    println!("  locked in RAM     {}", p.locked);
    println!("  out of core dumps {}", p.dump_excluded);
    println!("  hidden from fork  {}", p.fork_protected);
    println!("  guard pages       {}", p.guard_pages);
    println!("  kernel-invisible  {}", p.kernel_invisible);

    secret.close()?;
    assert!(matches!(secret.with_bytes(|_| ()), Err(Error::Closed)));
    println!("closed: {}", secret.is_closed());
    Ok(())
}
