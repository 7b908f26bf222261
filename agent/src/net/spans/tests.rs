//! The span builder on synthetic socket event sequences (no kernel needed).

use bytes::Bytes;
use loupe_collector::telemetry::Registry;
use loupe_collector::traces::proto::common::KeyValue;
use loupe_collector::traces::proto::common::any_value::Value;
use loupe_collector::traces::proto::trace::Span;
use loupe_common::socket::{ConnTuple, SocketEventHeader, direction, kind, role};

use super::*;
use crate::profiler::ProcessIdentity;

/// Names every process `svc{pid}`, executable `exe{pid}`; pid 0 is gone.
struct FakeResolver;

impl ProcessResolver for FakeResolver {
    fn resolve(&mut self, pid: u32) -> Option<ProcessIdentity> {
        (pid != 0).then(|| ProcessIdentity {
            service: format!("svc{pid}"),
            executable: Some(format!("exe{pid}")),
            container: None,
        })
    }
}

fn v4(a: [u8; 4]) -> [u8; 16] {
    let mut x = [0u8; 16];
    x[10] = 0xff;
    x[11] = 0xff;
    x[12..].copy_from_slice(&a);
    x
}

fn tuple(local: ([u8; 4], u16), remote: ([u8; 4], u16)) -> ConnTuple {
    ConnTuple {
        local_addr: v4(local.0),
        remote_addr: v4(remote.0),
        local_port: local.1,
        remote_port: remote.1,
        family: 2,
        _pad: 0,
    }
}

/// A connection as the kernel reports it.
#[derive(Clone, Copy)]
struct C {
    id: u64,
    pid: u32,
    role: u32,
    tuple: ConnTuple,
}

const LO: [u8; 4] = [127, 0, 0, 1];

fn server(id: u64, pid: u32) -> C {
    C {
        id,
        pid,
        role: role::SERVER,
        tuple: tuple(([10, 0, 0, 5], 8080), ([10, 0, 0, 9], 40000 + id as u16)),
    }
}

fn client(id: u64, pid: u32, port: u16) -> C {
    C {
        id,
        pid,
        role: role::CLIENT,
        tuple: tuple(([10, 0, 0, 5], 50000 + id as u16), ([10, 0, 0, 7], port)),
    }
}

struct Sim {
    b: SpanBuilder,
    registry: Registry,
    clock: Clock,
}

impl Sim {
    fn new() -> Self {
        Self::with(SpanBuilderConfig::default())
    }

    fn with(config: SpanBuilderConfig) -> Self {
        let registry = Registry::new();
        let clock = Clock::new();
        let b = SpanBuilder::new(
            config,
            &registry,
            "node-1".into(),
            clock,
            Box::new(FakeResolver),
        )
        .with_ids(IdGenerator::seeded(7));
        Self { b, registry, clock }
    }

    #[allow(clippy::too_many_arguments)]
    fn header(
        c: &C,
        kind: u32,
        tid: u32,
        dir: u32,
        t0: u64,
        t1: u64,
        bytes: u64,
        captured: u32,
    ) -> SocketEventHeader {
        SocketEventHeader {
            kind,
            role: c.role,
            pid: c.pid,
            tid,
            fd: 5,
            direction: dir,
            conn_id: c.id,
            timestamp_ns: t1,
            start_ns: t0,
            bytes,
            captured,
            flags: 0,
            tuple: c.tuple,
            request_ns: 0,
            ctx: Default::default(),
        }
    }

    fn open(&mut self, c: &C, t: u64) {
        self.open_by(c, t, b"");
    }

    /// An OPEN event carrying the opening task's comm, as the kernel sends it.
    fn open_by(&mut self, c: &C, t: u64, comm: &[u8]) {
        let header = Self::header(c, kind::OPEN, c.pid, 0, t, t, 0, comm.len() as u32);
        self.b.handle(&SocketEvent {
            header,
            data: Bytes::copy_from_slice(comm),
        });
    }

    /// A syscall moving `total` bytes of which `data` (a prefix) was captured.
    #[allow(clippy::too_many_arguments)]
    fn io(&mut self, c: &C, tid: u32, dir: u32, t0: u64, t1: u64, data: &[u8], total: u64) {
        let header = Self::header(c, kind::DATA, tid, dir, t0, t1, total, data.len() as u32);
        self.b.handle(&SocketEvent {
            header,
            data: Bytes::copy_from_slice(data),
        });
    }

    /// A syscall carrying the context the kernel gave its request (`from_peer`: a server
    /// request's parent came from the client's TCP option).
    #[allow(clippy::too_many_arguments)]
    fn io_ctx(
        &mut self,
        c: &C,
        tid: u32,
        dir: u32,
        t: u64,
        data: &[u8],
        ctx: loupe_common::socket::SpanCtx,
        from_peer: bool,
    ) {
        let mut header = Self::header(
            c,
            kind::DATA,
            tid,
            dir,
            t,
            t,
            data.len() as u64,
            data.len() as u32,
        );
        header.ctx = ctx;
        header.flags = loupe_common::socket::flags::CTX
            | if from_peer {
                loupe_common::socket::flags::CTX_FROM_PEER
            } else {
                0
            };
        self.b.handle(&SocketEvent {
            header,
            data: Bytes::copy_from_slice(data),
        });
    }

    fn read(&mut self, c: &C, tid: u32, t0: u64, t1: u64, data: &[u8]) {
        self.io(c, tid, direction::INGRESS, t0, t1, data, data.len() as u64);
    }

    fn write(&mut self, c: &C, tid: u32, t0: u64, t1: u64, data: &[u8]) {
        self.io(c, tid, direction::EGRESS, t0, t1, data, data.len() as u64);
    }

    fn close(&mut self, c: &C, t: u64) {
        let header = Self::header(c, kind::CLOSE, c.pid, 0, t, t, 0, 0);
        self.b.handle(&SocketEvent {
            header,
            data: Bytes::new(),
        });
    }

    /// Every finished span with its resource attributes.
    fn spans(&mut self) -> Vec<(Vec<KeyValue>, Span)> {
        self.b.settle_lingering(u64::MAX);
        let mut out = Vec::new();
        while let Some(batch) = self.b.take_batch(3) {
            // Through OTLP's protobuf form, as the gRPC sink sends them.
            for rs in batch.to_request().resource_spans {
                let res = rs.resource.unwrap().attributes;
                for ss in rs.scope_spans {
                    assert_eq!(ss.scope.as_ref().unwrap().name, "loupe");
                    for s in ss.spans {
                        out.push((res.clone(), s));
                    }
                }
            }
        }
        out
    }

