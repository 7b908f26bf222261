//! Property tests (run under stable `cargo test`): arbitrary bytes, splits and capture limits never
//! panic and keep memory bounded; generated valid traffic parses back exactly however it is
//! chunked; the helpers round-trip or are idempotent.

use loupe_protocols::http1::{self, Http1Connection};
use loupe_protocols::http2::{self, Http2Connection, frame_bytes as h2_frame};
use loupe_protocols::mysql::{self, MySqlConnection};
use loupe_protocols::redis::{self, RedisConnection};
use loupe_protocols::traceparent::{self, TraceParent};
use loupe_protocols::{Direction, End, Flow, Role, detect, route, sanitize};
use proptest::prelude::*;

/// Cases per property: `default`, or `LOUPE_FUZZ_CASES` when `cargo xtask fuzz` sets it.
fn cases(default: u32) -> u32 {
    std::env::var("LOUPE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Generous per-connection heap bounds (see each module's constants).
const HTTP_BOUND: usize = 2 * http1::MAX_HEAD + 4096;
const REDIS_BOUND: usize = 64 * 1024;
const MYSQL_BOUND: usize = mysql::MAX_STATEMENT_BYTES + 32 * 1024;
/// Per direction: the HPACK table and its scratch, a frame's payload and a header block.
const H2_BOUND: usize = 2
    * (2 * http2::hpack::MAX_TABLE_SIZE
        + 2 * http2::hpack::MAX_STRING
        + 2 * http2::MAX_HEADER_BLOCK)
    + 64 * http2::MAX_STREAMS;

/// One syscall: flow, captured bytes, extra uncaptured bytes.
fn chunk() -> impl Strategy<Value = (bool, Vec<u8>, u32)> {
    (
        any::<bool>(),
        prop::collection::vec(any::<u8>(), 0..300),
        prop_oneof![3 => Just(0u32), 1 => 0u32..100_000],
    )
}

/// Bytes biased towards protocol syntax so the state machines get deep.
fn protocolish() -> impl Strategy<Value = Vec<u8>> {
    let pieces = prop::sample::select(vec![
        &b"GET / HTTP/1.1\r\n"[..],
        b"HTTP/1.1 200 OK\r\n",
        b"Content-Length: 5\r\n",
        b"Transfer-Encoding: chunked\r\n",
        b"\r\n",
        b"5\r\nhello\r\n",
        b"0\r\n\r\n",
        b"*2\r\n",
        b"$3\r\nGET\r\n",
        b"$-1\r\n",
        b"+OK\r\n",
        b"-ERR x\r\n",
        b":1\r\n",
        b"%1\r\n",
        b"|1\r\n",
        b">3\r\n",
        b"\x01\x00\x00\x00\x0e",
        b"\x09\x00\x00\x00\x03SELECT 1",
        b"\x07\x00\x00\x01\x00\x00\x00\x02\x00\x00\x00",
        b"\x05\x00\x00\x05\xfe\x00\x00\x02\x00",
        b"\x01\x00\x00\x01\x02",
        b"\xff\xff\xff\x00",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"\x00\x00\x00\x04\x00\x00\x00\x00\x00",
        b"\x00\x00\x03\x01\x04\x00\x00\x00\x01\x83\x86\x84",
        b"\x00\x00\x05\x01\x05\x00\x00\x00\x03\x83\x86\x44\x01/",
        b"\x00\x00\x01\x01\x04\x00\x00\x00\x01\x88",
        b"\x00\x00\x02\x00\x01\x00\x00\x00\x01hi",
        b"\x00\x00\x04\x03\x00\x00\x00\x00\x03\x00\x00\x00\x08",
        b"\x00\x00\x02\x09\x04\x00\x00\x00\x01\xbe\xbf",
    ]);
    prop::collection::vec(
        prop_oneof![
            pieces.prop_map(|p| p.to_vec()),
            prop::collection::vec(any::<u8>(), 0..8)
        ],
        0..40,
    )
    .prop_map(|v| v.concat())
}

fn flow(c2s: bool) -> Flow {
    if c2s {
        Flow::ClientToServer
    } else {
        Flow::ServerToClient
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(512), ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_chunks_never_panic(chunks in prop::collection::vec(chunk(), 0..40), gap_at in any::<Option<u8>>()) {
        let mut h = Http1Connection::new();
        let mut m = MySqlConnection::new();
        let mut r = RedisConnection::new();
        let mut t = Http2Connection::new();
        let (mut he, mut me, mut re, mut te) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (i, (c2s, bytes, extra)) in chunks.iter().enumerate() {
            let f = flow(*c2s);
            let total = bytes.len() as u64 + u64::from(*extra);
            h.feed(f, bytes, total, &mut he);
            m.feed(f, bytes, total, &mut me);
            r.feed(f, bytes, total, &mut re);
            t.feed(f, bytes, total, &mut te);
            if gap_at == Some(i as u8) {
                h.gap(f);
                m.gap(f);
                r.gap(f);
                t.gap(f);
            }
            prop_assert!(t.buffered_bytes() <= H2_BOUND);
            prop_assert!(h.buffered_bytes() <= HTTP_BOUND);
            prop_assert!(m.buffered_bytes() <= MYSQL_BOUND);
            prop_assert!(r.buffered_bytes() <= REDIS_BOUND);
            for d in [Direction::Egress, Direction::Ingress] {
                for role in [Role::Client, Role::Server, Role::Unknown] {
                    let _ = detect(bytes, d, role);
                }
            }
        }
        h.close(&mut he);
        m.close(&mut me);
        r.close(&mut re);
        t.close(&mut te);
        check_pairing_mysql(&me)?;
        check_pairing_redis(&re)?;
        check_pairing_http2(&te)?;
    }

    #[test]
    fn protocolish_streams_never_panic(
        c2s in protocolish(),
        s2c in protocolish(),
        splits in prop::collection::vec(1usize..64, 1..20),
        cap in prop_oneof![Just(usize::MAX), 0usize..64],
    ) {
        let mut h = Http1Connection::new();
        let mut m = MySqlConnection::new();
        let mut r = RedisConnection::new();
        let mut t = Http2Connection::new();
        let (mut he, mut me, mut re, mut te) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut a, mut b) = (&c2s[..], &s2c[..]);
        let mut turn = true;
        for s in splits.iter().cycle().take(200) {
            if a.is_empty() && b.is_empty() {
                break;
            }
            let (data, f) = if turn { (&mut a, Flow::ClientToServer) } else { (&mut b, Flow::ServerToClient) };
            turn = !turn;
            let n = (*s).min(data.len());
            let (now, rest) = data.split_at(n);
            *data = rest;
            let captured = &now[..now.len().min(cap)];
            h.feed(f, captured, now.len() as u64, &mut he);
            m.feed(f, captured, now.len() as u64, &mut me);
            r.feed(f, captured, now.len() as u64, &mut re);
            t.feed(f, captured, now.len() as u64, &mut te);
            prop_assert!(t.buffered_bytes() <= H2_BOUND);
            prop_assert!(h.buffered_bytes() <= HTTP_BOUND);
            prop_assert!(m.buffered_bytes() <= MYSQL_BOUND);
            prop_assert!(r.buffered_bytes() <= REDIS_BOUND);
        }
        m.close(&mut me);
        r.close(&mut re);
        t.close(&mut te);
        check_pairing_mysql(&me)?;
        check_pairing_redis(&re)?;
        check_pairing_http2(&te)?;
    }

    #[test]
    fn helpers_never_panic(s in "\\PC{0,200}", b in prop::collection::vec(any::<u8>(), 0..200)) {
        let sanitized = sanitize::sanitize_sql(&s);
        prop_assert!(sanitized.len() <= s.len() + 2);
        let _ = sanitize::sql_operation(&s);
        let lossy = String::from_utf8_lossy(&b);
        let _ = sanitize::sanitize_sql(&lossy);
        let words: Vec<&[u8]> = b.split(|c| *c == b' ').collect();
        let _ = sanitize::sanitize_redis(&s, &words);
        let r = route::infer_route(&s);
        prop_assert!(r.len() <= route::MAX_ROUTE_LEN + 4);
        prop_assert_eq!(route::infer_route(&r), r.clone());
        let _ = traceparent::parse(&s);
        let _ = traceparent::parse(&lossy);
    }

    #[test]
    fn traceparent_round_trips(trace in any::<[u8; 16]>(), parent in any::<[u8; 8]>(), flags in any::<u8>()) {
        match TraceParent::new(trace, parent, flags) {
            Some(tp) => {
                let text = tp.format();
                prop_assert_eq!(text.len(), traceparent::TRACEPARENT_LEN);
                prop_assert_eq!(traceparent::parse(&text), Ok(tp));
                prop_assert_eq!(traceparent::parse(&text.to_uppercase()).is_ok(), text == text.to_uppercase());
            }
            None => prop_assert!(trace == [0; 16] || parent == [0; 8]),
        }
    }

    #[test]
    fn sql_literals_never_survive(
        col in "[a-z_][a-z0-9_]{0,8}",
        n in any::<i64>(),
        f in any::<f64>(),
        text in "[^'\\\\]{0,20}",
        op in prop::sample::select(vec!["=", "<>", ">=", "<"]),
    ) {
        let sql = format!("SELECT `{col}`, {col} FROM t1 WHERE {col} {op} {n} AND x = {f:?} OR y = '{text}' AND z IN ({n}, {n})");
        let want = format!("SELECT `{col}`, {col} FROM t1 WHERE {col} {op} ? AND x = ? OR y = ? AND z IN (?)");
        let once = sanitize::sanitize_sql(&sql);
        // `{f:?}` may print NaN/inf, which are identifiers, not literals.
        if f.is_finite() {
            prop_assert_eq!(&once, &want);
        }
        prop_assert_eq!(sanitize::sanitize_sql(&once), once);
    }
}

/// Every stream ends once, after its request, with at most one response in between; all end
/// after `close`.
fn check_pairing_http2(events: &[http2::Event]) -> Result<(), TestCaseError> {
    let mut open = std::collections::HashMap::new();
    for e in events {
        match e {
            http2::Event::Request { stream, .. } => {
                prop_assert!(open.insert(*stream, false).is_none())
            }
            http2::Event::Response { stream, .. } => {
                let answered = open.get_mut(stream);
                prop_assert!(answered.as_ref().is_some_and(|a| !**a));
                if let Some(a) = answered {
                    *a = true;
                }
            }
            http2::Event::End { stream, .. } => prop_assert!(open.remove(stream).is_some()),
        }
    }
    prop_assert!(open.is_empty());
    Ok(())
}

fn check_pairing_mysql(events: &[mysql::Event]) -> Result<(), TestCaseError> {
    let mut open = std::collections::BTreeSet::new();
    for e in events {
        match e {
            mysql::Event::Request { id, .. } => prop_assert!(open.insert(*id)),
            mysql::Event::Response { id, .. } => {
                prop_assert!(open.remove(id), "response {id} without request")
            }
        }
    }
    prop_assert!(open.is_empty(), "unanswered after close: {open:?}");
    Ok(())
}

fn check_pairing_redis(events: &[redis::Event]) -> Result<(), TestCaseError> {
    let mut open = std::collections::BTreeSet::new();
    for e in events {
        match e {
            redis::Event::Request { id, .. } => prop_assert!(open.insert(*id)),
            redis::Event::Response { id, .. } => {
                prop_assert!(open.remove(id), "response {id} without request")
            }
        }
    }
    prop_assert!(open.is_empty(), "unanswered after close: {open:?}");
    Ok(())
}

// ---------- Generated valid traffic parses back exactly ----------

#[derive(Debug, Clone)]
struct HttpExchange {
    method: &'static str,
    path: String,
    host: Option<String>,
    req_body: usize,
    status: u16,
    chunks: Option<Vec<usize>>,
    resp_body: usize,
}

fn http_exchange() -> impl Strategy<Value = HttpExchange> {
    (
        prop::sample::select(vec![
            "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS",
        ]),
        "(/[a-z0-9]{1,8}){0,4}",
        prop::option::of("[a-z]{1,10}\\.example\\.com"),
        0usize..3000,
        prop::sample::select(vec![200u16, 201, 204, 301, 304, 400, 404, 500, 503]),
        prop::option::of(prop::collection::vec(1usize..700, 0..6)),
        0usize..3000,
    )
        .prop_map(
            |(method, path, host, req_body, status, chunks, resp_body)| HttpExchange {
                method,
                path: if path.is_empty() { "/".into() } else { path },
                host,
                req_body,
                status,
                chunks,
                resp_body,
            },
        )
}

impl HttpExchange {
    fn request(&self) -> Vec<u8> {
        let mut v = format!("{} {} HTTP/1.1\r\n", self.method, self.path).into_bytes();
        if let Some(h) = &self.host {
            v.extend_from_slice(format!("Host: {h}\r\n").as_bytes());
        }
        v.extend_from_slice(format!("Content-Length: {}\r\n\r\n", self.req_body).as_bytes());
        v.extend(std::iter::repeat_n(b'q', self.req_body));
        v
    }

    fn bodiless(&self) -> bool {
        self.method == "HEAD" || self.status == 204 || self.status == 304
    }

    fn response(&self) -> Vec<u8> {
        let mut v = format!("HTTP/1.1 {} X\r\n", self.status).into_bytes();
        match (&self.chunks, self.bodiless()) {
            (Some(chunks), false) => {
                v.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
                for c in chunks {
                    v.extend_from_slice(format!("{c:x}\r\n").as_bytes());
                    v.extend(std::iter::repeat_n(b'c', *c));
                    v.extend_from_slice(b"\r\n");
                }
                v.extend_from_slice(b"0\r\n\r\n");
            }
            (_, bodiless) => {
                v.extend_from_slice(
                    format!("Content-Length: {}\r\n\r\n", self.resp_body).as_bytes(),
                );
                if !bodiless {
                    v.extend(std::iter::repeat_n(b'r', self.resp_body));
                }
            }
        }
        v
    }

    fn resp_body_len(&self) -> u64 {
        match (&self.chunks, self.bodiless()) {
            (_, true) => 0,
            (Some(c), false) => c.iter().sum::<usize>() as u64,
            (None, false) => self.resp_body as u64,
        }
    }
}

/// Splits `data` into syscalls at the given cut sizes.
fn syscalls(data: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = data;
    let mut i = 0;
    while !rest.is_empty() {
        let n = cuts
            .get(i % cuts.len().max(1))
            .copied()
            .unwrap_or(rest.len())
            .clamp(1, rest.len());
        let (a, b) = rest.split_at(n);
        out.push(a.to_vec());
        rest = b;
        i += 1;
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(256), ..ProptestConfig::default() })]

    /// Pipelined exchanges, arbitrarily chunked, fully captured: exact events.
    #[test]
    fn http_round_trip(ex in prop::collection::vec(http_exchange(), 1..5), cuts in prop::collection::vec(1usize..400, 1..8)) {
        let reqs: Vec<u8> = ex.iter().flat_map(HttpExchange::request).collect();
        let resps: Vec<u8> = ex.iter().flat_map(HttpExchange::response).collect();
        let mut c = Http1Connection::new();
        let mut ev = Vec::new();
        for s in syscalls(&reqs, &cuts) {
            c.feed(Flow::ClientToServer, &s, s.len() as u64, &mut ev);
        }
        for s in syscalls(&resps, &cuts) {
            c.feed(Flow::ServerToClient, &s, s.len() as u64, &mut ev);
        }
        prop_assert_eq!(ev.len(), 4 * ex.len(), "{:?}", ev);
        let (req_ev, resp_ev) = ev.split_at(2 * ex.len());
        for (i, x) in ex.iter().enumerate() {
            match &req_ev[2 * i] {
                http1::Event::RequestStart { id, head } => {
                    prop_assert_eq!(*id, i as u64);
                    prop_assert_eq!(head.method.as_str(), x.method);
                    prop_assert_eq!(&head.target, &x.path);
                    prop_assert_eq!(&head.headers.host, &x.host);
                }
                other => prop_assert!(false, "{other:?}"),
            }
            prop_assert_eq!(&req_ev[2 * i + 1], &http1::Event::MessageEnd { flow: Flow::ClientToServer, id: Some(i as u64), end: End::Complete, body_len: x.req_body as u64 });
            match &resp_ev[2 * i] {
                http1::Event::ResponseStart { request_id, head } => {
                    prop_assert_eq!(*request_id, Some(i as u64));
                    prop_assert_eq!(head.status, x.status);
                }
                other => prop_assert!(false, "{other:?}"),
            }
            prop_assert_eq!(&resp_ev[2 * i + 1], &http1::Event::MessageEnd { flow: Flow::ServerToClient, id: Some(i as u64), end: End::Complete, body_len: x.resp_body_len() });
        }
        prop_assert_eq!(c.desyncs(), 0);
    }

    /// One exchange per syscall pair with only `cap` bytes captured: Content-Length bodies are
    /// skipped by count, so the events match whenever the heads fit in the capture.
    #[test]
    fn http_content_length_survives_truncation(ex in prop::collection::vec(http_exchange(), 1..5), cap in 64usize..600) {
        let mut c = Http1Connection::new();
        let mut ev = Vec::new();
        let mut want_heads = 0;
        for x in &ex {
            let x = HttpExchange { chunks: None, ..x.clone() };
            let (req, resp) = (x.request(), x.response());
            c.feed(Flow::ClientToServer, &req[..req.len().min(cap)], req.len() as u64, &mut ev);
            c.feed(Flow::ServerToClient, &resp[..resp.len().min(cap)], resp.len() as u64, &mut ev);
            let head_len = |m: &[u8]| m.windows(4).position(|w| w == b"\r\n\r\n").map_or(usize::MAX, |p| p + 4);
            if head_len(&req) <= cap && head_len(&resp) <= cap {
                want_heads += 1;
            }
        }
        let ends = ev.iter().filter(|e| matches!(e, http1::Event::MessageEnd { end: End::Complete, .. })).count();
        prop_assert!(ends >= 2 * want_heads);
        if want_heads == ex.len() {
            prop_assert_eq!(ev.len(), 4 * ex.len());
            prop_assert_eq!(c.desyncs(), 0);
        }
    }
}

