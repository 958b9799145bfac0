//! Benchmarks of securememory against the OS limit and peer libraries.
//!
//! The library part holds what the criterion suites in `benches/` share:
//!
//! - [`raw`]: the system-call sequences a perfect implementation would make, written directly
//!   against `libc` with the same page layout as a `Secret` (`[guard][data][guard]`, the bytes
//!   right-aligned against the trailing guard), so the ratio of a `Secret` to them is the cost of
//!   the library itself; for protection keys, the same pages tagged with a key and opened with
//!   `WRPKRU`; for sealing, AES-256-GCM with a key schedule prepared once and the ciphertext on
//!   the heap;
//! - [`threads`]: a sibling thread that spins on another CPU while a measurement runs (the
//!   condition under which every `mprotect` downgrade costs a TLB shootdown), and an aggregate
//!   timer for several threads working at once;
//! - [`peers`]: the `secrets` and `memsec` crates, driven as their users drive them;
//! - [`paired`]: interleaved candidate-against-baseline measurement, for ratios that survive a
//!   noisy machine;
//! - [`capacity`]: how many live secrets a process holds under each strategy, and what each
//!   costs in mappings, resident and locked memory, and time (the `capacity` binary);
//! - [`touch`]: the read every benchmark makes of the secret's bytes.
//!
//! Everything here is Linux-only; on other systems the crate is empty.

#[cfg(target_os = "linux")]
pub mod capacity;
pub mod paired;
#[cfg(target_os = "linux")]
pub mod peers;
#[cfg(target_os = "linux")]
pub mod raw;
#[cfg(target_os = "linux")]
pub mod threads;

/// Reads every byte of `bytes` (folding them with XOR), so an access really touches the memory.
///
/// The same function is used for every implementation measured, so its cost cancels out in
/// ratios.
#[inline]
pub fn touch(bytes: &[u8]) -> u8 {
    std::hint::black_box(bytes)
        .iter()
        .fold(0u8, |acc, &b| acc ^ b)
}

/// The sizes measured for access benchmarks: 32 bytes (a key), 4 KiB (a page), 1 MiB.
pub const SIZES: [(&str, usize); 3] = [("32B", 32), ("4KiB", 4096), ("1MiB", 1 << 20)];
