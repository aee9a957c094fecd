//! Route matching, pure: a request's host, path and headers → the service and
//! balancing rule of the first matching route. A listener without routes uses
//! the `Host` (port stripped) as the service name.

use std::net::IpAddr;

use http::HeaderMap;

use crate::config::{Balance, HashKey, HostPattern, Route};
use crate::upstream::balance::hash_key;
use crate::upstream::Pick;

/// What route matching sees of a request.
pub struct RequestView<'a> {
    /// Without port; any case.
    pub host: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub client_ip: IpAddr,
}

#[derive(Debug)]
pub struct Router {
    routes: Vec<CompiledRoute>,
}

#[derive(Debug)]
pub struct CompiledRoute {
    pub route: Route,
    /// `/package.Service/` for a gRPC route.
    grpc_prefix: Option<String>,
    host: Option<HostPattern>,
}

/// Where a request goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Target<'r, 'q> {
    Route(&'r CompiledRoute),
    /// No routes on this listener: the host names the service.
    Host(&'q str),
}

impl<'r, 'q> Target<'r, 'q> {
    pub fn service(&self) -> &str {
        match self {
            Target::Route(r) => &r.route.service,
            Target::Host(h) => h,
        }
    }

    /// The path to send upstream, with the route's prefix stripped if asked.
    pub fn upstream_path<'p>(&self, path: &'p str) -> std::borrow::Cow<'p, str> {
        if let Target::Route(CompiledRoute {
            route: Route { strip_prefix: true, path_prefix: Some(prefix), .. }, ..
        }) = self
        {
            let rest = &path[prefix.len().min(path.len())..];
            if !rest.starts_with('/') {
                return format!("/{rest}").into();
            }
            return rest.into();
        }
        path.into()
    }

    /// Whether a `CONNECT` may take this route (only a route that says so).
    pub fn allows_connect(&self) -> bool {
        matches!(self, Target::Route(r) if r.route.allow_connect)
    }

    /// The balancing decision for this request.
    pub fn pick(&self, req: &RequestView<'_>) -> Pick {
        let Target::Route(r) = self else { return Pick::RoundRobin };
        match &r.route.balance {
            Balance::RoundRobin => Pick::RoundRobin,
            Balance::Weighted => Pick::Weighted,
            Balance::LeastRequest => Pick::LeastRequest,
            // A request without the key is spread round-robin rather than piled on one backend.
            Balance::Hash(key) => request_key(key, req).map_or(Pick::RoundRobin, Pick::Hash),
        }
    }
}

impl PartialEq for CompiledRoute {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}
impl Eq for CompiledRoute {}

fn request_key(key: &HashKey, req: &RequestView<'_>) -> Option<u64> {
    match key {
        HashKey::Header(name) => req.headers.get(name).map(|v| hash_key(v.as_bytes())),
        HashKey::Cookie(name) => cookie(req.headers, name).map(|v| hash_key(v.as_bytes())),
        HashKey::ClientIp => Some(client_ip_key(req.client_ip)),
        HashKey::Path => Some(hash_key(req.path.as_bytes())),
        HashKey::Query(name) => query_param(req.query?, name).map(|v| hash_key(v.as_bytes())),
    }
}

pub fn client_ip_key(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(v4) => hash_key(&v4.octets()),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => hash_key(&v4.octets()),
            None => hash_key(&v6.octets()),
        },
    }
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').filter_map(|pair| pair.split_once('=')).find(|(k, _)| *k == name).map(|(_, v)| v)
}

impl Router {
    pub fn new(routes: &[Route]) -> Router {
        let routes = routes
            .iter()
            .map(|r| CompiledRoute {
                grpc_prefix: r.grpc_service.as_ref().map(|g| format!("/{g}/")),
                host: r.host.as_deref().map(HostPattern::parse),
                route: r.clone(),
            })
            .collect();
        Router { routes }
    }

