//! Goroutine-aware request tracking for Go processes: which server request a goroutine works
//! for, so a client call made from another goroutine than the one that read the request (a
//! `go func()` in the handler, net/http's connection writer) still nests under it.
//!
//! Go runs goroutines on a few threads and moves them between threads, so the thread-keyed
//! `THREAD_REQUESTS` says little in a Go process. Instead, the socket programs name the goroutine
//! making a syscall by the `runtime.g` its thread holds in R14 (Go's register ABI, 1.17+ on
//! x86-64), read from the user registers the syscall saved, and keep `GO_REQUESTS` by goroutine
//! (see `sockets::server_request` and `sockets::client_sending`). Three uprobes on the runtime,
//! attached by userspace to each Go executable, carry a request from goroutine to goroutine:
//! - `runtime.newproc1` (entry, then where its result is known: the call queueing the new
//!   goroutine in its caller, else every return instruction; never a uretprobe, which Go's
//!   moving stacks break): the new goroutine works for its creator's request;
//! - `runtime.goready` (entry): a goroutine woken while it has no request of its own works for
//!   its waker's (net/http's client writes each request from a long-lived goroutine that the
//!   caller wakes with a channel send);
//! - `runtime.goexit1` (entry): the goroutine is gone, its entry too.
//!
//! Where the executable has net/http's client, two more probes name exactly which request its
//! connection writer writes, since a wake-up is not always seen (a request sent on the writer's
//! buffered channel before it parks, the first request on a new connection whose writer was
//! created for another caller):
//! - `net/http.(*persistConn).roundTrip` (entry): the calling goroutine's request is the
//!   connection's current one (`GO_HTTP_CONNS`, keyed by the `persistConn`);
//! - `net/http.(*persistConn).writeLoop` (entry): this goroutine writes for that connection
//!   (`GO_HTTP_WRITERS`).

use crate::counted;
use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid,
        generated::{bpf_get_current_task_btf, bpf_task_pt_regs},
    },
    macros::{map, uprobe},
    maps::{HashMap, LruHashMap},
    programs::ProbeContext,
};
use loupe_common::lru;
use loupe_common::socket::{
    ARGS_ENTRIES, GO_HTTP_CONN_ENTRIES, GO_PID_ENTRIES, GO_REQUEST_ENTRIES, GoroutineKey,
    GoroutineRequest, counter,
};

use crate::sockets::{count, kread};

/// Where in the user registers a syscall saved (`struct pt_regs`) the current goroutine's
/// `runtime.g` is: R14's offset on x86-64. Zero: goroutines are not followed, because the
/// kernel has no `bpf_task_pt_regs` (5.15) or this is another architecture. Set by userspace
/// at load; the object's read-only data is frozen, so the verifier drops the helper calls
/// behind a zero here and the programs load on older kernels too.
#[unsafe(no_mangle)]
static GO_G_REGISTER: u32 = 0;

/// Go processes whose goroutines are followed (their executables carry the runtime probes).
#[map]
pub(crate) static GO_PIDS: HashMap<u32, u8> = HashMap::with_max_entries(GO_PID_ENTRIES, 0);

/// The request each goroutine works for (see [`GoroutineRequest`]).
#[map]
static GO_REQUESTS: LruHashMap<GoroutineKey, GoroutineRequest> =
    LruHashMap::with_max_entries(GO_REQUEST_ENTRIES, 0);

/// The creating goroutine, by thread, between `runtime.newproc1`'s entry and its return (it
/// runs on the system stack, where R14 is the thread's g0, so its caller comes as an argument).
#[map]
static GO_NEWPROC: HashMap<u64, u64> = HashMap::with_max_entries(ARGS_ENTRIES, 0);

/// The request each net/http client connection (`*persistConn`, in the `g` field) writes now.
#[map]
static GO_HTTP_CONNS: LruHashMap<GoroutineKey, GoroutineRequest> =
    LruHashMap::with_max_entries(GO_HTTP_CONN_ENTRIES, 0);

/// The connection each net/http writer goroutine writes for.
#[map]
static GO_HTTP_WRITERS: LruHashMap<GoroutineKey, u64> =
    LruHashMap::with_max_entries(GO_HTTP_CONN_ENTRIES, 0);

#[inline(always)]
pub(crate) fn key(tgid: u32, g: u64) -> GoroutineKey {
    GoroutineKey { tgid, _pad: 0, g }
}

