//! The deployment files hold together: everything `Dockerfile`,
//! `deploy/compose.yaml`, `deploy/prometheus.yml`, `deploy/alerts.yml` and the
//! Grafana provisioning reference exists and validates (`switchyard check`,
//! `promtool check config` / `check rules`), names agree across files, and two
//! gateways on one etcd converge on the same revision — how switchyard scales
//! past one machine.

use crate::support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_yaml::Value;
use support::etcd::{gateway_config, instance_json, Etcd};
use support::{admin_get, wait_until, Backend, TestGateway};

const PROMTOOL: &str = "/usr/bin/promtool";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The YAML document with `<<:` merge keys applied (compose uses them).
fn yaml(rel: &str) -> Value {
    let mut v: Value = serde_yaml::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    v.apply_merge().unwrap_or_else(|e| panic!("{rel}: {e}"));
    v
}

/// Dockerfile instructions with continuation lines joined and comments dropped.
fn instructions(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && current.is_empty()) {
            continue;
        }
        match t.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(t);
                out.push(std::mem::take(&mut current));
            }
        }
    }
    out
}

/// `registry.domain/path:tag` (or a locally built `localhost/...`): no registry search list needed.
fn fully_qualified(image: &str) -> bool {
    let first = image.split('/').next().unwrap_or("");
    image.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost")
}

/// Whether `.dockerignore` excludes `path` (the subset of its syntax the file uses:
/// `dir/`, `*.ext` at the top level, exact paths, and `!` exceptions; last match wins).
fn ignored(patterns: &[String], path: &str) -> bool {
    let mut out = false;
    for p in patterns {
        let (negate, p) = match p.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, p.as_str()),
        };
        let p = p.trim_end_matches('/');
        let hit = if let Some(ext) = p.strip_prefix("*.") {
            !path.contains('/') && path.ends_with(&format!(".{ext}"))
        } else {
            path == p || path.starts_with(&format!("{p}/"))
        };
        if hit {
            out = !negate;
        }
    }
    out
}

#[test]
fn dockerfile_is_production_ready() {
    let steps = instructions(&read("Dockerfile"));
    let find = |pred: &dyn Fn(&str) -> bool| steps.iter().position(|s| pred(s));
    let froms: Vec<&String> = steps.iter().filter(|s| s.starts_with("FROM ")).collect();
    assert!(froms.len() >= 2, "a build stage and a runtime stage: {froms:?}");
    for f in &froms {
        let image = f.split_whitespace().nth(1).unwrap();
        assert!(fully_qualified(image), "{image}: not fully qualified (podman refuses short names)");
    }
    // Dependency-caching layer: manifests copied and dependencies built before the sources.
    let manifests = find(&|s| s.starts_with("COPY Cargo.toml Cargo.lock")).expect("COPY Cargo.toml Cargo.lock");
    let deps_build = find(&|s| s.starts_with("RUN ") && s.contains("cargo build")).expect("a cargo build");
    let sources = find(&|s| s.starts_with("COPY src")).expect("COPY src");
    assert!(manifests < deps_build && deps_build < sources, "dependencies are not built in their own layer");
    assert!(steps.iter().any(|s| s.contains("CARGO_PROFILE_RELEASE_STRIP=symbols")), "binary not stripped");
    assert!(steps.iter().any(|s| s.starts_with("HEALTHCHECK ") && s.contains("/readyz")), "no health check");
    let state = "/var/lib/switchyard";
    assert!(steps.iter().any(|s| s.starts_with("RUN ") && s.contains(&format!("chown switchyard:switchyard {state}"))));
    assert!(steps.iter().any(|s| s.starts_with("VOLUME") && s.contains(state)), "no state volume");
    let user = find(&|s| s.starts_with("USER switchyard")).expect("runs unprivileged");
    assert!(user > froms.len() - 1, "USER in the runtime stage");

    // Every COPY source exists and survives .dockerignore.
    let ignore: Vec<String> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect();
    for s in steps.iter().filter(|s| s.starts_with("COPY ") && !s.contains("--from=")) {
        let words: Vec<&str> = s.split_whitespace().skip(1).collect();
        for src in &words[..words.len() - 1] {
            assert!(root().join(src).exists(), "COPY {src}: missing");
            assert!(!ignored(&ignore, src.trim_end_matches('/')), "COPY {src}: excluded by .dockerignore");
        }
    }
    for must_skip in ["target", ".git", "tests"] {
        assert!(ignored(&ignore, must_skip), ".dockerignore does not skip {must_skip}");
    }
    // The config the CMD names is the one copied in, and it is the container config.
    let cmd = steps.iter().find(|s| s.starts_with("CMD ")).unwrap();
    assert!(cmd.contains("/etc/switchyard/switchyard.toml"), "{cmd}");
    assert!(steps.iter().any(|s| s == "COPY deploy/switchyard.toml /etc/switchyard/switchyard.toml"));
}

