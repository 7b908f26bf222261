//! `cargo xtask fuzz`: every input parser fed generated and mutated inputs for a set time.
//!
//! Two engines:
//! - **Stable Rust (always).** Each target is a set of property tests (proptest) whose inputs are
//!   arbitrary bytes and text as well as structured, protocol-shaped ones. They run in rounds of
//!   `LOUPE_FUZZ_CASES` cases, each round with a fresh random seed, until the target's time is up.
//!   A failure is shrunk to a minimal input, saved by proptest in the test file's
//!   `.proptest-regressions` (replayed first by every later run, CI included), and fails the
//!   task. `cargo xtask test` runs the same properties at their default case counts: CI's short
//!   pass.
//! - **cargo-fuzz (when a nightly toolchain and cargo-fuzz are installed).** The protocol parsers'
//!   coverage-guided targets in `fuzz/` run with libFuzzer for the same time, seeded with
//!   `agent/protocols/tests/corpus`. Install with `rustup toolchain install nightly` and
//!   `cargo install cargo-fuzz`; neither is needed otherwise.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use crate::util::{exec, root, step};

#[derive(clap::Args, Debug)]
pub struct FuzzArgs {
    /// Time per target, in seconds.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Run only the targets whose name contains this.
    #[arg(long)]
    pub target: Option<String>,
    /// Cases per stable round (each round has a new random seed).
    #[arg(long, default_value_t = 2000)]
    pub cases: u32,
    /// List the targets and what they cover, then exit.
    #[arg(long)]
    pub list: bool,
}

/// One fuzz target: the properties that feed one parser family.
struct Target {
    name: &'static str,
    covers: &'static str,
    package: &'static str,
    /// `cargo test` arguments selecting the test binary.
    test_binary: &'static [&'static str],
    /// Test name filters within that binary (a test matching any of them runs).
    filter: &'static [&'static str],
    /// The coverage-guided target in `fuzz/`, if there is one.
    libfuzzer: Option<&'static str>,
}

const TARGETS: &[Target] = &[
    Target {
        name: "connections",
        covers: "HTTP/1.1, HTTP/2 (frames, HPACK), MySQL and Redis connection parsers and protocol \
                 detection, fed arbitrary and protocol-shaped chunks, gaps and closes",
        package: "loupe-protocols",
        test_binary: &["--test", "properties"],
        filter: &["chunks_never_panic", "streams_never_panic"],
        libfuzzer: Some("connections"),
    },
    Target {
        name: "protocol-round-trips",
        covers: "generated HTTP/1.1, HTTP/2/gRPC, MySQL and Redis exchanges cut at arbitrary \
                 syscall boundaries or captures: every request paired with its own response",
        package: "loupe-protocols",
        test_binary: &["--test", "properties"],
        filter: &[
            "round_trip",
            "survives_truncation",
            "pair_exactly",
            "hands_over",
        ],
        libfuzzer: None,
    },
    Target {
        name: "attribute-helpers",
        covers: "SQL and Redis sanitizers (no literal survives), route inference, traceparent",
        package: "loupe-protocols",
        test_binary: &["--test", "properties"],
        filter: &[
            "helpers_never_panic",
            "literals_never_survive",
            "traceparent_round_trips",
        ],
        libfuzzer: Some("helpers"),
    },
    Target {
        name: "log-lines",
        covers: "the log line splitter: arbitrary writes, cut captures, partial lines across writes",
        package: "loupe-agent",
        test_binary: &["--bin", "loupe-agent"],
        filter: &["logs::lines::"],
        libfuzzer: None,
    },
    Target {
        name: "config",
        covers: "the TOML configuration loader: arbitrary files load or fail with one clear error",
        package: "loupe-agent",
        test_binary: &["--bin", "loupe-agent"],
        filter: &["config::tests::properties::"],
        libfuzzer: None,
    },
    Target {
        name: "cgroup",
        covers: "the /proc/PID/cgroup parser (container ids of every runtime and cgroup driver)",
        package: "loupe-agent",
        test_binary: &["--bin", "loupe-agent"],
        filter: &["k8s::cgroup::"],
        libfuzzer: None,
    },
    Target {
        name: "kallsyms",
        covers: "the kernel symbol table parser: arbitrary text never panics, lookups stay in bounds",
        package: "loupe-agent",
        test_binary: &["--bin", "loupe-agent"],
        filter: &["profiler::kallsyms::"],
        libfuzzer: None,
    },
];

