//! The harness cleans up after itself and reads iptables state the same way for both flavors.

use std::panic;

use super::{capture_default_sidecar, default_sidecar_payload};
use crate::{
    Family, Flavor, Listener, NETNS_PREFIX, NetNs, PROXY_UID, Topology, iptables_save_normalized,
    require_root,
};

#[test]
fn netns_is_named_and_removed_on_drop() {
    if !require_root() {
        return;
    }
    let ns = NetNs::new();
    let path = ns.path().to_owned();
    assert!(
        ns.name()
            .starts_with(&format!("{NETNS_PREFIX}-{}-", std::process::id()))
    );
    assert!(path.exists());
    let links = ns.ip(&["-o", "link", "show"]);
    assert!(
        links.contains("lo:") && links.contains("UP"),
        "lo is up in a new netns:\n{links}"
    );
    drop(ns);
    assert!(!path.exists(), "{} left behind", path.display());
}

#[test]
fn opened_netns_is_entered_and_left_to_its_owner() {
    if !require_root() {
        return;
    }
    let owner = NetNs::new();
    let opened = NetNs::open(owner.path()).expect("open a netns by path");
    let ino = |ns: &NetNs| {
        ns.run(|| {
            std::fs::metadata("/proc/thread-self/ns/net").map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        })
        .expect("stat own netns")
    };
    assert_eq!(ino(&opened), ino(&owner), "the same namespace");
    assert_eq!(opened.name(), owner.name());
    drop(opened);
    assert!(
        owner.path().exists(),
        "dropping an opened netns leaves its name alone"
    );
    let not_a_netns = NetNs::open("/proc/self/ns/mnt").expect_err("a mount namespace");
    assert!(
        not_a_netns.to_string().contains("not a network namespace"),
        "{not_a_netns}"
    );
    let not_a_namespace = NetNs::open("/proc/self/status").expect_err("a plain file");
    assert!(
        not_a_namespace.to_string().contains("not a namespace"),
        "{not_a_namespace}"
    );
}

#[test]
fn topology_is_removed_when_the_test_panics() {
    if !require_root() {
        return;
    }
    let mut paths = Vec::new();
    let result = panic::catch_unwind(panic::AssertUnwindSafe(|| {
        let topo = Topology::new();
        paths.extend([topo.pod.path().to_owned(), topo.peer.path().to_owned()]);
        panic!("deliberate panic with a live topology");
    }));
    assert!(result.is_err());
    assert_eq!(paths.len(), 2);
    for path in paths {
        assert!(!path.exists(), "{} left behind", path.display());
    }
}

#[test]
fn run_enters_the_netns_and_command_too() {
    if !require_root() {
        return;
    }
    let ns = NetNs::new();
    let own = |path: &str| std::fs::metadata(path).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
    let inside = ns
        .run(|| own("/proc/thread-self/ns/net"))
        .expect("stat own netns");
    assert_eq!(
        inside,
        own(ns.path().to_str().expect("utf-8 path")).expect("stat the mount")
    );
    assert_ne!(
        inside,
        own("/proc/thread-self/ns/net").expect("stat the test's netns")
    );
    let from_command = crate::run_ok(ns.command("readlink").arg("/proc/self/ns/net"));
    assert_eq!(from_command.trim(), format!("net:[{inside}]"));
}

/// The same payload saves the same way through legacy and nft, so one golden can serve both.
#[test]
fn both_flavors_save_the_default_sidecar_alike() {
    if !require_root() {
        return;
    }
    for family in [Family::V4, Family::V6] {
        let saves = Flavor::ALL.map(|flavor| {
            let ns = NetNs::new();
            capture_default_sidecar(&ns, flavor);
            iptables_save_normalized(&ns, flavor, family)
        });
        assert_eq!(saves[0], saves[1], "{family:?}: legacy and nft saves differ");
        assert!(
            saves[0].contains("-A ISTIO_OUTPUT -j ISTIO_REDIRECT"),
            "{}",
            saves[0]
        );
        let rules = default_sidecar_payload(family)
            .lines()
            .filter(|l| l.starts_with("-A "))
            .count();
        assert_eq!(
            saves[0].lines().filter(|l| l.starts_with("-A ")).count(),
            rules,
            "{}",
            saves[0]
        );
    }
}

/// A listener spawned as a uid owns its socket as that uid, as the proxy's listeners would.
#[test]
fn listener_socket_is_owned_by_the_given_uid() {
    if !require_root() {
        return;
    }
    let ns = NetNs::new();
    let listener = Listener::spawn_as(
        &ns,
        PROXY_UID,
        PROXY_UID,
        "0.0.0.0:15001".parse().unwrap(),
        "outbound",
    );
    // /proc/thread-self/net shows the netns of the reading thread; columns: sl local rem st ... uid.
    let tcp = ns
        .run(|| std::fs::read_to_string("/proc/thread-self/net/tcp"))
        .expect("read the netns tcp table");
    let owner = tcp
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cols| cols.get(1) == Some(&"00000000:3A99") && cols.get(3) == Some(&"0A"))
        .unwrap_or_else(|| panic!("no listener on :15001 in\n{tcp}"))[7];
    assert_eq!(owner, PROXY_UID.to_string());
    drop(listener);
}
