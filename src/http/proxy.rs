//! The L7 proxy: one hyper server per connection (HTTP/1.1 and h2c on the same
//! port, or behind TLS), and the request path: route → one table `load()` → pick
//! → forward over a pooled upstream connection, streaming bodies (and gRPC
//! trailers) both ways. gRPC requests get gRPC-shaped errors and honour
//! `grpc-timeout`; `Upgrade` requests are relayed after the 101 (see `upgrade`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{self, HeaderValue};
use http::uri::{PathAndQuery, Scheme, Uri};
use http::{Request, Response, StatusCode, Version};
use http_body_util::Either;
use hyper::body::Incoming;

use super::access_log::{AccessLog, Entry};
use super::grpc;
use super::headers::{add_forwarded, strip_hop_by_hop};
use super::request_id::{self, X_REQUEST_ID};
use super::respond::{self, ProxyBody};
use super::route::{request_host, RequestView, Router, Target};
use super::upgrade::{self, Upgrades};
use crate::config::{Config, Route};
use crate::metrics as m;
use crate::upstream::conn::pool::PoolError;
use crate::upstream::conn::{UpstreamError, Upstreams, Via};
use crate::upstream::{Endpoint, Protocol, SharedTable};

pub struct HttpProxy {
    router: Router,
    table: SharedTable,
    upstreams: Arc<Upstreams>,
    request_timeout: Duration,
    /// `http` or `https`, for `X-Forwarded-Proto`.
    proto: &'static str,
    refused_absolute: metrics::Counter,
    upgrades: Upgrades,
    /// Off unless the listener configures one.
    access_log: Option<AccessLog>,
}

/// What the access log needs of a request, taken before it is rewritten and sent.
struct Requested {
    method: http::Method,
    uri: Uri,
    version: Version,
    host: String,
    referer: Option<HeaderValue>,
    user_agent: Option<HeaderValue>,
}

impl Requested {
    fn of(req: &Request<Incoming>) -> Requested {
        Requested {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            host: request_host(req.uri(), req.headers()).to_string(),
            referer: req.headers().get(header::REFERER).cloned(),
            user_agent: req.headers().get(header::USER_AGENT).cloned(),
        }
    }
}

