//! HTTP/2 (RFC 9113) and gRPC over captured syscall chunks: frames per flow, HPACK per
//! direction, one request/response pair per stream.
//!
//! One [`Http2Connection`] per TCP connection; feed both flows in syscall order. The client's
//! HEADERS on a new stream produce [`Event::Request`]; the server's first final HEADERS produce
//! [`Event::Response`]; the stream's end ([`Event::End`]) comes with END_STREAM from the server
//! (carrying the trailers' `grpc-status`, or the trailers-only response's), a RST_STREAM from
//! either side, a GOAWAY that refuses it, or the connection's close. Streams are independent:
//! a response is only ever paired with the request of its own stream.
//!
//! Capture limits. Only the first bytes of each syscall are captured; the rest is skipped by
//! count, so DATA frames and long header blocks spanning the capture keep framing. A frame
//! header that falls outside the capture loses framing on that flow: the flow realigns at the
//! first later chunk that starts with a strictly plausible frame ([`plausible_frame`]); frames
//! in between are unknown, so the flow's HPACK table is invalidated (see [`hpack`]: unknown
//! entries decode as unknown, never as a wrong value) and a response whose DATA was cut there
//! ends at that chunk, without trailers.
//!
//! Connections start with prior knowledge, with ALPN `h2` under TLS, or switch from HTTP/1.1
//! (`Upgrade: h2c`: [`Http2Connection::upgraded`]). Not parsed: server push (its header blocks
//! are decoded only to keep HPACK in step).

pub mod hpack;
mod huffman;

use std::collections::VecDeque;

use crate::util::{lossy, parse_u64};
use crate::{End, Flow};

/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Streams tracked at once per connection; the oldest is given up (as incomplete) past it.
pub const MAX_STREAMS: usize = 256;
/// Bytes of one header block kept (HEADERS or PUSH_PROMISE and its CONTINUATIONs).
pub const MAX_HEADER_BLOCK: usize = 16 * 1024;
/// Bytes kept of each header value spans use.
pub const MAX_VALUE: usize = 2048;
/// Largest frame payload accepted when realigning (a peer may allow up to 2^24 - 1).
const MAX_PLAUSIBLE_FRAME: u32 = 1 << 20;

/// Frame types (RFC 9113 §6).
pub mod kind {
    /// DATA.
    pub const DATA: u8 = 0;
    /// HEADERS.
    pub const HEADERS: u8 = 1;
    /// PRIORITY.
    pub const PRIORITY: u8 = 2;
    /// RST_STREAM.
    pub const RST_STREAM: u8 = 3;
    /// SETTINGS.
    pub const SETTINGS: u8 = 4;
    /// PUSH_PROMISE.
    pub const PUSH_PROMISE: u8 = 5;
    /// PING.
    pub const PING: u8 = 6;
    /// GOAWAY.
    pub const GOAWAY: u8 = 7;
    /// WINDOW_UPDATE.
    pub const WINDOW_UPDATE: u8 = 8;
    /// CONTINUATION.
    pub const CONTINUATION: u8 = 9;
}

/// Frame flags (RFC 9113 §6).
pub mod flag {
    /// END_STREAM (DATA, HEADERS).
    pub const END_STREAM: u8 = 0x1;
    /// END_HEADERS (HEADERS, PUSH_PROMISE, CONTINUATION).
    pub const END_HEADERS: u8 = 0x4;
    /// PADDED (DATA, HEADERS, PUSH_PROMISE).
    pub const PADDED: u8 = 0x8;
    /// PRIORITY (HEADERS).
    pub const PRIORITY: u8 = 0x20;
}

use flag::{END_HEADERS, END_STREAM, PADDED, PRIORITY as PRIORITY_FLAG};
use kind::{
    CONTINUATION, DATA, GOAWAY, HEADERS, PING, PRIORITY, PUSH_PROMISE, RST_STREAM, SETTINGS,
    WINDOW_UPDATE,
};

/// The bytes of one frame: its 9-byte header, then `payload` (its length must fit in 24 bits).
/// The parser never writes; tests, benchmarks and fixtures build traffic with it.
pub fn frame_bytes(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len())
        .unwrap_or(u32::MAX)
        .min(0xff_ffff);
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&len.to_be_bytes()[1..]);
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// RST_STREAM/GOAWAY code a GOAWAY's refused streams end with.
pub const REFUSED_STREAM: u32 = 0x7;

