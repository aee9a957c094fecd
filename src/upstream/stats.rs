//! Per-service metrics: one [`ServiceStats`] per service name for the life of
//! the process, rendered by `metrics::families` (not the `metrics` recorder)
//! so that its series go away with the service.
//!
//! Series are created lazily: the instance gauges while the service has
//! instances, the traffic series (requests by listener/code/method/protocol,
//! total and upstream latency, upstream errors, retries, ejections, overflow,
//! panic mode, health checks) at its first request or health check. A service
//! that loses its last instance drops them all ([`ServiceStats::forget`]); 10,000
//! services that get no traffic cost one `up` gauge each, not dozens of series.
//! Every counter with enumerable labels is registered at zero with the traffic
//! series, so `rate()` sees its first increment.
//!
//! Cardinality is bounded by configuration: listeners × status codes (100..=599,
//! others as `code="other"`) × 8 method classes × 3 protocols per service.
//!
//! The series every request updates (request counts, request and upstream
//! latency) are kept per shard (`crate::shard`: one per core) and summed at
//! scrape, so that workers never write the same cache line per request; a shard's
//! set is made the first time its thread counts for the service.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, RwLock};

use arc_swap::ArcSwapOption;
use http::{Method, StatusCode, Version};

use super::balance::Fnv1a;
use super::conn::UpstreamError;
use super::outlier::EjectReason;
use crate::metrics as m;
use crate::metrics::families::{self, write_sample, Group, Histogram};
use crate::shard::PerShard;

/// The labels of a request that the service does not know: where it came in and how.
/// Plain `&'static str`s: copying them touches no reference count, which every worker
/// would otherwise share per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestLabels {
    /// An [`intern`]ed listener name.
    pub listener: &'static str,
    pub method: &'static str,
    pub protocol: &'static str,
}

impl RequestLabels {
    pub fn new(listener: &'static str, method: &Method, version: Version, grpc: bool) -> RequestLabels {
        RequestLabels { listener, method: method_class(method), protocol: protocol(version, grpc) }
    }
}

/// `name` as a label value that lives as long as the process: each distinct listener
/// name is kept once (a few bytes per name a configuration ever had), whatever the
/// number of reloads that bring it back.
pub fn intern(name: &str) -> &'static str {
    static NAMES: LazyLock<Mutex<HashSet<&'static str>>> = LazyLock::new(Default::default);
    let mut names = NAMES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(kept) = names.get(name) {
        return kept;
    }
    let kept: &'static str = Box::leak(name.into());
    names.insert(kept);
    kept
}

