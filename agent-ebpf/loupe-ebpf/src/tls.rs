//! TLS in clear: uprobes on OpenSSL's (and BoringSSL's) `SSL_read`, `SSL_write` and their `_ex`
//! variants, attached by userspace to every libssl it finds. A call's entry saves its buffer in
//! `TLS_CALLS`; a data syscall the call makes on a tracked socket tells it which socket (and the
//! socket programs then drop the syscall's own bytes, which are ciphertext); the call's return
//! sends the plaintext it moved through the socket programs' path (`moved_bytes`), flagged
//! `PLAINTEXT`, so parsers, spans, request tracking and counters are the same as in clear text.
//! A call that needs no syscall (data already decrypted and buffered) uses the socket its
//! connection object last used (`TLS_FDS`), which `SSL_free` forgets.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::{map, uprobe, uretprobe},
    maps::{HashMap, LruHashMap},
    programs::{ProbeContext, RetProbeContext},
};
use loupe_common::socket::{
    SyscallArgs, TLS_ENTRIES, TlsCall, TlsKey, buffer, counter, direction, flags,
};

use crate::sockets::{config, count, moved_bytes, now, tracked_ref, wanted};

/// TLS calls in flight, by thread.
#[map]
static TLS_CALLS: HashMap<u64, TlsCall> = HashMap::with_max_entries(TLS_ENTRIES, 0);

/// The socket each connection object last used.
#[map]
static TLS_FDS: LruHashMap<TlsKey, i32> = LruHashMap::with_max_entries(TLS_ENTRIES, 0);

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
    };
    if TLS_CALLS.insert(&pid_tgid, &call, 0).is_err() {
        count(counter::ARGS_MAP_FULL);
    }
}

/// Called by the socket programs for a data syscall on a tracked socket: true when a TLS call
/// is in flight on this thread (which then learns its socket).
#[inline(always)]
pub(crate) fn inside_call(pid_tgid: u64, fd: i32) -> bool {
    match TLS_CALLS.get_ptr_mut(&pid_tgid) {
        Some(call) => {
            // SAFETY: the pointer comes from a successful lookup; the entry belongs to this
            // thread, the only one to touch it.
            unsafe { (*call).fd = fd };
            true
        }
        None => false,
    }
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
        let _ = TLS_FDS.remove(&key);
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
        let _ = TLS_FDS.insert(&key, &call.fd, 0);
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
    let Some(state) = tracked_ref(pid_tgid, fd as u32 as u64) else {
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
    moved_bytes(pid_tgid, &args, moved, state, flags::PLAINTEXT)
}
