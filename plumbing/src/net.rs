//! Listening sockets.

use std::{io, net::SocketAddr};

use tokio::net::{TcpListener, TcpSocket};

/// Connections the kernel completes and holds for a listener until it accepts them (capped
/// by `net.core.somaxconn`, 4096 by default). A reconnect storm brings thousands at once;
/// beyond a short queue (the runtime's default is 128) the kernel drops the handshakes, and
/// each of those clients waits a second before it tries again.
pub const BACKLOG: u32 = 4096;

/// Binds `addr` (port 0 picks a free one) and listens with a queue of [`BACKLOG`].
///
/// # Errors
/// When the address cannot be bound.
pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // As the runtime's own `bind` does: a restart need not wait out old connections.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// More clients than the default queue holds connect at once to a listener that is not
    /// accepting: the kernel completes every handshake, none is dropped and retried (which
    /// takes a second).
    #[tokio::test]
    async fn a_burst_of_connections_waits_in_the_queue_instead_of_being_dropped() {
        let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let clients = (0..600).map(|_| tokio::net::TcpStream::connect(addr));
        let connected = tokio::time::timeout(
            Duration::from_millis(900),
            futures::future::try_join_all(clients),
        )
        .await
        .expect("every handshake completes without a retry")
        .unwrap();
        assert_eq!(connected.len(), 600);
        drop(listener);
    }
}
