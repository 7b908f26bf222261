//! Allocation profiles' userspace half (opt-in, `--alloc-pid`, for `--alloc-duration`): finds the
//! allocator each chosen process really calls, attaches the kernel's uprobes to it for that
//! process only, reads the sampled allocations and frees from their ring buffer, and at each drain
//! hands the profiler two sets of raw samples: what was allocated during the interval, and what
//! is still in use (sampled, never freed), whenever it was allocated.
//!
//! The allocator is the first of: the executable's own `malloc` (static binaries, allocators
//! linked in), a vendored jemalloc's `je_malloc` in the executable (Redis built from source), a
//! mapped jemalloc, tcmalloc or mimalloc library, the C library. `malloc`, `calloc`, `realloc` and
//! `free` are probed; `posix_memalign`, `aligned_alloc` and `mmap` called directly are not.

use std::{
    collections::HashMap,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use aya::{
    Ebpf,
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        UProbe,
        uprobe::{UProbeLink, UProbeScope},
    },
};
use loupe_collector::telemetry::{Counter, Gauge, Registry};
use loupe_common::{
    COMM_LEN, SampleKey, SampleValue,
    alloc::{
        AllocConfig, AllocEvent, FreeEvent, LIVE_ENTRIES, LiveKey, PID_ENTRIES, counter, event,
    },
};

use super::assemble::{EFAULT, RawSample};
use crate::ebpf::{EbpfError, program, rejected, take_map};
use crate::stop_fd::StopFd;
use crate::uprobes::{mapped_files, probe_point, symbol_file_offset};

/// Default mean bytes between two samples: Go's `runtime.MemProfileRate`.
pub const DEFAULT_SAMPLE_BYTES: u64 = 512 * 1024;
/// Largest sampling interval accepted (the kernel doubles it when drawing the next one).
pub const MAX_SAMPLE_BYTES: u64 = 1 << 40;
/// Default time the uprobes stay attached.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(10 * 60);
/// Distinct (process, thread, stack) keys of one interval's allocations at most; beyond it a
/// sample is counted and dropped.
const MAX_INTERVAL_KEYS: usize = 64 * 1024;

/// Allocation profile settings taken from the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocOptions {
    /// Processes whose allocations are sampled.
    pub pids: Vec<u32>,
    /// Mean bytes allocated between two samples.
    pub sample_bytes: u64,
    /// How long the probes stay attached (`None`: until the agent stops).
    pub duration: Option<Duration>,
}

/// The allocator found in a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocator {
    /// The file holding it, as the agent reaches it (through `/proc/<pid>/root`).
    pub path: PathBuf,
    /// The file as the process names it, for logs.
    pub name: String,
    /// Symbol prefix: `je_` for a vendored jemalloc, else empty.
    pub prefix: &'static str,
}

struct Metrics {
    calls: Counter,
    sampled: Counter,
    failed: Counter,
    frees: Counter,
    ring_full: Counter,
    live_full: Counter,
    pending_lost: Counter,
    interval_full: Counter,
    live: Gauge,
    processes: Gauge,
}

impl Metrics {
    fn new(r: &Registry) -> Self {
        let dropped = |reason: &str| {
            r.counter(
                "loupe_profiler_alloc_samples_dropped_total",
                "Sampled allocations or frees lost, by reason.",
                &[("reason", reason)],
            )
        };
        Metrics {
            calls: r.counter(
                "loupe_profiler_alloc_calls_total",
                "Allocator calls (malloc, calloc, realloc) of the processes whose allocations are sampled.",
                &[],
            ),
            sampled: r.counter(
                "loupe_profiler_alloc_samples_total",
                "Allocator calls sampled.",
                &[],
            ),
            failed: r.counter(
                "loupe_profiler_alloc_failed_total",
                "Sampled allocator calls that returned no memory.",
                &[],
            ),
            frees: r.counter(
                "loupe_profiler_alloc_frees_total",
                "Sampled blocks freed.",
                &[],
            ),
            ring_full: dropped("ring_full"),
            live_full: dropped("live_set_full"),
            pending_lost: dropped("thread_map_full"),
            interval_full: dropped("interval_full"),
            live: r.gauge(
                "loupe_profiler_alloc_live_blocks",
                "Sampled blocks not freed yet (the in-use profile's samples).",
                &[],
            ),
            processes: r.gauge(
                "loupe_profiler_alloc_processes",
                "Processes whose allocator is probed now.",
                &[],
            ),
        }
    }
}

