//! Listeners: the accept loop and connection limit they share (`accept`), and
//! one kind per protocol — `http` (HTTP/1.1 and h2c), `https` (TLS termination
//! with the certificates of `certs`, then HTTP/1.1 or h2), `tcp` (L4 relay) and
//! `tls_passthrough` (routes by the ClientHello's SNI, parsed by `sni`).
//!
//! A listener is made in two steps: [`build`] makes everything it needs and can
//! fail (certificates, routes); [`Built::serve`] only accepts and cannot.

mod accept;
mod certs;
mod http;
mod https;
mod sni;
mod tcp;
mod tls_passthrough;
mod watchdog;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub(crate) use accept::ListenerContext;

use crate::config::{Config, ConfigError, Listener, ListenerKind};
use crate::http::upgrade::Upgrades;
use crate::http::HttpProxy;
use crate::upstream::conn::Upstreams;
use crate::upstream::SharedTable;

/// What listeners are built from, beyond their own config.
pub(crate) struct Parts<'a> {
    pub config: &'a Config,
    pub table: &'a SharedTable,
    pub upstreams: &'a Arc<Upstreams>,
    pub tracker: &'a TaskTracker,
    pub hard_stop: &'a CancellationToken,
}

/// A listener with everything made: serving it cannot fail.
pub(crate) enum Built {
    Http(http::HttpServer),
    Https(Box<https::HttpsListener>),
    Tcp(tcp::L4Listener),
    TlsPassthrough(tls_passthrough::Passthrough),
}

/// Builds listener number `index`; an error names its field like `check` does.
pub(crate) fn build(index: usize, listener: &Listener, parts: &Parts<'_>) -> Result<Built, ConfigError> {
    let name = &listener.name;
    let http = |routes, tls| {
        let upgrades = Upgrades::new(name, parts.tracker.clone(), parts.hard_stop.clone());
        let proxy =
            HttpProxy::new(name, routes, tls, parts.table.clone(), parts.upstreams.clone(), upgrades, parts.config);
        http::HttpServer::new(name, proxy, parts.config)
    };
    Ok(match &listener.kind {
        ListenerKind::Http { routes } => Built::Http(http(routes, false)),
        ListenerKind::Https { routes, certs } => Built::Https(Box::new(
            https::HttpsListener::build(name, certs, http(routes, true), parts.config)
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

impl Built {
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
