//! Spans as the agent builds them and the trace pipeline carries them: compact, with static
//! attribute keys and fixed-size ids, so a span costs a handful of allocations instead of the
//! few dozen of OTLP's protobuf types. Sinks encode from these directly (OTLP/JSON) or convert
//! them once per export (OTLP/gRPC).

use std::borrow::Cow;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex};

use super::proto::common::{AnyValue, InstrumentationScope, KeyValue, any_value::Value};
use super::proto::resource::Resource;
use super::proto::trace::{ResourceSpans, ScopeSpans, Span, Status};

/// OTLP's `SpanKind` numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum SpanKind {
    Unspecified = 0,
    Internal = 1,
    Server = 2,
    Client = 3,
    Producer = 4,
    Consumer = 5,
}

/// An attribute value: text or an integer.
#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    Str(Text),
    Int(i64),
}

/// Attribute text: static, owned by this value, or shared with other spans (an address or a
/// route that many spans carry, made once).
#[derive(Clone)]
pub enum Text {
    Static(&'static str),
    Owned(String),
    Shared(Arc<str>),
}

impl Text {
    /// Bytes this value owns on the heap (shared and static text cost nothing more).
    pub fn owned_bytes(&self) -> usize {
        match self {
            Text::Owned(s) => s.capacity(),
            Text::Static(_) | Text::Shared(_) => 0,
        }
    }
}

impl Text {
    /// The text.
    pub fn as_str(&self) -> &str {
        self
    }
}

impl std::ops::Deref for Text {
    type Target = str;

    fn deref(&self) -> &str {
        match self {
            Text::Static(s) => s,
            Text::Owned(s) => s,
            Text::Shared(s) => s,
        }
    }
}

impl PartialEq for Text {
    fn eq(&self, other: &Text) -> bool {
        **self == **other
    }
}

impl PartialEq<str> for Text {
    fn eq(&self, other: &str) -> bool {
        &**self == other
    }
}

impl PartialEq<&str> for Text {
    fn eq(&self, other: &&str) -> bool {
        &**self == *other
    }
}

impl std::fmt::Debug for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&**self, f)
    }
}

impl std::fmt::Display for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self)
    }
}

impl From<&'static str> for Text {
    fn from(s: &'static str) -> Text {
        Text::Static(s)
    }
}

impl From<String> for Text {
    fn from(s: String) -> Text {
        Text::Owned(s)
    }
}

impl From<Arc<str>> for Text {
    fn from(s: Arc<str>) -> Text {
        Text::Shared(s)
    }
}

impl From<&Arc<str>> for Text {
    fn from(s: &Arc<str>) -> Text {
        Text::Shared(s.clone())
    }
}

impl From<Cow<'static, str>> for Text {
    fn from(s: Cow<'static, str>) -> Text {
        match s {
            Cow::Borrowed(s) => Text::Static(s),
            Cow::Owned(s) => Text::Owned(s),
        }
    }
}

/// One span attribute.
#[derive(Debug, Clone, PartialEq)]
pub struct Attribute {
    pub key: Cow<'static, str>,
    pub value: AttrValue,
}

/// A span's attributes: a `Vec<Attribute>` whose allocation is reused.
///
/// Spans are made on the span builder's thread and dropped on an exporter's, some 180,000 a
/// second at saturation, and the attribute vector is most of a span's memory. Given back to the
/// allocator on the other thread, whole pages of them fell free at once and were returned to the
/// kernel, to be faulted in again for the next spans (about 17% of perf's samples of the agent;
/// about 3% with the pool, and 4% less agent CPU measured, December 2026). A dropped span's
/// vector is cleared and kept instead, in a pool of at most [`POOL_VECTORS`] vectors of at most
/// [`POOL_MAX_CAPACITY`] attributes (under 2 MB), and the next span takes it from there.
/// The pool never waits: when another thread holds its lock, the vector is made or freed as
/// usual.
#[derive(Debug, Default, PartialEq)]
pub struct Attributes(Vec<Attribute>);

