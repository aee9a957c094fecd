//! `tls_passthrough` listeners: the ClientHello's SNI chooses the service, and the
//! TLS session stays end to end between client and backend — the gateway never
//! holds a key. The hello is read and buffered (see [`super::sni`]), matched
//! against the routes — an exact name first, then `*.parent` (one label, the rule of
//! [`crate::config::host`]) —
//! and replayed to the upstream before the relay of [`super::tcp`] takes over.
//!
//! A hello with an unrouted name, or no name, is closed and counted in
//! `switchyard_sni_unknown_total`; bytes that are not a ClientHello at all are
//! closed and counted in `switchyard_bad_requests_total` with the reason.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use metrics::Counter;
use tokio::net::{TcpListener, TcpStream};

use super::accept::{accept_loop, Accepted, ListenerContext};
use super::sni::{read_client_hello, SniError};
use super::tcp::{log_end, L4Proxy};
use crate::config::host::{trim_root, wildcard_parent};
use crate::config::{Balance, Config, HostPattern, SniRoute};
use crate::metrics as m;
use crate::upstream::SharedTable;

/// Where a name goes: the service and how to pick among its instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SniTarget {
    pub service: String,
    pub balance: Balance,
}

/// The routes of one listener, compiled for lookup by the shared host rule
/// ([`crate::config::host`]): an exact name first, then `*.parent`.
#[derive(Debug, Default)]
pub struct SniRouter {
    exact: HashMap<Box<str>, SniTarget>,
    /// Keyed by the wildcard's parent: `*.example.com` → `example.com`.
    wildcard: HashMap<Box<str>, SniTarget>,
}

impl SniRouter {
    /// When a name appears twice, the first route wins, as everywhere else in the config.
    pub fn new(routes: &[SniRoute]) -> SniRouter {
        let mut router = SniRouter::default();
        for r in routes {
            let target = SniTarget { service: r.service.clone(), balance: r.balance.clone() };
            match HostPattern::parse(&r.sni) {
                HostPattern::Wildcard(parent) => router.wildcard.entry(parent).or_insert(target),
                HostPattern::Exact(name) => router.exact.entry(name).or_insert(target),
            };
        }
        router
    }

    /// The target for a server name (any case).
    pub fn route(&self, sni: &str) -> Option<&SniTarget> {
        let name = trim_root(sni).to_ascii_lowercase();
        if let Some(t) = self.exact.get(name.as_str()) {
            return Some(t);
        }
        self.wildcard.get(wildcard_parent(&name)?)
    }
}

/// Counters of one passthrough listener, registered once.
struct Refusals {
    unknown_sni: Counter,
    /// One per [`SniError::reason`].
    bad_hello: HashMap<&'static str, Counter>,
}

impl Refusals {
    const REASONS: [&'static str; 7] =
        ["not_tls", "not_client_hello", "malformed", "too_large", "timeout", "closed", "io"];

    fn new(listener: &str) -> Refusals {
        let bad_hello = Self::REASONS
            .iter()
            .map(|&reason| {
                let label = format!("client_hello_{reason}");
                (reason, metrics::counter!(m::BAD_REQUESTS, "listener" => listener.to_string(), "reason" => label))
            })
            .collect();
        Refusals { unknown_sni: metrics::counter!(m::SNI_UNKNOWN, "listener" => listener.to_string()), bad_hello }
    }

    fn bad_hello(&self, e: &SniError) {
        if let Some(c) = self.bad_hello.get(e.reason()) {
            c.increment(1);
        }
    }
}

/// A `tls_passthrough` listener, built.
pub(crate) struct Passthrough {
    router: SniRouter,
    proxy: L4Proxy,
    hello_timeout: Duration,
    refusals: Refusals,
}

impl Passthrough {
    pub fn new(name: &str, table: SharedTable, routes: &[SniRoute], config: &Config) -> Passthrough {
        Passthrough {
            router: SniRouter::new(routes),
            proxy: L4Proxy::new(name, table, &config.timeouts),
            // A ClientHello is the client's request head.
            hello_timeout: config.timeouts.header_read,
            refusals: Refusals::new(name),
        }
    }

    pub async fn serve(self, name: &str, socket: TcpListener, ctx: &ListenerContext<'_>) {
        let passthrough = Arc::new(self);
        accept_loop(name, socket, ctx, |Accepted { stream, peer, slot }| {
            let passthrough = passthrough.clone();
            ctx.spawn_tracked(async move {
                passthrough.connection(stream, peer).await;
                drop(slot);
            });
        })
        .await
    }
}

impl Passthrough {
    async fn connection(&self, mut stream: TcpStream, peer: SocketAddr) {
        let listener = self.proxy.listener();
        let (hello, sni) = match read_client_hello(&mut stream, self.hello_timeout).await {
            Ok(h) => h,
            Err(e) => {
                self.refusals.bad_hello(&e);
                tracing::debug!(%listener, %peer, "closing: {e}");
                return;
            }
        };
        let Some(target) = sni.as_deref().and_then(|name| self.router.route(name)) else {
            self.refusals.unknown_sni.increment(1);
            tracing::debug!(%listener, %peer, sni = sni.as_deref().unwrap_or("<none>"), "closing: no route for this server name");
            return;
        };
        let result = self.proxy.proxy(&mut stream, peer, &target.service, &target.balance, &hello).await;
        log_end(listener, peer, &result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(sni: &str, service: &str) -> SniRoute {
        SniRoute { sni: sni.into(), service: service.into(), balance: Balance::RoundRobin }
    }

    fn service<'a>(router: &'a SniRouter, name: &str) -> Option<&'a str> {
        router.route(name).map(|t| t.service.as_str())
    }

    #[test]
    fn exact_names_win_over_wildcards_which_match_one_label() {
        let router = SniRouter::new(&[
            route("*.example.com", "wild"),
            route("api.example.com", "api"),
            route("*.eu.example.com", "eu"),
            route("api.example.com", "shadowed"),
        ]);
        assert_eq!(service(&router, "api.example.com"), Some("api"));
        assert_eq!(service(&router, "www.example.com"), Some("wild"));
        assert_eq!(service(&router, "a.b.example.com"), None);
        assert_eq!(service(&router, "WWW.Example.com."), Some("wild"));
        assert_eq!(service(&router, "x.eu.example.com"), Some("eu"));
        assert_eq!(service(&router, "example.com"), None);
        assert_eq!(service(&router, ".example.com"), None);
        assert_eq!(service(&router, "badexample.com"), None);
        assert_eq!(service(&router, "other.org"), None);
    }

    #[test]
    fn an_empty_router_routes_nothing() {
        assert_eq!(service(&SniRouter::new(&[]), "a.example.com"), None);
    }
}