/// The sampled blocks and this interval's samples, filled by the ring reader.
#[derive(Default)]
struct State {
    /// Interned user stacks: id → addresses, and back.
    stacks: HashMap<i32, Arc<[u64]>>,
    ids: HashMap<Arc<[u64]>, i32>,
    next_id: i32,
    /// This interval's allocations by (pid, tid, stack).
    interval: HashMap<(u32, u32, i32), Tally>,
    interval_full: u64,
    /// Sampled blocks not freed: (pid, address) → block.
    live: HashMap<(u32, u64), Block>,
}

/// Bytes and blocks allocated under one key during the interval.
#[derive(Debug, Clone, Copy)]
struct Tally {
    bytes: u64,
    objects: u64,
    comm: [u8; COMM_LEN],
}

/// One drain's allocation samples, over stacks of their own (ids the profiler's stack maps do
/// not share).
#[derive(Debug, Default)]
pub struct Drained {
    /// Allocated during the interval.
    pub allocated: Vec<RawSample>,
    /// Sampled and not freed, whenever allocated.
    pub in_use: Vec<RawSample>,
    /// The stacks both refer to.
    pub stacks: HashMap<i32, Vec<u64>>,
}

#[derive(Debug, Clone, Copy)]
struct Block {
    tid: u32,
    stack: i32,
    bytes: u64,
    objects: u64,
    comm: [u8; COMM_LEN],
}

impl State {
    fn intern(&mut self, ips: &[u64]) -> i32 {
        if let Some(&id) = self.ids.get(ips) {
            return id;
        }
        let id = self.next_id;
        // Ids are only compared; wrapping (after 2^31 distinct stacks) only risks a stale id
        // still in use, which `drain` prevents by dropping unreferenced ones first.
        self.next_id = self.next_id.wrapping_add(1) & i32::MAX;
        let ips: Arc<[u64]> = ips.into();
        self.stacks.insert(id, ips.clone());
        self.ids.insert(ips, id);
        id
    }

    fn allocated(&mut self, e: &AllocEvent) {
        let frames = (e.frames as usize).min(e.ips.len());
        let stack = self.intern(&e.ips[..frames]);
        let key = (e.pid, e.tid, stack);
        if self.interval.len() >= MAX_INTERVAL_KEYS && !self.interval.contains_key(&key) {
            self.interval_full += 1;
        } else {
            let t = self.interval.entry(key).or_insert(Tally {
                bytes: 0,
                objects: 0,
                comm: e.comm,
            });
            t.bytes = t.bytes.saturating_add(e.bytes);
            t.objects = t.objects.saturating_add(e.objects);
        }
        if self.live.len() < LIVE_ENTRIES as usize || self.live.contains_key(&(e.pid, e.addr)) {
            self.live.insert(
                (e.pid, e.addr),
                Block {
                    tid: e.tid,
                    stack,
                    bytes: e.bytes,
                    objects: e.objects,
                    comm: e.comm,
                },
            );
        }
    }

