//! Structs and constants shared by Loupe's kernel programs (`loupe-ebpf`) and the userspace agent.
//!
//! Everything here is `#[repr(C)]`, `Copy`, free of `bool` and padded explicitly, so the byte layout the
//! kernel writes is the one userspace reads. The `user` feature adds `aya::Pod` for reading maps.
#![no_std]

/// Deepest stack the kernel records (the kernel's `PERF_MAX_STACK_DEPTH`).
pub const MAX_STACK_DEPTH: usize = 127;

/// Distinct stacks each of the two stack-trace maps holds per drain interval.
pub const STACK_MAP_ENTRIES: u32 = 16 * 1024;

/// Distinct (pid, tid, user stack, kernel stack) keys each of the two count maps holds per drain interval.
pub const SAMPLE_MAP_ENTRIES: u32 = 16 * 1024;

/// Processes `--pid` may name.
pub const TARGET_PID_ENTRIES: u32 = 1024;

/// Processes remembered as already announced to userspace (LRU; a forgotten one is announced again).
pub const KNOWN_PID_ENTRIES: u32 = 8 * 1024;

/// Bytes of the ring buffer carrying process events (a power of two, multiple of the page size).
pub const PROCESS_EVENT_RING_BYTES: u32 = 256 * 1024;

/// Length of a task's `comm`, NUL included (the kernel's `TASK_COMM_LEN`).
pub const COMM_LEN: usize = 16;

/// Key of the in-kernel sample aggregation: one entry per distinct (process, thread, stacks,
/// request).
///
/// A negative stack id is the errno `bpf_get_stackid` returned: `-EFAULT` for a thread without a user
/// stack (kernel threads), `-EEXIST` when the stack hashed onto a bucket holding another stack, `-ENOMEM`
/// when the stack map was full.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct SampleKey {
    pub pid: u32,
    pub tid: u32,
    pub user_stack_id: i32,
    pub kernel_stack_id: i32,
    /// The request the thread was serving when sampled (see [`socket::ThreadRequest`]): with
    /// `pid` it names the request; 0 when the thread served none.
    pub request_ns: u64,
    /// One of [`sample_kind`]: what the value counts.
    pub kind: u32,
    pub _pad: u32,
    /// With `user_stack_id` [`unwind::DWARF_STACK_ID`]: the key of the user stack in the slot's
    /// `DWARF_STACKS` map (walked with unwind tables); 0 otherwise.
    pub dwarf_stack: u64,
}

/// DWARF unwinding (x86-64): each executable or library gets its unwind table, rows built by
/// userspace from `.eh_frame`/`.debug_frame` and stored as one range of the shared `UNWIND_ROWS`
/// array; `UNWIND_PROCS` lists, per process, its mappings and their tables' ranges. The
/// perf_event program hands a sample of such a process to `unwind_step`, which walks a bounded
/// number of frames per run and tail-calls itself, then stores the stack in `DWARF_STACKS`.
pub mod unwind;

/// What a [`SampleKey`]'s value counts.
pub mod sample_kind {
    /// CPU samples (perf_event), counted one by one.
    pub const CPU: u32 = 0;
    /// Off-CPU: nanoseconds the thread spent blocked with this stack (sched_switch).
    pub const OFF_CPU: u32 = 1;
    /// Page faults (a software perf_event firing every `period` faults), counted one by one.
    pub const PAGE_FAULT: u32 = 2;
}

/// A thread of an off-CPU target that blocked: value of `OFF_CPU_STARTS`, keyed by thread id,
/// until the thread runs again.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default)]
pub struct OffCpuStart {
    /// `bpf_ktime_get_ns()` when it left the CPU.
    pub start_ns: u64,
    /// The request the thread was serving (see [`SampleKey::request_ns`]).
    pub request_ns: u64,
    pub user_stack_id: i32,
    pub kernel_stack_id: i32,
    pub pid: u32,
    /// The slot whose stack map holds the stacks: a block spanning a drain is not recorded.
    pub slot: u32,
    pub comm: [u8; COMM_LEN],
}

/// Threads of off-CPU targets blocked at once (`OFF_CPU_STARTS`, LRU).
pub const OFF_CPU_START_ENTRIES: u32 = 16 * 1024;

