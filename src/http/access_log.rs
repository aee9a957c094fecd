//! The access log of an HTTP(S) listener: one line per request, as a JSON
//! object or in nginx's `combined` format followed by `key=value` fields.
//!
//! The request path only formats its line and offers it to a bounded queue; a
//! writer thread of its own appends the lines to the file (buffered, flushed
//! whenever the queue runs empty). When the queue is full the line is dropped
//! and counted in `switchyard_access_log_dropped_total`: a slow disk never
//! slows a request and the memory held is bounded by `queue` lines. The writer
//! ends when the last [`AccessLog`] handle is gone (a reload opens the file
//! again, which is also how a rotated file is let go: rename it, then reload).

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::time::{Duration, SystemTime};

use crate::config::{AccessLogConfig, AccessLogFormat};
use crate::metrics as m;

/// The writer's buffer: Envoy's file access logs buffer 64 KiB too.
const WRITE_BUFFER: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum AccessLogError {
    #[error("cannot open {path}: {source}")]
    Open { path: PathBuf, source: std::io::Error },
    #[error("cannot start the writer for {path}: {source}")]
    Thread { path: PathBuf, source: std::io::Error },
}

/// A handle to one listener's access log, held by its request path.
pub(crate) struct AccessLog {
    lines: SyncSender<String>,
    format: AccessLogFormat,
    listener: Box<str>,
    dropped: metrics::Counter,
}

/// One finished request, as the log records it.
pub(crate) struct Entry<'a> {
    pub client: SocketAddr,
    pub method: &'a str,
    pub host: &'a str,
    /// Path and query, as the client sent them.
    pub target: &'a str,
    pub version: http::Version,
    pub status: u16,
    /// The response's `Content-Length`; `None` for a streamed body.
    pub bytes: Option<u64>,
    /// Until the response head.
    pub duration: Duration,
    /// Empty when no route matched.
    pub service: &'a str,
    /// The instance address; empty when none was picked.
    pub upstream: &'a str,
    pub request_id: &'a str,
    pub referer: &'a str,
    pub user_agent: &'a str,
}

impl AccessLog {
    /// Opens (creates) the file for appending and starts its writer thread.
    pub fn open(listener: &str, config: &AccessLogConfig) -> Result<AccessLog, AccessLogError> {
        let path = config.path.clone();
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|source| AccessLogError::Open { path: path.clone(), source })?;
        let (lines, rx) = mpsc::sync_channel(config.queue);
        let errors = metrics::counter!(m::ACCESS_LOG_ERRORS, "path" => path.display().to_string());
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn({
                let path = path.clone();
                move || write_lines(&path, file, rx, errors)
            })
            .map_err(|source| AccessLogError::Thread { path, source })?;
        Ok(AccessLog::new(lines, config.format, listener))
    }

    fn new(lines: SyncSender<String>, format: AccessLogFormat, listener: &str) -> AccessLog {
        let dropped = metrics::counter!(m::ACCESS_LOG_DROPPED, "listener" => listener.to_string());
        // Exported at zero from the start, so that `rate()` sees the first drop.
        dropped.increment(0);
        AccessLog { lines, format, listener: listener.into(), dropped }
    }

    /// Formats the line and queues it; drops (and counts) it when the queue is
    /// full. Returns whether it was queued.
    pub fn record(&self, entry: &Entry<'_>) -> bool {
        let line = format_line(self.format, &self.listener, SystemTime::now(), entry);
        match self.lines.try_send(line) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.increment(1);
                false
            }
        }
    }
}

/// The writer thread: appends lines until every handle is gone, flushing when idle.
fn write_lines(path: &Path, file: File, lines: Receiver<String>, errors: metrics::Counter) {
    let mut out = BufWriter::with_capacity(WRITE_BUFFER, file);
    let mut failing = false;
    let mut report = |result: std::io::Result<()>| match result {
        Ok(()) => failing = false,
        Err(e) => {
            errors.increment(1);
            // Once per failing stretch: a full disk would otherwise log every line.
            if !failing {
                tracing::warn!(path = %path.display(), "access log write failed: {e}");
            }
            failing = true;
        }
    };
    while let Ok(line) = lines.recv() {
        report(out.write_all(line.as_bytes()));
        while let Ok(line) = lines.try_recv() {
            report(out.write_all(line.as_bytes()));
        }
        report(out.flush());
    }
    report(out.flush());
}

/// One line, with its trailing newline.
pub(crate) fn format_line(format: AccessLogFormat, listener: &str, now: SystemTime, e: &Entry<'_>) -> String {
    let since_epoch = now.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let mut line = String::with_capacity(256);
    match format {
        AccessLogFormat::Json => {
            let doc = serde_json::json!({
                "time": rfc3339(since_epoch),
                "listener": listener,
                "client": e.client.ip().to_string(),
                "method": e.method,
                "host": e.host,
                "path": e.target,
                "protocol": version(e.version),
                "status": e.status,
                "bytes": e.bytes,
                "duration_ms": (e.duration.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0,
                "service": e.service,
                "upstream": e.upstream,
                "request_id": e.request_id,
                "referer": e.referer,
                "user_agent": e.user_agent,
            });
            let _ = write!(line, "{doc}");
        }
        AccessLogFormat::Combined => {
            // $remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent"
            let _ = write!(
                line,
                "{} - - [{}] \"{} {} {}\" {} {} \"{}\" \"{}\" rt={:.3} listener={} host=\"{}\" service=\"{}\" upstream=\"{}\" request_id=\"{}\"",
                e.client.ip(),
                clf_time(since_epoch),
                quoted(e.method),
                quoted(e.target),
                version(e.version),
                e.status,
                e.bytes.unwrap_or(0),
                quoted(or_dash(e.referer)),
                quoted(or_dash(e.user_agent)),
                e.duration.as_secs_f64(),
                listener,
                quoted(e.host),
                quoted(e.service),
                quoted(e.upstream),
                quoted(e.request_id),
            );
        }
    }
    line.push('\n');
    line
}

fn version(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_11 => "HTTP/1.1",
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP",
    }
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

/// A value inside double quotes: `"` and `\` escaped, control bytes as `\xHH`
/// (nginx's escaping), so a client cannot forge a line or a field.
fn quoted(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20 || b == 0x7f) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02X}", c as u32);
            }
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

