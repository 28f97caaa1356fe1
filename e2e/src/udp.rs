//! UDP in a namespace: a [`Responder`] that stands in for a DNS server or for the proxy's DNS
//! listener, and [`exchange_as`], a client that sends one datagram as a chosen user and reports
//! who answered.
//!
//! UDP has no original destination to read back after `REDIRECT`, so what a test can see is who
//! received the datagram (the responder's [`Received::peer`]) and where the answer came from
//! ([`Answer::from`]): after `REDIRECT`, conntrack rewrites the source of the proxy's answer back to
//! the address the client sent to.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::thread;
use std::time::Duration;

use crate::NetNs;
use crate::recorder::Recorder;

/// How often the receive loop looks at the stop flag.
const RECV_TICK: Duration = Duration::from_millis(50);
/// How long [`exchange_as`] waits for the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(3);
/// The largest datagram either side reads.
const MAX_DATAGRAM: usize = 2048;

/// One datagram a [`Responder`] received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The sender's address, as the responder sees it.
    pub peer: SocketAddr,
    /// What it sent.
    pub payload: Vec<u8>,
}

/// A UDP socket in a namespace that records every datagram and answers each with its token.
///
/// It records a [`Received`] first and then sends its token back to the sender from the bound
/// address, so once a client has the answer the record is there. The receive loop runs on its own
/// thread, which is stopped and joined (and the socket closed) on `Drop`.
#[derive(Debug)]
pub struct Responder(Recorder<Received>);

impl Responder {
    /// Binds `addr` in `ns` as root and starts answering.
    ///
    /// # Panics
    ///
    /// When `bind` fails.
    #[must_use]
    pub fn spawn(ns: &NetNs, addr: SocketAddr, token: &str) -> Responder {
        Responder::spawn_as(ns, 0, 0, addr, token)
    }

    /// Binds `addr` in `ns` with a socket created as `uid`/`gid`, and starts answering.
    ///
    /// The socket's owner is what the `owner` match (`meta skuid`) sees for the answers it sends;
    /// ports below 1024 need uid 0.
    ///
    /// # Panics
    ///
    /// When the credentials cannot be set, or `bind` fails.
    #[must_use]
    pub fn spawn_as(ns: &NetNs, uid: u32, gid: u32, addr: SocketAddr, token: &str) -> Responder {
        let socket = ns
            .run_as(uid, gid, || UdpSocket::bind(addr))
            .unwrap_or_else(|e| panic!("cannot bind UDP {addr} in {} as {uid}:{gid}: {e}", ns.name()));
        socket
            .set_read_timeout(Some(RECV_TICK))
            .expect("set SO_RCVTIMEO on the responder");
        let local = socket.local_addr().expect("a bound socket has a local address");
        Responder(Recorder::spawn(
            "UDP responder",
            token,
            local,
            move |token, received, stop| {
                answer_loop(&socket, token, received, stop);
            },
        ))
    }

    /// The token this responder answers with.
    #[must_use]
    pub fn token(&self) -> &str {
        self.0.token()
    }

    /// The bound address (with the real port if 0 was asked for).
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.0.local_addr()
    }

    /// Removes and returns the datagrams recorded so far, oldest first.
    #[must_use]
    pub fn take_received(&self) -> Vec<Received> {
        self.0.take_all()
    }

    /// Returns the one datagram recorded so far.
    ///
    /// # Panics
    ///
    /// When there was not exactly one.
    #[must_use]
    pub fn take_one(&self) -> Received {
        self.0.take_one()
    }
}

