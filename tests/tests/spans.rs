//! Network spans end to end on the real kernel: real MariaDB and Redis, a real threaded HTTP service
//! (Python's http.server with PyMySQL and redis-py) calling a second one, clients from two HTTP
//! implementations (curl and Python's urllib), with and without `traceparent`; the release agent
//! writes OTLP/JSON spans and serves RED histograms, and we check both.

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::PathBuf,
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use loupe_tests::{
    Guard, SPAN_KIND_CLIENT, SPAN_KIND_SERVER, SpanRecord, agent_bin, http_get_raw,
    infra::{free_port, infra},
    read_spans, require_root, wait_with_deadline,
};

/// How long a service or the agent may take to listen.
const LISTEN_LIMIT: Duration = Duration::from_secs(30);

fn wait_port(port: u16) {
    loupe_tests::wait_port(port, LISTEN_LIMIT);
}

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";

fn python() -> PathBuf {
    std::env::var_os("LOUPE_PYTHON")
        .map(PathBuf::from)
        .filter(|p| p.exists())
        .expect("LOUPE_PYTHON (a Python with PyMySQL and redis-py): run the tests with `cargo xtask test`")
}

fn service_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("servers/py_service.py")
}

fn mariadb(port: u16, sql: &str) {
    let status = Command::new(loupe_tests::infra::find_bin("mariadb").expect("mariadb client"))
        .args([
            "-h",
            "127.0.0.1",
            "-P",
            &port.to_string(),
            "-ushop",
            "-pshop",
            "-e",
            sql,
        ])
        .status()
        .expect("run mariadb client");
    assert!(status.success(), "mariadb -e {sql:?} failed");
}

fn curl(url: &str) -> String {
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", url])
        .output()
        .expect("curl (Debian package curl)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn urllib_with_traceparent(url: &str) -> String {
    let code = format!(
        "import urllib.request as u\nr=u.Request({url:?},headers={{'traceparent':'00-{TRACE_ID}-{PARENT_ID}-01'}})\nprint(u.urlopen(r).status)"
    );
    let out = Command::new(python())
        .args(["-c", &code])
        .output()
        .expect("python client");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn children<'a>(spans: &'a [SpanRecord], parent: &SpanRecord) -> Vec<&'a SpanRecord> {
    spans
        .iter()
        .filter(|s| s.parent_span_id == parent.span_id && s.trace_id == parent.trace_id)
        .collect()
}

