//! The pipeline with each signal's batcher: profiles pass through, spans and logs accumulate.

use std::sync::Mutex;

use tokio::sync::Semaphore;

use super::*;
use crate::export::{Batching, BoxFuture, ExportReport};
use crate::telemetry::Registry;

/// The value of one rendered series, e.g. `loupe_exporter_pending_items{signal="spans",sink="rec"}`.
fn series(registry: &Registry, series: &str) -> i64 {
    let prefix = format!("{series} ");
    registry
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(&prefix).map(|v| v.parse().unwrap()))
        .unwrap_or_else(|| panic!("no {prefix}"))
}

/// `name{signal="…",sink="…"}`.
fn metric(registry: &Registry, name: &str, signal: &str, sink: &str) -> i64 {
    series(
        registry,
        &format!("{name}{{signal=\"{signal}\",sink=\"{sink}\"}}"),
    )
}

/// `loupe_exporter_items_dropped_total{reason="…",signal="…",sink="…"}`.
fn dropped(registry: &Registry, reason: &str, signal: &str, sink: &str) -> i64 {
    series(
        registry,
        &format!(
            "loupe_exporter_items_dropped_total{{reason=\"{reason}\",signal=\"{signal}\",sink=\"{sink}\"}}"
        ),
    )
}

mod profiles {
    use std::time::Instant;

    use tokio::sync::mpsc::UnboundedSender;

    use super::*;
    use crate::profile::{ProfileBatch, ServiceProfile};
    use crate::sink::{ProfileExporter, SinkError};

    /// A sink that records batch starts and waits for a permit before finishing each export.
    struct GatedSink {
        name: &'static str,
        gate: Arc<Semaphore>,
        started: UnboundedSender<i64>,
        done: Arc<Mutex<Vec<i64>>>,
        shut_down: Arc<Mutex<bool>>,
    }

    impl Sink<ProfileBatch> for GatedSink {
        fn name(&self) -> &str {
            self.name
        }

        fn export(&self, batch: Arc<ProfileBatch>) -> BoxFuture<'_, ExportReport<SinkError>> {
            Box::pin(async move {
                let _ = self.started.send(batch.start_unix_nanos);
                self.gate.acquire().await.unwrap().forget();
                self.done.lock().unwrap().push(batch.start_unix_nanos);
                ExportReport {
                    items_exported: batch.profiles.len() as u64,
                    bytes_sent: 10,
                    ..ExportReport::default()
                }
            })
        }

        fn shutdown(&self) -> BoxFuture<'_, Result<(), SinkError>> {
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

    fn gated(name: &'static str, permits: usize) -> (Box<dyn Sink<ProfileBatch>>, Probe) {
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

    fn m(registry: &Registry, name: &str, sink: &str) -> i64 {
        metric(registry, name, "profiles", sink)
    }

    #[tokio::test]
    async fn blocked_sink_never_blocks_submit_nor_other_sinks() {
        let registry = Registry::new();
        let (slow, mut slow_probe) = gated("slow", 0);
        let (fast, fast_probe) = gated("fast", usize::MAX >> 4);
        let handle = ProfileExporter::spawn(vec![slow, fast], &registry, 1);
        assert_eq!(handle.submitter().sink_count(), 2);

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
            m(&registry, "loupe_exporter_batches_dropped_total", "slow"),
            49
        );
        assert_eq!(dropped(&registry, "queue_full", "profiles", "slow"), 98);
        assert_eq!(
            m(&registry, "loupe_exporter_batches_dropped_total", "fast"),
            0
        );
        assert_eq!(m(&registry, "loupe_exporter_pending_items", "slow"), 4);

        // Release the slow sink: shutdown flushes what was queued.
        slow_probe.gate.add_permits(100);
        handle.shutdown(Duration::from_secs(5)).await.unwrap();
        assert_eq!(*slow_probe.done.lock().unwrap(), [0, 1]);
        assert!(*slow_probe.shut_down.lock().unwrap() && *fast_probe.shut_down.lock().unwrap());
        assert_eq!(
            m(&registry, "loupe_exporter_exports_succeeded_total", "slow"),
            2
        );
        assert_eq!(
            m(&registry, "loupe_exporter_items_exported_total", "slow"),
            4
        );
        assert_eq!(m(&registry, "loupe_exporter_sent_bytes_total", "slow"), 20);
        assert_eq!(m(&registry, "loupe_exporter_pending_items", "slow"), 0);
        assert_eq!(
            m(&registry, "loupe_exporter_batches_submitted_total", "fast"),
            51
        );
        assert_eq!(dropped(&registry, "shutdown", "profiles", "slow"), 0);
    }

