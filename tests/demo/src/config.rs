//! Configuration from environment variables. Every variable has a default that matches the native demo
//! (`cargo xtask demo`) on its default ports, so a bare `demo-shop frontend` finds its neighbours.

use std::env;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::Role;

/// A service's configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Which service this process is.
    pub role: Role,
    /// `OTEL_SERVICE_NAME`, else the role's name. Used in every log line.
    pub service_name: String,
    /// `BIND_ADDR` (default `0.0.0.0`).
    pub bind_addr: String,
    /// `PORT` (default per role, 8080–8084); 0 picks a free port, printed in the start-up line.
    pub port: u16,
    /// `MYSQL_URL` (default `mysql://shop:shop@127.0.0.1:3306/shop`); the database is created when missing.
    pub mysql_url: String,
    /// `REDIS_URL` (default `redis://127.0.0.1:6379/0`).
    pub redis_url: String,
    /// `AUTH_URL`, `USER_URL`, `INVENTORY_URL`, `PAYMENT_URL`: where the frontend finds the others.
    pub auth_url: String,
    /// See `auth_url`.
    pub user_url: String,
    /// See `auth_url`.
    pub inventory_url: String,
    /// See `auth_url`.
    pub payment_url: String,
    /// `UPSTREAM_TIMEOUT_MS` (default 1500): the frontend's per-call timeout.
    pub upstream_timeout: Duration,
    /// `DEMO_PROPAGATE=1`: the frontend writes W3C `traceparent` on its outgoing calls.
    pub propagate: bool,
    /// `DEMO_FAULTS`: faults on at start-up, e.g. `cpu?ms=30;error-burst?ratio=0.2`.
    pub faults: String,
    /// `DEMO_REVIEWS` (default 200000): review rows seeded for the slow-sql (scan) exercise.
    pub reviews: u64,
    /// `CACHE_TTL_S` (default 30): how long the user service keeps a profile in Redis.
    pub cache_ttl_s: u64,
    /// `AUTH_SECRET`: the key auth signs tokens with.
    pub auth_secret: String,
    /// `WORKER_THREADS` (default 2): tokio worker threads.
    pub worker_threads: usize,
    /// `DB_CONNECT_TIMEOUT_S` (default 60): how long to wait for MySQL/Redis at start-up.
    pub connect_timeout: Duration,
}

fn var(name: &str) -> Option<String> {
    env::var(name).ok().filter(|v| !v.is_empty())
}

fn var_or(name: &str, default: &str) -> String {
    var(name).unwrap_or_else(|| default.to_string())
}

fn parse_var<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T>
where
    T::Err: std::fmt::Display,
{
    match var(name) {
        None => Ok(default),
        Some(v) => v.parse().map_err(|e| anyhow::anyhow!("{name}={v:?}: {e}")),
    }
}

/// Whether an environment flag is set to a true value (`1`, `true`, `yes`, `on`).
pub fn flag(name: &str) -> bool {
    var(name)
        .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
}

impl Config {
    /// Reads the configuration of `role` from the environment.
    pub fn from_env(role: Role) -> anyhow::Result<Config> {
        let port = |r: Role| format!("http://127.0.0.1:{}", r.default_port());
        let cfg = Config {
            role,
            service_name: var_or("OTEL_SERVICE_NAME", role.name()),
            bind_addr: var_or("BIND_ADDR", "0.0.0.0"),
            port: parse_var("PORT", role.default_port())?,
            mysql_url: var_or("MYSQL_URL", "mysql://shop:shop@127.0.0.1:3306/shop"),
            redis_url: var_or("REDIS_URL", "redis://127.0.0.1:6379/0"),
            auth_url: var_or("AUTH_URL", &port(Role::Auth)),
            user_url: var_or("USER_URL", &port(Role::User)),
            inventory_url: var_or("INVENTORY_URL", &port(Role::Inventory)),
            payment_url: var_or("PAYMENT_URL", &port(Role::Payment)),
            upstream_timeout: Duration::from_millis(parse_var("UPSTREAM_TIMEOUT_MS", 1500)?),
            propagate: flag("DEMO_PROPAGATE"),
            faults: var_or("DEMO_FAULTS", ""),
            reviews: parse_var("DEMO_REVIEWS", 200_000)?,
            cache_ttl_s: parse_var("CACHE_TTL_S", 30)?,
            auth_secret: var_or("AUTH_SECRET", "demo-shop-secret"),
            worker_threads: parse_var("WORKER_THREADS", 2)?,
            connect_timeout: Duration::from_secs(parse_var("DB_CONNECT_TIMEOUT_S", 60)?),
        };
        if cfg.worker_threads == 0 {
            bail!("WORKER_THREADS must be at least 1");
        }
        for (name, url) in [
            ("AUTH_URL", &cfg.auth_url),
            ("USER_URL", &cfg.user_url),
            ("INVENTORY_URL", &cfg.inventory_url),
            ("PAYMENT_URL", &cfg.payment_url),
        ] {
            url.parse::<hyper::Uri>()
                .with_context(|| format!("{name}={url:?} is not a URL"))?;
        }
        Ok(cfg)
    }
}
