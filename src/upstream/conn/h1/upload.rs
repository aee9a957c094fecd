//! The request body of an upstream HTTP/1.1 exchange as a writer driven by
//! polls, so that one task can send it and read the response at once: the
//! exchange polls it while it waits for the response head, and when the head
//! comes first the response body (`H1Body`) takes it over and keeps writing
//! while it reads — an upstream that echoes the upload as it receives it would
//! otherwise wait forever for the rest of it. Data frames are written as they
//! come (between a chunk-size line and a CRLF when chunked) with vectored
//! writes, never copied.

use std::fmt;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use http_body::Body;
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;

use super::{chunk_start, last_chunk, BoxError, H1Error, ReqFraming};

/// Why an upload stopped before the end of the body.
#[derive(Debug)]
pub(super) enum Stop {
    /// The client's body failed, or was not as long as it said: the client's fault.
    Client(H1Error),
    /// Writing to the upstream failed (it closed or reset the connection, often
    /// after answering early): its response, if one comes, still stands, but the
    /// connection is not reused.
    Upstream(io::Error),
}

/// One request body on its way out.
pub(super) struct Upload<B> {
    body: B,
    framing: ReqFraming,
    /// Data bytes taken from the body so far.
    taken: u64,
    /// Bytes not yet written, in order: a chunk-size line (or the last chunk), data, a CRLF.
    out: [Bytes; 3],
    /// `out` holds the end of the body: the upload is complete once it is written.
    last: bool,
}

impl<B> Upload<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    pub(super) fn new(body: B, framing: ReqFraming) -> Upload<B> {
        Upload { body, framing, taken: 0, out: Default::default(), last: false }
    }

    /// Writes what the body has to give: `Ready(Ok)` once all of it is written
    /// (for a length-framed body, once that many bytes are), `Pending` while
    /// waiting for the body or for room on the connection.
    pub(super) fn poll_send<W>(&mut self, io: &mut W, cx: &mut Context<'_>) -> Poll<Result<(), Stop>>
    where
        W: AsyncWrite + Unpin,
    {
        loop {
            while self.out.iter().any(|b| !b.is_empty()) {
                let slices = [IoSlice::new(&self.out[0]), IoSlice::new(&self.out[1]), IoSlice::new(&self.out[2])];
                let n = ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices)).map_err(Stop::Upstream)?;
                if n == 0 {
                    return Poll::Ready(Err(Stop::Upstream(io::ErrorKind::WriteZero.into())));
                }
                self.consume(n);
            }
            if self.last {
                return Poll::Ready(Ok(()));
            }
            match self.framing {
                // All that the head announced is out: the request is complete for
                // the upstream, which may already be answering its last part.
                ReqFraming::Length(n) if self.taken == n => {
                    self.last = true;
                    continue;
                }
                ReqFraming::None => {
                    self.last = true;
                    continue;
                }
                _ => {}
            }
            let frame = match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                Some(Ok(frame)) => frame,
                Some(Err(e)) => return Poll::Ready(Err(Stop::Client(H1Error::RequestBody(e.into())))),
                None => {
                    if let ReqFraming::Length(_) = self.framing {
                        return Poll::Ready(Err(Stop::Client(H1Error::RequestLength(
                            "shorter than its content-length",
                        ))));
                    }
                    self.out[0] = Bytes::from_static(b"0\r\n\r\n");
                    self.last = true;
                    continue;
                }
            };
            match frame.into_data() {
                Ok(data) if data.is_empty() => {}
                Ok(data) => {
                    self.taken += data.len() as u64;
                    match self.framing {
                        ReqFraming::Chunked => {
                            let mut start = Vec::with_capacity(18);
                            chunk_start(&mut start, data.len());
                            self.out = [Bytes::from(start), data, Bytes::from_static(b"\r\n")];
                        }
                        ReqFraming::Length(n) if self.taken > n => {
                            return Poll::Ready(Err(Stop::Client(H1Error::RequestLength(
                                "longer than its content-length",
                            ))));
                        }
                        _ => self.out[1] = data,
                    }
                }
                // Trailers go out after the last chunk; a length-framed body has no place for them.
                Err(frame) => {
                    if let (ReqFraming::Chunked, Ok(trailers)) = (self.framing, frame.into_trailers()) {
                        let mut end = Vec::new();
                        last_chunk(&mut end, Some(&trailers));
                        self.out[0] = Bytes::from(end);
                        self.last = true;
                    }
                }
            }
        }
    }

    fn consume(&mut self, mut n: usize) {
        for b in &mut self.out {
            let k = n.min(b.len());
            b.advance(k);
            n -= k;
        }
    }
}

