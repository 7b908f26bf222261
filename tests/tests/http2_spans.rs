//! HTTP/2 and gRPC spans from real peers on loopback:
//! - gRPC: grpcio's server and client (gRPC's C core, its own HTTP/2 and HPACK): unary calls,
//!   server streaming, eight calls in flight at once on one connection, a NOT_FOUND and a
//!   deadline exceeded. One server and one client span per call, named
//!   `{rpc.service}/{rpc.method}`, with the status codes the client saw, each server span the
//!   child of its own client span (no crossed streams), and RED counts equal to the calls made.
//! - gRPC: a tonic server and client in this process (hyper's h2: every string Huffman-coded,
//!   the dynamic table used), OTLP's generated TraceService: OK, NOT_FOUND, a deadline, eight
//!   calls in flight; statuses as the client saw them, each server span its own client's child.
//!   Needing nothing but the test binary, it runs in the kernel matrix too.
//! - A gRPC connection opened before the agent: calls to methods first called after it started
//!   are named; a method whose path sits in the HPACK table from before is `grpc`, never a wrong
//!   name, and no status code is ever wrong.
//! - h2c: nghttp against nghttpd (nghttp2, prior knowledge), three concurrent streams on one
//!   connection: spans with methods, routes and statuses, `network.protocol.version` 2.
//! - h2c by upgrade (`Upgrade: h2c`, answered by 101): curl `--http2` and `nghttp -u` against
//!   a Python server on hyper-h2 that answers the asking request on stream 1 in the same write
//!   as the 101: server and client spans for the upgraded request and for the stream after it,
//!   with their statuses.
//! - HTTP/2 over TLS: curl against nghttpd with a certificate from a test CA, ALPN h2, read in
//!   clear through the OpenSSL probes: the same spans, `url.scheme` https.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use loupe_tests::{
    Agent, Guard, SPAN_KIND_CLIENT, SPAN_KIND_SERVER, SpanRecord, agent_bin, infra::free_port,
    infra::make_test_certificates, metric_value, read_spans, require_root, root, wait_port,
};

fn python() -> std::ffi::OsString {
    std::env::var_os("LOUPE_PYTHON").unwrap_or_else(|| "python3".into())
}

fn grpc_pair() -> PathBuf {
    root().join("tests/workloads/grpc_pair.py")
}

/// Lets the agent flush what it saw, stops it, and reads the spans it wrote to `out`.
fn stop_and_read(agent: Agent, out: &Path) -> Vec<SpanRecord> {
    std::thread::sleep(Duration::from_secs(2));
    let (status, stderr) = agent.stop(Duration::from_secs(30));
    assert!(status.success(), "{stderr}");
    read_spans(out)
}

/// An expected nghttpd server span: (name, status, scheme, HTTP version 2).
fn row(name: &str, code: &str, scheme: &str) -> (String, String, String, String) {
    (name.into(), code.into(), scheme.into(), "2".into())
}

fn start_agent(dir: &Path) -> (Agent, PathBuf) {
    let out = dir.join("out");
    let mut cmd = Command::new(agent_bin());
    cmd.args(["run", "--page-faults=false"])
        .arg("--output-dir")
        .arg(&out);
    (Agent::start(cmd, dir, "agent"), out)
}

/// The gRPC server, named `name` (tests running at once each see the other's traffic: their RED
/// series are told apart by service name).
fn grpc_server(port: u16, name: &str) -> Guard {
    let server = Command::new(python())
        .arg(grpc_pair())
        .args(["server", &port.to_string()])
        .env("OTEL_SERVICE_NAME", name)
        .spawn()
        .expect("start the gRPC server");
    let guard = Guard(server);
    wait_port(port, Duration::from_secs(30));
    guard
}

