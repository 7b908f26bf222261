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
//!   of the client span (matched by the connection's initial sequence numbers, through any NAT;
//!   by the client's address and port where an end has none), across processes.
//!
//! Limits:
//! - thread-based parenting assumes a thread serves one request at a time. Async runtimes
//!   (Tokio, Go, Node.js, Netty) that interleave requests on a thread or move a request between
//!   threads give children the wrong parent or none; connection pools are fine (the thread that
//!   issues the query counts, not the connection);
//! - same-host linking needs both ends' OPEN events (their initial sequence numbers): a
//!   connection open before the agent started is linked by the client's address and port,
//!   which SNAT (masquerade, Docker port publishing from another address) hides; a client
//!   using TCP Fast Open's deferred connect reports its ISN off by one and stays unlinked;
//! - TLS is read in clear only through OpenSSL's and Go's `crypto/tls` probes
//!   (`flags::PLAINTEXT` events: a connection switches to them at the first, and its ciphertext
//!   is ignored from then on); `url.query` is never recorded (it often carries secrets);
//! - a response written before the request's client event is processed (a preempted client)
//!   leaves that server span unlinked.
//!
//! Files: `mod.rs` the builder (connections, events in, batches out), `core.rs` the event
//! handlers, `context.rs` trace context, `conn.rs` per-connection state, `emit.rs` spans by
//! protocol and `attrs.rs` their attributes, `red.rs` RED metrics, `process.rs` service names and
//! resources, `metrics.rs` the builder's own metrics, `thread.rs` the `loupe-spans` thread.
//!
//! Memory is bounded: connections (LRU eviction), parser buffers (a byte budget, LRU eviction),
//! requests waiting per connection, spans waiting for a flush, context maps, process cache and
//! RED series. Everything dropped is counted: `loupe_spans_dropped_total{reason}` (spans) and
//! `loupe_spans_connections_evicted_total{reason}` (connection state).

mod attrs;
mod conn;
mod context;
mod core;
mod emit;
mod metrics;
mod process;
mod red;
#[cfg(test)]
mod tests;
mod thread;

use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};

use loupe_collector::profile::SpanLabel;
use loupe_collector::telemetry::Registry;
use loupe_collector::traces::proto::common::InstrumentationScope;
use loupe_collector::traces::{ResourceBatch, SpanData, Text, TraceBatch};
use loupe_common::socket::{COMM_BYTES, SocketEventHeader, TcpIsns, direction, flags, kind, role};
use loupe_protocols::detect::{Protocol, classify};
use loupe_protocols::{Direction, End, Flow, Role, http1, http2, mysql, redis};

use super::{Clock, SocketEvent, SocketEvents};
use crate::correlate::{Published, RequestTag, SpanIndex};
use crate::logs::{LogAssembler, LogWrite};
pub use conn::MAX_DETECT_ATTEMPTS;
use conn::{
    Chunk, Conn, GrpcRequest, HttpRequest, MAX_HELD_BYTES, Parser, Pending, RawChunk, Request,
    flow_index,
};
pub use context::IdGenerator;
pub use context::ServingChange;
use context::{ClientLink, Isns, KernelCtx, LinkKey, RequestRef, SpanContext, TraceContexts};
use metrics::{DropReason, EvictReason, Metrics};
pub use process::{ProcResolver, ProcessResolver};
use process::{ProcessCache, ProcessInfo};
use red::RedMetrics;
pub use thread::{Correlation, LogOut, ServingOut, spawn_span_builder};

/// Instrumentation scope name of every span.
pub const SCOPE_NAME: &str = "loupe";
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
    /// Link a client request to the server request it becomes on this host by their shared
    /// TCP connection (off: only in-band context and `traceparent` link them).
    pub link_same_host: bool,
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
            link_same_host: true,
        }
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

/// Lingering server spans, oldest first, each findable by its request in constant time: a span
/// re-parented early leaves an empty slot behind instead of being cut out of the middle of the
/// queue (which moved thousands of spans per re-parent at a high rate).
#[derive(Default)]
struct Lingerers {
    queue: VecDeque<Option<Lingering>>,
    /// The sequence number of `queue[0]`.
    first_seq: u64,
    /// The sequence number of each waiting request.
    index: HashMap<RequestRef, u64>,
}

impl Lingerers {
    /// Slots held, empty ones included (what the bound applies to).
    fn slots(&self) -> usize {
        self.queue.len()
    }

    fn push(&mut self, l: Lingering) {
        let seq = self.first_seq + self.queue.len() as u64;
        self.index.insert(l.request, seq);
        self.queue.push_back(Some(l));
    }

