//! The CPU profiler's userspace half: attaches the perf_event program to every online CPU, keeps the
//! process table fresh from the kernel's process events, and every interval flips the kernel's active
//! map pair, drains the idle one and assembles per-service profiles.
//!
//! Two threads: the process watcher (reads the ring buffer, reads /proc) and the drainer (owns the
//! maps, symbolizes). Neither ever waits on an exporter: batches are handed over with `try_submit`.

mod alloc;
mod assemble;
mod debug_file;
pub mod debuginfod;
mod kallsyms;
mod procs;
mod symbolize;
mod unwind;

use std::{
    collections::{HashMap, HashSet, VecDeque},
    os::fd::AsRawFd,
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use crate::stop_fd::StopFd;
use aya::{
    Ebpf,
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf, StackTraceMap},
    programs::{
        PerfEvent, TracePoint,
        perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
    },
    util::online_cpus,
};
use loupe_collector::{
    profile::{ProfileBatch, ProfileKind},
    telemetry::{Counter, Gauge, Registry},
};
use loupe_common::{
    ProcessEvent, ProfilerConfig, SampleKey, SampleValue, counter, process_event, sample_kind,
};

use crate::correlate::SpanIndex;
use crate::ebpf::{EbpfError, program, rejected, take_map};
use alloc::AllocTracker;
pub use alloc::{
    AllocOptions, DEFAULT_DURATION as DEFAULT_ALLOC_DURATION, DEFAULT_SAMPLE_BYTES,
    MAX_SAMPLE_BYTES,
};
pub use assemble::comm_str;
use assemble::{RawSample, StackStats};
use procs::ProcessTable;
pub use procs::{ProcessIdentity, process_identity};
pub use symbolize::Symbolizer;
pub use unwind::survey as unwind_survey;
pub use unwind::{DEFAULT_UNWIND_TABLES_BYTES, MAX_UNWIND_TABLES_BYTES, UnwinderMode};
use unwind::{Reason, UnwindHandle, Unwinder};

/// Delays after a process's first sample at which its mappings are read again.
const REREAD_DELAYS: [Duration; 2] = [Duration::from_millis(50), Duration::from_millis(500)];
/// Re-reads waiting at most per delay (new processes beyond it get only their first read and the
/// drain's).
const MAX_PENDING_REREADS: usize = 8 * 1024;
/// Processes the table holds at most.
const MAX_PROCESSES: usize = 32 * 1024;
/// Symbolized addresses cached at most (user and kernel together).
pub const MAX_CACHED_ADDRESSES: usize = 256 * 1024;
/// How long the drainer waits after flipping slots, so programs already running on other CPUs
/// finish writing to the old slot. BPF programs run for microseconds.
const FLIP_GRACE: Duration = Duration::from_millis(5);

/// Profiler settings taken from the configuration.
#[derive(Debug, Clone)]
pub struct ProfilerOptions {
    pub hz: u32,
    pub pids: Vec<u32>,
    pub process_tracepoints: bool,
    pub host_labels: Vec<(String, String)>,
    /// Where the span builder publishes which span each request became; `None` when network
    /// spans are off (samples are then never labelled with spans).
    pub spans: Option<SpanIndex>,
    /// Processes whose off-CPU time is profiled (empty: off).
    pub off_cpu_pids: Vec<u32>,
    /// Blocks shorter than this are not recorded.
    pub off_cpu_min: Duration,
    /// Page-fault profiles: one sample every this many page faults (`None`: off).
    pub page_fault_period: Option<u64>,
    /// Allocation profiles of chosen processes (`None`: off).
    pub alloc: Option<AllocOptions>,
    /// How user stacks are walked, and the rows the kernel's unwind-table array was created with.
    pub unwinder: UnwinderMode,
    pub unwind_rows: u32,
}

struct Metrics {
    samples: Counter,
    idle: Counter,
    filtered: Counter,
    dropped_map_full: Counter,
    process_events_lost: Counter,
    stacks_collision: Counter,
    stacks_map_full: Counter,
    stacks_missing: Counter,
    truncated: Counter,
    span_tagged: Counter,
    span_unresolved: Counter,
    symbolize_failures: Counter,
    symbol_cache_resets: Counter,
    kernel_symbol_loads: Counter,
    kernel_symbol_bytes: Gauge,
    symbol_table_releases: Counter,
    processes: Gauge,
    processes_rejected: Counter,
    open_binaries: Gauge,
    drains: Counter,
    drain_micros: Gauge,
    off_cpu_blocks: [Counter; 3],
    page_fault_samples: Counter,
    page_faults_map_full: Counter,
    dwarf_stacks: [Counter; 4],
    dwarf_frames: [Counter; 2],
    dwarf_no_user_regs: Counter,
}

