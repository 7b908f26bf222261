//! Allocation profiles (opt-in, per process): uprobes on the allocator the process really uses
//! (userspace finds it: the executable's own, jemalloc's, glibc's). Each thread counts down the
//! bytes it asks for; when the count crosses zero the call is sampled, with the weight of the
//! sampling intervals it crossed, and the next interval is drawn at random (mean
//! `sample_bytes`), so a sample stands for `sample_bytes` bytes on average whatever the call
//! pattern and sizes. A sampled call's state waits in `ALLOC_PENDING` until the call returns: the return
//! probe has the block's address and a user stack that starts at the caller; it sends the block
//! to userspace with that stack and keeps its address in `ALLOC_LIVE` until `free` (or `realloc`)
//! gives it back, which is sent too. Calls that are not sampled cost a map lookup and an update.

use crate::counted;
use aya_ebpf::{
    EbpfContext,
    bindings::BPF_F_USER_STACK,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid,
        generated::{bpf_get_prandom_u32, bpf_get_stack},
    },
    macros::{map, uprobe, uretprobe},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{ProbeContext, RetProbeContext},
};
use loupe_common::lru;
use loupe_common::{
    COMM_LEN, MAX_STACK_DEPTH,
    alloc::{
        AllocConfig, AllocEvent, FreeEvent, LIVE_ENTRIES, LiveKey, PID_ENTRIES, PendingAlloc,
        RING_BYTES, THREAD_ENTRIES, counter, event,
    },
};

#[map]
static ALLOC_CONFIG: Array<AllocConfig> = Array::with_max_entries(1, 0);

#[map]
static ALLOC_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Processes whose allocations are sampled (the uprobes are attached per process; this guards
/// against another process mapping the same file through a shared attachment).
#[map]
static ALLOC_PIDS: HashMap<u32, u8> = HashMap::with_max_entries(PID_ENTRIES, 0);

/// Bytes each thread may still allocate before its next sample, by thread id.
#[map]
static ALLOC_COUNTDOWN: LruHashMap<u32, u64> = LruHashMap::with_max_entries(THREAD_ENTRIES, 0);

/// Sampled calls between entry and return, by thread id.
#[map]
static ALLOC_PENDING: LruHashMap<u32, PendingAlloc> =
    LruHashMap::with_max_entries(THREAD_ENTRIES, 0);

/// Sampled blocks not freed yet.
#[map]
static ALLOC_LIVE: HashMap<LiveKey, u8> = HashMap::with_max_entries(LIVE_ENTRIES, 0);

#[map]
static ALLOC_EVENTS: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);

/// Crossings of one call drawn at random before the rest are counted by division.
const MAX_DRAWN_CROSSINGS: u32 = 8;

#[inline(always)]
fn count(index: u32) {
    if let Some(slot) = ALLOC_COUNTERS.get_ptr_mut(index) {
        // SAFETY: the pointer comes from a successful per-CPU array lookup: valid, aligned, and
        // only this CPU touches it while the program runs.
        unsafe { *slot += 1 };
    }
}

#[uprobe]
pub fn alloc_malloc(ctx: ProbeContext) -> u32 {
    if let Some(size) = ctx.arg::<u64>(0) {
        enter(size);
    }
    0
}

#[uprobe]
pub fn alloc_calloc(ctx: ProbeContext) -> u32 {
    if let (Some(n), Some(size)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1)) {
        // No 128-bit multiply in BPF (which an overflow check compiles to): factors below 2^32
        // cannot overflow, and a larger call would fail anyway.
        let total = if n >> 32 != 0 || size >> 32 != 0 {
            u64::MAX
        } else {
            n * size
        };
        enter(total);
    }
    0
}

/// `realloc(ptr, size)`: gives `ptr` back, then allocates `size` (its return is `alloc_return`).
#[uprobe]
pub fn alloc_realloc(ctx: ProbeContext) -> u32 {
    if let Some(ptr) = ctx.arg::<u64>(0) {
        release(ptr);
    }
    if let Some(size) = ctx.arg::<u64>(1)
        && size > 0
    {
        enter(size);
    }
    0
}

#[uprobe]
pub fn alloc_free(ctx: ProbeContext) -> u32 {
    if let Some(ptr) = ctx.arg::<u64>(0) {
        release(ptr);
    }
    0
}

