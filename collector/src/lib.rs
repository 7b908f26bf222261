//! Loupe's collector: one export pipeline for profiles, spans and logs, the sinks and wire
//! clients of each signal, and self-metrics.
//!
//! - [`export`]: the pipeline every signal shares: a bounded queue and task per sink,
//!   `try_submit` never waits; profiles pass through, spans and logs are accumulated by count
//!   and age; one metric family labelled `signal` and `sink`;
//! - [`profile`]: the profile model the agent fills after symbolization; [`pprof`] and
//!   [`flamegraph`]: encoders; [`sink`]: the local file sink and the Pyroscope push sink;
//! - [`traces`]: spans to OTLP/gRPC and to a local `traces.jsonl`;
//! - [`logs`]: log records to a local `logs.jsonl`, OTLP/gRPC and Loki's push API;
//! - shared wire pieces: [`otlp`] (the OTLP/gRPC client), [`http`] (the HTTP push client with
//!   TLS, auth and retries), [`retry`] (backoff), [`json`] (the OTLP/JSON writer) and [`jsonl`]
//!   (rotated JSON-lines files);
//! - [`telemetry`]: the self-metrics registry and its `/metrics` server.

pub mod export;
pub mod flamegraph;
pub mod gzip;
pub mod http;
pub mod json;
pub mod jsonl;
pub mod logs;
pub mod otlp;
pub mod pprof;
pub mod profile;
pub mod retry;
pub mod secret_file;
pub mod sink;
pub mod telemetry;
pub mod tls;
pub mod traces;

#[cfg(test)]
mod test_util;

pub use export::{
    Batching, BoxFuture, Exporter, ExporterHandle, PipelineError, SignalBatch, Sink, Submitter,
};
pub use profile::{
    BatchMeta, Frame, FrameLine, Mapping, ProfileBatch, ServiceProfile, SpanLabel, StackSample,
};
pub use sink::local::summary;
pub use sink::{
    BoxedProfileSink, ExportReport, LocalSink, ProfileExporter, ProfileExporterHandle,
    ProfileSubmitter, PyroscopeConfig, PyroscopeSink, SinkError,
};
pub use telemetry::{Counter, Gauge, Histogram, MetricsServer, Registry};

/// The prost types of pprof (`google`), the Pyroscope push API (`push`) and labels (`types`).
pub use ::pyroscope::encode::r#gen as proto;
