//! How a request reaches its instance. Plain-text instances (HTTP/1.1 and h2c)
//! use their own pool, `pool`, reached through the picked endpoint: HTTP/1.1
//! requests run their exchange in the request's task (`h1`), except upgrades,
//! which use a hyper connection of the same pool. TLS
//! instances use pooled clients shared by every listener and keyed by instance
//! address inside each pool: HTTPS and h2 trusting the system bundle (instances
//! whose metadata says `https`/`h2`), and, per service with `upstream_tls`, an
//! HTTPS and an h2 pool with that service's CA, server name and client
//! certificate. Such a service's instances always use TLS, whatever their metadata.

use std::collections::HashMap;
use std::time::Duration;

use http::{Request, Response};
use http_body_util::Either;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::h1::{self, H1Error};
use super::pool::{PoolError, PoolSettings, SendLimits};
use super::request::{Aim, OutgoingHead};
use super::tls::{TlsSettings, UpstreamConnector, UpstreamTlsError, ALPN_H2, ALPN_HTTP1};
use super::{Protocol, ResponseBody, UpstreamBody};
use crate::config::{ClientTls, Config, ConfigError};
use crate::upstream::Endpoint;

pub type HttpClient = Client<UpstreamConnector, UpstreamBody>;

/// Why one send on one instance failed.
#[derive(Debug)]
pub struct SendError {
    /// Nothing reached the instance (connect, TLS handshake).
    pub connect: bool,
    /// Refused at once by the service's `max_pending`.
    pub overloaded: bool,
    /// The connection was closed by the instance before any byte of a response
    /// (hyper's "incomplete message"): the instance died or closed a keep-alive
    /// connection as the request went out.
    pub closed: bool,
    pub detail: String,
    /// The client's request body failed (malformed, cut short): a client fault.
    pub client_body: bool,
    /// The request's body, when the transport could give it back unsent.
    pub unsent: Option<UpstreamBody>,
}

/// How a request reaches its instance.
#[derive(Clone, Copy)]
pub enum Via<'a> {
    /// Plain HTTP/1.1 or h2c: the pool that lives with the endpoint (`Endpoint::pool`).
    Instance { h2: bool },
    /// A TLS pool shared by instances, keyed by address inside it.
    Shared { client: &'a HttpClient, h2: bool },
}

/// An HTTP/1.1 pool and an HTTP/2 pool with the same transport.
struct Pair {
    http1: HttpClient,
    h2: HttpClient,
}

impl Pair {
    fn get(&self, h2: bool) -> &HttpClient {
        if h2 {
            &self.h2
        } else {
            &self.http1
        }
    }
}

pub struct Upstreams {
    /// Settings of the per-instance pools (`instance_pool`).
    pub instance_pools: PoolSettings,
    tls: Pair,
    /// Services with their own `upstream_tls`. Usually empty: the lookup is then skipped.
    services: HashMap<Box<str>, Pair>,
}

impl Upstreams {
    /// Loads every service's `upstream_tls` files. Each such failure names the
    /// service's field and leaves the service out, so that the caller can go on
    /// building (and report) everything else before it refuses to start; only the
    /// shared TLS clients failing stops the build here.
    pub fn build(config: &Config) -> Result<(Upstreams, Vec<ConfigError>), ConfigError> {
        let mut errors = Vec::new();
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.timeouts.connect));
        connector.set_keepalive(Some(Duration::from_secs(60)));
        let pair = |tls: Option<&ClientTls>| -> Result<Pair, UpstreamTlsError> {
            let settings = |alpn| TlsSettings::new(tls, alpn).map(Some);
            let builder = || {
                let mut b = Client::builder(TokioExecutor::new());
                b.pool_idle_timeout(config.timeouts.upstream_idle)
                    .pool_max_idle_per_host(config.limits.upstream_idle_per_host)
                    .pool_timer(TokioTimer::new())
                    .timer(TokioTimer::new());
                b
            };
            Ok(Pair {
                http1: builder().build(UpstreamConnector::new(connector.clone(), settings(ALPN_HTTP1)?)),
                h2: builder().http2_only(true).build(UpstreamConnector::new(connector.clone(), settings(ALPN_H2)?)),
            })
        };
        let mut services = HashMap::new();
        for (i, s) in config.services.iter().enumerate() {
            if let Some(tls) = &s.upstream_tls {
                match pair(Some(tls)) {
                    Ok(pair) => drop(services.insert(s.name.as_str().into(), pair)),
                    Err(e) => {
                        errors.push(ConfigError { path: format!("service[{i}].upstream_tls"), reason: e.to_string() })
                    }
                }
            }
        }
        // The system trust store is optional (see `tls::roots`): no file can fail this.
        let tls = pair(None).map_err(|e| ConfigError { path: String::new(), reason: format!("upstream TLS: {e}") })?;
        let upstreams = Upstreams {
            instance_pools: PoolSettings {
                connect_timeout: config.timeouts.connect,
                max_idle: config.limits.upstream_idle_per_host,
                idle_timeout: config.timeouts.upstream_idle,
            },
            tls,
            services,
        };
        Ok((upstreams, errors))
    }

    /// Where one request goes: the instance's own pool (plain text), or a shared TLS pool.
    pub fn client(&self, service: &str, protocol: Protocol) -> Via<'_> {
        if !self.services.is_empty() {
            if let Some(pair) = self.services.get(service) {
                return Via::Shared { client: pair.get(protocol.is_h2()), h2: protocol.is_h2() };
            }
        }
        match protocol {
            Protocol::Http1 => Via::Instance { h2: false },
            Protocol::H2c => Via::Instance { h2: true },
            Protocol::Https | Protocol::H2 => {
                Via::Shared { client: self.tls.get(protocol.is_h2()), h2: protocol.is_h2() }
            }
        }
    }
}

