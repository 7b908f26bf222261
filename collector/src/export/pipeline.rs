//! The lanes: one bounded queue and task per sink, fed by a [`Submitter`] that never waits.
//!
//! Architecture invariant: the producer (the agent's drain loop, span builder or log reader)
//! never blocks on a sink. A slow sink only fills its own queue; then its copy of a batch is
//! dropped and counted.

use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{Batcher, SignalBatch, Sink};
use crate::telemetry::{Counter, Gauge, Registry};

/// Queue capacity per sink, in batches, when the caller has no better idea. A span or log batch
/// holds up to a few thousand items of ~1 KB each: four keep a slow sink's backlog to ~10 MB (the
/// agent's RSS budget is 64 MB); beyond that batches are dropped and counted.
pub const DEFAULT_QUEUE_CAPACITY: usize = 4;

/// How much each sink's queue holds before the next batch is dropped (counted as `queue_full`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueBound {
    /// Batches (at least 1).
    pub batches: usize,
    /// Bytes of the queued batches ([`SignalBatch::approx_bytes`]). A batch is always taken
    /// into an empty queue, however large: it is in memory already, and refusing it would
    /// starve its sink.
    pub bytes: u64,
}

impl QueueBound {
    /// A bound in batches only.
    pub fn batches(batches: usize) -> Self {
        Self {
            batches,
            bytes: u64::MAX,
        }
    }
}

/// Errors of the export pipeline.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// Some sinks had not finished when the shutdown timeout expired, or their task panicked.
    #[error(
        "{signal} exporter shutdown incomplete ({abandoned_batches} batch(es), {abandoned_items} item(s) not exported): {sinks}"
    )]
    ShutdownIncomplete {
        /// The signal: `profiles`, `spans` or `logs`.
        signal: &'static str,
        /// The sinks concerned, each with the reason (`otlp (timed out)`).
        sinks: String,
        /// Batches queued, held or in flight that were abandoned.
        abandoned_batches: u64,
        /// Items in those batches and in what the lanes had accumulated.
        abandoned_items: u64,
    },
}

/// Starts the per-sink lanes of signal `B`.
#[derive(Debug)]
pub struct Exporter<B>(PhantomData<fn() -> B>);

impl<B: SignalBatch> Exporter<B> {
    /// Spawns one task per sink on the current tokio runtime, each behind a queue of
    /// `queue_capacity` batches (at least 1), and registers the pipeline metrics.
    ///
    /// # Panics
    /// When called outside a tokio runtime, like `tokio::spawn`.
    pub fn spawn(
        sinks: Vec<Box<dyn Sink<B>>>,
        registry: &Registry,
        queue_capacity: usize,
    ) -> ExporterHandle<B> {
        Self::spawn_bounded(sinks, registry, QueueBound::batches(queue_capacity))
    }

    /// [`Exporter::spawn`] with each sink's queue bounded in batches and bytes.
    ///
    /// # Panics
    /// When called outside a tokio runtime, like `tokio::spawn`.
    pub fn spawn_bounded(
        sinks: Vec<Box<dyn Sink<B>>>,
        registry: &Registry,
        bound: QueueBound,
    ) -> ExporterHandle<B> {
        let mut lanes = Vec::with_capacity(sinks.len());
        let mut tasks = Vec::with_capacity(sinks.len());
        for mut sink in sinks {
            sink.register_metrics(registry);
            let name = sink.name().to_owned();
            let metrics = Arc::new(LaneMetrics::new(registry, B::SIGNAL, &name));
            let (tx, rx) = mpsc::channel(bound.batches.max(1));
            let (stop_tx, stop_rx) = oneshot::channel();
            let task = tokio::spawn(run_lane(sink, rx, stop_rx, metrics.clone()));
            lanes.push(LaneTx {
                tx,
                max_bytes: bound.bytes,
                metrics: metrics.clone(),
            });
            tasks.push(LaneTask {
                name,
                stop: stop_tx,
                task,
                metrics,
            });
        }
        ExporterHandle {
            submitter: Submitter {
                lanes: Arc::new(lanes),
            },
            tasks,
        }
    }
}

