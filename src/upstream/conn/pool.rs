//! The connections to one plain-text instance: keep-alive HTTP/1.1 connections,
//! and one multiplexed h2c connection for instances whose metadata says `h2c`.
//! The pool lives as long as the instance (it is carried across table swaps with
//! the instance's in-flight count), so a request reaches it through the picked
//! endpoint without a map lookup. Its locks are held for a push, a pop or a clone,
//! never across an `.await`. TLS instances use the shared pools in `client`.
//!
//! Bounded: at most `max_connections` open HTTP/1.1 connections per instance. A
//! request that finds them all busy waits (counted against the service's
//! `max_pending`; over it, it is refused at once) for one to finish, so a burst
//! never opens connections without bound. A retired pool (its instance draining or
//! removed) keeps no idle connection.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::h1::{H1Body, H1Limits, H1Pool, H1Settings, RequestHead, SendError};
use super::h2::{H2Body, H2Conn, H2SendError};
use super::slot::{Freed, Slot};
use super::UpstreamBody;

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("connect to {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("connect to {addr}: timed out")]
    ConnectTimeout { addr: String },
    #[error("handshake: {0}")]
    Handshake(hyper::Error),
    #[error("h2c handshake: {0}")]
    H2Handshake(h2::Error),
    #[error("request: {0}")]
    Request(hyper::Error),
    #[error("h2c request: {0}")]
    H2Request(H2SendError),
    #[error("too many requests waiting for a connection")]
    Pending,
}

impl PoolError {
    /// Whether the request never reached the instance's application.
    pub fn is_connect(&self) -> bool {
        matches!(
            self,
            PoolError::Connect { .. }
                | PoolError::ConnectTimeout { .. }
                | PoolError::Handshake(_)
                | PoolError::H2Handshake(_)
        )
    }
}

#[derive(Debug)]
pub struct InstancePool {
    addr: Box<str>,
    idle: Mutex<Vec<Idle>>,
    /// The h2c connection, shared by every request (cloned per request).
    h2: Mutex<Option<H2Conn>>,
    /// Open HTTP/1.1 connections (idle, busy or being made).
    open: Arc<AtomicUsize>,
    /// Signalled when a connection is returned or closes: waiters look again.
    freed: Arc<Freed>,
    retired: AtomicBool,
    /// HTTP/1.1 connections driven from the request's own task (`h1`), counted
    /// in the same `open`: plain requests use these; `idle` above holds hyper's,
    /// for upgrades.
    pub h1: H1Pool,
}

#[derive(Debug)]
struct Idle {
    sender: SendRequest<UpstreamBody>,
    since: Instant,
}

/// Pool settings shared by every instance.
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    pub connect_timeout: Duration,
    pub max_idle: usize,
    /// How long an unused connection is kept (`timeouts.upstream_idle`).
    pub idle_timeout: Duration,
}

impl PoolSettings {
    /// The same bounds for the in-task HTTP/1.1 connections.
    pub fn h1(self) -> H1Settings {
        H1Settings { connect_timeout: self.connect_timeout, max_idle: self.max_idle, idle_timeout: self.idle_timeout }
    }
}

/// The limits of one send: the instance's connection cap and the service's queue.
#[derive(Debug, Clone, Copy)]
pub struct SendLimits<'a> {
    pub max_connections: usize,
    pub max_pending: usize,
    pub pending: &'a AtomicUsize,
}

/// Counts one waiting request until dropped.
struct PendingGuard<'a>(&'a AtomicUsize);

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection for one request.
enum Lease {
    Ready(SendRequest<UpstreamBody>),
    /// A slot in `open` is reserved: connect.
    Connect,
}

