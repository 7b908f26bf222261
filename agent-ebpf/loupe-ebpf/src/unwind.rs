//! DWARF unwinding of user stacks (x86-64) for processes userspace lists in `UNWIND_PROCS`: code
//! built without frame pointers (Rust by default, distribution C/C++ at -O2) still gets its whole
//! call chain. Userspace turns each binary's `.eh_frame`/`.debug_frame` into sorted rows (one range
//! of `UNWIND_ROWS` per binary, shared by every process mapping it) and lists each process's
//! executable mappings with their ranges.
//!
//! A sample's walk starts in the perf_event program (`start`), which saves the user registers in
//! per-CPU scratch and tail-calls `unwind_step`. Each run of `unwind_step` walks at most
//! `FRAMES_PER_RUN` frames and tail-calls itself until the stack ends, so no run comes near the
//! verifier's limits and the whole walk is bounded by the kernel's tail-call limit. A frame whose
//! code has no row (JIT code, a gap between functions) is walked with its frame pointer. The stack
//! goes into the slot's `DWARF_STACKS` under its hash, and the sample under that hash.

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_F_MMAPABLE, BPF_NOEXIST},
    helpers::{bpf_get_current_task, bpf_probe_read_kernel, bpf_probe_read_user},
    macros::{map, perf_event},
    maps::{Array, HashMap, PerCpuArray, ProgramArray},
    programs::PerfEventContext,
};
use loupe_common::{
    MAX_STACK_DEPTH, ProfilerConfig, SampleKey, counter,
    unwind::{
        DEFAULT_ROWS, DWARF_STACK_ID, FRAMES_PER_RUN, MAX_MAPPINGS, MAX_PROCS, Mapping,
        ProcessMappings, STACK_ENTRIES, UnwindRow, UnwindState, UserStack, row_kind,
    },
};

use crate::profiler::{add, count, samples_of_slot};

/// Every binary's rows, each binary one range (userspace sizes it: `--unwind-tables-size`).
#[map]
static UNWIND_ROWS: Array<UnwindRow> = Array::with_max_entries(DEFAULT_ROWS, BPF_F_MMAPABLE);

/// Processes unwound with tables: their executable mappings.
#[map]
static UNWIND_PROCS: HashMap<u32, ProcessMappings> = HashMap::with_max_entries(MAX_PROCS, 0);

#[map]
static UNWIND_STATE: PerCpuArray<UnwindState> = PerCpuArray::with_max_entries(1, 0);

/// Index 0: `unwind_step` (userspace puts it there).
#[map]
static UNWIND_PROGS: ProgramArray = ProgramArray::with_max_entries(1, 0);

#[map]
static DWARF_STACKS_0: HashMap<u64, UserStack> = HashMap::with_max_entries(STACK_ENTRIES, 0);
#[map]
static DWARF_STACKS_1: HashMap<u64, UserStack> = HashMap::with_max_entries(STACK_ENTRIES, 0);

/// Runs of `unwind_step` per stack: with `FRAMES_PER_RUN` frames each, the whole
/// `MAX_STACK_DEPTH`, and under the kernel's 33 tail calls.
const MAX_RUNS: u32 = (MAX_STACK_DEPTH as u32).div_ceil(FRAMES_PER_RUN) + 1;
/// Binary-search steps over one table: enough for 2^25 rows, more than `UNWIND_ROWS` may hold.
const ROW_SEARCH_STEPS: u32 = 25;
/// Binary-search steps over a process's mappings (`MAX_MAPPINGS` = 64).
const MAPPING_SEARCH_STEPS: u32 = 7;

/// Offsets in `struct pt_regs` (x86-64) of the registers a walk starts from.
mod pt_regs {
    pub const BP: usize = 4 * 8;
    pub const IP: usize = 16 * 8;
    pub const CS: usize = 17 * 8;
    pub const SP: usize = 19 * 8;
    pub const SIZE: usize = 21 * 8;
}

/// Lowest address of the kernel half: a user pc or stack is below it.
const USER_END: u64 = 0x0000_8000_0000_0000;

/// True when `pid`'s user stack is walked with tables.
#[inline(always)]
pub fn wanted(pid: u32) -> bool {
    // SAFETY: only tested for presence.
    unsafe { UNWIND_PROCS.get(&pid) }.is_some()
}

/// Starts the table walk of the current thread's user stack for a sample of `kind`; returns only
/// when the walk could not start (the caller then records a frame-pointer stack).
#[inline(always)]
pub fn start(
    ctx: &PerfEventContext,
    config: &ProfilerConfig,
    pid_tgid: u64,
    kind: u32,
    kernel_stack_id: i32,
    request_ns: u64,
) {
    let Some((pc, sp, bp)) = user_regs(ctx, config) else {
        count(counter::DWARF_NO_USER_REGS);
        return;
    };
    let Some(state) = UNWIND_STATE.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: the pointer comes from a successful per-CPU array lookup: valid, aligned, and only
    // this CPU's program touches it until the walk ends (perf_event programs do not nest on a CPU).
    let state = unsafe { &mut *state };
    state.pc = pc;
    state.sp = sp;
    state.bp = bp;
    state.runs = 0;
    state.kind = kind;
    state.pid = (pid_tgid >> 32) as u32;
    state.tid = pid_tgid as u32;
    state.kernel_stack_id = kernel_stack_id;
    state.slot = config.active_slot;
    state.request_ns = request_ns;
    state.hash = FNV_OFFSET;
    state.stack.len = 0;
    // SAFETY: a tail call into a program of the same type; on failure it returns here.
    unsafe { UNWIND_PROGS.tail_call(ctx, 0) };
}

