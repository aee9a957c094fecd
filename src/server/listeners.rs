//! The running listeners: one task each, with its own cancellation and drain.
//! Stopping a listener (a reload removed or replaced it, or the process shuts
//! down) closes its socket at once and gives its open connections the grace
//! period to finish; the other listeners are not touched.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Listener;
use crate::listener::{Built, DrainSignal, Lifetime, ListenerContext, ProxySlot};

/// One listener that is accepting.
pub(super) struct Running {
    pub config: Listener,
    /// The bound address (a configured port 0 resolved).
    pub addr: SocketAddr,
    /// HTTP(S) listeners: where a reload stores the new request path.
    pub slot: Option<ProxySlot>,
    pub lifetime: Lifetime,
    stop: CancellationToken,
}

impl Running {
    /// Stops accepting; the listener's connections drain in its own task.
    pub fn stop(self) {
        self.stop.cancel();
    }
}

/// Every running listener, in config order, and those still draining.
pub(super) struct Listeners {
    pub running: Vec<Running>,
    /// Listener tasks: they end once stopped and drained.
    tasks: JoinSet<()>,
    /// The process-wide connection limit every accept loop shares.
    limit: Arc<Semaphore>,
    /// `timeouts.shutdown_grace` in milliseconds, as of the latest config.
    grace_ms: Arc<AtomicU64>,
}

impl Listeners {
    pub fn new(max_connections: usize, grace: Duration) -> Listeners {
        Listeners {
            running: Vec::new(),
            tasks: JoinSet::new(),
            limit: Arc::new(Semaphore::new(max_connections)),
            grace_ms: Arc::new(AtomicU64::new(millis(grace))),
        }
    }

    pub fn set_grace(&self, grace: Duration) {
        self.grace_ms.store(millis(grace), Ordering::Relaxed);
    }

    /// Starts accepting on `socket`; appended at the end (call in config order).
    pub fn start(&mut self, config: Listener, built: Built, socket: TcpListener, lifetime: Lifetime) {
        let addr = socket.local_addr().unwrap_or(config.listen);
        let slot = built.proxy_slot();
        let stop = CancellationToken::new();
        let task = serve(
            config.name.clone(),
            built,
            socket,
            lifetime.clone(),
            self.limit.clone(),
            stop.clone(),
            self.grace_ms.clone(),
        );
        self.tasks.spawn(task);
        tracing::info!(listener = %config.name, protocol = config.kind.protocol(), %addr, "listening");
        self.running.push(Running { config, addr, slot, lifetime, stop });
    }

    /// Takes the listener called `name` out of the running set; it accepts until stopped.
    pub fn take(&mut self, name: &str) -> Option<Running> {
        let index = self.running.iter().position(|r| r.config.name == name)?;
        // Ended tasks of earlier stops are reaped here, so the set stays as small as what drains.
        while self.tasks.try_join_next().is_some() {}
        Some(self.running.remove(index))
    }

    /// Puts the running listeners in `order` (by name; names not in it go last).
    pub fn reorder(&mut self, order: &[String]) {
        self.running.sort_by_key(|r| order.iter().position(|n| *n == r.config.name).unwrap_or(usize::MAX));
    }

    /// Stops every listener and waits until all have drained (each within the grace period).
    pub async fn shutdown(mut self) {
        for r in &self.running {
            r.stop.cancel();
        }
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Connections accepted just before the stop get this long to send their first
/// request before the graceful shutdown begins: a connection whose protocol
/// (HTTP/1.1 or h2) has not been seen yet is closed at once then (`drain`), which a
/// client that connected in time would see as a reset.
const SETTLE: Duration = Duration::from_millis(250);

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Accepts until `stop`, then drains: hyper connections finish their in-flight
/// requests (keep-alive is turned off), tracked tasks (TLS handshakes, L4 relays,
/// upgraded connections) are waited for, and what is left when the grace period
/// is over is cut.
async fn serve(
    name: String,
    built: Built,
    socket: TcpListener,
    lifetime: Lifetime,
    limit: Arc<Semaphore>,
    stop: CancellationToken,
    grace_ms: Arc<AtomicU64>,
) {
    let graceful = GracefulShutdown::new();
    let drain = Arc::new(DrainSignal::default());
    let ctx = ListenerContext {
        limit,
        graceful: &graceful,
        tracker: lifetime.tracker.clone(),
        shutdown: stop,
        drain: drain.clone(),
        hard_stop: lifetime.hard_stop.clone(),
    };
    built.serve(&name, socket, &ctx).await;
    drop(ctx);
    let grace = Duration::from_millis(grace_ms.load(Ordering::Relaxed));
    tracing::info!(listener = %name, ?grace, "listener stopped accepting; draining its connections");
    lifetime.tracker.close();
    let drained = async {
        tokio::time::sleep(SETTLE.min(grace / 2)).await;
        drain.start();
        tokio::join!(graceful.shutdown(), lifetime.tracker.wait())
    };
    if tokio::time::timeout(grace, drained).await.is_err() {
        tracing::warn!(listener = %name, "grace period over; closing remaining connections");
    }
    lifetime.hard_stop.cancel();
    tracing::debug!(listener = %name, "listener drained");
}
