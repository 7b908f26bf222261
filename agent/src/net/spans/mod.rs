//! Span builder: socket events in, OpenTelemetry spans and RED metrics out.
//!
//! [`SpanBuilder`] consumes [`SocketEvent`]s in ring-buffer order. It is pure apart from the
//! [`Clock`] (monotonic → Unix time) and the [`ProcessResolver`] (service names) handed to it, so
//! it is tested with synthetic events. [`spawn_span_builder`] runs it on a thread of its own.
//!
//! Per connection (`conn_id`): the protocol is detected from the first bytes
//! ([`loupe_protocols::detect::classify`], which also infers the role when the kernel did not
//! know it); then the HTTP/1.x, MySQL or Redis parser pairs requests with responses. A span
//! starts at the first request byte (a read's completion on the server side, a write's start on
//! the client side) and ends when the last response byte's syscall completed.
//!
//! Spans (semantic conventions, see `emit.rs`): HTTP server and client spans, MySQL and Redis
//! client spans. A database seen from its own server side (mysqld, redis-server), HTTP/2 and TLS
//! give no spans. Trace context (see `context.rs`):
//! - a server request carrying a valid `traceparent` joins that trace under the caller's span;
//! - client requests a thread makes while it serves a server request are that span's children;
//!   a client request carrying `traceparent` (an SDK propagating its own context) joins it;
//! - when both ends of a connection are on this host and traced, the server span is the child
//!   of the client span (matched by the reversed address tuple), across processes.
//!
//! Limits:
//! - thread-based parenting assumes a thread serves one request at a time. Async runtimes
//!   (Tokio, Go, Node.js, Netty) that interleave requests on a thread or move a request between
//!   threads give children the wrong parent or none; connection pools are fine (the thread that
//!   issues the query counts, not the connection);
//! - same-host linking needs both ends' addresses to be the same 4-tuple: NAT in between
//!   (Kubernetes Service ClusterIPs, Docker port publishing) hides the link;
//! - HTTP/2 (and so gRPC) is recognized but not parsed; TLS is invisible (no uprobes on TLS
//!   libraries yet); `url.query` is never recorded (it often carries secrets);
//! - a response written before the request's client event is processed (a preempted client)
//!   leaves that server span unlinked.
//!
//! Memory is bounded: connections (LRU eviction), parser buffers (a byte budget, LRU eviction),
//! requests waiting per connection, spans waiting for a flush, context maps, process cache and
//! RED series. Everything dropped is counted: `loupe_spans_dropped_total{reason}` (spans) and
//! `loupe_spans_connections_evicted_total{reason}` (connection state).

mod attrs;
mod conn;
mod context;
mod emit;
mod red;
#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use loupe_collector::profile::SpanLabel;
use loupe_collector::telemetry::{Counter, Gauge, Registry};
use loupe_collector::traces::proto::common::InstrumentationScope;
use loupe_collector::traces::proto::resource::Resource;
use loupe_collector::traces::{Attribute, ResourceBatch, SpanData, TraceBatch, TraceSubmitter};
use loupe_common::socket::{SocketEventHeader, direction, flags, kind, role};
use loupe_protocols::detect::{Protocol, classify};
use loupe_protocols::{Direction, End, Flow, Role, http1, mysql, redis};

use super::{Clock, SocketEvent, SocketEvents};
use crate::correlate::{Published, RequestTag, SpanIndex};
use crate::logs::{LogAssembler, LogWrite};
use crate::profiler::ProcessIdentity;
use attrs::Attrs;
pub use conn::MAX_DETECT_ATTEMPTS;
use conn::{
    Chunk, Conn, HttpRequest, MAX_HELD_BYTES, Parser, Pending, RawChunk, Request, flow_index,
};
pub use context::IdGenerator;
pub use context::ServingChange;
use context::{ClientLink, LinkKey, RequestRef, SpanContext, TraceContexts};
use red::RedMetrics;

/// Instrumentation scope name of every span.
pub const SCOPE_NAME: &str = "loupe";
/// How often the builder thread flushes finished spans to the exporter.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// Finished spans that trigger a flush before [`FLUSH_INTERVAL`].
pub const FLUSH_SPANS: usize = 1024;
/// Most spans per submitted batch.
pub const MAX_BATCH_SPANS: usize = 2048;
/// How long a resolved process name is trusted (pids are reused).
const PROCESS_TTL_NS: u64 = 60_000_000_000;
/// Processes whose names are cached at most.
const MAX_PROCESSES: usize = 4096;
/// Longest `tracestate` kept.
const MAX_TRACE_STATE: usize = 512;
/// Sampled requests remembered until their span finishes.
const MAX_SAMPLED_WAITING: usize = 4096;

/// Limits and options of the span builder.
#[derive(Debug, Clone)]
pub struct SpanBuilderConfig {
    /// Connections tracked at once; the least recently used is evicted past it.
    pub max_connections: usize,
    /// Parser buffers and waiting requests of all connections, in bytes; least recently used
    /// connections are evicted past it.
    pub max_buffered_bytes: usize,
    /// A connection without events for this long is forgotten (its close was lost).
    pub idle_timeout: Duration,
    /// Requests waiting for a response per connection (pipelining depth).
    pub max_pending_requests: usize,
    /// Finished spans held until the next flush.
    pub max_finished_spans: usize,
    /// Replace literals in `db.query.text` with `?` (and leave database error messages out).
    pub sanitize_queries: bool,
    /// Distinct `service_name` values in RED metrics.
    pub max_services: usize,
    /// Distinct `http_route` (and client `server_address`) values per service in RED metrics.
    pub max_routes_per_service: usize,
    /// Threads tracked as serving a server request.
    pub max_serving_threads: usize,
    /// Requests waiting to be linked to the other end on this host.
    pub max_links: usize,
}

impl Default for SpanBuilderConfig {
    fn default() -> Self {
        Self {
            max_connections: 32 * 1024,
            max_buffered_bytes: 32 * 1024 * 1024,
            idle_timeout: Duration::from_secs(3600),
            max_pending_requests: 256,
            max_finished_spans: 16 * 1024,
            sanitize_queries: true,
            max_services: 256,
            max_routes_per_service: 100,
            max_serving_threads: 64 * 1024,
            max_links: 16 * 1024,
        }
    }
}

/// Names processes for the `service.name` resource attribute.
pub trait ProcessResolver: Send {
    /// The identity of `pid`, or `None` if it is gone.
    fn resolve(&mut self, pid: u32) -> Option<ProcessIdentity>;
}