/// Owns the running pipeline: submit with [`ExporterHandle::try_submit`] (or a [`Submitter`] on
/// another thread), stop with [`ExporterHandle::shutdown`]. Dropping it without `shutdown` also
/// stops the sinks once their queues are drained.
#[derive(Debug)]
pub struct ExporterHandle<B> {
    submitter: Submitter<B>,
    tasks: Vec<LaneTask>,
}

/// A cheap, cloneable, `Send` handle that only submits batches; batches submitted after
/// shutdown began are dropped and counted. A submitter with no sink accepts and discards
/// everything.
#[derive(Debug)]
pub struct Submitter<B> {
    lanes: Arc<Vec<LaneTx<B>>>,
}

impl<B> Clone for Submitter<B> {
    fn clone(&self) -> Self {
        Self {
            lanes: self.lanes.clone(),
        }
    }
}

#[derive(Debug)]
struct LaneTx<B> {
    /// Each batch with its [`SignalBatch::approx_bytes`].
    tx: mpsc::Sender<(Arc<B>, u64)>,
    max_bytes: u64,
    metrics: Arc<LaneMetrics>,
}

#[derive(Debug)]
struct LaneTask {
    name: String,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
    metrics: Arc<LaneMetrics>,
}

#[derive(Debug)]
struct LaneMetrics {
    submitted: Counter,
    batches_dropped: Counter,
    dropped_queue_full: Counter,
    dropped_export_failed: Counter,
    dropped_shutdown: Counter,
    exports_succeeded: Counter,
    exports_failed: Counter,
    items_exported: Counter,
    retries: Counter,
    sent_bytes: Counter,
    /// Items queued, accumulated or being exported.
    pending_items: Gauge,
    /// Batches in the queue.
    queued_batches: AtomicU64,
    /// Their bytes, which the queue's byte bound holds against.
    queued_bytes: AtomicU64,
    queued_bytes_gauge: Gauge,
    /// Batches the lane holds: due for export or being exported, plus one while it accumulates.
    held_batches: AtomicU64,
}

impl LaneMetrics {
    fn new(r: &Registry, signal: &str, sink: &str) -> Self {
        let l = [("signal", signal), ("sink", sink)];
        let dropped = |reason: &str| {
            r.counter(
                "loupe_exporter_items_dropped_total",
                ITEMS_DROPPED_HELP,
                &[("signal", signal), ("sink", sink), ("reason", reason)],
            )
        };
        Self {
            submitted: r.counter(
                "loupe_exporter_batches_submitted_total",
                "Batches accepted into a sink's queue.",
                &l,
            ),
            batches_dropped: r.counter(
                "loupe_exporter_batches_dropped_total",
                "Batches dropped for a sink: queue full or closed, or abandoned at shutdown.",
                &l,
            ),
            dropped_queue_full: dropped("queue_full"),
            dropped_export_failed: dropped("export_failed"),
            dropped_shutdown: dropped("shutdown"),
            exports_succeeded: r.counter(
                "loupe_exporter_exports_succeeded_total",
                "Export calls a sink completed.",
                &l,
            ),
            exports_failed: r.counter(
                "loupe_exporter_exports_failed_total",
                "Export calls a sink failed at least in part.",
                &l,
            ),
            items_exported: r.counter(
                "loupe_exporter_items_exported_total",
                ITEMS_EXPORTED_HELP,
                &l,
            ),
            retries: r.counter(
                "loupe_exporter_retries_total",
                "Requests a sink retried.",
                &l,
            ),
            sent_bytes: r.counter(
                "loupe_exporter_sent_bytes_total",
                "Payload bytes a sink wrote or sent (after compression).",
                &l,
            ),
            pending_items: r.gauge(
                "loupe_exporter_pending_items",
                "Items queued for, accumulated by or being exported by a sink.",
                &l,
            ),
            queued_batches: AtomicU64::new(0),
            queued_bytes: AtomicU64::new(0),
            queued_bytes_gauge: r.gauge(
                "loupe_exporter_queued_bytes",
                "Bytes of the batches in a sink's queue (an estimate of their memory), held \
                 under the queue's byte bound.",
                &l,
            ),
            held_batches: AtomicU64::new(0),
        }
    }
}

