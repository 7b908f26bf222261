//! CPU profiler: a perf_event program samples every CPU at the configured rate and aggregates counts
//! per (pid, tid, user stack, kernel stack) in one of two map pairs; userspace flips the active pair
//! and drains the other, so draining never races with sampling. Two tracepoints keep userspace's
//! process table fresh: exec makes a process announce itself again, exit lets userspace forget it.
//! A sample of a thread serving a request (the socket programs keep `THREAD_REQUESTS`) carries
//! that request in its key, so userspace can tie it to the request's span.
//!
//! Off-CPU (opt-in, per process): on `sched_switch`, a thread of a target process that leaves
//! the CPU blocked (not preempted) has its stacks taken into the active slot and its start time
//! kept; when it is switched in again, the time it was away is added under those stacks, with
//! the `OFF_CPU` kind, in the same sample map, so the drain and symbolization are shared.

use crate::counted;
use crate::{
    sockets::{PROCESS_REQUESTS, THREAD_REQUESTS},
    unwind,
};
use aya_ebpf::{
    bindings::{BPF_F_USER_STACK, BPF_NOEXIST},
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, generated::bpf_ktime_get_ns},
    macros::{map, perf_event, tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf, StackTrace},
    programs::{PerfEventContext, TracePointContext, tracing::StackIdContext},
};
use loupe_common::lru;
use loupe_common::{
    COMM_LEN, KNOWN_PID_ENTRIES, OFF_CPU_START_ENTRIES, OffCpuStart, PROCESS_EVENT_RING_BYTES,
    ProcessEvent, ProfilerConfig, SAMPLE_MAP_ENTRIES, STACK_MAP_ENTRIES, SampleKey, SampleValue,
    TARGET_PID_ENTRIES, counter, process_event, sample_kind,
};

#[map]
static PROFILER_CONFIG: Array<ProfilerConfig> = Array::with_max_entries(1, 0);

#[map]
static PROFILER_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

#[map]
static SAMPLES_0: HashMap<SampleKey, SampleValue> =
    HashMap::with_max_entries(SAMPLE_MAP_ENTRIES, 0);
#[map]
static SAMPLES_1: HashMap<SampleKey, SampleValue> =
    HashMap::with_max_entries(SAMPLE_MAP_ENTRIES, 0);
#[map]
static STACKS_0: StackTrace = StackTrace::with_max_entries(STACK_MAP_ENTRIES, 0);
#[map]
static STACKS_1: StackTrace = StackTrace::with_max_entries(STACK_MAP_ENTRIES, 0);

#[map]
static TARGET_PIDS: HashMap<u32, u8> = HashMap::with_max_entries(TARGET_PID_ENTRIES, 0);

#[map]
static KNOWN_PIDS: LruHashMap<u32, u8> = LruHashMap::with_max_entries(KNOWN_PID_ENTRIES, 0);

#[map]
static PROCESS_EVENTS: RingBuf = RingBuf::with_byte_size(PROCESS_EVENT_RING_BYTES, 0);

/// Processes whose off-CPU time is recorded.
#[map]
static OFF_CPU_PIDS: HashMap<u32, u8> = HashMap::with_max_entries(TARGET_PID_ENTRIES, 0);

/// Threads of those processes that are blocked now, keyed by thread id.
#[map]
static OFF_CPU_STARTS: LruHashMap<u32, OffCpuStart> =
    LruHashMap::with_max_entries(OFF_CPU_START_ENTRIES, 0);

#[inline(always)]
pub(crate) fn count(index: u32) {
    if let Some(slot) = PROFILER_COUNTERS.get_ptr_mut(index) {
        // SAFETY: the pointer comes from a successful per-CPU array lookup, so it is valid, aligned
        // and only touched by this CPU while the program runs (per-CPU values, no preemption).
        unsafe { *slot += 1 };
    }
}

#[perf_event]
pub fn profile_cpu(ctx: PerfEventContext) -> u32 {
    let _ = try_profile_cpu(&ctx);
    0
}

