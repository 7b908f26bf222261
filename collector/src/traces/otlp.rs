//! The OTLP/gRPC trace sink: `opentelemetry.proto.collector.trace.v1.TraceService/Export` over
//! HTTP/2 cleartext (tonic), to Tempo, Grafana Alloy or any OpenTelemetry Collector
//! (`http://host:4317`).
//!
//! The lane batches spans ([`super::Batching`]: `max_batch_spans` or `max_batch_delay`); each
//! batch is one `Export` call. Retries: `UNAVAILABLE` (which includes connection failures),
//! `RESOURCE_EXHAUSTED`, `DEADLINE_EXCEEDED` and `ABORTED`, with exponential backoff and jitter,
//! at most `max_retries` times; any other status fails the batch at once. Spans the receiver
//! reports as rejected (`partial_success.rejected_spans`) are counted as failed, not retried.
//! The connection is made lazily (and re-made after failures) by tonic's channel, so a receiver
//! that is down at start-up only costs retries.
//!
//! Not supported yet: TLS (`https://`), compression, gRPC `RetryInfo` delays.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tonic::Code;
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue, MetadataMap};
use tonic::transport::{Channel, Endpoint};

use super::proto::collector::trace_service_client::TraceServiceClient;
use super::{Batching, TraceBatch, TraceExportReport};
use crate::export::Sink;
use crate::sink::BoxFuture;

/// Timeout of one export call unless configured otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Retries per export unless configured otherwise.
pub const DEFAULT_MAX_RETRIES: u32 = 4;
/// First backoff unless configured otherwise; doubles per retry.
pub const DEFAULT_INITIAL_BACKOFF: Duration = Duration::from_millis(500);
/// Backoff ceiling unless configured otherwise.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Spans per export call unless configured otherwise.
pub const DEFAULT_MAX_BATCH_SPANS: usize = 512;
/// Longest a span waits for its export call unless configured otherwise.
pub const DEFAULT_MAX_BATCH_DELAY: Duration = Duration::from_secs(1);
/// Characters of a status message quoted in errors.
const MAX_MESSAGE: usize = 200;

/// Where and how to export.
#[derive(Clone)]
pub struct OtlpConfig {
    /// `http://host:port` of the OTLP/gRPC receiver, usually port 4317.
    pub endpoint: String,
    /// gRPC metadata sent with every call (`authorization`, `x-scope-orgid`, …); names are
    /// lowercased.
    pub headers: Vec<(String, String)>,
    /// Timeout of one export call (also bounds connecting).
    pub timeout: Duration,
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// Backoff before the first retry; doubles per retry.
    pub initial_backoff: Duration,
    /// Backoff ceiling.
    pub max_backoff: Duration,
    /// Most spans per export call.
    pub max_batch_spans: usize,
    /// Longest a span waits for more to join its export call.
    pub max_batch_delay: Duration,
}

impl OtlpConfig {
    /// Defaults for everything but the endpoint.
    pub fn new(endpoint: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            headers: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
            max_retries: DEFAULT_MAX_RETRIES,
            initial_backoff: DEFAULT_INITIAL_BACKOFF,
            max_backoff: DEFAULT_MAX_BACKOFF,
            max_batch_spans: DEFAULT_MAX_BATCH_SPANS,
            max_batch_delay: DEFAULT_MAX_BATCH_DELAY,
        }
    }
}

impl fmt::Debug for OtlpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtlpConfig")
            .field("endpoint", &self.endpoint)
            .field(
                "headers",
                &self
                    .headers
                    .iter()
                    .map(|(k, _)| (k.as_str(), "<redacted>"))
                    .collect::<Vec<_>>(),
            )
            .field("timeout", &self.timeout)
            .field("max_retries", &self.max_retries)
            .field("initial_backoff", &self.initial_backoff)
            .field("max_backoff", &self.max_backoff)
            .field("max_batch_spans", &self.max_batch_spans)
            .field("max_batch_delay", &self.max_batch_delay)
            .finish()
    }
}

/// Errors in an OTLP sink's configuration.
#[derive(Debug, thiserror::Error)]
pub enum OtlpConfigError {
    /// The endpoint is not a valid URI.
    #[error("invalid otlp endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint {
        /// The endpoint as configured.
        endpoint: String,
        /// Why it is invalid.
        reason: String,
    },
    /// The endpoint's scheme is not `http` (TLS is not supported yet).
    #[error(
        "unsupported scheme in otlp endpoint {endpoint:?}: use http://host:4317 (tls is not supported yet)"
    )]
    UnsupportedScheme {
        /// The endpoint as configured.
        endpoint: String,
    },
    /// A header name or value is not valid gRPC metadata.
    #[error("the otlp header {name:?} is not valid grpc metadata (ascii, no control characters)")]
    InvalidHeader {
        /// The header name as configured.
        name: String,
    },
    /// The sink was built outside a tokio runtime.
    #[error("the otlp sink must be created inside the tokio runtime")]
    NoRuntime,
}

/// Errors of one export.
#[derive(Debug, thiserror::Error)]
pub enum OtlpExportError {
    /// The receiver (or the transport) answered with a non-OK gRPC status.
    #[error(
        "otlp export of {spans} span(s) to {endpoint} failed with {code:?} after {attempts} attempt(s): {message}"
    )]
    Status {
        /// The endpoint.
        endpoint: String,
        /// Spans in the failed call.
        spans: u64,
        /// The last gRPC status code.
        code: Code,
        /// Its message.
        message: String,
        /// Attempts made.
        attempts: u32,
    },
    /// The receiver accepted the call but rejected some spans.
    #[error("otlp receiver {endpoint} rejected {rejected} span(s): {message}")]
    Rejected {
        /// The endpoint.
        endpoint: String,
        /// Spans rejected.
        rejected: u64,
        /// The receiver's explanation.
        message: String,
    },
}