    /// Takes the span of `request` out of the queue, if it waits.
    fn take(&mut self, request: RequestRef) -> Option<Lingering> {
        let seq = self.index.remove(&request)?;
        let i = usize::try_from(seq.checked_sub(self.first_seq)?).ok()?;
        self.queue.get_mut(i)?.take()
    }

    /// The oldest waiting span if `due` says it waited long enough; empty slots at the front are
    /// dropped on the way.
    fn pop_if(&mut self, due: impl Fn(&Lingering) -> bool) -> Option<Lingering> {
        loop {
            match self.queue.front() {
                None => return None,
                Some(None) => {}
                Some(Some(l)) if due(l) => {}
                Some(Some(_)) => return None,
            }
            let front = self.queue.pop_front().flatten();
            let seq = self.first_seq;
            self.first_seq += 1;
            if let Some(l) = front {
                if self.index.get(&l.request) == Some(&seq) {
                    self.index.remove(&l.request);
                }
                return Some(l);
            }
        }
    }
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
    addr_names: attrs::AddrNames,
    routes: attrs::RouteNames,
    red: RedMetrics,
    m: Metrics,
    /// Each with its [`SpanData::approx_bytes`].
    finished: Vec<(Finished, usize)>,
    /// In the order they finished (so the oldest is first).
    lingering: Lingerers,
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

/// How stale a connection's place in the least-recently-used order may be.
const LRU_GRANULARITY_NS: u64 = 100_000_000;

/// What the connection parsers reported for one chunk (or a close), reused between chunks.
#[derive(Default)]
struct ParserEvents {
    http: Vec<http1::Event>,
    http2: Vec<http2::Event>,
    mysql: Vec<mysql::Event>,
    redis: Vec<redis::Event>,
}

/// Turns socket events into spans; see the module docs.
pub struct SpanBuilder {
    conns: HashMap<u64, Conn>,
    /// `(last_seen, conn_id)` of every connection, oldest first; `last_seen` lags the last
    /// event by less than [`LRU_GRANULARITY_NS`].
    lru: BTreeSet<(u64, u64)>,
    buffered: usize,
    events: ParserEvents,
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
            events: ParserEvents::default(),
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
                addr_names: attrs::AddrNames::default(),
                routes: attrs::RouteNames::default(),
                red,
                m: Metrics::new(registry),
                finished: Vec::new(),
                lingering: Lingerers::default(),
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
                let comm = ev.data.get(..COMM_BYTES).unwrap_or(&ev.data);
                self.core
                    .processes
                    .get_or_name(h.pid, self.core.now, Some(comm));
                self.touch(h);
                if let Some(conn) = self.conns.get_mut(&h.conn_id) {
                    conn.isns = TcpIsns::from_open_data(&ev.data).and_then(|i| Isns::of(&i));
                }
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
        while let Some(l) = core
            .lingering
            .pop_if(|l| now_monotonic_ns.saturating_sub(l.since_ns) >= LINGER_NS)
        {
            core.ctx.forget(l.key, l.request);
            core.finish(l.finished);
        }
    }

    /// Spans finished and not yet taken.
    pub fn finished_len(&self) -> usize {
        self.core.finished.len()
    }

    /// Up to `max` finished spans, grouped by process; `None` when none.
    pub fn take_batch(&mut self, max: usize) -> Option<TraceBatch> {
        self.take_sized_batch(max).map(|(batch, _)| batch)
    }

