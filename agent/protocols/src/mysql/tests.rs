use super::*;

const C2S: Flow = Flow::ClientToServer;
const S2C: Flow = Flow::ServerToClient;

/// One packet: 3-byte little-endian length, sequence id, payload.
fn pkt(seq: u8, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut v = len.to_le_bytes()[..3].to_vec();
    v.push(seq);
    v.extend_from_slice(payload);
    v
}

fn lenenc_str(s: &[u8]) -> Vec<u8> {
    assert!(s.len() < 251);
    [&[s.len() as u8][..], s].concat()
}

/// A Protocol::ColumnDefinition41 payload.
fn coldef(schema: &str, table: &str, name: &str, ty: u8) -> Vec<u8> {
    [
        lenenc_str(b"def"),
        lenenc_str(schema.as_bytes()),
        lenenc_str(table.as_bytes()),
        lenenc_str(table.as_bytes()),
        lenenc_str(name.as_bytes()),
        lenenc_str(name.as_bytes()),
        vec![
            0x0c, 0x2d, 0x00, 0xff, 0x00, 0x00, 0x00, ty, 0x00, 0x00, 0x00, 0x00, 0x00,
        ],
    ]
    .concat()
}

/// A MariaDB 10.11 server greeting (protocol 10), as sent on connect.
pub(crate) fn mariadb_greeting() -> Vec<u8> {
    let mut p = vec![0x0a];
    p.extend_from_slice(b"5.5.5-10.11.6-MariaDB-0+deb12u1\0");
    p.extend_from_slice(&11u32.to_le_bytes()); // connection id
    p.extend_from_slice(b"Kz3>k'a^"); // auth-plugin-data part 1
    p.push(0); // filler
    p.extend_from_slice(&[0xfe, 0xf7]); // capabilities (lower)
    p.push(0x2d); // utf8mb4_general_ci
    p.extend_from_slice(&[0x02, 0x00]); // SERVER_STATUS_AUTOCOMMIT
    p.extend_from_slice(&[0xff, 0x81]); // capabilities (upper)
    p.push(21); // auth-plugin-data length
    p.extend_from_slice(&[0; 6]);
    p.extend_from_slice(&[0x1d, 0x00, 0x00, 0x00]); // MariaDB extended capabilities
    p.extend_from_slice(b"Y\\9pO#uW}7B&\0"); // auth-plugin-data part 2
    p.extend_from_slice(b"mysql_native_password\0");
    pkt(0, &p)
}

const BASE_CAPS: u32 =
    0x1 | 0x8 | 0x200 | 0x2000 | 0x8000 | 0x1_0000 | 0x2_0000 | 0x4_0000 | 0x8_0000 | (1 << 21);

/// HandshakeResponse41 with a database.
fn handshake_response(caps: u32, db: &str) -> Vec<u8> {
    let mut p = caps.to_le_bytes().to_vec();
    p.extend_from_slice(&0x0100_0000u32.to_le_bytes());
    p.push(0x2d);
    p.extend_from_slice(&[0; 23]);
    p.extend_from_slice(b"app\0");
    p.push(20);
    p.extend_from_slice(&[0x5a; 20]);
    p.extend_from_slice(db.as_bytes());
    p.push(0);
    p.extend_from_slice(b"mysql_native_password\0");
    pkt(1, &p)
}

fn ok(seq: u8, affected: u8, insert_id: u8, status: u16) -> Vec<u8> {
    let mut p = vec![0x00, affected, insert_id];
    p.extend_from_slice(&status.to_le_bytes());
    p.extend_from_slice(&[0, 0]);
    pkt(seq, &p)
}

fn eof(seq: u8, status: u16) -> Vec<u8> {
    let mut p = vec![0xfe, 0, 0];
    p.extend_from_slice(&status.to_le_bytes());
    pkt(seq, &p)
}

