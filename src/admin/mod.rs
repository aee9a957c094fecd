//! The admin server, on its own listener: `/metrics` (Prometheus text),
//! `/healthz` (alive), `/readyz` (200 once the first table is live) and
//! `/upstreams` (JSON view of the live table).

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::upstream::{SharedTable, Table};

pub struct Admin {
    pub metrics: PrometheusHandle,
    pub table: SharedTable,
    pub ready: Arc<AtomicBool>,
}

impl Admin {
    /// Serves on a thread of its own, with its own current-thread runtime, until
    /// `shutdown`: rendering a scrape of many services (hundreds of milliseconds
    /// at 10,000 services) then never holds a proxy worker, so it adds nothing to
    /// the latency of proxied requests (measured: bench/cost.sh `scale`).
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: CancellationToken) {
        // Moved off this runtime's reactor to register with the admin thread's.
        let listener = match listener.into_std() {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("admin listener: {e}");
                return;
            }
        };
        let (done, finished) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new().name("switchyard-admin".into()).spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(r) => r,
                Err(e) => return tracing::error!("admin runtime: {e}"),
            };
            runtime.block_on(async move {
                match TcpListener::from_std(listener) {
                    Ok(listener) => self.serve_here(listener, shutdown).await,
                    Err(e) => tracing::error!("admin listener: {e}"),
                }
            });
            drop(done);
        });
        if let Err(e) = thread {
            tracing::error!("cannot start the admin thread: {e}");
            return;
        }
        // Ends when the admin thread's runtime has stopped (the sender is dropped).
        let _ = finished.await;
    }

    async fn serve_here(self: Arc<Self>, listener: TcpListener, shutdown: CancellationToken) {
        let upkeep = {
            let handle = self.metrics.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(5));
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tick.tick() => handle.run_upkeep(),
                    }
                }
            })
        };
        loop {
            let (stream, _) = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!("admin accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let admin = self.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let admin = admin.clone();
                    async move { Ok::<_, Infallible>(admin.answer(&req)) }
                });
                let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
                tokio::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => {}
                    _ = shutdown.cancelled() => conn.as_mut().graceful_shutdown(),
                }
            });
        }
        upkeep.abort();
    }

    fn answer(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n".into());
        }
        match req.uri().path() {
            "/metrics" => reply(StatusCode::OK, "text/plain; version=0.0.4", self.metrics.render().into()),
            "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n".into()),
            "/readyz" if self.ready.load(Ordering::Acquire) => reply(StatusCode::OK, "text/plain", "ready\n".into()),
            "/readyz" => {
                reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "waiting for the first upstream table\n".into())
            }
            "/upstreams" => reply(StatusCode::OK, "application/json", upstreams_json(&self.table.load()).into()),
            _ => reply(
                StatusCode::NOT_FOUND,
                "text/plain",
                "not found (try /metrics, /healthz, /readyz, /upstreams)\n".into(),
            ),
        }
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(body));
    *res.status_mut() = status;
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    res
}

/// `{"version", "revision", "services": {name: {"instances": [{id, addr, state, weight, zone, protocol, inflight, metadata}]}}}`
pub fn upstreams_json(table: &Table) -> String {
    let mut names: Vec<&Arc<str>> = table.services.keys().collect();
    names.sort();
    let services: serde_json::Map<String, serde_json::Value> = names
        .into_iter()
        .map(|name| {
            let service = &table.services[name];
            let instances: Vec<serde_json::Value> = service
                .endpoints
                .iter()
                .map(|e| {
                    serde_json::json!({
                        "id": &*e.id,
                        "addr": &*e.addr,
                        "state": e.status,
                        "weight": e.weight,
                        "zone": e.zone,
                        "protocol": e.protocol,
                        "inflight": e.load.get(),
                        "metadata": e.metadata,
                    })
                })
                .collect();
            (name.to_string(), serde_json::json!({ "live": service.live.len(), "instances": instances }))
        })
        .collect();
    let doc = serde_json::json!({ "version": table.version, "revision": table.revision, "services": services });
    format!("{doc:#}\n")
}
