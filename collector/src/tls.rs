//! TLS settings of one exporter and the rustls client configuration they make: the system's CA
//! roots, or only the CAs of a file (a private CA); an optional client certificate (mutual TLS);
//! an optional name to verify the server's certificate against when it is not the URL's host (an
//! endpoint reached by IP address, or through a tunnel). rustls with the `ring` provider, as
//! everywhere in Loupe.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};

/// What an exporter's TLS may be told, beyond using it (`https://`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// PEM file of the CA certificates to trust instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// PEM file of the client certificate chain, for servers that require one (with `key_file`).
    pub cert_file: Option<PathBuf>,
    /// PEM file of the client certificate's private key.
    pub key_file: Option<PathBuf>,
    /// The name the server's certificate must carry, when it is not the URL's host.
    pub server_name: Option<String>,
}

/// Why TLS settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file cannot be read or holds no usable PEM item.
    #[error("{what} {path:?}: {reason}")]
    File {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    /// A client certificate without its key, or the other way round.
    #[error("a client certificate needs both a certificate file and a key file")]
    HalfClientIdentity,
    /// The server name is not a DNS name or an IP address.
    #[error("server name {0:?} is not a DNS name or an IP address")]
    ServerName(String),
    /// TLS settings for an endpoint that does not use TLS.
    #[error("set for an endpoint without tls: use https://")]
    NotHttps,
    /// rustls refused the configuration (for example no usable system CA certificates).
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
}

impl TlsSettings {
    /// Whether anything beyond the defaults is set.
    pub fn is_customized(&self) -> bool {
        *self != TlsSettings::default()
    }

    /// The client configuration: these settings, ALPN `alpn` (`h2` for gRPC, `http/1.1`).
    pub fn client_config(&self, alpn: &[&[u8]]) -> Result<ClientConfig, TlsError> {
        let provider: Arc<CryptoProvider> = Arc::new(rustls::crypto::ring::default_provider());
        let verifier: Arc<dyn ServerCertVerifier> = match &self.ca_file {
            Some(path) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in read_certs(path, "CA file")? {
                    roots.add(cert)?;
                }
                rustls::client::WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider.clone(),
                )
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?
            }
            None => Arc::new(rustls_platform_verifier::Verifier::new(provider.clone())?),
        };
        let verifier: Arc<dyn ServerCertVerifier> = match &self.server_name {
            Some(name) => Arc::new(RenamedServer {
                name: ServerName::try_from(name.clone())
                    .map_err(|_| TlsError::ServerName(name.clone()))?,
                inner: verifier,
            }),
            None => verifier,
        };
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut config = match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => {
                let chain = read_certs(cert, "client certificate file")?;
                let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::File {
                    what: "client key file",
                    path: key.clone(),
                    reason: e.to_string(),
                })?;
                builder.with_client_auth_cert(chain, key)?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => return Err(TlsError::HalfClientIdentity),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(config)
    }

    /// Checks every file now, so a typo is one clear line at start-up rather than a sink that
    /// fails at its first export.
    pub fn validate(&self) -> Result<(), TlsError> {
        self.client_config(&[]).map(drop)
    }
}

fn read_certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file_error = |reason: String| TlsError::File {
        what,
        path: path.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(e.to_string()))?;
    if certs.is_empty() {
        return Err(file_error("no PEM certificate in it".into()));
    }
    Ok(certs)
}

/// Verifies the server's certificate against `name` instead of the name the client connected to.
#[derive(Debug)]
struct RenamedServer {
    name: ServerName<'static>,
    inner: Arc<dyn ServerCertVerifier>,
}

impl ServerCertVerifier for RenamedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests;