fn err(seq: u8, code: u16, state: &str, msg: &str) -> Vec<u8> {
    let mut p = vec![0xff];
    p.extend_from_slice(&code.to_le_bytes());
    p.push(b'#');
    p.extend_from_slice(state.as_bytes());
    p.extend_from_slice(msg.as_bytes());
    pkt(seq, &p)
}

fn text_row(seq: u8, cols: &[&str]) -> Vec<u8> {
    let p: Vec<u8> = cols.iter().flat_map(|c| lenenc_str(c.as_bytes())).collect();
    pkt(seq, &p)
}

fn query(sql: &str) -> Vec<u8> {
    pkt(0, &[&[0x03][..], sql.as_bytes()].concat())
}

/// A classic (EOF-delimited) text result set with `rows` rows of (id, name).
fn result_set(rows: usize) -> Vec<u8> {
    let mut v = pkt(1, &[0x02]);
    v.extend(pkt(2, &coldef("shop", "users", "id", 0x08)));
    v.extend(pkt(3, &coldef("shop", "users", "name", 0xfd)));
    v.extend(eof(4, 0x0002));
    let mut seq = 5u8;
    for i in 0..rows {
        v.extend(text_row(seq, &[&i.to_string(), "alice"]));
        seq = seq.wrapping_add(1);
    }
    v.extend(eof(seq, 0x0002));
    v
}

fn session() -> Vec<(Flow, Vec<u8>)> {
    let mut prepare_resp = pkt(1, &[0x00, 1, 0, 0, 0, 2, 0, 1, 0, 0, 0, 0]);
    prepare_resp.extend(pkt(2, &coldef("", "", "?", 0x08)));
    prepare_resp.extend(eof(3, 0x0002));
    prepare_resp.extend(pkt(4, &coldef("shop", "users", "id", 0x08)));
    prepare_resp.extend(pkt(5, &coldef("shop", "users", "name", 0xfd)));
    prepare_resp.extend(eof(6, 0x0002));
    let execute = pkt(
        0,
        &[
            0x17, 1, 0, 0, 0, 0x00, 1, 0, 0, 0, 0x00, 0x01, 0x08, 0x00, 42, 0, 0, 0, 0, 0, 0, 0,
        ],
    );
    let mut exec_resp = pkt(1, &[0x02]);
    exec_resp.extend(pkt(2, &coldef("shop", "users", "id", 0x08)));
    exec_resp.extend(pkt(3, &coldef("shop", "users", "name", 0xfd)));
    exec_resp.extend(eof(4, 0x0002));
    exec_resp.extend(pkt(
        5,
        &[
            0x00, 0x00, 42, 0, 0, 0, 0, 0, 0, 0, 5, b'a', b'l', b'i', b'c', b'e',
        ],
    ));
    exec_resp.extend(eof(6, 0x0002));
    vec![
        (S2C, mariadb_greeting()),
        (C2S, handshake_response(BASE_CAPS, "shop")),
        (S2C, ok(2, 0, 0, 0x0002)),
        (C2S, query("SELECT id, name FROM users WHERE id = 42")),
        (S2C, result_set(1)),
        (C2S, query("SELEC oops")),
        (
            S2C,
            err(
                1,
                1064,
                "42000",
                "You have an error in your SQL syntax; check the manual that corresponds to your MariaDB server version for the right syntax to use near 'SELEC oops' at line 1",
            ),
        ),
        (
            C2S,
            query("INSERT INTO orders (user_id, total) VALUES (42, 9.99)"),
        ),
        (S2C, ok(1, 1, 17, 0x0002)),
        (C2S, pkt(0, b"\x16SELECT id, name FROM users WHERE id = ?")),
        (S2C, prepare_resp),
        (C2S, execute),
        (S2C, exec_resp),
        (C2S, pkt(0, &[0x19, 1, 0, 0, 0])),
        (C2S, pkt(0, &[0x0e])),
        (S2C, ok(1, 0, 0, 0x0002)),
        (C2S, pkt(0, b"\x02analytics")),
        (S2C, ok(1, 0, 0, 0x0002)),
        (C2S, pkt(0, &[0x01])),
    ]
}

