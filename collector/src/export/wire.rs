//! Sinks that send request bodies to a receiver over the network (OTLP, Loki, Pyroscope), and
//! the on-disk spool in front of them.
//!
//! A [`WireSink`] splits its export in two: [`WireSink::encode`] turns a batch into request
//! bodies ([`Payload`]s), [`WireSink::send`] sends one body, with the sink's own bounded retries.
//! [`export_direct`] is the export of a wire sink without a spool: what cannot be delivered is
//! dropped and counted. [`SpooledSink`] adds a [`Spool`]: a body is tried once, and when the
//! receiver cannot take it now (unreachable, a reset, 429/502/503/504, `UNAVAILABLE`…) it is
//! written to disk; a replay task sends the spool, oldest first, with the sink's retries and then
//! 1–30 s between attempts, until it is empty. The export lane thus waits on one attempt at most
//! (one request timeout when a receiver hangs), never on a retry budget, and its bounded queue
//! does not overflow during an outage. While the spool holds anything, new bodies join its end
//! without being tried, so the receiver gets them in order; once it is empty they go straight out
//! again. A body refused for good (another 4xx, an invalid argument) is dropped and counted,
//! spooled or not.
//!
//! Delivery is at least once: a record is removed after its receiver accepted it, so an agent
//! killed in between sends it again after its restart.
//!
//! Metrics, labelled `signal` and `sink`: `loupe_spool_items_written_total`,
//! `loupe_spool_items_replayed_total` (also counted in `loupe_exporter_items_exported_total`),
//! the gauges `loupe_spool_items` and `loupe_spool_bytes`, and
//! `loupe_exporter_items_dropped_total` with the reasons `spool_full` (the oldest, evicted beyond
//! the cap), `spool_error` (could not be written, or read back) and `export_failed` (refused on
//! replay).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::pipeline::{ITEMS_DROPPED_HELP, ITEMS_EXPORTED_HELP, as_gauge};
use super::spool::{Evicted, Spool, SpoolError};
use super::{Batching, BoxFuture, ExportReport, SignalBatch, Sink};
use crate::retry::Backoff;
use crate::telemetry::{Counter, Gauge, Registry};

/// One request body and the items it carries.
#[derive(Debug, Clone)]
pub struct Payload {
    pub items: u64,
    pub body: Bytes,
}

/// What became of one body.
#[derive(Debug)]
pub enum Delivery<E> {
    /// The receiver took it; it refused `rejected` of the items (OTLP partial success), `error`
    /// saying why.
    Accepted { rejected: u64, error: Option<E> },
    /// Refused for good (a status that is not retried): sending it again would not help.
    Refused(E),
    /// Not delivered for now (no connection, a timeout, 429, 503…, after the retries): worth
    /// sending again later.
    Unreachable(E),
}

/// The outcome of [`WireSink::send`]: the delivery and the requests retried on the way.
#[derive(Debug)]
pub struct Sent<E> {
    pub delivery: Delivery<E>,
    pub retries: u64,
}

/// A sink that sends request bodies to a receiver.
pub trait WireSink<B: SignalBatch>: Send + Sync + 'static {
    /// The `sink` metric label (`otlp`, `loki`, `pyroscope`).
    fn name(&self) -> &str;

    /// How an accumulating lane batches for this sink.
    fn batching(&self) -> Batching {
        Batching::default()
    }

    /// The request bodies of `batch`; items that cannot be encoded are reported as failed in the
    /// returned report, with their errors.
    fn encode(&self, batch: Arc<B>) -> BoxFuture<'_, (Vec<Payload>, ExportReport<B::Error>)>;

    /// Sends one body; with `retry`, retries as configured, else makes one attempt.
    fn send(&self, payload: Payload, retry: bool) -> BoxFuture<'_, Sent<B::Error>>;
}

/// Exports `batch` through `sink` without a spool: what is not delivered is counted as failed.
/// Once a body finds the receiver unreachable, the batch's next bodies are not tried (each would
/// wait out the same retries): they fail with it.
pub async fn export_direct<B: SignalBatch, W: WireSink<B> + ?Sized>(
    sink: &W,
    batch: Arc<B>,
) -> ExportReport<B::Error> {
    let (payloads, mut report) = sink.encode(batch).await;
    let mut unreachable = false;
    for payload in payloads {
        if unreachable {
            report.items_failed += payload.items;
            continue;
        }
        let items = payload.items;
        if let Some(e) = send(sink, payload, true, &mut report).await {
            unreachable = true;
            report.items_failed += items;
            report.errors.push(e);
        }
    }
    report
}

