//! OTLP/JSON encoding of span and log batches, written straight into a reusable buffer: one
//! writer for resources, scopes, attributes and values, with the span and log record on top.
//!
//! The encoding is the one the OTLP specification defines ("JSON Protobuf Encoding", the proto3
//! JSON mapping with OTLP's exceptions): lowerCamelCase field names; `traceId`, `spanId` and
//! `parentSpanId` as lowercase hex instead of base64; enums (`kind`, `status.code`,
//! `severityNumber`) as integers; 64-bit integers (`startTimeUnixNano`, `timeUnixNano`,
//! `intValue`) as decimal strings; `bytesValue` as base64;
//! fields holding their default value (empty string or list, zero, absent message) are omitted,
//! as the mapping allows. `opentelemetry-proto`'s serde types read it back as the batch's
//! protobuf form (the tests check every field).
//!
//! Why not serde: with the spans of a busy host, encoding through serde was a fifth of the
//! agent's CPU time; this writer makes no allocation but the output buffer's growth and copies
//! string runs that need no escaping in one go.

use std::io::Write as _;

use crate::logs::{LogBatch, LogRecord, ResourceLogs};
use crate::traces::proto::common::{AnyValue, InstrumentationScope, KeyValue, any_value::Value};
use crate::traces::proto::resource::Resource;
use crate::traces::{AttrValue, Attribute, ResourceBatch, SpanData, TraceBatch};

/// Appends the batch as one `ExportTraceServiceRequest` JSON object (no line feed) to `out`.
pub fn encode_traces(batch: &TraceBatch, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"resourceSpans\":");
    array(out, &batch.resources, |rb: &ResourceBatch, out| {
        resource_group(
            out,
            &rb.resource,
            &rb.scope,
            "scopeSpans",
            "spans",
            &rb.spans,
            span,
        );
    });
    out.push(b'}');
}

/// Appends the batch as one `ExportLogsServiceRequest` JSON object (no line feed) to `out`.
pub fn encode_logs(batch: &LogBatch, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"resourceLogs\":");
    array(out, &batch.resources, |rl: &ResourceLogs, out| {
        resource_group(
            out,
            &rl.resource,
            &rl.scope,
            "scopeLogs",
            "logRecords",
            &rl.records,
            log_record,
        );
    });
    out.push(b'}');
}

/// Writes the members of one JSON object: each call to `field` adds `"name":` after a comma
/// when a member came before.
struct Object<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> Object<'a> {
    fn open(out: &'a mut Vec<u8>) -> Self {
        out.push(b'{');
        Self { out, first: true }
    }

    /// Starts member `name` and returns the buffer for its value.
    fn field(&mut self, name: &str) -> &mut Vec<u8> {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        self.out.push(b'"');
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(b"\":");
        self.out
    }

    fn str(&mut self, name: &str, value: &str) {
        if !value.is_empty() {
            string(self.field(name), value);
        }
    }

    fn hex(&mut self, name: &str, bytes: &[u8]) {
        if !bytes.is_empty() {
            hex(self.field(name), bytes);
        }
    }

    /// An unsigned 32-bit number (a JSON number).
    fn u32(&mut self, name: &str, value: u32) {
        if value != 0 {
            number(self.field(name), value);
        }
    }

    /// An enum's number.
    fn enum_i32(&mut self, name: &str, value: i32) {
        if value != 0 {
            number(self.field(name), value);
        }
    }

    /// A 64-bit integer (a JSON string).
    fn u64_string(&mut self, name: &str, value: u64) {
        if value != 0 {
            let out = self.field(name);
            out.push(b'"');
            number(out, value);
            out.push(b'"');
        }
    }

    /// A non-empty list, each item written by `each`.
    fn list<T>(&mut self, name: &str, items: &[T], each: impl Fn(&T, &mut Vec<u8>)) {
        if !items.is_empty() {
            array(self.field(name), items, each);
        }
    }

    fn close(self) {
        self.out.push(b'}');
    }
}

/// A JSON array, each item written by `each`.
fn array<T>(out: &mut Vec<u8>, items: &[T], each: impl Fn(&T, &mut Vec<u8>)) {
    out.push(b'[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        each(item, out);
    }
    out.push(b']');
}

