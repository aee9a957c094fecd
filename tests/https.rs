//! TLS termination on `https` listeners: SNI selection (exact, wildcard,
//! default), ALPN h2 and http/1.1 through to a backend, live certificate reload
//! that keeps established connections, a bad new file keeping the old
//! certificate, and clients offering only TLS 1.0/1.1 refused and counted.

use crate::support;

use support::FILE_DISCOVERY;

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::tls::{self, Ca, Pair};
use support::{admin_get, metric, write_instances, Backend, TestGateway};

/// An https listener named `name` with `certs` (the first is the default), routing everything to "app".
fn config(name: &str, certs: &[(&Pair, &[&str])]) -> String {
    let mut text = format!(
        r#"{FILE_DISCOVERY}[[listener]]
name = "{name}"
protocol = "https"
listen = "127.0.0.1:0"
[[listener.route]]
path_prefix = "/"
service = "app"
"#
    );
    for (pair, names) in certs {
        text.push_str(&format!("[[listener.tls]]\ncert = {:?}\nkey = {:?}\n", pair.cert, pair.key));
        if !names.is_empty() {
            text.push_str(&format!("server_names = {names:?}\n"));
        }
    }
    text
}

async fn with_backend(gw: &TestGateway) -> Backend {
    let backend = Backend::start("app-1").await;
    write_instances(&gw.instances_path(), &[("app", "a1", backend.addr, &[])]);
    gw.wait_live("app", 1).await;
    backend
}

async fn presented(addr: std::net::SocketAddr, sni: Option<&str>) -> rustls::pki_types::CertificateDer<'static> {
    let config = tls::inspecting_config(sni.is_some(), &[&rustls::version::TLS13]);
    let stream = tls::connect(addr, config, sni.unwrap_or("ignored.invalid")).await.expect("handshake");
    tls::presented(&stream)
}

#[tokio::test]
async fn sni_selects_exact_wildcard_and_default() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let default = ca.issue(dir.path(), "default", &["default.test"]);
    let exact = ca.issue(dir.path(), "exact", &["a.example.com", "other.example.com"]);
    let wild = ca.issue(dir.path(), "wild", &["*.wild.test"]);
    // `exact` is limited to one of its names by server_names; `wild` uses its certificate's names.
    let gw = TestGateway::start(&config("sni", &[(&default, &[]), (&exact, &["a.example.com"]), (&wild, &[])])).await;

    assert_eq!(presented(gw.addr, Some("a.example.com")).await, exact.der);
    assert_eq!(presented(gw.addr, Some("x.wild.test")).await, wild.der);
    assert_eq!(presented(gw.addr, Some("deep.x.wild.test")).await, default.der, "a wildcard covers one label");
    assert_eq!(presented(gw.addr, Some("other.example.com")).await, default.der, "server_names limits the names");
    assert_eq!(presented(gw.addr, Some("unknown.test")).await, default.der);
    assert_eq!(presented(gw.addr, None).await, default.der);

    // And with real verification against the CA, a request goes through.
    let _backend = with_backend(&gw).await;
    let stream = tls::connect(gw.addr, tls::client_config(&ca, &[b"http/1.1"]), "x.wild.test").await.unwrap();
    assert_eq!(tls::request_over(stream, "x.wild.test", "/").await, (200, "app-1".to_string()));
}

#[tokio::test]
async fn alpn_h2_and_http1_reach_the_backend() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let site = ca.issue(dir.path(), "site", &["site.test"]);
    let gw = TestGateway::start(&config("alpn", &[(&site, &[])])).await;
    let _backend = with_backend(&gw).await;

    for alpn in [&b"h2"[..], b"http/1.1"] {
        let stream = tls::connect(gw.addr, tls::client_config(&ca, &[alpn]), "site.test").await.unwrap();
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(alpn));
        let (status, body) = tls::request_over(stream, "site.test", "/headers").await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("x-forwarded-proto: https"), "{body}");
        assert!(body.contains("version: HTTP/1.1"), "the backend speaks HTTP/1.1 whatever the client does: {body}");
    }
    // TLS 1.2 works too (only 1.0/1.1 are refused).
    let v12 = tls::inspecting_config(true, &[&rustls::version::TLS12]);
    let stream = tls::connect(gw.addr, v12, "site.test").await.unwrap();
    assert_eq!(stream.get_ref().1.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_2));
}

/// Polls new handshakes until the server presents `want`.
async fn wait_for_cert(addr: std::net::SocketAddr, sni: &str, want: &rustls::pki_types::CertificateDer<'static>) {
    support::wait_until("the new certificate served", Duration::from_secs(10), async || {
        presented(addr, Some(sni)).await == *want
    })
    .await;
}

async fn reloads(gw: &TestGateway, listener: &str, result: &str) -> f64 {
    let (_, text) = admin_get(gw.admin, "/metrics").await;
    metric(&text, &format!("switchyard_tls_certificate_reloads_total{{listener=\"{listener}\",result=\"{result}\"}}"))
}

