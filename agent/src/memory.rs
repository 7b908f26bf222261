//! One memory bound for the whole agent: `--memory-limit` split into shares for the stages that
//! hold data while it waits for the next one.
//!
//! The limit covers what the agent's memory cgroup is charged: resident memory plus the eBPF
//! maps. Taken off first are the kernel maps (fixed sizes, measured once loaded) and a baseline
//! for the program itself (code, runtimes, thread stacks, allocator slack, and the fixed-size
//! tables: processes, resolved addresses, the kernel symbol table, Kubernetes pods, the pool of
//! span attribute vectors). The rest is shared among the stages below; each turns its share into
//! the cap it enforces, and drops by its own policy when full, counted in its own metric (the
//! README's table lists them).
//!
//! | stage | share | cap it sets | when full |
//! |---|---|---|---|
//! | `socket_events` | 10% | bytes of event batches queued between the ring-buffer reader and the span builder | the reader leaves records in the ring buffer, which drops the newest when full |
//! | `connections` | 20% | parser buffers and waiting requests of all connections (3/4); the trace-context maps: threads serving requests, requests in flight, same-host links waiting for their other end (1/4) | the least recently used connection is evicted; a full context map is cleared |
//! | `log_lines` | 10% | log lines waiting for export (3/4), lines in progress (1/4) | the newest line is dropped; the oldest lines in progress go out as they are |
//! | `export_queues` | 30% | bytes and batches queued per export lane (spans, logs, profiles) | the newest batch is dropped |
//! | `symbols` | 20% | symbol tables kept parsed across drains | released at the drain's end |
//! | (headroom) | 10% | — | — |
//!
//! A share never goes below its stage's floor (what it needs to work at all); when the floors do
//! not fit, the plan says so and the agent warns that the limit cannot be held.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use loupe_collector::export::QueueBound;
use loupe_collector::profile::ProfileKind;
use loupe_collector::telemetry::Registry;

/// The program's own memory besides its stages: code and data, the async runtime, thread
/// stacks, allocator slack, and the tables with fixed caps (processes, resolved addresses, the
/// kernel's symbols, pods, the pool of span attribute vectors, under 2 MiB), measured at about
/// 30 MiB idle with every feature on.
pub const BASELINE_BYTES: u64 = 40 << 20;

/// What one thread serving a request costs the trace-context maps at worst: its `serving` entry
/// and four requests in flight (`in_flight` and `span_of`), each in a hash table that may be
/// little more than half full (64 + 4 × (48 + 24) bytes of entries, times 2.3).
const CONTEXT_THREAD_BYTES: u64 = 830;
/// What one same-host link waiting for its other end costs at worst: its queue entry and key,
/// and the two TCP-option maps' entries.
const CONTEXT_LINK_BYTES: u64 = 360;

/// One log line waiting for export, besides its text: the record's fields and attributes.
pub const LOG_LINE_OVERHEAD: u64 = 320;
/// A large batch of each signal, in bytes: spans (the span builder's 2,048 of about 1 KiB), logs
/// (a second's flush of a busy node's lines), profiles (a drain's service profiles). A batch
/// queued for several sinks is shared, not copied, so a queue slot of each signal costs this.
const BATCH_SET_BYTES: u64 = SPAN_BATCH_BYTES + LOG_BATCH_BYTES + PROFILE_BATCH_BYTES;
const SPAN_BATCH_BYTES: u64 = 2 << 20;
const LOG_BATCH_BYTES: u64 = 4 << 20;
const PROFILE_BATCH_BYTES: u64 = 4 << 20;
/// The most span or log batches a queue holds, whatever their bytes.
const SPAN_LOG_QUEUE_BATCHES: usize = 256;

/// The signals whose export queues share [`Stage::ExportQueues`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Spans,
    Logs,
    Profiles,
}

impl Signal {
    /// The signal's part of the export share: what a large batch of it weighs in a set.
    fn batch_bytes(self) -> u64 {
        match self {
            Signal::Spans => SPAN_BATCH_BYTES,
            Signal::Logs => LOG_BATCH_BYTES,
            Signal::Profiles => PROFILE_BATCH_BYTES,
        }
    }
}

/// A stage: its name, share in per mille of what the fixed parts leave, and floor in bytes. Its
/// discriminant is its index in [`Stage::ALL`] and [`MemoryPlan::shares`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    SocketEvents,
    Connections,
    LogLines,
    ExportQueues,
    Symbols,
}

