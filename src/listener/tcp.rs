//! The L4 proxy: `tcp` listeners, and the relay that `tls_passthrough` listeners
//! use once they know the service.
//!
//! Per connection: one table `load()`, the service's candidates (round-robin, or
//! Maglev on the client IP, then the fallback order, skipping ejected and unhealthy
//! instances), a connect within `timeouts.connect` — and when that fails, the next
//! candidate, each at most once, every outcome reported to the service's outlier
//! detection — then a relay both ways until both sides have
//! closed. Half-close is kept: when one side stops sending, the other side's write
//! half is shut down and the opposite direction goes on. A connection with no bytes
//! either way for `timeouts.tcp_idle` is closed.
//!
//! The relay holds its endpoint (`Arc`), not the table: when an instance leaves the
//! table its established connections stay until they close, and new connections go
//! elsewhere. They end early only when the shutdown grace period is over.

use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use metrics::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use super::accept::{accept_loop, Accepted, ListenerContext};
use crate::config::{Balance, Config, HashKey, Timeouts};
use crate::http::route::client_ip_key;
use crate::metrics as m;
use crate::upstream::conn::UpstreamError;
use crate::upstream::instance::now_ms;
use crate::upstream::outlier::Outcome;
use crate::upstream::{Endpoint, Pick, Service, SharedTable};

/// Bytes buffered per direction of a relay. 32 KiB moves bulk data in few
/// syscalls while keeping an idle connection's memory small (two buffers).
pub const RELAY_BUFFER: usize = 32 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum TcpError {
    #[error("service {0:?} is not in the upstream table")]
    UnknownService(String),
    #[error("service {0:?} has no live instance")]
    NoInstance(Arc<str>),
    #[error("no instance of {service:?} accepted a connection ({attempts} tried; last {addr}: {source})")]
    Connect { service: Arc<str>, attempts: usize, addr: Arc<str>, source: io::Error },
    #[error("relay failed: {0}")]
    Relay(#[source] io::Error),
    #[error("no bytes either way for {0:?}")]
    Idle(Duration),
}

/// Metric handles of one L4 listener, registered once, shared by its connections.
#[derive(Debug)]
pub struct L4Stats {
    /// Bytes written to upstreams (what clients sent).
    pub to_upstream: Counter,
    /// Bytes written to clients (what upstreams sent).
    pub to_client: Counter,
    pub connect_failures: Counter,
}

impl L4Stats {
    pub fn new(listener: &str) -> L4Stats {
        let bytes = |direction: &'static str| metrics::counter!(m::TCP_BYTES, "listener" => listener.to_string(), "direction" => direction);
        L4Stats {
            to_upstream: bytes("to_upstream"),
            to_client: bytes("to_client"),
            connect_failures: metrics::counter!(m::TCP_CONNECT_FAILURES, "listener" => listener.to_string()),
        }
    }
}

/// Bytes one finished relay moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Relayed {
    pub to_upstream: u64,
    pub to_client: u64,
}

/// What one L4 listener needs to reach its upstreams.
#[derive(Debug)]
pub struct L4Proxy {
    listener: Arc<str>,
    table: SharedTable,
    connect_timeout: Duration,
    idle_timeout: Duration,
    stats: L4Stats,
}

/// How a connection chooses among a service's instances.
pub fn pick_for(balance: &Balance, peer: SocketAddr) -> Pick {
    match balance {
        Balance::Hash(HashKey::ClientIp) => Pick::Hash(client_ip_key(peer.ip())),
        Balance::Weighted => Pick::Weighted,
        Balance::LeastRequest => Pick::LeastRequest,
        // Validation admits only client_ip for L4; anything else falls back to round-robin.
        Balance::RoundRobin | Balance::Hash(_) => Pick::RoundRobin,
    }
}

