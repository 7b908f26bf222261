//! Parser throughput: `cargo bench -p loupe-protocols` (criterion; `cargo xtask bench --only
//! parsers` runs it and summarizes).
//!
//! Each benchmark replays a conversation on one long-lived connection, the way the agent feeds it:
//! one `feed` per socket syscall, with only the first [`CAPTURE`] bytes captured (the agent's
//! default) and the real byte count. Throughput is in socket events (feed calls) and captured bytes
//! (what the parser reads; the rest is skipped by count); the benchmark's parameter says how many
//! request/response pairs one iteration holds.
//! Each setup checks the events come out as expected, so the figures are for real parsing.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use loupe_protocols::http2::frame_bytes as h2_frame;
use loupe_protocols::{Flow, Http1Connection, Http2Connection, MySqlConnection, RedisConnection};

/// Bytes of each buffer the agent captures by default (`--capture-bytes`).
const CAPTURE: usize = 1024;

const C2S: Flow = Flow::ClientToServer;
const S2C: Flow = Flow::ServerToClient;

/// One iteration's socket events: (flow, bytes on the wire).
struct Conversation {
    chunks: Vec<(Flow, Vec<u8>)>,
    pairs: u64,
}

impl Conversation {
    fn throughput(&self) -> Throughput {
        Throughput::ElementsAndBytes {
            elements: self.chunks.len() as u64,
            bytes: self
                .chunks
                .iter()
                .map(|(_, b)| b.len().min(CAPTURE) as u64)
                .sum(),
        }
    }

    fn id(&self, name: &str) -> BenchmarkId {
        BenchmarkId::new(name, format!("{} pairs", self.pairs))
    }
}

/// Feeds every chunk as the agent does: a captured prefix and the real length.
macro_rules! replay {
    ($conn:expr, $conv:expr, $events:expr) => {
        for (flow, bytes) in &$conv.chunks {
            let captured = &bytes[..bytes.len().min(CAPTURE)];
            $conn.feed(*flow, captured, bytes.len() as u64, $events);
        }
    };
}

/// Benchmarks one conversation on `$conn`, after checking that a replay in the steady state (the
/// second one: late `End::Unknown` ends of the first are out) gives `$per_pair` events per pair,
/// and, when `$framed`, that framing was never lost.
macro_rules! bench_conversation {
    ($group:expr, $name:expr, $conn:expr, $conv:expr, $per_pair:expr, $framed:expr) => {{
        let (name, conv, mut conn) = ($name, $conv, $conn);
        let mut events = Vec::new();
        replay!(conn, conv, &mut events);
        events.clear();
        replay!(conn, conv, &mut events);
        assert_eq!(events.len() as u64, conv.pairs * $per_pair, "{name}");
        assert!(!$framed || conn.desyncs() == 0, "{name}");
        events.clear();
        $group.throughput(conv.throughput());
        $group.bench_function(conv.id(name), |b| {
            b.iter(|| {
                replay!(conn, conv, &mut events);
                black_box(&events);
                events.clear();
            })
        });
    }};
}

// ---- HTTP/1.1 ----

fn http_get(id: u64) -> Vec<u8> {
    format!(
        "GET /api/users/{id}?fields=name,plan HTTP/1.1\r\nHost: users.shop.svc:8080\r\n\
         User-Agent: Go-http-client/1.1\r\nAccept: application/json\r\n\
         traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\
         Accept-Encoding: gzip\r\n\r\n"
    )
    .into_bytes()
}

