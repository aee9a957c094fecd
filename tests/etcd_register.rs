//! The provider side against a real etcd and gateway: a registration receives
//! traffic; `kill -9` of `switchyard register` → gone within TTL + 1 s; a
//! graceful stop under 50 concurrent clients fails no request; a lost lease is
//! replaced by a new registration.

use crate::support;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::etcd::{gateway_config, get_service, try_get_service, Etcd};
use support::{client, wait_until, Backend, TestGateway};
use switchyard::register::{Registrar, Registration};

struct Sidecar(Child);

impl Sidecar {
    fn start(etcd: &str, service: &str, id: &str, addr: std::net::SocketAddr, ttl: u64, drain: &str) -> Sidecar {
        let child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["register", "--etcd", etcd, "--service", service, "--id", id, "--addr", &addr.to_string()])
            .args(["--ttl", &ttl.to_string(), "--drain-seconds", drain, "--meta", "zone=a"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start switchyard register");
        Sidecar(child)
    }

    fn signal(&self, sig: &str) {
        assert!(Command::new("kill").args([sig, &self.0.id().to_string()]).status().unwrap().success());
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn live(gw: &TestGateway, service: &str) -> Vec<String> {
    let t = gw.table.load();
    let mut v: Vec<String> =
        t.service(service).map(|s| s.live.iter().map(|e| e.id.to_string()).collect()).unwrap_or_default();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrar_gets_traffic_and_kill_9_expires_within_ttl() {
    let etcd = Etcd::start().await;
    let gw = TestGateway::start(&gateway_config(&[etcd.url()], "")).await;
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;

    // The library type.
    let mut reg = Registration::new(vec![etcd.url()], "reg", a.addr.to_string());
    reg.id = "a".into();
    reg.ttl = Duration::from_secs(2);
    reg.drain = Duration::from_millis(200);
    let mut registrar = Registrar::start(reg).unwrap();
    assert!(registrar.wait_registered(Duration::from_secs(5)).await);
    gw.wait_live("reg", 1).await;
    assert_eq!(get_service(&client(), gw.addr, "reg").await, (200, "a".to_string()));

    // The sidecar, killed with SIGKILL: nothing revokes its lease.
    let sidecar = Sidecar::start(&etcd.url(), "reg", "b", b.addr, 2, "1");
    wait_until("live(&gw, \"reg\") == [\"a\", \"b\"]", Duration::from_secs(10), async || {
        live(&gw, "reg") == ["a", "b"]
    })
    .await;
    // Outlive a few keepalive periods first: the lease must be renewed, not just granted.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(live(&gw, "reg"), ["a", "b"]);
    sidecar.signal("-KILL");
    let t0 = Instant::now();
    wait_until("live(&gw, \"reg\") == [\"a\"]", Duration::from_secs(10), async || live(&gw, "reg") == ["a"]).await;
    let gone = t0.elapsed();
    eprintln!("MEASURE kill -9 of the registrar (TTL 2s) → instance gone after {gone:?}");
    assert!(gone <= Duration::from_secs(3), "gone after {gone:?}, TTL 2 s + 1 s allowed");

    registrar.shutdown().await;
    wait_until("live(&gw, \"reg\").is_empty()", Duration::from_secs(5), async || live(&gw, "reg").is_empty()).await;
    drop(sidecar);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_under_load_fails_no_request() {
    let etcd = Etcd::start().await;
    let gw = TestGateway::start(&gateway_config(&[etcd.url()], "")).await;
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let sa = Sidecar::start(&etcd.url(), "web", "a", a.addr, 2, "1");
    let sb = Sidecar::start(&etcd.url(), "web", "b", b.addr, 2, "1");
    wait_until("live(&gw, \"web\") == [\"a\", \"b\"]", Duration::from_secs(10), async || {
        live(&gw, "web") == ["a", "b"]
    })
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let stop = stop.clone();
        let addr = gw.addr;
        tasks.push(tokio::spawn(async move {
            let http = client();
            let mut failures = Vec::new();
            let mut ok = 0usize;
            for _ in 0..600 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match try_get_service(&http, addr, "web").await {
                    Ok((200, _)) => ok += 1,
                    other => failures.push(format!("{other:?}")),
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (ok, failures)
        }));
    }
    // Everything etcd sees happen to b's key from here on, timed.
    let mut kv = etcd.client().await;
    let mut events = kv.watch("/services/web/b", None).await.unwrap();
    let history = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Ok(Some(res)) = events.message().await {
            for e in res.events() {
                let value = e.kv().map(|kv| kv.value_str().unwrap_or("").to_string()).unwrap_or_default();
                let deleted = e.event_type() == etcd_client::EventType::Delete;
                seen.push((Instant::now(), deleted, value));
                if deleted {
                    return seen;
                }
            }
        }
        seen
    });
    wait_until("the clients under way", Duration::from_secs(10), async || a.hits() + b.hits() >= 300).await;
    // A rolling restart of b: SIGTERM its registrar, wait for it to exit, then stop b.
    sb.signal("-TERM");
    // draining: no new requests
    wait_until("b no longer live", Duration::from_secs(3), async || live(&gw, "web") == ["a"]).await;
    let status = tokio::task::spawn_blocking(move || {
        let mut sb = sb;
        let status = sb.0.wait().unwrap();
        (sb, status)
    });
    let (_sb, status) = tokio::time::timeout(Duration::from_secs(10), status).await.expect("register exits").unwrap();
    assert!(status.success(), "switchyard register exited with {status}");
    // In etcd: first the same key with status=draining, then, a drain period
    // (--drain-seconds 1) later, the delete from revoking the lease.
    let seen = tokio::time::timeout(Duration::from_secs(5), history).await.expect("b's key deleted").unwrap();
    let [(drained_at, false, draining), (deleted_at, true, _)] = &seen[..] else {
        panic!("expected a put of status=draining then a delete, saw {seen:?}");
    };
    let value: serde_json::Value = serde_json::from_str(draining).unwrap();
    assert_eq!(value["metadata"]["status"], "draining", "{draining}");
    assert_eq!(value["addr"], b.addr.to_string(), "{draining}");
    let drained_for = *deleted_at - *drained_at;
    assert!(drained_for >= Duration::from_millis(900), "revoked {drained_for:?} after draining, want the 1 s drain");
    wait_until("one instance of web in the table", Duration::from_secs(5), async || {
        gw.table.load().service("web").is_some_and(|s| s.endpoints.len() == 1)
    })
    .await;
    b.stop();
    // The clients keep going for a while after b is gone.
    let a_hits = a.hits();
    wait_until("200 more requests after b stopped", Duration::from_secs(10), async || a.hits() >= a_hits + 200).await;
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut failures) = (0, Vec::new());
    for t in tasks {
        let (o, f) = t.await.unwrap();
        ok += o;
        failures.extend(f);
    }
    assert!(failures.is_empty(), "{} failed requests, e.g. {:?}", failures.len(), &failures[..failures.len().min(5)]);
    assert!(ok > 1000, "only {ok} requests");
    drop(sa);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_lease_and_etcd_restart_lead_to_reregistration() {
    let mut etcd = Etcd::start().await;
    let gw = TestGateway::start(&gateway_config(&[etcd.url()], "")).await;
    let a = Backend::start("a").await;
    let mut reg = Registration::new(vec![etcd.url()], "ll", a.addr.to_string());
    reg.id = "a".into();
    reg.ttl = Duration::from_secs(1);
    reg.drain = Duration::ZERO;
    let mut registrar = Registrar::start(reg).unwrap();
    assert!(registrar.wait_registered(Duration::from_secs(5)).await);
    gw.wait_live("ll", 1).await;

    // The lease is revoked behind the registrar's back (as if it expired).
    let mut kv = etcd.client().await;
    let lease = kv.get(registrar.key(), None).await.unwrap().kvs()[0].lease();
    kv.lease_revoke(lease).await.unwrap();
    assert!(registrar.wait_registrations(2, Duration::from_secs(5)).await, "registered again after the lease was lost");
    gw.wait_live("ll", 1).await;
    let new_lease = kv.get(registrar.key(), None).await.unwrap().kvs()[0].lease();
    assert_ne!(new_lease, lease);

    // etcd restarted (same data): the registration survives or comes back.
    etcd.kill();
    // An outage the registrar's keepalive must notice (half its 1 s TTL), not an instant restart.
    tokio::time::sleep(Duration::from_millis(500)).await;
    etcd.restart().await;
    let mut kv = etcd.client().await;
    let mut present = async || kv.get(registrar.key(), None).await.is_ok_and(|r| r.kvs().len() == 1);
    wait_until("the registration back after the etcd restart", Duration::from_secs(10), async || present().await).await;
    // Outlive the 1 s TTL a few times over: the registration is kept alive, not just back once.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(present().await, "the registration expired after the etcd restart");
    gw.wait_live("ll", 1).await;
    assert_eq!(try_get_service(&client(), gw.addr, "ll").await, Ok((200, "a".to_string())));

    // Graceful shutdown revokes: the key is gone at once, not after a TTL.
    registrar.shutdown().await;
    assert_eq!(kv.get("/services/ll/a", None).await.unwrap().kvs().len(), 0);
    gw.stop().await;
}
