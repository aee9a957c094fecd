//! Real etcd processes for tests: a single node or a three-member cluster on
//! reserved 127.0.0.1 ports (see [`reserve_port`]) in temp dirs, with the fast timings from ETCD.md (so a
//! 1 s lease TTL is honoured), SIGKILL teardown and restart on the same data
//! dir; and a TCP relay the test can cut and restore between a client and etcd.
//! A missing `etcd` binary is a loud panic, never a skip.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{reserve_port, wait_until, ReservedPort};

pub const ETCD_BIN: &str = "/usr/bin/etcd";

/// One etcd member.
pub struct Etcd {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    initial_cluster: String,
    token: String,
    data: PathBuf,
    _dir: tempfile::TempDir,
    child: Option<Child>,
    /// Serve clients over TLS (https) and require a client certificate.
    tls: Option<EtcdTls>,
    /// Held for the member's whole life, so a restart finds its ports free.
    _ports: [ReservedPort; 2],
    /// (cluster id, member id) first seen healthy: a restart on the same data
    /// dir must come back as the same member of the same cluster.
    identity: Option<(u64, u64)>,
    /// Started with etcd's default timings and keepalive flags (see [`Etcd::start_stock`]).
    stock: bool,
}

/// PEM files for an etcd that serves its clients over TLS and requires a
/// client certificate signed by `ca` (`--client-cert-auth`).
#[derive(Debug, Clone)]
pub struct EtcdTls {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// The client identity the harness itself uses (health polling, [`Etcd::client`]).
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl EtcdTls {
    /// etcd-client TLS options trusting `ca` and presenting the client identity.
    pub fn client_options(&self) -> etcd_client::TlsOptions {
        let read = |p: &PathBuf| std::fs::read(p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()));
        etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(read(&self.ca)))
            .identity(etcd_client::Identity::from_pem(read(&self.client_cert), read(&self.client_key)))
    }
}

impl Etcd {
    /// A single-node etcd, healthy when this returns.
    pub async fn start() -> Etcd {
        let mut e = Etcd::member("s");
        e.initial_cluster = format!("s=http://127.0.0.1:{}", e.peer_port);
        e.spawn();
        e.wait_healthy(Duration::from_secs(15)).await;
        e
    }

    /// A single-node etcd that serves clients only on `https://127.0.0.1:P`
    /// with `--client-cert-auth`; healthy (a TLS status call answers) when this returns.
    pub async fn start_tls(tls: EtcdTls) -> Etcd {
        let mut e = Etcd::member("s");
        e.initial_cluster = format!("s=http://127.0.0.1:{}", e.peer_port);
        e.tls = Some(tls);
        e.spawn();
        e.wait_healthy(Duration::from_secs(15)).await;
        e
    }

    /// A single-node etcd with every timing and keepalive flag at etcd's
    /// defaults (heartbeat 100 ms, election 1 s, `--grpc-keepalive-min-time` 5 s):
    /// what an operator runs. Clients that ping more often than every 5 s are
    /// sent GOAWAY, which the fast harness etcd would not show.
    pub async fn start_stock() -> Etcd {
        let mut e = Etcd::member("s");
        e.initial_cluster = format!("s=http://127.0.0.1:{}", e.peer_port);
        e.stock = true;
        e.spawn();
        e.wait_healthy(Duration::from_secs(30)).await;
        e
    }

