//! HTTP/1.x: incremental request and response parsing over captured syscall chunks.
//!
//! One [`Http1Connection`] per TCP connection. Feed it every chunk of both flows in syscall order:
//! `feed(flow, captured, total_len, &mut events)`. It emits, in wire order:
//!
//! - [`Event::RequestStart`] when a request head is complete, with a connection-unique `id`;
//! - [`Event::ResponseStart`] when a final response head is complete, with the `id` of the request
//!   it answers (FIFO, so keep-alive and pipelining pair correctly), or `None` if that request was
//!   never seen;
//! - [`Event::MessageEnd`] when a message's last byte has been accounted for.
//!
//! Bodies are never buffered: `Content-Length` and chunked bodies are skipped by count, so a body
//! outside the capture (only the first N bytes of each syscall) is still framed exactly. When
//! framing becomes unknowable (a chunk-size line or the end of a head falls outside the capture,
//! bad framing headers, a gap), the message gets `MessageEnd { end: End::Unknown }` later, when
//! the next message shows up, and the parser resyncs on the next thing that looks like a start
//! line (at a chunk start or right after a line feed).
//!
//! Interim `1xx` responses other than `101` are consumed without events. After `101 Switching
//! Protocols` or a `2xx` answer to `CONNECT`, both flows are a tunnel and produce no more events.
//! One upgrade is followed: a request asking for `Upgrade: h2c` answered by a `101` that names
//! `h2c` (RFC 7540 §3.2) gives [`Event::SwitchedToHttp2`] instead of the response's end, since
//! the request's real answer comes as HTTP/2 on stream 1; the bytes after the `101` head in the
//! same chunk (the server's preface and often that answer) are kept for the HTTP/2 parser
//! ([`Http1Connection::take_http2`]). HTTP/0.9 is not parsed.

use std::collections::VecDeque;

use crate::util::{find_byte, lossy, parse_u64, push_capped, trim_ows};
use crate::{End, Flow};

/// Largest request or response head kept, in bytes; a longer head is reported truncated.
pub const MAX_HEAD: usize = 8 * 1024;
/// Most requests awaiting a response; older ones are forgotten.
pub const MAX_PENDING: usize = 64;
/// Longest chunk-size line (with extensions).
const MAX_CHUNK_LINE: usize = 1024;
/// Most trailer bytes after the last chunk.
const MAX_TRAILERS: usize = 8 * 1024;

/// An HTTP request method.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Method {
    /// GET
    Get,
    /// HEAD
    Head,
    /// POST
    Post,
    /// PUT
    Put,
    /// DELETE
    Delete,
    /// CONNECT
    Connect,
    /// OPTIONS
    Options,
    /// TRACE
    Trace,
    /// PATCH
    Patch,
    /// Any other token (at most 20 characters), as sent. Semantic conventions report these as
    /// `_OTHER`.
    Other(String),
}

impl Method {
    /// The method named by `tok` (HTTP/2's `:method` too).
    pub fn from_token(tok: &[u8]) -> Method {
        match tok {
            b"GET" => Method::Get,
            b"HEAD" => Method::Head,
            b"POST" => Method::Post,
            b"PUT" => Method::Put,
            b"DELETE" => Method::Delete,
            b"CONNECT" => Method::Connect,
            b"OPTIONS" => Method::Options,
            b"TRACE" => Method::Trace,
            b"PATCH" => Method::Patch,
            other => Method::Other(lossy(other, false)),
        }
    }

    /// The method as sent.
    pub fn as_str(&self) -> &str {
        match self {
            Method::Other(s) => s,
            m => m.semconv(),
        }
    }

    /// The value for `http.request.method`: the method, or `_OTHER` for non-standard ones.
    pub fn semconv(&self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Connect => "CONNECT",
            Method::Options => "OPTIONS",
            Method::Trace => "TRACE",
            Method::Patch => "PATCH",
            Method::Other(_) => "_OTHER",
        }
    }
}

/// Methods accepted when resyncing or detecting (where a false positive costs more).
const KNOWN_METHODS: &[&[u8]] = &[
    b"GET",
    b"HEAD",
    b"POST",
    b"PUT",
    b"DELETE",
    b"CONNECT",
    b"OPTIONS",
    b"TRACE",
    b"PATCH",
    b"PROPFIND",
    b"PROPPATCH",
    b"MKCOL",
    b"COPY",
    b"MOVE",
    b"LOCK",
    b"UNLOCK",
    b"REPORT",
    b"SEARCH",
    b"PURGE",
];

/// HTTP version of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    /// HTTP/1.0
    Http10,
    /// HTTP/1.1 (and any other HTTP/1.x minor version)
    Http11,
}

