//! What a request must pass before it is routed, run at the start of
//! [`super::HttpProxy::handle`]: no loop (this gateway's own `Via` token is
//! answered 508), no tunnel (`Upgrade: h2c` is stripped; `CONNECT` is 405
//! unless the matching route allows it), one valid host and a normalised path
//! ([`super::canonical`]), and a `Connection` header that cannot remove the
//! headers routing used. Each refusal is counted in
//! `switchyard_bad_requests_total{reason}`. Also the `Via` entries the gateway
//! adds to what it forwards, both ways (RFC 9110 §7.6.3).

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::{Method, Request, Response, StatusCode, Version};

use super::canonical::{canonical_host, normalize_path, CanonError};
use super::present::Present;
use super::respond::{self, ProxyBody};
use super::route::{Router, Target};
use crate::metrics as m;

static HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// Refusal reasons, in the order of [`Admission::refused`].
const REASONS: [&str; 7] = [
    "missing_host",
    "duplicate_host",
    "invalid_host",
    "path_above_root",
    "loop_detected",
    "connect_not_allowed",
    "malformed_body",
];

pub(crate) struct Admission {
    /// `switchyard-<random>`: this gateway's name in `Via`.
    pseudonym: String,
    /// `Via` values for a message received as HTTP/1.0, 1.1 and 2.
    via: [HeaderValue; 3],
    normalize_path: bool,
    /// Headers the routes match or hash on: `Connection` may not name them.
    protected: Vec<HeaderName>,
    refused: [metrics::Counter; 7],
    loops: metrics::Counter,
}

impl Admission {
    pub fn new(listener: &str, router: &Router, normalize_path: bool) -> Admission {
        // Random per listener and process: a request that comes back to it has looped,
        // while another switchyard on its way (an edge in front of an internal one) has another name.
        let pseudonym = format!("switchyard-{:08x}", fastrand::u32(..));
        let via = ["1.0", "1.1", "2"].map(|v| {
            HeaderValue::from_maybe_shared(Bytes::from(format!("{v} {pseudonym}")))
                .unwrap_or_else(|_| HeaderValue::from_static("1.1 switchyard"))
        });
        let mut protected = vec![header::HOST];
        protected.extend(router.routing_headers());
        Admission {
            pseudonym,
            via,
            normalize_path,
            protected,
            refused: REASONS
                .map(|r| metrics::counter!(m::BAD_REQUESTS, "listener" => listener.to_string(), "reason" => r)),
            loops: metrics::counter!(m::LOOPS_DETECTED, "listener" => listener.to_string()),
        }
    }

    /// The checks and rewrites before routing; `Some` is the answer to send instead.
    /// `present`: which headers the request may carry.
    pub fn check<B>(&self, req: &mut Request<B>, present: Present, is_grpc: bool) -> Option<Response<ProxyBody>> {
        if present.has(Present::VIA) && self.looped(req.headers()) {
            self.loops.increment(1);
            self.refused[4].increment(1);
            return Some(respond::refused(
                StatusCode::LOOP_DETECTED,
                "request loop: it already passed this gateway\n",
                is_grpc,
            ));
        }
        if present.has(Present::UPGRADE) {
            strip_h2c_upgrade(req.headers_mut());
        }
        if let Err(e) = self.canonicalise(req) {
            self.refused[e as usize].increment(1);
            let reason = match e {
                CanonError::MissingHost => "missing Host header\n",
                CanonError::DuplicateHost => "more than one Host header\n",
                CanonError::InvalidHost => "invalid Host\n",
                CanonError::PathAboveRoot => "path climbs above the root\n",
            };
            return Some(respond::refused(StatusCode::BAD_REQUEST, reason, is_grpc));
        }
        if present.has(Present::CONNECTION) {
            self.protect_from_connection(req.headers_mut());
        }
        None
    }

