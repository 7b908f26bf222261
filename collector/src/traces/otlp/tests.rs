//! The OTLP sink against a real tonic `TraceServiceServer` on a loopback port: the server decodes
//! every request and forwards it into a channel; replies are scripted.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use std::time::Duration;

use prost::Message;
use tonic::Code;

use super::*;
use crate::telemetry::Registry;
use crate::traces::TraceExporter;
use crate::traces::proto::collector::trace_service_server::{TraceService, TraceServiceServer};
use crate::traces::proto::collector::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use crate::traces::proto::common::{AnyValue, InstrumentationScope, KeyValue, any_value};
use crate::traces::proto::resource::Resource;
use crate::traces::{ResourceBatch, SpanData, SpanKind};

/// One scripted reply: an error status, or OK with this many rejected spans.
#[derive(Clone)]
enum Reply {
    Fail(Code),
    Ok { rejected: i64 },
}

struct Receiver {
    script: Mutex<VecDeque<Reply>>,
    got: mpsc::UnboundedSender<(ExportTraceServiceRequest, Option<String>)>,
    /// The `authorization` metadata of each call, when asked for.
    auth: Option<mpsc::UnboundedSender<Option<String>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let tenant = request
            .metadata()
            .get("x-scope-orgid")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if let Some(auth) = &self.auth {
            let _ = auth.send(
                request
                    .metadata()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
            );
        }
        let _ = self.got.send((request.into_inner(), tenant));
        let reply = self
            .script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Reply::Ok { rejected: 0 });
        match reply {
            Reply::Fail(code) => Err(Status::new(code, "scripted failure")),
            Reply::Ok { rejected } => Ok(Response::new(ExportTraceServiceResponse {
                partial_success: (rejected > 0).then(|| ExportTracePartialSuccess {
                    rejected_spans: rejected,
                    error_message: "too old".into(),
                }),
            })),
        }
    }
}

type Got = mpsc::UnboundedReceiver<(ExportTraceServiceRequest, Option<String>)>;

async fn start_receiver(script: Vec<Reply>) -> (SocketAddr, Got) {
    start_receiver_with(script, None).await
}

async fn start_receiver_with(
    script: Vec<Reply>,
    auth: Option<mpsc::UnboundedSender<Option<String>>>,
) -> (SocketAddr, Got) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let service = Receiver {
        script: Mutex::new(script.into()),
        got: tx,
        auth,
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(service))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (addr, rx)
}

fn config(addr: SocketAddr) -> OtlpConfig {
    OtlpConfig {
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(20),
        timeout: Duration::from_secs(5),
        ..OtlpConfig::new(format!("http://{addr}"))
    }
}

pub(crate) fn batch(spans: u8) -> TraceBatch {
    TraceBatch {
        resources: vec![ResourceBatch {
            resource: Arc::new(Resource {
                attributes: vec![KeyValue {
                    key: "service.name".into(),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::StringValue("shop".into())),
                    }),
                    ..KeyValue::default()
                }],
                ..Resource::default()
            }),
            scope: Arc::new(InstrumentationScope {
                name: "loupe".into(),
                ..InstrumentationScope::default()
            }),
            spans: (0..spans)
                .map(|i| SpanData {
                    trace_id: [i; 16],
                    span_id: [i + 1; 8],
                    parent_span_id: None,
                    trace_state: String::new(),
                    name: format!("GET /{i}").into(),
                    kind: SpanKind::Server,
                    start_time_unix_nano: 1_000 + u64::from(i),
                    end_time_unix_nano: 2_000 + u64::from(i),
                    attributes: Default::default(),
                    error: None,
                })
                .collect(),
        }],
    }
}

#[tokio::test]
async fn exports_the_exact_request_with_metadata() {
    let (addr, mut got) = start_receiver(vec![]).await;
    let sink = OtlpTraceSink::new(OtlpConfig {
        headers: vec![("X-Scope-OrgID".into(), "team-a".into())],
        ..config(addr)
    })
    .unwrap();
    let report = sink.export(Arc::new(batch(3))).await;
    assert!(report.is_success(), "{:?}", report.errors);
    assert_eq!(report.items_exported, 3);
    assert_eq!(report.retries, 0);
    assert_eq!(
        report.bytes_sent,
        batch(3).to_request().encoded_len() as u64
    );
    let (request, tenant) = got.recv().await.unwrap();
    assert_eq!(request, batch(3).to_request());
    assert_eq!(tenant.as_deref(), Some("team-a"));
}

