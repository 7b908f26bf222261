//! The fentry/fexit path, chosen where BTF trampolines work (see agent/src/net/capture.rs). The
//! programs attach to the syscalls' entry points (`__x64_sys_read(const struct pt_regs *regs)` and
//! so on), so one fexit program sees a call's arguments and its result together: no sys_enter
//! program, no per-thread argument map, and unlike syscall tracepoints nothing puts every other
//! syscall on the system onto the tracing slow path. What they cannot see is when a call began, so
//! data events carry start_ns 0 and userspace times them by their end.

use super::*;

/// Syscall argument `n` (0..=2), read from the entry point's `struct pt_regs`.
#[inline(always)]
pub(super) fn regs_arg(regs: u64, n: usize, config: &SocketConfig) -> Result<u64, i64> {
    let offset = *config.regs_arg_offsets.get(n).ok_or(0)?;
    kread(regs, offset)
}

/// The entry point's only argument, its `struct pt_regs *`. Before 5.16 or so the verifier refuses
/// a direct context read of a pointer to anything but a struct, and 5.10's BTF declares pt_regs
/// only forward ("arg0 type FWD is not a struct"), so it is read the way every kernel allows: the
/// context is the trampoline's array of argument slots, and bpf_probe_read_kernel copies slot 0.
#[inline(always)]
pub(super) fn regs_pointer(ctx: *mut c_void) -> Result<u64, i64> {
    // SAFETY: `ctx` points to the trampoline's argument slots, of which there is at least one;
    // the helper copes with any address anyway.
    unsafe { bpf_probe_read_kernel(ctx as *const u64) }.map_err(i64::from)
}

/// The return value of a one-argument entry point, from its fexit context: the slot after the
/// argument, a plain integer every verifier lets the program read.
#[inline(always)]
pub(super) fn fexit_ret(ctx: &FExitContext) -> i64 {
    ctx.arg::<i64>(1)
}

#[fexit]
pub fn sock_fexit_accept(ctx: FExitContext) -> i32 {
    let _ = fexit_accept(&ctx);
    0
}

#[fexit]
pub fn sock_fexit_accept4(ctx: FExitContext) -> i32 {
    let _ = fexit_accept(&ctx);
    0
}

#[inline(always)]
pub(super) fn fexit_accept(ctx: &FExitContext) -> Result<(), i64> {
    let ret = fexit_ret(ctx);
    if ret < 0 {
        return Ok(());
    }
    let regs = regs_pointer(ctx.as_ptr())?;
    let config = config().ok_or(0)?;
    let addr = regs_arg(regs, 1, config)?;
    accepted(bpf_get_current_pid_tgid(), ret, Some((0, addr)))
}

#[fexit]
pub fn sock_fexit_connect(ctx: FExitContext) -> i32 {
    let _ = fexit_connect(&ctx);
    0
}

#[inline(always)]
pub(super) fn fexit_connect(ctx: &FExitContext) -> Result<(), i64> {
    let ret = fexit_ret(ctx);
    if ret != 0 && ret != -EINPROGRESS {
        return Ok(());
    }
    let regs = regs_pointer(ctx.as_ptr())?;
    let config = config().ok_or(0)?;
    let fd = regs_arg(regs, 0, config)?;
    let addr = regs_arg(regs, 1, config)?;
    connected(bpf_get_current_pid_tgid(), fd as i32, addr, ret, 0)
}

/// close at entry, like the tracepoint path: after it, another thread may already have the fd
/// number back from accept or connect.
#[fentry]
pub fn sock_fentry_close(ctx: FEntryContext) -> i32 {
    if let Ok(regs) = regs_pointer(ctx.as_ptr())
        && let Some(config) = config()
        && let Ok(fd) = regs_arg(regs, 0, config)
    {
        closing(bpf_get_current_pid_tgid(), fd);
    }
    0
}

macro_rules! data_fexit {
    ($name:ident, $buffer:expr, $direction:expr) => {
        #[fexit]
        pub fn $name(ctx: FExitContext) -> i32 {
            let _ = fexit_data(&ctx, $buffer, $direction);
            0
        }
    };
}

data_fexit!(sock_fexit_read, buffer::BUF, direction::INGRESS);
data_fexit!(sock_fexit_write, buffer::BUF, direction::EGRESS);
data_fexit!(sock_fexit_recvfrom, buffer::BUF, direction::INGRESS);
data_fexit!(sock_fexit_sendto, buffer::BUF, direction::EGRESS);
data_fexit!(sock_fexit_readv, buffer::IOVEC, direction::INGRESS);
data_fexit!(sock_fexit_writev, buffer::IOVEC, direction::EGRESS);
data_fexit!(sock_fexit_recvmsg, buffer::MSGHDR, direction::INGRESS);
data_fexit!(sock_fexit_sendmsg, buffer::MSGHDR, direction::EGRESS);

/// With in-band propagation the fexit set also needs the start of every send (see
/// `client_sending`): the request's context must be known before its bytes leave.
macro_rules! send_fentry {
    ($name:ident) => {
        #[fentry]
        pub fn $name(ctx: FEntryContext) -> i32 {
            if let Ok(regs) = regs_pointer(ctx.as_ptr())
                && let Some(config) = config()
                && let Ok(fd) = regs_arg(regs, 0, config)
            {
                let pid_tgid = bpf_get_current_pid_tgid();
                if let Some(state) =
                    conn_key(pid_tgid, fd).and_then(|key| CONNECTIONS.get_ptr_mut(key))
                {
                    client_sending(pid_tgid, state);
                }
            }
            0
        }
    };
}

send_fentry!(sock_fentry_write);
send_fentry!(sock_fentry_sendto);
send_fentry!(sock_fentry_writev);
send_fentry!(sock_fentry_sendmsg);

#[inline(always)]
pub(super) fn fexit_data(
    ctx: &FExitContext,
    buffer_kind: u32,
    data_direction: u32,
) -> Result<(), i64> {
    let ret = fexit_ret(ctx);
    if ret <= 0 {
        return Ok(());
    }
    let regs = regs_pointer(ctx.as_ptr())?;
    let config = config().ok_or(0)?;
    let pid_tgid = bpf_get_current_pid_tgid();
    let fd = regs_arg(regs, 0, config)?;
    // The common case, an fd that is no tracked socket (nor a log write), stops here.
    let state = tracked_mut(pid_tgid, fd);
    if state.is_none() && !log_write(pid_tgid, fd, data_direction) {
        return Ok(());
    }
    let count = if buffer_kind == buffer::IOVEC {
        regs_arg(regs, 2, config)?.min(u64::from(u32::MAX)) as u32
    } else {
        0
    };
    let args = SyscallArgs {
        start_ns: 0,
        ptr: regs_arg(regs, 1, config)?,
        fd: fd as i32,
        kind: buffer_kind,
        count,
        direction: data_direction,
    };
    match state {
        Some(state) => moved(pid_tgid, &args, ret, state),
        None => logged(pid_tgid, &args, ret),
    }
}