pub fn fuzz(args: FuzzArgs) -> anyhow::Result<()> {
    let chosen: Vec<&Target> = TARGETS
        .iter()
        .filter(|t| args.target.as_deref().is_none_or(|f| t.name.contains(f)))
        .collect();
    if args.list {
        for t in TARGETS {
            let engines = if t.libfuzzer.is_some() {
                "proptest, cargo-fuzz"
            } else {
                "proptest"
            };
            println!("{:<22} [{engines}] {}", t.name, t.covers);
        }
        return Ok(());
    }
    if chosen.is_empty() {
        bail!(
            "no target matches {:?}; `cargo xtask fuzz --list` names them",
            args.target
        );
    }
    let nightly = cargo_fuzz_available();
    if !nightly {
        eprintln!(
            "==> cargo-fuzz on nightly not found: stable property rounds only (coverage-guided runs: \
             `rustup toolchain install nightly && cargo install cargo-fuzz`)"
        );
    }
    let budget = Duration::from_secs(args.seconds);
    let mut summary = Vec::new();
    for t in chosen {
        let rounds = step(
            &format!("{}: stable property rounds for {}s", t.name, args.seconds),
            || stable_rounds(t, budget, args.cases),
        )?;
        summary.push(format!(
            "{}: {rounds} rounds × {} cases per property",
            t.name, args.cases
        ));
        if let (true, Some(target)) = (nightly, t.libfuzzer) {
            step(
                &format!("{}: cargo fuzz run {target} for {}s", t.name, args.seconds),
                || libfuzzer(target, args.seconds),
            )?;
            summary.push(format!("{}: libFuzzer {target} {}s", t.name, args.seconds));
        }
    }
    println!("fuzzing passed:");
    for line in summary {
        println!("  {line}");
    }
    Ok(())
}

/// Runs the target's properties in rounds until `budget` is spent; returns the rounds run.
fn stable_rounds(t: &Target, budget: Duration, cases: u32) -> anyhow::Result<u32> {
    let cargo_test = |no_run: bool| {
        let mut c = Command::new("cargo");
        c.current_dir(root())
            .args(["test", "--release", "-p", t.package])
            .args(t.test_binary);
        if no_run {
            c.arg("--no-run");
        } else {
            c.arg("--").args(t.filter).arg("--test-threads=2");
        }
        c.env("LOUPE_FUZZ_CASES", cases.to_string());
        c
    };
    exec(&mut cargo_test(true))?;
    let started = Instant::now();
    let mut rounds = 0;
    while rounds == 0 || started.elapsed() < budget {
        let out = cargo_test(false)
            .stderr(Stdio::inherit())
            .output()
            .context("cannot run cargo test")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            eprintln!("{stdout}");
            bail!(
                "{}: a property failed in round {} (the shrunk input is saved in the test file's \
                 .proptest-regressions and replayed by every later run)",
                t.name,
                rounds + 1
            );
        }
        // A filter that selects nothing would pass forever without testing anything.
        if !stdout
            .lines()
            .any(|l| l.starts_with("test ") && l.ends_with(" ok"))
        {
            bail!("{}: the filters {:?} selected no test", t.name, t.filter);
        }
        rounds += 1;
    }
    Ok(rounds)
}

fn cargo_fuzz_available() -> bool {
    Command::new("cargo")
        .args(["+nightly", "fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn libfuzzer(target: &str, secs: u64) -> anyhow::Result<()> {
    let corpus = root().join("target/fuzz-corpus").join(target);
    std::fs::create_dir_all(&corpus)?;
    exec(
        Command::new("cargo")
            .current_dir(root().join("fuzz"))
            .args(["+nightly", "fuzz", "run", target])
            .arg(&corpus)
            .args(
                ["http1", "http2", "mysql", "redis"]
                    .map(|p| root().join("agent/protocols/tests/corpus").join(p)),
            )
            .arg("--")
            .arg(format!("-max_total_time={secs}")),
    )
}