/// The header fields spans use, from one header block.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    /// `:method`.
    pub method: Option<String>,
    /// `:path`.
    pub path: Option<String>,
    /// `:authority`.
    pub authority: Option<String>,
    /// `:scheme`.
    pub scheme: Option<String>,
    /// `:status`.
    pub status: Option<u16>,
    /// `content-type`.
    pub content_type: Option<String>,
    /// `user-agent`.
    pub user_agent: Option<String>,
    /// `traceparent`.
    pub traceparent: Option<String>,
    /// `tracestate`.
    pub tracestate: Option<String>,
    /// `grpc-status`.
    pub grpc_status: Option<u32>,
    /// `grpc-message` (percent-encoded, as sent).
    pub grpc_message: Option<String>,
    /// `grpc-timeout`, in nanoseconds: the call's deadline as the client sent it.
    pub grpc_timeout_ns: Option<u64>,
    /// Fields that referred to HPACK entries not known (the connection was picked up mid-way
    /// or lost a header block): any of the fields above may be among them.
    pub unknown: u32,
    /// The block was cut short (capture) or malformed: fields after that point are missing.
    pub broken: bool,
}

impl Headers {
    /// Whether this is gRPC: `content-type` is `application/grpc` or one of its `+format`s.
    pub fn is_grpc(&self) -> bool {
        self.content_type.as_deref().is_some_and(|c| {
            c.strip_prefix("application/grpc")
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['+', ';']))
        })
    }

    fn set(&mut self, name: &[u8], value: &[u8]) {
        let text = || {
            lossy(
                value.get(..MAX_VALUE).unwrap_or(value),
                value.len() > MAX_VALUE,
            )
        };
        match name {
            b":method" => self.method = Some(text()),
            b":path" => self.path = Some(text()),
            b":authority" => self.authority = Some(text()),
            b":scheme" => self.scheme = Some(text()),
            b":status" => self.status = parse_u64(value).and_then(|s| u16::try_from(s).ok()),
            b"content-type" => self.content_type = Some(text()),
            b"user-agent" => self.user_agent = Some(text()),
            b"traceparent" => self.traceparent = Some(text()),
            b"tracestate" => self.tracestate = Some(text()),
            b"grpc-status" => {
                self.grpc_status = parse_u64(value).and_then(|s| u32::try_from(s).ok())
            }
            b"grpc-message" => self.grpc_message = Some(text()),
            b"grpc-timeout" => self.grpc_timeout_ns = grpc_timeout(value),
            _ => {}
        }
    }
}

/// What the parser reports, in wire order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The client opened `stream` with these request headers.
    Request {
        /// The stream id.
        stream: u32,
        /// Its request headers.
        headers: Headers,
        /// The request had no body (END_STREAM on its HEADERS).
        end_stream: bool,
    },
    /// The server's response headers (the stream's first HEADERS that are not 1xx).
    Response {
        /// The stream id.
        stream: u32,
        /// Its response headers; a trailers-only gRPC response carries `grpc_status` here.
        headers: Headers,
    },
    /// The stream is over.
    End {
        /// The stream id.
        stream: u32,
        /// How it ended ([`End::Incomplete`]: the connection closed, or too many streams).
        end: End,
        /// `grpc-status` of the trailers (or of a trailers-only response).
        grpc_status: Option<u32>,
        /// A RST_STREAM's error code (or [`REFUSED_STREAM`] for a GOAWAY's refused streams),
        /// and who sent it.
        reset: Option<(Flow, u32)>,
        /// The response ended with trailers (HEADERS after the response's own): gRPC's way,
        /// rare elsewhere, so a hint when the content type is not known.
        trailers: bool,
        /// Fields of the trailers that referred to unknown HPACK entries (see
        /// [`Headers::unknown`]).
        unknown: u32,
    },
}

/// A frame header (RFC 9113 §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Payload length.
    pub len: u32,
    /// Frame type.
    pub kind: u8,
    /// Flags.
    pub flags: u8,
    /// Stream id (reserved bit cleared).
    pub stream: u32,
}

