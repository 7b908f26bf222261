//! inventory: the product catalogue and its stock, in MySQL.
//!
//! `GET /products` (one query), `GET /products/{id}` (the product plus its rating from `reviews`),
//! `POST /reserve {"order_id", "items": [{"product_id", "qty"}]}` (takes stock in one transaction; 409 when short),
//! `POST /release` (gives it back, for a checkout that failed after reserving).
//!
//! Faults: `n-plus-one` lists products with 1 + N queries; `slow-sql` mode=sleep makes the product queries
//! sleep `ms`, mode=scan computes ratings with `IGNORE INDEX (idx_reviews_product)`, a full scan of `reviews`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use hyper::{Method, StatusCode};
use mysql_async::prelude::*;
use mysql_async::{Conn, Pool, TxOpts};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::faults::{Fault, spin};
use crate::http::{ApiError, ApiResult, Ctx, Handler, Req, Resp, Stats};
use crate::info;
use crate::services::parse_id;

/// A product.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Product {
    /// Id.
    pub id: u64,
    /// Stock keeping unit.
    pub sku: String,
    /// Name.
    pub name: String,
    /// One line.
    pub description: String,
    /// Unit price.
    pub price_cents: i64,
    /// Units in stock.
    pub stock: i64,
}

/// One line of an order.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Item {
    /// Product id.
    pub product_id: u64,
    /// Units.
    pub qty: u32,
}

#[derive(Deserialize)]
struct Reservation {
    order_id: String,
    items: Vec<Item>,
}

const PRODUCT_COLUMNS: &str = "p.id, p.sku, p.name, p.description, p.price_cents, p.stock";
type ProductRow = (u64, String, String, String, i64, i64);

fn product((id, sku, name, description, price_cents, stock): ProductRow) -> Product {
    Product {
        id,
        sku,
        name,
        description,
        price_cents,
        stock,
    }
}

/// The inventory service.
pub struct Inventory {
    ctx: Arc<Ctx>,
    pool: Pool,
}

impl Inventory {
    /// A handler over `ctx` and MySQL.
    pub fn new(ctx: Arc<Ctx>, pool: Pool) -> Inventory {
        Inventory { ctx, pool }
    }

    fn sql(&self) {
        Stats::inc(&self.ctx.stats.sql_queries);
    }

    /// The `SLEEP` join when slow-sql mode=sleep is on.
    fn sleep_join(&self) -> String {
        match self.ctx.fault(Fault::SlowSql) {
            Some(p) if p.word("mode") == "sleep" => {
                format!(
                    " CROSS JOIN (SELECT SLEEP({:.3}) AS s) AS slow",
                    p.num("ms") / 1000.0
                )
            }
            _ => String::new(),
        }
    }

    async fn list(&self) -> ApiResult {
        if let Some(p) = self.ctx.fault(Fault::Cpu) {
            price_catalog_hot_loop(p.millis("ms"), 1);
        }
        let mut conn = self.pool.get_conn().await?;
        let products = if self.ctx.fault(Fault::NPlusOne).is_some() {
            self.sql();
            let ids: Vec<u64> = conn.query("SELECT id FROM products ORDER BY id").await?;
            let mut products = Vec::with_capacity(ids.len());
            for id in ids {
                if let Some(p) = self.one(&mut conn, id).await? {
                    products.push(p);
                }
            }
            products
        } else {
            self.sql();
            let rows: Vec<ProductRow> = conn
                .query(format!(
                    "SELECT {PRODUCT_COLUMNS} FROM products p{} ORDER BY p.id",
                    self.sleep_join()
                ))
                .await?;
            rows.into_iter().map(product).collect()
        };
        Ok(Resp::ok(&products))
    }

    async fn one(&self, conn: &mut Conn, id: u64) -> Result<Option<Product>, ApiError> {
        self.sql();
        let row: Option<ProductRow> = conn
            .exec_first(
                format!(
                    "SELECT {PRODUCT_COLUMNS} FROM products p{} WHERE p.id = ?",
                    self.sleep_join()
                ),
                (id,),
            )
            .await?;
        Ok(row.map(product))
    }

