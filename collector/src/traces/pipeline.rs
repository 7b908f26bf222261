//! The trace export pipeline: fans each [`TraceBatch`] out to every trace sink without waiting.
//!
//! Architecture invariant: the producer (the agent's span builder thread) never blocks on a sink.
//! Each sink has its own bounded queue and task; when a queue is full the batch is dropped for
//! that sink and its spans counted. Inside its task, each lane accumulates spans (merging those of
//! the same resource and scope) and calls the sink once `max_spans` are waiting or the oldest has
//! waited `max_delay` ([`super::Batching`]).
//!
//! Metrics, all labelled `sink`: `loupe_trace_exporter_batches_submitted_total`,
//! `loupe_trace_exporter_batches_dropped_total`, `loupe_trace_exporter_spans_dropped_total`,
//! `loupe_trace_exporter_spans_exported_total`, `loupe_trace_exporter_exports_succeeded_total`,
//! `loupe_trace_exporter_exports_failed_total`, `loupe_trace_exporter_retries_total`,
//! `loupe_trace_exporter_sent_bytes_total` and the gauge `loupe_trace_exporter_pending_spans`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::proto::common::InstrumentationScope;
use super::proto::resource::Resource;
use super::{Batching, ResourceBatch, SharedTraceBatch, SpanData, TraceBatch, TraceSink};
use crate::telemetry::{Counter, Gauge, Registry};

/// Queue capacity per sink, in batches, when the caller has no better idea. A batch holds up to a
/// few thousand spans of ~1 KB each: four keep a slow sink's backlog to ~10 MB (the agent's RSS
/// budget is 64 MB); beyond that batches are dropped and counted.
pub const DEFAULT_QUEUE_CAPACITY: usize = 4;

/// Errors of the trace export pipeline.
#[derive(Debug, thiserror::Error)]
pub enum TracePipelineError {
    /// Some sinks had not finished when the shutdown timeout expired, or their task panicked.
    #[error("trace exporter shutdown incomplete ({abandoned_spans} span(s) not exported): {sinks}")]
    ShutdownIncomplete {
        /// The sinks concerned, each with the reason (`otlp (timed out)`).
        sinks: String,
        /// Spans queued, batched or in flight that were abandoned.
        abandoned_spans: u64,
    },
}

/// Starts the per-sink tasks.
#[derive(Debug)]
pub struct TraceExporter;

impl TraceExporter {
    /// Spawns one task per sink on the current tokio runtime, each behind a queue of
    /// `queue_capacity` batches (at least 1), and registers the pipeline metrics.
    ///
    /// # Panics
    /// When called outside a tokio runtime, like `tokio::spawn`.
    pub fn spawn(
        sinks: Vec<Box<dyn TraceSink>>,
        registry: &Registry,
        queue_capacity: usize,
    ) -> TraceExporterHandle {
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
        TraceExporterHandle {
            submitter: TraceSubmitter {
                lanes: Arc::new(lanes),
            },
            tasks,
        }
    }
}

/// Owns the running pipeline: submit through a [`TraceSubmitter`], stop with
/// [`TraceExporterHandle::shutdown`]. Dropping it without `shutdown` also stops the sinks once
/// their queues are drained.
#[derive(Debug)]
pub struct TraceExporterHandle {
    submitter: TraceSubmitter,
    tasks: Vec<LaneTask>,
}

/// A cheap, cloneable, `Send` handle that only submits batches; batches submitted after shutdown
/// began are dropped and counted. A submitter with no sink accepts and discards everything.
#[derive(Debug, Clone)]
pub struct TraceSubmitter {
    lanes: Arc<Vec<LaneTx>>,
}

#[derive(Debug)]
struct LaneTx {
    tx: mpsc::Sender<SharedTraceBatch>,
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
    spans_dropped: Counter,
    exports_succeeded: Counter,
    exports_failed: Counter,
    spans_exported: Counter,
    retries: Counter,
    sent_bytes: Counter,
    /// Spans queued, accumulated or being exported.
    pending: Gauge,
}