impl Metrics {
    fn new(r: &Registry) -> Self {
        let dropped = |reason: &str| {
            r.counter(
                "loupe_profiler_samples_dropped_total",
                "CPU samples not recorded, by reason.",
                &[("reason", reason)],
            )
        };
        let stacks = |reason: &str| {
            r.counter(
                "loupe_profiler_stacks_lost_total",
                "Samples recorded without one of their stacks, by reason.",
                &[("reason", reason)],
            )
        };
        Metrics {
            samples: r.counter(
                "loupe_profiler_samples_total",
                "CPU samples taken by the kernel, idle and filtered ones included.",
                &[],
            ),
            idle: r.counter(
                "loupe_profiler_idle_samples_total",
                "CPU samples that found the CPU idle.",
                &[],
            ),
            filtered: r.counter(
                "loupe_profiler_filtered_samples_total",
                "CPU samples of processes outside the --pid filter.",
                &[],
            ),
            dropped_map_full: dropped("sample_map_full"),
            process_events_lost: r.counter(
                "loupe_profiler_process_events_dropped_total",
                "Process announcements lost because the ring buffer was full.",
                &[],
            ),
            stacks_collision: stacks("hash_collision"),
            stacks_map_full: stacks("stack_map_full"),
            stacks_missing: stacks("missing"),
            truncated: r.counter(
                "loupe_profiler_truncated_stacks_total",
                "Samples whose user stack ends before an entry point (binary without frame pointers).",
                &[],
            ),
            span_tagged: r.counter(
                "loupe_profiler_span_samples_total",
                "Samples taken while their thread served a request: labelled with its span \
                 (tagged), or left unlabelled because the span is not known (unresolved).",
                &[("result", "tagged")],
            ),
            span_unresolved: r.counter(
                "loupe_profiler_span_samples_total",
                "Samples taken while their thread served a request: labelled with its span \
                 (tagged), or left unlabelled because the span is not known (unresolved).",
                &[("result", "unresolved")],
            ),
            symbolize_failures: r.counter(
                "loupe_profiler_symbolization_failures_total",
                "Addresses that could not be resolved to a function name.",
                &[],
            ),
            symbol_cache_resets: r.counter(
                "loupe_profiler_symbol_cache_resets_total",
                "Times the symbol cache filled up and was cleared.",
                &[],
            ),
            kernel_symbol_loads: r.counter(
                "loupe_profiler_kernel_symbol_loads_total",
                "Times the kernel's symbol table was read from /proc/kallsyms (at the first kernel \
                 frame, when modules change, and after unknown addresses at most every 5 minutes).",
                &[],
            ),
            symbol_table_releases: r.counter(
                "loupe_profiler_symbol_table_releases_total",
                "Times the parsed symbol tables of executables and libraries were released (over \
                 their memory budget, or 20 drains after the last release).",
                &[],
            ),
            kernel_symbol_bytes: r.gauge(
                "loupe_profiler_kernel_symbol_bytes",
                "Memory held by the kernel's symbol table.",
                &[],
            ),
            processes: r.gauge(
                "loupe_profiler_processes",
                "Processes in the profiler's process table.",
                &[],
            ),
            processes_rejected: r.counter(
                "loupe_profiler_processes_rejected_total",
                "Processes not remembered because the process table was full.",
                &[],
            ),
            open_binaries: r.gauge(
                "loupe_profiler_open_binaries",
                "Executables and libraries held open for symbolization.",
                &[],
            ),
            drains: r.counter(
                "loupe_profiler_drains_total",
                "Intervals drained from the kernel.",
                &[],
            ),
            drain_micros: r.gauge(
                "loupe_profiler_last_drain_duration_microseconds",
                "Time the last drain took, symbolization included.",
                &[],
            ),
            page_fault_samples: r.counter(
                "loupe_profiler_page_fault_samples_total",
                "Page-fault samples taken by the kernel (one per --page-fault-period faults), \
                 filtered ones included.",
                &[],
            ),
            page_faults_map_full: dropped("page_fault_map_full"),
            dwarf_stacks: ["complete", "too_deep", "stopped", "map_full"].map(|end| {
                r.counter(
                    "loupe_profiler_dwarf_stacks_total",
                    "User stacks walked with unwind tables, by how the walk ended: at the outermost \
                     frame, at 127 frames, on a rule or memory it could not follow, or lost because \
                     the stack map was full.",
                    &[("end", end)],
                )
            }),
            dwarf_frames: ["table", "frame_pointer"].map(|via| {
                r.counter(
                    "loupe_profiler_dwarf_frames_total",
                    "Frames of table-walked stacks, by how their caller was found: an unwind table \
                     row, or the frame pointer (code without a table).",
                    &[("via", via)],
                )
            }),
            dwarf_no_user_regs: r.counter(
                "loupe_profiler_dwarf_no_user_regs_total",
                "Samples taken in the kernel whose user registers were not found: their user stack \
                 was walked with frame pointers.",
                &[],
            ),
            off_cpu_blocks: ["recorded", "short", "lost"].map(|result| {
                r.counter(
                    "loupe_profiler_off_cpu_blocks_total",
                    "Off-CPU blocks of the chosen processes: recorded, shorter than \
                     --off-cpu-min-block, or lost (spanning a drain, or the sample map full).",
                    &[("result", result)],
                )
            }),
        }
    }
}

