//! Request tracking for trace context (with `--tcp-context`): which server request each thread,
//! connection and process is working for, the context a client request is sent with, and the
//! request a client connection's call was made for. The capture programs in `sockets.rs` call in
//! here at each data syscall on a tracked connection; the profiler reads `THREAD_REQUESTS`.

use super::*;

/// The request each thread serves, keyed by `pid_tgid` (see [`ThreadRequest`]); the profiler
/// tags CPU samples with it.
#[map]
pub static THREAD_REQUESTS: LruHashMap<u64, ThreadRequest> =
    LruHashMap::with_max_entries(THREAD_REQUEST_ENTRIES, 0);

/// Server requests waiting for their response, per process (see [`ProcessRequests`]), keyed by
/// tgid: whom a call belongs to when its thread serves no live request (async runtimes).
#[map]
pub static PROCESS_REQUESTS: LruHashMap<u32, ProcessRequests> =
    LruHashMap::with_max_entries(PROCESS_REQUEST_ENTRIES, 0);

/// The server request each client connection's current request was made for (see
/// [`ClientParent`]), keyed by the client connection's `conn_id`.
#[map]
pub(super) static CLIENT_PARENTS: LruHashMap<u64, ClientParent> =
    LruHashMap::with_max_entries(CLIENT_PARENT_ENTRIES, 0);

/// [`thread_request`], and in a followed Go process also the goroutine's (see
/// [`goroutines`]): a goroutine that goes on reading its request from another thread keeps the
/// request and its context, and its response ends it whichever thread writes it.
///
/// A request read by two goroutines (net/http's background reader takes the first byte of the
/// next request, the connection's goroutine the rest) is one request: the connection keeps the
/// context its first read got until a write (`ConnState::ctx`, `last_direction`).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(super) fn server_request(
    pid_tgid: u64,
    fd: i32,
    state: &ConnState,
    conn: *mut ConnState,
    data_direction: u32,
    ts: u64,
    config: &SocketConfig,
    ctx: &mut SpanCtx,
) -> (u64, u32) {
    let conn = Some(conn);
    let Some(goroutine) = goroutines::current(pid_tgid) else {
        return thread_request(pid_tgid, fd, state, conn, data_direction, ts, config, ctx);
    };
    let own = goroutines::own_request(&goroutine)
        .filter(|r| r.conn_id == state.conn_id)
        .map(|r| (r.request_ns, r.ctx));
    let ctx_flag = if config.propagate != 0 { flags::CTX } else { 0 };
    if data_direction == direction::INGRESS {
        if let Some((request_ns, own_ctx)) = own {
            *ctx = own_ctx;
            return (request_ns, ctx_flag);
        }
        // Whatever the thread read last: a request the thread saw read by another goroutine
        // (whose response another thread wrote) is not this one. The connection says whether
        // this read starts a request or goes on with the one it has.
        counted::remove(&THREAD_REQUESTS, lru::THREAD_REQUESTS, &pid_tgid);
        let (request_ns, event_flags) =
            thread_request(pid_tgid, fd, state, conn, data_direction, ts, config, ctx);
        let r = GoroutineRequest {
            root: goroutine.g,
            conn_id: state.conn_id,
            request_ns,
            ctx: *ctx,
            woken: 0,
            _pad: 0,
        };
        goroutines::serve(&goroutine, &r);
        return (request_ns, event_flags);
    }
    let (request_ns, event_flags) =
        thread_request(pid_tgid, fd, state, conn, data_direction, ts, config, ctx);
    match own {
        Some((own_ns, own_ctx)) => {
            *ctx = own_ctx;
            goroutines::forget(&goroutine);
            (own_ns, event_flags | ctx_flag)
        }
        None => (request_ns, event_flags),
    }
}

