//! Validation as users see it: a table of bad configs and the exact messages.

use super::*;

const MINIMAL: &str = r#"
[[listener]]
name = "web"
protocol = "http"
listen = "127.0.0.1:8080"
"#;

fn errors(text: &str) -> Vec<String> {
    match Config::parse(text) {
        Ok(_) => vec![],
        Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
    }
}

#[test]
fn minimal_config_gets_defaults() {
    // The values the README documents ("Defaults: ..."), written out here rather
    // than read from the DEFAULT_* constants, so that changing a constant without
    // the docs fails.
    let c = Config::parse(MINIMAL).unwrap();
    assert_eq!(c.admin_listen.to_string(), "127.0.0.1:9901");
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(c.workers, cpus);
    assert_eq!(c.timeouts.connect, Duration::from_secs(2));
    assert_eq!(c.timeouts.request, Duration::from_secs(30));
    assert_eq!(c.timeouts.header_read, Duration::from_secs(10));
    assert_eq!(c.timeouts.shutdown_grace, Duration::from_secs(30));
    assert_eq!(c.limits.max_connections, 65_536);
    assert_eq!(c.limits.upstream_idle_per_host, 256);
    match &c.discovery {
        Discovery::File(f) => {
            assert_eq!(f.path, PathBuf::from("config/instances.toml"));
            assert_eq!(f.poll_interval, Duration::from_millis(500));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(&c.listeners[0].kind, ListenerKind::Http { routes } if routes.is_empty()));
}

#[test]
fn shipped_configs_are_valid() {
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/config")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.ends_with(".toml") && name != "instances.toml" {
            if let Err(e) = Config::load(&path) {
                panic!("{name}:\n{e}");
            }
        }
    }
    Config::parse(EMBEDDED_DEFAULT).unwrap();
}

