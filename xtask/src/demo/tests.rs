use std::time::Instant;

use super::checks::{Verdict, Window};
use super::logs::{self, LogRecord, LogWindow};
use super::profiles::pprof;
use super::verify::fault_param;
use super::*;
use crate::spans_read::Span;
use crate::util::root;

#[test]
fn exercises_match_their_docs() {
    let docs = root().join("docs").join("exercises");
    for e in EXERCISES {
        assert!(
            docs.join(format!("{}.md", e.name)).is_file(),
            "docs/exercises/{}.md is missing",
            e.name
        );
    }
}

#[test]
fn tail_assertions_are_skipped_only_when_overloaded() {
    let mut v = Verdict::default();
    v.check(true, "median".into());
    v.check_tail(false, "slowest".into());
    assert!(v.finish("test", Instant::now()).is_err());

    let mut v = Verdict {
        overloaded: Some("busy host".into()),
        ..Verdict::default()
    };
    v.check(true, "median".into());
    v.check_tail(false, "slowest".into());
    assert!(v.finish("test", Instant::now()).is_ok());

    let mut v = Verdict {
        overloaded: Some("busy host".into()),
        ..Verdict::default()
    };
    v.check(false, "median".into());
    assert!(v.finish("test", Instant::now()).is_err());
}

#[test]
fn fault_params_are_read() {
    assert_eq!(fault_param("ratio=0.3&status=500", "ratio"), Some(0.3));
    assert_eq!(fault_param("ratio=0.3&status=500", "status"), Some(500.0));
    assert_eq!(fault_param("mode=scan", "ms"), None);
    assert_eq!(fault_param("", "ms"), None);
}

#[test]
fn windows_keep_the_shops_own_work() {
    let span = |service: &str, kind: i64, start_ns: u64, attrs: &[(&str, &str)]| Span {
        service: service.to_string(),
        kind,
        start_ns,
        end_ns: start_ns + 1_000_000,
        attributes: attrs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Span::default()
    };
    let q = "SELECT id FROM users WHERE id = ?";
    let all = [
        span("user", 2, 10, &[("url.path", "/users/7")]),
        span("user", 2, 11, &[("url.path", "/admin/fault/cache-off")]),
        span("user", 2, 12, &[("url.path", "/healthz")]),
        span(
            "user",
            3,
            13,
            &[
                ("db.system.name", "mysql"),
                ("db.operation.name", "PREPARE"),
                ("db.query.text", q),
            ],
        ),
        span(
            "user",
            3,
            14,
            &[
                ("db.system.name", "mysql"),
                ("db.operation.name", "SELECT"),
                ("db.query.text", q),
            ],
        ),
        span(
            "user",
            3,
            15,
            &[
                ("db.system.name", "mysql"),
                ("db.operation.name", "RESET_CONNECTION"),
            ],
        ),
        span(
            "user",
            3,
            15,
            &[
                ("db.system.name", "mysql"),
                ("db.operation.name", "SELECT"),
                (
                    "db.query.text",
                    "SELECT @@max_allowed_packet,@@wait_timeout",
                ),
            ],
        ),
        span(
            "user",
            3,
            16,
            &[("db.system.name", "redis"), ("db.operation.name", "GET")],
        ),
        span(
            "frontend",
            3,
            17,
            &[
                ("server.port", "8084"),
                ("http.response.status_code", "500"),
            ],
        ),
        span("user", 2, 99, &[("url.path", "/users/8")]),
    ];
    let w = Window::new("test", &all, 10, 20);
    assert_eq!(w.server("user", "/").len(), 1);
    assert_eq!(
        w.db("user", "mysql").len(),
        1,
        "only the statement's EXECUTE"
    );
    assert_eq!(w.db("user", "redis").len(), 1);
    assert_eq!(w.http_client("frontend", 8084).len(), 1);
    assert_eq!(w.http_client("frontend", 8083).len(), 0);
}