#[tokio::test]
async fn retries_unavailable_and_resource_exhausted() {
    let (addr, mut got) = start_receiver(vec![
        Reply::Fail(Code::Unavailable),
        Reply::Fail(Code::ResourceExhausted),
    ])
    .await;
    let sink = OtlpTraceSink::new(config(addr)).unwrap();
    let report = sink.export(Arc::new(batch(2))).await;
    assert!(report.is_success(), "{:?}", report.errors);
    assert_eq!((report.retries, report.items_exported), (2, 2));
    for _ in 0..3 {
        assert_eq!(got.recv().await.unwrap().0, batch(2).to_request());
    }
}

#[tokio::test]
async fn other_statuses_fail_at_once() {
    let (addr, mut got) = start_receiver(vec![Reply::Fail(Code::InvalidArgument)]).await;
    let sink = OtlpTraceSink::new(config(addr)).unwrap();
    let report = sink.export(Arc::new(batch(2))).await;
    assert_eq!((report.retries, report.items_failed), (0, 2));
    let err = report.errors[0].to_string();
    assert!(
        err.contains("InvalidArgument") && err.contains("1 attempt"),
        "{err}"
    );
    got.recv().await.unwrap();
    assert!(got.try_recv().is_err(), "not retried");
}

#[tokio::test]
async fn retries_are_bounded() {
    let (addr, _got) = start_receiver(vec![Reply::Fail(Code::Unavailable); 10]).await;
    let sink = OtlpTraceSink::new(OtlpConfig {
        max_retries: 2,
        ..config(addr)
    })
    .unwrap();
    let report = sink.export(Arc::new(batch(1))).await;
    assert_eq!((report.retries, report.items_failed), (2, 1));
    assert!(report.errors[0].to_string().contains("3 attempt"));
}

#[tokio::test]
async fn rejected_spans_are_counted_as_failed() {
    let (addr, _got) = start_receiver(vec![Reply::Ok { rejected: 2 }]).await;
    let sink = OtlpTraceSink::new(config(addr)).unwrap();
    let report = sink.export(Arc::new(batch(5))).await;
    assert_eq!((report.items_exported, report.items_failed), (3, 2));
    assert!(report.errors[0].to_string().contains("too old"));
}

#[tokio::test]
async fn unreachable_receiver_is_retried_then_fails() {
    // A port nothing listens on.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let sink = OtlpTraceSink::new(OtlpConfig {
        max_retries: 1,
        ..config(addr)
    })
    .unwrap();
    let report = sink.export(Arc::new(batch(1))).await;
    assert_eq!((report.retries, report.items_failed), (1, 1));
    assert!(
        report.errors[0].to_string().contains("Unavailable"),
        "{:?}",
        report.errors
    );
}

#[tokio::test]
async fn a_receiver_that_drops_connections_is_retried_then_fails_as_unavailable() {
    // Accepts each connection and closes it at once: tonic reports `Cancelled: operation was
    // canceled` (a reset gives `Unknown: transport error`).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            drop(stream);
        }
    });
    let sink = OtlpTraceSink::new(OtlpConfig {
        max_retries: 1,
        ..config(addr)
    })
    .unwrap();
    let report = sink.export(Arc::new(batch(1))).await;
    assert_eq!((report.retries, report.items_failed), (1, 1), "{report:?}");
    assert!(
        report.errors[0].to_string().contains("Unavailable"),
        "{:?}",
        report.errors
    );
}

#[test]
fn only_statuses_made_from_local_errors_count_as_unavailable() {
    let local = Status::from_error(Box::new(std::io::Error::from(
        std::io::ErrorKind::ConnectionReset,
    )));
    assert_eq!(local.code(), Code::Unknown);
    assert_eq!(crate::otlp::effective_code(&local), Code::Unavailable);
    let sent = Status::unknown("the receiver says so");
    assert_eq!(crate::otlp::effective_code(&sent), Code::Unknown);
    let cancelled = Status::cancelled("the receiver says so");
    assert_eq!(crate::otlp::effective_code(&cancelled), Code::Cancelled);
}

