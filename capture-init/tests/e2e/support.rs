//! What the scenarios share: identities, reading the pod's rules, the stand-in proxy and apps,
//! where a connection lands, and running an eBPF row.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
#[cfg(feature = "ebpf")]
use std::thread;

#[cfg(feature = "ebpf")]
use capture_e2e::ebpf::{self, EbpfWorld};
#[cfg(feature = "ebpf")]
use capture_e2e::require_root;
use capture_e2e::{
    APP_UID, Accepted, Family, Flavor, INBOUND_PORT, Listener, NetNs, OUTBOUND_PORT, PROXY_UID, Topology,
    connect_as, iptables_save_normalized, run_ok,
};

use crate::capture_init::{Backend, CaptureInit};
#[cfg(feature = "ebpf")]
use crate::capture_init::{Run, ebpf_node};

/// Who connects: uid and gid.
pub(crate) type Identity = (u32, u32);
/// The application: captured.
pub(crate) const APP: Identity = (APP_UID, APP_UID);
/// The proxy: never captured outbound.
pub(crate) const PROXY: Identity = (PROXY_UID, PROXY_UID);
/// Root, for the peer's clients.
pub(crate) const ROOT: Identity = (0, 0);

/// The `iptables` program of a flavor and family, e.g. `ip6tables-nft`.
pub(crate) fn iptables(flavor: Flavor, family: Family) -> String {
    let base = match family {
        Family::V4 => "iptables",
        Family::V6 => "ip6tables",
    };
    format!("{base}-{}", flavor.as_str())
}

/// `-6` for IPv6 `ip` commands.
pub(crate) fn ip_family(family: Family) -> &'static str {
    match family {
        Family::V4 => "-4",
        Family::V6 => "-6",
    }
}

/// A directory holding an `ip6tables-<flavor>-restore` that fails without changing anything,
/// to put first in `PATH` (removed on drop).
pub(crate) fn failing_ip6tables_restore(flavor: Flavor) -> capture_e2e::TempDir {
    let fake = capture_e2e::TempDir::new("fake-ip6tables");
    fake.script(
        &format!("{}-restore", iptables(flavor, Family::V6)),
        "#!/bin/sh\necho 'ip6tables-restore: line 2 failed (injected)' >&2\nexit 1\n",
    );
    fake
}

/// Both families' normalized saves.
pub(crate) fn saves(pod: &NetNs, flavor: Flavor) -> [String; 2] {
    [Family::V4, Family::V6].map(|family| iptables_save_normalized(pod, flavor, family))
}

/// The sidecar capture applied in `topo`'s pod, both families in `flavor`, and the saves it left.
pub(crate) fn sidecar_captured(topo: &Topology, flavor: Flavor) -> (CaptureInit<'_>, [String; 2]) {
    let init = CaptureInit::sidecar(&topo.pod, flavor, Family::V6);
    init.run().ok();
    let fresh = saves(&topo.pod, flavor);
    (init, fresh)
}

/// `nft -s list ruleset` in `pod` (without counter values, which traffic moves).
pub(crate) fn nft_ruleset(pod: &NetNs) -> String {
    run_ok(pod.command("nft").args(["-s", "list", "ruleset"]))
}

/// The `-A` lines of a save.
pub(crate) fn rules(save: &str) -> Vec<&str> {
    save.lines().filter(|l| l.starts_with("-A ")).collect()
}

#[track_caller]
pub(crate) fn assert_no_istio(pod: &NetNs, flavor: Flavor) {
    for family in [Family::V4, Family::V6] {
        let save = iptables_save_normalized(pod, flavor, family);
        assert!(!save.contains("ISTIO"), "{family:?} rules left behind:\n{save}");
    }
}

/// Nothing of capture's rules is left on `backend`: no `ISTIO` chain in either family of an
/// iptables flavour, or no `istio-proxy-*` table in nftables.
#[track_caller]
pub(crate) fn assert_no_capture(pod: &NetNs, backend: Backend) {
    match backend {
        Backend::Iptables(flavor) => assert_no_istio(pod, flavor),
        Backend::Nftables => {
            let ruleset = nft_ruleset(pod);
            assert!(
                !ruleset.contains("istio-proxy"),
                "nftables tables left behind:\n{ruleset}"
            );
        }
        #[cfg(feature = "ebpf")]
        Backend::Ebpf => unreachable!("eBPF rows check their maps"),
    }
}

/// Whether `::6` is on the pod's `lo`.
pub(crate) fn has_ipv6_passthrough(pod: &NetNs) -> bool {
    pod.ip(&["-6", "addr", "show", "dev", "lo"])
        .contains("inet6 ::6/128")
}

/// Host number `host` of the subnet the pod and the peer share: `10.<n>.0.<host>` or
/// `fd00:<n>::<host>`.
pub(crate) fn subnet_host(topo: &Topology, family: Family, host: u8) -> IpAddr {
    match topo.peer_ip(family) {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            IpAddr::V4(Ipv4Addr::new(a, b, c, host))
        }
        IpAddr::V6(v6) => {
            let mut segments = v6.segments();
            segments[7] = u16::from(host);
            IpAddr::V6(Ipv6Addr::from(segments))
        }
    }
}

