//! The one writer of the table: receives discovery updates, applies each as a
//! batch to the registry, builds the next table and swaps it in. Readiness turns
//! true with the first table.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::endpoint::Status;
use super::registry::{Built, Registry};
use super::table::{Service, SharedTable, Table};
use crate::discovery::Update;
use crate::metrics as m;

/// Applies updates until shutdown or until every sender is gone.
pub async fn run(
    mut registry: Registry,
    mut updates: mpsc::Receiver<Update>,
    table: SharedTable,
    ready: Arc<AtomicBool>,
    shutdown: CancellationToken,
) {
    loop {
        let update = tokio::select! {
            _ = shutdown.cancelled() => return,
            u = updates.recv() => match u {
                Some(u) => u,
                None => return,
            },
        };
        let mut stamps = registration_stamps(&update);
        let mut changed = registry.apply(update);
        // Coalesce what is already queued into the same swap.
        while let Ok(more) = updates.try_recv() {
            stamps.extend(registration_stamps(&more));
            changed |= registry.apply(more);
        }
        if changed || !ready.load(Ordering::Relaxed) {
            // Building is CPU work (a weighted sequence over large weights takes
            // milliseconds to seconds); keep it off the request threads.
            let Ok((returned, Built { table: next, rebuilt, warnings })) = tokio::task::spawn_blocking(move || {
                let built = registry.build();
                (registry, built)
            })
            .await
            else {
                tracing::error!("building the upstream table panicked; the current table stays live");
                return;
            };
            registry = returned;
            for w in warnings {
                tracing::warn!(service = %w.service, id = %w.id, "{}", w.message);
            }
            record(&next, &rebuilt);
            tracing::debug!(
                version = next.version,
                revision = next.revision,
                services = next.services.len(),
                "table swapped"
            );
            table.store(Arc::new(next));
            ready.store(true, Ordering::Release);
            observe_lag(&stamps);
        }
    }
}

/// The metadata key a provider may set to the wall-clock time (ms since the
/// epoch) of its write; `switchyard register` always sets it.
pub const REGISTERED_AT_MS: &str = "registered_at_ms";

/// Write times of the instances an incremental update puts (a `Replace` is a
/// resync, not a registration, and would report stale times).
fn registration_stamps(update: &Update) -> Vec<u64> {
    let Update::Apply { changes, .. } = update else { return Vec::new() };
    changes
        .iter()
        .filter_map(|c| match c {
            crate::discovery::Change::Put(i) => i.metadata.get(REGISTERED_AT_MS)?.parse().ok(),
            _ => None,
        })
        .collect()
}

/// Discovery lag: from the provider's write to this table being live.
fn observe_lag(stamps: &[u64]) {
    if stamps.is_empty() {
        return;
    }
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    for &at in stamps {
        metrics::histogram!(m::DISCOVERY_LAG).record(now.saturating_sub(at) as f64 / 1000.0);
    }
}

/// Table metrics; instance gauges only for the services this swap rebuilt.
fn record(table: &Table, rebuilt: &[Arc<Service>]) {
    metrics::counter!(m::TABLE_SWAPS).increment(1);
    metrics::gauge!(m::TABLE_VERSION).set(table.version as f64);
    for service in rebuilt {
        let count = |s: Status| service.endpoints.iter().filter(|e| e.status == s).count();
        service.state.stats.instances(count(Status::Up), count(Status::Draining), count(Status::Down));
    }
}
