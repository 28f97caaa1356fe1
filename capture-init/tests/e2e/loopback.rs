//! Loopback inside the pod: local traffic is not captured, the proxy's passthrough reaches the app,
//! its hairpin the inbound proxy.

use std::net::SocketAddr;

use capture_e2e::{
    Family, Listener, PROXY_UID, Topology, connect_as_from, passthrough, require_root, test_matrix,
};

use crate::capture_init::{Backend, CaptureInit, Via};
#[cfg(feature = "ebpf")]
use crate::support::ebpf_row;
use crate::support::{APP, PROXY, assert_lands, inbound_proxy, outbound_proxy, pod_app};

test_matrix!(backend, family: loopback);

/// Inside the pod: the app → 127.0.0.1 (`::1`) and → its own pod IP are not captured; the proxy →
/// pod:8080 from 127.0.0.6 (`::6`) is inbound passthrough and reaches the app; the proxy → pod:8080
/// from its pod IP hairpins to :15006 with pod:8080 as original destination.
fn loopback(backend: Backend, family: Family) {
    if !require_root() {
        return;
    }
    let topo = Topology::new();
    let outbound = outbound_proxy(&topo, family);
    let inbound = inbound_proxy(&topo, family);
    let app = pod_app(&topo, family, 8080);
    let local_app = Listener::spawn(
        &topo.pod,
        SocketAddr::new(family.loopback(), 9000),
        "local-app:9000",
    );
    CaptureInit::new(&topo.pod, backend, family)
        .via(Via::Enter)
        .run()
        .ok();

    let pod8080 = topo.pod_addr(family, 8080);
    assert_lands(
        &topo.pod,
        APP,
        SocketAddr::new(family.loopback(), 9000),
        &local_app,
    );
    assert_lands(&topo.pod, APP, pod8080, &app);

    let (reply, client) = connect_as_from(&topo.pod, PROXY_UID, PROXY_UID, passthrough(family), pod8080)
        .expect("the proxy connects from the passthrough address");
    assert_eq!(reply, app.token());
    assert_eq!(app.take_one().peer, client);
    assert_eq!(client.ip(), passthrough(family));
    crate::explain::assert_explained(
        &topo.pod,
        PROXY,
        Some(passthrough(family)),
        pod8080,
        crate::explain::Landed::Direct,
    );

    assert_lands(&topo.pod, PROXY, pod8080, &inbound);
    assert!(outbound.take_accepted().is_empty());
}
