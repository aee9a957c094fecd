//! Pure parsing for the upstream HTTP/1.1 exchange: the response head (with
//! `httparse`, as hyper does) into a status, a `HeaderMap` minus the framing and
//! hop-by-hop lines, and the message framing (RFC 9112 §6.3); the chunk-size line
//! of a chunked body; and trailer sections. As strict as hyper's client, and
//! stricter where a proxy has to be (a response that could be read two ways
//! is refused, not guessed): both `Content-Length` and `Transfer-Encoding`,
//! differing or malformed `Content-Length`s, a transfer coding other than
//! `chunked`, obsolete line folding, an oversized head.

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{StatusCode, Version};

use super::H1Error;

/// Largest response head (and trailer section): Envoy's `max_response_headers_kb` default (60 KiB).
pub const MAX_HEAD: usize = 60 * 1024;
/// Most header lines in a head: Envoy's `max_headers_count` and hyper's default (100).
pub const MAX_HEADERS: usize = 100;
/// Longest chunk-size line, extensions included (hyper allows 4 KiB of extensions too).
pub const MAX_CHUNK_LINE: usize = 4096;

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body: HEAD, 204, 304, or `Content-Length: 0`.
    Empty,
    Length(u64),
    Chunked,
    /// Read until the upstream closes (no length, not chunked): never reused.
    Close,
    /// 101 to a request that asked for an upgrade: the connection is handed over.
    Upgrade,
}

/// A parsed response head.
#[derive(Debug)]
pub struct Head {
    pub status: StatusCode,
    pub version: Version,
    /// Without `Connection` (unless it names other headers), `Keep-Alive`,
    /// `Proxy-Connection` and `Transfer-Encoding`, which are this hop's.
    pub headers: HeaderMap,
    pub framing: Framing,
    /// The connection may carry another request once this body has been read.
    pub keep_alive: bool,
    /// When the request asked for it ([`RequestKind::raw`]): the forwarded lines
    /// as bytes, `headers` holding only those the gateway removes by name (`TE`).
    pub raw: Option<Box<RawHeaders>>,
    /// `headers` may hold a hop-by-hop header (a `Connection` that names others,
    /// `TE`, `Upgrade`, `Proxy-Authenticate`, `Proxy-Authorization`): when not,
    /// the request path's hop-by-hop pass has nothing to do.
    pub hop_by_hop: bool,
}

/// A response's forwarded header lines as bytes, for the gateway's own HTTP/1.1
/// server to write as they are: no `HeaderName` or map entry is made for them,
/// and nothing is copied until they are written. Names keep the upstream's case
/// (field names are case-insensitive, RFC 9110 §5.1; nginx and HAProxy forward
/// them so too).
#[derive(Debug, Clone)]
pub struct RawHeaders {
    /// The response head's bytes, shared.
    head: Bytes,
    /// Runs of forwarded lines in `head`, each from a name's first byte to the end
    /// of its last line's value; the lines inside a run are separated by CRLF.
    spans: [(u16, u16); RAW_SPANS],
    count: u8,
    /// The `Content-Length` among them.
    pub content_length: Option<u64>,
    /// Whether a `Date` is among them.
    pub date: bool,
    /// The gateway's own lines, written after the upstream's: its `Via` entry and
    /// the request's `x-request-id` (the upstream's is dropped: it is replaced).
    /// Set by the request path, where it would otherwise insert them into the map.
    pub via: Option<HeaderValue>,
    pub request_id: Option<HeaderValue>,
}

/// Runs of lines a [`RawHeaders`] holds at most: a head that would need more
/// (many dropped lines in between) is put in a map instead.
const RAW_SPANS: usize = 6;

impl RawHeaders {
    /// Appends the lines, each ending in CRLF.
    pub fn write(&self, dst: &mut Vec<u8>) {
        for &(start, end) in &self.spans[..usize::from(self.count)] {
            dst.extend_from_slice(&self.head[usize::from(start)..usize::from(end)]);
            dst.extend_from_slice(b"\r\n");
        }
        if let Some(via) = &self.via {
            super::encode_line(dst, b"via", via.as_bytes());
        }
        if let Some(id) = &self.request_id {
            super::encode_line(dst, b"x-request-id", id.as_bytes());
        }
    }

