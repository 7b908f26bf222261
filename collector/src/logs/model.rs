//! Log records as the agent builds them and the log pipeline carries them: compact like
//! [`crate::traces::model`] (static attribute keys, fixed-size ids), grouped by resource (the
//! process that wrote them) and instrumentation scope, as OTLP sends them.

use std::borrow::Cow;
use std::sync::Arc;

use crate::traces::Attribute;
use crate::traces::proto::common::{AnyValue, InstrumentationScope, any_value::Value};
use crate::traces::proto::resource::Resource;

/// OTLP's `SeverityNumber`s for the levels Loupe recognizes (the first of each range).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(i32)]
pub enum Severity {
    /// No level could be read from the line.
    #[default]
    Unspecified = 0,
    Trace = 1,
    Debug = 5,
    Info = 9,
    Warn = 13,
    Error = 17,
    Fatal = 21,
}

impl Severity {
    /// The short, lowercase name Loki's `level` label and Grafana use (`unknown` when unspecified).
    pub fn label(self) -> &'static str {
        match self {
            Self::Unspecified => "unknown",
            Self::Trace => "trace",
            Self::Debug => "debug",
            Self::Info => "info",
            Self::Warn => "warn",
            Self::Error => "error",
            Self::Fatal => "fatal",
        }
    }

    /// OTLP's `severity_text` (empty when unspecified).
    pub fn text(self) -> &'static str {
        match self {
            Self::Unspecified => "",
            Self::Trace => "TRACE",
            Self::Debug => "DEBUG",
            Self::Info => "INFO",
            Self::Warn => "WARN",
            Self::Error => "ERROR",
            Self::Fatal => "FATAL",
        }
    }
}

/// One log line a process wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct LogRecord {
    /// When the write completed, nanoseconds since the Unix epoch.
    pub time_unix_nano: u64,
    /// When the agent read it, nanoseconds since the Unix epoch.
    pub observed_time_unix_nano: u64,
    pub severity: Severity,
    /// The line without its line ending (cut to the agent's line limit).
    pub body: String,
    /// The trace of the request the writing thread was serving, if any.
    pub trace_id: Option<[u8; 16]>,
    /// The span of that request.
    pub span_id: Option<[u8; 8]>,
    /// Record attributes, e.g. `log.iostream` (`stdout`/`stderr`), `thread.id`.
    pub attributes: Vec<Attribute>,
}

/// The log records of one resource (process) and instrumentation scope.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceLogs {
    pub resource: Arc<Resource>,
    pub scope: Arc<InstrumentationScope>,
    pub records: Vec<LogRecord>,
}

impl ResourceLogs {
    /// Whether these records come from `resource` and `scope` (same allocation, or equal).
    pub fn is_from(&self, resource: &Arc<Resource>, scope: &Arc<InstrumentationScope>) -> bool {
        (Arc::ptr_eq(&self.resource, resource) || self.resource == *resource)
            && (Arc::ptr_eq(&self.scope, scope) || self.scope == *scope)
    }
}

/// Log records grouped by resource and scope.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogBatch {
    /// One entry per (resource, scope).
    pub resources: Vec<ResourceLogs>,
}

impl LogBatch {
    /// Records in the batch.
    pub fn record_count(&self) -> u64 {
        self.resources.iter().map(|r| r.records.len() as u64).sum()
    }

    /// Whether the batch holds no record.
    pub fn is_empty(&self) -> bool {
        self.record_count() == 0
    }
}

/// Attribute key of the stream a line was written to.
pub const LOG_IOSTREAM: Cow<'static, str> = Cow::Borrowed("log.iostream");

impl LogRecord {
    /// The record's memory: itself, its line and the attributes it owns.
    pub fn approx_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.body.capacity() + Attribute::list_bytes(&self.attributes)
    }

    /// The OTLP protobuf form: the body as a string value, the severity as number and text.
    pub fn to_proto(&self) -> super::proto::logs::LogRecord {
        super::proto::logs::LogRecord {
            time_unix_nano: self.time_unix_nano,
            observed_time_unix_nano: self.observed_time_unix_nano,
            severity_number: self.severity as i32,
            severity_text: self.severity.text().to_owned(),
            body: Some(AnyValue {
                value: Some(Value::StringValue(self.body.clone())),
            }),
            attributes: self.attributes.iter().map(Attribute::to_proto).collect(),
            trace_id: self.trace_id.map(|t| t.to_vec()).unwrap_or_default(),
            span_id: self.span_id.map(|s| s.to_vec()).unwrap_or_default(),
            ..super::proto::logs::LogRecord::default()
        }
    }
}

impl ResourceLogs {
    /// The OTLP protobuf form.
    pub fn to_proto(&self) -> super::proto::logs::ResourceLogs {
        super::proto::logs::ResourceLogs {
            resource: Some((*self.resource).clone()),
            scope_logs: vec![super::proto::logs::ScopeLogs {
                scope: Some((*self.scope).clone()),
                log_records: self.records.iter().map(LogRecord::to_proto).collect(),
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }
    }
}

impl LogBatch {
    /// The OTLP export request carrying the batch.
    pub fn to_request(&self) -> super::proto::collector::ExportLogsServiceRequest {
        super::proto::collector::ExportLogsServiceRequest {
            resource_logs: self.resources.iter().map(ResourceLogs::to_proto).collect(),
        }
    }
}
