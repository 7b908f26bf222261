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
pub mod unwind {
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
    const _: () =
        assert!(core::mem::size_of::<UnwindState>() == 64 + 8 + 8 * (MAX_STACK_DEPTH + 1));
}

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
pub mod socket {
    /// Most bytes of one read/write buffer copied into an event (a power of two).
    pub const MAX_CAPTURE_BYTES: usize = 1024;
    /// Connections (pid, fd) tracked at once.
    pub const CONN_ENTRIES: u32 = 64 * 1024;
    /// Bytes of the socket event ring buffer.
    pub const SOCKET_EVENT_RING_BYTES: u32 = 8 * 1024 * 1024;

    /// Which side of the connection the traced process is.
    pub mod role {
        /// The process called connect().
        pub const CLIENT: u32 = 1;
        /// The process got the socket from accept().
        pub const SERVER: u32 = 2;
    }

    /// Data direction as seen by the traced process.
    pub mod direction {
        /// read/recv*: bytes came in.
        pub const INGRESS: u32 = 1;
        /// write/send*: bytes went out.
        pub const EGRESS: u32 = 2;
    }

    /// What a [`SocketEventHeader`] reports.
    pub mod kind {
        /// A connection was accepted or connected.
        pub const OPEN: u32 = 1;
        /// Bytes were read or written.
        pub const DATA: u32 = 2;
        /// The connection's fd was closed.
        pub const CLOSE: u32 = 3;
        /// A process wrote to its stdout (fd 1) or stderr (fd 2), which is no tracked
        /// connection: a log write. `role` and `conn_id` are 0, `direction` is EGRESS.
        pub const LOG: u32 = 4;
    }

    /// Bits of [`SocketEventHeader::flags`].
    pub mod flags {
        /// On a server's EGRESS DATA event: the write ended the thread's request (see
        /// [`super::ThreadRequest`]), and CPU samples were tagged with it.
        pub const REQUEST_SAMPLED: u32 = 1;
        /// `SocketEventHeader::ctx` holds the context the kernel gave the request this event
        /// starts or belongs to (in-band propagation is on).
        pub const CTX: u32 = 2;
        /// With [`CTX`], on a server request: its parent came from the client's TCP option.
        pub const CTX_FROM_PEER: u32 = 4;
        /// The DATA event's bytes are a TLS library's plaintext (`SSL_read`/`SSL_write`), not
        /// the socket's own (ciphertext) bytes: from then on the connection is read through it.
        pub const PLAINTEXT: u32 = 8;
    }

    /// A TLS library call in flight on a thread (`TLS_CALLS`, keyed by `pid_tgid`): saved at the
    /// call's entry, completed at its return, told its socket by the syscall it makes meanwhile.
    #[repr(C)]
    #[derive(Copy, Clone, Debug, Default)]
    pub struct TlsCall {
        /// The library's connection object (`SSL *`).
        pub ssl: u64,
        /// The caller's plaintext buffer.
        pub buf: u64,
        /// `_ex` variants: where the library writes the byte count (`size_t *`); else 0.
        pub len_ptr: u64,
        pub start_ns: u64,
        /// One of [`direction`].
        pub direction: u32,
        /// The socket a syscall inside the call used; -1 until one did.
        pub fd: i32,
        /// Go calls: the tracked connection (`ConnState::conn_id`) the call was seen using, 0
        /// until known; only that connection's syscalls are the call's own.
        pub conn_id: u64,
    }

    /// Key of `TLS_FDS`: which socket a process's TLS connection object was last seen using.
    #[repr(C)]
    #[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
    pub struct TlsKey {
        pub pid: u32,
        pub _pad: u32,
        pub ssl: u64,
    }

    /// TLS calls in flight (`TLS_CALLS`) and connection objects remembered (`TLS_FDS`, LRU).
    pub const TLS_ENTRIES: u32 = 16 * 1024;

    /// A span's context as the kernel assigns it when in-band propagation is on: it must be
    /// known before the request's first byte leaves, long before userspace sees the request.
    #[repr(C)]
    #[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
    pub struct SpanCtx {
        pub trace_id: [u8; 16],
        pub span_id: [u8; 8],
        /// All zero: a root span.
        pub parent_id: [u8; 8],
    }

