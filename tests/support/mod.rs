//! Test harness: the gateway on port 0 (in-process, or as the real binary), small
//! HTTP backends that answer with their name, and a pooled HTTP client. Every
//! socket is on 127.0.0.1; each test owns its ports and temp dirs.

pub mod backend;
pub mod etcd;
pub mod faults;
pub mod grpc;
pub mod l4;
pub mod raw;
pub mod tls;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tokio_util::sync::CancellationToken;

use switchyard::config::Config;
use switchyard::server::Gateway;
use switchyard::upstream::SharedTable;

pub use backend::Backend;

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn h2c_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).http2_only(true).build_http()
}

/// GET → (status, body).
pub async fn get(client: &HttpClient, url: &str) -> (u16, String) {
    request(client, http::Request::get(url).body(Full::default()).unwrap()).await
}

/// GET with a client of its own, for spawned tasks.
pub async fn get_owned(url: String) -> (u16, String) {
    get(&client(), &url).await
}

pub async fn request(client: &HttpClient, req: http::Request<Full<Bytes>>) -> (u16, String) {
    let res = tokio::time::timeout(Duration::from_secs(20), client.request(req))
        .await
        .expect("request timed out")
        .expect("request failed");
    let status = res.status().as_u16();
    let body = res.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// One line of an instances file: service, id, address, metadata.
pub type InstanceLine<'a> = (&'a str, &'a str, SocketAddr, &'a [(&'a str, &'a str)]);

