use super::frame_bytes as frame;
use super::*;
use Flow::{ClientToServer as C2S, ServerToClient as S2C};

/// An HPACK literal without indexing, new name, no Huffman.
fn lit(name: &str, value: &str) -> Vec<u8> {
    let mut b = vec![0x00, name.len() as u8];
    b.extend_from_slice(name.as_bytes());
    b.push(value.len() as u8);
    b.extend_from_slice(value.as_bytes());
    b
}

/// An HPACK literal with incremental indexing and a static name index.
fn indexed_name(index: u8, value: &str) -> Vec<u8> {
    let mut b = vec![0x40 | index, value.len() as u8];
    b.extend_from_slice(value.as_bytes());
    b
}

/// A gRPC request block: POST, http, `path` (inserted), authority, content-type.
fn grpc_request(path: &str) -> Vec<u8> {
    let mut b = vec![0x83, 0x86];
    b.extend(indexed_name(4, path));
    b.extend(indexed_name(1, "inventory:50051"));
    b.extend(indexed_name(31, "application/grpc"));
    b.extend(lit("te", "trailers"));
    b.extend(lit("grpc-timeout", "1500m"));
    b
}

fn grpc_message(len: usize) -> Vec<u8> {
    let mut m = vec![0];
    m.extend_from_slice(&(len as u32).to_be_bytes());
    m.extend(std::iter::repeat_n(7u8, len));
    m
}

fn feed(c: &mut Http2Connection, flow: Flow, bytes: &[u8]) -> Vec<Event> {
    let mut out = Vec::new();
    c.feed(flow, bytes, bytes.len() as u64, &mut out);
    out
}

type Ended = (u32, End, Option<u32>, Option<(Flow, u32)>);

fn ends(events: &[Event]) -> Vec<Ended> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::End {
                stream,
                end,
                grpc_status,
                reset,
                ..
            } => Some((*stream, *end, *grpc_status, *reset)),
            _ => None,
        })
        .collect()
}

fn request_paths(events: &[Event]) -> Vec<(u32, Option<String>)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Request {
                stream, headers, ..
            } => Some((*stream, headers.path.clone())),
            _ => None,
        })
        .collect()
}

fn client_start() -> Vec<u8> {
    let mut b = PREFACE.to_vec();
    b.extend(frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100]));
    b
}

#[test]
fn a_unary_grpc_call_pairs_request_response_and_trailers() {
    let mut c = Http2Connection::new();
    assert!(feed(&mut c, C2S, &client_start()).is_empty());
    assert!(feed(&mut c, S2C, &frame(SETTINGS, 0, 0, &[])).is_empty());
    let mut req = frame(
        HEADERS,
        END_HEADERS,
        1,
        &grpc_request("/shop.Inventory/Reserve"),
    );
    req.extend(frame(DATA, END_STREAM, 1, &grpc_message(12)));
    let ev = feed(&mut c, C2S, &req);
    let [
        Event::Request {
            stream: 1,
            headers,
            end_stream: false,
        },
    ] = &ev[..]
    else {
        panic!("{ev:?}")
    };
    assert_eq!(headers.method.as_deref(), Some("POST"));
    assert_eq!(headers.path.as_deref(), Some("/shop.Inventory/Reserve"));
    assert_eq!(headers.authority.as_deref(), Some("inventory:50051"));
    assert_eq!(headers.scheme.as_deref(), Some("http"));
    assert!(headers.is_grpc());
    assert_eq!(headers.unknown, 0);
    assert_eq!(headers.grpc_timeout_ns, Some(1_500_000_000));

    let mut head = vec![0x88, 0x5f, 16];
    head.extend_from_slice(b"application/grpc");
    let mut resp = frame(HEADERS, END_HEADERS, 1, &head);
    resp.extend(frame(DATA, 0, 1, &grpc_message(30)));
    resp.extend(frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        1,
        &[lit("grpc-status", "0"), lit("grpc-message", "")].concat(),
    ));
    let ev = feed(&mut c, S2C, &resp);
    assert!(
        matches!(&ev[0], Event::Response { stream: 1, headers } if headers.status == Some(200) && headers.is_grpc())
    );
    assert_eq!(ends(&ev), [(1, End::Complete, Some(0), None)]);
    assert!(matches!(ev.last(), Some(Event::End { trailers: true, .. })));
    assert_eq!(c.open_streams(), 0);

    // The second call refers to the inserted path by index: learned from the first.
    let mut req = frame(HEADERS, END_HEADERS, 3, &[0x83, 0x86, 0xbf, 0xbe]);
    req.extend(frame(DATA, END_STREAM, 3, &grpc_message(1)));
    let ev = feed(&mut c, C2S, &req);
    // Table, newest first: content-type, authority, path.
    assert_eq!(request_paths(&ev), [(3, None)]);
    let Event::Request { headers, .. } = &ev[0] else {
        panic!()
    };
    assert_eq!(headers.authority.as_deref(), Some("inventory:50051"));
    assert_eq!(headers.content_type.as_deref(), Some("application/grpc"));
    assert_eq!(c.desyncs(), 0);
}

