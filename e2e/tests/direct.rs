//! Without capture rules, traffic goes where it was sent.

use std::net::SocketAddr;

use capture_e2e::{
    APP_UID, Family, Flavor, Listener, OUTBOUND_PORT, Topology, connect_as, iptables_save_normalized,
    require_root,
};

/// With no rules, the pod's app reaches peer:80 itself, and `original_dst` is the local address.
fn pod_reaches_peer_without_rules(family: Family) {
    if !require_root() {
        return;
    }
    let topo = Topology::new();
    let proxy = Listener::spawn(
        &topo.pod,
        SocketAddr::new(family.unspecified(), OUTBOUND_PORT),
        "outbound",
    );
    let app = Listener::spawn(&topo.peer, topo.peer_addr(family, 80), "peer-app");
    let dst = topo.peer_addr(family, 80);

    let (reply, client) = connect_as(&topo.pod, APP_UID, APP_UID, dst).expect("pod app connects to peer:80");

    assert_eq!(reply, "peer-app");
    let seen = app.take_one();
    assert_eq!(seen.peer, client);
    assert_eq!(seen.local, dst);
    assert_eq!(seen.original_dst.expect("original_dst without NAT"), dst);
    assert!(proxy.take_accepted().is_empty());
    // The namespace really is empty: no table has a rule in it.
    for flavor in Flavor::ALL {
        let save = iptables_save_normalized(&topo.pod, flavor, family);
        assert!(
            !save.lines().any(|l| l.starts_with("-A ")),
            "{flavor:?} rules in a fresh netns:\n{save}"
        );
    }
}

mod pod_reaches_peer_without_rules {
    use capture_e2e::Family;

    #[test]
    fn v4() {
        super::pod_reaches_peer_without_rules(Family::V4);
    }

    #[test]
    fn v6() {
        super::pod_reaches_peer_without_rules(Family::V6);
    }
}
