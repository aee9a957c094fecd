//! The data path: listeners by protocol, route matching, the HTTP proxy and its
//! upstream client pools, and the responses the gateway produces itself.

pub mod client;
pub mod grpc;
pub mod headers;
pub mod http;
pub mod instance_pool;
pub mod passthrough;
pub mod respond;
pub mod route;
pub mod sni;
pub mod stats;
pub mod tcp;
pub mod tls;
pub mod upgrade;
pub mod upstream_tls;
