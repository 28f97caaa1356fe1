//! TCP listeners that stand in for the proxy and for applications.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::thread;
use std::time::Duration;

use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, SockaddrStorage, bind, listen, setsockopt, socket, sockopt,
};
use nix::sys::time::TimeVal;
use nix::{setsockopt_impl, sockopt_impl};

use crate::recorder::Recorder;
use crate::{NetNs, PROXY_UID};

/// How often the accept loop looks at the stop flag.
const ACCEPT_TICK: Duration = Duration::from_millis(50);

/// What a [`Listener`] saw about one accepted connection.
#[derive(Debug)]
pub struct Accepted {
    /// The client's address, as the listener sees it.
    pub peer: SocketAddr,
    /// The accepted socket's local address. After `REDIRECT` this is the proxy port, not the original
    /// destination.
    pub local: SocketAddr,
    /// [`capture_core::original_dst()`] on the accepted socket.
    pub original_dst: io::Result<SocketAddr>,
}

/// A TCP listener in a namespace that records every connection and answers with a token.
///
/// It stands in for the sidecar proxy (on `0.0.0.0:15001`, `[::]:15006`, …) or for an application (on
/// `peer:80`, `pod:8080`, …). For each connection it records an [`Accepted`] first and then writes its
/// token and closes, so once a client has read the token the record is there. The token tells the
/// client which listener it reached.
///
/// The accept loop runs on its own thread, which is stopped and joined on `Drop`.
#[derive(Debug)]
pub struct Listener(Recorder<Accepted>);

impl Listener {
    /// Binds `addr` in `ns` as root and starts accepting.
    ///
    /// An IPv6 wildcard (`[::]`) accepts IPv4 too unless `net.ipv6.bindv6only` is set in `ns`.
    ///
    /// # Panics
    ///
    /// When `bind` or `listen` fails.
    #[must_use]
    pub fn spawn(ns: &NetNs, addr: SocketAddr, token: &str) -> Listener {
        Listener::spawn_as(ns, 0, 0, addr, token)
    }

    /// Binds `addr` in `ns` with a socket created as `uid`/`gid`, and starts accepting.
    ///
    /// The socket's owner is what the `owner` match sees for traffic the listener sends; ports below
    /// 1024 need uid 0.
    ///
    /// # Panics
    ///
    /// When the credentials cannot be set, or `bind` or `listen` fails.
    #[must_use]
    pub fn spawn_as(ns: &NetNs, uid: u32, gid: u32, addr: SocketAddr, token: &str) -> Listener {
        let bind = || TcpListener::bind(addr);
        let listener = if (uid, gid) == (0, 0) {
            ns.run(bind)
        } else {
            ns.run_as(uid, gid, bind)
        }
        .unwrap_or_else(|e| panic!("cannot listen on {addr} in {} as {uid}:{gid}: {e}", ns.name()));
        Listener::start(listener, token)
    }

    /// Binds `addr` in `ns` as the sidecar proxy ([`PROXY_UID`](crate::PROXY_UID), uid and
    /// gid), and starts accepting: the proxy's own listeners, whose traffic capture leaves
    /// alone.
    ///
    /// # Panics
    ///
    /// As [`Listener::spawn_as`].
    #[must_use]
    pub fn spawn_proxy(ns: &NetNs, addr: SocketAddr, token: &str) -> Listener {
        Listener::spawn_as(ns, PROXY_UID, PROXY_UID, addr, token)
    }

    /// Binds `addr` in `ns` as root with `IP_TRANSPARENT` (`IPV6_TRANSPARENT` for IPv6) set before
    /// `bind`, and starts accepting: the inbound proxy of `TPROXY` mode.
    ///
    /// The `TPROXY` target only hands connections to transparent sockets. A connection it delivers keeps
    /// the client's address as [`Accepted::peer`], and its original destination is the accepted socket's
    /// own [`Accepted::local`] (there is no NAT). Setting the option needs `CAP_NET_ADMIN`, which is why
    /// the socket is root's, as a proxy granted `NET_ADMIN` would hold it; the owner plays no part in how
    /// inbound traffic is captured.
    ///
    /// # Panics
    ///
    /// When the socket cannot be made transparent, or `bind` or `listen` fails.
    #[must_use]
    pub fn spawn_transparent(ns: &NetNs, addr: SocketAddr, token: &str) -> Listener {
        let listener = ns
            .run(|| transparent_listener(addr))
            .unwrap_or_else(|e| panic!("cannot listen transparently on {addr} in {}: {e}", ns.name()));
        Listener::start(listener, token)
    }

