//! WebSocket through the gateway with a real client and echo server
//! (tokio-tungstenite): messages both ways after the 101, the upgraded-connection
//! gauge up while open and back to 0 after; and an `Upgrade` request the backend
//! declines is answered as a plain response.

use crate::support;

use support::FILE_DISCOVERY;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

use support::{admin_get, metric, request, write_instances, Backend, TestGateway};

/// A WebSocket server that greets, then echoes every data message.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                if ws.send(Message::text("welcome")).await.is_err() {
                    return;
                }
                while let Some(Ok(msg)) = ws.next().await {
                    if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn config(listener: &str) -> String {
    format!(
        r#"{FILE_DISCOVERY}[[listener]]
name = "{listener}"
protocol = "http"
listen = "127.0.0.1:0"
[[listener.route]]
path_prefix = "/"
service = "ws"
"#
    )
}

async fn gauge(gw: &TestGateway, listener: &str) -> f64 {
    let (_, text) = admin_get(gw.admin, "/metrics").await;
    metric(&text, &format!("switchyard_upgraded_connections_active{{listener=\"{listener}\"}}"))
}

async fn next_text(
    ws: &mut (impl StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin),
) -> Message {
    tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("a message in time")
        .expect("open")
        .expect("valid")
}

#[tokio::test]
async fn websocket_messages_flow_both_ways_and_are_counted() {
    let server = echo_server().await;
    let gw = TestGateway::start(&config("wsgw")).await;
    write_instances(&gw.instances_path(), &[("ws", "w1", server, &[])]);
    gw.wait_live("ws", 1).await;
    assert_eq!(gauge(&gw, "wsgw").await, 0.0);

    let mut sockets = Vec::new();
    for i in 0..2 {
        let tcp = TcpStream::connect(gw.addr).await.unwrap();
        let (mut ws, res) = tokio_tungstenite::client_async(format!("ws://{}/ws/chat", gw.addr), tcp)
            .await
            .expect("handshake through the gateway");
        assert_eq!(res.status(), 101);
        // Server → client, unprompted.
        assert_eq!(next_text(&mut ws).await, Message::text("welcome"));
        // Client → server → client, text and binary.
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        assert_eq!(next_text(&mut ws).await, Message::text(format!("hello {i}")));
        let blob: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
        ws.send(Message::binary(blob.clone())).await.unwrap();
        assert_eq!(next_text(&mut ws).await, Message::binary(blob));
        sockets.push(ws);
        // The relay counted itself before it carried the first byte.
        assert_eq!(gauge(&gw, "wsgw").await, (i + 1) as f64);
    }

    for mut ws in sockets {
        ws.close(None).await.unwrap();
        // Drain until the server's close arrives and the stream ends.
        while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {}
    }
    support::wait_until("the upgraded-connections gauge back to 0", Duration::from_secs(10), async || {
        gauge(&gw, "wsgw").await == 0.0
    })
    .await;
    gw.stop().await;
}

#[tokio::test]
async fn declined_upgrade_is_a_plain_response() {
    let backend = Backend::start("plain").await;
    let gw = TestGateway::start(&config("wsplain")).await;
    write_instances(&gw.instances_path(), &[("ws", "p1", backend.addr, &[])]);
    gw.wait_live("ws", 1).await;
    let req = http::Request::get(gw.url("/ws/x"))
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .body(Full::default())
        .unwrap();
    assert_eq!(request(&support::client(), req).await, (200, "plain".to_string()));
    // What the backend saw: the upgrade headers, forwarded despite hop-by-hop stripping.
    let req = http::Request::get(gw.url("/headers"))
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .body(Full::default())
        .unwrap();
    let (_, body) = request(&support::client(), req).await;
    assert!(body.contains("upgrade: websocket"), "{body}");
    assert_eq!(gauge(&gw, "wsplain").await, 0.0);
}
