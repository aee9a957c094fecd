//! Active health checks: a small state machine per instance (`Health`: N failed
//! probes in a row → unhealthy, M good ones → healthy), the probes themselves
//! (`probe`: HTTP, gRPC `grpc.health.v1`, TCP connect) and the task that runs
//! them for every service that asks for it (`checker`).
//!
//! Like outlier ejection, the result is an atomic flipped on the instance's state
//! that survives table swaps; the table is never rebuilt for health.

pub(crate) mod checker;
pub(crate) mod probe;

use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};

use crate::config::HealthCheck;

/// What active checks know about an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum Checked {
    /// Not probed yet (or the service has no checks).
    Unchecked = 0,
    Healthy = 1,
    Unhealthy = 2,
}

#[derive(Debug, Default)]
pub struct Health {
    state: AtomicU8,
    /// Probes in a row with the same result, the sign in `streak_ok`.
    streak: AtomicU32,
    streak_ok: AtomicU8,
}

impl Health {
    pub fn get(&self) -> Checked {
        match self.state.load(Ordering::Relaxed) {
            1 => Checked::Healthy,
            2 => Checked::Unhealthy,
            _ => Checked::Unchecked,
        }
    }

    /// Records one probe's result; returns the new state when it changed. The first
    /// probe decides at once (an unchecked instance is not kept waiting for M
    /// successes, nor a dead one for N failures); after that the thresholds apply.
    /// Only the checker task calls this, so the read-modify-write needs no CAS.
    pub fn record(&self, ok: bool, check: &HealthCheck) -> Option<Checked> {
        let same = (self.streak_ok.load(Ordering::Relaxed) == 1) == ok;
        let streak = if same { self.streak.load(Ordering::Relaxed) + 1 } else { 1 };
        self.streak.store(streak, Ordering::Relaxed);
        self.streak_ok.store(ok as u8, Ordering::Relaxed);
        let now = self.get();
        let next = match (now, ok) {
            (Checked::Unchecked, true) => Checked::Healthy,
            (Checked::Unchecked, false) => Checked::Unhealthy,
            (Checked::Unhealthy, true) if streak >= check.healthy_threshold => Checked::Healthy,
            (Checked::Healthy, false) if streak >= check.unhealthy_threshold => Checked::Unhealthy,
            _ => return None,
        };
        self.state.store(next as u8, Ordering::Relaxed);
        Some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CheckKind;
    use std::time::Duration;

    fn check() -> HealthCheck {
        HealthCheck {
            kind: CheckKind::Tcp,
            interval: Duration::from_secs(1),
            jitter: Duration::ZERO,
            timeout: Duration::from_secs(1),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
            unchecked_usable: true,
        }
    }

    #[test]
    fn first_probe_decides_then_thresholds() {
        let h = Health::default();
        assert_eq!(h.get(), Checked::Unchecked);
        assert_eq!(h.record(true, &check()), Some(Checked::Healthy));
        assert_eq!(h.record(false, &check()), None);
        assert_eq!(h.record(false, &check()), None);
        assert_eq!(h.record(false, &check()), Some(Checked::Unhealthy));
        assert_eq!(h.record(true, &check()), None);
        assert_eq!(h.record(true, &check()), Some(Checked::Healthy));
    }

    #[test]
    fn a_flapping_instance_never_reaches_a_threshold() {
        let h = Health::default();
        h.record(true, &check());
        for _ in 0..10 {
            assert_eq!(h.record(false, &check()), None);
            assert_eq!(h.record(false, &check()), None);
            assert_eq!(h.record(true, &check()), None);
        }
        assert_eq!(h.get(), Checked::Healthy);
    }

    #[test]
    fn unchecked_and_failing_is_unhealthy_at_once() {
        let h = Health::default();
        assert_eq!(h.record(false, &check()), Some(Checked::Unhealthy));
    }
}
