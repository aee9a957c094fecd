//! When backends fail, clients should not notice: the scenarios of docs/resilience.md
//! on real sockets, with 3 instances and 20 concurrent keep-alive clients. A backend
//! killed with SIGKILL (a child process), one that accepts and never answers, one
//! whose SYNs are dropped, one answering 503, a TLS instance that refuses, a rolling
//! restart through `switchyard register`, active checks, the retry budget, slow
//! start and the per-instance limits.

use crate::support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use support::faults::{load, BackendProcess, BlackHole, StatusBackend, SynDrop};
use support::{admin_get, http_config, metric, wait_until, write_instances, Backend, Killed, TestGateway};

/// How long the headline scenarios (1, 2, 3, 5) run under load.
const LOAD_FOR: Duration = Duration::from_secs(10);
const CLIENTS: usize = 20;

/// Not a test: the backend that `BackendProcess` runs in a child process.
#[test]
#[ignore = "runs only as a child process of the other tests"]
fn backend_process() {
    support::faults::serve_backend_process();
}

/// `state`, `reason` of one instance in `/upstreams`.
async fn state(gw: &TestGateway, service: &str, id: &str) -> (String, String) {
    let doc: serde_json::Value = serde_json::from_str(&admin_get(gw.admin, "/upstreams").await.1).unwrap();
    let inst = doc["services"][service]["instances"]
        .as_array()
        .and_then(|a| a.iter().find(|i| i["id"] == id).cloned())
        .unwrap_or_default();
    (inst["state"].as_str().unwrap_or("").to_string(), inst["reason"].as_str().unwrap_or("").to_string())
}

async fn metrics(gw: &TestGateway) -> String {
    admin_get(gw.admin, "/metrics").await.1
}

/// One route to `service`. Each test has its own service: metrics are per process.
fn route(service: &str, extra: &str) -> String {
    http_config(&format!("[[listener.route]]\nservice = \"{service}\"\n{extra}"))
}

/// Polls `/upstreams` until `id` is ejected; returns when that was first seen.
async fn wait_ejected(gw: &TestGateway, service: &str, id: &str, limit: Duration) -> Instant {
    wait_until(&format!("{id} ejected"), limit, async || state(gw, service, id).await.0 == "ejected").await;
    Instant::now()
}

