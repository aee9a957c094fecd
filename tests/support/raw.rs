//! Raw-byte test peers: a client that writes exact bytes and reads what comes
//! back, and a backend that records every byte it receives and answers with a
//! fixed response (or holds the request, or switches protocols and goes quiet).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// What a [`RawBackend`] does with each request head it reads.
#[derive(Clone, Copy)]
pub enum Reply {
    /// Writes these bytes, then closes the connection.
    Fixed(&'static [u8]),
    /// Never answers; the connection stays open until the backend stops.
    Hold,
    /// Writes these bytes (a 101), then keeps the connection open and silent.
    ThenHold(&'static [u8]),
}

/// A backend that records the bytes of every request head (and body, by
/// Content-Length) it receives, one entry per connection.
pub struct RawBackend {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Vec<u8>>>>,
    pub connections: Arc<AtomicUsize>,
    shutdown: CancellationToken,
}

impl RawBackend {
    pub async fn start(reply: Reply) -> RawBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let shutdown = CancellationToken::new();
        let backend = RawBackend {
            addr,
            received: received.clone(),
            connections: connections.clone(),
            shutdown: shutdown.clone(),
        };
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                };
                connections.fetch_add(1, Ordering::SeqCst);
                let (received, shutdown) = (received.clone(), shutdown.clone());
                tokio::spawn(async move {
                    let index = {
                        let mut r = received.lock().unwrap();
                        r.push(Vec::new());
                        r.len() - 1
                    };
                    let head = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        h = read_message(&mut stream) => h,
                    };
                    received.lock().unwrap()[index] = head;
                    match reply {
                        Reply::Fixed(bytes) => {
                            let _ = stream.write_all(bytes).await;
                            let _ = stream.shutdown().await;
                        }
                        Reply::Hold => shutdown.cancelled().await,
                        Reply::ThenHold(bytes) => {
                            let _ = stream.write_all(bytes).await;
                            shutdown.cancelled().await
                        }
                    }
                });
            }
        });
        backend
    }

    /// Everything received so far, one string per connection.
    pub fn received(&self) -> Vec<String> {
        self.received.lock().unwrap().iter().map(|b| String::from_utf8_lossy(b).into_owned()).collect()
    }

    /// Waits for the first `n` connections' requests and returns the last one.
    pub async fn request(&self, n: usize) -> String {
        let start = Instant::now();
        loop {
            let r = self.received();
            if r.len() >= n && !r[n - 1].is_empty() {
                return r[n - 1].clone();
            }
            assert!(start.elapsed() < Duration::from_secs(10), "no request {n} reached the raw backend: {r:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn stop(&self) {
        self.shutdown.cancel();
    }
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Reads one request: the head, then a Content-Length body if any (at most 1 MiB).
async fn read_message(stream: &mut TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return buf,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > 1 << 20 {
            return buf;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
        .min(1 << 20);
    while buf.len() < head_end + length {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    buf
}

/// Writes `bytes` and reads until the peer closes or `limit` passes; returns
/// what was read and whether the peer closed.
pub async fn exchange(addr: SocketAddr, bytes: &[u8], limit: Duration) -> (String, bool) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    read_until_close(&mut s, limit).await
}

/// Reads until the peer closes (true) or `limit` passes (false).
pub async fn read_until_close(s: &mut TcpStream, limit: Duration) -> (String, bool) {
    let mut out = Vec::new();
    let mut chunk = [0u8; 16384];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&out).into_owned(), true),
            Ok(Ok(n)) => out.extend_from_slice(&chunk[..n]),
            Err(_) => return (String::from_utf8_lossy(&out).into_owned(), false),
        }
    }
}

/// Reads one response head and its Content-Length body from a kept-alive
/// connection (or what came before the peer closed).
pub async fn read_response(s: &mut TcpStream) -> String {
    let bytes = tokio::time::timeout(Duration::from_secs(10), read_message(s)).await.expect("a response");
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The status code of a response's first line (0 if none).
pub fn status(response: &str) -> u16 {
    response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}
