//! The dashboard proven against a real Prometheus (Debian's `prometheus`, as
//! `.ci/deps --test` installs it): etcd, the gateway, backends of every kind and
//! a Prometheus scraping `/metrics` every second, all on 127.0.0.1. Traffic of
//! every kind (HTTP/1.1, h2c, gRPC, an upgrade, TLS termination, TCP, TLS
//! passthrough, errors, discovery changes, an etcd outage, a certificate
//! reload) runs for about 20 s; then every expression of every panel of
//! `grafana/switchyard.json` must return data that moved, every template
//! variable must have values, the alert rules of `deploy/alerts.yml` must
//! evaluate cleanly (and fire for the service without instances), and
//! `promtool check metrics` must be clean.

use crate::support;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use support::etcd::{instance_json, Etcd};
use support::grpc::{EchoClient, GrpcBackend, Msg};
use support::l4::{round_trip, tls_connect, EchoServer, TestCa, TlsNameServer};
use support::tls::{self, Ca};
use support::{
    admin_get, client, get, get_owned, h2c_client, refusing_addr, request, reserve_port, wait_until, Backend,
    TestGateway,
};

const PROMETHEUS: &str = "/usr/bin/prometheus";
const PROMTOOL: &str = "/usr/bin/promtool";

/// A Prometheus process in a temp dir, scraping `target` every second.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    async fn start(target: SocketAddr) -> Prometheus {
        assert!(std::path::Path::new(PROMETHEUS).exists(), "{PROMETHEUS} not found: install Debian's prometheus");
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {rules}\nscrape_configs:\n  - job_name: switchyard\n    static_configs:\n      - targets: ['{target}']\n",
                rules = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/alerts.yml"),
            ),
        )
        .unwrap();
        let port = reserve_port();
        let addr: SocketAddr = format!("127.0.0.1:{}", port.port).parse().unwrap();
        drop(port);
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {PROMETHEUS}: {e}"));
        let p = Prometheus { child, addr, _dir: dir };
        let http = client();
        wait_until("prometheus ready", Duration::from_secs(30), async || {
            matches!(
                tokio::time::timeout(Duration::from_secs(1), get_opt(&http, &format!("http://{addr}/-/ready"))).await,
                Ok(Some(200))
            )
        })
        .await;
        p
    }

    async fn api(&self, path: &str, params: &[(&str, &str)]) -> serde_json::Value {
        let query: Vec<String> = params.iter().map(|(k, v)| format!("{k}={}", encode(v))).collect();
        let url = format!("http://{}{path}?{}", self.addr, query.join("&"));
        let (status, body) = get(&client(), &url).await;
        assert_eq!(status, 200, "{url}: {body}");
        serde_json::from_str(&body).unwrap()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn get_opt(http: &support::HttpClient, url: &str) -> Option<u16> {
    let req = http::Request::get(url).body(Full::<Bytes>::default()).ok()?;
    http.request(req).await.ok().map(|r| r.status().as_u16())
}

/// Percent-encodes a query parameter value.
fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A backend that answers an `Upgrade` with 101 and then echoes bytes.
async fn upgrade_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
                    if s.read_exact(&mut byte).await.is_err() {
                        return;
                    }
                    head.push(byte[0]);
                }
                let _ = s
                    .write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
                    .await;
                let (mut rd, mut wr) = s.split();
                let _ = tokio::io::copy(&mut rd, &mut wr).await;
            });
        }
    });
    addr
}

/// A backend that answers every request with `status` and closes.
async fn status_backend(status: u16) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let head = format!("HTTP/1.1 {status} Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                let _ = s.write_all(head.as_bytes()).await;
            });
        }
    });
    addr
}

fn now_ms() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis()
}

/// Every `expr` of the dashboard's panels (rows' nested panels included).
fn panel_exprs(doc: &serde_json::Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack: Vec<&serde_json::Value> = doc["panels"].as_array().unwrap().iter().collect();
    while let Some(p) = stack.pop() {
        if let Some(nested) = p["panels"].as_array() {
            stack.extend(nested);
        }
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(e) = t["expr"].as_str() {
                out.push((p["title"].as_str().unwrap_or("?").to_string(), e.to_string()));
            }
        }
    }
    out
}

