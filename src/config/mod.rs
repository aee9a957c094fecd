//! Configuration: the TOML file read into raw serde structs (`raw`), then
//! validated into the runtime types below (`validate`), reporting every bad field
//! with its path. Nothing binds a port before a `Config` exists.

mod duration;
pub mod host;
mod policy;
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
pub use policy::*;
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
/// Access log lines waiting for the writer, per log (about 1 MiB at 250 bytes a
/// line); beyond it lines are dropped and counted, never waited for.
pub const DEFAULT_ACCESS_LOG_QUEUE: usize = 4096;
pub const MAX_ACCESS_LOG_QUEUE: usize = 1 << 20;
/// etcd values above this are refused before parsing: a registration is a few
/// hundred bytes, and etcd's own request limit (1.5 MiB) would let one key cost
/// megabytes per table build. Envoy's and HAProxy's header limits are of the same order.
pub const DEFAULT_MAX_VALUE_SIZE: usize = 64 * 1024;
/// How long an unused upstream connection is kept (nginx's upstream `keepalive_timeout`
/// is 60 s, HAProxy's `timeout server` default none; 90 s outlives common 60 s backend
/// keep-alives less often than it is reused).
pub const DEFAULT_UPSTREAM_IDLE: Duration = Duration::from_secs(90);
/// nginx `send_timeout` (60 s).
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// Like `tcp_idle`: an upgraded connection is a byte relay.
pub const DEFAULT_TUNNEL_IDLE: Duration = Duration::from_secs(300);
/// Envoy answers 431 above 60 KiB; nginx allows 4 × 8 KiB buffers, HAProxy 16 KiB.
pub const DEFAULT_MAX_REQUEST_HEAD: usize = 64 * 1024;
/// Envoy `max_headers_count` (100), also hyper's default.
pub const DEFAULT_MAX_REQUEST_HEADERS: usize = 100;
/// nginx `http2_max_concurrent_streams` (128); HAProxy uses 100.
pub const DEFAULT_H2_MAX_CONCURRENT_STREAMS: usize = 128;
pub const DEFAULT_ADMIN_MAX_CONNECTIONS: usize = 32;

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

#[derive(Debug, Clone, PartialEq)]
pub enum Discovery {
    File(FileDiscovery),
    Etcd(Box<EtcdDiscovery>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct FileDiscovery {
    pub path: PathBuf,
    pub poll_interval: Duration,
}

#[derive(Debug, Clone, PartialEq)]
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
    /// etcd values above this many bytes are refused (and counted) before parsing.
    pub max_value_size: usize,
    pub snapshot_path: Option<PathBuf>,
}

/// Files for a TLS client (etcd or an upstream).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClientTls {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub server_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
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
    /// How long an unused pooled upstream connection is kept.
    pub upstream_idle: Duration,
    /// A client connection with no request in flight (HTTP/1.1 keep-alive, HTTP/2),
    /// or with requests in flight but no bytes either way.
    pub client_idle: Duration,
    /// A response write the client does not take (it stopped reading).
    pub send: Duration,
    /// An upgraded (e.g. WebSocket) connection with no bytes either way.
    pub tunnel_idle: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub max_connections: usize,
    pub upstream_idle_per_host: usize,
    /// Bytes of an HTTP/1.1 request head (431 above), and of an HTTP/2 header list.
    pub max_request_head: usize,
    pub max_request_headers: usize,
    pub h2_max_concurrent_streams: usize,
    pub admin_max_connections: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    pub name: String,
    pub listen: SocketAddr,
    pub kind: ListenerKind,
    /// HTTP(S) listeners only; off by default.
    pub access_log: Option<AccessLogConfig>,
    /// HTTP listeners: dot-segments and unreserved percent-escapes in paths are
    /// normalised before routing (Envoy's `normalize_path`).
    pub normalize_path: bool,
}

/// Where and how an HTTP(S) listener writes one line per request.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessLogConfig {
    /// Opened for appending (created if missing) at start and at every reload.
    pub path: PathBuf,
    pub format: AccessLogFormat,
    /// Lines waiting for the writer before new ones are dropped.
    pub queue: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLogFormat {
    /// One JSON object per line.
    Json,
    /// nginx's `combined` format, then `key=value` fields.
    Combined,
}

#[derive(Debug, Clone, PartialEq)]
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
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub host: Option<String>,
    pub path_prefix: Option<String>,
    pub strip_prefix: bool,
    pub header: Option<HeaderMatch>,
    pub grpc_service: Option<String>,
    pub service: String,
    pub balance: Balance,
    /// This route's request deadline; `None`: `timeouts.request`.
    pub timeout: Option<Duration>,
    /// What may be retried after a request was sent; `None`: [`RetryPolicy::default`].
    pub retry: Option<RetryPolicy>,
    /// `CONNECT` requests are answered 405 unless the route that matches them allows them.
    pub allow_connect: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HeaderMatch {
    pub name: HeaderName,
    /// `None`: the header only has to be present.
    pub value: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SniRoute {
    /// Exact name or `*.suffix`.
    pub sni: String,
    pub service: String,
    pub balance: Balance,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerCert {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Empty: the names in the certificate.
    pub server_names: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServiceConfig {
    pub name: String,
    pub upstream_tls: Option<ClientTls>,
    /// Outlier ejection, health checks, limits, slow start and the retry budget.
    pub policy: ServicePolicy,
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

    /// Valid but risky settings, for `check` and start-up to print.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if !self.admin_listen.ip().is_loopback() {
            // The admin listener has no authentication: /upstreams shows every backend address.
            warnings.push(format!(
                "admin.listen: {} is not a loopback address; the admin endpoints (/metrics, /upstreams) \
                 have no authentication, so anyone who can reach it can read them",
                self.admin_listen
            ));
        }
        warnings
    }
}
