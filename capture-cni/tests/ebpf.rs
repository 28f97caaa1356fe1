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

/// `command` for the container `container_id` with the pod name `pod`.
fn call_for(command: &str, netns: &NetNs, container_id: &str, pod: &str, stdin: &str) -> Reply {
    call_at(command, netns.path(), container_id, pod, stdin)
}

/// [`call_for`] with the namespace's path, which may be gone.
fn call_at(command: &str, netns: &Path, container_id: &str, pod: &str, stdin: &str) -> Reply {
    let args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME={pod}");
    let mut env = cni_env(command, netns.to_str().unwrap(), &args);
    for (key, value) in &mut env {
        if *key == "CNI_CONTAINERID" {
            *value = container_id;
        }
    }
    invoke(&env, stdin)
}

/// A GC request naming `valid` (container id, interface) as the attachments in use.
fn gc_request(stdin: &str, valid: &[(&str, &str)]) -> String {
    let mut request: Value = serde_json::from_str(stdin).unwrap();
    request["cni.dev/valid-attachments"] = valid
        .iter()
        .map(|(id, ifname)| json!({"containerID": id, "ifname": ifname}))
        .collect();
    request.to_string()
}

/// The node's programs, loaded the node agent's way (capture-ebpf's API) on the child's cgroup.
fn load_node_programs(world: &capture_e2e::ebpf::ChildWorld) -> PinDir {
    let pins = PinDir::new(&world.bpffs);
    pins.mount().unwrap_or_else(|e| panic!("mount: {}", chain(&e)));
    let (node, _) =
        Node::open_or_load(&world.cgroup, &pins).unwrap_or_else(|e| panic!("load: {}", chain(&e)));
    drop(node);
    pins
}

/// Runs the calling test's body in a child inside a test cgroup; afterwards nothing may stay
/// attached or pinned.
fn run_in_test_cgroup() {
    let world = EbpfWorld::empty();
    world.run_in_cgroup();
    capture_ebpf::unload(&world.pins()).unwrap_or_else(|e| panic!("unload: {}", chain(&e)));
    let attached = world.attached();
    assert!(attached.is_empty(), "programs left attached: {attached:#?}");
    let pins = world.bpffs.contents();
    assert!(pins.is_empty(), "pins left behind: {pins:#?}");
}

/// ADD records who the pod is with its enrollment: the container id, the interface, the pod's
/// namespace and name and the netns path the runtime gave; DEL removes it with the rest.
#[test]
fn add_records_the_attachment_and_the_pod_with_the_enrollment() {
    if let Some(world) = child_world() {
        let pins = load_node_programs(&world);
        let topo = Topology::new();
        let stdin = request("1.1.0", &world.bpffs, &world.cgroup);
        call("ADD", &topo.pod, &stdin).ok();
        let node = Node::open(&pins).unwrap_or_else(|e| panic!("open: {}", chain(&e)));
        let [(cookie, _)] = node.pods().unwrap()[..] else {
            panic!("one pod enrolled: {:?}", node.pods());
        };
        let meta = node.metadata(cookie).unwrap().expect("metadata recorded");
        assert_eq!(
            meta,
            capture_ebpf::PodMetadata {
                container_id: "c0ffee0123".into(),
                ifname: "eth0".into(),
                pod_namespace: Some("shop".into()),
                pod_name: Some("cart-1".into()),
                netns_path: Some(topo.pod.path().to_owned()),
            }
        );
        call("DEL", &topo.pod, &stdin).ok();
        assert_eq!(node.metadata(cookie).unwrap(), None, "DEL removes the metadata");
        let counts = node.entry_counts().unwrap();
        assert!(
            counts.iter().all(|(map, n)| *map == "STATS" || *n == 0),
            "{counts:?}"
        );
        return;
    }
    if !require_root() {
        return;
    }
    run_in_test_cgroup();
}