    /// A batch of `services` service profiles, each with one sample of `frames` frames.
    fn sized_batch(id: i64, services: usize, frames: usize) -> Arc<ProfileBatch> {
        use crate::profile::{Frame, StackSample};
        let sample = StackSample {
            frames: vec![Frame::default(); frames],
            ..StackSample::default()
        };
        let profile = ServiceProfile {
            service_name: "svc".into(),
            samples: vec![sample],
            ..ServiceProfile::default()
        };
        Arc::new(ProfileBatch {
            start_unix_nanos: id,
            profiles: vec![profile; services],
            ..ProfileBatch::default()
        })
    }

    /// A queue bounded in bytes drops the batch that would cross the bound (counted as
    /// queue_full) even with batch slots free, takes a batch of any size into an empty queue,
    /// and reports what it holds in `loupe_exporter_queued_bytes`.
    #[tokio::test]
    async fn byte_bound_drops_what_does_not_fit_and_counts_it() {
        let registry = Registry::new();
        let (sink, mut probe) = gated("slow", 0);
        let small = sized_batch(1, 1, 10);
        let bytes = small.approx_bytes();
        assert!(bytes > 10 * size_of::<crate::profile::Frame>() as u64);
        let bound = QueueBound {
            batches: 100,
            bytes: 2 * bytes + bytes / 2,
        };
        let handle = ProfileExporter::spawn_bounded(vec![sink], &registry, bound);
        // The sink takes batch 0 and stays inside export: the queue is empty again.
        assert!(handle.try_submit(sized_batch(0, 1, 10)));
        assert_eq!(probe.started.recv().await, Some(0));
        assert!(handle.try_submit(small.clone()));
        assert!(handle.try_submit(sized_batch(2, 1, 10)));
        assert_eq!(
            m(&registry, "loupe_exporter_queued_bytes", "slow"),
            2 * bytes as i64
        );
        // A third would cross the bound: dropped, its one profile counted.
        assert!(!handle.try_submit(sized_batch(3, 1, 10)));
        assert_eq!(dropped(&registry, "queue_full", "profiles", "slow"), 1);

        // Once the queue drains, a batch far above the bound still goes in, alone.
        probe.gate.add_permits(3);
        while probe.done.lock().unwrap().len() < 3 {
            tokio::task::yield_now().await;
        }
        assert_eq!(m(&registry, "loupe_exporter_queued_bytes", "slow"), 0);
        let large = sized_batch(4, 20, 100);
        assert!(large.approx_bytes() > bound.bytes);
        assert!(handle.try_submit(large));
        assert!(!handle.try_submit(sized_batch(5, 1, 10)));
        assert_eq!(dropped(&registry, "queue_full", "profiles", "slow"), 2);

        probe.gate.add_permits(10);
        handle.shutdown(Duration::from_secs(5)).await.unwrap();
        assert_eq!(*probe.done.lock().unwrap(), [0, 1, 2, 4]);
        assert_eq!(m(&registry, "loupe_exporter_queued_bytes", "slow"), 0);
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
        assert_eq!(m(&registry, "loupe_exporter_batches_dropped_total", "s"), 0);
        // After shutdown, submissions are dropped and counted.
        assert!(!submitter.try_submit(batch(9)));
        assert_eq!(m(&registry, "loupe_exporter_batches_dropped_total", "s"), 1);
        assert_eq!(dropped(&registry, "shutdown", "profiles", "s"), 2);
        assert_eq!(dropped(&registry, "queue_full", "profiles", "s"), 0);
        assert_eq!(m(&registry, "loupe_exporter_pending_items", "s"), 0);
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
            signal,
            sinks,
            abandoned_batches,
            abandoned_items,
        } = &err;
        assert!(
            err.to_string().contains(
                "profiles exporter shutdown incomplete (3 batch(es), 6 item(s) not exported)"
            ),
            "{err}"
        );
        assert_eq!(
            (
                *signal,
                sinks.as_str(),
                *abandoned_batches,
                *abandoned_items
            ),
            ("profiles", "stuck (timed out)", 3, 6)
        );
        assert_eq!(
            m(&registry, "loupe_exporter_batches_dropped_total", "stuck"),
            3
        );
        assert_eq!(dropped(&registry, "shutdown", "profiles", "stuck"), 6);
        assert_eq!(m(&registry, "loupe_exporter_pending_items", "stuck"), 0);
        assert!(!*probe.shut_down.lock().unwrap());
    }
}