/// Runs the gRPC client with `plan`; returns its lines (`METHOD CODE`).
fn grpc_client(port: u16, plan: &str, name: &str) -> Vec<String> {
    let out = Command::new(python())
        .arg(grpc_pair())
        .args(["client", &port.to_string(), plan])
        .env("OTEL_SERVICE_NAME", name)
        .output()
        .expect("gRPC client");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Spans of `kind` on `port` (server end or peer), so that a parallel test's traffic is left
/// out.
fn on_port(spans: &[SpanRecord], port: u16, kind: i64) -> Vec<&SpanRecord> {
    let port = port.to_string();
    spans
        .iter()
        .filter(|s| {
            s.kind == kind
                && (s.attributes.get("server.port") == Some(&port)
                    || s.attributes.get("network.peer.port") == Some(&port))
        })
        .collect()
}

/// Each server span is the child of a client span of the same call (same name and trace), and
/// no two share a parent: multiplexed streams were not crossed.
fn assert_own_parents(servers: &[&SpanRecord], clients: &[&SpanRecord]) {
    let by_id: HashMap<&str, &SpanRecord> =
        clients.iter().map(|c| (c.span_id.as_str(), *c)).collect();
    let mut parents = std::collections::HashSet::new();
    for s in servers {
        let parent = by_id
            .get(s.parent_span_id.as_str())
            .unwrap_or_else(|| panic!("{} has no client parent", s.name));
        assert_eq!(parent.name, s.name);
        assert_eq!(parent.trace_id, s.trace_id);
        assert!(parents.insert(s.parent_span_id.clone()), "{}", s.name);
    }
}

fn attr<'a>(s: &'a SpanRecord, key: &str) -> Option<&'a str> {
    s.attributes.get(key).map(String::as_str)
}

fn count_by_name(spans: &[&SpanRecord]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for s in spans {
        *m.entry(s.name.clone()).or_default() += 1;
    }
    m
}

#[test]
fn grpc_calls_become_rpc_spans_with_statuses_and_their_own_parents() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let _server = grpc_server(port, "inventory-red");
    let (agent, out) = start_agent(dir.path());
    let lines = grpc_client(port, "reserve,check,slow,list,concurrent", "frontend-red");
    assert_eq!(lines.len(), 12, "{lines:?}");
    std::thread::sleep(Duration::from_secs(2));
    let metrics = agent.metrics();
    let spans = stop_and_read(agent, &out);
    let servers = on_port(&spans, port, SPAN_KIND_SERVER);
    let clients = on_port(&spans, port, SPAN_KIND_CLIENT);
    let want: HashMap<String, usize> = [
        ("shop.Inventory/Reserve", 9),
        ("shop.Inventory/Check", 1),
        ("shop.Inventory/Slow", 1),
        ("shop.Inventory/List", 1),
    ]
    .into_iter()
    .map(|(n, c)| (n.to_owned(), c))
    .collect();
    assert_eq!(count_by_name(&servers), want, "server spans");
    assert_eq!(count_by_name(&clients), want, "client spans");
    // The status codes the client printed: OK 0, NOT_FOUND 5, DEADLINE_EXCEEDED 4.
    for s in servers.iter().chain(&clients) {
        assert_eq!(attr(s, "rpc.system"), Some("grpc"));
        assert_eq!(attr(s, "rpc.service"), Some("shop.Inventory"));
        let code = match s.name.as_str() {
            "shop.Inventory/Check" => "5",
            "shop.Inventory/Slow" => "4",
            _ => "0",
        };
        assert_eq!(attr(s, "rpc.grpc.status_code"), Some(code), "{}", s.name);
        let error = s.status_code == 2;
        // NOT_FOUND is an error on the client only; DEADLINE_EXCEEDED on both ends.
        let want_error = code == "4" || (code == "5" && s.kind == SPAN_KIND_CLIENT);
        assert_eq!(error, want_error, "{} kind {}", s.name, s.kind);
    }
    assert!(
        servers
            .iter()
            .all(|s| s.service == "inventory-red" && s.end_ns >= s.start_ns)
    );
    assert_own_parents(&servers, &clients);
    // RED: one observation per call, by method and status.
    let series = |kind: &str, method: &str, code: &str| {
        metric_value(
            &metrics,
            &format!(
                "rpc_{kind}_duration_seconds_count{{rpc_grpc_status_code=\"{code}\",rpc_method=\"{method}\",rpc_service=\"shop.Inventory\",service_name=\"{}\"}}",
                if kind == "server" {
                    "inventory-red"
                } else {
                    "frontend-red"
                }
            ),
        )
    };
    for kind in ["server", "client"] {
        assert_eq!(series(kind, "Reserve", "0"), 9.0, "{kind}\n{metrics}");
        assert_eq!(series(kind, "Check", "5"), 1.0, "{kind}");
        assert_eq!(series(kind, "Slow", "4"), 1.0, "{kind}");
        assert_eq!(series(kind, "List", "0"), 1.0, "{kind}");
    }
    assert_eq!(
        metric_value(
            &metrics,
            "loupe_spans_parser_desyncs_total{protocol=\"http2\"}"
        ),
        0.0
    );
}