impl Stage {
    pub const ALL: [Stage; 5] = [
        Stage::SocketEvents,
        Stage::Connections,
        Stage::LogLines,
        Stage::ExportQueues,
        Stage::Symbols,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Stage::SocketEvents => "socket_events",
            Stage::Connections => "connections",
            Stage::LogLines => "log_lines",
            Stage::ExportQueues => "export_queues",
            Stage::Symbols => "symbols",
        }
    }

    fn per_mille(self) -> u64 {
        match self {
            Stage::SocketEvents => 100,
            Stage::Connections => 200,
            Stage::LogLines => 100,
            Stage::ExportQueues => 300,
            Stage::Symbols => 200,
        }
    }

    fn floor(self) -> u64 {
        match self {
            Stage::SocketEvents => 2 << 20,
            Stage::Connections => 4 << 20,
            Stage::LogLines => 2 << 20,
            // Two batches of each signal.
            Stage::ExportQueues => 2 * BATCH_SET_BYTES,
            Stage::Symbols => 4 << 20,
        }
    }
}

/// Set while the agent's memory (resident plus kernel maps) is near `--memory-limit`: the
/// socket reader then drops the events it reads (counted, reason `memory_pressure`) until
/// memory falls back, so that something the stages' caps do not see cannot push the agent
/// over its cgroup's limit. Profiles go on (their queues are bounded in bytes).
#[derive(Debug, Clone, Default)]
pub struct Pressure(Arc<AtomicBool>);

/// Shedding starts above this share of the limit, in per mille...
const PRESSURE_ON: u64 = 950;
/// ...and stops below this one, so that it does not flap at the threshold.
const PRESSURE_OFF: u64 = 900;

impl Pressure {
    pub fn is_on(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// Updates the state for `used` bytes of `limit`; returns it.
    pub fn update(&self, used: u64, limit: u64) -> bool {
        let on = self.is_on();
        let threshold = if on { PRESSURE_OFF } else { PRESSURE_ON };
        let now = u128::from(used) * 1000 > u128::from(limit) * u128::from(threshold);
        self.0.store(now, Ordering::Relaxed);
        now
    }
}

/// The caps the stages enforce, derived from the limit.
#[derive(Debug, Clone)]
pub struct MemoryPlan {
    pub limit: u64,
    pub kernel_maps: u64,
    /// Each stage's share in bytes, in [`Stage::ALL`] order.
    pub shares: [u64; 5],
    /// The floors did not fit in what the limit leaves: the limit cannot be held under load.
    pub overcommitted: bool,
    /// Bytes of socket event batches queued for the span builder.
    pub socket_event_bytes: usize,
    /// Bytes of parser buffers and waiting requests, all connections together.
    pub connection_bytes: usize,
    /// Threads the trace-context maps follow as serving a request (requests in flight: four
    /// times as many).
    pub context_threads: usize,
    /// Same-host links waiting for their other end.
    pub context_links: usize,
    /// Log lines waiting for export, and their bytes.
    pub log_lines: usize,
    pub log_bytes: usize,
    /// Lines in progress (a write without its line end yet), each up to the line limit.
    pub log_partial_lines: usize,
    /// Batches of each signal an export lane queues; for profiles, drains (a drain submits one
    /// batch per kind).
    pub export_batches: usize,
    /// Bytes of symbol tables kept parsed across drains.
    pub symbol_bytes: u64,
    /// The safety valve near the limit (set by the memory watcher, read by the socket reader).
    pub pressure: Pressure,
}

impl MemoryPlan {
    /// The plan for `limit` bytes with `kernel_maps` bytes of eBPF maps loaded.
    pub fn new(limit: u64, kernel_maps: u64) -> Self {
        let left = limit.saturating_sub(kernel_maps + BASELINE_BYTES);
        let floors: u64 = Stage::ALL.iter().map(|s| s.floor()).sum();
        let shares = Stage::ALL.map(|s| (left / 1000 * s.per_mille()).max(s.floor()));
        let share = |stage: Stage| shares[stage as usize];
        // A quarter for lines in progress, each up to the line limit; the rest for lines waiting.
        let log_share = share(Stage::LogLines);
        let partial_bytes = log_share / 4;
        let log_bytes = log_share - partial_bytes;
        // A quarter of the connections' share for the trace-context maps: three quarters of
        // that for threads and their requests in flight, the rest for same-host links.
        let connections = share(Stage::Connections);
        let context = connections / 4;
        MemoryPlan {
            limit,
            kernel_maps,
            shares,
            overcommitted: left < floors,
            socket_event_bytes: share(Stage::SocketEvents) as usize,
            connection_bytes: (connections - context) as usize,
            context_threads: (context / 4 * 3 / CONTEXT_THREAD_BYTES).clamp(1024, 64 * 1024)
                as usize,
            context_links: (context / 4 / CONTEXT_LINK_BYTES).clamp(1024, 16 * 1024) as usize,
            // Lines average far below the 4 KiB cut; the byte cap holds long ones back.
            log_lines: (log_bytes / (LOG_LINE_OVERHEAD + 128)).clamp(1024, 256 * 1024) as usize,
            log_bytes: log_bytes as usize,
            log_partial_lines: (partial_bytes / crate::logs::DEFAULT_MAX_LINE_BYTES as u64)
                .clamp(64, 4096) as usize,
            export_batches: (share(Stage::ExportQueues) / BATCH_SET_BYTES).clamp(2, 64) as usize,
            symbol_bytes: share(Stage::Symbols),
            pressure: Pressure::default(),
        }
    }

