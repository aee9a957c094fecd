//! The upstream HTTP/1.1 exchange (`upstream::conn::h1`) against a raw-byte
//! backend that records what it receives and answers scripted bytes, and
//! against real nginx and HAProxy: keep-alive reuse, `Connection: close`,
//! content-length and chunked bodies both ways, 1xx, HEAD, 204/304, upgrade,
//! upstreams that close early, and response smuggling attempts. Request bodies:
//! streamed byte-exact, echoed while they are sent (directly and through the
//! gateway), answered early (413), cut short by the client, resent on a stale
//! connection only when buffered; `Expect: 100-continue` through the gateway.

use crate::support;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method};
use http_body::Frame;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use switchyard::upstream::conn::h1::{H1Error, H1Limits, H1Pool, H1Settings, Replay, RequestHead};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use support::{http_config, write_instances, Killed, TestGateway};

const SETTINGS: H1Settings =
    H1Settings { connect_timeout: Duration::from_secs(2), max_idle: 8, idle_timeout: Duration::from_secs(90) };
const LIMIT: Duration = Duration::from_secs(10);

/// One scripted answer: bytes to write after a request has been read, then close or not.
#[derive(Clone)]
struct Reply {
    bytes: Vec<u8>,
    close: bool,
}

fn reply(bytes: &str) -> Reply {
    Reply { bytes: bytes.as_bytes().to_vec(), close: false }
}
fn reply_close(bytes: &str) -> Reply {
    Reply { bytes: bytes.as_bytes().to_vec(), close: true }
}

/// Each request received, as bytes, with the number of the connection it came on.
type Seen = Arc<Mutex<Vec<(usize, Vec<u8>)>>>;

/// A backend speaking raw bytes: reads one request at a time (head, then a
/// content-length or chunked body), records it with its connection number,
/// writes the next scripted reply.
struct RawBackend {
    addr: SocketAddr,
    seen: Seen,
    connections: Arc<Mutex<usize>>,
}

impl RawBackend {
    async fn start(script: Vec<Reply>) -> RawBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let script = Arc::new(Mutex::new(VecDeque::from(script)));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(Mutex::new(0));
        let (s, c) = (seen.clone(), connections.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let id = {
                    let mut c = c.lock().unwrap();
                    *c += 1;
                    *c
                };
                tokio::spawn(serve(stream, id, script.clone(), s.clone()));
            }
        });
        RawBackend { addr, seen, connections }
    }

    fn requests(&self) -> Vec<(usize, String)> {
        self.seen.lock().unwrap().iter().map(|(c, r)| (*c, String::from_utf8_lossy(r).into_owned())).collect()
    }
    fn connections(&self) -> usize {
        *self.connections.lock().unwrap()
    }
}

async fn serve(mut stream: TcpStream, id: usize, script: Arc<Mutex<VecDeque<Reply>>>, seen: Seen) {
    let mut buf = Vec::new();
    loop {
        let Some(len) = read_request(&mut stream, &mut buf).await else { return };
        let request: Vec<u8> = buf.drain(..len).collect();
        seen.lock().unwrap().push((id, request));
        let Some(r) = script.lock().unwrap().pop_front() else { return };
        if stream.write_all(&r.bytes).await.is_err() || r.close {
            return;
        }
    }
}

