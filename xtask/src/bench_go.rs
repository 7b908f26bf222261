//! `cargo xtask bench --only go`: what following goroutines costs a Go service, and what it gets
//! right. wrk drives tests/workloads/go_fanout on loopback (each `GET /front/ID` makes a new
//! goroutine that calls `/back/ID` with net/http's default client, on the same process) with 8
//! keep-alive connections, three times: no agent, the agent tracking by threads only
//! (`--go-goroutines=false`), and the agent following goroutines (the default).
//!
//! Per run: throughput and p99 (wrk), the service's CPU per request (`/proc/PID/stat`: the
//! uprobes' traps are charged to the process that hits them, so their cost shows there), the
//! agent's (userspace, and its eBPF programs' run time from the kernel's BPF statistics), and
//! from the spans written: the share of the service's client spans whose parent is the server
//! span of the same ID (the right request), of another request, or none.

use std::{
    collections::HashMap,
    fmt::Write as _,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::Context;

use crate::bench::bpf_run_time;
use crate::bench_net::{DONE_SCRIPT, process_cpu_s, run_wrk};
use crate::test::build_workloads;
use crate::util::{KillOnDrop, root, start_agent_until, step, terminate, wait_for_port};

const PORT: u16 = 16_571;
const METRICS_PORT: u16 = 19_571;
const CONNECTIONS: u32 = 8;

/// One run's figures.
struct Run {
    rps: f64,
    p99_us: f64,
    errors: u64,
    /// The service's CPU per request, µs.
    service_us: f64,
    /// With the agent: its CPU per request, µs, userspace and eBPF.
    agent_us: Option<(f64, f64)>,
    /// With the agent: client spans under the right request, another one, none.
    parents: Option<Parents>,
}

#[derive(Default)]
struct Parents {
    right: usize,
    other: usize,
    none: usize,
}

impl Parents {
    fn total(&self) -> usize {
        self.right + self.other + self.none
    }
    fn share(&self, n: usize) -> f64 {
        n as f64 * 100.0 / self.total().max(1) as f64
    }
}

/// The go part; returns its markdown section.
pub fn go(agent: &Path, secs: u64) -> anyhow::Result<String> {
    build_workloads()?;
    let dir = root().join("target/bench/go");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    // Every request names a new id, which its downstream call carries.
    let script = dir.join("ids.lua");
    std::fs::write(
        &script,
        format!(
            "counter = 0\nrequest = function()\n  counter = counter + 1\n  \
             return wrk.format(\"GET\", \"/front/\" .. counter)\nend\n{DONE_SCRIPT}"
        ),
    )?;
    let addr = format!("127.0.0.1:{PORT}");
    let service = Command::new(root().join("target/workloads/go_fanout"))
        .args([&addr, &addr])
        .stdout(Stdio::null())
        .spawn()
        .context("cannot start go_fanout")?;
    let pid = service.id();
    let _service = KillOnDrop(service);
    wait_for_port(PORT)?;
    let url = format!("http://{addr}");
    // Warm-up: connections, the runtime's caches.
    run_wrk(&url, &script, CONNECTIONS, 2)?;

    let mut rows = Vec::new();
    for (name, args) in [
        ("no agent", None),
        ("agent, threads only", Some("--go-goroutines=false")),
        ("agent, goroutines followed", Some("--go-goroutines=true")),
    ] {
        let run = step(&format!("go_fanout, {name}"), || {
            let out = dir.join("out");
            let agent = match args {
                None => None,
                Some(a) => {
                    // Ready once the socket programs are attached, and with goroutines once the
                    // service carries the runtime probes.
                    let ready = if a.ends_with("true") {
                        "program=\"go_runtime\""
                    } else {
                        "program=\"sockets\""
                    };
                    let args = ["--page-faults=false".to_string(), a.to_string()];
                    Some(start_agent_until(agent, &args, METRICS_PORT, &out, ready)?)
                }
            };
            let agent_before = agent
                .as_ref()
                .map(|a| (process_cpu_s(a.id()), bpf_run_time(a.id()).0));
            let before = process_cpu_s(pid);
            let wrk = run_wrk(&url, &script, CONNECTIONS, secs)?;
            let service_s = process_cpu_s(pid) - before;
            let per_request = |s: f64| s * 1e6 / wrk.requests.max(1) as f64;
            let agent_us = match (&agent, agent_before) {
                (Some(a), Some((cpu0, bpf0))) => {
                    let (cpu1, bpf1) = (process_cpu_s(a.id()), bpf_run_time(a.id()).0);
                    Some((
                        per_request(cpu1 - cpu0),
                        per_request(bpf1.saturating_sub(bpf0) as f64 / 1e9),
                    ))
                }
                _ => None,
            };
            let parents = match agent {
                Some(a) => {
                    terminate(a);
                    Some(parents(&out)?)
                }
                None => None,
            };
            Ok(Run {
                rps: wrk.rps(),
                p99_us: wrk.p99_us,
                errors: wrk.errors,
                service_us: per_request(service_s),
                agent_us,
                parents,
            })
        })?;
        rows.push((name, run));
    }
    Ok(report(&rows, secs))
}

/// A span as far as parenting goes.
struct Span {
    service: String,
    kind: i64,
    parent: String,
    /// The id at the end of its path (`url.path` on the server, `url.full` on the client).
    id: String,
    front: bool,
}

/// Classifies the service's `/back/ID` client spans by their parent.
fn parents(out: &Path) -> anyhow::Result<Parents> {
    let mut spans: HashMap<String, Span> = HashMap::new();
    for file in [out.join("traces.jsonl.1"), out.join("traces.jsonl")] {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let request: serde_json::Value = serde_json::from_str(line)
                .with_context(|| format!("{} is not OTLP/JSON lines", file.display()))?;
            read_spans(&request, &mut spans);
        }
    }
    let mut p = Parents::default();
    for s in spans.values() {
        if s.service != "go_fanout" || s.kind != 3 || s.front {
            continue;
        }
        match spans.get(&s.parent) {
            Some(parent) if parent.kind == 2 && parent.front && parent.id == s.id => p.right += 1,
            Some(_) => p.other += 1,
            None => p.none += 1,
        }
    }
    Ok(p)
}

