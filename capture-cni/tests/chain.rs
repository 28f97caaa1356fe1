//! A configuration list run the way a container runtime runs it: Debian's real `bridge` +
//! `host-local` first, `capture-cni` last, from a "node" network namespace the test creates
//! (so the bridge never lands in the machine's own namespace), for every CNI version the
//! reference plugins speak. Real traffic then proves capture. Needs root (skips with a message
//! otherwise, and fails when `CI` is set).
//!
//! CNI 1.1.0 is not run here: Debian's plugins (1.1.1) stop at 1.0.0. The protocol tests cover
//! capture-cni's 1.1.0 pass-through.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use capture_e2e::cni::{Attachment, DEBIAN_CNI_PLUGINS, DEBIAN_CNI_VERSIONS, Runtime, bridge_conflist};
use capture_e2e::{
    APP_UID, Family, Flavor, INBOUND_PORT, Listener, NetNs, OUTBOUND_PORT, PROXY_UID, TempDir, connect_as,
    iptables_save_normalized, require_root,
};
use serde_json::{Map, Value, json};

/// Where cargo put the plugin under test; a runtime finds it there through `CNI_PATH`.
fn plugin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_capture-cni"))
        .parent()
        .expect("a directory")
        .to_owned()
}

/// A runtime in `node` that finds the plugin under test and Debian's plugins.
fn capture_runtime(node: &NetNs, conflist: Value) -> Runtime<'_> {
    Runtime::new(
        node,
        vec![plugin_dir(), PathBuf::from(DEBIAN_CNI_PLUGINS)],
        conflist,
    )
}

fn capture_entry(run_dir: &Path) -> Value {
    json!({
        "type": "capture-cni",
        "capabilities": {"io.kubernetes.cri.pod-annotations": true},
        "run_dir": run_dir,
        "capture": {"iptables_flavor": "nft"},
    })
}

fn injected_pod(container_id: String, netns: &Path) -> Attachment {
    let annotations = json!({"sidecar.istio.io/status": "{\"containers\":[\"app\"]}"});
    let mut runtime_config = Map::new();
    runtime_config.insert("io.kubernetes.cri.pod-annotations".into(), annotations);
    Attachment {
        container_id,
        netns: netns.to_owned(),
        ifname: "eth0".into(),
        args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-1".into(),
        runtime_config,
    }
}

#[track_caller]
fn assert_lands(ns: &NetNs, uid: u32, dst: SocketAddr, listener: &Listener, original: SocketAddr) {
    let (reply, _) = connect_as(ns, uid, uid, dst).unwrap_or_else(|e| panic!("uid {uid} → {dst}: {e}"));
    assert_eq!(reply, listener.token(), "uid {uid} → {dst}");
    let seen = listener.take_one();
    assert_eq!(
        seen.original_dst.expect("original destination"),
        original,
        "uid {uid} → {dst}"
    );
}

#[test]
fn bridge_then_capture_in_every_version() {
    if !require_root() {
        return;
    }
    for (index, version) in (210..).zip(DEBIAN_CNI_VERSIONS) {
        let node = NetNs::new();
        let pod = NetNs::new();
        let scratch = TempDir::new(&format!("chain-{index}"));
        let (ipam, run_dir) = (scratch.path().join("ipam"), scratch.path().join("run"));
        let conflist = bridge_conflist(version, index, &ipam, &[capture_entry(&run_dir)]);
        let runtime = capture_runtime(&node, conflist);
        let attachment = injected_pod(format!("chain-{index}"), pod.path());

        let results = runtime
            .add_each(&attachment)
            .unwrap_or_else(|e| panic!("{version}: ADD: {e:?}"));
        let (bridge, ours) = (&results[0], &results[1]);
        assert_eq!(
            ours, bridge,
            "{version}: capture-cni passes bridge's result through unchanged"
        );
        assert_eq!(ours["cniVersion"], version);

        let address = ours["ips"][0]["address"].as_str().expect("an address");
        let pod_ip: IpAddr = address.split('/').next().unwrap().parse().unwrap();
        let gateway = IpAddr::V4(Ipv4Addr::new(10, 250, index, 1));
        let node_app = Listener::spawn(&node, SocketAddr::new(gateway, 80), "node-app");
        let any = |port| SocketAddr::new(Family::V4.unspecified(), port);
        let outbound = Listener::spawn_proxy(&pod, any(OUTBOUND_PORT), "outbound");
        let inbound = Listener::spawn_proxy(&pod, any(INBOUND_PORT), "inbound");
        let to_node = SocketAddr::new(gateway, 80);
        let to_pod = SocketAddr::new(pod_ip, 8080);
        assert_lands(&pod, APP_UID, to_node, &outbound, to_node);
        assert_lands(&pod, PROXY_UID, to_node, &node_app, to_node);
        assert_lands(&node, APP_UID, to_pod, &inbound, to_pod);

        runtime
            .check(&attachment, ours)
            .unwrap_or_else(|e| panic!("{version}: CHECK: {e:?}"));
        runtime
            .del(&attachment, Some(ours))
            .unwrap_or_else(|e| panic!("{version}: DEL: {e:?}"));
        let save = iptables_save_normalized(&pod, Flavor::Nft, Family::V4);
        assert!(
            !save.contains("ISTIO"),
            "{version}: DEL removed the capture:\n{save}"
        );
        assert!(
            !pod.ip(&["-o", "link"]).contains("eth0"),
            "{version}: DEL removed the interface"
        );
        runtime
            .del(&attachment, Some(ours))
            .unwrap_or_else(|e| panic!("{version}: second DEL: {e:?}"));
        drop((outbound, inbound, node_app));
        // The attachment still names the namespace's path, which no longer exists.
        drop(pod);
        runtime
            .del(&attachment, Some(ours))
            .unwrap_or_else(|e| panic!("{version}: DEL after the netns is gone: {e:?}"));
    }
}