    /// TCP option kind carrying trace context: unassigned in IANA's registry, the kind
    /// OpenTelemetry eBPF Instrumentation writes, so a Loupe node and an OBI node link spans.
    pub const TCP_OPTION_KIND: u8 = 25;

    /// The TCP option as it sits in a segment's header: kind, length (26), the client span's
    /// trace id and span id, in that byte order.
    #[repr(C)]
    #[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
    pub struct TcpTraceOption {
        pub kind: u8,
        pub len: u8,
        pub trace_id: [u8; 16],
        pub span_id: [u8; 8],
    }

    /// Context a server socket's peer sent in a TCP option: value of `TCP_CTX_IN`, keyed by
    /// the server socket's [`ConnTuple`] (its own view: local = server).
    #[repr(C)]
    #[derive(Copy, Clone, Debug, Default)]
    pub struct PeerCtx {
        pub trace_id: [u8; 16],
        pub span_id: [u8; 8],
        /// Non-zero once a server request adopted it: a context is adopted once, and a
        /// later segment repeating it (an ACK) does not make it new again.
        pub used: u32,
        pub _pad: u32,
    }

    /// Entries of `TCP_CTX_OUT` and `TCP_CTX_IN` (LRU): connections with a context in flight.
    pub const TCP_CTX_ENTRIES: u32 = 16 * 1024;
    /// CIDRs `TRUSTED_PEERS` (a longest-prefix-match trie of IPv6 addresses, IPv4 ones
    /// IPv4-mapped) holds at most: the peers whose TCP option context is adopted.
    pub const TRUSTED_PEER_ENTRIES: u32 = 64;

    /// Addresses of a connection from the traced process's side: `local` is its own end. IPv4
    /// addresses are stored IPv4-mapped (`::ffff:a.b.c.d`). Ports in host byte order.
    #[repr(C)]
    #[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
    pub struct ConnTuple {
        pub local_addr: [u8; 16],
        pub remote_addr: [u8; 16],
        pub local_port: u16,
        pub remote_port: u16,
        /// AF_INET (2) or AF_INET6 (10); 0 when the kernel could not read it.
        pub family: u16,
        pub _pad: u16,
    }

    /// Fixed part of every socket event.
    #[repr(C)]
    #[derive(Copy, Clone, Debug, Default)]
    pub struct SocketEventHeader {
        /// One of [`kind`].
        pub kind: u32,
        /// One of [`role`].
        pub role: u32,
        pub pid: u32,
        /// The thread; 0 on a CLOSE userspace made up for a connection whose process exited
        /// without closing it.
        pub tid: u32,
        pub fd: i32,
        /// One of [`direction`] for DATA events, 0 otherwise.
        pub direction: u32,
        /// Unique per connection for the agent's lifetime (never reused).
        pub conn_id: u64,
        /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the syscall completed.
        pub timestamp_ns: u64,
        /// For DATA and OPEN: `bpf_ktime_get_ns()` when the syscall started, so a read's or an
        /// accept's wait is included. 0 if unknown (an accept already waiting when capture began).
        pub start_ns: u64,
        /// For DATA: bytes the syscall moved (its return value).
        pub bytes: u64,
        /// Bytes of `data` that are valid (≤ MAX_CAPTURE_BYTES, ≤ bytes).
        pub captured: u32,
        /// Bits of [`flags`].
        pub flags: u32,
        pub tuple: ConnTuple,
        /// For DATA on a server connection: the thread's request (see [`ThreadRequest`]) this
        /// read belongs to or this write ended; 0 when none.
        pub request_ns: u64,
        /// With [`flags::CTX`]: the context of the request this DATA event starts or belongs to.
        pub ctx: SpanCtx,
    }

    /// A socket event as it sits in the ring buffer.
    #[repr(C)]
    #[derive(Copy, Clone)]
    pub struct SocketEvent {
        pub header: SocketEventHeader,
        pub data: [u8; MAX_CAPTURE_BYTES],
    }

    /// Length of a task's `comm` (its executable name, cut to 15 bytes and a NUL).
    pub const COMM_BYTES: usize = 16;

