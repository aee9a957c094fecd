//! `https` listeners: TLS termination (rustls, ring provider, TLS 1.2 and 1.3
//! only, ALPN `h2` and `http/1.1`) with the certificates of [`super::certs`], then
//! the same HTTP proxy as plain listeners. Handshake failures are counted by
//! reason and logged at debug level: scanners and old clients are routine on a
//! public port, not errors.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use std::time::Duration;

use rustls::PeerIncompatible;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::accept::{accept_loop, ListenerContext};
use super::certs::{reload_loop, server_config, CertSet, SniResolver, TlsError};
use super::http::{Drain, HttpServer, Protocol};
use super::watchdog::{ConnState, Guarded};
use crate::config::{Config, ServerCert};
use crate::metrics as m;

/// Why a handshake failed, as counted in `switchyard_tls_handshake_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// The client offered only versions below TLS 1.2.
    ProtocolVersion,
    /// No cipher suite, group or signature scheme in common.
    Incompatible,
    /// The client sent something that is not TLS, or broken TLS.
    Malformed,
    /// The client aborted with an alert (e.g. it does not trust our certificate).
    AlertReceived,
    /// No complete handshake within `timeouts.header_read`.
    Timeout,
    /// The connection closed or failed mid-handshake.
    Io,
    Other,
}

impl HandshakeFailure {
    const ALL: [HandshakeFailure; 7] = [
        HandshakeFailure::ProtocolVersion,
        HandshakeFailure::Incompatible,
        HandshakeFailure::Malformed,
        HandshakeFailure::AlertReceived,
        HandshakeFailure::Timeout,
        HandshakeFailure::Io,
        HandshakeFailure::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HandshakeFailure::ProtocolVersion => "protocol_version",
            HandshakeFailure::Incompatible => "incompatible",
            HandshakeFailure::Malformed => "malformed",
            HandshakeFailure::AlertReceived => "alert_received",
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::Io => "io",
            HandshakeFailure::Other => "other",
        }
    }

    /// Classifies the error tokio-rustls returns (a rustls error wrapped in `io::Error`).
    pub fn of(e: &io::Error) -> HandshakeFailure {
        if e.kind() == io::ErrorKind::TimedOut {
            // The connection's head deadline (see `watchdog`) passed mid-handshake.
            return HandshakeFailure::Timeout;
        }
        let Some(tls) = e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) else {
            return HandshakeFailure::Io;
        };
        match tls {
            // TLS 1.0/1.1 clients send no `signature_algorithms` (a TLS 1.2 extension), and
            // rustls checks for it before it compares versions: that is how they usually fail.
            rustls::Error::PeerIncompatible(
                PeerIncompatible::Tls12NotOffered
                | PeerIncompatible::Tls12NotOfferedOrEnabled
                | PeerIncompatible::SupportedVersionsExtensionRequired
                | PeerIncompatible::SignatureAlgorithmsExtensionRequired,
            ) => HandshakeFailure::ProtocolVersion,
            rustls::Error::PeerIncompatible(_) => HandshakeFailure::Incompatible,
            rustls::Error::InvalidMessage(_)
            | rustls::Error::InappropriateMessage { .. }
            | rustls::Error::InappropriateHandshakeMessage { .. }
            | rustls::Error::PeerMisbehaved(_) => HandshakeFailure::Malformed,
            rustls::Error::AlertReceived(_) => HandshakeFailure::AlertReceived,
            _ => HandshakeFailure::Other,
        }
    }
}

/// Per-listener handshake failure counters, labelled once.
struct HandshakeErrors([metrics::Counter; 7]);

impl HandshakeErrors {
    fn new(listener: &str) -> HandshakeErrors {
        HandshakeErrors(HandshakeFailure::ALL.map(
            |r| metrics::counter!(m::TLS_HANDSHAKE_ERRORS, "listener" => listener.to_string(), "reason" => r.as_str()),
        ))
    }

    fn record(&self, reason: HandshakeFailure, peer: SocketAddr, detail: &dyn std::fmt::Display) {
        self.0[reason as usize].increment(1);
        tracing::debug!(%peer, reason = reason.as_str(), "TLS handshake failed: {detail}");
    }
}

/// An `https` listener, built: its certificates loaded, its acceptor made.
pub(crate) struct HttpsListener {
    server: HttpServer,
    acceptor: TlsAcceptor,
    resolver: Arc<SniResolver>,
    certs: Vec<ServerCert>,
    errors: Arc<HandshakeErrors>,
    handshake_timeout: Duration,
}

impl HttpsListener {
    pub fn build(
        name: &str,
        certs: &[ServerCert],
        server: HttpServer,
        config: &Config,
    ) -> Result<HttpsListener, TlsError> {
        let resolver = Arc::new(SniResolver::new(CertSet::load(certs)?));
        let acceptor = TlsAcceptor::from(server_config(resolver.clone())?);
        Ok(HttpsListener {
            server,
            acceptor,
            resolver,
            certs: certs.to_vec(),
            errors: Arc::new(HandshakeErrors::new(name)),
            // The handshake is part of the client's request head.
            handshake_timeout: config.timeouts.header_read,
        })
    }

    pub fn proxy_slot(&self) -> super::ProxySlot {
        self.server.proxy.clone()
    }

    /// Serves the listener: TLS handshake (off the accept loop), then the same
    /// HTTP server as plain listeners, HTTP/1.1 or h2 as ALPN chose.
    pub async fn serve(self, name: &str, socket: TcpListener, ctx: &ListenerContext<'_>) {
        let HttpsListener { server, acceptor, resolver, certs, errors, handshake_timeout } = self;
        ctx.tracker.spawn(reload_loop(name.to_string(), certs, resolver, ctx.shutdown.clone()));
        let server = Arc::new(server);
        accept_loop(name, socket, ctx, |a| {
            let (acceptor, server, errors) = (acceptor.clone(), server.clone(), errors.clone());
            // Made now, before the shutdown can begin: a connection whose handshake
            // finishes during the drain is still drained, not cut.
            let drain = Drain::new(ctx);
            let shutdown = ctx.shutdown.clone();
            // The deadlines start now: the handshake is part of the first request head.
            let conn = ConnState::new(server.deadlines.clone());
            let io = Guarded::new(a.stream, a.slot, conn.clone());
            ctx.tracker.spawn(async move {
                let result = tokio::select! {
                    r = tokio::time::timeout(handshake_timeout, acceptor.accept(io)) => r,
                    _ = shutdown.cancelled() => return,
                };
                match result {
                    Ok(Ok(tls)) => {
                        // No ALPN (or `http/1.1`) is HTTP/1.1: HTTP/2 over TLS is negotiated (RFC 9113 3.2).
                        let protocol = match tls.get_ref().1.alpn_protocol() {
                            Some(b"h2") => Protocol::Http2,
                            _ => Protocol::Http1,
                        };
                        server.spawn_connection(tls, protocol, a.peer, drain, conn)
                    }
                    Ok(Err(e)) => errors.record(HandshakeFailure::of(&e), a.peer, &e),
                    Err(_) => errors.record(HandshakeFailure::Timeout, a.peer, &"timed out"),
                }
            });
        })
        .await
    }
}
