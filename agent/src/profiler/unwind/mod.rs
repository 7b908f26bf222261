//! DWARF unwinding for processes built without frame pointers: unwind tables built from each
//! binary's `.eh_frame`/`.debug_frame` (`table`), placed in the kernel's shared row array and
//! listed per process, so the perf_event program can walk their user stacks (see the kernel side,
//! `loupe-ebpf/src/unwind.rs`).
//!
//! One worker thread owns the row array and the per-process map. It gets requests (start walking
//! this process with tables, it exited, look at your processes' mappings again) over a bounded
//! channel that nobody waits on: the process watcher and the drainer only `try_send`. Tables are
//! built there, off the sampling and drain paths, one per binary (device and inode), shared by every
//! process mapping it. The rows live in an mmap-able BPF array of a fixed size
//! (`--unwind-tables-size`): a binary gets one contiguous range, first fit; when none is free, the
//! binaries no tracked process maps any more go, least recently used first; a binary that still
//! does not fit is walked with frame pointers, and counted.

pub mod survey;
pub mod table;

use std::{
    collections::HashMap,
    fs::File,
    os::{
        fd::{AsFd as _, AsRawFd},
        unix::fs::MetadataExt,
    },
    sync::{
        Arc, Mutex,
        mpsc::{Receiver, SyncSender, sync_channel},
    },
    thread,
    time::Instant,
};

use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, Map, MapData, ProgramArray},
    programs::PerfEvent,
};
use loupe_collector::telemetry::{Counter, Gauge, Registry};
use loupe_common::unwind::{
    DWARF_STACK_ID, MAX_MAPPINGS, Mapping, ProcessMappings, UnwindRow, UserStack,
};

use super::{
    assemble::RawSample,
    procs::{FileKey, open_mapped, parse_maps_line},
};
use crate::ebpf::{program, rejected, take_map};

/// Default kernel memory of the unwind tables (1 Mi rows of 8 bytes).
pub const DEFAULT_UNWIND_TABLES_BYTES: u64 = loupe_common::unwind::DEFAULT_ROWS as u64 * 8;
/// The most `--unwind-tables-size` may ask: the kernel's binary search covers 2^25 rows.
pub const MAX_UNWIND_TABLES_BYTES: u64 = 256 << 20;

/// Requests waiting for the worker at most; more are dropped and counted.
const QUEUE: usize = 4096;
/// Files larger than this are not read for tables (counted as too big).
const MAX_BINARY_BYTES: u64 = 2 << 30;

/// How user stacks are walked (`--unwinder`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnwinderMode {
    /// Frame pointers until a process's stacks come out cut short, then its tables.
    Auto,
    /// Tables for every profiled process.
    Dwarf,
    /// Frame pointers only.
    FramePointers,
}

impl UnwinderMode {
    pub fn parse(text: &str) -> Option<UnwinderMode> {
        match text {
            "auto" => Some(UnwinderMode::Auto),
            "dwarf" => Some(UnwinderMode::Dwarf),
            "frame-pointers" | "fp" => Some(UnwinderMode::FramePointers),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            UnwinderMode::Auto => "auto",
            UnwinderMode::Dwarf => "dwarf",
            UnwinderMode::FramePointers => "frame-pointers",
        }
    }
}

/// Why a process's stacks are walked with tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// `--unwinder dwarf`: every profiled process.
    Everyone,
    /// `--unwinder auto`: its frame-pointer stacks came out cut short.
    Truncated,
}

enum Request {
    Add(u32, Reason),
    Exit(u32),
    Rescan,
}

/// The handle the profiler keeps: sends requests, never waits.
#[derive(Clone)]
pub struct UnwindHandle {
    tx: SyncSender<Request>,
    dropped: Counter,
    tracked: Arc<Mutex<HashMap<u32, Reason>>>,
}

impl UnwindHandle {
    /// Walks `pid`'s stacks with tables from now on (or looks at its mappings again).
    pub fn add(&self, pid: u32, reason: Reason) {
        self.send(Request::Add(pid, reason));
    }

    pub fn exit(&self, pid: u32) {
        self.send(Request::Exit(pid));
    }

    /// Looks at every tracked process's mappings again (libraries loaded since).
    pub fn rescan(&self) {
        self.send(Request::Rescan);
    }

