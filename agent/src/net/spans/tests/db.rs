//! MySQL and Redis client spans.

use super::*;

#[test]
fn mysql_queries_ok_and_err() {
    let mut s = Sim::new();
    let db = mysql_client(&mut s);
    let q = b"\x03SELECT name FROM users WHERE email = 'alice@example.com' AND id IN (1, 2, 3)";
    s.write(&db, 7, 100, 110, &pkt(0, q));
    let mut rs = pkt(1, &[1]);
    rs.extend(pkt(2, &column_def()));
    rs.extend(pkt(3, EOF));
    rs.extend(pkt(4, b"\x05alice"));
    rs.extend(pkt(5, EOF));
    s.read(&db, 7, 110, 300, &rs);
    s.write(
        &db,
        7,
        400,
        410,
        &pkt(
            0,
            b"\x03INSERT INTO users (email) VALUES ('bob@example.com')",
        ),
    );
    let mut err = vec![0xff];
    err.extend_from_slice(&1062u16.to_le_bytes());
    err.extend_from_slice(b"#23000Duplicate entry 'bob@example.com' for key 'email'");
    s.read(&db, 7, 410, 500, &pkt(1, &err));

    let spans = s.spans();
    assert_eq!(spans.len(), 2, "the handshake is not a span");
    let select = &spans[0].1;
    assert_eq!(select.name, "SELECT users");
    assert_eq!(select.kind, 3);
    assert_eq!(a(select, "db.system.name").as_deref(), Some("mysql"));
    assert_eq!(a(select, "db.operation.name").as_deref(), Some("SELECT"));
    assert_eq!(a(select, "db.collection.name").as_deref(), Some("users"));
    assert_eq!(a(select, "db.namespace").as_deref(), Some("shopdb"));
    assert_eq!(
        a(select, "db.query.text").as_deref(),
        Some("SELECT name FROM users WHERE email = ? AND id IN (?)")
    );
    assert_eq!(a(select, "server.address").as_deref(), Some("10.0.0.7"));
    assert_eq!(a(select, "server.port").as_deref(), Some("3306"));
    assert_eq!(select.start_time_unix_nano, s.unix(100));
    assert_eq!(select.end_time_unix_nano, s.unix(300));
    assert!(!is_error(select));

    let insert = &spans[1].1;
    assert_eq!(insert.name, "INSERT users");
    assert!(is_error(insert));
    assert_eq!(
        a(insert, "db.response.status_code").as_deref(),
        Some("1062")
    );
    assert_eq!(a(insert, "error.type").as_deref(), Some("1062"));
    assert_eq!(
        a(insert, "db.query.text").as_deref(),
        Some("INSERT INTO users (email) VALUES (?)")
    );
    let text = format!("{spans:?}");
    assert!(
        !text.contains("bob@example.com") && !text.contains("alice@"),
        "values leaked"
    );
    assert_eq!(
        s.metric("db_client_operation_duration_seconds_count{db_operation_name=\"INSERT\",db_system_name=\"mysql\",error_type=\"1062\",service_name=\"svc100\"}"),
        1
    );
}

#[test]
fn mysql_unsanitized_keeps_literals_and_messages() {
    let mut s = Sim::with(SpanBuilderConfig {
        sanitize_queries: false,
        ..SpanBuilderConfig::default()
    });
    let db = mysql_client(&mut s);
    s.write(
        &db,
        7,
        100,
        110,
        &pkt(0, b"\x03SELECT * FROM nope WHERE a = 1"),
    );
    let mut err = vec![0xff];
    err.extend_from_slice(&1146u16.to_le_bytes());
    err.extend_from_slice(b"#42S02Table 'shopdb.nope' doesn't exist");
    s.read(&db, 7, 110, 200, &pkt(1, &err));
    let span = s.spans().remove(0).1;
    assert_eq!(
        a(&span, "db.query.text").as_deref(),
        Some("SELECT * FROM nope WHERE a = 1")
    );
    assert_eq!(
        span.status.unwrap().message,
        "Table 'shopdb.nope' doesn't exist"
    );
}

