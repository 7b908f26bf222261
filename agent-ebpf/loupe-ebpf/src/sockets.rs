//! Socket capture for network spans, in two interchangeable sets of programs over the same maps:
//! syscall tracepoints (the baseline every kernel has) and, where BTF trampolines work, fentry/fexit
//! on the syscalls' entry points (cheaper; `fentry.rs`). Userspace attaches one set. Which request
//! each thread, connection and process works for (trace context) is kept in `requests.rs`; writes
//! to stdout and stderr become LOG events in `logs.rs`; `copy.rs` copies the bytes moved.
//!
//! accept/accept4 and connect exits start tracking a TCP connection, keyed by (pid, fd), and announce
//! it with an OPEN event carrying its addresses and initial sequence numbers, read from the kernel's
//! socket through the struct offsets userspace found in BTF. Data syscalls on a tracked fd emit a DATA event at exit with the
//! byte count and the first bytes moved (the tracepoint set saves the arguments per thread at
//! sys_enter for that). close announces the end. Untracked fds cost one hash lookup per data syscall.
//!
//! DATA events are put together in a per-CPU scratch value (1 KiB of captured bytes cannot sit on the
//! 512-byte BPF stack) and copied into the ring buffer at their real size; OPEN and CLOSE events are
//! reserved in place. iovec gathers go through a second per-CPU scratch buffer.

mod copy;
mod fentry;
mod logs;
mod requests;

use copy::{bounded, copy_buffer, copy_iovecs, copy_msghdr};
use logs::{log_write, logged};

pub use requests::{PROCESS_REQUESTS, THREAD_REQUESTS};
use requests::{client_received, client_sending, process_request_ended, server_request};

use core::ffi::c_void;
use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_probe_read_kernel, bpf_probe_read_user,
        generated::{
            bpf_get_current_task, bpf_get_prandom_u32, bpf_get_smp_processor_id, bpf_ktime_get_ns,
            bpf_probe_read_kernel as read_kernel_raw, bpf_probe_read_user as read_user_raw,
        },
    },
    macros::{fentry, fexit, map, tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{FEntryContext, FExitContext, TracePointContext},
};
use loupe_common::socket::{
    ARGS_ENTRIES, CLIENT_PARENT_ENTRIES, COMM_BYTES, CONN_ENTRIES, ClientParent, ConnState,
    ConnTuple, GoroutineRequest, KernelOffsets, LOG_RATE_ENTRIES, LogRate, MAX_CAPTURE_BYTES,
    OPEN_DATA_BYTES, PID_ENTRIES, PROCESS_REQUEST_ENTRIES, ProcessRequests,
    SOCKET_EVENT_RING_BYTES, SocketConfig, SocketEvent, SocketEventHeader, SocketOpenEvent,
    SpanCtx, SyscallArgs, THREAD_REQUEST_ENTRIES, TcpIsns, ThreadRequest, buffer, counter,
    direction, flags, isn_known, kind, role,
};

use crate::{
    counted, goroutines,
    tcp_context::{TCP_CTX_IN, TCP_CTX_OUT},
};
use loupe_common::lru;

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const IPPROTO_TCP: u16 = 6;
const EINPROGRESS: i64 = 115;
/// `sk_state` values (include/net/tcp_states.h): a socket in these has not heard from its peer.
const TCP_SYN_SENT: u8 = 2;
const TCP_CLOSE: u8 = 7;

#[map]
static SOCKET_CONFIG: Array<SocketConfig> = Array::with_max_entries(1, 0);

#[map]
static SOCKET_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// The `--pid` filter (when `SocketConfig::filter_pids` is set).
#[map]
static SOCKET_PIDS: HashMap<u32, u8> = HashMap::with_max_entries(PID_ENTRIES, 0);

/// Tracked connections, keyed by `pid << 32 | fd`.
#[map]
static CONNECTIONS: HashMap<u64, ConnState> = HashMap::with_max_entries(CONN_ENTRIES, 0);

/// Socket syscalls in flight on a tracked fd, keyed by `pid_tgid`.
#[map]
static SOCKET_ARGS: HashMap<u64, SyscallArgs> = HashMap::with_max_entries(ARGS_ENTRIES, 0);

/// Per-CPU sequence numbers; with the CPU id they make connection ids that never repeat.
#[map]
static CONN_IDS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Where a DATA event is put together before it is copied into the ring buffer at its real size
/// (a reservation would have to be of the constant, largest size). Programs run with migration
/// off and finish before another socket program can run on this CPU (tracepoints run with
/// preemption off; BTF trampolines on the non-preemptible kernels EKS and Debian ship).
#[map]
static SOCKET_EVENT_SCRATCH: PerCpuArray<SocketEvent> = PerCpuArray::with_max_entries(1, 0);