    /// True when `pid` is walked with tables (or about to be).
    pub fn is_tracked(&self, pid: u32) -> bool {
        self.tracked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&pid)
    }

    fn send(&self, request: Request) {
        if self.tx.try_send(request).is_err() {
            self.dropped.inc();
        }
    }
}

struct Metrics {
    processes: Gauge,
    binaries: Gauge,
    used_bytes: Gauge,
    capacity_bytes: Gauge,
    built: Counter,
    no_cfi: Counter,
    failed: Counter,
    not_fitting: Counter,
    evicted: Counter,
    mappings_over: Counter,
    build_micros: Counter,
}

impl Metrics {
    fn new(r: &Registry) -> Self {
        let tables = |result: &str| {
            r.counter(
                "loupe_profiler_unwind_tables_total",
                "Binaries whose unwind table was wanted: built and loaded, without call frame \
                 information, failed to read, not fitting in --unwind-tables-size, or evicted \
                 (least recently used, no process mapping them).",
                &[("result", result)],
            )
        };
        let bytes = |state: &str| {
            r.gauge(
                "loupe_profiler_unwind_table_bytes",
                "Kernel memory of the unwind tables: used by loaded binaries, and the capacity \
                 (--unwind-tables-size).",
                &[("state", state)],
            )
        };
        Metrics {
            processes: r.gauge(
                "loupe_profiler_unwind_processes",
                "Processes whose user stacks are walked with unwind tables.",
                &[],
            ),
            binaries: r.gauge(
                "loupe_profiler_unwind_binaries",
                "Binaries whose unwind table is loaded in the kernel.",
                &[],
            ),
            used_bytes: bytes("used"),
            capacity_bytes: bytes("capacity"),
            built: tables("built"),
            no_cfi: tables("no_cfi"),
            failed: tables("failed"),
            not_fitting: tables("not_fitting"),
            evicted: tables("evicted"),
            mappings_over: r.counter(
                "loupe_profiler_unwind_mappings_dropped_total",
                "Executable mappings of tracked processes left without a table because the process \
                 has more than 64 (their frames are walked with frame pointers).",
                &[],
            ),
            build_micros: r.counter(
                "loupe_profiler_unwind_table_build_microseconds_total",
                "Time spent building unwind tables.",
                &[],
            ),
        }
    }
}

/// The row array. Written through a mapping of just the pages a table covers, unmapped right
/// after: the kernel maps every page of a BPF array's mapping at once, so keeping the whole array
/// mapped would add its size to the agent's resident memory.
struct Rows {
    len: usize,
    map: MapData,
}

impl Rows {
    fn new(map: MapData, rows: u32) -> Rows {
        Rows {
            len: rows as usize,
            map,
        }
    }

    fn write(&mut self, start: u32, rows: &[UnwindRow]) -> Result<(), String> {
        const PAGE: usize = 4096;
        let size = std::mem::size_of::<UnwindRow>();
        let start = start as usize;
        if start + rows.len() > self.len {
            return Err("rows beyond the array".into());
        }
        let first = start * size;
        let end = (start + rows.len()) * size;
        let offset = first / PAGE * PAGE;
        let length = end.div_ceil(PAGE) * PAGE - offset;
        // SAFETY: a shared, writable mapping of pages of a BPF_F_MMAPABLE array's fd, inside the
        // array (checked above; the kernel checks it too); the result is checked below and
        // unmapped before returning.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                length,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                self.map.fd().as_fd().as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(format!(
                "cannot map the unwind rows: {}",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: `first - offset + rows.len() * size` ≤ `length`, so the copy stays inside the
        // mapping; rows are plain integers; no tracked process refers to this range yet, so the
        // kernel does not read it while it changes. Then the mapping made above is unmapped.
        unsafe {
            std::ptr::copy_nonoverlapping(
                rows.as_ptr().cast::<u8>(),
                ptr.cast::<u8>().add(first - offset),
                std::mem::size_of_val(rows),
            );
            libc::munmap(ptr, length);
        }
        Ok(())
    }
}

/// A binary's state in the worker.
enum Binary {
    Loaded {
        start: u32,
        len: u32,
        /// Executable PT_LOAD segments: (file offset, virtual address, size in the file).
        segments: Vec<(u64, u64, u64)>,
        last_used: Instant,
    },
    /// No table (no call frame information, unreadable, or too big): not tried again.
    Without,
}

struct Tracked {
    reason: Reason,
    /// The executable mappings last listed for the kernel, to skip unchanged rescans.
    signature: u64,
    binaries: Vec<FileKey>,
}

