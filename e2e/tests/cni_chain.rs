//! The CNI runner drives Debian's real `bridge` and `host-local` plugins from a node namespace.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use serde_json::Map;

use capture_e2e::cni::{Attachment, DEBIAN_CNI_PLUGINS, DEBIAN_CNI_VERSIONS, Runtime, bridge_conflist};
use capture_e2e::{Listener, NetNs, TempDir, connect_as, require_root};

#[test]
fn bridge_chain_add_check_del_in_every_version() {
    if !require_root() {
        return;
    }
    for (index, version) in (200..).zip(DEBIAN_CNI_VERSIONS) {
        let node = NetNs::new();
        let pod = NetNs::new();
        // host-local's data directory.
        let data = TempDir::new(&format!("ipam-{index}"));
        let runtime = Runtime::new(
            &node,
            vec![PathBuf::from(DEBIAN_CNI_PLUGINS)],
            bridge_conflist(version, index, data.path(), &[]),
        );
        let attachment = Attachment {
            container_id: format!("capture-test-{index}"),
            netns: pod.path().to_owned(),
            ifname: "eth0".into(),
            args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web".into(),
            runtime_config: Map::new(),
        };

        let result = runtime
            .add(&attachment)
            .unwrap_or_else(|e| panic!("{version}: ADD failed: {e:?}"));
        assert_eq!(result["cniVersion"], version, "{result}");
        let address = result["ips"][0]["address"]
            .as_str()
            .expect("an address")
            .to_owned();
        let pod_ip: IpAddr = address.split('/').next().unwrap().parse().unwrap();
        assert!(
            pod.ip(&["-o", "addr", "show", "dev", "eth0"]).contains(&address),
            "{version}: {address} on eth0"
        );
        // The node reaches the pod over the bridge, so the chain really wired the pod up.
        let app = Listener::spawn(&pod, SocketAddr::new(pod_ip, 8080), "pod-app");
        let (reply, _) =
            connect_as(&node, 0, 0, SocketAddr::new(pod_ip, 8080)).expect("node reaches the pod");
        assert_eq!(reply, "pod-app");
        drop(app);

        runtime
            .check(&attachment, &result)
            .unwrap_or_else(|e| panic!("{version}: CHECK failed: {e:?}"));
        runtime
            .del(&attachment, Some(&result))
            .unwrap_or_else(|e| panic!("{version}: DEL failed: {e:?}"));
        assert!(
            !pod.ip(&["-o", "link"]).contains("eth0"),
            "{version}: DEL removes the pod's interface"
        );
        runtime
            .del(&attachment, Some(&result))
            .unwrap_or_else(|e| panic!("{version}: second DEL failed: {e:?}"));
    }
}