impl Upstreams {
    /// Sends the request (`head`, lent for this try, and `body`) on `endpoint`'s
    /// connection the way `via` says. The one place the retry loop reaches the
    /// network, so a new transport only changes this function.
    pub async fn send(
        &self,
        via: Via<'_>,
        endpoint: &Endpoint,
        head: &OutgoingHead,
        body: UpstreamBody,
        limits: SendLimits<'_>,
    ) -> Result<Response<ResponseBody>, SendError> {
        let pool_error = |(e, unsent): (PoolError, Option<UpstreamBody>)| SendError {
            connect: e.is_connect() || matches!(e, PoolError::Pending),
            overloaded: matches!(e, PoolError::Pending),
            closed: match &e {
                PoolError::Request(h) => peer_closed(h),
                PoolError::H2Request(h2) => h2.peer_closed(),
                _ => false,
            },
            client_body: match &e {
                PoolError::Request(he) => client_body_failed(he),
                PoolError::H2Request(h2) => h2.client_body,
                _ => false,
            },
            detail: e.to_string(),
            unsent,
        };
        let hyper = |res: Response<Incoming>| res.map(|body| Either::Left(Either::Left(body)));
        match via {
            // Plain requests, with a body or without: the exchange runs in this task
            // (`h1`), the upload going on while the response streams back. Upgrades
            // stay on hyper's connection (`pool.send`), whose 101 hands both sides to
            // the relay.
            Via::Instance { h2: false } if !head.upgrade => {
                let mut lines = Default::default();
                match endpoint.pool.send_h1(head.h1(&mut lines), body, self.instance_pools, limits).await {
                    Ok(res) => Ok(res.map(Either::Right)),
                    Err(h1::SendError { error: e, unsent }) => Err(SendError {
                        connect: e.is_connect(),
                        overloaded: matches!(e, H1Error::Pending),
                        closed: matches!(e, H1Error::ClosedBeforeResponse),
                        // The request body that failed, or was not as long as it said, is
                        // the client's (`Incoming`).
                        client_body: matches!(e, H1Error::RequestBody(_) | H1Error::RequestLength(_)),
                        detail: e.to_string(),
                        unsent,
                    }),
                }
            }
            Via::Instance { h2: false } => {
                let req = head.request(body, Aim::Http1);
                let sent = endpoint.pool.send(req, self.instance_pools, limits).await;
                sent.map(hyper).map_err(|(e, unsent)| pool_error((e, unsent.map(Request::into_body))))
            }
            Via::Instance { h2: true } => {
                let req = head.request(body, Aim::H2 { authority: &endpoint.authority, tls: false });
                // Boxed: the largest of these futures, it would size every request's.
                let sent = Box::pin(endpoint.pool.send_h2(req, self.instance_pools)).await;
                sent.map(|res| res.map(|body| Either::Left(Either::Right(body)))).map_err(pool_error)
            }
            Via::Shared { client, h2 } => {
                let authority = &endpoint.authority;
                let aim = if h2 { Aim::H2 { authority, tls: true } } else { Aim::Https { authority } };
                client.request(head.request(body, aim)).await.map(hyper).map_err(|e| SendError {
                    connect: e.is_connect(),
                    overloaded: false,
                    closed: std::error::Error::source(&e)
                        .and_then(|s| s.downcast_ref::<hyper::Error>())
                        .is_some_and(peer_closed),
                    client_body: client_body_failed(&e),
                    detail: format!("{e:?}"),
                    unsent: None,
                })
            }
        }
    }
}

/// Whether the instance closed or reset the connection before any response byte
/// (its process died, or it dropped a keep-alive connection as the request went out).
fn peer_closed(e: &hyper::Error) -> bool {
    if e.is_incomplete_message() {
        return true;
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            return matches!(io.kind(), ConnectionReset | BrokenPipe | ConnectionAborted | UnexpectedEof);
        }
        source = s.source();
    }
    false
}

/// Whether an upstream send failed because the request body did: hyper's client
/// reports a failing body as a user error whose source is the body's own error —
/// here the `hyper::Error` of the client connection's `Incoming`. Failures of the
/// upstream connection have I/O or protocol errors as their source instead.
fn client_body_failed(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(he) = err.downcast_ref::<hyper::Error>() {
            if he.is_user() {
                return std::error::Error::source(he).is_some_and(|s| s.downcast_ref::<hyper::Error>().is_some());
            }
        }
        cur = err.source();
    }
    false
}
