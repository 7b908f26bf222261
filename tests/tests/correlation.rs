//! Span ↔ profile ↔ log correlation end to end, on the real kernel: a thread-per-connection C
//! server (tests/workloads/span_server.c) burns CPU in `loupe_request_work` inside every request
//! and writes a log line per request. The CPU samples of that function must carry the span id of
//! the server span they ran under (pprof labels `span_id`, `span_name`), that span must carry
//! `pyroscope.profile.id`, and the log lines must carry its trace and span ids.

use std::{
    collections::{HashMap, HashSet},
    io::{BufRead, BufReader, Write},
    net::TcpStream,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use loupe_tests::{
    Guard, SPAN_KIND_SERVER, agent_bin, decode_samples,
    infra::free_port,
    read_profiles, read_spans,
    receivers::{LokiReceiver, OtlpLogsReceiver},
    require_root, wait_port, wait_with_deadline, workload,
};

const SERVICE: &str = "span_server";
const HOT: &str = "loupe_request_work";

/// Sends `GET path` on a keep-alive connection and reads the response (Content-Length body).
fn request(stream: &TcpStream, reader: &mut BufReader<&TcpStream>, path: &str) -> u16 {
    let mut w = stream;
    write!(w, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").expect("write request");
    let mut status = String::new();
    reader.read_line(&mut status).expect("status line");
    let code = status
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("header");
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some(v) = line.strip_prefix("Content-Length:") {
            length = v.trim().parse().expect("length");
        }
    }
    let mut body = vec![0u8; length];
    std::io::Read::read_exact(reader, &mut body).expect("body");
    code
}

const TRACE_CONTEXT_MAP: &str = "/sys/fs/bpf/otel/traces_ctx_v1";

/// The (trace id, span id) entries of the pinned trace context map for threads of `pid`, as
/// another profiler would read them (bpftool, JSON dump: byte arrays as "0x.." strings).
fn trace_context_entries(pid: u32) -> Vec<(String, String)> {
    let out = Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned", TRACE_CONTEXT_MAP])
        .output()
        .expect("bpftool (installed by cargo xtask setup)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let entries: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
    let bytes = |v: &serde_json::Value| -> Vec<u8> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|b| u8::from_str_radix(b.as_str()?.trim_start_matches("0x"), 16).ok())
            .collect()
    };
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    entries
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let key = bytes(&e["key"]);
            let value = bytes(&e["value"]);
            // Key: pid_tgid, little-endian; the process id is its upper half.
            let tgid = u32::from_le_bytes(key.get(4..8)?.try_into().ok()?);
            (tgid == pid && value.len() == 24).then(|| (hex(&value[..16]), hex(&value[16..])))
        })
        .collect()
}

/// Every log record in `dir/logs.jsonl`: (body, trace id, span id, severity text).
fn read_logs(dir: &Path) -> Vec<(String, String, String, String)> {
    let text = std::fs::read_to_string(dir.join("logs.jsonl")).unwrap_or_default();
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).expect("logs.jsonl line is JSON");
        for rl in v["resourceLogs"].as_array().into_iter().flatten() {
            for sl in rl["scopeLogs"].as_array().into_iter().flatten() {
                for r in sl["logRecords"].as_array().into_iter().flatten() {
                    let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
                    let body = r["body"]["stringValue"].as_str().unwrap_or_default();
                    out.push((
                        body.to_string(),
                        s("traceId"),
                        s("spanId"),
                        s("severityText"),
                    ));
                }
            }
        }
    }
    out
}

