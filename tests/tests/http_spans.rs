//! HTTP spans end to end with nothing but the agent, a Rust HTTP server (the benchmark's, from
//! xtask/workloads) and two clients of different make: this test's own std-only client (keep-alive,
//! one request with `traceparent`, one connection opened before the agent started) and curl, or
//! busybox wget where curl is missing. It needs no database and no Python, so the kernel matrix
//! runs it inside each VM (tests/vm/init) as well as on this host.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use loupe_tests::{
    Guard, SPAN_KIND_CLIENT, SPAN_KIND_SERVER, SpanRecord, agent_bin, http_get_raw,
    infra::free_port, read_spans, require_root, wait_port, wait_with_deadline,
};

const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const PARENT_ID: &str = "b7ad6b7169203331";
const SERVICE: &str = "http-workload";

/// Reads one HTTP/1.1 response with a Content-Length body; returns its status code.
fn read_response(reader: &mut BufReader<&TcpStream>) -> u16 {
    let mut status_line = String::new();
    reader.read_line(&mut status_line).expect("status line");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("header line");
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().expect("content-length");
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).expect("body");
    status
}

/// curl, else wget (busybox's in the VM): another HTTP client than ours. Returns the tool's name.
fn other_client(url: &str) -> &'static str {
    if let Ok(out) = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", url])
        .output()
    {
        assert_eq!(String::from_utf8_lossy(&out.stdout), "200", "curl {url}");
        return "curl";
    }
    let status = Command::new("wget")
        .args(["-q", "-O", "/dev/null", url])
        .status()
        .expect("neither curl nor wget can be run");
    assert!(status.success(), "wget {url}: {status}");
    "wget"
}