/// The goroutine on this thread, when the thread belongs to a followed Go process and is inside
/// a syscall (or its trace point): its `runtime.g`, read from the saved user registers.
#[inline(always)]
pub(crate) fn current(pid_tgid: u64) -> Option<GoroutineKey> {
    // SAFETY: a read of a constant in the object's read-only data.
    if unsafe { core::ptr::read_volatile(&GO_G_REGISTER) } == 0 {
        return None;
    }
    let tgid = (pid_tgid >> 32) as u32;
    // SAFETY: a lookup by value; the value is not read.
    unsafe { GO_PIDS.get(&tgid) }?;
    saved_goroutine(tgid)
}

/// The goroutine of a Go process's thread that is inside a syscall (or a probe): the `runtime.g`
/// in R14 of the user registers its kernel entry saved. `None` where that cannot be read (see
/// [`GO_G_REGISTER`]); the caller checks that the process is Go.
#[inline(always)]
pub(crate) fn saved_goroutine(tgid: u32) -> Option<GoroutineKey> {
    // SAFETY: a read of a constant in the object's read-only data.
    let offset = unsafe { core::ptr::read_volatile(&GO_G_REGISTER) };
    if offset == 0 {
        return None;
    }
    // SAFETY: helpers without memory arguments: the current task, and the user registers its
    // kernel entry saved (only reachable on kernels that have both, see GO_G_REGISTER).
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as u64;
    let g: u64 = kread(regs, offset).ok()?;
    (g != 0).then_some(key(tgid, g))
}

/// The request `goroutine` works for, while that request is unanswered: for a net/http
/// connection writer, its connection's current request; else its own, or the one it took from
/// another goroutine whose own entry still names it.
#[inline(always)]
pub(crate) fn live_request(goroutine: &GoroutineKey) -> Option<&'static GoroutineRequest> {
    // SAFETY: lookups by value; the entries are only read. Another CPU may rewrite one
    // meanwhile: the worst outcome is a context with a stale half, never an invalid access.
    let r = match unsafe { GO_HTTP_WRITERS.get(goroutine) } {
        Some(&conn) => unsafe { GO_HTTP_CONNS.get(&key(goroutine.tgid, conn)) }?,
        None => unsafe { GO_REQUESTS.get(goroutine) }?,
    };
    if r.root == goroutine.g {
        return Some(r);
    }
    let root = unsafe { GO_REQUESTS.get(&key(goroutine.tgid, r.root)) }?;
    (root.root == r.root && root.request_ns == r.request_ns).then_some(r)
}

/// Whether `goroutine` writes for a net/http client connection.
#[inline(always)]
pub(crate) fn is_http_writer(goroutine: &GoroutineKey) -> bool {
    // SAFETY: a lookup by value; the value is not read.
    unsafe { GO_HTTP_WRITERS.get(goroutine) }.is_some()
}

/// The request `goroutine` serves itself (read on a server connection, not answered yet).
#[inline(always)]
pub(crate) fn own_request(goroutine: &GoroutineKey) -> Option<&'static GoroutineRequest> {
    // SAFETY: as in live_request.
    let r = unsafe { GO_REQUESTS.get(goroutine) }?;
    (r.root == goroutine.g).then_some(r)
}

/// Whether `goroutine` has an entry at all, live or not.
#[inline(always)]
pub(crate) fn has_request(goroutine: &GoroutineKey) -> bool {
    // SAFETY: a lookup by value; the value is not read.
    unsafe { GO_REQUESTS.get(goroutine) }.is_some() || is_http_writer(goroutine)
}

/// `goroutine` starts serving `request` (its `root` must be the goroutine itself).
#[inline(always)]
pub(crate) fn serve(goroutine: &GoroutineKey, request: &GoroutineRequest) {
    // LRU: a full map forgets the least recently used goroutine.
    counted::put(&GO_REQUESTS, lru::GO_REQUESTS, goroutine, request);
}

/// `goroutine` answered its request (or is gone).
#[inline(always)]
pub(crate) fn forget(goroutine: &GoroutineKey) {
    counted::remove(&GO_REQUESTS, lru::GO_REQUESTS, goroutine);
}

/// `to` works for the request `from` works for, if that is unanswered; counted under `counter`.
/// Returns whether it did.
#[inline(always)]
fn inherit(tgid: u32, from: u64, to: u64, counter: u32) -> bool {
    let Some(r) = live_request(&key(tgid, from)) else {
        return false;
    };
    let mut copy = *r;
    copy.woken = u32::from(counter == counter::GO_WAKE_INHERITED);
    counted::put(&GO_REQUESTS, lru::GO_REQUESTS, &key(tgid, to), &copy);
    count(counter);
    true
}

/// A client request of `goroutine` took its request's context: a copy taken at a wake-up is
/// spent (see [`GoroutineRequest`]).
#[inline(always)]
pub(crate) fn used(goroutine: &GoroutineKey, request: &GoroutineRequest) {
    if request.woken != 0 {
        forget(goroutine);
    }
}