    fn member(name: &str) -> Etcd {
        assert!(
            std::path::Path::new(ETCD_BIN).exists(),
            "{ETCD_BIN} not found: install Debian's etcd-server (the etcd tests never skip)"
        );
        let dir = tempfile::tempdir().unwrap();
        let ports = [reserve_port(), reserve_port()];
        Etcd {
            name: name.to_string(),
            client_port: ports[0].port,
            peer_port: ports[1].port,
            initial_cluster: String::new(),
            token: format!("t-{}", fastrand::u64(..)),
            data: dir.path().join("data"),
            _dir: dir,
            child: None,
            tls: None,
            _ports: ports,
            identity: None,
            stock: false,
        }
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "etcd {} already running", self.name);
        let client = self.url();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self._dir.path().join("etcd.log")).unwrap();
        let child = Command::new(ETCD_BIN)
            .args(["--name", &self.name, "--data-dir"])
            .arg(&self.data)
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial_cluster, "--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &self.token])
            .args(self.tls.iter().flat_map(|t| {
                [
                    "--cert-file".into(),
                    t.server_cert.clone().into_os_string(),
                    "--key-file".into(),
                    t.server_key.clone().into_os_string(),
                    "--trusted-ca-file".into(),
                    t.ca.clone().into_os_string(),
                    "--client-cert-auth".into(),
                ]
            }))
            .args(if self.stock { &[][..] } else { &["--heartbeat-interval=10", "--election-timeout=100"][..] })
            .args(["--logger=zap", "--log-outputs=stderr"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {ETCD_BIN}: {e}"));
        self.child = Some(child);
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.client_port))
    }

    pub fn log_path(&self) -> PathBuf {
        self._dir.path().join("etcd.log")
    }

    /// Waits until this member is healthy and is really this member: the
    /// etcd answering on the client port has our name and peer URL (so it is
    /// not another test's etcd), and after a restart the same cluster and
    /// member ids as before (so it reopened our data dir).
    pub async fn wait_healthy(&mut self, limit: Duration) {
        let what = format!("etcd {} healthy (log: {})", self.name, self.log_path().display());
        let mut seen = None;
        wait_until(&what, limit, async || {
            // Over plain HTTP, `/health` also requires a leader and a working store.
            if self.tls.is_none() && !health(self.addr()).await {
                return false;
            }
            seen = self.identify().await;
            seen.is_some()
        })
        .await;
        let (cluster, member, name, peers) = seen.unwrap();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        assert_eq!(name, self.name, "another etcd answers on port {}", self.client_port);
        assert!(peers.contains(&peer), "etcd on port {} has peer URLs {peers:?}, not {peer}", self.client_port);
        match self.identity {
            None => self.identity = Some((cluster, member)),
            Some(first) => assert_eq!(first, (cluster, member), "etcd {} came back as another member", self.name),
        }
    }

    /// (cluster id, member id, member name, member peer URLs) of the etcd
    /// on the client port, once it has a leader.
    async fn identify(&self) -> Option<(u64, u64, String, Vec<String>)> {
        let attempt = async {
            let mut opts = etcd_client::ConnectOptions::new().with_connect_timeout(Duration::from_millis(500));
            if let Some(tls) = &self.tls {
                opts = opts.with_tls(tls.client_options());
            }
            let mut c = etcd_client::Client::connect([self.url()], Some(opts)).await.ok()?;
            let status = c.status().await.ok()?;
            if status.leader() == 0 {
                return None;
            }
            let header = status.header()?;
            let (cluster, id) = (header.cluster_id(), header.member_id());
            let members = c.member_list().await.ok()?;
            let me = members.members().iter().find(|m| m.id() == id)?;
            Some((cluster, id, me.name().to_string(), me.peer_urls().to_vec()))
        };
        tokio::time::timeout(Duration::from_secs(1), attempt).await.ok().flatten()
    }

    /// SIGKILL, and wait until the process is gone (its ports are free again).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the process again on the same ports and data dir.
    pub async fn restart(&mut self) {
        self.spawn();
        self.wait_healthy(Duration::from_secs(15)).await;
    }

    pub async fn client(&self) -> etcd_client::Client {
        let opts = self.tls.as_ref().map(|t| etcd_client::ConnectOptions::new().with_tls(t.client_options()));
        etcd_client::Client::connect([self.url()], opts).await.expect("etcd client")
    }

    /// A client that authenticates as `user`.
    pub async fn client_as(&self, user: &str, password: &str) -> etcd_client::Client {
        let mut opts = etcd_client::ConnectOptions::new().with_user(user, password);
        if let Some(t) = &self.tls {
            opts = opts.with_tls(t.client_options());
        }
        etcd_client::Client::connect([self.url()], Some(opts)).await.expect("etcd client")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Three members on 127.0.0.1.
pub struct Cluster {
    pub members: Vec<Etcd>,
}

impl Cluster {
    pub async fn start() -> Cluster {
        let mut members: Vec<Etcd> = (1..=3).map(|i| Etcd::member(&format!("m{i}"))).collect();
        let initial = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let token = format!("c-{}", fastrand::u64(..));
        for m in &mut members {
            m.initial_cluster = initial.clone();
            m.token = token.clone();
            m.spawn();
        }
        for m in &mut members {
            m.wait_healthy(Duration::from_secs(20)).await;
        }
        Cluster { members }
    }

    pub fn urls(&self) -> Vec<String> {
        self.members.iter().map(Etcd::url).collect()
    }
}

async fn health(addr: SocketAddr) -> bool {
    let attempt = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        s.write_all(b"GET /health HTTP/1.0\r\nHost: x\r\n\r\n").await.ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        Some(String::from_utf8_lossy(&buf).contains("\"health\":\"true\""))
    };
    tokio::time::timeout(Duration::from_secs(1), attempt).await.ok().flatten().unwrap_or(false)
}

