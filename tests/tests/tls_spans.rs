//! TLS in clear through OpenSSL: an HTTPS server (Python's http.server over its ssl module) with
//! a certificate from a test CA, and two clients of different make (curl, and Python's
//! http.client), and Redis over TLS (redis-server and redis-cli),
//! all on Debian's libssl3. With the agent's TLS probes (the default) the spans are those of
//! clear-text HTTP: server spans with routes and statuses and `url.scheme` https, client spans
//! with `url.full` https://…, each client span the parent of its server span. With `--tls=false`
//! the same traffic gives no HTTP span at all (so the test can fail). Redis commands from
//! redis-cli, and MySQL queries from PyMySQL to the test MariaDB over TLS, give the client spans
//! of clear text, without their values or literals.
//!
//! Go's own TLS stack (crypto/tls, no OpenSSL): a Go HTTPS server and client
//! (tests/workloads/go_tls) over HTTP/1.1 and HTTP/2 give the same spans through the Go probes,
//! and none with `--tls=false`.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use loupe_tests::{
    Agent, Guard, SPAN_KIND_CLIENT, SPAN_KIND_SERVER, SpanRecord, agent_bin, infra::free_port,
    infra::make_test_certificates, metric_value, read_spans, require_root, root, wait_port,
};

fn python() -> std::ffi::OsString {
    std::env::var_os("LOUPE_PYTHON").unwrap_or_else(|| "python3".into())
}

/// The agent with network spans (TLS probes on by default) and `args`, writing to `dir/out`.
fn start_agent(dir: &Path, args: &[&str]) -> (Agent, PathBuf) {
    let out = dir.join("out");
    let mut cmd = Command::new(agent_bin());
    cmd.args(["run", "--page-faults=false"])
        .args(args)
        .arg("--output-dir")
        .arg(&out);
    (Agent::start(cmd, dir, "agent"), out)
}

/// Runs the server, the agent (with `agent_args`) and the clients; returns the spans written
/// and the agent's metrics.
fn run(agent_args: &[&str]) -> (Vec<SpanRecord>, String, u16) {
    let dir = tempfile::tempdir().expect("tempdir");
    make_test_certificates(dir.path());
    let port = free_port();
    let server = Command::new(python())
        .arg(root().join("tests/workloads/tls_server.py"))
        .arg(port.to_string())
        .args(["server.pem", "server.key"])
        .current_dir(dir.path())
        .env("OTEL_SERVICE_NAME", "tls-server")
        .spawn()
        .expect("start the TLS server");
    let _server = Guard(server);
    wait_port(port, Duration::from_secs(20));

    let (agent, out) = start_agent(dir.path(), agent_args);

    let base = format!("https://127.0.0.1:{port}");
    for path in ["/hello/1?token=secret", "/hello/2", "/missing"] {
        let status = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(dir.path().join("ca.pem"))
            .arg(format!("{base}{path}"))
            .env("OTEL_SERVICE_NAME", "curl-client")
            .output()
            .expect("curl");
        let code = String::from_utf8_lossy(&status.stdout).to_string();
        assert_eq!(
            code,
            if path == "/missing" { "404" } else { "200" },
            "{path}"
        );
    }
    // Python's client: two requests on one kept-alive connection.
    let script = format!(
        "import http.client, ssl\n\
         c = http.client.HTTPSConnection('127.0.0.1', {port}, \
         context=ssl.create_default_context(cafile='ca.pem'))\n\
         for p in ('/hello/3', '/hello/4'):\n    \
         c.request('GET', p); r = c.getresponse(); r.read(); assert r.status == 200\n"
    );
    let py = Command::new(python())
        .args(["-c", &script])
        .current_dir(dir.path())
        .env("OTEL_SERVICE_NAME", "python-client")
        .status()
        .expect("python client");
    assert!(py.success());

    std::thread::sleep(Duration::from_secs(2));
    let metrics = agent.metrics();
    let (status, stderr) = agent.stop(Duration::from_secs(30));
    assert!(status.success(), "{stderr}");
    (read_spans(&out), metrics, port)
}