/// A dual-stack pod as a runtime makes it: host-local hands out an IPv4 address first and an
/// IPv6 one second, so the namespace's first address is IPv4 (istio/istio#46625). With the
/// default configuration the pod is captured in both families.
#[test]
fn dual_stack_pod_is_captured_in_both_families() {
    if !require_root() {
        return;
    }
    for (i, version) in ["0.3.1", "1.0.0"].into_iter().enumerate() {
        let index = 220 + u8::try_from(i).expect("few versions");
        let node = NetNs::new();
        let pod = NetNs::new();
        // The bridge's and the pod's IPv6 addresses are usable at once, without waiting for
        // duplicate address detection.
        for ns in [&node, &pod] {
            ns.run(|| std::fs::write("/proc/sys/net/ipv6/conf/default/accept_dad", "0"))
                .expect("turn DAD off in a test namespace");
        }
        let scratch = TempDir::new(&format!("chain-{index}"));
        let (ipam, run_dir) = (scratch.path().join("ipam"), scratch.path().join("run"));
        let mut conflist = bridge_conflist(version, index, &ipam, &[capture_entry(&run_dir)]);
        let v6_subnet = format!("fd02:250:{index}::/64");
        conflist["plugins"][0]["ipam"]["ranges"]
            .as_array_mut()
            .expect("ranges")
            .push(json!([{ "subnet": v6_subnet }]));
        let runtime = capture_runtime(&node, conflist);
        let attachment = injected_pod(format!("chain-{index}"), pod.path());

        let result = runtime
            .add(&attachment)
            .unwrap_or_else(|e| panic!("{version}: ADD: {e:?}"));
        let ips: Vec<IpAddr> = result["ips"]
            .as_array()
            .expect("ips")
            .iter()
            .map(|ip| {
                ip["address"]
                    .as_str()
                    .unwrap()
                    .split('/')
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap()
            })
            .collect();
        assert!(
            matches!(ips.as_slice(), [IpAddr::V4(_), IpAddr::V6(_)]),
            "{version}: IPv4 first, then IPv6: {result}"
        );
        let save = iptables_save_normalized(&pod, Flavor::Nft, Family::V6);
        assert!(
            save.contains(":ISTIO_OUTPUT") && save.contains("-j REDIRECT --to-ports 15001"),
            "{version}: IPv6 capture rules:\n{save}"
        );

        let gateway = IpAddr::V6(format!("fd02:250:{index}::1").parse::<Ipv6Addr>().unwrap());
        let node_app = Listener::spawn(&node, SocketAddr::new(gateway, 80), "node-app");
        let any = |port| SocketAddr::new(Family::V6.unspecified(), port);
        let outbound = Listener::spawn_proxy(&pod, any(OUTBOUND_PORT), "outbound");
        let inbound = Listener::spawn_proxy(&pod, any(INBOUND_PORT), "inbound");
        let to_node = SocketAddr::new(gateway, 80);
        let to_pod = SocketAddr::new(ips[1], 8080);
        assert_lands(&pod, APP_UID, to_node, &outbound, to_node);
        assert_lands(&pod, PROXY_UID, to_node, &node_app, to_node);
        assert_lands(&node, APP_UID, to_pod, &inbound, to_pod);

        runtime
            .check(&attachment, &result)
            .unwrap_or_else(|e| panic!("{version}: CHECK: {e:?}"));
        runtime
            .del(&attachment, Some(&result))
            .unwrap_or_else(|e| panic!("{version}: DEL: {e:?}"));
        let save = iptables_save_normalized(&pod, Flavor::Nft, Family::V6);
        assert!(
            !save.contains("ISTIO"),
            "{version}: DEL removed the capture:\n{save}"
        );
        drop((outbound, inbound, node_app));
    }
}

