//! gRPC through the gateway with a real tonic client and server: per-request
//! balancing on one client connection, trailers unchanged, the three streaming
//! kinds, the gateway's own errors as gRPC statuses (14 with no instance or a
//! refused connect, 4 when `grpc-timeout` runs out first), and gRPC over TLS.

use crate::support;

use support::FILE_DISCOVERY;

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use tonic::{Code, Request};

use support::grpc::{EchoClient, GrpcBackend, Msg};
use support::tls::{self, Ca};
use support::{h2c_client, write_instances, TestGateway};

const BASE: &str = r#"[admin]
listen = "127.0.0.1:0"
[discovery]
source = "file"
path = "{instances}"
poll_interval = "20ms"
[timeouts]
request = "5s"
connect = "1s"
[[listener]]
name = "web"
protocol = "http"
listen = "127.0.0.1:0"
[[listener.route]]
grpc_service = "test.Echo"
service = "echo"
"#;

async fn gateway_with(backends: &[&GrpcBackend], extra: &str) -> TestGateway {
    let gw = TestGateway::start(&format!("{BASE}{extra}")).await;
    let ids: Vec<String> = (1..=backends.len()).map(|i| format!("e{i}")).collect();
    let instances: Vec<support::InstanceLine<'_>> =
        backends.iter().zip(&ids).map(|(b, id)| ("echo", id.as_str(), b.addr, &[("protocol", "h2c")][..])).collect();
    write_instances(&gw.instances_path(), &instances);
    gw.wait_live("echo", backends.len()).await;
    gw
}

#[tokio::test]
async fn unary_calls_on_one_connection_are_balanced_per_request() {
    let backends = [GrpcBackend::start("b1").await, GrpcBackend::start("b2").await, GrpcBackend::start("b3").await];
    let gw = gateway_with(&backends.iter().collect::<Vec<_>>(), "").await;
    let mut client = EchoClient::connect(gw.addr).await;
    let mut answered: HashMap<String, usize> = HashMap::new();
    for i in 0..300 {
        let res = client.unary(Request::new(Msg::new(&format!("call {i}")))).await.expect("unary call");
        let msg = res.into_inner();
        assert_eq!(msg.text, format!("call {i}"));
        *answered.entry(msg.backend).or_default() += 1;
    }
    assert_eq!(answered.len(), 3, "{answered:?}");
    assert!(answered.values().all(|&n| n == 100), "{answered:?}");
    assert_eq!(backends.iter().map(|b| b.calls()).collect::<Vec<_>>(), [100, 100, 100]);
}

#[tokio::test]
async fn trailers_pass_through_unchanged() {
    let backend = GrpcBackend::start("b1").await;
    let gw = gateway_with(&[&backend], "").await;
    let mut client = EchoClient::connect(gw.addr).await;

    // Trailers-only error response: status, percent-encoded message and custom metadata.
    let status = client.unary(Request::new(Msg::new("fail"))).await.expect_err("the backend fails this call");
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(status.message(), "nothing here: 100% gone");
    assert_eq!(status.metadata().get("x-custom-detail").unwrap(), "kept");

    // Real trailers after data frames.
    let mut stream = client.repeat("trailers").await.expect("stream starts").into_inner();
    for i in 0..3 {
        assert_eq!(stream.message().await.expect("message").expect("not the end").text, i.to_string());
    }
    let status = stream.message().await.expect_err("ends with the backend's status");
    assert_eq!(status.code(), Code::DataLoss);
    assert_eq!(status.message(), "after three");
    assert_eq!(status.metadata().get("x-custom-trailer").unwrap(), "t1");

    // A clean end: grpc-status 0 in the trailers.
    let mut stream = client.repeat("n:2").await.unwrap().into_inner();
    assert!(stream.message().await.unwrap().is_some());
    assert!(stream.message().await.unwrap().is_some());
    assert!(stream.message().await.unwrap().is_none());
    let trailers = stream.trailers().await.unwrap().expect("trailers");
    // tonic treats a 200 without grpc-status as success, so check the trailer itself:
    // a gateway that dropped it would leave clients of stricter libraries with an error.
    assert_eq!(trailers.get("grpc-status").map(|v| v.to_str().unwrap()), Some("0"), "{trailers:?}");
}

#[tokio::test]
async fn client_server_and_bidi_streaming() {
    let backend = GrpcBackend::start("b1").await;
    let gw = gateway_with(&[&backend], "").await;
    let mut client = EchoClient::connect(gw.addr).await;

    let res = client.collect(vec!["a", "b", "c", "d"]).await.expect("client streaming");
    assert_eq!(res.into_inner().text, "a,b,c,d");

    let mut stream = client.repeat("n:50").await.expect("server streaming").into_inner();
    let mut n = 0;
    while let Some(m) = stream.message().await.expect("message") {
        assert_eq!(m.text, n.to_string());
        n += 1;
    }
    assert_eq!(n, 50);

    // Bidi, in lock step: each reply must arrive before the next message is sent,
    // so nothing on the way may buffer a stream until it ends.
    let (tx, rx) = tokio::sync::mpsc::channel::<Msg>(1);
    let outbound = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    tx.send(Msg::new("ping 0")).await.unwrap();
    let mut replies = client.chat(outbound).await.expect("bidi starts").into_inner();
    for i in 0..5 {
        let reply = tokio::time::timeout(Duration::from_secs(5), replies.message()).await.expect("reply in time");
        assert_eq!(reply.unwrap().unwrap().text, format!("ping {i}"));
        tx.send(Msg::new(&format!("ping {}", i + 1))).await.unwrap();
    }
    drop(tx);
    assert_eq!(replies.message().await.unwrap().unwrap().text, "ping 5");
    assert!(replies.message().await.unwrap().is_none());
}

