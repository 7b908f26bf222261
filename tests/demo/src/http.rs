//! HTTP/1.1 over plain TCP with hyper: the server loop every service shares (admin endpoint, generic faults,
//! access log) and the pooled client the frontend and the load generator use.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::config::Config;
use crate::faults::{Fault, Faults, parse_query};
use crate::log::{self, Level};
use crate::trace::TraceContext;
use crate::{Role, warn};

/// Largest request body read.
const MAX_BODY: usize = 1 << 20;

/// Counters a service keeps about itself, served at `GET /admin/stats` (the tests read them).
#[derive(Default)]
pub struct Stats {
    /// Requests handled (admin and health checks excluded).
    pub requests: AtomicU64,
    /// Responses with a 5xx status.
    pub errors: AtomicU64,
    /// SQL statements sent to MySQL.
    pub sql_queries: AtomicU64,
    /// Commands sent to Redis.
    pub redis_commands: AtomicU64,
    /// User-cache hits.
    pub cache_hits: AtomicU64,
    /// User-cache misses.
    pub cache_misses: AtomicU64,
}

impl Stats {
    /// Adds one to a counter.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn to_json(&self) -> Value {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        json!({
            "requests": g(&self.requests),
            "errors": g(&self.errors),
            "sql_queries": g(&self.sql_queries),
            "redis_commands": g(&self.redis_commands),
            "cache_hits": g(&self.cache_hits),
            "cache_misses": g(&self.cache_misses),
        })
    }
}

/// What every handler can reach: configuration, fault switches, counters.
pub struct Ctx {
    /// The service's configuration.
    pub cfg: Config,
    /// Its fault switches.
    pub faults: Faults,
    /// Its counters.
    pub stats: Stats,
}

impl Ctx {
    /// A context with every fault off (then `DEMO_FAULTS` applied).
    pub fn new(cfg: Config) -> anyhow::Result<Ctx> {
        let faults = Faults::new(cfg.role);
        faults.apply_spec(&cfg.faults).map_err(anyhow::Error::msg)?;
        Ok(Ctx {
            cfg,
            faults,
            stats: Stats::default(),
        })
    }

    /// The parameters of `fault` if it is on.
    pub fn fault(&self, fault: Fault) -> Option<crate::faults::Params> {
        self.faults.active(fault)
    }
}

/// A request, body already read.
pub struct Req {
    /// Method.
    pub method: Method,
    /// Path without the query.
    pub path: String,
    /// Query parameters.
    pub query: BTreeMap<String, String>,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
    /// This request's span when trace context is in play: a child of the incoming `traceparent`, or (frontend
    /// with `DEMO_PROPAGATE=1`) a new root.
    pub span: Option<TraceContext>,
}

impl Req {
    /// The body as JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        serde_json::from_slice(&self.body)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("bad body: {e}")))
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The load generator's id for this request (`rid=…` in `User-Agent`), which the frontend forwards in the
    /// `User-Agent` of its calls. Loupe records `User-Agent` on server spans, so each span says which of the load
    /// generator's requests it served: the ground truth `cargo xtask exercise trace-parents --verify` checks Loupe's
    /// parenting against. No other header is involved: the agent sees no trace context on the wire.
    pub fn request_id(&self) -> Option<&str> {
        self.header("user-agent")?
            .split_ascii_whitespace()
            .find_map(|w| w.strip_prefix("rid="))
    }

    /// Path segments (`/products/3` → `["products", "3"]`).
    pub fn segments(&self) -> Vec<&str> {
        self.path.split('/').filter(|s| !s.is_empty()).collect()
    }
}

/// A response.
pub struct Resp {
    /// Status.
    pub status: StatusCode,
    /// Body.
    pub body: Bytes,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Extra headers.
    pub headers: Vec<(&'static str, String)>,
}

impl Resp {
    /// A JSON response.
    pub fn json(status: StatusCode, value: &impl Serialize) -> Resp {
        let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
        Resp {
            status,
            body: body.into(),
            content_type: "application/json",
            headers: Vec::new(),
        }
    }

    /// A 200 JSON response.
    pub fn ok(value: &impl Serialize) -> Resp {
        Resp::json(StatusCode::OK, value)
    }

    /// An HTML response.
    pub fn html(body: String) -> Resp {
        Resp {
            status: StatusCode::OK,
            body: body.into(),
            content_type: "text/html; charset=utf-8",
            headers: Vec::new(),
        }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Resp {
        self.headers.push((name, value.into()));
        self
    }

    fn into_hyper(self) -> Response<Full<Bytes>> {
        let mut resp = Response::new(Full::new(self.body));
        *resp.status_mut() = self.status;
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(self.content_type));
        for (name, value) in self.headers {
            if let Ok(v) = HeaderValue::from_str(&value) {
                resp.headers_mut().insert(name, v);
            }
        }
        resp
    }
}

/// A failed request: status and message (sent as `{"error": message}`).
#[derive(Debug)]
pub struct ApiError {
    /// Status sent.
    pub status: StatusCode,
    /// Message sent and logged.
    pub message: String,
}

impl ApiError {
    /// An error with this status.
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    /// 404.
    pub fn not_found() -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not found")
    }

