//! Profile sinks: where each [`ProfileBatch`] goes. One module per sink; all retry logic lives
//! inside a sink's `export`, and the pipeline ([`crate::pipeline`]) runs each sink in its own task.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::profile::ProfileBatch;
use crate::telemetry::Registry;

pub mod local;
pub mod pyroscope;

pub use local::{LocalSink, LocalSinkError};
pub use pyroscope::{PushError, PyroscopeConfig, PyroscopeConfigError, PyroscopeSink};

/// A boxed, sendable future, so that [`ProfileSink`] stays object safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Any sink's error.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The local file sink failed.
    #[error(transparent)]
    Local(#[from] LocalSinkError),
    /// A push to Pyroscope failed.
    #[error(transparent)]
    Pyroscope(#[from] PushError),
}

/// What one `export` call achieved; a batch may partly fail (one service's push, one file).
#[derive(Debug, Default)]
pub struct ExportReport {
    /// Service profiles written or delivered.
    pub profiles_exported: u64,
    /// Service profiles given up on (after retries, if any).
    pub profiles_failed: u64,
    /// Payload bytes written or delivered (after compression).
    pub bytes_sent: u64,
    /// Requests retried.
    pub retries: u64,
    /// What went wrong, at most one entry per failed profile plus batch-level failures.
    pub errors: Vec<SinkError>,
}

impl ExportReport {
    /// True when nothing failed.
    pub fn is_success(&self) -> bool {
        self.errors.is_empty() && self.profiles_failed == 0
    }
}

/// A destination for profile batches.
///
/// `export` must not block the async runtime (move file and CPU work to `spawn_blocking`) and must
/// bound its own retries; it is never called concurrently for one sink.
pub trait ProfileSink: Send + Sync + 'static {
    /// Short, stable name used as the `sink` metric label and in logs (`local`, `pyroscope`).
    fn name(&self) -> &str;

    /// Registers the sink's own metrics; called once by the pipeline before the first export.
    fn register_metrics(&mut self, _registry: &Registry) {}

    /// Exports one batch.
    fn export(&self, batch: Arc<ProfileBatch>) -> BoxFuture<'_, ExportReport>;

    /// Flushes and releases resources; called once after the last export.
    fn shutdown(&self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async { Ok(()) })
    }
}
