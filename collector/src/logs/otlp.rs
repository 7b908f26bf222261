//! The OTLP/gRPC log sink: `opentelemetry.proto.collector.logs.v1.LogsService/Export` to
//! Grafana Alloy or any OpenTelemetry Collector (`http://host:4317`).
//!
//! The lane batches log records ([`crate::export::Batching`]: `max_batch_items` or
//! `max_batch_delay`); each batch is one `Export` call, converted to OTLP protobuf then. The
//! endpoint, channel, retries and partial-success handling are [`crate::otlp`]'s, shared with
//! the trace sink.

use std::sync::Arc;

use super::proto::collector::logs_service_client::LogsServiceClient;
use super::{LogBatch, LogExportReport};
use crate::export::Batching;
use crate::export::Sink;
use crate::otlp::{OtlpClient, PartialSuccess};
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

impl Sink<LogBatch> for OtlpLogSink {
    fn name(&self) -> &str {
        "otlp"
    }

    fn batching(&self) -> Batching {
        self.client.batching()
    }

    fn export(&self, batch: Arc<LogBatch>) -> BoxFuture<'_, LogExportReport> {
        Box::pin(async move {
            let request = batch.to_request();
            let report = self
                .client
                .export(
                    "logs",
                    batch.record_count(),
                    request,
                    |channel, call| async move {
                        let response = LogsServiceClient::new(channel).export(call).await?;
                        Ok(response
                            .into_inner()
                            .partial_success
                            .map(|p| PartialSuccess {
                                rejected: p.rejected_log_records,
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
mod tests;