fn resp_cmd(args: &[Vec<u8>]) -> Vec<u8> {
    let mut v = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        v.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        v.extend_from_slice(a);
        v.extend_from_slice(b"\r\n");
    }
    v
}

/// A random RESP3 value (never a push or attribute) and its top-level kind.
fn resp_value() -> impl Strategy<Value = (Vec<u8>, redis::ReplyKind)> {
    use redis::ReplyKind as K;
    let leaf = prop_oneof![
        "[a-zA-Z ]{0,20}".prop_map(|s| (format!("+{s}\r\n").into_bytes(), K::SimpleString)),
        "[A-Z]{1,8} [a-z ]{0,20}".prop_map(|s| (format!("-{s}\r\n").into_bytes(), K::Error)),
        any::<i64>().prop_map(|n| (format!(":{n}\r\n").into_bytes(), K::Integer)),
        prop::collection::vec(any::<u8>(), 0..600).prop_map(|b| {
            (
                [format!("${}\r\n", b.len()).as_bytes(), &b, b"\r\n"].concat(),
                K::BulkString,
            )
        }),
        Just((b"$-1\r\n".to_vec(), K::Null)),
        Just((b"_\r\n".to_vec(), K::Null)),
        Just((b"#t\r\n".to_vec(), K::Boolean)),
        Just((b",-1.5e3\r\n".to_vec(), K::Double)),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        (
            prop::sample::select(vec![b'*', b'~', b'%']),
            prop::collection::vec(inner, 0..6),
        )
            .prop_map(|(ty, items)| {
                let n = if ty == b'%' {
                    items.len() / 2
                } else {
                    items.len()
                };
                let mut v = vec![ty];
                v.extend_from_slice(format!("{n}\r\n").as_bytes());
                let take = if ty == b'%' { 2 * n } else { n };
                for (bytes, _) in items.iter().take(take) {
                    v.extend_from_slice(bytes);
                }
                let kind = match ty {
                    b'*' => redis::ReplyKind::Array,
                    b'~' => redis::ReplyKind::Set,
                    _ => redis::ReplyKind::Map,
                };
                (v, kind)
            })
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(256), ..ProptestConfig::default() })]

    /// A pipeline of commands and replies, arbitrarily chunked: exact pairing and kinds.
    #[test]
    fn redis_round_trip(
        cmds in prop::collection::vec((prop::sample::select(vec!["GET", "SET", "HSET", "DEL", "LRANGE", "EVAL", "PING"]), prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 0..20)), 1..8),
        replies in prop::collection::vec(resp_value(), 8),
        cuts in prop::collection::vec(1usize..300, 1..8),
    ) {
        let wire: Vec<u8> = cmds.iter().flat_map(|(name, args)| {
            let mut all = vec![name.as_bytes().to_vec()];
            all.extend(args.iter().cloned());
            resp_cmd(&all)
        }).collect();
        let reply_wire: Vec<u8> = replies.iter().take(cmds.len()).flat_map(|(b, _)| b.clone()).collect();
        let mut c = RedisConnection::new();
        let mut ev = Vec::new();
        for s in syscalls(&wire, &cuts) {
            c.feed(Flow::ClientToServer, &s, s.len() as u64, &mut ev);
        }
        for s in syscalls(&reply_wire, &cuts) {
            c.feed(Flow::ServerToClient, &s, s.len() as u64, &mut ev);
        }
        prop_assert_eq!(ev.len(), 2 * cmds.len());
        for (i, (name, args)) in cmds.iter().enumerate() {
            match &ev[i] {
                redis::Event::Request { id, command } => {
                    prop_assert_eq!(*id, i as u64);
                    prop_assert_eq!(&command.name, name);
                    prop_assert_eq!(command.arg_count, args.len() as u64);
                    prop_assert_eq!(command.args.len(), args.len().min(redis::MAX_ARGS_KEPT));
                    for (got, want) in command.args.iter().zip(args) {
                        prop_assert_eq!(got.len, want.len() as u64);
                        prop_assert_eq!(&got.prefix[..], &want[..want.len().min(redis::MAX_ARG_PREFIX)]);
                    }
                }
                other => prop_assert!(false, "{other:?}"),
            }
            match &ev[cmds.len() + i] {
                redis::Event::Response { id, reply: Some(r), end: End::Complete } => {
                    prop_assert_eq!(*id, i as u64);
                    prop_assert_eq!(r.kind, replies[i].1);
                }
                other => prop_assert!(false, "{other:?}"),
            }
        }
        prop_assert_eq!(c.desyncs(), 0);
    }
}

