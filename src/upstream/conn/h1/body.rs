//! The body of an upstream HTTP/1.1 response, read by whoever polls it (the
//! client connection's task), straight from the pooled connection: by
//! `Content-Length`, chunked (trailers included) or until the upstream closes.
//! When the upstream answered before it had the whole request body, each poll
//! also writes more of that (`upload`): a client body that fails then ends this
//! body with the error, so the client sees its connection cut. The connection
//! goes back to its pool in the same poll that yields the last bytes, and only
//! when the whole body was read, the whole request body written, nothing more
//! arrived after it, and the response allowed keep-alive; otherwise it closes.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use tokio::net::TcpStream;

use super::parse::{self, Framing, RawHeaders};
use super::upload::{Pump, Stop};
use super::{Conn, H1Error, Return};

/// Read size when more body bytes are needed (hyper's initial read buffer is 8 KiB too).
const READ_SIZE: usize = 8 * 1024;

/// See the module doc. `Default` is an empty, finished body.
#[derive(Debug, Default)]
pub struct H1Body {
    /// Boxed: a response is moved through several layers on its way to the
    /// client, and this keeps it a pointer wide instead of ~150 bytes.
    reading: Option<Box<Reading>>,
    /// The response's header lines kept as bytes, when asked for: here rather
    /// than in the response's extensions, which would cost two allocations.
    /// Boxed: the response is moved through every layer of the request path.
    raw: Option<Box<RawHeaders>>,
    /// The response's header map may hold a hop-by-hop header ([`super::parse::Head::hop_by_hop`]).
    hop_by_hop: bool,
}

#[derive(Debug)]
struct Reading {
    conn: Conn,
    state: State,
    keep_alive: bool,
    back: Option<Return>,
    /// The rest of the request body, still being written.
    upload: Option<Box<dyn Pump>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Length(u64),
    Close,
    /// Before a chunk-size line.
    ChunkSize,
    /// Inside a chunk: bytes left.
    ChunkData(u64),
    /// The CRLF after a chunk's data.
    ChunkEnd,
    /// After the last chunk.
    Trailers,
    /// A 101: the connection waits to be taken by [`H1Body::into_upgraded`].
    Upgrade,
}

/// The raw connection after a 101, and what the upstream already sent past the head.
#[derive(Debug)]
pub struct H1Upgraded {
    pub io: TcpStream,
    pub read_buf: Bytes,
}

impl H1Body {
    pub(super) fn new(
        conn: Conn,
        framing: Framing,
        keep_alive: bool,
        back: Option<Return>,
        upload: Option<Box<dyn Pump>>,
    ) -> H1Body {
        let state = match framing {
            Framing::Empty => {
                let reading = Reading { conn, state: State::Length(0), keep_alive, back, upload };
                let mut body = H1Body { reading: Some(Box::new(reading)), raw: None, hop_by_hop: false };
                body.finish();
                return body;
            }
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::ChunkSize,
            Framing::Close => State::Close,
            Framing::Upgrade => State::Upgrade,
        };
        let reading = Reading { conn, state, keep_alive, back, upload };
        H1Body { reading: Some(Box::new(reading)), raw: None, hop_by_hop: false }
    }

    /// With what the response head's parse found: its lines kept as bytes, if
    /// they were, and whether its map may hold a hop-by-hop header.
    pub(super) fn with_head(mut self, raw: Option<Box<RawHeaders>>, hop_by_hop: bool) -> H1Body {
        self.raw = raw;
        self.hop_by_hop = hop_by_hop;
        self
    }

    /// Whether the response's header map may hold a hop-by-hop header: when not,
    /// removing them has nothing to do.
    pub fn may_hold_hop_by_hop(&self) -> bool {
        self.hop_by_hop
    }

    /// The response's header lines kept as bytes ([`RawHeaders`]), if any.
    pub fn raw_headers(&self) -> Option<&RawHeaders> {
        self.raw.as_deref()
    }

    /// The same, for the request path to add the gateway's own lines.
    pub fn raw_headers_mut(&mut self) -> Option<&mut RawHeaders> {
        self.raw.as_deref_mut()
    }

    /// The upstream connection of a 101 response; `None` for any other.
    pub fn into_upgraded(mut self) -> Option<H1Upgraded> {
        match self.reading.take() {
            Some(r) if r.state == State::Upgrade => {
                let r = *r;
                Some(H1Upgraded { io: r.conn.io, read_buf: r.conn.buf.freeze() })
            }
            _ => None,
        }
    }

