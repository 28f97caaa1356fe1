//! The eBPF backend with real traffic: capture's programs installed on a test-owned cgroup and
//! pinned in a test-owned bpffs, the test body running in a child process inside that cgroup
//! (see [`capture_e2e::ebpf`]), packets moving only between the harness's namespaces.
//!
//! Every test ends the same way ([`ebpf_test`]): no per-connection map entries remain, and
//! uninstalling leaves no program attached to the cgroup (`bpftool cgroup tree`) and nothing
//! pinned.

use std::fs::File;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use capture_core::{CaptureSpec, Cidr, PortRange};
use capture_ebpf::{MapPlan, NetnsCookie, Node, PinDir, PodNetns};
use nix::sys::socket::{
    AddressFamily, SetSockOpt, SockFlag, SockType, SockaddrStorage, bind, connect, setsockopt, socket,
    sockopt,
};

use capture_e2e::ebpf::{EbpfWorld, chain, in_cgroup_child};
use capture_e2e::{
    APP_UID, Family, Flavor, INBOUND_PORT, Listener, NetNs, OUTBOUND_PORT, PROXY_UID, Topology, connect_as,
    connect_detailed, iptables_restore, require_root, run_ok,
};

/// Installs the programs on a test cgroup, runs `body` in a child process inside it, then checks
/// that nothing is left: no per-connection entries, and after uninstalling no attachment and no pin.
pub(super) fn ebpf_test(body: impl FnOnce(&mut Node)) {
    if let Some(pin_dir) = in_cgroup_child() {
        let mut node = Node::open(&PinDir::at(pin_dir)).unwrap_or_else(|e| panic!("open: {}", chain(&e)));
        body(&mut node);
        return;
    }
    if !require_root() {
        return;
    }
    let world = EbpfWorld::new();
    let attached = world.attached();
    assert_eq!(
        attached.len(),
        11,
        "eleven programs attached to the test cgroup (connect4/6, sockops, getsockopt, \
         getpeername4/6, sendmsg4/6, recvmsg4/6, sock_release): {attached:#?}"
    );
    world.run_in_cgroup();
    finish(world);
}

/// For a test that drives the programs from the test process itself, outside the test cgroup:
/// the programs installed and their node, or `None` where it does not run (in the cgroup child
/// of an [`ebpf_test`], or without root). It ends with [`finish`].
pub(super) fn installed_here() -> Option<(EbpfWorld, Node)> {
    if in_cgroup_child().is_some() || !require_root() {
        return None;
    }
    let world = EbpfWorld::new();
    let node = world.node();
    Some((world, node))
}

/// The common end of every test: per-connection state gone, clean uninstall.
pub(super) fn finish(mut world: EbpfWorld) {
    let node = world.node();
    assert_no_connection_entries(&node);
    drop(node);
    world.uninstall();
    let attached = world.attached();
    assert!(attached.is_empty(), "programs left attached: {attached:#?}");
    let pins = world.bpffs.contents();
    assert!(pins.is_empty(), "pins left behind: {pins:#?}");
}

/// Waits (briefly: closing sockets finish their handshakes) until no per-connection entry is left.
fn assert_no_connection_entries(node: &Node) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let entries = node.connection_entries().expect("count connection entries");
        if entries == (0, 0) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "per-connection entries left (by cookie, by 4-tuple): {entries:?}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// Enrolls `ns` with `spec`, as seen from inside it.
pub(super) fn enroll(node: &mut Node, ns: &NetNs, spec: &CaptureSpec) -> NetnsCookie {
    let pod = ns
        .run(PodNetns::current)
        .unwrap_or_else(|e| panic!("inspect netns: {}", chain(&e)));
    let plan = MapPlan::from_spec(spec).unwrap_or_else(|e| panic!("plan: {}", chain(&e)));
    let netns = File::open(ns.path()).expect("open the netns");
    node.enroll_netns(netns.as_fd(), &pod, &plan)
        .unwrap_or_else(|e| panic!("enroll: {}", chain(&e)));
    pod.cookie
}

