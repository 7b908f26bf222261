//! HTTP client construction: reqwest over rustls with the `ring` crypto provider (no aws-lc, no
//! cmake), configured here instead of through a process-wide default provider.
//!
//! reqwest is built with `rustls-no-provider`, so a client must always be handed a ready rustls
//! config: building one without it would need a global provider. Use [`client_builder`].

use std::sync::Arc;

use rustls::ClientConfig;
use rustls::crypto::CryptoProvider;

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
