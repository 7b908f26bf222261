//! `loupe-agent`: Loupe's node agent. `run` (the default) profiles every process on the host and
//! exports the profiles; `doctor` reports what the kernel offers.

mod config;
mod correlate;
mod doctor;
mod ebpf;
mod k8s;
mod logs;
mod lru_maps;
mod memory;
mod net;
mod privileges;
mod probe;
mod procfs;
mod profiler;
mod run;
mod self_metrics;
mod span_flame;
mod stop_fd;
mod trace_ctx_map;
mod uprobes;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use config::{CliOptions, Config};

/// mimalloc instead of glibc's malloc: the span path allocates and frees small objects at a high
/// rate on three threads (socket reader, span builder, exporters), where glibc's arenas spent
/// about 40% of the agent's CPU at saturation (malloc, free, consolidation) and held on to freed
/// memory.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc v3's option numbers (`mi_option_e` in its mimalloc.h; the crate pins the version, and a
/// test checks each number against the option's default).
mod mi_option {
    pub const ARENA_EAGER_COMMIT: i32 = 4;
    pub const PURGE_DELAY: i32 = 15;
}

/// Memory freed is given back to the OS at once and arenas are committed as they are used: with
/// mimalloc's defaults (purge after 1 s, eager commit) the agent's peak RSS at saturation was
/// 160 MB instead of 75.
///
/// Transparent huge pages are off for the agent (prctl PR_SET_THP_DISABLE): where the kernel
/// honours madvise(MADV_HUGEPAGE) mimalloc asks for them, and a 2 MiB page backing a few live
/// objects counts whole towards RSS.
fn configure_allocator() {
    // SAFETY: mi_option_set only stores an option value; both numbers name existing options.
    unsafe {
        libmimalloc_sys::mi_option_set(mi_option::PURGE_DELAY, 0);
        libmimalloc_sys::mi_option_set(mi_option::ARENA_EAGER_COMMIT, 0);
    }
    // SAFETY: prctl with PR_SET_THP_DISABLE takes integer arguments only.
    let _ = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
}

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

#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
enum Command {
    /// Run the agent (the default).
    Run,
    /// Print what this kernel offers and what Loupe will use, then exit 0.
    Doctor,
    /// Draw the flame graph of one span (or every span of one name) from the local sink's
    /// profiles: OUTPUT_DIR/spans/<id>.svg.
    Flamegraph(span_flame::FlamegraphArgs),
}

fn main() -> ExitCode {
    // Before any thread exists (they inherit it): file capabilities come permitted-only.
    let raised = privileges::raise_effective();
    configure_allocator();
    init_logging();
    match raised {
        Ok((before, after)) if before != after => tracing::debug!(
            raised = privileges::names(after & !before).join(","),
            "effective capabilities raised to the permitted ones"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!("cannot raise the effective capabilities: {e}"),
    }
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
        Command::Flamegraph(args) => match span_flame::run(&args, &config.output_dir) {
            Ok((path, samples)) => {
                println!("{samples} samples → {}", path.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("loupe-agent: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Run => match run::run(config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("loupe-agent: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

/// Logs go to stderr; `RUST_LOG` (or `LOUPE_LOG`) picks the level, `info` by default (kube-rs's
/// own lines off).
fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("LOUPE_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .or_else(|| EnvFilter::try_from_default_env().ok())
        // kube-rs reports every failed retry of the pod watch at error level; the agent says
        // once that the API is away (and when it is back), so its own lines are enough.
        .unwrap_or_else(|| EnvFilter::new("info,kube_runtime=off,kube_client=off"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

/// Cases per property test: `default`, or `LOUPE_FUZZ_CASES` when `cargo xtask fuzz` sets it.
#[cfg(test)]
pub(crate) fn fuzz_cases(default: u32) -> u32 {
    std::env::var("LOUPE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[cfg(test)]
mod tests {
    use super::mi_option;

    /// The option numbers name the options meant: each has its documented default here (tests
    /// never call `configure_allocator`).
    #[test]
    fn mimalloc_option_numbers_match_their_defaults() {
        // SAFETY: mi_option_get reads an option value.
        let get = |o| unsafe { libmimalloc_sys::mi_option_get(o) };
        assert_eq!(
            get(mi_option::PURGE_DELAY),
            1000,
            "purge_delay defaults to 1 s"
        );
        assert_eq!(
            get(mi_option::ARENA_EAGER_COMMIT),
            2,
            "arena_eager_commit defaults to 2"
        );
    }
}
