//! The status page on the admin listener at `/`: listeners and routes, every
//! service with its instances (state, weight, in-flight, and whatever else
//! `/upstreams` reports per instance), and the recent discovery events. One
//! static HTML file with inline CSS and script, no external assets; the script
//! fetches `/upstreams` and `/status.json` every 2 s and redraws in place.

use serde_json::{json, Value};

use crate::config::{Balance, Config, HashKey, ListenerKind, Route};
use crate::discovery::events;

/// The page itself.
pub const HTML: &str = include_str!("status.html");

/// What the page shows besides `/upstreams`: the listeners and routes of the
/// running config and the discovery events.
pub struct StatusPage {
    /// Replaced when a config reload goes live.
    listeners: arc_swap::ArcSwap<Value>,
}

impl StatusPage {
    pub fn new(config: &Config) -> StatusPage {
        StatusPage { listeners: arc_swap::ArcSwap::from_pointee(listeners(config)) }
    }

    /// Shows the listeners and routes of `config`, the one now running.
    pub fn update(&self, config: &Config) {
        self.listeners.store(std::sync::Arc::new(listeners(config)));
    }

    /// `{"listeners": [{name, protocol, listen, routes: [{match, service, balance}]}], "events": [...]}`
    pub fn json(&self) -> String {
        let doc = json!({ "listeners": &*self.listeners.load_full(), "events": events::recent() });
        format!("{doc:#}\n")
    }
}

fn listeners(config: &Config) -> Value {
    let list: Vec<Value> = config
        .listeners
        .iter()
        .map(|l| {
            let routes: Vec<Value> = match &l.kind {
                ListenerKind::Http { routes } | ListenerKind::Https { routes, .. } => routes
                    .iter()
                    .map(|r| json!({ "match": route_match(r), "service": r.service, "balance": balance(&r.balance) }))
                    .collect(),
                ListenerKind::Tcp { service, balance: b } => {
                    vec![json!({ "match": "every connection", "service": service, "balance": balance(b) })]
                }
                ListenerKind::TlsPassthrough { routes } => routes
                    .iter()
                    .map(|r| json!({ "match": format!("sni={}", r.sni), "service": r.service, "balance": balance(&r.balance) }))
                    .collect(),
            };
            json!({ "name": l.name, "protocol": l.kind.protocol(), "listen": l.listen.to_string(), "routes": routes })
        })
        .collect();
    Value::Array(list)
}

/// The route's matchers as the config spells them.
fn route_match(r: &Route) -> String {
    let mut parts = Vec::new();
    if let Some(h) = &r.host {
        parts.push(format!("host={h}"));
    }
    if let Some(p) = &r.path_prefix {
        parts.push(format!("path_prefix={p}{}", if r.strip_prefix { " (stripped)" } else { "" }));
    }
    if let Some(g) = &r.grpc_service {
        parts.push(format!("grpc_service={g}"));
    }
    if let Some(h) = &r.header {
        parts.push(match &h.value {
            Some(v) => format!("header {}={v}", h.name),
            None => format!("header {}", h.name),
        });
    }
    if parts.is_empty() {
        "everything".to_string()
    } else {
        parts.join(", ")
    }
}

fn balance(b: &Balance) -> String {
    match b {
        Balance::RoundRobin => "round_robin".into(),
        Balance::Weighted => "weighted".into(),
        Balance::LeastRequest => "least_request".into(),
        Balance::Hash(k) => format!(
            "hash({})",
            match k {
                HashKey::Header(h) => format!("header:{h}"),
                HashKey::Cookie(c) => format!("cookie:{c}"),
                HashKey::ClientIp => "client_ip".into(),
                HashKey::Path => "path".into(),
                HashKey::Query(q) => format!("query:{q}"),
            }
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_and_routes_as_json() {
        let config = Config::parse(
            r#"
[[listener]]
name = "web"
protocol = "http"
listen = "127.0.0.1:8080"
[[listener.route]]
host = "a.example.com"
path_prefix = "/api/"
strip_prefix = true
service = "api"
balance = "hash"
hash_key = "header:x-user"
[[listener]]
name = "pg"
protocol = "tcp"
listen = "127.0.0.1:6432"
service = "db"
"#,
        )
        .unwrap();
        let page = StatusPage::new(&config);
        let doc: Value = serde_json::from_str(&page.json()).unwrap();
        let web = &doc["listeners"][0];
        assert_eq!(web["name"], "web");
        assert_eq!(web["routes"][0]["match"], "host=a.example.com, path_prefix=/api/ (stripped)");
        assert_eq!(web["routes"][0]["balance"], "hash(header:x-user)");
        assert_eq!(doc["listeners"][1]["routes"][0]["service"], "db");
        assert!(doc["events"].is_array());
        assert!(HTML.contains("fetch(\"/upstreams\"") && !HTML.contains("http://") && !HTML.contains("https://"));
    }
}