/// Help of `loupe_exporter_items_dropped_total`, registered by the lanes and the spools.
pub(super) const ITEMS_DROPPED_HELP: &str = "Items (service profiles, spans, log records) a sink \
     did not deliver, by reason: queue_full (its queue was full), export_failed (failed after \
     retries or rejected), shutdown (submitted after shutdown began, or abandoned when it timed \
     out), spool_full (the oldest in a full spool), spool_error (could not be spooled or read back).";
/// Help of `loupe_exporter_items_exported_total`, registered by the lanes and the spools.
pub(super) const ITEMS_EXPORTED_HELP: &str =
    "Items (service profiles, spans, log records) a sink wrote or delivered.";

pub(super) fn as_gauge(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl<B: SignalBatch> Submitter<B> {
    /// Queues the batch for every sink without waiting. A sink whose queue is full (or closed)
    /// drops it, counted; returns true only if every sink accepted it. Batches without items
    /// are ignored by signals that accumulate (spans, logs).
    pub fn try_submit(&self, batch: Arc<B>) -> bool {
        if batch.item_count() == 0 && <B::Batcher as Batcher<B>>::SKIPS_EMPTY {
            return true;
        }
        let bytes = batch.approx_bytes();
        self.try_submit_sized(batch, bytes)
    }

    /// [`Submitter::try_submit`] for a producer that tallied the batch's
    /// [`SignalBatch::approx_bytes`] as it made it (`bytes`), so that the batch is not walked
    /// again here.
    pub fn try_submit_sized(&self, batch: Arc<B>, bytes: u64) -> bool {
        let items = batch.item_count();
        if items == 0 && <B::Batcher as Batcher<B>>::SKIPS_EMPTY {
            return true;
        }
        let mut all = true;
        // The last lane gets the caller's reference itself, so that with one sink the lane holds
        // the only one and can take the items instead of copying them.
        let mut batch = Some(batch);
        let last = self.lanes.len().saturating_sub(1);
        for (i, lane) in self.lanes.iter().enumerate() {
            let m = &lane.metrics;
            let this = if i == last {
                batch.take()
            } else {
                batch.clone()
            };
            let Some(this) = this else { break };
            // Count as pending before sending so the lane's decrement never comes first.
            m.pending_items.add(as_gauge(items));
            m.queued_batches.fetch_add(1, Ordering::Relaxed);
            let queued = m.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
            let result = if queued > 0 && queued.saturating_add(bytes) > lane.max_bytes {
                Err(TrySendError::Full((this, bytes)))
            } else {
                lane.tx.try_send((this, bytes))
            };
            match result {
                Ok(()) => {
                    m.submitted.inc();
                    m.queued_bytes_gauge.add(as_gauge(bytes));
                }
                Err(e) => {
                    m.pending_items.add(-as_gauge(items));
                    m.queued_batches.fetch_sub(1, Ordering::Relaxed);
                    m.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
                    m.batches_dropped.inc();
                    match e {
                        TrySendError::Full(_) => m.dropped_queue_full.add(items),
                        TrySendError::Closed(_) => m.dropped_shutdown.add(items),
                    }
                    all = false;
                }
            }
        }
        all
    }

    /// How many sinks are fed.
    pub fn sink_count(&self) -> usize {
        self.lanes.len()
    }
}

impl<B: SignalBatch> ExporterHandle<B> {
    /// Queues the batch for every sink without waiting; see [`Submitter::try_submit`].
    pub fn try_submit(&self, batch: Arc<B>) -> bool {
        self.submitter.try_submit(batch)
    }

    /// A submit-only handle for another thread or task.
    pub fn submitter(&self) -> Submitter<B> {
        self.submitter.clone()
    }

    /// How many sinks are fed.
    pub fn sink_count(&self) -> usize {
        self.tasks.len()
    }

    /// Names of the sinks, in the order given to `spawn`.
    pub fn sink_names(&self) -> impl Iterator<Item = &str> {
        self.tasks.iter().map(|t| t.name.as_str())
    }

    /// Closes every queue (later submissions are dropped and counted), lets every sink export
    /// what is queued or accumulated, then calls each sink's `shutdown`. Sinks still busy after
    /// `timeout` are cancelled and what they had not exported is counted as dropped.
    pub async fn shutdown(self, timeout: Duration) -> Result<(), PipelineError> {
        let deadline = Instant::now() + timeout;
        let mut tasks = Vec::with_capacity(self.tasks.len());
        for lane in self.tasks {
            // Closes the queue: the task ends after draining it.
            let _ = lane.stop.send(());
            tasks.push((lane.name, lane.task, lane.metrics));
        }
        let mut incomplete = Vec::new();
        let (mut abandoned_batches, mut abandoned_items) = (0, 0);
        for (name, mut task, m) in tasks {
            match tokio::time::timeout_at(deadline, &mut task).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(signal = B::SIGNAL, sink = %name, error = %e, "sink task failed");
                    incomplete.push(format!("{name} (task failed)"));
                }
                Err(_) => {
                    task.abort();
                    let _ = task.await;
                    incomplete.push(format!("{name} (timed out)"));
                }
            }
            let batches = m.queued_batches.swap(0, Ordering::Relaxed)
                + m.held_batches.swap(0, Ordering::Relaxed);
            m.queued_bytes.store(0, Ordering::Relaxed);
            m.queued_bytes_gauge.set(0);
            let items = u64::try_from(m.pending_items.get()).unwrap_or(0);
            m.pending_items.set(0);
            m.batches_dropped.add(batches);
            m.dropped_shutdown.add(items);
            abandoned_batches += batches;
            abandoned_items += items;
        }
        if incomplete.is_empty() {
            Ok(())
        } else {
            Err(PipelineError::ShutdownIncomplete {
                signal: B::SIGNAL,
                sinks: incomplete.join(", "),
                abandoned_batches,
                abandoned_items,
            })
        }
    }
}