#[test]
fn https_requests_become_the_spans_of_clear_text_http() {
    require_root();
    let (spans, metrics, port) = run(&[]);
    let port_text = port.to_string();
    let ours = |s: &&SpanRecord| {
        s.attributes.get("server.port") == Some(&port_text)
            || s.attributes.get("network.peer.port") == Some(&port_text)
    };
    // Only this test's port: a parallel test's traffic is on the same host.
    let servers: Vec<&SpanRecord> = spans
        .iter()
        .filter(|s| s.kind == SPAN_KIND_SERVER && s.service == "tls-server")
        .filter(ours)
        .collect();
    let names: Vec<(&str, &str)> = spans
        .iter()
        .map(|s| (s.service.as_str(), s.name.as_str()))
        .collect();
    assert_eq!(servers.len(), 5, "one server span per request: {names:?}");
    for s in &servers {
        assert_eq!(
            s.attributes.get("url.scheme").map(String::as_str),
            Some("https")
        );
    }
    let route = |name: &str| servers.iter().filter(|s| s.name == name).count();
    assert_eq!(route("GET /hello/{id}"), 4, "{names:?}");
    assert_eq!(route("GET /missing"), 1, "{names:?}");
    let missing = servers.iter().find(|s| s.name == "GET /missing").unwrap();
    assert_eq!(
        missing
            .attributes
            .get("http.response.status_code")
            .map(String::as_str),
        Some("404")
    );

    // Clients by this test's port, whatever their names: curl exits before the agent reads its
    // environment (then it is named by its command), Python's runs a little longer.
    let clients: Vec<&SpanRecord> = spans
        .iter()
        .filter(|s| s.kind == SPAN_KIND_CLIENT)
        .filter(ours)
        .collect();
    assert_eq!(clients.len(), 5, "3 from curl, 2 from Python: {names:?}");
    for client in ["curl", "python"] {
        assert!(
            clients.iter().any(|c| c.service.starts_with(client)),
            "{client}: {names:?}"
        );
    }
    for c in &clients {
        let url = c.attributes.get("url.full").cloned().unwrap_or_default();
        assert!(
            url.starts_with(&format!("https://127.0.0.1:{port}/")),
            "{}: url.full {url:?}",
            c.service
        );
        assert!(!url.contains("secret"), "no query values: {url}");
        let child = servers.iter().find(|s| s.parent_span_id == c.span_id);
        let child = child.unwrap_or_else(|| panic!("{}'s span has no server child", c.service));
        assert_eq!(child.trace_id, c.trace_id);
    }
    assert_eq!(
        metric_value(
            &metrics,
            "loupe_attach_method{method=\"uprobe\",program=\"tls\"}"
        ),
        1.0
    );
    // Four client connections and their four server ends, at least.
    let tls = metric_value(&metrics, "loupe_spans_tls_connections_total");
    assert!(tls >= 8.0, "connections read in clear: {tls}");
}

#[test]
fn without_the_tls_probes_the_same_traffic_gives_no_http_span() {
    require_root();
    let (spans, metrics, port) = run(&["--tls=false"]);
    let port_text = port.to_string();
    let http: Vec<&SpanRecord> = spans
        .iter()
        .filter(|s| {
            s.attributes.get("server.port") == Some(&port_text)
                || s.attributes.get("network.peer.port") == Some(&port_text)
        })
        .collect();
    assert!(http.is_empty(), "{http:?}");
    assert!(
        metric_value(
            &metrics,
            "loupe_spans_connections_detected_total{protocol=\"tls\"}"
        ) >= 5.0,
        "the connections are seen, as TLS"
    );
    assert!(!metrics.contains("program=\"tls\""));
}

