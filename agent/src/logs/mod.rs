//! Logs: what processes write to stdout and stderr, turned into log records tied to the request
//! their thread was serving.
//!
//! The socket programs report every write to fd 1 or 2 that is no tracked connection as a LOG
//! event (within a per-process rate the kernel enforces, `--log-writes-per-sec`), in the same ring
//! and order as the socket events; the span builder thread hands them to a [`LogAssembler`] with
//! the trace context its thread serves at that point of the stream (see `net::spans`). The
//! assembler splits writes into lines ([`lines`]), reads a severity from each ([`severity`]),
//! rate-limits lines per process and holds the records for the next flush.
//!
//! Nothing is lost silently (`loupe_logs_lines_total`, `loupe_logs_lines_dropped_total{reason}`,
//! `loupe_logs_lines_cut_total`, `loupe_logs_bytes_missed_total`): a write longer than
//! `--capture-bytes` is seen only up to that many bytes; a line longer than the line limit is cut.
//! Memory is bounded: partial lines (count and bytes), records waiting for a flush, rate windows.

pub mod lines;
pub mod severity;

use std::collections::HashMap;
use std::sync::Arc;

use loupe_collector::logs::{LOG_IOSTREAM, LogBatch, LogRecord, ResourceLogs};
use loupe_collector::telemetry::{Counter, Registry};
use loupe_collector::traces::proto::common::InstrumentationScope;
use loupe_collector::traces::proto::resource::Resource;
use loupe_collector::traces::{AttrValue, Attribute};

use crate::net::Clock;
use lines::{Line, LineSplitter};

/// Limits of the log assembler.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Longest line kept, in bytes; longer ones are cut (counted).
    pub max_line_bytes: usize,
    /// Lines one process may log per second; more are dropped (counted).
    pub max_lines_per_sec: u32,
    /// Records waiting for the next flush at most; more are dropped (counted).
    pub max_pending: usize,
    /// Bytes of the records waiting for the next flush at most (each line's length plus
    /// [`crate::memory::LOG_LINE_OVERHEAD`]); more are dropped (counted as `buffer_full`).
    pub max_pending_bytes: usize,
    /// (process, fd) pairs with a line in progress at most.
    pub max_partial_lines: usize,
}

/// Default line limit: Loki's own default (`max_line_size`) is far larger; 4 KiB keeps memory low
/// and holds typical JSON access logs whole.
pub const DEFAULT_MAX_LINE_BYTES: usize = 4096;
/// Default lines per process per second.
pub const DEFAULT_MAX_LINES_PER_SEC: u32 = 1000;

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            max_line_bytes: DEFAULT_MAX_LINE_BYTES,
            max_lines_per_sec: DEFAULT_MAX_LINES_PER_SEC,
            max_pending: 16 * 1024,
            max_pending_bytes: 16 << 20,
            max_partial_lines: 4096,
        }
    }
}

/// One write to stdout or stderr as the kernel reported it.
#[derive(Debug, Clone, Copy)]
pub struct LogWrite<'a> {
    pub pid: u32,
    pub tid: u32,
    /// 1 (stdout) or 2 (stderr).
    pub fd: i32,
    /// When the write completed (CLOCK_MONOTONIC ns).
    pub monotonic_ns: u64,
    /// The bytes captured (the first `--capture-bytes` of the write).
    pub data: &'a [u8],
    /// Bytes the write moved.
    pub total: u64,
    /// (trace id, span id) of the request the thread was serving.
    pub context: Option<([u8; 16], [u8; 8])>,
}

/// Why log lines were dropped.
#[derive(Debug, Clone, Copy)]
enum DropReason {
    RateLimit,
    BufferFull,
}

struct Metrics {
    lines: Counter,
    dropped: [Counter; 2],
    cut: Counter,
    bytes_missed: Counter,
}

impl Metrics {
    fn new(r: &Registry) -> Self {
        let dropped = |reason: &str| {
            r.counter(
                "loupe_logs_lines_dropped_total",
                "Log lines dropped by the agent, by reason (rate_limit: over --log-lines-per-sec \
                 for the process; buffer_full: more lines waited for export than allowed).",
                &[("reason", reason)],
            )
        };
        Self {
            lines: r.counter(
                "loupe_logs_lines_total",
                "Log lines read from processes' stdout and stderr and handed to the log sinks.",
                &[],
            ),
            dropped: [dropped("rate_limit"), dropped("buffer_full")],
            cut: r.counter(
                "loupe_logs_lines_cut_total",
                "Log lines cut short: longer than the line limit, or than the bytes captured of \
                 their write.",
                &[],
            ),
            bytes_missed: r.counter(
                "loupe_logs_bytes_missed_total",
                "Bytes of stdout/stderr writes beyond --capture-bytes, never seen by the agent.",
                &[],
            ),
        }
    }
}

/// Turns log writes into records; see the module docs.
pub struct LogAssembler {
    cfg: LogConfig,
    clock: Clock,
    splitter: LineSplitter,
    /// Per process: (start of the current one-second window, lines in it).
    rates: HashMap<u32, (u64, u32)>,
    /// Records by pid, with the resource they belong to, in arrival order per pid.
    pending: HashMap<u32, (Arc<Resource>, Vec<LogRecord>)>,
    pending_count: usize,
    pending_bytes: usize,
    scope: Arc<InstrumentationScope>,
    m: Metrics,
    lines: Vec<Line>,
}

