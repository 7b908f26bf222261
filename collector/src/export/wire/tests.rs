//! The spool in front of a scripted wire sink: outages, refusals, restarts and the stop.

use std::collections::VecDeque;
use std::sync::Mutex;

use super::*;
use crate::export::{Exporter, PassThrough};
use crate::test_util::TempDir;

/// A batch of numbered items; each item is one body (its number, as text).
#[derive(Debug)]
struct Numbers(Vec<u64>);

impl SignalBatch for Numbers {
    const SIGNAL: &'static str = "test";
    type Error = std::io::Error;
    type Batcher = PassThrough<Self>;
    fn item_count(&self) -> u64 {
        self.0.len() as u64
    }
    fn approx_bytes(&self) -> u64 {
        (self.0.len() * 8) as u64
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Answer {
    Take,
    Refuse,
    Away,
}

/// What the receiver answers (the last answer repeats once the script is used up), and what it
/// took, in order.
#[derive(Default)]
struct Receiver {
    script: VecDeque<Answer>,
    steady: Option<Answer>,
    took: Vec<u64>,
    attempts: u64,
    attempts_without_retry: u64,
}

#[derive(Clone)]
struct Scripted(Arc<Mutex<Receiver>>);

impl Scripted {
    fn new(script: &[Answer], then: Answer) -> Self {
        Self(Arc::new(Mutex::new(Receiver {
            script: script.iter().copied().collect(),
            steady: Some(then),
            ..Receiver::default()
        })))
    }

    fn set(&self, answer: Answer) {
        let mut r = self.0.lock().unwrap();
        r.script.clear();
        r.steady = Some(answer);
    }

    fn took(&self) -> Vec<u64> {
        self.0.lock().unwrap().took.clone()
    }
}

impl WireSink<Numbers> for Scripted {
    fn name(&self) -> &str {
        "scripted"
    }

    fn encode(
        &self,
        batch: Arc<Numbers>,
    ) -> BoxFuture<'_, (Vec<Payload>, ExportReport<std::io::Error>)> {
        Box::pin(async move {
            let payloads = batch
                .0
                .iter()
                .map(|n| Payload {
                    items: 1,
                    body: Bytes::from(n.to_string()),
                })
                .collect();
            (payloads, ExportReport::default())
        })
    }

    fn send(&self, payload: Payload, retry: bool) -> BoxFuture<'_, Sent<std::io::Error>> {
        Box::pin(async move {
            let mut r = self.0.lock().unwrap();
            r.attempts += 1;
            if !retry {
                r.attempts_without_retry += 1;
            }
            let answer = match r.script.pop_front() {
                Some(a) => a,
                None => r.steady.unwrap_or(Answer::Take),
            };
            let n: u64 = std::str::from_utf8(&payload.body).unwrap().parse().unwrap();
            let delivery = match answer {
                Answer::Take => {
                    r.took.push(n);
                    Delivery::Accepted {
                        rejected: 0,
                        error: None,
                    }
                }
                Answer::Refuse => Delivery::Refused(std::io::Error::other("400")),
                Answer::Away => Delivery::Unreachable(std::io::Error::other("503")),
            };
            Sent {
                delivery,
                retries: 0,
            }
        })
    }
}

fn spooled(
    receiver: &Scripted,
    config: &SpoolConfig,
    registry: &Registry,
) -> SpooledSink<Numbers, Scripted> {
    match SpooledSink::new(receiver.clone(), config, registry) {
        Ok(s) => s,
        Err((_, e)) => panic!("spool: {e}"),
    }
}

fn config(dir: &TempDir, max_bytes: u64) -> SpoolConfig {
    SpoolConfig {
        dir: dir.path().join("test-scripted"),
        max_bytes,
    }
}

