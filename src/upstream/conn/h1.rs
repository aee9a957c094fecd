//! The upstream HTTP/1.1 exchange, run inside the request's own task: the pool
//! keeps the connections themselves (a `TcpStream` and its read buffer), and a
//! request writes its head (encoded straight from the request's parts, with
//! extra lines such as `X-Forwarded-*` appended as bytes), streams its body
//! (`upload`) while it reads and parses the response head (`parse`), and hands
//! back a response whose body (`body`) reads from the connection — writing the
//! rest of the request body meanwhile, when the upstream answered before it
//! had all of it — and returns the connection to the pool when both are
//! complete. No per-connection task, no channels: what hyper's client
//! dispatcher does with two tasks and a channel hop happens in one.
//!
//! hyper stays for the client side of the gateway and for HTTP/2 and TLS upstreams.

mod body;
mod parse;
mod upload;

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName};
use http::{Method, Response};
use http_body::Body;
use http_body_util::{Either, Empty, Full, StreamBody};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::slot::{Freed, Slot};
use crate::shard;

pub use body::{H1Body, H1Upgraded};
pub use parse::{length, tokens, RawHeaders, MAX_CHUNK_LINE, MAX_HEAD, MAX_HEADERS};
pub(crate) use parse::{name_is, place, Line, Lines};
use upload::{Pump, Stop, Upload};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Read size for a response head (hyper's initial read buffer: 8 KiB).
const READ_SIZE: usize = 8 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    #[error("connect to {addr}: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("connect to {addr}: timed out")]
    ConnectTimeout { addr: String },
    #[error("upstream i/o: {0}")]
    Io(#[from] io::Error),
    #[error("upstream closed the connection before a response")]
    ClosedBeforeResponse,
    #[error("upstream closed the connection inside the body")]
    ClosedInBody,
    #[error("response head larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("malformed response head: {0}")]
    Parse(httparse::Error),
    #[error("invalid response: {0}")]
    Invalid(&'static str),
    #[error("malformed chunked body: {0}")]
    Chunk(&'static str),
    #[error("request body: {0}")]
    RequestBody(BoxError),
    #[error("request body: {0}")]
    RequestLength(&'static str),
    #[error("too many requests waiting for a connection")]
    Pending,
}

impl H1Error {
    /// Nothing reached the instance: the request may go to another one.
    pub fn is_connect(&self) -> bool {
        matches!(self, H1Error::Connect { .. } | H1Error::ConnectTimeout { .. } | H1Error::Pending)
    }
}

/// A failed send; `unsent` is the request body when nothing of the request
/// reached the instance (a connect failure), for another instance to take.
#[derive(Debug)]
pub struct SendError<B> {
    pub error: H1Error,
    pub unsent: Option<B>,
}

/// A request body that can be sent again when a pooled connection turns out to
/// have been closed before it answered: a buffered body gives a copy (a
/// reference count, no allocation); a streamed one cannot, once read from.
pub trait Replay: Sized {
    fn replay(&self) -> Option<Self>;
}

impl Replay for Full<Bytes> {
    fn replay(&self) -> Option<Self> {
        Some(self.clone())
    }
}

impl Replay for Empty<Bytes> {
    fn replay(&self) -> Option<Self> {
        Some(Empty::new())
    }
}

impl Replay for hyper::body::Incoming {
    fn replay(&self) -> Option<Self> {
        None
    }
}

impl<S> Replay for StreamBody<S> {
    fn replay(&self) -> Option<Self> {
        None
    }
}

impl<L: Replay, R: Replay> Replay for Either<L, R> {
    fn replay(&self) -> Option<Self> {
        match self {
            Either::Left(l) => l.replay().map(Either::Left),
            Either::Right(r) => r.replay().map(Either::Right),
        }
    }
}

/// Settings shared by every instance's pool.
#[derive(Debug, Clone, Copy)]
pub struct H1Settings {
    pub connect_timeout: Duration,
    /// Idle connections kept per instance and per worker (`crate::shard`), as
    /// nginx's `keepalive` is per worker process.
    pub max_idle: usize,
    /// How long an unused connection is kept (`timeouts.upstream_idle`).
    pub idle_timeout: Duration,
}

/// The bounds of one send: the instance's cap on open connections, and the
/// service's queue of requests waiting for one (`max_pending`; over it a
/// request is refused at once, `H1Error::Pending`).
#[derive(Debug, Clone, Copy)]
pub struct H1Limits<'a> {
    pub max_connections: usize,
    pub max_pending: usize,
    pub pending: &'a AtomicUsize,
}

/// What to send: the parts of the request that make its head. `target` is the
/// origin form (path and query). `extra` are header lines (name, value) written
/// after `headers`, such as the gateway's `X-Forwarded-*` set; `skip` names
/// headers of `headers` not to write (those `extra` replaces).
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    pub method: &'a Method,
    pub target: &'a str,
    pub headers: &'a HeaderMap,
    pub extra: &'a [(&'static str, &'a [u8])],
    pub skip: &'a [HeaderName],
    /// The response's forwarded header lines may stay bytes ([`parse::RawHeaders`],
    /// in its body): its client is the gateway's own HTTP/1.1 server. Never set
    /// for an upgrade.
    pub raw_response: bool,
}

/// One pooled connection and the bytes read from it but not yet consumed.
#[derive(Debug)]
struct Conn {
    io: TcpStream,
    buf: BytesMut,
    /// Its place in the instance's count of open connections, given back on drop.
    _slot: Slot,
}

#[derive(Debug)]
struct Idle {
    conn: Conn,
    since: Instant,
}

/// What the pool's connections and their bodies share.
#[derive(Debug)]
struct Shared {
    /// Open connections: idle, busy, or being made. Shared with the instance's
    /// other HTTP/1.1 connections (hyper's, for upgrades) so the cap covers both.
    open: Arc<AtomicUsize>,
    /// Signalled when a connection is returned or closes: waiters look again.
    freed: Arc<Freed>,
    /// The instance is draining or gone: no connection is kept idle.
    retired: AtomicBool,
}

/// One core's idle connections, most recently used on top. A response body holds
/// the stack of the core that sent its request (an `Arc` whose count, like the
/// stack, only that core writes per request) to put its connection back on.
/// Aligned to a cache line: the `Arc`'s counts and the stack each on lines of
/// their own, no two cores' on one.
#[derive(Debug)]
#[repr(align(64))]
struct IdleStack {
    idle: Mutex<Vec<Idle>>,
    shared: Arc<Shared>,
}

impl IdleStack {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Where a finished response body puts its connection back.
#[derive(Debug)]
struct Return {
    stack: Arc<IdleStack>,
    max: usize,
    idle_timeout: Duration,
}

impl Return {
    fn put(self, conn: Conn) {
        let shared = &self.stack.shared;
        if shared.retired.load(Ordering::Relaxed) {
            return;
        }
        let now = Instant::now();
        {
            let mut idle = self.stack.lock();
            // The oldest entry is at the bottom of the stack; expire it here, as checkout only sees the top.
            if idle.first().is_some_and(|e| now.duration_since(e.since) > self.idle_timeout) {
                idle.remove(0);
            }
            if idle.len() >= self.max {
                return;
            }
            idle.push(Idle { conn, since: now });
        }
        shared.freed.wake();
    }
}

/// Counts one request waiting for a connection until dropped.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One instance's HTTP/1.1 connections. Its locks are held for a push or a pop, never across an `.await`.
#[derive(Debug)]
pub struct H1Pool {
    addr: Box<str>,
    shared: Arc<Shared>,
    /// Idle connections, a stack per core (`crate::shard`): a worker puts a
    /// connection back on its own and takes from its own first, so the usual
    /// request locks a mutex no other worker touches; another's stack is looked in
    /// only when its own is empty. Made at the first response that keeps its
    /// connection: an instance that never served a request (10,000 services × 10
    /// instances, most idle) holds a pointer, not a stack per core.
    stacks: OnceLock<Box<[Arc<IdleStack>]>>,
}

impl H1Pool {
    pub fn new(addr: &str) -> H1Pool {
        H1Pool::sharing(addr, Arc::default(), Arc::default())
    }

    /// A pool whose open connections are counted in `open` (and signalled on
    /// `freed`) together with others of the same instance.
    pub(super) fn sharing(addr: &str, open: Arc<AtomicUsize>, freed: Arc<Freed>) -> H1Pool {
        let shared = Shared { open, freed, retired: AtomicBool::new(false) };
        H1Pool { addr: addr.into(), shared: Arc::new(shared), stacks: OnceLock::new() }
    }

    /// Idle connections now, on every core's stack (for tests and the admin view).
    pub fn idle(&self) -> usize {
        self.stacks.get().map_or(0, |stacks| stacks.iter().map(|stack| stack.lock().len()).sum())
    }

    /// Closes every idle connection; with `retire`, none are kept from now on.
    pub fn retire(&self, retire: bool) {
        self.shared.retired.store(retire, Ordering::Relaxed);
        if retire {
            for stack in self.stacks.get().into_iter().flatten() {
                stack.lock().clear();
            }
        }
    }

    /// [`H1Pool::send_limited`] without a cap on connections.
    pub async fn send<B>(
        &self,
        head: RequestHead<'_>,
        body: B,
        settings: H1Settings,
    ) -> Result<Response<H1Body>, SendError<B>>
    where
        B: Body<Data = Bytes> + Replay + Unpin + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let pending = AtomicUsize::new(0);
        let limits = H1Limits { max_connections: usize::MAX, max_pending: usize::MAX, pending: &pending };
        self.send_limited(head, body, settings, limits).await
    }

    /// Sends one request on a pooled connection or a new one (at most
    /// `max_connections` open; at the cap it waits, counted against
    /// `max_pending`, for one to be returned or closed). A pooled connection
    /// that turns out closed before any byte of a response (the upstream's
    /// keep-alive timeout raced this request) is dropped and the request sent
    /// again on the next one, as long as its body can be given again (none, a
    /// buffered one, or one not read from yet) — nothing of it can have been
    /// processed. Then the response head is parsed and the response returned
    /// with its body still on the connection, and the rest of the request body
    /// too if the upstream answered before it had all of it.
    pub async fn send_limited<B>(
        &self,
        head: RequestHead<'_>,
        body: B,
        settings: H1Settings,
        limits: H1Limits<'_>,
    ) -> Result<Response<H1Body>, SendError<B>>
    where
        B: Body<Data = Bytes> + Replay + Unpin + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let framing = request_framing(&head, &body);
        let kind = parse::RequestKind {
            head: head.method == Method::HEAD,
            // A request whose response lines may stay bytes is never an upgrade (the
            // proxy asks for them only without one): no lookup for the usual request.
            upgrade: !head.raw_response && head.headers.contains_key(header::UPGRADE),
            raw: head.raw_response,
        };
        let encoded = encode_head(&head, framing);
        let mut body = Some(body);
        loop {
            let (conn, reused) = match self.lease(settings, limits).await {
                Ok(Some(conn)) => (conn, true),
                Ok(None) => match self.connect(settings).await {
                    Ok(conn) => (conn, false),
                    Err(error) => return Err(SendError { error, unsent: body.take() }),
                },
                Err(error) => return Err(SendError { error, unsent: body.take() }),
            };
            // Only a pooled connection can be stale, and only a body that will be read needs a copy.
            let spare = match &body {
                Some(b) if reused && !b.is_end_stream() => b.replay(),
                _ => None,
            };
            match exchange(conn, &encoded, &mut body, framing, kind).await {
                Ok(Exchanged { conn, head, upload }) => {
                    let back = head.keep_alive.then(|| Return {
                        stack: self.stack().clone(),
                        max: settings.max_idle,
                        idle_timeout: settings.idle_timeout,
                    });
                    let body = H1Body::new(conn, head.framing, head.keep_alive, back, upload)
                        .with_head(head.raw, head.hop_by_hop);
                    let mut res = Response::new(body);
                    *res.status_mut() = head.status;
                    *res.version_mut() = head.version;
                    *res.headers_mut() = head.headers;
                    return Ok(res);
                }
                Err(Failed { error, stale }) if stale && reused && (body.is_some() || spare.is_some()) => {
                    tracing::debug!(addr = %self.addr, "pooled connection closed before a response, sending again: {error}");
                    if body.is_none() {
                        body = spare;
                    }
                }
                Err(Failed { error, .. }) => return Err(SendError { error, unsent: None }),
            }
        }
    }

    /// An idle connection (`Some`), a reserved place for a new one (`None`), or —
    /// at the cap — a wait for one to be returned or closed.
    async fn lease(&self, settings: H1Settings, limits: H1Limits<'_>) -> Result<Option<Conn>, H1Error> {
        // The usual case first, without registering for a wake-up.
        if let Some(conn) = self.checkout(settings) {
            return Ok(Some(conn));
        }
        let announced = self.shared.freed.announce();
        let mut waiting: Option<Waiting<'_>> = None;
        loop {
            // Registered before looking, so a return between the look and the wait is not missed.
            let freed = announced.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(conn) = self.checkout(settings) {
                return Ok(Some(conn));
            }
            let open = &self.shared.open;
            if open
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| (n < limits.max_connections).then_some(n + 1))
                .is_ok()
            {
                return Ok(None);
            }
            if waiting.is_none() {
                if limits.pending.fetch_add(1, Ordering::Relaxed) >= limits.max_pending {
                    limits.pending.fetch_sub(1, Ordering::Relaxed);
                    return Err(H1Error::Pending);
                }
                waiting = Some(Waiting(limits.pending));
            }
            freed.await;
        }
    }

    /// The most recently used idle connection that still looks open: from this
    /// core's stack, else from the others' (one another worker put back).
    fn checkout(&self, settings: H1Settings) -> Option<Conn> {
        let stacks = self.stacks.get()?;
        let mine = shard::index();
        take(&stacks[mine], settings).or_else(|| {
            let mut others = stacks.iter().enumerate().filter(|&(i, _)| i != mine);
            others.find_map(|(_, stack)| take(stack, settings))
        })
    }

    /// This core's idle stack (the stacks are made at the first call).
    fn stack(&self) -> &Arc<IdleStack> {
        let stacks = self.stacks.get_or_init(|| {
            let stack = || Arc::new(IdleStack { idle: Mutex::default(), shared: self.shared.clone() });
            (0..shard::count()).map(|_| stack()).collect()
        });
        &stacks[shard::index()]
    }

    /// Connects in the place `lease` reserved (given back if this fails).
    async fn connect(&self, settings: H1Settings) -> Result<Conn, H1Error> {
        let slot = Slot { open: self.shared.open.clone(), freed: self.shared.freed.clone() };
        let addr = || self.addr.to_string();
        let io = match tokio::time::timeout(settings.connect_timeout, TcpStream::connect(&*self.addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => return Err(H1Error::Connect { addr: addr(), source }),
            Err(_) => return Err(H1Error::ConnectTimeout { addr: addr() }),
        };
        let _ = io.set_nodelay(true);
        Ok(Conn { io, buf: BytesMut::new(), _slot: slot })
    }
}

/// The most recently used connection of `stack` that still looks open; stale ones
/// on top of it are closed (outside the lock, which is held for each pop only).
fn take(stack: &IdleStack, settings: H1Settings) -> Option<Conn> {
    loop {
        let entry = stack.lock().pop()?;
        if entry.since.elapsed() <= settings.idle_timeout && looks_open(&entry.conn.io) {
            return Some(entry.conn);
        }
    }
}

/// An idle connection is open unless the runtime has seen it readable (a FIN,
/// a reset, or bytes nobody asked for): no syscall unless it has. The no-op
/// waker registered here is replaced by the first real read.
fn looks_open(io: &TcpStream) -> bool {
    let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
    match io.poll_read_ready(&mut cx) {
        Poll::Pending => true,
        Poll::Ready(Err(_)) => false,
        Poll::Ready(Ok(())) => {
            let mut probe = [0u8; 1];
            matches!(io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
        }
    }
}

/// How the request body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReqFraming {
    None,
    Length(u64),
    Chunked,
}

fn request_framing<B: Body>(head: &RequestHead<'_>, body: &B) -> ReqFraming {
    match body.size_hint().exact() {
        Some(0) if body.is_end_stream() => {
            // A POST/PUT/PATCH says its empty body's length, as hyper's client does;
            // so does any request whose client said it (`encode_head` sees that).
            if matches!(*head.method, Method::POST | Method::PUT | Method::PATCH) {
                ReqFraming::Length(0)
            } else {
                ReqFraming::None
            }
        }
        Some(n) => ReqFraming::Length(n),
        None => ReqFraming::Chunked,
    }
}

/// `name: value\r\n`: a header line of a head or a trailer section, written by
/// this exchange and by the gateway's own HTTP/1.1 server alike.
#[inline(always)]
pub fn encode_line(dst: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    dst.extend_from_slice(name);
    dst.extend_from_slice(b": ");
    dst.extend_from_slice(value);
    dst.extend_from_slice(b"\r\n");
}

/// The line that starts a chunk of `len` bytes (lower-case hex, as hyper writes it).
pub fn chunk_start(dst: &mut Vec<u8>, len: usize) {
    let mut hex = [0u8; 16];
    let mut at = hex.len();
    let mut n = len;
    loop {
        at -= 1;
        hex[at] = b"0123456789abcdef"[n & 15];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    dst.extend_from_slice(&hex[at..]);
    dst.extend_from_slice(b"\r\n");
}

/// The last chunk, with its trailer fields if any.
pub fn last_chunk(dst: &mut Vec<u8>, trailers: Option<&HeaderMap>) {
    dst.extend_from_slice(b"0\r\n");
    for (name, value) in trailers.into_iter().flatten() {
        encode_line(dst, name.as_str().as_bytes(), value.as_bytes());
    }
    dst.extend_from_slice(b"\r\n");
}

/// The request head. The framing headers are this hop's: whatever the request
/// carried is replaced by what the body really is. Names and values come from
/// `http` types, which cannot hold CR or LF, so nothing here can split a line.
fn encode_head(head: &RequestHead<'_>, framing: ReqFraming) -> Vec<u8> {
    let mut size = head.method.as_str().len() + head.target.len() + 48;
    for (name, value) in head.headers {
        size += name.as_str().len() + value.len() + 4;
    }
    for (name, value) in head.extra {
        size += name.len() + value.len() + 4;
    }
    let mut dst = Vec::with_capacity(size);
    dst.extend_from_slice(head.method.as_str().as_bytes());
    dst.push(b' ');
    dst.extend_from_slice(head.target.as_bytes());
    dst.extend_from_slice(b" HTTP/1.1\r\n");
    let mut said_length = false;
    for (name, value) in head.headers {
        if name == header::CONTENT_LENGTH {
            said_length = true;
            continue;
        }
        if name == header::TRANSFER_ENCODING || head.skip.contains(name) {
            continue;
        }
        encode_line(&mut dst, name.as_str().as_bytes(), value.as_bytes());
    }
    for (name, value) in head.extra {
        encode_line(&mut dst, name.as_bytes(), value);
    }
    match framing {
        // No body, and the client said so with a `Content-Length: 0`: kept.
        ReqFraming::None if said_length => dst.extend_from_slice(b"content-length: 0\r\n"),
        ReqFraming::None => {}
        ReqFraming::Length(n) => {
            dst.extend_from_slice(b"content-length: ");
            dst.extend_from_slice(n.to_string().as_bytes());
            dst.extend_from_slice(b"\r\n");
        }
        ReqFraming::Chunked => dst.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    dst.extend_from_slice(b"\r\n");
    dst
}

/// Why an exchange failed; `stale`: not one byte of a response arrived, so
/// nothing of the request was processed and it may be sent again elsewhere
/// (if its body can be).
struct Failed {
    error: H1Error,
    stale: bool,
}

impl From<H1Error> for Failed {
    fn from(error: H1Error) -> Failed {
        Failed { error, stale: false }
    }
}

/// A response head, and the rest of the request body when it came first.
struct Exchanged {
    conn: Conn,
    head: parse::Head,
    upload: Option<Box<dyn Pump>>,
}

/// Writes the request and reads the response head. A request without a body
/// is one write and then reads. One with a body is streamed while the response
/// head is awaited, in the same poll: an upstream may answer before reading it
/// all (a 413, or an echo that streams it back as it arrives), and the upload
/// then goes on inside the response body. `body` stays in place until the
/// request head is written, so a stale connection can still send it again.
async fn exchange<B>(
    mut conn: Conn,
    encoded: &[u8],
    body: &mut Option<B>,
    framing: ReqFraming,
    kind: parse::RequestKind,
) -> Result<Exchanged, Failed>
where
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<BoxError>,
{
    if body.as_ref().is_none_or(|b| b.is_end_stream()) {
        if let Err(e) = conn.io.write_all(encoded).await {
            return Err(Failed { error: e.into(), stale: true });
        }
        let head = read_head(&mut conn, kind).await?;
        return Ok(Exchanged { conn, head, upload: None });
    }
    let mut unwritten = encoded;
    let mut upload: Option<Upload<B>> = None;
    let mut sending = Sending::Head;
    let mut got_any = !conn.buf.is_empty();
    let mut head = poll_fn(|cx| {
        let Conn { io, buf, .. } = &mut conn;
        if let Err(e) = send_step(io, cx, &mut sending, &mut unwritten, &mut upload, body, framing) {
            // The client's body failed: its fault (400), whatever the upstream answers.
            return Poll::Ready(Err(Failed::from(e)));
        }
        poll_head(io, buf, cx, kind, &mut got_any)
    })
    .await?;
    let upload = match sending {
        Sending::Sent => None,
        Sending::Body if head.framing == parse::Framing::Upgrade => {
            return Err(H1Error::Invalid("101 before the request body was sent").into())
        }
        Sending::Body => upload.map(|up| Box::new(up) as Box<dyn Pump>),
        // Answered before the request head was even written, or the upload broke: the
        // response stands, the connection is not reused.
        Sending::Head | Sending::Broken => {
            head.keep_alive = false;
            None
        }
    };
    Ok(Exchanged { conn, head, upload })
}

/// How far the request with a body has gone out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sending {
    /// Its head is being written; the body is still in its place.
    Head,
    /// Its body is being written (`Upload`).
    Body,
    /// All of it is written.
    Sent,
    /// Writing failed: the upstream closed or reset the connection.
    Broken,
}

/// Writes as much of the request as the connection takes now: the rest of
/// its head, then (taking `body` from its place) the body. A failing write is
/// noted (`Broken`), not returned: the upstream may have answered and closed,
/// and reading tells. A failing client body is returned.
fn send_step<B>(
    io: &mut TcpStream,
    cx: &mut Context<'_>,
    sending: &mut Sending,
    unwritten: &mut &[u8],
    upload: &mut Option<Upload<B>>,
    body: &mut Option<B>,
    framing: ReqFraming,
) -> Result<(), H1Error>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    if *sending == Sending::Head {
        while !unwritten.is_empty() {
            match Pin::new(&mut *io).poll_write(cx, unwritten) {
                Poll::Ready(Ok(n)) if n > 0 => *unwritten = &unwritten[n..],
                Poll::Ready(r) => {
                    tracing::debug!("writing the request head upstream failed: {r:?}");
                    *sending = Sending::Broken;
                    return Ok(());
                }
                Poll::Pending => return Ok(()),
            }
        }
        match body.take() {
            Some(b) => *upload = Some(Upload::new(b, framing)),
            None => {
                *sending = Sending::Sent;
                return Ok(());
            }
        }
        *sending = Sending::Body;
    }
    if *sending == Sending::Body {
        if let Some(up) = upload.as_mut() {
            match up.poll_send(io, cx) {
                Poll::Ready(Ok(())) => {
                    *upload = None;
                    *sending = Sending::Sent;
                }
                Poll::Ready(Err(Stop::Client(e))) => return Err(e),
                Poll::Ready(Err(Stop::Upstream(e))) => {
                    tracing::debug!("writing the request body upstream failed: {e}");
                    *upload = None;
                    *sending = Sending::Broken;
                }
                Poll::Pending => {}
            }
        }
    }
    Ok(())
}

async fn read_head(conn: &mut Conn, kind: parse::RequestKind) -> Result<parse::Head, Failed> {
    let Conn { io, buf, .. } = conn;
    let mut got_any = !buf.is_empty();
    poll_fn(|cx| poll_head(io, buf, cx, kind, &mut got_any)).await
}

/// Reads until a whole final response head is in `buf`; `got_any`: some byte of a response arrived.
fn poll_head(
    io: &mut TcpStream,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
    kind: parse::RequestKind,
    got_any: &mut bool,
) -> Poll<Result<parse::Head, Failed>> {
    loop {
        if !buf.is_empty() {
            if let Some(head) = parse::response_head(buf, kind)? {
                return Poll::Ready(Ok(head));
            }
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(READ_SIZE);
        }
        match ready!(tokio_util::io::poll_read_buf(Pin::new(&mut *io), cx, buf)) {
            Ok(0) if *got_any => return Poll::Ready(Err(H1Error::ClosedBeforeResponse.into())),
            Ok(0) => return Poll::Ready(Err(Failed { error: H1Error::ClosedBeforeResponse, stale: true })),
            Ok(_) => *got_any = true,
            Err(e) if !*got_any && e.kind() == io::ErrorKind::ConnectionReset => {
                return Poll::Ready(Err(Failed { error: e.into(), stale: true }))
            }
            Err(e) => return Poll::Ready(Err(H1Error::Io(e).into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{Empty, Full};

    fn head<'a>(
        method: &'a Method,
        headers: &'a HeaderMap,
        extra: &'a [(&'static str, &'a [u8])],
        skip: &'a [HeaderName],
    ) -> RequestHead<'a> {
        RequestHead { method, target: "/a?b=1", headers, extra, skip, raw_response: false }
    }

    #[test]
    fn chunks_are_framed_in_lowercase_hex_and_end_with_trailers() {
        let mut dst = Vec::new();
        chunk_start(&mut dst, 0x1a2f);
        chunk_start(&mut dst, 1);
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        last_chunk(&mut dst, Some(&trailers));
        last_chunk(&mut dst, None);
        assert_eq!(dst, b"1a2f\r\n1\r\n0\r\ngrpc-status: 0\r\n\r\n0\r\n\r\n");
    }

    #[test]
    fn head_encoding() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "example.com".parse().unwrap());
        h.insert("x-forwarded-for", "1.2.3.4".parse().unwrap());
        let extra: [(&str, &[u8]); 1] = [("x-forwarded-for", b"1.2.3.4, 10.0.0.1")];
        let skip = [HeaderName::from_static("x-forwarded-for")];
        let get = Method::GET;
        let hd = head(&get, &h, &extra, &skip);
        let out = encode_head(&hd, request_framing(&hd, &Empty::<Bytes>::new()));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET /a?b=1 HTTP/1.1\r\nhost: example.com\r\nx-forwarded-for: 1.2.3.4, 10.0.0.1\r\n\r\n"
        );
        // the client's framing headers are replaced by the body's real one
        h.insert(header::CONTENT_LENGTH, "999".parse().unwrap());
        h.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        let post = Method::POST;
        h.remove("x-forwarded-for");
        let hd = head(&post, &h, &[], &[]);
        let out = encode_head(&hd, request_framing(&hd, &Full::new(Bytes::from_static(b"abc"))));
        assert!(String::from_utf8(out).unwrap().ends_with("host: example.com\r\ncontent-length: 3\r\n\r\n"));
        let out = encode_head(&hd, request_framing(&hd, &Empty::<Bytes>::new()));
        assert!(String::from_utf8(out).unwrap().ends_with("content-length: 0\r\n\r\n"));
        // a GET without a body says `Content-Length: 0` only when its client did
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, "0".parse().unwrap());
        let hd = head(&get, &h, &[], &[]);
        let out = encode_head(&hd, request_framing(&hd, &Empty::<Bytes>::new()));
        assert_eq!(String::from_utf8(out).unwrap(), "GET /a?b=1 HTTP/1.1\r\ncontent-length: 0\r\n\r\n");
    }
}