#[test]
fn http_mysql_and_redis_become_linked_spans_and_red_metrics() {
    require_root();
    let infra = infra();
    mariadb(
        infra.mysql_port,
        "CREATE DATABASE IF NOT EXISTS loupe_test; \
         CREATE TABLE IF NOT EXISTS loupe_test.users (id INT PRIMARY KEY, name VARCHAR(64)); \
         REPLACE INTO loupe_test.users VALUES (1, 'ada'), (2, 'grace'), (3, 'linus');",
    );
    // Start from an empty cache so the first request of each user misses.
    let mut redis = TcpStream::connect(("127.0.0.1", infra.redis_port)).expect("redis");
    redis.write_all(b"*1\r\n$8\r\nFLUSHALL\r\n").expect("flush");
    let mut ok = [0u8; 5];
    redis.read_exact(&mut ok).expect("flush reply");
    drop(redis);

    let dir = tempfile::tempdir().expect("tempdir");
    let metrics_port = free_port();
    let agent = Guard(
        Command::new(agent_bin())
            .args(["run", "--duration", "20s", "--profile-interval", "60s"])
            .args([
                "--metrics-addr",
                &format!("127.0.0.1:{metrics_port}"),
                "--output-dir",
            ])
            .arg(dir.path())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start agent"),
    );
    // The services after the agent, so their connections are seen from the first byte.
    wait_port(metrics_port);

    let (users_port, stock_port) = (free_port(), free_port());
    let _stock = Guard(
        Command::new(python())
            .arg(service_script())
            .args(["--port", &stock_port.to_string()])
            .env("OTEL_SERVICE_NAME", "stock-svc")
            .stdout(Stdio::null())
            .spawn()
            .expect("start stock service"),
    );
    let _users = Guard(
        Command::new(python())
            .arg(service_script())
            .args(["--port", &users_port.to_string()])
            .args(["--mysql-port", &infra.mysql_port.to_string()])
            .args(["--redis-port", &infra.redis_port.to_string()])
            .args(["--downstream", &format!("127.0.0.1:{stock_port}")])
            .env("OTEL_SERVICE_NAME", "users-svc")
            .stdout(Stdio::null())
            .spawn()
            .expect("start users service"),
    );
    wait_port(stock_port);
    wait_port(users_port);

    let base = format!("http://127.0.0.1:{users_port}");
    assert_eq!(curl(&format!("{base}/users/1")), "200"); // miss: Redis GET, MySQL SELECT, Redis SET
    assert_eq!(curl(&format!("{base}/users/1")), "200"); // hit
    assert_eq!(curl(&format!("{base}/users/3")), "200"); // miss
    assert_eq!(urllib_with_traceparent(&format!("{base}/users/2")), "200");
    assert_eq!(curl(&format!("{base}/missing")), "500");
    let sent_to_users = 5;

    // Let the span builder flush, then read the RED metrics while the agent still runs.
    thread::sleep(Duration::from_secs(4));
    let metrics = http_get_raw(metrics_port, "/metrics");
    let mut agent = agent;
    let status = wait_with_deadline(&mut agent.0, Duration::from_secs(60));
    let mut stderr = String::new();
    if let Some(mut e) = agent.0.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    assert!(status.success(), "agent failed: {status}\n{stderr}");

    let spans = read_spans(dir.path());
    let users: Vec<&SpanRecord> = spans.iter().filter(|s| s.service == "users-svc").collect();
    let servers: Vec<&SpanRecord> = users
        .iter()
        .copied()
        .filter(|s| s.kind == SPAN_KIND_SERVER)
        .collect();
    assert_eq!(
        servers.len(),
        sent_to_users,
        "server spans of users-svc: {servers:#?}\nagent said:\n{stderr}"
    );

    // HTTP server spans: names, attributes, durations.
    let by_path = |p: &'static str| {
        servers
            .iter()
            .copied()
            .filter(move |s| s.attributes.get("url.path").map(String::as_str) == Some(p))
    };
    for s in &servers {
        assert!(s.end_ns > s.start_ns, "{s:?}");
        assert_eq!(
            s.attributes.get("http.request.method").map(String::as_str),
            Some("GET")
        );
    }
    let user1: Vec<_> = by_path("/users/1").collect();
    assert_eq!(user1.len(), 2);
    assert_eq!(user1[0].name, "GET /users/{id}");
    assert_eq!(
        user1[0].attributes.get("http.route").map(String::as_str),
        Some("/users/{id}")
    );
    assert_eq!(
        user1[0]
            .attributes
            .get("http.response.status_code")
            .map(String::as_str),
        Some("200")
    );
    assert_eq!(
        user1[0].attributes.get("server.port").map(String::as_str),
        Some(users_port.to_string().as_str())
    );

    // The first /users/1 missed the cache: Redis GET, MySQL SELECT (sanitized), Redis SET and the
    // call to the stock service, all children of its server span; the second hit Redis only.
    let (miss, hit) = if children(&spans, user1[0]).len() > children(&spans, user1[1]).len() {
        (user1[0], user1[1])
    } else {
        (user1[1], user1[0])
    };
    let miss_children = children(&spans, miss);
    let db = |system: &str, op: &str| {
        miss_children
            .iter()
            .find(|s| {
                s.attributes.get("db.system.name").map(String::as_str) == Some(system)
                    && s.attributes.get("db.operation.name").map(String::as_str) == Some(op)
            })
            .copied()
            .unwrap_or_else(|| panic!("no {system} {op} child of the miss: {miss_children:#?}"))
    };
    let select = db("mysql", "SELECT");
    assert_eq!(select.kind, SPAN_KIND_CLIENT);
    let query = select
        .attributes
        .get("db.query.text")
        .cloned()
        .unwrap_or_default();
    assert!(query.contains("FROM users WHERE id = ?"), "{query}");
    assert!(!query.contains('1'), "literal not sanitized: {query}");
    db("redis", "GET");
    db("redis", "SET");
    let call = miss_children
        .iter()
        .find(|s| s.kind == SPAN_KIND_CLIENT && s.attributes.contains_key("http.request.method"))
        .copied()
        .unwrap_or_else(|| panic!("no HTTP client child: {miss_children:#?}"));
    assert_eq!(
        call.attributes
            .get("http.response.status_code")
            .map(String::as_str),
        Some("200")
    );
    let hit_children = children(&spans, hit);
    assert!(
        hit_children
            .iter()
            .all(|s| s.attributes.get("db.system.name").map(String::as_str) != Some("mysql")),
        "a cache hit must not query MySQL: {hit_children:#?}"
    );

    // Both ends on this host: the stock service's server span is the child of the users service's
    // client span, in the same trace, with no SDK anywhere.
    let stock_server = spans
        .iter()
        .find(|s| {
            s.service == "stock-svc"
                && s.kind == SPAN_KIND_SERVER
                && s.parent_span_id == call.span_id
        })
        .unwrap_or_else(|| {
            panic!(
                "no stock-svc server span under {call:#?}: {:#?}",
                spans
                    .iter()
                    .filter(|s| s.service == "stock-svc")
                    .collect::<Vec<_>>()
            )
        });
    assert_eq!(stock_server.trace_id, call.trace_id);

    // traceparent: the server span joins the caller's trace, its parent is the caller's span, and
    // its children carry the trace on.
    let joined = by_path("/users/2").next().expect("a /users/2 span");
    assert_eq!(joined.trace_id, TRACE_ID);
    if joined.parent_span_id != PARENT_ID {
        // The urllib client runs on this host too, so its own client span sits in between: it
        // carries the header it sent (trace and parent), and the server span hangs below it.
        let client = spans
            .iter()
            .find(|s| s.span_id == joined.parent_span_id)
            .unwrap_or_else(|| panic!("parent of {joined:#?} not found"));
        assert_eq!(client.kind, SPAN_KIND_CLIENT, "{client:#?}");
        assert_eq!(client.trace_id, TRACE_ID, "{client:#?}");
        assert_eq!(client.parent_span_id, PARENT_ID, "{client:#?}");
    }
    assert!(
        children(&spans, joined)
            .iter()
            .all(|c| c.trace_id == TRACE_ID)
    );
    assert!(!children(&spans, joined).is_empty());
    // Without traceparent each request starts a trace of its own.
    assert_ne!(miss.trace_id, hit.trace_id);
    // curl runs on this host: its client span is the root, the server span its child. (curl exits
    // at once, so its service name may come out as its command name or unknown: not checked.)
    let root = spans
        .iter()
        .find(|s| s.span_id == miss.parent_span_id)
        .unwrap_or_else(|| panic!("the miss has a parent that was never emitted: {miss:#?}"));
    assert_eq!(root.kind, SPAN_KIND_CLIENT, "{root:#?}");
    assert!(root.parent_span_id.is_empty(), "{root:#?}");
    assert_eq!(root.trace_id, miss.trace_id);

    // Errors: the missing table is a 500 server span and a MySQL span with the server's error code.
    let failed = by_path("/missing").next().expect("a /missing span");
    assert_eq!(
        failed
            .attributes
            .get("http.response.status_code")
            .map(String::as_str),
        Some("500")
    );
    assert_eq!(
        failed.status_code, 2,
        "5xx is an error on the server: {failed:?}"
    );
    let err = children(&spans, failed)
        .into_iter()
        .find(|s| {
            s.attributes.get("db.system.name").map(String::as_str) == Some("mysql")
                && s.attributes.get("db.operation.name").map(String::as_str) == Some("SELECT")
        })
        .expect("the failing query's span");
    assert_eq!(
        err.attributes
            .get("db.response.status_code")
            .map(String::as_str),
        Some("1146"),
        "{err:#?}"
    );
    assert_eq!(
        err.attributes
            .get("db.response.status_code")
            .map(String::as_str),
        Some("1146")
    );
    assert_eq!(err.status_code, 2);

    // RED metrics count exactly the requests sent.
    let count = |prefix: &str, needle: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(prefix) && l.contains(needle))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert_eq!(
        count("http_server_request_duration_seconds_count", "users-svc"),
        sent_to_users as f64,
        "{metrics}"
    );
    // Every /users request calls the stock service once.
    assert_eq!(
        count("http_server_request_duration_seconds_count", "stock-svc"),
        4.0,
        "{metrics}"
    );
    assert!(
        count("db_client_operation_duration_seconds_count", "mysql") >= 3.0,
        "{metrics}"
    );
}