impl Version {
    /// `1.0` or `1.1`, for `network.protocol.version`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Version::Http10 => "1.0",
            Version::Http11 => "1.1",
        }
    }
}

/// The headers Loupe reads; everything else is skipped. Values are trimmed; repeated headers are
/// joined with `, ` except `Host`, which keeps the first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    /// `Host`
    pub host: Option<String>,
    /// `User-Agent`
    pub user_agent: Option<String>,
    /// `traceparent` (parse with [`crate::traceparent::parse`])
    pub traceparent: Option<String>,
    /// `tracestate`
    pub tracestate: Option<String>,
    /// `Content-Length`, when present, numeric and consistent.
    pub content_length: Option<u64>,
    /// `Transfer-Encoding`
    pub transfer_encoding: Option<String>,
    /// `Connection`
    pub connection: Option<String>,
    /// `Content-Type`
    pub content_type: Option<String>,
    /// `Upgrade`
    pub upgrade: Option<String>,
    /// A `Content-Length` was present but not a valid, consistent number.
    pub content_length_invalid: bool,
}

impl Headers {
    fn apply(&mut self, name: &[u8], value: &[u8]) {
        let join = |slot: &mut Option<String>, v: &[u8]| match slot {
            Some(s) => {
                s.push_str(", ");
                s.push_str(&lossy(v, false));
            }
            None => *slot = Some(lossy(v, false)),
        };
        let n = |want: &str| name.eq_ignore_ascii_case(want.as_bytes());
        if n("host") {
            if self.host.is_none() {
                self.host = Some(lossy(value, false));
            }
        } else if n("user-agent") {
            join(&mut self.user_agent, value);
        } else if n("traceparent") {
            join(&mut self.traceparent, value);
        } else if n("tracestate") {
            join(&mut self.tracestate, value);
        } else if n("content-length") {
            // "5, 5" (a proxy-merged duplicate) is fine; differing values are not.
            for part in value.split(|&c| c == b',') {
                match parse_u64(trim_ows(part)) {
                    Some(v) if self.content_length.is_none_or(|old| old == v) => {
                        self.content_length = Some(v);
                    }
                    _ => self.content_length_invalid = true,
                }
            }
        } else if n("transfer-encoding") {
            join(&mut self.transfer_encoding, value);
        } else if n("connection") {
            join(&mut self.connection, value);
        } else if n("content-type") {
            join(&mut self.content_type, value);
        } else if n("upgrade") {
            join(&mut self.upgrade, value);
        }
    }

    /// Whether the last transfer coding is `chunked`.
    fn chunked_last(&self) -> bool {
        self.transfer_encoding.as_deref().is_some_and(|te| {
            te.rsplit(',')
                .next()
                .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"))
        })
    }

    /// Whether `Connection` lists `token`.
    pub fn connection_has(&self, token: &str) -> bool {
        self.connection
            .as_deref()
            .is_some_and(|c| c.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    }
}

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// Method.
    pub method: Method,
    /// Request target as sent (path and query, or absolute URI, `*`, `host:port`); see
    /// [`crate::route::infer_route`].
    pub target: String,
    /// Version.
    pub version: Version,
    /// Headers of interest.
    pub headers: Headers,
    /// The head was cut (capture limit or over [`MAX_HEAD`]): headers may be missing.
    pub truncated: bool,
}

impl RequestHead {
    /// Whether the client asks to keep the connection open after this exchange.
    pub fn keep_alive(&self) -> bool {
        match self.version {
            Version::Http11 => !self.headers.connection_has("close"),
            Version::Http10 => self.headers.connection_has("keep-alive"),
        }
    }
}

/// A parsed response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    /// Version.
    pub version: Version,
    /// Status code (100–999).
    pub status: u16,
    /// Headers of interest.
    pub headers: Headers,
    /// The head was cut (capture limit or over [`MAX_HEAD`]): headers may be missing.
    pub truncated: bool,
}

