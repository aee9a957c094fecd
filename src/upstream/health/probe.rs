//! One health probe of one instance: a TCP connect, an HTTP GET whose status must
//! fall in a range, or a `grpc.health.v1.Health/Check` call that must answer
//! SERVING. Each within the check's timeout, on a fresh connection (a probe must
//! not ride on a pooled connection that hides a dead listener). Probes speak
//! plain text: HTTP/1.1, or HTTP/2 for `h2c` instances and gRPC.

use bytes::{Buf, Bytes};
use http::{header, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use crate::config::{CheckKind, HealthCheck};
use crate::upstream::{Endpoint, Protocol};

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("timed out")]
    Timeout,
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("http: {0}")]
    Http(#[from] hyper::Error),
    #[error("status {0} outside {1}-{2}")]
    Status(u16, u16, u16),
    #[error("grpc-status {0}")]
    GrpcStatus(String),
    #[error("not serving (health status {0})")]
    NotServing(u64),
    #[error("bad request: {0}")]
    Request(#[from] http::Error),
}

/// Probes `endpoint` once as `check` says.
pub async fn probe(endpoint: &Endpoint, check: &HealthCheck) -> Result<(), ProbeError> {
    match tokio::time::timeout(check.timeout, run(endpoint, &check.kind)).await {
        Ok(result) => result,
        Err(_) => Err(ProbeError::Timeout),
    }
}

async fn run(endpoint: &Endpoint, kind: &CheckKind) -> Result<(), ProbeError> {
    let stream = TcpStream::connect(&*endpoint.addr).await.map_err(ProbeError::Connect)?;
    let _ = stream.set_nodelay(true);
    match kind {
        CheckKind::Tcp => Ok(()),
        CheckKind::Http { path, host, status } => {
            let host = host.as_deref().unwrap_or(endpoint.authority.as_str());
            let h2 = endpoint.protocol == Protocol::H2c;
            let mut req = Request::builder().method(Method::GET).header("user-agent", "switchyard-health-check");
            req = if h2 {
                req.uri(format!("http://{host}{path}")).version(http::Version::HTTP_2)
            } else {
                req.uri(path.as_str()).header(header::HOST, host)
            };
            let res = exchange(stream, req.body(Full::new(Bytes::new()))?, h2).await?;
            let code = res.0.as_u16();
            if (status.0..=status.1).contains(&code) {
                Ok(())
            } else {
                Err(ProbeError::Status(code, status.0, status.1))
            }
        }
        CheckKind::Grpc { service } => {
            let req = Request::builder()
                .method(Method::POST)
                .uri(format!("http://{}/grpc.health.v1.Health/Check", endpoint.authority))
                .version(http::Version::HTTP_2)
                .header(header::CONTENT_TYPE, "application/grpc")
                .header("te", "trailers")
                .body(Full::new(grpc_frame(&health_request(service))))?;
            let (status, grpc_status, body) = exchange(stream, req, true).await?;
            if status != StatusCode::OK {
                return Err(ProbeError::Status(status.as_u16(), 200, 200));
            }
            match grpc_status.as_ref().map(|v| v.as_bytes()) {
                Some(b"0") => {}
                other => {
                    return Err(ProbeError::GrpcStatus(
                        other.map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_else(|| "missing".into()),
                    ))
                }
            }
            match serving_status(&body) {
                1 => Ok(()),
                n => Err(ProbeError::NotServing(n)),
            }
        }
    }
}

/// Sends one request on `stream`; returns the status, the `grpc-status` (header or
/// trailer) and the body.
async fn exchange(
    stream: TcpStream,
    req: Request<Full<Bytes>>,
    h2: bool,
) -> Result<(StatusCode, Option<HeaderValue>, Bytes), ProbeError> {
    let res = if h2 {
        let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(stream))
            .await?;
        tokio::spawn(conn);
        sender.send_request(req).await?
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        sender.send_request(req).await?
    };
    let status = res.status();
    let mut grpc_status = res.headers().get("grpc-status").cloned();
    let collected = res.into_body().collect().await?;
    if let Some(trailers) = collected.trailers() {
        grpc_status = trailers.get("grpc-status").cloned().or(grpc_status);
    }
    Ok((status, grpc_status, collected.to_bytes()))
}

/// `HealthCheckRequest { service }` in protobuf: field 1, length-delimited.
fn health_request(service: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(service.len() + 3);
    if !service.is_empty() {
        m.push(0x0a);
        let mut n = service.len();
        while n >= 0x80 {
            m.push((n as u8) | 0x80);
            n >>= 7;
        }
        m.push(n as u8);
        m.extend_from_slice(service.as_bytes());
    }
    m
}

/// A gRPC length-prefixed message: uncompressed flag, 4-byte length, bytes.
fn grpc_frame(message: &[u8]) -> Bytes {
    let mut f = Vec::with_capacity(5 + message.len());
    f.push(0);
    f.extend_from_slice(&(message.len() as u32).to_be_bytes());
    f.extend_from_slice(message);
    f.into()
}

/// The `status` (field 1, varint) of a framed `HealthCheckResponse`; 0 (UNKNOWN) when absent.
fn serving_status(framed: &[u8]) -> u64 {
    let mut b = framed;
    if b.len() < 5 {
        return 0;
    }
    b.advance(5);
    while let Some((&tag, rest)) = b.split_first() {
        b = rest;
        let (value, used) = varint(b);
        b = &b[used.min(b.len())..];
        match tag {
            0x08 => return value,
            // Another length-delimited field: skip it.
            t if t & 7 == 2 => b = &b[(value as usize).min(b.len())..],
            _ => {}
        }
    }
    0
}

fn varint(b: &[u8]) -> (u64, usize) {
    let mut v = 0u64;
    for (i, &byte) in b.iter().enumerate().take(10) {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return (v, i + 1);
        }
    }
    (v, b.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_messages() {
        assert_eq!(health_request(""), Vec::<u8>::new());
        assert_eq!(health_request("a.B"), vec![0x0a, 3, b'a', b'.', b'B']);
        assert_eq!(&grpc_frame(&[1, 2])[..], &[0, 0, 0, 0, 2, 1, 2]);
        assert_eq!(serving_status(&[0, 0, 0, 0, 2, 0x08, 0x01]), 1);
        assert_eq!(serving_status(&[0, 0, 0, 0, 2, 0x08, 0x02]), 2);
        assert_eq!(serving_status(&[0, 0, 0, 0, 0]), 0);
        assert_eq!(serving_status(&[]), 0);
    }
}
