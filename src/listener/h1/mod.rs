//! The gateway's own HTTP/1.1 server, for the requests nearly every client
//! sends: a head without a body. It reads a head, hands it to the request path,
//! and writes the response head and body, in the connection's one task with no
//! channel and no per-request timer; while the connection idles it holds no
//! buffer (the read that waits for the next request uses the stack).
//!
//! Anything else — a request with a body, an upgrade, `Expect`, `CONNECT`, a
//! head that is malformed or over the limits — is handed with the bytes read so
//! far to hyper's HTTP/1.1 server, which serves the connection from then on
//! (and answers 400/431 where a head is bad). Pipelined requests are answered
//! in order. Deadlines are the socket's ([`super::watchdog`]).

mod date;
mod head;
mod rewind;

use std::future::{poll_fn, Future};
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http::HeaderValue;
use http_body_util::Empty;
use hyper::body::{Body, Frame};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::{sleep_until, Instant, Sleep};

pub(crate) use rewind::Rewind;

use self::head::{Framing, Keep, Parsed};
use super::accept::DrainSignal;
use super::watchdog::ConnState;
use crate::http::respond::{raw_headers, ProxyBody};
use crate::http::{Client, HttpProxy};
use crate::upstream::conn::h1::{chunk_start, encode_line, last_chunk};

/// What a read asks the socket for once a head is under way (hyper's first read is as large).
const READ_SIZE: usize = 8192;
/// The stack buffer of the reads that wait for a request on an idle connection, and
/// for the client's close while one is in flight.
const IDLE_READ: usize = 4096;

/// Everything one connection is served with.
pub(crate) struct Connection {
    pub proxy: super::ProxySlot,
    pub peer: SocketAddr,
    pub client_ip: HeaderValue,
    pub conn: Arc<ConnState>,
    pub drain: Arc<DrainSignal>,
    /// `limits.max_request_head` and `limits.max_request_headers`.
    pub max_head: usize,
    pub max_headers: usize,
}

/// How the connection ended here.
pub(crate) enum Ended<IO> {
    /// Closed: by the client, after a response that ends it, or by the drain.
    Closed,
    /// The socket failed (a deadline, a reset).
    Failed(io::Error),
    /// hyper's server takes over, reading these bytes first.
    Handoff(IO, Bytes),
}

impl Connection {
    /// Serves requests until the connection ends or must go to hyper.
    pub async fn serve<IO>(self, mut io: IO) -> Ended<IO>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let mut buf = BytesMut::new();
        // Lent to each request for its upstream deadlines: reset per request, where a
        // timer of the request's own would be filed in tokio's wheel and removed again.
        let mut timer: Option<Pin<Box<Sleep>>> = None;
        loop {
            // A head: from the bytes already read (pipelined), else from the socket.
            let (request, keep) = loop {
                if !buf.is_empty() {
                    match head::request(&mut buf, self.max_head, self.max_headers) {
                        Parsed::Request(request, keep) => break (request, keep),
                        Parsed::Handoff => return Ended::Handoff(io, buf.freeze()),
                        Parsed::Partial => {}
                    }
                }
                let read = if buf.is_empty() {
                    poll_fn(|cx| self.poll_idle_read(&mut io, &mut buf, cx)).await
                } else {
                    buf.reserve(READ_SIZE);
                    io.read_buf(&mut buf).await
                };
                match read {
                    // The client closed (or the drain began) between requests, or
                    // mid-head, which hyper does not answer either.
                    Ok(0) => return close(io).await,
                    Ok(_) => {}
                    Err(e) => return Ended::Failed(e),
                }
            };

            let exchange = self.conn.start_request(false);
            let proxy = self.proxy.load_full();
            // Boxed: the request path's future is large and this one lives as long
            // as the connection; a pointer keeps the idle connection small.
            let client = Client { addr: self.peer, ip: &self.client_ip, raw_response: true };
            let timer = timer.get_or_insert_with(|| Box::pin(sleep_until(Instant::now())));
            let mut handling = Box::pin(HttpProxy::handle(
                proxy,
                request.map(|()| Empty::<Bytes>::new()),
                client,
                Some(timer.as_mut()),
            ));
            // While it is in flight the socket is read too, as hyper's server does: a
            // client that closes (or fails) cancels the request, upstream exchange and
            // all, rather than leave it running to its response or timeout. Bytes that
            // come meanwhile (a pipelined request) are kept, and the watch ends.
            let mut watching = buf.is_empty();
            let response = poll_fn(|cx| {
                if let Poll::Ready(response) = handling.as_mut().poll(cx) {
                    return Poll::Ready(Ok(response));
                }
                if watching {
                    match poll_read_into(&mut io, &mut buf, cx) {
                        Poll::Ready(Ok(0)) => return Poll::Ready(Err(None)),
                        Poll::Ready(Ok(_)) => watching = false,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(Some(e))),
                        Poll::Pending => {}
                    }
                }
                Poll::Pending
            })
            .await;
            drop(handling);
            let response = match response {
                Ok(response) => response,
                Err(None) => {
                    tracing::debug!(peer = %self.peer, "client closed its connection before the response");
                    return Ended::Closed;
                }
                Err(Some(e)) => return Ended::Failed(e),
            };
            let closing = self.drain.started();
            let written = write_response(&mut io, response, keep, closing).await;
            drop(exchange);
            match written {
                Ok(true) => {}
                Ok(false) => return close(io).await,
                Err(e) => return Ended::Failed(e),
            }
            if buf.is_empty() {
                // Nothing pipelined: the buffer goes back while the connection idles.
                buf = BytesMut::new();
            }
        }
    }

    /// The read that waits for a request: into a stack buffer, so an idle
    /// connection keeps no buffer of its own. Returns 0 (closes) once the drain
    /// has begun; the connection's task is woken for it.
    fn poll_idle_read<IO: AsyncRead + Unpin>(
        &self,
        io: &mut IO,
        buf: &mut BytesMut,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        if self.drain.started() {
            return Poll::Ready(Ok(0));
        }
        poll_read_into(io, buf, cx)
    }
}

