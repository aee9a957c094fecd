//! What the gateway knows about one instance beyond its registration, kept across
//! table swaps beside its in-flight count and pool: outlier state, active-check
//! health, when it appeared (slow start), and the one question the request path
//! asks, [`InstanceState::admits`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::health::{Checked, Health};
use super::outlier::Outlier;
use crate::config::ServicePolicy;

/// Milliseconds since the process's first call, plus one: a cheap monotonic clock
/// whose 0 can mean "never". One `Instant::now()` per call.
pub fn now_ms() -> u64 {
    ms_at(Instant::now())
}

/// [`now_ms`] at `at`, for a caller that has read the clock already.
pub fn ms_at(at: Instant) -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    at.saturating_duration_since(*EPOCH.get_or_init(|| at)).as_millis() as u64 + 1
}

/// Why an instance does not take a new request now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Admit,
    /// Out after passive outlier detection.
    Ejected,
    /// Failed its active checks (or not checked yet, where that is configured unusable).
    Unhealthy,
    /// At `max_inflight`.
    Full,
}

#[derive(Debug)]
pub struct InstanceState {
    pub outlier: Outlier,
    pub health: Health,
    /// When the instance first appeared; 0 when it was in the first table (no ramp).
    seen_ms: AtomicU64,
}

impl InstanceState {
    /// `ramp`: whether this instance is new to a service that already had a table
    /// (instances of the first table serve at full share at once).
    pub fn new(ramp: bool) -> InstanceState {
        InstanceState {
            outlier: Outlier::default(),
            health: Health::default(),
            seen_ms: AtomicU64::new(if ramp { now_ms() } else { 0 }),
        }
    }

    /// Whether the instance takes a new request at `now_ms` with `inflight` already running.
    pub fn admits(&self, now_ms: u64, full: bool, policy: &ServicePolicy) -> Admission {
        if self.outlier.is_ejected(now_ms) {
            return Admission::Ejected;
        }
        match self.health.get() {
            Checked::Unhealthy => return Admission::Unhealthy,
            Checked::Unchecked if policy.health_check.as_ref().is_some_and(|c| !c.unchecked_usable) => {
                return Admission::Unhealthy
            }
            _ => {}
        }
        if full {
            return Admission::Full;
        }
        Admission::Admit
    }

    /// During slow start, the share (0, 1) of its full traffic the instance gets now;
    /// `None` once ramped up. The ramp starts when it appeared or, later, when its last
    /// ejection ended. Starts at 10 % (Envoy's `min_weight_percent`) so that a new
    /// instance is never starved outright.
    pub fn ramp(&self, now_ms: u64, window: Option<Duration>) -> Option<f64> {
        let window = window?.as_millis() as u64;
        let back = self.outlier.ejected_until();
        let from = self.seen_ms.load(Ordering::Relaxed).max(if back <= now_ms { back } else { 0 });
        if from == 0 || window == 0 {
            return None;
        }
        let elapsed = now_ms.saturating_sub(from);
        (elapsed < window).then(|| (elapsed as f64 / window as f64).max(0.1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CheckKind, HealthCheck};
    use crate::upstream::outlier::Outcome;

    #[test]
    fn admission_reasons() {
        let policy = ServicePolicy::default();
        let s = InstanceState::new(false);
        assert_eq!(s.admits(5, false, &policy), Admission::Admit);
        assert_eq!(s.admits(5, true, &policy), Admission::Full);
        s.outlier.record(Outcome::ConnectFailure, || 5, &policy.outlier, |_| true);
        assert_eq!(s.admits(6, false, &policy), Admission::Ejected);
        assert_eq!(s.admits(30_005, false, &policy), Admission::Admit);
    }

    #[test]
    fn unchecked_usable_is_configurable() {
        let check = HealthCheck {
            kind: CheckKind::Tcp,
            interval: Duration::from_secs(1),
            jitter: Duration::ZERO,
            timeout: Duration::from_secs(1),
            healthy_threshold: 1,
            unhealthy_threshold: 1,
            unchecked_usable: false,
        };
        let policy = ServicePolicy { health_check: Some(check.clone()), ..ServicePolicy::default() };
        let s = InstanceState::new(false);
        assert_eq!(s.admits(1, false, &policy), Admission::Unhealthy);
        s.health.record(true, &check);
        assert_eq!(s.admits(1, false, &policy), Admission::Admit);
        s.health.record(false, &check);
        assert_eq!(s.admits(1, false, &policy), Admission::Unhealthy);
    }

    #[test]
    fn ramp_rises_over_the_window() {
        let s = InstanceState { seen_ms: AtomicU64::new(1000), ..InstanceState::new(false) };
        let w = Some(Duration::from_secs(10));
        assert_eq!(s.ramp(1000, w), Some(0.1));
        assert_eq!(s.ramp(6000, w), Some(0.5));
        assert_eq!(s.ramp(11_000, w), None);
        assert_eq!(s.ramp(6000, None), None);
        // The first table's instances do not ramp.
        assert_eq!(InstanceState::new(false).ramp(5, w), None);
    }

    #[test]
    fn ramp_restarts_after_an_ejection() {
        let s = InstanceState::new(false);
        let e = s.outlier.record(Outcome::ConnectFailure, || 100, &Default::default(), |_| true).unwrap();
        let w = Some(Duration::from_secs(10));
        assert_eq!(s.ramp(e.until_ms - 1, w), None, "still out: not ramping");
        assert_eq!(s.ramp(e.until_ms + 5000, w), Some(0.5));
    }
}