/// The outbound listener the programs redirect to: `ip`:15001, bound as root (the programs
/// redirect to the port, whoever listens there).
pub(super) fn outbound_listener(ns: &NetNs, ip: impl Into<IpAddr>, token: &str) -> Listener {
    Listener::spawn(ns, SocketAddr::new(ip.into(), OUTBOUND_PORT), token)
}

/// A new pod enrolled with the sidecar spec (IPv6 capture on with `ipv6`), and its proxy's
/// [`outbound_listener`] on `ip`.
fn enrolled_with_proxy(
    node: &mut Node,
    ipv6: bool,
    ip: impl Into<IpAddr>,
    token: &str,
) -> (Topology, Listener) {
    let topo = Topology::new();
    enroll(node, &topo.pod, &sidecar(ipv6));
    let proxy = outbound_listener(&topo.pod, ip, token);
    (topo, proxy)
}

/// Two topologies with identical addresses, each in namespaces of its own.
pub(super) fn identical_topologies() -> [Topology; 2] {
    let a = Topology::new();
    let b = Topology::with_index(a.index());
    assert_eq!(a.pod_ip(Family::V4), b.pod_ip(Family::V4));
    [a, b]
}

/// An IPv4 TCP socket with the boolean option `option` on, bound to `addr`: for sockets that
/// share an address (`SO_REUSEADDR` clients, `SO_REUSEPORT` listeners).
pub(super) fn bound_tcp4(addr: SocketAddr, option: impl SetSockOpt<Val = bool>) -> std::io::Result<OwnedFd> {
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    setsockopt(&fd, option, &true)?;
    bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))?;
    Ok(fd)
}

pub(super) fn sidecar(ipv6: bool) -> CaptureSpec {
    let mut spec = CaptureSpec::sidecar();
    spec.ipv6 = ipv6;
    spec
}

/// An app connect to peer:80 lands on the outbound listener, which learns peer:80 through
/// `SO_ORIGINAL_DST`; the app's `getpeername()` still says peer:80.
fn outbound_is_captured(family: Family) {
    ebpf_test(|node| {
        let (topo, proxy) = enrolled_with_proxy(node, family == Family::V6, family.unspecified(), "outbound");
        let app = Listener::spawn(&topo.peer, topo.peer_addr(family, 80), "peer-app");
        let dst = topo.peer_addr(family, 80);

        let conn = connect_detailed(&topo.pod, APP_UID, APP_UID, dst).expect("pod app connects to peer:80");

        assert_eq!(conn.reply, "outbound");
        let seen = proxy.take_one();
        assert_eq!(
            seen.original_dst
                .expect("original_dst on the redirected connection"),
            dst
        );
        assert_eq!(seen.local, SocketAddr::new(family.loopback(), OUTBOUND_PORT));
        assert_eq!(seen.peer, conn.local);
        assert_eq!(conn.peer, dst, "getpeername() shows the original destination");
        assert!(
            app.take_accepted().is_empty(),
            "the peer must not see captured traffic"
        );
        let stats = node.stats().unwrap();
        assert_eq!(
            (stats.outbound, stats.orig_dst, stats.peername),
            (1, 1, 1),
            "{stats:?}"
        );
    });
}

per_family!(outbound_is_captured: outbound_v4, outbound_v6);

/// IPv4 through dual-stack sockets both ways: an `AF_INET6` app socket dialling
/// `::ffff:peer:80` is captured as IPv4, and a dual-stack `[::]:15001` proxy learns an IPv4
/// client's original destination as plain IPv4.
#[test]
fn dual_stack_sockets_are_captured_as_ipv4() {
    ebpf_test(|node| {
        // IPv6 capture off: an IPv4-mapped destination is IPv4 traffic all the same.
        let (topo, proxy) = enrolled_with_proxy(node, false, Ipv4Addr::UNSPECIFIED, "outbound-v4");
        let peer = topo.peer_addr(Family::V4, 80);
        let IpAddr::V4(peer_ip) = peer.ip() else {
            unreachable!()
        };
        let mapped = SocketAddr::new(peer_ip.to_ipv6_mapped().into(), 80);

        let conn = connect_detailed(&topo.pod, APP_UID, APP_UID, mapped).expect("AF_INET6 app connects");

        assert_eq!(conn.reply, "outbound-v4");
        assert_eq!(proxy.take_one().original_dst.expect("original_dst"), peer);
        assert_eq!(
            conn.peer, mapped,
            "getpeername() shows the mapped original destination"
        );

        let (topo, proxy) = enrolled_with_proxy(node, false, Ipv6Addr::UNSPECIFIED, "outbound-dual");
        let peer = topo.peer_addr(Family::V4, 80);

        let (reply, _) = connect_as(&topo.pod, APP_UID, APP_UID, peer).expect("AF_INET app connects");

        assert_eq!(reply, "outbound-dual");
        let seen = proxy.take_one();
        let loopback = Ipv4Addr::LOCALHOST.to_ipv6_mapped();
        assert_eq!(seen.local, SocketAddr::new(loopback.into(), OUTBOUND_PORT));
        assert_eq!(
            seen.original_dst.expect("original_dst on a v4-mapped socket"),
            peer
        );
    });
}