impl LogAssembler {
    pub fn new(
        cfg: LogConfig,
        registry: &Registry,
        clock: Clock,
        scope: Arc<InstrumentationScope>,
    ) -> Self {
        Self {
            splitter: LineSplitter::new(cfg.max_line_bytes, cfg.max_partial_lines),
            cfg,
            clock,
            rates: HashMap::new(),
            pending: HashMap::new(),
            pending_count: 0,
            pending_bytes: 0,
            scope,
            m: Metrics::new(registry),
            lines: Vec::new(),
        }
    }

    /// Consumes one write; `resource` names the process (called only when a line comes out).
    pub fn on_write(&mut self, w: LogWrite<'_>, resource: impl FnOnce() -> Arc<Resource>) {
        let captured = w.data.len() as u64;
        if w.total > captured {
            self.m.bytes_missed.add(w.total - captured);
        }
        let mut lines = std::mem::take(&mut self.lines);
        self.splitter.push(&w, w.total > captured, &mut lines);
        self.add_lines(w.pid, &mut lines, resource);
        self.lines = lines;
    }

    /// Lines in progress that waited `max_age_ns` (event time) without their end go out as they
    /// are (a prompt without a newline, a process that died mid-line).
    pub fn flush_partial(
        &mut self,
        now_monotonic_ns: u64,
        max_age_ns: u64,
        resources: &mut dyn FnMut(u32) -> Arc<Resource>,
    ) {
        let mut lines = std::mem::take(&mut self.lines);
        self.splitter
            .flush_older(now_monotonic_ns.saturating_sub(max_age_ns), &mut lines);
        // Lines of several processes may come out: group by pid (a stable sort keeps each
        // process's lines in order), taking one group at a time off the end.
        lines.sort_by_key(|l| l.pid);
        let mut group = Vec::new();
        while let Some(pid) = lines.last().map(|l| l.pid) {
            let start = lines.partition_point(|l| l.pid < pid);
            group.extend(lines.drain(start..));
            self.add_lines(pid, &mut group, || resources(pid));
        }
        self.lines = lines;
    }

    fn add_lines(
        &mut self,
        pid: u32,
        lines: &mut Vec<Line>,
        resource: impl FnOnce() -> Arc<Resource>,
    ) {
        if lines.is_empty() {
            return;
        }
        let mut resource = Some(resource);
        for line in lines.drain(..) {
            if line.cut {
                self.m.cut.inc();
            }
            if !self.within_rate(pid, line.monotonic_ns) {
                self.m.dropped[DropReason::RateLimit as usize].inc();
                continue;
            }
            let bytes = line.bytes.len() + crate::memory::LOG_LINE_OVERHEAD as usize;
            if self.pending_count >= self.cfg.max_pending
                || self.pending_bytes + bytes > self.cfg.max_pending_bytes
            {
                self.m.dropped[DropReason::BufferFull as usize].inc();
                continue;
            }
            let record = self.record(line);
            let entry = match self.pending.get_mut(&pid) {
                Some(e) => e,
                None => {
                    let Some(make) = resource.take() else {
                        continue;
                    };
                    self.pending.entry(pid).or_insert((make(), Vec::new()))
                }
            };
            entry.1.push(record);
            self.pending_count += 1;
            self.pending_bytes += bytes;
            self.m.lines.inc();
        }
    }

    fn within_rate(&mut self, pid: u32, now: u64) -> bool {
        if self.rates.len() > 4 * self.cfg.max_partial_lines {
            self.rates
                .retain(|_, (start, _)| now.saturating_sub(*start) < 1_000_000_000);
        }
        let (start, n) = self.rates.entry(pid).or_insert((now, 0));
        if now.saturating_sub(*start) >= 1_000_000_000 {
            *start = now;
            *n = 0;
        }
        if *n >= self.cfg.max_lines_per_sec {
            return false;
        }
        *n += 1;
        true
    }

    fn record(&self, line: Line) -> LogRecord {
        let stream = if line.fd == 2 { "stderr" } else { "stdout" };
        let severity = severity::detect(&line.bytes);
        // Valid UTF-8 (nearly every line) becomes the body without a copy.
        let body = String::from_utf8(line.bytes)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
        LogRecord {
            time_unix_nano: self.clock.to_unix_nanos(line.monotonic_ns),
            observed_time_unix_nano: unix_now_nanos(),
            severity,
            body,
            trace_id: line.context.map(|c| c.0),
            span_id: line.context.map(|c| c.1),
            attributes: vec![
                Attribute {
                    key: LOG_IOSTREAM,
                    value: AttrValue::Str(stream.into()),
                },
                Attribute {
                    key: "thread.id".into(),
                    value: AttrValue::Int(i64::from(line.tid)),
                },
            ],
        }
    }

    /// Records waiting for a flush.
    pub fn pending_len(&self) -> usize {
        self.pending_count
    }

    /// Every waiting record, grouped by process; `None` when none.
    pub fn take_batch(&mut self) -> Option<LogBatch> {
        if self.pending_count == 0 {
            return None;
        }
        self.pending_count = 0;
        self.pending_bytes = 0;
        let resources = self
            .pending
            .drain()
            .filter(|(_, (_, records))| !records.is_empty())
            .map(|(_, (resource, records))| ResourceLogs {
                resource,
                scope: self.scope.clone(),
                records,
            })
            .collect();
        Some(LogBatch { resources })
    }
}

fn unix_now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