/// The method as a bounded label: the common methods by name, the rest `other`.
pub fn method_class(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// `grpc`, `h2` or `http1`, as the client spoke to the gateway.
pub fn protocol(version: Version, grpc: bool) -> &'static str {
    match (grpc, version) {
        (true, _) => "grpc",
        (false, Version::HTTP_2) => "h2",
        _ => "http1",
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct RequestKey {
    labels: RequestLabels,
    /// 0 for a code outside 100..=599.
    code: u16,
}

/// The series of a service that has had traffic (or health checks): created
/// together, every counter at zero, at the first event of any kind.
#[derive(Debug, Default)]
struct Traffic {
    /// The per-request series, one set per shard ([`crate::shard::index`]), each made at
    /// its shard's first request: summed at scrape.
    hot: PerShard<Hot>,
    errors: [AtomicU64; UpstreamError::ALL.len()],
    retries: [AtomicU64; RetryReason::ALL.len()],
    budget_exhausted: AtomicU64,
    /// connect_failures, consecutive_failures.
    ejections: [AtomicU64; 2],
    panic: AtomicU64,
    /// inflight, pending.
    overflow: [AtomicU64; 2],
    /// ok, failed.
    checks: [AtomicU64; 2],
    /// healthy, unhealthy.
    health_changes: [AtomicU64; 2],
}

/// A shard of the series each request updates.
#[derive(Debug, Default)]
struct Hot {
    requests: RwLock<HashMap<RequestKey, AtomicU64, BuildHasherDefault<Fnv1a>>>,
    total: Histogram,
    upstream: Histogram,
}

impl Hot {
    /// One response and its time since the request head arrived.
    fn count(&self, labels: &RequestLabels, status: StatusCode, seconds: f64) {
        let code = status.as_u16();
        let key = RequestKey { labels: *labels, code: if (100..=599).contains(&code) { code } else { 0 } };
        self.total.record(seconds);
        {
            let requests = self.requests.read().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = requests.get(&key) {
                n.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        let mut requests = self.requests.write().unwrap_or_else(|e| e.into_inner());
        requests.entry(key).or_default().fetch_add(1, Ordering::Relaxed);
    }
}

/// One-label counter families: (family, label name, label values, which counters).
fn labelled<'t>(
    traffic: &'t Traffic,
    family: &str,
) -> Option<(&'static str, &'static [&'static str], &'t [AtomicU64])> {
    Some(match family {
        m::UPSTREAM_RETRIES => ("reason", &RetryReason::ALL, &traffic.retries),
        // EjectReason::ConnectFailures and ::Failures, in the order of `ejections`.
        m::UPSTREAM_EJECTIONS => ("reason", &["connect_failures", "consecutive_failures"], &traffic.ejections),
        m::UPSTREAM_OVERFLOW => ("limit", &["inflight", "pending"], &traffic.overflow),
        m::HEALTH_CHECKS => ("result", &["ok", "failed"], &traffic.checks),
        m::HEALTH_CHANGES => ("to", &["healthy", "unhealthy"], &traffic.health_changes),
        _ => return None,
    })
}

/// Why a request was tried again, as the `reason` label of `switchyard_upstream_retries_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryReason {
    ConnectFailure = 0,
    Reset = 1,
    Timeout = 2,
    Status502 = 3,
    Status503 = 4,
    Status504 = 5,
    GrpcUnavailable = 6,
}

impl RetryReason {
    pub(crate) const ALL: [&'static str; 7] =
        ["connect_failure", "reset", "timeout", "502", "503", "504", "grpc_unavailable"];
}

/// Which limit turned a request away, as the `limit` label of `switchyard_upstream_overflow_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    Inflight = 0,
    Pending = 1,
}

#[derive(Debug)]
pub struct ServiceStats {
    name: Arc<str>,
    traffic: ArcSwapOption<Traffic>,
    /// Instances by state: up, draining, down. Rendered while their sum is > 0.
    instances: [AtomicU64; 3],
    /// Serialises creating and forgetting the traffic series.
    create: Mutex<()>,
}

static SERVICES: LazyLock<Mutex<HashMap<Arc<str>, Arc<ServiceStats>>>> = LazyLock::new(Default::default);

impl ServiceStats {
    /// The stats of `service`, the same object for every caller (the registry,
    /// a route to a service that has no instance yet, the L4 proxy), so no two
    /// writers ever render the same series.
    pub fn of(service: &str) -> Arc<ServiceStats> {
        let mut all = SERVICES.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = all.get(service) {
            return s.clone();
        }
        let stats = Arc::new(ServiceStats {
            name: service.into(),
            traffic: ArcSwapOption::empty(),
            instances: Default::default(),
            create: Mutex::new(()),
        });
        all.insert(stats.name.clone(), stats.clone());
        families::register(&format!("service/{service}"), stats.clone());
        stats
    }

    /// The traffic series, created at the first event. The usual case borrows
    /// them through arc-swap's guard: no reference count is touched per request.
    fn with_traffic<R>(&self, f: impl FnOnce(&Traffic) -> R) -> R {
        if let Some(t) = &*self.traffic.load() {
            return f(t);
        }
        f(&self.create_traffic())
    }

    /// The traffic series, made by the first of concurrent callers.
    fn create_traffic(&self) -> Arc<Traffic> {
        let _creating = self.create.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = self.traffic.load_full() {
            return t;
        }
        let t = Arc::new(Traffic::default());
        self.traffic.store(Some(t.clone()));
        t
    }

    /// A response the gateway made itself, sent `seconds` after the request head arrived.
    pub fn response(&self, labels: &RequestLabels, status: StatusCode, seconds: f64) {
        self.with_traffic(|traffic| traffic.hot.local().count(labels, status, seconds))
    }

    /// An instance's response passed on, `seconds` after the request head
    /// arrived and `upstream` after the request was first sent (retries
    /// included): both in one look-up of the series.
    pub fn proxied(&self, labels: &RequestLabels, status: StatusCode, seconds: f64, upstream: f64) {
        self.with_traffic(|traffic| {
            let hot = traffic.hot.local();
            hot.upstream.record(upstream);
            hot.count(labels, status, seconds);
        })
    }

    pub fn error(&self, kind: UpstreamError) {
        self.with_traffic(|t| t.errors[kind as usize].fetch_add(1, Ordering::Relaxed));
    }

    pub fn retry(&self, reason: RetryReason) {
        self.with_traffic(|t| t.retries[reason as usize].fetch_add(1, Ordering::Relaxed));
    }

    pub fn budget_exhausted(&self) {
        self.with_traffic(|t| t.budget_exhausted.fetch_add(1, Ordering::Relaxed));
    }

    pub fn ejected(&self, reason: EjectReason) {
        let i = match reason {
            EjectReason::ConnectFailures => 0,
            EjectReason::Failures => 1,
            EjectReason::None => return,
        };
        self.with_traffic(|t| t.ejections[i].fetch_add(1, Ordering::Relaxed));
    }

    pub fn panic(&self) {
        self.with_traffic(|t| t.panic.fetch_add(1, Ordering::Relaxed));
    }

    pub fn overflow(&self, limit: Overflow) {
        self.with_traffic(|t| t.overflow[limit as usize].fetch_add(1, Ordering::Relaxed));
    }

    pub fn check(&self, ok: bool) {
        self.with_traffic(|t| t.checks[usize::from(!ok)].fetch_add(1, Ordering::Relaxed));
    }

    pub fn health_changed(&self, healthy: bool) {
        self.with_traffic(|t| t.health_changes[usize::from(!healthy)].fetch_add(1, Ordering::Relaxed));
    }

    pub fn instances(&self, up: usize, draining: usize, down: usize) {
        for (gauge, n) in self.instances.iter().zip([up, draining, down]) {
            gauge.store(n as u64, Ordering::Relaxed);
        }
    }

    /// The service has no instance left: its series go away with it. A later
    /// request (answered 503) or instance brings them back, from zero.
    pub fn forget(&self) {
        let _creating = self.create.lock().unwrap_or_else(|e| e.into_inner());
        self.traffic.store(None);
        self.instances(0, 0, 0);
    }
}

impl Group for ServiceStats {
    fn render(&self, family: &str, out: &mut String) {
        let service = &*self.name;
        if family == m::UPSTREAM_INSTANCES {
            let counts = self.instances.each_ref().map(|n| n.load(Ordering::Relaxed));
            if counts.iter().sum::<u64>() == 0 {
                return;
            }
            for (state, n) in ["up", "draining", "down"].into_iter().zip(counts) {
                // `up` always (the no-live-instance alert needs its zero); the others when present.
                if state == "up" || n > 0 {
                    write_sample(out, family, &[("service", service), ("state", state)], n as f64);
                }
            }
            return;
        }
        let Some(traffic) = self.traffic.load_full() else { return };
        match family {
            m::REQUESTS => {
                let mut summed: HashMap<RequestKey, u64> = HashMap::new();
                for hot in traffic.hot.made() {
                    let requests = hot.requests.read().unwrap_or_else(|e| e.into_inner());
                    for (key, n) in requests.iter() {
                        *summed.entry(key.clone()).or_default() += n.load(Ordering::Relaxed);
                    }
                }
                let mut rows: Vec<(&RequestKey, u64)> = summed.iter().map(|(k, &n)| (k, n)).collect();
                rows.sort_by(|a, b| {
                    (&a.0.labels.listener, a.0.code, a.0.labels.method, a.0.labels.protocol).cmp(&(
                        &b.0.labels.listener,
                        b.0.code,
                        b.0.labels.method,
                        b.0.labels.protocol,
                    ))
                });
                for (key, n) in rows {
                    let code = if key.code == 0 { "other".to_string() } else { key.code.to_string() };
                    let labels = [
                        ("listener", key.labels.listener),
                        ("service", service),
                        ("code", code.as_str()),
                        ("method", key.labels.method),
                        ("protocol", key.labels.protocol),
                    ];
                    write_sample(out, family, &labels, n as f64);
                }
            }
            m::REQUEST_DURATION | m::UPSTREAM_DURATION => {
                let summed = Histogram::default();
                for hot in traffic.hot.made() {
                    summed.absorb(if family == m::REQUEST_DURATION { &hot.total } else { &hot.upstream });
                }
                summed.write(out, family, &[("service", service)]);
            }
            m::UPSTREAM_ERRORS => {
                for kind in UpstreamError::ALL {
                    let n = traffic.errors[kind as usize].load(Ordering::Relaxed);
                    write_sample(out, family, &[("service", service), ("kind", kind.as_str())], n as f64);
                }
            }
            m::UPSTREAM_RETRY_BUDGET_EXHAUSTED => write_sample(
                out,
                family,
                &[("service", service)],
                traffic.budget_exhausted.load(Ordering::Relaxed) as f64,
            ),
            m::UPSTREAM_PANIC => {
                write_sample(out, family, &[("service", service)], traffic.panic.load(Ordering::Relaxed) as f64)
            }
            _ => {
                if let Some((label, values, counters)) = labelled(&traffic, family) {
                    for (value, n) in values.iter().zip(counters) {
                        let n = n.load(Ordering::Relaxed) as f64;
                        write_sample(out, family, &[("service", service), (label, value)], n);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard;

    #[test]
    fn a_listener_name_is_kept_once() {
        let first = intern(&String::from("interned-web"));
        let again = intern(&String::from("interned-web"));
        assert!(std::ptr::eq(first, again), "one copy per name, however often it comes back");
        assert_eq!(intern("interned-admin"), "interned-admin");
        assert!(!std::ptr::eq(intern("interned-admin"), first));
    }

    fn rendered() -> String {
        let mut out = String::new();
        families::render(m::SERVICE_FAMILIES, &mut out);
        out
    }

    #[test]
    fn series_appear_with_traffic_and_go_with_the_service() {
        let s = ServiceStats::of("stats-test");
        assert!(Arc::ptr_eq(&s, &ServiceStats::of("stats-test")));
        assert!(!rendered().contains("stats-test"), "no series before instances or traffic");
        s.instances(2, 0, 0);
        let text = rendered();
        assert!(text.contains("switchyard_upstream_instances{service=\"stats-test\",state=\"up\"} 2\n"), "{text}");
        assert!(!text.contains("switchyard_requests_total{listener=\"web\",service=\"stats-test\""), "{text}");
        let labels = RequestLabels::new("web", &Method::POST, Version::HTTP_11, false);
        s.response(&labels, StatusCode::OK, 0.01);
        s.response(&labels, StatusCode::OK, 0.01);
        s.response(
            &RequestLabels::new("web", &Method::from_bytes(b"BREW").unwrap(), Version::HTTP_2, true),
            StatusCode::from_u16(999).unwrap(),
            0.01,
        );
        let text = rendered();
        let want = "switchyard_requests_total{listener=\"web\",service=\"stats-test\",code=\"200\",method=\"POST\",protocol=\"http1\"} 2\n";
        assert!(text.contains(want), "{text}");
        let want = "switchyard_requests_total{listener=\"web\",service=\"stats-test\",code=\"other\",method=\"other\",protocol=\"grpc\"} 1\n";
        assert!(text.contains(want), "{text}");
        // Registered at zero with the first request, so rate() sees the first error.
        assert!(
            text.contains("switchyard_upstream_errors_total{service=\"stats-test\",kind=\"timeout\"} 0\n"),
            "{text}"
        );
        assert!(text.contains("switchyard_request_duration_seconds_count{service=\"stats-test\"} 3\n"), "{text}");
        s.forget();
        assert!(!rendered().contains("stats-test"), "forgotten service still rendered");
    }

    #[test]
    fn what_many_threads_count_is_summed_across_their_shards() {
        let s = ServiceStats::of("stats-shards");
        let labels = RequestLabels::new("web", &Method::GET, Version::HTTP_11, false);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..25 {
                        s.proxied(&labels, StatusCode::OK, 0.002, 0.001);
                    }
                });
            }
        });
        let made = s.traffic.load_full().unwrap().hot.made().count();
        assert!(made <= shard::count() && (made > 1 || shard::count() == 1), "{made} of {}", shard::count());
        let text = rendered();
        for want in [
            "switchyard_requests_total{listener=\"web\",service=\"stats-shards\",code=\"200\",method=\"GET\",protocol=\"http1\"} 100\n",
            "switchyard_request_duration_seconds_count{service=\"stats-shards\"} 100\n",
            "switchyard_request_duration_seconds_sum{service=\"stats-shards\"} 0.2\n",
            "switchyard_request_duration_seconds_bucket{service=\"stats-shards\",le=\"+Inf\"} 100\n",
            "switchyard_upstream_duration_seconds_count{service=\"stats-shards\"} 100\n",
            "switchyard_upstream_duration_seconds_sum{service=\"stats-shards\"} 0.1\n",
        ] {
            assert!(text.contains(want), "{want}\n{text}");
        }
        s.forget();
    }
}