    fn into_resp(self) -> Resp {
        Resp::json(self.status, &json!({ "error": self.message }))
    }
}

impl From<mysql_async::Error> for ApiError {
    fn from(e: mysql_async::Error) -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("database error: {e}"),
        )
    }
}

impl From<redis::RedisError> for ApiError {
    fn from(e: redis::RedisError) -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cache error: {e}"),
        )
    }
}

impl From<UpstreamError> for ApiError {
    fn from(e: UpstreamError) -> ApiError {
        let status = match &e {
            UpstreamError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            UpstreamError::Status { status, .. } if status.is_client_error() => *status,
            _ => StatusCode::BAD_GATEWAY,
        };
        ApiError::new(status, e.to_string())
    }
}

/// What a handler returns.
pub type ApiResult = Result<Resp, ApiError>;

/// A service's request handler; the server loop does the admin endpoint, health check and generic faults.
pub trait Handler: Send + Sync + 'static {
    /// Handles one request.
    fn handle(&self, req: Req) -> impl Future<Output = ApiResult> + Send;
}

/// Accepts connections forever, one task per connection, HTTP/1.1 with keep-alive.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    ctx: Arc<Ctx>,
    handler: Arc<H>,
) -> anyhow::Result<()> {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (ctx, handler) = (ctx.clone(), handler.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let (ctx, handler) = (ctx.clone(), handler.clone());
                async move { Ok::<_, Infallible>(dispatch(&ctx, &*handler, req, peer).await) }
            });
            // Errors here are clients going away mid-request (e.g. a caller's timeout); nothing to do.
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn dispatch<H: Handler>(
    ctx: &Ctx,
    handler: &H,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    let start = Instant::now();
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return ApiError::new(StatusCode::BAD_REQUEST, format!("reading body: {e}"))
                .into_resp()
                .into_hyper();
        }
    };
    let incoming = parts
        .headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(TraceContext::parse);
    let span = match incoming {
        Some(parent) => Some(parent.child()),
        None if ctx.cfg.propagate && ctx.cfg.role == Role::Frontend => {
            Some(TraceContext::new_root())
        }
        None => None,
    };
    let req = Req {
        method: parts.method,
        path: parts.uri.path().to_string(),
        query: parse_query(parts.uri.query().unwrap_or("")),
        headers: parts.headers,
        body,
        span,
    };
    if req.path == "/healthz" {
        return Resp::ok(&json!({ "status": "ok", "service": ctx.cfg.service_name })).into_hyper();
    }
    if req.path.starts_with("/admin/") {
        return admin(ctx, &req).into_hyper();
    }

    Stats::inc(&ctx.stats.requests);
    let (method, path) = (req.method.clone(), req.path.clone());
    let resp = match generic_faults(ctx).await {
        Some(resp) => resp,
        None => handler.handle(req).await.unwrap_or_else(|e| {
            if e.status.is_server_error() {
                log::json(
                    Level::Error,
                    "request failed",
                    json!({ "method": method.as_str(), "path": path, "status": e.status.as_u16(), "error": e.message,
                            "trace_id": span.map(|s| s.trace_id_hex()) }),
                );
            }
            e.into_resp()
        }),
    };
    if resp.status.is_server_error() {
        Stats::inc(&ctx.stats.errors);
    }
    let mut fields = json!({
        "method": method.as_str(),
        "path": path,
        "status": resp.status.as_u16(),
        "duration_ms": (start.elapsed().as_secs_f64() * 1e5).round() / 100.0,
        "peer": peer.to_string(),
    });
    if let (Some(s), Value::Object(m)) = (span, &mut fields) {
        m.insert("trace_id".into(), Value::String(s.trace_id_hex()));
        m.insert("span_id".into(), Value::String(s.span_id_hex()));
    }
    log::json(Level::Info, "request", fields);
    resp.into_hyper()
}

/// Faults that act the same in every service, before the handler runs.
async fn generic_faults(ctx: &Ctx) -> Option<Resp> {
    if let Some(p) = ctx.fault(Fault::DependencyTimeout) {
        tokio::time::sleep(p.millis("ms")).await;
    }
    if let Some(p) = ctx.fault(Fault::MemoryGrowth) {
        ctx.faults.leak(&p);
    }
    if let Some(p) = ctx.fault(Fault::LogSpam) {
        let lines = p.num("lines") as u64;
        for i in 0..lines {
            if i % 2 == 0 {
                log::json(
                    Level::Debug,
                    "cache state dump",
                    json!({ "i": i, "of": lines, "entries": 4096, "evictions": i * 3, "hint": "x".repeat(64) }),
                );
            } else {
                log::plain(
                    Level::Debug,
                    format_args!("retrying connection pool health probe {i}/{lines} ok=true"),
                );
            }
        }
    }
    if let Some(status) = ctx.faults.burst_failure() {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let message = format!(
            "internal error: {} backend rejected the request",
            ctx.cfg.service_name
        );
        log::json(
            Level::Error,
            "request failed",
            json!({ "status": status.as_u16(), "error": message, "fault": "error-burst" }),
        );
        return Some(ApiError::new(status, message).into_resp());
    }
    None
}