struct Worker {
    rows: Rows,
    procs: BpfHashMap<MapData, u32, ProcessMappings>,
    binaries: HashMap<FileKey, Binary>,
    free: FreeRanges,
    tracked: HashMap<u32, Tracked>,
    shared: Arc<Mutex<HashMap<u32, Reason>>>,
    metrics: Metrics,
}

/// Starts the worker; `rows_map` is `UNWIND_ROWS` (mmap-able), `procs` `UNWIND_PROCS`.
pub fn start(
    rows_map: Map,
    rows: u32,
    procs: BpfHashMap<MapData, u32, ProcessMappings>,
    registry: &Registry,
) -> Result<(UnwindHandle, thread::JoinHandle<()>), String> {
    let Map::Array(data) = rows_map else {
        return Err("UNWIND_ROWS is not an array".into());
    };
    let rows_store = Rows::new(data, rows);
    let metrics = Metrics::new(registry);
    metrics
        .capacity_bytes
        .set((rows as usize * std::mem::size_of::<UnwindRow>()) as i64);
    let (tx, rx) = sync_channel(QUEUE);
    let shared = Arc::new(Mutex::new(HashMap::new()));
    let handle = UnwindHandle {
        tx,
        dropped: registry.counter(
            "loupe_profiler_unwind_requests_dropped_total",
            "Requests to the unwind-table worker dropped because its queue was full.",
            &[],
        ),
        tracked: shared.clone(),
    };
    let mut worker = Worker {
        rows: rows_store,
        procs,
        binaries: HashMap::new(),
        free: FreeRanges(vec![(0, rows)]),
        tracked: HashMap::new(),
        shared,
        metrics,
    };
    let thread = thread::Builder::new()
        .name("loupe-unwind".into())
        .spawn(move || worker.run(rx))
        .map_err(|e| format!("cannot start the unwind-table thread: {e}"))?;
    Ok((handle, thread))
}

impl Worker {
    fn run(&mut self, rx: Receiver<Request>) {
        // Ends when every sender (the profiler's handles) is gone.
        while let Ok(first) = rx.recv() {
            let mut next = Some(first);
            while let Some(request) = next {
                match request {
                    Request::Add(pid, reason) => self.add(pid, reason),
                    Request::Exit(pid) => self.remove(pid),
                    Request::Rescan => {
                        let pids: Vec<(u32, Reason)> =
                            self.tracked.iter().map(|(p, t)| (*p, t.reason)).collect();
                        for (pid, reason) in pids {
                            self.add(pid, reason);
                        }
                    }
                }
                next = rx.try_recv().ok();
            }
            self.publish();
        }
    }

    fn publish(&self) {
        self.metrics.processes.set(self.tracked.len() as i64);
        let (count, rows) = self
            .binaries
            .values()
            .filter_map(|b| match b {
                Binary::Loaded { len, .. } => Some(u64::from(*len)),
                Binary::Without => None,
            })
            .fold((0i64, 0u64), |(c, r), len| (c + 1, r + len));
        self.metrics.binaries.set(count);
        self.metrics
            .used_bytes
            .set((rows * std::mem::size_of::<UnwindRow>() as u64) as i64);
        let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        shared.clear();
        shared.extend(self.tracked.iter().map(|(p, t)| (*p, t.reason)));
    }

