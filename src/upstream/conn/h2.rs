//! The h2c exchange on h2's client, from the request's own task: the head goes
//! out with `send_request`, a body held in memory with one `send_data`, and the
//! response head is awaited right here; its body is read by whoever polls
//! [`H2Body`]. hyper's HTTP/2 client put a dispatch task and a channel between
//! the request and the connection and spawned two tasks per request, one to pipe
//! the body and one to wait for the response (~9k instructions per gRPC call,
//! bench/cost.sh `PROTO=grpc`). A body streamed from the client still gets a task
//! of its own ([`pipe`]): it must keep flowing while the response streams back
//! (bidirectional gRPC), whoever reads that response and however slowly.
//!
//! The connection's settings are hyper's client defaults, which this used before:
//! 2 MiB stream and 5 MiB connection windows, 16 KiB of response header list,
//! 1 MiB of request data buffered per stream, no server push.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::FutureExt;
use h2::client::SendRequest;
use h2::{RecvStream, SendStream};
use http::{Request, Response};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Either};
use hyper::body::Incoming;
use tokio::net::TcpStream;

use super::UpstreamBody;

const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;
const MAX_HEADER_LIST: u32 = 16 * 1024;
const MAX_SEND_BUFFER: usize = 1024 * 1024;
/// Streams this side resets for errors of the peer's before the connection is
/// called broken (hyper's default too).
const MAX_LOCAL_ERROR_RESETS: usize = 1024;

/// One h2c connection to an instance, shared by its requests (a clone each).
#[derive(Debug, Clone)]
pub struct H2Conn {
    send: SendRequest<Bytes>,
    /// Set when the connection's task ends (closed by either side, or failed).
    closed: Arc<AtomicBool>,
}

/// Why an exchange failed once its connection was there.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct H2SendError {
    pub error: h2::Error,
    /// The client's request body failed while it was piped: the client's fault.
    pub client_body: bool,
}

impl H2SendError {
    /// Whether the instance's side went away before answering: the connection
    /// closed or failed under the request (I/O, as a closed HTTP/1.1 connection),
    /// or the instance said it did no work for the stream (`REFUSED_STREAM`,
    /// RFC 9113 §8.7). A stream a `GOAWAY` left out is not told apart here: h2
    /// gives the streams it interrupts later the same error.
    pub fn peer_closed(&self) -> bool {
        let e = &self.error;
        e.is_io() || (e.is_remote() && e.is_reset() && e.reason() == Some(h2::Reason::REFUSED_STREAM))
    }
}

impl H2Conn {
    /// The HTTP/2 handshake on `io`; the connection is driven by a task of its own.
    pub async fn handshake(io: TcpStream) -> Result<H2Conn, h2::Error> {
        let (send, connection) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_header_list_size(MAX_HEADER_LIST)
            .max_send_buffer_size(MAX_SEND_BUFFER)
            .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
            .enable_push(false)
            .handshake(io)
            .await?;
        let closed = Arc::new(AtomicBool::new(false));
        let flag = closed.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("upstream h2c connection closed: {e}");
            }
            flag.store(true, Ordering::Relaxed);
        });
        Ok(H2Conn { send, closed })
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Waits until the connection may open another stream (the instance's
    /// `SETTINGS_MAX_CONCURRENT_STREAMS`); an error when it is gone.
    pub async fn ready(&mut self) -> Result<(), h2::Error> {
        poll_fn(|cx| self.send.poll_ready(cx)).await
    }

    /// Sends `req` (absolute URI: `:scheme` and `:authority` come from it) and
    /// waits for the response head. The body of a request `send_request` refused
    /// comes back: nothing of it left.
    pub async fn send(
        &mut self,
        req: Request<UpstreamBody>,
    ) -> Result<Response<H2Body>, (H2SendError, Option<UpstreamBody>)> {
        let (head, body) = req.into_parts();
        let end = body.is_end_stream();
        let (response, stream) = match self.send.send_request(Request::from_parts(head, ()), end) {
            Ok(sent) => sent,
            Err(error) => return Err((H2SendError { error, client_body: false }, Some(body))),
        };
        // Set by the pipe of a streamed body when the client's side of it fails.
        let mut failed = None;
        if !end {
            match body {
                Either::Left(held) => send_held(held, stream),
                Either::Right(streamed) => {
                    let flag = Arc::new(AtomicBool::new(false));
                    failed = Some(flag.clone());
                    drop(tokio::spawn(pipe(streamed, stream, flag)));
                }
            }
        }
        match response.await {
            Ok(res) => Ok(res.map(|recv| H2Body { recv, trailers: false })),
            Err(error) => {
                let client_body = failed.is_some_and(|f| f.load(Ordering::Relaxed));
                Err((H2SendError { error, client_body }, None))
            }
        }
    }
}

