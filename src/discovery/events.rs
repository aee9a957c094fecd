//! A small bounded ring of the most recent discovery events, for the admin
//! status page: what changed, when, at which revision. The table writer
//! records each update it applies; the ring keeps the last [`CAPACITY`].
//! It is process-wide (one gateway per process in production).

use std::collections::VecDeque;
use std::sync::Mutex;

use super::{Change, Update};

/// Events kept: enough to see the last rolling restart of a small service.
pub const CAPACITY: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Event {
    /// Wall-clock time of the swap, ms since the Unix epoch.
    pub at_ms: u64,
    /// `put`, `delete` or `resync` (a full listing: etcd start, compaction, snapshot, file reload).
    pub kind: &'static str,
    pub service: String,
    pub id: String,
    pub addr: String,
    pub revision: u64,
}

static RECENT: Mutex<VecDeque<Event>> = Mutex::new(VecDeque::new());

/// The events of one update, newest last. A `Replace` is one `resync` event
/// (its size in `addr`), not one per instance.
pub fn of_update(update: &Update, at_ms: u64) -> Vec<Event> {
    match update {
        Update::Replace { instances, revision } => vec![Event {
            at_ms,
            kind: "resync",
            service: String::new(),
            id: String::new(),
            addr: format!("{} instances", instances.len()),
            revision: *revision,
        }],
        Update::Apply { changes, revision } => changes
            .iter()
            .rev()
            .take(CAPACITY)
            .rev()
            .map(|c| match c {
                Change::Put(i) => Event {
                    at_ms,
                    kind: "put",
                    service: i.service.clone(),
                    id: i.id.clone(),
                    addr: i.addr.clone(),
                    revision: *revision,
                },
                Change::Delete { service, id } => Event {
                    at_ms,
                    kind: "delete",
                    service: service.clone(),
                    id: id.clone(),
                    addr: String::new(),
                    revision: *revision,
                },
            })
            .collect(),
        // Settings from a config reload are not discovery events.
        Update::Settings { .. } => Vec::new(),
    }
}

/// Appends, dropping the oldest beyond [`CAPACITY`].
pub fn record(events: Vec<Event>) {
    let mut ring = RECENT.lock().unwrap_or_else(|e| e.into_inner());
    push(&mut ring, events);
}

fn push(ring: &mut VecDeque<Event>, events: Vec<Event>) {
    for e in events {
        if ring.len() == CAPACITY {
            ring.pop_front();
        }
        ring.push_back(e);
    }
}

/// The recent events, newest first.
pub fn recent() -> Vec<Event> {
    RECENT.lock().unwrap_or_else(|e| e.into_inner()).iter().rev().cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::Instance;

    fn put(id: &str) -> Change {
        Change::Put(Instance {
            service: "s".into(),
            id: id.into(),
            addr: "127.0.0.1:1".into(),
            metadata: Default::default(),
        })
    }

    #[test]
    fn ring_is_bounded_and_keeps_the_newest() {
        let mut ring = VecDeque::new();
        for n in 0..250 {
            let update = Update::Apply { changes: vec![put(&n.to_string())], revision: n };
            push(&mut ring, of_update(&update, n));
        }
        assert_eq!(ring.len(), CAPACITY);
        assert_eq!(ring.front().unwrap().id, "150");
        assert_eq!(ring.back().unwrap().id, "249");
        let big = Update::Apply { changes: (0..500).map(|n| put(&n.to_string())).collect(), revision: 1 };
        assert_eq!(of_update(&big, 0).len(), CAPACITY);
        let delete =
            Update::Apply { changes: vec![Change::Delete { service: "s".into(), id: "x".into() }], revision: 2 };
        assert_eq!(of_update(&delete, 0)[0].kind, "delete");
        let replace = Update::Replace { instances: vec![], revision: 3 };
        assert_eq!(of_update(&replace, 0)[0].kind, "resync");
    }
}