#[map]
static SOCKET_EVENTS: RingBuf = RingBuf::with_byte_size(SOCKET_EVENT_RING_BYTES, 0);

#[inline(always)]
pub(crate) fn count(index: u32) {
    if let Some(slot) = SOCKET_COUNTERS.get_ptr_mut(index) {
        // SAFETY: the pointer comes from a successful per-CPU array lookup, so it is valid, aligned
        // and only touched by this CPU while the program runs.
        unsafe { *slot += 1 };
    }
}

/// Syscall argument `n` (0-based) of a sys_enter tracepoint, or the return value (n = 0) of a
/// sys_exit one: 8-byte fields from offset 16 (see events/syscalls/*/format).
#[inline(always)]
fn arg(ctx: &TracePointContext, n: usize) -> u64 {
    // SAFETY: tracepoint programs may read their context directly; syscall records hold 8-byte
    // aligned fields from offset 16, and every caller reads a field its tracepoint has.
    unsafe { core::ptr::read((ctx.as_ptr() as *const u64).add(2 + n)) }
}

#[inline(always)]
pub(crate) fn config() -> Option<&'static SocketConfig> {
    // SAFETY: a lookup of index 0 in a one-entry array; the value is only read.
    SOCKET_CONFIG.get_ptr(0).map(|c| unsafe { &*c })
}

/// Key of the connection map; None for an fd no syscall could return (negative).
#[inline(always)]
fn conn_key(pid_tgid: u64, fd: u64) -> Option<u64> {
    let fd = fd as u32;
    if (fd as i32) < 0 {
        return None;
    }
    Some((pid_tgid & 0xffff_ffff_0000_0000) | u64::from(fd))
}

/// The connection tracked as (pid, fd), in the map: no copy on the BPF stack. The value stays
/// valid while the program runs (map elements are freed after an RCU grace period), though
/// another CPU may change or delete it meanwhile.
#[inline(always)]
pub(crate) fn tracked_ref(pid_tgid: u64, fd: u64) -> Option<&'static ConnState> {
    let state = CONNECTIONS.get_ptr(conn_key(pid_tgid, fd)?)?;
    // SAFETY: see above; the pointer comes from a successful lookup.
    Some(unsafe { &*state })
}

/// [`tracked_ref`] for a caller that also updates the connection (its request state): one
/// lookup serves the reads and the writes of the whole event.
#[inline(always)]
pub(crate) fn tracked_mut(pid_tgid: u64, fd: u64) -> Option<*mut ConnState> {
    CONNECTIONS.get_ptr_mut(conn_key(pid_tgid, fd)?)
}

/// Whether connections of this process are tracked at all.
#[inline(always)]
pub(crate) fn wanted(pid: u32, config: &SocketConfig) -> bool {
    if pid == config.agent_pid {
        return false;
    }
    config.filter_pids == 0 || SOCKET_PIDS.get_ptr(pid).is_some()
}