#[test]
fn interleaved_streams_get_their_own_responses() {
    let mut c = Http2Connection::new();
    feed(&mut c, C2S, &client_start());
    let mut ev = Vec::new();
    for (stream, path) in [(1, "/a.S/One"), (3, "/a.S/Two"), (5, "/a.S/Three")] {
        let mut b = vec![0x83, 0x86];
        b.extend(lit(":path", path));
        ev.extend(feed(
            &mut c,
            C2S,
            &frame(HEADERS, END_HEADERS | END_STREAM, stream, &b),
        ));
    }
    assert_eq!(
        request_paths(&ev),
        [
            (1, Some("/a.S/One".into())),
            (3, Some("/a.S/Two".into())),
            (5, Some("/a.S/Three".into()))
        ]
    );
    // Stream 5 answers first (trailers-only NOT_FOUND), then 1 and 3 in one write.
    let mut b = vec![0x88];
    b.extend(lit("grpc-status", "5"));
    let ev = feed(
        &mut c,
        S2C,
        &frame(HEADERS, END_HEADERS | END_STREAM, 5, &b),
    );
    assert_eq!(ends(&ev), [(5, End::Complete, Some(5), None)]);
    let mut w = frame(HEADERS, END_HEADERS, 3, &[0x88]);
    w.extend(frame(HEADERS, END_HEADERS, 1, &[0x8d]));
    w.extend(frame(DATA, END_STREAM, 1, b"x"));
    w.extend(frame(DATA, END_STREAM, 3, b"y"));
    let ev = feed(&mut c, S2C, &w);
    let statuses: Vec<_> = ev
        .iter()
        .filter_map(|e| match e {
            Event::Response { stream, headers } => Some((*stream, headers.status)),
            _ => None,
        })
        .collect();
    assert_eq!(statuses, [(3, Some(200)), (1, Some(404))]);
    assert_eq!(
        ends(&ev),
        [
            (1, End::Complete, None, None),
            (3, End::Complete, None, None)
        ]
    );
}

#[test]
fn frames_split_anywhere_across_chunks_parse_the_same() {
    let mut whole = client_start();
    let mut block = grpc_request("/x.Y/Z");
    // Padded HEADERS with priority, continued in a CONTINUATION frame.
    let (first, rest) = block.split_at(5);
    let mut payload = vec![3];
    payload.extend_from_slice(&[0, 0, 0, 0, 16]);
    payload.extend_from_slice(first);
    payload.extend_from_slice(&[0, 0, 0]);
    whole.extend(frame(HEADERS, PADDED | PRIORITY_FLAG, 1, &payload));
    whole.extend(frame(CONTINUATION, END_HEADERS, 1, rest));
    whole.extend(frame(DATA, END_STREAM | PADDED, 1, &[2, 9, 9, 0, 0]));
    block.clear();
    for cut in 1..whole.len() {
        let mut c = Http2Connection::new();
        let mut ev = feed(&mut c, C2S, &whole[..cut]);
        ev.extend(feed(&mut c, C2S, &whole[cut..]));
        assert_eq!(
            request_paths(&ev),
            [(1, Some("/x.Y/Z".into()))],
            "cut at {cut}"
        );
        assert_eq!(c.desyncs(), 0);
    }
}

