//! Retry pacing: exponential backoff with full jitter (base 1 s, cap 60 s) that honours a
//! server's `Retry-After` (delta-seconds).

use std::time::Duration;

pub const BASE: Duration = Duration::from_secs(1);
pub const CAP: Duration = Duration::from_secs(60);
/// The longest `Retry-After` we accept from a server; longer values are clamped.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

/// One retry sequence: `next()` grows the window 1 s, 2 s, 4 s ... 60 s and draws a delay
/// uniformly from `[0, window]` ("full jitter").
#[derive(Debug, Clone)]
pub struct Backoff {
    attempt: u32,
    base: Duration,
    cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(BASE, CAP)
    }
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Backoff {
            attempt: 0,
            base,
            cap,
        }
    }

    /// The delay before the next attempt. A server's `Retry-After` is a floor: we wait at least
    /// that long (clamped to [`MAX_RETRY_AFTER`]), and at least the jittered backoff.
    pub fn next(&mut self, retry_after: Option<Duration>) -> Duration {
        let window = self
            .base
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        let jittered = window.mul_f64(random_unit());
        match retry_after {
            Some(ra) => ra.min(MAX_RETRY_AFTER).max(jittered),
            None => jittered,
        }
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// A uniformly random number in [0, 1) from the system CSPRNG (ring); 0.5 if it fails.
pub fn random_unit() -> f64 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

/// Parses a `Retry-After` header given in delta-seconds. HTTP-dates are not used by the
/// LinuxGuard backend and are ignored (plain backoff applies).
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_doubles_up_to_the_cap() {
        let mut b = Backoff::default();
        for i in 0..12 {
            let window = Duration::from_secs(1 << i).min(CAP);
            let d = b.next(None);
            assert!(d <= window, "attempt {i}: {d:?} > {window:?}");
        }
        assert_eq!(b.attempt, 12);
        b.reset();
        assert!(b.next(None) <= BASE);
    }

    #[test]
    fn retry_after_is_a_floor_and_clamped() {
        let mut b = Backoff::default();
        assert!(b.next(Some(Duration::from_secs(3))) >= Duration::from_secs(3));
        assert_eq!(b.next(Some(Duration::from_secs(100_000))), MAX_RETRY_AFTER);
    }

    #[test]
    fn jitter_is_spread() {
        let v: Vec<f64> = (0..64).map(|_| random_unit()).collect();
        assert!(v.iter().all(|x| (0.0..1.0).contains(x)));
        assert!(v.iter().any(|x| *x < 0.5) && v.iter().any(|x| *x >= 0.5));
    }

    #[test]
    fn retry_after_parsing() {
        assert_eq!(parse_retry_after(" 2 "), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }
}