/// Redis over TLS (Debian's redis-server and redis-cli are built with OpenSSL): the client's
/// commands come out as the Redis client spans of clear text.
#[test]
fn redis_over_tls_gives_the_client_spans_of_clear_text() {
    require_root();
    let redis = loupe_tests::infra::find_bin("redis-server").unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().expect("tempdir");
    make_test_certificates(dir.path());
    let port = free_port();
    let server = Command::new(redis)
        .args(["--port", "0", "--tls-port", &port.to_string()])
        .args([
            "--tls-cert-file",
            "server.pem",
            "--tls-key-file",
            "server.key",
        ])
        .args(["--tls-ca-cert-file", "ca.pem", "--tls-auth-clients", "no"])
        .args(["--save", "", "--appendonly", "no"])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start redis-server with TLS");
    let _server = Guard(server);
    wait_port(port, Duration::from_secs(20));

    let (agent, out) = start_agent(dir.path(), &[]);
    for args in [
        &["SET", "tls:key", "secret-value"][..],
        &["GET", "tls:key"],
        &["DEL", "tls:key"],
    ] {
        let status = Command::new("redis-cli")
            .args(["--tls", "--cacert", "ca.pem", "-h", "127.0.0.1", "-p"])
            .arg(port.to_string())
            .args(args)
            .current_dir(dir.path())
            .env("OTEL_SERVICE_NAME", "redis-tls-client")
            .stdout(std::process::Stdio::null())
            .status()
            .expect("redis-cli (Debian's redis-tools)");
        assert!(status.success(), "redis-cli {args:?}");
    }
    std::thread::sleep(Duration::from_secs(2));
    let (status, stderr) = agent.stop(Duration::from_secs(30));
    assert!(status.success(), "{stderr}");

    let spans = read_spans(&out);
    let port_text = port.to_string();
    let ops: Vec<String> = spans
        .iter()
        .filter(|s| s.kind == SPAN_KIND_CLIENT)
        .filter(|s| {
            s.attributes.get("server.port") == Some(&port_text)
                || s.attributes.get("network.peer.port") == Some(&port_text)
        })
        .filter(|s| s.attributes.get("db.system.name").map(String::as_str) == Some("redis"))
        .filter_map(|s| s.attributes.get("db.operation.name").cloned())
        .collect();
    let names: Vec<(&str, &str)> = spans
        .iter()
        .map(|s| (s.service.as_str(), s.name.as_str()))
        .collect();
    for op in ["SET", "GET", "DEL"] {
        assert!(
            ops.iter().any(|o| o == op),
            "no Redis {op} span from redis-cli over TLS: {ops:?}\n{names:?}"
        );
    }
    // Values never leave the node, in clear or not.
    let written = std::fs::read_to_string(out.join("traces.jsonl")).unwrap_or_default();
    assert!(!written.contains("secret-value"));
}

/// A libssl no process mapped when the agent started (a container image run for the first
/// time, here a copy of the host's library loaded through LD_LIBRARY_PATH) is found at a later
/// drain and probed: the client that loaded it, waiting past a drain before its requests, gets
/// its HTTPS client spans.
#[test]
fn a_library_mapped_after_the_start_is_probed_at_the_next_drain() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    make_test_certificates(dir.path());
    let host_lib = [
        "/usr/lib/x86_64-linux-gnu/libssl.so.3",
        "/usr/lib64/libssl.so.3",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    .expect("the host's libssl.so.3 (Debian's libssl3)");
    let libs = dir.path().join("lib");
    std::fs::create_dir(&libs).unwrap();
    std::fs::copy(host_lib, libs.join("libssl.so.3")).expect("copy libssl");

    let port = free_port();
    let server = Command::new(python())
        .arg(root().join("tests/workloads/tls_server.py"))
        .arg(port.to_string())
        .args(["server.pem", "server.key"])
        .current_dir(dir.path())
        .spawn()
        .expect("start the TLS server");
    let _server = Guard(server);
    wait_port(port, Duration::from_secs(20));

    let (agent, out) = start_agent(dir.path(), &["--profile-interval", "1s"]);
    // Loads the copy at once (import ssl), then waits past a few drains.
    let script = format!(
        "import http.client, ssl, time\n\
         ctx = ssl.create_default_context(cafile='ca.pem')\n\
         time.sleep(4)\n\
         c = http.client.HTTPSConnection('127.0.0.1', {port}, context=ctx)\n\
         for p in ('/late/1', '/late/2'):\n    \
         c.request('GET', p); r = c.getresponse(); r.read(); assert r.status == 200\n"
    );
    let client = Command::new(python())
        .args(["-c", &script])
        .current_dir(dir.path())
        .env("LD_LIBRARY_PATH", &libs)
        .status()
        .expect("python client");
    assert!(client.success());
    std::thread::sleep(Duration::from_secs(2));
    let (status, stderr) = agent.stop(Duration::from_secs(30));
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("{}", libs.join("libssl.so.3").display())),
        "the copy is probed: {stderr}"
    );
    let port_text = port.to_string();
    let spans = read_spans(&out);
    let late: Vec<&SpanRecord> = spans
        .iter()
        .filter(|s| s.kind == SPAN_KIND_CLIENT)
        .filter(|s| s.attributes.get("server.port") == Some(&port_text))
        .collect();
    assert_eq!(
        late.len(),
        2,
        "client spans through the late library: {late:?}"
    );
}

