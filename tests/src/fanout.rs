//! The fan-out services' tests (`go_spans`, `node_spans`): a service whose handler for
//! `/front/ID` calls another service with ID in the path, so the right parent of each client
//! span is known from the paths alone, and the share of calls under their own request can be
//! measured.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    time::Duration,
};

use crate::{SPAN_KIND_CLIENT, SPAN_KIND_SERVER, SpanRecord};

/// One keep-alive HTTP/1.1 connection to `127.0.0.1:port` making a GET of each of `paths` in
/// turn; every answer must be 200. Returns the bodies.
pub fn get_in_turn(port: u16, host: &str, paths: &[String]) -> Vec<String> {
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut writer = stream.try_clone().expect("clone");
    let mut reader = BufReader::new(stream);
    let mut bodies = Vec::with_capacity(paths.len());
    for path in paths {
        write!(writer, "GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").expect("write");
        let mut status = String::new();
        reader.read_line(&mut status).expect("status line");
        assert!(status.starts_with("HTTP/1.1 200"), "{path}: {status}");
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("header");
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().expect("length");
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).expect("body");
        bodies.push(String::from_utf8_lossy(&body).trim().to_string());
    }
    bodies
}

/// A span's path: `url.path` on the server, from `url.full` on the client.
pub fn path_of(s: &SpanRecord) -> Option<&str> {
    if let Some(p) = s.attributes.get("url.path") {
        return Some(p);
    }
    let full = s.attributes.get("url.full")?;
    let rest = full.split_once("://")?.1;
    Some(&rest[rest.find('/')?..])
}

/// The id at the end of a span's path (`/front/3-7` → `3-7`).
pub fn id_of(s: &SpanRecord) -> Option<&str> {
    path_of(s)?.rsplit('/').next()
}

/// How a service's calls were parented.
#[derive(Debug)]
pub struct Parents {
    /// Client spans (calls) found.
    pub calls: usize,
    /// Share of them whose parent is the server span of the same id, in its trace.
    pub right: f64,
    /// Share with no parent.
    pub none: f64,
}

/// The parents of `service`'s client spans whose path starts with `call_prefix`, against its
/// server spans whose path starts with `request_prefix`.
pub fn parents(
    spans: &[SpanRecord],
    service: &str,
    request_prefix: &str,
    call_prefix: &str,
) -> Parents {
    let requests: HashMap<&str, &SpanRecord> = spans
        .iter()
        .filter(|s| s.service == service && s.kind == SPAN_KIND_SERVER)
        .map(|s| (s.span_id.as_str(), s))
        .collect();
    let calls: Vec<&SpanRecord> = spans
        .iter()
        .filter(|s| {
            s.service == service
                && s.kind == SPAN_KIND_CLIENT
                && path_of(s).is_some_and(|p| p.starts_with(call_prefix))
        })
        .collect();
    let right = calls
        .iter()
        .filter(|c| {
            requests.get(c.parent_span_id.as_str()).is_some_and(|p| {
                path_of(p).is_some_and(|p| p.starts_with(request_prefix))
                    && id_of(p) == id_of(c)
                    && p.trace_id == c.trace_id
            })
        })
        .count();
    let none = calls.iter().filter(|c| c.parent_span_id.is_empty()).count();
    let n = calls.len().max(1) as f64;
    Parents {
        calls: calls.len(),
        right: right as f64 / n,
        none: none as f64 / n,
    }
}
