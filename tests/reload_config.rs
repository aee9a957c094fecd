//! Live config reload (`POST /reload`, SIGHUP): an edited route takes effect
//! under open keep-alive connections without failing a request in flight; an
//! invalid file keeps the running config and the errors come back in the
//! answer; listeners added, moved and removed leave the others' connections alone.

use crate::support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio_util::sync::CancellationToken;

use support::{admin_get, client, get, metric, reserve_port, write_instances, Backend, GatewayProcess};
use switchyard::config::Config;
use switchyard::server::Gateway;

/// A gateway in this process that reads its config from a file, so that it can reload it.
struct FileGateway {
    web: SocketAddr,
    admin: SocketAddr,
    path: PathBuf,
    dir: tempfile::TempDir,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// Admin and discovery of every config here; `{dir}` is the gateway's temp dir.
const HEAD: &str = r#"[admin]
listen = "127.0.0.1:0"
[discovery]
source = "file"
path = "{dir}/instances.toml"
poll_interval = "20ms"
[timeouts]
request = "5s"
shutdown_grace = "5s"
"#;

/// An `http` listener called `name` on `listen` whose every request goes to `service`.
fn listener(name: &str, listen: &str, service: &str) -> String {
    format!("[[listener]]\nname = \"{name}\"\nprotocol = \"http\"\nlisten = \"{listen}\"\n[[listener.route]]\nservice = \"{service}\"\n")
}

impl FileGateway {
    /// `web` is the address of the listener called `main`.
    async fn start(main: &str, body: &str, instances: &[support::InstanceLine<'_>]) -> FileGateway {
        let dir = tempfile::tempdir().unwrap();
        write_instances(&dir.path().join("instances.toml"), instances);
        let path = dir.path().join("switchyard.toml");
        FileGateway::write_to(&path, dir.path(), body);
        let config = Config::load(&path).unwrap_or_else(|e| panic!("test config invalid:\n{e}"));
        let gateway = Gateway::bind(config).await.expect("bind").with_config_file(path.clone());
        let (web, admin) = (gateway.listener_addr(main).expect("listener main"), gateway.admin_addr());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(gateway.serve(shutdown.clone()));
        let c = client();
        support::wait_until("first table", Duration::from_secs(10), async || {
            get(&c, &format!("http://{admin}/readyz")).await.0 == 200
        })
        .await;
        FileGateway { web, admin, path, dir, shutdown, task }
    }

    fn write_to(path: &std::path::Path, dir: &std::path::Path, body: &str) {
        let text = format!("{HEAD}{body}").replace("{dir}", &dir.display().to_string());
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    /// Replaces the config file (the running config is not touched until a reload).
    fn write(&self, body: &str) {
        FileGateway::write_to(&self.path, self.dir.path(), body);
    }

    async fn reload(&self) -> (u16, serde_json::Value) {
        reload(self.admin).await
    }

    async fn metrics(&self) -> String {
        admin_get(self.admin, "/metrics").await.1
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task).await.expect("gateway stops").unwrap();
    }
}

async fn reload(admin: SocketAddr) -> (u16, serde_json::Value) {
    let req = http::Request::post(format!("http://{admin}/reload")).body(Full::default()).unwrap();
    let res = client().request(req).await.expect("POST /reload");
    let status = res.status().as_u16();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&body))))
}