/// Value of the sample aggregation.
#[repr(C)]
#[derive(Copy, Clone, Debug)]
pub struct SampleValue {
    /// Samples taken with this key since the slot was last drained.
    pub count: u64,
    /// The thread's `comm` at its first sample.
    pub comm: [u8; COMM_LEN],
}

/// Settings userspace writes into the single-entry `PROFILER_CONFIG` array.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default)]
pub struct ProfilerConfig {
    /// Which of the two (sample, stack) map pairs the kernel writes to: 0 or 1. Userspace flips it,
    /// then drains the other pair undisturbed.
    pub active_slot: u32,
    /// Non-zero: only processes present in `TARGET_PIDS` are sampled.
    pub filter_pids: u32,
    /// Non-zero: record off-CPU time of the processes in `OFF_CPU_PIDS`.
    pub off_cpu: u32,
    /// Offsets in the `sched:sched_switch` tracepoint record of `prev_state` (a `long`) and
    /// `next_pid`, from its tracefs format.
    pub sched_prev_state_offset: u32,
    pub sched_next_pid_offset: u32,
    pub _pad: u32,
    /// Blocks shorter than this are not recorded (counted).
    pub off_cpu_min_ns: u64,
    /// Offset of `stack` in `struct task_struct` (from BTF), so a sample taken in the kernel can
    /// find the task's user registers at the top of its kernel stack; 0 when unknown (such samples
    /// of DWARF-unwound processes fall back to frame pointers).
    pub task_stack_offset: u32,
    /// Bytes of a task's kernel stack (`THREAD_SIZE`: 16 KiB on x86-64 without KASAN).
    pub thread_size: u32,
}

/// Indices of the per-CPU `PROFILER_COUNTERS` array: things the kernel side counts for the metrics.
pub mod counter {
    /// perf_event samples that fired (idle and filtered included).
    pub const SAMPLES: u32 = 0;
    /// Samples on an idle CPU (the swapper task), not recorded.
    pub const IDLE: u32 = 1;
    /// Samples of processes outside the `--pid` filter, not recorded.
    pub const FILTERED: u32 = 2;
    /// Samples lost because the sample map of the active slot was full.
    pub const SAMPLE_MAP_FULL: u32 = 3;
    /// Process announcements lost because the ring buffer was full.
    pub const PROCESS_EVENTS_LOST: u32 = 4;
    /// Off-CPU blocks recorded.
    pub const OFF_CPU_RECORDED: u32 = 5;
    /// Off-CPU blocks shorter than the minimum, not recorded.
    pub const OFF_CPU_SHORT: u32 = 6;
    /// Off-CPU blocks not recorded: they spanned a drain (their stacks went with it), or the
    /// sample map was full.
    pub const OFF_CPU_LOST: u32 = 7;
    /// Page-fault samples that fired (idle and filtered included).
    pub const PAGE_FAULT_SAMPLES: u32 = 8;
    /// Page-fault samples lost because the sample map of the active slot was full.
    pub const PAGE_FAULT_MAP_FULL: u32 = 9;
    /// User stacks walked with unwind tables (processes in `UNWIND_PROCS`).
    pub const DWARF_STACKS: u32 = 10;
    /// Frames of those stacks found through an unwind table row.
    pub const DWARF_FRAMES: u32 = 11;
    /// Frames of those stacks found through the frame pointer: no table covered their code.
    pub const DWARF_FP_FRAMES: u32 = 12;
    /// Those stacks that reached the outermost frame (the table says the return address is
    /// undefined there: `_start`, a thread's start routine).
    pub const DWARF_COMPLETE: u32 = 13;
    /// Those stacks cut short at `MAX_STACK_DEPTH` frames.
    pub const DWARF_TOO_DEEP: u32 = 14;
    /// Those stacks that ended on a row the kernel cannot follow (a CFA rule other than
    /// rsp/rbp plus an offset), or on unreadable stack memory.
    pub const DWARF_STOPPED: u32 = 15;
    /// Samples taken in the kernel whose user registers could not be found (the task's
    /// `pt_regs`): their user stack was walked with frame pointers instead.
    pub const DWARF_NO_USER_REGS: u32 = 16;
    /// DWARF stacks lost because the slot's `DWARF_STACKS` map was full (the sample keeps no user
    /// stack).
    pub const DWARF_STACK_MAP_FULL: u32 = 17;
    /// Number of counters.
    pub const COUNT: u32 = 18;
}