/// An upload the response body carries on with, whatever its body type.
pub(super) trait Pump: Send {
    fn poll_pump(&mut self, io: &mut TcpStream, cx: &mut Context<'_>) -> Poll<Result<(), Stop>>;
}

impl<B> Pump for Upload<B>
where
    B: Body<Data = Bytes> + Unpin + Send,
    B::Error: Into<BoxError>,
{
    fn poll_pump(&mut self, io: &mut TcpStream, cx: &mut Context<'_>) -> Poll<Result<(), Stop>> {
        self.poll_send(io, cx)
    }
}

impl fmt::Debug for dyn Pump + '_ {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Upload")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;
    use http_body_util::Full;

    async fn send_all<B>(body: B, framing: ReqFraming) -> (Vec<u8>, Result<(), Stop>)
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: Into<BoxError>,
    {
        let mut up = Upload::new(body, framing);
        let mut out = Vec::new();
        let r = std::future::poll_fn(|cx| up.poll_send(&mut out, cx)).await;
        (out, r)
    }

    #[tokio::test]
    async fn chunked_with_trailers() {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-sum", "7".parse().unwrap());
        let frames: Vec<Result<http_body::Frame<Bytes>, std::convert::Infallible>> = vec![
            Ok(http_body::Frame::data(Bytes::from_static(b"hello"))),
            Ok(http_body::Frame::data(Bytes::new())),
            Ok(http_body::Frame::data(Bytes::from_static(b" world!"))),
            Ok(http_body::Frame::trailers(trailers)),
        ];
        let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
        let (out, r) = send_all(body, ReqFraming::Chunked).await;
        assert!(r.is_ok());
        assert_eq!(out, b"5\r\nhello\r\n7\r\n world!\r\n0\r\nx-sum: 7\r\n\r\n");
        let frames: Vec<Result<http_body::Frame<Bytes>, std::convert::Infallible>> =
            vec![Ok(http_body::Frame::data(Bytes::from_static(b"abc")))];
        let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
        assert_eq!(send_all(body, ReqFraming::Chunked).await.0, b"3\r\nabc\r\n0\r\n\r\n");
    }

    #[tokio::test]
    async fn lengths_are_held_to() {
        let (out, r) = send_all(Full::new(Bytes::from_static(b"abc")), ReqFraming::Length(3)).await;
        assert!(r.is_ok());
        assert_eq!(out, b"abc");
        let (_, r) = send_all(Full::new(Bytes::from_static(b"ab")), ReqFraming::Length(3)).await;
        assert!(matches!(r, Err(Stop::Client(H1Error::RequestLength(_)))), "{r:?}");
        let (_, r) = send_all(Full::new(Bytes::from_static(b"abcd")), ReqFraming::Length(3)).await;
        assert!(matches!(r, Err(Stop::Client(H1Error::RequestLength(_)))), "{r:?}");
    }

    #[tokio::test]
    async fn a_failing_body_is_the_clients_fault() {
        let frames: Vec<Result<http_body::Frame<Bytes>, io::Error>> =
            vec![Ok(http_body::Frame::data(Bytes::from_static(b"ab"))), Err(io::Error::other("cut"))];
        let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
        let (out, r) = send_all(body, ReqFraming::Chunked).await;
        assert_eq!(out, b"2\r\nab\r\n");
        assert!(matches!(r, Err(Stop::Client(H1Error::RequestBody(_)))), "{r:?}");
    }
}