mod spans {
    use super::*;
    use crate::traces::proto::common::{AnyValue, InstrumentationScope, KeyValue, any_value};
    use crate::traces::proto::resource::Resource;
    use crate::traces::{
        ResourceBatch, SpanData, SpanKind, TraceBatch, TraceExporter, TraceSinkError,
    };

    /// Records every export; waits for a permit before finishing each.
    struct Recorder {
        batching: Batching,
        gate: Arc<Semaphore>,
        got: Got,
    }

    impl Sink<TraceBatch> for Recorder {
        fn name(&self) -> &str {
            "rec"
        }

        fn batching(&self) -> Batching {
            self.batching
        }

        fn export(&self, batch: Arc<TraceBatch>) -> BoxFuture<'_, ExportReport<TraceSinkError>> {
            Box::pin(async move {
                self.gate.acquire().await.unwrap().forget();
                let spans = batch.span_count();
                let owned = Arc::try_unwrap(batch).expect("the lane hands over its only reference");
                self.got.lock().unwrap().push(owned);
                ExportReport {
                    items_exported: spans,
                    bytes_sent: 1,
                    ..ExportReport::default()
                }
            })
        }
    }

    type Got = Arc<Mutex<Vec<TraceBatch>>>;

    fn recorder(
        batching: Batching,
        permits: usize,
    ) -> (Box<dyn Sink<TraceBatch>>, Got, Arc<Semaphore>) {
        let got = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(Semaphore::new(permits));
        let sink = Recorder {
            batching,
            gate: gate.clone(),
            got: got.clone(),
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

    /// A batch with `n` spans for each pid, span names `"{tag}{pid}-{i}"`.
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
                            name: format!("{tag}{pid}-{i}").into(),
                            kind: SpanKind::Server,
                            start_time_unix_nano: 1,
                            end_time_unix_nano: 2,
                            attributes: Default::default(),
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
            .map(|s| s.name.to_string())
            .collect()
    }

    fn m(registry: &Registry, name: &str) -> i64 {
        metric(registry, name, "spans", "rec")
    }

    #[tokio::test(start_paused = true)]
    async fn merges_submissions_until_the_delay_and_groups_by_resource() {
        let registry = Registry::new();
        let batching = Batching {
            max_items: 100,
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
        assert_eq!(m(&registry, "loupe_exporter_items_exported_total"), 5);
        assert_eq!(m(&registry, "loupe_exporter_pending_items"), 0);
        handle.shutdown(Duration::from_secs(5)).await.unwrap();
    }

    #[tokio::test]
    async fn splits_at_max_items_and_flushes_the_rest_at_shutdown() {
        let registry = Registry::new();
        let batching = Batching {
            max_items: 2,
            max_delay: Duration::from_secs(3600),
        };
        let (sink, got, _gate) = recorder(batching, 1000);
        let handle = TraceExporter::spawn(vec![sink], &registry, 8);
        assert!(handle.submitter().try_submit(batch(&[1], 5, "")));
        handle.shutdown(Duration::from_secs(5)).await.unwrap();
        let got = got.lock().unwrap();
        let sizes: Vec<u64> = got.iter().map(TraceBatch::span_count).collect();
        assert_eq!(sizes, [2, 2, 1]);
        assert_eq!(m(&registry, "loupe_exporter_items_exported_total"), 5);
        assert_eq!(m(&registry, "loupe_exporter_exports_succeeded_total"), 3);
    }

    /// A batch still referenced elsewhere (another sink's queue) is copied, not taken apart.
    #[tokio::test]
    async fn a_shared_batch_is_copied_and_left_whole() {
        let registry = Registry::new();
        let batching = Batching {
            max_items: 3,
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

    /// A batch taken whole into an empty accumulator comes out as merging it item by item
    /// would make it: groups of one resource and scope merged, items in order.
    #[tokio::test]
    async fn a_batch_taken_whole_still_merges_its_groups() {
        let registry = Registry::new();
        let batching = Batching {
            max_items: 100,
            max_delay: Duration::ZERO,
        };
        let (sink, got, _gate) = recorder(batching, 1000);
        let handle = TraceExporter::spawn(vec![sink], &registry, 8);
        assert!(handle.try_submit(batch(&[1, 2], 2, "a")));
        assert!(handle.try_submit(batch(&[3, 3], 1, "b")));
        handle.shutdown(Duration::from_secs(5)).await.unwrap();
        let got = got.lock().unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].resources.len(), 2);
        assert_eq!(names(&got[0]), ["a1-0", "a1-1", "a2-0", "a2-1"]);
        assert_eq!(got[1].resources.len(), 1, "same resource and scope merged");
        assert_eq!(names(&got[1]), ["b3-0", "b3-0"]);
    }

    #[tokio::test]
    async fn empty_batches_are_ignored() {
        let registry = Registry::new();
        let (sink, got, _gate) = recorder(Batching::default(), 1000);
        let handle = TraceExporter::spawn(vec![sink], &registry, 1);
        for _ in 0..3 {
            assert!(handle.try_submit(batch(&[1], 0, "")));
        }
        handle.shutdown(Duration::from_secs(5)).await.unwrap();
        assert!(got.lock().unwrap().is_empty());
        assert_eq!(m(&registry, "loupe_exporter_batches_submitted_total"), 0);
        assert_eq!(m(&registry, "loupe_exporter_batches_dropped_total"), 0);
    }

    #[tokio::test]
    async fn full_queue_drops_and_counts_without_waiting() {
        let registry = Registry::new();
        let batching = Batching {
            max_items: 1000,
            max_delay: Duration::ZERO,
        };
        let (sink, got, gate) = recorder(batching, 0);
        let handle = TraceExporter::spawn(vec![sink], &registry, 1);
        let sub = handle.submitter();
        assert!(sub.try_submit(batch(&[1], 3, "")));
        // Let the lane take the first batch and block inside export.
        while m(&registry, "loupe_exporter_batches_submitted_total") < 1 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        let t0 = std::time::Instant::now();
        let accepted = (0..10)
            .filter(|_| sub.try_submit(batch(&[1], 3, "")))
            .count();
        assert!(t0.elapsed() < Duration::from_secs(1));
        assert_eq!(accepted, 1, "one batch fits in the queue");
        assert_eq!(m(&registry, "loupe_exporter_batches_dropped_total"), 9);
        assert_eq!(dropped(&registry, "queue_full", "spans", "rec"), 27);
        assert_eq!(m(&registry, "loupe_exporter_pending_items"), 6);
        gate.add_permits(10);
        handle.shutdown(Duration::from_secs(5)).await.unwrap();
        assert_eq!(got.lock().unwrap().len(), 2);
        assert_eq!(m(&registry, "loupe_exporter_pending_items"), 0);
        // Submissions after shutdown are dropped and counted.
        assert!(!sub.try_submit(batch(&[1], 1, "")));
        assert_eq!(dropped(&registry, "queue_full", "spans", "rec"), 27);
        assert_eq!(dropped(&registry, "shutdown", "spans", "rec"), 1);
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
        let msg = err.to_string();
        assert!(
            msg.starts_with("spans exporter")
                && msg.contains("7 item(s)")
                && msg.contains("rec (timed out)"),
            "{msg}"
        );
        assert_eq!(dropped(&registry, "shutdown", "spans", "rec"), 7);
        assert_eq!(m(&registry, "loupe_exporter_pending_items"), 0);
    }
}

/// Logs are the third instance: accumulated and merged like spans, labelled `logs`.
mod logs {
    use super::*;
    use crate::logs::{LogBatch, LogExporter, LogRecord, LogSinkError, ResourceLogs, Severity};
    use crate::traces::proto::common::{AnyValue, InstrumentationScope, KeyValue, any_value};
    use crate::traces::proto::resource::Resource;

    struct Recorder(Arc<Mutex<Vec<LogBatch>>>);

    impl Sink<LogBatch> for Recorder {
        fn name(&self) -> &str {
            "rec"
        }

        fn batching(&self) -> Batching {
            Batching {
                max_items: 4,
                max_delay: Duration::from_secs(3600),
            }
        }

        fn export(&self, batch: Arc<LogBatch>) -> BoxFuture<'_, ExportReport<LogSinkError>> {
            Box::pin(async move {
                let n = batch.record_count();
                self.0.lock().unwrap().push((*batch).clone());
                ExportReport {
                    items_exported: n,
                    bytes_sent: 3,
                    ..ExportReport::default()
                }
            })
        }
    }

    fn batch(service: &str, bodies: &[&str]) -> Arc<LogBatch> {
        Arc::new(LogBatch {
            resources: vec![ResourceLogs {
                resource: Arc::new(Resource {
                    attributes: vec![KeyValue {
                        key: "service.name".into(),
                        value: Some(AnyValue {
                            value: Some(any_value::Value::StringValue(service.into())),
                        }),
                        ..KeyValue::default()
                    }],
                    ..Resource::default()
                }),
                scope: Arc::new(InstrumentationScope::default()),
                records: bodies
                    .iter()
                    .map(|b| LogRecord {
                        time_unix_nano: 1,
                        observed_time_unix_nano: 2,
                        severity: Severity::Info,
                        body: (*b).to_owned(),
                        trace_id: None,
                        span_id: None,
                        attributes: Vec::new(),
                    })
                    .collect(),
            }],
        })
    }

    fn bodies(b: &LogBatch) -> Vec<(String, Vec<&str>)> {
        b.resources
            .iter()
            .map(|r| {
                let service = match &r.resource.attributes[0].value {
                    Some(AnyValue {
                        value: Some(any_value::Value::StringValue(s)),
                    }) => s.clone(),
                    other => panic!("{other:?}"),
                };
                (service, r.records.iter().map(|r| r.body.as_str()).collect())
            })
            .collect()
    }

    #[tokio::test]
    async fn records_are_merged_by_resource_split_by_count_and_counted_as_logs() {
        let registry = Registry::new();
        let got = Arc::new(Mutex::new(Vec::new()));
        let handle = LogExporter::spawn(vec![Box::new(Recorder(got.clone()))], &registry, 8);
        let sub = handle.submitter();
        assert_eq!(sub.sink_count(), 1);
        assert!(sub.try_submit(batch("a", &["a1", "a2"])));
        let shared = batch("b", &["b1"]);
        assert!(sub.try_submit(shared.clone()));
        assert!(sub.try_submit(batch("a", &["a3", "a4", "a5"])));
        handle.shutdown(Duration::from_secs(5)).await.unwrap();
        let got = got.lock().unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(
            bodies(&got[0]),
            [
                ("a".to_owned(), vec!["a1", "a2", "a3"]),
                ("b".to_owned(), vec!["b1"]),
            ]
        );
        assert_eq!(bodies(&got[1]), [("a".to_owned(), vec!["a4", "a5"])]);
        assert_eq!(shared.record_count(), 1, "a shared batch is copied");
        assert_eq!(
            metric(
                &registry,
                "loupe_exporter_items_exported_total",
                "logs",
                "rec"
            ),
            6
        );
        assert_eq!(
            metric(
                &registry,
                "loupe_exporter_batches_submitted_total",
                "logs",
                "rec"
            ),
            3
        );
        assert_eq!(
            metric(
                &registry,
                "loupe_exporter_exports_succeeded_total",
                "logs",
                "rec"
            ),
            2
        );
        assert_eq!(
            metric(&registry, "loupe_exporter_sent_bytes_total", "logs", "rec"),
            6
        );
        assert_eq!(
            metric(&registry, "loupe_exporter_pending_items", "logs", "rec"),
            0
        );
    }
}
