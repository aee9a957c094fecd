//! Planning a request's trip upstream, pure: its deadline, which retry policy
//! applies, whether its body can be sent twice, and — after each try — whether
//! and why to try again. No I/O and no clock: `send` does those and asks here.

use std::time::Duration;

use http::{HeaderMap, Method, StatusCode};

use super::grpc;
use crate::config::{RetryBudget, RetryPolicy};
use crate::upstream::stats::RetryReason;

/// What is decided about a request before its first try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// From the first try to the last response head, all tries together.
    pub deadline: Duration,
    /// Each try's own deadline, never past `deadline`.
    pub per_try: Option<Duration>,
    /// Tries in all when the request may be retried after being sent; connect
    /// failures are retried regardless (nothing was sent).
    pub attempts: u32,
    pub retry: RetryPolicy,
    /// Whether a try that reached the instance may be repeated at all
    /// (idempotent method or allowed by the route, and not an upgrade).
    pub retry_after_send: bool,
    /// Read the body into memory (it is at most `retry.buffer` bytes) so that a
    /// retry can send it again; otherwise it is streamed once.
    pub buffer_body: bool,
    pub grpc: bool,
}

/// RFC 9110 §9.2.2: a repeat has the same effect as one request.
pub fn is_idempotent(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE)
}

/// Plans one request. `grpc`: [`grpc::is_grpc`] of its headers; `body_upper` is
/// the body's size bound when known (0 for no body); `timeout` is the route's
/// (or the global) request timeout.
pub fn plan(
    method: &Method,
    headers: &HeaderMap,
    grpc: bool,
    body_upper: Option<u64>,
    retry: Option<&RetryPolicy>,
    timeout: Duration,
    upgrade: bool,
) -> Plan {
    let deadline = if grpc { grpc::request_timeout(headers, timeout) } else { timeout };
    let retry = retry.cloned().unwrap_or_default();
    let buffer_body = body_upper.is_some_and(|n| n <= retry.buffer as u64);
    let retry_after_send = !upgrade && (retry.non_idempotent || is_idempotent(method)) && buffer_body;
    Plan {
        deadline,
        per_try: retry.per_try_timeout.map(|t| t.min(deadline)),
        attempts: retry.attempts.max(1),
        retry,
        retry_after_send,
        buffer_body,
        grpc,
    }
}

/// How one try ended, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryEnd {
    /// Nothing was sent: refused, unreachable, connect timeout, TLS handshake.
    ConnectFailure,
    /// The connection broke after (part of) the request went out, before a response head.
    Reset,
    /// The instance closed the connection before any response byte (it died, or
    /// closed a keep-alive connection as the request went out). Retried like a
    /// reset, but outside the retry budget, as HTTP clients retry a stale
    /// keep-alive connection (Go's net/http, hyper's pool): it adds no load, it
    /// moves the requests of an instance that is gone, once.
    Closed,
    /// The try's own deadline passed without a response head.
    Timeout,
    /// A response head with this status (gRPC: `Status(503)` stands for a
    /// trailers-only UNAVAILABLE).
    Status(u16),
}

/// What a response head says: `None` for an answer to pass on, or the failure
/// it stands for (502/503/504; gRPC: trailers-only UNAVAILABLE, before any body byte).
pub fn classify(status: StatusCode, headers: &HeaderMap, grpc: bool) -> Option<TryEnd> {
    if grpc {
        let unavailable = status == StatusCode::OK
            && headers
                .get(&grpc::GRPC_STATUS)
                .is_some_and(|v| v.as_bytes() == grpc::Code::Unavailable.as_header().as_bytes());
        return unavailable.then_some(TryEnd::Status(503));
    }
    matches!(status.as_u16(), 502..=504).then_some(TryEnd::Status(status.as_u16()))
}

