//! Inbound capture: the peer's connections to the pod reach the proxy's :15006, except excluded and
//! unlisted ports.

use capture_e2e::{Family, INBOUND_PORT, Topology, require_root, test_matrix};

use crate::capture_init::{Backend, CaptureInit, Via};
#[cfg(feature = "ebpf")]
use crate::support::ebpf_row;
use crate::support::{ROOT, assert_lands, inbound_proxy, pod_app};

test_matrix!(backend, family:
    inbound_is_captured_except_excluded_ports,
    inbound_only_listed_ports,
);

/// The peer → pod:8080 lands on :15006, which learns pod:8080; `-d` port 15021 reaches the app
/// directly. capture-init runs inside the pod's namespace here.
fn inbound_is_captured_except_excluded_ports(backend: Backend, family: Family) {
    if !require_root() {
        return;
    }
    let topo = Topology::new();
    let inbound = inbound_proxy(&topo, family);
    let app = pod_app(&topo, family, 8080);
    let health = pod_app(&topo, family, 15021);
    CaptureInit::new(&topo.pod, backend, family)
        .via(Via::Enter)
        .run()
        .ok();

    let seen = assert_lands(&topo.peer, ROOT, topo.pod_addr(family, 8080), &inbound);
    // REDIRECT in nat PREROUTING rewrites the destination to the incoming interface's address
    // and the proxy port; eBPF's sk_lookup hands the connection over unchanged. original_dst()
    // (checked by assert_lands) is pod:8080 either way.
    let local_port = if backend.is_ebpf() { 8080 } else { INBOUND_PORT };
    assert_eq!(seen.local, topo.pod_addr(family, local_port));
    assert_eq!(seen.peer.ip(), topo.peer_ip(family));
    assert_lands(&topo.peer, ROOT, topo.pod_addr(family, 15021), &health);
    assert!(app.take_accepted().is_empty());
}

/// `-b 8080`: only pod:8080 is captured; pod:8082 reaches the app directly.
fn inbound_only_listed_ports(backend: Backend, family: Family) {
    if !require_root() {
        return;
    }
    let topo = Topology::new();
    let inbound = inbound_proxy(&topo, family);
    let app8082 = pod_app(&topo, family, 8082);
    CaptureInit::new(&topo.pod, backend, family)
        .set("-b", "8080")
        .via(Via::Enter)
        .run()
        .ok();

    assert_lands(&topo.peer, ROOT, topo.pod_addr(family, 8080), &inbound);
    assert_lands(&topo.peer, ROOT, topo.pod_addr(family, 8082), &app8082);
}