impl FrameHeader {
    /// Reads the 9-byte header at the start of `b`.
    pub fn parse(b: &[u8]) -> Option<FrameHeader> {
        let h = b.get(..9)?;
        let word = |i: usize| -> Option<u32> {
            Some(u32::from_be_bytes([
                *h.get(i)?,
                *h.get(i + 1)?,
                *h.get(i + 2)?,
                *h.get(i + 3)?,
            ]))
        };
        Some(FrameHeader {
            len: word(0)? >> 8,
            kind: *h.get(3)?,
            flags: *h.get(4)?,
            stream: word(5)?,
        })
    }
}

/// Whether `h` is a frame a conforming peer could send: a known type, no reserved bit, no
/// undefined flag, the stream (zero or not) and the size its type requires, and a payload below
/// [`MAX_PLAUSIBLE_FRAME`]. Used to realign after lost framing and to recognize connections
/// picked up mid-way; CONTINUATION is refused (its HEADERS would be missing).
pub fn plausible_frame(h: &FrameHeader) -> bool {
    if h.stream & 0x8000_0000 != 0 || h.len > MAX_PLAUSIBLE_FRAME {
        return false;
    }
    let on_stream = h.stream != 0;
    let (flags, stream_ok, len_ok) = match h.kind {
        DATA => (END_STREAM | PADDED, on_stream, true),
        HEADERS => (
            END_STREAM | END_HEADERS | PADDED | PRIORITY_FLAG,
            on_stream,
            true,
        ),
        PRIORITY => (0, on_stream, h.len == 5),
        RST_STREAM => (0, on_stream, h.len == 4),
        SETTINGS => (0x1, !on_stream, h.len.is_multiple_of(6)),
        PUSH_PROMISE => (END_HEADERS | PADDED, on_stream, h.len >= 4),
        PING => (0x1, !on_stream, h.len == 8),
        GOAWAY => (0, !on_stream, h.len >= 8),
        WINDOW_UPDATE => (0, true, h.len == 4),
        _ => return false,
    };
    h.flags & !flags == 0 && stream_ok && len_ok
}

/// The frame whose payload is being read.
#[derive(Debug)]
struct Frame {
    head: FrameHeader,
    /// Payload bytes not yet seen.
    left: u32,
    /// The payload, for frames whose payload matters (capped).
    payload: Vec<u8>,
    /// Payload bytes fell outside the capture.
    missing: bool,
}

impl Frame {
    fn keeps_payload(&self) -> bool {
        matches!(
            self.head.kind,
            HEADERS | CONTINUATION | PUSH_PROMISE | RST_STREAM | GOAWAY
        )
    }
}

/// A header block spread over HEADERS (or PUSH_PROMISE) and CONTINUATION frames.
#[derive(Debug)]
struct Block {
    stream: u32,
    end_stream: bool,
    /// A PUSH_PROMISE's block: decoded only to keep HPACK in step.
    promise: bool,
    bytes: Vec<u8>,
    missing: bool,
}

/// One direction of the connection.
#[derive(Debug, Default)]
struct Side {
    /// Bytes of the client preface still expected (client-to-server only; 0 once past it).
    preface: usize,
    /// A frame header split across chunks.
    head: Vec<u8>,
    frame: Option<Frame>,
    block: Option<Block>,
    /// Framing lost: waiting for a chunk that starts with a plausible frame.
    lost: bool,
    /// No byte seen yet.
    fresh: bool,
    decoder: hpack::Decoder,
}

#[derive(Debug, Clone, Copy)]
struct Stream {
    id: u32,
    /// The final response headers were seen.
    answered: bool,
    /// Trailers ended the response.
    trailers: bool,
    /// Unknown fields of the trailers.
    unknown: u32,
}

/// The parser of one HTTP/2 connection.
#[derive(Debug)]
pub struct Http2Connection {
    sides: [Side; 2],
    streams: VecDeque<Stream>,
    desyncs: u64,
    unknown_fields: u64,
}

impl Default for Http2Connection {
    fn default() -> Self {
        Self::new()
    }
}

fn index(flow: Flow) -> usize {
    match flow {
        Flow::ClientToServer => 0,
        Flow::ServerToClient => 1,
    }
}

impl Http2Connection {
    /// A connection seen from its start or picked up mid-way (the client preface is skipped
    /// when it is there).
    pub fn new() -> Self {
        let side = |preface| Side {
            preface,
            fresh: true,
            ..Side::default()
        };
        Self {
            sides: [side(PREFACE.len()), side(0)],
            streams: VecDeque::new(),
            desyncs: 0,
            unknown_fields: 0,
        }
    }

