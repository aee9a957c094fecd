//! The data path: listeners by protocol, route matching, the HTTP proxy and its
//! upstream client pools, and the responses the gateway produces itself.

pub mod client;
pub mod headers;
pub mod http;
pub mod respond;
pub mod route;
pub mod stats;