fn run(conn: &mut MySqlConnection, chunks: &[(Flow, Vec<u8>)]) -> Vec<Event> {
    let mut out = Vec::new();
    for (flow, bytes) in chunks {
        conn.feed(*flow, bytes, bytes.len() as u64, &mut out);
    }
    out
}

fn summary(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e {
            Event::Request { id, command } => match command.sql() {
                Some(sql) => format!("req#{id} {} {sql}", command.name()),
                None => format!("req#{id} {command:?}"),
            },
            Event::Response { id, response, end } => format!("resp#{id} {response:?} {end:?}"),
        })
        .collect()
}

#[test]
fn full_mariadb_session() {
    let mut c = MySqlConnection::new();
    let ev = run(&mut c, &session());
    assert_eq!(
        summary(&ev),
        [
            "req#0 COM_QUERY SELECT id, name FROM users WHERE id = 42",
            "resp#0 Some(ResultSet { columns: 2, rows: Some(1) }) Complete",
            "req#1 COM_QUERY SELEC oops",
            "resp#1 Some(Err { code: 1064, sql_state: Some(\"42000\"), message: \"You have an error in your SQL syntax; check the manual that corresponds to your MariaDB server version for the right syntax to use near 'SELEC oops' at line 1\" }) Complete",
            "req#2 COM_QUERY INSERT INTO orders (user_id, total) VALUES (42, 9.99)",
            "resp#2 Some(Ok { affected_rows: 1, last_insert_id: 17, warnings: 0 }) Complete",
            "req#3 COM_STMT_PREPARE SELECT id, name FROM users WHERE id = ?",
            "resp#3 Some(PrepareOk { statement_id: 1, columns: 2, params: 1 }) Complete",
            "req#4 COM_STMT_EXECUTE SELECT id, name FROM users WHERE id = ?",
            "resp#4 Some(ResultSet { columns: 2, rows: Some(1) }) Complete",
            "req#5 StmtClose { statement_id: 1 }",
            "resp#5 Some(NoResponse) Complete",
            "req#6 Ping",
            "resp#6 Some(Ok { affected_rows: 0, last_insert_id: 0, warnings: 0 }) Complete",
            "req#7 InitDb { schema: \"analytics\" }",
            "resp#7 Some(Ok { affected_rows: 0, last_insert_id: 0, warnings: 0 }) Complete",
            "req#8 Quit",
            "resp#8 Some(NoResponse) Complete",
        ]
    );
    assert_eq!(c.server_version(), Some("5.5.5-10.11.6-MariaDB-0+deb12u1"));
    assert_eq!(c.schema(), Some("analytics"));
    assert_eq!(c.statement_count(), 0);
    assert_eq!(c.desyncs(), 0);
}

#[test]
fn schema_from_handshake_and_use() {
    let mut c = MySqlConnection::new();
    let s = session();
    run(&mut c, &s[..3]);
    assert_eq!(c.schema(), Some("shop"));
    run(
        &mut c,
        &[(C2S, query("USE `billing`")), (S2C, ok(1, 0, 0, 2))],
    );
    assert_eq!(c.schema(), Some("billing"));
    run(
        &mut c,
        &[
            (C2S, query("use nope")),
            (S2C, err(1, 1049, "42000", "Unknown database 'nope'")),
        ],
    );
    assert_eq!(c.schema(), Some("billing"));
}

#[test]
fn every_split_point_gives_the_same_events() {
    let s = session();
    let mut whole = MySqlConnection::new();
    let want = run(&mut whole, &s);
    for (k, (flow, bytes)) in s.iter().enumerate() {
        for i in 0..=bytes.len() {
            let mut c = MySqlConnection::new();
            let mut ev = run(&mut c, &s[..k]);
            c.feed(*flow, &bytes[..i], i as u64, &mut ev);
            c.feed(*flow, &bytes[i..], (bytes.len() - i) as u64, &mut ev);
            ev.extend(run(&mut c, &s[k + 1..]));
            assert_eq!(ev, want, "chunk {k} split at {i}");
        }
    }
}