    /// The lines as [`RawHeaders::write`] writes them, for tests.
    #[cfg(test)]
    pub fn of_text(text: &'static str, content_length: Option<u64>, date: bool) -> RawHeaders {
        let lines = text.strip_suffix("\r\n").unwrap_or(text);
        let end = u16::try_from(lines.len()).unwrap_or(0);
        let mut spans = [(0, 0); RAW_SPANS];
        spans[0] = (0, end);
        RawHeaders {
            head: Bytes::from_static(text.as_bytes()),
            spans,
            count: 1,
            content_length,
            date,
            via: None,
            request_id: None,
        }
    }
}

/// Where the kept lines of a head lie: inline up to [`Lines::INLINE`], so that a
/// usual head needs no allocation (nor a zeroed array of a hundred entries); a
/// response head here, a request head in the gateway's own HTTP/1.1 server.
pub(crate) struct Lines {
    inline: [Line; Lines::INLINE],
    n: usize,
    more: Vec<Line>,
}

impl Lines {
    const INLINE: usize = 16;

    pub(crate) fn new() -> Lines {
        Lines { inline: [Line::default(); Lines::INLINE], n: 0, more: Vec::new() }
    }

    pub(crate) fn push(&mut self, line: Line) {
        match self.inline.get_mut(self.n) {
            Some(slot) => *slot = line,
            None => self.more.push(line),
        }
        self.n += 1;
    }

    pub(crate) fn len(&self) -> usize {
        self.n
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Line> {
        self.inline[..self.n.min(Lines::INLINE)].iter().chain(self.more.iter())
    }
}

/// What the request was, as far as the response framing cares.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestKind {
    pub head: bool,
    pub upgrade: bool,
    /// The response goes to a client of the gateway's own HTTP/1.1 server: its
    /// lines may be kept as bytes ([`Head::raw`]), unless a `Connection` header
    /// names some (the proxy removes those by name) or it is a 101.
    pub raw: bool,
}

/// Response headers the request path removes by name: in a map even when the
/// rest is kept as bytes ([`RawHeaders`]). The other hop-by-hop names are
/// dropped here already.
fn kept_in_map(name: &[u8]) -> bool {
    name_is(name, b"te")
}

/// Hop-by-hop names, besides `TE` ([`kept_in_map`]), that pass the parse and that
/// the proxy removes from responses by name (`http::headers::strip_hop_by_hop`;
/// `Connection` and the names it lists are seen apart).
fn hop_by_hop_by_name(name: &[u8]) -> bool {
    name_is(name, b"proxy-authenticate") || name_is(name, b"proxy-authorization") || name_is(name, b"upgrade")
}

/// Those, and the `x-request-id` the proxy replaces with the request's
/// ([`RawHeaders::request_id`]): dropped here when the lines are kept as bytes.
fn dropped_when_raw(name: &[u8]) -> bool {
    hop_by_hop_by_name(name) || name_is(name, b"x-request-id")
}

/// The `HeaderName` of a name usual in responses, without `HeaderName::from_bytes`'s
/// lower-casing copy and its match over every standard name (~110 instructions a
/// name): most response heads are made of these.
fn standard_name(name: &[u8]) -> Option<HeaderName> {
    let known = match name.len() {
        4 if name_is(name, b"date") => header::DATE,
        4 if name_is(name, b"etag") => header::ETAG,
        4 if name_is(name, b"vary") => header::VARY,
        6 if name_is(name, b"server") => header::SERVER,
        8 if name_is(name, b"location") => header::LOCATION,
        10 if name_is(name, b"set-cookie") => header::SET_COOKIE,
        12 if name_is(name, b"content-type") => header::CONTENT_TYPE,
        13 if name_is(name, b"cache-control") => header::CACHE_CONTROL,
        13 if name_is(name, b"last-modified") => header::LAST_MODIFIED,
        14 if name_is(name, b"content-length") => header::CONTENT_LENGTH,
        16 if name_is(name, b"content-encoding") => header::CONTENT_ENCODING,
        _ => return None,
    };
    Some(known)
}

