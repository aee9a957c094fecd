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
///
/// Renders from a snapshot of the registry: its lock is held only to copy the
/// groups' handles (tens of microseconds at 10,000 services), not for the render
/// (milliseconds), so that registering or removing a service, which discovery does
/// on a proxy worker, never waits for a scrape, nor for an admin thread that the
/// scheduler has set aside for proxied requests (`SCHED_IDLE`, src/admin).
pub fn render(families: &[Family], out: &mut String) {
    let groups: Vec<Arc<dyn Group>> = GROUPS.read().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
    for family in families {
        // The header first, taken back if no group wrote a sample: the samples go
        // straight into `out`, with no copy through a buffer of their own.
        let start = out.len();
        let _ = writeln!(out, "# HELP {} {}", family.name, family.help);
        let _ = writeln!(out, "# TYPE {} {}", family.name, family.kind);
        let samples = out.len();
        for group in &groups {
            group.render(family.name, out);
        }
        if out.len() == samples {
            out.truncate(start);
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
        if v.bytes().any(|b| matches!(b, b'\\' | b'"' | b'\n')) {
            for c in v.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '"' => out.push_str("\\\""),
                    '\n' => out.push_str("\\n"),
                    c => out.push(c),
                }
            }
        } else {
            // The usual case (service names, listeners, codes): nothing to escape.
            out.push_str(v);
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
    // Counts and gauges are mostly whole numbers: written as integers (the same text
    // as `{value}` gives them), without the float formatter.
    if value.fract() == 0.0 && value.abs() < 1e15 && !(value == 0.0 && value.is_sign_negative()) {
        let _ = writeln!(out, " {}", value as i64);
    } else {
        let _ = writeln!(out, " {value}");
    }
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

    /// Adds `other`'s observations to these: the shards of one series summed for a scrape.
    pub fn absorb(&self, other: &Histogram) {
        for (mine, theirs) in self.buckets.iter().zip(&other.buckets) {
            mine.fetch_add(theirs.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        self.sum_ns.fetch_add(other.sum_ns.load(Ordering::Relaxed), Ordering::Relaxed);
        self.count.fetch_add(other.count.load(Ordering::Relaxed), Ordering::Relaxed);
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
    fn whole_numbers_are_written_as_the_float_formatter_writes_them() {
        for v in [
            0.0,
            -0.0,
            1.0,
            -3.0,
            100.0,
            4096.0,
            1e14,
            999_999_999_999_999.0,
            1e15,
            1e21,
            0.5,
            -2.25,
            1e-7,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ] {
            let mut out = String::new();
            write_sample(&mut out, "x", &[], v);
            assert_eq!(out, format!("x {v}\n"), "{v:?}");
        }
    }

    #[test]
    fn the_registry_is_not_held_while_groups_render() {
        // Registering (a write) must be possible while a scrape renders. Other
        // tests may hold the lock for a moment, hence a few tries; a render that
        // held the registry throughout would fail every one of them.
        struct Probe(std::sync::atomic::AtomicBool);
        impl Group for Probe {
            fn render(&self, family: &str, out: &mut String) {
                if family == "t2_total" {
                    let free = (0..500).any(|_| {
                        let free = GROUPS.try_write().is_ok();
                        if !free {
                            std::thread::sleep(std::time::Duration::from_millis(2));
                        }
                        free
                    });
                    self.0.store(free, Ordering::Relaxed);
                    write_sample(out, family, &[], 1.0);
                }
            }
        }
        let families = [Family { name: "t2_total", kind: "counter", help: "test." }];
        let probe = Arc::new(Probe(Default::default()));
        register("families-test-probe", probe.clone());
        let mut out = String::new();
        render(&families, &mut out);
        unregister("families-test-probe");
        assert!(out.contains("t2_total 1\n"), "{out}");
        assert!(probe.0.load(Ordering::Relaxed), "the registry was locked during the render");
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
