//! The five services. Each connects its dependencies, then binds and prints `listening on ADDR` (the readiness
//! signal the tests and `cargo xtask demo` wait for), then serves until SIGINT/SIGTERM.

pub mod auth;
pub mod frontend;
pub mod inventory;
pub mod payment;
pub mod user;

use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::http::{Ctx, Handler, serve};
use crate::{Role, db, info, log};

/// Runs the service `cfg.role` until a termination signal.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    log::init(&cfg.service_name);
    info!(
        "starting {} (pid {}, demo-shop {}, propagate={})",
        cfg.role,
        std::process::id(),
        env!("CARGO_PKG_VERSION"),
        cfg.propagate
    );
    let ctx = Arc::new(Ctx::new(cfg.clone())?);
    let serving = async {
        match cfg.role {
            Role::Frontend => start(&cfg, ctx.clone(), frontend::Frontend::new(ctx.clone())).await,
            Role::Auth => start(&cfg, ctx.clone(), auth::Auth::new(ctx.clone())).await,
            Role::User => {
                let pool = db::connect_mysql(&cfg).await?;
                db::ensure_schema(&pool, cfg.reviews).await?;
                let redis = db::connect_redis(&cfg).await?;
                start(&cfg, ctx.clone(), user::User::new(ctx.clone(), pool, redis)).await
            }
            Role::Inventory => {
                let pool = db::connect_mysql(&cfg).await?;
                db::ensure_schema(&pool, cfg.reviews).await?;
                start(
                    &cfg,
                    ctx.clone(),
                    inventory::Inventory::new(ctx.clone(), pool),
                )
                .await
            }
            Role::Payment => {
                let pool = db::connect_mysql(&cfg).await?;
                db::ensure_schema(&pool, cfg.reviews).await?;
                start(&cfg, ctx.clone(), payment::Payment::new(ctx.clone(), pool)).await
            }
        }
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = serving => r,
        _ = tokio::signal::ctrl_c() => { info!("SIGINT, exiting"); Ok(()) }
        _ = term.recv() => { info!("SIGTERM, exiting"); Ok(()) }
    }
}

async fn start<H: Handler>(cfg: &Config, ctx: Arc<Ctx>, handler: H) -> anyhow::Result<()> {
    let listener = TcpListener::bind((cfg.bind_addr.as_str(), cfg.port))
        .await
        .with_context(|| format!("binding {}:{}", cfg.bind_addr, cfg.port))?;
    info!("listening on {}", listener.local_addr()?);
    serve(listener, ctx, Arc::new(handler)).await
}

/// Parses a numeric path segment.
pub(crate) fn parse_id(s: &str) -> Result<u64, crate::http::ApiError> {
    s.parse().map_err(|_| {
        crate::http::ApiError::new(hyper::StatusCode::BAD_REQUEST, format!("bad id {s:?}"))
    })
}
