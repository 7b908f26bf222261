//! The span checks, one per exercise: each compares the spans of the baseline window with those of the fault window
//! and records its assertions in a [`Verdict`].

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::ensure;

use super::logs::{LogRecord, check_error_lines};
use super::{SpanCheck, UPSTREAM_TIMEOUT_MS};
use crate::spans_read::{Span, quantile};
use crate::util::short;

impl SpanCheck {
    /// What it asserts, for `exercise list`.
    pub(super) fn describe(self) -> &'static str {
        match self {
            SpanCheck::SlowSql => {
                "checks spans: the IGNORE INDEX reviews query tops inventory's MySQL statements and slowest spans, p50 ≥5× baseline"
            }
            SpanCheck::NPlusOne => {
                "checks spans: inventory's MySQL spans per GET /products go from ~1 to ≥10"
            }
            SpanCheck::ErrorBurst => {
                "checks spans: payment's 5xx share ≈ ratio (±15 points), errors on frontend→payment calls; logs: a failing span's error line by its trace id"
            }
            SpanCheck::CacheOff => {
                "checks spans: user's MySQL spans per request from ≈0 (warm cache) to ≈1, plus Redis GET+SET"
            }
            SpanCheck::DependencyTimeout => {
                "checks spans: frontend checkouts answer 504 (error) after the 1.5 s timeout, none before"
            }
            SpanCheck::LogSpam => {
                "checks logs: inventory's lines/s rise by its requests/s × 100 (±20%), DEBUG only with the fault, with its spans' trace ids"
            }
        }
    }
}

/// Prints the statements of `spans` (MySQL or Redis), the slowest median (or the most frequent) first.
pub(super) fn print_statements(title: &str, spans: &[&Span], top: usize, by_count: bool) {
    let mut by: BTreeMap<&str, Vec<&Span>> = BTreeMap::new();
    for s in spans {
        by.entry(statement(s)).or_default().push(s);
    }
    let mut rows: Vec<(&str, Vec<&Span>)> = by.into_iter().collect();
    if by_count {
        rows.sort_by_key(|r| std::cmp::Reverse(r.1.len()));
    } else {
        rows.sort_by(|a, b| p50(&b.1).total_cmp(&p50(&a.1)));
    }
    println!("{title}: {} spans, {} statements", spans.len(), rows.len());
    println!(
        "  {:>6} {:>9} {:>9}  statement",
        "count", "p50 ms", "max ms"
    );
    for (stmt, v) in rows.iter().take(top) {
        let max = durations(v).into_iter().fold(0.0, f64::max);
        println!(
            "  {:>6} {:>9.2} {:>9.2}  {}",
            v.len(),
            p50(v),
            max,
            short(stmt, 110)
        );
    }
}