    /// Lists `pid`'s executable mappings with tables for the kernel (building missing tables).
    fn add(&mut self, pid: u32, reason: Reason) {
        let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
            self.remove(pid);
            return;
        };
        // Only executable mappings matter: heap and anonymous memory change all the time.
        let signature = maps
            .lines()
            .filter(|l| l.split_whitespace().nth(1).is_some_and(|p| p.contains('x')))
            .fold(0u64, |h, l| h.rotate_left(5) ^ fnv1a(l.as_bytes()));
        if let Some(t) = self.tracked.get(&pid)
            && t.signature == signature
        {
            return;
        }
        let mut mappings: Vec<Mapping> = Vec::new();
        let mut used: Vec<FileKey> = Vec::new();
        for line in maps.lines() {
            let Some(entry) = parse_maps_line(line) else {
                continue;
            };
            let Some(path) = entry.path.filter(|p| p.starts_with('/')) else {
                continue;
            };
            if !entry.executable {
                continue;
            }
            let clean = path.trim_end_matches(" (deleted)");
            let Ok(file) = open_mapped(pid, &entry, clean) else {
                continue;
            };
            let Ok(meta) = file.metadata() else {
                continue;
            };
            let key = FileKey {
                dev: meta.dev(),
                ino: meta.ino(),
            };
            if !self.binaries.contains_key(&key) {
                let state = self.load(&file, meta.len(), clean);
                self.binaries.insert(key, state);
            }
            let Some(Binary::Loaded {
                start,
                len,
                segments,
                last_used,
            }) = self.binaries.get_mut(&key)
            else {
                continue;
            };
            *last_used = Instant::now();
            // The mapping starts at the segment's offset rounded down to a page.
            let Some(&(seg_offset, seg_vaddr, _)) = segments
                .iter()
                .find(|(off, _, size)| (off & !0xfff..off + size).contains(&entry.offset))
            else {
                continue;
            };
            let vaddr_at_start = seg_vaddr
                .wrapping_add(entry.offset)
                .wrapping_sub(seg_offset);
            mappings.push(Mapping {
                start: entry.start,
                end: entry.end,
                bias: entry.start.wrapping_sub(vaddr_at_start),
                table_start: *start,
                table_len: *len,
            });
            used.push(key);
        }
        mappings.sort_by_key(|m| m.start);
        if mappings.len() > MAX_MAPPINGS {
            self.metrics
                .mappings_over
                .add((mappings.len() - MAX_MAPPINGS) as u64);
            mappings.truncate(MAX_MAPPINGS);
        }
        let mut value = ProcessMappings {
            count: mappings.len() as u32,
            _pad: 0,
            mappings: [Mapping::default(); MAX_MAPPINGS],
        };
        value.mappings[..mappings.len()].copy_from_slice(&mappings);
        if let Err(e) = self.procs.insert(pid, value, 0) {
            tracing::warn!(pid, "cannot list the process for DWARF unwinding: {e}");
            return;
        }
        if !self.tracked.contains_key(&pid) {
            tracing::info!(
                pid,
                reason = match reason {
                    Reason::Everyone => "--unwinder dwarf",
                    Reason::Truncated => "its frame-pointer stacks came out cut short",
                },
                binaries = used.len(),
                "user stacks are walked with unwind tables (DWARF)"
            );
        }
        self.tracked.insert(
            pid,
            Tracked {
                reason,
                signature,
                binaries: used,
            },
        );
    }

    fn remove(&mut self, pid: u32) {
        if self.tracked.remove(&pid).is_some() {
            let _ = self.procs.remove(&pid);
        }
    }

    /// Builds `file`'s table and places it in the row array.
    fn load(&mut self, file: &File, size: u64, path: &str) -> Binary {
        if size > MAX_BINARY_BYTES {
            self.metrics.failed.inc();
            return Binary::Without;
        }
        let started = Instant::now();
        // SAFETY: a read-only private mapping of a file we hold open; a concurrent truncation by
        // another process could fault, which is why only executables mapped by live processes
        // (which the kernel keeps from being written: ETXTBSY) are read.
        let data = match unsafe { memmap2::Mmap::map(file) } {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(binary = path, "cannot read for unwind tables: {e}");
                self.metrics.failed.inc();
                return Binary::Without;
            }
        };
        let built = table::build(&data);
        let segments = executable_segments(&data);
        drop(data);
        self.metrics
            .build_micros
            .add(started.elapsed().as_micros() as u64);
        let rows = match built {
            Ok(t) if !t.rows.is_empty() => {
                tracing::debug!(
                    binary = path,
                    bytes = t.size_bytes(),
                    stats = ?t.stats,
                    "unwind table built"
                );
                t.rows
            }
            Ok(_) => {
                self.metrics.no_cfi.inc();
                return Binary::Without;
            }
            Err(e) => {
                tracing::debug!(binary = path, "no unwind table: {e}");
                self.metrics.no_cfi.inc();
                return Binary::Without;
            }
        };
        let Ok(len) = u32::try_from(rows.len()) else {
            self.metrics.not_fitting.inc();
            return Binary::Without;
        };
        let Some(start) = self.allocate(len) else {
            self.metrics.not_fitting.inc();
            tracing::warn!(
                binary = path,
                rows = len,
                "the unwind tables are full (--unwind-tables-size): this binary's frames are walked \
                 with frame pointers"
            );
            return Binary::Without;
        };
        if let Err(e) = self.rows.write(start, &rows) {
            tracing::warn!(binary = path, "cannot load its unwind table: {e}");
            self.free.give(start, len);
            self.metrics.failed.inc();
            return Binary::Without;
        }
        self.metrics.built.inc();
        tracing::debug!(
            binary = path,
            rows = len,
            took = ?started.elapsed(),
            "unwind table loaded"
        );
        Binary::Loaded {
            start,
            len,
            segments,
            last_used: Instant::now(),
        }
    }

    /// A free range of `len` rows, evicting unused binaries (least recently used first) if needed.
    fn allocate(&mut self, len: u32) -> Option<u32> {
        loop {
            if let Some(start) = self.free.take(len) {
                return Some(start);
            }
            let in_use: std::collections::HashSet<FileKey> = self
                .tracked
                .values()
                .flat_map(|t| t.binaries.iter().copied())
                .collect();
            let victim = self
                .binaries
                .iter()
                .filter_map(|(k, b)| match b {
                    Binary::Loaded { last_used, .. } if !in_use.contains(k) => {
                        Some((*k, *last_used))
                    }
                    _ => None,
                })
                .min_by_key(|(_, t)| *t)
                .map(|(k, _)| k)?;
            if let Some(Binary::Loaded { start, len, .. }) = self.binaries.remove(&victim) {
                self.metrics.evicted.inc();
                self.free.give(start, len);
            }
        }
    }
}