/// Most vectors the pool keeps (two flushes of the span builder).
pub const POOL_VECTORS: usize = 2048;
/// Largest vector the pool keeps, in attributes (a span has 10 to 16).
pub const POOL_MAX_CAPACITY: usize = 16;

static POOL: Mutex<Vec<Vec<Attribute>>> = Mutex::new(Vec::new());

impl Attributes {
    /// Room for `n` attributes, in a pooled vector when there is one.
    pub fn with_capacity(n: usize) -> Self {
        let reused = POOL.try_lock().ok().and_then(|mut pool| pool.pop());
        match reused {
            Some(mut v) => {
                v.reserve(n);
                Self(v)
            }
            None => Self(Vec::with_capacity(n)),
        }
    }
}

impl Drop for Attributes {
    fn drop(&mut self) {
        let cap = self.0.capacity();
        if cap == 0 || cap > POOL_MAX_CAPACITY {
            return;
        }
        // The attributes' own text is freed here, outside the lock.
        self.0.clear();
        if let Ok(mut pool) = POOL.try_lock()
            && pool.len() < POOL_VECTORS
        {
            if pool.capacity() == 0 {
                pool.reserve_exact(POOL_VECTORS);
            }
            pool.push(std::mem::take(&mut self.0));
        }
    }
}

impl Clone for Attributes {
    fn clone(&self) -> Self {
        let mut v = Self::with_capacity(self.0.len());
        v.0.extend(self.0.iter().cloned());
        v
    }
}

impl Deref for Attributes {
    type Target = Vec<Attribute>;
    fn deref(&self) -> &Vec<Attribute> {
        &self.0
    }
}

impl DerefMut for Attributes {
    fn deref_mut(&mut self) -> &mut Vec<Attribute> {
        &mut self.0
    }
}

impl From<Vec<Attribute>> for Attributes {
    fn from(v: Vec<Attribute>) -> Self {
        Self(v)
    }
}

/// One finished span.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanData {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    /// W3C `tracestate`, empty when none.
    pub trace_state: String,
    /// Shared when many spans carry it (a route's `GET /users/{id}`).
    pub name: Text,
    pub kind: SpanKind,
    pub start_time_unix_nano: u64,
    pub end_time_unix_nano: u64,
    pub attributes: Attributes,
    /// `Some(message)`: the span has status ERROR with that message (often empty); `None`:
    /// status unset.
    pub error: Option<String>,
}

impl Attribute {
    /// Bytes the attribute owns besides itself.
    pub fn owned_bytes(&self) -> usize {
        let key = match &self.key {
            Cow::Owned(k) => k.capacity(),
            Cow::Borrowed(_) => 0,
        };
        key + match &self.value {
            AttrValue::Str(t) => t.owned_bytes(),
            AttrValue::Int(_) => 0,
        }
    }

    /// Bytes of a list of attributes and what they own.
    pub fn list_bytes(list: &Vec<Attribute>) -> usize {
        list.capacity() * std::mem::size_of::<Attribute>()
            + list.iter().map(Attribute::owned_bytes).sum::<usize>()
    }
}

impl SpanData {
    /// The span's memory: itself and the text and attributes it owns.
    pub fn approx_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.trace_state.capacity()
            + self.name.owned_bytes()
            + Attribute::list_bytes(&self.attributes)
            + self.error.as_ref().map_or(0, String::capacity)
    }

    /// The OTLP protobuf form.
    pub fn to_proto(&self) -> Span {
        Span {
            trace_id: self.trace_id.to_vec(),
            span_id: self.span_id.to_vec(),
            trace_state: self.trace_state.clone(),
            parent_span_id: self.parent_span_id.map(|p| p.to_vec()).unwrap_or_default(),
            name: self.name.to_string(),
            kind: self.kind as i32,
            start_time_unix_nano: self.start_time_unix_nano,
            end_time_unix_nano: self.end_time_unix_nano,
            attributes: self.attributes.iter().map(Attribute::to_proto).collect(),
            status: self.error.as_ref().map(|message| Status {
                message: message.clone(),
                code: super::proto::trace::status::StatusCode::Error as i32,
            }),
            ..Span::default()
        }
    }
}

