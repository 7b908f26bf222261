//! Loupe's self-metrics: a tiny registry of counters and gauges rendered in the Prometheus text
//! exposition format (0.0.4), and an HTTP/1.1 server answering `GET /metrics`.
//!
//! Names follow the style guide: `loupe_<subsystem>_<name>_<unit>_total` for counters. A name
//! registered with several label sets is one family (one `HELP`/`TYPE` pair). Registering the same
//! name and labels again returns the same series. Label sets must stay bounded (no pids, no paths).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// `Content-Type` of the text exposition format.
pub const CONTENT_TYPE_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Connections served at once; more wait in the kernel backlog.
const MAX_CONNECTIONS: usize = 32;
/// A client must send its request headers within this time.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of the metrics server.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// Binding the metrics listener failed.
    #[error("binding the metrics server to {addr} failed: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The bound listener has no local address (should not happen).
    #[error("reading the local address of the metrics server failed: {0}")]
    LocalAddr(#[source] std::io::Error),
}

/// A monotonically increasing counter; cheap to clone (shares the value).
#[derive(Debug, Clone, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down; cheap to clone (shares the value).
#[derive(Debug, Clone, Default)]
pub struct Gauge(Arc<AtomicI64>);

impl Gauge {
    /// Sets the value.
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }

    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Subtracts one.
    pub fn dec(&self) {
        self.add(-1);
    }

    /// Adds `n` (which may be negative).
    pub fn add(&self, n: i64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

#[derive(Debug)]
enum Value {
    Counter(Counter),
    Gauge(Gauge),
}

#[derive(Debug)]
struct Family {
    help: String,
    kind: Kind,
    /// Label sets sorted by name, in registration order.
    series: Vec<(Vec<(String, String)>, Value)>,
}

/// The set of Loupe's self-metrics; cheap to clone (shares the families).
#[derive(Debug, Clone, Default)]
pub struct Registry {
    families: Arc<Mutex<BTreeMap<String, Family>>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers (or finds) the counter `name{labels}`.
    ///
    /// An invalid name or label name, or a name already registered as a gauge, is logged and gives
    /// a counter that counts but is never rendered.
    pub fn counter(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Counter {
        match self.register(name, help, labels, Kind::Counter) {
            Some(Value::Counter(c)) => c,
            _ => Counter::default(),
        }
    }

    /// Registers (or finds) the gauge `name{labels}`; misuse is handled as for [`Registry::counter`].
    pub fn gauge(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Gauge {
        match self.register(name, help, labels, Kind::Gauge) {
            Some(Value::Gauge(g)) => g,
            _ => Gauge::default(),
        }
    }

    fn register(
        &self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        kind: Kind,
    ) -> Option<Value> {
        if !valid_metric_name(name) {
            tracing::warn!(
                metric = name,
                "invalid metric name; the metric will not be exported"
            );
            return None;
        }
        let mut sorted: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        sorted.sort();
        let bad_label = sorted
            .iter()
            .enumerate()
            .any(|(i, (k, _))| !valid_label_name(k) || (i > 0 && sorted[i - 1].0 == *k));
        if bad_label {
            tracing::warn!(
                metric = name,
                "invalid or duplicate label name; the metric will not be exported"
            );
            return None;
        }
        let mut families = self.families.lock().unwrap_or_else(PoisonError::into_inner);
        let family = families.entry(name.to_owned()).or_insert_with(|| Family {
            help: help.to_owned(),
            kind,
            series: Vec::new(),
        });
        if family.kind != kind {
            tracing::warn!(
                metric = name,
                registered = family.kind.as_str(),
                requested = kind.as_str(),
                "metric registered with another type; the new one will not be exported"
            );
            return None;
        }
        if let Some((_, v)) = family.series.iter().find(|(l, _)| *l == sorted) {
            return Some(match v {
                Value::Counter(c) => Value::Counter(c.clone()),
                Value::Gauge(g) => Value::Gauge(g.clone()),
            });
        }
        let (stored, returned) = match kind {
            Kind::Counter => {
                let c = Counter::default();
                (Value::Counter(c.clone()), Value::Counter(c))
            }
            Kind::Gauge => {
                let g = Gauge::default();
                (Value::Gauge(g.clone()), Value::Gauge(g))
            }
        };
        family.series.push((sorted, stored));
        Some(returned)
    }

    /// Renders every family in the Prometheus text exposition format, families sorted by name.
    pub fn render(&self) -> String {
        let families = self.families.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = String::with_capacity(families.len() * 160);
        for (name, family) in families.iter() {
            out.push_str("# HELP ");
            out.push_str(name);
            out.push(' ');
            escape_into(&mut out, &family.help, false);
            out.push('\n');
            // Writing into a String cannot fail.
            let _ = writeln!(out, "# TYPE {name} {}", family.kind.as_str());
            for (labels, value) in &family.series {
                out.push_str(name);
                if !labels.is_empty() {
                    out.push('{');
                    for (i, (k, v)) in labels.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        out.push_str(k);
                        out.push_str("=\"");
                        escape_into(&mut out, v, true);
                        out.push('"');
                    }
                    out.push('}');
                }
                let _ = match value {
                    Value::Counter(c) => writeln!(out, " {}", c.get()),
                    Value::Gauge(g) => writeln!(out, " {}", g.get()),
                };
            }
        }
        out
    }
}

fn valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with("__")
}

/// Escapes `\` and line feeds (and `"` in label values), as the text format requires.
fn escape_into(out: &mut String, s: &str, quote: bool) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quote => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

/// A bound metrics listener; [`MetricsServer::local_addr`] tells the port when bound to `:0`.
#[derive(Debug)]
pub struct MetricsServer {
    listener: TcpListener,
    local_addr: SocketAddr,
    registry: Registry,
}

impl MetricsServer {
    /// Binds the listener.
    pub async fn bind(addr: SocketAddr, registry: Registry) -> Result<Self, TelemetryError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| TelemetryError::Bind { addr, source })?;
        let local_addr = listener.local_addr().map_err(TelemetryError::LocalAddr)?;
        Ok(Self {
            listener,
            local_addr,
            registry,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves forever.
    pub async fn run(self) {
        self.run_until(std::future::pending()).await;
    }

    /// Serves until `shutdown` completes; connections already accepted finish on their own.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) {
        let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        tokio::pin!(shutdown);
        loop {
            let permit = tokio::select! {
                () = &mut shutdown => return,
                p = permits.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return, // the semaphore is never closed
                },
            };
            let stream = tokio::select! {
                () = &mut shutdown => return,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Typically EMFILE: back off instead of spinning.
                        tracing::warn!(error = %e, "accepting a metrics connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let registry = self.registry.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let response = respond(&registry, &req);
                    async move { Ok::<_, Infallible>(response) }
                });
                let result = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                if let Err(e) = result {
                    tracing::debug!(error = %e, "metrics connection ended with an error");
                }
                drop(permit);
            });
        }
    }
}

