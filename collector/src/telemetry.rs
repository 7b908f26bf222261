//! Loupe's self-metrics: a tiny registry of counters, gauges and histograms rendered in the
//! Prometheus text exposition format (0.0.4), and an HTTP/1.1 server answering `GET /metrics`.
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

/// A floating-point value set from an absolute reading (CPU seconds, bytes of memory) rather
/// than counted up; registered as a counter or a gauge. Cheap to clone (shares the value).
#[derive(Debug, Clone, Default)]
pub struct FloatValue(Arc<AtomicU64>);

impl FloatValue {
    /// Sets the value.
    pub fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

/// Bucket upper bounds (seconds) for request durations, after the OpenTelemetry semantic
/// conventions' advice for `http.server.request.duration`.
pub const DEFAULT_SECONDS_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// Most buckets a histogram keeps (more bounds are ignored).
pub const MAX_BUCKETS: usize = 64;

/// A distribution of observed values in fixed buckets; cheap to clone (shares the values).
///
/// Each observation adds to exactly one bucket (the last one holds values above every bound)
/// and to the sum; rendering makes the buckets cumulative and derives `_count` from them, so the
/// `+Inf` bucket and `_count` always agree.
#[derive(Debug, Clone)]
pub struct Histogram(Arc<HistogramInner>);

#[derive(Debug)]
struct HistogramInner {
    /// Upper bounds, finite and strictly increasing.
    bounds: Vec<f64>,
    /// One more than `bounds`: the last counts values above every bound.
    counts: Vec<AtomicU64>,
    /// The sum of observed values, as `f64` bits.
    sum_bits: AtomicU64,
}

impl Histogram {
    /// A histogram with these upper bounds: non-finite ones are dropped, the rest sorted and
    /// deduplicated, at most [`MAX_BUCKETS`] kept.
    pub fn new(bounds: &[f64]) -> Self {
        let mut b: Vec<f64> = bounds.iter().copied().filter(|v| v.is_finite()).collect();
        b.sort_by(f64::total_cmp);
        b.dedup();
        b.truncate(MAX_BUCKETS);
        let counts = (0..=b.len()).map(|_| AtomicU64::new(0)).collect();
        Self(Arc::new(HistogramInner {
            bounds: b,
            counts,
            sum_bits: AtomicU64::new(0f64.to_bits()),
        }))
    }