/// Resolves from `/proc`, exactly as the profiler names services.
#[derive(Debug, Default)]
pub struct ProcResolver;

impl ProcessResolver for ProcResolver {
    fn resolve(&mut self, pid: u32) -> Option<ProcessIdentity> {
        crate::profiler::process_identity(pid)
    }
}

/// A resolved process and its OTLP resource.
#[derive(Debug)]
struct ProcessInfo {
    service: String,
    resource: Arc<Resource>,
}

struct ProcessCache {
    resolver: Box<dyn ProcessResolver>,
    host_name: String,
    map: HashMap<u32, (Arc<ProcessInfo>, u64)>,
}

impl ProcessCache {
    fn get(&mut self, pid: u32, now: u64) -> Arc<ProcessInfo> {
        self.get_or_name(pid, now, None)
    }

    /// Like `get`; if /proc no longer knows the process, `comm` (its executable name as the
    /// kernel saw it at connect/accept time) names it, and an entry resolved earlier is kept.
    fn get_or_name(&mut self, pid: u32, now: u64, comm: Option<&[u8]>) -> Arc<ProcessInfo> {
        if let Some((info, at)) = self.map.get(&pid)
            && now.saturating_sub(*at) < PROCESS_TTL_NS
        {
            return info.clone();
        }
        let id = self.resolver.resolve(pid);
        if id.is_none()
            && let Some((info, at)) = self.map.get_mut(&pid)
        {
            *at = now;
            return info.clone();
        }
        let id = id.or_else(|| {
            let comm = comm?;
            let name = String::from_utf8_lossy(comm.split(|&b| b == 0).next()?).into_owned();
            (!name.is_empty()).then(|| ProcessIdentity {
                service: name.clone(),
                executable: Some(name),
            })
        });
        if self.map.len() >= MAX_PROCESSES {
            self.map
                .retain(|_, (_, at)| now.saturating_sub(*at) < PROCESS_TTL_NS);
            if self.map.len() >= MAX_PROCESSES {
                self.map.clear();
            }
        }
        let service = id
            .as_ref()
            .map_or_else(|| "unknown_service".to_owned(), |i| i.service.clone());
        let mut a = Attrs::with_capacity(4);
        a.str("service.name", service.clone());
        a.str("host.name", self.host_name.clone());
        a.int("process.pid", i64::from(pid));
        if let Some(exe) = id.and_then(|i| i.executable) {
            a.str("process.executable.name", exe);
        }
        let info = Arc::new(ProcessInfo {
            service,
            resource: Arc::new(Resource {
                attributes: a.0.iter().map(Attribute::to_proto).collect(),
                ..Resource::default()
            }),
        });
        self.map.insert(pid, (info.clone(), now));
        info
    }
}

/// Why spans were lost (`loupe_spans_dropped_total{reason}`).
#[derive(Debug, Clone, Copy)]
enum DropReason {
    /// The connection closed (or its parser gave up) before the response.
    NoResponse,
    /// The connection's state was evicted (capacity, memory, idle) with requests waiting.
    Evicted,
    /// More requests waited on one connection than allowed.
    PendingOverflow,
    /// More finished spans waited for a flush than allowed.
    BufferFull,
    /// A response answered a request that was never seen.
    UnpairedResponse,
    /// The builder stopped with requests still waiting.
    Shutdown,
}

const DROP_REASONS: [(&str, DropReason); 6] = [
    ("no_response", DropReason::NoResponse),
    ("evicted", DropReason::Evicted),
    ("pending_overflow", DropReason::PendingOverflow),
    ("buffer_full", DropReason::BufferFull),
    ("unpaired_response", DropReason::UnpairedResponse),
    ("shutdown", DropReason::Shutdown),
];

#[derive(Debug, Clone, Copy)]
enum EvictReason {
    Capacity,
    Memory,
    Idle,
}

struct Metrics {
    events: [Counter; 5],
    spans: [Counter; 3],
    dropped: [Counter; 6],
    detected: [Counter; 6],
    evicted: [Counter; 3],
    desyncs: [Counter; 3],
    context_overflows: Counter,
    connections: Gauge,
    buffered: Gauge,
}

impl Metrics {
    fn new(r: &Registry) -> Self {
        let c = |name: &str, help: &str, label: &str, value: &str| {
            r.counter(name, help, &[(label, value)])
        };
        let events = ["open", "data", "close", "other", "log"].map(|k| {
            c(
                "loupe_spans_events_total",
                "Socket events the span builder consumed.",
                "kind",
                k,
            )
        });
        let spans = ["http_server", "http_client", "db_client"].map(|k| {
            c(
                "loupe_spans_created_total",
                "Spans the span builder created.",
                "kind",
                k,
            )
        });
        let dropped = DROP_REASONS.map(|(reason, _)| {
            c(
                "loupe_spans_dropped_total",
                "Requests or spans lost by the span builder, by reason.",
                "reason",
                reason,
            )
        });
        let detected = ["http", "http2", "mysql", "redis", "tls", "unknown"].map(|p| {
            c(
                "loupe_spans_connections_detected_total",
                "Connections by protocol detected from their first bytes (unknown: gave up).",
                "protocol",
                p,
            )
        });
        let evicted = ["capacity", "memory", "idle"].map(|reason| {
            c(
                "loupe_spans_connections_evicted_total",
                "Connection states the span builder forgot before their close, by reason.",
                "reason",
                reason,
            )
        });
        let desyncs = ["http", "mysql", "redis"].map(|p| {
            c(
                "loupe_spans_parser_desyncs_total",
                "Times a protocol parser lost framing (bytes outside the capture, gaps).",
                "protocol",
                p,
            )
        });
        Self {
            events,
            spans,
            dropped,
            detected,
            evicted,
            desyncs,
            context_overflows: r.counter(
                "loupe_spans_context_overflows_total",
                "Trace context entries dropped because a context map was full.",
                &[],
            ),
            connections: r.gauge(
                "loupe_spans_connections",
                "Connections the span builder tracks.",
                &[],
            ),
            buffered: r.gauge(
                "loupe_spans_buffered_bytes",
                "Parser buffers and waiting requests of all tracked connections.",
                &[],
            ),
        }
    }

    fn drop(&self, reason: DropReason, n: u64) {
        self.dropped[reason as usize].add(n);
    }
}

/// A finished span and its process.
struct Finished {
    pid: u32,
    process: Arc<ProcessInfo>,
    span: SpanData,
}

