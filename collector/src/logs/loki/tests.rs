//! The Loki sink against a scripted HTTP/1.1 receiver on loopback that snappy-decodes and
//! prost-decodes every push.

use super::*;
use crate::logs::{LogExporter, ResourceLogs, Severity};
use crate::telemetry::Registry;
use crate::test_util::{Received, Receiver};
use crate::traces::Attribute;
use crate::traces::proto::common::{AnyValue, InstrumentationScope, KeyValue};

fn fast_config(url: String) -> LokiConfig {
    LokiConfig {
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        timeout: Duration::from_secs(5),
        ..LokiConfig::new(url)
    }
}

fn resource(attrs: &[(&str, Value)]) -> Arc<Resource> {
    Arc::new(Resource {
        attributes: attrs
            .iter()
            .map(|(k, v)| KeyValue {
                key: (*k).into(),
                value: Some(AnyValue {
                    value: Some(v.clone()),
                }),
                ..KeyValue::default()
            })
            .collect(),
        ..Resource::default()
    })
}

fn s(v: &str) -> Value {
    Value::StringValue(v.into())
}

fn record(t: u64, severity: Severity, body: &str, ids: bool, stream: &str) -> LogRecord {
    LogRecord {
        time_unix_nano: t,
        observed_time_unix_nano: t + 5,
        severity,
        body: body.into(),
        trace_id: ids.then_some([0xab; 16]),
        span_id: ids.then_some([0x0c; 8]),
        attributes: vec![Attribute {
            key: LOG_IOSTREAM,
            value: AttrValue::Str(stream.to_owned().into()),
        }],
    }
}

const T0: u64 = 1_700_000_000_000_000_000;

pub(crate) fn sample() -> LogBatch {
    let scope = Arc::new(InstrumentationScope::default());
    LogBatch {
        resources: vec![
            ResourceLogs {
                resource: resource(&[
                    ("service.name", s("checkout")),
                    ("k8s.namespace.name", s("shop")),
                    ("k8s.container.name", s("app")),
                    ("k8s.pod.name", s("checkout-7d9f")),
                    ("host.name", s("node-1")),
                    ("process.pid", Value::IntValue(4242)),
                ]),
                scope: scope.clone(),
                records: vec![
                    // Out of order on purpose: the stream's entries come out sorted.
                    record(T0 + 2_500_000_000, Severity::Info, "second", true, "stdout"),
                    record(T0 + 1_000_000_007, Severity::Info, "first", false, "stdout"),
                    record(T0 + 3_000_000_000, Severity::Error, "boom", true, "stderr"),
                ],
            },
            ResourceLogs {
                resource: resource(&[
                    ("service.name", s("batch \"job\"")),
                    ("service.namespace", s("jobs")),
                ]),
                scope: scope.clone(),
                records: vec![record(0, Severity::Unspecified, "no time", false, "stdout")],
            },
            ResourceLogs {
                resource: resource(&[]),
                scope,
                records: vec![record(T0, Severity::Warn, "anonymous", false, "stderr")],
            },
        ],
    }
}

fn decode(r: &Received) -> PushRequest {
    let raw = snap::raw::Decoder::new()
        .decompress_vec(&r.body)
        .expect("a snappy block");
    PushRequest::decode(&raw[..]).expect("a logproto.PushRequest")
}

fn metadata(e: &EntryAdapter) -> Vec<(&str, &str)> {
    e.structured_metadata
        .iter()
        .map(|p| (p.name.as_str(), p.value.as_str()))
        .collect()
}

fn ts(nanos: u64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: (nanos / 1_000_000_000) as i64,
        nanos: (nanos % 1_000_000_000) as i32,
    })
}

