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
/// it (the entry stays, emptied: [`ThreadRequest::end`]). Reading the response of a call made for a request still unanswered makes the thread
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

impl ThreadRequest {
    /// The request got its response: the thread's entry stays, for its next request, and says
    /// no request (`conn_id` and `request_ns` 0; connection ids are never 0).
    pub fn end(&mut self) {
        self.conn_id = 0;
        self.request_ns = 0;
        self.sampled = 0;
    }
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
