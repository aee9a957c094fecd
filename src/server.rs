//! Start-up and shutdown: a validated config is bound (every port, before
//! anything runs), then served: the discovery source and the table writer, the
//! admin server, and one accept loop per listener. On shutdown the listeners stop
//! accepting and in-flight requests get `timeouts.shutdown_grace` to finish.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::Admin;
use crate::config::{Balance, Config, Discovery, Listener, ListenerKind};
use crate::discovery::etcd::EtcdSource;
use crate::discovery::file::FileSource;
use crate::discovery::Source;
use crate::metrics as m;
use crate::proxy::client::Upstreams;
use crate::proxy::http::{server_builder, spawn_connection, HttpProxy};
use crate::proxy::{passthrough, tcp};
use crate::upstream::registry::Registry;
use crate::upstream::{writer, SharedTable, Table};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("listener {name:?}: cannot bind {addr}: {source}")]
    Bind { name: String, addr: SocketAddr, source: std::io::Error },
    #[error("listener {name:?}: {reason}")]
    Listener { name: String, reason: String },
}

/// A gateway whose sockets are bound but not yet served.
pub struct Gateway {
    config: Config,
    admin: TcpListener,
    listeners: Vec<(Listener, TcpListener)>,
    table: SharedTable,
    ready: Arc<AtomicBool>,
}

impl Gateway {
    /// Binds the admin listener and every configured listener (port 0 allowed).
    pub async fn bind(config: Config) -> Result<Gateway, ServerError> {
        // Certificate and CA files are read before any port is bound, so a bad path stops start-up.
        crate::proxy::tls::preflight(&config)
            .map_err(|(name, e)| ServerError::Listener { name, reason: e.to_string() })?;
        crate::proxy::upstream_tls::preflight(&config.services).map_err(|(name, e)| ServerError::Listener {
            name: format!("service {name}"),
            reason: format!("upstream_tls: {e}"),
        })?;
        let admin = bind("admin", config.admin_listen).await?;
        let mut listeners = Vec::with_capacity(config.listeners.len());
        for l in &config.listeners {
            listeners.push((l.clone(), bind(&l.name, l.listen).await?));
        }
        Ok(Gateway {
            config,
            admin,
            listeners,
            table: Arc::new(ArcSwap::from_pointee(Table::default())),
            ready: Arc::new(AtomicBool::new(false)),
        })
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.local_addr().unwrap_or(self.config.admin_listen)
    }

    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners.iter().find(|(l, _)| l.name == name).and_then(|(_, s)| s.local_addr().ok())
    }

    pub fn table(&self) -> SharedTable {
        self.table.clone()
    }

    /// Runs until `shutdown` is cancelled, then drains.
    pub async fn serve(self, shutdown: CancellationToken) -> Result<(), ServerError> {
        let Gateway { config, admin, listeners, table, ready } = self;
        let metrics = m::install();
        // Background tasks stop on `stop`, which follows `shutdown` once listeners have drained.
        let stop = CancellationToken::new();
        let mut tasks = JoinSet::new();

        let (tx, rx) = mpsc::channel(64);
        match &config.discovery {
            Discovery::File(f) => {
                tasks.spawn(FileSource::new(f.path.clone(), f.poll_interval).run(tx, stop.clone()));
            }
            Discovery::Etcd(e) => {
                tasks.spawn(EtcdSource::new(e.clone()).run(tx, stop.clone()));
            }
        }
        let registry = Registry::new(hashed_services(&config));
        tasks.spawn(writer::run(registry, rx, table.clone(), ready.clone(), stop.clone()));
        let admin_server = Arc::new(Admin { metrics, table: table.clone(), ready });
        tasks.spawn(admin_server.serve(admin, stop.clone()));

        let upstreams = Arc::new(Upstreams::new(&config));
        let limit = Arc::new(Semaphore::new(config.limits.max_connections));
        let graceful = Arc::new(GracefulShutdown::new());
        let tracker = TaskTracker::new();
        let hard_stop = CancellationToken::new();
        let mut accept_loops = JoinSet::new();
        for (listener, socket) in listeners {
            let ctx = ListenerContext {
                table: table.clone(),
                upstreams: upstreams.clone(),
                limit: limit.clone(),
                graceful: graceful.clone(),
                tracker: tracker.clone(),
                shutdown: shutdown.clone(),
                hard_stop: hard_stop.clone(),
            };
            accept_loops.spawn(serve_listener(listener, socket, ctx, config.clone()));
        }
        tracing::info!("switchyard serving");
        shutdown.cancelled().await;
        tracing::info!(grace = ?config.timeouts.shutdown_grace, "shutting down: no new connections, draining in-flight requests");
        while accept_loops.join_next().await.is_some() {}
        tracker.close();
        let drained = async {
            // TLS handshake tasks hold a reference until they see the shutdown; wait for
            // them instead of draining a fresh GracefulShutdown that watches nothing.
            let mut graceful = graceful;
            let graceful = loop {
                match Arc::try_unwrap(graceful) {
                    Ok(g) => break g,
                    Err(shared) => {
                        graceful = shared;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            };
            tokio::join!(graceful.shutdown(), tracker.wait())
        };
        if tokio::time::timeout(config.timeouts.shutdown_grace, drained).await.is_err() {
            tracing::warn!("shutdown grace period over; closing remaining connections");
        }
        hard_stop.cancel();
        stop.cancel();
        while tasks.join_next().await.is_some() {}
        Ok(())
    }
}

/// Services that some route balances by hash get a consistent-hash table.
fn hashed_services(config: &Config) -> HashSet<String> {
    let mut hashed = HashSet::new();
    for l in &config.listeners {
        match &l.kind {
            ListenerKind::Http { routes } | ListenerKind::Https { routes, .. } => {
                hashed
                    .extend(routes.iter().filter(|r| matches!(r.balance, Balance::Hash(_))).map(|r| r.service.clone()));
            }
            ListenerKind::Tcp { service, balance } => {
                if matches!(balance, Balance::Hash(_)) {
                    hashed.insert(service.clone());
                }
            }
            ListenerKind::TlsPassthrough { routes } => {
                hashed
                    .extend(routes.iter().filter(|r| matches!(r.balance, Balance::Hash(_))).map(|r| r.service.clone()));
            }
        }
    }
    hashed
}

async fn bind(name: &str, addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr).await.map_err(|source| ServerError::Bind { name: name.to_string(), addr, source })
}

