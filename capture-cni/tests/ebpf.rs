//! capture-cni on the eBPF backend (`capture.backend: "ebpf"`, a build with the feature `ebpf`):
//! the node's programs are loaded once (here through capture-ebpf's API, as the node agent does)
//! on a test-owned cgroup and bpffs; the plugin enrolls and unenrolls pods through them, and
//! never loads them itself. The traffic runs in a child of this test binary inside that cgroup;
//! the parent checks that nothing stays attached or pinned. Needs root.
#![cfg(feature = "ebpf")]

#[path = "common/cni.rs"]
mod cni;

use std::net::{Ipv6Addr, SocketAddr};
use std::path::Path;

use capture_e2e::ebpf::{EbpfWorld, TestBpffs, chain, child_world};
use capture_e2e::{
    APP_UID, Family, Listener, NetNs, OUTBOUND_PORT, PROXY_UID, Topology, connect_as,
    iptables_save_normalized, require_root,
};
use capture_ebpf::{Node, PinDir};
use cni::{Reply, cni_env, invoke};
use serde_json::{Value, json};

const POD_ARGS: &str = "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-1";

/// An injected pod's request on the eBPF backend with the node's programs under `bpffs`, acting
/// on `cgroup`.
fn request(version: &str, bpffs: &Path, cgroup: &Path) -> String {
    json!({
        "cniVersion": version,
        "name": "test-net",
        "type": "capture-cni",
        "capture": {"backend": "ebpf", "bpffs": bpffs, "cgroup": cgroup},
        "runtimeConfig": {"io.kubernetes.cri.pod-annotations": {
            "sidecar.istio.io/status": "{\"containers\":[\"app\"]}"
        }},
    })
    .to_string()
}

fn call(command: &str, netns: &NetNs, stdin: &str) -> Reply {
    invoke(&cni_env(command, netns.path().to_str().unwrap(), POD_ARGS), stdin)
}

/// ADD enrolls the pod (no iptables rule, no nftables table in it) and its app's connections
/// reach the proxy with their original destination while the proxy's own go out; ADD again
/// changes nothing; CHECK passes; DEL unenrolls (the app reaches the peer directly again, CHECK
/// fails); a second DEL succeeds; STATUS is ready.
#[test]
fn pods_are_enrolled_through_the_nodes_programs() {
    if let Some(world) = child_world() {
        let pins = PinDir::new(&world.bpffs);
        pins.mount().unwrap_or_else(|e| panic!("mount: {}", chain(&e)));
        // The node agent's part: the programs, once per node.
        let (node, _) =
            Node::open_or_load(&world.cgroup, &pins).unwrap_or_else(|e| panic!("load: {}", chain(&e)));
        drop(node);

        let topo = Topology::new();
        let proxy = Listener::spawn_proxy(
            &topo.pod,
            SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), OUTBOUND_PORT),
            "outbound",
        );
        let app = Listener::spawn(
            &topo.peer,
            SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), 80),
            "peer-app",
        );
        let stdin = request("1.1.0", &world.bpffs, &world.cgroup);
        call("ADD", &topo.pod, &stdin).ok();
        for family in [Family::V4, Family::V6] {
            assert!(
                !iptables_save_normalized(&topo.pod, capture_e2e::Flavor::Nft, family).contains("ISTIO"),
                "no iptables rule in the pod"
            );
        }

        let dst = topo.peer_addr(Family::V4, 80);
        let (reply, _) = connect_as(&topo.pod, APP_UID, APP_UID, dst).expect("the app connects");
        assert_eq!(reply, "outbound");
        assert_eq!(proxy.take_one().original_dst.expect("original_dst"), dst);
        let (reply, _) = connect_as(&topo.pod, PROXY_UID, PROXY_UID, dst).expect("the proxy connects");
        assert_eq!(reply, "peer-app");
        let _ = app.take_one();

        let node = Node::open(&pins).unwrap_or_else(|e| panic!("open: {}", chain(&e)));
        let enrolled = node.pods().unwrap();
        assert_eq!(enrolled.len(), 1, "one pod enrolled");
        call("ADD", &topo.pod, &stdin).ok();
        assert_eq!(node.pods().unwrap(), enrolled, "a retried ADD changes nothing");
        call("CHECK", &topo.pod, &stdin).ok();
        call("STATUS", &topo.pod, &stdin).ok();

        call("DEL", &topo.pod, &stdin).ok();
        assert!(node.pods().unwrap().is_empty(), "DEL unenrolls the pod");
        let (reply, _) = connect_as(&topo.pod, APP_UID, APP_UID, dst).expect("the app connects");
        assert_eq!(reply, "peer-app", "not captured after DEL");
        let failure: Value = call("CHECK", &topo.pod, &stdin).error(101);
        assert!(
            failure["msg"].as_str().unwrap().contains("not enrolled"),
            "{failure}"
        );
        call("DEL", &topo.pod, &stdin).ok();
        return;
    }
    if !require_root() {
        return;
    }
    let world = EbpfWorld::empty();
    world.run_in_cgroup();
    capture_ebpf::unload(&world.pins()).unwrap_or_else(|e| panic!("unload: {}", chain(&e)));
    let attached = world.attached();
    assert!(attached.is_empty(), "programs left attached: {attached:#?}");
    let pins = world.bpffs.contents();
    assert!(pins.is_empty(), "pins left behind: {pins:#?}");
}

/// Without the node's programs, ADD fails with one line saying who loads them and changes
/// nothing, and STATUS reports the plugin not available (code 50): the plugin never loads
/// programs itself.
#[test]
fn without_the_nodes_programs_add_fails_and_status_is_not_ready() {
    if !require_root() {
        return;
    }
    let bpffs = TestBpffs::new();
    let pod = NetNs::new();
    let cgroup = capture_ebpf::cgroup2_root().unwrap();
    let mut stdin: Value = serde_json::from_str(&request("1.1.0", bpffs.path(), &cgroup)).unwrap();
    // A bare namespace has no address to tell IPv6 from.
    stdin["capture"]["ipv6"] = json!("off");
    let stdin = stdin.to_string();
    let failure = call("ADD", &pod, &stdin).error(100);
    let msg = failure["msg"].as_str().unwrap();
    assert!(
        msg.contains("not loaded") && msg.contains("capture-init ebpf load"),
        "{msg}"
    );
    assert!(bpffs.contents().is_empty(), "nothing was loaded or pinned");
    let failure = call("STATUS", &pod, &stdin).error(50);
    assert!(
        failure["msg"].as_str().unwrap().contains("not loaded"),
        "{failure}"
    );
}
