//! One backend as the data path sees it: its address, what its metadata means
//! (weight, zone, protocol, status), and what survives table swaps with it: its
//! in-flight count (`load`, so that `least_request` and `max_inflight` stay
//! right while the table changes), its pool and its health state.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::uri::Authority;

use super::balance::weighted::MAX_WEIGHT;
use super::conn::pool::InstancePool;
use super::conn::Protocol;
use super::instance::{Admission, InstanceState};
use super::load::Load;
use crate::config::ServicePolicy;
use crate::discovery::Instance;

pub const DEFAULT_WEIGHT: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Takes new requests.
    Up,
    /// Finishes what it has, takes nothing new.
    Draining,
    /// Excluded.
    Down,
}

#[derive(Debug)]
pub struct Endpoint {
    pub id: Arc<str>,
    /// `host:port`, resolved at connect time (IP literals need no lookup).
    pub addr: Arc<str>,
    pub authority: Authority,
    pub weight: u32,
    pub zone: Option<String>,
    pub protocol: Protocol,
    pub status: Status,
    pub metadata: BTreeMap<String, String>,
    pub load: Arc<Load>,
    /// Keep-alive HTTP/1.1 connections to `addr` (plain-text instances).
    pub pool: Arc<InstancePool>,
    /// Outlier, health and slow-start state; survives swaps like `load` and `pool`.
    pub state: Arc<InstanceState>,
}

/// A metadata value that was present but meant nothing; the instance is still used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataWarning {
    pub key: &'static str,
    pub value: String,
}

impl Endpoint {
    /// Reads an instance's metadata. Unreadable values fall back to the default
    /// and are returned as warnings, so one typo does not drop a backend.
    pub fn from_instance(
        instance: &Instance,
        load: Arc<Load>,
        pool: Arc<InstancePool>,
        state: Arc<InstanceState>,
    ) -> Result<(Endpoint, Vec<MetadataWarning>), String> {
        let authority: Authority = instance.addr.parse().map_err(|e| format!("addr {:?}: {e}", instance.addr))?;
        let mut warnings = Vec::new();
        let mut warn =
            |key: &'static str, value: &str| warnings.push(MetadataWarning { key, value: value.to_string() });
        let meta = &instance.metadata;
        let weight = match meta.get("weight") {
            None => DEFAULT_WEIGHT,
            Some(w) => match w.trim().parse::<u32>() {
                Ok(n) if (1..=MAX_WEIGHT).contains(&n) => n,
                _ => {
                    warn("weight", w);
                    DEFAULT_WEIGHT
                }
            },
        };
        let status = match meta.get("status").map(|s| s.trim().to_ascii_lowercase()).as_deref() {
            None | Some("up") => Status::Up,
            Some("draining") => Status::Draining,
            Some("down") => Status::Down,
            Some(_) => {
                warn("status", &meta["status"]);
                Status::Up
            }
        };
        let protocol = match meta.get("protocol").map(|s| s.trim().to_ascii_lowercase()).as_deref() {
            None | Some("http1") | Some("http") => Protocol::Http1,
            Some("h2c") => Protocol::H2c,
            Some("https") => Protocol::Https,
            Some("h2") => Protocol::H2,
            Some(_) => {
                warn("protocol", &meta["protocol"]);
                Protocol::Http1
            }
        };
        let endpoint = Endpoint {
            id: instance.id.as_str().into(),
            addr: instance.addr.as_str().into(),
            authority,
            weight,
            zone: meta.get("zone").cloned(),
            protocol,
            status,
            metadata: meta.clone(),
            load,
            pool,
            state,
        };
        Ok((endpoint, warnings))
    }

    /// Whether this instance takes a new request now (see [`InstanceState::admits`]).
    pub fn admits(&self, now_ms: u64, policy: &ServicePolicy) -> Admission {
        self.state.admits(now_ms, self.load.full(policy.limits.max_inflight), policy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(meta: &[(&str, &str)]) -> Instance {
        Instance {
            service: "s".into(),
            id: "i".into(),
            addr: "127.0.0.1:80".into(),
            metadata: meta.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    #[test]
    fn metadata_meanings() {
        let (e, w) = Endpoint::from_instance(
            &instance(&[("weight", "7"), ("status", "draining"), ("protocol", "h2c"), ("zone", "a")]),
            Default::default(),
            Arc::new(InstancePool::new("127.0.0.1:80")),
            Arc::new(InstanceState::new(false)),
        )
        .unwrap();
        assert!(w.is_empty());
        assert_eq!(
            (e.weight, e.status, e.protocol, e.zone.as_deref()),
            (7, Status::Draining, Protocol::H2c, Some("a"))
        );
    }

    #[test]
    fn bad_metadata_falls_back_with_warnings() {
        let (e, w) = Endpoint::from_instance(
            &instance(&[("weight", "0"), ("status", "sleepy"), ("protocol", "smtp")]),
            Default::default(),
            Arc::new(InstancePool::new("127.0.0.1:80")),
            Arc::new(InstanceState::new(false)),
        )
        .unwrap();
        assert_eq!((e.weight, e.status, e.protocol), (1, Status::Up, Protocol::Http1));
        assert_eq!(w.iter().map(|w| w.key).collect::<Vec<_>>(), ["weight", "status", "protocol"]);
        let (e, w) = Endpoint::from_instance(
            &instance(&[("weight", "1001")]),
            Default::default(),
            Arc::new(InstancePool::new("127.0.0.1:80")),
            Arc::new(InstanceState::new(false)),
        )
        .unwrap();
        assert_eq!((e.weight, w.len()), (1, 1));
    }
}
