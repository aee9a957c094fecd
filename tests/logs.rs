//! Logs: the access log (one JSON object, or one `combined` line, per HTTP
//! request) with the request id that is generated when absent, passed through
//! otherwise, sent upstream and returned; `traceparent` passed through; and the
//! process log without ANSI codes when stderr is not a terminal, or as JSON.

use crate::support;

use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

use support::{client, http_config, reserve_port, wait_until, write_instances, Backend, HttpClient, TestGateway};

/// GET with extra headers → (status, x-request-id of the answer, body).
async fn get_with(c: &HttpClient, url: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
    let mut req = http::Request::get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = c.request(req.body(Full::<Bytes>::default()).unwrap()).await.unwrap();
    let status = res.status().as_u16();
    let id = res.headers().get("x-request-id").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    let body = String::from_utf8_lossy(&res.into_body().collect().await.unwrap().to_bytes()).into_owned();
    (status, id, body)
}

/// Waits until the file has `n` lines; returns them.
async fn lines(path: &Path, n: usize) -> Vec<String> {
    let mut got = Vec::new();
    wait_until(&format!("{n} lines in {}", path.display()), Duration::from_secs(10), async || {
        got = std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_string).collect();
        got.len() >= n
    })
    .await;
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_lines_carry_the_request_id() {
    let backend = Backend::start("b").await;
    let gw = TestGateway::start(&http_config(
        r#"access_log = { path = "{dir}/access.log" }
[[listener.route]]
path_prefix = "/s/"
strip_prefix = true
service = "s"
"#,
    ))
    .await;
    write_instances(&gw.instances_path(), &[("s", "1", backend.addr, &[])]);
    gw.wait_live("s", 1).await;
    let c = client();

    // A request id and a trace context from the client: passed through, both ways.
    let trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let (status, id, body) =
        get_with(&c, &gw.url("/s/headers"), &[("x-request-id", "client-id-1"), ("traceparent", trace)]).await;
    assert_eq!((status, id.as_str()), (200, "client-id-1"));
    assert!(body.contains("x-request-id: client-id-1\n"), "{body}");
    assert!(body.contains(&format!("traceparent: {trace}\n")), "{body}");

    // None from the client: one is made, sent upstream, returned, and differs per request.
    let (status, made, body) = get_with(&c, &gw.url("/s/headers?q=1"), &[("user-agent", "logs-test")]).await;
    assert_eq!(status, 200);
    assert!(!made.is_empty());
    assert!(body.contains(&format!("x-request-id: {made}\n")), "the upstream sees the same id: {body}");
    let (_, other, _) = get_with(&c, &gw.url("/s/"), &[]).await;
    assert_ne!(made, other);

    // No route: the gateway's own answer is logged and carries an id too.
    let (status, unrouted, _) = get_with(&c, &gw.url("/elsewhere"), &[]).await;
    assert_eq!(status, 404);
    assert!(!unrouted.is_empty());

    let path = gw.dir.path().join("access.log");
    let lines = lines(&path, 4).await;
    let entries: Vec<serde_json::Value> =
        lines.iter().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}"))).collect();
    let first = &entries[0];
    assert_eq!(first["listener"], "web");
    assert_eq!(first["client"], "127.0.0.1");
    assert_eq!(first["method"], "GET");
    assert_eq!(first["host"], "127.0.0.1", "the host without its port, like nginx's $host");
    assert_eq!(first["path"], "/s/headers");
    assert_eq!(first["status"], 200);
    assert_eq!(first["service"], "s");
    assert_eq!(first["upstream"], backend.addr.to_string());
    assert_eq!(first["request_id"], "client-id-1");
    assert!(first["duration_ms"].as_f64().unwrap() >= 0.0);
    assert!(first["bytes"].as_u64().unwrap() > 0);
    assert!(first["time"].as_str().unwrap().ends_with('Z'));
    assert_eq!(entries[1]["path"], "/s/headers?q=1");
    assert_eq!(entries[1]["request_id"], made);
    assert_eq!(entries[1]["user_agent"], "logs-test");
    assert_eq!(entries[3]["status"], 404);
    assert_eq!(entries[3]["service"], "");
    assert_eq!(entries[3]["upstream"], "");
    assert_eq!(entries[3]["request_id"], unrouted);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn combined_format_escapes_client_input() {
    let backend = Backend::start("b").await;
    let gw = TestGateway::start(&http_config(
        r#"access_log = { path = "{dir}/access.log", format = "combined" }
[[listener.route]]
service = "s"
"#,
    ))
    .await;
    write_instances(&gw.instances_path(), &[("s", "1", backend.addr, &[])]);
    gw.wait_live("s", 1).await;
    let (status, id, _) = get_with(&client(), &gw.url("/a?b"), &[("user-agent", "quote\" here")]).await;
    assert_eq!(status, 200);
    let line = &lines(&gw.dir.path().join("access.log"), 1).await[0];
    assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
    assert!(line.contains("] \"GET /a?b HTTP/1.1\" 200 1 \"-\" \"quote\\\" here\" rt="), "{line}");
    assert!(line.ends_with(&format!("request_id=\"{id}\"")), "{line}");
    gw.stop().await;
}

/// Runs the binary with stderr on a pipe (not a terminal) until it serves, makes one
/// request, stops it, and returns what it wrote on stderr.
async fn process_log(extra_args: &[&str]) -> String {
    let backend = Backend::start("b").await;
    let (admin, web) = (reserve_port(), reserve_port());
    let dir = tempfile::tempdir().unwrap();
    write_instances(&dir.path().join("instances.toml"), &[("s", "1", backend.addr, &[])]);
    let config = dir.path().join("switchyard.toml");
    std::fs::write(
        &config,
        format!(
            "[admin]\nlisten = \"{}\"\n[discovery]\npath = \"{}/instances.toml\"\n[[listener]]\nname = \"web\"\nprotocol = \"http\"\nlisten = \"{}\"\n[[listener.route]]\nservice = \"s\"\n",
            admin.addr(),
            dir.path().display(),
            web.addr()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(extra_args)
        .arg("run")
        .env("SWITCHYARD_CONFIG", &config)
        .env_remove("RUST_LOG")
        .env_remove("SWITCHYARD_LOG_FORMAT")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let c = client();
    let url = format!("http://{}/", web.addr());
    let addr: SocketAddr = web.addr();
    wait_until("the gateway answers", Duration::from_secs(10), async || {
        tokio::net::TcpStream::connect(addr).await.is_ok() && support::get(&c, &url).await.0 == 200
    })
    .await;
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(child.wait().unwrap().success());
    stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_ansi_codes_when_stderr_is_not_a_terminal() {
    let log = process_log(&[]).await;
    assert!(log.contains("switchyard serving"), "{log}");
    assert!(log.contains("SIGTERM received"), "{log}");
    assert!(!log.contains('\x1b'), "ANSI escape in a piped log:\n{log:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_format_json_writes_one_object_per_line() {
    let log = process_log(&["--log-format", "json"]).await;
    let objects: Vec<serde_json::Value> =
        log.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}"))).collect();
    assert!(objects.len() >= 3, "{log}");
    for o in &objects {
        assert!(o["time"].is_string() && o["level"].is_string() && o["target"].is_string(), "{o}");
    }
    let listening = objects.iter().find(|o| o["message"] == "listening").expect("the listening line");
    assert_eq!(listening["listener"], "web");
    assert_eq!(listening["level"], "INFO");
    assert!(objects.iter().any(|o| o["message"] == "switchyard serving"));
    assert!(!log.contains('\x1b'));
}