/// The same chain with `capture.backend: "ebpf"`: the node's programs loaded once on a test
/// cgroup and bpffs (as the node agent or `capture-init ebpf load` loads them, through
/// capture-ebpf), bridge + host-local giving the pod IPv4 and IPv6, capture-cni enrolling it. The
/// pod holds no iptables rule and no nftables table, and is captured as the shared scenario
/// table says: outbound with its original destination, the proxy's uid passing, an excluded
/// port and an excluded CIDR passing, inbound with its original destination, an excluded
/// inbound port reaching the app; in both families. DEL leaves no map entry or pin of the pod.
#[cfg(feature = "ebpf")]
#[test]
fn bridge_then_capture_on_ebpf() {
    use capture_e2e::ebpf::{EbpfWorld, child_world};
    use capture_e2e::run_ok;
    use capture_ebpf::{Node, PinDir};

    const INDEX: u8 = 230;
    let Some(world) = child_world() else {
        if !require_root() {
            return;
        }
        let world = EbpfWorld::empty();
        world.run_in_cgroup();
        capture_ebpf::unload(&world.pins()).unwrap_or_else(|e| panic!("unload: {}", capture_core::chain(&e)));
        let attached = world.attached();
        assert!(attached.is_empty(), "programs left attached: {attached:#?}");
        let pins = world.bpffs.contents();
        assert!(pins.is_empty(), "pins left behind: {pins:#?}");
        return;
    };
    let pins = PinDir::new(&world.bpffs);
    pins.mount()
        .unwrap_or_else(|e| panic!("mount: {}", capture_core::chain(&e)));
    drop(
        Node::open_or_load(&world.cgroup, &pins)
            .unwrap_or_else(|e| panic!("load: {}", capture_core::chain(&e))),
    );

    let node = NetNs::new();
    let pod = NetNs::new();
    for ns in [&node, &pod] {
        ns.run(|| std::fs::write("/proc/sys/net/ipv6/conf/default/accept_dad", "0"))
            .expect("turn DAD off in a test namespace");
    }
    let scratch = TempDir::new(&format!("chain-{INDEX}"));
    let (ipam, run_dir) = (scratch.path().join("ipam"), scratch.path().join("run"));
    let (v4_excluded, v6_excluded) = (format!("10.250.{INDEX}.200"), format!("fd02:250:{INDEX}::200"));
    let entry = json!({
        "type": "capture-cni",
        "capabilities": {"io.kubernetes.cri.pod-annotations": true},
        "run_dir": run_dir,
        "capture": {
            "backend": "ebpf",
            "bpffs": world.bpffs,
            "cgroup": world.cgroup,
            "exclude_outbound_ports": "8081",
            "exclude_outbound_ip_ranges": format!("{v4_excluded}/32,{v6_excluded}/128"),
            "exclude_inbound_ports": "8090",
        },
    });
    let mut conflist = bridge_conflist("1.0.0", INDEX, &ipam, &[entry]);
    conflist["plugins"][0]["ipam"]["ranges"]
        .as_array_mut()
        .expect("ranges")
        .push(json!([{ "subnet": format!("fd02:250:{INDEX}::/64") }]));
    let runtime = capture_runtime(&node, conflist);
    let attachment = injected_pod(format!("chain-{INDEX}"), pod.path());
    let result = runtime.add(&attachment).unwrap_or_else(|e| panic!("ADD: {e:?}"));
    let ips: Vec<IpAddr> = result["ips"]
        .as_array()
        .expect("ips")
        .iter()
        .map(|ip| {
            ip["address"]
                .as_str()
                .unwrap()
                .split('/')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    let [IpAddr::V4(pod_v4), IpAddr::V6(pod_v6)] = ips[..] else {
        panic!("IPv4 and IPv6: {result}");
    };

    // No rule of any kind in the pod.
    let iptables = run_ok(&mut pod.command("iptables-save"));
    let ip6tables = run_ok(&mut pod.command("ip6tables-save"));
    for save in [&iptables, &ip6tables] {
        assert!(
            save.lines().all(|l| l.starts_with('#')),
            "no iptables rule or chain in the pod:\n{save}"
        );
    }
    let nft = run_ok(pod.command("nft").args(["list", "ruleset"]));
    assert!(nft.trim().is_empty(), "no nftables table in the pod:\n{nft}");

    let bridge = format!("capbr{INDEX}");
    node.ip(&["addr", "add", &format!("{v4_excluded}/24"), "dev", &bridge]);
    node.ip(&[
        "addr",
        "add",
        &format!("{v6_excluded}/64"),
        "dev",
        &bridge,
        "nodad",
    ]);
    let any = |port| SocketAddr::new(Family::V6.unspecified(), port);
    let outbound = Listener::spawn_proxy(&pod, any(OUTBOUND_PORT), "outbound");
    let inbound = Listener::spawn_proxy(&pod, any(INBOUND_PORT), "inbound");
    let node_app = Listener::spawn(&node, any(80), "node-app");
    let node_excluded_port = Listener::spawn(&node, any(8081), "node-app-8081");
    let pod_excluded_port = Listener::spawn(&pod, any(8090), "pod-app-8090");
    let gateways: [IpAddr; 2] = [
        Ipv4Addr::new(10, 250, INDEX, 1).into(),
        format!("fd02:250:{INDEX}::1").parse::<Ipv6Addr>().unwrap().into(),
    ];
    let excluded: [IpAddr; 2] = [v4_excluded.parse().unwrap(), v6_excluded.parse().unwrap()];
    for (family, gateway, excluded, pod_ip) in [
        ("IPv4", gateways[0], excluded[0], IpAddr::V4(pod_v4)),
        ("IPv6", gateways[1], excluded[1], IpAddr::V6(pod_v6)),
    ] {
        let to_node = SocketAddr::new(gateway, 80);
        assert_lands(&pod, APP_UID, to_node, &outbound, to_node);
        assert_lands(&pod, PROXY_UID, to_node, &node_app, to_node);
        let to_port = SocketAddr::new(gateway, 8081);
        assert_lands(&pod, APP_UID, to_port, &node_excluded_port, to_port);
        let to_cidr = SocketAddr::new(excluded, 80);
        assert_lands(&pod, APP_UID, to_cidr, &node_app, to_cidr);
        let to_pod = SocketAddr::new(pod_ip, 8080);
        assert_lands(&node, APP_UID, to_pod, &inbound, to_pod);
        let to_pod_excluded = SocketAddr::new(pod_ip, 8090);
        assert_lands(
            &node,
            APP_UID,
            to_pod_excluded,
            &pod_excluded_port,
            to_pod_excluded,
        );
        eprintln!("{family}: every scenario landed as expected");
    }

    let maps = Node::open(&pins).unwrap_or_else(|e| panic!("open: {}", capture_core::chain(&e)));
    let [(cookie, _)] = maps.pods().unwrap()[..] else {
        panic!("one pod enrolled: {:?}", maps.pods());
    };
    runtime
        .check(&attachment, &result)
        .unwrap_or_else(|e| panic!("CHECK: {e:?}"));
    runtime
        .del(&attachment, Some(&result))
        .unwrap_or_else(|e| panic!("DEL: {e:?}"));
    drop((outbound, inbound, node_app, node_excluded_port, pod_excluded_port));
    assert!(maps.pods().unwrap().is_empty(), "DEL unenrolls the pod");
    assert_eq!(
        maps.pod_entries(cookie).unwrap(),
        0,
        "no map entry of the pod left"
    );
    assert_eq!(
        maps.metadata(cookie).unwrap(),
        None,
        "no metadata of the pod left"
    );
    assert!(!maps.inbound_attached(cookie), "no sk_lookup pin of the pod left");
    assert_eq!(
        maps.inbound_listeners().unwrap(),
        [],
        "no inbound listener of the pod left"
    );
}
