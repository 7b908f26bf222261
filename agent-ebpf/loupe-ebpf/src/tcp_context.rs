//! In-band trace context: one sockops program, attached to the root cgroup (v2), that carries a
//! client span's context to the server's node in a TCP header option, below HTTP and TLS, through
//! any DNAT or SNAT on the way.
//!
//! - Client side: `client_sending` (sockets.rs) gives a request its context at the start of its
//!   first send and puts it in `TCP_CTX_OUT` under the socket's tuple. Connections established
//!   while this program is attached ask for the header-option callbacks; every segment sent while
//!   the entry exists reserves 26 bytes of option space and carries
//!   `{kind 25, len 26, trace id, span id}` (the layout OpenTelemetry eBPF Instrumentation uses).
//!   `client_received` zeroes the entry's span id when the response starts coming in (the entry
//!   stays for the connection's next request, updated in place; the close removes it).
//! - Server side: accepted connections ask for a callback on segments with an option the kernel
//!   does not know; one carrying kind 25 from a trusted peer (`TRUSTED_PEERS`) is kept in
//!   `TCP_CTX_IN` under the server socket's tuple, and the next server request read on that
//!   connection adopts it once (`server_ctx` in sockets.rs).
//!
//! The program never fails a connection: whatever goes wrong, the segment goes out or is taken
//! in as it would have been, and the request falls back to the agent's other linking.

use crate::counted;
use aya_ebpf::{
    helpers::generated::{bpf_load_hdr_opt, bpf_reserve_hdr_opt, bpf_store_hdr_opt},
    macros::{map, sock_ops},
    maps::{LpmTrie, LruHashMap, lpm_trie::Key},
    programs::SockOpsContext,
};
use loupe_common::lru;
use loupe_common::socket::{
    ConnTuple, PeerCtx, SpanCtx, TCP_CTX_ENTRIES, TCP_OPTION_KIND, TRUSTED_PEER_ENTRIES,
    TcpTraceOption, counter,
};

use crate::sockets::{config, count, v4_mapped};

/// The context each client connection's segments carry while its request is in flight, keyed
/// by the client socket's tuple (its own view).
#[map]
pub static TCP_CTX_OUT: LruHashMap<ConnTuple, SpanCtx> =
    LruHashMap::with_max_entries(TCP_CTX_ENTRIES, 0);

/// The context a trusted peer's segments carried, keyed by the server socket's tuple (its own
/// view, which is what DNAT and SNAT leave it with).
#[map]
pub static TCP_CTX_IN: LruHashMap<ConnTuple, PeerCtx> =
    LruHashMap::with_max_entries(TCP_CTX_ENTRIES, 0);

/// Peers (CIDRs, IPv4 ones IPv4-mapped) whose context is adopted; userspace fills it.
#[map]
static TRUSTED_PEERS: LpmTrie<[u8; 16], u8> = LpmTrie::with_max_entries(TRUSTED_PEER_ENTRIES, 0);

// From the kernel's uapi bpf.h.
const ACTIVE_ESTABLISHED_CB: u32 = 4;
const PASSIVE_ESTABLISHED_CB: u32 = 5;
const PARSE_HDR_OPT_CB: u32 = 13;
const HDR_OPT_LEN_CB: u32 = 14;
const WRITE_HDR_OPT_CB: u32 = 15;
const PARSE_UNKNOWN_HDR_OPT_CB_FLAG: u32 = 1 << 5;
const WRITE_HDR_OPT_CB_FLAG: u32 = 1 << 6;
const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
const OPTION_LEN: u32 = core::mem::size_of::<TcpTraceOption>() as u32;

#[sock_ops]
pub fn loupe_tcp_context(ctx: SockOpsContext) -> u32 {
    let _ = try_tcp_context(&ctx);
    // 1: the default verdict; sockops programs never refuse anything here.
    1
}

#[inline(always)]
fn try_tcp_context(ctx: &SockOpsContext) -> Result<(), i64> {
    let propagate = config().is_some_and(|c| c.propagate != 0);
    if !propagate {
        return Ok(());
    }
    match ctx.op() {
        ACTIVE_ESTABLISHED_CB => {
            let _ = ctx.set_cb_flags((ctx.cb_flags() | WRITE_HDR_OPT_CB_FLAG) as i32);
        }
        PASSIVE_ESTABLISHED_CB => {
            let _ = ctx.set_cb_flags((ctx.cb_flags() | PARSE_UNKNOWN_HDR_OPT_CB_FLAG) as i32);
        }
        HDR_OPT_LEN_CB => {
            let tuple = tuple(ctx).ok_or(0)?;
            // SAFETY: the pointer comes from a successful lookup; one field is read.
            let sending = TCP_CTX_OUT
                .get_ptr(&tuple)
                .is_some_and(|out| unsafe { (*out).span_id } != [0; 8]);
            if sending {
                // SAFETY: the context pointer is the program's own argument.
                let rc = unsafe { bpf_reserve_hdr_opt(ctx.ops, OPTION_LEN, 0) };
                // Called without a segment too (to size the MSS); count real segments only.
                // SAFETY: as above; a plain context field read.
                if rc != 0 && unsafe { (*ctx.ops).skb_len } != 0 {
                    count(counter::CTX_WRITE_FAILED);
                }
            }
        }
        WRITE_HDR_OPT_CB => {
            let tuple = tuple(ctx).ok_or(0)?;
            let Some(out) = TCP_CTX_OUT.get_ptr(&tuple) else {
                return Ok(());
            };
            // SAFETY: the pointer comes from a successful lookup; the fields are copied out.
            let out = unsafe { *out };
            // Between requests (the response came) the entry stays with a zero span id.
            if out.span_id == [0; 8] {
                return Ok(());
            }
            let option = TcpTraceOption {
                kind: TCP_OPTION_KIND,
                len: OPTION_LEN as u8,
                trace_id: out.trace_id,
                span_id: out.span_id,
            };
            // SAFETY: `option` is OPTION_LEN bytes on this program's stack.
            let rc = unsafe {
                bpf_store_hdr_opt(
                    ctx.ops,
                    (&option as *const TcpTraceOption).cast(),
                    OPTION_LEN,
                    0,
                )
            };
            if rc != 0 {
                count(counter::CTX_WRITE_FAILED);
            }
        }
        PARSE_HDR_OPT_CB => parse(ctx)?,
        _ => {}
    }
    Ok(())
}