/// Free ranges of the row array: (start, len), sorted by start, coalesced.
#[derive(Debug, PartialEq)]
struct FreeRanges(Vec<(u32, u32)>);

impl FreeRanges {
    /// The start of a free range of `len` rows, first fit.
    fn take(&mut self, len: u32) -> Option<u32> {
        let i = self.0.iter().position(|&(_, l)| l >= len)?;
        let (start, l) = self.0[i];
        if l == len {
            self.0.remove(i);
        } else {
            self.0[i] = (start + len, l - len);
        }
        Some(start)
    }

    /// Gives `start..start + len` back.
    fn give(&mut self, start: u32, len: u32) {
        let free = &mut self.0;
        let i = free.partition_point(|&(s, _)| s < start);
        free.insert(i, (start, len));
        if i + 1 < free.len() && free[i].0 + free[i].1 == free[i + 1].0 {
            free[i].1 += free[i + 1].1;
            free.remove(i + 1);
        }
        if i > 0 && free[i - 1].0 + free[i - 1].1 == free[i].0 {
            free[i - 1].1 += free[i].1;
            free.remove(i);
        }
    }
}

/// Executable PT_LOAD segments of an ELF file: (file offset, virtual address, size in the file).
fn executable_segments(data: &[u8]) -> Vec<(u64, u64, u64)> {
    use object::{Object, ObjectSegment, SegmentFlags};
    let Ok(file) = object::File::parse(data) else {
        return Vec::new();
    };
    file.segments()
        .filter(|s| match s.flags() {
            SegmentFlags::Elf { p_flags } => p_flags & object::elf::PF_X != 0,
            _ => false,
        })
        .map(|s| {
            let (offset, size) = s.file_range();
            (offset, s.address(), size)
        })
        .collect()
}

/// FNV-1a of a line of the maps text, to skip rescans that find nothing new.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The profiler's side of DWARF unwinding: the worker's handle, the maps the drain reads, and what
/// keeps the kernel's tail-call slot filled.
pub struct Unwinder {
    pub mode: UnwinderMode,
    pub handle: UnwindHandle,
    /// `task_struct.stack`'s offset and the kernel stack's size, for `ProfilerConfig`.
    pub task_stack: (u32, u32),
    stacks: [BpfHashMap<MapData, u64, UserStack>; 2],
    /// Closing the program array's last descriptor would empty it: kept for the profiler's life.
    _programs: ProgramArray<MapData>,
    worker: Option<thread::JoinHandle<()>>,
}

/// `SampleKey::user_stack_id`s given to DWARF stacks in a drain: above any stack-trace map id.
const FIRST_DWARF_ID: i32 = 1 << 24;
/// `THREAD_SIZE` on x86-64 without KASAN.
const THREAD_SIZE: u32 = 16 * 1024;

