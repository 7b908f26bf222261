//! Spans out of the agent: a [`TraceBatch`] of spans grouped by resource ([`model`]: compact,
//! converted to OTLP's protobuf types only by the gRPC sink) goes through the trace pipeline
//! ([`pipeline`]: one bounded queue, batcher and task per sink, `try_submit` never waits) to the
//! sinks:
//!
//! - [`otlp`]: OTLP/gRPC `TraceService/Export` (Tempo, Alloy, any OpenTelemetry Collector);
//! - [`local`]: one OTLP/JSON `ExportTraceServiceRequest` per line in `DIR/traces.jsonl`.
//!
//! The pipeline mirrors [`crate::pipeline`] (profiles) rather than sharing it: traces add
//! batching by span count and age inside each sink's lane, and count spans rather than profiles.

use std::sync::Arc;
use std::time::Duration;

use crate::sink::BoxFuture;
use crate::telemetry::Registry;

pub mod json;
pub mod local;
pub mod model;
pub mod otlp;
pub mod pipeline;

pub use local::{LocalTraceSink, LocalTraceSinkError};
pub use model::{AttrValue, Attribute, ResourceBatch, SpanData, SpanKind};
pub use otlp::{OtlpConfig, OtlpConfigError, OtlpExportError, OtlpTraceSink};
pub use pipeline::{TraceExporter, TraceExporterHandle, TracePipelineError, TraceSubmitter};

/// The OTLP protobuf types (prost, with serde for OTLP/JSON) and the tonic trace service.
pub mod proto {
    pub use opentelemetry_proto::tonic::collector::trace::v1 as collector;
    pub use opentelemetry_proto::tonic::common::v1 as common;
    pub use opentelemetry_proto::tonic::resource::v1 as resource;
    pub use opentelemetry_proto::tonic::trace::v1 as trace;
}

use proto::collector::ExportTraceServiceRequest;

/// Spans grouped by resource (process) and instrumentation scope, as OTLP sends them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TraceBatch {
    /// One entry per (resource, scope).
    pub resources: Vec<ResourceBatch>,
}

impl TraceBatch {
    /// Spans in the batch.
    pub fn span_count(&self) -> u64 {
        self.resources.iter().map(|r| r.spans.len() as u64).sum()
    }

    /// Whether the batch holds no span.
    pub fn is_empty(&self) -> bool {
        self.span_count() == 0
    }

    /// The OTLP export request carrying the batch.
    pub fn to_request(&self) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: self.resources.iter().map(ResourceBatch::to_proto).collect(),
        }
    }
}

/// When a sink's lane hands accumulated spans to the sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    /// Most spans per export call (at least 1); a larger submission is split.
    pub max_spans: usize,
    /// Longest a span waits for more to join its export call; zero exports every submission at
    /// once (still split by `max_spans`).
    pub max_delay: Duration,
}

impl Default for Batching {
    fn default() -> Self {
        Self {
            max_spans: 512,
            max_delay: Duration::from_secs(1),
        }
    }
}

/// Any trace sink's error.
#[derive(Debug, thiserror::Error)]
pub enum TraceSinkError {
    /// The local traces file could not be written.
    #[error(transparent)]
    Local(#[from] LocalTraceSinkError),
    /// An OTLP export failed.
    #[error(transparent)]
    Otlp(#[from] OtlpExportError),
}

/// What one `export` call achieved.
#[derive(Debug, Default)]
pub struct TraceExportReport {
    /// Spans written or accepted by the receiver.
    pub spans_exported: u64,
    /// Spans given up on: failed after retries, or rejected by the receiver.
    pub spans_failed: u64,
    /// Payload bytes written or sent (encoded request).
    pub bytes_sent: u64,
    /// Requests retried.
    pub retries: u64,
    /// What went wrong.
    pub errors: Vec<TraceSinkError>,
}

impl TraceExportReport {
    /// True when nothing failed.
    pub fn is_success(&self) -> bool {
        self.errors.is_empty() && self.spans_failed == 0
    }
}

/// A destination for spans.
///
/// `export` must not block the async runtime (file work goes to `spawn_blocking`) and must bound
/// its own retries; it is never called concurrently for one sink.
pub trait TraceSink: Send + Sync + 'static {
    /// Short, stable name used as the `sink` metric label and in logs (`local`, `otlp`).
    fn name(&self) -> &str;

    /// How the lane batches spans for this sink.
    fn batching(&self) -> Batching {
        Batching::default()
    }

    /// Registers the sink's own metrics; called once by the pipeline before the first export.
    fn register_metrics(&mut self, _registry: &Registry) {}

    /// Exports one batch (at most `batching().max_spans` spans).
    fn export(&self, batch: TraceBatch) -> BoxFuture<'_, TraceExportReport>;

    /// Flushes and releases resources; called once after the last export.
    fn shutdown(&self) -> BoxFuture<'_, Result<(), TraceSinkError>> {
        Box::pin(async { Ok(()) })
    }
}

/// A shared batch as submitted to every sink's queue.
pub type SharedTraceBatch = Arc<TraceBatch>;
