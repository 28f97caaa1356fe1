//! Outbound capture: the app's connections reach the proxy's :15001 with their original
//! destination, the proxy's own and excluded ones go direct.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use capture_e2e::{
    APP_UID, Family, Listener, OUTBOUND_PORT, PROXY_UID, Topology, connect_detailed, require_root,
    test_matrix,
};

use crate::capture_init::{Backend, CaptureInit};
#[cfg(feature = "ebpf")]
use crate::support::ebpf_row;
use crate::support::{APP, PROXY, assert_lands, nobody, outbound_proxy, peer_app, peer_cidr};

test_matrix!(backend, family:
    outbound_app_is_captured_proxy_is_not,
    outbound_excluded_port_goes_direct,
    outbound_excluded_cidr_goes_direct,
    outbound_ports_captured_without_cidrs,
    outbound_excluded_cidr_wins_over_captured_port,
);

/// The app (uid 1000) → peer:80 lands on :15001, which learns peer:80; the proxy's uid and the proxy's
/// gid each go straight to the peer.
fn outbound_app_is_captured_proxy_is_not(backend: Backend, family: Family) {
    if !require_root() {
        return;
    }
    let topo = Topology::new();
    let outbound = outbound_proxy(&topo, family);
    let app = peer_app(&topo, family, 80);
    CaptureInit::new(&topo.pod, backend, family).run().ok();

    let dst = topo.peer_addr(family, 80);
    let seen = assert_lands(&topo.pod, APP, dst, &outbound);
    // Both backends send a captured connection to loopback: REDIRECT in nat OUTPUT rewrites the
    // destination, eBPF's connect hook the address the app dials.
    assert_eq!(seen.local, SocketAddr::new(family.loopback(), OUTBOUND_PORT));
    if !backend.is_ebpf() {
        // REDIRECT leaves the source the route chose alone.
        assert_eq!(seen.peer.ip(), topo.pod_ip(family));
    }
    assert_lands(&topo.pod, PROXY, dst, &app);
    assert_lands(&topo.pod, (PROXY_UID, APP_UID), dst, &app);
    assert_lands(&topo.pod, (APP_UID, PROXY_UID), dst, &app);
}

/// `-o 81`: the app → peer:81 goes straight to the peer; peer:80 is still captured.
fn outbound_excluded_port_goes_direct(backend: Backend, family: Family) {
    assert_direct_and_captured(backend, family, |topo| Bypass {
        flags: vec![("-o", "81".into())],
        direct: topo.peer_addr(family, 81),
        captured: topo.peer_addr(family, 80),
    });
}

/// `-x <peer>/32` (`/128`): the app → peer:80 goes straight to the peer; another address of the subnet
/// is still captured.
fn outbound_excluded_cidr_goes_direct(backend: Backend, family: Family) {
    assert_direct_and_captured(backend, family, |topo| Bypass {
        flags: vec![("-x", peer_cidr(topo, family))],
        direct: topo.peer_addr(family, 80),
        captured: nobody(topo, family, 80),
    });
}

/// `-i "" -q 82`: no destination is captured by address, but port 82 is captured wherever it goes.
fn outbound_ports_captured_without_cidrs(backend: Backend, family: Family) {
    assert_direct_and_captured(backend, family, |topo| Bypass {
        flags: vec![("-i", String::new()), ("-q", "82".into())],
        direct: topo.peer_addr(family, 80),
        captured: topo.peer_addr(family, 82),
    });
}

/// `-x <peer>/32 -q 82`: peer:82 goes DIRECT. istio-iptables appends the `-x` RETURN rules to
/// ISTIO_OUTPUT before the `-q` redirect rules, so an excluded CIDR wins over a captured port; we keep
/// Istio's order. Port 82 to any other address is still captured.
fn outbound_excluded_cidr_wins_over_captured_port(backend: Backend, family: Family) {
    assert_direct_and_captured(backend, family, |topo| Bypass {
        flags: vec![("-x", peer_cidr(topo, family)), ("-q", "82".into())],
        direct: topo.peer_addr(family, 82),
        captured: nobody(topo, family, 82),
    });
}

/// A bypass scenario: what capture-init is given, and where the app's connections should go.
struct Bypass {
    /// Flags and values added to capture-init's command.
    flags: Vec<(&'static str, String)>,
    /// Reaches the peer's app on this port uncaptured.
    direct: SocketAddr,
    /// Still lands on the proxy's :15001.
    captured: SocketAddr,
}

/// Runs the scenario `bypass` describes for a fresh topology.
fn assert_direct_and_captured(backend: Backend, family: Family, bypass: impl FnOnce(&Topology) -> Bypass) {
    if !require_root() {
        return;
    }
    let topo = Topology::new();
    let Bypass {
        flags,
        direct,
        captured,
    } = bypass(&topo);
    let outbound = outbound_proxy(&topo, family);
    let app = peer_app(&topo, family, direct.port());
    let mut init = CaptureInit::new(&topo.pod, backend, family);
    for (flag, value) in &flags {
        init = init.set(flag, value);
    }
    init.run().ok();

    assert_lands(&topo.pod, APP, direct, &app);
    assert_lands(&topo.pod, APP, captured, &outbound);
}

test_matrix!(backend: outbound_dual_stack_sockets_to_an_ipv4_peer);

/// IPv4 through dual-stack sockets, on an IPv4-only capture: an `AF_INET6` app socket dialling
/// `::ffff:<peer>:80` is captured as IPv4, and the app's `getpeername()` still says the mapped
/// peer; a dual-stack proxy listener (`[::]:15001`) learns the original destination of that and of
/// a plain `AF_INET` app connection as plain IPv4.
fn outbound_dual_stack_sockets_to_an_ipv4_peer(backend: Backend) {
    if !require_root() {
        return;
    }
    let topo = Topology::new();
    let outbound = Listener::spawn_proxy(
        &topo.pod,
        SocketAddr::new(Family::V6.unspecified(), OUTBOUND_PORT),
        "outbound-proxy",
    );
    let app = peer_app(&topo, Family::V4, 80);
    CaptureInit::new(&topo.pod, backend, Family::V4).run().ok();

    let peer = topo.peer_addr(Family::V4, 80);
    let IpAddr::V4(peer_ip) = peer.ip() else {
        unreachable!("an IPv4 peer")
    };
    let mapped = SocketAddr::new(peer_ip.to_ipv6_mapped().into(), 80);
    let conn = connect_detailed(&topo.pod, APP_UID, APP_UID, mapped).expect("the AF_INET6 app connects");
    assert_eq!(conn.reply, outbound.token(), "the AF_INET6 app is captured");
    assert_eq!(
        conn.peer, mapped,
        "getpeername() shows the mapped original destination"
    );
    let seen = outbound.take_one();
    assert_eq!(
        *seen.original_dst.as_ref().expect("original_dst"),
        peer,
        "the proxy learns the IPv4 destination"
    );

    let conn = connect_detailed(&topo.pod, APP_UID, APP_UID, peer).expect("the AF_INET app connects");
    assert_eq!(conn.reply, outbound.token());
    assert_eq!(conn.peer, peer);
    let seen = outbound.take_one();
    assert_eq!(*seen.original_dst.as_ref().expect("original_dst"), peer);
    assert_eq!(
        seen.local,
        SocketAddr::new(Ipv4Addr::LOCALHOST.to_ipv6_mapped().into(), OUTBOUND_PORT),
        "the proxy's socket is AF_INET6, its local address v4-mapped"
    );
    assert!(
        app.take_accepted().is_empty(),
        "the peer sees no captured traffic"
    );
}