/// Connections owned by uid 1337, gid 1337 or both reach the peer directly.
#[test]
fn proxy_uid_and_gid_bypass_capture() {
    ebpf_test(|node| {
        let (topo, proxy) = enrolled_with_proxy(node, true, Ipv6Addr::UNSPECIFIED, "outbound");
        for family in [Family::V4, Family::V6] {
            let app = Listener::spawn(&topo.peer, topo.peer_addr(family, 80), "peer-app");
            let dst = topo.peer_addr(family, 80);
            for (uid, gid) in [(PROXY_UID, PROXY_UID), (PROXY_UID, APP_UID), (APP_UID, PROXY_UID)] {
                let (reply, _) = connect_as(&topo.pod, uid, gid, dst)
                    .unwrap_or_else(|e| panic!("{uid}:{gid} connects to {dst}: {e}"));
                assert_eq!(reply, "peer-app", "{uid}:{gid} must bypass capture");
                assert_eq!(app.take_one().original_dst.expect("original_dst"), dst);
            }
        }
        assert!(
            proxy.take_accepted().is_empty(),
            "the proxy's own traffic must not loop back"
        );
    });
}

/// Excluded ports (`-o`) and CIDRs (`-x`) reach the peer directly; re-enrolling with another
/// configuration takes effect at once.
#[test]
fn excluded_ports_and_cidrs_bypass_capture() {
    ebpf_test(|node| {
        let topo = Topology::new();
        let proxy = outbound_listener(&topo.pod, Ipv6Addr::UNSPECIFIED, "outbound");
        let on_80 = Listener::spawn(&topo.peer, topo.peer_addr(Family::V4, 80), "peer-80");
        let on_81 = Listener::spawn(&topo.peer, topo.peer_addr(Family::V4, 81), "peer-81");
        let connect = |port| {
            connect_as(&topo.pod, APP_UID, APP_UID, topo.peer_addr(Family::V4, port))
                .unwrap_or_else(|e| panic!("connect to peer:{port}: {e}"))
                .0
        };

        let mut spec = sidecar(false);
        spec.outbound.exclude_ports = vec![PortRange::single(capture_core::Port::new(80))];
        let cookie = enroll(node, &topo.pod, &spec);
        assert_eq!(connect(80), "peer-80", "excluded port");
        assert_eq!(connect(81), "outbound", "a port not excluded");

        let mut spec = sidecar(false);
        spec.outbound.exclude_cidrs = vec![Cidr::new(topo.peer_ip(Family::V4), 24).unwrap()];
        enroll(node, &topo.pod, &spec);
        assert_eq!(node.config(cookie).unwrap().map(|c| c.generation), Some(2));
        assert_eq!(connect(81), "peer-81", "excluded CIDR");
        assert_eq!(connect(80), "peer-80", "excluded CIDR");

        assert_eq!(proxy.take_accepted().len(), 1);
        assert_eq!(on_80.take_accepted().len(), 2);
        assert_eq!(on_81.take_accepted().len(), 1);
        assert!(node.unenroll(cookie).unwrap());
        assert!(
            !node.unenroll(cookie).unwrap(),
            "unenrolling a pod that is not enrolled says so instead of failing"
        );
        assert_eq!(
            node.pod_entries(cookie).unwrap(),
            0,
            "unenroll removes every entry of the pod"
        );
        assert!(node.pods().unwrap().is_empty());
    });
}