impl LaneMetrics {
    fn new(r: &Registry, sink: &str) -> Self {
        let l = [("sink", sink)];
        Self {
            submitted: r.counter(
                "loupe_trace_exporter_batches_submitted_total",
                "Span batches accepted into a trace sink's queue.",
                &l,
            ),
            batches_dropped: r.counter(
                "loupe_trace_exporter_batches_dropped_total",
                "Span batches dropped for a trace sink: queue full or closed.",
                &l,
            ),
            spans_dropped: r.counter(
                "loupe_trace_exporter_spans_dropped_total",
                "Spans not delivered by a trace sink: queue full, failed after retries, rejected, or abandoned at shutdown.",
                &l,
            ),
            exports_succeeded: r.counter(
                "loupe_trace_exporter_exports_succeeded_total",
                "Export calls a trace sink completed.",
                &l,
            ),
            exports_failed: r.counter(
                "loupe_trace_exporter_exports_failed_total",
                "Export calls a trace sink failed at least in part.",
                &l,
            ),
            spans_exported: r.counter(
                "loupe_trace_exporter_spans_exported_total",
                "Spans a trace sink wrote or delivered.",
                &l,
            ),
            retries: r.counter(
                "loupe_trace_exporter_retries_total",
                "Requests a trace sink retried.",
                &l,
            ),
            sent_bytes: r.counter(
                "loupe_trace_exporter_sent_bytes_total",
                "Payload bytes a trace sink wrote or sent.",
                &l,
            ),
            pending: r.gauge(
                "loupe_trace_exporter_pending_spans",
                "Spans queued for, batched by or being exported by a trace sink.",
                &l,
            ),
        }
    }
}