/// Writes an instances file for the file source.
pub fn write_instances(path: &Path, instances: &[InstanceLine<'_>]) {
    let mut text = String::new();
    for (service, id, addr, meta) in instances {
        text.push_str(&format!("[[instance]]\nservice = \"{service}\"\nid = \"{id}\"\naddr = \"{addr}\"\n"));
        if !meta.is_empty() {
            let pairs: Vec<String> = meta.iter().map(|(k, v)| format!("{k} = \"{v}\"")).collect();
            text.push_str(&format!("metadata = {{ {} }}\n", pairs.join(", ")));
        }
    }
    // Write then rename, as an editor would, so the poller never reads half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The head of every test config: admin on port 0, file discovery from the
/// gateway's temp dir (`{instances}`), polled every 20 ms.
pub const FILE_DISCOVERY: &str = r#"[admin]
listen = "127.0.0.1:0"
[discovery]
source = "file"
path = "{instances}"
poll_interval = "20ms"
"#;

/// A config for [`TestGateway::start`]: admin and listener "web" on port 0, file
/// discovery polling every 20 ms; `extra` is appended (routes for "web", services).
pub fn http_config(extra: &str) -> String {
    format!(
        r#"{FILE_DISCOVERY}[timeouts]
request = "2s"
connect = "1s"
[[listener]]
name = "web"
protocol = "http"
listen = "127.0.0.1:0"
{extra}"#
    )
}

/// A gateway running inside the test process.
pub struct TestGateway {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub table: SharedTable,
    pub dir: tempfile::TempDir,
    listeners: Vec<(String, SocketAddr)>,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestGateway {
    /// `config` is TOML; `{instances}` is replaced by a path in the gateway's temp dir
    /// and `{dir}` by the temp dir. Listeners should listen on `127.0.0.1:0`.
    pub async fn start(config: &str) -> TestGateway {
        let dir = tempfile::tempdir().unwrap();
        let text = config
            .replace("{instances}", &dir.path().join("instances.toml").display().to_string())
            .replace("{dir}", &dir.path().display().to_string());
        let config = Config::parse(&text).unwrap_or_else(|e| panic!("test config invalid:\n{e}"));
        let names: Vec<String> = config.listeners.iter().map(|l| l.name.clone()).collect();
        let gateway = Gateway::bind(config).await.expect("bind");
        let listeners: Vec<(String, SocketAddr)> =
            names.into_iter().filter_map(|n| gateway.listener_addr(&n).map(|a| (n, a))).collect();
        // `addr` is the listener named "web", or else the first one.
        let addr = gateway.listener_addr("web").or_else(|| listeners.first().map(|l| l.1)).expect("a listener");
        let admin = gateway.admin_addr();
        let table = gateway.table();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn({
            let shutdown = shutdown.clone();
            async move { gateway.serve(shutdown).await }
        });
        TestGateway { addr, admin, table, dir, listeners, shutdown, task: Some(task) }
    }

    /// The bound address of the listener called `name`.
    pub fn listener_addr(&self, name: &str) -> SocketAddr {
        self.listeners.iter().find(|(n, _)| n == name).map(|l| l.1).unwrap_or_else(|| panic!("no listener {name:?}"))
    }

    pub fn instances_path(&self) -> PathBuf {
        self.dir.path().join("instances.toml")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Waits until the live table's version is at least `version`.
    pub async fn wait_version(&self, version: u64) {
        wait_until(&format!("table version {version}"), Duration::from_secs(10), async || {
            self.table.load().version >= version
        })
        .await;
    }

    /// Waits until `service` has exactly `live` live endpoints.
    pub async fn wait_live(&self, service: &str, live: usize) {
        wait_until(&format!("{live} live instances of {service:?}"), Duration::from_secs(10), async || {
            self.table.load().service(service).is_some_and(|s| s.live.len() == live)
        })
        .await;
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), t).await.expect("gateway stops").unwrap();
        }
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Polls `ok` every 10 ms until it holds; panics naming `what` after `limit`.
/// Returns how long it took, for tests that bound a documented delay.
pub async fn wait_until(what: &str, limit: Duration, mut ok: impl AsyncFnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        // Checked before the deadline, so a condition that holds just in time still counts.
        if ok().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "not reached within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Fetches a text page from the admin server.
pub async fn admin_get(admin: SocketAddr, path: &str) -> (u16, String) {
    get(&client(), &format!("http://{admin}{path}")).await
}

/// The value of one Prometheus sample (`name{labels}` exactly as rendered, labels sorted), 0 if absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')).and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

/// An address on 127.0.0.1 that refuses connections: the port is bound but never
/// listened on, and stays reserved (so no other test's listener can take it)
/// until the returned socket is dropped.
pub fn refusing_addr() -> (tokio::net::TcpSocket, SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    (socket, addr)
}

/// A port on 127.0.0.1 held for one test until dropped, for a child process
/// that must listen on a port given in advance (etcd, the gateway binary).
///
/// A port bound and released at once can be taken by anyone before the child
/// binds it, and again while the child restarts. This one stays bound, with
/// `SO_REUSEADDR` and never listened on: Linux then never hands it out to a
/// `bind(0)` nor as a connect's source port, while a server that binds it
/// explicitly with `SO_REUSEADDR` (etcd, being Go; switchyard, through tokio)
/// may listen on it — again after a restart, since the reservation still holds it.
pub struct ReservedPort {
    pub port: u16,
    _socket: tokio::net::TcpSocket,
}

impl ReservedPort {
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

pub fn reserve_port() -> ReservedPort {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_reuseaddr(true).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = socket.local_addr().unwrap().port();
    ReservedPort { port, _socket: socket }
}

/// The gateway binary as a child process; killed on drop.
pub struct GatewayProcess {
    pub child: Child,
    pub dir: tempfile::TempDir,
}

impl GatewayProcess {
    /// Starts `switchyard run` with a config written into a temp dir; the config must use
    /// fixed ports (see [`reserve_port`]). Waits for `/readyz` on `admin`.
    pub async fn start(config: &str, admin: SocketAddr) -> GatewayProcess {
        GatewayProcess::start_with_env(config, admin, &[]).await
    }

    /// [`GatewayProcess::start`] with extra environment variables.
    pub async fn start_with_env(config: &str, admin: SocketAddr, env: &[(&str, &str)]) -> GatewayProcess {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("switchyard.toml");
        std::fs::write(&path, config.replace("{dir}", &dir.path().display().to_string())).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .envs(env.iter().copied())
            .args(["run", "--config"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start switchyard");
        let process = GatewayProcess { child, dir };
        let c = client();
        wait_until("switchyard ready", Duration::from_secs(10), async || {
            let req = http::Request::get(format!("http://{admin}/readyz")).body(Full::default()).unwrap();
            matches!(tokio::time::timeout(Duration::from_secs(1), c.request(req)).await, Ok(Ok(res)) if res.status() == 200)
        })
        .await;
        process
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Resident set size in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    pub fn signal(&self, signal: &str) {
        let ok =
            Command::new("kill").args([&format!("-{signal}"), &self.pid().to_string()]).status().unwrap().success();
        assert!(ok, "kill -{signal} failed");
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A child process, killed (and reaped) on drop.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
