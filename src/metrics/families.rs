//! Metric families the gateway renders itself instead of through the `metrics`
//! recorder: metrics-exporter-prometheus 0.18 has no way to remove one series
//! (only an idle timeout that would also drop counters sitting at zero), and
//! series labelled by service or instance must disappear with the service.
//! Owners register a [`Group`] (one per service, say) that writes its own
//! samples; dropping it from the registry removes every series it wrote.
//! The hot path only touches atomics inside its group; the registry is locked
//! at registration and at scrape.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, RwLock};

use super::LATENCY_BUCKETS;

/// A writer of samples of some families. `render` is called once per family
/// per scrape and writes only sample lines (no `# HELP`/`# TYPE`).
pub trait Group: Send + Sync {
    fn render(&self, family: &str, out: &mut String);
}

/// A family rendered by this module.
pub struct Family {
    pub name: &'static str,
    pub kind: &'static str,
    pub help: &'static str,
}

static GROUPS: LazyLock<RwLock<BTreeMap<String, Arc<dyn Group>>>> = LazyLock::new(Default::default);

/// Adds (or replaces) the group `id`; its series appear at the next scrape.
pub fn register(id: &str, group: Arc<dyn Group>) {
    GROUPS.write().unwrap_or_else(|e| e.into_inner()).insert(id.to_string(), group);
}

/// Removes the group `id` and with it every series it rendered.
pub fn unregister(id: &str) {
    GROUPS.write().unwrap_or_else(|e| e.into_inner()).remove(id);
}

/// Every registered family, each with its header only when some group wrote a sample.
pub fn render(families: &[Family], out: &mut String) {
    let groups = GROUPS.read().unwrap_or_else(|e| e.into_inner());
    let mut samples = String::new();
    for family in families {
        samples.clear();
        for group in groups.values() {
            group.render(family.name, &mut samples);
        }
        if !samples.is_empty() {
            let _ = writeln!(out, "# HELP {} {}", family.name, family.help);
            let _ = writeln!(out, "# TYPE {} {}", family.name, family.kind);
            out.push_str(&samples);
        }
    }
}

/// Writes `{a="x",b="y"}` with Prometheus escaping (`\`, `"`, newline).
pub fn write_labels(out: &mut String, labels: &[(&str, &str)]) {
    out.push('{');
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(k);
        out.push_str("=\"");
        for c in v.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push('}');
}

/// One sample line: `name{labels} value`.
pub fn write_sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: f64) {
    out.push_str(name);
    if !labels.is_empty() {
        write_labels(out, labels);
    }
    let _ = writeln!(out, " {value}");
}

/// A latency histogram in seconds with the shared buckets; lock-free.
#[derive(Debug)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last slot is `+Inf`.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    count: AtomicU64,
    sum_ns: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum_ns: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn record(&self, seconds: f64) {
        let seconds = if seconds.is_finite() { seconds.max(0.0) } else { 0.0 };
        let i = LATENCY_BUCKETS.iter().position(|&le| seconds <= le).unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add((seconds * 1e9) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// `name_bucket{labels,le=..}` (cumulative), `name_sum`, `name_count`.
    pub fn write(&self, out: &mut String, name: &str, labels: &[(&str, &str)]) {
        let mut cumulative = 0u64;
        let bucket = format!("{name}_bucket");
        for (i, slot) in self.buckets.iter().enumerate() {
            cumulative += slot.load(Ordering::Relaxed);
            let le = match LATENCY_BUCKETS.get(i) {
                Some(le) => le.to_string(),
                None => "+Inf".to_string(),
            };
            let mut with_le: Vec<(&str, &str)> = labels.to_vec();
            with_le.push(("le", &le));
            write_sample(out, &bucket, &with_le, cumulative as f64);
        }
        write_sample(out, &format!("{name}_sum"), labels, self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9);
        // The count is the buckets' total, so `_count` equals the `+Inf` bucket even
        // while observations race with the scrape.
        write_sample(out, &format!("{name}_count"), labels, cumulative as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(&'static str);
    impl Group for Fixed {
        fn render(&self, family: &str, out: &mut String) {
            if family == "t_total" {
                write_sample(out, family, &[("g", self.0)], 1.0);
            }
        }
    }

    #[test]
    fn unregistering_a_group_removes_its_series() {
        let families = [Family { name: "t_total", kind: "counter", help: "test." }];
        register("families-test-a", Arc::new(Fixed("a")));
        register("families-test-b", Arc::new(Fixed("b\"\\\n")));
        let mut out = String::new();
        render(&families, &mut out);
        assert!(out.contains("# TYPE t_total counter\n"), "{out}");
        assert!(out.contains("t_total{g=\"a\"} 1\n"), "{out}");
        assert!(out.contains("t_total{g=\"b\\\"\\\\\\n\"} 1\n"), "{out}");
        unregister("families-test-a");
        unregister("families-test-b");
        let mut out = String::new();
        render(&families, &mut out);
        assert!(!out.contains("t_total"), "no samples, no header: {out}");
    }

    #[test]
    fn histogram_is_cumulative_and_counts_match() {
        let h = Histogram::default();
        h.record(0.0004);
        h.record(0.003);
        h.record(100.0);
        h.record(f64::NAN);
        let mut out = String::new();
        h.write(&mut out, "h_seconds", &[("service", "s")]);
        assert!(out.contains("h_seconds_bucket{service=\"s\",le=\"0.0005\"} 2\n"), "{out}");
        assert!(out.contains("h_seconds_bucket{service=\"s\",le=\"0.005\"} 3\n"), "{out}");
        assert!(out.contains("h_seconds_bucket{service=\"s\",le=\"+Inf\"} 4\n"), "{out}");
        assert!(out.contains("h_seconds_count{service=\"s\"} 4\n"), "{out}");
        assert!(out.contains("h_seconds_sum{service=\"s\"} 100.0034\n"), "{out}");
    }
}
