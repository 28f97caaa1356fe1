//! Outbound capture: the pod's applications reach the outbound proxy, the proxy itself goes straight out.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use super::capture_default_sidecar;
use capture_e2e::flavor_family_tests;
use capture_e2e::{
    APP_UID, Family, Flavor, Listener, OUTBOUND_PORT, PROXY_UID, Topology, connect_as, require_root,
};

flavor_family_tests!(
    app_traffic_goes_to_outbound_proxy,
    proxy_uid_and_gid_bypass_capture
);

/// uid 1000 in the pod connecting to peer:80 lands on the pod's :15001, which learns peer:80.
fn app_traffic_goes_to_outbound_proxy(flavor: Flavor, family: Family) {
    if !require_root() {
        return;
    }
    let topo = Topology::new();
    capture_default_sidecar(&topo.pod, flavor);
    let proxy = Listener::spawn(
        &topo.pod,
        SocketAddr::new(family.unspecified(), OUTBOUND_PORT),
        "outbound",
    );
    let app = Listener::spawn(&topo.peer, topo.peer_addr(family, 80), "peer-app");

    let dst = topo.peer_addr(family, 80);
    let (reply, client) = connect_as(&topo.pod, APP_UID, APP_UID, dst).expect("pod app connects to peer:80");

    assert_eq!(reply, "outbound");
    let seen = proxy.take_one();
    assert_eq!(
        seen.original_dst
            .expect("original_dst on the redirected connection"),
        dst
    );
    // REDIRECT in nat OUTPUT rewrites the destination to loopback and leaves the source alone.
    assert_eq!(seen.local, SocketAddr::new(family.loopback(), OUTBOUND_PORT));
    assert_eq!(seen.peer, client);
    assert_eq!(client.ip(), topo.pod_ip(family));
    assert!(
        app.take_accepted().is_empty(),
        "the peer must not see captured traffic"
    );
}

/// Traffic owned by uid 1337 or gid 1337 (the proxy) reaches peer:80 directly.
fn proxy_uid_and_gid_bypass_capture(flavor: Flavor, family: Family) {
    if !require_root() {
        return;
    }
    let topo = Topology::new();
    capture_default_sidecar(&topo.pod, flavor);
    let proxy = Listener::spawn(
        &topo.pod,
        SocketAddr::new(family.unspecified(), OUTBOUND_PORT),
        "outbound",
    );
    let app = Listener::spawn(&topo.peer, topo.peer_addr(family, 80), "peer-app");
    let dst = topo.peer_addr(family, 80);

    // Each identity matches a different RETURN rule: the uid rule, the gid rule, or both.
    for (uid, gid) in [(PROXY_UID, PROXY_UID), (PROXY_UID, APP_UID), (APP_UID, PROXY_UID)] {
        let (reply, client) = connect_as(&topo.pod, uid, gid, dst)
            .unwrap_or_else(|e| panic!("{uid}:{gid} connects to {dst}: {e}"));

        assert_eq!(reply, "peer-app", "{uid}:{gid} must bypass capture");
        let seen = app.take_one();
        assert_eq!(seen.peer, client);
        assert_eq!(seen.local, dst);
        // No NAT on the way, so original_dst falls back to the local address.
        assert_eq!(seen.original_dst.expect("original_dst without NAT"), dst);
    }
    assert!(
        proxy.take_accepted().is_empty(),
        "the proxy's own traffic must not loop back to it"
    );
}

/// An IPv4 connection captured by a dual-stack proxy (`[::]:15001`) is reported as plain IPv4.
fn v4_on_dual_stack_proxy_is_plain_ipv4(flavor: Flavor) {
    if !require_root() {
        return;
    }
    let topo = Topology::new();
    capture_default_sidecar(&topo.pod, flavor);
    let proxy = Listener::spawn(
        &topo.pod,
        (Ipv6Addr::UNSPECIFIED, OUTBOUND_PORT).into(),
        "outbound-dual",
    );
    let dst = topo.peer_addr(Family::V4, 80);

    let (reply, _) = connect_as(&topo.pod, APP_UID, APP_UID, dst).expect("pod app connects to peer:80");

    assert_eq!(reply, "outbound-dual");
    let seen = proxy.take_one();
    // The accepted socket is AF_INET6 and its local address v4-mapped ...
    let mapped = Ipv4Addr::LOCALHOST.to_ipv6_mapped();
    assert_eq!(seen.local, SocketAddr::new(mapped.into(), OUTBOUND_PORT));
    // ... but the original destination comes back as the IPv4 address the client dialled.
    assert_eq!(
        seen.original_dst.expect("original_dst on a v4-mapped socket"),
        dst
    );
}

mod v4_on_dual_stack_proxy_is_plain_ipv4 {
    use capture_e2e::Flavor;

    #[test]
    fn legacy() {
        super::v4_on_dual_stack_proxy_is_plain_ipv4(Flavor::Legacy);
    }

    #[test]
    fn nft() {
        super::v4_on_dual_stack_proxy_is_plain_ipv4(Flavor::Nft);
    }
}
