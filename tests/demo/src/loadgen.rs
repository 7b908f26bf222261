//! `demo-shop loadgen`: an open-loop load generator at a steady rate against the frontend.
//!
//! Mix: 10% `GET /`, 40% `GET /products`, 15% `GET /products/{id}`, 10% `GET /account`, 25% `POST /checkout`
//! (logging users in on first use). 80% of requests come from 20 "regulars", so the user cache has a realistic
//! hit ratio. Every `LOADGEN_REPORT_S` it prints one plain line: counts per status class and p50/p99 latency.
//!
//! Environment: `FRONTEND_URL` (default `http://127.0.0.1:8080`), `LOADGEN_RPS` (10), `LOADGEN_DURATION_S`
//! (0 = until killed), `LOADGEN_USERS` (100), `LOADGEN_REPORT_S` (10), `LOADGEN_TIMEOUT_MS` (10000).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::http::{Upstream, UpstreamError};
use crate::trace::random_u64;
use crate::{info, log, warn};

/// Requests allowed in flight before ticks are dropped (and counted).
const MAX_IN_FLIGHT: usize = 512;

/// The load generator's settings.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// Frontend base URL.
    pub frontend_url: String,
    /// Requests per second.
    pub rps: f64,
    /// How long to run; `None` until killed.
    pub duration: Option<Duration>,
    /// Users 1..=users are picked.
    pub users: u64,
    /// Report interval.
    pub report_every: Duration,
    /// Per-request timeout.
    pub timeout: Duration,
}

impl LoadConfig {
    /// Reads the settings from the environment.
    pub fn from_env() -> anyhow::Result<LoadConfig> {
        let get = |k: &str, d: &str| {
            std::env::var(k)
                .ok()
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| d.to_string())
        };
        let num = |k: &str, d: &str| -> anyhow::Result<f64> {
            let v = get(k, d);
            v.parse::<f64>()
                .ok()
                .filter(|n| n.is_finite() && *n >= 0.0)
                .with_context(|| format!("{k}={v:?}: expected a number"))
        };
        let duration = num("LOADGEN_DURATION_S", "0")?;
        let cfg = LoadConfig {
            frontend_url: get("FRONTEND_URL", "http://127.0.0.1:8080"),
            rps: num("LOADGEN_RPS", "10")?,
            duration: (duration > 0.0).then(|| Duration::from_secs_f64(duration)),
            users: num("LOADGEN_USERS", "100")?.max(1.0) as u64,
            report_every: Duration::from_secs_f64(num("LOADGEN_REPORT_S", "10")?.max(0.5)),
            timeout: Duration::from_secs_f64(num("LOADGEN_TIMEOUT_MS", "10000")? / 1000.0),
        };
        if cfg.rps <= 0.0 {
            bail!("LOADGEN_RPS must be above 0");
        }
        Ok(cfg)
    }
}

#[derive(Default)]
struct Window {
    ok: u64,
    client_errors: u64,
    server_errors: u64,
    timeouts: u64,
    io_errors: u64,
    dropped: u64,
    latencies_ms: Vec<f64>,
}

#[derive(Default)]
struct Totals {
    sent: u64,
    ok: u64,
    failed: u64,
}

struct Shared {
    client: Upstream,
    users: u64,
    tokens: Mutex<HashMap<u64, String>>,
    window: Mutex<Window>,
    totals: Mutex<Totals>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs until the duration ends (or forever). Fails if not one request succeeded.
pub async fn run(cfg: LoadConfig) -> anyhow::Result<()> {
    log::init("loadgen");
    let client = Upstream::new("frontend", &cfg.frontend_url, cfg.timeout);
    wait_ready(&client).await?;
    info!(
        "sending {} req/s to {} ({})",
        cfg.rps,
        cfg.frontend_url,
        cfg.duration
            .map_or("until stopped".into(), |d| format!("for {d:?}"))
    );
    let shared = Arc::new(Shared {
        client,
        users: cfg.users,
        tokens: Mutex::new(HashMap::new()),
        window: Mutex::new(Window::default()),
        totals: Mutex::new(Totals::default()),
    });
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let start = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / cfg.rps));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_report = start;
    loop {
        ticker.tick().await;
        if cfg.duration.is_some_and(|d| start.elapsed() >= d) {
            break;
        }
        if last_report.elapsed() >= cfg.report_every {
            report(&shared, last_report.elapsed());
            last_report = Instant::now();
        }
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            lock(&shared.window).dropped += 1;
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            one_request(&shared).await;
            drop(permit);
        });
    }
    // Let the requests in flight finish.
    let _ = tokio::time::timeout(cfg.timeout, slots.acquire_many(MAX_IN_FLIGHT as u32)).await;
    report(&shared, last_report.elapsed());
    let totals = lock(&shared.totals);
    info!(
        "done: sent={} ok={} failed={}",
        totals.sent, totals.ok, totals.failed
    );
    if totals.ok == 0 {
        bail!("no request succeeded");
    }
    Ok(())
}

