//! The real binary: `check` on good and bad configs, README's `demo`, streaming
//! 100 MB each way within a bounded RSS, SIGTERM letting an in-flight request
//! finish, and the admin thread under SCHED_IDLE.

use crate::support;

use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use support::{reserve_port, wait_until, write_instances, Backend, GatewayProcess, Killed, ReservedPort};

fn switchyard() -> Command {
    Command::new(env!("CARGO_BIN_EXE_switchyard"))
}

#[test]
fn check_accepts_the_shipped_configs_and_rejects_bad_ones() {
    let ok = switchyard().args(["check", "--config", "config/quickstart.toml"]).output().unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        r#"
[runtime]
workers = 0
[[listener]]
name = "web"
protocol = "http"
listen = "127.0.0.1:8080"
[[listener.route]]
service = "a"
[[listener.route]]
service = "b"
balance = "rr"
"#,
    )
    .unwrap();
    let out = switchyard().args(["check", "--config"]).arg(&bad).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("runtime.workers: must be between 1 and 1024, got 0"), "{stderr}");
    assert!(
        stderr.contains(
            r#"listener[0].route[1].balance: unknown policy "rr" (expected round_robin, weighted, least_request, hash)"#
        ),
        "{stderr}"
    );

    // `run` refuses the same file before binding anything.
    let out = switchyard().args(["run", "--config"]).arg(&bad).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("listener[0].route[1].balance"));

    let missing = switchyard().args(["check", "--config", "/nonexistent.toml"]).output().unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot read /nonexistent.toml"));

    // A config that parses but names files that do not exist: `check` reads them as `run` would.
    let files = dir.path().join("files.toml");
    std::fs::write(
        &files,
        r#"
[[listener]]
name = "secure"
protocol = "https"
listen = "127.0.0.1:8443"
[[listener.tls]]
cert = "/nonexistent/site.pem"
key = "/nonexistent/site.key"
[[listener.route]]
service = "a"
[[service]]
name = "a"
upstream_tls = { ca = "/nonexistent/ca.pem" }
"#,
    )
    .unwrap();
    let out = switchyard().args(["check", "--config"]).arg(&files).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("service[0].upstream_tls: cannot read /nonexistent/ca.pem"), "{stderr}");
    assert!(
        stderr.contains("listener[0].tls: cannot read /nonexistent/site.pem"),
        "every error, not the first: {stderr}"
    );
}

/// The real binary on reserved ports, routing everything to `backend` (service
/// "s") from an instances file in the returned temp dir; returns its HTTP port
/// (held until the returned reservations drop).
/// README's first command: `switchyard demo`, run from the repository root, serves
/// on 127.0.0.1:8080 (the demo's fixed ports, 8080, 9901 and 9001–9003, must be
/// free) and six requests on new connections, as six `curl`s, get demo-1, demo-2
/// and demo-3 in turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_demo_answers_from_each_backend_in_turn() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let child = switchyard()
        .arg("demo")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start switchyard demo");
    let _demo = Killed(child);
    let curl = || async {
        let mut s = tokio::net::TcpStream::connect("127.0.0.1:8080").await.ok()?;
        s.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nConnection: close\r\n\r\n").await.ok()?;
        let mut out = String::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out)).await.ok()?.ok()?;
        let body = out.split_once("\r\n\r\n")?.1;
        Some(body.split_whitespace().next()?.to_string())
    };
    wait_until("the demo answers on 127.0.0.1:8080", Duration::from_secs(20), async || curl().await.is_some()).await;
    let mut answers = Vec::new();
    for _ in 0..6 {
        answers.push(curl().await.expect("an answer"));
    }
    let at = |a: &str| ["demo-1", "demo-2", "demo-3"].iter().position(|d| *d == a).expect("a demo backend");
    for pair in answers.windows(2) {
        assert_eq!(at(&pair[1]), (at(&pair[0]) + 1) % 3, "in turn: {answers:?}");
    }
}

async fn gateway_process(backend: &Backend) -> (GatewayProcess, u16, (tempfile::TempDir, [ReservedPort; 2])) {
    let dir = tempfile::tempdir().unwrap();
    let instances = dir.path().join("instances.toml");
    write_instances(&instances, &[("s", "1", backend.addr, &[])]);
    let ports = [reserve_port(), reserve_port()];
    let (port, admin) = (ports[0].port, ports[1].port);
    let config = format!(
        r#"[runtime]
workers = 2
[admin]
listen = "127.0.0.1:{admin}"
[discovery]
path = "{}"
poll_interval = "50ms"
[timeouts]
shutdown_grace = "10s"
[[listener]]
name = "web"
protocol = "http"
listen = "127.0.0.1:{port}"
[[listener.route]]
service = "s"
"#,
        instances.display()
    );
    let gw = GatewayProcess::start(&config, format!("127.0.0.1:{admin}").parse().unwrap()).await;
    (gw, port, (dir, ports))
}

