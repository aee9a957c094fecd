//! Start-up, reload and shutdown. A validated config is built (every listener's
//! acceptor, router, certificates, access log and upstream clients made, every
//! error reported), bound (every port, before anything runs), then served: the
//! discovery source and the table writer, the admin server, and one task per
//! listener with its own cancellation and drain (`listeners`). A reload
//! (`reload`: SIGHUP or `POST /reload`) goes through the same build and bind
//! before it swaps anything. On shutdown every listener stops accepting and its
//! in-flight requests get `timeouts.shutdown_grace` to finish, watched by
//! hyper-util's graceful shutdown. Sockets use `SO_REUSEPORT` (`socket`), so a
//! new process binds while the old one drains.

mod listeners;
mod reload;
mod socket;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use reload::Summary;

use crate::admin::{Admin, AdminLimits, ReloadOutcome, ReloadTrigger};
use crate::config::{Balance, Config, ConfigErrors, Discovery, ListenerKind, ServicePolicy};
use crate::discovery::etcd::EtcdSource;
use crate::discovery::file::FileSource;
use crate::discovery::instance::{refuse_own, OwnAddresses};
use crate::discovery::{Source, Update};
use crate::metrics as m;
use crate::upstream::registry::Registry;
use crate::upstream::{writer, SharedTable, Table};
use listeners::Listeners;
use reload::Prepared;

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
    reload::build(config.clone(), None, &[], &Arc::new(ArcSwap::from_pointee(Table::default()))).map(drop)
}

/// How long `switchyard run` holds new connections (they wait in the listen
/// backlog) until the first upstream table is live: a restarted process that
/// shares its addresses with the old one (`SO_REUSEPORT`) must not answer 503
/// before discovery has reported. Past it the listeners accept anyway.
pub const READY_WAIT: Duration = Duration::from_secs(10);

/// Reload requests queued beyond the one running are refused, not stacked up.
const RELOAD_QUEUE: usize = 4;

/// A gateway whose listeners are built and whose sockets are bound, not yet served.
pub struct Gateway {
    prepared: Prepared,
    admin: TcpListener,
    table: SharedTable,
    ready: Arc<AtomicBool>,
    config_path: Option<PathBuf>,
    ready_wait: Option<Duration>,
    reload_tx: ReloadTrigger,
    reload_rx: mpsc::Receiver<oneshot::Sender<ReloadOutcome>>,
}

/// Asks a serving gateway to reload its config file (see [`Gateway::with_config_file`]).
#[derive(Clone)]
pub struct Reloader(ReloadTrigger);

impl Reloader {
    /// Reloads and waits for the outcome: what changed, or every error (the
    /// running config then stays). The gateway logs the outcome itself.
    pub async fn reload(&self) -> Result<serde_json::Value, Vec<String>> {
        let (tx, rx) = oneshot::channel();
        self.0.send(tx).await.map_err(|_| vec!["the gateway is shutting down".to_string()])?;
        rx.await.unwrap_or_else(|_| Err(vec!["the gateway is shutting down".to_string()]))
    }
}

impl Gateway {
    /// Builds every listener, then binds the admin listener and every configured
    /// listener (port 0 allowed). Nothing is bound when the build fails.
    pub async fn bind(config: Config) -> Result<Gateway, ServerError> {
        // Metric handles are made while building; the recorder must exist first.
        m::install();
        config.warnings().iter().for_each(|w| tracing::warn!("{w}"));
        let table: SharedTable = Arc::new(ArcSwap::from_pointee(Table::default()));
        let planned = reload::build(config, None, &[], &table).map_err(ServerError::Build)?;
        let prepared = reload::bind(planned)?;
        let admin_listen = prepared.config.admin_listen;
        let admin = socket::bind(admin_listen).map_err(|source| ServerError::Bind {
            name: "admin".into(),
            addr: admin_listen,
            source,
        })?;
        let (reload_tx, reload_rx) = mpsc::channel(RELOAD_QUEUE);
        Ok(Gateway {
            prepared,
            admin,
            table,
            ready: Arc::new(AtomicBool::new(false)),
            config_path: None,
            ready_wait: None,
            reload_tx,
            reload_rx,
        })
    }