/// Sends `payload` and adds what the receiver took or refused for good to `report`; gives back
/// the error when the receiver could not be reached (the caller decides: fail or spool).
async fn send<B: SignalBatch, W: WireSink<B> + ?Sized>(
    sink: &W,
    payload: Payload,
    retry: bool,
    report: &mut ExportReport<B::Error>,
) -> Option<B::Error> {
    let (items, len) = (payload.items, payload.body.len() as u64);
    let sent = sink.send(payload, retry).await;
    report.retries += sent.retries;
    match sent.delivery {
        Delivery::Accepted { rejected, error } => {
            let rejected = rejected.min(items);
            report.items_exported += items - rejected;
            report.items_failed += rejected;
            report.bytes_sent += len;
            report.errors.extend(error);
            None
        }
        Delivery::Refused(e) => {
            report.items_failed += items;
            report.errors.push(e);
            None
        }
        Delivery::Unreachable(e) => Some(e),
    }
}

impl<E> Sent<E> {
    /// The same outcome with its error converted (a wire client's error into its signal's).
    pub fn convert<F: From<E>>(self) -> Sent<F> {
        let delivery = match self.delivery {
            Delivery::Accepted { rejected, error } => Delivery::Accepted {
                rejected,
                error: error.map(F::from),
            },
            Delivery::Refused(e) => Delivery::Refused(e.into()),
            Delivery::Unreachable(e) => Delivery::Unreachable(e.into()),
        };
        Sent {
            delivery,
            retries: self.retries,
        }
    }
}

/// Where and how much a sink may spool.
#[derive(Debug, Clone)]
pub struct SpoolConfig {
    /// The sink's own directory (nothing else may write there).
    pub dir: std::path::PathBuf,
    /// Bytes on disk at most; beyond, the oldest records are dropped and counted.
    pub max_bytes: u64,
}

/// Longest wait between two replay attempts while the receiver stays away.
const MAX_REPLAY_BACKOFF: Duration = Duration::from_secs(30);

/// A wire sink behind an on-disk spool (see the module's documentation).
pub struct SpooledSink<B: SignalBatch, W: WireSink<B>> {
    shared: Arc<Shared<B, W>>,
    replay: Mutex<Option<JoinHandle<()>>>,
}

struct Shared<B: SignalBatch, W: WireSink<B>> {
    sink: W,
    spool: Mutex<Spool>,
    /// Wakes the replay task when a record is added.
    added: Notify,
    metrics: SpoolMetrics,
    _batch: std::marker::PhantomData<fn() -> B>,
}

struct SpoolMetrics {
    written: Counter,
    replayed: Counter,
    exported: Counter,
    dropped_full: Counter,
    dropped_error: Counter,
    dropped_refused: Counter,
    items: Gauge,
    bytes: Gauge,
}

impl SpoolMetrics {
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
            written: r.counter(
                "loupe_spool_items_written_total",
                "Items written to a sink's on-disk spool because its receiver could not take them.",
                &l,
            ),
            replayed: r.counter(
                "loupe_spool_items_replayed_total",
                "Items sent from a sink's spool and accepted by its receiver.",
                &l,
            ),
            exported: r.counter(
                "loupe_exporter_items_exported_total",
                ITEMS_EXPORTED_HELP,
                &l,
            ),
            dropped_full: dropped("spool_full"),
            dropped_error: dropped("spool_error"),
            dropped_refused: dropped("export_failed"),
            items: r.gauge(
                "loupe_spool_items",
                "Items in a sink's on-disk spool, waiting for its receiver.",
                &l,
            ),
            bytes: r.gauge("loupe_spool_bytes", "Bytes of a sink's on-disk spool.", &l),
        }
    }
}

impl<B: SignalBatch, W: WireSink<B>> Shared<B, W> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Spool> {
        self.spool.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn update_gauges(&self, spool: &Spool) {
        self.metrics.items.set(as_gauge(spool.items()));
        self.metrics.bytes.set(as_gauge(spool.bytes()));
    }