    /// Starts the accept loop on a socket that is already bound and listening (made in a
    /// namespace with [`NetNs::run`]), for tests that need the listening socket itself first.
    ///
    /// # Panics
    ///
    /// When the accept thread cannot be started.
    #[must_use]
    pub fn serve(listener: TcpListener, token: &str) -> Listener {
        Listener::start(listener, token)
    }

    /// Starts the accept loop on a bound, listening socket.
    fn start(listener: TcpListener, token: &str) -> Listener {
        // accept(2) honours SO_RCVTIMEO, which lets the loop notice the stop flag without polling.
        let tick = TimeVal::new(
            0,
            ACCEPT_TICK
                .as_micros()
                .try_into()
                .expect("a tick below one second"),
        );
        setsockopt(&listener, sockopt::ReceiveTimeout, &tick).expect("set SO_RCVTIMEO on the listener");
        let local = listener
            .local_addr()
            .expect("a bound listener has a local address");

        Listener(Recorder::spawn(
            "listener",
            token,
            local,
            move |token, accepted, stop| {
                accept_loop(&listener, token, accepted, stop);
            },
        ))
    }

    /// The token this listener replies with.
    #[must_use]
    pub fn token(&self) -> &str {
        self.0.token()
    }

    /// The bound address (with the real port if 0 was asked for).
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.0.local_addr()
    }

    /// Removes and returns the connections recorded so far, oldest first.
    #[must_use]
    pub fn take_accepted(&self) -> Vec<Accepted> {
        self.0.take_all()
    }

    /// Returns the one connection recorded so far.
    ///
    /// # Panics
    ///
    /// When there was not exactly one.
    #[must_use]
    pub fn take_one(&self) -> Accepted {
        self.0.take_one()
    }
}

sockopt_impl!(
    /// `IPV6_TRANSPARENT`, which nix has no option type for: `IpTransparent` for IPv6.
    Ipv6Transparent,
    SetOnly,
    libc::SOL_IPV6,
    libc::IPV6_TRANSPARENT,
    bool
);

/// A listening socket on `addr` with `IP_TRANSPARENT` / `IPV6_TRANSPARENT` set before `bind`.
fn transparent_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    if addr.is_ipv4() {
        setsockopt(&fd, sockopt::IpTransparent, &true)?;
    } else {
        setsockopt(&fd, Ipv6Transparent, &true)?;
    }
    bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))?;
    listen(&fd, Backlog::new(128)?)?;
    Ok(TcpListener::from(fd))
}

fn accept_loop(listener: &TcpListener, token: &str, accepted: &Mutex<Vec<Accepted>>, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, peer)) => {
                if let Err(e) = serve(stream, peer, token, accepted) {
                    eprintln!("capture-e2e: listener {token:?}: serving {peer} failed: {e}");
                }
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {}
            Err(e) => {
                eprintln!("capture-e2e: listener {token:?}: accept failed: {e}");
                thread::sleep(ACCEPT_TICK);
            }
        }
    }
}

fn serve(
    mut stream: TcpStream,
    peer: SocketAddr,
    token: &str,
    accepted: &Mutex<Vec<Accepted>>,
) -> io::Result<()> {
    let record = Accepted {
        peer,
        local: stream.local_addr()?,
        original_dst: capture_core::original_dst(&stream),
    };
    accepted
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(record);
    stream.set_write_timeout(Some(Duration::from_secs(3)))?;
    stream.write_all(token.as_bytes())
}