#[inline(always)]
pub(crate) fn now() -> u64 {
    // SAFETY: the helper has no preconditions.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
fn save_args(pid_tgid: u64, args: &SyscallArgs) {
    if SOCKET_ARGS.insert(pid_tgid, args, 0).is_err() {
        count(counter::ARGS_MAP_FULL);
    }
}

/// Removes and returns what this thread's sys_enter saved, if it was the expected kind of call.
#[inline(always)]
fn take_args(pid_tgid: u64, expected: u32) -> Option<SyscallArgs> {
    let saved = SOCKET_ARGS.get_ptr(pid_tgid)?;
    // SAFETY: the pointer comes from a successful lookup; the value is copied out before removal.
    let args = unsafe { *saved };
    let _ = SOCKET_ARGS.remove(pid_tgid);
    (args.kind == expected).then_some(args)
}

// ---------------------------------------------------------------------------------------------
// accept / accept4: the new fd is the server side of a connection.

#[tracepoint(category = "syscalls", name = "sys_enter_accept")]
pub fn sock_enter_accept(ctx: TracePointContext) -> u32 {
    enter_accept(&ctx);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_accept4")]
pub fn sock_enter_accept4(ctx: TracePointContext) -> u32 {
    enter_accept(&ctx);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_accept")]
pub fn sock_exit_accept(ctx: TracePointContext) -> u32 {
    let _ = try_exit_accept(&ctx);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_accept4")]
pub fn sock_exit_accept4(ctx: TracePointContext) -> u32 {
    let _ = try_exit_accept(&ctx);
    0
}

#[inline(always)]
fn enter_accept(ctx: &TracePointContext) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(config) = config() else { return };
    if !wanted((pid_tgid >> 32) as u32, config) {
        return;
    }
    save_args(
        pid_tgid,
        &SyscallArgs {
            start_ns: now(),
            ptr: arg(ctx, 1),
            fd: arg(ctx, 0) as i32,
            kind: buffer::SOCKADDR,
            count: 0,
            direction: 0,
        },
    );
}

#[inline(always)]
fn try_exit_accept(ctx: &TracePointContext) -> Result<(), i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    // Servers sit in accept: the first one after the agent started has no saved arguments, and
    // still counts.
    let args = take_args(pid_tgid, buffer::SOCKADDR);
    accepted(
        pid_tgid,
        arg(ctx, 0) as i64,
        args.map(|a| (a.start_ns, a.ptr)),
    )
}

/// accept/accept4 returned `ret`; `called` is (entry time, the caller's sockaddr) when known.
#[inline(always)]
fn accepted(pid_tgid: u64, ret: i64, called: Option<(u64, u64)>) -> Result<(), i64> {
    if ret < 0 {
        return Ok(());
    }
    let config = config().ok_or(0)?;
    if !wanted((pid_tgid >> 32) as u32, config) {
        return Ok(());
    }
    let (start_ns, user_family) = match called {
        Some((start_ns, addr)) => (start_ns, user_family(addr)),
        None => (0, None),
    };
    open(
        pid_tgid,
        ret as u64,
        role::SERVER,
        start_ns,
        user_family,
        config,
    )
}

/// With fentry/fexit, for a while after the start: a thread that was already blocked in accept
/// when the fexit programs attached returns through code they do not hook, so the connection it
/// accepts would never be tracked. The syscall's exit tracepoint still fires for it; this program
/// runs there and tracks only what the fexit program (which runs first) did not.
#[tracepoint(category = "syscalls", name = "sys_exit_accept")]
pub fn sock_exit_accept_late(ctx: TracePointContext) -> u32 {
    let _ = accepted_untracked(&ctx);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_accept4")]
pub fn sock_exit_accept4_late(ctx: TracePointContext) -> u32 {
    let _ = accepted_untracked(&ctx);
    0
}

#[inline(always)]
fn accepted_untracked(ctx: &TracePointContext) -> Result<(), i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let ret = arg(ctx, 0) as i64;
    if tracked_ref(pid_tgid, ret as u64).is_some() {
        return Ok(());
    }
    accepted(pid_tgid, ret, None)
}

// ---------------------------------------------------------------------------------------------
// connect: the fd is the client side of a connection once connect succeeded or is under way.

#[tracepoint(category = "syscalls", name = "sys_enter_connect")]
pub fn sock_enter_connect(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(config) = config() else { return 0 };
    if !wanted((pid_tgid >> 32) as u32, config) {
        return 0;
    }
    save_args(
        pid_tgid,
        &SyscallArgs {
            start_ns: now(),
            ptr: arg(&ctx, 1),
            fd: arg(&ctx, 0) as i32,
            kind: buffer::SOCKADDR,
            count: 0,
            direction: 0,
        },
    );
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_connect")]
pub fn sock_exit_connect(ctx: TracePointContext) -> u32 {
    let _ = try_exit_connect(&ctx);
    0
}

#[inline(always)]
fn try_exit_connect(ctx: &TracePointContext) -> Result<(), i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let args = take_args(pid_tgid, buffer::SOCKADDR).ok_or(0)?;
    connected(
        pid_tgid,
        args.fd,
        args.ptr,
        arg(ctx, 0) as i64,
        args.start_ns,
    )
}

/// connect(fd, addr) returned `ret`.
#[inline(always)]
fn connected(pid_tgid: u64, fd: i32, addr: u64, ret: i64, start_ns: u64) -> Result<(), i64> {
    if ret != 0 && ret != -EINPROGRESS {
        return Ok(());
    }
    // The address asked for is the cheap filter: unix, netlink and AF_UNSPEC (UDP disconnect) stop
    // here.
    let family = user_family(addr).ok_or(0)?;
    if family != AF_INET && family != AF_INET6 {
        return Ok(());
    }
    let config = config().ok_or(0)?;
    if !wanted((pid_tgid >> 32) as u32, config) {
        return Ok(());
    }
    open(
        pid_tgid,
        fd as u32 as u64,
        role::CLIENT,
        start_ns,
        Some(family),
        config,
    )
}

/// The family of a user `sockaddr`, if there is one and it can be read.
#[inline(always)]
fn user_family(ptr: u64) -> Option<u16> {
    if ptr == 0 {
        return None;
    }
    // SAFETY: bpf_probe_read_user copes with any address: a bad one is an error, not a fault.
    match unsafe { bpf_probe_read_user(ptr as *const u16) } {
        Ok(family) => Some(family),
        Err(_) => {
            count(counter::READ_FAILED);
            None
        }
    }
}

/// Starts tracking (pid, fd) if it is a TCP socket, and announces it.
#[inline(always)]
fn open(
    pid_tgid: u64,
    fd: u64,
    conn_role: u32,
    start_ns: u64,
    user_family: Option<u16>,
    config: &SocketConfig,
) -> Result<(), i64> {
    let key = conn_key(pid_tgid, fd).ok_or(0)?;
    let mut state = ConnState {
        conn_id: 0,
        role: conn_role,
        last_direction: 0,
        tuple: ConnTuple::default(),
        ctx: SpanCtx::default(),
    };
    // The socket's `struct sock` (0 when unknown): its ISNs go into the OPEN event.
    let mut sk = 0u64;
    let from_kernel = if config.offsets.valid != 0 {
        match read_tuple(fd, &config.offsets, &mut state.tuple) {
            Ok((protocol, sock)) => {
                sk = sock;
                Some(protocol)
            }
            Err(_) => {
                count(counter::TUPLE_FAILED);
                state.tuple = ConnTuple::default();
                None
            }
        }
    } else {
        None
    };
    match from_kernel {
        Some(protocol) => {
            let family = state.tuple.family;
            if protocol != IPPROTO_TCP || (family != AF_INET && family != AF_INET6) {
                return Ok(());
            }
        }
        // Without the socket, the address family the caller gave is all there is; an accept
        // without an address is tracked and left to userspace.
        None => {
            if let Some(family) = user_family
                && family != AF_INET
                && family != AF_INET6
            {
                return Ok(());
            }
        }
    }

    // The fd was closed in a way close() did not show (dup2, close_range, exec): end the old one.
    if let Some(old) = CONNECTIONS.get_ptr(key) {
        // SAFETY: the pointer comes from a successful lookup; the value is copied out.
        let old = unsafe { *old };
        conn_gone(pid_tgid, &old);
        emit_header(kind::CLOSE, pid_tgid, fd, &old, 0, 0);
    }
    state.conn_id = next_conn_id().ok_or(0)?;
    if CONNECTIONS.insert(key, state, 0).is_err() {
        count(counter::CONN_MAP_FULL);
        return Ok(());
    }
    emit_header(kind::OPEN, pid_tgid, fd, &state, start_ns, sk);
    Ok(())
}

#[inline(always)]
fn next_conn_id() -> Option<u64> {
    // SAFETY: the helper has no preconditions.
    let cpu = u64::from(unsafe { bpf_get_smp_processor_id() });
    let seq = CONN_IDS.get_ptr_mut(0)?;
    // SAFETY: a per-CPU array slot, only touched by this CPU while the program runs (syscall
    // tracepoint programs run with preemption off).
    let n = unsafe {
        *seq += 1;
        *seq
    };
    Some(((cpu + 1) << 48) | (n & 0xffff_ffff_ffff))
}

/// Reads kernel memory at `base + offset` as a `T`.
#[inline(always)]
pub(crate) fn kread<T>(base: u64, offset: u32) -> Result<T, i64> {
    // SAFETY: bpf_probe_read_kernel copes with any address: a bad one is an error, not a fault.
    unsafe { bpf_probe_read_kernel((base + u64::from(offset)) as *const T) }.map_err(i64::from)
}

/// Fills `tuple` from the socket behind the current task's `fd`, walking
/// task → files → fdtable → file → socket → sock; returns the socket's protocol and its
/// `struct sock`.
#[inline(always)]
fn read_tuple(fd: u64, o: &KernelOffsets, tuple: &mut ConnTuple) -> Result<(u16, u64), i64> {
    // SAFETY: the helper has no preconditions.
    let task = unsafe { bpf_get_current_task() };
    let files: u64 = kread(task, o.task_files)?;
    let fdt: u64 = kread(files, o.files_fdt)?;
    let max_fds: u32 = kread(fdt, o.fdtable_max_fds)?;
    if fd >= u64::from(max_fds) {
        return Err(0);
    }
    let fd_array: u64 = kread(fdt, o.fdtable_fd)?;
    let file: u64 = kread(fd_array + fd * 8, 0)?;
    let socket: u64 = kread(file, o.file_private_data)?;
    let sk: u64 = kread(socket, o.socket_sk)?;
    if sk == 0 {
        return Err(0);
    }
    let protocol: u16 = kread(sk, o.sock_protocol)?;
    let family: u16 = kread(sk, o.skc_family)?;
    tuple.family = family;
    if family == AF_INET {
        let remote: [u8; 4] = kread(sk, o.skc_daddr)?;
        let local: [u8; 4] = kread(sk, o.skc_rcv_saddr)?;
        tuple.remote_addr = v4_mapped(remote);
        tuple.local_addr = v4_mapped(local);
    } else if family == AF_INET6 {
        tuple.remote_addr = kread(sk, o.skc_v6_daddr)?;
        tuple.local_addr = kread(sk, o.skc_v6_rcv_saddr)?;
    }
    let dport: u16 = kread(sk, o.skc_dport)?;
    tuple.remote_port = u16::from_be(dport);
    tuple.local_port = kread(sk, o.skc_num)?;
    Ok((protocol, sk))
}

/// Writes the initial sequence numbers of the TCP connection `sk` (a `struct tcp_sock`, which
/// begins with its `struct sock`) into `out`, as they stand when accept or connect returns:
///
/// - the side's own ISN is `write_seq - 1`: the SYN (or SYN-ACK) took one sequence number and
///   the process cannot have written anything yet (`tcp_connect`, `tcp_create_openreq_child`);
/// - the peer's is `rcv_nxt - bytes_received - 1`: `rcv_nxt` was set to the peer's ISN + 1 when
///   its SYN (or SYN-ACK) arrived, and every later advance, data or FIN, also went into
///   `bytes_received` (`tcp_rcv_nxt_update`, since 4.1). A connect that returned EINPROGRESS may
///   still be in SYN_SENT, where the peer's is not known yet.
///
/// Nothing is known without the offsets or when a read fails. Fields are written in place (the
/// accept and connect programs are close to the 512-byte stack limit).
#[inline(always)]
fn read_isns(sk: u64, conn_role: u32, o: Option<&KernelOffsets>, out: *mut TcpIsns) {
    let mut own = 0u32;
    let mut peer = 0u32;
    let mut known = 0u32;
    if sk != 0
        && let Some(o) = o
        && o.isn_valid != 0
        && let (Ok(write_seq), Ok(rcv_nxt), Ok(received), Ok(state)) = (
            kread::<u32>(sk, o.tcp_write_seq),
            kread::<u32>(sk, o.tcp_rcv_nxt),
            kread::<u64>(sk, o.tcp_bytes_received),
            kread::<u8>(sk, o.skc_state),
        )
    {
        own = write_seq.wrapping_sub(1);
        peer = rcv_nxt.wrapping_sub(received as u32).wrapping_sub(1);
        let (own_bit, peer_bit) = if conn_role == role::CLIENT {
            (isn_known::CLIENT, isn_known::SERVER)
        } else {
            (isn_known::SERVER, isn_known::CLIENT)
        };
        known = own_bit;
        if state != TCP_SYN_SENT && state != TCP_CLOSE {
            known |= peer_bit;
        }
    }
    let (client, server) = if conn_role == role::CLIENT {
        (own, peer)
    } else {
        (peer, own)
    };
    // SAFETY: `out` points into a ring-buffer reservation of a whole SocketOpenEvent, ours until
    // it is submitted; the fields are plain integers.
    unsafe {
        (*out).client = client;
        (*out).server = server;
        (*out).known = known;
        (*out)._pad = 0;
    }
}

#[inline(always)]
pub(crate) fn v4_mapped(a: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3],
    ]
}