/// The length of one whole request at the start of `buf`, reading more as needed.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let body_start = end + 4;
            if let Some(cl) = head.lines().find_map(|l| l.strip_prefix("content-length: ")) {
                let total = body_start + cl.trim().parse::<usize>().ok()?;
                if buf.len() >= total {
                    return Some(total);
                }
            } else if head.contains("transfer-encoding: chunked") {
                if let Some(len) = chunked_len(&buf[body_start..]) {
                    return Some(body_start + len);
                }
            } else {
                return Some(body_start);
            }
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The length of a whole chunked body (trailers included) at the start of `buf`, if it is all there.
fn chunked_len(buf: &[u8]) -> Option<usize> {
    let mut at = 0;
    loop {
        let line = find(&buf[at..], b"\r\n")?;
        let size_text = String::from_utf8_lossy(&buf[at..at + line]).into_owned();
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        at += line + 2;
        if size == 0 {
            // Trailer lines up to an empty one.
            loop {
                let line = find(&buf[at..], b"\r\n")?;
                at += line + 2;
                if line == 0 {
                    return Some(at);
                }
            }
        }
        if buf.len() < at + size + 2 {
            return None;
        }
        at += size + 2;
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

async fn get(
    pool: &H1Pool,
    method: Method,
    path: &str,
) -> Result<(u16, HeaderMap, String, Option<HeaderMap>), H1Error> {
    let mut headers = HeaderMap::new();
    headers.insert("host", "backend".parse().unwrap());
    send(pool, method, path, &headers, Empty::<Bytes>::new()).await
}

async fn send<B>(
    pool: &H1Pool,
    method: Method,
    path: &str,
    headers: &HeaderMap,
    body: B,
) -> Result<(u16, HeaderMap, String, Option<HeaderMap>), H1Error>
where
    B: http_body::Body<Data = Bytes> + Replay + Unpin + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let head = RequestHead { method: &method, target: path, headers, extra: &[], skip: &[], raw_response: false };
    let res = tokio::time::timeout(LIMIT, pool.send(head, body, SETTINGS))
        .await
        .expect("send timed out")
        .map_err(|e| e.error)?;
    let (parts, body) = res.into_parts();
    let collected = tokio::time::timeout(LIMIT, body.collect()).await.expect("body timed out")?;
    let trailers = collected.trailers().cloned();
    let text = String::from_utf8_lossy(&collected.to_bytes()).into_owned();
    Ok((parts.status.as_u16(), parts.headers, text, trailers))
}

#[tokio::test]
async fn keep_alive_reuses_one_connection() {
    let be = RawBackend::start(vec![
        reply("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\r\none"),
        reply("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\ntwo"),
        reply("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nthree"),
    ])
    .await;
    let pool = H1Pool::new(&be.addr.to_string());
    let (status, headers, body, _) = get(&pool, Method::GET, "/1").await.unwrap();
    assert_eq!((status, body.as_str()), (200, "one"));
    // this hop's lines are not passed on
    assert!(!headers.contains_key("connection") && !headers.contains_key("keep-alive"), "{headers:?}");
    assert_eq!(pool.idle(), 1);
    assert_eq!(get(&pool, Method::GET, "/2").await.unwrap().2, "two");
    assert_eq!(get(&pool, Method::GET, "/3?x=1").await.unwrap().2, "three");
    assert_eq!(be.connections(), 1, "every request on one connection");
    let reqs = be.requests();
    assert_eq!(reqs.len(), 3);
    assert!(reqs[2].1.starts_with("GET /3?x=1 HTTP/1.1\r\nhost: backend\r\n"), "{:?}", reqs[2].1);
    assert!(!reqs[0].1.contains("content-length"), "a GET without a body says no length: {:?}", reqs[0].1);
}

/// Idle connections are kept per core (`switchyard::shard`): one put back by a
/// request on one thread is taken by the next request on another thread, whose own
/// stack is empty, instead of a new connection being opened.
#[test]
fn a_connection_put_back_on_one_core_is_reused_from_another() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let be = rt.block_on(RawBackend::start(vec![
        reply("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none"),
        reply("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\ntwo"),
    ]));
    let pool = H1Pool::new(&be.addr.to_string());
    let (rt, pool) = (&rt, &pool);
    std::thread::scope(|scope| {
        // `block_on` polls the request on the calling thread: its body's end puts the
        // connection on that thread's stack.
        let first = scope
            .spawn(move || {
                let shard = switchyard::shard::index();
                (shard, rt.block_on(get(pool, Method::GET, "/1")).unwrap().2)
            })
            .join()
            .unwrap();
        assert_eq!(first.1, "one");
        assert_eq!(pool.idle(), 1, "counted whichever stack holds it");
        // A thread on another shard (each new thread takes the next; others may take some in between).
        let first_shard = first.0;
        let other = (0..16)
            .map(|_| {
                scope
                    .spawn(move || {
                        let shard = switchyard::shard::index();
                        let differs = shard != first_shard || switchyard::shard::count() == 1;
                        differs.then(|| rt.block_on(get(pool, Method::GET, "/2")).unwrap().2)
                    })
                    .join()
                    .unwrap()
            })
            .find_map(|answer| answer);
        assert_eq!(other.as_deref(), Some("two"), "no thread on another shard in 16");
    });
    assert_eq!(be.connections(), 1, "the second request took the first's connection");
    assert_eq!(pool.idle(), 1);
}

/// At the cap (`max_connections = 1`) a second request waits; the first's
/// connection, put back when its body is read, wakes it and carries it: one
/// connection for both. (A put back wakes only announced waiters: this is the
/// wake that must not be skipped.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waiting_at_the_cap_is_woken_by_a_connection_put_back() {
    let be = RawBackend::start(vec![
        reply("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none"),
        reply("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\ntwo"),
    ])
    .await;
    let pool = Arc::new(H1Pool::new(&be.addr.to_string()));
    let pending = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let send_capped = |pool: Arc<H1Pool>, pending: Arc<std::sync::atomic::AtomicUsize>, path: &'static str| async move {
        let mut headers = HeaderMap::new();
        headers.insert("host", "backend".parse().unwrap());
        let method = Method::GET;
        let head = RequestHead {
            method: &method,
            target: path,
            headers: &headers,
            extra: &[],
            skip: &[],
            raw_response: false,
        };
        let limits = H1Limits { max_connections: 1, max_pending: 8, pending: &pending };
        let res = pool.send_limited(head, Empty::<Bytes>::new(), SETTINGS, limits).await.map_err(|e| e.error).unwrap();
        res.into_body()
    };
    // The first response's body is not read yet: its connection is busy.
    let first = tokio::time::timeout(LIMIT, send_capped(pool.clone(), pending.clone(), "/1")).await.expect("first");
    let second = tokio::spawn(send_capped(pool.clone(), pending.clone(), "/2"));
    support::wait_until("the second request waiting", LIMIT, async || {
        pending.load(std::sync::atomic::Ordering::Relaxed) == 1
    })
    .await;
    assert!(!second.is_finished(), "it waits for the only connection");
    let one = tokio::time::timeout(LIMIT, first.collect()).await.expect("first body").unwrap().to_bytes();
    assert_eq!(&one[..], b"one");
    let body = tokio::time::timeout(LIMIT, second).await.expect("the waiting request was woken").unwrap();
    let two = tokio::time::timeout(LIMIT, body.collect()).await.expect("second body").unwrap().to_bytes();
    assert_eq!(&two[..], b"two");
    assert_eq!(be.connections(), 1, "the second request took the first's connection");
}

#[tokio::test]
async fn connection_close_is_not_reused() {
    let be = RawBackend::start(vec![
        reply("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\na"),
        reply("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb"),
    ])
    .await;
    let pool = H1Pool::new(&be.addr.to_string());
    assert_eq!(get(&pool, Method::GET, "/").await.unwrap().2, "a");
    assert_eq!(pool.idle(), 0);
    assert_eq!(get(&pool, Method::GET, "/").await.unwrap().2, "b");
    assert_eq!(be.connections(), 2);
    // HTTP/1.0 without keep-alive and a close-delimited body: not reused either
    let be = RawBackend::start(vec![
        reply_close("HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi"),
        reply_close("HTTP/1.1 200 OK\r\n\r\nuntil close"),
    ])
    .await;
    let pool = H1Pool::new(&be.addr.to_string());
    assert_eq!(get(&pool, Method::GET, "/").await.unwrap().2, "hi");
    assert_eq!(get(&pool, Method::GET, "/").await.unwrap().2, "until close");
    assert_eq!((pool.idle(), be.connections()), (0, 2));
}

