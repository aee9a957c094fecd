//! Failing backends and a load generator, for the resilience tests: a backend in
//! a child process (to `kill -9`), one that accepts and never answers, one whose
//! SYNs are dropped (its accept queue is full), one answering a chosen status, and
//! N concurrent clients for a bounded time that record every request.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;

/// The env var that turns the test binary's `backend_process` test into a backend.
pub const BACKEND_ENV: &str = "SWITCHYARD_TEST_BACKEND";

/// A backend in a child process: the test binary itself, running its ignored
/// `backend_process` test with [`BACKEND_ENV`] set. Killed on drop.
pub struct BackendProcess {
    pub name: String,
    pub addr: SocketAddr,
    child: Child,
}

impl BackendProcess {
    /// Starts one on `port` (0: any), waits until it listens.
    pub fn start(name: &str, port: u16) -> BackendProcess {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["resilience::backend_process", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
            .env(BACKEND_ENV, format!("{name}@127.0.0.1:{port}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start backend process");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let addr = loop {
            let line = lines.next().expect("backend process output").unwrap();
            // libtest prints "test resilience::backend_process ... " on the same line first.
            if let Some(at) = line.find("listening ") {
                break line[at + "listening ".len()..].trim().parse().unwrap();
            }
        };
        BackendProcess { name: name.to_string(), addr, child }
    }

    /// SIGKILL: the kernel closes its sockets; nothing is answered any more.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for BackendProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// What runs in the child: a [`super::Backend`] on the address in [`BACKEND_ENV`].
pub fn serve_backend_process() {
    let Ok(spec) = std::env::var(BACKEND_ENV) else { return };
    let (name, addr) = spec.split_once('@').unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    rt.block_on(async {
        let listener = TcpListener::bind(addr).await.unwrap();
        println!("listening {}", listener.local_addr().unwrap());
        let _backend = super::Backend::serve(name, listener);
        std::future::pending::<()>().await;
    });
}

/// Accepts connections and never answers (a hung process, a wedged event loop).
pub struct BlackHole {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl BlackHole {
    pub async fn start() -> BlackHole {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let (count, token) = (accepted.clone(), stop.clone());
        tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                tokio::select! {
                    _ = token.cancelled() => return,
                    a = listener.accept() => if let Ok((s, _)) = a {
                        count.fetch_add(1, Ordering::Relaxed);
                        held.push(s);
                    },
                }
            }
        });
        BlackHole { addr, accepted, stop }
    }
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// An address whose SYNs go unanswered: a listener with a one-slot accept queue
/// that one connection fills and nobody accepts. Linux then drops further SYNs,
/// so a connect hangs until the connector's timeout — as with a firewall that drops.
pub struct SynDrop {
    pub addr: SocketAddr,
    _listener: TcpListener,
    _filler: TcpStream,
}

impl SynDrop {
    pub async fn start() -> SynDrop {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = socket.local_addr().unwrap();
        let listener = socket.listen(0).unwrap();
        let filler = TcpStream::connect(addr).await.unwrap();
        // Make sure the queue is really full: one more connect must hang.
        assert!(
            tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await.is_err(),
            "the accept queue did not fill; SYNs are not dropped here"
        );
        SynDrop { addr, _listener: listener, _filler: filler }
    }
}

/// A backend answering `status` (changeable at run time) with its name, after
/// `delay_ms`; counts requests and the most it had in flight at once.
pub struct StatusBackend {
    pub addr: SocketAddr,
    pub status: Arc<AtomicU16>,
    pub delay_ms: Arc<AtomicU64>,
    pub hits: Arc<AtomicUsize>,
    pub inflight_max: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl StatusBackend {
    pub async fn start(name: &str, status: u16) -> StatusBackend {
        StatusBackend::serve(name, status, TcpListener::bind("127.0.0.1:0").await.unwrap())
    }

    pub fn serve(name: &str, status: u16, listener: TcpListener) -> StatusBackend {
        let addr = listener.local_addr().unwrap();
        let b = StatusBackend {
            addr,
            status: Arc::new(AtomicU16::new(status)),
            delay_ms: Arc::new(AtomicU64::new(0)),
            hits: Arc::new(AtomicUsize::new(0)),
            inflight_max: Arc::new(AtomicUsize::new(0)),
            stop: CancellationToken::new(),
        };
        let (status, delay, hits, max, stop) =
            (b.status.clone(), b.delay_ms.clone(), b.hits.clone(), b.inflight_max.clone(), b.stop.clone());
        let inflight = Arc::new(AtomicUsize::new(0));
        let name = Bytes::from(name.to_string());
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    _ = stop.cancelled() => return,
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                };
                let (status, delay, hits, max, inflight, name, stop) = (
                    status.clone(),
                    delay.clone(),
                    hits.clone(),
                    max.clone(),
                    inflight.clone(),
                    name.clone(),
                    stop.clone(),
                );
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |_req| {
                        let (status, delay, hits, max, inflight, name) =
                            (status.clone(), delay.clone(), hits.clone(), max.clone(), inflight.clone(), name.clone());
                        async move {
                            hits.fetch_add(1, Ordering::Relaxed);
                            let now = inflight.fetch_add(1, Ordering::Relaxed) + 1;
                            max.fetch_max(now, Ordering::Relaxed);
                            let ms = delay.load(Ordering::Relaxed);
                            if ms > 0 {
                                tokio::time::sleep(Duration::from_millis(ms)).await;
                            }
                            inflight.fetch_sub(1, Ordering::Relaxed);
                            let mut res = http::Response::new(Full::new(name));
                            *res.status_mut() = http::StatusCode::from_u16(status.load(Ordering::Relaxed)).unwrap();
                            Ok::<_, std::convert::Infallible>(res)
                        }
                    });
                    let builder = auto::Builder::new(TokioExecutor::new());
                    tokio::select! {
                        _ = builder.serve_connection(TokioIo::new(stream), service) => {}
                        _ = stop.cancelled() => {}
                    }
                });
            }
        });
        b
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::Relaxed)
    }
}

