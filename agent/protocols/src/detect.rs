//! Protocol detection from the first bytes seen on a connection.
//!
//! Call [`detect`] (or [`classify`], which also tells which way the bytes were going) with the
//! first captured chunk of a connection, in either direction. `None` means "not recognized (yet)":
//! the caller may retry with the next chunk, and should give up after a few.
//!
//! Recognized (each check is strict, to keep false positives rare):
//! - TLS: a handshake record (`16 03 0x`), ClientHello or ServerHello → [`Protocol::Tls`];
//! - HTTP/2: the client connection preface `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`, or (role known) a
//!   server's first SETTINGS frame, or (a connection picked up mid-way) whole plausible frames
//!   with a HEADERS frame that starts with a pseudo-header ([`crate::http2::midway_flow`]);
//! - HTTP/1.x: a request line with a well-known method, or an `HTTP/1.x NNN` status line;
//! - MySQL: a server greeting (protocol 10, NUL-terminated version string) or a greeting-time
//!   ERR packet; a client command packet (sequence 0, known command, plausible length and text);
//!   a client handshake response (sequence 1, 23-byte zero filler);
//! - Redis: a client array of bulk strings whose first element is a command name, a few inline
//!   commands (`PING`, `AUTH`, `HELLO`, …), or a well-formed RESP2/RESP3 value from the server.

use crate::http1::{Check, check_request_line, check_status_line};
use crate::util::{find_byte, le_u24, le_u32, parse_i64};
use crate::{Direction, Flow, Role};

/// A protocol Loupe can recognize.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// HTTP/1.0 or HTTP/1.1 ([`crate::http1`]).
    Http1,
    /// HTTP/2, gRPC included ([`crate::http2`]).
    Http2,
    /// MySQL or MariaDB ([`crate::mysql`]).
    MySql,
    /// Redis RESP2/RESP3 ([`crate::redis`]).
    Redis,
    /// TLS: encrypted, produces no spans.
    Tls,
}

/// A detection result: the protocol and which way the inspected bytes travelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Detection {
    /// The protocol.
    pub protocol: Protocol,
    /// The flow of the inspected bytes; with [`Direction`], it gives the process's role
    /// ([`Flow::role_of_process`]) when that was unknown.
    pub flow: Flow,
}

/// The protocol of a connection from its first bytes, or `None`.
pub fn detect(first_bytes: &[u8], direction: Direction, role: Role) -> Option<Protocol> {
    classify(first_bytes, direction, role).map(|d| d.protocol)
}

/// Like [`detect`], also inferring the flow of the bytes (useful when `role` is unknown).
pub fn classify(first_bytes: &[u8], direction: Direction, role: Role) -> Option<Detection> {
    let b = first_bytes;
    let known = Flow::from_direction(direction, role);
    let may = |f: Flow| known.is_none_or(|k| k == f);
    let hit = |protocol, flow| Some(Detection { protocol, flow });
    use Flow::{ClientToServer as C2S, ServerToClient as S2C};

    if let Some(flow) = tls(b) {
        return hit(Protocol::Tls, known.unwrap_or(flow));
    }
    if may(C2S) && h2_preface(b) {
        return hit(Protocol::Http2, C2S);
    }
    if may(C2S) && http1_request(b) {
        return hit(Protocol::Http1, C2S);
    }
    if may(S2C) && check_status_line(b) == Check::Yes {
        return hit(Protocol::Http1, S2C);
    }
    if may(S2C) && mysql_greeting(b) {
        return hit(Protocol::MySql, S2C);
    }
    if may(C2S) && (mysql_command(b) || mysql_handshake_response(b)) {
        return hit(Protocol::MySql, C2S);
    }
    if may(C2S) && redis_command(b) {
        return hit(Protocol::Redis, C2S);
    }
    if known == Some(S2C) && h2_settings(b) {
        return hit(Protocol::Http2, S2C);
    }
    if may(S2C) && redis_reply(b) {
        return hit(Protocol::Redis, S2C);
    }
    // Last, and strict: HTTP/2 frames of a connection picked up after its preface.
    if let Some(flow) = crate::http2::midway_flow(b, None)
        && may(flow)
    {
        return hit(Protocol::Http2, flow);
    }
    None
}

