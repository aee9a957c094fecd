//! Process metrics with the names every Prometheus client library uses
//! (`process_cpu_seconds_total`, `process_resident_memory_bytes`, ...), read
//! from `/proc/self` at scrape time. Elsewhere than Linux nothing is rendered.

use std::fmt::Write as _;

use super::families::Family;

/// Clock ticks per second of `/proc/*/stat` times: USER_HZ, fixed at 100 by the
/// Linux ABI on every architecture Rust targets (unlike the kernel's HZ).
const USER_HZ: f64 = 100.0;

pub const FAMILIES: &[Family] = &[
    Family { name: "process_cpu_seconds_total", kind: "counter", help: "User and system CPU time spent, in seconds." },
    Family { name: "process_resident_memory_bytes", kind: "gauge", help: "Resident memory size in bytes." },
    Family { name: "process_virtual_memory_bytes", kind: "gauge", help: "Virtual memory size in bytes." },
    Family { name: "process_open_fds", kind: "gauge", help: "Open file descriptors." },
    Family { name: "process_max_fds", kind: "gauge", help: "Limit of open file descriptors." },
    Family {
        name: "process_start_time_seconds",
        kind: "gauge",
        help: "Start time of the process since the Unix epoch, in seconds.",
    },
];

/// The values, as far as they could be read.
#[derive(Debug, Default, PartialEq)]
pub struct Sample {
    pub cpu_seconds: Option<f64>,
    pub resident_bytes: Option<f64>,
    pub virtual_bytes: Option<f64>,
    pub open_fds: Option<f64>,
    pub max_fds: Option<f64>,
    pub start_time: Option<f64>,
}

/// Reads `/proc/self`; fields that cannot be read are `None`.
pub fn read() -> Sample {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let boot = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let open_fds = std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count() as f64);
    parse(&stat, &status, &limits, &boot, open_fds)
}

/// Pure parsing of the `/proc` texts (see proc(5)).
pub fn parse(stat: &str, status: &str, limits: &str, boot: &str, open_fds: Option<f64>) -> Sample {
    // The command name (field 2) is in parentheses and may hold spaces: split after the last ')'.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    // `fields[0]` is field 3 (state); field N is fields[N - 3].
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok());
    let cpu_seconds = match (field(14), field(15)) {
        (Some(u), Some(s)) => Some((u + s) / USER_HZ),
        _ => None,
    };
    let btime = boot.lines().find_map(|l| l.strip_prefix("btime ")).and_then(|v| v.trim().parse::<f64>().ok());
    let start_time = match (btime, field(22)) {
        (Some(b), Some(ticks)) => Some(b + ticks / USER_HZ),
        _ => None,
    };
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map(|k| k * 1024.0)
    };
    let max_fds = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l["Max open files".len()..].split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok());
    Sample { cpu_seconds, resident_bytes: kib("VmRSS:"), virtual_bytes: field(23), open_fds, max_fds, start_time }
}

/// Appends the process families (`# HELP`, `# TYPE` and one sample each).
pub fn render(out: &mut String) {
    if !cfg!(target_os = "linux") {
        return;
    }
    let s = read();
    let values = [s.cpu_seconds, s.resident_bytes, s.virtual_bytes, s.open_fds, s.max_fds, s.start_time];
    for (family, value) in FAMILIES.iter().zip(values) {
        let Some(value) = value else { continue };
        let _ = writeln!(out, "# HELP {} {}", family.name, family.help);
        let _ = writeln!(out, "# TYPE {} {}", family.name, family.kind);
        let _ = writeln!(out, "{} {value}", family.name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_texts() {
        let stat = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 50 0 0 20 0 4 0 12345 104857600 2560 18446744073709551615";
        let status = "Name:\tswitchyard\nVmRSS:\t   10240 kB\n";
        let limits = "Limit                     Soft Limit           Hard Limit           Units\nMax open files            1024                 524288               files\n";
        let boot = "cpu  1 2 3\nbtime 1700000000\n";
        let s = parse(stat, status, limits, boot, Some(7.0));
        assert_eq!(s.cpu_seconds, Some(3.0));
        assert_eq!(s.start_time, Some(1_700_000_123.45));
        assert_eq!(s.resident_bytes, Some(10240.0 * 1024.0));
        assert_eq!(s.virtual_bytes, Some(104857600.0));
        assert_eq!(s.max_fds, Some(1024.0));
        assert_eq!(s.open_fds, Some(7.0));
        assert_eq!(parse("", "", "", "", None), Sample::default());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn reads_this_process() {
        let s = read();
        assert!(s.resident_bytes.unwrap() > 0.0);
        assert!(s.open_fds.unwrap() >= 3.0);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        let start = s.start_time.unwrap();
        assert!(start <= now + 1.0 && start > now - 86_400.0 * 365.0, "{start} vs {now}");
    }
}
