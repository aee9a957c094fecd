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
fn access_log_defaults_and_errors() {
    let c = Config::parse(&format!("{MINIMAL}access_log = {{ path = \"a.log\" }}\n")).unwrap();
    let log = c.listeners[0].access_log.as_ref().unwrap();
    assert_eq!((log.path.to_str(), log.format, log.queue), (Some("a.log"), AccessLogFormat::Json, 4096));
    assert!(Config::parse(MINIMAL).unwrap().listeners[0].access_log.is_none(), "off by default");
    assert_eq!(
        errors(&format!("{MINIMAL}access_log = {{ format = \"clf\", queue = 0 }}\n")),
        [
            "listener[0].access_log.format: unknown format \"clf\" (expected json, combined)",
            "listener[0].access_log.queue: must be at least 1, got 0",
            "listener[0].access_log.path: required",
        ]
    );
    assert_eq!(
        errors(&format!("{MINIMAL}access_log = {{ path = \"a\", queue = 2000000 }}\n")),
        ["listener[0].access_log.queue: must be at most 1048576, got 2000000"]
    );
    assert_eq!(
        errors(
            "[[listener]]\nname = \"pg\"\nprotocol = \"tcp\"\nlisten = \"127.0.0.1:1\"\nservice = \"s\"\naccess_log = { path = \"a\" }\n"
        ),
        ["listener[0].access_log: not used by protocol = \"tcp\""]
    );
}

#[test]
fn resilience_defaults_and_errors() {
    let c = Config::parse(MINIMAL).unwrap();
    assert_eq!(c.timeouts.upstream_idle, Duration::from_secs(90));
    let p = ServicePolicy::default();
    assert!(p.outlier.enabled);
    assert_eq!((p.outlier.consecutive_failures, p.outlier.consecutive_connect_failures), (5, 1));
    assert_eq!((p.outlier.base_ejection, p.outlier.max_ejection), (Duration::from_secs(30), Duration::from_secs(300)));
    assert_eq!(p.outlier.max_ejected_percent, 50);
    assert_eq!((p.limits.max_inflight, p.limits.max_connections, p.limits.max_pending), (1024, 1024, 1024));
    assert_eq!((p.retry_budget.percent, p.retry_budget.min_concurrency), (20, 3));
    assert!(p.health_check.is_none() && p.slow_start.is_none());
    let r = RetryPolicy::default();
    assert_eq!((r.attempts, r.buffer, r.non_idempotent), (2, 65_536, false));
    assert!(r.on.connect_failure && r.on.reset && !r.on.status_503);

    let text = format!(
        "{MINIMAL}[[listener.route]]\nservice = \"a\"\ntimeout = \"0s\"\n\
         retry = {{ attempts = 0, on = [\"500\"], per_try_timeout = \"1x\" }}\n\
         [[service]]\nname = \"a\"\nmax_inflight = 0\nslow_start = \"soon\"\n\
         outlier = {{ max_ejected_percent = 101, base_ejection = \"60s\", max_ejection = \"30s\" }}\n\
         health_check = {{ kind = \"smtp\" }}\nretry_budget = {{ min_concurrency = -1 }}\n\
         [[service]]\nname = \"b\"\nhealth_check = {{ kind = \"tcp\", path = \"/\", status = \"2xx\", unchecked = \"maybe\" }}\n"
    );
    assert_eq!(
        errors(&text),
        [
            "listener[0].route[0].timeout: must be greater than zero",
            r#"listener[0].route[0].retry.on[0]: unknown condition "500" (expected connect-failure, reset, 502, 503, 504)"#,
            "listener[0].route[0].retry.attempts: must be between 1 and 1000, got 0",
            r#"listener[0].route[0].retry.per_try_timeout: invalid duration "1x" (expected e.g. "250ms", "5s", "2m")"#,
            "service[0].max_inflight: must be at least 1, got 0",
            "service[0].outlier.max_ejection: 30s is shorter than base_ejection (60s)",
            "service[0].outlier.max_ejected_percent: must be between 0 and 100, got 101",
            r#"service[0].health_check.kind: unknown check "smtp" (expected http, grpc, tcp)"#,
            r#"service[0].slow_start: invalid duration "soon" (expected e.g. "250ms", "5s", "2m")"#,
            "service[0].retry_budget.min_concurrency: must not be negative, got -1",
            "service[1].health_check.path: not used by this kind of check",
            "service[1].health_check.status: not used by this kind of check",
            r#"service[1].health_check.unchecked: unknown value "maybe" (expected usable, unusable)"#,
        ]
    );
}

#[test]
fn etcd_keepalive_defaults_to_10s_and_never_goes_below_etcds_5s() {
    let etcd = |extra: &str| {
        format!("[discovery]\nsource = \"etcd\"\nendpoints = [\"http://127.0.0.1:2379\"]\n{extra}{MINIMAL}")
    };
    match Config::parse(&etcd("")).unwrap().discovery {
        Discovery::Etcd(e) => assert_eq!(e.keepalive, Duration::from_secs(10)),
        other => panic!("{other:?}"),
    }
    match Config::parse(&etcd("keepalive = \"5s\"\n")).unwrap().discovery {
        Discovery::Etcd(e) => assert_eq!(e.keepalive, Duration::from_secs(5)),
        other => panic!("{other:?}"),
    }
    let got = errors(&etcd("keepalive = \"2s\"\n"));
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].starts_with("discovery.keepalive: 2s is below etcd's minimum ping interval of 5s"), "{got:?}");
    let got = errors(&format!("[discovery]\nkeepalive = \"10s\"\n{MINIMAL}"));
    assert_eq!(got, [r#"discovery.keepalive: not used by source = "file""#]);
}

#[test]
fn etcd_prefixes_need_no_leading_slash() {
    let etcd = |prefixes: &str| {
        format!(
            "[discovery]\nsource = \"etcd\"\nendpoints = [\"http://127.0.0.1:2379\"]\nprefixes = {prefixes}\n{MINIMAL}"
        )
    };
    match Config::parse(&etcd(r#"["foo/bar", "/services/", "/"]"#)).unwrap().discovery {
        Discovery::Etcd(e) => assert_eq!(e.prefixes, ["foo/bar/", "/services/", "/"]),
        other => panic!("{other:?}"),
    }
    let got = errors(&etcd(r#"["ok/", ""]"#));
    assert_eq!(got, [r#"discovery.prefixes[1]: prefix "" must be a non-empty key prefix without control characters"#]);
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
