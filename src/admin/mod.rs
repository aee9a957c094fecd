//! The admin server, on its own listener: `/metrics` (Prometheus text),
//! `/healthz` (alive), `/readyz` (200 once the first table is live),
//! `/upstreams` (JSON view of the live table), the status page at `/` (with
//! `/status.json`: listeners, routes, recent discovery events), and `POST
//! /reload`, which asks the server to reload its config file and answers 200
//! with what changed or 400 with every error (the running config then stays).
//!
//! Hardened like the data path (docs/hardening.md): a request head within
//! `timeouts.header_read`, at most `limits.admin_max_connections` connections
//! (a connection lives at most [`MAX_CONNECTION_LIFE`]), and a few file
//! descriptors kept in reserve so that `/metrics` still answers when the
//! process has run out of them — which is when an operator needs it most.
//! `/upstreams` shows metadata keys but redacts the values of keys that look
//! secret (see [`redacted`]).

pub mod status;

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::metrics as m;
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
    pub status: status::StatusPage,
    pub(crate) reload: ReloadTrigger,
    pub limits: AdminLimits,
}

/// The admin listener's bounds.
#[derive(Debug, Clone)]
pub struct AdminLimits {
    pub head_timeout: Duration,
    pub max_connections: usize,
}

impl AdminLimits {
    pub fn new(config: &crate::config::Config) -> AdminLimits {
        AdminLimits { head_timeout: config.timeouts.header_read, max_connections: config.limits.admin_max_connections }
    }
}

/// However a connection behaves, it is closed after this: a scraper reconnects,
/// a client that stopped reading does not hold a slot for ever.
pub const MAX_CONNECTION_LIFE: Duration = Duration::from_secs(60);

/// Descriptors held open (on /dev/null) for the admin listener to release when
/// accepting fails for want of one.
const FD_RESERVE: usize = 4;

/// The calling thread's scheduling policy becomes `SCHED_IDLE` (Linux: a thread's
/// own attribute), so that where the admin thread shares a core with a proxy
/// worker, a scrape's rendering gives way to proxied requests at once: CFS/EEVDF
/// preempts a running `SCHED_IDLE` task as soon as a normal task wakes on its
/// core (kernel/sched/fair.c, `check_preempt_wakeup_fair`), where a nice-10 thread
/// could keep the core for the rest of its slice, and nice is relative to the
/// process's own (under `nice -n 5` a nice-10 thread weighs a third of a worker,
/// not a tenth). On an idle core it runs at full speed; on a core kept busy by
/// normal tasks it gets what an idle-class task gets (weight 3 against 1024 for
/// each busy nice-0 task, ~0.3%): a scrape then waits rather than the requests.
/// docs/operations.md, "Admin endpoints"; measured with bench/cost.sh `scale`.
///
/// Falls back to nice 10 where the policy cannot be set; returns the one in force.
fn lower_priority() -> &'static str {
    use thread_priority::{
        set_thread_priority_and_policy, thread_native_id, thread_schedule_policy, NormalThreadSchedulePolicy,
        ThreadPriority, ThreadSchedulePolicy,
    };
    let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
    // The crate also sets the thread's nice to 0 after the policy, which an
    // unprivileged process running at a higher nice is refused; the nice value does
    // not count under SCHED_IDLE, so the policy in force decides.
    let set = set_thread_priority_and_policy(thread_native_id(), ThreadPriority::Min, idle);
    if thread_schedule_policy().ok() == Some(idle) {
        return "SCHED_IDLE";
    }
    tracing::debug!("admin thread: SCHED_IDLE refused ({set:?}); nice 10 instead");
    match rustix::process::setpriority_process(Some(rustix::thread::gettid()), 10) {
        Ok(()) => "nice 10",
        Err(e) => {
            tracing::debug!("admin thread priority unchanged: {e}");
            "unchanged"
        }
    }
}

