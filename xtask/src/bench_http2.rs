//! `cargo xtask bench --only http2`: what HTTP/2 and gRPC spans cost the traffic they observe.
//! h2load (nghttp2) drives two servers on loopback, agent off then on, in one run:
//! - h2c: nghttpd serving a small file, 4 connections of 16 concurrent streams;
//! - gRPC unary: the tests' grpcio server (tests/workloads/grpc_pair.py, gRPC's C core), h2load
//!   posting one length-prefixed message to `/shop.Inventory/Reserve` with gRPC's headers,
//!   2 connections of 8 concurrent streams.
//!
//! Throughput comes from h2load; p99 from its per-request log (`--log-file`). With the agent on,
//! its own metrics say how many spans it made and whether socket events were dropped, so that
//! the figures are for real span making.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use anyhow::{Context, bail};

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
    /// With the agent: spans made (server and client) and socket events dropped.
    agent: Option<(f64, f64)>,
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
    let _nghttpd = KillOnDrop(nghttpd);
    let grpc = Command::new(crate::python::python())
        .arg(root().join("tests/workloads/grpc_pair.py"))
        .args(["server", &GRPC_PORT.to_string()])
        .env("OTEL_SERVICE_NAME", "bench-grpc")
        .spawn()
        .context("cannot start the gRPC server")?;
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
    for (name, url, args) in [
        ("h2c GET (nghttpd)", &h2c_url, &h2c_args),
        ("gRPC unary (grpcio)", &grpc_url, &grpc_args),
    ] {
        // Warm-up: the servers' first connections and the kernel's caches.
        h2load(&dir, url, &["-n", "2000", "-c", "1"].map(String::from))?;
        let off = step(&format!("{name}, no agent"), || h2load(&dir, url, args))?;
        let on = step(&format!("{name}, agent on"), || {
            let agent = start_agent(agent, &dir.join("out"))?;
            let mut run = h2load(&dir, url, args);
            let metrics = http_get(METRICS_PORT, "/metrics").unwrap_or_default();
            terminate(agent);
            if let Ok(r) = &mut run {
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
        agent: None,
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
    for (name, off, on) in rows {
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
    s
}
