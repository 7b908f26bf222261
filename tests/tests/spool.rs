//! The on-disk spool (`--spool-dir`): log lines captured while Loki refuses connections wait on
//! disk; the agent is killed with SIGKILL in the middle of the outage, started again against a
//! Loki that answers, and sends what it spooled: every line of the outage arrives, once.

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use loupe_tests::receivers::LokiReceiver;
use loupe_tests::{
    Agent, agent_bin, http_get_raw, infra::free_port, metric_value, require_root, sink_metric,
};

/// `name{signal="logs",sink="loki"}` (and any further labels) in a `/metrics` text.
fn loki_metric(metrics: &str, name: &str) -> f64 {
    sink_metric(metrics, name, "logs", "loki")
}

fn start_agent(dir: &std::path::Path, name: &str, server_pid: u32, loki: &str) -> Agent {
    let mut agent = Command::new(agent_bin());
    agent
        .args(["run", "--profile-interval", "60s"])
        .args(["--pid", &server_pid.to_string()])
        .args(["--loki-url", loki])
        .arg("--spool-dir")
        .arg(dir.join("spool"))
        .arg("--output-dir")
        .arg(dir.join("out"));
    Agent::start(agent, dir, name)
}

#[test]
fn lines_captured_during_an_outage_arrive_after_a_sigkill_and_a_restart() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, port) = loupe_tests::span_server();
    let server_pid = server.0.id();

    // Outage: nothing listens where Loki should be.
    let down = format!("http://127.0.0.1:{}", free_port());
    let mut agent = start_agent(dir.path(), "first", server_pid, &down);
    let paths: Vec<String> = (0..40).map(|i| format!("/work/1/outage-{i}")).collect();
    for path in &paths {
        let reply = http_get_raw(port, path);
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    }
    // Every line the agent read is spooled (after the Loki sink's retries give up on each push).
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut metrics = agent.metrics();
    while Instant::now() < deadline {
        metrics = agent.metrics();
        let read = metric_value(&metrics, "loupe_logs_lines_total");
        let spooled = loki_metric(&metrics, "loupe_spool_items_written_total");
        if read >= paths.len() as f64 && spooled >= read {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let spooled = loki_metric(&metrics, "loupe_spool_items");
    assert!(
        spooled >= paths.len() as f64,
        "{spooled} lines in the spool, {} requests:\n{}\n{}",
        paths.len(),
        metrics
            .lines()
            .filter(|l| l.starts_with("loupe_log") || l.contains("sink=\"loki\""))
            .collect::<Vec<_>>()
            .join("\n"),
        agent.stderr()
    );
    assert_eq!(
        loki_metric(&metrics, "loupe_exporter_items_dropped_total"),
        0.0,
        "nothing dropped:\n{metrics}"
    );
    // SIGKILL: no flush, no goodbye; the spool is all that is left.
    agent.guard.0.kill().expect("SIGKILL");
    agent.guard.0.wait().expect("reap");
    let records = std::fs::read_dir(dir.path().join("spool/logs-loki"))
        .expect("the spool directory")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".rec"))
        })
        .count();
    assert!(records > 0, "records on disk after the kill");

    // Loki is back; the agent starts again with the same spool and no new traffic.
    let loki = LokiReceiver::start();
    let agent = start_agent(
        dir.path(),
        "second",
        server_pid,
        &format!("http://{}", loki.addr),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut metrics = agent.metrics();
    while Instant::now() < deadline {
        metrics = agent.metrics();
        if loki_metric(&metrics, "loupe_spool_items") == 0.0
            && loki_metric(&metrics, "loupe_spool_items_replayed_total") > 0.0
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let replayed = loki_metric(&metrics, "loupe_spool_items_replayed_total");
    assert_eq!(
        replayed,
        spooled,
        "the restart replays what was spooled:\n{}",
        agent.stderr()
    );
    // Each request's line, exactly once.
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (_, line, _) in loki.entries() {
        if let Some(path) = paths.iter().find(|p| line.contains(&format!("\"{p}\""))) {
            *seen.entry(path.clone()).or_default() += 1;
        }
    }
    for path in &paths {
        assert_eq!(seen.get(path).copied().unwrap_or(0), 1, "{path}: {seen:?}");
    }
    let (status, stderr) = agent.stop(Duration::from_secs(30));
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains("spool left by an earlier run"),
        "the restart says it found a spool:\n{stderr}"
    );
}