fn my_pkt(seq: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = (payload.len() as u32).to_le_bytes()[..3].to_vec();
    v.push(seq);
    v.extend_from_slice(payload);
    v
}

#[derive(Debug, Clone)]
enum MyResp {
    Ok(u8),
    Err(u16),
    Rows(u8, u8),
}

impl MyResp {
    fn wire(&self) -> Vec<u8> {
        match self {
            MyResp::Ok(n) => my_pkt(1, &[0, *n, 0, 2, 0, 0, 0]),
            MyResp::Err(code) => {
                let mut p = vec![0xff];
                p.extend_from_slice(&code.to_le_bytes());
                p.extend_from_slice(b"#HY000boom");
                my_pkt(1, &p)
            }
            MyResp::Rows(cols, rows) => {
                let mut v = my_pkt(1, &[*cols]);
                let mut seq = 2u8;
                for c in 0..*cols {
                    let mut def = vec![
                        3,
                        b'd',
                        b'e',
                        b'f',
                        0,
                        1,
                        b't',
                        1,
                        b't',
                        1,
                        b'a' + c,
                        1,
                        b'a' + c,
                        0x0c,
                    ];
                    def.extend_from_slice(&[0x2d, 0, 0xff, 0, 0, 0, 0xfd, 0, 0, 0, 0, 0]);
                    v.extend(my_pkt(seq, &def));
                    seq = seq.wrapping_add(1);
                }
                v.extend(my_pkt(seq, &[0xfe, 0, 0, 2, 0]));
                seq = seq.wrapping_add(1);
                for r in 0..*rows {
                    let row: Vec<u8> = (0..*cols).flat_map(|_| vec![1, b'0' + r % 10]).collect();
                    v.extend(my_pkt(seq, &row));
                    seq = seq.wrapping_add(1);
                }
                v.extend(my_pkt(seq, &[0xfe, 0, 0, 2, 0]));
                v
            }
        }
    }

