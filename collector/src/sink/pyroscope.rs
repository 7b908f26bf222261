//! The Pyroscope sink: one Connect-protocol unary `push.v1.PusherService/Push` per service
//! profile, body a binary `PushRequest` holding one series with one gzip pprof sample.
//!
//! The HTTP side (TLS, auth, tenant, retries) is [`crate::http::PushClient`], shared with Loki.
//!
//! Series labels: `__name__=process_cpu`, `service_name`, the host labels, then the profile's
//! labels (later ones win), sorted by name. Label names are made Prometheus-safe (`host.name`
//! becomes `host_name`) because Pyroscope rejects other names. Retries: only 429, 502, 503, 504
//! and transport errors, exponential backoff with jitter, `Retry-After` (seconds) honoured,
//! bounded by `max_retries`.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use ::pyroscope::encode::r#gen::push::{PushRequest, RawProfileSeries, RawSample};
use ::pyroscope::encode::r#gen::types::LabelPair;
use bytes::Bytes;
use prost::Message;
use reqwest::Url;

use super::{BoxFuture, ExportReport, SinkError};
use crate::export::{Delivery, Payload, Sent, Sink, WireSink, export_direct};
pub use crate::http::MAX_RETRY_AFTER;
use crate::http::{HttpConfigError, PostError, PushClient, PushSettings};
use crate::pprof::{self, PprofError};
use crate::profile::{ProfileBatch, ProfileKind};
use crate::retry::Backoff;

/// Path of the push endpoint, appended to the configured base URL.
pub const PUSH_PATH: &str = "/push.v1.PusherService/Push";
/// Request timeout unless configured otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Retries per push unless configured otherwise.
pub const DEFAULT_MAX_RETRIES: u32 = 3;
/// First backoff unless configured otherwise; doubles per retry.
pub const DEFAULT_INITIAL_BACKOFF: Duration = Duration::from_millis(500);
/// Backoff ceiling unless configured otherwise.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Service name sent when a profile has none (Pyroscope requires one).
const UNKNOWN_SERVICE: &str = "unknown_service";

/// Where and how to push.
#[derive(Clone)]
pub struct PyroscopeConfig {
    /// Base URL, `http://` or `https://`, e.g. `http://pyroscope:4040`.
    pub url: String,
    /// HTTP basic auth user and password.
    pub basic_auth: Option<(String, String)>,
    /// Bearer token (`Authorization: Bearer …`); exclusive with `basic_auth`.
    pub bearer_token: Option<String>,
    /// A file holding the bearer token, read again when it changes.
    pub bearer_token_file: Option<std::path::PathBuf>,
    /// Tenant, sent as `X-Scope-OrgID`.
    pub tenant_id: Option<String>,
    /// Timeout of one request.
    pub timeout: Duration,
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// Backoff before the first retry; doubles per retry.
    pub initial_backoff: Duration,
    /// Backoff ceiling.
    pub max_backoff: Duration,
    /// CA file, client certificate, server name (`https://` only).
    pub tls: crate::tls::TlsSettings,
}

impl PyroscopeConfig {
    /// Defaults for everything but the URL.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            basic_auth: None,
            bearer_token: None,
            bearer_token_file: None,
            tenant_id: None,
            timeout: DEFAULT_TIMEOUT,
            max_retries: DEFAULT_MAX_RETRIES,
            initial_backoff: DEFAULT_INITIAL_BACKOFF,
            max_backoff: DEFAULT_MAX_BACKOFF,
            tls: crate::tls::TlsSettings::default(),
        }
    }
}

impl Default for PyroscopeConfig {
    /// Defaults with an empty URL, which [`PyroscopeSink::new`] rejects: set `url`.
    fn default() -> Self {
        Self::new(String::new())
    }
}

impl fmt::Debug for PyroscopeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PyroscopeConfig")
            .field("url", &self.url)
            .field(
                "basic_auth",
                &self.basic_auth.as_ref().map(|(u, _)| (u, "<redacted>")),
            )
            .field(
                "bearer_token",
                &self.bearer_token.as_ref().map(|_| "<redacted>"),
            )
            .field("bearer_token_file", &self.bearer_token_file)
            .field("tenant_id", &self.tenant_id)
            .field("timeout", &self.timeout)
            .field("max_retries", &self.max_retries)
            .field("initial_backoff", &self.initial_backoff)
            .field("max_backoff", &self.max_backoff)
            .field("tls", &self.tls)
            .finish()
    }
}