/// The address a successful reload reports for listener `name`.
fn reported_addr(answer: &serde_json::Value, name: &str) -> SocketAddr {
    answer["changes"]["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l[0] == name)
        .and_then(|l| l[1].as_str()?.parse().ok())
        .unwrap_or_else(|| panic!("no listener {name:?} in {answer}"))
}

/// One connection held open by the test (HTTP/1.1 keep-alive, or h2c with prior
/// knowledge: each request a stream of it), for requests on it.
enum HeldConnection {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl HeldConnection {
    async fn open(addr: SocketAddr) -> HeldConnection {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(conn);
        HeldConnection::H1(sender)
    }

    async fn open_h2(addr: SocketAddr) -> HeldConnection {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
        tokio::spawn(conn);
        HeldConnection::H2(sender)
    }

    /// GET on this connection → (status, body); panics if the connection is gone.
    async fn get(&mut self, path: &str) -> (u16, String) {
        let sending = match self {
            HeldConnection::H1(sender) => {
                sender.ready().await.expect("the held connection is still open");
                let req = http::Request::get(path).header("host", "test").body(Full::default()).unwrap();
                futures_util::future::Either::Left(sender.send_request(req))
            }
            HeldConnection::H2(sender) => {
                sender.ready().await.expect("the held connection is still open");
                let req = http::Request::get(format!("http://test{path}")).body(Full::default()).unwrap();
                futures_util::future::Either::Right(sender.send_request(req))
            }
        };
        let res = tokio::time::timeout(Duration::from_secs(10), sending)
            .await
            .expect("answer in time")
            .expect("answer on the held connection");
        let status = res.status().as_u16();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_route_takes_effect_without_failing_a_request() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let instances = [("svc-a", "a1", a.addr, &[][..]), ("svc-b", "b1", b.addr, &[][..])];
    // A listener name of its own: metrics are process-wide, shared with the other tests here.
    let gw = FileGateway::start("follow", &listener("follow", "127.0.0.1:0", "svc-a"), &instances).await;
    let mut held = HeldConnection::open(gw.web).await;
    assert_eq!(held.get("/").await, (200, "a".into()));
    // And an h2c connection: its streams are served through hyper, each holding the proxy.
    let mut held_h2 = HeldConnection::open_h2(gw.web).await;
    assert_eq!(held_h2.get("/").await, (200, "a".into()));

    // Clients in a bounded loop, and one slow request in flight, while the route changes twice.
    let failures = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut loops = Vec::new();
    for _ in 0..4 {
        let (failures, done, stop, url) = (failures.clone(), done.clone(), stop.clone(), format!("http://{}/", gw.web));
        loops.push(tokio::spawn(async move {
            let c = client();
            for _ in 0..5_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let req = http::Request::get(&url).body(Full::default()).unwrap();
                match tokio::time::timeout(Duration::from_secs(10), c.request(req)).await {
                    Ok(Ok(res)) if res.status() == 200 => {}
                    _ => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let slow = tokio::spawn(support::get_owned(format!("http://{}/slow/1500", gw.web)));
    support::wait_until("100 requests", Duration::from_secs(10), async || done.load(Ordering::Relaxed) >= 100).await;

    gw.write(&listener("follow", "127.0.0.1:0", "svc-b"));
    let (status, answer) = gw.reload().await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["changes"]["updated"], serde_json::json!(["follow"]), "{answer}");
    assert_eq!(answer["changes"]["replaced"], serde_json::json!([]), "kept on its socket: {answer}");
    // The same keep-alive connection, opened before the reload, follows the new route.
    let connections = metric(&gw.metrics().await, "switchyard_connections_total{listener=\"follow\"}");
    assert_eq!(held.get("/").await, (200, "b".into()));
    assert_eq!(held_h2.get("/").await, (200, "b".into()), "a new stream of an open h2c connection follows");
    let b_before = b.hits();
    let during = done.load(Ordering::Relaxed);
    support::wait_until("100 more requests", Duration::from_secs(10), async || {
        done.load(Ordering::Relaxed) >= during + 100
    })
    .await;
    assert!(b.hits() >= b_before + 100, "traffic follows the new route");

    gw.write(&listener("follow", "127.0.0.1:0", "svc-a"));
    assert_eq!(gw.reload().await.0, 200);
    assert_eq!(held.get("/").await, (200, "a".into()));
    assert_eq!(held_h2.get("/").await, (200, "a".into()));
    assert_eq!(
        metric(&gw.metrics().await, "switchyard_connections_total{listener=\"follow\"}") - connections,
        0.0,
        "the held connections were not reopened"
    );
    // The request that was in flight through both reloads was answered by the old route's service.
    assert_eq!(slow.await.unwrap(), (200, "a".into()));
    stop.store(true, Ordering::Relaxed);
    for l in loops {
        l.await.unwrap();
    }
    assert_eq!(failures.load(Ordering::Relaxed), 0, "failed requests during reloads");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_file_keeps_the_running_config_and_reports_every_error() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let instances = [("svc-a", "a1", a.addr, &[][..]), ("svc-b", "b1", b.addr, &[][..])];
    let gw = FileGateway::start("web", &listener("web", "127.0.0.1:0", "svc-a"), &instances).await;
    let c = client();
    let url = format!("http://{}/", gw.web);
    assert_eq!(get(&c, &url).await, (200, "a".into()));

    // Two bad fields in a file that would also move the route: nothing of it may apply.
    gw.write(&format!(
        "{}balance = \"rr\"\n[[listener]]\nname = \"bad\"\nprotocol = \"http\"\nlisten = \"nowhere\"\n",
        listener("web", "127.0.0.1:0", "svc-b")
    ));
    let (status, answer) = gw.reload().await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["result"], "failure");
    let errors: Vec<String> =
        answer["errors"].as_array().unwrap().iter().map(|e| e.as_str().unwrap().to_string()).collect();
    assert!(errors.iter().any(|e| e.starts_with("listener[0].route[0].balance:")), "{errors:?}");
    assert!(errors.iter().any(|e| e.starts_with("listener[1].listen:")), "{errors:?}");
    assert_eq!(get(&c, &url).await, (200, "a".into()), "the running config keeps serving");

    // Valid TOML naming a certificate that does not exist: the build fails, not the serving.
    gw.write(&format!(
        "{}[[listener]]\nname = \"tls\"\nprotocol = \"https\"\nlisten = \"127.0.0.1:0\"\n[[listener.tls]]\ncert = \"{{dir}}/missing.pem\"\nkey = \"{{dir}}/missing.key\"\n",
        listener("web", "127.0.0.1:0", "svc-b")
    ));
    let (status, answer) = gw.reload().await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer["errors"][0].as_str().unwrap().starts_with("listener[1].tls"), "{answer}");
    assert_eq!(get(&c, &url).await, (200, "a".into()));

    // Fixed: the same reload now applies.
    gw.write(&listener("web", "127.0.0.1:0", "svc-b"));
    assert_eq!(gw.reload().await.0, 200);
    assert_eq!(get(&c, &url).await, (200, "b".into()));
    // GET is not a reload.
    assert_eq!(admin_get(gw.admin, "/reload").await.0, 405);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_come_move_and_go_while_another_keeps_its_connection() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let instances = [("svc-a", "a1", a.addr, &[][..]), ("svc-b", "b1", b.addr, &[][..])];
    let web = listener("web", "127.0.0.1:0", "svc-a");
    let gw = FileGateway::start("web", &web, &instances).await;
    let mut held = HeldConnection::open(gw.web).await;
    assert_eq!(held.get("/").await, (200, "a".into()));
    // And an h2c connection: its streams are served through hyper, each holding the proxy.
    let mut held_h2 = HeldConnection::open_h2(gw.web).await;
    assert_eq!(held_h2.get("/").await, (200, "a".into()));
    let (p1, p2) = (reserve_port(), reserve_port());
    let c = client();

    // Added.
    gw.write(&format!("{web}{}", listener("extra", &p1.addr().to_string(), "svc-b")));
    let (status, answer) = gw.reload().await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["changes"]["started"], serde_json::json!(["extra"]));
    assert_eq!(reported_addr(&answer, "extra"), p1.addr());
    assert_eq!(get(&c, &format!("http://{}/", p1.addr())).await, (200, "b".into()));
    assert_eq!(held.get("/").await, (200, "a".into()));

    // Moved: a new socket on the new address; the old address stops accepting.
    gw.write(&format!("{web}{}", listener("extra", &p2.addr().to_string(), "svc-b")));
    let (status, answer) = gw.reload().await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["changes"]["replaced"], serde_json::json!(["extra"]));
    assert_eq!(get(&c, &format!("http://{}/", p2.addr())).await, (200, "b".into()));
    assert!(tokio::net::TcpStream::connect(p1.addr()).await.is_err(), "the old address is closed");
    assert_eq!(held.get("/").await, (200, "a".into()));

    // Removed, with a request in flight on it: that one drains, new connections are refused.
    let in_flight = tokio::spawn(support::get_owned(format!("http://{}/slow/800", p2.addr())));
    support::wait_until("the slow request reached b", Duration::from_secs(10), async || b.hits() >= 3).await;
    gw.write(&web);
    let (status, answer) = gw.reload().await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["changes"]["stopped"], serde_json::json!(["extra"]));
    assert_eq!(in_flight.await.unwrap(), (200, "b".into()), "the removed listener's request finished");
    assert!(tokio::net::TcpStream::connect(p2.addr()).await.is_err(), "a removed listener is closed");
    assert_eq!(held.get("/").await, (200, "a".into()), "the other listener's connection never noticed");
    gw.stop().await;
}

/// The real binary: SIGHUP reloads (it used to kill the process).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_file_and_keeps_the_process() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let (admin, web) = (reserve_port(), reserve_port());
    let config = |service: &str| {
        format!(
            "[admin]\nlisten = \"{}\"\n[discovery]\nsource = \"file\"\npath = \"{{dir}}/instances.toml\"\npoll_interval = \"20ms\"\n{}",
            admin.addr(),
            listener("web", &web.addr().to_string(), service)
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let instances = [("svc-a", "a1", a.addr, &[][..]), ("svc-b", "b1", b.addr, &[][..])];
    write_instances(&dir.path().join("instances.toml"), &instances);
    let text = config("svc-a").replace("{dir}", &dir.path().display().to_string());
    let gw = GatewayProcess::start(&text, admin.addr()).await;
    let c = client();
    let url = format!("http://{}/", web.addr());
    assert_eq!(get(&c, &url).await, (200, "a".into()));
    let metrics = async || admin_get(admin.addr(), "/metrics").await.1;
    let started = metric(&metrics().await, "switchyard_config_last_reload_success_timestamp_seconds");
    assert!(started > 1.7e9, "stamped at start-up");
    // Counters are exported at zero before the first reload, so that rate() sees it.
    assert!(metrics().await.contains("switchyard_config_reloads_total{result=\"failure\"} 0"));

    let file = gw.dir.path().join("switchyard.toml");
    std::fs::write(&file, "[[listener]]\nname = 1\n").unwrap();
    gw.signal("HUP");
    support::wait_until("the failed reload counted", Duration::from_secs(10), async || {
        metric(&metrics().await, "switchyard_config_reloads_total{result=\"failure\"}") == 1.0
    })
    .await;
    assert_eq!(get(&c, &url).await, (200, "a".into()), "alive, on the running config");

    std::fs::write(&file, config("svc-b").replace("{dir}", &dir.path().display().to_string())).unwrap();
    gw.signal("HUP");
    support::wait_until("the route follows the file", Duration::from_secs(10), async || {
        get(&c, &url).await == (200, "b".into())
    })
    .await;
    let text = metrics().await;
    assert_eq!(metric(&text, "switchyard_config_reloads_total{result=\"success\"}"), 1.0);
    assert_eq!(metric(&text, "switchyard_config_reloads_total{result=\"failure\"}"), 1.0);
    assert!(metric(&text, "switchyard_config_last_reload_success_timestamp_seconds") >= started);
    drop(gw);
}