#[test]
fn a_grpc_connection_open_before_the_agent_is_never_misnamed() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let _server = grpc_server(port, "inventory");
    let go = dir.path().join("go");
    // One Reserve call, then the client waits (same channel, same connection) for the agent.
    let client = Command::new(python())
        .arg(grpc_pair())
        .args([
            "client",
            &port.to_string(),
            "reserve,check,list,reserve",
            "--wait",
        ])
        .arg(&go)
        .env("OTEL_SERVICE_NAME", "frontend")
        .stdout(Stdio::piped())
        .spawn()
        .expect("gRPC client");
    let mut client = Guard(client);
    let mut stdout = client.0.stdout.take().expect("client stdout");
    std::thread::sleep(Duration::from_secs(2));
    let (agent, out) = start_agent(dir.path());
    std::fs::write(&go, b"").expect("go file");
    let mut output = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut output).expect("client output");
    assert_eq!(output.lines().count(), 5, "{output}");
    let spans = stop_and_read(agent, &out);
    let servers = on_port(&spans, port, SPAN_KIND_SERVER);
    let names = count_by_name(&servers);
    // Four calls after the agent started; Reserve's path was learned by the peers before it.
    assert_eq!(servers.len(), 4, "{names:?}");
    assert_eq!(names.get("shop.Inventory/Check"), Some(&1), "{names:?}");
    assert_eq!(names.get("shop.Inventory/List"), Some(&1), "{names:?}");
    for s in &servers {
        assert!(
            ["shop.Inventory/Check", "shop.Inventory/List", "grpc"].contains(&s.name.as_str()),
            "{names:?}"
        );
        if let Some(code) = attr(s, "rpc.grpc.status_code") {
            let want = if s.name == "shop.Inventory/Check" {
                "5"
            } else {
                "0"
            };
            assert_eq!(code, want, "{}", s.name);
        }
    }
}

/// nghttpd serving `dir/www` (`a` and `b`), with TLS when `tls` (the test CA's certificate).
fn nghttpd(dir: &Path, port: u16, tls: bool) -> Guard {
    let www = dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("a"), b"hello\n").unwrap();
    std::fs::write(www.join("b"), b"world\n").unwrap();
    let mut cmd = Command::new("nghttpd");
    cmd.arg("-d").arg(&www).current_dir(dir);
    if tls {
        cmd.args([&port.to_string(), "server.key", "server.pem"]);
    } else {
        cmd.args(["--no-tls", &port.to_string()]);
    }
    let guard = Guard(cmd.stdout(Stdio::null()).spawn().expect("start nghttpd"));
    wait_port(port, Duration::from_secs(20));
    guard
}

