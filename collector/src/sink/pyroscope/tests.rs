//! Tests of the Pyroscope sink against a scripted receiver on loopback.

use std::io::Read;

use ::pyroscope::encode::r#gen::google::Profile;
use flate2::read::GzDecoder;
use tokio::net::TcpListener;

use super::*;
use crate::profile::{Frame, FrameLine, ServiceProfile, StackSample};
use crate::sink::ProfileExporter;
use crate::telemetry::Registry;
use crate::test_util::Receiver;

fn fast_config(url: String) -> PyroscopeConfig {
    PyroscopeConfig {
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        timeout: Duration::from_secs(5),
        ..PyroscopeConfig::new(url)
    }
}

fn service(name: &str, labels: &[(&str, &str)], count: u64) -> ServiceProfile {
    let frame = |f: &str| Frame {
        address: 0x1000,
        mapping: None,
        lines: vec![FrameLine::function(f)].into(),
    };
    ServiceProfile {
        service_name: name.to_owned(),
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        samples: if count == 0 {
            vec![]
        } else {
            vec![StackSample {
                pid: 99,
                thread_name: "worker".into(),
                count,
                objects: 0,
                frames: vec![frame(&format!("{name}_hot_fn")), frame("main")],
                span: None,
            }]
        },
    }
}

fn batch(services: Vec<ServiceProfile>) -> Arc<ProfileBatch> {
    Arc::new(ProfileBatch {
        start_unix_nanos: 1_700_000_000_000_000_000,
        duration_nanos: 10_000_000_000,
        period_nanos: 10_000_000,
        kind: Default::default(),
        profiles: services,
    })
}

fn decode(body: &[u8]) -> (PushRequest, Profile) {
    let push = PushRequest::decode(body).unwrap();
    assert_eq!(push.series.len(), 1);
    assert_eq!(push.series[0].samples.len(), 1);
    let mut raw = Vec::new();
    GzDecoder::new(&push.series[0].samples[0].raw_profile[..])
        .read_to_end(&mut raw)
        .unwrap();
    let profile = Profile::decode(&raw[..]).unwrap();
    (push, profile)
}

fn labels(push: &PushRequest) -> Vec<(&str, &str)> {
    push.series[0]
        .labels
        .iter()
        .map(|l| (l.name.as_str(), l.value.as_str()))
        .collect()
}