/// Emits a CLOSE event (the header alone), or an OPEN event (the header, the task's comm and the
/// ISNs of the connection whose `struct sock` is `sk`, 0 when unknown).
#[inline(always)]
fn emit_header(event_kind: u32, pid_tgid: u64, fd: u64, state: &ConnState, start_ns: u64, sk: u64) {
    let header = SocketEventHeader {
        kind: event_kind,
        role: state.role,
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        fd: fd as i32,
        direction: 0,
        conn_id: state.conn_id,
        timestamp_ns: now(),
        start_ns,
        bytes: 0,
        captured: 0,
        flags: 0,
        tuple: state.tuple,
        request_ns: 0,
        ctx: SpanCtx::default(),
    };
    if event_kind == kind::OPEN {
        let Some(mut entry) = SOCKET_EVENTS.reserve::<SocketOpenEvent>(0) else {
            count(counter::EVENTS_LOST);
            return;
        };
        let comm = bpf_get_current_comm().unwrap_or([0; COMM_BYTES]);
        let event = entry.as_mut_ptr();
        // SAFETY: the reservation holds a whole SocketOpenEvent, ours until submitted; its
        // fields are written in place, integers only.
        unsafe {
            (*event).header = SocketEventHeader {
                captured: OPEN_DATA_BYTES as u32,
                ..header
            };
            (*event).comm = comm;
        }
        read_isns(
            sk,
            state.role,
            config().map(|c| &c.offsets),
            // SAFETY: a field of the reservation above (no read or reference made).
            unsafe { core::ptr::addr_of_mut!((*event).isns) },
        );
        entry.submit(0);
        return;
    }
    let Some(mut entry) = SOCKET_EVENTS.reserve::<SocketEventHeader>(0) else {
        count(counter::EVENTS_LOST);
        return;
    };
    entry.write(header);
    entry.submit(0);
}

