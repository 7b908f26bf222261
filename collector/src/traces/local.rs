//! The local trace sink: appends one OTLP/JSON `ExportTraceServiceRequest` per line to
//! `DIR/traces.jsonl`.
//!
//! OTLP/JSON as the OTLP specification defines it ("JSON Protobuf Encoding"): lowerCamelCase
//! field names, `traceId`/`spanId`/`parentSpanId` as lowercase hex, enums (`kind`,
//! `status.code`) as integers, 64-bit integers (`startTimeUnixNano`, `intValue`) as strings,
//! default values left out; written by [`crate::json`] into a buffer the sink reuses.
//!
//! Bounded: when a line would take the file past the size limit, `traces.jsonl` is renamed to
//! `traces.jsonl.1` (replacing the previous one) and a new file begins, so at most twice the
//! limit is on disk ([`crate::jsonl`], shared with the local log sink).

use std::path::PathBuf;
use std::sync::Arc;

use super::{Batching, TraceBatch, TraceExportReport};
use crate::export::Sink;
pub use crate::jsonl::DEFAULT_MAX_FILE_BYTES;
use crate::jsonl::{JsonlFile, LocalFileError};
use crate::sink::BoxFuture;
use crate::telemetry::Registry;

/// Name of the traces file.
pub const TRACES_FILE: &str = "traces.jsonl";
/// Name the previous traces file is rotated to.
pub const ROTATED_TRACES_FILE: &str = "traces.jsonl.1";

/// Errors of the local trace sink.
pub type LocalTraceSinkError = LocalFileError;

/// Appends OTLP/JSON lines to `DIR/traces.jsonl`.
#[derive(Debug)]
pub struct LocalTraceSink {
    file: JsonlFile,
}

impl LocalTraceSink {
    /// Creates `dir` if needed and opens (appends to) `dir/traces.jsonl`.
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self, LocalTraceSinkError> {
        Ok(Self {
            file: JsonlFile::open(dir.into(), TRACES_FILE, ROTATED_TRACES_FILE)?,
        })
    }

    /// Rotates the file when it would grow past `bytes` (at least 1 KiB).
    #[must_use]
    pub fn with_max_file_bytes(mut self, bytes: u64) -> Self {
        self.file.set_max_file_bytes(bytes);
        self
    }

    /// The traces file written to.
    pub fn path(&self) -> PathBuf {
        self.file.path()
    }

    /// Encodes a batch as one OTLP/JSON line (without the line feed).
    pub fn encode_line(batch: &TraceBatch) -> Vec<u8> {
        let mut line = Vec::new();
        crate::json::encode_traces(batch, &mut line);
        line
    }
}

impl Sink<TraceBatch> for LocalTraceSink {
    fn name(&self) -> &str {
        "local"
    }

    fn batching(&self) -> Batching {
        // The span builder already flushes about once a second: one line per flush.
        Batching {
            max_items: 4096,
            max_delay: std::time::Duration::ZERO,
        }
    }

    fn register_metrics(&mut self, registry: &Registry) {
        self.file.count_rotations_in(registry.counter(
            "loupe_local_trace_sink_rotations_total",
            "Times the local traces.jsonl was rotated to traces.jsonl.1.",
            &[],
        ));
    }

