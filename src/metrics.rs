//! Every metric the gateway exports: names, descriptions and the recorder. The
//! Grafana dashboard and its test use only names from this file.
//!
//! Two renderers share `/metrics` ([`render`]): the `metrics` recorder
//! (metrics-exporter-prometheus) for series whose labels are fixed by the
//! configuration (listeners, discovery), and [`families`] for series labelled by
//! service, which must disappear with the service — the exporter cannot remove
//! one series. A family is rendered by exactly one of them. Process metrics
//! ([`process`]) are read from `/proc` at scrape time.

pub mod families;
pub mod process;

use std::sync::atomic::{AtomicUsize, Ordering};

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const REQUESTS: &str = "switchyard_requests_total";
pub const REQUEST_DURATION: &str = "switchyard_request_duration_seconds";
pub const UPSTREAM_DURATION: &str = "switchyard_upstream_duration_seconds";
pub const BUILD_INFO: &str = "switchyard_build_info";
pub const UPSTREAM_ERRORS: &str = "switchyard_upstream_errors_total";
pub const UPSTREAM_INSTANCES: &str = "switchyard_upstream_instances";
pub const TABLE_SWAPS: &str = "switchyard_table_swaps_total";
pub const TABLE_VERSION: &str = "switchyard_table_version";
pub const CONNECTIONS_ACTIVE: &str = "switchyard_connections_active";
pub const CONNECTIONS: &str = "switchyard_connections_total";
pub const BAD_REQUESTS: &str = "switchyard_bad_requests_total";
pub const UPGRADED_ACTIVE: &str = "switchyard_upgraded_connections_active";
pub const TLS_HANDSHAKE_ERRORS: &str = "switchyard_tls_handshake_errors_total";
pub const TLS_CERT_RELOADS: &str = "switchyard_tls_certificate_reloads_total";
pub const TCP_BYTES: &str = "switchyard_tcp_bytes_total";
pub const TCP_CONNECT_FAILURES: &str = "switchyard_tcp_connect_failures_total";
pub const SNI_UNKNOWN: &str = "switchyard_sni_unknown_total";
pub const DISCOVERY_ERRORS: &str = "switchyard_discovery_errors_total";
pub const DISCOVERY_INVALID_VALUES: &str = "switchyard_discovery_invalid_values_total";
pub const DISCOVERY_CONNECTED: &str = "switchyard_discovery_connected";
pub const DISCOVERY_SINCE_SYNC: &str = "switchyard_discovery_seconds_since_sync";
pub const DISCOVERY_WATCH_RESTARTS: &str = "switchyard_discovery_watch_restarts_total";
pub const DISCOVERY_EVENTS: &str = "switchyard_discovery_events_total";
pub const DISCOVERY_LAG: &str = "switchyard_discovery_lag_seconds";
pub const CONFIG_RELOADS: &str = "switchyard_config_reloads_total";
pub const CONFIG_LAST_RELOAD_SUCCESS: &str = "switchyard_config_last_reload_success_timestamp_seconds";
pub const ACCESS_LOG_DROPPED: &str = "switchyard_access_log_dropped_total";
pub const ACCESS_LOG_ERRORS: &str = "switchyard_access_log_write_errors_total";
pub const UPSTREAM_RETRIES: &str = "switchyard_upstream_retries_total";
pub const UPSTREAM_RETRY_BUDGET_EXHAUSTED: &str = "switchyard_upstream_retry_budget_exhausted_total";
pub const UPSTREAM_EJECTIONS: &str = "switchyard_upstream_ejections_total";
pub const UPSTREAM_PANIC: &str = "switchyard_upstream_panic_total";
pub const UPSTREAM_OVERFLOW: &str = "switchyard_upstream_overflow_total";
pub const HEALTH_CHECKS: &str = "switchyard_health_checks_total";
pub const HEALTH_CHANGES: &str = "switchyard_health_changes_total";
pub const CLIENT_TIMEOUTS: &str = "switchyard_client_timeouts_total";
pub const ACCEPT_ERRORS: &str = "switchyard_accept_errors_total";
pub const LOOPS_DETECTED: &str = "switchyard_loops_detected_total";

