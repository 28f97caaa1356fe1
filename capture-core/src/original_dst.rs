//! Where a captured TCP connection was really going.
//!
//! A sidecar proxy accepts connections that the capture rules sent to it and must learn the destination the
//! client asked for:
//!
//! | Capture mode | Packet rewrite           | Where the original destination is                        |
//! |--------------|--------------------------|----------------------------------------------------------|
//! | `REDIRECT`   | nat DNAT to the proxy    | the conntrack entry, read with `SO_ORIGINAL_DST`          |
//! | `TPROXY`     | none (local delivery)    | the accepted socket's own local address                  |
//! | not captured | none                     | the accepted socket's own local address                  |
//!
//! [`original_dst`] covers all three rows, so a proxy calls it on every accepted connection. The
//! eBPF backend answers the same `SO_ORIGINAL_DST` from its `getsockopt` hook, and its inbound
//! `sk_lookup` delivers like `TPROXY`, so nothing here depends on the backend.
//!
//! The system calls are socket2's (`getsockname`, `SO_ORIGINAL_DST` at `SOL_IP` and
//! `IP6T_SO_ORIGINAL_DST` at `SOL_IPV6`, `SO_TYPE`), which leaves this module without unsafe code.
//! socket2 only makes the calls; what makes the behaviour is here and stays as it was: which
//! level to ask (a dual-stack socket's v4-mapped connection is an IPv4 flow) and the fallback to
//! the local address when there is no NAT entry. socket2 reads into a `sockaddr_storage` (the
//! kernel's NAT lookup leaves the length as given, the eBPF hook sets 16 or 28), so the family
//! and the length of the answer are checked here.

#![forbid(unsafe_code)]

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;

use socket2::{SockAddr, SockRef, Type};

/// Returns the destination a client originally connected to, before `REDIRECT` rewrote it.
///
/// `sock` must be a connected TCP socket, normally one returned by `accept`. The lookup depends on the
/// family of the socket's local address:
///
/// - **IPv4** reads `getsockopt(SOL_IP, SO_ORIGINAL_DST)`, which returns a `sockaddr_in`.
/// - **IPv6** reads `getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST)`, which returns a `sockaddr_in6`.
/// - **IPv4 on a dual-stack `AF_INET6` socket**: the local address is v4-mapped (`::ffff:a.b.c.d`). The
///   kernel keeps such a connection as an IPv4 flow in conntrack, so the lookup must use `SOL_IP`; at
///   `SOL_IPV6` the kernel fails with `ENOENT`. The result is a plain [`SocketAddr::V4`].
///
/// When the kernel has no NAT entry for the connection (`ENOENT`), this returns the socket's local address
/// (v4-mapped addresses made plain IPv4). That is the original destination in `TPROXY` mode, and for a
/// connection that was not captured at all. The same holds when the kernel has no conntrack at all
/// (`ENOPROTOOPT` on a stream socket): no conntrack means no NAT.
///
/// On a listening (unconnected) socket there is no NAT entry either, so this returns its bound address.
///
/// # Errors
///
/// Returns the [`io::Error`] of the failing system call:
///
/// - `getsockname(2)` fails, for example `ENOTSOCK` when `sock` is not a socket;
/// - `getsockopt(2)` fails with anything but `ENOENT`, for example `ENOPROTOOPT` on a UDP socket.
///
/// Returns [`io::ErrorKind::InvalidInput`] for a socket that is neither `AF_INET` nor `AF_INET6`, and
/// [`io::ErrorKind::InvalidData`] if the kernel answers with an address of an unexpected size or family.
///
/// # Examples
///
/// ```no_run
/// use std::net::TcpListener;
///
/// // The proxy's outbound listener; the capture rules send outbound traffic here.
/// let listener = TcpListener::bind("0.0.0.0:15001")?;
/// let (conn, client) = listener.accept()?;
/// let dst = capture_core::original_dst(&conn)?;
/// println!("{client} wanted {dst}");
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn original_dst<S: AsFd>(sock: &S) -> io::Result<SocketAddr> {
    let sock = SockRef::from(sock);
    let local = local_addr(&sock)?;
    let nat = match local {
        SocketAddr::V4(_) => nat_dst(sock.original_dst_v4(), Level::Ip),
        SocketAddr::V6(v6) if v6.ip().to_ipv4_mapped().is_some() => {
            nat_dst(sock.original_dst_v4(), Level::Ip)
        }
        SocketAddr::V6(_) => nat_dst(sock.original_dst_v6(), Level::Ipv6),
    };
    match nat {
        Ok(dst) => Ok(dst),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(plain(local)),
        // Without conntrack the kernel registers no handler for option 80 at all. TCP can then not have
        // been NATed; for other protocols the error is real.
        Err(e) if e.raw_os_error() == Some(libc::ENOPROTOOPT) && sock.r#type()? == Type::STREAM => {
            Ok(plain(local))
        }
        Err(e) => Err(e),
    }
}

