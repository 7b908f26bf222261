//! auth: issues and checks tokens. Stateless: a token is `u<user id>.<signature>` with a keyed FNV-1a signature
//! (a toy, not cryptography).
//!
//! `POST /login {"user_id": 7}` → `{"token": "u7.…"}`; `GET /verify` with `Authorization: Bearer …` →
//! `{"user_id": 7}` or 401.

use std::sync::Arc;
use std::time::Duration;

use hyper::{Method, StatusCode};
use serde::Deserialize;
use serde_json::json;

use crate::faults::{Fault, spin};
use crate::http::{ApiError, ApiResult, Ctx, Handler, Req, Resp};

/// The auth service.
pub struct Auth {
    ctx: Arc<Ctx>,
}

#[derive(Deserialize)]
struct Login {
    user_id: u64,
}

impl Auth {
    /// A handler over `ctx`.
    pub fn new(ctx: Arc<Ctx>) -> Auth {
        Auth { ctx }
    }

    fn sign(&self, user_id: u64) -> u64 {
        fnv1a(format!("{}:{user_id}", self.ctx.cfg.auth_secret).as_bytes())
    }

    /// The token of `user_id`.
    pub fn token(&self, user_id: u64) -> String {
        format!("u{user_id}.{:016x}", self.sign(user_id))
    }

    fn verify(&self, req: &Req) -> ApiResult {
        if let Some(p) = self.ctx.fault(Fault::Cpu) {
            verify_signature_hot_loop(p.millis("ms"), self.sign(0));
        }
        let unauthorized = || ApiError::new(StatusCode::UNAUTHORIZED, "invalid or missing token");
        let token = req
            .header("authorization")
            .and_then(|h| h.strip_prefix("Bearer "))
            .ok_or_else(unauthorized)?;
        let (id, sig) = token
            .strip_prefix('u')
            .and_then(|t| t.split_once('.'))
            .ok_or_else(unauthorized)?;
        let user_id: u64 = id.parse().map_err(|_| unauthorized())?;
        if format!("{:016x}", self.sign(user_id)) != sig {
            return Err(unauthorized());
        }
        Ok(Resp::ok(&json!({ "user_id": user_id })))
    }
}

impl Handler for Auth {
    async fn handle(&self, req: Req) -> ApiResult {
        match (&req.method, req.segments().as_slice()) {
            (&Method::POST, ["login"]) => {
                let login: Login = req.json()?;
                if !(1..=1_000_000).contains(&login.user_id) {
                    return Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "user_id out of range",
                    ));
                }
                Ok(Resp::ok(
                    &json!({ "user_id": login.user_id, "token": self.token(login.user_id) }),
                ))
            }
            (&Method::GET, ["verify"]) => self.verify(&req),
            _ => Err(ApiError::not_found()),
        }
    }
}

/// The cpu fault's hot function in auth: "signature checking got expensive".
#[inline(never)]
pub fn verify_signature_hot_loop(budget: Duration, seed: u64) -> u64 {
    spin(budget, seed, 0x0A07)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}