/// What an [`Http1Connection`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A request head was parsed.
    RequestStart {
        /// Connection-unique request id, increasing from 0.
        id: u64,
        /// The head.
        head: RequestHead,
    },
    /// A final (non-1xx, or 101) response head was parsed.
    ResponseStart {
        /// The request it answers, or `None` if that request was not seen.
        request_id: Option<u64>,
        /// The head.
        head: ResponseHead,
    },
    /// The connection switched to HTTP/2 in clear text after answering request `request_id` with
    /// `101`: that request's response is stream 1's on the HTTP/2 connection, and nothing more
    /// comes from this parser (see [`Http1Connection::take_http2`]).
    SwitchedToHttp2 {
        /// The request that asked for the upgrade, when it was seen.
        request_id: Option<u64>,
    },
    /// A message is over.
    MessageEnd {
        /// Which side's message.
        flow: Flow,
        /// The request id (for responses: the answered request's), when known.
        id: Option<u64>,
        /// How it ended; see [`End`] for timing `Unknown` ends.
        end: End,
        /// Body bytes framed (exact for complete messages, a lower bound otherwise).
        body_len: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Request,
    Response,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunked {
    Size {
        value: u64,
        digits: u8,
        ext: bool,
        len: usize,
    },
    Data(u64),
    DataEnd {
        cr: bool,
    },
    Trailer {
        line: usize,
        total: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between messages or inside a head (bytes accumulate in `buf`).
    Idle,
    Length(u64),
    Chunked(Chunked),
    UntilClose,
    /// Framing lost: scanning for a start line at line starts.
    Lost,
    /// Upgraded or CONNECTed: opaque bytes.
    Tunnel,
}

#[derive(Debug)]
struct Side {
    kind: Kind,
    state: State,
    buf: Vec<u8>,
    scan_from: usize,
    /// Id of the message in progress (request id, or the request a response answers).
    cur: Option<u64>,
    /// A message has started (its start event was emitted) and not ended.
    open: bool,
    body_len: u64,
    /// A message whose end is unknown and not yet reported: `Some(its id)`.
    lost_msg: Option<Option<u64>>,
    /// In `Lost`: whether the next position is a line start.
    line_start: bool,
}

impl Side {
    fn new(kind: Kind) -> Side {
        Side {
            kind,
            state: State::Idle,
            buf: Vec::new(),
            scan_from: 0,
            cur: None,
            open: false,
            body_len: 0,
            lost_msg: None,
            line_start: true,
        }
    }

    fn flow(&self) -> Flow {
        match self.kind {
            Kind::Request => Flow::ClientToServer,
            Kind::Response => Flow::ServerToClient,
        }
    }

    fn flush_lost(&mut self, out: &mut Vec<Event>) {
        if let Some(id) = self.lost_msg.take() {
            out.push(Event::MessageEnd {
                flow: self.flow(),
                id,
                end: End::Unknown,
                body_len: self.body_len,
            });
        }
    }

    fn end_message(&mut self, out: &mut Vec<Event>) {
        out.push(Event::MessageEnd {
            flow: self.flow(),
            id: self.cur,
            end: End::Complete,
            body_len: self.body_len,
        });
        self.state = State::Idle;
        self.cur = None;
        self.open = false;
        self.body_len = 0;
    }

    /// Marks a message as started.
    fn start_message(&mut self, id: Option<u64>) {
        self.cur = id;
        self.open = true;
        self.body_len = 0;
    }

    /// Framing is lost; an open message's end becomes unknown. `line_start`: whether the next
    /// byte begins a line (resync candidates are line starts).
    fn lose(&mut self, line_start: bool) {
        if self.open {
            // An earlier unreported loss was flushed when this message started.
            self.lost_msg = Some(self.cur);
        }
        self.state = State::Lost;
        self.buf.clear();
        self.scan_from = 0;
        self.cur = None;
        self.open = false;
        self.line_start = line_start;
    }
}

/// Per-connection HTTP/1.x parser for both flows.
#[derive(Debug)]
pub struct Http1Connection {
    req: Side,
    resp: Side,
    next_id: u64,
    pending: VecDeque<Pending>,
    desyncs: u64,
    /// After an h2c upgrade: the bytes that followed, per chunk (flow, captured bytes, the
    /// chunk's byte count), until taken; `None` otherwise.
    http2: Option<Vec<(Flow, Vec<u8>, u64)>>,
}

/// Bytes kept after an h2c upgrade until the HTTP/2 parser takes them (one chunk's worth).
const MAX_SWITCH_HELD: usize = 16 * 1024;

#[derive(Debug, Clone, Copy)]
struct Pending {
    id: u64,
    head: bool,
    connect: bool,
    /// The request asked for `Upgrade: h2c`.
    h2c: bool,
}

impl Default for Http1Connection {
    fn default() -> Self {
        Self::new()
    }
}

/// Result of checking whether bytes can begin a start line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Check {
    Yes,
    No,
    NeedMore,
}

/// Methods are case-sensitive tokens; every registered one is uppercase letters, `-` or `_`.
/// Accepting only those keeps garbage from being read as a method.
fn is_method_char(c: u8) -> bool {
    c.is_ascii_uppercase() || c == b'-' || c == b'_'
}

fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

/// Whether `b` can begin a request line. `strict` accepts only well-known methods.
pub(crate) fn check_request_line(b: &[u8], strict: bool) -> Check {
    let Some(sp) = b.iter().position(|&c| c == b' ') else {
        let ok = b.len() <= 20
            && b.iter().all(|&c| is_method_char(c))
            && (!strict || KNOWN_METHODS.iter().any(|m| m.starts_with(b)));
        return if ok { Check::NeedMore } else { Check::No };
    };
    let method = b.get(..sp).unwrap_or_default();
    let method_ok = if strict {
        KNOWN_METHODS.contains(&method)
    } else {
        !method.is_empty() && method.len() <= 20 && method.iter().all(|&c| is_method_char(c))
    };
    if !method_ok {
        return Check::No;
    }
    let rest = b.get(sp + 1..).unwrap_or_default();
    let Some(sp2) = rest
        .iter()
        .position(|&c| c == b' ' || c == b'\r' || c == b'\n')
    else {
        return if rest.iter().all(|&c| c > b' ' && c != 0x7f) {
            Check::NeedMore
        } else {
            Check::No
        };
    };
    let target = rest.get(..sp2).unwrap_or_default();
    if target.is_empty()
        || !target.iter().all(|&c| c > b' ' && c != 0x7f)
        || rest.get(sp2) != Some(&b' ')
    {
        return Check::No;
    }
    if strict && !matches!(target.first(), Some(b'/' | b'*' | b'h' | b'H')) && method != b"CONNECT"
    {
        return Check::No;
    }
    check_version_then(rest.get(sp2 + 1..).unwrap_or_default(), true)
}

/// Checks `HTTP/1.x` and, for request lines (`eol`), the line end that follows.
fn check_version_then(v: &[u8], eol: bool) -> Check {
    const P: &[u8] = b"HTTP/1.";
    let n = v.len().min(P.len());
    if v.get(..n) != P.get(..n) {
        return Check::No;
    }
    match v.get(P.len()) {
        None => return Check::NeedMore,
        Some(c) if c.is_ascii_digit() => {}
        Some(_) => return Check::No,
    }
    if !eol {
        return Check::Yes;
    }
    match v.get(P.len() + 1) {
        None => Check::NeedMore,
        Some(b'\n') => Check::Yes,
        Some(b'\r') => match v.get(P.len() + 2) {
            None => Check::NeedMore,
            Some(b'\n') => Check::Yes,
            Some(_) => Check::No,
        },
        Some(_) => Check::No,
    }
}

/// Whether `b` can begin a status line (`HTTP/1.x SP 3DIGIT`).
pub(crate) fn check_status_line(b: &[u8]) -> Check {
    match check_version_then(b, false) {
        Check::Yes => {}
        other => return other,
    }
    let rest = b.get(9..).unwrap_or_default();
    if b.get(8).is_some_and(|&c| c != b' ') {
        return Check::No;
    }
    for i in 0..3 {
        match rest.get(i) {
            None => return Check::NeedMore,
            Some(c) if c.is_ascii_digit() => {}
            Some(_) => return Check::No,
        }
    }
    if rest.first() == Some(&b'0') {
        return Check::No;
    }
    match rest.get(3) {
        None => Check::NeedMore,
        Some(b' ' | b'\r' | b'\n') => Check::Yes,
        Some(_) => Check::No,
    }
}

fn check_start(kind: Kind, b: &[u8], strict: bool) -> Check {
    match kind {
        Kind::Request => check_request_line(b, strict),
        Kind::Response => check_status_line(b),
    }
}

/// End (exclusive) of the head: the position after the first empty line, searching from `from`.
fn find_head_end(b: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(k) = find_byte(b, i, b'\n') {
        match (b.get(k + 1), b.get(k + 2)) {
            (Some(b'\n'), _) => return Some(k + 2),
            (Some(b'\r'), Some(b'\n')) => return Some(k + 3),
            _ => i = k + 1,
        }
    }
    None
}

fn version_of(v: &[u8]) -> Version {
    if v == b"HTTP/1.0" {
        Version::Http10
    } else {
        Version::Http11
    }
}

enum Start {
    Request {
        method: Method,
        target: String,
        version: Version,
    },
    Response {
        version: Version,
        status: u16,
    },
}

fn parse_start(kind: Kind, line: &[u8]) -> Option<Start> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    match kind {
        Kind::Request => {
            let mut it = line.splitn(3, |&c| c == b' ');
            let method = it.next()?;
            let target = it.next()?;
            let version = it.next()?;
            if method.is_empty()
                || method.len() > 20
                || !method.iter().all(|&c| is_method_char(c))
                || target.is_empty()
                || version.len() != 8
                || !version.starts_with(b"HTTP/1.")
            {
                return None;
            }
            Some(Start::Request {
                method: Method::from_token(method),
                target: lossy(target, false),
                version: version_of(version),
            })
        }
        Kind::Response => {
            let version = line.get(..8)?;
            if !version.starts_with(b"HTTP/1.") || line.get(8) != Some(&b' ') {
                return None;
            }
            let code = line.get(9..12)?;
            let status = u16::try_from(parse_u64(code)?).ok()?;
            if !(100..=999).contains(&status) || line.get(12).is_some_and(|&c| c != b' ') {
                return None;
            }
            Some(Start::Response {
                version: version_of(version),
                status,
            })
        }
    }
}