#[tokio::test]
async fn pipeline_batches_into_export_calls() {
    let (addr, mut got) = start_receiver(vec![]).await;
    let registry = Registry::new();
    let sink = OtlpTraceSink::new(OtlpConfig {
        max_batch_items: 4,
        max_batch_delay: Duration::from_millis(200),
        ..config(addr)
    })
    .unwrap();
    let handle = TraceExporter::spawn(vec![Box::new(sink)], &registry, 8);
    let sub = handle.submitter();
    for _ in 0..3 {
        assert!(sub.try_submit(Arc::new(batch(2))));
    }
    // 6 spans: one call of 4 at once, the other 2 after max_batch_delay.
    let (first, _) = got.recv().await.unwrap();
    let (second, _) = got.recv().await.unwrap();
    let count = |r: &ExportTraceServiceRequest| -> usize {
        r.resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum()
    };
    assert_eq!((count(&first), count(&second)), (4, 2));
    assert_eq!(first.resource_spans.len(), 1, "one resource, merged");
    handle.shutdown(Duration::from_secs(5)).await.unwrap();
    let text = registry.render();
    assert!(
        text.contains("loupe_exporter_items_exported_total{signal=\"spans\",sink=\"otlp\"} 6\n"),
        "{text}"
    );
}

#[test]
fn bad_configs_are_refused() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let err = |c: OtlpConfig| OtlpTraceSink::new(c).unwrap_err().to_string();
    assert!(err(OtlpConfig::new("ftp://tempo:4317")).contains("unsupported scheme"));
    // TLS settings need an https:// endpoint.
    assert!(
        err(OtlpConfig {
            tls: crate::tls::TlsSettings {
                server_name: Some("tempo".into()),
                ..Default::default()
            },
            ..OtlpConfig::new("http://tempo:4317")
        })
        .contains("use https://")
    );
    assert!(OtlpTraceSink::new(OtlpConfig::new("https://tempo:4317")).is_ok());
    assert!(err(OtlpConfig::new("tempo:4317")).contains("invalid otlp endpoint"));
    assert!(err(OtlpConfig::new("not a uri")).contains("invalid otlp endpoint"));
    assert!(
        err(OtlpConfig {
            headers: vec![("x-bad".into(), "a\nb".into())],
            ..OtlpConfig::new("http://tempo:4317")
        })
        .contains("x-bad")
    );
    assert!(OtlpTraceSink::new(OtlpConfig::new("http://tempo:4317/")).is_ok());
    drop(_guard);
    assert!(matches!(
        OtlpTraceSink::new(OtlpConfig::new("http://tempo:4317")),
        Err(OtlpConfigError::NoRuntime)
    ));
}

#[tokio::test]
async fn credentials_and_tenant_go_as_metadata_and_a_token_file_is_read_again() {
    let (auth_tx, mut auth) = mpsc::unbounded_channel();
    let (addr, mut got) = start_receiver_with(vec![], Some(auth_tx)).await;

    let sink = OtlpTraceSink::new(OtlpConfig {
        basic_auth: Some(("tempo".into(), "s3cret".into())),
        tenant: Some("team-b".into()),
        ..config(addr)
    })
    .unwrap();
    assert!(sink.export(Arc::new(batch(1))).await.is_success());
    // base64("tempo:s3cret")
    assert_eq!(
        auth.recv().await.unwrap().as_deref(),
        Some("Basic dGVtcG86czNjcmV0")
    );
    assert_eq!(got.recv().await.unwrap().1.as_deref(), Some("team-b"));
    assert!(!format!("{sink:?}").contains("s3cret"));

    let dir = crate::test_util::TempDir::new("otlp-token");
    let file = dir.path().join("token");
    std::fs::write(&file, "first\n").unwrap();
    let sink = OtlpTraceSink::new(OtlpConfig {
        bearer_token_file: Some(file.clone()),
        ..config(addr)
    })
    .unwrap();
    assert!(sink.export(Arc::new(batch(1))).await.is_success());
    assert_eq!(auth.recv().await.unwrap().as_deref(), Some("Bearer first"));
    // A rotated Secret: a new file (another length) swapped in.
    std::fs::write(&file, "second-token\n").unwrap();
    assert!(sink.export(Arc::new(batch(1))).await.is_success());
    assert_eq!(
        auth.recv().await.unwrap().as_deref(),
        Some("Bearer second-token")
    );

    let rt_err = OtlpTraceSink::new(OtlpConfig {
        bearer_token: Some("t".into()),
        bearer_token_file: Some(file),
        ..config(addr)
    })
    .unwrap_err();
    assert!(rt_err.to_string().contains("exclusive"), "{rt_err}");
}