/// Every exported name, for the dashboard test.
pub const ALL: &[&str] = &[
    REQUESTS,
    REQUEST_DURATION,
    UPSTREAM_DURATION,
    BUILD_INFO,
    UPSTREAM_ERRORS,
    UPSTREAM_INSTANCES,
    TABLE_SWAPS,
    TABLE_VERSION,
    CONNECTIONS_ACTIVE,
    CONNECTIONS,
    BAD_REQUESTS,
    UPGRADED_ACTIVE,
    TLS_HANDSHAKE_ERRORS,
    TLS_CERT_RELOADS,
    TCP_BYTES,
    TCP_CONNECT_FAILURES,
    SNI_UNKNOWN,
    DISCOVERY_ERRORS,
    DISCOVERY_INVALID_VALUES,
    DISCOVERY_CONNECTED,
    DISCOVERY_SINCE_SYNC,
    DISCOVERY_WATCH_RESTARTS,
    DISCOVERY_EVENTS,
    DISCOVERY_LAG,
    CONFIG_RELOADS,
    CONFIG_LAST_RELOAD_SUCCESS,
    ACCESS_LOG_DROPPED,
    ACCESS_LOG_ERRORS,
    UPSTREAM_RETRIES,
    UPSTREAM_RETRY_BUDGET_EXHAUSTED,
    UPSTREAM_EJECTIONS,
    UPSTREAM_PANIC,
    UPSTREAM_OVERFLOW,
    HEALTH_CHECKS,
    HEALTH_CHANGES,
    CLIENT_TIMEOUTS,
    ACCEPT_ERRORS,
    LOOPS_DETECTED,
];

/// The families rendered by [`families`] (labelled by service; removed with it).
pub const SERVICE_FAMILIES: &[families::Family] = &[
    families::Family {
        name: REQUESTS,
        kind: "counter",
        help: "Requests answered (by the upstream or the gateway itself), by listener, service, code, method and protocol.",
    },
    families::Family {
        name: REQUEST_DURATION,
        kind: "histogram",
        help: "Time from request head to response head as the client sees it, by service.",
    },
    families::Family {
        name: UPSTREAM_DURATION,
        kind: "histogram",
        help: "Time from sending to an upstream to its response head, by service.",
    },
    families::Family { name: UPSTREAM_ERRORS, kind: "counter", help: "Failures talking to upstreams, by service and kind." },
    families::Family { name: UPSTREAM_INSTANCES, kind: "gauge", help: "Instances in the live table, by service and state." },    families::Family { name: UPSTREAM_RETRIES, kind: "counter", help: "Requests tried again on another instance, by service and reason." },
    families::Family { name: UPSTREAM_RETRY_BUDGET_EXHAUSTED, kind: "counter", help: "Retries not made because the service's retry budget was spent." },
    families::Family { name: UPSTREAM_EJECTIONS, kind: "counter", help: "Instances ejected by outlier detection, by service and reason." },
    families::Family { name: UPSTREAM_PANIC, kind: "counter", help: "Requests sent in panic mode (every instance ejected or unhealthy), by service." },
    families::Family { name: UPSTREAM_OVERFLOW, kind: "counter", help: "Requests refused at once by a limit (503), by service and limit." },
    families::Family { name: HEALTH_CHECKS, kind: "counter", help: "Active health probes, by service and result." },
    families::Family { name: HEALTH_CHANGES, kind: "counter", help: "Instances changing active-check state, by service and new state." },
];

