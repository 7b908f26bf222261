//! CPU profiler: a perf_event program samples every CPU at the configured rate and aggregates counts
//! per (pid, tid, user stack, kernel stack) in one of two map pairs; userspace flips the active pair
//! and drains the other, so draining never races with sampling. Two tracepoints keep userspace's
//! process table fresh: exec makes a process announce itself again, exit lets userspace forget it.
//! A sample of a thread serving a request (the socket programs keep `THREAD_REQUESTS`) carries
//! that request in its key, so userspace can tie it to the request's span.

use crate::sockets::THREAD_REQUESTS;
use aya_ebpf::{
    bindings::{BPF_F_USER_STACK, BPF_NOEXIST},
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid},
    macros::{map, perf_event, tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf, StackTrace},
    programs::{PerfEventContext, TracePointContext, tracing::StackIdContext},
};
use loupe_common::{
    COMM_LEN, KNOWN_PID_ENTRIES, PROCESS_EVENT_RING_BYTES, ProcessEvent, ProfilerConfig,
    SAMPLE_MAP_ENTRIES, STACK_MAP_ENTRIES, SampleKey, SampleValue, TARGET_PID_ENTRIES, counter,
    process_event,
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

#[inline(always)]
fn count(index: u32) {
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
    let pid = (pid_tgid >> 32) as u32;
    let tid = pid_tgid as u32;
    if tid == 0 {
        count(counter::IDLE);
        return Ok(());
    }
    let config = PROFILER_CONFIG.get(0).copied().unwrap_or_default();
    // SAFETY: the value is a plain u8 read once; a concurrent update can only change it to another u8.
    if config.filter_pids != 0 && unsafe { TARGET_PIDS.get(&pid) }.is_none() {
        count(counter::FILTERED);
        return Ok(());
    }

    let (samples, stacks) = if config.active_slot == 0 {
        (&SAMPLES_0, &STACKS_0)
    } else {
        (&SAMPLES_1, &STACKS_1)
    };
    let user_stack_id = match ctx.get_stackid(stacks, BPF_F_USER_STACK as u64) {
        Ok(id) => id as i32,
        Err(errno) => errno,
    };
    let kernel_stack_id = match ctx.get_stackid(stacks, 0) {
        Ok(id) => id as i32,
        Err(errno) => errno,
    };
    let key = SampleKey {
        pid,
        tid,
        user_stack_id,
        kernel_stack_id,
        request_ns: current_request(pid_tgid),
    };
    if !increment(samples, &key) {
        let value = SampleValue {
            count: 1,
            comm: bpf_get_current_comm().unwrap_or([0u8; COMM_LEN]),
        };
        // BPF_NOEXIST: two CPUs may race to create the same key; the loser adds to the winner's entry.
        if samples.insert(&key, &value, BPF_NOEXIST as u64).is_err() && !increment(samples, &key) {
            count(counter::SAMPLE_MAP_FULL);
        }
    }
    announce_if_new(pid);
    Ok(())
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

/// Adds one to the count under `key`; false when there is no such entry.
#[inline(always)]
fn increment(samples: &HashMap<SampleKey, SampleValue>, key: &SampleKey) -> bool {
    match samples.get_ptr_mut(key) {
        Some(value) => {
            // SAFETY: the pointer comes from a successful lookup in a preallocated hash map, so it
            // points to a live, aligned value. The key holds the thread id and a thread runs on one
            // CPU at a time, so no two CPUs update the same entry at once: a plain add is exact.
            unsafe { (*value).count += 1 };
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
    if KNOWN_PIDS.insert(&pid, &1, 0).is_err() {
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
    let _ = KNOWN_PIDS.remove(&pid);
    0
}

/// A thread group leader exited: tell userspace it may drop the process after the next drain.
#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn profile_exit(_ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let pid = (pid_tgid >> 32) as u32;
    if pid != pid_tgid as u32 {
        return 0;
    }
    if KNOWN_PIDS.remove(&pid).is_ok() {
        emit(process_event::EXIT, pid);
    }
    0
}