    fn metric(&self, line_prefix: &str) -> u64 {
        let text = self.registry.render();
        text.lines()
            .find_map(|l| {
                l.strip_prefix(line_prefix)
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or_else(|| panic!("no {line_prefix} in\n{text}"))
    }

    fn unix(&self, mono: u64) -> u64 {
        self.clock.to_unix_nanos(mono)
    }
}

fn attr(kvs: &[KeyValue], key: &str) -> Option<String> {
    kvs.iter().find(|kv| kv.key == key).map(|kv| {
        match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
            Some(Value::StringValue(s)) => s.clone(),
            Some(Value::IntValue(i)) => i.to_string(),
            other => panic!("{key}: {other:?}"),
        }
    })
}

fn a(span: &Span, key: &str) -> Option<String> {
    attr(&span.attributes, key)
}

fn is_error(span: &Span) -> bool {
    span.status.as_ref().is_some_and(|s| s.code == 2)
}

const REQ: &[u8] =
    b"GET /users/42?token=secret HTTP/1.1\r\nHost: shop:8080\r\nUser-Agent: curl/8.5\r\n\r\n";
const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";

#[test]
fn http_server_keep_alive_exchanges() {
    let mut s = Sim::new();
    let c = server(1, 100);
    s.open(&c, 10);
    s.read(&c, 101, 500, 1_000, REQ);
    s.write(&c, 101, 1_100, 1_200, OK);
    s.read(
        &c,
        101,
        1_300,
        2_000,
        b"POST /cart HTTP/1.1\r\nHost: shop\r\nContent-Length: 3\r\n\r\nabc",
    );
    s.write(
        &c,
        101,
        2_100,
        2_500,
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
    );
    let spans = s.spans();
    assert_eq!(spans.len(), 2);
    let (res, first) = &spans[0];
    assert_eq!(attr(res, "service.name").as_deref(), Some("svc100"));
    assert_eq!(attr(res, "host.name").as_deref(), Some("node-1"));
    assert_eq!(attr(res, "process.pid").as_deref(), Some("100"));
    assert_eq!(
        attr(res, "process.executable.name").as_deref(),
        Some("exe100")
    );
    assert_eq!(first.name, "GET /users/{id}");
    assert_eq!(first.kind, 2);
    // From the end of the read that brought the request to the end of the last response write.
    assert_eq!(first.start_time_unix_nano, s.unix(1_000));
    assert_eq!(first.end_time_unix_nano, s.unix(1_200));
    assert_eq!(a(first, "http.request.method").as_deref(), Some("GET"));
    assert_eq!(a(first, "url.path").as_deref(), Some("/users/42"));
    assert_eq!(a(first, "url.scheme").as_deref(), Some("http"));
    assert_eq!(a(first, "http.route").as_deref(), Some("/users/{id}"));
    assert_eq!(
        a(first, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(a(first, "server.address").as_deref(), Some("10.0.0.5"));
    assert_eq!(a(first, "server.port").as_deref(), Some("8080"));
    assert_eq!(a(first, "client.address").as_deref(), Some("10.0.0.9"));
    assert_eq!(
        a(first, "network.peer.address").as_deref(),
        Some("10.0.0.9")
    );
    assert_eq!(a(first, "network.peer.port").as_deref(), Some("40001"));
    assert_eq!(a(first, "user_agent.original").as_deref(), Some("curl/8.5"));
    assert!(
        !first
            .attributes
            .iter()
            .any(|kv| kv.key.starts_with("url.query"))
    );
    assert!(
        first.parent_span_id.is_empty() && first.trace_id.len() == 16 && first.span_id.len() == 8
    );
    assert!(!is_error(first) && first.status.is_none());

    let second = &spans[1].1;
    assert_eq!(second.name, "POST /cart");
    assert_eq!(
        a(second, "http.response.status_code").as_deref(),
        Some("404")
    );
    assert!(!is_error(second), "4xx is not a server error");
    assert_eq!(second.start_time_unix_nano, s.unix(2_000));
    assert_ne!(
        first.trace_id, second.trace_id,
        "independent requests, independent traces"
    );
    assert_eq!(
        s.metric("loupe_spans_created_total{kind=\"http_server\"}"),
        2
    );
}

#[test]
fn http_pipelined_requests_pair_in_order() {
    let mut s = Sim::new();
    let c = server(1, 100);
    let two = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n";
    s.read(&c, 7, 0, 1_000, two);
    s.write(
        &c,
        7,
        1_500,
        2_000,
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\naHTTP/1.1 503 Busy\r\nContent-Length: 1\r\n\r\nb",
    );
    let spans = s.spans();
    let names: Vec<_> = spans.iter().map(|(_, s)| s.name.as_str()).collect();
    assert_eq!(names, ["GET /a", "GET /b"]);
    assert_eq!(
        a(&spans[0].1, "http.response.status_code").as_deref(),
        Some("200")
    );
    let b = &spans[1].1;
    assert_eq!(a(b, "http.response.status_code").as_deref(), Some("503"));
    assert!(is_error(b));
    assert_eq!(a(b, "error.type").as_deref(), Some("503"));
}

#[test]
fn http_split_reads_and_chunked_response() {
    let mut s = Sim::new();
    let c = server(1, 100);
    s.read(&c, 7, 0, 1_000, b"GET /orders/9f1c2e7a HT");
    s.read(&c, 7, 1_000, 2_000, b"TP/1.1\r\nHost: x\r\n");
    s.read(&c, 7, 2_000, 3_000, b"\r\n");
    s.write(
        &c,
        7,
        3_100,
        3_200,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    );
    assert_eq!(s.b.finished_len(), 0, "the body is not over");
    s.write(&c, 7, 3_300, 4_000, b"0\r\n\r\n");
    let spans = s.spans();
    assert_eq!(spans.len(), 1);
    let span = &spans[0].1;
    assert_eq!(span.name, "GET /orders/{id}");
    assert_eq!(
        span.start_time_unix_nano,
        s.unix(1_000),
        "first request byte"
    );
    assert_eq!(span.end_time_unix_nano, s.unix(4_000), "last response byte");
}

#[test]
fn http_bodies_outside_the_capture_are_framed_by_count() {
    let mut s = Sim::new();
    let c = server(1, 100);
    s.read(&c, 7, 0, 1_000, b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n");
    let head = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n";
    let mut first = head.to_vec();
    first.extend_from_slice(&[b'x'; 100]);
    // The first write moves 60000 bytes, of which the probe copied the first 143.
    s.io(&c, 7, direction::EGRESS, 1_100, 1_200, &first, 60_000);
    assert_eq!(s.b.finished_len(), 0);
    let rest = 100_000 + head.len() as u64 - 60_000;
    s.io(&c, 7, direction::EGRESS, 1_300, 1_400, &[b'x'; 64], rest);
    let spans = s.spans();
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].1.end_time_unix_nano, s.unix(1_400));
}

#[test]
fn traceparent_joins_the_callers_trace() {
    let mut s = Sim::new();
    let c = server(1, 100);
    s.read(
        &c,
        7,
        0,
        1_000,
        b"GET / HTTP/1.1\r\nHost: x\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\ntracestate: congo=t61rcWkgMzE\r\n\r\n",
    );
    s.write(&c, 7, 1_100, 1_200, OK);
    // An invalid header is ignored: a new trace.
    s.read(&c, 7, 2_000, 3_000, b"GET / HTTP/1.1\r\ntraceparent: 00-00000000000000000000000000000000-b7ad6b7169203331-01\r\n\r\n");
    s.write(&c, 7, 3_100, 3_200, OK);
    let spans = s.spans();
    let joined = &spans[0].1;
    assert_eq!(hex(&joined.trace_id), "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(hex(&joined.parent_span_id), "b7ad6b7169203331");
    assert_eq!(joined.trace_state, "congo=t61rcWkgMzE");
    let fresh = &spans[1].1;
    assert!(fresh.parent_span_id.is_empty());
    assert_ne!(hex(&fresh.trace_id), "00000000000000000000000000000000");
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

const REDIS_GET: &[u8] = b"*2\r\n$3\r\nGET\r\n$4\r\nuser\r\n";

#[test]
fn client_calls_of_a_serving_thread_are_children() {
    let mut s = Sim::new();
    let srv = server(1, 100);
    let redis = client(2, 100, 6379);
    let http = client(3, 100, 80);
    s.read(&srv, 11, 0, 1_000, REQ);
    // Thread 11 serves the request: its Redis and HTTP calls are children.
    s.write(&redis, 11, 1_100, 1_150, REDIS_GET);
    s.read(&redis, 11, 1_150, 1_300, b"$-1\r\n");
    s.write(
        &http,
        11,
        1_400,
        1_450,
        b"GET /stock?sku=1 HTTP/1.1\r\nHost: inventory:9000\r\n\r\n",
    );
    s.read(
        &http,
        11,
        1_450,
        1_600,
        b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n",
    );
    // Another thread's call is not.
    s.write(&redis, 12, 1_700, 1_710, REDIS_GET);
    s.read(&redis, 12, 1_710, 1_720, b"$-1\r\n");
    s.write(&srv, 11, 1_800, 2_000, OK);
    // After the response, thread 11 serves nothing.
    s.write(&redis, 11, 3_000, 3_010, REDIS_GET);
    s.read(&redis, 11, 3_010, 3_020, b"$-1\r\n");

    let spans: Vec<Span> = s.spans().into_iter().map(|(_, s)| s).collect();
    let by_name = |n: &str| spans.iter().filter(|s| s.name == n).collect::<Vec<_>>();
    let server_span = by_name("GET /users/{id}")[0];
    let gets = by_name("GET");
    // HTTP client "GET" spans and Redis "GET" share the name: split them by attributes.
    let redis_gets: Vec<_> = gets
        .iter()
        .filter(|s| a(s, "db.system.name").is_some())
        .collect();
    let http_get = gets.iter().find(|s| a(s, "url.full").is_some()).unwrap();
    assert_eq!(redis_gets.len(), 3);
    let child = redis_gets[0];
    assert_eq!(child.trace_id, server_span.trace_id);
    assert_eq!(child.parent_span_id, server_span.span_id);
    assert_eq!(child.kind, 3);
    assert_eq!(a(child, "db.query.text").as_deref(), Some("GET user"));
    assert_eq!(
        child.start_time_unix_nano,
        s.unix(1_100),
        "a write starts a client request"
    );
    assert_eq!(child.end_time_unix_nano, s.unix(1_300));
    assert_eq!(http_get.trace_id, server_span.trace_id);
    assert_eq!(http_get.parent_span_id, server_span.span_id);
    assert_eq!(
        a(http_get, "url.full").as_deref(),
        Some("http://inventory:9000/stock")
    );
    assert_eq!(a(http_get, "server.address").as_deref(), Some("inventory"));
    assert_eq!(a(http_get, "server.port").as_deref(), Some("9000"));
    assert_eq!(
        a(http_get, "network.peer.address").as_deref(),
        Some("10.0.0.7")
    );
    assert!(is_error(http_get), "5xx on the client is an error");
    for other in &redis_gets[1..] {
        assert!(other.parent_span_id.is_empty());
        assert_ne!(other.trace_id, server_span.trace_id);
    }
}

#[test]
fn client_4xx_is_an_error_and_client_traceparent_is_joined() {
    let mut s = Sim::new();
    let http = client(3, 100, 8081);
    s.write(
        &http,
        5,
        0,
        10,
        b"DELETE /x HTTP/1.1\r\ntraceparent: 00-11111111111111111111111111111111-2222222222222222-01\r\n\r\n",
    );
    s.read(
        &http,
        5,
        10,
        50,
        b"HTTP/1.1 404 Nope\r\nContent-Length: 0\r\n\r\n",
    );
    let span = s.spans().remove(0).1;
    assert_eq!(span.name, "DELETE");
    assert!(is_error(&span));
    assert_eq!(a(&span, "error.type").as_deref(), Some("404"));
    assert_eq!(
        a(&span, "url.full").as_deref(),
        Some("http://10.0.0.7:8081/x")
    );
    assert_eq!(hex(&span.trace_id), "11111111111111111111111111111111");
    assert_eq!(hex(&span.parent_span_id), "2222222222222222");
}

fn same_host_pair() -> (C, C) {
    let cl = C {
        id: 1,
        pid: 20,
        role: role::CLIENT,
        tuple: tuple((LO, 51000), (LO, 8080)),
    };
    let sv = C {
        id: 2,
        pid: 30,
        role: role::SERVER,
        tuple: tuple((LO, 8080), (LO, 51000)),
    };
    (cl, sv)
}

#[test]
fn same_host_server_span_is_child_of_the_client_span() {
    let mut s = Sim::new();
    let (cl, sv) = same_host_pair();
    // Client writes, server reads (the usual order in the ring buffer).
    s.write(
        &cl,
        21,
        100,
        200,
        b"GET /a HTTP/1.1\r\nHost: localhost:8080\r\n\r\n",
    );
    s.read(
        &sv,
        31,
        150,
        250,
        b"GET /a HTTP/1.1\r\nHost: localhost:8080\r\n\r\n",
    );
    let db = client(3, 30, 6379);
    s.write(&db, 31, 260, 270, REDIS_GET);
    s.read(&db, 31, 270, 280, b"$-1\r\n");
    s.write(&sv, 31, 300, 400, OK);
    s.read(&cl, 21, 350, 450, OK);
    // Second exchange on the same connection, events in the other order: the server read
    // comes before the client write.
    s.read(
        &sv,
        31,
        500,
        600,
        b"GET /b HTTP/1.1\r\nHost: localhost:8080\r\n\r\n",
    );
    s.write(
        &cl,
        21,
        500,
        610,
        b"GET /b HTTP/1.1\r\nHost: localhost:8080\r\n\r\n",
    );
    s.write(&sv, 31, 700, 800, OK);
    s.read(&cl, 21, 750, 850, OK);

    let spans = s.spans();
    let find = |name: &str, pid: &str| {
        spans
            .iter()
            .find(|(r, s)| s.name == name && attr(r, "process.pid").as_deref() == Some(pid))
            .map(|(_, s)| s.clone())
            .unwrap()
    };
    let client_a = spans
        .iter()
        .filter(|(r, _)| attr(r, "process.pid").as_deref() == Some("20"))
        .map(|(_, s)| s.clone())
        .collect::<Vec<_>>();
    assert_eq!(client_a.len(), 2);
    let server_a = find("GET /a", "30");
    assert_eq!(server_a.trace_id, client_a[0].trace_id);
    assert_eq!(server_a.parent_span_id, client_a[0].span_id);
    let redis = spans
        .iter()
        .find(|(_, s)| a(s, "db.system.name").is_some())
        .unwrap()
        .1
        .clone();
    assert_eq!(
        redis.trace_id, client_a[0].trace_id,
        "three levels, one trace"
    );
    assert_eq!(redis.parent_span_id, server_a.span_id);
    let server_b = find("GET /b", "30");
    assert_eq!(server_b.trace_id, client_a[1].trace_id);
    assert_eq!(server_b.parent_span_id, client_a[1].span_id);
    assert!(client_a.iter().all(|c| c.parent_span_id.is_empty()));
    assert_eq!(s.b.core.ctx.len(), (0, 0), "nothing left waiting");
}

#[test]
fn different_tuples_do_not_link() {
    let mut s = Sim::new();
    let (cl, mut sv) = same_host_pair();
    sv.tuple.remote_port = 51001;
    s.write(&cl, 21, 100, 200, b"GET /a HTTP/1.1\r\n\r\n");
    s.read(&sv, 31, 150, 250, b"GET /a HTTP/1.1\r\n\r\n");
    s.write(&sv, 31, 300, 400, OK);
    s.read(&cl, 21, 350, 450, OK);
    let spans = s.spans();
    assert_eq!(spans.len(), 2);
    assert!(spans.iter().all(|(_, s)| s.parent_span_id.is_empty()));
    assert_eq!(s.b.core.ctx.len(), (0, 0));
}

fn pkt(seq: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = (payload.len() as u32).to_le_bytes()[..3].to_vec();
    v.push(seq);
    v.extend_from_slice(payload);
    v
}

fn greeting() -> Vec<u8> {
    let mut g = b"\x0a5.5.5-10.11.6-MariaDB\0".to_vec();
    g.extend_from_slice(&[0x0b, 0, 0, 0]);
    g.extend_from_slice(&[0x41; 8]);
    g.extend_from_slice(&[0, 0xff, 0xff, 0xff, 0x02, 0, 0xff, 0xdf, 21]);
    g.extend_from_slice(&[0; 10]);
    g.extend_from_slice(&[0x42; 13]);
    g.extend_from_slice(b"mysql_native_password\0");
    pkt(0, &g)
}

fn handshake_response() -> Vec<u8> {
    // PROTOCOL_41 | SECURE_CONNECTION | CONNECT_WITH_DB, no DEPRECATE_EOF.
    let mut hs = (0x000a_a205u32 | 0x8).to_le_bytes().to_vec();
    hs.extend_from_slice(&[0, 0, 0, 1, 0x2d]);
    hs.extend_from_slice(&[0; 23]);
    hs.extend_from_slice(b"shop\0");
    hs.push(0); // empty auth response
    hs.extend_from_slice(b"shopdb\0");
    pkt(1, &hs)
}

const EOF: &[u8] = &[0xfe, 0, 0, 0x02, 0];

fn column_def() -> Vec<u8> {
    b"\x03def\x06shopdb\x05users\x05users\x04name\x04name\x0c\x21\x00\x00\x01\x00\x00\xfd\x00\x00\x00\x00\x00".to_vec()
}

/// A connected MySQL client past the handshake.
fn mysql_client(s: &mut Sim) -> C {
    let db = client(9, 100, 3306);
    s.open(&db, 0);
    s.read(&db, 7, 0, 10, &greeting());
    s.write(&db, 7, 20, 30, &handshake_response());
    s.read(&db, 7, 30, 40, &pkt(2, &[0, 0, 0, 2, 0, 0, 0]));
    db
}

#[test]
fn mysql_queries_ok_and_err() {
    let mut s = Sim::new();
    let db = mysql_client(&mut s);
    let q = b"\x03SELECT name FROM users WHERE email = 'alice@example.com' AND id IN (1, 2, 3)";
    s.write(&db, 7, 100, 110, &pkt(0, q));
    let mut rs = pkt(1, &[1]);
    rs.extend(pkt(2, &column_def()));
    rs.extend(pkt(3, EOF));
    rs.extend(pkt(4, b"\x05alice"));
    rs.extend(pkt(5, EOF));
    s.read(&db, 7, 110, 300, &rs);
    s.write(
        &db,
        7,
        400,
        410,
        &pkt(
            0,
            b"\x03INSERT INTO users (email) VALUES ('bob@example.com')",
        ),
    );
    let mut err = vec![0xff];
    err.extend_from_slice(&1062u16.to_le_bytes());
    err.extend_from_slice(b"#23000Duplicate entry 'bob@example.com' for key 'email'");
    s.read(&db, 7, 410, 500, &pkt(1, &err));

    let spans = s.spans();
    assert_eq!(spans.len(), 2, "the handshake is not a span");
    let select = &spans[0].1;
    assert_eq!(select.name, "SELECT users");
    assert_eq!(select.kind, 3);
    assert_eq!(a(select, "db.system.name").as_deref(), Some("mysql"));
    assert_eq!(a(select, "db.operation.name").as_deref(), Some("SELECT"));
    assert_eq!(a(select, "db.collection.name").as_deref(), Some("users"));
    assert_eq!(a(select, "db.namespace").as_deref(), Some("shopdb"));
    assert_eq!(
        a(select, "db.query.text").as_deref(),
        Some("SELECT name FROM users WHERE email = ? AND id IN (?)")
    );
    assert_eq!(a(select, "server.address").as_deref(), Some("10.0.0.7"));
    assert_eq!(a(select, "server.port").as_deref(), Some("3306"));
    assert_eq!(select.start_time_unix_nano, s.unix(100));
    assert_eq!(select.end_time_unix_nano, s.unix(300));
    assert!(!is_error(select));

    let insert = &spans[1].1;
    assert_eq!(insert.name, "INSERT users");
    assert!(is_error(insert));
    assert_eq!(
        a(insert, "db.response.status_code").as_deref(),
        Some("1062")
    );
    assert_eq!(a(insert, "error.type").as_deref(), Some("1062"));
    assert_eq!(
        a(insert, "db.query.text").as_deref(),
        Some("INSERT INTO users (email) VALUES (?)")
    );
    let text = format!("{spans:?}");
    assert!(
        !text.contains("bob@example.com") && !text.contains("alice@"),
        "values leaked"
    );
    assert_eq!(
        s.metric("db_client_operation_duration_seconds_count{db_operation_name=\"INSERT\",db_system_name=\"mysql\",error_type=\"1062\",service_name=\"svc100\"}"),
        1
    );
}

#[test]
fn mysql_unsanitized_keeps_literals_and_messages() {
    let mut s = Sim::with(SpanBuilderConfig {
        sanitize_queries: false,
        ..SpanBuilderConfig::default()
    });
    let db = mysql_client(&mut s);
    s.write(
        &db,
        7,
        100,
        110,
        &pkt(0, b"\x03SELECT * FROM nope WHERE a = 1"),
    );
    let mut err = vec![0xff];
    err.extend_from_slice(&1146u16.to_le_bytes());
    err.extend_from_slice(b"#42S02Table 'shopdb.nope' doesn't exist");
    s.read(&db, 7, 110, 200, &pkt(1, &err));
    let span = s.spans().remove(0).1;
    assert_eq!(
        a(&span, "db.query.text").as_deref(),
        Some("SELECT * FROM nope WHERE a = 1")
    );
    assert_eq!(
        span.status.unwrap().message,
        "Table 'shopdb.nope' doesn't exist"
    );
}

#[test]
fn mysql_prepared_statements_carry_their_text() {
    let mut s = Sim::new();
    let db = mysql_client(&mut s);
    s.write(
        &db,
        7,
        100,
        110,
        &pkt(0, b"\x16SELECT name FROM users WHERE id = ?"),
    );
    let mut prep = pkt(1, &[0x00, 1, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0]);
    prep.extend(pkt(2, &column_def()));
    prep.extend(pkt(3, EOF));
    prep.extend(pkt(4, &column_def()));
    prep.extend(pkt(5, EOF));
    s.read(&db, 7, 110, 200, &prep);
    let mut exec = vec![0x17, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0x08, 0];
    exec.extend_from_slice(&42u64.to_le_bytes());
    s.write(&db, 7, 300, 310, &pkt(0, &exec));
    let mut rs = pkt(1, &[1]);
    rs.extend(pkt(2, &column_def()));
    rs.extend(pkt(3, EOF));
    rs.extend(pkt(4, b"\x00\x00\x05alice"));
    rs.extend(pkt(5, EOF));
    s.read(&db, 7, 310, 400, &rs);
    // Closing the statement has no response and makes no span.
    s.write(&db, 7, 500, 510, &pkt(0, &[0x19, 1, 0, 0, 0]));

    let spans = s.spans();
    let names: Vec<_> = spans.iter().map(|(_, s)| s.name.as_str()).collect();
    assert_eq!(names, ["PREPARE users", "SELECT users"]);
    let exec = &spans[1].1;
    assert_eq!(
        a(exec, "db.query.text").as_deref(),
        Some("SELECT name FROM users WHERE id = ?")
    );
    assert_eq!(exec.start_time_unix_nano, s.unix(300));
    assert_eq!(exec.end_time_unix_nano, s.unix(400));
}

#[test]
fn mysql_server_side_makes_no_spans() {
    let mut s = Sim::new();
    let mysqld = C {
        role: role::SERVER,
        ..server(1, 50)
    };
    s.write(&mysqld, 7, 0, 10, &greeting());
    s.read(&mysqld, 7, 20, 30, &handshake_response());
    s.write(&mysqld, 7, 30, 40, &pkt(2, &[0, 0, 0, 2, 0, 0, 0]));
    s.read(&mysqld, 7, 100, 110, &pkt(0, b"\x03SELECT 1"));
    s.write(&mysqld, 7, 110, 120, &pkt(1, &[0, 0, 0, 2, 0, 0, 0]));
    assert_eq!(s.b.finished_len(), 0);
    assert_eq!(
        s.metric("loupe_spans_connections_detected_total{protocol=\"mysql\"}"),
        1
    );
}

#[test]
fn redis_pipeline_with_an_error_reply() {
    let mut s = Sim::new();
    let r = client(4, 100, 6379);
    s.write(
        &r,
        7,
        100,
        110,
        b"*3\r\n$3\r\nSET\r\n$7\r\ncart:42\r\n$11\r\n{\"items\":3}\r\n*2\r\n$4\r\nINCR\r\n$7\r\ncart:42\r\n*2\r\n$3\r\nGET\r\n$7\r\ncart:42\r\n",
    );
    s.read(
        &r,
        7,
        110,
        200,
        b"+OK\r\n-ERR value is not an integer or out of range\r\n$11\r\n{\"items\":3}\r\n",
    );
    let spans = s.spans();
    let names: Vec<_> = spans.iter().map(|(_, s)| s.name.as_str()).collect();
    assert_eq!(names, ["SET", "INCR", "GET"]);
    let set = &spans[0].1;
    assert_eq!(a(set, "db.system.name").as_deref(), Some("redis"));
    assert_eq!(a(set, "db.operation.name").as_deref(), Some("SET"));
    assert_eq!(a(set, "db.query.text").as_deref(), Some("SET cart:42 ?"));
    assert!(!is_error(set));
    let incr = &spans[1].1;
    assert!(is_error(incr));
    assert_eq!(a(incr, "db.response.status_code").as_deref(), Some("ERR"));
    assert_eq!(a(incr, "error.type").as_deref(), Some("ERR"));
    assert_eq!(
        incr.status.as_ref().unwrap().message,
        "",
        "messages stay out when sanitizing"
    );
    for (_, span) in &spans {
        assert_eq!(span.start_time_unix_nano, s.unix(100));
        assert_eq!(span.end_time_unix_nano, s.unix(200));
    }
    assert!(!format!("{spans:?}").contains("items"));
}

#[test]
fn garbage_tls_and_http2_make_no_spans() {
    let mut s = Sim::new();
    let tls = client(1, 100, 443);
    s.write(
        &tls,
        7,
        0,
        10,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03abcdef",
    );
    s.read(
        &tls,
        7,
        10,
        20,
        b"\x16\x03\x03\x00\x7a\x02\x00\x00\x76\x03\x03",
    );
    s.write(
        &tls,
        7,
        30,
        40,
        b"\x17\x03\x03\x00\x20GET / HTTP/1.1\r\n\r\n",
    );
    let h2 = client(2, 100, 80);
    s.write(&h2, 7, 0, 10, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    s.read(&h2, 7, 10, 20, b"HTTP/1.1 200 OK\r\n\r\n");
    let junk = server(3, 100);
    for i in 0..10u64 {
        s.read(
            &junk,
            7,
            i * 10,
            i * 10 + 5,
            b"\x00\x01\x02 not a protocol \xff\xfe",
        );
    }
    // Later, HTTP-looking bytes on the abandoned connection are ignored too.
    s.read(&junk, 7, 200, 210, REQ);
    s.write(&junk, 7, 220, 230, OK);
    // Pseudo-random bytes on many connections: nothing breaks, nothing grows.
    let mut x = 0x1234_5678_9abc_def0u64;
    for conn in 10..200u64 {
        let c = if conn % 2 == 0 {
            server(conn, 100)
        } else {
            client(conn, 100, 1)
        };
        for _ in 0..8 {
            let len = (x % 300) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let dir = if x.is_multiple_of(2) {
                direction::INGRESS
            } else {
                direction::EGRESS
            };
            s.io(&c, 7, dir, 1, 2, &bytes, len as u64 + x % 5000);
        }
        s.close(&c, 3);
    }
    assert_eq!(s.b.finished_len(), 0);
    assert_eq!(
        s.metric("loupe_spans_connections_detected_total{protocol=\"tls\"}"),
        1
    );
    assert_eq!(
        s.metric("loupe_spans_connections_detected_total{protocol=\"http2\"}"),
        1
    );
    assert!(s.metric("loupe_spans_connections_detected_total{protocol=\"unknown\"}") >= 1);
    assert_eq!(s.b.connection_count(), 3);
}

#[test]
fn red_histogram_counts_equal_requests() {
    let mut s = Sim::new();
    for i in 0..25u64 {
        let c = server(i + 1, 100);
        s.read(
            &c,
            7,
            i * 1000,
            i * 1000 + 10,
            format!("GET /items/{i} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
        );
        let status = if i % 5 == 0 { "500 Err" } else { "200 OK" };
        s.write(
            &c,
            7,
            i * 1000 + 20,
            i * 1000 + 30_000_000,
            format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes(),
        );
        s.close(&c, i * 1000 + 40_000_000);
    }
    let base = "http_server_request_duration_seconds";
    let labels = |code: &str| {
        format!(
            "{{http_request_method=\"GET\",http_response_status_code=\"{code}\",http_route=\"/items/{{id}}\",service_name=\"svc100\"}}"
        )
    };
    assert_eq!(s.metric(&format!("{base}_count{}", labels("200"))), 20);
    assert_eq!(s.metric(&format!("{base}_count{}", labels("500"))), 5);
    // 30 ms each: all in the 0.05 bucket, none in 0.025.
    let le = |code: &str, le: &str| {
        let l = labels(code);
        format!("{base}_bucket{},le=\"{le}\"}}", &l[..l.len() - 1])
    };
    assert_eq!(s.metric(&le("200", "0.025")), 0);
    assert_eq!(s.metric(&le("200", "0.05")), 20);
    assert_eq!(s.spans().len(), 25);
    assert_eq!(s.b.connection_count(), 0);
}

#[test]
fn connections_are_bounded_and_evictions_counted() {
    let mut s = Sim::with(SpanBuilderConfig {
        max_connections: 4,
        ..SpanBuilderConfig::default()
    });
    for i in 1..=10u64 {
        let c = server(i, 100);
        // Each leaves a request waiting.
        s.read(&c, 7, i * 10, i * 10 + 1, b"GET / HTTP/1.1\r\n\r\n");
    }
    assert_eq!(s.b.connection_count(), 4);
    assert_eq!(
        s.metric("loupe_spans_connections_evicted_total{reason=\"capacity\"}"),
        6
    );
    assert_eq!(s.metric("loupe_spans_dropped_total{reason=\"evicted\"}"), 6);
    // The most recent ones survive and still complete.
    s.write(&server(10, 100), 7, 200, 210, OK);
    assert_eq!(s.spans().len(), 1);
    // Idle connections go at the next tick.
    s.b.tick(210 + 3_600_000_000_001);
    assert_eq!(s.b.connection_count(), 0);
    assert_eq!(
        s.metric("loupe_spans_connections_evicted_total{reason=\"idle\"}"),
        4
    );
    assert_eq!(s.b.core.ctx.len(), (0, 0), "their context entries went too");
}

#[test]
fn memory_budget_evicts_least_recently_used() {
    let mut s = Sim::with(SpanBuilderConfig {
        max_buffered_bytes: 20_000,
        ..SpanBuilderConfig::default()
    });
    // Unfinished heads are buffered by the parser (about 8 KiB each at most).
    for i in 1..=6u64 {
        let c = server(i, 100);
        let mut head = b"GET / HTTP/1.1\r\nX: ".to_vec();
        head.extend_from_slice(&[b'a'; 1000]);
        for k in 0..6 {
            s.read(
                &c,
                7,
                i * 100 + k,
                i * 100 + k,
                &head[..head.len().min(1000)],
            );
            head = vec![b'b'; 1000];
        }
    }
    assert!(s.metric("loupe_spans_connections_evicted_total{reason=\"memory\"}") >= 1);
    assert!(s.metric("loupe_spans_buffered_bytes") <= 20_000);
}

#[test]
fn unanswered_requests_and_shutdown_are_counted() {
    let mut s = Sim::new();
    let c = server(1, 100);
    s.read(&c, 7, 0, 10, b"GET /x HTTP/1.1\r\n\r\n");
    s.close(&c, 20);
    assert_eq!(
        s.metric("loupe_spans_dropped_total{reason=\"no_response\"}"),
        1
    );
    let r = client(2, 100, 6379);
    s.write(&r, 7, 30, 40, REDIS_GET);
    s.b.shutdown();
    assert_eq!(
        s.metric("loupe_spans_dropped_total{reason=\"shutdown\"}"),
        1
    );
    assert_eq!(s.b.finished_len(), 0);
}

#[test]
fn finished_spans_are_bounded() {
    let mut s = Sim::with(SpanBuilderConfig {
        max_finished_spans: 3,
        ..SpanBuilderConfig::default()
    });
    let c = server(1, 100);
    for i in 0..5u64 {
        s.read(&c, 7, i * 100, i * 100 + 1, b"GET / HTTP/1.1\r\n\r\n");
        s.write(&c, 7, i * 100 + 2, i * 100 + 3, OK);
    }
    s.b.settle_lingering(u64::MAX);
    assert_eq!(s.b.finished_len(), 3);
    assert_eq!(
        s.metric("loupe_spans_dropped_total{reason=\"buffer_full\"}"),
        2
    );
}

#[test]
fn unknown_role_is_inferred_and_batches_group_by_process() {
    let mut s = Sim::new();
    let mut c = server(1, 100);
    c.role = 0;
    s.read(&c, 7, 0, 10, REQ);
    s.write(&c, 7, 20, 30, OK);
    let other = server(2, 200);
    s.read(&other, 8, 0, 10, REQ);
    s.write(&other, 8, 20, 30, OK);
    s.read(&c, 7, 40, 50, REQ);
    s.write(&c, 7, 60, 70, OK);
    s.b.settle_lingering(u64::MAX);
    let batch = s.b.take_batch(100).unwrap();
    assert_eq!(batch.resources.len(), 2);
    assert_eq!(batch.span_count(), 3);
    let first = &batch.resources[0];
    assert_eq!(
        attr(&first.resource.attributes, "process.pid").as_deref(),
        Some("100")
    );
    assert_eq!(first.spans.len(), 2);
    assert!(
        first
            .spans
            .iter()
            .all(|s| s.kind == loupe_collector::traces::SpanKind::Server),
        "inferred server role"
    );
    assert!(s.b.take_batch(100).is_none());
}

#[test]
fn spawned_thread_flushes_to_the_exporter_and_stops_with_the_channel() {
    use loupe_collector::Sink;
    use loupe_collector::sink::BoxFuture;
    use loupe_collector::traces::{Batching, TraceExportReport, TraceExporter};
    use std::sync::Mutex;

    struct Collect(Arc<Mutex<u64>>);
    impl Sink<TraceBatch> for Collect {
        fn name(&self) -> &str {
            "collect"
        }
        fn batching(&self) -> Batching {
            Batching {
                max_items: 100,
                max_delay: Duration::ZERO,
            }
        }
        fn export(&self, batch: Arc<TraceBatch>) -> BoxFuture<'_, TraceExportReport> {
            *self.0.lock().unwrap() += batch.span_count();
            Box::pin(async { TraceExportReport::default() })
        }
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let registry = Registry::new();
    let got = Arc::new(Mutex::new(0));
    let handle = rt.block_on(async {
        TraceExporter::spawn(vec![Box::new(Collect(got.clone()))], &registry, 8)
    });
    let (tx, rx) = std::sync::mpsc::sync_channel(64);
    let thread = spawn_span_builder(
        rx,
        handle.submitter(),
        &registry,
        "h".into(),
        SpanBuilderConfig::default(),
        Correlation::default(),
    )
    .unwrap();
    let c = server(1, std::process::id());
    for (t, bytes, dir) in [(10, REQ, direction::INGRESS), (20, OK, direction::EGRESS)] {
        let header = Sim::header(
            &c,
            kind::DATA,
            1,
            dir,
            t,
            t,
            bytes.len() as u64,
            bytes.len() as u32,
        );
        tx.send(vec![SocketEvent {
            header,
            data: Bytes::from_static(bytes),
        }])
        .unwrap();
    }
    drop(tx);
    thread.join().unwrap();
    rt.block_on(handle.shutdown(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(*got.lock().unwrap(), 1);
    assert!(
        registry
            .render()
            .contains("loupe_spans_created_total{kind=\"http_server\"} 1\n")
    );
}

/// A client that writes its request head piece by piece (Rust's `write!` on an unbuffered
/// TcpStream makes one write per formatted piece) still gets its spans, request after request.
#[test]
fn http_client_request_heads_written_in_pieces() {
    let mut s = Sim::new();
    let http = client(4, 100, 8080);
    let mut t = 0;
    for (path, status) in [("/api/users/7", "200"), ("/nope", "404")] {
        for piece in [
            &b"GET "[..],
            path.as_bytes(),
            b" HTTP/1.1\r\nhost: ",
            b"10.0.0.7:8080",
            b"\r\n",
            b"\r\n",
        ] {
            s.write(&http, 5, t, t + 1, piece);
            t += 2;
        }
        let response = format!("HTTP/1.1 {status} X\r\nContent-Length: 2\r\n\r\nok");
        s.read(&http, 5, t, t + 10, response.as_bytes());
        t += 20;
    }
    let spans = s.spans();
    let got: Vec<(String, Option<String>)> = spans
        .iter()
        .map(|(_, span)| (span.name.clone(), a(span, "url.full")))
        .collect();
    assert_eq!(
        got,
        [
            (
                "GET".to_string(),
                Some("http://10.0.0.7:8080/api/users/7".to_string())
            ),
            (
                "GET".to_string(),
                Some("http://10.0.0.7:8080/nope".to_string())
            ),
        ]
    );
}

/// A client gone before its spans are built (pid 0 here: /proc knows nothing) is named after the
/// comm its OPEN event carried; a process /proc knows keeps its /proc name.
#[test]
fn short_lived_clients_are_named_by_their_comm() {
    let mut s = Sim::new();
    for (pid, id, comm, want) in [
        (0, 10, &b"curl\0\0\0\0\0\0\0\0\0\0\0\0"[..], "curl"),
        (100, 11, &b"something\0\0\0\0\0\0\0"[..], "svc100"),
    ] {
        let c = client(id, pid, 8080);
        s.open_by(&c, 1, comm);
        s.write(&c, 5, 2, 3, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n");
        s.read(&c, 5, 4, 5, b"HTTP/1.1 204 No Content\r\n\r\n");
        let spans = s.spans();
        assert_eq!(spans.len(), 1);
        assert_eq!(attr(&spans[0].0, "service.name").as_deref(), Some(want));
    }
}

/// On the fexit path a write is timed by its end, and the reader can return before the writer
/// does: a same-host client span is then moved back to start no later than its server span, in
/// either event order.
#[test]
fn linked_client_spans_never_start_after_their_server_span() {
    let mut s = Sim::new();
    let (cl, sv) = same_host_pair();
    let req = |p: &str| format!("GET {p} HTTP/1.1\r\nHost: localhost:8080\r\n\r\n");
    // Client event first (start unknown: 0), ending after the server's read.
    s.write(&cl, 21, 0, 300, req("/a").as_bytes());
    s.read(&sv, 31, 250, 250, req("/a").as_bytes());
    s.write(&sv, 31, 400, 400, OK);
    s.read(&cl, 21, 450, 450, OK);
    // Server event first.
    s.read(&sv, 31, 1250, 1250, req("/b").as_bytes());
    s.write(&cl, 21, 0, 1300, req("/b").as_bytes());
    s.write(&sv, 31, 1400, 1400, OK);
    s.read(&cl, 21, 1450, 1450, OK);

    let spans = s.spans();
    for path in ["/a", "/b"] {
        let server = spans
            .iter()
            .map(|(_, s)| s)
            .find(|s| s.name == format!("GET {path}"))
            .unwrap();
        let client = spans
            .iter()
            .map(|(_, s)| s)
            .find(|c| c.span_id == server.parent_span_id)
            .unwrap();
        assert_eq!(
            client.start_time_unix_nano, server.start_time_unix_nano,
            "{path}"
        );
        assert!(
            client.end_time_unix_nano >= server.end_time_unix_nano,
            "{path}"
        );
    }
}

/// A connection picked up mid-request (a read before the agent's start took "GET "): the rest of
/// that head is no request, and its response answers nothing seen; the next request on the
/// connection still makes its span.
#[test]
fn http_server_connection_joined_mid_request_recovers_at_the_next_request() {
    let mut s = Sim::new();
    let sv = server(9, 30);
    s.read(
        &sv,
        31,
        10,
        10,
        b"/api/users/11 HTTP/1.1\r\nhost: x\r\n\r\n",
    );
    s.write(
        &sv,
        31,
        20,
        20,
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    );
    for (t, piece) in [
        (30, &b"GET "[..]),
        (31, b"/api/users/12"),
        (32, b" HTTP/1.1\r\nhost: "),
        (33, b"x"),
        (34, b"\r\n"),
        (35, b"\r\n"),
    ] {
        s.read(&sv, 31, t, t, piece);
    }
    s.write(
        &sv,
        31,
        40,
        40,
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    );
    let names: Vec<String> = s.spans().into_iter().map(|(_, sp)| sp.name).collect();
    assert_eq!(names, ["GET /api/users/{id}"]);
}

/// The rest of a head a connection was picked up in the middle of, in many small reads, is one
/// detection attempt: the response after it is recognized and the next request makes its span.
/// Bytes that never become a protocol still give up after a bounded amount.
#[test]
fn detection_counts_runs_of_bytes_not_reads() {
    let mut s = Sim::new();
    let sv = server(9, 30);
    for (t, piece) in [
        (10, &b"/api/users/11 HTTP/1.1\r\nhost: "[..]),
        (11, b"127.0.0.1:8080"),
        (12, b"\r\n"),
        (13, b"\r\n"),
        (14, b"x-extra: 1\r\n"),
    ] {
        s.read(&sv, 31, t, t, piece);
    }
    s.write(
        &sv,
        31,
        20,
        20,
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    );
    s.read(
        &sv,
        31,
        30,
        30,
        b"GET /api/users/12 HTTP/1.1\r\nhost: x\r\n\r\n",
    );
    s.write(
        &sv,
        31,
        40,
        40,
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    );
    let names: Vec<String> = s.spans().into_iter().map(|(_, sp)| sp.name).collect();
    assert_eq!(names, ["GET /api/users/{id}"]);

    // Opaque bytes in both directions, read by read: given up after MAX_DETECT_ATTEMPTS runs.
    let mut s = Sim::new();
    let other = server(10, 30);
    for t in 0..(2 * u64::from(MAX_DETECT_ATTEMPTS)) {
        let piece = [0xde, 0xad, t as u8, 0x01];
        if t % 2 == 0 {
            s.read(&other, 31, t, t, &piece);
        } else {
            s.write(&other, 31, t, t, &piece);
        }
    }
    assert!(matches!(
        s.b.conns.get(&10).map(|c| &c.parser),
        Some(Parser::Opaque)
    ));
}

/// The server read, answered and finished before the client's write event came out of the ring
/// (fexit times a write by its return): the server span waits and is still re-parented. One that
/// waits in vain goes out unlinked once LINGER_NS has passed.
#[test]
fn a_server_span_finished_before_its_client_event_is_still_linked() {
    let mut s = Sim::new();
    let (cl, sv) = same_host_pair();
    let req = b"GET /late HTTP/1.1\r\nHost: localhost:8080\r\n\r\n";
    s.read(&sv, 31, 150, 150, req);
    s.write(&sv, 31, 300, 300, OK);
    assert_eq!(s.b.finished_len(), 0, "the server span lingers");
    s.write(&cl, 21, 0, 320, req);
    s.read(&cl, 21, 400, 400, OK);
    let spans = s.spans();
    let server = spans
        .iter()
        .map(|(_, s)| s)
        .find(|s| s.name == "GET /late")
        .unwrap();
    let client = spans
        .iter()
        .map(|(_, s)| s)
        .find(|s| s.name == "GET")
        .unwrap();
    assert_eq!(server.parent_span_id, client.span_id);
    assert_eq!(server.trace_id, client.trace_id);
    assert_eq!(s.b.core.ctx.len(), (0, 0), "nothing left waiting");

    // No client ever: out after LINGER_NS, unlinked.
    let mut s = Sim::new();
    let (_, sv) = same_host_pair();
    s.read(&sv, 31, 150, 150, req);
    s.write(&sv, 31, 300, 300, OK);
    s.b.tick(300 + LINGER_NS - 1);
    assert_eq!(s.b.finished_len(), 0);
    s.b.tick(300 + LINGER_NS);
    assert_eq!(s.b.finished_len(), 1);
    assert_eq!(s.b.core.ctx.len(), (0, 0));
}

/// A DATA event as the kernel sends it on a server connection: with the thread's request tag,
/// and the sampled flag on the write that ended a request CPU samples were taken in.
fn tagged(
    c: &C,
    tid: u32,
    dir: u32,
    t: u64,
    data: &[u8],
    request_ns: u64,
    sampled: bool,
) -> SocketEvent {
    let mut header = Sim::header(
        c,
        kind::DATA,
        tid,
        dir,
        t,
        t,
        data.len() as u64,
        data.len() as u32,
    );
    header.request_ns = request_ns;
    if sampled {
        header.flags = flags::REQUEST_SAMPLED;
    }
    SocketEvent {
        header,
        data: Bytes::copy_from_slice(data),
    }
}

/// A write to stdout as the kernel reports it.
fn log_write(pid: u32, tid: u32, t: u64, line: &[u8]) -> SocketEvent {
    SocketEvent {
        header: SocketEventHeader {
            kind: kind::LOG,
            pid,
            tid,
            fd: 1,
            direction: direction::EGRESS,
            timestamp_ns: t,
            start_ns: t,
            bytes: line.len() as u64,
            captured: line.len() as u32,
            ..SocketEventHeader::default()
        },
        data: Bytes::copy_from_slice(line),
    }
}

#[test]
fn server_spans_are_published_for_the_profiler_and_logs_carry_their_request() {
    let mut sim = Sim::new();
    let index = SpanIndex::new(16, 16);
    let logs = LogAssembler::new(
        crate::logs::LogConfig::default(),
        &sim.registry,
        sim.clock,
        Arc::new(InstrumentationScope::default()),
    );
    sim.b = std::mem::replace(
        &mut sim.b,
        SpanBuilder::new(
            SpanBuilderConfig::default(),
            &sim.registry,
            "x".into(),
            sim.clock,
            Box::new(FakeResolver),
        ),
    )
    .with_span_index(index.clone())
    .with_logs(logs);

    let c = server(1, 4242);
    sim.open(&c, 1);
    // Request 1: its thread was sampled (the response carries the flag); it logs a line.
    sim.b.handle_all(&[
        tagged(
            &c,
            7,
            direction::INGRESS,
            100,
            b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n",
            100,
            false,
        ),
        log_write(
            4242,
            7,
            150,
            b"{\"level\":\"warn\",\"msg\":\"in request\"}\n",
        ),
        tagged(
            &c,
            7,
            direction::EGRESS,
            200,
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            100,
            true,
        ),
        // Outside any request now.
        log_write(4242, 7, 250, b"idle\n"),
        // Request 2, not sampled by the kernel: published in the recent tier.
        tagged(
            &c,
            7,
            direction::INGRESS,
            300,
            b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n",
            300,
            false,
        ),
        tagged(
            &c,
            7,
            direction::EGRESS,
            400,
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            300,
            false,
        ),
    ]);
    let spans = sim.spans();
    assert_eq!(spans.len(), 2);
    let (a, b) = (&spans[0].1, &spans[1].1);
    assert_eq!((a.name.as_str(), b.name.as_str()), ("GET /a", "GET /b"));
    let hex = |id: &[u8]| id.iter().map(|x| format!("{x:02x}")).collect::<String>();
    assert_eq!(
        attr(&a.attributes, "pyroscope.profile.id"),
        Some(hex(&a.span_id))
    );
    assert_eq!(
        attr(&b.attributes, "pyroscope.profile.id"),
        Some(hex(&b.span_id))
    );
    assert_eq!(index.len(), (1, 1), "one sampled request, one recent");
    let found = index.lookup(&[(7, 100), (7, 300), (7, 200)]);
    assert_eq!(
        found[0].as_ref().map(|s| s.span_id.to_vec()),
        Some(a.span_id.clone())
    );
    assert_eq!(found[0].as_ref().map(|s| &*s.name), Some("GET /a"));
    assert_eq!(
        found[1].as_ref().map(|s| s.span_id.to_vec()),
        Some(b.span_id.clone())
    );
    assert!(found[2].is_none());

    let batch = sim.b.take_logs(u64::MAX, 0).expect("log records");
    let records: Vec<_> = batch.resources.iter().flat_map(|r| &r.records).collect();
    assert_eq!(records.len(), 2);
    assert_eq!(
        records[0].body,
        "{\"level\":\"warn\",\"msg\":\"in request\"}"
    );
    assert_eq!(records[0].severity, loupe_collector::logs::Severity::Warn);
    assert_eq!(
        records[0].trace_id.map(|t| t.to_vec()),
        Some(a.trace_id.clone())
    );
    assert_eq!(
        records[0].span_id.map(|s| s.to_vec()),
        Some(a.span_id.clone())
    );
    assert_eq!(
        (records[1].body.as_str(), records[1].trace_id),
        ("idle", None)
    );
    // The resource is the process's, as for its spans.
    assert_eq!(
        attr(&batch.resources[0].resource.attributes, "service.name").as_deref(),
        Some("svc4242")
    );
}

fn kctx(trace: u8, span: u8, parent: u8) -> loupe_common::socket::SpanCtx {
    loupe_common::socket::SpanCtx {
        trace_id: [trace; 16],
        span_id: [span; 8],
        parent_id: [parent; 8],
    }
}

#[test]
fn a_server_request_with_a_peers_tcp_option_context_is_its_childs() {
    let mut s = Sim::with(SpanBuilderConfig {
        link_same_host: false,
        ..SpanBuilderConfig::default()
    });
    let c = server(1, 100);
    s.open(&c, 10);
    s.io_ctx(
        &c,
        101,
        direction::INGRESS,
        1_000,
        REQ,
        kctx(0xaa, 0x11, 0x22),
        true,
    );
    s.io_ctx(
        &c,
        101,
        direction::EGRESS,
        1_200,
        OK,
        kctx(0xaa, 0x11, 0x22),
        true,
    );
    // Pipelined in one read: the second request must not take the same context.
    let two = [REQ, REQ].concat();
    s.io_ctx(
        &c,
        101,
        direction::INGRESS,
        2_000,
        &two,
        kctx(0xbb, 0x33, 0x44),
        true,
    );
    s.write(&c, 101, 2_100, 2_200, &[OK, OK].concat());
    let spans = s.spans();
    assert_eq!(spans.len(), 3);
    let first = &spans[0].1;
    assert_eq!(first.trace_id, vec![0xaa; 16]);
    assert_eq!(first.span_id, vec![0x11; 8]);
    assert_eq!(first.parent_span_id, vec![0x22; 8]);
    assert_eq!(spans[1].1.parent_span_id, vec![0x44; 8]);
    assert_eq!(spans[1].1.span_id, vec![0x33; 8]);
    assert!(spans[2].1.parent_span_id.is_empty(), "a second adoption");
    assert_ne!(spans[2].1.span_id, vec![0x33; 8]);
    assert_eq!(
        s.metric("loupe_spans_server_parents_total{source=\"tcp_option\"}"),
        2
    );
}

#[test]
fn the_kernels_context_without_a_peer_is_a_root_with_the_kernels_ids() {
    let mut s = Sim::new();
    let c = server(1, 100);
    s.open(&c, 10);
    s.io_ctx(
        &c,
        101,
        direction::INGRESS,
        1_000,
        REQ,
        kctx(0xaa, 0x11, 0),
        false,
    );
    // Its thread's outgoing call carries the kernel's context, a child of the server span.
    let out = client(2, 100, 9000);
    s.io_ctx(
        &out,
        101,
        direction::EGRESS,
        1_050,
        REQ,
        kctx(0xaa, 0x55, 0x11),
        false,
    );
    s.read(&out, 101, 1_060, 1_080, OK);
    s.write(&c, 101, 1_100, 1_200, OK);
    let spans = s.spans();
    let server_span = &spans.iter().find(|(_, sp)| sp.kind == 2).unwrap().1;
    let client_span = &spans.iter().find(|(_, sp)| sp.kind == 3).unwrap().1;
    assert_eq!(server_span.trace_id, vec![0xaa; 16]);
    assert_eq!(server_span.span_id, vec![0x11; 8]);
    assert!(server_span.parent_span_id.is_empty());
    assert_eq!(client_span.trace_id, vec![0xaa; 16]);
    assert_eq!(client_span.span_id, vec![0x55; 8]);
    assert_eq!(client_span.parent_span_id, vec![0x11; 8]);
}

#[test]
fn a_traceparent_header_wins_over_the_tcp_option() {
    let mut s = Sim::new();
    let c = server(1, 100);
    s.open(&c, 10);
    let req = b"GET / HTTP/1.1\r\nHost: a\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\n";
    s.io_ctx(
        &c,
        101,
        direction::INGRESS,
        1_000,
        req,
        kctx(0xaa, 0x11, 0x22),
        true,
    );
    // The thread's call: the kernel's parent is the server span, which joined the header's
    // trace, so the call joins it too.
    let out = client(2, 100, 9000);
    s.io_ctx(
        &out,
        101,
        direction::EGRESS,
        1_050,
        REQ,
        kctx(0xaa, 0x55, 0x11),
        false,
    );
    s.read(&out, 101, 1_060, 1_080, OK);
    s.write(&c, 101, 1_100, 1_200, OK);
    let spans = s.spans();
    let server_span = &spans.iter().find(|(_, sp)| sp.kind == 2).unwrap().1;
    let client_span = &spans.iter().find(|(_, sp)| sp.kind == 3).unwrap().1;
    let header_trace = hex_bytes("0af7651916cd43dd8448eb211c80319c");
    assert_eq!(server_span.trace_id, header_trace);
    assert_eq!(server_span.parent_span_id, hex_bytes("b7ad6b7169203331"));
    assert_eq!(server_span.span_id, vec![0x11; 8]);
    assert_eq!(client_span.trace_id, header_trace);
    assert_eq!(client_span.parent_span_id, vec![0x11; 8]);
    assert_eq!(
        s.metric("loupe_spans_server_parents_total{source=\"traceparent\"}"),
        1
    );
}

fn hex_bytes(h: &str) -> Vec<u8> {
    (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn lingering_spans_are_taken_out_of_order_and_settled_in_order() {
    let lingering = |request: RequestRef, since_ns: u64| Lingering {
        request,
        key: None,
        since_ns,
        finished: Finished {
            pid: 1,
            process: Arc::new(ProcessInfo {
                pod_pending: None,
                service: "svc".into(),
                resource: Arc::default(),
            }),
            span: SpanData {
                trace_id: [0; 16],
                span_id: [0; 8],
                parent_span_id: None,
                trace_state: String::new(),
                name: String::new(),
                kind: loupe_collector::traces::SpanKind::Server,
                start_time_unix_nano: 0,
                end_time_unix_nano: 0,
                attributes: Vec::new(),
                error: None,
            },
        },
    };
    let mut l = Lingerers::default();
    for (i, since) in [(1, 10), (2, 20), (3, 30)] {
        l.push(lingering((7, i), since));
    }
    assert_eq!(l.take((7, 2)).map(|x| x.request), Some((7, 2)));
    assert!(l.take((7, 2)).is_none(), "taken once");
    assert!(l.take((9, 9)).is_none());
    // Not due yet: nothing comes out, and the empty slot stays behind the first.
    assert!(l.pop_if(|x| x.since_ns < 10).is_none());
    let due = |x: &Lingering| x.since_ns <= 30;
    assert_eq!(l.pop_if(due).map(|x| x.request), Some((7, 1)));
    // The empty slot of (7, 2) is skipped on the way to (7, 3).
    assert_eq!(l.pop_if(due).map(|x| x.request), Some((7, 3)));
    assert!(l.pop_if(due).is_none());
    assert_eq!(l.slots(), 0);
    assert!(l.index.is_empty());
    // Sequence numbers go on after the queue emptied.
    l.push(lingering((8, 1), 40));
    assert_eq!(l.take((8, 1)).map(|x| x.request), Some((8, 1)));
}
