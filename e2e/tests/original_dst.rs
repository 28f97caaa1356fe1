//! What the kernel answers to `SO_ORIGINAL_DST` on a dual-stack socket, pinned so a kernel change shows up.

use std::net::{Ipv6Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::thread;

use nix::errno::Errno;
use nix::sys::socket::{getsockopt, setsockopt, sockopt};
use nix::sys::time::TimeVal;

use super::capture_default_sidecar;
use capture_e2e::{APP_UID, Family, Flavor, OUTBOUND_PORT, Topology, connect_as, require_root};

/// An IPv4 connection accepted on `[::]` is an IPv4 flow in conntrack: `SOL_IPV6` finds no entry
/// (`ENOENT`), `SOL_IP` returns the `sockaddr_in` of the original destination.
#[test]
fn v4_mapped_socket_answers_at_sol_ip_only() {
    if !require_root() {
        return;
    }
    let topo = Topology::new();
    capture_default_sidecar(&topo.pod, Flavor::Nft);
    let listener = topo
        .pod
        .run(|| TcpListener::bind((Ipv6Addr::UNSPECIFIED, OUTBOUND_PORT)))
        .expect("bind [::]:15001 in the pod");
    let dst = topo.peer_addr(Family::V4, 80);

    let (v6_level, v4_level) = thread::scope(|scope| {
        let client = scope.spawn(|| connect_as(&topo.pod, APP_UID, APP_UID, dst));
        let conn = accept(&listener);
        let answers = (
            getsockopt(&conn, sockopt::Ip6tOriginalDst),
            getsockopt(&conn, sockopt::OriginalDst),
        );
        drop(conn);
        client.join().expect("client thread").expect("client gets EOF");
        answers
    });

    assert_eq!(v6_level.map(|_| ()), Err(Errno::ENOENT));
    let sin = v4_level.expect("SOL_IP answers on a v4-mapped socket");
    assert_eq!(libc::c_int::from(sin.sin_family), libc::AF_INET);
    let got = SocketAddrV4::new(
        u32::from_be(sin.sin_addr.s_addr).into(),
        u16::from_be(sin.sin_port),
    );
    assert_eq!(SocketAddr::V4(got), dst);
}

/// Without conntrack state, both levels say `ENOENT`, which `original_dst` turns into the local address.
#[test]
fn connection_without_nat_is_enoent() {
    if !require_root() {
        return;
    }
    let topo = Topology::new();
    let listener = topo
        .peer
        .run(|| TcpListener::bind(topo.peer_addr(Family::V4, 80)))
        .expect("bind peer:80");
    let dst = topo.peer_addr(Family::V4, 80);

    let err = thread::scope(|scope| {
        let client = scope.spawn(|| connect_as(&topo.pod, APP_UID, APP_UID, dst));
        let conn = accept(&listener);
        let err = getsockopt(&conn, sockopt::OriginalDst).map(|_| ());
        drop(conn);
        client.join().expect("client thread").expect("client gets EOF");
        err
    });

    assert_eq!(err, Err(Errno::ENOENT));
}

/// Accepts one connection, or panics after a few seconds instead of hanging the test run.
fn accept(listener: &TcpListener) -> TcpStream {
    setsockopt(listener, sockopt::ReceiveTimeout, &TimeVal::new(5, 0)).expect("set an accept timeout");
    listener.accept().expect("a connection arrives within 5 s").0
}