/// GC with `cni.dev/valid-attachments` naming one of three pods ADD enrolled unenrolls the other
/// two (no map entry, no metadata, no `sk_lookup` pin left) and keeps the named one captured.
#[test]
fn gc_unenrolls_the_attachments_the_runtime_no_longer_names() {
    if let Some(world) = child_world() {
        let pins = load_node_programs(&world);
        let pods: Vec<Topology> = (0..3).map(|_| Topology::new()).collect();
        let ids = ["gc-keep", "gc-drop-1", "gc-drop-2"];
        let stdin = request("1.1.0", &world.bpffs, &world.cgroup);
        for (topo, id) in pods.iter().zip(ids) {
            call_for("ADD", &topo.pod, id, id, &stdin).ok();
        }
        let node = Node::open(&pins).unwrap_or_else(|e| panic!("open: {}", chain(&e)));
        let by_id: std::collections::BTreeMap<String, capture_ebpf::NetnsCookie> = node
            .all_metadata()
            .unwrap()
            .into_iter()
            .map(|(cookie, meta)| (meta.container_id, cookie))
            .collect();
        assert_eq!(by_id.len(), 3, "{by_id:?}");

        // Without a list of valid attachments nothing is unenrolled by attachment.
        invoke(&[("CNI_COMMAND", "GC"), ("CNI_PATH", "/opt/cni/bin")], &stdin).ok();
        assert_eq!(node.pods().unwrap().len(), 3, "GC without a list keeps every pod");

        let gc = gc_request(&stdin, &[("gc-keep", "eth0"), ("not-enrolled", "eth0")]);
        invoke(&[("CNI_COMMAND", "GC"), ("CNI_PATH", "/opt/cni/bin")], &gc).ok();

        let kept = by_id["gc-keep"];
        assert_eq!(
            node.pods().unwrap().iter().map(|(c, _)| *c).collect::<Vec<_>>(),
            [kept],
            "only the named attachment stays enrolled"
        );
        for id in &ids[1..] {
            let cookie = by_id[*id];
            assert_eq!(node.pod_entries(cookie).unwrap(), 0, "{id}: no map entry left");
            assert_eq!(node.metadata(cookie).unwrap(), None, "{id}: no metadata left");
            assert!(
                !pins.path().join("inbound").join(cookie.0.to_string()).exists(),
                "{id}: its sk_lookup pin is gone"
            );
        }
        assert!(node.metadata(kept).unwrap().is_some());
        assert!(node.inbound_attached(kept));

        // The kept pod is still captured; a dropped one is not.
        for (topo, captured) in [(&pods[0], true), (&pods[1], false)] {
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
            let dst = topo.peer_addr(Family::V4, 80);
            let (reply, _) = connect_as(&topo.pod, APP_UID, APP_UID, dst).expect("the app connects");
            if captured {
                assert_eq!(reply, "outbound");
                assert_eq!(proxy.take_one().original_dst.expect("original_dst"), dst);
            } else {
                assert_eq!(reply, "peer-app");
                let _ = app.take_one();
            }
        }

        // A GC with every attachment valid changes nothing.
        let gc = gc_request(&stdin, &[("gc-keep", "eth0"), ("gc-gone", "eth0")]);
        invoke(&[("CNI_COMMAND", "GC"), ("CNI_PATH", "/opt/cni/bin")], &gc).ok();
        assert_eq!(node.pods().unwrap().len(), 1);

        // A pod still named valid whose namespace was deleted without DEL is reclaimed too,
        // once the kernel has destroyed the namespace.
        let gone = Topology::new();
        call_for("ADD", &gone.pod, "gc-gone", "gc-gone", &stdin).ok();
        assert_eq!(node.pods().unwrap().len(), 2);
        drop(gone);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while node.pods().unwrap().len() > 1 {
            assert!(
                std::time::Instant::now() < deadline,
                "GC never reclaimed the gone pod"
            );
            invoke(&[("CNI_COMMAND", "GC"), ("CNI_PATH", "/opt/cni/bin")], &gc).ok();
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert_eq!(node.pods().unwrap()[0].0, kept);
        assert_eq!(
            node.all_metadata().unwrap().len(),
            1,
            "the gone pod's metadata went too"
        );

        // DEL of the kept pod clears the rest.
        call_for("DEL", &pods[0].pod, "gc-keep", "gc-keep", &stdin).ok();
        assert!(node.pods().unwrap().is_empty());
        return;
    }
    if !require_root() {
        return;
    }
    run_in_test_cgroup();
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
    // GC has nothing to collect then, and succeeds.
    let gc = gc_request(&stdin, &[]);
    invoke(&[("CNI_COMMAND", "GC"), ("CNI_PATH", "/opt/cni/bin")], &gc).ok();
    assert!(bpffs.contents().is_empty(), "GC loaded nothing");
}

/// DEL for a pod whose namespace is already gone unenrolls it at once, found by its attachment
/// (container id and interface): no map entry, metadata or `sk_lookup` pin is left waiting for
/// GC. Another pod's enrollment stays.
#[test]
fn del_after_the_netns_is_gone_unenrolls_the_attachment() {
    if let Some(world) = child_world() {
        let pins = load_node_programs(&world);
        let stdin = request("1.1.0", &world.bpffs, &world.cgroup);
        let other = Topology::new();
        call_for("ADD", &other.pod, "del-other", "other", &stdin).ok();
        let topo = Topology::new();
        call_for("ADD", &topo.pod, "del-gone", "gone", &stdin).ok();
        let node = Node::open(&pins).unwrap_or_else(|e| panic!("open: {}", chain(&e)));
        assert_eq!(node.pods().unwrap().len(), 2);
        let path = topo.pod.path().to_owned();
        drop(topo);
        assert!(!path.exists(), "the namespace is gone");
        let del = call_at("DEL", &path, "del-gone", "gone", &stdin);
        del.ok();
        let left: Vec<String> = node
            .all_metadata()
            .unwrap()
            .into_iter()
            .map(|(_, meta)| meta.container_id)
            .collect();
        assert_eq!(left, ["del-other"], "{}", del.stderr);
        assert_eq!(
            node.pods().unwrap().len(),
            1,
            "DEL unenrolled the gone pod at once"
        );
        assert_eq!(inbound_pins(&pins).len(), 1, "its sk_lookup pin went too");
        call_at("DEL", &path, "del-gone", "gone", &stdin).ok();
        call_for("DEL", &other.pod, "del-other", "other", &stdin).ok();
        assert!(node.pods().unwrap().is_empty());
        return;
    }
    if !require_root() {
        return;
    }
    run_in_test_cgroup();
}

/// A container id longer than the node's record of it holds fails ADD with one line naming it
/// (code 100), and nothing is enrolled.
#[test]
fn a_container_id_too_long_to_record_fails_add_and_enrolls_nothing() {
    if let Some(world) = child_world() {
        let pins = load_node_programs(&world);
        let topo = Topology::new();
        let stdin = request("1.1.0", &world.bpffs, &world.cgroup);
        let id = "c".repeat(200);
        let failure = call_for("ADD", &topo.pod, &id, "cart-1", &stdin).error(100);
        let msg = failure["msg"].as_str().unwrap();
        assert!(
            msg.contains("container id") && msg.contains("is 200 bytes, more than the 128"),
            "{msg}"
        );
        let node = Node::open(&pins).unwrap_or_else(|e| panic!("open: {}", chain(&e)));
        assert!(node.pods().unwrap().is_empty(), "nothing enrolled");
        assert_eq!(inbound_pins(&pins), Vec::<String>::new(), "no sk_lookup link");
        return;
    }
    if !require_root() {
        return;
    }
    run_in_test_cgroup();
}

/// A network namespace of its own, unnamed and held by the returned descriptor alone: it goes
/// when the descriptor is closed (also when the test fails). Made on a short-lived thread, so
/// the test's threads never move.
fn anonymous_netns() -> std::os::fd::OwnedFd {
    std::thread::spawn(|| {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        std::os::fd::OwnedFd::from(
            std::fs::File::open("/proc/thread-self/ns/net").expect("open the new netns"),
        )
    })
    .join()
    .expect("the unshare thread")
}

/// What is pinned under `<pin dir>/inbound`: the pods' `sk_lookup` links.
fn inbound_pins(pins: &PinDir) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(pins.path().join("inbound"))
        .map(|dir| {
            dir.map(|e| e.expect("an entry").file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort_unstable();
    names
}

/// 1,000 pods enrolled (with capture-cni's metadata) and deleted, in rounds of 100: half
/// unenrolled as DEL does, half by deleting their network namespace and letting `Node::gc`
/// reclaim them. Afterwards every map holds exactly as many entries as before, and no
/// `sk_lookup` link is pinned.
#[test]
fn a_thousand_enroll_delete_cycles_leave_the_maps_as_they_were() {
    use std::collections::BTreeSet;
    use std::os::fd::AsFd as _;
    use std::time::{Duration, Instant};

    const ROUNDS: usize = 10;
    const PODS: usize = 100;
    if !require_root() {
        return;
    }
    let world = EbpfWorld::new();
    let mut node = world.node();
    let pins = world.pins();
    let mut spec = capture_core::CaptureSpec::sidecar();
    spec.ipv6 = false;
    let plan = capture_ebpf::Ebpf::plan(&spec).unwrap_or_else(|e| panic!("plan: {}", chain(&e)));
    let before = (node.entry_counts().unwrap(), inbound_pins(&pins));
    let started = Instant::now();
    for round in 0..ROUNDS {
        let mut pods = Vec::with_capacity(PODS);
        for i in 0..PODS {
            let netns = anonymous_netns();
            let pod = capture_ebpf::PodNetns::set_up_netns(netns.as_fd(), &plan)
                .unwrap_or_else(|e| panic!("round {round} pod {i}: {}", chain(&e)));
            node.enroll_netns(netns.as_fd(), &pod, &plan)
                .unwrap_or_else(|e| panic!("round {round} pod {i}: enroll: {}", chain(&e)));
            let meta = capture_ebpf::PodMetadata {
                container_id: format!("cycle-{round}-{i}"),
                ifname: "eth0".into(),
                pod_namespace: Some("shop".into()),
                pod_name: Some(format!("cart-{i}")),
                netns_path: None,
            };
            node.set_metadata(pod.cookie, &meta)
                .unwrap_or_else(|e| panic!("round {round} pod {i}: metadata: {}", chain(&e)));
            pods.push((netns, pod.cookie));
        }
        assert_eq!(node.pods().unwrap().len(), PODS, "round {round}");
        assert_eq!(inbound_pins(&pins).len(), PODS, "round {round}");
        let deleted = pods.split_off(PODS / 2);
        for (netns, cookie) in pods {
            assert!(node.unenroll(cookie).unwrap(), "round {round}: enrolled");
            drop(netns);
        }
        let gone: BTreeSet<_> = deleted.iter().map(|(_, cookie)| *cookie).collect();
        drop(deleted);
        // The kernel destroys a namespace (and detaches its link) shortly after its last
        // reference goes.
        let mut reclaimed = BTreeSet::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while reclaimed.len() < gone.len() {
            assert!(
                Instant::now() < deadline,
                "round {round}: gc reclaimed {} of {}",
                reclaimed.len(),
                gone.len()
            );
            reclaimed.extend(node.gc().unwrap_or_else(|e| panic!("gc: {}", chain(&e))));
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            reclaimed, gone,
            "round {round}: gc reclaims exactly the deleted pods"
        );
    }
    eprintln!("{} cycles in {:?}", ROUNDS * PODS, started.elapsed());
    assert_eq!((node.entry_counts().unwrap(), inbound_pins(&pins)), before);
}
