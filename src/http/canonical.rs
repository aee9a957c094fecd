//! Canonical requests, pure: the one host a request names and the normalised
//! path it is routed and forwarded by, so that what the router matched is what
//! the backend receives.
//!
//! - Host ([`canonical_host`]): the authority of an absolute-form target or of
//!   HTTP/2's `:authority` wins over `Host` (RFC 9112 §3.2.2), and the forwarded
//!   `Host` is made to match it. A missing Host on HTTP/1.1, more than one Host,
//!   or one that is not `host[:port]` (a reg-name of letters, digits, `-._~`, an
//!   IPv4 address or a bracketed IPv6 address; a port of at most 5 digits up to
//!   65535) is refused: RFC 9112 §3.2 says 400.
//! - Path ([`normalize_path`]), as Envoy's `normalize_path`: percent-escapes of
//!   unreserved characters are decoded (`%2e` → `.`, `%41` → `A`; RFC 3986
//!   §6.2.2.2), other escapes get upper-case hex (§6.2.2.1) — `%2F` stays an
//!   escaped slash — and dot-segments are removed (§5.2.4). A path that would
//!   climb above the root (`/../x`) is refused rather than clamped: no client
//!   means it, and a backend that resolves it differently would see another resource.

use std::borrow::Cow;

/// Why a request is not canonical; each is answered 400. The order is that of
/// the reasons counted in `admit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CanonError {
    #[error("missing Host header")]
    MissingHost,
    #[error("more than one Host header")]
    DuplicateHost,
    #[error("invalid Host")]
    InvalidHost,
    #[error("path climbs above the root")]
    PathAboveRoot,
}

/// The host a request names, checked.
///
/// `authority` is the target's authority (absolute-form, HTTP/2 `:authority`),
/// `hosts` every `Host` header value, `needs_host` whether the protocol requires
/// one (HTTP/1.1). The host to forward is then the authority when there is one,
/// else the `Host` header (none for an HTTP/1.0 request without it).
pub fn canonical_host<'a>(
    authority: Option<&'a str>,
    mut hosts: impl Iterator<Item = &'a [u8]>,
    needs_host: bool,
) -> Result<(), CanonError> {
    let header = hosts.next();
    if hosts.next().is_some() {
        return Err(CanonError::DuplicateHost);
    }
    // The target's authority wins; a Host alongside it is replaced by it, whatever it said
    // (RFC 9112 §3.2.2), but must still be a single, valid header.
    if let Some(h) = header {
        if authority.is_none() || !h.is_empty() {
            check_authority(h)?;
        }
    }
    match (authority, header) {
        (Some(a), _) => check_authority(a.as_bytes()),
        (None, Some(_)) => Ok(()),
        (None, None) if needs_host => Err(CanonError::MissingHost),
        (None, None) => Ok(()),
    }
}

/// `host[:port]` as RFC 3986 §3.2.2 allows it in HTTP, without userinfo. Bytes:
/// a `Host` header's value is checked as it is, not first made a `str`.
fn check_authority(text: &[u8]) -> Result<(), CanonError> {
    let bad = Err(CanonError::InvalidHost);
    if text.is_empty() || text.len() > 261 {
        return bad;
    }
    let port = if let Some(rest) = text.strip_prefix(b"[") {
        let Some(close) = rest.iter().position(|&b| b == b']') else { return bad };
        let v6 = std::str::from_utf8(&rest[..close]).ok().and_then(|v6| v6.parse::<std::net::Ipv6Addr>().ok());
        if v6.is_none() {
            return bad;
        }
        match &rest[close + 1..] {
            [] => None,
            [b':', port @ ..] => Some(port),
            _ => return bad,
        }
    } else {
        let (host, port) = match text.iter().position(|&b| b == b':') {
            Some(colon) => (&text[..colon], Some(&text[colon + 1..])),
            None => (text, None),
        };
        if host.is_empty() || host.len() > 253 || !host.iter().all(|&b| is_unreserved(b)) {
            return bad;
        }
        port
    };
    if let Some(port) = port {
        // At most five digits, and at most 65535.
        let digits_ok = !port.is_empty() && port.len() <= 5 && port.iter().all(u8::is_ascii_digit);
        if !digits_ok || port.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0')) > 65_535 {
            return bad;
        }
    }
    Ok(())
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The normalised form of an origin-form path (no query). Borrowed when it is
/// already normal, which is the usual case and costs one scan.
pub fn normalize_path(path: &str) -> Result<Cow<'_, str>, CanonError> {
    // `*` (OPTIONS) and anything not absolute is left alone; hyper has checked the characters.
    if !path.starts_with('/') {
        return Ok(Cow::Borrowed(path));
    }
    if !needs_work(path.as_bytes()) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(path.as_bytes());
    let out = remove_dot_segments(&decoded)?;
    // Only ASCII went in (a path is ASCII on the wire) and escapes were decoded
    // to unreserved ASCII only, so this cannot fail; fall back to the input anyway.
    Ok(String::from_utf8(out).map_or(Cow::Borrowed(path), Cow::Owned))
}

