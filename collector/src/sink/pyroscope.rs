//! The Pyroscope sink: one Connect-protocol unary `push.v1.PusherService/Push` per service
//! profile, body a binary `PushRequest` holding one series with one gzip pprof sample.
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
use reqwest::header::{
    AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER,
};
use reqwest::{StatusCode, Url};

use super::{BoxFuture, ExportReport, SinkError};
use crate::export::Sink;
use crate::pprof::{self, PprofError};
use crate::profile::ProfileBatch;

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
/// Longest `Retry-After` honoured; longer ones are cut to this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// Response body bytes quoted in errors.
const ERROR_BODY_PREFIX: usize = 200;
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
}

impl PyroscopeConfig {
    /// Defaults for everything but the URL.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            basic_auth: None,
            bearer_token: None,
            tenant_id: None,
            timeout: DEFAULT_TIMEOUT,
            max_retries: DEFAULT_MAX_RETRIES,
            initial_backoff: DEFAULT_INITIAL_BACKOFF,
            max_backoff: DEFAULT_MAX_BACKOFF,
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
            .field("tenant_id", &self.tenant_id)
            .field("timeout", &self.timeout)
            .field("max_retries", &self.max_retries)
            .field("initial_backoff", &self.initial_backoff)
            .field("max_backoff", &self.max_backoff)
            .finish()
    }
}

/// Errors in a Pyroscope sink's configuration.
#[derive(Debug, thiserror::Error)]
pub enum PyroscopeConfigError {
    /// The URL does not parse.
    #[error("invalid pyroscope url {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as configured.
        url: String,
        /// Why it does not parse.
        reason: String,
    },
    /// The URL scheme is neither `http` nor `https`.
    #[error("unsupported scheme {scheme:?} in pyroscope url {url:?}: use http or https")]
    UnsupportedScheme {
        /// The URL as configured.
        url: String,
        /// The scheme found.
        scheme: String,
    },
    /// Both basic auth and a bearer token were configured.
    #[error("pyroscope basic auth and bearer token are exclusive; configure one")]
    ConflictingAuth,
    /// A header value holds characters HTTP does not allow (line breaks, control characters).
    #[error("the pyroscope {what} contains characters not allowed in an http header")]
    InvalidHeader {
        /// Which setting.
        what: &'static str,
    },
    /// The TLS configuration could not be built (for example no system CA certificates).
    #[error("building tls for pyroscope url {url:?} failed: {source}")]
    Tls {
        /// The URL as configured.
        url: String,
        /// The rustls error.
        #[source]
        source: rustls::Error,
    },
    /// The HTTP client could not be built.
    #[error("building the pyroscope http client failed: {0}")]
    Client(#[source] reqwest::Error),
}

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
    client: reqwest::Client,
    push_url: Url,
    basic_auth: Option<(String, String)>,
    host_labels: Vec<(String, String)>,
    max_retries: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
}