/// The running profiler. Dropping it detaches every program.
pub struct Profiler {
    /// Allocation profiles, when asked for and attached (declared first: its probes detach
    /// before the programs go).
    alloc: Option<AllocTracker>,
    /// Uprobes of network spans (TLS libraries, the Go runtime), rescanned for new processes at
    /// each drain: attaching needs the eBPF object, which lives here.
    uprobes: Vec<Box<dyn crate::uprobes::Rescan>>,
    /// Holds the programs and their perf-event links.
    ebpf: Ebpf,
    config: Array<MapData, ProfilerConfig>,
    _targets: BpfHashMap<MapData, u32, u8>,
    counters: PerCpuArray<MapData, u64>,
    samples: [BpfHashMap<MapData, SampleKey, SampleValue>; 2],
    stacks: [StackTraceMap<MapData>; 2],
    /// DWARF unwinding, unless `--unwinder frame-pointers` (or it could not start).
    unwinder: Option<Unwinder>,
    /// What the kernel is told at each flip, `active_slot` aside.
    kernel_config: ProfilerConfig,
    /// Kept for the profiler's lifetime (see `_targets`).
    _off_cpu_targets: Option<BpfHashMap<MapData, u32, u8>>,
    period_nanos: i64,
    /// Faults one page-fault sample stands for, when page-fault profiles are on.
    page_fault_period: Option<u64>,
    procs: Arc<Mutex<ProcessTable>>,
    last_counters: [u64; counter::COUNT as usize],
    last_drain: SystemTime,
    drains: u64,
    warned_truncated: HashSet<String>,
    host_labels: Vec<(String, String)>,
    spans: Option<SpanIndex>,
    metrics: Metrics,
    watcher: Option<(thread::JoinHandle<()>, Arc<StopFd>)>,
}