    fn matches(&self, r: &mysql::Response) -> bool {
        match (self, r) {
            (MyResp::Ok(n), mysql::Response::Ok { affected_rows, .. }) => {
                u64::from(*n) == *affected_rows
            }
            (MyResp::Err(c), mysql::Response::Err { code, .. }) => c == code,
            (MyResp::Rows(c, n), mysql::Response::ResultSet { columns, rows }) => {
                u64::from(*c) == *columns && *rows == Some(u64::from(*n))
            }
            _ => false,
        }
    }
}

fn my_resp() -> impl Strategy<Value = MyResp> {
    prop_oneof![
        (0u8..250).prop_map(MyResp::Ok),
        (1000u16..2000).prop_map(MyResp::Err),
        (1u8..20, 0u8..255).prop_map(|(c, r)| MyResp::Rows(c, r)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(256), ..ProptestConfig::default() })]

    /// Queries and responses, arbitrarily chunked: exact pairing and summaries.
    #[test]
    fn mysql_round_trip(
        exchanges in prop::collection::vec(("[A-Za-z0-9 ,=()*'_]{1,300}", my_resp()), 1..6),
        cuts in prop::collection::vec(1usize..200, 1..8),
    ) {
        let mut c = MySqlConnection::new();
        let mut ev = Vec::new();
        for (sql, resp) in &exchanges {
            let q = my_pkt(0, &[&[0x03][..], sql.as_bytes()].concat());
            for s in syscalls(&q, &cuts) {
                c.feed(Flow::ClientToServer, &s, s.len() as u64, &mut ev);
            }
            for s in syscalls(&resp.wire(), &cuts) {
                c.feed(Flow::ServerToClient, &s, s.len() as u64, &mut ev);
            }
        }
        prop_assert_eq!(ev.len(), 2 * exchanges.len());
        for (i, (sql, resp)) in exchanges.iter().enumerate() {
            match &ev[2 * i] {
                mysql::Event::Request { id, command: mysql::Command::Query { sql: got, truncated: false } } => {
                    prop_assert_eq!(*id, i as u64);
                    prop_assert_eq!(got, sql);
                }
                other => prop_assert!(false, "{other:?}"),
            }
            match &ev[2 * i + 1] {
                mysql::Event::Response { id, response: Some(r), end: End::Complete } => {
                    prop_assert_eq!(*id, i as u64);
                    prop_assert!(resp.matches(r), "{resp:?} vs {r:?}");
                }
                other => prop_assert!(false, "{other:?}"),
            }
        }
        prop_assert_eq!(c.desyncs(), 0);
    }
}

