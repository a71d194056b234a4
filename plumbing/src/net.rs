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
    listen_with(addr, Port::Own)
}

/// Whether other processes may listen on the same port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Port {
    /// The port is this listener's alone: binding a port in use fails.
    #[default]
    Own,
    /// Every listener that binds the port with `Shared` gets a part of its new connections
    /// (`SO_REUSEPORT`: the kernel spreads them by their addresses). Several processes of one
    /// service then serve one address, as a web server's worker processes do, each with its
    /// own open-files limit.
    Shared,
}

/// [`listen`], with the port's sharing spelled out.
///
/// # Errors
/// When the address cannot be bound (in use, with [`Port::Own`] or by a listener that does
/// not share it).
pub fn listen_with(addr: SocketAddr, port: Port) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // As the runtime's own `bind` does: a restart need not wait out old connections.
    socket.set_reuseaddr(true)?;
    if port == Port::Shared {
        socket.set_reuseport(true)?;
    }
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

    /// Two listeners share a port and both get connections; one that does not share it
    /// cannot bind it.
    #[tokio::test]
    async fn a_shared_port_spreads_connections_over_its_listeners() {
        let first = listen_with("127.0.0.1:0".parse().unwrap(), Port::Shared).unwrap();
        let addr = first.local_addr().unwrap();
        let second = listen_with(addr, Port::Shared).unwrap();
        assert_eq!(
            listen(addr).unwrap_err().kind(),
            io::ErrorKind::AddrInUse,
            "a listener of its own cannot take a shared port"
        );
        // The kernel picks a listener by the connection's addresses: of 64, each listener
        // gets some (all to one has a chance of 2^-63).
        let clients =
            futures::future::try_join_all((0..64).map(|_| tokio::net::TcpStream::connect(addr)));
        let clients = tokio::time::timeout(Duration::from_secs(5), clients)
            .await
            .expect("the handshakes complete")
            .unwrap();
        let (mut a, mut b) = (0, 0);
        let accept_all = async {
            while a + b < 64 {
                tokio::select! {
                    accepted = first.accept() => { accepted.unwrap(); a += 1; }
                    accepted = second.accept() => { accepted.unwrap(); b += 1; }
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(5), accept_all)
            .await
            .expect("every connection is accepted by one of them");
        assert_eq!(a + b, 64);
        assert!(a > 0 && b > 0, "{a} and {b}");
        drop(clients);
    }
}