    /// Writes `payload` to the spool (on a blocking thread); counts what that evicted or why it
    /// failed. True when it was written.
    async fn spool(self: &Arc<Self>, payload: Payload) -> bool {
        let shared = self.clone();
        let items = payload.items;
        let result = tokio::task::spawn_blocking(move || {
            let mut spool = shared.lock();
            let was_empty = spool.is_empty();
            let result = spool.push(payload.items, &payload.body);
            shared.update_gauges(&spool);
            (result, was_empty)
        })
        .await;
        match result {
            Ok((Ok(Evicted { items: gone, .. }), was_empty)) => {
                self.metrics.written.add(items);
                if gone > 0 {
                    self.metrics.dropped_full.add(gone);
                    tracing::warn!(
                        signal = B::SIGNAL,
                        sink = self.sink.name(),
                        items = gone,
                        "spool full: dropped its oldest items"
                    );
                }
                if was_empty {
                    tracing::warn!(
                        signal = B::SIGNAL,
                        sink = self.sink.name(),
                        "the receiver cannot take data now: spooling to disk until it can"
                    );
                }
                self.added.notify_one();
                true
            }
            Ok((Err(e), _)) => {
                self.metrics.dropped_error.add(items);
                log_spool_error(B::SIGNAL, self.sink.name(), &e);
                false
            }
            Err(e) => {
                self.metrics.dropped_error.add(items);
                tracing::error!(signal = B::SIGNAL, sink = self.sink.name(), error = %e, "spool task failed");
                false
            }
        }
    }

    /// Sends the spool, oldest first, for as long as the sink lives.
    async fn replay(self: Arc<Self>) {
        let backoff = Backoff::new(Duration::from_secs(1), MAX_REPLAY_BACKOFF);
        let mut failures: u32 = 0;
        let mut delivered_since_outage: u64 = 0;
        loop {
            let shared = self.clone();
            // The file is read without holding the spool: exports that spool meanwhile do not wait.
            let front = tokio::task::spawn_blocking(move || {
                let claim = shared.lock().claim_front();
                claim.map(super::spool::Claim::read)
            })
            .await;
            let front = match front {
                Ok(Some(front)) => front,
                Ok(None) => {
                    if delivered_since_outage > 0 {
                        tracing::info!(
                            signal = B::SIGNAL,
                            sink = self.sink.name(),
                            items = delivered_since_outage,
                            "spool replayed: the receiver has everything spooled"
                        );
                        delivered_since_outage = 0;
                    }
                    self.added.notified().await;
                    continue;
                }
                Err(e) => {
                    tracing::error!(signal = B::SIGNAL, sink = self.sink.name(), error = %e, "spool task failed");
                    tokio::time::sleep(MAX_REPLAY_BACKOFF).await;
                    continue;
                }
            };
            let body = match front.body {
                Ok(body) => Bytes::from(body),
                Err(e) => {
                    self.metrics.dropped_error.add(front.items);
                    tracing::warn!(
                        signal = B::SIGNAL,
                        sink = self.sink.name(),
                        items = front.items,
                        error = %e,
                        "dropped a spool record that cannot be read back"
                    );
                    self.remove(front.seq).await;
                    continue;
                }
            };
            let items = front.items;
            let sent = self.sink.send(Payload { items, body }, true).await;
            match sent.delivery {
                Delivery::Accepted { rejected, error } => {
                    let rejected = rejected.min(items);
                    self.metrics.replayed.add(items - rejected);
                    self.metrics.exported.add(items - rejected);
                    self.metrics.dropped_refused.add(rejected);
                    if let Some(e) = error {
                        tracing::warn!(signal = B::SIGNAL, sink = self.sink.name(), error = %e, "spooled items rejected");
                    }
                    delivered_since_outage += items - rejected;
                    failures = 0;
                    self.remove(front.seq).await;
                }
                Delivery::Refused(e) => {
                    self.metrics.dropped_refused.add(items);
                    tracing::warn!(signal = B::SIGNAL, sink = self.sink.name(), items, error = %e, "the receiver refused spooled items: dropped");
                    failures = 0;
                    self.remove(front.seq).await;
                }
                Delivery::Unreachable(e) => {
                    failures = failures.saturating_add(1);
                    tracing::debug!(signal = B::SIGNAL, sink = self.sink.name(), error = %e, "spool replay: receiver still away");
                    let shared = self.clone();
                    let _ = tokio::task::spawn_blocking(move || shared.lock().release()).await;
                    tokio::time::sleep(backoff.delay(failures)).await;
                }
            }
        }
    }

