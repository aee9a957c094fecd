//! Start-up and shutdown, in three steps: a validated config is built (every
//! listener's acceptor, router, certificates and upstream clients made, every
//! error reported), bound (every port, before anything runs), then served: the
//! discovery source and the table writer, the admin server, and one accept loop
//! per listener. On shutdown the listeners stop accepting and in-flight requests
//! get `timeouts.shutdown_grace` to finish, watched by hyper-util's graceful
//! shutdown.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use arc_swap::ArcSwap;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{Admin, AdminLimits};
use crate::config::{Balance, Config, ConfigErrors, Discovery, ListenerKind};
use crate::discovery::etcd::EtcdSource;
use crate::discovery::file::FileSource;
use crate::discovery::instance::{refuse_own, OwnAddresses};
use crate::discovery::Source;
use crate::listener::{self, Built, ListenerContext, Parts};
use crate::metrics as m;
use crate::upstream::conn::Upstreams;
use crate::upstream::registry::Registry;
use crate::upstream::{writer, SharedTable, Table};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Something the config names could not be made (certificates, CA files).
    #[error("{0}")]
    Build(ConfigErrors),
    #[error("listener {name:?}: cannot bind {addr}: {source}")]
    Bind { name: String, addr: SocketAddr, source: std::io::Error },
}

/// Makes everything the config names that can fail without binding a port:
/// `switchyard check` runs it too. Every error is reported, not only the first.
pub fn check(config: &Config) -> Result<(), ConfigErrors> {
    config.warnings().iter().for_each(|w| tracing::warn!("{w}"));
    build(config, &Arc::new(ArcSwap::from_pointee(Table::default())), &TaskTracker::new(), &CancellationToken::new())
        .map(drop)
}

fn build(
    config: &Config,
    table: &SharedTable,
    tracker: &TaskTracker,
    hard_stop: &CancellationToken,
) -> Result<Vec<Built>, ConfigErrors> {
    let (upstreams, mut errors) = match Upstreams::build(config) {
        Ok((upstreams, errors)) => (Some(Arc::new(upstreams)), errors),
        Err(e) => (None, vec![e]),
    };
    let mut built = Vec::with_capacity(config.listeners.len());
    if let Some(upstreams) = &upstreams {
        let parts = Parts { config, table, upstreams, tracker, hard_stop };
        for (i, l) in config.listeners.iter().enumerate() {
            match listener::build(i, l, &parts) {
                Ok(b) => built.push(b),
                Err(e) => errors.push(e),
            }
        }
    }
    if errors.is_empty() {
        Ok(built)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// A gateway whose listeners are built and whose sockets are bound, not yet served.
pub struct Gateway {
    config: Config,
    admin: TcpListener,
    listeners: Vec<(String, Built, TcpListener)>,
    table: SharedTable,
    ready: Arc<AtomicBool>,
    tracker: TaskTracker,
    hard_stop: CancellationToken,
}

impl Gateway {
    /// Builds every listener, then binds the admin listener and every configured
    /// listener (port 0 allowed). Nothing is bound when the build fails.
    pub async fn bind(config: Config) -> Result<Gateway, ServerError> {
        // Metric handles are made while building; the recorder must exist first.
        m::install();
        config.warnings().iter().for_each(|w| tracing::warn!("{w}"));
        let table: SharedTable = Arc::new(ArcSwap::from_pointee(Table::default()));
        let (tracker, hard_stop) = (TaskTracker::new(), CancellationToken::new());
        let built = build(&config, &table, &tracker, &hard_stop).map_err(ServerError::Build)?;
        let admin = bind("admin", config.admin_listen).await?;
        let mut listeners = Vec::with_capacity(config.listeners.len());
        for (l, b) in config.listeners.iter().zip(built) {
            listeners.push((l.name.clone(), b, bind(&l.name, l.listen).await?));
        }
        Ok(Gateway { config, admin, listeners, table, ready: Arc::new(AtomicBool::new(false)), tracker, hard_stop })
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.local_addr().unwrap_or(self.config.admin_listen)
    }

    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners.iter().find(|(n, _, _)| n == name).and_then(|(_, _, s)| s.local_addr().ok())
    }

    pub fn table(&self) -> SharedTable {
        self.table.clone()
    }

    /// Runs until `shutdown` is cancelled, then drains. Cannot fail: everything
    /// that could was made by [`Gateway::bind`].
    pub async fn serve(self, shutdown: CancellationToken) {
        let Gateway { config, admin, listeners, table, ready, tracker, hard_stop } = self;
        let metrics = m::install();
        // Background tasks stop on `stop`, which follows `shutdown` once listeners have drained.
        let stop = CancellationToken::new();
        let mut tasks = JoinSet::new();

        let (tx, from_source) = mpsc::channel(64);
        // Instances at the gateway's own addresses would loop; they never reach the writer.
        let (to_writer, rx) = mpsc::channel(64);
        let own = OwnAddresses::new(
            admin.local_addr().into_iter().chain(listeners.iter().filter_map(|(_, _, s)| s.local_addr().ok())),
        );
        let source = if matches!(config.discovery, Discovery::File(_)) { "file" } else { "etcd" };
        tasks.spawn(refuse_own(from_source, to_writer, own, source, stop.clone()));
        match &config.discovery {
            Discovery::File(f) => {
                tasks.spawn(FileSource::new(f.path.clone(), f.poll_interval).run(tx, stop.clone()));
            }
            Discovery::Etcd(e) => {
                tasks.spawn(EtcdSource::new((**e).clone()).run(tx, stop.clone()));
            }
        }
        let policies = config.services.iter().map(|s| (s.name.clone(), Arc::new(s.policy.clone()))).collect();
        let registry = Registry::new(hashed_services(&config)).with_policies(policies);
        crate::upstream::health::checker::spawn_all(&config, &table, &mut tasks, &stop);
        tasks.spawn(writer::run(registry, rx, table.clone(), ready.clone(), stop.clone()));
        let admin_server = Arc::new(Admin { metrics, table: table.clone(), ready, limits: AdminLimits::new(&config) });
        tasks.spawn(admin_server.serve(admin, stop.clone()));

        let graceful = GracefulShutdown::new();
        let ctx = ListenerContext {
            limit: Arc::new(Semaphore::new(config.limits.max_connections)),
            graceful: &graceful,
            tracker: tracker.clone(),
            shutdown: shutdown.clone(),
            hard_stop: hard_stop.clone(),
        };
        tracing::info!("switchyard serving");
        // The accept loops run here, not spawned, so that they can lend out watchers of
        // `graceful`; each returns when `shutdown` is cancelled.
        let ctx = &ctx;
        futures_util::future::join_all(
            listeners.into_iter().map(|(name, built, socket)| async move { built.serve(&name, socket, ctx).await }),
        )
        .await;
        tracing::info!(grace = ?config.timeouts.shutdown_grace, "shutting down: no new connections, draining in-flight requests");
        tracker.close();
        let drained = async { tokio::join!(graceful.shutdown(), tracker.wait()) };
        if tokio::time::timeout(config.timeouts.shutdown_grace, drained).await.is_err() {
            tracing::warn!("shutdown grace period over; closing remaining connections");
        }
        hard_stop.cancel();
        stop.cancel();
        while tasks.join_next().await.is_some() {}
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
