//! `http` listeners (HTTP/1.1 and h2c on one port) and the HTTP connection
//! server that `https` listeners share after their handshake: per client, the
//! gateway's own HTTP/1.1 server ([`super::h1`], handing over to hyper's for what
//! it does not take) or hyper's HTTP/2 one, driving [`crate::http::HttpProxy`]
//! for each request. Every
//! connection's socket carries the deadlines of [`super::watchdog`]; heads are
//! bounded by `limits.max_request_head` (431 above) and `limits.max_request_headers`,
//! and an HTTP/2 client by `limits.h2_max_concurrent_streams`.

use std::cell::RefCell;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use futures_util::FutureExt;
use http::{header, HeaderValue, Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::Watcher;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::futures::OwnedNotified;

use super::accept::{accept_loop, DrainSignal, ListenerContext};
use super::h1::{self, Ended, Rewind};
use super::watchdog::{ConnState, Deadlines, Exchange, Guarded};
use crate::config::Config;
use crate::http::headers::client_value;
use crate::http::respond::ProxyBody;
use crate::http::upgrade::{RelayHook, Relayed};
use crate::http::{Client, HttpProxy};
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
    /// `limits.max_request_head` and `limits.max_request_headers`, for the gateway's own HTTP/1.1 server.
    max_head: usize,
    max_headers: usize,
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
            // The head limit proper: max_buf_size alone is not one, since hyper reads into
            // all of the buffer's spare capacity, which can pass it (a 100 KB head read in
            // large reads was parsed whole; with hyper-util's sniffing first read of 24
            // bytes the buffer happened to stop at the limit).
            .max_header_size(limits.max_request_head)
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
            shared: Arc::new(Shared {
                proxy,
                http1,
                http2,
                malformed,
                max_head: limits.max_request_head,
                max_headers: limits.max_request_headers,
            }),
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
        let server = Server::new(&self.shared, io, protocol, peer, conn, &drain.signal);
        tokio::spawn(drive(server, drain, self.shared.clone(), peer));
    }

    /// Serves a plain `http` connection: HTTP/1.1, or h2c when it opens with the
    /// HTTP/2 preface (see [`PlainConnection`]).
    fn spawn_plain(&self, io: Guarded<TcpStream>, peer: SocketAddr, drain: Drain, conn: Arc<ConnState>) {
        let task = PlainConnection {
            stage: Stage::Sniffing { io, conn },
            drain: DrainWatch::new(drain.signal),
            draining: false,
            _watcher: drain.watcher,
            shared: self.shared.clone(),
            peer,
        };
        tokio::spawn(task);
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
    watcher: Watcher,
    signal: Arc<DrainSignal>,
}

impl Drain {
    pub fn new(ctx: &ListenerContext<'_>) -> Drain {
        Drain { watcher: ctx.graceful.watcher(), signal: ctx.drain.clone() }
    }
}

pin_project_lite::pin_project! {
    /// Whether the drain has started, for a connection polled many times: the first
    /// poll registers the task for the drain's wake-up, later ones read a flag.
    struct DrainWatch {
        signal: Arc<DrainSignal>,
        #[pin]
        wake_up: OwnedNotified,
        registered: bool,
    }
}

impl DrainWatch {
    fn new(signal: Arc<DrainSignal>) -> DrainWatch {
        DrainWatch { wake_up: signal.wake_up(), signal, registered: false }
    }

    fn poll_started(self: Pin<&mut Self>, cx: &mut Context<'_>) -> bool {
        let this = self.project();
        if !*this.registered {
            *this.registered = true;
            // Pending (registered with this task's waker) unless the drain already woke it.
            let _ = this.wake_up.poll(cx);
        }
        this.signal.started()
    }
}

pin_project_lite::pin_project! {
    /// One plain `http` connection's task, written out rather than an `async`
    /// block, which kept the socket, the server and each step's futures in slots
    /// of their own.
    ///
    /// It first peeks at the client's first bytes, without taking them, so the
    /// server reads the first request from the socket in one go (when the sniffed
    /// bytes came first on their own, hyper grew its read buffer to 16 KiB). A drain that
    /// begins before they came closes the connection, as hyper-util's `auto`
    /// connection did.
    struct PlainConnection {
        stage: Stage,
        #[pin]
        drain: DrainWatch,
        draining: bool,
        _watcher: Watcher,
        shared: Arc<Shared>,
        peer: SocketAddr,
    }
}

enum Stage {
    /// Until the first bytes tell HTTP/1.1 from h2c.
    Sniffing {
        io: Guarded<TcpStream>,
        conn: Arc<ConnState>,
    },
    Serving(Server<Guarded<TcpStream>>),
    Done,
}