fn read_spans(request: &serde_json::Value, into: &mut HashMap<String, Span>) {
    let attr = |attrs: &serde_json::Value, key: &str| -> Option<String> {
        attrs.as_array()?.iter().find_map(|kv| {
            (kv["key"] == key).then(|| kv["value"]["stringValue"].as_str().map(str::to_string))?
        })
    };
    for rs in request["resourceSpans"].as_array().into_iter().flatten() {
        let service = attr(&rs["resource"]["attributes"], "service.name").unwrap_or_default();
        for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
            for span in ss["spans"].as_array().into_iter().flatten() {
                let path = attr(&span["attributes"], "url.path")
                    .or_else(|| {
                        let full = attr(&span["attributes"], "url.full")?;
                        let rest = full.split_once("://")?.1.to_string();
                        Some(rest[rest.find('/')?..].to_string())
                    })
                    .unwrap_or_default();
                let id = span["spanId"].as_str().unwrap_or_default().to_string();
                into.insert(
                    id,
                    Span {
                        service: service.clone(),
                        kind: span["kind"].as_i64().unwrap_or(0),
                        parent: span["parentSpanId"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                        id: path.rsplit('/').next().unwrap_or_default().to_string(),
                        front: path.starts_with("/front/"),
                    },
                );
            }
        }
    }
}

fn report(rows: &[(&str, Run)], secs: u64) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "## Go goroutines: cost and parenting\n");
    let _ = writeln!(
        s,
        "wrk, {CONNECTIONS} keep-alive connections, {secs} s, on go_fanout (a handler calling \
         another service from a new goroutine with net/http's default client). CPU per request: \
         the service's (with the probes' traps) and the agent's (userspace + eBPF). Parents: \
         the service's client spans under the server span of their own request, of another, or \
         none.\n"
    );
    let _ = writeln!(
        s,
        "| Run | req/s | p99 | service CPU | agent userspace | agent eBPF | client spans | right request | another | none | errors |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|");
    for (name, r) in rows {
        let (user, ebpf) = r.agent_us.map_or(("—".into(), "—".into()), |(u, e)| {
            (format!("{u:.1} µs"), format!("{e:.1} µs"))
        });
        let (n, right, other, none) = r.parents.as_ref().map_or(
            ("—".into(), "—".into(), "—".into(), "—".into()),
            |p| {
                (
                    p.total().to_string(),
                    format!("{:.1}%", p.share(p.right)),
                    format!("{:.1}%", p.share(p.other)),
                    format!("{:.1}%", p.share(p.none)),
                )
            },
        );
        let _ = writeln!(
            s,
            "| {name} | {:.0} | {:.0} µs | {:.1} µs | {user} | {ebpf} | {n} | {right} | {other} | {none} | {} |",
            r.rps, r.p99_us, r.service_us, r.errors
        );
    }
    s
}
