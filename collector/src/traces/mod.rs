//! Spans out of the agent: a [`TraceBatch`] of spans grouped by resource ([`model`]: compact,
//! converted to OTLP's protobuf types only by the gRPC sink) goes through the export pipeline
//! ([`crate::export`]: one bounded queue, accumulator and task per sink, `try_submit` never
//! waits) to the sinks, each a [`Sink`]`<TraceBatch>`:
//!
//! - [`otlp`]: OTLP/gRPC `TraceService/Export` (Tempo, Alloy, any OpenTelemetry Collector);
//! - [`local`]: one OTLP/JSON `ExportTraceServiceRequest` per line in `DIR/traces.jsonl`.

use std::sync::Arc;

pub use crate::export::Batching;
use crate::export::{
    Accumulator, ExportReport, Exporter, ExporterHandle, Grouped, SignalBatch, Sink, Submitter,
};

pub mod local;
pub mod model;
pub mod otlp;

pub use local::{LocalTraceSink, LocalTraceSinkError};
pub use model::{AttrValue, Attribute, Attributes, ResourceBatch, SpanData, SpanKind, Text};
pub use otlp::{OtlpConfig, OtlpConfigError, OtlpExportError, OtlpTraceSink};

/// The OTLP protobuf types (prost, with serde for OTLP/JSON) and the tonic trace service.
pub mod proto {
    pub use opentelemetry_proto::tonic::collector::trace::v1 as collector;
    pub use opentelemetry_proto::tonic::common::v1 as common;
    pub use opentelemetry_proto::tonic::resource::v1 as resource;
    pub use opentelemetry_proto::tonic::trace::v1 as trace;
}

use proto::collector::ExportTraceServiceRequest;
use proto::common::InstrumentationScope;
use proto::resource::Resource;

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

/// What one trace `export` call achieved; items are spans.
pub type TraceExportReport = ExportReport<TraceSinkError>;

/// A shared batch as submitted to every sink's queue.
pub type SharedTraceBatch = Arc<TraceBatch>;

/// Starts the trace lanes: `TraceExporter::spawn(sinks, &registry, capacity)`.
pub type TraceExporter = Exporter<TraceBatch>;
/// The running trace pipeline.
pub type TraceExporterHandle = ExporterHandle<TraceBatch>;
/// Submits span batches without waiting.
pub type TraceSubmitter = Submitter<TraceBatch>;
/// A boxed trace sink, as [`TraceExporter::spawn`] takes them.
pub type BoxedTraceSink = Box<dyn Sink<TraceBatch>>;

/// Spans through the shared pipeline: accumulated per sink by count and age, merged by resource
/// and scope.
impl SignalBatch for TraceBatch {
    const SIGNAL: &'static str = "spans";
    type Error = TraceSinkError;
    type Batcher = Accumulator<Self>;

    fn item_count(&self) -> u64 {
        self.span_count()
    }

    fn approx_bytes(&self) -> u64 {
        let spans: usize = self
            .resources
            .iter()
            .flat_map(|r| &r.spans)
            .map(SpanData::approx_bytes)
            .sum();
        (spans + self.resources.capacity() * std::mem::size_of::<ResourceBatch>()) as u64
    }
}

impl Grouped for TraceBatch {
    type Item = SpanData;
    type Group = ResourceBatch;

    fn groups(&self) -> &[ResourceBatch] {
        &self.resources
    }

    fn groups_mut(&mut self) -> &mut Vec<ResourceBatch> {
        &mut self.resources
    }

    fn into_groups(self) -> Vec<ResourceBatch> {
        self.resources
    }

    fn new_group(resource: Arc<Resource>, scope: Arc<InstrumentationScope>) -> ResourceBatch {
        ResourceBatch {
            resource,
            scope,
            spans: Vec::new(),
        }
    }

    fn key(group: &ResourceBatch) -> (&Arc<Resource>, &Arc<InstrumentationScope>) {
        (&group.resource, &group.scope)
    }

    fn items(group: &ResourceBatch) -> &[SpanData] {
        &group.spans
    }

    fn items_mut(group: &mut ResourceBatch) -> &mut Vec<SpanData> {
        &mut group.spans
    }

    fn into_parts(
        group: ResourceBatch,
    ) -> (Arc<Resource>, Arc<InstrumentationScope>, Vec<SpanData>) {
        (group.resource, group.scope, group.spans)
    }
}
