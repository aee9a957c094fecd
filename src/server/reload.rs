//! Live config reload (SIGHUP, `POST /reload`), and the first start, which is a
//! reload from nothing. In three steps, like start-up: [`build`] reads and
//! checks everything and makes every listener and request path (fallible, binds
//! nothing); [`bind`] opens the sockets of new and changed listeners (fallible;
//! with `SO_REUSEPORT` a changed listener's new socket binds while the old one
//! still listens); [`commit`] swaps and starts (infallible). A failure in either
//! of the first two keeps the running config untouched.
//!
//! What a reload changes, per listener (by name):
//! - kept (same address, protocol, certificates and connection timeouts): an
//!   HTTP(S) listener gets its new request path — routes, policies,
//!   `timeouts.request`, services' settings, access log — stored into its slot,
//!   which every request reads once; its connections stay open;
//! - changed otherwise, or new: a new socket and listener start, and the old one
//!   (if any) stops accepting and drains;
//! - gone: stops accepting and drains.
//!
//! `runtime.workers`, `admin.listen`, `limits.max_connections` and `[discovery]`
//! are not reloaded: a change to them is reported and logged, and the running
//! values stay until a restart.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use super::listeners::Listeners;
use super::{socket, ServerError};
use crate::config::{Config, ConfigError, ConfigErrors, Limits, Listener, ListenerKind, Timeouts};
use crate::http::HttpProxy;
use crate::listener::{self, Built, Lifetime, Parts};
use crate::upstream::conn::Upstreams;
use crate::upstream::SharedTable;

/// What a reload needs to know of a running listener.
#[derive(Clone)]
pub(super) struct Current {
    pub config: Listener,
    pub addr: SocketAddr,
    pub lifetime: Lifetime,
}

/// A config with everything made, nothing bound yet.
pub(super) struct Planned {
    config: Config,
    steps: Vec<Planned1>,
    notes: Vec<String>,
}

enum Planned1 {
    Keep { config: Listener, proxy: Option<HttpProxy> },
    Start { config: Listener, built: Built, lifetime: Lifetime, addr: SocketAddr },
}

/// A config with everything made and every new socket bound: committing it cannot fail.
pub(super) struct Prepared {
    pub config: Config,
    steps: Vec<Step>,
    pub notes: Vec<String>,
}

enum Step {
    /// A running listener stays; an HTTP(S) one gets this request path.
    Keep { config: Listener, proxy: Option<HttpProxy> },
    /// A listener starts on a new socket, replacing a running one of the same name if any.
    Start { config: Listener, built: Built, socket: TcpListener, lifetime: Lifetime },
}

impl Prepared {
    /// Every address this config's new sockets are bound to.
    pub fn bound_addrs(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.steps.iter().filter_map(|s| match s {
            Step::Start { socket, .. } => socket.local_addr().ok(),
            Step::Keep { .. } => None,
        })
    }

    /// Bound address of a listener that this config starts (tests, `Gateway::listener_addr`).
    pub fn addr(&self, name: &str) -> Option<SocketAddr> {
        self.steps.iter().find_map(|s| match s {
            Step::Start { config, socket, .. } if config.name == name => socket.local_addr().ok(),
            _ => None,
        })
    }
}

/// What a committed reload did, for the log and the `POST /reload` answer.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Summary {
    pub started: Vec<String>,
    pub replaced: Vec<String>,
    pub updated: Vec<String>,
    pub stopped: Vec<String>,
    /// Changes that need a restart, kept at their running values.
    pub notes: Vec<String>,
    /// Every listener now running: name → bound address.
    pub listeners: Vec<(String, SocketAddr)>,
}