    /// This interval's allocations and the blocks in use now, as raw samples over the interned
    /// stacks (ids the profiler's stack table uses); forgets the interval.
    fn drain(&mut self) -> Drained {
        let raw = |pid, tid, stack, bytes, objects, comm| RawSample {
            key: SampleKey {
                pid,
                tid,
                user_stack_id: stack,
                // No kernel part: `assemble` reads -EFAULT as "no stack of this kind".
                kernel_stack_id: -EFAULT,
                request_ns: 0,
                dwarf_stack: 0,
                kind: 0,
                _pad: 0,
            },
            value: SampleValue { count: bytes, comm },
            objects,
        };
        let allocated: Vec<RawSample> = self
            .interval
            .drain()
            .map(|((pid, tid, stack), t)| raw(pid, tid, stack, t.bytes, t.objects, t.comm))
            .collect();
        let mut in_use: HashMap<(u32, i32), RawSample> = HashMap::new();
        for (&(pid, _), b) in &self.live {
            let s = in_use
                .entry((pid, b.stack))
                .or_insert_with(|| raw(pid, b.tid, b.stack, 0, 0, b.comm));
            s.value.count = s.value.count.saturating_add(b.bytes);
            s.objects = s.objects.saturating_add(b.objects);
        }
        let in_use: Vec<RawSample> = in_use.into_values().collect();
        let stacks = allocated
            .iter()
            .chain(&in_use)
            .filter_map(|s| {
                let id = s.key.user_stack_id;
                Some((id, self.stacks.get(&id)?.to_vec()))
            })
            .collect();
        // Only live blocks keep their stacks interned.
        let referenced: std::collections::HashSet<i32> =
            self.live.values().map(|b| b.stack).collect();
        self.stacks.retain(|id, _| referenced.contains(id));
        self.ids.retain(|_, id| referenced.contains(id));
        Drained {
            allocated,
            in_use,
            stacks,
        }
    }
}

/// The allocation profiler: probes, their maps, and the ring reader.
pub struct AllocTracker {
    config: Array<MapData, AllocConfig>,
    live_map: BpfHashMap<MapData, LiveKey, u8>,
    counters: PerCpuArray<MapData, u64>,
    last_counters: [u64; counter::COUNT as usize],
    state: Arc<Mutex<State>>,
    reader: Option<(thread::JoinHandle<()>, Arc<StopFd>)>,
    links: Vec<UProbeLink>,
    pids: Vec<u32>,
    deadline: Option<Instant>,
    /// Mean bytes per sample: the profiles' period.
    pub sample_bytes: u64,
    metrics: Metrics,
    _pid_map: BpfHashMap<MapData, u32, u8>,
}

/// Entry programs and the functions they probe (without the allocator's prefix); the return
/// program goes on every function but `free`.
const ENTRY_PROBES: [(&str, &str, bool); 4] = [
    ("alloc_malloc", "malloc", true),
    ("alloc_calloc", "calloc", false),
    ("alloc_realloc", "realloc", false),
    ("alloc_free", "free", true),
];

impl AllocTracker {
    /// Loads the probes and attaches them to each process's allocator. A process whose allocator
    /// cannot be found or probed is skipped with a warning; `Err` when no process could be.
    pub fn start(
        ebpf: &mut Ebpf,
        options: &AllocOptions,
        registry: &Registry,
    ) -> Result<AllocTracker, EbpfError> {
        let mut config: Array<MapData, AllocConfig> = take_map(ebpf, "ALLOC_CONFIG")?;
        let mut pid_map: BpfHashMap<MapData, u32, u8> = take_map(ebpf, "ALLOC_PIDS")?;
        let live_map = take_map(ebpf, "ALLOC_LIVE")?;
        let counters = take_map(ebpf, "ALLOC_COUNTERS")?;
        let ring: RingBuf<MapData> = take_map(ebpf, "ALLOC_EVENTS")?;
        let map_error = |name: &'static str| {
            move |e: aya::maps::MapError| EbpfError::Map {
                name,
                message: e.to_string(),
            }
        };
        config
            .set(
                0,
                AllocConfig {
                    sample_bytes: options.sample_bytes.clamp(1, MAX_SAMPLE_BYTES),
                },
                0,
            )
            .map_err(map_error("ALLOC_CONFIG"))?;
        for name in ENTRY_PROBES
            .iter()
            .map(|p| p.0)
            .chain(std::iter::once("alloc_return"))
        {
            let p: &mut UProbe = program(ebpf, name)?;
            p.load().map_err(|e| rejected(name, e))?;
        }

