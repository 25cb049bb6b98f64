//! The broker's ports: the main port every shard accepts on (SO_REUSEPORT)
//! and each shard's own port, `main + 1 + shard`, which only that shard holds.
//!
//! Every port is reserved before any shard starts, so a broker started with
//! `--listen HOST:0` resolves its layout once, never races another process
//! between probing and binding, and can be restarted on the printed port with
//! the same layout. Own ports are bound *without* SO_REUSEPORT: another
//! process (another broker in a parallel test, say) that asks for the same
//! number gets EADDRINUSE instead of silently sharing our connections.

use socket2::{Domain, Socket, Type};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How many kernel-picked main ports `--listen HOST:0` tries before giving up
/// on finding one whose shard ports are free too.
const ATTEMPTS_FOR_PORT_ZERO: usize = 64;

/// How long an explicit port that is in use is retried. A broker killed with
/// SIGKILL keeps its listening sockets for a moment after it is reaped (the
/// kernel tears its io_uring down asynchronously, and pending accepts hold
/// the sockets), so a restart on the same ports would otherwise fail.
const RETRY_IN_USE_FOR: Duration = Duration::from_secs(10);

/// The backlog of every listening socket.
const BACKLOG: i32 = 1024;

#[derive(Debug, thiserror::Error)]
#[error("cannot reserve {address}: {source}")]
pub struct PortError {
    pub address: SocketAddr,
    pub source: std::io::Error,
}

pub struct ReservedPorts {
    /// Bound with SO_REUSEPORT, not listening: holds the main port until
    /// every shard has bound its own socket to it.
    pub main_placeholder: Socket,
    pub main_address: SocketAddr,
    /// Bound and listening, one per shard, handed to the shard's executor.
    pub own_listeners: Vec<Socket>,
    pub shard_addresses: Vec<SocketAddr>,
}

/// Reserves the main port and `shards` own ports after it.
pub fn reserve(listen: SocketAddr, shards: u16) -> Result<ReservedPorts, PortError> {
    if listen.port() == 0 {
        let mut last_error = None;
        for _ in 0..ATTEMPTS_FOR_PORT_ZERO {
            match try_reserve(listen, shards) {
                Ok(ports) => return Ok(ports),
                Err(error) => last_error = Some(error),
            }
        }
        return Err(last_error.unwrap_or(PortError {
            address: listen,
            source: std::io::Error::other("no attempt made"),
        }));
    }
    let deadline = Instant::now() + RETRY_IN_USE_FOR;
    let mut warned = false;
    loop {
        match try_reserve(listen, shards) {
            Err(error)
                if error.source.kind() == std::io::ErrorKind::AddrInUse
                    && Instant::now() < deadline =>
            {
                if !warned {
                    tracing::warn!(address = %error.address, "port in use; retrying (a previous broker may still be exiting)");
                    warned = true;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            result => return result,
        }
    }
}

fn try_reserve(listen: SocketAddr, shards: u16) -> Result<ReservedPorts, PortError> {
    let main_placeholder = bind(listen, true)?;
    let main_address = main_placeholder
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .unwrap_or(listen);
    let mut own_listeners = Vec::with_capacity(usize::from(shards));
    let mut shard_addresses = Vec::with_capacity(usize::from(shards));
    for shard in 0..shards {
        let mut address = main_address;
        let port = main_address
            .port()
            .checked_add(1)
            .and_then(|p| p.checked_add(shard))
            .ok_or_else(|| PortError {
                address: main_address,
                source: std::io::Error::other("the shard ports would pass 65535"),
            })?;
        address.set_port(port);
        let socket = bind(address, false)?;
        socket
            .listen(BACKLOG)
            .map_err(|source| PortError { address, source })?;
        own_listeners.push(socket);
        shard_addresses.push(address);
    }
    Ok(ReservedPorts {
        main_placeholder,
        main_address,
        own_listeners,
        shard_addresses,
    })
}

fn bind(address: SocketAddr, reuse_port: bool) -> Result<Socket, PortError> {
    let error = |source| PortError { address, source };
    let domain = if address.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let socket = Socket::new(domain, Type::STREAM, None).map_err(error)?;
    // SO_REUSEADDR lets a restarted broker bind while connections of the old
    // one linger in TIME_WAIT; it never lets two listeners share a port.
    socket.set_reuse_address(true).map_err(error)?;
    if reuse_port {
        socket.set_reuse_port(true).map_err(error)?;
    }
    socket.bind(&address.into()).map_err(error)?;
    Ok(socket)
}

/// Turns a listening socket into a glommio listener of the calling executor.
pub fn into_glommio(socket: Socket) -> glommio::net::TcpListener {
    use std::os::fd::{FromRawFd, IntoRawFd};
    debug_assert!(socket.local_addr().is_ok());
    let fd = socket.into_raw_fd();
    // SAFETY: `fd` comes from `into_raw_fd` of a socket we own, so it is open,
    // is a bound and listening TCP socket (see `try_reserve`), and nothing
    // else owns or will close it: ownership passes to the glommio listener.
    unsafe { glommio::net::TcpListener::from_raw_fd(fd) }
}