impl Future for PlainConnection {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        if !*this.draining && this.drain.as_mut().poll_started(cx) {
            *this.draining = true;
            match this.stage {
                Stage::Serving(server) => server.graceful_shutdown(),
                Stage::Sniffing { .. } | Stage::Done => return Poll::Ready(()),
            }
        }
        if let Stage::Sniffing { io, .. } = this.stage {
            let mut first = [0u8; H2_PREFACE.len()];
            let protocol = match ready!(io.poll_peek(cx, &mut first, &Protocol::sniff)) {
                Ok(protocol) => protocol,
                Err(e) => {
                    tracing::debug!(peer = %this.peer, "client connection ended before its first request: {e}");
                    return Poll::Ready(());
                }
            };
            if let Stage::Sniffing { io, conn } = std::mem::replace(this.stage, Stage::Done) {
                let signal = &this.drain.signal;
                *this.stage = Stage::Serving(Server::new(this.shared, io, protocol, *this.peer, conn, signal));
            }
        }
        if let Stage::Serving(server) = this.stage {
            let result = ready!(server.poll_serve(cx, this.shared));
            report(result, this.shared, *this.peer);
        }
        Poll::Ready(())
    }
}

/// Runs a TLS connection's server to its end; once the drain begins, it finishes its
/// in-flight requests and closes. The server is polled in place (`&mut`): every
/// move of it into another future would be one more copy in the task.
async fn drive<IO>(mut server: Server<IO>, drain: Drain, shared: Arc<Shared>, peer: SocketAddr)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Drain { watcher, signal } = drain;
    let mut watch = std::pin::pin!(DrainWatch::new(signal));
    let mut draining = false;
    let result = std::future::poll_fn(|cx| {
        if !draining && watch.as_mut().poll_started(cx) {
            draining = true;
            server.graceful_shutdown();
        }
        server.poll_serve(cx, &shared)
    })
    .await;
    drop(watcher);
    report(result, &shared, peer);
}

/// Counts and logs how a connection's server ended.
fn report(result: Result<(), ConnError>, shared: &Shared, peer: SocketAddr) {
    match result {
        Ok(()) => {}
        Err(ConnError::Hyper(e)) => {
            // hyper has answered 400/431 where it could; the input came from outside, so
            // count it. Deadlines are counted by the watchdog.
            if e.is_parse() || e.is_parse_too_large() {
                shared.malformed.increment(1);
            }
            tracing::debug!(%peer, "client connection ended with error: {e}");
        }
        Err(ConnError::Io(e)) => tracing::debug!(%peer, "client connection ended with error: {e}"),
    }
}

/// The server of one client connection: HTTP/1.1 the gateway's own ([`h1`])
/// until a request needs hyper's, which then serves the connection on; HTTP/2
/// hyper's. Each boxed: the connection's task is sized for the largest variant.
enum Server<IO> {
    Own(OwnHttp1<IO>),
    Http1(Pin<Box<http1::UpgradeableConnection<TokioIo<Rewind<IO>>, ClientService>>>),
    Http2(Pin<Box<http2::Connection<TokioIo<IO>, ClientService, TokioExecutor>>>),
}

/// The gateway's own HTTP/1.1 server at work, and what hyper's would be made with.
struct OwnHttp1<IO> {
    serving: Pin<Box<dyn Future<Output = Ended<IO>> + Send>>,
    conn: Arc<ConnState>,
    peer: SocketAddr,
    drain: Arc<DrainSignal>,
}

/// How a connection's server ended, when not cleanly.
enum ConnError {
    Hyper(hyper::Error),
    Io(std::io::Error),
}

impl<IO> Server<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    fn new(
        shared: &Shared,
        io: IO,
        protocol: Protocol,
        peer: SocketAddr,
        conn: Arc<ConnState>,
        drain: &Arc<DrainSignal>,
    ) -> Server<IO> {
        match protocol {
            Protocol::Http1 => {
                let own = h1::Connection {
                    proxy: shared.proxy.clone(),
                    peer,
                    client_ip: client_value(peer.ip()),
                    conn: conn.clone(),
                    drain: drain.clone(),
                    max_head: shared.max_head,
                    max_headers: shared.max_headers,
                };
                Server::Own(OwnHttp1 { serving: Box::pin(own.serve(io)), conn, peer, drain: drain.clone() })
            }
            Protocol::Http2 => {
                let service = ClientService::new(shared, peer, conn);
                Server::Http2(Box::pin(shared.http2.serve_connection(TokioIo::new(io), service)))
            }
        }
    }

    /// Finishes the in-flight requests, then closes (HTTP/1.1: no keep-alive; HTTP/2:
    /// GOAWAY). The gateway's own server reads the drain flag itself.
    fn graceful_shutdown(&mut self) {
        match self {
            Server::Own(_) => {}
            Server::Http1(conn) => conn.as_mut().graceful_shutdown(),
            Server::Http2(conn) => conn.as_mut().graceful_shutdown(),
        }
    }

    fn poll_serve(&mut self, cx: &mut Context<'_>, shared: &Shared) -> Poll<Result<(), ConnError>> {
        match self {
            Server::Own(own) => match ready!(own.serving.as_mut().poll(cx)) {
                Ended::Closed => Poll::Ready(Ok(())),
                Ended::Failed(e) => Poll::Ready(Err(ConnError::Io(e))),
                Ended::Handoff(io, read) => {
                    let service = ClientService::new(shared, own.peer, own.conn.clone());
                    let draining = own.drain.started();
                    let io = TokioIo::new(Rewind::new(read, io));
                    let mut hyper = Box::pin(shared.http1.serve_connection(io, service).with_upgrades());
                    // Its first poll takes the request already read; a drain under way
                    // then lets that one finish (an idle connection would just close).
                    let first = hyper.as_mut().poll(cx);
                    if draining {
                        hyper.as_mut().graceful_shutdown();
                    }
                    *self = Server::Http1(hyper);
                    first.map_err(ConnError::Hyper)
                }
            },
            Server::Http1(conn) => conn.as_mut().poll(cx).map_err(ConnError::Hyper),
            Server::Http2(conn) => conn.as_mut().poll(cx).map_err(ConnError::Hyper),
        }
    }
}

