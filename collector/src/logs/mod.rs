//! Logs out of the agent: lines processes wrote to stdout and stderr, as [`LogRecord`]s grouped by
//! resource ([`model`]).

pub mod model;

pub use model::{LOG_IOSTREAM, LogBatch, LogRecord, ResourceLogs, Severity};
