//! The embedded default source: a TOML file of `[[instance]]` entries, polled
//! for changes. An edit that does not parse keeps the previous table; the error
//! is logged once per distinct content and counted.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::instance::{check_addr, Instance};
use super::{Source, Update};
use crate::metrics as m;

pub struct FileSource {
    path: PathBuf,
    poll_interval: Duration,
}

impl FileSource {
    pub fn new(path: PathBuf, poll_interval: Duration) -> Self {
        FileSource { path, poll_interval }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InstancesFile {
    #[serde(default, rename = "instance")]
    instances: Vec<Instance>,
}

/// Parses an instances file; every instance is checked, and the first bad one
/// rejects the whole file (a half-applied edit would be worse than none).
pub fn parse(text: &str) -> Result<Vec<Instance>, String> {
    let file: InstancesFile = toml::from_str(text).map_err(|e| e.to_string().trim().to_string())?;
    let mut seen = std::collections::HashSet::new();
    for (i, inst) in file.instances.iter().enumerate() {
        let at = format!("instance[{i}]");
        if inst.service.is_empty() || inst.service.contains('/') {
            return Err(format!("{at}.service: {:?} is not a service name", inst.service));
        }
        if inst.id.is_empty() {
            return Err(format!("{at}.id: must not be empty"));
        }
        check_addr(&inst.addr).map_err(|e| format!("{at}.addr: {e}"))?;
        if !seen.insert((&inst.service, &inst.id)) {
            return Err(format!("{at}.id: duplicate id {:?} in service {:?}", inst.id, inst.service));
        }
    }
    Ok(file.instances)
}

impl Source for FileSource {
    async fn run(self, updates: mpsc::Sender<Update>, shutdown: CancellationToken) {
        // At zero from the start, so `rate()` sees the first failure.
        for kind in ["read", "parse"] {
            metrics::counter!(m::DISCOVERY_ERRORS, "source" => "file", "kind" => kind).increment(0);
        }
        let mut generation = 0u64;
        let mut last_seen: Option<(SystemTime, u64)> = None;
        let mut last_text: Option<String> = None;
        let mut ticker = tokio::time::interval(self.poll_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            // mtime + length decide whether to read; the content decides whether anything changed.
            let stamp = match tokio::fs::metadata(&self.path).await {
                Ok(meta) => meta.modified().ok().map(|t| (t, meta.len())),
                Err(e) => {
                    if last_text.as_deref() != Some("") {
                        tracing::error!(path = %self.path.display(), "instances file unreadable: {e}; keeping the current table");
                        metrics::counter!(m::DISCOVERY_ERRORS, "source" => "file", "kind" => "read").increment(1);
                        last_text = Some(String::new());
                        last_seen = None;
                    }
                    continue;
                }
            };
            if stamp.is_some() && stamp == last_seen {
                continue;
            }
            last_seen = stamp;
            let Ok(text) = tokio::fs::read_to_string(&self.path).await else { continue };
            if last_text.as_deref() == Some(text.as_str()) {
                continue;
            }
            let parsed = parse(&text);
            last_text = Some(text);
            match parsed {
                Ok(instances) => {
                    generation += 1;
                    tracing::info!(path = %self.path.display(), instances = instances.len(), "instances file loaded");
                    if updates.send(Update::Replace { instances, revision: generation }).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::error!(path = %self.path.display(), "instances file rejected, keeping the current table: {e}");
                    metrics::counter!(m::DISCOVERY_ERRORS, "source" => "file", "kind" => "parse").increment(1);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_instances() {
        let got = parse(
            r#"
            [[instance]]
            service = "a"
            id = "1"
            addr = "127.0.0.1:9001"
            metadata = { weight = "2" }
            [[instance]]
            service = "a"
            id = "2"
            addr = "localhost:9002"
            "#,
        )
        .unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].metadata["weight"], "2");
    }

    #[test]
    fn rejects_bad_files() {
        let cases = [
            ("[[instance]]\nservice = \"a\"\nid = \"1\"\naddr = \"x:0\"", "instance[0].addr"),
            ("[[instance]]\nservice = \"a\"\nid = \"\"\naddr = \"x:1\"", "instance[0].id"),
            ("[[instance]]\nservice = \"a\"\nid = \"1\"\naddr = \"x:1\"\n[[instance]]\nservice = \"a\"\nid = \"1\"\naddr = \"x:2\"", "duplicate id"),
            ("[[instance]]\nservice = \"a\"\nid = \"1\"\naddr = \"x:1\"\nport = 3", "unknown field"),
            ("[[instance]\n", "TOML parse error"),
        ];
        for (text, want) in cases {
            let err = parse(text).unwrap_err();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }
}
