//! The HTTP proxy's behaviour at its edges: status mapping (404/502/503/504),
//! forwarded headers, prefix strip, host routing, h2c, absolute-form refusal,
//! and the metrics that traffic moves.

use crate::support;

use std::time::Duration;

use http_body_util::BodyExt;
use support::{
    admin_get, client, get, h2c_client, http_config, metric, request, write_instances, Backend, TestGateway,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_mapping() {
    let up = Backend::start("up").await;
    // A port with nothing listening: connections are refused.
    let (_reserved, refused) = support::refusing_addr();
    let gw = TestGateway::start(&http_config(
        r#"
[[listener.route]]
path_prefix = "/refused/"
service = "refused"
[[listener.route]]
path_prefix = "/empty/"
service = "empty"
[[listener.route]]
path_prefix = "/up/"
strip_prefix = true
service = "up"
"#,
    ))
    .await;
    write_instances(&gw.instances_path(), &[("refused", "r", refused, &[]), ("up", "u", up.addr, &[])]);
    gw.wait_live("up", 1).await;
    let c = client();
    let (status, body) = get(&c, &gw.url("/refused/x")).await;
    assert_eq!(status, 502, "{body}");
    // Clients never learn a backend's address.
    assert!(!body.contains(&refused.port().to_string()), "{body}");
    let (status, body) = get(&c, &gw.url("/empty/x")).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no live instance"), "{body}");
    assert_eq!(get(&c, &gw.url("/nowhere")).await.0, 404);
    // Request timeout is 2s in the test config.
    let (status, _) = get(&c, &gw.url("/up/slow/3000")).await;
    assert_eq!(status, 504);
    assert_eq!(get(&c, &gw.url("/up/x")).await, (200, "up".to_string()));

    // All of it is counted.
    let text = admin_get(gw.admin, "/metrics").await.1;
    assert_eq!(metric(&text, r#"switchyard_upstream_errors_total{service="refused",kind="connect"}"#), 1.0);
    assert_eq!(metric(&text, r#"switchyard_upstream_errors_total{service="up",kind="timeout"}"#), 1.0);
    let requests = |service: &str, code: u16| {
        let series = format!(
            r#"switchyard_requests_total{{listener="web",service="{service}",code="{code}",method="GET",protocol="http1"}}"#
        );
        metric(&text, &series)
    };
    assert_eq!(requests("refused", 502), 1.0);
    assert_eq!(requests("up", 200), 1.0);
    assert_eq!(requests("up", 504), 1.0);
    // The gateway's own answers: 503 for a routed service that never had an
    // instance (under the route's service), 404 without a route (service="";
    // other tests of this binary add theirs).
    assert_eq!(requests("empty", 503), 1.0);
    assert_eq!(metric(&text, r#"switchyard_upstream_errors_total{service="empty",kind="no_instance"}"#), 1.0);
    assert!(requests("", 404) >= 1.0, "{text}");
    // Upstream latency apart from the total: the 504 never got a response head.
    assert_eq!(metric(&text, r#"switchyard_upstream_duration_seconds_count{service="up"}"#), 1.0);
    assert_eq!(metric(&text, r#"switchyard_request_duration_seconds_count{service="up"}"#), 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_traffic() {
    let b = Backend::start("m").await;
    let gw = TestGateway::start(&http_config("[[listener.route]]\nservice = \"metered\"\n")).await;
    write_instances(&gw.instances_path(), &[("metered", "1", b.addr, &[])]);
    gw.wait_live("metered", 1).await;
    let before = admin_get(gw.admin, "/metrics").await.1;
    let c = client();
    for _ in 0..7 {
        assert_eq!(get(&c, &gw.url("/")).await.0, 200);
    }
    let after = admin_get(gw.admin, "/metrics").await.1;
    let series =
        r#"switchyard_requests_total{listener="web",service="metered",code="200",method="GET",protocol="http1"}"#;
    assert_eq!(metric(&after, series) - metric(&before, series), 7.0);
    let hist = r#"switchyard_request_duration_seconds_count{service="metered"}"#;
    assert_eq!(metric(&after, hist) - metric(&before, hist), 7.0);
    assert_eq!(metric(&after, r#"switchyard_upstream_instances{service="metered",state="up"}"#), 1.0);
    assert!(metric(&after, "switchyard_table_swaps_total") >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_and_hop_by_hop() {
    let b = Backend::start("h").await;
    let gw = TestGateway::start(&http_config(
        "[[listener.route]]\npath_prefix = \"/api/\"\nstrip_prefix = true\nservice = \"h\"\n",
    ))
    .await;
    write_instances(&gw.instances_path(), &[("h", "1", b.addr, &[])]);
    gw.wait_live("h", 1).await;
    let req = http::Request::get(gw.url("/api/headers"))
        .header("host", "shop.example.com:8080")
        .header("x-forwarded-for", "10.1.2.3")
        .header("connection", "x-drop-me")
        .header("x-drop-me", "1")
        .header("proxy-authorization", "secret")
        .body(Default::default())
        .unwrap();
    let (status, body) = request(&client(), req).await;
    assert_eq!(status, 200, "{body}");
    let lines: Vec<&str> = body.lines().collect();
    assert!(lines.contains(&"x-forwarded-for: 10.1.2.3, 127.0.0.1"), "{body}");
    assert!(lines.contains(&"x-forwarded-proto: http"), "{body}");
    assert!(lines.contains(&"x-forwarded-host: shop.example.com:8080"), "{body}");
    assert!(lines.contains(&"host: shop.example.com:8080"), "{body}");
    assert!(!body.contains("x-drop-me") && !body.contains("proxy-authorization"), "{body}");
}

/// `strip_prefix` takes the prefix off whether or not it ends in `/` (until this test,
/// "/plain" of "/plain/x" left "/x" unseen and sent "/plain/x"), keeping the query.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strip_prefix_with_or_without_a_trailing_slash() {
    let b = Backend::start("h").await;
    let routes = "[[listener.route]]\npath_prefix = \"/plain\"\nstrip_prefix = true\nservice = \"h\"\n\
                  [[listener.route]]\npath_prefix = \"/slashed/\"\nstrip_prefix = true\nservice = \"h\"\n";
    let gw = TestGateway::start(&http_config(routes)).await;
    write_instances(&gw.instances_path(), &[("h", "1", b.addr, &[])]);
    gw.wait_live("h", 1).await;
    let c = client();
    for path in ["/plain/headers", "/slashed/headers", "/plain/headers?x=1"] {
        let (status, body) = get(&c, &gw.url(path)).await;
        assert!(status == 200 && body.starts_with("version: "), "{path}: the backend saw /headers: {status} {body}");
    }
    assert_eq!(get(&c, &gw.url("/plain/bytes/3?n=1")).await, (200, "xxx".to_string()));
    assert_eq!(get(&c, &gw.url("/plain")).await, (200, "h".to_string()), "\"/plain\" goes upstream as \"/\"");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_header_names_the_service_without_routes() {
    let a = Backend::start("alpha").await;
    let gw = TestGateway::start(&http_config("")).await;
    write_instances(&gw.instances_path(), &[("alpha", "1", a.addr, &[])]);
    gw.wait_live("alpha", 1).await;
    let c = client();
    let with_host = |host: &str| http::Request::get(gw.url("/")).header("host", host).body(Default::default()).unwrap();
    assert_eq!(request(&c, with_host("alpha:8080")).await, (200, "alpha".to_string()));
    assert_eq!(request(&c, with_host("beta")).await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_for_a_foreign_host_is_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let b = Backend::start("own").await;
    let gw = TestGateway::start(&http_config(
        "[[listener.route]]\nhost = \"own.example\"\nservice = \"own\"\n[[listener.route]]\nservice = \"own\"\n",
    ))
    .await;
    write_instances(&gw.instances_path(), &[("own", "1", b.addr, &[])]);
    gw.wait_live("own", 1).await;
    let raw = |target: &'static str| {
        let addr = gw.addr;
        async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(format!("GET {target} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        }
    };
    assert!(raw("http://evil.example/").await.starts_with("HTTP/1.1 403"));
    assert!(raw("http://own.example/").await.starts_with("HTTP/1.1 200"));
    assert!(raw("/").await.starts_with("HTTP/1.1 200"));
    let text = admin_get(gw.admin, "/metrics").await.1;
    assert_eq!(
        metric(&text, r#"switchyard_bad_requests_total{listener="web",reason="absolute_form_foreign_host"}"#),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_both_sides() {
    let b = Backend::start("h2").await;
    let gw = TestGateway::start(&http_config("[[listener.route]]\nservice = \"h2\"\n")).await;
    // The instance speaks h2c upstream too.
    write_instances(&gw.instances_path(), &[("h2", "1", b.addr, &[("protocol", "h2c")])]);
    gw.wait_live("h2", 1).await;
    let req = http::Request::get(gw.url("/headers")).body(Default::default()).unwrap();
    let res = h2c_client().request(req).await.unwrap();
    assert_eq!(res.version(), http::Version::HTTP_2);
    assert_eq!(res.status(), 200);
    let body = String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert!(body.starts_with("version: HTTP/2.0"), "{body}");
    // And an HTTP/1.1 client reaches the same h2c upstream.
    let (status, body) = get(&client(), &gw.url("/headers")).await;
    assert_eq!(status, 200);
    assert!(body.starts_with("version: HTTP/2.0"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints() {
    let b = Backend::start("x").await;
    let gw = TestGateway::start(&http_config("[[listener.route]]\nservice = \"viewed\"\n")).await;
    // Before the first table: alive but not ready.
    assert_eq!(admin_get(gw.admin, "/healthz").await.0, 200);
    write_instances(&gw.instances_path(), &[("viewed", "v1", b.addr, &[("weight", "4"), ("status", "draining")])]);
    support::wait_until("the first table", Duration::from_secs(5), async || gw.table.load().version >= 1).await;
    assert_eq!(admin_get(gw.admin, "/readyz").await.0, 200);
    let (status, json) = admin_get(gw.admin, "/upstreams").await;
    assert_eq!(status, 200);
    let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
    let inst = &doc["services"]["viewed"]["instances"][0];
    assert_eq!(inst["id"], "v1");
    assert_eq!(inst["state"], "draining");
    assert_eq!(inst["weight"], 4);
    assert_eq!(doc["services"]["viewed"]["live"], 0);
    assert!(doc["version"].as_u64().unwrap() >= 1);
    assert_eq!(admin_get(gw.admin, "/nope").await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_instance_is_skipped() {
    let up = Backend::start("up").await;
    let (_reserved, refused) = support::refusing_addr();
    let gw = TestGateway::start(&http_config("[[listener.route]]\nservice = \"skip\"\n")).await;
    write_instances(&gw.instances_path(), &[("skip", "a-refused", refused, &[]), ("skip", "b-up", up.addr, &[])]);
    gw.wait_live("skip", 2).await;
    let c = client();
    for _ in 0..30 {
        // Round-robin sends every other request to the refusing instance first.
        assert_eq!(get(&c, &gw.url("/")).await, (200, "up".to_string()));
    }
    assert_eq!(up.hits(), 30);
    let text = admin_get(gw.admin, "/metrics").await.1;
    // Its first refused connect ejects it (outlier detection), so it costs one connect, not 15.
    assert_eq!(metric(&text, r#"switchyard_upstream_errors_total{service="skip",kind="connect"}"#), 1.0);
    let series = r#"switchyard_requests_total{listener="web",service="skip",code="200",method="GET",protocol="http1"}"#;
    assert_eq!(metric(&text, series), 30.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_gets_400_and_is_counted() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let b = Backend::start("g").await;
    let gw = TestGateway::start(&http_config("[[listener.route]]\nservice = \"garbage\"\n")).await;
    write_instances(&gw.instances_path(), &[("garbage", "1", b.addr, &[])]);
    gw.wait_live("garbage", 1).await;
    let series = r#"switchyard_bad_requests_total{listener="web",reason="malformed_request"}"#;
    let before = metric(&admin_get(gw.admin, "/metrics").await.1, series);
    for junk in [
        &b"\x16\x03\x01\x02\x00 not http\r\n\r\n"[..],
        b"GET / HTTP/9.9\r\n\r\n",
        b"GET /\x01 HTTP/1.1\r\nhost: x\r\n\r\n",
    ] {
        let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(junk).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await.unwrap().unwrap();
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 400"), "{junk:?} -> {text:?}");
    }
    support::wait_until("3 malformed requests counted", Duration::from_secs(5), async || {
        metric(&admin_get(gw.admin, "/metrics").await.1, series) >= before + 3.0
    })
    .await;
    // The gateway still serves.
    assert_eq!(get(&client(), &gw.url("/")).await, (200, "g".to_string()));
}