/// A segment with an option the kernel does not know arrived on a server connection: keep a
/// trusted peer's context for the next request read on it.
#[inline(always)]
fn parse(ctx: &SockOpsContext) -> Result<(), i64> {
    // The helper searches by the kind byte of the buffer it is given.
    let mut option = TcpTraceOption {
        kind: TCP_OPTION_KIND,
        ..TcpTraceOption::default()
    };
    // SAFETY: `option` is OPTION_LEN writable bytes on this program's stack.
    let rc = unsafe {
        bpf_load_hdr_opt(
            ctx.ops,
            (&mut option as *mut TcpTraceOption).cast(),
            OPTION_LEN,
            0,
        )
    };
    if rc != i64::from(OPTION_LEN) || option.len != OPTION_LEN as u8 {
        return Ok(());
    }
    let tuple = tuple(ctx).ok_or(0)?;
    if TRUSTED_PEERS
        .get(Key::new(128, tuple.remote_addr))
        .is_none()
    {
        count(counter::CTX_UNTRUSTED);
        return Ok(());
    }
    let known = TCP_CTX_IN.get_ptr(&tuple);
    if let Some(known) = known {
        // SAFETY: the pointer comes from a successful lookup; the field is copied out.
        if unsafe { (*known).span_id } == option.span_id {
            // The same context again (a retransmission, an ACK): adopted or pending already.
            return Ok(());
        }
    }
    let peer = PeerCtx {
        trace_id: option.trace_id,
        span_id: option.span_id,
        used: 0,
        _pad: 0,
    };
    // A keep-alive connection's next request: its entry is replaced (the value at once, not
    // field by field, since a server read on another CPU may be adopting it).
    if known.is_some() {
        counted::replace(&TCP_CTX_IN, lru::TCP_CTX_IN, &tuple, &peer);
    } else {
        counted::put(&TCP_CTX_IN, lru::TCP_CTX_IN, &tuple, &peer);
    }
    Ok(())
}

/// The socket's tuple from its own side, as the syscall programs record it (`read_tuple`).
#[inline(always)]
fn tuple(ctx: &SockOpsContext) -> Option<ConnTuple> {
    let family = ctx.family();
    let mut t = ConnTuple {
        local_port: ctx.local_port() as u16,
        // Network byte order in the upper half of the field (uapi bpf.h).
        remote_port: u32::from_be(ctx.remote_port()) as u16,
        family: family as u16,
        ..ConnTuple::default()
    };
    if family == AF_INET {
        t.local_addr = v4_mapped(ctx.local_ip4().to_ne_bytes());
        t.remote_addr = v4_mapped(ctx.remote_ip4().to_ne_bytes());
    } else if family == AF_INET6 {
        // One 4-byte field at a time: the verifier allows no wider loads of these.
        // SAFETY: plain context field reads of the program's own argument.
        let (l, r) = unsafe {
            let o = ctx.ops;
            (
                [
                    core::ptr::read_volatile(&(*o).local_ip6[0]),
                    core::ptr::read_volatile(&(*o).local_ip6[1]),
                    core::ptr::read_volatile(&(*o).local_ip6[2]),
                    core::ptr::read_volatile(&(*o).local_ip6[3]),
                ],
                [
                    core::ptr::read_volatile(&(*o).remote_ip6[0]),
                    core::ptr::read_volatile(&(*o).remote_ip6[1]),
                    core::ptr::read_volatile(&(*o).remote_ip6[2]),
                    core::ptr::read_volatile(&(*o).remote_ip6[3]),
                ],
            )
        };
        for i in 0..4 {
            t.local_addr[i * 4..i * 4 + 4].copy_from_slice(&l[i].to_ne_bytes());
            t.remote_addr[i * 4..i * 4 + 4].copy_from_slice(&r[i].to_ne_bytes());
        }
    } else {
        return None;
    }
    Some(t)
}
