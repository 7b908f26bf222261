//! HTTP clients: reqwest over rustls with the `ring` crypto provider (no aws-lc, no cmake),
//! configured here instead of through a process-wide default provider, and [`PushClient`], the
//! push endpoint (URL, TLS, auth, tenant, retries) the Pyroscope and Loki sinks share.
//!
//! reqwest is built with `rustls-no-provider`, so a client must always be handed a ready rustls
//! config: building one without it would need a global provider. Use [`client_builder`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use reqwest::{StatusCode, Url};
use rustls::ClientConfig;
use rustls::crypto::CryptoProvider;

use crate::retry::Backoff;
use crate::secret_file::SecretFile;
use crate::tls::{TlsError, TlsSettings};

/// A reqwest client builder with TLS ready. With `verify_with_system_roots`, server certificates
/// are checked against the system's CA roots (`SSL_CERT_FILE` / `SSL_CERT_DIR` are honoured);
/// without it no root is trusted, which suits `http://` endpoints.
pub fn client_builder(
    verify_with_system_roots: bool,
) -> Result<reqwest::ClientBuilder, rustls::Error> {
    let provider: Arc<CryptoProvider> = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let mut config = if verify_with_system_roots {
        let verifier = rustls_platform_verifier::Verifier::new(provider)?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth()
    } else {
        builder
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth()
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(reqwest::Client::builder()
        .tls_backend_preconfigured(config)
        .http1_only()
        .user_agent(concat!("loupe/", env!("CARGO_PKG_VERSION"))))
}

/// Longest `Retry-After` honoured; longer ones are cut to this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// Response body bytes quoted in errors.
pub const ERROR_BODY_PREFIX: usize = 200;

/// How to reach one HTTP push endpoint: what [`PushClient::new`] validates.
#[derive(Clone)]
pub struct PushSettings<'a> {
    /// The sink, in messages: `pyroscope`, `loki`.
    pub sink: &'static str,
    /// Base URL as configured, `http://` or `https://`.
    pub base_url: &'a str,
    /// Path appended to the base URL (`/loki/api/v1/push`).
    pub path: &'static str,
    /// HTTP basic auth user and password.
    pub basic_auth: Option<(String, String)>,
    /// Bearer token (`Authorization: Bearer …`); exclusive with `basic_auth`.
    pub bearer_token: Option<String>,
    /// A file holding the bearer token, read again when it changes; exclusive with the others.
    pub bearer_token_file: Option<PathBuf>,
    /// Tenant, sent as `X-Scope-OrgID`.
    pub tenant: Option<String>,
    /// Headers of every request (`Content-Type`, …).
    pub headers: &'a [(&'static str, &'static str)],
    /// Timeout of one request.
    pub timeout: Duration,
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// Backoff before the first retry and its ceiling.
    pub backoff: Backoff,
    /// CA file, client certificate, server name (`https://` only).
    pub tls: TlsSettings,
}