/// Parses the header lines of `head` (after the start line); lines cut short are ignored.
fn parse_headers(lines: &[u8]) -> Headers {
    let mut h = Headers::default();
    for line in lines.split(|&c| c == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.first().is_some_and(|&c| c == b' ' || c == b'\t') {
            continue; // obsolete line folding: ignored
        }
        if let Some(colon) = line.iter().position(|&c| c == b':') {
            let name = line.get(..colon).unwrap_or_default();
            let value = trim_ows(line.get(colon + 1..).unwrap_or_default());
            if !name.is_empty() && name.iter().all(|&c| is_tchar(c)) {
                h.apply(name, value);
            }
        }
    }
    h
}

/// Whether an `Upgrade` header value lists the `h2c` token.
fn names_h2c(upgrade: Option<&str>) -> bool {
    upgrade.is_some_and(|u| u.split(',').any(|t| t.trim().eq_ignore_ascii_case("h2c")))
}

impl Http1Connection {
    /// A connection with nothing seen yet.
    pub fn new() -> Http1Connection {
        Http1Connection {
            req: Side::new(Kind::Request),
            resp: Side::new(Kind::Response),
            next_id: 0,
            pending: VecDeque::new(),
            desyncs: 0,
            http2: None,
        }
    }

    /// After [`Event::SwitchedToHttp2`]: the bytes that followed the `101` head (each chunk as
    /// flow, captured bytes, and its whole byte count), to feed an HTTP/2 parser that takes
    /// over the connection; `None` when the connection did not switch (or they were taken).
    pub fn take_http2(&mut self) -> Option<Vec<(Flow, Vec<u8>, u64)>> {
        self.http2.take()
    }

