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

/// Key of the in-kernel sample aggregation: one entry per distinct (process, thread, stacks).
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
}

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
    /// Number of counters.
    pub const COUNT: u32 = 5;
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
    // SAFETY: all four are #[repr(C)], Copy, made only of integers and integer arrays with no padding
    // bytes (sizes checked below), so every bit pattern is a valid value.
    unsafe impl aya::Pod for super::SampleKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SampleValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ProfilerConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ProcessEvent {}
}

// Layouts are part of the kernel/user contract: any change must be deliberate.
const _: () = assert!(core::mem::size_of::<SampleKey>() == 16);
const _: () = assert!(core::mem::size_of::<SampleValue>() == 24);
const _: () = assert!(core::mem::size_of::<ProfilerConfig>() == 8);
const _: () = assert!(core::mem::size_of::<ProcessEvent>() == 24);
