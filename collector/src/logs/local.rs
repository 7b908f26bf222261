//! The local log sink: appends one OTLP/JSON `ExportLogsServiceRequest` per line to
//! `DIR/logs.jsonl`.
//!
//! OTLP/JSON as for `traces.jsonl` ([`crate::json`]): lowerCamelCase field names, `traceId` and
//! `spanId` as lowercase hex, `severityNumber` as an integer, 64-bit integers
//! (`timeUnixNano`, `observedTimeUnixNano`, `intValue`) as strings, default values left out.
//! Bounded like `traces.jsonl` ([`crate::jsonl`]): past the size limit `logs.jsonl` is renamed to
//! `logs.jsonl.1` and a new file begins.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::{LogBatch, LogExportReport};
use crate::export::{Batching, Sink};
use crate::jsonl::{JsonlFile, LocalFileError};
use crate::sink::BoxFuture;
use crate::telemetry::Registry;

/// Name of the logs file.
pub const LOGS_FILE: &str = "logs.jsonl";
/// Name the previous logs file is rotated to.
pub const ROTATED_LOGS_FILE: &str = "logs.jsonl.1";

/// Errors of the local log sink.
pub type LocalLogSinkError = LocalFileError;

/// Appends OTLP/JSON lines to `DIR/logs.jsonl`.
#[derive(Debug)]
pub struct LocalLogSink {
    file: JsonlFile,
}

impl LocalLogSink {
    /// Creates `dir` if needed and opens (appends to) `dir/logs.jsonl`.
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self, LocalLogSinkError> {
        Ok(Self {
            file: JsonlFile::open(dir.into(), LOGS_FILE, ROTATED_LOGS_FILE)?,
        })
    }

    /// Rotates the file when it would grow past `bytes` (at least 1 KiB).
    #[must_use]
    pub fn with_max_file_bytes(mut self, bytes: u64) -> Self {
        self.file.set_max_file_bytes(bytes);
        self
    }

    /// The logs file written to.
    pub fn path(&self) -> PathBuf {
        self.file.path()
    }

    /// Encodes a batch as one OTLP/JSON line (without the line feed).
    pub fn encode_line(batch: &LogBatch) -> Vec<u8> {
        let mut line = Vec::new();
        crate::json::encode_logs(batch, &mut line);
        line
    }
}

impl Sink<LogBatch> for LocalLogSink {
    fn name(&self) -> &str {
        "local"
    }

    fn batching(&self) -> Batching {
        // The span builder's thread already hands over about a second's worth (at most 1024
        // records) at a time: one line of the file per hand-over, nothing held longer.
        Batching {
            max_items: 1024,
            max_delay: Duration::ZERO,
        }
    }

    fn register_metrics(&mut self, registry: &Registry) {
        self.file.count_rotations_in(registry.counter(
            "loupe_local_log_sink_rotations_total",
            "Times the local logs.jsonl was rotated to logs.jsonl.1.",
            &[],
        ));
    }

    fn export(&self, batch: Arc<LogBatch>) -> BoxFuture<'_, LogExportReport> {
        Box::pin(async move {
            let records = batch.record_count();
            self.file
                .append(batch, records, crate::json::encode_logs)
                .await
        })
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::super::proto::collector::ExportLogsServiceRequest;
    use super::super::{LOG_IOSTREAM, LogRecord, ResourceLogs, Severity};
    use super::*;
    use crate::test_util::TempDir;
    use crate::traces::proto::common::{AnyValue, InstrumentationScope, KeyValue, any_value};
    use crate::traces::proto::resource::Resource;
    use crate::traces::{AttrValue, Attribute};