    /// An OPEN event: the header, then (where `SocketEvent::data` starts, `captured` =
    /// [`OPEN_DATA_BYTES`]) the opening task's `comm`, so a process that is gone before userspace
    /// reads /proc still has a name (curl, cron jobs, short-lived clients), and the connection's
    /// initial sequence numbers.
    #[repr(C)]
    #[derive(Copy, Clone)]
    pub struct SocketOpenEvent {
        pub header: SocketEventHeader,
        pub comm: [u8; COMM_BYTES],
        pub isns: TcpIsns,
    }

    /// Captured bytes of an OPEN event: its `comm` and its [`TcpIsns`].
    pub const OPEN_DATA_BYTES: usize = COMM_BYTES + core::mem::size_of::<TcpIsns>();

    /// Bits of [`TcpIsns::known`].
    pub mod isn_known {
        /// `TcpIsns::client` holds the client's initial sequence number.
        pub const CLIENT: u32 = 1;
        /// `TcpIsns::server` holds the server's initial sequence number.
        pub const SERVER: u32 = 2;
    }

    /// The two initial sequence numbers of a TCP connection, as the kernel's `tcp_sock` tells
    /// them when the connection starts being tracked: the same on both ends of a connection
    /// whatever NAT rewrote its addresses (conntrack never rewrites sequence numbers), so they
    /// name a connection across DNAT and SNAT. Each is known only where [`isn_known`] says.
    #[repr(C)]
    #[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
    pub struct TcpIsns {
        /// The connecting side's ISN (the sequence number of its SYN).
        pub client: u32,
        /// The accepting side's ISN (the sequence number of its SYN-ACK).
        pub server: u32,
        /// Bits of [`isn_known`].
        pub known: u32,
        pub _pad: u32,
    }

    impl TcpIsns {
        /// The ISNs an OPEN event's captured bytes carry (after the comm); `None` when the event
        /// has none (older layouts, made-up events).
        pub fn from_open_data(data: &[u8]) -> Option<TcpIsns> {
            let b = data.get(COMM_BYTES..OPEN_DATA_BYTES)?;
            let word = |i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
            Some(TcpIsns {
                client: word(0),
                server: word(4),
                known: word(8),
                _pad: 0,
            })
        }
    }

    /// Byte offsets of kernel struct members the programs walk to find a socket's addresses from an
    /// fd (task → files → fdtable → file → socket → sock). Userspace reads them from the running
    /// kernel's BTF and writes them into the `SOCKET_CONFIG` map; `valid == 0` means unknown, and the
    /// programs then leave `ConnTuple` zeroed (userspace resolves it from /proc instead).
    #[repr(C)]
    #[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
    pub struct KernelOffsets {
        pub valid: u32,
        pub task_files: u32,
        pub files_fdt: u32,
        pub fdtable_fd: u32,
        pub fdtable_max_fds: u32,
        pub file_private_data: u32,
        pub socket_sk: u32,
        pub sock_protocol: u32,
        pub skc_family: u32,
        pub skc_daddr: u32,
        pub skc_rcv_saddr: u32,
        pub skc_dport: u32,
        pub skc_num: u32,
        pub skc_v6_daddr: u32,
        pub skc_v6_rcv_saddr: u32,
        /// `sock_common.skc_state` (one byte: `TCP_ESTABLISHED`, `TCP_SYN_SENT`, ...).
        pub skc_state: u32,
        /// `tcp_sock.write_seq`, `rcv_nxt` (u32) and `bytes_received` (u64): what a connection's
        /// initial sequence numbers are recovered from (see [`TcpIsns`]); read only when
        /// `isn_valid` is non-zero.
        pub tcp_write_seq: u32,
        pub tcp_rcv_nxt: u32,
        pub tcp_bytes_received: u32,
        /// Non-zero when the four offsets above were found: OPEN events carry ISNs.
        pub isn_valid: u32,
    }

