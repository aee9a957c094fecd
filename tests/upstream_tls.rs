//! TLS from the gateway to upstreams, against a rustls + hyper backend with its
//! own CA: HTTP/1.1 and h2 (chosen by instance metadata), the configured server
//! name, a client certificate the backend requires, and verification failures
//! (unknown CA, wrong name, no client certificate) answered as 502.

use crate::support;

use std::path::Path;

use support::tls::{Ca, TlsBackend};
use support::{get, write_instances, TestGateway};

/// Listener "web": `/a/...` → service "secure" (with `upstream_tls`), `/b/...` → "other" (`other_tls`).
fn config(secure_tls: &str, other_tls: &str) -> String {
    let mut text = String::from(
        r#"[admin]
listen = "127.0.0.1:0"
[discovery]
source = "file"
path = "{instances}"
poll_interval = "20ms"
[timeouts]
connect = "1s"
request = "5s"
[[listener]]
name = "web"
protocol = "http"
listen = "127.0.0.1:0"
[[listener.route]]
path_prefix = "/a/"
strip_prefix = true
service = "secure"
[[listener.route]]
path_prefix = "/b/"
strip_prefix = true
service = "other"
"#,
    );
    for (name, tls) in [("secure", secure_tls), ("other", other_tls)] {
        if !tls.is_empty() {
            text.push_str(&format!("[[service]]\nname = \"{name}\"\nupstream_tls = {{ {tls} }}\n"));
        }
    }
    text
}

fn path(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

#[tokio::test]
async fn http1_and_h2_over_tls_to_a_backend_with_its_own_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("backend CA");
    let cert = ca.issue(dir.path(), "backend", &["backend.internal"]);
    let backend = TlsBackend::start("tls-backend", &cert, None).await;
    let ca_file = ca.write(dir.path(), "ca");
    let secure = format!("ca = {}, server_name = \"backend.internal\"", path(&ca_file));
    // "other" trusts the right CA but expects another name.
    let other = format!("ca = {}, server_name = \"elsewhere.internal\"", path(&ca_file));
    let gw = TestGateway::start(&config(&secure, &other)).await;
    let client = support::client();

    // No metadata: the service's upstream_tls makes it HTTPS with HTTP/1.1.
    write_instances(&gw.instances_path(), &[("secure", "s1", backend.addr, &[]), ("other", "o1", backend.addr, &[])]);
    gw.wait_live("secure", 1).await;
    gw.wait_live("other", 1).await;
    let (status, body) = get(&client, &gw.url("/a/headers")).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("version: HTTP/1.1"), "{body}");
    assert_eq!(get(&client, &gw.url("/a/")).await, (200, "tls-backend".to_string()));
    let (status, _) = get(&client, &gw.url("/b/")).await;
    assert_eq!(status, 502, "a certificate for another name is refused");

    // Metadata protocol = h2: HTTP/2 over TLS (ALPN h2).
    write_instances(&gw.instances_path(), &[("secure", "s2", backend.addr, &[("protocol", "h2")])]);
    support::wait_until("instance s2 live", std::time::Duration::from_secs(10), async || {
        gw.table.load().service("secure").is_some_and(|s| s.live.first().is_some_and(|e| &*e.id == "s2"))
    })
    .await;
    let (status, body) = get(&client, &gw.url("/a/headers")).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("version: HTTP/2.0"), "{body}");
    // Over HTTP/2 the target is `:authority`; a disagreeing `host` would make strict servers refuse.
    assert!(!body.lines().any(|l| l.starts_with("host: ")), "{body}");
    assert!(body.contains("x-forwarded-host: "), "{body}");
}

#[tokio::test]
async fn metadata_https_without_service_ca_uses_system_trust() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("private CA");
    let cert = ca.issue(dir.path(), "backend", &["127.0.0.1"]);
    let backend = TlsBackend::start("tls-backend", &cert, None).await;
    let gw = TestGateway::start(&config("", "")).await;
    let client = support::client();
    // protocol = https selects TLS; the system bundle does not know this private CA.
    write_instances(&gw.instances_path(), &[("secure", "s1", backend.addr, &[("protocol", "https")])]);
    gw.wait_live("secure", 1).await;
    assert_eq!(get(&client, &gw.url("/a/")).await.0, 502);
    // A failed TLS handshake counts as a connect failure...
    assert_eq!(upstream_errors(&gw, "connect").await, 1.0);
    // Plain HTTP to a TLS port fails too; the gateway does not guess.
    write_instances(&gw.instances_path(), &[("secure", "s2", backend.addr, &[])]);
    support::wait_until("instance s2 live", std::time::Duration::from_secs(10), async || {
        gw.table.load().service("secure").is_some_and(|s| s.live.first().is_some_and(|e| &*e.id == "s2"))
    })
    .await;
    assert_eq!(get(&client, &gw.url("/a/")).await.0, 502);
    // ...while plain text to a TLS port connects and then fails.
    assert_eq!(upstream_errors(&gw, "connect").await, 1.0);
    assert_eq!(upstream_errors(&gw, "protocol").await, 1.0);
}

