//! Listeners: the accept loop and connection limit they share (`accept`), and
//! one kind per protocol — `http` (HTTP/1.1 and h2c), `https` (TLS termination
//! with the certificates of `certs`, then HTTP/1.1 or h2), `tcp` (L4 relay) and
//! `tls_passthrough` (routes by the ClientHello's SNI, parsed by `sni`).
//!
//! A listener is made in two steps: [`build`] makes everything it needs and can
//! fail (certificates, routes); [`Built::serve`] only accepts and cannot. An
//! HTTP listener reads its [`HttpProxy`] (routes, policies, request timeout,
//! upstream clients) through a [`ProxySlot`] once per request, so a config
//! reload swaps it in place under open keep-alive connections.

mod accept;
mod certs;
mod h1;
mod http;
mod https;
mod sni;
mod tcp;
mod tls_passthrough;
mod watchdog;

use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub(crate) use accept::{DrainSignal, ListenerContext};

use crate::config::{Config, ConfigError, Listener, ListenerKind, Route};
use crate::http::access_log::AccessLog;
use crate::http::upgrade::Upgrades;
use crate::http::HttpProxy;
use crate::upstream::conn::Upstreams;
use crate::upstream::SharedTable;

/// The request path of one HTTP(S) listener, swapped whole by a reload.
pub(crate) type ProxySlot = Arc<ArcSwap<HttpProxy>>;

/// What listeners are built from, beyond their own config.
pub(crate) struct Parts<'a> {
    pub config: &'a Config,
    pub table: &'a SharedTable,
    pub upstreams: &'a Arc<Upstreams>,
}

/// What one listener's connections are tracked and stopped by; it outlives
/// reloads that swap the listener's proxy, and ends with the listener.
#[derive(Clone, Default)]
pub(crate) struct Lifetime {
    /// Tracks non-HTTP connection tasks (L4 relays, TLS handshakes, upgraded
    /// connections), waited for when the listener drains.
    pub tracker: TaskTracker,
    /// Cancelled when the listener's grace period is over.
    pub hard_stop: CancellationToken,
}

/// A listener with everything made: serving it cannot fail.
// One per listener: the sizes of its variants do not matter.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Built {
    Http(http::HttpServer),
    Https(Box<https::HttpsListener>),
    Tcp(tcp::L4Listener),
    TlsPassthrough(tls_passthrough::Passthrough),
}

/// Builds listener number `index`; an error names its field like `check` does.
pub(crate) fn build(
    index: usize,
    listener: &Listener,
    parts: &Parts<'_>,
    lifetime: &Lifetime,
) -> Result<Built, ConfigError> {
    let name = &listener.name;
    let http = |routes, tls| -> Result<http::HttpServer, ConfigError> {
        let slot = Arc::new(ArcSwap::from_pointee(http_proxy(index, listener, routes, tls, parts, lifetime)?));
        Ok(http::HttpServer::new(name, slot, parts.config))
    };
    Ok(match &listener.kind {
        ListenerKind::Http { routes } => Built::Http(http(routes, false)?),
        ListenerKind::Https { routes, certs } => Built::Https(Box::new(
            https::HttpsListener::build(name, certs, http(routes, true)?, parts.config)
                .map_err(|e| ConfigError { path: format!("listener[{index}].tls"), reason: e.to_string() })?,
        )),
        ListenerKind::Tcp { service, balance } => {
            Built::Tcp(tcp::L4Listener::new(name, parts.table.clone(), service, balance, parts.config))
        }
        ListenerKind::TlsPassthrough { routes } => {
            Built::TlsPassthrough(tls_passthrough::Passthrough::new(name, parts.table.clone(), routes, parts.config))
        }
    })
}

/// The request path of HTTP(S) listener number `index` (`None` for L4
/// listeners): what a reload builds for a listener it keeps, and stores into
/// its [`ProxySlot`].
pub(crate) fn build_proxy(
    index: usize,
    listener: &Listener,
    parts: &Parts<'_>,
    lifetime: &Lifetime,
) -> Result<Option<HttpProxy>, ConfigError> {
    let (routes, tls) = match &listener.kind {
        ListenerKind::Http { routes } => (routes, false),
        ListenerKind::Https { routes, .. } => (routes, true),
        ListenerKind::Tcp { .. } | ListenerKind::TlsPassthrough { .. } => return Ok(None),
    };
    http_proxy(index, listener, routes, tls, parts, lifetime).map(Some)
}

/// The request path with its access log (opened here: a file that cannot be
/// opened fails the build, and so `check`, like nginx's `-t`).
fn http_proxy(
    index: usize,
    listener: &Listener,
    routes: &[Route],
    tls: bool,
    parts: &Parts<'_>,
    lifetime: &Lifetime,
) -> Result<HttpProxy, ConfigError> {
    let name = &listener.name;
    let access_log =
        match &listener.access_log {
            Some(config) => Some(AccessLog::open(name, config).map_err(|e| ConfigError {
                path: format!("listener[{index}].access_log.path"),
                reason: e.to_string(),
            })?),
            None => None,
        };
    let upgrades = Upgrades::new(name, lifetime.tracker.clone(), lifetime.hard_stop.clone());
    let proxy = HttpProxy::new(name, routes, tls, parts.table.clone(), parts.upstreams.clone(), upgrades, parts.config);
    Ok(proxy.with_access_log(access_log))
}

impl Built {
    /// The slot an HTTP(S) listener reads its request path from.
    pub fn proxy_slot(&self) -> Option<ProxySlot> {
        match self {
            Built::Http(server) => Some(server.proxy.clone()),
            Built::Https(listener) => Some(listener.proxy_slot()),
            Built::Tcp(_) | Built::TlsPassthrough(_) => None,
        }
    }

    /// Accepts on `socket` until `ctx.shutdown`.
    pub async fn serve(self, name: &str, socket: TcpListener, ctx: &ListenerContext<'_>) {
        match self {
            Built::Http(server) => server.serve(name, socket, ctx).await,
            Built::Https(listener) => listener.serve(name, socket, ctx).await,
            Built::Tcp(listener) => listener.serve(name, socket, ctx).await,
            Built::TlsPassthrough(listener) => listener.serve(name, socket, ctx).await,
        }
    }
}
