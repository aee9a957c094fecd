//! The task that runs active health checks: one loop per service with a
//! `health_check`, probing every `up` instance of the live table each interval
//! (plus random jitter), all of them at once, and flipping each instance's health
//! state. It reads the table like the request path does and writes only the
//! instances' atomics, so a check never rebuilds a table.

use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::probe::probe;
use super::Checked;
use crate::config::{Config, HealthCheck};
use crate::upstream::{SharedTable, Status};

/// Spawns one checker per service that asks for checks, onto `tasks`.
pub fn spawn_all(config: &Config, table: &SharedTable, tasks: &mut JoinSet<()>, stop: &CancellationToken) {
    for s in &config.services {
        if let Some(check) = &s.policy.health_check {
            tasks.spawn(run(s.name.clone(), check.clone(), table.clone(), stop.clone()));
        }
    }
}

async fn run(service: String, check: HealthCheck, table: SharedTable, stop: CancellationToken) {
    // The first round at once: instances are usable unchecked by default, but an
    // instance that is down at start-up should be known as such quickly.
    let mut wait = Duration::ZERO;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = check.interval + check.jitter.mul_f64(fastrand::f64());
        let Some(svc) = table.load().service(&service).cloned() else { continue };
        let check = &check;
        let probes = svc.endpoints.iter().filter(|e| e.status == Status::Up).map(|e| async move {
            let result = probe(e, check).await;
            (e, result)
        });
        let results = tokio::select! {
            _ = stop.cancelled() => return,
            r = futures_util::future::join_all(probes) => r,
        };
        for (e, result) in results {
            svc.state.stats.check(result.is_ok());
            if let Err(err) = &result {
                tracing::debug!(service = %service, id = %e.id, addr = %e.addr, "health check failed: {err}");
            }
            if let Some(now) = e.state.health.record(result.is_ok(), check) {
                svc.state.stats.health_changed(now == Checked::Healthy);
                match &result {
                    Ok(()) => tracing::info!(service = %service, id = %e.id, addr = %e.addr, "instance healthy"),
                    Err(err) => {
                        tracing::warn!(service = %service, id = %e.id, addr = %e.addr, "instance unhealthy: {err}")
                    }
                }
            }
        }
    }
}