impl TraceSubmitter {
    /// Queues the batch for every sink without waiting. A sink whose queue is full (or closed)
    /// drops it, counted; returns true only if every sink accepted it. Empty batches are ignored.
    pub fn try_submit(&self, batch: SharedTraceBatch) -> bool {
        let spans = batch.span_count();
        if spans == 0 {
            return true;
        }
        let spans = i64::try_from(spans).unwrap_or(i64::MAX);
        let mut all = true;
        for lane in self.lanes.iter() {
            let m = &lane.metrics;
            // Count as pending before sending so the lane's decrement never comes first.
            m.pending.add(spans);
            match lane.tx.try_send(batch.clone()) {
                Ok(()) => m.submitted.inc(),
                Err(TrySendError::Full(_) | TrySendError::Closed(_)) => {
                    m.pending.add(-spans);
                    m.batches_dropped.inc();
                    m.spans_dropped.add(spans.unsigned_abs());
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

impl TraceExporterHandle {
    /// A submit-only handle for another thread or task.
    pub fn submitter(&self) -> TraceSubmitter {
        self.submitter.clone()
    }

    /// Names of the sinks, in the order given to `spawn`.
    pub fn sink_names(&self) -> impl Iterator<Item = &str> {
        self.tasks.iter().map(|t| t.name.as_str())
    }

    /// Closes every queue (later submissions are dropped and counted), lets every sink export
    /// what is queued or accumulated, then calls each sink's `shutdown`. Sinks still busy after
    /// `timeout` are cancelled and their pending spans counted as dropped.
    pub async fn shutdown(self, timeout: Duration) -> Result<(), TracePipelineError> {
        let deadline = Instant::now() + timeout;
        let mut tasks = Vec::with_capacity(self.tasks.len());
        for lane in self.tasks {
            let _ = lane.stop.send(());
            tasks.push((lane.name, lane.task, lane.metrics));
        }
        let mut incomplete = Vec::new();
        let mut abandoned = 0;
        for (name, mut task, metrics) in tasks {
            match tokio::time::timeout_at(deadline, &mut task).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(sink = %name, error = %e, "trace sink task failed");
                    incomplete.push(format!("{name} (task failed)"));
                }
                Err(_) => {
                    task.abort();
                    let _ = task.await;
                    incomplete.push(format!("{name} (timed out)"));
                }
            }
            let spans = u64::try_from(metrics.pending.get()).unwrap_or(0);
            if spans > 0 {
                metrics.pending.set(0);
                metrics.spans_dropped.add(spans);
                abandoned += spans;
            }
        }
        if incomplete.is_empty() {
            Ok(())
        } else {
            Err(TracePipelineError::ShutdownIncomplete {
                sinks: incomplete.join(", "),
                abandoned_spans: abandoned,
            })
        }
    }
}

/// Spans waiting in a lane for their export call.
#[derive(Debug, Default)]
struct Accumulator {
    batch: TraceBatch,
    spans: usize,
    /// When the oldest waiting span arrived.
    since: Option<Instant>,
}

impl Accumulator {
    /// Adds the spans of `incoming`; every time `max` spans are waiting they are moved to `ready`.
    /// The spans are moved out of the batch when this lane holds the only reference to it (one
    /// sink, the usual case) and cloned otherwise.
    fn add(
        &mut self,
        incoming: SharedTraceBatch,
        max: usize,
        now: Instant,
        ready: &mut Vec<TraceBatch>,
    ) {
        match Arc::try_unwrap(incoming) {
            Ok(owned) => {
                for rb in owned.resources {
                    let ResourceBatch {
                        resource,
                        scope,
                        spans,
                    } = rb;
                    self.add_spans(&resource, &scope, spans.into_iter(), max, now, ready);
                }
            }
            Err(shared) => {
                for rb in &shared.resources {
                    let spans = rb.spans.iter().cloned();
                    self.add_spans(&rb.resource, &rb.scope, spans, max, now, ready);
                }
            }
        }
    }

    /// Adds the spans of one (resource, scope), handing `max` at a time to `ready`.
    fn add_spans(
        &mut self,
        resource: &Arc<Resource>,
        scope: &Arc<InstrumentationScope>,
        mut spans: impl ExactSizeIterator<Item = SpanData>,
        max: usize,
        now: Instant,
        ready: &mut Vec<TraceBatch>,
    ) {
        let max = max.max(1);
        while spans.len() > 0 {
            let room = max - self.spans;
            let n = room.min(spans.len());
            self.slot(resource, scope).extend(spans.by_ref().take(n));
            self.spans += n;
            self.since.get_or_insert(now);
            if self.spans >= max {
                ready.push(self.take());
            }
        }
    }

    /// The span list of (`resource`, `scope`), created if missing.
    fn slot(
        &mut self,
        resource: &Arc<Resource>,
        scope: &Arc<InstrumentationScope>,
    ) -> &mut Vec<SpanData> {
        let list = &mut self.batch.resources;
        let i = match list.iter().position(|r| r.is_from(resource, scope)) {
            Some(i) => i,
            None => {
                list.push(ResourceBatch {
                    resource: resource.clone(),
                    scope: scope.clone(),
                    spans: Vec::new(),
                });
                list.len() - 1
            }
        };
        &mut list[i].spans
    }

    fn take(&mut self) -> TraceBatch {
        self.spans = 0;
        self.since = None;
        std::mem::take(&mut self.batch)
    }
}

async fn run_lane(
    sink: Box<dyn TraceSink>,
    mut rx: mpsc::Receiver<SharedTraceBatch>,
    mut stop: oneshot::Receiver<()>,
    m: Arc<LaneMetrics>,
) {
    let batching: Batching = sink.batching();
    let mut acc = Accumulator::default();
    let mut ready = Vec::new();
    let mut stopping = false;
    loop {
        let deadline = acc.since.map(|t| t + batching.max_delay);
        tokio::select! {
            biased;
            // Stop requested, or the handle dropped: refuse new batches, drain the queued ones.
            _ = &mut stop, if !stopping => {
                stopping = true;
                rx.close();
            }
            batch = rx.recv() => match batch {
                Some(b) => {
                    acc.add(b, batching.max_spans, Instant::now(), &mut ready);
                    if batching.max_delay.is_zero() && acc.spans > 0 {
                        ready.push(acc.take());
                    }
                }
                None => break,
            },
            () = sleep_until(deadline), if deadline.is_some() => ready.push(acc.take()),
        }
        for batch in ready.drain(..) {
            export(sink.as_ref(), batch, &m).await;
        }
    }
    if acc.spans > 0 {
        export(sink.as_ref(), acc.take(), &m).await;
    }
    if let Err(e) = sink.shutdown().await {
        tracing::warn!(sink = sink.name(), error = %e, "trace sink shutdown failed");
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

async fn export(sink: &dyn TraceSink, batch: TraceBatch, m: &LaneMetrics) {
    let spans = batch.span_count();
    let report = sink.export(batch).await;
    m.pending.add(-i64::try_from(spans).unwrap_or(i64::MAX));
    m.spans_exported.add(report.spans_exported);
    m.spans_dropped.add(report.spans_failed);
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
            failed_spans = report.spans_failed,
            errors = report.errors.len(),
            first_error = %first,
            "trace export failed"
        );
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tokio::sync::Semaphore;

    use super::super::proto::common::{AnyValue, InstrumentationScope, KeyValue, any_value};
    use super::super::proto::resource::Resource;
    use super::super::{TraceExportReport, TraceSinkError};
    use super::*;
    use crate::sink::BoxFuture;
    use crate::traces::SpanKind;

    /// Records every export; waits for a permit before finishing each.
    struct Recorder {
        batching: Batching,
        gate: Arc<Semaphore>,
        got: Arc<Mutex<Vec<TraceBatch>>>,
        shut_down: Arc<Mutex<bool>>,
    }

    impl TraceSink for Recorder {
        fn name(&self) -> &str {
            "rec"
        }

        fn batching(&self) -> Batching {
            self.batching
        }

        fn export(&self, batch: TraceBatch) -> BoxFuture<'_, TraceExportReport> {
            Box::pin(async move {
                self.gate.acquire().await.unwrap().forget();
                let spans = batch.span_count();
                self.got.lock().unwrap().push(batch);
                TraceExportReport {
                    spans_exported: spans,
                    bytes_sent: 1,
                    ..TraceExportReport::default()
                }
            })
        }

        fn shutdown(&self) -> BoxFuture<'_, Result<(), TraceSinkError>> {
            Box::pin(async move {
                *self.shut_down.lock().unwrap() = true;
                Ok(())
            })
        }
    }

    type Got = Arc<Mutex<Vec<TraceBatch>>>;

    fn recorder(batching: Batching, permits: usize) -> (Box<dyn TraceSink>, Got, Arc<Semaphore>) {
        let got = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(Semaphore::new(permits));
        let sink = Recorder {
            batching,
            gate: gate.clone(),
            got: got.clone(),
            shut_down: Arc::default(),
        };
        (Box::new(sink), got, gate)
    }

    fn resource(pid: i64) -> Resource {
        Resource {
            attributes: vec![KeyValue {
                key: "process.pid".into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::IntValue(pid)),
                }),
                ..KeyValue::default()
            }],
            ..Resource::default()
        }
    }

    /// A batch with `n` spans for each pid, span names `"{pid}-{i}"`.
    fn batch(pids: &[i64], n: usize, tag: &str) -> Arc<TraceBatch> {
        let scope = Arc::new(InstrumentationScope {
            name: "loupe".into(),
            ..InstrumentationScope::default()
        });
        Arc::new(TraceBatch {
            resources: pids
                .iter()
                .map(|&pid| ResourceBatch {
                    // A fresh allocation per batch: merging must compare values, not pointers.
                    resource: Arc::new(resource(pid)),
                    scope: scope.clone(),
                    spans: (0..n)
                        .map(|i| SpanData {
                            trace_id: [1; 16],
                            span_id: [2; 8],
                            parent_span_id: None,
                            trace_state: String::new(),
                            name: format!("{tag}{pid}-{i}"),
                            kind: SpanKind::Server,
                            start_time_unix_nano: 1,
                            end_time_unix_nano: 2,
                            attributes: Vec::new(),
                            error: None,
                        })
                        .collect(),
                })
                .collect(),
        })
    }

    fn names(b: &TraceBatch) -> Vec<String> {
        b.resources
            .iter()
            .flat_map(|r| &r.spans)
            .map(|s| s.name.clone())
            .collect()
    }

    fn metric(registry: &Registry, name: &str) -> i64 {
        let prefix = format!("{name}{{sink=\"rec\"}} ");
        registry
            .render()
            .lines()
            .find_map(|l| l.strip_prefix(&prefix).map(|v| v.parse().unwrap()))
            .unwrap_or_else(|| panic!("no {prefix}"))
    }

    #[tokio::test(start_paused = true)]
    async fn merges_submissions_until_the_delay_and_groups_by_resource() {
        let registry = Registry::new();
        let batching = Batching {
            max_spans: 100,
            max_delay: Duration::from_secs(2),
        };
        let (sink, got, _gate) = recorder(batching, 1000);
        let handle = TraceExporter::spawn(vec![sink], &registry, 8);
        let sub = handle.submitter();
        assert!(sub.try_submit(batch(&[1, 2], 2, "a")));
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(sub.try_submit(batch(&[2], 1, "b")));
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert!(got.lock().unwrap().is_empty(), "exported before max_delay");
        tokio::time::sleep(Duration::from_millis(600)).await;
        {
            let got = got.lock().unwrap();
            assert_eq!(got.len(), 1);
            let b = &got[0];
            assert_eq!(b.resources.len(), 2, "same resource and scope merged");
            assert_eq!(names(b), ["a1-0", "a1-1", "a2-0", "a2-1", "b2-0"]);
        }
        assert_eq!(
            metric(&registry, "loupe_trace_exporter_spans_exported_total"),
            5
        );
        assert_eq!(metric(&registry, "loupe_trace_exporter_pending_spans"), 0);
        handle.shutdown(Duration::from_secs(5)).await.unwrap();
    }

    #[tokio::test]
    async fn splits_at_max_spans_and_flushes_the_rest_at_shutdown() {
        let registry = Registry::new();
        let batching = Batching {
            max_spans: 2,
            max_delay: Duration::from_secs(3600),
        };
        let (sink, got, _gate) = recorder(batching, 1000);
        let handle = TraceExporter::spawn(vec![sink], &registry, 8);
        assert!(handle.submitter().try_submit(batch(&[1], 5, "")));
        handle.shutdown(Duration::from_secs(5)).await.unwrap();
        let got = got.lock().unwrap();
        let sizes: Vec<u64> = got.iter().map(TraceBatch::span_count).collect();
        assert_eq!(sizes, [2, 2, 1]);
        assert_eq!(
            metric(&registry, "loupe_trace_exporter_spans_exported_total"),
            5
        );
        assert_eq!(
            metric(&registry, "loupe_trace_exporter_exports_succeeded_total"),
            3
        );
    }

    /// A batch still referenced elsewhere (another sink's queue) is copied, not taken apart.
    #[tokio::test]
    async fn a_shared_batch_is_copied_and_left_whole() {
        let registry = Registry::new();
        let batching = Batching {
            max_spans: 3,
            max_delay: Duration::from_secs(3600),
        };
        let (sink, got, _gate) = recorder(batching, 1000);
        let handle = TraceExporter::spawn(vec![sink], &registry, 8);
        let shared = batch(&[1, 2], 2, "s");
        assert!(handle.submitter().try_submit(shared.clone()));
        handle.shutdown(Duration::from_secs(5)).await.unwrap();
        let got = got.lock().unwrap();
        let exported: Vec<String> = got.iter().flat_map(names).collect();
        assert_eq!(exported, names(&shared));
        assert_eq!(shared.span_count(), 4, "the submitter's batch is untouched");
        let sizes: Vec<u64> = got.iter().map(TraceBatch::span_count).collect();
        assert_eq!(sizes, [3, 1]);
    }

    #[tokio::test]
    async fn full_queue_drops_and_counts_without_waiting() {
        let registry = Registry::new();
        let batching = Batching {
            max_spans: 1000,
            max_delay: Duration::ZERO,
        };
        let (sink, got, gate) = recorder(batching, 0);
        let handle = TraceExporter::spawn(vec![sink], &registry, 1);
        let sub = handle.submitter();
        assert!(sub.try_submit(batch(&[1], 3, "")));
        // Let the lane take the first batch and block inside export.
        while metric(&registry, "loupe_trace_exporter_batches_submitted_total") < 1 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        let t0 = std::time::Instant::now();
        let accepted = (0..10)
            .filter(|_| sub.try_submit(batch(&[1], 3, "")))
            .count();
        assert!(t0.elapsed() < Duration::from_secs(1));
        assert_eq!(accepted, 1, "one batch fits in the queue");
        assert_eq!(
            metric(&registry, "loupe_trace_exporter_batches_dropped_total"),
            9
        );
        assert_eq!(
            metric(&registry, "loupe_trace_exporter_spans_dropped_total"),
            27
        );
        assert_eq!(metric(&registry, "loupe_trace_exporter_pending_spans"), 6);
        gate.add_permits(10);
        handle.shutdown(Duration::from_secs(5)).await.unwrap();
        assert_eq!(got.lock().unwrap().len(), 2);
        assert_eq!(metric(&registry, "loupe_trace_exporter_pending_spans"), 0);
        // Submissions after shutdown are dropped and counted.
        assert!(!sub.try_submit(batch(&[1], 1, "")));
        assert_eq!(
            metric(&registry, "loupe_trace_exporter_spans_dropped_total"),
            28
        );
    }

    #[tokio::test]
    async fn shutdown_timeout_counts_abandoned_spans() {
        let registry = Registry::new();
        let (sink, _got, _gate) = recorder(Batching::default(), 0);
        let handle = TraceExporter::spawn(vec![sink], &registry, 4);
        let sub = handle.submitter();
        assert!(sub.try_submit(batch(&[1, 2], 2, "")));
        assert!(sub.try_submit(batch(&[1], 3, "")));
        let err = handle
            .shutdown(Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("rec (timed out)"), "{err}");
        assert_eq!(
            metric(&registry, "loupe_trace_exporter_spans_dropped_total"),
            7
        );
        assert_eq!(metric(&registry, "loupe_trace_exporter_pending_spans"), 0);
    }
}