    /// The body is complete: the connection returns to its pool if it may. An
    /// upload still going is dropped with the connection: the upstream answered
    /// in full without waiting for it.
    fn finish(&mut self) {
        if let Some(r) = self.reading.take() {
            let r = *r;
            if r.keep_alive && r.conn.buf.is_empty() && r.upload.is_none() {
                if let Some(back) = r.back {
                    back.put(r.conn);
                }
            }
        }
    }
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = H1Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        let this = &mut *self;
        // Reads more bytes, or ends the body with the error (the connection is dropped).
        macro_rules! more {
            ($r:expr) => {
                if let Err(e) = ready!($r.more(cx)) {
                    return this.fail(e);
                }
            };
        }
        if let Some(r) = this.reading.as_mut() {
            if let Some(up) = r.upload.as_mut() {
                match up.poll_pump(&mut r.conn.io, cx) {
                    Poll::Ready(Ok(())) => r.upload = None,
                    Poll::Ready(Err(Stop::Client(e))) => return this.fail(e),
                    Poll::Ready(Err(Stop::Upstream(e))) => {
                        // The upstream stopped reading; what it answers still stands.
                        tracing::debug!("writing the request body upstream failed: {e}");
                        r.upload = None;
                        r.keep_alive = false;
                    }
                    Poll::Pending => {}
                }
            }
        }
        loop {
            let Some(r) = this.reading.as_mut() else { return Poll::Ready(None) };
            match r.state {
                State::Upgrade => return Poll::Ready(None),
                State::Length(0) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                State::Length(left) => {
                    if r.conn.buf.is_empty() {
                        more!(r);
                        continue;
                    }
                    let take = left.min(r.conn.buf.len() as u64);
                    let data = r.conn.buf.split_to(take as usize).freeze();
                    r.state = State::Length(left - take);
                    if left == take {
                        // Back to the pool now: the reader may stop polling once it has the length.
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                State::Close => {
                    if r.conn.buf.is_empty() {
                        match ready!(r.fill(cx)) {
                            Ok(0) => {
                                this.reading = None;
                                return Poll::Ready(None);
                            }
                            Ok(_) => continue,
                            Err(e) => return this.fail(e),
                        }
                    }
                    return Poll::Ready(Some(Ok(Frame::data(r.conn.buf.split().freeze()))));
                }
                State::ChunkSize => match parse::chunk_size(&r.conn.buf) {
                    Ok(Some((size, len))) => {
                        r.conn.buf.advance(len);
                        r.state = if size == 0 { State::Trailers } else { State::ChunkData(size) };
                    }
                    Ok(None) => more!(r),
                    Err(e) => return this.fail(e),
                },
                State::ChunkData(left) => {
                    if r.conn.buf.is_empty() {
                        more!(r);
                        continue;
                    }
                    let take = left.min(r.conn.buf.len() as u64);
                    let data = r.conn.buf.split_to(take as usize).freeze();
                    r.state = if left == take { State::ChunkEnd } else { State::ChunkData(left - take) };
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                State::ChunkEnd => {
                    if r.conn.buf.len() < 2 {
                        more!(r);
                        continue;
                    }
                    if &r.conn.buf[..2] != b"\r\n" {
                        return this.fail(H1Error::Chunk("chunk data longer than its size"));
                    }
                    r.conn.buf.advance(2);
                    r.state = State::ChunkSize;
                }
                State::Trailers => match parse::trailers(&r.conn.buf) {
                    Ok(Some((map, len))) => {
                        r.conn.buf.advance(len);
                        this.finish();
                        if map.is_empty() {
                            return Poll::Ready(None);
                        }
                        return Poll::Ready(Some(Ok(Frame::trailers(map))));
                    }
                    Ok(None) => more!(r),
                    Err(e) => return this.fail(e),
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.reading {
            None => true,
            Some(r) => matches!(r.state, State::Length(0) | State::Upgrade),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.reading {
            None => SizeHint::with_exact(0),
            Some(r) => match r.state {
                State::Length(n) => SizeHint::with_exact(n),
                State::Upgrade => SizeHint::with_exact(0),
                _ => SizeHint::default(),
            },
        }
    }
}

impl H1Body {
    fn fail(&mut self, e: H1Error) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        self.reading = None;
        Poll::Ready(Some(Err(e)))
    }
}

impl Reading {
    /// Reads more into the buffer: `Ready(0)` at end of stream.
    fn fill(&mut self, cx: &mut Context<'_>) -> Poll<Result<usize, H1Error>> {
        if self.conn.buf.capacity() - self.conn.buf.len() < 1024 {
            self.conn.buf.reserve(READ_SIZE);
        }
        let n = ready!(tokio_util::io::poll_read_buf(Pin::new(&mut self.conn.io), cx, &mut self.conn.buf))?;
        Poll::Ready(Ok(n))
    }

    /// Reads more where running out of bytes is an error (inside a length or a chunk).
    fn more(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), H1Error>> {
        match ready!(self.fill(cx)) {
            Ok(0) => Poll::Ready(Err(H1Error::ClosedInBody)),
            Ok(_) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}
