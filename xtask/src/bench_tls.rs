//! `cargo xtask bench --only tls`: what reading TLS in clear (`--tls`) costs the processes that
//! use OpenSSL. An HTTPS server (tests/workloads/tls_server.py, Python's ssl module over
//! Debian's libssl3) and a Python client making `REQUESTS` requests on one kept-alive connection,
//! timed by the client: with no agent, with the agent and `--tls=false` (network spans on, the
//! TLS connection opaque), and with `--tls=true` (every SSL_read/SSL_write of both ends trapped
//! and its plaintext parsed into spans). The issue asks for the cost measured and reported.
//!
//! Then Go's crypto/tls under load: wrk (OpenSSL) over HTTPS against tests/workloads/go_tls's
//! server, with 4 keep-alive connections for `--seconds`, the same three runs. Per run:
//! throughput and p99, the server's and wrk's CPU per request (a uprobe's trap is charged to the
//! process that hits it), the agent's (userspace, and eBPF from the kernel's statistics), and per
//! TLS program the calls per request and eBPF time per call (program names from bpftool). What a
//! probe costs the application per call is the difference of its CPU per request between the
//! `--tls` runs divided by its calls per request.

use std::{
    fmt::Write as _,
    path::Path,
    process::{Child, Command, Stdio},
};

use anyhow::{Context, bail};

use crate::bench::bpf_run_time;
use crate::bench_net::{DONE_SCRIPT, process_cpu_s, run_wrk};
use crate::util::{KillOnDrop, root, start_agent_until, step, terminate, wait_for_port};

const REQUESTS: u32 = 5_000;
const SERVER_PORT: u16 = 16_543;
const METRICS_PORT: u16 = 19_543;
const GO_PORT: u16 = 16_544;
const GO_CONNECTIONS: u32 = 4;

/// The tls part; returns its markdown section.
pub fn tls(agent: &Path, secs: u64) -> anyhow::Result<String> {
    let mut section = openssl(agent)?;
    section.push('\n');
    section.push_str(&go(agent, secs)?);
    Ok(section)
}

/// Python's client and server on OpenSSL.
fn openssl(agent: &Path) -> anyhow::Result<String> {
    let dir = root().join("target/bench/tls");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    certificates(&dir)?;
    let python = crate::python::python();
    let server = Command::new(&python)
        .arg(root().join("tests/workloads/tls_server.py"))
        .arg(SERVER_PORT.to_string())
        .args(["cert.pem", "key.pem"])
        .current_dir(&dir)
        .stdout(Stdio::null())
        .spawn()
        .context("cannot start the TLS server")?;
    let _server = KillOnDrop(server);
    wait_for_port(SERVER_PORT)?;
    let mut runs = Vec::new();
    for (name, args) in [
        ("no agent", None),
        ("agent, --tls=false", Some("--tls=false")),
        ("agent, --tls=true", Some("--tls=true")),
    ] {
        let us = step(&format!("{REQUESTS} HTTPS requests, {name}"), || {
            let agent = args
                .map(|flag| start_agent(agent, flag, &dir.join("out")))
                .transpose()?;
            let us = client(&python, &dir);
            if let Some(agent) = agent {
                terminate(agent);
            }
            us
        })?;
        runs.push((name, us));
    }
    Ok(report(&runs))
}

/// A self-signed certificate for 127.0.0.1.
fn certificates(dir: &Path) -> anyhow::Result<()> {
    let status = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "key.pem",
        ])
        .args(["-out", "cert.pem", "-days", "1", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .current_dir(dir)
        .stderr(Stdio::null())
        .status()
        .context("cannot run openssl (Debian's openssl package)")?;
    if !status.success() {
        bail!("openssl could not make the benchmark's certificate");
    }
    Ok(())
}

/// Microseconds per request of the Python client on one kept-alive connection.
fn client(python: &Path, dir: &Path) -> anyhow::Result<f64> {
    let script = format!(
        "import http.client, ssl, time\n\
         c = http.client.HTTPSConnection('127.0.0.1', {SERVER_PORT}, \
         context=ssl.create_default_context(cafile='cert.pem'))\n\
         c.request('GET', '/warm'); c.getresponse().read()\n\
         t = time.perf_counter()\n\
         for i in range({REQUESTS}):\n    \
         c.request('GET', '/bench/%d' % i); r = c.getresponse(); r.read()\n\
         print((time.perf_counter() - t) / {REQUESTS} * 1e6)\n"
    );
    let out = crate::util::output(Command::new(python).args(["-c", &script]).current_dir(dir))?;
    out.trim()
        .parse()
        .with_context(|| format!("unexpected client output {out:?}"))
}

/// The agent with network spans and `flag`, once its socket programs are attached.
fn start_agent(agent: &Path, flag: &str, dir: &Path) -> anyhow::Result<Child> {
    let args = ["--page-faults=false".to_string(), flag.to_string()];
    start_agent_until(agent, &args, METRICS_PORT, dir, "program=\"sockets\"")
}

fn report(runs: &[(&str, f64)]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "## TLS in clear: cost to OpenSSL users\n");
    let _ = writeln!(
        s,
        "Python HTTPS client and server (OpenSSL 3), {REQUESTS} requests on one kept-alive \
         connection, timed by the client.\n"
    );
    let _ = writeln!(s, "| Run | µs per request | Added by the TLS probes |");
    let _ = writeln!(s, "|---|---|---|");
    let without = runs.get(1).map_or(0.0, |r| r.1);
    for (i, (name, us)) in runs.iter().enumerate() {
        let added = if i == 2 {
            format!("{:+.0} µs", us - without)
        } else {
            "—".to_string()
        };
        let _ = writeln!(s, "| {name} | {us:.0} | {added} |");
    }
    s
}