fn http_ok(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nDate: Thu, 26 Nov 2026 08:00:00 GMT\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

const JSON: &str = r#"{"id":42,"name":"user 42","plan":"pro","active":true}"#;

fn http_keepalive(pairs: u64) -> Conversation {
    let mut chunks = Vec::new();
    for i in 0..pairs {
        chunks.push((C2S, http_get(i)));
        chunks.push((S2C, http_ok(JSON)));
    }
    Conversation { chunks, pairs }
}

/// POST with a 16 KiB body (one write, only the head and the body's start captured), 201.
fn http_post_body(pairs: u64) -> Conversation {
    let body = "x".repeat(16 * 1024);
    let mut chunks = Vec::new();
    for _ in 0..pairs {
        let mut req = format!(
            "POST /api/orders HTTP/1.1\r\nHost: orders.shop.svc:8080\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body.as_bytes());
        chunks.push((C2S, req));
        chunks.push((
            S2C,
            b"HTTP/1.1 201 Created\r\nLocation: /api/orders/981\r\nContent-Length: 0\r\n\r\n"
                .to_vec(),
        ));
    }
    Conversation { chunks, pairs }
}

/// GET answered with a chunked body written in three writes (head + first chunk, middle, last).
/// Each chunk fits in the capture: a chunk's trailing CRLF outside it loses framing (`End::Unknown`).
fn http_chunked(pairs: u64) -> Conversation {
    let mut chunks = Vec::new();
    for i in 0..pairs {
        chunks.push((C2S, http_get(i)));
        chunks.push((
            S2C,
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n1a\r\nabcdefghijklmnopqrstuvwxyz\r\n"
                .to_vec(),
        ));
        let middle = format!("200\r\n{}\r\n", "y".repeat(0x200)).into_bytes();
        chunks.push((S2C, middle));
        chunks.push((S2C, b"0\r\n\r\n".to_vec()));
    }
    Conversation { chunks, pairs }
}

/// 4 pipelined GETs in one write, their 4 responses in one write (each write fits in the capture:
/// requests past it are not seen).
fn http_pipelined(batches: u64) -> Conversation {
    let mut chunks = Vec::new();
    for _ in 0..batches {
        let reqs: Vec<u8> = (0..4).flat_map(http_get).collect();
        let resps: Vec<u8> = (0..4).flat_map(|_| http_ok(JSON)).collect();
        assert!(reqs.len() <= CAPTURE && resps.len() <= CAPTURE);
        chunks.push((C2S, reqs));
        chunks.push((S2C, resps));
    }
    Conversation {
        chunks,
        pairs: batches * 4,
    }
}

fn bench_http(c: &mut Criterion) {
    let mut g = c.benchmark_group("http1");
    for (name, conv) in [
        ("get_200_keepalive", http_keepalive(64)),
        ("post_16k_body_201", http_post_body(64)),
        ("get_chunked_3_writes", http_chunked(64)),
        ("pipelined_4", http_pipelined(16)),
    ] {
        bench_conversation!(g, name, Http1Connection::new(), conv, 4, true);
    }
    g.finish();
}

// ---- MySQL ----

fn pkt(seq: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = (payload.len() as u32).to_le_bytes()[..3].to_vec();
    v.push(seq);
    v.extend_from_slice(payload);
    v
}

fn lenenc(s: &[u8]) -> Vec<u8> {
    [&[s.len() as u8][..], s].concat()
}

fn coldef(table: &str, name: &str, ty: u8) -> Vec<u8> {
    [
        lenenc(b"def"),
        lenenc(b"shop"),
        lenenc(table.as_bytes()),
        lenenc(table.as_bytes()),
        lenenc(name.as_bytes()),
        lenenc(name.as_bytes()),
        vec![
            0x0c, 0x2d, 0x00, 0xff, 0x00, 0x00, 0x00, ty, 0x00, 0x00, 0x00, 0x00, 0x00,
        ],
    ]
    .concat()
}

fn eof(seq: u8) -> Vec<u8> {
    pkt(seq, &[0xfe, 0, 0, 0x02, 0x00])
}

fn ok(seq: u8, affected: u8, insert_id: u8) -> Vec<u8> {
    pkt(seq, &[0x00, affected, insert_id, 0x02, 0x00, 0, 0])
}

/// A classic text result set: (id, name, email) × `rows`.
fn result_set(rows: usize) -> Vec<u8> {
    let mut v = pkt(1, &[0x03]);
    v.extend(pkt(2, &coldef("users", "id", 0x08)));
    v.extend(pkt(3, &coldef("users", "name", 0xfd)));
    v.extend(pkt(4, &coldef("users", "email", 0xfd)));
    v.extend(eof(5));
    let mut seq = 6u8;
    for i in 0..rows {
        let row = [
            lenenc(i.to_string().as_bytes()),
            lenenc(format!("user {i}").as_bytes()),
            lenenc(format!("user{i}@example.com").as_bytes()),
        ]
        .concat();
        v.extend(pkt(seq, &row));
        seq = seq.wrapping_add(1);
    }
    v.extend(eof(seq));
    v
}

fn query(sql: &str) -> Vec<u8> {
    pkt(0, &[&[0x03][..], sql.as_bytes()].concat())
}

/// A MariaDB greeting, the client's handshake response and the server's OK: the connection
/// starts in the command phase with its schema known, as in the agent when it saw the connect.
fn mysql_connected() -> MySqlConnection {
    let mut greeting = vec![0x0a];
    greeting.extend_from_slice(b"5.5.5-10.11.6-MariaDB-0+deb12u1\0");
    greeting.extend_from_slice(&11u32.to_le_bytes());
    greeting.extend_from_slice(b"Kz3>k'a^\0");
    greeting.extend_from_slice(&[0xfe, 0xf7, 0x2d, 0x02, 0x00, 0xff, 0x81, 21]);
    greeting.extend_from_slice(&[0; 6]);
    greeting.extend_from_slice(&[0x1d, 0x00, 0x00, 0x00]);
    greeting.extend_from_slice(b"Y\\9pO#uW}7B&\0mysql_native_password\0");
    let caps: u32 =
        0x1 | 0x8 | 0x200 | 0x2000 | 0x8000 | 0x1_0000 | 0x2_0000 | 0x4_0000 | 0x8_0000 | (1 << 21);
    let mut response = caps.to_le_bytes().to_vec();
    response.extend_from_slice(&0x0100_0000u32.to_le_bytes());
    response.push(0x2d);
    response.extend_from_slice(&[0; 23]);
    response.extend_from_slice(b"app\0");
    response.push(20);
    response.extend_from_slice(&[0x5a; 20]);
    response.extend_from_slice(b"shop\0mysql_native_password\0");
    let mut conn = MySqlConnection::new();
    let mut events = Vec::new();
    for (flow, bytes) in [
        (S2C, pkt(0, &greeting)),
        (C2S, pkt(1, &response)),
        (S2C, ok(2, 0, 0)),
    ] {
        conn.feed(flow, &bytes, bytes.len() as u64, &mut events);
    }
    assert_eq!(conn.schema(), Some("shop"));
    conn
}

fn mysql_select(pairs: u64, rows: usize) -> Conversation {
    let mut chunks = Vec::new();
    for i in 0..pairs {
        chunks.push((
            C2S,
            query(&format!(
                "SELECT id, name, email FROM users WHERE id > {i} AND plan = 'pro' ORDER BY id LIMIT {rows}"
            )),
        ));
        chunks.push((S2C, result_set(rows)));
    }
    Conversation { chunks, pairs }
}

fn mysql_insert(pairs: u64) -> Conversation {
    let mut chunks = Vec::new();
    for i in 0..pairs {
        chunks.push((
            C2S,
            query(&format!(
                "INSERT INTO orders (user_id, sku, quantity, total) VALUES ({i}, 'SKU-{i}', 2, 19.98)"
            )),
        ));
        chunks.push((S2C, ok(1, 1, i as u8)));
    }
    Conversation { chunks, pairs }
}

fn bench_mysql(c: &mut Criterion) {
    let mut g = c.benchmark_group("mysql");
    for (name, conv, framed) in [
        ("com_query_10_rows", mysql_select(64, 10), true),
        // Rows past the capture are skipped by count; the row count is then a lower bound.
        ("com_query_1000_rows_capped", mysql_select(16, 1000), false),
        ("com_query_insert_ok", mysql_insert(64), true),
    ] {
        bench_conversation!(g, name, mysql_connected(), conv, 2, framed);
    }
    g.finish();
}

// ---- Redis ----

fn resp_command(args: &[&str]) -> Vec<u8> {
    let mut v = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        v.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    v
}

/// A pipeline of 16 commands in one write (GET, SET, INCR, HGETALL, EXPIRE…), their replies in
/// one read.
fn redis_pipeline(batches: u64) -> Conversation {
    let mut reqs = Vec::new();
    let mut replies = Vec::new();
    for i in 0..4 {
        let key = format!("session:{i}:4bf92f3577b34da6");
        reqs.extend(resp_command(&["GET", &key]));
        replies.extend(b"$42\r\n{\"user\":42,\"cart\":[1,2,3],\"ts\":1764144000}\r\n");
        reqs.extend(resp_command(&[
            "SET",
            &key,
            "{\"user\":42,\"cart\":[1,2,3]}",
            "EX",
            "3600",
        ]));
        replies.extend(b"+OK\r\n");
        reqs.extend(resp_command(&["INCR", &format!("hits:{i}")]));
        replies.extend(format!(":{}\r\n", 1000 + i).as_bytes());
        reqs.extend(resp_command(&["HGETALL", &format!("user:{i}")]));
        replies.extend(b"*4\r\n$4\r\nname\r\n$7\r\nuser 42\r\n$4\r\nplan\r\n$3\r\npro\r\n");
    }
    assert!(reqs.len() <= CAPTURE && replies.len() <= CAPTURE);
    let mut chunks = Vec::new();
    for _ in 0..batches {
        chunks.push((C2S, reqs.clone()));
        chunks.push((S2C, replies.clone()));
    }
    Conversation {
        chunks,
        pairs: batches * 16,
    }
}

/// One command per round trip.
fn redis_single(pairs: u64) -> Conversation {
    let mut chunks = Vec::new();
    for i in 0..pairs {
        chunks.push((C2S, resp_command(&["GET", &format!("product:{i}:price")])));
        chunks.push((S2C, b"$5\r\n19.99\r\n".to_vec()));
    }
    Conversation { chunks, pairs }
}

fn bench_redis(c: &mut Criterion) {
    let mut g = c.benchmark_group("redis");
    for (name, conv) in [
        ("pipeline_16", redis_pipeline(4)),
        ("get_single", redis_single(64)),
    ] {
        bench_conversation!(g, name, RedisConnection::new(), conv, 2, true);
    }
    g.finish();
}

// ---- HTTP/2 and gRPC ----

/// HPACK literal with incremental indexing, new name.
fn h2_insert(name: &str, value: &str) -> Vec<u8> {
    let mut b = vec![0x40, name.len() as u8];
    b.extend_from_slice(name.as_bytes());
    b.push(value.len() as u8);
    b.extend_from_slice(value.as_bytes());
    b
}

/// A gRPC message (length-prefixed) of `len` bytes in a DATA frame.
fn grpc_data(stream: u32, flags: u8, len: usize) -> Vec<u8> {
    let mut m = vec![0];
    m.extend_from_slice(&(len as u32).to_be_bytes());
    m.extend(std::iter::repeat_n(b'x', len));
    h2_frame(0, flags, stream, &m)
}

/// A connection past its preface whose HPACK tables hold what a gRPC client and server insert
/// on their first call: requests then refer to them by index, as in the steady state.
fn grpc_connected() -> Http2Connection {
    let mut c = Http2Connection::new();
    let mut events = Vec::new();
    let mut first = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    first.extend(h2_frame(4, 0, 0, &[]));
    let block = [
        vec![0x83, 0x86],
        h2_insert(":path", "/shop.Inventory/Reserve"),
        h2_insert(":authority", "inventory:50051"),
        h2_insert("content-type", "application/grpc"),
        h2_insert("te", "trailers"),
    ]
    .concat();
    first.extend(h2_frame(1, 0x4, 1, &block));
    first.extend(grpc_data(1, 0x1, 16));
    c.feed(C2S, &first, first.len() as u64, &mut events);
    let mut answer = h2_frame(4, 0, 0, &[]);
    answer.extend(h2_frame(
        1,
        0x4,
        1,
        &[vec![0x88], h2_insert("content-type", "application/grpc")].concat(),
    ));
    answer.extend(grpc_data(1, 0, 64));
    answer.extend(h2_frame(1, 0x5, 1, &h2_insert("grpc-status", "0")));
    c.feed(S2C, &answer, answer.len() as u64, &mut events);
    assert_eq!(events.len(), 3);
    c
}

/// The steady state's request: every field indexed (path 65, authority 64, content-type 63,
/// te 62), then one message.
fn grpc_request(stream: u32) -> Vec<u8> {
    let mut b = h2_frame(1, 0x4, stream, &[0x83, 0x86, 0xc1, 0xc0, 0xbf, 0xbe]);
    b.extend(grpc_data(stream, 0x1, 16));
    b
}

/// The steady state's response: status and content-type (63) indexed, a message, trailers with
/// grpc-status (62) indexed.
fn grpc_response(stream: u32, len: usize) -> Vec<u8> {
    let mut b = h2_frame(1, 0x4, stream, &[0x88, 0xbf]);
    b.extend(grpc_data(stream, 0, len));
    b.extend(h2_frame(1, 0x5, stream, &[0xbe]));
    b
}

/// Unary calls one after the other: a write each way per call.
fn grpc_unary(pairs: u64) -> Conversation {
    let mut chunks = Vec::new();
    for i in 0..pairs as u32 {
        chunks.push((C2S, grpc_request(3 + 2 * i)));
        chunks.push((S2C, grpc_response(3 + 2 * i, 128)));
    }
    Conversation { chunks, pairs }
}

/// Eight calls in flight: eight requests in one write, eight responses in one write.
fn grpc_concurrent(batches: u64) -> Conversation {
    let mut chunks = Vec::new();
    for b in 0..batches as u32 {
        let streams: Vec<u32> = (0..8).map(|i| 3 + 2 * (8 * b + i)).collect();
        chunks.push((C2S, streams.iter().flat_map(|&s| grpc_request(s)).collect()));
        chunks.push((
            S2C,
            streams
                .iter()
                .rev()
                .flat_map(|&s| grpc_response(s, 32))
                .collect(),
        ));
    }
    Conversation {
        chunks,
        pairs: batches * 8,
    }
}

fn bench_http2(c: &mut Criterion) {
    let mut g = c.benchmark_group("http2");
    for (name, conv) in [
        ("grpc_unary", grpc_unary(64)),
        ("grpc_concurrent_8", grpc_concurrent(8)),
    ] {
        bench_conversation!(g, name, grpc_connected(), conv, 3, true);
    }
    g.finish();
}

fn config() -> Criterion {
    // Short enough for `cargo xtask bench` (about 4 s per benchmark), long enough for stable means.
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_http, bench_http2, bench_mysql, bench_redis
}
criterion_main!(benches);