#[tokio::test]
async fn pushes_decodable_profiles_with_labels_and_headers() {
    let mut rx = Receiver::start(vec![]).await;
    let config = PyroscopeConfig {
        bearer_token: Some("s3cret".into()),
        tenant_id: Some("tenant-a".into()),
        ..fast_config(format!("{}/", rx.url()))
    };
    let sink = PyroscopeSink::new(config, vec![("host.name".into(), "node-1".into())]).unwrap();
    let report = sink
        .export(batch(vec![
            service(
                "checkout",
                &[("env", "prod"), ("service_name", "ignored"), ("__x", "y")],
                3,
            ),
            service("idle", &[], 0),
            service("cart", &[("host.name", "override")], 1),
        ]))
        .await;
    assert!(report.is_success(), "{:?}", report.errors);
    assert_eq!(
        (report.items_exported, report.items_failed, report.retries),
        (2, 0, 0)
    );

    let got = rx.drain();
    assert_eq!(got.len(), 2, "the empty profile is not pushed");
    assert_eq!(
        report.bytes_sent,
        got.iter().map(|r| r.body.len() as u64).sum::<u64>()
    );
    for r in &got {
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/push.v1.PusherService/Push");
        assert_eq!(r.headers["content-type"], "application/proto");
        assert_eq!(r.headers["connect-protocol-version"], "1");
        assert_eq!(r.headers["authorization"], "Bearer s3cret");
        assert_eq!(r.headers["x-scope-orgid"], "tenant-a");
    }

    let (push, profile) = decode(&got[0].body);
    assert_eq!(
        labels(&push),
        [
            ("__name__", "process_cpu"),
            ("env", "prod"),
            ("host_name", "node-1"),
            ("service_name", "checkout"),
        ]
    );
    let id = uuid::Uuid::parse_str(&push.series[0].samples[0].id).unwrap();
    assert_eq!(id.get_version_num(), 4);
    let s = |i: i64| profile.string_table[usize::try_from(i).unwrap()].as_str();
    let types: Vec<(&str, &str)> = profile
        .sample_type
        .iter()
        .map(|t| (s(t.r#type), s(t.unit)))
        .collect();
    assert_eq!(types, [("cpu", "nanoseconds"), ("samples", "count")]);
    assert_eq!(profile.sample[0].value, [30_000_000, 3]);
    let functions: Vec<&str> = profile.function.iter().map(|f| s(f.name)).collect();
    assert_eq!(functions, ["checkout_hot_fn", "main"]);

    let (push, _) = decode(&got[1].body);
    assert_eq!(
        labels(&push),
        [
            ("__name__", "process_cpu"),
            ("host_name", "override"),
            ("service_name", "cart"),
        ]
    );
    assert_ne!(
        push.series[0].samples[0].id,
        decode(&got[0].body).0.series[0].samples[0].id
    );
}

/// Pushes one service's `count` samples (of `objects` blocks, for allocation kinds) as a batch
/// of `kind` with `period` to a loopback receiver: the request and its profile, decoded, and the
/// profile's value types as text.
async fn push_kind(
    kind: ProfileKind,
    period: i64,
    name: &str,
    count: u64,
    objects: u64,
) -> (PushRequest, Profile, Vec<(String, String)>) {
    let mut rx = Receiver::start(vec![]).await;
    let sink = PyroscopeSink::new(fast_config(rx.url()), vec![]).unwrap();
    let mut b = (*batch(vec![service(name, &[], count)])).clone();
    b.kind = kind;
    b.period_nanos = period;
    for sample in b.profiles.iter_mut().flat_map(|p| &mut p.samples) {
        sample.objects = objects;
    }
    let report = sink.export(Arc::new(b)).await;
    assert!(report.is_success(), "{:?}", report.errors);
    let got = rx.drain();
    let (push, profile) = decode(&got[0].body);
    let s = |i: i64| profile.string_table[usize::try_from(i).unwrap()].clone();
    let types = profile
        .sample_type
        .iter()
        .map(|t| (s(t.r#type), s(t.unit)))
        .collect();
    (push, profile, types)
}

#[tokio::test]
async fn off_cpu_profiles_are_pushed_as_off_cpu_nanoseconds() {
    let (push, profile, types) = push_kind(ProfileKind::OffCpu, 0, "checkout", 1_500_000, 0).await;
    assert_eq!(
        labels(&push),
        [("__name__", "off_cpu"), ("service_name", "checkout")]
    );
    // Pyroscope names it `off_cpu:events:nanoseconds::`, as the OpenTelemetry eBPF profiler's.
    assert_eq!(types, [("events".into(), "nanoseconds".into())]);
    assert_eq!(profile.sample[0].value, [1_500_000]);
    assert!(profile.period_type.is_none());
}

#[tokio::test]
async fn page_fault_profiles_are_pushed_as_bytes_and_faults() {
    // Three samples of 64 faults each.
    let (push, profile, types) = push_kind(ProfileKind::PageFaults, 64, "payment", 3, 0).await;
    assert_eq!(
        labels(&push),
        [("__name__", "page_faults"), ("service_name", "payment")]
    );
    // `page_faults:space:bytes:faults:count` and `page_faults:faults:count:faults:count`.
    assert_eq!(
        types,
        [
            ("space".into(), "bytes".into()),
            ("faults".into(), "count".into())
        ]
    );
    assert_eq!(profile.sample[0].value, [3 * 64 * 4096, 3 * 64]);
    let s = |i: i64| profile.string_table[usize::try_from(i).unwrap()].as_str();
    let period = profile.period_type.as_ref().expect("a period type");
    assert_eq!((s(period.r#type), s(period.unit)), ("faults", "count"));
    assert_eq!(profile.period, 64);
    assert_eq!(s(profile.default_sample_type), "space");
}

#[tokio::test]
async fn allocation_profiles_are_pushed_as_go_heap_profiles() {
    // 3 MiB in 96 blocks, sampled every 512 KiB.
    for (kind, objects, space) in [
        (ProfileKind::Alloc, "alloc_objects", "alloc_space"),
        (ProfileKind::InUse, "inuse_objects", "inuse_space"),
    ] {
        let (push, profile, types) = push_kind(kind, 512 << 10, "inventory", 3 << 20, 96).await;
        // Pyroscope names them `memory:alloc_space:bytes:space:bytes` and so on, as Go's.
        assert_eq!(
            labels(&push),
            [("__name__", "memory"), ("service_name", "inventory")]
        );
        assert_eq!(
            types,
            [
                (objects.into(), "count".into()),
                (space.into(), "bytes".into())
            ]
        );
        assert_eq!(profile.sample[0].value, [96, 3 << 20]);
        let s = |i: i64| profile.string_table[usize::try_from(i).unwrap()].as_str();
        let period = profile.period_type.as_ref().expect("a period type");
        assert_eq!((s(period.r#type), s(period.unit)), ("space", "bytes"));
        assert_eq!(profile.period, 512 << 10);
        assert_eq!(s(profile.default_sample_type), space);
    }
}

#[tokio::test]
async fn basic_auth_and_path_prefix() {
    let mut rx = Receiver::start(vec![]).await;
    let config = PyroscopeConfig {
        basic_auth: Some(("user".into(), "pass".into())),
        ..fast_config(format!("{}/pyroscope", rx.url()))
    };
    let sink = PyroscopeSink::new(config, vec![]).unwrap();
    assert!(
        sink.export(batch(vec![service("a", &[], 1)]))
            .await
            .is_success()
    );
    let got = rx.drain();
    assert_eq!(got[0].path, "/pyroscope/push.v1.PusherService/Push");
    assert_eq!(got[0].headers["authorization"], "Basic dXNlcjpwYXNz");
    assert!(!got[0].headers.contains_key("x-scope-orgid"));
}

#[tokio::test]
async fn a_token_file_is_read_again_when_it_is_rotated() {
    let dir = crate::test_util::TempDir::new("pyroscope-token");
    let path = dir.path().join("token");
    std::fs::write(&path, "token-one\n").unwrap();
    let mut rx = Receiver::start(vec![]).await;
    let config = PyroscopeConfig {
        bearer_token_file: Some(path.clone()),
        ..fast_config(rx.url())
    };
    let sink = PyroscopeSink::new(config, vec![]).unwrap();
    assert!(format!("{sink:?}").contains("token") && !format!("{sink:?}").contains("token-one"));
    assert!(
        sink.export(batch(vec![service("a", &[], 1)]))
            .await
            .is_success()
    );
    // As Kubernetes rotates a mounted Secret: a new file renamed over the old one.
    let next = dir.path().join("token.next");
    std::fs::write(&next, "token-two-rotated").unwrap();
    std::fs::rename(&next, &path).unwrap();
    assert!(
        sink.export(batch(vec![service("a", &[], 1)]))
            .await
            .is_success()
    );
    let got = rx.drain();
    assert_eq!(got[0].headers["authorization"], "Bearer token-one");
    assert_eq!(got[1].headers["authorization"], "Bearer token-two-rotated");

    // Missing at start-up: a configuration error naming the file.
    let err = PyroscopeSink::new(
        PyroscopeConfig {
            bearer_token_file: Some(dir.path().join("absent")),
            ..fast_config(rx.url())
        },
        vec![],
    )
    .unwrap_err();
    assert!(err.to_string().contains("absent"), "{err}");
    // Exclusive with the other ways to authenticate.
    assert!(
        PyroscopeSink::new(
            PyroscopeConfig {
                bearer_token_file: Some(path),
                bearer_token: Some("x".into()),
                ..fast_config(rx.url())
            },
            vec![],
        )
        .is_err()
    );
}

#[tokio::test]
async fn retries_503_then_succeeds_and_counts_the_retry() {
    let mut rx = Receiver::start(vec![(503, vec![], "overloaded".into())]).await;
    let sink = PyroscopeSink::new(fast_config(rx.url()), vec![]).unwrap();
    let registry = Registry::new();
    let exporter = ProfileExporter::spawn(vec![Box::new(sink)], &registry, 4);
    assert!(exporter.try_submit(batch(vec![service("a", &[], 2)])));
    exporter.shutdown(Duration::from_secs(10)).await.unwrap();

    let got = rx.drain();
    assert_eq!(got.len(), 2);
    assert_eq!(
        got[0].body, got[1].body,
        "the retry resends the same request"
    );
    let metrics = registry.render();
    for line in [
        "loupe_exporter_retries_total{signal=\"profiles\",sink=\"pyroscope\"} 1\n",
        "loupe_exporter_exports_succeeded_total{signal=\"profiles\",sink=\"pyroscope\"} 1\n",
        "loupe_exporter_exports_failed_total{signal=\"profiles\",sink=\"pyroscope\"} 0\n",
        "loupe_exporter_items_exported_total{signal=\"profiles\",sink=\"pyroscope\"} 1\n",
        "loupe_exporter_items_dropped_total{reason=\"export_failed\",signal=\"profiles\",sink=\"pyroscope\"} 0\n",
    ] {
        assert!(metrics.contains(line), "missing {line:?} in\n{metrics}");
    }
    let sent = format!(
        "loupe_exporter_sent_bytes_total{{signal=\"profiles\",sink=\"pyroscope\"}} {}\n",
        got[1].body.len()
    );
    assert!(metrics.contains(&sent), "missing {sent:?} in\n{metrics}");
}

#[tokio::test]
async fn does_not_retry_400_and_quotes_the_body() {
    let long_body = format!("invalid labels: {}", "x".repeat(500));
    let mut rx = Receiver::start(vec![(400, vec![], long_body)]).await;
    let sink = PyroscopeSink::new(fast_config(rx.url()), vec![]).unwrap();
    let report = sink.export(batch(vec![service("a", &[], 1)])).await;
    assert_eq!(
        (report.items_exported, report.items_failed, report.retries),
        (0, 1, 0)
    );
    assert_eq!(rx.drain().len(), 1, "a 400 is not retried");
    let err = &report.errors[0];
    let SinkError::Pyroscope(PushError::Status {
        status,
        attempts,
        body,
        ..
    }) = err
    else {
        panic!("unexpected error {err:?}");
    };
    assert_eq!((*status, *attempts), (400, 1));
    assert!(body.starts_with("invalid labels: xxx"));
    assert_eq!(body.len(), 200);
    let msg = err.to_string();
    assert!(
        msg.contains("status 400") && msg.contains("service a"),
        "{msg}"
    );
}

#[tokio::test]
async fn honours_retry_after_on_429() {
    let mut rx = Receiver::start(vec![(429, vec![("retry-after", "1")], "slow down".into())]).await;
    let sink = PyroscopeSink::new(fast_config(rx.url()), vec![]).unwrap();
    let report = sink.export(batch(vec![service("a", &[], 1)])).await;
    assert!(report.is_success(), "{:?}", report.errors);
    assert_eq!(report.retries, 1);
    let got = rx.drain();
    assert_eq!(got.len(), 2);
    let waited = got[1].at - got[0].at;
    // The configured backoff is at most 50 ms: only Retry-After explains a one-second wait.
    assert!(waited >= Duration::from_millis(950), "waited {waited:?}");
}

#[tokio::test]
async fn gives_up_after_max_retries() {
    let script = (0..5)
        .map(|_| (502, vec![], "bad gateway".into()))
        .collect();
    let mut rx = Receiver::start(script).await;
    let config = PyroscopeConfig {
        max_retries: 2,
        ..fast_config(rx.url())
    };
    let sink = PyroscopeSink::new(config, vec![]).unwrap();
    let report = sink.export(batch(vec![service("a", &[], 1)])).await;
    assert_eq!((report.items_failed, report.retries), (1, 2));
    assert_eq!(rx.drain().len(), 3);
    let msg = report.errors[0].to_string();
    assert!(
        msg.contains("status 502") && msg.contains("3 attempt(s)") && msg.contains("bad gateway"),
        "{msg}"
    );
}

#[tokio::test]
async fn retries_connection_errors() {
    // A port nobody listens on.
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let config = PyroscopeConfig {
        max_retries: 1,
        ..fast_config(format!("http://{addr}"))
    };
    let sink = PyroscopeSink::new(config, vec![]).unwrap();
    let report = sink.export(batch(vec![service("a", &[], 1)])).await;
    assert_eq!((report.items_failed, report.retries), (1, 1));
    let SinkError::Pyroscope(PushError::Transport { attempts, .. }) = &report.errors[0] else {
        panic!("unexpected error {:?}", report.errors[0]);
    };
    assert_eq!(*attempts, 2);
}

#[tokio::test]
async fn an_unreachable_backend_fails_the_rest_of_the_batch_without_waiting_each_out() {
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let config = PyroscopeConfig {
        max_retries: 1,
        ..fast_config(format!("http://{addr}"))
    };
    let sink = PyroscopeSink::new(config, vec![]).unwrap();
    let services = ["a", "b", "c", "d"].map(|n| service(n, &[], 1)).to_vec();
    let report = sink.export(batch(services)).await;
    // One push tried (with its retry), the three others counted failed without a connection.
    assert_eq!((report.items_failed, report.retries), (4, 1));
    assert_eq!(report.errors.len(), 1);
}

#[tokio::test]
async fn a_rejected_push_does_not_stop_the_others() {
    // 400 for the first service (its data is at fault, not the backend), 200 for the rest.
    let script = vec![
        (400, vec![], "bad profile".into()),
        (200, vec![], String::new()),
        (200, vec![], String::new()),
    ];
    let mut rx = Receiver::start(script).await;
    let sink = PyroscopeSink::new(fast_config(rx.url()), vec![]).unwrap();
    let services = ["a", "b", "c"].map(|n| service(n, &[], 1)).to_vec();
    let report = sink.export(batch(services)).await;
    assert_eq!((report.items_failed, report.items_exported), (1, 2));
    assert_eq!(rx.drain().len(), 3);
}

#[test]
fn rejects_bad_configs() {
    let new = |c: PyroscopeConfig| PyroscopeSink::new(c, vec![]).map(|_| ());
    assert!(matches!(
        new(PyroscopeConfig::new("not a url")),
        Err(PyroscopeConfigError::InvalidUrl { .. })
    ));
    assert!(matches!(
        new(PyroscopeConfig::new("ftp://host")),
        Err(PyroscopeConfigError::UnsupportedScheme { .. })
    ));
    assert!(matches!(
        new(PyroscopeConfig {
            basic_auth: Some(("u".into(), "p".into())),
            bearer_token: Some("t".into()),
            ..PyroscopeConfig::new("http://h")
        }),
        Err(PyroscopeConfigError::ConflictingAuth { .. })
    ));
    assert!(matches!(
        new(PyroscopeConfig {
            bearer_token: Some("a\nb".into()),
            ..PyroscopeConfig::new("http://h")
        }),
        Err(PyroscopeConfigError::InvalidHeader {
            what: "bearer token",
            ..
        })
    ));
    assert!(matches!(
        new(PyroscopeConfig {
            tenant_id: Some("t\r".into()),
            ..PyroscopeConfig::new("http://h")
        }),
        Err(PyroscopeConfigError::InvalidHeader {
            what: "tenant id",
            ..
        })
    ));
    // https builds a rustls (ring) client; only a host without CA certificates may refuse it.
    match new(PyroscopeConfig::new("https://pyroscope.example:4040")) {
        Ok(()) | Err(PyroscopeConfigError::Tls { .. }) => {}
        Err(e) => panic!("unexpected error {e}"),
    }
    let debug = format!(
        "{:?}",
        PyroscopeConfig {
            bearer_token: Some("s3cret".into()),
            basic_auth: Some(("u".into(), "hunter2".into())),
            ..PyroscopeConfig::new("http://h")
        }
    );
    assert!(
        !debug.contains("s3cret") && !debug.contains("hunter2"),
        "{debug}"
    );
}

#[test]
fn label_names_are_sanitized() {
    assert_eq!(sanitize_label_name("host.name"), "host_name");
    assert_eq!(sanitize_label_name("k8s.pod-name"), "k8s_pod_name");
    assert_eq!(sanitize_label_name("1abc"), "_1abc");
    let l = series_labels(
        ProfileKind::Cpu,
        "svc",
        &[("".into(), "x".into()), ("a".into(), String::new())],
        &[],
    );
    let names: Vec<&str> = l.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(
        names,
        ["__name__", "service_name"],
        "empty names and values are dropped"
    );
    let off_cpu = series_labels(ProfileKind::OffCpu, "svc", &[], &[]);
    assert_eq!(
        (off_cpu[0].name.as_str(), off_cpu[0].value.as_str()),
        ("__name__", "off_cpu")
    );
}

#[test]
fn backoff_grows_and_is_capped() {
    let sink = PyroscopeSink::new(
        PyroscopeConfig {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(1000),
            ..PyroscopeConfig::new("http://h")
        },
        vec![],
    )
    .unwrap();
    for (retry, full) in [
        (1, 100),
        (2, 200),
        (3, 400),
        (4, 800),
        (5, 1000),
        (40, 1000),
    ] {
        let d = sink.backoff(retry);
        let full = Duration::from_millis(full);
        assert!(d >= full / 2 && d <= full, "retry {retry}: {d:?}");
    }
}
