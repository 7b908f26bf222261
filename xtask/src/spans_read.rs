//! Reads the spans the agent's local sink writes to `DIR/traces.jsonl`: one OTLP/JSON
//! `ExportTraceServiceRequest` per line (`resourceSpans[].resource.attributes` with `service.name`,
//! `scopeSpans[].spans[]`). Only what `exercise --verify` needs; `tests/src/lib.rs` has the tests' reader.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use anyhow::Context;
use serde_json::Value;

/// OTLP span kinds.
pub const KIND_SERVER: i64 = 2;
pub const KIND_CLIENT: i64 = 3;
/// OTLP `status.code` of an error.
pub const STATUS_ERROR: i64 = 2;

/// One span, attributes rendered as strings (ints too).
#[derive(Clone, Debug, Default)]
pub struct Span {
    /// `service.name` of its resource.
    pub service: String,
    /// Hex, lowercase; empty when absent.
    pub trace_id: String,
    pub span_id: String,
    /// Hex, lowercase; empty for a root span.
    pub parent_span_id: String,
    pub name: String,
    pub kind: i64,
    pub start_ns: u64,
    pub end_ns: u64,
    pub attributes: BTreeMap<String, String>,
    /// `status.code`: 0 unset, 1 ok, 2 error.
    pub status_code: i64,
}

impl Span {
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }

    pub fn attr_int(&self, key: &str) -> Option<i64> {
        self.attr(key).and_then(|v| v.parse().ok())
    }

    pub fn duration_ms(&self) -> f64 {
        self.end_ns.saturating_sub(self.start_ns) as f64 / 1e6
    }

    pub fn is_server(&self) -> bool {
        self.kind == KIND_SERVER
    }

    pub fn is_error(&self) -> bool {
        self.status_code == STATUS_ERROR
    }

    /// `db.system.name` of a database client span (`mysql`, `redis`).
    pub fn db_system(&self) -> Option<&str> {
        if self.kind == KIND_CLIENT {
            self.attr("db.system.name")
        } else {
            None
        }
    }

    /// An HTTP client span (a client span that is not a database call).
    pub fn is_http_client(&self) -> bool {
        self.kind == KIND_CLIENT && self.attr("db.system.name").is_none()
    }

    pub fn http_status(&self) -> Option<i64> {
        self.attr_int("http.response.status_code")
    }

    /// `url.path`, else `http.route`, else "".
    pub fn path(&self) -> &str {
        self.attr("url.path")
            .or_else(|| self.attr("http.route"))
            .unwrap_or("")
    }
}

/// What [`read`] found.
pub struct Spans {
    pub spans: Vec<Span>,
    /// Lines that were not a JSON export request (a line cut by a killed agent).
    pub bad_lines: usize,
}

/// Every span in `dir/traces.jsonl`.
pub fn read(dir: &Path) -> anyhow::Result<Spans> {
    let path = dir.join("traces.jsonl");
    let text = fs::read_to_string(&path)
        .with_context(|| format!("reading {} (did the agent write spans?)", path.display()))?;
    let mut out = Spans {
        spans: Vec::new(),
        bad_lines: 0,
    };
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let Ok(request) = serde_json::from_str::<Value>(line) else {
            out.bad_lines += 1;
            continue;
        };
        for rs in request["resourceSpans"].as_array().into_iter().flatten() {
            let resource = attributes(&rs["resource"]["attributes"]);
            let service = resource.get("service.name").cloned().unwrap_or_default();
            for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                for span in ss["spans"].as_array().into_iter().flatten() {
                    out.spans.push(Span {
                        service: service.clone(),
                        trace_id: hex_id(&span["traceId"]),
                        span_id: hex_id(&span["spanId"]),
                        parent_span_id: hex_id(&span["parentSpanId"]),
                        name: span["name"].as_str().unwrap_or_default().to_string(),
                        kind: span["kind"].as_i64().unwrap_or(0),
                        start_ns: u64_field(&span["startTimeUnixNano"]),
                        end_ns: u64_field(&span["endTimeUnixNano"]),
                        attributes: attributes(&span["attributes"]),
                        status_code: span["status"]["code"].as_i64().unwrap_or(0),
                    });
                }
            }
        }
    }
    Ok(out)
}

pub fn any_value_string(v: &Value) -> String {
    for key in ["stringValue", "intValue", "boolValue", "doubleValue"] {
        if let Some(x) = v.get(key) {
            return match x {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
        }
    }
    v.to_string()
}

pub fn attributes(v: &Value) -> BTreeMap<String, String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|kv| {
            Some((
                kv.get("key")?.as_str()?.to_string(),
                any_value_string(kv.get("value")?),
            ))
        })
        .collect()
}

/// A trace or span id: OTLP/JSON writes them as hex strings; lowercased, "" when absent.
pub fn hex_id(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_ascii_lowercase()
}

/// OTLP/JSON writes 64-bit integers as strings; accept numbers too.
pub fn u64_field(v: &Value) -> u64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_u64().unwrap_or(0),
        _ => 0,
    }
}

/// The `q` quantile (0..=1) of `values` (nearest rank); 0 when empty.
pub fn quantile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_an_export_request_line() {
        let dir = std::env::temp_dir().join(format!("loupe-xtask-spans-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let line = r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"inventory"}}]},"scopeSpans":[{"scope":{"name":"loupe"},"spans":[{"traceId":"ab","spanId":"cd","parentSpanId":"EF","name":"SELECT reviews","kind":3,"startTimeUnixNano":"1000000","endTimeUnixNano":"26000000","attributes":[{"key":"db.system.name","value":{"stringValue":"mysql"}},{"key":"server.port","value":{"intValue":"3306"}}],"status":{"code":2}}]}]}]}"#;
        fs::write(dir.join("traces.jsonl"), format!("{line}\n{{\"cut\n")).unwrap();
        let read = read(&dir).unwrap();
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(read.bad_lines, 1);
        let s = &read.spans[0];
        assert_eq!(s.service, "inventory");
        assert_eq!((s.trace_id.as_str(), s.span_id.as_str()), ("ab", "cd"));
        assert_eq!(s.parent_span_id, "ef");
        assert_eq!(s.db_system(), Some("mysql"));
        assert_eq!(s.attr_int("server.port"), Some(3306));
        assert!(s.is_error() && !s.is_server() && !s.is_http_client());
        assert_eq!(s.duration_ms(), 25.0);
    }

    #[test]
    fn quantiles() {
        let v = [5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(quantile(&v, 0.5), 3.0);
        assert_eq!(quantile(&v, 1.0), 5.0);
        assert_eq!(quantile(&v, 0.0), 1.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
    }
}