#[tokio::test]
async fn content_length_bodies_both_ways() {
    let be = RawBackend::start(vec![reply("HTTP/1.1 201 Created\r\nContent-Length: 11\r\n\r\nhello world")]).await;
    let pool = H1Pool::new(&be.addr.to_string());
    let mut headers = HeaderMap::new();
    headers.insert("host", "backend".parse().unwrap());
    // a stale length from the client is replaced by the body's real one
    headers.insert("content-length", "999".parse().unwrap());
    let (status, _, body, _) =
        send(&pool, Method::POST, "/up", &headers, Full::new(Bytes::from_static(b"payload"))).await.unwrap();
    assert_eq!((status, body.as_str()), (201, "hello world"));
    let reqs = be.requests();
    assert!(reqs[0].1.ends_with("content-length: 7\r\n\r\npayload"), "{:?}", reqs[0].1);
    assert!(!reqs[0].1.contains("999"));
    assert_eq!(pool.idle(), 1);
}

#[tokio::test]
async fn chunked_bodies_both_ways_with_trailers() {
    let be = RawBackend::start(vec![
        reply("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n7;ext=1\r\n world!\r\n0\r\nx-checksum: 42\r\n\r\n"),
        reply("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
    ])
    .await;
    let pool = H1Pool::new(&be.addr.to_string());
    let mut headers = HeaderMap::new();
    headers.insert("host", "backend".parse().unwrap());
    let frames: Vec<Result<http_body::Frame<Bytes>, std::convert::Infallible>> = vec![
        Ok(http_body::Frame::data(Bytes::from_static(b"part one,"))),
        Ok(http_body::Frame::data(Bytes::from_static(b"part two"))),
    ];
    let body = StreamBody::new(futures_util::stream::iter(frames));
    let (status, headers_back, text, trailers) = send(&pool, Method::PUT, "/c", &headers, body).await.unwrap();
    assert_eq!((status, text.as_str()), (200, "hello world!"));
    assert!(!headers_back.contains_key("transfer-encoding"));
    assert_eq!(trailers.unwrap()["x-checksum"], "42");
    let reqs = be.requests();
    assert!(
        reqs[0].1.ends_with("transfer-encoding: chunked\r\n\r\n9\r\npart one,\r\n8\r\npart two\r\n0\r\n\r\n"),
        "{:?}",
        reqs[0].1
    );
    // fully read, keep-alive: the same connection carries the next one
    assert_eq!(get(&pool, Method::GET, "/").await.unwrap().2, "abc");
    assert_eq!(be.connections(), 1);
}

#[tokio::test]
async fn informational_responses_are_skipped() {
    let be = RawBackend::start(vec![reply(
        "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone",
    )])
    .await;
    let pool = H1Pool::new(&be.addr.to_string());
    let mut headers = HeaderMap::new();
    headers.insert("expect", "100-continue".parse().unwrap());
    let (status, h, text, _) =
        send(&pool, Method::POST, "/", &headers, Full::new(Bytes::from_static(b"x"))).await.unwrap();
    assert_eq!((status, text.as_str()), (200, "done"));
    assert!(!h.contains_key("link"));
    assert_eq!(pool.idle(), 1);
}

#[tokio::test]
async fn head_204_304_have_no_body_and_keep_the_connection() {
    let be = RawBackend::start(vec![
        reply("HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"),
        reply("HTTP/1.1 204 No Content\r\n\r\n"),
        reply("HTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\nETag: \"x\"\r\n\r\n"),
        reply("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
    ])
    .await;
    let pool = H1Pool::new(&be.addr.to_string());
    let (status, h, text, _) = get(&pool, Method::HEAD, "/").await.unwrap();
    assert_eq!((status, text.as_str()), (200, ""));
    assert_eq!(h["content-length"], "1000", "HEAD keeps the length of what GET would send");
    assert_eq!(get(&pool, Method::GET, "/").await.unwrap().0, 204);
    let (status, h, text, _) = get(&pool, Method::GET, "/").await.unwrap();
    assert_eq!((status, text.as_str()), (304, ""));
    assert_eq!(h["etag"], "\"x\"");
    assert_eq!(get(&pool, Method::GET, "/").await.unwrap().2, "ok");
    assert_eq!(be.connections(), 1, "none of them left a body on the connection");
}

#[tokio::test]
async fn upgrade_hands_over_the_raw_connection() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        let len = read_request(&mut s, &mut buf).await.unwrap();
        let req = String::from_utf8_lossy(&buf[..len]).into_owned();
        // the 101 and the first upgraded bytes in one write: the latter must not be lost
        s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\nhello")
            .await
            .unwrap();
        let mut got = [0u8; 4];
        s.read_exact(&mut got).await.unwrap();
        s.write_all(&got).await.unwrap();
        req
    });
    let pool = H1Pool::new(&addr.to_string());
    let mut headers = HeaderMap::new();
    headers.insert("connection", "upgrade".parse().unwrap());
    headers.insert("upgrade", "echo".parse().unwrap());
    let method = Method::GET;
    let head =
        RequestHead { method: &method, target: "/ws", headers: &headers, extra: &[], skip: &[], raw_response: false };
    let res = pool.send(head, Empty::<Bytes>::new(), SETTINGS).await.map_err(|e| e.error).unwrap();
    assert_eq!(res.status(), 101);
    assert_eq!(res.headers()["upgrade"], "echo");
    let mut up = res.into_body().into_upgraded().expect("the raw connection");
    assert_eq!(&up.read_buf[..], b"hello");
    up.io.write_all(b"ping").await.unwrap();
    let mut back = [0u8; 4];
    up.io.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"ping");
    let req = server.await.unwrap();
    assert!(req.contains("connection: upgrade\r\n") && req.contains("upgrade: echo\r\n"), "{req:?}");
    assert_eq!(pool.idle(), 0);
    // a 101 that nobody asked for is refused
    let be = RawBackend::start(vec![reply("HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n")]).await;
    let pool = H1Pool::new(&be.addr.to_string());
    assert!(matches!(get(&pool, Method::GET, "/").await, Err(H1Error::Invalid(_))));
}

