//! The accept loop every listener shares: accepts until shutdown, within the
//! process-wide connection limit, and hands each connection on with the slot it
//! holds under that limit.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics as m;

/// What every listener's accept loop shares while it serves.
pub(crate) struct ListenerContext<'a> {
    pub limit: Arc<Semaphore>,
    /// Watches hyper connections: they finish their in-flight requests on shutdown.
    pub graceful: &'a GracefulShutdown,
    /// Tracks non-HTTP connection tasks (L4 relays, TLS handshakes, upgraded
    /// connections); waited for on shutdown.
    pub tracker: TaskTracker,
    /// Cancelled when the listeners stop accepting.
    pub shutdown: CancellationToken,
    /// Cancelled when the grace period is over: tracked tasks must end now.
    pub hard_stop: CancellationToken,
}

impl ListenerContext<'_> {
    /// Spawns a connection task that shutdown waits for, and that ends when the grace period is over.
    pub fn spawn_tracked(&self, task: impl Future<Output = ()> + Send + 'static) {
        let hard_stop = self.hard_stop.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                _ = hard_stop.cancelled() => {}
                _ = task => {}
            }
        });
    }
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

/// Accepts until shutdown, within the connection limit, handing each connection to `on_accept`.
pub(crate) async fn accept_loop(
    name: &str,
    socket: TcpListener,
    ctx: &ListenerContext<'_>,
    mut on_accept: impl FnMut(Accepted),
) {
    let accepted = metrics::counter!(m::CONNECTIONS, "listener" => name.to_string());
    let active = metrics::gauge!(m::CONNECTIONS_ACTIVE, "listener" => name.to_string());
    loop {
        let permit = tokio::select! {
            _ = ctx.shutdown.cancelled() => break,
            p = ctx.limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
        };
        let (stream, peer) = tokio::select! {
            _ = ctx.shutdown.cancelled() => break,
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
    // Connections the kernel has completed but nobody accepted are reset when the
    // socket closes: take them first (a restart's new process took the others).
    let Ok(socket) = socket.into_std() else { return };
    while let Ok(permit) = ctx.limit.clone().try_acquire_owned() {
        let Ok((stream, peer)) = socket.accept() else { break };
        let Ok(stream) = stream.set_nonblocking(true).and_then(|()| TcpStream::from_std(stream)) else { continue };
        let _ = stream.set_nodelay(true);
        accepted.increment(1);
        active.increment(1.0);
        on_accept(Accepted { stream, peer, slot: ConnectionSlot { _permit: permit, active: active.clone() } });
    }
}
