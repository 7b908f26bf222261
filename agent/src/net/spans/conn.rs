//! Per-connection state: the protocol parser, timing of the flows, and the requests waiting
//! for their response.

use std::collections::VecDeque;

use loupe_common::socket::ConnTuple;
use loupe_protocols::http1::{self, Method};
use loupe_protocols::http2::{self, Http2Connection};
use loupe_protocols::{Direction, Flow, MySqlConnection, RedisConnection, Role};

use super::attrs::{MAX_URL_LEN, MAX_USER_AGENT_LEN, cut};
use super::context::{Isns, KernelCtx, LinkKey, SpanContext};

/// Chunks inspected for a protocol before a connection is left alone.
pub const MAX_DETECT_ATTEMPTS: u8 = 4;
/// Bytes of unrecognized first chunks held so that a start split across syscalls (a request
/// line read in pieces) is still recognized, and then parsed.
pub const MAX_HELD_BYTES: usize = 1024;
/// Heap bytes counted per waiting request besides its strings.
const PENDING_BASE_BYTES: usize = 160;

/// The parser a connection runs.
#[derive(Debug)]
pub enum Parser {
    /// No protocol recognized yet; fully captured first chunks of one direction are held.
    Detecting(Vec<(RawChunk, Vec<u8>)>),
    Http(Box<http1::Http1Connection>),
    Http2(Box<Http2Connection>),
    MySql(Box<MySqlConnection>),
    Redis(Box<RedisConnection>),
    /// Unrecognized, encrypted, or a database seen from its server side: no spans.
    Opaque,
}

impl Parser {
    pub fn buffered_bytes(&self) -> usize {
        match self {
            Parser::Http(p) => p.buffered_bytes(),
            Parser::Http2(p) => p.buffered_bytes(),
            Parser::MySql(p) => p.buffered_bytes(),
            Parser::Redis(p) => p.buffered_bytes(),
            Parser::Detecting(held) => held.iter().map(|(_, b)| b.capacity()).sum(),
            Parser::Opaque => 0,
        }
    }

    pub fn desyncs(&self) -> u64 {
        match self {
            Parser::Http(p) => p.desyncs(),
            Parser::Http2(p) => p.desyncs(),
            Parser::MySql(p) => p.desyncs(),
            Parser::Redis(p) => p.desyncs(),
            Parser::Detecting(_) | Parser::Opaque => 0,
        }
    }
}

/// One syscall as the kernel reported it (its bytes travel separately).
#[derive(Debug, Clone, Copy)]
pub struct RawChunk {
    pub dir: Direction,
    /// Bytes the syscall moved (at least the captured ones).
    pub total: u64,
    pub start_ns: u64,
    pub end_ns: u64,
    pub tid: u32,
    /// The kernel's request tag (see `correlate`), 0 when none.
    pub request_ns: u64,
    /// The context the kernel gave the request these bytes start or belong to.
    pub kctx: Option<KernelCtx>,
}

/// One syscall's bytes as the builder times them.
#[derive(Debug, Clone, Copy)]
pub struct Chunk {
    pub flow: Flow,
    /// When a request starting in this chunk started: for bytes the process read, the end of
    /// the read (a blocking read's wait is not the request); for bytes it wrote, the start of
    /// the write.
    pub start_ns: u64,
    /// When the syscall completed.
    pub end_ns: u64,
    pub tid: u32,
    /// The kernel's request tag (see `correlate`), 0 when none.
    pub request_ns: u64,
    /// The context the kernel gave the request these bytes start or belong to.
    pub kctx: Option<KernelCtx>,
}

/// What a waiting request needs to become a span.
#[derive(Debug)]
pub enum Request {
    Http(HttpRequest),
    Grpc(GrpcRequest),
    MySql(DbRequest),
    Redis(DbRequest),
}

#[derive(Debug)]
pub struct HttpRequest {
    pub method: Method,
    /// The request target, cut to [`MAX_URL_LEN`].
    pub target: String,
    pub host: Option<String>,
    pub user_agent: Option<String>,
    /// `network.protocol.version`: 1.0, 1.1 or 2.
    pub version: &'static str,
    /// Set when the response head arrives.
    pub status: Option<u16>,
    /// An HTTP/2 POST whose content type was not known (HPACK picked up mid-way): gRPC if its
    /// response ends with trailers.
    pub maybe_grpc: bool,
}

impl HttpRequest {
    /// The request of a parsed head, its strings moved (cut to their limits).
    pub fn from_head(head: http1::RequestHead) -> Self {
        Self {
            method: head.method,
            target: cut_owned(head.target, MAX_URL_LEN),
            host: head.headers.host.map(|h| cut_owned(h, 255)),
            user_agent: head
                .headers
                .user_agent
                .map(|u| cut_owned(u, MAX_USER_AGENT_LEN)),
            version: head.version.as_str(),
            status: None,
            maybe_grpc: false,
        }
    }