fn try_profile_cpu(ctx: &PerfEventContext) -> Result<(), i64> {
    count(counter::SAMPLES);
    let pid_tgid = bpf_get_current_pid_tgid();
    if pid_tgid as u32 == 0 {
        count(counter::IDLE);
        return Ok(());
    }
    let config = PROFILER_CONFIG.get(0).copied().unwrap_or_default();
    // SAFETY: the value is a plain u8 read once; a concurrent update can only change it to another u8.
    if config.filter_pids != 0 && unsafe { TARGET_PIDS.get(&((pid_tgid >> 32) as u32)) }.is_none() {
        count(counter::FILTERED);
        return Ok(());
    }
    if !record_stacks(ctx, &config, pid_tgid, sample_kind::CPU) {
        count(counter::SAMPLE_MAP_FULL);
    }
    Ok(())
}

/// Page faults, sampled every `period` faults by a software perf_event on each CPU: the stacks
/// that touch memory for the first time (RSS growth), as `PAGE_FAULT` keys in the sample maps.
/// The same `--pid` filter as CPU samples; faults of kernel threads are not recorded.
#[perf_event]
pub fn profile_page_faults(ctx: PerfEventContext) -> u32 {
    count(counter::PAGE_FAULT_SAMPLES);
    let pid_tgid = bpf_get_current_pid_tgid();
    if pid_tgid as u32 == 0 {
        return 0;
    }
    let config = PROFILER_CONFIG.get(0).copied().unwrap_or_default();
    // SAFETY: as in `try_profile_cpu`.
    if config.filter_pids != 0 && unsafe { TARGET_PIDS.get(&((pid_tgid >> 32) as u32)) }.is_none() {
        return 0;
    }
    if !record_stacks(&ctx, &config, pid_tgid, sample_kind::PAGE_FAULT) {
        count(counter::PAGE_FAULT_MAP_FULL);
    }
    0
}

/// Adds one sample of `kind` under the current thread's user and kernel stacks, in the active
/// slot; false when the sample map is full.
#[inline(always)]
fn record_stacks(
    ctx: &PerfEventContext,
    config: &ProfilerConfig,
    pid_tgid: u64,
    kind: u32,
) -> bool {
    let pid = (pid_tgid >> 32) as u32;
    let tid = pid_tgid as u32;

    let (samples, stacks) = if config.active_slot == 0 {
        (&SAMPLES_0, &STACKS_0)
    } else {
        (&SAMPLES_1, &STACKS_1)
    };
    let kernel_stack_id = match ctx.get_stackid(stacks, 0) {
        Ok(id) => id as i32,
        Err(errno) => errno,
    };
    let request_ns = current_request(pid_tgid);
    announce_if_new(pid);
    if unwind::wanted(pid) {
        // Returns only when the table walk could not start: frame pointers then.
        unwind::start(ctx, config, pid_tgid, kind, kernel_stack_id, request_ns);
    }
    let user_stack_id = match ctx.get_stackid(stacks, BPF_F_USER_STACK as u64) {
        Ok(id) => id as i32,
        Err(errno) => errno,
    };
    let key = SampleKey {
        pid,
        tid,
        user_stack_id,
        kernel_stack_id,
        request_ns,
        kind,
        _pad: 0,
        dwarf_stack: 0,
    };
    add(samples, &key, 1, None)
}

/// The sample map of `slot`.
#[inline(always)]
pub(crate) fn samples_of_slot(slot: u32) -> &'static HashMap<SampleKey, SampleValue> {
    if slot == 0 { &SAMPLES_0 } else { &SAMPLES_1 }
}

/// Adds `n` to the value under `key`, creating it (with `comm`, or the current task's) when
/// missing; false when the map is full.
#[inline(always)]
pub(crate) fn add(
    samples: &HashMap<SampleKey, SampleValue>,
    key: &SampleKey,
    n: u64,
    comm: Option<[u8; COMM_LEN]>,
) -> bool {
    if increment(samples, key, n) {
        return true;
    }
    let value = SampleValue {
        count: n,
        comm: comm.unwrap_or_else(|| bpf_get_current_comm().unwrap_or([0u8; COMM_LEN])),
    };
    // BPF_NOEXIST: two CPUs may race to create the same key; the loser adds to the winner's entry.
    samples.insert(key, &value, BPF_NOEXIST as u64).is_ok() || increment(samples, key, n)
}

