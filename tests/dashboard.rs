//! The Grafana dashboard uses only metric names the gateway exports, and every
//! exported metric appears on it.

use std::collections::BTreeSet;

fn names_in(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = expr;
    while let Some(i) = rest.find("switchyard_") {
        let tail = &rest[i..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        let name = &tail[..end];
        // Histograms are queried through their series suffixes.
        let base = ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name);
        out.insert(base.to_string());
        rest = &tail[end..];
    }
    out
}

fn collect_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr" | "query", serde_json::Value::String(e)) if e.contains("switchyard_") => {
                        out.push(e.clone())
                    }
                    _ => collect_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|i| collect_exprs(i, out)),
        _ => {}
    }
}

#[test]
fn dashboard_and_metrics_agree() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/grafana/switchyard.json")).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    // Every `expr` anywhere in the document: panel targets, panels nested in rows,
    // template variables, annotations.
    let mut exprs = Vec::new();
    collect_exprs(&doc, &mut exprs);
    assert!(exprs.len() >= 10, "only {} queries found in the dashboard", exprs.len());
    let mut used = BTreeSet::new();
    for expr in &exprs {
        used.extend(names_in(expr));
    }
    let exported: BTreeSet<String> = switchyard::metrics::ALL.iter().map(|s| s.to_string()).collect();
    let unknown: Vec<_> = used.difference(&exported).collect();
    assert!(unknown.is_empty(), "dashboard queries metrics the gateway does not export: {unknown:?}");
    let missing: Vec<_> = exported.difference(&used).collect();
    assert!(missing.is_empty(), "exported metrics missing from the dashboard: {missing:?}");
}

/// Every name in `metrics::ALL` is recorded somewhere in the gateway, not only declared.
#[test]
fn every_declared_metric_is_recorded() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/src");
    let declared = std::fs::read_to_string(format!("{root}/metrics.rs")).unwrap();
    let consts: Vec<&str> = declared
        .lines()
        .filter_map(|l| l.strip_prefix("pub const "))
        .filter(|l| l.contains(": &str = \"switchyard_"))
        .filter_map(|l| l.split(':').next())
        .collect();
    assert_eq!(consts.len(), switchyard::metrics::ALL.len());
    let mut sources = String::new();
    let mut dirs = vec![std::path::PathBuf::from(root)];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") && !path.ends_with("metrics.rs") {
                sources.push_str(&std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    let unused: Vec<&&str> = consts.iter().filter(|c| !sources.contains(&format!("m::{c}"))).collect();
    assert!(unused.is_empty(), "declared but never recorded: {unused:?}");
}

fn dashboard() -> serde_json::Value {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/grafana/switchyard.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// What an expression plots: a per-second rate, a quantile, or a level (gauge).
fn kind_of(expr: &str) -> &'static str {
    if expr.contains("histogram_quantile(") {
        "quantile"
    } else if expr.contains("rate(") || expr.contains("increase(") {
        "rate"
    } else {
        "level"
    }
}

/// Importable (asks for a data source), windows that follow the scrape interval,
/// variables to narrow by job/instance/listener/service, one kind of quantity per
/// panel, and units that say what is plotted.
#[test]
fn dashboard_is_importable_and_consistent() {
    let doc = dashboard();
    let inputs = doc["__inputs"].as_array().expect("__inputs");
    assert!(inputs.iter().any(|i| i["type"] == "datasource" && i["pluginId"] == "prometheus"), "{inputs:?}");
    let vars: Vec<&str> =
        doc["templating"]["list"].as_array().unwrap().iter().filter_map(|v| v["name"].as_str()).collect();
    for want in ["datasource", "job", "instance", "listener", "service"] {
        assert!(vars.contains(&want), "template variable {want} missing: {vars:?}");
    }
    let mut problems = Vec::new();
    let mut panels = 0;
    for panel in doc["panels"].as_array().unwrap() {
        let Some(targets) = panel["targets"].as_array() else { continue };
        panels += 1;
        let title = panel["title"].as_str().unwrap_or("?");
        let exprs: Vec<&str> = targets.iter().filter_map(|t| t["expr"].as_str()).collect();
        if panel["datasource"]["uid"] != "${datasource}" {
            problems.push(format!("{title}: data source is not the ${{datasource}} variable"));
        }
        for e in &exprs {
            if e.contains("[1m]") || e.contains("[5m]") || e.contains("[1h]") {
                problems.push(format!("{title}: fixed window in {e} (use $__rate_interval)"));
            }
            if (e.contains("rate(") || e.contains("increase("))
                && !e.contains("[$__rate_interval]")
                && !e.contains("[$__range]")
            {
                problems.push(format!("{title}: window not $__rate_interval/$__range in {e}"));
            }
            if !e.contains("job=~\"$job\"") || !e.contains("instance=~\"$instance\"") {
                problems.push(format!("{title}: {e} ignores $job/$instance"));
            }
        }
        let kinds: BTreeSet<&str> = exprs.iter().map(|e| kind_of(e)).collect();
        if kinds.len() != 1 {
            problems.push(format!("{title}: mixes {kinds:?} on one axis"));
        }
        let unit = panel["fieldConfig"]["defaults"]["unit"].as_str().unwrap_or("");
        let bytes = title.to_lowercase().contains("bytes") || title.to_lowercase().contains("memory");
        let ok = match kinds.iter().next().copied() {
            Some("quantile") => unit == "s",
            Some("rate") if title.contains("ratio") || title == "CPU" => unit == "percentunit",
            Some("rate") if title.starts_with("Certificate reloads") => unit == "short",
            Some("rate") => ["reqps", "ops", "cps"].contains(&unit) || (bytes && unit == "Bps"),
            Some("level") => !["reqps", "ops", "cps", "Bps"].contains(&unit) && (unit != "bytes" || bytes),
            _ => false,
        };
        if !ok {
            problems.push(format!("{title}: unit {unit:?} does not fit {kinds:?}"));
        }
    }
    assert!(panels >= 20, "only {panels} panels");
    assert!(problems.is_empty(), "{problems:#?}");
}
