//! Finished requests → OTLP spans (semantic conventions) and RED observations.
//!
//! - HTTP server (`SERVER`): name `{method} {http.route}` (`HTTP {route}` for non-standard
//!   methods); `http.request.method`, `url.path`, `url.scheme`, `http.route`,
//!   `http.response.status_code`, `server.address`/`server.port` (local end), `client.address`,
//!   `network.peer.address`/`network.peer.port` (remote end), `user_agent.original`,
//!   `network.protocol.version`; 5xx is an error (`error.type` = the status code).
//! - HTTP client (`CLIENT`): name `{method}`; `url.full` (no query), `server.address`/
//!   `server.port` (from `Host`, else the remote end), `http.response.status_code`,
//!   `network.peer.*`; 4xx and 5xx are errors.
//! - HTTP/2 requests that are not gRPC: as HTTP/1.x, with `network.protocol.version` 2.
//! - gRPC server and client (`SERVER`/`CLIENT`): name `{rpc.service}/{rpc.method}`;
//!   `rpc.system` (`grpc`), `rpc.service`, `rpc.method`, `rpc.grpc.status_code` (from the
//!   trailers, or the reset), the address attributes as for HTTP. Errors per the semantic
//!   conventions: on the server UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL,
//!   UNAVAILABLE and DATA_LOSS; on the client every status but OK.
//! - Database client (`CLIENT`): name `{db.operation.name} {db.collection.name}`, or the
//!   operation, or the system; `db.system.name` (`mysql`, `redis`), `db.operation.name`,
//!   `db.query.text` (sanitized by default), `db.collection.name` (simple SQL only),
//!   `db.namespace` (MySQL schema), `db.response.status_code` and `error.type` (MySQL error
//!   number, Redis error prefix) on errors, `server.address`/`server.port`, `network.peer.*`.

use std::sync::Arc;

use loupe_collector::traces::{SpanData, SpanKind, Text};
use loupe_protocols::http1::Method;
use loupe_protocols::sanitize::{sanitize_sql, sql_operation};
use loupe_protocols::{Role, mysql, redis};

use super::attrs::{self, Attrs, MAX_STATUS_MESSAGE_LEN, cut};
use super::conn::{Conn, DbRequest, Pending, Request};
use super::{Core, Finished, ProcessInfo};

/// Longest unsanitized Redis command text kept.
const MAX_REDIS_RAW: usize = 1024;

/// How a database call ended.
#[derive(Debug, Default)]
pub struct DbResult {
    /// `db.response.status_code` (errors only).
    pub status_code: Option<String>,
    pub error: bool,
    /// The server's error message (only when queries are not sanitized: messages quote values).
    pub message: Option<String>,
}

/// The request side of a MySQL command.
pub fn mysql_request(
    command: &mysql::Command,
    schema: Option<String>,
    sanitize: bool,
) -> DbRequest {
    use mysql::Command as C;
    let (operation, sql): (Option<String>, Option<&str>) = match command {
        C::Query { sql, .. } => (sql_operation(sql), Some(sql)),
        C::StmtPrepare { sql, .. } => (Some("PREPARE".into()), Some(sql)),
        C::StmtExecute { sql, .. } => (
            sql.as_deref()
                .and_then(sql_operation)
                .or_else(|| Some("EXECUTE".into())),
            sql.as_deref(),
        ),
        C::StmtReset { .. } => (Some("STMT_RESET".into()), None),
        C::StmtFetch { .. } => (Some("FETCH".into()), None),
        C::InitDb { .. } => (Some("INIT_DB".into()), None),
        C::Ping => (Some("PING".into()), None),
        C::ChangeUser => (Some("CHANGE_USER".into()), None),
        C::ResetConnection => (Some("RESET_CONNECTION".into()), None),
        C::Statistics => (Some("STATISTICS".into()), None),
        C::FieldList => (Some("FIELD_LIST".into()), None),
        C::StmtSendLongData { .. } | C::StmtClose { .. } | C::Quit | C::Other { .. } => {
            (None, None)
        }
    };
    let sanitized = sql.map(sanitize_sql);
    let collection = sanitized.as_deref().and_then(attrs::sql_collection);
    let query = if sanitize {
        sanitized
    } else {
        sql.map(str::to_owned)
    };
    DbRequest {
        operation,
        query,
        collection,
        namespace: schema,
    }
}