/// Binds `addr` and serves `GET /metrics` forever; use [`MetricsServer`] to learn the bound port.
pub async fn serve(addr: SocketAddr, registry: Registry) -> Result<(), TelemetryError> {
    MetricsServer::bind(addr, registry).await?.run().await;
    Ok(())
}

fn respond(registry: &Registry, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, body) = match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => (StatusCode::OK, registry.render()),
        (_, "/metrics") => (
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed\n".to_owned(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "not found; try /metrics\n".to_owned(),
        ),
    };
    let ok = status == StatusCode::OK;
    let body = if req.method() == Method::HEAD {
        Bytes::new()
    } else {
        Bytes::from(body)
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    let content_type = if ok {
        CONTENT_TYPE_TEXT
    } else {
        "text/plain; charset=utf-8"
    };
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    if status == StatusCode::METHOD_NOT_ALLOWED {
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
    }
    response
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[test]
    fn renders_families_once_with_escaped_labels() {
        let r = Registry::new();
        let a = r.counter(
            "loupe_test_sent_bytes_total",
            "Bytes sent.",
            &[("sink", "local")],
        );
        let b = r.counter(
            "loupe_test_sent_bytes_total",
            "ignored",
            &[("sink", "pyro\"\\\n")],
        );
        a.add(5);
        b.inc();
        let g = r.gauge("loupe_test_queue_batches", "Queued\\batches\nnow.", &[]);
        g.set(7);
        g.dec();
        assert_eq!(
            r.render(),
            "# HELP loupe_test_queue_batches Queued\\\\batches\\nnow.\n\
             # TYPE loupe_test_queue_batches gauge\n\
             loupe_test_queue_batches 6\n\
             # HELP loupe_test_sent_bytes_total Bytes sent.\n\
             # TYPE loupe_test_sent_bytes_total counter\n\
             loupe_test_sent_bytes_total{sink=\"local\"} 5\n\
             loupe_test_sent_bytes_total{sink=\"pyro\\\"\\\\\\n\"} 1\n"
        );
    }

    #[test]
    fn same_series_is_shared_and_labels_are_canonical() {
        let r = Registry::new();
        let a = r.counter("loupe_x_total", "h", &[("b", "2"), ("a", "1")]);
        let b = r.counter("loupe_x_total", "h", &[("a", "1"), ("b", "2")]);
        a.inc();
        b.inc();
        assert_eq!(a.get(), 2);
        assert!(r.render().contains("loupe_x_total{a=\"1\",b=\"2\"} 2\n"));
    }

    #[test]
    fn misuse_gives_detached_metrics() {
        let r = Registry::new();
        r.counter("loupe_y_total", "h", &[]).inc();
        let g = r.gauge("loupe_y_total", "h", &[]);
        g.set(99);
        let bad = r.counter("0bad name", "h", &[]);
        bad.inc();
        let bad_label = r.counter("loupe_z_total", "h", &[("bad-label", "v")]);
        bad_label.inc();
        let out = r.render();
        assert!(out.contains("loupe_y_total 1\n"), "{out}");
        assert!(
            !out.contains("99") && !out.contains("bad") && !out.contains("loupe_z"),
            "{out}"
        );
    }

    async fn raw_request(addr: SocketAddr, request: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn serves_metrics_over_http() {
        let r = Registry::new();
        r.counter("loupe_test_events_total", "Events.", &[("kind", "a")])
            .add(3);
        let server = MetricsServer::bind("127.0.0.1:0".parse().unwrap(), r.clone())
            .await
            .unwrap();
        let addr = server.local_addr();
        assert_ne!(addr.port(), 0);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.run_until(async {
            let _ = stop_rx.await;
        }));

        let client = crate::http::client_builder(false).unwrap().build().unwrap();
        let resp = client
            .get(format!("http://{addr}/metrics"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], CONTENT_TYPE_TEXT);
        let body = resp.text().await.unwrap();
        assert!(
            body.contains("# TYPE loupe_test_events_total counter\n"),
            "{body}"
        );
        assert!(
            body.contains("loupe_test_events_total{kind=\"a\"} 3\n"),
            "{body}"
        );

        // Values are live.
        r.counter("loupe_test_events_total", "Events.", &[("kind", "a")])
            .inc();
        let body = client
            .get(format!("http://{addr}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            body.contains("loupe_test_events_total{kind=\"a\"} 4\n"),
            "{body}"
        );

        let resp = raw_request(
            addr,
            "GET /other HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(resp.starts_with("HTTP/1.1 404"), "{resp}");
        let resp = raw_request(
            addr,
            "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(resp.starts_with("HTTP/1.1 405"), "{resp}");

        stop_tx.send(()).unwrap();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn bind_error_names_the_address() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = taken.local_addr().unwrap();
        let err = MetricsServer::bind(addr, Registry::new())
            .await
            .unwrap_err();
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }
}
