//! The span builder's thread, `loupe-spans`: events in, spans and log records out on a timer.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use loupe_collector::telemetry::Registry;
use loupe_collector::traces::TraceSubmitter;

use super::{
    Clock, ProcResolver, ServingChange, SocketEvents, SpanBuilder, SpanBuilderConfig, SpanIndex,
};
use crate::logs::LogAssembler;

/// How often the builder thread flushes finished spans to the exporter.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// Finished spans that trigger a flush before [`FLUSH_INTERVAL`].
pub const FLUSH_SPANS: usize = 1024;
/// Most spans per submitted batch.
pub const MAX_BATCH_SPANS: usize = 2048;

/// Where log batches go (the log pipeline's `try_submit`: never waits).
pub type LogOut = Box<dyn FnMut(loupe_collector::logs::LogBatch) + Send>;

/// Where changes of what threads serve go.
pub type ServingOut = Box<dyn FnMut(&[ServingChange]) + Send>;

/// What the span builder thread does besides spans.
#[derive(Default)]
pub struct Correlation {
    /// Publish which span each server request became, for the profiler.
    pub index: Option<SpanIndex>,
    /// Turn LOG events into log records and hand them over here.
    pub logs: Option<(crate::logs::LogConfig, LogOut)>,
    /// Publish what each thread serves (trace id, span id) as it changes.
    pub serving: Option<ServingOut>,
}

/// Log records that trigger a flush before [`FLUSH_INTERVAL`].
const FLUSH_LOGS: usize = 1024;
/// How long a line waits for its end before it goes out as it is.
const PARTIAL_LINE_AGE_NS: u64 = 1_000_000_000;

/// Runs a [`SpanBuilder`] on the thread `loupe-spans` until `rx` closes: consumes events, and
/// every [`FLUSH_INTERVAL`] (or [`FLUSH_SPANS`] finished spans) hands finished spans to
/// `exporter` with `try_submit` (never waits; drops are counted by the trace pipeline), and log
/// records likewise. When the channel closes, flushes what is finished and returns.
pub fn spawn_span_builder(
    rx: Receiver<SocketEvents>,
    exporter: TraceSubmitter,
    registry: &Registry,
    host_name: String,
    config: SpanBuilderConfig,
    correlation: Correlation,
) -> std::io::Result<JoinHandle<()>> {
    let clock = Clock::new();
    let mut builder = SpanBuilder::new(config, registry, host_name, clock, Box::new(ProcResolver));
    if let Some(index) = correlation.index {
        builder = builder.with_span_index(index);
    }
    if let Some(out) = correlation.serving {
        builder = builder.with_serving_out(out);
    }
    let mut log_out = None;
    if let Some((log_config, out)) = correlation.logs {
        let scope = builder.scope.clone();
        builder = builder.with_logs(LogAssembler::new(log_config, registry, clock, scope));
        log_out = Some(out);
    }
    std::thread::Builder::new()
        .name("loupe-spans".into())
        .spawn(move || run(builder, &rx, &exporter, log_out))
}

fn run(
    mut builder: SpanBuilder,
    rx: &Receiver<SocketEvents>,
    exporter: &TraceSubmitter,
    mut log_out: Option<LogOut>,
) {
    let flush = |b: &mut SpanBuilder| {
        while let Some((batch, bytes)) = b.take_sized_batch(MAX_BATCH_SPANS) {
            if !exporter.try_submit_sized(Arc::new(batch), bytes) {
                tracing::debug!("a trace sink's queue was full: spans dropped");
            }
        }
    };
    let flush_logs = |b: &mut SpanBuilder, out: &mut Option<LogOut>, partial_age: u64| {
        if let Some(out) = out
            && let Some(batch) = b.take_logs(monotonic_now_ns(), partial_age)
        {
            out(batch);
        }
    };
    let mut next = Instant::now() + FLUSH_INTERVAL;
    loop {
        match rx.recv_timeout(next.saturating_duration_since(Instant::now())) {
            Ok(events) => {
                builder.handle_all(&events);
                if builder.finished_len() >= FLUSH_SPANS {
                    flush(&mut builder);
                }
                if builder.logs_pending() >= FLUSH_LOGS {
                    flush_logs(&mut builder, &mut log_out, PARTIAL_LINE_AGE_NS);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                builder.settle_lingering(u64::MAX);
                flush(&mut builder);
                flush_logs(&mut builder, &mut log_out, 0);
                builder.shutdown();
                return;
            }
        }
        if Instant::now() >= next {
            builder.tick(monotonic_now_ns());
            flush(&mut builder);
            flush_logs(&mut builder, &mut log_out, PARTIAL_LINE_AGE_NS);
            next = Instant::now() + FLUSH_INTERVAL;
        }
    }
}

/// CLOCK_MONOTONIC in nanoseconds, the clock of the kernel's timestamps.
fn monotonic_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the kernel to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}