#[test]
fn byte_at_a_time_and_all_in_one_direction_chunks() {
    let s = session();
    let mut whole = MySqlConnection::new();
    let want = run(&mut whole, &s);
    let mut c = MySqlConnection::new();
    let mut ev = Vec::new();
    for (flow, bytes) in &s {
        for b in bytes {
            c.feed(*flow, std::slice::from_ref(b), 1, &mut ev);
        }
    }
    assert_eq!(ev, want);
}

#[test]
fn many_rows_in_one_chunk_are_counted() {
    let mut c = MySqlConnection::new();
    let ev = run(
        &mut c,
        &[
            (C2S, query("SELECT id, name FROM users")),
            (S2C, result_set(300)),
        ],
    );
    assert_eq!(
        summary(&ev)[1],
        "resp#0 Some(ResultSet { columns: 2, rows: Some(300) }) Complete"
    );
}

#[test]
fn large_result_set_outside_the_capture_ends_at_the_next_command() {
    let mut c = MySqlConnection::new();
    let mut ev = run(&mut c, &[(C2S, query("SELECT id, name FROM users"))]);
    let rs = result_set(2000);
    // The server flushes 16 KiB writes, not aligned to packets; 512 bytes of each captured.
    for part in rs.chunks(16 * 1024) {
        c.feed(
            S2C,
            &part[..part.len().min(512)],
            part.len() as u64,
            &mut ev,
        );
    }
    assert_eq!(summary(&ev), ["req#0 COM_QUERY SELECT id, name FROM users"]);
    ev.extend(run(
        &mut c,
        &[(C2S, pkt(0, &[0x0e])), (S2C, ok(1, 0, 0, 2))],
    ));
    assert_eq!(
        summary(&ev)[1..],
        [
            "resp#0 Some(ResultSet { columns: 2, rows: None }) Unknown",
            "req#1 Ping",
            "resp#1 Some(Ok { affected_rows: 0, last_insert_id: 0, warnings: 0 }) Complete",
        ]
    );
}

#[test]
fn fully_captured_final_chunk_ending_in_eof_completes_a_lost_result_set() {
    let mut c = MySqlConnection::new();
    let mut ev = run(&mut c, &[(C2S, query("SELECT id, name FROM users"))]);
    let rs = result_set(2000);
    let (head, tail) = rs.split_at(rs.len() - 300);
    c.feed(S2C, &head[..512], head.len() as u64, &mut ev);
    c.feed(S2C, tail, tail.len() as u64, &mut ev);
    assert_eq!(
        summary(&ev)[1],
        "resp#0 Some(ResultSet { columns: 2, rows: None }) Complete"
    );
}

#[test]
fn big_query_outside_the_capture_is_skipped_by_count() {
    let sql = format!(
        "INSERT INTO blobs (data) VALUES ('{}')",
        "x".repeat(100_000)
    );
    let q = query(&sql);
    let mut c = MySqlConnection::new();
    let mut ev = Vec::new();
    c.feed(C2S, &q[..512], q.len() as u64, &mut ev);
    ev.extend(run(
        &mut c,
        &[
            (S2C, ok(1, 1, 0, 2)),
            (C2S, pkt(0, &[0x0e])),
            (S2C, ok(1, 0, 0, 2)),
        ],
    ));
    let Event::Request {
        command: Command::Query {
            sql: got,
            truncated,
        },
        ..
    } = &ev[0]
    else {
        panic!("{ev:?}")
    };
    assert!(*truncated);
    assert_eq!(got.len(), 512 - 5);
    assert!(sql.starts_with(got.as_str()));
    assert_eq!(ev.len(), 4);
    assert!(matches!(
        ev[1],
        Event::Response {
            response: Some(Response::Ok {
                affected_rows: 1,
                ..
            }),
            end: End::Complete,
            ..
        }
    ));
    assert_eq!(c.desyncs(), 0);
}