/// The user registers at the sample: the perf event's own registers when it interrupted user code,
/// else those the kernel saved at the top of the task's kernel stack on entry.
#[inline(always)]
fn user_regs(ctx: &PerfEventContext, config: &ProfilerConfig) -> Option<(u64, u64, u64)> {
    let regs = ctx.as_ptr() as *const u8;
    // SAFETY: a perf_event program's context starts with the interrupted `pt_regs`; the verifier
    // allows 8-byte loads of any of its fields.
    let cs = unsafe { *(regs.add(pt_regs::CS) as *const u64) };
    if cs & 3 == 3 {
        // SAFETY: as above.
        return unsafe {
            Some((
                *(regs.add(pt_regs::IP) as *const u64),
                *(regs.add(pt_regs::SP) as *const u64),
                *(regs.add(pt_regs::BP) as *const u64),
            ))
        };
    }
    if config.task_stack_offset == 0 || config.thread_size == 0 {
        return None;
    }
    // SAFETY: the helper has no preconditions.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    // SAFETY: a kernel read through the helper, which checks the address; the offset is
    // `task_struct.stack`'s, from this kernel's BTF.
    let stack: u64 = unsafe {
        bpf_probe_read_kernel(task.wrapping_add(config.task_stack_offset as usize) as *const u64)
    }
    .ok()?;
    let top = stack.checked_add(u64::from(config.thread_size))?;
    let saved = top.checked_sub(pt_regs::SIZE as u64)? as *const u8;
    // SAFETY: kernel reads through the helper, which checks every address.
    let (cs, pc, sp, bp) = unsafe {
        (
            bpf_probe_read_kernel(saved.wrapping_add(pt_regs::CS) as *const u64).ok()?,
            bpf_probe_read_kernel(saved.wrapping_add(pt_regs::IP) as *const u64).ok()?,
            bpf_probe_read_kernel(saved.wrapping_add(pt_regs::SP) as *const u64).ok()?,
            bpf_probe_read_kernel(saved.wrapping_add(pt_regs::BP) as *const u64).ok()?,
        )
    };
    // A kernel thread, or a stack layout other than assumed: no user registers there.
    if cs & 3 != 3 || pc == 0 || pc >= USER_END {
        return None;
    }
    Some((pc, sp, bp))
}

#[perf_event]
pub fn unwind_step(ctx: PerfEventContext) -> u32 {
    let Some(state) = UNWIND_STATE.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: as in `start`: this CPU's scratch, untouched by anyone else during the walk.
    let state = unsafe { &mut *state };
    // SAFETY: the value is only read; userspace replaces entries whole.
    let Some(procs) = (unsafe { UNWIND_PROCS.get(&state.pid) }) else {
        finish(state);
        return 0;
    };
    for _ in 0..FRAMES_PER_RUN {
        match walk_frame(state, procs) {
            Step::More => {}
            Step::End(reason) => {
                count(reason);
                finish(state);
                return 0;
            }
        }
    }
    state.runs += 1;
    if state.runs < MAX_RUNS {
        // SAFETY: a tail call into this same program; on failure it returns here.
        unsafe { UNWIND_PROGS.tail_call(&ctx, 0) };
    }
    count(counter::DWARF_TOO_DEEP);
    finish(state);
    0
}

enum Step {
    More,
    /// The walk is over; the counter saying why.
    End(u32),
}

