//! Raw config → validated [`Config`]. Every problem is collected (not only the
//! first), each with the path of its field, e.g.
//! `listener[0].route[1].balance: unknown policy "rr" (expected ...)`.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::HeaderName;

use super::raw::*;
use super::*;

/// One bad field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.reason)
        } else {
            write!(f, "{}: {}", self.path, self.reason)
        }
    }
}

/// Every bad field of one config, in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    pub fn single(path: String, reason: String) -> Self {
        ConfigErrors(vec![ConfigError { path, reason }])
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

const POLICIES: &str = "round_robin, weighted, least_request, hash";

pub(super) fn parse(text: &str) -> Result<Config, ConfigErrors> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| {
        let reason = e.message().trim().to_string();
        let at = e
            .span()
            .map(|s| {
                let line = text.as_bytes()[..s.start.min(text.len())].iter().filter(|&&b| b == b'\n').count() + 1;
                format!("line {line}: ")
            })
            .unwrap_or_default();
        ConfigErrors::single(String::new(), format!("{at}{reason}"))
    })?;
    let mut v = Validator::default();
    let config = v.config(raw);
    if v.errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(v.errors))
    }
}

#[derive(Default)]
pub(super) struct Validator {
    errors: Vec<ConfigError>,
}

impl Validator {
    pub(super) fn error(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        self.errors.push(ConfigError { path: path.into(), reason: reason.into() });
    }

