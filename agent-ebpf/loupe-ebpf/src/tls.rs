//! TLS in clear: uprobes on OpenSSL's (and BoringSSL's) `SSL_read`, `SSL_write` and their `_ex`
//! variants, attached by userspace to every libssl it finds. A call's entry saves its buffer in
//! `TLS_CALLS`; a data syscall the call makes on a tracked socket tells it which socket (and the
//! socket programs then drop the syscall's own bytes, which are ciphertext); the call's return
//! sends the plaintext it moved through the socket programs' path (`moved_bytes`), flagged
//! `PLAINTEXT`, so parsers, spans, request tracking and counters are the same as in clear text.
//! A call that needs no syscall (data already decrypted and buffered) uses the socket its
//! connection object last used (`TLS_FDS`), which `SSL_free` forgets.
//!
//! Go's `crypto/tls` has its own probes (`go_tls_*`), attached by userspace to every Go
//! executable that has `crypto/tls.(*Conn).Read` and `Write`: at both entries and at each return
//! instruction of `Read` (never a uretprobe, which Go's moving stacks break). A return probe
//! traps twice (the kernel single-steps the instruction), so `Write`, whose plaintext is all in
//! its argument, is sent at its entry with the slice's length as the count: the bytes a call
//! fails to write are reported as written. A Go call may park its goroutine and resume on
//! another thread, so calls are kept by goroutine (`GO_TLS_CALLS`, R14 under Go's register ABI),
//! with the socket read from the connection itself: `tls.Conn.conn` (a `net.Conn` whose data word
//! points at a `net.TCPConn`) → `*netFD` → `poll.FD.Sysfd`, a layout unchanged from Go 1.9 to
//! today; where that fails (a connection type of another shape), a `Read` learns it from its
//! syscall where the kernel names a syscall's goroutine (5.15+, see `goroutines::GO_G_REGISTER`),
//! and a `Write` is lost, counted under `TLS_NO_SOCKET`. On 5.15+ the socket programs also drop
//! the ciphertext of a goroutine's syscalls on the connection of its last call (a `Write`'s
//! entry stays until its goroutine's next call; keyed by connection id, never by fd number);
//! elsewhere userspace ignores a connection's ciphertext once its first plaintext came.

use crate::counted;
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::{map, uprobe, uretprobe},
    maps::{HashMap, LruHashMap},
    programs::{ProbeContext, RetProbeContext},
};
use loupe_common::lru;
use loupe_common::socket::{
    GO_PID_ENTRIES, GoroutineKey, SyscallArgs, TLS_ENTRIES, TlsCall, TlsKey, buffer, counter,
    direction, flags,
};

use crate::goroutines;
use crate::sockets::{config, count, moved_bytes, now, tracked_mut, wanted};

/// TLS calls in flight, by thread.
#[map]
static TLS_CALLS: HashMap<u64, TlsCall> = HashMap::with_max_entries(TLS_ENTRIES, 0);

/// The socket each connection object last used.
#[map]
static TLS_FDS: LruHashMap<TlsKey, i32> = LruHashMap::with_max_entries(TLS_ENTRIES, 0);

/// Go `crypto/tls` calls in flight, by goroutine (LRU: a call that never returns, a panic
/// unwinding through it, is forgotten in time).
#[map]
static GO_TLS_CALLS: LruHashMap<GoroutineKey, TlsCall> =
    LruHashMap::with_max_entries(TLS_ENTRIES, 0);

/// Go processes whose executable carries the `crypto/tls` probes, kept by userspace: the
/// socket programs look for a Go call in flight only in them.
#[map]
static GO_TLS_PIDS: HashMap<u32, u8> = HashMap::with_max_entries(GO_PID_ENTRIES, 0);

/// `SSL_write(ssl, buf, num)`.
#[uprobe]
pub fn tls_write(ctx: ProbeContext) -> u32 {
    enter(&ctx, direction::EGRESS, false);
    0
}