#[tokio::test]
async fn pushes_snappy_protobuf_with_labels_metadata_auth_and_tenant() {
    let mut rx = Receiver::start(vec![]).await;
    let sink = LokiSink::new(LokiConfig {
        user: Some("user".into()),
        password: Some("pass".into()),
        tenant: Some("team-a".into()),
        ..fast_config(format!("{}/", rx.url()))
    })
    .unwrap();
    let report = sink.export(Arc::new(sample())).await;
    assert!(report.is_success(), "{:?}", report.errors);
    assert_eq!((report.items_exported, report.retries), (5, 0));

    let got = rx.drain();
    assert_eq!(got.len(), 1);
    let r = &got[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/loki/api/v1/push");
    assert_eq!(r.headers["content-type"], "application/x-protobuf");
    assert_eq!(r.headers["authorization"], "Basic dXNlcjpwYXNz");
    assert_eq!(r.headers["x-scope-orgid"], "team-a");
    assert_eq!(report.bytes_sent, r.body.len() as u64);

    let push = decode(r);
    let labels: Vec<&str> = push.streams.iter().map(|s| s.labels.as_str()).collect();
    assert_eq!(
        labels,
        [
            "{container=\"app\", level=\"error\", namespace=\"shop\", service_name=\"checkout\"}",
            "{container=\"app\", level=\"info\", namespace=\"shop\", service_name=\"checkout\"}",
            "{level=\"unknown\", service_name=\"batch \\\"job\\\"\", service_namespace=\"jobs\"}",
            "{level=\"warn\", service_name=\"unknown_service\"}",
        ]
    );
    assert!(
        labels.iter().all(|l| !l.contains("host")),
        "host is not a label"
    );

    let info = &push.streams[1].entries;
    let lines: Vec<&str> = info.iter().map(|e| e.line.as_str()).collect();
    assert_eq!(lines, ["first", "second"], "sorted by time");
    assert_eq!(info[0].timestamp, ts(T0 + 1_000_000_007));
    assert_eq!(info[1].timestamp, ts(T0 + 2_500_000_000));
    assert_eq!(
        metadata(&info[0]),
        [
            ("pod", "checkout-7d9f"),
            ("host_name", "node-1"),
            ("pid", "4242"),
            ("stream", "stdout"),
        ]
    );
    assert_eq!(
        metadata(&info[1]),
        [
            ("trace_id", "abababababababababababababababab"),
            ("span_id", "0c0c0c0c0c0c0c0c"),
            ("pod", "checkout-7d9f"),
            ("host_name", "node-1"),
            ("pid", "4242"),
            ("stream", "stdout"),
        ]
    );
    let error = &push.streams[0].entries[0];
    assert_eq!(
        (error.line.as_str(), error.timestamp),
        ("boom", ts(T0 + 3_000_000_000))
    );
    assert_eq!(metadata(error)[5], ("stream", "stderr"));
    // Without a write time, the time the agent read the line.
    assert_eq!(push.streams[2].entries[0].timestamp, ts(5));
    assert_eq!(
        metadata(&push.streams[3].entries[0]),
        [("stream", "stderr")]
    );
}

#[tokio::test]
async fn bearer_token_and_no_tenant() {
    let mut rx = Receiver::start(vec![]).await;
    let sink = LokiSink::new(LokiConfig {
        token: Some("t0k".into()),
        ..fast_config(format!("{}/loki-gw", rx.url()))
    })
    .unwrap();
    assert!(sink.export(Arc::new(sample())).await.is_success());
    let got = rx.drain();
    assert_eq!(got[0].path, "/loki-gw/loki/api/v1/push");
    assert_eq!(got[0].headers["authorization"], "Bearer t0k");
    assert!(!got[0].headers.contains_key("x-scope-orgid"));
}

#[tokio::test]
async fn retries_429_then_succeeds_honouring_retry_after() {
    let mut rx = Receiver::start(vec![(
        429,
        vec![("retry-after", "1")],
        "rate limited".into(),
    )])
    .await;
    let sink = LokiSink::new(fast_config(rx.url())).unwrap();
    let registry = Registry::new();
    let handle = LogExporter::spawn(vec![Box::new(sink)], &registry, 4);
    assert!(handle.try_submit(Arc::new(sample())));
    handle.shutdown(Duration::from_secs(10)).await.unwrap();
    let got = rx.drain();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].body, got[1].body, "the retry resends the same push");
    let waited = got[1].at - got[0].at;
    // The configured backoff is at most 50 ms: only Retry-After explains a one-second wait.
    assert!(waited >= Duration::from_millis(950), "waited {waited:?}");
    let text = registry.render();
    for line in [
        "loupe_exporter_retries_total{signal=\"logs\",sink=\"loki\"} 1\n",
        "loupe_exporter_items_exported_total{signal=\"logs\",sink=\"loki\"} 5\n",
        "loupe_exporter_exports_succeeded_total{signal=\"logs\",sink=\"loki\"} 1\n",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
}