/// A second pod in the same cgroup that is not enrolled is left alone, listener on 15001 or not.
#[test]
fn not_enrolled_netns_is_untouched() {
    ebpf_test(|node| {
        let enrolled = Topology::new();
        let other = Topology::new();
        enroll(node, &enrolled.pod, &sidecar(true));
        let enrolled_proxy = outbound_listener(&enrolled.pod, Ipv6Addr::UNSPECIFIED, "enrolled-proxy");
        let other_proxy = outbound_listener(&other.pod, Ipv6Addr::UNSPECIFIED, "other-proxy");
        for family in [Family::V4, Family::V6] {
            let app = Listener::spawn(&other.peer, other.peer_addr(family, 80), "other-peer");
            let dst = other.peer_addr(family, 80);
            let conn =
                connect_detailed(&other.pod, APP_UID, APP_UID, dst).expect("connect from the other pod");
            assert_eq!(conn.reply, "other-peer");
            assert_eq!(conn.peer, dst);
            assert_eq!(app.take_one().peer, conn.local);
        }
        let (reply, _) = connect_as(
            &enrolled.pod,
            APP_UID,
            APP_UID,
            enrolled.peer_addr(Family::V4, 80),
        )
        .expect("connect from the enrolled pod");
        assert_eq!(reply, "enrolled-proxy");
        assert!(other_proxy.take_accepted().is_empty());
        assert_eq!(enrolled_proxy.take_accepted().len(), 1);
    });
}

/// The proxy calling its own pod's address goes to the inbound port, first time (Istio's hairpin
/// rule; merbridge#167 fails the first one); the app calling its own pod, or anyone calling
/// 127.0.0.1, is not captured.
#[test]
fn proxy_to_own_pod_goes_to_inbound_port() {
    ebpf_test(|node| {
        let topo = Topology::new();
        enroll(node, &topo.pod, &sidecar(true));
        let inbound = Listener::spawn(&topo.pod, (Ipv6Addr::UNSPECIFIED, INBOUND_PORT).into(), "inbound");
        let outbound = outbound_listener(&topo.pod, Ipv6Addr::UNSPECIFIED, "outbound");
        let app = Listener::spawn(&topo.pod, (Ipv6Addr::UNSPECIFIED, 8080).into(), "pod-app");
        for family in [Family::V4, Family::V6] {
            let own = topo.pod_addr(family, 8080);
            let (reply, _) = connect_as(&topo.pod, PROXY_UID, PROXY_UID, own).expect("proxy calls its pod");
            assert_eq!(
                reply, "inbound",
                "{family:?}: the first connection reaches the inbound port"
            );
            assert_eq!(inbound.take_one().original_dst.expect("original_dst"), own);

            let (reply, _) = connect_as(&topo.pod, APP_UID, APP_UID, own).expect("app calls its pod");
            assert_eq!(reply, "pod-app");
            let local = SocketAddr::new(family.loopback(), 8080);
            for uid in [PROXY_UID, APP_UID] {
                let (reply, _) = connect_as(&topo.pod, uid, uid, local).expect("call loopback");
                assert_eq!(reply, "pod-app", "uid {uid} to {local}");
            }
            assert_eq!(app.take_accepted().len(), 3);
        }
        assert!(outbound.take_accepted().is_empty());
    });
}