/// The return of malloc, calloc and realloc.
#[uretprobe]
pub fn alloc_return(ctx: RetProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    let Some(pending) = ALLOC_PENDING.get_ptr(&tid) else {
        return 0;
    };
    // SAFETY: the pointer comes from a successful lookup; the value is copied out before removal.
    let pending = unsafe { *pending };
    counted::remove(&ALLOC_PENDING, lru::ALLOC_PENDING, &tid);
    let addr: u64 = ctx.ret();
    if addr == 0 {
        count(counter::FAILED);
        return 0;
    }
    let pid = (pid_tgid >> 32) as u32;
    let Some(mut entry) = ALLOC_EVENTS.reserve::<AllocEvent>(0) else {
        count(counter::RING_FULL);
        return 0;
    };
    let e = entry.as_mut_ptr();
    // SAFETY: `e` points to a reserved ring-buffer record the size of an `AllocEvent`, which this
    // program owns until it submits it; fields are written through raw pointers, without
    // building the 1 KiB struct on the 512-byte BPF stack.
    let written = unsafe {
        (*e).kind = event::ALLOC;
        (*e).pid = pid;
        (*e).tid = tid;
        (*e).addr = addr;
        (*e).size = pending.size;
        (*e).bytes = pending.bytes;
        (*e).objects = pending.objects;
        (*e).comm = bpf_get_current_comm().unwrap_or([0u8; COMM_LEN]);
        bpf_get_stack(
            ctx.as_ptr(),
            core::ptr::addr_of_mut!((*e).ips).cast(),
            (MAX_STACK_DEPTH * 8) as u32,
            BPF_F_USER_STACK as u64,
        )
    };
    let frames = if written > 0 { written as u32 / 8 } else { 0 };
    // SAFETY: as above.
    unsafe { (*e).frames = frames };
    // The block goes into the live set first: a free of it on another CPU finds it only after,
    // and its event is reserved after this one, so userspace reads the allocation first.
    let key = LiveKey { pid, _pad: 0, addr };
    if ALLOC_LIVE.insert(&key, &1, 0).is_err() {
        count(counter::LIVE_FULL);
    }
    entry.submit(0);
    0
}

/// Decides whether a call asking for `size` bytes is sampled, and if so keeps its weight until
/// its return.
#[inline(always)]
fn enter(size: u64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: a plain u8 only tested for presence.
    if unsafe { ALLOC_PIDS.get(&((pid_tgid >> 32) as u32)) }.is_none() {
        return;
    }
    count(counter::CALLS);
    let Some(config) = ALLOC_CONFIG.get(0) else {
        return;
    };
    let rate = config.sample_bytes;
    if rate == 0 {
        return;
    }
    let tid = pid_tgid as u32;
    let remaining = match ALLOC_COUNTDOWN.get_ptr_mut(&tid) {
        // SAFETY: the pointer comes from a successful lookup; the entry belongs to this thread,
        // which is the only one to update it.
        Some(r) => unsafe { &mut *r },
        None => {
            let first = next_interval(rate);
            if !counted::put(&ALLOC_COUNTDOWN, lru::ALLOC_COUNTDOWN, &tid, &first) {
                return;
            }
            match ALLOC_COUNTDOWN.get_ptr_mut(&tid) {
                // SAFETY: as above.
                Some(r) => unsafe { &mut *r },
                None => return,
            }
        }
    };
    if size < *remaining {
        *remaining -= size;
        return;
    }
    // The call crosses the current interval's end, and maybe more: each next interval is drawn
    // and consumed by the rest of the call in turn (a renewal process, so the expected number
    // of crossings is size ÷ rate exactly), by division past the first few.
    let mut past = size - *remaining;
    let mut crossings = 1u64;
    let mut next = 0;
    for _ in 0..MAX_DRAWN_CROSSINGS {
        let interval = next_interval(rate);
        if past < interval {
            next = interval - past;
            break;
        }
        past -= interval;
        crossings += 1;
    }
    if next == 0 {
        crossings += past / rate;
        next = rate - past % rate;
    }
    *remaining = next;
    // crossings × rate ≤ size + (MAX_DRAWN_CROSSINGS + 1) × 2 × rate: no overflow for the sizes
    // an allocator can return, and no 128-bit multiply (which BPF lacks) for a saturating one.
    let bytes = crossings.wrapping_mul(rate);
    let pending = PendingAlloc {
        size,
        bytes,
        objects: (bytes / size.max(1)).max(1),
    };
    count(counter::SAMPLED);
    if !counted::put(&ALLOC_PENDING, lru::ALLOC_PENDING, &tid, &pending) {
        count(counter::PENDING_LOST);
    }
}

/// An interval drawn uniformly from [1, 2 × rate]: mean rate, and no call pattern can keep
/// landing on the same caller.
#[inline(always)]
fn next_interval(rate: u64) -> u64 {
    // SAFETY: the helper has no preconditions.
    let (hi, lo) = unsafe { (bpf_get_prandom_u32(), bpf_get_prandom_u32()) };
    let r = u64::from(hi) << 32 | u64::from(lo);
    // Userspace caps the rate far below 2^63.
    1 + r % (rate << 1).max(1)
}

/// Forgets `ptr` if it is a sampled block, and tells userspace.
#[inline(always)]
fn release(ptr: u64) {
    if ptr == 0 {
        return;
    }
    let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let key = LiveKey {
        pid,
        _pad: 0,
        addr: ptr,
    };
    if ALLOC_LIVE.remove(&key).is_err() {
        return;
    }
    count(counter::FREES);
    let e = FreeEvent {
        kind: event::FREE,
        pid,
        addr: ptr,
    };
    if ALLOC_EVENTS.output::<FreeEvent>(&e, 0).is_err() {
        count(counter::RING_FULL);
    }
}
