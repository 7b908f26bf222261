//! `cargo xtask bench --only network`: what network spans cost a real HTTP service. `wrk` drives
//! a small, fast HTTP/1.1 keep-alive server (xtask/workloads/http_server.rs, std only, one thread
//! per connection) on loopback with the agent off and on, in the same run, in two scenarios:
//!
//! - **saturation**: `wrk -t1 -c16`, closed loop, as fast as the host goes (wrk takes about one
//!   core, the server the other): the throughput and p99 ratios on/off.
//! - **moderate rate**: wrk has no rate option (wrk2's `-R` is not packaged), so each connection
//!   waits a fixed `delay()` (Lua) after each response: a closed loop with think time whose rate is
//!   about `connections × 1000 / (delay ms + latency)`. Latency is measured from each request's
//!   write (the delay is not in it), so the p99 ratio shows the agent's effect without queueing.
//!
//! Each scenario runs off, on, on, off (drift of the shared host cancels in the means); each "on"
//! run starts a fresh agent with its defaults (network spans and the 19 Hz profiler on, local
//! sink), waits until it is ready, and measures over the wrk run plus 2 s for the spans to flush:
//!
//! - the agent's CPU time from `/proc/PID/stat` (user + system, every thread) over that window;
//! - its eBPF programs' run time over the window, from the kernel's BPF statistics in the fdinfo
//!   of its program descriptors (the programs run in the context of the traced server and wrk, so
//!   this time is also inside their CPU figures);
//! - its peak RSS, from `wait4` after SIGTERM (whole life, start-up included);
//! - its own counters from `/metrics`: socket events, spans, and every drop, so a cheap-looking
//!   agent that dropped its work shows as such.
//!
//! Every process on the host is traced, wrk included: each request is two spans (wrk's client span
//! and the server's span, linked as same-host peers) from four socket events.
//!
//! A third scenario measures the floor of the syscall-tracepoint method, without the agent: the
//! saturation load with bpftrace running empty programs on the same syscall tracepoints the
//! agent attaches (off, floor, floor, off). Whatever the agent does, it cannot cost less than that
//! on a host where it has to use tracepoints (no fentry).