/// Reads a body to its end, sampling the gateway's RSS every 8 MiB into `peak`; returns the byte count.
async fn read_sampling_rss(mut body: hyper::body::Incoming, gw: &GatewayProcess, peak: &mut u64) -> usize {
    let mut got = 0usize;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            got += data.len();
            if got % (8 << 20) < data.len() {
                *peak = (*peak).max(gw.rss_kib());
            }
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_100mb_each_way_in_bounded_memory() {
    const SIZE: usize = 100 * 1024 * 1024;
    let b = Backend::start("big").await;
    let (gw, port, _dir) = gateway_process(&b).await;
    let c = support::client();

    // Download: the backend streams 100 MB.
    let res = c
        .request(http::Request::get(format!("http://127.0.0.1:{port}/bytes/{SIZE}")).body(Default::default()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let mut peak = 0u64;
    assert_eq!(read_sampling_rss(res.into_body(), &gw, &mut peak).await, SIZE);

    // Upload: 100 MB streamed to /echo, which streams it back.
    let chunk = Bytes::from(vec![b'u'; 256 * 1024]);
    let chunks = SIZE / chunk.len();
    let stream =
        futures_util::stream::iter((0..chunks).map(move |_| Ok::<_, std::io::Error>(Frame::data(chunk.clone()))));
    let raw = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let req = http::Request::post(format!("http://127.0.0.1:{port}/echo")).body(StreamBody::new(stream)).unwrap();
    let res = raw.request(req).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(read_sampling_rss(res.into_body(), &gw, &mut peak).await, SIZE);
    peak = peak.max(gw.rss_kib());
    assert!(peak < 64 * 1024, "gateway RSS peaked at {peak} KiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_slow_request_finish() {
    let b = Backend::start("slow").await;
    let (gw, port, _dir) = gateway_process(&b).await;
    let slow = tokio::spawn(support::get_owned(format!("http://127.0.0.1:{port}/slow/1500")));
    wait_until("the slow request reached the backend", Duration::from_secs(5), async || b.hits() >= 1).await;
    let sent = Instant::now();
    gw.signal("TERM");
    // New connections are refused soon after the signal...
    wait_until("the listener closed after SIGTERM", Duration::from_secs(1), async || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
    })
    .await;
    // ...while the in-flight request completes.
    assert_eq!(slow.await.unwrap(), (200, "slow".to_string()));
    let status = tokio::task::spawn_blocking(move || {
        let mut gw = gw;
        gw.child.wait().unwrap()
    })
    .await
    .unwrap();
    assert!(status.success(), "exit status {status:?}");
    assert!(sent.elapsed() < Duration::from_secs(9), "exit waited for the grace period");
}

/// The scheduling policy (the 41st field of /proc/PID/task/TID/stat) of each of
/// the process's threads, by thread name.
fn thread_policies(pid: i32) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let Ok(stat) = std::fs::read_to_string(task.unwrap().path().join("stat")) else { continue };
        let (open, close) = (stat.find('(').unwrap(), stat.rfind(')').unwrap());
        // Field 3 (state) is the first after the name; policy is field 41.
        let policy = stat[close + 2..].split(' ').nth(41 - 3).unwrap().parse().unwrap();
        out.push((stat[open + 1..close].to_string(), policy));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_thread_runs_under_sched_idle_and_the_workers_do_not() {
    const SCHED_OTHER: u32 = 0;
    const SCHED_IDLE: u32 = 5;
    let b = Backend::start("b").await;
    let (gw, port, _dir) = gateway_process(&b).await;
    assert_eq!(support::get_owned(format!("http://127.0.0.1:{port}/")).await.0, 200);
    let threads = thread_policies(gw.pid());
    // The kernel keeps 15 bytes of a thread's name: "switchyard-admi".
    let admin: Vec<_> = threads.iter().filter(|(name, _)| name.starts_with("switchyard-adm")).collect();
    assert_eq!(admin.len(), 1, "one admin thread: {threads:?}");
    assert_eq!(admin[0].1, SCHED_IDLE, "{threads:?}");
    // The policy is the admin thread's alone: the main thread and the two workers
    // (`workers = 2`) keep the normal one.
    assert_eq!(threads.iter().filter(|(name, _)| name == "switchyard").map(|t| t.1).collect::<Vec<_>>(), [SCHED_OTHER]);
    let workers = threads.iter().filter(|(name, policy)| name.starts_with("tokio-") && *policy == SCHED_OTHER);
    assert!(workers.count() >= 2, "{threads:?}");
}