#[test]
fn trailers_outside_the_capture_end_the_stream_and_the_next_chunk_realigns() {
    let mut c = Http2Connection::new();
    feed(&mut c, C2S, &client_start());
    feed(
        &mut c,
        C2S,
        &frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            1,
            &grpc_request("/a.B/Big"),
        ),
    );
    // Response headers, a 4 KiB message, then trailers: only 512 bytes captured.
    let mut w = frame(HEADERS, END_HEADERS, 1, &[0x88]);
    w.extend(frame(DATA, 0, 1, &grpc_message(4096)));
    w.extend(frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        1,
        &lit("grpc-status", "0"),
    ));
    let mut ev = Vec::new();
    c.feed(S2C, &w[..512], w.len() as u64, &mut ev);
    assert!(matches!(ev[0], Event::Response { stream: 1, .. }));
    assert_eq!(ends(&ev), [(1, End::Complete, None, None)]);
    assert_eq!(c.desyncs(), 1);
    // A chunk that does not start with a frame is skipped; the next one realigns.
    assert!(feed(&mut c, S2C, b"garbage that is no frame").is_empty());
    let mut b = vec![0x83, 0x86];
    b.extend(lit(":path", "/a.B/Next"));
    let ev = feed(
        &mut c,
        C2S,
        &frame(HEADERS, END_HEADERS | END_STREAM, 3, &b),
    );
    assert_eq!(request_paths(&ev), [(3, Some("/a.B/Next".into()))]);
    let ev = feed(
        &mut c,
        S2C,
        &frame(HEADERS, END_HEADERS | END_STREAM, 3, &[0x88]),
    );
    assert_eq!(ends(&ev), [(3, End::Complete, None, None)]);
}

#[test]
fn a_data_frame_larger_than_the_capture_keeps_framing() {
    let mut c = Http2Connection::new();
    feed(&mut c, C2S, &client_start());
    let mut w = frame(HEADERS, END_HEADERS, 1, &grpc_request("/a.B/Upload"));
    let data = frame(DATA, 0, 1, &grpc_message(10_000));
    w.extend_from_slice(&data[..200]);
    let mut ev = Vec::new();
    c.feed(C2S, &w, (w.len() - 200 + data.len()) as u64, &mut ev);
    // The next write is a frame of its own.
    ev.extend(feed(&mut c, C2S, &frame(DATA, END_STREAM, 1, b"")));
    assert_eq!(request_paths(&ev), [(1, Some("/a.B/Upload".into()))]);
    assert_eq!(c.desyncs(), 0);
}

#[test]
fn a_connection_picked_up_mid_way_decodes_what_it_can_and_learns() {
    let mut c = Http2Connection::new();
    // No preface: the first bytes are a HEADERS frame referring to entries never seen.
    let ev = feed(
        &mut c,
        C2S,
        &frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            41,
            &[0x83, 0x86, 0xc0, 0xbf],
        ),
    );
    let Event::Request {
        stream: 41,
        headers,
        ..
    } = &ev[0]
    else {
        panic!("{ev:?}")
    };
    assert_eq!(headers.method.as_deref(), Some("POST"));
    assert_eq!(headers.path, None);
    assert_eq!(headers.unknown, 2);
    assert_eq!(c.unknown_fields(), 2);
    let ev = feed(
        &mut c,
        S2C,
        &frame(HEADERS, END_HEADERS | END_STREAM, 41, &[0x88]),
    );
    assert_eq!(ends(&ev), [(41, End::Complete, None, None)]);
}

#[test]
fn resets_goaway_and_close_end_streams() {
    let mut c = Http2Connection::new();
    feed(&mut c, C2S, &client_start());
    for s in [1, 3, 5, 7] {
        feed(
            &mut c,
            C2S,
            &frame(HEADERS, END_HEADERS, s, &[0x83, 0x86, 0x84]),
        );
    }
    // The client cancels 1 (CANCEL = 8), the server refuses what is above 3, and the
    // connection closes with 3 open.
    let ev = feed(&mut c, C2S, &frame(RST_STREAM, 0, 1, &8u32.to_be_bytes()));
    assert_eq!(ends(&ev), [(1, End::Complete, None, Some((C2S, 8)))]);
    let mut goaway = 3u32.to_be_bytes().to_vec();
    goaway.extend_from_slice(&0u32.to_be_bytes());
    goaway.extend_from_slice(b"bye");
    let ev = feed(&mut c, S2C, &frame(GOAWAY, 0, 0, &goaway));
    assert_eq!(
        ends(&ev),
        [
            (5, End::Complete, None, Some((S2C, REFUSED_STREAM))),
            (7, End::Complete, None, Some((S2C, REFUSED_STREAM)))
        ]
    );
    let mut ev = Vec::new();
    c.close(&mut ev);
    assert_eq!(ends(&ev), [(3, End::Incomplete, None, None)]);
}