    /// A connection that switched from HTTP/1.1 (`Upgrade: h2c`): stream 1 is open, its request
    /// the HTTP/1.1 one that asked for the upgrade (no [`Event::Request`] for it); the server's
    /// answer on stream 1 and its end come as for any stream. The client's preface follows as
    /// on a new connection.
    pub fn upgraded() -> Self {
        let mut c = Self::new();
        c.streams.push_back(Stream {
            id: 1,
            answered: false,
            trailers: false,
            unknown: 0,
        });
        c
    }

    /// Times framing was lost.
    pub fn desyncs(&self) -> u64 {
        self.desyncs
    }

    /// Header fields that referred to unknown HPACK entries.
    pub fn unknown_fields(&self) -> u64 {
        self.unknown_fields
    }

    /// Heap bytes held.
    pub fn buffered_bytes(&self) -> usize {
        let side = |s: &Side| {
            s.decoder.buffered_bytes()
                + s.head.capacity()
                + s.frame.as_ref().map_or(0, |f| f.payload.capacity())
                + s.block.as_ref().map_or(0, |b| b.bytes.capacity())
        };
        self.sides.iter().map(side).sum::<usize>()
            + self.streams.capacity() * std::mem::size_of::<Stream>()
    }

    /// Streams waiting for their end.
    pub fn open_streams(&self) -> usize {
        self.streams.len()
    }

    /// Parses one syscall's bytes: `captured` is what was captured of the `total_len` bytes it
    /// moved on `flow`.
    pub fn feed(&mut self, flow: Flow, captured: &[u8], total_len: u64, out: &mut Vec<Event>) {
        let i = index(flow);
        let mut uncaptured = total_len.saturating_sub(captured.len() as u64);
        let mut data = captured;
        if let Some(side) = self.sides.get_mut(i) {
            if side.fresh {
                side.fresh = false;
                // The preface is there only if the connection was seen from its start.
                if side.preface > 0 && !PREFACE.starts_with(data.get(..24).unwrap_or(data)) {
                    side.preface = 0;
                }
            }
            if side.preface > 0 {
                let n = side.preface.min(data.len());
                side.preface -= n;
                data = data.get(n..).unwrap_or_default();
            }
            if side.lost {
                let realigned = FrameHeader::parse(data).is_some_and(|h| {
                    plausible_frame(&h) && u64::from(h.len) + 9 <= data.len() as u64 + uncaptured
                });
                if !realigned {
                    return;
                }
                side.lost = false;
            }
        }
        let mut last_data_stream = None;
        while !data.is_empty() {
            let used = self.step(i, data, &mut last_data_stream, out);
            data = data.get(used.max(1)..).unwrap_or_default();
        }
        if uncaptured == 0 {
            return;
        }
        let mut finished = None;
        if let Some(side) = self.sides.get_mut(i) {
            if let Some(frame) = &mut side.frame {
                let n = uncaptured.min(u64::from(frame.left));
                frame.left -= n as u32;
                frame.missing = true;
                uncaptured -= n;
                if frame.left == 0 {
                    finished = side.frame.take();
                }
            } else if side.preface > 0 {
                // Never: a preface is always captured whole (24 bytes).
                side.preface = 0;
            }
        }
        if let Some(frame) = finished {
            if frame.head.kind == DATA {
                last_data_stream = Some(frame.head.stream);
            }
            self.finish(i, frame, out);
        }
        if uncaptured > 0 {
            self.lose(i, flow, last_data_stream, out);
        }
    }

    /// Framing is lost on side `i`: frames followed uncaptured. A response whose DATA was cut
    /// there is taken to end in this chunk.
    fn lose(&mut self, i: usize, flow: Flow, cut_data: Option<u32>, out: &mut Vec<Event>) {
        self.desyncs += 1;
        if let Some(side) = self.sides.get_mut(i) {
            side.lost = true;
            side.head.clear();
            side.frame = None;
            side.block = None;
            side.decoder.invalidate();
        }
        if flow == Flow::ServerToClient
            && let Some(stream) = cut_data
            && self.streams.iter().any(|s| s.id == stream && s.answered)
        {
            self.end_stream(stream, End::Complete, None, None, out);
        }
    }