/// The outcome of a MySQL command.
pub fn mysql_result(response: Option<&mysql::Response>, sanitize: bool) -> DbResult {
    match response {
        Some(mysql::Response::Err { code, message, .. }) => DbResult {
            status_code: Some(code.to_string()),
            error: true,
            message: (!sanitize).then(|| cut(message, MAX_STATUS_MESSAGE_LEN).to_owned()),
        },
        _ => DbResult::default(),
    }
}

/// The request side of a Redis command.
pub fn redis_request(command: &redis::Command, sanitize: bool) -> DbRequest {
    let query = if sanitize {
        command.query_text()
    } else {
        let mut s = command.name.clone();
        for a in &command.args {
            if s.len() >= MAX_REDIS_RAW {
                break;
            }
            s.push(' ');
            s.push_str(&String::from_utf8_lossy(&a.prefix));
        }
        let mut s = cut(&s, MAX_REDIS_RAW).to_owned();
        if command.arg_count > command.args.len() as u64 {
            s.push_str(" …");
        }
        s
    };
    DbRequest {
        operation: Some(cut(&command.name, 64).to_owned()).filter(|s| !s.is_empty()),
        query: Some(query),
        collection: None,
        namespace: None,
    }
}

/// The outcome of a Redis command.
pub fn redis_result(reply: Option<&redis::Reply>, sanitize: bool) -> DbResult {
    match reply.and_then(|r| r.error.as_ref()) {
        Some(e) => DbResult {
            status_code: Some(cut(&e.code, 64).to_owned()),
            error: true,
            message: (!sanitize).then(|| cut(&e.message, MAX_STATUS_MESSAGE_LEN).to_owned()),
        },
        None => DbResult::default(),
    }
}

/// A connection end: its address (shared text) and port.
type ConnEnd = Option<(Arc<str>, u16)>;

/// A server span's ends: `server.*` from the local end, `client.address` and `network.peer.*`
/// from the remote one.
fn server_ends(a: &mut Attrs, local: &ConnEnd, remote: &ConnEnd) {
    if let Some((addr, port)) = local {
        a.str("server.address", addr.clone());
        a.int("server.port", i64::from(*port));
    }
    if let Some((addr, port)) = remote {
        a.str("client.address", addr.clone());
        a.str("network.peer.address", addr.clone());
        a.int("network.peer.port", i64::from(*port));
    }
}

/// A client span's `server.address`/`server.port` (the host the request named, `Host` or
/// `:authority`, else the remote end) and `network.peer.*`; returns the server address (the
/// RED peer label).
fn server_address<'a>(a: &mut Attrs, host: Option<&'a str>, remote: &'a ConnEnd) -> &'a str {
    let address = match (host.and_then(attrs::split_host), remote) {
        (Some((host, port)), _) => {
            a.str("server.address", host.to_owned());
            if let Some(port) = port.or(remote.as_ref().map(|r| r.1)) {
                a.int("server.port", i64::from(port));
            }
            host
        }
        (None, Some((addr, port))) => {
            a.str("server.address", addr.clone());
            a.int("server.port", i64::from(*port));
            addr
        }
        (None, None) => "",
    };
    if let Some((addr, port)) = remote {
        a.str("network.peer.address", addr.clone());
        a.int("network.peer.port", i64::from(*port));
    }
    address
}

fn seconds(start: u64, end: u64) -> f64 {
    end.saturating_sub(start) as f64 / 1e9
}

impl Core {
    fn span(
        &self,
        p: &Pending,
        name: Text,
        kind: SpanKind,
        end_ns: u64,
        attributes: Attrs,
        error: Option<String>,
    ) -> SpanData {
        SpanData {
            trace_id: p.ctx.trace_id,
            span_id: p.ctx.span_id,
            parent_span_id: p.ctx.parent_span_id,
            trace_state: p.ctx.trace_state.clone(),
            name,
            kind,
            start_time_unix_nano: self.clock.to_unix_nanos(p.start_ns),
            end_time_unix_nano: self.clock.to_unix_nanos(end_ns.max(p.start_ns)),
            attributes: attributes.0,
            error,
        }
    }

