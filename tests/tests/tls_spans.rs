//! TLS in clear through OpenSSL: an HTTPS server (Python's http.server over its ssl module) with
//! a certificate from a test CA, and two clients of different make (curl, and Python's urllib),
//! all on Debian's libssl3. With the agent's TLS probes (the default) the spans are those of
//! clear-text HTTP: server spans with routes and statuses and `url.scheme` https, client spans
//! with `url.full` https://…, each client span the parent of its server span. With `--tls=false`
//! the same traffic gives no HTTP span at all (so the test can fail).

use std::{path::Path, process::Command, time::Duration};

use loupe_tests::{
    Agent, Guard, SPAN_KIND_CLIENT, SPAN_KIND_SERVER, SpanRecord, agent_bin, infra::free_port,
    metric_value, read_spans, require_root, root, wait_port,
};

fn python() -> std::ffi::OsString {
    std::env::var_os("LOUPE_PYTHON").unwrap_or_else(|| "python3".into())
}

/// A CA and a server certificate for 127.0.0.1 signed by it, made with the openssl CLI.
fn make_certificates(dir: &Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl (Debian's openssl package; `cargo xtask setup` installs it)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=Loupe test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "1",
        "-extfile",
        "san.ext",
    ]);
}

/// Runs the server, the agent (with `agent_args`) and the clients; returns the spans written
/// and the agent's metrics.
fn run(agent_args: &[&str]) -> (Vec<SpanRecord>, String, u16) {
    let dir = tempfile::tempdir().expect("tempdir");
    make_certificates(dir.path());
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

    let out = dir.path().join("out");
    let mut cmd = Command::new(agent_bin());
    cmd.args(["run", "--page-faults=false"])
        .args(agent_args)
        .arg("--output-dir")
        .arg(&out);
    let agent = Agent::start(cmd, dir.path(), "agent");

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

    for (client, requests) in [("curl-client", 3), ("python-client", 2)] {
        let clients: Vec<&SpanRecord> = spans
            .iter()
            .filter(|s| s.kind == SPAN_KIND_CLIENT && s.service == client)
            .filter(ours)
            .collect();
        assert_eq!(clients.len(), requests, "{client}: {names:?}");
        for c in &clients {
            let url = c.attributes.get("url.full").cloned().unwrap_or_default();
            assert!(
                url.starts_with(&format!("https://127.0.0.1:{port}/")),
                "{client}: url.full {url:?}"
            );
            assert!(!url.contains("secret"), "no query values: {url}");
            let child = servers.iter().find(|s| s.parent_span_id == c.span_id);
            let child = child.unwrap_or_else(|| panic!("{client}'s span has no server child"));
            assert_eq!(child.trace_id, c.trace_id);
        }
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