        let mut links = Vec::new();
        let mut pids = Vec::new();
        for &pid in options.pids.iter().take(PID_ENTRIES as usize) {
            let allocator = match find_allocator(pid) {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(pid, "allocation profiles: {e}");
                    continue;
                }
            };
            pid_map.insert(pid, 1, 0).map_err(map_error("ALLOC_PIDS"))?;
            match attach(ebpf, pid, &allocator) {
                Ok(mut attached) => {
                    tracing::info!(
                        pid,
                        allocator = %allocator.name,
                        prefix = allocator.prefix,
                        "allocation profiler attached"
                    );
                    links.append(&mut attached);
                    pids.push(pid);
                }
                Err(e) => {
                    let _ = pid_map.remove(&pid);
                    tracing::warn!(pid, allocator = %allocator.name, "allocation profiles: {e}");
                }
            }
        }
        if pids.is_empty() {
            return Err(EbpfError::Unavailable(format!(
                "no allocator could be probed in {:?}",
                options.pids
            )));
        }

        let metrics = Metrics::new(registry);
        metrics.processes.set(pids.len() as i64);
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(StopFd::new().map_err(|e| {
            EbpfError::Unavailable(format!(
                "cannot make the allocation reader's stop signal: {e}"
            ))
        })?);
        let reader = {
            let (state, stop) = (state.clone(), stop.clone());
            thread::Builder::new()
                .name("loupe-alloc".into())
                .spawn(move || read_events(ring, state, stop))
                .map_err(|e| {
                    EbpfError::Unavailable(format!("cannot start the allocation reader: {e}"))
                })?
        };
        Ok(AllocTracker {
            config,
            live_map,
            counters,
            last_counters: [0; counter::COUNT as usize],
            state,
            reader: Some((reader, stop)),
            links,
            pids,
            deadline: options.duration.map(|d| Instant::now() + d),
            sample_bytes: options.sample_bytes.clamp(1, MAX_SAMPLE_BYTES),
            metrics,
            _pid_map: pid_map,
        })
    }

    /// Whether the probes are still attached.
    pub fn active(&self) -> bool {
        !self.links.is_empty()
    }

    /// This interval's allocations, the blocks in use, and the stacks both refer to (ids of
    /// their own, which must not meet the CPU profile's). Detaches the probes once their time
    /// is up, and forgets blocks of processes that exited.
    pub fn drain(&mut self) -> Drained {
        self.update_counters();
        if self.active() && self.deadline.is_some_and(|d| Instant::now() >= d) {
            self.detach("its time is up (--alloc-duration)");
        }
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let gone: Vec<u32> = self
            .pids
            .iter()
            .copied()
            .filter(|pid| !Path::new(&format!("/proc/{pid}")).exists())
            .collect();
        if !gone.is_empty() {
            let dead: Vec<(u32, u64)> = state
                .live
                .keys()
                .copied()
                .filter(|(pid, _)| gone.contains(pid))
                .collect();
            for (pid, addr) in dead {
                state.live.remove(&(pid, addr));
                let _ = self.live_map.remove(&LiveKey { pid, _pad: 0, addr });
            }
            self.pids.retain(|p| !gone.contains(p));
            tracing::info!(pids = ?gone, "allocation profiles: processes exited");
            if self.pids.is_empty() && self.active() {
                drop(state);
                self.detach("every process it probed exited");
                state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            }
        }
        self.metrics
            .interval_full
            .add(std::mem::take(&mut state.interval_full));
        let mut out = state.drain();
        self.metrics.live.set(state.live.len() as i64);
        if !self.active() {
            // Frees are no longer seen: what was in use cannot be told any more.
            state.live.clear();
            out.in_use.clear();
        }
        out
    }

    fn detach(&mut self, why: &str) {
        let n = self.pids.len();
        self.links.clear();
        let _ = self.config.set(0, AllocConfig { sample_bytes: 0 }, 0);
        self.metrics.processes.set(0);
        tracing::info!(processes = n, "allocation profiler detached: {why}");
    }

    fn update_counters(&mut self) {
        let mut totals = [0u64; counter::COUNT as usize];
        for (i, total) in totals.iter_mut().enumerate() {
            if let Ok(values) = self.counters.get(&(i as u32), 0) {
                *total = values.iter().sum();
            }
        }
        let delta = |i: u32| totals[i as usize].saturating_sub(self.last_counters[i as usize]);
        let m = &self.metrics;
        m.calls.add(delta(counter::CALLS));
        m.sampled.add(delta(counter::SAMPLED));
        m.failed.add(delta(counter::FAILED));
        m.frees.add(delta(counter::FREES));
        m.ring_full.add(delta(counter::RING_FULL));
        m.live_full.add(delta(counter::LIVE_FULL));
        m.pending_lost.add(delta(counter::PENDING_LOST));
        self.last_counters = totals;
    }

    /// Stops the reader.
    pub fn stop(&mut self) {
        if let Some((handle, stop)) = self.reader.take() {
            stop.stop();
            let _ = handle.join();
        }
    }
}

