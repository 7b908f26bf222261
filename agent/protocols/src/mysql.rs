//! MySQL/MariaDB client/server protocol over captured syscall chunks.
//!
//! Packets are `3-byte little-endian payload length, 1-byte sequence id, payload`. Only a prefix
//! of each payload is kept (enough for query text, error messages and the fixed fields Loupe
//! reads); the rest is skipped by count, so packets split across chunks, many packets per chunk
//! and payloads outside the capture are all framed exactly.
//!
//! [`MySqlConnection`] follows the conversation: it recognizes and skips the handshake (server
//! greeting, handshake response, auth switch / more-data rounds; `SSLRequest` or compression
//! make the rest of the connection opaque), then pairs each client command (sequence id 0) with
//! the server's response:
//!
//! - `COM_QUERY` and `COM_STMT_EXECUTE`: OK, ERR, `LOCAL INFILE`, or a result set (column count,
//!   column definitions, optional EOF, rows counted until EOF/OK, multi-result sets followed);
//! - `COM_STMT_PREPARE`: `PREPARE_OK` (statement id → query text kept in a bounded map, so later
//!   `COM_STMT_EXECUTE` events carry the text), then the parameter/column definitions;
//! - `COM_STMT_CLOSE`, `COM_STMT_SEND_LONG_DATA`, `COM_QUIT`: no response (reported at once);
//! - `COM_PING`, `COM_INIT_DB`, `COM_STMT_RESET`, `COM_RESET_CONNECTION` and others: one packet;
//!   `COM_CHANGE_USER`: an auth exchange ending in OK/ERR.
//!
//! Every [`Event::Request`] is followed by exactly one [`Event::Response`] with the same id
//! (on `close` at the latest). When server framing is lost (packet headers outside the capture,
//! typical of result sets larger than the capture), the response ends as [`End::Unknown`] when
//! the client sends its next command — MySQL is strictly request/response, so the last server
//! chunk before it is the real end — or as `Complete` if a fully captured chunk ends in the
//! result set's terminator.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::util::{le_u16, le_u24, le_u32, le_u64, lossy, push_capped};
use crate::{End, Flow};

/// Prepared statements remembered per connection.
pub const MAX_STATEMENTS: usize = 256;
/// Total bytes of remembered statement text per connection.
pub const MAX_STATEMENT_BYTES: usize = 64 * 1024;
/// Bytes of query text kept per command.
pub const MAX_SQL_LEN: usize = 4096;
/// Payload bytes kept of client packets (query text plus query attributes).
const CLIENT_KEEP: usize = MAX_SQL_LEN + 256;
/// Payload bytes kept of server packets (greeting, OK, ERR message).
const SERVER_KEEP: usize = 512;
/// A payload of this length continues in the next packet.
const MAX_PAYLOAD: u32 = 0xff_ffff;

// Capability flags.
const CLIENT_CONNECT_WITH_DB: u32 = 0x8;
const CLIENT_COMPRESS: u32 = 0x20;
const CLIENT_PROTOCOL_41: u32 = 0x200;
const CLIENT_SSL: u32 = 0x800;
const CLIENT_SECURE_CONNECTION: u32 = 0x8000;
const CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA: u32 = 1 << 21;
const CLIENT_DEPRECATE_EOF: u32 = 1 << 24;
const CLIENT_ZSTD_COMPRESSION: u32 = 1 << 26;
const CLIENT_QUERY_ATTRIBUTES: u32 = 1 << 27;
/// Status flag: another result set follows.
const SERVER_MORE_RESULTS_EXISTS: u16 = 0x0008;
/// Status flag: a cursor was opened; rows come with `COM_STMT_FETCH`.
const SERVER_STATUS_CURSOR_EXISTS: u16 = 0x0040;

/// A client command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `COM_QUERY` (0x03).
    Query {
        /// The SQL text (at most [`MAX_SQL_LEN`] bytes).
        sql: String,
        /// Text is missing from `sql` (capture limit or cap).
        truncated: bool,
    },
    /// `COM_STMT_PREPARE` (0x16).
    StmtPrepare {
        /// The SQL text.
        sql: String,
        /// Text is missing from `sql`.
        truncated: bool,
    },
    /// `COM_STMT_EXECUTE` (0x17).
    StmtExecute {
        /// The statement.
        statement_id: u32,
        /// Its text, if this connection's `PREPARE_OK` for it was seen and is still remembered.
        sql: Option<Arc<str>>,
    },
    /// `COM_STMT_SEND_LONG_DATA` (0x18); no response.
    StmtSendLongData {
        /// The statement.
        statement_id: u32,
    },
    /// `COM_STMT_CLOSE` (0x19); no response.
    StmtClose {
        /// The statement.
        statement_id: u32,
    },
    /// `COM_STMT_RESET` (0x1a).
    StmtReset {
        /// The statement.
        statement_id: u32,
    },
    /// `COM_STMT_FETCH` (0x1c).
    StmtFetch {
        /// The statement.
        statement_id: u32,
    },
    /// `COM_INIT_DB` (0x02).
    InitDb {
        /// The schema to switch to.
        schema: String,
    },
    /// `COM_PING` (0x0e).
    Ping,
    /// `COM_QUIT` (0x01); no response.
    Quit,
    /// `COM_CHANGE_USER` (0x11).
    ChangeUser,
    /// `COM_RESET_CONNECTION` (0x1f).
    ResetConnection,
    /// `COM_STATISTICS` (0x09).
    Statistics,
    /// `COM_FIELD_LIST` (0x04).
    FieldList,
    /// Any other command byte.
    Other {
        /// The command byte.
        code: u8,
    },
}

