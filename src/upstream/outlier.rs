//! Passive outlier detection: what the request path saw of an instance
//! (`Outcome`) decides whether it is ejected, for how long, and when it is back.
//!
//! The state is a handful of atomics per instance, flipped by whichever request
//! observed the outcome: ejection has to take effect within a request or two
//! (a dead instance must stop costing clients at once), and sending it through the
//! table writer would rebuild the service's pickers each time. The table stays
//! immutable; the candidates iterator reads these atomics and skips ejected
//! instances, so a Maglev or weighted sequence never changes because of health.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};

use crate::config::OutlierPolicy;

/// What one try at an instance came to, as the HTTP and TCP paths see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// An answer that says nothing bad about the instance.
    Success,
    /// Refused, unreachable or timed out while connecting: nothing was sent.
    ConnectFailure,
    /// No response head within the try's deadline.
    Timeout,
    /// The connection failed after the request was (partly) sent.
    Reset,
    /// The instance answered 502, 503 or 504 (or gRPC UNAVAILABLE).
    Status(u16),
}

impl Outcome {
    /// Whether this outcome counts against the instance.
    pub fn is_failure(self) -> bool {
        !matches!(self, Outcome::Success)
    }
}

/// Why an instance is out, for `/upstreams`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum EjectReason {
    None = 0,
    ConnectFailures = 1,
    Failures = 2,
}

impl EjectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EjectReason::None => "",
            EjectReason::ConnectFailures => "connect_failures",
            EjectReason::Failures => "consecutive_failures",
        }
    }
    fn from_u8(v: u8) -> EjectReason {
        match v {
            1 => EjectReason::ConnectFailures,
            2 => EjectReason::Failures,
            _ => EjectReason::None,
        }
    }
}

/// One instance's outlier state. Times are milliseconds of [`super::instance::now_ms`].
#[derive(Debug, Default)]
pub struct Outlier {
    failures: AtomicU32,
    connect_failures: AtomicU32,
    /// 0: never ejected.
    ejected_until: AtomicU64,
    times_ejected: AtomicU32,
    reason: AtomicU8,
}

/// An ejection that an outcome caused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ejection {
    pub until_ms: u64,
    pub reason: EjectReason,
    pub times: u32,
}

impl Outlier {
    pub fn is_ejected(&self, now_ms: u64) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > now_ms
    }

    /// When the current or last ejection ends (0: never ejected).
    pub fn ejected_until(&self) -> u64 {
        self.ejected_until.load(Ordering::Relaxed)
    }

    pub fn reason(&self) -> EjectReason {
        EjectReason::from_u8(self.reason.load(Ordering::Relaxed))
    }

    pub fn times_ejected(&self) -> u32 {
        self.times_ejected.load(Ordering::Relaxed)
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Records one outcome. When it reaches a threshold and `may_eject(now_ms)` agrees (the
    /// service's cap on ejected instances), the instance is ejected and the ejection
    /// returned. Concurrent failures eject once: the counter is reset by whoever
    /// ejects, and an instance already out is not ejected again.
    ///
    /// `now_ms` reads the clock: a success, the usual outcome, needs it only for an
    /// instance ejected before, and writes the shared counters only when they are
    /// not zero already (a store would take their cache line from the other cores).
    pub fn record(
        &self,
        outcome: Outcome,
        now_ms: impl FnOnce() -> u64,
        policy: &OutlierPolicy,
        may_eject: impl FnOnce(u64) -> bool,
    ) -> Option<Ejection> {
        if !outcome.is_failure() {
            for counter in [&self.failures, &self.connect_failures] {
                if counter.load(Ordering::Relaxed) != 0 {
                    counter.store(0, Ordering::Relaxed);
                }
            }
            // A long healthy stretch after the last ejection forgets one of them, so a
            // rare relapse is not punished with the longest ejection (Envoy does the same).
            let until = self.ejected_until.load(Ordering::Relaxed);
            if until == 0 {
                return None;
            }
            let now_ms = now_ms();
            let base = policy.base_ejection.as_millis() as u64;
            if now_ms > until.saturating_add(base) && self.times_ejected.load(Ordering::Relaxed) > 0 {
                let _ = self.times_ejected.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| t.checked_sub(1));
                self.ejected_until.store(now_ms, Ordering::Relaxed);
            }
            return None;
        }
        let now_ms = now_ms();
        if !policy.enabled || self.is_ejected(now_ms) {
            return None;
        }
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let connect = if outcome == Outcome::ConnectFailure {
            self.connect_failures.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            self.connect_failures.store(0, Ordering::Relaxed);
            0
        };
        let reason = if connect >= policy.consecutive_connect_failures {
            EjectReason::ConnectFailures
        } else if failures >= policy.consecutive_failures {
            EjectReason::Failures
        } else {
            return None;
        };
        if !may_eject(now_ms) {
            return None;
        }
        let times = self.times_ejected.load(Ordering::Relaxed) + 1;
        let length = (policy.base_ejection.saturating_mul(times)).min(policy.max_ejection);
        let until = now_ms + length.as_millis() as u64;
        let previous = self.ejected_until.load(Ordering::Relaxed);
        if previous > now_ms
            || self.ejected_until.compare_exchange(previous, until, Ordering::Relaxed, Ordering::Relaxed).is_err()
        {
            return None; // another request ejected it meanwhile
        }
        self.times_ejected.store(times, Ordering::Relaxed);
        self.reason.store(reason as u8, Ordering::Relaxed);
        self.failures.store(0, Ordering::Relaxed);
        self.connect_failures.store(0, Ordering::Relaxed);
        Some(Ejection { until_ms: until, reason, times })
    }
}

