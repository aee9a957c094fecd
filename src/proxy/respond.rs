//! The responses the gateway itself produces, in one place: each failure maps to
//! one status (404 no route, 502 upstream connect/protocol, 503 no instance,
//! 504 timeout) with a short plain-text reason.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use super::stats::UpstreamError;

pub type ProxyBody = Either<Incoming, Full<Bytes>>;

/// A local answer with a plain-text body.
pub fn text(status: StatusCode, reason: impl Into<Bytes>) -> Response<ProxyBody> {
    let mut res = Response::new(Either::Right(Full::new(reason.into())));
    *res.status_mut() = status;
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    res
}

pub fn upstream_error(kind: UpstreamError, service: &str) -> Response<ProxyBody> {
    let (status, what) = match kind {
        UpstreamError::NoInstance => (StatusCode::SERVICE_UNAVAILABLE, "no live instance"),
        UpstreamError::Connect => (StatusCode::BAD_GATEWAY, "upstream connect failed"),
        UpstreamError::Protocol => (StatusCode::BAD_GATEWAY, "upstream connection failed"),
        UpstreamError::Timeout => (StatusCode::GATEWAY_TIMEOUT, "upstream timed out"),
    };
    text(status, format!("{what}: service {service:?}\n"))
}

pub fn no_route() -> Response<ProxyBody> {
    text(StatusCode::NOT_FOUND, "no route\n")
}