/// One run of wrk against the Go HTTPS server.
struct GoRun {
    rps: f64,
    p99_us: f64,
    errors: u64,
    /// CPU per request, µs: the Go server's, and wrk's.
    server_us: f64,
    wrk_us: f64,
    /// With the agent: its CPU per request, µs, userspace and eBPF.
    agent_us: Option<(f64, f64)>,
    /// With the agent: the TLS programs that ran, by name: (calls per request, eBPF ns per call).
    programs: Vec<(String, f64, f64)>,
}

/// wrk over HTTPS against the Go server, no agent, `--tls=false` and `--tls=true`.
fn go(agent: &Path, secs: u64) -> anyhow::Result<String> {
    crate::test::build_workloads()?;
    let dir = root().join("target/bench/tls-go");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    certificates(&dir)?;
    let script = dir.join("done.lua");
    std::fs::write(&script, DONE_SCRIPT)?;
    let server = Command::new(root().join("target/workloads/go_tls"))
        .args([
            "serve",
            &format!("127.0.0.1:{GO_PORT}"),
            "cert.pem",
            "key.pem",
        ])
        .current_dir(&dir)
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start go_tls")?;
    let pid = server.id();
    let _server = KillOnDrop(server);
    wait_for_port(GO_PORT)?;
    let url = format!("https://127.0.0.1:{GO_PORT}/hello/bench");
    // Warm-up: handshakes, the runtime's caches.
    run_wrk(&url, &script, GO_CONNECTIONS, 2)?;
    let mut rows = Vec::new();
    for (name, flag) in [
        ("no agent", None),
        ("agent, --tls=false", Some("--tls=false")),
        ("agent, --tls=true", Some("--tls=true")),
    ] {
        let run = step(
            &format!("wrk over HTTPS to Go's crypto/tls, {name}"),
            || {
                let out = dir.join("out");
                let agent = match flag {
                    None => None,
                    Some(f) => {
                        // With the probes, ready once the server's executable carries them.
                        let ready = if f.ends_with("true") {
                            "program=\"go_tls\""
                        } else {
                            "program=\"sockets\""
                        };
                        let args = ["--page-faults=false".to_string(), f.to_string()];
                        Some(start_agent_until(agent, &args, METRICS_PORT, &out, ready)?)
                    }
                };
                let agent_before = agent.as_ref().map(|a| {
                    (
                        process_cpu_s(a.id()),
                        bpf_run_time(a.id()).0,
                        programs(a.id()),
                    )
                });
                let before = process_cpu_s(pid);
                let wrk = run_wrk(&url, &script, GO_CONNECTIONS, secs)?;
                let server_s = process_cpu_s(pid) - before;
                let requests = wrk.requests.max(1) as f64;
                let per_request = |s: f64| s * 1e6 / requests;
                let (agent_us, programs) = match (&agent, agent_before) {
                    (Some(a), Some((cpu0, bpf0, progs0))) => {
                        let cpu = process_cpu_s(a.id()) - cpu0;
                        let bpf = bpf_run_time(a.id()).0.saturating_sub(bpf0) as f64 / 1e9;
                        let progs = programs(a.id())
                            .into_iter()
                            .filter(|(name, _)| name.contains("tls_"))
                            .filter_map(|(name, (ns, runs))| {
                                let (ns0, runs0) = progs0.get(&name).copied().unwrap_or((0, 0));
                                let runs = runs.saturating_sub(runs0);
                                (runs > 0).then(|| {
                                    let ns = ns.saturating_sub(ns0) as f64;
                                    (name, runs as f64 / requests, ns / runs as f64)
                                })
                            })
                            .collect::<Vec<_>>();
                        (Some((per_request(cpu), per_request(bpf))), progs)
                    }
                    _ => (None, Vec::new()),
                };
                if let Some(a) = agent {
                    terminate(a);
                }
                let mut programs = programs;
                programs.sort_by(|a, b| a.0.cmp(&b.0));
                Ok(GoRun {
                    rps: wrk.rps(),
                    p99_us: wrk.p99_us,
                    errors: wrk.errors,
                    server_us: per_request(server_s),
                    wrk_us: per_request(wrk.cpu_s),
                    agent_us,
                    programs,
                })
            },
        )?;
        rows.push((name, run));
    }
    Ok(go_report(&rows, secs))
}