    /// Consumes bytes of `data` (a frame header or payload); returns how many.
    fn step(
        &mut self,
        i: usize,
        data: &[u8],
        last_data_stream: &mut Option<u32>,
        out: &mut Vec<Event>,
    ) -> usize {
        let Some(side) = self.sides.get_mut(i) else {
            return data.len();
        };
        let Some(frame) = &mut side.frame else {
            let need = 9 - side.head.len();
            let n = need.min(data.len());
            side.head
                .extend_from_slice(data.get(..n).unwrap_or_default());
            if side.head.len() < 9 {
                return n;
            }
            let head = FrameHeader::parse(&side.head);
            side.head.clear();
            let Some(head) = head else { return n };
            let frame = Frame {
                head,
                left: head.len,
                payload: Vec::new(),
                missing: false,
            };
            if head.len == 0 {
                if head.kind == DATA {
                    *last_data_stream = Some(head.stream);
                }
                self.finish(i, frame, out);
            } else {
                side.frame = Some(frame);
            }
            return n;
        };
        let n = (frame.left as usize).min(data.len());
        // After a gap, later bytes would not follow on from the kept ones.
        if frame.keeps_payload() && !frame.missing {
            let cap = if matches!(frame.head.kind, RST_STREAM | GOAWAY) {
                8
            } else {
                MAX_HEADER_BLOCK
            };
            let room = cap.saturating_sub(frame.payload.len()).min(n);
            frame
                .payload
                .extend_from_slice(data.get(..room).unwrap_or_default());
            if room < n && frame.head.kind != GOAWAY && frame.head.kind != RST_STREAM {
                frame.missing = true;
            }
        }
        frame.left -= n as u32;
        if frame.left == 0
            && let Some(frame) = side.frame.take()
        {
            if frame.head.kind == DATA {
                *last_data_stream = Some(frame.head.stream);
            }
            self.finish(i, frame, out);
        }
        n
    }

    /// A whole frame (payload possibly partly uncaptured) was read on side `i`.
    fn finish(&mut self, i: usize, frame: Frame, out: &mut Vec<Event>) {
        let flow = if i == 0 {
            Flow::ClientToServer
        } else {
            Flow::ServerToClient
        };
        let head = frame.head;
        let Some(side) = self.sides.get_mut(i) else {
            return;
        };
        if side.block.is_some() && head.kind != CONTINUATION {
            // A header block interrupted: a protocol error, or a frame header misread.
            side.block = None;
            side.decoder.invalidate();
            self.desyncs += 1;
        }
        match head.kind {
            DATA if head.flags & END_STREAM != 0 && flow == Flow::ServerToClient => {
                self.end_stream(head.stream, End::Complete, None, None, out);
            }
            HEADERS | PUSH_PROMISE => {
                let p = &frame.payload;
                let mut start = 0usize;
                let pad = if head.flags & PADDED != 0 {
                    start = 1;
                    usize::from(p.first().copied().unwrap_or(0))
                } else {
                    0
                };
                if head.kind == HEADERS && head.flags & PRIORITY_FLAG != 0 {
                    start += 5;
                }
                if head.kind == PUSH_PROMISE {
                    start += 4;
                }
                let end = (head.len as usize).saturating_sub(pad).min(p.len());
                let bytes = p.get(start..end).unwrap_or_default().to_vec();
                let cut = frame.missing && end < (head.len as usize).saturating_sub(pad);
                let block = Block {
                    stream: head.stream,
                    end_stream: head.kind == HEADERS && head.flags & END_STREAM != 0,
                    promise: head.kind == PUSH_PROMISE,
                    bytes,
                    missing: cut,
                };
                if head.flags & END_HEADERS != 0 {
                    self.headers(flow, block, out);
                } else if let Some(side) = self.sides.get_mut(i) {
                    side.block = Some(block);
                }
            }
            CONTINUATION => {
                let Some(mut block) = side.block.take() else {
                    // Its HEADERS were not seen (picked up mid-way, or lost).
                    side.decoder.invalidate();
                    return;
                };
                // After a gap, later bytes would not follow on from the kept ones.
                let room = if block.missing {
                    0
                } else {
                    MAX_HEADER_BLOCK.saturating_sub(block.bytes.len())
                };
                block.missing |= frame.missing || frame.payload.len() > room;
                block.bytes.extend_from_slice(
                    frame
                        .payload
                        .get(..room.min(frame.payload.len()))
                        .unwrap_or_default(),
                );
                if head.flags & END_HEADERS != 0 {
                    self.headers(flow, block, out);
                } else if let Some(side) = self.sides.get_mut(i) {
                    side.block = Some(block);
                }
            }
            RST_STREAM => {
                let code = be_u32(&frame.payload, 0);
                self.end_stream(
                    head.stream,
                    End::Complete,
                    None,
                    code.map(|c| (flow, c)),
                    out,
                );
            }
            GOAWAY => {
                if flow == Flow::ServerToClient
                    && let Some(last) = be_u32(&frame.payload, 0)
                {
                    let last = last & 0x7fff_ffff;
                    let refused: Vec<u32> = self
                        .streams
                        .iter()
                        .filter(|s| s.id > last)
                        .map(|s| s.id)
                        .collect();
                    for id in refused {
                        let reset = Some((flow, REFUSED_STREAM));
                        self.end_stream(id, End::Complete, None, reset, out);
                    }
                }
            }
            // DATA without END_STREAM, PRIORITY, SETTINGS, PING, WINDOW_UPDATE, extensions.
            _ => {}
        }
    }