/// MySQL over TLS: PyMySQL (Python's ssl module, OpenSSL) to the test MariaDB, which has a
/// certificate. The session is encrypted (the server says which cipher), and its queries come
/// out as the MySQL client spans of clear text, their literals still replaced by `?`.
#[test]
fn mysql_over_tls_gives_sanitized_client_spans() {
    require_root();
    let infra = loupe_tests::infra::infra();
    let dir = tempfile::tempdir().expect("tempdir");
    let (agent, out) = start_agent(dir.path(), &[]);
    let script = format!(
        "import pymysql\n\
         c = pymysql.connect(host='127.0.0.1', port={port}, user='shop', password='shop', \
         ssl={{'ca': {ca:?}}})\n\
         cur = c.cursor()\n\
         cur.execute(\"SHOW SESSION STATUS LIKE 'Ssl_cipher'\")\n\
         cipher = cur.fetchone()[1]\n\
         assert cipher, 'the session is not encrypted'\n\
         for i in range(3):\n    \
         cur.execute(\"SELECT 'tls-literal-%d' AS v, 4217 AS n\" % i); cur.fetchall()\n\
         print(cipher)\n",
        port = infra.mysql_port,
        ca = infra.mysql_ca.display().to_string(),
    );
    let py = Command::new(python())
        .args(["-c", &script])
        .output()
        .expect("python client");
    assert!(
        py.status.success(),
        "{}",
        String::from_utf8_lossy(&py.stderr)
    );
    std::thread::sleep(Duration::from_secs(2));
    let (status, stderr) = agent.stop(Duration::from_secs(30));
    assert!(status.success(), "{stderr}");

    let port_text = infra.mysql_port.to_string();
    let spans = read_spans(&out);
    let queries: Vec<&String> = spans
        .iter()
        .filter(|s| s.kind == SPAN_KIND_CLIENT)
        .filter(|s| s.attributes.get("server.port") == Some(&port_text))
        .filter(|s| s.attributes.get("db.system.name").map(String::as_str) == Some("mysql"))
        .filter_map(|s| s.attributes.get("db.query.text"))
        .collect();
    let selects = queries
        .iter()
        .filter(|q| q.as_str() == "SELECT ? AS v, ? AS n")
        .count();
    assert_eq!(
        selects,
        3,
        "three sanitized SELECTs over TLS (cipher {}): {queries:?}",
        String::from_utf8_lossy(&py.stdout).trim()
    );
    let written = std::fs::read_to_string(out.join("traces.jsonl")).unwrap_or_default();
    assert!(
        !written.contains("tls-literal"),
        "no literal leaves the node"
    );
}

/// Go's crypto/tls: the Go HTTPS server (tests/workloads/go_tls, started before the agent) and
/// its Go client (same executable, started after: its probes are already on the file), over
/// HTTP/1.1 and over HTTP/2. Returns the spans on the server's port and the agent's metrics.
fn go_run(agent_args: &[&str]) -> (Vec<SpanRecord>, String, u16) {
    let dir = tempfile::tempdir().expect("tempdir");
    make_test_certificates(dir.path());
    let port = free_port();
    let go_tls = loupe_tests::workload("go_tls");
    let server = Command::new(&go_tls)
        .args([
            "serve",
            &format!("127.0.0.1:{port}"),
            "server.pem",
            "server.key",
        ])
        .current_dir(dir.path())
        .env("OTEL_SERVICE_NAME", "go-tls-server")
        // Its log (a handshake error for each readiness probe) to a file: on the test's stderr
        // it splits the harness's `test … ok` lines, which the kernel matrix parses.
        .stderr(std::fs::File::create(dir.path().join("server.stderr")).expect("server log"))
        .spawn()
        .expect("start go_tls (built by `cargo xtask test` with Debian's golang-go)");
    let _server = Guard(server);
    wait_port(port, Duration::from_secs(20));

    let (agent, out) = start_agent(dir.path(), agent_args);
    for proto in ["h1", "h2"] {
        let status = Command::new(&go_tls)
            .args([
                "call",
                &format!("https://127.0.0.1:{port}"),
                "ca.pem",
                proto,
                "3",
            ])
            .current_dir(dir.path())
            .env("OTEL_SERVICE_NAME", "go-tls-client")
            .status()
            .expect("go_tls call");
        assert!(status.success(), "the Go client over {proto}");
    }
    std::thread::sleep(Duration::from_secs(2));
    let metrics = agent.metrics();
    let (status, stderr) = agent.stop(Duration::from_secs(30));
    assert!(status.success(), "{stderr}");
    let port_text = port.to_string();
    let spans = read_spans(&out)
        .into_iter()
        .filter(|s| {
            s.attributes.get("server.port") == Some(&port_text)
                || s.attributes.get("network.peer.port") == Some(&port_text)
        })
        .collect();
    (spans, metrics, port)
}

