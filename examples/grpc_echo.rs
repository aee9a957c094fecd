//! A minimal gRPC backend for `bench/h2.sh`: `bench.Echo/Unary` echoes its
//! message, served by tonic's `server::Grpc` on a hyper HTTP/2 (h2c) server.
//! No code generation: the message is a hand-derived prost type.
//!
//!   cargo run --release --example grpc_echo -- 127.0.0.1:19101 [NAME]

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tonic::server::UnaryService;
use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;

#[derive(Clone, PartialEq, prost::Message)]
struct Msg {
    #[prost(string, tag = "1")]
    text: String,
}

#[derive(Clone)]
struct Echo;

impl UnaryService<Msg> for Echo {
    type Response = Msg;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Msg>, Status>> + Send>>;
    fn call(&mut self, req: Request<Msg>) -> Self::Future {
        Box::pin(async move { Ok(Response::new(req.into_inner())) })
    }
}

async fn dispatch(req: http::Request<Incoming>) -> Result<http::Response<tonic::body::Body>, Infallible> {
    if req.uri().path() != "/bench.Echo/Unary" {
        return Ok(Status::unimplemented("no such method").into_http());
    }
    let mut grpc = tonic::server::Grpc::new(ProstCodec::<Msg, Msg>::default());
    Ok(grpc.unary(Echo, req).await)
}

fn main() -> std::io::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:19101".to_string());
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&addr).await?;
        eprintln!("grpc_echo on {addr}");
        loop {
            let (tcp, _) = match listener.accept().await {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            tokio::spawn(async move {
                let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                builder.max_concurrent_streams(1024);
                let _ = builder.serve_connection(TokioIo::new(tcp), hyper::service::service_fn(dispatch)).await;
            });
        }
    })
}
