//! The accept loop every listener shares: accepts until shutdown, within the
//! process-wide connection limit, and hands each connection on with the slot it
//! holds under that limit.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::futures::OwnedNotified;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
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
    /// Started when the graceful shutdown of the hyper connections begins: a
    /// connection that has not shown its protocol yet is closed then.
    pub drain: Arc<DrainSignal>,
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

/// The start of a listener's graceful drain, as its hyper connections see it.
///
/// Not a `CancellationToken` or a watch channel: a connection would poll it at every
/// wake-up, and each poll of those takes a lock that all of the listener's
/// connections share. A connection registers for the wake-up once and afterwards
/// reads the flag.
#[derive(Default)]
pub(crate) struct DrainSignal {
    started: AtomicBool,
    notify: Arc<Notify>,
}

impl DrainSignal {
    pub fn start(&self) {
        self.started.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    pub fn started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }

    /// What wakes a connection when the drain starts.
    pub fn wake_up(&self) -> OwnedNotified {
        self.notify.clone().notified_owned()
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

impl ConnectionSlot {
    /// A slot under a limit of its own, for unit tests of what holds one.
    #[cfg(test)]
    pub fn detached() -> ConnectionSlot {
        let permit = Arc::new(Semaphore::new(1)).try_acquire_owned().expect("a fresh semaphore has a permit");
        ConnectionSlot { _permit: permit, active: metrics::gauge!("switchyard_test_slots") }
    }
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
    let mut errors = AcceptErrors::new(name);
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
                    let pause = errors.failed(&e);
                    tokio::select! {
                        _ = ctx.shutdown.cancelled() => return,
                        _ = tokio::time::sleep(pause) => {}
                    }
                    continue;
                }
            },
        };
        errors.succeeded();
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

/// Accept failures of one listener: counted, logged at most once a second, and
/// answered with a growing pause. Running out of file descriptors (EMFILE) makes
/// every accept fail at once; retrying at full speed would spin a core and
/// flood the log. nginx pauses accepting for 500 ms in that case; the pause
/// here starts at 10 ms and doubles up to 1 s, and is reset by a success.
pub(crate) struct AcceptErrors {
    listener: String,
    counter: metrics::Counter,
    pause: Duration,
    last_log: Option<Instant>,
    suppressed: u64,
}

impl AcceptErrors {
    const FIRST_PAUSE: Duration = Duration::from_millis(10);
    const MAX_PAUSE: Duration = Duration::from_secs(1);
    const LOG_EVERY: Duration = Duration::from_secs(1);

    pub fn new(listener: &str) -> AcceptErrors {
        AcceptErrors {
            listener: listener.to_string(),
            counter: metrics::counter!(m::ACCEPT_ERRORS, "listener" => listener.to_string()),
            pause: Self::FIRST_PAUSE,
            last_log: None,
            suppressed: 0,
        }
    }

    /// Records a failure; returns how long to pause before the next accept.
    pub fn failed(&mut self, e: &std::io::Error) -> Duration {
        self.counter.increment(1);
        let now = Instant::now();
        if self.last_log.is_none_or(|t| now.duration_since(t) >= Self::LOG_EVERY) {
            tracing::warn!(listener = %self.listener, suppressed = self.suppressed, "accept failed: {e}");
            self.last_log = Some(now);
            self.suppressed = 0;
        } else {
            self.suppressed += 1;
        }
        let pause = self.pause;
        self.pause = (self.pause * 2).min(Self::MAX_PAUSE);
        pause
    }

    pub fn succeeded(&mut self) {
        self.pause = Self::FIRST_PAUSE;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_errors_back_off_to_a_second_and_log_once_a_second() {
        let mut errors = AcceptErrors::new("t");
        let e = std::io::Error::from_raw_os_error(24); // EMFILE
        let pauses: Vec<Duration> = (0..10).map(|_| errors.failed(&e)).collect();
        assert_eq!(pauses[0], Duration::from_millis(10));
        assert_eq!(pauses[1], Duration::from_millis(20));
        assert_eq!(*pauses.last().unwrap(), Duration::from_secs(1));
        // Ten failures within a second: one line logged, nine suppressed.
        assert_eq!(errors.suppressed, 9);
        errors.succeeded();
        assert_eq!(errors.failed(&e), Duration::from_millis(10));
    }
}
