//! Trace context: serving threads, same-host links, the TCP option, the kernel's ids, lingering spans.

use super::*;

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

/// One exchange on a same-host pair, client event first or server event first; the server
/// span's parent (if any) and the client span.
fn exchange(s: &mut Sim, cl: &C, sv: &C, t: u64, path: &str, server_first: bool) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: shop\r\n\r\n");
    if server_first {
        s.read(sv, 31, t + 50, t + 150, req.as_bytes());
        s.write(cl, 21, t, t + 160, req.as_bytes());
    } else {
        s.write(cl, 21, t, t + 100, req.as_bytes());
        s.read(sv, 31, t + 50, t + 150, req.as_bytes());
    }
    s.write(sv, 31, t + 200, t + 300, OK);
    s.read(cl, 21, t + 250, t + 350, OK);
}

/// Whether the server span `GET {path}` is the child of a client span (and shares its trace).
fn linked(spans: &[(Vec<KeyValue>, Span)], path: &str) -> bool {
    let server = spans
        .iter()
        .map(|(_, s)| s)
        .find(|s| s.name == format!("GET {path}") && s.kind == 2)
        .unwrap_or_else(|| panic!("no server span GET {path}"));
    spans.iter().any(|(_, c)| {
        c.kind == 3 && c.span_id == server.parent_span_id && c.trace_id == server.trace_id
    })
}

#[test]
fn snat_pairs_are_linked_by_their_initial_sequence_numbers() {
    let mut s = Sim::new();
    let (cl, sv) = snat_pair();
    s.open_with_isns(&cl, 10, isns(0xdead_beef, 0x1234_5678));
    s.open_with_isns(&sv, 20, isns(0xdead_beef, 0x1234_5678));
    exchange(&mut s, &cl, &sv, 100, "/a", false);
    exchange(&mut s, &cl, &sv, 1000, "/b", true);
    let spans = s.spans();
    assert_eq!(spans.len(), 4);
    assert!(linked(&spans, "/a"), "client event first: {spans:#?}");
    assert!(linked(&spans, "/b"), "server event first: {spans:#?}");
    assert_eq!(
        s.metric("loupe_spans_same_host_links_total{key=\"isn\"}"),
        2
    );
    assert_eq!(
        s.metric("loupe_spans_same_host_links_total{key=\"address\"}"),
        0
    );
    // Both server spans got their parent on this host, the second once its client came.
    assert_eq!(
        s.metric("loupe_spans_server_parents_total{source=\"same_host\"}"),
        2
    );
    assert_eq!(s.b.core.ctx.len(), (0, 0), "nothing left waiting");
}

/// A client whose non-blocking connect returned in SYN_SENT knows only its own ISN: the client
/// ISN links it (the server's ISN is compared only where both ends know it).
#[test]
fn a_client_without_the_server_isn_is_linked_by_its_own() {
    let mut s = Sim::new();
    let (cl, sv) = snat_pair();
    let syn_sent = TcpIsns {
        known: isn_known::CLIENT,
        server: 0,
        ..isns(77, 0)
    };
    s.open_with_isns(&cl, 10, syn_sent);
    s.open_with_isns(&sv, 20, isns(77, 991));
    exchange(&mut s, &cl, &sv, 100, "/a", false);
    assert!(linked(&s.spans(), "/a"));
    assert_eq!(
        s.metric("loupe_spans_same_host_links_total{key=\"isn\"}"),
        1
    );
}

/// Two ends that both know their ISNs are one connection only if those agree, whatever their
/// addresses say (behind SNAT the same client address and port is not the same connection).
#[test]
fn different_isns_at_the_same_addresses_do_not_link() {
    for (client, server) in [(isns(1, 2), isns(5, 2)), (isns(1, 2), isns(1, 3))] {
        let mut s = Sim::new();
        let (cl, sv) = same_host_pair();
        s.open_with_isns(&cl, 10, client);
        s.open_with_isns(&sv, 20, server);
        exchange(&mut s, &cl, &sv, 100, "/a", false);
        exchange(&mut s, &cl, &sv, 1000, "/b", true);
        let spans = s.spans();
        assert_eq!(spans.len(), 4);
        assert!(
            spans.iter().all(|(_, s)| s.parent_span_id.is_empty()),
            "{client:?} / {server:?}: {spans:#?}"
        );
        assert_eq!(
            s.metric("loupe_spans_same_host_links_total{key=\"isn\"}"),
            0
        );
        assert_eq!(
            s.metric("loupe_spans_same_host_links_total{key=\"address\"}"),
            0
        );
        assert_eq!(s.b.core.ctx.len(), (0, 0), "nothing left waiting");
    }
}

