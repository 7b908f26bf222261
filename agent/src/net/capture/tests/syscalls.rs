//! Raw socket syscalls for the capture tests: each data syscall the kernel programs trace, called
//! as itself (std would pick its own), panicking with the call's name on failure.

use std::{io, os::fd::RawFd};

pub(super) fn check(ret: isize, what: &str) -> usize {
    assert!(ret >= 0, "{what}: {}", io::Error::last_os_error());
    ret as usize
}

pub(super) fn iov(buf: &[u8]) -> libc::iovec {
    libc::iovec {
        iov_base: buf.as_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    }
}

pub(super) fn sys_write(fd: RawFd, buf: &[u8]) {
    // SAFETY: `buf` is valid for reads of its length.
    let n = check(
        unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) },
        "write",
    );
    assert_eq!(n, buf.len());
}

pub(super) fn sys_sendto(fd: RawFd, buf: &[u8]) {
    // SAFETY: `buf` is valid for reads of its length; no address is passed.
    let n = check(
        unsafe { libc::sendto(fd, buf.as_ptr().cast(), buf.len(), 0, std::ptr::null(), 0) },
        "sendto",
    );
    assert_eq!(n, buf.len());
}

pub(super) fn sys_writev(fd: RawFd, parts: &[&[u8]]) {
    let iovs: Vec<libc::iovec> = parts.iter().map(|p| iov(p)).collect();
    // SAFETY: every iovec points into a live slice of its length.
    let n = check(
        unsafe { libc::writev(fd, iovs.as_ptr(), iovs.len() as i32) },
        "writev",
    );
    assert_eq!(n, parts.iter().map(|p| p.len()).sum::<usize>());
}

pub(super) fn sys_sendmsg(fd: RawFd, parts: &[&[u8]]) {
    let mut iovs: Vec<libc::iovec> = parts.iter().map(|p| iov(p)).collect();
    // SAFETY: an all-zero msghdr is valid (no name, no control data).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iovs.as_mut_ptr();
    msg.msg_iovlen = iovs.len();
    // SAFETY: `msg` points to live iovecs.
    let n = check(unsafe { libc::sendmsg(fd, &msg, 0) }, "sendmsg");
    assert_eq!(n, parts.iter().map(|p| p.len()).sum::<usize>());
}

/// Reads exactly `len` bytes with read(2).
pub(super) fn sys_read_exact(fd: RawFd, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < len {
        // SAFETY: the destination is the unfilled tail of `buf`.
        got += check(
            unsafe { libc::read(fd, buf[got..].as_mut_ptr().cast(), len - got) },
            "read",
        );
    }
    buf
}

pub(super) fn sys_recvfrom(fd: RawFd, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    // SAFETY: `buf` is valid for writes of its length; no address is asked for.
    let n = check(
        unsafe {
            libc::recvfrom(
                fd,
                buf.as_mut_ptr().cast(),
                len,
                libc::MSG_WAITALL,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        },
        "recvfrom",
    );
    buf.truncate(n);
    buf
}

/// readv into buffers of these sizes; returns what arrived, joined.
pub(super) fn sys_readv(fd: RawFd, sizes: &[usize]) -> Vec<u8> {
    let mut bufs: Vec<Vec<u8>> = sizes.iter().map(|&s| vec![0u8; s]).collect();
    let iovs: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        })
        .collect();
    // SAFETY: every iovec points into a live, writable buffer of its length.
    let n = check(
        unsafe { libc::readv(fd, iovs.as_ptr(), iovs.len() as i32) },
        "readv",
    );
    bufs.concat()[..n].to_vec()
}

pub(super) fn sys_recvmsg(fd: RawFd, sizes: &[usize]) -> Vec<u8> {
    let mut bufs: Vec<Vec<u8>> = sizes.iter().map(|&s| vec![0u8; s]).collect();
    let mut iovs: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        })
        .collect();
    // SAFETY: an all-zero msghdr is valid (no name, no control data).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iovs.as_mut_ptr();
    msg.msg_iovlen = iovs.len();
    // SAFETY: `msg` points to live, writable iovecs.
    let n = check(
        unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_WAITALL) },
        "recvmsg",
    );
    bufs.concat()[..n].to_vec()
}
