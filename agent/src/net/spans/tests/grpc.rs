//! HTTP/2 and gRPC: one span per stream, multiplexed streams paired by id, statuses from
//! trailers and resets, RPC metrics.

use super::*;
use loupe_protocols::http2::frame_bytes as frame;

/// An HPACK literal without indexing, new name.
fn lit(name: &str, value: &str) -> Vec<u8> {
    let mut b = vec![0x00, name.len() as u8];
    b.extend_from_slice(name.as_bytes());
    b.push(value.len() as u8);
    b.extend_from_slice(value.as_bytes());
    b
}

const HEADERS: u8 = 1;
const DATA: u8 = 0;
const RST_STREAM: u8 = 3;
const END_STREAM: u8 = 1;
const END_HEADERS: u8 = 4;

/// A gRPC request's HEADERS and its one-message DATA.
fn call(stream: u32, path: &str, extra: &[u8]) -> Vec<u8> {
    let mut block = vec![0x83, 0x86];
    block.extend(lit(":path", path));
    block.extend(lit("content-type", "application/grpc"));
    block.extend_from_slice(extra);
    let mut b = frame(HEADERS, END_HEADERS, stream, &block);
    b.extend(frame(DATA, END_STREAM, stream, &[0, 0, 0, 0, 1, 7]));
    b
}

/// A response's HEADERS, DATA and trailers with `status`.
fn answer(stream: u32, status: u32) -> Vec<u8> {
    let mut b = frame(HEADERS, END_HEADERS, stream, &[0x88]);
    b.extend(frame(DATA, 0, stream, &[0, 0, 0, 0, 1, 9]));
    b.extend(frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        stream,
        &lit("grpc-status", &status.to_string()),
    ));
    b
}

fn preface() -> Vec<u8> {
    let mut b = loupe_protocols::http2::PREFACE.to_vec();
    b.extend(frame(4, 0, 0, &[]));
    b
}

