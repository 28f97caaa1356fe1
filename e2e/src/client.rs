//! Client connections made from inside a namespace, as a chosen user.

use std::io::{self, Read};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::ptr;
use std::time::Duration;

use nix::sys::socket::{
    AddressFamily, SockFlag, SockType, SockaddrStorage, bind, connect, setsockopt, socket, sockopt,
};
use nix::sys::time::TimeVal;

use crate::NetNs;

/// How long a client waits to connect and for the reply; a packet that goes nowhere fails within this.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(3);

/// Connects to `dst` from inside `ns` as `uid`/`gid` and returns the reply and the client's local address.
///
/// The connection is made on a dedicated thread that enters `ns` and then changes only its own
/// credentials, so the `owner` match of the capture rules sees `uid`/`gid`. The reply is everything the
/// server sends before closing; a [`Listener`](crate::Listener) sends its token. Connecting and reading
/// each time out after a few seconds.
///
/// # Errors
///
/// Returns the error of the failing step: entering the namespace, changing credentials, `socket`,
/// `connect` (for example `ECONNREFUSED`, `ENETUNREACH`, or `EINPROGRESS` on timeout), or reading the
/// reply (`EAGAIN` on timeout).
pub fn connect_as(ns: &NetNs, uid: u32, gid: u32, dst: SocketAddr) -> io::Result<(String, SocketAddr)> {
    connect_inner(ns, uid, gid, None, dst).map(|c| (c.reply, c.local))
}

/// What the client side of a [`connect_detailed`] connection saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connected {
    /// Everything the server sent before closing.
    pub reply: String,
    /// The client socket's local address (`getsockname`).
    pub local: SocketAddr,
    /// The client socket's peer (`getpeername`) while connected: where the app believes it is
    /// connected, whatever capture did.
    pub peer: SocketAddr,
}

/// Like [`connect_as`], and also reports the client's `getpeername()`.
///
/// # Errors
///
/// As [`connect_as`], plus the error of `getpeername`.
pub fn connect_detailed(ns: &NetNs, uid: u32, gid: u32, dst: SocketAddr) -> io::Result<Connected> {
    connect_inner(ns, uid, gid, None, dst)
}

/// Like [`connect_as`], but binds the client socket to `src` (port 0) before connecting.
///
/// Use it to connect from a specific address such as `127.0.0.6`, the source Envoy uses for inbound
/// passthrough.
///
/// # Errors
///
/// As [`connect_as`], plus the error of `bind` (for example `EADDRNOTAVAIL`).
pub fn connect_as_from(
    ns: &NetNs,
    uid: u32,
    gid: u32,
    src: IpAddr,
    dst: SocketAddr,
) -> io::Result<(String, SocketAddr)> {
    connect_inner(ns, uid, gid, Some(src), dst).map(|c| (c.reply, c.local))
}

fn connect_inner(
    ns: &NetNs,
    uid: u32,
    gid: u32,
    src: Option<IpAddr>,
    dst: SocketAddr,
) -> io::Result<Connected> {
    ns.run_as(uid, gid, || {
        let family = if dst.is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
        // Linux bounds a blocking connect(2) by SO_SNDTIMEO.
        let timeout = TimeVal::new(
            CLIENT_TIMEOUT.as_secs().try_into().expect("a small timeout"),
            CLIENT_TIMEOUT.subsec_micros().into(),
        );
        setsockopt(&fd, sockopt::SendTimeout, &timeout)?;
        setsockopt(&fd, sockopt::ReceiveTimeout, &timeout)?;
        if let Some(src) = src {
            bind(fd.as_raw_fd(), &SockaddrStorage::from(SocketAddr::new(src, 0)))?;
        }
        connect(fd.as_raw_fd(), &SockaddrStorage::from(dst))?;
        let mut stream = TcpStream::from(fd);
        let local = stream.local_addr()?;
        let peer = stream.peer_addr()?;
        let mut reply = String::new();
        stream.read_to_string(&mut reply)?;
        Ok(Connected { reply, local, peer })
    })
}

/// Sets the calling thread's uid and gid (real, effective, saved and fs) and drops supplementary groups.
///
/// Raw syscalls, because the glibc wrappers change every thread of the process (they broadcast the change
/// with a signal, as POSIX requires). On x86_64 and aarch64 these are the 32-bit-id syscalls.
///
/// Changing the effective uid of any thread resets the process's "dumpable" flag, which only matters for
/// ptrace and core dumps.
///
/// In a test namespace, call it through [`NetNs::run_as`](crate::NetNs::run_as): a thread that
/// [`NetNs::run`](crate::NetNs::run) put in the namespace must be able to go back.
///
/// # Errors
///
/// When a syscall fails (without `CAP_SETUID`/`CAP_SETGID`, `EPERM`).
pub fn assume_identity(uid: u32, gid: u32) -> io::Result<()> {
    // Order matters: groups and gid need CAP_SETGID, which goes away with the uid change.
    // SAFETY: setgroups(0, NULL) reads no memory and affects only the calling thread's credentials.
    check(unsafe { libc::syscall(libc::SYS_setgroups, 0, ptr::null::<libc::gid_t>()) })?;
    // SAFETY: setresgid takes three ids by value and affects only the calling thread's credentials.
    check(unsafe { libc::syscall(libc::SYS_setresgid, gid, gid, gid) })?;
    // SAFETY: setresuid takes three ids by value and affects only the calling thread's credentials.
    check(unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) })?;
    Ok(())
}

fn check(rc: libc::c_long) -> io::Result<()> {
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