    /// Settings of the socket programs (single-entry array `SOCKET_CONFIG`).
    #[repr(C)]
    #[derive(Copy, Clone, Debug, Default)]
    pub struct SocketConfig {
        /// Bytes to copy per buffer, ≤ MAX_CAPTURE_BYTES.
        pub capture_bytes: u32,
        /// The agent's own pid: its traffic (exporters!) is never traced.
        pub agent_pid: u32,
        pub offsets: KernelOffsets,
        /// Non-zero: only connections of processes present in `SOCKET_PIDS` are tracked.
        pub filter_pids: u32,
        /// Non-zero: writes to fd 1 and 2 that are no tracked connection become LOG events.
        pub capture_logs: u32,
        /// Where a syscall's first three arguments sit in the `struct pt_regs` the syscall entry
        /// points (`__x64_sys_read`, `__arm64_sys_read`, ...) take: what the fentry/fexit programs
        /// read them from. Architecture-specific, so userspace fills it in.
        pub regs_arg_offsets: [u32; 3],
        /// Log writes (LOG events) one process may make per second; more are counted
        /// (`counter::LOG_WRITES_LIMITED`) and not captured.
        pub log_writes_per_sec: u32,
        /// Non-zero: keep each thread's current server request (`THREAD_REQUESTS`), which tags
        /// CPU samples and server DATA events.
        pub track_requests: u32,
        /// Non-zero: in-band trace context (the kernel assigns span contexts, writes the client
        /// span's into its TCP segments, adopts a trusted peer's; needs `track_requests`).
        pub propagate: u32,
        /// Non-zero: the TLS library probes run, so a socket syscall is first checked for being
        /// inside a probed TLS call (its bytes are ciphertext, the probes send the plaintext).
        /// Zero spares every data syscall that lookup.
        pub tls: u32,
    }

    /// Processes `SOCKET_PIDS` may name (the `--pid` filter).
    pub const PID_ENTRIES: u32 = 1024;

    /// Threads that may be inside a socket syscall on a tracked fd at once (`SOCKET_ARGS`).
    pub const ARGS_ENTRIES: u32 = 16 * 1024;

    /// Threads whose current request is remembered at once (`THREAD_REQUESTS`, LRU).
    pub const THREAD_REQUEST_ENTRIES: u32 = 16 * 1024;

    /// Processes whose log write rate is tracked at once (`LOG_RATES`, LRU).
    pub const LOG_RATE_ENTRIES: u32 = 8 * 1024;

    /// The request a thread serves: value of the `THREAD_REQUESTS` map, keyed by `pid_tgid`.
    ///
    /// A read on a server connection makes the thread serve the connection's current request
    /// (a new one unless the connection's last data was a read); a write on that connection ends
    /// it. Reading the response of a call made for a request still unanswered makes the thread
    /// serve that request (an async runtime resumes its handler there). So a thread-per-request
    /// server has exactly its request, and a thread that interleaves connections (an async
    /// runtime) has the one whose bytes it read last. CPU samples of the
    /// thread carry `request_ns` ([`crate::SampleKey`]); with the process id it names the request
    /// (the time of the read that started it, whichever thread goes on with it).
    #[repr(C)]
    #[derive(Copy, Clone, Debug, Default)]
    pub struct ThreadRequest {
        pub conn_id: u64,
        /// `timestamp_ns` of the read that started the request.
        pub request_ns: u64,
        /// Non-zero once a CPU sample was tagged with this request.
        pub sampled: u32,
        /// The connection's fd in the thread's process: with `conn_id`, what tells whether the
        /// request still waits for its response (the connection's `last_direction`).
        pub fd: u32,
        /// With in-band propagation: the server span's context, which the client requests the
        /// thread makes meanwhile are children of.
        pub ctx: SpanCtx,
    }

    /// Processes whose server requests in flight are counted at once (`PROCESS_REQUESTS`, LRU).
    pub const PROCESS_REQUEST_ENTRIES: u32 = 4 * 1024;

    /// The server requests of one process that wait for their response: value of the
    /// `PROCESS_REQUESTS` map, keyed by tgid. A read on a server connection whose last data was
    /// not a read starts one, the first write after it (or the close) ends it. A client request
    /// made by a thread that serves no live request belongs to the process's only live request,
    /// when there is exactly one: what an async runtime needs, whose handler goes on after an
    /// `.await` on whichever worker thread is free.
    #[repr(C)]
    #[derive(Copy, Clone, Debug, Default)]
    pub struct ProcessRequests {
        /// Requests waiting for their response (atomic adds; never left below zero).
        pub live: i64,
        /// The request that started last: its connection (checked live before use) and context.
        pub last_conn_id: u64,
        pub last_fd: u32,
        pub _pad: u32,
        pub last_ctx: SpanCtx,
    }

