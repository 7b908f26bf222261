//! The Loki sink: `POST {url}/loki/api/v1/push`, body a protobuf `logproto.PushRequest`
//! compressed with snappy's block format, `Content-Type: application/x-protobuf` (Loki, or Grafana
//! Alloy's `loki.source.api`).
//!
//! Streams: records are grouped by a small, low-cardinality label set taken from the resource,
//! plus the level:
//!
//! - `service_name`: `service.name` (`unknown_service` when missing, as Loki itself names it);
//! - `service_namespace`: `service.namespace`, when present;
//! - `namespace`: `k8s.namespace.name`, when present (a separate label: a Kubernetes namespace
//!   and a service namespace are different things, and Grafana's Kubernetes views use
//!   `namespace`);
//! - `container`: `k8s.container.name`, when present;
//! - `level`: [`Severity::label`](super::Severity::label) (`unknown` when the line had none).
//!
//! Everything per process or per request is structured metadata on each entry instead (Loki
//! schema v13+): `trace_id` (32 hex), `span_id` (16 hex), `pod` (`k8s.pod.name`), `host_name`
//! (`host.name`: not a label, so a host's streams merge across hosts), `pid` (`process.pid`),
//! `stream` (`log.iostream`). Entries of a stream are sorted by time; a record without a time
//! uses the time it was read.
//!
//! The HTTP side is [`crate::http::PushClient`], shared with Pyroscope: basic auth or bearer
//! token, tenant as `X-Scope-OrgID`, retries on 429, 502, 503, 504 and connection errors with
//! backoff, `Retry-After` honoured. Other statuses (a 400 for a line too long or too old) are not
//! retried: the records are counted as failed and the first such rejection is logged with the
//! start of Loki's answer.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use prost::Message;

use super::{LOG_IOSTREAM, LogBatch, LogExportReport, LogRecord, LogSinkError};
use crate::export::{Batching, Delivery, Payload, Sent, Sink, WireSink, export_direct};
use crate::http::{HttpConfigError, PostError, PushClient, PushSettings};
use crate::retry::Backoff;
use crate::sink::BoxFuture;
use crate::traces::AttrValue;
use crate::traces::proto::common::any_value::Value;
use crate::traces::proto::resource::Resource;

/// Path of the push endpoint, appended to the configured base URL.
pub const PUSH_PATH: &str = "/loki/api/v1/push";
/// Request timeout unless configured otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Retries per push unless configured otherwise.
pub const DEFAULT_MAX_RETRIES: u32 = 4;
/// First backoff unless configured otherwise; doubles per retry.
pub const DEFAULT_INITIAL_BACKOFF: Duration = Duration::from_millis(500);
/// Backoff ceiling unless configured otherwise.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Records per push unless configured otherwise.
pub const DEFAULT_MAX_BATCH_RECORDS: usize = 2048;
/// Longest a record waits for its push unless configured otherwise.
pub const DEFAULT_MAX_BATCH_DELAY: Duration = Duration::from_secs(1);
/// `service_name` of records whose resource has no `service.name`.
const UNKNOWN_SERVICE: &str = "unknown_service";

/// Where and how to push.
#[derive(Clone)]
pub struct LokiConfig {
    /// Base URL, `http://` or `https://`, e.g. `http://loki:3100`.
    pub url: String,
    /// HTTP basic auth user (with `password`).
    pub user: Option<String>,
    /// HTTP basic auth password; needs `user`.
    pub password: Option<String>,
    /// Bearer token (`Authorization: Bearer …`); exclusive with basic auth.
    pub token: Option<String>,
    /// A file holding the bearer token, read again when it changes.
    pub token_file: Option<std::path::PathBuf>,
    /// Tenant, sent as `X-Scope-OrgID`.
    pub tenant: Option<String>,
    /// Timeout of one request.
    pub timeout: Duration,
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// Backoff before the first retry; doubles per retry.
    pub initial_backoff: Duration,
    /// Backoff ceiling.
    pub max_backoff: Duration,
    /// Most records per push.
    pub max_batch_records: usize,
    /// Longest a record waits for more to join its push.
    pub max_batch_delay: Duration,
    /// CA file, client certificate, server name (`https://` only).
    pub tls: crate::tls::TlsSettings,
}