    /// Times framing was lost (for agent telemetry).
    pub fn desyncs(&self) -> u64 {
        self.desyncs
    }

    /// Heap bytes held by this connection (bounded by about 2 × [`MAX_HEAD`] plus the pending
    /// queue).
    pub fn buffered_bytes(&self) -> usize {
        self.req.buf.capacity()
            + self.resp.buf.capacity()
            + self.pending.capacity() * std::mem::size_of::<Pending>()
    }

    /// Whether the connection switched protocols (or CONNECTed) and is now opaque.
    pub fn is_tunnel(&self) -> bool {
        self.req.state == State::Tunnel
    }

    /// Feeds one syscall's bytes: `captured` is what the probe copied (a prefix), `total_len` the
    /// syscall's real byte count (values below `captured.len()` are treated as `captured.len()`).
    pub fn feed(&mut self, flow: Flow, captured: &[u8], total_len: u64, out: &mut Vec<Event>) {
        let uncaptured = total_len.saturating_sub(captured.len() as u64);
        {
            let side = self.side_mut(flow);
            if side.state == State::Lost {
                side.line_start = true;
            }
        }
        let mut pos = 0usize;
        let mut stalls = 0u8;
        while let Some(rest) = captured.get(pos..).filter(|r| !r.is_empty()) {
            if let Some(held) = self.http2.as_mut() {
                // Switched to HTTP/2 (in this chunk or an earlier one not taken yet): the rest
                // is the HTTP/2 parser's.
                let room = MAX_SWITCH_HELD.saturating_sub(held.iter().map(|h| h.1.len()).sum());
                let kept = rest.get(..room).unwrap_or(rest);
                held.push((flow, kept.to_vec(), rest.len() as u64 + uncaptured));
                return;
            }
            let used = self.step(flow, rest, out);
            pos += used;
            // `step` returns 0 only after a state change; two in a row would be a bug, so give
            // up on this chunk rather than spin.
            stalls = if used == 0 { stalls + 1 } else { 0 };
            if stalls > 2 {
                self.desync(flow, true);
                break;
            }
        }
        if uncaptured > 0 {
            self.skip(flow, uncaptured, out);
        }
    }

    /// Reports that bytes of unknown count were lost on `flow` (e.g. ring buffer overflow).
    pub fn gap(&mut self, flow: Flow) {
        let side = self.side_mut(flow);
        if matches!(side.state, State::Tunnel | State::Lost) {
            return;
        }
        side.lose(true);
        self.desyncs += 1;
    }