    /// `CONNECT` is refused unless the route it matched allows it.
    pub fn connect(
        &self,
        method: &Method,
        target: Option<&Target<'_, '_>>,
        is_grpc: bool,
    ) -> Option<Response<ProxyBody>> {
        if method != Method::CONNECT || target.is_some_and(|t| t.allows_connect()) {
            return None;
        }
        self.refused[5].increment(1);
        let mut res = respond::refused(StatusCode::METHOD_NOT_ALLOWED, "CONNECT is not allowed here\n", is_grpc);
        res.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"));
        Some(res)
    }

    /// A request body the client broke (malformed chunking, cut short): its fault, not the upstream's.
    pub fn malformed_body(&self, is_grpc: bool) -> Response<ProxyBody> {
        self.refused[6].increment(1);
        respond::refused(StatusCode::BAD_REQUEST, "malformed request body\n", is_grpc)
    }

    /// This gateway's `Via` entry for a message received as `version`.
    pub fn via(&self, version: Version) -> HeaderValue {
        match version {
            Version::HTTP_10 | Version::HTTP_09 => &self.via[0],
            Version::HTTP_2 | Version::HTTP_3 => &self.via[2],
            _ => &self.via[1],
        }
        .clone()
    }

    fn looped(&self, headers: &HeaderMap) -> bool {
        headers.get_all(header::VIA).iter().any(|v| {
            // `Via: 1.1 a, 1.1 switchyard-x (comment)`: the second word of each entry.
            v.to_str().is_ok_and(|v| {
                v.split(',').any(|entry| entry.split_whitespace().nth(1) == Some(self.pseudonym.as_str()))
            })
        })
    }

    fn canonicalise<B>(&self, req: &mut Request<B>) -> Result<(), CanonError> {
        let needs_host = req.version() >= Version::HTTP_11;
        let authority = req.uri().authority().map(|a| a.as_str());
        // Looked up once: `GetAll` iterates the same entries again without a second lookup.
        let hosts = req.headers().get_all(header::HOST);
        canonical_host(authority, hosts.iter().map(|v| v.as_bytes()), needs_host)?;
        // The forwarded Host is the host that was routed on: the authority, when there is one.
        let replace = authority.filter(|a| hosts.iter().next().is_none_or(|h| h.as_bytes() != a.as_bytes()));
        if let Some(v) = replace.and_then(|a| HeaderValue::from_str(a).ok()) {
            req.headers_mut().insert(header::HOST, v);
        }
        if self.normalize_path {
            let normal = match normalize_path(req.uri().path())? {
                std::borrow::Cow::Borrowed(_) => None,
                std::borrow::Cow::Owned(p) => Some(p),
            };
            if let Some(path) = normal {
                let full = match req.uri().query() {
                    Some(q) => format!("{path}?{q}"),
                    None => path,
                };
                let mut parts = req.uri().clone().into_parts();
                parts.path_and_query = PathAndQuery::try_from(full).ok();
                if let Ok(uri) = Uri::from_parts(parts) {
                    *req.uri_mut() = uri;
                }
            }
        }
        Ok(())
    }

    /// Drops from `Connection` the names of headers routing relies on, so that
    /// stripping hop-by-hop headers cannot take them from what the backend receives.
    fn protect_from_connection(&self, headers: &mut HeaderMap) {
        let Some(value) = headers.get(header::CONNECTION) else { return };
        let names_protected = |v: &HeaderValue| {
            v.to_str().is_ok_and(|v| {
                v.split(',').any(|t| self.protected.iter().any(|p| t.trim().eq_ignore_ascii_case(p.as_str())))
            })
        };
        if !names_protected(value) && headers.get_all(header::CONNECTION).iter().count() == 1 {
            return;
        }
        let kept: Vec<String> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| !t.is_empty() && !self.protected.iter().any(|p| t.eq_ignore_ascii_case(p.as_str())))
            .map(str::to_string)
            .collect();
        headers.remove(header::CONNECTION);
        if let Ok(v) = HeaderValue::from_str(&kept.join(", ")) {
            if !kept.is_empty() {
                headers.insert(header::CONNECTION, v);
            }
        }
    }
}