fn split(t: Duration) -> ((i64, u32, u32), u64, u64, u64, u32) {
    let secs = t.as_secs();
    let date = civil((secs / 86_400) as i64);
    let rem = secs % 86_400;
    (date, rem / 3600, rem % 3600 / 60, rem % 60, t.subsec_millis())
}

/// `2026-12-01T14:03:34.123Z`
pub(crate) fn rfc3339(t: Duration) -> String {
    let ((y, mo, d), h, mi, s, ms) = split(t);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}Z")
}

/// `01/Dec/2026:14:03:34 +0000`, as nginx's `$time_local` in UTC.
fn clf_time(t: Duration) -> String {
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let ((y, mo, d), h, mi, s, _) = split(t);
    format!("{d:02}/{}/{y:04}:{h:02}:{mi:02}:{s:02} +0000", MONTHS[(mo as usize - 1) % 12])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry<'a>() -> Entry<'a> {
        Entry {
            client: "10.1.2.3:5555".parse().unwrap(),
            method: "GET",
            host: "a.example",
            target: "/x?y=\"1\"",
            version: http::Version::HTTP_11,
            status: 200,
            bytes: Some(12),
            duration: Duration::from_micros(1500),
            service: "s",
            upstream: "127.0.0.1:9001",
            request_id: "abc-1",
            referer: "",
            user_agent: "curl/8\n",
        }
    }

    #[test]
    fn dates() {
        assert_eq!(rfc3339(Duration::ZERO), "1970-01-01T00:00:00.000Z");
        // 2000-02-29 (a leap day of a century leap year) 12:34:56.789
        assert_eq!(rfc3339(Duration::from_millis(951_827_696_789)), "2000-02-29T12:34:56.789Z");
        assert_eq!(rfc3339(Duration::from_secs(1_798_761_599)), "2026-12-31T23:59:59.000Z");
        assert_eq!(clf_time(Duration::from_secs(1_798_761_599)), "31/Dec/2026:23:59:59 +0000");
    }

    #[test]
    fn json_line_parses_with_every_field() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_798_761_599);
        let line = format_line(AccessLogFormat::Json, "web", now, &entry());
        assert!(line.ends_with('\n') && !line[..line.len() - 1].contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["time"], "2026-12-31T23:59:59.000Z");
        assert_eq!(v["listener"], "web");
        assert_eq!(v["client"], "10.1.2.3");
        assert_eq!(v["path"], "/x?y=\"1\"");
        assert_eq!(v["status"], 200);
        assert_eq!(v["bytes"], 12);
        assert_eq!(v["duration_ms"], 1.5);
        assert_eq!(v["upstream"], "127.0.0.1:9001");
        assert_eq!(v["request_id"], "abc-1");
        assert_eq!(v["user_agent"], "curl/8\n");
    }

    #[test]
    fn combined_line_escapes_what_the_client_sent() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_798_761_599);
        let line = format_line(AccessLogFormat::Combined, "web", now, &entry());
        assert_eq!(
            line,
            "10.1.2.3 - - [31/Dec/2026:23:59:59 +0000] \"GET /x?y=\\\"1\\\" HTTP/1.1\" 200 12 \"-\" \"curl/8\\x0A\" \
             rt=0.002 listener=web host=\"a.example\" service=\"s\" upstream=\"127.0.0.1:9001\" request_id=\"abc-1\"\n"
        );
    }

    #[test]
    fn a_full_queue_drops_instead_of_waiting() {
        // A writer that never reads: the queue fills, and then lines are dropped at once.
        let (tx, rx) = mpsc::sync_channel(2);
        let log = AccessLog::new(tx, AccessLogFormat::Json, "web");
        let queued = (0..5).filter(|_| log.record(&entry())).count();
        assert_eq!(queued, 2);
        assert_eq!(rx.try_iter().count(), 2);
    }

    #[test]
    fn the_writer_appends_whole_lines_and_ends_with_its_handles() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        std::fs::write(&path, "earlier\n").unwrap();
        let config = AccessLogConfig { path: path.clone(), format: AccessLogFormat::Json, queue: 64 };
        let log = AccessLog::open("web", &config).unwrap();
        for _ in 0..3 {
            assert!(log.record(&entry()));
        }
        drop(log);
        let mut lines = Vec::new();
        for _ in 0..500 {
            let text = std::fs::read_to_string(&path).unwrap();
            lines = text.lines().map(str::to_string).collect();
            if lines.len() == 4 {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(lines.len(), 4, "{lines:?}");
        assert_eq!(lines[0], "earlier");
        assert!(lines[1..].iter().all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()));
    }
}