#[test]
fn requests_to_a_rust_server_become_linked_server_and_client_spans() {
    require_root();
    let (_server, addr) = loupe_tests::http_server(SERVICE);
    let port: u16 = addr
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");

    // A keep-alive connection opened before the agent starts: found in /proc at start-up.
    let early = TcpStream::connect(&addr).expect("connect early");
    early.set_nodelay(true).expect("nodelay");

    let dir = tempfile::tempdir().expect("tempdir");
    let metrics_port = free_port();
    let mut agent = Guard(
        Command::new(agent_bin())
            .args(["run", "--duration", "120s", "--profile-interval", "60s"])
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
            .arg("--output-dir")
            .arg(dir.path())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start agent"),
    );
    // The metrics endpoint comes up once the programs are attached and the connections open
    // before were looked up. Under emulation (the kernel matrix) start-up takes a while.
    wait_port(metrics_port, Duration::from_secs(90));

    // Our client: three requests on one keep-alive connection, the second with traceparent; each
    // head goes out in several writes (one per formatted piece). Reads and writes share the one
    // fd: a dup'ed fd (TcpStream::try_clone) is not tracked (see ARCHITECTURE.md).
    let stream = TcpStream::connect(&addr).expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let mut writer = &stream;
    let mut reader = BufReader::new(&stream);
    let requests = [
        ("/api/users/7", None, 200),
        (
            "/api/users/8",
            Some(format!("00-{TRACE_ID}-{PARENT_ID}-01")),
            200,
        ),
        ("/nope", None, 404),
    ];
    for (path, traceparent, expected) in &requests {
        let extra = traceparent
            .as_ref()
            .map(|t| format!("traceparent: {t}\r\n"))
            .unwrap_or_default();
        write!(writer, "GET {path} HTTP/1.1\r\nhost: {addr}\r\n{extra}\r\n").expect("write");
        assert_eq!(read_response(&mut reader), *expected, "GET {path}");
    }
    drop(reader);
    drop(stream);
    // The connection from before the agent started, twice. The server's thread for it has been
    // blocked in read() since before the programs were attached, so that one read is not seen
    // (a syscall is captured at its exit, with what its entry saved): the first request gets only
    // its client span, the second both.
    let mut early_writer = &early;
    let mut early_reader = BufReader::new(&early);
    for path in ["/api/users/11", "/api/users/12"] {
        write!(early_writer, "GET {path} HTTP/1.1\r\nhost: {addr}\r\n\r\n").expect("write early");
        assert_eq!(
            read_response(&mut early_reader),
            200,
            "GET {path} (early connection)"
        );
    }
    drop(early_reader);
    drop(early);
    // Another client implementation, one connection per request.
    let tool = other_client(&format!("http://{addr}/api/users/9"));
    other_client(&format!("http://{addr}/api/users/10"));
    // Server spans: ours, the early connection's second, curl's or wget's two.
    let served = requests.len() + 1 + 2;
    let sent = requests.len() + 2 + 2;

    // Give the span builder time to close the spans, read the RED metrics, then stop the agent
    // (SIGTERM flushes every sink).
    thread::sleep(Duration::from_secs(4));
    let metrics = http_get_raw(metrics_port, "/metrics");
    // SAFETY: kill(2) on our own child's pid, which has not been reaped yet.
    let rc = unsafe { libc::kill(agent.0.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let status = wait_with_deadline(&mut agent.0, Duration::from_secs(60));
    let mut stderr = String::new();
    if let Some(mut e) = agent.0.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    assert!(status.success(), "agent failed: {status}\n{stderr}");

    let spans = read_spans(dir.path());
    let servers: Vec<&SpanRecord> = spans
        .iter()
        .filter(|s| s.service == SERVICE && s.kind == SPAN_KIND_SERVER)
        .collect();
    let clients: Vec<&SpanRecord> = spans
        .iter()
        .filter(|s| s.kind == SPAN_KIND_CLIENT)
        .filter(|s| s.attributes.get("server.port") == Some(&port.to_string()))
        .collect();
    // On failure, every span in one line each.
    let all: Vec<String> = spans
        .iter()
        .map(|s| {
            let a = |k: &str| s.attributes.get(k).map(String::as_str).unwrap_or("-");
            format!(
                "{} kind={} {:?} path={} url={} status={} span={} parent={}",
                s.service,
                s.kind,
                s.name,
                a("url.path"),
                a("url.full"),
                a("http.response.status_code"),
                s.span_id,
                s.parent_span_id
            )
        })
        .collect();
    assert_eq!(
        servers.len(),
        served,
        "server spans: {servers:#?}\nall spans:\n{}\nagent said:\n{stderr}",
        all.join("\n")
    );
    assert_eq!(
        clients.len(),
        sent,
        "client spans to port {port} ({tool} and ours): {clients:#?}\nagent said:\n{stderr}"
    );

    // curl and wget live for milliseconds: gone before their spans are built, they are still
    // named (by the comm the kernel reported when they connected, or by /proc while alive: a
    // busybox applet's executable is busybox).
    for c in &clients {
        assert_ne!(c.service, "unknown_service", "{c:#?}");
    }
    // The early connection's client spans: found in /proc, followed like any other.
    for path in ["/api/users/11", "/api/users/12"] {
        assert!(
            clients.iter().any(|c| c
                .attributes
                .get("url.full")
                .is_some_and(|u| u.ends_with(path))),
            "no client span for {path} on the connection opened before the agent: {clients:#?}"
        );
    }
    assert!(
        clients
            .iter()
            .filter(|c| c.service == tool || c.service == "busybox")
            .count()
            == 2,
        "{clients:#?}"
    );

    let mut names: Vec<(&str, &str)> = servers
        .iter()
        .map(|s| {
            (
                s.name.as_str(),
                s.attributes
                    .get("http.response.status_code")
                    .map(String::as_str)
                    .unwrap_or(""),
            )
        })
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            ("GET /api/users/{id}", "200"),
            ("GET /api/users/{id}", "200"),
            ("GET /api/users/{id}", "200"),
            ("GET /api/users/{id}", "200"),
            ("GET /api/users/{id}", "200"),
            ("GET /nope", "404"),
        ]
    );
    for s in &servers {
        assert!(s.end_ns >= s.start_ns, "{s:#?}");
        // A 404 is the client's problem: no error on the server span.
        assert_ne!(s.status_code, 2, "{s:#?}");
        assert_eq!(
            s.attributes.get("server.port"),
            Some(&port.to_string()),
            "{s:#?}"
        );
        // Both ends are on this host: every server span is the child of the client span that
        // sent its request, in the same trace.
        let parent = clients
            .iter()
            .find(|c| c.span_id == s.parent_span_id)
            .unwrap_or_else(|| panic!("no client span is the parent of {s:#?}\n{clients:#?}"));
        assert_eq!(parent.trace_id, s.trace_id);
        assert!(parent.start_ns <= s.start_ns, "{parent:#?}\n{s:#?}");
        let path = s.attributes.get("url.path").expect("url.path");
        assert!(
            parent
                .attributes
                .get("url.full")
                .is_some_and(|u| u.ends_with(path.as_str())),
            "{parent:#?}\n{s:#?}"
        );
    }
    // The request that carried traceparent continues the caller's trace.
    let carried = servers
        .iter()
        .find(|s| s.attributes.get("url.path").map(String::as_str) == Some("/api/users/8"))
        .expect("span of /api/users/8");
    assert_eq!(carried.trace_id, TRACE_ID);
    let others: Vec<&&SpanRecord> = servers.iter().filter(|s| s.trace_id == TRACE_ID).collect();
    assert_eq!(others.len(), 1, "only one request carried the trace id");

    // RED: the server histogram counted every request.
    let count: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("http_server_request_duration_seconds_count"))
        .filter(|l| l.contains(SERVICE))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(count, served as f64, "{metrics}");
}
