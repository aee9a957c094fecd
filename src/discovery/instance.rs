//! The instance model shared by every discovery source, and the decoding of the
//! value formats of the etcd contract: our JSON instance (field names matched
//! without regard to case, so Go's `Instance{ID, Name, Addr, MetaData}` reads as
//! is), etcd's `naming/endpoints` JSON, and a bare `host:port`.
//!
//! Also the guard between every source and the table writer ([`refuse_own`]):
//! an instance at one of the gateway's own addresses, or at an unspecified
//! address (`0.0.0.0`, `::`), would make the gateway proxy to itself — one
//! request looping until every file descriptor is gone — so it never reaches
//! the table.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Change, Update};
use crate::metrics as m;

/// Values above this are refused before parsing unless `discovery.max_value_size` says otherwise.
pub const MAX_VALUE_BYTES: usize = crate::config::DEFAULT_MAX_VALUE_SIZE;

/// One backend of one service, as a discovery source reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Instance {
    pub service: String,
    pub id: String,
    /// `host:port`; the port is never 0.
    pub addr: String,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// Why a value could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("value is empty")]
    Empty,
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("no addr field")]
    NoAddr,
    #[error("invalid addr {0:?} (expected host:port with a port of 1..=65535)")]
    BadAddr(String),
    #[error("endpoint operation {0} is not an add (0)")]
    NotAnAdd(i64),
    #[error("value is neither JSON nor host:port")]
    Unrecognized,
    #[error("value is {0} bytes, more than the limit of {1}")]
    TooLarge(usize, usize),
}

/// Reads an instance value. `service` and `id` come from the key; a JSON `id`
/// or `name` in the value does not override them, because the key is what a
/// delete will name.
pub fn decode(service: &str, id: &str, value: &[u8]) -> Result<Instance, DecodeError> {
    decode_limited(service, id, value, MAX_VALUE_BYTES)
}

/// [`decode`], refusing values longer than `max_bytes`.
pub fn decode_limited(service: &str, id: &str, value: &[u8], max_bytes: usize) -> Result<Instance, DecodeError> {
    if value.len() > max_bytes {
        return Err(DecodeError::TooLarge(value.len(), max_bytes));
    }
    let text = std::str::from_utf8(value).map_err(|_| DecodeError::Unrecognized)?.trim();
    if text.is_empty() {
        return Err(DecodeError::Empty);
    }
    let (addr, metadata) = if text.starts_with('{') {
        from_json(text)?
    } else if text.starts_with('"') || (text.starts_with('[') && !text.contains("]:")) {
        return Err(DecodeError::Unrecognized);
    } else {
        (text.to_string(), BTreeMap::new())
    };
    check_addr(&addr)?;
    Ok(Instance { service: service.to_string(), id: id.to_string(), addr, metadata })
}

fn from_json(text: &str) -> Result<(String, BTreeMap<String, String>), DecodeError> {
    let Value::Object(fields) = serde_json::from_str::<Value>(text).map_err(|e| DecodeError::Json(e.to_string()))?
    else {
        return Err(DecodeError::Unrecognized);
    };
    let field = |name: &str| fields.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v);
    // etcd's naming/endpoints update: {"Op":0,"Addr":..,"Metadata":..}; Op 0 is Add.
    if let Some(op) = field("op") {
        match op.as_i64() {
            Some(0) => {}
            Some(other) => return Err(DecodeError::NotAnAdd(other)),
            None => return Err(DecodeError::Json("Op is not an integer".into())),
        }
    }
    let addr = match field("addr") {
        Some(Value::String(a)) => a.clone(),
        Some(other) => return Err(DecodeError::BadAddr(other.to_string())),
        None => return Err(DecodeError::NoAddr),
    };
    let metadata = match field("metadata") {
        Some(Value::Object(m)) => m.iter().map(|(k, v)| (k.clone(), scalar(v))).collect(),
        _ => BTreeMap::new(),
    };
    Ok((addr, metadata))
}

/// Metadata values are kept as strings: `"2"` and `2` both mean weight 2.
fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `host:port`, `[v6]:port`; the host non-empty and the port 1..=65535.
pub fn check_addr(addr: &str) -> Result<(), DecodeError> {
    let bad = || DecodeError::BadAddr(addr.to_string());
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let host_ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        v6.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !host.is_empty() && host.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_')
    };
    if port == 0 || !host_ok {
        return Err(bad());
    }
    Ok(())
}

/// Why an instance is refused although its value could be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// One of the gateway's own listener or admin addresses.
    OwnAddress,
    /// `0.0.0.0` or `::`: "this host", which connects to the gateway's own ports too.
    Unspecified,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::OwnAddress => "own_address",
            Refusal::Unspecified => "unspecified_address",
        }
    }
}

/// The addresses the gateway itself listens on (after binding, so port 0 is resolved).
#[derive(Debug, Clone, Default)]
pub struct OwnAddresses(Vec<SocketAddr>);

impl OwnAddresses {
    pub fn new(addrs: impl IntoIterator<Item = SocketAddr>) -> OwnAddresses {
        OwnAddresses(addrs.into_iter().collect())
    }