/// `SSL_write_ex(ssl, buf, num, size_t *written)`.
#[uprobe]
pub fn tls_write_ex(ctx: ProbeContext) -> u32 {
    enter(&ctx, direction::EGRESS, true);
    0
}

/// `SSL_read(ssl, buf, num)`.
#[uprobe]
pub fn tls_read(ctx: ProbeContext) -> u32 {
    enter(&ctx, direction::INGRESS, false);
    0
}

/// `SSL_read_ex(ssl, buf, num, size_t *readbytes)`.
#[uprobe]
pub fn tls_read_ex(ctx: ProbeContext) -> u32 {
    enter(&ctx, direction::INGRESS, true);
    0
}

#[inline(always)]
fn enter(ctx: &ProbeContext, data_direction: u32, ex: bool) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(config) = config() else {
        return;
    };
    if !wanted((pid_tgid >> 32) as u32, config) {
        return;
    }
    let (Some(ssl), Some(buf)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1)) else {
        return;
    };
    let len_ptr = if ex {
        ctx.arg::<u64>(3).unwrap_or(0)
    } else {
        0
    };
    let call = TlsCall {
        ssl,
        buf,
        len_ptr,
        start_ns: now(),
        direction: data_direction,
        fd: -1,
        conn_id: 0,
    };
    if TLS_CALLS.insert(&pid_tgid, &call, 0).is_err() {
        count(counter::ARGS_MAP_FULL);
    }
}

/// Called by the socket programs for a data syscall on a tracked socket (`fd`, connection
/// `conn_id`): true when a TLS call is in flight on this thread or goroutine and the syscall is
/// its own (the call then learns its socket).
///
/// A function of its own (a BPF-to-BPF call) rather than inlined: inlined, its many ways out
/// multiplied the states of the socket programs that follow it past the million instructions
/// 6.1's verifier explores (`sock_exit_read` was refused with E2BIG).
#[inline(never)]
pub(crate) fn inside_call(pid_tgid: u64, fd: i32, conn_id: u64) -> bool {
    if let Some(call) = TLS_CALLS.get_ptr_mut(&pid_tgid) {
        // SAFETY: the pointer comes from a successful lookup; the entry belongs to this
        // thread, the only one to touch it.
        unsafe { (*call).fd = fd };
        return true;
    }
    inside_go_call(pid_tgid, fd, conn_id)
}

/// The same for Go's `crypto/tls`, by the goroutine making the syscall.
#[inline(always)]
fn inside_go_call(pid_tgid: u64, fd: i32, conn_id: u64) -> bool {
    let tgid = (pid_tgid >> 32) as u32;
    // SAFETY: a lookup by value; the value is not read.
    if unsafe { GO_TLS_PIDS.get(&tgid) }.is_none() {
        return false;
    }
    let Some(goroutine) = goroutines::saved_goroutine(tgid) else {
        return false;
    };
    let Some(call) = GO_TLS_CALLS.get_ptr_mut(&goroutine) else {
        return false;
    };
    // SAFETY: the pointer comes from a successful lookup; the entry belongs to this goroutine,
    // which runs on one thread at a time.
    let call = unsafe { &mut *call };
    if call.conn_id == 0 {
        call.fd = fd;
        call.conn_id = conn_id;
        return true;
    }
    call.conn_id == conn_id
}

/// `SSL_free(ssl)`: the object's socket is forgotten, so an object allocated later at the same
/// address does not inherit it.
#[uprobe]
pub fn tls_free(ctx: ProbeContext) -> u32 {
    if let Some(ssl) = ctx.arg::<u64>(0) {
        let key = TlsKey {
            pid: (bpf_get_current_pid_tgid() >> 32) as u32,
            _pad: 0,
            ssl,
        };
        counted::remove(&TLS_FDS, lru::TLS_FDS, &key);
    }
    0
}