/// `switchyard_upstream_errors_total` of service "secure" for `kind`, labels in any order.
async fn upstream_errors(gw: &TestGateway, kind: &str) -> f64 {
    let (_, text) = support::admin_get(gw.admin, "/metrics").await;
    text.lines()
        .filter(|l| l.starts_with("switchyard_upstream_errors_total{"))
        .filter(|l| l.contains("service=\"secure\"") && l.contains(&format!("kind=\"{kind}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn client_certificate_when_the_backend_requires_one() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("backend CA");
    let client_ca = Ca::new("client CA");
    let cert = ca.issue(dir.path(), "backend", &["backend.internal"]);
    let gateway_cert = client_ca.issue(dir.path(), "gateway", &["gateway.internal"]);
    let backend = TlsBackend::start("mtls-backend", &cert, Some(&client_ca)).await;
    let ca_file = ca.write(dir.path(), "ca");
    let with_cert = format!(
        "ca = {}, server_name = \"backend.internal\", cert = {}, key = {}",
        path(&ca_file),
        path(&gateway_cert.cert),
        path(&gateway_cert.key)
    );
    let without = format!("ca = {}, server_name = \"backend.internal\"", path(&ca_file));
    let gw = TestGateway::start(&config(&with_cert, &without)).await;
    write_instances(
        &gw.instances_path(),
        &[("secure", "s1", backend.addr, &[("protocol", "h2")]), ("other", "o1", backend.addr, &[])],
    );
    gw.wait_live("secure", 1).await;
    gw.wait_live("other", 1).await;
    let client = support::client();
    assert_eq!(get(&client, &gw.url("/a/")).await, (200, "mtls-backend".to_string()));
    assert_eq!(get(&client, &gw.url("/b/")).await.0, 502, "no client certificate, no connection");
}

#[tokio::test]
async fn missing_ca_file_stops_start_up() {
    let text = config("ca = \"/nonexistent/ca.pem\"", "").replace("{instances}", "/tmp/none.toml");
    let config = switchyard::config::Config::parse(&text).unwrap();
    let err = switchyard::server::Gateway::bind(config).await.err().expect("bind refuses a missing CA");
    let text = err.to_string();
    assert!(text.contains("service[0].upstream_tls") && text.contains("/nonexistent/ca.pem"), "{text}");
}

/// The system trust store is really consulted: the same binary and backend
/// answer 502 with the default bundle (which does not know the private CA) and
/// 200 when `SSL_CERT_FILE` names a bundle holding it.
#[tokio::test]
async fn system_trust_store_comes_from_ssl_cert_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("private system CA");
    let cert = ca.issue(dir.path(), "backend", &["127.0.0.1"]);
    let backend = TlsBackend::start("system-trusted", &cert, None).await;
    let bundle = dir.path().join("bundle.pem");
    std::fs::write(&bundle, &ca.pem).unwrap();
    let instances = dir.path().join("instances.toml");
    write_instances(&instances, &[("secure", "s1", backend.addr, &[("protocol", "https")])]);
    let client = support::client();
    for (env, expected) in [(None, 502), (Some(bundle.to_str().unwrap()), 200)] {
        let ports = [support::reserve_port(), support::reserve_port()];
        let text = config("", "")
            .replace("{instances}", instances.to_str().unwrap())
            .replace("[admin]\nlisten = \"127.0.0.1:0\"", &format!("[admin]\nlisten = \"{}\"", ports[1].addr()))
            .replace(
                "protocol = \"http\"\nlisten = \"127.0.0.1:0\"",
                &format!("protocol = \"http\"\nlisten = \"{}\"", ports[0].addr()),
            );
        let vars: Vec<(&str, &str)> = env.map(|b| ("SSL_CERT_FILE", b)).into_iter().collect();
        let _gw = support::GatewayProcess::start_with_env(&text, ports[1].addr(), &vars).await;
        let url = format!("http://{}/a/", ports[0].addr());
        support::wait_until("the instance is routed", std::time::Duration::from_secs(10), async || {
            get(&client, &url).await.0 != 503
        })
        .await;
        assert_eq!(get(&client, &url).await.0, expected, "SSL_CERT_FILE = {env:?}");
    }
}
