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

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;

use bytes::Bytes;
use http::Response;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use super::plan::{self, Plan, TryEnd};
use crate::upstream::conn::pool::SendLimits;
use crate::upstream::conn::{OutgoingHead, ResponseBody, UpstreamBody, UpstreamError, Upstreams};
use crate::upstream::instance::ms_at;
use crate::upstream::outlier::Outcome;
use crate::upstream::stats::Overflow;
use crate::upstream::{Endpoint, Pick, Protocol, Service};

/// The request as it goes upstream: its head, lent to every try, and its body.
pub struct Outgoing {
    /// Rewritten already: hop-by-hop headers gone, the gateway's own set.
    pub head: OutgoingHead,
    pub body: Body,
    /// Mark the response with the instance that answered ([`AnsweredBy`]): only
    /// the access log reads it, and an extension costs two allocations.
    pub answered_by: bool,
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

    /// The body for one try, or `None` when its streamed body was already used.
    fn body(&mut self) -> Option<UpstreamBody> {
        match &mut self.body {
            Body::Buffered(bytes) => Some(Either::Left(Full::new(bytes.clone()))),
            Body::Stream(body) => Some(Either::Right(body.take()?)),
        }
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
    /// Boxed: held across the next try, it would size every request's future.
    Response(Box<Response<ResponseBody>>),
}

/// Sends `out` (lent: a streamed body is taken from it) to `service` as `plan`
/// says. Returns the response to pass on (which may be an instance's 5xx when no
/// retry was left) or why there is none.
/// `started`: when the request arrived (its deadline runs from there); `now`: the
/// time of the call, read by the caller already. `timer`: one lent by the client's
/// connection for the tries' deadlines, reset for each: a deadline later than its
/// last one only moves its expiry (tokio re-files it in the timer wheel when the old
/// one comes), where a timer of the try's own is filed and removed every time.
#[allow(clippy::too_many_arguments)] // each is a different part of one request
pub async fn send(
    upstreams: &Upstreams,
    service: &Arc<Service>,
    how: Pick,
    plan: &Plan,
    out: &mut Outgoing,
    started: Instant,
    now: Instant,
    mut timer: Option<Pin<&mut Sleep>>,
) -> Result<Response<ResponseBody>, Failed> {
    let state = &service.state;
    let _active = Count::new(&state.local().active);
    let mut _retrying: Option<Count<'_>> = None;
    let deadline = started + plan.deadline;
    let limits = SendLimits {
        max_connections: service.policy.limits.max_connections,
        max_pending: service.policy.limits.max_pending,
        pending: &state.pending,
    };
    let mut candidates = service.candidates(how, ms_at(now.into_std()));
    // The first try starts now; later ones read the clock again.
    let mut first = Some(now);
    let mut unsent = None;
    let mut tries = 0u32;
    let mut raced = false;
    let mut last = Last::Error(UpstreamError::NoInstance);
    for endpoint in candidates.by_ref() {
        let protocol = protocol_for(endpoint, out.head.upgrade);
        let via = upstreams.client(&service.name, protocol);
        let Some(body) = unsent.take().or_else(|| out.body()) else { break };
        let now = first.take().unwrap_or_else(Instant::now);
        if now >= deadline {
            last = Last::Error(UpstreamError::Timeout);
            break;
        }
        let try_deadline = plan.per_try.map_or(deadline, |t| deadline.min(now + t));
        let Some(inflight) = endpoint.load.try_start(service.policy.limits.max_inflight) else {
            // Admitted a moment ago, full now (a concurrent request took the last slot).
            raced = true;
            unsent = Some(body);
            continue;
        };
        tries += 1;
        // Pinned where it is made: the timeout holds a pointer to it, so its state is
        // neither moved again nor boxed (an allocation and a copy per try).
        let mut sending = std::pin::pin!(upstreams.send(via, endpoint, &out.head, body, limits));
        let sent = match timer.as_mut() {
            Some(timer) => {
                timer.as_mut().reset(try_deadline);
                poll_fn(|cx| match sending.as_mut().poll(cx) {
                    Poll::Ready(sent) => Poll::Ready(Ok(sent)),
                    Poll::Pending => timer.as_mut().poll(cx).map(Err),
                })
                .await
            }
            None => tokio::time::timeout_at(try_deadline, sending).await.map_err(|_| ()),
        };
        drop(inflight);
        let end = match sent {
            Ok(Ok(mut res)) => match plan::classify(res.status(), res.headers(), plan.grpc) {
                None => {
                    service.observe(endpoint, Outcome::Success);
                    if out.answered_by {
                        res.extensions_mut().insert(AnsweredBy(endpoint.addr.clone()));
                    }
                    return Ok(res);
                }
                Some(end) => {
                    let code = if let TryEnd::Status(code) = end { code } else { 502 };
                    service.observe(endpoint, Outcome::Status(code));
                    if out.answered_by {
                        res.extensions_mut().insert(AnsweredBy(endpoint.addr.clone()));
                    }
                    last = Last::Response(Box::new(res));
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
                tracing::debug!(service = %service.name, id = %endpoint.id, addr = %endpoint.addr, after = ?(try_deadline - now), "upstream try timed out");
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
            let active = state.active();
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
        Last::Response(res) => Ok(*res),
        Last::Error(kind) => Err(Failed::Upstream(kind)),
    }
}