    /// Whether the gateway would refuse an instance at `addr` (`host:port`, as decoded).
    /// A name other than `localhost` is not resolved: that is left to the `Via` loop check.
    pub fn refuses(&self, addr: &str) -> Option<Refusal> {
        let (host, port) = addr.rsplit_once(':')?;
        let port: u16 = port.parse().ok()?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let ip: Option<IpAddr> =
            if host.eq_ignore_ascii_case("localhost") { Some(IpAddr::from([127, 0, 0, 1])) } else { host.parse().ok() };
        let ip = ip?;
        if ip.is_unspecified() {
            return Some(Refusal::Unspecified);
        }
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        let own = self.0.iter().any(|a| {
            a.port() == port
                && (a.ip() == ip
                    // A listener on 0.0.0.0/:: answers on every local address; loopback
                    // and addresses this host holds are known without a lookup.
                    || (a.ip().is_unspecified() && (ip.is_loopback() || is_local(ip))))
        });
        own.then_some(Refusal::OwnAddress)
    }

    /// Drops the refused instances of an update, counting and logging each one.
    pub fn filter(&self, update: Update, source: &'static str) -> Update {
        let keep = |i: &Instance| match self.refuses(&i.addr) {
            None => true,
            Some(why) => {
                tracing::warn!(service = %i.service, id = %i.id, addr = %i.addr, reason = why.as_str(),
                    "instance refused: it points at the gateway itself");
                metrics::counter!(m::DISCOVERY_INVALID_VALUES, "source" => source, "kind" => why.as_str()).increment(1);
                false
            }
        };
        match update {
            Update::Replace { mut instances, revision } => {
                instances.retain(keep);
                Update::Replace { instances, revision }
            }
            Update::Apply { mut changes, revision } => {
                // A refused put is skipped like an unreadable value: the key's previous instance stays.
                changes.retain(|c| match c {
                    Change::Put(i) => keep(i),
                    Change::Delete { .. } => true,
                });
                Update::Apply { changes, revision }
            }
            settings @ Update::Settings { .. } => settings,
        }
    }
}