/// One gRPC call: method path, request and response message sizes, status.
fn grpc_call() -> impl Strategy<Value = (String, usize, usize, u32)> {
    (
        "/[a-z]{1,8}\\.[A-Z][a-z]{0,8}/[A-Z][a-z]{1,12}",
        0usize..3000,
        0usize..3000,
        0u32..17,
    )
}

/// Client and server bytes of `calls` on one connection, responses in `order`.
fn grpc_exchange(calls: &[(String, usize, usize, u32)], order: &[usize]) -> (Vec<u8>, Vec<u8>) {
    let mut c2s = http2::PREFACE.to_vec();
    c2s.extend(h2_frame(4, 0, 0, &[]));
    for (i, (path, req, _, _)) in calls.iter().enumerate() {
        // POST, http, `:path` inserted into the table, content-type.
        let mut block = vec![0x83, 0x86, 0x44, path.len() as u8];
        block.extend_from_slice(path.as_bytes());
        block.extend_from_slice(&[0x0f, 0x10, 16]);
        block.extend_from_slice(b"application/grpc");
        let stream = 1 + 2 * i as u32;
        c2s.extend(h2_frame(1, 0x4, stream, &block));
        c2s.extend(h2_frame(0, 0x1, stream, &vec![1u8; *req]));
    }
    let mut s2c = h2_frame(4, 0, 0, &[]);
    for &i in order {
        let (_, _, resp, status) = &calls[i];
        let stream = 1 + 2 * i as u32;
        s2c.extend(h2_frame(1, 0x4, stream, &[0x88]));
        s2c.extend(h2_frame(0, 0, stream, &vec![2u8; *resp]));
        let status = status.to_string();
        let mut trailers = vec![0x00, 11];
        trailers.extend_from_slice(b"grpc-status");
        trailers.push(status.len() as u8);
        trailers.extend_from_slice(status.as_bytes());
        s2c.extend(h2_frame(1, 0x5, stream, &trailers));
    }
    (c2s, s2c)
}

