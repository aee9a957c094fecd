//! A lean keep-alive pool of HTTP/1.1 connections to one plain-text instance.
//! It lives as long as the instance (it is carried across table swaps with the
//! instance's in-flight count), so a request reaches its pool through the picked
//! endpoint without a map lookup. The lock is held for a push or a pop, never
//! across an `.await`. TLS and HTTP/2 instances use the general pools in `client`.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// How long an unused connection is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    #[error("connect to {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("connect to {addr}: timed out")]
    ConnectTimeout { addr: String },
    #[error("HTTP/1.1 handshake: {0}")]
    Handshake(hyper::Error),
    #[error("request: {0}")]
    Request(hyper::Error),
}

impl H1Error {
    pub fn is_connect(&self) -> bool {
        !matches!(self, H1Error::Request(_))
    }
}

#[derive(Debug)]
pub struct H1Pool {
    addr: Box<str>,
    idle: Mutex<Vec<Idle>>,
}

#[derive(Debug)]
struct Idle {
    sender: SendRequest<Incoming>,
    since: Instant,
}

/// Pool settings shared by every instance.
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    pub connect_timeout: Duration,
    pub max_idle: usize,
}

impl H1Pool {
    pub fn new(addr: &str) -> H1Pool {
        H1Pool { addr: addr.into(), idle: Mutex::new(Vec::new()) }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Sends `req` (origin-form URI) on a pooled connection, or a new one. A
    /// request that a pooled connection could not send (it closed meanwhile) is
    /// retried on another, since nothing of it reached the instance. When no
    /// connection can be made the request comes back untouched, for another instance.
    pub async fn send(
        &self,
        mut req: Request<Incoming>,
        settings: PoolSettings,
    ) -> Result<Response<Incoming>, (H1Error, Option<Request<Incoming>>)> {
        while let Some(mut sender) = self.checkout() {
            match sender.try_send_request(req).await {
                Ok(res) => {
                    self.checkin(sender, settings);
                    return Ok(res);
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err((H1Error::Request(e.into_error()), None)),
                },
            }
        }
        let mut sender = match self.connect(settings).await {
            Ok(sender) => sender,
            Err(e) => return Err((e, Some(req))),
        };
        let res = sender.send_request(req).await.map_err(|e| (H1Error::Request(e), None))?;
        self.checkin(sender, settings);
        Ok(res)
    }

    /// The most recently used connection that can take a request now. Busy ones
    /// (still streaming a response body) stay; closed and expired ones go.
    fn checkout(&self) -> Option<SendRequest<Incoming>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let mut i = idle.len();
        while i > 0 {
            i -= 1;
            let entry = &idle[i];
            if entry.sender.is_closed() || entry.since.elapsed() > IDLE_TIMEOUT && entry.sender.is_ready() {
                idle.swap_remove(i);
            } else if entry.sender.is_ready() {
                return Some(idle.swap_remove(i).sender);
            }
        }
        None
    }

    /// Returns a connection right after its response head: it becomes ready
    /// again when the body has been read.
    fn checkin(&self, sender: SendRequest<Incoming>, settings: PoolSettings) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < settings.max_idle {
            idle.push(Idle { sender, since: Instant::now() });
        }
    }

    async fn connect(&self, settings: PoolSettings) -> Result<SendRequest<Incoming>, H1Error> {
        let addr = || self.addr.to_string();
        let stream = match tokio::time::timeout(settings.connect_timeout, TcpStream::connect(&*self.addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => return Err(H1Error::Connect { addr: addr(), source }),
            Err(_) => return Err(H1Error::ConnectTimeout { addr: addr() }),
        };
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::Builder::new().handshake(TokioIo::new(stream)).await.map_err(H1Error::Handshake)?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!("upstream connection closed: {e}");
            }
        });
        Ok(sender)
    }
}