    /// A complete header block on `flow`.
    fn headers(&mut self, flow: Flow, block: Block, out: &mut Vec<Event>) {
        let Some(side) = self.sides.get_mut(index(flow)) else {
            return;
        };
        let mut h = Headers::default();
        let outcome = side.decoder.decode(&block.bytes, block.missing, |f| {
            if let (hpack::Value::Known(n), hpack::Value::Known(v)) = (&f.name, &f.value) {
                h.set(n, v);
            }
        });
        h.unknown = outcome.unknown;
        h.broken = outcome.broken;
        self.unknown_fields += u64::from(outcome.unknown);
        if block.promise {
            return;
        }
        let stream = block.stream;
        let tracked = self.streams.iter().position(|s| s.id == stream);
        match (flow, tracked) {
            (Flow::ClientToServer, None) => {
                if stream.is_multiple_of(2) {
                    return;
                }
                if self.streams.len() >= MAX_STREAMS
                    && let Some(old) = self.streams.front().map(|s| s.id)
                {
                    self.end_stream(old, End::Incomplete, None, None, out);
                }
                self.streams.push_back(Stream {
                    id: stream,
                    answered: false,
                    trailers: false,
                    unknown: 0,
                });
                out.push(Event::Request {
                    stream,
                    headers: h,
                    end_stream: block.end_stream,
                });
            }
            // Request trailers.
            (Flow::ClientToServer, Some(_)) => {}
            // A stream whose request was not seen.
            (Flow::ServerToClient, None) => {}
            (Flow::ServerToClient, Some(at)) => {
                let answered = self.streams.get(at).is_some_and(|s| s.answered);
                if !answered {
                    if h.status.is_some_and(|s| (100..200).contains(&s)) && !block.end_stream {
                        return;
                    }
                    if let Some(s) = self.streams.get_mut(at) {
                        s.answered = true;
                    }
                    let grpc_status = h.grpc_status;
                    out.push(Event::Response { stream, headers: h });
                    if block.end_stream {
                        self.end_stream(stream, End::Complete, grpc_status, None, out);
                    }
                } else if block.end_stream {
                    if let Some(s) = self.streams.get_mut(at) {
                        s.trailers = true;
                        s.unknown = h.unknown;
                    }
                    self.end_stream(stream, End::Complete, h.grpc_status, None, out);
                }
            }
        }
    }

    fn end_stream(
        &mut self,
        stream: u32,
        end: End,
        grpc_status: Option<u32>,
        reset: Option<(Flow, u32)>,
        out: &mut Vec<Event>,
    ) {
        let Some(at) = self.streams.iter().position(|s| s.id == stream) else {
            return;
        };
        let (trailers, unknown) = self
            .streams
            .remove(at)
            .map_or((false, 0), |s| (s.trailers, s.unknown));
        out.push(Event::End {
            stream,
            end,
            grpc_status,
            reset,
            trailers,
            unknown,
        });
    }