#[test]
fn mysql_prepared_statements_carry_their_text() {
    let mut s = Sim::new();
    let db = mysql_client(&mut s);
    s.write(
        &db,
        7,
        100,
        110,
        &pkt(0, b"\x16SELECT name FROM users WHERE id = ?"),
    );
    let mut prep = pkt(1, &[0x00, 1, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0]);
    prep.extend(pkt(2, &column_def()));
    prep.extend(pkt(3, EOF));
    prep.extend(pkt(4, &column_def()));
    prep.extend(pkt(5, EOF));
    s.read(&db, 7, 110, 200, &prep);
    let mut exec = vec![0x17, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0x08, 0];
    exec.extend_from_slice(&42u64.to_le_bytes());
    s.write(&db, 7, 300, 310, &pkt(0, &exec));
    let mut rs = pkt(1, &[1]);
    rs.extend(pkt(2, &column_def()));
    rs.extend(pkt(3, EOF));
    rs.extend(pkt(4, b"\x00\x00\x05alice"));
    rs.extend(pkt(5, EOF));
    s.read(&db, 7, 310, 400, &rs);
    // Closing the statement has no response and makes no span.
    s.write(&db, 7, 500, 510, &pkt(0, &[0x19, 1, 0, 0, 0]));

    let spans = s.spans();
    let names: Vec<_> = spans.iter().map(|(_, s)| s.name.as_str()).collect();
    assert_eq!(names, ["PREPARE users", "SELECT users"]);
    let exec = &spans[1].1;
    assert_eq!(
        a(exec, "db.query.text").as_deref(),
        Some("SELECT name FROM users WHERE id = ?")
    );
    assert_eq!(exec.start_time_unix_nano, s.unix(300));
    assert_eq!(exec.end_time_unix_nano, s.unix(400));
}

#[test]
fn mysql_server_side_makes_no_spans() {
    let mut s = Sim::new();
    let mysqld = C {
        role: role::SERVER,
        ..server(1, 50)
    };
    s.write(&mysqld, 7, 0, 10, &greeting());
    s.read(&mysqld, 7, 20, 30, &handshake_response());
    s.write(&mysqld, 7, 30, 40, &pkt(2, &[0, 0, 0, 2, 0, 0, 0]));
    s.read(&mysqld, 7, 100, 110, &pkt(0, b"\x03SELECT 1"));
    s.write(&mysqld, 7, 110, 120, &pkt(1, &[0, 0, 0, 2, 0, 0, 0]));
    assert_eq!(s.b.finished_len(), 0);
    assert_eq!(
        s.metric("loupe_spans_connections_detected_total{protocol=\"mysql\"}"),
        1
    );
}

#[test]
fn redis_pipeline_with_an_error_reply() {
    let mut s = Sim::new();
    let r = client(4, 100, 6379);
    s.write(
        &r,
        7,
        100,
        110,
        b"*3\r\n$3\r\nSET\r\n$7\r\ncart:42\r\n$11\r\n{\"items\":3}\r\n*2\r\n$4\r\nINCR\r\n$7\r\ncart:42\r\n*2\r\n$3\r\nGET\r\n$7\r\ncart:42\r\n",
    );
    s.read(
        &r,
        7,
        110,
        200,
        b"+OK\r\n-ERR value is not an integer or out of range\r\n$11\r\n{\"items\":3}\r\n",
    );
    let spans = s.spans();
    let names: Vec<_> = spans.iter().map(|(_, s)| s.name.as_str()).collect();
    assert_eq!(names, ["SET", "INCR", "GET"]);
    let set = &spans[0].1;
    assert_eq!(a(set, "db.system.name").as_deref(), Some("redis"));
    assert_eq!(a(set, "db.operation.name").as_deref(), Some("SET"));
    assert_eq!(a(set, "db.query.text").as_deref(), Some("SET cart:42 ?"));
    assert!(!is_error(set));
    let incr = &spans[1].1;
    assert!(is_error(incr));
    assert_eq!(a(incr, "db.response.status_code").as_deref(), Some("ERR"));
    assert_eq!(a(incr, "error.type").as_deref(), Some("ERR"));
    assert_eq!(
        incr.status.as_ref().unwrap().message,
        "",
        "messages stay out when sanitizing"
    );
    for (_, span) in &spans {
        assert_eq!(span.start_time_unix_nano, s.unix(100));
        assert_eq!(span.end_time_unix_nano, s.unix(200));
    }
    assert!(!format!("{spans:?}").contains("items"));
}