impl Admin {
    /// Serves on a thread of its own, with its own current-thread runtime and the
    /// `SCHED_IDLE` policy (`lower_priority`), until `shutdown`: rendering a
    /// scrape of many services (~10 ms of CPU at 10,000 services) then never holds
    /// a proxy worker, nor keeps a core that one needs (measured: bench/cost.sh `scale`).
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: CancellationToken) {
        metrics::gauge!(m::BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
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
            let priority = lower_priority();
            tracing::debug!("admin thread scheduling: {priority}");
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
        let slots = Arc::new(Semaphore::new(self.limits.max_connections));
        let mut reserve = FdReserve::new(FD_RESERVE);
        let mut last_log: Option<std::time::Instant> = None;
        loop {
            let permit = tokio::select! {
                _ = shutdown.cancelled() => break,
                p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            };
            let (stream, _) = loop {
                let accepted = tokio::select! {
                    _ = shutdown.cancelled() => return upkeep.abort(),
                    accepted = listener.accept() => accepted,
                };
                match accepted {
                    Ok(a) => break a,
                    // Out of descriptors: give one of the reserve to this accept.
                    Err(e) if is_fd_exhaustion(&e) && reserve.release() => continue,
                    Err(e) => {
                        // Logged at most once a second: under exhaustion this fails in a loop.
                        if last_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                            tracing::warn!("admin accept failed: {e}");
                            last_log = Some(std::time::Instant::now());
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            };
            reserve.refill();
            let admin = self.clone();
            let shutdown = shutdown.clone();
            let head_timeout = self.limits.head_timeout;
            tokio::spawn(async move {
                let _permit = permit;
                let service = hyper::service::service_fn(move |req| {
                    let admin = admin.clone();
                    async move {
                        if req.uri().path() == "/reload" {
                            return Ok::<_, Infallible>(admin.reload(req.method()).await);
                        }
                        Ok::<_, Infallible>(admin.answer(&req))
                    }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    // Also bounds a kept-alive connection's idle time (hyper starts it when idle).
                    .header_read_timeout(head_timeout)
                    .max_buf_size(16 * 1024)
                    .serve_connection(TokioIo::new(stream), service);
                tokio::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => {}
                    _ = tokio::time::sleep(MAX_CONNECTION_LIFE) => {}
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
            "/metrics" => {
                reply(StatusCode::OK, "text/plain; version=0.0.4", crate::metrics::render(&self.metrics).into())
            }
            "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n".into()),
            "/readyz" if self.ready.load(Ordering::Acquire) => reply(StatusCode::OK, "text/plain", "ready\n".into()),
            "/readyz" => {
                reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "waiting for the first upstream table\n".into())
            }
            "/upstreams" => reply(StatusCode::OK, "application/json", upstreams_json(&self.table.load()).into()),
            "/" => reply(StatusCode::OK, "text/html; charset=utf-8", Bytes::from_static(status::HTML.as_bytes())),
            "/status.json" => reply(StatusCode::OK, "application/json", self.status.json().into()),
            _ => reply(
                StatusCode::NOT_FOUND,
                "text/plain",
                "not found (try /, /metrics, /healthz, /readyz, /upstreams, /status.json, POST /reload)\n".into(),
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

/// `{"version", "revision", "services": {name: {"live", "admitted", "active", "retrying", "pending", "instances": [{id, addr, state,
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
            let service = &table.services[name].service;
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
                        "metadata": redact(&e.metadata),
                    })
                })
                .collect();
            let admitted = service.live.iter().filter(|e| e.admits(now, &service.policy) == Admission::Admit).count();
            (
                name.to_string(),
                serde_json::json!({
                    "live": service.live.len(),
                    "admitted": admitted,
                    "active": service.state.active(),
                    "retrying": service.state.retrying.load(Ordering::Relaxed),
                    "pending": service.state.pending.load(Ordering::Relaxed),
                    "instances": instances,
                }),
            )
        })
        .collect();
    let doc = serde_json::json!({ "version": table.version, "revision": table.revision, "services": services });
    format!("{doc:#}\n")
}

/// Metadata key parts whose values are never shown: a provider may register a
/// connection string or a token as metadata, and `/upstreams` is unauthenticated.
const SECRET_KEY_PARTS: [&str; 6] = ["password", "passwd", "secret", "token", "key", "credential"];

/// Whether a metadata key looks secret: it contains one of [`SECRET_KEY_PARTS`], in any case.
pub fn redacted(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    SECRET_KEY_PARTS.iter().any(|part| key.contains(part))
}

fn redact(metadata: &std::collections::BTreeMap<String, String>) -> serde_json::Map<String, serde_json::Value> {
    metadata
        .iter()
        .map(|(k, v)| {
            let v = if redacted(k) { "<redacted>" } else { v.as_str() };
            (k.clone(), serde_json::Value::from(v))
        })
        .collect()
}

fn is_fd_exhaustion(e: &std::io::Error) -> bool {
    // EMFILE (the process's limit) and ENFILE (the system's).
    matches!(e.raw_os_error(), Some(24) | Some(23))
}

/// A few descriptors held open, released one at a time when accept runs out.
struct FdReserve {
    held: Vec<std::fs::File>,
    want: usize,
}

impl FdReserve {
    fn new(want: usize) -> FdReserve {
        let mut reserve = FdReserve { held: Vec::with_capacity(want), want };
        reserve.refill();
        reserve
    }

    /// Closes one held descriptor; false when none is left.
    fn release(&mut self) -> bool {
        self.held.pop().is_some()
    }

    /// Takes descriptors back up to the reserve (as many as can be had now).
    fn refill(&mut self) {
        while self.held.len() < self.want {
            match std::fs::File::open("/dev/null") {
                Ok(f) => self.held.push(f),
                Err(_) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_looking_keys_are_redacted() {
        for k in ["db_password", "API_KEY", "token", "client-secret", "Credentials", "ssh_key_id"] {
            assert!(redacted(k), "{k}");
        }
        for k in ["zone", "weight", "protocol", "status", "version", "registered_at_ms"] {
            assert!(!redacted(k), "{k}");
        }
        let meta: std::collections::BTreeMap<String, String> =
            [("db_password", "hunter2"), ("zone", "a")].iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let shown = serde_json::Value::Object(redact(&meta)).to_string();
        assert_eq!(shown, r#"{"db_password":"<redacted>","zone":"a"}"#);
    }

    /// The `policy` field (41st) of /proc/thread-self/stat: 0 SCHED_OTHER, 5 SCHED_IDLE.
    fn own_policy() -> u32 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
        // Field 3 (state) is the first after the command name; policy is field 41.
        after_comm.split(' ').nth(41 - 3).unwrap().parse().unwrap()
    }

    #[test]
    fn the_admin_thread_runs_under_sched_idle() {
        let (policy, reported) = std::thread::spawn(|| {
            assert_eq!(own_policy(), 0, "a new thread starts under SCHED_OTHER");
            let reported = lower_priority();
            (own_policy(), reported)
        })
        .join()
        .unwrap();
        assert_eq!((policy, reported), (5, "SCHED_IDLE"));
    }

    #[test]
    fn the_fd_reserve_releases_and_refills() {
        let mut r = FdReserve::new(2);
        assert_eq!(r.held.len(), 2);
        assert!(r.release() && r.release());
        assert!(!r.release());
        r.refill();
        assert_eq!(r.held.len(), 2);
    }
}