/// Turns a v4-mapped IPv6 socket address into the IPv4 address it stands for.
fn plain(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// Reads the socket's local address with `getsockname(2)`; v4-mapped addresses stay IPv6 here.
fn local_addr(sock: &SockRef<'_>) -> io::Result<SocketAddr> {
    let local = sock.local_addr()?;
    local.as_socket().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "original_dst needs an AF_INET or AF_INET6 socket, got address family {}",
                local.family()
            ),
        )
    })
}

/// The level `SO_ORIGINAL_DST` was asked at, which decides the family of the answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Level {
    /// `SOL_IP`: a `sockaddr_in`.
    Ip,
    /// `SOL_IPV6`: a `sockaddr_in6`.
    Ipv6,
}

/// Checks the answer of `SO_ORIGINAL_DST` (`SOL_IP`) or `IP6T_SO_ORIGINAL_DST` (`SOL_IPV6`):
/// a whole `sockaddr_in` or `sockaddr_in6` of the family asked for.
fn nat_dst(answer: io::Result<SockAddr>, want: Level) -> io::Result<SocketAddr> {
    let addr = answer?;
    let (family, size) = match want {
        Level::Ip => (libc::AF_INET, size_of::<libc::sockaddr_in>()),
        Level::Ipv6 => (libc::AF_INET6, size_of::<libc::sockaddr_in6>()),
    };
    let got = libc::c_int::from(addr.family());
    if got != family {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("kernel returned address family {got}, expected {family}"),
        ));
    }
    let len = usize::try_from(addr.len()).unwrap_or(usize::MAX);
    match addr.as_socket() {
        Some(dst) if len >= size => Ok(dst),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("kernel returned a {len}-byte address of family {got}, expected at least {size} bytes"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::io::ErrorKind;
    use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};

    use super::original_dst;

    /// Connects to `listener` and returns the accepted server-side stream (plus the client, kept open).
    fn accept_one(listener: &TcpListener, connect_to: SocketAddr) -> (TcpStream, TcpStream) {
        let client = TcpStream::connect(connect_to).expect("connect over loopback");
        let (server, _) = listener.accept().expect("accept the loopback connection");
        (server, client)
    }

    /// A listener on `ip`, any port; `None` (the test skips, saying so) on a host without IPv6.
    fn bind_v6(ip: Ipv6Addr) -> Option<TcpListener> {
        TcpListener::bind((ip, 0))
            .inspect_err(|e| eprintln!("skipping: cannot bind [{ip}]:0, no IPv6 here? {e}"))
            .ok()
    }

    /// Without NAT, a connection's original destination is the address it was accepted on.
    fn assert_original_dst_is_local(listener: &TcpListener) {
        let local = listener.local_addr().unwrap();
        let (server, _client) = accept_one(listener, local);
        assert_eq!(original_dst(&server).unwrap(), local);
    }

    #[test]
    fn loopback_v4_without_nat_is_local_addr() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        assert_original_dst_is_local(&listener);
    }

    #[test]
    fn loopback_v6_without_nat_is_local_addr() {
        let Some(listener) = bind_v6(Ipv6Addr::LOCALHOST) else {
            return;
        };
        assert_original_dst_is_local(&listener);
    }

    #[test]
    fn v4_on_dual_stack_socket_is_plain_ipv4() {
        let Some(listener) = bind_v6(Ipv6Addr::UNSPECIFIED) else {
            return;
        };
        let port = listener.local_addr().unwrap().port();
        let (server, _client) = accept_one(&listener, SocketAddr::from(([127, 0, 0, 1], port)));
        // The accepted socket is AF_INET6 with a v4-mapped local address, unless bindv6only is set.
        if server.local_addr().unwrap().is_ipv4() {
            eprintln!("skipping: net.ipv6.bindv6only=1 makes [::] IPv6-only");
            return;
        }
        assert!(
            matches!(server.local_addr().unwrap(), SocketAddr::V6(a) if a.ip().to_ipv4_mapped().is_some())
        );
        assert_eq!(
            original_dst(&server).unwrap(),
            SocketAddr::from(([127, 0, 0, 1], port))
        );
    }

    #[test]
    fn listening_socket_is_bound_addr() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        assert_eq!(original_dst(&listener).unwrap(), listener.local_addr().unwrap());
    }

    #[test]
    fn udp_socket_is_an_error() {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind udp 127.0.0.1");
        let err = original_dst(&sock).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOPROTOOPT), "{err}");
    }

    #[test]
    fn non_socket_is_an_error() {
        let file = File::open("/dev/null").expect("open /dev/null");
        let err = original_dst(&file).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOTSOCK), "{err}");
    }

    #[test]
    fn unix_socket_is_invalid_input() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().expect("socketpair");
        assert_eq!(original_dst(&a).unwrap_err().kind(), ErrorKind::InvalidInput);
    }
}
