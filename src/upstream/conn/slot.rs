//! A connection's place in its instance's count of open connections, shared by
//! hyper's HTTP/1.1 connections (`pool`) and the in-task exchange's (`h1`), so
//! one cap covers both.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

/// One open connection counted in a pool's `open` (hyper's or the in-task
/// exchange's, `h1`); frees its place and wakes a request waiting for one on drop.
/// It holds the two counters only, not the pool, which holds idle connections.
#[derive(Debug)]
pub(super) struct Slot {
    pub(super) open: Arc<AtomicUsize>,
    pub(super) freed: Arc<Notify>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        self.freed.notify_waiters();
    }
}
