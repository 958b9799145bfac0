//! `securemem`: command-line tools for securememory.

#[cfg(target_os = "linux")]
mod cli {
    use clap::{Parser, Subcommand};
    use securemem::holder::{BackingArg, HolderArgs};

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
        Doctor {
            /// Print the report as JSON.
            #[arg(long)]
            json: bool,
            /// The backing to probe.
            #[arg(long, value_enum, default_value_t = BackingArg::Auto)]
            backing: BackingArg,
        },
        /// The process the probes attack (internal).
        #[command(hide = true)]
        Holder(HolderArgs),
    }

    pub fn main() -> std::process::ExitCode {
        let cli = Cli::parse();
        match cli.command {
            Command::Holder(args) => std::process::ExitCode::from(
                u8::try_from(securemem::holder::run(&args)).unwrap_or(1),
            ),
            Command::Doctor { json, backing } => {
                let exe = match std::env::current_exe() {
                    Ok(exe) => exe,
                    Err(e) => {
                        eprintln!("securemem: cannot find my own executable: {e}");
                        return std::process::ExitCode::from(2);
                    }
                };
                let report = securemem::doctor::run(exe, backing);
                if json {
                    match serde_json::to_string_pretty(&report) {
                        Ok(text) => println!("{text}"),
                        Err(e) => {
                            eprintln!("securemem: {e}");
                            return std::process::ExitCode::from(2);
                        }
                    }
                } else {
                    print!("{}", report.plain());
                }
                if report.ok {
                    std::process::ExitCode::SUCCESS
                } else {
                    std::process::ExitCode::FAILURE
                }
            }
        }
    }
}

#[cfg(target_os = "linux")]
fn main() -> std::process::ExitCode {
    cli::main()
}

#[cfg(not(target_os = "linux"))]
fn main() -> std::process::ExitCode {
    eprintln!("securemem: the probes and doctor support Linux only for now");
    std::process::ExitCode::from(2)
}
