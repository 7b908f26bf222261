//! The export pipeline: fans each [`ProfileBatch`] out to every sink without ever waiting.
//!
//! Architecture invariant: the producer (the agent's drain loop) never blocks on a sink.
//! Each sink has its own bounded queue and task, so a slow Pyroscope never delays the local
//! sink; when a queue is full the batch is dropped for that sink and counted.
//!
//! Metrics, all labelled `sink`: `loupe_exporter_batches_submitted_total`,
//! `loupe_exporter_batches_dropped_total`, `loupe_exporter_profiles_dropped_total`,
//! `loupe_exporter_exports_succeeded_total`, `loupe_exporter_exports_failed_total`,
//! `loupe_exporter_profiles_exported_total`, `loupe_exporter_retries_total`,
//! `loupe_exporter_sent_bytes_total` and the gauge `loupe_exporter_pending_batches`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::profile::ProfileBatch;
use crate::sink::ProfileSink;
use crate::telemetry::{Counter, Gauge, Registry};

/// Queue capacity per sink, in batches, when the caller has no better idea.
pub const DEFAULT_QUEUE_CAPACITY: usize = 4;

/// Errors of the export pipeline.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// Some sinks had not finished when the shutdown timeout expired, or their task panicked.
    #[error(
        "profile exporter shutdown incomplete ({abandoned_batches} batch(es) not exported): {sinks}"
    )]
    ShutdownIncomplete {
        /// The sinks concerned, each with the reason (`pyroscope (timed out)`).
        sinks: String,
        /// Batches queued or in flight that were abandoned.
        abandoned_batches: u64,
    },
}

/// Starts the per-sink tasks.
#[derive(Debug)]
pub struct ProfileExporter;

impl ProfileExporter {
    /// Spawns one task per sink on the current tokio runtime, each behind a queue of
    /// `queue_capacity` batches (at least 1), and registers the pipeline metrics.
    ///
    /// # Panics
    /// When called outside a tokio runtime, like `tokio::spawn`.
    pub fn spawn(
        sinks: Vec<Box<dyn ProfileSink>>,
        registry: &Registry,
        queue_capacity: usize,
    ) -> ProfileExporterHandle {
        let mut lanes = Vec::with_capacity(sinks.len());
        let mut tasks = Vec::with_capacity(sinks.len());
        for mut sink in sinks {
            sink.register_metrics(registry);
            let name = sink.name().to_owned();
            let metrics = Arc::new(LaneMetrics::new(registry, &name));
            let (tx, rx) = mpsc::channel(queue_capacity.max(1));
            let (stop_tx, stop_rx) = oneshot::channel();
            let task = tokio::spawn(run_lane(sink, rx, stop_rx, metrics.clone()));
            lanes.push(LaneTx {
                tx,
                metrics: metrics.clone(),
            });
            tasks.push(LaneTask {
                name,
                stop: stop_tx,
                task,
                metrics,
            });
        }
        ProfileExporterHandle {
            submitter: ProfileSubmitter {
                lanes: Arc::new(lanes),
            },
            tasks,
        }
    }
}

/// Owns the running pipeline: submit with [`ProfileExporterHandle::try_submit`] (or a
/// [`ProfileSubmitter`] on another thread), stop with [`ProfileExporterHandle::shutdown`].
/// Dropping it without `shutdown` also stops the sinks once their queues are drained.
#[derive(Debug)]
pub struct ProfileExporterHandle {
    submitter: ProfileSubmitter,
    tasks: Vec<LaneTask>,
}

/// A cheap, cloneable, `Send` handle that only submits batches; batches submitted after
/// shutdown began are dropped and counted.
#[derive(Debug, Clone)]
pub struct ProfileSubmitter {
    lanes: Arc<Vec<LaneTx>>,
}

#[derive(Debug)]
struct LaneTx {
    tx: mpsc::Sender<Arc<ProfileBatch>>,
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
    profiles_dropped: Counter,
    exports_succeeded: Counter,
    exports_failed: Counter,
    profiles_exported: Counter,
    retries: Counter,
    sent_bytes: Counter,
    /// Batches queued or being exported.
    pending: Gauge,
    /// Service profiles in those batches (for counting drops at shutdown).
    pending_profiles: AtomicU64,
}

