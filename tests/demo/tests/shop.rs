//! The demo shop's real binaries against a real MariaDB and Redis: behaviour of the handlers and of every fault
//! switch.

mod common;

use std::time::{Duration, Instant};

use common::{Shop, elf_symbols, http, rss, utime};
use serde_json::Value;

const ALL: [&str; 5] = ["auth", "user", "inventory", "payment", "frontend"];

fn is_json(line: &str) -> bool {
    serde_json::from_str::<Value>(line).is_ok_and(|v| v.is_object())
}

#[test]
fn products_come_from_the_seeded_catalogue() {
    let shop = Shop::start(&["inventory", "frontend"], &[]);
    let r = shop.call("frontend", "GET", "/products", &[], None);
    assert_eq!(r.status, 200, "{}", r.body);
    let products = r.json();
    let products = products.as_array().expect("a list");
    assert_eq!(products.len(), 20);
    assert_eq!(products[0]["name"], "Espresso beans 1kg");
    assert_eq!(products[0]["price_cents"], 2490);
    assert_eq!(products[19]["sku"], "CRD-020");

    let r = shop.call("frontend", "GET", "/products/3", &[], None);
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["product"]["name"], "Hand grinder");
    assert_eq!(v["reviews"], common::REVIEWS / 20);
    let rating = v["rating"].as_f64().expect("rating");
    assert!((1.0..=5.0).contains(&rating), "{rating}");

    assert_eq!(
        shop.call("frontend", "GET", "/products/999", &[], None)
            .status,
        404
    );
    let home = shop.call("frontend", "GET", "/", &[], None);
    assert_eq!(home.status, 200);
    assert!(
        home.header("content-type")
            .is_some_and(|c| c.starts_with("text/html"))
    );
    assert!(home.body.contains("Espresso beans 1kg"), "{}", home.body);

    // Logs: plain life-cycle lines and JSON access lines.
    let logs = shop.logs("frontend");
    assert!(
        logs.iter()
            .any(|l| !is_json(l) && l.contains("INFO  [frontend] listening on")),
        "{logs:#?}"
    );
    let access: Vec<Value> = logs
        .iter()
        .filter(|l| is_json(l))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        access.iter().any(|v| v["msg"] == "request"
            && v["path"] == "/products"
            && v["status"] == 200
            && v["service"] == "frontend"),
        "{logs:#?}"
    );
}