/// slow-sql (mode=scan): inventory's ratings query reads `reviews` IGNORE INDEX.
pub(super) fn check_slow_sql(base: &Window, fault: &Window, v: &mut Verdict) {
    const FAULTED: &str = "IGNORE INDEX";
    let is_faulted = |s: &&Span| statement(s).contains(FAULTED) && statement(s).contains("reviews");
    let is_ratings = |s: &&Span| statement(s).contains("FROM reviews");
    let mysql_base = base.db("inventory", "mysql");
    let mysql_fault = fault.db("inventory", "mysql");
    print_statements("inventory MySQL spans, baseline", &mysql_base, 5, false);
    print_statements("inventory MySQL spans, fault", &mysql_fault, 5, false);

    // The slowest spans. On a host busy with other work any statement can stall now and then, so the single
    // slowest span is shown, and most of the ten slowest must be the faulted statement.
    let mut slowest = mysql_fault.clone();
    slowest.sort_by(|a, b| b.duration_ms().total_cmp(&a.duration_ms()));
    slowest.truncate(10);
    let in_top = slowest.iter().filter(|s| is_faulted(s)).count();
    v.check_tail(
        slowest.len() == 10 && in_top >= 6,
        format!(
            "the faulted statement holds {in_top} of inventory's 10 slowest MySQL spans (≥ 6); the slowest: {}",
            slowest.first().map_or("none".to_string(), |s| format!(
                "{:.1} ms {}",
                s.duration_ms(),
                short(statement(s), 90)
            ))
        ),
    );
    // The latency list: statements by median, among those seen a few times.
    let mut by: BTreeMap<&str, Vec<&Span>> = BTreeMap::new();
    for s in &mysql_fault {
        by.entry(statement(s)).or_default().push(s);
    }
    let top = by
        .iter()
        .filter(|(_, v)| v.len() >= 5)
        .max_by(|a, b| p50(a.1).total_cmp(&p50(b.1)));
    v.check(
        top.is_some_and(|(stmt, _)| stmt.contains(FAULTED)),
        format!(
            "the faulted statement tops inventory's MySQL statements by p50: {}",
            top.map_or("none seen 5 times".to_string(), |(s, v)| format!(
                "{:.1} ms {}",
                p50(v),
                short(s, 90)
            ))
        ),
    );
    let faulted: Vec<&Span> = mysql_fault.iter().copied().filter(is_faulted).collect();
    let before: Vec<&Span> = mysql_base.iter().copied().filter(is_ratings).collect();
    let (pf, pb) = (p50(&faulted), p50(&before));
    v.check(
        faulted.len() >= 10 && before.len() >= 10 && (pf >= 5.0 * pb || pf >= 20.0),
        format!(
            "ratings query p50 {pf:.2} ms ({} spans) with the fault vs {pb:.2} ms ({} spans) before: ×{:.1} (≥ ×5 or ≥ 20 ms)",
            faulted.len(),
            before.len(),
            per_f(pf, pb)
        ),
    );
    v.check(
        !mysql_base.iter().any(is_faulted),
        "the baseline has no IGNORE INDEX query".to_string(),
    );
    // Where a product page spends its time now: mostly in that query.
    let (pages_base, pages_fault) = (
        base.server("inventory", "/products/"),
        fault.server("inventory", "/products/"),
    );
    let (qb, qf) = (p50(&pages_base), p50(&pages_fault));
    v.check(
        qf >= 3.0 * qb && pf >= 0.5 * qf,
        format!(
            "inventory GET /products/{{id}} p50 {qb:.2} ms → {qf:.2} ms (≥ ×3), the faulted query is {:.0}% of it (≥ 50%)",
            100.0 * per_f(pf, qf)
        ),
    );
}

fn per_f(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { f64::INFINITY }
}

/// n-plus-one: the listing runs `SELECT id FROM products` then one `SELECT … WHERE p.id = ?` per product.
pub(super) fn check_n_plus_one(base: &Window, fault: &Window, v: &mut Verdict) {
    // The listing's statements: `FROM products p` (the list, or one product) and the N+1 id list. `/reserve`
    // reads `FROM products WHERE id = ?` (no alias); a product page runs one `FROM products p … WHERE p.id = ?`.
    let listing_stmt = |s: &&Span| {
        let q = statement(s);
        q.contains("FROM products p") || q.contains("SELECT id FROM products ORDER BY")
    };
    let mut rates = Vec::new();
    for w in [base, fault] {
        let requests = w.server("inventory", "/");
        let listings = w
            .spans
            .iter()
            .filter(|s| s.service == "inventory" && s.is_server() && s.path() == "/products")
            .count();
        let pages = w.server("inventory", "/products/").len();
        let mysql = w.db("inventory", "mysql");
        let listing_queries = mysql.iter().copied().filter(listing_stmt).count();
        let per_listing = per(listing_queries.saturating_sub(pages), listings);
        println!(
            "{:<8}: inventory {} requests ({} GET /products, {} product pages), {} MySQL spans: {:.2} per request, {:.2} per GET /products",
            w.name,
            requests.len(),
            listings,
            pages,
            mysql.len(),
            per(mysql.len(), requests.len()),
            per_listing
        );
        print_statements(
            &format!("inventory MySQL spans, {}", w.name),
            &mysql,
            4,
            true,
        );
        rates.push((listings, per_listing, per(mysql.len(), requests.len())));
    }
    let ((lb, base_listing, base_req), (lf, fault_listing, fault_req)) = (rates[0], rates[1]);
    v.check(
        lb >= 20 && lf >= 20,
        format!("GET /products server spans: {lb} before, {lf} with the fault (≥ 20 each)"),
    );
    v.check(
        base_listing <= 1.5,
        format!("MySQL spans per GET /products before: {base_listing:.2} (~1)"),
    );
    v.check(
        fault_listing >= 10.0,
        format!(
            "MySQL spans per GET /products with the fault: {fault_listing:.2} (≥ 10; 21 expected)"
        ),
    );
    v.check(
        fault_req >= 3.0 * base_req,
        format!(
            "MySQL spans per inventory request: {base_req:.2} → {fault_req:.2} (×{:.1}, ≥ ×3)",
            per_f(fault_req, base_req)
        ),
    );
}

