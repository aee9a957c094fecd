//! Per-service metric handles, registered once when a service first appears and
//! kept across table swaps, so the request path records without building labels.

use metrics::{Counter, Gauge, Histogram};

use super::conn::UpstreamError;
use crate::metrics as m;

#[derive(Debug)]
pub struct ServiceStats {
    /// Indexed by status class: 1xx..5xx → 0..4.
    requests: [Counter; 5],
    duration: Histogram,
    errors: [Counter; 4],
    /// Instances by state: up, draining, down.
    instances: [Gauge; 3],
}

impl ServiceStats {
    pub fn new(service: &str) -> Self {
        let requests = ["1xx", "2xx", "3xx", "4xx", "5xx"]
            .map(|class| metrics::counter!(m::REQUESTS, "service" => service.to_string(), "class" => class));
        let errors = UpstreamError::ALL.map(
            |kind| metrics::counter!(m::UPSTREAM_ERRORS, "service" => service.to_string(), "kind" => kind.as_str()),
        );
        let duration = metrics::histogram!(m::REQUEST_DURATION, "service" => service.to_string());
        let instances = ["up", "draining", "down"]
            .map(|state| metrics::gauge!(m::UPSTREAM_INSTANCES, "service" => service.to_string(), "state" => state));
        ServiceStats { requests, duration, errors, instances }
    }

    pub fn response(&self, status: http::StatusCode, seconds: f64) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.requests[class].increment(1);
        self.duration.record(seconds);
    }

    pub fn instances(&self, up: usize, draining: usize, down: usize) {
        for (gauge, n) in self.instances.iter().zip([up, draining, down]) {
            gauge.set(n as f64);
        }
    }

    pub fn error(&self, kind: UpstreamError) {
        self.errors[kind as usize].increment(1);
    }
}