    /// The file a reload reads. Without one (the demo's embedded config) a reload is refused.
    pub fn with_config_file(mut self, path: PathBuf) -> Gateway {
        self.config_path = Some(path);
        self
    }

    /// Accept only once the first upstream table is live, or after `limit`.
    /// Without it (tests), listeners accept at once and answer 503 until then.
    pub fn accept_when_ready(mut self, limit: Duration) -> Gateway {
        self.ready_wait = Some(limit);
        self
    }

    pub fn reloader(&self) -> Reloader {
        Reloader(self.reload_tx.clone())
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.local_addr().unwrap_or(self.prepared.config.admin_listen)
    }

    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.prepared.addr(name)
    }

    pub fn table(&self) -> SharedTable {
        self.table.clone()
    }

    /// Runs until `shutdown` is cancelled, reloading on request, then drains.
    /// Cannot fail: everything that could was made by [`Gateway::bind`].
    pub async fn serve(self, shutdown: CancellationToken) {
        let Gateway { prepared, admin, table, ready, config_path, ready_wait, reload_tx, mut reload_rx } = self;
        let metrics = m::install();
        // Background tasks stop on `stop`, which follows `shutdown` once listeners have drained.
        let stop = CancellationToken::new();
        let mut tasks = JoinSet::new();

        let (tx, from_source) = mpsc::channel(64);
        // Instances at the gateway's own addresses would loop; they never reach the writer.
        let (to_writer, rx) = mpsc::channel(64);
        // Reloads tell the table writer which services hash and their policies, past the filter.
        let updates = to_writer.clone();
        let admin_addr = admin.local_addr().ok();
        let own = OwnAddresses::new(admin_addr.into_iter().chain(prepared.bound_addrs()));
        let own = Arc::new(ArcSwap::from_pointee(own));
        let source = if matches!(prepared.config.discovery, Discovery::File(_)) { "file" } else { "etcd" };
        tasks.spawn(refuse_own(from_source, to_writer, own.clone(), source, stop.clone()));
        match &prepared.config.discovery {
            Discovery::File(f) => {
                tasks.spawn(FileSource::new(f.path.clone(), f.poll_interval).run(tx, stop.clone()));
            }
            Discovery::Etcd(e) => {
                tasks.spawn(EtcdSource::new((**e).clone()).run(tx, stop.clone()));
            }
        }
        let registry = Registry::new(hashed_services(&prepared.config)).with_policies(policies(&prepared.config));
        tasks.spawn(writer::run(registry, rx, table.clone(), ready.clone(), stop.clone()));
        // Health checkers follow the `[[service]]` settings: a reload restarts them.
        let mut checkers = Checkers::spawn(&prepared.config, &table, &stop);
        let admin_server = Arc::new(Admin {
            metrics,
            table: table.clone(),
            ready: ready.clone(),
            reload: reload_tx,
            limits: AdminLimits::new(&prepared.config),
            status: crate::admin::status::StatusPage::new(&prepared.config),
        });
        tasks.spawn(admin_server.clone().serve(admin, stop.clone()));
        if let Some(limit) = ready_wait {
            let first_table = async {
                while !ready.load(Ordering::Acquire) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => {}
                waited = tokio::time::timeout(limit, first_table) => if waited.is_err() {
                    tracing::warn!(?limit, "no upstream table yet; accepting anyway (503 until discovery reports)");
                },
            }
        }

        let config = &prepared.config;
        let mut listeners = Listeners::new(config.limits.max_connections, config.timeouts.shutdown_grace);
        // Stamped before the listeners serve: a client answered at once could read
        // the metrics before a stamp made after them (seen under load in tests/reload_config.rs).
        reloads_at_zero();
        config_live();
        let (mut config, _) = reload::commit(prepared, &mut listeners);
        tracing::info!("switchyard serving");
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(reply) = reload_rx.recv() => {
                    let (hashed, services) = (hashed_services(&config), config.services.clone());
                    let outcome = reload_file(config_path.as_ref(), &mut config, &mut listeners, &table).await;
                    if outcome.is_ok() {
                        admin_server.status.update(&config);
                        let addrs = admin_addr.into_iter().chain(listeners.running.iter().map(|r| r.addr));
                        own.store(Arc::new(OwnAddresses::new(addrs)));
                    }
                    if hashed_services(&config) != hashed || config.services != services {
                        let settings = Update::Settings { hashed: hashed_services(&config), policies: policies(&config) };
                        let _ = updates.send(settings).await;
                    }
                    if config.services != services {
                        checkers.stop().await;
                        checkers = Checkers::spawn(&config, &table, &stop);
                    }
                    let _ = reply.send(outcome);
                }
            }
        }
        tracing::info!(grace = ?config.timeouts.shutdown_grace, "shutting down: no new connections, draining in-flight requests");
        listeners.shutdown().await;
        stop.cancel();
        checkers.stop().await;
        while tasks.join_next().await.is_some() {}
    }
}