/// The return of all four calls.
#[uretprobe]
pub fn tls_return(ctx: RetProbeContext) -> u32 {
    let _ = try_return(&ctx);
    0
}

fn try_return(ctx: &RetProbeContext) -> Result<(), i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let call = TLS_CALLS.get_ptr(&pid_tgid).ok_or(0)?;
    // SAFETY: the pointer comes from a successful lookup; the value is copied out before removal.
    let call = unsafe { *call };
    let _ = TLS_CALLS.remove(&pid_tgid);
    // `int` for SSL_read/SSL_write (bytes, or ≤ 0 on error), 1 on success for the _ex ones.
    let ret = ctx.ret::<u64>() as u32 as i32;
    let moved = if call.len_ptr != 0 {
        if ret != 1 {
            return Ok(());
        }
        // SAFETY: reads user memory through the helper, which checks the address.
        let n: u64 = unsafe { bpf_probe_read_user(call.len_ptr as *const u64) }?;
        n.min(i64::MAX as u64) as i64
    } else {
        i64::from(ret)
    };
    if moved <= 0 {
        return Ok(());
    }
    let key = TlsKey {
        pid: (pid_tgid >> 32) as u32,
        _pad: 0,
        ssl: call.ssl,
    };
    let fd = if call.fd >= 0 {
        // Most calls find the connection's fd there already: a lookup, no update.
        match TLS_FDS.get_ptr(&key) {
            // SAFETY: the pointer comes from a successful lookup; an i32 is compared.
            Some(known) if unsafe { *known } == call.fd => {}
            Some(_) => {
                counted::replace(&TLS_FDS, lru::TLS_FDS, &key, &call.fd);
            }
            None => {
                counted::put(&TLS_FDS, lru::TLS_FDS, &key, &call.fd);
            }
        }
        call.fd
    } else {
        match TLS_FDS.get_ptr(&key) {
            // SAFETY: the pointer comes from a successful lookup; an i32 is copied out.
            Some(fd) => unsafe { *fd },
            None => {
                count(counter::TLS_NO_SOCKET);
                return Ok(());
            }
        }
    };
    let Some(conn) = tracked_mut(pid_tgid, fd as u32 as u64) else {
        return Ok(());
    };
    let args = SyscallArgs {
        start_ns: call.start_ns,
        ptr: call.buf,
        fd,
        kind: buffer::BUF,
        count: 0,
        direction: call.direction,
    };
    moved_bytes(pid_tgid, &args, moved, conn, flags::PLAINTEXT)
}

/// `crypto/tls.(*Conn).Write(c, b []byte) (int, error)`: `c` in RAX, `b`'s data and length in
/// RBX and RCX. Sent here, whole (see the module's comment).
#[uprobe]
pub fn go_tls_write(ctx: ProbeContext) -> u32 {
    let _ = go_enter(&ctx, direction::EGRESS);
    0
}

/// `crypto/tls.(*Conn).Read(c, b []byte) (int, error)`: sent at its return.
#[uprobe]
pub fn go_tls_read(ctx: ProbeContext) -> u32 {
    let _ = go_enter(&ctx, direction::INGRESS);
    0
}