/// The server spans of nghttpd on `port`: (name, status, scheme, version).
fn nghttpd_spans(spans: &[SpanRecord], port: u16) -> Vec<(String, String, String, String)> {
    let mut v: Vec<_> = on_port(spans, port, SPAN_KIND_SERVER)
        .into_iter()
        .map(|s| {
            let a = |k| attr(s, k).unwrap_or_default().to_owned();
            (
                s.name.clone(),
                a("http.response.status_code"),
                a("url.scheme"),
                a("network.protocol.version"),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn h2c_streams_from_nghttp_become_http2_spans() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let _server = nghttpd(dir.path(), port, false);
    let (agent, out) = start_agent(dir.path());
    let base = format!("http://127.0.0.1:{port}");
    let status = Command::new("nghttp")
        .arg("-n")
        .args(["/a", "/b", "/missing"].map(|p| format!("{base}{p}")))
        .status()
        .expect("nghttp");
    assert!(status.success());
    let spans = stop_and_read(agent, &out);
    let s = |name: &str, code: &str| row(name, code, "http");
    assert_eq!(
        nghttpd_spans(&spans, port),
        [
            s("GET /a", "200"),
            s("GET /b", "200"),
            s("GET /missing", "404")
        ]
    );
    let clients = on_port(&spans, port, SPAN_KIND_CLIENT);
    assert_eq!(clients.len(), 3);
    assert!(
        clients
            .iter()
            .all(|c| c.name == "GET" && attr(c, "url.full").is_some_and(|u| u.starts_with(&base)))
    );
}

#[test]
fn h2c_by_upgrade_from_curl_and_nghttp_becomes_http2_spans() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let server = Command::new(python())
        .arg(root().join("tests/workloads/h2c_upgrade_server.py"))
        .arg(port.to_string())
        .env("OTEL_SERVICE_NAME", "h2c-upgrade")
        .spawn()
        .expect("start the h2c upgrade server");
    let _server = Guard(server);
    wait_port(port, Duration::from_secs(20));
    let (agent, out) = start_agent(dir.path());
    let base = format!("http://127.0.0.1:{port}");
    let curl = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
            "--http2",
        ])
        .arg(format!("{base}/hello/1"))
        .output()
        .expect("curl");
    assert_eq!(
        String::from_utf8_lossy(&curl.stdout),
        "2 200",
        "curl upgraded"
    );
    let nghttp = Command::new("nghttp")
        .args(["-u", "-s"])
        .args([format!("{base}/hello/2"), format!("{base}/missing")])
        .output()
        .expect("nghttp");
    assert!(
        nghttp.status.success(),
        "{}",
        String::from_utf8_lossy(&nghttp.stderr)
    );
    let spans = stop_and_read(agent, &out);
    let mut servers: Vec<(String, String, String)> = on_port(&spans, port, SPAN_KIND_SERVER)
        .into_iter()
        .map(|s| {
            let a = |k| attr(s, k).unwrap_or_default().to_owned();
            (
                a("url.path"),
                a("http.response.status_code"),
                a("network.protocol.version"),
            )
        })
        .collect();
    servers.sort();
    let row = |path: &str, code: &str| (path.to_string(), code.to_string(), "2".to_string());
    assert_eq!(
        servers,
        [
            row("/hello/1", "200"),
            row("/hello/2", "200"),
            row("/missing", "404")
        ],
        "the upgraded requests (stream 1) and the stream after them"
    );
    let mut clients: Vec<(String, String)> = on_port(&spans, port, SPAN_KIND_CLIENT)
        .into_iter()
        .map(|c| {
            let a = |k| attr(c, k).unwrap_or_default().to_owned();
            (a("url.full"), a("http.response.status_code"))
        })
        .collect();
    clients.sort();
    assert_eq!(
        clients,
        [
            (format!("{base}/hello/1"), "200".to_string()),
            (format!("{base}/hello/2"), "200".to_string()),
            (format!("{base}/missing"), "404".to_string()),
        ]
    );
}

#[test]
fn http2_over_tls_is_read_in_clear() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    make_test_certificates(dir.path());
    let port = free_port();
    let _server = nghttpd(dir.path(), port, true);
    let (agent, out) = start_agent(dir.path());
    for path in ["/a", "/missing"] {
        let out = Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_version} %{http_code}",
                "--http2",
                "--cacert",
            ])
            .arg(dir.path().join("ca.pem"))
            .arg(format!("https://127.0.0.1:{port}{path}"))
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert_eq!(text, if path == "/a" { "2 200" } else { "2 404" });
    }
    let spans = stop_and_read(agent, &out);
    let s = |name: &str, code: &str| row(name, code, "https");
    assert_eq!(
        nghttpd_spans(&spans, port),
        [s("GET /a", "200"), s("GET /missing", "404")]
    );
}

