//! Pooled upstream clients: one keep-alive pool for HTTP/1.1 and one for h2c,
//! each keyed by the instance address, shared by every listener.

use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::Config;
use crate::upstream::Protocol;

pub type HttpClient = Client<HttpConnector, Incoming>;

/// How long an unused pooled connection is kept.
const POOL_IDLE: Duration = Duration::from_secs(90);

pub struct Upstreams {
    http1: HttpClient,
    h2c: HttpClient,
}

impl Upstreams {
    pub fn new(config: &Config) -> Upstreams {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.timeouts.connect));
        connector.set_keepalive(Some(Duration::from_secs(60)));
        let builder = || {
            let mut b = Client::builder(TokioExecutor::new());
            b.pool_idle_timeout(POOL_IDLE)
                .pool_max_idle_per_host(config.limits.upstream_idle_per_host)
                .pool_timer(TokioTimer::new())
                .timer(TokioTimer::new());
            b
        };
        let http1 = builder().build(connector.clone());
        let h2c = builder().http2_only(true).build(connector);
        Upstreams { http1, h2c }
    }

    pub fn client(&self, protocol: Protocol) -> &HttpClient {
        if protocol.is_h2() {
            &self.h2c
        } else {
            &self.http1
        }
    }
}