impl L4Proxy {
    pub fn new(listener: &str, table: SharedTable, timeouts: &Timeouts) -> L4Proxy {
        L4Proxy {
            listener: listener.into(),
            table,
            connect_timeout: timeouts.connect,
            idle_timeout: timeouts.tcp_idle,
            stats: L4Stats::new(listener),
        }
    }

    pub fn listener(&self) -> &str {
        &self.listener
    }

    /// Connects to an instance of `service` and relays until both sides are done.
    /// `first_bytes` (what the client already sent, e.g. a ClientHello read for
    /// its SNI) is written to the upstream before anything else.
    pub async fn proxy<C>(
        &self,
        client: &mut C,
        peer: SocketAddr,
        name: &str,
        balance: &Balance,
        first_bytes: &[u8],
    ) -> Result<Relayed, TcpError>
    where
        C: AsyncRead + AsyncWrite + Unpin,
    {
        // One table load; the service (and, below, the endpoint) is held by Arc, so
        // no guard is kept across awaits and later table swaps do not touch us.
        let Some(service) = self.table.load().service(name).cloned() else {
            // A service that never had an instance: counted under its name (the
            // same series the registry's ServiceStats renders).
            crate::upstream::stats::ServiceStats::of(name).error(UpstreamError::NoInstance);
            return Err(TcpError::UnknownService(name.to_string()));
        };
        let (mut upstream, endpoint) = self.connect(&service, pick_for(balance, peer)).await?;

        let _inflight = endpoint.load.start();
        tracing::debug!(listener = %self.listener, %peer, service = %service.name, upstream = %endpoint.addr, "relaying");
        relay(client, &mut upstream, first_bytes, self.idle_timeout, &self.stats).await
    }

    /// The candidates in order (the picked instance, then the fallback order,
    /// skipping ejected, unhealthy and full ones), each tried at most once; every
    /// try reports its outcome to the service, so a refusing instance is ejected.
    async fn connect(&self, service: &Service, how: Pick) -> Result<(TcpStream, Arc<Endpoint>), TcpError> {
        let mut candidates = service.candidates(how, now_ms());
        let mut last = None;
        let mut attempts = 0;
        for endpoint in candidates.by_ref() {
            attempts += 1;
            match connect_one(&endpoint.addr, self.connect_timeout).await {
                Ok(stream) => {
                    if attempts > 1 {
                        tracing::debug!(listener = %self.listener, service = %service.name, upstream = %endpoint.addr, attempts, "connected after failover");
                    }
                    service.observe(endpoint, Outcome::Success);
                    return Ok((stream, endpoint.clone()));
                }
                Err(e) => {
                    self.stats.connect_failures.increment(1);
                    service.state.stats.error(UpstreamError::Connect);
                    service.observe(endpoint, Outcome::ConnectFailure);
                    tracing::debug!(listener = %self.listener, service = %service.name, upstream = %endpoint.addr, "connect failed: {e}");
                    last = Some((endpoint.addr.clone(), e));
                }
            }
        }
        let Some((addr, source)) = last else {
            let kind = if candidates.overloaded() { UpstreamError::Overloaded } else { UpstreamError::NoInstance };
            service.state.stats.error(kind);
            return Err(TcpError::NoInstance(service.name.clone()));
        };
        Err(TcpError::Connect { service: service.name.clone(), attempts, addr, source })
    }
}

async fn connect_one(addr: &str, limit: Duration) -> io::Result<TcpStream> {
    let stream = tokio::time::timeout(limit, TcpStream::connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("connect timed out after {limit:?}")))??;
    // Interactive protocols (databases, SSH) would otherwise wait on Nagle's algorithm.
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// A `tcp` listener, built: every connection goes to one service.
pub(crate) struct L4Listener {
    proxy: Arc<L4Proxy>,
    service: Arc<str>,
    balance: Arc<Balance>,
}

