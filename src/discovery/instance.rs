//! The instance model shared by every discovery source, and the decoding of the
//! value formats of the etcd contract: our JSON instance (field names matched
//! without regard to case, so Go's `Instance{ID, Name, Addr, MetaData}` reads as
//! is), etcd's `naming/endpoints` JSON, and a bare `host:port`.

use std::collections::BTreeMap;

use serde_json::Value;

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
}

/// Reads an instance value. `service` and `id` come from the key; a JSON `id`
/// or `name` in the value does not override them, because the key is what a
/// delete will name.
pub fn decode(service: &str, id: &str, value: &[u8]) -> Result<Instance, DecodeError> {
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
}