    /// Log writes of one process in the current one-second window: value of `LOG_RATES`,
    /// keyed by pid.
    #[repr(C)]
    #[derive(Copy, Clone, Debug, Default)]
    pub struct LogRate {
        pub window_start_ns: u64,
        pub writes: u64,
    }

    /// A tracked connection: value of the `CONNECTIONS` map, keyed by `pid << 32 | fd`.
    #[repr(C)]
    #[derive(Copy, Clone, Debug, Default)]
    pub struct ConnState {
        pub conn_id: u64,
        /// One of [`role`].
        pub role: u32,
        /// One of [`direction`]: the last data seen on it (0: none yet). On a client
        /// connection, a write after a read (or first) starts a request; on a server connection
        /// (with request tracking), a read after anything but a read, and the request waits for
        /// its response while this is a read.
        pub last_direction: u32,
        pub tuple: ConnTuple,
        /// With in-band propagation, the current request's context (client and server
        /// connections).
        pub ctx: SpanCtx,
    }

    /// Client connections whose current request's server request is remembered at once
    /// (`CLIENT_PARENTS`, LRU).
    pub const CLIENT_PARENT_ENTRIES: u32 = 16 * 1024;

    /// The server request (its connection in this process) a client connection's current request
    /// was made for, outside followed Go processes: value of `CLIENT_PARENTS`, keyed by the client
    /// connection's `conn_id`. The thread that reads the response goes on working for that
    /// request while it is unanswered (an async runtime resumes the waiting handler on the worker
    /// that read its response). Kept apart from [`ConnState`], which the accept and connect
    /// programs build on their 512-byte stack.
    #[repr(C)]
    #[derive(Copy, Clone, Debug, Default)]
    pub struct ClientParent {
        pub conn_id: u64,
        /// That request's `ThreadRequest::request_ns` as the calling thread knew it (so CPU
        /// samples after the response keep their tag); 0 after the process-wide rule.
        pub request_ns: u64,
        pub fd: u32,
        pub _pad: u32,
    }

    /// What the pointer of a [`SyscallArgs`] points to.
    pub mod buffer {
        /// A plain buffer (read, write, recvfrom, sendto).
        pub const BUF: u32 = 1;
        /// An array of `iovec` (readv, writev); `count` entries.
        pub const IOVEC: u32 = 2;
        /// A `user_msghdr` (recvmsg, sendmsg).
        pub const MSGHDR: u32 = 3;
        /// A `sockaddr` (connect, accept).
        pub const SOCKADDR: u32 = 4;
    }

    /// A socket syscall in flight: saved at sys_enter, completed at sys_exit. Value of the
    /// `SOCKET_ARGS` map, keyed by the thread's `pid_tgid`.
    #[repr(C)]
    #[derive(Copy, Clone, Debug, Default)]
    pub struct SyscallArgs {
        /// `bpf_ktime_get_ns()` at sys_enter.
        pub start_ns: u64,
        /// User pointer to the buffer, iovec array, msghdr or sockaddr (see `kind`).
        pub ptr: u64,
        pub fd: i32,
        /// One of [`buffer`].
        pub kind: u32,
        /// iovec entries (IOVEC only).
        pub count: u32,
        /// One of [`direction`] (data syscalls only).
        pub direction: u32,
    }

