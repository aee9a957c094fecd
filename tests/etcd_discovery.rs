//! The etcd source against a real etcd: value formats and invalid values,
//! prefix isolation, compaction while cut off, 10,000 instances, discovery lag.

use crate::support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use support::etcd::{gateway_config, get_service, instance_json, Etcd, Relay};
use support::{admin_get, client, wait_until, Backend, TestGateway};
use switchyard::upstream::SharedTable;

/// service's endpoints as (id, addr, status), sorted.
fn endpoints(table: &SharedTable, service: &str) -> Vec<(String, String)> {
    let t = table.load();
    let mut v: Vec<(String, String)> = t
        .service(service)
        .map(|s| s.endpoints.iter().map(|e| (e.id.to_string(), e.addr.to_string())).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && (l[name.len()..].starts_with('{') || l[name.len()..].starts_with(' ')))
        .filter(|l| !l.contains("_bucket"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Writes a marker instance and waits for it: everything written before it has been applied.
async fn sync_point(etcd: &mut etcd_client::Client, gw: &TestGateway, n: usize) {
    let key = format!("/services/marker/{n}");
    etcd.put(key, format!("127.0.0.1:{}", 1000 + n), None).await.unwrap();
    wait_until("the marker instance in the table", Duration::from_secs(10), async || {
        gw.table.load().service("marker").is_some_and(|s| s.endpoints.iter().any(|e| *e.id == *n.to_string()))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn value_formats_and_invalid_values() {
    let etcd = Etcd::start().await;
    let mut kv = etcd.client().await;
    let b: Vec<Backend> =
        futures_util::future::join_all((0..5).map(|i| Backend::start(["json", "go", "ep", "bare", "new"][i]))).await;
    kv.put("/services/fmt/json", instance_json("fmt", "json", b[0].addr, &[("zone", "a")]), None).await.unwrap();
    kv.put(
        "/services/fmt/go",
        format!(r#"{{"ID":"go","Name":"fmt","Addr":"{}","MetaData":{{"weight":2}}}}"#, b[1].addr),
        None,
    )
    .await
    .unwrap();
    kv.put("/services/fmt/ep", format!(r#"{{"Op":0,"Addr":"{}","Metadata":null}}"#, b[2].addr), None).await.unwrap();
    kv.put("/services/fmt/bare", b[3].addr.to_string(), None).await.unwrap();
    let invalid = [
        "{not json",
        "",
        r#"{"addr":""}"#,
        r#"{"addr":"127.0.0.1"}"#,
        r#"{"addr":"127.0.0.1:0"}"#,
        "127.0.0.1:0",
        "127.0.0.1:99999",
        r#"{"Op":1,"Addr":"127.0.0.1:5"}"#,
        r#"{"metadata":{}}"#,
        "[1,2]",
        "\"127.0.0.1:80\"",
    ];
    for (i, v) in invalid.iter().enumerate() {
        kv.put(format!("/services/fmt/bad-{i}"), *v, None).await.unwrap();
    }
    // Keys not of the shape {prefix}{service}/{id}.
    kv.put("/services/fmt", b[0].addr.to_string(), None).await.unwrap();
    kv.put("/services/nosvc/", b[0].addr.to_string(), None).await.unwrap();

    let gw = TestGateway::start(&gateway_config(&[etcd.url()], "")).await;
    gw.wait_live("fmt", 4).await;
    let http = client();
    let mut seen = BTreeMap::new();
    for _ in 0..40 {
        let (status, body) = get_service(&http, gw.addr, "fmt").await;
        assert_eq!(status, 200);
        *seen.entry(body).or_insert(0) += 1;
    }
    assert_eq!(seen.keys().cloned().collect::<Vec<_>>(), ["bare", "ep", "go", "json"], "{seen:?}");
    let (_, metrics) = admin_get(gw.admin, "/metrics").await;
    let counted = metric_sum(&metrics, "switchyard_discovery_invalid_values_total");
    assert!(counted >= (invalid.len() + 2) as f64, "invalid values counted: {counted}\n{metrics}");

    // An invalid put over a valid instance keeps the previous instance serving.
    kv.put("/services/fmt/json", "{garbage", None).await.unwrap();
    sync_point(&mut kv, &gw, 1).await;
    assert!(endpoints(&gw.table, "fmt").contains(&("json".into(), b[0].addr.to_string())));
    assert_eq!(gw.table.load().service("fmt").unwrap().live.len(), 4);
    // A later valid put on the same key replaces it.
    kv.put("/services/fmt/json", instance_json("fmt", "json", b[4].addr, &[]), None).await.unwrap();
    wait_until("the JSON instance's new address in the table", Duration::from_secs(5), async || {
        endpoints(&gw.table, "fmt").contains(&("json".into(), b[4].addr.to_string()))
    })
    .await;
    // Deleting invalid keys changes nothing; deleting a key removes only its instance.
    for i in 0..invalid.len() {
        kv.delete(format!("/services/fmt/bad-{i}"), None).await.unwrap();
    }
    kv.delete("/services/fmt/go", None).await.unwrap();
    gw.wait_live("fmt", 3).await;
    let ids: Vec<String> = endpoints(&gw.table, "fmt").into_iter().map(|(id, _)| id).collect();
    assert_eq!(ids, ["bare", "ep", "json"]);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_foo_never_sees_foobar() {
    let etcd = Etcd::start().await;
    let mut kv = etcd.client().await;
    let foo = Backend::start("foo").await;
    let foobar = Backend::start("foobar").await;
    kv.put("/services/foo/svc/1", foo.addr.to_string(), None).await.unwrap();
    kv.put("/services/foobar/svc/2", foobar.addr.to_string(), None).await.unwrap();
    let gw = TestGateway::start(&gateway_config(&[etcd.url()], r#"prefixes = ["/services/foo"]"#)).await;
    gw.wait_live("svc", 1).await;
    kv.put("/services/foobar/svc/3", foobar.addr.to_string(), None).await.unwrap();
    kv.put("/services/foobar/marker/1", foobar.addr.to_string(), None).await.unwrap();
    kv.put("/services/foo/marker/1", foo.addr.to_string(), None).await.unwrap();
    gw.wait_live("marker", 1).await;
    assert_eq!(endpoints(&gw.table, "svc"), [("1".to_string(), foo.addr.to_string())]);
    assert_eq!(get_service(&client(), gw.addr, "svc").await, (200, "foo".to_string()));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_while_cut_off_resyncs_to_etcds_table() {
    let etcd = Etcd::start().await;
    let relay = Relay::start(etcd.addr()).await;
    let mut kv = etcd.client().await;
    let b: Vec<Backend> =
        futures_util::future::join_all((0..6).map(|i| Backend::start(["b0", "b1", "b2", "b3", "b4", "b5"][i]))).await;
    for (i, backend) in b.iter().take(3).enumerate() {
        kv.put(format!("/services/c/{i}"), backend.addr.to_string(), None).await.unwrap();
    }
    let gw = TestGateway::start(&gateway_config(&[relay.url()], "")).await;
    gw.wait_live("c", 3).await;

    relay.cut();
    kv.delete("/services/c/0", None).await.unwrap();
    kv.put("/services/c/1", b[4].addr.to_string(), None).await.unwrap();
    kv.put("/services/c/3", b[3].addr.to_string(), None).await.unwrap();
    kv.put("/services/c/5", b[5].addr.to_string(), None).await.unwrap();
    kv.delete("/services/c/5", None).await.unwrap();
    kv.put("/services/d/1", b[5].addr.to_string(), None).await.unwrap();
    let rev = kv.put("/services/c/9", "{bad", None).await.unwrap().header().unwrap().revision();
    kv.compact(rev, None).await.unwrap();
    // While cut off the table is untouched and serves.
    let http = client();
    for _ in 0..6 {
        assert_eq!(get_service(&http, gw.addr, "c").await.0, 200);
    }
    assert_eq!(endpoints(&gw.table, "c").len(), 3);

    relay.restore();
    let want = vec![
        ("1".to_string(), b[4].addr.to_string()),
        ("2".to_string(), b[2].addr.to_string()),
        ("3".to_string(), b[3].addr.to_string()),
    ];
    wait_until("the table caught up with etcd after the cut", Duration::from_secs(15), async || {
        endpoints(&gw.table, "c") == want && endpoints(&gw.table, "d").len() == 1
    })
    .await;
    let (_, metrics) = admin_get(gw.admin, "/metrics").await;
    assert!(metrics.contains("switchyard_discovery_watch_restarts_total{reason=\"compacted\"}"), "{metrics}");
    // The watch continues after the resync.
    kv.put("/services/c/4", b[0].addr.to_string(), None).await.unwrap();
    gw.wait_live("c", 4).await;
    gw.stop().await;
}

async fn put_many(kv: &mut etcd_client::Client, items: Vec<(String, String)>) {
    for chunk in items.chunks(128) {
        let ops: Vec<TxnOp> = chunk.iter().map(|(k, v)| TxnOp::put(k.as_str(), v.as_str(), None)).collect();
        kv.txn(Txn::new().when(Vec::<Compare>::new()).and_then(ops)).await.unwrap();
    }
    let _ = CompareOp::Equal;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_instances_in_a_thousand_services() {
    let etcd = Etcd::start().await;
    let mut kv = etcd.client().await;
    let backends: Vec<Backend> =
        futures_util::future::join_all((0..10).map(|i| async move { Backend::start(&format!("b{i}")).await })).await;
    let mut items = Vec::new();
    for s in 0..1000 {
        let addr = backends[s % 10].addr;
        for i in 0..10 {
            items.push((
                format!("/services/svc-{s}/i{i}"),
                instance_json(&format!("svc-{s}"), &format!("i{i}"), addr, &[("zone", "a")]),
            ));
        }
    }
    put_many(&mut kv, items).await;
    let t0 = Instant::now();
    let gw = TestGateway::start(&gateway_config(&[etcd.url()], "")).await;
    wait_until("1,000 services in the table", Duration::from_secs(30), async || {
        let t = gw.table.load();
        t.services.len() >= 1000 && t.services.values().map(|s| s.service.endpoints.len()).sum::<usize>() == 10_000
    })
    .await;
    eprintln!("MEASURE 10k instances / 1000 services loaded in {:?}", t0.elapsed());
    let http = client();
    for s in (0..1000).step_by(37) {
        assert_eq!(get_service(&http, gw.addr, &format!("svc-{s}")).await, (200, format!("b{}", s % 10)));
    }
    gw.stop().await;
}

/// Reports p50/p99 of etcd put → table live over 200 registrations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_lag_over_200_registrations() {
    let etcd = Etcd::start().await;
    let mut kv = etcd.client().await;
    let backend = Backend::start("lag").await;
    kv.put("/services/lag/seed", backend.addr.to_string(), None).await.unwrap();
    let gw = TestGateway::start(&gateway_config(&[etcd.url()], "")).await;
    gw.wait_live("lag", 1).await;
    let mut lags = Vec::new();
    for i in 0..200 {
        let now_ms =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis().to_string();
        let value = instance_json("lag", &format!("r{i}"), backend.addr, &[("registered_at_ms", &now_ms)]);
        let t0 = Instant::now();
        kv.put(format!("/services/lag/r{i}"), value, None).await.unwrap();
        let deadline = t0 + Duration::from_secs(5);
        while gw.table.load().service("lag").map_or(0, |s| s.endpoints.len()) < i + 2 {
            assert!(Instant::now() < deadline, "registration {i} not live within 5s");
            tokio::task::yield_now().await;
        }
        lags.push(t0.elapsed());
    }
    lags.sort();
    eprintln!(
        "MEASURE discovery lag over 200 registrations (put start → table live): p50 {:?} p99 {:?} max {:?}",
        lags[99], lags[197], lags[199]
    );
    let (_, metrics) = admin_get(gw.admin, "/metrics").await;
    let count = metric_sum(&metrics, "switchyard_discovery_lag_seconds_count");
    let sum = metric_sum(&metrics, "switchyard_discovery_lag_seconds_sum");
    eprintln!("MEASURE switchyard_discovery_lag_seconds: count {count} mean {:.4}s", sum / count.max(1.0));
    assert!(count >= 200.0, "lag histogram count {count}");
    gw.stop().await;
}

/// Load time and RSS for 100,000 instances (run by hand: `cargo test --release
/// --test suite etcd_discovery:: -- --ignored --nocapture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn hundred_thousand_instances_load() {
    let etcd = Etcd::start().await;
    let mut kv = etcd.client().await;
    let mut items = Vec::new();
    for s in 0..10_000 {
        for i in 0..10 {
            items.push((
                format!("/services/svc-{s}/instance-{i}"),
                format!(r#"{{"id":"instance-{i}","name":"svc-{s}","addr":"10.{}.{}.{i}:8080","metadata":{{"zone":"a","weight":"1"}}}}"#, s / 250, s % 250),
            ));
        }
    }
    put_many(&mut kv, items).await;
    let (admin_port, web_port) = (support::reserve_port(), support::reserve_port());
    let (admin, web) = (admin_port.port, web_port.port);
    let config = gateway_config(&[etcd.url()], "")
        .replace("listen = \"127.0.0.1:0\"\n\n[discovery]", &format!("listen = \"127.0.0.1:{admin}\"\n\n[discovery]"))
        .replace("listen = \"127.0.0.1:0\"\n", &format!("listen = \"127.0.0.1:{web}\"\n"));
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.toml");
    std::fs::write(&path, config).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["run", "--config"])
        .arg(&path)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let http = client();
    wait_until("ready with 100k instances", Duration::from_secs(300), async || {
        let req = http::Request::get(format!("http://127.0.0.1:{admin}/readyz"))
            .body(http_body_util::Full::default())
            .unwrap();
        matches!(tokio::time::timeout(Duration::from_secs(1), http.request(req)).await, Ok(Ok(res)) if res.status() == 200)
    })
    .await;
    let ready = t0.elapsed();
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let rss = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).unwrap_or("?").trim().to_string();
    eprintln!("MEASURE 100k instances / 10k services: process start → /readyz {ready:?}; RSS {rss}");
    let _ = child.kill();
    let _ = child.wait();
}