fn answer_loop(socket: &UdpSocket, token: &str, received: &Mutex<Vec<Received>>, stop: &AtomicBool) {
    let mut buf = [0u8; MAX_DATAGRAM];
    while !stop.load(Ordering::Relaxed) {
        match socket.recv_from(&mut buf) {
            Ok((len, peer)) => {
                received
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(Received {
                        peer,
                        payload: buf[..len].to_vec(),
                    });
                if let Err(e) = socket.send_to(token.as_bytes(), peer) {
                    eprintln!("capture-e2e: UDP responder {token:?}: answering {peer} failed: {e}");
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => {
                eprintln!("capture-e2e: UDP responder {token:?}: receive failed: {e}");
                thread::sleep(RECV_TICK);
            }
        }
    }
}

/// What the client of an [`exchange_as`] got back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The first datagram that came back; a [`Responder`] sends its token.
    pub reply: String,
    /// Where it came from (`recvfrom`): the address the client sent to, if NAT was undone.
    pub from: SocketAddr,
    /// The client socket's port (its address is the wildcard: the socket is not connected, so that
    /// an answer from any source is seen).
    pub local_port: u16,
}

/// Sends `payload` to `dst` from inside `ns` as `uid`/`gid` and returns the first datagram that
/// comes back, from whichever address.
///
/// As [`connect_as`](crate::connect_as), the socket is made on a dedicated thread that enters `ns`
/// and then changes only its own credentials, so the `owner` match sees `uid`/`gid`. The socket is
/// bound to the wildcard of `dst`'s family and not connected, and closed before returning. The
/// answer is awaited for a few seconds.
///
/// # Errors
///
/// Returns the error of the failing step: entering the namespace, changing credentials, `bind`,
/// `sendto`, or `recvfrom` (`EAGAIN` when nothing came back in time).
pub fn exchange_as(ns: &NetNs, uid: u32, gid: u32, dst: SocketAddr, payload: &[u8]) -> io::Result<Answer> {
    let wildcard: SocketAddr = if dst.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    exchange_from_as(ns, uid, gid, wildcard, dst, payload)
}

/// Like [`exchange_as`], but binds the client socket to `src` first: a given port (for example one
/// another client just used, to send on the same 4-tuple) or address.
///
/// # Errors
///
/// As [`exchange_as`] (`bind` fails with `EADDRINUSE` while another socket holds the port).
pub fn exchange_from_as(
    ns: &NetNs,
    uid: u32,
    gid: u32,
    src: SocketAddr,
    dst: SocketAddr,
    payload: &[u8],
) -> io::Result<Answer> {
    ns.run_as(uid, gid, || {
        let socket = UdpSocket::bind(src)?;
        socket.set_read_timeout(Some(CLIENT_TIMEOUT))?;
        socket.send_to(payload, dst)?;
        let mut buf = [0u8; MAX_DATAGRAM];
        let (len, from) = socket.recv_from(&mut buf)?;
        Ok(Answer {
            reply: String::from_utf8_lossy(&buf[..len]).into_owned(),
            from,
            local_port: socket.local_addr()?.port(),
        })
    })
}

/// Like [`exchange_as`], but with a connected socket: bound to the wildcard of `dst`'s family,
/// `connect`ed to `dst`, so the kernel only delivers datagrams whose source is the connected
/// peer. Returns the answer and the socket's peer (`getpeername`) after it came.
///
/// # Errors
///
/// As [`exchange_as`], and the error of `connect` or `getpeername`.
pub fn exchange_connected_as(
    ns: &NetNs,
    uid: u32,
    gid: u32,
    dst: SocketAddr,
    payload: &[u8],
) -> io::Result<(Answer, SocketAddr)> {
    let wildcard: SocketAddr = if dst.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    ns.run_as(uid, gid, || {
        let socket = UdpSocket::bind(wildcard)?;
        socket.set_read_timeout(Some(CLIENT_TIMEOUT))?;
        socket.connect(dst)?;
        socket.send(payload)?;
        let mut buf = [0u8; MAX_DATAGRAM];
        let (len, from) = socket.recv_from(&mut buf)?;
        let answer = Answer {
            reply: String::from_utf8_lossy(&buf[..len]).into_owned(),
            from,
            local_port: socket.local_addr()?.port(),
        };
        Ok((answer, socket.peer_addr()?))
    })
}
