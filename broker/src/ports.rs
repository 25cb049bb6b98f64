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

/// How long an explicit port that is in use is retried, when no live process
/// holds it. A broker killed with SIGKILL keeps its listening sockets for a
/// moment after it is reaped (the kernel tears its io_uring down
/// asynchronously, and pending accepts hold the sockets), so a restart on the
/// same ports would otherwise fail. A port that a live process holds fails at
/// once.
const RETRY_IN_USE_FOR: Duration = Duration::from_secs(10);

/// The backlog of every listening socket.
const BACKLOG: i32 = 1024;

/// Which of the broker's ports a socket is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortRole {
    /// The main port, the one `--listen` names.
    Main,
    /// Shard i's own port, `--listen` port + 1 + i.
    Shard(u16),
}

impl std::fmt::Display for PortRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PortRole::Main => write!(f, "the main port"),
            PortRole::Shard(shard) => {
                write!(f, "shard {shard}'s own port (main port + 1 + {shard})")
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {address}, {role} for --listen {asked}: {source}{}", holder_text(.holder))]
pub struct PortError {
    /// The address that could not be bound.
    pub address: SocketAddr,
    pub role: PortRole,
    /// The main address the user asked for.
    pub asked: SocketAddr,
    pub source: std::io::Error,
    /// Who holds the port, when it is in use and that could be found out.
    pub holder: Option<String>,
}

fn holder_text(holder: &Option<String>) -> String {
    match holder {
        Some(holder) => format!(" (held by {holder}; pick another --listen port or stop it)"),
        None => String::new(),
    }
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
            role: PortRole::Main,
            asked: listen,
            source: std::io::Error::other("no attempt made"),
            holder: None,
        }));
    }
    let deadline = Instant::now() + RETRY_IN_USE_FOR;
    let mut warned = false;
    loop {
        match try_reserve(listen, shards) {
            Err(mut error) if error.source.kind() == std::io::ErrorKind::AddrInUse => {
                match port_holder(error.address.port()) {
                    Holder::Process(holder) => {
                        error.holder = Some(holder);
                        return Err(error);
                    }
                    Holder::NoLiveProcess if Instant::now() < deadline => {
                        if !warned {
                            tracing::warn!(address = %error.address, role = %error.role, "port held by sockets of no live process (a broker that is exiting); retrying for up to 10 s");
                            warned = true;
                        }
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    Holder::NoLiveProcess => return Err(error),
                }
            }
            result => return result,
        }
    }
}

fn try_reserve(listen: SocketAddr, shards: u16) -> Result<ReservedPorts, PortError> {
    let main_placeholder = bind(listen, PortRole::Main, listen, true)?;
    let main_address = main_placeholder
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .unwrap_or(listen);
    let mut own_listeners = Vec::with_capacity(usize::from(shards));
    let mut shard_addresses = Vec::with_capacity(usize::from(shards));
    for shard in 0..shards {
        let role = PortRole::Shard(shard);
        let mut address = main_address;
        let port = main_address
            .port()
            .checked_add(1)
            .and_then(|p| p.checked_add(shard))
            .ok_or_else(|| PortError {
                address: main_address,
                role,
                asked: listen,
                source: std::io::Error::other("the shard ports would pass 65535"),
                holder: None,
            })?;
        address.set_port(port);
        let socket = bind(address, role, listen, false)?;
        socket.listen(BACKLOG).map_err(|source| PortError {
            address,
            role,
            asked: listen,
            source,
            holder: None,
        })?;
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

fn bind(
    address: SocketAddr,
    role: PortRole,
    asked: SocketAddr,
    reuse_port: bool,
) -> Result<Socket, PortError> {
    let error = |source| PortError {
        address,
        role,
        asked,
        source,
        holder: None,
    };
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

/// Who holds a TCP port that is in use.
#[derive(Debug, PartialEq, Eq)]
enum Holder {
    /// A live process has a socket bound to it: "pid 42 (nc)".
    Process(String),
    /// Only sockets no live process has open (a killed broker's, being torn
    /// down), or none any more.
    NoLiveProcess,
}

/// Looks the port's bound and listening sockets up in /proc/net/tcp{,6}
/// and the socket inodes up in every process's open files.
fn port_holder(port: u16) -> Holder {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(table) {
            inodes.extend(bound_socket_inodes(&text, port));
        }
    }
    if inodes.is_empty() {
        return Holder::NoLiveProcess;
    }
    let Ok(processes) = std::fs::read_dir("/proc") else {
        return Holder::NoLiveProcess;
    };
    for process in processes.flatten() {
        let pid = process.file_name().to_string_lossy().to_string();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(files) = std::fs::read_dir(process.path().join("fd")) else {
            continue;
        };
        for file in files.flatten() {
            let Ok(target) = std::fs::read_link(file.path()) else {
                continue;
            };
            let target = target.to_string_lossy();
            if inodes
                .iter()
                .any(|inode| target == format!("socket:[{inode}]"))
            {
                let command = std::fs::read_to_string(process.path().join("comm"))
                    .map(|c| c.trim().to_string())
                    .unwrap_or_else(|_| "?".into());
                return Holder::Process(format!("pid {pid} ({command})"));
            }
        }
    }
    Holder::NoLiveProcess
}

/// Inodes of the sockets in a /proc/net/tcp table that are bound to `port`
/// and listening (state 0A) or bound but not listening (state 07). Inode 0
/// (a socket no file refers to any more) is left out.
fn bound_socket_inodes(table: &str, port: u16) -> Vec<u64> {
    let wanted = format!("{port:04X}");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields.get(1)?.rsplit(':').next()?;
            let state = *fields.get(3)?;
            let inode: u64 = fields.get(9)?.parse().ok()?;
            (local_port == wanted && (state == "0A" || state == "07") && inode != 0)
                .then_some(inode)
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_listener_is_found() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let pid = std::process::id();
        match port_holder(port) {
            Holder::Process(holder) => {
                assert!(holder.starts_with(&format!("pid {pid} ")), "{holder}")
            }
            other => panic!("expected this process, got {other:?}"),
        }
        drop(listener);
        assert_eq!(port_holder(port), Holder::NoLiveProcess);
    }

    #[test]
    fn table_lines_are_parsed() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:2383 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0\n   1: 0100007F:2383 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 777 1\n";
        assert_eq!(bound_socket_inodes(table, 0x2383), vec![12345]);
        assert!(bound_socket_inodes(table, 80).is_empty());
    }
}