    /// Records one value; NaN is ignored.
    pub fn observe(&self, v: f64) {
        if v.is_nan() {
            return;
        }
        let inner = &self.0;
        let i = inner.bounds.partition_point(|b| *b < v);
        if let Some(c) = inner.counts.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        // A lock-free float add: retry while another thread changed the sum in between.
        let _ = inner
            .sum_bits
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + v).to_bits())
            });
    }

    /// Values observed so far.
    pub fn count(&self) -> u64 {
        self.0
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// The sum of the values observed so far.
    pub fn sum(&self) -> f64 {
        f64::from_bits(self.0.sum_bits.load(Ordering::Relaxed))
    }

    /// The upper bounds (without `+Inf`).
    pub fn bounds(&self) -> &[f64] {
        &self.0.bounds
    }

    /// Cumulative counts per bound, then the total (the `+Inf` bucket).
    pub fn cumulative_counts(&self) -> Vec<u64> {
        let mut acc = 0u64;
        self.0
            .counts
            .iter()
            .map(|c| {
                acc = acc.saturating_add(c.load(Ordering::Relaxed));
                acc
            })
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

#[derive(Debug, Clone)]
enum Value {
    Counter(Counter),
    Gauge(Gauge),
    Float(FloatValue),
    Histogram(Histogram),
}

#[derive(Debug)]
struct Family {
    help: String,
    kind: Kind,
    /// Label sets sorted by name, in registration order.
    series: Vec<(Vec<(String, String)>, Value)>,
}

/// Work run before each render, to refresh values read from elsewhere (e.g. `/proc/self`).
type Hook = Box<dyn Fn() + Send + Sync>;

/// The set of Loupe's self-metrics; cheap to clone (shares the families).
#[derive(Clone, Default)]
pub struct Registry {
    families: Arc<Mutex<BTreeMap<String, Family>>>,
    hooks: Arc<Mutex<Vec<Hook>>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
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
        match self.register(name, help, labels, Kind::Counter, || {
            Value::Counter(Counter::default())
        }) {
            Some(Value::Counter(c)) => c,
            _ => Counter::default(),
        }
    }

    /// Registers (or finds) the gauge `name{labels}`; misuse is handled as for [`Registry::counter`].
    pub fn gauge(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Gauge {
        match self.register(name, help, labels, Kind::Gauge, || {
            Value::Gauge(Gauge::default())
        }) {
            Some(Value::Gauge(g)) => g,
            _ => Gauge::default(),
        }
    }

    /// Registers (or finds) the floating-point counter `name{labels}`, set from absolute readings
    /// (e.g. `process_cpu_seconds_total`); misuse is handled as for [`Registry::counter`].
    pub fn float_counter(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> FloatValue {
        self.float(name, help, labels, Kind::Counter)
    }

    /// Registers (or finds) the floating-point gauge `name{labels}`; misuse is handled as for
    /// [`Registry::counter`].
    pub fn float_gauge(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> FloatValue {
        self.float(name, help, labels, Kind::Gauge)
    }

    fn float(&self, name: &str, help: &str, labels: &[(&str, &str)], kind: Kind) -> FloatValue {
        match self.register(name, help, labels, kind, || {
            Value::Float(FloatValue::default())
        }) {
            Some(Value::Float(v)) => v,
            _ => FloatValue::default(),
        }
    }

    /// Runs `hook` before every render, to refresh values that are read rather than counted.
    /// Hooks must be quick and must not touch the registry's families (registering is fine).
    pub fn before_render(&self, hook: impl Fn() + Send + Sync + 'static) {
        self.hooks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Box::new(hook));
    }

    /// Registers (or finds) the histogram `name{labels}` with these bucket upper bounds (see
    /// [`Histogram::new`]; [`DEFAULT_SECONDS_BUCKETS`] suits durations). Rendered as
    /// `name_bucket{…,le="…"}`, `name_sum` and `name_count`. Finding an existing series keeps its
    /// buckets. A label named `le` is misuse, handled as for [`Registry::counter`].
    pub fn histogram(
        &self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        buckets: &[f64],
    ) -> Histogram {
        if labels.iter().any(|(k, _)| *k == "le") {
            tracing::warn!(
                metric = name,
                "a histogram label may not be named le; the metric will not be exported"
            );
            return Histogram::new(buckets);
        }
        match self.register(name, help, labels, Kind::Histogram, || {
            Value::Histogram(Histogram::new(buckets))
        }) {
            Some(Value::Histogram(h)) => h,
            _ => Histogram::new(buckets),
        }
    }

    fn register(
        &self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        kind: Kind,
        new: impl FnOnce() -> Value,
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
            return Some(v.clone());
        }
        let value = new();
        // An integer and a floating-point series of one kind cannot share a family.
        if let Some((_, first)) = family.series.first()
            && matches!(first, Value::Float(_)) != matches!(value, Value::Float(_))
        {
            tracing::warn!(
                metric = name,
                "metric registered with another value type; the new one will not be exported"
            );
            return None;
        }
        family.series.push((sorted, value.clone()));
        Some(value)
    }

    /// Renders every family in the Prometheus text exposition format, families sorted by name.
    pub fn render(&self) -> String {
        for hook in self
            .hooks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            hook();
        }
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
                match value {
                    Value::Counter(c) => {
                        write_series(&mut out, name, "", labels, None);
                        let _ = writeln!(out, " {}", c.get());
                    }
                    Value::Gauge(g) => {
                        write_series(&mut out, name, "", labels, None);
                        let _ = writeln!(out, " {}", g.get());
                    }
                    Value::Float(v) => {
                        write_series(&mut out, name, "", labels, None);
                        let _ = writeln!(out, " {}", v.get());
                    }
                    Value::Histogram(h) => {
                        let cumulative = h.cumulative_counts();
                        let mut le = String::new();
                        for (i, n) in cumulative.iter().enumerate() {
                            le.clear();
                            match h.bounds().get(i) {
                                Some(b) => {
                                    let _ = write!(le, "{b}");
                                }
                                None => le.push_str("+Inf"),
                            }
                            write_series(&mut out, name, "_bucket", labels, Some(&le));
                            let _ = writeln!(out, " {n}");
                        }
                        write_series(&mut out, name, "_sum", labels, None);
                        let _ = writeln!(out, " {}", h.sum());
                        write_series(&mut out, name, "_count", labels, None);
                        let _ = writeln!(out, " {}", cumulative.last().copied().unwrap_or(0));
                    }
                }
            }
        }
        out
    }
}