    /// The connection closed: ends bodies delimited by close, reports unfinished messages.
    pub fn close(&mut self, out: &mut Vec<Event>) {
        for flow in [Flow::ClientToServer, Flow::ServerToClient] {
            let side = self.side_mut(flow);
            side.flush_lost(out);
            match side.state {
                State::UntilClose => side.end_message(out),
                State::Length(_) | State::Chunked(_) => {
                    out.push(Event::MessageEnd {
                        flow,
                        id: side.cur,
                        end: End::Incomplete,
                        body_len: side.body_len,
                    });
                }
                _ => {}
            }
            *side = Side::new(side.kind);
        }
        self.pending.clear();
    }

    fn side_mut(&mut self, flow: Flow) -> &mut Side {
        match flow {
            Flow::ClientToServer => &mut self.req,
            Flow::ServerToClient => &mut self.resp,
        }
    }

    /// Processes a prefix of `rest`; returns how many bytes were used. Returns 0 only after
    /// changing state, so the caller loops again.
    fn step(&mut self, flow: Flow, rest: &[u8], out: &mut Vec<Event>) -> usize {
        let side = self.side_mut(flow);
        match side.state {
            State::Tunnel => rest.len(),
            State::Lost => {
                if side.line_start && check_start(side.kind, rest, true) != Check::No {
                    side.state = State::Idle;
                    return 0;
                }
                match find_byte(rest, 0, b'\n') {
                    Some(k) => {
                        side.line_start = true;
                        k + 1
                    }
                    None => {
                        side.line_start = false;
                        rest.len()
                    }
                }
            }
            State::Idle => self.head_bytes(flow, rest, out),
            State::Length(remaining) => {
                let n = remaining.min(rest.len() as u64);
                side.body_len = side.body_len.saturating_add(n);
                let left = remaining - n;
                if left == 0 {
                    side.end_message(out);
                } else {
                    side.state = State::Length(left);
                }
                usize::try_from(n).unwrap_or(rest.len())
            }
            State::UntilClose => {
                side.body_len = side.body_len.saturating_add(rest.len() as u64);
                rest.len()
            }
            State::Chunked(c) => self.chunked_bytes(flow, c, rest, out),
        }
    }

    fn chunked_bytes(
        &mut self,
        flow: Flow,
        c: Chunked,
        rest: &[u8],
        out: &mut Vec<Event>,
    ) -> usize {
        let side = self.side_mut(flow);
        match c {
            Chunked::Data(remaining) => {
                let n = remaining.min(rest.len() as u64);
                side.body_len = side.body_len.saturating_add(n);
                let left = remaining - n;
                side.state = State::Chunked(if left == 0 {
                    Chunked::DataEnd { cr: false }
                } else {
                    Chunked::Data(left)
                });
                return usize::try_from(n).unwrap_or(rest.len());
            }
            Chunked::Size { .. } | Chunked::DataEnd { .. } | Chunked::Trailer { .. } => {}
        }
        // Byte-at-a-time states (short lines only).
        let mut st = c;
        for (i, &b) in rest.iter().enumerate() {
            let next = match st {
                Chunked::Data(_) => break,
                Chunked::Size {
                    value,
                    digits,
                    ext,
                    len,
                } => {
                    let len = len + 1;
                    if len > MAX_CHUNK_LINE {
                        None
                    } else if b == b'\n' {
                        if digits == 0 {
                            None
                        } else if value == 0 {
                            Some(Chunked::Trailer { line: 0, total: 0 })
                        } else {
                            side.state = State::Chunked(Chunked::Data(value));
                            return i + 1;
                        }
                    } else if ext || b == b'\r' {
                        Some(Chunked::Size {
                            value,
                            digits,
                            ext,
                            len,
                        })
                    } else if b == b';' || b == b' ' || b == b'\t' {
                        (digits > 0).then_some(Chunked::Size {
                            value,
                            digits,
                            ext: true,
                            len,
                        })
                    } else if let Some(d) = char::from(b).to_digit(16) {
                        (digits < 16).then(|| Chunked::Size {
                            value: (value << 4) | u64::from(d),
                            digits: digits + 1,
                            ext,
                            len,
                        })
                    } else {
                        None
                    }
                }
                Chunked::DataEnd { cr } => match b {
                    b'\r' if !cr => Some(Chunked::DataEnd { cr: true }),
                    b'\n' => Some(Chunked::Size {
                        value: 0,
                        digits: 0,
                        ext: false,
                        len: 0,
                    }),
                    _ => None,
                },
                Chunked::Trailer { line, total } => {
                    let total = total + 1;
                    if total > MAX_TRAILERS {
                        None
                    } else if b == b'\n' {
                        if line == 0 {
                            side.end_message(out);
                            return i + 1;
                        }
                        Some(Chunked::Trailer { line: 0, total })
                    } else if b == b'\r' {
                        Some(Chunked::Trailer { line, total })
                    } else {
                        Some(Chunked::Trailer {
                            line: line + 1,
                            total,
                        })
                    }
                }
            };
            match next {
                Some(n) => st = n,
                None => {
                    side.lose(false);
                    self.desyncs += 1;
                    return i + 1;
                }
            }
        }
        side.state = State::Chunked(st);
        rest.len()
    }

