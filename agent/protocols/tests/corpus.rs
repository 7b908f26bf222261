//! Replays the captures in `tests/corpus/<protocol>/*.txt` and compares what the span builder
//! would see with the golden `*.expect` file next to each capture.
//!
//! Capture format: `#` comments, a `protocol <http1|http2|mysql|redis>` line, then one line per
//! syscall, `c2s` (client to server) or `s2c`, an optional `total=<bytes>` when the syscall
//! moved more bytes than were captured, and the captured bytes in hex (continued on following
//! lines that start with whitespace).
//!
//! Run with `LOUPE_BLESS=1` to rewrite the `.expect` files after an intended change.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use loupe_protocols::{
    Direction, Flow, Http1Connection, Http2Connection, MySqlConnection, Protocol, RedisConnection,
    Role, classify, http1, http2, mysql, redis, route, sanitize, traceparent,
};

struct Capture {
    protocol: String,
    chunks: Vec<(Flow, Vec<u8>, u64)>,
}

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex length");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn load(path: &Path) -> Capture {
    let text = std::fs::read_to_string(path).expect("read capture");
    let mut protocol = String::new();
    let mut chunks: Vec<(Flow, Vec<u8>, Option<u64>)> = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        if let Some(p) = line.strip_prefix("protocol ") {
            protocol = p.trim().to_string();
            continue;
        }
        if line.starts_with(char::is_whitespace) {
            chunks
                .last_mut()
                .expect("continuation line")
                .1
                .extend(unhex(line.trim()));
            continue;
        }
        let mut words = line.split_whitespace();
        let flow = match words.next() {
            Some("c2s") => Flow::ClientToServer,
            Some("s2c") => Flow::ServerToClient,
            other => panic!("bad line start {other:?} in {}", path.display()),
        };
        let mut total = None;
        let mut hex = "";
        for w in words {
            if let Some(t) = w.strip_prefix("total=") {
                total = Some(t.parse().expect("total"));
            } else {
                hex = w;
            }
        }
        chunks.push((flow, unhex(hex), total));
    }
    let chunks = chunks
        .into_iter()
        .map(|(f, b, t)| {
            let total = t.unwrap_or(b.len() as u64);
            (f, b, total)
        })
        .collect();
    Capture { protocol, chunks }
}

enum Conn {
    Http(Http1Connection),
    Http2(Http2Connection),
    MySql(MySqlConnection),
    Redis(RedisConnection),
}

impl Conn {
    fn new(protocol: &str) -> Conn {
        match protocol {
            "http1" => Conn::Http(Http1Connection::new()),
            "http2" => Conn::Http2(Http2Connection::new()),
            "mysql" => Conn::MySql(MySqlConnection::new()),
            "redis" => Conn::Redis(RedisConnection::new()),
            p => panic!("unknown protocol {p}"),
        }
    }

    fn buffered_bytes(&self) -> usize {
        match self {
            Conn::Http(c) => c.buffered_bytes(),
            Conn::Http2(c) => c.buffered_bytes(),
            Conn::MySql(c) => c.buffered_bytes(),
            Conn::Redis(c) => c.buffered_bytes(),
        }
    }

    /// Feeds one chunk and renders the events with the attributes the span builder derives.
    fn feed(&mut self, flow: Flow, captured: &[u8], total: u64, out: &mut Vec<String>) {
        match self {
            Conn::Http(c) => {
                let mut ev = Vec::new();
                c.feed(flow, captured, total, &mut ev);
                out.extend(ev.iter().map(render_http));
            }
            Conn::Http2(c) => {
                let mut ev = Vec::new();
                c.feed(flow, captured, total, &mut ev);
                out.extend(ev.iter().map(render_http2));
            }
            Conn::MySql(c) => {
                let mut ev = Vec::new();
                c.feed(flow, captured, total, &mut ev);
                out.extend(ev.iter().map(render_mysql));
            }
            Conn::Redis(c) => {
                let mut ev = Vec::new();
                c.feed(flow, captured, total, &mut ev);
                out.extend(ev.iter().map(render_redis));
            }
        }
    }

    fn close(&mut self, out: &mut Vec<String>) {
        match self {
            Conn::Http(c) => {
                let mut ev = Vec::new();
                c.close(&mut ev);
                out.extend(ev.iter().map(render_http));
            }
            Conn::Http2(c) => {
                let mut ev = Vec::new();
                c.close(&mut ev);
                out.extend(ev.iter().map(render_http2));
            }
            Conn::MySql(c) => {
                let mut ev = Vec::new();
                c.close(&mut ev);
                out.extend(ev.iter().map(render_mysql));
            }
            Conn::Redis(c) => {
                let mut ev = Vec::new();
                c.close(&mut ev);
                out.extend(ev.iter().map(render_redis));
            }
        }
    }
}

fn render_http(e: &http1::Event) -> String {
    let mut s = format!("{e:?}");
    if let http1::Event::RequestStart { head, .. } = e {
        let _ = write!(
            s,
            "\n    route={} method={}",
            route::infer_route(&head.target),
            head.method.semconv()
        );
        if let Some(tp) = head.headers.traceparent.as_deref() {
            let _ = write!(
                s,
                " parent={:?}",
                traceparent::parse(tp).map(|t| (t.trace_id_hex(), t.parent_id_hex(), t.sampled()))
            );
        }
    }
    s
}

