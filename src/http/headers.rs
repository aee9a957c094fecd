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

/// `TE`'s place in the flags [`hop_index`] sets, after [`HOP_BY_HOP`]'s.
const TE: usize = HOP_BY_HOP.len();

/// Which of [`HOP_BY_HOP`] `name` is (its index), `TE` for `TE`, or `None`.
/// Compares the name's text by length first: a name that is not hop-by-hop
/// (nearly all of them) costs one length match, where comparing it with each of
/// the eight `HeaderName`s took ~90 instructions a header on gRPC requests
/// (bench/cost.sh callgrind, `PROTO=grpc`).
fn hop_index(name: &HeaderName) -> Option<usize> {
    let name = name.as_str();
    let (index, text) = match name.len() {
        2 => (TE, "te"),
        7 => (6, "upgrade"),
        10 if name.as_bytes()[0] == b'c' => (0, "connection"),
        10 => (1, "keep-alive"),
        16 => (2, "proxy-connection"),
        17 => (5, "transfer-encoding"),
        18 => (3, "proxy-authenticate"),
        19 => (4, "proxy-authorization"),
        _ => return None,
    };
    // `HeaderName`s are lowercase already.
    (name == text).then_some(index)
}

/// Whether `name` is one of the hop-by-hop headers [`strip_hop_by_hop`] looks for
/// (`TE` included: it is kept only as `TE: trailers`).
pub(crate) fn is_hop_by_hop(name: &HeaderName) -> bool {
    hop_index(name).is_some()
}

/// Removes hop-by-hop headers, including those the `Connection` header names.
/// `TE: trailers` survives: gRPC needs it end to end.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One scan of the names finds which hop-by-hop headers are present; only
    // those are removed, so the usual message costs no hash lookup and a
    // `Connection: keep-alive` response one.
    let mut present = [false; HOP_BY_HOP.len() + 1];
    for name in headers.keys() {
        if let Some(i) = hop_index(name) {
            present[i] = true;
        }
    }
    if !present.contains(&true) {
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
    if present[TE] {
        let mut values = headers.get_all(header::TE).iter();
        // gRPC's own `TE: trailers`, one line of just that, stays as it is.
        let only_trailers = matches!((values.next(), values.next()), (Some(v), None) if v == "trailers");
        if !only_trailers {
            let trailers = headers
                .get_all(header::TE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"));
            if trailers {
                headers.insert(header::TE, HeaderValue::from_static("trailers"));
            } else {
                headers.remove(header::TE);
            }
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
    fn every_hop_by_hop_name_is_found_and_no_other() {
        for (i, hop) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_index(hop), Some(i), "{hop}");
        }
        assert_eq!(hop_index(&header::TE), Some(TE));
        // Same lengths as hop-by-hop names, and common names.
        for other in [
            "tt",
            "accept-",
            "x-upgrade",
            "connectiom",
            "keep-alivf",
            "content-encoding",
            "proxy-connectionx",
            "transfer-encodinh",
            "content-type",
            "proxy-authenticatf",
            "proxy-authorizatioo",
            "host",
            "x-request-id",
            "grpc-timeout",
            "cookie",
        ] {
            let name = HeaderName::from_bytes(other.as_bytes()).unwrap();
            assert_eq!(hop_index(&name), None, "{other}");
        }
    }

    #[test]
    fn te_is_kept_as_trailers_alone_whatever_its_lines_say() {
        for (lines, kept) in [
            (&["trailers"][..], true),
            (&["Trailers"][..], true),
            (&["trailers, gzip"][..], true),
            (&["gzip", "trailers"][..], true),
            (&["trailers", "trailers"][..], true),
            (&["gzip"][..], false),
            (&["deflate, gzip;q=0.5"][..], false),
        ] {
            let mut h = HeaderMap::new();
            for line in lines {
                h.append(header::TE, line.parse().unwrap());
            }
            h.insert("x-keep", "1".parse().unwrap());
            strip_hop_by_hop(&mut h);
            let te: Vec<_> = h.get_all(header::TE).iter().collect();
            if kept {
                assert_eq!(te, ["trailers"], "{lines:?}");
            } else {
                assert!(te.is_empty(), "{lines:?}");
            }
            assert_eq!(h["x-keep"], "1");
        }
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