impl Drop for AllocTracker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Attaches the entry programs and the return program to `pid`'s allocator; all or nothing for
/// `malloc` and `free`, which in-use tracking cannot do without.
fn attach(ebpf: &mut Ebpf, pid: u32, a: &Allocator) -> Result<Vec<UProbeLink>, String> {
    let scope =
        UProbeScope::OneProcess(std::num::NonZeroU32::new(pid).ok_or_else(|| "pid 0".to_string())?);
    let data =
        crate::procfs::map_file(&a.path).map_err(|e| format!("{}: {e}", a.path.display()))?;
    let file = object::File::parse(&*data).map_err(|e| format!("{}: {e}", a.path.display()))?;
    let mut links = Vec::new();
    for (prog, function, required) in ENTRY_PROBES {
        let symbol = format!("{}{function}", a.prefix);
        let Some(offset) = symbol_file_offset(&file, &symbol) else {
            if required {
                return Err(format!("{} has no {symbol}", a.name));
            }
            tracing::warn!(pid, "allocation profiles: {} has no {symbol}", a.name);
            continue;
        };
        // Probe past a leading argument test when there is one (see `probe_point`).
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let offset = offset + probe_point(data.get(start..).unwrap_or(&[])) as u64;
        let mut targets = vec![prog];
        if function != "free" {
            targets.push("alloc_return");
        }
        for name in targets {
            let p: &mut UProbe = program(ebpf, name).map_err(|e| e.to_string())?;
            let id = p
                .attach(offset, &a.path, scope)
                .map_err(|e| format!("attaching {name} to {symbol}: {e}"))?;
            links.push(p.take_link(id).map_err(|e| e.to_string())?);
        }
    }
    Ok(links)
}

/// The allocator `pid` calls: see the module's documentation for the order.
pub fn find_allocator(pid: u32) -> Result<Allocator, String> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .map_err(|e| format!("cannot read /proc/{pid}/maps: {e}"))?;
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .map_err(|e| format!("cannot read /proc/{pid}/exe: {e}"))?;
    let files = mapped_files(&maps);
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    let reach = |name: &str| root.join(name.trim_start_matches('/'));
    let exe_name = exe.to_string_lossy().into_owned();
    let defines = |name: &str, symbol: &str| {
        crate::procfs::map_file(&reach(name))
            .ok()
            .is_some_and(|data| {
                object::File::parse(&*data)
                    .ok()
                    .is_some_and(|f| symbol_file_offset(&f, symbol).is_some())
            })
    };
    let found = |name: &str, prefix: &'static str| Allocator {
        path: reach(name),
        name: name.to_string(),
        prefix,
    };
    if defines(&exe_name, "malloc") {
        return Ok(found(&exe_name, ""));
    }
    if defines(&exe_name, "je_malloc") {
        return Ok(found(&exe_name, "je_"));
    }
    let file_name = |f: &str| f.rsplit('/').next().unwrap_or(f).to_string();
    for lib in ["libjemalloc", "libtcmalloc", "libmimalloc"] {
        if let Some(f) = files.iter().find(|f| file_name(f).starts_with(lib))
            && defines(f, "malloc")
        {
            return Ok(found(f, ""));
        }
    }
    if let Some(f) = files
        .iter()
        .find(|f| file_name(f).starts_with("libc.so") || file_name(f).starts_with("libc-"))
        && defines(f, "malloc")
    {
        return Ok(found(f, ""));
    }
    Err(format!(
        "no malloc found in {exe_name} or the libraries it maps (a Go binary, or static with a stripped allocator?)"
    ))
}

