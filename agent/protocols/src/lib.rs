//! Pure, allocation-bounded, never-panicking parsers for the wire protocols Loupe turns into spans.
//!
//! The eBPF side hands the agent one record per `read`/`write` syscall on a socket: the connection,
//! the [`Direction`], only the first N bytes of the buffer (512 by default) and the real byte count.
//! Everything here works on exactly that: each connection parser's `feed` takes
//! `(flow, captured, total_len)`, parses what was captured and skips the uncaptured rest by count.
//!
//! - [`mod@detect`]: which protocol a connection speaks, from its first bytes.
//! - [`http1`], [`http2`] (with gRPC), [`mysql`], [`redis`]: per-connection state machines that
//!   emit events in wire order.
//! - [`sanitize`], [`route`], [`traceparent`]: helpers that turn parsed values into span attributes.
//!
//! Parsers do no I/O and read no clock: the caller knows which `feed` call produced which events
//! and times them itself (see [`End::Unknown`] for the one rule that needs care).
//!
//! Architecture invariants: no function in this crate panics on any input; no `unsafe`; every
//! buffer a connection keeps has a fixed cap (each connection type reports its heap use through
//! `buffered_bytes()`).
#![forbid(unsafe_code)]
#![warn(missing_docs)]
// Machine-checked "never panics" for library code: no indexing/slicing that can go out of
// bounds, no unwrap/expect/panic. Tests may use them freely.
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::string_slice,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::unreachable,
        clippy::todo,
        clippy::unimplemented
    )
)]

pub mod detect;
pub mod http1;
pub mod http2;
pub mod mysql;
pub mod redis;
pub mod route;
pub mod sanitize;
pub mod traceparent;
mod util;

pub use detect::{Detection, Protocol, classify, detect};
pub use http1::Http1Connection;
pub use http2::Http2Connection;
pub use mysql::MySqlConnection;
pub use redis::RedisConnection;

/// Which way a syscall moved bytes, seen from the traced process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// The process wrote/sent the bytes.
    Egress,
    /// The process read/received the bytes.
    Ingress,
}

/// The traced process's role on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The process opened the connection (`connect`).
    Client,
    /// The process accepted the connection (`accept`).
    Server,
    /// Not known (e.g. the connection predates the agent).
    Unknown,
}

/// Which way bytes travel between the two peers, independent of which one is traced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flow {
    /// Requests: client to server.
    ClientToServer,
    /// Responses: server to client.
    ServerToClient,
}

impl Flow {
    /// The flow of a syscall's bytes given the process's role; `None` when the role is unknown.
    pub fn from_direction(direction: Direction, role: Role) -> Option<Flow> {
        match (role, direction) {
            (Role::Client, Direction::Egress) | (Role::Server, Direction::Ingress) => {
                Some(Flow::ClientToServer)
            }
            (Role::Client, Direction::Ingress) | (Role::Server, Direction::Egress) => {
                Some(Flow::ServerToClient)
            }
            (Role::Unknown, _) => None,
        }
    }

    /// The role of the traced process, given that it moved bytes of this flow in `direction`.
    pub fn role_of_process(self, direction: Direction) -> Role {
        match (self, direction) {
            (Flow::ClientToServer, Direction::Egress)
            | (Flow::ServerToClient, Direction::Ingress) => Role::Client,
            (Flow::ClientToServer, Direction::Ingress)
            | (Flow::ServerToClient, Direction::Egress) => Role::Server,
        }
    }
}

/// How a message, or a request's reply, ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum End {
    /// Its last byte was accounted for in the `feed` call that produced the event.
    Complete,
    /// Framing was lost (bytes that carried framing fell outside the capture, or the bytes were
    /// malformed). The event is emitted late, when later traffic proves the message is over (the
    /// next message on the same flow, the next request on the other flow, or `close`).
    ///
    /// Timing rule for the caller: the message ended at the **last chunk of the same flow fed
    /// before the `feed`/`close` call that produced this event** (keep a per-flow "last chunk
    /// time" and update it only after handling the events of each call).
    Unknown,
    /// The connection closed before the message completed.
    Incomplete,
}
