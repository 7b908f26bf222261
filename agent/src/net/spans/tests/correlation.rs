//! Span ↔ profile publication and log records tied to their request.

use super::*;

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
    let found = index.lookup(&[(4242, 100), (4242, 300), (4242, 200)]);
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
