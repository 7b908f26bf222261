//! `demo-shop SERVICE`: runs one of the demo shop's services (frontend, auth, user, inventory, payment) or the
//! load generator (`loadgen`). Configuration comes from the environment; see the crate docs and
//! `docs/exercises/README.md`.

use std::process::ExitCode;

use loupe_demo_shop::config::Config;
use loupe_demo_shop::{Role, loadgen, services};

const USAGE: &str = "usage: demo-shop frontend|auth|user|inventory|payment|loadgen

Services read MYSQL_URL, REDIS_URL, PORT, BIND_ADDR, OTEL_SERVICE_NAME, AUTH_URL, USER_URL,
INVENTORY_URL, PAYMENT_URL, UPSTREAM_TIMEOUT_MS, DEMO_PROPAGATE, DEMO_FAULTS, DEMO_REVIEWS,
CACHE_TTL_S, WORKER_THREADS. The load generator reads FRONTEND_URL, LOADGEN_RPS, LOADGEN_DURATION_S.
Faults at run time: POST /admin/fault/NAME?on=1 on any service; GET /admin/faults lists them.";

fn main() -> ExitCode {
    let arg = std::env::args().nth(1).unwrap_or_default();
    let result = match arg.as_str() {
        "" | "-h" | "--help" | "help" => {
            println!("{USAGE}");
            return if arg.is_empty() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
        "loadgen" => {
            loadgen::LoadConfig::from_env().and_then(|cfg| runtime(2)?.block_on(loadgen::run(cfg)))
        }
        name => match name.parse::<Role>() {
            Err(e) => {
                eprintln!("demo-shop: {e}\n{USAGE}");
                return ExitCode::from(2);
            }
            Ok(role) => Config::from_env(role)
                .and_then(|cfg| runtime(cfg.worker_threads)?.block_on(services::run(cfg))),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo-shop {arg}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime(workers: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()?)
}