/// Writes `name{suffix}{labels[,le="…"]}` (without the value).
fn write_series(
    out: &mut String,
    name: &str,
    suffix: &str,
    labels: &[(String, String)],
    le: Option<&str>,
) {
    out.push_str(name);
    out.push_str(suffix);
    if labels.is_empty() && le.is_none() {
        return;
    }
    out.push('{');
    let extra = le.map(|v| ("le", v));
    let all = labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .chain(extra);
    for (i, (k, v)) in all.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(k);
        out.push_str("=\"");
        escape_into(out, v, true);
        out.push('"');
    }
    out.push('}');
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
        // The server is bound once the agent observes (see the agent's run.rs): answering is
        // being alive and ready.
        (&Method::GET | &Method::HEAD, "/healthz" | "/readyz") => {
            (StatusCode::OK, "ok\n".to_owned())
        }
        (_, "/metrics" | "/healthz" | "/readyz") => (
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed\n".to_owned(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "not found; try /metrics, /healthz or /readyz\n".to_owned(),
        ),
    };
    let exposition = status == StatusCode::OK && req.uri().path() == "/metrics";
    let body = if req.method() == Method::HEAD {
        Bytes::new()
    } else {
        Bytes::from(body)
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    let content_type = if exposition {
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

    #[test]
    fn histograms_render_cumulative_buckets_sum_and_count() {
        let r = Registry::new();
        let h = r.histogram(
            "http_server_request_duration_seconds",
            "Duration of HTTP server requests.",
            &[("http_route", "/a"), ("service_name", "shop")],
            &[1.0, 0.1, 0.5, f64::NAN, 0.5],
        );
        for v in [0.05, 0.1, 0.3, 2.0, f64::NAN] {
            h.observe(v);
        }
        assert_eq!(h.bounds(), [0.1, 0.5, 1.0]);
        assert_eq!(h.count(), 4);
        assert_eq!(h.cumulative_counts(), [2, 3, 3, 4]);
        // The same series again (buckets ignored) shares the values.
        r.histogram(
            "http_server_request_duration_seconds",
            "ignored",
            &[("service_name", "shop"), ("http_route", "/a")],
            &[7.0],
        )
        .observe(0.5);
        assert_eq!(
            r.render(),
            "# HELP http_server_request_duration_seconds Duration of HTTP server requests.\n\
             # TYPE http_server_request_duration_seconds histogram\n\
             http_server_request_duration_seconds_bucket{http_route=\"/a\",service_name=\"shop\",le=\"0.1\"} 2\n\
             http_server_request_duration_seconds_bucket{http_route=\"/a\",service_name=\"shop\",le=\"0.5\"} 4\n\
             http_server_request_duration_seconds_bucket{http_route=\"/a\",service_name=\"shop\",le=\"1\"} 4\n\
             http_server_request_duration_seconds_bucket{http_route=\"/a\",service_name=\"shop\",le=\"+Inf\"} 5\n\
             http_server_request_duration_seconds_sum{http_route=\"/a\",service_name=\"shop\"} 2.95\n\
             http_server_request_duration_seconds_count{http_route=\"/a\",service_name=\"shop\"} 5\n"
        );
    }

    #[test]
    fn histogram_without_labels_and_default_buckets() {
        let r = Registry::new();
        let h = r.histogram("loupe_test_seconds", "h", &[], DEFAULT_SECONDS_BUCKETS);
        h.observe(0.005);
        h.observe(11.0);
        let out = r.render();
        assert!(
            out.contains("loupe_test_seconds_bucket{le=\"0.005\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("loupe_test_seconds_bucket{le=\"10\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("loupe_test_seconds_bucket{le=\"+Inf\"} 2\n"),
            "{out}"
        );
        assert!(out.contains("loupe_test_seconds_sum 11.005\n"), "{out}");
        assert!(out.contains("loupe_test_seconds_count 2\n"), "{out}");
        assert_eq!(
            out.matches("_bucket").count(),
            DEFAULT_SECONDS_BUCKETS.len() + 1
        );
    }

    #[test]
    fn float_values_render_and_hooks_refresh_them_before_each_render() {
        let r = Registry::new();
        let cpu = r.float_counter("process_cpu_seconds_total", "CPU.", &[]);
        let rss = r.float_gauge("process_resident_memory_bytes", "RSS.", &[]);
        let reads = Arc::new(AtomicU64::new(0));
        let (c, m, n) = (cpu.clone(), rss.clone(), reads.clone());
        r.before_render(move || {
            let i = n.fetch_add(1, Ordering::Relaxed) + 1;
            c.set(0.25 * i as f64);
            m.set(1024.0 * i as f64);
        });
        let first = r.render();
        assert!(
            first.contains(
                "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 0.25\n"
            ),
            "{first}"
        );
        assert!(
            first.contains(
                "# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes 1024\n"
            ),
            "{first}"
        );
        let second = r.render();
        assert!(
            second.contains("process_cpu_seconds_total 0.5\n"),
            "{second}"
        );
        assert_eq!(reads.load(Ordering::Relaxed), 2);

        // A float and an integer series cannot share a family: the second is detached.
        let g = r.gauge("process_resident_memory_bytes", "RSS.", &[("x", "y")]);
        g.set(7);
        assert!(!r.render().contains("x=\"y\""));
    }

    #[test]
    fn histogram_misuse_is_detached() {
        let r = Registry::new();
        r.counter("loupe_h_total", "h", &[]).inc();
        let clash = r.histogram("loupe_h_total", "h", &[], &[1.0]);
        clash.observe(1.0);
        let le = r.histogram("loupe_h2_seconds", "h", &[("le", "x")], &[1.0]);
        le.observe(1.0);
        assert_eq!(clash.count(), 1);
        let out = r.render();
        assert!(
            !out.contains("_bucket") && !out.contains("loupe_h2"),
            "{out}"
        );
    }

    #[test]
    fn histogram_observations_from_threads_all_count() {
        let h = Histogram::new(&[0.5]);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let h = h.clone();
                std::thread::spawn(move || (0..1000).for_each(|_| h.observe(0.25)))
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(h.count(), 4000);
        assert_eq!(h.sum(), 1000.0);
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

        for probe in ["healthz", "readyz"] {
            let resp = raw_request(
                addr,
                &format!("GET /{probe} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
            )
            .await;
            assert!(resp.starts_with("HTTP/1.1 200"), "{probe}: {resp}");
            assert!(resp.ends_with("ok\n"), "{probe}: {resp}");
        }

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