type Line<'a> = (&'a str, &'a str, SocketAddr, &'a [(&'a str, &'a str)]);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_load_fails_no_get_and_ejects_within_a_second() {
    let mut procs: Vec<BackendProcess> = ["a", "b", "c"].iter().map(|n| BackendProcess::start(n, 0)).collect();
    let gw = TestGateway::start(&route("s1", "")).await;
    let lines: Vec<Line<'_>> = procs.iter().map(|p| ("s1", p.name.as_str(), p.addr, &[][..])).collect();
    write_instances(&gw.instances_path(), &lines);
    gw.wait_live("s1", 3).await;
    let url = gw.url("/");
    let run = tokio::spawn(async move { load(&url, CLIENTS, LOAD_FOR, 1_000_000, None).await });
    tokio::time::sleep(LOAD_FOR / 3).await;
    let killed = Instant::now();
    procs[1].kill9();
    // Ejected within 1 s of the kill (the first refused connect ejects it).
    let ejected = wait_ejected(&gw, "s1", "b", Duration::from_secs(1)).await;
    // Its pooled connections reset (five in a row eject) or a connect is refused (ejects at once).
    let reason = state(&gw, "s1", "b").await.1;
    assert!(["connect_failures", "consecutive_failures"].contains(&reason.as_str()), "{reason}");
    let report = run.await.unwrap();
    let failed = report.failed();
    let text = metrics(&gw).await;
    let retry_lines: Vec<&str> = text.lines().filter(|l| l.contains("retr") && l.contains("s1")).collect();
    assert!(
        failed.is_empty(),
        "{} failed, e.g. {:?}\n{}\n{retry_lines:#?}",
        failed.len(),
        &failed[..failed.len().min(3)],
        report.summary()
    );
    let to_b_after = report.samples.iter().filter(|s| s.started > ejected && s.body == "b").count();
    assert_eq!(to_b_after, 0, "answers from a dead instance?");
    let retried = metric(&text, r#"switchyard_upstream_retries_total{service="s1",reason="reset"}"#)
        + metric(&text, r#"switchyard_upstream_retries_total{service="s1",reason="connect_failure"}"#);
    println!(
        "kill -9: {} requests, 0 failed, ejected {:?} after the kill, {retried} retried; {}",
        report.samples.len(),
        ejected - killed,
        report.summary()
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_hole_is_ejected_and_then_costs_nothing() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let hole = BlackHole::start().await;
    let gw = TestGateway::start(&route(
        "s2",
        // As in the 503 scenario: a third of the requests in flight time out together.
        "retry = { attempts = 2, on = [\"reset\", \"504\"], per_try_timeout = \"300ms\" }\n\
         [[service]]\nname = \"s2\"\nretry_budget = { min_concurrency = 10 }\n",
    ))
    .await;
    write_instances(&gw.instances_path(), &[("s2", "a", a.addr, &[]), ("s2", "b", b.addr, &[])]);
    gw.wait_live("s2", 2).await;
    let url = gw.url("/");
    let start = Instant::now();
    let run = tokio::spawn(async move { load(&url, CLIENTS, LOAD_FOR, 1_000_000, None).await });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let added = Instant::now();
    write_instances(
        &gw.instances_path(),
        &[("s2", "a", a.addr, &[]), ("s2", "b", b.addr, &[]), ("s2", "hole", hole.addr, &[])],
    );
    let ejected = wait_ejected(&gw, "s2", "hole", Duration::from_secs(5)).await;
    let accepted_at_ejection = hole.accepted.load(Ordering::Relaxed);
    let report = run.await.unwrap();
    let end = Instant::now();
    // Every request that met the black hole was retried elsewhere after its 300 ms try.
    let failed = report.failed();
    assert!(failed.len() <= 5, "{} failed (threshold 5): {:?}", failed.len(), &failed[..failed.len().min(3)]);
    // After the ejection no request waits on it: none takes a try's timeout.
    let settled = ejected + Duration::from_millis(50);
    let slow_after: Vec<_> =
        report.samples.iter().filter(|s| s.started > settled && s.latency >= Duration::from_millis(300)).collect();
    assert!(
        slow_after.is_empty(),
        "{} requests after the ejection waited: {:?}",
        slow_after.len(),
        &slow_after[..slow_after.len().min(3)]
    );
    assert_eq!(hole.accepted.load(Ordering::Relaxed), accepted_at_ejection, "connections to an ejected instance");
    println!(
        "black hole: {} requests, {} failed, ejected {:?} after it appeared; p99 before {:?}, after {:?}",
        report.samples.len(),
        failed.len(),
        ejected - added,
        report.percentile(99.0, start + Duration::from_millis(500), added),
        report.percentile(99.0, settled, end),
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_drops_syns_is_ejected_after_one_connect_timeout() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let syn = SynDrop::start().await;
    let gw = TestGateway::start(&route("s3", "")).await;
    write_instances(
        &gw.instances_path(),
        &[("s3", "a", a.addr, &[]), ("s3", "b", b.addr, &[]), ("s3", "syn", syn.addr, &[])],
    );
    gw.wait_live("s3", 3).await;
    let url = gw.url("/");
    let run = tokio::spawn(async move { load(&url, CLIENTS, LOAD_FOR / 2, 1_000_000, None).await });
    // The connect timeout is 1 s: the first request to it waits that long, then ejects it.
    let ejected = wait_ejected(&gw, "s3", "syn", Duration::from_secs(3)).await;
    let report = run.await.unwrap();
    let failed = report.failed();
    assert!(failed.is_empty(), "{} failed: {:?}", failed.len(), &failed[..failed.len().min(3)]);
    let paid = report
        .samples
        .iter()
        .filter(|s| s.started > ejected + Duration::from_millis(50) && s.latency >= Duration::from_secs(1))
        .count();
    assert_eq!(paid, 0, "requests after the ejection paid the connect timeout");
    let text = metrics(&gw).await;
    assert_eq!(metric(&text, r#"switchyard_upstream_ejections_total{service="s3",reason="connect_failures"}"#), 1.0);
    println!("syn drop: {} requests, 0 failed; {}", report.samples.len(), report.summary());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_hash_only_the_ejected_instances_keys_move_and_they_move_back() {
    let backends = [Backend::start("a").await, Backend::start("b").await, Backend::start("c").await];
    let gw = TestGateway::start(&http_config(
        "[[listener.route]]\nservice = \"s4\"\nbalance = \"hash\"\nhash_key = \"header:x-user\"\n\
         [[service]]\nname = \"s4\"\noutlier = { base_ejection = \"1s\" }\n",
    ))
    .await;
    let lines: Vec<Line<'_>> = backends.iter().map(|b| ("s4", b.name.as_str(), b.addr, &[][..])).collect();
    write_instances(&gw.instances_path(), &lines);
    gw.wait_live("s4", 3).await;
    let http = support::client();
    let owners = async || {
        let mut v = Vec::new();
        for k in 0..150 {
            let req =
                http::Request::get(gw.url("/")).header("x-user", format!("user-{k}")).body(Default::default()).unwrap();
            v.push(support::request(&http, req).await);
        }
        v
    };
    let before = owners().await;
    // b goes away (refuses connections): its first refused connect ejects it.
    let port = backends[1].addr;
    backends[1].stop();
    let during = owners().await;
    assert_eq!(state(&gw, "s4", "b").await.0, "ejected");
    for (k, (was, now)) in before.iter().zip(&during).enumerate() {
        assert_eq!(now.0, 200, "user-{k}");
        if was.1 == "b" {
            assert_ne!(now.1, "b", "user-{k}");
        } else {
            assert_eq!(was, now, "user-{k} moved although its instance is fine");
        }
    }
    // b comes back on the same address; after its 1 s ejection its keys return.
    let listener = loop {
        match tokio::net::TcpListener::bind(port).await {
            Ok(l) => break l,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let _b2 = Backend::serve("b", listener);
    wait_until("b back", Duration::from_secs(3), async || state(&gw, "s4", "b").await.0 == "up").await;
    assert_eq!(owners().await, before);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_answering_503_is_ejected_and_retried_around() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let bad = StatusBackend::start("bad", 200).await;
    // When one instance of three turns to 503, a third of the requests in flight fail
    // at once, before the fifth ejects it: more than the default floor of 3 concurrent
    // retries. This service allows that burst.
    let gw = TestGateway::start(&route(
        "s5",
        "retry = { attempts = 2, on = [\"503\"] }\n[[service]]\nname = \"s5\"\nretry_budget = { min_concurrency = 10 }\n",
    ))
    .await;
    write_instances(
        &gw.instances_path(),
        &[("s5", "a", a.addr, &[]), ("s5", "b", b.addr, &[]), ("s5", "bad", bad.addr, &[])],
    );
    gw.wait_live("s5", 3).await;
    let url = gw.url("/");
    let run = tokio::spawn(async move { load(&url, CLIENTS, LOAD_FOR, 1_000_000, None).await });
    tokio::time::sleep(LOAD_FOR / 3).await;
    let before = bad.hits();
    bad.status.store(503, Ordering::Relaxed);
    wait_ejected(&gw, "s5", "bad", Duration::from_secs(2)).await;
    let at_ejection = bad.hits();
    let report = run.await.unwrap();
    let failed = report.failed();
    assert!(failed.is_empty(), "{} client-visible failures: {:?}", failed.len(), &failed[..failed.len().min(3)]);
    assert_eq!(state(&gw, "s5", "bad").await, ("ejected".to_string(), "consecutive_failures".to_string()));
    assert_eq!(bad.hits(), at_ejection, "requests reached the ejected instance");
    // Every 503 it gave was retried elsewhere.
    let text = metrics(&gw).await;
    let retried = metric(&text, r#"switchyard_upstream_retries_total{service="s5",reason="503"}"#);
    assert_eq!(retried as usize, at_ejection - before, "{text}");
    println!(
        "503 always: {} requests, 0 client-visible 503s, {} 503s retried; {}",
        report.samples.len(),
        retried,
        report.summary()
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_tls_instance_is_retried_elsewhere() {
    use support::tls::{Ca, TlsBackend};
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("backend CA");
    let cert = ca.issue(dir.path(), "backend", &["backend.internal"]);
    let good = TlsBackend::start("tls-good", &cert, None).await;
    let (_reserved, refused) = support::refusing_addr();
    let ca_file = ca.write(dir.path(), "ca");
    let gw = TestGateway::start(&route(
        "s6",
        &format!(
            "[[service]]\nname = \"s6\"\nupstream_tls = {{ ca = {:?}, server_name = \"backend.internal\" }}\n",
            ca_file.display().to_string()
        ),
    ))
    .await;
    write_instances(
        &gw.instances_path(),
        &[("s6", "refused", refused, &[]), ("s6", "good", good.addr, &[("protocol", "h2")])],
    );
    gw.wait_live("s6", 2).await;
    let url = gw.url("/");
    let report = load(&url, CLIENTS, Duration::from_secs(3), 1_000_000, None).await;
    let failed = report.failed();
    assert!(failed.is_empty(), "{} failed: {:?}", failed.len(), &failed[..failed.len().min(3)]);
    assert_eq!(state(&gw, "s6", "refused").await.0, "ejected");
    println!("TLS refusing: {}", report.summary());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_check_marks_an_instance_down_and_up_again() {
    let backends = [
        StatusBackend::start("a", 200).await,
        StatusBackend::start("b", 200).await,
        StatusBackend::start("c", 200).await,
    ];
    // interval 200 ms (+ up to 20 ms jitter), 2 failures down, 2 successes up.
    let gw = TestGateway::start(&route(
        "s7",
        "[[service]]\nname = \"s7\"\nhealth_check = { kind = \"http\", path = \"/health\", interval = \"200ms\", \
         timeout = \"200ms\", healthy_threshold = 2, unhealthy_threshold = 2 }\n",
    ))
    .await;
    let ids = ["a", "b", "c"];
    let lines: Vec<Line<'_>> = ids.iter().zip(&backends).map(|(id, b)| ("s7", *id, b.addr, &[][..])).collect();
    write_instances(&gw.instances_path(), &lines);
    gw.wait_live("s7", 3).await;
    wait_until("b checked healthy", Duration::from_secs(2), async || {
        let doc: serde_json::Value = serde_json::from_str(&admin_get(gw.admin, "/upstreams").await.1).unwrap();
        doc["services"]["s7"]["instances"][1]["health"] == "healthy"
    })
    .await;
    backends[1].status.store(500, Ordering::Relaxed);
    // interval × threshold = 400 ms, plus jitter and one round in progress: well within 2 s.
    let down =
        wait_until("b unhealthy", Duration::from_secs(2), async || state(&gw, "s7", "b").await.0 == "unhealthy").await;
    let http = support::client();
    for _ in 0..60 {
        assert_eq!(support::get(&http, &gw.url("/")).await.0, 200, "a request reached the unhealthy instance");
    }
    backends[1].status.store(200, Ordering::Relaxed);
    let up = wait_until("b healthy", Duration::from_secs(2), async || state(&gw, "s7", "b").await.0 == "up").await;
    let text = metrics(&gw).await;
    assert_eq!(metric(&text, r#"switchyard_health_changes_total{service="s7",to="unhealthy"}"#), 1.0);
    println!("active check: down after {down:?}, up after {up:?}");
    gw.stop().await;
}

/// The other two kinds of active check, end to end: `grpc` (grpc.health.v1 against a
/// real tonic server) and `tcp` (a port that refuses, then listens).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_and_tcp_active_checks_mark_instances_down_and_up_again() {
    let grpc = [support::grpc::GrpcBackend::start("g1").await, support::grpc::GrpcBackend::start("g2").await];
    let plain = Backend::start("t1").await;
    let (closed, closed_addr) = support::refusing_addr();
    let check = "interval = \"200ms\", timeout = \"200ms\", healthy_threshold = 2, unhealthy_threshold = 2";
    let gw = TestGateway::start(&route(
        "sg",
        &format!(
            "[[service]]\nname = \"sg\"\nhealth_check = {{ kind = \"grpc\", {check} }}\n\
             [[service]]\nname = \"st\"\nhealth_check = {{ kind = \"tcp\", {check} }}\n"
        ),
    ))
    .await;
    let h2c: &[(&str, &str)] = &[("protocol", "h2c")];
    write_instances(
        &gw.instances_path(),
        &[
            ("sg", "g1", grpc[0].addr, h2c),
            ("sg", "g2", grpc[1].addr, h2c),
            ("st", "t1", plain.addr, &[]),
            ("st", "t2", closed_addr, &[]),
        ],
    );
    gw.wait_live("sg", 2).await;
    let health = async |service: &str, index: usize| -> String {
        let doc: serde_json::Value = serde_json::from_str(&admin_get(gw.admin, "/upstreams").await.1).unwrap();
        doc["services"][service]["instances"][index]["health"].as_str().unwrap_or("").to_string()
    };
    wait_until("g2 checked healthy", Duration::from_secs(3), async || health("sg", 1).await == "healthy").await;
    // NOT_SERVING: down within interval × threshold (+ jitter, a round in progress).
    grpc[1].health.store(2, Ordering::Relaxed);
    let down =
        wait_until("g2 unhealthy", Duration::from_secs(3), async || state(&gw, "sg", "g2").await.0 == "unhealthy")
            .await;
    grpc[1].health.store(1, Ordering::Relaxed);
    let up =
        wait_until("g2 healthy again", Duration::from_secs(3), async || state(&gw, "sg", "g2").await.0 == "up").await;
    println!("grpc check: down after {down:?}, up after {up:?}");

    // TCP: the refusing port is unhealthy, the listening one healthy; then it listens.
    wait_until("t2 unhealthy", Duration::from_secs(3), async || state(&gw, "st", "t2").await.0 == "unhealthy").await;
    assert_eq!(health("st", 0).await, "healthy");
    let _listening = closed.listen(16).unwrap();
    let up = wait_until("t2 healthy once it listens", Duration::from_secs(3), async || {
        state(&gw, "st", "t2").await.0 == "up"
    })
    .await;
    println!("tcp check: up {up:?} after the port started listening");
    let text = metrics(&gw).await;
    assert!(metric(&text, r#"switchyard_health_changes_total{service="sg",to="unhealthy"}"#) >= 1.0, "{text}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_stay_within_the_budget_when_two_of_three_fail() {
    let backends = [
        StatusBackend::start("ok", 200).await,
        StatusBackend::start("bad1", 503).await,
        StatusBackend::start("bad2", 503).await,
    ];
    for b in &backends {
        b.delay_ms.store(20, Ordering::Relaxed);
    }
    let gw = TestGateway::start(&route(
        "s8",
        "retry = { attempts = 3, on = [\"503\"] }\n[[service]]\nname = \"s8\"\noutlier = { enabled = false }\n\
         retry_budget = { percent = 20, min_concurrency = 2 }\n",
    ))
    .await;
    let lines: Vec<Line<'_>> =
        ["ok", "bad1", "bad2"].iter().zip(&backends).map(|(id, b)| ("s8", *id, b.addr, &[][..])).collect();
    write_instances(&gw.instances_path(), &lines);
    gw.wait_live("s8", 3).await;
    let url = gw.url("/");
    let run = tokio::spawn(async move { load(&url, CLIENTS, Duration::from_secs(4), 1_000_000, None).await });
    let mut samples = Vec::new();
    while !run.is_finished() {
        let doc: serde_json::Value = serde_json::from_str(&admin_get(gw.admin, "/upstreams").await.1).unwrap();
        let s = &doc["services"]["s8"];
        samples.push((s["active"].as_u64().unwrap_or(0), s["retrying"].as_u64().unwrap_or(0)));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let report = run.await.unwrap();
    let most = samples.iter().map(|s| s.1).max().unwrap_or(0);
    // A retry starts only while retries < max(2, 20 % of the active requests); with at
    // most 20 requests active (20 clients) that is never more than 4 at once. Without
    // the budget two thirds of the requests (those on a failing instance) would be retrying.
    let ceiling = (CLIENTS as u64 * 20 / 100).max(2);
    for (active, retrying) in &samples {
        assert!(*active <= CLIENTS as u64, "{active} active");
        assert!(*retrying <= ceiling, "{retrying} retrying with {active} active (ceiling {ceiling})");
    }
    assert!(most >= 1, "no retry seen in {} samples", samples.len());
    let text = metrics(&gw).await;
    let exhausted = metric(&text, r#"switchyard_upstream_retry_budget_exhausted_total{service="s8"}"#);
    assert!(exhausted > 0.0, "the budget never ran out");
    println!(
        "budget: {} requests, {} samples, at most {most} retrying at once, {exhausted} refused by the budget; {}",
        report.samples.len(),
        samples.len(),
        report.summary()
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_start_ramps_a_new_instances_share() {
    let backends = [Backend::start("a").await, Backend::start("b").await, Backend::start("new").await];
    let gw = TestGateway::start(&route("s9", "[[service]]\nname = \"s9\"\nslow_start = \"4s\"\n")).await;
    write_instances(&gw.instances_path(), &[("s9", "a", backends[0].addr, &[]), ("s9", "b", backends[1].addr, &[])]);
    gw.wait_live("s9", 2).await;
    let url = gw.url("/");
    let run = tokio::spawn(async move { load(&url, CLIENTS, Duration::from_secs(6), 1_000_000, None).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    write_instances(
        &gw.instances_path(),
        &[("s9", "a", backends[0].addr, &[]), ("s9", "b", backends[1].addr, &[]), ("s9", "new", backends[2].addr, &[])],
    );
    gw.wait_live("s9", 3).await;
    let added = Instant::now();
    let report = run.await.unwrap();
    let share = |from: Duration, to: Duration| {
        let window: Vec<_> =
            report.samples.iter().filter(|s| s.started >= added + from && s.started < added + to).collect();
        window.iter().filter(|s| s.body == "new").count() as f64 / window.len().max(1) as f64
    };
    let shares: Vec<f64> = (0..5).map(|i| share(Duration::from_secs(i), Duration::from_secs(i + 1))).collect();
    println!("slow start: the new instance's share per second after it joined: {shares:.3?}");
    assert!(report.failed().is_empty());
    assert!(shares[0] < 0.2, "first second {:.3}: no ramp (a full share is 0.333)", shares[0]);
    assert!(shares[0] < shares[2] && shares[2] < shares[4] + 0.05, "not rising: {shares:.3?}");
    assert!(shares[4] > 0.28, "not at full share after the window: {shares:.3?}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_inflight_limit_requests_get_an_immediate_503() {
    let backends = [
        StatusBackend::start("a", 200).await,
        StatusBackend::start("b", 200).await,
        StatusBackend::start("c", 200).await,
    ];
    for b in &backends {
        b.delay_ms.store(2000, Ordering::Relaxed);
    }
    let gw = TestGateway::start(&http_config(
        "[[listener.route]]\nservice = \"s10\"\ntimeout = \"5s\"\n[[service]]\nname = \"s10\"\nmax_inflight = 2\n",
    ))
    .await;
    let lines: Vec<Line<'_>> =
        ["a", "b", "c"].iter().zip(&backends).map(|(id, b)| ("s10", *id, b.addr, &[][..])).collect();
    write_instances(&gw.instances_path(), &lines);
    gw.wait_live("s10", 3).await;
    let report = load(&gw.url("/"), CLIENTS, Duration::from_millis(100), 1, None).await;
    let ok: Vec<_> = report.samples.iter().filter(|s| s.status == 200).collect();
    let refused: Vec<_> = report.samples.iter().filter(|s| s.status == 503).collect();
    assert_eq!((ok.len(), refused.len()), (6, CLIENTS - 6), "{}", report.summary());
    // Refused at once, not after waiting for a slot: before any answer was ready.
    assert!(refused.iter().all(|s| s.latency < Duration::from_millis(2000)), "{refused:?}");
    for b in &backends {
        assert!(b.inflight_max.load(Ordering::Relaxed) <= 2);
    }
    let text = metrics(&gw).await;
    assert_eq!(
        metric(&text, r#"switchyard_upstream_overflow_total{service="s10",limit="inflight"}"#),
        (CLIENTS - 6) as f64
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_never_opens_more_than_max_connections_and_excess_waiters_get_503() {
    let b = StatusBackend::start("a", 200).await;
    b.delay_ms.store(1000, Ordering::Relaxed);
    let gw = TestGateway::start(&http_config(
        "[[listener.route]]\nservice = \"s11\"\ntimeout = \"5s\"\n\
         [[service]]\nname = \"s11\"\nmax_connections = 2\nmax_pending = 3\n",
    ))
    .await;
    write_instances(&gw.instances_path(), &[("s11", "a", b.addr, &[])]);
    gw.wait_live("s11", 1).await;
    let report = load(&gw.url("/"), 10, Duration::from_millis(100), 1, None).await;
    let ok = report.samples.iter().filter(|s| s.status == 200).count();
    let refused = report.samples.iter().filter(|s| s.status == 503).count();
    // 2 on connections, 3 waiting for them (served once the first two finish), 5 refused.
    assert_eq!((ok, refused), (5, 5), "{}", report.summary());
    assert_eq!(b.inflight_max.load(Ordering::Relaxed), 2, "more than max_connections at once");
    let text = metrics(&gw).await;
    assert_eq!(metric(&text, r#"switchyard_upstream_overflow_total{service="s11",limit="pending"}"#), 5.0);
    gw.stop().await;
}

/// `switchyard register` as a sidecar process; killed on drop.
struct Sidecar(Killed);

impl Sidecar {
    fn start(etcd: &str, service: &str, id: &str, addr: SocketAddr) -> Sidecar {
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["register", "--etcd", etcd, "--service", service, "--id", id, "--addr", &addr.to_string()])
            .args(["--ttl", "2", "--drain-seconds", "1"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start switchyard register");
        Sidecar(Killed(child))
    }

    /// SIGTERM, then waits (bounded) for the exit: draining, drain period, revoke.
    async fn stop(mut self) {
        let pid = self.0 .0.id().to_string();
        assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let waited = tokio::task::spawn_blocking(move || {
            let status = self.0 .0.wait();
            (self, status)
        });
        let (_me, status) =
            tokio::time::timeout(Duration::from_secs(10), waited).await.expect("register exits").unwrap();
        assert!(status.unwrap().success());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_through_register_fails_no_request() {
    use support::etcd::{gateway_config, Etcd};
    let etcd = Etcd::start().await;
    let gw = TestGateway::start(&gateway_config(&[etcd.url()], "")).await;
    let ids = ["r1", "r2", "r3"];
    let mut backends = Vec::new();
    let mut sidecars = Vec::new();
    for id in ids {
        let b = Backend::start(id).await;
        sidecars.push(Some(Sidecar::start(&etcd.url(), "s11", id, b.addr)));
        backends.push(b);
    }
    let live = || {
        let t = gw.table.load();
        let mut v: Vec<String> =
            t.service("s11").map(|s| s.live.iter().map(|e| e.id.to_string()).collect()).unwrap_or_default();
        v.sort();
        v
    };
    wait_until("3 registered", Duration::from_secs(10), async || live().len() == 3).await;
    let url = gw.url("/");
    let run = tokio::spawn(async move { load(&url, CLIENTS, LOAD_FOR, 1_000_000, Some(("host", "s11".into()))).await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let restart_started = Instant::now();
    for (i, id) in ids.iter().enumerate() {
        // Draining, then stop, then start: the sidecar marks it draining, waits, revokes.
        sidecars[i].take().unwrap().stop().await;
        wait_until("deregistered", Duration::from_secs(5), async || !live().contains(&id.to_string())).await;
        let addr = backends[i].addr;
        backends[i].stop();
        let listener = loop {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        backends[i] = Backend::serve(id, listener);
        sidecars[i] = Some(Sidecar::start(&etcd.url(), "s11", id, addr));
        wait_until("re-registered", Duration::from_secs(10), async || live().contains(&id.to_string())).await;
    }
    let restart_took = restart_started.elapsed();
    let report = run.await.unwrap();
    let failed = report.failed();
    assert!(failed.is_empty(), "{} failed: {:?}", failed.len(), &failed[..failed.len().min(3)]);
    println!(
        "rolling restart: {} requests over {restart_took:?} of restarts, 0 failed; {}",
        report.samples.len(),
        report.summary()
    );
    gw.stop().await;
}