use std::{
    fmt::Write as _,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use crate::{
    bench::{bpf_run_time, wait_rusage},
    util::{exec, root, step},
};

mod report;
mod self_profile;
use report::report;

/// Connections of the saturation scenario (one wrk thread).
const SATURATION_CONNECTIONS: u32 = 16;
/// Think time of the moderate-rate scenario, per connection, in milliseconds.
const DELAY_MS: u32 = 2;
/// What a request/response round trip adds to the think time, for sizing the connection count.
const ROUND_TRIP_MS: f64 = 0.35;
/// After wrk stops, how long the agent gets to turn the last events into spans (it flushes every
/// second).
const SETTLE: Duration = Duration::from_secs(2);
/// How long the agent's idle cost is measured before each on run.
const IDLE: Duration = Duration::from_secs(3);
/// The path requested: the server answers 200 with a small JSON document.
const PATH: &str = "/api/users/42";

/// Targets of issue 3.
const TARGET_THROUGHPUT_LOSS_PCT: f64 = 2.0;
const TARGET_P99_INCREASE_PCT: f64 = 5.0;
const TARGET_PCT_CORE_PER_KRPS: f64 = 2.0;
const TARGET_RSS_MB: f64 = 64.0;
/// Target of issue 14: the agent's CPU (userspace + eBPF) per request ≤ this share of the
/// server's own CPU per request.
const TARGET_AGENT_SHARE_OF_SERVER: f64 = 0.25;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Scenario {
    Saturation,
    Moderate {
        rate: u32,
    },
    /// The saturation load with empty programs on the agent's syscall tracepoints (bpftrace).
    TracepointFloor,
}

/// The syscalls whose tracepoints the agent attaches when it cannot use fentry/fexit (the list in
/// agent/src/net/capture.rs; close has no exit program).
const TRACED_SYSCALLS: &[&str] = &[
    "accept", "accept4", "connect", "close", "read", "write", "recvfrom", "sendto", "readv",
    "writev", "recvmsg", "sendmsg",
];

impl Scenario {
    fn name(self) -> String {
        match self {
            Scenario::Saturation => "saturation".into(),
            Scenario::TracepointFloor => "saturation, tracepoint floor".into(),
            Scenario::Moderate { rate } => format!("moderate (~{rate} req/s)"),
        }
    }

    fn connections(self) -> u32 {
        match self {
            Scenario::Saturation | Scenario::TracepointFloor => SATURATION_CONNECTIONS,
            Scenario::Moderate { rate } => {
                ((rate as f64 * (DELAY_MS as f64 + ROUND_TRIP_MS) / 1000.0).round() as u32).max(1)
            }
        }
    }
}

/// What wrk reported (its `done()` hook prints one machine-readable line).
#[derive(Debug, Clone, Default)]
pub(crate) struct WrkResult {
    pub(crate) requests: u64,
    duration_s: f64,
    pub(crate) errors: u64,
    p50_us: f64,
    pub(crate) p99_us: f64,
    p999_us: f64,
    pub(crate) cpu_s: f64,
}

impl WrkResult {
    pub(crate) fn rps(&self) -> f64 {
        self.requests as f64 / self.duration_s.max(1e-9)
    }
}

/// The agent's side of an on run.
#[derive(Debug, Clone, Default)]
struct AgentCost {
    /// Userspace (and its own syscalls) over the window.
    cpu_s: f64,
    /// eBPF programs' run time over the window.
    bpf_s: f64,
    bpf_runs: u64,
    /// Agent CPU per second while idle (before wrk), eBPF included.
    idle_cpu_per_s: f64,
    /// Whole life, from wait4.
    lifetime_cpu_s: f64,
    max_rss_mb: f64,
    socket_events: f64,
    spans: f64,
    /// Socket events lost before the span builder (ring full, args map full, queue full).
    dropped_events: f64,
    /// Of which dropped in userspace (already counted in `socket_events`).
    dropped_queue_full: f64,
    /// Spans lost in the builder or the exporter.
    dropped_spans: f64,
}

impl AgentCost {
    /// Share of the kernel's socket events that never reached the span builder.
    fn dropped_pct(&self) -> f64 {
        let produced = self.socket_events + self.dropped_events - self.dropped_queue_full;
        100.0 * self.dropped_events / produced.max(1.0)
    }
}

/// What runs beside the server and wrk.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Off,
    Agent,
    /// The agent with in-band trace context (the TCP option) off: its own cost, by difference.
    AgentNoTcpContext,
    /// bpftrace with empty programs on the agent's syscall tracepoints.
    Floor,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::Agent => "agent on",
            Mode::AgentNoTcpContext => "agent on, TCP option off",
            Mode::Floor => "empty programs",
        }
    }
}

#[derive(Debug, Clone)]
struct Run {
    scenario: Scenario,
    mode: Mode,
    agent: Option<AgentCost>,
    wrk: WrkResult,
    server_cpu_s: f64,
    /// Cores' worth of CPU used by everything else on the host during the window.
    others_cores: f64,
    /// Other loupe-agent processes seen during the run (their programs tax every syscall too).
    other_agents: Vec<u32>,
}

impl Run {
    /// Agent CPU (userspace + eBPF) per 1,000 requests, in milliseconds.
    fn agent_ms_per_krq(&self) -> Option<f64> {
        self.agent
            .as_ref()
            .map(|a| (a.cpu_s + a.bpf_s) * 1e6 / self.wrk.requests.max(1) as f64)
    }
}