/// A TLS handshake record: `(flow implied by the handshake type)`.
fn tls(b: &[u8]) -> Option<Flow> {
    let [0x16, 0x03, minor, hi, lo, rest @ ..] = b else {
        return None;
    };
    let len = u16::from_be_bytes([*hi, *lo]);
    if *minor > 0x04 || !(4..=16384 + 2048).contains(&len) {
        return None;
    }
    match rest.first() {
        Some(0x01) => Some(Flow::ClientToServer),
        Some(0x02) => Some(Flow::ServerToClient),
        _ => None,
    }
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn h2_preface(b: &[u8]) -> bool {
    let n = b.len().min(H2_PREFACE.len());
    n >= 14 && b.get(..n) == H2_PREFACE.get(..n)
}

/// A server's first HTTP/2 frame: SETTINGS on stream 0, a whole number of 6-byte settings.
fn h2_settings(b: &[u8]) -> bool {
    let len = u32::from_be_bytes([
        0,
        b.first().copied().unwrap_or(0xff),
        b.get(1).copied().unwrap_or(0),
        b.get(2).copied().unwrap_or(0),
    ]);
    b.len() >= 9
        && len.is_multiple_of(6)
        && len <= 16 * 6
        && b.get(3) == Some(&0x04)
        && b.get(4) == Some(&0x00)
        && b.get(5..9) == Some(&[0, 0, 0, 0][..])
}

fn http1_request(b: &[u8]) -> bool {
    match check_request_line(b, true) {
        Check::Yes => true,
        // A long target cut by the capture: the method and the start of the target suffice.
        Check::NeedMore => {
            b.iter()
                .position(|&c| c == b' ')
                .and_then(|sp| b.get(sp + 1))
                .is_some_and(|&c| c == b'/')
                && b.len() >= 32
        }
        Check::No => false,
    }
}

fn mysql_greeting(b: &[u8]) -> bool {
    let Some(len) = le_u24(b, 0) else {
        return false;
    };
    if b.get(3) != Some(&0) || !(10..=1024).contains(&len) {
        return false;
    }
    let payload = b.get(4..).unwrap_or_default();
    if crate::mysql::parse_greeting(payload).is_some() {
        return true;
    }
    // ERR instead of a greeting ("Host '…' is not allowed to connect", "Too many connections").
    payload.first() == Some(&0xff)
        && crate::util::le_u16(payload, 1).is_some_and(|code| (1000..=2100).contains(&code))
        && payload.get(3..).is_some_and(|m| {
            !m.is_empty()
                && m.iter()
                    .take(32)
                    .all(|c| c.is_ascii_graphic() || *c == b' ')
        })
}

fn is_sql_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || matches!(c, b' ' | b'\t' | b'\r' | b'\n' | b'(' | b'/' | b'-' | b'#')
}

fn mysql_command(b: &[u8]) -> bool {
    let Some(len) = le_u24(b, 0) else {
        return false;
    };
    if b.get(3) != Some(&0) || len == 0 {
        return false;
    }
    let payload_len = b.len().saturating_sub(4);
    // A command is written alone: the captured bytes are the packet, or a prefix of it.
    let whole = payload_len as u64 == u64::from(len);
    let prefix = (payload_len as u64) < u64::from(len) && b.len() >= 64;
    if !whole && !prefix {
        return false;
    }
    let Some(&cmd) = b.get(4) else { return false };
    let arg = b.get(5..).unwrap_or_default();
    match cmd {
        0x01 | 0x0e | 0x09 | 0x1f => len == 1,
        0x03 | 0x16 => match arg {
            [0x00, 0x01, c, ..] => is_sql_start(*c), // query attributes, none set
            [c, ..] => is_sql_start(*c),
            [] => false,
        },
        0x02 => !arg.is_empty() && arg.iter().all(|c| c.is_ascii_graphic()),
        0x17 => len >= 10 && arg.get(4).is_some_and(|&f| f <= 0x08),
        0x19 | 0x1a => len == 5,
        _ => false,
    }
}