    async fn detail(&self, id: u64) -> ApiResult {
        let mut conn = self.pool.get_conn().await?;
        let p = self
            .one(&mut conn, id)
            .await?
            .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no product {id}")))?;
        let scan = self
            .ctx
            .fault(Fault::SlowSql)
            .is_some_and(|p| p.word("mode") == "scan");
        let hint = if scan {
            " IGNORE INDEX (idx_reviews_product)"
        } else {
            ""
        };
        self.sql();
        let rating: Option<(u64, Option<f64>)> = conn
            .exec_first(
                format!("SELECT COUNT(*), CAST(AVG(rating) AS DOUBLE) FROM reviews{hint} WHERE product_id = ?"),
                (id,),
            )
            .await?;
        let (reviews, rating) = rating.unwrap_or((0, None));
        Ok(Resp::ok(
            &json!({ "product": p, "reviews": reviews, "rating": rating.map(|r| (r * 100.0).round() / 100.0) }),
        ))
    }

    async fn reserve(&self, req: &Req) -> ApiResult {
        let r: Reservation = req.json()?;
        let items = merge(&r.items)?;
        let mut conn = self.pool.get_conn().await?;
        let mut tx = conn.start_transaction(TxOpts::default()).await?;
        let mut lines = Vec::new();
        let mut subtotal = 0i64;
        // Ascending product ids, so two concurrent orders lock rows in the same order.
        for (product_id, qty) in items {
            self.sql();
            tx.exec_drop(
                "UPDATE products SET stock = stock - ? WHERE id = ? AND stock >= ?",
                (qty, product_id, qty),
            )
            .await?;
            if tx.affected_rows() == 0 {
                self.sql();
                let exists: Option<u64> = tx
                    .exec_first("SELECT id FROM products WHERE id = ?", (product_id,))
                    .await?;
                tx.rollback().await?;
                return Err(match exists {
                    Some(_) => ApiError::new(
                        StatusCode::CONFLICT,
                        format!("product {product_id}: not enough stock"),
                    ),
                    None => {
                        ApiError::new(StatusCode::NOT_FOUND, format!("no product {product_id}"))
                    }
                });
            }
            self.sql();
            let price: Option<i64> = tx
                .exec_first(
                    "SELECT price_cents FROM products WHERE id = ?",
                    (product_id,),
                )
                .await?;
            let price = price.unwrap_or(0);
            subtotal += price * i64::from(qty);
            lines.push(json!({ "product_id": product_id, "qty": qty, "price_cents": price }));
        }
        self.sql();
        tx.commit().await?;
        info!(
            "reserved order={} lines={} subtotal_cents={subtotal}",
            r.order_id,
            lines.len()
        );
        Ok(Resp::ok(
            &json!({ "order_id": r.order_id, "items": lines, "subtotal_cents": subtotal }),
        ))
    }

    async fn release(&self, req: &Req) -> ApiResult {
        let r: Reservation = req.json()?;
        let items = merge(&r.items)?;
        let mut conn = self.pool.get_conn().await?;
        for (product_id, qty) in &items {
            self.sql();
            conn.exec_drop(
                "UPDATE products SET stock = stock + ? WHERE id = ?",
                (qty, product_id),
            )
            .await?;
        }
        crate::warn!("released order={} lines={}", r.order_id, items.len());
        Ok(Resp::ok(
            &json!({ "order_id": r.order_id, "released": items.len() }),
        ))
    }
}

/// Sums quantities per product, in ascending product order; refuses empty orders and silly quantities.
fn merge(items: &[Item]) -> Result<BTreeMap<u64, u32>, ApiError> {
    let bad = |m: &str| ApiError::new(StatusCode::BAD_REQUEST, m.to_string());
    if items.is_empty() || items.len() > 50 {
        return Err(bad("an order has 1 to 50 lines"));
    }
    let mut merged = BTreeMap::new();
    for item in items {
        if !(1..=100).contains(&item.qty) {
            return Err(bad("qty must be 1 to 100"));
        }
        *merged.entry(item.product_id).or_insert(0) += item.qty;
    }
    Ok(merged)
}

impl Handler for Inventory {
    async fn handle(&self, req: Req) -> ApiResult {
        match (&req.method, req.segments().as_slice()) {
            (&Method::GET, ["products"]) => self.list().await,
            (&Method::GET, ["products", id]) => self.detail(parse_id(id)?).await,
            (&Method::POST, ["reserve"]) => self.reserve(&req).await,
            (&Method::POST, ["release"]) => self.release(&req).await,
            _ => Err(ApiError::not_found()),
        }
    }
}

/// The cpu fault's hot function in inventory.
#[inline(never)]
pub fn price_catalog_hot_loop(budget: Duration, seed: u64) -> u64 {
    spin(budget, seed, 0x1417)
}
