//! The OTLP/gRPC client every OTLP sink shares (spans: `TraceService/Export`, logs:
//! `LogsService/Export`): endpoint configuration, the lazily connecting tonic channel, retries
//! with backoff and partial-success handling. Each signal's sink only builds its request and
//! names its service.
//!
//! Endpoint: `http://host:port` (usually 4317), HTTP/2 cleartext, or `https://host:port`, HTTP/2
//! over TLS (rustls: the system's roots or a CA file, an optional client certificate and server
//! name, see [`crate::tls`]), to Tempo, Loki (OTLP), Grafana Alloy or any OpenTelemetry Collector. Retries: `UNAVAILABLE` (which includes connection
//! failures), `RESOURCE_EXHAUSTED`, `DEADLINE_EXCEEDED` and `ABORTED`, with exponential backoff
//! and jitter, at most `max_retries` times; any other status fails the batch at once. Items the
//! receiver reports as rejected (`partial_success`) are counted as failed, not retried. The
//! connection is made lazily (and re-made after failures) by tonic's channel, so a receiver that
//! is down at start-up only costs retries.
//!
//! Not supported yet: compression, gRPC `RetryInfo` delays.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tonic::Code;
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue, MetadataMap};
use tonic::transport::{Channel, Endpoint};

use bytes::Bytes;

use crate::export::{Batching, Delivery, Payload, Sent};
use crate::retry::{Backoff, cut};

/// Timeout of one export call unless configured otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Retries per export unless configured otherwise.
pub const DEFAULT_MAX_RETRIES: u32 = 4;
/// First backoff unless configured otherwise; doubles per retry.
pub const DEFAULT_INITIAL_BACKOFF: Duration = Duration::from_millis(500);
/// Backoff ceiling unless configured otherwise.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Items (spans, log records) per export call unless configured otherwise.
pub const DEFAULT_MAX_BATCH_ITEMS: usize = 512;
/// Longest an item waits for its export call unless configured otherwise.
pub const DEFAULT_MAX_BATCH_DELAY: Duration = Duration::from_secs(1);
/// Characters of a status message quoted in errors.
const MAX_MESSAGE: usize = 200;

/// Where and how to export.
#[derive(Clone)]
pub struct OtlpConfig {
    /// `http://host:port` of the OTLP/gRPC receiver, usually port 4317.
    pub endpoint: String,
    /// gRPC metadata sent with every call; names are lowercased.
    pub headers: Vec<(String, String)>,
    /// Basic auth user and password (`authorization: Basic …`).
    pub basic_auth: Option<(String, String)>,
    /// Bearer token (`authorization: Bearer …`).
    pub bearer_token: Option<String>,
    /// A file holding the bearer token, read again when it changes.
    pub bearer_token_file: Option<std::path::PathBuf>,
    /// Tenant, sent as `x-scope-orgid`.
    pub tenant: Option<String>,
    /// Timeout of one export call (also bounds connecting).
    pub timeout: Duration,
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// Backoff before the first retry; doubles per retry.
    pub initial_backoff: Duration,
    /// Backoff ceiling.
    pub max_backoff: Duration,
    /// Most items (spans, log records) per export call.
    pub max_batch_items: usize,
    /// Longest an item waits for more to join its export call.
    pub max_batch_delay: Duration,
    /// CA file, client certificate, server name (`https://` only).
    pub tls: crate::tls::TlsSettings,
}