/// error-burst: a `ratio` of payment's requests answer 500; the frontend's checkouts fail with 502; payment logs
/// an error line for each failure.
pub(super) fn check_error_burst(
    base: &Window,
    fault: &Window,
    ratio: f64,
    payment_port: u16,
    logs: &[LogRecord],
    v: &mut Verdict,
) {
    let is_5xx = |s: &&Span| s.http_status().is_some_and(|c| c >= 500);
    let pay_base = base.server("payment", "/payments");
    let pay = fault.server("payment", "/payments");
    let failed: Vec<&Span> = pay.iter().copied().filter(is_5xx).collect();
    let share = per(failed.len(), pay.len());
    println!(
        "payment POST /payments server spans: {} before ({} 5xx), {} with the fault ({} 5xx, {:.0}%)",
        pay_base.len(),
        pay_base.iter().copied().filter(is_5xx).count(),
        pay.len(),
        failed.len(),
        100.0 * share
    );
    v.check(
        pay.len() >= 30,
        format!("payment server spans with the fault: {} (≥ 30)", pay.len()),
    );
    v.check(
        !failed.is_empty() && failed.iter().all(|s| s.is_error()),
        format!(
            "payment's 5xx server spans have error status: {} of {}",
            failed.iter().filter(|s| s.is_error()).count(),
            failed.len()
        ),
    );
    v.check(
        (share - ratio).abs() <= 0.15,
        format!(
            "payment's 5xx share {:.0}% is the configured {:.0}% ±15 points",
            100.0 * share,
            100.0 * ratio
        ),
    );
    v.check(
        !pay_base.iter().any(&is_5xx),
        "no payment 5xx before the fault".to_string(),
    );
    let calls = fault.http_client("frontend", payment_port);
    let call_errors = calls.iter().filter(|s| is_5xx(s) && s.is_error()).count();
    v.check(
        call_errors > 0 && (per(call_errors, calls.len()) - ratio).abs() <= 0.15,
        format!(
            "frontend→payment client spans with 5xx and error status: {call_errors} of {} ({:.0}%)",
            calls.len(),
            100.0 * per(call_errors, calls.len())
        ),
    );
    let checkouts = fault.server("frontend", "/checkout");
    println!(
        "frontend POST /checkout with the fault: {} server spans, {} answered 502",
        checkouts.len(),
        checkouts
            .iter()
            .filter(|s| s.http_status() == Some(502))
            .count()
    );
    // The error line each failing payment writes while it is served, found by the span's trace id.
    check_error_lines("payment", &failed, logs, v);
}

/// cache-off (mode=miss): every profile lookup is a Redis GET miss, a MySQL SELECT and a Redis SET.
pub(super) fn check_cache_off(base: &Window, fault: &Window, v: &mut Verdict) {
    let mut rows = Vec::new();
    for w in [base, fault] {
        let n = w.server("user", "/users/").len();
        let mysql = w.db("user", "mysql").len();
        let redis = w.db("user", "redis");
        let op = |name: &str| {
            redis
                .iter()
                .filter(|s| {
                    s.attr("db.operation.name")
                        .is_some_and(|o| o.eq_ignore_ascii_case(name))
                })
                .count()
        };
        let (get, set) = (op("GET"), op("SET"));
        println!(
            "{:<8}: user GET /users/{{id}} {n} requests; per request: MySQL {:.2}, Redis {:.2} (GET {:.2}, SET {:.2})",
            w.name,
            per(mysql, n),
            per(redis.len(), n),
            per(get, n),
            per(set, n)
        );
        rows.push((n, per(mysql, n), per(get, n), per(set, n)));
    }
    let ((nb, mysql_b, get_b, _), (nf, mysql_f, get_f, set_f)) = (rows[0], rows[1]);
    v.check(
        nb >= 30 && nf >= 30,
        format!("user server spans: {nb} before, {nf} with the fault (≥ 30 each)"),
    );
    v.check(
        mysql_b <= 0.35 && get_b >= 0.8,
        format!(
            "warm cache before: MySQL {mysql_b:.2} per request (≈ 0), Redis GET {get_b:.2} (≈ 1)"
        ),
    );
    v.check(
        mysql_f >= 0.8 && get_f >= 0.8 && set_f >= 0.8,
        format!(
            "with the fault, per request: MySQL {mysql_f:.2}, Redis GET {get_f:.2}, Redis SET {set_f:.2} (each ≈ 1)"
        ),
    );
    v.check(
        mysql_f >= 3.0 * mysql_b,
        format!(
            "MySQL spans per request ×{:.1} (≥ ×3)",
            per_f(mysql_f, mysql_b)
        ),
    );
}

