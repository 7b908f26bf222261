//! Loupe's build, run, test and bench tasks: `cargo xtask <task>`. Each task installs what it needs
//! (see setup.rs) so the README's two commands work on a fresh machine.

mod bench;
mod bench_alloc;
mod bench_go;
mod bench_http2;
mod bench_logs;
mod bench_net;
mod bench_parsers;
mod bench_tls;
mod build;
mod demo;
mod fuzz;
mod helm_docs;
mod image;
mod python;
mod setup;
mod spans_read;
mod test;
mod tools;
mod util;
mod vm;

use std::{os::unix::process::CommandExt, process::Command};

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "Loupe's tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing needs (no-op when everything is there): Debian packages,
    /// the kernel programs' toolchain, and the test tools (helm, kubernetes-validate, Grafana's
    /// query grammars).
    Setup,
    /// Build the kernel programs and the release agent (target/release/loupe-agent).
    Build,
    /// Set up, build, and run the agent on this host: `cargo xtask run -- [AGENT ARGS]`.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        agent_args: Vec<String>,
    },
    /// Run every test: unit, eBPF against the real kernel, end to end.
    Test(test::TestArgs),
    /// Run the benchmarks and write a report.
    Bench(bench::BenchArgs),
    /// Run the demo shop (MariaDB, Redis, five services, load) with the agent: `cargo xtask demo`.
    Demo(demo::DemoArgs),
    /// List, inject or verify a troubleshooting exercise of the demo shop.
    Exercise(demo::ExerciseArgs),
    /// Run every dashboard and alert-rule PromQL expression against a real Prometheus scraping the
    /// agent, MySQL and Redis exporters while the demo shop is under load.
    DashboardsCheck(demo::queries::DashboardsCheckArgs),
    /// Build (and push) the container images with docker or podman: `cargo xtask image all
    /// --registry R --tag T --push`.
    Image(image::ImageArgs),
    /// Write docs/helm-values.md from the agent chart's documented values.
    HelmDocs,
    /// Fuzz every input parser for a set time: property rounds on stable, plus cargo-fuzz's
    /// coverage-guided targets when nightly and cargo-fuzz are installed.
    Fuzz(fuzz::FuzzArgs),
    /// Boot the agent and its end-to-end tests on the EKS kernels (5.10, 6.1, 6.12) under QEMU.
    VmTest(vm::VmArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Setup => {
            setup::setup(setup::Extras::Test)?;
            tools::ensure_test_tools()
        }
        Task::Build => build::build(setup::Extras::None),
        Task::Run { agent_args } => {
            if !util::is_root() {
                anyhow::bail!(
                    "the agent loads eBPF programs: run as root (e.g. sudo -E cargo xtask run)"
                );
            }
            build::build(setup::Extras::None)?;
            let agent = build::agent_binary();
            eprintln!("==> running {} {}", agent.display(), agent_args.join(" "));
            let err = Command::new(&agent).args(&agent_args).exec();
            Err(err).with_context(|| format!("cannot run {}", agent.display()))
        }
        Task::Test(args) => test::test(args),
        Task::Bench(args) => bench::bench(args),
        Task::VmTest(args) => vm::vm_test(args),
        Task::HelmDocs => helm_docs::helm_docs(),
        Task::Fuzz(args) => fuzz::fuzz(args),
        Task::Image(args) => image::image(args),
        Task::DashboardsCheck(args) => demo::queries::dashboards_check(args),
        Task::Demo(args) => demo::demo(args),
        Task::Exercise(args) => demo::exercise(args),
    }
}