    /// Publishes `loupe_memory_budget_bytes{stage}` (each stage's share, and `kernel_maps` and
    /// `baseline`, the fixed parts).
    pub fn publish(&self, registry: &Registry) {
        let gauge = |stage: &str, bytes: u64| {
            registry
                .float_gauge(
                    "loupe_memory_budget_bytes",
                    "The agent's memory limit as planned: the fixed parts (kernel_maps, baseline) \
                     and each stage's share, whose cap it enforces by dropping (counted).",
                    &[("stage", stage)],
                )
                .set(bytes as f64);
        };
        gauge("kernel_maps", self.kernel_maps);
        gauge("baseline", BASELINE_BYTES);
        for (stage, bytes) in Stage::ALL.iter().zip(self.shares) {
            gauge(stage.name(), bytes);
        }
    }

    /// The bound of each of a signal's export queues when it has `lanes` sinks: in bytes, the
    /// signal's part of the export share divided among its sinks, so that the queues hold the
    /// share however large the batches grow; in batches, for profiles,
    /// [`MemoryPlan::export_batches`] times the kinds a drain submits. Span and log batches
    /// are as large as the load makes them (a flush every 1,024 spans at a high rate, every
    /// second otherwise), far below the planned size at most rates: their bytes are the bound,
    /// and the count, [`SPAN_LOG_QUEUE_BATCHES`], only keeps a queue of tiny batches finite
    /// (counting them as planned-size batches held a queue to 3 batches at the default limit,
    /// about 20 ms of spans at 80k requests a second).
    pub fn export_queue(&self, signal: Signal, lanes: usize) -> QueueBound {
        let share = self.shares[Stage::ExportQueues as usize];
        let bytes = share / BATCH_SET_BYTES * signal.batch_bytes()
            + share % BATCH_SET_BYTES * signal.batch_bytes() / BATCH_SET_BYTES;
        let batches = match signal {
            Signal::Profiles => self.export_batches * ProfileKind::ALL.len(),
            Signal::Spans | Signal::Logs => SPAN_LOG_QUEUE_BATCHES,
        };
        QueueBound {
            batches,
            bytes: bytes / lanes.max(1) as u64,
        }
    }