    /// Head bytes (state `Idle`). Returns bytes used.
    fn head_bytes(&mut self, flow: Flow, rest: &[u8], out: &mut Vec<Event>) -> usize {
        let side = self.side_mut(flow);
        if side.buf.is_empty() {
            // Empty lines between messages are tolerated (RFC 9112 §2.2).
            let blank = rest
                .iter()
                .take_while(|&&c| c == b'\r' || c == b'\n')
                .count();
            if blank > 0 {
                return blank;
            }
            if let Some(end) = find_head_end(rest, 0) {
                let head = rest.get(..end).unwrap_or_default();
                if check_start(side.kind, head, false) != Check::Yes {
                    self.desync(flow, false);
                    return 0;
                }
                self.complete_head(flow, head, false, out);
                return end;
            }
            if check_start(side.kind, rest, false) == Check::No {
                self.desync(flow, false);
                return 0;
            }
            let used = push_capped(&mut side.buf, rest, MAX_HEAD);
            side.scan_from = side.buf.len().saturating_sub(3);
            if side.buf.len() >= MAX_HEAD {
                self.truncated_head(flow, out);
            }
            return used;
        }
        let old = side.buf.len();
        let used = push_capped(&mut side.buf, rest, MAX_HEAD);
        if let Some(end) = find_head_end(&side.buf, side.scan_from) {
            let mut buf = std::mem::take(&mut side.buf);
            let head = buf.get(..end).unwrap_or_default();
            if check_start(side.kind, head, false) == Check::Yes {
                self.complete_head(flow, head, false, out);
            } else {
                self.desync(flow, false);
            }
            buf.clear();
            let side = self.side_mut(flow);
            side.buf = buf;
            side.scan_from = 0;
            return end.saturating_sub(old);
        }
        side.scan_from = side.buf.len().saturating_sub(3);
        if check_start(side.kind, &side.buf, false) == Check::No {
            self.desync(flow, false);
            return used;
        }
        if side.buf.len() >= MAX_HEAD {
            self.truncated_head(flow, out);
        }
        used
    }

    fn desync(&mut self, flow: Flow, line_start: bool) {
        self.desyncs += 1;
        self.side_mut(flow).lose(line_start);
    }

    /// The head in `buf` can't be completed (capture cut, or over [`MAX_HEAD`]): report what it
    /// has as truncated, then resync.
    fn truncated_head(&mut self, flow: Flow, out: &mut Vec<Event>) {
        let buf = std::mem::take(&mut self.side_mut(flow).buf);
        // Keep only whole lines.
        let whole = buf.iter().rposition(|&c| c == b'\n').map_or(0, |p| p + 1);
        let head = buf.get(..whole).unwrap_or_default();
        if !head.is_empty() {
            self.complete_head(flow, head, true, out);
        }
        let side = self.side_mut(flow);
        side.buf = buf;
        if side.state != State::Tunnel {
            self.desync(flow, true);
        }
    }