/// What hyper calls for each request of one client connection.
struct ClientService {
    /// Read once per request: a config reload swaps it under open connections.
    proxy: super::ProxySlot,
    /// The proxy as this connection's requests hold it (see [`ConnProxy`]).
    held: RefCell<Arc<ConnProxy>>,
    client_ip: HeaderValue,
    peer: SocketAddr,
    conn: Arc<ConnState>,
}

/// A connection's reference to the proxy: an HTTP/2 stream's future is a task of
/// its own and must own the proxy it uses, and cloning the proxy's `Arc` itself
/// would write a count that every connection of the listener writes, per
/// request. This one's count is the connection's. Made again when a reload swapped
/// the proxy.
struct ConnProxy(Arc<HttpProxy>);

/// A request's hold on its connection's [`ConnProxy`].
struct HeldProxy(Arc<ConnProxy>);

impl std::ops::Deref for HeldProxy {
    type Target = HttpProxy;
    fn deref(&self) -> &HttpProxy {
        &self.0 .0
    }
}

type Responding = Pin<Box<dyn Future<Output = Result<Response<Tracked<ProxyBody>>, Infallible>> + Send>>;

impl ClientService {
    fn new(shared: &Shared, peer: SocketAddr, conn: Arc<ConnState>) -> ClientService {
        let held = RefCell::new(Arc::new(ConnProxy(shared.proxy.load_full())));
        ClientService { proxy: shared.proxy.clone(), held, client_ip: client_value(peer.ip()), peer, conn }
    }
}

impl hyper::service::Service<Request<Incoming>> for ClientService {
    type Response = Response<Tracked<ProxyBody>>;
    type Error = Infallible;
    type Future = Responding;

    fn call(&self, mut req: Request<Incoming>) -> Responding {
        let proxy = {
            let current = self.proxy.load();
            let mut held = self.held.borrow_mut();
            if !Arc::ptr_eq(&held.0, &current) {
                *held = Arc::new(ConnProxy(Arc::clone(&current)));
            }
            HeldProxy(held.clone())
        };
        let h2 = req.version() == http::Version::HTTP_2;
        let exchange = self.conn.start_request(h2);
        // HTTP/2 has no `Upgrade` (RFC 9113 §8.2.2: h2 refuses it as malformed).
        if !h2 && req.headers().contains_key(header::UPGRADE) {
            // Only then: an extension costs an allocation per request.
            req.extensions_mut().insert(RelayHook(self.conn.clone() as Arc<dyn Relayed>));
        }
        // Boxed: hyper keeps an h1 connection's in-flight slot (sized for this future)
        // allocated while the connection idles, and moves each h2 stream's future into
        // a task of its own; a pointer keeps both small (bench/cost.sh `mem`, `ir`).
        // The request is routed and rewritten here, in `handle`; the future holds
        // what is left, with the proxy it was taken from.
        let client = Client { addr: self.peer, ip: &self.client_ip, raw_response: false };
        let handling = HttpProxy::handle(proxy, req, client, None);
        Box::pin(handling.map(move |res| Ok(res.map(|body| Tracked { body, _exchange: exchange }))))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_bytes_tell_h2c_from_http1_and_a_partial_preface_waits() {
        assert_eq!(Protocol::sniff(b"GET / HTTP/1.1\r\n"), Some(Protocol::Http1));
        // POST, PUT and PATCH part from the preface at their second byte.
        assert_eq!(Protocol::sniff(b"PO"), Some(Protocol::Http1));
        assert_eq!(Protocol::sniff(b"P"), None);
        assert_eq!(Protocol::sniff(b"PRI * HTTP/2.0\r\n"), None);
        assert_eq!(Protocol::sniff(H2_PREFACE), Some(Protocol::Http2));
        assert_eq!(Protocol::sniff(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n"), Some(Protocol::Http1));
        // Closed before a byte: HTTP/1.1, which ends the connection quietly.
        assert_eq!(Protocol::sniff(b""), Some(Protocol::Http1));
    }
}