impl L4Listener {
    pub fn new(name: &str, table: SharedTable, service: &str, balance: &Balance, config: &Config) -> L4Listener {
        L4Listener {
            proxy: Arc::new(L4Proxy::new(name, table, &config.timeouts)),
            service: service.into(),
            balance: Arc::new(balance.clone()),
        }
    }

    pub async fn serve(self, name: &str, socket: TcpListener, ctx: &ListenerContext<'_>) {
        accept_loop(name, socket, ctx, |Accepted { mut stream, peer, slot }| {
            let (proxy, service, balance) = (self.proxy.clone(), self.service.clone(), self.balance.clone());
            ctx.spawn_tracked(async move {
                let result = proxy.proxy(&mut stream, peer, &service, &balance, &[]).await;
                log_end(proxy.listener(), peer, &result);
                drop(slot);
            });
        })
        .await
    }
}

/// Logs a finished connection at debug level: failures are per connection and
/// would flood the log under load; the metrics count them.
pub(crate) fn log_end(listener: &str, peer: SocketAddr, result: &Result<Relayed, TcpError>) {
    match result {
        Ok(r) => {
            tracing::debug!(%listener, %peer, to_upstream = r.to_upstream, to_client = r.to_client, "connection closed")
        }
        Err(e) => tracing::debug!(%listener, %peer, "connection ended: {e}"),
    }
}

/// Copies both ways between `client` and `upstream` until both directions have
/// ended (EOF read and the peer's write half shut down), a side fails, or no byte
/// moved for `idle`. `first_bytes` goes to the upstream before anything else.
pub async fn relay<C, U>(
    client: &mut C,
    upstream: &mut U,
    first_bytes: &[u8],
    idle: Duration,
    stats: &L4Stats,
) -> Result<Relayed, TcpError>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let mut up = Pipe::new(first_bytes);
    let mut down = Pipe::new(&[]);
    let mut last_activity = Instant::now();
    // The timer is re-armed only when it fires, not on every read: resetting a
    // timer per read would cost more than the copy itself at high rates.
    let mut timer = pin!(tokio::time::sleep(idle));
    poll_fn(|cx| {
        let mut moved = false;
        let a = up.poll_transfer(cx, Pin::new(&mut *client), Pin::new(&mut *upstream), &stats.to_upstream, &mut moved);
        let b = down.poll_transfer(cx, Pin::new(&mut *upstream), Pin::new(&mut *client), &stats.to_client, &mut moved);
        match (a, b) {
            (Poll::Ready(Err(e)), _) | (_, Poll::Ready(Err(e))) => {
                return Poll::Ready(Err(TcpError::Relay(e)));
            }
            (Poll::Ready(Ok(())), Poll::Ready(Ok(()))) => {
                return Poll::Ready(Ok(Relayed { to_upstream: up.total, to_client: down.total }));
            }
            _ => {}
        }
        if moved {
            last_activity = Instant::now();
        }
        // Bounded: the second pass re-arms to a deadline in the future, or returns.
        for _ in 0..2 {
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let deadline = last_activity + idle;
            if Instant::now() >= deadline {
                return Poll::Ready(Err(TcpError::Idle(idle)));
            }
            timer.as_mut().reset(deadline);
        }
        Poll::Pending
    })
    .await
}

/// One direction of a relay: a buffer, and how far it has got.
struct Pipe {
    buf: Box<[u8]>,
    /// Bytes `buf[pos..cap]` are read and not yet written.
    pos: usize,
    cap: usize,
    read_done: bool,
    done: bool,
    total: u64,
}

impl Pipe {
    /// A pipe whose first bytes to write are `first`.
    fn new(first: &[u8]) -> Pipe {
        let mut buf = vec![0u8; RELAY_BUFFER.max(first.len())].into_boxed_slice();
        buf[..first.len()].copy_from_slice(first);
        Pipe { buf, pos: 0, cap: first.len(), read_done: false, done: false, total: 0 }
    }