// ---------------------------------------------------------------------------------------------
// close: the end of a tracked connection.

#[tracepoint(category = "syscalls", name = "sys_enter_close")]
pub fn sock_enter_close(ctx: TracePointContext) -> u32 {
    closing(bpf_get_current_pid_tgid(), arg(&ctx, 0));
    0
}

/// close(fd) is about to run: a tracked fd's connection ends.
#[inline(always)]
fn closing(pid_tgid: u64, fd: u64) {
    let Some(key) = conn_key(pid_tgid, fd) else {
        return;
    };
    let Some(state) = CONNECTIONS.get_ptr(key) else {
        return;
    };
    // SAFETY: the pointer comes from a successful lookup; the value is copied out before removal.
    let state = unsafe { *state };
    let _ = CONNECTIONS.remove(key);
    conn_gone(pid_tgid, &state);
    emit_header(kind::CLOSE, pid_tgid, fd, &state, 0, 0);
}

/// A tracked connection ends: a server request still waiting for its response on it never gets
/// one.
#[inline(always)]
fn conn_gone(pid_tgid: u64, state: &ConnState) {
    if state.role == role::SERVER && state.last_direction == direction::INGRESS {
        process_request_ended(pid_tgid);
    }
    if state.role == role::CLIENT {
        requests::client_closed(state);
    }
}