#[inline(always)]
fn go_enter(ctx: &ProbeContext, data_direction: u32) -> Result<(), i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let config = config().ok_or(0)?;
    let tgid = (pid_tgid >> 32) as u32;
    if !wanted(tgid, config) {
        return Ok(());
    }
    // SAFETY: the probe's own saved registers: the goroutine in R14, the receiver in RAX, the
    // slice's data pointer and length in RBX and RCX (Go's register ABI).
    let (g, conn, buf, len) = unsafe {
        let r = &*ctx.regs;
        (r.r14, r.rax, r.rbx, r.rcx)
    };
    let fd = go_conn_fd(conn).unwrap_or(-1);
    let state = if fd >= 0 {
        tracked_mut(pid_tgid, fd as u32 as u64)
    } else {
        None
    };
    let call = TlsCall {
        ssl: conn,
        buf,
        len_ptr: 0,
        start_ns: now(),
        direction: data_direction,
        fd,
        // SAFETY: the pointer comes from a successful lookup; one field is read.
        conn_id: state.map_or(0, |s| unsafe { (*s).conn_id }),
    };
    // A function whose stack must grow runs its entry twice: the second write is the same.
    // LRU: a full map forgets the least recently used call. A write's entry outlives the call
    // (no return probe), so it is kept only with its connection known: one with none would
    // take the goroutine's next syscall on any connection for its own.
    if data_direction == direction::INGRESS || call.conn_id != 0 {
        counted::put(
            &GO_TLS_CALLS,
            lru::GO_TLS_CALLS,
            &goroutines::key(tgid, g),
            &call,
        );
    }
    if data_direction != direction::EGRESS {
        return Ok(());
    }
    let moved = len.min(i64::MAX as u64) as i64;
    if moved <= 0 {
        return Ok(());
    }
    let Some(conn) = state else {
        if fd < 0 {
            count(counter::TLS_NO_SOCKET);
        }
        return Ok(());
    };
    let args = SyscallArgs {
        start_ns: call.start_ns,
        ptr: buf,
        fd,
        kind: buffer::BUF,
        count: 0,
        direction: data_direction,
    };
    moved_bytes(pid_tgid, &args, moved, conn, flags::PLAINTEXT)
}

/// A return instruction of `(*Conn).Read`: the byte count in RAX.
#[uprobe]
pub fn go_tls_return(ctx: ProbeContext) -> u32 {
    let _ = try_go_return(&ctx);
    0
}

fn try_go_return(ctx: &ProbeContext) -> Result<(), i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: the probe's own saved registers.
    let (g, ret) = unsafe { ((*ctx.regs).r14, (*ctx.regs).rax) };
    let goroutine = goroutines::key((pid_tgid >> 32) as u32, g);
    // SAFETY: a lookup by value, copied out before removal.
    let call = unsafe { GO_TLS_CALLS.get(&goroutine) }.copied().ok_or(0)?;
    counted::remove(&GO_TLS_CALLS, lru::GO_TLS_CALLS, &goroutine);
    let moved = ret as i64;
    if moved <= 0 || call.direction != direction::INGRESS {
        return Ok(());
    }
    if call.fd < 0 {
        count(counter::TLS_NO_SOCKET);
        return Ok(());
    }
    let Some(conn) = tracked_mut(pid_tgid, call.fd as u32 as u64) else {
        return Ok(());
    };
    let args = SyscallArgs {
        start_ns: call.start_ns,
        ptr: call.buf,
        fd: call.fd,
        kind: buffer::BUF,
        count: 0,
        direction: call.direction,
    };
    moved_bytes(pid_tgid, &args, moved, conn, flags::PLAINTEXT)
}

/// The file descriptor behind a `*tls.Conn`: its `conn` field (an interface, first in the
/// struct: type word, then data word) points at a `net.TCPConn`, whose first word is its
/// `*netFD`, whose `poll.FD` starts with a 16-byte mutex and then `Sysfd`.
#[inline(always)]
fn go_conn_fd(conn: u64) -> Result<i32, i64> {
    // SAFETY: reads user memory through the helper, which checks every address.
    let data: u64 = unsafe { bpf_probe_read_user((conn + 8) as *const u64) }?;
    // SAFETY: as above.
    let net_fd: u64 = unsafe { bpf_probe_read_user(data as *const u64) }?;
    // SAFETY: as above.
    let sysfd: i64 = unsafe { bpf_probe_read_user((net_fd + 16) as *const i64) }?;
    if !(0..=i64::from(i32::MAX)).contains(&sysfd) {
        return Err(0);
    }
    Ok(sysfd as i32)
}
