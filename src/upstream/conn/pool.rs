//! The connections to one plain-text instance: keep-alive HTTP/1.1 connections,
//! and one multiplexed h2c connection for instances whose metadata says `h2c`.
//! The pool lives as long as the instance (it is carried across table swaps with
//! the instance's in-flight count), so a request reaches it through the picked
//! endpoint without a map lookup. Its locks are held for a push, a pop or a clone,
//! never across an `.await`. TLS instances use the shared pools in `client`.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

/// How long an unused connection is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("connect to {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("connect to {addr}: timed out")]
    ConnectTimeout { addr: String },
    #[error("handshake: {0}")]
    Handshake(hyper::Error),
    #[error("request: {0}")]
    Request(hyper::Error),
}

impl PoolError {
    pub fn is_connect(&self) -> bool {
        !matches!(self, PoolError::Request(_))
    }
}

#[derive(Debug)]
pub struct InstancePool {
    addr: Box<str>,
    idle: Mutex<Vec<Idle>>,
    /// The h2c connection, shared by every request (cloned per request).
    h2: Mutex<Option<http2::SendRequest<Incoming>>>,
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

impl InstancePool {
    pub fn new(addr: &str) -> InstancePool {
        InstancePool { addr: addr.into(), idle: Mutex::new(Vec::new()), h2: Mutex::new(None) }
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
    ) -> Result<Response<Incoming>, (PoolError, Option<Request<Incoming>>)> {
        while let Some(mut sender) = self.checkout() {
            match sender.try_send_request(req).await {
                Ok(res) => {
                    self.checkin(sender, settings);
                    return Ok(res);
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err((PoolError::Request(e.into_error()), None)),
                },
            }
        }
        let mut sender = match self.connect(settings).await {
            Ok(sender) => sender,
            Err(e) => return Err((e, Some(req))),
        };
        let res = sender.send_request(req).await.map_err(|e| (PoolError::Request(e), None))?;
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
            if entry.sender.is_closed() {
                idle.swap_remove(i);
            } else if entry.sender.is_ready() {
                // Only a ready entry's age matters (and costs a clock read): a busy one is in use.
                let entry = idle.swap_remove(i);
                if entry.since.elapsed() <= IDLE_TIMEOUT {
                    return Some(entry.sender);
                }
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

    /// Sends `req` (absolute URI) as a stream of the instance's h2c connection,
    /// opening it when there is none or it closed. As for HTTP/1.1, a request
    /// that no connection could carry comes back untouched.
    pub async fn send_h2(
        &self,
        req: Request<Incoming>,
        settings: PoolSettings,
    ) -> Result<Response<Incoming>, (PoolError, Option<Request<Incoming>>)> {
        let cached = {
            let h2 = self.h2.lock().unwrap_or_else(|e| e.into_inner());
            h2.as_ref().filter(|s| !s.is_closed()).cloned()
        };
        let mut sender = match cached {
            Some(sender) => sender,
            None => match self.open_h2(settings).await {
                Ok(sender) => sender,
                Err(e) => return Err((e, Some(req))),
            },
        };
        if sender.ready().await.is_err() {
            // The cached connection closed under us: one fresh one on this instance.
            sender = match self.open_h2(settings).await {
                Ok(sender) => sender,
                Err(e) => return Err((e, Some(req))),
            };
            if let Err(e) = sender.ready().await {
                return Err((PoolError::Request(e), Some(req)));
            }
        }
        sender.send_request(req).await.map_err(|e| (PoolError::Request(e), None))
    }

    /// Connects and makes the new connection the shared one. Two requests may
    /// both open one at first; the later one stays, the other ends when idle.
    async fn open_h2(&self, settings: PoolSettings) -> Result<http2::SendRequest<Incoming>, PoolError> {
        let sender = self.connect_h2(settings).await?;
        *self.h2.lock().unwrap_or_else(|e| e.into_inner()) = Some(sender.clone());
        Ok(sender)
    }

    async fn connect_h2(&self, settings: PoolSettings) -> Result<http2::SendRequest<Incoming>, PoolError> {
        let stream = self.dial(settings).await?;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(stream))
            .await
            .map_err(PoolError::Handshake)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("upstream h2c connection closed: {e}");
            }
        });
        Ok(sender)
    }

    async fn dial(&self, settings: PoolSettings) -> Result<TcpStream, PoolError> {
        let addr = || self.addr.to_string();
        let stream = match tokio::time::timeout(settings.connect_timeout, TcpStream::connect(&*self.addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => return Err(PoolError::Connect { addr: addr(), source }),
            Err(_) => return Err(PoolError::ConnectTimeout { addr: addr() }),
        };
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    async fn connect(&self, settings: PoolSettings) -> Result<SendRequest<Incoming>, PoolError> {
        let stream = self.dial(settings).await?;
        let (sender, conn) =
            http1::Builder::new().handshake(TokioIo::new(stream)).await.map_err(PoolError::Handshake)?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!("upstream connection closed: {e}");
            }
        });
        Ok(sender)
    }
}
