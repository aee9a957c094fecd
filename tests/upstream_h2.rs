//! The h2c upstream exchange (`src/upstream/conn/h2.rs`: h2's client driven from
//! the request's task): bodies held for a retry and bodies streamed both go out
//! whole under the instance's flow control and come back whole; a stream the
//! instance refuses (`REFUSED_STREAM`: it did no work) goes to another instance; a
//! client body that fails on its way resets the upstream stream and is the
//! client's fault (400), not the instance's.

use crate::support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use support::{client, h2c_client, http_config, write_instances, Backend, TestGateway};

async fn gateway_to(instances: &[(&str, SocketAddr)]) -> TestGateway {
    let gw = TestGateway::start(&http_config("[[listener.route]]\nservice = \"h2\"\n")).await;
    let lines: Vec<support::InstanceLine<'_>> =
        instances.iter().map(|(id, addr)| ("h2", *id, *addr, &[("protocol", "h2c")][..])).collect();
    write_instances(&gw.instances_path(), &lines);
    gw.wait_live("h2", instances.len()).await;
    gw
}

/// Bytes that tell a shifted or dropped chunk from the right one.
fn pattern(len: usize) -> Bytes {
    (0..len).map(|i| (i % 251) as u8).collect::<Vec<u8>>().into()
}

async fn echo(client: &support::HttpClient, method: http::Method, url: &str, body: Bytes) -> (u16, Bytes) {
    let req = http::Request::builder().method(method).uri(url).body(Full::new(body)).unwrap();
    let res = tokio::time::timeout(std::time::Duration::from_secs(20), client.request(req))
        .await
        .expect("request timed out")
        .expect("request failed");
    let status = res.status().as_u16();
    (status, res.into_body().collect().await.expect("response body").to_bytes())
}

#[tokio::test]
async fn held_and_streamed_bodies_go_out_and_come_back_whole() {
    let b = Backend::start("b").await;
    let gw = gateway_to(&[("b1", b.addr)]).await;
    let url = gw.url("/echo");
    for client in [client(), h2c_client()] {
        // A PUT of 40 KiB is held for a retry (under the 64 KiB retry buffer): sent
        // with one `send_data`, larger than the instance's first 64 KiB window.
        let held = pattern(40 * 1024);
        assert_eq!(echo(&client, http::Method::PUT, &url, held.clone()).await, (200, held));
        // A POST of 3 MiB is streamed: piped frame by frame as the windows open,
        // past both the stream's and the connection's.
        let streamed = pattern(3 * 1024 * 1024 + 7);
        assert_eq!(echo(&client, http::Method::POST, &url, streamed.clone()).await, (200, streamed));
    }
    // And the exchanges shared one connection to the instance, which stays usable.
    let (status, body) = support::get(&client(), &gw.url("/")).await;
    assert_eq!((status, body.as_str()), (200, "b"));
}

/// An h2c server on a port of its own, each stream given to `serve` in a task.
async fn h2_instance<F, Fut>(serve: F) -> SocketAddr
where
    F: Fn(http::Request<h2::RecvStream>, h2::server::SendResponse<Bytes>) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let serve = serve.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(tcp).await else { return };
                while let Some(Ok((req, respond))) = conn.accept().await {
                    tokio::spawn(serve(req, respond));
                }
            });
        }
    });
    addr
}

/// An h2c server that refuses every stream it is sent (`REFUSED_STREAM`), counting them.
async fn refusing_instance() -> (SocketAddr, Arc<AtomicUsize>) {
    let refused = Arc::new(AtomicUsize::new(0));
    let count = refused.clone();
    let addr = h2_instance(move |_req, mut respond| {
        count.fetch_add(1, Ordering::Relaxed);
        async move { respond.send_reset(h2::Reason::REFUSED_STREAM) }
    })
    .await;
    (addr, refused)
}

#[tokio::test]
async fn a_stream_the_instance_refuses_goes_to_another_instance() {
    let (refuser, refused) = refusing_instance().await;
    let good = Backend::start("good").await;
    let gw = gateway_to(&[("r", refuser), ("g", good.addr)]).await;
    // Round-robin sends about half of them to the refuser first; every one is
    // answered by the other instance, with its body (held for the retry) whole.
    for i in 0..12 {
        let (status, body) = support::get(&client(), &gw.url("/")).await;
        assert_eq!((status, body.as_str()), (200, "good"), "GET {i}");
        let req = http::Request::put(gw.url("/echo")).body(Full::new(Bytes::from_static(b"once"))).unwrap();
        let (status, body) = support::request(&client(), req).await;
        assert_eq!((status, body.as_str()), (200, "once"), "PUT {i}");
    }
    // Tried until its refusals ejected it (outlier detection: consecutive resets).
    assert!(refused.load(Ordering::Relaxed) >= 1, "the refuser was never tried");
}

/// An h2c server that answers a request once its body has ended, with the number
/// of bytes that came; counts the streams reset before that.
async fn whole_body_instance() -> (SocketAddr, Arc<AtomicUsize>) {
    let resets = Arc::new(AtomicUsize::new(0));
    let count = resets.clone();
    let addr = h2_instance(move |req, mut respond| {
        let count = count.clone();
        async move {
            let mut body = req.into_body();
            let mut got = 0;
            while let Some(data) = body.data().await {
                let Ok(data) = data else {
                    count.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                got += data.len();
                let _ = body.flow_control().release_capacity(data.len());
            }
            let Ok(mut send) = respond.send_response(http::Response::new(()), false) else { return };
            let _ = send.send_data(Bytes::from(format!("got {got}")), true);
        }
    })
    .await;
    (addr, resets)
}

#[tokio::test]
async fn a_client_body_that_fails_resets_the_upstream_stream_and_is_the_clients_fault() {
    let (addr, resets) = whole_body_instance().await;
    let gw = gateway_to(&[("w", addr)]).await;
    // A whole chunked body first: streamed (a POST is not kept for a retry), answered.
    let req = http::Request::post(gw.url("/")).body(Full::new(pattern(100_000))).unwrap();
    let (status, body) = support::request(&client(), req).await;
    assert_eq!((status, body.as_str()), (200, "got 100000"));
    // Then one whose second chunk size is not hex: the client's body fails mid-way.
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nZZ\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), tcp.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("malformed request body"), "{answer}");
    // The instance saw its stream reset, not a request that ended.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while resets.load(Ordering::Relaxed) == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(resets.load(Ordering::Relaxed), 1);
    // And the instance is not blamed: it still serves.
    let req = http::Request::post(gw.url("/")).body(Full::new(Bytes::from_static(b"abc"))).unwrap();
    assert_eq!(support::request(&client(), req).await, (200, "got 3".to_string()));
}