impl Profiler {
    /// Loads and attaches the profiler's programs and starts the process watcher.
    pub fn start(
        mut ebpf: Ebpf,
        options: ProfilerOptions,
        registry: &Registry,
    ) -> Result<Profiler, EbpfError> {
        let mut config: Array<MapData, ProfilerConfig> = take_map(&mut ebpf, "PROFILER_CONFIG")?;
        let filter_pids = u32::from(!options.pids.is_empty());
        // Kept for the profiler's lifetime: dropping a taken map closes its fd, which the programs
        // loaded later refer to.
        let mut targets: BpfHashMap<MapData, u32, u8> = take_map(&mut ebpf, "TARGET_PIDS")?;
        {
            for pid in &options.pids {
                targets.insert(pid, 1, 0).map_err(|e| EbpfError::Map {
                    name: "TARGET_PIDS",
                    message: e.to_string(),
                })?;
            }
        }
        let mut kernel_config = ProfilerConfig {
            active_slot: 0,
            filter_pids,
            ..ProfilerConfig::default()
        };
        let off_cpu_targets = if options.off_cpu_pids.is_empty() {
            None
        } else {
            let mut map: BpfHashMap<MapData, u32, u8> = take_map(&mut ebpf, "OFF_CPU_PIDS")?;
            for pid in &options.off_cpu_pids {
                map.insert(pid, 1, 0).map_err(|e| EbpfError::Map {
                    name: "OFF_CPU_PIDS",
                    message: e.to_string(),
                })?;
            }
            let (state, next_pid) = sched_switch_offsets();
            kernel_config.sched_prev_state_offset = state;
            kernel_config.sched_next_pid_offset = next_pid;
            kernel_config.off_cpu_min_ns = options.off_cpu_min.as_nanos() as u64;
            Some(map)
        };

        let counters = take_map(&mut ebpf, "PROFILER_COUNTERS")?;
        let samples = [
            take_map(&mut ebpf, "SAMPLES_0")?,
            take_map(&mut ebpf, "SAMPLES_1")?,
        ];
        let stacks = [
            take_map(&mut ebpf, "STACKS_0")?,
            take_map(&mut ebpf, "STACKS_1")?,
        ];
        let ring: RingBuf<MapData> = take_map(&mut ebpf, "PROCESS_EVENTS")?;
        let unwinder = match options.unwinder {
            UnwinderMode::FramePointers => None,
            mode => match Unwinder::start(&mut ebpf, mode, options.unwind_rows, registry) {
                Ok(u) => {
                    let (offset, size) = u.task_stack;
                    kernel_config.task_stack_offset = offset;
                    kernel_config.thread_size = size;
                    Some(u)
                }
                Err(e) => {
                    tracing::warn!(
                        "DWARF unwinding is off, stacks are walked with frame pointers: {e}"
                    );
                    None
                }
            },
        };

        let procs = Arc::new(Mutex::new(ProcessTable::new(MAX_PROCESSES)));
        let metrics = Metrics::new(registry);

        // Start watching before sampling, so no announcement waits in a full ring.
        let stop = Arc::new(StopFd::new().map_err(|e| {
            EbpfError::Unavailable(format!(
                "cannot make the process watcher's stop signal: {e}"
            ))
        })?);
        let watcher = {
            let (procs, stop) = (procs.clone(), stop.clone());
            let dwarf_everyone = unwinder
                .as_ref()
                .filter(|u| u.mode == UnwinderMode::Dwarf)
                .map(|u| u.handle.clone());
            thread::Builder::new()
                .name("loupe-procs".into())
                .spawn(move || watch_processes(ring, procs, stop, dwarf_everyone))
                .map_err(|e| {
                    EbpfError::Unavailable(format!("cannot start the process watcher thread: {e}"))
                })?
        };

        if options.process_tracepoints {
            for (prog, name) in [
                ("profile_exec", "sched_process_exec"),
                ("profile_exit", "sched_process_exit"),
            ] {
                if let Err(e) = attach_tracepoint(&mut ebpf, prog, name) {
                    tracing::warn!(
                        "{e}; processes are then forgotten only when found gone, which costs accuracy after exec"
                    );
                }
            }
        }

        if off_cpu_targets.is_some() {
            match attach_tracepoint(&mut ebpf, "profile_off_cpu", "sched_switch") {
                Ok(()) => {
                    kernel_config.off_cpu = 1;
                    tracing::info!(
                        pids = ?options.off_cpu_pids,
                        min_block = ?options.off_cpu_min,
                        "off-CPU profiler attached"
                    );
                }
                Err(e) => tracing::warn!("off-CPU profiles are off: {e}"),
            }
        }
        // Set once every program but the sampler is attached (the off-CPU one does nothing while
        // the map still holds zeros), before the sampler starts reading it.
        config
            .set(0, kernel_config, 0)
            .map_err(|e| EbpfError::Map {
                name: "PROFILER_CONFIG",
                message: e.to_string(),
            })?;

        let program: &mut PerfEvent = program(&mut ebpf, "profile_cpu")?;
        program.load().map_err(|e| rejected("profile_cpu", e))?;
        let cpus = online_cpus()
            .map_err(|(_, e)| EbpfError::Unavailable(format!("cannot list online CPUs: {e}")))?;
        for cpu in &cpus {
            program
                .attach(
                    PerfEventConfig::Software(SoftwareEvent::CpuClock),
                    PerfEventScope::AllProcessesOneCpu { cpu: *cpu },
                    SamplePolicy::Frequency(u64::from(options.hz)),
                    false,
                )
                .map_err(|source| EbpfError::Attach {
                    name: "profile_cpu",
                    source,
                })?;
        }
        tracing::info!(
            cpus = cpus.len(),
            hz = options.hz,
            pids = ?options.pids,
            "CPU profiler attached"
        );
        let page_fault_period =
            options.page_fault_period.and_then(|period| {
                match attach_page_faults(&mut ebpf, &cpus, period) {
                    Ok(()) => {
                        tracing::info!(period, "page-fault profiler attached");
                        Some(period)
                    }
                    Err(e) => {
                        tracing::warn!("page-fault profiles are off: {e}");
                        None
                    }
                }
            });
        let alloc = options.alloc.as_ref().and_then(|alloc| {
            match AllocTracker::start(&mut ebpf, alloc, registry) {
                Ok(t) => Some(t),
                Err(e) => {
                    tracing::warn!("allocation profiles are off: {e}");
                    None
                }
            }
        });

        Ok(Profiler {
            alloc,
            uprobes: Vec::new(),
            ebpf,
            config,
            _targets: targets,
            counters,
            samples,
            stacks,
            unwinder,
            kernel_config,
            _off_cpu_targets: off_cpu_targets,
            period_nanos: 1_000_000_000 / i64::from(options.hz),
            page_fault_period,
            procs,
            last_counters: [0; counter::COUNT as usize],
            last_drain: SystemTime::now(),
            drains: 0,
            warned_truncated: HashSet::new(),
            host_labels: options.host_labels,
            spans: options.spans,
            metrics,
            watcher: Some((watcher, stop)),
        })
    }

