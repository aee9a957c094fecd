//! The TOML schema exactly as users write it: plain serde structs, every field
//! optional where a default exists, unknown fields rejected. Nothing here is
//! validated; `validate.rs` turns these into the runtime [`super::Config`].

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub runtime: RawRuntime,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub discovery: RawDiscovery,
    #[serde(default)]
    pub timeouts: RawTimeouts,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default, rename = "listener")]
    pub listeners: Vec<RawListener>,
    #[serde(default, rename = "service")]
    pub services: Vec<RawService>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRuntime {
    pub workers: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDiscovery {
    pub source: Option<String>,
    // file source
    pub path: Option<String>,
    pub poll_interval: Option<String>,
    // etcd source
    pub endpoints: Option<Vec<String>>,
    pub prefixes: Option<Vec<String>>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub tls: Option<RawClientTls>,
    pub dial_timeout: Option<String>,
    pub request_timeout: Option<String>,
    pub keepalive: Option<String>,
    pub snapshot_path: Option<String>,
}

/// TLS settings of a client connection (to etcd or to an upstream).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClientTls {
    pub ca: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
    pub server_name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    pub connect: Option<String>,
    pub request: Option<String>,
    pub header_read: Option<String>,
    pub tcp_idle: Option<String>,
    pub shutdown_grace: Option<String>,
    pub upstream_idle: Option<String>,
    pub client_idle: Option<String>,
    pub send: Option<String>,
    pub tunnel_idle: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_connections: Option<i64>,
    pub upstream_idle_per_host: Option<i64>,
    pub max_request_head: Option<i64>,
    pub max_request_headers: Option<i64>,
    pub h2_max_concurrent_streams: Option<i64>,
    pub admin_max_connections: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub name: Option<String>,
    pub protocol: Option<String>,
    pub listen: Option<String>,
    #[serde(default, rename = "route")]
    pub routes: Vec<RawRoute>,
    #[serde(default)]
    pub tls: Vec<RawServerCert>,
    // tcp listeners
    pub service: Option<String>,
    pub balance: Option<String>,
    pub hash_key: Option<String>,
    // http and https listeners
    pub access_log: Option<RawAccessLog>,
    pub normalize_path: Option<bool>,
}

/// `access_log = { path = "...", format = "json" }` on an HTTP(S) listener.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccessLog {
    pub path: Option<String>,
    pub format: Option<String>,
    pub queue: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub host: Option<String>,
    pub path_prefix: Option<String>,
    pub strip_prefix: Option<bool>,
    pub header: Option<RawHeaderMatch>,
    pub grpc_service: Option<String>,
    pub sni: Option<String>,
    pub service: Option<String>,
    pub balance: Option<String>,
    pub hash_key: Option<String>,
    pub timeout: Option<String>,
    pub retry: Option<RawRetry>,
    pub allow_connect: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeaderMatch {
    pub name: Option<String>,
    pub value: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServerCert {
    pub cert: Option<String>,
    pub key: Option<String>,
    pub server_names: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    pub name: Option<String>,
    pub upstream_tls: Option<RawClientTls>,
    pub outlier: Option<RawOutlier>,
    pub health_check: Option<RawHealthCheck>,
    pub max_connections: Option<i64>,
    pub max_inflight: Option<i64>,
    pub max_pending: Option<i64>,
    pub slow_start: Option<String>,
    pub retry_budget: Option<RawRetryBudget>,
}

/// `listener.route.retry`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    pub attempts: Option<i64>,
    pub on: Option<Vec<String>>,
    pub per_try_timeout: Option<String>,
    pub non_idempotent: Option<bool>,
    pub buffer: Option<i64>,
}

/// `service.outlier`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutlier {
    pub enabled: Option<bool>,
    pub consecutive_failures: Option<i64>,
    pub consecutive_connect_failures: Option<i64>,
    pub base_ejection: Option<String>,
    pub max_ejection: Option<String>,
    pub max_ejected_percent: Option<i64>,
}

/// `service.health_check`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    pub kind: Option<String>,
    pub path: Option<String>,
    pub host: Option<String>,
    pub status: Option<String>,
    pub grpc_service: Option<String>,
    pub interval: Option<String>,
    pub jitter: Option<String>,
    pub timeout: Option<String>,
    pub healthy_threshold: Option<i64>,
    pub unhealthy_threshold: Option<i64>,
    pub unchecked: Option<String>,
}

/// `service.retry_budget`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetryBudget {
    pub percent: Option<i64>,
    pub min_concurrency: Option<i64>,
}
