//! `tcp` listeners end to end: real sockets on 127.0.0.1, echo backends, the
//! gateway in-process with file discovery.

use crate::support;

use support::FILE_DISCOVERY;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::l4::{round_trip, EchoServer};
use support::refusing_addr;
use support::{admin_get, metric, write_instances, TestGateway};

/// A gateway with one tcp listener called `name` for service "db".
fn config(name: &str, balance: &str, extra_timeouts: &str) -> String {
    format!(
        r#"{FILE_DISCOVERY}[timeouts]
connect = "1s"
shutdown_grace = "1s"
{extra_timeouts}
[[listener]]
name = "{name}"
protocol = "tcp"
listen = "127.0.0.1:0"
service = "db"
{balance}
"#
    )
}

async fn gateway(name: &str, balance: &str, instances: &[(&str, SocketAddr)]) -> TestGateway {
    let gw = TestGateway::start(&config(name, balance, "")).await;
    set_instances(&gw, instances).await;
    gw
}

async fn set_instances(gw: &TestGateway, instances: &[(&str, SocketAddr)]) {
    let no_metadata: &[(&str, &str)] = &[];
    let rows: Vec<_> = instances.iter().map(|(id, a)| ("db", *id, *a, no_metadata)).collect();
    write_instances(&gw.instances_path(), &rows);
    gw.wait_live("db", instances.len()).await;
}

async fn connect(gw: &TestGateway) -> TcpStream {
    TcpStream::connect(gw.addr).await.expect("connect to the gateway")
}

async fn metrics(gw: &TestGateway) -> String {
    admin_get(gw.admin, "/metrics").await.1
}

