//! What the gateway does when backends fail, as configured: per service
//! (`[[service]]`: outlier ejection, active health checks, limits, slow start,
//! the retry budget) and per route (`retry`). Every default is on without any
//! configuration and is named after the proxy it was taken from.

use std::time::Duration;

use super::raw::{RawHealthCheck, RawOutlier, RawRetry, RawRetryBudget, RawService};
use super::validate::Validator;

/// Envoy's `consecutive_gateway_failure` and `consecutive_5xx` default.
pub const DEFAULT_CONSECUTIVE_FAILURES: u32 = 5;
/// A refused or timed-out connect ejects at once, as nginx's `max_fails=1` does for errors:
/// nothing was sent, and a host that refuses one connect refuses the next.
pub const DEFAULT_CONSECUTIVE_CONNECT_FAILURES: u32 = 1;
/// Envoy's `base_ejection_time`.
pub const DEFAULT_BASE_EJECTION: Duration = Duration::from_secs(30);
/// Envoy's `max_ejection_time`.
pub const DEFAULT_MAX_EJECTION: Duration = Duration::from_secs(300);
/// Never more than half a service out (Envoy's default is 10 %, which with fewer than
/// ten instances never ejects anything).
pub const DEFAULT_MAX_EJECTED_PERCENT: u32 = 50;
/// Envoy's circuit-breaker defaults (`max_connections`, `max_requests`, `max_pending_requests`: 1024).
pub const DEFAULT_MAX_CONNECTIONS_PER_INSTANCE: usize = 1024;
pub const DEFAULT_MAX_INFLIGHT_PER_INSTANCE: usize = 1024;
pub const DEFAULT_MAX_PENDING: usize = 1024;
/// Envoy's retry budget: retries at most 20 % of active requests, at least 3 at once.
pub const DEFAULT_RETRY_BUDGET_PERCENT: u32 = 20;
pub const DEFAULT_RETRY_MIN_CONCURRENCY: usize = 3;
/// Total tries of a request (the first and one retry), as Envoy's `num_retries = 1`.
pub const DEFAULT_RETRY_ATTEMPTS: u32 = 2;
/// Request bodies up to this size are kept for a retry (Envoy's `per_request_buffer_limit_bytes`
/// is 1 MiB; 64 KiB covers typical API bodies at a small fraction of the memory).
pub const DEFAULT_RETRY_BUFFER: usize = 64 * 1024;
/// HAProxy's `inter` is 2 s, nginx plus's `interval` 5 s.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(5);
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(1);
/// HAProxy's `rise 2` and `fall 3`.
pub const DEFAULT_HEALTHY_THRESHOLD: u32 = 2;
pub const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 3;

/// Every per-service policy, with its defaults for services that have no `[[service]]`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ServicePolicy {
    pub outlier: OutlierPolicy,
    pub health_check: Option<HealthCheck>,
    pub limits: InstanceLimits,
    /// A new (or returning) instance's share ramps up over this; `None`: at once.
    pub slow_start: Option<Duration>,
    pub retry_budget: RetryBudget,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OutlierPolicy {
    pub enabled: bool,
    /// Failures in a row (reset, timeout, 502/503/504) that eject.
    pub consecutive_failures: u32,
    /// Connect failures in a row that eject.
    pub consecutive_connect_failures: u32,
    /// The first ejection's length; the n-th lasts n times as long, up to `max_ejection`.
    pub base_ejection: Duration,
    pub max_ejection: Duration,
    /// Of a service's instances, at most this share is ejected at once.
    pub max_ejected_percent: u32,
}