/// The process's BPF programs by name: (run time in ns, runs), from its descriptors' fdinfo and
/// bpftool for the names (the kernel's statistics must be on).
fn programs(pid: u32) -> std::collections::HashMap<String, (u64, u64)> {
    let mut out = std::collections::HashMap::new();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return out;
    };
    for fd in fds.flatten() {
        let Ok(info) = std::fs::read_to_string(fd.path()) else {
            continue;
        };
        let field = |key: &str| -> Option<u64> {
            info.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().parse().ok())
        };
        let (Some(id), Some(ns), Some(runs)) =
            (field("prog_id:"), field("run_time_ns:"), field("run_cnt:"))
        else {
            continue;
        };
        let Ok(json) = crate::util::output(Command::new("bpftool").args([
            "prog",
            "show",
            "id",
            &id.to_string(),
            "--json",
        ])) else {
            continue;
        };
        let name = serde_json::from_str::<serde_json::Value>(&json)
            .ok()
            .and_then(|v| v["name"].as_str().map(str::to_string));
        if let Some(name) = name {
            let e = out.entry(name).or_insert((0, 0));
            e.0 += ns;
            e.1 += runs;
        }
    }
    out
}

fn go_report(rows: &[(&str, GoRun)], secs: u64) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "### Go's crypto/tls under load\n");
    let _ = writeln!(
        s,
        "wrk (OpenSSL) over HTTPS, {GO_CONNECTIONS} keep-alive connections, {secs} s, against \
         tests/workloads/go_tls's server (Go's crypto/tls, HTTP/1.1). CPU per request: the \
         server's and wrk's (each with its probes' traps), the agent's (userspace + eBPF).\n"
    );
    let _ = writeln!(
        s,
        "| Run | req/s | p99 | Go server CPU | wrk CPU | agent userspace | agent eBPF | errors |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
    for (name, r) in rows {
        let (user, ebpf) = r.agent_us.map_or(("—".into(), "—".into()), |(u, e)| {
            (format!("{u:.1} µs"), format!("{e:.1} µs"))
        });
        let _ = writeln!(
            s,
            "| {name} | {:.0} | {:.0} µs | {:.1} µs | {:.1} µs | {user} | {ebpf} | {} |",
            r.rps, r.p99_us, r.server_us, r.wrk_us, r.errors
        );
    }
    if let [_, (_, off), (_, on)] = rows {
        let go_calls: f64 = on
            .programs
            .iter()
            .filter(|p| p.0 == "go_tls_read" || p.0 == "go_tls_write")
            .map(|p| p.1)
            .sum();
        let ssl_calls: f64 = on
            .programs
            .iter()
            .filter(|p| p.0.starts_with("tls_") && p.0 != "tls_return" && p.0 != "tls_free")
            .map(|p| p.1)
            .sum();
        let _ = writeln!(s, "\nTLS programs with `--tls=true`:\n");
        let _ = writeln!(s, "| Program | calls per request | eBPF per call |");
        let _ = writeln!(s, "|---|---|---|");
        for (name, calls, ns) in &on.programs {
            let _ = writeln!(s, "| {name} | {calls:.2} | {ns:.0} ns |");
        }
        let per_call = |added_us: f64, calls: f64| {
            if calls > 0.0 {
                format!("{:.2} µs", added_us / calls)
            } else {
                "—".to_string()
            }
        };
        let _ = writeln!(
            s,
            "\nAdded to the application per probed call (its CPU per request, `--tls=true` minus \
             `--tls=false`, over its calls per request; a call traps at its entry and its \
             return, but Go's `Write` only at its entry): Go server {} ({go_calls:.2} calls \
             per request), wrk {} ({ssl_calls:.2}).",
            per_call(on.server_us - off.server_us, go_calls),
            per_call(on.wrk_us - off.wrk_us, ssl_calls),
        );
    }
    s
}
