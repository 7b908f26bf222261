//! The agent under its memory limit: it runs in a memory cgroup limited to its `--memory-limit`
//! (the chart sets the container's limit the same way) while wrk drives a fast HTTP server as hard
//! as this host goes and a process writes 100,000 log lines a second, for 60 seconds. The kernel
//! never OOM-kills it, its resident memory plus its maps stay under the limit, its plan of shares
//! fits in the limit, and what it could not keep is counted, stage by stage. At the smallest limit
//! accepted, where the stages' floors do not fit, the pressure valve sheds instead.

use std::{
    collections::BTreeMap,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use loupe_tests::{
    Agent, Guard, agent_bin, cgroup::MemoryCgroup, http_server, log_flood_written, metric_value,
    proc_status_kb, read_spans, require_root, workload,
};

/// The chart's default `agent.memoryLimit`, and the agent's.
const LIMIT: u64 = 256 << 20;
const FLOOD_SECS: u64 = 60;
const LOG_RATE: u64 = 100_000;

/// The agent's peak resident memory (`VmHWM`), in bytes.
fn peak_rss(pid: u32) -> u64 {
    proc_status_kb(pid, "VmHWM") * 1024
}

/// Every non-zero series of the families whose name contains `dropped`, `evicted` or `lost`.
fn drops(metrics: &str) -> BTreeMap<String, f64> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.contains("dropped") || l.contains("evicted") || l.contains("_lost"))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let value: f64 = value.parse().ok()?;
            (value > 0.0).then(|| (series.to_string(), value))
        })
        .collect()
}

/// What one flood run left: the agent's own metrics and log, its memory, the cgroup's verdict.
struct Flood {
    metrics: String,
    stderr: String,
    status: std::process::ExitStatus,
    rss: u64,
    kernel_maps: u64,
    planned: u64,
    oom_kills: u64,
    written: f64,
    drops: BTreeMap<String, f64>,
    spans: usize,
    summary: String,
}