/// Whether to try again after a try that ended so, and under which reason.
/// `tries` counts the tries made so far (1 after the first); `replayable`: the
/// request (with its body) can still be sent.
pub fn retry_reason(plan: &Plan, tries: u32, end: TryEnd, replayable: bool) -> Option<RetryReason> {
    if !replayable {
        return None;
    }
    if end == TryEnd::ConnectFailure {
        // Nothing reached the instance: always another one, however many tries.
        return Some(RetryReason::ConnectFailure);
    }
    if !plan.retry_after_send || tries >= plan.attempts {
        return None;
    }
    let on = &plan.retry.on;
    match end {
        TryEnd::ConnectFailure => Some(RetryReason::ConnectFailure),
        TryEnd::Reset | TryEnd::Closed if on.reset => Some(RetryReason::Reset),
        TryEnd::Timeout if on.status_504 => Some(RetryReason::Timeout),
        TryEnd::Status(503) if plan.grpc && on.status_503 => Some(RetryReason::GrpcUnavailable),
        TryEnd::Status(s) if on.status(s) => Some(match s {
            502 => RetryReason::Status502,
            503 => RetryReason::Status503,
            _ => RetryReason::Status504,
        }),
        _ => None,
    }
}

/// Whether a retry after this end spends the retry budget.
pub fn budgeted(end: TryEnd) -> bool {
    !matches!(end, TryEnd::ConnectFailure | TryEnd::Closed)
}

