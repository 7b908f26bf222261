//! Redis RESP2/RESP3: commands, replies, pipelining, pub/sub, over captured syscall chunks.
//!
//! One [`RedisConnection`] per TCP connection; feed both flows in syscall order. Client commands
//! (arrays of bulk strings, or inline commands) produce [`Event::Request`]; replies are paired
//! with commands in order (so pipelines of N commands then N replies pair correctly) and produce
//! [`Event::Response`]. Every `Request` is eventually followed by exactly one `Response` with the
//! same id unless the connection is dropped without [`RedisConnection::close`].
//!
//! Bulk strings are never buffered: only a prefix of each argument is kept and the rest is
//! skipped by count, so a `SET` whose value lies outside the capture still frames exactly.
//! Framing is lost when element headers fall outside the capture:
//! - on the client flow, an unknown number of commands was sent: their replies are discarded
//!   until the client's next chunk (request/response clients send it only after reading them);
//! - on the server flow, the reply in progress ends as [`End::Unknown`] when the client's next
//!   chunk arrives (so do all replies still pending then), and the server flow realigns at its
//!   next chunk start.
//!
//! Out-of-band data never consumes a pending command: RESP3 push messages (`>`), except the
//! subscribe/unsubscribe confirmations that answer a pending pub/sub command, and, in RESP2
//! subscribed mode, `message`/`pmessage`/`smessage` arrays. Attributes (`|`) are skipped.
//! Streamed RESP3 strings and aggregates (`$?`, `*?`) are not supported (framing is lost).
//!
//! Limits: multiplexing clients that keep writing while replies are outstanding (and lose
//! framing) may mis-pair replies until the queue drains.

use std::collections::VecDeque;

use crate::util::{lossy, parse_i64, push_capped};
use crate::{End, Flow};

/// Deepest aggregate nesting followed; deeper replies lose framing.
pub const MAX_DEPTH: usize = 32;
/// Arguments kept per command (after the name); the rest are only counted.
pub const MAX_ARGS_KEPT: usize = 16;
/// Bytes kept of each argument.
pub const MAX_ARG_PREFIX: usize = 128;
/// Longest simple line (status, error, number, header) accepted.
pub const MAX_LINE: usize = 64 * 1024;
/// Commands tracked while awaiting replies; more are counted and their replies discarded.
pub const MAX_PENDING: usize = 1024;
/// Bytes kept of error messages and inline command lines.
const LINE_KEEP: usize = 256;
/// Bytes kept of a command name.
const NAME_KEEP: usize = 64;

/// One command argument: a prefix of its bytes and its real length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arg {
    /// The first bytes (at most [`MAX_ARG_PREFIX`]).
    pub prefix: Vec<u8>,
    /// The real length in bytes.
    pub len: u64,
}

impl Arg {
    /// Whether bytes are missing from `prefix` (capture limit or [`MAX_ARG_PREFIX`]).
    pub fn is_truncated(&self) -> bool {
        (self.prefix.len() as u64) < self.len
    }
}

/// A client command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// Command name, uppercased (`GET`, `CLIENT`): `db.operation.name`.
    pub name: String,
    /// The first [`MAX_ARGS_KEPT`] arguments after the name.
    pub args: Vec<Arg>,
    /// How many arguments followed the name in total.
    pub arg_count: u64,
    /// Sent as an inline command (`PING\r\n`) rather than a RESP array.
    pub inline: bool,
}

impl Command {
    /// Sanitized `db.query.text` (see [`crate::sanitize::sanitize_redis`]); ends in ` …` when
    /// arguments beyond [`MAX_ARGS_KEPT`] were dropped.
    pub fn query_text(&self) -> String {
        let args: Vec<&[u8]> = self.args.iter().map(|a| a.prefix.as_slice()).collect();
        let mut s = crate::sanitize::sanitize_redis(&self.name, &args);
        if self.arg_count > self.args.len() as u64 && !s.ends_with(" …") {
            s.push_str(" …");
        }
        s
    }

