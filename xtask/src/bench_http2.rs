//! `cargo xtask bench --only http2`: what HTTP/2 and gRPC spans cost the traffic they observe.
//! h2load (nghttp2) drives two servers on loopback, agent off then on, in one run:
//! - h2c: nghttpd serving a small file, 4 connections of 16 concurrent streams;
//! - gRPC unary: the tests' grpcio server (tests/workloads/grpc_pair.py, gRPC's C core), h2load
//!   posting one length-prefixed message to `/shop.Inventory/Reserve` with gRPC's headers,
//!   2 connections of 8 concurrent streams.
//!
//! Throughput comes from h2load; p99 from its per-request log (`--log-file`). CPU per request:
//! the server's (user + system, `/proc/PID/stat`) in each run, and with the agent on, the
//! agent's userspace CPU plus its eBPF programs' run time (`kernel.bpf_stats_enabled`), so the
//! agent's cost is a ratio of the server's own (issue 14's measure). The agent's metrics say how
//! many spans it made and whether socket events were dropped, so that the figures are for real
//! span making.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use anyhow::{Context, bail};

use crate::bench::bpf_run_time;
use crate::bench_net::process_cpu_s;
use crate::util::{KillOnDrop, http_get, root, start_agent_until, step, terminate, wait_for_port};

const H2C_PORT: u16 = 16_561;
const GRPC_PORT: u16 = 16_562;
const METRICS_PORT: u16 = 19_561;
const H2C_REQUESTS: u32 = 200_000;
const GRPC_REQUESTS: u32 = 20_000;

/// One h2load run's figures.
struct Run {
    rps: f64,
    p99_us: f64,
    failed: u64,
    /// The server's CPU per request, µs.
    server_us: f64,
    /// With the agent: spans made (server and client) and socket events dropped.
    agent: Option<(f64, f64)>,
    /// With the agent: its CPU per request, µs, userspace and eBPF.
    agent_us: Option<(f64, f64)>,
}

/// The http2 part; returns its markdown section.
pub fn http2(agent: &Path) -> anyhow::Result<String> {
    let dir = root().join("target/bench/http2");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("www"))?;
    std::fs::write(dir.join("www/a"), vec![b'a'; 512])?;
    // One gRPC message: not compressed, 16 bytes.
    let mut message = vec![0u8];
    message.extend_from_slice(&16u32.to_be_bytes());
    message.extend_from_slice(b"item-42-reserved");
    std::fs::write(dir.join("message.bin"), &message)?;

    let nghttpd = Command::new("nghttpd")
        .arg("-d")
        .arg(dir.join("www"))
        .args(["--no-tls", &H2C_PORT.to_string()])
        .stdout(Stdio::null())
        .spawn()
        .context("cannot start nghttpd (Debian's nghttp2-server; run `cargo xtask setup`)")?;
    let nghttpd_pid = nghttpd.id();
    let _nghttpd = KillOnDrop(nghttpd);
    let grpc = Command::new(crate::python::python())
        .arg(root().join("tests/workloads/grpc_pair.py"))
        .args(["server", &GRPC_PORT.to_string()])
        .env("OTEL_SERVICE_NAME", "bench-grpc")
        .spawn()
        .context("cannot start the gRPC server")?;
    let grpc_pid = grpc.id();
    let _grpc = KillOnDrop(grpc);
    wait_for_port(H2C_PORT)?;
    wait_for_port(GRPC_PORT)?;

    let h2c_url = format!("http://127.0.0.1:{H2C_PORT}/a");
    let grpc_url = format!("http://127.0.0.1:{GRPC_PORT}/shop.Inventory/Reserve");
    let h2c_args: Vec<String> = [
        "-n",
        &H2C_REQUESTS.to_string(),
        "-c",
        "4",
        "-m",
        "16",
        "-t",
        "1",
    ]
    .map(String::from)
    .to_vec();
    let mut grpc_args: Vec<String> = [
        "-n",
        &GRPC_REQUESTS.to_string(),
        "-c",
        "2",
        "-m",
        "8",
        "-t",
        "1",
    ]
    .map(String::from)
    .to_vec();
    grpc_args.push("-d".into());
    grpc_args.push(dir.join("message.bin").display().to_string());
    for h in ["content-type: application/grpc", "te: trailers"] {
        grpc_args.push("-H".into());
        grpc_args.push(h.into());
    }
    let mut rows = Vec::new();
    for (name, url, args, server, requests) in [
        (
            "h2c GET (nghttpd)",
            &h2c_url,
            &h2c_args,
            nghttpd_pid,
            H2C_REQUESTS,
        ),
        (
            "gRPC unary (grpcio)",
            &grpc_url,
            &grpc_args,
            grpc_pid,
            GRPC_REQUESTS,
        ),
    ] {
        // Warm-up: the servers' first connections and the kernel's caches.
        h2load(&dir, url, &["-n", "2000", "-c", "1"].map(String::from))?;
        let per_request = |seconds: f64| seconds * 1e6 / f64::from(requests);
        let off = step(&format!("{name}, no agent"), || {
            let before = process_cpu_s(server);
            let mut run = h2load(&dir, url, args);
            if let Ok(r) = &mut run {
                r.server_us = per_request(process_cpu_s(server) - before);
            }
            run
        })?;
        let on = step(&format!("{name}, agent on"), || {
            let agent = start_agent(agent, &dir.join("out"))?;
            let (cpu0, (bpf0, _)) = (process_cpu_s(agent.id()), bpf_run_time(agent.id()));
            let before = process_cpu_s(server);
            let mut run = h2load(&dir, url, args);
            let server_s = process_cpu_s(server) - before;
            let (cpu1, (bpf1, _)) = (process_cpu_s(agent.id()), bpf_run_time(agent.id()));
            let metrics = http_get(METRICS_PORT, "/metrics").unwrap_or_default();
            terminate(agent);
            if let Ok(r) = &mut run {
                r.server_us = per_request(server_s);
                r.agent_us = Some((
                    per_request(cpu1 - cpu0),
                    per_request(bpf1.saturating_sub(bpf0) as f64 / 1e9),
                ));
                let spans = sum(&metrics, "loupe_spans_created_total{kind=\"rpc_")
                    + sum(&metrics, "loupe_spans_created_total{kind=\"http_");
                let dropped = sum(&metrics, "loupe_socket_events_dropped_total");
                r.agent = Some((spans, dropped));
            }
            run
        })?;
        rows.push((name, off, on));
    }
    Ok(report(&rows))
}

