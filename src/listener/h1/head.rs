//! Pure logic of the gateway's own HTTP/1.1 server: a request head (with
//! `httparse`, as hyper does) into `http` request parts, or the verdict that
//! hyper's server must take the connection from here; and a response head
//! into bytes with the framing its body will be written in (RFC 9112 §6).
//!
//! Only the common request is taken: no body (neither `Content-Length` other
//! than 0 nor `Transfer-Encoding`), no `Upgrade`, no `Expect`, not `CONNECT`,
//! and a head that is well-formed and within the listener's limits. Everything
//! else — bodies, upgrades, malformed or oversized heads, which hyper answers
//! with 400 or 431 and counts — is handed over whole, from its first byte.

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::SizeHint;

use crate::upstream::conn::h1::{encode_line, length, name_is, place, tokens, Line, Lines, RawHeaders};

/// Header slots parsed on the stack; a head with more lines than this (or than
/// the listener allows) goes to hyper, which applies `limits.max_request_headers`.
const SLOTS: usize = 128;

/// What the bytes at the start of the read buffer are.
// Returned once per request and taken apart at once: never stored, so its size is moved once.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Parsed {
    /// Not a whole head yet, and still within the head limit: read more.
    Partial,
    /// A request this server answers; its head's bytes have left the buffer.
    Request(Request<()>, Keep),
    /// Anything else: hyper's server takes the connection, buffer and all.
    Handoff,
}

/// Whether the client wants the connection kept after this exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keep {
    pub alive: bool,
    /// The client sent `TE: trailers`: a chunked response may end with its trailer fields.
    pub trailers: bool,
    pub head_request: bool,
    /// HTTP/1.0: keep-alive must be said, and a body without a length is delimited by the close.
    pub http10: bool,
}

/// Parses the request head at the start of `buf` under the listener's limits
/// (`max_head` bytes, `max_headers` lines). On [`Parsed::Request`] the head's
/// bytes are split off `buf` and shared by the request's URI and header values.
pub fn request(buf: &mut BytesMut, max_head: usize, max_headers: usize) -> Parsed {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; SLOTS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut slots[..max_headers.min(SLOTS)]) {
        Ok(httparse::Status::Complete(n)) if n <= max_head => n,
        Ok(httparse::Status::Partial) if buf.len() <= max_head => return Parsed::Partial,
        _ => return Parsed::Handoff,
    };
    let (Some(method), Some(path), Some(minor)) = (req.method, req.path, req.version) else {
        return Parsed::Handoff;
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else { return Parsed::Handoff };
    if method == Method::CONNECT {
        return Parsed::Handoff;
    }
    let http10 = minor == 0;
    let mut keep = Keep { alive: !http10, trailers: false, head_request: method == Method::HEAD, http10 };
    let base = buf.as_ptr() as usize;
    let path = place(base, path.as_bytes());
    // Where each line lies, to be taken from the head's bytes once they are split off.
    let mut lines = Lines::new();
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        if name_is(name, b"content-length") {
            if h.value.trim_ascii() != b"0" {
                return Parsed::Handoff;
            }
        } else if name_is(name, b"transfer-encoding") || name_is(name, b"upgrade") || name_is(name, b"expect") {
            return Parsed::Handoff;
        } else if name_is(name, b"connection") {
            for token in tokens(h.value) {
                if token.eq_ignore_ascii_case(b"close") {
                    keep.alive = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && http10 {
                    keep.alive = true;
                }
            }
        } else if name_is(name, b"te") {
            keep.trailers |= tokens(h.value).any(|t| t.eq_ignore_ascii_case(b"trailers"));
        }
        lines.push(Line { name: place(base, name), value: place(base, h.value) });
    }
    let head: Bytes = buf.split_to(len).freeze();
    let span = |(start, end): (u32, u32)| start as usize..end as usize;
    let Ok(uri) = Uri::from_maybe_shared(head.slice(span(path))) else {
        // hyper answers 400 for it; nothing has been taken from the buffer for good.
        return handed_back(buf, head);
    };
    // Room for the `x-request-id` the proxy adds to most requests: a map that grows
    // rehashes every entry (~440 instructions).
    let mut headers = HeaderMap::with_capacity(lines.len() + 1);
    for line in lines.iter() {
        let Ok(name) = HeaderName::from_bytes(&head[span(line.name)]) else { return handed_back(buf, head) };
        let Ok(value) = HeaderValue::from_maybe_shared(head.slice(span(line.value))) else {
            return handed_back(buf, head);
        };
        headers.append(name, value);
    }
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = if http10 { Version::HTTP_10 } else { Version::HTTP_11 };
    *request.headers_mut() = headers;
    Parsed::Request(request, keep)
}

