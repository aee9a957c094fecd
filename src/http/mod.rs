//! The L7 request path, in named parts: `route` (pure matching of a request to
//! a service), `headers` (hop-by-hop removal, `X-Forwarded-*`), `grpc` (gRPC
//! detection, deadlines and status codes), `upgrade` (WebSocket and other
//! `Upgrade` relays), `respond` (every answer the gateway makes itself),
//! `canonical` (pure host and path canonicalisation) and `admit` (loop, tunnel
//! and canonical-request checks before routing), `request_id` (`x-request-id`),
//! `access_log` (one line per request, written off the request path), and
//! `proxy`, which runs them for each request and sends it upstream.

pub(crate) mod access_log;
mod admit;
pub(crate) mod canonical;
pub(crate) mod grpc;
pub(crate) mod headers;
pub(crate) mod plan;
mod present;
mod proxy;
pub(crate) mod request_id;
pub(crate) mod respond;
pub(crate) mod route;
pub(crate) mod send;
pub(crate) mod upgrade;

pub(crate) use proxy::{Client, HttpProxy};