    fn pubsub(&self) -> PubSub {
        match self.name.as_str() {
            "SUBSCRIBE" | "PSUBSCRIBE" | "SSUBSCRIBE" => PubSub::Subscribe,
            "UNSUBSCRIBE" | "PUNSUBSCRIBE" | "SUNSUBSCRIBE" => PubSub::Unsubscribe,
            _ => PubSub::No,
        }
    }
}

/// The RESP type of a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplyKind {
    /// `+`
    SimpleString,
    /// `-`
    Error,
    /// `:`
    Integer,
    /// `$`
    BulkString,
    /// `$-1`, `*-1` or RESP3 `_`
    Null,
    /// `*`
    Array,
    /// `%`
    Map,
    /// `~`
    Set,
    /// `>`
    Push,
    /// `,`
    Double,
    /// `#`
    Boolean,
    /// `(`
    BigNumber,
    /// `=`
    VerbatimString,
    /// `!`
    BlobError,
}

/// A Redis error reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisError {
    /// The error prefix (`ERR`, `WRONGTYPE`, `MOVED`): `db.response.status_code`.
    pub code: String,
    /// The rest of the message (at most 256 bytes kept).
    pub message: String,
}

/// A reply summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Type of the top-level value.
    pub kind: ReplyKind,
    /// Byte length of strings, element count of aggregates (pairs for maps).
    pub len: Option<u64>,
    /// For error replies.
    pub error: Option<RedisError>,
}

impl Reply {
    /// Whether the reply is an error.
    pub fn is_error(&self) -> bool {
        self.error.is_some()
    }
}