/// Errors in an HTTP push sink's configuration.
#[derive(Debug, thiserror::Error)]
pub enum HttpConfigError {
    /// The URL does not parse.
    #[error("invalid {sink} url {url:?}: {reason}")]
    InvalidUrl {
        /// The sink.
        sink: &'static str,
        /// The URL as configured.
        url: String,
        /// Why it does not parse.
        reason: String,
    },
    /// The URL scheme is neither `http` nor `https`.
    #[error("unsupported scheme {scheme:?} in {sink} url {url:?}: use http or https")]
    UnsupportedScheme {
        /// The sink.
        sink: &'static str,
        /// The URL as configured.
        url: String,
        /// The scheme found.
        scheme: String,
    },
    /// Both basic auth and a bearer token were configured.
    #[error("{sink} basic auth, bearer token and bearer token file are exclusive; configure one")]
    ConflictingAuth {
        /// The sink.
        sink: &'static str,
    },
    /// The bearer token file cannot be read, or is empty.
    #[error("the {sink} bearer token file {path:?} cannot be used: {source}")]
    TokenFile {
        /// The sink.
        sink: &'static str,
        /// The file as configured.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A header value holds characters HTTP does not allow (line breaks, control characters).
    #[error("the {sink} {what} contains characters not allowed in an http header")]
    InvalidHeader {
        /// The sink.
        sink: &'static str,
        /// Which setting.
        what: &'static str,
    },
    /// The TLS configuration could not be built (for example no system CA certificates).
    #[error("building tls for {sink} url {url:?} failed: {source}")]
    Tls {
        /// The sink.
        sink: &'static str,
        /// The URL as configured.
        url: String,
        /// The rustls error.
        #[source]
        source: rustls::Error,
    },
    /// TLS settings given for an `http://` URL, or that cannot be used.
    #[error("{sink} tls settings: {source}")]
    TlsSettings {
        /// The sink.
        sink: &'static str,
        /// Why.
        #[source]
        source: TlsError,
    },
    /// The HTTP client could not be built.
    #[error("building the {sink} http client failed: {source}")]
    Client {
        /// The sink.
        sink: &'static str,
        /// The reqwest error.
        #[source]
        source: reqwest::Error,
    },
}

/// Why a push failed in the end.
#[derive(Debug)]
pub enum PostError {
    /// The receiver answered with a non-success status.
    Status {
        /// The last HTTP status.
        status: u16,
        /// Attempts made.
        attempts: u32,
        /// The first [`ERROR_BODY_PREFIX`] bytes of the last response body.
        body: String,
    },
    /// The request could not be sent or answered (connection, timeout).
    Transport {
        /// Attempts made.
        attempts: u32,
        /// The last transport error.
        source: reqwest::Error,
    },
}

/// An HTTP client for one push URL: TLS, authentication and tenant headers set once, bounded
/// retries on 429, 502, 503, 504 and transport errors with exponential backoff and jitter,
/// `Retry-After` (seconds) honoured. Other statuses fail at once. Shared by the Pyroscope and
/// Loki sinks.
#[derive(Debug)]
pub struct PushClient {
    client: reqwest::Client,
    url: Url,
    basic_auth: Option<(String, String)>,
    token_file: Option<SecretFile>,
    max_retries: u32,
    backoff: Backoff,
    sink: &'static str,
}

impl PushClient {
    /// Validates the settings and builds the client.
    pub fn new(s: PushSettings<'_>) -> Result<Self, HttpConfigError> {
        let sink = s.sink;
        let invalid = |reason: String| HttpConfigError::InvalidUrl {
            sink,
            url: s.base_url.to_owned(),
            reason,
        };
        let base = Url::parse(s.base_url.trim()).map_err(|e| invalid(e.to_string()))?;
        let https = match base.scheme() {
            "http" => false,
            "https" => true,
            other => {
                return Err(HttpConfigError::UnsupportedScheme {
                    sink,
                    url: s.base_url.to_owned(),
                    scheme: other.to_owned(),
                });
            }
        };
        if base.query().is_some() || base.fragment().is_some() {
            return Err(invalid("a query or fragment is not allowed".to_owned()));
        }
        let url = Url::parse(&format!(
            "{}{}",
            base.as_str().trim_end_matches('/'),
            s.path
        ))
        .map_err(|e| invalid(e.to_string()))?;
        let auths = [
            s.basic_auth.is_some(),
            s.bearer_token.is_some(),
            s.bearer_token_file.is_some(),
        ];
        if auths.iter().filter(|a| **a).count() > 1 {
            return Err(HttpConfigError::ConflictingAuth { sink });
        }
        let token_file = match &s.bearer_token_file {
            Some(path) => {
                Some(
                    SecretFile::open(path).map_err(|source| HttpConfigError::TokenFile {
                        sink,
                        path: path.clone(),
                        source,
                    })?,
                )
            }
            None => None,
        };

        let mut headers = HeaderMap::new();
        if let Some(token) = &s.bearer_token {
            let mut v = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                HttpConfigError::InvalidHeader {
                    sink,
                    what: "bearer token",
                }
            })?;
            v.set_sensitive(true);
            headers.insert(AUTHORIZATION, v);
        }
        if let Some(tenant) = &s.tenant {
            let v = HeaderValue::from_str(tenant).map_err(|_| HttpConfigError::InvalidHeader {
                sink,
                what: "tenant id",
            })?;
            headers.insert(HeaderName::from_static("x-scope-orgid"), v);
        }
        if let Some((user, pass)) = &s.basic_auth {
            let bad = |s: &str| s.chars().any(char::is_control);
            if bad(user) || bad(pass) || user.contains(':') {
                return Err(HttpConfigError::InvalidHeader {
                    sink,
                    what: "basic auth user or password",
                });
            }
        }
        for (name, value) in s.headers {
            headers.insert(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }

        let builder = if https {
            let config = s
                .tls
                .client_config(&[b"http/1.1"])
                .map_err(|source| HttpConfigError::TlsSettings { sink, source })?;
            reqwest::Client::builder()
                .tls_backend_preconfigured(config)
                .http1_only()
                .user_agent(concat!("loupe/", env!("CARGO_PKG_VERSION")))
        } else {
            if s.tls.is_customized() {
                return Err(HttpConfigError::TlsSettings {
                    sink,
                    source: TlsError::NotHttps,
                });
            }
            client_builder(false).map_err(|source| HttpConfigError::Tls {
                sink,
                url: s.base_url.to_owned(),
                source,
            })?
        };
        let client = builder
            .default_headers(headers)
            .timeout(s.timeout)
            .connect_timeout(s.timeout.min(Duration::from_secs(5)))
            .build()
            .map_err(|source| HttpConfigError::Client { sink, source })?;
        Ok(Self {
            client,
            url,
            basic_auth: s.basic_auth,
            token_file,
            max_retries: s.max_retries,
            backoff: s.backoff,
            sink,
        })
    }

