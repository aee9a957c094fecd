//! The responses the gateway itself produces, in one place: each failure maps to
//! one status (404 no route, 502 upstream connect/protocol, 503 no instance,
//! 504 timeout) with a short plain-text reason. gRPC requests get the gRPC form
//! instead: HTTP 200, `content-type: application/grpc` and the status in
//! `grpc-status`/`grpc-message` (a "trailers-only" response), because gRPC
//! clients ignore the HTTP status.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{Either, Full};

use super::grpc::{self, Code};
use crate::upstream::conn::h1::RawHeaders;
use crate::upstream::conn::{ResponseBody, UpstreamError};

/// An upstream's body (hyper's, or the in-task HTTP/1.1 exchange's) or the gateway's own text.
pub type ProxyBody = Either<ResponseBody, Full<Bytes>>;

/// The header lines an HTTP/1.1 instance's response carries as bytes, when the
/// request asked for them (see [`crate::http::Client::raw_response`]).
pub fn raw_headers(body: &ProxyBody) -> Option<&RawHeaders> {
    match body {
        Either::Left(Either::Right(h1)) => h1.raw_headers(),
        _ => None,
    }
}

/// The same, for the request path to add the gateway's own lines to them.
pub fn raw_headers_mut(body: &mut ProxyBody) -> Option<&mut RawHeaders> {
    match body {
        Either::Left(Either::Right(h1)) => h1.raw_headers_mut(),
        _ => None,
    }
}

/// Whether an upstream response's header map may hold a hop-by-hop header:
/// always for hyper's, as the in-task HTTP/1.1 exchange's parse found for its own.
pub fn may_hold_hop_by_hop(body: &ResponseBody) -> bool {
    match body {
        Either::Right(h1) => h1.may_hold_hop_by_hop(),
        Either::Left(_) => true,
    }
}

/// A local answer with a plain-text body.
pub fn text(status: StatusCode, reason: impl Into<Bytes>) -> Response<ProxyBody> {
    let mut res = Response::new(Either::Right(Full::new(reason.into())));
    *res.status_mut() = status;
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    res
}

/// A trailers-only gRPC error. The message is static ASCII, so it needs no
/// percent-encoding and no allocation.
pub fn grpc_error(code: Code, message: &'static str) -> Response<ProxyBody> {
    let mut res = Response::new(Either::Right(Full::new(Bytes::new())));
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.insert(&grpc::GRPC_STATUS, HeaderValue::from_static(code.as_header()));
    h.insert(&grpc::GRPC_MESSAGE, HeaderValue::from_static(message));
    res
}

/// An upstream failure, in the form the client understands.
pub fn upstream_error(kind: UpstreamError, service: &str, is_grpc: bool) -> Response<ProxyBody> {
    if is_grpc {
        let (code, message) = grpc::status_for(kind);
        return grpc_error(code, message);
    }
    let (status, what) = match kind {
        UpstreamError::NoInstance => (StatusCode::SERVICE_UNAVAILABLE, "no live instance"),
        UpstreamError::Connect => (StatusCode::BAD_GATEWAY, "upstream connect failed"),
        UpstreamError::Protocol => (StatusCode::BAD_GATEWAY, "upstream connection failed"),
        UpstreamError::Timeout => (StatusCode::GATEWAY_TIMEOUT, "upstream timed out"),
        UpstreamError::Overloaded => (StatusCode::SERVICE_UNAVAILABLE, "upstream overloaded"),
    };
    text(status, format!("{what}: service {service:?}\n"))
}

pub fn no_route(is_grpc: bool) -> Response<ProxyBody> {
    if is_grpc {
        // gRPC maps HTTP 404 to UNIMPLEMENTED: no such service here.
        return grpc_error(Code::Unimplemented, "switchyard: no route");
    }
    text(StatusCode::NOT_FOUND, "no route\n")
}

/// A request the gateway refuses to forward (bad target, foreign absolute-form host).
pub fn refused(status: StatusCode, reason: &'static str, is_grpc: bool) -> Response<ProxyBody> {
    if is_grpc {
        return grpc_error(Code::Internal, reason.trim_end());
    }
    text(status, reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_errors_are_http_200_with_status_headers() {
        let res = upstream_error(UpstreamError::Timeout, "s", true);
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()[header::CONTENT_TYPE], "application/grpc");
        assert_eq!(res.headers()["grpc-status"], "4");
        let res = upstream_error(UpstreamError::Connect, "s", true);
        assert_eq!(res.headers()["grpc-status"], "14");
        assert_eq!(no_route(true).headers()["grpc-status"], "12");
        assert_eq!(upstream_error(UpstreamError::NoInstance, "s", false).status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}
