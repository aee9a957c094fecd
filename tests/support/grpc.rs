//! A real gRPC service for tests, without code generation: `test.Echo` with one
//! method of each kind, served by tonic's `server::Grpc` on a hyper h2 server,
//! and a tonic `client::Grpc` over exactly one HTTP/2 connection (plain or TLS).
//! tonic's transport `Channel` is not used on purpose: it enforces
//! `grpc-timeout` itself, which would hide whether the gateway does.
//!
//! Methods (`Msg.text` steers the server):
//! - `Unary`: echoes; `fail` → NOT_FOUND with message and custom metadata;
//!   `sleep:MS` answers after MS milliseconds (ignoring any deadline).
//! - `Collect` (client streaming): joins every text with `,`.
//! - `Repeat` (server streaming): `n:N` sends N messages; `trailers` sends 3
//!   then ends with DATA_LOSS and a custom trailer.
//! - `Chat` (bidi): echoes each message as it arrives.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::PathAndQuery;
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataMap;
use tonic::server::{ClientStreamingService, ServerStreamingService, StreamingService, UnaryService};
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;

/// `grpc.health.v1.HealthCheckRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    pub service: String,
}

/// `grpc.health.v1.HealthCheckResponse` (status: 1 SERVING, 2 NOT_SERVING).
#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthCheckResponse {
    #[prost(int32, tag = "1")]
    pub status: i32,
}

/// Answers `grpc.health.v1.Health/Check` with the backend's current status.
#[derive(Clone)]
struct Health(Arc<AtomicI32>);

impl UnaryService<HealthCheckRequest> for Health {
    type Response = HealthCheckResponse;
    type Future = BoxFuture<Response<HealthCheckResponse>>;
    fn call(&mut self, _req: Request<HealthCheckRequest>) -> Self::Future {
        let status = self.0.load(Ordering::Relaxed);
        Box::pin(async move { Ok(Response::new(HealthCheckResponse { status })) })
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Msg {
    #[prost(string, tag = "1")]
    pub text: String,
    /// Which backend answered.
    #[prost(string, tag = "2")]
    pub backend: String,
}

impl Msg {
    pub fn new(text: &str) -> Msg {
        Msg { text: text.to_string(), backend: String::new() }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, Status>> + Send>>;
type BoxStream = Pin<Box<dyn Stream<Item = Result<Msg, Status>> + Send>>;

#[derive(Clone)]
struct Handler(Arc<str>);

impl UnaryService<Msg> for Handler {
    type Response = Msg;
    type Future = BoxFuture<Response<Msg>>;
    fn call(&mut self, req: Request<Msg>) -> Self::Future {
        let name = self.0.clone();
        Box::pin(async move {
            let msg = req.into_inner();
            if msg.text == "fail" {
                let mut md = MetadataMap::new();
                md.insert("x-custom-detail", "kept".parse().unwrap());
                return Err(Status::with_metadata(Code::NotFound, "nothing here: 100% gone", md));
            }
            if let Some(ms) = msg.text.strip_prefix("sleep:") {
                tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
            }
            Ok(Response::new(Msg { text: msg.text, backend: name.to_string() }))
        })
    }
}

struct Collect(Arc<str>);

impl ClientStreamingService<Msg> for Collect {
    type Response = Msg;
    type Future = BoxFuture<Response<Msg>>;
    fn call(&mut self, req: Request<Streaming<Msg>>) -> Self::Future {
        let name = self.0.clone();
        Box::pin(async move {
            let mut stream = req.into_inner();
            let mut texts = Vec::new();
            while let Some(m) = stream.message().await? {
                texts.push(m.text);
            }
            Ok(Response::new(Msg { text: texts.join(","), backend: name.to_string() }))
        })
    }
}

struct Repeat(Arc<str>);

impl ServerStreamingService<Msg> for Repeat {
    type Response = Msg;
    type ResponseStream = BoxStream;
    type Future = BoxFuture<Response<BoxStream>>;
    fn call(&mut self, req: Request<Msg>) -> Self::Future {
        let name = self.0.clone();
        Box::pin(async move {
            let text = req.into_inner().text;
            let (n, fail) = match text.strip_prefix("n:") {
                Some(n) => (n.parse().unwrap_or(0), false),
                None => (3, text == "trailers"),
            };
            let items = (0..n).map(move |i| Ok(Msg { text: i.to_string(), backend: name.to_string() }));
            let end = fail.then(|| {
                let mut md = MetadataMap::new();
                md.insert("x-custom-trailer", "t1".parse().unwrap());
                Err(Status::with_metadata(Code::DataLoss, "after three", md))
            });
            let stream: BoxStream = Box::pin(tokio_stream::iter(items.chain(end)));
            Ok(Response::new(stream))
        })
    }
}

struct Chat(Arc<str>);

impl StreamingService<Msg> for Chat {
    type Response = Msg;
    type ResponseStream = BoxStream;
    type Future = BoxFuture<Response<BoxStream>>;
    fn call(&mut self, req: Request<Streaming<Msg>>) -> Self::Future {
        let name = self.0.clone();
        Box::pin(async move {
            let stream = req.into_inner().map(move |m| m.map(|m| Msg { text: m.text, backend: name.to_string() }));
            Ok(Response::new(Box::pin(stream) as BoxStream))
        })
    }
}

async fn dispatch(
    name: Arc<str>,
    health: Arc<AtomicI32>,
    req: http::Request<Incoming>,
) -> Result<http::Response<tonic::body::Body>, Infallible> {
    let mut grpc = tonic::server::Grpc::new(ProstCodec::<Msg, Msg>::default());
    let res = match req.uri().path() {
        "/grpc.health.v1.Health/Check" => {
            let mut grpc = tonic::server::Grpc::new(ProstCodec::<HealthCheckResponse, HealthCheckRequest>::default());
            grpc.unary(Health(health), req).await
        }
        "/test.Echo/Unary" => grpc.unary(Handler(name), req).await,
        "/test.Echo/Collect" => grpc.client_streaming(Collect(name), req).await,
        "/test.Echo/Repeat" => grpc.server_streaming(Repeat(name), req).await,
        "/test.Echo/Chat" => grpc.streaming(Chat(name), req).await,
        _ => Status::unimplemented("no such method").into_http(),
    };
    Ok(res)
}

/// A gRPC backend on 127.0.0.1 (h2c), counting the calls it answered.
pub struct GrpcBackend {
    pub addr: SocketAddr,
    pub calls: Arc<AtomicUsize>,
    /// What `grpc.health.v1.Health/Check` answers: 1 SERVING (the default), 2 NOT_SERVING.
    pub health: Arc<AtomicI32>,
    shutdown: CancellationToken,
}

impl GrpcBackend {
    pub async fn start(name: &str) -> GrpcBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let health = Arc::new(AtomicI32::new(1));
        let shutdown = CancellationToken::new();
        let name: Arc<str> = name.into();
        let (stop, counter, serving) = (shutdown.clone(), calls.clone(), health.clone());
        tokio::spawn(async move {
            loop {
                let (tcp, _) = tokio::select! {
                    _ = stop.cancelled() => return,
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                };
                let (name, counter, stop, serving) = (name.clone(), counter.clone(), stop.clone(), serving.clone());
                // gRPC writes headers, data and trailers separately: without this, Nagle
                // and delayed ACKs add 40 ms to each call.
                let _ = tcp.set_nodelay(true);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        counter.fetch_add(1, Ordering::Relaxed);
                        dispatch(name.clone(), serving.clone(), req)
                    });
                    let builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                    let conn = builder.serve_connection(TokioIo::new(tcp), service);
                    tokio::select! {
                        _ = conn => {}
                        _ = stop.cancelled() => {}
                    }
                });
            }
        });
        GrpcBackend { addr, calls, health, shutdown }
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::Relaxed)
    }
}

