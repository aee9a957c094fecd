//! The etcd discovery source. It lists every prefix at one revision R (paged,
//! so 100,000 keys load despite etcd's 4 MiB response cap) and reports one
//! `Update::Replace`; then it watches each prefix from R+1 and reports every
//! watch response as one `Update::Apply`. A broken stream reconnects with
//! backoff and jitter, moving to the next endpoint, and resumes each prefix from
//! its last seen revision + 1; a watch cancelled for compaction lists again and
//! reports a fresh `Replace`, which the registry diffs against the table.
//!
//! While etcd is unreachable nothing is reported, so the last table keeps
//! serving: an error never turns into an empty table. With `snapshot_path`
//! the known instances are written to disk after changes, and a gateway that
//! starts while etcd is down serves from that file until etcd answers.

mod backoff;
pub(crate) mod connect;
pub mod keys;
mod snapshot;
mod state;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, EventType, GetOptions, WatchOptions, WatchResponse, WatchStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use backoff::Backoff;
pub use snapshot::Snapshot;

use self::keys::{key_after, prefix_end};
use self::state::{Known, Listing};
use super::{Source, Update};
use crate::config::EtcdDiscovery;
use crate::metrics as m;
use connect::{CallError, ConnectError, EtcdConnect};

/// Keys per list request: far below the 4 MiB cap even with 1 KiB values.
pub const LIST_PAGE: i64 = 2000;
/// How often the snapshot file is rewritten at most, and the gauges refreshed.
const TICK: Duration = Duration::from_millis(250);

pub struct EtcdSource {
    cfg: EtcdDiscovery,
}

impl EtcdSource {
    pub fn new(cfg: EtcdDiscovery) -> Self {
        EtcdSource { cfg }
    }
}

/// Why a session with etcd ended.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Call(#[from] CallError),
    #[error("watch stream failed: {0}")]
    Stream(etcd_client::Error),
    #[error("watch stream closed by etcd")]
    Closed,
    #[error("watch cancelled by etcd: {0}")]
    Canceled(String),
    #[error("watch start revision is compacted (etcd kept revisions from {0}); listing again")]
    Compacted(i64),
    #[error("the table writer is gone")]
    WriterGone,
}