    fn process(&mut self, pid: u32) -> Arc<ProcessInfo> {
        self.processes.get(pid, self.now)
    }

    /// The span of a finished HTTP request (RED metrics are recorded here); the caller queues it.
    pub(super) fn http_span(
        &mut self,
        conn: &Conn,
        mut p: Pending,
        end_ns: u64,
    ) -> Option<Finished> {
        let Request::Http(h) = &mut p.request else {
            return None;
        };
        let status = h.status.unwrap_or(0);
        let status_text = attrs::Decimal::new(status);
        let method = h.method.semconv();
        let name_method = if method == "_OTHER" { "HTTP" } else { method };
        let process = self.process(conn.pid);
        let local = self.addr_names.local_end(&conn.tuple);
        let remote = self.addr_names.remote_end(&conn.tuple);
        let secs = seconds(p.start_ns, end_ns);
        let mut a = Attrs::with_capacity(14);
        a.str("http.request.method", method);
        if let Method::Other(original) = &h.method {
            a.str("http.request.method_original", original.clone());
        }
        a.int("http.response.status_code", i64::from(status));
        a.str("network.protocol.version", h.version);
        let server = conn.role == Role::Server;
        let error = if server { status >= 500 } else { status >= 400 };
        // The request is over: its strings move into the span where they fit as they are.
        let user_agent = h.user_agent.take();
        let name;
        if server {
            let (route, route_name) = self.routes.get(name_method, &h.target);
            name = Text::Shared(route_name);
            if let Some(path) = attrs::url_path(&h.target) {
                let path = if path.len() == h.target.len() {
                    std::mem::take(&mut h.target)
                } else {
                    path.to_owned()
                };
                a.str("url.path", path);
            }
            a.str("url.scheme", if conn.plaintext { "https" } else { "http" });
            a.str("http.route", route.clone());
            server_ends(&mut a, &local, &remote);
            self.red
                .http_server(&process.service, method, &route, status_text.as_str(), secs);
            self.m.spans[0].inc();
            if let Some(id) = self.publish_server_span(conn.pid, &p, &name) {
                a.str("pyroscope.profile.id", id);
            }
        } else {
            name = Text::Static(name_method);
            if let Some(url) = attrs::url_full(
                &h.target,
                h.host.as_deref(),
                remote.as_ref().map(|(addr, port)| (&**addr, *port)),
                conn.plaintext,
            ) {
                a.str("url.full", url);
            }
            let server_address = server_address(&mut a, h.host.as_deref(), &remote);
            self.red.http_client(
                &process.service,
                method,
                server_address,
                status_text.as_str(),
                secs,
            );
            self.m.spans[1].inc();
        }
        if let Some(ua) = user_agent {
            a.str("user_agent.original", ua);
        }
        if error {
            a.str("error.type", status_text.as_str().to_owned());
        }
        Some(self.request_span(conn, &p, process, name, end_ns, a, error))
    }

