//! Payload bytes never leave the node, only parsed fields. Real clients send an `Authorization`
//! header, a cookie, credentials in the URL, a password in a query string, an SQL literal and a
//! Redis value; none of those bytes may appear in the spans, the RED metrics, the agent's own
//! log, or the attributes of the log lines it ships. (A log line's body is what the application
//! wrote, shipped as written, like any log collector; the test server logs its request path, so
//! the body is the one place a query string may legitimately appear.)

use std::{
    io::{Read, Write},
    net::TcpStream,
    process::{Command, Stdio},
    time::Duration,
};

use loupe_tests::{Agent, agent_bin, infra::infra, read_spans, require_root};

const SECRETS: [&str; 7] = [
    "BearerTok3nSecret",
    "C00kieSecretValue",
    "UrlPassw0rdSecret",
    "QueryPassw0rdSecret",
    "SqlL1teralSecret",
    "Red1sValueSecret",
    "XApiKeySecret",
];

fn redis(port: u16, args: &[&str]) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("redis");
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes()).expect("write");
    let mut reply = [0u8; 64];
    let n = s.read(&mut reply).expect("reply");
    assert!(n > 0);
}

#[test]
fn no_secret_byte_leaves_the_node() {
    require_root();
    let infra = infra();
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let mut agent = Command::new(agent_bin());
    agent
        .args(["run", "--profile-interval", "60s", "--output-dir"])
        .arg(&out)
        .env("LOUPE_LOG", "debug");
    let agent = Agent::start(agent, dir.path(), "agent");

    let (_server, http_port) = loupe_tests::span_server();
    let curl = |args: &[&str]| {
        let ok = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "--max-time", "10"])
            .args(args)
            .status()
            .expect("curl");
        assert!(ok.success(), "curl {args:?}");
    };
    curl(&[
        "-H",
        "Authorization: Bearer BearerTok3nSecret",
        "-H",
        "Cookie: session=C00kieSecretValue",
        "-H",
        "X-Api-Key: XApiKeySecret",
        &format!("http://127.0.0.1:{http_port}/work?password=QueryPassw0rdSecret&user=bob"),
    ]);
    curl(&[&format!(
        "http://admin:UrlPassw0rdSecret@127.0.0.1:{http_port}/login"
    )]);

    let mariadb = loupe_tests::infra::find_bin("mariadb").expect("mariadb client");
    let ok = Command::new(mariadb)
        .args(["-h", "127.0.0.1", "-P", &infra.mysql_port.to_string()])
        .args(["-ushop", "-pshop", "-e"])
        .arg("SELECT 'SqlL1teralSecret' AS x, 42 AS y")
        .stdout(Stdio::null())
        .status()
        .expect("mariadb");
    assert!(ok.success());
    redis(
        infra.redis_port,
        &["SET", "loupe:secret", "Red1sValueSecret"],
    );

    // Everything parsed, then flushed on SIGTERM.
    std::thread::sleep(Duration::from_secs(2));
    let metrics = loupe_tests::http_get_raw(agent.port, "/metrics");
    let (status, log) = agent.stop(Duration::from_secs(60));
    assert!(status.success(), "{log}");

    // The exchanges were seen: otherwise "no secret" would prove nothing.
    let spans = read_spans(&out);
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    assert!(names.iter().any(|n| n.contains("/work")), "{names:?}");
    assert!(names.iter().any(|n| n.contains("/login")), "{names:?}");
    assert!(names.iter().any(|n| n.starts_with("SELECT")), "{names:?}");
    assert!(names.iter().any(|n| n.starts_with("SET")), "{names:?}");

    let traces = std::fs::read_to_string(out.join("traces.jsonl")).unwrap_or_default();
    // Log lines: every field but the body the application wrote.
    let logs = std::fs::read_to_string(out.join("logs.jsonl")).unwrap_or_default();
    let mut log_fields = String::new();
    for line in logs.lines().filter(|l| !l.trim().is_empty()) {
        let mut v: serde_json::Value = serde_json::from_str(line).expect("logs.jsonl is JSON");
        strip_bodies(&mut v);
        log_fields.push_str(&v.to_string());
    }
    for (what, text) in [
        ("spans", &traces),
        ("/metrics", &metrics),
        ("the agent's log", &log),
        ("log attributes", &log_fields),
    ] {
        for secret in SECRETS {
            assert!(!text.contains(secret), "{secret} in {what}");
        }
    }
    // Nor anywhere else the agent wrote (profiles are binary: searched as bytes).
    for entry in walk(&out) {
        if entry.ends_with("logs.jsonl") {
            continue;
        }
        let bytes = std::fs::read(&entry).expect("read");
        let bytes = if entry.extension().is_some_and(|e| e == "gz") {
            let mut d = flate2::read::GzDecoder::new(&bytes[..]);
            let mut v = Vec::new();
            d.read_to_end(&mut v).expect("gunzip");
            v
        } else {
            bytes
        };
        for secret in SECRETS {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{secret} in {}",
                entry.display()
            );
        }
    }
}

/// Removes every `body` of an OTLP/JSON log record.
fn strip_bodies(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            map.remove("body");
            map.values_mut().for_each(strip_bodies);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(strip_bodies),
        _ => {}
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}