/// `Upgrade: h2c` asks to turn the connection into cleartext HTTP/2 (RFC 7540
/// §3.2, removed in RFC 9113): relayed, it would become a tunnel past routing.
/// The request is served as plain HTTP/1.1 instead, as the RFC allows.
fn strip_h2c_upgrade(headers: &mut HeaderMap) {
    let h2c = headers
        .get_all(header::UPGRADE)
        .iter()
        .any(|v| v.to_str().is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("h2c"))));
    if h2c {
        headers.remove(header::UPGRADE);
        headers.remove(&HTTP2_SETTINGS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Balance, HashKey, Route};

    fn admission() -> Admission {
        let route = Route {
            host: None,
            path_prefix: None,
            strip_prefix: false,
            header: None,
            grpc_service: None,
            service: "s".into(),
            balance: Balance::Hash(HashKey::Header(HeaderName::from_static("x-user"))),
            allow_connect: false,
            timeout: None,
            retry: None,
        };
        Admission::new("t", &Router::new(&[route]), true)
    }

    fn check(a: &Admission, r: &mut Request<()>) -> Option<Response<ProxyBody>> {
        let present = Present::of(r.headers());
        a.check(r, present, false)
    }

    fn req(lines: &[(&str, &str)], uri: &str, version: Version) -> Request<()> {
        let mut b = Request::builder().uri(uri).version(version);
        for (k, v) in lines {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn own_via_is_a_loop_and_others_are_not() {
        let a = admission();
        let mine = a.via(Version::HTTP_11).to_str().unwrap().to_string();
        assert!(mine.starts_with("1.1 switchyard-"));
        let mut r = req(&[("host", "a"), ("via", &format!("1.0 fred, {mine} (x)"))], "/", Version::HTTP_11);
        assert_eq!(check(&a, &mut r).unwrap().status(), StatusCode::LOOP_DETECTED);
        let mut r = req(&[("host", "a"), ("via", "1.1 switchyard-00000000")], "/", Version::HTTP_11);
        assert!(check(&a, &mut r).is_none());
    }

    #[test]
    fn host_is_made_to_match_the_target_and_paths_are_normalised() {
        let a = admission();
        let mut r = req(&[("host", "evil.example")], "http://good.example/a/../b?q=1", Version::HTTP_11);
        assert!(check(&a, &mut r).is_none());
        assert_eq!(r.headers()[header::HOST], "good.example");
        assert_eq!(r.uri().path(), "/b");
        assert_eq!(r.uri().query(), Some("q=1"));
        let mut r = req(&[], "/", Version::HTTP_11);
        assert_eq!(check(&a, &mut r).unwrap().status(), StatusCode::BAD_REQUEST);
        let mut r = req(&[], "/", Version::HTTP_10);
        assert!(check(&a, &mut r).is_none());
        let mut r = req(&[("host", "a")], "/%2e%2e/etc", Version::HTTP_11);
        assert_eq!(check(&a, &mut r).unwrap().status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn connection_cannot_name_routing_headers_and_h2c_is_stripped() {
        let a = admission();
        let mut r = req(
            &[("host", "a"), ("connection", "Host, x-user, x-other"), ("upgrade", "h2c"), ("http2-settings", "AAA")],
            "/",
            Version::HTTP_11,
        );
        assert!(check(&a, &mut r).is_none());
        assert_eq!(r.headers()[header::CONNECTION], "x-other");
        assert!(!r.headers().contains_key(header::UPGRADE));
        assert!(!r.headers().contains_key("http2-settings"));
        let mut r = req(&[("host", "a"), ("connection", "host")], "/", Version::HTTP_11);
        assert!(check(&a, &mut r).is_none());
        assert!(!r.headers().contains_key(header::CONNECTION));
    }
}
