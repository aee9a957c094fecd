//! The one retry loop, for every upstream kind (HTTP/1.1 and h2c over the
//! instance's own pool, HTTPS and h2 over the shared TLS clients): take the next
//! candidate, send on its connection within the try's deadline, report the
//! outcome to the service (`observe`), and ask the plan whether to go on.
//!
//! What it guarantees: each instance at most once per request (the candidates
//! iterator never repeats one); never past the request's deadline; a request
//! that reached an instance is repeated only as the plan allows and only within
//! the service's retry budget; one that reached none (connect failure) always
//! goes to the next candidate while its body is at hand.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::uri::{PathAndQuery, Scheme, Uri};
use http::{Method, Request, Response, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use tokio::time::Instant;

use super::plan::{self, Plan, TryEnd};
use crate::upstream::conn::pool::SendLimits;
use crate::upstream::conn::{UpstreamError, Upstreams, Via};
use crate::upstream::instance::now_ms;
use crate::upstream::outlier::Outcome;
use crate::upstream::stats::Overflow;
use crate::upstream::{Endpoint, Pick, Protocol, Service};

/// The request as it goes upstream, before it is aimed at an instance.
pub struct Outgoing {
    pub method: Method,
    pub path_and_query: PathAndQuery,
    /// Rewritten already: hop-by-hop headers gone, `X-Forwarded-*` added.
    pub headers: HeaderMap,
    /// The `Host` an HTTP/1.1 instance gets (HTTP/2 ones get `:authority`).
    pub host: HeaderValue,
    /// An `Upgrade` request: HTTP/1.1 to every instance.
    pub upgrade: bool,
    pub body: Body,
}

pub enum Body {
    /// Read into memory: can be sent again.
    Buffered(Bytes),
    /// The client's body, streamed; `None` once sent.
    Stream(Option<Incoming>),
}

impl Outgoing {
    fn replayable(&self) -> bool {
        !matches!(self.body, Body::Stream(None))
    }

    /// The request for one try, or `None` when its streamed body was already used.
    fn request(&mut self) -> Option<Request<crate::upstream::conn::UpstreamBody>> {
        let (body, headers) = match &mut self.body {
            Body::Buffered(bytes) => (Either::Left(Full::new(bytes.clone())), self.headers.clone()),
            // Streamed once: the headers are not needed again either.
            Body::Stream(body) => (Either::Right(body.take()?), std::mem::take(&mut self.headers)),
        };
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.headers_mut() = headers;
        Some(req)
    }
}

/// The protocol a request uses to reach `endpoint`: upgrades need HTTP/1.1.
fn protocol_for(endpoint: &Endpoint, upgrade: bool) -> Protocol {
    match (upgrade, endpoint.protocol) {
        (true, Protocol::H2c) => Protocol::Http1,
        (true, Protocol::H2) => Protocol::Https,
        (_, p) => p,
    }
}

/// Aims `req` at `endpoint`: URI form, version and `Host` for the transport `via`.
fn aim<B>(req: &mut Request<B>, out: &Outgoing, endpoint: &Endpoint, via: Via<'_>, protocol: Protocol) {
    *req.uri_mut() = match via {
        // The instance's own HTTP/1.1 connection takes the origin form.
        Via::Instance { h2: false } => Uri::from(out.path_and_query.clone()),
        Via::Instance { h2: true } | Via::Shared(_) => {
            let mut parts = http::uri::Parts::default();
            parts.scheme = Some(if matches!(via, Via::Shared(_)) { Scheme::HTTPS } else { Scheme::HTTP });
            parts.authority = Some(endpoint.authority.clone());
            parts.path_and_query = Some(out.path_and_query.clone());
            // Scheme, authority and path all present: this cannot fail.
            Uri::from_parts(parts).unwrap_or_else(|_| Uri::from(out.path_and_query.clone()))
        }
    };
    *req.version_mut() = if protocol.is_h2() { Version::HTTP_2 } else { Version::HTTP_11 };
    if protocol.is_h2() {
        // HTTP/2 carries the target in `:authority`; a `Host` that disagrees with it is
        // refused by strict servers (nginx: 400). The client's host is in X-Forwarded-Host.
        req.headers_mut().remove(header::HOST);
    } else {
        req.headers_mut().insert(header::HOST, out.host.clone());
    }
}

/// Counts one unit (an active request, a retry) until dropped.
struct Count<'a>(&'a AtomicUsize);

impl<'a> Count<'a> {
    fn new(counter: &'a AtomicUsize) -> Count<'a> {
        counter.fetch_add(1, Ordering::Relaxed);
        Count(counter)
    }
}

impl Drop for Count<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How the loop ended when it has no response to pass on.
/// Why [`send`] has no response to pass on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failed {
    Upstream(UpstreamError),
    /// The client's request body failed while it was being sent: the client's fault.
    ClientBody,
}

/// The address of the instance whose response is passed on, in the response's
/// extensions (for the access log).
#[derive(Clone)]
pub(crate) struct AnsweredBy(pub Arc<str>);