/// dependency-timeout: payment stalls `stall_ms`; the frontend gives up after its upstream timeout with 504.
pub(super) fn check_dependency_timeout(
    base: &Window,
    fault: &Window,
    stall_ms: f64,
    payment_port: u16,
    v: &mut Verdict,
) {
    let timeout = UPSTREAM_TIMEOUT_MS as f64;
    let is_504 = |s: &&Span| s.http_status() == Some(504);
    let checkouts_base = base.server("frontend", "/checkout");
    let timed_out: Vec<&Span> = fault
        .server("frontend", "/checkout")
        .into_iter()
        .filter(is_504)
        .collect();
    let d = durations(&timed_out);
    let shortest = d.iter().copied().fold(f64::INFINITY, f64::min);
    let longest = d.iter().copied().fold(0.0, f64::max);
    println!(
        "frontend POST /checkout server spans: {} before (p50 {:.1} ms, {} with 504); with the fault {} answered 504 (p50 {:.0} ms, {:.0}–{:.0} ms)",
        checkouts_base.len(),
        p50(&checkouts_base),
        checkouts_base.iter().filter(|s| is_504(s)).count(),
        timed_out.len(),
        p50(&timed_out),
        shortest,
        longest
    );
    v.check(
        timed_out.len() >= 10,
        format!(
            "frontend checkouts answered 504: {} (≥ 10)",
            timed_out.len()
        ),
    );
    v.check(
        !timed_out.is_empty() && timed_out.iter().all(|s| s.is_error()),
        "every 504 checkout span has error status".to_string(),
    );
    v.check(
        !timed_out.is_empty() && shortest >= timeout * 0.98 && p50(&timed_out) < stall_ms,
        format!(
            "the 504 checkout spans last the {timeout:.0} ms upstream timeout, not payment's {stall_ms:.0} ms stall: shortest {shortest:.0} ms, p50 {:.0} ms",
            p50(&timed_out)
        ),
    );
    v.check(
        !checkouts_base.iter().any(is_504),
        "no 504 before the fault".to_string(),
    );
    // A call that never gets its response gives no span today: the connection closes first, and the agent only
    // counts it (loupe_spans_dropped_total{reason="no_response"}). So neither the frontend's call to payment nor
    // payment's own span shows up; what does is the caller's 504 above.
    let calls_base = base.http_client("frontend", payment_port);
    let calls = fault.http_client("frontend", payment_port);
    println!(
        "frontend→payment client spans: {} before (p50 {:.1} ms), {} with the fault; payment POST /payments server spans with the fault: {} (unanswered calls give no span)",
        calls_base.len(),
        p50(&calls_base),
        calls.len(),
        fault.server("payment", "/payments").len()
    );
}

/// The spans that started in one time window.
pub(super) struct Window<'a> {
    pub(super) name: &'static str,
    pub(super) spans: Vec<&'a Span>,
}

