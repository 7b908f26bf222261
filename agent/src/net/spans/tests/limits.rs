//! Bounds and accounting: connections, memory, finished spans, RED counts, the builder thread.

use super::*;

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
        tx.send(
            vec![SocketEvent {
                header,
                data: Bytes::from_static(bytes),
            }]
            .into(),
        )
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

/// A same-host end with ISNs and addresses waits under both keys: each entry counts against
/// `max_links`, a full map refuses (counted), and a request that is linked, forgotten or swept
/// leaves both of its entries.
#[test]
fn same_host_links_waiting_under_two_keys_stay_bounded() {
    use crate::net::spans::context::{ClientLink, Isns, LinkKey, LinkedBy, TraceContexts};
    let isns_of = |n: u32| {
        Some(Isns {
            client: n,
            server: Some(n + 1),
        })
    };
    let (_, sv) = same_host_pair();
    let mut ctx = TraceContexts::new(8, 4);
    let key = |n: u32| LinkKey::of_server(&sv.tuple, isns_of(n));
    // Two server requests fill the map (two entries each); the third does not fit.
    assert!(ctx.server_request(key(1), (2, 1), 0).is_none());
    assert!(ctx.server_request(key(3), (2, 2), 0).is_none());
    assert_eq!(ctx.len(), (0, 4));
    assert!(ctx.server_request(key(5), (2, 3), 0).is_none());
    assert_eq!((ctx.len(), ctx.overflows), ((0, 4), 1));
    assert!(ctx.server_waiting(key(1), (2, 1)));
    assert!(!ctx.server_waiting(key(5), (2, 3)));
    // A forgotten request leaves both of its entries.
    ctx.forget(key(3), (2, 2));
    assert_eq!(ctx.len(), (0, 2));
    // Its client links the first one by ISN and takes both of its entries with it.
    let (cl, _) = same_host_pair();
    let client_key = LinkKey::of_client(&cl.tuple, isns_of(1));
    let link = ctx.client_request(client_key, &SpanContext::default(), (1, 1), 10);
    assert_eq!(link, ClientLink::ServerWaiting((2, 1), LinkedBy::Isn));
    assert_eq!(ctx.len(), (0, 0));
    // Stale entries are swept when the map is full.
    for i in 0..2 {
        assert!(
            ctx.server_request(key(10 + i), (3, u64::from(i)), 0)
                .is_none()
        );
    }
    assert!(
        ctx.server_request(key(20), (3, 9), 11_000_000_000)
            .is_none()
    );
    assert_eq!(ctx.len(), (0, 2));
}