/// Two enrolled pods with identical addresses open connections with identical 4-tuples (same
/// client address and port, both redirected to 127.0.0.1:15001) to different destinations; each
/// proxy learns its own pod's destination. Both records exist at once: the proxies accept only
/// after both clients are connected.
#[test]
fn identical_tuples_in_two_pods_do_not_mix() {
    ebpf_test(|node| {
        let [a, b] = identical_topologies();
        let spec = sidecar(false);
        enroll(node, &a.pod, &spec);
        enroll(node, &b.pod, &spec);
        let listen = |ns: &NetNs| {
            ns.run(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, OUTBOUND_PORT)))
                .expect("proxy listens")
        };
        let (proxy_a, proxy_b) = (listen(&a.pod), listen(&b.pod));
        let source = a.pod_addr(Family::V4, 40_000);
        let open_client = |ns: &NetNs, dst: SocketAddr| {
            ns.run(|| -> std::io::Result<TcpStream> {
                let fd = bound_tcp4(source, sockopt::ReuseAddr)?;
                connect(fd.as_raw_fd(), &SockaddrStorage::from(dst))?;
                Ok(TcpStream::from(fd))
            })
            .unwrap_or_else(|e| panic!("connect to {dst}: {e}"))
        };
        let (dst_a, dst_b) = (a.peer_addr(Family::V4, 80), b.peer_addr(Family::V4, 81));
        let client_a = open_client(&a.pod, dst_a);
        let client_b = open_client(&b.pod, dst_b);
        assert_eq!(client_a.local_addr().unwrap(), source);
        assert_eq!(client_b.local_addr().unwrap(), source);
        assert_eq!(node.connection_entries().unwrap(), (2, 2));

        for (proxy, dst) in [(&proxy_a, dst_a), (&proxy_b, dst_b)] {
            let (accepted, peer) = proxy.accept().expect("the proxy accepts");
            assert_eq!(peer, source);
            assert_eq!(capture_core::original_dst(&accepted).expect("original_dst"), dst);
        }
    });
}

/// 10,000 captured connect/close cycles leave no per-connection entry (checked by [`finish`]).
#[test]
fn connect_close_cycles_leave_no_entries() {
    const CYCLES: u64 = 10_000;
    ebpf_test(|node| {
        let (topo, proxy) = enrolled_with_proxy(node, false, Ipv4Addr::UNSPECIFIED, "outbound");
        let dst = topo.peer_addr(Family::V4, 80);
        // Root is not the proxy's uid, so these are app connections; one thread does them all.
        topo.pod.run(|| {
            for i in 0..CYCLES {
                let mut stream = TcpStream::connect(dst).unwrap_or_else(|e| panic!("cycle {i}: {e}"));
                let mut reply = String::new();
                stream.read_to_string(&mut reply).expect("read the token");
                assert_eq!(reply, "outbound", "cycle {i}");
            }
        });
        let accepted = proxy.take_accepted();
        assert_eq!(accepted.len() as u64, CYCLES);
        assert!(
            accepted
                .iter()
                .all(|a| a.original_dst.as_ref().is_ok_and(|d| *d == dst))
        );
        assert_no_connection_entries(node);
        assert_eq!(node.stats().unwrap().outbound, CYCLES);
    });
}