impl LaneMetrics {
    fn new(r: &Registry, sink: &str) -> Self {
        let l = [("sink", sink)];
        Self {
            submitted: r.counter(
                "loupe_exporter_batches_submitted_total",
                "Profile batches accepted into a sink's queue.",
                &l,
            ),
            batches_dropped: r.counter(
                "loupe_exporter_batches_dropped_total",
                "Profile batches dropped for a sink: queue full or closed, or abandoned at shutdown.",
                &l,
            ),
            profiles_dropped: r.counter(
                "loupe_exporter_profiles_dropped_total",
                "Service profiles not delivered by a sink: in dropped batches or failed after retries.",
                &l,
            ),
            exports_succeeded: r.counter(
                "loupe_exporter_exports_succeeded_total",
                "Batches a sink exported completely.",
                &l,
            ),
            exports_failed: r.counter(
                "loupe_exporter_exports_failed_total",
                "Batches a sink failed to export at least in part.",
                &l,
            ),
            profiles_exported: r.counter(
                "loupe_exporter_profiles_exported_total",
                "Service profiles a sink wrote or delivered.",
                &l,
            ),
            retries: r.counter(
                "loupe_exporter_retries_total",
                "Requests a sink retried.",
                &l,
            ),
            sent_bytes: r.counter(
                "loupe_exporter_sent_bytes_total",
                "Payload bytes a sink wrote or delivered (compressed).",
                &l,
            ),
            pending: r.gauge(
                "loupe_exporter_pending_batches",
                "Profile batches queued for or being exported by a sink.",
                &l,
            ),
            pending_profiles: AtomicU64::new(0),
        }
    }

    fn count_dropped(&self, batches: u64, profiles: u64) {
        self.batches_dropped.add(batches);
        self.profiles_dropped.add(profiles);
    }
}

impl ProfileSubmitter {
    /// Queues the batch for every sink without waiting. A sink whose queue is full (or closed)
    /// drops the batch, counted; returns true only if every sink accepted it.
    pub fn try_submit(&self, batch: Arc<ProfileBatch>) -> bool {
        let profiles = batch.profiles.len() as u64;
        let mut all = true;
        for lane in self.lanes.iter() {
            let m = &lane.metrics;
            // Count as pending before sending so the lane's decrement never comes first.
            m.pending.inc();
            m.pending_profiles.fetch_add(profiles, Ordering::Relaxed);
            match lane.tx.try_send(batch.clone()) {
                Ok(()) => m.submitted.inc(),
                Err(TrySendError::Full(_) | TrySendError::Closed(_)) => {
                    m.pending.dec();
                    m.pending_profiles.fetch_sub(profiles, Ordering::Relaxed);
                    m.count_dropped(1, profiles);
                    all = false;
                }
            }
        }
        all
    }
}

impl ProfileExporterHandle {
    /// Queues the batch for every sink without waiting; see [`ProfileSubmitter::try_submit`].
    pub fn try_submit(&self, batch: Arc<ProfileBatch>) -> bool {
        self.submitter.try_submit(batch)
    }

    /// A submit-only handle for another thread or task.
    pub fn submitter(&self) -> ProfileSubmitter {
        self.submitter.clone()
    }

    /// Names of the sinks, in the order given to `spawn`.
    pub fn sink_names(&self) -> impl Iterator<Item = &str> {
        self.tasks.iter().map(|t| t.name.as_str())
    }

    /// Closes every queue (later submissions are dropped and counted), lets every sink export
    /// what is already queued, then calls each sink's `shutdown`. Sinks still busy after
    /// `timeout` are cancelled and their batches counted as dropped.
    pub async fn shutdown(self, timeout: Duration) -> Result<(), PipelineError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut tasks = Vec::with_capacity(self.tasks.len());
        for lane in self.tasks {
            // Closes the queue: the task ends after draining it.
            let _ = lane.stop.send(());
            tasks.push((lane.name, lane.task, lane.metrics));
        }
        let mut incomplete = Vec::new();
        let mut abandoned_batches = 0;
        for (name, mut task, metrics) in tasks {
            match tokio::time::timeout_at(deadline, &mut task).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(sink = %name, error = %e, "profile sink task failed");
                    incomplete.push(format!("{name} (task failed)"));
                }
                Err(_) => {
                    task.abort();
                    let _ = task.await;
                    incomplete.push(format!("{name} (timed out)"));
                }
            }
            let batches = u64::try_from(metrics.pending.get()).unwrap_or(0);
            if batches > 0 {
                let profiles = metrics.pending_profiles.swap(0, Ordering::Relaxed);
                metrics.pending.set(0);
                metrics.count_dropped(batches, profiles);
                abandoned_batches += batches;
            }
        }
        if incomplete.is_empty() {
            Ok(())
        } else {
            Err(PipelineError::ShutdownIncomplete {
                sinks: incomplete.join(", "),
                abandoned_batches,
            })
        }
    }
}

