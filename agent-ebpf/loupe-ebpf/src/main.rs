//! Loupe's kernel programs. Each entry point is a thin wrapper around a `try_*` function so every error
//! path is explicit; every loop is bounded; nothing here blocks.
#![no_std]
#![no_main]
// Atomic adds (BPF_XADD, every kernel): core's atomic types hide fetch_add on a target without
// compare-and-swap, which BPF only has from 5.12.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod alloc;
mod counted;
mod goroutines;
mod probes;
mod profiler;
mod sockets;
mod tcp_context;
mod tls;
mod unwind;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach this: there is no unwinding in BPF.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