    /// Indices of the per-CPU `SOCKET_COUNTERS` array.
    pub mod counter {
        /// Events lost because the ring buffer was full.
        pub const EVENTS_LOST: u32 = 0;
        /// Connections not tracked because the connection map was full.
        pub const CONN_MAP_FULL: u32 = 1;
        /// Buffers that could not be read from user memory (the event is sent with no bytes).
        pub const READ_FAILED: u32 = 2;
        /// Data events lost because the in-flight syscall map (`SOCKET_ARGS`) was full.
        pub const ARGS_MAP_FULL: u32 = 3;
        /// Connections whose addresses could not be read from kernel memory (tuple left zeroed).
        pub const TUPLE_FAILED: u32 = 4;
        /// Log writes not captured: the process was over `SocketConfig::log_writes_per_sec`.
        pub const LOG_WRITES_LIMITED: u32 = 5;
        /// Client requests whose context could not go into the TCP header (no option space
        /// left, or the store failed).
        pub const CTX_WRITE_FAILED: u32 = 6;
        /// Server requests that adopted a peer's context from its TCP option.
        pub const CTX_ADOPTED: u32 = 7;
        /// TCP options with context from a peer outside the trusted prefixes, ignored.
        pub const CTX_UNTRUSTED: u32 = 8;
        /// TLS plaintext not sent: the library call made no syscall and its connection object
        /// had not been seen with a socket yet.
        pub const TLS_NO_SOCKET: u32 = 9;
        /// Goroutines that took their creator's request when created (`runtime.newproc1`).
        pub const GO_SPAWN_INHERITED: u32 = 10;
        /// Goroutines that took the request of the goroutine that woke them (`runtime.goready`).
        pub const GO_WAKE_INHERITED: u32 = 11;
        /// Client requests of a Go process made by a goroutine working for an unanswered server
        /// request: children of its span.
        pub const GO_CLIENT_LIVE: u32 = 12;
        /// Client requests of a Go process whose goroutine's request had already been answered:
        /// they start a new trace rather than join a finished one.
        pub const GO_CLIENT_STALE: u32 = 13;
        /// Client requests of a Go process made by a goroutine that never worked for a request.
        pub const GO_CLIENT_NONE: u32 = 14;
        /// Client requests of another process made by a thread whose server request still waits
        /// for its response: children of its span.
        pub const THREAD_CLIENT_OWN: u32 = 15;
        /// Client requests made by a thread with no such request, in a process with exactly one
        /// server request waiting for its response (an async runtime that moved the handler to
        /// another thread after an `.await`): children of that one.
        pub const THREAD_CLIENT_PROCESS: u32 = 16;
        /// Client requests made by a thread with no such request, in a process with none or
        /// several: they start a new trace.
        pub const THREAD_CLIENT_NONE: u32 = 17;
        /// Number of counters.
        pub const COUNT: u32 = 18;
    }

    /// Go processes whose goroutines are followed at once (`GO_PIDS`).
    pub const GO_PID_ENTRIES: u32 = 1024;

    /// Goroutines whose request is remembered at once (`GO_REQUESTS`, LRU).
    pub const GO_REQUEST_ENTRIES: u32 = 32 * 1024;

    /// net/http client connections (and their writer goroutines) whose request is remembered at
    /// once (`GO_HTTP_CONNS`, `GO_HTTP_WRITERS`, LRU).
    pub const GO_HTTP_CONN_ENTRIES: u32 = 8 * 1024;

    /// Key of `GO_REQUESTS`: a goroutine, named by the address of its `runtime.g` (unique while it
    /// lives; a new goroutine may reuse it after `runtime.goexit1`, which forgets the entry).
    #[repr(C)]
    #[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
    pub struct GoroutineKey {
        pub tgid: u32,
        pub _pad: u32,
        pub g: u64,
    }

    /// The server request a goroutine works for: value of `GO_REQUESTS`.
    ///
    /// A goroutine that reads a request on a server connection serves it (`root` is itself)
    /// until it writes the response. A goroutine it creates, or wakes (a channel send, an unlock)
    /// while it has no request of its own, works for the same request: it copies the entry,
    /// `root` naming the serving goroutine. The copy counts only while the root's entry still has
    /// the same `request_ns`: an answered request lends its context to nothing. A copy taken at a
    /// wake-up serves one client request: a long-lived worker (net/http's connection writer) is
    /// woken anew for each request it writes, and one that was not (a buffered channel it found
    /// full) has no request rather than the last one.
    #[repr(C)]
    #[derive(Copy, Clone, Debug, Default)]
    pub struct GoroutineRequest {
        /// The goroutine serving the request.
        pub root: u64,
        pub conn_id: u64,
        /// `timestamp_ns` of the read that started the request.
        pub request_ns: u64,
        /// The server span's context.
        pub ctx: SpanCtx,
        /// Non-zero: taken at a wake-up, for one client request.
        pub woken: u32,
        pub _pad: u32,
    }