impl Default for OutlierPolicy {
    fn default() -> Self {
        OutlierPolicy {
            enabled: true,
            consecutive_failures: DEFAULT_CONSECUTIVE_FAILURES,
            consecutive_connect_failures: DEFAULT_CONSECUTIVE_CONNECT_FAILURES,
            base_ejection: DEFAULT_BASE_EJECTION,
            max_ejection: DEFAULT_MAX_EJECTION,
            max_ejected_percent: DEFAULT_MAX_EJECTED_PERCENT,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum CheckKind {
    /// A GET of `path`; healthy when the status is in `status`.
    Http { path: String, host: Option<String>, status: (u16, u16) },
    /// `grpc.health.v1.Health/Check` for `service` ("" = the server as a whole).
    Grpc { service: String },
    /// A TCP connect.
    Tcp,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheck {
    pub kind: CheckKind,
    pub interval: Duration,
    /// Each round waits `interval` plus up to this much, at random, so that many
    /// gateways do not probe in lockstep.
    pub jitter: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    /// Whether an instance not yet probed takes requests.
    pub unchecked_usable: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstanceLimits {
    /// Open upstream connections per instance.
    pub max_connections: usize,
    /// Requests in flight per instance.
    pub max_inflight: usize,
    /// Requests of the service waiting for a connection.
    pub max_pending: usize,
}

impl Default for InstanceLimits {
    fn default() -> Self {
        InstanceLimits {
            max_connections: DEFAULT_MAX_CONNECTIONS_PER_INSTANCE,
            max_inflight: DEFAULT_MAX_INFLIGHT_PER_INSTANCE,
            max_pending: DEFAULT_MAX_PENDING,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryBudget {
    pub percent: u32,
    pub min_concurrency: usize,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget { percent: DEFAULT_RETRY_BUDGET_PERCENT, min_concurrency: DEFAULT_RETRY_MIN_CONCURRENCY }
    }
}

/// Why a sent request may be tried again (`retry.on`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetryOn {
    pub connect_failure: bool,
    pub reset: bool,
    pub status_502: bool,
    pub status_503: bool,
    pub status_504: bool,
}

impl RetryOn {
    pub const NAMES: &'static str = "connect-failure, reset, 502, 503, 504";

    /// Whether an answer with this status may be retried.
    pub fn status(&self, status: u16) -> bool {
        match status {
            502 => self.status_502,
            503 => self.status_503,
            504 => self.status_504,
            _ => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries in all, the first included.
    pub attempts: u32,
    pub on: RetryOn,
    /// Each try's own deadline (never past the request's).
    pub per_try_timeout: Option<Duration>,
    /// Also retry POST, PATCH and other non-idempotent methods.
    pub non_idempotent: bool,
    /// Bodies up to this many bytes are kept for a retry; a larger one is sent once.
    pub buffer: usize,
}

impl Default for RetryPolicy {
    /// Without a route `retry`: a request whose connection was reset is tried once more on
    /// another instance, idempotent methods only — nginx's `proxy_next_upstream error`.
    fn default() -> Self {
        RetryPolicy {
            attempts: DEFAULT_RETRY_ATTEMPTS,
            on: RetryOn { connect_failure: true, reset: true, ..RetryOn::default() },
            per_try_timeout: None,
            non_idempotent: false,
            buffer: DEFAULT_RETRY_BUFFER,
        }
    }
}

impl Validator {
    pub(super) fn service_policy(&mut self, path: &str, s: &RawService) -> ServicePolicy {
        let d = InstanceLimits::default();
        let limits = InstanceLimits {
            max_connections: self.count(&format!("{path}.max_connections"), s.max_connections, d.max_connections),
            max_inflight: self.count(&format!("{path}.max_inflight"), s.max_inflight, d.max_inflight),
            max_pending: self.count(&format!("{path}.max_pending"), s.max_pending, d.max_pending),
        };
        ServicePolicy {
            outlier: s.outlier.as_ref().map(|o| self.outlier(&format!("{path}.outlier"), o)).unwrap_or_default(),
            health_check: s.health_check.as_ref().and_then(|h| self.health_check(&format!("{path}.health_check"), h)),
            limits,
            slow_start: s
                .slow_start
                .as_deref()
                .map(|t| self.duration(&format!("{path}.slow_start"), Some(t), Duration::from_secs(30))),
            retry_budget: s
                .retry_budget
                .as_ref()
                .map(|b| self.retry_budget(&format!("{path}.retry_budget"), b))
                .unwrap_or_default(),
        }
    }

    fn percent(&mut self, path: &str, value: Option<i64>, default: u32) -> u32 {
        match value {
            None => default,
            Some(n) if (0..=100).contains(&n) => n as u32,
            Some(n) => {
                self.error(path, format!("must be between 0 and 100, got {n}"));
                default
            }
        }
    }

    fn small(&mut self, path: &str, value: Option<i64>, default: u32) -> u32 {
        match value {
            None => default,
            Some(n) if (1..=1000).contains(&n) => n as u32,
            Some(n) => {
                self.error(path, format!("must be between 1 and 1000, got {n}"));
                default
            }
        }
    }

    fn outlier(&mut self, path: &str, o: &RawOutlier) -> OutlierPolicy {
        let base = self.duration(&format!("{path}.base_ejection"), o.base_ejection.as_deref(), DEFAULT_BASE_EJECTION);
        let max =
            self.duration(&format!("{path}.max_ejection"), o.max_ejection.as_deref(), DEFAULT_MAX_EJECTION.max(base));
        if max < base {
            self.error(format!("{path}.max_ejection"), format!("{max:?} is shorter than base_ejection ({base:?})"));
        }
        OutlierPolicy {
            enabled: o.enabled.unwrap_or(true),
            consecutive_failures: self.small(
                &format!("{path}.consecutive_failures"),
                o.consecutive_failures,
                DEFAULT_CONSECUTIVE_FAILURES,
            ),
            consecutive_connect_failures: self.small(
                &format!("{path}.consecutive_connect_failures"),
                o.consecutive_connect_failures,
                DEFAULT_CONSECUTIVE_CONNECT_FAILURES,
            ),
            base_ejection: base,
            max_ejection: max,
            max_ejected_percent: self.percent(
                &format!("{path}.max_ejected_percent"),
                o.max_ejected_percent,
                DEFAULT_MAX_EJECTED_PERCENT,
            ),
        }
    }

    fn health_check(&mut self, path: &str, h: &RawHealthCheck) -> Option<HealthCheck> {
        let kind = match h.kind.as_deref().unwrap_or("http") {
            "http" => {
                let p = h.path.clone().unwrap_or_else(|| "/".into());
                if !p.starts_with('/') {
                    self.error(format!("{path}.path"), format!("{p:?} must start with '/'"));
                }
                let status = match h.status.as_deref() {
                    None => (200, 399),
                    Some(s) => match parse_status_range(s) {
                        Some(r) => r,
                        None => {
                            self.error(
                                format!("{path}.status"),
                                format!("invalid status range {s:?} (expected e.g. \"200\" or \"200-399\")"),
                            );
                            (200, 399)
                        }
                    },
                };
                CheckKind::Http { path: p, host: h.host.clone(), status }
            }
            "grpc" => CheckKind::Grpc { service: h.grpc_service.clone().unwrap_or_default() },
            "tcp" => CheckKind::Tcp,
            other => {
                self.error(format!("{path}.kind"), format!("unknown check {other:?} (expected http, grpc, tcp)"));
                return None;
            }
        };
        let unused = match kind {
            CheckKind::Http { .. } => vec![("grpc_service", h.grpc_service.is_some())],
            CheckKind::Grpc { .. } => {
                vec![("path", h.path.is_some()), ("host", h.host.is_some()), ("status", h.status.is_some())]
            }
            CheckKind::Tcp => vec![
                ("path", h.path.is_some()),
                ("host", h.host.is_some()),
                ("status", h.status.is_some()),
                ("grpc_service", h.grpc_service.is_some()),
            ],
        };
        for (field, set) in unused {
            if set {
                self.error(format!("{path}.{field}"), "not used by this kind of check");
            }
        }
        let interval = self.duration(&format!("{path}.interval"), h.interval.as_deref(), DEFAULT_CHECK_INTERVAL);
        let jitter = match h.jitter.as_deref().map(super::parse_duration) {
            None => interval / 10,
            Some(Ok(d)) => d,
            Some(Err(reason)) => {
                self.error(format!("{path}.jitter"), reason);
                interval / 10
            }
        };
        let timeout = self.duration(&format!("{path}.timeout"), h.timeout.as_deref(), DEFAULT_CHECK_TIMEOUT);
        let unchecked_usable = match h.unchecked.as_deref() {
            None | Some("usable") => true,
            Some("unusable") => false,
            Some(other) => {
                self.error(format!("{path}.unchecked"), format!("unknown value {other:?} (expected usable, unusable)"));
                true
            }
        };
        Some(HealthCheck {
            kind,
            interval,
            jitter,
            timeout,
            healthy_threshold: self.small(
                &format!("{path}.healthy_threshold"),
                h.healthy_threshold,
                DEFAULT_HEALTHY_THRESHOLD,
            ),
            unhealthy_threshold: self.small(
                &format!("{path}.unhealthy_threshold"),
                h.unhealthy_threshold,
                DEFAULT_UNHEALTHY_THRESHOLD,
            ),
            unchecked_usable,
        })
    }

    fn retry_budget(&mut self, path: &str, b: &RawRetryBudget) -> RetryBudget {
        RetryBudget {
            percent: self.percent(&format!("{path}.percent"), b.percent, DEFAULT_RETRY_BUDGET_PERCENT),
            min_concurrency: match b.min_concurrency {
                None => DEFAULT_RETRY_MIN_CONCURRENCY,
                Some(n) if n >= 0 => n as usize,
                Some(n) => {
                    self.error(format!("{path}.min_concurrency"), format!("must not be negative, got {n}"));
                    DEFAULT_RETRY_MIN_CONCURRENCY
                }
            },
        }
    }

    pub(super) fn retry(&mut self, path: &str, r: RawRetry) -> RetryPolicy {
        let d = RetryPolicy::default();
        let on = match &r.on {
            None => {
                RetryOn { connect_failure: true, reset: true, status_502: true, status_503: true, status_504: true }
            }
            Some(list) => {
                let mut on = RetryOn::default();
                for (i, what) in list.iter().enumerate() {
                    match what.as_str() {
                        "connect-failure" => on.connect_failure = true,
                        "reset" => on.reset = true,
                        "502" => on.status_502 = true,
                        "503" => on.status_503 = true,
                        "504" => on.status_504 = true,
                        other => self.error(
                            format!("{path}.on[{i}]"),
                            format!("unknown condition {other:?} (expected {})", RetryOn::NAMES),
                        ),
                    }
                }
                on
            }
        };
        let attempts = self.small(&format!("{path}.attempts"), r.attempts, d.attempts);
        if attempts > 10 {
            self.error(format!("{path}.attempts"), format!("at most 10 tries, got {attempts}"));
        }
        RetryPolicy {
            attempts: attempts.min(10),
            on,
            per_try_timeout: r
                .per_try_timeout
                .as_deref()
                .map(|t| self.duration(&format!("{path}.per_try_timeout"), Some(t), Duration::from_secs(1))),
            non_idempotent: r.non_idempotent.unwrap_or(false),
            buffer: match r.buffer {
                None => d.buffer,
                Some(n) if (0..=64 * 1024 * 1024).contains(&n) => n as usize,
                Some(n) => {
                    self.error(format!("{path}.buffer"), format!("must be between 0 and 67108864 bytes, got {n}"));
                    d.buffer
                }
            },
        }
    }
}

/// `"200"` or `"200-399"`, within 100..=599.
fn parse_status_range(s: &str) -> Option<(u16, u16)> {
    let (lo, hi) = match s.split_once('-') {
        Some((a, b)) => (a.trim().parse().ok()?, b.trim().parse().ok()?),
        None => {
            let n = s.trim().parse().ok()?;
            (n, n)
        }
    };
    ((100..=599).contains(&lo) && (lo..=599).contains(&hi)).then_some((lo, hi))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_ranges() {
        assert_eq!(parse_status_range("200"), Some((200, 200)));
        assert_eq!(parse_status_range("200-399"), Some((200, 399)));
        for bad in ["", "2xx", "399-200", "99", "200-600", "-"] {
            assert_eq!(parse_status_range(bad), None, "{bad}");
        }
    }

    #[test]
    fn retry_on_statuses() {
        let on = RetryOn { status_503: true, ..RetryOn::default() };
        assert!(on.status(503) && !on.status(502) && !on.status(500));
    }
}