/// A large getsockopt (iptables' `IPT_SO_GET_ENTRIES`, tens of kilobytes here) run inside the
/// cgroup of an enrolled pod returns the same as outside it: the getsockopt program leaves every
/// option but `SO_ORIGINAL_DST` alone (merbridge#323 truncated it to 4096 bytes).
#[test]
fn iptables_save_is_the_same_inside_the_cgroup() {
    let Some((world, mut node)) = installed_here() else {
        return;
    };
    let ns = NetNs::new();
    enroll(&mut node, &ns, &sidecar(true));
    let mut payload = String::from("*filter\n:CAPTURE_TEST - [0:0]\n");
    for i in 0..400 {
        payload.push_str(&format!(
            "-A CAPTURE_TEST -s 10.{}.{}.0/24 -p tcp --dport {} -m comment --comment \"rule {i}\" -j ACCEPT\n",
            i / 256,
            i % 256,
            1000 + i
        ));
    }
    payload.push_str("COMMIT\n");
    iptables_restore(&ns, Flavor::Legacy, Family::V4, &payload);

    let save = |in_cgroup: bool| {
        let mut cmd = ns.command("iptables-legacy-save");
        cmd.args(["-t", "filter"]);
        if in_cgroup {
            world.cgroup.enter_on_exec(&mut cmd);
        }
        run_ok(&mut cmd)
            .lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let outside = save(false);
    let inside = save(true);
    assert!(outside.contains("rule 399"), "{outside}");
    assert!(
        outside.len() > 8 * 4096,
        "the rule set is large: {} bytes",
        outside.len()
    );
    assert_eq!(inside, outside);
    assert!(world.cgroup.procs().is_empty());
    drop(node);
    drop(ns);
    finish(world);
}

/// The loader refuses a pin directory outside bpffs, and a directory that is not a cgroup v2
/// one, before changing anything.
#[test]
fn install_needs_bpffs_and_cgroup2() {
    if in_cgroup_child().is_some() || !require_root() {
        return;
    }
    let cgroup = capture_e2e::ebpf::TestCgroup::new();
    let dir = std::env::temp_dir().join(format!("capture-test-notbpf-{}", std::process::id()));
    let err = Node::load(cgroup.path(), &PinDir::at(&dir)).unwrap_err();
    assert!(matches!(err, capture_ebpf::Error::NotBpffs { .. }), "{err}");
    assert!(!dir.exists());
    let attached = run_ok(
        Command::new("bpftool")
            .arg("cgroup")
            .arg("tree")
            .arg(cgroup.path()),
    );
    assert!(!attached.contains("capture_"), "{attached}");
}

/// `Node::open_for` uses pinned programs only where they act: on their cgroup and below it. The
/// links' cgroup id is the directory's inode number (as bpftool reports it); any other cgroup is
/// refused naming both, and so is every cgroup once a link is detached behind capture's back.
#[test]
fn open_for_checks_where_the_programs_act() {
    use std::os::unix::fs::MetadataExt as _;

    use capture_ebpf::{AttachedCgroup, Attachment, CgroupId, Error};

    if in_cgroup_child().is_some() || !require_root() {
        return;
    }
    let world = EbpfWorld::new();
    let cgroup = world.cgroup.path();
    let id = CgroupId::of(cgroup).unwrap();
    assert_eq!(id.0, std::fs::metadata(cgroup).unwrap().ino());
    let links = world.pins().links();
    let info = run_ok(
        Command::new("bpftool")
            .args(["link", "show", "pinned"])
            .arg(links.join("capture_connect4")),
    );
    assert!(info.contains(&format!("cgroup_id {id} ")), "{info}");
    let here = AttachedCgroup {
        id,
        path: Some(cgroup.to_owned()),
    };
    assert_eq!(
        world.node().attachment().unwrap(),
        Attachment::Cgroup(here.clone())
    );

    Node::open_for(cgroup, &world.pins()).unwrap_or_else(|e| panic!("{}", chain(&e)));
    let below = capture_e2e::ebpf::TestCgroup::under(cgroup);
    Node::open_for(below.path(), &world.pins()).unwrap_or_else(|e| panic!("{}", chain(&e)));

    let sibling = capture_e2e::ebpf::TestCgroup::new();
    let root = capture_ebpf::cgroup2_root().unwrap();
    for other in [sibling.path(), root.as_path()] {
        let err = Node::open_for(other, &world.pins()).unwrap_err();
        let other_id = CgroupId::of(other).unwrap();
        assert!(
            matches!(
                &err,
                Error::AttachedElsewhere { pin_dir, attached, cgroup, cgroup_id }
                    if *pin_dir == world.pin_dir && *attached == here && cgroup == other && *cgroup_id == other_id
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!(
                "capture's programs under {} are attached to cgroup {} (id {id}), and {} (id {other_id}) \
                 is neither that cgroup nor below it, so its processes would not be captured; \
                 uninstall the programs first, or use that cgroup",
                world.pin_dir.display(),
                cgroup.display(),
                other.display()
            )
        );
    }
    let not_cgroup = Node::open_for(&world.pin_dir, &world.pins()).unwrap_err();
    assert!(matches!(not_cgroup, Error::NotCgroup2 { .. }), "{not_cgroup}");

    run_ok(
        Command::new("bpftool")
            .args(["link", "detach", "pinned"])
            .arg(links.join("capture_getsockopt")),
    );
    let detached = Attachment::Detached {
        program: "capture_getsockopt",
    };
    assert_eq!(world.node().attachment().unwrap(), detached);
    let err = Node::open_for(cgroup, &world.pins()).unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Detached {
                program: "capture_getsockopt",
                ..
            }
        ),
        "{err:?}"
    );
    drop((below, sibling));
    finish(world);
}

