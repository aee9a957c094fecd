//! Hostile clients on real sockets: every connection stage has a deadline
//! (silent sockets, a silent TLS session, kept-alive HTTP/1.1 and HTTP/2
//! connections, a client that stops reading, a quiet WebSocket relay, the admin
//! listener), each closing counted by stage; heads and HTTP/2 streams are
//! bounded; the admin listener is capped; upgraded relays hold their slot.

use crate::support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::raw::{self, RawBackend, Reply};
use support::{admin_get, client, get, http_config, metric, wait_until, write_instances, Backend, TestGateway};

/// A gateway with one route to service "s" and short deadlines; `extra_timeouts`
/// and `limits` are added to its `[timeouts]` and `[limits]` sections.
async fn gateway(extra_timeouts: &str, limits: &str) -> TestGateway {
    let config = http_config("[[listener.route]]\nservice = \"s\"\n")
        .replace("[timeouts]\n", &format!("[limits]\n{limits}\n[timeouts]\nheader_read = \"1s\"\n{extra_timeouts}\n"));
    TestGateway::start(&config).await
}

async fn metrics(gw: &TestGateway) -> String {
    admin_get(gw.admin, "/metrics").await.1
}

fn timeouts(stage: &str) -> String {
    format!(r#"switchyard_client_timeouts_total{{listener="web",stage="{stage}"}}"#)
}

const BAD_HEAD_TIMEOUT: &str = r#"switchyard_bad_requests_total{listener="web",reason="header_timeout"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_sockets_are_closed_after_header_read_and_cannot_lock_others_out() {
    let b = Backend::start("b").await;
    let gw = gateway("", "max_connections = 20").await;
    write_instances(&gw.instances_path(), &[("s", "1", b.addr, &[])]);
    gw.wait_live("s", 1).await;
    // As many silent sockets as the limit: before issue 9 they were held for ever,
    // because the head timer only started after protocol detection.
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(TcpStream::connect(gw.addr).await.unwrap());
    }
    let start = Instant::now();
    let mut closed = 0;
    for s in &mut silent {
        let (_, was_closed) = raw::read_until_close(s, Duration::from_secs(5)).await;
        closed += usize::from(was_closed);
    }
    let took = start.elapsed();
    eprintln!("MEASURE 20 silent sockets all closed after {took:?}");
    assert_eq!(closed, 20);
    assert!(took >= Duration::from_millis(800), "closed before header_read: {took:?}");
    // The slots are free again: a real client is served.
    assert_eq!(get(&client(), &gw.url("/")).await, (200, "b".to_string()));
    let text = metrics(&gw).await;
    assert!(metric(&text, &timeouts("head")) >= 20.0, "{text}");
    assert!(metric(&text, BAD_HEAD_TIMEOUT) >= 20.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_alive_connection_idles_for_client_idle_and_it_is_no_bad_request() {
    let b = Backend::start("b").await;
    let gw = gateway("client_idle = \"2s\"", "").await;
    write_instances(&gw.instances_path(), &[("s", "1", b.addr, &[])]);
    gw.wait_live("s", 1).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let res = raw::read_response(&mut s).await;
    assert_eq!(raw::status(&res), 200, "{res}");
    // Idle longer than header_read (1 s): still open, since idle is client_idle (2 s).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    assert_eq!(raw::status(&raw::read_response(&mut s).await), 200);
    let before = metrics(&gw).await;
    let start = Instant::now();
    let (_, closed) = raw::read_until_close(&mut s, Duration::from_secs(6)).await;
    let took = start.elapsed();
    eprintln!("MEASURE kept-alive HTTP/1.1 connection closed after {took:?} idle (client_idle = 2s)");
    assert!(closed && took >= Duration::from_millis(1800), "{took:?}");
    let after = metrics(&gw).await;
    assert_eq!(metric(&after, &timeouts("idle")), metric(&before, &timeouts("idle")) + 1.0);
    assert_eq!(metric(&after, BAD_HEAD_TIMEOUT), metric(&before, BAD_HEAD_TIMEOUT), "idle is not a bad request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_second_head_on_a_kept_alive_connection_gets_header_read() {
    let b = Backend::start("b").await;
    let gw = gateway("client_idle = \"30s\"", "").await;
    write_instances(&gw.instances_path(), &[("s", "1", b.addr, &[])]);
    gw.wait_live("s", 1).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    assert_eq!(raw::status(&raw::read_response(&mut s).await), 200);
    // Slow-loris on the kept-alive connection: a partial head, then nothing.
    s.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    let start = Instant::now();
    let (_, closed) = raw::read_until_close(&mut s, Duration::from_secs(10)).await;
    assert!(closed && start.elapsed() < Duration::from_secs(5), "{:?}", start.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_h2c_connection_is_closed_after_client_idle() {
    let b = Backend::start("b").await;
    let gw = gateway("client_idle = \"1s\"", "").await;
    write_instances(&gw.instances_path(), &[("s", "1", b.addr, &[])]);
    gw.wait_live("s", 1).await;
    let stream = TcpStream::connect(gw.addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    let driver = tokio::spawn(conn);
    let req = http::Request::get(format!("http://{}/", gw.addr)).body(Full::<Bytes>::default()).unwrap();
    assert_eq!(send.send_request(req).await.unwrap().status(), 200);
    let start = Instant::now();
    // The connection task ends when the gateway closes the connection.
    let ended = tokio::time::timeout(Duration::from_secs(8), driver).await;
    eprintln!("MEASURE idle h2c connection closed after {:?} (client_idle = 1s)", start.elapsed());
    assert!(ended.is_ok(), "the idle HTTP/2 connection is still open after 8 s");
    assert!(metric(&metrics(&gw).await, &timeouts("idle")) >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_after_send() {
    let b = Backend::start("b").await;
    let gw = gateway("send = \"1s\"\nclient_idle = \"30s\"", "").await;
    write_instances(&gw.instances_path(), &[("s", "1", b.addr, &[])]);
    gw.wait_live("s", 1).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    // 64 MiB that the client never reads: the socket buffers fill and writes block.
    s.write_all(b"GET /bytes/67108864 HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    wait_until("the send timeout closes the connection", Duration::from_secs(15), async || {
        metric(&metrics(&gw).await, &timeouts("send")) >= 1.0
    })
    .await;
    // And the connection is gone: reading drains what was buffered, then ends.
    let mut sink = vec![0u8; 1 << 20];
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut total = 0usize;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut sink)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => total += n,
            Err(_) => panic!("connection still open after the send timeout"),
        }
        assert!(Instant::now() < deadline);
    }
    assert!(total < 64 << 20, "the whole body was sent: {total}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_upgraded_relay_is_closed_after_tunnel_idle_and_holds_its_slot_until_then() {
    let ws = RawBackend::start(Reply::ThenHold(
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n",
    ))
    .await;
    let gw = gateway("tunnel_idle = \"2s\"\nclient_idle = \"30s\"", "max_connections = 1").await;
    write_instances(&gw.instances_path(), &[("s", "1", ws.addr, &[])]);
    gw.wait_live("s", 1).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n").await.unwrap();
    let mut head = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut head)).await.unwrap().unwrap();
    assert!(head[..n].starts_with(b"HTTP/1.1 101"), "{:?}", String::from_utf8_lossy(&head[..n]));
    let start = Instant::now();
    // The relay counts against max_connections = 1: a second client waits.
    let second = tokio::spawn(first_byte_after(gw.addr));
    let (_, closed) = raw::read_until_close(&mut s, Duration::from_secs(10)).await;
    let took = start.elapsed();
    eprintln!("MEASURE quiet upgraded relay closed after {took:?} (tunnel_idle = 2s)");
    assert!(closed && took >= Duration::from_millis(1800), "{took:?}");
    let waited = second.await.unwrap();
    assert!(waited >= Duration::from_millis(1500), "the second client was served during the relay: {waited:?}");
    assert!(metric(&metrics(&gw).await, &timeouts("tunnel")) >= 1.0);
}

/// A GET upgrade on a fresh connection: how long until the first byte of an answer.
async fn first_byte_after(addr: std::net::SocketAddr) -> Duration {
    let start = Instant::now();
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n").await.unwrap();
    let mut byte = [0u8; 1];
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read(&mut byte)).await;
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_size_and_header_count_are_bounded() {
    let b =
        RawBackend::start(Reply::Fixed(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")).await;
    let gw = gateway("", "").await;
    write_instances(&gw.instances_path(), &[("s", "1", b.addr, &[])]);
    gw.wait_live("s", 1).await;
    let big = |name: &str, size: usize| format!("GET / HTTP/1.1\r\nhost: x\r\n{name}: {}\r\n\r\n", "a".repeat(size));
    // One 100 KB header, an 86 KB Cookie: both were accepted before (up to ~390 KB).
    for head in [big("x-big", 100_000), big("cookie", 86_000)] {
        let (reply, _) = raw::exchange(gw.addr, head.as_bytes(), Duration::from_secs(5)).await;
        assert_eq!(raw::status(&reply), 431, "{}", &reply[..reply.len().min(80)]);
    }
    // 60 KB fits the 64 KiB default.
    let (reply, _) = raw::exchange(gw.addr, big("x-fits", 60_000).as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(raw::status(&reply), 200, "{}", &reply[..reply.len().min(80)]);
    // 101 headers: above the count limit of 100.
    let mut many = String::from("GET / HTTP/1.1\r\nhost: x\r\n");
    for i in 0..101 {
        many.push_str(&format!("x-h{i}: 1\r\n"));
    }
    many.push_str("\r\n");
    let (reply, _) = raw::exchange(gw.addr, many.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(raw::status(&reply), 431, "{}", &reply[..reply.len().min(80)]);
    assert_eq!(b.connections.load(Ordering::SeqCst), 1, "only the head that fits reached the backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_h2_client_cannot_make_more_upstream_connections_than_its_stream_limit() {
    let held = RawBackend::start(Reply::Hold).await;
    let gw = gateway("client_idle = \"30s\"", "").await;
    write_instances(&gw.instances_path(), &[("s", "1", held.addr, &[])]);
    gw.wait_live("s", 1).await;
    let stream = TcpStream::connect(gw.addr).await.unwrap();
    let (send, conn) = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    // 400 requests at once on one connection; the backend holds every one.
    let mut tasks = Vec::new();
    for i in 0..400 {
        let mut send = send.clone();
        let url = format!("http://{}/{i}", gw.addr);
        tasks.push(tokio::spawn(async move {
            let req = http::Request::post(url).body(Full::<Bytes>::from("x")).unwrap();
            let _ = send.send_request(req).await;
        }));
    }
    wait_until("the backend sees the first 100 requests", Duration::from_secs(20), async || {
        held.connections.load(Ordering::SeqCst) >= 100
    })
    .await;
    // Let the rest arrive, if they could.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let opened = held.connections.load(Ordering::SeqCst);
    eprintln!("MEASURE 400 streams on one h2 connection opened {opened} upstream connections");
    assert!(opened <= 128, "{opened} upstream connections for one client connection");
    held.stop();
    for t in tasks {
        t.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_has_a_head_timeout_and_a_connection_cap() {
    let config = http_config("[[listener.route]]\nservice = \"s\"\n")
        .replace("[timeouts]\n", "[limits]\nadmin_max_connections = 2\n[timeouts]\nheader_read = \"1s\"\n");
    let gw = TestGateway::start(&config).await;
    let mut a = TcpStream::connect(gw.admin).await.unwrap();
    let mut b = TcpStream::connect(gw.admin).await.unwrap();
    // The cap is full: a third scrape waits until a slot frees (the silent ones are cut at 1 s).
    let start = Instant::now();
    let (status, body) = admin_get(gw.admin, "/healthz").await;
    let waited = start.elapsed();
    eprintln!("MEASURE admin scrape behind 2 silent connections answered after {waited:?}");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    assert!(waited >= Duration::from_millis(700), "served past the cap: {waited:?}");
    for s in [&mut a, &mut b] {
        let (_, closed) = raw::read_until_close(s, Duration::from_secs(5)).await;
        assert!(closed, "a silent admin connection was not closed");
    }
}

/// An https listener "web" with a certificate for `tls.test`, routing to "s".
fn https_config(dir: &std::path::Path, ca: &support::tls::Ca) -> String {
    let pair = ca.issue(dir, "site", &["tls.test"]);
    format!(
        "{}[timeouts]\nheader_read = \"1s\"\n[[listener]]\nname = \"web\"\nprotocol = \"https\"\nlisten = \"127.0.0.1:0\"\n\
         [[listener.route]]\nservice = \"s\"\n[[listener.tls]]\ncert = {:?}\nkey = {:?}\n",
        support::FILE_DISCOVERY,
        pair.cert,
        pair.key
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_session_that_goes_silent_after_the_handshake_is_closed_and_garbage_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = support::tls::Ca::new("hardening CA");
    let gw = TestGateway::start(&https_config(dir.path(), &ca)).await;
    // Handshake completes, then nothing: before issue 9 such sessions were held for ever.
    let mut tls = support::tls::connect(gw.addr, support::tls::client_config(&ca, &[b"http/1.1"]), "tls.test")
        .await
        .expect("handshake");
    let start = Instant::now();
    let mut buf = [0u8; 64];
    let r = tokio::time::timeout(Duration::from_secs(8), tls.read(&mut buf)).await;
    let took = start.elapsed();
    eprintln!("MEASURE silent TLS session closed after {took:?} (header_read = 1s)");
    assert!(matches!(r, Ok(Ok(0)) | Ok(Err(_))), "still open after 8 s: {r:?}");
    assert!(metric(&metrics(&gw).await, &timeouts("head")) >= 1.0);
    // Garbage instead of a ClientHello: refused, counted, and the listener keeps serving.
    let (_, closed) =
        raw::exchange(gw.addr, &[0x16, 0x03, 0x01, 0xff, 0xff, 1, 2, 3, 4, 5, 6, 7, 8], Duration::from_secs(5)).await;
    assert!(closed);
    let (_, closed) = raw::exchange(gw.addr, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n", Duration::from_secs(5)).await;
    assert!(closed);
    wait_until("handshake failures counted", Duration::from_secs(5), async || {
        let text = metrics(&gw).await;
        metric(&text, r#"switchyard_tls_handshake_errors_total{listener="web",reason="malformed"}"#) >= 2.0
    })
    .await;
    assert!(support::tls::connect(gw.addr, support::tls::client_config(&ca, &[b"http/1.1"]), "tls.test").await.is_ok());
}

/// Raw HTTP/2 frames, for floods no well-behaved client library sends.
mod h2raw {
    pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    pub fn settings() -> Vec<u8> {
        frame(4, 0, 0, &[])
    }

    /// GET / with :authority x, HPACK with static-table indexes only.
    pub const GET: &[u8] = &[0x82, 0x86, 0x84, 0x41, 0x01, b'x'];

    pub fn headers(stream: u32, block: &[u8], end_headers: bool) -> Vec<u8> {
        frame(1, 0x1 | if end_headers { 0x4 } else { 0 }, stream, block)
    }

    pub fn rst(stream: u32) -> Vec<u8> {
        frame(3, 0, stream, &8u32.to_be_bytes())
    }
}

/// Writes `frames` in batches until the gateway closes the connection or they run
/// out; returns whether it closed it, and how many bytes went out.
async fn flood(gw: &TestGateway, frames: impl Iterator<Item = Vec<u8>>) -> (bool, usize) {
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(h2raw::PREFACE).await.unwrap();
    s.write_all(&h2raw::settings()).await.unwrap();
    let (mut reader, mut writer) = s.into_split();
    // Drain what the gateway sends, so that only its own decision ends the connection.
    let drain = tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(10), reader.read(&mut buf)).await {
            if n == 0 {
                return true;
            }
        }
        false
    });
    let mut sent = 0usize;
    let mut batch = Vec::new();
    for f in frames {
        batch.extend_from_slice(&f);
        if batch.len() >= 16 * 1024 {
            if writer.write_all(&batch).await.is_err() {
                return (true, sent);
            }
            sent += batch.len();
            batch.clear();
        }
    }
    let _ = writer.write_all(&batch).await;
    sent += batch.len();
    (drain.await.unwrap_or(false), sent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_floods_are_cut_and_the_gateway_keeps_serving() {
    let b = Backend::start("b").await;
    let gw = gateway("client_idle = \"30s\"", "").await;
    write_instances(&gw.instances_path(), &[("s", "1", b.addr, &[])]);
    gw.wait_live("s", 1).await;
    // Rapid reset (CVE-2023-44487): open and cancel 20,000 streams.
    let (closed, sent) =
        flood(&gw, (0..20_000u32).flat_map(|i| [h2raw::headers(2 * i + 1, h2raw::GET, true), h2raw::rst(2 * i + 1)]))
            .await;
    eprintln!("MEASURE rapid reset: closed = {closed} after {sent} bytes; backend saw {} requests", b.hits());
    assert!(closed, "20,000 opened-and-reset streams did not end the connection");
    assert!(b.hits() < 20_000, "every reset stream reached the backend");
    // CONTINUATION flood: one header block that never ends.
    let junk = vec![0x40u8; 16 * 1024];
    let (closed, sent) = flood(
        &gw,
        std::iter::once(h2raw::headers(1, h2raw::GET, false)).chain((0..4_000).map(|_| h2raw::frame(9, 0, 1, &junk))),
    )
    .await;
    eprintln!("MEASURE CONTINUATION flood: closed = {closed} after {sent} bytes");
    assert!(closed && sent < 8 << 20, "an endless header block was read for {sent} bytes");
    // SETTINGS flood whose ACKs are never read... are drained here; the point is no panic
    // and no stall: the gateway answers a normal client right after.
    let _ = flood(&gw, (0..50_000).map(|_| h2raw::settings())).await;
    // A header block with a 100 KB literal value (HPACK): over the header-list limit.
    let mut big = h2raw::GET.to_vec();
    big.extend_from_slice(&[0x40, 0x01, b'a']);
    big.extend_from_slice(&[0x7f, 0x80, 0x8d, 0x06]); // length 100,000 as a 7-bit-prefix integer
    big.extend(std::iter::repeat_n(b'v', 100_000));
    let frames: Vec<Vec<u8>> = big
        .chunks(16 * 1024)
        .enumerate()
        .map(|(i, c)| {
            let last = (i + 1) * 16 * 1024 >= big.len();
            if i == 0 {
                h2raw::frame(1, 0x1 | if last { 4 } else { 0 }, 1, c)
            } else {
                h2raw::frame(9, if last { 4 } else { 0 }, 1, c)
            }
        })
        .collect();
    let before = b.hits();
    let _ = flood(&gw, frames.into_iter()).await;
    assert_eq!(b.hits(), before, "a 100 KB header list reached the backend");
    let (status, _) = get(&support::h2c_client(), &gw.url("/")).await;
    assert_eq!(status, 200, "the gateway stopped serving after the floods");
}
