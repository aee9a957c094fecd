//! `tls_passthrough` listeners end to end: two TLS backends with certificates for
//! different names (from a CA made in the test), a real rustls client that trusts
//! only that CA, and the gateway in between, which never terminates TLS.

use crate::support;

use support::FILE_DISCOVERY;

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::l4::{round_trip, tls_connect, TestCa, TlsNameServer};
use support::{admin_get, metric, write_instances, TestGateway};

struct Setup {
    gw: TestGateway,
    ca: TestCa,
    a: TlsNameServer,
    b: TlsNameServer,
}

/// Routes: `a.example.com` → svc-a (exact), `*.example.org` → svc-b (wildcard).
async fn setup(listener: &str) -> Setup {
    let ca = TestCa::new();
    let a = TlsNameServer::start(&ca, "a.example.com").await;
    let b = TlsNameServer::start(&ca, "b.example.org").await;
    let gw = TestGateway::start(&format!(
        r#"{FILE_DISCOVERY}[timeouts]
connect = "1s"
header_read = "2s"
shutdown_grace = "1s"
[[listener]]
name = "{listener}"
protocol = "tls_passthrough"
listen = "127.0.0.1:0"
[[listener.route]]
sni = "a.example.com"
service = "svc-a"
[[listener.route]]
sni = "*.example.org"
service = "svc-b"
"#
    ))
    .await;
    write_instances(&gw.instances_path(), &[("svc-a", "a1", a.addr, &[]), ("svc-b", "b1", b.addr, &[])]);
    gw.wait_live("svc-a", 1).await;
    gw.wait_live("svc-b", 1).await;
    Setup { gw, ca, a, b }
}

async fn metrics(gw: &TestGateway) -> String {
    admin_get(gw.admin, "/metrics").await.1
}

/// The gateway closes the connection: EOF or a reset, within five seconds.
async fn assert_closed(stream: &mut TcpStream) {
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await.expect("closed in time");
    assert!(matches!(n, Ok(0) | Err(_)), "expected the gateway to close, got {n:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_name_reaches_its_own_backend_with_an_end_to_end_handshake() {
    let s = setup("sni").await;
    let connector = s.ca.connector();

    // The handshake verifies the backend's own certificate for the name asked for:
    // only the backend holding that key can complete it.
    let (mut tls, greeting) = tls_connect(&connector, s.gw.addr, "a.example.com").await.expect("TLS to a");
    assert_eq!(greeting, "a.example.com");
    let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(round_trip(&mut tls, &big).await, big);
    tls.shutdown().await.unwrap();

    // `*.example.org` covers b.example.org; mixed case is the same name.
    let (mut tls, greeting) = tls_connect(&connector, s.gw.addr, "B.Example.Org").await.expect("TLS to b");
    assert_eq!(greeting, "b.example.org");
    assert_eq!(round_trip(&mut tls, b"over to b").await, b"over to b");

    assert_eq!(s.a.handshakes.load(Ordering::SeqCst), 1);
    assert_eq!(s.b.handshakes.load(Ordering::SeqCst), 1);
    let text = metrics(&s.gw).await;
    assert_eq!(metric(&text, r#"switchyard_sni_unknown_total{listener="sni"}"#), 0.0);
    assert!(metric(&text, r#"switchyard_tcp_bytes_total{listener="sni",direction="to_upstream"}"#) > 1_000_000.0);
    s.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_or_missing_name_is_closed_and_counted() {
    let s = setup("sni-unknown").await;
    let connector = s.ca.connector();
    for name in ["c.example.net", "example.org", "127.0.0.1"] {
        let result = tls_connect(&connector, s.gw.addr, name).await;
        assert!(result.is_err(), "{name}: the handshake must fail");
    }
    let text = metrics(&s.gw).await;
    // Two unrouted names and one hello without a name (an IP address sends no SNI).
    assert_eq!(metric(&text, r#"switchyard_sni_unknown_total{listener="sni-unknown"}"#), 3.0, "{text}");
    assert_eq!(s.a.handshakes.load(Ordering::SeqCst) + s.b.handshakes.load(Ordering::SeqCst), 0);
    s.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_is_closed_and_counted_and_the_gateway_keeps_serving() {
    let s = setup("sni-garbage").await;
    let mut plain = TcpStream::connect(s.gw.addr).await.unwrap();
    plain.write_all(b"GET / HTTP/1.1\r\nHost: a.example.com\r\n\r\n").await.unwrap();
    assert_closed(&mut plain).await;

    // A handshake record that lies about its contents.
    let mut lying = TcpStream::connect(s.gw.addr).await.unwrap();
    lying.write_all(b"\x16\x03\x01\x00\x08\x01\x00\x00\x04\x03\x03\xff\xff").await.unwrap();
    assert_closed(&mut lying).await;

    // A client that sends half a hello and stalls is cut off at header_read (2 s).
    let mut stalled = TcpStream::connect(s.gw.addr).await.unwrap();
    stalled.write_all(b"\x16\x03\x01\x02\x00\x01").await.unwrap();
    assert_closed(&mut stalled).await;

    let text = metrics(&s.gw).await;
    let bad = |reason: &str| {
        metric(
            &text,
            &format!(r#"switchyard_bad_requests_total{{listener="sni-garbage",reason="client_hello_{reason}"}}"#),
        )
    };
    assert_eq!((bad("not_tls"), bad("malformed"), bad("timeout")), (1.0, 1.0, 1.0), "{text}");
    assert_eq!(metric(&text, r#"switchyard_sni_unknown_total{listener="sni-garbage"}"#), 0.0);

    let (mut tls, greeting) = tls_connect(&s.ca.connector(), s.gw.addr, "a.example.com").await.expect("still serving");
    assert_eq!(greeting, "a.example.com");
    assert_eq!(round_trip(&mut tls, b"fine").await, b"fine");
    s.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_without_a_reachable_instance_closes_the_client() {
    let s = setup("sni-down").await;
    let (_reserved, dead) = support::refusing_addr();
    write_instances(&s.gw.instances_path(), &[("svc-a", "a1", dead, &[]), ("svc-b", "b1", s.b.addr, &[])]);
    support::wait_until("svc-a on its new instance", Duration::from_secs(10), async || {
        s.gw.table
            .load()
            .service("svc-a")
            .is_some_and(|svc| svc.live.first().is_some_and(|e| *e.addr == *dead.to_string()))
    })
    .await;
    assert!(tls_connect(&s.ca.connector(), s.gw.addr, "a.example.com").await.is_err());
    let text = metrics(&s.gw).await;
    assert_eq!(metric(&text, r#"switchyard_tcp_connect_failures_total{listener="sni-down"}"#), 1.0, "{text}");
    // The other route is unaffected.
    assert!(tls_connect(&s.ca.connector(), s.gw.addr, "b.example.org").await.is_ok());
    s.gw.stop().await;
}