#[test]
fn informational_responses_are_skipped_and_streams_are_capped() {
    let mut c = Http2Connection::new();
    feed(&mut c, C2S, &client_start());
    feed(
        &mut c,
        C2S,
        &frame(HEADERS, END_HEADERS, 1, &[0x82, 0x86, 0x84]),
    );
    let mut b = vec![0x08, 0x03];
    b.extend_from_slice(b"100");
    assert!(feed(&mut c, S2C, &frame(HEADERS, END_HEADERS, 1, &b)).is_empty());
    let ev = feed(&mut c, S2C, &frame(HEADERS, END_HEADERS, 1, &[0x89]));
    assert!(matches!(&ev[0], Event::Response { headers, .. } if headers.status == Some(204)));
    let mut ev = Vec::new();
    // Stream 1 is still open (answered, not ended): one more than the cap evicts it.
    for i in 0..MAX_STREAMS as u32 {
        ev.extend(feed(
            &mut c,
            C2S,
            &frame(HEADERS, END_HEADERS, 3 + 2 * i, &[0x82, 0x86, 0x84]),
        ));
    }
    assert_eq!(c.open_streams(), MAX_STREAMS);
    assert_eq!(ends(&ev), [(1, End::Incomplete, None, None)]);
}

#[test]
fn server_push_blocks_keep_hpack_in_step_without_events() {
    let mut c = Http2Connection::new();
    feed(&mut c, C2S, &client_start());
    feed(
        &mut c,
        C2S,
        &frame(HEADERS, END_HEADERS | END_STREAM, 1, &[0x82, 0x86, 0x84]),
    );
    // The server inserts `:status 200`-like entry through a push, then refers to it.
    let mut promise = 2u32.to_be_bytes().to_vec();
    promise.extend(indexed_name(24, "max-age=60"));
    assert!(feed(&mut c, S2C, &frame(PUSH_PROMISE, END_HEADERS, 1, &promise)).is_empty());
    let mut b = vec![0x88, 0xbe];
    b.extend(lit("grpc-status", "0"));
    let ev = feed(
        &mut c,
        S2C,
        &frame(HEADERS, END_HEADERS | END_STREAM, 1, &b),
    );
    let Event::Response { headers, .. } = &ev[0] else {
        panic!("{ev:?}")
    };
    assert_eq!(headers.unknown, 0);
    assert_eq!(headers.grpc_status, Some(0));
}

#[test]
fn mid_way_detection_needs_whole_plausible_frames_with_a_pseudo_header() {
    let len = |b: &[u8]| Some(b.len() as u64);
    let req = frame(HEADERS, END_HEADERS, 9, &[0x83, 0x86, 0xbe]);
    assert_eq!(midway_flow(&req, len(&req)), Some(C2S));
    let mut two = frame(WINDOW_UPDATE, 0, 0, &[0, 0, 1, 0]);
    two.extend(frame(HEADERS, END_HEADERS, 9, &[0x88, 0xbe, 0xbf]));
    assert_eq!(midway_flow(&two, len(&two)), Some(S2C));
    // Past the capture: accepted when the total is unknown or large enough.
    assert_eq!(midway_flow(&two[..23], None), Some(S2C));
    assert_eq!(midway_flow(&two[..23], Some(100)), Some(S2C));
    assert_eq!(midway_flow(&two[..23], Some(24)), None);
    // gRPC's C core refers to dynamic entries first, then `:method` POST.
    let later = frame(HEADERS, END_HEADERS, 11, &[0xc4, 0xc3, 0x83, 0x86]);
    assert_eq!(midway_flow(&later, len(&later)), Some(C2S));
    let mut block = lit("x-a", "b");
    block.push(0x89);
    let literal_first = frame(HEADERS, END_HEADERS, 11, &block);
    assert_eq!(midway_flow(&literal_first, len(&literal_first)), Some(S2C));
    // Longer than the chunk, or a header block without a static pseudo-header.
    assert_eq!(midway_flow(&req, Some(req.len() as u64 + 1)), None);
    let other = frame(HEADERS, END_HEADERS, 9, &[0xbe]);
    assert_eq!(midway_flow(&other, len(&other)), None);
    let data = frame(DATA, 0, 1, b"x");
    assert_eq!(midway_flow(&data, len(&data)), None);
    // Other protocols.
    let get = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    assert_eq!(midway_flow(get, len(get)), None);
    let query = b"\x21\x00\x00\x00\x03SELECT * FROM items WHERE id = 1";
    assert_eq!(midway_flow(query, len(query)), None);
    let ping = b"*1\r\n$4\r\nPING\r\n";
    assert_eq!(midway_flow(ping, len(ping)), None);
    // And `detect` finds it after every other protocol.
    use crate::{Direction, Protocol, Role, detect};
    assert_eq!(
        detect(&req, Direction::Ingress, Role::Unknown),
        Some(Protocol::Http2)
    );
    assert_eq!(detect(&req, Direction::Ingress, Role::Client), None);
}