    fn kv(key: &str, value: any_value::Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(value) }),
            ..KeyValue::default()
        }
    }

    fn record(severity: Severity, body: &str, ids: bool) -> LogRecord {
        LogRecord {
            time_unix_nano: 1_700_000_000_123_456_789,
            observed_time_unix_nano: 1_700_000_000_223_456_789,
            severity,
            body: body.into(),
            trace_id: ids.then(|| std::array::from_fn(|i| i as u8 + 0xa0)),
            span_id: ids.then_some([0xab, 0xcd, 0xef, 0, 1, 2, 3, 0xff]),
            attributes: vec![
                Attribute {
                    key: LOG_IOSTREAM,
                    value: AttrValue::Str("stderr".into()),
                },
                Attribute {
                    key: "thread.id".into(),
                    value: AttrValue::Int(-42),
                },
            ],
        }
    }

    fn sample() -> LogBatch {
        LogBatch {
            resources: vec![
                ResourceLogs {
                    resource: Arc::new(Resource {
                        attributes: vec![
                            kv("service.name", any_value::Value::StringValue("shop".into())),
                            kv("process.pid", any_value::Value::IntValue(4242)),
                        ],
                        ..Resource::default()
                    }),
                    scope: Arc::new(InstrumentationScope {
                        name: "loupe".into(),
                        version: "0.1.0".into(),
                        ..InstrumentationScope::default()
                    }),
                    records: vec![
                        record(Severity::Error, "boom \"quoted\" \\ é 🦀\tend", true),
                        record(Severity::Unspecified, "", false),
                    ],
                },
                ResourceLogs {
                    resource: Arc::default(),
                    scope: Arc::default(),
                    records: vec![record(Severity::Fatal, "x", false)],
                },
            ],
        }
    }

    #[test]
    fn lines_are_otlp_json_and_decode_to_the_protobuf_form() {
        let line = LocalLogSink::encode_line(&sample());
        let text = String::from_utf8(line.clone()).unwrap();
        // The reference decoder (opentelemetry-proto's serde types) reads back every field.
        let back: ExportLogsServiceRequest =
            serde_json::from_slice(&line).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert_eq!(back, sample().to_request(), "{text}");
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        let rl = &v["resourceLogs"][0];
        assert_eq!(rl["resource"]["attributes"][1]["value"]["intValue"], "4242");
        assert_eq!(rl["scopeLogs"][0]["scope"]["name"], "loupe");
        let r = &rl["scopeLogs"][0]["logRecords"][0];
        assert_eq!(r["traceId"], "a0a1a2a3a4a5a6a7a8a9aaabacadaeaf");
        assert_eq!(r["spanId"], "abcdef00010203ff");
        assert_eq!(r["timeUnixNano"], "1700000000123456789");
        assert_eq!(r["observedTimeUnixNano"], "1700000000223456789");
        assert_eq!(r["severityNumber"], 17);
        assert_eq!(r["severityText"], "ERROR");
        assert_eq!(r["body"]["stringValue"], "boom \"quoted\" \\ é 🦀\tend");
        assert_eq!(r["attributes"][0]["key"], "log.iostream");
        assert_eq!(r["attributes"][1]["value"]["intValue"], "-42");
        // Defaults are left out: no ids, no severity for an unspecified level.
        let bare = &rl["scopeLogs"][0]["logRecords"][1];
        let mut keys: Vec<&str> = bare
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            ["attributes", "body", "observedTimeUnixNano", "timeUnixNano"]
        );
        assert_eq!(
            v["resourceLogs"][1]["resource"],
            serde_json::json!({}),
            "an empty resource is an empty object"
        );
        for snake in ["resource_logs", "log_records", "trace_id", "time_unix_nano"] {
            assert!(!text.contains(snake), "{snake}");
        }
    }

    #[test]
    fn the_empty_batch_is_a_request_without_records() {
        assert_eq!(
            LocalLogSink::encode_line(&LogBatch::default()),
            b"{\"resourceLogs\":[]}".to_vec()
        );
    }

    #[tokio::test]
    async fn appends_one_line_per_export_and_rotates() {
        let tmp = TempDir::new("logs");
        let line_len = LocalLogSink::encode_line(&sample()).len() as u64 + 1;
        let mut sink = LocalLogSink::new(tmp.path().join("out"))
            .unwrap()
            .with_max_file_bytes(4096);
        let registry = Registry::new();
        sink.register_metrics(&registry);
        let per_file = 4096 / line_len;
        assert!(per_file >= 2, "line of {line_len} bytes");
        for _ in 0..per_file {
            let report = sink.export(Arc::new(sample())).await;
            assert!(report.is_success(), "{:?}", report.errors);
            assert_eq!((report.items_exported, report.bytes_sent), (3, line_len));
        }
        let text = fs::read_to_string(sink.path()).unwrap();
        assert_eq!(text.lines().count() as u64, per_file);
        for l in text.lines() {
            let back: ExportLogsServiceRequest = serde_json::from_str(l).unwrap();
            assert_eq!(back, sample().to_request());
        }
        // One more line does not fit: the file is rotated.
        assert!(sink.export(Arc::new(sample())).await.is_success());
        let dir = tmp.path().join("out");
        assert_eq!(
            fs::metadata(dir.join(ROTATED_LOGS_FILE)).unwrap().len(),
            per_file * line_len
        );
        assert_eq!(fs::metadata(dir.join(LOGS_FILE)).unwrap().len(), line_len);
        assert!(
            registry
                .render()
                .contains("loupe_local_log_sink_rotations_total 1\n")
        );
    }
}