/// Records the current frame and moves the state to its caller's.
#[inline(always)]
fn walk_frame(state: &mut UnwindState, procs: &ProcessMappings) -> Step {
    let len = state.stack.len;
    if len >= MAX_STACK_DEPTH as u64 {
        return Step::End(counter::DWARF_TOO_DEEP);
    }
    let pc = state.pc;
    // The mask keeps the index provably inside the 128-entry array for the verifier.
    state.stack.pcs[(len as usize) & MAX_STACK_DEPTH] = pc;
    state.stack.len = len + 1;
    state.hash = (state.hash ^ pc).wrapping_mul(FNV_PRIME);

    // A return address points after its call: look up the call itself.
    let lookup = if len == 0 { pc } else { pc - 1 };
    let row = find_mapping(procs, lookup).and_then(|m| find_row(m, lookup));
    let (cfa, rbp_offset) = match row {
        Some(row) if row.kind == row_kind::END => return Step::End(counter::DWARF_COMPLETE),
        Some(row) if row.kind == row_kind::CFA_RSP => (
            state.sp.wrapping_add(u64::from(row.cfa_offset)),
            row.rbp_offset,
        ),
        Some(row) if row.kind == row_kind::CFA_RBP => (
            state.bp.wrapping_add(u64::from(row.cfa_offset)),
            row.rbp_offset,
        ),
        Some(row) if row.kind == row_kind::PLT => {
            let past_push = if pc & 15 >= 11 { 8 } else { 0 };
            (
                state.sp.wrapping_add(u64::from(row.cfa_offset) + past_push),
                row.rbp_offset,
            )
        }
        _ => {
            // No row: the frame pointer chain, if there is one.
            count(counter::DWARF_FP_FRAMES);
            if state.bp == 0 {
                return Step::End(counter::DWARF_COMPLETE);
            }
            (state.bp.wrapping_add(16), -2)
        }
    };
    if row.is_some_and(|r| r.kind != row_kind::NONE) {
        count(counter::DWARF_FRAMES);
    }
    // SAFETY: user memory read through the helper, which checks the address.
    let Ok(ra) = (unsafe { bpf_probe_read_user((cfa.wrapping_sub(8)) as *const u64) }) else {
        return Step::End(counter::DWARF_STOPPED);
    };
    if rbp_offset != 0 {
        let at = cfa.wrapping_add((i64::from(rbp_offset) * 8) as u64);
        // SAFETY: as above.
        match unsafe { bpf_probe_read_user(at as *const u64) } {
            Ok(bp) => state.bp = bp,
            Err(_) => return Step::End(counter::DWARF_STOPPED),
        }
    }
    if ra == 0 || ra >= USER_END {
        // The outermost frame of a chain ended by a zero return address (or garbage).
        return Step::End(counter::DWARF_COMPLETE);
    }
    state.sp = cfa;
    state.pc = ra;
    Step::More
}

/// The mapping holding `pc`, by binary search over the process's sorted mappings.
#[inline(always)]
fn find_mapping(procs: &ProcessMappings, pc: u64) -> Option<&Mapping> {
    let mut lo = 0u32;
    let mut hi = procs.count.min(MAX_MAPPINGS as u32);
    for _ in 0..MAPPING_SEARCH_STEPS {
        if lo >= hi {
            return None;
        }
        let mid = lo + (hi - lo) / 2;
        let m = &procs.mappings[(mid as usize) & (MAX_MAPPINGS - 1)];
        if pc < m.start {
            hi = mid;
        } else if pc >= m.end {
            lo = mid + 1;
        } else {
            return Some(m);
        }
    }
    None
}

/// The row covering `pc` in the mapping's table: the last one starting at or before it.
#[inline(always)]
fn find_row(m: &Mapping, pc: u64) -> Option<UnwindRow> {
    let offset = pc.wrapping_sub(m.bias);
    if offset > u64::from(u32::MAX) || m.table_len == 0 {
        return None;
    }
    let offset = offset as u32;
    let first = m.table_start;
    let mut lo = first;
    let mut hi = first.saturating_add(m.table_len);
    for _ in 0..ROW_SEARCH_STEPS {
        if lo >= hi {
            break;
        }
        let mid = lo + (hi - lo) / 2;
        let row = UNWIND_ROWS.get(mid)?;
        if row.pc <= offset {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    if lo == first {
        return None;
    }
    UNWIND_ROWS.get(lo - 1).copied()
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Stores the walked stack and counts the sample under it.
#[inline(always)]
fn finish(state: &mut UnwindState) {
    count(counter::DWARF_STACKS);
    let stacks = if state.slot == 0 {
        &DWARF_STACKS_0
    } else {
        &DWARF_STACKS_1
    };
    let hash = if state.hash == 0 { 1 } else { state.hash };
    // SAFETY: only tested for presence.
    let stored = unsafe { stacks.get(&hash) }.is_some()
        || stacks.insert(&hash, &state.stack, BPF_NOEXIST as u64).is_ok()
        // SAFETY: as above; another CPU may have stored the same stack meanwhile.
        || unsafe { stacks.get(&hash) }.is_some();
    let (user_stack_id, dwarf_stack) = if stored {
        (DWARF_STACK_ID, hash)
    } else {
        count(counter::DWARF_STACK_MAP_FULL);
        (-(ENOMEM), 0)
    };
    let key = SampleKey {
        pid: state.pid,
        tid: state.tid,
        user_stack_id,
        kernel_stack_id: state.kernel_stack_id,
        request_ns: state.request_ns,
        kind: state.kind,
        _pad: 0,
        dwarf_stack,
    };
    if !add(samples_of_slot(state.slot), &key, 1, None) {
        count(if state.kind == loupe_common::sample_kind::PAGE_FAULT {
            counter::PAGE_FAULT_MAP_FULL
        } else {
            counter::SAMPLE_MAP_FULL
        });
    }
}

const ENOMEM: i32 = 12;