    fn config(&mut self, raw: RawConfig) -> Config {
        let workers = match raw.runtime.workers {
            None => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            Some(n) if (1..=1024).contains(&n) => n as usize,
            Some(n) => {
                self.error("runtime.workers", format!("must be between 1 and 1024, got {n}"));
                1
            }
        };
        let admin_listen = self.addr("admin.listen", raw.admin.listen.as_deref().unwrap_or(DEFAULT_ADMIN_LISTEN));
        let discovery = self.discovery(raw.discovery);
        let timeouts = self.timeouts(raw.timeouts);
        let limits = Limits {
            max_connections: self.count("limits.max_connections", raw.limits.max_connections, DEFAULT_MAX_CONNECTIONS),
            upstream_idle_per_host: self.count(
                "limits.upstream_idle_per_host",
                raw.limits.upstream_idle_per_host,
                DEFAULT_UPSTREAM_IDLE_PER_HOST,
            ),
            max_request_head: self.bounded(
                "limits.max_request_head",
                raw.limits.max_request_head,
                DEFAULT_MAX_REQUEST_HEAD,
                // hyper's read buffer cannot be smaller than 8 KiB.
                8192..=16 << 20,
            ),
            max_request_headers: self.bounded(
                "limits.max_request_headers",
                raw.limits.max_request_headers,
                DEFAULT_MAX_REQUEST_HEADERS,
                1..=10_000,
            ),
            h2_max_concurrent_streams: self.bounded(
                "limits.h2_max_concurrent_streams",
                raw.limits.h2_max_concurrent_streams,
                DEFAULT_H2_MAX_CONCURRENT_STREAMS,
                1..=10_000,
            ),
            admin_max_connections: self.count(
                "limits.admin_max_connections",
                raw.limits.admin_max_connections,
                DEFAULT_ADMIN_MAX_CONNECTIONS,
            ),
        };
        let mut names = HashSet::new();
        let mut addrs = HashSet::new();
        let listeners: Vec<Listener> = raw
            .listeners
            .into_iter()
            .enumerate()
            .filter_map(|(i, l)| {
                let path = format!("listener[{i}]");
                let listener = self.listener(&path, l)?;
                if !names.insert(listener.name.clone()) {
                    self.error(format!("{path}.name"), format!("duplicate listener name {:?}", listener.name));
                }
                // Port 0 (tests) means "any free port": never a clash.
                if listener.listen.port() != 0 && !addrs.insert(listener.listen) {
                    self.error(format!("{path}.listen"), format!("{} is used by another listener", listener.listen));
                }
                if listener.listen.port() != 0 && listener.listen == admin_listen {
                    self.error(
                        format!("{path}.listen"),
                        format!("{} is the admin listener's address", listener.listen),
                    );
                }
                Some(listener)
            })
            .collect();
        if listeners.is_empty() && self.errors.is_empty() {
            self.error("listener", "at least one [[listener]] is required");
        }
        let mut service_names = HashSet::new();
        let services = raw
            .services
            .into_iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let path = format!("service[{i}]");
                let name = self.required(&format!("{path}.name"), s.name.clone())?;
                if !service_names.insert(name.clone()) {
                    self.error(format!("{path}.name"), format!("duplicate service {name:?}"));
                }
                let policy = self.service_policy(&path, &s);
                let upstream_tls = s.upstream_tls.map(|t| self.client_tls(&format!("{path}.upstream_tls"), t));
                Some(ServiceConfig { name, upstream_tls, policy })
            })
            .collect();
        Config { workers, admin_listen, discovery, timeouts, limits, listeners, services }
    }

    fn discovery(&mut self, d: RawDiscovery) -> Discovery {
        match d.source.as_deref().unwrap_or("file") {
            "file" => {
                self.unused(
                    "file",
                    &[
                        ("endpoints", d.endpoints.is_some()),
                        ("prefixes", d.prefixes.is_some()),
                        ("username", d.username.is_some()),
                        ("password", d.password.is_some()),
                        ("tls", d.tls.is_some()),
                        ("dial_timeout", d.dial_timeout.is_some()),
                        ("request_timeout", d.request_timeout.is_some()),
                        ("keepalive", d.keepalive.is_some()),
                        ("max_value_size", d.max_value_size.is_some()),
                        ("snapshot_path", d.snapshot_path.is_some()),
                    ],
                );
                Discovery::File(FileDiscovery {
                    path: PathBuf::from(d.path.as_deref().unwrap_or(DEFAULT_INSTANCES_PATH)),
                    poll_interval: self.duration(
                        "discovery.poll_interval",
                        d.poll_interval.as_deref(),
                        DEFAULT_POLL_INTERVAL,
                    ),
                })
            }
            "etcd" => {
                self.unused("etcd", &[("path", d.path.is_some()), ("poll_interval", d.poll_interval.is_some())]);
                Discovery::Etcd(Box::new(self.etcd(d)))
            }
            other => {
                self.error("discovery.source", format!("unknown source {other:?} (expected file, etcd)"));
                Discovery::File(FileDiscovery { path: PathBuf::new(), poll_interval: DEFAULT_POLL_INTERVAL })
            }
        }
    }

    fn unused(&mut self, source: &str, fields: &[(&str, bool)]) {
        for (field, set) in fields {
            if *set {
                self.error(format!("discovery.{field}"), format!("not used by source = {source:?}"));
            }
        }
    }

    /// The keepalive interval: below etcd's default `--grpc-keepalive-min-time`
    /// a stock etcd answers the pings with GOAWAY and the watch restarts.
    fn etcd_keepalive(&mut self, raw: Option<&str>) -> Duration {
        let keepalive = self.duration("discovery.keepalive", raw, DEFAULT_ETCD_KEEPALIVE);
        if keepalive < MIN_ETCD_KEEPALIVE {
            self.error(
                "discovery.keepalive",
                format!(
                    "{keepalive:?} is below etcd's minimum ping interval of {MIN_ETCD_KEEPALIVE:?} \
                     (--grpc-keepalive-min-time); etcd would close the watch"
                ),
            );
        }
        keepalive
    }

    fn etcd(&mut self, d: RawDiscovery) -> EtcdDiscovery {
        let endpoints = d.endpoints.unwrap_or_default();
        if endpoints.is_empty() {
            self.error("discovery.endpoints", "at least one etcd endpoint is required when source = \"etcd\"");
        }
        for (i, e) in endpoints.iter().enumerate() {
            let hostport = e.strip_prefix("http://").or_else(|| e.strip_prefix("https://")).unwrap_or(e);
            if hostport.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).is_none() {
                self.error(
                    format!("discovery.endpoints[{i}]"),
                    format!("invalid endpoint {e:?} (expected http://host:port)"),
                );
            }
        }
        let raw_prefixes = d.prefixes.unwrap_or_else(|| vec![DEFAULT_ETCD_PREFIX.to_string()]);
        if raw_prefixes.is_empty() {
            self.error("discovery.prefixes", "at least one prefix is required");
        }
        let mut prefixes = Vec::new();
        for (i, p) in raw_prefixes.into_iter().enumerate() {
            if p.is_empty() || p.chars().any(char::is_control) {
                self.error(
                    format!("discovery.prefixes[{i}]"),
                    format!("prefix {p:?} must be a non-empty key prefix without control characters"),
                );
            } else {
                // Always match with the trailing '/': `/services/foo` must not see `/services/foobar/`.
                prefixes.push(if p.ends_with('/') { p } else { format!("{p}/") });
            }
        }
        let auth = match (d.username, d.password) {
            (Some(u), Some(p)) => Some((u, p)),
            (None, None) => None,
            (Some(_), None) => {
                self.error("discovery.password", "required when discovery.username is set");
                None
            }
            (None, Some(_)) => {
                self.error("discovery.username", "required when discovery.password is set");
                None
            }
        };
        EtcdDiscovery {
            endpoints,
            prefixes,
            auth,
            tls: d.tls.map(|t| self.client_tls("discovery.tls", t)),
            dial_timeout: self.duration("discovery.dial_timeout", d.dial_timeout.as_deref(), DEFAULT_DIAL_TIMEOUT),
            request_timeout: self.duration(
                "discovery.request_timeout",
                d.request_timeout.as_deref(),
                DEFAULT_ETCD_REQUEST_TIMEOUT,
            ),
            keepalive: self.etcd_keepalive(d.keepalive.as_deref()),
            // Up to etcd's own request limit (1.5 MiB by default).
            max_value_size: self.bounded(
                "discovery.max_value_size",
                d.max_value_size,
                super::DEFAULT_MAX_VALUE_SIZE,
                64..=1536 * 1024,
            ),
            snapshot_path: d.snapshot_path.map(PathBuf::from),
        }
    }

    fn client_tls(&mut self, path: &str, t: RawClientTls) -> ClientTls {
        if t.cert.is_some() != t.key.is_some() {
            self.error(
                format!("{path}.{}", if t.cert.is_some() { "key" } else { "cert" }),
                "cert and key must be given together",
            );
        }
        ClientTls {
            ca: t.ca.map(PathBuf::from),
            cert: t.cert.map(PathBuf::from),
            key: t.key.map(PathBuf::from),
            server_name: t.server_name,
        }
    }

    fn timeouts(&mut self, t: RawTimeouts) -> Timeouts {
        Timeouts {
            connect: self.duration("timeouts.connect", t.connect.as_deref(), DEFAULT_CONNECT_TIMEOUT),
            request: self.duration("timeouts.request", t.request.as_deref(), DEFAULT_REQUEST_TIMEOUT),
            header_read: self.duration("timeouts.header_read", t.header_read.as_deref(), DEFAULT_HEADER_READ),
            tcp_idle: self.duration("timeouts.tcp_idle", t.tcp_idle.as_deref(), DEFAULT_TCP_IDLE),
            shutdown_grace: self.duration(
                "timeouts.shutdown_grace",
                t.shutdown_grace.as_deref(),
                DEFAULT_SHUTDOWN_GRACE,
            ),
            upstream_idle: self.duration("timeouts.upstream_idle", t.upstream_idle.as_deref(), DEFAULT_UPSTREAM_IDLE),
            client_idle: self.duration("timeouts.client_idle", t.client_idle.as_deref(), DEFAULT_CLIENT_IDLE),
            send: self.duration("timeouts.send", t.send.as_deref(), DEFAULT_SEND_TIMEOUT),
            tunnel_idle: self.duration("timeouts.tunnel_idle", t.tunnel_idle.as_deref(), DEFAULT_TUNNEL_IDLE),
        }
    }

    fn listener(&mut self, path: &str, l: RawListener) -> Option<Listener> {
        let name = self.required(&format!("{path}.name"), l.name);
        let listen = l.listen.map(|a| self.addr(&format!("{path}.listen"), &a));
        if listen.is_none() {
            self.error(format!("{path}.listen"), "required (e.g. \"0.0.0.0:8080\")");
        }
        let Some(protocol) = l.protocol else {
            self.error(format!("{path}.protocol"), "required (http, https, tcp, tls_passthrough)");
            return None;
        };
        let l4_fields =
            [("service", l.service.is_some()), ("balance", l.balance.is_some()), ("hash_key", l.hash_key.is_some())];
        if !matches!(protocol.as_str(), "http" | "https") {
            self.not_for(path, &protocol, &[("normalize_path", l.normalize_path.is_some())]);
        }
        let kind = match protocol.as_str() {
            "http" | "https" => {
                self.not_for(path, &protocol, &l4_fields);
                let routes = l
                    .routes
                    .into_iter()
                    .enumerate()
                    .filter_map(|(i, r)| self.route(&format!("{path}.route[{i}]"), r))
                    .collect();
                if protocol == "http" {
                    self.not_for(path, &protocol, &[("tls", !l.tls.is_empty())]);
                    ListenerKind::Http { routes }
                } else {
                    if l.tls.is_empty() {
                        self.error(
                            format!("{path}.tls"),
                            "an https listener needs at least one [[listener.tls]] certificate",
                        );
                    }
                    let certs = l
                        .tls
                        .into_iter()
                        .enumerate()
                        .filter_map(|(i, c)| self.server_cert(&format!("{path}.tls[{i}]"), c))
                        .collect();
                    ListenerKind::Https { routes, certs }
                }
            }
            "tcp" => {
                self.not_for(path, &protocol, &[("route", !l.routes.is_empty()), ("tls", !l.tls.is_empty())]);
                let service = self.required(&format!("{path}.service"), l.service);
                let balance = self.balance(path, l.balance.as_deref(), l.hash_key.as_deref(), true);
                ListenerKind::Tcp { service: service?, balance: balance? }
            }
            "tls_passthrough" => {
                self.not_for(path, &protocol, &l4_fields);
                self.not_for(path, &protocol, &[("tls", !l.tls.is_empty())]);
                if l.routes.is_empty() {
                    self.error(format!("{path}.route"), "a tls_passthrough listener needs at least one route with sni");
                }
                let routes = l
                    .routes
                    .into_iter()
                    .enumerate()
                    .filter_map(|(i, r)| self.sni_route(&format!("{path}.route[{i}]"), r))
                    .collect();
                ListenerKind::TlsPassthrough { routes }
            }
            other => {
                self.error(
                    format!("{path}.protocol"),
                    format!("unknown protocol {other:?} (expected http, https, tcp, tls_passthrough)"),
                );
                return None;
            }
        };
        let access_log = l.access_log.and_then(|a| match &kind {
            ListenerKind::Http { .. } | ListenerKind::Https { .. } => self.access_log(&format!("{path}.access_log"), a),
            _ => {
                self.error(format!("{path}.access_log"), format!("not used by protocol = {protocol:?}"));
                None
            }
        });
        Some(Listener {
            name: name?,
            listen: listen?,
            kind,
            access_log,
            normalize_path: l.normalize_path.unwrap_or(true),
        })
    }

    fn access_log(&mut self, path: &str, a: RawAccessLog) -> Option<AccessLogConfig> {
        let format = match a.format.as_deref().unwrap_or("json") {
            "json" => AccessLogFormat::Json,
            "combined" => AccessLogFormat::Combined,
            other => {
                self.error(format!("{path}.format"), format!("unknown format {other:?} (expected json, combined)"));
                AccessLogFormat::Json
            }
        };
        let queue = self.count(&format!("{path}.queue"), a.queue, DEFAULT_ACCESS_LOG_QUEUE);
        // The queue's slots are allocated up front.
        if queue > MAX_ACCESS_LOG_QUEUE {
            self.error(format!("{path}.queue"), format!("must be at most {MAX_ACCESS_LOG_QUEUE}, got {queue}"));
        }
        let file = self.required(&format!("{path}.path"), a.path)?;
        Some(AccessLogConfig { path: PathBuf::from(file), format, queue })
    }

    fn not_for(&mut self, path: &str, protocol: &str, fields: &[(&str, bool)]) {
        for (field, set) in fields {
            if *set {
                self.error(format!("{path}.{field}"), format!("not used by protocol = {protocol:?}"));
            }
        }
    }

    fn route(&mut self, path: &str, r: RawRoute) -> Option<Route> {
        if r.sni.is_some() {
            self.error(format!("{path}.sni"), "only tls_passthrough listeners route by sni");
        }
        if let Some(p) = &r.path_prefix {
            if !p.starts_with('/') {
                self.error(format!("{path}.path_prefix"), format!("{p:?} must start with '/'"));
            }
        }
        if r.strip_prefix == Some(true) && r.path_prefix.is_none() {
            self.error(format!("{path}.strip_prefix"), "needs path_prefix");
        }
        if let Some(g) = &r.grpc_service {
            if g.is_empty() || g.contains('/') {
                self.error(
                    format!("{path}.grpc_service"),
                    format!("{g:?} is not a gRPC service name (e.g. \"helloworld.Greeter\")"),
                );
            }
        }
        let header = r.header.and_then(|h| {
            let Some(name) = h.name else {
                self.error(format!("{path}.header.name"), "required");
                return None;
            };
            match HeaderName::from_bytes(name.as_bytes()) {
                Ok(name) => Some(HeaderMatch { name, value: h.value }),
                Err(_) => {
                    self.error(format!("{path}.header.name"), format!("{name:?} is not a valid header name"));
                    None
                }
            }
        });
        let host = r.host.map(|h| h.to_ascii_lowercase());
        let service = self.required(&format!("{path}.service"), r.service);
        let balance = self.balance(path, r.balance.as_deref(), r.hash_key.as_deref(), false);
        let timeout =
            r.timeout.as_deref().map(|t| self.duration(&format!("{path}.timeout"), Some(t), DEFAULT_REQUEST_TIMEOUT));
        let retry = r.retry.map(|retry| self.retry(&format!("{path}.retry"), retry));
        Some(Route {
            host,
            path_prefix: r.path_prefix,
            strip_prefix: r.strip_prefix.unwrap_or(false),
            header,
            grpc_service: r.grpc_service,
            service: service?,
            balance: balance?,
            timeout,
            retry,
            allow_connect: r.allow_connect.unwrap_or(false),
        })
    }

    fn sni_route(&mut self, path: &str, r: RawRoute) -> Option<SniRoute> {
        let fields = [
            ("host", r.host.is_some()),
            ("path_prefix", r.path_prefix.is_some()),
            ("strip_prefix", r.strip_prefix.is_some()),
            ("header", r.header.is_some()),
            ("grpc_service", r.grpc_service.is_some()),
            ("timeout", r.timeout.is_some()),
            ("retry", r.retry.is_some()),
            ("allow_connect", r.allow_connect.is_some()),
        ];
        for (field, set) in fields {
            if set {
                self.error(format!("{path}.{field}"), "tls_passthrough routes match by sni only");
            }
        }
        let sni = self.required(&format!("{path}.sni"), r.sni.map(|s| s.to_ascii_lowercase()));
        let service = self.required(&format!("{path}.service"), r.service);
        let balance = self.balance(path, r.balance.as_deref(), r.hash_key.as_deref(), true);
        Some(SniRoute { sni: sni?, service: service?, balance: balance? })
    }

    fn server_cert(&mut self, path: &str, c: RawServerCert) -> Option<ServerCert> {
        let cert = self.required(&format!("{path}.cert"), c.cert);
        let key = self.required(&format!("{path}.key"), c.key);
        Some(ServerCert {
            cert: PathBuf::from(cert?),
            key: PathBuf::from(key?),
            server_names: c.server_names.unwrap_or_default().into_iter().map(|n| n.to_ascii_lowercase()).collect(),
        })
    }

    /// `l4`: only what a TCP connection can be balanced on.
    fn balance(&mut self, path: &str, policy: Option<&str>, hash_key: Option<&str>, l4: bool) -> Option<Balance> {
        let balance = match policy.unwrap_or("round_robin") {
            "round_robin" => Balance::RoundRobin,
            "weighted" => Balance::Weighted,
            "least_request" => Balance::LeastRequest,
            "hash" => {
                let Some(key) = hash_key else {
                    let example = if l4 { "client_ip" } else { "header:x-user-id" };
                    self.error(
                        format!("{path}.hash_key"),
                        format!("required with balance = \"hash\" (e.g. \"{example}\")"),
                    );
                    return None;
                };
                let key = self.hash_key(&format!("{path}.hash_key"), key)?;
                if l4 && key != HashKey::ClientIp {
                    self.error(
                        format!("{path}.hash_key"),
                        format!(
                            "{:?} is not available for a TCP connection (expected client_ip)",
                            hash_key.unwrap_or_default()
                        ),
                    );
                    return None;
                }
                return Some(Balance::Hash(key));
            }
            other => {
                self.error(format!("{path}.balance"), format!("unknown policy {other:?} (expected {POLICIES})"));
                return None;
            }
        };
        if hash_key.is_some() {
            self.error(format!("{path}.hash_key"), "only used with balance = \"hash\"");
        }
        Some(balance)
    }

    fn hash_key(&mut self, path: &str, key: &str) -> Option<HashKey> {
        let expected = "(expected header:NAME, cookie:NAME, client_ip, path, query:NAME)";
        let parsed = match key.split_once(':') {
            None if key == "client_ip" => Some(HashKey::ClientIp),
            None if key == "path" => Some(HashKey::Path),
            Some(("header", name)) => HeaderName::from_bytes(name.as_bytes()).ok().map(HashKey::Header),
            Some(("cookie", name)) if !name.is_empty() => Some(HashKey::Cookie(name.to_string())),
            Some(("query", name)) if !name.is_empty() => Some(HashKey::Query(name.to_string())),
            _ => None,
        };
        if parsed.is_none() {
            self.error(path, format!("invalid hash key {key:?} {expected}"));
        }
        parsed
    }

    fn required(&mut self, path: &str, value: Option<String>) -> Option<String> {
        match value {
            Some(v) if !v.trim().is_empty() => Some(v),
            Some(_) => {
                self.error(path, "must not be empty");
                None
            }
            None => {
                self.error(path, "required");
                None
            }
        }
    }

    fn addr(&mut self, path: &str, text: &str) -> SocketAddr {
        text.parse().unwrap_or_else(|_| {
            self.error(path, format!("invalid address {text:?} (expected IP:PORT, e.g. \"127.0.0.1:8080\")"));
            SocketAddr::from(([0, 0, 0, 0], 0))
        })
    }

    pub(super) fn duration(&mut self, path: &str, text: Option<&str>, default: Duration) -> Duration {
        match text.map(parse_duration) {
            None => default,
            Some(Ok(d)) if !d.is_zero() => d,
            Some(Ok(_)) => {
                self.error(path, "must be greater than zero");
                default
            }
            Some(Err(reason)) => {
                self.error(path, reason);
                default
            }
        }
    }

    fn bounded(
        &mut self,
        path: &str,
        value: Option<i64>,
        default: usize,
        range: std::ops::RangeInclusive<usize>,
    ) -> usize {
        match value {
            None => default,
            Some(n) if n >= 0 && range.contains(&(n as usize)) => n as usize,
            Some(n) => {
                self.error(path, format!("must be between {} and {}, got {n}", range.start(), range.end()));
                default
            }
        }
    }

    pub(super) fn count(&mut self, path: &str, value: Option<i64>, default: usize) -> usize {
        match value {
            None => default,
            Some(n) if n >= 1 => n as usize,
            Some(n) => {
                self.error(path, format!("must be at least 1, got {n}"));
                default
            }
        }
    }
}