async fn run_lane<B: SignalBatch>(
    sink: Box<dyn Sink<B>>,
    mut rx: mpsc::Receiver<(Arc<B>, u64)>,
    mut stop: oneshot::Receiver<()>,
    m: Arc<LaneMetrics>,
) {
    let batching = sink.batching();
    let mut batcher = B::Batcher::default();
    let mut ready = Vec::new();
    let mut stopping = false;
    loop {
        let deadline = batcher.oldest().map(|t| t + batching.max_delay);
        tokio::select! {
            biased;
            // Stop requested, or the handle dropped: refuse new batches, drain the queued ones.
            _ = &mut stop, if !stopping => {
                stopping = true;
                rx.close();
            }
            batch = rx.recv() => match batch {
                Some((b, bytes)) => {
                    m.queued_batches.fetch_sub(1, Ordering::Relaxed);
                    m.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
                    m.queued_bytes_gauge.add(-as_gauge(bytes));
                    batcher.add(b, batching, Instant::now(), &mut ready);
                }
                None => break,
            },
            () = sleep_until(deadline), if deadline.is_some() => ready.extend(batcher.take()),
        }
        let waiting = u64::from(batcher.oldest().is_some());
        m.held_batches
            .store(ready.len() as u64 + waiting, Ordering::Relaxed);
        for batch in ready.drain(..) {
            export(sink.as_ref(), batch, &m).await;
            m.held_batches.fetch_sub(1, Ordering::Relaxed);
        }
    }
    if let Some(rest) = batcher.take() {
        export(sink.as_ref(), rest, &m).await;
    }
    m.held_batches.store(0, Ordering::Relaxed);
    if let Err(e) = sink.shutdown().await {
        tracing::warn!(signal = B::SIGNAL, sink = sink.name(), error = %e, "sink shutdown failed");
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

async fn export<B: SignalBatch>(sink: &dyn Sink<B>, batch: Arc<B>, m: &LaneMetrics) {
    let items = batch.item_count();
    let report = sink.export(batch).await;
    m.pending_items.add(-as_gauge(items));
    m.items_exported.add(report.items_exported);
    m.dropped_export_failed.add(report.items_failed);
    m.retries.add(report.retries);
    m.sent_bytes.add(report.bytes_sent);
    if report.is_success() {
        m.exports_succeeded.inc();
    } else {
        m.exports_failed.inc();
        let first = report
            .errors
            .first()
            .map(ToString::to_string)
            .unwrap_or_default();
        tracing::warn!(
            signal = B::SIGNAL,
            sink = sink.name(),
            failed_items = report.items_failed,
            errors = report.errors.len(),
            first_error = %first,
            "export failed"
        );
    }
}

#[cfg(test)]
mod tests;
