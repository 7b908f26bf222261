//! HTTP/1.1 requests and responses: pairing, pipelining, split reads, framing, detection.

use super::*;

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