async fn run_lane(
    sink: Box<dyn ProfileSink>,
    mut rx: mpsc::Receiver<Arc<ProfileBatch>>,
    mut stop: oneshot::Receiver<()>,
    m: Arc<LaneMetrics>,
) {
    let mut stopping = false;
    loop {
        let batch = tokio::select! {
            biased;
            // Stop requested, or the handle dropped: refuse new batches, drain the queued ones.
            _ = &mut stop, if !stopping => {
                stopping = true;
                rx.close();
                continue;
            }
            batch = rx.recv() => match batch {
                Some(b) => b,
                None => break,
            },
        };
        let profiles = batch.profiles.len() as u64;
        let report = sink.export(batch).await;
        m.pending.dec();
        m.pending_profiles.fetch_sub(profiles, Ordering::Relaxed);
        m.profiles_exported.add(report.profiles_exported);
        m.profiles_dropped.add(report.profiles_failed);
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
                sink = sink.name(),
                failed_profiles = report.profiles_failed,
                errors = report.errors.len(),
                first_error = %first,
                "profile export failed"
            );
        }
    }
    if let Err(e) = sink.shutdown().await {
        tracing::warn!(sink = sink.name(), error = %e, "profile sink shutdown failed");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Instant;

    use tokio::sync::{Semaphore, mpsc::UnboundedSender};

    use super::*;
    use crate::profile::ServiceProfile;
    use crate::sink::{BoxFuture, ExportReport};

    /// A sink that records batch starts and waits for a permit before finishing each export.
    struct GatedSink {
        name: &'static str,
        gate: Arc<Semaphore>,
        started: UnboundedSender<i64>,
        done: Arc<Mutex<Vec<i64>>>,
        shut_down: Arc<Mutex<bool>>,
    }

    impl ProfileSink for GatedSink {
        fn name(&self) -> &str {
            self.name
        }

        fn export(&self, batch: Arc<ProfileBatch>) -> BoxFuture<'_, ExportReport> {
            Box::pin(async move {
                let _ = self.started.send(batch.start_unix_nanos);
                self.gate.acquire().await.unwrap().forget();
                self.done.lock().unwrap().push(batch.start_unix_nanos);
                ExportReport {
                    profiles_exported: batch.profiles.len() as u64,
                    bytes_sent: 10,
                    ..ExportReport::default()
                }
            })
        }

        fn shutdown(&self) -> BoxFuture<'_, Result<(), crate::sink::SinkError>> {
            Box::pin(async move {
                *self.shut_down.lock().unwrap() = true;
                Ok(())
            })
        }
    }

    struct Probe {
        gate: Arc<Semaphore>,
        started: mpsc::UnboundedReceiver<i64>,
        done: Arc<Mutex<Vec<i64>>>,
        shut_down: Arc<Mutex<bool>>,
    }

    fn gated(name: &'static str, permits: usize) -> (Box<dyn ProfileSink>, Probe) {
        let gate = Arc::new(Semaphore::new(permits));
        let (tx, started) = mpsc::unbounded_channel();
        let done = Arc::new(Mutex::new(Vec::new()));
        let shut_down = Arc::new(Mutex::new(false));
        let sink = GatedSink {
            name,
            gate: gate.clone(),
            started: tx,
            done: done.clone(),
            shut_down: shut_down.clone(),
        };
        (
            Box::new(sink),
            Probe {
                gate,
                started,
                done,
                shut_down,
            },
        )
    }

    fn batch(id: i64) -> Arc<ProfileBatch> {
        Arc::new(ProfileBatch {
            start_unix_nanos: id,
            profiles: vec![ServiceProfile::default(), ServiceProfile::default()],
            ..ProfileBatch::default()
        })
    }

    fn metric(registry: &Registry, name: &str, sink: &str) -> u64 {
        let prefix = format!("{name}{{sink=\"{sink}\"}} ");
        registry
            .render()
            .lines()
            .find_map(|l| l.strip_prefix(&prefix).map(|v| v.parse().unwrap()))
            .unwrap_or_else(|| panic!("no {prefix}"))
    }

    #[tokio::test]
    async fn blocked_sink_never_blocks_submit_nor_other_sinks() {
        let registry = Registry::new();
        let (slow, mut slow_probe) = gated("slow", 0);
        let (fast, fast_probe) = gated("fast", usize::MAX >> 4);
        let handle = ProfileExporter::spawn(vec![slow, fast], &registry, 1);

        assert!(handle.try_submit(batch(0)));
        // The slow sink is now stuck inside export with batch 0; its queue has room for one more.
        assert_eq!(slow_probe.started.recv().await, Some(0));
        let t0 = Instant::now();
        let mut accepted_by_all = 0;
        for id in 1..=50 {
            if handle.try_submit(batch(id)) {
                accepted_by_all += 1;
            }
            // Let the fast sink drain so only the slow one drops.
            tokio::task::yield_now().await;
            while fast_probe.done.lock().unwrap().len() < id as usize + 1 {
                tokio::task::yield_now().await;
            }
        }
        assert!(t0.elapsed() < Duration::from_secs(2), "try_submit waited");
        assert_eq!(accepted_by_all, 1, "only batch 1 fits in the slow queue");
        assert_eq!(
            fast_probe.done.lock().unwrap().len(),
            51,
            "the fast sink got everything"
        );
        assert_eq!(
            metric(&registry, "loupe_exporter_batches_dropped_total", "slow"),
            49
        );
        assert_eq!(
            metric(&registry, "loupe_exporter_profiles_dropped_total", "slow"),
            98
        );
        assert_eq!(
            metric(&registry, "loupe_exporter_batches_dropped_total", "fast"),
            0
        );
        assert_eq!(
            metric(&registry, "loupe_exporter_pending_batches", "slow"),
            2
        );

        // Release the slow sink: shutdown flushes what was queued.
        slow_probe.gate.add_permits(100);
        handle.shutdown(Duration::from_secs(5)).await.unwrap();
        assert_eq!(*slow_probe.done.lock().unwrap(), [0, 1]);
        assert!(*slow_probe.shut_down.lock().unwrap() && *fast_probe.shut_down.lock().unwrap());
        assert_eq!(
            metric(&registry, "loupe_exporter_exports_succeeded_total", "slow"),
            2
        );
        assert_eq!(
            metric(&registry, "loupe_exporter_profiles_exported_total", "slow"),
            4
        );
        assert_eq!(
            metric(&registry, "loupe_exporter_sent_bytes_total", "slow"),
            20
        );
        assert_eq!(
            metric(&registry, "loupe_exporter_pending_batches", "slow"),
            0
        );
        assert_eq!(
            metric(&registry, "loupe_exporter_batches_submitted_total", "fast"),
            51
        );
    }

    #[tokio::test]
    async fn shutdown_flushes_queued_batches() {
        let registry = Registry::new();
        let (sink, mut probe) = gated("s", 0);
        let handle = ProfileExporter::spawn(vec![sink], &registry, 8);
        // Submitted from a plain thread, as the agent's drainer does.
        let submitter = handle.submitter();
        let accepted = std::thread::spawn({
            let submitter = submitter.clone();
            move || (0..5).all(|id| submitter.try_submit(batch(id)))
        })
        .join()
        .unwrap();
        assert!(accepted);
        assert_eq!(probe.started.recv().await, Some(0));
        let gate = probe.gate.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            gate.add_permits(5);
        });
        // A live submitter does not keep shutdown waiting.
        handle.shutdown(Duration::from_secs(5)).await.unwrap();
        assert_eq!(*probe.done.lock().unwrap(), [0, 1, 2, 3, 4]);
        assert_eq!(
            metric(&registry, "loupe_exporter_batches_dropped_total", "s"),
            0
        );
        // After shutdown, submissions are dropped and counted.
        assert!(!submitter.try_submit(batch(9)));
        assert_eq!(
            metric(&registry, "loupe_exporter_batches_dropped_total", "s"),
            1
        );
        assert_eq!(metric(&registry, "loupe_exporter_pending_batches", "s"), 0);
    }

    #[tokio::test]
    async fn shutdown_timeout_counts_abandoned_batches() {
        let registry = Registry::new();
        let (sink, mut probe) = gated("stuck", 0);
        let handle = ProfileExporter::spawn(vec![sink], &registry, 4);
        for id in 0..3 {
            assert!(handle.try_submit(batch(id)));
        }
        assert_eq!(probe.started.recv().await, Some(0));
        let err = handle
            .shutdown(Duration::from_millis(100))
            .await
            .unwrap_err();
        let PipelineError::ShutdownIncomplete {
            sinks,
            abandoned_batches,
        } = &err;
        assert!(
            err.to_string().contains("3 batch(es) not exported"),
            "{err}"
        );
        assert_eq!(
            (sinks.as_str(), *abandoned_batches),
            ("stuck (timed out)", 3)
        );
        assert_eq!(
            metric(&registry, "loupe_exporter_batches_dropped_total", "stuck"),
            3
        );
        assert_eq!(
            metric(&registry, "loupe_exporter_profiles_dropped_total", "stuck"),
            6
        );
        assert_eq!(
            metric(&registry, "loupe_exporter_pending_batches", "stuck"),
            0
        );
        assert!(!*probe.shut_down.lock().unwrap());
    }
}