    /// The request headers that routing matches or hashes on (besides Host).
    pub fn routing_headers(&self) -> Vec<http::HeaderName> {
        let mut names = Vec::new();
        for r in &self.routes {
            if let Some(h) = &r.route.header {
                names.push(h.name.clone());
            }
            match &r.route.balance {
                Balance::Hash(HashKey::Header(name)) => names.push(name.clone()),
                Balance::Hash(HashKey::Cookie(_)) => names.push(http::header::COOKIE),
                _ => {}
            }
        }
        names
    }

    /// Whether some route names this host explicitly (for absolute-form requests).
    pub fn serves_host(&self, host: &str) -> bool {
        self.routes.iter().any(|r| r.host.as_ref().is_some_and(|p| p.matches(host)))
    }

    pub fn route<'r, 'q>(&'r self, req: &RequestView<'q>) -> Option<Target<'r, 'q>> {
        if self.routes.is_empty() {
            return (!req.host.is_empty()).then_some(Target::Host(req.host));
        }
        self.routes.iter().find(|r| matches(r, req)).map(Target::Route)
    }
}

fn matches(r: &CompiledRoute, req: &RequestView<'_>) -> bool {
    let route = &r.route;
    r.host.as_ref().is_none_or(|h| h.matches(req.host))
        && route.path_prefix.as_deref().is_none_or(|p| req.path.starts_with(p))
        && r.grpc_prefix.as_deref().is_none_or(|p| req.path.starts_with(p))
        && route.header.as_ref().is_none_or(|h| match (&h.value, req.headers.get(&h.name)) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(want), Some(got)) => got.as_bytes() == want.as_bytes(),
        })
}

