use super::*;

const C2S: Flow = Flow::ClientToServer;
const S2C: Flow = Flow::ServerToClient;

/// Feeds fully captured chunks.
fn run(conn: &mut Http1Connection, chunks: &[(Flow, &[u8])]) -> Vec<Event> {
    let mut out = Vec::new();
    for (flow, bytes) in chunks {
        conn.feed(*flow, bytes, bytes.len() as u64, &mut out);
    }
    out
}

/// Feeds a chunk as the probe would: only the first `cap` bytes captured.
fn feed_capped(
    conn: &mut Http1Connection,
    flow: Flow,
    bytes: &[u8],
    cap: usize,
    out: &mut Vec<Event>,
) {
    let n = bytes.len().min(cap);
    conn.feed(flow, &bytes[..n], bytes.len() as u64, out);
}

/// A compact rendering of events for assertions.
fn summary(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e {
            Event::RequestStart { id, head } => format!(
                "req#{id} {} {}{}",
                head.method.as_str(),
                head.target,
                if head.truncated { " (truncated)" } else { "" }
            ),
            Event::ResponseStart { request_id, head } => format!(
                "resp#{} {}{}",
                request_id.map_or("?".to_string(), |i| i.to_string()),
                head.status,
                if head.truncated { " (truncated)" } else { "" }
            ),
            Event::SwitchedToHttp2 { request_id } => format!(
                "h2c#{}",
                request_id.map_or("?".to_string(), |i| i.to_string())
            ),
            Event::MessageEnd {
                flow,
                id,
                end,
                body_len,
            } => format!(
                "end {} #{} {:?} {}",
                if *flow == C2S { "req" } else { "resp" },
                id.map_or("?".to_string(), |i| i.to_string()),
                end,
                body_len
            ),
        })
        .collect()
}

