//! Inbound capture: traffic to the pod reaches the inbound proxy, except excluded ports and the proxy's own
//! passthrough connections.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::capture_default_sidecar;
use capture_e2e::flavor_family_tests;
use capture_e2e::{
    Family, Flavor, INBOUND_PORT, Listener, PROXY_UID, Topology, connect_as, connect_as_from, require_root,
};

flavor_family_tests!(
    peer_traffic_goes_to_inbound_proxy,
    proxy_passthrough_from_envoy_source_reaches_app,
    validation_probe_lands_on_inbound_proxy,
);

/// The peer connecting to pod:8080 lands on the pod's :15006, which learns pod:8080; the excluded port
/// 15021 reaches the pod directly.
fn peer_traffic_goes_to_inbound_proxy(flavor: Flavor, family: Family) {
    if !require_root() {
        return;
    }
    let topo = Topology::new();
    capture_default_sidecar(&topo.pod, flavor);
    let proxy = Listener::spawn(
        &topo.pod,
        SocketAddr::new(family.unspecified(), INBOUND_PORT),
        "inbound",
    );
    let app = Listener::spawn(&topo.pod, topo.pod_addr(family, 8080), "pod-app");
    let health = Listener::spawn(&topo.pod, topo.pod_addr(family, 15021), "pod-15021");

    let dst = topo.pod_addr(family, 8080);
    let (reply, client) = connect_as(&topo.peer, 0, 0, dst).expect("peer connects to pod:8080");

    assert_eq!(reply, "inbound");
    let seen = proxy.take_one();
    assert_eq!(
        seen.original_dst
            .expect("original_dst on the redirected connection"),
        dst
    );
    // REDIRECT in nat PREROUTING sends to the address of the incoming interface.
    assert_eq!(seen.local, topo.pod_addr(family, INBOUND_PORT));
    assert_eq!(seen.peer, client);
    assert_eq!(client.ip(), topo.peer_ip(family));
    assert!(
        app.take_accepted().is_empty(),
        "the app must not see captured traffic"
    );

    // -d 15090,15021,15020: these ports are not captured.
    let excluded = topo.pod_addr(family, 15021);
    let (reply, _) = connect_as(&topo.peer, 0, 0, excluded).expect("peer connects to pod:15021");
    assert_eq!(reply, "pod-15021");
    assert_eq!(
        health.take_one().original_dst.expect("original_dst without NAT"),
        excluded
    );
}

/// Envoy forwards inbound traffic to the app from 127.0.0.6 (::6), which the rules let through; the same
/// connection from the pod address would be captured again by the inbound proxy.
fn proxy_passthrough_from_envoy_source_reaches_app(flavor: Flavor, family: Family) {
    if !require_root() {
        return;
    }
    let topo = Topology::new();
    capture_default_sidecar(&topo.pod, flavor);
    let proxy = Listener::spawn(
        &topo.pod,
        SocketAddr::new(family.unspecified(), INBOUND_PORT),
        "inbound",
    );
    let app = Listener::spawn(&topo.pod, topo.pod_addr(family, 8080), "pod-app");
    let dst = topo.pod_addr(family, 8080);
    let passthrough: IpAddr = match family {
        Family::V4 => Ipv4Addr::new(127, 0, 0, 6).into(),
        Family::V6 => Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 6).into(),
    };

    let (reply, client) = connect_as_from(&topo.pod, PROXY_UID, PROXY_UID, passthrough, dst)
        .expect("proxy connects from the passthrough address");
    assert_eq!(reply, "pod-app");
    let seen = app.take_one();
    assert_eq!(seen.peer, client);
    assert_eq!(seen.peer.ip(), passthrough);

    // Without the passthrough source, the proxy calling its own pod is sent to the inbound proxy.
    let (reply, _) = connect_as(&topo.pod, PROXY_UID, PROXY_UID, dst).expect("proxy connects to its pod");
    assert_eq!(reply, "inbound");
    assert_eq!(
        proxy
            .take_one()
            .original_dst
            .expect("original_dst on the redirected connection"),
        dst
    );
    assert!(app.take_accepted().is_empty());
}

/// istio-validation (istio-capture.md §6): uid 1337 dials 127.0.0.6:15002 (`[::6]:15002`) from loopback;
/// only the uid-1337 `-o lo` rule can deliver it, to the inbound port, with the probe port as original
/// destination.
fn validation_probe_lands_on_inbound_proxy(flavor: Flavor, family: Family) {
    if !require_root() {
        return;
    }
    let topo = Topology::new();
    capture_default_sidecar(&topo.pod, flavor);
    let validator = Listener::spawn(
        &topo.pod,
        SocketAddr::new(family.loopback(), INBOUND_PORT),
        "validator",
    );
    let probe = match family {
        Family::V4 => SocketAddr::from(([127, 0, 0, 6], 15002)),
        Family::V6 => SocketAddr::from((Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 6), 15002)),
    };

    let (reply, _) = connect_as_from(&topo.pod, PROXY_UID, PROXY_UID, family.loopback(), probe)
        .expect("the validation client reaches a listener");

    assert_eq!(reply, "validator");
    let seen = validator.take_one();
    assert_eq!(seen.original_dst.expect("original_dst on the probe"), probe);
}