/// Keeps the thread's current request (see [`ThreadRequest`]) and the connection's (`conn`, the
/// map's value of `state`: `last_direction`, `ctx`) up to date as the thread reads from or writes
/// to the server connection `state` at `ts`; returns the request the bytes belong to (or ended),
/// the event flags and, with in-band propagation, the request's context.
///
/// A read starts a request unless the connection's last data was a read too: then it goes on
/// with the request the connection has, whichever thread read the start (an async runtime's
/// worker may read a head another worker began). The first write ends it. Starts and ends are
/// counted per process ([`PROCESS_REQUESTS`]).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(super) fn thread_request(
    pid_tgid: u64,
    fd: i32,
    state: &ConnState,
    conn: Option<*mut ConnState>,
    data_direction: u32,
    ts: u64,
    config: &SocketConfig,
    ctx: &mut SpanCtx,
) -> (u64, u32) {
    let ctx_flag = if config.propagate != 0 { flags::CTX } else { 0 };
    // SAFETY: the pointer comes from a successful CONNECTIONS lookup; see client_sending.
    let open = conn.is_some_and(|c| unsafe { (*c).last_direction == direction::INGRESS });
    // The thread's entry, live or ended: it is updated in place (a map update or delete per
    // request cost more than the rest of the bookkeeping).
    let entry = THREAD_REQUESTS.get_ptr_mut(pid_tgid);
    let current = entry.and_then(|r| {
        // SAFETY: the pointer comes from a successful lookup; read in place. Only programs
        // running for this thread touch its entry (and the profiler's sample flag, which
        // cannot run while a socket program runs on this CPU).
        let r = unsafe { &mut *r };
        (r.conn_id == state.conn_id && r.conn_id != 0).then_some(r)
    });
    if data_direction == direction::INGRESS {
        if let Some(r) = current
            && open
        {
            *ctx = r.ctx;
            return (r.request_ns, ctx_flag);
        }
        let mut from_peer = 0;
        match conn {
            // SAFETY: as above.
            Some(c) if open => *ctx = unsafe { (*c).ctx },
            _ => {
                if config.propagate != 0 {
                    from_peer = server_ctx(&state.tuple, ctx);
                }
                if let Some(c) = conn {
                    // SAFETY: as above.
                    unsafe {
                        (*c).ctx = *ctx;
                        (*c).last_direction = direction::INGRESS;
                    }
                    process_request_started(pid_tgid, fd, state.conn_id, ctx);
                }
            }
        }
        let r = ThreadRequest {
            conn_id: state.conn_id,
            request_ns: ts,
            sampled: 0,
            fd: fd as u32,
            ctx: *ctx,
        };
        match entry {
            // SAFETY: as above.
            Some(e) => unsafe { *e = r },
            // LRU: a full map forgets the least recently used thread.
            None => {
                counted::put(&THREAD_REQUESTS, lru::THREAD_REQUESTS, &pid_tgid, &r);
            }
        }
        return (ts, ctx_flag | from_peer);
    }
    if open && let Some(c) = conn {
        // SAFETY: as above.
        unsafe { (*c).last_direction = direction::EGRESS };
        process_request_ended(pid_tgid);
    }
    match current {
        Some(r) => {
            let (request_ns, sampled) = (r.request_ns, r.sampled);
            *ctx = r.ctx;
            // Ended: the entry stays for the thread's next request, with no request in it.
            r.end();
            let f = if sampled != 0 {
                flags::REQUEST_SAMPLED
            } else {
                0
            };
            (request_ns, f | ctx_flag)
        }
        None => (0, 0),
    }
}

/// A server request of this process started on the connection (`fd`, `conn_id`) with `ctx`.
#[inline(always)]
pub(super) fn process_request_started(pid_tgid: u64, fd: i32, conn_id: u64, ctx: &SpanCtx) {
    let tgid = (pid_tgid >> 32) as u32;
    let fresh = ProcessRequests {
        live: 1,
        last_conn_id: conn_id,
        last_fd: fd as u32,
        _pad: 0,
        last_ctx: *ctx,
    };
    let p = match PROCESS_REQUESTS.get_ptr_mut(&tgid) {
        Some(p) => p,
        None => {
            // BPF_NOEXIST: another CPU may have made the entry meanwhile; then add to it.
            if counted::insert_new(&PROCESS_REQUESTS, lru::PROCESS_REQUESTS, &tgid, &fresh) {
                return;
            }
            let Some(p) = PROCESS_REQUESTS.get_ptr_mut(&tgid) else {
                return;
            };
            p
        }
    };
    // SAFETY: the pointer comes from a successful lookup of a map value, 8-byte aligned; the
    // count is only changed by atomic adds (and the clamp in process_request_ended). The rest is
    // a plain store: a torn write by two CPUs at once leaves a context that fails its live check
    // or names one of the two requests.
    unsafe {
        atomic_xadd::<i64, i64, { AtomicOrdering::Relaxed }>(&raw mut (*p).live, 1);
        (*p).last_conn_id = conn_id;
        (*p).last_fd = fd as u32;
        (*p).last_ctx = *ctx;
    }
}