    /// Whether page-fault profiles are recorded (asked for, and attached).
    pub fn page_faults_on(&self) -> bool {
        self.page_fault_period.is_some()
    }

    /// Whether allocation profiles are recorded (asked for, and attached to some process).
    pub fn alloc_on(&self) -> bool {
        self.alloc.is_some()
    }

    /// Takes uprobes network spans attached, to look for new files to probe at each drain.
    pub fn adopt_uprobes(&mut self, probes: Box<dyn crate::uprobes::Rescan>) {
        self.uprobes.push(probes);
    }

    /// Flips the active slot, drains the other one and returns its profiles: CPU first, then
    /// off-CPU and page faults when they are on. The symbolizer is passed in because blazesym's
    /// is not `Send`: it lives on the draining thread.
    pub fn drain(&mut self, symbolizer: &mut Symbolizer) -> Vec<ProfileBatch> {
        let started = Instant::now();
        let idle_slot = self.kernel_config.active_slot as usize;
        self.kernel_config.active_slot ^= 1;
        if let Err(e) = self.config.set(0, self.kernel_config, 0) {
            // Without the flip the kernel keeps writing the slot we drain: counts may be lost between
            // reading and deleting, which the metrics cannot see. Say so loudly.
            tracing::error!("cannot flip the profiler's active slot: {e}");
        }
        let flipped_at = Instant::now();
        thread::sleep(FLIP_GRACE);

        let now = SystemTime::now();
        let start_unix_nanos = unix_nanos(self.last_drain);
        let duration_nanos = unix_nanos(now) - start_unix_nanos;
        self.last_drain = now;

        let mut all = self.read_samples(idle_slot);
        let mut stacks = self.read_stacks(idle_slot, &all);
        if let Some(unwinder) = &mut self.unwinder {
            unwinder.read_stacks(idle_slot, &mut all, &mut stacks);
        }
        self.update_kernel_counters();
        let (mut raw, mut off_cpu_raw, mut page_fault_raw) = (Vec::new(), Vec::new(), Vec::new());
        for s in all {
            match s.key.kind {
                sample_kind::OFF_CPU => off_cpu_raw.push(s),
                sample_kind::PAGE_FAULT => page_fault_raw.push(s),
                _ => raw.push(s),
            }
        }

        let procs = self.procs.clone();
        let (profiles, stats, truncated_by_service, off_cpu_profiles, page_fault_profiles) = {
            let mut table = procs.lock().unwrap_or_else(|p| p.into_inner());
            let (host_labels, spans) = (&self.host_labels, self.spans.as_ref());
            let mut assemble = |raw: &[RawSample]| {
                assemble::assemble(raw, &stacks, &mut table, symbolizer, host_labels, spans)
            };
            let (profiles, stats, truncated) = assemble(&raw);
            // The same stacks and symbols. Only the CPU profile's stack statistics reach the
            // metrics: off-CPU counts are nanoseconds, page-fault counts samples of
            // `page_fault_period` faults.
            let off_cpu = (self.kernel_config.off_cpu != 0).then(|| assemble(&off_cpu_raw).0);
            let page_faults = self
                .page_fault_period
                .is_some()
                .then(|| assemble(&page_fault_raw).0);
            let result = (profiles, stats, truncated, off_cpu, page_faults);
            table.evict_exited(flipped_at);
            self.drains += 1;
            if self.drains.is_multiple_of(20) {
                table.evict_vanished();
            }
            self.metrics.processes.set(table.len() as i64);
            self.metrics.open_binaries.set(table.open_binaries() as i64);
            let rejected = std::mem::take(&mut table.rejected);
            self.metrics.processes_rejected.add(rejected);
            result
        };
        self.record_stack_stats(stats);
        self.warn_truncated(&truncated_by_service, &profiles);
        if let Some(unwinder) = &self.unwinder {
            unwinder.handle.rescan();
        }

        let s = std::mem::take(&mut symbolizer.stats);
        self.metrics.symbolize_failures.add(s.failures);
        self.metrics.symbol_cache_resets.add(s.cache_resets);
        self.metrics.kernel_symbol_loads.add(s.kernel_table_loads);
        self.metrics.symbol_table_releases.add(s.releases);
        self.metrics
            .kernel_symbol_bytes
            .set(i64::try_from(symbolizer.kernel_table_bytes()).unwrap_or(i64::MAX));
        self.metrics.drains.inc();
        self.metrics
            .drain_micros
            .set(started.elapsed().as_micros() as i64);

        let cpu = ProfileBatch {
            start_unix_nanos,
            duration_nanos,
            period_nanos: self.period_nanos,
            kind: ProfileKind::Cpu,
            profiles,
        };
        let off_cpu = off_cpu_profiles.map(|profiles| ProfileBatch {
            start_unix_nanos,
            duration_nanos,
            period_nanos: 0,
            kind: ProfileKind::OffCpu,
            profiles,
        });
        let page_faults = page_fault_profiles.map(|profiles| ProfileBatch {
            start_unix_nanos,
            duration_nanos,
            period_nanos: self
                .page_fault_period
                .map_or(1, |p| i64::try_from(p).unwrap_or(i64::MAX)),
            kind: ProfileKind::PageFaults,
            profiles,
        });
        for probes in &mut self.uprobes {
            probes.rescan(&mut self.ebpf);
        }
        let mut batches: Vec<ProfileBatch> = std::iter::once(cpu)
            .chain(off_cpu)
            .chain(page_faults)
            .collect();
        if let Some(tracker) = &mut self.alloc {
            let active = tracker.active();
            let alloc::Drained {
                allocated,
                in_use,
                stacks,
            } = tracker.drain();
            let mut table = self.procs.lock().unwrap_or_else(|p| p.into_inner());
            let mut assemble = |raw: &[RawSample]| {
                assemble::assemble(
                    raw,
                    &stacks,
                    &mut table,
                    symbolizer,
                    &self.host_labels,
                    None,
                )
                .0
            };
            let period_nanos = i64::try_from(tracker.sample_bytes).unwrap_or(i64::MAX);
            // Allocations of the interval, while probed (and the last ones after).
            if active || !allocated.is_empty() {
                batches.push(ProfileBatch {
                    start_unix_nanos,
                    duration_nanos,
                    period_nanos,
                    kind: ProfileKind::Alloc,
                    profiles: assemble(&allocated),
                });
            }
            if tracker.active() {
                batches.push(ProfileBatch {
                    start_unix_nanos,
                    duration_nanos,
                    period_nanos,
                    kind: ProfileKind::InUse,
                    profiles: assemble(&in_use),
                });
            }
            drop(table);
        }
        symbolizer.end_drain();
        batches
    }