impl Attribute {
    /// The OTLP protobuf form.
    pub fn to_proto(&self) -> KeyValue {
        let value = match &self.value {
            AttrValue::Str(s) => Value::StringValue(s.to_string()),
            AttrValue::Int(i) => Value::IntValue(*i),
        };
        KeyValue {
            key: self.key.clone().into_owned(),
            value: Some(AnyValue { value: Some(value) }),
            ..KeyValue::default()
        }
    }
}

/// The spans of one resource (process) and instrumentation scope.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceBatch {
    pub resource: Arc<Resource>,
    pub scope: Arc<InstrumentationScope>,
    pub spans: Vec<SpanData>,
}

impl ResourceBatch {
    /// Whether these spans come from `resource` and `scope` (same allocation, or equal).
    pub fn is_from(&self, resource: &Arc<Resource>, scope: &Arc<InstrumentationScope>) -> bool {
        (Arc::ptr_eq(&self.resource, resource) || self.resource == *resource)
            && (Arc::ptr_eq(&self.scope, scope) || self.scope == *scope)
    }

    /// The OTLP protobuf form.
    pub fn to_proto(&self) -> ResourceSpans {
        ResourceSpans {
            resource: Some((*self.resource).clone()),
            scope_spans: vec![ScopeSpans {
                scope: Some((*self.scope).clone()),
                spans: self.spans.iter().map(SpanData::to_proto).collect(),
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared_attrs(text: &Arc<str>, capacity: usize) -> Attributes {
        let mut v = Vec::with_capacity(capacity);
        v.push(Attribute {
            key: Cow::Borrowed("k"),
            value: AttrValue::Str(Text::Shared(text.clone())),
        });
        Attributes::from(v)
    }

    /// Takes every vector out of the pool (other tests share it); whether one sits at `ptr`.
    fn drain_finds(ptr: *const Attribute) -> bool {
        let taken: Vec<Vec<Attribute>> = std::mem::take(&mut *POOL.lock().unwrap());
        taken.iter().any(|v| v.as_ptr() == ptr)
    }

    #[test]
    fn a_dropped_spans_vector_is_cleared_and_reused() {
        let text: Arc<str> = Arc::from("shared");
        // Another test holding the lock at the drop makes it skip the pool: try again.
        let kept = (0..100).any(|_| {
            let attrs = shared_attrs(&text, 13);
            let ptr = attrs.as_ptr();
            drop(attrs);
            drain_finds(ptr)
        });
        assert!(kept, "a dropped vector never reached the pool");
        // Its attributes were dropped with the span, not kept alive in the pool.
        assert_eq!(Arc::strong_count(&text), 1);

        // The next span takes a pooled vector, empty, with the room it had.
        let reused = (0..100).any(|_| {
            let v: Vec<Attribute> = Vec::with_capacity(13);
            let ptr = v.as_ptr();
            POOL.lock().unwrap().push(v);
            let got = Attributes::with_capacity(4);
            got.as_ptr() == ptr && got.is_empty() && got.capacity() >= 13
        });
        assert!(reused, "a new span never took the pooled vector");
    }

    #[test]
    fn the_pool_keeps_no_large_vector_and_a_bounded_number() {
        let text: Arc<str> = Arc::from("large");
        let large = shared_attrs(&text, POOL_MAX_CAPACITY + 1);
        let ptr = large.as_ptr();
        drop(large);
        assert!(!drain_finds(ptr));
        assert_eq!(Arc::strong_count(&text), 1);

        let many: Vec<Attributes> = (0..POOL_VECTORS + 64)
            .map(|_| shared_attrs(&text, 8))
            .collect();
        drop(many);
        assert!(POOL.lock().unwrap().len() <= POOL_VECTORS);
        assert_eq!(Arc::strong_count(&text), 1);
    }

    #[test]
    fn a_cloned_span_has_its_own_equal_attributes() {
        let text: Arc<str> = Arc::from("cloned");
        let a = shared_attrs(&text, 3);
        let b = a.clone();
        assert_eq!(a, b);
        assert_ne!(a.as_ptr(), b.as_ptr());
        drop((a, b));
        assert_eq!(Arc::strong_count(&text), 1);
    }
}
