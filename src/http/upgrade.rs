//! HTTP/1.1 `Upgrade` (WebSocket and others): the request keeps its
//! `Connection: upgrade` and `Upgrade` headers (the hop-by-hop stripping would
//! otherwise drop them), and once the upstream answers 101 both connections are
//! taken over from hyper and relayed byte for byte. Relays are counted in a gauge
//! and tracked, so shutdown waits for them up to the grace period and then ends them.

use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderValue};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics as m;

/// The `Upgrade` value of a request that asks for one (`Connection` names `upgrade`).
pub fn requested(headers: &HeaderMap) -> Option<HeaderValue> {
    let upgrade = headers.get(header::UPGRADE)?;
    let asked = headers
        .get_all(header::CONNECTION)
        .iter()
        .any(|v| v.as_bytes().split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade")));
    asked.then(|| upgrade.clone())
}

/// Puts back the two headers an upgrade needs after hop-by-hop stripping.
pub fn restore(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, protocol);
}

/// Put into an upgrade request's extensions by the listener: told when the
/// client connection becomes a relay, so its idle deadline becomes `timeouts.tunnel_idle`.
#[derive(Clone)]
pub struct RelayHook(pub Arc<dyn Relayed>);

pub trait Relayed: Send + Sync {
    fn relaying(&self);
}

/// Spawns the relays of one listener's upgraded connections.
pub struct Upgrades {
    tracker: TaskTracker,
    hard_stop: CancellationToken,
    active: metrics::Gauge,
}

struct Active(metrics::Gauge);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

impl Upgrades {
    pub fn new(listener: &str, tracker: TaskTracker, hard_stop: CancellationToken) -> Upgrades {
        let active = metrics::gauge!(m::UPGRADED_ACTIVE, "listener" => listener.to_string());
        Upgrades { tracker, hard_stop, active }
    }

    /// Relays between the client and the upstream once hyper hands both over
    /// (the client's after the 101 has been written to it).
    pub fn relay(&self, client: OnUpgrade, upstream: OnUpgrade, hook: Option<RelayHook>) {
        let active = self.active.clone();
        let hard_stop = self.hard_stop.clone();
        self.tracker.spawn(async move {
            let (client, upstream) = match tokio::try_join!(client, upstream) {
                Ok(both) => both,
                Err(e) => {
                    tracing::debug!("upgrade not completed: {e}");
                    return;
                }
            };
            if let Some(RelayHook(conn)) = hook {
                conn.relaying();
            }
            active.increment(1.0);
            let _active = Active(active);
            let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
            tokio::select! {
                r = tokio::io::copy_bidirectional(&mut client, &mut upstream) => match r {
                    Ok((up, down)) => tracing::debug!(up, down, "upgraded connection closed"),
                    Err(e) => tracing::debug!("upgraded connection ended: {e}"),
                },
                _ = hard_stop.cancelled() => tracing::debug!("upgraded connection closed by shutdown"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upgrade_needs_both_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, "websocket".parse().unwrap());
        assert_eq!(requested(&h), None);
        h.insert(header::CONNECTION, "keep-alive, Upgrade".parse().unwrap());
        assert_eq!(requested(&h).unwrap(), "websocket");
        h.remove(header::UPGRADE);
        assert_eq!(requested(&h), None);
    }

    #[test]
    fn restore_after_strip() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "Upgrade".parse().unwrap());
        h.insert(header::UPGRADE, "websocket".parse().unwrap());
        let proto = requested(&h).unwrap();
        crate::http::headers::strip_hop_by_hop(&mut h);
        assert!(h.is_empty());
        restore(&mut h, proto);
        assert_eq!(h[header::CONNECTION], "upgrade");
        assert_eq!(h[header::UPGRADE], "websocket");
    }
}
