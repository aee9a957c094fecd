//! The gateway's own HTTP/1.1 server (`listener/h1`), byte by byte from a raw
//! client: pipelined requests answered in order, the hand-over to hyper's
//! server for a request with a body (mid-connection, pipelined bytes and all)
//! and for a malformed head (400), keep-alive by version and `Connection`,
//! HEAD, bodies of unknown length (chunked for HTTP/1.1, close-delimited for
//! HTTP/1.0), `Date`, the gateway's own `Via` and `x-request-id` among the
//! backend's lines, and a drain that lets the request in flight finish.

use crate::support;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::raw::{read_until_close, status};
use support::{http_config, write_instances, Backend, TestGateway};

const LIMIT: Duration = Duration::from_secs(10);

async fn gateway() -> (TestGateway, Backend) {
    let up = Backend::start("up").await;
    let gw = TestGateway::start(&http_config("[[listener.route]]\npath_prefix = \"/\"\nservice = \"up\"\n")).await;
    write_instances(&gw.instances_path(), &[("up", "u", up.addr, &[])]);
    gw.wait_live("up", 1).await;
    (gw, up)
}

/// A response read off a connection: head lines (lower-cased names) and decoded body.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Reads one response from `buf` + the socket, framed as RFC 9112 says
/// (`head_request`: no body), leaving what follows in `buf`.
async fn read_answer(s: &mut TcpStream, buf: &mut Vec<u8>, head_request: bool) -> Answer {
    async fn fill(s: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
        let mut chunk = [0u8; 16384];
        match tokio::time::timeout(LIMIT, s.read(&mut chunk)).await.expect("the gateway answers in time") {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        assert!(fill(s, buf).await, "closed before a whole head: {:?}", String::from_utf8_lossy(buf));
    };
    let head = String::from_utf8(buf.drain(..end).collect()).unwrap();
    let mut answer = Answer { status: status(&head), head, body: Vec::new() };
    if head_request || answer.status == 204 || answer.status == 304 {
        return answer;
    }
    if answer.header("transfer-encoding") == Some("chunked") {
        loop {
            let line_end = loop {
                if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                assert!(fill(s, buf).await, "closed inside a chunked body");
            };
            let size = usize::from_str_radix(std::str::from_utf8(&buf[..line_end]).unwrap(), 16).unwrap();
            buf.drain(..line_end + 2);
            while buf.len() < size + 2 {
                assert!(fill(s, buf).await, "closed inside a chunk");
            }
            if size == 0 {
                assert_eq!(&buf[..2], b"\r\n", "no trailers expected");
                buf.drain(..2);
                return answer;
            }
            answer.body.extend(buf.drain(..size));
            assert_eq!(buf.drain(..2).collect::<Vec<_>>(), b"\r\n");
        }
    }
    if let Some(n) = answer.header("content-length") {
        let n: usize = n.parse().unwrap();
        while buf.len() < n {
            assert!(fill(s, buf).await, "closed inside a content-length body");
        }
        answer.body = buf.drain(..n).collect();
        return answer;
    }
    // Delimited by the close.
    while fill(s, buf).await {}
    answer.body = std::mem::take(buf);
    answer
}

/// Whether the gateway has closed the connection (within a short wait).
async fn closed(s: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(tokio::time::timeout(Duration::from_secs(2), s.read(&mut byte)).await, Ok(Ok(0)) | Ok(Err(_)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order_and_a_body_hands_the_connection_to_hyper() {
    let (gw, _up) = gateway().await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    // Two GETs, a POST with a body, a GET after it: all in one write.
    s.write_all(
        b"GET /headers HTTP/1.1\r\nHost: a\r\nX-Seq: 1\r\n\r\n\
          GET /headers HTTP/1.1\r\nHost: a\r\nX-Seq: 2\r\n\r\n\
          POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
          GET /headers HTTP/1.1\r\nHost: a\r\nX-Seq: 4\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    for seq in ["1", "2"] {
        let a = read_answer(&mut s, &mut buf, false).await;
        assert_eq!(a.status, 200, "{a:?}");
        assert!(String::from_utf8_lossy(&a.body).contains(&format!("x-seq: {seq}\n")), "{a:?}");
    }
    let echoed = read_answer(&mut s, &mut buf, false).await;
    assert_eq!((echoed.status, &echoed.body[..]), (200, &b"hello"[..]), "{echoed:?}");
    let last = read_answer(&mut s, &mut buf, false).await;
    assert!(String::from_utf8_lossy(&last.body).contains("x-seq: 4\n"), "{last:?}");
    // Still open, now served by hyper: one more request on it.
    s.write_all(b"GET /plain HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    assert_eq!(read_answer(&mut s, &mut buf, false).await.body, b"up");
    assert!(buf.is_empty(), "nothing beyond the responses: {:?}", String::from_utf8_lossy(&buf));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_head_after_a_good_one_is_hypers_400() {
    let (gw, _up) = gateway().await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nBad Header\r\n\r\n").await.unwrap();
    let (text, closed) = read_until_close(&mut s, LIMIT).await;
    assert!(closed, "{text}");
    let statuses: Vec<u16> = text.split("HTTP/1.1 ").skip(1).filter_map(|r| r.get(..3)?.parse().ok()).collect();
    assert_eq!(statuses, [200, 400], "{text}");
    let metrics = support::admin_get(gw.admin, "/metrics").await.1;
    let series = r#"switchyard_bad_requests_total{listener="web",reason="malformed_request"}"#;
    assert_eq!(support::metric(&metrics, series), 1.0, "counted once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_follows_the_version_and_connection_close() {
    let (gw, _up) = gateway().await;
    // HTTP/1.1 with `Connection: close`: answered, said, closed.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let a = read_answer(&mut s, &mut buf, false).await;
    assert_eq!((a.status, a.header("connection")), (200, Some("close")), "{a:?}");
    assert!(closed(&mut s).await);
    // HTTP/1.0 without keep-alive: answered and closed, the status line HTTP/1.1 (RFC 9110 §6.2).
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let a = read_answer(&mut s, &mut Vec::new(), false).await;
    assert!(a.head.starts_with("HTTP/1.1 200 OK\r\n") && a.header("connection").is_none(), "{a:?}");
    assert_eq!(a.body, b"up");
    assert!(closed(&mut s).await);
    // HTTP/1.0 asking for keep-alive: said back, and the connection serves another.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let mut buf = Vec::new();
    for _ in 0..2 {
        s.write_all(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").await.unwrap();
        let a = read_answer(&mut s, &mut buf, false).await;
        assert_eq!((a.header("connection"), &a.body[..]), (Some("keep-alive"), &b"up"[..]), "{a:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_writes_no_body_and_the_next_response_follows_cleanly() {
    let (gw, _up) = gateway().await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let head = read_answer(&mut s, &mut buf, true).await;
    assert_eq!((head.status, head.header("content-length")), (200, Some("2")), "{head:?}");
    let get = read_answer(&mut s, &mut buf, false).await;
    assert!(get.head.starts_with("HTTP/1.1 200 OK\r\n"), "no body bytes came between: {get:?}");
    assert_eq!(get.body, b"up");
    // The backend's lines (passed on as bytes) and the gateway's: each once.
    let lower = get.head.to_ascii_lowercase();
    for name in ["content-length:", "date:", "via:", "x-request-id:"] {
        assert_eq!(lower.matches(name).count(), 1, "{name} in {}", get.head);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backends_request_id_is_replaced_and_its_via_kept_before_the_gateways() {
    let (gw, _up) = gateway().await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let mut buf = Vec::new();
    s.write_all(b"GET /own-lines HTTP/1.1\r\nHost: a\r\nX-Request-Id: client-7\r\n\r\n").await.unwrap();
    let a = read_answer(&mut s, &mut buf, false).await;
    let lower = a.head.to_ascii_lowercase();
    assert_eq!(lower.matches("x-request-id:").count(), 1, "{}", a.head);
    assert_eq!(a.header("x-request-id"), Some("client-7"), "{a:?}");
    let vias: Vec<&str> = a.head.lines().filter(|l| l.to_ascii_lowercase().starts_with("via:")).collect();
    assert_eq!(vias.len(), 2, "{a:?}");
    assert!(vias[0].ends_with("1.1 backend-proxy") && vias[1].contains("switchyard-"), "{vias:?}");
    // Without one from the client: the made id, not the backend's.
    s.write_all(b"GET /own-lines HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    let a = read_answer(&mut s, &mut buf, false).await;
    assert_eq!(a.head.to_ascii_lowercase().matches("x-request-id:").count(), 1, "{}", a.head);
    assert!(a.header("x-request-id").is_some_and(|id| id != "from-backend" && !id.is_empty()), "{a:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_of_unknown_length_is_chunked_for_http11_and_ends_the_connection_for_http10() {
    let (gw, _up) = gateway().await;
    // The backend streams 200,000 bytes in 64 KiB frames without a length.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let mut buf = Vec::new();
    for _ in 0..2 {
        s.write_all(b"GET /bytes/200000 HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
        let a = read_answer(&mut s, &mut buf, false).await;
        assert_eq!(a.header("transfer-encoding"), Some("chunked"), "{a:?}");
        assert_eq!(a.header("content-length"), None);
        assert!(a.body.len() == 200_000 && a.body.iter().all(|&b| b == b'x'));
    }
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /bytes/200000 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").await.unwrap();
    let a = read_answer(&mut s, &mut Vec::new(), false).await;
    assert_eq!((a.header("transfer-encoding"), a.header("content-length")), (None, None), "{a:?}");
    assert_eq!(a.body.len(), 200_000, "delimited by the close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateways_own_answers_carry_a_date_and_a_length() {
    let gw = TestGateway::start(&http_config("")).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /nowhere HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    let a = read_answer(&mut s, &mut Vec::new(), false).await;
    assert_eq!(a.status, 404, "{a:?}");
    let date = a.header("date").expect("a Date");
    let when = httpdate::parse_http_date(date).unwrap();
    let off = std::time::SystemTime::now().duration_since(when).unwrap_or_default();
    assert!(off < Duration::from_secs(5), "{date}");
    assert_eq!(a.header("content-length").map(str::parse::<usize>), Some(Ok(a.body.len())));
}

/// A client that closes while its request is in flight cancels it: the gateway
/// closes its upstream connection at once rather than wait for the response or
/// the request timeout (2 s in the test config), as hyper's server did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_closes_mid_request_cancels_the_upstream_exchange() {
    // A backend that reads the request, never answers, and reports when its peer closes.
    let backend = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = backend.local_addr().unwrap();
    let (got, got_rx) = tokio::sync::oneshot::channel();
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = backend.accept().await.unwrap();
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf).await;
        let _ = got.send(());
        let start = std::time::Instant::now();
        while !matches!(s.read(&mut buf).await, Ok(0) | Err(_)) {}
        let _ = closed_tx.send(start.elapsed());
    });
    let gw = TestGateway::start(&http_config("[[listener.route]]\npath_prefix = \"/\"\nservice = \"held\"\n")).await;
    write_instances(&gw.instances_path(), &[("held", "h", addr, &[])]);
    gw.wait_live("held", 1).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /held HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    tokio::time::timeout(LIMIT, got_rx).await.expect("the request reached the backend").unwrap();
    drop(s);
    let after = tokio::time::timeout(LIMIT, closed_rx).await.expect("the upstream connection closed").unwrap();
    assert!(after < Duration::from_millis(1000), "closed {after:?} after the client left, not at once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_lets_the_request_in_flight_finish_and_closes_idle_connections() {
    let (gw, _up) = gateway().await;
    let mut idle = TcpStream::connect(gw.addr).await.unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    read_answer(&mut idle, &mut Vec::new(), false).await;
    let mut busy = TcpStream::connect(gw.addr).await.unwrap();
    busy.write_all(b"GET /slow/600 HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stopping = tokio::spawn(gw.stop());
    assert!(closed(&mut idle).await, "the idle connection is closed at once");
    let a = read_answer(&mut busy, &mut Vec::new(), false).await;
    assert_eq!((a.status, a.header("connection"), &a.body[..]), (200, Some("close"), &b"up"[..]), "{a:?}");
    assert!(closed(&mut busy).await);
    stopping.await.unwrap();
}

/// The requests of one connection share its timer for their upstream deadlines
/// (reset per request): a deadline earlier than the last one still fires on time,
/// a later one after a timer that fired neither fires early nor late, and the
/// connection serves requests after each 504.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connections_requests_each_keep_their_own_deadline() {
    let up = Backend::start("up").await;
    let routes = "[[listener.route]]\npath_prefix = \"/short\"\nstrip_prefix = true\ntimeout = \"300ms\"\nservice = \"up\"\n\
                  [[listener.route]]\npath_prefix = \"/mid\"\nstrip_prefix = true\ntimeout = \"900ms\"\nservice = \"up\"\n\
                  [[listener.route]]\npath_prefix = \"/\"\nservice = \"up\"\n";
    let gw = TestGateway::start(&http_config(routes)).await;
    write_instances(&gw.instances_path(), &[("up", "u", up.addr, &[])]);
    gw.wait_live("up", 1).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let mut buf = Vec::new();
    let mut ask = async |path: &str| {
        let start = std::time::Instant::now();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes()).await.unwrap();
        let a = read_answer(&mut s, &mut buf, false).await;
        (a.status, start.elapsed())
    };
    // Request timeout 2 s: the timer is filed at about now + 2 s.
    assert_eq!(ask("/slow/0").await.0, 200);
    let (status, took) = ask("/short/slow/5000").await;
    assert_eq!(status, 504);
    assert!(took >= Duration::from_millis(300) && took < Duration::from_millis(1500), "300 ms deadline: {took:?}");
    assert_eq!(ask("/slow/0").await.0, 200, "served after the 504");
    let (status, took) = ask("/mid/slow/5000").await;
    assert_eq!(status, 504);
    assert!(took >= Duration::from_millis(900) && took < Duration::from_millis(1900), "900 ms deadline: {took:?}");
    let (status, took) = ask("/slow/150").await;
    assert!(
        status == 200 && took >= Duration::from_millis(150),
        "a slower answer within its deadline: {status} {took:?}"
    );
}
