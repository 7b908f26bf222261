use super::MAX_STACK_DEPTH;

/// `SampleKey::user_stack_id` of a sample whose user stack is in `DWARF_STACKS`.
pub const DWARF_STACK_ID: i32 = i32::MAX;

/// Rows `UNWIND_ROWS` holds by default (8 bytes each), shared by every table.
pub const DEFAULT_ROWS: u32 = 1024 * 1024;

/// Executable mappings with a table one process can have (the largest tables win).
pub const MAX_MAPPINGS: usize = 64;

/// Processes unwound with tables at once.
pub const MAX_PROCS: u32 = 1024;

/// Distinct DWARF-walked user stacks each slot holds per drain interval.
pub const STACK_ENTRIES: u32 = 4 * 1024;

/// Frames `unwind_step` walks per run; it tail-calls itself for more.
pub const FRAMES_PER_RUN: u32 = 8;

/// One row of a binary's unwind table: from `pc` (a virtual address of the ELF file) up to the
/// next row's `pc`, how to find the caller's frame. Rows are sorted by `pc`.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct UnwindRow {
    pub pc: u32,
    /// Bytes added to the CFA register (see [`row_kind`]).
    pub cfa_offset: u16,
    /// One of [`row_kind`].
    pub kind: u8,
    /// The caller's `rbp` is saved at CFA + 8 × this; 0 when this frame leaves `rbp` as it is.
    pub rbp_offset: i8,
}

/// How an [`UnwindRow`] finds the CFA (the caller's stack pointer before its call; the return
/// address is at CFA − 8 on x86-64).
pub mod row_kind {
    /// No row: code between functions, or a rule the kernel cannot follow. The frame pointer is
    /// tried instead.
    pub const NONE: u8 = 0;
    /// CFA = rsp + offset.
    pub const CFA_RSP: u8 = 1;
    /// CFA = rbp + offset.
    pub const CFA_RBP: u8 = 2;
    /// A PLT stub: CFA = rsp + offset, plus 8 once past the stub's push (pc & 15 ≥ 11).
    pub const PLT: u8 = 3;
    /// The outermost frame: the return address is undefined (`_start`, thread entry).
    pub const END: u8 = 4;
}

/// One executable mapping of a process: addresses `start..end` run the file whose table is
/// `UNWIND_ROWS[table_start..table_start + table_len]`; `pc - bias` is the file's address.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub bias: u64,
    pub table_start: u32,
    pub table_len: u32,
}

/// Value of `UNWIND_PROCS`: a process's mappings with tables, sorted by `start`, not
/// overlapping.
#[repr(C)]
#[derive(Copy, Clone, Debug)]
pub struct ProcessMappings {
    pub count: u32,
    pub _pad: u32,
    pub mappings: [Mapping; MAX_MAPPINGS],
}

/// A walked user stack: `pcs[..len]`, innermost first (value of `DWARF_STACKS`).
#[repr(C)]
#[derive(Copy, Clone, Debug)]
pub struct UserStack {
    pub len: u64,
    pub pcs: [u64; MAX_STACK_DEPTH + 1],
}

/// Per-CPU scratch of a walk in progress, carried across tail calls.
#[repr(C)]
#[derive(Copy, Clone, Debug)]
pub struct UnwindState {
    pub pc: u64,
    pub sp: u64,
    pub bp: u64,
    pub runs: u32,
    /// One of `sample_kind`.
    pub kind: u32,
    pub pid: u32,
    pub tid: u32,
    pub kernel_stack_id: i32,
    pub slot: u32,
    pub request_ns: u64,
    /// Hash of `stack.pcs[..stack.len]`, folded in frame by frame: the `DWARF_STACKS` key.
    pub hash: u64,
    pub stack: UserStack,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)], Copy, integers and integer arrays only, no implicit padding (sizes are
    // asserted below), so every bit pattern is valid.
    unsafe impl aya::Pod for super::UnwindRow {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Mapping {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ProcessMappings {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::UserStack {}
}

const _: () = assert!(core::mem::size_of::<UnwindRow>() == 8);
const _: () = assert!(core::mem::size_of::<Mapping>() == 32);
const _: () = assert!(core::mem::size_of::<ProcessMappings>() == 8 + 32 * MAX_MAPPINGS);
const _: () = assert!(core::mem::size_of::<UserStack>() == 8 + 8 * (MAX_STACK_DEPTH + 1));
const _: () = assert!(core::mem::size_of::<UnwindState>() == 64 + 8 + 8 * (MAX_STACK_DEPTH + 1));