fn header_text(value: &Option<HeaderValue>) -> &str {
    value.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// Where a request went, for the access log.
#[derive(Default)]
struct Outcome {
    service: Option<Arc<str>>,
    upstream: Option<Arc<str>>,
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
        HttpProxy {
            router: Router::new(routes),
            table,
            upstreams,
            request_timeout: config.timeouts.request,
            proto: if tls { "https" } else { "http" },
            refused_absolute: metrics::counter!(m::BAD_REQUESTS, "listener" => listener.to_string(), "reason" => "absolute_form_foreign_host"),
            upgrades,
            access_log: None,
        }
    }

    pub fn with_access_log(mut self, log: Option<AccessLog>) -> HttpProxy {
        self.access_log = log;
        self
    }

    /// Serves one request: its `x-request-id` (made when absent) goes upstream
    /// and back to the client, and the access log, when on, gets its line.
    pub async fn handle(
        &self,
        mut req: Request<Incoming>,
        client: SocketAddr,
        client_ip: &HeaderValue,
    ) -> Response<ProxyBody> {
        let start = Instant::now();
        let id = request_id::ensure(req.headers_mut());
        // What the log line needs of the request, taken before it is rewritten and sent.
        let requested = self.access_log.as_ref().map(|_| Requested::of(&req));
        let mut outcome = Outcome::default();
        let mut res = self.forward(req, client, client_ip, &mut outcome).await;
        if let (Some(log), Some(r)) = (&self.access_log, requested) {
            log.record(&Entry {
                client,
                method: r.method.as_str(),
                host: &r.host,
                target: r.uri.path_and_query().map_or("/", |p| p.as_str()),
                version: r.version,
                status: res.status().as_u16(),
                bytes: res.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok()),
                duration: start.elapsed(),
                service: outcome.service.as_deref().unwrap_or(""),
                upstream: outcome.upstream.as_deref().unwrap_or(""),
                request_id: id.to_str().unwrap_or(""),
                referer: header_text(&r.referer),
                user_agent: header_text(&r.user_agent),
            });
        }
        res.headers_mut().insert(X_REQUEST_ID.clone(), id);
        res
    }

    /// `client_ip` is [`client_value`] of `client`, made once per connection.
    async fn forward(
        &self,
        mut req: Request<Incoming>,
        client: SocketAddr,
        client_ip: &HeaderValue,
        outcome: &mut Outcome,
    ) -> Response<ProxyBody> {
        let start = Instant::now();
        let is_grpc = grpc::is_grpc(req.headers());
        let host = request_host(req.uri(), req.headers());
        let absolute_form = req.version() < Version::HTTP_2 && req.uri().scheme().is_some();
        let view = RequestView {
            host,
            path: req.uri().path(),
            query: req.uri().query(),
            headers: req.headers(),
            client_ip: client.ip(),
        };
        let Some(target) = self.router.route(&view) else {
            return respond::no_route(is_grpc);
        };
        let table = self.table.load();
        let service = match (table.service(target.service()), &target) {
            (Some(s), _) => s,
            (None, Target::Host(_)) => return respond::no_route(is_grpc),
            (None, Target::Route(_)) => {
                return respond::upstream_error(UpstreamError::NoInstance, target.service(), is_grpc)
            }
        };
        // Absolute-form names the host to reach; only hosts this listener serves are accepted,
        // so the gateway never acts as an open forward proxy.
        if absolute_form && !(self.router.serves_host(host) || matches!(target, Target::Host(_))) {
            self.refused_absolute.increment(1);
            return respond::refused(
                StatusCode::FORBIDDEN,
                "absolute-form request for a host this gateway does not serve\n",
                is_grpc,
            );
        }
        outcome.service = Some(service.name.clone());
        let Some(endpoint) = service.pick(target.pick(&view)).cloned() else {
            service.state.stats.error(UpstreamError::NoInstance);
            service.state.stats.response(StatusCode::SERVICE_UNAVAILABLE, start.elapsed().as_secs_f64());
            return respond::upstream_error(UpstreamError::NoInstance, &service.name, is_grpc);
        };
        outcome.upstream = Some(endpoint.addr.clone());
        let state = service.state.clone();
        let path_and_query = match target.upstream_path(view.path) {
            std::borrow::Cow::Borrowed(_) => req.uri().path_and_query().cloned(),
            std::borrow::Cow::Owned(p) => {
                let full = match view.query {
                    Some(q) => format!("{p}?{q}"),
                    None => p,
                };
                PathAndQuery::try_from(full).ok()
            }
        };
        let original_host = req.uri().authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok());
        // An upgrade needs HTTP/1.1 on both sides: its pool is chosen for that, whatever the metadata.
        let upgrade = if req.version() == Version::HTTP_11 { upgrade::requested(req.headers()) } else { None };
        let protocol = match (&upgrade, endpoint.protocol) {
            (Some(_), Protocol::H2c) => Protocol::Http1,
            (Some(_), Protocol::H2) => Protocol::Https,
            (_, p) => p,
        };
        let via = self.upstreams.client(&service.name, protocol);
        let service_name = service.name.clone();
        drop(table);

        let path_and_query = path_and_query.unwrap_or_else(|| PathAndQuery::from_static("/"));
        let uri = match via {
            // The instance's own HTTP/1.1 connection takes the origin form.
            Via::Instance { h2: false } => Uri::from(path_and_query),
            Via::Instance { h2: true } | Via::Shared(_) => {
                let tls = matches!(via, Via::Shared(_));
                let mut parts = http::uri::Parts::default();
                parts.scheme = Some(if tls { Scheme::HTTPS } else { Scheme::HTTP });
                parts.authority = Some(endpoint.authority.clone());
                parts.path_and_query = Some(path_and_query);
                match Uri::from_parts(parts) {
                    Ok(uri) => uri,
                    Err(_) => return respond::refused(StatusCode::BAD_REQUEST, "malformed request target\n", is_grpc),
                }
            }
        };
        *req.uri_mut() = uri;
        *req.version_mut() = if protocol.is_h2() { Version::HTTP_2 } else { Version::HTTP_11 };
        let on_client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
        let timeout =
            if is_grpc { grpc::request_timeout(req.headers(), self.request_timeout) } else { self.request_timeout };
        let headers = req.headers_mut();
        strip_hop_by_hop(headers);
        if let Some(protocol) = upgrade {
            upgrade::restore(headers, protocol);
        }
        if !headers.contains_key(header::HOST) {
            // HTTP/2 clients name the host in `:authority`; an HTTP/1.0 client may name none.
            let host = original_host.unwrap_or_else(|| {
                HeaderValue::from_maybe_shared(bytes::Bytes::copy_from_slice(endpoint.authority.as_str().as_bytes()))
                    .unwrap_or_else(|_| HeaderValue::from_static("localhost"))
            });
            headers.insert(header::HOST, host);
        }
        let forwarded_host = if protocol.is_h2() {
            // HTTP/2 carries the target in `:authority` (the instance address, from the URI);
            // a `Host` that disagrees with it is refused by strict servers (nginx: 400
            // "duplicate host header"). The client's host travels in X-Forwarded-Host.
            headers.remove(header::HOST)
        } else {
            headers.get(header::HOST).cloned()
        };
        add_forwarded(headers, client_ip, self.proto, forwarded_host);

        let result = match via {
            Via::Instance { h2 } => {
                let sent = self.send_to_instances(req, endpoint.clone(), &service_name, h2);
                tokio::time::timeout(timeout, sent).await.map(|r| r.map_err(|(e, _)| SendFailure::from(e)))
            }
            Via::Shared(client) => {
                let _inflight = endpoint.load.start();
                let sent = client.request(req);
                tokio::time::timeout(timeout, async { sent.await.map_err(SendFailure::from) }).await
            }
        };
        let failure = match result {
            Ok(Ok(mut res)) => {
                let upgraded = match on_client_upgrade {
                    Some(on_client) if res.status() == StatusCode::SWITCHING_PROTOCOLS => {
                        let protocol = res.headers().get(header::UPGRADE).cloned();
                        self.upgrades.relay(on_client, hyper::upgrade::on(&mut res));
                        protocol
                    }
                    _ => None,
                };
                strip_hop_by_hop(res.headers_mut());
                if let Some(protocol) = upgraded {
                    upgrade::restore(res.headers_mut(), protocol);
                }
                state.stats.response(res.status(), start.elapsed().as_secs_f64());
                return res.map(Either::Left);
            }
            Ok(Err(failure)) => {
                tracing::debug!(id = %endpoint.id, addr = %endpoint.addr, "upstream request failed: {}", failure.detail);
                failure.kind
            }
            Err(_) => UpstreamError::Timeout,
        };
        state.stats.error(failure);
        let res = respond::upstream_error(failure, &service_name, is_grpc);
        state.stats.response(res.status(), start.elapsed().as_secs_f64());
        res
    }
}