    fn read_samples(&mut self, slot: usize) -> Vec<RawSample> {
        let map = &mut self.samples[slot];
        let raw: Vec<RawSample> = map
            .iter()
            .filter_map(Result::ok)
            .map(|(key, value)| RawSample {
                key,
                value,
                objects: 0,
            })
            .collect();
        for s in &raw {
            let _ = map.remove(&s.key);
        }
        raw
    }

    fn read_stacks(&mut self, slot: usize, raw: &[RawSample]) -> HashMap<i32, Vec<u64>> {
        let map = &mut self.stacks[slot];
        let mut stacks = HashMap::new();
        for s in raw {
            for id in [s.key.user_stack_id, s.key.kernel_stack_id] {
                if id < 0 || stacks.contains_key(&id) {
                    continue;
                }
                if let Ok(trace) = map.get(&(id as u32), 0) {
                    stacks.insert(id, trace.frames().iter().map(|f| f.ip).collect());
                }
            }
        }
        // Clear the slot's stacks, referenced or not, so the next interval starts empty.
        let ids: Vec<u32> = map.stack_ids().filter_map(Result::ok).collect();
        for id in ids {
            let _ = map.remove(&id);
        }
        stacks
    }

    fn update_kernel_counters(&mut self) {
        let mut totals = [0u64; counter::COUNT as usize];
        for (i, total) in totals.iter_mut().enumerate() {
            if let Ok(values) = self.counters.get(&(i as u32), 0) {
                *total = values.iter().sum();
            }
        }
        let delta = |i: u32| totals[i as usize].saturating_sub(self.last_counters[i as usize]);
        self.metrics.samples.add(delta(counter::SAMPLES));
        self.metrics.idle.add(delta(counter::IDLE));
        self.metrics.filtered.add(delta(counter::FILTERED));
        self.metrics
            .dropped_map_full
            .add(delta(counter::SAMPLE_MAP_FULL));
        self.metrics
            .process_events_lost
            .add(delta(counter::PROCESS_EVENTS_LOST));
        for (i, c) in [
            counter::OFF_CPU_RECORDED,
            counter::OFF_CPU_SHORT,
            counter::OFF_CPU_LOST,
        ]
        .into_iter()
        .enumerate()
        {
            self.metrics.off_cpu_blocks[i].add(delta(c));
        }
        self.metrics
            .page_fault_samples
            .add(delta(counter::PAGE_FAULT_SAMPLES));
        self.metrics
            .page_faults_map_full
            .add(delta(counter::PAGE_FAULT_MAP_FULL));
        for (i, c) in [
            counter::DWARF_COMPLETE,
            counter::DWARF_TOO_DEEP,
            counter::DWARF_STOPPED,
            counter::DWARF_STACK_MAP_FULL,
        ]
        .into_iter()
        .enumerate()
        {
            self.metrics.dwarf_stacks[i].add(delta(c));
        }
        self.metrics.dwarf_frames[0].add(delta(counter::DWARF_FRAMES));
        self.metrics.dwarf_frames[1].add(delta(counter::DWARF_FP_FRAMES));
        self.metrics
            .dwarf_no_user_regs
            .add(delta(counter::DWARF_NO_USER_REGS));
        if delta(counter::SAMPLE_MAP_FULL) > 0 {
            tracing::warn!(
                lost = delta(counter::SAMPLE_MAP_FULL),
                "the sample map filled up this interval; samples were dropped (shorten --profile-interval)"
            );
        }
        self.last_counters = totals;
    }