#[test]
fn checkout_takes_stock_and_records_the_payment() {
    let shop = Shop::start(&ALL, &[]);
    let token = shop.login(7);
    let auth = format!("Bearer {token}");
    let stock = |id: u32| shop.sql::<i64>(&format!("SELECT stock FROM products WHERE id = {id}"));
    let (s3, s5) = (stock(3), stock(5));

    let body = r#"{"items":[{"product_id":3,"qty":2},{"product_id":5,"qty":1}]}"#;
    let r = shop.call(
        "frontend",
        "POST",
        "/checkout",
        &[("Authorization", &auth)],
        Some(body),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    // User 7 is bronze in the seed data: no discount.
    assert_eq!(v["subtotal_cents"], 2 * 5900 + 1200);
    assert_eq!(v["total_cents"], 2 * 5900 + 1200);
    assert_eq!(v["user"], "Dennis Hopper");
    assert_eq!((stock(3), stock(5)), (s3 - 2, s5 - 1));
    let order = v["order_id"].as_str().expect("order id").to_string();
    let row = shop.sql::<String>(&format!(
        "SELECT CONCAT(user_id, ':', amount_cents, ':', status) FROM payments WHERE order_id = '{order}'"
    ));
    assert_eq!(row, "7:13000:captured");

    // A gold user gets 10% off.
    let gold = shop.sql::<u64>("SELECT MIN(id) FROM users WHERE tier = 'gold'");
    let gold_auth = format!("Bearer {}", shop.login(gold));
    let r = shop.call(
        "frontend",
        "POST",
        "/checkout",
        &[("Authorization", &gold_auth)],
        Some(r#"{"items":[{"product_id":1,"qty":1}]}"#),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["total_cents"], 2490 - 249);

    // No token, a forged token, an unknown product, not enough stock: refused, nothing taken or paid.
    let payments = shop.sql::<u64>("SELECT COUNT(*) FROM payments");
    assert_eq!(
        shop.call("frontend", "POST", "/checkout", &[], Some(body))
            .status,
        401
    );
    assert_eq!(
        shop.call(
            "frontend",
            "POST",
            "/checkout",
            &[("Authorization", "Bearer u7.0000")],
            Some(body)
        )
        .status,
        401
    );
    let r = shop.call(
        "frontend",
        "POST",
        "/checkout",
        &[("Authorization", &auth)],
        Some(r#"{"items":[{"product_id":99,"qty":1}]}"#),
    );
    assert_eq!(r.status, 404, "{}", r.body);
    shop.sql_exec("UPDATE products SET stock = 1 WHERE id = 19");
    let r = shop.call(
        "frontend",
        "POST",
        "/checkout",
        &[("Authorization", &auth)],
        Some(r#"{"items":[{"product_id":4,"qty":1},{"product_id":19,"qty":2}]}"#),
    );
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(stock(19), 1);
    assert_eq!(
        stock(4),
        100_000,
        "the transaction rolled back product 4 too"
    );
    assert_eq!(shop.sql::<u64>("SELECT COUNT(*) FROM payments"), payments);

    let logs = shop.logs("frontend");
    assert!(
        logs.iter()
            .any(|l| !is_json(l) && l.contains(&format!("checkout ok order={order} user=7"))),
        "{logs:#?}"
    );
}

#[test]
fn user_profiles_are_cached_in_redis() {
    let shop = Shop::start(&["user"], &[("CACHE_TTL_S", "60")]);
    let mut redis = shop.redis();
    let r = shop.call("user", "GET", "/users/7", &[], None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-cache"), Some("miss"));
    assert_eq!(r.json()["email"], "user7@shop.example");
    let ttl: i64 = redis::cmd("TTL")
        .arg("user:7")
        .query(&mut redis)
        .expect("TTL");
    assert!((1..=60).contains(&ttl), "user:7 TTL {ttl}");
    let cached: String = redis::cmd("GET")
        .arg("user:7")
        .query(&mut redis)
        .expect("GET");
    assert!(cached.contains("Dennis Hopper"), "{cached}");

    let r = shop.call("user", "GET", "/users/7", &[], None);
    assert_eq!(r.header("x-cache"), Some("hit"));
    assert_eq!(r.json()["name"], "Dennis Hopper");
    assert_eq!(
        (
            shop.stat("user", "cache_hits"),
            shop.stat("user", "cache_misses")
        ),
        (1, 1)
    );
    assert_eq!(
        shop.stat("user", "sql_queries"),
        1,
        "a hit does not touch MySQL"
    );

    let _: () = redis::cmd("DEL")
        .arg("user:7")
        .query(&mut redis)
        .expect("DEL");
    assert_eq!(
        shop.call("user", "GET", "/users/7", &[], None)
            .header("x-cache"),
        Some("miss")
    );
    assert_eq!(
        shop.call("user", "GET", "/users/12345", &[], None).status,
        404
    );
}

#[test]
fn cache_off_makes_every_lookup_miss_or_skip_redis() {
    let shop = Shop::start(&["user"], &[]);
    let mut redis = shop.redis();
    let count = |shop: &Shop| {
        (
            shop.stat("user", "sql_queries"),
            shop.stat("user", "redis_commands"),
        )
    };

    shop.fault("user", "cache-off", "on=1&mode=miss");
    let (sql0, redis0) = count(&shop);
    for _ in 0..5 {
        let r = shop.call("user", "GET", "/users/3", &[], None);
        assert_eq!((r.status, r.header("x-cache")), (200, Some("miss")));
    }
    let (sql1, redis1) = count(&shop);
    assert_eq!(sql1 - sql0, 5, "every request reads MySQL");
    assert_eq!(redis1 - redis0, 10, "every request is a GET miss and a SET");
    let exists: i64 = redis::cmd("EXISTS")
        .arg("user:3")
        .query(&mut redis)
        .expect("EXISTS");
    assert_eq!(exists, 0, "the real key is never written");

    shop.fault("user", "cache-off", "on=1&mode=bypass");
    for _ in 0..5 {
        assert_eq!(
            shop.call("user", "GET", "/users/3", &[], None)
                .header("x-cache"),
            Some("bypass")
        );
    }
    let (sql2, redis2) = count(&shop);
    assert_eq!((sql2 - sql1, redis2 - redis1), (5, 0), "bypass: MySQL only");

    shop.fault("user", "cache-off", "on=0");
    assert_eq!(
        shop.call("user", "GET", "/users/3", &[], None)
            .header("x-cache"),
        Some("miss")
    );
    assert_eq!(
        shop.call("user", "GET", "/users/3", &[], None)
            .header("x-cache"),
        Some("hit")
    );
}

#[test]
fn error_burst_fails_the_configured_share_with_5xx() {
    let shop = Shop::start(&ALL, &[]);
    shop.fault("payment", "error-burst", "on=1&ratio=0.5&status=503");
    let mut statuses = Vec::new();
    for i in 0..20 {
        let body = format!(r#"{{"order_id":"t-{i}","user_id":1,"amount_cents":100}}"#);
        statuses.push(
            shop.call("payment", "POST", "/payments", &[], Some(&body))
                .status,
        );
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 503).count(),
        10,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        10,
        "{statuses:?}"
    );
    assert_eq!(shop.stat("payment", "errors"), 10);
    let logs = shop.logs("payment");
    let errors = logs
        .iter()
        .filter(|l| is_json(l) && l.contains(r#""level":"error""#) && l.contains("error-burst"))
        .count();
    assert_eq!(errors, 10, "one JSON error line per injected failure");

    // Through the frontend a failed payment is a 502, and the reserved stock is given back.
    shop.fault("payment", "error-burst", "on=1&ratio=1");
    let auth = format!("Bearer {}", shop.login(2));
    let before = shop.sql::<i64>("SELECT stock FROM products WHERE id = 6");
    let r = shop.call(
        "frontend",
        "POST",
        "/checkout",
        &[("Authorization", &auth)],
        Some(r#"{"items":[{"product_id":6,"qty":3}]}"#),
    );
    assert_eq!(r.status, 502, "{}", r.body);
    assert!(r.body.contains("payment answered 500"), "{}", r.body);
    assert_eq!(
        shop.sql::<i64>("SELECT stock FROM products WHERE id = 6"),
        before
    );

    shop.fault("payment", "error-burst", "on=0");
    let r = shop.call(
        "frontend",
        "POST",
        "/checkout",
        &[("Authorization", &auth)],
        Some(r#"{"items":[{"product_id":6,"qty":1}]}"#),
    );
    assert_eq!(r.status, 200, "{}", r.body);
}

#[test]
fn slow_sql_slows_the_queries_measurably() {
    let shop = Shop::start(&["inventory", "payment"], &[]);
    let listing = || shop.call("inventory", "GET", "/products", &[], None);
    let baseline = (0..5).map(|_| listing().took).max().unwrap();
    assert!(
        baseline < Duration::from_millis(150),
        "baseline {baseline:?}"
    );
    let expected = listing().body;

    shop.fault("inventory", "slow-sql", "on=1&mode=sleep&ms=300");
    for _ in 0..3 {
        let r = listing();
        assert_eq!(r.status, 200);
        assert!(r.took >= Duration::from_millis(300), "{:?}", r.took);
        assert_eq!(r.body, expected, "same answer, only slower");
    }

    // mode=scan: same ratings, computed without the index; the listing is untouched.
    shop.fault("inventory", "slow-sql", "on=0");
    let detail = shop.call("inventory", "GET", "/products/4", &[], None).body;
    shop.fault("inventory", "slow-sql", "on=1&mode=scan");
    assert_eq!(
        shop.call("inventory", "GET", "/products/4", &[], None).body,
        detail
    );
    assert!(listing().took < Duration::from_millis(250));

    // payment: the insert itself sleeps.
    shop.fault("payment", "slow-sql", "on=1&mode=sleep&ms=300");
    let r = shop.call(
        "payment",
        "POST",
        "/payments",
        &[],
        Some(r#"{"order_id":"slow-1","user_id":3,"amount_cents":5}"#),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(r.took >= Duration::from_millis(300), "{:?}", r.took);
    assert_eq!(
        shop.sql::<u64>("SELECT COUNT(*) FROM payments WHERE order_id = 'slow-1'"),
        1
    );
    shop.fault("payment", "slow-sql", "on=1&mode=scan");
    let r = shop.call(
        "payment",
        "POST",
        "/payments",
        &[],
        Some(r#"{"order_id":"slow-2","user_id":3,"amount_cents":5}"#),
    );
    assert_eq!(r.status, 201, "{}", r.body);
}

#[test]
fn n_plus_one_issues_a_query_per_product() {
    let shop = Shop::start(&["inventory"], &[]);
    let queries_for_listing = |shop: &Shop| {
        let before = shop.stat("inventory", "sql_queries");
        let r = shop.call("inventory", "GET", "/products", &[], None);
        assert_eq!(r.status, 200);
        (shop.stat("inventory", "sql_queries") - before, r.body)
    };
    let (normal, body) = queries_for_listing(&shop);
    assert_eq!(normal, 1);
    shop.fault("inventory", "n-plus-one", "on=1");
    let (n_plus_one, same) = queries_for_listing(&shop);
    assert_eq!(n_plus_one, 21, "1 for the ids + 20 products");
    assert_eq!(same, body);
}

#[test]
fn cpu_fault_burns_cpu_in_the_named_function() {
    let shop = Shop::start(&["inventory", "frontend"], &[]);
    let pid = shop.pid("frontend");
    let listing = || shop.call("frontend", "GET", "/products", &[], None);
    listing();
    let cpu0 = utime(pid);
    shop.fault("frontend", "cpu", "on=1&ms=100");
    for _ in 0..5 {
        let r = listing();
        assert_eq!(r.status, 200);
        assert!(r.took >= Duration::from_millis(100), "{:?}", r.took);
    }
    let burnt = utime(pid) - cpu0;
    assert!(
        burnt >= Duration::from_millis(350),
        "5 × 100 ms of hot loop, user CPU {burnt:?}"
    );

    // The hot functions exist as distinct symbols (not inlined, not merged into one by identical-code folding),
    // so a profile names the right one.
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_demo-shop"));
    let mut addrs = Vec::new();
    for f in [
        "compute_discount_hot_loop",
        "verify_signature_hot_loop",
        "render_profile_hot_loop",
        "price_catalog_hot_loop",
        "fraud_score_hot_loop",
    ] {
        let syms = elf_symbols(bin, f);
        assert!(!syms.is_empty(), "no symbol for {f} in {}", bin.display());
        addrs.push(syms[0].1);
    }
    addrs.sort();
    addrs.dedup();
    assert_eq!(addrs.len(), 5, "two hot functions share an address");
}

#[test]
fn memory_growth_leaks_resident_memory() {
    let shop = Shop::start(&["auth"], &[]);
    let pid = shop.pid("auth");
    let before = rss(pid);
    shop.fault("auth", "memory-growth", "on=1&kb=1024&max_mb=64");
    for _ in 0..40 {
        shop.call("auth", "GET", "/verify", &[], None);
    }
    assert_eq!(shop.stat("auth", "leaked_bytes"), 40 << 20);
    let grown = rss(pid).saturating_sub(before);
    assert!(grown >= 30 << 20, "RSS grew by {} KiB only", grown >> 10);
    for _ in 0..40 {
        shop.call("auth", "GET", "/verify", &[], None);
    }
    assert_eq!(
        shop.stat("auth", "leaked_bytes"),
        64 << 20,
        "capped at max_mb"
    );
    shop.fault("auth", "memory-growth", "on=0");
    assert_eq!(shop.stat("auth", "leaked_bytes"), 0);
}

#[test]
fn log_spam_floods_stdout() {
    let shop = Shop::start(&["auth"], &[]);
    let login = || shop.call("auth", "POST", "/login", &[], Some(r#"{"user_id":1}"#));
    login();
    std::thread::sleep(Duration::from_millis(200));
    let quiet = shop.logs("auth").len();
    shop.fault("auth", "log-spam", "on=1&lines=200");
    login();
    std::thread::sleep(Duration::from_millis(300));
    let logs = shop.logs("auth");
    let added = &logs[quiet..];
    assert!(added.len() >= 200, "only {} new lines", added.len());
    assert!(
        added
            .iter()
            .any(|l| is_json(l) && l.contains(r#""level":"debug""#))
    );
    assert!(
        added
            .iter()
            .any(|l| !is_json(l) && l.contains("DEBUG [auth]"))
    );
}

#[test]
fn dependency_timeout_turns_into_504_at_the_frontend() {
    let shop = Shop::start(&ALL, &[("UPSTREAM_TIMEOUT_MS", "500")]);
    let auth = format!("Bearer {}", shop.login(4));
    let before = shop.sql::<i64>("SELECT stock FROM products WHERE id = 8");
    shop.fault("payment", "dependency-timeout", "on=1&ms=3000");
    let start = Instant::now();
    let r = shop.call(
        "frontend",
        "POST",
        "/checkout",
        &[("Authorization", &auth)],
        Some(r#"{"items":[{"product_id":8,"qty":1}]}"#),
    );
    assert_eq!(r.status, 504, "{}", r.body);
    assert!(
        r.body.contains("payment timed out after 500 ms"),
        "{}",
        r.body
    );
    assert!(
        start.elapsed() < Duration::from_millis(2500),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(
        shop.sql::<i64>("SELECT stock FROM products WHERE id = 8"),
        before,
        "stock released"
    );
    // Calls that do not touch payment are unaffected.
    assert_eq!(
        shop.call("frontend", "GET", "/products", &[], None).status,
        200
    );
}

#[test]
fn admin_endpoint_lists_validates_and_reads_demo_faults() {
    let shop = Shop::start(&["auth"], &[("DEMO_FAULTS", "log-spam?lines=3")]);
    let v = shop.call("auth", "GET", "/admin/faults", &[], None).json();
    let faults = v["faults"].as_array().expect("faults");
    assert_eq!(faults.len(), 8);
    let by_name = |n: &str| faults.iter().find(|f| f["name"] == n).cloned().expect(n);
    assert_eq!(by_name("log-spam")["on"], true);
    assert_eq!(by_name("log-spam")["params"]["lines"], "3");
    assert_eq!(by_name("cache-off")["applies"], false);

    let r = shop.call("auth", "POST", "/admin/fault/nope?on=1", &[], None);
    assert_eq!(r.status, 404);
    let r = shop.call("auth", "POST", "/admin/fault/cache-off?on=1", &[], None);
    assert_eq!(r.status, 400);
    assert!(r.body.contains("applies to: user"), "{}", r.body);
    assert_eq!(
        shop.call("auth", "POST", "/admin/fault/cpu?on=1&speed=9", &[], None)
            .status,
        400
    );
    assert_eq!(
        shop.call(
            "auth",
            "POST",
            "/admin/fault/error-burst?on=1&ratio=x",
            &[],
            None
        )
        .status,
        400
    );

    shop.fault("auth", "cpu", "on=1&ms=5");
    let r = shop.call("auth", "POST", "/admin/faults/reset", &[], None);
    assert_eq!(r.status, 200);
    assert!(
        r.json()["faults"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["on"] == false)
    );
    assert_eq!(shop.call("auth", "GET", "/healthz", &[], None).status, 200);
}

#[test]
fn traceparent_is_propagated_only_when_enabled() {
    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    let incoming = format!("00-{TRACE}-00f067aa0ba902b7-01");
    let services = ["auth", "user", "frontend"];
    let with_trace = |logs: Vec<String>| logs.iter().filter(|l| l.contains(TRACE)).count();

    let on = Shop::start(&services, &[("DEMO_PROPAGATE", "1")]);
    let auth = format!("Bearer {}", on.login(9));
    let r = on.call(
        "frontend",
        "GET",
        "/account",
        &[("Authorization", &auth), ("traceparent", &incoming)],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    std::thread::sleep(Duration::from_millis(200));
    assert!(with_trace(on.logs("frontend")) >= 1);
    assert!(
        with_trace(on.logs("auth")) >= 1,
        "auth saw the trace: {:#?}",
        on.logs("auth")
    );
    assert!(with_trace(on.logs("user")) >= 1, "user saw the trace");
    // Each call is a new child span of the frontend's span: span ids differ between auth and user.
    let span = |logs: Vec<String>| {
        logs.iter()
            .filter(|l| l.contains(TRACE))
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["span_id"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .next_back()
            .unwrap()
    };
    assert_ne!(span(on.logs("auth")), span(on.logs("user")));
    // Without an incoming header the frontend starts a trace of its own.
    on.call(
        "frontend",
        "GET",
        "/account",
        &[("Authorization", &auth)],
        None,
    );
    std::thread::sleep(Duration::from_millis(200));
    let last_auth = on
        .logs("auth")
        .into_iter()
        .rev()
        .find(|l| l.contains(r#""msg":"request""#))
        .unwrap();
    assert!(
        last_auth.contains("trace_id") && !last_auth.contains(TRACE),
        "{last_auth}"
    );

    let off = Shop::start(&services, &[]);
    let auth = format!("Bearer {}", off.login(9));
    let r = off.call(
        "frontend",
        "GET",
        "/account",
        &[("Authorization", &auth), ("traceparent", &incoming)],
        None,
    );
    assert_eq!(r.status, 200);
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        with_trace(off.logs("frontend")) >= 1,
        "the frontend still logs the trace it was given"
    );
    assert_eq!(with_trace(off.logs("auth")), 0, "but does not forward it");
    assert!(off.logs("auth").iter().all(|l| !l.contains("trace_id")));
}

#[test]
fn load_generator_drives_the_whole_shop() {
    let shop = Shop::start(&ALL, &[]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_demo-shop"))
        .arg("loadgen")
        .env("FRONTEND_URL", format!("http://{}", shop.addr("frontend")))
        .env("LOADGEN_RPS", "40")
        .env("LOADGEN_DURATION_S", "3")
        .env("LOADGEN_REPORT_S", "1")
        .output()
        .expect("running loadgen");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let done = stdout
        .lines()
        .find(|l| l.contains("done: sent="))
        .expect("a final line");
    assert!(done.ends_with("failed=0"), "{done}");
    let sent: u64 = done
        .split("sent=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap();
    // 120 at 40 req/s for 3 s; fewer when the machine is starved of CPU (the schedule does not burst to catch up).
    assert!(sent >= 40, "{done}");
    assert!(
        shop.sql::<u64>("SELECT COUNT(*) FROM payments") > 0,
        "some checkouts went through"
    );
    assert!(
        shop.stat("user", "cache_hits") > 0,
        "regulars hit the cache"
    );
    // The services answer plain HTTP to anyone, not just the load generator.
    assert_eq!(
        http(shop.addr("inventory"), "GET", "/healthz", &[], None).status,
        200
    );
}
