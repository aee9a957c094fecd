//! etcd auth and TLS against a real etcd: a gateway and a `Registrar` with a
//! user and password (auth enabled, least-privilege roles); a gateway with a
//! wrong password stays up, not ready, and counts and logs the failure; a
//! gateway and a `Registrar` over TLS with a client certificate
//! (`--client-cert-auth`), and a gateway without a client certificate is refused.

use crate::support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use etcd_client::{GetOptions, Permission};
use support::etcd::{gateway_config, get_service, instance_json, Etcd, EtcdTls};
use support::tls::Ca;
use support::{admin_get, client, reserve_port, wait_until, Backend, ReservedPort, TestGateway};
use switchyard::config::ClientTls;
use switchyard::register::{Registrar, Registration};

/// Sum of the samples of `name` whose labels contain every one of `labels`.
fn metric_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' ')))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The bodies seen over `n` requests to `service`, all of which must be 200.
async fn bodies(gw: SocketAddr, service: &str, n: usize) -> BTreeSet<String> {
    let http = client();
    let mut seen = BTreeSet::new();
    for _ in 0..n {
        let (status, body) = get_service(&http, gw, service).await;
        assert_eq!(status, 200, "{service}: {body}");
        seen.insert(body);
    }
    seen
}

/// The gateway binary with its stderr in a file, not waited on for readiness.
struct Process {
    child: Child,
    admin: SocketAddr,
    web: SocketAddr,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
    _ports: [ReservedPort; 2],
}

