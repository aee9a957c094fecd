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
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_connections: Option<i64>,
    pub upstream_idle_per_host: Option<i64>,
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
}