/// The whole `/metrics` text: the recorder's series, the per-service families,
/// and the process metrics.
pub fn render(handle: &PrometheusHandle) -> String {
    // Sized from the last scrape (644 KiB at 10,000 services): no reallocation and
    // copy of the whole text each time it doubles.
    static LAST_LEN: AtomicUsize = AtomicUsize::new(0);
    let recorded = handle.render();
    let mut out = String::with_capacity((LAST_LEN.load(Ordering::Relaxed) + 4096).max(recorded.len()) * 9 / 8);
    out.push_str(&recorded);
    drop(recorded);
    families::render(SERVICE_FAMILIES, &mut out);
    process::render(&mut out);
    LAST_LEN.store(out.len(), Ordering::Relaxed);
    out
}

pub(crate) const LATENCY_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Installs the global recorder once per process and returns its handle; later
/// calls (several gateways in one test process) share it.
pub fn install() -> PrometheusHandle {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .and_then(|b| b.install_recorder())
                .unwrap_or_else(|e| panic!("installing the metrics recorder: {e}"));
            describe();
            handle
        })
        .clone()
}

fn describe() {
    describe_gauge!(BUILD_INFO, "Always 1; the version label names the running build.");
    describe_counter!(TABLE_SWAPS, "Upstream tables swapped in.");
    describe_gauge!(TABLE_VERSION, "Version of the live upstream table.");
    describe_gauge!(CONNECTIONS_ACTIVE, "Open client connections, by listener.");
    describe_counter!(CONNECTIONS, "Accepted client connections, by listener.");
    describe_counter!(BAD_REQUESTS, "Client input refused, by listener and reason.");
    describe_gauge!(UPGRADED_ACTIVE, "Upgraded (e.g. WebSocket) connections being relayed.");
    describe_counter!(TLS_HANDSHAKE_ERRORS, "Failed TLS handshakes, by listener and reason.");
    describe_counter!(TLS_CERT_RELOADS, "Certificate reloads, by listener and result.");
    describe_counter!(TCP_BYTES, "Bytes relayed by L4 listeners, by listener and direction.");
    describe_counter!(TCP_CONNECT_FAILURES, "Failed upstream connects of L4 listeners, by listener.");
    describe_counter!(SNI_UNKNOWN, "TLS passthrough connections closed for an unrouted SNI, by listener.");
    describe_counter!(DISCOVERY_ERRORS, "Discovery failures, by source and kind.");
    describe_counter!(
        DISCOVERY_INVALID_VALUES,
        "Instance values that could not be read or were refused (own or unspecified address), by source and kind."
    );
    describe_gauge!(DISCOVERY_CONNECTED, "1 while the discovery source is connected, else 0.");
    describe_gauge!(DISCOVERY_SINCE_SYNC, Unit::Seconds, "Seconds since discovery last confirmed the table.");
    describe_counter!(DISCOVERY_WATCH_RESTARTS, "Watch restarts, by reason.");
    describe_counter!(DISCOVERY_EVENTS, "Discovery events applied, by type.");
    describe_histogram!(
        DISCOVERY_LAG,
        Unit::Seconds,
        "Time from an instance write (its registered_at_ms metadata) to the table holding it being live."
    );
    describe_counter!(CLIENT_TIMEOUTS, "Client connections closed by a deadline, by listener and stage.");
    describe_counter!(ACCEPT_ERRORS, "Failed accepts (e.g. out of file descriptors), by listener.");
    describe_counter!(LOOPS_DETECTED, "Requests answered 508: they already carried this gateway's Via.");
    describe_counter!(CONFIG_RELOADS, "Configuration reloads (SIGHUP, POST /reload), by result.");
    describe_gauge!(
        CONFIG_LAST_RELOAD_SUCCESS,
        Unit::Seconds,
        "Unix time of the last configuration loaded (start-up or reload)."
    );
    describe_counter!(ACCESS_LOG_DROPPED, "Access log lines dropped because the writer fell behind, by listener.");
    describe_counter!(ACCESS_LOG_ERRORS, "Access log writes that failed (disk full, file gone), by file.");
}