impl LokiConfig {
    /// Defaults for everything but the URL.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            user: None,
            password: None,
            token: None,
            token_file: None,
            tenant: None,
            timeout: DEFAULT_TIMEOUT,
            max_retries: DEFAULT_MAX_RETRIES,
            initial_backoff: DEFAULT_INITIAL_BACKOFF,
            max_backoff: DEFAULT_MAX_BACKOFF,
            max_batch_records: DEFAULT_MAX_BATCH_RECORDS,
            max_batch_delay: DEFAULT_MAX_BATCH_DELAY,
            tls: crate::tls::TlsSettings::default(),
        }
    }
}

impl fmt::Debug for LokiConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |o: &Option<String>| o.as_ref().map(|_| "<redacted>");
        f.debug_struct("LokiConfig")
            .field("url", &self.url)
            .field("user", &self.user)
            .field("password", &redacted(&self.password))
            .field("token", &redacted(&self.token))
            .field("token_file", &self.token_file)
            .field("tenant", &self.tenant)
            .field("timeout", &self.timeout)
            .field("max_retries", &self.max_retries)
            .field("initial_backoff", &self.initial_backoff)
            .field("max_backoff", &self.max_backoff)
            .field("max_batch_records", &self.max_batch_records)
            .field("max_batch_delay", &self.max_batch_delay)
            .field("tls", &self.tls)
            .finish()
    }
}

/// Errors in a Loki sink's configuration.
#[derive(Debug, thiserror::Error)]
pub enum LokiConfigError {
    /// The URL, authentication or tenant is invalid.
    #[error(transparent)]
    Http(#[from] HttpConfigError),
    /// A password was configured without a user.
    #[error("a loki password needs a user (basic auth)")]
    PasswordWithoutUser,
}

/// Errors of one push.
#[derive(Debug, thiserror::Error)]
pub enum LokiPushError {
    /// Loki answered with a non-success status (retried first when retryable).
    #[error(
        "loki push of {records} record(s) to {url} failed with status {status} after {attempts} attempt(s): {body}"
    )]
    Status {
        /// The push URL.
        url: String,
        /// Records in the push.
        records: u64,
        /// The last HTTP status.
        status: u16,
        /// Attempts made.
        attempts: u32,
        /// The first bytes of the last response body.
        body: String,
    },
    /// The request could not be sent or answered (connection, timeout).
    #[error(
        "loki push of {records} record(s) to {url} failed after {attempts} attempt(s): {source}"
    )]
    Transport {
        /// The push URL.
        url: String,
        /// Records in the push.
        records: u64,
        /// Attempts made.
        attempts: u32,
        /// The last transport error.
        #[source]
        source: reqwest::Error,
    },
    /// Snappy compression failed (only for bodies beyond its size limit, about 4 GiB).
    #[error("compressing a loki push of {records} record(s) failed: {source}")]
    Compress {
        /// Records in the push.
        records: u64,
        /// The snappy error.
        #[source]
        source: snap::Error,
    },
}

/// Loki's push protocol (`pkg/push/push.proto`), declared with prost derives.
pub mod logproto {
    /// `logproto.PushRequest`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PushRequest {
        #[prost(message, repeated, tag = "1")]
        pub streams: Vec<StreamAdapter>,
    }

    /// `logproto.StreamAdapter`: one stream's labels (`{a="b", c="d"}`) and entries.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct StreamAdapter {
        #[prost(string, tag = "1")]
        pub labels: String,
        #[prost(message, repeated, tag = "2")]
        pub entries: Vec<EntryAdapter>,
        #[prost(uint64, tag = "3")]
        pub hash: u64,
    }

    /// `logproto.EntryAdapter`: one line.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct EntryAdapter {
        #[prost(message, optional, tag = "1")]
        pub timestamp: Option<prost_types::Timestamp>,
        #[prost(string, tag = "2")]
        pub line: String,
        #[prost(message, repeated, tag = "3")]
        pub structured_metadata: Vec<LabelPairAdapter>,
    }

    /// `logproto.LabelPairAdapter`: one structured-metadata pair.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LabelPairAdapter {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub value: String,
    }
}

