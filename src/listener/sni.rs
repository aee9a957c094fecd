//! Reads the server name (SNI) from a TLS ClientHello without terminating TLS, for
//! `tls_passthrough` listeners.
//!
//! [`parse`] is pure: it takes the bytes a client has sent so far and says whether
//! they hold a complete ClientHello, and which name it asks for. The hello may be
//! split over several TLS records and over several reads, so an incomplete prefix is
//! an answer of its own ([`Hello::Incomplete`]), not an error. [`read_client_hello`]
//! is the I/O around it: it buffers what the client sends (at most [`MAX_HELLO_BYTES`],
//! within a deadline) so that the caller can replay every byte to the upstream, which
//! then sees the handshake exactly as the client sent it.
//!
//! Anything that is not a well-formed ClientHello is an error, never a panic: every
//! length is checked against what is actually there before it is used.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// The most bytes buffered while waiting for the ClientHello. Real hellos are a few
/// hundred bytes (about 1.8 KiB with a post-quantum key share); 16 KiB is one full
/// TLS record, and bounds what a client that never finishes can make us hold.
pub const MAX_HELLO_BYTES: usize = 16 * 1024;

const RECORD_HEADER: usize = 5;
const HANDSHAKE_HEADER: usize = 4;
const CONTENT_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const EXTENSION_SERVER_NAME: u16 = 0;
const NAME_TYPE_HOST: u8 = 0;
/// RFC 1035: a name is at most 253 characters (255 octets on the wire).
const MAX_NAME: usize = 253;

#[derive(Debug, thiserror::Error)]
pub enum SniError {
    #[error("not a TLS handshake record")]
    NotTls,
    #[error("the first handshake message is not a ClientHello")]
    NotClientHello,
    #[error("malformed ClientHello: {0}")]
    Malformed(&'static str),
    #[error("ClientHello larger than {MAX_HELLO_BYTES} bytes")]
    TooLarge,
    #[error("no complete ClientHello within {0:?}")]
    Timeout(Duration),
    #[error("connection closed before the ClientHello was complete")]
    Closed,
    #[error("reading the ClientHello: {0}")]
    Io(#[from] std::io::Error),
}

impl SniError {
    /// A short label for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            SniError::NotTls => "not_tls",
            SniError::NotClientHello => "not_client_hello",
            SniError::Malformed(_) => "malformed",
            SniError::TooLarge => "too_large",
            SniError::Timeout(_) => "timeout",
            SniError::Closed => "closed",
            SniError::Io(_) => "io",
        }
    }
}

/// What the bytes received so far amount to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hello {
    /// A valid prefix of a ClientHello; more bytes are needed.
    Incomplete,
    /// A complete ClientHello; `sni` is its host name in lowercase, if it sent one.
    Complete { sni: Option<String> },
}

