//! payment: records payments in MySQL.
//!
//! `POST /payments {"order_id", "user_id", "amount_cents"}` → a velocity check (the user's payments in the last
//! hour, through `idx_payments_user`), then an insert → `{"payment_id", "status": "captured"}`;
//! `GET /payments/{id}`.
//!
//! Faults: `slow-sql` mode=sleep makes the insert sleep `ms`; mode=scan runs the velocity check with
//! `IGNORE INDEX (idx_payments_user)`, which gets slower as the table grows.

use std::sync::Arc;
use std::time::Duration;

use hyper::{Method, StatusCode};
use mysql_async::Pool;
use mysql_async::prelude::*;
use serde::Deserialize;
use serde_json::json;

use crate::faults::{Fault, spin};
use crate::http::{ApiError, ApiResult, Ctx, Handler, Req, Resp, Stats};
use crate::services::parse_id;

/// Payments a user may make per hour.
const VELOCITY_LIMIT: u64 = 10_000;

#[derive(Deserialize)]
struct NewPayment {
    order_id: String,
    user_id: u64,
    amount_cents: i64,
}

/// The payment service.
pub struct Payment {
    ctx: Arc<Ctx>,
    pool: Pool,
}

impl Payment {
    /// A handler over `ctx` and MySQL.
    pub fn new(ctx: Arc<Ctx>, pool: Pool) -> Payment {
        Payment { ctx, pool }
    }

    async fn create(&self, req: &Req) -> ApiResult {
        let p: NewPayment = req.json()?;
        if p.amount_cents < 0 || p.order_id.is_empty() || p.order_id.len() > 40 {
            return Err(ApiError::new(StatusCode::BAD_REQUEST, "bad payment"));
        }
        if let Some(f) = self.ctx.fault(Fault::Cpu) {
            fraud_score_hot_loop(f.millis("ms"), p.user_id);
        }
        let slow = self.ctx.fault(Fault::SlowSql);
        let mode = slow.as_ref().map(|s| s.word("mode"));
        let mut conn = self.pool.get_conn().await?;

        let hint = if mode == Some("scan") {
            " IGNORE INDEX (idx_payments_user)"
        } else {
            ""
        };
        Stats::inc(&self.ctx.stats.sql_queries);
        let recent: Option<u64> = conn
            .exec_first(
                format!(
                    "SELECT COUNT(*) FROM payments{hint} WHERE user_id = ? AND created_at > NOW() - INTERVAL 1 HOUR"
                ),
                (p.user_id,),
            )
            .await?;
        if recent.unwrap_or(0) >= VELOCITY_LIMIT {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "velocity limit reached",
            ));
        }

        Stats::inc(&self.ctx.stats.sql_queries);
        match (mode, &slow) {
            (Some("sleep"), Some(s)) => {
                conn.exec_drop(
                    "INSERT INTO payments (order_id, user_id, amount_cents, status) \
                     SELECT ?, ?, ?, 'captured' FROM (SELECT SLEEP(?) AS s) AS slow",
                    (&p.order_id, p.user_id, p.amount_cents, s.num("ms") / 1000.0),
                )
                .await?
            }
            _ => {
                conn.exec_drop(
                    "INSERT INTO payments (order_id, user_id, amount_cents, status) VALUES (?, ?, ?, 'captured')",
                    (&p.order_id, p.user_id, p.amount_cents),
                )
                .await?
            }
        }
        let id = conn.last_insert_id().unwrap_or(0);
        crate::log::json(
            crate::log::Level::Info,
            "payment captured",
            json!({ "payment_id": id, "order_id": p.order_id, "user_id": p.user_id, "amount_cents": p.amount_cents }),
        );
        Ok(Resp::json(
            StatusCode::CREATED,
            &json!({ "payment_id": id, "status": "captured" }),
        ))
    }

    async fn get(&self, id: u64) -> ApiResult {
        let mut conn = self.pool.get_conn().await?;
        Stats::inc(&self.ctx.stats.sql_queries);
        let row: Option<(u64, String, u64, i64, String)> = conn
            .exec_first(
                "SELECT id, order_id, user_id, amount_cents, status FROM payments WHERE id = ?",
                (id,),
            )
            .await?;
        let (id, order_id, user_id, amount_cents, status) =
            row.ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no payment {id}")))?;
        Ok(Resp::ok(&json!({
            "payment_id": id, "order_id": order_id, "user_id": user_id, "amount_cents": amount_cents, "status": status
        })))
    }
}

impl Handler for Payment {
    async fn handle(&self, req: Req) -> ApiResult {
        match (&req.method, req.segments().as_slice()) {
            (&Method::POST, ["payments"]) => self.create(&req).await,
            (&Method::GET, ["payments", id]) => self.get(parse_id(id)?).await,
            _ => Err(ApiError::not_found()),
        }
    }
}

/// The cpu fault's hot function in payment.
#[inline(never)]
pub fn fraud_score_hot_loop(budget: Duration, seed: u64) -> u64 {
    spin(budget, seed, 0x9A77)
}