#[tokio::test]
async fn upstream_closing_early() {
    // inside a content-length body
    let be = RawBackend::start(vec![reply_close("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")]).await;
    let pool = H1Pool::new(&be.addr.to_string());
    assert!(matches!(get(&pool, Method::GET, "/").await, Err(H1Error::ClosedInBody)));
    assert_eq!(pool.idle(), 0);
    // inside a chunk
    let be = RawBackend::start(vec![reply_close("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab")]).await;
    let pool = H1Pool::new(&be.addr.to_string());
    assert!(matches!(get(&pool, Method::GET, "/").await, Err(H1Error::ClosedInBody)));
    // inside the head, and before any byte on a new connection
    let be = RawBackend::start(vec![reply_close("HTTP/1.1 200 OK\r\nContent-Le")]).await;
    let pool = H1Pool::new(&be.addr.to_string());
    assert!(matches!(get(&pool, Method::GET, "/").await, Err(H1Error::ClosedBeforeResponse)));
    let be = RawBackend::start(vec![reply_close("")]).await;
    let pool = H1Pool::new(&be.addr.to_string());
    assert!(matches!(get(&pool, Method::GET, "/").await, Err(H1Error::ClosedBeforeResponse)));
    // nothing listening: a connect error that hands the body back for another instance
    let gone = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let pool = H1Pool::new(&gone.to_string());
    let (method, headers) = (Method::POST, HeaderMap::new());
    let head =
        RequestHead { method: &method, target: "/", headers: &headers, extra: &[], skip: &[], raw_response: false };
    let err = pool.send(head, Full::new(Bytes::from_static(b"keep me")), SETTINGS).await.unwrap_err();
    assert!(err.error.is_connect(), "{}", err.error);
    assert!(err.unsent.is_some(), "the unsent body comes back");
}

#[tokio::test]
async fn idle_connection_closed_by_the_upstream_is_not_used() {
    // The backend answers once and then closes the idle keep-alive connection.
    let be = RawBackend::start(vec![
        reply_close("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1"),
        reply("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n2"),
    ])
    .await;
    let pool = H1Pool::new(&be.addr.to_string());
    assert_eq!(get(&pool, Method::GET, "/").await.unwrap().2, "1");
    assert_eq!(pool.idle(), 1, "keep-alive was allowed");
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Either seen closed at checkout, or the write/read fails before any response byte and is sent
    // again on a new connection: the request succeeds either way.
    assert_eq!(get(&pool, Method::GET, "/").await.unwrap().2, "2");
    assert_eq!(be.connections(), 2);
}

#[tokio::test]
async fn response_smuggling_attempts_are_refused() {
    for raw in [
        "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        "HTTP/1.1 200 OK\r\nContent-Length: 3, 4\r\n\r\nabcd",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\nabc\r\n0\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcdef\r\n0\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n",
        "HTTP/1.1 200 OK\r\nX-Folded: a\r\n b\r\nContent-Length: 0\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length : 3\r\n\r\nabc",
    ] {
        let be = RawBackend::start(vec![reply_close(raw)]).await;
        let pool = H1Pool::new(&be.addr.to_string());
        let got = get(&pool, Method::GET, "/").await;
        assert!(got.is_err(), "accepted {raw:?}: {got:?}");
        assert_eq!(pool.idle(), 0, "connection kept after {raw:?}");
    }
    // Bytes after a complete response are never read as the next response:
    // the connection is dropped, and the next request gets its own answer.
    let be = RawBackend::start(vec![
        reply("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled"),
        reply("HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nreal"),
    ])
    .await;
    let pool = H1Pool::new(&be.addr.to_string());
    assert_eq!(get(&pool, Method::GET, "/").await.unwrap().2, "ok");
    assert_eq!(pool.idle(), 0);
    assert_eq!(get(&pool, Method::GET, "/").await.unwrap().2, "real");
    // an oversized head
    let big = format!("HTTP/1.1 200 OK\r\nX-Big: {}\r\nContent-Length: 0\r\n\r\n", "a".repeat(70 * 1024));
    let be = RawBackend::start(vec![Reply { bytes: big.into_bytes(), close: true }]).await;
    let pool = H1Pool::new(&be.addr.to_string());
    assert!(matches!(get(&pool, Method::GET, "/").await, Err(H1Error::HeadTooLarge)));
}

#[tokio::test]
async fn extra_lines_are_written_into_the_head() {
    let be = RawBackend::start(vec![reply("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")]).await;
    let pool = H1Pool::new(&be.addr.to_string());
    let mut headers = HeaderMap::new();
    headers.insert("host", "a.example".parse().unwrap());
    // the client's own value is replaced by the extra line (skipped here)
    headers.insert("x-forwarded-for", "6.6.6.6".parse().unwrap());
    let extra: [(&str, &[u8]); 2] = [("x-forwarded-for", b"10.1.2.3"), ("x-forwarded-proto", b"http")];
    let method = Method::GET;
    let skip = [http::header::HeaderName::from_static("x-forwarded-for")];
    let head = RequestHead {
        method: &method,
        target: "/x",
        headers: &headers,
        extra: &extra,
        skip: &skip,
        raw_response: false,
    };
    pool.send(head, Empty::<Bytes>::new(), SETTINGS).await.map_err(|e| e.error).unwrap();
    assert_eq!(
        be.requests()[0].1,
        "GET /x HTTP/1.1\r\nhost: a.example\r\nx-forwarded-for: 10.1.2.3\r\nx-forwarded-proto: http\r\n\r\n"
    );
}