impl<'a> Window<'a> {
    pub(super) fn new(name: &'static str, all: &'a [Span], from_ns: u64, to_ns: u64) -> Window<'a> {
        Window {
            name,
            spans: all
                .iter()
                .filter(|s| (from_ns..to_ns).contains(&s.start_ns))
                .collect(),
        }
    }

    /// Server spans of `service` whose path starts with `prefix`, without the admin endpoint and health checks
    /// (xtask's own calls).
    pub(super) fn server(&self, service: &str, prefix: &str) -> Vec<&'a Span> {
        self.spans
            .iter()
            .copied()
            .filter(|s| s.service == service && s.is_server())
            .filter(|s| {
                let p = s.path();
                p.starts_with(prefix) && !p.starts_with("/admin/") && p != "/healthz"
            })
            .collect()
    }

    /// Database client spans of `service` to `system` (`mysql`, `redis`) that run the application's statements or
    /// commands: for MySQL, not the `PREPARE` of a prepared statement (its `EXECUTE` carries the text too), the
    /// protocol's own commands (`RESET_CONNECTION` when the pool takes a connection back, `PING`) nor the driver's
    /// `SELECT @@…` on each new connection.
    pub(super) fn db(&self, service: &str, system: &str) -> Vec<&'a Span> {
        self.spans
            .iter()
            .copied()
            .filter(|s| s.service == service && s.db_system() == Some(system))
            .filter(|s| {
                system != "mysql"
                    || (s.attr("db.operation.name") != Some("PREPARE")
                        && s.attr("db.query.text")
                            .is_some_and(|q| !q.starts_with("SELECT @@")))
            })
            .collect()
    }

    /// HTTP client spans of `service` to the server on `port`.
    pub(super) fn http_client(&self, service: &str, port: u16) -> Vec<&'a Span> {
        self.spans
            .iter()
            .copied()
            .filter(|s| s.service == service && s.is_http_client())
            .filter(|s| s.attr_int("server.port") == Some(i64::from(port)))
            .collect()
    }
}

/// A database span's statement: `db.query.text`, else its name.
fn statement(s: &Span) -> &str {
    s.attr("db.query.text").unwrap_or(&s.name)
}

fn durations(spans: &[&Span]) -> Vec<f64> {
    spans.iter().map(|s| s.duration_ms()).collect()
}

pub(super) fn p50(spans: &[&Span]) -> f64 {
    quantile(&durations(spans), 0.5)
}

pub(super) fn per(n: usize, d: usize) -> f64 {
    if d == 0 { 0.0 } else { n as f64 / d as f64 }
}

/// The assertions of a check: every one is printed, the check passes when all hold.
#[derive(Default)]
pub(super) struct Verdict {
    /// (passed, what); `None`: not asserted (see [`Verdict::check_tail`]).
    pub(super) results: Vec<(Option<bool>, String)>,
    /// Set when the shop could not keep up with its load: why latency tails mean little in this run.
    pub(super) overloaded: Option<String>,
}

impl Verdict {
    pub(super) fn check(&mut self, ok: bool, what: String) {
        self.results.push((Some(ok), what));
    }

    /// An assertion on latency tails (the slowest spans), which a host busy with other work blurs: any span can
    /// stall then. Not asserted when the shop could not keep up with its load; medians and counts still are.
    pub(super) fn check_tail(&mut self, ok: bool, what: String) {
        let ok = if self.overloaded.is_some() {
            None
        } else {
            Some(ok)
        };
        self.results.push((ok, what));
    }

    pub(super) fn finish(self, exercise: &str, started: Instant) -> anyhow::Result<()> {
        for (ok, what) in &self.results {
            let mark = match ok {
                Some(true) => "ok  ",
                Some(false) => "FAIL",
                None => "skip",
            };
            println!("  {mark} {what}");
        }
        let count = |want: Option<bool>| self.results.iter().filter(|(ok, _)| *ok == want).count();
        let (failed, skipped) = (count(Some(false)), count(None));
        let overloaded = self.overloaded.as_deref().unwrap_or_default();
        ensure!(
            failed == 0,
            "FAIL exercise {exercise}: {failed} of {} assertions failed{}",
            self.results.len(),
            if overloaded.is_empty() {
                String::new()
            } else {
                format!(" ({overloaded}; rerun when it is quieter)")
            }
        );
        let skipped = if skipped == 0 {
            String::new()
        } else {
            format!(", {skipped} on latency tails not asserted ({overloaded})")
        };
        println!(
            "PASS exercise {exercise}: {} assertions on Loupe's output hold{skipped} ({:.0} s)",
            count(Some(true)),
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }
}
