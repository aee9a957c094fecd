//! `http` listeners (HTTP/1.1 and h2c on one port) and the HTTP connection
//! server that `https` listeners share after their handshake: one hyper
//! connection per client, driving [`crate::http::HttpProxy`] for each request. Every
//! connection's socket carries the deadlines of [`super::watchdog`]; heads are
//! bounded by `limits.max_request_head` (431 above) and `limits.max_request_headers`,
//! and an HTTP/2 client by `limits.h2_max_concurrent_streams`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header;
use hyper::body::{Body, Frame, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::Watcher;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;

use super::accept::{accept_loop, ListenerContext};
use super::watchdog::{ConnState, Deadlines, Exchange, Guarded};
use crate::config::Config;
use crate::http::headers::client_value;
use crate::http::upgrade::{RelayHook, Relayed};
use crate::metrics as m;

/// What serves HTTP on accepted (or TLS-terminated) connections of one listener.
pub(crate) struct HttpServer {
    /// Read once per request: a config reload swaps it under open connections.
    pub proxy: super::ProxySlot,
    builder: auto::Builder<TokioExecutor>,
    errors: Arc<ConnectionErrors>,
    pub deadlines: Arc<Deadlines>,
}

/// Client connections that hyper ended with an error, by reason.
struct ConnectionErrors {
    /// Something that is not HTTP, or too large a head.
    malformed: metrics::Counter,
}

impl HttpServer {
    pub fn new(listener: &str, proxy: super::ProxySlot, config: &Config) -> HttpServer {
        let limits = &config.limits;
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            // The head deadline is the watchdog's: it starts at accept (before protocol
            // detection and the TLS handshake), and hyper's would also cut kept-alive
            // connections after `header_read` and count them as bad requests.
            .header_read_timeout(None)
            .max_buf_size(limits.max_request_head)
            .max_headers(limits.max_request_headers)
            .keep_alive(true);
        let streams = u32::try_from(limits.h2_max_concurrent_streams).unwrap_or(u32::MAX);
        let header_list = u32::try_from(limits.max_request_head).unwrap_or(u32::MAX);
        builder.http2().timer(TokioTimer::new()).max_concurrent_streams(streams).max_header_list_size(header_list);
        let errors = ConnectionErrors {
            malformed: metrics::counter!(m::BAD_REQUESTS, "listener" => listener.to_string(), "reason" => "malformed_request"),
        };
        HttpServer { proxy, builder, errors: Arc::new(errors), deadlines: Arc::new(Deadlines::new(listener, config)) }
    }

    /// Serves one client connection until it closes or the graceful shutdown ends it.
    /// `conn` is the state the connection's [`Guarded`] socket enforces deadlines on.
    pub fn spawn_connection<IO>(&self, io: IO, peer: SocketAddr, watcher: Watcher, conn: Arc<ConnState>)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let client_ip = client_value(peer.ip());
        let proxy = self.proxy.clone();
        let service = hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
            let proxy = proxy.load_full();
            let client_ip = client_ip.clone();
            let exchange = conn.start_request(req.version() == http::Version::HTTP_2);
            if req.headers().contains_key(header::UPGRADE) {
                // Only then: an extension costs an allocation per request.
                req.extensions_mut().insert(RelayHook(conn.clone() as Arc<dyn Relayed>));
            }
            // Boxed: hyper keeps an h1 connection's in-flight slot (sized for this future)
            // allocated while the connection idles, and moves each h2 stream's future into
            // a task of its own; a pointer keeps both small (bench/cost.sh `mem`, `ir`).
            Box::pin(async move {
                let res = proxy.handle(req, peer, &client_ip).await;
                Ok::<_, Infallible>(res.map(|body| Tracked { body, _exchange: exchange }))
            })
        });
        let conn = self.builder.serve_connection_with_upgrades(TokioIo::new(io), service).into_owned();
        let conn = watcher.watch(conn);
        let errors = self.errors.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                // hyper has answered 400/431 where it could; the input came from outside, so
                // count it. Deadlines are counted by the watchdog.
                if let Some(he) = e.downcast_ref::<hyper::Error>() {
                    if he.is_parse() || he.is_parse_too_large() {
                        errors.malformed.increment(1);
                    }
                }
                tracing::debug!(%peer, "client connection ended with error: {e}");
            }
        });
    }

    /// Serves a plain `http` listener.
    pub async fn serve(self, name: &str, socket: TcpListener, ctx: &ListenerContext<'_>) {
        accept_loop(name, socket, ctx, |a| {
            let conn = ConnState::new(self.deadlines.clone());
            let io = Guarded::new(a.stream, a.slot, conn.clone());
            self.spawn_connection(io, a.peer, ctx.graceful.watcher(), conn);
        })
        .await
    }
}

impl Relayed for ConnState {
    fn relaying(&self) {
        self.upgraded();
    }
}

/// A response body that holds its request's [`Exchange`] until it is done
/// (written, or dropped by a reset stream): the connection is not idle before.
struct Tracked<B> {
    body: B,
    _exchange: Exchange,
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