impl Process {
    fn start(endpoints: &[String], extra: &str) -> Process {
        let ports = [reserve_port(), reserve_port()];
        let (admin, web) = (ports[0].addr(), ports[1].addr());
        let config = gateway_config(endpoints, extra)
            .replace("listen = \"127.0.0.1:0\"\n\n[discovery]", &format!("listen = \"{admin}\"\n\n[discovery]"))
            .replace("listen = \"127.0.0.1:0\"\n", &format!("listen = \"{web}\"\n"));
        assert!(config.contains(&admin.to_string()) && config.contains(&web.to_string()));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("switchyard.toml");
        std::fs::write(&path, config).unwrap();
        let log = dir.path().join("stderr.log");
        let child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["run", "--config"])
            .arg(&path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start switchyard");
        Process { child, admin, web, log, _dir: dir, _ports: ports }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the admin server answers `/healthz`.
    async fn wait_admin(&mut self) {
        wait_until("the admin server up", Duration::from_secs(10), async || {
            assert!(self.child.try_wait().unwrap().is_none(), "switchyard exited; log:\n{}", self.log());
            tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(self.admin))
                .await
                .is_ok_and(|c| c.is_ok())
        })
        .await;
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Users: root (required to enable auth), `switchyard` (read `/services/`),
/// `provider` (read-write `/services/`); then enables auth.
async fn enable_auth(kv: &mut etcd_client::Client) {
    kv.role_add("root").await.unwrap();
    kv.user_add("root", "root-pw", None).await.unwrap();
    kv.user_grant_role("root", "root").await.unwrap();
    kv.role_add("discovery-read").await.unwrap();
    kv.role_grant_permission("discovery-read", Permission::read("/services/").with_prefix()).await.unwrap();
    kv.user_add("switchyard", "gw-secret", None).await.unwrap();
    kv.user_grant_role("switchyard", "discovery-read").await.unwrap();
    kv.role_add("provider").await.unwrap();
    kv.role_grant_permission("provider", Permission::read_write("/services/").with_prefix()).await.unwrap();
    kv.user_add("provider", "prov-secret", None).await.unwrap();
    kv.user_grant_role("provider", "provider").await.unwrap();
    kv.auth_enable().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_gateway_and_registrar_with_credentials_wrong_password_not_ready() {
    let etcd = Etcd::start().await;
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let mut kv = etcd.client().await;
    kv.put("/services/sec/a", instance_json("sec", "a", a.addr, &[]), None).await.unwrap();
    enable_auth(&mut kv).await;

    // Auth is really enforced: no token → refused; the read-only user cannot write.
    let anonymous = kv.get("/services/", Some(GetOptions::new().with_prefix())).await;
    assert!(anonymous.is_err(), "read without a user: {anonymous:?}");
    let mut reader = etcd.client_as("switchyard", "gw-secret").await;
    let listed = reader.get("/services/", Some(GetOptions::new().with_prefix())).await.unwrap();
    assert_eq!(listed.kvs().len(), 1);
    let write = reader.put("/services/sec/x", "127.0.0.1:1", None).await;
    assert!(write.is_err(), "write as the read-only user: {write:?}");

    // The gateway with the read-only user's credentials loads and routes.
    let good = gateway_config(&[etcd.url()], "username = \"switchyard\"\npassword = \"gw-secret\"");
    let gw = TestGateway::start(&good).await;
    gw.wait_live("sec", 1).await;
    assert_eq!(bodies(gw.addr, "sec", 4).await, BTreeSet::from(["a".into()]));
    assert_eq!(admin_get(gw.admin, "/readyz").await.0, 200);

    // A Registrar with credentials registers an instance, which gets traffic
    // (the gateway's watch, opened with a token, sees the provider's put).
    let mut reg = Registration::new(vec![etcd.url()], "sec", b.addr.to_string());
    reg.id = "b".into();
    reg.ttl = Duration::from_secs(2);
    reg.drain = Duration::from_millis(100);
    reg.etcd.auth = Some(("provider".into(), "prov-secret".into()));
    let mut registrar = Registrar::start(reg).unwrap();
    assert!(registrar.wait_registered(Duration::from_secs(5)).await, "registrar with credentials did not register");
    gw.wait_live("sec", 2).await;
    assert_eq!(bodies(gw.addr, "sec", 8).await, BTreeSet::from(["a".into(), "b".into()]));
    // Its lease is kept alive past the TTL (keepalive calls carry the token too).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(gw.table.load().service("sec").unwrap().live.len(), 2);

    // A gateway (the real binary, for its own metrics and log) with a wrong
    // password: stays up, never ready, serves nothing, counts and logs the failure.
    let mut p = Process::start(&[etcd.url()], "username = \"switchyard\"\npassword = \"wrong\"");
    p.wait_admin().await;
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert!(p.child.try_wait().unwrap().is_none(), "exited; log:\n{}", p.log());
    let (status, body) = admin_get(p.admin, "/readyz").await;
    assert_eq!(status, 503, "readyz with a wrong password: {body}");
    let (status, _) = get_service(&client(), p.web, "sec").await;
    assert_ne!(status, 200);
    let (_, metrics) = admin_get(p.admin, "/metrics").await;
    let errors = metric_sum(&metrics, "switchyard_discovery_errors_total", &["source=\"etcd\""]);
    eprintln!("MEASURE wrong password: {errors} discovery errors counted in ~2 s");
    // Backoff from 100 ms doubling: a handful of attempts, not a tight loop.
    assert!((1.0..=10.0).contains(&errors), "errors counted: {errors}\n{metrics}");
    let log = p.log();
    for line in log.lines().filter(|l| l.contains("authentication failed")) {
        eprintln!("MEASURE wrong password log: {line}");
    }
    assert!(log.contains("authentication failed"), "the log names the cause:\n{log}");
    assert_eq!(log.matches("authentication failed").count(), 1, "logged once per outage, not per retry:\n{log}");

    registrar.shutdown().await;
    gw.wait_live("sec", 1).await;
    gw.stop().await;
}

fn tls_table(ca: &Path, cert: Option<(&Path, &Path)>) -> String {
    match cert {
        Some((c, k)) => format!("tls = {{ ca = {ca:?}, cert = {c:?}, key = {k:?} }}"),
        None => format!("tls = {{ ca = {ca:?} }}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_client_certificates_gateway_and_registrar() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("etcd test CA");
    let ca_path = ca.write(dir.path(), "ca");
    let server = ca.issue(dir.path(), "server", &["127.0.0.1", "localhost"]);
    let harness = ca.issue(dir.path(), "harness", &["harness"]);
    let gateway = ca.issue(dir.path(), "gateway", &["switchyard-gateway"]);
    let provider = ca.issue(dir.path(), "provider", &["switchyard-provider"]);
    let etcd = Etcd::start_tls(EtcdTls {
        ca: ca_path.clone(),
        server_cert: server.cert.clone(),
        server_key: server.key.clone(),
        client_cert: harness.cert.clone(),
        client_key: harness.key.clone(),
    })
    .await;
    assert!(etcd.url().starts_with("https://127.0.0.1:"), "{}", etcd.url());
    // Plain HTTP on the client port is refused: etcd really serves TLS only.
    let plain = etcd_client::Client::connect(
        [etcd.url().replace("https://", "http://")],
        Some(etcd_client::ConnectOptions::new().with_connect_timeout(Duration::from_secs(1))),
    )
    .await;
    // The connect is lazy and succeeds; the first call must fail.
    let mut plain = plain.expect("a lazy connect succeeds");
    let got = tokio::time::timeout(Duration::from_secs(3), plain.get("/services/", None)).await;
    assert!(!matches!(got, Ok(Ok(_))), "plain http answered on the TLS port");

    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let mut kv = etcd.client().await;
    kv.put("/services/tls/a", instance_json("tls", "a", a.addr, &[]), None).await.unwrap();

    let gw =
        TestGateway::start(&gateway_config(&[etcd.url()], &tls_table(&ca_path, Some((&gateway.cert, &gateway.key)))))
            .await;
    gw.wait_live("tls", 1).await;
    assert_eq!(bodies(gw.addr, "tls", 4).await, BTreeSet::from(["a".into()]));
    assert_eq!(admin_get(gw.admin, "/readyz").await.0, 200);

    let mut reg = Registration::new(vec![etcd.url()], "tls", b.addr.to_string());
    reg.id = "b".into();
    reg.ttl = Duration::from_secs(2);
    reg.drain = Duration::from_millis(100);
    reg.etcd.tls = Some(ClientTls {
        ca: Some(ca_path.clone()),
        cert: Some(provider.cert.clone()),
        key: Some(provider.key.clone()),
        server_name: None,
    });
    let mut registrar = Registrar::start(reg).unwrap();
    assert!(registrar.wait_registered(Duration::from_secs(5)).await, "registrar over TLS did not register");
    gw.wait_live("tls", 2).await;
    assert_eq!(bodies(gw.addr, "tls", 8).await, BTreeSet::from(["a".into(), "b".into()]));
    let got = kv.get("/services/tls/b", None).await.unwrap();
    assert_eq!(got.kvs().len(), 1);
    assert!(got.kvs()[0].lease() != 0, "registered under a lease");

    // Without a client certificate etcd refuses the handshake: never ready, no crash.
    let no_cert = TestGateway::start(&gateway_config(&[etcd.url()], &tls_table(&ca_path, None))).await;
    // etcd itself logs the refused handshake: it is alive, and the missing certificate is why.
    wait_until("etcd refusing a client without a certificate", Duration::from_secs(10), async || {
        std::fs::read_to_string(etcd.log_path()).unwrap_or_default().contains("didn't provide a certificate")
    })
    .await;
    assert_eq!(admin_get(no_cert.admin, "/readyz").await.0, 503);
    assert!(no_cert.table.load().service("tls").is_none());
    // Meanwhile etcd serves a client that has a certificate: not ready because refused, not because etcd is down.
    assert_eq!(kv.get("/services/tls/a", None).await.expect("etcd alive").kvs().len(), 1);
    assert_eq!(admin_get(gw.admin, "/readyz").await.0, 200);
    no_cert.stop().await;

    registrar.shutdown().await;
    wait_until("the instance found through TLS etcd", Duration::from_secs(5), async || {
        gw.table.load().service("tls").is_some_and(|s| s.live.len() == 1)
    })
    .await;
    gw.stop().await;
}