/// The agent with its defaults (network spans on), once its socket programs are attached.
fn start_agent(agent: &Path, dir: &Path) -> anyhow::Result<Child> {
    let args = ["--page-faults=false".to_string()];
    start_agent_until(agent, &args, METRICS_PORT, dir, "program=\"sockets\"")
}

/// Runs h2load against `url`; throughput from its summary, p99 from its request log.
fn h2load(dir: &Path, url: &str, args: &[String]) -> anyhow::Result<Run> {
    let log: PathBuf = dir.join("h2load.log");
    let _ = std::fs::remove_file(&log);
    let out = Command::new("h2load")
        .args(args)
        .arg("--log-file")
        .arg(&log)
        .arg(url)
        .output()
        .context("cannot run h2load (Debian's nghttp2-client; run `cargo xtask setup`)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("h2load failed: {text}");
    }
    let rps = text
        .lines()
        .find_map(|l| {
            let rest = l.strip_prefix("finished in ")?;
            rest.split(", ")
                .nth(1)?
                .strip_suffix(" req/s")?
                .parse()
                .ok()
        })
        .with_context(|| format!("no throughput in h2load's output: {text}"))?;
    let failed = text
        .lines()
        .find_map(|l| {
            let rest = l.strip_prefix("requests: ")?;
            rest.split(", ")
                .find_map(|f| f.strip_suffix(" failed")?.parse().ok())
        })
        .unwrap_or(0);
    let mut durations: Vec<u64> = std::fs::read_to_string(&log)?
        .lines()
        .filter_map(|l| l.split('\t').nth(2)?.trim().parse().ok())
        .collect();
    durations.sort_unstable();
    let p99_us = durations
        .get(durations.len().saturating_mul(99) / 100)
        .copied()
        .unwrap_or(0) as f64;
    Ok(Run {
        rps,
        p99_us,
        failed,
        server_us: 0.0,
        agent: None,
        agent_us: None,
    })
}

/// The sum of the series of `/metrics` lines starting with `prefix`.
fn sum(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn report(rows: &[(&str, Run, Run)]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "## HTTP/2 and gRPC spans: cost to the traffic\n");
    let _ = writeln!(
        s,
        "h2load on loopback, agent off then on (defaults: network spans on). h2c: nghttpd, \
         {H2C_REQUESTS} GETs over 4 connections × 16 streams. gRPC: grpcio's server, \
         {GRPC_REQUESTS} unary calls over 2 connections × 8 streams. p99 from h2load's \
         per-request log.\n"
    );
    let _ = writeln!(
        s,
        "| Traffic | req/s off | req/s on | ratio | p99 off | p99 on | ratio | spans made | socket events dropped | failed |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|");
    for (name, off, on) in rows.iter() {
        let (spans, dropped) = on.agent.unwrap_or((0.0, 0.0));
        let _ = writeln!(
            s,
            "| {name} | {:.0} | {:.0} | {:.2} | {:.0} µs | {:.0} µs | {:.2} | {spans:.0} | {dropped:.0} | {} |",
            off.rps,
            on.rps,
            on.rps / off.rps.max(1.0),
            off.p99_us,
            on.p99_us,
            on.p99_us / off.p99_us.max(1.0),
            off.failed + on.failed
        );
    }
    let _ = writeln!(
        s,
        "\nCPU per request: the server's, agent off and on; the agent's (userspace + eBPF, \
         both ends of each request traced), and its ratio to the server's own CPU per request \
         without the agent.\n"
    );
    let _ = writeln!(
        s,
        "| Traffic | server off | server on | agent userspace | agent eBPF | agent ÷ server |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    for (name, off, on) in rows {
        let (user, ebpf) = on.agent_us.unwrap_or((0.0, 0.0));
        let _ = writeln!(
            s,
            "| {name} | {:.1} µs | {:.1} µs | {user:.1} µs | {ebpf:.1} µs | {:.0}% |",
            off.server_us,
            on.server_us,
            (user + ebpf) / off.server_us.max(1e-9) * 100.0
        );
    }
    s
}