    fn record_stack_stats(&self, s: StackStats) {
        self.metrics.stacks_collision.add(s.collisions);
        self.metrics.stacks_map_full.add(s.map_full);
        self.metrics.stacks_missing.add(s.missing);
        self.metrics.truncated.add(s.truncated);
        self.metrics.span_tagged.add(s.span_tagged);
        self.metrics.span_unresolved.add(s.span_unresolved);
    }

    /// Says once per service when most of its stacks end early: the tell-tale of binaries built
    /// without frame pointers.
    fn warn_truncated(
        &mut self,
        truncated: &HashMap<String, u64>,
        profiles: &[loupe_collector::profile::ServiceProfile],
    ) {
        let auto = self
            .unwinder
            .as_ref()
            .filter(|u| u.mode == UnwinderMode::Auto)
            .map(|u| u.handle.clone());
        for p in profiles {
            let total: u64 = p.samples.iter().map(|s| s.count).sum();
            let cut = truncated.get(&p.service_name).copied().unwrap_or(0);
            if total < 20 || cut * 2 <= total {
                continue;
            }
            if let Some(auto) = &auto {
                let pids: HashSet<u32> = p.samples.iter().map(|s| s.pid).collect();
                let new: Vec<u32> = pids.into_iter().filter(|p| !auto.is_tracked(*p)).collect();
                for pid in &new {
                    auto.add(*pid, Reason::Truncated);
                }
                if !new.is_empty() {
                    tracing::info!(
                        service = %p.service_name,
                        pids = ?new,
                        "{cut} of {total} stacks end before main (built without frame pointers): \
                         walking them with unwind tables from now on"
                    );
                }
                continue;
            }
            if self.warned_truncated.insert(p.service_name.clone()) {
                tracing::warn!(
                    service = %p.service_name,
                    "{cut} of {total} stacks end before main: this service (or a library it calls) was \
                     likely built without frame pointers, so its flame graph is cut short. Use \
                     --unwinder auto or dwarf, or rebuild with -fno-omit-frame-pointer (C/C++) or \
                     -C force-frame-pointers=yes (Rust)"
                );
            }
        }
    }

    /// Stops the process watcher and the allocation reader.
    pub fn stop(&mut self) {
        if let Some(alloc) = &mut self.alloc {
            alloc.stop();
        }
        if let Some((handle, stop)) = self.watcher.take() {
            stop.stop();
            let _ = handle.join();
        }
        if let Some(unwinder) = &mut self.unwinder {
            unwinder.stop();
        }
    }
}

