//! `switchyard demo`: the gateway on its embedded default configuration, plus
//! small built-in echo backends on the addresses of the instances file, so that a
//! newcomer can `curl` one address and watch the answers rotate.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigErrors, Discovery, EMBEDDED_DEFAULT};
use crate::discovery::file;

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("embedded configuration: {0}")]
    Config(#[from] ConfigErrors),
    #[error("instances file {path}: {reason}")]
    Instances { path: String, reason: String },
    #[error("backend {addr}: {source}")]
    Backend { addr: String, source: std::io::Error },
}

/// The embedded config, and the addresses of the backends to start for it.
/// One worker: each worker rotates over the instances on its own (a cursor per
/// core), and with one, a newcomer's `curl`s visit the backends strictly in turn.
pub fn prepare() -> Result<(Config, Vec<(String, SocketAddr)>), DemoError> {
    let mut config = Config::parse(EMBEDDED_DEFAULT)?;
    config.workers = 1;
    let Discovery::File(f) = &config.discovery else {
        return Err(DemoError::Instances {
            path: "(embedded config)".into(),
            reason: "the demo needs file discovery".into(),
        });
    };
    let instances = read_instances(&f.path)?;
    let backends = instances
        .into_iter()
        .filter_map(|i| {
            let addr: SocketAddr = i.addr.parse().ok()?;
            addr.ip().is_loopback().then_some((i.id, addr))
        })
        .collect();
    Ok((config, backends))
}

fn read_instances(path: &Path) -> Result<Vec<crate::discovery::Instance>, DemoError> {
    let err = |reason: String| DemoError::Instances { path: path.display().to_string(), reason };
    let text =
        std::fs::read_to_string(path).map_err(|e| err(format!("{e} (run the demo from the repository root)")))?;
    file::parse(&text).map_err(err)
}

/// Binds every backend first, so a busy port fails before anything is served.
pub async fn bind_backends(backends: &[(String, SocketAddr)]) -> Result<Vec<(String, TcpListener)>, DemoError> {
    let mut bound = Vec::new();
    for (name, addr) in backends {
        let l =
            TcpListener::bind(addr).await.map_err(|source| DemoError::Backend { addr: addr.to_string(), source })?;
        bound.push((name.clone(), l));
    }
    Ok(bound)
}

/// An echo backend: answers every request with its name, method and path.
pub async fn echo_backend(name: String, listener: TcpListener, shutdown: CancellationToken) {
    let name = Bytes::from(name);
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
        };
        let name = name.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let body = format!("{} {} {}\n", String::from_utf8_lossy(&name), req.method(), req.uri().path());
                async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body)))) }
            });
            let _ = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service).await;
        });
    }
}