    /// An HTTP/2 request: `:path` is the target, `:authority` the host.
    pub fn from_h2(h: &http2::Headers) -> Self {
        Self {
            method: Method::from_token(h.method.as_deref().unwrap_or("_OTHER").as_bytes()),
            target: cut(h.path.as_deref().unwrap_or(""), MAX_URL_LEN).to_owned(),
            host: h.authority.as_deref().map(|a| cut(a, 255).to_owned()),
            user_agent: h
                .user_agent
                .as_deref()
                .map(|u| cut(u, MAX_USER_AGENT_LEN).to_owned()),
            version: "2",
            status: None,
            maybe_grpc: unknown_content_type_post(h),
        }
    }

    fn heap_bytes(&self) -> usize {
        self.target.len()
            + self.host.as_ref().map_or(0, String::len)
            + self.user_agent.as_ref().map_or(0, String::len)
    }
}

/// `s` cut to at most `max` bytes on a character boundary, keeping no more heap than that.
fn cut_owned(mut s: String, max: usize) -> String {
    if s.len() > max {
        let keep = cut(&s, max).len();
        s.truncate(keep);
        s.shrink_to_fit();
    }
    s
}

/// A gRPC call (an HTTP/2 stream whose content-type is `application/grpc`).
#[derive(Debug)]
pub struct GrpcRequest {
    /// `rpc.service`: the path's first segment (`package.Service`); empty if `:path` was not
    /// known (HPACK picked up mid-way).
    pub service: String,
    /// `rpc.method`.
    pub method: String,
    /// `:authority`.
    pub authority: Option<String>,
    /// The HTTP status of the response headers, once seen.
    pub status: Option<u16>,
    /// The deadline the client sent (`grpc-timeout`).
    pub timeout_ns: Option<u64>,
}

/// A POST whose content type may have been among the header fields left unknown (HPACK picked
/// up mid-way): possibly gRPC.
fn unknown_content_type_post(h: &http2::Headers) -> bool {
    h.content_type.is_none() && h.unknown > 0 && h.method.as_deref() == Some("POST")
}

/// `/service/method` split, when `path` has that shape.
fn rpc_path(path: &str) -> Option<(&str, &str)> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    let ok = |s: &str| !s.is_empty() && !s.contains(['/', '?', ' ']);
    (ok(service) && ok(method)).then_some((service, method))
}

impl GrpcRequest {
    /// The request `h` if it is gRPC: its content type says so, or, the content type not being
    /// known (HPACK picked up mid-way), a POST to a package-qualified `/package.Service/Method`.
    pub fn from_h2(h: &http2::Headers) -> Option<Self> {
        let guess = || {
            unknown_content_type_post(h)
                && h.path
                    .as_deref()
                    .and_then(rpc_path)
                    .is_some_and(|(service, _)| service.contains('.'))
        };
        if !h.is_grpc() && !guess() {
            return None;
        }
        let mut g = Self::from_path(h.path.as_deref().unwrap_or(""));
        g.authority = h.authority.as_deref().map(|a| cut(a, 255).to_owned());
        g.timeout_ns = h.grpc_timeout_ns;
        Some(g)
    }

    /// A call to `path`; service and method are empty unless it is `/service/method`.
    pub fn from_path(path: &str) -> Self {
        let (service, method) = rpc_path(path).unwrap_or(("", ""));
        Self {
            service: cut(service, 255).to_owned(),
            method: cut(method, 255).to_owned(),
            authority: None,
            status: None,
            timeout_ns: None,
        }
    }

    fn heap_bytes(&self) -> usize {
        self.service.len() + self.method.len() + self.authority.as_ref().map_or(0, String::len)
    }
}

#[derive(Debug, Default)]
pub struct DbRequest {
    /// `db.operation.name`.
    pub operation: Option<String>,
    /// `db.query.text` (sanitized unless configured otherwise).
    pub query: Option<String>,
    /// `db.collection.name`.
    pub collection: Option<String>,
    /// `db.namespace`.
    pub namespace: Option<String>,
}

impl DbRequest {
    fn heap_bytes(&self) -> usize {
        [
            &self.operation,
            &self.query,
            &self.collection,
            &self.namespace,
        ]
        .iter()
        .map(|s| s.as_ref().map_or(0, String::len))
        .sum()
    }
}

/// A request waiting for its response.
#[derive(Debug)]
pub struct Pending {
    /// The parser's request id.
    pub id: u64,
    pub start_ns: u64,
    /// The thread that started it.
    pub tid: u32,
    /// The kernel's tag of the request on that thread (server requests; 0 when none): with
    /// `tid` it names the request CPU samples carry.
    pub request_ns: u64,
    pub ctx: SpanContext,
    /// The same-host link key it may wait under.
    pub link: Option<LinkKey>,
    pub request: Request,
}

