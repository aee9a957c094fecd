//! Connections to upstream instances: each plain-text instance's own pool
//! (`pool`: HTTP/1.1 keep-alive and one multiplexed h2c connection), the shared
//! TLS clients (`client`), and upstream TLS settings (`tls`).

pub(crate) mod client;
pub(crate) mod pool;
pub(crate) mod tls;

pub(crate) use client::{Upstreams, Via};

/// How the gateway talks to this instance (metadata `protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Http1,
    H2c,
    Https,
    H2,
}

impl Protocol {
    pub fn is_tls(self) -> bool {
        matches!(self, Protocol::Https | Protocol::H2)
    }
    pub fn is_h2(self) -> bool {
        matches!(self, Protocol::H2c | Protocol::H2)
    }
}

/// Why talking to an upstream failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamError {
    /// No live instance to send to.
    NoInstance,
    /// TCP (or TLS) connect to the instance failed.
    Connect,
    /// No response head within the request timeout.
    Timeout,
    /// The connection failed after it was established.
    Protocol,
}

impl UpstreamError {
    pub(crate) const ALL: [UpstreamError; 4] =
        [UpstreamError::NoInstance, UpstreamError::Connect, UpstreamError::Timeout, UpstreamError::Protocol];

    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamError::NoInstance => "no_instance",
            UpstreamError::Connect => "connect",
            UpstreamError::Timeout => "timeout",
            UpstreamError::Protocol => "protocol",
        }
    }
}