/// Runs the network benchmark and returns its markdown section.
pub fn network(agent: &Path, secs: u64, rate: u32) -> anyhow::Result<String> {
    let server_bin = build_server()?;
    let out = root().join("target/bench/network");
    std::fs::create_dir_all(&out)?;
    let scripts = write_scripts(&out)?;
    let mut server = Server::start(&server_bin)?;
    let result = (|| {
        let url = format!("http://{}{PATH}", server.addr);
        step("warming up the HTTP server (3 s, agent off)", || {
            run_wrk(&url, &scripts.saturation, SATURATION_CONNECTIONS, 3).map(drop)
        })?;
        let mut runs = Vec::new();
        for scenario in [
            Scenario::Saturation,
            Scenario::Moderate { rate },
            Scenario::TracepointFloor,
        ] {
            let modes: &[Mode] = match scenario {
                Scenario::Saturation => &[
                    Mode::Off,
                    Mode::Agent,
                    Mode::AgentNoTcpContext,
                    Mode::Agent,
                    Mode::Off,
                ],
                Scenario::Moderate { .. } => &[Mode::Off, Mode::Agent, Mode::Agent, Mode::Off],
                Scenario::TracepointFloor => &[Mode::Off, Mode::Floor, Mode::Floor, Mode::Off],
            };
            for &mode in modes {
                let title = format!(
                    "{}, {}, {secs}s: wrk -t1 -c{}",
                    scenario.name(),
                    mode.label(),
                    scenario.connections()
                );
                let run = step(&title, || {
                    run_scenario(scenario, mode, agent, secs, &url, &scripts, &server, &out)
                })?;
                eprintln!(
                    "    {:.0} req/s, p99 {:.0} µs{}",
                    run.wrk.rps(),
                    run.wrk.p99_us,
                    run.agent_ms_per_krq()
                        .map(|ms| format!(", agent {ms:.1} ms CPU per 1,000 requests"))
                        .unwrap_or_default()
                );
                runs.push(run);
            }
        }
        // The unstripped build names its own frames; a stripped one shows offsets.
        let unstripped = crate::build::agent_binary();
        let profiled = if agent == crate::bench::shipped_agent_path() && unstripped.is_file() {
            unstripped
        } else {
            agent.to_path_buf()
        };
        let title = format!("saturation, the agent profiling itself, {secs}s");
        let profile = step(&title, || {
            Ok(self_profile::run(&profiled, secs, &url, &scripts, &out))
        })?;
        Ok::<_, anyhow::Error>((runs, profile))
    })();
    server.stop();
    let (runs, profile) = result?;
    let mut r = report(&runs, secs, agent);
    r.push_str(&self_profile::render(&profile, secs));
    Ok(r)
}

/// Builds the HTTP server with rustc (like the profiler's workloads), when its source changed. The
/// end-to-end HTTP span test uses it too (tests/tests/http_spans.rs).
pub(crate) fn build_server() -> anyhow::Result<PathBuf> {
    let src = root().join("xtask/workloads/http_server.rs");
    let bin = root().join("target/workloads/http_server");
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if modified(&bin).is_some() && modified(&bin) >= modified(&src) {
        return Ok(bin);
    }
    step(
        "building the benchmark's HTTP server (target/workloads)",
        || {
            std::fs::create_dir_all(root().join("target/workloads"))?;
            exec(
                Command::new("rustc")
                    .args(["--edition", "2024", "-O", "-g"])
                    .args(["-C", "force-frame-pointers=yes", "-o"])
                    .arg(&bin)
                    .arg(&src),
            )
        },
    )?;
    Ok(bin)
}

struct Scripts {
    saturation: PathBuf,
    moderate: PathBuf,
}

/// wrk's `done()` hook printing the results as one `LOUPE ...` line (see [`run_wrk`]).
pub(crate) const DONE_SCRIPT: &str = r#"function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "LOUPE requests=%d duration_us=%d errors=%d p50_us=%d p99_us=%d p999_us=%d mean_us=%.1f\n",
    summary.requests, summary.duration,
    e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.mean))
end
"#;

/// wrk's Lua hooks: `done()` prints the results as one line; the moderate script adds `delay()`.
fn write_scripts(out: &Path) -> anyhow::Result<Scripts> {
    const DONE: &str = DONE_SCRIPT;
    let saturation = out.join("saturation.lua");
    let moderate = out.join("moderate.lua");
    std::fs::write(&saturation, DONE)?;
    std::fs::write(
        &moderate,
        format!("function delay()\n  return {DELAY_MS}\nend\n{DONE}"),
    )?;
    Ok(Scripts {
        saturation,
        moderate,
    })
}

/// The HTTP server, killed on drop.
struct Server {
    child: Option<Child>,
    addr: String,
    pid: u32,
}

