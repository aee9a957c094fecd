//! The instances file as a live source: edits shift traffic under load without a
//! failed request; a broken edit keeps the previous table and is counted.

use crate::support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::{admin_get, client, get, http_config, metric, write_instances, Backend, TestGateway};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_under_load_fail_no_request() {
    let b = [Backend::start("b1").await, Backend::start("b2").await, Backend::start("b3").await];
    let gw = TestGateway::start(&http_config("[[listener.route]]\nservice = \"s\"\n")).await;
    let path = gw.instances_path();
    write_instances(&path, &[("s", "1", b[0].addr, &[]), ("s", "2", b[1].addr, &[])]);
    gw.wait_live("s", 2).await;

    let failures = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..50 {
        let (failures, done, stop, url) = (failures.clone(), done.clone(), stop.clone(), gw.url("/"));
        clients.push(tokio::spawn(async move {
            let c = client();
            // Until the test says stop, at most 2,000 requests each.
            for _ in 0..2_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let req = http::Request::get(&url).body(Default::default()).unwrap();
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
    // Shift traffic from {b1,b2} to {b2,b3} to {b3} while the clients run.
    support::wait_until("done.load(Ordering::Relaxed) >= 200", Duration::from_secs(10), async || {
        done.load(Ordering::Relaxed) >= 200
    })
    .await;
    write_instances(&path, &[("s", "2", b[1].addr, &[]), ("s", "3", b[2].addr, &[])]);
    support::wait_until("b[2].hits() >= 100", Duration::from_secs(10), async || b[2].hits() >= 100).await;
    let during = done.load(Ordering::Relaxed);
    write_instances(&path, &[("s", "3", b[2].addr, &[])]);
    gw.wait_live("s", 1).await;
    support::wait_until("done.load(Ordering::Relaxed) >= during + 200", Duration::from_secs(10), async || {
        done.load(Ordering::Relaxed) >= during + 200
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    assert!(done.load(Ordering::Relaxed) >= 600);
    assert_eq!(failures.load(Ordering::Relaxed), 0, "failed requests during the edits");
    let (b1_hits, b3_hits) = (b[0].hits(), b[2].hits());
    let c = client();
    for _ in 0..20 {
        assert_eq!(get(&c, &gw.url("/")).await, (200, "b3".to_string()));
    }
    assert_eq!(b[0].hits(), b1_hits, "removed backend still receives traffic");
    assert_eq!(b[2].hits(), b3_hits + 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_edit_keeps_the_table_and_is_counted() {
    let b1 = Backend::start("b1").await;
    let gw = TestGateway::start(&http_config("[[listener.route]]\nservice = \"s\"\n")).await;
    let path = gw.instances_path();
    write_instances(&path, &[("s", "1", b1.addr, &[])]);
    gw.wait_live("s", 1).await;
    let errors_before = metric(
        &admin_get(gw.admin, "/metrics").await.1,
        r#"switchyard_discovery_errors_total{source="file",kind="parse"}"#,
    );
    let version = gw.table.load().version;

    // Written as editors and config tools do (temp file + rename), so the poller
    // sees the whole broken file at once, never a half-written one.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, "[[instance]]\nservice = \"s\"\nid = \"1\"\naddr = \"127.0.0.1:0\"\n").unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    // Other gateways in this binary count parse errors on the same series: wait for ours.
    support::wait_until("the parse error counted", Duration::from_secs(5), async || {
        let now = metric(
            &admin_get(gw.admin, "/metrics").await.1,
            r#"switchyard_discovery_errors_total{source="file",kind="parse"}"#,
        );
        now >= errors_before + 1.0
    })
    .await;
    assert_eq!(gw.table.load().version, version, "a broken file must not swap the table");
    assert_eq!(get(&client(), &gw.url("/")).await, (200, "b1".to_string()));

    // Fixing the file applies again.
    let b2 = Backend::start("b2").await;
    write_instances(&path, &[("s", "2", b2.addr, &[])]);
    gw.wait_version(version + 1).await;
    assert_eq!(get(&client(), &gw.url("/")).await, (200, "b2".to_string()));
}
