//! Reconnect delays: exponential with "equal jitter" (half fixed, half random),
//! so a fleet of gateways that lost etcd together does not return in lockstep.

use std::time::Duration;

pub const INITIAL: Duration = Duration::from_millis(100);
pub const MAX: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(INITIAL, MAX)
    }
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff { initial, max: max.max(initial), next: initial }
    }

    /// The delay before the next attempt; `random` is uniform in `[0, 1)`.
    pub fn delay(&mut self, random: f64) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        base / 2 + base.mul_f64(random.clamp(0.0, 1.0) / 2.0)
    }

    /// After a success: the next failure starts from the initial delay again.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_doubles_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        let got: Vec<u128> = (0..6).map(|_| b.delay(0.0).as_millis()).collect();
        assert_eq!(got, [50, 100, 200, 400, 500, 500]);
        b.reset();
        assert_eq!(b.delay(0.999_999).as_millis(), 99);
    }

    #[test]
    fn jitter_stays_within_half_to_full() {
        let mut b = Backoff::default();
        for i in 0..20 {
            let r = (i as f64) / 20.0;
            let d = b.delay(r);
            assert!(d >= Duration::from_millis(50) && d <= MAX, "{d:?}");
        }
    }
}