/// A TCP relay to `target` that the test can cut (every open connection is
/// dropped and new ones are closed at once) and restore.
pub struct Relay {
    pub addr: SocketAddr,
    open: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Relay {
    pub async fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let accept = tokio::spawn({
            let (open, conns) = (open.clone(), conns.clone());
            async move {
                loop {
                    let Ok((mut inbound, _)) = listener.accept().await else {
                        continue;
                    };
                    if !open.load(Ordering::SeqCst) {
                        drop(inbound);
                        continue;
                    }
                    let task = tokio::spawn(async move {
                        if let Ok(mut outbound) = TcpStream::connect(target).await {
                            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    conns.lock().unwrap().push(task.abort_handle());
                }
            }
        });
        Relay { addr, open, conns, accept }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    pub fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// A gateway config with the etcd source and one HTTP listener `web` without
/// routes (the Host header names the service). `extra` goes into `[discovery]`.
pub fn gateway_config(endpoints: &[String], extra: &str) -> String {
    let eps = endpoints.iter().map(|e| format!("{e:?}")).collect::<Vec<_>>().join(", ");
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[discovery]
source = "etcd"
endpoints = [{eps}]
dial_timeout = "500ms"
request_timeout = "2s"
{extra}

[[listener]]
name = "web"
protocol = "http"
listen = "127.0.0.1:0"
"#
    )
}

/// GET `/` with `Host: service` through the gateway.
pub async fn get_service(client: &super::HttpClient, gateway: SocketAddr, service: &str) -> (u16, String) {
    let req = http::Request::get(format!("http://{gateway}/"))
        .header(http::header::HOST, service)
        .body(http_body_util::Full::default())
        .unwrap();
    super::request(client, req).await
}

/// Like [`get_service`] but returns an error instead of panicking.
pub async fn try_get_service(
    client: &super::HttpClient,
    gateway: SocketAddr,
    service: &str,
) -> Result<(u16, String), String> {
    use http_body_util::BodyExt;
    let req = http::Request::get(format!("http://{gateway}/"))
        .header(http::header::HOST, service)
        .body(http_body_util::Full::default())
        .unwrap();
    let res = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .map_err(|_| "timeout".to_string())?
        .map_err(|e| e.to_string())?;
    let status = res.status().as_u16();
    let body = res.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Our JSON instance value.
pub fn instance_json(service: &str, id: &str, addr: SocketAddr, meta: &[(&str, &str)]) -> String {
    let meta: serde_json::Map<String, serde_json::Value> =
        meta.iter().map(|(k, v)| (k.to_string(), (*v).into())).collect();
    serde_json::json!({ "id": id, "name": service, "addr": addr.to_string(), "metadata": meta }).to_string()
}