/// A server request of this process got its response (or its connection closed).
#[inline(always)]
pub(super) fn process_request_ended(pid_tgid: u64) {
    let tgid = (pid_tgid >> 32) as u32;
    if let Some(p) = PROCESS_REQUESTS.get_ptr_mut(&tgid) {
        // SAFETY: as in process_request_started. An end seen without its start (a request begun
        // before a map entry was lost) would go below zero: clamped.
        unsafe {
            atomic_xadd::<i64, i64, { AtomicOrdering::Relaxed }>(&raw mut (*p).live, -1);
            if (*p).live < 0 {
                (*p).live = 0;
            }
        }
    }
}

/// Whether the server request `span_id` that started on the connection (`fd`, `conn_id`) of this
/// process still waits for its response: the connection's current request, not answered yet (a
/// keep-alive connection's next request is another span).
#[inline(always)]
pub(super) fn request_live(pid_tgid: u64, fd: u32, conn_id: u64, span_id: &[u8; 8]) -> bool {
    let Some(key) = conn_key(pid_tgid, u64::from(fd)) else {
        return false;
    };
    // SAFETY: the pointer comes from a successful lookup; the fields are read in place.
    CONNECTIONS.get_ptr(key).is_some_and(|c| unsafe {
        (*c).conn_id == conn_id
            && (*c).last_direction == direction::INGRESS
            && (*c).ctx.span_id == *span_id
    })
}

/// The server request a client request made now by this thread of a process not followed by
/// goroutine belongs to: the thread's request while it waits for its response (the one it read
/// last, or the one whose call's response it read last: see [`client_received`]); else the
/// process's only request waiting for one (an async runtime went on with a handler on another
/// worker after an `.await`); else none (with several waiting, which one is not known). With
/// the request's connection (fd, conn_id) and, where the thread read it, its `request_ns`.
#[inline(always)]
pub(super) fn thread_parent(pid_tgid: u64) -> Option<(SpanCtx, u32, u64, u64)> {
    if let Some(r) = THREAD_REQUESTS.get_ptr(pid_tgid) {
        // SAFETY: the pointer comes from a successful lookup; the value is copied out.
        let r = unsafe { *r };
        if r.conn_id != 0 && request_live(pid_tgid, r.fd, r.conn_id, &r.ctx.span_id) {
            count(counter::THREAD_CLIENT_OWN);
            return Some((r.ctx, r.fd, r.conn_id, r.request_ns));
        }
    }
    let tgid = (pid_tgid >> 32) as u32;
    let only = PROCESS_REQUESTS.get_ptr(&tgid).and_then(|p| {
        // SAFETY: the pointer comes from a successful lookup; the value is copied out.
        let p = unsafe { *p };
        (p.live == 1 && request_live(pid_tgid, p.last_fd, p.last_conn_id, &p.last_ctx.span_id))
            .then_some((p.last_ctx, p.last_fd, p.last_conn_id, 0))
    });
    count(if only.is_some() {
        counter::THREAD_CLIENT_PROCESS
    } else {
        counter::THREAD_CLIENT_NONE
    });
    only
}

/// The context of a server request that starts now on the connection `tuple`: a child of the
/// client span its peer's TCP option named, if a trusted peer sent one not adopted before
/// (then also [`flags::CTX_FROM_PEER`]); else the root of a new trace.
#[inline(always)]
pub(super) fn server_ctx(tuple: &ConnTuple, ctx: &mut SpanCtx) -> u32 {
    ctx.span_id = new_span_id();
    ctx.parent_id = [0; 8];
    if let Some(peer) = TCP_CTX_IN.get_ptr_mut(tuple) {
        // SAFETY: the pointer comes from a successful lookup. A parse on another CPU may
        // rewrite it meanwhile; the worst outcome is a context adopted with a stale half.
        let peer = unsafe { &mut *peer };
        if peer.used == 0 {
            peer.used = 1;
            ctx.trace_id = peer.trace_id;
            ctx.parent_id = peer.span_id;
            count(counter::CTX_ADOPTED);
            return flags::CTX_FROM_PEER;
        }
    }
    ctx.trace_id = new_trace_id();
    0
}