#[test]
fn go_crypto_tls_over_http1_and_http2_gives_the_spans_of_clear_text() {
    require_root();
    let (spans, metrics, port) = go_run(&[]);
    let names: Vec<(&str, i64, &str)> = spans
        .iter()
        .map(|s| (s.service.as_str(), s.kind, s.name.as_str()))
        .collect();
    let attr = |s: &SpanRecord, k: &str| s.attributes.get(k).cloned().unwrap_or_default();
    let servers: Vec<&SpanRecord> = spans
        .iter()
        .filter(|s| s.kind == SPAN_KIND_SERVER && s.service == "go-tls-server")
        .collect();
    // 3 calls and a 404 per protocol.
    assert_eq!(servers.len(), 8, "one server span per request: {names:?}");
    for proto in ["h1", "h2"] {
        let version = if proto == "h1" { "1.1" } else { "2" };
        for i in 1..=3 {
            let path = format!("/hello/{proto}-{i}");
            let s = servers
                .iter()
                .find(|s| attr(s, "url.path") == path)
                .unwrap_or_else(|| panic!("no server span for {path}: {names:?}"));
            assert_eq!(attr(s, "network.protocol.version"), version, "{path}");
            assert_eq!(attr(s, "http.response.status_code"), "200", "{path}");
            assert_eq!(attr(s, "url.scheme"), "https", "{path}");
        }
        let missing = servers
            .iter()
            .filter(|s| attr(s, "url.path") == "/missing")
            .filter(|s| attr(s, "network.protocol.version") == version)
            .count();
        assert_eq!(missing, 1, "one 404 over {proto}: {names:?}");
    }
    assert!(
        servers
            .iter()
            .filter(|s| attr(s, "url.path") == "/missing")
            .all(|s| attr(s, "http.response.status_code") == "404")
    );

    // Clients: the short-lived client may be named by its command rather than its environment.
    let clients: Vec<&SpanRecord> = spans
        .iter()
        .filter(|s| s.kind == SPAN_KIND_CLIENT)
        .collect();
    assert_eq!(clients.len(), 8, "one client span per request: {names:?}");
    for c in &clients {
        let url = attr(c, "url.full");
        assert!(
            url.starts_with(&format!("https://127.0.0.1:{port}/")),
            "url.full {url:?}"
        );
        let child = servers
            .iter()
            .find(|s| s.parent_span_id == c.span_id)
            .unwrap_or_else(|| panic!("{url}: the client span has no server child"));
        assert_eq!(child.trace_id, c.trace_id);
        assert!(
            url.ends_with(&attr(child, "url.path")),
            "{url} → {}",
            child.name
        );
    }
    assert_eq!(
        metric_value(
            &metrics,
            "loupe_attach_method{method=\"uprobe\",program=\"go_tls\"}"
        ),
        1.0
    );
    assert!(metric_value(&metrics, "loupe_go_tls_executables_probed") >= 1.0);
}

#[test]
fn without_the_tls_probes_go_https_gives_no_http_span() {
    require_root();
    let (spans, metrics, _) = go_run(&["--tls=false"]);
    assert!(spans.is_empty(), "{spans:?}");
    assert!(!metrics.contains("program=\"go_tls\""));
}
