//! A deadline at every stage of a client connection, enforced inside the
//! socket's own reads and writes, so it costs no task and no timer while data
//! flows: one lazily armed timer for reads and one for writes.
//!
//! The stages, by what the connection is doing:
//! - **head**: from accept (covering protocol detection and the TLS handshake,
//!   which run on top of this socket) and, on HTTP/1.1, from the first byte
//!   after an idle spell, to a complete request head: `timeouts.header_read`.
//! - **idle**: no request in flight (HTTP/1.1 keep-alive, an HTTP/2 connection
//!   without streams) since the last response ended, or requests in flight but
//!   no byte either way: `timeouts.client_idle`. HTTP/2 frames without requests
//!   (PING, SETTINGS) do not extend it.
//! - **send**: a write the client does not take (it stopped reading): `timeouts.send`.
//! - **tunnel**: an upgraded (WebSocket) relay with no byte either way: `timeouts.tunnel_idle`.
//!
//! A deadline that passes fails the next read or write with `TimedOut`, which
//! ends hyper's connection (or the relay, or the handshake); it is counted once
//! in `switchyard_client_timeouts_total{stage}`. The socket also holds the
//! connection's slot under `limits.max_connections`, so an upgraded connection
//! counts against the limit until its relay ends.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{sleep_until, Instant, Sleep};

use super::accept::ConnectionSlot;
use crate::config::Config;
use crate::metrics as m;

/// Which deadline closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    Head,
    Idle,
    Send,
    Tunnel,
}

impl Stage {
    const ALL: [Stage; 4] = [Stage::Head, Stage::Idle, Stage::Send, Stage::Tunnel];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Head => "head",
            Stage::Idle => "idle",
            Stage::Send => "send",
            Stage::Tunnel => "tunnel",
        }
    }
}

/// The deadlines of one listener and their counters, shared by its connections.
pub(crate) struct Deadlines {
    head: Duration,
    idle: Duration,
    send: Duration,
    tunnel: Duration,
    closed: [metrics::Counter; 4],
    /// A head that did not arrive in time is also refused client input.
    bad_head: metrics::Counter,
}

impl Deadlines {
    pub fn new(listener: &str, config: &Config) -> Deadlines {
        let t = &config.timeouts;
        Deadlines {
            head: t.header_read,
            idle: t.client_idle,
            send: t.send,
            tunnel: t.tunnel_idle,
            closed: Stage::ALL.map(
                |s| metrics::counter!(m::CLIENT_TIMEOUTS, "listener" => listener.to_string(), "stage" => s.as_str()),
            ),
            bad_head: metrics::counter!(m::BAD_REQUESTS, "listener" => listener.to_string(), "reason" => "header_timeout"),
        }
    }
}

const NONE: u64 = u64::MAX;

/// What the connection is doing, shared between its socket and its requests.
pub(crate) struct ConnState {
    deadlines: Arc<Deadlines>,
    base: Instant,
    /// Milliseconds since `base`.
    last_activity: AtomicU64,
    /// Start of the head being awaited, or NONE while a request is in flight or the connection idles.
    head_since: AtomicU64,
    /// End of the last exchange.
    idle_since: AtomicU64,
    in_flight: AtomicU32,
    h2: AtomicBool,
    upgraded: AtomicBool,
    fired: AtomicBool,
}

impl ConnState {
    pub fn new(deadlines: Arc<Deadlines>) -> Arc<ConnState> {
        Arc::new(ConnState {
            deadlines,
            base: Instant::now(),
            last_activity: AtomicU64::new(0),
            head_since: AtomicU64::new(0),
            idle_since: AtomicU64::new(0),
            in_flight: AtomicU32::new(0),
            h2: AtomicBool::new(false),
            upgraded: AtomicBool::new(false),
            fired: AtomicBool::new(false),
        })
    }

    fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }

    fn at(&self, ms: u64, after: Duration) -> Instant {
        self.base + Duration::from_millis(ms) + after
    }

    /// A request head is complete; the exchange lasts until the returned guard
    /// (held by the response body) is dropped.
    pub fn start_request(self: &Arc<Self>, h2: bool) -> Exchange {
        if h2 {
            self.h2.store(true, Ordering::Relaxed);
        }
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_since.store(NONE, Ordering::Relaxed);
        Exchange(self.clone())
    }

    /// The connection has become a byte relay (after a 101).
    pub fn upgraded(&self) {
        self.upgraded.store(true, Ordering::Relaxed);
    }

    fn on_read(&self) {
        let now = self.now_ms();
        self.last_activity.store(now, Ordering::Relaxed);
        // HTTP/1.1: bytes after an idle spell begin the next head, which has
        // `header_read` to complete (a slow-loris on a kept-alive connection).
        if !self.h2.load(Ordering::Relaxed)
            && !self.upgraded.load(Ordering::Relaxed)
            && self.in_flight.load(Ordering::Acquire) == 0
            && self.head_since.load(Ordering::Relaxed) == NONE
        {
            self.head_since.store(now, Ordering::Relaxed);
        }
    }

    fn on_write(&self) {
        self.last_activity.store(self.now_ms(), Ordering::Relaxed);
    }

    /// The deadline reads are held to now, and the stage it belongs to.
    fn read_deadline(&self) -> (Instant, Stage) {
        let d = &self.deadlines;
        let last = self.last_activity.load(Ordering::Relaxed);
        if self.upgraded.load(Ordering::Relaxed) {
            return (self.at(last, d.tunnel), Stage::Tunnel);
        }
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return (self.at(last, d.idle), Stage::Idle);
        }
        match self.head_since.load(Ordering::Relaxed) {
            NONE => (self.at(self.idle_since.load(Ordering::Relaxed), d.idle), Stage::Idle),
            since => (self.at(since, d.head), Stage::Head),
        }
    }

    /// Counts the first deadline that passed; every later read or write fails too.
    fn fire(&self, stage: Stage) -> io::Error {
        if !self.fired.swap(true, Ordering::AcqRel) {
            self.deadlines.closed[stage as usize].increment(1);
            if stage == Stage::Head {
                self.deadlines.bad_head.increment(1);
            }
        }
        timed_out(stage)
    }

    fn expired(&self) -> Option<io::Error> {
        self.fired.load(Ordering::Acquire).then(|| io::Error::new(io::ErrorKind::TimedOut, "connection timed out"))
    }
}

fn timed_out(stage: Stage) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("client {} timeout", stage.as_str()))
}

/// One request in flight; dropping it (with the response body) ends the exchange.
pub(crate) struct Exchange(Arc<ConnState>);