/// Reads the client's first bytes until they hold a complete ClientHello, and
/// returns them (to be replayed upstream) with the SNI the hello asks for.
pub async fn read_client_hello<S>(stream: &mut S, deadline: Duration) -> Result<(Vec<u8>, Option<String>), SniError>
where
    S: AsyncRead + Unpin,
{
    // Most hellos fit; the vector grows up to MAX_HELLO_BYTES for the rest.
    let mut buf = Vec::with_capacity(2048);
    let read = async {
        // Bounded: every pass reads at least one byte or returns, and the buffer is capped.
        loop {
            if let Hello::Complete { sni } = parse(&buf)? {
                return Ok(sni);
            }
            let room = MAX_HELLO_BYTES - buf.len();
            if room == 0 {
                return Err(SniError::TooLarge);
            }
            let n = (&mut *stream).take(room as u64).read_buf(&mut buf).await?;
            if n == 0 {
                return Err(SniError::Closed);
            }
        }
    };
    match tokio::time::timeout(deadline, read).await {
        Ok(Ok(sni)) => Ok((buf, sni)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(SniError::Timeout(deadline)),
    }
}

/// Parses the start of a TLS connection (see the module docs).
pub fn parse(buf: &[u8]) -> Result<Hello, SniError> {
    // The ClientHello may span records; collect their fragments until the
    // handshake header's length is satisfied. The common case, one record holding
    // the whole hello, is parsed in place without copying.
    let mut rest = buf;
    let mut joined: Vec<u8> = Vec::new();
    let mut first: &[u8] = &[];
    let mut records = 0usize;
    // Bounded: each pass consumes at least one record header and the loop stops
    // once the buffer (at most MAX_HELLO_BYTES) is used up.
    loop {
        if rest.len() < RECORD_HEADER {
            check_record_prefix(rest)?;
            return Ok(Hello::Incomplete);
        }
        check_record_prefix(rest)?;
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        if len == 0 {
            return Err(SniError::Malformed("empty handshake record"));
        }
        if len > 1 << 14 {
            return Err(SniError::Malformed("record longer than 2^14 bytes"));
        }
        let available = (rest.len() - RECORD_HEADER).min(len);
        let fragment = &rest[RECORD_HEADER..RECORD_HEADER + available];
        records += 1;
        if records == 1 {
            first = fragment;
        } else {
            if records == 2 {
                joined.extend_from_slice(first);
            }
            joined.extend_from_slice(fragment);
        }
        let message = if records == 1 { first } else { &joined[..] };
        if message.len() >= HANDSHAKE_HEADER {
            if message[0] != HANDSHAKE_CLIENT_HELLO {
                return Err(SniError::NotClientHello);
            }
            let body_len = usize::from(message[1]) << 16 | usize::from(message[2]) << 8 | usize::from(message[3]);
            if body_len + HANDSHAKE_HEADER + RECORD_HEADER > MAX_HELLO_BYTES {
                return Err(SniError::TooLarge);
            }
            if message.len() >= HANDSHAKE_HEADER + body_len {
                let body = &message[HANDSHAKE_HEADER..HANDSHAKE_HEADER + body_len];
                return client_hello_sni(body).map(|sni| Hello::Complete { sni });
            }
        } else if !message.is_empty() && message[0] != HANDSHAKE_CLIENT_HELLO {
            return Err(SniError::NotClientHello);
        }
        if available < len {
            return Ok(Hello::Incomplete);
        }
        rest = &rest[RECORD_HEADER + len..];
    }
}

/// Checks what is there of a record header: content type handshake, TLS major version 3.
fn check_record_prefix(header: &[u8]) -> Result<(), SniError> {
    match header {
        [] => Ok(()),
        [t, ..] if *t != CONTENT_HANDSHAKE => Err(SniError::NotTls),
        [_, major, ..] if *major != 3 => Err(SniError::NotTls),
        // SSL 3.0 (minor 0) records still appear in TLS 1.0+ hellos' record layer.
        [_, _, minor, ..] if *minor > 4 => Err(SniError::NotTls),
        _ => Ok(()),
    }
}

/// The SNI host name of a ClientHello body (RFC 8446 §4.1.2, RFC 6066 §3).
fn client_hello_sni(body: &[u8]) -> Result<Option<String>, SniError> {
    let mut r = Reader(body);
    r.take(2, "legacy_version")?;
    r.take(32, "random")?;
    let session_id = r.u8("session_id length")?;
    if session_id > 32 {
        return Err(SniError::Malformed("session_id longer than 32 bytes"));
    }
    r.take(usize::from(session_id), "session_id")?;
    let suites = r.u16("cipher_suites length")?;
    if suites < 2 || suites % 2 != 0 {
        return Err(SniError::Malformed("cipher_suites length"));
    }
    r.take(usize::from(suites), "cipher_suites")?;
    let compression = r.u8("compression_methods length")?;
    if compression == 0 {
        return Err(SniError::Malformed("no compression method"));
    }
    r.take(usize::from(compression), "compression_methods")?;
    if r.0.is_empty() {
        // A hello without extensions (old clients) has no SNI.
        return Ok(None);
    }
    let extensions_len = r.u16("extensions length")?;
    let mut extensions = Reader(r.take(usize::from(extensions_len), "extensions")?);
    if !r.0.is_empty() {
        return Err(SniError::Malformed("bytes after the extensions"));
    }
    let mut sni = None;
    let mut seen_sni = false;
    // Bounded: each pass consumes at least four bytes of a finite slice.
    while !extensions.0.is_empty() {
        let kind = extensions.u16("extension type")?;
        let len = extensions.u16("extension length")?;
        let data = extensions.take(usize::from(len), "extension data")?;
        if kind == EXTENSION_SERVER_NAME {
            if seen_sni {
                return Err(SniError::Malformed("two server_name extensions"));
            }
            seen_sni = true;
            sni = server_name(data)?;
        }
    }
    Ok(sni)
}

/// The host name in a server_name extension's data.
fn server_name(data: &[u8]) -> Result<Option<String>, SniError> {
    let mut r = Reader(data);
    let list_len = r.u16("server_name_list length")?;
    let mut list = Reader(r.take(usize::from(list_len), "server_name_list")?);
    if !r.0.is_empty() {
        return Err(SniError::Malformed("bytes after server_name_list"));
    }
    // Bounded as above: each entry consumes at least three bytes.
    while !list.0.is_empty() {
        let name_type = list.u8("name_type")?;
        let len = list.u16("host_name length")?;
        let name = list.take(usize::from(len), "host_name")?;
        if name_type == NAME_TYPE_HOST {
            return host_name(name).map(Some);
        }
    }
    Ok(None)
}

/// Validates a host name and returns it in lowercase, without a trailing dot.
fn host_name(name: &[u8]) -> Result<String, SniError> {
    let name = name.strip_suffix(b".").unwrap_or(name);
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(SniError::Malformed("host_name length"));
    }
    // Letters, digits, '-', '.', and '_' (seen in the wild); anything else could
    // only confuse route matching or the logs.
    if !name.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')) {
        return Err(SniError::Malformed("host_name characters"));
    }
    let mut s = String::with_capacity(name.len());
    s.extend(name.iter().map(|b| char::from(b.to_ascii_lowercase())));
    Ok(s)
}