impl Server {
    fn start(bin: &Path) -> anyhow::Result<Server> {
        let mut child = Command::new(bin)
            .arg("127.0.0.1:0")
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let mut stdout = child.stdout.take().context("no stdout")?;
        let mut line = Vec::new();
        let mut byte = [0u8];
        while stdout.read(&mut byte)? == 1 && byte[0] != b'\n' {
            line.push(byte[0]);
        }
        let addr = String::from_utf8_lossy(&line).trim().to_string();
        if addr.is_empty() {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the HTTP server printed no address");
        }
        let pid = child.id();
        Ok(Server {
            child: Some(child),
            addr,
            pid,
        })
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs wrk to the end and returns its results and CPU time.
pub(crate) fn run_wrk(
    url: &str,
    script: &Path,
    connections: u32,
    secs: u64,
) -> anyhow::Result<WrkResult> {
    let mut child = Command::new("wrk")
        .args(["-t1", &format!("-c{connections}"), &format!("-d{secs}s")])
        .arg("-s")
        .arg(script)
        .arg(url)
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start wrk (package wrk)")?;
    let mut text = String::new();
    child
        .stdout
        .take()
        .context("no stdout")?
        .read_to_string(&mut text)?;
    let (cpu_s, _) = wait_rusage(child)?;
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("LOUPE "))
        .with_context(|| format!("wrk printed no result line:\n{text}"))?;
    let field = |name: &str| -> anyhow::Result<f64> {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("wrk's result line has no {name}: {line}"))
    };
    let r = WrkResult {
        requests: field("requests")? as u64,
        duration_s: field("duration_us")? / 1e6,
        errors: field("errors")? as u64,
        p50_us: field("p50_us")?,
        p99_us: field("p99_us")?,
        p999_us: field("p999_us")?,
        cpu_s,
    };
    if r.requests == 0 {
        bail!("wrk completed no request:\n{text}");
    }
    Ok(r)
}

/// CPU seconds (user + system, all threads, reaped children excluded) of a live process.
pub(crate) fn process_cpu_s(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // The command name may hold spaces: fields are counted after its closing parenthesis.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<f64>().ok())
        .sum();
    ticks / clock_ticks()
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// Busy CPU seconds of the whole host (all CPUs), from /proc/stat.
fn host_busy_s() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return 0.0;
    };
    let Some(cpu) = stat.lines().next() else {
        return 0.0;
    };
    let v: Vec<f64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let busy: f64 =
        v.iter().take(8).sum::<f64>() - v.get(3).unwrap_or(&0.0) - v.get(4).unwrap_or(&0.0);
    busy / clock_ticks()
}

/// A point-in-time reading of everything a run's figures are differences of.
#[derive(Debug, Clone, Copy, Default)]
struct Snapshot {
    at: Option<Instant>,
    host_busy_s: f64,
    server_s: f64,
    agent_s: f64,
    bpf_ns: u64,
    bpf_runs: u64,
}

impl Snapshot {
    fn take(server: u32, agent: Option<u32>) -> Snapshot {
        let (bpf_ns, bpf_runs) = agent.map_or((0, 0), bpf_run_time);
        Snapshot {
            at: Some(Instant::now()),
            host_busy_s: host_busy_s(),
            server_s: process_cpu_s(server),
            agent_s: agent.map_or(0.0, process_cpu_s),
            bpf_ns,
            bpf_runs,
        }
    }