// ---------------------------------------------------------------------------------------------
// Data syscalls. Enter: on a tracked fd, save where the bytes are. Exit: emit what moved.

macro_rules! data_syscall {
    ($enter:ident, $exit:ident, $enter_tp:literal, $exit_tp:literal, $buffer:expr, $direction:expr) => {
        #[tracepoint(category = "syscalls", name = $enter_tp)]
        pub fn $enter(ctx: TracePointContext) -> u32 {
            enter_data(&ctx, $buffer, $direction);
            0
        }

        #[tracepoint(category = "syscalls", name = $exit_tp)]
        pub fn $exit(ctx: TracePointContext) -> u32 {
            let _ = try_exit_data(&ctx, $buffer);
            0
        }
    };
}

data_syscall!(
    sock_enter_read,
    sock_exit_read,
    "sys_enter_read",
    "sys_exit_read",
    buffer::BUF,
    direction::INGRESS
);
data_syscall!(
    sock_enter_write,
    sock_exit_write,
    "sys_enter_write",
    "sys_exit_write",
    buffer::BUF,
    direction::EGRESS
);
data_syscall!(
    sock_enter_recvfrom,
    sock_exit_recvfrom,
    "sys_enter_recvfrom",
    "sys_exit_recvfrom",
    buffer::BUF,
    direction::INGRESS
);
data_syscall!(
    sock_enter_sendto,
    sock_exit_sendto,
    "sys_enter_sendto",
    "sys_exit_sendto",
    buffer::BUF,
    direction::EGRESS
);
data_syscall!(
    sock_enter_readv,
    sock_exit_readv,
    "sys_enter_readv",
    "sys_exit_readv",
    buffer::IOVEC,
    direction::INGRESS
);
data_syscall!(
    sock_enter_writev,
    sock_exit_writev,
    "sys_enter_writev",
    "sys_exit_writev",
    buffer::IOVEC,
    direction::EGRESS
);
data_syscall!(
    sock_enter_recvmsg,
    sock_exit_recvmsg,
    "sys_enter_recvmsg",
    "sys_exit_recvmsg",
    buffer::MSGHDR,
    direction::INGRESS
);
data_syscall!(
    sock_enter_sendmsg,
    sock_exit_sendmsg,
    "sys_enter_sendmsg",
    "sys_exit_sendmsg",
    buffer::MSGHDR,
    direction::EGRESS
);

