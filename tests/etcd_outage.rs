//! etcd outages: the last table keeps serving while etcd is down, changes after
//! it returns are applied, a gateway starts from its snapshot while etcd is
//! down, and losing the watched member of a 3-member cluster loses no event.

use crate::support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::etcd::{gateway_config, get_service, try_get_service, Cluster, Etcd};
use support::{admin_get, client, metric, wait_until, Backend, TestGateway};

/// The metrics recorder is global to the test process: tests that read the
/// discovery gauges run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// 50 clients, each at most `per_client` requests, until `stop`; returns (ok, failures).
fn load(
    addr: std::net::SocketAddr,
    service: &'static str,
    per_client: usize,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(usize, Vec<String>)> {
    tokio::spawn(async move {
        let ok = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let (ok, stop) = (ok.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let http = client();
                let mut failures = Vec::new();
                for _ in 0..per_client {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    match try_get_service(&http, addr, service).await {
                        Ok((200, _)) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok((status, body)) => failures.push(format!("{status} {body}")),
                        Err(e) => failures.push(e),
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                failures
            }));
        }
        let mut failures = Vec::new();
        for t in tasks {
            failures.extend(t.await.unwrap());
        }
        (ok.load(Ordering::Relaxed), failures)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_killed_under_load_keeps_serving_and_catches_up() {
    let _serial = SERIAL.lock().await;
    let mut etcd = Etcd::start().await;
    let mut kv = etcd.client().await;
    let b: Vec<Backend> =
        futures_util::future::join_all((0..3).map(|i| async move { Backend::start(&format!("b{i}")).await })).await;
    kv.put("/services/s/0", b[0].addr.to_string(), None).await.unwrap();
    kv.put("/services/s/1", b[1].addr.to_string(), None).await.unwrap();
    let gw = TestGateway::start(&gateway_config(&[etcd.url()], "")).await;
    gw.wait_live("s", 2).await;

    let stop = Arc::new(AtomicBool::new(false));
    let load = load(gw.addr, "s", 1000, stop.clone());
    wait_until("traffic under way", Duration::from_secs(10), async || b[0].hits() + b[1].hits() >= 100).await;
    etcd.kill();
    // The tests of this file run one at a time (SERIAL), and each file has a process of
    // its own (.ci/run), so the process-wide gauge is this gateway's.
    wait_until("the connected gauge drops while etcd is down", Duration::from_secs(10), async || {
        metric(&admin_get(gw.admin, "/metrics").await.1, "switchyard_discovery_connected{source=\"etcd\"}") == 0.0
    })
    .await;
    let before = b[0].hits() + b[1].hits();
    wait_until("traffic goes on while etcd is down", Duration::from_secs(10), async || {
        b[0].hits() + b[1].hits() >= before + 100
    })
    .await;
    assert_eq!(gw.table.load().service("s").unwrap().live.len(), 2, "table untouched while etcd is down");
    etcd.restart().await;
    let mut kv = etcd.client().await;
    kv.put("/services/s/2", b[2].addr.to_string(), None).await.unwrap();
    gw.wait_live("s", 3).await;
    wait_until("the instance added after etcd returned gets traffic", Duration::from_secs(10), async || {
        b[2].hits() > 0
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let (ok, failures) = load.await.unwrap();
    assert!(failures.is_empty(), "{} failed requests, e.g. {:?}", failures.len(), &failures[..failures.len().min(5)]);
    assert!(ok > 500, "only {ok} requests");
    assert!(b[2].hits() > 0, "the instance added after etcd returned gets traffic");
    let (_, metrics) = admin_get(gw.admin, "/metrics").await;
    assert_eq!(metric(&metrics, "switchyard_discovery_connected{source=\"etcd\"}"), 1.0);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_starts_from_snapshot_while_etcd_is_down() {
    let _serial = SERIAL.lock().await;
    let mut etcd = Etcd::start().await;
    let mut kv = etcd.client().await;
    let b: Vec<Backend> =
        futures_util::future::join_all((0..3).map(|i| async move { Backend::start(&format!("b{i}")).await })).await;
    for (i, backend) in b.iter().enumerate() {
        kv.put(format!("/services/snap/{i}"), backend.addr.to_string(), None).await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("snapshot.json");
    let config = gateway_config(&[etcd.url()], &format!("snapshot_path = {:?}", snap.display().to_string()));
    let first = TestGateway::start(&config).await;
    first.wait_live("snap", 3).await;
    kv.delete("/services/snap/0", None).await.unwrap();
    first.wait_live("snap", 2).await;
    wait_until("the snapshot file rewritten", Duration::from_secs(5), async || {
        std::fs::read_to_string(&snap)
            .is_ok_and(|t| t.contains(&b[1].addr.to_string()) && !t.contains(&b[0].addr.to_string()))
    })
    .await;
    first.stop().await;
    etcd.kill();

    let t0 = Instant::now();
    let second = TestGateway::start(&config).await;
    second.wait_live("snap", 2).await;
    eprintln!("MEASURE gateway start with etcd down → serving from snapshot: {:?}", t0.elapsed());
    let http = client();
    for _ in 0..4 {
        let (status, body) = get_service(&http, second.addr, "snap").await;
        assert_eq!(status, 200);
        assert!(body == "b1" || body == "b2", "{body}");
    }
    // etcd returns with a change made meanwhile: the gateway reconciles.
    etcd.restart().await;
    let mut kv = etcd.client().await;
    kv.delete("/services/snap/1", None).await.unwrap();
    second.wait_live("snap", 1).await;
    assert_eq!(get_service(&http, second.addr, "snap").await, (200, "b2".to_string()));
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_member_loss_resumes_watch_without_losing_events() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start().await;
    let backend = Backend::start("c").await;
    // The gateway starts on endpoints[0] (m1); the writer talks to m2 and m3.
    let gw = TestGateway::start(&gateway_config(&cluster.urls(), "")).await;
    let writer_urls = vec![cluster.members[1].url(), cluster.members[2].url()];
    let mut kv = etcd_client::Client::connect(writer_urls, None).await.unwrap();
    let total = 300usize;
    let writer = tokio::spawn({
        let addr = backend.addr.to_string();
        async move {
            for i in 0..total {
                let deadline = Instant::now() + Duration::from_secs(10);
                loop {
                    match kv.put(format!("/services/cl/{i}"), addr.clone(), None).await {
                        Ok(_) => break,
                        Err(e) => {
                            assert!(Instant::now() < deadline, "put {i} kept failing: {e}");
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        }
    });
    wait_until("50 instances of cl in the table", Duration::from_secs(10), async || {
        gw.table.load().service("cl").is_some_and(|s| s.endpoints.len() >= 50)
    })
    .await;
    let (_, before) = admin_get(gw.admin, "/metrics").await;
    let restarts = |m: &str| {
        metric(m, "switchyard_discovery_watch_restarts_total{reason=\"stream_error\"}")
            + metric(m, "switchyard_discovery_watch_restarts_total{reason=\"connect\"}")
    };
    cluster.members[0].kill();
    writer.await.unwrap();
    wait_until("every instance of cl in the table", Duration::from_secs(15), async || {
        gw.table.load().service("cl").is_some_and(|s| s.endpoints.len() == total)
    })
    .await;
    let (_, metrics) = admin_get(gw.admin, "/metrics").await;
    assert!(restarts(&metrics) > restarts(&before), "the watch on the killed member restarted\n{metrics}");
    assert_eq!(
        metric(&metrics, "switchyard_discovery_watch_restarts_total{reason=\"compacted\"}"),
        0.0,
        "resumed, not re-listed"
    );
    assert_eq!(get_service(&client(), gw.addr, "cl").await, (200, "c".to_string()));
    gw.stop().await;
}