    /// The full push URL.
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// The wait before retry number `retry` (1-based) when the receiver names none.
    pub fn backoff(&self, retry: u32) -> Duration {
        self.backoff.delay(retry)
    }

    /// POSTs `body`, retrying as configured. Returns the result and the number of retries.
    pub async fn post(&self, body: Bytes) -> (Result<(), PostError>, u64) {
        self.post_with(body, true).await
    }

    /// POSTs `body`; with `retry`, retries as configured, else makes one attempt.
    pub async fn post_with(&self, body: Bytes, retry: bool) -> (Result<(), PostError>, u64) {
        let max_retries = if retry { self.max_retries } else { 0 };
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let mut request = self.client.post(self.url.clone()).body(body.clone());
            if let Some((user, pass)) = &self.basic_auth {
                request = request.basic_auth(user, Some(pass));
            }
            if let Some(token) = &self.token_file {
                // reqwest marks the header sensitive.
                request = request.bearer_auth(token.current());
            }
            let can_retry = attempt <= max_retries;
            let retries = u64::from(attempt - 1);
            let retry_after = match request.send().await {
                Ok(response) if response.status().is_success() => {
                    // Drain the (tiny) body so the connection returns to the pool.
                    let _ = response.bytes().await;
                    return (Ok(()), retries);
                }
                Ok(response) => {
                    let status = response.status();
                    let retry_after = response
                        .headers()
                        .get(RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER));
                    let body = body_prefix(response).await;
                    if !can_retry || !retryable_status(status) {
                        let error = PostError::Status {
                            status: status.as_u16(),
                            attempts: attempt,
                            body,
                        };
                        return (Err(error), retries);
                    }
                    tracing::debug!(sink = self.sink, attempt, status = status.as_u16(), %body, "retrying push");
                    retry_after
                }
                Err(e) => {
                    let transient = e.is_connect() || e.is_timeout() || e.is_request();
                    if !can_retry || !transient {
                        let error = PostError::Transport {
                            attempts: attempt,
                            source: e.without_url(),
                        };
                        return (Err(error), retries);
                    }
                    tracing::debug!(sink = self.sink, attempt, error = %e, "retrying push");
                    None
                }
            };
            tokio::time::sleep(retry_after.unwrap_or_else(|| self.backoff.delay(attempt))).await;
        }
    }
}

impl PostError {
    /// Whether the same request may succeed later: a transport failure, or 429, 502, 503, 504.
    pub fn is_transient(&self) -> bool {
        match self {
            PostError::Status { status, .. } => StatusCode::from_u16(*status)
                .map(retryable_status)
                .unwrap_or(false),
            PostError::Transport { .. } => true,
        }
    }
}

/// Whether a push answered with `status` may succeed if sent again.
pub fn retryable_status(status: StatusCode) -> bool {
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
