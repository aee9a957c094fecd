//! A request's head as it goes upstream, kept by the retry loop across tries
//! and lent to each transport: the in-task HTTP/1.1 exchange writes it straight
//! into the bytes it sends (the gateway's own headers as extra lines, nothing
//! copied into a `HeaderMap`), the hyper transports (h2c, TLS, upgrades) get a
//! `Request` built from it for their one try.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{Method, Request, Version};

use super::h1::RequestHead;
use super::UpstreamBody;
use crate::http::request_id::X_REQUEST_ID;

pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The headers the gateway sets replace any of the same name from the client.
static REPLACED: [HeaderName; 3] = [X_FORWARDED_FOR, X_FORWARDED_PROTO, X_FORWARDED_HOST];

/// The head of a request going upstream, before it is aimed at an instance.
#[derive(Debug)]
pub struct OutgoingHead {
    pub method: Method,
    pub path_and_query: PathAndQuery,
    /// The client's headers, hop-by-hop ones gone; the gateway's own are below.
    pub headers: HeaderMap,
    /// The `Host` an HTTP/1.1 instance gets (HTTP/2 ones get `:authority`); also
    /// the `X-Forwarded-Host`.
    pub host: HeaderValue,
    /// `X-Forwarded-For`: the client's list (if any) with the client appended.
    pub forwarded_for: HeaderValue,
    /// `X-Forwarded-Proto`: `http` or `https`.
    pub forwarded_proto: &'static str,
    /// This gateway's `Via` entry, after any the request carried.
    pub via: HeaderValue,
    /// The `x-request-id` the gateway made, when the client's headers carry none
    /// (a usable one the client sent is among `headers`).
    pub request_id: Option<HeaderValue>,
    /// Whether `headers` has a `Host` (else `host` is sent as one to HTTP/1.1 instances).
    pub host_sent: bool,
    /// An `Upgrade` request (its `Upgrade` header restored): HTTP/1.1 to every
    /// instance, over a connection that can hand both sides to the relay.
    pub upgrade: bool,
    /// An HTTP/1.1 instance's response header lines may stay bytes (see
    /// [`RequestHead::raw_response`]); hyper's transports always make a map.
    pub raw_response: bool,
}

