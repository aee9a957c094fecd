//! Per-service metric handles, registered once when a service first appears and
//! kept across table swaps, so the request path records without building labels.

use metrics::{Counter, Gauge, Histogram};

use super::conn::UpstreamError;
use super::outlier::EjectReason;
use crate::metrics as m;

/// Why a request was tried again, as the `reason` label of `switchyard_upstream_retries_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryReason {
    ConnectFailure = 0,
    Reset = 1,
    Timeout = 2,
    Status502 = 3,
    Status503 = 4,
    Status504 = 5,
    GrpcUnavailable = 6,
}

impl RetryReason {
    const ALL: [&'static str; 7] = ["connect_failure", "reset", "timeout", "502", "503", "504", "grpc_unavailable"];
}

/// Which limit turned a request away, as the `limit` label of `switchyard_upstream_overflow_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    Inflight = 0,
    Pending = 1,
}

#[derive(Debug)]
pub struct ServiceStats {
    /// Indexed by status class: 1xx..5xx → 0..4.
    requests: [Counter; 5],
    duration: Histogram,
    errors: [Counter; 5],
    /// Instances by state: up, draining, down.
    instances: [Gauge; 3],
    retries: [Counter; 7],
    budget_exhausted: Counter,
    ejections: [Counter; 2],
    panic: Counter,
    overflow: [Counter; 2],
    checks: [Counter; 2],
    health_changes: [Counter; 2],
}

impl ServiceStats {
    pub fn new(service: &str) -> Self {
        let s = || service.to_string();
        let requests = ["1xx", "2xx", "3xx", "4xx", "5xx"]
            .map(|class| metrics::counter!(m::REQUESTS, "service" => s(), "class" => class));
        let errors = UpstreamError::ALL
            .map(|kind| metrics::counter!(m::UPSTREAM_ERRORS, "service" => s(), "kind" => kind.as_str()));
        let duration = metrics::histogram!(m::REQUEST_DURATION, "service" => s());
        let instances = ["up", "draining", "down"]
            .map(|state| metrics::gauge!(m::UPSTREAM_INSTANCES, "service" => s(), "state" => state));
        ServiceStats {
            requests,
            duration,
            errors,
            instances,
            retries: RetryReason::ALL
                .map(|reason| metrics::counter!(m::UPSTREAM_RETRIES, "service" => s(), "reason" => reason)),
            budget_exhausted: metrics::counter!(m::UPSTREAM_RETRY_BUDGET_EXHAUSTED, "service" => s()),
            ejections: [EjectReason::ConnectFailures, EjectReason::Failures]
                .map(|r| metrics::counter!(m::UPSTREAM_EJECTIONS, "service" => s(), "reason" => r.as_str())),
            panic: metrics::counter!(m::UPSTREAM_PANIC, "service" => s()),
            overflow: ["inflight", "pending"]
                .map(|limit| metrics::counter!(m::UPSTREAM_OVERFLOW, "service" => s(), "limit" => limit)),
            checks: ["ok", "failed"]
                .map(|result| metrics::counter!(m::HEALTH_CHECKS, "service" => s(), "result" => result)),
            health_changes: ["healthy", "unhealthy"]
                .map(|to| metrics::counter!(m::HEALTH_CHANGES, "service" => s(), "to" => to)),
        }
    }

    pub fn response(&self, status: http::StatusCode, seconds: f64) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.requests[class].increment(1);
        self.duration.record(seconds);
    }

    pub fn instances(&self, up: usize, draining: usize, down: usize) {
        for (gauge, n) in self.instances.iter().zip([up, draining, down]) {
            gauge.set(n as f64);
        }
    }

    pub fn error(&self, kind: UpstreamError) {
        self.errors[kind as usize].increment(1);
    }

    pub fn retry(&self, reason: RetryReason) {
        self.retries[reason as usize].increment(1);
    }

    pub fn budget_exhausted(&self) {
        self.budget_exhausted.increment(1);
    }

    pub fn ejected(&self, reason: EjectReason) {
        match reason {
            EjectReason::ConnectFailures => self.ejections[0].increment(1),
            EjectReason::Failures => self.ejections[1].increment(1),
            EjectReason::None => {}
        }
    }

    pub fn panic(&self) {
        self.panic.increment(1);
    }

    pub fn overflow(&self, limit: Overflow) {
        self.overflow[limit as usize].increment(1);
    }

    pub fn check(&self, ok: bool) {
        self.checks[usize::from(!ok)].increment(1);
    }

    pub fn health_changed(&self, healthy: bool) {
        self.health_changes[usize::from(!healthy)].increment(1);
    }
}