/// A server span that finished while its same-host client's event was still to come (the ring
/// buffer orders events by when each syscall returned, and a client's write can return after the
/// server has read, answered and finished): it waits up to LINGER_NS for the client to re-parent
/// it, then goes out as it is.
struct Lingering {
    request: RequestRef,
    key: Option<LinkKey>,
    since_ns: u64,
    finished: Finished,
}

/// How long a finished server span waits for its same-host client (by event time, or by the
/// clock at the next housekeeping tick when no events come).
const LINGER_NS: u64 = 200_000_000;
/// Server spans waiting so at most; more go out at once.
const MAX_LINGERING: usize = 4096;

/// Everything the event handlers need besides the connection table.
struct Core {
    cfg: SpanBuilderConfig,
    clock: Clock,
    ids: IdGenerator,
    ctx: TraceContexts,
    processes: ProcessCache,
    red: RedMetrics,
    m: Metrics,
    finished: Vec<Finished>,
    /// In the order they finished (so the oldest is first).
    lingering: VecDeque<Lingering>,
    /// Latest event time (monotonic ns).
    now: u64,
    /// Server requests to re-parent under a client span that came late: (server request,
    /// client trace id, client span id).
    reparents: Vec<(RequestRef, [u8; 16], [u8; 8])>,
    /// (client request, server request) pairs linked on this host since the last event.
    linked: Vec<(RequestRef, RequestRef)>,
    reported_overflows: u64,
    /// Whether finished server spans are published for the profiler (see `correlate`).
    publishing: bool,
    /// Requests the kernel reported CPU samples of, until their span finishes.
    sampled: HashSet<RequestTag>,
    /// Server spans finished since the last publication.
    published: Vec<Published>,
}

/// Turns socket events into spans; see the module docs.
pub struct SpanBuilder {
    conns: HashMap<u64, Conn>,
    /// `(last_seen, conn_id)` of every connection, oldest first.
    lru: BTreeSet<(u64, u64)>,
    buffered: usize,
    http_events: Vec<http1::Event>,
    mysql_events: Vec<mysql::Event>,
    redis_events: Vec<redis::Event>,
    /// The instrumentation scope of every span, shared by every batch.
    scope: Arc<InstrumentationScope>,
    core: Core,
    index: Option<SpanIndex>,
    logs: Option<LogAssembler>,
    /// Where changes of what each thread serves go (the shared trace context map).
    serving_out: Option<ServingOut>,
    changes: Vec<ServingChange>,
}

impl SpanBuilder {
    /// A builder registering its metrics in `registry`; `host_name` goes into every resource.
    pub fn new(
        config: SpanBuilderConfig,
        registry: &Registry,
        host_name: String,
        clock: Clock,
        resolver: Box<dyn ProcessResolver>,
    ) -> Self {
        let red = RedMetrics::new(registry, config.max_services, config.max_routes_per_service);
        Self {
            conns: HashMap::new(),
            lru: BTreeSet::new(),
            buffered: 0,
            http_events: Vec::new(),
            mysql_events: Vec::new(),
            redis_events: Vec::new(),
            scope: Arc::new(InstrumentationScope {
                name: SCOPE_NAME.to_owned(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                ..InstrumentationScope::default()
            }),
            core: Core {
                ctx: TraceContexts::new(config.max_serving_threads, config.max_links),
                cfg: config,
                clock,
                ids: IdGenerator::from_os(),
                processes: ProcessCache {
                    resolver,
                    host_name,
                    map: HashMap::new(),
                },
                red,
                m: Metrics::new(registry),
                finished: Vec::new(),
                lingering: VecDeque::new(),
                now: 0,
                reparents: Vec::new(),
                linked: Vec::new(),
                reported_overflows: 0,
                publishing: false,
                sampled: HashSet::new(),
                published: Vec::new(),
            },
            index: None,
            logs: None,
            serving_out: None,
            changes: Vec::new(),
        }
    }

    /// Hands every change of what a thread serves to `out` (after each batch of events).
    #[must_use]
    pub fn with_serving_out(mut self, out: ServingOut) -> Self {
        self.core.ctx.journal_serving();
        self.serving_out = Some(out);
        self
    }

    /// Publishes which span each server request became into `index`, for the profiler.
    #[must_use]
    pub fn with_span_index(mut self, index: SpanIndex) -> Self {
        self.core.publishing = true;
        self.index = Some(index);
        self
    }

    /// Turns LOG events into log records with `logs`.
    #[must_use]
    pub fn with_logs(mut self, logs: LogAssembler) -> Self {
        self.logs = Some(logs);
        self
    }

    /// Uses these ids (deterministic tests).
    #[must_use]
    pub fn with_ids(mut self, ids: IdGenerator) -> Self {
        self.core.ids = ids;
        self
    }

    /// Consumes one event.
    pub fn handle(&mut self, ev: &SocketEvent) {
        self.handle_all(std::slice::from_ref(ev));
    }

    /// Consumes a batch of events (the gauges are published once, after the last).
    pub fn handle_all(&mut self, events: &[SocketEvent]) {
        for ev in events {
            self.consume(ev);
        }
        if let Some(index) = &self.index {
            index.publish(&mut self.core.published);
        }
        if let Some(out) = &mut self.serving_out {
            self.core.ctx.take_changes(&mut self.changes);
            if !self.changes.is_empty() {
                out(&self.changes);
                self.changes.clear();
            }
        }
        self.publish_gauges();
    }

    fn consume(&mut self, ev: &SocketEvent) {
        let h = &ev.header;
        self.core.now = self.core.now.max(h.timestamp_ns);
        match h.kind {
            kind::OPEN => {
                self.core.m.events[0].inc();
                // Name the process while it is most likely alive; the OPEN event carries its
                // comm for when it is not (short-lived clients).
                self.core
                    .processes
                    .get_or_name(h.pid, self.core.now, Some(&ev.data));
                self.touch(h);
            }
            kind::DATA => {
                self.core.m.events[1].inc();
                self.on_data(h, &ev.data);
            }
            kind::CLOSE => {
                self.core.m.events[2].inc();
                self.on_close(h.conn_id);
            }
            kind::LOG => {
                self.core.m.events[4].inc();
                self.on_log(h, &ev.data);
                return;
            }
            _ => self.core.m.events[3].inc(),
        }
        self.enforce_limits(h.conn_id);
        self.settle_lingering(self.core.now);
    }

    /// Housekeeping with the current monotonic time: forgets idle connections.
    pub fn tick(&mut self, now_monotonic_ns: u64) {
        self.settle_lingering(now_monotonic_ns);
        let idle = u64::try_from(self.core.cfg.idle_timeout.as_nanos()).unwrap_or(u64::MAX);
        while let Some(&(seen, id)) = self.lru.first() {
            if now_monotonic_ns.saturating_sub(seen) <= idle {
                break;
            }
            self.evict(id, EvictReason::Idle);
        }
        self.publish_gauges();
    }

    /// Server spans that waited LINGER_NS for their client (all of them with `u64::MAX`) go out
    /// as they are.
    pub fn settle_lingering(&mut self, now_monotonic_ns: u64) {
        let core = &mut self.core;
        while core
            .lingering
            .front()
            .is_some_and(|l| now_monotonic_ns.saturating_sub(l.since_ns) >= LINGER_NS)
        {
            if let Some(l) = core.lingering.pop_front() {
                core.ctx.forget(l.key, l.request);
                core.finish(l.finished);
            }
        }
    }

    /// Spans finished and not yet taken.
    pub fn finished_len(&self) -> usize {
        self.core.finished.len()
    }

    /// Up to `max` finished spans, grouped by process; `None` when none.
    pub fn take_batch(&mut self, max: usize) -> Option<TraceBatch> {
        if self.core.finished.is_empty() {
            return None;
        }
        let n = max.max(1).min(self.core.finished.len());
        let mut by_pid: HashMap<u32, usize> = HashMap::new();
        let mut out: Vec<ResourceBatch> = Vec::new();
        for f in self.core.finished.drain(..n) {
            let i = *by_pid.entry(f.pid).or_insert_with(|| {
                out.push(ResourceBatch {
                    resource: f.process.resource.clone(),
                    scope: self.scope.clone(),
                    spans: Vec::new(),
                });
                out.len() - 1
            });
            out[i].spans.push(f.span);
        }
        Some(TraceBatch { resources: out })
    }

    /// The event stream ended: requests still waiting are counted as dropped.
    pub fn shutdown(&mut self) {
        let waiting: usize = self.conns.values().map(|c| c.pending.len()).sum();
        self.core.m.drop(DropReason::Shutdown, waiting as u64);
        self.conns.clear();
        self.lru.clear();
        self.buffered = 0;
        self.publish_gauges();
    }

    /// Connections tracked.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    fn publish_gauges(&mut self) {
        self.core.m.connections.set(self.conns.len() as i64);
        self.core.m.buffered.set(self.buffered as i64);
        let overflows = self.core.ctx.overflows;
        if overflows > self.core.reported_overflows {
            self.core
                .m
                .context_overflows
                .add(overflows - self.core.reported_overflows);
            self.core.reported_overflows = overflows;
        }
    }

