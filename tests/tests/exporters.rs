//! The agent's exporters end to end: the Pyroscope push against a receiver on loopback that decodes
//! the real wire format, and the self-metrics endpoint, both while profiling the real kernel.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use loupe_tests::{
    Agent, Profile, agent_bin, inclusive_counts, metric_value, require_root, run_agent,
    wait_with_deadline, workload,
};
use prost::Message;
use pyroscope::encode::r#gen::push::PushRequest;

/// One HTTP/1.1 request as received.
struct Request {
    method: String,
    path: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

fn read_request(stream: &mut TcpStream) -> Option<Request> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
    }
    let len: usize = headers.get("content-length")?.parse().ok()?;
    let mut body = vec![0; len];
    reader.read_exact(&mut body).ok()?;
    Some(Request {
        method,
        path,
        headers,
        body,
    })
}

/// Serves 200 to every request on a loopback port, forwarding each request into the channel.
fn receiver() -> (u16, mpsc::Receiver<Request>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let tx = tx.clone();
            thread::spawn(move || {
                while let Some(req) = read_request(&mut stream) {
                    let _ = stream.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/proto\r\ncontent-length: 0\r\n\r\n",
                    );
                    if tx.send(req).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, rx)
}

#[test]
fn pushes_decodable_profiles_to_pyroscope() {
    require_root();
    let (port, requests) = receiver();
    let mut child = Command::new(workload("hot_c"))
        .arg("20")
        .stdout(Stdio::null())
        .spawn()
        .expect("start workload");
    let pid = child.id().to_string();
    let url = format!("http://127.0.0.1:{port}");
    let dir = tempfile::tempdir().expect("tempdir");
    let out = run_agent(
        &[
            "run",
            "--pid",
            &pid,
            "--profile-hz",
            "99",
            "--profile-interval",
            "3s",
            "--duration",
            "7s",
            "--pyroscope-url",
            &url,
            "--pyroscope-tenant",
            "team-a",
            "--pyroscope-token",
            "s3cret",
            "--output-dir",
            dir.path().to_str().expect("utf-8"),
        ],
        Duration::from_secs(60),
    );
    let _ = child.kill();
    let _ = wait_with_deadline(&mut child, Duration::from_secs(10));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "agent failed:\n{stderr}");
    // With a backend configured, the local sink is off by default.
    assert!(
        !dir.path().join("profiles").exists(),
        "local sink should be off"
    );

    let received: Vec<Request> = requests.try_iter().collect();
    assert!(
        received.len() >= 2,
        "expected a push per interval, got {}:\n{stderr}",
        received.len()
    );
    let mut alpha = 0;
    let mut beta = 0;
    for req in &received {
        assert_eq!(req.method, "POST");
        assert_eq!(req.path, "/push.v1.PusherService/Push");
        assert_eq!(
            req.headers.get("content-type").map(String::as_str),
            Some("application/proto")
        );
        assert_eq!(
            req.headers.get("x-scope-orgid").map(String::as_str),
            Some("team-a")
        );
        assert_eq!(
            req.headers.get("authorization").map(String::as_str),
            Some("Bearer s3cret")
        );
        let push = PushRequest::decode(req.body.as_slice()).expect("body is a PushRequest");
        assert_eq!(push.series.len(), 1);
        let series = &push.series[0];
        let labels: HashMap<&str, &str> = series
            .labels
            .iter()
            .map(|l| (l.name.as_str(), l.value.as_str()))
            .collect();
        assert_eq!(labels.get("__name__"), Some(&"process_cpu"));
        assert_eq!(labels.get("service_name"), Some(&"hot_c"));
        assert!(labels.contains_key("host_name"), "{labels:?}");
        let raw = &series.samples[0].raw_profile;
        let mut pprof = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice())
            .read_to_end(&mut pprof)
            .expect("raw_profile is gzip");
        let profile = Profile::decode(pprof.as_slice()).expect("raw_profile is pprof");
        let counts = inclusive_counts(&profile);
        alpha += counts.get("hot_alpha").copied().unwrap_or(0);
        beta += counts.get("hot_beta").copied().unwrap_or(0);
    }
    assert!(
        alpha > 0 && beta > 0 && alpha > beta,
        "hot_alpha={alpha} hot_beta={beta}"
    );
}

#[test]
fn serves_self_metrics_while_running() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new(agent_bin());
    cmd.args([
        "run",
        "--profile-hz",
        "99",
        "--profile-interval",
        "2s",
        "--output-dir",
    ])
    .arg(dir.path().join("out"));
    let agent = Agent::start(cmd, dir.path(), "agent");
    // Read once two intervals have been drained. Start-up takes longer when other agents load
    // their programs beside this one (tests run in parallel), so poll rather than sleep a fixed
    // time.
    let deadline = Instant::now() + Duration::from_secs(30);
    let response = loop {
        let r = agent.metrics();
        if metric_value(&r, "loupe_profiler_drains_total") >= 2.0 || Instant::now() > deadline {
            break r;
        }
        thread::sleep(Duration::from_millis(250));
    };
    let (exit, stderr) = agent.stop(Duration::from_secs(30));
    assert!(exit.success(), "agent failed:\n{stderr}");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let value = |name: &str| -> f64 {
        response
            .lines()
            .find(|l| l.starts_with(name) && !l.starts_with('#'))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in:\n{response}"))
    };
    // Two CPUs at 99 Hz for two intervals (idle samples count too): hundreds of samples.
    assert!(value("loupe_profiler_samples_total") > 100.0);
    assert!(value("loupe_profiler_drains_total") >= 2.0);
    for family in [
        "loupe_profiler_samples_dropped_total",
        "loupe_profiler_stacks_lost_total",
        "loupe_profiler_symbolization_failures_total",
        "loupe_profiler_process_events_dropped_total",
    ] {
        assert!(
            response.contains(&format!("# TYPE {family} counter")),
            "{family} missing:\n{response}"
        );
    }
}
