//! Profile sinks: where each [`ProfileBatch`] goes. One module per sink; all retry logic lives
//! inside a sink's `export`, and the pipeline ([`crate::export`]) runs each sink in its own task.
//! Sinks implement [`crate::export::Sink`]`<ProfileBatch>`.

use crate::export::{PassThrough, SignalBatch};
use crate::profile::ProfileBatch;

pub mod local;
pub mod pyroscope;

pub use local::{LocalSink, LocalSinkError};
pub use pyroscope::{PushError, PyroscopeConfig, PyroscopeConfigError, PyroscopeSink};

pub use crate::export::BoxFuture;

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

/// What one profile `export` call achieved; a batch may partly fail (one service's push, one
/// file). Items are service profiles.
pub type ExportReport = crate::export::ExportReport<SinkError>;

/// Profiles through the shared pipeline: each batch (one drain interval, every service) is one
/// export call, as submitted.
impl SignalBatch for ProfileBatch {
    const SIGNAL: &'static str = "profiles";
    type Error = SinkError;
    type Batcher = PassThrough<Self>;

    fn item_count(&self) -> u64 {
        self.profiles.len() as u64
    }

    fn approx_bytes(&self) -> u64 {
        self.approx_bytes()
    }
}

/// Starts the profile lanes: `ProfileExporter::spawn(sinks, &registry, capacity)`.
pub type ProfileExporter = crate::export::Exporter<ProfileBatch>;
/// The running profile pipeline.
pub type ProfileExporterHandle = crate::export::ExporterHandle<ProfileBatch>;
/// Submits profile batches without waiting.
pub type ProfileSubmitter = crate::export::Submitter<ProfileBatch>;
/// A boxed profile sink, as [`ProfileExporter::spawn`] takes them.
pub type BoxedProfileSink = Box<dyn crate::export::Sink<ProfileBatch>>;