/// Reads what the socket has into a stack buffer and appends it to `buf`, which
/// holds no memory until bytes come.
fn poll_read_into<IO: AsyncRead + Unpin>(
    io: &mut IO,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    let mut scratch = [MaybeUninit::<u8>::uninit(); IDLE_READ];
    let mut read = ReadBuf::uninit(&mut scratch);
    ready!(Pin::new(io).poll_read(cx, &mut read))?;
    buf.extend_from_slice(read.filled());
    Poll::Ready(Ok(read.filled().len()))
}

/// Closes the connection (FIN, or TLS close_notify), within the send deadline.
async fn close<IO: AsyncWrite + Unpin>(mut io: IO) -> Ended<IO> {
    match io.shutdown().await {
        Ok(()) => Ended::Closed,
        Err(e) => Ended::Failed(e),
    }
}

/// Writes a response; `Ok(false)` when the connection must close after it (the
/// client or the framing wants it, or the body ended short or failed).
async fn write_response<IO>(
    io: &mut IO,
    response: http::Response<ProxyBody>,
    keep: Keep,
    closing: bool,
) -> io::Result<bool>
where
    IO: AsyncWrite + Unpin,
{
    let mut out = Vec::with_capacity(512);
    let (framing, alive) = head::response(
        &mut out,
        &response,
        raw_headers(response.body()),
        &response.body().size_hint(),
        keep,
        closing,
        |dst| date::with_now(|now| encode_line(dst, b"date", now)),
    );
    let mut body = response.into_body();
    let mut sent: u64 = 0;
    let mut trailers = None;
    if framing != Framing::Empty {
        loop {
            let frame = match next_frame(io, &mut body, &mut out).await? {
                Some(Ok(frame)) => frame,
                // The upstream failed mid-body: the client sees the message cut short.
                Some(Err(_)) => return write_all(io, &mut out).await.map(|()| false),
                None => break,
            };
            let data = match frame.into_data() {
                Ok(data) => data,
                Err(frame) => {
                    trailers = frame.into_trailers().ok();
                    continue;
                }
            };
            if data.is_empty() {
                continue;
            }
            match framing {
                Framing::Length(n) => {
                    let room = n - sent;
                    let take = (data.len() as u64).min(room) as usize;
                    sent += take as u64;
                    write3(io, &mut out, &data[..take], b"").await?;
                    if (data.len() as u64) > room {
                        // More than the head announced: the rest cannot be framed.
                        return Ok(false);
                    }
                }
                Framing::Chunked => {
                    chunk_start(&mut out, data.len());
                    write3(io, &mut out, &data, b"\r\n").await?;
                }
                Framing::Close | Framing::Empty => write3(io, &mut out, &data, b"").await?,
            }
        }
    }
    let complete = match framing {
        Framing::Length(n) => sent == n,
        Framing::Chunked => {
            last_chunk(&mut out, trailers.as_ref().filter(|_| keep.trailers));
            true
        }
        Framing::Empty | Framing::Close => true,
    };
    write_all(io, &mut out).await?;
    io.flush().await?;
    Ok(alive && complete)
}

/// The body's next frame. While it is not ready, what waits in `out` (the head,
/// a chunk's end) is written first, so a slow body does not hold up its head.
async fn next_frame<IO, B>(
    io: &mut IO,
    body: &mut B,
    out: &mut Vec<u8>,
) -> io::Result<Option<Result<Frame<Bytes>, B::Error>>>
where
    IO: AsyncWrite + Unpin,
    B: Body<Data = Bytes> + Unpin,
{
    let ready = poll_fn(|cx| match Pin::new(&mut *body).poll_frame(cx) {
        Poll::Ready(frame) => Poll::Ready(Some(frame)),
        Poll::Pending => Poll::Ready(None),
    })
    .await;
    if let Some(frame) = ready {
        return Ok(frame);
    }
    write_all(io, out).await?;
    io.flush().await?;
    Ok(poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await)
}

/// Writes `out`, then `data`, then `tail`, in one vectored write where the
/// socket takes it; `out` is empty afterwards.
async fn write3<IO: AsyncWrite + Unpin>(io: &mut IO, out: &mut Vec<u8>, data: &[u8], tail: &[u8]) -> io::Result<()> {
    if !io.is_write_vectored() {
        // TLS: one record for all three rather than one each.
        out.extend_from_slice(data);
        out.extend_from_slice(tail);
        return write_all(io, out).await;
    }
    let mut parts = [&out[..], data, tail];
    let mut first = 0;
    while first < parts.len() {
        if parts[first].is_empty() {
            first += 1;
            continue;
        }
        let slices = [IoSlice::new(parts[0]), IoSlice::new(parts[1]), IoSlice::new(parts[2])];
        let mut n = io.write_vectored(&slices[first..]).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        while n > 0 {
            let take = n.min(parts[first].len());
            parts[first] = &parts[first][take..];
            n -= take;
            if parts[first].is_empty() {
                first += 1;
            }
        }
    }
    out.clear();
    Ok(())
}

/// Writes and empties `out`.
async fn write_all<IO: AsyncWrite + Unpin>(io: &mut IO, out: &mut Vec<u8>) -> io::Result<()> {
    if !out.is_empty() {
        io.write_all(out).await?;
        out.clear();
    }
    Ok(())
}