/// Grafana's substitutions for "All" selected and a 1 s scrape interval
/// (`$__rate_interval` = max(4 × scrape interval, step + scrape interval)).
fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", "4s")
        .replace("$__range", "1h")
        .replace("$job", ".*")
        .replace("$instance", ".*")
        .replace("$listener", ".*")
        .replace("$service", ".*")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_panel_shows_moving_data_from_a_real_prometheus() {
    let mut etcd = Etcd::start().await;
    let mut kv = etcd.client().await;
    let dir = tempfile::tempdir().unwrap();

    // Backends of every kind.
    let api = [Backend::start("api-1").await, Backend::start("api-2").await];
    let grpc = GrpcBackend::start("g1").await;
    let upg = upgrade_backend().await;
    let echo = EchoServer::start().await;
    let (_refusing, refused) = refusing_addr();
    let (flip_socket, flip_addr) = refusing_addr();
    let mut flip_socket = Some(flip_socket);
    let mut flip_listener: Option<TcpListener> = None;
    let unavailable = status_backend(503).await;
    let test_ca = TestCa::new();
    let passthrough = TlsNameServer::start(&test_ca, "a.example.com").await;
    let ca = Ca::new("prometheus test CA");
    let cert = ca.issue(dir.path(), "site", &["site.test"]);

    for (i, b) in api.iter().enumerate() {
        kv.put(format!("/services/api/a{i}"), instance_json("api", &format!("a{i}"), b.addr, &[]), None).await.unwrap();
    }
    kv.put("/services/echo/g1", instance_json("echo", "g1", grpc.addr, &[("protocol", "h2c")]), None).await.unwrap();
    // Two instances that refuse: outlier detection ejects both (max_ejected_percent = 100),
    // and the requests after that go out in panic mode.
    kv.put("/services/broken/b1", refused.to_string(), None).await.unwrap();
    kv.put("/services/broken/b2", refused.to_string(), None).await.unwrap();
    kv.put("/services/upg/u1", upg.to_string(), None).await.unwrap();
    kv.put("/services/db/e1", echo.addr.to_string(), None).await.unwrap();
    kv.put("/services/db/dead", refused.to_string(), None).await.unwrap();
    kv.put("/services/svc-tls/t1", passthrough.addr.to_string(), None).await.unwrap();
    kv.put("/services/tight/t1", api[1].addr.to_string(), None).await.unwrap();

    let config = format!(
        r#"
[admin]
listen = "127.0.0.1:0"
[discovery]
source = "etcd"
endpoints = ["{etcd}"]
dial_timeout = "500ms"
request_timeout = "2s"
[timeouts]
connect = "1s"
request = "2s"
header_read = "1s"
[[service]]
name = "broken"
outlier = {{ max_ejected_percent = 100 }}
[[service]]
name = "nobudget"
retry_budget = {{ percent = 0, min_concurrency = 0 }}
[[service]]
name = "tight"
max_inflight = 1
[[service]]
name = "checked"
health_check = {{ kind = "tcp", interval = "500ms", timeout = "300ms", unhealthy_threshold = 2 }}
[[listener]]
name = "web"
protocol = "http"
listen = "127.0.0.1:0"
access_log = {{ path = "{access_log}" }}
[[listener.route]]
path_prefix = "/api/"
strip_prefix = true
service = "api"
[[listener.route]]
grpc_service = "test.Echo"
service = "echo"
[[listener.route]]
path_prefix = "/broken/"
service = "broken"
[[listener.route]]
path_prefix = "/ghost/"
service = "ghost"
[[listener.route]]
path_prefix = "/upg/"
service = "upg"
[[listener.route]]
path_prefix = "/flaky/"
strip_prefix = true
service = "flaky"
retry = {{ attempts = 3 }}
[[listener.route]]
path_prefix = "/nobudget/"
strip_prefix = true
service = "nobudget"
retry = {{ attempts = 3 }}
[[listener.route]]
path_prefix = "/tight/"
strip_prefix = true
service = "tight"
[[listener]]
name = "secure"
protocol = "https"
listen = "127.0.0.1:0"
[[listener.tls]]
cert = {cert:?}
key = {key:?}
[[listener.route]]
path_prefix = "/"
service = "api"
[[listener]]
name = "pg"
protocol = "tcp"
listen = "127.0.0.1:0"
service = "db"
[[listener]]
name = "sni"
protocol = "tls_passthrough"
listen = "127.0.0.1:0"
[[listener.route]]
sni = "a.example.com"
service = "svc-tls"
"#,
        etcd = etcd.url(),
        cert = cert.cert,
        key = cert.key,
        access_log = dir.path().join("access.log").display(),
    );
    let gw = TestGateway::start(&config).await;
    for (service, n) in [("api", 2), ("broken", 2), ("echo", 1), ("upg", 1), ("db", 2), ("svc-tls", 1)] {
        gw.wait_live(service, n).await;
    }
    let prom = Prometheus::start(gw.admin).await;
    let t0 = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    wait_until("first scrape", Duration::from_secs(20), async || {
        let r = prom.api("/api/v1/query", &[("query", "up")]).await;
        r["data"]["result"].as_array().is_some_and(|a| a.iter().any(|s| s["value"][1] == "1"))
    })
    .await;
    // Baseline scrapes before any traffic: counters at zero, so rates start at 0.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let http = client();
    let h2c = h2c_client();
    let web = gw.listener_addr("web");
    let secure = gw.listener_addr("secure");
    let pg = gw.listener_addr("pg");
    let sni = gw.listener_addr("sni");
    let mut grpc_client = EchoClient::connect(web).await;
    let tls_client = tls::client_config(&ca, &[b"h2", b"http/1.1"]);
    let connector = test_ca.connector();
    let mut upgraded: Option<TcpStream> = None;

    let start = Instant::now();
    let mut round = 0u32;
    while start.elapsed() < Duration::from_secs(20) {
        round += 1;
        let second_half = start.elapsed() > Duration::from_secs(10);
        // HTTP/1.1 and h2c; slow requests in the second half move the latency quantiles.
        for _ in 0..4 {
            assert_eq!(get(&http, &format!("http://{web}/api/x")).await.0, 200);
        }
        let path = if second_half { "/api/slow/60" } else { "/api/x" };
        assert_eq!(get(&h2c, &format!("http://{web}{path}")).await.0, 200);
        let post = http::Request::post(format!("http://{web}/api/echo")).body(Full::from("hi")).unwrap();
        assert_eq!(request(&http, post).await.0, 200);
        // A reload asked of a gateway started without a config file fails (and is counted).
        if round % 5 == 1 {
            let reload = http::Request::post(format!("http://{}/reload", gw.admin)).body(Full::default()).unwrap();
            assert_eq!(request(&http, reload).await.0, 400);
        }
        // The gateway's own answers: 404 (no route, unknown Host), 503 (routed, never an instance), 502.
        let no_route = http::Request::get(format!("http://{web}/nothing"))
            .header("host", "unknown.test")
            .body(Full::default())
            .unwrap();
        assert_eq!(request(&http, no_route).await.0, 404);
        assert_eq!(get(&http, &format!("http://{web}/ghost/x")).await.0, 503);
        if !second_half {
            // Only in the first half, so the 5xx ratio moves.
            assert_eq!(get(&http, &format!("http://{web}/broken/x")).await.0, 502);
        }
        // gRPC.
        let reply = grpc_client.unary(tonic::Request::new(Msg::new("ping"))).await.expect("grpc call");
        assert_eq!(reply.into_inner().text, "ping");
        // TLS termination.
        let stream = tls::connect(secure, tls_client.clone(), "site.test").await.expect("tls handshake");
        assert_eq!(tls::request_over(stream, "site.test", "/x").await.0, 200);
        // TCP (one instance refuses: connect failures, then failover) and TLS passthrough.
        let mut tcp = TcpStream::connect(pg).await.unwrap();
        assert_eq!(round_trip(&mut tcp, b"hello").await, b"hello");
        drop(tcp);
        let (mut t, greeting) = tls_connect(&connector, sni, "a.example.com").await.expect("passthrough");
        assert!(greeting.contains("a.example.com"), "{greeting}");
        let _ = t.shutdown().await;
        assert!(tls_connect(&connector, sni, "nobody.example.com").await.is_err());
        // Client garbage on the HTTP and the TLS listener.
        for addr in [web, secure] {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let _ = s.write_all(b"\x16\x00garbage\r\n\r\n").await;
            let mut sink = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut sink)).await;
        }
        // Resilience, from round 4 on (so that the rates start at 0): a retry after a
        // refused connect (which also ejects the refusing instance), a retry refused
        // by a zero retry budget, a per-instance limit overflowing, active health
        // checks failing one instance. The single refused instance of "broken"
        // was ejected by its first request: the later ones go out in panic mode.
        // A service's series are created by its first event, so each service gets
        // good traffic first (its counters at 0) and its trouble a few rounds later.
        if round == 4 {
            for (service, id, addr) in [
                ("flaky", "b-up", api[0].addr.to_string()),
                ("nobudget", "b-up", api[0].addr.to_string()),
                ("checked", "up", echo.addr.to_string()),
                ("checked", "flip", flip_addr.to_string()),
            ] {
                kv.put(format!("/services/{service}/{id}"), addr, None).await.unwrap();
            }
            gw.wait_live("flaky", 1).await;
            gw.wait_live("nobudget", 1).await;
        }
        if round == 7 {
            kv.put("/services/flaky/a-refused", refused.to_string(), None).await.unwrap();
            kv.put("/services/nobudget/a-503", unavailable.to_string(), None).await.unwrap();
            gw.wait_live("flaky", 2).await;
            gw.wait_live("nobudget", 2).await;
        }
        if round == 9 {
            // The instance that failed its checks starts accepting: healthy again.
            if let Some(socket) = flip_socket.take() {
                flip_listener = Some(socket.listen(16).unwrap());
            }
        }
        if round >= 4 {
            assert_eq!(get(&http, &format!("http://{web}/flaky/x")).await.0, 200);
            let _ = get(&http, &format!("http://{web}/nobudget/x")).await;
            if round < 12 {
                let slow = || get_owned(format!("http://{web}/tight/slow/300"));
                let (a, b) = tokio::join!(slow(), slow());
                let mut codes = [a.0, b.0];
                codes.sort();
                assert_eq!(codes, [200, 503], "max_inflight = 1 lets one of two through");
            }
        }
        // A client that sends no head: closed after header_read (1 s).
        if round == 5 {
            let mut idle = TcpStream::connect(web).await.unwrap();
            tokio::spawn(async move {
                let mut sink = Vec::new();
                let _ = tokio::time::timeout(Duration::from_secs(5), idle.read_to_end(&mut sink)).await;
            });
        }
        // A request that carries this gateway's own Via entry: a loop, answered 508.
        if round == 6 {
            let res = http
                .request(http::Request::get(format!("http://{web}/api/x")).body(Full::default()).unwrap())
                .await
                .unwrap();
            let via = res.headers()["via"].clone();
            let looped =
                http::Request::get(format!("http://{web}/api/x")).header("via", via).body(Full::default()).unwrap();
            assert_eq!(request(&http, looped).await.0, 508);
        }
        // An upgraded connection held open for a few seconds.
        match round {
            3 => {
                let mut s = TcpStream::connect(web).await.unwrap();
                s.write_all(b"GET /upg/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
                    .await
                    .unwrap();
                let mut head = [0u8; 12];
                s.read_exact(&mut head).await.unwrap();
                assert_eq!(&head, b"HTTP/1.1 101");
                upgraded = Some(s);
            }
            12 => upgraded = None,
            _ => {}
        }
        // Discovery: timestamped registrations, a deregistration, an invalid value, a draining instance.
        match round {
            2 | 14 => {
                let meta = now_ms().to_string();
                let value = instance_json("api", "late", api[0].addr, &[("registered_at_ms", &meta)]);
                kv.put("/services/api/late", value, None).await.unwrap();
            }
            6 => {
                kv.delete("/services/api/late", None).await.unwrap();
                kv.put("/services/api/bad", "{not json", None).await.unwrap();
                kv.put(
                    "/services/api/drain",
                    instance_json("api", "drain", api[1].addr, &[("status", "draining")]),
                    None,
                )
                .await
                .unwrap();
            }
            8 => {
                // A new certificate in place: the listener reloads it.
                ca.issue(dir.path(), "site", &["site.test"]);
            }
            _ => {}
        }
        if round == 9 {
            // An etcd outage of a few seconds: disconnected, sync age growing, a watch restart.
            etcd.kill();
            tokio::time::sleep(Duration::from_secs(3)).await;
            etcd.restart().await;
            kv = etcd.client().await;
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    drop(upgraded);
    drop(flip_listener);
    // Let the last samples be scraped.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let end = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64();

    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/grafana/switchyard.json")).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let exprs = panel_exprs(&doc);
    assert!(exprs.len() >= 25, "{} expressions", exprs.len());
    let (start_s, end_s) = (format!("{t0}"), format!("{end}"));
    let mut failures = Vec::new();
    for (title, expr) in &exprs {
        let q = substitute(expr);
        let r = prom
            .api("/api/v1/query_range", &[("query", &q), ("start", &start_s), ("end", &end_s), ("step", "1")])
            .await;
        assert_eq!(r["status"], "success", "{title}: {q}: {r}");
        let series = r["data"]["result"].as_array().cloned().unwrap_or_default();
        if series.is_empty() {
            failures.push(format!("{title}: no data for {q}"));
            continue;
        }
        // Failed accepts need the process out of file descriptors, which a test
        // sharing its process with the harness cannot cause safely: that series must
        // exist (at zero) but need not move.
        // Likewise a full access-log queue or a failing log disk: exported at zero.
        if q.contains("switchyard_accept_errors_total") || q.contains("switchyard_access_log_") {
            continue;
        }
        // Moved: some series took at least two different values over the run.
        let moved = series.iter().any(|s| {
            let values: std::collections::BTreeSet<String> = s["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v[1].as_str().map(str::to_string))
                .collect();
            values.len() >= 2
        });
        if !moved {
            failures.push(format!("{title}: flat for {q}: {}", serde_json::Value::Array(series)));
        }
    }
    // Template variables: label_values(metric{...}, label) must list something.
    for var in doc["templating"]["list"].as_array().unwrap() {
        let Some(def) = var["definition"].as_str() else { continue };
        let inner = def.strip_prefix("label_values(").and_then(|d| d.strip_suffix(')')).unwrap();
        let (selector, label) = inner.rsplit_once(',').unwrap();
        let r = prom
            .api(&format!("/api/v1/label/{}/values", label.trim()), &[("match[]", &substitute(selector.trim()))])
            .await;
        if r["data"].as_array().is_none_or(|a| a.is_empty()) {
            failures.push(format!("variable {}: no values for {def}", var["name"]));
        }
    }
    assert!(failures.is_empty(), "{} of {} expressions failed:\n{}", failures.len(), exprs.len(), failures.join("\n"));

    // The alert rules of deploy/alerts.yml evaluate without error on this data, and
    // the 503s for "ghost" (routed, never an instance) make SwitchyardNoLiveInstance active.
    let rules = prom.api("/api/v1/rules", &[]).await;
    let all: Vec<&serde_json::Value> = rules["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().iter())
        .collect();
    assert_eq!(all.len(), 3, "{rules}");
    for rule in &all {
        assert_eq!(rule["health"], "ok", "{rule}");
    }
    let no_live = all.iter().find(|r| r["name"] == "SwitchyardNoLiveInstance").unwrap();
    let ghost = no_live["alerts"].as_array().unwrap().iter().any(|a| a["labels"]["service"] == "ghost");
    assert!(ghost, "no alert for the service without instances: {no_live}");

    // promtool on the very text Prometheus scraped: no errors, no lint warnings.
    let metrics = admin_get(gw.admin, "/metrics").await.1;
    let mut child = Command::new(PROMTOOL)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {PROMTOOL}: {e}"));
    child.stdin.take().unwrap().write_all_sync(metrics.as_bytes());
    let out = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics:\n{said}");
}

/// `Write::write_all` on the child's stdin, then close it.
trait WriteAllSync {
    fn write_all_sync(self, bytes: &[u8]);
}

impl WriteAllSync for std::process::ChildStdin {
    fn write_all_sync(mut self, bytes: &[u8]) {
        std::io::Write::write_all(&mut self, bytes).unwrap();
    }
}