    /// Finds or creates the connection of `h` and marks it used.
    fn touch(&mut self, h: &SocketEventHeader) {
        let now = h.timestamp_ns;
        let conn = self.conns.entry(h.conn_id).or_insert_with(|| {
            let role = match h.role {
                role::CLIENT => Role::Client,
                role::SERVER => Role::Server,
                _ => Role::Unknown,
            };
            Conn::new(h.pid, role, h.tuple, now)
        });
        if conn.tuple.local_port == 0 && h.tuple.local_port != 0 {
            conn.tuple = h.tuple;
        }
        self.lru.remove(&(conn.last_seen, h.conn_id));
        conn.last_seen = now;
        self.lru.insert((now, h.conn_id));
    }

    /// A write to stdout or stderr: a log write, tied to the request its thread serves.
    fn on_log(&mut self, h: &SocketEventHeader, data: &[u8]) {
        let Some(logs) = &mut self.logs else { return };
        let captured = data
            .get(..(h.captured as usize).min(data.len()))
            .unwrap_or_default();
        let write = LogWrite {
            pid: h.pid,
            tid: h.tid,
            fd: h.fd,
            monotonic_ns: h.timestamp_ns,
            data: captured,
            total: h.bytes.max(captured.len() as u64),
            context: self.core.ctx.serving(h.tid),
        };
        let core = &mut self.core;
        logs.on_write(write, || {
            core.processes.get(h.pid, core.now).resource.clone()
        });
    }

    /// Log lines waiting for a flush.
    pub fn logs_pending(&self) -> usize {
        self.logs.as_ref().map_or(0, LogAssembler::pending_len)
    }

    /// The waiting log records, with lines left without their end for `partial_age_ns` put out
    /// as they are; `None` when none or logs are off.
    pub fn take_logs(
        &mut self,
        now_monotonic_ns: u64,
        partial_age_ns: u64,
    ) -> Option<loupe_collector::logs::LogBatch> {
        let logs = self.logs.as_mut()?;
        let core = &mut self.core;
        let now = core.now;
        logs.flush_partial(now_monotonic_ns, partial_age_ns, &mut |pid| {
            core.processes.get(pid, now).resource.clone()
        });
        logs.take_batch()
    }

    fn on_data(&mut self, h: &SocketEventHeader, data: &[u8]) {
        let dir = match h.direction {
            direction::INGRESS => Direction::Ingress,
            direction::EGRESS => Direction::Egress,
            _ => return,
        };
        self.touch(h);
        let captured = data
            .get(..(h.captured as usize).min(data.len()))
            .unwrap_or_default();
        let raw = RawChunk {
            dir,
            total: h.bytes.max(captured.len() as u64),
            start_ns: h.start_ns,
            end_ns: h.timestamp_ns,
            tid: h.tid,
            request_ns: h.request_ns,
        };
        if h.flags & flags::REQUEST_SAMPLED != 0 {
            self.core.note_sampled((h.tid, h.request_ns));
        }
        let id = h.conn_id;
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if matches!(conn.parser, Parser::Detecting(_)) {
            match self.core.detect(conn, raw, captured) {
                Some(held) => {
                    for (r, bytes) in held {
                        self.feed(id, r, &bytes);
                    }
                    self.feed(id, raw, captured);
                }
                None => self.account(id),
            }
        } else {
            self.feed(id, raw, captured);
        }
        self.apply_reparents();
    }

    /// Updates the builder's byte total with connection `id`'s current use.
    fn account(&mut self, id: u64) {
        if let Some(conn) = self.conns.get_mut(&id) {
            let bytes = conn.bytes();
            self.buffered = (self.buffered + bytes).saturating_sub(conn.accounted);
            conn.accounted = bytes;
        }
    }