impl PyroscopeSink {
    /// Validates the configuration and builds the HTTP client. `host_labels` are added to every
    /// series (for example `host_name`).
    pub fn new(
        config: PyroscopeConfig,
        host_labels: Vec<(String, String)>,
    ) -> Result<Self, PyroscopeConfigError> {
        let invalid = |reason: String| PyroscopeConfigError::InvalidUrl {
            url: config.url.clone(),
            reason,
        };
        let base = Url::parse(config.url.trim()).map_err(|e| invalid(e.to_string()))?;
        let https = match base.scheme() {
            "http" => false,
            "https" => true,
            other => {
                return Err(PyroscopeConfigError::UnsupportedScheme {
                    url: config.url.clone(),
                    scheme: other.to_owned(),
                });
            }
        };
        if base.query().is_some() || base.fragment().is_some() {
            return Err(invalid("a query or fragment is not allowed".to_owned()));
        }
        let push_url = Url::parse(&format!(
            "{}{PUSH_PATH}",
            base.as_str().trim_end_matches('/')
        ))
        .map_err(|e| invalid(e.to_string()))?;
        if config.basic_auth.is_some() && config.bearer_token.is_some() {
            return Err(PyroscopeConfigError::ConflictingAuth);
        }

        let mut headers = HeaderMap::new();
        if let Some(token) = &config.bearer_token {
            let mut v = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                PyroscopeConfigError::InvalidHeader {
                    what: "bearer token",
                }
            })?;
            v.set_sensitive(true);
            headers.insert(AUTHORIZATION, v);
        }
        if let Some(tenant) = &config.tenant_id {
            let v = HeaderValue::from_str(tenant)
                .map_err(|_| PyroscopeConfigError::InvalidHeader { what: "tenant id" })?;
            headers.insert(HeaderName::from_static("x-scope-orgid"), v);
        }
        if let Some((user, pass)) = &config.basic_auth {
            let bad = |s: &str| s.chars().any(char::is_control);
            if bad(user) || bad(pass) || user.contains(':') {
                return Err(PyroscopeConfigError::InvalidHeader {
                    what: "basic auth user or password",
                });
            }
        }
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/proto"));
        headers.insert(
            HeaderName::from_static("connect-protocol-version"),
            HeaderValue::from_static("1"),
        );

        let client = crate::http::client_builder(https)
            .map_err(|source| PyroscopeConfigError::Tls {
                url: config.url.clone(),
                source,
            })?
            .default_headers(headers)
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(5)))
            .build()
            .map_err(PyroscopeConfigError::Client)?;

        Ok(Self {
            client,
            push_url,
            basic_auth: config.basic_auth,
            host_labels,
            max_retries: config.max_retries,
            initial_backoff: config.initial_backoff,
            max_backoff: config.max_backoff.max(config.initial_backoff),
        })
    }

    /// The full push URL.
    pub fn push_url(&self) -> &Url {
        &self.push_url
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
                                labels: series_labels(&service, host_labels, &profile.labels),
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

    /// Sends one body, retrying as configured. Returns the result and the number of retries.
    async fn push(&self, service: &str, body: Bytes) -> (Result<(), PushError>, u64) {
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let mut request = self.client.post(self.push_url.clone()).body(body.clone());
            if let Some((user, pass)) = &self.basic_auth {
                request = request.basic_auth(user, Some(pass));
            }
            let can_retry = attempt <= self.max_retries;
            let (error, retry_after) = match request.send().await {
                Ok(response) if response.status().is_success() => {
                    // Drain the (tiny) body so the connection returns to the pool.
                    let _ = response.bytes().await;
                    return (Ok(()), u64::from(attempt - 1));
                }
                Ok(response) => {
                    let status = response.status();
                    let retry_after = response
                        .headers()
                        .get(RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER));
                    let error = PushError::Status {
                        service: service.to_owned(),
                        url: self.push_url.to_string(),
                        status: status.as_u16(),
                        attempts: attempt,
                        body: body_prefix(response).await,
                    };
                    if !can_retry || !retryable_status(status) {
                        return (Err(error), u64::from(attempt - 1));
                    }
                    (error, retry_after)
                }
                Err(e) => {
                    let transient = e.is_connect() || e.is_timeout() || e.is_request();
                    let error = PushError::Transport {
                        service: service.to_owned(),
                        url: self.push_url.to_string(),
                        attempts: attempt,
                        source: e.without_url(),
                    };
                    if !can_retry || !transient {
                        return (Err(error), u64::from(attempt - 1));
                    }
                    (error, None)
                }
            };
            let delay = retry_after.unwrap_or_else(|| self.backoff(attempt));
            tracing::debug!(%service, attempt, ?delay, error = %error, "retrying pyroscope push");
            tokio::time::sleep(delay).await;
        }
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

impl Sink<ProfileBatch> for PyroscopeSink {
    fn name(&self) -> &str {
        "pyroscope"
    }

    fn export(&self, batch: Arc<ProfileBatch>) -> BoxFuture<'_, ExportReport> {
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
                        return report;
                    }
                };
            for (service, body) in bodies {
                let body = match body {
                    Ok(b) => b,
                    Err(e) => {
                        report.items_failed += 1;
                        report.errors.push(e.into());
                        continue;
                    }
                };
                let len = body.len() as u64;
                let (result, retries) = self.push(&service, body).await;
                report.retries += retries;
                match result {
                    Ok(()) => {
                        report.items_exported += 1;
                        report.bytes_sent += len;
                    }
                    Err(e) => {
                        report.items_failed += 1;
                        report.errors.push(SinkError::from(e));
                    }
                }
            }
            report
        })
    }
}

/// The series labels: reserved ones, host labels, profile labels; sanitized, deduplicated (later
/// wins, reserved always win) and sorted by name.
pub fn series_labels(
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
    labels.insert("__name__".to_owned(), "process_cpu".to_owned());
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

fn retryable_status(status: StatusCode) -> bool {
    matches!(status.as_u16(), 429 | 502 | 503 | 504)
}

/// The first [`ERROR_BODY_PREFIX`] bytes of a response body, lossy UTF-8, trimmed.
async fn body_prefix(mut response: reqwest::Response) -> String {
    let mut prefix = Vec::with_capacity(ERROR_BODY_PREFIX);
    while prefix.len() < ERROR_BODY_PREFIX {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let take = chunk.len().min(ERROR_BODY_PREFIX - prefix.len());
                prefix.extend_from_slice(&chunk[..take]);
            }
            Ok(None) | Err(_) => break,
        }
    }
    String::from_utf8_lossy(&prefix).trim().to_owned()
}

/// A uniformly distributed value in [0, 1) from the OS random source (via uuid v4, whose low 62
/// bits are random).
fn random_fraction() -> f64 {
    let (_, lo) = uuid::Uuid::new_v4().as_u64_pair();
    (lo & ((1u64 << 53) - 1)) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests;