/// Reads sampled allocations and frees until told to stop.
fn read_events(mut ring: RingBuf<MapData>, state: Arc<Mutex<State>>, stop: Arc<StopFd>) {
    let fd = ring.as_raw_fd();
    while !stop.is_stopped() {
        if let Err(err) = stop.wait(fd, None) {
            tracing::error!("allocation reader: poll failed: {err}");
            thread::sleep(Duration::from_millis(100));
            continue;
        }
        let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(item) = ring.next() {
            if item.len() < std::mem::size_of::<u32>() {
                continue;
            }
            // SAFETY: the item holds at least 4 bytes; every kernel record starts with its kind.
            let kind: u32 = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            match kind {
                event::ALLOC if item.len() >= std::mem::size_of::<AllocEvent>() => {
                    // SAFETY: the item holds a whole AllocEvent written by the kernel program;
                    // read_unaligned copes with any alignment, and every bit pattern is valid
                    // (integers only).
                    let e: AllocEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
                    state.allocated(&e);
                }
                event::FREE if item.len() >= std::mem::size_of::<FreeEvent>() => {
                    // SAFETY: as above, for a FreeEvent.
                    let e: FreeEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
                    state.live.remove(&(e.pid, e.addr));
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alloc(pid: u32, addr: u64, ips: &[u64], bytes: u64) -> AllocEvent {
        let mut e = AllocEvent {
            kind: event::ALLOC,
            pid,
            tid: pid,
            frames: ips.len() as u32,
            addr,
            size: 64,
            bytes,
            objects: bytes / 64,
            comm: [0; COMM_LEN],
            ips: [0; loupe_common::MAX_STACK_DEPTH],
        };
        e.ips[..ips.len()].copy_from_slice(ips);
        e
    }

    #[test]
    fn interval_sums_allocations_and_in_use_drops_freed_blocks() {
        let mut s = State::default();
        s.allocated(&alloc(7, 0x1000, &[1, 2, 3], 1000));
        s.allocated(&alloc(7, 0x2000, &[1, 2, 3], 1000));
        s.allocated(&alloc(7, 0x3000, &[9, 3], 500));
        s.live.remove(&(7, 0x1000));
        let Drained {
            allocated,
            in_use,
            stacks,
        } = s.drain();
        let bytes_of = |samples: &[RawSample], ips: &[u64]| -> u64 {
            samples
                .iter()
                .filter(|r| stacks[&r.key.user_stack_id] == ips)
                .map(|r| r.value.count)
                .sum()
        };
        assert_eq!(bytes_of(&allocated, &[1, 2, 3]), 2000);
        assert_eq!(bytes_of(&allocated, &[9, 3]), 500);
        assert_eq!(bytes_of(&in_use, &[1, 2, 3]), 1000, "one of two freed");
        assert_eq!(bytes_of(&in_use, &[9, 3]), 500);
        assert!(in_use.iter().all(|r| r.key.kernel_stack_id == -EFAULT));
        let objects: u64 = allocated.iter().map(|r| r.objects).sum();
        assert_eq!(
            objects,
            2 * (1000 / 64) + 500 / 64,
            "objects summed per stack"
        );

        // The next interval starts empty; blocks still in use keep their stacks.
        let Drained {
            allocated,
            in_use,
            stacks,
        } = s.drain();
        assert!(allocated.is_empty());
        assert_eq!(in_use.len(), 2);
        assert_eq!(stacks.len(), 2);
        s.live.clear();
        let _ = s.drain();
        assert!(
            s.stacks.is_empty() && s.ids.is_empty(),
            "unreferenced stacks forgotten"
        );
    }

    #[test]
    fn this_process_allocates_through_the_c_library() {
        let a = find_allocator(std::process::id()).expect("an allocator");
        // mimalloc, the agent's allocator, does not define `malloc` (no override): libc's it is.
        assert!(a.name.contains("libc.so"), "{a:?}");
        assert!(
            a.path
                .starts_with(format!("/proc/{}/root", std::process::id()))
        );
        assert_eq!(a.prefix, "");
    }
}