#[tokio::test]
async fn a_400_is_not_retried_and_its_records_are_counted() {
    let long = format!("entry too far behind: {}", "x".repeat(500));
    let mut rx = Receiver::start(vec![(400, vec![], long)]).await;
    let sink = LokiSink::new(fast_config(rx.url())).unwrap();
    let registry = Registry::new();
    let handle = LogExporter::spawn(vec![Box::new(sink)], &registry, 4);
    assert!(handle.try_submit(Arc::new(sample())));
    handle.shutdown(Duration::from_secs(10)).await.unwrap();
    assert_eq!(rx.drain().len(), 1, "a 400 is not retried");
    let text = registry.render();
    for line in [
        "loupe_exporter_items_dropped_total{reason=\"export_failed\",signal=\"logs\",sink=\"loki\"} 5\n",
        "loupe_exporter_exports_failed_total{signal=\"logs\",sink=\"loki\"} 1\n",
        "loupe_exporter_retries_total{signal=\"logs\",sink=\"loki\"} 0\n",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    // The error quotes the start of Loki's answer.
    let mut rx = Receiver::start(vec![(400, vec![], format!("bad: {}", "y".repeat(500)))]).await;
    let sink = LokiSink::new(fast_config(rx.url())).unwrap();
    let report = sink.export(Arc::new(sample())).await;
    assert_eq!((report.items_failed, report.retries), (5, 0));
    let Some(super::super::LogSinkError::Loki(LokiPushError::Status { status, body, .. })) =
        report.errors.first()
    else {
        panic!("{:?}", report.errors);
    };
    assert_eq!((*status, body.len()), (400, 200));
    assert!(body.starts_with("bad: yyy"));
    assert_eq!(rx.drain().len(), 1);
}

#[tokio::test]
async fn connection_errors_are_retried() {
    let addr = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let sink = LokiSink::new(LokiConfig {
        max_retries: 2,
        ..fast_config(format!("http://{addr}"))
    })
    .unwrap();
    let report = sink.export(Arc::new(sample())).await;
    assert_eq!((report.items_failed, report.retries), (5, 2));
    let msg = report.errors[0].to_string();
    assert!(
        msg.contains("3 attempt(s)") && msg.contains("loki"),
        "{msg}"
    );
}

#[test]
fn rejects_bad_configs_and_redacts_secrets() {
    let new = |c: LokiConfig| LokiSink::new(c).map(|_| ());
    assert!(matches!(
        new(LokiConfig {
            password: Some("p".into()),
            ..LokiConfig::new("http://loki:3100")
        }),
        Err(LokiConfigError::PasswordWithoutUser)
    ));
    let err = new(LokiConfig {
        user: Some("u".into()),
        token: Some("t".into()),
        ..LokiConfig::new("http://loki:3100")
    })
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("loki basic auth, bearer token and bearer token file"),
        "{err}"
    );
    let err = new(LokiConfig::new("ftp://loki")).unwrap_err();
    assert!(err.to_string().contains("loki url"), "{err}");
    let err = new(LokiConfig {
        tenant: Some("a\nb".into()),
        ..LokiConfig::new("http://loki:3100")
    })
    .unwrap_err();
    assert!(err.to_string().contains("tenant id"), "{err}");
    let debug = format!(
        "{:?}",
        LokiConfig {
            user: Some("u".into()),
            password: Some("hunter2".into()),
            token: Some("s3cret".into()),
            ..LokiConfig::new("http://loki:3100")
        }
    );
    assert!(
        !debug.contains("hunter2") && !debug.contains("s3cret"),
        "{debug}"
    );
}

/// Behind the spool, the real client's outcomes decide: 503 and 429 (after the retries) spool the
/// push, the replay sends it as it was spooled once Loki answers, and a 400 is dropped, counted.
#[tokio::test]
async fn behind_the_spool_503_and_429_wait_on_disk_and_a_400_is_dropped() {
    use crate::export::{SpoolConfig, SpooledSink};
    // First push: 503 (Retry-After 0), 429 → spooled after one retry. Replay: 503, then 200.
    // Second push, queued behind the spool, then 400 on its replay: dropped.
    let mut rx = Receiver::start(vec![
        (503, vec![("retry-after", "0")], "unavailable".into()),
        (429, vec![], "slow down".into()),
        (503, vec![], "still down".into()),
        (503, vec![], "still down".into()),
        (200, vec![], String::new()),
        (400, vec![], "entry too far behind".into()),
    ])
    .await;
    let sink = LokiSink::new(LokiConfig {
        max_retries: 1,
        ..fast_config(rx.url())
    })
    .unwrap();
    let dir = crate::test_util::TempDir::new("loki-spool");
    let registry = Registry::new();
    let spool = SpoolConfig {
        dir: dir.path().join("logs-loki"),
        max_bytes: 1 << 20,
    };
    let Ok(sink) = SpooledSink::new(sink, &spool, &registry) else {
        panic!("spool");
    };
    let handle = LogExporter::spawn(vec![Box::new(sink)], &registry, 4);
    assert!(handle.try_submit(Arc::new(sample())));
    let metric = |line: &str| registry.render().contains(line);
    let written = "loupe_spool_items_written_total{signal=\"logs\",sink=\"loki\"} 5\n";
    for _ in 0..500 {
        if metric(written) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(metric(written), "{}", registry.render());
    assert!(handle.try_submit(Arc::new(sample())));
    let replayed = "loupe_spool_items_replayed_total{signal=\"logs\",sink=\"loki\"} 5\n";
    let refused = "loupe_exporter_items_dropped_total{reason=\"export_failed\",signal=\"logs\",sink=\"loki\"} 5\n";
    // The replay waits a second or more between attempts while Loki stays away.
    for _ in 0..1000 {
        if metric(replayed) && metric(refused) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    handle.shutdown(Duration::from_secs(10)).await.unwrap();
    let text = registry.render();
    assert!(text.contains(replayed) && text.contains(refused), "{text}");
    assert!(
        text.contains("loupe_spool_items{signal=\"logs\",sink=\"loki\"} 0\n"),
        "{text}"
    );
    let got = rx.drain();
    let statuses = got.len();
    // 2 attempts of the first push, 2 replays refused with 503, the accepted one, the 400.
    assert_eq!(statuses, 6);
    assert_eq!(
        got[0].body, got[4].body,
        "the replay sends the spooled push"
    );
    assert_eq!(decode(&got[4]), decode(&got[5]), "same records, in order");
}