/// A tracked fd is about to send. On a client connection with in-band propagation, a write
/// after a read (or the first) starts a request, which gets its context here, before its bytes
/// leave: a child of the server span the thread serves, else the root of a new trace. The
/// sockops program writes it into the connection's segments until the response is read.
#[inline(always)]
pub(super) fn client_sending(pid_tgid: u64, state: *mut ConnState) {
    let Some(config) = config() else { return };
    if config.propagate == 0 {
        return;
    }
    // SAFETY: the caller got the pointer from a successful CONNECTIONS lookup. Two threads
    // writing one connection at once would both start a request here; each writes a whole
    // context, one of them wins.
    let state = unsafe { &mut *state };
    if state.role != role::CLIENT || state.last_direction == direction::EGRESS {
        return;
    }
    state.last_direction = direction::EGRESS;
    let mut ctx = SpanCtx {
        trace_id: [0; 16],
        span_id: new_span_id(),
        parent_id: [0; 8],
    };
    // In a followed Go process the goroutine says which request this call is made for;
    // elsewhere the thread does.
    let parent = match goroutines::current(pid_tgid) {
        Some(goroutine) => {
            let live = goroutines::live_request(&goroutine).map(|r| {
                let ctx = r.ctx;
                goroutines::used(&goroutine, r);
                ctx
            });
            count(if live.is_some() {
                counter::GO_CLIENT_LIVE
            } else if goroutines::has_request(&goroutine) {
                counter::GO_CLIENT_STALE
            } else {
                counter::GO_CLIENT_NONE
            });
            live.map(|ctx| (ctx, 0, 0, 0))
        }
        None => thread_parent(pid_tgid),
    };
    match parent {
        Some((p, fd, conn_id, request_ns)) if p.span_id != [0; 8] => {
            ctx.trace_id = p.trace_id;
            ctx.parent_id = p.span_id;
            if conn_id != 0 {
                let parent = ClientParent {
                    conn_id,
                    request_ns,
                    fd,
                    _pad: 0,
                };
                match CLIENT_PARENTS.get_ptr_mut(state.conn_id) {
                    // SAFETY: the pointer comes from a successful lookup; the entry is this
                    // connection's, written by the thread sending on it.
                    Some(p) => unsafe { *p = parent },
                    // LRU: a full map forgets the least recently used connection's parent.
                    None => {
                        counted::put(
                            &CLIENT_PARENTS,
                            lru::CLIENT_PARENTS,
                            &state.conn_id,
                            &parent,
                        );
                    }
                }
            } else {
                forget_client_parent(state.conn_id);
            }
        }
        _ => {
            ctx.trace_id = new_trace_id();
            forget_client_parent(state.conn_id);
        }
    }
    state.ctx = ctx;
    match TCP_CTX_OUT.get_ptr_mut(&state.tuple) {
        // The connection's entry from its last request (idle since its response). Written in
        // place: the span id last, which the sockops program checks first; a segment of this
        // socket sent on another CPU in the instant between the stores could carry the new
        // trace id with a zero span id, which the program does not write.
        // SAFETY: the pointer comes from a successful lookup; plain stores into the value.
        Some(out) => unsafe {
            (*out).span_id = [0; 8];
            (*out).trace_id = ctx.trace_id;
            (*out).parent_id = ctx.parent_id;
            core::ptr::write_volatile(&raw mut (*out).span_id, ctx.span_id);
        },
        // LRU: a full map forgets the least recently used connection's context.
        None => {
            counted::put(&TCP_CTX_OUT, lru::TCP_CTX_OUT, &state.tuple, &ctx);
        }
    }
}