    fn export(&self, batch: Arc<TraceBatch>) -> BoxFuture<'_, TraceExportReport> {
        Box::pin(async move {
            let spans = batch.span_count();
            self.file
                .append(batch, spans, crate::json::encode_traces)
                .await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::proto::collector::ExportTraceServiceRequest;
    use super::super::proto::common::{AnyValue, InstrumentationScope, KeyValue, any_value};
    use super::super::proto::resource::Resource;
    use super::super::{AttrValue, Attribute, ResourceBatch, SpanData, SpanKind};
    use super::*;
    use crate::test_util::TempDir;
    use std::fs;

    fn kv(key: &str, value: any_value::Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(value) }),
            ..KeyValue::default()
        }
    }

    fn sample() -> TraceBatch {
        TraceBatch {
            resources: vec![ResourceBatch {
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
                spans: vec![SpanData {
                    trace_id: std::array::from_fn(|i| i as u8 + 1),
                    span_id: [0xab, 0xcd, 0xef, 0, 1, 2, 3, 0xff],
                    parent_span_id: Some([9, 8, 7, 6, 5, 4, 3, 2]),
                    trace_state: String::new(),
                    name: "GET /users/{id}".into(),
                    kind: SpanKind::Server,
                    start_time_unix_nano: 1_700_000_000_123_456_789,
                    end_time_unix_nano: 1_700_000_000_223_456_789,
                    attributes: vec![
                        Attribute {
                            key: "http.request.method".into(),
                            value: AttrValue::Str("GET".into()),
                        },
                        Attribute {
                            key: "http.response.status_code".into(),
                            value: AttrValue::Int(503),
                        },
                    ]
                    .into(),
                    error: Some(String::new()),
                }],
            }],
        }
    }

    #[test]
    fn lines_are_otlp_json_and_round_trip() {
        let line = LocalTraceSink::encode_line(&sample());
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        let rs = &v["resourceSpans"][0];
        assert_eq!(rs["resource"]["attributes"][0]["key"], "service.name");
        assert_eq!(
            rs["resource"]["attributes"][0]["value"]["stringValue"],
            "shop"
        );
        assert_eq!(rs["resource"]["attributes"][1]["value"]["intValue"], "4242");
        let scope = &rs["scopeSpans"][0];
        assert_eq!(scope["scope"]["name"], "loupe");
        let span = &scope["spans"][0];
        assert_eq!(span["traceId"], "0102030405060708090a0b0c0d0e0f10");
        assert_eq!(span["spanId"], "abcdef00010203ff");
        assert_eq!(span["parentSpanId"], "0908070605040302");
        assert_eq!(span["name"], "GET /users/{id}");
        assert_eq!(span["kind"], 2);
        assert_eq!(span["startTimeUnixNano"], "1700000000123456789");
        assert_eq!(span["endTimeUnixNano"], "1700000000223456789");
        assert_eq!(span["attributes"][1]["value"]["intValue"], "503");
        assert_eq!(span["status"]["code"], 2);
        for snake in [
            "resource_spans",
            "scope_spans",
            "trace_id",
            "span_id",
            "start_time",
        ] {
            assert!(!String::from_utf8_lossy(&line).contains(snake), "{snake}");
        }
        // Back to the protobuf types: everything survives.
        let back: ExportTraceServiceRequest = serde_json::from_slice(&line).unwrap();
        assert_eq!(back, sample().to_request());
    }

    #[tokio::test]
    async fn appends_one_line_per_export() {
        let tmp = TempDir::new("traces");
        let sink = LocalTraceSink::new(tmp.path().join("out")).unwrap();
        for _ in 0..3 {
            let report = sink.export(Arc::new(sample())).await;
            assert!(report.is_success(), "{:?}", report.errors);
            assert_eq!(report.items_exported, 1);
        }
        let text = fs::read_to_string(sink.path()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        for l in lines {
            let back: ExportTraceServiceRequest = serde_json::from_str(l).unwrap();
            assert_eq!(
                back.resource_spans[0].scope_spans[0].spans[0].span_id,
                sample().resources[0].spans[0].span_id.to_vec()
            );
        }
        // A new sink appends to the existing file.
        let again = LocalTraceSink::new(tmp.path().join("out")).unwrap();
        again.export(Arc::new(sample())).await;
        assert_eq!(fs::read_to_string(again.path()).unwrap().lines().count(), 4);
    }

    #[tokio::test]
    async fn rotates_and_keeps_one_old_file() {
        let tmp = TempDir::new("traces-rotate");
        let line_len = LocalTraceSink::encode_line(&sample()).len() as u64 + 1;
        let mut sink = LocalTraceSink::new(tmp.path())
            .unwrap()
            .with_max_file_bytes(2048);
        let registry = Registry::new();
        sink.register_metrics(&registry);
        let per_file = 2048 / line_len;
        assert!(per_file >= 2, "line of {line_len} bytes");
        let exports = per_file * 3 + 1;
        for _ in 0..exports {
            assert!(sink.export(Arc::new(sample())).await.is_success());
        }
        let current = fs::metadata(tmp.path().join(TRACES_FILE)).unwrap().len();
        let old = fs::metadata(tmp.path().join(ROTATED_TRACES_FILE))
            .unwrap()
            .len();
        assert!(current <= 2048 && old <= 2048, "{current} {old}");
        assert_eq!(old, per_file * line_len);
        assert_eq!(current, line_len);
        let files: Vec<_> = fs::read_dir(tmp.path()).unwrap().collect();
        assert_eq!(files.len(), 2);
        assert!(
            registry
                .render()
                .contains("loupe_local_trace_sink_rotations_total 3\n")
        );
    }
}