/// All data syscalls start (fd, pointer, count-or-flags).
#[inline(always)]
fn enter_data(ctx: &TracePointContext, buffer_kind: u32, data_direction: u32) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let fd = arg(ctx, 0);
    // One lookup serves both the check and the client context below.
    let state = conn_key(pid_tgid, fd).and_then(|key| CONNECTIONS.get_ptr_mut(key));
    if state.is_none() && !log_write(pid_tgid, fd, data_direction) {
        return;
    }
    if data_direction == direction::EGRESS
        && let Some(state) = state
    {
        client_sending(pid_tgid, state);
    }
    let count = if buffer_kind == buffer::IOVEC {
        arg(ctx, 2).min(u64::from(u32::MAX)) as u32
    } else {
        0
    };
    save_args(
        pid_tgid,
        &SyscallArgs {
            start_ns: now(),
            ptr: arg(ctx, 1),
            fd: fd as i32,
            kind: buffer_kind,
            count,
            direction: data_direction,
        },
    );
}

#[inline(always)]
fn try_exit_data(ctx: &TracePointContext, buffer_kind: u32) -> Result<(), i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let args = take_args(pid_tgid, buffer_kind).ok_or(0)?;
    let ret = arg(ctx, 0) as i64;
    if ret <= 0 {
        return Ok(());
    }
    match tracked_mut(pid_tgid, args.fd as u32 as u64) {
        Some(conn) => moved(pid_tgid, &args, ret, conn),
        // A write to stdout or stderr, saved at sys_enter as one.
        None if log_write(pid_tgid, args.fd as u32 as u64, args.direction) => {
            logged(pid_tgid, &args, ret)
        }
        // Closed by another thread meanwhile: its CLOSE is out already, so stay quiet.
        None => Ok(()),
    }
}

/// A data syscall described by `args` moved `ret` (> 0) bytes on the tracked connection `state`:
/// emit what moved, unless a TLS library call made it (then its bytes are ciphertext, and the
/// library's probes send the plaintext: see tls.rs).
#[inline(always)]
pub(crate) fn moved(
    pid_tgid: u64,
    args: &SyscallArgs,
    ret: i64,
    conn: *mut ConnState,
) -> Result<(), i64> {
    // SAFETY: the caller got the pointer from a successful CONNECTIONS lookup; one field read.
    let conn_id = unsafe { (*conn).conn_id };
    if config().is_some_and(|c| c.tls != 0) && crate::tls::inside_call(pid_tgid, args.fd, conn_id) {
        return Ok(());
    }
    moved_bytes(pid_tgid, args, ret, conn, 0)
}

/// Emits `ret` (> 0) bytes described by `args` on the tracked connection `conn` (the map value
/// from [`tracked_mut`]), with `extra_flags` (`flags::PLAINTEXT` from the TLS probes) on the
/// event.
#[inline(always)]
pub(crate) fn moved_bytes(
    pid_tgid: u64,
    args: &SyscallArgs,
    ret: i64,
    conn: *mut ConnState,
    extra_flags: u32,
) -> Result<(), i64> {
    // SAFETY: the pointer comes from a successful CONNECTIONS lookup (see tracked_ref: the value
    // stays valid while the program runs). The fields read through `state` (role, ids, tuple)
    // are set at open and not changed; the request state is read and written through `conn`.
    let state = unsafe { &*conn };
    let config = config().ok_or(0)?;
    let ts = now();
    let event = SOCKET_EVENT_SCRATCH.get_ptr_mut(0).ok_or(0)?;
    // SAFETY: this CPU's scratch event (see SOCKET_EVENT_SCRATCH): the context goes straight
    // into its header, emit_data writes the rest.
    let ctx = unsafe { &mut (*event).header.ctx };
    *ctx = SpanCtx::default();
    let (request_ns, event_flags) = if state.role == role::SERVER && config.track_requests != 0 {
        server_request(
            pid_tgid,
            args.fd,
            state,
            conn,
            args.direction,
            ts,
            config,
            ctx,
        )
    } else if state.role == role::CLIENT && config.propagate != 0 {
        if args.direction == direction::INGRESS {
            client_received(pid_tgid, conn);
            (0, 0)
        } else if state.last_direction == direction::EGRESS && state.ctx.span_id != [0; 8] {
            // The context client_sending gave this request before its bytes left.
            *ctx = state.ctx;
            (0, flags::CTX)
        } else {
            (0, 0)
        }
    } else {
        (0, 0)
    };
    let out = Outgoing {
        kind: kind::DATA,
        role: state.role,
        conn_id: state.conn_id,
        tuple: &state.tuple,
        request_ns,
        flags: event_flags | extra_flags,
        timestamp_ns: ts,
    };
    emit_data(pid_tgid, args, ret, &out, config)
}

