//! The release-shaped binary under pressure: out of file descriptors, the
//! accept loop backs off and logs at most once a second while the admin
//! listener's reserve keeps `/metrics` answering; and 10,000 idle client
//! connections stay at a few KiB each.

use crate::support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use support::{admin_get, metric, reserve_port, wait_until, write_instances, Backend, GatewayProcess};

/// A gateway config on reserved ports, routing to "s"; silent connections are kept 60 s.
fn config(port: u16, admin: u16, instances: &std::path::Path) -> String {
    format!(
        r#"[runtime]
workers = 2
[admin]
listen = "127.0.0.1:{admin}"
[discovery]
path = "{}"
poll_interval = "50ms"
[timeouts]
header_read = "60s"
shutdown_grace = "1s"
[[listener]]
name = "web"
protocol = "http"
listen = "127.0.0.1:{port}"
[[listener.route]]
service = "s"
"#,
        instances.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_the_admin_still_answers_and_the_log_stays_quiet() {
    let b = Backend::start("b").await;
    let dir = tempfile::tempdir().unwrap();
    let instances = dir.path().join("instances.toml");
    write_instances(&instances, &[("s", "1", b.addr, &[])]);
    let (port, admin) = (reserve_port(), reserve_port());
    let path = dir.path().join("switchyard.toml");
    std::fs::write(&path, config(port.port, admin.port, &instances)).unwrap();
    let log = dir.path().join("stderr.log");
    // 128 descriptors: the runtime, the listeners and the admin reserve fit, 200 clients do not.
    let child = Command::new("prlimit")
        .args(["--nofile=128:128", "--"])
        .arg(env!("CARGO_BIN_EXE_switchyard"))
        .args(["run", "--config"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start switchyard under prlimit");
    let gw = GatewayProcess { child, dir: tempfile::tempdir().unwrap() };
    let t0 = Instant::now();
    wait_until("switchyard ready", Duration::from_secs(10), async || {
        matches!(
            tokio::time::timeout(Duration::from_secs(1), admin_get_quiet(admin.addr(), "/readyz")).await,
            Ok(Some(200))
        )
    })
    .await;
    eprintln!("MEASURE ready after {:?}", t0.elapsed());
    let mut held = Vec::new();
    let t1 = Instant::now();
    // Until the listen backlog (128) is full too: then a connect waits for SYN retries.
    for _ in 0..300 {
        match tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(port.addr())).await {
            Ok(Ok(s)) => held.push(s),
            _ => break,
        }
    }
    assert!(held.len() > 128, "only {} connections: the gateway was not out of descriptors", held.len());
    eprintln!("MEASURE ready, {} connections opened in {:?}", held.len(), t1.elapsed());
    let start = Instant::now();
    // Out of descriptors for several seconds: each accept fails.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (status, text) = admin_get(admin.addr(), "/metrics").await;
    eprintln!("MEASURE /metrics under descriptor exhaustion: {status} after {:?}", start.elapsed());
    assert_eq!(status, 200);
    let errors = metric(&text, r#"switchyard_accept_errors_total{listener="web"}"#);
    assert!(errors >= 1.0, "no accept error counted:\n{text}");
    let secs = start.elapsed().as_secs_f64();
    drop(held);
    drop(gw);
    let text = std::fs::read_to_string(&log).unwrap();
    let logged = text.lines().filter(|l| l.contains("accept failed")).count();
    eprintln!("MEASURE {errors} accept errors, {logged} log lines in {secs:.1} s");
    // At most one line a second per listener (plus the admin's), not ~60 a second.
    assert!((logged as f64) <= 2.0 * (secs + 2.0), "{logged} accept-failure lines in {secs:.1} s");
}

/// `/path` status, or None if the connection failed (the gateway not up yet).
async fn admin_get_quiet(admin: std::net::SocketAddr, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(admin).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n").as_bytes()).await.ok()?;
    let (text, _) = support::raw::read_until_close(&mut s, Duration::from_secs(2)).await;
    Some(support::raw::status(&text)).filter(|s| *s > 0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_idle_connections_cost_a_few_kib_each() {
    let b = Backend::start("b").await;
    let dir = tempfile::tempdir().unwrap();
    let instances = dir.path().join("instances.toml");
    write_instances(&instances, &[("s", "1", b.addr, &[])]);
    let (port, admin) = (reserve_port(), reserve_port());
    let gw = GatewayProcess::start(&config(port.port, admin.port, &instances), admin.addr()).await;
    let before = gw.rss_kib();
    let mut held = Vec::with_capacity(10_000);
    for i in 0..10_000 {
        let s = TcpStream::connect(port.addr()).await.unwrap_or_else(|e| panic!("connection {i}: {e}"));
        held.push(s);
    }
    wait_until("10,000 connections accepted", Duration::from_secs(30), async || {
        let text = admin_get(admin.addr(), "/metrics").await.1;
        metric(&text, r#"switchyard_connections_active{listener="web"}"#) >= 10_000.0
    })
    .await;
    let after = gw.rss_kib();
    let per = (after.saturating_sub(before)) as f64 / 10_000.0;
    eprintln!("MEASURE 10,000 idle connections: RSS {before} → {after} KiB, {per:.2} KiB each");
    assert!(per < 8.0, "{per:.2} KiB per idle connection");
    drop(held);
}
