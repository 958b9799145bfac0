//! How many live 32-byte secrets one process holds under each strategy, and what each costs.
//!
//! ```sh
//! cargo run --release -p securememory-bench --bin capacity
//! cargo run --release -p securememory-bench --bin capacity -- --sealed 100000 --mapped 5000
//! ```
//!
//! For each strategy (`page-protection`, `protection-key`, `sealed`, all with the default
//! backing) a fresh child process makes secrets with `new(&mut buf)` until it has the number asked
//! for (`--sealed`, default 1,000,000; `--mapped` for the two strategies that need a mapping and a
//! locked page per secret, default 20,000) or the library refuses one, reads each back, and closes
//! them; it reports the secrets reached, the mappings they added (`/proc/self/maps` lines),
//! resident and locked bytes (`VmRSS`, `VmLck`), and the time to make and to close one. Every
//! strategy is measured twice: as the user running this, and as `nobody` with no capabilities
//! and an `RLIMIT_MEMLOCK` of 8 MiB, the limit an ordinary process gets (root, or
//! `CAP_IPC_LOCK`, locks past any limit, so a run as root alone says nothing about it).
//!
//! Prints a table and writes the results as JSON lines to `target/capacity.json` (`--json PATH`
//! elsewhere), which `scripts/bench-report` reads. `--no-read` skips reading the secrets back
//! (a secret never read closes without making every thread fence); `--no-unprivileged` skips
//! the runs as `nobody`; `--strategies sealed,page-protection` picks strategies.
//! `--measure STRATEGY N [--no-read]` is one measurement in this process, as JSON on stdout.

#[cfg(target_os = "linux")]
fn main() {
    use securememory_bench::capacity::{self, Capacity, DEFAULT_MEMLOCK};
    use std::io::Write;

    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: capacity [--sealed N] [--mapped N] [--strategies LIST] [--no-read] \
                 [--no-unprivileged] [--json PATH] | --measure STRATEGY N [--no-read]";
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .map(|i| args.get(i + 1).expect(usage).as_str())
    };
    let number = |flag: &str, default: u64| {
        value(flag).map_or(default, |n| n.replace('_', "").parse().expect(usage))
    };
    let read_back = !args.iter().any(|a| a == "--no-read");

    if let Some(i) = args.iter().position(|a| a == "--measure") {
        let strategy = args.get(i + 1).expect(usage);
        let count = args.get(i + 2).expect(usage).parse().expect(usage);
        match capacity::measure(strategy, count, read_back) {
            Ok(result) => println!("{}", result.to_json()),
            Err(error) => {
                eprintln!("capacity --measure {strategy} {count}: {error}");
                std::process::exit(1);
            }
        }
        return;
    }

    let sealed = number("--sealed", 1_000_000);
    let mapped = number("--mapped", 20_000);
    let strategies: Vec<String> = value("--strategies")
        .unwrap_or("page-protection,protection-key,sealed")
        .split(',')
        .map(str::to_string)
        .collect();
    for name in &strategies {
        assert!(
            capacity::strategy(name).is_some(),
            "unknown strategy {name}"
        );
    }
    let unprivileged = !args.iter().any(|a| a == "--no-unprivileged");
    let json = value("--json").map_or_else(
        || concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/capacity.json").into(),
        std::path::PathBuf::from,
    );
    let exe = std::env::current_exe().expect("the path of this binary");

    let mut runs = Vec::new();
    let limits: &[Option<u64>] = if unprivileged {
        &[None, Some(DEFAULT_MEMLOCK)]
    } else {
        &[None]
    };
    for &limit in limits {
        for name in &strategies {
            let count = if name == "sealed" { sealed } else { mapped };
            runs.push((name.clone(), count, limit));
        }
    }
    println!(
        "{:<16} {:<50} {:>9} {:>9} {:>9} {:>11} {:>11} {:>10} {:>10}  stopped by",
        "strategy",
        "user",
        "asked",
        "live",
        "mappings",
        "resident/s",
        "locked",
        "create/s",
        "close/s"
    );
    let mut results: Vec<Capacity> = Vec::new();
    for (name, count, limit) in runs {
        match capacity::run_measurement(&exe, &name, count, read_back, limit) {
            Ok(result) => {
                println!(
                    "{:<16} {:<50} {:>9} {:>9} {:>9} {:>9.0} B {:>7} KiB {:>7.0} ns {:>7.0} ns  {}",
                    result.strategy,
                    result.user,
                    result.requested,
                    result.live,
                    result.new_mappings,
                    result.resident_per_secret(),
                    result.locked_bytes >> 10,
                    result.create_ns_per_secret(),
                    result.close_ns_per_secret(),
                    result.stopped_by.as_deref().unwrap_or("-")
                );
                results.push(result);
            }
            Err(error) => eprintln!("{name} ({count}, memlock {limit:?}): {error}"),
        }
    }
    let mut file = std::fs::File::create(&json)
        .unwrap_or_else(|error| panic!("creating {}: {error}", json.display()));
    for result in &results {
        writeln!(file, "{}", result.to_json()).expect("writing the results");
    }
    println!("wrote {}", json.display());
}

#[cfg(not(target_os = "linux"))]
fn main() {}