use logproto::{EntryAdapter, LabelPairAdapter, PushRequest, StreamAdapter};

/// Pushes log batches to Loki.
#[derive(Debug)]
pub struct LokiSink {
    client: PushClient,
    batching: Batching,
    /// Whether a rejection (a status not retried) was logged already.
    rejection_logged: AtomicBool,
}

impl LokiSink {
    /// Validates the configuration and builds the HTTP client.
    pub fn new(config: LokiConfig) -> Result<Self, LokiConfigError> {
        let basic_auth = match (config.user, config.password) {
            (Some(user), password) => Some((user, password.unwrap_or_default())),
            (None, Some(_)) => return Err(LokiConfigError::PasswordWithoutUser),
            (None, None) => None,
        };
        let client = PushClient::new(PushSettings {
            sink: "loki",
            base_url: &config.url,
            path: PUSH_PATH,
            basic_auth,
            bearer_token: config.token,
            bearer_token_file: config.token_file,
            tenant: config.tenant,
            headers: &[("content-type", "application/x-protobuf")],
            timeout: config.timeout,
            max_retries: config.max_retries,
            backoff: Backoff::new(config.initial_backoff, config.max_backoff),
            tls: config.tls.clone(),
        })?;
        Ok(Self {
            client,
            batching: Batching {
                max_items: config.max_batch_records.max(1),
                max_delay: config.max_batch_delay,
            },
            rejection_logged: AtomicBool::new(false),
        })
    }

    /// The full push URL.
    pub fn push_url(&self) -> &reqwest::Url {
        self.client.url()
    }
}

impl WireSink<LogBatch> for LokiSink {
    fn name(&self) -> &str {
        "loki"
    }

    fn batching(&self) -> Batching {
        self.batching
    }

    fn encode(&self, batch: Arc<LogBatch>) -> BoxFuture<'_, (Vec<Payload>, LogExportReport)> {
        Box::pin(async move {
            let records = batch.record_count();
            let mut report = LogExportReport::default();
            match snap::raw::Encoder::new().compress_vec(&push_request(&batch).encode_to_vec()) {
                Ok(b) => (
                    vec![Payload {
                        items: records,
                        body: Bytes::from(b),
                    }],
                    report,
                ),
                Err(source) => {
                    report.items_failed = records;
                    report
                        .errors
                        .push(LokiPushError::Compress { records, source }.into());
                    (Vec::new(), report)
                }
            }
        })
    }

    fn send(&self, payload: Payload, retry: bool) -> BoxFuture<'_, Sent<LogSinkError>> {
        Box::pin(async move {
            let records = payload.items;
            let (result, retries) = self.client.post_with(payload.body, retry).await;
            let url = || self.client.url().to_string();
            let delivery = match result {
                Ok(()) => Delivery::Accepted {
                    rejected: 0,
                    error: None,
                },
                Err(e) => {
                    let transient = e.is_transient();
                    let error: LogSinkError = match e {
                        PostError::Status {
                            status,
                            attempts,
                            body,
                        } => {
                            if !transient && !self.rejection_logged.swap(true, Ordering::Relaxed) {
                                tracing::warn!(
                                    url = %url(), status, %body,
                                    "loki rejected a push; its records are dropped and counted (logged once)"
                                );
                            }
                            LokiPushError::Status {
                                url: url(),
                                records,
                                status,
                                attempts,
                                body,
                            }
                            .into()
                        }
                        PostError::Transport { attempts, source } => LokiPushError::Transport {
                            url: url(),
                            records,
                            attempts,
                            source,
                        }
                        .into(),
                    };
                    if transient {
                        Delivery::Unreachable(error)
                    } else {
                        Delivery::Refused(error)
                    }
                }
            };
            Sent { delivery, retries }
        })
    }
}

impl Sink<LogBatch> for LokiSink {
    fn name(&self) -> &str {
        "loki"
    }

    fn batching(&self) -> Batching {
        self.batching
    }

    fn export(&self, batch: Arc<LogBatch>) -> BoxFuture<'_, LogExportReport> {
        Box::pin(export_direct(self, batch))
    }
}

