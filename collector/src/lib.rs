//! Loupe's collector: sinks and wire clients for CPU profiles and spans, plus self-metrics.
//!
//! - [`profile`]: the model the agent fills after symbolization;
//! - [`pprof`] and [`flamegraph`]: encoders;
//! - [`sink`]: the local file sink and the Pyroscope push sink behind one trait;
//! - [`pipeline`]: non-blocking fan-out of batches to the sinks, one queue and task per sink;
//! - [`telemetry`]: the self-metrics registry and its `/metrics` server;
//! - [`traces`]: spans (OTLP protobuf types) to an OTLP/gRPC endpoint and to a local
//!   `traces.jsonl`, through a pipeline of their own shaped like [`pipeline`].

pub mod export;
pub mod flamegraph;
pub mod http;
pub mod json;
pub mod jsonl;
pub mod logs;
pub mod otlp;
pub mod pprof;
pub mod profile;
pub mod retry;
pub mod sink;
pub mod telemetry;
pub mod traces;

#[cfg(test)]
mod test_util;

pub use export::{
    Batching, BoxFuture, Exporter, ExporterHandle, PipelineError, SignalBatch, Sink, Submitter,
};
pub use profile::{
    BatchMeta, Frame, FrameLine, Mapping, ProfileBatch, ServiceProfile, StackSample,
};
pub use sink::local::summary;
pub use sink::{
    BoxedProfileSink, ExportReport, LocalSink, ProfileExporter, ProfileExporterHandle,
    ProfileSubmitter, PyroscopeConfig, PyroscopeSink, SinkError,
};
pub use telemetry::{Counter, Gauge, Histogram, MetricsServer, Registry};

/// The prost types of pprof (`google`), the Pyroscope push API (`push`) and labels (`types`).
pub use ::pyroscope::encode::r#gen as proto;