#[test]
fn pprof_subset_reads_leaf_and_pid() {
    use prost::Message;
    let strings = [
        "",
        "samples",
        "count",
        "pid",
        "compute_discount_hot_loop",
        "spin",
        "main",
    ];
    let p = pprof::Profile {
        sample_type: vec![pprof::ValueType { r#type: 1, unit: 2 }],
        sample: vec![pprof::Sample {
            location_id: vec![1, 2],
            value: vec![7],
            label: vec![pprof::Label {
                key: 3,
                str: 0,
                num: 42,
            }],
        }],
        location: vec![
            pprof::Location {
                id: 1,
                line: vec![
                    pprof::Line { function_id: 2 },
                    pprof::Line { function_id: 1 },
                ],
            },
            pprof::Location {
                id: 2,
                line: vec![pprof::Line { function_id: 3 }],
            },
        ],
        function: vec![
            pprof::Function { id: 1, name: 4 },
            pprof::Function { id: 2, name: 5 },
            pprof::Function { id: 3, name: 6 },
        ],
        string_table: strings.iter().map(|s| s.to_string()).collect(),
    };
    let back = pprof::Profile::decode(&p.encode_to_vec()[..]).expect("round trip");
    assert_eq!(back.label_num(&back.sample[0], "pid"), Some(42));
    assert_eq!(
        back.frames(1),
        vec!["spin".to_string(), "compute_discount_hot_loop".to_string()]
    );
    assert_eq!(back.value_index(), 0);
}

/// A logs.jsonl line as the agent's local sink writes it: one resource per service, fields at their default left
/// out (no `traceId` outside a request, no `timeUnixNano` when only the observed time is known).
const LOGS_LINE: &str = r#"{"resourceLogs":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"payment"}},{"key":"process.pid","value":{"intValue":"42"}}]},"scopeLogs":[{"scope":{"name":"loupe"},"logRecords":[{"timeUnixNano":"2000000000","observedTimeUnixNano":"2000100000","severityNumber":17,"severityText":"ERROR","body":{"stringValue":"{\"level\":\"error\",\"msg\":\"request failed\",\"status\":500}"},"traceId":"0AF7651916CD43DD8448EB211C80319C","spanId":"B7AD6B7169203331","attributes":[{"key":"log.iostream","value":{"stringValue":"stdout"}}]},{"observedTimeUnixNano":"3000000000","severityNumber":9,"body":{"stringValue":"2025-01-02T03:04:05.678Z INFO  [payment] listening"},"attributes":[{"key":"log.iostream","value":{"stringValue":"stdout"}}]}]}]},{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"inventory"}}]},"scopeLogs":[{"scope":{},"logRecords":[{"timeUnixNano":"2500000000","severityNumber":5,"severityText":"DEBUG","body":{"stringValue":"retrying connection pool health probe 1/100 ok=true"},"traceId":"11111111111111111111111111111111","spanId":"2222222222222222"},{"timeUnixNano":"2600000000","body":{"stringValue":"no level"}}]}]}]}"#;

#[test]
fn logs_jsonl_lines_are_read() {
    let dir = std::env::temp_dir().join(format!("loupe-xtask-logs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("logs.jsonl"),
        format!("{LOGS_LINE}\n\n{{\"resourceLogs\":[{{\"cut\n"),
    )
    .unwrap();
    let read = logs::read(&dir).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(read.bad_lines, 1);
    let r = &read.records;
    assert_eq!(r.len(), 4);
    assert_eq!(r[0].service, "payment");
    assert_eq!(r[0].time_ns, 2_000_000_000);
    assert!(r[0].is_error());
    assert_eq!(r[0].trace_id, "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(r[0].span_id, "b7ad6b7169203331");
    assert!(r[0].body.contains("request failed"));
    // No timeUnixNano: the observed time; no traceId: written outside any request; the level from the number.
    assert_eq!(r[1].time_ns, 3_000_000_000);
    assert_eq!((r[1].trace_id.as_str(), r[1].span_id.as_str()), ("", ""));
    assert_eq!(r[1].severity(), "INFO");
    assert!(!r[1].is_error());
    assert_eq!(r[2].service, "inventory");
    assert_eq!(r[2].severity(), "DEBUG");
    assert_eq!(r[3].severity(), "UNSPECIFIED");

    let w = LogWindow::new("test", r, 2_000_000_000, 2_600_000_000);
    assert_eq!(w.records.len(), 2, "from inclusive, to exclusive");
    assert!((w.secs - 0.6).abs() < 1e-9);
    assert!((w.rate("inventory") - 1.0 / 0.6).abs() < 1e-9);
    assert_eq!(w.rate_at("inventory", "INFO"), 0.0);
}

const SEC: u64 = 1_000_000_000;

fn server_span(service: &str, path: &str, start_ns: u64, status: u16, n: u64) -> Span {
    Span {
        service: service.to_string(),
        trace_id: format!("{n:032x}"),
        span_id: format!("{n:016x}"),
        kind: 2,
        start_ns,
        end_ns: start_ns + 1_000_000,
        attributes: [
            ("url.path".to_string(), path.to_string()),
            ("http.request.method".to_string(), "POST".to_string()),
            ("http.response.status_code".to_string(), status.to_string()),
        ]
        .into_iter()
        .collect(),
        status_code: if status >= 500 { 2 } else { 0 },
        ..Span::default()
    }
}

fn record(service: &str, time_ns: u64, severity: i64, span: Option<&Span>) -> LogRecord {
    LogRecord {
        service: service.to_string(),
        time_ns,
        severity_number: severity,
        body: "line".to_string(),
        trace_id: span.map(|s| s.trace_id.clone()).unwrap_or_default(),
        span_id: span.map(|s| s.span_id.clone()).unwrap_or_default(),
        ..LogRecord::default()
    }
}

/// Inventory at 20 requests/s over two 10 s windows (the fault from 10 s on), one INFO access line per request and,
/// with the fault, `spam` DEBUG lines per request; frontend one INFO line per request throughout.
fn shop_run(spam: u64) -> (Vec<Span>, Vec<LogRecord>) {
    let (mut spans, mut logs) = (Vec::new(), Vec::new());
    for i in 0..400u64 {
        let t = i * SEC / 20;
        let s = server_span("inventory", "/products", t, 200, i + 1);
        logs.push(record("inventory", t + 1000, 9, Some(&s)));
        logs.push(record("frontend", t + 1000, 9, None));
        if t >= 10 * SEC {
            for k in 0..spam {
                logs.push(record("inventory", t + 2000 + k, 5, Some(&s)));
            }
        }
        spans.push(s);
    }
    (spans, logs)
}

fn log_spam_verdict(spam: u64) -> anyhow::Result<()> {
    log_spam_verdict_of(shop_run(spam))
}

fn log_spam_verdict_of((spans, logs): (Vec<Span>, Vec<LogRecord>)) -> anyhow::Result<()> {
    let (sb, sf) = (
        Window::new("baseline", &spans, 0, 10 * SEC),
        Window::new("fault", &spans, 10 * SEC, 20 * SEC),
    );
    let (lb, lf) = (
        LogWindow::new("baseline", &logs, 0, 10 * SEC),
        LogWindow::new("fault", &logs, 10 * SEC, 20 * SEC),
    );
    logs::print_rates(&lb, &lf);
    let mut v = Verdict::default();
    logs::check_log_spam((&lb, &lf), (&sb, &sf), "inventory", 100.0, 10_000, &mut v);
    v.finish("log-spam", Instant::now())
}

#[test]
fn log_spam_passes_on_the_expected_rise_only() {
    // 20 requests/s × 100 lines: +2000 lines/s.
    assert!(log_spam_verdict(100).is_ok());
    // 90 and 115 lines per request are within 20%.
    assert!(log_spam_verdict(90).is_ok());
    assert!(log_spam_verdict(115).is_ok());
    // Lines lost (say, to the agent's rate limit of 1000 lines/s) or no spam at all: fails.
    assert!(log_spam_verdict(50).is_err());
    assert!(log_spam_verdict(0).is_err());
    // Far more than the fault writes: fails too.
    assert!(log_spam_verdict(130).is_err());
    // The right count, but the lines tied to no request: fails.
    let (spans, mut logs) = shop_run(100);
    for r in logs.iter_mut().filter(|r| r.severity_number == 5) {
        r.trace_id.clear();
        r.span_id.clear();
    }
    assert!(log_spam_verdict_of((spans, logs)).is_err());
}

#[test]
fn log_spam_fails_at_the_agents_limit() {
    let (spans, logs) = shop_run(100);
    let (sb, sf) = (
        Window::new("baseline", &spans, 0, 10 * SEC),
        Window::new("fault", &spans, 10 * SEC, 20 * SEC),
    );
    let (lb, lf) = (
        LogWindow::new("baseline", &logs, 0, 10 * SEC),
        LogWindow::new("fault", &logs, 10 * SEC, 20 * SEC),
    );
    let mut v = Verdict::default();
    // 2020 lines/s against a limit of 2000: the rate would be the limit's, not the fault's.
    logs::check_log_spam((&lb, &lf), (&sb, &sf), "inventory", 100.0, 2000, &mut v);
    assert!(v.finish("log-spam", Instant::now()).is_err());
}

#[test]
fn error_lines_are_found_by_trace_and_span_id() {
    let ok = server_span("payment", "/payments", SEC, 201, 1);
    let failed = [
        server_span("payment", "/payments", 2 * SEC, 500, 2),
        server_span("payment", "/payments", 3 * SEC, 500, 3),
    ];
    let failed_refs: Vec<&Span> = failed.iter().collect();
    let verdict = |logs: &[LogRecord]| {
        let mut v = Verdict::default();
        logs::check_error_lines("payment", &failed_refs, logs, &mut v);
        v.finish("error-burst", Instant::now())
    };
    let info_of_failed = record("payment", 2 * SEC, 9, Some(&failed[0]));
    let error_of_ok = record("payment", SEC, 17, Some(&ok));
    let error_unrelated = record("payment", 2 * SEC, 17, None);
    let error_other_service = record("frontend", 2 * SEC, 17, Some(&failed[0]));
    let mut other_span = record("payment", 2 * SEC, 17, Some(&failed[0]));
    other_span.span_id = "ffffffffffffffff".to_string();
    let none = [
        info_of_failed.clone(),
        error_of_ok,
        error_unrelated,
        error_other_service,
        other_span,
    ];
    assert!(
        verdict(&none).is_err(),
        "no error line of payment carries a failing span's trace and span id"
    );
    let mut found = none.to_vec();
    found.push(record("payment", 3 * SEC, 17, Some(&failed[1])));
    assert!(verdict(&found).is_ok());
    // The severity by text when the number is unset.
    let mut by_text = record("payment", 2 * SEC, 0, Some(&failed[0]));
    by_text.severity_text = "error".to_string();
    assert!(verdict(&[info_of_failed, by_text]).is_ok());
}
