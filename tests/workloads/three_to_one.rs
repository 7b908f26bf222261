//! The 3:1 draw the profiling workloads share (`mod three_to_one;` in hot.rs and nofp.rs).
//!
//! One beta in each group of four calls, at a place drawn at random: exactly 3:1 over a run,
//! in no fixed rhythm. Calls of a fixed rhythm close to the sampling period (alpha's 3 units
//! then beta's 1 took about 1 ms, the sampler ticks at 997 Hz) let samples fall in step with it,
//! which skewed the ratio by 10% under load; a free draw of three in four came out 2.88:1 over
//! a run's few thousand calls.

pub struct ThreeToOne {
    state: u64,
    call: u64,
    beta_at: u64,
}

impl ThreeToOne {
    pub fn new() -> Self {
        ThreeToOne {
            state: 0x9E37_79B9_7F4A_7C15,
            call: 0,
            beta_at: 0,
        }
    }

    /// Whether this call is alpha's (otherwise beta's).
    pub fn alpha(&mut self) -> bool {
        if self.call % 4 == 0 {
            // xorshift64
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            self.beta_at = self.state % 4;
        }
        let alpha = self.call % 4 != self.beta_at;
        self.call += 1;
        alpha
    }
}