    async fn remove(self: &Arc<Self>, seq: u64) {
        let shared = self.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let mut spool = shared.lock();
            spool.remove(seq);
            shared.update_gauges(&spool);
        })
        .await;
    }
}

/// Logs why a record could not be spooled: once a minute at most (a full disk repeats).
fn log_spool_error(signal: &'static str, sink: &str, e: &SpoolError) {
    static LAST: Mutex<Option<std::time::Instant>> = Mutex::new(None);
    let mut last = LAST.lock().unwrap_or_else(PoisonError::into_inner);
    if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
        *last = Some(std::time::Instant::now());
        tracing::warn!(signal, sink, error = %e, "cannot spool: the items are dropped and counted (loupe_exporter_items_dropped_total{{reason=\"spool_error\"}})");
    }
}

impl<B: SignalBatch, W: WireSink<B>> SpooledSink<B, W> {
    /// Puts `sink` behind the spool in `config.dir` (opened now, keeping what an earlier run
    /// left there, which the replay task starts sending at once). Must be called inside a tokio
    /// runtime. When the spool cannot be opened, gives the sink back with the reason.
    pub fn new(
        sink: W,
        config: &SpoolConfig,
        registry: &Registry,
    ) -> Result<Self, (W, std::io::Error)> {
        let (spool, recovered) = match Spool::open(&config.dir, config.max_bytes) {
            Ok(opened) => opened,
            Err(e) => return Err((sink, e)),
        };
        let metrics = SpoolMetrics::new(registry, B::SIGNAL, sink.name());
        if recovered.records > 0 || recovered.corrupt > 0 {
            tracing::info!(
                signal = B::SIGNAL,
                sink = sink.name(),
                dir = %config.dir.display(),
                records = recovered.records,
                items = recovered.items,
                unreadable = recovered.corrupt,
                "spool left by an earlier run: sending it first"
            );
        }
        let shared = Arc::new(Shared {
            sink,
            spool: Mutex::new(spool),
            added: Notify::new(),
            metrics,
            _batch: std::marker::PhantomData,
        });
        shared.update_gauges(&shared.lock());
        let replay = tokio::spawn(shared.clone().replay());
        Ok(Self {
            shared,
            replay: Mutex::new(Some(replay)),
        })
    }

    /// The sink behind the spool.
    pub fn inner(&self) -> &W {
        &self.shared.sink
    }

    fn backlog(&self) -> bool {
        !self.shared.lock().is_empty()
    }
}

impl<B: SignalBatch, W: WireSink<B>> Sink<B> for SpooledSink<B, W> {
    fn name(&self) -> &str {
        self.shared.sink.name()
    }

    fn batching(&self) -> Batching {
        self.shared.sink.batching()
    }

    fn export(&self, batch: Arc<B>) -> BoxFuture<'_, ExportReport<B::Error>> {
        Box::pin(async move {
            let shared = &self.shared;
            let (payloads, mut report) = shared.sink.encode(batch).await;
            let mut unreachable = false;
            for payload in payloads {
                // Behind a backlog a body waits its turn, so that the receiver gets them in order.
                if unreachable || self.backlog() {
                    let items = payload.items;
                    if shared.spool(payload).await {
                        report.items_spooled += items;
                    }
                    continue;
                }
                // One attempt: the retries are the replay task's, so that an outage never holds
                // the lane (and the batches queued behind it) for a body's whole retry budget.
                let items = payload.items;
                if let Some(e) = send(&shared.sink, payload.clone(), false, &mut report).await {
                    tracing::debug!(signal = B::SIGNAL, sink = shared.sink.name(), error = %e, "receiver unreachable");
                    unreachable = true;
                    if shared.spool(payload).await {
                        report.items_spooled += items;
                    }
                }
            }
            report
        })
    }

    fn shutdown(&self) -> BoxFuture<'_, Result<(), B::Error>> {
        Box::pin(async move {
            // The record in flight stays on disk: it is sent again after the restart.
            let task = self
                .replay
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            if let Some(task) = task {
                task.abort();
                let _ = task.await;
            }
            Ok(())
        })
    }
}

impl<B: SignalBatch, W: WireSink<B>> Drop for SpooledSink<B, W> {
    fn drop(&mut self) {
        if let Some(task) = self
            .replay
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests;