impl SessionError {
    /// Every reason a session ends with, except the writer going away (which
    /// ends the source and is never counted).
    const REASONS: [&'static str; 6] = ["connect", "request", "stream_error", "stream_closed", "canceled", "compacted"];

    fn reason(&self) -> &'static str {
        match self {
            SessionError::Connect(_) => "connect",
            SessionError::Call(_) => "request",
            SessionError::Stream(_) => "stream_error",
            SessionError::Closed => "stream_closed",
            SessionError::Canceled(_) => "canceled",
            SessionError::Compacted(_) => "compacted",
            SessionError::WriterGone => "shutdown",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Link {
    Starting,
    Up,
    Down(Instant),
}

struct Run {
    prefixes: Vec<String>,
    conn: EtcdConnect,
    snapshot_path: Option<std::path::PathBuf>,
    updates: mpsc::Sender<Update>,
    known: Known,
    /// Per prefix: the last revision whose events were applied.
    revs: Vec<i64>,
    need_list: bool,
    listed: bool,
    snapshot_dirty: bool,
    revision: i64,
    link: Link,
    /// Milliseconds after `started` of the last confirmation of the table.
    synced_at: Arc<AtomicU64>,
    started: Instant,
}

impl Source for EtcdSource {
    async fn run(self, updates: mpsc::Sender<Update>, shutdown: CancellationToken) {
        let started = Instant::now();
        let mut r = Run {
            prefixes: self.cfg.prefixes.clone(),
            conn: EtcdConnect::from(&self.cfg),
            snapshot_path: self.cfg.snapshot_path.clone(),
            updates,
            known: Known::default(),
            revs: vec![0; self.cfg.prefixes.len()],
            need_list: true,
            listed: false,
            snapshot_dirty: false,
            revision: 0,
            link: Link::Starting,
            synced_at: Arc::new(AtomicU64::new(0)),
            started,
        };
        metrics::gauge!(m::DISCOVERY_CONNECTED, "source" => "etcd").set(0.0);
        register_at_zero();
        let synced_at = r.synced_at.clone();
        let since_sync = move || {
            let ms = started.elapsed().as_millis() as u64
                - synced_at.load(Ordering::Relaxed).min(started.elapsed().as_millis() as u64);
            metrics::gauge!(m::DISCOVERY_SINCE_SYNC, "source" => "etcd").set(ms as f64 / 1000.0);
        };
        let mut backoff = Backoff::default();
        let mut endpoint = 0usize;
        let mut attempts = 0usize;
        let mut snapshot_tried = false;
        let mut gauges = tokio::time::interval(Duration::from_secs(1));
        gauges.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        'outer: loop {
            let result = {
                let session = r.session(endpoint, &mut backoff);
                tokio::pin!(session);
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => break 'outer,
                        res = &mut session => break res,
                        _ = gauges.tick() => since_sync(),
                    }
                }
            };
            attempts += 1;
            let e = match result {
                Ok(()) => break,
                Err(SessionError::WriterGone) => return,
                Err(e) => e,
            };
            metrics::counter!(m::DISCOVERY_WATCH_RESTARTS, "reason" => e.reason()).increment(1);
            let delay = if let SessionError::Compacted(_) = e {
                tracing::info!("etcd: {e}");
                Duration::ZERO
            } else {
                metrics::counter!(m::DISCOVERY_ERRORS, "source" => "etcd", "kind" => e.reason()).increment(1);
                r.down(&e);
                endpoint += 1;
                backoff.delay(fastrand::f64())
            };
            if !r.listed
                && !snapshot_tried
                && (started.elapsed() >= r.conn.dial_timeout || attempts >= r.conn.endpoints.len())
            {
                snapshot_tried = true;
                if r.serve_snapshot().await.is_err() {
                    return;
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
            since_sync();
        }
        metrics::gauge!(m::DISCOVERY_CONNECTED, "source" => "etcd").set(0.0);
        r.flush_snapshot().await;
    }
}

/// Every counter of this source whose labels are known from the start, at 0,
/// so that `rate()` and `increase()` see their first increment.
fn register_at_zero() {
    for reason in SessionError::REASONS {
        metrics::counter!(m::DISCOVERY_WATCH_RESTARTS, "reason" => reason).increment(0);
        if reason != "compacted" {
            metrics::counter!(m::DISCOVERY_ERRORS, "source" => "etcd", "kind" => reason).increment(0);
        }
    }
    metrics::counter!(m::DISCOVERY_ERRORS, "source" => "etcd", "kind" => "snapshot").increment(0);
    for kind in ["put", "delete"] {
        metrics::counter!(m::DISCOVERY_EVENTS, "source" => "etcd", "type" => kind).increment(0);
    }
    for kind in state::INVALID_KINDS {
        metrics::counter!(m::DISCOVERY_INVALID_VALUES, "source" => "etcd", "kind" => kind).increment(0);
    }
}

impl Run {
    /// Connect, list if needed, watch until something fails. Returns `Ok` never
    /// (the watch runs until an error), except through the caller's shutdown.
    async fn session(&mut self, endpoint: usize, backoff: &mut Backoff) -> Result<(), SessionError> {
        let mut client = self.conn.connect(endpoint).await?;
        if self.need_list {
            self.list(&mut client).await?;
        }
        let mut stream = self.open_watches(&mut client).await?;
        let mut ids: HashMap<i64, usize> = HashMap::new();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if self.link == Link::Up {
                        self.mark_synced();
                    }
                    self.flush_snapshot().await;
                }
                msg = stream.message() => {
                    let resp = match msg {
                        Ok(Some(resp)) => resp,
                        Ok(None) => return Err(SessionError::Closed),
                        Err(e) => return Err(SessionError::Stream(e)),
                    };
                    if resp.canceled() {
                        if resp.compact_revision() > 0 {
                            self.need_list = true;
                            return Err(SessionError::Compacted(resp.compact_revision()));
                        }
                        return Err(SessionError::Canceled(resp.cancel_reason().to_string()));
                    }
                    if resp.created() {
                        // etcd answers the create requests of one stream in order.
                        let index = ids.len();
                        ids.insert(resp.watch_id(), index);
                        if ids.len() == self.prefixes.len() {
                            self.up(endpoint);
                            backoff.reset();
                        }
                    }
                    if let Some(&index) = ids.get(&resp.watch_id()) {
                        if !resp.events().is_empty() {
                            self.apply(index, &resp).await?;
                        }
                    }
                }
            }
        }
    }

    /// Lists every prefix at one revision, in pages, and reports a `Replace`.
    async fn list(&mut self, client: &mut Client) -> Result<(), SessionError> {
        let t0 = Instant::now();
        let mut kv = client.kv_client();
        let mut listing = Listing::default();
        let mut revision = 0i64;
        let mut pages = 0usize;
        for prefix in &self.prefixes {
            let end = prefix_end(prefix.as_bytes());
            let mut start = prefix.as_bytes().to_vec();
            loop {
                let mut opts = GetOptions::new().with_range(end.clone()).with_limit(LIST_PAGE);
                if revision > 0 {
                    opts = opts.with_revision(revision);
                }
                let resp = self.conn.call("list", kv.get(start.clone(), Some(opts))).await?;
                pages += 1;
                if revision == 0 {
                    revision = resp.header().map(|h| h.revision()).unwrap_or(0);
                }
                for kv in resp.kvs() {
                    self.known.listed(&mut listing, prefix, kv.key(), kv.value(), kv.mod_revision());
                }
                match resp.kvs().last() {
                    Some(last) if resp.more() => start = key_after(last.key()),
                    _ => break,
                }
            }
        }
        let instances = self.known.replace(listing);
        tracing::info!(
            instances = instances.len(),
            revision,
            pages,
            elapsed_ms = t0.elapsed().as_millis() as u64,
            "etcd prefixes listed"
        );
        self.revs = vec![revision; self.prefixes.len()];
        self.revision = revision;
        self.need_list = false;
        self.listed = true;
        self.snapshot_dirty = true;
        self.mark_synced();
        self.updates
            .send(Update::Replace { instances, revision: revision.max(0) as u64 })
            .await
            .map_err(|_| SessionError::WriterGone)
    }

    /// One stream, one watch per prefix (with its trailing `/`), each from its
    /// last applied revision + 1.
    async fn open_watches(&mut self, client: &mut Client) -> Result<WatchStream, SessionError> {
        let opts = |rev: i64| WatchOptions::new().with_prefix().with_start_revision(rev + 1).with_prev_key();
        let mut stream =
            self.conn.call("watch", client.watch(self.prefixes[0].as_str(), Some(opts(self.revs[0])))).await?;
        for (prefix, rev) in self.prefixes.iter().zip(&self.revs).skip(1) {
            self.conn.call("watch", stream.watch(prefix.as_str(), Some(opts(*rev)))).await?;
        }
        Ok(stream)
    }

    /// One watch response → one `Apply` (when it changes anything).
    async fn apply(&mut self, index: usize, resp: &WatchResponse) -> Result<(), SessionError> {
        let prefix = &self.prefixes[index];
        let mut changes = Vec::with_capacity(resp.events().len());
        let mut rev = self.revs[index];
        for event in resp.events() {
            let Some(kv) = event.kv() else { continue };
            rev = rev.max(kv.mod_revision());
            let change = match event.event_type() {
                EventType::Put => {
                    metrics::counter!(m::DISCOVERY_EVENTS, "source" => "etcd", "type" => "put").increment(1);
                    self.known.put(prefix, kv.key(), kv.value(), kv.mod_revision())
                }
                EventType::Delete => {
                    metrics::counter!(m::DISCOVERY_EVENTS, "source" => "etcd", "type" => "delete").increment(1);
                    self.known.delete(prefix, kv.key())
                }
            };
            changes.extend(change);
        }
        self.revs[index] = rev;
        self.revision = self.revision.max(rev);
        self.mark_synced();
        if changes.is_empty() {
            return Ok(());
        }
        self.snapshot_dirty = true;
        self.updates
            .send(Update::Apply { changes, revision: rev.max(0) as u64 })
            .await
            .map_err(|_| SessionError::WriterGone)
    }

    fn mark_synced(&self) {
        self.synced_at.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn up(&mut self, endpoint: usize) {
        let at = &self.conn.endpoints[endpoint % self.conn.endpoints.len()];
        match self.link {
            Link::Down(since) => tracing::info!(
                endpoint = %at, revision = self.revision, instances = self.known.len(),
                "etcd watch restored after {:.1}s", since.elapsed().as_secs_f64()
            ),
            Link::Starting => {
                tracing::info!(endpoint = %at, revision = self.revision, instances = self.known.len(), "etcd watch started")
            }
            Link::Up => {}
        }
        self.link = Link::Up;
        metrics::gauge!(m::DISCOVERY_CONNECTED, "source" => "etcd").set(1.0);
    }

    /// Logs the first failure of an outage; later retries only at debug.
    fn down(&mut self, e: &SessionError) {
        metrics::gauge!(m::DISCOVERY_CONNECTED, "source" => "etcd").set(0.0);
        match self.link {
            Link::Up => tracing::warn!(
                "etcd lost: {e}; serving the last known table ({} instances) and retrying",
                self.known.len()
            ),
            Link::Starting => tracing::warn!("etcd unreachable: {e}; retrying"),
            Link::Down(_) => {
                tracing::debug!("etcd still unreachable: {e}");
                return;
            }
        }
        self.link = Link::Down(Instant::now());
    }

    /// At start-up with etcd unreachable: report the snapshot's instances.
    /// Errors only when the writer is gone.
    async fn serve_snapshot(&mut self) -> Result<(), ()> {
        let Some(path) = self.snapshot_path.clone() else {
            return Ok(());
        };
        let read = tokio::task::spawn_blocking(move || snapshot::read(&path)).await;
        match read {
            Ok(Ok(snap)) => {
                tracing::warn!(
                    instances = snap.instances.len(),
                    revision = snap.revision,
                    "etcd unreachable at start: serving the snapshot until it answers"
                );
                self.known.seed(&self.prefixes, &snap.instances);
                self.updates
                    .send(Update::Replace { instances: snap.instances, revision: snap.revision })
                    .await
                    .map_err(|_| ())
            }
            Ok(Err(e)) => {
                tracing::warn!("etcd unreachable at start and no usable snapshot: {e}");
                Ok(())
            }
            Err(e) => {
                tracing::error!("reading the snapshot: {e}");
                Ok(())
            }
        }
    }

    /// Writes the snapshot if something changed since the last write.
    async fn flush_snapshot(&mut self) {
        let Some(path) = self.snapshot_path.clone() else {
            return;
        };
        if !self.snapshot_dirty {
            return;
        }
        self.snapshot_dirty = false;
        let snap =
            Snapshot { revision: self.revision.max(0) as u64, instances: self.known.instances().cloned().collect() };
        match tokio::task::spawn_blocking(move || snapshot::write(&path, &snap)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!("writing the snapshot: {e}");
                metrics::counter!(m::DISCOVERY_ERRORS, "source" => "etcd", "kind" => "snapshot").increment(1);
            }
            Err(e) => tracing::error!("writing the snapshot: {e}"),
        }
    }
}
