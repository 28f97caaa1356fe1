//! A small transparent L4 proxy: what a sidecar does with the connections capture sends it.
//!
//! It listens where capture redirects (`[::]:15001` for the pod's outbound connections,
//! `[::]:15006` for inbound ones; both families on one dual-stack socket each), asks
//! [`capture_core::original_dst()`] where every accepted connection was going, connects there
//! and copies bytes both ways until both sides are done. One line per connection on stderr:
//!
//! ```text
//! transparent-proxy: outbound 10.7.0.1:41234 -> 10.7.0.2:80 (original destination): 5 bytes sent, 5 bytes back
//! ```
//!
//! It works unchanged with every capture backend: after `REDIRECT` (iptables or nftables) the
//! original destination is the conntrack entry's, after `TPROXY` and the eBPF backend's
//! `sk_lookup` it is the accepted socket's own local address, and the eBPF backend answers
//! `SO_ORIGINAL_DST` itself for the outbound connections it redirected; `original_dst()` covers
//! all of them, IPv4, IPv6 and IPv4 on a dual-stack socket.
//!
//! Two things keep the proxy's own connections out of capture, as in Istio:
//!
//! - it runs as the proxy's uid (`capture-init -u 1337`), whose connections capture leaves
//!   alone. Started as root with `--user 1337`, it binds its listeners first (`--transparent`
//!   needs `CAP_NET_ADMIN`) and then drops to that uid and gid, before the first connection;
//! - an inbound connection is forwarded from the passthrough source `127.0.0.6` (`::6`), which
//!   capture lets through to the pod's own address; from any other source the proxy's
//!   connection to its own pod would be sent back to 15006.
//!
//! ```text
//! transparent-proxy [--outbound ADDR] [--inbound ADDR] [--transparent] [--user UID[:GID]]
//!
//!   --outbound ADDR   listener for captured outbound connections (default [::]:15001)
//!   --inbound ADDR    listener for captured inbound connections (default [::]:15006)
//!   --transparent     IP_TRANSPARENT on the inbound listener: needed for `-m TPROXY`
//!   --user UID[:GID]  switch to this uid and gid (GID defaults to UID) after binding
//! ```
//!
//! Run it with `cargo run -p capture-core --example transparent-proxy -- --user 1337` in a pod
//! network namespace that `capture-init -u 1337 …` captured.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use socket2::{Domain, Socket, Type};
use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// How long a connect to the original destination may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Which listener accepted a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    Outbound,
    Inbound,
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }
}

#[derive(Debug)]
struct Options {
    outbound: SocketAddr,
    inbound: SocketAddr,
    transparent: bool,
    user: Option<(u32, u32)>,
}

fn main() -> ExitCode {
    let options = match parse(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(e) => {
            eprintln!("transparent-proxy: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("transparent-proxy: {e}");
            ExitCode::from(1)
        }
    }
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut options = Options {
        outbound: SocketAddr::from((Ipv6Addr::UNSPECIFIED, 15001)),
        inbound: SocketAddr::from((Ipv6Addr::UNSPECIFIED, 15006)),
        transparent: false,
        user: None,
    };
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--outbound" => options.outbound = socket_addr(&flag, &value()?)?,
            "--inbound" => options.inbound = socket_addr(&flag, &value()?)?,
            "--transparent" => options.transparent = true,
            "--user" => options.user = Some(user(&value()?)?),
            _ => {
                return Err(format!(
                    "unknown argument {flag:?} (see the example's documentation)"
                ));
            }
        }
    }
    Ok(options)
}

fn socket_addr(flag: &str, value: &str) -> Result<SocketAddr, String> {
    value
        .parse()
        .map_err(|_| format!("invalid value {value:?} for {flag}: not an address:port ([::]:15001)"))
}

/// `UID` or `UID:GID`; the gid defaults to the uid.
fn user(value: &str) -> Result<(u32, u32), String> {
    let id = |s: &str| {
        s.parse::<u32>()
            .map_err(|_| format!("invalid value {value:?} for --user: not UID or UID:GID"))
    };
    match value.split_once(':') {
        Some((uid, gid)) => Ok((id(uid)?, id(gid)?)),
        None => id(value).map(|uid| (uid, uid)),
    }
}