/// Whether a header name that httparse accepted (a token) is `lower`, a name in
/// lower case letters and `-`. Eight bytes at a time with the case bit set: of
/// the token characters, that changes only upper-case letters (to theirs) and
/// makes `-` only of `-`; `eq_ignore_ascii_case` folds each byte on both sides.
pub(crate) fn name_is(name: &[u8], lower: &[u8]) -> bool {
    const CASE: u64 = 0x2020_2020_2020_2020;
    debug_assert!(lower.iter().all(|&b| b.is_ascii_lowercase() || b == b'-'), "{lower:?}");
    if name.len() != lower.len() {
        return false;
    }
    let (mut name, mut lower) = (name, lower);
    while let (Some((a, name_rest)), Some((b, lower_rest))) = (name.split_first_chunk(), lower.split_first_chunk()) {
        if u64::from_ne_bytes(*a) | CASE != u64::from_ne_bytes(*b) {
            return false;
        }
        (name, lower) = (name_rest, lower_rest);
    }
    name.iter().zip(lower).all(|(&a, &b)| a | 0x20 == b)
}

/// Parses a response head at the start of `buf`. `Ok(None)`: incomplete, read
/// more. Informational responses (1xx other than 101) are consumed and
/// skipped, as hyper's client does. On success the head's bytes are gone from
/// `buf`; what follows (the start of the body) stays.
pub fn response_head(buf: &mut BytesMut, req: RequestKind) -> Result<Option<Head>, H1Error> {
    loop {
        let Some(head) = one_head(buf, req)? else { return Ok(None) };
        if head.status.is_informational() && head.status != StatusCode::SWITCHING_PROTOCOLS {
            continue;
        }
        return Ok(Some(head));
    }
}

/// Where a kept header line's name and value lie in the head's bytes (start, end).
#[derive(Clone, Copy, Default)]
pub(crate) struct Line {
    pub(crate) name: (u32, u32),
    pub(crate) value: (u32, u32),
}

/// Where `part`, a slice of a head whose first byte is at address `base`, lies in
/// it: (start, end). Both fit in u32: a head is at most [`MAX_HEAD`] here and
/// `limits.max_request_head` (16 MiB) in the gateway's own server.
pub(crate) fn place(base: usize, part: &[u8]) -> (u32, u32) {
    let start = (part.as_ptr() as usize - base) as u32;
    (start, start + part.len() as u32)
}

