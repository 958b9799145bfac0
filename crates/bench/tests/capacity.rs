//! Sealed secrets need no mapping and no locked memory of their own: a process with an ordinary
//! user's 8 MiB `RLIMIT_MEMLOCK` holds 100,000 of them, with a handful of mappings (the key page
//! and the scratch area) and its locked memory not growing with their number.
//!
//! The secrets are made in a child (the `capacity` binary), which drops to `nobody` with no
//! capabilities when this runs as root: root locks past any limit, so the limit would not be
//! tested. A secret under page protection takes a locked page, so under that limit the same
//! child stops near 2,048 of them, which the second test checks.

#![cfg(target_os = "linux")]

use securememory_bench::capacity::{run_measurement, Capacity, DEFAULT_MEMLOCK};
use std::path::Path;

fn measure_unprivileged(strategy: &str, count: u64) -> Capacity {
    let exe = Path::new(env!("CARGO_BIN_EXE_capacity"));
    let result = run_measurement(exe, strategy, count, true, Some(DEFAULT_MEMLOCK))
        .expect("the capacity child");
    eprintln!("{}", result.to_json());
    assert!(
        result.user.contains("CapEff 0000000000000000")
            && result.user.contains("RLIMIT_MEMLOCK 8 MiB"),
        "the child kept privileges or the limit: {}",
        result.user
    );
    assert!(
        !result.user.starts_with("uid 0,"),
        "the child runs as root: {}",
        result.user
    );
    result
}

#[test]
fn a_hundred_thousand_sealed_secrets_fit_an_ordinary_memlock_limit() {
    let result = measure_unprivileged("sealed", 100_000);
    assert_eq!(
        result.live, 100_000,
        "sealed secrets reached: {:?}",
        result.stopped_by
    );
    assert!(
        result.new_mappings <= 100,
        "100,000 sealed secrets added {} mappings",
        result.new_mappings
    );
    // The key page and one scratch area, whatever the number of secrets.
    assert!(
        result.locked_bytes <= 64 << 10,
        "100,000 sealed secrets locked {} bytes",
        result.locked_bytes
    );
    assert!(
        result.resident_per_secret() < 1024.0,
        "{:.0} resident bytes per sealed secret",
        result.resident_per_secret()
    );
}

#[test]
fn page_protection_stops_at_the_memlock_limit_with_an_error() {
    let result = measure_unprivileged("page-protection", 4_000);
    let pages = DEFAULT_MEMLOCK / securememory::system::page_size() as u64;
    assert!(
        result.live < 4_000 && result.live <= pages && result.live + 16 >= pages,
        "{} secrets of a page each under a limit of {pages} pages",
        result.live
    );
    assert!(
        result.memlock_limit_reached,
        "stopped by: {:?}",
        result.stopped_by
    );
}
