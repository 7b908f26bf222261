//! The span builder on synthetic socket event sequences (no kernel needed).

use bytes::Bytes;
use loupe_collector::telemetry::Registry;
use loupe_collector::traces::proto::common::KeyValue;
use loupe_collector::traces::proto::common::any_value::Value;
use loupe_collector::traces::proto::trace::Span;
use loupe_common::socket::{
    COMM_BYTES, ConnTuple, OPEN_DATA_BYTES, SocketEventHeader, TcpIsns, direction, isn_known, kind,
    role,
};

use super::*;
use crate::profiler::ProcessIdentity;

mod context;
mod correlation;
mod db;
mod grpc;
mod http;
mod limits;

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

    /// An OPEN event carrying the connection's initial sequence numbers after the comm, as the
    /// kernel sends it.
    fn open_with_isns(&mut self, c: &C, t: u64, isns: TcpIsns) {
        let mut data = vec![0u8; OPEN_DATA_BYTES];
        data[..4].copy_from_slice(b"curl");
        data[COMM_BYTES..COMM_BYTES + 4].copy_from_slice(&isns.client.to_ne_bytes());
        data[COMM_BYTES + 4..COMM_BYTES + 8].copy_from_slice(&isns.server.to_ne_bytes());
        data[COMM_BYTES + 8..COMM_BYTES + 12].copy_from_slice(&isns.known.to_ne_bytes());
        let header = Self::header(c, kind::OPEN, c.pid, 0, t, t, 0, data.len() as u32);
        self.b.handle(&SocketEvent {
            header,
            data: Bytes::from(data),
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
        while let Some((batch, bytes)) = self.b.take_sized_batch(3) {
            // The bytes tallied as the spans finished are what the batch would count.
            assert_eq!(
                bytes,
                loupe_collector::export::SignalBatch::approx_bytes(&batch)
            );
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

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

const REDIS_GET: &[u8] = b"*2\r\n$3\r\nGET\r\n$4\r\nuser\r\n";

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

/// Both ISNs of a connection, as both its ends know them once established.
fn isns(client: u32, server: u32) -> TcpIsns {
    TcpIsns {
        client,
        server,
        known: isn_known::CLIENT | isn_known::SERVER,
        _pad: 0,
    }
}

/// A same-host pair seen through DNAT and SNAT: the client connects from 10.0.0.5:51000 to a
/// service address, the server sees the connection come from 10.0.0.99:40000.
fn snat_pair() -> (C, C) {
    let cl = C {
        id: 1,
        pid: 20,
        role: role::CLIENT,
        tuple: tuple(([10, 0, 0, 5], 51000), ([10, 96, 0, 10], 80)),
    };
    let sv = C {
        id: 2,
        pid: 30,
        role: role::SERVER,
        tuple: tuple(([10, 0, 0, 7], 8080), ([10, 0, 0, 99], 40000)),
    };
    (cl, sv)
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

fn kctx(trace: u8, span: u8, parent: u8) -> loupe_common::socket::SpanCtx {
    loupe_common::socket::SpanCtx {
        trace_id: [trace; 16],
        span_id: [span; 8],
        parent_id: [parent; 8],
    }
}

fn hex_bytes(h: &str) -> Vec<u8> {
    (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
        .collect()
}
