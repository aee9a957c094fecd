//! `http` listeners (HTTP/1.1 and h2c on one port) and the HTTP connection
//! server that `https` listeners share after their handshake: one hyper
//! connection per client, driving [`crate::http::HttpProxy`] for each request. Every
//! connection's socket carries the deadlines of [`super::watchdog`]; heads are
//! bounded by `limits.max_request_head` (431 above) and `limits.max_request_headers`,
//! and an HTTP/2 client by `limits.h2_max_concurrent_streams`.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header;
use hyper::body::{Body, Frame, SizeHint};
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::Watcher;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::accept::{accept_loop, ListenerContext};
use super::watchdog::{ConnState, Deadlines, Exchange, Guarded};
use crate::config::Config;
use crate::http::headers::client_value;
use crate::http::upgrade::{RelayHook, Relayed};
use crate::metrics as m;

/// Which HTTP a client speaks: known from ALPN after a TLS handshake, from the
/// first bytes on a plain connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    Http1,
    Http2,
}

/// What an HTTP/2 client with prior knowledge (h2c) sends first.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

impl Protocol {
    /// The protocol a connection's first bytes show, `None` while they are a
    /// strict beginning of the HTTP/2 preface; an empty slice (the client closed
    /// without a byte) is HTTP/1.1, which ends such a connection quietly.
    fn sniff(first: &[u8]) -> Option<Protocol> {
        let n = first.len().min(H2_PREFACE.len());
        if first[..n] != H2_PREFACE[..n] || first.is_empty() {
            Some(Protocol::Http1)
        } else if n == H2_PREFACE.len() {
            Some(Protocol::Http2)
        } else {
            None
        }
    }
}

/// What serves HTTP on accepted (or TLS-terminated) connections of one listener.
pub(crate) struct HttpServer {
    /// Read once per request: a config reload swaps it under open connections.
    pub proxy: super::ProxySlot,
    shared: Arc<Shared>,
    pub deadlines: Arc<Deadlines>,
}

/// What every connection of a listener is served with.
///
/// hyper's HTTP/1.1 and HTTP/2 servers are used directly rather than through
/// hyper-util's `auto` connection: that one is an enum as large as its HTTP/2
/// state, which every HTTP/1.1 connection's task then carried (bench/cost.sh `mem`).
struct Shared {
    proxy: super::ProxySlot,
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
    /// Connections hyper ended because of something that is not HTTP, or too large a head.
    malformed: metrics::Counter,
}

impl HttpServer {
    pub fn new(listener: &str, proxy: super::ProxySlot, config: &Config) -> HttpServer {
        let limits = &config.limits;
        let mut http1 = http1::Builder::new();
        http1
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
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2.timer(TokioTimer::new()).max_concurrent_streams(streams).max_header_list_size(header_list);
        let malformed =
            metrics::counter!(m::BAD_REQUESTS, "listener" => listener.to_string(), "reason" => "malformed_request");
        HttpServer {
            proxy: proxy.clone(),
            shared: Arc::new(Shared { proxy, http1, http2, malformed }),
            deadlines: Arc::new(Deadlines::new(listener, config)),
        }
    }

    /// Serves one client connection whose protocol is known (after a TLS handshake)
    /// until it closes or the graceful shutdown ends it. `conn` is the state the
    /// connection's [`Guarded`] socket enforces deadlines on.
    pub fn spawn_connection<IO>(&self, io: IO, protocol: Protocol, peer: SocketAddr, drain: Drain, conn: Arc<ConnState>)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        tokio::spawn(serve(self.shared.clone(), io, protocol, peer, drain, conn));
    }

    /// Serves a plain `http` connection: HTTP/1.1, or h2c when it opens with the
    /// HTTP/2 preface. The preface is peeked, not read, so hyper reads the first
    /// request from the socket in one go (a first read of only the sniffed bytes
    /// made hyper grow its read buffer to 16 KiB). A graceful shutdown that begins
    /// before the first bytes came closes the connection, as hyper-util's `auto`
    /// connection did.
    fn spawn_plain(&self, mut io: Guarded<TcpStream>, peer: SocketAddr, drain: Drain, conn: Arc<ConnState>) {
        let shared = self.shared.clone();
        tokio::spawn(async move {
            let mut first = [0u8; H2_PREFACE.len()];
            let protocol = tokio::select! {
                p = io.peek(&mut first, Protocol::sniff) => p,
                () = drain.token.cancelled() => return,
            };
            match protocol {
                Ok(protocol) => serve(shared, io, protocol, peer, drain, conn).await,
                Err(e) => tracing::debug!(%peer, "client connection ended before its first request: {e}"),
            }
        });
    }

    /// Serves a plain `http` listener.
    pub async fn serve(self, name: &str, socket: TcpListener, ctx: &ListenerContext<'_>) {
        accept_loop(name, socket, ctx, |a| {
            let conn = ConnState::new(self.deadlines.clone());
            let io = Guarded::new(a.stream, a.slot, conn.clone());
            self.spawn_plain(io, a.peer, Drain::new(ctx), conn);
        })
        .await
    }
}

/// How a connection learns that the graceful shutdown began, and holds the
/// shutdown up until it has finished its in-flight requests.
pub(crate) struct Drain {
    /// Made at accept, before the shutdown can begin; held, not watched: hyper-util
    /// only watches its own `auto` connection and hyper's HTTP/1.1 connection
    /// without upgrades.
    _watcher: Watcher,
    token: CancellationToken,
}

impl Drain {
    pub fn new(ctx: &ListenerContext<'_>) -> Drain {
        Drain { _watcher: ctx.graceful.watcher(), token: ctx.drain.clone() }
    }

    /// Runs `conn` to its end; once the drain begins, `shutdown` tells it to finish
    /// its in-flight requests and close.
    async fn run<C: Future>(&self, conn: C, shutdown: impl FnOnce(Pin<&mut C>)) -> C::Output {
        let mut conn = std::pin::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => return r,
            () = self.token.cancelled() => {}
        }
        shutdown(conn.as_mut());
        conn.await
    }
}

/// One client connection, served by hyper's HTTP/1.1 or HTTP/2 server.
async fn serve<IO>(
    shared: Arc<Shared>,
    io: IO,
    protocol: Protocol,
    peer: SocketAddr,
    drain: Drain,
    conn: Arc<ConnState>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let client_ip = client_value(peer.ip());
    let proxy = shared.proxy.clone();
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
    let io = TokioIo::new(io);
    let result = match protocol {
        Protocol::Http1 => {
            let conn = shared.http1.serve_connection(io, service).with_upgrades();
            drain.run(conn, |c| c.graceful_shutdown()).await
        }
        // Boxed: an HTTP/2 connection's state is several times an HTTP/1.1 one's, and
        // the task is sized for the larger of the two.
        Protocol::Http2 => {
            let conn = shared.http2.serve_connection(io, service);
            Box::pin(drain.run(conn, |c| c.graceful_shutdown())).await
        }
    };
    if let Err(e) = result {
        // hyper has answered 400/431 where it could; the input came from outside, so
        // count it. Deadlines are counted by the watchdog.
        if e.is_parse() || e.is_parse_too_large() {
            shared.malformed.increment(1);
        }
        tracing::debug!(%peer, "client connection ended with error: {e}");
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
