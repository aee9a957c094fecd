//! The L7 proxy's request path, in named phases: route (one table `load()`, the
//! matching route and service) → plan (`plan`: deadline, retry policy, body
//! buffering) → rewrite (hop-by-hop headers, `Host`, `X-Forwarded-*`) → send
//! (`send`: the one retry loop over the service's candidates) → finish (the
//! response or the gateway's own error, counted). Bodies (and gRPC trailers)
//! stream both ways unless kept for a retry. gRPC requests get gRPC-shaped errors
//! and honour `grpc-timeout`; `Upgrade` requests are relayed after the 101.

use std::future::{ready, Future};
use std::net::SocketAddr;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future;
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Either, Empty};
use hyper::body::{Body as _, Incoming};
use hyper::upgrade::OnUpgrade;
use tokio::time::Sleep;

use super::access_log::{AccessLog, Entry};
use super::admit::Admission;
use super::grpc;
use super::headers::{forwarded_for, strip_hop_by_hop};
use super::plan;
use super::present::Present;
use super::request_id::{self, X_REQUEST_ID};
use super::respond::{self, ProxyBody};
use super::route::{request_host, RequestView, Router, Target};
use super::send::{self, AnsweredBy, Body, Failed, Outgoing};
use super::upgrade::{self, Upgrades};
use crate::config::{Config, Route};
use crate::metrics as m;
use crate::upstream::conn::{OutgoingHead, ResponseBody, UpstreamError, Upstreams};
use crate::upstream::stats::{intern, RequestLabels, ServiceStats};
use crate::upstream::table::Pinned;
use crate::upstream::{Pick, SharedTable};

pub struct HttpProxy {
    router: Router,
    table: SharedTable,
    upstreams: Arc<Upstreams>,
    request_timeout: Duration,
    /// `http` or `https`, for `X-Forwarded-Proto`.
    proto: &'static str,
    refused_absolute: metrics::Counter,
    upgrades: Upgrades,
    /// Loop, tunnel and canonical-request checks before routing.
    admit: Admission,
    /// The `listener` label of every request this proxy answers.
    listener: &'static str,
    /// Where requests refused before routing or without a route are counted (`service=""`).
    unrouted: Arc<ServiceStats>,
    /// Off unless the listener configures one.
    access_log: Option<AccessLog>,
}

/// A client request's body, as the request path takes it: hyper's, or none at
/// all (the gateway's own HTTP/1.1 server takes only requests without one).
pub trait RequestBody: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static {
    /// The body to send upstream, as it is (not read into memory). An empty one
    /// is sent as an empty buffered body: as resendable, and never read.
    fn into_outgoing(self) -> Body;
}

impl RequestBody for Incoming {
    fn into_outgoing(self) -> Body {
        if self.is_end_stream() {
            Body::Buffered(Bytes::new())
        } else {
            Body::Stream(Some(self))
        }
    }
}

impl RequestBody for Empty<Bytes> {
    fn into_outgoing(self) -> Body {
        Body::Buffered(Bytes::new())
    }
}

/// Who sent a request, and what writes its response.
#[derive(Clone, Copy)]
pub struct Client<'a> {
    pub addr: SocketAddr,
    /// [`client_value`](super::headers::client_value) of `addr`'s IP, made once per connection.
    pub ip: &'a HeaderValue,
    /// The response is written by the gateway's own HTTP/1.1 server, which also
    /// writes the header lines an HTTP/1.1 instance's response carries as bytes
    /// ([`respond::raw_headers`]); hyper's servers write only the map.
    pub raw_response: bool,
}

/// What the access log needs of a request, taken before it is rewritten and sent.
struct Requested {
    method: http::Method,
    uri: http::Uri,
    version: Version,
    host: String,
    referer: Option<HeaderValue>,
    user_agent: Option<HeaderValue>,
}

impl Requested {
    fn of<B>(req: &Request<B>) -> Requested {
        Requested {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            host: request_host(req.uri(), req.headers().get(header::HOST)).to_string(),
            referer: req.headers().get(header::REFERER).cloned(),
            user_agent: req.headers().get(header::USER_AGENT).cloned(),
        }
    }
}

