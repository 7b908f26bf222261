//! A log flood on the real kernel: a process writes 100,000 lines a second, one write each, for
//! 30 seconds while a C server answers requests. The agent keeps its memory bound, counts every
//! line it does not keep (the kernel's per-process write rate, then the per-process line rate),
//! and goes on producing spans and profiles meanwhile.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use loupe_tests::{
    Guard, SPAN_KIND_SERVER, agent_bin, infra::free_port, log_flood_written, proc_status_kb,
    read_profiles, read_spans, require_root, wait_port, wait_with_deadline, workload,
};

const FLOOD_RATE: u64 = 100_000;
const FLOOD_SECS: u64 = 30;
/// The README's memory figure for the agent.
const RSS_BOUND_KB: u64 = 64 * 1024;

/// Every sample of the agent's metrics, `name{labels}` → value.
fn scrape(port: u16) -> HashMap<String, f64> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("metrics port");
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read metrics");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

fn rss_kb(pid: u32) -> u64 {
    proc_status_kb(pid, "VmRSS")
}

#[test]
fn a_log_flood_is_bounded_counted_and_starves_nothing() {
    require_root();
    let port = free_port();
    let server = Guard(
        Command::new(workload("span_server"))
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start span_server"),
    );
    wait_port(port, Duration::from_secs(10));
    let dir = tempfile::tempdir().expect("tempdir");
    let metrics_port = free_port();
    let mut agent = Guard(
        Command::new(agent_bin())
            .args(["--output-dir", dir.path().to_str().expect("utf-8 path")])
            .args([
                "--profile-interval",
                "5s",
                "--duration",
                &format!("{}s", FLOOD_SECS + 8),
            ])
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start loupe-agent"),
    );
    wait_port(metrics_port, Duration::from_secs(60));
    let agent_pid = agent.0.id();

    let mut flood = Guard(
        Command::new(workload("log_flood"))
            .args([FLOOD_RATE.to_string(), FLOOD_SECS.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start log_flood"),
    );
    // Requests all along, and the agent's memory watched.
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let mut reader = BufReader::new(&stream);
    let (mut requests, mut max_rss) = (0, 0);
    let end = Instant::now() + Duration::from_secs(FLOOD_SECS);
    while Instant::now() < end {
        write!(&stream, "GET /work/2 HTTP/1.1\r\nHost: t\r\n\r\n").expect("request");
        let mut head = String::new();
        while reader.read_line(&mut head).expect("response") > 2 && !head.ends_with("\r\n\r\n") {}
        let mut body = [0u8; 2];
        reader.read_exact(&mut body).expect("body");
        requests += 1;
        max_rss = max_rss.max(rss_kb(agent_pid));
        std::thread::sleep(Duration::from_millis(50));
    }
    let written = log_flood_written(&mut flood);
    std::thread::sleep(Duration::from_secs(2));
    let m = scrape(metrics_port);
    max_rss = max_rss.max(rss_kb(agent_pid));
    let status = wait_with_deadline(&mut agent.0, Duration::from_secs(60));
    assert!(status.success(), "agent exited with {status}");
    drop(server);

    let get = |k: &str| m.get(k).copied().unwrap_or(0.0);
    let kernel_dropped = get("loupe_logs_writes_dropped_total{reason=\"rate_limit\"}");
    let rate_dropped = get("loupe_logs_lines_dropped_total{reason=\"rate_limit\"}");
    let kept = get("loupe_logs_lines_total");
    let ring_lost = get("loupe_socket_events_dropped_total{reason=\"ring_full\"}")
        + get("loupe_socket_events_dropped_total{reason=\"queue_full\"}");
    eprintln!(
        "flood: wrote {written}, kernel dropped {kernel_dropped}, rate dropped {rate_dropped}, \
         kept {kept}, events lost {ring_lost}, agent max RSS {max_rss} kB, {requests} requests"
    );
    // Nothing is lost silently: every flood line is kept or counted (other processes' lines
    // only add to the left side).
    assert!(
        kept + rate_dropped + kernel_dropped + ring_lost >= written,
        "{written} lines written, but only {} accounted for",
        kept + rate_dropped + kernel_dropped + ring_lost
    );
    // The excess is dropped by the rate limits: at most 1,000 lines a second are kept.
    let secs = FLOOD_SECS as f64 + 10.0;
    assert!(kept <= 1000.0 * secs + requests as f64 * 2.0, "kept {kept}");
    assert!(
        kernel_dropped >= written * 0.9,
        "kernel dropped only {kernel_dropped}"
    );
    assert!(max_rss < RSS_BOUND_KB, "agent RSS reached {max_rss} kB");

    // Spans and profiles went on meanwhile.
    let spans = read_spans(dir.path())
        .into_iter()
        .filter(|s| s.service == "span_server" && s.kind == SPAN_KIND_SERVER)
        .count();
    assert!(
        spans * 10 >= requests * 9,
        "{spans} server spans for {requests} requests"
    );
    let profiles = read_profiles(dir.path());
    assert!(
        profiles
            .iter()
            .any(|(name, _)| name.starts_with("log_flood-")),
        "the flood's own CPU profile is there"
    );
    assert!(profiles.len() >= 3, "{} profile files", profiles.len());
}
