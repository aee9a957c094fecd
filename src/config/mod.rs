//! Configuration: the TOML file read into raw serde structs (`raw`), then
//! validated into the runtime types below (`validate`), reporting every bad field
//! with its path. Nothing binds a port before a `Config` exists.

mod duration;
pub mod host;
mod raw;
#[cfg(test)]
mod tests;
mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderName;

pub use duration::parse_duration;
pub use host::HostPattern;
pub use validate::{ConfigError, ConfigErrors};

pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9901";
pub const DEFAULT_INSTANCES_PATH: &str = "config/instances.toml";
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(500);
pub const DEFAULT_ETCD_PREFIX: &str = "/services/";
pub const DEFAULT_DIAL_TIMEOUT: Duration = Duration::from_secs(2);
pub const DEFAULT_ETCD_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 keepalive ping interval to etcd. etcd refuses pings more often than its
/// `--grpc-keepalive-min-time` (default 5 s) with GOAWAY, which ends the watch;
/// 10 s leaves margin (etcd's own server-side ping interval defaults to 2 h,
/// gRPC's client default is off; 10 s notices a dead peer within 20 s).
pub const DEFAULT_ETCD_KEEPALIVE: Duration = Duration::from_secs(10);
/// etcd's default `--grpc-keepalive-min-time`: the floor for the interval.
pub const MIN_ETCD_KEEPALIVE: Duration = Duration::from_secs(5);
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_CLIENT_IDLE: Duration = Duration::from_secs(60);
pub const DEFAULT_HEADER_READ: Duration = Duration::from_secs(10);
pub const DEFAULT_TCP_IDLE: Duration = Duration::from_secs(300);
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
pub const DEFAULT_MAX_CONNECTIONS: usize = 65_536;
pub const DEFAULT_UPSTREAM_IDLE_PER_HOST: usize = 256;

/// The quick-start configuration compiled into the binary (`switchyard demo`).
pub const EMBEDDED_DEFAULT: &str = include_str!("../../config/quickstart.toml");

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub workers: usize,
    pub admin_listen: SocketAddr,
    pub discovery: Discovery,
    pub timeouts: Timeouts,
    pub limits: Limits,
    pub listeners: Vec<Listener>,
    pub services: Vec<ServiceConfig>,
}

#[derive(Debug, Clone)]
pub enum Discovery {
    File(FileDiscovery),
    Etcd(Box<EtcdDiscovery>),
}

#[derive(Debug, Clone)]
pub struct FileDiscovery {
    pub path: PathBuf,
    pub poll_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct EtcdDiscovery {
    pub endpoints: Vec<String>,
    /// Every prefix ends with `/`; a leading `/` is not required (etcd's
    /// `naming/endpoints` layout is `foo/bar/my-service/1.2.3.4`).
    pub prefixes: Vec<String>,
    pub auth: Option<(String, String)>,
    pub tls: Option<ClientTls>,
    pub dial_timeout: Duration,
    pub request_timeout: Duration,
    /// HTTP/2 keepalive ping interval (and ping timeout); never below 5 s.
    pub keepalive: Duration,
    pub snapshot_path: Option<PathBuf>,
}

/// Files for a TLS client (etcd or an upstream).
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub server_name: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Timeouts {
    /// Upstream TCP connect.
    pub connect: Duration,
    /// Upstream response headers after the request was sent.
    pub request: Duration,
    /// Reading a client's request head.
    pub header_read: Duration,
    /// A TCP-proxied connection with no bytes either way.
    pub tcp_idle: Duration,
    /// How long in-flight requests may run after SIGTERM.
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    pub upstream_idle_per_host: usize,
}

#[derive(Debug, Clone)]
pub struct Listener {
    pub name: String,
    pub listen: SocketAddr,
    pub kind: ListenerKind,
}

#[derive(Debug, Clone)]
pub enum ListenerKind {
    /// HTTP/1.1 and h2c (prior knowledge) on one port.
    Http { routes: Vec<Route> },
    /// TLS termination, then HTTP/1.1 or h2 by ALPN.
    Https { routes: Vec<Route>, certs: Vec<ServerCert> },
    /// L4: every connection to one service.
    Tcp { service: String, balance: Balance },
    /// L4 by the ClientHello's SNI, without terminating TLS.
    TlsPassthrough { routes: Vec<SniRoute> },
}

impl ListenerKind {
    pub fn protocol(&self) -> &'static str {
        match self {
            ListenerKind::Http { .. } => "http",
            ListenerKind::Https { .. } => "https",
            ListenerKind::Tcp { .. } => "tcp",
            ListenerKind::TlsPassthrough { .. } => "tls_passthrough",
        }
    }
}

/// An L7 route: every present matcher must match; first matching route wins.
#[derive(Debug, Clone)]
pub struct Route {
    pub host: Option<String>,
    pub path_prefix: Option<String>,
    pub strip_prefix: bool,
    pub header: Option<HeaderMatch>,
    pub grpc_service: Option<String>,
    pub service: String,
    pub balance: Balance,
}

#[derive(Debug, Clone)]
pub struct HeaderMatch {
    pub name: HeaderName,
    /// `None`: the header only has to be present.
    pub value: Option<String>,
}

#[derive(Debug, Clone)]
pub struct SniRoute {
    /// Exact name or `*.suffix`.
    pub sni: String,
    pub service: String,
    pub balance: Balance,
}

#[derive(Debug, Clone)]
pub struct ServerCert {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Empty: the names in the certificate.
    pub server_names: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub name: String,
    pub upstream_tls: Option<ClientTls>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    Weighted,
    LeastRequest,
    Hash(HashKey),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    Header(HeaderName),
    Cookie(String),
    ClientIp,
    Path,
    Query(String),
}

impl Config {
    /// Reads and validates a file; every problem is reported, each with its field path.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigErrors::single(String::new(), format!("cannot read {}: {e}", path.display())))?;
        Config::parse(&text)
    }

    /// Parses and validates TOML text.
    pub fn parse(text: &str) -> Result<Config, ConfigErrors> {
        validate::parse(text)
    }
}