enum Last {
    Error(UpstreamError),
    /// A 502/503/504 (or gRPC UNAVAILABLE) that was not retried: passed on as is.
    Response(Response<Incoming>),
}

/// Sends `out` to `service` as `plan` says. Returns the response to pass on (which
/// may be an instance's 5xx when no retry was left) or why there is none.
pub async fn send(
    upstreams: &Upstreams,
    service: &Arc<Service>,
    how: Pick,
    plan: &Plan,
    mut out: Outgoing,
    started: Instant,
) -> Result<Response<Incoming>, Failed> {
    let state = &service.state;
    let _active = Count::new(&state.active);
    let mut _retrying: Option<Count<'_>> = None;
    let deadline = started + plan.deadline;
    let limits = SendLimits {
        max_connections: service.policy.limits.max_connections,
        max_pending: service.policy.limits.max_pending,
        pending: &state.pending,
    };
    let mut candidates = service.candidates(how, now_ms());
    let mut unsent = None;
    let mut tries = 0u32;
    let mut raced = false;
    let mut last = Last::Error(UpstreamError::NoInstance);
    for endpoint in candidates.by_ref() {
        let protocol = protocol_for(endpoint, out.upgrade);
        let via = upstreams.client(&service.name, protocol);
        let Some(mut req) = unsent.take().or_else(|| out.request()) else { break };
        aim(&mut req, &out, endpoint, via, protocol);
        let now = Instant::now();
        if now >= deadline {
            last = Last::Error(UpstreamError::Timeout);
            break;
        }
        let limit = plan.per_try.map_or(deadline - now, |t| t.min(deadline - now));
        let Some(inflight) = endpoint.load.try_start(service.policy.limits.max_inflight) else {
            // Admitted a moment ago, full now (a concurrent request took the last slot).
            raced = true;
            unsent = Some(req);
            continue;
        };
        tries += 1;
        let sent = tokio::time::timeout(limit, upstreams.send(via, endpoint, req, limits)).await;
        drop(inflight);
        let end = match sent {
            Ok(Ok(mut res)) => match plan::classify(res.status(), res.headers(), plan.grpc) {
                None => {
                    service.observe(endpoint, Outcome::Success);
                    res.extensions_mut().insert(AnsweredBy(endpoint.addr.clone()));
                    return Ok(res);
                }
                Some(end) => {
                    let code = if let TryEnd::Status(code) = end { code } else { 502 };
                    service.observe(endpoint, Outcome::Status(code));
                    res.extensions_mut().insert(AnsweredBy(endpoint.addr.clone()));
                    last = Last::Response(res);
                    end
                }
            },
            Ok(Err(e)) if e.client_body => {
                tracing::debug!(service = %service.name, "request body from the client failed: {}", e.detail);
                return Err(Failed::ClientBody);
            }
            Ok(Err(e)) if e.overloaded => {
                // The service's queue is full: refuse now rather than wait.
                state.stats.overflow(Overflow::Pending);
                last = Last::Error(UpstreamError::Overloaded);
                break;
            }
            Ok(Err(e)) => {
                tracing::debug!(service = %service.name, id = %endpoint.id, addr = %endpoint.addr, "upstream send failed: {}", e.detail);
                unsent = e.unsent;
                let (outcome, kind, end) = if e.connect {
                    (Outcome::ConnectFailure, UpstreamError::Connect, TryEnd::ConnectFailure)
                } else if e.closed {
                    (Outcome::Reset, UpstreamError::Protocol, TryEnd::Closed)
                } else {
                    (Outcome::Reset, UpstreamError::Protocol, TryEnd::Reset)
                };
                service.observe(endpoint, outcome);
                state.stats.error(kind);
                last = Last::Error(kind);
                end
            }
            Err(_) => {
                tracing::debug!(service = %service.name, id = %endpoint.id, addr = %endpoint.addr, ?limit, "upstream try timed out");
                service.observe(endpoint, Outcome::Timeout);
                state.stats.error(UpstreamError::Timeout);
                last = Last::Error(UpstreamError::Timeout);
                TryEnd::Timeout
            }
        };
        let replayable = unsent.is_some() || out.replayable();
        let Some(reason) = plan::retry_reason(plan, tries, end, replayable) else { break };
        if plan::budgeted(end) && _retrying.is_none() {
            // A retry of a request that reached an instance adds load: only within budget.
            // Check and take a slot in one step, so concurrent requests cannot overshoot it.
            let active = state.active.load(Ordering::Relaxed);
            let budget = &service.policy.retry_budget;
            let taken = state.retrying.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |retrying| {
                plan::budget_allows(active, retrying, budget).then_some(retrying + 1)
            });
            if taken.is_err() {
                state.stats.budget_exhausted();
                break;
            }
            _retrying = Some(Count(&state.retrying));
        }
        state.stats.retry(reason);
    }
    if tries == 0 && (candidates.overloaded() || raced) {
        state.stats.overflow(Overflow::Inflight);
        return Err(Failed::Upstream(UpstreamError::Overloaded));
    }
    match last {
        Last::Response(res) => Ok(res),
        Last::Error(kind) => Err(Failed::Upstream(kind)),
    }
}