fn value(registry: &Registry, name: &str, extra: &str) -> i64 {
    let series = format!("{name}{{{extra}signal=\"test\",sink=\"scripted\"}} ");
    registry
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(&series).map(|v| v.parse().unwrap()))
        .unwrap_or(0)
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..2000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(start_paused = true)]
async fn an_outage_loses_nothing_and_keeps_the_order() {
    let dir = TempDir::new("wire-outage");
    let registry = Registry::new();
    let receiver = Scripted::new(&[], Answer::Take);
    let sink = spooled(&receiver, &config(&dir, 1 << 20), &registry);
    let pipeline = Exporter::<Numbers>::spawn(vec![Box::new(sink)], &registry, 64);
    pipeline.try_submit(Arc::new(Numbers(vec![1, 2])));
    wait_until("the first batch", || receiver.took().len() == 2).await;
    receiver.set(Answer::Away);
    for batch in [vec![3, 4], vec![5], vec![6, 7, 8]] {
        assert!(pipeline.try_submit(Arc::new(Numbers(batch))));
    }
    wait_until("the outage's items spooled", || {
        value(&registry, "loupe_spool_items", "") == 6
    })
    .await;
    assert_eq!(receiver.took(), [1, 2]);
    assert!(
        std::fs::read_dir(dir.path().join("test-scripted"))
            .unwrap()
            .count()
            == 6
    );
    // Back, but answering 503 twice more: the replay waits and tries again.
    receiver.0.lock().unwrap().script = [Answer::Away, Answer::Away].into();
    receiver.0.lock().unwrap().steady = Some(Answer::Take);
    // Submitted while the spool still holds the outage: queued behind it, not ahead.
    assert!(pipeline.try_submit(Arc::new(Numbers(vec![9]))));
    wait_until("everything delivered", || receiver.took().len() == 9).await;
    assert_eq!(receiver.took(), (1..=9).collect::<Vec<_>>());
    assert_eq!(value(&registry, "loupe_spool_items_written_total", ""), 7);
    assert_eq!(value(&registry, "loupe_spool_items_replayed_total", ""), 7);
    assert_eq!(
        value(&registry, "loupe_exporter_items_exported_total", ""),
        9
    );
    assert_eq!(value(&registry, "loupe_spool_items", ""), 0);
    assert_eq!(value(&registry, "loupe_spool_bytes", ""), 0);
    for reason in ["spool_full", "spool_error", "export_failed", "queue_full"] {
        assert_eq!(
            value(
                &registry,
                "loupe_exporter_items_dropped_total",
                &format!("reason=\"{reason}\",")
            ),
            0,
            "{reason}"
        );
    }
    pipeline.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn beyond_the_cap_the_drops_are_counted_exactly() {
    let dir = TempDir::new("wire-cap");
    let registry = Registry::new();
    let receiver = Scripted::new(&[], Answer::Away);
    // Room for three one-digit records.
    let cap = 3 * (super::super::spool::HEADER_BYTES + 1);
    let sink = spooled(&receiver, &config(&dir, cap), &registry);
    let pipeline = Exporter::<Numbers>::spawn(vec![Box::new(sink)], &registry, 64);
    assert!(pipeline.try_submit(Arc::new(Numbers((1..=9).collect()))));
    wait_until("nine items through the spool", || {
        value(&registry, "loupe_spool_items_written_total", "") == 9
    })
    .await;
    let dropped = value(
        &registry,
        "loupe_exporter_items_dropped_total",
        "reason=\"spool_full\",",
    );
    let kept = value(&registry, "loupe_spool_items", "");
    receiver.set(Answer::Take);
    wait_until("the spool sent", || {
        value(&registry, "loupe_spool_items", "") == 0
    })
    .await;
    let took = receiver.took();
    // The newest survive; what is gone is exactly what the counter says.
    assert_eq!(kept, 3);
    assert_eq!(dropped, 9 - took.len() as i64, "took {took:?}");
    assert_eq!(took, (10 - took.len() as u64..=9).collect::<Vec<_>>());
    pipeline.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn refused_items_are_dropped_and_counted_not_spooled() {
    let dir = TempDir::new("wire-refused");
    let registry = Registry::new();
    let receiver = Scripted::new(&[Answer::Refuse], Answer::Take);
    let sink = spooled(&receiver, &config(&dir, 1 << 20), &registry);
    let pipeline = Exporter::<Numbers>::spawn(vec![Box::new(sink)], &registry, 64);
    assert!(pipeline.try_submit(Arc::new(Numbers(vec![1, 2, 3]))));
    pipeline.shutdown(Duration::from_secs(5)).await.unwrap();
    assert_eq!(receiver.took(), [2, 3]);
    assert_eq!(
        value(
            &registry,
            "loupe_exporter_items_dropped_total",
            "reason=\"export_failed\","
        ),
        1
    );
    assert_eq!(value(&registry, "loupe_spool_items_written_total", ""), 0);
}

#[tokio::test(start_paused = true)]
async fn a_restart_sends_what_the_last_run_spooled_first() {
    let dir = TempDir::new("wire-restart");
    {
        let registry = Registry::new();
        let receiver = Scripted::new(&[], Answer::Away);
        let sink = spooled(&receiver, &config(&dir, 1 << 20), &registry);
        let pipeline = Exporter::<Numbers>::spawn(vec![Box::new(sink)], &registry, 64);
        assert!(pipeline.try_submit(Arc::new(Numbers(vec![1, 2, 3]))));
        wait_until("spooled", || value(&registry, "loupe_spool_items", "") == 3).await;
        // The stop: nothing more is tried with retries, the replay task ends.
        assert!(pipeline.try_submit(Arc::new(Numbers(vec![4]))));
        pipeline.shutdown(Duration::from_secs(5)).await.unwrap();
        assert!(receiver.took().is_empty());
    }
    let registry = Registry::new();
    let receiver = Scripted::new(&[], Answer::Take);
    let sink = spooled(&receiver, &config(&dir, 1 << 20), &registry);
    assert_eq!(value(&registry, "loupe_spool_items", ""), 4);
    let pipeline = Exporter::<Numbers>::spawn(vec![Box::new(sink)], &registry, 64);
    wait_until("the old spool sent", || receiver.took().len() == 4).await;
    assert!(pipeline.try_submit(Arc::new(Numbers(vec![5]))));
    wait_until("the new batch sent", || receiver.took().len() == 5).await;
    assert_eq!(receiver.took(), [1, 2, 3, 4, 5]);
    pipeline.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_live_body_gets_one_attempt_and_the_spool_does_the_retrying() {
    let dir = TempDir::new("wire-stop");
    let registry = Registry::new();
    let receiver = Scripted::new(&[], Answer::Away);
    let sink = spooled(&receiver, &config(&dir, 1 << 20), &registry);
    let pipeline = Exporter::<Numbers>::spawn(vec![Box::new(sink)], &registry, 64);
    // Submitted, then the stop at once: the lane drains its queue after `stopping`.
    assert!(pipeline.try_submit(Arc::new(Numbers(vec![1, 2]))));
    pipeline.shutdown(Duration::from_secs(5)).await.unwrap();
    let r = receiver.0.lock().unwrap();
    assert!(r.took.is_empty());
    // One attempt, without retries, for the first body; the second waits behind it in the spool
    // (the replay task tries the spool meanwhile, with retries, until the stop ends it).
    assert_eq!(r.attempts_without_retry, 1, "{} attempts", r.attempts);
    assert_eq!(value(&registry, "loupe_spool_items_written_total", ""), 2);
}