async fn wait_ready(client: &Upstream) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match client.send(Method::GET, "/healthz", None, &[]).await {
            Ok((s, _)) if s.is_success() => return Ok(()),
            r if Instant::now() >= deadline => {
                bail!("frontend not ready after 60 s: {:?}", r.map(|(s, _)| s))
            }
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

fn pick_user(users: u64) -> u64 {
    let r = random_u64();
    if r % 10 < 8 {
        r / 10 % users.min(20) + 1
    } else {
        r / 10 % users + 1
    }
}

/// A `User-Agent` naming a new request id (see `Req::request_id`).
fn user_agent() -> (&'static str, String) {
    (
        "user-agent",
        format!("demo-loadgen rid={:016x}", random_u64()),
    )
}

async fn one_request(s: &Shared) {
    let roll = random_u64() % 100;
    let product = random_u64() % u64::from(crate::db::PRODUCTS) + 1;
    let start = Instant::now();
    let ua = [user_agent()];
    let result = match roll {
        0..10 => s.client.send(Method::GET, "/", None, &ua).await,
        10..50 => s.client.send(Method::GET, "/products", None, &ua).await,
        50..65 => {
            s.client
                .send(Method::GET, &format!("/products/{product}"), None, &ua)
                .await
        }
        _ => {
            let user = pick_user(s.users);
            match token(s, user).await {
                Err(e) => Err(e),
                Ok(token) => {
                    let [ua] = ua;
                    let auth = [ua, ("authorization", format!("Bearer {token}"))];
                    if roll < 75 {
                        s.client.send(Method::GET, "/account", None, &auth).await
                    } else {
                        let lines = random_u64() % 3 + 1;
                        let items: Vec<Value> = (0..lines)
                            .map(|i| json!({ "product_id": (product + i * 7) % 20 + 1, "qty": random_u64() % 2 + 1 }))
                            .collect();
                        let body = json!({ "items": items }).to_string().into_bytes();
                        s.client
                            .send(Method::POST, "/checkout", Some(body), &auth)
                            .await
                    }
                }
            }
        }
    };
    record(s, start.elapsed(), &result);
}

async fn token(s: &Shared, user: u64) -> Result<String, UpstreamError> {
    if let Some(t) = lock(&s.tokens).get(&user) {
        return Ok(t.clone());
    }
    let body = json!({ "user_id": user });
    let v: Value = s
        .client
        .json(Method::POST, "/login", Some(&body), &[user_agent()])
        .await?;
    let t = v
        .get("token")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    lock(&s.tokens).insert(user, t.clone());
    Ok(t)
}

fn record(s: &Shared, took: Duration, result: &Result<(StatusCode, bytes::Bytes), UpstreamError>) {
    let mut w = lock(&s.window);
    let mut t = lock(&s.totals);
    t.sent += 1;
    match result {
        Ok((status, _)) if status.is_success() => {
            w.ok += 1;
            t.ok += 1;
        }
        Ok((status, _)) if status.is_client_error() => w.client_errors += 1,
        Ok(_) => w.server_errors += 1,
        Err(UpstreamError::Timeout { .. }) => w.timeouts += 1,
        Err(_) => w.io_errors += 1,
    }
    if !matches!(result, Ok((status, _)) if status.is_success()) {
        t.failed += 1;
    }
    w.latencies_ms.push(took.as_secs_f64() * 1000.0);
}

fn report(s: &Shared, over: Duration) {
    let mut w = std::mem::take(&mut *lock(&s.window));
    w.latencies_ms.sort_by(f64::total_cmp);
    let q = |p: f64| {
        w.latencies_ms
            .get(((w.latencies_ms.len() as f64 - 1.0) * p).round().max(0.0) as usize)
            .copied()
            .unwrap_or(0.0)
    };
    let n = w.latencies_ms.len();
    let line = format!(
        "last {:.0}s: {n} req ({:.1}/s) ok={} 4xx={} 5xx={} timeouts={} errors={} dropped={} p50={:.1}ms p99={:.1}ms",
        over.as_secs_f64(),
        n as f64 / over.as_secs_f64().max(0.001),
        w.ok,
        w.client_errors,
        w.server_errors,
        w.timeouts,
        w.io_errors,
        w.dropped,
        q(0.5),
        q(0.99)
    );
    if w.server_errors + w.timeouts + w.io_errors > 0 {
        warn!("{line}");
    } else {
        info!("{line}");
    }
}
