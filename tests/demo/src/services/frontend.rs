//! frontend: the shop's public face. It owns no data; every request fans out to the others.
//!
//! | route | calls |
//! |---|---|
//! | `GET /` | inventory `/products` (an HTML page) |
//! | `GET /products` | inventory `/products` (+ guest prices) |
//! | `GET /products/{id}` | inventory `/products/{id}` |
//! | `POST /login {"user_id"}` | auth `/login` |
//! | `GET /account` (Bearer) | auth `/verify`, user `/users/{id}` |
//! | `POST /checkout {"items": [{"product_id", "qty"}]}` (Bearer) | auth, user, inventory `/reserve`, payment `/payments` (inventory `/release` when payment fails) |
//!
//! With `DEMO_PROPAGATE=1` every outgoing call carries a `traceparent` naming a new span of this request's trace.
//! Upstream errors map to 502, upstream timeouts (`UPSTREAM_TIMEOUT_MS`) to 504, upstream 4xx pass through.
//! The cpu fault burns its budget in [`compute_discount_hot_loop`].

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use hyper::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::faults::{Fault, spin};
use crate::http::{ApiError, ApiResult, Ctx, Handler, Req, Resp, Upstream, UpstreamError};
use crate::info;
use crate::services::inventory::{Item, Product};
use crate::services::user::Profile;
use crate::trace::random_u64;

/// The frontend service.
pub struct Frontend {
    ctx: Arc<Ctx>,
    auth: Upstream,
    user: Upstream,
    inventory: Upstream,
    payment: Upstream,
}

#[derive(Deserialize)]
struct Checkout {
    items: Vec<Item>,
}

#[derive(Deserialize)]
struct Verified {
    user_id: u64,
}

#[derive(Deserialize)]
struct Reserved {
    subtotal_cents: i64,
}

impl Frontend {
    /// A handler over `ctx`, with clients for the four upstreams.
    pub fn new(ctx: Arc<Ctx>) -> Frontend {
        let cfg = &ctx.cfg;
        let t = cfg.upstream_timeout;
        Frontend {
            auth: Upstream::new("auth", &cfg.auth_url, t),
            user: Upstream::new("user", &cfg.user_url, t),
            inventory: Upstream::new("inventory", &cfg.inventory_url, t),
            payment: Upstream::new("payment", &cfg.payment_url, t),
            ctx,
        }
    }

    /// Headers for one outgoing call: a fresh child span in `traceparent` when propagating; the load generator's
    /// request id, forwarded in `User-Agent` (see [`Req::request_id`]).
    fn headers(&self, req: &Req) -> Vec<(&'static str, String)> {
        let mut h = match (self.ctx.cfg.propagate, req.span) {
            (true, Some(span)) => vec![("traceparent", span.child().header())],
            _ => Vec::new(),
        };
        if let Some(rid) = req.request_id() {
            h.push(("user-agent", format!("demo-frontend rid={rid}")));
        }
        h
    }