impl Drop for GrpcBackend {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// One HTTP/2 connection as a tower service, so every call shares it.
#[derive(Clone)]
pub struct OneConnection(SendRequest<tonic::body::Body>);

impl tower_service::Service<http::Request<tonic::body::Body>> for OneConnection {
    type Response = http::Response<Incoming>;
    type Error = hyper::Error;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<Incoming>, hyper::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), hyper::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(self.0.send_request(req))
    }
}

/// A tonic client for `test.Echo` over one connection.
pub struct EchoClient {
    grpc: tonic::client::Grpc<OneConnection>,
}

impl EchoClient {
    /// h2c to `addr`.
    pub async fn connect(addr: SocketAddr) -> EchoClient {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        EchoClient::over(tcp, "http", &addr.to_string()).await
    }

    /// Over an established stream (e.g. TLS with ALPN h2).
    pub async fn over<IO>(io: IO, scheme: &str, authority: &str) -> EchoClient
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io)).await.unwrap();
        tokio::spawn(conn);
        let origin = format!("{scheme}://{authority}").parse().unwrap();
        EchoClient { grpc: tonic::client::Grpc::with_origin(OneConnection(send), origin) }
    }

    async fn ready(&mut self) -> Result<(), Status> {
        self.grpc.ready().await.map_err(|e| Status::unavailable(format!("connection: {e}")))
    }

    pub async fn unary(&mut self, req: Request<Msg>) -> Result<Response<Msg>, Status> {
        self.ready().await?;
        self.grpc.unary(req, PathAndQuery::from_static("/test.Echo/Unary"), ProstCodec::default()).await
    }

    pub async fn collect(&mut self, texts: Vec<&str>) -> Result<Response<Msg>, Status> {
        self.ready().await?;
        let msgs: Vec<Msg> = texts.into_iter().map(Msg::new).collect();
        let req = Request::new(tokio_stream::iter(msgs));
        self.grpc.client_streaming(req, PathAndQuery::from_static("/test.Echo/Collect"), ProstCodec::default()).await
    }

    pub async fn repeat(&mut self, text: &str) -> Result<Response<Streaming<Msg>>, Status> {
        self.ready().await?;
        let req = Request::new(Msg::new(text));
        self.grpc.server_streaming(req, PathAndQuery::from_static("/test.Echo/Repeat"), ProstCodec::default()).await
    }

    pub async fn chat<S>(&mut self, outbound: S) -> Result<Response<Streaming<Msg>>, Status>
    where
        S: Stream<Item = Msg> + Send + 'static,
    {
        self.ready().await?;
        self.grpc
            .streaming(Request::new(outbound), PathAndQuery::from_static("/test.Echo/Chat"), ProstCodec::default())
            .await
    }
}