impl InstancePool {
    pub fn new(addr: &str) -> InstancePool {
        let (open, freed) = (Arc::new(AtomicUsize::new(0)), Arc::new(Freed::default()));
        InstancePool {
            addr: addr.into(),
            idle: Mutex::new(Vec::new()),
            h2: Mutex::new(None),
            h1: H1Pool::sharing(addr, open.clone(), freed.clone()),
            open,
            freed,
            retired: AtomicBool::new(false),
        }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Open HTTP/1.1 connections.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Closes every idle connection now; with `retire`, none are kept from now on
    /// (the instance is draining or gone: in-flight requests finish, then their
    /// connections close).
    pub fn retire(&self, retire: bool) {
        self.retired.store(retire, Ordering::Relaxed);
        self.h1.retire(retire);
        if retire {
            self.idle.lock().unwrap_or_else(|e| e.into_inner()).clear();
            self.h2.lock().unwrap_or_else(|e| e.into_inner()).take();
        }
    }

    /// Sends `req` (origin-form URI) on one of hyper's pooled connections, or a
    /// new one: used for upgrades only, whose 101 hands the connection to the
    /// relay (every other HTTP/1.1 request goes through `h1`, `send_h1`). A
    /// request that a pooled connection could not send (it closed meanwhile) is
    /// retried on another, since nothing of it reached the instance. When no
    /// connection can be made the request comes back untouched, for another instance.
    pub async fn send(
        &self,
        mut req: Request<UpstreamBody>,
        settings: PoolSettings,
        limits: SendLimits<'_>,
    ) -> Result<Response<Incoming>, (PoolError, Option<Request<UpstreamBody>>)> {
        loop {
            let mut sender = match self.lease(settings, limits).await {
                Ok(Lease::Ready(sender)) => sender,
                Ok(Lease::Connect) => match self.connect(settings).await {
                    Ok(sender) => sender,
                    Err(e) => return Err((e, Some(req))),
                },
                Err(e) => return Err((e, Some(req))),
            };
            match sender.try_send_request(req).await {
                Ok(res) => {
                    self.checkin(sender, settings);
                    return Ok(res);
                }
                Err(mut e) => match e.take_message() {
                    // The connection closed before taking it: nothing was sent, try another.
                    Some(unsent) => req = unsent,
                    None => return Err((PoolError::Request(e.into_error()), None)),
                },
            }
        }
    }

    /// Sends a plain (non-upgrade) request over the in-task HTTP/1.1 connections
    /// (`h1`), within the same limits as [`InstancePool::send`]; the body comes
    /// back when nothing of the request reached the instance. Not an `async fn`:
    /// the request's future is `h1`'s own, with no layer (and copy of the
    /// arguments) of this one around it.
    pub fn send_h1<'a>(
        &'a self,
        head: RequestHead<'a>,
        body: UpstreamBody,
        settings: PoolSettings,
        limits: SendLimits<'a>,
    ) -> impl Future<Output = Result<Response<H1Body>, SendError<UpstreamBody>>> + Send + 'a {
        let limits = H1Limits {
            max_connections: limits.max_connections,
            max_pending: limits.max_pending,
            pending: limits.pending,
        };
        self.h1.send_limited(head, body, settings.h1(), limits)
    }

    /// A ready connection, a reserved slot for a new one, or — at the cap — a wait
    /// for one to free up.
    async fn lease(&self, settings: PoolSettings, limits: SendLimits<'_>) -> Result<Lease, PoolError> {
        let announced = self.freed.announce();
        let mut waiting: Option<PendingGuard<'_>> = None;
        loop {
            // Registered before looking, so a return between the look and the wait is not missed.
            let freed = announced.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(sender) = self.checkout(settings) {
                return Ok(Lease::Ready(sender));
            }
            let reserved = self
                .open
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| (n < limits.max_connections).then_some(n + 1))
                .is_ok();
            if reserved {
                return Ok(Lease::Connect);
            }
            if waiting.is_none() {
                if limits.pending.fetch_add(1, Ordering::Relaxed) >= limits.max_pending {
                    limits.pending.fetch_sub(1, Ordering::Relaxed);
                    return Err(PoolError::Pending);
                }
                waiting = Some(PendingGuard(limits.pending));
            }
            // A busy connection (response head out, body streaming) is the first to be free.
            if let Some(mut busy) = self.checkout_busy() {
                if busy.ready().await.is_ok() {
                    return Ok(Lease::Ready(busy));
                }
                continue;
            }
            freed.await;
        }
    }

    /// The most recently used connection that can take a request now. Busy ones
    /// (still streaming a response body) stay; closed and expired ones go.
    fn checkout(&self, settings: PoolSettings) -> Option<SendRequest<UpstreamBody>> {
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
                if entry.since.elapsed() <= settings.idle_timeout {
                    return Some(entry.sender);
                }
            }
        }
        None
    }

    /// The oldest connection still busy with a response body, to wait on.
    fn checkout_busy(&self) -> Option<SendRequest<UpstreamBody>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let i = idle.iter().position(|e| !e.sender.is_closed())?;
        Some(idle.remove(i).sender)
    }

    /// Returns a connection right after its response head: it becomes ready
    /// again when the body has been read.
    fn checkin(&self, sender: SendRequest<UpstreamBody>, settings: PoolSettings) {
        if sender.is_closed() || self.retired.load(Ordering::Relaxed) {
            return;
        }
        {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            if idle.len() < settings.max_idle {
                idle.push(Idle { sender, since: Instant::now() });
            }
        }
        self.freed.wake();
    }

    /// Sends `req` (absolute URI) as a stream of the instance's h2c connection
    /// (`h2`: from this task, no dispatch task between), opening it when there is
    /// none or it closed. As for HTTP/1.1, the body of a request that no
    /// connection could carry comes back untouched.
    pub async fn send_h2(
        &self,
        req: Request<UpstreamBody>,
        settings: PoolSettings,
    ) -> Result<Response<H2Body>, (PoolError, Option<UpstreamBody>)> {
        let cached = {
            let h2 = self.h2.lock().unwrap_or_else(|e| e.into_inner());
            h2.as_ref().filter(|c| !c.is_closed()).cloned()
        };
        let mut conn = match cached {
            Some(conn) => conn,
            None => match self.open_h2(settings).await {
                Ok(conn) => conn,
                Err(e) => return Err((e, Some(req.into_body()))),
            },
        };
        if conn.ready().await.is_err() {
            // The cached connection closed under us: one fresh one on this instance.
            conn = match self.open_h2(settings).await {
                Ok(conn) => conn,
                Err(e) => return Err((e, Some(req.into_body()))),
            };
            if let Err(e) = conn.ready().await {
                return Err((PoolError::H2Handshake(e), Some(req.into_body())));
            }
        }
        conn.send(req).await.map_err(|(e, unsent)| (PoolError::H2Request(e), unsent))
    }

    /// Connects and makes the new connection the shared one. Two requests may
    /// both open one at first; the later one stays, the other ends when idle.
    async fn open_h2(&self, settings: PoolSettings) -> Result<H2Conn, PoolError> {
        let stream = self.dial(settings).await?;
        let conn = H2Conn::handshake(stream).await.map_err(PoolError::H2Handshake)?;
        if !self.retired.load(Ordering::Relaxed) {
            *self.h2.lock().unwrap_or_else(|e| e.into_inner()) = Some(conn.clone());
        }
        Ok(conn)
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

    /// Makes a new HTTP/1.1 connection in the slot `lease` reserved; the slot is
    /// given back when the connection ends (or could not be made).
    async fn connect(&self, settings: PoolSettings) -> Result<SendRequest<UpstreamBody>, PoolError> {
        let slot = Slot { open: self.open.clone(), freed: self.freed.clone() };
        let stream = self.dial(settings).await?;
        let (sender, conn) =
            http1::Builder::new().handshake(TokioIo::new(stream)).await.map_err(PoolError::Handshake)?;
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!("upstream connection closed: {e}");
            }
        });
        Ok(sender)
    }
}
