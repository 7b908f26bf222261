//! Retry pieces shared by the wire sinks (OTLP/gRPC, Pyroscope, Loki): exponential backoff with
//! jitter, and short quotes of what a receiver answered.

use std::time::Duration;

/// Exponential backoff: `initial`, doubled per retry, capped at `max`, the upper half jittered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
}

impl Backoff {
    /// Backoff from `initial` up to `max` (raised to `initial` when lower).
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max: max.max(initial),
        }
    }

    /// The wait before retry number `retry` (1-based): between half and all of
    /// `min(initial × 2^(retry-1), max)`.
    pub fn delay(&self, retry: u32) -> Duration {
        let exp = self
            .initial
            .saturating_mul(1u32 << retry.saturating_sub(1).min(20))
            .min(self.max);
        let half = exp / 2;
        half + half.mul_f64(random_fraction())
    }
}

/// A uniformly distributed value in [0, 1) from the OS random source (via uuid v4, whose low 62
/// bits are random).
pub fn random_fraction() -> f64 {
    let (_, lo) = uuid::Uuid::new_v4().as_u64_pair();
    (lo & ((1u64 << 53) - 1)) as f64 / (1u64 << 53) as f64
}

/// The first `max` characters of `message`, trimmed: how errors quote a receiver.
pub fn cut(message: &str, max: usize) -> String {
    message
        .chars()
        .take(max)
        .collect::<String>()
        .trim()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        for (retry, full) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1000),
            (40, 1000),
        ] {
            let d = b.delay(retry);
            let full = Duration::from_millis(full);
            assert!(d >= full / 2 && d <= full, "retry {retry}: {d:?}");
        }
        let low = Backoff::new(Duration::from_secs(2), Duration::from_secs(1));
        assert!(low.delay(3) >= Duration::from_secs(1));
    }

    #[test]
    fn cut_keeps_whole_characters() {
        assert_eq!(cut("é日本🦀xyz", 4), "é日本🦀");
        assert_eq!(cut("  ab  ", 10), "ab");
    }
}
