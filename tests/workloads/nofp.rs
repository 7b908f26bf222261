//! Test workload for DWARF unwinding: burns CPU for argv[1] seconds (default 10) in two leaf
//! functions, 3:1 (one unit per call, alpha drawn at random three times in four), on two paths
//! several frames deep:
//!   main → nofp_run → nofp_outer_alpha → nofp_inner_alpha
//!   main → nofp_run → nofp_outer_beta  → nofp_inner_beta
//! Built by xtask with `-O -g` and no `force-frame-pointers`, like most Rust release builds: only
//! unwind tables (.eh_frame) lead from a leaf back to main. Linked as rustc links by default
//! (rust-lld on x86-64 Linux since Rust 1.90), its code segment's addresses are not its file
//! offsets, which the unwinder must account for. Every function is `#[inline(never)]`, and each
//! call's result goes through `black_box` afterwards, so no call becomes a tail call that would
//! drop its caller from the stack.

mod three_to_one;

use std::hint::black_box;
use std::time::{Duration, Instant};

/// Generator steps per call, on either path.
const UNIT: u64 = 200_000;

#[inline(never)]
fn nofp_inner_alpha(seed: u64) -> u64 {
    let mut x = seed;
    for _ in 0..UNIT {
        x = black_box(
            x.wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407),
        );
    }
    x
}

/// The same work as alpha's with another increment: functions with identical bodies are
/// merged into one by the compiler, and alpha's samples would all be named beta.
#[inline(never)]
fn nofp_inner_beta(seed: u64) -> u64 {
    let mut x = seed;
    for _ in 0..UNIT {
        x = black_box(
            x.wrapping_mul(6364136223846793005)
                .wrapping_add(0x2545_F491_4F6C_DD1D),
        );
    }
    x
}

#[inline(never)]
fn nofp_outer_alpha(seed: u64) -> u64 {
    black_box(nofp_inner_alpha(black_box(seed)))
}

#[inline(never)]
fn nofp_outer_beta(seed: u64) -> u64 {
    black_box(nofp_inner_beta(black_box(seed)))
}

#[inline(never)]
fn nofp_run(seconds: f64) -> u64 {
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let mut x = 1u64;
    let mut draw = three_to_one::ThreeToOne::new();
    while Instant::now() < end {
        x = if draw.alpha() {
            nofp_outer_alpha(x)
        } else {
            nofp_outer_beta(x)
        };
    }
    x
}

fn main() {
    let seconds: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(10.0);
    black_box(nofp_run(black_box(seconds)));
}