fn number(out: &mut Vec<u8>, n: impl itoa_like::Int) {
    n.write(out);
}

/// `{"resource":…,"<scopes>":[{"scope":…,"<items>":[…]}]}`: one resource and scope with its
/// spans or log records.
fn resource_group<T>(
    out: &mut Vec<u8>,
    r: &Resource,
    s: &InstrumentationScope,
    scopes: &str,
    items_name: &str,
    items: &[T],
    each: impl Fn(&T, &mut Vec<u8>),
) {
    let mut o = Object::open(out);
    resource(r, o.field("resource"));
    let out = o.field(scopes);
    out.push(b'[');
    let mut ss = Object::open(out);
    scope(s, ss.field("scope"));
    ss.list(items_name, items, each);
    ss.close();
    out.push(b']');
    o.close();
}

fn resource(r: &Resource, out: &mut Vec<u8>) {
    let mut o = Object::open(out);
    o.list("attributes", &r.attributes, key_value);
    o.u32("droppedAttributesCount", r.dropped_attributes_count);
    // Every member of an entity reference is written: opentelemetry-proto's decoder has no
    // defaults for them.
    o.list("entityRefs", &r.entity_refs, |e, out| {
        let mut o = Object::open(out);
        string(o.field("schemaUrl"), &e.schema_url);
        string(o.field("type"), &e.r#type);
        array(o.field("idKeys"), &e.id_keys, |k, out| string(out, k));
        array(o.field("descriptionKeys"), &e.description_keys, |k, out| {
            string(out, k)
        });
        o.close();
    });
    o.close();
}

fn scope(s: &InstrumentationScope, out: &mut Vec<u8>) {
    let mut o = Object::open(out);
    o.str("name", &s.name);
    o.str("version", &s.version);
    o.list("attributes", &s.attributes, key_value);
    o.u32("droppedAttributesCount", s.dropped_attributes_count);
    o.close();
}

fn span(s: &SpanData, out: &mut Vec<u8>) {
    let mut o = Object::open(out);
    o.hex("traceId", &s.trace_id);
    o.hex("spanId", &s.span_id);
    o.str("traceState", &s.trace_state);
    if let Some(parent) = &s.parent_span_id {
        o.hex("parentSpanId", parent);
    }
    o.str("name", &s.name);
    o.enum_i32("kind", s.kind as i32);
    o.u64_string("startTimeUnixNano", s.start_time_unix_nano);
    o.u64_string("endTimeUnixNano", s.end_time_unix_nano);
    o.list("attributes", &s.attributes, attribute);
    if let Some(message) = &s.error {
        let mut st = Object::open(o.field("status"));
        st.str("message", message);
        st.enum_i32("code", STATUS_CODE_ERROR);
        st.close();
    }
    o.close();
}

/// A log record; the body is always written (a string value, possibly empty), as
/// [`LogRecord::to_proto`] always sets it.
fn log_record(r: &LogRecord, out: &mut Vec<u8>) {
    let mut o = Object::open(out);
    o.u64_string("timeUnixNano", r.time_unix_nano);
    o.u64_string("observedTimeUnixNano", r.observed_time_unix_nano);
    o.enum_i32("severityNumber", r.severity as i32);
    o.str("severityText", r.severity.text());
    let body = o.field("body");
    body.extend_from_slice(b"{\"stringValue\":");
    string(body, &r.body);
    body.push(b'}');
    o.list("attributes", &r.attributes, attribute);
    if let Some(t) = &r.trace_id {
        o.hex("traceId", t);
    }
    if let Some(s) = &r.span_id {
        o.hex("spanId", s);
    }
    o.close();
}

/// OTLP's `STATUS_CODE_ERROR`.
const STATUS_CODE_ERROR: i32 = 2;

fn attribute(a: &Attribute, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"key\":");
    string(out, &a.key);
    match &a.value {
        AttrValue::Str(s) => {
            out.extend_from_slice(b",\"value\":{\"stringValue\":");
            string(out, s);
        }
        AttrValue::Int(i) => {
            out.extend_from_slice(b",\"value\":{\"intValue\":\"");
            number(out, *i);
            out.push(b'"');
        }
    }
    out.extend_from_slice(b"}}");
}