#[tokio::test]
async fn certificate_reload_keeps_connections_and_survives_a_bad_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let first = ca.issue(dir.path(), "site", &["site.test"]);
    let gw = TestGateway::start(&config("reload", &[(&first, &[])])).await;
    let _backend = with_backend(&gw).await;

    // An established HTTP/1.1 keep-alive connection made with the first certificate.
    let stream = tls::connect(gw.addr, tls::client_config(&ca, &[b"http/1.1"]), "site.test").await.unwrap();
    assert_eq!(tls::presented(&stream), first.der);
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let get = |send: &mut hyper::client::conn::http1::SendRequest<Full<bytes::Bytes>>| {
        let req = http::Request::get("/").header("host", "site.test").body(Full::default()).unwrap();
        let res = send.send_request(req);
        async move {
            let res = res.await.expect("request on the established connection");
            (res.status().as_u16(), res.into_body().collect().await.unwrap().to_bytes())
        }
    };
    assert_eq!(get(&mut send).await.0, 200);

    // Replace the files on disk (same paths, new key and certificate).
    let second = ca.issue(dir.path(), "site", &["site.test"]);
    assert_ne!(first.der, second.der);
    wait_for_cert(gw.addr, "site.test", &second.der).await;
    assert!(reloads(&gw, "reload", "ok").await >= 1.0);
    let (status, body) = get(&mut send).await;
    assert_eq!((status, &body[..]), (200, &b"app-1"[..]), "the established connection still works");

    // A bad file: the reload fails, is counted, and the current certificate stays.
    // (Counted from here: a reload may also have failed while cert and key were half replaced.)
    let errors_before = reloads(&gw, "reload", "error").await;
    tls::write_atomic(&second.cert, b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n");
    support::wait_until("the bad certificate file counted", Duration::from_secs(10), async || {
        reloads(&gw, "reload", "error").await > errors_before
    })
    .await;
    assert_eq!(presented(gw.addr, Some("site.test")).await, second.der);
    let stream = tls::connect(gw.addr, tls::client_config(&ca, &[b"h2"]), "site.test").await.unwrap();
    assert_eq!(tls::request_over(stream, "site.test", "/").await, (200, "app-1".to_string()));
    assert_eq!(get(&mut send).await.0, 200);

    // Fixing the file is picked up again.
    let third = ca.issue(dir.path(), "site", &["site.test"]);
    wait_for_cert(gw.addr, "site.test", &third.der).await;
    gw.stop().await;
}

/// A ClientHello as a TLS 1.0/1.1-only client sends it: no `supported_versions`;
/// `sigalgs` adds a `signature_algorithms` extension (which pre-1.2 clients omit).
fn old_client_hello(minor: u8, sigalgs: bool) -> Vec<u8> {
    let mut body = vec![0x03, minor]; // client_version: 3.1 = TLS 1.0, 3.2 = TLS 1.1
    body.extend_from_slice(&[7u8; 32]); // random
    body.push(0); // session id
    body.extend_from_slice(&[0x00, 0x04, 0xc0, 0x13, 0x00, 0x2f]); // ECDHE-RSA-AES128-SHA, AES128-SHA
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    if sigalgs {
        body.extend_from_slice(&[0x00, 0x0a, 0x00, 0x0d, 0x00, 0x06, 0x00, 0x04, 0x04, 0x03, 0x04, 0x01]);
    }
    let mut handshake = vec![0x01, 0x00, 0x00, body.len() as u8];
    handshake.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01, 0x00, handshake.len() as u8];
    record.extend_from_slice(&handshake);
    record
}

#[tokio::test]
async fn tls10_and_tls11_clients_are_refused_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let site = ca.issue(dir.path(), "site", &["site.test"]);
    let gw = TestGateway::start(&config("oldtls", &[(&site, &[])])).await;
    let series = "switchyard_tls_handshake_errors_total{listener=\"oldtls\",reason=\"protocol_version\"}";

    // (TLS 1.0 plain: refused with handshake_failure, as rustls needs signature_algorithms
    // first; TLS 1.1 with it: refused with protocol_version.)
    for (attempt, (hello, alert)) in
        [(old_client_hello(1, false), 40u8), (old_client_hello(2, true), 70)].into_iter().enumerate()
    {
        let attempt = attempt + 1;
        let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
        tcp.write_all(&hello).await.unwrap();
        let mut reply = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut reply))
            .await
            .expect("the gateway closes")
            .ok();
        // A fatal alert record (level 2), then the connection closes.
        assert_eq!(reply.first(), Some(&0x15), "an alert record, got {reply:?}");
        assert_eq!(reply.get(5..7), Some(&[2u8, alert][..]), "alert {alert}, got {reply:?}");
        support::wait_until(&format!("handshake failure counted: {series}"), Duration::from_secs(5), async || {
            metric(&admin_get(gw.admin, "/metrics").await.1, series) >= attempt as f64
        })
        .await;
    }
    // The listener still serves modern clients.
    let _backend = with_backend(&gw).await;
    let stream = tls::connect(gw.addr, tls::client_config(&ca, &[b"h2"]), "site.test").await.unwrap();
    assert_eq!(tls::request_over(stream, "site.test", "/").await, (200, "app-1".to_string()));
}

#[tokio::test]
async fn missing_certificate_file_stops_start_up() {
    let text = config("missing", &[]).replace(
        "path_prefix = \"/\"\nservice = \"app\"\n",
        "path_prefix = \"/\"\nservice = \"app\"\n[[listener.tls]]\ncert = \"/nonexistent/x.pem\"\nkey = \"/nonexistent/x.key\"\n",
    );
    let config = switchyard::config::Config::parse(&text.replace("{instances}", "/tmp/none.toml")).unwrap();
    let err = switchyard::server::Gateway::bind(config).await.err().expect("bind refuses a missing certificate");
    let text = err.to_string();
    assert!(text.contains("listener[0].tls") && text.contains("/nonexistent/x.pem"), "{text}");
}

#[test]
fn l7_example_configs_are_valid() {
    for name in ["grpc", "websocket", "https", "upstream-tls"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("config/{name}.toml"));
        if let Err(e) = switchyard::config::Config::load(&path) {
            panic!("config/{name}.toml: {e}");
        }
    }
}