/// What a [`RedisConnection`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A command was sent.
    Request {
        /// Connection-unique id, increasing from 0.
        id: u64,
        /// The command.
        command: Command,
    },
    /// The reply to request `id` is over.
    Response {
        /// The request answered.
        id: u64,
        /// The reply, or `None` when framing was lost or the connection closed first.
        reply: Option<Reply>,
        /// How it ended.
        end: End,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PubSub {
    No,
    Subscribe,
    Unsubscribe,
}

#[derive(Debug, Clone, Copy)]
enum Pending {
    Cmd {
        id: u64,
        expect: u64,
        pubsub: PubSub,
    },
    /// Commands that were sent but could not be parsed; removed at the next client chunk.
    Unknown,
    /// Commands over [`MAX_PENDING`]: their replies are consumed without events.
    Untracked(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Elem {
    /// Expecting a type byte.
    Start,
    /// Reading a line after type byte `ty`.
    Line(u8),
    /// Reading `remaining` bulk bytes of type `ty`.
    Bulk { ty: u8, remaining: u64 },
    /// Expecting the CRLF after a bulk string.
    BulkEnd { cr: bool },
    /// Reading an inline command line.
    Inline,
    /// Framing lost.
    Lost,
}

#[derive(Debug, Clone, Copy)]
struct Frame {
    remaining: u64,
    attr: bool,
    done: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    None,
    Item(usize),
    TopLine,
}

#[derive(Debug, Default)]
struct Msg {
    started: bool,
    top_ty: u8,
    top_len: Option<i64>,
    line: Vec<u8>,
    line_len: u64,
    items: Vec<Arg>,
    item_count: u64,
    last_int: Option<i64>,
    inline: bool,
}

#[derive(Debug)]
struct Reader {
    client: bool,
    stack: Vec<Frame>,
    attrs: usize,
    elem: Elem,
    slot: Slot,
    /// The line being read (kept prefix) and its full length.
    line: Vec<u8>,
    line_len: usize,
    /// The last byte read into the line was a CR.
    line_cr: bool,
    msg: Msg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Done {
    /// Nothing complete yet.
    No,
    /// A top-level message is complete.
    Msg,
    /// Framing was just lost; the partial message is still in `msg`.
    Lost,
}

fn is_type_byte(b: u8) -> bool {
    b"+-:$*_#,(!=%~>|".contains(&b)
}

impl Reader {
    fn new(client: bool) -> Reader {
        Reader {
            client,
            stack: Vec::new(),
            attrs: 0,
            elem: Elem::Start,
            slot: Slot::None,
            line: Vec::new(),
            line_len: 0,
            line_cr: false,
            msg: Msg::default(),
        }
    }

    fn reset(&mut self) {
        self.stack.clear();
        self.attrs = 0;
        self.elem = Elem::Start;
        self.slot = Slot::None;
        self.line.clear();
        self.line_len = 0;
        self.line_cr = false;
        self.msg = Msg::default();
    }

    /// Framing is lost; the partial message stays in `msg` for the caller to inspect.
    fn lose(&mut self) {
        self.stack.clear();
        self.attrs = 0;
        self.line.clear();
        self.line_len = 0;
        self.line_cr = false;
        self.elem = Elem::Lost;
    }

    fn heap_bytes(&self) -> usize {
        self.stack.capacity() * std::mem::size_of::<Frame>()
            + self.line.capacity()
            + self.msg.line.capacity()
            + self.msg.items.capacity() * std::mem::size_of::<Arg>()
            + self
                .msg
                .items
                .iter()
                .map(|a| a.prefix.capacity())
                .sum::<usize>()
    }

    /// Called on an element's type byte: decides where its bytes go.
    fn begin(&mut self, ty: u8) {
        let depth = self.stack.len();
        self.slot = Slot::None;
        if depth == 0 {
            self.msg.started = true;
            if ty != b'|' {
                self.msg.top_ty = ty;
                if matches!(ty, b'-' | b'!') {
                    self.slot = Slot::TopLine;
                }
            }
        } else if depth == 1 && self.attrs == 0 && ty != b'|' {
            let idx = self.stack.last().map_or(0, |f| f.done);
            self.msg.item_count += 1;
            let keep = if self.client { MAX_ARGS_KEPT + 1 } else { 1 };
            if idx < keep as u64 && matches!(ty, b'$' | b'+' | b':' | b'=') {
                self.msg.items.push(Arg {
                    prefix: Vec::new(),
                    len: 0,
                });
                self.slot = Slot::Item(self.msg.items.len() - 1);
            }
        }
    }

    fn keep_limit(&self) -> usize {
        match self.slot {
            Slot::Item(0) if self.client => NAME_KEEP,
            Slot::Item(_) => MAX_ARG_PREFIX,
            _ => LINE_KEEP,
        }
    }

    /// Stores element content bytes in the current slot.
    fn store(&mut self, bytes: &[u8]) {
        let cap = self.keep_limit();
        match self.slot {
            Slot::None => {}
            Slot::TopLine => {
                push_capped(&mut self.msg.line, bytes, cap);
                self.msg.line_len = self.msg.line_len.saturating_add(bytes.len() as u64);
            }
            Slot::Item(i) => {
                if let Some(a) = self.msg.items.get_mut(i) {
                    push_capped(&mut a.prefix, bytes, cap);
                }
            }
        }
    }

    fn set_item_len(&mut self, len: u64) {
        if let Slot::Item(i) = self.slot
            && let Some(a) = self.msg.items.get_mut(i)
        {
            a.len = len;
        }
    }

    /// An element (scalar, bulk, null or whole aggregate) finished.
    fn finish(&mut self, was_attr: bool) -> Done {
        let mut attr = was_attr;
        loop {
            if attr {
                // Attributes annotate what follows and are not elements themselves.
                return Done::No;
            }
            let Some(frame) = self.stack.last_mut() else {
                return Done::Msg;
            };
            frame.remaining = frame.remaining.saturating_sub(1);
            frame.done = frame.done.saturating_add(1);
            if frame.remaining > 0 {
                return Done::No;
            }
            attr = frame.attr;
            if frame.attr {
                self.attrs = self.attrs.saturating_sub(1);
            }
            self.stack.pop();
        }
    }

    /// A complete line (without CRLF) for type `ty`.
    fn line_done(&mut self, ty: u8) -> Result<Done, ()> {
        let line = std::mem::take(&mut self.line);
        let full = self.line_len <= line.len();
        let result = self.handle_line(ty, &line, full);
        self.line = line;
        self.line.clear();
        self.line_len = 0;
        self.line_cr = false;
        result
    }

    fn handle_line(&mut self, ty: u8, line: &[u8], full: bool) -> Result<Done, ()> {
        match ty {
            b'$' | b'=' | b'!' => {
                let n = if full {
                    parse_i64(line).ok_or(())?
                } else {
                    return Err(());
                };
                if self.stack.is_empty() {
                    self.msg.top_len = Some(n);
                }
                if n < 0 {
                    if self.stack.is_empty() {
                        self.msg.top_ty = b'_';
                    }
                    self.set_item_len(0);
                    self.elem = Elem::Start;
                    return Ok(self.finish(false));
                }
                let n = u64::try_from(n).map_err(|_| ())?;
                self.set_item_len(n);
                if ty == b'!' && self.stack.is_empty() {
                    self.slot = Slot::TopLine;
                }
                self.elem = if n == 0 {
                    Elem::BulkEnd { cr: false }
                } else {
                    Elem::Bulk { ty, remaining: n }
                };
                Ok(Done::No)
            }
            b'*' | b'%' | b'~' | b'>' | b'|' => {
                let n = if full {
                    parse_i64(line).ok_or(())?
                } else {
                    return Err(());
                };
                if self.stack.is_empty() && ty != b'|' {
                    self.msg.top_len = Some(n);
                }
                self.elem = Elem::Start;
                if n < 0 {
                    if self.stack.is_empty() && ty != b'|' {
                        self.msg.top_ty = b'_';
                    }
                    return Ok(self.finish(ty == b'|'));
                }
                let n = u64::try_from(n).map_err(|_| ())?;
                let elements = if matches!(ty, b'%' | b'|') {
                    n.checked_mul(2).ok_or(())?
                } else {
                    n
                };
                if elements == 0 {
                    return Ok(self.finish(ty == b'|'));
                }
                if self.stack.len() >= MAX_DEPTH {
                    return Err(());
                }
                if ty == b'|' {
                    self.attrs += 1;
                }
                self.stack.push(Frame {
                    remaining: elements,
                    attr: ty == b'|',
                    done: 0,
                });
                Ok(Done::No)
            }
            _ => {
                // Scalars: + - : _ # , (
                if ty == b':' && self.stack.len() == 1 && self.attrs == 0 {
                    self.msg.last_int = parse_i64(line);
                }
                self.store(line);
                self.set_item_len(self.line_len as u64);
                self.elem = Elem::Start;
                Ok(self.finish(false))
            }
        }
    }

    /// Parses a prefix of `data`; returns bytes used and whether a message completed there.
    fn step(&mut self, data: &[u8]) -> (usize, Done) {
        let Some(&first) = data.first() else {
            return (0, Done::No);
        };
        match self.elem {
            Elem::Lost => (data.len(), Done::No),
            Elem::Start => {
                if self.stack.is_empty() && !self.msg.started {
                    if first == b'\r' || first == b'\n' {
                        return (1, Done::No); // blank lines between commands
                    }
                    if self.client && first != b'*' {
                        if first.is_ascii_alphabetic() {
                            self.msg.started = true;
                            self.msg.inline = true;
                            self.elem = Elem::Inline;
                            return (0, Done::No);
                        }
                        self.lose();
                        return (data.len(), Done::Lost);
                    }
                }
                if !is_type_byte(first) {
                    self.lose();
                    return (data.len(), Done::Lost);
                }
                self.begin(first);
                self.elem = Elem::Line(first);
                (1, Done::No)
            }
            Elem::Line(ty) => self.read_line(data, ty),
            Elem::Inline => self.read_line(data, 0),
            Elem::Bulk { ty, remaining } => {
                let n = remaining.min(data.len() as u64);
                let used = usize::try_from(n).unwrap_or(data.len());
                self.store(data.get(..used).unwrap_or_default());
                let left = remaining - n;
                self.elem = if left == 0 {
                    Elem::BulkEnd { cr: false }
                } else {
                    Elem::Bulk {
                        ty,
                        remaining: left,
                    }
                };
                (used, Done::No)
            }
            Elem::BulkEnd { cr } => match first {
                b'\r' if !cr => {
                    self.elem = Elem::BulkEnd { cr: true };
                    (1, Done::No)
                }
                b'\n' => {
                    self.elem = Elem::Start;
                    (1, self.finish(false))
                }
                _ => {
                    self.lose();
                    (data.len(), Done::Lost)
                }
            },
        }
    }

    fn read_line(&mut self, data: &[u8], ty: u8) -> (usize, Done) {
        let (chunk, used, complete) = match crate::util::find_byte(data, 0, b'\n') {
            Some(k) => (data.get(..k).unwrap_or_default(), k + 1, true),
            None => (data, data.len(), false),
        };
        push_capped(&mut self.line, chunk, LINE_KEEP);
        self.line_len = self.line_len.saturating_add(chunk.len());
        if let Some(&last) = chunk.last() {
            self.line_cr = last == b'\r';
        }
        if self.line_len > MAX_LINE {
            self.lose();
            return (data.len(), Done::Lost);
        }
        if !complete {
            return (used, Done::No);
        }
        if self.line_cr {
            self.line_len = self.line_len.saturating_sub(1);
            self.line.truncate(self.line_len);
            self.line_cr = false;
        }
        if ty == 0 {
            self.inline_done();
            return (used, Done::Msg);
        }
        match self.line_done(ty) {
            Ok(done) => (used, done),
            Err(()) => {
                self.lose();
                (data.len(), Done::Lost)
            }
        }
    }

    fn inline_done(&mut self) {
        let line = std::mem::take(&mut self.line);
        let cut = self.line_len > line.len();
        let mut words = line
            .split(|c| *c == b' ' || *c == b'\t')
            .filter(|w| !w.is_empty())
            .peekable();
        let mut items = Vec::new();
        let mut count = 0u64;
        while let Some(w) = words.next() {
            count += 1;
            if items.len() <= MAX_ARGS_KEPT {
                let last_cut = cut && words.peek().is_none();
                let cap = if items.is_empty() {
                    NAME_KEEP
                } else {
                    MAX_ARG_PREFIX
                };
                let mut prefix = Vec::new();
                push_capped(&mut prefix, w, cap);
                items.push(Arg {
                    len: if last_cut { u64::MAX } else { w.len() as u64 },
                    prefix,
                });
            }
        }
        self.msg.items = items;
        self.msg.item_count = count;
        self.msg.top_ty = b'*';
        self.line = line;
        self.line.clear();
        self.line_len = 0;
        self.elem = Elem::Start;
    }

    /// Takes the finished message and resets for the next one.
    fn take_msg(&mut self) -> Msg {
        self.elem = Elem::Start;
        self.stack.clear();
        self.attrs = 0;
        std::mem::take(&mut self.msg)
    }

    /// Accounts for `n` uncaptured bytes. Returns whether a message completed (a bulk string
    /// ending exactly at the end of the syscall) or framing was lost.
    fn skip(&mut self, n: u64) -> Done {
        match self.elem {
            Elem::Lost => Done::No,
            Elem::Bulk { ty, remaining } => {
                if n < remaining {
                    self.elem = Elem::Bulk {
                        ty,
                        remaining: remaining - n,
                    };
                    Done::No
                } else if n == remaining {
                    self.elem = Elem::BulkEnd { cr: false };
                    Done::No
                } else if n == remaining + 1 {
                    self.elem = Elem::BulkEnd { cr: true };
                    Done::No
                } else if n == remaining + 2 {
                    // The string and its CRLF end exactly with the syscall.
                    self.elem = Elem::Start;
                    self.finish(false)
                } else {
                    self.lost_in_place()
                }
            }
            Elem::BulkEnd { cr } => {
                let need = if cr { 1 } else { 2 };
                if n == need {
                    self.elem = Elem::Start;
                    self.finish(false)
                } else {
                    self.lost_in_place()
                }
            }
            Elem::Start | Elem::Line(_) | Elem::Inline => self.lost_in_place(),
        }
    }

    fn lost_in_place(&mut self) -> Done {
        self.lose();
        Done::Lost
    }
}

fn reply_from(msg: &Msg) -> Reply {
    let kind = match msg.top_ty {
        b'+' => ReplyKind::SimpleString,
        b'-' => ReplyKind::Error,
        b':' => ReplyKind::Integer,
        b'$' => ReplyKind::BulkString,
        b'*' => ReplyKind::Array,
        b'%' => ReplyKind::Map,
        b'~' => ReplyKind::Set,
        b'>' => ReplyKind::Push,
        b',' => ReplyKind::Double,
        b'#' => ReplyKind::Boolean,
        b'(' => ReplyKind::BigNumber,
        b'=' => ReplyKind::VerbatimString,
        b'!' => ReplyKind::BlobError,
        _ => ReplyKind::Null,
    };
    let len = match kind {
        ReplyKind::Null => None,
        _ => msg.top_len.and_then(|n| u64::try_from(n).ok()),
    };
    let error = matches!(kind, ReplyKind::Error | ReplyKind::BlobError).then(|| {
        let cut = msg.line_len > msg.line.len() as u64;
        let text = lossy(&msg.line, cut);
        let (code, message) = match text.split_once(' ') {
            Some((c, m)) => (c, m),
            None => (text.as_str(), ""),
        };
        let code: String = code.chars().take(32).collect();
        RedisError {
            code,
            message: message.to_string(),
        }
    });
    Reply { kind, len, error }
}

/// The lowercase first element of an array/push reply, when short.
fn first_word(msg: &Msg) -> Option<String> {
    let a = msg.items.first()?;
    (a.prefix.len() <= 16).then(|| String::from_utf8_lossy(&a.prefix).to_ascii_lowercase())
}

/// Per-connection Redis parser for both flows.
#[derive(Debug)]
pub struct RedisConnection {
    client: Reader,
    server: Reader,
    pending: VecDeque<Pending>,
    tracked: usize,
    next_id: u64,
    subscribed: bool,
    /// The server flow lost framing while replies were pending.
    server_lost: bool,
    /// Restart the server reader at the next server chunk.
    server_realign: bool,
    desyncs: u64,
}

impl Default for RedisConnection {
    fn default() -> Self {
        Self::new()
    }
}

impl RedisConnection {
    /// A connection with nothing seen yet.
    pub fn new() -> RedisConnection {
        RedisConnection {
            client: Reader::new(true),
            server: Reader::new(false),
            pending: VecDeque::new(),
            tracked: 0,
            next_id: 0,
            subscribed: false,
            server_lost: false,
            server_realign: false,
            desyncs: 0,
        }
    }

    /// Times framing was lost (for agent telemetry).
    pub fn desyncs(&self) -> u64 {
        self.desyncs
    }

    /// Heap bytes held by this connection.
    pub fn buffered_bytes(&self) -> usize {
        self.client.heap_bytes()
            + self.server.heap_bytes()
            + self.pending.capacity() * std::mem::size_of::<Pending>()
    }

    /// Whether the connection is in RESP2 subscribed (pub/sub) mode.
    pub fn is_subscribed(&self) -> bool {
        self.subscribed
    }

    /// Feeds one syscall's bytes: `captured` is what the probe copied (a prefix), `total_len` the
    /// syscall's real byte count.
    pub fn feed(&mut self, flow: Flow, captured: &[u8], total_len: u64, out: &mut Vec<Event>) {
        let uncaptured = total_len.saturating_sub(captured.len() as u64);
        match flow {
            Flow::ClientToServer => self.feed_client(captured, uncaptured, out),
            Flow::ServerToClient => self.feed_server(captured, uncaptured, out),
        }
    }

    /// Reports that bytes of unknown count were lost on `flow`.
    pub fn gap(&mut self, flow: Flow) {
        match flow {
            Flow::ClientToServer => {
                // A partially parsed command is dropped: its bytes may be corrupt.
                self.client.lose();
                self.client.msg = Msg::default();
                self.desyncs += 1;
                if !matches!(self.pending.back(), Some(Pending::Unknown)) {
                    self.pending.push_back(Pending::Unknown);
                }
            }
            Flow::ServerToClient => {
                self.server.lose();
                self.server_lost_now();
            }
        }
    }

    /// The connection closed: every command still waiting gets a `Response` (`Unknown` if the
    /// server flow had lost framing, else `Incomplete`).
    pub fn close(&mut self, out: &mut Vec<Event>) {
        let end = if self.server_lost {
            End::Unknown
        } else {
            End::Incomplete
        };
        for p in self.pending.drain(..) {
            if let Pending::Cmd { id, .. } = p {
                out.push(Event::Response {
                    id,
                    reply: None,
                    end,
                });
            }
        }
        *self = RedisConnection {
            desyncs: self.desyncs,
            next_id: self.next_id,
            ..RedisConnection::new()
        };
    }

    fn feed_client(&mut self, data: &[u8], uncaptured: u64, out: &mut Vec<Event>) {
        // A new client chunk: replies to earlier unparseable traffic are over.
        if self.server_lost {
            for p in self.pending.drain(..) {
                if let Pending::Cmd { id, .. } = p {
                    out.push(Event::Response {
                        id,
                        reply: None,
                        end: End::Unknown,
                    });
                }
            }
            self.tracked = 0;
            self.server_lost = false;
            self.server_realign = true;
        }
        self.pending.retain(|p| !matches!(p, Pending::Unknown));
        if self.client.elem == Elem::Lost {
            self.client.reset();
        }
        let mut pos = 0usize;
        let mut stalls = 0u8;
        while let Some(rest) = data.get(pos..).filter(|r| !r.is_empty()) {
            let (used, done) = self.client.step(rest);
            pos += used;
            stalls = if used == 0 { stalls + 1 } else { 0 };
            match done {
                Done::Msg => self.client_msg(out),
                Done::Lost => self.client_lost(out),
                Done::No if stalls > 2 => {
                    self.client.lose();
                    self.client_lost(out);
                    break;
                }
                Done::No => {}
            }
        }
        if uncaptured > 0 {
            match self.client.skip(uncaptured) {
                Done::Msg => self.client_msg(out),
                Done::Lost => self.client_lost(out),
                Done::No => {}
            }
        }
    }

    fn client_msg(&mut self, out: &mut Vec<Event>) {
        let msg = self.client.take_msg();
        if let Some(cmd) = command_from(msg, true) {
            self.track(cmd, out);
        }
    }

    fn client_lost(&mut self, out: &mut Vec<Event>) {
        self.desyncs += 1;
        let msg = std::mem::take(&mut self.client.msg);
        if let Some(cmd) = command_from(msg, false) {
            self.track(cmd, out);
        }
        if !matches!(self.pending.back(), Some(Pending::Unknown)) {
            self.pending.push_back(Pending::Unknown);
        }
    }

    fn track(&mut self, command: Command, out: &mut Vec<Event>) {
        let pubsub = command.pubsub();
        let expect = match pubsub {
            PubSub::No => 1,
            _ => command.arg_count.max(1),
        };
        if self.tracked >= MAX_PENDING {
            // Over the cap: its reply is still consumed, but nothing is reported.
            match self.pending.back_mut() {
                Some(Pending::Untracked(n)) => *n = n.saturating_add(1),
                _ => self.pending.push_back(Pending::Untracked(1)),
            }
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        self.tracked += 1;
        self.pending.push_back(Pending::Cmd { id, expect, pubsub });
        out.push(Event::Request { id, command });
    }

    fn feed_server(&mut self, data: &[u8], uncaptured: u64, out: &mut Vec<Event>) {
        if self.server_lost {
            return; // wait for the client's next chunk
        }
        if self.server_realign || self.server.elem == Elem::Lost {
            self.server.reset();
            self.server_realign = false;
        }
        let mut pos = 0usize;
        let mut stalls = 0u8;
        while let Some(rest) = data.get(pos..).filter(|r| !r.is_empty()) {
            if self.server_lost {
                return;
            }
            let (used, done) = self.server.step(rest);
            pos += used;
            stalls = if used == 0 { stalls + 1 } else { 0 };
            match done {
                Done::Msg => self.server_msg(out),
                Done::Lost => self.server_lost_now(),
                Done::No if stalls > 2 => {
                    self.server.lose();
                    self.server_lost_now();
                    return;
                }
                Done::No => {}
            }
        }
        if uncaptured > 0 && !self.server_lost {
            match self.server.skip(uncaptured) {
                Done::Msg => self.server_msg(out),
                Done::Lost => self.server_lost_now(),
                Done::No => {}
            }
        }
    }

    fn server_lost_now(&mut self) {
        self.desyncs += 1;
        self.server.msg = Msg::default();
        if self
            .pending
            .iter()
            .any(|p| matches!(p, Pending::Cmd { .. }))
        {
            self.server_lost = true;
        } else {
            self.server_realign = true;
        }
    }

    fn server_msg(&mut self, out: &mut Vec<Event>) {
        let msg = self.server.take_msg();
        let word = if matches!(msg.top_ty, b'*' | b'>') {
            first_word(&msg)
        } else {
            None
        };
        let front_pubsub = match self.pending.front() {
            Some(Pending::Cmd { pubsub, .. }) => *pubsub,
            _ => PubSub::No,
        };
        // Only read pub/sub meaning into a reply where pub/sub is going on, so that a list
        // whose first element happens to be "subscribe" stays an ordinary reply.
        let pubsub_context = front_pubsub != PubSub::No || self.subscribed || msg.top_ty == b'>';
        let confirmation = match word.as_deref() {
            Some("subscribe" | "psubscribe" | "ssubscribe") if pubsub_context => PubSub::Subscribe,
            Some("unsubscribe" | "punsubscribe" | "sunsubscribe") if pubsub_context => {
                PubSub::Unsubscribe
            }
            _ => PubSub::No,
        };
        // RESP2 subscribed mode (RESP3 confirmations are pushes and the mode does not apply).
        if msg.top_ty == b'*' {
            match confirmation {
                PubSub::Subscribe => self.subscribed = true,
                PubSub::Unsubscribe if msg.last_int == Some(0) => self.subscribed = false,
                _ => {}
            }
        }
        let answers_pubsub = confirmation != PubSub::No && front_pubsub != PubSub::No;
        if msg.top_ty == b'>' && !answers_pubsub {
            return; // out-of-band push
        }
        if msg.top_ty == b'*'
            && !answers_pubsub
            && (confirmation != PubSub::No
                || (self.subscribed
                    && matches!(word.as_deref(), Some("message" | "pmessage" | "smessage"))))
        {
            return; // RESP2 pub/sub traffic
        }
        match self.pending.front_mut() {
            None | Some(Pending::Unknown) => {}
            Some(Pending::Untracked(n)) => {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.pending.pop_front();
                }
            }
            Some(Pending::Cmd { id, expect, .. }) => {
                if *expect > 1 {
                    *expect -= 1;
                    return;
                }
                let id = *id;
                self.pending.pop_front();
                self.tracked = self.tracked.saturating_sub(1);
                out.push(Event::Response {
                    id,
                    reply: Some(reply_from(&msg)),
                    end: End::Complete,
                });
            }
        }
    }
}

/// Builds a command from a client message; `complete` is false for one cut short by lost framing.
fn command_from(msg: Msg, complete: bool) -> Option<Command> {
    if msg.top_ty != b'*' {
        return None;
    }
    let inline = msg.inline;
    let total = if complete || inline {
        msg.item_count
    } else {
        msg.top_len
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(msg.item_count)
    };
    let mut items = msg.items.into_iter();
    let name = items.next()?;
    if name.prefix.is_empty() {
        return None;
    }
    let name_text = lossy(&name.prefix, name.is_truncated()).to_ascii_uppercase();
    let mut args: Vec<Arg> = items.collect();
    for a in &mut args {
        if a.len == u64::MAX {
            // An inline argument cut by the line limit: its real length is unknown.
            a.len = a.prefix.len() as u64 + 1;
        }
    }
    Some(Command {
        name: name_text,
        arg_count: total.saturating_sub(1),
        args,
        inline,
    })
}

#[cfg(test)]
mod tests;