    fn secs_since(&self, earlier: &Snapshot) -> f64 {
        match (self.at, earlier.at) {
            (Some(a), Some(b)) => a.duration_since(b).as_secs_f64(),
            _ => 0.0,
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn run_scenario(
    scenario: Scenario,
    mode: Mode,
    agent_bin: &Path,
    secs: u64,
    url: &str,
    scripts: &Scripts,
    server: &Server,
    out: &Path,
) -> anyhow::Result<Run> {
    let script = match scenario {
        Scenario::Saturation | Scenario::TracepointFloor => &scripts.saturation,
        Scenario::Moderate { .. } => &scripts.moderate,
    };
    let mut other_agents = other_agents_now();
    let mut agent = match mode {
        Mode::Agent => Some(Agent::start(agent_bin, &out.join("agent"), &[])?),
        Mode::AgentNoTcpContext => Some(Agent::start(
            agent_bin,
            &out.join("agent"),
            &["--tcp-context=false"],
        )?),
        _ => None,
    };
    let floor = match mode {
        Mode::Floor => Some(Bpftrace::start(&out.join("floor.bt"))?),
        _ => None,
    };
    let measured = (|| {
        let pid = agent.as_ref().map(|a| a.pid);
        let mut idle_cpu_per_s = 0.0;
        if agent.is_some() {
            let a = Snapshot::take(server.pid, pid);
            thread::sleep(IDLE);
            let b = Snapshot::take(server.pid, pid);
            idle_cpu_per_s = (b.agent_s - a.agent_s + (b.bpf_ns - a.bpf_ns) as f64 / 1e9)
                / b.secs_since(&a).max(1e-9);
        }
        let metrics_before = agent.as_ref().map(|a| a.metrics()).transpose()?;
        let before = Snapshot::take(server.pid, pid);
        let wrk = run_wrk(url, script, scenario.connections(), secs)?;
        if agent.is_some() {
            thread::sleep(SETTLE);
        }
        let after = Snapshot::take(server.pid, pid);
        let metrics_after = agent.as_ref().map(|a| a.metrics()).transpose()?;
        let window_s = after.secs_since(&before);
        let server_cpu_s = after.server_s - before.server_s;
        let agent_cpu_s = after.agent_s - before.agent_s;
        let bpf_s = after.bpf_ns.saturating_sub(before.bpf_ns) as f64 / 1e9;
        let others =
            after.host_busy_s - before.host_busy_s - server_cpu_s - wrk.cpu_s - agent_cpu_s;
        let cost = match (metrics_before, metrics_after) {
            (Some(m0), Some(m1)) => {
                let d = |name: &str| metric_sum(&m1, name) - metric_sum(&m0, name);
                Some(AgentCost {
                    cpu_s: agent_cpu_s,
                    bpf_s,
                    bpf_runs: after.bpf_runs.saturating_sub(before.bpf_runs),
                    idle_cpu_per_s,
                    socket_events: d("loupe_socket_events_total"),
                    spans: d("loupe_spans_created_total"),
                    dropped_events: d("loupe_socket_events_dropped_total"),
                    dropped_queue_full: metric_sum(
                        &m1,
                        "loupe_socket_events_dropped_total{reason=\"queue_full\"}",
                    ) - metric_sum(
                        &m0,
                        "loupe_socket_events_dropped_total{reason=\"queue_full\"}",
                    ),
                    dropped_spans: d("loupe_spans_dropped_total")
                        + ["queue_full", "export_failed", "shutdown"]
                            .into_iter()
                            .map(|reason| {
                                d(&format!(
                                    "loupe_exporter_items_dropped_total{{reason=\"{reason}\",signal=\"spans\"}}"
                                ))
                            })
                            .sum::<f64>(),
                    ..AgentCost::default()
                })
            }
            _ => None,
        };
        Ok::<_, anyhow::Error>((wrk, server_cpu_s, others, window_s, cost))
    })();
    let own = agent.as_ref().map(|a| a.pid);
    other_agents.extend(other_agents_now().into_iter().filter(|&p| Some(p) != own));
    other_agents.sort_unstable();
    other_agents.dedup();
    let lifetime = agent.take().map(Agent::stop).transpose();
    drop(floor);
    let (wrk, server_cpu_s, others, window_s, mut cost) = measured?;
    if let (Some(cost), Some((cpu, rss))) = (cost.as_mut(), lifetime?) {
        cost.lifetime_cpu_s = cpu;
        cost.max_rss_mb = rss;
    }
    Ok(Run {
        scenario,
        mode,
        agent: cost,
        wrk,
        server_cpu_s,
        others_cores: (others / window_s.max(1e-9)).max(0.0),
        other_agents,
    })
}

/// bpftrace running empty programs on the agent's syscall tracepoints; stopped on drop.
struct Bpftrace {
    child: Child,
}

impl Bpftrace {
    /// Writes the script to `script`, starts bpftrace and waits until its probes are attached.
    fn start(script: &Path) -> anyhow::Result<Bpftrace> {
        let mut probes = Vec::new();
        for name in TRACED_SYSCALLS {
            probes.push(format!("tracepoint:syscalls:sys_enter_{name}"));
            if *name != "close" {
                probes.push(format!("tracepoint:syscalls:sys_exit_{name}"));
            }
        }
        // A condition that never holds: the program runs, decides, and does nothing.
        std::fs::write(
            script,
            format!(
                "{} {{ if (pid == 0) {{ @never = 1; }} }}\n",
                probes.join(",\n")
            ),
        )?;
        let mut child = Command::new("bpftrace")
            .arg(script)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start bpftrace (package bpftrace)")?;
        let mut stdout = child.stdout.take().context("no stdout")?;
        let mut text = Vec::new();
        let mut byte = [0u8];
        // "Attaching N probes..." comes once they are.
        while !String::from_utf8_lossy(&text).contains("probes...") {
            if stdout.read(&mut byte)? == 0 {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "bpftrace exited before attaching its probes: {}",
                    String::from_utf8_lossy(&text)
                );
            }
            text.push(byte[0]);
        }
        // Keep the pipe open (bpftrace writes its maps to it at exit) without reading it.
        std::mem::forget(stdout);
        thread::sleep(Duration::from_secs(1));
        Ok(Bpftrace { child })
    }
}

impl Drop for Bpftrace {
    fn drop(&mut self) {
        // SAFETY: kill has no memory preconditions; the pid is our own unreaped child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
        let _ = self.child.wait();
    }
}

/// Pids of loupe-agent processes running now (other sessions' tests and demos on a shared host).
fn other_agents_now() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let argv0 = c.split(|&b| b == 0).next().unwrap_or_default();
                argv0.ends_with(b"loupe-agent")
            })
        })
        .collect()
}