/// Feeds `bytes` cut at `cuts` (cycled), capturing at most `cap` bytes of each syscall.
fn feed_h2(
    t: &mut Http2Connection,
    f: Flow,
    bytes: &[u8],
    cuts: &[usize],
    cap: usize,
    out: &mut Vec<http2::Event>,
) {
    for piece in syscalls(bytes, cuts) {
        t.feed(f, &piece[..piece.len().min(cap)], piece.len() as u64, out);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(256), ..ProptestConfig::default() })]

    #[test]
    fn grpc_calls_pair_exactly_however_they_are_chunked(
        calls in prop::collection::vec(grpc_call(), 1..12),
        seed in any::<u64>(),
        cuts in prop::collection::vec(1usize..700, 1..8),
    ) {
        let mut order: Vec<usize> = (0..calls.len()).collect();
        // A deterministic shuffle: responses come back in any order.
        let mut x = seed | 1;
        for i in (1..order.len()).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            order.swap(i, (x % (i as u64 + 1)) as usize);
        }
        let (c2s, s2c) = grpc_exchange(&calls, &order);
        let mut t = Http2Connection::new();
        let mut ev = Vec::new();
        feed_h2(&mut t, Flow::ClientToServer, &c2s, &cuts, usize::MAX, &mut ev);
        feed_h2(&mut t, Flow::ServerToClient, &s2c, &cuts, usize::MAX, &mut ev);
        prop_assert_eq!(t.desyncs(), 0);
        check_pairing_http2(&ev)?;
        let paths: Vec<_> = ev.iter().filter_map(|e| match e {
            http2::Event::Request { headers, .. } => headers.path.clone(),
            _ => None,
        }).collect();
        prop_assert_eq!(paths, calls.iter().map(|c| c.0.clone()).collect::<Vec<_>>());
        let ends: Vec<_> = ev.iter().filter_map(|e| match e {
            http2::Event::End { stream, grpc_status, end, .. } => Some((*stream, *grpc_status, *end)),
            _ => None,
        }).collect();
        let want: Vec<_> = order.iter().map(|&i| (1 + 2 * i as u32, Some(calls[i].3), End::Complete)).collect();
        prop_assert_eq!(ends, want);
    }

    /// With a capture limit, values go missing but are never wrong.
    #[test]
    fn a_capture_limit_loses_values_but_never_invents_them(
        calls in prop::collection::vec(grpc_call(), 1..12),
        cuts in prop::collection::vec(1usize..3000, 1..8),
        cap in 16usize..1024,
    ) {
        let order: Vec<usize> = (0..calls.len()).collect();
        let (c2s, s2c) = grpc_exchange(&calls, &order);
        let mut t = Http2Connection::new();
        let mut ev = Vec::new();
        feed_h2(&mut t, Flow::ClientToServer, &c2s, &cuts, cap, &mut ev);
        feed_h2(&mut t, Flow::ServerToClient, &s2c, &cuts, cap, &mut ev);
        t.close(&mut ev);
        check_pairing_http2(&ev)?;
        for e in &ev {
            match e {
                http2::Event::Request { stream, headers, .. } => {
                    let call = &calls[(*stream as usize - 1) / 2];
                    if let Some(p) = &headers.path {
                        prop_assert!(call.0.starts_with(p.as_str()), "{} for {}", p, call.0);
                    }
                }
                http2::Event::End { stream, grpc_status: Some(s), .. } => {
                    prop_assert_eq!(*s, calls[(*stream as usize - 1) / 2].3);
                }
                _ => {}
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(256), ..ProptestConfig::default() })]

    /// An `Upgrade: h2c` exchange, however the 101 and the HTTP/2 bytes after it are cut into
    /// syscalls: HTTP/1.1 reports the switch, and an HTTP/2 parser taking over with the bytes it
    /// held answers stream 1 exactly, as the span builder does it.
    #[test]
    fn an_h2c_upgrade_hands_over_however_it_is_chunked(
        body in 0usize..3000,
        cuts in prop::collection::vec(1usize..200, 1..6),
    ) {
        let request = b"GET /up HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n";
        let mut response = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n".to_vec();
        response.extend(h2_frame(http2::kind::SETTINGS, 0, 0, &[]));
        response.extend(h2_frame(http2::kind::HEADERS, http2::flag::END_HEADERS, 1, &[0x88]));
        response.extend(h2_frame(http2::kind::DATA, http2::flag::END_STREAM, 1, &vec![b'x'; body]));
        let mut h1 = Http1Connection::new();
        let mut h2: Option<Http2Connection> = None;
        let (mut ev1, mut ev2) = (Vec::new(), Vec::new());
        h1.feed(Flow::ClientToServer, request, request.len() as u64, &mut ev1);
        for s in syscalls(&response, &cuts) {
            match h2.as_mut() {
                Some(p) => p.feed(Flow::ServerToClient, &s, s.len() as u64, &mut ev2),
                None => {
                    h1.feed(Flow::ServerToClient, &s, s.len() as u64, &mut ev1);
                    if let Some(held) = h1.take_http2() {
                        let mut p = Http2Connection::upgraded();
                        for (f, bytes, total) in held {
                            p.feed(f, &bytes, total, &mut ev2);
                        }
                        h2 = Some(p);
                    }
                }
            }
        }
        prop_assert!(h2.is_some(), "{:?}", ev1);
        prop_assert_eq!(ev1.last(), Some(&http1::Event::SwitchedToHttp2 { request_id: Some(0) }));
        prop_assert_eq!(ev2.len(), 2, "{:?}", ev2);
        prop_assert!(matches!(&ev2[0], http2::Event::Response { stream: 1, headers } if headers.status == Some(200)), "{:?}", ev2);
        prop_assert!(matches!(&ev2[1], http2::Event::End { stream: 1, end: End::Complete, .. }), "{:?}", ev2);
    }
}
