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
use crate::discovery::{events, Update};
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
        let mut recent = events::of_update(&update, now_ms());
        let mut changed = registry.apply(update);
        // Coalesce what is already queued into the same swap.
        while let Ok(more) = updates.try_recv() {
            stamps.extend(registration_stamps(&more));
            recent.extend(events::of_update(&more, now_ms()));
            changed |= registry.apply(more);
        }
        events::record(recent);
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
    let now = now_ms();
    for &at in stamps {
        metrics::histogram!(m::DISCOVERY_LAG).record(now.saturating_sub(at) as f64 / 1000.0);
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Table metrics; instance gauges only for the services this swap rebuilt; the
/// series of a service that lost its last instance are dropped.
fn record(table: &Table, rebuilt: &[Arc<Service>]) {
    metrics::counter!(m::TABLE_SWAPS).increment(1);
    metrics::gauge!(m::TABLE_VERSION).set(table.version as f64);
    for service in rebuilt {
        if service.endpoints.is_empty() {
            // The service is gone from discovery (it stays in the table to answer
            // 503): its series go too, so dashboards and cardinality follow etcd.
            service.state.stats.forget();
            continue;
        }
        let count = |s: Status| service.endpoints.iter().filter(|e| e.status == s).count();
        service.state.stats.instances(count(Status::Up), count(Status::Draining), count(Status::Down));
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::discovery::Instance;
    use crate::upstream::stats::RequestLabels;

    fn instances(services: usize, per_service: usize) -> Vec<Instance> {
        (0..services)
            .flat_map(|s| {
                (0..per_service).map(move |i| Instance {
                    service: format!("scale-{s}"),
                    id: format!("i{i}"),
                    addr: format!("10.{}.{}.{}:80", s / 250, s % 250, i + 1),
                    metadata: Default::default(),
                })
            })
            .collect()
    }

    fn series_of(prefix: &str) -> Vec<String> {
        let mut out = String::new();
        crate::metrics::families::render(m::SERVICE_FAMILIES, &mut out);
        out.lines().filter(|l| l.contains(prefix)).map(String::from).collect()
    }

    /// Issue 11: 10,000 services × 10 instances register one series per service
    /// up front (the `up` gauge), not dozens; traffic adds a service's own series
    /// and a service that leaves discovery takes all of its series with it.
    #[test]
    fn ten_thousand_services_cost_one_series_each_until_traffic() {
        let mut registry = Registry::new(HashSet::new());
        registry.apply(Update::Replace { instances: instances(10_000, 10), revision: 1 });
        let built = registry.build();
        record(&built.table, &built.rebuilt);
        let series = series_of("service=\"scale-");
        assert_eq!(series.len(), 10_000, "{:?}", &series[..3]);
        assert!(series.iter().all(|l| l.starts_with("switchyard_upstream_instances{") && l.ends_with("} 10")));

        let labels = RequestLabels::new("web", &http::Method::GET, http::Version::HTTP_11, false);
        built.table.service("scale-7").unwrap().state.stats.response(&labels, http::StatusCode::OK, 0.002);
        let seven = series_of("service=\"scale-7\"");
        // up gauge + 1 request series + 2 histograms × (16 buckets + sum + count) + 5 error
        // kinds + 7 retry reasons + budget + 2 ejection reasons + panic + 2 overflow limits
        // + 2 check results + 2 health changes, every counter at zero.
        assert_eq!(seven.len(), 1 + 1 + 2 * 18 + 5 + 7 + 1 + 2 + 1 + 2 + 2 + 2, "{seven:#?}");

        // scale-7 leaves discovery: every series labelled with it goes.
        let remaining: Vec<Instance> = instances(10_000, 10).into_iter().filter(|i| i.service != "scale-7").collect();
        registry.apply(Update::Replace { instances: remaining, revision: 2 });
        let built = registry.build();
        record(&built.table, &built.rebuilt);
        assert!(series_of("service=\"scale-7\"").is_empty());
        assert_eq!(series_of("service=\"scale-").len(), 9_999);
    }
}