impl HttpProxy {
    /// Sends over the instances' own pools (HTTP/1.1, or h2c when `h2`). A
    /// request that no connection could carry reached no instance, so it goes to
    /// another live one of the same protocol (each at most once): an instance that
    /// stopped before it was deregistered costs a retry, not a failed request.
    async fn send_to_instances(
        &self,
        mut req: Request<Incoming>,
        mut endpoint: Arc<Endpoint>,
        service: &str,
        h2: bool,
    ) -> Result<Response<Incoming>, (PoolError, Arc<Endpoint>)> {
        let mut failed: Vec<Arc<str>> = Vec::new();
        loop {
            let result = {
                let _inflight = endpoint.load.start();
                if h2 {
                    endpoint.pool.send_h2(req, self.upstreams.instance_pools).await
                } else {
                    endpoint.pool.send(req, self.upstreams.instance_pools).await
                }
            };
            match result {
                Ok(res) => return Ok(res),
                Err((e, Some(unsent))) => {
                    tracing::debug!(id = %endpoint.id, addr = %endpoint.addr, "upstream connect failed, trying another instance: {e}");
                    failed.push(endpoint.id.clone());
                    let table = self.table.load();
                    let Some(service) = table.service(service) else { return Err((e, endpoint)) };
                    let next = service.live.iter().find(|e| e.protocol == endpoint.protocol && !failed.contains(&e.id));
                    let Some(next) = next else { return Err((e, endpoint)) };
                    // The last failure is counted by the caller; retried ones here.
                    service.state.stats.error(UpstreamError::Connect);
                    (req, endpoint) = (unsent, next.clone());
                }
                Err((e, None)) => return Err((e, endpoint)),
            }
        }
    }
}

/// A failed send: what kind of failure, and what happened, for the log.
struct SendFailure {
    kind: UpstreamError,
    detail: String,
}

impl From<PoolError> for SendFailure {
    fn from(e: PoolError) -> SendFailure {
        let kind = if e.is_connect() { UpstreamError::Connect } else { UpstreamError::Protocol };
        SendFailure { kind, detail: e.to_string() }
    }
}

impl From<hyper_util::client::legacy::Error> for SendFailure {
    fn from(e: hyper_util::client::legacy::Error) -> SendFailure {
        let kind = if e.is_connect() { UpstreamError::Connect } else { UpstreamError::Protocol };
        SendFailure { kind, detail: format!("{e:?}") }
    }
}