/// An address in the pod's subnet that nobody holds: `10.<n>.0.3` or `fd00:<n>::3`. Captured traffic to
/// it still reaches the proxy, since the redirect happens before anything is sent.
pub(crate) fn nobody(topo: &Topology, family: Family, port: u16) -> SocketAddr {
    SocketAddr::new(subnet_host(topo, family, 3), port)
}

/// The peer's address as a host CIDR for `-x`.
pub(crate) fn peer_cidr(topo: &Topology, family: Family) -> String {
    match family {
        Family::V4 => format!("{}/32", topo.peer_ip(family)),
        Family::V6 => format!("{}/128", topo.peer_ip(family)),
    }
}

/// The proxy's outbound listener, `:15001` as uid 1337.
pub(crate) fn outbound_proxy(topo: &Topology, family: Family) -> Listener {
    let addr = SocketAddr::new(family.unspecified(), OUTBOUND_PORT);
    Listener::spawn_proxy(&topo.pod, addr, "outbound-proxy")
}

/// The proxy's inbound listener, `:15006` as uid 1337.
pub(crate) fn inbound_proxy(topo: &Topology, family: Family) -> Listener {
    let addr = SocketAddr::new(family.unspecified(), INBOUND_PORT);
    Listener::spawn_proxy(&topo.pod, addr, "inbound-proxy")
}

/// An application listening on the peer's `port`.
pub(crate) fn peer_app(topo: &Topology, family: Family, port: u16) -> Listener {
    Listener::spawn(
        &topo.peer,
        topo.peer_addr(family, port),
        &format!("peer-app:{port}"),
    )
}

/// An application listening on the pod's `port`.
pub(crate) fn pod_app(topo: &Topology, family: Family, port: u16) -> Listener {
    Listener::spawn(&topo.pod, topo.pod_addr(family, port), &format!("pod-app:{port}"))
}

/// Connects from `ns` as `who` to `dst` and asserts that the connection landed on `on` and nowhere
/// else, with `dst` as its original destination; returns what `on` saw.
#[track_caller]
pub(crate) fn assert_lands(ns: &NetNs, who: Identity, dst: SocketAddr, on: &Listener) -> Accepted {
    let (uid, gid) = who;
    let (reply, client) =
        connect_as(ns, uid, gid, dst).unwrap_or_else(|e| panic!("{uid}:{gid} in {} → {dst}: {e}", ns.name()));
    assert_eq!(
        reply,
        on.token(),
        "{uid}:{gid} → {dst} reached {reply:?}, expected {:?}",
        on.token()
    );
    let seen = on.take_one();
    assert_eq!(
        *seen
            .original_dst
            .as_ref()
            .expect("original_dst of the accepted socket"),
        dst,
        "{uid}:{gid} → {dst}: original destination"
    );
    assert_eq!(
        seen.peer, client,
        "{uid}:{gid} → {dst}: the listener sees the client"
    );
    // `capture-init explain` must predict it (for an inbound connection, from the client's
    // address; an outbound socket's source is not known before it connects).
    let inbound_src = crate::capture_init::installed(ns.name())
        .is_none()
        .then_some(client.ip());
    crate::explain::assert_explained(ns, who, inbound_src, dst, crate::explain::landed(dst, on));
    seen
}

/// Runs an eBPF row: in the test process, makes a test-owned cgroup v2 directory and bpffs, runs
/// this same test again in a child inside the cgroup (where `body` runs: `capture-init` loads the
/// programs there and every process and socket of the scenario belongs to the cgroup), then
/// checks that the programs left no per-connection state and that `capture-init ebpf unload`
/// leaves no program attached to the cgroup and nothing pinned.
#[cfg(feature = "ebpf")]
pub(crate) fn ebpf_row(body: impl FnOnce()) {
    if ebpf::in_cgroup_child().is_some() {
        body();
        return;
    }
    if !require_root() {
        return;
    }
    let world = EbpfWorld::empty();
    world.run_in_cgroup();
    if world.pin_dir.join("links").is_dir() {
        let node = world.node();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while node.connection_entries().expect("count connection entries") != (0, 0) {
            assert!(
                std::time::Instant::now() < deadline,
                "per-connection entries left: {:?}",
                node.connection_entries()
            );
            thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    let bpffs = world.bpffs.path().display().to_string();
    ebpf_node(&["unload", "--bpffs", &bpffs]).ok();
    let attached = world.attached();
    assert!(attached.is_empty(), "programs left attached: {attached:#?}");
    let pins = world.bpffs.contents();
    assert!(pins.is_empty(), "pins left behind: {pins:#?}");
}

/// `capture-init ebpf pods --bpffs <the row's bpffs>`.
#[cfg(feature = "ebpf")]
pub(crate) fn ebpf_pods() -> Run {
    let world = ebpf::child_world().expect("inside ebpf_row");
    ebpf_node(&["pods", "--bpffs", &world.bpffs.display().to_string()])
}

/// Sets the flag when dropped: stops a traffic thread however the test leaves its scope.
#[cfg(feature = "ebpf")]
pub(crate) struct StopOnDrop<'a>(pub(crate) &'a std::sync::atomic::AtomicBool);

#[cfg(feature = "ebpf")]
impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}