impl Command {
    /// The protocol name (`COM_QUERY`, …).
    pub fn name(&self) -> &'static str {
        match self {
            Command::Query { .. } => "COM_QUERY",
            Command::StmtPrepare { .. } => "COM_STMT_PREPARE",
            Command::StmtExecute { .. } => "COM_STMT_EXECUTE",
            Command::StmtSendLongData { .. } => "COM_STMT_SEND_LONG_DATA",
            Command::StmtClose { .. } => "COM_STMT_CLOSE",
            Command::StmtReset { .. } => "COM_STMT_RESET",
            Command::StmtFetch { .. } => "COM_STMT_FETCH",
            Command::InitDb { .. } => "COM_INIT_DB",
            Command::Ping => "COM_PING",
            Command::Quit => "COM_QUIT",
            Command::ChangeUser => "COM_CHANGE_USER",
            Command::ResetConnection => "COM_RESET_CONNECTION",
            Command::Statistics => "COM_STATISTICS",
            Command::FieldList => "COM_FIELD_LIST",
            Command::Other { .. } => "COM_OTHER",
        }
    }

    /// The SQL text the command runs, when known (sanitize before use as `db.query.text`).
    pub fn sql(&self) -> Option<&str> {
        match self {
            Command::Query { sql, .. } | Command::StmtPrepare { sql, .. } => Some(sql),
            Command::StmtExecute { sql, .. } => sql.as_deref(),
            _ => None,
        }
    }
}

/// A server response summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// OK packet.
    Ok {
        /// Rows changed.
        affected_rows: u64,
        /// `LAST_INSERT_ID()`.
        last_insert_id: u64,
        /// Warning count.
        warnings: u16,
    },
    /// ERR packet.
    Err {
        /// Error number (e.g. 1064): `db.response.status_code`.
        code: u16,
        /// SQLSTATE (e.g. `42000`), when sent.
        sql_state: Option<String>,
        /// Message (at most about 500 bytes).
        message: String,
    },
    /// A result set (for multi-result responses: the first set's columns, all sets' rows).
    ResultSet {
        /// Column count.
        columns: u64,
        /// Rows, when every row packet was seen.
        rows: Option<u64>,
    },
    /// `COM_STMT_PREPARE_OK`.
    PrepareOk {
        /// The new statement's id.
        statement_id: u32,
        /// Result columns.
        columns: u16,
        /// Parameters.
        params: u16,
    },
    /// The command has no response (`COM_STMT_CLOSE`, `COM_QUIT`, `COM_STMT_SEND_LONG_DATA`).
    NoResponse,
    /// Something else (an EOF, `COM_STATISTICS` text).
    Other,
}

impl Response {
    /// Whether the response is an error.
    pub fn is_error(&self) -> bool {
        matches!(self, Response::Err { .. })
    }
}

/// What a [`MySqlConnection`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A command was sent.
    Request {
        /// Connection-unique id, increasing from 0.
        id: u64,
        /// The command.
        command: Command,
    },
    /// The response to request `id` is over.
    Response {
        /// The request answered.
        id: u64,
        /// What it was, or `None` when unknown (framing lost, connection closed).
        response: Option<Response>,
        /// How it ended.
        end: End,
    },
}

/// One reassembled packet's header and kept payload prefix.
#[derive(Debug, Default)]
struct Packet {
    len: u32,
    seq: u8,
    /// The first payload bytes (a gap inside them stops the prefix).
    prefix: Vec<u8>,
}