/// An end without ISNs (open before the agent started: no OPEN event) meets the other by the
/// client's address, whether or not the other end has ISNs; through SNAT it cannot.
#[test]
fn ends_without_isns_fall_back_to_the_client_address() {
    // Neither end has ISNs, then only the client, then only the server.
    for (client, server) in [
        (None, None),
        (None, Some(isns(4, 5))),
        (Some(isns(4, 5)), None),
    ] {
        let mut s = Sim::new();
        let (cl, sv) = same_host_pair();
        if let Some(i) = client {
            s.open_with_isns(&cl, 10, i);
        }
        if let Some(i) = server {
            s.open_with_isns(&sv, 20, i);
        }
        exchange(&mut s, &cl, &sv, 100, "/a", false);
        exchange(&mut s, &cl, &sv, 1000, "/b", true);
        let spans = s.spans();
        let what = format!("client {client:?}, server {server:?}");
        assert!(
            linked(&spans, "/a") && linked(&spans, "/b"),
            "{what}: {spans:#?}"
        );
        assert_eq!(
            s.metric("loupe_spans_same_host_links_total{key=\"address\"}"),
            2,
            "{what}"
        );
        assert_eq!(
            s.metric("loupe_spans_same_host_links_total{key=\"isn\"}"),
            0,
            "{what}"
        );
        assert_eq!(s.b.core.ctx.len(), (0, 0), "{what}: nothing left waiting");
    }
    // Through SNAT an end without ISNs has nothing to go by.
    let mut s = Sim::new();
    let (cl, sv) = snat_pair();
    s.open_with_isns(&sv, 20, isns(4, 5));
    exchange(&mut s, &cl, &sv, 100, "/a", false);
    assert!(!linked(&s.spans(), "/a"));
}

/// `--link-same-host=false` turns the ISN link off too.
#[test]
fn isn_links_follow_link_same_host() {
    let mut s = Sim::with(SpanBuilderConfig {
        link_same_host: false,
        ..SpanBuilderConfig::default()
    });
    let (cl, sv) = snat_pair();
    s.open_with_isns(&cl, 10, isns(9, 10));
    s.open_with_isns(&sv, 20, isns(9, 10));
    exchange(&mut s, &cl, &sv, 100, "/a", false);
    assert!(!linked(&s.spans(), "/a"));
    assert_eq!(
        s.metric("loupe_spans_same_host_links_total{key=\"isn\"}"),
        0
    );
}

/// On the fexit path a write is timed by its end, and the reader can return before the writer
/// does: a same-host client span is then moved back to start no later than its server span, in
/// either event order.
/// The server span `GET {path}` and the span that is its parent.
fn parent_pair<'a, R: std::fmt::Debug>(spans: &'a [(R, Span)], path: &str) -> (&'a Span, &'a Span) {
    let server = spans
        .iter()
        .map(|(_, s)| s)
        .find(|s| s.name == format!("GET {path}"))
        .unwrap_or_else(|| panic!("no server span GET {path}"));
    let client = spans
        .iter()
        .map(|(_, s)| s)
        .find(|c| c.span_id == server.parent_span_id)
        .unwrap_or_else(|| panic!("{path}: no parent among {spans:#?}"));
    (client, server)
}

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
        let (client, server) = parent_pair(&spans, path);
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

/// Both ends on this host, linked by the TCP option alone (same-host linking off): a client's
/// write timed by its end (fexit) can end after the server read it, in either event order; the
/// client span still never starts after the server span it parents.
#[test]
fn option_linked_client_spans_never_start_after_their_server_span() {
    let mut s = Sim::with(SpanBuilderConfig {
        link_same_host: false,
        ..SpanBuilderConfig::default()
    });
    let (cl, sv) = same_host_pair();
    let req = |p: &str| format!("GET {p} HTTP/1.1\r\nHost: localhost:8080\r\n\r\n");
    let (a, b) = (req("/a"), req("/b"));
    // Server event first.
    s.io_ctx(
        &sv,
        31,
        direction::INGRESS,
        250,
        a.as_bytes(),
        kctx(0xaa, 0x11, 0x22),
        true,
    );
    s.io_ctx(
        &cl,
        21,
        direction::EGRESS,
        300,
        a.as_bytes(),
        kctx(0xaa, 0x22, 0),
        false,
    );
    s.io_ctx(
        &sv,
        31,
        direction::EGRESS,
        400,
        OK,
        kctx(0xaa, 0x11, 0x22),
        true,
    );
    s.read(&cl, 21, 450, 450, OK);
    // Client event first.
    s.io_ctx(
        &cl,
        21,
        direction::EGRESS,
        1300,
        b.as_bytes(),
        kctx(0xbb, 0x44, 0),
        false,
    );
    s.io_ctx(
        &sv,
        31,
        direction::INGRESS,
        1250,
        b.as_bytes(),
        kctx(0xbb, 0x33, 0x44),
        true,
    );
    s.io_ctx(
        &sv,
        31,
        direction::EGRESS,
        1400,
        OK,
        kctx(0xbb, 0x33, 0x44),
        true,
    );
    s.read(&cl, 21, 1450, 1450, OK);

    let spans = s.spans();
    for path in ["/a", "/b"] {
        let (client, server) = parent_pair(&spans, path);
        assert_eq!(
            client.start_time_unix_nano, server.start_time_unix_nano,
            "{path}"
        );
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
                name: "".into(),
                kind: loupe_collector::traces::SpanKind::Server,
                start_time_unix_nano: 0,
                end_time_unix_nano: 0,
                attributes: Default::default(),
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
