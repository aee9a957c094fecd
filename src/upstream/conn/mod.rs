//! Connections to upstream instances: each plain-text instance's own pool
//! (`pool`: HTTP/1.1 keep-alive and one multiplexed h2c connection), the shared
//! TLS clients (`client`), and upstream TLS settings (`tls`).

pub(crate) mod client;
pub mod h1;
pub(crate) mod pool;
pub(crate) mod tls;

pub(crate) use client::{Upstreams, Via};

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