#[test]
fn deprecate_eof_result_sets() {
    let caps = BASE_CAPS | CLIENT_DEPRECATE_EOF;
    let mut rs = pkt(1, &[0x01]);
    rs.extend(pkt(2, &coldef("shop", "t", "n", 0x08)));
    rs.extend(text_row(3, &["1"]));
    rs.extend(text_row(4, &["2"]));
    rs.extend(pkt(5, &[0xfe, 0, 0, 0x02, 0, 0, 0]));
    let mut empty = pkt(1, &[0x01]);
    empty.extend(pkt(2, &coldef("shop", "t", "n", 0x08)));
    empty.extend(pkt(3, &[0xfe, 0, 0, 0x02, 0, 0, 0]));
    for known_caps in [true, false] {
        let mut c = MySqlConnection::new();
        if known_caps {
            run(
                &mut c,
                &[
                    (S2C, mariadb_greeting()),
                    (C2S, handshake_response(caps, "shop")),
                    (S2C, ok(2, 0, 0, 2)),
                ],
            );
        }
        let ev = run(
            &mut c,
            &[
                (C2S, query("SELECT n FROM t")),
                (S2C, rs.clone()),
                (C2S, query("SELECT n FROM t WHERE 0")),
                (S2C, empty.clone()),
            ],
        );
        assert_eq!(
            summary(&ev),
            [
                "req#0 COM_QUERY SELECT n FROM t",
                "resp#0 Some(ResultSet { columns: 1, rows: Some(2) }) Complete",
                "req#1 COM_QUERY SELECT n FROM t WHERE 0",
                "resp#1 Some(ResultSet { columns: 1, rows: Some(0) }) Complete",
            ],
            "capabilities known: {known_caps}"
        );
    }
}

#[test]
fn mid_connection_attach_and_classic_empty_set() {
    let mut rs = pkt(1, &[0x01]);
    rs.extend(pkt(2, &coldef("shop", "t", "n", 0x08)));
    rs.extend(eof(3, 2));
    rs.extend(eof(4, 2));
    let mut c = MySqlConnection::new();
    let ev = run(
        &mut c,
        &[
            (S2C, ok(7, 0, 0, 2)),
            (C2S, query("SELECT n FROM t WHERE 0")),
            (S2C, rs),
        ],
    );
    assert_eq!(
        summary(&ev)[1],
        "resp#0 Some(ResultSet { columns: 1, rows: Some(0) }) Complete"
    );
}

#[test]
fn ssl_request_makes_the_connection_opaque() {
    let mut ssl = (BASE_CAPS | CLIENT_SSL).to_le_bytes().to_vec();
    ssl.extend_from_slice(&0x0100_0000u32.to_le_bytes());
    ssl.push(0x2d);
    ssl.extend_from_slice(&[0; 23]);
    let mut c = MySqlConnection::new();
    let ev = run(
        &mut c,
        &[
            (S2C, mariadb_greeting()),
            (C2S, pkt(1, &ssl)),
            (C2S, b"\x16\x03\x01\x00\xa5\x01".to_vec()),
            (C2S, query("SELECT 1")),
        ],
    );
    assert!(ev.is_empty());
    assert!(c.is_opaque());
}

#[test]
fn compression_makes_the_connection_opaque() {
    let mut c = MySqlConnection::new();
    let ev = run(
        &mut c,
        &[
            (S2C, mariadb_greeting()),
            (C2S, handshake_response(BASE_CAPS | CLIENT_COMPRESS, "shop")),
            (S2C, ok(2, 0, 0, 2)),
            (C2S, query("SELECT 1")),
        ],
    );
    assert!(ev.is_empty());
    assert!(c.is_opaque());
}