// ---- request bodies: streamed with the response, cut short, answered early ----------------

/// A request body the test feeds frame by frame (or with an error) through a
/// channel; with a declared length it goes out by `Content-Length`, else chunked.
struct Feed {
    rx: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, std::io::Error>>,
    len: Option<u64>,
}

type FeedTx = tokio::sync::mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>;

fn feed(len: Option<u64>) -> (FeedTx, Feed) {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    (tx, Feed { rx, len })
}

impl http_body::Body for Feed {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.rx.poll_recv(cx)
    }
    fn size_hint(&self) -> http_body::SizeHint {
        self.len.map_or_else(http_body::SizeHint::default, http_body::SizeHint::with_exact)
    }
}

impl Replay for Feed {
    fn replay(&self) -> Option<Feed> {
        None
    }
}

/// Bytes that differ from one offset to the next, so a lost, doubled or moved piece shows.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8 ^ (i / 251) as u8).collect()
}

/// A backend that answers as soon as it has a request head — `200` with the
/// request's own Content-Length — and then writes the body back as it reads it,
/// as an echo server does; then takes the next request on the connection.
/// Counts the connections it accepted.
async fn echo_backend() -> (SocketAddr, Arc<Mutex<usize>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(Mutex::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else { return };
            *count.lock().unwrap() += 1;
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let end = loop {
                        if let Some(end) = find(&buf, b"\r\n\r\n") {
                            break end;
                        }
                        let mut chunk = [0u8; 4096];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    buf.drain(..end + 4);
                    let answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n");
                    if s.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                    let mut left = len;
                    while left > 0 {
                        if buf.is_empty() {
                            let mut chunk = vec![0u8; 64 * 1024];
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let n = left.min(buf.len());
                        if s.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                        buf.drain(..n);
                        left -= n;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

fn host() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("host", "backend".parse().unwrap());
    headers
}

#[tokio::test]
async fn streamed_content_length_body_arrives_byte_exact_and_the_connection_is_reused() {
    let be = RawBackend::start(vec![
        reply("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
        reply("HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext"),
    ])
    .await;
    let pool = H1Pool::new(&be.addr.to_string());
    let data = pattern(300_000);
    let (tx, body) = feed(Some(data.len() as u64));
    let frames = data.clone();
    tokio::spawn(async move {
        // uneven frames, one of them empty
        for piece in frames.chunks(70_001) {
            let _ = tx.send(Ok(Frame::data(Bytes::new()))).await;
            let _ = tx.send(Ok(Frame::data(Bytes::copy_from_slice(piece)))).await;
        }
    });
    let (status, _, text, _) = send(&pool, Method::POST, "/up", &host(), body).await.unwrap();
    assert_eq!((status, text.as_str()), (200, "ok"));
    let seen = be.seen.lock().unwrap()[0].1.clone();
    let mut expected = b"POST /up HTTP/1.1\r\nhost: backend\r\ncontent-length: 300000\r\n\r\n".to_vec();
    expected.extend_from_slice(&data);
    assert!(
        seen == expected,
        "the request differs from what was sent ({} bytes, {} expected)",
        seen.len(),
        expected.len()
    );
    assert_eq!(pool.idle(), 1, "both directions complete, keep-alive: pooled");
    assert_eq!(get(&pool, Method::GET, "/").await.unwrap().2, "next");
    assert_eq!(be.connections(), 1, "the POST's connection carried the next request");
}

#[tokio::test]
async fn chunked_request_body_with_trailers_goes_out_chunked() {
    let be = RawBackend::start(vec![
        reply("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
        reply("HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext"),
    ])
    .await;
    let pool = H1Pool::new(&be.addr.to_string());
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", "abc".parse().unwrap());
    let (tx, body) = feed(None);
    tokio::spawn(async move {
        let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"first,")))).await;
        let _ = tx.send(Ok(Frame::data(Bytes::from(vec![b'z'; 20])))).await;
        let _ = tx.send(Ok(Frame::trailers(trailers))).await;
    });
    let mut headers = host();
    // the client's framing is replaced by this hop's
    headers.insert("content-length", "5".parse().unwrap());
    let (status, ..) = send(&pool, Method::POST, "/c", &headers, body).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        be.requests()[0].1,
        format!(
            "POST /c HTTP/1.1\r\nhost: backend\r\ntransfer-encoding: chunked\r\n\r\n6\r\nfirst,\r\n14\r\n{}\r\n0\r\nx-checksum: abc\r\n\r\n",
            "z".repeat(20)
        )
    );
    assert_eq!(get(&pool, Method::GET, "/").await.unwrap().2, "next");
    assert_eq!(be.connections(), 1);
}

#[tokio::test]
async fn a_large_upload_is_echoed_while_it_is_sent() {
    // The backend answers at the request head and streams the body back as it
    // reads it: were the upload to stop at the response head, both sides would
    // wait for each other once the socket buffers fill.
    const SIZE: usize = 16 * 1024 * 1024;
    let (addr, accepted) = echo_backend().await;
    let pool = H1Pool::new(&addr.to_string());
    let data = Bytes::from(pattern(SIZE));
    let (tx, body) = feed(Some(SIZE as u64));
    let frames = data.clone();
    tokio::spawn(async move {
        let mut at = 0;
        while at < frames.len() {
            let end = (at + 256 * 1024).min(frames.len());
            if tx.send(Ok(Frame::data(frames.slice(at..end)))).await.is_err() {
                return;
            }
            at = end;
        }
    });
    let method = Method::POST;
    let headers = host();
    let head =
        RequestHead { method: &method, target: "/echo", headers: &headers, extra: &[], skip: &[], raw_response: false };
    let echoed = tokio::time::timeout(Duration::from_secs(60), async {
        let res = pool.send(head, body, SETTINGS).await.map_err(|e| e.error).unwrap();
        assert_eq!(res.status(), 200);
        res.into_body().collect().await.unwrap().to_bytes()
    })
    .await
    .expect("the echo finished in time (no deadlock)");
    assert_eq!(echoed.len(), SIZE);
    assert!(echoed == data, "the echo differs from the upload");
    assert_eq!(pool.idle(), 1, "both directions complete: pooled");
    let (status, _, text, _) = get(&pool, Method::GET, "/").await.unwrap();
    assert_eq!((status, text.as_str()), (200, ""));
    assert_eq!(*accepted.lock().unwrap(), 1, "the echo's connection carried the next request");
}

/// Accepts one connection, reads the request head, writes `answer`, and then —
/// without reading the body — holds the connection for `hold`, or keeps it
/// open until the test ends when `hold` is `None`.
async fn early_answer(answer: &'static str, hold: Option<Duration>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        while find(&buf, b"\r\n\r\n").is_none() {
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        s.write_all(answer.as_bytes()).await.unwrap();
        match hold {
            // closed with the body unread: the kernel resets the connection
            Some(hold) => tokio::time::sleep(hold).await,
            None => tokio::time::sleep(Duration::from_secs(3600)).await,
        }
    });
    addr
}