    /// Reports that bytes of unknown count were lost on `flow` (e.g. ring buffer overflow).
    pub fn gap(&mut self, flow: Flow) {
        let mut none = Vec::new();
        self.lose(index(flow), flow, None, &mut none);
    }

    /// The connection closed: every stream still open ends as incomplete.
    pub fn close(&mut self, out: &mut Vec<Event>) {
        for s in std::mem::take(&mut self.streams) {
            out.push(Event::End {
                stream: s.id,
                end: End::Incomplete,
                grpc_status: None,
                reset: None,
                trailers: false,
                unknown: 0,
            });
        }
    }
}

/// A `grpc-timeout` value: at most 8 digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`).
fn grpc_timeout(value: &[u8]) -> Option<u64> {
    let (unit, digits) = value.split_last()?;
    if digits.len() > 8 {
        return None;
    }
    let n = parse_u64(digits)?;
    let scale: u64 = match unit {
        b'H' => 3_600_000_000_000,
        b'M' => 60_000_000_000,
        b'S' => 1_000_000_000,
        b'm' => 1_000_000,
        b'u' => 1_000,
        b'n' => 1,
        _ => return None,
    };
    n.checked_mul(scale)
}

fn be_u32(b: &[u8], at: usize) -> Option<u32> {
    let w = b.get(at..at + 4)?;
    Some(u32::from_be_bytes([
        *w.first()?,
        *w.get(1)?,
        *w.get(2)?,
        *w.get(3)?,
    ]))
}

/// Whether `b`, the first bytes of a chunk of `total` bytes (`None`: not known), look like
/// HTTP/2 frames of a connection picked up mid-way, and which way: one or more plausible frames
/// back to back that fill the chunk exactly (or run past the capture), one of them a HEADERS frame whose first
/// field is a pseudo-header from the static table (`:method`, `:path`, `:scheme`,
/// `:authority` for a request; `:status` for a response).
pub fn midway_flow(b: &[u8], total: Option<u64>) -> Option<Flow> {
    let mut pos = 0usize;
    let mut found = None;
    loop {
        let rest = b.get(pos..)?;
        if rest.is_empty() {
            return if total.is_none_or(|t| pos as u64 == t) {
                found
            } else {
                None
            };
        }
        let h = FrameHeader::parse(rest)?;
        if !plausible_frame(&h) {
            return None;
        }
        if h.kind == HEADERS && found.is_none() {
            let mut at = 9;
            if h.flags & PADDED != 0 {
                at += 1;
            }
            if h.flags & PRIORITY_FLAG != 0 {
                at += 5;
            }
            let end = (9 + h.len as usize).min(rest.len());
            found = block_flow(rest.get(at..end).unwrap_or_default());
        }
        let next = pos as u64 + 9 + u64::from(h.len);
        if next > b.len() as u64 {
            return total.is_none_or(|t| next <= t).then_some(found).flatten();
        }
        pos = next as usize;
    }
}

/// The flow a header block belongs to, from its first pseudo-header that refers to the static
/// table (indexed, or a literal with its name): `:method`, `:path`, `:scheme`, `:authority` for
/// a request, `:status` for a response. Fields referring to the dynamic table come first in
/// some encoders (gRPC's C core puts `:path` there), so the first few fields are read, their
/// strings skipped, without a table.
fn block_flow(block: &[u8]) -> Option<Flow> {
    let mut pos = 0;
    for _ in 0..16 {
        let b = *block.get(pos)?;
        let (prefix, literal) = match b {
            _ if b & 0x80 != 0 => (7, false),
            _ if b & 0xc0 == 0x40 => (6, true),
            _ if b & 0xe0 == 0x20 => {
                pos = hpack::integer(block, pos, 5).ok()?.1;
                continue;
            }
            _ => (4, true),
        };
        let (index, mut next) = hpack::integer(block, pos, prefix).ok()?;
        match index {
            1..=7 => return Some(Flow::ClientToServer),
            8..=14 => return Some(Flow::ServerToClient),
            _ => {}
        }
        if literal {
            let strings = if index == 0 { 2 } else { 1 };
            for _ in 0..strings {
                let (len, start) = hpack::integer(block, next, 7).ok()?;
                next = start.checked_add(usize::try_from(len).ok()?)?;
            }
        }
        pos = next;
    }
    None
}

#[cfg(test)]
mod tests;