#[test]
fn bad_configs_and_their_messages() {
    let listener = |extra: &str| {
        format!("[[listener]]\nname = \"web\"\nprotocol = \"http\"\nlisten = \"127.0.0.1:8080\"\n{extra}")
    };
    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            listener("[[listener.route]]\nservice = \"a\"\n[[listener.route]]\nservice = \"b\"\nbalance = \"rr\"\n"),
            vec![r#"listener[0].route[1].balance: unknown policy "rr" (expected round_robin, weighted, least_request, hash)"#],
        ),
        (
            listener("[[listener.route]]\nservice = \"a\"\nbalance = \"hash\"\n"),
            vec![r#"listener[0].route[0].hash_key: required with balance = "hash" (e.g. "header:x-user-id")"#],
        ),
        (
            listener("[[listener.route]]\nservice = \"a\"\nbalance = \"hash\"\nhash_key = \"body\"\n"),
            vec![r#"listener[0].route[0].hash_key: invalid hash key "body" (expected header:NAME, cookie:NAME, client_ip, path, query:NAME)"#],
        ),
        (
            listener("[[listener.route]]\nservice = \"a\"\nhash_key = \"path\"\n"),
            vec![r#"listener[0].route[0].hash_key: only used with balance = "hash""#],
        ),
        (listener("[[listener.route]]\npath_prefix = \"api\"\n"), vec![
            r#"listener[0].route[0].path_prefix: "api" must start with '/'"#,
            "listener[0].route[0].service: required",
        ]),
        (
            "[[listener]]\nname = \"web\"\nprotocol = \"htp\"\nlisten = \"127.0.0.1:80\"\n".into(),
            vec![r#"listener[0].protocol: unknown protocol "htp" (expected http, https, tcp, tls_passthrough)"#],
        ),
        (
            "[[listener]]\nname = \"web\"\nprotocol = \"http\"\nlisten = \"localhost\"\n".into(),
            vec![r#"listener[0].listen: invalid address "localhost" (expected IP:PORT, e.g. "127.0.0.1:8080")"#],
        ),
        (
            format!("{}{}", listener(""), "[[listener]]\nname = \"web\"\nprotocol = \"http\"\nlisten = \"127.0.0.1:8080\"\n"),
            vec![r#"listener[1].name: duplicate listener name "web""#, "listener[1].listen: 127.0.0.1:8080 is used by another listener"],
        ),
        (format!("[runtime]\nworkers = 0\n{}", listener("")), vec!["runtime.workers: must be between 1 and 1024, got 0"]),
        (format!("[timeouts]\nconnect = \"2 seconds\"\n{}", listener("")), vec![
            r#"timeouts.connect: invalid duration "2 seconds" (expected e.g. "250ms", "5s", "2m")"#,
        ]),
        (format!("[discovery]\nsource = \"consul\"\n{}", listener("")), vec![r#"discovery.source: unknown source "consul" (expected file, etcd)"#]),
        (format!("[discovery]\nsource = \"etcd\"\n{}", listener("")), vec![
            r#"discovery.endpoints: at least one etcd endpoint is required when source = "etcd""#,
        ]),
        (format!("[discovery]\nsource = \"etcd\"\nendpoints = [\"http://127.0.0.1:2379\"]\nusername = \"u\"\n{}", listener("")), vec![
            "discovery.password: required when discovery.username is set",
        ]),
        (format!("[discovery]\nendpoints = [\"http://127.0.0.1:2379\"]\n{}", listener("")), vec![r#"discovery.endpoints: not used by source = "file""#]),
        (
            "[[listener]]\nname = \"pg\"\nprotocol = \"tcp\"\nlisten = \"127.0.0.1:6432\"\nbalance = \"hash\"\nhash_key = \"path\"\n".into(),
            vec!["listener[0].service: required", r#"listener[0].hash_key: "path" is not available for a TCP connection (expected client_ip)"#],
        ),
        (
            "[[listener]]\nname = \"s\"\nprotocol = \"https\"\nlisten = \"127.0.0.1:8443\"\n".into(),
            vec!["listener[0].tls: an https listener needs at least one [[listener.tls]] certificate"],
        ),
        ("[admin]\nlisten = \"127.0.0.1:9901\"\n".into(), vec!["listener: at least one [[listener]] is required"]),
        (listener("colour = \"blue\"\n"), vec!["line 5: unknown field `colour`"]),
    ];
    for (text, want) in cases {
        let got = errors(&text);
        let matched = want.len() == got.len() && want.iter().zip(&got).all(|(w, g)| g.starts_with(w));
        assert!(matched, "config:\n{text}\nwant: {want:#?}\ngot: {got:#?}");
    }
}

#[test]
fn every_error_is_reported_not_only_the_first() {
    let text = r#"
[runtime]
workers = -1
[timeouts]
request = "0s"
[[listener]]
name = ""
protocol = "http"
listen = "nowhere"
"#;
    let got = errors(text);
    assert_eq!(
        got,
        [
            "runtime.workers: must be between 1 and 1024, got -1",
            "timeouts.request: must be greater than zero",
            "listener[0].name: must not be empty",
            r#"listener[0].listen: invalid address "nowhere" (expected IP:PORT, e.g. "127.0.0.1:8080")"#,
        ]
    );
}

#[test]
fn hardening_defaults_and_bounds() {
    // The values docs/hardening.md documents, written out.
    let c = Config::parse(MINIMAL).unwrap();
    assert_eq!(c.timeouts.client_idle, Duration::from_secs(60));
    assert_eq!(c.timeouts.send, Duration::from_secs(60));
    assert_eq!(c.timeouts.tunnel_idle, Duration::from_secs(300));
    assert_eq!(c.limits.max_request_head, 65_536);
    assert_eq!(c.limits.max_request_headers, 100);
    assert_eq!(c.limits.h2_max_concurrent_streams, 128);
    assert_eq!(c.limits.admin_max_connections, 32);
    assert!(c.listeners[0].normalize_path);
    assert!(c.warnings().is_empty(), "{:?}", c.warnings());
    let e = errors(&format!("[limits]\nmax_request_head = 100\nh2_max_concurrent_streams = 0\n{MINIMAL}"));
    assert_eq!(
        e,
        [
            "limits.max_request_head: must be between 8192 and 16777216, got 100",
            "limits.h2_max_concurrent_streams: must be between 1 and 10000, got 0",
        ]
    );
    let e = errors(
        "[[listener]]\nname = \"t\"\nprotocol = \"tcp\"\nlisten = \"127.0.0.1:1\"\nservice = \"s\"\nnormalize_path = false\n",
    );
    assert_eq!(e, ["listener[0].normalize_path: not used by protocol = \"tcp\""]);
    let open = Config::parse(&format!("[admin]\nlisten = \"0.0.0.0:9901\"\n{MINIMAL}")).unwrap();
    assert_eq!(open.warnings().len(), 1);
    assert!(open.warnings()[0].starts_with("admin.listen: 0.0.0.0:9901 is not a loopback address"));
}