/// The client connection `conn_id`'s next request belongs to no known server request. Looked
/// up first: most connections never had a parent (a map delete that finds nothing costs more
/// than a lookup).
#[inline(always)]
fn forget_client_parent(conn_id: u64) {
    if CLIENT_PARENTS.get_ptr(conn_id).is_some() {
        counted::remove(&CLIENT_PARENTS, lru::CLIENT_PARENTS, &conn_id);
    }
}

/// A tracked client connection closes: its in-band context and its parent go with it.
#[inline(always)]
pub(super) fn client_closed(state: &ConnState) {
    if config().is_some_and(|c| c.propagate != 0) {
        counted::remove(&TCP_CTX_OUT, lru::TCP_CTX_OUT, &state.tuple);
        forget_client_parent(state.conn_id);
    }
}

/// A client connection received data: its request's response is coming, so its segments stop
/// carrying the context, and its next write starts a new request. The thread that reads the
/// response then works for the server request the call was made for, while that one is
/// unanswered: an async runtime resumes the handler that waited for this response on the worker
/// that read it (Tokio runs a task woken by the running one next, on the same worker), and its
/// next calls belong to that request, not to the one the worker read last. A thread already on
/// that request keeps its entry; another takes the request's timestamp as the calling thread
/// knew it: CPU samples are tied to a span by (process, timestamp of the read that started it),
/// so the worker's samples join the request's span. After the process-wide rule the timestamp
/// is not known (0): those samples stay untagged rather than take a guess.
#[inline(always)]
pub(super) fn client_received(pid_tgid: u64, conn: *mut ConnState) {
    // SAFETY: the caller got the pointer from a successful CONNECTIONS lookup; see
    // client_sending.
    let state = unsafe { &mut *conn };
    if state.last_direction == direction::EGRESS && state.ctx.span_id != [0; 8] {
        if let Some(out) = TCP_CTX_OUT.get_ptr_mut(&state.tuple) {
            // The entry stays for the connection's next request (see client_sending); a zero
            // span id stops the option.
            // SAFETY: the pointer comes from a successful lookup; one plain store.
            unsafe { core::ptr::write_volatile(&raw mut (*out).span_id, [0; 8]) };
        }
        // SAFETY: the pointer comes from a successful lookup; the value is copied out.
        let parent = CLIENT_PARENTS.get_ptr(state.conn_id).map(|p| unsafe { *p });
        // SAFETY: the pointer comes from a successful lookup; two fields are read in place.
        let on_it = |p: &ClientParent| {
            THREAD_REQUESTS.get_ptr(pid_tgid).is_some_and(|r| unsafe {
                (*r).conn_id == p.conn_id && (*r).ctx.span_id == state.ctx.parent_id
            })
        };
        if let Some(p) = parent
            && !on_it(&p)
            && request_live(pid_tgid, p.fd, p.conn_id, &state.ctx.parent_id)
        {
            let r = ThreadRequest {
                conn_id: p.conn_id,
                request_ns: p.request_ns,
                sampled: 0,
                fd: p.fd,
                ctx: SpanCtx {
                    trace_id: state.ctx.trace_id,
                    span_id: state.ctx.parent_id,
                    parent_id: [0; 8],
                },
            };
            match THREAD_REQUESTS.get_ptr_mut(pid_tgid) {
                // SAFETY: the pointer comes from a successful lookup; the entry is this
                // thread's, written in place as in thread_request.
                Some(e) => unsafe { *e = r },
                None => {
                    counted::put(&THREAD_REQUESTS, lru::THREAD_REQUESTS, &pid_tgid, &r);
                }
            }
        }
    }
    state.last_direction = direction::INGRESS;
}

#[inline(always)]
pub(super) fn random_u64() -> u64 {
    // SAFETY: the helper has no preconditions.
    let (hi, lo) = unsafe { (bpf_get_prandom_u32(), bpf_get_prandom_u32()) };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// A random, non-zero span id.
#[inline(always)]
pub(super) fn new_span_id() -> [u8; 8] {
    (random_u64() | 1).to_be_bytes()
}

/// A random, non-zero trace id.
#[inline(always)]
pub(super) fn new_trace_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&random_u64().to_be_bytes());
    id[8..].copy_from_slice(&(random_u64() | 1).to_be_bytes());
    id
}