/// A body of `len` bytes that the test never runs out of: frames are made on demand.
fn endless(len: u64) -> StreamBody<impl futures_util::Stream<Item = Result<Frame<Bytes>, std::convert::Infallible>>> {
    let chunk = Bytes::from(vec![b'u'; 64 * 1024]);
    let frames = (len / chunk.len() as u64) as usize;
    StreamBody::new(futures_util::stream::iter((0..frames).map(move |_| Ok(Frame::data(chunk.clone())))))
}

#[tokio::test]
async fn an_early_413_reaches_the_client_and_the_upload_stops_quietly() {
    // The backend answers 413 with `Connection: close` and closes (a reset: the
    // body was not read) while an 8 MiB upload is far from done.
    let addr = early_answer(
        "HTTP/1.1 413 Payload Too Large\r\nContent-Length: 9\r\nConnection: close\r\n\r\ntoo large",
        Some(Duration::from_millis(200)),
    )
    .await;
    let pool = H1Pool::new(&addr.to_string());
    let (status, _, text, _) = send(&pool, Method::POST, "/", &host(), endless(8 << 20)).await.unwrap();
    assert_eq!((status, text.as_str()), (413, "too large"));
    assert_eq!(pool.idle(), 0);
    // The same with keep-alive and a backend that just never reads the body: the
    // response ends when it is complete, and the connection (its request unfinished) is closed.
    let addr = early_answer("HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\n\r\nbig!", None).await;
    let pool = H1Pool::new(&addr.to_string());
    let (status, _, text, _) = send(&pool, Method::POST, "/", &host(), endless(8 << 20)).await.unwrap();
    assert_eq!((status, text.as_str()), (413, "big!"));
    assert_eq!(pool.idle(), 0, "a connection with half a request on it is not reused");
}

#[tokio::test]
async fn a_client_body_cut_short_is_the_clients_fault_and_closes_the_connection() {
    // Before the response head: the send fails as the client's fault.
    let be = RawBackend::start(vec![reply("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")]).await;
    let pool = H1Pool::new(&be.addr.to_string());
    let (tx, body) = feed(Some(1000));
    tokio::spawn(async move {
        let _ = tx.send(Ok(Frame::data(Bytes::from(vec![b'a'; 100])))).await;
        let _ = tx.send(Err(std::io::Error::other("client went away"))).await;
    });
    let err = send(&pool, Method::POST, "/", &host(), body).await.unwrap_err();
    assert!(matches!(err, H1Error::RequestBody(_)), "{err}");
    assert_eq!(pool.idle(), 0);
    assert_eq!(get(&pool, Method::GET, "/").await.unwrap().2, "ok");
    assert_eq!(be.connections(), 2, "the next request had a new connection");
    assert_eq!(be.requests().len(), 1, "the half request never reached the backend whole");

    // After the response head (an echo answers at once): the response body ends with the error.
    let (addr, accepted) = echo_backend().await;
    let pool = H1Pool::new(&addr.to_string());
    let (tx, body) = feed(Some(1000));
    let method = Method::POST;
    let headers = host();
    let head =
        RequestHead { method: &method, target: "/", headers: &headers, extra: &[], skip: &[], raw_response: false };
    let res = tokio::time::timeout(LIMIT, pool.send(head, body, SETTINGS)).await.unwrap().map_err(|e| e.error).unwrap();
    assert_eq!(res.status(), 200);
    let mut res_body = res.into_body();
    tx.send(Ok(Frame::data(Bytes::from(vec![b'b'; 100])))).await.unwrap();
    let mut got = 0;
    let err = loop {
        match tokio::time::timeout(LIMIT, res_body.frame()).await.expect("frame in time") {
            Some(Ok(frame)) => {
                got += frame.into_data().map_or(0, |d| d.len());
                if got == 100 {
                    tx.send(Err(std::io::Error::other("client went away"))).await.unwrap();
                }
            }
            Some(Err(e)) => break e,
            None => panic!("the response ended cleanly after {got} bytes"),
        }
    };
    assert!(matches!(err, H1Error::RequestBody(_)), "{err}");
    assert_eq!(got, 100, "the echo of what was sent came through first");
    assert_eq!(pool.idle(), 0);
    let (status, _, text, _) = get(&pool, Method::GET, "/").await.unwrap();
    assert_eq!((status, text.as_str()), (200, ""));
    assert_eq!(*accepted.lock().unwrap(), 2, "the next request had a new connection");
}