    /// Moves bytes from `reader` to `writer`. Ready(Ok) once the reader is at EOF,
    /// everything read has been written and the writer's write half is shut down.
    /// Each pass ends in a Pending from one of the sockets at the latest when
    /// tokio's cooperative budget runs out, so one busy direction cannot starve the other.
    fn poll_transfer<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
        counter: &Counter,
        moved: &mut bool,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            if self.pos == self.cap && !self.read_done {
                let mut buf = ReadBuf::new(&mut self.buf);
                ready!(reader.as_mut().poll_read(cx, &mut buf))?;
                let n = buf.filled().len();
                self.pos = 0;
                self.cap = n;
                if n == 0 {
                    self.read_done = true;
                } else {
                    *moved = true;
                }
            }
            while self.pos < self.cap {
                let n = ready!(writer.as_mut().poll_write(cx, &self.buf[self.pos..self.cap]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.pos += n;
                self.total += n as u64;
                counter.increment(n as u64);
                *moved = true;
            }
            if self.read_done {
                // Half-close: the peer sees EOF, and the other direction keeps going.
                // A peer that is already gone cannot be told; that is not a failure of
                // this direction, whose bytes were all written.
                let _ = ready!(writer.as_mut().poll_shutdown(cx));
                self.done = true;
                return Poll::Ready(Ok(()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn stats() -> L4Stats {
        L4Stats { to_upstream: Counter::noop(), to_client: Counter::noop(), connect_failures: Counter::noop() }
    }

    #[tokio::test]
    async fn relays_both_ways_with_half_close_and_first_bytes() {
        let (mut client, mut gw_client) = tokio::io::duplex(1024);
        let (mut gw_upstream, mut upstream) = tokio::io::duplex(1024);
        let relay = tokio::spawn(async move {
            let stats = stats();
            relay(&mut gw_client, &mut gw_upstream, b"hello ", Duration::from_secs(10), &stats).await
        });
        client.write_all(b"world").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        upstream.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello world");
        // The client has stopped sending; the upstream can still answer.
        let answering = tokio::spawn(async move {
            upstream.write_all(&vec![7u8; 100_000]).await.unwrap();
            upstream.shutdown().await.unwrap();
        });
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        answering.await.unwrap();
        assert_eq!(answer.len(), 100_000);
        let relayed = relay.await.unwrap().unwrap();
        assert_eq!(relayed, Relayed { to_upstream: 11, to_client: 100_000 });
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connections_are_closed_and_active_ones_are_not() {
        let (mut client, mut gw_client) = tokio::io::duplex(1024);
        let (mut gw_upstream, mut upstream) = tokio::io::duplex(1024);
        let started = Instant::now();
        let relay = tokio::spawn(async move {
            let stats = stats();
            relay(&mut gw_client, &mut gw_upstream, &[], Duration::from_secs(10), &stats).await
        });
        // A byte every 6 s keeps it open past 10 s...
        let mut byte = [0u8; 1];
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_secs(6)).await;
            client.write_all(b"x").await.unwrap();
            upstream.read_exact(&mut byte).await.unwrap();
        }
        assert!(!relay.is_finished());
        // ...and 10 s of silence closes it.
        let result = relay.await.unwrap();
        assert!(matches!(result, Err(TcpError::Idle(_))), "{result:?}");
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_secs(34) && elapsed < Duration::from_secs(35), "{elapsed:?}");
    }

    #[tokio::test]
    async fn a_failing_side_ends_the_relay() {
        let (client, mut gw_client) = tokio::io::duplex(1024);
        let (mut gw_upstream, upstream) = tokio::io::duplex(1024);
        drop(upstream);
        let mut client = client;
        client.write_all(b"to nobody").await.unwrap();
        let stats = stats();
        let result = relay(&mut gw_client, &mut gw_upstream, &[], Duration::from_secs(10), &stats).await;
        assert!(matches!(result, Err(TcpError::Relay(_))), "{result:?}");
    }
}