    /// One line for the log: the limit and each stage's share.
    pub fn describe(&self) -> String {
        let mib = |b: u64| format!("{:.1}MiB", b as f64 / f64::from(1 << 20));
        let stages: Vec<String> = Stage::ALL
            .iter()
            .zip(self.shares)
            .map(|(s, b)| format!("{} {}", s.name(), mib(b)))
            .collect();
        format!(
            "memory limit {}: kernel maps {}, baseline {}, {}",
            mib(self.limit),
            mib(self.kernel_maps),
            mib(BASELINE_BYTES),
            stages.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_limit_leaves_every_stage_more_than_its_floor() {
        // 256 MiB with this host's maps with every feature on (88 MiB): ~128 MiB to share.
        let plan = MemoryPlan::new(256 << 20, 88 << 20);
        assert!(!plan.overcommitted);
        let shared: u64 = plan.shares.iter().sum();
        assert!(
            shared + (88 << 20) + BASELINE_BYTES <= 256 << 20,
            "{}",
            plan.describe()
        );
        for (stage, bytes) in Stage::ALL.iter().zip(plan.shares) {
            assert!(bytes > stage.floor(), "{}", plan.describe());
        }
        // The caps follow from the shares.
        assert_eq!(
            plan.connection_bytes as u64,
            plan.shares[1] - plan.shares[1] / 4
        );
        // The context maps' caps, at their worst, within the other quarter.
        assert!(
            plan.context_threads as u64 * CONTEXT_THREAD_BYTES
                + plan.context_links as u64 * CONTEXT_LINK_BYTES
                <= plan.shares[1] / 4
        );
        assert!(
            plan.context_threads > 4096 && plan.context_links > 1024,
            "{plan:?}"
        );
        assert_eq!(plan.socket_event_bytes as u64, plan.shares[0]);
        assert!(plan.log_lines >= 1024);
        assert_eq!(plan.log_bytes as u64, plan.shares[2] - plan.shares[2] / 4);
        assert_eq!(
            plan.log_partial_lines as u64,
            plan.shares[2] / 4 / crate::logs::DEFAULT_MAX_LINE_BYTES as u64
        );
        assert_eq!(plan.export_batches as u64, plan.shares[3] / BATCH_SET_BYTES);
    }

    #[test]
    fn pressure_starts_near_the_limit_and_stops_with_hysteresis() {
        let p = Pressure::default();
        let limit = 1000;
        assert!(!p.update(900, limit) && !p.is_on());
        assert!(!p.update(950, limit));
        assert!(p.update(951, limit) && p.is_on());
        // Stays on until below 90%.
        assert!(p.update(920, limit));
        assert!(p.update(901, limit));
        assert!(!p.update(900, limit) && !p.is_on());
        // Over the limit itself, and huge values, do not overflow.
        assert!(p.update(u64::MAX, u64::MAX - 1));
        // A clone is the same switch.
        let q = p.clone();
        assert!(q.is_on());
    }

    #[test]
    fn export_queues_split_their_share_by_signal_and_sink() {
        let plan = MemoryPlan::new(256 << 20, 77 << 20);
        let share = plan.shares[Stage::ExportQueues as usize];
        let one = |s| plan.export_queue(s, 1);
        let total =
            one(Signal::Spans).bytes + one(Signal::Logs).bytes + one(Signal::Profiles).bytes;
        assert!(total <= share && total + 3 >= share, "{total} of {share}");
        assert_eq!(one(Signal::Logs).bytes, one(Signal::Profiles).bytes);
        assert_eq!(one(Signal::Spans).bytes * 2, one(Signal::Logs).bytes);
        // Two sinks of a signal: each queue gets half.
        assert_eq!(
            plan.export_queue(Signal::Logs, 2).bytes,
            one(Signal::Logs).bytes / 2
        );
        // Span and log queues are bound by their bytes; the count is far above the planned
        // batches.
        assert_eq!(one(Signal::Spans).batches, SPAN_LOG_QUEUE_BATCHES);
        assert_eq!(one(Signal::Logs).batches, SPAN_LOG_QUEUE_BATCHES);
        assert!(SPAN_LOG_QUEUE_BATCHES > plan.export_batches * 16);
        assert_eq!(
            one(Signal::Profiles).batches,
            plan.export_batches * ProfileKind::ALL.len()
        );
    }

    #[test]
    fn caps_grow_with_the_limit() {
        let small = MemoryPlan::new(256 << 20, 60 << 20);
        let large = MemoryPlan::new(1 << 30, 60 << 20);
        assert!(large.socket_event_bytes > small.socket_event_bytes);
        assert!(large.connection_bytes > small.connection_bytes);
        assert!(large.context_threads > small.context_threads);
        assert!(large.context_links > small.context_links);
        assert!(large.log_bytes > small.log_bytes);
        assert!(large.symbol_bytes > small.symbol_bytes);
        assert!(large.export_batches > small.export_batches);
    }

    #[test]
    fn a_limit_below_the_fixed_parts_gets_the_floors_and_says_so() {
        let plan = MemoryPlan::new(128 << 20, 100 << 20);
        assert!(plan.overcommitted);
        for (stage, bytes) in Stage::ALL.iter().zip(plan.shares) {
            assert_eq!(bytes, stage.floor());
        }
        assert_eq!(plan.socket_event_bytes, 2 << 20);
        assert_eq!(plan.export_batches, 2);
    }
}