/// A cursor over a byte slice whose reads fail instead of panicking past the end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], SniError> {
        if self.0.len() < n {
            return Err(SniError::Malformed(what));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, SniError> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, SniError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::pki_types::ServerName;
    use tokio::io::AsyncWriteExt;

    use super::*;

    /// The bytes a real rustls client sends first, for `name` (an IP address sends no SNI).
    fn client_hello(name: &str) -> Vec<u8> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let server_name = ServerName::try_from(name.to_string()).expect("server name");
        let mut conn = rustls::ClientConnection::new(Arc::new(config), server_name).expect("client");
        let mut out = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut out).expect("write_tls");
        }
        out
    }

    /// Re-frames one-record hello bytes into records of at most `chunk` bytes each.
    fn split_records(hello: &[u8], chunk: usize) -> Vec<u8> {
        let header = &hello[..RECORD_HEADER];
        let mut out = Vec::new();
        for fragment in hello[RECORD_HEADER..].chunks(chunk) {
            out.extend_from_slice(&header[..3]);
            out.extend_from_slice(&(fragment.len() as u16).to_be_bytes());
            out.extend_from_slice(fragment);
        }
        out
    }

    #[test]
    fn reads_sni_from_a_rustls_hello() {
        let hello = client_hello("Api.Example.COM");
        assert_eq!(parse(&hello).unwrap(), Hello::Complete { sni: Some("api.example.com".into()) });
    }

    #[test]
    fn an_ip_address_hello_has_no_sni() {
        let hello = client_hello("127.0.0.1");
        assert_eq!(parse(&hello).unwrap(), Hello::Complete { sni: None });
    }

    #[test]
    fn every_proper_prefix_is_incomplete() {
        let hello = client_hello("a.example.com");
        for n in 0..hello.len() {
            assert_eq!(parse(&hello[..n]).unwrap(), Hello::Incomplete, "prefix of {n} bytes");
        }
    }

    #[test]
    fn a_hello_split_over_records_is_reassembled() {
        let hello = client_hello("b.example.com");
        for chunk in [1, 7, 100, 512] {
            let split = split_records(&hello, chunk);
            assert_eq!(parse(&split).unwrap(), Hello::Complete { sni: Some("b.example.com".into()) }, "chunk {chunk}");
            assert_eq!(parse(&split[..split.len() - 1]).unwrap(), Hello::Incomplete, "chunk {chunk}");
        }
    }

    #[test]
    fn bytes_after_the_hello_do_not_matter() {
        let mut hello = client_hello("a.example.com");
        hello.extend_from_slice(b"\x17\x03\x03\x00\x05hello");
        assert_eq!(parse(&hello).unwrap(), Hello::Complete { sni: Some("a.example.com".into()) });
    }

    #[test]
    fn garbage_is_refused() {
        assert!(matches!(parse(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"), Err(SniError::NotTls)));
        assert!(matches!(parse(b"\x16\x07"), Err(SniError::NotTls)));
        assert!(matches!(parse(b"\x16\x03\x09"), Err(SniError::NotTls)));
        assert!(matches!(parse(b"\x16\x03\x01\x00\x00"), Err(SniError::Malformed(_))));
        assert!(matches!(parse(b"\x16\x03\x01\xff\xff"), Err(SniError::Malformed(_))));
        // A ServerHello (type 2) where a ClientHello belongs.
        assert!(matches!(parse(b"\x16\x03\x01\x00\x04\x02\x00\x00\x00"), Err(SniError::NotClientHello)));
        // A declared hello length beyond the buffer limit is refused before waiting for it.
        assert!(matches!(parse(b"\x16\x03\x01\x40\x00\x01\x00\x40\x00"), Err(SniError::TooLarge)));
    }

    #[test]
    fn corrupted_hellos_never_panic() {
        let hello = client_hello("a.example.com");
        // Flip every byte, and truncate the body under an intact header: each is an
        // answer or an error, never a panic or an out-of-bounds read.
        for i in 0..hello.len() {
            for x in [0x01u8, 0x80, 0xff] {
                let mut bad = hello.clone();
                bad[i] ^= x;
                let _ = parse(&bad);
            }
        }
        let mut fastrand = fastrand::Rng::with_seed(7);
        for _ in 0..20_000 {
            let len = fastrand.usize(0..300);
            let mut junk: Vec<u8> = (0..len).map(|_| fastrand.u8(..)).collect();
            if fastrand.bool() && junk.len() >= 3 {
                junk[..3].copy_from_slice(&[22, 3, 1]);
            }
            let _ = parse(&junk);
        }
    }

    #[test]
    fn a_lying_inner_length_is_malformed() {
        let mut hello = client_hello("a.example.com");
        // Shrink the handshake length so the body ends in the middle of the extensions.
        let body_len = (usize::from(hello[6]) << 16 | usize::from(hello[7]) << 8 | usize::from(hello[8])) - 3;
        hello[6..9].copy_from_slice(&(body_len as u32).to_be_bytes()[1..]);
        assert!(matches!(parse(&hello), Err(SniError::Malformed(_))));
    }

    #[test]
    fn host_names_are_checked() {
        assert_eq!(host_name(b"A.b-c_d.").unwrap(), "a.b-c_d");
        assert!(host_name(b"").is_err());
        assert!(host_name(b".").is_err());
        assert!(host_name(b"a b").is_err());
        assert!(host_name(b"a\x00b").is_err());
        assert!(host_name(&[b'a'; 254]).is_err());
    }

    #[tokio::test]
    async fn reads_a_hello_that_arrives_in_pieces_and_keeps_every_byte() {
        let mut hello = split_records(&client_hello("a.example.com"), 64);
        hello.extend_from_slice(b"early");
        let (mut client, mut server) = tokio::io::duplex(64);
        let sent = hello.clone();
        let writer = tokio::spawn(async move {
            for piece in sent.chunks(3) {
                client.write_all(piece).await.unwrap();
                tokio::task::yield_now().await;
            }
            client
        });
        let (bytes, sni) = read_client_hello(&mut server, Duration::from_secs(5)).await.unwrap();
        assert_eq!(sni.as_deref(), Some("a.example.com"));
        let _client = writer.await.unwrap();
        // Whatever was read is returned for replay: a prefix of what was sent, holding the hello.
        assert!(hello.starts_with(&bytes));
        assert!(bytes.len() >= hello.len() - 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_stalls_times_out() {
        let hello = client_hello("a.example.com");
        let (mut client, mut server) = tokio::io::duplex(4096);
        client.write_all(&hello[..20]).await.unwrap();
        let err = read_client_hello(&mut server, Duration::from_secs(10)).await.unwrap_err();
        assert!(matches!(err, SniError::Timeout(_)), "{err}");
        drop(client);
    }

    #[tokio::test]
    async fn a_client_that_closes_early_or_sends_too_much_is_refused() {
        let hello = client_hello("a.example.com");
        let (mut client, mut server) = tokio::io::duplex(4096);
        client.write_all(&hello[..40]).await.unwrap();
        drop(client);
        let err = read_client_hello(&mut server, Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(err, SniError::Closed), "{err}");

        // Endless one-byte records: valid so far, but never done; refused at the cap.
        let (mut client, mut server) = tokio::io::duplex(1 << 20);
        let mut endless = hello[..RECORD_HEADER + 4].to_vec();
        endless[3..5].copy_from_slice(&4u16.to_be_bytes());
        endless[RECORD_HEADER + 1..RECORD_HEADER + 4].copy_from_slice(&[0x00, 0x3f, 0x00]);
        for _ in 0..MAX_HELLO_BYTES {
            endless.extend_from_slice(&[22, 3, 1, 0, 1, 0]);
        }
        client.write_all(&endless).await.unwrap();
        let err = read_client_hello(&mut server, Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(err, SniError::TooLarge), "{err}");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 128, ..Default::default() })]

        /// A real hello for any DNS name, re-framed into records of any size, with any
        /// bytes after it: the name comes back, and every proper prefix is incomplete.
        #[test]
        fn any_name_in_any_framing_is_read(
            labels in proptest::collection::vec("[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", 1..4),
            chunk in 1usize..600,
            tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..32),
        ) {
            let name = format!("{}.example", labels.join("."));
            let mut bytes = split_records(&client_hello(&name), chunk);
            let whole = bytes.len();
            for cut in [0, 1, RECORD_HEADER, whole / 2, whole - 1] {
                let r = parse(&bytes[..cut]);
                proptest::prop_assert!(matches!(r, Ok(Hello::Incomplete)), "cut at {}: {:?}", cut, r);
            }
            bytes.extend_from_slice(&tail);
            let r = parse(&bytes);
            proptest::prop_assert!(matches!(&r, Ok(Hello::Complete { sni: Some(n) }) if *n == name), "{:?}", r);
        }

        /// Arbitrary bytes behind a handshake record header: an answer or an error, never a panic.
        #[test]
        fn arbitrary_records_never_panic(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048)) {
            let mut bytes = vec![22, 3, 1];
            bytes.extend_from_slice(&(body.len() as u16).to_be_bytes());
            bytes.extend_from_slice(&body);
            let _ = parse(&bytes);
        }
    }
}
