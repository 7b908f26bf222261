//! Logs out of the agent: lines processes wrote to stdout and stderr, as [`LogRecord`]s grouped by
//! resource ([`model`]), through the export pipeline ([`crate::export`]: one bounded queue,
//! accumulator and task per sink, `try_submit` never waits) to the sinks, each a
//! [`Sink`]`<LogBatch>`:
//!
//! - [`local`]: one OTLP/JSON `ExportLogsServiceRequest` per line in `DIR/logs.jsonl`;
//! - [`otlp`]: OTLP/gRPC `LogsService/Export` (Alloy, any OpenTelemetry Collector);
//! - [`loki`]: Loki's push API (snappy-compressed protobuf), streams labelled from the resource.

use std::sync::Arc;

use crate::export::{
    Accumulator, ExportReport, Exporter, ExporterHandle, Grouped, SignalBatch, Sink, Submitter,
};
use crate::traces::proto::common::InstrumentationScope;
use crate::traces::proto::resource::Resource;

pub mod local;
pub mod loki;
pub mod model;
pub mod otlp;

pub use local::{LocalLogSink, LocalLogSinkError};
pub use loki::{LokiConfig, LokiConfigError, LokiPushError, LokiSink};
pub use model::{LOG_IOSTREAM, LogBatch, LogRecord, ResourceLogs, Severity};
pub use otlp::OtlpLogSink;

/// The OTLP protobuf types of logs (prost, with serde for OTLP/JSON) and the tonic logs service.
pub mod proto {
    pub use opentelemetry_proto::tonic::collector::logs::v1 as collector;
    pub use opentelemetry_proto::tonic::logs::v1 as logs;
}

/// Any log sink's error.
#[derive(Debug, thiserror::Error)]
pub enum LogSinkError {
    /// The local logs file could not be written.
    #[error(transparent)]
    Local(#[from] LocalLogSinkError),
    /// A push to Loki failed.
    #[error(transparent)]
    Loki(#[from] LokiPushError),
    /// An OTLP export failed.
    #[error(transparent)]
    Otlp(#[from] crate::otlp::OtlpExportError),
}

/// What one log `export` call achieved; items are log records.
pub type LogExportReport = ExportReport<LogSinkError>;

/// Starts the log lanes: `LogExporter::spawn(sinks, &registry, capacity)`.
pub type LogExporter = Exporter<LogBatch>;
/// The running log pipeline.
pub type LogExporterHandle = ExporterHandle<LogBatch>;
/// Submits log batches without waiting.
pub type LogSubmitter = Submitter<LogBatch>;
/// A boxed log sink, as [`LogExporter::spawn`] takes them.
pub type BoxedLogSink = Box<dyn Sink<LogBatch>>;

/// Log records through the shared pipeline: accumulated per sink by count and age, merged by
/// resource and scope.
impl SignalBatch for LogBatch {
    const SIGNAL: &'static str = "logs";
    type Error = LogSinkError;
    type Batcher = Accumulator<Self>;

    fn item_count(&self) -> u64 {
        self.record_count()
    }

    fn approx_bytes(&self) -> u64 {
        let records: usize = self
            .resources
            .iter()
            .flat_map(|r| &r.records)
            .map(LogRecord::approx_bytes)
            .sum();
        (records + self.resources.capacity() * std::mem::size_of::<ResourceLogs>()) as u64
    }
}

impl Grouped for LogBatch {
    type Item = LogRecord;
    type Group = ResourceLogs;

    fn groups(&self) -> &[ResourceLogs] {
        &self.resources
    }

    fn groups_mut(&mut self) -> &mut Vec<ResourceLogs> {
        &mut self.resources
    }

    fn into_groups(self) -> Vec<ResourceLogs> {
        self.resources
    }

    fn new_group(resource: Arc<Resource>, scope: Arc<InstrumentationScope>) -> ResourceLogs {
        ResourceLogs {
            resource,
            scope,
            records: Vec::new(),
        }
    }

    fn key(group: &ResourceLogs) -> (&Arc<Resource>, &Arc<InstrumentationScope>) {
        (&group.resource, &group.scope)
    }

    fn items(group: &ResourceLogs) -> &[LogRecord] {
        &group.records
    }

    fn items_mut(group: &mut ResourceLogs) -> &mut Vec<LogRecord> {
        &mut group.records
    }

    fn into_parts(
        group: ResourceLogs,
    ) -> (Arc<Resource>, Arc<InstrumentationScope>, Vec<LogRecord>) {
        (group.resource, group.scope, group.records)
    }
}