    #[cfg(feature = "user")]
    mod pod {
        // SAFETY: #[repr(C)], Copy, integers and integer arrays only, no implicit padding (sizes are
        // asserted below), so every bit pattern is valid.
        unsafe impl aya::Pod for super::ConnTuple {}
        // SAFETY: as above.
        unsafe impl aya::Pod for super::SocketEventHeader {}
        // SAFETY: as above.
        unsafe impl aya::Pod for super::KernelOffsets {}
        // SAFETY: as above.
        unsafe impl aya::Pod for super::GoroutineKey {}
        // SAFETY: as above.
        unsafe impl aya::Pod for super::GoroutineRequest {}
        // SAFETY: as above.
        unsafe impl aya::Pod for super::SocketConfig {}
        // SAFETY: as above.
        unsafe impl aya::Pod for super::ConnState {}
        // SAFETY: as above.
        unsafe impl aya::Pod for super::SyscallArgs {}
        // SAFETY: as above.
        unsafe impl aya::Pod for super::ThreadRequest {}
        // SAFETY: as above.
        unsafe impl aya::Pod for super::ProcessRequests {}
        // SAFETY: as above.
        unsafe impl aya::Pod for super::ClientParent {}
        // SAFETY: as above.
        unsafe impl aya::Pod for super::LogRate {}
        // SAFETY: as above.
        unsafe impl aya::Pod for super::SpanCtx {}
        // SAFETY: as above.
        unsafe impl aya::Pod for super::PeerCtx {}
        // SAFETY: as above.
        unsafe impl aya::Pod for super::TlsCall {}
        // SAFETY: as above.
        unsafe impl aya::Pod for super::TlsKey {}
    }

    const _: () = assert!(core::mem::size_of::<ConnTuple>() == 40);
    const _: () = assert!(core::mem::size_of::<SocketEventHeader>() == 144);
    const _: () = assert!(core::mem::size_of::<SocketEvent>() == 144 + MAX_CAPTURE_BYTES);
    const _: () = assert!(core::mem::size_of::<ThreadRequest>() == 56);
    const _: () = assert!(core::mem::size_of::<ProcessRequests>() == 56);
    const _: () = assert!(core::mem::size_of::<SpanCtx>() == 32);
    const _: () = assert!(core::mem::size_of::<GoroutineKey>() == 16);
    const _: () = assert!(core::mem::size_of::<GoroutineRequest>() == 64);
    const _: () = assert!(core::mem::size_of::<TcpTraceOption>() == 26);
    const _: () = assert!(core::mem::size_of::<PeerCtx>() == 32);
    const _: () = assert!(core::mem::size_of::<LogRate>() == 16);
    const _: () = assert!(core::mem::size_of::<KernelOffsets>() == 80);
    const _: () = assert!(core::mem::size_of::<SocketConfig>() == 124);
    const _: () = assert!(core::mem::size_of::<TcpIsns>() == 16);
    const _: () = assert!(core::mem::size_of::<SocketOpenEvent>() == 144 + OPEN_DATA_BYTES);
    const _: () = assert!(OPEN_DATA_BYTES <= MAX_CAPTURE_BYTES);
    const _: () = assert!(core::mem::size_of::<ConnState>() == 88);
    const _: () = assert!(core::mem::size_of::<ClientParent>() == 24);
    const _: () = assert!(core::mem::size_of::<SyscallArgs>() == 32);
    const _: () = assert!(core::mem::size_of::<TlsCall>() == 48);
    const _: () = assert!(core::mem::size_of::<TlsKey>() == 16);
    const _: () = assert!(MAX_CAPTURE_BYTES.is_power_of_two());
}

/// Allocation profiles (opt-in, per process): uprobes on the process's allocator sample the calls
/// every [`alloc::AllocConfig::sample_bytes`] bytes on average, and track the sampled blocks until
/// they are freed, so userspace can build allocated and in-use profiles.
pub mod alloc {
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
}