const GET: &[u8] = b"GET /users/42?x=1 HTTP/1.1\r\nHost: api.example.com\r\nUser-Agent: curl/8.5.0\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\ntracestate: rojo=00f067aa0ba902b7\r\nAccept: */*\r\n\r\n";
const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 13\r\nConnection: keep-alive\r\n\r\n{\"id\": \"42\"}\n";

#[test]
fn request_and_response_with_headers() {
    let mut c = Http1Connection::new();
    let ev = run(&mut c, &[(C2S, GET), (S2C, OK)]);
    assert_eq!(
        summary(&ev),
        [
            "req#0 GET /users/42?x=1",
            "end req #0 Complete 0",
            "resp#0 200",
            "end resp #0 Complete 13"
        ]
    );
    let Event::RequestStart { head, .. } = &ev[0] else {
        panic!()
    };
    assert_eq!(head.version, Version::Http11);
    assert_eq!(head.headers.host.as_deref(), Some("api.example.com"));
    assert_eq!(head.headers.user_agent.as_deref(), Some("curl/8.5.0"));
    assert_eq!(
        head.headers.traceparent.as_deref(),
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    );
    assert_eq!(
        head.headers.tracestate.as_deref(),
        Some("rojo=00f067aa0ba902b7")
    );
    assert!(head.keep_alive());
    assert!(!head.truncated);
    let Event::ResponseStart { head, .. } = &ev[2] else {
        panic!()
    };
    assert_eq!(
        head.headers.content_type.as_deref(),
        Some("application/json")
    );
    assert_eq!(head.headers.content_length, Some(13));
    assert_eq!(head.headers.connection.as_deref(), Some("keep-alive"));
    assert_eq!(c.desyncs(), 0);
}

#[test]
fn pipelined_keep_alive() {
    let reqs = b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nPOST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhelloDELETE /c/1 HTTP/1.1\r\nHost: h\r\n\r\n";
    let resps = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\nHTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found";
    let mut c = Http1Connection::new();
    let ev = run(&mut c, &[(C2S, reqs), (S2C, resps)]);
    assert_eq!(
        summary(&ev),
        [
            "req#0 GET /a",
            "end req #0 Complete 0",
            "req#1 POST /b",
            "end req #1 Complete 5",
            "req#2 DELETE /c/1",
            "end req #2 Complete 0",
            "resp#0 200",
            "end resp #0 Complete 2",
            "resp#1 201",
            "end resp #1 Complete 0",
            "resp#2 404",
            "end resp #2 Complete 9",
        ]
    );
}

#[test]
fn every_split_point_gives_the_same_events() {
    let reqs: Vec<u8> = [
        GET,
        b"POST /p HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc".as_slice(),
    ]
    .concat();
    let resps: Vec<u8> = [
        OK,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nX-Trailer: 1\r\n\r\n".as_slice(),
    ]
    .concat();
    let mut whole = Http1Connection::new();
    let want = run(&mut whole, &[(C2S, &reqs), (S2C, &resps)]);
    assert_eq!(want.len(), 8, "{:?}", summary(&want));
    for (this, data) in [(C2S, &reqs), (S2C, &resps)] {
        for i in 0..=data.len() {
            for j in i..=data.len() {
                if j != i && j != data.len() && j % 7 != 0 {
                    continue; // all single splits, and a spread of double splits
                }
                let mut c = Http1Connection::new();
                let mut ev = Vec::new();
                let other = if this == C2S { S2C } else { C2S };
                let other_data = if this == C2S { &resps } else { &reqs };
                if this == S2C {
                    c.feed(other, other_data, other_data.len() as u64, &mut ev);
                }
                for part in [&data[..i], &data[i..j], &data[j..]] {
                    c.feed(this, part, part.len() as u64, &mut ev);
                }
                if this == C2S {
                    c.feed(other, other_data, other_data.len() as u64, &mut ev);
                }
                assert_eq!(summary(&ev), summary(&want), "split at {i},{j}");
                assert_eq!(ev, want, "split at {i},{j}");
            }
        }
    }
}

#[test]
fn byte_at_a_time() {
    let mut c = Http1Connection::new();
    let mut ev = Vec::new();
    for b in GET {
        c.feed(C2S, std::slice::from_ref(b), 1, &mut ev);
    }
    for b in OK {
        c.feed(S2C, std::slice::from_ref(b), 1, &mut ev);
    }
    let mut whole = Http1Connection::new();
    assert_eq!(ev, run(&mut whole, &[(C2S, GET), (S2C, OK)]));
}

#[test]
fn chunked_response_with_extensions_and_trailers() {
    let resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n1a; name=value\r\nabcdefghijklmnopqrstuvwxyz\r\n10\r\n0123456789abcdef\r\n0\r\nExpires: never\r\nX-A: b\r\n\r\n";
    let mut c = Http1Connection::new();
    let ev = run(&mut c, &[(C2S, b"GET / HTTP/1.1\r\n\r\n"), (S2C, resp)]);
    assert_eq!(
        summary(&ev),
        [
            "req#0 GET /",
            "end req #0 Complete 0",
            "resp#0 200",
            "end resp #0 Complete 42"
        ]
    );
}

#[test]
fn content_length_body_outside_the_capture_is_skipped_by_count() {
    // A 100 kB response written in 3 syscalls, only 512 bytes of each captured.
    let mut body = vec![b'x'; 100_000];
    body[..5].copy_from_slice(b"HELLO");
    let head = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n";
    let resp: Vec<u8> = [head.as_slice(), &body].concat();
    let mut c = Http1Connection::new();
    let mut ev = run(&mut c, &[(C2S, b"GET /big HTTP/1.1\r\nHost: h\r\n\r\n")]);
    for part in resp.chunks(40_000) {
        feed_capped(&mut c, S2C, part, 512, &mut ev);
    }
    // The next exchange parses normally.
    let mut ev2 = run(
        &mut c,
        &[
            (C2S, b"GET /next HTTP/1.1\r\n\r\n"),
            (S2C, b"HTTP/1.1 204 No Content\r\n\r\n"),
        ],
    );
    ev.append(&mut ev2);
    assert_eq!(
        summary(&ev),
        [
            "req#0 GET /big",
            "end req #0 Complete 0",
            "resp#0 200",
            "end resp #0 Complete 100000",
            "req#1 GET /next",
            "end req #1 Complete 0",
            "resp#1 204",
            "end resp #1 Complete 0",
        ]
    );
    assert_eq!(c.desyncs(), 0);
}

#[test]
fn chunked_size_lines_outside_the_capture_resync() {
    // One syscall carrying many chunks: the later size lines are beyond the 64 captured bytes.
    let mut resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..20 {
        resp.extend_from_slice(b"10\r\n0123456789abcdef\r\n");
    }
    resp.extend_from_slice(b"0\r\n\r\n");
    let mut c = Http1Connection::new();
    let mut ev = run(&mut c, &[(C2S, b"GET /stream HTTP/1.1\r\n\r\n")]);
    feed_capped(&mut c, S2C, &resp, 64, &mut ev);
    assert_eq!(
        summary(&ev),
        ["req#0 GET /stream", "end req #0 Complete 0", "resp#0 200"]
    );
    // The next response resyncs and reports the previous end as unknown first.
    feed_capped(&mut c, C2S, b"GET /x HTTP/1.1\r\n\r\n", 64, &mut ev);
    feed_capped(
        &mut c,
        S2C,
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi",
        64,
        &mut ev,
    );
    assert_eq!(
        summary(&ev)[3..],
        [
            "end resp #0 Unknown 13",
            "req#1 GET /x",
            "end req #1 Complete 0",
            "resp#1 200",
            "end resp #1 Complete 2",
        ]
    );
    assert_eq!(c.desyncs(), 1);
}

#[test]
fn lost_response_ends_at_resync_without_a_new_request() {
    // Pipelined: both requests seen first, then the first response loses framing.
    let mut c = Http1Connection::new();
    let mut ev = run(
        &mut c,
        &[(C2S, b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\n")],
    );
    let mut first = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    first.extend(std::iter::repeat_n(b"3\r\nabc\r\n".as_slice(), 50).flatten());
    feed_capped(&mut c, S2C, &first, 60, &mut ev);
    c.feed(S2C, b"3\r\nabc\r\n0\r\n\r\n", 13, &mut ev);
    c.feed(
        S2C,
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        38,
        &mut ev,
    );
    assert_eq!(
        summary(&ev)[4..],
        [
            "resp#0 200",
            "end resp #0 Unknown 5",
            "resp#1 200",
            "end resp #1 Complete 0"
        ]
    );
}

#[test]
fn head_requests_and_bodiless_statuses() {
    let mut c = Http1Connection::new();
    let ev = run(
        &mut c,
        &[
            (C2S, b"HEAD /f HTTP/1.1\r\n\r\nGET /g HTTP/1.1\r\n\r\nGET /h HTTP/1.1\r\n\r\n"),
            (
                S2C,
                b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\nHTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
            ),
        ],
    );
    assert_eq!(
        summary(&ev)[6..],
        [
            "resp#0 200",
            "end resp #0 Complete 0",
            "resp#1 304",
            "end resp #1 Complete 0",
            "resp#2 204",
            "end resp #2 Complete 0",
        ]
    );
}

#[test]
fn interim_100_continue_is_silent() {
    let mut c = Http1Connection::new();
    let ev = run(
        &mut c,
        &[
            (C2S, b"PUT /up HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n"),
            (S2C, b"HTTP/1.1 100 Continue\r\n\r\n"),
            (C2S, b"data"),
            (S2C, b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"),
        ],
    );
    assert_eq!(
        summary(&ev),
        [
            "req#0 PUT /up",
            "end req #0 Complete 4",
            "resp#0 201",
            "end resp #0 Complete 0"
        ]
    );
}

#[test]
fn upgrade_and_connect_become_tunnels() {
    let mut c = Http1Connection::new();
    let ev = run(
        &mut c,
        &[
            (C2S, b"GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"),
            (S2C, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x05hello"),
            (C2S, b"\x81\x85abcdHELLO GET / HTTP/1.1\r\n\r\n"),
            (S2C, b"HTTP/1.1 200 OK\r\n\r\n"),
        ],
    );
    assert_eq!(
        summary(&ev),
        [
            "req#0 GET /ws",
            "end req #0 Complete 0",
            "resp#0 101",
            "end resp #0 Complete 0"
        ]
    );
    assert!(c.is_tunnel());

    let mut c = Http1Connection::new();
    let ev = run(
        &mut c,
        &[
            (
                C2S,
                b"CONNECT db.internal:443 HTTP/1.1\r\nHost: db.internal:443\r\n\r\n",
            ),
            (S2C, b"HTTP/1.1 200 Connection established\r\n\r\n"),
            (C2S, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"),
        ],
    );
    assert_eq!(
        summary(&ev),
        [
            "req#0 CONNECT db.internal:443",
            "end req #0 Complete 0",
            "resp#0 200",
            "end resp #0 Complete 0"
        ]
    );
    assert!(c.is_tunnel());
}

#[test]
fn body_until_close() {
    let mut c = Http1Connection::new();
    let mut ev = run(
        &mut c,
        &[
            (C2S, b"GET / HTTP/1.0\r\n\r\n"),
            (
                S2C,
                b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nsome",
            ),
            (S2C, b" more"),
        ],
    );
    c.feed(S2C, b"x", 1000, &mut ev);
    c.close(&mut ev);
    assert_eq!(
        summary(&ev),
        [
            "req#0 GET /",
            "end req #0 Complete 0",
            "resp#0 200",
            "end resp #0 Complete 1009"
        ]
    );
}

#[test]
fn close_reports_incomplete_messages() {
    let mut c = Http1Connection::new();
    let mut ev = run(
        &mut c,
        &[(C2S, b"POST /x HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")],
    );
    c.close(&mut ev);
    assert_eq!(summary(&ev), ["req#0 POST /x", "end req #0 Incomplete 3"]);
}

#[test]
fn oversized_head_is_truncated_and_resynced() {
    let mut req = b"GET /big HTTP/1.1\r\nHost: h\r\n".to_vec();
    for i in 0..400 {
        req.extend_from_slice(format!("X-Filler-{i}: {}\r\n", "v".repeat(20)).as_bytes());
    }
    req.extend_from_slice(b"\r\n");
    assert!(req.len() > MAX_HEAD);
    let mut c = Http1Connection::new();
    let mut ev = Vec::new();
    for part in req.chunks(1000) {
        c.feed(C2S, part, part.len() as u64, &mut ev);
    }
    c.feed(C2S, b"GET /after HTTP/1.1\r\n\r\n", 23, &mut ev);
    assert_eq!(
        summary(&ev),
        [
            "req#0 GET /big (truncated)",
            "end req #0 Unknown 0",
            "req#1 GET /after",
            "end req #1 Complete 0"
        ]
    );
    let Event::RequestStart { head, .. } = &ev[0] else {
        panic!()
    };
    assert_eq!(head.headers.host.as_deref(), Some("h"));
    assert!(c.buffered_bytes() <= 2 * MAX_HEAD + MAX_PENDING * 32);
}

#[test]
fn head_cut_by_the_capture() {
    // Cookies push the end of the head past the 128 captured bytes.
    let req = format!(
        "GET /profile HTTP/1.1\r\nHost: shop\r\nCookie: {}\r\nUser-Agent: late\r\n\r\n",
        "c".repeat(300)
    );
    let mut c = Http1Connection::new();
    let mut ev = Vec::new();
    feed_capped(&mut c, C2S, req.as_bytes(), 128, &mut ev);
    c.feed(
        S2C,
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        38,
        &mut ev,
    );
    assert_eq!(
        summary(&ev),
        [
            "req#0 GET /profile (truncated)",
            "end req #0 Unknown 0",
            "resp#0 200",
            "end resp #0 Complete 0"
        ]
    );
    let Event::RequestStart { head, .. } = &ev[0] else {
        panic!()
    };
    assert_eq!(head.headers.host.as_deref(), Some("shop"));
    assert_eq!(head.headers.user_agent, None);

    // Cut inside the request line: nothing to report, resync on the next chunk.
    let mut c = Http1Connection::new();
    let mut ev = Vec::new();
    feed_capped(
        &mut c,
        C2S,
        b"GET /a-very-long-path HTTP/1.1\r\n\r\n",
        10,
        &mut ev,
    );
    c.feed(C2S, b"GET /b HTTP/1.1\r\n\r\n", 19, &mut ev);
    assert_eq!(summary(&ev), ["req#0 GET /b", "end req #0 Complete 0"]);
}

#[test]
fn resyncs_after_garbage() {
    let mut c = Http1Connection::new();
    let ev = run(
        &mut c,
        &[
            (
                C2S,
                b"\x00\x01garbage\r\nmore garbage\nGET /ok HTTP/1.1\r\n\r\n",
            ),
            (C2S, b"nonsense"),
            (C2S, b"POST /p HTTP/1.1\r\nContent-Length: 1\r\n\r\nx"),
        ],
    );
    assert_eq!(
        summary(&ev),
        [
            "req#0 GET /ok",
            "end req #0 Complete 0",
            "req#1 POST /p",
            "end req #1 Complete 1"
        ]
    );
    assert!(c.desyncs() >= 2);
}

#[test]
fn invalid_framing_headers() {
    let mut c = Http1Connection::new();
    let ev = run(
        &mut c,
        &[
            (
                C2S,
                b"POST /a HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
            ),
            (C2S, b"POST /b HTTP/1.1\r\nContent-Length: 2, 2\r\n\r\nok"),
            (C2S, b"POST /c HTTP/1.1\r\nContent-Length: -1\r\n\r\n"),
        ],
    );
    assert_eq!(
        summary(&ev),
        [
            "req#0 POST /a",
            "end req #0 Unknown 0",
            "req#1 POST /b",
            "end req #1 Complete 2",
            "req#2 POST /c",
        ]
    );
}

#[test]
fn response_without_a_seen_request() {
    let mut c = Http1Connection::new();
    let ev = run(
        &mut c,
        &[(
            S2C,
            b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n",
        )],
    );
    assert_eq!(summary(&ev), ["resp#? 500", "end resp #? Complete 0"]);
}

#[test]
fn gap_loses_framing_until_the_next_message() {
    let mut c = Http1Connection::new();
    let mut ev = run(
        &mut c,
        &[
            (C2S, b"GET / HTTP/1.1\r\n\r\n"),
            (S2C, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc"),
        ],
    );
    c.gap(S2C);
    let mut more = run(
        &mut c,
        &[(S2C, b"tail of body"), (C2S, b"GET /2 HTTP/1.1\r\n\r\n")],
    );
    ev.append(&mut more);
    assert_eq!(
        summary(&ev)[2..],
        [
            "resp#0 200",
            "end resp #0 Unknown 3",
            "req#1 GET /2",
            "end req #1 Complete 0"
        ]
    );
}

#[test]
fn pending_queue_is_bounded() {
    let mut c = Http1Connection::new();
    let mut ev = Vec::new();
    for _ in 0..(MAX_PENDING + 10) {
        c.feed(C2S, b"GET / HTTP/1.1\r\n\r\n", 18, &mut ev);
    }
    assert_eq!(c.pending.len(), MAX_PENDING);
    c.feed(
        S2C,
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        38,
        &mut ev,
    );
    assert!(matches!(
        ev.last(),
        Some(Event::MessageEnd { id: Some(10), .. })
    ));
}

#[test]
fn start_line_checks() {
    assert_eq!(check_request_line(b"GET / HTTP/1.1\r\n", true), Check::Yes);
    assert_eq!(check_request_line(b"GE", true), Check::NeedMore);
    assert_eq!(check_request_line(b"GET /x HTTP/1", true), Check::NeedMore);
    assert_eq!(check_request_line(b"FOO / HTTP/1.1\r\n", true), Check::No);
    assert_eq!(check_request_line(b"FOO / HTTP/1.1\r\n", false), Check::Yes);
    assert_eq!(check_request_line(b"GET / HTTP/2.0\r\n", true), Check::No);
    assert_eq!(check_request_line(b"PRI * HTTP/2.0\r\n", false), Check::No);
    assert_eq!(check_request_line(b"GET  / HTTP/1.1\r\n", false), Check::No);
    assert_eq!(check_request_line(b"get / HTTP/1.1\r\n", true), Check::No);
    assert_eq!(check_status_line(b"HTTP/1.1 200 OK\r\n"), Check::Yes);
    assert_eq!(check_status_line(b"HTTP/1.1 200\r\n"), Check::Yes);
    assert_eq!(check_status_line(b"HTTP/1.1 20"), Check::NeedMore);
    assert_eq!(check_status_line(b"HTTP/1.1 099 x"), Check::No);
    assert_eq!(check_status_line(b"HTTP/2 200 OK"), Check::No);
    assert_eq!(check_status_line(b"HTT"), Check::NeedMore);
}

#[test]
fn an_h2c_upgrade_hands_the_rest_to_http2() {
    let mut p = Http1Connection::new();
    let mut ev = Vec::new();
    p.feed(
        C2S,
        b"GET /a HTTP/1.1\r\nHost: x\r\nUpgrade: websocket, H2C\r\n\r\n",
        60,
        &mut ev,
    );
    let head = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n";
    let mut chunk = head.to_vec();
    chunk.extend_from_slice(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00");
    // 9 bytes captured after the head, 100 more not.
    p.feed(S2C, &chunk, chunk.len() as u64 + 100, &mut ev);
    assert_eq!(
        summary(&ev),
        [
            "req#0 GET /a",
            "end req #0 Complete 0",
            "resp#0 101",
            "h2c#0"
        ]
    );
    let held = p.take_http2().expect("switched");
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].0, S2C);
    assert_eq!(held[0].1, b"\x00\x00\x00\x04\x00\x00\x00\x00\x00");
    assert_eq!(held[0].2, 109);
    // Taken once; later bytes are held for a parser that has not taken over yet.
    assert!(p.take_http2().is_none());
    ev.clear();
    p.feed(C2S, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 24, &mut ev);
    assert!(ev.is_empty());
}

#[test]
fn a_101_to_another_protocol_or_unasked_stays_a_tunnel() {
    for (request, response) in [
        ("Upgrade: websocket", "Upgrade: websocket"),
        // The server names h2c, the client never asked.
        ("Connection: keep-alive", "Upgrade: h2c"),
        // The client asked, the server switched to something else.
        ("Upgrade: h2c", "Upgrade: websocket"),
    ] {
        let mut p = Http1Connection::new();
        let mut ev = Vec::new();
        let req = format!("GET /a HTTP/1.1\r\nHost: x\r\n{request}\r\n\r\n");
        p.feed(C2S, req.as_bytes(), req.len() as u64, &mut ev);
        let resp = format!("HTTP/1.1 101 Switching Protocols\r\n{response}\r\n\r\nabc");
        p.feed(S2C, resp.as_bytes(), resp.len() as u64, &mut ev);
        assert_eq!(
            summary(&ev),
            [
                "req#0 GET /a",
                "end req #0 Complete 0",
                "resp#0 101",
                "end resp #0 Complete 0"
            ],
            "{request} / {response}"
        );
        assert!(p.take_http2().is_none());
        assert!(p.is_tunnel());
    }
}