fn mysql_handshake_response(b: &[u8]) -> bool {
    let Some(len) = le_u24(b, 0) else {
        return false;
    };
    b.get(3) == Some(&1)
        && (32..=4096).contains(&len)
        && le_u32(b, 4).is_some_and(|caps| caps & 0x200 != 0)
        && b.get(13..36).is_some_and(|f| f.iter().all(|&c| c == 0))
}

/// `*N\r\n$M\r\nNAME` with a plausible command name.
fn redis_command(b: &[u8]) -> bool {
    if b.first() != Some(&b'*') {
        return redis_inline(b);
    }
    let Some(nl) = find_byte(b, 0, b'\n') else {
        return false;
    };
    let count = b.get(1..nl.saturating_sub(1)).and_then(parse_i64);
    if !count.is_some_and(|n| (1..=1_048_576).contains(&n))
        || b.get(nl.saturating_sub(1)) != Some(&b'\r')
    {
        return false;
    }
    let rest = b.get(nl + 1..).unwrap_or_default();
    if rest.first() != Some(&b'$') {
        return false;
    }
    let Some(nl2) = find_byte(rest, 0, b'\n') else {
        return false;
    };
    let name_len = rest.get(1..nl2.saturating_sub(1)).and_then(parse_i64);
    if !name_len.is_some_and(|n| (1..=32).contains(&n)) {
        return false;
    }
    let name = rest.get(nl2 + 1..).unwrap_or_default();
    let shown = name
        .len()
        .min(usize::try_from(name_len.unwrap_or(0)).unwrap_or(0));
    shown > 0
        && name
            .iter()
            .take(shown)
            .all(|c| c.is_ascii_alphabetic() || *c == b'.' || *c == b'_' || *c == b'|')
}

fn redis_inline(b: &[u8]) -> bool {
    const INLINE: &[&[u8]] = &[
        b"PING", b"AUTH", b"HELLO", b"SELECT", b"INFO", b"ECHO", b"QUIT",
    ];
    let word_end = b
        .iter()
        .position(|&c| c == b' ' || c == b'\r')
        .unwrap_or(b.len());
    let word = b.get(..word_end).unwrap_or_default();
    // Exact uppercase only: lowercase words are too common in other text protocols.
    INLINE.contains(&word) && find_byte(b, 0, b'\n').is_some()
}