/// A body held in memory: its one frame goes out at once; h2 keeps what the
/// flow-control windows do not let through yet.
fn send_held(mut held: http_body_util::Full<Bytes>, mut stream: SendStream<Bytes>) {
    // `Full` answers its first poll at once, with its bytes.
    let data = match held.frame().now_or_never() {
        Some(Some(Ok(frame))) => frame.into_data().unwrap_or_default(),
        _ => Bytes::new(),
    };
    if stream.send_data(data, true).is_err() {
        // Reset already: the response future says why.
        stream.send_reset(h2::Reason::CANCEL);
    }
}

/// Pipes a client's streamed body to `stream`, reading a frame only when the
/// stream has window for it (so a slow instance slows the client, nothing piles
/// up here). Stops when the instance resets the stream; a failing client body
/// resets it (`CANCEL`) and sets `failed`.
async fn pipe(mut body: Incoming, mut stream: SendStream<Bytes>, failed: Arc<AtomicBool>) {
    loop {
        if poll_fn(|cx| wait_for_window(&mut stream, cx)).await.is_err() {
            return;
        }
        let frame = poll_fn(|cx| match stream.poll_reset(cx) {
            Poll::Ready(_) => Poll::Ready(None),
            Poll::Pending => Pin::new(&mut body).poll_frame(cx).map(Some),
        })
        .await;
        match frame {
            // Reset by the instance.
            None => return,
            Some(None) => {
                let _ = stream.send_data(Bytes::new(), true);
                return;
            }
            Some(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => {
                    let end = body.is_end_stream();
                    if stream.send_data(data, end).is_err() || end {
                        return;
                    }
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        // Trailers end the body.
                        let _ = stream.send_trailers(trailers);
                        return;
                    }
                }
            },
            Some(Some(Err(e))) => {
                tracing::debug!("request body from the client failed: {e}");
                failed.store(true, Ordering::Relaxed);
                stream.send_reset(h2::Reason::CANCEL);
                return;
            }
        }
    }
}

/// Ready when the stream may send at least one byte; an error when it cannot
/// send any more (reset, or the connection gone).
fn wait_for_window(stream: &mut SendStream<Bytes>, cx: &mut Context<'_>) -> Poll<Result<(), ()>> {
    stream.reserve_capacity(1);
    if stream.capacity() > 0 {
        return Poll::Ready(Ok(()));
    }
    loop {
        match stream.poll_capacity(cx) {
            Poll::Ready(Some(Ok(0))) => {}
            Poll::Ready(Some(Ok(_))) => return Poll::Ready(Ok(())),
            Poll::Ready(Some(Err(_)) | None) => return Poll::Ready(Err(())),
            Poll::Pending => return Poll::Pending,
        }
    }
}

/// A response body from an h2c instance: its data, each frame's window given
/// back as it is passed on, then its trailers (gRPC's status).
#[derive(Debug)]
pub struct H2Body {
    recv: RecvStream,
    /// The data is over; the trailers were asked for.
    trailers: bool,
}

impl Body for H2Body {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = &mut *self;
        if !this.trailers {
            match std::task::ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    // The window is the instance's to fill again once the bytes move on.
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => this.trailers = true,
            }
        }
        Poll::Ready(match std::task::ready!(this.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Some(Ok(Frame::trailers(trailers))),
            Ok(None) => None,
            Err(e) => Some(Err(e)),
        })
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }
}
