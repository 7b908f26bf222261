//! The export pipeline every signal goes through: profiles, spans and logs.
//!
//! A signal is a batch type implementing [`SignalBatch`]; its sinks implement [`Sink`]. The
//! pipeline ([`Exporter`]) gives each sink a bounded queue and a task of its own (a *lane*);
//! [`Submitter::try_submit`] never waits: a full queue drops the batch for that sink, counted.
//! Inside its lane a batch goes through the signal's [`Batcher`]: profiles pass straight through
//! ([`PassThrough`]: each batch is one export call), spans and logs are accumulated by count and
//! age, merged by resource and scope ([`Accumulator`], over any [`Grouped`] batch), moved out of
//! the submitted batch when the lane holds the only reference to it and copied otherwise.
//!
//! Metrics, one family for every signal, labelled `signal` (`profiles`, `spans`, `logs`) and
//! `sink`: `loupe_exporter_batches_submitted_total`, `loupe_exporter_batches_dropped_total`,
//! `loupe_exporter_items_dropped_total` (also labelled `reason`: `queue_full`, `export_failed`,
//! `shutdown`), `loupe_exporter_items_exported_total`, `loupe_exporter_exports_succeeded_total`,
//! `loupe_exporter_exports_failed_total`, `loupe_exporter_retries_total`,
//! `loupe_exporter_sent_bytes_total` and the gauge `loupe_exporter_pending_items`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::telemetry::Registry;

mod batcher;
mod pipeline;
pub mod spool;
mod wire;

pub use batcher::{Accumulator, Batcher, Grouped, PassThrough};
pub use pipeline::{
    DEFAULT_QUEUE_CAPACITY, Exporter, ExporterHandle, PipelineError, QueueBound, Submitter,
};
pub use wire::{Delivery, Payload, Sent, SpoolConfig, SpooledSink, WireSink, export_direct};

/// A boxed, sendable future, so that [`Sink`] stays object safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A signal's batch as the pipeline carries it.
pub trait SignalBatch: Send + Sync + Sized + 'static {
    /// The `signal` metric label: `profiles`, `spans` or `logs`.
    const SIGNAL: &'static str;
    /// What the signal's sinks report as errors.
    type Error: std::error::Error + Send + Sync + 'static;
    /// How a lane turns submitted batches into export calls.
    type Batcher: Batcher<Self>;

    /// Items in the batch, the unit of the item counters: service profiles, spans, log records.
    fn item_count(&self) -> u64;

    /// The memory the batch holds, estimated: its structures and the text it owns (not what it
    /// shares with the producer, such as symbol names or resources). Queues are bounded by it.
    fn approx_bytes(&self) -> u64;
}

/// When an accumulating lane hands what it holds to its sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    /// Most items per export call (at least 1); a larger submission is split.
    pub max_items: usize,
    /// Longest an item waits for more to join its export call; zero exports every submission
    /// at once (still split by `max_items`).
    pub max_delay: Duration,
}

impl Default for Batching {
    fn default() -> Self {
        Self {
            max_items: 512,
            max_delay: Duration::from_secs(1),
        }
    }
}

/// What one `export` call achieved; a batch may partly fail.
#[derive(Debug)]
pub struct ExportReport<E> {
    /// Items written or accepted by the receiver.
    pub items_exported: u64,
    /// Items given up on: failed after retries, or rejected by the receiver.
    pub items_failed: u64,
    /// Items the receiver could not take now, written to the sink's spool to be sent later.
    pub items_spooled: u64,
    /// Payload bytes written or sent (after compression).
    pub bytes_sent: u64,
    /// Requests retried.
    pub retries: u64,
    /// What went wrong.
    pub errors: Vec<E>,
}

impl<E> Default for ExportReport<E> {
    fn default() -> Self {
        Self {
            items_exported: 0,
            items_failed: 0,
            items_spooled: 0,
            bytes_sent: 0,
            retries: 0,
            errors: Vec::new(),
        }
    }
}

impl<E> ExportReport<E> {
    /// True when nothing failed.
    pub fn is_success(&self) -> bool {
        self.errors.is_empty() && self.items_failed == 0
    }

    /// The same report with each error converted (a wire client's error into its signal's).
    pub fn convert<F: From<E>>(self) -> ExportReport<F> {
        ExportReport {
            items_exported: self.items_exported,
            items_failed: self.items_failed,
            items_spooled: self.items_spooled,
            bytes_sent: self.bytes_sent,
            retries: self.retries,
            errors: self.errors.into_iter().map(F::from).collect(),
        }
    }
}

/// A destination for one signal's batches.
///
/// `export` must not block the async runtime (file and CPU work go to `spawn_blocking`) and must
/// bound its own retries; it is never called concurrently for one sink.
pub trait Sink<B: SignalBatch>: Send + Sync + 'static {
    /// Short, stable name used as the `sink` metric label and in logs (`local`, `otlp`, `loki`).
    fn name(&self) -> &str;

    /// How an accumulating lane batches for this sink (ignored by [`PassThrough`] signals).
    fn batching(&self) -> Batching {
        Batching::default()
    }

    /// Registers the sink's own metrics; called once by the pipeline before the first export.
    fn register_metrics(&mut self, _registry: &Registry) {}

    /// Exports one batch (for accumulating signals, at most `batching().max_items` items).
    fn export(&self, batch: Arc<B>) -> BoxFuture<'_, ExportReport<B::Error>>;

    /// Flushes and releases resources; called once after the last export.
    fn shutdown(&self) -> BoxFuture<'_, Result<(), B::Error>> {
        Box::pin(async { Ok(()) })
    }
}
