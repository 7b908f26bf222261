//! Test workload: burns CPU in two known functions, 3:1 (one unit per call, alpha called three
//! times as often, in random order), for argv[1] seconds (default 10).
//! Built by xtask with `-C force-frame-pointers=yes` so the profiler can walk its stacks.

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
    // Units drawn at random, three in four for alpha: calls of a fixed rhythm close to the
    // sampling period (alpha's 3 units then beta's 1 took about 1 ms, the sampler ticks at
    // 997 Hz) let samples fall in step with it, which skewed the ratio by 10% under load.
    let mut r = 0x9E37_79B9_7F4A_7C15u64;
    // One beta in each group of four calls, at a place drawn at random: exactly 3:1, in no
    // fixed rhythm.
    let (mut call, mut beta_at) = (0u64, 0u64);
    while Instant::now() < end {
        if call % 4 == 0 {
            r ^= r << 13;
            r ^= r >> 7;
            r ^= r << 17;
            beta_at = r % 4;
        }
        let alpha = call % 4 != beta_at;
        call += 1;
        x = if alpha {
            rust_hot_alpha(x)
        } else {
            rust_hot_beta(x)
        };
    }
    black_box(x);
}