#[test]
fn grpc_server_streams_on_one_connection_get_their_own_responses() {
    let mut s = Sim::new();
    let c = server(1, 100);
    s.open(&c, 10);
    s.read(&c, 101, 100, 200, &preface());
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    s.read(
        &c,
        101,
        300,
        1_000,
        &call(
            1,
            "/shop.Inventory/Reserve",
            &lit("traceparent", traceparent),
        ),
    );
    s.read(
        &c,
        101,
        1_100,
        2_000,
        &call(3, "/shop.Inventory/Check", &[]),
    );
    // Stream 3 answers first, with INTERNAL; then stream 1, OK.
    s.write(&c, 102, 2_100, 2_500, &answer(3, 13));
    s.write(&c, 101, 2_600, 3_000, &answer(1, 0));
    let spans = s.spans();
    assert_eq!(spans.len(), 2);
    let check = &spans[0].1;
    assert_eq!(check.name, "shop.Inventory/Check");
    assert_eq!(check.kind, 2);
    assert_eq!(check.start_time_unix_nano, s.unix(2_000));
    assert_eq!(check.end_time_unix_nano, s.unix(2_500));
    assert_eq!(a(check, "rpc.system").as_deref(), Some("grpc"));
    assert_eq!(a(check, "rpc.service").as_deref(), Some("shop.Inventory"));
    assert_eq!(a(check, "rpc.method").as_deref(), Some("Check"));
    assert_eq!(a(check, "rpc.grpc.status_code").as_deref(), Some("13"));
    assert_eq!(a(check, "network.protocol.version").as_deref(), Some("2"));
    assert_eq!(a(check, "server.port").as_deref(), Some("8080"));
    assert!(is_error(check));
    let reserve = &spans[1].1;
    assert_eq!(reserve.name, "shop.Inventory/Reserve");
    assert_eq!(reserve.start_time_unix_nano, s.unix(1_000));
    assert_eq!(reserve.end_time_unix_nano, s.unix(3_000));
    assert_eq!(a(reserve, "rpc.grpc.status_code").as_deref(), Some("0"));
    assert!(!is_error(reserve));
    // The incoming traceparent made it a child of the caller's span.
    assert_eq!(hex(&reserve.trace_id), "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(hex(&reserve.parent_span_id), "b7ad6b7169203331");
    assert_eq!(
        s.metric("rpc_server_duration_seconds_count{rpc_grpc_status_code=\"13\",rpc_method=\"Check\",rpc_service=\"shop.Inventory\",service_name=\"svc100\"}"),
        1
    );
    assert_eq!(
        s.metric("loupe_spans_created_total{kind=\"rpc_server\"}"),
        2
    );
}

#[test]
fn a_cancelled_grpc_client_call_ends_cancelled_and_plain_http2_is_http() {
    let mut s = Sim::new();
    let c = client(2, 200, 50051);
    s.open(&c, 10);
    s.write(&c, 201, 100, 200, &preface());
    s.write(&c, 201, 300, 400, &call(1, "/shop.Payment/Charge", &[]));
    // The client gives up (deadline): RST_STREAM CANCEL.
    s.write(
        &c,
        201,
        5_000,
        5_100,
        &frame(RST_STREAM, 0, 1, &8u32.to_be_bytes()),
    );
    // A plain HTTP/2 GET on the same connection.
    let mut get = vec![0x82, 0x86];
    get.extend(lit(":path", "/healthz"));
    get.extend(lit(":authority", "payment:8080"));
    s.write(
        &c,
        201,
        6_000,
        6_100,
        &frame(HEADERS, END_HEADERS | END_STREAM, 3, &get),
    );
    s.read(
        &c,
        201,
        6_200,
        6_300,
        &frame(HEADERS, END_HEADERS | END_STREAM, 3, &[0x8d]),
    );
    // A call with a 2 ms deadline, cancelled when it passes: DEADLINE_EXCEEDED, as the client
    // reports it.
    s.write(
        &c,
        201,
        7_000,
        7_100,
        &call(5, "/shop.Payment/Charge", &lit("grpc-timeout", "2m")),
    );
    s.write(
        &c,
        201,
        2_007_000,
        2_007_100,
        &frame(RST_STREAM, 0, 5, &8u32.to_be_bytes()),
    );
    let spans = s.spans();
    assert_eq!(spans.len(), 3);
    assert_eq!(a(&spans[2].1, "rpc.grpc.status_code").as_deref(), Some("4"));
    let charge = &spans[0].1;
    assert_eq!(charge.name, "shop.Payment/Charge");
    assert_eq!(charge.kind, 3);
    assert_eq!(a(charge, "rpc.grpc.status_code").as_deref(), Some("1"));
    assert_eq!(a(charge, "server.address").as_deref(), Some("10.0.0.7"));
    assert!(is_error(charge));
    assert_eq!(charge.end_time_unix_nano, s.unix(5_100));
    let get = &spans[1].1;
    assert_eq!(get.name, "GET");
    assert_eq!(a(get, "http.response.status_code").as_deref(), Some("404"));
    assert_eq!(a(get, "network.protocol.version").as_deref(), Some("2"));
    assert_eq!(a(get, "server.address").as_deref(), Some("payment"));
    assert_eq!(
        s.metric("rpc_client_duration_seconds_count{rpc_grpc_status_code=\"1\",rpc_method=\"Charge\",rpc_service=\"shop.Payment\",service_name=\"svc200\"}"),
        1
    );
}

#[test]
fn grpc_picked_up_mid_way_is_named_only_by_what_is_known() {
    let mut s = Sim::new();
    let c = server(3, 100);
    s.open(&c, 10);
    // No preface: the connection was open before the agent. `:path`, content-type and the
    // trailers' grpc-status refer to table entries never seen (0xbe..0xc1).
    s.read(
        &c,
        101,
        100,
        200,
        &frame(HEADERS, END_HEADERS, 7, &[0xc1, 0x83, 0x86, 0xc0, 0xbf]),
    );
    s.read(
        &c,
        101,
        210,
        220,
        &frame(DATA, END_STREAM, 7, &[0, 0, 0, 0, 1, 7]),
    );
    let mut w = frame(HEADERS, END_HEADERS, 7, &[0x88, 0xbe]);
    w.extend(frame(DATA, 0, 7, &[0, 0, 0, 0, 1, 9]));
    w.extend(frame(HEADERS, END_HEADERS | END_STREAM, 7, &[0xc2]));
    s.write(&c, 101, 300, 400, &w);
    // A method first called now: its path is a new literal, its content type still unknown.
    let mut block = vec![0x83, 0x86];
    block.extend(lit(":path", "/shop.Inventory/Check"));
    block.push(0xc0);
    s.read(
        &c,
        101,
        500,
        600,
        &frame(HEADERS, END_HEADERS | END_STREAM, 9, &block),
    );
    s.write(
        &c,
        101,
        700,
        800,
        &frame(HEADERS, END_HEADERS | END_STREAM, 9, &[0x88, 0xc5]),
    );
    // A plain GET stays HTTP.
    let mut get = vec![0x82, 0x86, 0xc3];
    get.extend(lit(":path", "/healthz"));
    s.read(
        &c,
        101,
        900,
        1_000,
        &frame(HEADERS, END_HEADERS | END_STREAM, 11, &get),
    );
    s.write(
        &c,
        101,
        1_100,
        1_200,
        &frame(HEADERS, END_HEADERS | END_STREAM, 11, &[0x88]),
    );
    let spans = s.spans();
    let names: Vec<_> = spans.iter().map(|(_, s)| s.name.as_str()).collect();
    assert_eq!(names, ["grpc", "shop.Inventory/Check", "GET /healthz"]);
    let unknown = &spans[0].1;
    assert_eq!(a(unknown, "rpc.system").as_deref(), Some("grpc"));
    assert_eq!(a(unknown, "rpc.method"), None);
    assert_eq!(a(unknown, "rpc.grpc.status_code"), None);
    assert!(!is_error(unknown));
    assert_eq!(a(&spans[1].1, "rpc.method").as_deref(), Some("Check"));
    assert_eq!(a(&spans[1].1, "rpc.grpc.status_code"), None);
    assert_eq!(
        s.metric("rpc_server_duration_seconds_count{rpc_grpc_status_code=\"\",rpc_method=\"_OTHER\",rpc_service=\"_OTHER\",service_name=\"svc100\"}"),
        1
    );
    // Counted where they were left out: 3 + 1 + 1 in the first call's request, response and
    // trailers, 1 + 1 in the second's request and trailers-only response, 1 in the GET.
    assert_eq!(s.metric("loupe_spans_http2_unknown_header_fields_total"), 8);
}

/// HTTP/1.1 `Upgrade: h2c` on a server: the request that asked is answered on stream 1 (in the
/// same write as the 101 and the server's SETTINGS), later streams are plain HTTP/2; a 101 to
/// another protocol (WebSocket) stays the answer and the connection goes opaque.
#[test]
fn an_h2c_upgrade_answers_the_asking_request_on_stream_1() {
    let mut s = Sim::new();
    let c = server(3, 300);
    s.open(&c, 10);
    s.read(
        &c,
        301,
        100,
        200,
        b"GET /hello/1 HTTP/1.1\r\nHost: shop:8080\r\nConnection: Upgrade, HTTP2-Settings\r\n\
          Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n",
    );
    let mut answer =
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n".to_vec();
    answer.extend(frame(4, 0, 0, &[]));
    answer.extend(frame(HEADERS, END_HEADERS, 1, &[0x88]));
    answer.extend(frame(DATA, END_STREAM, 1, b"hello 1"));
    s.write(&c, 301, 300, 400, &answer);
    s.read(&c, 301, 500, 600, &preface());
    let mut get = vec![0x82, 0x86];
    get.extend(lit(":path", "/missing"));
    s.read(
        &c,
        301,
        700,
        800,
        &frame(HEADERS, END_HEADERS | END_STREAM, 3, &get),
    );
    s.write(
        &c,
        301,
        900,
        1_000,
        &frame(HEADERS, END_HEADERS | END_STREAM, 3, &[0x8d]),
    );
    // Another connection: a WebSocket upgrade is answered by its 101.
    let ws = server(4, 300);
    s.open(&ws, 1_100);
    s.read(
        &ws,
        301,
        1_200,
        1_300,
        b"GET /chat HTTP/1.1\r\nHost: shop:8080\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    );
    s.write(
        &ws,
        301,
        1_400,
        1_500,
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x05hello",
    );
    let spans = s.spans();
    let names: Vec<_> = spans.iter().map(|(_, sp)| sp.name.clone()).collect();
    assert_eq!(spans.len(), 3, "{names:?}");
    let first = &spans[0].1;
    assert_eq!(a(first, "url.path").as_deref(), Some("/hello/1"));
    assert_eq!(
        a(first, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(a(first, "network.protocol.version").as_deref(), Some("2"));
    assert_eq!(first.end_time_unix_nano, s.unix(400));
    let missing = &spans[1].1;
    assert_eq!(a(missing, "url.path").as_deref(), Some("/missing"));
    assert_eq!(
        a(missing, "http.response.status_code").as_deref(),
        Some("404")
    );
    assert_eq!(a(missing, "network.protocol.version").as_deref(), Some("2"));
    let chat = &spans[2].1;
    assert_eq!(a(chat, "http.response.status_code").as_deref(), Some("101"));
    assert_eq!(a(chat, "network.protocol.version").as_deref(), Some("1.1"));
}