/// The host of a request: the authority of an absolute URI (HTTP/2 and
/// absolute-form), else the `Host` header, without port, brackets kept for IPv6.
/// `host` is the request's `Host` header, which the caller has looked up already.
pub fn request_host<'a>(uri: &'a http::Uri, host: Option<&'a http::HeaderValue>) -> &'a str {
    let raw = match uri.authority() {
        Some(a) => a.as_str(),
        None => host.and_then(|h| h.to_str().ok()).unwrap_or(""),
    };
    // Byte scans: a host is a few ASCII bytes, where `str`'s char searcher costs
    // more to set up than to run (~130 instructions each).
    let raw = raw.bytes().rposition(|b| b == b'@').map_or(raw, |at| &raw[at + 1..]);
    if raw.starts_with('[') {
        return raw.bytes().position(|b| b == b']').map_or(raw, |end| &raw[..end + 1]);
    }
    raw.bytes().position(|b| b == b':').map_or(raw, |colon| &raw[..colon])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HeaderMatch;

    fn route(service: &str) -> Route {
        Route {
            host: None,
            path_prefix: None,
            strip_prefix: false,
            header: None,
            grpc_service: None,
            service: service.into(),
            balance: Balance::RoundRobin,
            timeout: None,
            retry: None,
            allow_connect: false,
        }
    }

    fn view<'a>(host: &'a str, path: &'a str, headers: &'a HeaderMap) -> RequestView<'a> {
        RequestView { host, path, query: None, headers, client_ip: [127, 0, 0, 1].into() }
    }

    #[test]
    fn first_match_wins_across_matchers() {
        let mut by_host = route("wallet");
        by_host.host = Some("wallet.example.com".into());
        by_host.path_prefix = Some("/wallet/".into());
        let mut wildcard = route("any-sub");
        wildcard.host = Some("*.example.com".into());
        let mut grpc = route("greeter");
        grpc.grpc_service = Some("helloworld.Greeter".into());
        let mut canary = route("canary");
        canary.header = Some(HeaderMatch { name: "x-canary".parse().unwrap(), value: Some("1".into()) });
        let router = Router::new(&[by_host, wildcard, grpc, canary, route("default")]);
        let h = HeaderMap::new();
        let svc = |host, path, headers| router.route(&view(host, path, headers)).map(|t| t.service().to_string());
        assert_eq!(svc("WALLET.example.com", "/wallet/x", &h).as_deref(), Some("wallet"));
        assert_eq!(svc("wallet.example.com", "/other", &h).as_deref(), Some("any-sub"));
        assert_eq!(svc("example.com", "/x", &h).as_deref(), Some("default"));
        // One label only (the shared rule in `config::host`).
        assert_eq!(svc("a.b.example.com", "/x", &h).as_deref(), Some("default"));
        assert_eq!(svc("x", "/helloworld.Greeter/SayHello", &h).as_deref(), Some("greeter"));
        assert_eq!(svc("x", "/helloworld.GreeterX/SayHello", &h).as_deref(), Some("default"));
        let mut canary_h = HeaderMap::new();
        canary_h.insert("x-canary", "1".parse().unwrap());
        assert_eq!(svc("x", "/", &canary_h).as_deref(), Some("canary"));
        let mut other_h = HeaderMap::new();
        other_h.insert("x-canary", "2".parse().unwrap());
        assert_eq!(svc("x", "/", &other_h).as_deref(), Some("default"));
    }

    #[test]
    fn no_match_is_none_and_no_routes_use_host() {
        let mut only = route("a");
        only.path_prefix = Some("/a/".into());
        let h = HeaderMap::new();
        assert!(Router::new(&[only]).route(&view("x", "/b", &h)).is_none());
        let empty = Router::new(&[]);
        assert_eq!(empty.route(&view("svc", "/", &h)).unwrap().service(), "svc");
        assert!(empty.route(&view("", "/", &h)).is_none());
    }

    #[test]
    fn strip_prefix() {
        let mut r = route("a");
        r.path_prefix = Some("/api/".into());
        r.strip_prefix = true;
        let router = Router::new(&[r]);
        let h = HeaderMap::new();
        let t = router.route(&view("x", "/api/users?q", &h)).unwrap();
        assert_eq!(t.upstream_path("/api/users"), "/users");
        assert_eq!(t.upstream_path("/api/"), "/");
    }

    #[test]
    fn host_extraction() {
        let h = |v: &str| -> http::HeaderValue { v.parse().unwrap() };
        let rel: http::Uri = "/x".parse().unwrap();
        assert_eq!(request_host(&rel, Some(&h("a.com:8080"))), "a.com");
        assert_eq!(request_host(&rel, Some(&h("[::1]:80"))), "[::1]");
        assert_eq!(request_host(&rel, None), "");
        let abs: http::Uri = "http://b.com:81/x".parse().unwrap();
        assert_eq!(request_host(&abs, Some(&h("a.com"))), "b.com");
        let userinfo: http::Uri = "http://u:p@c.com:82/x".parse().unwrap();
        assert_eq!(request_host(&userinfo, Some(&h("a.com"))), "c.com");
        assert_eq!(request_host(&rel, Some(&h("a.com"))), "a.com");
        let v6: http::Uri = "http://u@[::1]:83/x".parse().unwrap();
        assert_eq!(request_host(&v6, Some(&h("a.com"))), "[::1]");
        // A Host that is not visible ASCII names no host, as `to_str` would refuse it.
        let odd = http::HeaderValue::from_bytes(b"caf\xc3\xa9.com").unwrap();
        assert_eq!(request_host(&rel, Some(&odd)), "");
    }

    #[test]
    fn hash_keys() {
        let mut r = route("a");
        r.balance = Balance::Hash(HashKey::Cookie("sid".into()));
        let router = Router::new(&[r]);
        let mut headers = HeaderMap::new();
        headers.insert(http::header::COOKIE, "a=1; sid=xyz; b=2".parse().unwrap());
        let v = view("x", "/", &headers);
        let t = router.route(&v).unwrap();
        assert!(matches!(t.pick(&v), Pick::Hash(k) if k == hash_key(b"xyz")));
        let none = HeaderMap::new();
        let v = view("x", "/", &none);
        assert!(matches!(t.pick(&v), Pick::RoundRobin));
        assert_eq!(query_param("a=1&user=42&b", "user"), Some("42"));
        assert_eq!(client_ip_key("::ffff:1.2.3.4".parse().unwrap()), client_ip_key("1.2.3.4".parse().unwrap()));
    }
}
