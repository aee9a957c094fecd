//! Bad requests and bad registrations on real sockets, seen from a raw backend
//! that records the bytes it receives: canonical Host and paths, no tunnels
//! (`Upgrade: h2c`, `CONNECT`), no loops (own `Via` → 508; instances at the
//! gateway's own or an unspecified address refused), client body faults are
//! 400 and never upstream errors, responses carry the gateway's own HTTP
//! version, `/upstreams` redacts secret-looking metadata, and the request
//! smuggling shapes that already failed keep failing.

use crate::support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use support::raw::{self, RawBackend, Reply};
use support::{admin_get, http_config, metric, wait_until, write_instances, TestGateway};

const OK_CLOSE: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok";

fn bad(reason: &str) -> String {
    format!(r#"switchyard_bad_requests_total{{listener="web",reason="{reason}"}}"#)
}

async fn metrics(gw: &TestGateway) -> String {
    admin_get(gw.admin, "/metrics").await.1
}

/// Sends one raw request on a new connection; returns the first response (head
/// and Content-Length body), or what came before the gateway closed.
async fn send(gw: &TestGateway, bytes: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut s, bytes.as_bytes()).await.unwrap();
    raw::read_response(&mut s).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_is_canonical_before_routing() {
    let good = RawBackend::start(Reply::Fixed(OK_CLOSE)).await;
    let other = RawBackend::start(Reply::Fixed(OK_CLOSE)).await;
    let gw = TestGateway::start(&http_config(
        "[[listener.route]]\nhost = \"good.example\"\nservice = \"good\"\n[[listener.route]]\nservice = \"other\"\n",
    ))
    .await;
    write_instances(&gw.instances_path(), &[("good", "1", good.addr, &[]), ("other", "1", other.addr, &[])]);
    gw.wait_live("other", 1).await;
    // Absolute-form names good.example, the Host line another: routed by the target,
    // and the backend receives the Host it was routed by.
    let res = send(&gw, "GET http://good.example/x HTTP/1.1\r\nhost: other.example\r\n\r\n").await;
    assert_eq!(raw::status(&res), 200, "{res}");
    let seen = good.request(1).await.to_ascii_lowercase();
    assert!(seen.contains("\r\nhost: good.example\r\n"), "{seen}");
    assert!(!seen.contains("other.example\r\n") || seen.contains("x-forwarded-host: good.example"), "{seen}");
    // Missing (HTTP/1.1), duplicate, invalid: 400, never forwarded.
    let before = metrics(&gw).await;
    for (head, reason) in [
        ("GET / HTTP/1.1\r\n\r\n", "missing_host"),
        ("GET / HTTP/1.1\r\nhost: a.example\r\nhost: b.example\r\n\r\n", "duplicate_host"),
        ("GET / HTTP/1.1\r\nhost: a b/c@d\r\n\r\n", "invalid_host"),
        ("GET / HTTP/1.1\r\nhost: echo:99999\r\n\r\n", "invalid_host"),
        ("GET / HTTP/1.1\r\nhost: \r\n\r\n", "invalid_host"),
    ] {
        let res = send(&gw, head).await;
        assert_eq!(raw::status(&res), 400, "{head:?} → {res}");
        let _ = reason;
    }
    let after = metrics(&gw).await;
    assert_eq!(metric(&after, &bad("missing_host")), metric(&before, &bad("missing_host")) + 1.0);
    assert_eq!(metric(&after, &bad("duplicate_host")), metric(&before, &bad("duplicate_host")) + 1.0);
    // hyper itself refuses some of these as unparseable; the rest are ours.
    assert!(metric(&after, &bad("invalid_host")) >= metric(&before, &bad("invalid_host")) + 1.0);
    assert_eq!(other.connections.load(Ordering::SeqCst), 0, "{:?}", other.received());
    // HTTP/1.0 may name no host (forwarded with the upstream's name as Host, as nginx does).
    let res = send(&gw, "GET /old HTTP/1.0\r\n\r\n").await;
    assert_eq!(raw::status(&res), 200, "{res}");
    assert!(other.request(1).await.starts_with("GET /old HTTP/1.1\r\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_are_normalised_before_matching_and_stripping() {
    let public = RawBackend::start(Reply::Fixed(OK_CLOSE)).await;
    let internal = RawBackend::start(Reply::Fixed(OK_CLOSE)).await;
    let api = RawBackend::start(Reply::Fixed(OK_CLOSE)).await;
    let gw = TestGateway::start(&http_config(
        r#"[[listener.route]]
path_prefix = "/public/"
service = "public"
[[listener.route]]
path_prefix = "/api/"
strip_prefix = true
service = "api"
[[listener.route]]
path_prefix = "/internal/"
service = "internal"
"#,
    ))
    .await;
    write_instances(
        &gw.instances_path(),
        &[("public", "1", public.addr, &[]), ("internal", "1", internal.addr, &[]), ("api", "1", api.addr, &[])],
    );
    gw.wait_live("api", 1).await;
    // Before issue 9 both reached "public" unchanged.
    for (n, path) in ["/public/../internal/secret", "/public/%2e%2e/internal/secret"].iter().enumerate() {
        let res = send(&gw, &format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n")).await;
        assert_eq!(raw::status(&res), 200, "{res}");
        let seen = internal.request(n + 1).await;
        assert!(seen.starts_with("GET /internal/secret HTTP/1.1\r\n"), "{seen}");
    }
    assert_eq!(public.connections.load(Ordering::SeqCst), 0);
    // strip_prefix applies to the normalised path: `/api/../admin` is `/admin`, which
    // no route serves, instead of reaching the api backend as `/../admin`.
    let res = send(&gw, "GET /api/../admin HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert_eq!(raw::status(&res), 404, "{res}");
    let res = send(&gw, "GET /api/v1/./users/%7Ebob HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert_eq!(raw::status(&res), 200, "{res}");
    assert!(api.request(1).await.starts_with("GET /v1/users/~bob HTTP/1.1\r\n"), "{:?}", api.received());
    // Above the root: 400.
    let before = metric(&metrics(&gw).await, &bad("path_above_root"));
    let res = send(&gw, "GET /public/../../etc/passwd HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert_eq!(raw::status(&res), 400, "{res}");
    assert_eq!(metric(&metrics(&gw).await, &bad("path_above_root")), before + 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn normalize_path_can_be_turned_off() {
    let b = RawBackend::start(Reply::Fixed(OK_CLOSE)).await;
    let config = http_config("normalize_path = false\n[[listener.route]]\nservice = \"s\"\n");
    let gw = TestGateway::start(&config).await;
    write_instances(&gw.instances_path(), &[("s", "1", b.addr, &[])]);
    gw.wait_live("s", 1).await;
    let res = send(&gw, "GET /a/%2e%2e/b HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert_eq!(raw::status(&res), 200, "{res}");
    assert!(b.request(1).await.starts_with("GET /a/%2e%2e/b HTTP/1.1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_tunnels_h2c_upgrade_is_stripped_connect_is_405_connection_cannot_drop_host() {
    let b = RawBackend::start(Reply::Fixed(OK_CLOSE)).await;
    let gw = TestGateway::start(&http_config("[[listener.route]]\nservice = \"s\"\n")).await;
    write_instances(&gw.instances_path(), &[("s", "1", b.addr, &[])]);
    gw.wait_live("s", 1).await;
    // Upgrade: h2c is answered as plain HTTP/1.1; the backend sees no upgrade.
    let res = send(
        &gw,
        "GET / HTTP/1.1\r\nhost: x\r\nconnection: upgrade, http2-settings\r\nupgrade: h2c\r\nhttp2-settings: AAMAAABkAAQAAP__\r\n\r\n",
    )
    .await;
    assert_eq!(raw::status(&res), 200, "{res}");
    let seen = b.request(1).await.to_ascii_lowercase();
    assert!(!seen.contains("upgrade") && !seen.contains("http2-settings"), "{seen}");
    // CONNECT: 405 (no route allows it), never forwarded.
    let res = send(&gw, "CONNECT internal.example:22 HTTP/1.1\r\nhost: internal.example:22\r\n\r\n").await;
    assert_eq!(raw::status(&res), 405, "{res}");
    assert_eq!(b.connections.load(Ordering::SeqCst), 1);
    // Connection: host no longer removes the Host the request was routed by.
    let res = send(&gw, "GET / HTTP/1.1\r\nhost: app.example\r\nconnection: host, x-drop\r\nx-drop: 1\r\n\r\n").await;
    assert_eq!(raw::status(&res), 200, "{res}");
    let seen = b.request(2).await.to_ascii_lowercase();
    assert!(seen.contains("\r\nhost: app.example\r\n"), "{seen}");
    assert!(!seen.contains("x-drop"), "{seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_is_forwarded_only_where_a_route_allows_it() {
    let b = RawBackend::start(Reply::Fixed(OK_CLOSE)).await;
    let gw = TestGateway::start(&http_config(
        "[[listener.route]]\nhost = \"tunnel.example\"\nallow_connect = true\nservice = \"s\"\n",
    ))
    .await;
    write_instances(&gw.instances_path(), &[("s", "1", b.addr, &[])]);
    gw.wait_live("s", 1).await;
    let res = send(&gw, "CONNECT tunnel.example:443 HTTP/1.1\r\nhost: tunnel.example:443\r\n\r\n").await;
    assert_ne!(raw::status(&res), 405, "{res}");
    assert!(b.request(1).await.starts_with("CONNECT "), "{:?}", b.received());
    let res = send(&gw, "CONNECT other.example:443 HTTP/1.1\r\nhost: other.example:443\r\n\r\n").await;
    assert_eq!(raw::status(&res), 405, "{res}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_comes_back_is_508_and_the_via_names_the_gateway() {
    let b = RawBackend::start(Reply::Fixed(OK_CLOSE)).await;
    // Two gateways, each routing "loop" to the other: the request loops through both.
    let first = TestGateway::start(&http_config("[[listener.route]]\nservice = \"loop\"\n")).await;
    let second = TestGateway::start(&http_config("[[listener.route]]\nservice = \"loop\"\n")).await;
    write_instances(&first.instances_path(), &[("loop", "1", second.addr, &[])]);
    write_instances(&second.instances_path(), &[("loop", "1", first.addr, &[])]);
    first.wait_live("loop", 1).await;
    second.wait_live("loop", 1).await;
    let res = send(&first, "GET /x HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert_eq!(raw::status(&res), 508, "{res}");
    let loops = metric(&metrics(&first).await, r#"switchyard_loops_detected_total{listener="web"}"#);
    assert_eq!(loops, 1.0, "the first gateway saw its own Via once");
    // A normal request carries one Via entry naming the gateway, both ways.
    let gw = TestGateway::start(&http_config("[[listener.route]]\nservice = \"s\"\n")).await;
    write_instances(&gw.instances_path(), &[("s", "1", b.addr, &[])]);
    gw.wait_live("s", 1).await;
    let res = send(&gw, "GET / HTTP/1.1\r\nhost: x\r\nvia: 1.1 edge\r\n\r\n").await;
    assert!(res.to_ascii_lowercase().contains("\r\nvia: 1.1 switchyard-"), "{res}");
    let seen = b.request(1).await.to_ascii_lowercase();
    assert!(seen.contains("via: 1.1 edge") && seen.contains("1.1 switchyard-"), "{seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_at_the_gateways_own_or_an_unspecified_address_are_refused() {
    let b = RawBackend::start(Reply::Fixed(OK_CLOSE)).await;
    let gw = TestGateway::start(&http_config("[[listener.route]]\nservice = \"s\"\n")).await;
    let unspecified: std::net::SocketAddr = format!("0.0.0.0:{}", b.addr.port()).parse().unwrap();
    write_instances(
        &gw.instances_path(),
        &[
            ("s", "self", gw.addr, &[]),
            ("s", "admin", gw.admin, &[]),
            ("s", "any", unspecified, &[]),
            ("s", "real", b.addr, &[]),
        ],
    );
    gw.wait_live("s", 1).await;
    let table = gw.table.load();
    let ids: Vec<&str> = table.service("s").unwrap().endpoints.iter().map(|e| &*e.id).collect();
    assert_eq!(ids, ["real"]);
    let text = metrics(&gw).await;
    let refused = |kind: &str| {
        metric(&text, &format!(r#"switchyard_discovery_invalid_values_total{{source="file",kind="{kind}"}}"#))
    };
    assert!(refused("own_address") >= 2.0, "{text}");
    assert!(refused("unspecified_address") >= 1.0, "{text}");
    // And the one that is left is served, once, with no loop.
    let res = send(&gw, "GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert_eq!(raw::status(&res), 200, "{res}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_request_body_is_a_client_fault() {
    // The backend never answers: the only way the request ends is the body failing.
    let b = RawBackend::start(Reply::Hold).await;
    let gw = TestGateway::start(&http_config("[[listener.route]]\nservice = \"s\"\n")).await;
    write_instances(&gw.instances_path(), &[("s", "1", b.addr, &[])]);
    gw.wait_live("s", 1).await;
    let upstream_errors = r#"switchyard_upstream_errors_total{kind="protocol",service="s"}"#;
    let before = metrics(&gw).await;
    // A chunk size that is not hex, after a good first chunk.
    let res = send(
        &gw,
        "POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nworld\r\n0\r\n\r\n",
    )
    .await;
    eprintln!("MEASURE malformed chunked body answered: {:?}", res.lines().next());
    assert_eq!(raw::status(&res), 400, "{res}");
    let mut after = String::new();
    wait_until("the malformed body counted", Duration::from_secs(5), async || {
        after = metrics(&gw).await;
        metric(&after, &bad("malformed_body")) == metric(&before, &bad("malformed_body")) + 1.0
    })
    .await;
    assert_eq!(metric(&after, upstream_errors), metric(&before, upstream_errors), "counted as an upstream error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_carry_the_gateways_protocol_version() {
    let old = RawBackend::start(Reply::Fixed(b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok")).await;
    let gw = TestGateway::start(&http_config("[[listener.route]]\nservice = \"s\"\n")).await;
    write_instances(&gw.instances_path(), &[("s", "1", old.addr, &[])]);
    gw.wait_live("s", 1).await;
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut s, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let res = raw::read_response(&mut s).await;
    assert!(res.starts_with("HTTP/1.1 200 OK\r\n"), "{res}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstreams_redacts_secret_looking_metadata() {
    let b = RawBackend::start(Reply::Fixed(OK_CLOSE)).await;
    let gw = TestGateway::start(&http_config("[[listener.route]]\nservice = \"s\"\n")).await;
    write_instances(&gw.instances_path(), &[("s", "1", b.addr, &[("db_password", "hunter2"), ("zone", "eu-1")])]);
    gw.wait_live("s", 1).await;
    let (status, body) = admin_get(gw.admin, "/upstreams").await;
    assert_eq!(status, 200);
    assert!(!body.contains("hunter2"), "{body}");
    assert!(body.contains("\"db_password\": \"<redacted>\"") && body.contains("\"zone\": \"eu-1\""), "{body}");
}

/// The smuggling shapes that were handled safely before issue 9 must stay so:
/// refused (400), or for CL + TE framed by TE alone and closed; none reaches the
/// backend as two requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_smuggling_shapes_stay_refused() {
    let b = RawBackend::start(Reply::Fixed(OK_CLOSE)).await;
    let gw = TestGateway::start(&http_config("[[listener.route]]\nservice = \"s\"\n")).await;
    write_instances(&gw.instances_path(), &[("s", "1", b.addr, &[])]);
    gw.wait_live("s", 1).await;
    let smuggled = "GET /smuggled HTTP/1.1\r\nhost: x\r\n\r\n";
    let cases = [
        // CL + TE together.
        format!(
            "POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
        ),
        // Two different Content-Lengths.
        format!("POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\ncontent-length: 44\r\n\r\n{smuggled}"),
        // Obfuscated TE.
        format!("POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: xchunked\r\n\r\n0\r\n\r\n{smuggled}"),
        format!("POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding : chunked\r\n\r\n0\r\n\r\n{smuggled}"),
        // obs-fold.
        format!("GET / HTTP/1.1\r\nhost: x\r\nx-a: 1\r\n folded\r\n\r\n{smuggled}"),
        // A chunk size that overflows.
        format!(
            "POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nffffffffffffffffff1\r\n\r\n{smuggled}"
        ),
    ];
    for (i, case) in cases.iter().enumerate() {
        let res = send(&gw, case).await;
        if i == 0 {
            // CL + TE: Transfer-Encoding wins and the connection is closed after the
            // response (RFC 9112 §6.3), so the bytes after the chunked body are never read.
            assert_eq!(raw::status(&res), 200, "{case:?} → {res}");
            assert_eq!(res.matches("HTTP/1.1 ").count(), 1, "{res}");
            assert!(res.to_ascii_lowercase().contains("connection: close"), "{res}");
            let seen = b.request(1).await.to_ascii_lowercase();
            assert!(!seen.contains("content-length: 4"), "both framings were forwarded: {seen}");
        } else {
            assert_eq!(raw::status(&res), 400, "{case:?} → {res}");
        }
    }
    for seen in b.received() {
        assert!(!seen.contains("/smuggled"), "a smuggled request reached the backend: {seen}");
    }
}

/// From a real etcd: a 1 MB value (etcd accepts up to 1.5 MiB) and an instance at
/// `0.0.0.0` are refused and counted, while a valid instance beside them is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_values_over_64_kib_and_unspecified_addresses_are_refused() {
    let etcd = support::etcd::Etcd::start().await;
    let mut kv = etcd.client().await;
    let b = RawBackend::start(Reply::Fixed(OK_CLOSE)).await;
    let gw = TestGateway::start(&support::etcd::gateway_config(&[etcd.url()], "")).await;
    let huge = support::etcd::instance_json("s", "huge", b.addr, &[("blob", &"x".repeat(1 << 20))]);
    kv.put("/services/s/huge", huge, None).await.unwrap();
    kv.put("/services/s/any", format!("0.0.0.0:{}", b.addr.port()), None).await.unwrap();
    kv.put("/services/s/real", support::etcd::instance_json("s", "real", b.addr, &[]), None).await.unwrap();
    gw.wait_live("s", 1).await;
    let ids: Vec<String> = gw.table.load().service("s").unwrap().endpoints.iter().map(|e| e.id.to_string()).collect();
    assert_eq!(ids, ["real"]);
    let text = metrics(&gw).await;
    let invalid = |kind: &str| {
        metric(&text, &format!(r#"switchyard_discovery_invalid_values_total{{source="etcd",kind="{kind}"}}"#))
    };
    assert!(invalid("value") >= 1.0, "the 1 MB value was not counted:\n{text}");
    assert!(invalid("unspecified_address") >= 1.0, "{text}");
}