fn one_head(buf: &mut BytesMut, req: RequestKind) -> Result<Option<Head>, H1Error> {
    // Uninitialised: a hundred empty headers written before every parse cost more than the parse.
    let mut slots = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut []);
    // httparse's defaults are the strict ones: obs-fold, spaces before the colon
    // and a missing reason phrase's garbage are errors.
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut res, buf, &mut slots) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => return Err(H1Error::HeadTooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(H1Error::Invalid("more than 100 header lines")),
        Err(e) => return Err(H1Error::Parse(e)),
    };
    if len > MAX_HEAD {
        return Err(H1Error::HeadTooLarge);
    }
    let version = match res.version {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    let status = res.code.and_then(|c| StatusCode::from_u16(c).ok()).ok_or_else(|| H1Error::Invalid("status code"))?;
    let base = buf.as_ptr() as usize;

    let mut content_length: Option<u64> = None;
    let mut te_seen = false;
    let mut te_chunked = false;
    let mut close = false;
    let mut keep_alive_token = false;
    let mut connection_names_other = false;
    let mut other_hop = false;
    let mut lines = Lines::new();
    for h in res.headers.iter() {
        let value = h.value;
        // The framing and hop-by-hop names are compared as bytes here; only
        // forwarded lines become `HeaderName`s, once, below.
        let keep = if name_is(h.name.as_bytes(), b"content-length") {
            let n = content_length_value(value)?;
            if content_length.is_some_and(|prior| prior != n) {
                return Err(H1Error::Invalid("differing content-length values"));
            }
            content_length = Some(n);
            true
        } else if name_is(h.name.as_bytes(), b"transfer-encoding") {
            for coding in tokens(value) {
                // `chunked` must be the last coding and appear once; no other
                // transfer coding is decoded here, so none is accepted.
                if te_chunked || !coding.eq_ignore_ascii_case(b"chunked") {
                    return Err(H1Error::Invalid("transfer-encoding other than a single chunked"));
                }
                te_chunked = true;
            }
            te_seen = true;
            false
        } else if name_is(h.name.as_bytes(), b"connection") {
            for t in tokens(value) {
                if t.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if t.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive_token = true;
                } else {
                    connection_names_other = true;
                }
            }
            // Kept only when it names other headers: the proxy's hop-by-hop pass removes those.
            connection_names_other
        } else if name_is(h.name.as_bytes(), b"keep-alive") || name_is(h.name.as_bytes(), b"proxy-connection") {
            false
        } else {
            other_hop |= kept_in_map(h.name.as_bytes()) || hop_by_hop_by_name(h.name.as_bytes());
            true
        };
        if keep {
            lines.push(Line { name: place(base, h.name.as_bytes()), value: place(base, value) });
        }
    }
    if te_seen && content_length.is_some() {
        // RFC 9112 §6.1: a sender must not send both; a proxy that picked one
        // reading would disagree with a later hop that picked the other.
        return Err(H1Error::Invalid("both content-length and transfer-encoding"));
    }
    if te_seen && !te_chunked {
        return Err(H1Error::Invalid("empty transfer-encoding"));
    }
    if te_seen && version == Version::HTTP_10 {
        return Err(H1Error::Invalid("transfer-encoding in an HTTP/1.0 response"));
    }

    let bytes: Bytes = buf.split_to(len).freeze();
    let mut raw = None;
    if req.raw && !connection_names_other && status != StatusCode::SWITCHING_PROTOCOLS {
        if let Some((kept, in_map)) = raw_block(&bytes, &lines, content_length) {
            raw = Some(Box::new(kept));
            lines = in_map;
        }
    }
    // Room for the two the gateway adds (`Via`, `x-request-id`) and one more: hyper's
    // HTTP/2 server looks up `Date` through the entry API, which reserves a slot
    // first; a full map would grow and rehash for it (~1,000 instructions). With
    // the lines kept as bytes, the gateway's two go there too, and the map is
    // usually empty: no allocation.
    let room = if raw.is_some() { 0 } else { 3 };
    let mut headers = HeaderMap::with_capacity(lines.len() + room);
    for line in lines.iter() {
        let name = &bytes[line.name.0 as usize..line.name.1 as usize];
        let name = match standard_name(name) {
            Some(known) => known,
            None => HeaderName::from_bytes(name).map_err(|_| H1Error::Invalid("header name"))?,
        };
        // httparse accepted the value (HTAB, SP, VCHAR, obs-text): the bytes are shared, not copied.
        let value = HeaderValue::from_maybe_shared(bytes.slice(line.value.0 as usize..line.value.1 as usize))
            .map_err(|_| H1Error::Invalid("header value"))?;
        headers.append(name, value);
    }

    let framing = if status == StatusCode::SWITCHING_PROTOCOLS {
        if !req.upgrade {
            return Err(H1Error::Invalid("101 to a request that asked for no upgrade"));
        }
        Framing::Upgrade
    } else if status.is_informational()
        || req.head
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Framing::Empty
    } else if te_chunked {
        Framing::Chunked
    } else {
        match content_length {
            Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
            None => Framing::Close,
        }
    };
    let keep_alive = !close
        && framing != Framing::Close
        && framing != Framing::Upgrade
        && (version == Version::HTTP_11 || keep_alive_token);
    let hop_by_hop = connection_names_other || other_hop;
    Ok(Some(Head { status, version, headers, framing, keep_alive, raw, hop_by_hop }))
}

/// The lines of `bytes` (a response head) as a [`RawHeaders`], except
/// hop-by-hop ones and those the map must hold, which are returned apart.
/// `None` when they do not fit in [`RAW_SPANS`] runs.
fn raw_block(bytes: &Bytes, lines: &Lines, content_length: Option<u64>) -> Option<(RawHeaders, Lines)> {
    // Offsets are u16: within MAX_HEAD, but checked.
    u16::try_from(bytes.len()).ok()?;
    let mut raw = RawHeaders {
        head: bytes.clone(),
        spans: [(0, 0); RAW_SPANS],
        count: 0,
        content_length,
        date: false,
        via: None,
        request_id: None,
    };
    let mut in_map = Lines::new();
    for line in lines.iter() {
        let name = &bytes[line.name.0 as usize..line.name.1 as usize];
        if kept_in_map(name) {
            in_map.push(*line);
            continue;
        }
        if dropped_when_raw(name) {
            continue;
        }
        raw.date |= name_is(name, b"date");
        // Both within the head, whose length fits in a u16.
        let (start, end) = (line.name.0 as u16, line.value.1 as u16);
        let count = usize::from(raw.count);
        match raw.spans[..count].last_mut() {
            Some(run) if bytes.get(usize::from(run.1)..usize::from(start)) == Some(b"\r\n") => run.1 = end,
            _ if count == RAW_SPANS => return None,
            _ => {
                raw.spans[count] = (start, end);
                raw.count += 1;
            }
        }
    }
    Some((raw, in_map))
}

