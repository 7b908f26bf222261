//! The OTLP/gRPC trace sink: `opentelemetry.proto.collector.trace.v1.TraceService/Export` to
//! Tempo, Grafana Alloy or any OpenTelemetry Collector (`http://host:4317`).
//!
//! The lane batches spans ([`crate::export::Batching`]: `max_batch_items` or
//! `max_batch_delay`); each batch is one `Export` call, converted to OTLP protobuf then. The
//! endpoint, channel, retries and partial-success handling are [`crate::otlp`]'s, shared with
//! the log sink.

use std::sync::Arc;

use bytes::Bytes;
use prost::Message;

use super::{Batching, TraceBatch, TraceExportReport, TraceSinkError};
use crate::export::{Payload, Sent, Sink, WireSink, export_direct};
use crate::otlp::OtlpClient;
pub use crate::otlp::{OtlpConfig, OtlpConfigError, OtlpExportError};
use crate::sink::BoxFuture;

/// Exports span batches with OTLP/gRPC.
#[derive(Debug, Clone)]
pub struct OtlpTraceSink {
    client: OtlpClient,
}

impl OtlpTraceSink {
    /// Validates the configuration and prepares the (lazily connecting) channel. Must be called
    /// inside a tokio runtime.
    pub fn new(config: OtlpConfig) -> Result<Self, OtlpConfigError> {
        Ok(Self {
            client: OtlpClient::new(&config)?,
        })
    }

    /// The endpoint exported to.
    pub fn endpoint(&self) -> &str {
        self.client.endpoint()
    }
}

/// The gRPC method exported to.
const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

impl WireSink<TraceBatch> for OtlpTraceSink {
    fn name(&self) -> &str {
        "otlp"
    }

    fn batching(&self) -> Batching {
        self.client.batching()
    }

    fn encode(&self, batch: Arc<TraceBatch>) -> BoxFuture<'_, (Vec<Payload>, TraceExportReport)> {
        Box::pin(async move {
            let payload = Payload {
                items: batch.span_count(),
                body: Bytes::from(batch.to_request().encode_to_vec()),
            };
            (vec![payload], TraceExportReport::default())
        })
    }

    fn send(&self, payload: Payload, retry: bool) -> BoxFuture<'_, Sent<TraceSinkError>> {
        Box::pin(async move {
            self.client
                .send("spans", EXPORT_PATH, payload, retry)
                .await
                .convert()
        })
    }
}

impl Sink<TraceBatch> for OtlpTraceSink {
    fn name(&self) -> &str {
        "otlp"
    }

    fn batching(&self) -> Batching {
        self.client.batching()
    }

    fn export(&self, batch: Arc<TraceBatch>) -> BoxFuture<'_, TraceExportReport> {
        Box::pin(export_direct(self, batch))
    }
}

#[cfg(test)]
pub(crate) mod tests;