impl Pending {
    pub fn heap_bytes(&self) -> usize {
        PENDING_BASE_BYTES
            + self.ctx.trace_state.len()
            + match &self.request {
                Request::Http(h) => h.heap_bytes(),
                Request::Grpc(g) => g.heap_bytes(),
                Request::MySql(d) | Request::Redis(d) => d.heap_bytes(),
            }
    }
}

/// One tracked connection.
#[derive(Debug)]
pub struct Conn {
    pub pid: u32,
    pub role: Role,
    pub tuple: ConnTuple,
    /// Its initial sequence numbers, from its OPEN event (none for a connection that was open
    /// before the agent started).
    pub isns: Option<Isns>,
    pub parser: Parser,
    pub detect_attempts: u8,
    /// Read through a TLS library's plaintext (`flags::PLAINTEXT` events): the socket's own
    /// bytes, ciphertext, are ignored from the first plaintext event on.
    pub plaintext: bool,
    /// Monotonic time of the last event, to `LRU_GRANULARITY_NS` (the LRU key, with the
    /// connection id).
    pub last_seen: u64,
    /// First chunk of a client-to-server message not yet attributed to a request.
    pub c2s_open: Option<Chunk>,
    /// The span id of the last kernel context a request of this connection took: pipelined
    /// requests the kernel saw as one must not share it.
    pub last_kernel_span: Option<[u8; 8]>,
    /// End time of the last chunk of each flow (`[client→server, server→client]`).
    pub last_end: [Option<u64>; 2],
    pub pending: VecDeque<Pending>,
    /// Heap bytes of `pending`.
    pub pending_bytes: usize,
    /// Bytes this connection adds to the builder's total, as last accounted.
    pub accounted: usize,
    /// Switched from HTTP/1.1 to HTTP/2 (`Upgrade: h2c`): the HTTP/1.1 request that asked,
    /// answered on stream 1 (see [`Conn::http2_key`]).
    pub upgraded_from: Option<u64>,
}

pub fn flow_index(flow: Flow) -> usize {
    match flow {
        Flow::ClientToServer => 0,
        Flow::ServerToClient => 1,
    }
}

impl Conn {
    pub fn new(pid: u32, role: Role, tuple: ConnTuple, now: u64) -> Self {
        Self {
            pid,
            role,
            tuple,
            isns: None,
            parser: Parser::Detecting(Vec::new()),
            detect_attempts: 0,
            plaintext: false,
            last_seen: now,
            c2s_open: None,
            last_kernel_span: None,
            last_end: [None; 2],
            pending: VecDeque::new(),
            pending_bytes: 0,
            accounted: 0,
            upgraded_from: None,
        }
    }

    /// The request key of HTTP/2 stream `stream`: its id, except on a connection upgraded from
    /// HTTP/1.1, where stream 1 is the request that asked (keyed by its HTTP/1.1 id) and the
    /// others are set apart from HTTP/1.1 ids.
    pub fn http2_key(&self, stream: u32) -> u64 {
        match self.upgraded_from {
            Some(id) if stream == 1 => id,
            Some(_) => (1 << 32) | u64::from(stream),
            None => u64::from(stream),
        }
    }

    /// Heap bytes attributable to this connection.
    pub fn bytes(&self) -> usize {
        self.parser.buffered_bytes() + self.pending_bytes
    }

    /// Queues a request; returns the oldest one if the queue was full.
    pub fn push(&mut self, p: Pending, cap: usize) -> Option<Pending> {
        let evicted = if self.pending.len() >= cap.max(1) {
            self.pending.pop_front()
        } else {
            None
        };
        if let Some(e) = &evicted {
            self.pending_bytes = self.pending_bytes.saturating_sub(e.heap_bytes());
        }
        self.pending_bytes += p.heap_bytes();
        self.pending.push_back(p);
        evicted
    }

    /// Removes and returns request `id`.
    pub fn take(&mut self, id: u64) -> Option<Pending> {
        let i = self.pending.iter().position(|p| p.id == id)?;
        let p = self.pending.remove(i)?;
        self.pending_bytes = self.pending_bytes.saturating_sub(p.heap_bytes());
        Some(p)
    }

    pub fn get(&self, id: u64) -> Option<&Pending> {
        self.pending.iter().find(|p| p.id == id)
    }

    pub fn get_mut(&mut self, id: u64) -> Option<&mut Pending> {
        self.pending.iter_mut().find(|p| p.id == id)
    }

    /// Removes every waiting request.
    pub fn drain(&mut self) -> Vec<Pending> {
        self.pending_bytes = 0;
        self.pending.drain(..).collect()
    }
}
