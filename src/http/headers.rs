//! Header rewriting at the proxy boundary: hop-by-hop headers are dropped both
//! ways (RFC 9110 §7.6.1), and the `X-Forwarded-*` set is added upstream.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::upstream::conn::request::X_FORWARDED_FOR;

static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Whether `name` is one of the hop-by-hop headers [`strip_hop_by_hop`] looks for
/// (`TE` included: it is kept only as `TE: trailers`).
pub(crate) fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::TE || HOP_BY_HOP.contains(name)
}

/// Removes hop-by-hop headers, including those the `Connection` header names.
/// `TE: trailers` survives: gRPC needs it end to end.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One scan of the names (standard names compare as enum tags) finds which
    // hop-by-hop headers are present; only those are removed, so the usual
    // message costs no hash lookup and a `Connection: keep-alive` response one.
    let mut present = [false; HOP_BY_HOP.len()];
    let mut te = false;
    for name in headers.keys() {
        te |= name == header::TE;
        for (seen, hop) in present.iter_mut().zip(&HOP_BY_HOP) {
            *seen |= name == hop;
        }
    }
    if !te && !present.contains(&true) {
        return;
    }
    // present[0] is `Connection`: the headers it names are hop-by-hop too. The
    // usual values (`keep-alive`, `close`) name none: no list is built for them.
    if present[0] && connection_names_headers(headers) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| !t.eq_ignore_ascii_case("close") && !t.eq_ignore_ascii_case("keep-alive"))
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for (hop, seen) in HOP_BY_HOP.iter().zip(present) {
        if seen {
            headers.remove(hop);
        }
    }
    if te {
        let trailers = headers
            .get(header::TE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("trailers")));
        if trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        } else {
            headers.remove(header::TE);
        }
    }
}

/// Whether some `Connection` value names a header (anything but `close` and `keep-alive`).
fn connection_names_headers(headers: &HeaderMap) -> bool {
    headers.get_all(header::CONNECTION).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .map(<[u8]>::trim_ascii)
            .any(|t| !t.is_empty() && !t.eq_ignore_ascii_case(b"close") && !t.eq_ignore_ascii_case(b"keep-alive"))
    })
}

/// The client address as an `X-Forwarded-For` entry, made once per connection.
pub fn client_value(client: IpAddr) -> HeaderValue {
    let ip = match client {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    HeaderValue::try_from(ip.to_string()).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// The `X-Forwarded-For` to send upstream: the client's list (when it sent
/// one) with the client (see [`client_value`]) appended. `X-Forwarded-Proto`
/// and `-Host` are the gateway's alone (`upstream::conn::OutgoingHead`).
/// `sent` says whether the request may carry one (`super::present`).
pub fn forwarded_for(headers: &HeaderMap, sent: bool, client: &HeaderValue) -> HeaderValue {
    match if sent { headers.get(&X_FORWARDED_FOR) } else { None } {
        Some(prior) => {
            let mut joined = Vec::with_capacity(prior.len() + 2 + client.len());
            joined.extend_from_slice(prior.as_bytes());
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(client.as_bytes());
            HeaderValue::from_maybe_shared(bytes::Bytes::from(joined)).unwrap_or_else(|_| client.clone())
        }
        None => client.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_connection_named() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, x-secret".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        h.insert(header::TE, "gzip, trailers".parse().unwrap());
        h.insert("x-keep", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h[header::TE], "trailers");
        assert_eq!(h["x-keep"], "1");
        let mut h = HeaderMap::new();
        h.insert(header::TE, "gzip".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert!(h.is_empty());
    }

    #[test]
    fn connection_with_only_keep_alive_or_close() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "Keep-Alive".parse().unwrap());
        h.insert("x-keep", "1".parse().unwrap());
        assert!(!connection_names_headers(&h));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        h.insert(header::CONNECTION, "close, x-keep".parse().unwrap());
        assert!(connection_names_headers(&h));
        strip_hop_by_hop(&mut h);
        assert!(h.is_empty(), "{h:?}");
    }

    #[test]
    fn forwarded_headers() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "10.0.0.1".parse().unwrap());
        let xff = forwarded_for(&h, true, &client_value("::ffff:127.0.0.1".parse().unwrap()));
        assert_eq!(xff, "10.0.0.1, 127.0.0.1");
        assert_eq!(forwarded_for(&HeaderMap::new(), false, &client_value("::1".parse().unwrap())), "::1");
    }
}
