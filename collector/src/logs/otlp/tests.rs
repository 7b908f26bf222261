//! The OTLP log sink against a real tonic `LogsServiceServer` on a loopback port: the server
//! decodes every request and forwards it into a channel; replies are scripted.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use prost::Message;
use tokio::sync::mpsc;
use tonic::{Code, Request, Response, Status};

use super::*;
use crate::logs::proto::collector::logs_service_server::{LogsService, LogsServiceServer};
use crate::logs::proto::collector::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use crate::logs::{LOG_IOSTREAM, LogExporter, LogRecord, ResourceLogs, Severity};
use crate::telemetry::Registry;
use crate::traces::proto::common::{AnyValue, InstrumentationScope, KeyValue, any_value};
use crate::traces::proto::resource::Resource;
use crate::traces::{AttrValue, Attribute};

/// One scripted reply: an error status, or OK with this many rejected records.
#[derive(Clone)]
enum Reply {
    Fail(Code),
    Ok { rejected: i64 },
}

struct Receiver {
    script: Mutex<VecDeque<Reply>>,
    got: mpsc::UnboundedSender<(ExportLogsServiceRequest, Option<String>)>,
}

#[tonic::async_trait]
impl LogsService for Receiver {
    async fn export(
        &self,
        request: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        let auth = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let _ = self.got.send((request.into_inner(), auth));
        let reply = self
            .script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Reply::Ok { rejected: 0 });
        match reply {
            Reply::Fail(code) => Err(Status::new(code, "scripted failure")),
            Reply::Ok { rejected } => Ok(Response::new(ExportLogsServiceResponse {
                partial_success: (rejected > 0).then(|| ExportLogsPartialSuccess {
                    rejected_log_records: rejected,
                    error_message: "line too long".into(),
                }),
            })),
        }
    }
}

type Got = mpsc::UnboundedReceiver<(ExportLogsServiceRequest, Option<String>)>;

async fn start_receiver(script: Vec<Reply>) -> (SocketAddr, Got) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let service = Receiver {
        script: Mutex::new(script.into()),
        got: tx,
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(LogsServiceServer::new(service))
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

fn batch(records: u8) -> LogBatch {
    LogBatch {
        resources: vec![ResourceLogs {
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
            records: (0..records)
                .map(|i| LogRecord {
                    time_unix_nano: 1_700_000_000_000_000_000 + u64::from(i),
                    observed_time_unix_nano: 1_700_000_000_000_000_500 + u64::from(i),
                    severity: if i % 2 == 0 {
                        Severity::Info
                    } else {
                        Severity::Error
                    },
                    body: format!("line {i}"),
                    trace_id: (i == 0).then_some([7; 16]),
                    span_id: (i == 0).then_some([8; 8]),
                    attributes: vec![Attribute {
                        key: LOG_IOSTREAM,
                        value: AttrValue::Str("stderr".into()),
                    }],
                })
                .collect(),
        }],
    }
}

#[tokio::test]
async fn exports_the_exact_request_with_metadata() {
    let (addr, mut got) = start_receiver(vec![]).await;
    let sink = OtlpLogSink::new(OtlpConfig {
        headers: vec![("Authorization".into(), "Bearer t0k".into())],
        ..config(addr)
    })
    .unwrap();
    let report = sink.export(Arc::new(batch(3))).await;
    assert!(report.is_success(), "{:?}", report.errors);
    assert_eq!((report.items_exported, report.retries), (3, 0));
    assert_eq!(
        report.bytes_sent,
        batch(3).to_request().encoded_len() as u64
    );
    let (request, auth) = got.recv().await.unwrap();
    assert_eq!(request, batch(3).to_request());
    assert_eq!(auth.as_deref(), Some("Bearer t0k"));
    // The fields a log backend keys on, as the receiver decoded them.
    let records = &request.resource_logs[0].scope_logs[0].log_records;
    assert_eq!(records[0].trace_id, vec![7; 16]);
    assert_eq!(records[0].span_id, vec![8; 8]);
    assert!(records[1].trace_id.is_empty());
    assert_eq!(
        (
            records[1].severity_number,
            records[1].severity_text.as_str()
        ),
        (17, "ERROR")
    );
    assert_eq!(
        records[2].body,
        Some(AnyValue {
            value: Some(any_value::Value::StringValue("line 2".into()))
        })
    );
    assert_eq!(records[2].time_unix_nano, 1_700_000_000_000_000_002);
}

#[tokio::test]
async fn retries_unavailable_then_counts_rejected_records() {
    let (addr, mut got) = start_receiver(vec![
        Reply::Fail(Code::Unavailable),
        Reply::Ok { rejected: 1 },
    ])
    .await;
    let sink = OtlpLogSink::new(config(addr)).unwrap();
    let report = sink.export(Arc::new(batch(4))).await;
    assert_eq!(
        (report.retries, report.items_exported, report.items_failed),
        (1, 3, 1)
    );
    let err = report.errors[0].to_string();
    assert!(
        err.contains("line too long") && err.contains("logs"),
        "{err}"
    );
    for _ in 0..2 {
        assert_eq!(got.recv().await.unwrap().0, batch(4).to_request());
    }
}

#[tokio::test]
async fn other_statuses_fail_at_once() {
    let (addr, mut got) = start_receiver(vec![Reply::Fail(Code::PermissionDenied)]).await;
    let sink = OtlpLogSink::new(config(addr)).unwrap();
    let report = sink.export(Arc::new(batch(2))).await;
    assert_eq!((report.retries, report.items_failed), (0, 2));
    let err = report.errors[0].to_string();
    assert!(
        err.contains("PermissionDenied") && err.contains("1 attempt"),
        "{err}"
    );
    got.recv().await.unwrap();
    assert!(got.try_recv().is_err(), "not retried");
}

#[tokio::test]
async fn pipeline_batches_records_into_export_calls() {
    let (addr, mut got) = start_receiver(vec![]).await;
    let registry = Registry::new();
    let sink = OtlpLogSink::new(OtlpConfig {
        max_batch_items: 5,
        max_batch_delay: Duration::from_millis(100),
        ..config(addr)
    })
    .unwrap();
    let handle = LogExporter::spawn(vec![Box::new(sink)], &registry, 8);
    for _ in 0..4 {
        assert!(handle.try_submit(Arc::new(batch(2))));
    }
    let count = |r: &ExportLogsServiceRequest| -> usize {
        r.resource_logs
            .iter()
            .flat_map(|r| &r.scope_logs)
            .map(|s| s.log_records.len())
            .sum()
    };
    let (first, _) = got.recv().await.unwrap();
    let (second, _) = got.recv().await.unwrap();
    assert_eq!((count(&first), count(&second)), (5, 3));
    assert_eq!(first.resource_logs.len(), 1, "one resource, merged");
    handle.shutdown(Duration::from_secs(5)).await.unwrap();
    let text = registry.render();
    assert!(
        text.contains("loupe_exporter_items_exported_total{signal=\"logs\",sink=\"otlp\"} 8\n"),
        "{text}"
    );
}
