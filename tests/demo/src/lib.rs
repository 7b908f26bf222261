//! The demo shop: five small HTTP services (frontend, auth, user, inventory, payment) over MySQL and Redis,
//! with fault switches that the troubleshooting exercises in `docs/exercises/` turn on at run time.
//!
//! One binary, `demo-shop ROLE`, runs any of the services (or the load generator). Everything is configured
//! through environment variables ([`config::Config`]); logs go to stdout as a mix of plain and JSON lines.
//! There is deliberately no OpenTelemetry SDK: Loupe has to see these services with zero code. With
//! `DEMO_PROPAGATE=1` the frontend writes W3C `traceparent` headers by hand on its outgoing calls.

pub mod config;
pub mod db;
pub mod faults;
pub mod http;
pub mod loadgen;
pub mod log;
pub mod services;
pub mod trace;

use std::fmt;
use std::str::FromStr;

/// Which program `demo-shop` runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Public entry point: pages, product listing, login, checkout; calls the four others.
    Frontend,
    /// Issues and verifies tokens (no storage).
    Auth,
    /// User profiles: Redis cache in front of MySQL.
    User,
    /// Product catalogue and stock in MySQL.
    Inventory,
    /// Records payments in MySQL.
    Payment,
}

impl Role {
    /// Every service, in start-up order (backends first).
    pub const ALL: [Role; 5] = [
        Role::Auth,
        Role::User,
        Role::Inventory,
        Role::Payment,
        Role::Frontend,
    ];

    /// The service's name, also its default `OTEL_SERVICE_NAME`.
    pub fn name(self) -> &'static str {
        match self {
            Role::Frontend => "frontend",
            Role::Auth => "auth",
            Role::User => "user",
            Role::Inventory => "inventory",
            Role::Payment => "payment",
        }
    }

    /// The port the service listens on unless `PORT` says otherwise.
    pub fn default_port(self) -> u16 {
        match self {
            Role::Frontend => 8080,
            Role::Auth => 8081,
            Role::User => 8082,
            Role::Inventory => 8083,
            Role::Payment => 8084,
        }
    }

    /// Whether the service talks to MySQL.
    pub fn uses_mysql(self) -> bool {
        matches!(self, Role::User | Role::Inventory | Role::Payment)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| format!("unknown service {s:?} (expected one of frontend, auth, user, inventory, payment)"))
    }
}
