//! Copying the first bytes a data syscall moved out of user memory: a plain buffer, an iovec
//! array or a msghdr's iovecs, bounded so that every verifier since 5.8 accepts the lengths.

use super::*;

/// iovec entries copied from at most (readv/writev/recvmsg/sendmsg). gRPC's C core writes a
/// header block as one iovec per name and value: its first request on a connection takes about
/// 25, its responses with trailers about 14.
const MAX_IOVECS: u64 = 32;
/// Mask keeping a length or offset below MAX_CAPTURE_BYTES, in a form the verifier tracks.
const CAPTURE_MASK: u64 = MAX_CAPTURE_BYTES as u64 - 1;

/// A user-space `struct iovec`.
#[repr(C)]
#[derive(Copy, Clone)]
struct Iovec {
    base: u64,
    len: u64,
}

/// Where iovec pieces are gathered: twice the capture size, so a masked offset plus a masked length
/// always fits, which the verifier can check.
#[map]
static SOCKET_SCRATCH: PerCpuArray<[u8; 2 * MAX_CAPTURE_BYTES]> =
    PerCpuArray::with_max_entries(1, 0);

/// `want` (1..=MAX_CAPTURE_BYTES) rewritten so the verifier sees that bound.
#[inline(always)]
pub(super) fn bounded(want: u64) -> u64 {
    ((want - 1) & CAPTURE_MASK) + 1
}

/// Copies the first `want` bytes (1..=MAX_CAPTURE_BYTES) of a user buffer into `dst` (a
/// MAX_CAPTURE_BYTES area); returns the bytes copied.
#[inline(always)]
pub(super) fn copy_buffer(dst: *mut u8, src: u64, want: u64) -> u32 {
    let n = bounded(want);
    // SAFETY: `dst` has room for MAX_CAPTURE_BYTES ≥ n bytes; the helper checks `src`.
    let ret = unsafe { read_user_raw(dst as *mut c_void, n as u32, src as *const c_void) };
    if ret != 0 {
        count(counter::READ_FAILED);
        return 0;
    }
    n as u32
}

/// recvmsg/sendmsg: the iovec array and its length sit at offsets 16 and 24 of `user_msghdr`.
#[inline(always)]
pub(super) fn copy_msghdr(dst: *mut u8, msg: u64, want: u64) -> u32 {
    // SAFETY: bpf_probe_read_user copes with any address.
    let iov = unsafe { bpf_probe_read_user((msg + 16) as *const u64) };
    // SAFETY: as above.
    let iovlen = unsafe { bpf_probe_read_user((msg + 24) as *const u64) };
    match (iov, iovlen) {
        (Ok(iov), Ok(iovlen)) => copy_iovecs(dst, iov, iovlen, want),
        _ => {
            count(counter::READ_FAILED);
            0
        }
    }
}

/// Gathers the first `want` bytes (1..=MAX_CAPTURE_BYTES) from up to MAX_IOVECS iovecs into the
/// per-CPU scratch buffer, then copies them to `dst`; returns the bytes copied.
#[inline(always)]
pub(super) fn copy_iovecs(dst: *mut u8, iov: u64, iovcnt: u64, want: u64) -> u32 {
    let Some(scratch) = SOCKET_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    let scratch = scratch as *mut u8;
    let mut off: u64 = 0;
    for i in 0..MAX_IOVECS {
        if i >= iovcnt || off >= want {
            break;
        }
        // SAFETY: bpf_probe_read_user copes with any address.
        let Ok(v) = (unsafe { bpf_probe_read_user((iov + i * 16) as *const Iovec) }) else {
            count(counter::READ_FAILED);
            break;
        };
        let chunk = v.len.min(want - off);
        if chunk == 0 {
            continue;
        }
        // Offset below MAX_CAPTURE_BYTES and length at most MAX_CAPTURE_BYTES: inside the scratch
        // buffer of twice that size. The masks are applied to values passed through black_box, so
        // the compiler cannot compute them before the helper call above and spill them: verifiers
        // before 6.x forget a spilled scalar's bounds and reject the pointer arithmetic.
        let at = core::hint::black_box(off) & CAPTURE_MASK;
        let n = bounded(core::hint::black_box(chunk));
        // SAFETY: scratch + at .. + n lies within the 2 * MAX_CAPTURE_BYTES scratch value.
        let ret = unsafe {
            read_user_raw(
                scratch.add(at as usize) as *mut c_void,
                n as u32,
                v.base as *const c_void,
            )
        };
        if ret != 0 {
            count(counter::READ_FAILED);
            break;
        }
        off += chunk;
    }
    if off == 0 {
        return 0;
    }
    let n = bounded(off);
    // SAFETY: `dst` has room for MAX_CAPTURE_BYTES ≥ n bytes, and scratch holds at least n.
    let ret = unsafe { read_kernel_raw(dst as *mut c_void, n as u32, scratch as *const c_void) };
    if ret != 0 {
        count(counter::READ_FAILED);
        return 0;
    }
    n as u32
}