/// Whether the path has an escape or a dot-segment to look at.
fn needs_work(p: &[u8]) -> bool {
    if p.contains(&b'%') {
        return true;
    }
    p.split(|&b| b == b'/').any(|seg| seg == b"." || seg == b"..")
}

/// Decodes `%XX` of unreserved characters and upper-cases the hex of the others.
fn decode_unreserved(p: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(p.len());
    let mut i = 0;
    while i < p.len() {
        if p[i] == b'%' && i + 2 < p.len() {
            if let (Some(h), Some(l)) = (hex(p[i + 1]), hex(p[i + 2])) {
                let c = h << 4 | l;
                if is_unreserved(c) {
                    out.push(c);
                } else {
                    out.push(b'%');
                    out.push(p[i + 1].to_ascii_uppercase());
                    out.push(p[i + 2].to_ascii_uppercase());
                }
                i += 3;
                continue;
            }
        }
        out.push(p[i]);
        i += 1;
    }
    out
}

/// RFC 3986 §5.2.4 on an absolute path, except that `..` at the root is an error.
fn remove_dot_segments(p: &[u8]) -> Result<Vec<u8>, CanonError> {
    // Segments after the leading '/'; a trailing "." or ".." leaves a trailing '/'.
    let mut out: Vec<&[u8]> = Vec::new();
    let segments: Vec<&[u8]> = p[1..].split(|&b| b == b'/').collect();
    let last = segments.len() - 1;
    let mut trailing_slash = false;
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            b"." => trailing_slash = i == last,
            b".." => {
                if out.pop().is_none() {
                    return Err(CanonError::PathAboveRoot);
                }
                trailing_slash = i == last;
            }
            s => {
                out.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut result = Vec::with_capacity(p.len());
    for seg in &out {
        result.push(b'/');
        result.extend_from_slice(seg);
    }
    if trailing_slash || result.is_empty() {
        result.push(b'/');
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn norm(p: &str) -> Result<String, CanonError> {
        normalize_path(p).map(|c| c.into_owned())
    }

    #[test]
    fn dot_segments_and_escapes() {
        assert_eq!(norm("/public/../internal/secret").unwrap(), "/internal/secret");
        assert_eq!(norm("/public/%2e%2e/internal").unwrap(), "/internal");
        assert_eq!(norm("/public/%2E%2e/internal").unwrap(), "/internal");
        assert_eq!(norm("/a/./b/.").unwrap(), "/a/b/");
        assert_eq!(norm("/a/b/..").unwrap(), "/a/");
        assert_eq!(norm("/a/%41%7e%2f%3f").unwrap(), "/a/A~%2F%3F");
        assert_eq!(norm("/a//b").unwrap(), "/a//b", "slashes are not merged (Envoy's merge_slashes is off too)");
        assert_eq!(norm("/a/..%2f..").unwrap(), "/a/..%2F..", "an escaped slash separates no segments");
        assert_eq!(norm("/%zz/%4").unwrap(), "/%zz/%4", "broken escapes are left alone");
        assert_eq!(norm("/..").unwrap_err(), CanonError::PathAboveRoot);
        assert_eq!(norm("/a/../../b").unwrap_err(), CanonError::PathAboveRoot);
        assert_eq!(norm("/%2e%2e/x").unwrap_err(), CanonError::PathAboveRoot);
        assert_eq!(norm("/").unwrap(), "/");
        assert_eq!(norm("*").unwrap(), "*");
        assert!(matches!(normalize_path("/plain/path.html").unwrap(), Cow::Borrowed(_)));
        assert!(matches!(normalize_path("/a/..b/.c").unwrap(), Cow::Borrowed(_)));
    }

    #[test]
    fn hosts() {
        let one = |h: &'static str| std::iter::once(h.as_bytes());
        for good in ["a.example:8080", "[::1]:80", "[::1]", "10.0.0.1", "h:65535", "h:0"] {
            assert_eq!(canonical_host(None, one(good), true), Ok(()), "{good:?}");
        }
        assert_eq!(canonical_host(None, std::iter::empty(), true), Err(CanonError::MissingHost));
        assert_eq!(canonical_host(None, std::iter::empty(), false), Ok(()));
        assert_eq!(canonical_host(None, ["a", "b"].iter().map(|s| s.as_bytes()), true), Err(CanonError::DuplicateHost));
        assert_eq!(canonical_host(None, ["a", "a"].iter().map(|s| s.as_bytes()), true), Err(CanonError::DuplicateHost));
        for bad in [
            "",
            "a b/c@d",
            "echo:99999",
            "a:",
            "a:b",
            "[::1",
            "[zz]:1",
            "u@h",
            "a/b",
            "h:1:2",
            "h:123456",
            "h:65536",
            "[::1]x",
            "[::1]:",
            "caf\u{e9}",
        ] {
            assert_eq!(canonical_host(None, one(bad), true), Err(CanonError::InvalidHost), "{bad:?}");
        }
        // The target's authority wins (and becomes the forwarded Host: `admit`).
        assert_eq!(canonical_host(Some("b.example"), one("a.example"), true), Ok(()));
        assert_eq!(canonical_host(Some("b.example"), std::iter::empty(), true), Ok(()));
        assert_eq!(canonical_host(Some("u@b.example"), std::iter::empty(), true), Err(CanonError::InvalidHost));
        assert_eq!(canonical_host(Some("b.example"), one("a b"), true), Err(CanonError::InvalidHost));
    }

    /// Segments without '/', '%' or dots-only names, and dot-segments.
    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => "[a-zA-Z0-9_~-]{1,6}",
            1 => Just(".".to_string()),
            1 => Just("..".to_string()),
            1 => Just("%2e%2E".to_string()),
            1 => Just("%41".to_string()),
            1 => Just("%2f".to_string()),
            1 => Just(String::new()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Normalising is idempotent, yields no dot-segment and no escaped unreserved
        /// character, and never climbs: the result is what a resolver would reach.
        #[test]
        fn normalisation_is_idempotent_and_leaves_no_dot_segments(segs in proptest::collection::vec(segment(), 0..10)) {
            let path = format!("/{}", segs.join("/"));
            match normalize_path(&path) {
                Ok(n) => {
                    prop_assert!(n.starts_with('/'));
                    prop_assert!(!n.split('/').any(|s| s == "." || s == ".."), "{} → {}", path, n);
                    prop_assert!(!n.contains("%2e") && !n.contains("%2E") && !n.contains("%41"));
                    let again = normalize_path(&n).unwrap().into_owned();
                    prop_assert_eq!(again, n.clone().into_owned());
                    // Independent model: a stack of decoded segments.
                    let mut stack: Vec<String> = Vec::new();
                    for s in &segs {
                        let d = s.replace("%2e", ".").replace("%2E", ".").replace("%41", "A").replace("%2f", "%2F");
                        match d.as_str() { "." => {}, ".." => { stack.pop(); }, _ => stack.push(d) }
                    }
                    let joined = stack.join("/");
                    prop_assert!(n.trim_end_matches('/') == format!("/{joined}").trim_end_matches('/'), "{} → {} vs {}", path, n, joined);
                }
                Err(e) => {
                    prop_assert_eq!(e, CanonError::PathAboveRoot);
                    // The model agrees that some prefix climbed above the root.
                    let mut depth: i64 = 0;
                    let mut climbed = false;
                    for s in &segs {
                        let d = s.replace("%2e", ".").replace("%2E", ".");
                        match d.as_str() { "." => {}, ".." => { depth -= 1; climbed |= depth < 0; }, _ => depth += 1 }
                    }
                    prop_assert!(climbed, "{}", path);
                }
            }
        }

        /// Any bytes: no panic, and anything accepted is a single valid authority.
        #[test]
        fn host_parsing_never_panics_and_accepts_only_authorities(h in proptest::collection::vec(any::<u8>(), 0..40)) {
            if canonical_host(None, std::iter::once(&h[..]), true).is_ok() {
                let host = std::str::from_utf8(&h);
                prop_assert!(host.is_ok_and(|host| !host.is_empty() && !host.contains(['@', ' ', '/', '?', '#'])));
            }
        }

        /// Valid names and ports are accepted as they are.
        #[test]
        fn valid_hosts_are_accepted(name in "[a-z0-9][a-z0-9.-]{0,30}", port in proptest::option::of(0u32..=65_535)) {
            let text = match port { Some(p) => format!("{name}:{p}"), None => name };
            prop_assert_eq!(canonical_host(None, std::iter::once(text.as_bytes()), true), Ok(()));
        }
    }
}
