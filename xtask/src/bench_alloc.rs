//! `cargo xtask bench --only alloc`: what allocation profiles (`--alloc-pid`) cost the process
//! they probe. Every call to its allocator traps into the kernel; what a trap costs depends on
//! the probed function's first instruction (the kernel emulates jumps and pushes, and must
//! single-step anything else out of line, a second trap), so two allocators are measured:
//!
//! - glibc through the `alloc` workload's `calls` mode: 2,000,000 pairs of `malloc(64)` and
//!   `free`, timed by the workload, probes off and on. glibc's `malloc` starts with a push and
//!   its `free` with `test %rdi,%rdi; je`, which the agent probes at the jump: all emulated.
//! - jemalloc through Redis (Debian's links libjemalloc): `redis-benchmark` SET, 50 clients, probes
//!   off and on; allocator calls per request from the agent's own counter. jemalloc's `free`
//!   starts with a register move: single-stepped.
//!
//! No target in the issue beyond "measured and documented"; the figures go to the README.

use std::{
    fmt::Write as _,
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::{Context, bail};

use crate::{
    test::build_workloads,
    util::{KillOnDrop, http_get, root, start_agent_until, step, terminate, wait_for_port},
};

const PAIRS: u64 = 2_000_000;
const REDIS_REQUESTS: u64 = 100_000;
const REDIS_PORT: u16 = 16_479;
const METRICS_PORT: u16 = 19_479;

/// The alloc part; returns its markdown section.
pub fn alloc(agent: &Path) -> anyhow::Result<String> {
    build_workloads()?;
    let out = root().join("target/bench/alloc");
    let mut pairs = Vec::new();
    for on in [false, true] {
        let ns = step(
            &format!("{PAIRS} malloc+free pairs, allocation probes {}", onoff(on)),
            || glibc_pairs(agent, on, &out),
        )?;
        pairs.push(ns);
    }
    let mut redis = Vec::new();
    for on in [false, true] {
        let r = step(
            &format!("redis-benchmark SET, allocation probes {}", onoff(on)),
            || redis_run(agent, on, &out),
        )?;
        redis.push(r);
    }
    Ok(report(&pairs, &redis))
}

fn onoff(on: bool) -> &'static str {
    if on { "on" } else { "off" }
}

/// Nanoseconds per malloc+free pair of the workload, with the agent probing it or not.
fn glibc_pairs(agent: &Path, on: bool, out: &Path) -> anyhow::Result<f64> {
    let mut work = Command::new(root().join("target/workloads/alloc"))
        .args(["calls", &PAIRS.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start the alloc workload")?;
    let mut lines = BufReader::new(work.stdout.take().context("workload stdout")?).lines();
    let ready = lines.next().transpose()?.unwrap_or_default();
    if ready != "ready" {
        bail!("the alloc workload said {ready:?}, not ready");
    }
    let agent = on
        .then(|| start_agent(agent, work.id(), &out.join("glibc")))
        .transpose()?;
    // SAFETY: kill(2) on a child this function started and has not reaped.
    if unsafe { libc::kill(work.id() as i32, libc::SIGUSR1) } != 0 {
        bail!("cannot signal the alloc workload");
    }
    let line = lines.next().transpose()?.unwrap_or_default();
    let _ = work.wait();
    if let Some(agent) = agent {
        terminate(agent);
    }
    line.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("unexpected workload output {line:?}"))
}

struct RedisRun {
    rps: f64,
    p50_ms: f64,
    /// Allocator calls per request (probes on only).
    calls_per_request: Option<f64>,
}

fn redis_run(agent: &Path, on: bool, out: &Path) -> anyhow::Result<RedisRun> {
    let server = Command::new("redis-server")
        .args([
            "--port",
            &REDIS_PORT.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()
        .context("cannot start redis-server")?;
    let server = KillOnDrop(server);
    wait_for_port(REDIS_PORT)?;
    let agent = on
        .then(|| start_agent(agent, server.0.id(), &out.join("redis")))
        .transpose()?;
    let before = agent.as_ref().map(|_| alloc_calls()).transpose()?;
    let csv = crate::util::output(Command::new("redis-benchmark").args([
        "-p",
        &REDIS_PORT.to_string(),
        "-n",
        &REDIS_REQUESTS.to_string(),
        "-c",
        "50",
        "-d",
        "256",
        "-t",
        "set",
        "--csv",
    ]))?;
    let after = agent.as_ref().map(|_| alloc_calls()).transpose()?;
    if let Some(agent) = agent {
        terminate(agent);
    }
    // "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms",...
    let row = csv
        .lines()
        .find(|l| l.starts_with("\"SET\""))
        .with_context(|| format!("no SET row in redis-benchmark's output: {csv}"))?;
    let field = |i: usize| -> anyhow::Result<f64> {
        row.split(',')
            .nth(i)
            .map(|f| f.trim_matches('"'))
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("field {i} of {row:?}"))
    };
    Ok(RedisRun {
        rps: field(1)?,
        p50_ms: field(4)?,
        calls_per_request: before
            .zip(after)
            .map(|(b, a)| (a - b) / REDIS_REQUESTS as f64),
    })
}

/// Starts the agent probing `pid`'s allocator, and waits until it says the probes are on.
fn start_agent(agent: &Path, pid: u32, dir: &Path) -> anyhow::Result<Child> {
    let args = [
        "--network-spans=false".to_string(),
        "--page-faults=false".into(),
        // The counters are read from the kernel at each drain: every second here.
        "--profile-interval".into(),
        "1s".into(),
        format!("--alloc-pid={pid}"),
    ];
    start_agent_until(agent, &args, METRICS_PORT, dir, "program=\"alloc\"")
}

/// The agent's `loupe_profiler_alloc_calls_total`, once a drain has updated it.
fn alloc_calls() -> anyhow::Result<f64> {
    thread::sleep(Duration::from_millis(1500));
    let text = http_get(METRICS_PORT, "/metrics")?;
    text.lines()
        .find_map(|l| l.strip_prefix("loupe_profiler_alloc_calls_total "))
        .and_then(|v| v.trim().parse().ok())
        .context("no loupe_profiler_alloc_calls_total in the agent's metrics")
}

fn report(pairs: &[f64], redis: &[RedisRun]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "## Allocation profiles: cost to the probed process\n");
    let _ = writeln!(
        s,
        "Default sampling (512 KiB). Every allocator call traps; the figures are per call.\n"
    );
    let _ = writeln!(
        s,
        "| Allocator | Measure | Probes off | Probes on | Added |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|");
    let _ = writeln!(
        s,
        "| glibc (malloc, free emulated) | ns per malloc+free pair | {:.1} | {:.1} | {:.0} ns per pair |",
        pairs[0],
        pairs[1],
        pairs[1] - pairs[0]
    );
    let (off, on) = (&redis[0], &redis[1]);
    let per_call = on.calls_per_request.map(|calls| {
        let added_us = 1e6 / on.rps - 1e6 / off.rps;
        (calls, added_us / calls.max(1e-9))
    });
    let _ = writeln!(
        s,
        "| jemalloc (Redis; free single-stepped) | SET requests/s, p50 | {:.0}, {:.3} ms | {:.0}, {:.3} ms | {} |",
        off.rps,
        off.p50_ms,
        on.rps,
        on.p50_ms,
        per_call.map_or("—".to_string(), |(calls, us)| format!(
            "{calls:.1} allocations per request, {us:.2} µs per allocation (its free included)"
        ))
    );
    s
}
