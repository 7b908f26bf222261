//! The OTLP/gRPC trace sink: `opentelemetry.proto.collector.trace.v1.TraceService/Export` to
//! Tempo, Grafana Alloy or any OpenTelemetry Collector (`http://host:4317`).
//!
//! The lane batches spans ([`crate::export::Batching`]: `max_batch_items` or
//! `max_batch_delay`); each batch is one `Export` call, converted to OTLP protobuf then. The
//! endpoint, channel, retries and partial-success handling are [`crate::otlp`]'s, shared with
//! the log sink.

use std::sync::Arc;

use super::proto::collector::trace_service_client::TraceServiceClient;
use super::{Batching, TraceBatch, TraceExportReport};
use crate::export::Sink;
use crate::otlp::{OtlpClient, PartialSuccess};
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

impl Sink<TraceBatch> for OtlpTraceSink {
    fn name(&self) -> &str {
        "otlp"
    }

    fn batching(&self) -> Batching {
        self.client.batching()
    }

    fn export(&self, batch: Arc<TraceBatch>) -> BoxFuture<'_, TraceExportReport> {
        Box::pin(async move {
            let request = batch.to_request();
            let report = self
                .client
                .export(
                    "spans",
                    batch.span_count(),
                    request,
                    |channel, call| async move {
                        let response = TraceServiceClient::new(channel).export(call).await?;
                        Ok(response
                            .into_inner()
                            .partial_success
                            .map(|p| PartialSuccess {
                                rejected: p.rejected_spans,
                                message: p.error_message,
                            }))
                    },
                )
                .await;
            report.convert()
        })
    }
}

#[cfg(test)]
pub(crate) mod tests;