/// The floods run one at a time: they share the cgroup, the host's two cores and the agent's
/// metrics port.
static ONE_FLOOD: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs the agent with `--memory-limit limit` in a memory cgroup limited to the same, under wrk
/// and `LOG_RATE` log lines a second for `secs` seconds.
fn flood(limit: u64, secs: u64) -> Flood {
    let _one = ONE_FLOOD.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, addr) = http_server("flood-target");
    let group = MemoryCgroup::create("loupe-memory-limit", limit);
    let mut cmd = Command::new(agent_bin());
    cmd.args(["run", "--memory-limit", &limit.to_string()])
        .args(["--profile-interval", "10s"])
        .arg("--output-dir")
        .arg(dir.path().join("out"));
    group.enter_on_exec(&mut cmd);
    let agent = Agent::start(cmd, dir.path(), "agent");
    let agent_pid = agent.pid();

    let mut flood = Guard(
        Command::new(workload("log_flood"))
            .args([LOG_RATE.to_string(), secs.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start log_flood"),
    );
    let wrk = Command::new("wrk")
        .args(["-t1", "-c16", &format!("-d{secs}s")])
        .arg(format!("http://{addr}/"))
        .stderr(Stdio::inherit())
        .output()
        .expect("run wrk (installed by `cargo xtask setup`)");
    assert!(wrk.status.success(), "wrk failed");
    let wrk_out = String::from_utf8_lossy(&wrk.stdout).into_owned();
    let written = log_flood_written(&mut flood);

    // Let the last batches through, then read what the agent says of itself.
    let settle = Instant::now() + Duration::from_secs(3);
    while Instant::now() < settle {
        std::thread::sleep(Duration::from_millis(200));
    }
    let metrics = agent.metrics();
    let rss = peak_rss(agent_pid);
    let (status, stderr) = agent.stop(Duration::from_secs(60));
    drop(server);
    let kernel_maps = metric_value(&metrics, "loupe_agent_kernel_maps_bytes") as u64;
    let planned = metric_value(&metrics, "loupe_memory_budget_bytes") as u64;
    let drops = drops(&metrics);
    let requests = wrk_out
        .lines()
        .find(|l| l.contains("requests in"))
        .unwrap_or_default()
        .to_string();
    let summary = format!(
        "limit {} MiB; wrk: {requests}; log lines written {written}; agent peak RSS {} MiB, \
         kernel maps {} MiB, planned {} MiB; cgroup peak {} MiB (page cache included); OOM \
         kills {}\ndrops:\n{}",
        limit >> 20,
        rss >> 20,
        kernel_maps >> 20,
        planned >> 20,
        group.peak() >> 20,
        group.oom_kills(),
        drops
            .iter()
            .map(|(k, v)| format!("  {k} {v}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    eprintln!("{summary}");
    let spans = read_spans(&dir.path().join("out"))
        .into_iter()
        .filter(|s| s.service == "flood-target")
        .count();
    Flood {
        metrics,
        stderr,
        status,
        rss,
        kernel_maps,
        planned,
        oom_kills: group.oom_kills(),
        written,
        drops,
        spans,
        summary,
    }
}

#[test]
fn a_request_and_log_flood_under_the_memory_limit_is_counted_and_never_oom_killed() {
    require_root();
    let f = flood(LIMIT, FLOOD_SECS);
    let (summary, stderr) = (&f.summary, &f.stderr);
    assert_eq!(f.oom_kills, 0, "OOM-killed\n{summary}\n{stderr}");
    assert!(
        f.status.success(),
        "the agent exited with {}\n{summary}\n{stderr}",
        f.status
    );
    assert!(
        f.rss + f.kernel_maps <= LIMIT,
        "resident memory plus maps over the limit\n{summary}"
    );
    // The plan: the fixed parts and every stage's share, within the limit.
    for stage in [
        "kernel_maps",
        "baseline",
        "socket_events",
        "connections",
        "log_lines",
        "export_queues",
        "symbols",
    ] {
        assert!(
            f.metrics
                .contains(&format!("loupe_memory_budget_bytes{{stage=\"{stage}\"}}")),
            "no budget for {stage}"
        );
    }
    assert!(f.planned <= LIMIT, "{summary}");
    assert!(
        !stderr.contains("too low to be held"),
        "the default limit holds its plan:\n{stderr}"
    );

    // Every flood line is kept or counted at the stage that dropped it (other processes' lines
    // only add to the left side).
    let m = |name: &str| metric_value(&f.metrics, name);
    let accounted = m("loupe_logs_lines_total")
        + m("loupe_logs_lines_dropped_total")
        + m("loupe_logs_writes_dropped_total")
        + m("loupe_socket_events_dropped_total");
    assert!(
        accounted >= f.written,
        "{} lines written, {accounted} accounted for\n{summary}",
        f.written
    );
    // The flood was more than the agent keeps: some stage dropped, and said so.
    assert!(!f.drops.is_empty(), "nothing dropped?\n{summary}");
    // And it kept working: spans of the server under load.
    assert!(f.spans > 1000, "{} spans of the server\n{summary}", f.spans);
    assert_eq!(
        m("loupe_memory_pressure"),
        0.0,
        "the default limit needs no shedding\n{summary}"
    );
}

/// At the smallest limit accepted, the stages' floors do not fit (the agent warns), and the
/// pressure valve holds the limit: it sheds socket payloads, counted, instead of the kernel
/// killing the agent.
#[test]
fn at_the_smallest_limit_the_agent_sheds_instead_of_being_oom_killed() {
    require_root();
    const SMALLEST: u64 = 128 << 20;
    let f = flood(SMALLEST, 30);
    assert_eq!(f.oom_kills, 0, "OOM-killed\n{}\n{}", f.summary, f.stderr);
    assert!(
        f.status.success(),
        "the agent exited with {}\n{}\n{}",
        f.status,
        f.summary,
        f.stderr
    );
    assert!(
        f.stderr.contains("too low to be held"),
        "the floors do not fit in 128 MiB: the agent says so\n{}",
        f.stderr
    );
    let shed = f
        .drops
        .get("loupe_socket_events_dropped_total{reason=\"memory_pressure\"}")
        .copied()
        .unwrap_or(0.0);
    assert!(
        shed > 0.0,
        "no shedding at the smallest limit\n{}",
        f.summary
    );
    assert!(
        f.stderr.contains("memory near --memory-limit"),
        "the shedding is logged\n{}",
        f.stderr
    );
    // Not checked here: peak RSS plus maps under the limit. Near the limit, the kernel reclaims
    // file pages (the agent's own code, the binaries it inspects) that VmHWM still counts, and
    // the cgroup's charge, which is what OOM kills follow, stays at the limit.
}