/// Puts a head that turned out to be hyper's back in front of the buffer.
fn handed_back(buf: &mut BytesMut, head: Bytes) -> Parsed {
    let mut whole = BytesMut::with_capacity(head.len() + buf.len());
    whole.extend_from_slice(&head);
    whole.extend_from_slice(buf);
    *buf = whole;
    Parsed::Handoff
}

/// How a response body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// None at all: HEAD, 1xx, 204, 304.
    Empty,
    /// Exactly this many bytes, as `Content-Length` says.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the connection closes (an HTTP/1.0 client, no length known).
    Close,
}

/// Writes the response head into `dst` and says how its body follows: the
/// upstream's header lines kept as bytes (`raw`) first, then the map's. `date`
/// appends a `Date` line of the current time, called only when the response has
/// none (a clock read saved for the usual upstream response, which has one); `keep` is
/// what the client asked for and `closing` says the server will close after
/// this response (drain): the head then says `Connection: close`. Returns the
/// framing and whether the connection may stay open after the body.
pub fn response<B>(
    dst: &mut Vec<u8>,
    res: &Response<B>,
    raw: Option<&RawHeaders>,
    hint: &SizeHint,
    keep: Keep,
    closing: bool,
    date: impl FnOnce(&mut Vec<u8>),
) -> (Framing, bool) {
    let status = res.status();
    let headers = res.headers();
    let no_body = status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let map_length = headers.get(header::CONTENT_LENGTH).and_then(|v| length(v.as_bytes()));
    let declared = map_length.or(raw.and_then(|r| r.content_length));
    // A length the head does not say yet but the body knows is written into it
    // (for a HEAD too: it is the length a GET would get).
    let add_length = if declared.is_none() && !no_body { hint.exact() } else { None };
    let framing = if no_body || keep.head_request {
        Framing::Empty
    } else if let Some(n) = declared.or(add_length) {
        Framing::Length(n)
    } else if keep.http10 {
        Framing::Close
    } else {
        Framing::Chunked
    };
    let alive = keep.alive && !closing && framing != Framing::Close;

    dst.extend_from_slice(b"HTTP/1.1 ");
    dst.extend_from_slice(status.as_str().as_bytes());
    dst.push(b' ');
    dst.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
    dst.extend_from_slice(b"\r\n");
    let mut has_date = raw.is_some_and(|r| r.date);
    if let Some(raw) = raw {
        raw.write(dst);
    }
    for (name, value) in headers {
        // The framing is this server's: a length that does not parse is replaced,
        // and a body is never announced twice.
        if name == header::TRANSFER_ENCODING || (name == header::CONTENT_LENGTH && map_length.is_none()) {
            continue;
        }
        has_date |= name == header::DATE;
        encode_line(dst, name.as_str().as_bytes(), value.as_bytes());
    }
    if let Some(n) = add_length {
        encode_line(dst, b"content-length", itoa::Buffer::new().format(n).as_bytes());
    }
    if framing == Framing::Chunked {
        encode_line(dst, b"transfer-encoding", b"chunked");
    }
    if !alive && !keep.http10 {
        encode_line(dst, b"connection", b"close");
    } else if alive && keep.http10 {
        encode_line(dst, b"connection", b"keep-alive");
    }
    if !has_date {
        date(dst);
    }
    dst.extend_from_slice(b"\r\n");
    (framing, alive)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> (Parsed, BytesMut) {
        let mut buf = BytesMut::from(text);
        (request(&mut buf, 8192, 100), buf)
    }

    fn taken(text: &str) -> (Request<()>, Keep, BytesMut) {
        match parse(text) {
            (Parsed::Request(r, k), rest) => (r, k, rest),
            (other, _) => panic!("{text:?}: {other:?}"),
        }
    }

    fn handed_off(text: &str) {
        let (parsed, rest) = parse(text);
        assert!(matches!(parsed, Parsed::Handoff), "{text:?}: {parsed:?}");
        assert_eq!(rest, text.as_bytes(), "the whole buffer goes to hyper");
    }

    #[test]
    fn a_bodiless_request_is_taken_and_what_follows_stays() {
        let (r, k, rest) = taken("GET /a?b=1 HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nX-A: 2\r\n\r\nGET /next");
        assert_eq!((r.method(), r.uri().path(), r.uri().query()), (&Method::GET, "/a", Some("b=1")));
        assert_eq!(r.version(), Version::HTTP_11);
        assert_eq!(r.headers()["host"], "x");
        assert_eq!(r.headers().get_all("x-a").iter().count(), 2);
        assert_eq!(k, Keep { alive: true, trailers: false, head_request: false, http10: false });
        assert_eq!(rest, "GET /next");
    }

    #[test]
    fn every_line_of_a_long_head_is_kept_in_order() {
        let lines: String = (0..40).map(|i| format!("X-{i}: v{i}\r\n")).collect();
        let (r, _, rest) = taken(&format!("GET / HTTP/1.1\r\n{lines}X-0: again\r\n\r\n"));
        assert_eq!(r.headers().len(), 41);
        assert_eq!(r.headers()["x-39"], "v39");
        let zero: Vec<_> = r.headers().get_all("x-0").iter().collect();
        assert_eq!(zero, ["v0", "again"]);
        assert!(rest.is_empty());
    }

    #[test]
    fn keep_alive_follows_the_version_and_the_connection_tokens() {
        assert!(!taken("GET / HTTP/1.1\r\nConnection: foo, Close\r\n\r\n").1.alive);
        assert!(!taken("GET / HTTP/1.0\r\n\r\n").1.alive);
        let (_, k, _) = taken("HEAD / HTTP/1.0\r\nConnection: keep-alive\r\nTE: trailers\r\n\r\n");
        assert_eq!(k, Keep { alive: true, trailers: true, head_request: true, http10: true });
        assert!(taken("GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n").1.alive);
    }

    #[test]
    fn a_partial_head_waits_until_it_passes_the_limit() {
        assert!(matches!(parse("GET / HTTP/1.1\r\nHost: x\r\n").0, Parsed::Partial));
        let mut long = BytesMut::from(format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(9000)).as_str());
        assert!(matches!(request(&mut long, 8192, 100), Parsed::Handoff));
        let mut whole = BytesMut::from(format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(9000)).as_str());
        assert!(matches!(request(&mut whole, 8192, 100), Parsed::Handoff));
    }

    #[test]
    fn bodies_upgrades_and_bad_heads_are_hypers() {
        handed_off("POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc");
        handed_off("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
        handed_off("GET / HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 1\r\n\r\n");
        handed_off("GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n");
        handed_off("PUT / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n");
        handed_off("CONNECT a:443 HTTP/1.1\r\n\r\n");
        handed_off("GET / HTTP/1.1\r\nBad Name: x\r\n\r\n");
        handed_off("GET / HTTP/1.1\r\nHost: a\r\n b\r\n\r\n");
        handed_off("GET /a b HTTP/1.1\r\n\r\n");
        handed_off("GET http://[::1 HTTP/1.1\r\n\r\n");
        handed_off("\u{1}\u{2}garbage\r\n\r\n");
        let many: String = (0..101).map(|i| format!("X-{i}: v\r\n")).collect();
        handed_off(&format!("GET / HTTP/1.1\r\n{many}\r\n"));
    }

    fn encode(res: &Response<()>, hint: SizeHint, keep: Keep, closing: bool) -> (String, Framing, bool) {
        encode_raw(res, None, hint, keep, closing)
    }

    fn encode_raw(
        res: &Response<()>,
        raw: Option<&RawHeaders>,
        hint: SizeHint,
        keep: Keep,
        closing: bool,
    ) -> (String, Framing, bool) {
        let mut dst = Vec::new();
        let date = |d: &mut Vec<u8>| encode_line(d, b"date", b"Tue, 01 Dec 2026 19:00:00 GMT");
        let (framing, alive) = response(&mut dst, res, raw, &hint, keep, closing, date);
        (String::from_utf8(dst).unwrap(), framing, alive)
    }

    const KEEP11: Keep = Keep { alive: true, trailers: false, head_request: false, http10: false };

    fn with(status: u16, headers: &[(&str, &str)]) -> Response<()> {
        let mut res = Response::new(());
        *res.status_mut() = StatusCode::from_u16(status).unwrap();
        for (n, v) in headers {
            res.headers_mut().append(HeaderName::from_bytes(n.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        res
    }

    #[test]
    fn a_known_length_is_said_once_and_a_date_added() {
        let (head, framing, alive) = encode(&with(200, &[("x-a", "1")]), SizeHint::with_exact(5), KEEP11, false);
        assert_eq!(
            head,
            "HTTP/1.1 200 OK\r\nx-a: 1\r\ncontent-length: 5\r\ndate: Tue, 01 Dec 2026 19:00:00 GMT\r\n\r\n"
        );
        assert_eq!((framing, alive), (Framing::Length(5), true));
        let res = with(200, &[("content-length", "7"), ("date", "then")]);
        let (head, framing, _) = encode(&res, SizeHint::default(), KEEP11, false);
        assert_eq!(head, "HTTP/1.1 200 OK\r\ncontent-length: 7\r\ndate: then\r\n\r\n");
        assert_eq!(framing, Framing::Length(7));
        // A response with its own Date does not read the clock for one.
        let raw = RawHeaders::of_text("date: then\r\n", None, true);
        for (res, raw) in [(&res, None), (&with(200, &[]), Some(&raw))] {
            let no_clock = |_: &mut Vec<u8>| panic!("the date was asked for");
            response(&mut Vec::new(), res, raw, &SizeHint::with_exact(0), KEEP11, false, no_clock);
        }
    }

    #[test]
    fn an_unknown_length_is_chunked_for_http11_and_close_delimited_for_http10() {
        let (head, framing, alive) = encode(&with(200, &[]), SizeHint::default(), KEEP11, false);
        assert!(head.contains("transfer-encoding: chunked\r\n"), "{head}");
        assert_eq!((framing, alive), (Framing::Chunked, true));
        let keep10 = Keep { http10: true, ..KEEP11 };
        let (head, framing, alive) = encode(&with(200, &[]), SizeHint::default(), keep10, false);
        assert!(!head.contains("transfer-encoding") && !head.contains("connection"), "{head}");
        assert_eq!((framing, alive), (Framing::Close, false));
        let (head, _, alive) = encode(&with(200, &[]), SizeHint::with_exact(0), keep10, false);
        assert!(head.contains("connection: keep-alive\r\n") && head.contains("content-length: 0\r\n"), "{head}");
        assert!(alive);
    }

    #[test]
    fn head_204_and_304_have_no_body_and_keep_their_headers() {
        let head_req = Keep { head_request: true, ..KEEP11 };
        let (head, framing, _) = encode(&with(200, &[("content-length", "42")]), SizeHint::default(), head_req, false);
        assert!(head.contains("content-length: 42\r\n"), "{head}");
        assert_eq!(framing, Framing::Empty);
        let (head, framing, _) = encode(&with(204, &[]), SizeHint::with_exact(0), KEEP11, false);
        assert!(!head.contains("content-length"), "{head}");
        assert_eq!(framing, Framing::Empty);
        let (head, framing, _) = encode(&with(304, &[("content-length", "10")]), SizeHint::default(), KEEP11, false);
        assert!(head.contains("content-length: 10\r\n"), "{head}");
        assert_eq!(framing, Framing::Empty);
    }

    #[test]
    fn raw_upstream_lines_come_first_and_their_length_and_date_count() {
        let res = with(200, &[("via", "1.1 gw"), ("x-request-id", "r1")]);
        let raw = RawHeaders::of_text("server: up\r\ncontent-length: 5\r\ndate: then\r\n", Some(5), true);
        // The body's hint would say 5 too: the length is not written twice.
        let (head, framing, _) = encode_raw(&res, Some(&raw), SizeHint::with_exact(5), KEEP11, false);
        assert_eq!(
            head,
            "HTTP/1.1 200 OK\r\nserver: up\r\ncontent-length: 5\r\ndate: then\r\nvia: 1.1 gw\r\nx-request-id: r1\r\n\r\n"
        );
        assert_eq!(framing, Framing::Length(5));
        // A HEAD's upstream length is the GET's: kept, no body.
        let raw = RawHeaders::of_text("content-length: 99\r\n", Some(99), false);
        let head_req = Keep { head_request: true, ..KEEP11 };
        let (head, framing, _) = encode_raw(&with(200, &[]), Some(&raw), SizeHint::with_exact(0), head_req, false);
        assert!(head.contains("content-length: 99\r\n") && head.matches("content-length").count() == 1, "{head}");
        assert!(head.contains("date: Tue"), "{head}");
        assert_eq!(framing, Framing::Empty);
    }

    #[test]
    fn closing_says_so_and_the_framing_headers_are_this_servers() {
        let res = with(502, &[("transfer-encoding", "chunked"), ("content-length", "x1")]);
        let (head, framing, alive) = encode(&res, SizeHint::with_exact(3), KEEP11, true);
        assert_eq!(
            head,
            "HTTP/1.1 502 Bad Gateway\r\ncontent-length: 3\r\nconnection: close\r\ndate: Tue, 01 Dec 2026 19:00:00 GMT\r\n\r\n"
        );
        assert_eq!((framing, alive), (Framing::Length(3), false));
        let (head, _, _) = encode(&with(599, &[]), SizeHint::with_exact(0), KEEP11, false);
        assert!(head.starts_with("HTTP/1.1 599 <none>\r\n"), "{head}");
    }
}