/// The URI form and version a hyper transport needs.
#[derive(Debug, Clone, Copy)]
pub enum Aim<'a> {
    /// HTTP/1.1: origin form.
    Http1,
    /// HTTP/2 (h2c, or `tls`): absolute form naming the instance; `Host` dropped.
    H2 { authority: &'a Authority, tls: bool },
    /// HTTPS over HTTP/1.1: absolute form (hyper's client picks the pool by it).
    Https { authority: &'a Authority },
}

impl OutgoingHead {
    /// The gateway's own header lines for the in-task HTTP/1.1 exchange, and the
    /// client headers they replace. `Host` is added only when the client sent none.
    pub fn h1<'a>(&'a self, lines: &'a mut [(&'static str, &'a [u8]); 6]) -> RequestHead<'a> {
        let mut n = 0;
        let mut push = |name: &'static str, value: &'a [u8]| {
            lines[n] = (name, value);
            n += 1;
        };
        if !self.host_sent {
            push("host", self.host.as_bytes());
        }
        if let Some(id) = &self.request_id {
            push("x-request-id", id.as_bytes());
        }
        push("x-forwarded-for", self.forwarded_for.as_bytes());
        push("x-forwarded-proto", self.forwarded_proto.as_bytes());
        push("x-forwarded-host", self.host.as_bytes());
        push("via", self.via.as_bytes());
        RequestHead {
            method: &self.method,
            target: self.path_and_query.as_str(),
            headers: &self.headers,
            extra: &lines[..n],
            skip: &REPLACED,
            raw_response: self.raw_response,
        }
    }

    /// A request for one of hyper's transports, with the gateway's headers in its map.
    pub fn request(&self, body: UpstreamBody, aim: Aim<'_>) -> Request<UpstreamBody> {
        // A map of its own (the head is kept for a retry), sized once and filled in
        // one pass: cloning the client's map and then inserting the gateway's
        // headers hashed every name twice and grew the full clone (~3.7k
        // instructions per gRPC request, bench/cost.sh `PROTO=grpc`).
        let mut headers = HeaderMap::with_capacity(self.headers.len() + 6);
        for (name, value) in &self.headers {
            // `Host` goes as `:authority` to HTTP/2 and is set below for HTTP/1.1.
            if name != header::HOST && !REPLACED.contains(name) {
                headers.append(name.clone(), value.clone());
            }
        }
        headers.append(X_FORWARDED_FOR.clone(), self.forwarded_for.clone());
        headers.append(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(self.forwarded_proto));
        headers.append(X_FORWARDED_HOST.clone(), self.host.clone());
        headers.append(header::VIA, self.via.clone());
        if let Some(id) = &self.request_id {
            headers.append(X_REQUEST_ID.clone(), id.clone());
        }
        let (uri, version) = match aim {
            Aim::Http1 => (Uri::from(self.path_and_query.clone()), Version::HTTP_11),
            Aim::H2 { authority, tls } => {
                let scheme = if tls { Scheme::HTTPS } else { Scheme::HTTP };
                (self.absolute(scheme, authority), Version::HTTP_2)
            }
            Aim::Https { authority } => (self.absolute(Scheme::HTTPS, authority), Version::HTTP_11),
        };
        // HTTP/2 carries the target in `:authority`; a `Host` that disagrees with it is
        // refused by strict servers (nginx: 400). The client's host is in X-Forwarded-Host.
        if version != Version::HTTP_2 {
            headers.append(header::HOST, self.host.clone());
        }
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = uri;
        *req.version_mut() = version;
        *req.headers_mut() = headers;
        req
    }

    fn absolute(&self, scheme: Scheme, authority: &Authority) -> Uri {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(scheme);
        parts.authority = Some(authority.clone());
        parts.path_and_query = Some(self.path_and_query.clone());
        // Scheme, authority and path all present: this cannot fail.
        Uri::from_parts(parts).unwrap_or_else(|_| Uri::from(self.path_and_query.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(headers: HeaderMap) -> OutgoingHead {
        let host_sent = headers.contains_key(header::HOST);
        OutgoingHead {
            method: Method::GET,
            path_and_query: PathAndQuery::from_static("/p?q=1"),
            headers,
            host: HeaderValue::from_static("a.example"),
            forwarded_for: HeaderValue::from_static("10.0.0.9, 127.0.0.1"),
            forwarded_proto: "https",
            via: HeaderValue::from_static("1.1 gw"),
            request_id: None,
            host_sent,
            upgrade: false,
            raw_response: false,
        }
    }

    #[test]
    fn hyper_request_has_the_gateway_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("a.example"));
        h.insert(&X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.9"));
        h.insert(header::VIA, HeaderValue::from_static("1.0 edge"));
        h.append(&X_FORWARDED_PROTO, HeaderValue::from_static("gopher"));
        h.append(&X_FORWARDED_PROTO, HeaderValue::from_static("ftp"));
        h.insert(&X_FORWARDED_HOST, HeaderValue::from_static("spoofed.example"));
        h.insert("x-custom", HeaderValue::from_static("kept"));
        let out = head(h);
        let body = || UpstreamBody::Left(Default::default());
        let r = out.request(body(), Aim::Http1);
        assert_eq!(r.uri(), "/p?q=1");
        assert_eq!(r.headers()["x-forwarded-for"], "10.0.0.9, 127.0.0.1");
        assert_eq!(r.headers()["x-forwarded-proto"], "https");
        assert_eq!(r.headers()["x-forwarded-host"], "a.example");
        assert_eq!(r.headers()[header::HOST], "a.example");
        for replaced in ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "host"] {
            assert_eq!(r.headers().get_all(replaced).iter().count(), 1, "{replaced}: the gateway's alone");
        }
        assert_eq!(r.headers()["x-custom"], "kept");
        assert_eq!(r.headers().len(), 7, "{:?}", r.headers());
        let via: Vec<_> = r.headers().get_all(header::VIA).iter().collect();
        assert_eq!(via, ["1.0 edge", "1.1 gw"]);
        let authority = Authority::from_static("10.1.1.1:80");
        let r = out.request(body(), Aim::H2 { authority: &authority, tls: false });
        assert_eq!(r.uri(), "http://10.1.1.1:80/p?q=1");
        assert_eq!(r.version(), Version::HTTP_2);
        assert!(!r.headers().contains_key(header::HOST));
        let r = out.request(body(), Aim::Https { authority: &authority });
        assert_eq!(r.uri(), "https://10.1.1.1:80/p?q=1");
        assert_eq!(r.version(), Version::HTTP_11);
    }

    #[test]
    fn h1_head_lines() {
        let mut lines = Default::default();
        let out = head(HeaderMap::new());
        let h = out.h1(&mut lines);
        let names: Vec<_> = h.extra.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["host", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "via"]);
        assert_eq!(h.target, "/p?q=1");
        let mut with_host = HeaderMap::new();
        with_host.insert(header::HOST, HeaderValue::from_static("a.example"));
        let out = head(with_host);
        let mut lines = Default::default();
        assert_eq!(out.h1(&mut lines).extra.len(), 4);
    }

    #[test]
    fn a_made_request_id_goes_up_as_a_line_of_its_own() {
        let mut out = head(HeaderMap::new());
        out.request_id = Some(HeaderValue::from_static("0abc-1"));
        let mut lines = Default::default();
        let h = out.h1(&mut lines);
        assert!(h.extra.contains(&("x-request-id", &b"0abc-1"[..])), "{:?}", h.extra);
        let r = out.request(UpstreamBody::Left(Default::default()), Aim::Http1);
        assert_eq!(r.headers()["x-request-id"], "0abc-1");
        let mut lines = Default::default();
        out.request_id = None;
        assert!(out.h1(&mut lines).extra.iter().all(|(n, _)| *n != "x-request-id"));
    }
}