/// The push request of a batch: one stream per label set, entries sorted by time.
pub fn push_request(batch: &LogBatch) -> PushRequest {
    let mut streams: BTreeMap<String, Vec<EntryAdapter>> = BTreeMap::new();
    for rl in &batch.resources {
        let resource = ResourceFields::of(&rl.resource);
        for record in &rl.records {
            streams
                .entry(resource.labels(record))
                .or_default()
                .push(resource.entry(record));
        }
    }
    PushRequest {
        streams: streams
            .into_iter()
            .map(|(labels, mut entries)| {
                entries.sort_by_key(|e| e.timestamp.map(|t| (t.seconds, t.nanos)));
                StreamAdapter {
                    labels,
                    entries,
                    hash: 0,
                }
            })
            .collect(),
    }
}

/// The resource attributes Loki uses, read once per resource.
struct ResourceFields {
    /// Stream labels but `level`, sorted by name.
    labels: Vec<(&'static str, String)>,
    /// Structured metadata of every entry: `pod`, `host_name`, `pid`.
    metadata: Vec<(&'static str, String)>,
}

impl ResourceFields {
    fn of(resource: &Resource) -> Self {
        let get = |key: &str| {
            resource
                .attributes
                .iter()
                .find(|kv| kv.key == key)
                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    Value::StringValue(s) if !s.is_empty() => Some(s.clone()),
                    Value::IntValue(i) => Some(i.to_string()),
                    _ => None,
                })
        };
        // Sorted by label name, `level` added per record.
        let mut labels = Vec::new();
        if let Some(c) = get("k8s.container.name") {
            labels.push(("container", c));
        }
        if let Some(n) = get("k8s.namespace.name") {
            labels.push(("namespace", n));
        }
        labels.push((
            "service_name",
            get("service.name").unwrap_or_else(|| UNKNOWN_SERVICE.to_owned()),
        ));
        if let Some(n) = get("service.namespace") {
            labels.push(("service_namespace", n));
        }
        let metadata = [
            ("pod", "k8s.pod.name"),
            ("host_name", "host.name"),
            ("pid", "process.pid"),
        ]
        .into_iter()
        .filter_map(|(name, key)| Some((name, get(key)?)))
        .collect();
        Self { labels, metadata }
    }

    /// `{container="…", level="…", namespace="…", service_name="…"}`.
    fn labels(&self, record: &LogRecord) -> String {
        let level = ("level", record.severity.label());
        let mut all: Vec<(&str, &str)> = self
            .labels
            .iter()
            .map(|(k, v)| (*k, v.as_str()))
            .chain([level])
            .collect();
        all.sort_unstable_by_key(|(k, _)| *k);
        let mut out = String::from("{");
        for (i, (k, v)) in all.into_iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            out.push_str(k);
            out.push_str("=\"");
            for c in v.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '"' => out.push_str("\\\""),
                    '\n' => out.push_str("\\n"),
                    c => out.push(c),
                }
            }
            out.push('"');
        }
        out.push('}');
        out
    }

    fn entry(&self, record: &LogRecord) -> EntryAdapter {
        let mut metadata = Vec::with_capacity(6);
        let mut add = |name: &str, value: String| {
            metadata.push(LabelPairAdapter {
                name: name.to_owned(),
                value,
            });
        };
        if let Some(t) = &record.trace_id {
            add("trace_id", hex(t));
        }
        if let Some(s) = &record.span_id {
            add("span_id", hex(s));
        }
        for (name, value) in &self.metadata {
            add(name, value.clone());
        }
        let stream = record.attributes.iter().find(|a| a.key == LOG_IOSTREAM);
        if let Some(AttrValue::Str(s)) = stream.map(|a| &a.value) {
            add("stream", s.to_string());
        }
        let nanos = if record.time_unix_nano == 0 {
            record.observed_time_unix_nano
        } else {
            record.time_unix_nano
        };
        EntryAdapter {
            timestamp: Some(prost_types::Timestamp {
                seconds: i64::try_from(nanos / 1_000_000_000).unwrap_or(i64::MAX),
                nanos: i32::try_from(nanos % 1_000_000_000).unwrap_or(0),
            }),
            line: record.body.clone(),
            structured_metadata: metadata,
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    s
}

#[cfg(test)]
pub(crate) mod tests;
