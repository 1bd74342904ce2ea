//! `TCP_NODELAY` for the embedded broker's connections.
//!
//! rumqttd 0.20 binds its own listener and never sets `TCP_NODELAY` on the sockets it
//! accepts, and has no option for it. An ack is a small PUBLISH that follows the
//! broker's PUBACK of the uplink; with Nagle on it waits until the meter's TCP
//! acknowledges the PUBACK — the meter's delayed ACK, 40 ms on Linux and 200 ms or
//! more on some embedded stacks — so every ack of a meter that sends once an hour
//! was late by that much.
//!
//! Linux copies `TCP_NODELAY` from a listening socket to the sockets it accepts. So
//! once the broker listens, [`set_on_listener`] finds its listening socket among this
//! process's descriptors (`/proc/self/fd`), duplicates it with `pidfd_getfd` (Linux
//! ≥ 5.6; safe code, no raw descriptor games) and sets the option there. Connections
//! accepted before that moment (the first milliseconds) keep Nagle. Where the
//! duplication is not allowed (an older kernel, a seccomp profile), the caller logs a
//! warning and the broker runs as before.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;

use rustix::net::{getsockname, sockopt};
use rustix::process::{PidfdFlags, PidfdGetfdFlags, getpid, pidfd_getfd, pidfd_open};

/// Sets `TCP_NODELAY` on this process's TCP socket listening on `addr`.
pub fn set_on_listener(addr: SocketAddr) -> std::io::Result<()> {
    let listener = find_listener(addr)?.ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no socket of this process listens on {addr}"),
        )
    })?;
    sockopt::set_tcp_nodelay(&listener, true)?;
    Ok(())
}

/// A duplicate of this process's TCP socket listening on `addr`, if there is one.
fn find_listener(addr: SocketAddr) -> std::io::Result<Option<OwnedFd>> {
    let me = pidfd_open(getpid(), PidfdFlags::empty())?;
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let entry = entry?;
        let is_socket = std::fs::read_link(entry.path())
            .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"));
        let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        if !is_socket {
            continue;
        }
        // The descriptor may be closed meanwhile: skip it then.
        let Ok(socket) = pidfd_getfd(&me, fd, PidfdGetfdFlags::empty()) else {
            continue;
        };
        let listening = sockopt::socket_acceptconn(&socket).unwrap_or(false);
        let local = getsockname(&socket)
            .ok()
            .and_then(|a| SocketAddr::try_from(a).ok());
        if listening && local == Some(addr) {
            return Ok(Some(socket));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn sockets_accepted_after_it_have_nodelay() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let _before = TcpStream::connect(addr).unwrap();
        let (accepted_before, _) = listener.accept().unwrap();
        assert!(!accepted_before.nodelay().unwrap());

        set_on_listener(addr).unwrap();

        let _after = TcpStream::connect(addr).unwrap();
        let (accepted_after, _) = listener.accept().unwrap();
        assert!(accepted_after.nodelay().unwrap());
    }

    #[test]
    fn an_address_nobody_listens_on_is_an_error() {
        let free = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let error = set_on_listener(free).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::NotFound);
    }
}
