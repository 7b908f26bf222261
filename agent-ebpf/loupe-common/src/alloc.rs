use super::{COMM_LEN, MAX_STACK_DEPTH};

/// Sampled blocks tracked until freed, all processes together (beyond it a sampled block
/// still counts as allocated, but not as in use; counted).
pub const LIVE_ENTRIES: u32 = 64 * 1024;
/// Threads between an allocator call's entry and its return, or holding a sampling state (LRU).
pub const THREAD_ENTRIES: u32 = 16 * 1024;
/// Processes `--alloc-pid` may name.
pub const PID_ENTRIES: u32 = 256;
/// Bytes of the ring buffer carrying sampled allocations and frees (a power of two, multiple
/// of the page size). An [`AllocEvent`] is ~1 KiB: this holds ~1,000 of them, read every
/// 100 ms (at the default 512 KiB interval, 5 GB/s of allocations).
pub const RING_BYTES: u32 = 1024 * 1024;

/// Settings userspace writes into the single-entry `ALLOC_CONFIG` array.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default)]
pub struct AllocConfig {
    /// Mean bytes allocated between two samples; 0 stops sampling (frees are still tracked).
    pub sample_bytes: u64,
}

/// What an event on the allocation ring reports (its first field).
pub mod event {
    /// An [`super::AllocEvent`]: a sampled block was allocated.
    pub const ALLOC: u32 = 1;
    /// A [`super::FreeEvent`]: a sampled block was freed.
    pub const FREE: u32 = 2;
}

/// A sampled allocation, sent from the allocator's return (where the block's address is known,
/// and the user stack starts at the caller).
#[repr(C)]
#[derive(Copy, Clone, Debug)]
pub struct AllocEvent {
    /// [`event::ALLOC`].
    pub kind: u32,
    pub pid: u32,
    pub tid: u32,
    /// Frames in `ips` (0 when the stack could not be read).
    pub frames: u32,
    /// Address of the block.
    pub addr: u64,
    /// Size asked for.
    pub size: u64,
    /// Bytes this sample stands for: a multiple of the mean sampling interval.
    pub bytes: u64,
    /// Objects this sample stands for: `bytes` ÷ `size`, at least 1.
    pub objects: u64,
    pub comm: [u8; COMM_LEN],
    /// User stack, innermost (the allocator's caller) first.
    pub ips: [u64; MAX_STACK_DEPTH],
}

/// A sampled block was freed (or given back by `realloc`).
#[repr(C)]
#[derive(Copy, Clone, Debug)]
pub struct FreeEvent {
    /// [`event::FREE`].
    pub kind: u32,
    pub pid: u32,
    pub addr: u64,
}

/// Key of the kernel's set of sampled blocks not yet freed.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct LiveKey {
    pub pid: u32,
    pub _pad: u32,
    pub addr: u64,
}

/// A sampled call between its entry and its return, keyed by thread.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default)]
pub struct PendingAlloc {
    pub size: u64,
    pub bytes: u64,
    pub objects: u64,
}

/// Indices of the per-CPU `ALLOC_COUNTERS` array.
pub mod counter {
    /// Allocator calls seen (malloc, calloc, realloc).
    pub const CALLS: u32 = 0;
    /// Calls sampled.
    pub const SAMPLED: u32 = 1;
    /// Sampled calls that returned no block (NULL).
    pub const FAILED: u32 = 2;
    /// Sampled allocations or frees lost because the ring buffer was full.
    pub const RING_FULL: u32 = 3;
    /// Sampled blocks not tracked for in-use because the live set was full.
    pub const LIVE_FULL: u32 = 4;
    /// Sampled calls whose pending state was lost (thread map full).
    pub const PENDING_LOST: u32 = 5;
    /// Frees of sampled blocks.
    pub const FREES: u32 = 6;
    /// Number of counters.
    pub const COUNT: u32 = 7;
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)], Copy, integers and integer arrays only, no implicit padding (sizes are
    // asserted below), so every bit pattern is valid.
    unsafe impl aya::Pod for super::AllocConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::AllocEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FreeEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::LiveKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PendingAlloc {}
}

const _: () = assert!(core::mem::size_of::<AllocConfig>() == 8);
const _: () = assert!(core::mem::size_of::<AllocEvent>() == 64 + 8 * MAX_STACK_DEPTH);
const _: () = assert!(core::mem::size_of::<FreeEvent>() == 16);
const _: () = assert!(core::mem::size_of::<LiveKey>() == 16);
const _: () = assert!(core::mem::size_of::<PendingAlloc>() == 24);