/// The byte at position `i` of the test stream: not periodic at any buffer size.
fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(2_654_435_761) >> 13) as u8
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echoes_ten_megabytes_each_way_across_a_half_close() {
    let echo = EchoServer::start().await;
    let gw = gateway("echo10", "", &[("e1", echo.addr)]).await;
    const SIZE: usize = 10 * 1024 * 1024;
    let stream = connect(&gw).await;
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        let chunk: Vec<u8> = (0..SIZE).map(pattern).collect();
        for piece in chunk.chunks(64 * 1024) {
            wr.write_all(piece).await.unwrap();
        }
        // Half-close: the client sends nothing more but still reads everything back.
        wr.shutdown().await.unwrap();
        wr
    });
    let mut received = Vec::with_capacity(SIZE);
    tokio::time::timeout(Duration::from_secs(60), rd.read_to_end(&mut received)).await.expect("echo finished").unwrap();
    let _wr = writer.await.unwrap();
    assert_eq!(received.len(), SIZE);
    if let Some(i) = (0..SIZE).find(|&i| received[i] != pattern(i)) {
        panic!("byte {i} differs");
    }

    // Counted both ways, on this listener's own series (labels in registration order). The last
    // count lands just after the last write, so allow it a moment.
    let series = |d: &str| format!(r#"switchyard_tcp_bytes_total{{listener="echo10",direction="{d}"}}"#);
    let counted = async || {
        let text = metrics(&gw).await;
        (metric(&text, &series("to_upstream")), metric(&text, &series("to_client")))
    };
    let all = (SIZE as f64, SIZE as f64);
    support::wait_until("every byte counted both ways", Duration::from_secs(2), async || counted().await == all).await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_concurrent_connections_spread_evenly_over_three_backends() {
    let backends = [EchoServer::start().await, EchoServer::start().await, EchoServer::start().await];
    let gw = gateway(
        "spread",
        r#"balance = "round_robin""#,
        &[("a", backends[0].addr), ("b", backends[1].addr), ("c", backends[2].addr)],
    )
    .await;
    let mut clients = Vec::new();
    for i in 0..60 {
        let addr = gw.addr;
        clients.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let msg = format!("client {i}");
            assert_eq!(round_trip(&mut s, msg.as_bytes()).await, msg.as_bytes());
            s
        }));
    }
    // All sixty are open at once: every connection is still held here.
    let mut open = Vec::new();
    for c in clients {
        open.push(c.await.unwrap());
    }
    let counts: Vec<usize> = backends.iter().map(|b| b.accepted()).collect();
    // Each of the two workers rotates exactly on its own (a cursor per core):
    // together an instance is at most one connection off its third.
    assert_eq!(counts.iter().sum::<usize>(), 60, "{counts:?}");
    assert!(counts.iter().all(|&n| n.abs_diff(20) <= 1), "{counts:?}");
    let open_at_backends: usize = backends.iter().map(|b| b.open.load(std::sync::atomic::Ordering::SeqCst)).sum();
    assert_eq!(open_at_backends, 60);
    drop(open);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_on_client_ip_keeps_a_client_on_one_backend() {
    let backends = [EchoServer::start().await, EchoServer::start().await, EchoServer::start().await];
    let gw = gateway(
        "hashed",
        "balance = \"hash\"\nhash_key = \"client_ip\"",
        &[("a", backends[0].addr), ("b", backends[1].addr), ("c", backends[2].addr)],
    )
    .await;
    for i in 0..30 {
        let mut s = connect(&gw).await;
        round_trip(&mut s, format!("{i}").as_bytes()).await;
    }
    let mut counts: Vec<usize> = backends.iter().map(|b| b.accepted()).collect();
    counts.sort();
    // Round-robin would have given 10/10/10: every connection is from 127.0.0.1.
    assert_eq!(counts, vec![0, 0, 30]);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_refuses_connections_is_skipped() {
    let live = [EchoServer::start().await, EchoServer::start().await];
    let (_reserved, dead) = refusing_addr();
    let gw = gateway("skip", "", &[("a", live[0].addr), ("b", dead), ("c", live[1].addr)]).await;
    for i in 0..30 {
        let mut s = connect(&gw).await;
        let msg = format!("attempt {i}");
        assert_eq!(round_trip(&mut s, msg.as_bytes()).await, msg.as_bytes(), "connection {i}");
    }
    assert_eq!(live[0].accepted() + live[1].accepted(), 30);
    // The first pick of the refusing instance was retried on another and ejected it
    // (outlier detection): later connections never try it.
    let text = metrics(&gw).await;
    assert_eq!(metric(&text, r#"switchyard_tcp_connect_failures_total{listener="skip"}"#), 1.0, "{text}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_reachable_instance_the_client_is_closed() {
    let (_reserved, dead) = refusing_addr();
    let gw = gateway("none", "", &[("a", dead)]).await;
    let mut s = connect(&gw).await;
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.expect("closed in time");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_instance_keeps_its_established_connection() {
    let a = EchoServer::start().await;
    let b = EchoServer::start().await;
    let gw = gateway("drain", "", &[("a", a.addr), ("b", b.addr)]).await;
    let mut first = connect(&gw).await;
    round_trip(&mut first, b"before").await;
    // A worker's first pick is instance <its core index>: the connection is on one of the two.
    assert_eq!(a.accepted() + b.accepted(), 1);
    let (used, (kept_id, kept)) = if a.accepted() == 1 { (&a, ("b", &b)) } else { (&b, ("a", &a)) };

    set_instances(&gw, &[(kept_id, kept.addr)]).await;
    // The established connection still reaches the removed instance...
    assert_eq!(round_trip(&mut first, b"after the swap").await, b"after the swap");
    // ...and new ones go to the other only.
    for _ in 0..5 {
        let mut s = connect(&gw).await;
        round_trip(&mut s, b"new").await;
    }
    assert_eq!((used.accepted(), kept.accepted()), (1, 5));
    assert_eq!(used.open.load(std::sync::atomic::Ordering::SeqCst), 1);
    drop(first);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_and_busy_ones_are_kept() {
    let echo = EchoServer::start().await;
    let gw = TestGateway::start(&config("idle", "", r#"tcp_idle = "1s""#)).await;
    set_instances(&gw, &[("e", echo.addr)]).await;

    let mut busy = connect(&gw).await;
    let mut idle = connect(&gw).await;
    round_trip(&mut idle, b"hi").await;
    // Traffic every 100 ms for 2.5 s keeps `busy` open well past the idle limit.
    for _ in 0..25 {
        round_trip(&mut busy, b"ping").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // `idle` has been silent for 2.5 s: the gateway closed it.
    let mut buf = [0u8; 4];
    let n = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf)).await.expect("closed");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    round_trip(&mut busy, b"still here").await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_the_grace_period_then_closes_relays() {
    let echo = EchoServer::start().await;
    let gw = gateway("grace", "", &[("e", echo.addr)]).await;
    let mut s = connect(&gw).await;
    round_trip(&mut s, b"hi").await;
    let started = std::time::Instant::now();
    // shutdown_grace is 1 s; `stop` fails the test if the gateway takes over 10 s.
    gw.stop().await;
    assert!(started.elapsed() >= Duration::from_millis(900), "the open relay was given the grace period");
    let mut buf = [0u8; 4];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.expect("closed");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
}
