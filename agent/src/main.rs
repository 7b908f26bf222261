//! `loupe-agent`: Loupe's node agent. `run` (the default) profiles every process on the host and
//! exports the profiles; `doctor` reports what the kernel offers.

mod config;
mod doctor;
mod ebpf;
mod net;
mod probe;
mod profiler;
mod run;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use config::{CliOptions, Config};

/// mimalloc instead of glibc's malloc: the span path allocates and frees small objects at a high
/// rate on three threads (socket reader, span builder, exporters), where glibc's arenas spent
/// about 40% of the agent's CPU at saturation (malloc, free, consolidation) and held on to freed
/// memory.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "loupe-agent",
    version,
    about = "Loupe: eBPF CPU profiles, spans and logs, correlated, with zero code changes."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    options: CliOptions,
}

#[derive(Subcommand, Debug, Clone, Copy, PartialEq, Eq)]
enum Command {
    /// Run the agent (the default).
    Run,
    /// Print what this kernel offers and what Loupe will use, then exit 0.
    Doctor,
}

fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    let config = match Config::load(&cli.options) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("loupe-agent: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Run) {
        Command::Doctor => {
            doctor::run();
            ExitCode::SUCCESS
        }
        Command::Run => match run::run(config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("loupe-agent: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

/// Logs go to stderr; `RUST_LOG` (or `LOUPE_LOG`) picks the level, `info` by default.
fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("LOUPE_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .or_else(|| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}