    /// Runs one chunk through the connection's parser and handles what it reports.
    fn feed(&mut self, id: u64, raw: RawChunk, captured: &[u8]) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let Some(flow) = Flow::from_direction(raw.dir, conn.role) else {
            return;
        };
        let start_ns = match raw.dir {
            Direction::Ingress => raw.end_ns,
            Direction::Egress if raw.start_ns != 0 && raw.start_ns <= raw.end_ns => raw.start_ns,
            Direction::Egress => raw.end_ns,
        };
        let chunk = Chunk {
            flow,
            start_ns,
            end_ns: raw.end_ns,
            tid: raw.tid,
            request_ns: raw.request_ns,
        };
        if matches!(conn.parser, Parser::Http(_))
            && flow == Flow::ClientToServer
            && conn.c2s_open.is_none()
        {
            conn.c2s_open = Some((chunk.start_ns, chunk.tid, chunk.request_ns));
        }
        let total = raw.total;
        match &mut conn.parser {
            Parser::Http(p) => p.feed(flow, captured, total, &mut self.http_events),
            Parser::MySql(p) => p.feed(flow, captured, total, &mut self.mysql_events),
            Parser::Redis(p) => p.feed(flow, captured, total, &mut self.redis_events),
            Parser::Detecting(_) | Parser::Opaque => {}
        }
        self.core.dispatch(
            id,
            conn,
            Some(chunk),
            &mut self.http_events,
            &mut self.mysql_events,
            &mut self.redis_events,
        );
        conn.last_end[flow_index(flow)] = Some(chunk.end_ns);
        self.account(id);
    }

    fn on_close(&mut self, id: u64) {
        let Some(mut conn) = self.conns.remove(&id) else {
            return;
        };
        self.lru.remove(&(conn.last_seen, id));
        self.buffered = self.buffered.saturating_sub(conn.accounted);
        let core = &mut self.core;
        match &mut conn.parser {
            Parser::Http(p) => p.close(&mut self.http_events),
            Parser::MySql(p) => p.close(&mut self.mysql_events),
            Parser::Redis(p) => p.close(&mut self.redis_events),
            Parser::Detecting(_) | Parser::Opaque => {}
        }
        core.dispatch(
            id,
            &mut conn,
            None,
            &mut self.http_events,
            &mut self.mysql_events,
            &mut self.redis_events,
        );
        core.forget_conn(id, conn, DropReason::NoResponse);
        self.apply_reparents();
    }

    fn evict(&mut self, id: u64, reason: EvictReason) {
        let Some(conn) = self.conns.remove(&id) else {
            return;
        };
        self.lru.remove(&(conn.last_seen, id));
        self.buffered = self.buffered.saturating_sub(conn.accounted);
        self.core.m.evicted[reason as usize].inc();
        self.core.forget_conn(id, conn, DropReason::Evicted);
    }

    /// Evicts least recently used connections past the connection and memory budgets (the
    /// current one last).
    fn enforce_limits(&mut self, current: u64) {
        loop {
            let reason = if self.conns.len() > self.core.cfg.max_connections {
                EvictReason::Capacity
            } else if self.buffered > self.core.cfg.max_buffered_bytes {
                EvictReason::Memory
            } else {
                return;
            };
            let victim = self
                .lru
                .iter()
                .map(|&(_, id)| id)
                .find(|&id| id != current)
                .or_else(|| self.conns.contains_key(&current).then_some(current));
            match victim {
                Some(id) => self.evict(id, reason),
                None => return,
            }
        }
    }

    fn apply_reparents(&mut self) {
        let reparents = std::mem::take(&mut self.core.reparents);
        for ((conn_id, req_id), trace_id, parent) in reparents {
            let Some(p) = self.conns.get_mut(&conn_id).and_then(|c| c.get_mut(req_id)) else {
                // Finished already: it lingers for exactly this.
                let core = &mut self.core;
                if let Some(i) = core
                    .lingering
                    .iter()
                    .position(|l| l.request == (conn_id, req_id))
                    && let Some(mut l) = core.lingering.remove(i)
                {
                    l.finished.span.trace_id = trace_id;
                    l.finished.span.parent_span_id = Some(parent);
                    l.finished.span.trace_state.clear();
                    core.finish(l.finished);
                }
                continue;
            };
            p.ctx.trace_id = trace_id;
            p.ctx.parent_span_id = Some(parent);
            p.ctx.trace_state.clear();
            self.core
                .ctx
                .reparent_serving(p.tid, (conn_id, req_id), trace_id);
        }
        // The server cannot have read a request before its client began sending it, but the two
        // ends are timed by different syscalls (a write is timed by its end on the fexit path,
        // and the reader can wake before the writer returns): a client span never starts after
        // the server span it parents.
        for ((client_conn, client_req), (server_conn, server_req)) in self.core.linked.drain(..) {
            let Some(server_start) = self
                .conns
                .get(&server_conn)
                .and_then(|c| c.get(server_req))
                .map(|p| p.start_ns)
            else {
                continue;
            };
            if let Some(p) = self
                .conns
                .get_mut(&client_conn)
                .and_then(|c| c.get_mut(client_req))
            {
                p.start_ns = p.start_ns.min(server_start);
            }
        }
    }
}