impl OtlpConfig {
    /// Defaults for everything but the endpoint.
    pub fn new(endpoint: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            headers: Vec::new(),
            basic_auth: None,
            bearer_token: None,
            bearer_token_file: None,
            tenant: None,
            timeout: DEFAULT_TIMEOUT,
            max_retries: DEFAULT_MAX_RETRIES,
            initial_backoff: DEFAULT_INITIAL_BACKOFF,
            max_backoff: DEFAULT_MAX_BACKOFF,
            max_batch_items: DEFAULT_MAX_BATCH_ITEMS,
            max_batch_delay: DEFAULT_MAX_BATCH_DELAY,
            tls: crate::tls::TlsSettings::default(),
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
            .field(
                "basic_auth",
                &self.basic_auth.as_ref().map(|(u, _)| (u, "<redacted>")),
            )
            .field(
                "bearer_token",
                &self.bearer_token.as_ref().map(|_| "<redacted>"),
            )
            .field("bearer_token_file", &self.bearer_token_file)
            .field("tenant", &self.tenant)
            .field("timeout", &self.timeout)
            .field("max_retries", &self.max_retries)
            .field("initial_backoff", &self.initial_backoff)
            .field("max_backoff", &self.max_backoff)
            .field("max_batch_items", &self.max_batch_items)
            .field("max_batch_delay", &self.max_batch_delay)
            .field("tls", &self.tls)
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
    /// The endpoint's scheme is neither `http` nor `https`.
    #[error("unsupported scheme in otlp endpoint {endpoint:?}: use http://host:4317 or https://")]
    UnsupportedScheme {
        /// The endpoint as configured.
        endpoint: String,
    },
    /// The TLS settings cannot be used.
    #[error("otlp endpoint {endpoint:?} tls settings: {source}")]
    Tls {
        /// The endpoint as configured.
        endpoint: String,
        /// Why.
        #[source]
        source: crate::tls::TlsError,
    },
    /// A header name or value is not valid gRPC metadata.
    #[error("the otlp header {name:?} is not valid grpc metadata (ascii, no control characters)")]
    InvalidHeader {
        /// The header name as configured.
        name: String,
    },
    /// Basic auth, bearer token and bearer token file are exclusive.
    #[error("otlp basic auth, bearer token and bearer token file are exclusive; configure one")]
    ConflictingAuth,
    /// The bearer token file cannot be read, or is empty.
    #[error("the otlp bearer token file {path:?} cannot be used: {source}")]
    TokenFile {
        /// The file as configured.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
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
        "otlp export of {items} {signal} item(s) to {endpoint} failed with {code:?} after {attempts} attempt(s): {message}"
    )]
    Status {
        /// `spans` or `logs`.
        signal: &'static str,
        /// The endpoint.
        endpoint: String,
        /// Items in the failed call.
        items: u64,
        /// The last gRPC status code.
        code: Code,
        /// Its message.
        message: String,
        /// Attempts made.
        attempts: u32,
    },
    /// The receiver accepted the call but rejected some items.
    #[error("otlp receiver {endpoint} rejected {rejected} {signal} item(s): {message}")]
    Rejected {
        /// `spans` or `logs`.
        signal: &'static str,
        /// The endpoint.
        endpoint: String,
        /// Items rejected.
        rejected: u64,
        /// The receiver's explanation.
        message: String,
    },
}

/// A validated endpoint with its channel, metadata, retry policy and batching: the part every
/// OTLP sink shares.
#[derive(Debug, Clone)]
pub struct OtlpClient {
    channel: Channel,
    endpoint: String,
    metadata: MetadataMap,
    token_file: Option<Arc<crate::secret_file::SecretFile>>,
    max_retries: u32,
    backoff: Backoff,
    batching: Batching,
}

