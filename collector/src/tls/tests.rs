//! Every exporter over TLS against loopback receivers with a test CA (rcgen): the Pyroscope and
//! Loki pushes (HTTP/1.1, the receiver requiring a client certificate) and OTLP/gRPC (HTTP/2).
//! A CA that did not sign the receiver's certificate fails the export, and it is counted.

use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::sync::mpsc;

use super::*;
use crate::sink::pyroscope::{PyroscopeConfig, PyroscopeSink};
use crate::test_util::{Receiver, TempDir};

/// A CA, and certificates it signed, written as PEM files.
struct Pki {
    dir: TempDir,
    ca: Issuer<'static, KeyPair>,
    ca_pem: String,
}

impl Pki {
    fn new(tag: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("loupe test CA {tag}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let dir = TempDir::new(tag);
        std::fs::write(dir.path().join("ca.pem"), cert.pem()).unwrap();
        Pki {
            dir,
            ca_pem: cert.pem(),
            ca: Issuer::new(params, key),
        }
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A leaf certificate for `names`, signed by the CA: (certificate DER, key DER), also written
    /// as `<file>.pem` and `<file>.key`.
    fn leaf(
        &self,
        names: &[&str],
        file: &str,
    ) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
        let params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        std::fs::write(self.dir.path().join(format!("{file}.pem")), cert.pem()).unwrap();
        std::fs::write(
            self.dir.path().join(format!("{file}.key")),
            key.serialize_pem(),
        )
        .unwrap();
        (
            cert.der().clone(),
            PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
        )
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A server config presenting a certificate for `receiver.test`; with `client_ca`, it
    /// requires a client certificate signed by it.
    fn server(&self, alpn: &[u8], client_ca: bool) -> Arc<rustls::ServerConfig> {
        let (cert, key) = self.leaf(&["receiver.test"], "server");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = if client_ca {
            let mut roots = rustls::RootCertStore::empty();
            let ca = CertificateDer::from_pem_slice(self.ca_pem.as_bytes()).unwrap();
            roots.add(ca).unwrap();
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let mut config = builder.with_single_cert(vec![cert], key).unwrap();
        config.alpn_protocols = vec![alpn.to_vec()];
        Arc::new(config)
    }
}

fn pyroscope(url: String, tls: TlsSettings) -> PyroscopeSink {
    PyroscopeSink::new(
        PyroscopeConfig {
            max_retries: 0,
            timeout: Duration::from_secs(5),
            tls,
            ..PyroscopeConfig::new(url)
        },
        Vec::new(),
    )
    .unwrap()
}

fn profile_batch() -> Arc<crate::profile::ProfileBatch> {
    use crate::profile::{Frame, FrameLine, ServiceProfile, StackSample};
    Arc::new(crate::profile::ProfileBatch {
        start_unix_nanos: 1_700_000_000_000_000_000,
        duration_nanos: 10_000_000_000,
        period_nanos: 10_000_000,
        kind: Default::default(),
        profiles: vec![ServiceProfile {
            service_name: "checkout".into(),
            labels: Vec::new(),
            samples: vec![StackSample {
                pid: 1,
                thread_name: "main".into(),
                count: 3,
                objects: 0,
                frames: vec![Frame {
                    address: 1,
                    mapping: None,
                    lines: vec![FrameLine::function("main")].into(),
                }],
                span: None,
            }],
        }],
    })
}

#[tokio::test]
async fn pushes_trust_a_ca_file_and_present_a_client_certificate() {
    use crate::export::Sink;
    let pki = Pki::new("push");
    let mut rx = Receiver::start_tls(vec![], pki.server(b"http/1.1", true)).await;
    pki.leaf(&["loupe-agent"], "client");
    // The receiver is reached by address; its certificate names `receiver.test`.
    let url = format!("https://{}", rx.addr);
    let tls = TlsSettings {
        ca_file: Some(pki.ca_file()),
        cert_file: Some(pki.path("client.pem")),
        key_file: Some(pki.path("client.key")),
        server_name: Some("receiver.test".into()),
    };
    let report = pyroscope(url.clone(), tls.clone())
        .export(profile_batch())
        .await;
    assert!(report.is_success(), "{:?}", report.errors);
    assert_eq!(rx.drain().len(), 1);

    // Loki's push goes through the same client.
    let loki = crate::logs::loki::LokiSink::new(crate::logs::loki::LokiConfig {
        max_retries: 0,
        tls: tls.clone(),
        ..crate::logs::loki::LokiConfig::new(url.clone())
    })
    .unwrap();
    let report = loki
        .export(Arc::new(crate::logs::loki::tests::sample()))
        .await;
    assert!(report.is_success(), "{:?}", report.errors);
    assert_eq!(rx.drain().len(), 1);

    // Without the client certificate, the receiver refuses the handshake.
    let no_cert = TlsSettings {
        cert_file: None,
        key_file: None,
        ..tls.clone()
    };
    let report = pyroscope(url.clone(), no_cert)
        .export(profile_batch())
        .await;
    assert_eq!(report.items_failed, 1, "{:?}", report.errors);

    // Without the name override, the certificate does not match the address.
    let no_name = TlsSettings {
        server_name: None,
        ..tls
    };
    let report = pyroscope(url, no_name).export(profile_batch()).await;
    assert_eq!(report.items_failed, 1);
    let text = format!("{:?}", report.errors);
    assert!(text.contains("NotValidForName"), "{text}");
}

#[tokio::test]
async fn a_ca_that_did_not_sign_the_receiver_fails_and_is_counted() {
    use crate::export::Sink;
    let pki = Pki::new("right");
    let other = Pki::new("wrong");
    let mut rx = Receiver::start_tls(vec![], pki.server(b"http/1.1", false)).await;
    let tls = TlsSettings {
        ca_file: Some(other.ca_file()),
        server_name: Some("receiver.test".into()),
        ..TlsSettings::default()
    };
    let report = pyroscope(format!("https://{}", rx.addr), tls)
        .export(profile_batch())
        .await;
    assert_eq!((report.items_exported, report.items_failed), (0, 1));
    let text = format!("{:?}", report.errors);
    assert!(text.contains("UnknownIssuer"), "{text}");
    assert!(rx.drain().is_empty());
}

#[test]
fn bad_settings_are_one_clear_error() {
    let pki = Pki::new("bad");
    let missing = TlsSettings {
        ca_file: Some(pki.path("nope.pem")),
        ..TlsSettings::default()
    };
    let e = missing.validate().unwrap_err().to_string();
    assert!(e.starts_with("CA file") && e.contains("nope.pem"), "{e}");
    std::fs::write(pki.path("empty.pem"), "not pem").unwrap();
    let empty = TlsSettings {
        ca_file: Some(pki.path("empty.pem")),
        ..TlsSettings::default()
    };
    assert!(
        empty
            .validate()
            .unwrap_err()
            .to_string()
            .contains("no PEM certificate")
    );
    pki.leaf(&["x"], "client");
    let half = TlsSettings {
        cert_file: Some(pki.path("client.pem")),
        ..TlsSettings::default()
    };
    assert!(matches!(half.validate(), Err(TlsError::HalfClientIdentity)));
    // TLS settings on an http:// endpoint are a mistake, not silently ignored.
    let e = crate::http::PushClient::new(crate::http::PushSettings {
        sink: "pyroscope",
        base_url: "http://127.0.0.1:1",
        path: "/x",
        basic_auth: None,
        bearer_token: None,
        bearer_token_file: None,
        tenant: None,
        headers: &[],
        timeout: Duration::from_secs(1),
        max_retries: 0,
        backoff: crate::retry::Backoff::new(Duration::from_millis(1), Duration::from_millis(1)),
        tls: TlsSettings {
            ca_file: Some(pki.ca_file()),
            ..TlsSettings::default()
        },
    })
    .unwrap_err();
    assert!(e.to_string().contains("use https://"), "{e}");
}

/// A stream the tonic server accepts: TLS over TCP.
struct TlsIo(tokio_rustls::server::TlsStream<tokio::net::TcpStream>);

impl tonic::transport::server::Connected for TlsIo {
    type ConnectInfo = ();
    fn connect_info(&self) {}
}

impl tokio::io::AsyncRead for TlsIo {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for TlsIo {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

struct Traces(mpsc::UnboundedSender<usize>);

#[tonic::async_trait]
impl crate::traces::proto::collector::trace_service_server::TraceService for Traces {
    async fn export(
        &self,
        request: tonic::Request<crate::traces::proto::collector::ExportTraceServiceRequest>,
    ) -> Result<
        tonic::Response<crate::traces::proto::collector::ExportTraceServiceResponse>,
        tonic::Status,
    > {
        let spans = request
            .into_inner()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        let _ = self.0.send(spans);
        Ok(tonic::Response::new(Default::default()))
    }
}

#[tokio::test]
async fn otlp_exports_over_tls_to_a_grpc_receiver() {
    use crate::export::Sink;
    let pki = Pki::new("otlp");
    let acceptor = tokio_rustls::TlsAcceptor::from(pki.server(b"h2", false));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, mut got) = mpsc::unbounded_channel();
    let (conns_tx, conns_rx) = mpsc::unbounded_channel::<Result<TlsIo, std::io::Error>>();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (acceptor, conns_tx) = (acceptor.clone(), conns_tx.clone());
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(tcp).await {
                    let _ = conns_tx.send(Ok(TlsIo(tls)));
                }
            });
        }
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(
                crate::traces::proto::collector::trace_service_server::TraceServiceServer::new(
                    Traces(tx),
                ),
            )
            .serve_with_incoming(tokio_stream::wrappers::UnboundedReceiverStream::new(
                conns_rx,
            )),
    );
    let config = |tls: TlsSettings| crate::otlp::OtlpConfig {
        max_retries: 0,
        timeout: Duration::from_secs(5),
        tls,
        ..crate::otlp::OtlpConfig::new(format!("https://{addr}"))
    };
    let tls = TlsSettings {
        ca_file: Some(pki.ca_file()),
        server_name: Some("receiver.test".into()),
        ..TlsSettings::default()
    };
    let sink = crate::traces::otlp::OtlpTraceSink::new(config(tls)).unwrap();
    let report = sink
        .export(Arc::new(crate::traces::otlp::tests::batch(2)))
        .await;
    assert!(report.is_success(), "{:?}", report.errors);
    assert_eq!(got.recv().await, Some(2));

    // The system's roots do not know the test CA.
    let sink = crate::traces::otlp::OtlpTraceSink::new(config(TlsSettings {
        server_name: Some("receiver.test".into()),
        ..TlsSettings::default()
    }))
    .unwrap();
    let report = sink
        .export(Arc::new(crate::traces::otlp::tests::batch(2)))
        .await;
    assert_eq!(report.items_failed, 2, "{:?}", report.errors);
}