/// Whether one more of `total` instances may be ejected when `ejected` already are:
/// at most `percent` of them, and never the last one standing.
pub fn may_eject(ejected: usize, total: usize, percent: u32) -> bool {
    total > 1 && (ejected + 1) * 100 <= total * percent as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn policy() -> OutlierPolicy {
        OutlierPolicy::default()
    }

    #[test]
    fn five_failures_in_a_row_eject_for_the_base_time() {
        let o = Outlier::default();
        for i in 0..4 {
            assert_eq!(o.record(Outcome::Status(503), || 1000 + i, &policy(), |_| true), None);
        }
        let e = o.record(Outcome::Timeout, || 1005, &policy(), |_| true).expect("ejected");
        assert_eq!((e.until_ms, e.reason, e.times), (31_005, EjectReason::Failures, 1));
        assert!(o.is_ejected(31_004));
        assert!(!o.is_ejected(31_005));
    }

    #[test]
    fn a_success_resets_the_streak() {
        let o = Outlier::default();
        for _ in 0..4 {
            o.record(Outcome::Reset, || 1, &policy(), |_| true);
        }
        o.record(Outcome::Success, || 2, &policy(), |_| true);
        for _ in 0..4 {
            assert_eq!(o.record(Outcome::Reset, || 3, &policy(), |_| true), None);
        }
    }

    #[test]
    fn a_connect_failure_ejects_at_once() {
        let o = Outlier::default();
        let e = o.record(Outcome::ConnectFailure, || 10, &policy(), |_| true).expect("ejected");
        assert_eq!(e.reason, EjectReason::ConnectFailures);
        // Already out: further failures do not extend or re-eject.
        assert_eq!(o.record(Outcome::ConnectFailure, || 11, &policy(), |_| true), None);
        assert_eq!(o.ejected_until(), 30_010);
    }

    #[test]
    fn each_ejection_lasts_longer_up_to_the_cap() {
        let p = OutlierPolicy { max_ejection: Duration::from_secs(70), ..policy() };
        let o = Outlier::default();
        let mut now = 0;
        let mut lengths = Vec::new();
        for _ in 0..4 {
            let e = o.record(Outcome::ConnectFailure, || now, &p, |_| true).expect("ejected");
            lengths.push((e.until_ms - now) / 1000);
            now = e.until_ms; // back, and failing again at once
        }
        assert_eq!(lengths, [30, 60, 70, 70]);
    }

    #[test]
    fn the_cap_on_ejected_instances_holds() {
        let o = Outlier::default();
        assert_eq!(o.record(Outcome::ConnectFailure, || 1, &policy(), |_| false), None);
        assert!(!o.is_ejected(1));
        assert!(may_eject(0, 3, 50));
        assert!(!may_eject(1, 3, 50), "a second of three is more than half");
        assert!(may_eject(1, 4, 50));
        assert!(!may_eject(0, 1, 100), "never the only instance");
        assert!(!may_eject(0, 3, 0));
    }

    #[test]
    fn disabled_never_ejects() {
        let p = OutlierPolicy { enabled: false, ..policy() };
        let o = Outlier::default();
        for _ in 0..100 {
            assert_eq!(o.record(Outcome::ConnectFailure, || 1, &p, |_| true), None);
        }
    }

    #[test]
    fn a_healthy_stretch_forgets_an_ejection() {
        let o = Outlier::default();
        o.record(Outcome::ConnectFailure, || 0, &policy(), |_| true).expect("ejected");
        assert_eq!(o.times_ejected(), 1);
        o.record(Outcome::Success, || 30_000 + 30_001, &policy(), |_| true);
        assert_eq!(o.times_ejected(), 0);
        let e = o.record(Outcome::ConnectFailure, || 70_000, &policy(), |_| true).expect("ejected");
        assert_eq!(e.until_ms - 70_000, 30_000);
    }
}
