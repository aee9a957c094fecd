//! A restart under load refuses no connection: every listening socket (admin
//! included) has `SO_REUSEPORT`, so a second `switchyard run` binds the same
//! addresses while the first still serves; SIGTERM then stops the first from
//! accepting and lets it drain. Measured with the real binary, twice, under a
//! bounded client loop that opens a new connection for every request.
//!
//! A connection still in its handshake when the old socket closes is reset by Linux
//! unless `net.ipv4.tcp_migrate_req` is 1 (docs/operations.md): 1 such connection in
//! about 20 runs without it. `.ci/run` sets it; the test says so when it is not set.

use crate::support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

use support::{reserve_port, write_instances, Backend};

/// `switchyard run` with its stderr read for the line that says it serves.
struct Process {
    child: Child,
    serving: std::sync::mpsc::Receiver<()>,
}

impl Process {
    fn start(config: &std::path::Path) -> Process {
        let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["run", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start switchyard");
        let stderr = child.stderr.take().unwrap();
        let (tx, serving) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[switchyard {}] {line}", std::process::id());
                if line.contains("switchyard serving") {
                    let _ = tx.send(());
                }
            }
        });
        Process { child, serving }
    }

    /// Both processes answer on the same admin port, so readiness is read from this one's log.
    fn wait_serving(&self) {
        self.serving.recv_timeout(Duration::from_secs(20)).expect("switchyard serving");
    }

    fn terminate(&self) {
        let ok = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap().success();
        assert!(ok, "kill -TERM");
    }

    fn wait_exit(&mut self, limit: Duration) {
        let start = Instant::now();
        while start.elapsed() < limit {
            if self.child.try_wait().unwrap().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("switchyard did not exit within {limit:?}");
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    refused: AtomicUsize,
    failed: AtomicUsize,
}

/// One request on a new connection: Ok, or whether the connect was refused.
async fn fresh_request(addr: SocketAddr) -> Result<(), bool> {
    let failed = |what: &str, e: &dyn std::fmt::Debug| {
        eprintln!("request failed: {what}: {e:?}");
        false
    };
    let stream = tokio::net::TcpStream::connect(addr).await.map_err(|_| true)?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| failed("handshake", &e))?;
    tokio::spawn(conn);
    let req = http::Request::get("/").header("host", "restart").body(Full::<Bytes>::default()).unwrap();
    let res = sender.send_request(req).await.map_err(|e| failed("request", &e))?;
    let status = res.status();
    res.into_body().collect().await.map_err(|e| failed("body", &e))?;
    if status == 200 {
        Ok(())
    } else {
        Err(failed("status", &status))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_under_load_refuses_no_connection() {
    let migrate = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req").unwrap_or_default();
    assert_eq!(
        migrate.trim(),
        "1",
        "net.ipv4.tcp_migrate_req must be 1 for a handover that refuses nothing, as docs/operations.md \
         says (.ci/run sets it: echo 1 > /proc/sys/net/ipv4/tcp_migrate_req)"
    );
    let backend = Backend::start("b").await;
    let (admin, web) = (reserve_port(), reserve_port());
    let dir = tempfile::tempdir().unwrap();
    write_instances(&dir.path().join("instances.toml"), &[("s", "1", backend.addr, &[])]);
    let config = dir.path().join("switchyard.toml");
    std::fs::write(
        &config,
        format!(
            r#"[admin]
listen = "{admin}"
[discovery]
source = "file"
path = "{dir}/instances.toml"
poll_interval = "20ms"
[timeouts]
shutdown_grace = "10s"
[[listener]]
name = "web"
protocol = "http"
listen = "{web}"
[[listener.route]]
service = "s"
"#,
            admin = admin.addr(),
            web = web.addr(),
            dir = dir.path().display()
        ),
    )
    .unwrap();
    let mut old = Process::start(&config);
    old.wait_serving();

    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (tally, stop, addr) = (tally.clone(), stop.clone(), web.addr());
        clients.push(tokio::spawn(async move {
            // Until told to stop, at most 20,000 requests each, each within 10 s.
            for _ in 0..20_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match tokio::time::timeout(Duration::from_secs(10), fresh_request(addr)).await {
                    Ok(Ok(())) => tally.ok.fetch_add(1, Ordering::Relaxed),
                    Ok(Err(true)) => tally.refused.fetch_add(1, Ordering::Relaxed),
                    Ok(Err(false)) | Err(_) => tally.failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    let ok = || tally.ok.load(Ordering::Relaxed);
    support::wait_until("200 requests through the first process", Duration::from_secs(20), async || ok() >= 200).await;

    // The new process binds the same addresses while the old one serves.
    let new = Process::start(&config);
    new.wait_serving();
    let before_term = ok();
    old.terminate();
    tokio::task::spawn_blocking(move || {
        old.wait_exit(Duration::from_secs(20));
    })
    .await
    .unwrap();
    let at_exit = ok();
    support::wait_until("200 requests through the new process alone", Duration::from_secs(20), async || {
        ok() >= at_exit + 200
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let (ok, refused, failed) = (ok(), tally.refused.load(Ordering::Relaxed), tally.failed.load(Ordering::Relaxed));
    eprintln!(
        "restart under load: {ok} requests ok ({before_term} before SIGTERM, {at_exit} when the old process exited), {refused} refused, {failed} failed"
    );
    assert_eq!((refused, failed), (0, 0), "a restart must refuse and fail no connection");
    drop(new);
}
