//! Connections to upstream instances: each plain-text instance's own pool
//! (`pool`: HTTP/1.1 keep-alive, `h1`, and one multiplexed h2c connection, `h2`),
//! the shared TLS clients (`client`), and upstream TLS settings (`tls`).

pub(crate) mod client;
pub mod h1;
pub(crate) mod h2;
pub(crate) mod pool;
pub(crate) mod request;
mod slot;
pub(crate) mod tls;

pub(crate) use client::Upstreams;
pub(crate) use request::OutgoingHead;

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

/// What the gateway sends upstream: a body kept in memory (so it can be sent again
/// on a retry), or the client's body streamed once.
pub type UpstreamBody = http_body_util::Either<http_body_util::Full<bytes::Bytes>, hyper::body::Incoming>;

/// A response body from upstream: hyper's (TLS, upgrades) or h2c's (`h2`), or the
/// in-task HTTP/1.1 exchange's (`h1`).
pub type ResponseBody = http_body_util::Either<http_body_util::Either<hyper::body::Incoming, h2::H2Body>, h1::H1Body>;

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
    /// Every admissible instance is at its limit, or too many requests wait: refused at once.
    Overloaded,
}

impl UpstreamError {
    pub(crate) const ALL: [UpstreamError; 5] = [
        UpstreamError::NoInstance,
        UpstreamError::Connect,
        UpstreamError::Timeout,
        UpstreamError::Protocol,
        UpstreamError::Overloaded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamError::NoInstance => "no_instance",
            UpstreamError::Connect => "connect",
            UpstreamError::Timeout => "timeout",
            UpstreamError::Protocol => "protocol",
            UpstreamError::Overloaded => "overloaded",
        }
    }
}