#[tokio::test]
async fn a_stale_connection_resends_a_buffered_body_but_never_a_streamed_one() {
    // The backend answers a first request, then reads the second on the same
    // connection and closes it without a byte of response (its keep-alive timeout).
    let be = RawBackend::start(vec![
        reply("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1"),
        reply_close(""),
        reply("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n2"),
    ])
    .await;
    let pool = H1Pool::new(&be.addr.to_string());
    assert_eq!(get(&pool, Method::GET, "/").await.unwrap().2, "1");
    let (status, _, text, _) =
        send(&pool, Method::POST, "/b", &host(), Full::new(Bytes::from_static(b"buffered"))).await.unwrap();
    assert_eq!((status, text.as_str()), (200, "2"));
    let reqs = be.requests();
    assert_eq!(reqs.len(), 3);
    assert_eq!((reqs[1].0, reqs[2].0), (1, 2), "sent on the stale connection, then again on a new one");
    assert_eq!(reqs[1].1, reqs[2].1);
    assert!(reqs[2].1.ends_with("content-length: 8\r\n\r\nbuffered"), "{:?}", reqs[2].1);

    let be = RawBackend::start(vec![
        reply("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1"),
        reply_close(""),
        reply("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n2"),
    ])
    .await;
    let pool = H1Pool::new(&be.addr.to_string());
    assert_eq!(get(&pool, Method::GET, "/").await.unwrap().2, "1");
    let (tx, body) = feed(None);
    tokio::spawn(async move {
        let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"streamed")))).await;
    });
    let err = send(&pool, Method::POST, "/s", &host(), body).await.unwrap_err();
    assert!(matches!(err, H1Error::ClosedBeforeResponse), "{err}");
    assert_eq!(be.requests().len(), 2, "the streamed body was not sent again");
    assert_eq!(be.connections(), 1);
}

// ---- through the gateway --------------------------------------------------------------