impl Core {
    /// Tries to recognize the protocol of a connection still `Detecting` with one more chunk.
    /// `Some(held)`: recognized (the parser is set); feed `held`, then this chunk. `None`: not
    /// (yet) recognized; the chunk was held or dropped.
    fn detect(
        &mut self,
        conn: &mut Conn,
        raw: RawChunk,
        captured: &[u8],
    ) -> Option<Vec<(RawChunk, Vec<u8>)>> {
        let Parser::Detecting(held) = &mut conn.parser else {
            return Some(Vec::new());
        };
        if captured.is_empty() {
            return None;
        }
        // Fully captured chunks of one direction are tried as one run of bytes.
        let joinable = !held.is_empty()
            && held
                .iter()
                .all(|(r, b)| r.dir == raw.dir && b.len() as u64 == r.total);
        let joined: Vec<u8>;
        let candidate = if joinable {
            let mut j: Vec<u8> = held.iter().flat_map(|(_, b)| b.iter().copied()).collect();
            j.extend_from_slice(captured);
            joined = j;
            joined.as_slice()
        } else {
            captured
        };
        let Some(d) = classify(candidate, raw.dir, conn.role) else {
            // A run of bytes is one attempt however many writes it came in: a head written piece
            // by piece, or the rest of a message a connection was picked up in the middle of
            // (followed from /proc), must not use the attempts up. Runs end at MAX_HELD_BYTES.
            if !joinable {
                conn.detect_attempts += 1;
            }
            if conn.detect_attempts >= MAX_DETECT_ATTEMPTS {
                self.m.detected[5].inc();
                conn.parser = Parser::Opaque;
                return None;
            }
            if !joinable {
                held.clear();
            }
            let held_bytes: usize = held.iter().map(|(_, b)| b.len()).sum();
            if captured.len() as u64 == raw.total && held_bytes + captured.len() <= MAX_HELD_BYTES {
                held.push((raw, captured.to_vec()));
            } else {
                held.clear();
            }
            return None;
        };
        let replay = if joinable {
            std::mem::take(held)
        } else {
            Vec::new()
        };
        if conn.role == Role::Unknown {
            conn.role = d.flow.role_of_process(raw.dir);
        }
        let (index, parser) = match (d.protocol, conn.role) {
            (Protocol::Http1, _) => (0, Parser::Http(Box::new(http1::Http1Connection::new()))),
            (Protocol::MySql, Role::Client) => {
                (2, Parser::MySql(Box::new(mysql::MySqlConnection::new())))
            }
            (Protocol::Redis, Role::Client) => {
                (3, Parser::Redis(Box::new(redis::RedisConnection::new())))
            }
            (Protocol::MySql, _) => (2, Parser::Opaque),
            (Protocol::Redis, _) => (3, Parser::Opaque),
            (Protocol::Http2, _) => (1, Parser::Opaque),
            (Protocol::Tls, _) => (4, Parser::Opaque),
        };
        self.m.detected[index].inc();
        conn.parser = parser;
        Some(replay)
    }

    /// Handles (and clears) the events a parser produced for one chunk (`None`: close).
    fn dispatch(
        &mut self,
        conn_id: u64,
        conn: &mut Conn,
        chunk: Option<Chunk>,
        http: &mut Vec<http1::Event>,
        my: &mut Vec<mysql::Event>,
        rd: &mut Vec<redis::Event>,
    ) {
        if !http.is_empty() {
            self.on_http(conn_id, conn, http, chunk);
            http.clear();
        }
        if !my.is_empty() {
            self.on_mysql(conn_id, conn, my, chunk);
            my.clear();
        }
        if !rd.is_empty() {
            self.on_redis(conn_id, conn, rd, chunk);
            rd.clear();
        }
    }

    /// The end time of a response that ended as `end`, produced by `chunk` (or by `close`).
    fn end_time(conn: &Conn, chunk: Option<Chunk>, end: End) -> Option<u64> {
        let current = chunk
            .filter(|c| c.flow == Flow::ServerToClient)
            .map(|c| c.end_ns);
        let last = conn.last_end[1];
        match end {
            End::Complete => current.or(last),
            End::Unknown | End::Incomplete => last.or(current),
        }
    }

    /// A database client request (MySQL, Redis) waits for its response: timed from the chunk
    /// that carried it, a child of whatever its thread serves; never linked to a server span.
    fn queue_db_request(
        &mut self,
        conn_id: u64,
        conn: &mut Conn,
        id: u64,
        chunk: Option<Chunk>,
        request: Request,
    ) {
        let (start_ns, tid) = chunk.map(|c| (c.start_ns, c.tid)).unwrap_or((self.now, 0));
        let (ctx, link) = self.client_context((conn_id, id), conn, None, None, tid, false);
        self.queue(
            conn,
            conn_id,
            Pending {
                id,
                start_ns,
                tid,
                request_ns: 0,
                ctx,
                link,
                request,
            },
        );
    }

    fn queue(&mut self, conn: &mut Conn, conn_id: u64, p: Pending) {
        if let Some(old) = conn.push(p, self.cfg.max_pending_requests) {
            self.release(conn_id, conn.role, &old);
            self.m.drop(DropReason::PendingOverflow, 1);
        }
    }

    /// Context for a server request read by `tid`.
    fn server_context(
        &mut self,
        req: RequestRef,
        conn: &Conn,
        traceparent: Option<&str>,
        tracestate: Option<&str>,
        tid: u32,
    ) -> (SpanContext, Option<LinkKey>) {
        let key = LinkKey::of_server(&conn.tuple);
        let span_id = self.ids.span_id();
        let ctx = if let Some(((trace_id, parent), client)) =
            self.ctx.server_request(key, req, self.now)
        {
            self.linked.push((client, req));
            SpanContext {
                trace_id,
                span_id,
                parent_span_id: Some(parent),
                trace_state: String::new(),
            }
        } else if let Some(tp) =
            traceparent.and_then(|v| loupe_protocols::traceparent::parse(v).ok())
        {
            SpanContext {
                trace_id: tp.trace_id,
                span_id,
                parent_span_id: Some(tp.parent_id),
                trace_state: tracestate
                    .map(|s| attrs::cut(s, MAX_TRACE_STATE).to_owned())
                    .unwrap_or_default(),
            }
        } else {
            SpanContext {
                trace_id: self.ids.trace_id(),
                span_id,
                parent_span_id: None,
                trace_state: String::new(),
            }
        };
        self.ctx.start_serving(conn.pid, tid, &ctx, req, self.now);
        (ctx, key)
    }

    /// Context for a client request started by `tid`; `link` for protocols whose server side
    /// makes spans (HTTP).
    fn client_context(
        &mut self,
        req: RequestRef,
        conn: &Conn,
        traceparent: Option<&str>,
        tracestate: Option<&str>,
        tid: u32,
        link: bool,
    ) -> (SpanContext, Option<LinkKey>) {
        let span_id = self.ids.span_id();
        let ctx = if let Some(tp) =
            traceparent.and_then(|v| loupe_protocols::traceparent::parse(v).ok())
        {
            SpanContext {
                trace_id: tp.trace_id,
                span_id,
                parent_span_id: Some(tp.parent_id),
                trace_state: tracestate
                    .map(|s| attrs::cut(s, MAX_TRACE_STATE).to_owned())
                    .unwrap_or_default(),
            }
        } else if let Some((trace_id, parent)) = self.ctx.serving(tid) {
            SpanContext {
                trace_id,
                span_id,
                parent_span_id: Some(parent),
                trace_state: String::new(),
            }
        } else {
            SpanContext {
                trace_id: self.ids.trace_id(),
                span_id,
                parent_span_id: None,
                trace_state: String::new(),
            }
        };
        let key = if link {
            LinkKey::of_client(&conn.tuple)
        } else {
            None
        };
        let key = match self.ctx.client_request(key, &ctx, req, self.now) {
            ClientLink::Registered => key,
            ClientLink::ServerWaiting(server) => {
                self.reparents.push((server, ctx.trace_id, ctx.span_id));
                self.linked.push((req, server));
                None
            }
            ClientLink::None => None,
        };
        (ctx, key)
    }

