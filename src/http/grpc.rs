//! gRPC at the proxy boundary, pure: telling a gRPC request apart, reading its
//! `grpc-timeout`, and the status codes the gateway answers with when it cannot
//! reach a backend. gRPC clients read `grpc-status`, not the HTTP status, so a
//! plain 503 would surface to them as an opaque `UNKNOWN`/`UNAVAILABLE` guess.

use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName};

use crate::upstream::conn::UpstreamError;

pub static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
pub static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
pub static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// The gRPC status codes the gateway itself produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    DeadlineExceeded = 4,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
}

impl Code {
    pub fn as_header(self) -> &'static str {
        match self {
            Code::DeadlineExceeded => "4",
            Code::Unimplemented => "12",
            Code::Internal => "13",
            Code::Unavailable => "14",
        }
    }
}

/// A request is gRPC when its content type is `application/grpc` or a
/// `application/grpc+proto`-style variant (gRPC over HTTP/2 spec).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().get(..16).is_some_and(|p| p.eq_ignore_ascii_case(b"application/grpc")))
}

/// Parses `grpc-timeout`: 1 to 8 ASCII digits and a unit (`H M S m u n`).
/// Anything else is ignored rather than refused: the config timeout still applies.
pub fn parse_timeout(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // At most 8 digits: fits in u64 without overflow checks.
    let n = digits.iter().fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0'));
    Some(match unit {
        b'H' => Duration::from_secs(n.saturating_mul(3600)),
        b'M' => Duration::from_secs(n.saturating_mul(60)),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The request's deadline: the shorter of the client's `grpc-timeout` and the configured one.
pub fn request_timeout(headers: &HeaderMap, configured: Duration) -> Duration {
    match headers.get(&GRPC_TIMEOUT).and_then(|v| parse_timeout(v.as_bytes())) {
        Some(t) => t.min(configured),
        None => configured,
    }
}

/// gRPC status and message for an upstream failure (gRPC's HTTP-to-status mapping:
/// unreachable backends are UNAVAILABLE, so clients may retry them).
pub fn status_for(kind: UpstreamError) -> (Code, &'static str) {
    match kind {
        UpstreamError::NoInstance => (Code::Unavailable, "switchyard: no live instance"),
        UpstreamError::Connect => (Code::Unavailable, "switchyard: upstream connect failed"),
        UpstreamError::Protocol => (Code::Unavailable, "switchyard: upstream connection failed"),
        UpstreamError::Timeout => (Code::DeadlineExceeded, "switchyard: upstream timed out"),
        UpstreamError::Overloaded => (Code::Unavailable, "switchyard: upstream overloaded"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_grpc_content_types() {
        let mut h = HeaderMap::new();
        assert!(!is_grpc(&h));
        h.insert(header::CONTENT_TYPE, "application/grpc".parse().unwrap());
        assert!(is_grpc(&h));
        h.insert(header::CONTENT_TYPE, "application/grpc+proto".parse().unwrap());
        assert!(is_grpc(&h));
        h.insert(header::CONTENT_TYPE, "Application/GRPC-web".parse().unwrap());
        assert!(is_grpc(&h));
        h.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        assert!(!is_grpc(&h));
        h.insert(header::CONTENT_TYPE, "application/gr".parse().unwrap());
        assert!(!is_grpc(&h));
    }

    #[test]
    fn parses_grpc_timeouts() {
        assert_eq!(parse_timeout(b"200m"), Some(Duration::from_millis(200)));
        assert_eq!(parse_timeout(b"1S"), Some(Duration::from_secs(1)));
        assert_eq!(parse_timeout(b"2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_timeout(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_timeout(b"99999999u"), Some(Duration::from_micros(99_999_999)));
        assert_eq!(parse_timeout(b"5n"), Some(Duration::from_nanos(5)));
        for bad in [&b""[..], b"m", b"123456789m", b"10x", b"-1S", b"1.5S", b" 1S"] {
            assert_eq!(parse_timeout(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn timeout_is_the_shorter_one() {
        let mut h = HeaderMap::new();
        let cfg = Duration::from_secs(30);
        assert_eq!(request_timeout(&h, cfg), cfg);
        h.insert(&GRPC_TIMEOUT, "250m".parse().unwrap());
        assert_eq!(request_timeout(&h, cfg), Duration::from_millis(250));
        h.insert(&GRPC_TIMEOUT, "1H".parse().unwrap());
        assert_eq!(request_timeout(&h, cfg), cfg);
        h.insert(&GRPC_TIMEOUT, "garbage".parse().unwrap());
        assert_eq!(request_timeout(&h, cfg), cfg);
    }

    #[test]
    fn failures_map_to_unavailable_or_deadline() {
        assert_eq!(status_for(UpstreamError::NoInstance).0, Code::Unavailable);
        assert_eq!(status_for(UpstreamError::Connect).0, Code::Unavailable);
        assert_eq!(status_for(UpstreamError::Timeout).0, Code::DeadlineExceeded);
    }
}
