//! Test workload: burns CPU in two known functions, 3:1 (one unit per call, alpha called three
//! times as often, in random order), for argv[1] seconds (default 10).
//! Built by xtask with `-C force-frame-pointers=yes` so the profiler can walk its stacks.

mod three_to_one;

use std::hint::black_box;
use std::time::{Duration, Instant};

const UNIT: u64 = 200_000;

#[inline(never)]
fn spin(units: u64, seed: u64) -> u64 {
    let mut x = seed;
    for _ in 0..units * UNIT {
        x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407));
    }
    x
}

#[inline(never)]
#[unsafe(no_mangle)]
pub fn rust_hot_alpha(seed: u64) -> u64 {
    black_box(spin_alpha(1, seed))
}

#[inline(never)]
fn spin_alpha(units: u64, seed: u64) -> u64 {
    spin(units, seed)
}

#[inline(never)]
#[unsafe(no_mangle)]
pub fn rust_hot_beta(seed: u64) -> u64 {
    black_box(spin(1, seed))
}

fn main() {
    let seconds: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(10.0);
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let mut x = 1u64;
    let mut draw = three_to_one::ThreeToOne::new();
    while Instant::now() < end {
        x = if draw.alpha() {
            rust_hot_alpha(x)
        } else {
            rust_hot_beta(x)
        };
    }
    black_box(x);
}