#[test]
fn auth_switch_during_handshake() {
    let mut c = MySqlConnection::new();
    let ev = run(
        &mut c,
        &[
            (S2C, mariadb_greeting()),
            (C2S, handshake_response(BASE_CAPS, "shop")),
            (
                S2C,
                pkt(2, b"\xfecaching_sha2_password\0abcdefghijklmnopqrst\0"),
            ),
            (C2S, pkt(3, &[0x11; 32])),
            (S2C, pkt(4, &[0x01, 0x03])),
            (S2C, ok(5, 0, 0, 2)),
            (C2S, query("SELECT 1")),
            (S2C, ok(1, 0, 0, 2)),
        ],
    );
    assert_eq!(
        summary(&ev),
        [
            "req#0 COM_QUERY SELECT 1",
            "resp#0 Some(Ok { affected_rows: 0, last_insert_id: 0, warnings: 0 }) Complete"
        ]
    );
}

#[test]
fn change_user_local_infile_multi_results_and_cursor() {
    let mut call = pkt(1, &[0x01]);
    call.extend(pkt(2, &coldef("", "", "x", 0x08)));
    call.extend(eof(3, 0x0002));
    call.extend(text_row(4, &["1"]));
    call.extend(eof(5, 0x0002 | SERVER_MORE_RESULTS_EXISTS));
    call.extend(pkt(6, &[0x01]));
    call.extend(pkt(7, &coldef("", "", "y", 0x08)));
    call.extend(eof(8, 0x0002));
    call.extend(text_row(9, &["2"]));
    call.extend(text_row(10, &["3"]));
    call.extend(eof(11, 0x0002 | SERVER_MORE_RESULTS_EXISTS));
    call.extend(ok(12, 0, 0, 0x0002));
    let mut cursor = pkt(1, &[0x01]);
    cursor.extend(pkt(2, &coldef("", "", "x", 0x08)));
    cursor.extend(eof(3, 0x0002 | SERVER_STATUS_CURSOR_EXISTS));
    let mut fetched = pkt(1, &[0x00, 0x00, 7, 0, 0, 0, 0, 0, 0, 0]);
    fetched.extend(eof(2, 0x0002 | 0x0080));
    let mut c = MySqlConnection::new();
    let ev = run(
        &mut c,
        &[
            (C2S, pkt(0, b"\x11other\0\x14AAAAAAAAAAAAAAAAAAAAshop\0")),
            (
                S2C,
                pkt(1, b"\xfemysql_native_password\0saltsaltsaltsaltsalt\0"),
            ),
            (C2S, pkt(2, &[0x22; 20])),
            (S2C, ok(3, 0, 0, 2)),
            (C2S, query("LOAD DATA LOCAL INFILE 'rows.csv' INTO TABLE t")),
            (S2C, pkt(1, b"\xfbrows.csv")),
            (C2S, pkt(2, b"1,2\n3,4\n")),
            (C2S, pkt(3, b"")),
            (S2C, ok(4, 2, 0, 2)),
            (C2S, query("CALL two_sets()")),
            (S2C, call),
            (C2S, pkt(0, &[0x17, 9, 0, 0, 0, 0x01, 1, 0, 0, 0])),
            (S2C, cursor),
            (C2S, pkt(0, &[0x1c, 9, 0, 0, 0, 10, 0, 0, 0])),
            (S2C, fetched),
        ],
    );
    assert_eq!(
        summary(&ev),
        [
            "req#0 ChangeUser",
            "resp#0 Some(Ok { affected_rows: 0, last_insert_id: 0, warnings: 0 }) Complete",
            "req#1 COM_QUERY LOAD DATA LOCAL INFILE 'rows.csv' INTO TABLE t",
            "resp#1 Some(Ok { affected_rows: 2, last_insert_id: 0, warnings: 0 }) Complete",
            "req#2 COM_QUERY CALL two_sets()",
            "resp#2 Some(ResultSet { columns: 1, rows: Some(3) }) Complete",
            "req#3 StmtExecute { statement_id: 9, sql: None }",
            "resp#3 Some(ResultSet { columns: 1, rows: Some(0) }) Complete",
            "req#4 StmtFetch { statement_id: 9 }",
            "resp#4 Some(ResultSet { columns: 0, rows: Some(1) }) Complete",
        ]
    );
}