/// Whether `ip` is assigned to this host: binding a UDP socket to it succeeds only then.
fn is_local(ip: IpAddr) -> bool {
    std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// Forwards updates from a source to the table writer through [`OwnAddresses::filter`].
/// `own` is swapped by a config reload that adds or moves listeners.
pub async fn refuse_own(
    mut from: mpsc::Receiver<Update>,
    to: mpsc::Sender<Update>,
    own: Arc<ArcSwap<OwnAddresses>>,
    source: &'static str,
    shutdown: CancellationToken,
) {
    loop {
        let update = tokio::select! {
            _ = shutdown.cancelled() => return,
            u = from.recv() => match u {
                Some(u) => u,
                None => return,
            },
        };
        let filtered = own.load().filter(update, source);
        if to.send(filtered).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn our_json() {
        let i = decode(
            "wallet",
            "w1",
            br#"{"id":"w1","name":"wallet","addr":"10.0.0.1:80","metadata":{"weight":"3","zone":"a"}}"#,
        )
        .unwrap();
        assert_eq!(i.addr, "10.0.0.1:80");
        assert_eq!(i.metadata, meta(&[("weight", "3"), ("zone", "a")]));
        assert_eq!((i.service.as_str(), i.id.as_str()), ("wallet", "w1"));
    }

    #[test]
    fn go_struct_without_tags() {
        let i =
            decode("s", "x", br#"{"ID":"x","Name":"s","Addr":"127.0.0.1:9000","MetaData":{"weight":2,"canary":true}}"#)
                .unwrap();
        assert_eq!(i.addr, "127.0.0.1:9000");
        assert_eq!(i.metadata, meta(&[("canary", "true"), ("weight", "2")]));
    }

    #[test]
    fn etcd_endpoints_format() {
        let i = decode("s", "x", br#"{"Op":0,"Addr":"127.0.0.1:50051","Metadata":null}"#).unwrap();
        assert_eq!(i.addr, "127.0.0.1:50051");
        assert!(i.metadata.is_empty());
        let i = decode("s", "x", br#"{"Op":0,"Addr":"h:1","Metadata":{"zone":"b","n":[1,2]}}"#).unwrap();
        assert_eq!(i.metadata, meta(&[("n", "[1,2]"), ("zone", "b")]));
        let i = decode("s", "x", br#"{"Op":0,"Addr":"h:1","Metadata":"opaque"}"#).unwrap();
        assert!(i.metadata.is_empty());
    }

    #[test]
    fn bare_host_port() {
        assert_eq!(decode("s", "x", b"  localhost:8080\n").unwrap().addr, "localhost:8080");
        assert_eq!(decode("s", "x", b"[::1]:8080").unwrap().addr, "[::1]:8080");
    }

    #[test]
    fn invalid_values() {
        let cases: &[(&[u8], DecodeError)] = &[
            (b"", DecodeError::Empty),
            (b"   ", DecodeError::Empty),
            (b"{not json", DecodeError::Json(String::new())),
            (b"{}", DecodeError::NoAddr),
            (br#"{"addr":""}"#, DecodeError::BadAddr(String::new())),
            (br#"{"addr":"host"}"#, DecodeError::BadAddr("host".into())),
            (br#"{"addr":"host:0"}"#, DecodeError::BadAddr("host:0".into())),
            (br#"{"addr":"host:99999"}"#, DecodeError::BadAddr("host:99999".into())),
            (br#"{"addr":5}"#, DecodeError::BadAddr("5".into())),
            (br#"{"Op":1,"Addr":"h:1"}"#, DecodeError::NotAnAdd(1)),
            (b"host:0", DecodeError::BadAddr("host:0".into())),
            (b":80", DecodeError::BadAddr(":80".into())),
            (b"a b:80", DecodeError::BadAddr("a b:80".into())),
            (b"[1,2]", DecodeError::Unrecognized),
            (b"\xff\xfe", DecodeError::Unrecognized),
        ];
        for (value, want) in cases {
            let got = decode("s", "x", value).unwrap_err();
            assert_eq!(
                std::mem::discriminant(&got),
                std::mem::discriminant(want),
                "{:?}",
                String::from_utf8_lossy(value)
            );
        }
    }

    #[test]
    fn values_over_the_limit_are_refused_before_parsing() {
        let big = format!("{{\"addr\":\"h:1\",\"metadata\":{{\"x\":\"{}\"}}}}", "a".repeat(MAX_VALUE_BYTES));
        assert_eq!(decode("s", "x", big.as_bytes()), Err(DecodeError::TooLarge(big.len(), MAX_VALUE_BYTES)));
        let fits = format!("{{\"addr\":\"h:1\",\"metadata\":{{\"x\":\"{}\"}}}}", "a".repeat(1000));
        assert!(decode("s", "x", fits.as_bytes()).is_ok());
    }

    #[test]
    fn own_and_unspecified_addresses_are_refused() {
        let own = OwnAddresses::new(["127.0.0.1:8080".parse().unwrap(), "0.0.0.0:9000".parse().unwrap()]);
        assert_eq!(own.refuses("127.0.0.1:8080"), Some(Refusal::OwnAddress));
        assert_eq!(own.refuses("localhost:8080"), Some(Refusal::OwnAddress));
        assert_eq!(own.refuses("[::ffff:127.0.0.1]:8080"), Some(Refusal::OwnAddress));
        assert_eq!(own.refuses("127.0.0.1:8081"), None);
        // The listener on 0.0.0.0:9000 answers on every local address.
        assert_eq!(own.refuses("127.0.0.2:9000"), Some(Refusal::OwnAddress));
        assert_eq!(own.refuses("[::1]:9000"), Some(Refusal::OwnAddress));
        assert_eq!(own.refuses("192.0.2.1:9000"), None, "TEST-NET-1 is no address of this host");
        assert_eq!(own.refuses("0.0.0.0:1234"), Some(Refusal::Unspecified));
        assert_eq!(own.refuses("[::]:1234"), Some(Refusal::Unspecified));
        assert_eq!(own.refuses("backend.internal:8080"), None);
        let update = Update::Apply {
            changes: vec![
                Change::Put(Instance {
                    service: "s".into(),
                    id: "a".into(),
                    addr: "127.0.0.1:8080".into(),
                    metadata: BTreeMap::new(),
                }),
                Change::Put(Instance {
                    service: "s".into(),
                    id: "b".into(),
                    addr: "127.0.0.1:1".into(),
                    metadata: BTreeMap::new(),
                }),
                Change::Delete { service: "s".into(), id: "c".into() },
            ],
            revision: 7,
        };
        let Update::Apply { changes, revision } = own.filter(update, "etcd") else { panic!() };
        assert_eq!(revision, 7);
        assert_eq!(changes.len(), 2);
        assert!(matches!(&changes[0], Change::Put(i) if i.id == "b"));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, ..Default::default() })]

        /// Any bytes: decoding never panics, and what it accepts has a valid address.
        #[test]
        fn decode_never_panics_and_accepts_only_valid_addresses(value in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            if let Ok(i) = decode("s", "x", &value) {
                proptest::prop_assert!(check_addr(&i.addr).is_ok());
            }
        }

        /// Our JSON form round-trips: whatever host, port and metadata went in come out.
        #[test]
        fn json_instances_round_trip(
            host in "[a-z][a-z0-9.-]{0,20}",
            port in 1u16..,
            meta in proptest::collection::btree_map("[a-zA-Z_]{1,8}", "[ -~]{0,16}", 0..4),
            upper in proptest::prelude::any::<bool>(),
        ) {
            let addr = format!("{host}:{port}");
            let value = serde_json::json!({ if upper { "Addr" } else { "addr" }: addr, if upper { "MetaData" } else { "metadata" }: meta });
            let i = decode("s", "x", value.to_string().as_bytes()).unwrap();
            proptest::prop_assert_eq!(i.addr, addr);
            proptest::prop_assert_eq!(i.metadata, meta);
        }
    }
}
