//! user: profiles, with Redis as a read-through cache in front of MySQL.
//!
//! `GET /users/{id}` → the profile; the `x-cache` header says `hit`, `miss` or `bypass`. A miss reads MySQL and
//! stores the profile under `user:{id}` for `CACHE_TTL_S`.
//!
//! Faults: `cache-off` mode=miss looks up a key that never repeats (the classic "request id in the cache key"
//! bug: every request is a Redis GET miss, a MySQL query and a Redis SET); mode=bypass skips Redis altogether.
//! `slow-sql` makes the MySQL lookup sleep `ms` (mode=scan behaves the same here: the table is tiny).

use std::sync::Arc;
use std::time::Duration;

use hyper::{Method, StatusCode};
use mysql_async::Pool;
use mysql_async::prelude::*;
use redis::aio::MultiplexedConnection;
use serde::{Deserialize, Serialize};

use crate::faults::{Fault, spin};
use crate::http::{ApiError, ApiResult, Ctx, Handler, Req, Resp, Stats};
use crate::services::parse_id;
use crate::trace::random_u64;

/// A user's profile.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Profile {
    /// Id.
    pub id: u64,
    /// E-mail.
    pub email: String,
    /// Display name.
    pub name: String,
    /// Loyalty tier: bronze, silver or gold.
    pub tier: String,
    /// City.
    pub city: String,
}

/// The user service.
pub struct User {
    ctx: Arc<Ctx>,
    pool: Pool,
    redis: MultiplexedConnection,
}

impl User {
    /// A handler over `ctx`, MySQL and Redis.
    pub fn new(ctx: Arc<Ctx>, pool: Pool, redis: MultiplexedConnection) -> User {
        User { ctx, pool, redis }
    }

    async fn get(&self, id: u64) -> ApiResult {
        if let Some(p) = self.ctx.fault(Fault::Cpu) {
            render_profile_hot_loop(p.millis("ms"), id);
        }
        let stats = &self.ctx.stats;
        let mode = self
            .ctx
            .fault(Fault::CacheOff)
            .map(|p| p.word("mode").to_string());
        if mode.as_deref() == Some("bypass") {
            let profile = self.load(id).await?;
            return Ok(Resp::ok(&profile).with_header("x-cache", "bypass"));
        }
        let key = match mode.as_deref() {
            Some("miss") => format!("user:{id}:{:016x}", random_u64()),
            _ => format!("user:{id}"),
        };
        let mut redis = self.redis.clone();
        Stats::inc(&stats.redis_commands);
        let cached: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut redis).await?;
        if let Some(json) = cached {
            Stats::inc(&stats.cache_hits);
            let resp = Resp {
                body: json.into(),
                ..Resp::ok(&())
            };
            return Ok(resp.with_header("x-cache", "hit"));
        }
        Stats::inc(&stats.cache_misses);
        let profile = self.load(id).await?;
        let json = serde_json::to_string(&profile)
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        Stats::inc(&stats.redis_commands);
        redis::cmd("SET")
            .arg(&key)
            .arg(&json)
            .arg("EX")
            .arg(self.ctx.cfg.cache_ttl_s.max(1))
            .query_async::<()>(&mut redis)
            .await?;
        Ok(Resp {
            body: json.into(),
            ..Resp::ok(&())
        }
        .with_header("x-cache", "miss"))
    }

    async fn load(&self, id: u64) -> Result<Profile, ApiError> {
        let mut conn = self.pool.get_conn().await?;
        Stats::inc(&self.ctx.stats.sql_queries);
        type Row = (u64, String, String, String, String);
        let row: Option<Row> = match self.ctx.fault(Fault::SlowSql) {
            Some(p) => {
                conn.exec_first(
                    "SELECT u.id, u.email, u.name, u.tier, u.city FROM users u \
                     CROSS JOIN (SELECT SLEEP(?) AS s) AS slow WHERE u.id = ?",
                    (p.num("ms") / 1000.0, id),
                )
                .await?
            }
            None => {
                conn.exec_first(
                    "SELECT id, email, name, tier, city FROM users WHERE id = ?",
                    (id,),
                )
                .await?
            }
        };
        let (id, email, name, tier, city) =
            row.ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no user {id}")))?;
        Ok(Profile {
            id,
            email,
            name,
            tier,
            city,
        })
    }
}

impl Handler for User {
    async fn handle(&self, req: Req) -> ApiResult {
        match (&req.method, req.segments().as_slice()) {
            (&Method::GET, ["users", id]) => self.get(parse_id(id)?).await,
            _ => Err(ApiError::not_found()),
        }
    }
}

/// The cpu fault's hot function in user.
#[inline(never)]
pub fn render_profile_hot_loop(budget: Duration, seed: u64) -> u64 {
    spin(budget, seed, 0x05E1)
}