/// What a DATA or LOG event says besides the syscall's own arguments and its context (which
/// the caller writes into the scratch event's header first).
struct Outgoing<'a> {
    kind: u32,
    role: u32,
    conn_id: u64,
    tuple: &'a ConnTuple,
    request_ns: u64,
    flags: u32,
    timestamp_ns: u64,
}

/// Copies the first bytes a data syscall moved and emits them with `out` as one event.
#[inline(always)]
fn emit_data(
    pid_tgid: u64,
    args: &SyscallArgs,
    ret: i64,
    out: &Outgoing,
    config: &SocketConfig,
) -> Result<(), i64> {
    let want = (ret as u64)
        .min(u64::from(config.capture_bytes))
        .min(MAX_CAPTURE_BYTES as u64);

    let event = SOCKET_EVENT_SCRATCH.get_ptr_mut(0).ok_or(0)?;
    // SAFETY: `event` points to this CPU's SocketEvent scratch value; `data` is a field inside it.
    let data = unsafe { core::ptr::addr_of_mut!((*event).data) } as *mut u8;
    let captured = if want == 0 {
        0
    } else if args.kind == buffer::BUF {
        copy_buffer(data, args.ptr, want)
    } else if args.kind == buffer::IOVEC {
        copy_iovecs(data, args.ptr, u64::from(args.count), want)
    } else {
        copy_msghdr(data, args.ptr, want)
    };
    // SAFETY: as above; the header is written in place, field by field (a whole header built
    // on the stack first would not fit the 512-byte BPF stack with its callers' frames).
    unsafe {
        let h = &mut (*event).header;
        h.kind = out.kind;
        h.role = out.role;
        h.pid = (pid_tgid >> 32) as u32;
        h.tid = pid_tgid as u32;
        h.fd = args.fd;
        h.direction = args.direction;
        h.conn_id = out.conn_id;
        h.timestamp_ns = out.timestamp_ns;
        h.start_ns = args.start_ns;
        h.bytes = ret as u64;
        h.captured = captured;
        h.flags = out.flags;
        h.tuple = *out.tuple;
        h.request_ns = out.request_ns;
    }
    // The record is the header and the bytes captured, not the whole 1 KiB: most requests and
    // responses are a few hundred bytes, so the ring holds several times more events.
    let len = core::mem::size_of::<SocketEventHeader>()
        + if captured == 0 {
            0
        } else {
            bounded(u64::from(captured)) as usize
        };
    // SAFETY: `len` ≤ size_of::<SocketEvent>(), so the slice lies within the scratch value.
    let record = unsafe { core::slice::from_raw_parts(event as *const u8, len) };
    if SOCKET_EVENTS
        .output::<[u8]>(record, data_submit_flags(len))
        .is_err()
    {
        count(counter::EVENTS_LOST);
    }
    Ok(())
}

/// `bpf_ringbuf_query` flag: bytes waiting to be read.
const BPF_RB_AVAIL_DATA: u64 = 0;
/// `bpf_ringbuf_submit` flags.
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;

/// Data events do not wake the reader one by one (a wakeup per event cost three quarters of the
/// programs' run time and a context switch per syscall): the reader polls every few milliseconds,
/// and the record that takes the ring past a quarter full wakes it at once. Only that one: a
/// reader that is slow to run (a busy host) is already runnable, and waking it again for every
/// later record cost the traced processes an irq_work per syscall for nothing. `len` is the size
/// of the record about to be written. OPEN and CLOSE events wake it as usual.
#[inline(always)]
fn data_submit_flags(len: usize) -> u64 {
    let threshold = u64::from(SOCKET_EVENT_RING_BYTES / 4);
    let before = SOCKET_EVENTS.query(BPF_RB_AVAIL_DATA);
    // The ring adds an 8-byte header to each record.
    if before < threshold && before + len as u64 + 8 >= threshold {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}
