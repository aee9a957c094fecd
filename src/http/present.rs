//! Which of the request headers the request path asks about are there, found
//! in one pass over the header names before any is looked up. Most requests
//! carry none of `Via`, `Upgrade`, `Connection`, `x-request-id` or
//! `X-Forwarded-For`: each absent one then costs a bit test instead of a hash
//! lookup (~90 instructions each; `wrk` sends `Host` alone). Nor any hop-by-hop
//! header: then the request's hop-by-hop pass is skipped as a whole.
//!
//! A bit says "may be present": headers removed after the scan keep their bit
//! (the lookup then finds nothing), and none of these names is added before
//! its lookup.

use http::header::{self, HeaderMap, HeaderName};

use super::headers::is_hop_by_hop;
use super::request_id::X_REQUEST_ID;
use crate::upstream::conn::request::X_FORWARDED_FOR;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Present(u8);

impl Present {
    pub const VIA: u8 = 1;
    pub const UPGRADE: u8 = 2;
    pub const CONNECTION: u8 = 4;
    pub const REQUEST_ID: u8 = 8;
    pub const FORWARDED_FOR: u8 = 16;
    pub const CONTENT_TYPE: u8 = 32;
    /// Any hop-by-hop header (`Connection`, `Upgrade`, `TE`, ...: `super::headers`):
    /// without it, the request's hop-by-hop pass is skipped.
    pub const HOP_BY_HOP: u8 = 64;

    /// Standard names compare as enum tags; the custom ones by length first.
    pub fn of(headers: &HeaderMap) -> Present {
        let mut bits = 0;
        for name in headers.keys() {
            bits |= Present::bit(name);
        }
        Present(bits)
    }

    fn bit(name: &HeaderName) -> u8 {
        // The names nearly every request carries first: they are none of these.
        if name == header::HOST || name == header::USER_AGENT || name == header::ACCEPT {
            0
        } else if name == header::VIA {
            Present::VIA
        } else if name == header::UPGRADE {
            Present::UPGRADE | Present::HOP_BY_HOP
        } else if name == header::CONNECTION {
            Present::CONNECTION | Present::HOP_BY_HOP
        } else if name == header::CONTENT_TYPE {
            Present::CONTENT_TYPE
        } else if name == X_REQUEST_ID {
            Present::REQUEST_ID
        } else if name == X_FORWARDED_FOR {
            Present::FORWARDED_FOR
        } else if is_hop_by_hop(name) {
            Present::HOP_BY_HOP
        } else {
            0
        }
    }

    pub fn has(self, bit: u8) -> bool {
        self.0 & bit != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_bit_per_name_found() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "a".parse().unwrap());
        assert_eq!(Present::of(&h), Present(0));
        h.insert("X-Request-Id", "1".parse().unwrap());
        h.append(header::VIA, "1.1 a".parse().unwrap());
        h.append(header::VIA, "1.1 b".parse().unwrap());
        let p = Present::of(&h);
        assert!(p.has(Present::REQUEST_ID) && p.has(Present::VIA));
        for bit in [Present::UPGRADE, Present::CONNECTION, Present::FORWARDED_FOR, Present::CONTENT_TYPE] {
            assert!(!p.has(bit));
        }
        for (name, bit) in [
            ("upgrade", Present::UPGRADE),
            ("connection", Present::CONNECTION),
            ("x-forwarded-for", Present::FORWARDED_FOR),
            ("content-type", Present::CONTENT_TYPE),
        ] {
            let mut h = HeaderMap::new();
            h.insert(HeaderName::from_static(name), "x".parse().unwrap());
            let hop = if matches!(name, "upgrade" | "connection") { Present::HOP_BY_HOP } else { 0 };
            assert_eq!(Present::of(&h), Present(bit | hop), "{name}");
        }
    }

    #[test]
    fn every_hop_by_hop_name_sets_its_bit() {
        for name in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "proxy-authenticate",
            "proxy-authorization",
            "te",
            "transfer-encoding",
            "upgrade",
        ] {
            let mut h = HeaderMap::new();
            h.insert(header::HOST, "a".parse().unwrap());
            h.insert(HeaderName::from_static(name), "x".parse().unwrap());
            assert!(Present::of(&h).has(Present::HOP_BY_HOP), "{name}");
        }
        let mut h = HeaderMap::new();
        for name in ["host", "user-agent", "accept", "content-type", "x-request-id", "via"] {
            h.insert(HeaderName::from_static(name), "x".parse().unwrap());
        }
        assert!(!Present::of(&h).has(Present::HOP_BY_HOP));
    }
}
