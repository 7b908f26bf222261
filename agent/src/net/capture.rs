//! Socket capture, userspace half: fills the socket programs' configuration (struct offsets from
//! BTF), loads and attaches one of their two program sets, and reads their ring buffer on a thread
//! of its own into a bounded channel for the span builder.
//!
//! The program sets see the same calls: fentry/fexit on the syscalls' entry points where BTF
//! trampolines work (one program per call, no argument map, no syscall-tracing slow path for the
//! rest of the system), else syscall tracepoints. If any fentry/fexit program fails to load or
//! attach, all of them are dropped and the tracepoints used instead, with a warning: the capture
//! never runs half on one method and half on the other. One exception: a thread already blocked in
//! accept() when fexit programs attach returns through code they do not hook, so for the first
//! LATE_ACCEPT_GRACE the accept exit tracepoints also run, tracking what fexit did not.
//!
//! The reader never waits on the consumer: a full channel drops the event and counts it. Each second
//! it turns the kernel's counters into metrics; every sweep interval (10 s) it forgets connections of
//! processes that exited without closing them (the kernel closes their fds without a close()
//! syscall), sending a made-up CLOSE (tid 0) so the span builder frees their state too.
//!
//! Connections open before the capture started are found in /proc and put into the kernel's
//! connection map once the programs are attached (`seed.rs`).

use std::{
    collections::HashMap,
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
        mpsc::{Receiver, SyncSender, TrySendError, sync_channel},
    },
    thread,
    time::{Duration, Instant},
};

use aya::{
    Ebpf,
    maps::{
        Array, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf,
        lpm_trie::{Key as LpmKey, LpmTrie},
    },
    programs::{
        CgroupAttachMode, FEntry, FExit, ProgramError, SockOps, TracePoint, fentry::FEntryLink,
        fexit::FExitLink, sock_ops::SockOpsLink, trace_point::TracePointLink,
    },
};
use bytes::Bytes;
use loupe_collector::telemetry::{Counter, Gauge, Registry};
use loupe_common::socket::{
    CONN_ENTRIES, ConnState, ConnTuple, GoroutineKey, KernelOffsets, MAX_CAPTURE_BYTES,
    SocketConfig, SocketEventHeader, SyscallArgs, TlsKey, counter, kind, role,
};

use super::{SocketEvent, SocketEvents};
use crate::{
    ebpf::{EbpfError, program, rejected, take_map},
    lru_maps::Deleter,
    memory::Pressure,
    probe::SocketAttach,
};

/// Bytes copied per buffer unless told otherwise: a request line and its headers.
pub const DEFAULT_CAPTURE_BYTES: u32 = MAX_CAPTURE_BYTES as u32;
/// Bytes of events waiting for the span builder at most, unless told otherwise (the memory
/// plan's `socket_events` share sets it in the agent); more are dropped.
pub const DEFAULT_QUEUE_BYTES: usize = 8 << 20;
/// Most events handed to the span builder at once: one channel message, one wake-up and one
/// allocation for their bytes per batch instead of per event.
pub const BATCH_EVENTS: usize = 256;
/// How often connections of exited processes are looked for, unless told otherwise.
pub const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(10);
/// How long the fentry/fexit capture keeps the accept exit tracepoints after the start: while a
/// syscall tracepoint is attached, every syscall on the host takes the kernel's slower tracing
/// path, so they go once the services' accept loops have likely come round.
const LATE_ACCEPT_GRACE: Duration = Duration::from_secs(120);
/// How often the kernel's counters are read into metrics.
const COUNTER_INTERVAL: Duration = Duration::from_secs(1);
/// How long the reader waits for events: data events do not wake it (see `data_submit_flags` in
/// sockets.rs), so this is also how late they can be read.
const POLL_TIMEOUT_MS: i32 = 20;
/// The shortest time between two drains: reading a busy ring as soon as it has any record made
/// batches of a few events, each a wake-up of this thread and the span builder's.
const MIN_DRAIN_INTERVAL: Duration = Duration::from_millis(5);
/// How long the last drain at shutdown waits for room in the span builder's queue.
const FINAL_DRAIN_WAIT: Duration = Duration::from_secs(1);

/// One syscall's programs: its tracepoint pair (`exit` is None when sys_exit has nothing to do)
/// and its fentry/fexit program on the syscall's entry point.
struct Syscall {
    name: &'static str,
    enter: &'static str,
    exit: Option<&'static str>,
    trampoline: Trampoline,
}

