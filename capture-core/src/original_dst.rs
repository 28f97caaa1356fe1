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
//! [`original_dst`] covers all three rows, so a proxy calls it on every accepted connection.

use std::io;
use std::mem::MaybeUninit;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

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
    let fd = sock.as_fd();
    let local = local_addr(fd)?;
    let nat = match local {
        SocketAddr::V4(_) => nat_dst_v4(fd),
        SocketAddr::V6(v6) if v6.ip().to_ipv4_mapped().is_some() => nat_dst_v4(fd),
        SocketAddr::V6(_) => nat_dst_v6(fd),
    };
    match nat {
        Ok(dst) => Ok(dst),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(plain(local)),
        // Without conntrack the kernel registers no handler for option 80 at all. TCP can then not have
        // been NATed; for other protocols the error is real.
        Err(e) if e.raw_os_error() == Some(libc::ENOPROTOOPT) && is_stream(fd)? => Ok(plain(local)),
        Err(e) => Err(e),
    }
}

/// Turns a v4-mapped IPv6 socket address into the IPv4 address it stands for.
fn plain(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// Reads the socket's local address with `getsockname(2)`; v4-mapped addresses stay IPv6 here.
fn local_addr(fd: BorrowedFd<'_>) -> io::Result<SocketAddr> {
    let mut storage = MaybeUninit::<libc::sockaddr_storage>::zeroed();
    let mut len = socklen::<libc::sockaddr_storage>();
    // SAFETY: `storage` is a writable sockaddr_storage and `len` holds its size, so the kernel writes at
    // most that many bytes; `fd` is a live descriptor borrowed for the duration of the call.
    let rc = unsafe { libc::getsockname(fd.as_raw_fd(), storage.as_mut_ptr().cast(), &mut len) };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: sockaddr_storage is plain old data, valid for any bit pattern, and it was zero-initialised.
    let storage = unsafe { storage.assume_init() };
    match libc::c_int::from(storage.ss_family) {
        libc::AF_INET if len as usize >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: the kernel reported AF_INET with enough bytes, so the storage holds a sockaddr_in;
            // sockaddr_storage is at least as large and as aligned as every sockaddr type.
            let sin = unsafe { &*(&raw const storage).cast::<libc::sockaddr_in>() };
            v4_from_c(sin).map(SocketAddr::V4)
        }
        libc::AF_INET6 if len as usize >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for AF_INET6 and sockaddr_in6.
            let sin6 = unsafe { &*(&raw const storage).cast::<libc::sockaddr_in6>() };
            v6_from_c(sin6).map(SocketAddr::V6)
        }
        family => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("original_dst needs an AF_INET or AF_INET6 socket, got address family {family}"),
        )),
    }
}

/// `getsockopt(SOL_IP, SO_ORIGINAL_DST)`: the pre-NAT destination of an IPv4 flow.
fn nat_dst_v4(fd: BorrowedFd<'_>) -> io::Result<SocketAddr> {
    // SAFETY: sockaddr_in is a plain C struct, valid for any bit pattern.
    let sin: libc::sockaddr_in = unsafe { sockopt(fd, libc::SOL_IP, libc::SO_ORIGINAL_DST)? };
    v4_from_c(&sin).map(SocketAddr::V4)
}

/// `getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST)`: the pre-NAT destination of an IPv6 flow.
fn nat_dst_v6(fd: BorrowedFd<'_>) -> io::Result<SocketAddr> {
    // SAFETY: sockaddr_in6 is a plain C struct, valid for any bit pattern.
    let sin6: libc::sockaddr_in6 = unsafe { sockopt(fd, libc::SOL_IPV6, libc::IP6T_SO_ORIGINAL_DST)? };
    v6_from_c(&sin6).map(SocketAddr::V6)
}

/// Whether `fd` is a `SOCK_STREAM` socket.
fn is_stream(fd: BorrowedFd<'_>) -> io::Result<bool> {
    // SAFETY: c_int is valid for any bit pattern.
    let ty: libc::c_int = unsafe { sockopt(fd, libc::SOL_SOCKET, libc::SO_TYPE)? };
    Ok(ty == libc::SOCK_STREAM)
}

/// Reads a fixed-size socket option and checks that the kernel filled it completely.
///
/// # Safety
///
/// `T` must be valid for any bit pattern (a C integer or a plain C struct such as `sockaddr_in`).
unsafe fn sockopt<T>(fd: BorrowedFd<'_>, level: libc::c_int, name: libc::c_int) -> io::Result<T> {
    let mut value = MaybeUninit::<T>::zeroed();
    let mut len = socklen::<T>();
    // SAFETY: `value` is writable for `len` bytes, and the kernel writes at most `len` bytes; `fd` is a
    // live descriptor borrowed for the duration of the call.
    let rc = unsafe { libc::getsockopt(fd.as_raw_fd(), level, name, value.as_mut_ptr().cast(), &mut len) };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    if len != socklen::<T>() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "getsockopt({level}, {name}) returned {len} bytes, expected {}",
                socklen::<T>()
            ),
        ));
    }
    // SAFETY: the memory was zeroed and then written by the kernel, and the caller guarantees that any bit
    // pattern is a valid `T`.
    Ok(unsafe { value.assume_init() })
}

fn socklen<T>() -> libc::socklen_t {
    libc::socklen_t::try_from(size_of::<T>()).expect("socket structures are smaller than 4 GiB")
}

fn v4_from_c(sin: &libc::sockaddr_in) -> io::Result<SocketAddrV4> {
    check_family(sin.sin_family, libc::AF_INET)?;
    let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
    Ok(SocketAddrV4::new(ip, u16::from_be(sin.sin_port)))
}

fn v6_from_c(sin6: &libc::sockaddr_in6) -> io::Result<SocketAddrV6> {
    check_family(sin6.sin6_family, libc::AF_INET6)?;
    let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
    // std keeps sin6_flowinfo as the raw field value, too.
    Ok(SocketAddrV6::new(
        ip,
        u16::from_be(sin6.sin6_port),
        sin6.sin6_flowinfo,
        sin6.sin6_scope_id,
    ))
}

fn check_family(got: libc::sa_family_t, want: libc::c_int) -> io::Result<()> {
    if libc::c_int::from(got) == want {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("kernel returned address family {got}, expected {want}"),
        ))
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