impl Unwinder {
    /// Loads the walking program, fills its tail-call slot and starts the table worker.
    pub fn start(
        ebpf: &mut Ebpf,
        mode: UnwinderMode,
        rows: u32,
        registry: &Registry,
    ) -> Result<Unwinder, String> {
        if rows == 0 {
            return Err("no rows for unwind tables".into());
        }
        let task_stack_offset = std::fs::read(crate::net::btf::VMLINUX_BTF)
            .map_err(|e| e.to_string())
            .and_then(|data| {
                crate::net::btf::Btf::parse(&data)
                    .and_then(|btf| btf.field("task_struct", &["stack"]))
                    .map_err(|e| e.to_string())
            })
            .map(|f| f.offset)
            .unwrap_or_else(|e| {
                tracing::warn!(
                    "no kernel BTF ({e}): samples taken in the kernel keep frame-pointer user stacks"
                );
                0
            });
        let mut programs: ProgramArray<MapData> =
            take_map(ebpf, "UNWIND_PROGS").map_err(|e| e.to_string())?;
        let step: &mut PerfEvent = program(ebpf, "unwind_step").map_err(|e| e.to_string())?;
        step.load()
            .map_err(|e| rejected("unwind_step", e).to_string())?;
        let fd = step.fd().map_err(|e| e.to_string())?;
        programs.set(0, fd, 0).map_err(|e| e.to_string())?;
        let stacks = [
            take_map(ebpf, "DWARF_STACKS_0").map_err(|e| e.to_string())?,
            take_map(ebpf, "DWARF_STACKS_1").map_err(|e| e.to_string())?,
        ];
        let procs = take_map(ebpf, "UNWIND_PROCS").map_err(|e| e.to_string())?;
        let rows_map = ebpf
            .take_map("UNWIND_ROWS")
            .ok_or("UNWIND_ROWS is missing from the object")?;
        let (handle, worker) = start(rows_map, rows, procs, registry)?;
        tracing::info!(
            mode = mode.as_str(),
            table_bytes = u64::from(rows) * 8,
            "DWARF unwinding ready"
        );
        Ok(Unwinder {
            mode,
            handle,
            task_stack: (task_stack_offset, THREAD_SIZE),
            stacks,
            _programs: programs,
            worker: Some(worker),
        })
    }

    /// Reads the slot's walked stacks into `stacks` under new ids, rewrites the samples' ids, and
    /// empties the slot's map.
    pub fn read_stacks(
        &mut self,
        slot: usize,
        samples: &mut [RawSample],
        stacks: &mut HashMap<i32, Vec<u64>>,
    ) {
        let map = &mut self.stacks[slot];
        let mut ids: HashMap<u64, i32> = HashMap::new();
        for s in samples.iter_mut() {
            if s.key.user_stack_id != DWARF_STACK_ID {
                continue;
            }
            let next = FIRST_DWARF_ID + ids.len() as i32;
            let id = match ids.get(&s.key.dwarf_stack) {
                Some(id) => *id,
                None => match map.get(&s.key.dwarf_stack, 0) {
                    Ok(stack) => {
                        let len = (stack.len as usize).min(stack.pcs.len());
                        stacks.insert(next, stack.pcs[..len].to_vec());
                        ids.insert(s.key.dwarf_stack, next);
                        next
                    }
                    // Gone: counted as a missing stack by the assembly.
                    Err(_) => next,
                },
            };
            s.key.user_stack_id = id;
        }
        let keys: Vec<u64> = map.keys().filter_map(Result::ok).collect();
        for key in keys {
            let _ = map.remove(&key);
        }
    }

    /// Stops the worker (it ends once the last handle is dropped).
    pub fn stop(&mut self) {
        if let Some(worker) = self.worker.take() {
            // Replace our handle's sender so the channel closes once the watcher's clone is gone.
            let (tx, _) = sync_channel(1);
            self.handle.tx = tx;
            let _ = worker.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse() {
        assert_eq!(UnwinderMode::parse("auto"), Some(UnwinderMode::Auto));
        assert_eq!(UnwinderMode::parse("dwarf"), Some(UnwinderMode::Dwarf));
        assert_eq!(
            UnwinderMode::parse("frame-pointers"),
            Some(UnwinderMode::FramePointers)
        );
        assert_eq!(UnwinderMode::parse("lbr"), None);
    }

    #[test]
    fn this_binary_has_an_executable_segment() {
        let data = std::fs::read("/proc/self/exe").expect("read self");
        let segments = executable_segments(&data);
        assert!(!segments.is_empty());
        assert!(segments.iter().all(|(_, _, size)| *size > 0));
    }
}