/// One reload: read, validate and build off the runtime's threads, bind, commit.
/// Logged and counted here, whoever asked.
async fn reload_file(
    path: Option<&PathBuf>,
    config: &mut Config,
    listeners: &mut Listeners,
    table: &SharedTable,
) -> ReloadOutcome {
    let Some(path) = path.cloned() else {
        let errors = vec!["no config file to reload: the gateway was started from an embedded config".to_string()];
        return reload_failed(errors);
    };
    tracing::info!(path = %path.display(), "reloading the configuration");
    let (old, current, table) = (config.clone(), reload::current(listeners), table.clone());
    let built = tokio::task::spawn_blocking(move || {
        let new = Config::load(&path)?;
        reload::build(new, Some(&old), &current, &table)
    })
    .await;
    let planned = match built {
        Ok(Ok(planned)) => planned,
        Ok(Err(errors)) => return reload_failed(reload::failure(&errors)),
        Err(e) => return reload_failed(vec![format!("building the configuration failed: {e}")]),
    };
    let prepared = match reload::bind(planned) {
        Ok(p) => p,
        Err(e) => return reload_failed(vec![e.to_string()]),
    };
    let (next, summary) = reload::commit(prepared, listeners);
    *config = next;
    for note in &summary.notes {
        tracing::warn!("reload: {note}");
    }
    tracing::info!(
        started = ?summary.started,
        replaced = ?summary.replaced,
        updated = ?summary.updated,
        stopped = ?summary.stopped,
        "configuration reloaded"
    );
    reloaded(true);
    config_live();
    Ok(serde_json::to_value(&summary).unwrap_or_default())
}

fn reload_failed(errors: Vec<String>) -> ReloadOutcome {
    for e in &errors {
        tracing::error!("reload: {e}");
    }
    tracing::error!("reload failed; the running configuration stays");
    reloaded(false);
    Err(errors)
}

/// Both results of `switchyard_config_reloads_total` exported from the start, so that `rate()` sees the first reload.
fn reloads_at_zero() {
    for result in ["success", "failure"] {
        metrics::counter!(m::CONFIG_RELOADS, "result" => result).increment(0);
    }
}

fn reloaded(ok: bool) {
    metrics::counter!(m::CONFIG_RELOADS, "result" => if ok { "success" } else { "failure" }).increment(1);
}

/// A configuration went live (start-up or a successful reload).
fn config_live() {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    metrics::gauge!(m::CONFIG_LAST_RELOAD_SUCCESS).set(now);
}

/// The `[[service]]` policies, for the table writer.
fn policies(config: &Config) -> HashMap<String, Arc<ServicePolicy>> {
    config.services.iter().map(|s| (s.name.clone(), Arc::new(s.policy.clone()))).collect()
}

/// The active health checkers of one configuration, stopped together.
struct Checkers {
    tasks: JoinSet<()>,
    stop: CancellationToken,
}

impl Checkers {
    fn spawn(config: &Config, table: &SharedTable, parent: &CancellationToken) -> Checkers {
        let (mut tasks, stop) = (JoinSet::new(), parent.child_token());
        crate::upstream::health::checker::spawn_all(config, table, &mut tasks, &stop);
        Checkers { tasks, stop }
    }

    async fn stop(mut self) {
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
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