/// Makes everything `config` needs; `old` is the running config (none at start)
/// and `current` its running listeners. Every error is reported.
pub(super) fn build(
    mut config: Config,
    old: Option<&Config>,
    current: &[Current],
    table: &SharedTable,
) -> Result<Planned, ConfigErrors> {
    let notes = old.map(|old| keep_restart_only(&mut config, old)).unwrap_or_default();
    if old.is_some() {
        config.warnings().iter().for_each(|w| tracing::warn!("{w}"));
    }
    // Every file's error is reported: listeners are built even when a service's CA failed.
    let (upstreams, mut errors) = Upstreams::build(&config).map_err(|e| ConfigErrors(vec![e]))?;
    let upstreams = Arc::new(upstreams);
    let parts = Parts { config: &config, table, upstreams: &upstreams };
    let mut steps = Vec::with_capacity(config.listeners.len());
    for (index, l) in config.listeners.iter().enumerate() {
        let running = current.iter().find(|c| c.config.name == l.name);
        let step = match (running, old) {
            (Some(c), Some(old)) if keeps_socket(&c.config, l, old, &config) => {
                listener::build_proxy(index, l, &parts, &c.lifetime)
                    .map(|proxy| Planned1::Keep { config: l.clone(), proxy })
            }
            _ => {
                let lifetime = Lifetime::default();
                // A port-0 listener that is replaced keeps the port it got.
                let addr = match running {
                    Some(c) if c.config.listen == l.listen => c.addr,
                    _ => l.listen,
                };
                listener::build(index, l, &parts, &lifetime).map(|built| Planned1::Start {
                    config: l.clone(),
                    built,
                    lifetime,
                    addr,
                })
            }
        };
        match step {
            Ok(s) => steps.push(s),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(Planned { config, steps, notes })
    } else {
        Err(ConfigErrors(errors))
    }
}

/// Binds the sockets of the listeners that start; on an error none stays bound.
pub(super) fn bind(planned: Planned) -> Result<Prepared, ServerError> {
    let Planned { config, steps, notes } = planned;
    let mut bound = Vec::with_capacity(steps.len());
    for step in steps {
        bound.push(match step {
            Planned1::Keep { config, proxy } => Step::Keep { config, proxy },
            Planned1::Start { config, built, lifetime, addr } => {
                let socket = socket::bind(addr).map_err(|source| ServerError::Bind {
                    name: config.name.clone(),
                    addr,
                    source,
                })?;
                Step::Start { config, built, socket, lifetime }
            }
        });
    }
    Ok(Prepared { config, steps: bound, notes })
}

/// Starts, swaps and stops; the new listeners accept before the ones they
/// replace stop, so an address being replaced never refuses a connection.
pub(super) fn commit(prepared: Prepared, listeners: &mut Listeners) -> (Config, Summary) {
    let Prepared { config, steps, notes } = prepared;
    let mut summary = Summary { notes, ..Summary::default() };
    let mut replaced = Vec::new();
    let order: Vec<String> = config.listeners.iter().map(|l| l.name.clone()).collect();
    for step in steps {
        match step {
            Step::Keep { config, proxy } => {
                if let Some(running) = listeners.running.iter_mut().find(|r| r.config.name == config.name) {
                    if let (Some(slot), Some(proxy)) = (&running.slot, proxy) {
                        slot.store(Arc::new(proxy));
                    }
                    if running.config != config {
                        summary.updated.push(config.name.clone());
                    }
                    running.config = config;
                }
            }
            Step::Start { config, built, socket, lifetime } => {
                let name = config.name.clone();
                if let Some(old) = listeners.take(&name) {
                    replaced.push(old);
                    summary.replaced.push(name);
                } else {
                    summary.started.push(name);
                }
                listeners.start(config, built, socket, lifetime);
            }
        }
    }
    // Only now that every new socket accepts do the ones they replace close.
    for old in replaced {
        old.stop();
    }
    let gone: Vec<String> =
        listeners.running.iter().map(|r| r.config.name.clone()).filter(|n| !order.contains(n)).collect();
    for name in gone {
        if let Some(old) = listeners.take(&name) {
            old.stop();
        }
        summary.stopped.push(name);
    }
    listeners.reorder(&order);
    listeners.set_grace(config.timeouts.shutdown_grace);
    summary.listeners = listeners.running.iter().map(|r| (r.config.name.clone(), r.addr)).collect();
    (config, summary)
}

/// Whether a running listener can stay on its socket and connections under `new`.
fn keeps_socket(old: &Listener, new: &Listener, old_config: &Config, new_config: &Config) -> bool {
    if old.listen != new.listen {
        return false;
    }
    let (old_timeouts, new_timeouts) = (&old_config.timeouts, &new_config.timeouts);
    // Head and stream bounds are set on client connections too; the rest of
    // `limits` is process-wide (restart only) or read through the request path.
    let connection_limits =
        |l: &Limits| Limits { max_connections: 0, upstream_idle_per_host: 0, admin_max_connections: 0, ..l.clone() };
    if connection_limits(&old_config.limits) != connection_limits(&new_config.limits) {
        return false;
    }
    // An HTTP(S) listener reads the request timeout per request and the upstream
    // ones through its request path (both swapped); the grace period is read when
    // it stops. Every other timeout is set on client connections as they are accepted.
    let connection = |t: &Timeouts| Timeouts {
        request: Duration::ZERO,
        connect: Duration::ZERO,
        upstream_idle: Duration::ZERO,
        tcp_idle: Duration::ZERO,
        shutdown_grace: Duration::ZERO,
        ..t.clone()
    };
    let same_connection = connection(old_timeouts) == connection(new_timeouts);
    match (&old.kind, &new.kind) {
        (ListenerKind::Http { .. }, ListenerKind::Http { .. }) => same_connection,
        (ListenerKind::Https { certs: a, .. }, ListenerKind::Https { certs: b, .. }) => a == b && same_connection,
        // L4 listeners read their service, routes and timeouts when they are built.
        (a, b) => {
            let grace = |t: &Timeouts| Timeouts { shutdown_grace: Duration::ZERO, ..t.clone() };
            a == b && grace(old_timeouts) == grace(new_timeouts)
        }
    }
}

/// Settings only a restart applies: the running values are kept in `config`,
/// and each change is returned as a note.
fn keep_restart_only(config: &mut Config, old: &Config) -> Vec<String> {
    let mut notes = Vec::new();
    let mut keep = |field: &str, changed: bool| {
        if changed {
            notes.push(format!("{field}: changed in the file; a restart applies it, the running value stays"));
        }
    };
    keep("runtime.workers", config.workers != old.workers);
    keep("admin.listen", config.admin_listen != old.admin_listen);
    keep("limits.max_connections", config.limits.max_connections != old.limits.max_connections);
    keep("limits.admin_max_connections", config.limits.admin_max_connections != old.limits.admin_max_connections);
    keep("discovery", config.discovery != old.discovery);
    config.workers = old.workers;
    config.admin_listen = old.admin_listen;
    config.limits.max_connections = old.limits.max_connections;
    config.limits.admin_max_connections = old.limits.admin_max_connections;
    config.discovery = old.discovery.clone();
    notes
}

/// The running listeners as a reload sees them.
pub(super) fn current(listeners: &Listeners) -> Vec<Current> {
    listeners
        .running
        .iter()
        .map(|r| Current { config: r.config.clone(), addr: r.addr, lifetime: r.lifetime.clone() })
        .collect()
}

/// A reload that changed nothing: every error of the file or of what it names.
pub(super) fn failure(errors: &ConfigErrors) -> Vec<String> {
    errors.0.iter().map(ConfigError::to_string).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::parse(text).unwrap()
    }

    const HTTP: &str = "[[listener]]\nname = \"web\"\nprotocol = \"http\"\nlisten = \"127.0.0.1:8080\"\n";
    const TCP: &str = "[[listener]]\nname = \"pg\"\nprotocol = \"tcp\"\nlisten = \"127.0.0.1:6432\"\nservice = \"a\"\n";

    fn keeps(old: &str, new: &str) -> bool {
        let (old, new) = (config(old), config(new));
        keeps_socket(&old.listeners[0], &new.listeners[0], &old, &new)
    }

    #[test]
    fn what_keeps_a_listener_on_its_socket() {
        let routed = format!("{HTTP}[[listener.route]]\nservice = \"b\"\nbalance = \"least_request\"\n");
        assert!(keeps(HTTP, &routed), "routes are swapped in place");
        assert!(keeps(
            HTTP,
            &format!("[timeouts]\nrequest = \"1s\"\nconnect = \"1s\"\nshutdown_grace = \"1s\"\n{HTTP}")
        ));
        assert!(keeps(HTTP, &format!("{HTTP}access_log = {{ path = \"a.log\" }}\n")));
        assert!(!keeps(HTTP, &HTTP.replace("8080", "8081")), "a new address is a new socket");
        assert!(!keeps(HTTP, &format!("[timeouts]\nheader_read = \"1s\"\n{HTTP}")), "set on connections");
        assert!(!keeps(HTTP, &format!("[limits]\nmax_request_headers = 10\n{HTTP}")), "set on connections");
        assert!(keeps(HTTP, &format!("[limits]\nmax_connections = 10\nupstream_idle_per_host = 1\n{HTTP}")));
        assert!(keeps(TCP, TCP));
        assert!(!keeps(TCP, &TCP.replace("\"a\"", "\"b\"")), "L4 listeners read their service when built");
        assert!(!keeps(TCP, &format!("[timeouts]\nconnect = \"1s\"\n{TCP}")));
        assert!(!keeps(HTTP, &TCP.replace("pg", "web").replace("6432", "8080")), "another protocol");
    }

    #[test]
    fn restart_only_settings_keep_their_running_values() {
        let old = config(&format!("[runtime]\nworkers = 2\n{HTTP}"));
        let mut new = config(&format!(
            "[runtime]\nworkers = 3\n[admin]\nlisten = \"127.0.0.1:9999\"\n[discovery]\npath = \"other.toml\"\n[limits]\nmax_connections = 5\n[timeouts]\nrequest = \"1s\"\n{HTTP}"
        ));
        let notes = keep_restart_only(&mut new, &old);
        assert_eq!(notes.len(), 4, "{notes:?}");
        assert!(notes.iter().any(|n| n.starts_with("discovery:")), "{notes:?}");
        assert_eq!((new.workers, new.admin_listen, new.limits.max_connections), (2, old.admin_listen, 65_536));
        assert_eq!(new.discovery, old.discovery);
        assert_eq!(new.timeouts.request, Duration::from_secs(1), "everything else is the new file's");
        assert!(keep_restart_only(&mut config(HTTP), &config(HTTP)).is_empty());
    }
}