/// Exports span batches with OTLP/gRPC.
#[derive(Debug, Clone)]
pub struct OtlpTraceSink {
    client: TraceServiceClient<Channel>,
    endpoint: String,
    metadata: MetadataMap,
    max_retries: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
    batching: Batching,
}

impl OtlpTraceSink {
    /// Validates the configuration and prepares the (lazily connecting) channel. Must be called
    /// inside a tokio runtime.
    pub fn new(config: OtlpConfig) -> Result<Self, OtlpConfigError> {
        let endpoint = config.endpoint.trim().trim_end_matches('/').to_owned();
        let invalid = |reason: String| OtlpConfigError::InvalidEndpoint {
            endpoint: config.endpoint.clone(),
            reason,
        };
        let uri = http_uri(&endpoint).map_err(invalid)?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(_) => {
                return Err(OtlpConfigError::UnsupportedScheme {
                    endpoint: config.endpoint.clone(),
                });
            }
            None => return Err(invalid("a scheme is required: http://host:4317".into())),
        }
        if uri.host().is_none_or(str::is_empty) {
            return Err(invalid("a host is required".into()));
        }
        let mut metadata = MetadataMap::new();
        for (name, value) in &config.headers {
            let bad = || OtlpConfigError::InvalidHeader { name: name.clone() };
            let key = AsciiMetadataKey::from_str(&name.to_ascii_lowercase()).map_err(|_| bad())?;
            let value = AsciiMetadataValue::from_str(value).map_err(|_| bad())?;
            metadata.insert(key, value);
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(OtlpConfigError::NoRuntime);
        }
        let channel = Endpoint::from(uri)
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(5)))
            .tcp_nodelay(true)
            .connect_lazy();
        Ok(Self {
            client: TraceServiceClient::new(channel),
            endpoint,
            metadata,
            max_retries: config.max_retries,
            initial_backoff: config.initial_backoff,
            max_backoff: config.max_backoff.max(config.initial_backoff),
            batching: Batching {
                max_items: config.max_batch_spans.max(1),
                max_delay: config.max_batch_delay,
            },
        })
    }

    /// The endpoint exported to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Backoff before retry number `retry` (1-based): exponential, capped, half of it jittered.
    fn backoff(&self, retry: u32) -> Duration {
        let exp = self
            .initial_backoff
            .saturating_mul(1u32 << retry.saturating_sub(1).min(20))
            .min(self.max_backoff);
        let half = exp / 2;
        half + half.mul_f64(random_fraction())
    }
}

fn http_uri(endpoint: &str) -> Result<tonic::codegen::http::Uri, String> {
    endpoint
        .parse::<tonic::codegen::http::Uri>()
        .map_err(|e| e.to_string())
}

/// Whether a call that failed with `code` may succeed if sent again.
fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable | Code::ResourceExhausted | Code::DeadlineExceeded | Code::Aborted
    )
}

/// A uniformly distributed value in [0, 1) from the OS random source (via uuid v4).
fn random_fraction() -> f64 {
    let (_, lo) = uuid::Uuid::new_v4().as_u64_pair();
    (lo & ((1u64 << 53) - 1)) as f64 / (1u64 << 53) as f64
}

fn cut(message: &str) -> String {
    message.chars().take(MAX_MESSAGE).collect()
}

impl Sink<TraceBatch> for OtlpTraceSink {
    fn name(&self) -> &str {
        "otlp"
    }

    fn batching(&self) -> Batching {
        self.batching
    }

    fn export(&self, batch: Arc<TraceBatch>) -> BoxFuture<'_, TraceExportReport> {
        Box::pin(async move {
            let spans = batch.span_count();
            let request = batch.to_request();
            let bytes = request.encoded_len() as u64;
            let mut report = TraceExportReport::default();
            let mut attempt: u32 = 0;
            loop {
                attempt += 1;
                let mut call = tonic::Request::new(request.clone());
                *call.metadata_mut() = self.metadata.clone();
                let mut client = self.client.clone();
                match client.export(call).await {
                    Ok(response) => {
                        report.retries = u64::from(attempt - 1);
                        report.bytes_sent = bytes;
                        let rejected = response
                            .into_inner()
                            .partial_success
                            .map(|p| {
                                (
                                    u64::try_from(p.rejected_spans).unwrap_or(0),
                                    p.error_message,
                                )
                            })
                            .unwrap_or_default();
                        let (rejected, message) = (rejected.0.min(spans), rejected.1);
                        report.items_exported = spans - rejected;
                        if rejected > 0 {
                            report.items_failed = rejected;
                            report.errors.push(
                                OtlpExportError::Rejected {
                                    endpoint: self.endpoint.clone(),
                                    rejected,
                                    message: cut(&message),
                                }
                                .into(),
                            );
                        } else if !message.is_empty() {
                            tracing::debug!(endpoint = %self.endpoint, message = %message, "otlp receiver warning");
                        }
                        return report;
                    }
                    Err(status) => {
                        let code = status.code();
                        if attempt > self.max_retries || !retryable(code) {
                            report.retries = u64::from(attempt - 1);
                            report.items_failed = spans;
                            report.errors.push(
                                OtlpExportError::Status {
                                    endpoint: self.endpoint.clone(),
                                    spans,
                                    code,
                                    message: cut(status.message()),
                                    attempts: attempt,
                                }
                                .into(),
                            );
                            return report;
                        }
                        let delay = self.backoff(attempt);
                        tracing::debug!(endpoint = %self.endpoint, attempt, ?delay, ?code, message = status.message(), "retrying otlp export");
                        tokio::time::sleep(delay).await;
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests;