#[test]
fn container_config_checks_and_listens_on_every_interface() {
    let path = root().join("deploy/switchyard.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard")).arg("check").arg("--config").arg(&path).output().unwrap();
    assert!(
        out.status.success(),
        "switchyard check: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let config = switchyard::config::Config::load(&path).unwrap();
    assert!(config.admin_listen.ip().is_unspecified(), "admin on {}", config.admin_listen);
    assert_eq!(config.admin_listen.port(), 9901);
    for l in &config.listeners {
        assert!(l.listen.ip().is_unspecified(), "listener {} on {}", l.name, l.listen);
    }
    match &config.discovery {
        switchyard::config::Discovery::Etcd(e) => {
            assert_eq!(e.endpoints, ["http://etcd:2379"]);
            let snapshot = e.snapshot_path.as_ref().expect("snapshot_path");
            assert!(snapshot.starts_with("/var/lib/switchyard"), "{}", snapshot.display());
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn prometheus_config_and_alert_rules_validate() {
    for (what, file) in [("config", "deploy/prometheus.yml"), ("rules", "deploy/alerts.yml")] {
        let out = Command::new(PROMTOOL)
            .args(["check", what])
            .arg(root().join(file))
            .output()
            .unwrap_or_else(|e| panic!("{PROMTOOL}: {e} (install Debian's prometheus)"));
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "promtool check {what} {file}:\n{said}");
    }
    let rules = read("deploy/alerts.yml");
    let exported: BTreeSet<&str> = switchyard::metrics::ALL.iter().copied().collect();
    let mut rest = rules.as_str();
    while let Some(i) = rest.find("switchyard_") {
        let tail = &rest[i..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        assert!(exported.contains(&tail[..end]), "alerts.yml uses {} which the gateway does not export", &tail[..end]);
        rest = &tail[end..];
    }
    let doc = yaml("deploy/alerts.yml");
    let alerts: Vec<String> = doc["groups"][0]["rules"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| format!("{} {}", r["alert"].as_str().unwrap(), r["expr"].as_str().unwrap()))
        .collect();
    for needle in ["switchyard_discovery_connected", "code=~\"5..\"", "switchyard_upstream_instances{state=\"up\"}"] {
        assert!(alerts.iter().any(|a| a.contains(needle)), "no alert on {needle}: {alerts:#?}");
    }
}

#[test]
fn compose_references_exist_and_agree() {
    let compose = yaml("deploy/compose.yaml");
    let services = compose["services"].as_mapping().expect("services");
    let name = |k: &Value| k.as_str().unwrap().to_string();
    let names: BTreeSet<String> = services.keys().map(name).collect();
    let command = |s: &Value| -> Vec<String> {
        s["command"]
            .as_sequence()
            .map(|c| c.iter().map(|a| a.as_str().unwrap().to_string()).collect())
            .unwrap_or_default()
    };
    let deploy = root().join("deploy");
    let mut gateways = Vec::new();
    let mut registered = Vec::new();
    for (key, s) in services {
        let svc = name(key);
        let image = s["image"].as_str().unwrap_or_else(|| panic!("{svc}: no image"));
        assert!(fully_qualified(image), "{svc}: image {image} not fully qualified");
        // Images built here come from the Dockerfile at the repository root.
        if image.starts_with("localhost/") {
            let built = services.values().any(|o| o["image"].as_str() == Some(image) && o["build"].is_mapping());
            assert!(built, "{svc}: {image} is built by no service");
        }
        if let Some(build) = s["build"].as_mapping() {
            let context = deploy.join(build[&Value::from("context")].as_str().unwrap());
            assert!(context.join(build[&Value::from("dockerfile")].as_str().unwrap()).exists(), "{svc}: Dockerfile");
        }
        // Bind mounts: the host side exists.
        for v in s["volumes"].as_sequence().into_iter().flatten() {
            let v = v.as_str().unwrap();
            let host = v.split(':').next().unwrap();
            if host.starts_with('.') {
                assert!(deploy.join(host).exists(), "{svc}: volume source {host} missing");
            } else {
                assert!(
                    compose["volumes"].as_mapping().unwrap().contains_key(host),
                    "{svc}: named volume {host} not declared"
                );
            }
        }
        for dep in s["depends_on"].as_mapping().map(|m| m.keys().map(name).collect()).unwrap_or_else(|| {
            s["depends_on"].as_sequence().map(|d| d.iter().map(name).collect::<Vec<_>>()).unwrap_or_default()
        }) {
            assert!(names.contains(&dep), "{svc}: depends on unknown {dep}");
        }
        let cmd = command(s);
        match cmd.first().map(String::as_str) {
            Some("run") => {
                let config = cmd.iter().skip_while(|a| *a != "--config").nth(1).expect("--config");
                assert_eq!(config, "/etc/switchyard/switchyard.toml", "{svc}: not the config the image carries");
                gateways.push(svc.clone());
            }
            Some("register") => {
                let arg = |flag: &str| cmd.iter().skip_while(|a| *a != flag).nth(1).cloned().unwrap();
                assert_eq!(arg("--etcd"), "http://etcd:2379", "{svc}");
                let addr = arg("--addr");
                let host = addr.rsplit_once(':').unwrap().0;
                assert!(names.contains(host), "{svc}: registers {addr}, which is no compose service");
                registered.push(arg("--service"));
            }
            _ => {}
        }
    }
    assert!(names.contains("etcd"), "no etcd");
    assert!(gateways.len() >= 2, "two gateway replicas on the same etcd: {gateways:?}");
    assert!(registered.len() >= 2, "two example services registering themselves: {registered:?}");
    // The container config routes what the examples register.
    let config = read("deploy/switchyard.toml");
    for service in &registered {
        assert!(
            config.contains(&format!("service = \"{service}\"")),
            "{service} has no route in deploy/switchyard.toml"
        );
    }
    // Prometheus scrapes both gateways on the admin port; Grafana gets its data source and dashboard.
    let prom = yaml("deploy/prometheus.yml");
    let targets: Vec<String> = prom["scrape_configs"][0]["static_configs"][0]["targets"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    let scraped: BTreeSet<String> =
        targets.iter().map(|t| t.strip_suffix(":9901").expect("admin port").to_string()).collect();
    assert_eq!(scraped, gateways.iter().cloned().collect::<BTreeSet<_>>());
    for rule_file in prom["rule_files"].as_sequence().unwrap() {
        assert!(deploy.join(rule_file.as_str().unwrap()).exists());
    }
    let datasource = yaml("deploy/grafana/provisioning/datasources/prometheus.yml");
    assert_eq!(datasource["datasources"][0]["url"].as_str(), Some("http://prometheus:9090"));
    assert!(names.contains("prometheus") && names.contains("grafana"));
    let provider = yaml("deploy/grafana/provisioning/dashboards/switchyard.yml");
    let dashboards = provider["providers"][0]["options"]["path"].as_str().unwrap();
    let grafana_volumes: Vec<&str> = services[&Value::from("grafana")]["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let mounted = grafana_volumes
        .iter()
        .find(|v| v.starts_with("../grafana/switchyard.json:"))
        .expect("the dashboard is mounted into grafana");
    let target = mounted.split(':').nth(1).unwrap();
    assert_eq!(
        Path::new(target).parent().unwrap(),
        Path::new(dashboards),
        "dashboard mounted outside the provider's path"
    );
    assert!(grafana_volumes.contains(&"./grafana/provisioning:/etc/grafana/provisioning:ro"));
}

/// Two gateways on one etcd: after every change both serve the same table, at
/// the same etcd revision (the revision the write returned).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_on_one_etcd_converge_on_the_same_revision() {
    let etcd = Etcd::start().await;
    let mut kv = etcd.client().await;
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let config = gateway_config(&[etcd.url()], "");
    let gateways = [TestGateway::start(&config).await, TestGateway::start(&config).await];
    let revision_of = async |gw: &TestGateway| -> (u64, String) {
        let doc: serde_json::Value = serde_json::from_str(&admin_get(gw.admin, "/upstreams").await.1).unwrap();
        (doc["revision"].as_u64().unwrap(), doc["services"]["conv"].to_string())
    };
    // (key, value): a put, or a delete when the value is None.
    let writes: Vec<(&str, Option<String>)> = vec![
        ("/services/conv/a", Some(instance_json("conv", "a", a.addr, &[]))),
        ("/services/conv/b", Some(instance_json("conv", "b", b.addr, &[("weight", "2")]))),
        ("/services/conv/a", None),
    ];
    for (key, value) in writes {
        let revision = match value {
            Some(v) => kv.put(key, v, None).await.unwrap().header().unwrap().revision(),
            None => kv.delete(key, None).await.unwrap().header().unwrap().revision(),
        } as u64;
        for gw in &gateways {
            wait_until(&format!("revision {revision}"), Duration::from_secs(10), async || {
                revision_of(gw).await.0 == revision
            })
            .await;
        }
        let (r0, s0) = revision_of(&gateways[0]).await;
        let (r1, s1) = revision_of(&gateways[1]).await;
        assert_eq!((r0, &s0), (r1, &s1), "the two gateways disagree");
    }
}
