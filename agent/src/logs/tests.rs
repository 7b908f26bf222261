use loupe_collector::logs::Severity;
use loupe_collector::traces::proto::common::{AnyValue, KeyValue, any_value::Value};

use super::*;

fn resource(pid: u32) -> Arc<Resource> {
    Arc::new(Resource {
        attributes: vec![KeyValue {
            key: "process.pid".into(),
            value: Some(AnyValue {
                value: Some(Value::IntValue(i64::from(pid))),
            }),
            ..KeyValue::default()
        }],
        ..Resource::default()
    })
}

fn assembler(cfg: LogConfig, registry: &Registry) -> LogAssembler {
    LogAssembler::new(
        cfg,
        registry,
        Clock::new(),
        Arc::new(InstrumentationScope::default()),
    )
}

fn write<'a>(pid: u32, t: u64, data: &'a [u8], ctx: Option<([u8; 16], [u8; 8])>) -> LogWrite<'a> {
    LogWrite {
        pid,
        tid: pid,
        fd: 1,
        monotonic_ns: t,
        data,
        total: data.len() as u64,
        context: ctx,
    }
}

fn metric(r: &Registry, line: &str) -> u64 {
    r.render()
        .lines()
        .find_map(|l| l.strip_prefix(line)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {line}"))
}

#[test]
fn records_carry_the_serving_request_severity_and_stream() {
    let registry = Registry::new();
    let mut a = assembler(LogConfig::default(), &registry);
    let ctx = Some(([0x11; 16], [0x22; 8]));
    a.on_write(
        write(
            10,
            1_000,
            br#"{"level":"error","msg":"card declined"}"#,
            ctx,
        ),
        || resource(10),
    );
    // The line ends in the next write.
    a.on_write(
        write(10, 2_000, b"\n2026-12-03T10:00:00Z INFO done\n", None),
        || resource(10),
    );
    a.on_write(write(11, 3_000, b"WARN other\n", None), || resource(11));
    assert_eq!(a.pending_len(), 3);
    let batch = a.take_batch().unwrap();
    assert_eq!(batch.record_count(), 3);
    assert!(a.take_batch().is_none());
    let of = |pid: i64| {
        batch
            .resources
            .iter()
            .find(|r| {
                r.resource.attributes[0]
                    .value
                    .as_ref()
                    .and_then(|v| v.value.clone())
                    == Some(Value::IntValue(pid))
            })
            .unwrap()
    };
    let p10 = &of(10).records;
    assert_eq!(p10[0].body, r#"{"level":"error","msg":"card declined"}"#);
    assert_eq!(p10[0].severity, Severity::Error);
    assert_eq!(p10[0].trace_id, Some([0x11; 16]));
    assert_eq!(p10[0].span_id, Some([0x22; 8]));
    assert_eq!(p10[1].severity, Severity::Info);
    assert_eq!(p10[1].trace_id, None);
    assert!(p10[0].time_unix_nano < p10[1].time_unix_nano);
    assert_eq!(
        p10[0].attributes[0],
        Attribute {
            key: LOG_IOSTREAM,
            value: AttrValue::Str("stdout".into())
        }
    );
    assert_eq!(of(11).records[0].severity, Severity::Warn);
    assert_eq!(metric(&registry, "loupe_logs_lines_total "), 3);
}

#[test]
fn excess_is_dropped_and_counted() {
    let registry = Registry::new();
    let cfg = LogConfig {
        max_lines_per_sec: 3,
        max_pending: 5,
        max_line_bytes: 8,
        ..LogConfig::default()
    };
    let mut a = assembler(cfg, &registry);
    // Five lines in one second from one process: two over its rate.
    a.on_write(write(1, 0, b"a\nb\nc\nd\ne\n", None), || resource(1));
    // A second later the window starts again; the buffer holds 5 at most.
    a.on_write(write(1, 1_000_000_000, b"f\ng\nh\n", None), || resource(1));
    // A long line is cut; a write the kernel captured in part counts the bytes it missed.
    let mut w = write(2, 1_000_000_001, b"0123456789\n", None);
    w.total = 100;
    a.on_write(w, || resource(2));
    assert_eq!(a.pending_len(), 5);
    assert_eq!(
        metric(
            &registry,
            "loupe_logs_lines_dropped_total{reason=\"rate_limit\"} "
        ),
        2
    );
    assert_eq!(
        metric(
            &registry,
            "loupe_logs_lines_dropped_total{reason=\"buffer_full\"} "
        ),
        2
    );
    assert_eq!(metric(&registry, "loupe_logs_lines_cut_total "), 1);
    assert_eq!(metric(&registry, "loupe_logs_bytes_missed_total "), 89);
    assert_eq!(metric(&registry, "loupe_logs_lines_total "), 5);
    // Every line is accounted for: 9 lines in, 5 kept, 4 dropped.
}

#[test]
fn the_byte_cap_drops_lines_past_it_until_the_next_flush() {
    let registry = Registry::new();
    let per_line = 2 + crate::memory::LOG_LINE_OVERHEAD as usize;
    let cfg = LogConfig {
        max_pending_bytes: 3 * per_line,
        ..LogConfig::default()
    };
    let mut a = assembler(cfg, &registry);
    // Five one-byte lines: three fit, each counting its text and the record's overhead.
    a.on_write(write(1, 0, b"a\nb\nc\nd\ne\n", None), || resource(1));
    assert_eq!(a.pending_len(), 3);
    assert_eq!(
        metric(
            &registry,
            "loupe_logs_lines_dropped_total{reason=\"buffer_full\"} "
        ),
        2
    );
    // A flush frees the bytes.
    assert!(a.take_batch().is_some());
    a.on_write(write(1, 10, b"f\n", None), || resource(1));
    assert_eq!(a.pending_len(), 1);
}