fn run(options: &Options) -> Result<(), String> {
    // Bind while still privileged, switch user before accepting anything.
    let outbound = listen(options.outbound, false)
        .map_err(|e| format!("cannot listen on {} (outbound): {e}", options.outbound))?;
    let inbound = listen(options.inbound, options.transparent)
        .map_err(|e| format!("cannot listen on {} (inbound): {e}", options.inbound))?;
    if let Some((uid, gid)) = options.user {
        switch_user(uid, gid)?;
    }
    eprintln!(
        "transparent-proxy: listening on {} (outbound) and {} (inbound{}) as uid {} gid {}",
        options.outbound,
        options.inbound,
        if options.transparent { ", transparent" } else { "" },
        nix::unistd::getuid(),
        nix::unistd::getgid()
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the tokio runtime: {e}"))?;
    runtime.block_on(async {
        let outbound = TcpListener::from_std(outbound).map_err(|e| format!("outbound listener: {e}"))?;
        let inbound = TcpListener::from_std(inbound).map_err(|e| format!("inbound listener: {e}"))?;
        tokio::spawn(serve(outbound, Direction::Outbound));
        serve(inbound, Direction::Inbound).await;
        Ok(())
    })
}

/// A listening socket on `addr`; an IPv6 address also accepts IPv4 (v4-mapped), whatever
/// `net.ipv6.bindv6only` says.
fn listen(addr: SocketAddr, transparent: bool) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    if transparent {
        // TPROXY delivers only to transparent sockets; on a dual-stack socket IPV6_TRANSPARENT
        // covers IPv4 as well.
        if addr.is_ipv4() {
            socket.set_ip_transparent_v4(true)?;
        } else {
            socket.set_ip_transparent_v6(true)?;
        }
    }
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Drops supplementary groups and switches to `uid` and `gid` (no-op when already them).
fn switch_user(uid: u32, gid: u32) -> Result<(), String> {
    use nix::unistd::{Gid, Uid, getgid, getuid, setgid, setgroups, setuid};
    if getuid() == Uid::from_raw(uid) && getgid() == Gid::from_raw(gid) {
        return Ok(());
    }
    setgroups(&[])
        .and_then(|()| setgid(Gid::from_raw(gid)))
        .and_then(|()| setuid(Uid::from_raw(uid)))
        .map_err(|e| format!("cannot switch to uid {uid} gid {gid}: {e} (start as root, or as that user)"))
}

async fn serve(listener: TcpListener, direction: Direction) {
    let port = listener.local_addr().map_or(0, |a| a.port());
    loop {
        match listener.accept().await {
            Ok((client, peer)) => {
                tokio::spawn(handle(client, plain(peer), direction, port));
            }
            Err(e) => {
                // Out of descriptors and the like: wait a little instead of spinning.
                eprintln!("transparent-proxy: {} accept failed: {e}", direction.as_str());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// One connection, start to end, and its log line.
async fn handle(client: TcpStream, peer: SocketAddr, direction: Direction, listen_port: u16) {
    let what = direction.as_str();
    // Where the client was going: the one call a transparent proxy needs.
    let dst = match capture_core::original_dst(&client) {
        Ok(dst) => dst,
        Err(e) => {
            eprintln!("transparent-proxy: {what} {peer}: no original destination: {e}");
            return;
        }
    };
    match forward(client, dst, direction, listen_port).await {
        Ok((sent, back)) => eprintln!(
            "transparent-proxy: {what} {peer} -> {dst} (original destination): \
             {sent} bytes sent, {back} bytes back"
        ),
        Err(e) => eprintln!("transparent-proxy: {what} {peer} -> {dst} (original destination): {e}"),
    }
}

/// Forwards one accepted connection to its original destination `dst`; returns the bytes
/// copied each way.
async fn forward(
    mut client: TcpStream,
    dst: SocketAddr,
    direction: Direction,
    listen_port: u16,
) -> Result<(u64, u64), String> {
    let local = client
        .local_addr()
        .map_err(|e| format!("no local address: {e}"))?;
    if dst == plain(local) && local.port() == listen_port {
        // Nothing redirected this connection: it was made to the proxy port itself, and
        // forwarding it would connect the proxy to itself.
        return Err("the proxy's own listener, not captured; closed".to_owned());
    }
    let mut upstream = match tokio::time::timeout(CONNECT_TIMEOUT, connect(dst, direction)).await {
        Ok(Ok(upstream)) => upstream,
        Ok(Err(e)) => return Err(format!("connect failed: {e}")),
        Err(_) => return Err(format!("connect timed out after {CONNECT_TIMEOUT:?}")),
    };
    copy_bidirectional(&mut client, &mut upstream)
        .await
        .map_err(|e| format!("forwarding failed: {e}"))
}

/// Connects to `dst`; an inbound connection from the passthrough source (`127.0.0.6`, `::6`).
async fn connect(dst: SocketAddr, direction: Direction) -> io::Result<TcpStream> {
    let socket = if dst.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if direction == Direction::Inbound {
        let source = match dst.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::new(127, 0, 0, 6)),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 6)),
        };
        socket.bind(SocketAddr::new(source, 0))?;
    }
    socket.connect(dst).await
}

/// A v4-mapped address (`[::ffff:10.0.0.1]:80`, as a dual-stack socket reports IPv4) as plain IPv4.
fn plain(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}