impl Drop for StatusBackend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// One request of a load run.
#[derive(Debug, Clone)]
pub struct Sample {
    pub started: Instant,
    pub latency: Duration,
    /// The status, or 0 when the request itself failed.
    pub status: u16,
    /// The body (the backend's name), or the error.
    pub body: String,
}

#[derive(Debug, Default)]
pub struct Report {
    pub samples: Vec<Sample>,
}

impl Report {
    pub fn failed(&self) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.status != 200).collect()
    }

    pub fn by_body(&self) -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for s in &self.samples {
            *m.entry(s.body.clone()).or_insert(0) += 1;
        }
        m
    }

    /// The p-th percentile latency (0..=100) of the samples started in `[from, to)`.
    pub fn percentile(&self, p: f64, from: Instant, to: Instant) -> Duration {
        let mut l: Vec<Duration> =
            self.samples.iter().filter(|s| s.started >= from && s.started < to).map(|s| s.latency).collect();
        if l.is_empty() {
            return Duration::ZERO;
        }
        l.sort();
        l[((l.len() - 1) as f64 * p / 100.0).round() as usize]
    }

    pub fn summary(&self) -> String {
        let mut statuses: HashMap<u16, usize> = HashMap::new();
        for s in &self.samples {
            *statuses.entry(s.status).or_insert(0) += 1;
        }
        format!("{} requests, statuses {statuses:?}, by backend {:?}", self.samples.len(), self.by_body())
    }
}

/// `clients` concurrent keep-alive clients GET `url` for `duration` (each at most
/// `max_each` requests), each request with `header` if given.
pub async fn load(
    url: &str,
    clients: usize,
    duration: Duration,
    max_each: usize,
    header: Option<(&'static str, String)>,
) -> Report {
    let end = Instant::now() + duration;
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let url = url.to_string();
        let header = header.clone();
        tasks.push(tokio::spawn(async move {
            let http = super::client();
            let mut samples = Vec::new();
            for _ in 0..max_each {
                if Instant::now() >= end {
                    break;
                }
                let mut req = http::Request::get(&url);
                if let Some((k, v)) = &header {
                    req = req.header(*k, v);
                }
                let req = req.body(Full::<Bytes>::default()).unwrap();
                let started = Instant::now();
                let (status, body) = match tokio::time::timeout(Duration::from_secs(10), http.request(req)).await {
                    Ok(Ok(res)) => {
                        let status = res.status().as_u16();
                        match res.into_body().collect().await {
                            Ok(b) => (status, String::from_utf8_lossy(&b.to_bytes()).into_owned()),
                            Err(e) => (0, format!("body: {e}")),
                        }
                    }
                    Ok(Err(e)) => (0, format!("{e:?}")),
                    Err(_) => (0, "client timeout".to_string()),
                };
                samples.push(Sample { started, latency: started.elapsed(), status, body });
            }
            samples
        }));
    }
    let mut report = Report::default();
    for t in tasks {
        report.samples.extend(t.await.unwrap());
    }
    report
}
