//! Drives all four connection parsers with the same fuzzed syscall sequence.
//!
//! Input layout, repeated: `flags` (bit 0: flow, bit 1: uncaptured bytes follow, bit 2: gap
//! after, bit 3: close after), `len` (captured byte count), `len` bytes, and when bit 1 is set
//! a little-endian u16 of uncaptured bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use loupe_protocols::{
    Direction, Flow, Http1Connection, Http2Connection, MySqlConnection, RedisConnection, Role,
    detect,
};

fuzz_target!(|data: &[u8]| {
    let mut h = Http1Connection::new();
    let mut m = MySqlConnection::new();
    let mut r = RedisConnection::new();
    let mut t = Http2Connection::new();
    let (mut he, mut me, mut re, mut te) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut rest = data;
    while let [flags, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (chunk, after) = tail.split_at(n);
        rest = after;
        let mut extra = 0u64;
        if flags & 2 != 0 {
            if let [a, b, after @ ..] = rest {
                extra = u64::from(u16::from_le_bytes([*a, *b]));
                rest = after;
            }
        }
        let flow = if flags & 1 == 0 {
            Flow::ClientToServer
        } else {
            Flow::ServerToClient
        };
        let total = chunk.len() as u64 + extra;
        h.feed(flow, chunk, total, &mut he);
        m.feed(flow, chunk, total, &mut me);
        r.feed(flow, chunk, total, &mut re);
        t.feed(flow, chunk, total, &mut te);
        let _ = detect(chunk, Direction::Egress, Role::Unknown);
        if flags & 4 != 0 {
            h.gap(flow);
            m.gap(flow);
            r.gap(flow);
            t.gap(flow);
        }
        if flags & 8 != 0 {
            h.close(&mut he);
            m.close(&mut me);
            r.close(&mut re);
            t.close(&mut te);
        }
        assert!(h.buffered_bytes() <= 2 * loupe_protocols::http1::MAX_HEAD + 4096);
        assert!(m.buffered_bytes() <= loupe_protocols::mysql::MAX_STATEMENT_BYTES + 32 * 1024);
        assert!(r.buffered_bytes() <= 64 * 1024);
        assert!(t.buffered_bytes() <= 160 * 1024);
        he.clear();
        me.clear();
        re.clear();
        te.clear();
    }
});
