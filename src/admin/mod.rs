//! The admin server, on its own listener: `/metrics` (Prometheus text),
//! `/healthz` (alive), `/readyz` (200 once the first table is live) and
//! `/upstreams` (JSON view of the live table), and `POST /reload`, which asks
//! the server to reload its config file and answers 200 with what changed or
//! 400 with every error (the running config then stays).

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
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::upstream::instance::{now_ms, Admission};
use crate::upstream::{SharedTable, Status, Table};

/// What a reload answers: what changed (JSON), or every error.
pub(crate) type ReloadOutcome = Result<serde_json::Value, Vec<String>>;

/// Where reload requests go: the server answers each on its oneshot.
pub(crate) type ReloadTrigger = mpsc::Sender<oneshot::Sender<ReloadOutcome>>;

/// A reload reads files and binds sockets; it has this long to answer.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Admin {
    pub metrics: PrometheusHandle,
    pub table: SharedTable,
    pub ready: Arc<AtomicBool>,
    pub(crate) reload: ReloadTrigger,
}

impl Admin {
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: CancellationToken) {
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
                    async move {
                        if req.uri().path() == "/reload" {
                            return Ok::<_, Infallible>(admin.reload(req.method()).await);
                        }
                        Ok::<_, Infallible>(admin.answer(&req))
                    }
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

    /// `POST /reload`: 200 and what changed, or 400 and every error.
    async fn reload(&self, method: &Method) -> Response<Full<Bytes>> {
        if method != Method::POST {
            return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "POST only\n".into());
        }
        let (tx, rx) = oneshot::channel();
        if self.reload.try_send(tx).is_err() {
            return reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "reloads are queued; try again\n".into());
        }
        let (status, doc) = match tokio::time::timeout(RELOAD_TIMEOUT, rx).await {
            Ok(Ok(Ok(summary))) => (StatusCode::OK, serde_json::json!({ "result": "success", "changes": summary })),
            Ok(Ok(Err(errors))) => {
                (StatusCode::BAD_REQUEST, serde_json::json!({ "result": "failure", "errors": errors }))
            }
            Ok(Err(_)) => return reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "shutting down\n".into()),
            Err(_) => {
                return reply(StatusCode::GATEWAY_TIMEOUT, "text/plain", "the reload did not finish in time\n".into())
            }
        };
        reply(status, "application/json", format!("{doc:#}\n").into())
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
                "not found (try /metrics, /healthz, /readyz, /upstreams, POST /reload)\n".into(),
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

/// `{"version", "revision", "services": {name: {"live", "admitted", "instances": [{id, addr, state,
/// registered, health, reason, until, times_ejected, consecutive_failures, slow_start, weight,
/// zone, protocol, inflight, connections, metadata}]}}}`
///
/// `state` is what the request path does with the instance now: `up`, `draining`,
/// `down` (its registration), or `ejected` / `unhealthy`; `reason` and `until`
/// (Unix milliseconds) say why and until when it is ejected.
pub fn upstreams_json(table: &Table) -> String {
    let now = now_ms();
    let unix_now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
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
                    let admission = e.admits(now, &service.policy);
                    let state = match (e.status, admission) {
                        (Status::Up, Admission::Ejected) => "ejected",
                        (Status::Up, Admission::Unhealthy) => "unhealthy",
                        (Status::Up, _) => "up",
                        (Status::Draining, _) => "draining",
                        (Status::Down, _) => "down",
                    };
                    let outlier = &e.state.outlier;
                    let ejected = outlier.is_ejected(now);
                    serde_json::json!({
                        "id": &*e.id,
                        "addr": &*e.addr,
                        "state": state,
                        "registered": e.status,
                        "health": e.state.health.get(),
                        "reason": ejected.then(|| outlier.reason().as_str()),
                        "until": ejected.then(|| unix_now + (outlier.ejected_until() - now)),
                        "times_ejected": outlier.times_ejected(),
                        "consecutive_failures": outlier.consecutive_failures(),
                        "slow_start": e.state.ramp(now, service.policy.slow_start),
                        "connections": e.pool.open_connections(),
                        "weight": e.weight,
                        "zone": e.zone,
                        "protocol": e.protocol,
                        "inflight": e.load.get(),
                        "metadata": e.metadata,
                    })
                })
                .collect();
            let admitted = service.live.iter().filter(|e| e.admits(now, &service.policy) == Admission::Admit).count();
            (
                name.to_string(),
                serde_json::json!({ "live": service.live.len(), "admitted": admitted, "instances": instances }),
            )
        })
        .collect();
    let doc = serde_json::json!({ "version": table.version, "revision": table.revision, "services": services });
    format!("{doc:#}\n")
}