/// Errors in a Pyroscope sink's configuration.
pub type PyroscopeConfigError = HttpConfigError;

/// Errors of one push.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// Pyroscope answered with a non-success status (retried first when retryable).
    #[error(
        "pyroscope push for service {service} to {url} failed with status {status} after {attempts} attempt(s): {body}"
    )]
    Status {
        /// The service whose profile was pushed.
        service: String,
        /// The push URL.
        url: String,
        /// The last HTTP status.
        status: u16,
        /// Attempts made.
        attempts: u32,
        /// The first bytes of the last response body.
        body: String,
    },
    /// The request could not be sent or answered (connection, timeout).
    #[error(
        "pyroscope push for service {service} to {url} failed after {attempts} attempt(s): {source}"
    )]
    Transport {
        /// The service whose profile was pushed.
        service: String,
        /// The push URL.
        url: String,
        /// Attempts made.
        attempts: u32,
        /// The last transport error.
        #[source]
        source: reqwest::Error,
    },
    /// The profile could not be encoded.
    #[error("encoding the profile of service {service} for pyroscope failed: {source}")]
    Encode {
        /// The service.
        service: String,
        /// The encoding error.
        #[source]
        source: PprofError,
    },
    /// The encoding task panicked or was cancelled.
    #[error("the pyroscope encoding task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
}

/// Pushes each service profile of a batch to Pyroscope.
#[derive(Debug)]
pub struct PyroscopeSink {
    client: PushClient,
    host_labels: Vec<(String, String)>,
}

impl PyroscopeSink {
    /// Validates the configuration and builds the HTTP client. `host_labels` are added to every
    /// series (for example `host_name`).
    pub fn new(
        config: PyroscopeConfig,
        host_labels: Vec<(String, String)>,
    ) -> Result<Self, PyroscopeConfigError> {
        let client = PushClient::new(PushSettings {
            sink: "pyroscope",
            base_url: &config.url,
            path: PUSH_PATH,
            basic_auth: config.basic_auth,
            bearer_token: config.bearer_token,
            bearer_token_file: config.bearer_token_file,
            tenant: config.tenant_id,
            headers: &[
                ("content-type", "application/proto"),
                ("connect-protocol-version", "1"),
            ],
            timeout: config.timeout,
            max_retries: config.max_retries,
            backoff: Backoff::new(config.initial_backoff, config.max_backoff),
            tls: config.tls.clone(),
        })?;
        Ok(Self {
            client,
            host_labels,
        })
    }

    /// The full push URL.
    pub fn push_url(&self) -> &Url {
        self.client.url()
    }

    /// Encodes every non-empty service profile of the batch as a `PushRequest` body.
    fn encode_batch(
        host_labels: &[(String, String)],
        batch: &ProfileBatch,
    ) -> Vec<(String, Result<Bytes, PushError>)> {
        batch
            .profiles
            .iter()
            .filter(|p| p.total_samples() > 0)
            .map(|profile| {
                let service = if profile.service_name.trim().is_empty() {
                    UNKNOWN_SERVICE.to_owned()
                } else {
                    profile.service_name.clone()
                };
                let body = pprof::encode_gzip(&pprof::build(batch.meta(), profile))
                    .map(|raw_profile| {
                        let request = PushRequest {
                            series: vec![RawProfileSeries {
                                labels: series_labels(
                                    batch.kind,
                                    &service,
                                    host_labels,
                                    &profile.labels,
                                ),
                                samples: vec![RawSample {
                                    raw_profile,
                                    id: uuid::Uuid::new_v4().to_string(),
                                }],
                            }],
                        };
                        Bytes::from(request.encode_to_vec())
                    })
                    .map_err(|source| PushError::Encode {
                        service: service.clone(),
                        source,
                    });
                (service, body)
            })
            .collect()
    }

    /// Backoff before retry number `retry` (1-based): exponential, capped, half of it jittered.
    #[cfg(test)]
    fn backoff(&self, retry: u32) -> Duration {
        self.client.backoff(retry)
    }
}