fn key_value(kv: &KeyValue, out: &mut Vec<u8>) {
    // `key` is always written: a KeyValue without one does not decode.
    out.extend_from_slice(b"{\"key\":");
    string(out, &kv.key);
    if let Some(v) = &kv.value {
        out.extend_from_slice(b",\"value\":");
        any_value(v, out);
    }
    out.push(b'}');
}

fn any_value(v: &AnyValue, out: &mut Vec<u8>) {
    let Some(value) = &v.value else {
        out.extend_from_slice(b"{}");
        return;
    };
    match value {
        Value::StringValue(s) => {
            out.extend_from_slice(b"{\"stringValue\":");
            string(out, s);
        }
        Value::BoolValue(b) => {
            out.extend_from_slice(b"{\"boolValue\":");
            out.extend_from_slice(if *b { b"true" } else { b"false" });
        }
        Value::IntValue(i) => {
            out.extend_from_slice(b"{\"intValue\":\"");
            number(out, *i);
            out.push(b'"');
        }
        Value::DoubleValue(d) => {
            out.extend_from_slice(b"{\"doubleValue\":");
            double(out, *d);
        }
        Value::ArrayValue(a) => {
            out.extend_from_slice(b"{\"arrayValue\":{\"values\":");
            array(out, &a.values, any_value);
            out.push(b'}');
        }
        Value::KvlistValue(l) => {
            out.extend_from_slice(b"{\"kvlistValue\":{\"values\":");
            array(out, &l.values, key_value);
            out.push(b'}');
        }
        Value::BytesValue(b) => {
            out.extend_from_slice(b"{\"bytesValue\":\"");
            base64(out, b);
            out.push(b'"');
        }
        // A profiling-only dictionary reference: no meaning in a trace, written as empty.
        Value::StringValueStrindex(_) => {}
    }
    out.push(b'}');
}

/// A finite double as a JSON number (shortest form that reads back exactly); NaN and the
/// infinities as the strings the proto3 JSON mapping uses.
fn double(out: &mut Vec<u8>, d: f64) {
    if d.is_nan() {
        out.extend_from_slice(b"\"NaN\"");
    } else if d.is_infinite() {
        out.extend_from_slice(if d > 0.0 {
            b"\"Infinity\"" as &[u8]
        } else {
            b"\"-Infinity\""
        });
    } else {
        // Rust's `{:?}` for f64 is the shortest round-tripping form, always with a digit after
        // any decimal point; exponents appear as `1e300`, valid JSON.
        let _ = write!(out, "{d:?}");
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(b'"');
    for b in bytes {
        out.push(HEX[usize::from(b >> 4)]);
        out.push(HEX[usize::from(b & 0xf)]);
    }
    out.push(b'"');
}

/// A JSON string: `"` and `\` escaped, control characters as `\n`, `\t`, ... or `\u00XX`;
/// everything else (all of UTF-8) copied as is, in runs.
fn string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    // Most text needs no escape: one scan, one copy.
    if !bytes.iter().any(|&b| NEEDS_ESCAPE[usize::from(b)]) {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut run = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if !NEEDS_ESCAPE[usize::from(b)] {
            continue;
        }
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[run..i]);
        if escape.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.extend_from_slice(escape);
        }
        run = i + 1;
    }
    out.extend_from_slice(&bytes[run..]);
    out.push(b'"');
}

/// Bytes a JSON string cannot hold as they are: controls, `"` and `\\`.
static NEEDS_ESCAPE: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        t[b] = true;
        b += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

/// Standard base64 with padding (RFC 4648 §4), as the proto3 JSON mapping writes `bytes`.
fn base64(out: &mut Vec<u8>, bytes: &[u8]) {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> shift) & 63) as usize]);
            } else {
                out.push(b'=');
            }
        }
    }
}

/// Decimal integers without going through `fmt`.
mod itoa_like {
    pub trait Int {
        fn write(self, out: &mut Vec<u8>);
    }