/// A running agent with its defaults, serving its metrics on loopback.
struct Agent {
    child: Option<Child>,
    pid: u32,
    metrics_addr: String,
    log: PathBuf,
}

impl Agent {
    fn start(bin: &Path, dir: &Path, extra: &[&str]) -> anyhow::Result<Agent> {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir)?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let metrics_addr = format!("127.0.0.1:{port}");
        let log = dir.with_extension("log");
        let child = Command::new(bin)
            .args(["run", "--output-dir"])
            .arg(dir.join("data"))
            .args(["--metrics-addr", &metrics_addr])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("cannot start the agent")?;
        let mut agent = Agent {
            pid: child.id(),
            child: Some(child),
            metrics_addr,
            log,
        };
        // Ready once both the socket capture and the profiler have registered their counters.
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(status) = agent
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                agent.child = None;
                bail!(
                    "the agent exited at start-up ({status}); its log:\n{}",
                    tail(&agent.log)
                );
            }
            if let Ok(m) = agent.metrics()
                && m.contains("loupe_socket_events_total")
                && m.contains("loupe_profiler_samples_total")
            {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "the agent was not ready after 120 s; its log:\n{}",
                    tail(&agent.log)
                );
            }
            thread::sleep(Duration::from_millis(200));
        }
        thread::sleep(Duration::from_secs(1));
        Ok(agent)
    }

    /// The agent's /metrics text.
    fn metrics(&self) -> anyhow::Result<String> {
        let mut s = TcpStream::connect(&self.metrics_addr)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.metrics_addr
        )?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        Ok(text)
    }

    /// SIGTERM, then its whole-life (CPU seconds, peak RSS MB) from wait4.
    fn stop(mut self) -> anyhow::Result<(f64, f64)> {
        let child = self.child.take().context("the agent is gone")?;
        // SAFETY: kill has no memory preconditions; the pid is our own unreaped child.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        wait_rusage(child).with_context(|| format!("the agent's log:\n{}", tail(&self.log)))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Sum of every series of a Prometheus metric (all label sets).
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            // `name` may carry a label prefix: `metric{reason="x"}` matches that series.
            let rest = l.strip_prefix(name.strip_suffix('}').unwrap_or(name))?;
            if !(rest.starts_with('{')
                || rest.starts_with(' ')
                || rest.starts_with(',')
                || rest.starts_with('}'))
            {
                return None;
            }
            l.rsplit(' ').next()?.parse::<f64>().ok()
        })
        .sum()
}