/// A well-formed first RESP value line from a server.
fn redis_reply(b: &[u8]) -> bool {
    let Some(nl) = find_byte(b, 0, b'\n') else {
        return false;
    };
    if !(2..=512).contains(&nl) || b.get(nl - 1) != Some(&b'\r') {
        return false;
    }
    let Some((&ty, line)) = b.get(..nl - 1).and_then(|l| l.split_first()) else {
        return false;
    };
    let number = |l: &[u8]| parse_i64(l).is_some();
    match ty {
        b'+' => !line.is_empty() && line.iter().all(|c| c.is_ascii_graphic() || *c == b' '),
        b'-' => line.iter().take_while(|c| c.is_ascii_uppercase()).count() >= 2,
        b':' => number(line),
        b'(' => {
            let digits = line.strip_prefix(b"-").unwrap_or(line);
            !digits.is_empty() && digits.iter().all(u8::is_ascii_digit)
        }
        b'$' | b'*' => line == b"-1" || parse_i64(line).is_some_and(|n| n >= 0),
        b'%' | b'~' | b'>' | b'|' | b'!' | b'=' => parse_i64(line).is_some_and(|n| n >= 0),
        b'_' => line.is_empty(),
        b'#' => line == b"t" || line == b"f",
        b',' => {
            !line.is_empty()
                && line
                    .iter()
                    .all(|c| c.is_ascii_digit() || b"+-.eEinfa".contains(c))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Direction::{Egress, Ingress};
    use Protocol::*;
    use Role::{Client, Server};

    #[test]
    fn http1() {
        let req = b"GET /index.html HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(detect(req, Egress, Client), Some(Http1));
        assert_eq!(detect(req, Ingress, Server), Some(Http1));
        assert_eq!(detect(req, Ingress, Client), None);
        assert_eq!(
            detect(b"HTTP/1.1 404 Not Found\r\n", Ingress, Client),
            Some(Http1)
        );
        assert_eq!(detect(b"HTTP/1.0 200 OK\r\n", Egress, Server), Some(Http1));
        let long = format!("POST /{} HTTP/1.1", "a".repeat(600));
        assert_eq!(detect(&long.as_bytes()[..512], Egress, Client), Some(Http1));
        assert_eq!(detect(b"GE", Egress, Client), None);
        assert_eq!(detect(b"GOT / HTTP/1.1\r\n", Egress, Client), None);
        assert_eq!(
            classify(b"DELETE /x HTTP/1.1\r\n\r\n", Ingress, Role::Unknown),
            Some(Detection {
                protocol: Http1,
                flow: Flow::ClientToServer
            })
        );
        assert_eq!(Flow::ClientToServer.role_of_process(Ingress), Server);
    }

    #[test]
    fn http2() {
        assert_eq!(
            detect(
                b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04",
                Egress,
                Client
            ),
            Some(Http2)
        );
        assert_eq!(detect(b"PRI * HTTP/2.0", Ingress, Server), Some(Http2));
        assert_eq!(detect(b"PRI * HTTP/2.", Ingress, Server), None);
        let settings = b"\x00\x00\x12\x04\x00\x00\x00\x00\x00\x00\x03\x00\x00\x00\x64\x00\x04\x00\x10\x00\x00\x00\x06\x00\x00\x40\x00";
        assert_eq!(detect(settings, Ingress, Client), Some(Http2));
        assert_eq!(detect(settings, Ingress, Role::Unknown), None);
    }

    #[test]
    fn tls() {
        let client_hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03";
        assert_eq!(detect(client_hello, Egress, Client), Some(Tls));
        assert_eq!(
            classify(client_hello, Ingress, Role::Unknown),
            Some(Detection {
                protocol: Tls,
                flow: Flow::ClientToServer
            })
        );
        let server_hello = b"\x16\x03\x03\x00\x7a\x02\x00\x00\x76\x03\x03";
        assert_eq!(detect(server_hello, Ingress, Client), Some(Tls));
        assert_eq!(detect(b"\x16\x03\x05\x02\x00\x01", Egress, Client), None);
        assert_eq!(detect(b"\x16\x03\x01\x02\x00\x17", Egress, Client), None);
    }

    fn pkt(seq: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = (payload.len() as u32).to_le_bytes()[..3].to_vec();
        v.push(seq);
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn mysql() {
        let mut greeting = b"\x0a8.0.36\0".to_vec();
        greeting.extend_from_slice(&[0x0b, 0, 0, 0]);
        greeting.extend_from_slice(&[0x41; 8]);
        greeting.extend_from_slice(&[0, 0xff, 0xff, 0xff, 0x02, 0, 0xff, 0xdf, 21]);
        greeting.extend_from_slice(&[0; 10]);
        greeting.extend_from_slice(&[0x42; 13]);
        greeting.extend_from_slice(b"caching_sha2_password\0");
        let greeting = pkt(0, &greeting);
        assert_eq!(detect(&greeting, Ingress, Client), Some(MySql));
        assert_eq!(
            classify(&greeting, Egress, Role::Unknown),
            Some(Detection {
                protocol: MySql,
                flow: Flow::ServerToClient
            })
        );
        assert_eq!(detect(&greeting, Egress, Client), None);
        let denied = pkt(
            0,
            b"\xff\x6a\x04Host '10.1.2.3' is not allowed to connect to this MySQL server",
        );
        assert_eq!(detect(&denied, Ingress, Client), Some(MySql));
        assert_eq!(
            detect(&pkt(0, b"\x03SELECT 1"), Egress, Client),
            Some(MySql)
        );
        assert_eq!(
            detect(&pkt(0, b"\x03\x00\x01SELECT 1"), Egress, Client),
            Some(MySql)
        );
        assert_eq!(detect(&pkt(0, b"\x0e"), Ingress, Server), Some(MySql));
        assert_eq!(
            detect(&pkt(0, b"\x19\x01\x00\x00\x00"), Egress, Client),
            Some(MySql)
        );
        assert_eq!(
            detect(
                &pkt(0, b"\x17\x01\x00\x00\x00\x00\x01\x00\x00\x00"),
                Egress,
                Client
            ),
            Some(MySql)
        );
        assert_eq!(detect(&pkt(0, b"\x02shop"), Egress, Client), Some(MySql));
        assert_eq!(
            detect(&pkt(0, b"\x03\x00\x00garbage"), Egress, Client),
            None
        );
        assert_eq!(detect(&pkt(1, b"\x03SELECT 1"), Egress, Client), None);
        assert_eq!(detect(&pkt(0, b"\x0eextra"), Egress, Client), None);
        let mut hs = 0x000a_a205u32.to_le_bytes().to_vec();
        hs.extend_from_slice(&[0, 0, 0, 1, 0x2d]);
        hs.extend_from_slice(&[0; 23]);
        hs.extend_from_slice(b"root\0");
        assert_eq!(detect(&pkt(1, &hs), Egress, Client), Some(MySql));
    }

    #[test]
    fn redis() {
        assert_eq!(
            detect(b"*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n", Egress, Client),
            Some(Redis)
        );
        assert_eq!(detect(b"*1\r\n$4\r\nPI", Egress, Client), Some(Redis));
        assert_eq!(
            detect(b"*3\r\n$8\r\nJSON.GET\r\n", Egress, Client),
            Some(Redis)
        );
        assert_eq!(detect(b"PING\r\n", Egress, Client), Some(Redis));
        assert_eq!(detect(b"AUTH secret\r\n", Egress, Client), Some(Redis));
        assert_eq!(detect(b"*2\r\n$3\r\n123\r\n", Egress, Client), None);
        assert_eq!(detect(b"*0\r\n", Egress, Client), None);
        for reply in [
            &b"+OK\r\n"[..],
            b"-ERR unknown command\r\n",
            b"-WRONGTYPE Operation\r\n",
            b":1000\r\n",
            b"$5\r\nhello\r\n",
            b"$-1\r\n",
            b"*2\r\n$1\r\na\r\n",
            b"_\r\n",
            b"#t\r\n",
            b",3.14\r\n",
            b"(12345678901234567890\r\n",
            b"%1\r\n+a\r\n:1\r\n",
            b"~0\r\n",
            b">2\r\n",
            b"|1\r\n",
            b"=15\r\ntxt:Some string\r\n",
            b"!21\r\nSYNTAX invalid syntax\r\n",
        ] {
            assert_eq!(
                detect(reply, Ingress, Client),
                Some(Redis),
                "{}",
                String::from_utf8_lossy(reply)
            );
        }
        assert_eq!(detect(b"+OK", Ingress, Client), None);
        assert_eq!(detect(b":12a\r\n", Ingress, Client), None);
        assert_eq!(detect(b"#x\r\n", Ingress, Client), None);
    }

    #[test]
    fn unknown() {
        for b in [
            &b""[..],
            b"\x00",
            b"hello world\r\n",
            b"SSH-2.0-OpenSSH_9.6\r\n",
            b"\x00\x00\x00\x08\x04\xd2\x16\x2f",
        ] {
            for dir in [Egress, Ingress] {
                for role in [Client, Server, Role::Unknown] {
                    assert_eq!(detect(b, dir, role), None, "{b:?}");
                }
            }
        }
    }
}
