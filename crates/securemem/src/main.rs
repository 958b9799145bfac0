//! `securemem`: command-line tools for securememory.

#[cfg(target_os = "linux")]
mod cli {
    use clap::{Parser, Subcommand};
    use securemem::doctor::{self, Requirement, EXIT_PROBE_BROKEN};
    use securemem::holder::{HolderArgs, Policy};
    use securemem::limits::MemlockLimit;
    use std::io::IsTerminal;
    use std::process::ExitCode;

    /// The exit codes of `securemem doctor`, as its help shows them.
    const EXIT_CODES: &str = "\
Exit status:
  0  every required promise holds; without --require or --strict that is every promise this
     machine and configuration offer (UNAVAILABLE is accepted); N/A and SKIP (a promise that
     is not one of the strategy the secrets got) count only when named with --require
  1  a required promise does not hold: it FAILs, or it is UNAVAILABLE under --require or
     --strict (also when the library refuses the first secret, e.g. MlockPolicy::Required
     under a locked-memory limit it cannot meet: P1 FAILs; Strategy::ProtectionKey without
     protection keys: P8 FAILs)
  2  usage error
  3  the probe itself broke (a holder could not be started, a probe hung or answered
     nonsense), so a required promise has no verdict; 1 wins when another one FAILs";

    /// Secrets in memory: what this machine guarantees, proven by live probes.
    #[derive(Parser)]
    #[command(name = "securemem", version)]
    struct Cli {
        #[command(subcommand)]
        command: Command,
    }

    #[derive(Subcommand)]
    enum Command {
        /// Report what this machine guarantees for secrets, proven by probes in child processes.
        ///
        /// Every promise of securememory (P1-P9) is attacked from outside a real process that
        /// holds a secret, created with the library's default policy (Backing::Auto,
        /// MlockPolicy::Required, Strategy::Auto) or the one given, under the caller's
        /// locked-memory limit or the one given with --memlock.
        #[command(after_help = EXIT_CODES)]
        Doctor(DoctorArgs),
        /// The process the probes attack (internal).
        #[command(hide = true)]
        Holder(HolderArgs),
    }

    #[derive(clap::Args)]
    struct DoctorArgs {
        /// Print the report as JSON (with a top-level "schema" version; evidence in full).
        #[arg(long)]
        json: bool,
        /// The factory settings to probe (those an application gives the library).
        #[command(flatten)]
        policy: Policy,
        /// Probe under this RLIMIT_MEMLOCK, the limit the service will run with, with
        /// CAP_IPC_LOCK dropped in the probed processes: bytes, with a K/M/G suffix, or
        /// `unlimited` [default: the caller's own limit and capabilities].
        #[arg(long, value_name = "BYTES")]
        memlock: Option<MemlockLimit>,
        /// These promises must PASS (comma-separated, e.g. P1,P6); UNAVAILABLE, N/A and SKIP
        /// count as not holding for them.
        #[arg(
            long,
            value_name = "PROMISES",
            value_delimiter = ',',
            value_parser = doctor::promise_id
        )]
        require: Vec<&'static str>,
        /// Every promise of the strategy the secrets got must PASS; UNAVAILABLE counts as not
        /// holding (N/A and SKIP do not: those are not promises of that strategy).
        #[arg(long)]
        strict: bool,
    }

    pub fn main() -> ExitCode {
        // clap's own errors exit with 2, help and version with 0.
        let cli = Cli::parse();
        match cli.command {
            Command::Holder(args) => {
                ExitCode::from(u8::try_from(securemem::holder::run(&args)).unwrap_or(1))
            }
            Command::Doctor(args) => run_doctor(&args),
        }
    }

    fn run_doctor(args: &DoctorArgs) -> ExitCode {
        let exe = match std::env::current_exe() {
            Ok(exe) => exe,
            Err(e) => {
                eprintln!("securemem: cannot find my own executable: {e}");
                return ExitCode::from(EXIT_PROBE_BROKEN);
            }
        };
        let requirement = if args.strict {
            Requirement::strict()
        } else if !args.require.is_empty() {
            Requirement::listed(&args.require)
        } else {
            Requirement::default()
        };
        let options = doctor::Options {
            exe,
            policy: args.policy,
            memlock: args.memlock,
            requirement,
        };
        let show_progress = std::io::stderr().is_terminal();
        if show_progress {
            eprintln!(
                "securemem doctor: probing {} promises in child processes ({})",
                doctor::PROMISES.len(),
                options.policy.describe()
            );
        }
        let report = doctor::run(&options, &mut |row, elapsed| {
            if show_progress {
                eprintln!(
                    "  {} {:<12}{:>6.1} s  {}",
                    row.id,
                    row.status.word(),
                    elapsed.as_secs_f64(),
                    row.promise
                );
            }
        });
        if args.json {
            match serde_json::to_string_pretty(&report) {
                Ok(text) => println!("{text}"),
                Err(e) => {
                    eprintln!("securemem: {e}");
                    return ExitCode::from(EXIT_PROBE_BROKEN);
                }
            }
        } else {
            print!("{}", report.plain());
        }
        ExitCode::from(report.exit_code)
    }
}

#[cfg(target_os = "linux")]
fn main() -> std::process::ExitCode {
    cli::main()
}

#[cfg(not(target_os = "linux"))]
fn main() -> std::process::ExitCode {
    eprintln!("securemem: the probes and doctor support Linux only for now");
    std::process::ExitCode::from(3)
}
