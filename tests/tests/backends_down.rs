//! Backends that are down never stop the agent. With its span, log and profile backends refusing
//! connections, not resolving, or accepting and never answering (a half-open backend), the agent
//! starts, becomes ready, keeps capturing, counts every failed export per signal, and still stops
//! cleanly on SIGTERM within its flush deadline.

use std::{
    io::Read,
    net::TcpListener,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use loupe_tests::{Agent, agent_bin, http_get_raw, infra::free_port, require_root};

/// A listener that accepts connections and reads them without ever answering.
fn black_hole() -> (u16, Arc<AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = stop.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            if stopping.load(Ordering::SeqCst) {
                return;
            }
            if let Ok(mut c) = conn {
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while matches!(c.read(&mut buf), Ok(n) if n > 0) {}
                });
            }
        }
    });
    (port, stop)
}

/// `name{labels} value` of the first series of `name` whose labels contain `has`.
fn value(metrics: &str, name: &str, has: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && l.contains(has))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

const SIGNALS: [&str; 3] = ["spans", "logs", "profiles"];

/// Failed exports of `signal` counted in a `/metrics` text.
fn failed_exports(metrics: &str, signal: &str) -> f64 {
    value(
        metrics,
        "loupe_exporter_exports_failed_total",
        &format!("signal=\"{signal}\""),
    )
}

fn run_with_backends(case: &str, base_url: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_server, http_port) = loupe_tests::span_server();
    let mut agent = Command::new(agent_bin());
    agent
        .args(["run", "--profile-interval", "3s"])
        .args(["--otlp-endpoint", base_url])
        .args(["--loki-url", base_url])
        .args(["--pyroscope-url", base_url])
        .arg("--output-dir")
        .arg(dir.path().join("out"));
    // Ready although nothing answers behind it.
    let agent = Agent::start(agent, dir.path(), "agent");

    // Keep producing spans and logs until every signal has counted a failed export.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut metrics = String::new();
    while Instant::now() < deadline {
        let _ = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "--max-time", "5"])
            .arg(format!("http://127.0.0.1:{http_port}/work"))
            .status();
        metrics = http_get_raw(agent.port, "/metrics");
        if SIGNALS.iter().all(|s| failed_exports(&metrics, s) > 0.0) {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    for signal in SIGNALS {
        assert!(
            failed_exports(&metrics, signal) > 0.0,
            "{case}: no failed {signal} export counted:\n{}",
            metrics
                .lines()
                .filter(|l| l.starts_with("loupe_exporter"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    // Capture went on all along.
    assert!(
        value(&metrics, "loupe_spans_created_total", "") > 0.0,
        "{case}"
    );
    assert!(
        value(&metrics, "loupe_profiler_samples_total", "") > 0.0,
        "{case}"
    );

    // SIGTERM: the flush gives up on the dead backends within its deadline and exits 0.
    let stopped = Instant::now();
    let (status, stderr) = agent.stop(Duration::from_secs(60));
    assert!(status.success(), "{case}: {status}\n{stderr}");
    assert!(
        stopped.elapsed() < Duration::from_secs(25),
        "{case}: SIGTERM took {:?}",
        stopped.elapsed()
    );
}

#[test]
fn refused_unresolvable_and_silent_backends_stop_nothing() {
    require_root();
    // Nothing listens: connections are refused.
    let closed = free_port();
    run_with_backends("refused", &format!("http://127.0.0.1:{closed}"));
    // A name that never resolves (.invalid is reserved for that, RFC 6761).
    run_with_backends("unresolvable", "http://loupe-backend.invalid:4317");
    // Accepts, reads, never answers: only timeouts end each request.
    let (silent, stop) = black_hole();
    run_with_backends("silent", &format!("http://127.0.0.1:{silent}"));
    stop.store(true, Ordering::SeqCst);
}