/// Comma-separated list elements, trimmed, empty ones skipped (RFC 9110 §5.6.1).
pub fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(<[u8]>::trim_ascii).filter(|t| !t.is_empty())
}

/// A `Content-Length` value: `1*DIGIT` (around spaces trimmed), nothing else —
/// no sign, no spaces inside, no list — and at most `u64::MAX`.
pub fn length(value: &[u8]) -> Option<u64> {
    let v = value.trim_ascii();
    if v.is_empty() || v.len() > 20 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |n, d| n.checked_mul(10)?.checked_add(u64::from(d - b'0')))
}

fn content_length_value(value: &[u8]) -> Result<u64, H1Error> {
    length(value).ok_or(H1Error::Invalid("malformed content-length"))
}

/// A chunk-size line at the start of `buf`: `Ok(None)` when incomplete,
/// otherwise the size and the line's length (CRLF included). Extensions are
/// skipped but must be made of visible characters; the line must end in CRLF.
pub fn chunk_size(buf: &[u8]) -> Result<Option<(u64, usize)>, H1Error> {
    let Some(lf) = buf.iter().take(MAX_CHUNK_LINE).position(|&b| b == b'\n') else {
        if buf.len() >= MAX_CHUNK_LINE {
            return Err(H1Error::Chunk("chunk-size line too long"));
        }
        return Ok(None);
    };
    if lf == 0 || buf[lf - 1] != b'\r' {
        return Err(H1Error::Chunk("chunk-size line without CRLF"));
    }
    let line = &buf[..lf - 1];
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(H1Error::Chunk("no chunk size"));
    }
    if digits > 16 {
        return Err(H1Error::Chunk("chunk size too large"));
    }
    let mut size = 0u64;
    for &d in &line[..digits] {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => d - b'A' + 10,
        };
        size = size.checked_mul(16).ok_or(H1Error::Chunk("chunk size too large"))? | u64::from(v);
    }
    let rest = &line[digits..];
    let ext = rest.trim_ascii_start();
    if !(ext.is_empty() && rest.is_empty() || ext.first() == Some(&b';')) {
        return Err(H1Error::Chunk("bytes after the chunk size"));
    }
    if ext.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(H1Error::Chunk("control character in a chunk extension"));
    }
    Ok(Some((size, lf + 1)))
}