/// A front end other than capture-init (capture-cni on ADD) enrolls a pod with capture-ebpf's
/// public API alone, from the node's network namespace, given the pod's netns and a
/// `CaptureSpec`: the first call loads the programs on the cgroup (nothing was pinned), the pod
/// gets `::6` and is captured, a rerun changes nothing, and another spec updates it in place.
#[test]
fn a_front_end_enrolls_a_pod_with_the_public_api_alone() {
    use capture_core::Port;
    use capture_ebpf::Change;

    if let Some(world) = capture_e2e::ebpf::child_world() {
        let topo = Topology::new();
        let proxy = outbound_listener(&topo.pod, Ipv6Addr::UNSPECIFIED, "outbound");
        let app = Listener::spawn(&topo.peer, topo.peer_addr(Family::V4, 80), "peer-app");
        let dst = topo.peer_addr(Family::V4, 80);

        // What capture-cni does: bpffs, then the node's programs, then the pod by its netns.
        let pins = PinDir::new(&world.bpffs);
        pins.mount().unwrap_or_else(|e| panic!("mount: {}", chain(&e)));
        let (mut node, loaded) =
            Node::open_or_load(&world.cgroup, &pins).unwrap_or_else(|e| panic!("load: {}", chain(&e)));
        assert_eq!(
            loaded,
            Change::Applied,
            "nothing was pinned, so the programs are loaded"
        );
        let netns = File::open(topo.pod.path()).expect("open the pod's netns");
        let apply = |node: &mut Node, spec: &CaptureSpec| {
            let spec = capture_ebpf::resolve_owners(spec).unwrap_or_else(|e| panic!("owners: {}", chain(&e)));
            let plan = MapPlan::from_spec(&spec).unwrap_or_else(|e| panic!("plan: {}", chain(&e)));
            let pod =
                PodNetns::set_up_netns(netns.as_fd(), &plan).unwrap_or_else(|e| panic!("pod: {}", chain(&e)));
            let change = node
                .apply_netns(netns.as_fd(), &pod, &plan)
                .unwrap_or_else(|e| panic!("apply: {}", chain(&e)));
            (change, pod.cookie)
        };

        let (change, cookie) = apply(&mut node, &sidecar(true));
        assert_eq!(change, Change::Applied);
        assert!(
            topo.pod
                .run(capture_core::netlink::ipv6_passthrough_address_present)
                .unwrap(),
            "::6 is on the pod's lo"
        );
        let conn = connect_detailed(&topo.pod, APP_UID, APP_UID, dst).expect("pod app connects to peer:80");
        assert_eq!(conn.reply, "outbound");
        assert_eq!(proxy.take_one().original_dst.expect("original_dst"), dst);

        assert_eq!(apply(&mut node, &sidecar(true)), (Change::Unchanged, cookie));
        assert_eq!(node.config(cookie).unwrap().map(|c| c.generation), Some(1));

        let mut spec = sidecar(true);
        spec.outbound.exclude_ports = vec![PortRange::single(Port::new(80))];
        assert_eq!(apply(&mut node, &spec), (Change::Updated, cookie));
        let conn = connect_detailed(&topo.pod, APP_UID, APP_UID, dst).expect("pod app connects to peer:80");
        assert_eq!(conn.reply, "peer-app", "port 80 excluded now");
        assert_eq!(app.take_accepted().len(), 1);

        // The node lock went with the node; the next front end finds the programs loaded.
        drop(node);
        let (_, found) =
            Node::open_or_load(&world.cgroup, &pins).unwrap_or_else(|e| panic!("open: {}", chain(&e)));
        assert_eq!(found, Change::Unchanged);
        return;
    }
    if !require_root() {
        return;
    }
    let world = EbpfWorld::empty();
    world.run_in_cgroup();
    assert!(world.pins().is_loaded(), "the child loaded the programs");
    let node = world.node();
    assert_no_connection_entries(&node);
    drop(node);
    capture_ebpf::unload(&world.pins()).unwrap_or_else(|e| panic!("unload: {}", chain(&e)));
    let attached = world.attached();
    assert!(attached.is_empty(), "programs left attached: {attached:#?}");
    let pins = world.bpffs.contents();
    assert!(pins.is_empty(), "pins left behind: {pins:#?}");
}