/// What every listener shares.
pub(crate) struct ListenerContext {
    pub table: SharedTable,
    pub upstreams: Arc<Upstreams>,
    pub limit: Arc<Semaphore>,
    /// Tracks hyper connections: they finish their in-flight requests on shutdown.
    pub graceful: Arc<GracefulShutdown>,
    /// Tracks non-HTTP connection tasks (L4 relays, upgraded connections); waited for on shutdown.
    pub tracker: TaskTracker,
    /// Cancelled when the listeners stop accepting.
    pub shutdown: CancellationToken,
    /// Cancelled when the grace period is over: tracked tasks must end now.
    pub hard_stop: CancellationToken,
}

/// One accepted client connection. Dropping it releases the connection slot.
pub(crate) struct Accepted {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    pub slot: ConnectionSlot,
}

/// Holds a connection's place under `limits.max_connections` and in the active gauge.
pub(crate) struct ConnectionSlot {
    _permit: OwnedSemaphorePermit,
    active: metrics::Gauge,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.active.decrement(1.0);
    }
}

async fn serve_listener(listener: Listener, socket: TcpListener, ctx: ListenerContext, config: Config) {
    let name = listener.name.clone();
    match &listener.kind {
        ListenerKind::Http { routes } => {
            let proxy = Arc::new(HttpProxy::new(&name, routes, false, &ctx, &config));
            let builder = server_builder(&config);
            let graceful = ctx.graceful.clone();
            accept_loop(&name, socket, &ctx, |a| {
                spawn_connection(a.stream, a.peer, proxy.clone(), &builder, &graceful, move || drop(a.slot));
            })
            .await
        }
        ListenerKind::Https { routes, certs } => {
            let proxy = Arc::new(HttpProxy::new(&name, routes, true, &ctx, &config));
            crate::proxy::tls::serve(&name, socket, certs, proxy, &ctx, &config).await
        }
        ListenerKind::Tcp { service, balance } => tcp::serve(&name, socket, &ctx, service, balance, &config).await,
        ListenerKind::TlsPassthrough { routes } => passthrough::serve(&name, socket, &ctx, routes, &config).await,
    }
}

/// Accepts until shutdown, within the connection limit, handing each connection to `on_accept`.
pub(crate) async fn accept_loop(
    name: &str,
    socket: TcpListener,
    ctx: &ListenerContext,
    mut on_accept: impl FnMut(Accepted),
) {
    let accepted = metrics::counter!(m::CONNECTIONS, "listener" => name.to_string());
    let active = metrics::gauge!(m::CONNECTIONS_ACTIVE, "listener" => name.to_string());
    loop {
        let permit = tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            p = ctx.limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
        };
        let (stream, peer) = tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            a = socket.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(listener = %name, "accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        accepted.increment(1);
        active.increment(1.0);
        on_accept(Accepted { stream, peer, slot: ConnectionSlot { _permit: permit, active: active.clone() } });
    }
}