    /// Forgets a request's context entries (it finished or was dropped).
    fn release(&mut self, conn_id: u64, role: Role, p: &Pending) {
        self.ctx.forget(p.link, (conn_id, p.id));
        if role == Role::Server {
            self.ctx.stop_serving(p.tid, (conn_id, p.id));
        }
    }

    /// A connection is gone: its waiting requests are dropped, its parser's desyncs counted.
    fn forget_conn(&mut self, conn_id: u64, mut conn: Conn, reason: DropReason) {
        let waiting = conn.drain();
        for p in &waiting {
            self.release(conn_id, conn.role, p);
        }
        if !waiting.is_empty() {
            self.m.drop(reason, waiting.len() as u64);
        }
        let desyncs = conn.parser.desyncs();
        match conn.parser {
            Parser::Http(_) => self.m.desyncs[0].add(desyncs),
            Parser::MySql(_) => self.m.desyncs[1].add(desyncs),
            Parser::Redis(_) => self.m.desyncs[2].add(desyncs),
            Parser::Detecting(_) | Parser::Opaque => {}
        }
    }

    fn on_http(
        &mut self,
        conn_id: u64,
        conn: &mut Conn,
        events: &[http1::Event],
        chunk: Option<Chunk>,
    ) {
        for ev in events {
            match ev {
                http1::Event::RequestStart { id, head } => {
                    let (start_ns, tid, request_ns) = conn
                        .c2s_open
                        .take()
                        .or(chunk.map(|c| (c.start_ns, c.tid, c.request_ns)))
                        .unwrap_or((self.now, 0, 0));
                    let req = (conn_id, *id);
                    let tp = head.headers.traceparent.as_deref();
                    let ts = head.headers.tracestate.as_deref();
                    let (ctx, link) = if conn.role == Role::Server {
                        self.server_context(req, conn, tp, ts, tid)
                    } else {
                        self.client_context(req, conn, tp, ts, tid, true)
                    };
                    let p = Pending {
                        id: *id,
                        start_ns,
                        tid,
                        request_ns,
                        ctx,
                        link,
                        request: Request::Http(HttpRequest::from_head(head)),
                    };
                    self.queue(conn, conn_id, p);
                }
                http1::Event::ResponseStart {
                    request_id: Some(id),
                    head,
                } => {
                    if let Some(Pending {
                        request: Request::Http(h),
                        ..
                    }) = conn.get_mut(*id)
                    {
                        h.status = Some(head.status);
                    }
                }
                http1::Event::ResponseStart {
                    request_id: None, ..
                } => self.m.drop(DropReason::UnpairedResponse, 1),
                http1::Event::MessageEnd {
                    flow: Flow::ClientToServer,
                    ..
                } => conn.c2s_open = None,
                http1::Event::MessageEnd {
                    flow: Flow::ServerToClient,
                    id: Some(id),
                    end,
                    ..
                } => {
                    let Some(p) = conn.take(*id) else { continue };
                    let status = match &p.request {
                        Request::Http(h) => h.status,
                        _ => None,
                    };
                    let request = (conn_id, p.id);
                    let linger = status.is_some()
                        && conn.role == Role::Server
                        && self.ctx.server_waiting(p.link, request);
                    if linger {
                        // Keeps waiting for its client; only the serving thread is released.
                        self.ctx.stop_serving(p.tid, request);
                    } else {
                        self.release(conn_id, conn.role, &p);
                    }
                    if status.is_none() {
                        self.m.drop(DropReason::NoResponse, 1);
                        continue;
                    }
                    let end_ns = Self::end_time(conn, chunk, *end).unwrap_or(p.start_ns);
                    let key = p.link;
                    let Some(finished) = self.http_span(conn, p, end_ns) else {
                        continue;
                    };
                    if linger {
                        self.linger(request, key, finished);
                    } else {
                        self.finish(finished);
                    }
                }
                http1::Event::MessageEnd {
                    flow: Flow::ServerToClient,
                    id: None,
                    ..
                } => {}
            }
        }
    }

    fn on_mysql(
        &mut self,
        conn_id: u64,
        conn: &mut Conn,
        events: &[mysql::Event],
        chunk: Option<Chunk>,
    ) {
        for ev in events {
            match ev {
                mysql::Event::Request { id, command } => {
                    let schema = match &conn.parser {
                        Parser::MySql(p) => p.schema().map(str::to_owned),
                        _ => None,
                    };
                    let request = Request::MySql(emit::mysql_request(
                        command,
                        schema,
                        self.cfg.sanitize_queries,
                    ));
                    self.queue_db_request(conn_id, conn, *id, chunk, request);
                }
                mysql::Event::Response { id, response, end } => {
                    let Some(p) = conn.take(*id) else { continue };
                    self.release(conn_id, conn.role, &p);
                    match (response, end) {
                        (Some(mysql::Response::NoResponse), _) => continue,
                        (None, End::Incomplete) => {
                            self.m.drop(DropReason::NoResponse, 1);
                            continue;
                        }
                        _ => {}
                    }
                    let end_ns = Self::end_time(conn, chunk, *end).unwrap_or(p.start_ns);
                    let result = emit::mysql_result(response.as_ref(), self.cfg.sanitize_queries);
                    self.emit_db(conn, p, "mysql", result, end_ns);
                }
            }
        }
    }

    fn on_redis(
        &mut self,
        conn_id: u64,
        conn: &mut Conn,
        events: &[redis::Event],
        chunk: Option<Chunk>,
    ) {
        for ev in events {
            match ev {
                redis::Event::Request { id, command } => {
                    let request =
                        Request::Redis(emit::redis_request(command, self.cfg.sanitize_queries));
                    self.queue_db_request(conn_id, conn, *id, chunk, request);
                }
                redis::Event::Response { id, reply, end } => {
                    let Some(p) = conn.take(*id) else { continue };
                    self.release(conn_id, conn.role, &p);
                    if reply.is_none() && *end == End::Incomplete {
                        self.m.drop(DropReason::NoResponse, 1);
                        continue;
                    }
                    let end_ns = Self::end_time(conn, chunk, *end).unwrap_or(p.start_ns);
                    let result = emit::redis_result(reply.as_ref(), self.cfg.sanitize_queries);
                    self.emit_db(conn, p, "redis", result, end_ns);
                }
            }
        }
    }