/// The fentry or fexit program of a syscall.
#[derive(Clone, Copy)]
enum Trampoline {
    /// Runs as the call starts (close: before the fd number can be handed out again).
    Entry(&'static str),
    /// Runs as it returns, with its arguments and result.
    Exit(&'static str),
}

impl Trampoline {
    fn program(self) -> &'static str {
        match self {
            Trampoline::Entry(p) | Trampoline::Exit(p) => p,
        }
    }
}

macro_rules! syscalls {
    ($($name:literal: $enter:literal, $exit:expr, $trampoline:expr;)*) => {
        &[$(Syscall { name: $name, enter: $enter, exit: $exit, trampoline: $trampoline }),*]
    };
}

const SYSCALLS: &[Syscall] = syscalls! {
    "accept": "sock_enter_accept", Some("sock_exit_accept"), Trampoline::Exit("sock_fexit_accept");
    "accept4": "sock_enter_accept4", Some("sock_exit_accept4"), Trampoline::Exit("sock_fexit_accept4");
    "connect": "sock_enter_connect", Some("sock_exit_connect"), Trampoline::Exit("sock_fexit_connect");
    "close": "sock_enter_close", None, Trampoline::Entry("sock_fentry_close");
    "read": "sock_enter_read", Some("sock_exit_read"), Trampoline::Exit("sock_fexit_read");
    "write": "sock_enter_write", Some("sock_exit_write"), Trampoline::Exit("sock_fexit_write");
    "recvfrom": "sock_enter_recvfrom", Some("sock_exit_recvfrom"), Trampoline::Exit("sock_fexit_recvfrom");
    "sendto": "sock_enter_sendto", Some("sock_exit_sendto"), Trampoline::Exit("sock_fexit_sendto");
    "readv": "sock_enter_readv", Some("sock_exit_readv"), Trampoline::Exit("sock_fexit_readv");
    "writev": "sock_enter_writev", Some("sock_exit_writev"), Trampoline::Exit("sock_fexit_writev");
    "recvmsg": "sock_enter_recvmsg", Some("sock_exit_recvmsg"), Trampoline::Exit("sock_fexit_recvmsg");
    "sendmsg": "sock_enter_sendmsg", Some("sock_exit_sendmsg"), Trampoline::Exit("sock_fexit_sendmsg");
};

/// With in-band trace context, the fentry/fexit set also runs at the start of every send: a
/// client request's context must be known before its bytes leave.
const SEND_ENTRIES: &[(&str, &str)] = &[
    ("write", "sock_fentry_write"),
    ("sendto", "sock_fentry_sendto"),
    ("writev", "sock_fentry_writev"),
    ("sendmsg", "sock_fentry_sendmsg"),
];

/// The sockops program writing and reading the trace context TCP option.
const TCP_CONTEXT_PROGRAM: &str = "loupe_tcp_context";

/// How the syscalls' entry points are named (`__x64_sys_read`) and where their `struct pt_regs`
/// keeps the first three arguments: di, si, dx on x86-64 (arch/x86/include/asm/ptrace.h), regs[0..3]
/// on arm64.
#[cfg(target_arch = "x86_64")]
const ENTRY_POINTS: Option<(&str, [u32; 3])> = Some(("__x64_sys_", [112, 104, 96]));
#[cfg(target_arch = "aarch64")]
const ENTRY_POINTS: Option<(&str, [u32; 3])> = Some(("__arm64_sys_", [0, 8, 16]));
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const ENTRY_POINTS: Option<(&str, [u32; 3])> = None;

/// Log writes per process per second the kernel passes on by default.
pub const DEFAULT_LOG_WRITES_PER_SEC: u32 = 2000;

/// Socket capture settings taken from the configuration.
#[derive(Debug, Clone)]
pub struct CaptureOptions {
    /// Bytes copied per read/write buffer (clamped to MAX_CAPTURE_BYTES).
    pub capture_bytes: u32,
    /// The agent's own pid, as the kernel sees it (host pid namespace): never traced (0 traces
    /// every process, for tests).
    pub agent_pid: u32,
    /// Only connections of these processes (empty: all).
    pub pids: Vec<u32>,
    /// Bytes of batches (see [`QueuedBytes`]) the channel to the span builder holds at most.
    pub queue_bytes: usize,
    /// How often connections of exited processes are forgotten.
    pub sweep_interval: Duration,
    /// The attach method to try first (the doctor's plan); tracepoints are the fallback.
    pub attach: SocketAttach,
    /// Follow the TCP connections already open when the capture starts (found in /proc).
    pub seed_existing: bool,
    /// Capture writes to stdout and stderr (fds 1 and 2) as LOG events.
    pub capture_logs: bool,
    /// Log writes per process per second the kernel passes on; more are counted and dropped.
    pub log_writes_per_sec: u32,
    /// Keep each thread's current server request in the kernel (tags CPU samples with spans).
    pub track_requests: bool,
    /// In-band trace context in a TCP option (see `tcp_context.rs` in loupe-ebpf).
    pub tcp_context: bool,
    /// Peers whose TCP option context is adopted: (network, prefix length).
    pub trusted_peers: Vec<(std::net::IpAddr, u8)>,
    /// The TLS library probes will run (`--tls`): data syscalls check whether they are inside
    /// a probed TLS call.
    pub tls: bool,
    /// While on, events read are dropped (counted as `memory_pressure`).
    pub pressure: Pressure,
}

impl Default for CaptureOptions {
    fn default() -> Self {
        CaptureOptions {
            capture_bytes: DEFAULT_CAPTURE_BYTES,
            agent_pid: std::process::id(),
            pids: Vec::new(),
            queue_bytes: DEFAULT_QUEUE_BYTES,
            sweep_interval: DEFAULT_SWEEP_INTERVAL,
            attach: SocketAttach::Tracepoints,
            seed_existing: true,
            capture_logs: false,
            log_writes_per_sec: DEFAULT_LOG_WRITES_PER_SEC,
            track_requests: true,
            tcp_context: false,
            trusted_peers: Vec::new(),
            tls: false,
            pressure: Pressure::default(),
        }
    }
}

struct Metrics {
    open: Counter,
    data: Counter,
    close: Counter,
    log: Counter,
    log_writes_limited: Counter,
    dropped_ring_full: Counter,
    dropped_args_map_full: Counter,
    dropped_queue_full: Counter,
    dropped_memory_pressure: Counter,
    untracked_map_full: Counter,
    untracked_seed_limit: Counter,
    read_failures_buffer: Counter,
    read_failures_tuple: Counter,
    swept: Counter,
    seeded: Counter,
    connections: Gauge,
    ctx_adopted: Counter,
    ctx_untrusted: Counter,
    ctx_write_failed: Counter,
    tls_no_socket: Counter,
    go_spawn_inherited: Counter,
    go_wake_inherited: Counter,
    go_client_live: Counter,
    go_client_stale: Counter,
    go_client_none: Counter,
    thread_client: [Counter; 3],
}

impl Metrics {
    fn new(r: &Registry) -> Self {
        let events = |kind: &str| {
            r.counter(
                "loupe_socket_events_total",
                "Socket events read from the kernel (or made up for exited processes), by kind.",
                &[("kind", kind)],
            )
        };
        let go_inherited = |how: &str| {
            r.counter(
                "loupe_go_goroutine_requests_total",
                "Goroutines that took on the server request of the goroutine that created \
                 (spawn) or woke (wake) them.",
                &[("how", how)],
            )
        };
        let go_client = |request: &str| {
            r.counter(
                "loupe_go_client_requests_total",
                "Client requests of Go processes, by what the goroutine making them worked for: \
                 an unanswered server request (live: its span is their parent), one already \
                 answered (answered: a new trace), none (none: a new trace).",
                &[("request", request)],
            )
        };
        let dropped = |reason: &str| {
            r.counter(
                "loupe_socket_events_dropped_total",
                "Socket events lost before the span builder, by reason.",
                &[("reason", reason)],
            )
        };
        let untracked = |reason: &str| {
            r.counter(
                "loupe_socket_connections_untracked_total",
                "TCP connections not tracked, by reason.",
                &[("reason", reason)],
            )
        };
        let read_failures = |what: &str| {
            r.counter(
                "loupe_socket_read_failures_total",
                "Memory the socket programs could not read: a data buffer (event sent without \
                 bytes) or a socket's addresses (connection tracked without them).",
                &[("what", what)],
            )
        };
        Metrics {
            open: events("open"),
            data: events("data"),
            close: events("close"),
            log: events("log"),
            log_writes_limited: r.counter(
                "loupe_logs_writes_dropped_total",
                "Writes to stdout/stderr not captured, by reason (rate_limit: the process wrote \
                 more than --log-writes-per-sec).",
                &[("reason", "rate_limit")],
            ),
            dropped_ring_full: dropped("ring_full"),
            dropped_args_map_full: dropped("args_map_full"),
            dropped_queue_full: dropped("queue_full"),
            dropped_memory_pressure: dropped("memory_pressure"),
            untracked_map_full: untracked("map_full"),
            // Connections open at the start beyond half the connection map (the other half is
            // kept for new ones).
            untracked_seed_limit: untracked("seed_limit"),
            read_failures_buffer: read_failures("buffer"),
            read_failures_tuple: read_failures("tuple"),
            swept: r.counter(
                "loupe_socket_connections_swept_total",
                "Tracked connections forgotten because their process exited without closing them.",
                &[],
            ),
            seeded: r.counter(
                "loupe_socket_connections_seeded_total",
                "Connections already open when the capture started, found in /proc and followed.",
                &[],
            ),
            connections: r.gauge(
                "loupe_socket_connections",
                "Connections tracked in the kernel at the last sweep.",
                &[],
            ),
            ctx_adopted: r.counter(
                "loupe_tcp_context_adopted_total",
                "Server requests that adopted the trace context a trusted peer sent in its TCP \
                 option.",
                &[],
            ),
            ctx_untrusted: r.counter(
                "loupe_tcp_context_untrusted_total",
                "TCP options with trace context from a peer outside --tcp-context-trusted, ignored.",
                &[],
            ),
            ctx_write_failed: r.counter(
                "loupe_tcp_context_write_failures_total",
                "Client segments that should have carried the trace context option but had no \
                 option space left (or the store failed).",
                &[],
            ),
            tls_no_socket: dropped("tls_no_socket"),
            go_spawn_inherited: go_inherited("spawn"),
            go_wake_inherited: go_inherited("wake"),
            go_client_live: go_client("live"),
            go_client_stale: go_client("answered"),
            go_client_none: go_client("none"),
            thread_client: ["thread", "process", "none"].map(|parent| {
                r.counter(
                    "loupe_client_request_parents_total",
                    "Client requests of processes not followed by goroutine, by the server \
                     request the kernel made them children of: the one their thread serves \
                     (thread), the process's only one waiting for its response when the thread \
                     serves none, as an async runtime's worker after an .await (process), or \
                     none, with no or several requests waiting (none: a new trace).",
                    &[("parent", parent)],
                )
            }),
        }
    }
}

/// The maps the reader thread owns.
struct ReaderMaps {
    ring: RingBuf<MapData>,
    counters: PerCpuArray<MapData, u64>,
    connections: BpfHashMap<MapData, u64, ConnState>,
    args: BpfHashMap<MapData, u64, SyscallArgs>,
    /// A client connection's in-band context (by tuple) and parent (by connection id): the
    /// sweep deletes them for connections whose process exited without closing them.
    tcp_ctx_out: Option<Deleter<ConnTuple>>,
    client_parents: Option<Deleter<u64>>,
    /// The maps whose entries belong to a process: the sweep forgets those of processes gone.
    by_process: Vec<ForgetGone>,
}

/// Deletes a map's entries of the processes `alive` says are gone; returns how many went.
type ForgetGone = Box<dyn Fn(&mut dyn FnMut(u32) -> bool) -> u64 + Send>;

/// The maps whose entries a process's exit leaves behind, with where their keys hold the
/// process id. The profiler's exit tracepoint deletes a thread's THREAD_REQUESTS and a process's
/// PROCESS_REQUESTS entries where it runs; the goroutine and TLS maps have no such program.
fn by_process(ebpf: &Ebpf) -> Vec<ForgetGone> {
    fn forget<K: aya::Pod + Send>(
        ebpf: &Ebpf,
        name: &'static str,
        owner: fn(&K) -> u32,
    ) -> Option<ForgetGone> {
        let maps = stale_entries::<K>(ebpf, name)?;
        Some(Box::new(move |alive| maps.forget_gone(owner, alive)))
    }
    let tgid = |k: &GoroutineKey| k.tgid;
    [
        forget::<u64>(ebpf, "THREAD_REQUESTS", |pid_tgid| (pid_tgid >> 32) as u32),
        forget::<u32>(ebpf, "PROCESS_REQUESTS", |tgid| *tgid),
        forget::<GoroutineKey>(ebpf, "GO_REQUESTS", tgid),
        forget::<GoroutineKey>(ebpf, "GO_HTTP_CONNS", tgid),
        forget::<GoroutineKey>(ebpf, "GO_HTTP_WRITERS", tgid),
        forget::<GoroutineKey>(ebpf, "GO_TLS_CALLS", tgid),
        forget::<TlsKey>(ebpf, "TLS_FDS", |k| k.pid),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The running socket capture. Dropping it stops the reader and detaches every program.
pub struct SocketCapture {
    /// Owned links: the programs stay attached while these live, whatever becomes of the `Ebpf`.
    links: Vec<CaptureLink>,
    /// Kept for the capture's lifetime: dropping a taken map closes its fd.
    _config: Array<MapData, SocketConfig>,
    _pids: BpfHashMap<MapData, u32, u8>,
    offsets_valid: bool,
    /// Why in-band trace context is off, when it was asked for and is.
    tcp_context: Result<(), String>,
    method: SocketAttach,
    /// Why the method asked for was not used, if it was not.
    fallback: Option<String>,
    attached: Vec<&'static str>,
    reader: Option<(thread::JoinHandle<()>, Arc<AtomicBool>)>,
}

/// What the sweep needs to delete dead processes' entries from the LRU map `name`; without it
/// (a warning) they wait for the kernel to evict them.
fn stale_entries<K: aya::Pod>(ebpf: &Ebpf, name: &'static str) -> Option<Deleter<K>> {
    Deleter::open(ebpf, name)
        .inspect_err(|e| {
            tracing::warn!("{e}: exited processes' entries stay until the kernel evicts them")
        })
        .ok()
}

fn map_error(name: &'static str) -> impl Fn(aya::maps::MapError) -> EbpfError {
    move |e| EbpfError::Map {
        name,
        message: e.to_string(),
    }
}

impl SocketCapture {
    /// Configures, loads and attaches the socket programs of `ebpf` and starts the reader thread.
    /// Takes the socket maps and programs' links out of `ebpf`; the rest (the profiler's) stays.
    /// A syscall whose tracepoints cannot be attached is skipped with a warning; a program the
    /// verifier rejects is an error.
    pub fn start(
        ebpf: &mut Ebpf,
        options: CaptureOptions,
        registry: &Registry,
    ) -> Result<(SocketCapture, Receiver<SocketEvents>), EbpfError> {
        let offsets = match super::btf::kernel_offsets() {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(
                    "cannot read kernel struct offsets from BTF ({e}); connections are tracked \
                     without their addresses and non-TCP sockets are filtered less precisely"
                );
                KernelOffsets::default()
            }
        };
        let capture_bytes = options.capture_bytes.min(MAX_CAPTURE_BYTES as u32);

        // Attached before the configuration says `propagate`, so nothing half-works meanwhile.
        let mut links = Vec::new();
        let tcp_context = if options.tcp_context {
            attach_tcp_context(ebpf, &options.trusted_peers).map(|link| links.push(link))
        } else {
            Err("off (--tcp-context=false)".to_owned())
        };
        if let Err(e) = &tcp_context
            && options.tcp_context
        {
            tracing::warn!(
                "in-band trace context is off: {e}; spans across nodes link only through \
                 traceparent headers"
            );
        }
        let propagate = tcp_context.is_ok();

        let mut config: Array<MapData, SocketConfig> = take_map(ebpf, "SOCKET_CONFIG")?;
        let mut pids: BpfHashMap<MapData, u32, u8> = take_map(ebpf, "SOCKET_PIDS")?;
        for pid in &options.pids {
            pids.insert(pid, 1, 0).map_err(map_error("SOCKET_PIDS"))?;
        }
        config
            .set(
                0,
                SocketConfig {
                    capture_bytes,
                    agent_pid: options.agent_pid,
                    offsets,
                    filter_pids: u32::from(!options.pids.is_empty()),
                    capture_logs: u32::from(options.capture_logs),
                    regs_arg_offsets: ENTRY_POINTS.map(|(_, o)| o).unwrap_or_default(),
                    log_writes_per_sec: options.log_writes_per_sec,
                    // The client side needs the thread's server request to parent its context.
                    track_requests: u32::from(options.track_requests || propagate),
                    propagate: u32::from(propagate),
                    tls: u32::from(options.tls),
                },
                0,
            )
            .map_err(map_error("SOCKET_CONFIG"))?;
        let mut maps = ReaderMaps {
            ring: take_map(ebpf, "SOCKET_EVENTS")?,
            counters: take_map(ebpf, "SOCKET_COUNTERS")?,
            connections: take_map(ebpf, "CONNECTIONS")?,
            args: take_map(ebpf, "SOCKET_ARGS")?,
            tcp_ctx_out: stale_entries(ebpf, "TCP_CTX_OUT"),
            client_parents: stale_entries(ebpf, "CLIENT_PARENTS"),
            by_process: by_process(ebpf),
        };

        let mut method = SocketAttach::Tracepoints;
        let mut fallback = None;
        let mut late_accepts = Vec::new();
        let mut attached = Vec::new();
        if options.attach == SocketAttach::Fentry {
            match attach_trampolines(ebpf, propagate) {
                Ok(mut l) => {
                    links.append(&mut l);
                    attached = SYSCALLS.iter().map(|s| s.name).collect();
                    method = SocketAttach::Fentry;
                    late_accepts = attach_late_accepts(ebpf);
                }
                Err(e) => {
                    tracing::warn!(
                        "socket capture falls back to syscall tracepoints: {e} (run with \
                         RUST_LOG=debug for the verifier log)"
                    );
                    fallback = Some(e.to_string());
                }
            }
        }
        if method == SocketAttach::Tracepoints {
            for s in SYSCALLS {
                for prog in std::iter::once(s.enter).chain(s.exit) {
                    program::<TracePoint>(ebpf, prog)?
                        .load()
                        .map_err(|e| rejected(prog, e))?;
                }
            }
            for s in SYSCALLS {
                match attach_syscall(ebpf, s) {
                    Ok(mut l) => {
                        links.append(&mut l);
                        attached.push(s.name);
                    }
                    Err(e) => tracing::warn!("{e}; {}() is not captured", s.name),
                }
            }
        }
        if attached.is_empty() {
            return Err(EbpfError::Unavailable(
                "no syscall tracepoint could be attached (is tracefs mounted?)".into(),
            ));
        }

        let metrics = Metrics::new(registry);
        // With the programs attached (a close from now on is seen), put the connections that
        // were open before into the map; the kernel's own entries win (BPF_NOEXIST).
        if options.seed_existing {
            let agent_pid = options.agent_pid;
            let wanted = |pid: u32| {
                (agent_pid == 0 || pid != agent_pid)
                    && (options.pids.is_empty() || options.pids.contains(&pid))
            };
            let found = super::seed::find_connections(
                std::path::Path::new("/proc"),
                wanted,
                CONN_ENTRIES as usize / 2,
            );
            const BPF_NOEXIST: u64 = 1;
            let mut seeded = 0;
            for (key, state) in &found.connections {
                match maps.connections.insert(key, state, BPF_NOEXIST) {
                    Ok(()) => seeded += 1,
                    // The kernel tracks it already.
                    Err(aya::maps::MapError::SyscallError(e))
                        if e.io_error.raw_os_error() == Some(libc::EEXIST) => {}
                    Err(_) => metrics.untracked_map_full.inc(),
                }
            }
            metrics.seeded.add(seeded);
            metrics.untracked_seed_limit.add(found.over_limit as u64);
            tracing::info!(
                connections = seeded,
                "connections open before the start are followed"
            );
        }
        // The queue is bound in bytes (the batches' true size, see `QueuedBytes`); every batch
        // costs at least its event vector, which bounds the number of batches likewise.
        let queue_bytes = options.queue_bytes.max(1);
        let (tx, rx) = sync_channel(queue_bytes.div_ceil(EMPTY_BATCH_BYTES));
        let stop = Arc::new(AtomicBool::new(false));
        let sweep_interval = options.sweep_interval;
        let pressure = options.pressure.clone();
        let handle = {
            let stop = stop.clone();
            thread::Builder::new()
                .name("loupe-sockets".into())
                .spawn(move || {
                    read_events(
                        maps,
                        tx,
                        metrics,
                        sweep_interval,
                        stop,
                        late_accepts,
                        Tally {
                            pressure,
                            queue_bytes,
                            ..Tally::default()
                        },
                    )
                })
                .map_err(|e| {
                    EbpfError::Unavailable(format!("cannot start the socket reader thread: {e}"))
                })?
        };
        tracing::info!(
            method = %method,
            syscalls = attached.len(),
            capture_bytes,
            offsets = offsets.valid != 0,
            pids = ?options.pids,
            "socket capture attached"
        );
        Ok((
            SocketCapture {
                links,
                _config: config,
                _pids: pids,
                offsets_valid: offsets.valid != 0,
                tcp_context,
                method,
                fallback,
                attached,
                reader: Some((handle, stop)),
            },
            rx,
        ))
    }

    /// Whether connections carry their addresses (struct offsets were found in BTF).
    pub fn offsets_valid(&self) -> bool {
        self.offsets_valid
    }

    /// Why in-band trace context (the TCP option) is off, or `None` when it is on.
    pub fn tcp_context_off(&self) -> Option<&str> {
        self.tcp_context.as_ref().err().map(String::as_str)
    }

    /// How the programs are attached: fentry/fexit or syscall tracepoints.
    pub fn method(&self) -> SocketAttach {
        self.method
    }

    /// Why the capture fell back to tracepoints from the method it was asked for, if it did.
    pub fn fallback(&self) -> Option<&str> {
        self.fallback.as_deref()
    }

    /// Syscalls whose calls are captured.
    pub fn attached(&self) -> &[&'static str] {
        &self.attached
    }

    /// Detaches the programs and stops the reader (the channel then disconnects).
    pub fn stop(&mut self) {
        self.links.clear();
        if let Some((handle, stop)) = self.reader.take() {
            stop.store(true, Ordering::Relaxed);
            let _ = handle.join();
        }
    }
}

impl Drop for SocketCapture {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A program's link, of whichever kind: dropping it detaches the program.
enum CaptureLink {
    TracePoint(#[allow(dead_code)] TracePointLink),
    FEntry(#[allow(dead_code)] FEntryLink),
    FExit(#[allow(dead_code)] FExitLink),
    SockOps(#[allow(dead_code)] SockOpsLink),
}

/// Loads the sockops program, fills the trusted peers, and attaches it to the root cgroup
/// through a BPF link (which goes with the agent, even on SIGKILL). Header-option callbacks
/// exist from Linux 5.10 (checked by `probe::tcp_options_root`), links for cgroup programs from
/// 5.7.
fn attach_tcp_context(
    ebpf: &mut Ebpf,
    trusted: &[(std::net::IpAddr, u8)],
) -> Result<CaptureLink, String> {
    let root = crate::probe::tcp_options_root().map_err(|missing| missing.to_string())?;
    let cgroup = std::fs::File::open(&root)
        .map_err(|e| format!("cannot open the cgroup root {}: {e}", root.display()))?;
    let mut peers: LpmTrie<MapData, [u8; 16], u8> =
        take_map(ebpf, "TRUSTED_PEERS").map_err(|e| e.to_string())?;
    for (addr, len) in trusted {
        let (bytes, len) = match addr {
            std::net::IpAddr::V4(a) => (a.to_ipv6_mapped().octets(), u32::from(*len) + 96),
            std::net::IpAddr::V6(a) => (a.octets(), u32::from(*len)),
        };
        peers
            .insert(&LpmKey::new(len, bytes), 1, 0)
            .map_err(|e| format!("TRUSTED_PEERS: {e}"))?;
    }
    let name = TCP_CONTEXT_PROGRAM;
    let p: &mut SockOps = program(ebpf, name).map_err(|e| e.to_string())?;
    p.load().map_err(|e| rejected(name, e).to_string())?;
    // Loaded, the program holds the map; its fd here may go (not before: loading resolves the
    // program's map references through it).
    drop(peers);
    let id = p
        // Through a BPF link (5.7+) the kernel takes no attach flags, and links always share
        // the cgroup with other programs (Cilium's, OBI's): multi is implied.
        .attach(&cgroup, CgroupAttachMode::Single)
        .map_err(|e| {
            let cause = std::error::Error::source(&e)
                .map(|c| format!(": {c}"))
                .unwrap_or_default();
            format!("cannot attach {name} to {}: {e}{cause}", root.display())
        })?;
    let link = p.take_link(id).map_err(|e| e.to_string())?;
    Ok(CaptureLink::SockOps(link))
}

/// Attaches the loaded tracepoint program `prog` to `syscalls:<tracepoint>`; the link is ours.
fn attach_owned(
    ebpf: &mut Ebpf,
    prog: &'static str,
    tracepoint: &str,
) -> Result<CaptureLink, EbpfError> {
    let program: &mut TracePoint = program(ebpf, prog)?;
    let attach_error = |source| EbpfError::Attach { name: prog, source };
    let id = program
        .attach("syscalls", tracepoint)
        .map_err(attach_error)?;
    Ok(CaptureLink::TracePoint(
        program.take_link(id).map_err(attach_error)?,
    ))
}

/// Attaches sys_exit before sys_enter, so every saved enter meets its exit; if sys_enter fails,
/// the exit link is dropped (detached) again.
fn attach_syscall(ebpf: &mut Ebpf, s: &Syscall) -> Result<Vec<CaptureLink>, EbpfError> {
    let mut links = Vec::with_capacity(2);
    for (prog, tracepoint) in s
        .exit
        .map(|p| (p, format!("sys_exit_{}", s.name)))
        .into_iter()
        .chain([(s.enter, format!("sys_enter_{}", s.name))])
    {
        links.push(attach_owned(ebpf, prog, &tracepoint)?);
    }
    Ok(links)
}

/// With fentry/fexit: attaches the accept exit tracepoints that track connections accepted by
/// threads blocked in accept() since before the start (see `sock_exit_accept_late`), for
/// LATE_ACCEPT_GRACE. Best effort: without them only those first connections are missed.
fn attach_late_accepts(ebpf: &mut Ebpf) -> Vec<CaptureLink> {
    let mut links = Vec::new();
    for (prog, tracepoint) in [
        ("sock_exit_accept_late", "sys_exit_accept"),
        ("sock_exit_accept4_late", "sys_exit_accept4"),
    ] {
        let attached = program::<TracePoint>(ebpf, prog)
            .and_then(|p| p.load().map_err(|e| rejected(prog, e)))
            .and_then(|()| attach_owned(ebpf, prog, tracepoint));
        match attached {
            Ok(link) => links.push(link),
            Err(e) => tracing::debug!(
                "{e}: a thread blocked in accept() at start-up has its next connection missed"
            ),
        }
    }
    links
}

/// Loads and attaches every syscall's fentry/fexit program, or none: on the first failure the links
/// made so far are dropped (detached) and the error returned.
fn attach_trampolines(ebpf: &mut Ebpf, propagate: bool) -> Result<Vec<CaptureLink>, EbpfError> {
    let Some((prefix, _)) = ENTRY_POINTS else {
        return Err(EbpfError::Unavailable(
            "fentry/fexit capture is not written for this CPU architecture".into(),
        ));
    };
    let btf = aya::Btf::from_sys_fs()
        .map_err(|e| EbpfError::Unavailable(format!("fentry/fexit need the kernel's BTF: {e}")))?;
    let mut links = Vec::with_capacity(SYSCALLS.len());
    for s in SYSCALLS {
        let function = format!("{prefix}{}", s.name);
        let name = s.trampoline.program();
        let attach_error = |source: ProgramError| EbpfError::Attach { name, source };
        let link = match s.trampoline {
            Trampoline::Entry(_) => {
                let p: &mut FEntry = program(ebpf, name)?;
                p.load(&function, &btf).map_err(|e| rejected(name, e))?;
                let id = p.attach().map_err(attach_error)?;
                CaptureLink::FEntry(p.take_link(id).map_err(attach_error)?)
            }
            Trampoline::Exit(_) => {
                let p: &mut FExit = program(ebpf, name)?;
                p.load(&function, &btf).map_err(|e| rejected(name, e))?;
                let id = p.attach().map_err(attach_error)?;
                CaptureLink::FExit(p.take_link(id).map_err(attach_error)?)
            }
        };
        links.push(link);
    }
    for (syscall, name) in SEND_ENTRIES.iter().filter(|_| propagate) {
        let function = format!("{prefix}{syscall}");
        let attach_error = |source: ProgramError| EbpfError::Attach { name, source };
        let p: &mut FEntry = program(ebpf, name)?;
        p.load(&function, &btf).map_err(|e| rejected(name, e))?;
        let id = p.attach().map_err(attach_error)?;
        links.push(CaptureLink::FEntry(p.take_link(id).map_err(attach_error)?));
    }
    Ok(links)
}

mod reader;

pub use reader::QueuedBytes;
use reader::{EMPTY_BATCH_BYTES, Tally, read_events};

#[cfg(test)]
mod tests;
