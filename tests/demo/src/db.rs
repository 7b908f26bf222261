//! MySQL and Redis connections, and the schema and seed data applied at start-up when missing.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use mysql_async::prelude::*;
use mysql_async::{Conn, Opts, OptsBuilder, Pool, PoolConstraints, PoolOpts};
use redis::aio::MultiplexedConnection;

use crate::config::Config;
use crate::{info, warn};

/// The schema (`sql/schema.sql`).
pub const SCHEMA: &str = include_str!("../sql/schema.sql");
/// The seed data (`sql/seed.sql`).
pub const SEED: &str = include_str!("../sql/seed.sql");
/// Number of products in the seed data.
pub const PRODUCTS: u32 = 20;

/// MySQL's "unknown database" error.
const ER_BAD_DB_ERROR: u16 = 1049;

/// Connects to MySQL, creating the database named in `MYSQL_URL` when missing, waiting up to
/// `DB_CONNECT_TIMEOUT_S` for the server to come up.
pub async fn connect_mysql(cfg: &Config) -> anyhow::Result<Pool> {
    let opts =
        Opts::from_url(&cfg.mysql_url).with_context(|| format!("MYSQL_URL={:?}", cfg.mysql_url))?;
    let Some(db) = opts.db_name().map(str::to_string) else {
        bail!(
            "MYSQL_URL={:?} names no database (mysql://user:pass@host:port/DATABASE)",
            cfg.mysql_url
        );
    };
    let deadline = Instant::now() + cfg.connect_timeout;
    loop {
        match probe(&opts, &db).await {
            Ok(()) => break,
            Err(e) if Instant::now() < deadline => {
                warn!(
                    "mysql at {}:{} not ready ({e:#}); retrying",
                    opts.ip_or_hostname(),
                    opts.tcp_port()
                );
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => {
                return Err(e.context(format!("connecting to MySQL at {}", opts.ip_or_hostname())));
            }
        }
    }
    let constraints = PoolConstraints::new(1, 16).context("pool constraints")?;
    let pool_opts = PoolOpts::default().with_constraints(constraints);
    Ok(Pool::new(OptsBuilder::from_opts(opts).pool_opts(pool_opts)))
}

/// Connects once to the database, creating it if the server says it does not exist.
async fn probe(opts: &Opts, db: &str) -> anyhow::Result<()> {
    match Conn::new(opts.clone()).await {
        Ok(conn) => Ok(conn.disconnect().await?),
        Err(mysql_async::Error::Server(e)) if e.code == ER_BAD_DB_ERROR => {
            let mut conn =
                Conn::new(OptsBuilder::from_opts(opts.clone()).db_name(None::<String>)).await?;
            conn.query_drop(format!(
                "CREATE DATABASE IF NOT EXISTS `{}`",
                db.replace('`', "")
            ))
            .await?;
            info!("created database {db}");
            Ok(conn.disconnect().await?)
        }
        Err(e) => Err(e.into()),
    }
}

/// Splits a SQL file into statements: `--` comment lines dropped, statements end with `;`.
pub fn statements(sql: &str) -> Vec<String> {
    let text: String = sql
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .map(|l| format!("{l}\n"))
        .collect();
    text.split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Applies the schema and seed data, then tops up the review rows to `reviews`. Idempotent, and serialized
/// between services with `GET_LOCK` so several may start at once.
pub async fn ensure_schema(pool: &Pool, reviews: u64) -> anyhow::Result<()> {
    let mut conn = pool
        .get_conn()
        .await
        .context("getting a MySQL connection")?;
    let db: Option<String> = conn.query_first("SELECT DATABASE()").await?;
    let lock = format!("loupe_demo_schema_{}", db.unwrap_or_default());
    let got: Option<Option<i64>> = conn
        .exec_first("SELECT GET_LOCK(?, 300)", (lock.as_str(),))
        .await?;
    if got.flatten() != Some(1) {
        bail!("could not take the schema lock {lock:?}");
    }
    let result = apply(&mut conn, reviews).await;
    let _: Option<Option<i64>> = conn
        .exec_first("SELECT RELEASE_LOCK(?)", (lock.as_str(),))
        .await?;
    result
}

async fn apply(conn: &mut Conn, reviews: u64) -> anyhow::Result<()> {
    for stmt in statements(SCHEMA).iter().chain(statements(SEED).iter()) {
        conn.query_drop(stmt)
            .await
            .with_context(|| format!("applying {}", first_line(stmt)))?;
    }
    let have: Option<u64> = conn.query_first("SELECT COUNT(*) FROM reviews").await?;
    let have = have.unwrap_or(0);
    if have < reviews {
        let start = Instant::now();
        let mut next = have;
        while next < reviews {
            let end = (next + 2000).min(reviews);
            let rows: Vec<String> = (next..end)
                .map(|i| {
                    let product = i % u64::from(PRODUCTS) + 1;
                    let rating = (i * 7 + i / 13) % 5 + 1;
                    let body = REVIEW_TEXTS[(i % REVIEW_TEXTS.len() as u64) as usize];
                    format!("({product},{rating},'{body} (#{i})')")
                })
                .collect();
            conn.query_drop(format!(
                "INSERT INTO reviews (product_id, rating, body) VALUES {}",
                rows.join(",")
            ))
            .await
            .context("seeding reviews")?;
            next = end;
        }
        info!(
            "seeded {} reviews in {} ms",
            reviews - have,
            start.elapsed().as_millis()
        );
    }
    Ok(())
}

const REVIEW_TEXTS: [&str; 6] = [
    "Does what it says",
    "Great value, would buy again",
    "Arrived late but works fine",
    "Not for me, returned it",
    "Excellent quality",
    "Good, though a bit pricey",
];

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

/// Connects to Redis, waiting up to `DB_CONNECT_TIMEOUT_S` for the server.
pub async fn connect_redis(cfg: &Config) -> anyhow::Result<MultiplexedConnection> {
    let client = redis::Client::open(cfg.redis_url.as_str())
        .with_context(|| format!("REDIS_URL={:?}", cfg.redis_url))?;
    let deadline = Instant::now() + cfg.connect_timeout;
    loop {
        let attempt = async {
            let mut conn = client.get_multiplexed_async_connection().await?;
            redis::cmd("PING").query_async::<String>(&mut conn).await?;
            Ok::<_, redis::RedisError>(conn)
        };
        match attempt.await {
            Ok(conn) => return Ok(conn),
            Err(e) if Instant::now() < deadline => {
                warn!("redis at {} not ready ({e}); retrying", cfg.redis_url);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => {
                return Err(anyhow::Error::new(e)
                    .context(format!("connecting to Redis at {}", cfg.redis_url)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sql_files_split_into_statements() {
        let schema = statements(SCHEMA);
        assert_eq!(schema.len(), 4, "{schema:#?}");
        assert!(
            schema
                .iter()
                .all(|s| s.starts_with("CREATE TABLE IF NOT EXISTS"))
        );
        let seed = statements(SEED);
        assert_eq!(seed.len(), 2);
        assert!(
            seed[0].contains("'ESP-001'") && seed[0].matches("),").count() == PRODUCTS as usize - 1
        );
        assert!(seed[1].contains("user100@shop.example"));
    }
}