#[test]
fn query_attributes() {
    // CLIENT_QUERY_ATTRIBUTES known from the handshake: no attributes, then one string one.
    let caps = BASE_CAPS | CLIENT_QUERY_ATTRIBUTES;
    let with_attr = pkt(
        0,
        &[
            &[0x03, 0x01, 0x01, 0x00, 0x01, 0xfe, 0x00][..],
            &lenenc_str(b"trace"),
            &lenenc_str(b"abc"),
            b"SELECT 2",
        ]
        .concat(),
    );
    let mut c = MySqlConnection::new();
    run(
        &mut c,
        &[
            (S2C, mariadb_greeting()),
            (C2S, handshake_response(caps, "shop")),
            (S2C, ok(2, 0, 0, 2)),
        ],
    );
    let ev = run(
        &mut c,
        &[
            (C2S, pkt(0, b"\x03\x00\x01SELECT 1")),
            (S2C, ok(1, 0, 0, 2)),
            (C2S, with_attr),
            (S2C, ok(1, 0, 0, 2)),
        ],
    );
    assert_eq!(summary(&ev)[0], "req#0 COM_QUERY SELECT 1");
    assert_eq!(summary(&ev)[2], "req#1 COM_QUERY SELECT 2");
    // Unknown capabilities: a control byte after the command byte means attributes.
    let mut c = MySqlConnection::new();
    let ev = run(&mut c, &[(C2S, pkt(0, b"\x03\x00\x01SELECT 1"))]);
    assert_eq!(summary(&ev)[0], "req#0 COM_QUERY SELECT 1");
}

#[test]
fn statement_map_is_bounded() {
    let mut c = MySqlConnection::new();
    for id in 1..=300u32 {
        let sql = format!("SELECT {id} FROM t WHERE a = ?");
        let mut resp = pkt(
            1,
            &[&[0x00][..], &id.to_le_bytes(), &[0, 0, 0, 0, 0, 0, 0]].concat(),
        );
        resp.truncate(resp.len());
        run(
            &mut c,
            &[
                (C2S, pkt(0, &[&[0x16][..], sql.as_bytes()].concat())),
                (S2C, resp),
            ],
        );
    }
    assert_eq!(c.statement_count(), MAX_STATEMENTS);
    let exec = |id: u32| {
        pkt(
            0,
            &[&[0x17][..], &id.to_le_bytes(), &[0, 1, 0, 0, 0]].concat(),
        )
    };
    let ev = run(
        &mut c,
        &[
            (C2S, exec(1)),
            (S2C, ok(1, 0, 0, 2)),
            (C2S, exec(300)),
            (S2C, ok(1, 0, 0, 2)),
        ],
    );
    assert_eq!(
        summary(&ev)[0],
        "req#300 StmtExecute { statement_id: 1, sql: None }"
    );
    assert_eq!(
        summary(&ev)[2],
        "req#301 COM_STMT_EXECUTE SELECT 300 FROM t WHERE a = ?"
    );
    assert!(c.buffered_bytes() < MAX_STATEMENT_BYTES + 64 * 1024);
}

#[test]
fn statement_bytes_are_bounded() {
    let mut c = MySqlConnection::new();
    for id in 1..=100u32 {
        let sql = format!("SELECT '{}' FROM t{id}", "x".repeat(3000));
        let resp = pkt(
            1,
            &[&[0x00][..], &id.to_le_bytes(), &[0, 0, 0, 0, 0, 0, 0]].concat(),
        );
        run(
            &mut c,
            &[
                (C2S, pkt(0, &[&[0x16][..], sql.as_bytes()].concat())),
                (S2C, resp),
            ],
        );
    }
    assert!(c.statement_bytes <= MAX_STATEMENT_BYTES);
    assert!(c.statement_count() < 30);
}