fn admin(ctx: &Ctx, req: &Req) -> Resp {
    let segs = req.segments();
    match (&req.method, segs.as_slice()) {
        (&Method::GET, ["admin", "faults"]) => Resp::ok(&ctx.faults.snapshot()),
        (&Method::POST, ["admin", "faults", "reset"]) => {
            ctx.faults.reset();
            crate::info!("admin: every fault off");
            Resp::ok(&ctx.faults.snapshot())
        }
        (&Method::POST, ["admin", "fault", name]) => {
            let Some(fault) = Fault::parse(name) else {
                let names: Vec<&str> = Fault::ALL.iter().map(|f| f.name()).collect();
                return ApiError::new(
                    StatusCode::NOT_FOUND,
                    format!("unknown fault {name:?} (known: {})", names.join(", ")),
                )
                .into_resp();
            };
            let on = !matches!(
                req.query.get("on").map(String::as_str),
                Some("0" | "false" | "off")
            );
            match ctx.faults.set(fault, on, &req.query) {
                Ok(params) => {
                    match &params {
                        Some(p) => warn!("admin: fault {} ON {:?}", fault.name(), p),
                        None => crate::info!("admin: fault {} off", fault.name()),
                    }
                    Resp::ok(&ctx.faults.snapshot())
                }
                Err(e) => ApiError::new(StatusCode::BAD_REQUEST, e).into_resp(),
            }
        }
        (&Method::GET, ["admin", "stats"]) => {
            let mut v = ctx.stats.to_json();
            if let Value::Object(m) = &mut v {
                m.insert("service".into(), json!(ctx.cfg.service_name));
                m.insert("pid".into(), json!(std::process::id()));
                m.insert("leaked_bytes".into(), json!(ctx.faults.leaked_bytes()));
            }
            Resp::ok(&v)
        }
        _ => ApiError::not_found().into_resp(),
    }
}

/// A failed call to another service.
#[derive(Debug)]
pub enum UpstreamError {
    /// No answer in time.
    Timeout {
        /// Upstream service.
        name: &'static str,
        /// The timeout.
        after: Duration,
    },
    /// Connection or protocol failure.
    Io {
        /// Upstream service.
        name: &'static str,
        /// What failed.
        message: String,
    },
    /// A non-2xx answer.
    Status {
        /// Upstream service.
        name: &'static str,
        /// Its status.
        status: StatusCode,
        /// Its `error` message, or body.
        message: String,
    },
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamError::Timeout { name, after } => {
                write!(f, "{name} timed out after {} ms", after.as_millis())
            }
            UpstreamError::Io { name, message } => write!(f, "{name} unreachable: {message}"),
            UpstreamError::Status {
                name,
                status,
                message,
            } => write!(f, "{name} answered {status}: {message}"),
        }
    }
}

impl std::error::Error for UpstreamError {}

/// A pooled HTTP/1.1 client for one upstream service.
#[derive(Clone)]
pub struct Upstream {
    /// The upstream's name, for errors and logs.
    pub name: &'static str,
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

impl Upstream {
    /// A client for `base` (e.g. `http://127.0.0.1:8081`) with a per-call timeout.
    pub fn new(name: &'static str, base: &str, timeout: Duration) -> Upstream {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(64)
            .build(connector);
        Upstream {
            name,
            base: base.trim_end_matches('/').to_string(),
            client,
            timeout,
        }
    }

    /// Sends a request; returns status and body whatever the status.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, String)],
    ) -> Result<(StatusCode, Bytes), UpstreamError> {
        let io = |message: String| UpstreamError::Io {
            name: self.name,
            message,
        };
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if body.is_some() {
            builder = builder.header(CONTENT_TYPE, "application/json");
        }
        for (k, v) in headers {
            builder = builder.header(*k, v.as_str());
        }
        let request = builder
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| io(e.to_string()))?;
        let call = async {
            let resp = self
                .client
                .request(request)
                .await
                .map_err(|e| io(format!("{e:?}")))?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| io(e.to_string()))?
                .to_bytes();
            Ok((status, body))
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(r) => r,
            Err(_) => Err(UpstreamError::Timeout {
                name: self.name,
                after: self.timeout,
            }),
        }
    }

    /// Sends a request and decodes a 2xx JSON answer; other statuses become [`UpstreamError::Status`].
    pub async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, String)],
    ) -> Result<T, UpstreamError> {
        let body = body.map(|b| b.to_string().into_bytes());
        let (status, bytes) = self.send(method, path, body, headers).await?;
        if !status.is_success() {
            let message = serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).chars().take(200).collect());
            return Err(UpstreamError::Status {
                name: self.name,
                status,
                message,
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| UpstreamError::Io {
            name: self.name,
            message: format!("bad JSON: {e}"),
        })
    }
}