impl Drop for Profiler {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Offsets of `prev_state` and `next_pid` in the `sched:sched_switch` record, from its tracefs
/// format; the layout every kernel since 4.x has when the format cannot be read.
fn sched_switch_offsets() -> (u32, u32) {
    let format = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .find_map(|root| {
            std::fs::read_to_string(format!("{root}/events/sched/sched_switch/format")).ok()
        })
        .unwrap_or_default();
    let offset = |field: &str| {
        format.lines().find_map(|l| {
            let l = l.trim();
            let decl = l.strip_prefix("field:")?.split(';').next()?;
            (decl.split_whitespace().last()? == field).then_some(())?;
            l.split(';')
                .find_map(|part| part.trim().strip_prefix("offset:"))?
                .parse::<u32>()
                .ok()
        })
    };
    (
        offset("prev_state").unwrap_or(32),
        offset("next_pid").unwrap_or(56),
    )
}

/// Loads the page-fault program and attaches it to a software page-fault event on every CPU,
/// firing every `period` faults.
fn attach_page_faults(ebpf: &mut Ebpf, cpus: &[u32], period: u64) -> Result<(), EbpfError> {
    let program: &mut PerfEvent = program(ebpf, "profile_page_faults")?;
    program
        .load()
        .map_err(|e| rejected("profile_page_faults", e))?;
    for cpu in cpus {
        program
            .attach(
                PerfEventConfig::Software(SoftwareEvent::PageFaults),
                PerfEventScope::AllProcessesOneCpu { cpu: *cpu },
                SamplePolicy::Period(period.max(1)),
                false,
            )
            .map_err(|source| EbpfError::Attach {
                name: "profile_page_faults",
                source,
            })?;
    }
    Ok(())
}

fn attach_tracepoint(ebpf: &mut Ebpf, prog: &'static str, name: &str) -> Result<(), EbpfError> {
    let program: &mut TracePoint = program(ebpf, prog)?;
    program.load().map_err(|e| rejected(prog, e))?;
    program
        .attach("sched", name)
        .map_err(|source| EbpfError::Attach { name: prog, source })?;
    Ok(())
}

/// Reads process announcements until told to stop; reads /proc for each new process right away,
/// while it still runs.
/// `dwarf`: with `--unwinder dwarf`, every sampled process is handed to the unwind-table worker
/// (again after exec and at each reread, when more of its libraries may be mapped; the worker
/// skips a process whose executable mappings did not change).
fn watch_processes(
    mut ring: RingBuf<MapData>,
    procs: Arc<Mutex<ProcessTable>>,
    stop: Arc<StopFd>,
    dwarf: Option<UnwindHandle>,
) {
    let fd = ring.as_raw_fd();
    // Second and third reads of each new process: its first sample may come while the dynamic
    // loader is still mapping libraries, and a short-lived process may be gone by the drain.
    // One queue per delay, so each stays in due order.
    let mut rereads: [VecDeque<(Instant, u32, String)>; REREAD_DELAYS.len()] = Default::default();
    while !stop.is_stopped() {
        let now = Instant::now();
        for queue in &mut rereads {
            while queue.front().is_some_and(|(due, _, _)| *due <= now) {
                if let Some((_, pid, comm)) = queue.pop_front() {
                    let mut table = procs.lock().unwrap_or_else(|p| p.into_inner());
                    table.refresh(pid, &comm);
                    if let Some(dwarf) = &dwarf {
                        dwarf.add(pid, Reason::Everyone);
                    }
                }
            }
        }
        // Asleep until an announcement, the next reread, or the stop.
        let next_due = rereads
            .iter()
            .filter_map(|q| {
                q.front()
                    .map(|(due, _, _)| due.saturating_duration_since(now))
            })
            .min();
        if let Err(err) = stop.wait(fd, next_due) {
            tracing::error!("process watcher: poll failed: {err}");
            thread::sleep(Duration::from_millis(100));
            continue;
        }
        while let Some(item) = ring.next() {
            if item.len() < std::mem::size_of::<ProcessEvent>() {
                continue;
            }
            // SAFETY: the item holds at least size_of::<ProcessEvent>() bytes written by the kernel
            // program as a ProcessEvent; read_unaligned copes with any alignment, and every bit
            // pattern is a valid ProcessEvent (integers only).
            let event: ProcessEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            drop(item);
            let mut table = procs.lock().unwrap_or_else(|p| p.into_inner());
            match event.kind {
                process_event::SAMPLED | process_event::EXEC => {
                    let comm = comm_str(&event.comm);
                    table.refresh(event.pid, &comm);
                    if let Some(dwarf) = &dwarf {
                        dwarf.add(event.pid, Reason::Everyone);
                    }
                    let now = Instant::now();
                    for (queue, delay) in rereads.iter_mut().zip(REREAD_DELAYS) {
                        if queue.len() < MAX_PENDING_REREADS {
                            queue.push_back((now + delay, event.pid, comm.clone()));
                        }
                    }
                }
                process_event::EXIT => {
                    table.mark_exited(event.pid);
                    if let Some(dwarf) = &dwarf {
                        dwarf.exit(event.pid);
                    }
                }
                _ => {}
            }
        }
    }
}

fn unix_nanos(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}
