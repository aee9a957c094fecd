//! Discovery against an etcd as operators run it: every timing and keepalive
//! flag at etcd's defaults (`--grpc-keepalive-min-time` 5 s), and the key
//! layout of etcd's own `naming/endpoints` package (no leading `/`).

use crate::support;

use std::time::{Duration, Instant};

use support::etcd::{gateway_config, get_service, Etcd};
use support::{admin_get, client, wait_until, Backend, TestGateway};

/// The metrics recorder is global to the test process: the idle test counts watch
/// restarts and reads the connected gauge, which the other test's gateway also moves
/// (its watch breaks when its etcd stops), so the two run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Sum of every series of `name` (all label sets), histogram buckets excluded.
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && (l[name.len()..].starts_with('{') || l[name.len()..].starts_with(' ')))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A gateway pinging every 2 s saw its idle watch restart about every 8 s on a
/// stock etcd (GOAWAY "too_many_pings"). With the default keepalive (10 s) an
/// idle watch of 30 s — three ping intervals, six of etcd's minimum — must see
/// no restart at all, stay connected, and still apply the next change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_watch_on_a_stock_etcd_never_restarts() {
    let _serial = SERIAL.lock().await;
    let etcd = Etcd::start_stock().await;
    let mut kv = etcd.client().await;
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    kv.put("/services/idle/a", a.addr.to_string(), None).await.unwrap();
    let gw = TestGateway::start(&gateway_config(&[etcd.url()], "")).await;
    gw.wait_live("idle", 1).await;
    let restarts = "switchyard_discovery_watch_restarts_total";
    let before = metric_sum(&admin_get(gw.admin, "/metrics").await.1, restarts);

    let idle = Duration::from_secs(30);
    let start = Instant::now();
    let mut lowest_connected = 1.0f64;
    while start.elapsed() < idle {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let text = admin_get(gw.admin, "/metrics").await.1;
        lowest_connected = lowest_connected.min(metric_sum(&text, "switchyard_discovery_connected"));
    }
    let text = admin_get(gw.admin, "/metrics").await.1;
    let after = metric_sum(&text, restarts);
    assert_eq!(after - before, 0.0, "watch restarts during {idle:?} idle on a stock etcd:\n{text}");
    assert_eq!(lowest_connected, 1.0, "switchyard_discovery_connected dropped while idle");

    // The watch is the same one and still delivers.
    kv.put("/services/idle/b", b.addr.to_string(), None).await.unwrap();
    gw.wait_live("idle", 2).await;
    let (status, _) = get_service(&client(), gw.addr, "idle").await;
    assert_eq!(status, 200);
    assert_eq!(metric_sum(&admin_get(gw.admin, "/metrics").await.1, restarts), before);
}

/// etcd's `naming/endpoints` manager writes `{target}/{addr}` keys such as
/// `foo/bar/my-service/1.2.3.4:80` with `{"Op":0,"Addr":...,"Metadata":...}`
/// values. Watching the prefix `foo/bar` (no leading `/`) serves them, a delete
/// removes them, and a `registered_at_ms` in the metadata times the discovery lag
/// for a registrant that is not `switchyard register`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn naming_endpoints_layout_end_to_end() {
    let _serial = SERIAL.lock().await;
    let etcd = Etcd::start().await;
    let mut kv = etcd.client().await;
    let a = Backend::start("ep-a").await;
    let b = Backend::start("ep-b").await;
    let gw = TestGateway::start(&gateway_config(&[etcd.url()], r#"prefixes = ["foo/bar"]"#)).await;
    wait_until("ready", Duration::from_secs(10), async || admin_get(gw.admin, "/readyz").await.0 == 200).await;

    let lag_count = |text: &str| metric_sum(text, "switchyard_discovery_lag_seconds_count");
    let lag_before = lag_count(&admin_get(gw.admin, "/metrics").await.1);
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
    kv.put(
        format!("foo/bar/my-service/{}", a.addr),
        format!(r#"{{"Op":0,"Addr":"{}","Metadata":{{"registered_at_ms":{now_ms}}}}}"#, a.addr),
        None,
    )
    .await
    .unwrap();
    kv.put(
        format!("foo/bar/my-service/{}", b.addr),
        format!(r#"{{"Op":0,"Addr":"{}","Metadata":null}}"#, b.addr),
        None,
    )
    .await
    .unwrap();
    // A key outside the prefix (leading '/') is not watched.
    kv.put(format!("/foo/bar/my-service/{}", b.addr), b.addr.to_string(), None).await.unwrap();
    gw.wait_live("my-service", 2).await;
    let ids: Vec<String> =
        gw.table.load().service("my-service").unwrap().endpoints.iter().map(|e| e.id.to_string()).collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.contains(&a.addr.to_string()) && ids.contains(&b.addr.to_string()), "{ids:?}");

    let http = client();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..10 {
        let (status, body) = get_service(&http, gw.addr, "my-service").await;
        assert_eq!(status, 200, "{body}");
        seen.insert(body);
    }
    assert_eq!(seen.len(), 2, "both endpoints answer: {seen:?}");
    let text = admin_get(gw.admin, "/metrics").await.1;
    assert_eq!(lag_count(&text) - lag_before, 1.0, "one write carried a timestamp:\n{text}");

    kv.delete(format!("foo/bar/my-service/{}", a.addr), None).await.unwrap();
    gw.wait_live("my-service", 1).await;
    for _ in 0..4 {
        assert_eq!(get_service(&http, gw.addr, "my-service").await.1, "ep-b");
    }
}