/// A trailer section (after the last chunk) at the start of `buf`: `Ok(None)`
/// when incomplete, otherwise the fields and the section's length. Fields that
/// frame or route a message have no meaning as trailers and are dropped.
pub fn trailers(buf: &[u8]) -> Result<Option<(HeaderMap, usize)>, H1Error> {
    if buf.starts_with(b"\r\n") {
        return Ok(Some((HeaderMap::new(), 2)));
    }
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    match httparse::parse_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete((n, fields))) => {
            let mut map = HeaderMap::with_capacity(fields.len());
            for f in fields {
                let name = HeaderName::from_bytes(f.name.as_bytes()).map_err(|_| H1Error::Chunk("trailer name"))?;
                if [header::CONTENT_LENGTH, header::TRANSFER_ENCODING, header::CONNECTION, header::HOST].contains(&name)
                {
                    continue;
                }
                let value = HeaderValue::from_bytes(f.value).map_err(|_| H1Error::Chunk("trailer value"))?;
                map.append(name, value);
            }
            Ok(Some((map, n)))
        }
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => Err(H1Error::HeadTooLarge),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(_) => Err(H1Error::Chunk("malformed trailers")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `name_is` agrees with `eq_ignore_ascii_case` on every token that differs
    /// from a name in one byte (any token character there), in any case.
    #[test]
    fn name_is_agrees_with_case_folding_on_tokens() {
        let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        let names: [&[u8]; 11] = [
            b"te",
            b"date",
            b"expect",
            b"upgrade",
            b"connection",
            b"keep-alive",
            b"x-request-id",
            b"content-length",
            b"proxy-connection",
            b"transfer-encoding",
            b"proxy-authorization",
        ];
        for lower in names {
            assert!(name_is(lower, lower) && name_is(&lower.to_ascii_uppercase(), lower));
            assert!(!name_is(&lower[1..], lower) && !name_is(&[lower, b"s"].concat(), lower));
            for at in 0..lower.len() {
                for c in (0..=255u8).filter(|&c| token(c)) {
                    let mut name = lower.to_vec();
                    name[at] = c;
                    assert_eq!(
                        name_is(&name, lower),
                        name.eq_ignore_ascii_case(lower),
                        "{:?}",
                        String::from_utf8_lossy(&name)
                    );
                }
            }
        }
    }

    fn parse(raw: &str, req: RequestKind) -> Result<Option<Head>, H1Error> {
        let mut buf = BytesMut::from(raw.as_bytes());
        response_head(&mut buf, req)
    }
    fn ok(raw: &str) -> Head {
        parse(raw, RequestKind::default()).unwrap().unwrap()
    }
    fn invalid(raw: &str) -> String {
        parse(raw, RequestKind::default()).unwrap_err().to_string()
    }

    #[test]
    fn framing() {
        assert_eq!(ok("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n").framing, Framing::Length(5));
        assert_eq!(ok("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").framing, Framing::Empty);
        assert_eq!(ok("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").framing, Framing::Chunked);
        let close = ok("HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!((close.framing, close.keep_alive), (Framing::Close, false));
        assert_eq!(ok("HTTP/1.1 204 No Content\r\n\r\n").framing, Framing::Empty);
        assert_eq!(ok("HTTP/1.1 304 Not Modified\r\ncontent-length: 10\r\n\r\n").framing, Framing::Empty);
        let head = parse(
            "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n",
            RequestKind { head: true, ..RequestKind::default() },
        );
        assert_eq!(head.unwrap().unwrap().framing, Framing::Empty);
        // identical duplicates are one value (hyper does the same)
        assert_eq!(ok("HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 3\r\n\r\n").framing, Framing::Length(3));
    }

    #[test]
    fn keep_alive() {
        assert!(ok("HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n").keep_alive);
        assert!(!ok("HTTP/1.1 200 OK\r\nConnection: close\r\ncontent-length: 1\r\n\r\n").keep_alive);
        assert!(!ok("HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n").keep_alive);
        assert!(ok("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\ncontent-length: 1\r\n\r\n").keep_alive);
    }

    #[test]
    fn hop_by_hop_lines_dropped() {
        let h = ok("HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n");
        assert_eq!(h.headers.len(), 1, "{:?}", h.headers);
        assert_eq!(h.headers["x-a"], "1");
        // a Connection naming another header stays, for the proxy to act on
        let h = ok("HTTP/1.1 200 OK\r\nConnection: x-secret\r\nX-Secret: 1\r\ncontent-length: 0\r\n\r\n");
        assert_eq!(h.headers["connection"], "x-secret");
    }

    #[test]
    fn a_map_says_whether_it_may_hold_a_hop_by_hop_header() {
        // The usual head: its hop-by-hop lines are dropped here, nothing is left to strip.
        let usual = "HTTP/1.1 200 OK\r\nServer: s\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\ncontent-length: 0\r\n\r\n";
        assert!(!ok(usual).hop_by_hop);
        assert!(!ok("HTTP/1.1 200 OK\r\nConnection: close, Keep-Alive\r\ncontent-length: 0\r\n\r\n").hop_by_hop);
        for kept in
            ["Connection: x-a", "TE: trailers", "Upgrade: h2c", "Proxy-Authenticate: Basic", "proxy-authorization: x"]
        {
            let h = ok(&format!("HTTP/1.1 200 OK\r\n{kept}\r\ncontent-length: 0\r\n\r\n"));
            assert!(h.hop_by_hop, "{kept}");
        }
        // Kept as bytes, the map holds only `TE`: it says so too.
        assert!(!parse(usual, RAW).unwrap().unwrap().hop_by_hop);
        assert!(parse("HTTP/1.1 200 OK\r\nTE: x\r\ncontent-length: 0\r\n\r\n", RAW).unwrap().unwrap().hop_by_hop);
    }

    #[test]
    fn usual_names_are_the_standard_header_names_in_any_case() {
        let names = [
            "date",
            "ETag",
            "vary",
            "Server",
            "location",
            "Set-Cookie",
            "content-type",
            "Cache-Control",
            "LAST-MODIFIED",
            "Content-Length",
            "content-encoding",
        ];
        for name in names {
            let known = standard_name(name.as_bytes());
            assert_eq!(known, Some(HeaderName::from_bytes(name.as_bytes()).unwrap()), "{name}");
        }
        for other in ["dates", "x-date", "server-timing", "content-typ", "", "e-tag"] {
            assert_eq!(standard_name(other.as_bytes()), None, "{other}");
        }
        let h = ok("HTTP/1.1 200 OK\r\nCONTENT-TYPE: text/plain\r\nX-Other: 1\r\nDate: d\r\ncontent-length: 0\r\n\r\n");
        let names: Vec<_> = h.headers.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["content-type", "x-other", "date", "content-length"]);
    }

    const RAW: RequestKind = RequestKind { head: false, upgrade: false, raw: true };

    #[test]
    fn raw_lines_keep_the_forwarded_headers_as_bytes() {
        let h = parse(
            "HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Tue, 01 Dec 2026 19:00:00 GMT\r\nContent-Length: 2\r\n\
             Connection: keep-alive\r\nX-Request-Id: up-1\r\nUpgrade: h2c\r\nProxy-Authenticate: Basic\r\nVia: 1.1 a\r\n\r\nok",
            RAW,
        )
        .unwrap()
        .unwrap();
        let raw = h.raw.expect("raw lines");
        assert_eq!(
            written(&raw),
            "Server: nginx\r\nDate: Tue, 01 Dec 2026 19:00:00 GMT\r\nContent-Length: 2\r\nVia: 1.1 a\r\n"
        );
        assert_eq!((raw.content_length, raw.date, raw.count), (Some(2), true, 2), "two runs: Via is apart");
        // The upstream's x-request-id is dropped (the gateway writes the request's):
        // nothing is left for the map.
        assert!(h.headers.is_empty(), "{:?}", h.headers);
        assert_eq!(h.headers.capacity(), 0, "no map allocated");
        assert_eq!(h.framing, Framing::Length(2));
        let mut raw = raw;
        raw.via = Some(HeaderValue::from_static("1.1 gw"));
        raw.request_id = Some(HeaderValue::from_static("id-1"));
        assert!(written(&raw).ends_with("Via: 1.1 a\r\nvia: 1.1 gw\r\nx-request-id: id-1\r\n"), "{}", written(&raw));
    }

    fn written(raw: &RawHeaders) -> String {
        let mut out = Vec::new();
        raw.write(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn raw_runs_end_in_crlf_whatever_the_upstream_ended_its_lines_with() {
        // Bare LF line ends (httparse accepts them) are never passed on.
        let h = parse("HTTP/1.1 200 OK\nA: 1\nB:  2\r\nC: 3\ncontent-length: 0\n\n", RAW).unwrap().unwrap();
        assert_eq!(written(&h.raw.unwrap()), "A: 1\r\nB:  2\r\nC: 3\r\ncontent-length: 0\r\n");
        // More runs than a RawHeaders holds: the map, as without.
        let split: String = (0..8).map(|i| format!("X-{i}: v\r\nKeep-Alive: t\r\n")).collect();
        let h = parse(&format!("HTTP/1.1 200 OK\r\n{split}content-length: 0\r\n\r\n"), RAW).unwrap().unwrap();
        assert!(h.raw.is_none());
        assert_eq!((h.headers.len(), h.headers["x-7"].as_bytes()), (9, &b"v"[..]));
    }

    #[test]
    fn raw_lines_only_when_nothing_is_removed_by_name() {
        // A Connection naming a header: the proxy removes it from the map.
        let named = "HTTP/1.1 200 OK\r\nConnection: x-secret\r\nX-Secret: 1\r\ncontent-length: 0\r\n\r\n";
        let h = parse(named, RAW).unwrap().unwrap();
        assert!(h.raw.is_none());
        assert_eq!(h.headers["x-secret"], "1");
        let switching = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n";
        let h = parse(switching, RequestKind { upgrade: true, ..RAW }).unwrap().unwrap();
        assert!(h.raw.is_none() && h.headers.contains_key("upgrade"));
        // Not asked for: the map, as always.
        assert!(ok("HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n").raw.is_none());
    }

    #[test]
    fn informational_skipped() {
        let mut buf = BytesMut::from(&b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi"[..]);
        let h = response_head(&mut buf, RequestKind::default()).unwrap().unwrap();
        assert_eq!(h.status, 200);
        assert_eq!(&buf[..], b"hi");
        assert!(!h.headers.contains_key("link"));
    }

    #[test]
    fn upgrade_only_when_asked() {
        let raw = "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n";
        assert!(invalid(raw).contains("101"));
        let h = parse(raw, RequestKind { upgrade: true, ..RequestKind::default() }).unwrap().unwrap();
        assert_eq!(h.framing, Framing::Upgrade);
        assert_eq!(h.headers["upgrade"], "websocket");
    }

    #[test]
    fn smuggling_attempts_refused() {
        for raw in [
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 0x10\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: xchunked\r\n\r\n",
            "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\ncontent-length: 0\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length : 5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nX-A: a\rb\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "HTTP/2.0 200 OK\r\n\r\n",
            "NOTHTTP 200 OK\r\n\r\n",
        ] {
            assert!(parse(raw, RequestKind::default()).is_err(), "accepted: {raw:?}");
        }
    }

    #[test]
    fn head_size_bounded() {
        let mut raw = String::from("HTTP/1.1 200 OK\r\n");
        while raw.len() <= MAX_HEAD {
            raw.push_str("X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        assert!(matches!(parse(&raw, RequestKind::default()), Err(H1Error::HeadTooLarge) | Err(H1Error::Invalid(_))));
        let mut many = String::from("HTTP/1.1 200 OK\r\n");
        for i in 0..101 {
            many.push_str(&format!("X-{i}: 1\r\n"));
        }
        many.push_str("\r\n");
        assert!(invalid(&many).contains("100"));
        // incomplete but small: read more
        assert!(parse("HTTP/1.1 200 OK\r\nX-A: 1\r\n", RequestKind::default()).unwrap().is_none());
    }

    #[test]
    fn chunk_sizes() {
        assert_eq!(chunk_size(b"1a\r\nxx").unwrap(), Some((26, 4)));
        assert_eq!(chunk_size(b"0\r\n\r\n").unwrap(), Some((0, 3)));
        assert_eq!(chunk_size(b"5;name=value\r\n").unwrap(), Some((5, 14)));
        assert_eq!(chunk_size(b"5 ;ext\r\n").unwrap(), Some((5, 8)));
        assert_eq!(chunk_size(b"5").unwrap(), None);
        for bad in [
            &b"\r\n"[..],
            b"g\r\n",
            b"5\n",
            b"-5\r\n",
            b"0x5\r\n",
            b"5 5\r\n",
            b"11111111111111111\r\n",
            b"5;a\rb\r\n",
            b" 5\r\n",
        ] {
            assert!(chunk_size(bad).is_err(), "accepted {:?}", String::from_utf8_lossy(bad));
        }
        assert!(chunk_size(&[b'1'; MAX_CHUNK_LINE + 1]).is_err());
    }

    #[test]
    fn trailer_sections() {
        assert_eq!(trailers(b"\r\n").unwrap().unwrap().1, 2);
        let (map, n) = trailers(b"grpc-status: 0\r\ncontent-length: 5\r\n\r\nNEXT").unwrap().unwrap();
        assert_eq!(n, 37);
        assert_eq!(map["grpc-status"], "0");
        assert!(!map.contains_key("content-length"));
        assert!(trailers(b"grpc-status: 0\r\n").unwrap().is_none());
        assert!(trailers(b"bad line\r\n\r\n").is_err());
    }
}
