//! Listening sockets with `SO_REUSEPORT`: a second process (a restart, a
//! rolling upgrade) binds the same address while the first drains, and a reload
//! binds a changed listener's new socket before the old one closes. The kernel
//! spreads new connections over every socket in the group; a socket stops
//! receiving them when it is closed.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;

/// Pending connections per socket; the kernel caps it at `net.core.somaxconn`.
/// nginx uses 511 on Linux; tokio's `TcpListener::bind` uses 1024.
const BACKLOG: i32 = 1024;

/// Binds and listens on `addr` with `SO_REUSEADDR` and `SO_REUSEPORT`.
pub(crate) fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // SO_REUSEADDR: the port may still have connections in TIME_WAIT from the
    // process before; SO_REUSEPORT: the process before may still be listening.
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn two_sockets_share_one_address() {
        let first = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = first.local_addr().unwrap();
        let second = bind(addr).expect("SO_REUSEPORT lets a second socket bind while the first listens");
        assert_eq!(second.local_addr().unwrap(), addr);
        drop(first);
        // The survivor keeps accepting on the address.
        let client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = second.accept().await.unwrap();
        assert_eq!(accepted.peer_addr().unwrap(), client.local_addr().unwrap());
    }
}