#[test]
fn close_and_sequence_mismatch() {
    let mut c = MySqlConnection::new();
    let mut ev = run(&mut c, &[(C2S, query("SELECT SLEEP(100)"))]);
    c.close(&mut ev);
    assert_eq!(summary(&ev)[1], "resp#0 None Incomplete");

    let mut c = MySqlConnection::new();
    let mut ev = run(&mut c, &[(C2S, query("SELECT 1")), (S2C, ok(3, 0, 0, 2))]);
    assert_eq!(c.desyncs(), 1);
    ev.extend(run(
        &mut c,
        &[(C2S, query("SELECT 2")), (S2C, ok(1, 0, 0, 2))],
    ));
    assert_eq!(
        summary(&ev),
        [
            "req#0 COM_QUERY SELECT 1",
            "resp#0 None Unknown",
            "req#1 COM_QUERY SELECT 2",
            "resp#1 Some(Ok { affected_rows: 0, last_insert_id: 0, warnings: 0 }) Complete",
        ]
    );
}

#[test]
fn continuation_packets_are_absorbed() {
    // A 16 MiB + 10 byte COM_QUERY: one full packet and a continuation.
    let mut c = MySqlConnection::new();
    let mut ev = Vec::new();
    let mut first = vec![0xff, 0xff, 0xff, 0x00, 0x03];
    first.extend_from_slice(b"INSERT INTO t VALUES ('");
    c.feed(C2S, &first, 4 + u64::from(MAX_PAYLOAD), &mut ev);
    let mut second = vec![10, 0, 0, 1];
    second.extend_from_slice(b"xxxxxxx')\n");
    c.feed(C2S, &second, second.len() as u64, &mut ev);
    ev.extend(run(&mut c, &[(S2C, ok(2, 1, 0, 2))]));
    assert_eq!(ev.len(), 2, "{ev:?}");
    assert!(matches!(
        &ev[0],
        Event::Request {
            command: Command::Query {
                truncated: true,
                ..
            },
            ..
        }
    ));
    assert!(matches!(
        &ev[1],
        Event::Response {
            response: Some(Response::Ok { .. }),
            ..
        }
    ));
}

#[test]
fn client_resyncs_after_lost_framing() {
    let mut c = MySqlConnection::new();
    let mut ev = Vec::new();
    // Two commands in one write, the second's header beyond the capture.
    let two = [query("SELECT 1"), query("SELECT 2")].concat();
    c.feed(C2S, &two[..8], two.len() as u64, &mut ev);
    c.feed(C2S, b"garbage that is not a packet", 28, &mut ev);
    ev.extend(run(
        &mut c,
        &[
            (S2C, ok(1, 0, 0, 2)),
            (C2S, query("SELECT 3")),
            (S2C, ok(1, 0, 0, 2)),
        ],
    ));
    assert_eq!(
        summary(&ev),
        [
            "req#0 COM_QUERY SEL",
            "resp#0 Some(Ok { affected_rows: 0, last_insert_id: 0, warnings: 0 }) Complete",
            "req#1 COM_QUERY SELECT 3",
            "resp#1 Some(Ok { affected_rows: 0, last_insert_id: 0, warnings: 0 }) Complete",
        ]
    );
}

#[test]
fn greeting_parser() {
    let g = mariadb_greeting();
    assert_eq!(
        parse_greeting(&g[4..]).as_deref(),
        Some("5.5.5-10.11.6-MariaDB-0+deb12u1")
    );
    assert_eq!(
        parse_greeting(b"\x0a8.0.36\0rest").as_deref(),
        Some("8.0.36")
    );
    assert_eq!(parse_greeting(b"\x0a\0"), None);
    assert_eq!(parse_greeting(b"\x0a8.0 no nul"), None);
    assert_eq!(parse_greeting(b"\x098.0.36\0"), None);
}

#[test]
fn use_statement_parsing() {
    assert_eq!(use_schema("USE shop").as_deref(), Some("shop"));
    assert_eq!(use_schema("  use `my db`;").as_deref(), None);
    assert_eq!(use_schema("use `billing`;").as_deref(), Some("billing"));
    assert_eq!(use_schema("user_count"), None);
    assert_eq!(use_schema("USÉ x"), None);
}