    fn with_auth(&self, req: &Req) -> Result<Vec<(&'static str, String)>, ApiError> {
        let token = req.header("authorization").ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing Authorization: Bearer token",
            )
        })?;
        let mut h = self.headers(req);
        h.push(("authorization", token.to_string()));
        Ok(h)
    }

    async fn products(&self, req: &Req) -> Result<Vec<Product>, UpstreamError> {
        self.inventory
            .json(Method::GET, "/products", None, &self.headers(req))
            .await
    }

    async fn home(&self, req: &Req) -> ApiResult {
        let products = self.products(req).await?;
        let mut html =
            String::from("<!doctype html><html><head><title>Loupe demo shop</title></head><body>");
        html.push_str("<h1>Loupe demo shop</h1><ul>");
        for p in products.iter().take(10) {
            let _ = write!(
                html,
                "<li><a href=\"/products/{}\">{}</a> {:.2}</li>",
                p.id,
                p.name,
                p.price_cents as f64 / 100.0
            );
        }
        html.push_str("</ul></body></html>");
        Ok(Resp::html(html))
    }

    async fn listing(&self, req: &Req) -> ApiResult {
        let products = self.products(req).await?;
        let total: i64 = products.iter().map(|p| p.price_cents).sum();
        let discount = compute_discount(&self.ctx, total, "guest");
        let listed: Vec<Value> = products
            .iter()
            .map(|p| {
                let sale = p.price_cents - p.price_cents * discount / total.max(1);
                json!({ "id": p.id, "sku": p.sku, "name": p.name, "price_cents": p.price_cents,
                        "sale_price_cents": sale, "in_stock": p.stock > 0 })
            })
            .collect();
        Ok(Resp::ok(&listed))
    }

    async fn verify(&self, req: &Req) -> Result<(u64, Profile), ApiError> {
        let verified: Verified = self
            .auth
            .json(Method::GET, "/verify", None, &self.with_auth(req)?)
            .await?;
        let profile: Profile = self
            .user
            .json(
                Method::GET,
                &format!("/users/{}", verified.user_id),
                None,
                &self.headers(req),
            )
            .await?;
        Ok((verified.user_id, profile))
    }

    async fn checkout(&self, req: &Req) -> ApiResult {
        let order: Checkout = req.json()?;
        let (user_id, profile) = self.verify(req).await?;
        let order_id = format!("ord-{:016x}", random_u64());
        let body = json!({ "order_id": order_id, "items": order.items });
        let reserved: Reserved = self
            .inventory
            .json(Method::POST, "/reserve", Some(&body), &self.headers(req))
            .await?;
        let discount = compute_discount(&self.ctx, reserved.subtotal_cents, &profile.tier);
        let total = reserved.subtotal_cents - discount;
        let pay = json!({ "order_id": order_id, "user_id": user_id, "amount_cents": total });
        let paid: Result<Value, _> = self
            .payment
            .json(Method::POST, "/payments", Some(&pay), &self.headers(req))
            .await;
        let paid = match paid {
            Ok(v) => v,
            Err(e) => {
                // Give the stock back; if that fails too the order stays reserved, as in real shops.
                let _ = self
                    .inventory
                    .json::<Value>(Method::POST, "/release", Some(&body), &self.headers(req))
                    .await;
                return Err(e.into());
            }
        };
        info!(
            "checkout ok order={order_id} user={user_id} tier={} lines={} total_cents={total}",
            profile.tier,
            order.items.len()
        );
        Ok(Resp::ok(&json!({
            "order_id": order_id,
            "payment_id": paid.get("payment_id"),
            "subtotal_cents": reserved.subtotal_cents,
            "discount_cents": discount,
            "total_cents": total,
            "user": profile.name,
        })))
    }
}

impl Handler for Frontend {
    async fn handle(&self, req: Req) -> ApiResult {
        match (&req.method, req.segments().as_slice()) {
            (&Method::GET, []) => self.home(&req).await,
            (&Method::GET, ["products"]) => self.listing(&req).await,
            (&Method::GET, ["products", id]) => {
                let v: Value = self
                    .inventory
                    .json(
                        Method::GET,
                        &format!("/products/{id}"),
                        None,
                        &self.headers(&req),
                    )
                    .await?;
                Ok(Resp::ok(&v))
            }
            (&Method::POST, ["login"]) => {
                let body: Value = req.json()?;
                let v: Value = self
                    .auth
                    .json(Method::POST, "/login", Some(&body), &self.headers(&req))
                    .await?;
                Ok(Resp::ok(&v))
            }
            (&Method::GET, ["account"]) => {
                let (_, profile) = self.verify(&req).await?;
                Ok(Resp::ok(&profile))
            }
            (&Method::POST, ["checkout"]) => self.checkout(&req).await,
            _ => Err(ApiError::not_found()),
        }
    }
}

/// The discount on `subtotal_cents` for a loyalty tier. With the cpu fault on, a "new discount engine" burns the
/// fault's budget in [`compute_discount_hot_loop`] first.
fn compute_discount(ctx: &Ctx, subtotal_cents: i64, tier: &str) -> i64 {
    if let Some(p) = ctx.fault(Fault::Cpu) {
        compute_discount_hot_loop(p.millis("ms"), subtotal_cents as u64);
    }
    let percent = match tier {
        "gold" => 10,
        "silver" => 5,
        _ => 0,
    };
    subtotal_cents * percent / 100
}

/// The cpu fault's hot function in the frontend, the one the cpu exercise finds at the top of the flamegraph.
#[inline(never)]
pub fn compute_discount_hot_loop(budget: Duration, seed: u64) -> u64 {
    spin(budget, seed, 0x0F0E)
}
