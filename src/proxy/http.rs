//! The L7 proxy: one hyper server per connection (HTTP/1.1 and h2c on the same
//! port), and the request path: route → one table `load()` → pick → forward over
//! a pooled upstream connection, streaming bodies both ways.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{self, HeaderValue};
use http::uri::{PathAndQuery, Scheme, Uri};
use http::{Request, Response, StatusCode, Version};
use http_body_util::Either;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};

use super::client::Upstreams;
use super::headers::{add_forwarded, strip_hop_by_hop};
use super::respond::{self, ProxyBody};
use super::route::{request_host, RequestView, Router, Target};
use super::stats::UpstreamError;
use crate::config::{Config, Route};
use crate::metrics as m;
use crate::upstream::SharedTable;

pub struct HttpProxy {
    router: Router,
    table: SharedTable,
    upstreams: Arc<Upstreams>,
    request_timeout: Duration,
    /// `http` or `https`, for `X-Forwarded-Proto`.
    proto: &'static str,
    refused_absolute: metrics::Counter,
}

impl HttpProxy {
    pub fn new(listener: &str, routes: &[Route], tls: bool, table: SharedTable, upstreams: Arc<Upstreams>, config: &Config) -> HttpProxy {
        HttpProxy {
            router: Router::new(routes),
            table,
            upstreams,
            request_timeout: config.timeouts.request,
            proto: if tls { "https" } else { "http" },
            refused_absolute: metrics::counter!(m::BAD_REQUESTS, "listener" => listener.to_string(), "reason" => "absolute_form_foreign_host"),
        }
    }

    pub async fn handle(&self, mut req: Request<Incoming>, client: SocketAddr) -> Response<ProxyBody> {
        let start = Instant::now();
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
            return respond::no_route();
        };
        let table = self.table.load();
        let service = match (table.service(target.service()), &target) {
            (Some(s), _) => s,
            (None, Target::Host(_)) => return respond::no_route(),
            (None, Target::Route(_)) => return respond::upstream_error(UpstreamError::NoInstance, target.service()),
        };
        // Absolute-form names the host to reach; only hosts this listener serves are accepted,
        // so the gateway never acts as an open forward proxy.
        if absolute_form && !(self.router.serves_host(host) || matches!(target, Target::Host(_))) {
            self.refused_absolute.increment(1);
            return respond::text(StatusCode::FORBIDDEN, "absolute-form request for a host this gateway does not serve\n");
        }
        let Some(endpoint) = service.pick(target.pick(&view)).cloned() else {
            service.state.stats.error(UpstreamError::NoInstance);
            service.state.stats.response(StatusCode::SERVICE_UNAVAILABLE, start.elapsed().as_secs_f64());
            return respond::upstream_error(UpstreamError::NoInstance, &service.name);
        };
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
        drop(table);

        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(endpoint.authority.clone());
        parts.path_and_query = path_and_query.or_else(|| Some(PathAndQuery::from_static("/")));
        let Ok(uri) = Uri::from_parts(parts) else {
            return respond::text(StatusCode::BAD_REQUEST, "malformed request target\n");
        };
        *req.uri_mut() = uri;
        *req.version_mut() = if endpoint.protocol.is_h2() { Version::HTTP_2 } else { Version::HTTP_11 };
        let headers = req.headers_mut();
        strip_hop_by_hop(headers);
        if let Some(h) = original_host.as_ref().filter(|_| !headers.contains_key(header::HOST)) {
            headers.insert(header::HOST, h.clone());
        }
        let forwarded_host = headers.get(header::HOST).cloned();
        add_forwarded(headers, client.ip(), self.proto, forwarded_host);

        let _inflight = endpoint.load.start();
        let client = self.upstreams.client(endpoint.protocol);
        let result = tokio::time::timeout(self.request_timeout, client.request(req)).await;
        let failure = match result {
            Ok(Ok(mut res)) => {
                strip_hop_by_hop(res.headers_mut());
                state.stats.response(res.status(), start.elapsed().as_secs_f64());
                return res.map(Either::Left);
            }
            Ok(Err(e)) if e.is_connect() => {
                tracing::debug!(id = %endpoint.id, addr = %endpoint.addr, "upstream connect failed: {e}");
                UpstreamError::Connect
            }
            Ok(Err(e)) => {
                tracing::debug!(addr = %endpoint.addr, "upstream request failed: {e:?}");
                UpstreamError::Protocol
            }
            Err(_) => UpstreamError::Timeout,
        };
        state.stats.error(failure);
        let res = respond::upstream_error(failure, &endpoint.addr);
        state.stats.response(res.status(), start.elapsed().as_secs_f64());
        res
    }
}

/// The per-listener HTTP server settings.
pub fn server_builder(config: &Config) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1().timer(TokioTimer::new()).header_read_timeout(config.timeouts.header_read).keep_alive(true);
    b.http2().timer(TokioTimer::new()).max_concurrent_streams(1024);
    b
}

/// Serves one client connection until it closes or the graceful shutdown ends it.
pub fn spawn_connection<IO>(
    io: IO,
    peer: SocketAddr,
    proxy: Arc<HttpProxy>,
    builder: &auto::Builder<TokioExecutor>,
    graceful: &GracefulShutdown,
    on_close: impl FnOnce() + Send + 'static,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let proxy = proxy.clone();
        async move { Ok::<_, Infallible>(proxy.handle(req, peer).await) }
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service).into_owned();
    let conn = graceful.watch(conn);
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(%peer, "client connection ended with error: {e}");
        }
        on_close();
    });
}