/// `runtime.newproc1(fn *funcval, callergp *g, callerpc uintptr, ...)`: keeps the creator.
#[uprobe]
pub fn go_newproc1(ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: the probe's own saved registers; RBX holds the second argument under Go's ABI.
    let creator = unsafe { (*ctx.regs).rbx };
    let _ = GO_NEWPROC.insert(&pid_tgid, &creator, 0);
    0
}

/// A return instruction of `runtime.newproc1`, whose result (the new goroutine) is in RAX.
#[uprobe]
pub fn go_newproc1_return(ctx: ProbeContext) -> u32 {
    // SAFETY: the probe's own saved registers.
    created(unsafe { (*ctx.regs).rax });
    0
}

/// The thread's `runtime.newproc1` call made goroutine `created`: it works for the same request
/// as its creator, or for none.
#[inline(always)]
fn created(created: u64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: a lookup by value, copied out.
    let Some(creator) = (unsafe { GO_NEWPROC.get(&pid_tgid) }).copied() else {
        return;
    };
    let _ = GO_NEWPROC.remove(&pid_tgid);
    let tgid = (pid_tgid >> 32) as u32;
    if !inherit(tgid, creator, created, counter::GO_SPAWN_INHERITED) {
        // A reused runtime.g whose last goroutine left no trace of exiting (an LRU'd entry
        // would be gone; this one is a leftover): the new goroutine works for nothing yet.
        forget(&key(tgid, created));
    }
}

/// The call `runqput(pp, newg, true)` right after `runtime.newproc1` returned `newg` (in RBX
/// there): the cheaper twin of [`go_newproc1_return`], where the caller has that shape.
#[uprobe]
pub fn go_newproc_queued(ctx: ProbeContext) -> u32 {
    // SAFETY: the probe's own saved registers.
    created(unsafe { (*ctx.regs).rbx });
    0
}

/// `runtime.goready(gp *g, traceskip int)`, called by the waking goroutine (R14).
#[uprobe]
pub fn go_goready(ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    // SAFETY: the probe's own saved registers: the waker in R14, the woken goroutine in RAX.
    let (waker, woken) = unsafe { ((*ctx.regs).r14, (*ctx.regs).rax) };
    // A goroutine working for an unanswered request (its own, or the one it was created for)
    // keeps it whoever wakes it: a waker may be any request's goroutine (a dialer handing over
    // a connection, an unlock).
    if live_request(&key(tgid, woken)).is_some() {
        return 0;
    }
    inherit(tgid, waker, woken, counter::GO_WAKE_INHERITED);
    0
}

/// `runtime.goexit1()`, on the exiting goroutine (R14).
#[uprobe]
pub fn go_goexit1(ctx: ProbeContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: the probe's own saved registers.
    let g = unsafe { (*ctx.regs).r14 };
    let goroutine = key(tgid, g);
    forget(&goroutine);
    // SAFETY: a lookup by value, copied out.
    if let Some(conn) = unsafe { GO_HTTP_WRITERS.get(&goroutine) }.copied() {
        counted::remove(&GO_HTTP_WRITERS, lru::GO_HTTP_WRITERS, &goroutine);
        counted::remove(&GO_HTTP_CONNS, lru::GO_HTTP_CONNS, &key(tgid, conn));
    }
    0
}

/// `net/http.(*persistConn).roundTrip(pc, req)`, on the calling goroutine (R14), `pc` in RAX.
#[uprobe]
pub fn go_http_round_trip(ctx: ProbeContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: the probe's own saved registers.
    let (caller, conn) = unsafe { ((*ctx.regs).r14, (*ctx.regs).rax) };
    let conn = key(tgid, conn);
    match live_request(&key(tgid, caller)) {
        Some(r) => {
            let mut copy = *r;
            copy.woken = 0;
            counted::put(&GO_HTTP_CONNS, lru::GO_HTTP_CONNS, &conn, &copy);
        }
        None => {
            counted::remove(&GO_HTTP_CONNS, lru::GO_HTTP_CONNS, &conn);
        }
    }
    0
}

/// `net/http.(*persistConn).writeLoop(pc)`, on the writer goroutine (R14), `pc` in RAX.
#[uprobe]
pub fn go_http_write_loop(ctx: ProbeContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: the probe's own saved registers.
    let (writer, conn) = unsafe { ((*ctx.regs).r14, (*ctx.regs).rax) };
    counted::put(
        &GO_HTTP_WRITERS,
        lru::GO_HTTP_WRITERS,
        &key(tgid, writer),
        &conn,
    );
    0
}