#[tokio::test]
async fn gateway_errors_are_grpc_statuses() {
    let backend = GrpcBackend::start("b1").await;
    let extra = r#"
[[listener]]
name = "noinst"
protocol = "http"
listen = "127.0.0.1:0"
[[listener.route]]
grpc_service = "test.Echo"
service = "empty"
[[listener]]
name = "refused"
protocol = "http"
listen = "127.0.0.1:0"
[[listener.route]]
grpc_service = "test.Echo"
service = "dead"
[[listener]]
name = "lost"
protocol = "http"
listen = "127.0.0.1:0"
[[listener.route]]
grpc_service = "test.Echo"
service = "lost"
"#;
    let gw = TestGateway::start(&format!("{BASE}{extra}")).await;
    let (_reserved, closed) = support::refusing_addr();
    // An instance that accepts, reads what comes, then drops the connection.
    let lost = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let lost_addr = lost.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = lost.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = tokio::io::AsyncReadExt::read(&mut conn, &mut buf).await;
            });
        }
    });
    write_instances(
        &gw.instances_path(),
        &[
            ("echo", "e1", backend.addr, &[("protocol", "h2c")]),
            ("dead", "d1", closed, &[("protocol", "h2c")]),
            ("lost", "l1", lost_addr, &[("protocol", "h2c")]),
        ],
    );
    gw.wait_live("echo", 1).await;
    gw.wait_live("dead", 1).await;
    gw.wait_live("lost", 1).await;

    // No instance: UNAVAILABLE.
    let mut client = EchoClient::connect(gw.listener_addr("noinst")).await;
    let status = client.unary(Request::new(Msg::new("x"))).await.expect_err("no instance");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("no live instance"), "{status:?}");

    // Connect refused: UNAVAILABLE.
    let mut client = EchoClient::connect(gw.listener_addr("refused")).await;
    let status = client.unary(Request::new(Msg::new("x"))).await.expect_err("connect refused");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("connect failed"), "{status:?}");

    // The upstream connection is lost after it was made: UNAVAILABLE, from the gateway.
    let mut client = EchoClient::connect(gw.listener_addr("lost")).await;
    let status = client.unary(Request::new(Msg::new("x"))).await.expect_err("connection lost");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("switchyard"), "the gateway's status: {status:?}");

    // grpc-timeout (300 ms) shorter than the configured 5 s: DEADLINE_EXCEEDED from the gateway
    // (the test backend ignores deadlines and would answer after 2 s).
    let mut client = EchoClient::connect(gw.addr).await;
    let mut req = Request::new(Msg::new("sleep:2000"));
    req.set_timeout(Duration::from_millis(300));
    let status = client.unary(req).await.expect_err("deadline");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("switchyard"), "the gateway's status, not the backend's: {status:?}");
    // Without a deadline the same call succeeds, on the same connection.
    let res = client.unary(Request::new(Msg::new("sleep:50"))).await.expect("no deadline");
    assert_eq!(res.into_inner().backend, "b1");

    // On the wire: HTTP 200, application/grpc, grpc-status in the headers.
    let req = http::Request::post(format!("http://{}/test.Echo/Unary", gw.listener_addr("noinst")))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])))
        .unwrap();
    let res = h2c_client().request(req).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/grpc");
    assert_eq!(res.headers()["grpc-status"], "14");
}

#[tokio::test]
async fn grpc_over_tls_with_alpn_h2() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let site = ca.issue(dir.path(), "site", &["grpc.test"]);
    let backends = [GrpcBackend::start("b1").await, GrpcBackend::start("b2").await];
    let config = format!(
        r#"{FILE_DISCOVERY}[[listener]]
name = "grpcs"
protocol = "https"
listen = "127.0.0.1:0"
[[listener.tls]]
cert = {:?}
key = {:?}
[[listener.route]]
grpc_service = "test.Echo"
service = "echo"
"#,
        site.cert, site.key
    );
    let gw = TestGateway::start(&config).await;
    write_instances(
        &gw.instances_path(),
        &[
            ("echo", "e1", backends[0].addr, &[("protocol", "h2c")]),
            ("echo", "e2", backends[1].addr, &[("protocol", "h2c")]),
        ],
    );
    gw.wait_live("echo", 2).await;
    let stream = tls::connect(gw.addr, tls::client_config(&ca, &[b"h2"]), "grpc.test").await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut client = EchoClient::over(stream, "https", "grpc.test").await;
    for i in 0..10 {
        let res = client.unary(Request::new(Msg::new(&i.to_string()))).await.expect("unary over TLS");
        assert_eq!(res.into_inner().text, i.to_string());
    }
    assert_eq!((backends[0].calls(), backends[1].calls()), (5, 5));
    let status = client.unary(Request::new(Msg::new("fail"))).await.expect_err("backend error");
    assert_eq!(status.code(), Code::NotFound);
}
