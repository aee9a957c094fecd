//! A small HTTP/1.1 + h2c backend for tests. Paths:
//! `/slow/MS` answers after MS milliseconds; `/bytes/N` streams N bytes;
//! `/echo` streams the request body back; `/headers` lists the request headers
//! and version; `/hop-by-hop` answers with hop-by-hop response headers (for the
//! gateway to strip), some named by its `Connection`, `/hop-by-hop-unnamed` with
//! ones it does not name; anything else answers with the backend's name.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    shutdown: CancellationToken,
}

type Body = BoxBody<Bytes, hyper::Error>;

fn full(text: impl Into<Bytes>) -> Body {
    Full::new(text.into()).map_err(|never| match never {}).boxed()
}

impl Backend {
    pub async fn start(name: &str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Backend::serve(name, listener)
    }

    /// Serves on an already bound listener (e.g. to restart on the same port).
    pub fn serve(name: &str, listener: TcpListener) -> Backend {
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let shutdown = CancellationToken::new();
        let backend = Backend { name: name.to_string(), addr, hits: hits.clone(), shutdown: shutdown.clone() };
        let name = Bytes::from(name.to_string());
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                };
                let (name, hits, shutdown) = (name.clone(), hits.clone(), shutdown.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        hits.fetch_add(1, Ordering::Relaxed);
                        answer(name.clone(), req)
                    });
                    let builder = auto::Builder::new(TokioExecutor::new());
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = conn => {}
                        _ = shutdown.cancelled() => {}
                    }
                });
            }
        });
        backend
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::Relaxed)
    }

    /// Stops accepting and drops open connections.
    pub fn stop(&self) {
        self.shutdown.cancel();
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn answer(name: Bytes, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let res = if let Some(ms) = path.strip_prefix("/slow/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
        Response::new(full(name))
    } else if let Some(n) = path.strip_prefix("/bytes/") {
        let mut left: usize = n.parse().unwrap_or(0);
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        let stream = futures_util::stream::iter(std::iter::from_fn(move || {
            if left == 0 {
                return None;
            }
            let n = left.min(chunk.len());
            left -= n;
            Some(Ok::<_, hyper::Error>(Frame::data(chunk.slice(..n))))
        }));
        Response::new(BodyExt::boxed(StreamBody::new(stream)))
    } else if path == "/echo" {
        Response::new(req.into_body().boxed())
    } else if path == "/headers" {
        let mut text = format!("version: {:?}\n", req.version());
        for (k, v) in req.headers() {
            text.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("?")));
        }
        Response::new(full(text))
    } else if path == "/own-lines" {
        // The lines the gateway replaces (x-request-id) or adds to (Via).
        Response::builder()
            .header("x-request-id", "from-backend")
            .header("via", "1.1 backend-proxy")
            .body(full(name))
            .unwrap()
    } else if path == "/hop-by-hop" {
        Response::builder()
            .header("connection", "x-named-by-connection")
            .header("x-named-by-connection", "1")
            .header("keep-alive", "timeout=5")
            .header("proxy-authenticate", "Basic")
            .header("upgrade", "h2c")
            .header("x-end-to-end", "kept")
            .body(full(name))
            .unwrap()
    } else if path == "/hop-by-hop-unnamed" {
        // Hop-by-hop headers that no `Connection` names: removed by name.
        Response::builder()
            .header("proxy-authenticate", "Basic")
            .header("proxy-authorization", "Basic eA==")
            .header("upgrade", "h2c")
            .header("x-end-to-end", "kept")
            .body(full(name))
            .unwrap()
    } else {
        Response::new(full(name))
    };
    Ok(res)
}