impl Packet {
    fn first(&self) -> Option<u8> {
        self.prefix.first().copied()
    }
    /// Whether payload bytes are missing from the prefix.
    fn cut(&self) -> bool {
        (self.prefix.len() as u64) < u64::from(self.len)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadState {
    Header,
    Payload,
    Lost,
}

#[derive(Debug)]
struct PacketReader {
    keep: usize,
    state: ReadState,
    hdr: [u8; 4],
    hdr_len: usize,
    remaining: u32,
    /// A gap occurred inside the kept region: stop appending.
    broken: bool,
    /// The previous packet had the maximum length: this one continues it.
    continuation: bool,
    pkt: Packet,
}

enum ReadStep {
    Nothing,
    /// A packet is complete in `pkt`.
    Packet,
    /// A continuation of a maximum-length packet is complete (header in `pkt`).
    Continuation,
}

impl PacketReader {
    fn new(keep: usize) -> PacketReader {
        PacketReader {
            keep,
            state: ReadState::Header,
            hdr: [0; 4],
            hdr_len: 0,
            remaining: 0,
            broken: false,
            continuation: false,
            pkt: Packet::default(),
        }
    }

    fn reset(&mut self) {
        self.state = ReadState::Header;
        self.hdr_len = 0;
        self.remaining = 0;
        self.broken = false;
        self.continuation = false;
        self.pkt.prefix.clear();
    }

    fn lose(&mut self) {
        self.reset();
        self.state = ReadState::Lost;
    }

    fn idle(&self) -> bool {
        self.state == ReadState::Header && self.hdr_len == 0
    }

    /// Reads a prefix of `data`. A completed packet is left in `pkt`.
    fn step(&mut self, data: &[u8]) -> (usize, ReadStep) {
        match self.state {
            ReadState::Lost => (data.len(), ReadStep::Nothing),
            ReadState::Header => {
                let need = 4 - self.hdr_len;
                let take = need.min(data.len());
                for (i, &b) in data.iter().take(take).enumerate() {
                    if let Some(slot) = self.hdr.get_mut(self.hdr_len + i) {
                        *slot = b;
                    }
                }
                self.hdr_len += take;
                if self.hdr_len < 4 {
                    return (take, ReadStep::Nothing);
                }
                self.hdr_len = 0;
                let [a, b, c, seq] = self.hdr;
                let len = u32::from_le_bytes([a, b, c, 0]);
                self.pkt.len = len;
                self.pkt.seq = seq;
                self.pkt.prefix.clear();
                self.broken = false;
                self.remaining = len;
                if len == 0 {
                    return (take, self.packet_done());
                }
                self.state = ReadState::Payload;
                (take, ReadStep::Nothing)
            }
            ReadState::Payload => {
                let take = (self.remaining as usize).min(data.len());
                if !self.broken {
                    push_capped(
                        &mut self.pkt.prefix,
                        data.get(..take).unwrap_or_default(),
                        self.keep,
                    );
                }
                self.remaining -= take as u32;
                if self.remaining == 0 {
                    return (take, self.packet_done());
                }
                (take, ReadStep::Nothing)
            }
        }
    }

    fn packet_done(&mut self) -> ReadStep {
        self.state = ReadState::Header;
        let absorbed = self.continuation;
        self.continuation = self.pkt.len == MAX_PAYLOAD;
        if absorbed {
            ReadStep::Continuation
        } else {
            ReadStep::Packet
        }
    }

    /// Accounts for `n` uncaptured bytes: `(what completed, framing is lost after it)`. When
    /// lost, the caller handles the completed packet first, then calls `lose`.
    fn skip(&mut self, n: u64) -> (ReadStep, bool) {
        match self.state {
            ReadState::Lost => (ReadStep::Nothing, false),
            ReadState::Payload => {
                let remaining = u64::from(self.remaining);
                if (self.pkt.prefix.len() as u64) < self.keep as u64 {
                    self.broken = true;
                }
                if n < remaining {
                    self.remaining -= n as u32;
                    return (ReadStep::Nothing, false);
                }
                self.remaining = 0;
                (self.packet_done(), n > remaining)
            }
            ReadState::Header => (ReadStep::Nothing, true),
        }
    }
}

/// A length-encoded integer at `at`: `(value, bytes used)`; `None` for NULL/invalid/short.
fn lenenc(b: &[u8], at: usize) -> Option<(u64, usize)> {
    match *b.get(at)? {
        v @ 0..=0xfa => Some((u64::from(v), 1)),
        0xfc => Some((u64::from(le_u16(b, at + 1)?), 3)),
        0xfd => Some((u64::from(le_u24(b, at + 1)?), 4)),
        0xfe => Some((le_u64(b, at + 1)?, 9)),
        _ => None,
    }
}

fn parse_ok(p: &[u8]) -> Option<(Response, u16)> {
    let (affected_rows, n1) = lenenc(p, 1)?;
    let (last_insert_id, n2) = lenenc(p, 1 + n1)?;
    let status = le_u16(p, 1 + n1 + n2).unwrap_or(0);
    let warnings = le_u16(p, 3 + n1 + n2).unwrap_or(0);
    Some((
        Response::Ok {
            affected_rows,
            last_insert_id,
            warnings,
        },
        status,
    ))
}

fn parse_err(p: &Packet) -> Response {
    let b = &p.prefix;
    let code = le_u16(b, 1).unwrap_or(0);
    let (sql_state, msg_at) = if b.get(3) == Some(&b'#') {
        (b.get(4..9).map(|s| lossy(s, false)), 9)
    } else {
        (None, 3)
    };
    Response::Err {
        code,
        sql_state,
        message: lossy(b.get(msg_at..).unwrap_or_default(), p.cut()),
    }
}

/// Status flags of a terminator (EOF or OK-with-0xfe header).
fn terminator_status(p: &[u8]) -> u16 {
    if p.len() <= 5 {
        le_u16(p, 3).unwrap_or(0)
    } else {
        parse_ok(p).map_or(0, |(_, s)| s)
    }
}

fn is_terminator(p: &Packet) -> bool {
    p.first() == Some(0xfe) && p.len < MAX_PAYLOAD
}

/// Byte length of a binary-protocol value of `ty` at `at` (for query attributes).
fn binary_value_len(b: &[u8], at: usize, ty: u8) -> Option<usize> {
    Some(match ty {
        0x06 => 0,
        0x01 => 1,
        0x02 | 0x0d => 2,
        0x03 | 0x04 | 0x09 => 4,
        0x05 | 0x08 => 8,
        0x07 | 0x0a | 0x0b | 0x0c => 1 + usize::from(*b.get(at)?),
        0x00 | 0x0f | 0x10 | 0xf5..=0xff => {
            let (n, used) = lenenc(b, at)?;
            used.checked_add(usize::try_from(n).ok()?)?
        }
        _ => return None,
    })
}

/// Offset of the query text after `COM_QUERY`'s query attributes (starting at `at`).
fn skip_query_attributes(b: &[u8], at: usize) -> Option<usize> {
    let (count, n1) = lenenc(b, at)?;
    let (_sets, n2) = lenenc(b, at + n1)?;
    let mut pos = at + n1 + n2;
    if count == 0 {
        return Some(pos);
    }
    let count = usize::try_from(count).ok().filter(|&c| c <= 256)?;
    let bitmap_at = pos;
    pos += count.div_ceil(8);
    if *b.get(pos)? != 1 {
        return None; // types must be bound
    }
    pos += 1;
    let mut types = Vec::with_capacity(count);
    for _ in 0..count {
        types.push(*b.get(pos)?);
        pos += 2;
        let (name_len, used) = lenenc(b, pos)?;
        pos = pos
            .checked_add(used)?
            .checked_add(usize::try_from(name_len).ok()?)?;
    }
    for (i, ty) in types.into_iter().enumerate() {
        let null = b
            .get(bitmap_at + i / 8)
            .is_some_and(|m| m & (1 << (i % 8)) != 0);
        if !null {
            pos = pos.checked_add(binary_value_len(b, pos, ty)?)?;
        }
    }
    (pos <= b.len()).then_some(pos)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Attached mid-connection: waiting for a greeting or a command.
    Unknown,
    Handshake,
    Command,
    /// TLS or compression: nothing more can be read.
    Opaque,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Single,
    QueryResult,
    LocalInfile,
    ColumnDefs(u64),
    AfterDefs,
    Rows,
    PrepareOk,
    PrepareDefs(u64),
    FieldList,
    Auth,
}

#[derive(Debug)]
struct PendingCmd {
    id: u64,
    expect: Expect,
    next_seq: u8,
    columns: Option<u64>,
    rows: u64,
    prepare_sql: Option<Arc<str>>,
    schema_on_ok: Option<String>,
    result: Option<Response>,
    /// A result set was seen (multi-result responses report one `ResultSet`).
    saw_result_set: bool,
}

/// Per-connection MySQL parser for both flows.
#[derive(Debug)]
pub struct MySqlConnection {
    client: PacketReader,
    server: PacketReader,
    phase: Phase,
    caps: Option<u32>,
    pending: Option<PendingCmd>,
    next_id: u64,
    statements: VecDeque<(u32, Arc<str>)>,
    statement_bytes: usize,
    server_version: Option<String>,
    schema: Option<String>,
    server_lost: bool,
    server_realign: bool,
    client_resync: bool,
    desyncs: u64,
}

impl Default for MySqlConnection {
    fn default() -> Self {
        Self::new()
    }
}

fn is_known_command(b: u8) -> bool {
    matches!(b, 0x01..=0x04 | 0x09 | 0x0e | 0x11 | 0x16..=0x1a | 0x1c | 0x1f | 0x05..=0x08 | 0x0a..=0x0d | 0x1b)
}

/// Whether `chunk` starts with a plausible command packet (sequence 0, known command byte).
fn plausible_command_start(chunk: &[u8]) -> bool {
    let len = le_u24(chunk, 0).unwrap_or(0);
    len >= 1 && chunk.get(3) == Some(&0) && chunk.get(4).is_some_and(|&c| is_known_command(c))
}

/// Whether the payload is a server greeting: protocol 10 and a printable, NUL-terminated
/// version string. Returns the version.
pub(crate) fn parse_greeting(payload: &[u8]) -> Option<String> {
    if payload.first() != Some(&0x0a) {
        return None;
    }
    let rest = payload.get(1..)?;
    let nul = rest.iter().take(65).position(|&c| c == 0)?;
    let v = rest.get(..nul)?;
    (!v.is_empty()
        && v.iter().all(|c| c.is_ascii_graphic())
        && v.first().is_some_and(u8::is_ascii_digit))
    .then(|| lossy(v, false))
}

impl MySqlConnection {
    /// A connection with nothing seen yet.
    pub fn new() -> MySqlConnection {
        MySqlConnection {
            client: PacketReader::new(CLIENT_KEEP),
            server: PacketReader::new(SERVER_KEEP),
            phase: Phase::Unknown,
            caps: None,
            pending: None,
            next_id: 0,
            statements: VecDeque::new(),
            statement_bytes: 0,
            server_version: None,
            schema: None,
            server_lost: false,
            server_realign: false,
            client_resync: false,
            desyncs: 0,
        }
    }

    /// Times framing was lost (for agent telemetry).
    pub fn desyncs(&self) -> u64 {
        self.desyncs
    }

    /// The server version from the greeting (`8.0.36`, `5.5.5-10.11.6-MariaDB`).
    pub fn server_version(&self) -> Option<&str> {
        self.server_version.as_deref()
    }

    /// The current schema, from the handshake, `COM_INIT_DB` or `USE` (`db.namespace`).
    pub fn schema(&self) -> Option<&str> {
        self.schema.as_deref()
    }

    /// Whether the connection switched to TLS or compression and can no longer be read.
    pub fn is_opaque(&self) -> bool {
        self.phase == Phase::Opaque
    }

    /// Prepared statements currently remembered.
    pub fn statement_count(&self) -> usize {
        self.statements.len()
    }

    /// Heap bytes held by this connection.
    pub fn buffered_bytes(&self) -> usize {
        self.client.pkt.prefix.capacity()
            + self.server.pkt.prefix.capacity()
            + self.statement_bytes
            + self.statements.capacity() * std::mem::size_of::<(u32, Arc<str>)>()
            + self.pending.as_ref().map_or(0, |p| {
                p.prepare_sql.as_ref().map_or(0, |s| s.len())
                    + p.schema_on_ok.as_ref().map_or(0, String::capacity)
                    + SERVER_KEEP
            })
    }

    /// Feeds one syscall's bytes: `captured` is what the probe copied (a prefix), `total_len` the
    /// syscall's real byte count.
    pub fn feed(&mut self, flow: Flow, captured: &[u8], total_len: u64, out: &mut Vec<Event>) {
        if self.phase == Phase::Opaque {
            return;
        }
        let uncaptured = total_len.saturating_sub(captured.len() as u64);
        match flow {
            Flow::ClientToServer => self.feed_client(captured, uncaptured, out),
            Flow::ServerToClient => self.feed_server(captured, uncaptured, out),
        }
    }

    /// Reports that bytes of unknown count were lost on `flow`.
    pub fn gap(&mut self, flow: Flow) {
        self.desyncs += 1;
        match flow {
            Flow::ClientToServer => {
                self.client.lose();
                self.client_resync = true;
            }
            Flow::ServerToClient => {
                self.server.lose();
                self.server_lost = true;
            }
        }
    }

    /// The connection closed: a command still waiting gets its `Response`.
    pub fn close(&mut self, out: &mut Vec<Event>) {
        if let Some(p) = self.pending.take() {
            let end = if self.server_lost {
                End::Unknown
            } else {
                End::Incomplete
            };
            out.push(Event::Response {
                id: p.id,
                response: None,
                end,
            });
        }
        self.client.reset();
        self.server.reset();
        self.server_lost = false;
    }

    fn feed_client(&mut self, data: &[u8], uncaptured: u64, out: &mut Vec<Event>) {
        if self.client.state == ReadState::Lost || self.client_resync {
            // Realign at this chunk only if it starts like a command.
            if !plausible_command_start(data) {
                return;
            }
            self.client.reset();
            self.client_resync = false;
        }
        let mut pos = 0usize;
        while let Some(rest) = data.get(pos..).filter(|r| !r.is_empty()) {
            let (used, step) = self.client.step(rest);
            pos += used.max(1);
            self.client_step(step, out);
            if self.phase == Phase::Opaque {
                return;
            }
        }
        if uncaptured > 0 {
            let (step, lost) = self.client.skip(uncaptured);
            self.client_step(step, out);
            if lost {
                self.desyncs += 1;
                self.client.lose();
                self.client_resync = true;
            }
        }
    }

    fn client_step(&mut self, step: ReadStep, out: &mut Vec<Event>) {
        match step {
            ReadStep::Nothing => {}
            ReadStep::Packet => self.client_packet(out),
            ReadStep::Continuation => self.continuation(self.client.pkt.seq),
        }
    }

    /// A continuation packet in either direction moves the server's expected sequence id on.
    fn continuation(&mut self, seq: u8) {
        if let Some(p) = self.pending.as_mut() {
            p.next_seq = seq.wrapping_add(1);
        }
    }

    fn feed_server(&mut self, data: &[u8], uncaptured: u64, out: &mut Vec<Event>) {
        if self.server_lost {
            if uncaptured == 0 {
                self.tail_terminator(data, out);
            }
            return;
        }
        if self.server_realign || self.server.state == ReadState::Lost {
            self.server.reset();
            self.server_realign = false;
        }
        let mut pos = 0usize;
        while let Some(rest) = data.get(pos..).filter(|r| !r.is_empty()) {
            let (used, step) = self.server.step(rest);
            pos += used.max(1);
            self.server_step(step, out);
            if self.server_lost || self.phase == Phase::Opaque {
                return;
            }
        }
        if uncaptured > 0 {
            let (step, lost) = self.server.skip(uncaptured);
            self.server_step(step, out);
            if lost && !self.server_lost {
                self.server_framing_lost();
            }
        }
    }

    fn server_step(&mut self, step: ReadStep, out: &mut Vec<Event>) {
        match step {
            ReadStep::Nothing => {}
            ReadStep::Packet => self.server_packet(out),
            ReadStep::Continuation => self.continuation(self.server.pkt.seq),
        }
    }

    fn server_framing_lost(&mut self) {
        self.desyncs += 1;
        self.server.lose();
        if self.pending.is_some() {
            self.server_lost = true;
        } else {
            self.server_realign = true;
        }
    }

    /// While lost inside a result set: a fully captured chunk that ends with an EOF/OK
    /// terminator ends the response.
    fn tail_terminator(&mut self, data: &[u8], out: &mut Vec<Event>) {
        let Some(p) = self.pending.as_ref() else {
            return;
        };
        if !matches!(
            p.expect,
            Expect::Rows | Expect::AfterDefs | Expect::ColumnDefs(_)
        ) {
            return;
        }
        for k in 5..=64usize {
            let Some(start) = data.len().checked_sub(k + 4) else {
                break;
            };
            let Some(tail) = data.get(start..) else { break };
            if le_u24(tail, 0) == Some(k as u32) && tail.get(4) == Some(&0xfe) {
                let payload = tail.get(4..).unwrap_or_default();
                if terminator_status(payload) & SERVER_MORE_RESULTS_EXISTS == 0 {
                    if let Some(p) = self.pending.take() {
                        let columns = p.columns.unwrap_or(0);
                        out.push(Event::Response {
                            id: p.id,
                            response: Some(Response::ResultSet {
                                columns,
                                rows: None,
                            }),
                            end: End::Complete,
                        });
                    }
                    self.server_lost = false;
                    self.server_realign = true;
                }
                return;
            }
        }
    }

    fn client_packet(&mut self, out: &mut Vec<Event>) {
        let pkt = std::mem::take(&mut self.client.pkt);
        self.handle_client_packet(&pkt, out);
        let mut prefix = pkt.prefix;
        prefix.clear();
        self.client.pkt.prefix = prefix;
    }

    fn handle_client_packet(&mut self, pkt: &Packet, out: &mut Vec<Event>) {
        let b = &pkt.prefix;
        match self.phase {
            Phase::Opaque => {}
            Phase::Handshake if pkt.seq == 1 => {
                // HandshakeResponse41 or SSLRequest.
                let Some(caps) = le_u32(b, 0) else { return };
                self.caps = Some(caps);
                if caps & CLIENT_SSL != 0 && pkt.len == 32 {
                    self.phase = Phase::Opaque;
                    return;
                }
                if caps & CLIENT_PROTOCOL_41 != 0 && caps & CLIENT_CONNECT_WITH_DB != 0 {
                    self.schema = handshake_database(b, caps).or(self.schema.take());
                }
            }
            Phase::Handshake => {} // auth data
            Phase::Unknown | Phase::Command => {
                if pkt.seq != 0 {
                    // LOCAL INFILE data or auth rounds: the server's next packet follows it.
                    if let Some(p) = self.pending.as_mut() {
                        p.next_seq = pkt.seq.wrapping_add(1);
                    }
                    return;
                }
                self.phase = Phase::Command;
                self.command(pkt, out);
            }
        }
    }

    fn command(&mut self, pkt: &Packet, out: &mut Vec<Event>) {
        let b = &pkt.prefix;
        let Some(code) = pkt.first() else {
            self.desyncs += 1;
            return;
        };
        // A new command: whatever the server was sending is over.
        if let Some(p) = self.pending.take() {
            let response = match p.expect {
                Expect::Rows | Expect::AfterDefs | Expect::ColumnDefs(_) => {
                    Some(Response::ResultSet {
                        columns: p.columns.unwrap_or(0),
                        rows: None,
                    })
                }
                _ => None,
            };
            out.push(Event::Response {
                id: p.id,
                response,
                end: End::Unknown,
            });
        }
        if self.server_lost || !self.server.idle() {
            self.server_realign = true;
        }
        self.server_lost = false;
        let stmt_id = le_u32(b, 1).unwrap_or(0);
        let text = |from: usize| {
            let t = b.get(from..).unwrap_or_default();
            let t = t.get(..t.len().min(MAX_SQL_LEN)).unwrap_or_default();
            let cut = pkt.cut() || b.len().saturating_sub(from) > MAX_SQL_LEN;
            (lossy(t, cut), cut)
        };
        let mut prepare_sql = None;
        let mut schema_on_ok = None;
        let (command, expect) = match code {
            0x03 => {
                let attrs = match self.caps {
                    Some(c) => c & CLIENT_QUERY_ATTRIBUTES != 0,
                    // Unknown capabilities: SQL never starts with a control byte.
                    None => b.get(1).is_some_and(|&c| c < 0x09),
                };
                let at = if attrs {
                    skip_query_attributes(b, 1).unwrap_or(1)
                } else {
                    1
                };
                let (sql, truncated) = text(at);
                schema_on_ok = use_schema(&sql);
                (Command::Query { sql, truncated }, Expect::QueryResult)
            }
            0x16 => {
                let (sql, truncated) = text(1);
                prepare_sql = Some(Arc::from(sql.as_str()));
                (Command::StmtPrepare { sql, truncated }, Expect::PrepareOk)
            }
            0x17 => {
                let sql = self.lookup(stmt_id);
                (
                    Command::StmtExecute {
                        statement_id: stmt_id,
                        sql,
                    },
                    Expect::QueryResult,
                )
            }
            0x18 => (
                Command::StmtSendLongData {
                    statement_id: stmt_id,
                },
                Expect::Single,
            ),
            0x19 => {
                self.forget(stmt_id);
                (
                    Command::StmtClose {
                        statement_id: stmt_id,
                    },
                    Expect::Single,
                )
            }
            0x1a => (
                Command::StmtReset {
                    statement_id: stmt_id,
                },
                Expect::Single,
            ),
            0x1c => (
                Command::StmtFetch {
                    statement_id: stmt_id,
                },
                Expect::Rows,
            ),
            0x02 => {
                let (schema, _) = text(1);
                schema_on_ok = Some(schema.clone());
                (Command::InitDb { schema }, Expect::Single)
            }
            0x0e => (Command::Ping, Expect::Single),
            0x01 => (Command::Quit, Expect::Single),
            0x11 => (Command::ChangeUser, Expect::Auth),
            0x1f => (Command::ResetConnection, Expect::Single),
            0x09 => (Command::Statistics, Expect::Single),
            0x04 => (Command::FieldList, Expect::FieldList),
            code => (Command::Other { code }, Expect::Single),
        };
        let no_response = matches!(code, 0x01 | 0x18 | 0x19);
        let id = self.next_id;
        self.next_id += 1;
        out.push(Event::Request { id, command });
        if no_response {
            out.push(Event::Response {
                id,
                response: Some(Response::NoResponse),
                end: End::Complete,
            });
            return;
        }
        self.pending = Some(PendingCmd {
            id,
            expect,
            next_seq: pkt.seq.wrapping_add(1),
            columns: None,
            rows: 0,
            prepare_sql,
            schema_on_ok,
            result: None,
            saw_result_set: false,
        });
    }

    fn lookup(&self, id: u32) -> Option<Arc<str>> {
        self.statements
            .iter()
            .rev()
            .find(|(sid, _)| *sid == id)
            .map(|(_, s)| Arc::clone(s))
    }

    fn forget(&mut self, id: u32) {
        let before = self.statements.len();
        let mut freed = 0;
        self.statements.retain(|(sid, s)| {
            let keep = *sid != id;
            if !keep {
                freed += s.len();
            }
            keep
        });
        if self.statements.len() != before {
            self.statement_bytes = self.statement_bytes.saturating_sub(freed);
        }
    }

    fn remember(&mut self, id: u32, sql: Arc<str>) {
        self.forget(id);
        self.statement_bytes += sql.len();
        self.statements.push_back((id, sql));
        while self.statements.len() > MAX_STATEMENTS || self.statement_bytes > MAX_STATEMENT_BYTES {
            match self.statements.pop_front() {
                Some((_, s)) => self.statement_bytes = self.statement_bytes.saturating_sub(s.len()),
                None => break,
            }
        }
    }

    fn server_packet(&mut self, out: &mut Vec<Event>) {
        let pkt = std::mem::take(&mut self.server.pkt);
        self.handle_server_packet(&pkt, out);
        let mut prefix = pkt.prefix;
        prefix.clear();
        self.server.pkt.prefix = prefix;
    }

    fn handle_server_packet(&mut self, pkt: &Packet, out: &mut Vec<Event>) {
        let b = pkt.prefix.as_slice();
        match self.phase {
            Phase::Opaque => return,
            Phase::Unknown | Phase::Handshake if pkt.seq == 0 => {
                if let Some(v) = parse_greeting(b) {
                    self.server_version = Some(v);
                    self.phase = Phase::Handshake;
                }
                return;
            }
            Phase::Handshake => {
                match pkt.first() {
                    Some(0x00) => {
                        let caps = self.caps.unwrap_or(0);
                        self.phase = if caps & (CLIENT_COMPRESS | CLIENT_ZSTD_COMPRESSION) != 0 {
                            Phase::Opaque
                        } else {
                            Phase::Command
                        };
                    }
                    Some(0xff) => self.phase = Phase::Unknown,
                    _ => {} // auth switch / more data
                }
                return;
            }
            Phase::Unknown | Phase::Command => {}
        }
        let Some(p) = self.pending.as_mut() else {
            return; // unsolicited (e.g. the EOF after PREPARE_OK's definitions)
        };
        if pkt.seq != p.next_seq {
            self.server_framing_lost();
            return;
        }
        p.next_seq = pkt.seq.wrapping_add(1);
        let deprecate_eof = self.caps.map(|c| c & CLIENT_DEPRECATE_EOF != 0);
        let first = pkt.first();
        let done: Option<Response> = match p.expect {
            Expect::Single | Expect::LocalInfile | Expect::Auth => match first {
                Some(0x00) => parse_ok(b).map(|(r, _)| r).or(Some(Response::Other)),
                Some(0xff) => Some(parse_err(pkt)),
                _ if p.expect == Expect::Auth || p.expect == Expect::LocalInfile => None,
                _ => Some(Response::Other),
            },
            Expect::QueryResult => match first {
                Some(0x00) => match parse_ok(b) {
                    Some((ok, status)) if status & SERVER_MORE_RESULTS_EXISTS != 0 => {
                        p.result.get_or_insert(ok);
                        None
                    }
                    Some((_, _)) if p.saw_result_set => Some(Response::ResultSet {
                        columns: p.columns.unwrap_or(0),
                        rows: Some(p.rows),
                    }),
                    Some((ok, _)) => Some(p.result.take().unwrap_or(ok)),
                    None => Some(Response::Other),
                },
                Some(0xff) => Some(parse_err(pkt)),
                Some(0xfb) => {
                    p.expect = Expect::LocalInfile;
                    None
                }
                _ => match lenenc(b, 0) {
                    Some((n, _)) if n > 0 => {
                        p.columns.get_or_insert(n);
                        p.expect = Expect::ColumnDefs(n);
                        None
                    }
                    _ => {
                        self.server_framing_lost();
                        return;
                    }
                },
            },
            Expect::ColumnDefs(left) => {
                if first == Some(0xff) {
                    Some(parse_err(pkt))
                } else {
                    p.expect = if left <= 1 {
                        Expect::AfterDefs
                    } else {
                        Expect::ColumnDefs(left - 1)
                    };
                    None
                }
            }
            Expect::AfterDefs | Expect::Rows => {
                let after_defs = p.expect == Expect::AfterDefs;
                if first == Some(0xff) {
                    Some(parse_err(pkt))
                } else if is_terminator(pkt) {
                    // Right after the definitions, a classic EOF (5 bytes) starts the rows;
                    // an OK-style terminator (7+ bytes, CLIENT_DEPRECATE_EOF) ends an empty set.
                    let intermediate = after_defs
                        && match deprecate_eof {
                            Some(d) => !d,
                            None => pkt.len <= 5,
                        };
                    if intermediate && terminator_status(b) & SERVER_STATUS_CURSOR_EXISTS != 0 {
                        Some(Response::ResultSet {
                            columns: p.columns.unwrap_or(0),
                            rows: Some(0),
                        })
                    } else if intermediate {
                        p.expect = Expect::Rows;
                        None
                    } else if terminator_status(b) & SERVER_MORE_RESULTS_EXISTS != 0 {
                        p.saw_result_set = true;
                        p.expect = Expect::QueryResult;
                        None
                    } else {
                        Some(Response::ResultSet {
                            columns: p.columns.unwrap_or(0),
                            rows: Some(p.rows),
                        })
                    }
                } else {
                    p.rows += 1;
                    p.expect = Expect::Rows;
                    None
                }
            }
            Expect::PrepareOk => match first {
                Some(0x00) if pkt.len >= 12 => {
                    let statement_id = le_u32(b, 1).unwrap_or(0);
                    let columns = le_u16(b, 5).unwrap_or(0);
                    let params = le_u16(b, 7).unwrap_or(0);
                    if let Some(sql) = p.prepare_sql.take() {
                        self.remember(statement_id, sql);
                    }
                    let ok = Response::PrepareOk {
                        statement_id,
                        columns,
                        params,
                    };
                    let defs = u64::from(columns) + u64::from(params);
                    match self.pending.as_mut() {
                        Some(p) if defs > 0 => {
                            p.result = Some(ok);
                            p.expect = Expect::PrepareDefs(defs);
                            None
                        }
                        _ => Some(ok),
                    }
                }
                Some(0xff) => Some(parse_err(pkt)),
                _ => Some(Response::Other),
            },
            Expect::PrepareDefs(left) => {
                if is_terminator(pkt) && pkt.len < 9 {
                    None // EOF between the parameter and column definitions
                } else if left <= 1 {
                    Some(p.result.take().unwrap_or(Response::Other))
                } else {
                    p.expect = Expect::PrepareDefs(left - 1);
                    None
                }
            }
            Expect::FieldList => {
                if first == Some(0xff) {
                    Some(parse_err(pkt))
                } else if is_terminator(pkt) {
                    Some(Response::ResultSet {
                        columns: p.rows,
                        rows: Some(0),
                    })
                } else {
                    p.rows += 1;
                    None
                }
            }
        };
        if let Some(response) = done
            && let Some(p) = self.pending.take()
        {
            if matches!(response, Response::Ok { .. })
                && let Some(s) = p.schema_on_ok
            {
                self.schema = Some(s);
            }
            out.push(Event::Response {
                id: p.id,
                response: Some(response),
                end: End::Complete,
            });
        }
    }
}

/// The database named in a HandshakeResponse41.
fn handshake_database(b: &[u8], caps: u32) -> Option<String> {
    let mut pos = 32usize;
    let user_end = crate::util::find_byte(b, pos, 0)?;
    pos = user_end + 1;
    if caps & CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA != 0 {
        let (n, used) = lenenc(b, pos)?;
        pos = pos
            .checked_add(used)?
            .checked_add(usize::try_from(n).ok()?)?;
    } else if caps & CLIENT_SECURE_CONNECTION != 0 {
        pos = pos.checked_add(1 + usize::from(*b.get(pos)?))?;
    } else {
        pos = crate::util::find_byte(b, pos, 0)? + 1;
    }
    let end = crate::util::find_byte(b, pos, 0)?;
    let db = b.get(pos..end)?;
    (!db.is_empty()).then(|| lossy(db, false))
}

/// The schema of a `USE name` statement.
fn use_schema(sql: &str) -> Option<String> {
    let t = sql.trim_start();
    let head = t.get(..4)?;
    if !head.eq_ignore_ascii_case("use ") {
        return None;
    }
    let name = t.get(4..)?.trim().trim_end_matches(';').trim();
    let name = name
        .strip_prefix('`')
        .and_then(|n| n.strip_suffix('`'))
        .unwrap_or(name);
    (!name.is_empty() && name.len() <= 64 && !name.contains(char::is_whitespace))
        .then(|| name.to_string())
}

#[cfg(test)]
mod tests;