/// Reads from `s` until `done` holds for what was read, within `LIMIT`.
async fn read_until(s: &mut TcpStream, done: impl Fn(&str) -> bool) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(LIMIT, async {
        while !done(&String::from_utf8_lossy(&out)) {
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .expect("read in time");
    String::from_utf8_lossy(&out).into_owned()
}

async fn gateway_to(backend: SocketAddr) -> TestGateway {
    let gw = TestGateway::start(&http_config("[[listener.route]]\nservice = \"s\"\n")).await;
    write_instances(&gw.instances_path(), &[("s", "1", backend, &[])]);
    gw.wait_live("s", 1).await;
    gw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_through_the_gateway() {
    let b = support::Backend::start("echo").await;
    let gw = gateway_to(b.addr).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 5\r\n\r\n").await.unwrap();
    // The gateway asks for the body when it starts sending it upstream.
    let interim = read_until(&mut s, |t| t.contains("\r\n\r\n")).await;
    assert!(interim.starts_with("HTTP/1.1 100 Continue\r\n"), "{interim:?}");
    s.write_all(b"hello").await.unwrap();
    let res = read_until(&mut s, |t| t.ends_with("hello")).await;
    assert!(res.starts_with("HTTP/1.1 200 OK\r\n"), "{res:?}");
    assert!(res.ends_with("\r\n\r\nhello"), "{res:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_body_cut_short_after_the_response_head_cuts_the_client_connection() {
    // The echo answers at once, so the response head is on its way to the client
    // when the client stops sending, 100 bytes into the 1 MB it announced (over
    // the 64 KiB retry buffer: streamed, not read into memory first).
    let b = support::Backend::start("echo").await;
    let gw = gateway_to(b.addr).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 1000000\r\n\r\n").await.unwrap();
    s.write_all(&[b'c'; 100]).await.unwrap();
    let head = read_until(&mut s, |t| t.contains("\r\n\r\n")).await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head:?}");
    s.shutdown().await.unwrap();
    let (rest, closed) = support::raw::read_until_close(&mut s, LIMIT).await;
    assert!(closed, "the gateway cut the client connection");
    let body = format!("{head}{rest}").split_once("\r\n\r\n").map(|(_, b)| b.len()).unwrap_or(0);
    assert!(body <= 100, "only what was sent can have come back: {body} bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_upload_is_echoed_through_the_gateway() {
    const SIZE: usize = 8 * 1024 * 1024;
    let b = support::Backend::start("echo").await;
    let gw = gateway_to(b.addr).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let data = Bytes::from(pattern(SIZE));
    let frames = data.clone();
    let stream = futures_util::stream::iter(
        (0..SIZE / (128 * 1024))
            .map(move |i| Ok::<_, std::io::Error>(Frame::data(frames.slice(i * 128 * 1024..(i + 1) * 128 * 1024)))),
    );
    let req = http::Request::post(gw.url("/echo")).body(StreamBody::new(stream)).unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(60), async {
        let res = client.request(req).await.unwrap();
        assert_eq!(res.status(), 200);
        res.into_body().collect().await.unwrap().to_bytes()
    })
    .await
    .expect("the echo finished in time (no deadlock)");
    assert_eq!(echoed.len(), SIZE);
    assert!(echoed == data, "the echo differs from the upload");
}

// ---- real nginx and HAProxy as upstreams ------------------------------------------------

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn wait_port(port: u16) {
    for _ in 0..100 {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("127.0.0.1:{port} did not open");
}

fn find_bin(name: &str) -> String {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"] {
        let p = format!("{dir}/{name}");
        if std::path::Path::new(&p).exists() {
            return p;
        }
    }
    panic!("{name} is not installed (apt-get install -y {name}); .ci/deps --test installs it");
}

/// nginx: `/` a fixed body (content-length), `/chunked` an SSI page (chunked: its length is
/// unknown), `/204`, `/file.txt` (a static file: HEAD, and 304 to If-None-Match), and every 3rd request on a connection ends it (`keepalive_requests 3`).
async fn start_nginx(dir: &std::path::Path) -> (Killed, u16) {
    let port = free_port();
    std::fs::write(dir.join("page.html"), "<p>one</p><!--# echo var=\"ssi_var\" default=\"two\" --><p>three</p>\n")
        .unwrap();
    std::fs::write(dir.join("file.txt"), "static file\n").unwrap();
    let d = dir.display();
    let conf = format!(
        r#"worker_processes 1;
daemon off;
master_process off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    keepalive_requests 3;
    client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;
    uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {d};
        location = / {{ return 200 "from nginx\n"; }}
        location = /chunked {{ ssi on; default_type text/html; try_files /page.html =404; }}
        location = /204 {{ return 204; }}
        location = /file.txt {{ etag on; }}
    }}
}}
"#
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let child = Command::new(find_bin("nginx"))
        .args(["-c", &format!("{d}/nginx.conf"), "-p", &d.to_string(), "-e", &format!("{d}/error.log")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nginx");
    let p = Killed(child);
    wait_port(port).await;
    (p, port)
}

#[tokio::test]
async fn against_real_nginx() {
    let dir = tempfile::tempdir().unwrap();
    let (_nginx, port) = start_nginx(dir.path()).await;
    let pool = H1Pool::new(&format!("127.0.0.1:{port}"));
    for _ in 0..7 {
        // keepalive_requests 3: nginx closes every 3rd response's connection; the pool follows.
        let (status, _, text, _) = get(&pool, Method::GET, "/").await.unwrap();
        assert_eq!((status, text.as_str()), (200, "from nginx\n"));
        assert!(pool.idle() <= 1);
    }
    let (status, h, text, _) = get(&pool, Method::GET, "/chunked").await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(text, "<p>one</p>two<p>three</p>\n");
    assert!(!h.contains_key("content-length"), "nginx sent this one chunked: {h:?}");
    let (status, h, text, _) = get(&pool, Method::HEAD, "/file.txt").await.unwrap();
    assert_eq!((status, text.as_str()), (200, ""));
    assert_eq!(h["content-length"], "12");
    assert_eq!(get(&pool, Method::GET, "/204").await.unwrap().0, 204);
    let etag = get(&pool, Method::GET, "/file.txt").await.unwrap().1["etag"].clone();
    let mut headers = HeaderMap::new();
    headers.insert("host", "x".parse().unwrap());
    headers.insert("if-none-match", etag);
    assert_eq!(send(&pool, Method::GET, "/file.txt", &headers, Empty::<Bytes>::new()).await.unwrap().0, 304);
    // request bodies, by length and chunked: nginx answers 200 for `return` after reading them
    let (status, ..) =
        send(&pool, Method::POST, "/", &headers, Full::new(Bytes::from(vec![b'x'; 100_000]))).await.unwrap();
    assert_eq!(status, 200);
    let frames: Vec<Result<http_body::Frame<Bytes>, std::convert::Infallible>> =
        (0..10).map(|_| Ok(http_body::Frame::data(Bytes::from(vec![b'y'; 5000])))).collect();
    let (status, ..) =
        send(&pool, Method::POST, "/", &headers, StreamBody::new(futures_util::stream::iter(frames))).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(get(&pool, Method::GET, "/").await.unwrap().2, "from nginx\n");
}

#[tokio::test]
async fn against_real_haproxy() {
    let dir = tempfile::tempdir().unwrap();
    let (_nginx, nginx_port) = start_nginx(dir.path()).await;
    let port = free_port();
    let cfg = format!(
        "global\n    maxconn 100\ndefaults\n    mode http\n    timeout connect 2s\n    timeout client 10s\n    timeout server 10s\n\
         frontend fe\n    bind 127.0.0.1:{port}\n    http-request return status 200 content-type text/plain string \"from haproxy\" if {{ path /own }}\n    default_backend be\n\
         backend be\n    server n 127.0.0.1:{nginx_port}\n"
    );
    let path = dir.path().join("haproxy.cfg");
    std::fs::write(&path, cfg).unwrap();
    let child = Command::new(find_bin("haproxy"))
        .args(["-db", "-f", &path.display().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start haproxy");
    let _haproxy = Killed(child);
    wait_port(port).await;
    let pool = H1Pool::new(&format!("127.0.0.1:{port}"));
    for _ in 0..5 {
        assert_eq!(get(&pool, Method::GET, "/own").await.unwrap().2, "from haproxy");
    }
    assert_eq!(pool.idle(), 1, "HAProxy keeps the connection alive");
    // through HAProxy to nginx: chunked passes through as chunked
    let (status, _, text, _) = get(&pool, Method::GET, "/chunked").await.unwrap();
    assert_eq!((status, text.as_str()), (200, "<p>one</p>two<p>three</p>\n"));
    for _ in 0..4 {
        assert_eq!(get(&pool, Method::GET, "/").await.unwrap().2, "from nginx\n");
    }
    let mut headers = HeaderMap::new();
    headers.insert("host", "x".parse().unwrap());
    let (status, ..) =
        send(&pool, Method::POST, "/", &headers, Full::new(Bytes::from(vec![b'z'; 20_000]))).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(get(&pool, Method::HEAD, "/").await.unwrap().2, "");
}