impl WireSink<ProfileBatch> for PyroscopeSink {
    fn name(&self) -> &str {
        "pyroscope"
    }

    fn encode(&self, batch: Arc<ProfileBatch>) -> BoxFuture<'_, (Vec<Payload>, ExportReport)> {
        Box::pin(async move {
            let mut report = ExportReport::default();
            let host_labels = self.host_labels.clone();
            let total = batch.profiles.len() as u64;
            // Encoding is CPU work: keep it off the async workers.
            let bodies =
                match tokio::task::spawn_blocking(move || Self::encode_batch(&host_labels, &batch))
                    .await
                {
                    Ok(b) => b,
                    Err(e) => {
                        report.items_failed = total;
                        report.errors.push(PushError::Task(e).into());
                        return (Vec::new(), report);
                    }
                };
            let mut payloads = Vec::with_capacity(bodies.len());
            for (_, body) in bodies {
                match body {
                    Ok(body) => payloads.push(Payload { items: 1, body }),
                    Err(e) => {
                        report.items_failed += 1;
                        report.errors.push(e.into());
                    }
                }
            }
            (payloads, report)
        })
    }

    fn send(&self, payload: Payload, retry: bool) -> BoxFuture<'_, Sent<SinkError>> {
        Box::pin(async move {
            let body = payload.body.clone();
            let (result, retries) = self.client.post_with(payload.body, retry).await;
            let Err(e) = result else {
                return Sent {
                    delivery: Delivery::Accepted {
                        rejected: 0,
                        error: None,
                    },
                    retries,
                };
            };
            // The service, for the message: read back from the body, on failures only.
            let service = service_of(&body);
            let url = self.client.url().to_string();
            let transient = e.is_transient();
            let error = SinkError::from(match e {
                PostError::Status {
                    status,
                    attempts,
                    body,
                } => PushError::Status {
                    service,
                    url,
                    status,
                    attempts,
                    body,
                },
                PostError::Transport { attempts, source } => PushError::Transport {
                    service,
                    url,
                    attempts,
                    source,
                },
            });
            let delivery = if transient {
                Delivery::Unreachable(error)
            } else {
                Delivery::Refused(error)
            };
            Sent { delivery, retries }
        })
    }
}

/// Each service profile is one push. Once a push cannot reach the backend (connection refused,
/// no DNS, timeouts) after its retries, the batch's other services are not tried: each would
/// wait out the same retries, and a silent backend would hold the exporter for minutes per
/// interval. They are counted as failed, or spooled when the sink has a spool.
impl Sink<ProfileBatch> for PyroscopeSink {
    fn name(&self) -> &str {
        "pyroscope"
    }

    fn export(&self, batch: Arc<ProfileBatch>) -> BoxFuture<'_, ExportReport> {
        Box::pin(export_direct(self, batch))
    }
}

/// The `service_name` label of an encoded `PushRequest` (empty when it has none).
fn service_of(body: &[u8]) -> String {
    PushRequest::decode(body)
        .ok()
        .and_then(|r| {
            r.series
                .into_iter()
                .flat_map(|s| s.labels)
                .find(|l| l.name == "service_name")
                .map(|l| l.value)
        })
        .unwrap_or_default()
}

/// The series labels: reserved ones, host labels, profile labels; sanitized, deduplicated (later
/// wins, reserved always win) and sorted by name.
pub fn series_labels(
    kind: ProfileKind,
    service: &str,
    host_labels: &[(String, String)],
    profile_labels: &[(String, String)],
) -> Vec<LabelPair> {
    let mut labels: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in host_labels.iter().chain(profile_labels) {
        let name = sanitize_label_name(name);
        if !name.is_empty() && !name.starts_with("__") && !value.is_empty() {
            labels.insert(name, value.clone());
        }
    }
    labels.insert("__name__".to_owned(), kind.pyroscope_name().to_owned());
    labels.insert("service_name".to_owned(), service.to_owned());
    labels
        .into_iter()
        .map(|(name, value)| LabelPair { name, value })
        .collect()
}

/// A Prometheus-style label name: `[a-zA-Z_][a-zA-Z0-9_]*`, other characters replaced by `_`.
pub fn sanitize_label_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

#[cfg(test)]
mod tests;
