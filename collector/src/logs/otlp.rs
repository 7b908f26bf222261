//! The OTLP/gRPC log sink: `opentelemetry.proto.collector.logs.v1.LogsService/Export` to
//! Grafana Alloy or any OpenTelemetry Collector (`http://host:4317`).
//!
//! The lane batches log records ([`crate::export::Batching`]: `max_batch_items` or
//! `max_batch_delay`); each batch is one `Export` call, converted to OTLP protobuf then. The
//! endpoint, channel, retries and partial-success handling are [`crate::otlp`]'s, shared with
//! the trace sink.

use std::sync::Arc;

use bytes::Bytes;
use prost::Message;

use super::{LogBatch, LogExportReport, LogSinkError};
use crate::export::{Batching, Payload, Sent, Sink, WireSink, export_direct};
use crate::otlp::OtlpClient;
use crate::otlp::{OtlpConfig, OtlpConfigError};
use crate::sink::BoxFuture;

/// Exports log batches with OTLP/gRPC.
#[derive(Debug, Clone)]
pub struct OtlpLogSink {
    client: OtlpClient,
}

impl OtlpLogSink {
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
const EXPORT_PATH: &str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";

impl WireSink<LogBatch> for OtlpLogSink {
    fn name(&self) -> &str {
        "otlp"
    }

    fn batching(&self) -> Batching {
        self.client.batching()
    }

    fn encode(&self, batch: Arc<LogBatch>) -> BoxFuture<'_, (Vec<Payload>, LogExportReport)> {
        Box::pin(async move {
            let payload = Payload {
                items: batch.record_count(),
                body: Bytes::from(batch.to_request().encode_to_vec()),
            };
            (vec![payload], LogExportReport::default())
        })
    }

    fn send(&self, payload: Payload, retry: bool) -> BoxFuture<'_, Sent<LogSinkError>> {
        Box::pin(async move {
            self.client
                .send("logs", EXPORT_PATH, payload, retry)
                .await
                .convert()
        })
    }
}

impl Sink<LogBatch> for OtlpLogSink {
    fn name(&self) -> &str {
        "otlp"
    }

    fn batching(&self) -> Batching {
        self.client.batching()
    }

    fn export(&self, batch: Arc<LogBatch>) -> BoxFuture<'_, LogExportReport> {
        Box::pin(export_direct(self, batch))
    }
}

#[cfg(test)]
mod tests;