    fn unsigned(out: &mut Vec<u8>, mut n: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        out.extend_from_slice(&digits[i..]);
    }

    impl Int for u64 {
        fn write(self, out: &mut Vec<u8>) {
            unsigned(out, self);
        }
    }

    impl Int for u32 {
        fn write(self, out: &mut Vec<u8>) {
            unsigned(out, u64::from(self));
        }
    }

    impl Int for i64 {
        fn write(self, out: &mut Vec<u8>) {
            if self < 0 {
                out.push(b'-');
            }
            unsigned(out, self.unsigned_abs());
        }
    }

    impl Int for i32 {
        fn write(self, out: &mut Vec<u8>) {
            i64::from(self).write(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::traces::SpanKind;
    use crate::traces::proto::collector::ExportTraceServiceRequest;
    use crate::traces::proto::common::{ArrayValue, EntityRef, KeyValueList};

    fn kv(key: &str, value: Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(value) }),
            ..KeyValue::default()
        }
    }

    const NASTY: &str = "quote \" backslash \\ newline \n tab \t cr \r bell \u{7} nul \u{0} \
                         unit sep \u{1f} del \u{7f} é 日本 🦀 </script>";

    /// Every field the encoder writes, with awkward values.
    fn rich() -> TraceBatch {
        let all_values = vec![
            kv("s", Value::StringValue(NASTY.into())),
            kv("empty", Value::StringValue(String::new())),
            kv("b", Value::BoolValue(true)),
            kv("f", Value::BoolValue(false)),
            kv("i", Value::IntValue(i64::MIN)),
            kv("imax", Value::IntValue(i64::MAX)),
            kv("zero", Value::IntValue(0)),
            kv("d", Value::DoubleValue(-0.375)),
            kv("dbig", Value::DoubleValue(1e300)),
            kv("dint", Value::DoubleValue(3.0)),
            kv(
                "a",
                Value::ArrayValue(ArrayValue {
                    values: vec![
                        AnyValue {
                            value: Some(Value::IntValue(7)),
                        },
                        AnyValue {
                            value: Some(Value::StringValue("x".into())),
                        },
                    ],
                }),
            ),
            kv(
                "kv",
                Value::KvlistValue(KeyValueList {
                    values: vec![kv("inner", Value::BoolValue(true))],
                }),
            ),
            kv("bytes0", Value::BytesValue(vec![])),
            kv("bytes1", Value::BytesValue(vec![0xff])),
            kv("bytes2", Value::BytesValue(vec![0xfb, 0xff])),
            kv("bytes3", Value::BytesValue(b"abc".to_vec())),
            kv("bytes4", Value::BytesValue(vec![0, 1, 2, 3])),
            KeyValue {
                key: "no value".into(),
                value: None,
                ..KeyValue::default()
            },
        ];
        let attr = |key: &'static str, value: AttrValue| Attribute {
            key: key.into(),
            value,
        };
        let span = SpanData {
            trace_id: std::array::from_fn(|i| i as u8 + 1),
            span_id: [0xab, 0xcd, 0xef, 0, 1, 2, 3, 0xff],
            trace_state: "vendor=1,other=x".into(),
            parent_span_id: Some([9, 8, 7, 6, 5, 4, 3, 2]),
            name: NASTY.into(),
            kind: SpanKind::Server,
            start_time_unix_nano: 1_700_000_000_123_456_789,
            end_time_unix_nano: u64::MAX,
            attributes: vec![
                attr("static", AttrValue::Str("GET".into())),
                attr("owned", AttrValue::Str(NASTY.to_owned().into())),
                attr("empty", AttrValue::Str("".into())),
                attr("min", AttrValue::Int(i64::MIN)),
                attr("zero", AttrValue::Int(0)),
                Attribute {
                    key: String::from("owned.key").into(),
                    value: AttrValue::Int(503),
                },
            ]
            .into(),
            error: Some("boom".into()),
        };
        let bare = SpanData {
            trace_id: [0; 16],
            span_id: [1; 8],
            parent_span_id: None,
            trace_state: String::new(),
            name: "bare".into(),
            kind: SpanKind::Unspecified,
            start_time_unix_nano: 0,
            end_time_unix_nano: 0,
            attributes: Default::default(),
            error: Some(String::new()),
        };
        TraceBatch {
            resources: vec![
                ResourceBatch {
                    resource: Arc::new(Resource {
                        attributes: all_values,
                        dropped_attributes_count: 9,
                        entity_refs: vec![EntityRef {
                            schema_url: "https://e".into(),
                            r#type: "service".into(),
                            id_keys: vec!["service.name".into()],
                            description_keys: vec!["d\"k".into()],
                        }],
                    }),
                    scope: Arc::new(InstrumentationScope {
                        name: "loupe".into(),
                        version: "0.1.0".into(),
                        attributes: vec![kv("scope.attr", Value::IntValue(1))],
                        dropped_attributes_count: 6,
                    }),
                    spans: vec![span, bare],
                },
                ResourceBatch {
                    resource: Arc::default(),
                    scope: Arc::default(),
                    spans: Vec::new(),
                },
            ],
        }
    }

    fn encode(batch: &TraceBatch) -> Vec<u8> {
        let mut out = Vec::new();
        encode_traces(batch, &mut out);
        out
    }

    #[test]
    fn every_field_reads_back_through_the_reference_decoder() {
        let line = encode(&rich());
        let text = std::str::from_utf8(&line).expect("UTF-8");
        let back: ExportTraceServiceRequest =
            serde_json::from_slice(&line).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert_eq!(back, rich().to_request(), "{text}");
        // And it is plain JSON any parser takes.
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        let rs = &v["resourceSpans"][0];
        let attrs = &rs["resource"]["attributes"];
        assert_eq!(attrs[4]["value"]["intValue"], "-9223372036854775808");
        assert_eq!(attrs[13]["value"]["bytesValue"], "/w==");
        assert_eq!(attrs[14]["value"]["bytesValue"], "+/8=");
        assert_eq!(attrs[15]["value"]["bytesValue"], "YWJj");
        assert_eq!(attrs[16]["value"]["bytesValue"], "AAECAw==");
        let span = &rs["scopeSpans"][0]["spans"][0];
        assert_eq!(span["traceId"], "0102030405060708090a0b0c0d0e0f10");
        assert_eq!(span["spanId"], "abcdef00010203ff");
        assert_eq!(span["parentSpanId"], "0908070605040302");
        assert_eq!(span["endTimeUnixNano"], "18446744073709551615");
        assert_eq!(span["kind"], 2);
        assert_eq!(
            span["attributes"][3]["value"]["intValue"],
            "-9223372036854775808"
        );
        assert_eq!(
            span["status"],
            serde_json::json!({"message": "boom", "code": 2})
        );
    }

    #[test]
    fn defaults_are_left_out() {
        let line = encode(&rich());
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        let bare = &v["resourceSpans"][0]["scopeSpans"][0]["spans"][1];
        let keys: Vec<&str> = bare
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            ["name", "spanId", "status", "traceId"],
            "sorted by serde_json"
        );
        assert_eq!(bare["status"], serde_json::json!({"code": 2}));
        assert_eq!(
            v["resourceSpans"][1],
            serde_json::json!({"resource": {}, "scopeSpans": [{"scope": {}}]})
        );
    }

    #[test]
    fn strings_escape_what_json_requires_and_nothing_else() {
        let mut out = Vec::new();
        string(&mut out, "a\"b\\c\nd\u{1}é🦀");
        assert_eq!(out, "\"a\\\"b\\\\c\\nd\\u0001é🦀\"".as_bytes());
        for s in ["", "plain", "\u{0}\u{1f}\u{7f}", "\\\\\"\""] {
            let mut out = Vec::new();
            string(&mut out, s);
            let back: String = serde_json::from_slice(&out).unwrap();
            assert_eq!(back, s);
        }
    }

    #[test]
    fn the_empty_batch_is_a_request_without_spans() {
        assert_eq!(
            encode(&TraceBatch::default()),
            b"{\"resourceSpans\":[]}".to_vec()
        );
    }
}
