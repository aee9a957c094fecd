//! A connection's place in its instance's count of open connections, shared by
//! hyper's HTTP/1.1 connections (`pool`) and the in-task exchange's (`h1`), so
//! one cap covers both; and [`Freed`], which wakes the requests waiting at that cap.

use std::sync::atomic::{fence, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::futures::Notified;
use tokio::sync::Notify;

/// One open connection counted in a pool's `open` (hyper's or the in-task
/// exchange's, `h1`); frees its place and wakes a request waiting for one on drop.
/// It holds the two counters only, not the pool, which holds idle connections.
#[derive(Debug)]
pub(super) struct Slot {
    pub(super) open: Arc<AtomicUsize>,
    pub(super) freed: Arc<Freed>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        self.freed.wake();
    }
}

/// Wakes the requests waiting for one of an instance's connections (all of them
/// busy at the cap) when one is put back or closes. A connection is put back once
/// per request, so a wake costs nothing shared while no request waits: tokio's
/// `Notify::notify_waiters` locks the waiter list's mutex on every call, a lock
/// every worker would take per request of a busy instance. Waiters announce
/// themselves first ([`Freed::announce`]); a wake reads that count only.
#[derive(Debug, Default)]
pub(super) struct Freed {
    notify: Notify,
    waiting: AtomicUsize,
}

impl Freed {
    /// Wakes every announced request; call it after the connection is back (or its place freed).
    pub(super) fn wake(&self) {
        // With the fence in `announce`: either this load sees the waiter, or the
        // waiter's look for a connection, after its fence, sees what was freed here.
        fence(Ordering::SeqCst);
        if self.waiting.load(Ordering::Relaxed) > 0 {
            self.notify.notify_waiters();
        }
    }

    /// Counts a request that may wait, until the guard drops. Look for a
    /// connection only after this (and after enabling a [`Announced::notified`]).
    pub(super) fn announce(&self) -> Announced<'_> {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        Announced(self)
    }
}

/// A request counted as possibly waiting in [`Freed`].
pub(super) struct Announced<'a>(&'a Freed);

impl<'a> Announced<'a> {
    /// The next wake; `enable` it before looking, so a wake in between is not missed.
    pub(super) fn notified(&self) -> Notified<'a> {
        self.0.notify.notified()
    }
}

impl Drop for Announced<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_wake_reaches_announced_waiters_only_and_costs_nothing_without_them() {
        let freed = Freed::default();
        // No waiter: the wake does not touch the notifier, so a later `notified`
        // is not woken by it (notify_waiters has no permit to leave behind anyway).
        freed.wake();
        let announced = freed.announce();
        let woken = announced.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        assert!(tokio::time::timeout(Duration::from_millis(20), woken.as_mut()).await.is_err(), "nothing woke it yet");
        freed.wake();
        tokio::time::timeout(Duration::from_secs(5), woken).await.expect("an announced waiter is woken");
        drop(announced);
        assert_eq!(freed.waiting.load(Ordering::Relaxed), 0);
    }
}