    /// The span of a finished gRPC call (RED metrics are recorded here); the caller queues it.
    pub(super) fn grpc_span(
        &mut self,
        conn: &Conn,
        p: Pending,
        end_ns: u64,
        grpc_status: Option<u32>,
    ) -> Option<Finished> {
        let Request::Grpc(g) = &p.request else {
            return None;
        };
        let process = self.process(conn.pid);
        let server = conn.role == Role::Server;
        let secs = seconds(p.start_ns, end_ns);
        let mut a = Attrs::with_capacity(12);
        a.str("rpc.system", "grpc");
        let known = !g.service.is_empty();
        if known {
            a.str("rpc.service", g.service.clone());
            a.str("rpc.method", g.method.clone());
        }
        let status_text = grpc_status.map(|c| c.to_string()).unwrap_or_default();
        if let Some(code) = grpc_status {
            a.int("rpc.grpc.status_code", i64::from(code));
        }
        a.str("network.protocol.name", "http");
        a.str("network.protocol.version", "2");
        let local = self.addr_names.local_end(&conn.tuple);
        let remote = self.addr_names.remote_end(&conn.tuple);
        if server {
            server_ends(&mut a, &local, &remote);
        } else {
            server_address(&mut a, g.authority.as_deref(), &remote);
        }
        let error = grpc_status.is_some_and(|c| {
            if server {
                matches!(c, 2 | 4 | 12 | 13 | 14 | 15)
            } else {
                c != 0
            }
        });
        if error {
            a.str("error.type", status_text.clone());
        }
        let name = if known {
            Text::Owned(format!("{}/{}", g.service, g.method))
        } else {
            Text::Static("grpc")
        };
        let (rpc_service, rpc_method) = if known {
            (g.service.as_str(), g.method.as_str())
        } else {
            ("_OTHER", "_OTHER")
        };
        self.red.rpc(
            server,
            &process.service,
            rpc_service,
            rpc_method,
            &status_text,
            secs,
        );
        self.m.spans[if server { 3 } else { 4 }].inc();
        if server && let Some(id) = self.publish_server_span(conn.pid, &p, &name) {
            a.str("pyroscope.profile.id", id);
        }
        Some(self.request_span(conn, &p, process, name, end_ns, a, error))
    }

    /// The span of a request `conn`'s process served or made (its kind from the connection's
    /// role), as the caller queues it.
    #[allow(clippy::too_many_arguments)]
    fn request_span(
        &self,
        conn: &Conn,
        p: &Pending,
        process: Arc<ProcessInfo>,
        name: Text,
        end_ns: u64,
        attributes: Attrs,
        error: bool,
    ) -> Finished {
        let kind = if conn.role == Role::Server {
            SpanKind::Server
        } else {
            SpanKind::Client
        };
        let span = self.span(p, name, kind, end_ns, attributes, error.then(String::new));
        Finished {
            pid: conn.pid,
            process,
            span,
        }
    }

    pub(super) fn emit_db(
        &mut self,
        conn: &Conn,
        p: Pending,
        system: &'static str,
        result: DbResult,
        end_ns: u64,
    ) {
        let (Request::MySql(d) | Request::Redis(d)) = &p.request else {
            return;
        };
        let process = self.process(conn.pid);
        let secs = seconds(p.start_ns, end_ns);
        let mut a = Attrs::with_capacity(12);
        a.str("db.system.name", system);
        if let Some(op) = &d.operation {
            a.str("db.operation.name", op.clone());
        }
        if let Some(c) = &d.collection {
            a.str("db.collection.name", c.clone());
        }
        if let Some(ns) = &d.namespace {
            a.str("db.namespace", ns.clone());
        }
        if let Some(q) = &d.query {
            a.str("db.query.text", q.clone());
        }
        if let Some((addr, port)) = self.addr_names.remote_end(&conn.tuple) {
            a.str("server.address", addr.clone());
            a.int("server.port", i64::from(port));
            a.str("network.peer.address", addr);
            a.int("network.peer.port", i64::from(port));
        }
        let error_type = result.status_code.clone().unwrap_or_default();
        if let Some(code) = &result.status_code {
            a.str("db.response.status_code", code.clone());
        }
        if result.error {
            a.str("error.type", error_type.clone());
        }
        let name = match (&d.operation, &d.collection) {
            (Some(op), Some(c)) => format!("{op} {c}"),
            (Some(op), None) => op.clone(),
            (None, _) => system.to_owned(),
        };
        let name = Text::Owned(name);
        self.red.db_client(
            &process.service,
            system,
            d.operation.as_deref().unwrap_or("_OTHER"),
            if result.error { &error_type } else { "" },
            secs,
        );
        self.m.spans[2].inc();
        let status = result
            .error
            .then(|| result.message.clone().unwrap_or_default());
        let span = self.span(&p, name, SpanKind::Client, end_ns, a, status);
        self.finish(Finished {
            pid: conn.pid,
            process,
            span,
        });
    }
}