fn header_text(value: &Option<HeaderValue>) -> &str {
    value.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("")
}

impl HttpProxy {
    pub fn new(
        listener: &str,
        routes: &[Route],
        tls: bool,
        table: SharedTable,
        upstreams: Arc<Upstreams>,
        upgrades: Upgrades,
        config: &Config,
    ) -> HttpProxy {
        let router = Router::new(routes);
        let normalize_path = config.listeners.iter().find(|l| l.name == listener).is_none_or(|l| l.normalize_path);
        let admit = Admission::new(listener, &router, normalize_path);
        HttpProxy {
            admit,
            router,
            table,
            upstreams,
            request_timeout: config.timeouts.request,
            proto: if tls { "https" } else { "http" },
            refused_absolute: metrics::counter!(m::BAD_REQUESTS, "listener" => listener.to_string(), "reason" => "absolute_form_foreign_host"),
            upgrades,
            listener: intern(listener),
            unrouted: ServiceStats::of(""),
            access_log: None,
        }
    }

    pub fn with_access_log(mut self, log: Option<AccessLog>) -> HttpProxy {
        self.access_log = log;
        self
    }

    /// Serves one request: its `x-request-id` (made when absent) goes upstream
    /// and back to the client, and the access log, when on, gets its line.
    /// `timer`: the connection's, lent for the request's upstream deadlines
    /// ([`send::send`]); without one, each try arms a timer of its own.
    ///
    /// Not an `async fn`: routing, planning and rewriting do not wait, so they run
    /// here, and the future returned holds only what the exchange needs (the
    /// rewritten request, lent to it), not also the request they started from —
    /// the future is moved into a box for every request, and into a task of its
    /// own for every HTTP/2 stream. `this`: the proxy, lent or shared (an `Arc`,
    /// for a future that outlives the caller's borrow); `client` is read here only.
    pub fn handle<'a, P, B>(
        this: P,
        mut req: Request<B>,
        client: Client<'_>,
        timer: Option<Pin<&'a mut Sleep>>,
    ) -> impl Future<Output = Response<ProxyBody>> + Send + use<'a, P, B>
    where
        P: Deref<Target = HttpProxy> + Send + 'a,
        B: RequestBody,
    {
        let start = Instant::now();
        let present = Present::of(req.headers());
        let (id, made) = request_id::ensure(req.headers_mut(), present.has(Present::REQUEST_ID));
        // Boxed: held across the request, it would size every request's future.
        let requested = this.access_log.as_ref().map(|_| Box::new(Requested::of(&req)));
        let addr = client.addr;
        match this.prepare(req, start, present, client, made.then(|| id.clone())) {
            Err(answer) => future::Either::Left(ready(this.reply(answer, None, id, requested, addr, start))),
            Ok(mut prepared) => future::Either::Right(async move {
                // `prepared` is lent, not moved: a move would keep a second copy in this future.
                let res = this.exchange(&mut prepared, start, timer).await;
                this.reply(res, Some(&prepared.sending.service.name), id, requested, addr, start)
            }),
        }
    }

    /// The access log's line, when on, and the `x-request-id` on the response.
    fn reply(
        &self,
        mut res: Response<ProxyBody>,
        service: Option<&str>,
        id: HeaderValue,
        requested: Option<Box<Requested>>,
        addr: SocketAddr,
        start: Instant,
    ) -> Response<ProxyBody> {
        if let (Some(log), Some(r)) = (&self.access_log, requested) {
            let upstream = res.extensions().get::<AnsweredBy>().map(|a| a.0.clone());
            log.record(&Entry {
                client: addr,
                method: r.method.as_str(),
                host: &r.host,
                target: r.uri.path_and_query().map_or("/", |p| p.as_str()),
                version: r.version,
                status: res.status().as_u16(),
                bytes: res
                    .headers()
                    .get(header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok()?.parse().ok())
                    .or_else(|| respond::raw_headers(res.body())?.content_length),
                duration: start.elapsed(),
                service: service.unwrap_or(""),
                upstream: upstream.as_deref().unwrap_or(""),
                request_id: id.to_str().unwrap_or(""),
                referer: header_text(&r.referer),
                user_agent: header_text(&r.user_agent),
            });
        }
        match respond::raw_headers_mut(res.body_mut()) {
            // The upstream's own x-request-id was dropped with the lines kept as bytes.
            Some(raw) => raw.request_id = Some(id),
            None => drop(res.headers_mut().insert(X_REQUEST_ID.clone(), id)),
        }
        res
    }

    /// The prepared request's body read into memory when its plan keeps it for a
    /// retry, then sent (the one retry loop) and finished. `start` is when the
    /// request head arrived.
    async fn exchange(
        &self,
        prepared: &mut Prepared,
        start: Instant,
        timer: Option<Pin<&mut Sleep>>,
    ) -> Response<ProxyBody> {
        let Prepared { sending, out } = prepared;
        if sending.plan.buffer_body && matches!(out.body, Body::Stream(Some(_))) {
            // Boxed: a rare path, kept out of the state of every request's future.
            if let Err(answer) = Box::pin(self.buffer(&mut out.body, sending, start)).await {
                return answer;
            }
        }
        let sent_at = Instant::now();
        let sent = send::send(
            &self.upstreams,
            &sending.service.0,
            sending.how,
            &sending.plan,
            out,
            start.into(),
            sent_at.into(),
            timer,
        )
        .await;
        self.finish(sending, sent, start, sent_at)
    }

    /// Routing, planning and the rewritten head, or the gateway's own answer.
    // Both sides are large and made once per request: boxing the answer would
    // only add an allocation to the refusals.
    #[allow(clippy::result_large_err)]
    fn prepare<B: RequestBody>(
        &self,
        mut req: Request<B>,
        start: Instant,
        present: Present,
        client: Client<'_>,
        request_id: Option<HeaderValue>,
    ) -> Result<Prepared, Response<ProxyBody>> {
        let is_grpc = present.has(Present::CONTENT_TYPE) && grpc::is_grpc(req.headers());
        let labels = RequestLabels::new(self.listener, req.method(), req.version(), is_grpc);
        if let Some(refused) = self.admit.check(&mut req, present, is_grpc) {
            return Err(answered(&self.unrouted, &labels, start, refused));
        }
        let client_version = req.version();
        let on_relay = req.extensions_mut().remove::<upgrade::RelayHook>();
        // Looked up once: for routing here, and as the `Host` sent upstream.
        let sent_host = req.headers().get(header::HOST).cloned();
        let host = request_host(req.uri(), sent_host.as_ref());
        let absolute_form = req.version() < Version::HTTP_2 && req.uri().scheme().is_some();
        let view = RequestView {
            host,
            path: req.uri().path(),
            query: req.uri().query(),
            headers: req.headers(),
            client_ip: client.addr.ip(),
        };
        let target = self.router.route(&view);
        if let Some(refused) = self.admit.connect(req.method(), target.as_ref(), is_grpc) {
            return Err(answered(&self.unrouted, &labels, start, refused));
        }
        let Some(target) = target else {
            return Err(answered(&self.unrouted, &labels, start, respond::no_route(is_grpc)));
        };
        let table = self.table.load();
        let held = match (table.held(target.service()), &target) {
            (Some(s), _) => s,
            (None, Target::Host(_)) => {
                return Err(answered(&self.unrouted, &labels, start, respond::no_route(is_grpc)))
            }
            (None, Target::Route(_)) => {
                // A routed service that never had an instance: counted under its name.
                let stats = ServiceStats::of(target.service());
                stats.error(UpstreamError::NoInstance);
                let res = respond::upstream_error(UpstreamError::NoInstance, target.service(), is_grpc);
                return Err(answered(&stats, &labels, start, res));
            }
        };
        // Absolute-form names the host to reach; only hosts this listener serves are accepted,
        // so the gateway never acts as an open forward proxy.
        if absolute_form && !(self.router.serves_host(host) || matches!(target, Target::Host(_))) {
            self.refused_absolute.increment(1);
            let res = respond::refused(
                StatusCode::FORBIDDEN,
                "absolute-form request for a host this gateway does not serve\n",
                is_grpc,
            );
            return Err(answered(&held.service.state.stats, &labels, start, res));
        }
        // Plan: deadline, retry policy, whether the body is kept for a retry.
        let route = match &target {
            Target::Route(r) => Some(&r.route),
            Target::Host(_) => None,
        };
        let how = target.pick(&view);
        let service = held.local();
        let path_and_query = match target.upstream_path(view.path) {
            // The whole path: nothing was stripped. (A prefix without a trailing `/`
            // leaves a borrowed rest that is shorter: "/api" of "/api/x" is "/x".)
            std::borrow::Cow::Borrowed(p) if p.len() == view.path.len() => req.uri().path_and_query().cloned(),
            p => {
                let full = match view.query {
                    Some(q) => format!("{p}?{q}"),
                    None => p.into_owned(),
                };
                PathAndQuery::try_from(full).ok()
            }
        };
        drop(table);
        // An upgrade needs HTTP/1.1 on both sides: its pool is chosen for that, whatever the metadata.
        let upgrade = if req.version() == Version::HTTP_11 && present.has(Present::UPGRADE) {
            upgrade::requested(req.headers())
        } else {
            None
        };
        let body_upper = if req.body().is_end_stream() { Some(0) } else { req.body().size_hint().upper() };
        let plan = plan::plan(
            req.method(),
            req.headers(),
            is_grpc,
            body_upper,
            route.and_then(|r| r.retry.as_ref()),
            route.and_then(|r| r.timeout).unwrap_or(self.request_timeout),
            upgrade.is_some(),
        );

        // Rewrite: hop-by-hop headers, Host, X-Forwarded-*.
        let on_client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
        let (parts, body) = req.into_parts();
        let mut headers = parts.headers;
        if present.has(Present::HOP_BY_HOP) {
            strip_hop_by_hop(&mut headers);
        }
        if let Some(protocol) = &upgrade {
            upgrade::restore(&mut headers, protocol.clone());
        }
        // HTTP/2 clients name the host in `:authority`; an HTTP/1.0 client may name none.
        // A `Connection` header may have named `Host`: then it is gone from the map.
        let host_sent =
            sent_host.is_some() && (!present.has(Present::HOP_BY_HOP) || headers.contains_key(header::HOST));
        let host = match sent_host {
            Some(h) if host_sent => h,
            _ => (parts.uri.authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()))
                .unwrap_or_else(|| HeaderValue::from_static("localhost")),
        };
        let forwarded_for = forwarded_for(&headers, present.has(Present::FORWARDED_FOR), client.ip);
        let head = OutgoingHead {
            method: parts.method,
            path_and_query: path_and_query.unwrap_or_else(|| PathAndQuery::from_static("/")),
            headers,
            host,
            forwarded_for,
            forwarded_proto: self.proto,
            via: self.admit.via(client_version),
            request_id,
            host_sent,
            upgrade: upgrade.is_some(),
            // gRPC's status is read from the response's map (retries, errors).
            raw_response: client.raw_response && upgrade.is_none() && !is_grpc,
        };
        let sending = Sending {
            plan,
            how,
            service,
            labels,
            is_grpc,
            client_version,
            upgrade: on_client_upgrade.map(|on_client| (on_client, on_relay)),
        };
        let out = Outgoing { head, body: body.into_outgoing(), answered_by: self.access_log.is_some() };
        Ok(Prepared { sending, out })
    }

    /// The request body read into memory (for a retry), within the request's deadline.
    async fn buffer(&self, body: &mut Body, s: &Sending, start: Instant) -> Result<(), Response<ProxyBody>> {
        let Body::Stream(Some(streamed)) = body else { return Ok(()) };
        match tokio::time::timeout(s.plan.deadline, streamed.collect()).await {
            Ok(Ok(collected)) => {
                *body = Body::Buffered(collected.to_bytes());
                Ok(())
            }
            Ok(Err(_)) => Err(answered(&s.service.state.stats, &s.labels, start, self.admit.malformed_body(s.is_grpc))),
            Err(_) => {
                let res =
                    respond::refused(StatusCode::REQUEST_TIMEOUT, "request body not received in time\n", s.is_grpc);
                Err(answered(&s.service.state.stats, &s.labels, start, res))
            }
        }
    }

    /// The response passed on (an upgrade relayed), or the gateway's own answer; counted.
    fn finish(
        &self,
        s: &mut Sending,
        sent: Result<Response<ResponseBody>, Failed>,
        start: Instant,
        sent_at: Instant,
    ) -> Response<ProxyBody> {
        let state = &s.service.state;
        match sent {
            Ok(mut res) => {
                let upgraded = match s.upgrade.take() {
                    Some((on_client, on_relay)) if res.status() == StatusCode::SWITCHING_PROTOCOLS => {
                        let protocol = res.headers().get(header::UPGRADE).cloned();
                        self.upgrades.relay(on_client, hyper::upgrade::on(&mut res), on_relay);
                        protocol
                    }
                    _ => None,
                };
                if respond::may_hold_hop_by_hop(res.body()) {
                    strip_hop_by_hop(res.headers_mut());
                }
                if let Some(protocol) = upgraded {
                    upgrade::restore(res.headers_mut(), protocol);
                }
                let mut res = res.map(Either::Left);
                self.own_response(&mut res, s.client_version);
                // From the first send to the response head, retries included.
                let now = Instant::now();
                let (seconds, upstream) = ((now - start).as_secs_f64(), (now - sent_at).as_secs_f64());
                state.stats.proxied(&s.labels, res.status(), seconds, upstream);
                res
            }
            Err(Failed::ClientBody) => answered(&state.stats, &s.labels, start, self.admit.malformed_body(s.is_grpc)),
            Err(Failed::Upstream(failure)) => {
                if matches!(failure, UpstreamError::NoInstance | UpstreamError::Overloaded) {
                    state.stats.error(failure);
                }
                let res = respond::upstream_error(failure, &s.service.name, s.is_grpc);
                answered(&state.stats, &s.labels, start, res)
            }
        }
    }
}