/// A tonic gRPC service (hyper's h2: every string Huffman-coded, the dynamic table used) in this
/// test process: OTLP's TraceService, as the generated code serves it. An empty export answers
/// NOT_FOUND; one whose first resource has no attributes sleeps past the client's deadline.
struct Shop;

#[tonic::async_trait]
impl opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService for Shop {
    async fn export(
        &self,
        request: tonic::Request<
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest,
        >,
    ) -> Result<
        tonic::Response<
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse,
        >,
        tonic::Status,
    > {
        let spans = &request.get_ref().resource_spans;
        if spans.is_empty() {
            return Err(tonic::Status::not_found("nothing to export"));
        }
        if spans[0].resource.is_none() {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        Ok(tonic::Response::new(Default::default()))
    }
}

#[test]
fn a_tonic_client_and_server_give_rpc_spans_with_their_statuses() {
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTraceServiceRequest, trace_service_client::TraceServiceClient,
        trace_service_server::TraceServiceServer,
    };
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::ResourceSpans;
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    runtime.spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Shop))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let (agent, out) = start_agent(dir.path());
    let codes: Vec<tonic::Code> = runtime.block_on(async {
        let mut client = TraceServiceClient::connect(format!("http://127.0.0.1:{port}"))
            .await
            .expect("connect");
        let ok = || ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource::default()),
                ..Default::default()
            }],
        };
        let mut codes = Vec::new();
        let code = |r: Result<_, tonic::Status>| r.map_or_else(|s| s.code(), |_| tonic::Code::Ok);
        for _ in 0..5 {
            codes.push(code(client.export(ok()).await));
        }
        codes.push(code(
            client.export(ExportTraceServiceRequest::default()).await,
        ));
        let mut slow = tonic::Request::new(ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans::default()],
        });
        slow.set_timeout(Duration::from_millis(300));
        codes.push(code(client.export(slow).await));
        // Eight calls in flight at once on the same connection.
        let calls: Vec<_> = (0..8)
            .map(|_| {
                let mut c = client.clone();
                let req = ok();
                tokio::spawn(async move { c.export(req).await })
            })
            .collect();
        for call in calls {
            codes.push(code(call.await.expect("join")));
        }
        codes
    });
    // tonic's server ends the late call itself when the deadline passes (CANCELLED).
    use tonic::Code;
    let want: Vec<Code> = [
        vec![Code::Ok; 5],
        vec![Code::NotFound, Code::Cancelled],
        vec![Code::Ok; 8],
    ]
    .concat();
    assert_eq!(codes, want);
    let spans = stop_and_read(agent, &out);
    drop(runtime);
    let name = "opentelemetry.proto.collector.trace.v1.TraceService/Export";
    for kind in [SPAN_KIND_SERVER, SPAN_KIND_CLIENT] {
        let mut by_code: HashMap<String, usize> = HashMap::new();
        for s in on_port(&spans, port, kind) {
            assert_eq!(s.name, name);
            assert_eq!(attr(s, "rpc.method"), Some("Export"));
            *by_code
                .entry(attr(s, "rpc.grpc.status_code").unwrap_or("none").to_owned())
                .or_default() += 1;
        }
        // The late call: at the deadline the client cancels it (RST_STREAM), which a span
        // names DEADLINE_EXCEEDED as the gRPC spec does (tonic's client reports CANCELLED),
        // and tonic's server ends it with CANCELLED in its trailers; each end's span says
        // what reached it first.
        let late = if by_code.contains_key("1") { "1" } else { "4" };
        let want: HashMap<String, usize> = [("0", 13), ("5", 1), (late, 1)]
            .into_iter()
            .map(|(c, n)| (c.to_owned(), n))
            .collect();
        assert_eq!(by_code, want, "kind {kind}");
    }
    assert_own_parents(
        &on_port(&spans, port, SPAN_KIND_SERVER),
        &on_port(&spans, port, SPAN_KIND_CLIENT),
    );
}