#[test]
fn plausibility_rejects_reserved_bits_undefined_flags_and_wrong_sizes() {
    let ok = FrameHeader {
        len: 4,
        kind: WINDOW_UPDATE,
        flags: 0,
        stream: 0,
    };
    assert!(plausible_frame(&ok));
    assert!(!plausible_frame(&FrameHeader { len: 5, ..ok }));
    assert!(!plausible_frame(&FrameHeader { flags: 1, ..ok }));
    assert!(!plausible_frame(&FrameHeader {
        stream: 0x8000_0001,
        ..ok
    }));
    assert!(!plausible_frame(&FrameHeader {
        kind: CONTINUATION,
        flags: END_HEADERS,
        stream: 1,
        ..ok
    }));
    assert!(!plausible_frame(&FrameHeader {
        kind: SETTINGS,
        stream: 1,
        len: 6,
        ..ok
    }));
    assert!(!plausible_frame(&FrameHeader { kind: 10, ..ok }));
}

#[test]
fn grpc_timeouts_parse_with_every_unit() {
    for (v, ns) in [
        ("1H", Some(3_600_000_000_000)),
        ("2M", Some(120_000_000_000)),
        ("3S", Some(3_000_000_000)),
        ("10100m", Some(10_100_000_000)),
        ("7u", Some(7_000)),
        ("99999999n", Some(99_999_999)),
        ("123456789S", None),
        ("5x", None),
        ("S", None),
        ("", None),
    ] {
        assert_eq!(grpc_timeout(v.as_bytes()), ns, "{v}");
    }
}

#[test]
fn an_upgraded_connection_answers_stream_1_then_carries_streams() {
    let mut c = Http2Connection::upgraded();
    let mut ev = Vec::new();
    // The server's preface (SETTINGS) and its answer on stream 1, as after a 101.
    let mut s2c = frame_bytes(kind::SETTINGS, 0, 0, &[]);
    s2c.extend(frame_bytes(kind::HEADERS, flag::END_HEADERS, 1, &[0x88]));
    s2c.extend(frame_bytes(kind::DATA, flag::END_STREAM, 1, b"hi"));
    c.feed(Flow::ServerToClient, &s2c, s2c.len() as u64, &mut ev);
    assert!(
        matches!(&ev[..], [Event::Response { stream: 1, headers }, Event::End { stream: 1, end: End::Complete, .. }] if headers.status == Some(200)),
        "{ev:?}"
    );
    ev.clear();
    // The client's preface, then a new stream.
    let mut c2s = PREFACE.to_vec();
    c2s.extend(frame_bytes(kind::SETTINGS, 0, 0, &[]));
    c2s.extend(frame_bytes(
        kind::HEADERS,
        flag::END_HEADERS | flag::END_STREAM,
        3,
        &[0x82, 0x84, 0x86],
    ));
    c.feed(Flow::ClientToServer, &c2s, c2s.len() as u64, &mut ev);
    assert!(
        matches!(&ev[..], [Event::Request { stream: 3, headers, .. }] if headers.path.as_deref() == Some("/")),
        "{ev:?}"
    );
    assert_eq!(c.desyncs(), 0);
}