/// A request routed, planned and rewritten: what is sent, and what sending it
/// and finishing need.
struct Prepared {
    sending: Sending,
    out: Outgoing,
}

/// What sending a prepared request and finishing it need.
struct Sending {
    plan: plan::Plan,
    how: Pick,
    /// This core's reference to the service (`upstream::table::Held`).
    service: Arc<Pinned>,
    labels: RequestLabels,
    is_grpc: bool,
    client_version: Version,
    /// An upgrade request: the client side's upgrade and the relay's hook.
    upgrade: Option<(OnUpgrade, Option<upgrade::RelayHook>)>,
}

impl HttpProxy {
    /// A backend's response as the gateway's own: the client's protocol version
    /// (an HTTP/1.0 backend's status line is not passed on; RFC 9110 §6.2) and a `Via`.
    fn own_response(&self, res: &mut Response<ProxyBody>, client_version: Version) {
        let via = self.admit.via(res.version());
        match respond::raw_headers_mut(res.body_mut()) {
            // After the upstream's own `Via` lines, kept as bytes with the others.
            Some(raw) => raw.via = Some(via),
            None => {
                res.headers_mut().append(header::VIA, via);
            }
        }
        if client_version < Version::HTTP_2 {
            *res.version_mut() = Version::HTTP_11;
        }
    }
}

/// Counts an answer (the gateway's own, or refused before an upstream answered), then returns it.
fn answered(
    stats: &ServiceStats,
    labels: &RequestLabels,
    start: Instant,
    res: Response<ProxyBody>,
) -> Response<ProxyBody> {
    stats.response(labels, res.status(), start.elapsed().as_secs_f64());
    res
}