/// `prev_state` bits of a thread that left the CPU blocked: S, D, T, t, P and I (TASK_REPORT
/// and TASK_REPORT_IDLE); a preempted thread reports TASK_REPORT_MAX (0x100) or 0.
const BLOCKED_STATES: i64 = 0xff;
/// X and Z: the thread is exiting, not waiting.
const EXITING_STATES: i64 = 0x30;

#[tracepoint(category = "sched", name = "sched_switch")]
pub fn profile_off_cpu(ctx: TracePointContext) -> u32 {
    let _ = try_off_cpu(&ctx);
    0
}

fn try_off_cpu(ctx: &TracePointContext) -> Result<(), i64> {
    let config = PROFILER_CONFIG.get(0).copied().unwrap_or_default();
    if config.off_cpu == 0 {
        return Ok(());
    }
    let now = now_ns();
    let (samples, stacks) = if config.active_slot == 0 {
        (&SAMPLES_0, &STACKS_0)
    } else {
        (&SAMPLES_1, &STACKS_1)
    };
    // SAFETY: offsets of the record's fields from its tracefs format; read_at checks bounds.
    let prev_state: i64 =
        unsafe { ctx.read_at(config.sched_prev_state_offset as usize) }.map_err(i64::from)?;
    // SAFETY: as above.
    let next_tid: i32 =
        unsafe { ctx.read_at(config.sched_next_pid_offset as usize) }.map_err(i64::from)?;

    // The thread leaving the CPU is the current task: its stacks are at hand.
    let pid_tgid = bpf_get_current_pid_tgid();
    let (pid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    if tid != 0
        && prev_state & BLOCKED_STATES != 0
        && prev_state & EXITING_STATES == 0
        // SAFETY: a plain u8 only tested for presence.
        && unsafe { OFF_CPU_PIDS.get(&pid) }.is_some()
    {
        let start = OffCpuStart {
            start_ns: now,
            request_ns: THREAD_REQUESTS
                .get_ptr(pid_tgid)
                // SAFETY: the pointer comes from a successful lookup; the field is copied out.
                .map_or(0, |r| unsafe { (*r).request_ns }),
            user_stack_id: match ctx.get_stackid(stacks, BPF_F_USER_STACK as u64) {
                Ok(id) => id as i32,
                Err(errno) => errno,
            },
            kernel_stack_id: match ctx.get_stackid(stacks, 0) {
                Ok(id) => id as i32,
                Err(errno) => errno,
            },
            pid,
            slot: config.active_slot,
            comm: bpf_get_current_comm().unwrap_or([0u8; COMM_LEN]),
        };
        counted::put(&OFF_CPU_STARTS, lru::OFF_CPU_STARTS, &tid, &start);
        announce_if_new(pid);
    }

    // The thread coming on: its wait is over.
    if next_tid <= 0 {
        return Ok(());
    }
    let next_tid = next_tid as u32;
    let Some(start) = OFF_CPU_STARTS.get_ptr(&next_tid) else {
        return Ok(());
    };
    // SAFETY: the pointer comes from a successful lookup; the value is copied out before removal.
    let start = unsafe { *start };
    counted::remove(&OFF_CPU_STARTS, lru::OFF_CPU_STARTS, &next_tid);
    let blocked = now.saturating_sub(start.start_ns);
    if blocked < config.off_cpu_min_ns {
        count(counter::OFF_CPU_SHORT);
        return Ok(());
    }
    if start.slot != config.active_slot {
        count(counter::OFF_CPU_LOST);
        return Ok(());
    }
    let key = SampleKey {
        pid: start.pid,
        tid: next_tid,
        user_stack_id: start.user_stack_id,
        kernel_stack_id: start.kernel_stack_id,
        request_ns: start.request_ns,
        kind: sample_kind::OFF_CPU,
        _pad: 0,
        dwarf_stack: 0,
    };
    if add(samples, &key, blocked, Some(start.comm)) {
        count(counter::OFF_CPU_RECORDED);
    } else {
        count(counter::OFF_CPU_LOST);
    }
    Ok(())
}

#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: the helper has no preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// The request the thread serves (see `ThreadRequest`), marked as sampled; 0 when none.
#[inline(always)]
fn current_request(pid_tgid: u64) -> u64 {
    match THREAD_REQUESTS.get_ptr_mut(pid_tgid) {
        Some(r) => {
            // SAFETY: the pointer comes from a successful lookup. The entry belongs to the
            // sampled thread, which is not running a socket program right now (it was
            // interrupted in user or kernel code by this perf event on its own CPU).
            unsafe {
                (*r).sampled = 1;
                (*r).request_ns
            }
        }
        None => 0,
    }
}

/// Adds `n` to the count under `key`; false when there is no such entry.
#[inline(always)]
fn increment(samples: &HashMap<SampleKey, SampleValue>, key: &SampleKey, n: u64) -> bool {
    match samples.get_ptr_mut(key) {
        Some(value) => {
            // SAFETY: the pointer comes from a successful lookup in a preallocated hash map, so it
            // points to a live, aligned value. The key holds the thread id and a thread runs on one
            // CPU at a time (its CPU samples, its switch-in), so no two CPUs update the same entry
            // at once: a plain add is exact.
            unsafe { (*value).count += n };
            true
        }
        None => false,
    }
}

/// Tells userspace the first time a process is sampled, so it can read the process's mappings while
/// the process still runs.
#[inline(always)]
fn announce_if_new(pid: u32) {
    // SAFETY: the value is a plain u8 only tested for presence.
    if unsafe { KNOWN_PIDS.get(&pid) }.is_some() {
        return;
    }
    if !counted::put(&KNOWN_PIDS, lru::KNOWN_PIDS, &pid, &1) {
        return;
    }
    emit(process_event::SAMPLED, pid);
}

#[inline(always)]
fn emit(kind: u32, pid: u32) {
    let event = ProcessEvent {
        kind,
        pid,
        comm: bpf_get_current_comm().unwrap_or([0u8; COMM_LEN]),
    };
    if PROCESS_EVENTS.output::<ProcessEvent>(&event, 0).is_err() {
        count(counter::PROCESS_EVENTS_LOST);
    }
}

/// A process replaced its image: forget it, so its next sample announces the new mappings.
#[tracepoint(category = "sched", name = "sched_process_exec")]
pub fn profile_exec(_ctx: TracePointContext) -> u32 {
    let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    counted::remove(&KNOWN_PIDS, lru::KNOWN_PIDS, &pid);
    0
}

/// A thread exited: its request entry goes. A thread group leader: its process's request entry
/// goes too, and userspace is told it may drop the process after the next drain.
#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn profile_exit(_ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    // Looked up first: most threads never served a request (a delete that finds nothing costs
    // more than a lookup). Left, the entry would wait for the LRU to evict it, and counted
    // evictions would not tell a lost link from a dead thread.
    if THREAD_REQUESTS.get_ptr(&pid_tgid).is_some() {
        counted::remove(&THREAD_REQUESTS, lru::THREAD_REQUESTS, &pid_tgid);
    }
    let pid = (pid_tgid >> 32) as u32;
    if pid != pid_tgid as u32 {
        return 0;
    }
    if PROCESS_REQUESTS.get_ptr(&pid).is_some() {
        counted::remove(&PROCESS_REQUESTS, lru::PROCESS_REQUESTS, &pid);
    }
    if counted::remove(&KNOWN_PIDS, lru::KNOWN_PIDS, &pid) {
        emit(process_event::EXIT, pid);
    }
    0
}
