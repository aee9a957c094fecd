//! `http` listeners (HTTP/1.1 and h2c on one port) and the HTTP connection
//! server that `https` listeners share after their handshake: one hyper
//! connection per client, driving [`HttpProxy`] for each request.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::Watcher;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;

use super::accept::{accept_loop, ListenerContext};
use crate::config::Config;
use crate::http::headers::client_value;
use crate::http::HttpProxy;
use crate::metrics as m;

/// What serves HTTP on accepted (or TLS-terminated) connections of one listener.
pub(crate) struct HttpServer {
    pub proxy: Arc<HttpProxy>,
    builder: auto::Builder<TokioExecutor>,
    errors: Arc<ConnectionErrors>,
}

/// Client connections that hyper ended with an error, by reason.
struct ConnectionErrors {
    /// Something that is not HTTP, or too large a head.
    malformed: metrics::Counter,
    /// No request head within `timeouts.header_read`.
    head_timeout: metrics::Counter,
}

impl HttpServer {
    pub fn new(listener: &str, proxy: HttpProxy, config: &Config) -> HttpServer {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder.http1().timer(TokioTimer::new()).header_read_timeout(config.timeouts.header_read).keep_alive(true);
        builder.http2().timer(TokioTimer::new()).max_concurrent_streams(1024);
        let errors = ConnectionErrors {
            malformed: metrics::counter!(m::BAD_REQUESTS, "listener" => listener.to_string(), "reason" => "malformed_request"),
            head_timeout: metrics::counter!(m::BAD_REQUESTS, "listener" => listener.to_string(), "reason" => "header_timeout"),
        };
        HttpServer { proxy: Arc::new(proxy), builder, errors: Arc::new(errors) }
    }

    /// Serves one client connection until it closes or the graceful shutdown ends it;
    /// `on_close` runs when it is gone.
    pub fn spawn_connection<IO>(
        &self,
        io: IO,
        peer: SocketAddr,
        watcher: Watcher,
        on_close: impl FnOnce() + Send + 'static,
    ) where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let client_ip = client_value(peer.ip());
        let proxy = self.proxy.clone();
        let service = hyper::service::service_fn(move |req| {
            let proxy = proxy.clone();
            let client_ip = client_ip.clone();
            // Boxed: hyper keeps an h1 connection's in-flight slot (sized for this future)
            // allocated while the connection idles, and moves each h2 stream's future into
            // a task of its own; a pointer keeps both small (bench/cost.sh `mem`, `ir`).
            Box::pin(async move { Ok::<_, Infallible>(proxy.handle(req, peer, &client_ip).await) })
        });
        let conn = self.builder.serve_connection_with_upgrades(TokioIo::new(io), service).into_owned();
        let conn = watcher.watch(conn);
        let errors = self.errors.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                // hyper has answered 400/431/408 where it could; the input came from outside, so count it.
                match e.downcast_ref::<hyper::Error>() {
                    Some(he) if he.is_parse() || he.is_parse_too_large() => errors.malformed.increment(1),
                    Some(he) if he.is_timeout() => errors.head_timeout.increment(1),
                    _ => {}
                }
                tracing::debug!(%peer, "client connection ended with error: {e}");
            }
            on_close();
        });
    }

    /// Serves a plain `http` listener.
    pub async fn serve(self, name: &str, socket: TcpListener, ctx: &ListenerContext<'_>) {
        accept_loop(name, socket, ctx, |a| {
            self.spawn_connection(a.stream, a.peer, ctx.graceful.watcher(), move || drop(a.slot));
        })
        .await
    }
}