impl Drop for Exchange {
    fn drop(&mut self) {
        let state = &self.0;
        let now = state.now_ms();
        state.idle_since.store(now, Ordering::Relaxed);
        state.last_activity.store(now, Ordering::Relaxed);
        state.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A client socket with the deadlines of [`ConnState`], holding the connection's slot.
pub(crate) struct Guarded<IO> {
    io: IO,
    state: Arc<ConnState>,
    read_timer: Option<Pin<Box<Sleep>>>,
    write_timer: Option<Pin<Box<Sleep>>>,
    /// When the current blocked write must have gone through.
    write_deadline: Option<Instant>,
    _slot: ConnectionSlot,
}

impl<IO> Guarded<IO> {
    pub fn new(io: IO, slot: ConnectionSlot, state: Arc<ConnState>) -> Guarded<IO> {
        Guarded { io, state, read_timer: None, write_timer: None, write_deadline: None, _slot: slot }
    }
}

/// Polls `timer` towards `deadline`. The timer is only moved earlier; a timer
/// that fires before a deadline that has moved later is re-armed, so a busy
/// connection touches the timer wheel about once per deadline period, not per read.
fn poll_deadline(timer: &mut Option<Pin<Box<Sleep>>>, deadline: Instant, cx: &mut Context<'_>) -> Poll<()> {
    match timer {
        Some(t) if t.deadline() > deadline || t.is_elapsed() => t.as_mut().reset(deadline),
        Some(_) => {}
        None => *timer = Some(Box::pin(sleep_until(deadline))),
    }
    match timer {
        Some(t) => t.as_mut().poll(cx),
        None => Poll::Pending,
    }
}

impl<IO: AsyncRead + Unpin> Guarded<IO> {
    /// After a read returned Pending: fails it once its deadline has passed. The
    /// timer says so, without a clock read: it never fires before its own deadline,
    /// so one that fired at the current deadline (or later) means it has passed; one
    /// that fired at an earlier deadline (activity has moved it since) is re-armed.
    fn poll_read_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Bounded: each pass either returns or re-arms the timer to a later deadline.
        for _ in 0..4 {
            let (deadline, stage) = self.state.read_deadline();
            if poll_deadline(&mut self.read_timer, deadline, cx).is_pending() {
                return Poll::Pending;
            }
            if self.read_timer.as_ref().is_some_and(|t| t.deadline() >= deadline) {
                return Poll::Ready(Err(self.state.fire(stage)));
            }
        }
        Poll::Pending
    }
}

impl Guarded<TcpStream> {
    /// Looks at the bytes waiting in the socket without taking them (hyper reads
    /// them next), under the read deadline, until `decide` can tell from them what
    /// it needs; `decide` sees an empty slice once the client has closed.
    pub fn poll_peek<T>(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
        decide: &impl Fn(&[u8]) -> Option<T>,
    ) -> Poll<io::Result<T>> {
        if let Some(e) = self.state.expired() {
            return Poll::Ready(Err(e));
        }
        loop {
            match self.io.poll_read_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    return match self.poll_read_deadline(cx) {
                        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                        _ => Poll::Pending,
                    }
                }
            }
            // Peeked inside `try_io`: when `decide` needs more bytes, the readiness seen
            // before this peek is cleared, so the next pass waits for new bytes instead
            // of peeking the same ones again (bytes that came meanwhile keep it set).
            let io = &self.io;
            let peeked = io.try_io(Interest::READABLE, || {
                let mut peek = ReadBuf::new(buf);
                match io.poll_peek(cx, &mut peek) {
                    Poll::Ready(Ok(_)) => decide(peek.filled()).ok_or_else(|| io::ErrorKind::WouldBlock.into()),
                    Poll::Ready(Err(e)) => Err(e),
                    Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
                }
            });
            match peeked {
                Ok(t) => return Poll::Ready(Ok(t)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Guarded<IO> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(e) = this.state.expired() {
            return Poll::Ready(Err(e));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.state.on_read();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.poll_read_deadline(cx),
        }
    }
}

impl<IO: AsyncWrite + Unpin> Guarded<IO> {
    fn wrote<T>(&mut self, result: Poll<io::Result<T>>, cx: &mut Context<'_>, progress: bool) -> Poll<io::Result<T>> {
        match result {
            Poll::Ready(r) => {
                self.write_deadline = None;
                if progress && r.is_ok() {
                    self.state.on_write();
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                let deadline = *self.write_deadline.get_or_insert_with(|| Instant::now() + self.state.deadlines.send);
                if Instant::now() >= deadline || poll_deadline(&mut self.write_timer, deadline, cx).is_ready() {
                    return Poll::Ready(Err(self.state.fire(Stage::Send)));
                }
                Poll::Pending
            }
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Guarded<IO> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(e) = this.state.expired() {
            return Poll::Ready(Err(e));
        }
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        this.wrote(r, cx, !buf.is_empty())
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(e) = this.state.expired() {
            return Poll::Ready(Err(e));
        }
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.wrote(r, cx, true)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_flush(cx);
        this.wrote(r, cx, false)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_shutdown(cx);
        this.wrote(r, cx, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn deadlines() -> Arc<Deadlines> {
        let config = crate::config::Config::parse(
            "[timeouts]\nheader_read = \"10s\"\nclient_idle = \"60s\"\nsend = \"30s\"\ntunnel_idle = \"300s\"\n\
             [[listener]]\nname = \"w\"\nprotocol = \"http\"\nlisten = \"127.0.0.1:0\"\n",
        )
        .unwrap();
        Arc::new(Deadlines::new("w", &config))
    }

    fn slot() -> ConnectionSlot {
        ConnectionSlot::detached()
    }

    /// Reads until the guarded side fails, returning when (in paused time) and how.
    async fn read_fails(g: &mut Guarded<tokio::io::DuplexStream>) -> (Duration, io::ErrorKind) {
        let start = Instant::now();
        let mut buf = [0u8; 64];
        loop {
            match g.read(&mut buf).await {
                Ok(0) => panic!("eof"),
                Ok(_) => continue,
                Err(e) => return (start.elapsed(), e.kind()),
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_is_cut_at_header_read() {
        let (client, server) = tokio::io::duplex(1024);
        let state = ConnState::new(deadlines());
        let mut g = Guarded::new(server, slot(), state);
        let (took, kind) = read_fails(&mut g).await;
        assert_eq!(kind, io::ErrorKind::TimedOut);
        assert_eq!(took, Duration::from_secs(10));
        drop(client);
    }

    /// A connected pair of real sockets: peeking needs a `TcpStream`.
    async fn tcp_pair() -> (tokio::net::TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    #[tokio::test]
    async fn peeking_waits_for_enough_bytes_and_leaves_them_for_the_reader() {
        let (mut client, server) = tcp_pair().await;
        let mut g = Guarded::new(server, slot(), ConnState::new(deadlines()));
        client.write_all(b"PRI").await.unwrap();
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            client.write_all(b" * HTTP").await.unwrap();
            client
        });
        let mut buf = [0u8; 8];
        let n = std::future::poll_fn(|cx| g.poll_peek(cx, &mut buf, &|b: &[u8]| (b.len() >= 8).then_some(b.len())))
            .await
            .unwrap();
        assert_eq!(&buf[..n], b"PRI * HT");
        let _client = writer.await.unwrap();
        let mut read = [0u8; 16];
        assert_eq!(g.read(&mut read).await.unwrap(), 10, "the peeked bytes are still there");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_is_cut_at_header_read_while_peeking() {
        let (_client, server) = tcp_pair().await;
        let mut g = Guarded::new(server, slot(), ConnState::new(deadlines()));
        let start = Instant::now();
        let mut buf = [0u8; 8];
        let e = std::future::poll_fn(|cx| g.poll_peek(cx, &mut buf, &|b: &[u8]| Some(b.len()))).await.unwrap_err();
        assert_eq!((start.elapsed(), e.kind()), (Duration::from_secs(10), io::ErrorKind::TimedOut));
    }

    #[tokio::test(start_paused = true)]
    async fn keep_alive_idle_is_client_idle_then_a_new_head_gets_header_read() {
        let (mut client, server) = tokio::io::duplex(1024);
        let state = ConnState::new(deadlines());
        let mut g = Guarded::new(server, slot(), state.clone());
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        assert!(g.read(&mut buf).await.unwrap() > 0);
        drop(state.start_request(false));
        // Idle: 60 s, not the 10 s of a head.
        tokio::time::sleep(Duration::from_secs(50)).await;
        client.write_all(b"G").await.unwrap();
        assert_eq!(g.read(&mut buf).await.unwrap(), 1);
        // A byte arrived: the rest of that head has header_read.
        let (took, kind) = read_fails(&mut g).await;
        assert_eq!((took, kind), (Duration::from_secs(10), io::ErrorKind::TimedOut));
        assert_eq!(state.read_deadline().1, Stage::Head);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_counts_from_the_end_of_the_last_exchange_and_h2_frames_do_not_extend_it() {
        let (mut client, server) = tokio::io::duplex(1024);
        let state = ConnState::new(deadlines());
        let mut g = Guarded::new(server, slot(), state.clone());
        let exchange = state.start_request(true);
        // In flight with bytes flowing: never cut.
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_secs(50)).await;
            g.write_all(b"data").await.unwrap();
        }
        drop(exchange);
        // PINGs every 20 s do not keep an HTTP/2 connection without streams alive.
        let pinger = tokio::spawn(async move {
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_secs(20)).await;
                if client.write_all(b"ping").await.is_err() {
                    return;
                }
            }
        });
        let (took, kind) = read_fails(&mut g).await;
        assert_eq!((took, kind), (Duration::from_secs(60), io::ErrorKind::TimedOut));
        pinger.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_does_not_read_is_cut_at_send() {
        let (client, server) = tokio::io::duplex(64);
        let state = ConnState::new(deadlines());
        let mut g = Guarded::new(server, slot(), state.clone());
        let _exchange = state.start_request(false);
        let start = Instant::now();
        let e = g.write_all(&[0u8; 4096]).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), Duration::from_secs(30));
        drop(client);
    }

    #[tokio::test(start_paused = true)]
    async fn an_upgraded_relay_has_the_tunnel_timeout() {
        let (_client, server) = tokio::io::duplex(64);
        let state = ConnState::new(deadlines());
        let mut g = Guarded::new(server, slot(), state.clone());
        drop(state.start_request(false));
        state.upgraded();
        let (took, kind) = read_fails(&mut g).await;
        assert_eq!((took, kind), (Duration::from_secs(300), io::ErrorKind::TimedOut));
    }
}