/// What a [`ProcessEvent`] announces.
pub mod process_event {
    /// A process was sampled for the first time (or for the first time since it called exec).
    pub const SAMPLED: u32 = 1;
    /// A process called exec: its mappings changed.
    pub const EXEC: u32 = 2;
    /// A process (thread group) exited.
    pub const EXIT: u32 = 3;
}

/// An event on the process ring buffer, so userspace can capture a process's mappings and name while it
/// still runs (a short-lived process is gone by the time its samples are drained).
#[repr(C)]
#[derive(Copy, Clone, Debug)]
pub struct ProcessEvent {
    /// One of [`process_event`].
    pub kind: u32,
    pub pid: u32,
    pub comm: [u8; COMM_LEN],
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of them are #[repr(C)], Copy, made only of integers and integer arrays with no padding
    // bytes (sizes checked below), so every bit pattern is a valid value.
    unsafe impl aya::Pod for super::SampleKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SampleValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ProfilerConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ProcessEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::OffCpuStart {}
}

// Layouts are part of the kernel/user contract: any change must be deliberate.
const _: () = assert!(core::mem::size_of::<SampleKey>() == 40);
const _: () = assert!(core::mem::size_of::<OffCpuStart>() == 48);
const _: () = assert!(core::mem::size_of::<SampleValue>() == 24);
const _: () = assert!(core::mem::size_of::<ProfilerConfig>() == 40);
const _: () = assert!(core::mem::size_of::<ProcessEvent>() == 24);

/// Socket capture for network spans: events the kernel programs emit per TCP connection.
pub mod socket;

/// Allocation profiles (opt-in, per process): uprobes on the process's allocator sample the calls
/// every [`alloc::AllocConfig::sample_bytes`] bytes on average, and track the sampled blocks until
/// they are freed, so userspace can build allocated and in-use profiles.
pub mod alloc;

/// Accounting of the LRU hash maps. An LRU map never refuses an insert: when it is full the
/// kernel evicts its least recently used entry, and no hook tells anyone. So the programs count
/// each map's inserts of new keys and its deletes in the per-CPU `LRU_COUNTERS` array (two slots a
/// map: [`lru::inserted`] and [`lru::deleted`]), and userspace, which can count the entries left,
/// derives the evictions: inserted − deleted − live.
pub mod lru {
    /// The LRU maps, by the index their counters use. Userspace opens them by these names.
    pub const MAPS: [&str; 15] = [
        "THREAD_REQUESTS",
        "PROCESS_REQUESTS",
        "CLIENT_PARENTS",
        "TCP_CTX_OUT",
        "TCP_CTX_IN",
        "LOG_RATES",
        "TLS_FDS",
        "GO_TLS_CALLS",
        "GO_REQUESTS",
        "GO_HTTP_CONNS",
        "GO_HTTP_WRITERS",
        "KNOWN_PIDS",
        "OFF_CPU_STARTS",
        "ALLOC_COUNTDOWN",
        "ALLOC_PENDING",
    ];
    pub const THREAD_REQUESTS: u32 = 0;
    pub const PROCESS_REQUESTS: u32 = 1;
    pub const CLIENT_PARENTS: u32 = 2;
    pub const TCP_CTX_OUT: u32 = 3;
    pub const TCP_CTX_IN: u32 = 4;
    pub const LOG_RATES: u32 = 5;
    pub const TLS_FDS: u32 = 6;
    pub const GO_TLS_CALLS: u32 = 7;
    pub const GO_REQUESTS: u32 = 8;
    pub const GO_HTTP_CONNS: u32 = 9;
    pub const GO_HTTP_WRITERS: u32 = 10;
    pub const KNOWN_PIDS: u32 = 11;
    pub const OFF_CPU_STARTS: u32 = 12;
    pub const ALLOC_COUNTDOWN: u32 = 13;
    pub const ALLOC_PENDING: u32 = 14;

    /// Slots of `LRU_COUNTERS`.
    pub const COUNTERS: u32 = 2 * MAPS.len() as u32;

    /// The slot counting the keys inserted into map `map` (inserts that replaced an existing key's
    /// value are not counted).
    pub const fn inserted(map: u32) -> u32 {
        2 * map
    }

    /// The slot counting the keys deleted from map `map`.
    pub const fn deleted(map: u32) -> u32 {
        2 * map + 1
    }
}

const _: () = assert!(lru::ALLOC_PENDING as usize == lru::MAPS.len() - 1);