    /// Parks a finished server span that still waits for its same-host client (see
    /// `Lingering`); past MAX_LINGERING it goes out at once.
    fn linger(&mut self, request: RequestRef, key: Option<LinkKey>, finished: Finished) {
        if self.lingering.len() < MAX_LINGERING {
            self.lingering.push_back(Lingering {
                request,
                key,
                since_ns: self.now,
                finished,
            });
        } else {
            self.ctx.forget(key, request);
            self.finish(finished);
        }
    }

    /// The kernel reported CPU samples of the request `tag` (its response write carried the
    /// flag): its span goes into the sampled tier of the span index.
    fn note_sampled(&mut self, tag: RequestTag) {
        if !self.publishing {
            return;
        }
        if self.sampled.len() >= MAX_SAMPLED_WAITING {
            // Spans that never finished (dropped requests) must not pile up.
            self.sampled.clear();
        }
        self.sampled.insert(tag);
    }

    /// Publishes a finished server span for the profiler's drain; returns its
    /// `pyroscope.profile.id`.
    fn publish_server_span(&mut self, p: &Pending, name: &str) -> Option<String> {
        if p.request_ns == 0 {
            return None;
        }
        let label = SpanLabel {
            trace_id: p.ctx.trace_id,
            span_id: p.ctx.span_id,
            name: name.into(),
        };
        let id = label.span_id_hex();
        if self.publishing {
            let tag = (p.tid, p.request_ns);
            self.published.push(Published {
                tag,
                sampled: self.sampled.remove(&tag),
                span: Arc::new(label),
            });
        }
        Some(id)
    }

    /// Queues a span for the next flush, within `max_finished_spans`.
    fn finish(&mut self, finished: Finished) {
        if self.finished.len() >= self.cfg.max_finished_spans {
            self.m.drop(DropReason::BufferFull, 1);
            return;
        }
        self.finished.push(finished);
    }
}

/// Where log batches go (the log pipeline's `try_submit`: never waits).
pub type LogOut = Box<dyn FnMut(loupe_collector::logs::LogBatch) + Send>;

/// Where changes of what threads serve go.
pub type ServingOut = Box<dyn FnMut(&[ServingChange]) + Send>;

/// What the span builder thread does besides spans.
#[derive(Default)]
pub struct Correlation {
    /// Publish which span each server request became, for the profiler.
    pub index: Option<SpanIndex>,
    /// Turn LOG events into log records and hand them over here.
    pub logs: Option<(crate::logs::LogConfig, LogOut)>,
    /// Publish what each thread serves (trace id, span id) as it changes.
    pub serving: Option<ServingOut>,
}

/// Log records that trigger a flush before [`FLUSH_INTERVAL`].
const FLUSH_LOGS: usize = 1024;
/// How long a line waits for its end before it goes out as it is.
const PARTIAL_LINE_AGE_NS: u64 = 1_000_000_000;

/// Runs a [`SpanBuilder`] on the thread `loupe-spans` until `rx` closes: consumes events, and
/// every [`FLUSH_INTERVAL`] (or [`FLUSH_SPANS`] finished spans) hands finished spans to
/// `exporter` with `try_submit` (never waits; drops are counted by the trace pipeline), and log
/// records likewise. When the channel closes, flushes what is finished and returns.
pub fn spawn_span_builder(
    rx: Receiver<SocketEvents>,
    exporter: TraceSubmitter,
    registry: &Registry,
    host_name: String,
    config: SpanBuilderConfig,
    correlation: Correlation,
) -> std::io::Result<JoinHandle<()>> {
    let clock = Clock::new();
    let mut builder = SpanBuilder::new(config, registry, host_name, clock, Box::new(ProcResolver));
    if let Some(index) = correlation.index {
        builder = builder.with_span_index(index);
    }
    if let Some(out) = correlation.serving {
        builder = builder.with_serving_out(out);
    }
    let mut log_out = None;
    if let Some((log_config, out)) = correlation.logs {
        let scope = builder.scope.clone();
        builder = builder.with_logs(LogAssembler::new(log_config, registry, clock, scope));
        log_out = Some(out);
    }
    std::thread::Builder::new()
        .name("loupe-spans".into())
        .spawn(move || run(builder, &rx, &exporter, log_out))
}

fn run(
    mut builder: SpanBuilder,
    rx: &Receiver<SocketEvents>,
    exporter: &TraceSubmitter,
    mut log_out: Option<LogOut>,
) {
    let flush = |b: &mut SpanBuilder| {
        while let Some(batch) = b.take_batch(MAX_BATCH_SPANS) {
            if !exporter.try_submit(Arc::new(batch)) {
                tracing::debug!("a trace sink's queue was full: spans dropped");
            }
        }
    };
    let flush_logs = |b: &mut SpanBuilder, out: &mut Option<LogOut>, partial_age: u64| {
        if let Some(out) = out
            && let Some(batch) = b.take_logs(monotonic_now_ns(), partial_age)
        {
            out(batch);
        }
    };
    let mut next = Instant::now() + FLUSH_INTERVAL;
    loop {
        match rx.recv_timeout(next.saturating_duration_since(Instant::now())) {
            Ok(events) => {
                builder.handle_all(&events);
                if builder.finished_len() >= FLUSH_SPANS {
                    flush(&mut builder);
                }
                if builder.logs_pending() >= FLUSH_LOGS {
                    flush_logs(&mut builder, &mut log_out, PARTIAL_LINE_AGE_NS);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                builder.settle_lingering(u64::MAX);
                flush(&mut builder);
                flush_logs(&mut builder, &mut log_out, 0);
                builder.shutdown();
                return;
            }
        }
        if Instant::now() >= next {
            builder.tick(monotonic_now_ns());
            flush(&mut builder);
            flush_logs(&mut builder, &mut log_out, PARTIAL_LINE_AGE_NS);
            next = Instant::now() + FLUSH_INTERVAL;
        }
    }
}

/// CLOCK_MONOTONIC in nanoseconds, the clock of the kernel's timestamps.
fn monotonic_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the kernel to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}