fn render_http2(e: &http2::Event) -> String {
    let mut s = format!("{e:?}");
    if let http2::Event::Request { headers, .. } = e {
        let _ = write!(
            s,
            "\n    grpc={} route={}",
            headers.is_grpc(),
            route::infer_route(headers.path.as_deref().unwrap_or(""))
        );
    }
    s
}

fn render_mysql(e: &mysql::Event) -> String {
    let mut s = format!("{e:?}");
    if let mysql::Event::Request { command, .. } = e
        && let Some(sql) = command.sql()
    {
        let _ = write!(
            s,
            "\n    operation={:?} query={:?}",
            sanitize::sql_operation(sql),
            sanitize::sanitize_sql(sql)
        );
    }
    s
}

fn render_redis(e: &redis::Event) -> String {
    match e {
        redis::Event::Request { id, command } => {
            let args: Vec<String> = command
                .args
                .iter()
                .map(|a| {
                    let text = String::from_utf8_lossy(&a.prefix);
                    if a.is_truncated() {
                        format!("{text}…({} bytes)", a.len)
                    } else {
                        text.into_owned()
                    }
                })
                .collect();
            format!(
                "Request {{ id: {id}, name: {:?}, args: {args:?}, arg_count: {}, inline: {} }}\n    query={:?}",
                command.name,
                command.arg_count,
                command.inline,
                command.query_text()
            )
        }
        other => format!("{other:?}"),
    }
}

/// Replays a capture, optionally re-chunked (each chunk split at `split`) and re-captured
/// (`cap` bytes kept per syscall), returning the rendered events.
fn replay(cap: &Capture, split: Option<usize>, limit: Option<usize>) -> Vec<String> {
    let mut conn = Conn::new(&cap.protocol);
    let mut out = Vec::new();
    let mut max_buffered = 0;
    for (flow, bytes, total) in &cap.chunks {
        let mut pieces: Vec<(&[u8], u64)> = Vec::new();
        match split {
            Some(at) if at < bytes.len() => {
                pieces.push((&bytes[..at], at as u64));
                pieces.push((&bytes[at..], total - at as u64));
            }
            _ => pieces.push((bytes, *total)),
        }
        for (data, total) in pieces {
            let data = match limit {
                Some(l) => &data[..data.len().min(l)],
                None => data,
            };
            conn.feed(*flow, data, total, &mut out);
            max_buffered = max_buffered.max(conn.buffered_bytes());
        }
    }
    conn.close(&mut out);
    assert!(max_buffered <= 160 * 1024, "buffered {max_buffered} bytes");
    out
}

fn captures() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut files = Vec::new();
    for dir in std::fs::read_dir(&root).expect("corpus dir") {
        for f in std::fs::read_dir(dir.expect("entry").path()).expect("protocol dir") {
            let p = f.expect("entry").path();
            if p.extension().is_some_and(|e| e == "txt") {
                files.push(p);
            }
        }
    }
    files.sort();
    assert!(files.len() >= 11, "corpus missing: {files:?}");
    files
}

#[test]
fn corpus_matches_golden_events() {
    let bless = std::env::var_os("LOUPE_BLESS").is_some();
    let mut failures = Vec::new();
    for path in captures() {
        let cap = load(&path);
        // Detection from the first chunk, as the agent does it (the role is known).
        let (flow, first, _) = &cap.chunks[0];
        let (direction, role) = match flow {
            Flow::ClientToServer => (Direction::Egress, Role::Client),
            Flow::ServerToClient => (Direction::Ingress, Role::Client),
        };
        let want_protocol = match cap.protocol.as_str() {
            "http1" => Protocol::Http1,
            "http2" => Protocol::Http2,
            "mysql" => Protocol::MySql,
            _ => Protocol::Redis,
        };
        let d = classify(first, direction, role).map(|d| d.protocol);
        assert_eq!(d, Some(want_protocol), "detect {}", path.display());
        let d = classify(first, direction, Role::Unknown).map(|d| (d.protocol, d.flow));
        assert_eq!(
            d,
            Some((want_protocol, *flow)),
            "classify {}",
            path.display()
        );

        let got = replay(&cap, None, None).join("\n") + "\n";
        let expect_path = path.with_extension("expect");
        if bless {
            std::fs::write(&expect_path, &got).expect("write expect");
            continue;
        }
        let want = std::fs::read_to_string(&expect_path).unwrap_or_default();
        if got != want {
            failures.push(format!(
                "{}:\n--- want\n{want}--- got\n{got}",
                path.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn corpus_survives_rechunking_and_smaller_captures() {
    for path in captures() {
        let cap = load(&path);
        let fully_captured = cap.chunks.iter().all(|(_, b, t)| b.len() as u64 == *t);
        let base = replay(&cap, None, None);
        for split in [0, 1, 2, 3, 4, 5, 7, 9, 13, 17, 31, 64, 100, 200, 400] {
            let got = replay(&cap, Some(split), None);
            if fully_captured {
                assert_eq!(got, base, "{} split at {split}", path.display());
            }
        }
        for limit in [0, 1, 4, 16, 64, 128, 256] {
            let _ = replay(&cap, None, Some(limit));
            let _ = replay(&cap, Some(limit / 2 + 1), Some(limit));
        }
    }
}