/// The retry budget: with `active` requests of a service in flight, of which
/// `retrying` are retries, may one more retry start?
pub fn budget_allows(active: usize, retrying: usize, budget: &RetryBudget) -> bool {
    let allowed = (active * budget.percent as usize / 100).max(budget.min_concurrency);
    retrying < allowed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RetryOn;
    use http::HeaderValue;

    fn get() -> Plan {
        plan(&Method::GET, &HeaderMap::new(), false, Some(0), None, Duration::from_secs(30), false)
    }

    #[test]
    fn default_plan_retries_resets_of_idempotent_requests_once() {
        let p = get();
        assert_eq!((p.attempts, p.retry_after_send, p.buffer_body), (2, true, true));
        assert_eq!(retry_reason(&p, 1, TryEnd::Reset, true), Some(RetryReason::Reset));
        assert_eq!(retry_reason(&p, 2, TryEnd::Reset, true), None, "attempts spent");
        assert_eq!(retry_reason(&p, 1, TryEnd::Status(503), true), None, "503 is opt-in");
        assert_eq!(retry_reason(&p, 1, TryEnd::Timeout, true), None);
    }

    #[test]
    fn closed_connections_retry_like_resets_outside_the_budget() {
        let p = get();
        assert_eq!(retry_reason(&p, 1, TryEnd::Closed, true), Some(RetryReason::Reset));
        assert_eq!(retry_reason(&p, 2, TryEnd::Closed, true), None);
        assert!(!budgeted(TryEnd::Closed) && !budgeted(TryEnd::ConnectFailure));
        assert!(budgeted(TryEnd::Reset) && budgeted(TryEnd::Status(503)) && budgeted(TryEnd::Timeout));
    }

    #[test]
    fn connect_failures_always_retry_while_the_request_is_at_hand() {
        let post = plan(&Method::POST, &HeaderMap::new(), false, None, None, Duration::from_secs(1), false);
        assert!(!post.retry_after_send);
        assert_eq!(retry_reason(&post, 9, TryEnd::ConnectFailure, true), Some(RetryReason::ConnectFailure));
        assert_eq!(retry_reason(&post, 1, TryEnd::ConnectFailure, false), None, "the body is gone");
        assert_eq!(retry_reason(&post, 1, TryEnd::Reset, true), None, "POST is not idempotent");
    }

    #[test]
    fn non_idempotent_needs_the_route_to_say_so() {
        let r = RetryPolicy { non_idempotent: true, ..RetryPolicy::default() };
        let p = plan(&Method::POST, &HeaderMap::new(), false, Some(10), Some(&r), Duration::from_secs(1), false);
        assert_eq!(retry_reason(&p, 1, TryEnd::Reset, true), Some(RetryReason::Reset));
    }

    #[test]
    fn bodies_over_the_buffer_are_not_retried_after_send() {
        let p = plan(&Method::PUT, &HeaderMap::new(), false, Some(64 * 1024 + 1), None, Duration::from_secs(1), false);
        assert!(!p.buffer_body && !p.retry_after_send);
        let p = plan(&Method::PUT, &HeaderMap::new(), false, None, None, Duration::from_secs(1), false);
        assert!(!p.buffer_body, "unknown length (chunked) streams");
        let p = plan(&Method::PUT, &HeaderMap::new(), false, Some(64 * 1024), None, Duration::from_secs(1), false);
        assert!(p.buffer_body && p.retry_after_send);
    }

    #[test]
    fn route_policy_statuses_and_timeouts() {
        let r = RetryPolicy {
            attempts: 3,
            on: RetryOn { status_503: true, status_504: true, ..RetryOn::default() },
            per_try_timeout: Some(Duration::from_millis(200)),
            ..RetryPolicy::default()
        };
        let p = plan(&Method::GET, &HeaderMap::new(), false, Some(0), Some(&r), Duration::from_millis(100), false);
        assert_eq!(p.per_try, Some(Duration::from_millis(100)), "never past the deadline");
        assert_eq!(retry_reason(&p, 1, TryEnd::Status(503), true), Some(RetryReason::Status503));
        assert_eq!(retry_reason(&p, 2, TryEnd::Timeout, true), Some(RetryReason::Timeout));
        assert_eq!(retry_reason(&p, 3, TryEnd::Status(503), true), None);
        assert_eq!(retry_reason(&p, 1, TryEnd::Status(502), true), None);
        assert_eq!(retry_reason(&p, 1, TryEnd::Reset, true), None);
    }

    #[test]
    fn upgrades_are_not_retried_after_send() {
        let p = plan(&Method::GET, &HeaderMap::new(), false, Some(0), None, Duration::from_secs(1), true);
        assert!(!p.retry_after_send);
    }

    #[test]
    fn grpc_retries_only_unavailable_before_the_body() {
        let mut h = HeaderMap::new();
        h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        h.insert(&grpc::GRPC_TIMEOUT, HeaderValue::from_static("500m"));
        let r = RetryPolicy { on: RetryOn { status_503: true, ..RetryOn::default() }, ..RetryPolicy::default() };
        let p = plan(
            &Method::POST,
            &h,
            grpc::is_grpc(&h),
            Some(12),
            Some(&RetryPolicy { non_idempotent: true, ..r }),
            Duration::from_secs(30),
            false,
        );
        assert!(p.grpc);
        assert_eq!(p.deadline, Duration::from_millis(500));
        let mut res = HeaderMap::new();
        assert_eq!(classify(StatusCode::OK, &res, true), None);
        res.insert(&grpc::GRPC_STATUS, HeaderValue::from_static("14"));
        let end = classify(StatusCode::OK, &res, true).expect("unavailable");
        assert_eq!(retry_reason(&p, 1, end, true), Some(RetryReason::GrpcUnavailable));
        res.insert(&grpc::GRPC_STATUS, HeaderValue::from_static("13"));
        assert_eq!(classify(StatusCode::OK, &res, true), None, "INTERNAL is an answer");
    }

    #[test]
    fn classify_http_statuses() {
        let h = HeaderMap::new();
        assert_eq!(classify(StatusCode::SERVICE_UNAVAILABLE, &h, false), Some(TryEnd::Status(503)));
        assert_eq!(classify(StatusCode::INTERNAL_SERVER_ERROR, &h, false), None);
        assert_eq!(classify(StatusCode::OK, &h, false), None);
    }

    #[test]
    fn budget_is_a_share_of_active_requests_with_a_floor() {
        let b = RetryBudget::default();
        assert!(budget_allows(1, 2, &b));
        assert!(!budget_allows(1, 3, &b), "at least 3 at once, no more");
        assert!(budget_allows(100, 19, &b));
        assert!(!budget_allows(100, 20, &b), "20 % of 100");
        assert!(!budget_allows(0, 0, &RetryBudget { percent: 0, min_concurrency: 0 }));
    }
}