#[test]
fn cpu_samples_and_log_lines_carry_the_span_they_ran_under() {
    require_root();
    let port = free_port();
    let mut server = Guard(
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
    let loki = LokiReceiver::start();
    let otlp = OtlpLogsReceiver::start();
    let mut agent = Guard(
        Command::new(agent_bin())
            .args(["--pid", &server.0.id().to_string()])
            .args(["--output-dir", dir.path().to_str().expect("utf-8 path")])
            .args(["--profile-hz", "99", "--profile-interval", "3s"])
            .args(["--duration", "16s"])
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
            .arg("--publish-trace-context")
            .args(["--loki-url", &format!("http://{}", loki.addr)])
            .args(["--otlp-endpoint", &format!("http://{}", otlp.addr)])
            // Both log paths at once (by default Loki push alone carries them).
            .arg("--otlp-logs")
            .arg("--local-sink")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start loupe-agent"),
    );
    // /metrics answers once every program is attached.
    wait_port(metrics_port, Duration::from_secs(60));

    // Two keep-alive clients, each served by its own server thread, for about eight seconds.
    let deadline = Instant::now() + Duration::from_secs(8);
    let clients: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn(move || {
                let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
                let mut reader = BufReader::new(&stream);
                let mut n = 0;
                while Instant::now() < deadline {
                    assert_eq!(request(&stream, &mut reader, "/work/25"), 200);
                    n += 1;
                }
                assert_eq!(request(&stream, &mut reader, "/fail/5"), 500);
                n + 1
            })
        })
        .collect();
    // A slow request on a third connection: while it runs, the shared map says which span its
    // thread serves.
    std::thread::sleep(Duration::from_secs(2));
    let slow = std::thread::spawn(move || {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let mut reader = BufReader::new(&stream);
        assert_eq!(request(&stream, &mut reader, "/work/1500"), 200);
    });
    std::thread::sleep(Duration::from_millis(800));
    let published = trace_context_entries(server.0.id());
    slow.join().expect("slow client");
    let sent: usize = clients
        .into_iter()
        .map(|c| c.join().expect("client"))
        .sum::<usize>()
        + 1;
    let status = wait_with_deadline(&mut agent.0, Duration::from_secs(60));
    assert!(status.success(), "agent exited with {status}");
    let _ = server.0.kill();
    assert!(
        !Path::new(TRACE_CONTEXT_MAP).exists(),
        "the agent unpins {TRACE_CONTEXT_MAP} when it stops"
    );

    let spans = read_spans(dir.path());
    let server_spans: HashMap<&str, _> = spans
        .iter()
        .filter(|s| s.service == SERVICE && s.kind == SPAN_KIND_SERVER)
        .map(|s| (s.span_id.as_str(), s))
        .collect();
    assert!(
        server_spans.len() * 10 >= sent * 9,
        "{} server spans for {sent} requests",
        server_spans.len()
    );
    for s in server_spans.values() {
        assert_eq!(
            s.attributes.get("pyroscope.profile.id").map(String::as_str),
            Some(s.span_id.as_str()),
            "server span {} has pyroscope.profile.id = its span id",
            s.name
        );
    }

    // The slow request's thread was published with its span, and only threads serving one.
    let slow_span = server_spans
        .values()
        .find(|s| s.attributes.get("url.path").map(String::as_str) == Some("/work/1500"))
        .expect("the slow request's span");
    assert!(
        published.contains(&(slow_span.trace_id.clone(), slow_span.span_id.clone())),
        "{TRACE_CONTEXT_MAP} held {published:?} while the slow request ran, not its span {} {}",
        slow_span.trace_id,
        slow_span.span_id
    );
    assert!(published.len() <= 3, "{published:?}");

    // The hot function's samples, tagged or not.
    let (mut hot, mut tagged) = (0, 0);
    let mut tagged_spans = HashSet::new();
    for (name, profile) in read_profiles(dir.path()) {
        if !name.starts_with(SERVICE) {
            continue;
        }
        for sample in decode_samples(&profile) {
            if !sample.functions.iter().any(|f| f == HOT) {
                continue;
            }
            hot += sample.count;
            if let Some(id) = sample.labels.get("span_id") {
                let span = server_spans
                    .get(id.as_str())
                    .unwrap_or_else(|| panic!("span_id {id} is no server span of {SERVICE}"));
                assert_eq!(sample.labels.get("span_name"), Some(&span.name));
                assert_eq!(id.len(), 16);
                tagged += sample.count;
                tagged_spans.insert(id.clone());
            }
        }
    }
    assert!(hot >= 100, "only {hot} samples of {HOT}");
    assert!(
        tagged * 10 >= hot * 8,
        "{tagged} of {hot} samples of {HOT} carry their span id (want ≥ 80%)"
    );
    assert!(
        tagged_spans.len() >= 20,
        "{} spans tagged",
        tagged_spans.len()
    );

    // Every request logged a line on stdout inside its span; the failures one more on stderr.
    let logs = read_logs(dir.path());
    let done: Vec<_> = logs
        .iter()
        .filter(|l| l.0.contains("request done"))
        .collect();
    assert!(
        done.len() * 10 >= sent * 9,
        "{} log lines for {sent} requests",
        done.len()
    );
    let mut with_span = 0;
    for (body, trace_id, span_id, severity) in &done {
        assert_eq!(severity, "INFO", "{body}");
        if let Some(span) = server_spans.get(span_id.as_str()) {
            assert_eq!(trace_id, &span.trace_id);
            with_span += 1;
        }
    }
    assert!(
        with_span * 10 >= done.len() * 9,
        "{with_span} of {} log lines carry their request's span",
        done.len()
    );
    let errors: Vec<_> = logs
        .iter()
        .filter(|l| l.0.starts_with("ERROR request /fail"))
        .collect();
    assert_eq!(errors.len(), 2, "{errors:?}");
    for (body, trace_id, span_id, severity) in errors {
        assert_eq!(severity, "ERROR", "{body}");
        let span = server_spans
            .get(span_id.as_str())
            .expect("the failing request's span");
        assert_eq!(
            (span.trace_id.as_str(), span.status_code),
            (trace_id.as_str(), 2)
        );
    }
}