    /// [`SpanBuilder::take_batch`] with the batch's [`SignalBatch::approx_bytes`], tallied as
    /// its spans finished (walking a thousand spans again at submission cost more).
    ///
    /// [`SignalBatch::approx_bytes`]: loupe_collector::export::SignalBatch::approx_bytes
    pub fn take_sized_batch(&mut self, max: usize) -> Option<(TraceBatch, u64)> {
        if self.core.finished.is_empty() {
            return None;
        }
        let n = max.max(1).min(self.core.finished.len());
        // Spans per process first, so that each process's list is allocated once.
        // (its batch in `out` once made, its spans)
        let mut by_pid: HashMap<u32, (Option<usize>, usize)> = HashMap::new();
        for (f, _) in &self.core.finished[..n] {
            by_pid.entry(f.pid).or_default().1 += 1;
        }
        let mut out: Vec<ResourceBatch> = Vec::with_capacity(by_pid.len());
        let mut bytes = 0usize;
        for (f, span_bytes) in self.core.finished.drain(..n) {
            let (slot, count) = by_pid.entry(f.pid).or_insert((None, 1));
            let i = *slot.get_or_insert_with(|| {
                out.push(ResourceBatch {
                    resource: f.process.resource.clone(),
                    scope: self.scope.clone(),
                    spans: Vec::with_capacity(*count),
                });
                out.len() - 1
            });
            out[i].spans.push(f.span);
            bytes += span_bytes;
        }
        bytes += out.capacity() * std::mem::size_of::<ResourceBatch>();
        Some((TraceBatch { resources: out }, bytes as u64))
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
        let conn = match self.conns.entry(h.conn_id) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                let role = match h.role {
                    role::CLIENT => Role::Client,
                    role::SERVER => Role::Server,
                    _ => Role::Unknown,
                };
                self.lru.insert((now, h.conn_id));
                e.insert(Conn::new(h.pid, role, h.tuple, now))
            }
        };
        if conn.tuple.local_port == 0 && h.tuple.local_port != 0 {
            conn.tuple = h.tuple;
        }
        // The order is kept to LRU_GRANULARITY_NS: moving the connection in the tree on every
        // event cost more than parsing its bytes.
        if now.saturating_sub(conn.last_seen) >= LRU_GRANULARITY_NS || conn.last_seen > now {
            self.lru.remove(&(conn.last_seen, h.conn_id));
            conn.last_seen = now;
            self.lru.insert((now, h.conn_id));
        }
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
            kctx: (h.flags & flags::CTX != 0 && h.ctx.span_id != [0; 8]).then(|| KernelCtx {
                trace_id: h.ctx.trace_id,
                span_id: h.ctx.span_id,
                parent_id: (h.ctx.parent_id != [0; 8]).then_some(h.ctx.parent_id),
                from_peer: h.flags & flags::CTX_FROM_PEER != 0,
            }),
        };
        if h.flags & flags::REQUEST_SAMPLED != 0 {
            self.core.note_sampled((h.pid, h.request_ns));
        }
        let id = h.conn_id;
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        match (h.flags & flags::PLAINTEXT != 0, conn.plaintext) {
            // The first plaintext from the TLS probes: what came before was the handshake.
            (true, false) => {
                conn.plaintext = true;
                conn.parser = Parser::Detecting(Vec::new());
                conn.detect_attempts = 0;
                conn.c2s_open = None;
                self.core.m.tls_plaintext.inc();
            }
            // Ciphertext of a connection read in clear (alerts, close_notify, key updates).
            (false, true) => return,
            _ => {}
        }
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
            kctx: raw.kctx,
        };
        if matches!(conn.parser, Parser::Http(_))
            && flow == Flow::ClientToServer
            && conn.c2s_open.is_none()
        {
            conn.c2s_open = Some(chunk);
        }
        let total = raw.total;
        let ev = &mut self.events;
        let switched = match &mut conn.parser {
            Parser::Http(p) => {
                p.feed(flow, captured, total, &mut ev.http);
                p.take_http2()
            }
            Parser::Http2(p) => {
                p.feed(flow, captured, total, &mut ev.http2);
                None
            }
            Parser::MySql(p) => {
                p.feed(flow, captured, total, &mut ev.mysql);
                None
            }
            Parser::Redis(p) => {
                p.feed(flow, captured, total, &mut ev.redis);
                None
            }
            Parser::Detecting(_) | Parser::Opaque => None,
        };
        if let Some(held) = switched {
            // `Upgrade: h2c` answered: HTTP/2 takes over, from the bytes that followed the 101.
            let mut h2 = Box::new(loupe_protocols::http2::Http2Connection::upgraded());
            for (flow, bytes, total) in &held {
                h2.feed(*flow, bytes, *total, &mut ev.http2);
            }
            conn.parser = Parser::Http2(h2);
            self.core.m.h2c_upgrades.inc();
        }
        self.core.dispatch(id, conn, Some(chunk), ev);
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
        let ev = &mut self.events;
        match &mut conn.parser {
            Parser::Http(p) => p.close(&mut ev.http),
            Parser::Http2(p) => p.close(&mut ev.http2),
            Parser::MySql(p) => p.close(&mut ev.mysql),
            Parser::Redis(p) => p.close(&mut ev.redis),
            Parser::Detecting(_) | Parser::Opaque => {}
        }
        core.dispatch(id, &mut conn, None, ev);
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
        if self.core.reparents.is_empty() && self.core.linked.is_empty() {
            return;
        }
        // Taken out for the loop and put back empty, so that its buffer is kept.
        let mut reparents = std::mem::take(&mut self.core.reparents);
        for ((conn_id, req_id), trace_id, parent) in reparents.drain(..) {
            let Some(p) = self.conns.get_mut(&conn_id).and_then(|c| c.get_mut(req_id)) else {
                // Finished already: it lingers for exactly this.
                let core = &mut self.core;
                if let Some(mut l) = core.lingering.take((conn_id, req_id)) {
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
        self.core.reparents = reparents;
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