impl OtlpClient {
    /// Validates the configuration and prepares the (lazily connecting) channel. Must be called
    /// inside a tokio runtime.
    pub fn new(config: &OtlpConfig) -> Result<Self, OtlpConfigError> {
        let endpoint = config.endpoint.trim().trim_end_matches('/').to_owned();
        let invalid = |reason: String| OtlpConfigError::InvalidEndpoint {
            endpoint: config.endpoint.clone(),
            reason,
        };
        let uri = endpoint
            .parse::<tonic::codegen::http::Uri>()
            .map_err(|e| invalid(e.to_string()))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            Some(_) => {
                return Err(OtlpConfigError::UnsupportedScheme {
                    endpoint: config.endpoint.clone(),
                });
            }
            None => return Err(invalid("a scheme is required: http://host:4317".into())),
        };
        if uri.host().is_none_or(str::is_empty) {
            return Err(invalid("a host is required".into()));
        }
        let tls_error = |source| OtlpConfigError::Tls {
            endpoint: config.endpoint.clone(),
            source,
        };
        let tls = if https {
            Some(Arc::new(
                config.tls.client_config(&[b"h2"]).map_err(tls_error)?,
            ))
        } else if config.tls.is_customized() {
            return Err(tls_error(crate::tls::TlsError::NotHttps));
        } else {
            None
        };
        let mut metadata = MetadataMap::new();
        for (name, value) in &config.headers {
            let bad = || OtlpConfigError::InvalidHeader { name: name.clone() };
            let key = AsciiMetadataKey::from_str(&name.to_ascii_lowercase()).map_err(|_| bad())?;
            let value = AsciiMetadataValue::from_str(value).map_err(|_| bad())?;
            metadata.insert(key, value);
        }
        let auths = [
            config.basic_auth.is_some(),
            config.bearer_token.is_some(),
            config.bearer_token_file.is_some(),
        ];
        if auths.iter().filter(|a| **a).count() > 1 {
            return Err(OtlpConfigError::ConflictingAuth);
        }
        let secret = |name: &str, value: String| {
            let mut v = AsciiMetadataValue::from_str(&value).map_err(|_| {
                OtlpConfigError::InvalidHeader {
                    name: name.to_owned(),
                }
            })?;
            v.set_sensitive(true);
            Ok::<_, OtlpConfigError>(v)
        };
        if let Some((user, password)) = &config.basic_auth {
            let v = secret(
                "basic auth",
                format!("Basic {}", base64(format!("{user}:{password}").as_bytes())),
            )?;
            metadata.insert("authorization", v);
        }
        if let Some(token) = &config.bearer_token {
            metadata.insert(
                "authorization",
                secret("bearer token", format!("Bearer {token}"))?,
            );
        }
        if let Some(tenant) = &config.tenant {
            let v = AsciiMetadataValue::from_str(tenant).map_err(|_| {
                OtlpConfigError::InvalidHeader {
                    name: "tenant".to_owned(),
                }
            })?;
            metadata.insert("x-scope-orgid", v);
        }
        let token_file = match &config.bearer_token_file {
            Some(path) => Some(Arc::new(
                crate::secret_file::SecretFile::open(path).map_err(|source| {
                    OtlpConfigError::TokenFile {
                        path: path.clone(),
                        source,
                    }
                })?,
            )),
            None => None,
        };
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(OtlpConfigError::NoRuntime);
        }
        let connect_timeout = config.timeout.min(Duration::from_secs(5));
        let endpoint_builder = Endpoint::from(uri)
            .timeout(config.timeout)
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true);
        let channel = match tls {
            None => endpoint_builder.connect_lazy(),
            Some(tls) => endpoint_builder.connect_with_connector_lazy(tower::service_fn(
                move |uri: tonic::codegen::http::Uri| {
                    let tls = tls.clone();
                    async move {
                        tokio::time::timeout(connect_timeout, connect_tls(uri, tls))
                            .await
                            .map_err(|_| {
                                std::io::Error::new(
                                    std::io::ErrorKind::TimedOut,
                                    "tls connect timed out",
                                )
                            })?
                    }
                },
            )),
        };
        Ok(Self {
            channel,
            endpoint,
            metadata,
            token_file,
            max_retries: config.max_retries,
            backoff: Backoff::new(config.initial_backoff, config.max_backoff),
            batching: Batching {
                max_items: config.max_batch_items.max(1),
                max_delay: config.max_batch_delay,
            },
        })
    }

    /// The endpoint exported to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// How the lane batches for this endpoint.
    pub fn batching(&self) -> Batching {
        self.batching
    }

    /// Sends one encoded export request (`payload`, holding `payload.items` items of `signal`) to
    /// the gRPC method `path`; with `retry`, retries as configured, else makes one attempt.
    pub async fn send(
        &self,
        signal: &'static str,
        path: &'static str,
        payload: Payload,
        retry: bool,
    ) -> Sent<OtlpExportError> {
        let items = payload.items;
        let max_retries = if retry { self.max_retries } else { 0 };
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let mut req = tonic::Request::new(payload.body.clone());
            *req.metadata_mut() = self.metadata.clone();
            if let Some(file) = &self.token_file
                && let Ok(mut v) =
                    AsciiMetadataValue::from_str(&format!("Bearer {}", file.current()))
            {
                v.set_sensitive(true);
                req.metadata_mut().insert("authorization", v);
            }
            let retries = u64::from(attempt - 1);
            match self.call(path, req).await {
                Ok(response) => {
                    let partial = response.partial_success.unwrap_or_default();
                    let rejected = u64::try_from(partial.rejected).unwrap_or(0).min(items);
                    let error = if rejected > 0 {
                        Some(OtlpExportError::Rejected {
                            signal,
                            endpoint: self.endpoint.clone(),
                            rejected,
                            message: cut(&partial.error_message, MAX_MESSAGE),
                        })
                    } else {
                        if !partial.error_message.is_empty() {
                            tracing::debug!(endpoint = %self.endpoint, signal, message = %partial.error_message, "otlp receiver warning");
                        }
                        None
                    };
                    return Sent {
                        delivery: Delivery::Accepted { rejected, error },
                        retries,
                    };
                }
                Err(status) => {
                    let code = effective_code(&status);
                    if attempt > max_retries || !retryable(code) {
                        let error = OtlpExportError::Status {
                            signal,
                            endpoint: self.endpoint.clone(),
                            items,
                            code,
                            message: cut(status.message(), MAX_MESSAGE),
                            attempts: attempt,
                        };
                        let delivery = if retryable(code) {
                            Delivery::Unreachable(error)
                        } else {
                            Delivery::Refused(error)
                        };
                        return Sent { delivery, retries };
                    }
                    let delay = self.backoff.delay(attempt);
                    tracing::debug!(endpoint = %self.endpoint, signal, attempt, ?delay, ?code, message = status.message(), "retrying otlp export");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// One unary call of `path` with an already encoded request.
    async fn call(
        &self,
        path: &'static str,
        request: tonic::Request<Bytes>,
    ) -> Result<ExportResponse, tonic::Status> {
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        grpc.ready()
            .await
            .map_err(|e| tonic::Status::unavailable(format!("channel not ready: {e}")))?;
        let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
        Ok(grpc.unary(request, path, EncodedCodec).await?.into_inner())
    }
}

/// `Export*ServiceResponse` of every OTLP signal: field 1, `partial_success`, whose field 1 is
/// the count rejected (`rejected_spans`, `rejected_log_records`…) and field 2 the message.
#[derive(Clone, PartialEq, prost::Message)]
struct ExportResponse {
    #[prost(message, optional, tag = "1")]
    partial_success: Option<PartialSuccessFields>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct PartialSuccessFields {
    #[prost(int64, tag = "1")]
    rejected: i64,
    #[prost(string, tag = "2")]
    error_message: String,
}

/// A gRPC codec whose requests are protobuf bodies encoded already (what the spool keeps) and
/// whose responses are [`ExportResponse`]s.
#[derive(Debug, Clone, Copy, Default)]
struct EncodedCodec;

impl tonic::codec::Codec for EncodedCodec {
    type Encode = Bytes;
    type Decode = ExportResponse;
    type Encoder = EncodedCodec;
    type Decoder = EncodedCodec;

    fn encoder(&mut self) -> Self::Encoder {
        EncodedCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        EncodedCodec
    }
}

impl tonic::codec::Encoder for EncodedCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Bytes,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for EncodedCodec {
    type Item = ExportResponse;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<ExportResponse>, tonic::Status> {
        ExportResponse::decode(src)
            .map(Some)
            .map_err(|e| tonic::Status::internal(format!("undecodable otlp response: {e}")))
    }
}

/// Standard base64 with padding (RFC 4648), for basic auth.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// TCP, then TLS with `tls` (ALPN h2), to the endpoint's host and port (443 by default).
async fn connect_tls(
    uri: tonic::codegen::http::Uri,
    tls: Arc<rustls::ClientConfig>,
) -> std::io::Result<hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>>
{
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, m.to_owned());
    let host = uri
        .host()
        .ok_or_else(|| bad("no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
    tcp.set_nodelay(true)?;
    let name = rustls::pki_types::ServerName::try_from(host)
        .map_err(|_| bad("the host is not a DNS name or an IP address"))?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await?;
    Ok(hyper_util::rt::TokioIo::new(stream))
}

/// The code a failed call counts as. A status the client made up from a local error has that
/// error as its source: tonic gives a connection closed before the answer `Cancelled` ("operation
/// was canceled"; this client never cancels a call itself) and a reset connection or failed
/// handshake `Unknown` ("transport error"). Both are a receiver that cannot be reached now,
/// `Unavailable`, as gRPC's own clients report it. A status the receiver sent has no source and
/// keeps its code.
pub(crate) fn effective_code(status: &tonic::Status) -> Code {
    match status.code() {
        Code::Unknown | Code::Cancelled if std::error::Error::source(status).is_some() => {
            Code::Unavailable
        }
        code => code,
    }
}

/// Whether a call that failed with `code` may succeed if sent again.
fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable | Code::ResourceExhausted | Code::DeadlineExceeded | Code::Aborted
    )
}
