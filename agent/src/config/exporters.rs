//! Validation of one exporter's settings: its URL, credentials and TLS files, each mistake
//! reported with the key that holds it.

use super::*;

/// The keys of one push backend's options, for error messages.
pub(super) struct PushKeys {
    url: &'static str,
    user: &'static str,
    password: &'static str,
    token: &'static str,
    token_file: &'static str,
}

impl PushKeys {
    pub(super) const PYROSCOPE: PushKeys = PushKeys {
        url: "pyroscope_url",
        user: "pyroscope_user",
        password: "pyroscope_password",
        token: "pyroscope_token",
        token_file: "pyroscope_token_file",
    };
    pub(super) const OTLP: PushKeys = PushKeys {
        url: "otlp_endpoint",
        user: "otlp_user",
        password: "otlp_password",
        token: "otlp_token",
        token_file: "otlp_token_file",
    };
    pub(super) const LOKI: PushKeys = PushKeys {
        url: "loki_url",
        user: "loki_user",
        password: "loki_password",
        token: "loki_token",
        token_file: "loki_token_file",
    };
}

/// `url` without trailing slashes when it is an `http://` or `https://` URL with a host; else an
/// error naming `key`, its message ending with `example`.
pub(super) fn http_url(key: &'static str, url: &str, example: &str) -> Result<String, ConfigError> {
    let url = url.trim_end_matches('/');
    let host = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    if host.is_none_or(str::is_empty) {
        return Err(invalid(
            key,
            format!("{url:?}: must be an http:// or https:// URL{example}"),
        ));
    }
    Ok(url.to_string())
}

/// Validates one push backend's options: an http(s) URL, basic auth complete or absent, and
/// not together with a bearer token.
pub(super) fn push_options(
    keys: PushKeys,
    url: Option<String>,
    user: Option<String>,
    password: Option<String>,
    token: Option<String>,
    token_file: Option<PathBuf>,
    tenant: Option<String>,
) -> Result<Option<PushOptions>, ConfigError> {
    let Some(url) = url else { return Ok(None) };
    let url = http_url(keys.url, &url, "")?;
    let basic_auth = match (user, password) {
        (Some(u), Some(p)) => Some((u, p)),
        (None, None) => None,
        (Some(_), None) => {
            return Err(invalid(
                keys.password,
                format!("{} is set but no password", keys.user),
            ));
        }
        (None, Some(_)) => {
            return Err(invalid(
                keys.user,
                format!("{} is set but no user", keys.password),
            ));
        }
    };
    if basic_auth.is_some() && token.is_some() {
        return Err(invalid(
            keys.token,
            "set either a bearer token or basic auth, not both",
        ));
    }
    if token_file.is_some() && (token.is_some() || basic_auth.is_some()) {
        return Err(invalid(
            keys.token_file,
            "set one of a bearer token file, a bearer token or basic auth",
        ));
    }
    if let Some(path) = &token_file {
        // Checked at start-up so that a typo is one clear line, not a failing sink.
        match std::fs::read_to_string(path) {
            Ok(t) if !t.trim().is_empty() => {}
            Ok(_) => {
                return Err(invalid(
                    keys.token_file,
                    format!("{} is empty", path.display()),
                ));
            }
            Err(e) => return Err(invalid(keys.token_file, format!("{}: {e}", path.display()))),
        }
    }
    Ok(Some(PushOptions {
        url,
        basic_auth,
        bearer_token: token,
        bearer_token_file: token_file,
        tenant_id: tenant,
        tls: Default::default(),
    }))
}

/// The configuration keys of one exporter's TLS settings, for error messages.
pub(super) struct TlsKeys {
    ca: &'static str,
    cert: &'static str,
    key: &'static str,
    name: &'static str,
}

impl TlsKeys {
    pub(super) const OTLP: TlsKeys = TlsKeys {
        ca: "otlp_ca_file",
        cert: "otlp_cert_file",
        key: "otlp_key_file",
        name: "otlp_server_name",
    };
    pub(super) const LOKI: TlsKeys = TlsKeys {
        ca: "loki_ca_file",
        cert: "loki_cert_file",
        key: "loki_key_file",
        name: "loki_server_name",
    };
    pub(super) const PYROSCOPE: TlsKeys = TlsKeys {
        ca: "pyroscope_ca_file",
        cert: "pyroscope_cert_file",
        key: "pyroscope_key_file",
        name: "pyroscope_server_name",
    };
}

/// One exporter's TLS settings, checked now (files readable, PEM, a whole client identity, an
/// `https://` URL) so that a mistake is one clear line at start-up.
pub(super) fn tls_settings(
    keys: TlsKeys,
    url: Option<&str>,
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    server_name: Option<String>,
) -> Result<loupe_collector::tls::TlsSettings, ConfigError> {
    use loupe_collector::tls::{TlsError, TlsSettings};
    let settings = TlsSettings {
        ca_file,
        cert_file,
        key_file,
        server_name,
    };
    if !settings.is_customized() {
        return Ok(settings);
    }
    let first_key = if settings.ca_file.is_some() {
        keys.ca
    } else if settings.cert_file.is_some() {
        keys.cert
    } else if settings.key_file.is_some() {
        keys.key
    } else {
        keys.name
    };
    if !url.is_some_and(|u| u.trim().starts_with("https://")) {
        return Err(invalid(
            first_key,
            "set for an endpoint that is not https:// (TLS settings need TLS)",
        ));
    }
    settings.validate().map_err(|e| {
        let key = match &e {
            TlsError::File { what, .. } if what.starts_with("CA") => keys.ca,
            TlsError::File { what, .. } if what.contains("key") => keys.key,
            TlsError::File { .. } | TlsError::HalfClientIdentity => keys.cert,
            TlsError::ServerName(_) => keys.name,
            _ => first_key,
        };
        invalid(key, e.to_string())
    })?;
    Ok(settings)
}