    /// Emits the start event for a complete (or truncated) head and sets the body state.
    fn complete_head(&mut self, flow: Flow, head: &[u8], truncated: bool, out: &mut Vec<Event>) {
        let first_end = find_byte(head, 0, b'\n').unwrap_or(head.len());
        let Some(start) = parse_start(
            self.side_mut(flow).kind,
            head.get(..first_end).unwrap_or_default(),
        ) else {
            self.desync(flow, false);
            return;
        };
        let headers = parse_headers(head.get(first_end + 1..).unwrap_or_default());
        match start {
            Start::Request {
                method,
                target,
                version,
            } => {
                self.req.flush_lost(out);
                // A new request means an unfinished, unframeable response is over.
                self.resp.flush_lost(out);
                let id = self.next_id;
                self.next_id += 1;
                if self.pending.len() >= MAX_PENDING {
                    self.pending.pop_front();
                }
                self.pending.push_back(Pending {
                    id,
                    head: method == Method::Head,
                    connect: method == Method::Connect,
                    h2c: names_h2c(headers.upgrade.as_deref()),
                });
                let framing = if truncated {
                    None
                } else if headers.transfer_encoding.is_some() {
                    headers
                        .chunked_last()
                        .then_some(State::Chunked(Chunked::Size {
                            value: 0,
                            digits: 0,
                            ext: false,
                            len: 0,
                        }))
                } else if headers.content_length_invalid {
                    None
                } else {
                    Some(State::Length(headers.content_length.unwrap_or(0)))
                };
                out.push(Event::RequestStart {
                    id,
                    head: RequestHead {
                        method,
                        target,
                        version,
                        headers,
                        truncated,
                    },
                });
                let side = &mut self.req;
                side.start_message(Some(id));
                match framing {
                    Some(State::Length(0)) => side.end_message(out),
                    Some(state) => side.state = state,
                    None if truncated => {}
                    None => {
                        self.desyncs += 1;
                        side.lose(true);
                    }
                }
            }
            Start::Response { version, status } => {
                if (100..200).contains(&status) && status != 101 {
                    // Interim response: no event, no body, the request stays pending.
                    return;
                }
                self.resp.flush_lost(out);
                // The server answered, so an unframeable request is over.
                self.req.flush_lost(out);
                let pending = self.pending.pop_front();
                let request_id = pending.map(|p| p.id);
                let to_head = pending.is_some_and(|p| p.head);
                let connect_ok = pending.is_some_and(|p| p.connect) && (200..300).contains(&status);
                let to_http2 = status == 101
                    && pending.is_some_and(|p| p.h2c)
                    && names_h2c(headers.upgrade.as_deref());
                let framing = if status == 101 || connect_ok {
                    Some(State::Tunnel)
                } else if to_head || status == 204 || status == 304 {
                    Some(State::Length(0))
                } else if truncated {
                    None
                } else if headers.transfer_encoding.is_some() {
                    Some(if headers.chunked_last() {
                        State::Chunked(Chunked::Size {
                            value: 0,
                            digits: 0,
                            ext: false,
                            len: 0,
                        })
                    } else {
                        State::UntilClose
                    })
                } else if headers.content_length_invalid {
                    None
                } else {
                    Some(
                        headers
                            .content_length
                            .map_or(State::UntilClose, State::Length),
                    )
                };
                out.push(Event::ResponseStart {
                    request_id,
                    head: ResponseHead {
                        version,
                        status,
                        headers,
                        truncated,
                    },
                });
                let side = &mut self.resp;
                side.start_message(request_id);
                match framing {
                    Some(State::Tunnel) if to_http2 => {
                        side.open = false;
                        out.push(Event::SwitchedToHttp2 { request_id });
                        self.resp.state = State::Tunnel;
                        self.req.state = State::Tunnel;
                        self.req.buf.clear();
                        self.resp.buf.clear();
                        self.http2 = Some(Vec::new());
                    }
                    Some(State::Tunnel) => {
                        side.end_message(out);
                        self.resp.state = State::Tunnel;
                        self.req.state = State::Tunnel;
                        self.req.buf.clear();
                        self.resp.buf.clear();
                    }
                    Some(State::Length(0)) => side.end_message(out),
                    Some(state) => side.state = state,
                    None if truncated => {}
                    None => {
                        self.desyncs += 1;
                        side.lose(true);
                    }
                }
            }
        }
    }

    /// Accounts for `n` bytes that were not captured.
    fn skip(&mut self, flow: Flow, n: u64, out: &mut Vec<Event>) {
        let side = self.side_mut(flow);
        match side.state {
            State::Tunnel => {}
            State::Lost => side.line_start = true,
            State::UntilClose => side.body_len = side.body_len.saturating_add(n),
            State::Length(remaining) => {
                side.body_len = side.body_len.saturating_add(n.min(remaining));
                if n < remaining {
                    side.state = State::Length(remaining - n);
                } else {
                    side.end_message(out);
                    if n > remaining {
                        // The next message started outside the capture.
                        self.desync(flow, true);
                    }
                }
            }
            State::Chunked(Chunked::Data(remaining)) if n <= remaining => {
                side.body_len = side.body_len.saturating_add(n);
                side.state = State::Chunked(if n == remaining {
                    Chunked::DataEnd { cr: false }
                } else {
                    Chunked::Data(remaining - n)
                });
            }
            State::Chunked(_) => {
                // A chunk-size line or the terminator is outside the capture.
                self.desync(flow, true);
            }
            State::Idle => {
                if side.buf.is_empty() {
                    // A message started outside the capture.
                    self.desync(flow, true);
                } else {
                    self.truncated_head(flow, out);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
