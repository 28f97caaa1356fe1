//! The eBPF backend's inbound capture with real traffic: the `sk_lookup` program attached to
//! each enrolled pod's network namespace hands connections from the peer to the proxy's
//! inbound listener, which the sockops program learned when the proxy started listening.
//!
//! As in [`super::ebpf`], the programs are installed on a test cgroup and bpffs and each test
//! body runs in a child process inside the cgroup (the sockops program sees the proxy's
//! `listen()` only there); `sk_lookup` programs are attached only to namespaces the test made.

use std::fs::File;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::os::fd::AsFd;

use capture_core::{InboundPorts, PortRange};
use capture_ebpf::{MapPlan, PodNetns};
use nix::sys::socket::{Backlog, listen, sockopt};

use super::ebpf::{bound_tcp4, ebpf_test, enroll, finish, identical_topologies, installed_here, sidecar};
use capture_e2e::ebpf::{chain, sk_lookup_programs};
use capture_e2e::{
    APP_UID, Family, INBOUND_PORT, Listener, NetNs, PROXY_UID, Topology, connect_as, connect_as_from,
    passthrough,
};

/// The peer connecting to pod:8080 lands on the proxy's :15006, which learns pod:8080 (the
/// accepted socket's own local address: nothing was rewritten); the excluded port 15021 and
/// the tunnel port 15008 reach the pod's listeners directly.
fn inbound_is_captured(family: Family) {
    ebpf_test(|node| {
        let topo = Topology::new();
        let cookie = enroll(node, &topo.pod, &sidecar(family == Family::V6));
        assert_eq!(sk_lookup_programs(&topo.pod), 1);
        assert_eq!(sk_lookup_programs(&topo.peer), 0, "the peer is not enrolled");
        // The proxy starts after enrollment, as it does after the init container or CNI plugin.
        let proxy = Listener::spawn_proxy(
            &topo.pod,
            SocketAddr::new(family.unspecified(), INBOUND_PORT),
            "inbound",
        );
        let app = Listener::spawn(&topo.pod, topo.pod_addr(family, 8080), "pod-app");
        let health = Listener::spawn(&topo.pod, topo.pod_addr(family, 15021), "pod-15021");
        let tunnel = Listener::spawn(&topo.pod, topo.pod_addr(family, 15008), "pod-15008");
        let listener_family = match family {
            Family::V4 => libc::AF_INET,
            Family::V6 => libc::AF_INET6,
        };
        assert_eq!(
            node.inbound_listeners().unwrap(),
            [(cookie, u16::try_from(listener_family).unwrap())]
        );

        let dst = topo.pod_addr(family, 8080);
        let (reply, client) = connect_as(&topo.peer, 0, 0, dst).expect("peer connects to pod:8080");

        assert_eq!(reply, "inbound");
        let seen = proxy.take_one();
        assert_eq!(seen.original_dst.expect("original_dst"), dst);
        assert_eq!(seen.local, dst, "the proxy's socket keeps the dialled address");
        assert_eq!(seen.peer, client);
        assert_eq!(client.ip(), topo.peer_ip(family));
        assert!(
            app.take_accepted().is_empty(),
            "the app must not see captured traffic"
        );

        for (port, listener) in [(15021, &health), (15008, &tunnel)] {
            let dst = topo.pod_addr(family, port);
            let (reply, _) = connect_as(&topo.peer, 0, 0, dst).unwrap_or_else(|e| panic!("pod:{port}: {e}"));
            assert_eq!(reply, listener.token(), "port {port} is not captured");
            assert_eq!(listener.take_one().original_dst.expect("original_dst"), dst);
        }
        assert!(proxy.take_accepted().is_empty());
        let stats = node.stats().unwrap();
        assert_eq!((stats.inbound, stats.inbound_refused), (1, 0), "{stats:?}");
    });
}

per_family!(inbound_is_captured: inbound_v4, inbound_v6);

/// `-b 8080,15008`: only the listed port is captured, the tunnel port never; 8082 reaches the
/// app, also over IPv4 to a dual-stack `[::]:15006` proxy (which takes IPv4 when there is no
/// IPv4 listener).
#[test]
fn inbound_port_list_captures_only_its_ports() {
    ebpf_test(|node| {
        let topo = Topology::new();
        let mut spec = sidecar(true);
        spec.inbound.ports = InboundPorts::Only(
            [8080, 15008]
                .map(|p| PortRange::single(capture_core::Port::new(p)))
                .to_vec(),
        );
        enroll(node, &topo.pod, &spec);
        let proxy = Listener::spawn_proxy(&topo.pod, (Ipv6Addr::UNSPECIFIED, INBOUND_PORT).into(), "inbound");
        let on_8080 = Listener::spawn(&topo.pod, (Ipv6Addr::UNSPECIFIED, 8080).into(), "pod-8080");
        let on_8082 = Listener::spawn(&topo.pod, (Ipv6Addr::UNSPECIFIED, 8082).into(), "pod-8082");
        let tunnel = Listener::spawn(&topo.pod, (Ipv6Addr::UNSPECIFIED, 15008).into(), "pod-15008");
        for family in [Family::V4, Family::V6] {
            let (reply, _) = connect_as(&topo.peer, 0, 0, topo.pod_addr(family, 15008))
                .expect("peer connects to pod:15008");
            assert_eq!(reply, "pod-15008", "{family:?}: the tunnel port, listed or not");
            assert_eq!(tunnel.take_accepted().len(), 1);

            let listed = topo.pod_addr(family, 8080);
            let (reply, _) = connect_as(&topo.peer, 0, 0, listed).expect("peer connects to pod:8080");
            assert_eq!(reply, "inbound", "{family:?}: a listed port is captured");
            assert_eq!(proxy.take_one().original_dst.expect("original_dst"), listed);

            let other = topo.pod_addr(family, 8082);
            let (reply, _) = connect_as(&topo.peer, 0, 0, other).expect("peer connects to pod:8082");
            assert_eq!(reply, "pod-8082", "{family:?}: a port not listed is not captured");
            assert_eq!(on_8082.take_one().original_dst.expect("original_dst"), other);
        }
        assert!(on_8080.take_accepted().is_empty());
    });
}

/// The pod's own connections to its app are never captured inbound: the proxy's passthrough
/// from 127.0.0.6 / ::6, the proxy over loopback, and the app calling its own pod address.
#[test]
fn pod_own_connections_are_not_captured_inbound() {
    ebpf_test(|node| {
        let topo = Topology::new();
        enroll(node, &topo.pod, &sidecar(true));
        // Added after enrolling: the passthrough source is known to the programs regardless.
        topo.pod
            .ip(&["-6", "addr", "add", "::6/128", "dev", "lo", "nodad"]);
        let proxy = Listener::spawn_proxy(&topo.pod, (Ipv6Addr::UNSPECIFIED, INBOUND_PORT).into(), "inbound");
        let app = Listener::spawn(&topo.pod, (Ipv6Addr::UNSPECIFIED, 8080).into(), "pod-app");
        for family in [Family::V4, Family::V6] {
            let dst = topo.pod_addr(family, 8080);
            let (reply, client) = connect_as_from(&topo.pod, PROXY_UID, PROXY_UID, passthrough(family), dst)
                .expect("proxy connects from the passthrough address");
            assert_eq!(reply, "pod-app", "{family:?}: passthrough");
            let peer = app.take_one().peer;
            assert_eq!(
                (peer.ip().to_canonical(), peer.port()),
                (client.ip(), client.port())
            );

            let (reply, _) = connect_as(&topo.pod, APP_UID, APP_UID, dst).expect("app calls its pod");
            assert_eq!(reply, "pod-app", "{family:?}: the app calling its own pod");

            let local = SocketAddr::new(family.loopback(), 8080);
            let (reply, _) =
                connect_as(&topo.pod, PROXY_UID, PROXY_UID, local).expect("proxy calls loopback");
            assert_eq!(reply, "pod-app", "{family:?}: the proxy over loopback");
            assert_eq!(app.take_accepted().len(), 2);
        }
        assert!(proxy.take_accepted().is_empty());
        assert_eq!(node.stats().unwrap().inbound, 0);
    });
}

/// Envoy's workers each listen on the inbound port with `SO_REUSEPORT`: the one recorded last
/// stands for the group, and the kernel still spreads connections over all its members.
#[test]
fn reuseport_group_shares_inbound_connections() {
    ebpf_test(|node| {
        let topo = Topology::new();
        enroll(node, &topo.pod, &sidecar(false));
        let workers = ["worker-0", "worker-1"].map(|token| {
            let listener = topo
                .pod
                .run_as(PROXY_UID, PROXY_UID, || -> std::io::Result<TcpListener> {
                    let fd = bound_tcp4((Ipv4Addr::UNSPECIFIED, INBOUND_PORT).into(), sockopt::ReusePort)?;
                    listen(&fd, Backlog::new(128)?)?;
                    Ok(TcpListener::from(fd))
                })
                .expect("a worker listens");
            Listener::serve(listener, token)
        });
        let dst = topo.pod_addr(Family::V4, 8080);
        for i in 0..32 {
            let (reply, _) =
                connect_as(&topo.peer, 0, 0, dst).unwrap_or_else(|e| panic!("connection {i}: {e}"));
            assert!(reply.starts_with("worker-"), "{reply}");
        }
        let counts = workers.each_ref().map(|w| w.take_accepted().len());
        assert_eq!(counts.iter().sum::<usize>(), 32);
        assert!(
            counts.iter().all(|&n| n > 0),
            "both workers get connections: {counts:?}"
        );
    });
}

/// A pod in the same cgroup that is not enrolled gets no `sk_lookup` program, and its proxy's
/// listener is not recorded: the peer reaches its app.
#[test]
fn not_enrolled_netns_inbound_is_untouched() {
    ebpf_test(|node| {
        let enrolled = Topology::new();
        let other = Topology::new();
        let cookie = enroll(node, &enrolled.pod, &sidecar(true));
        let mut proxies = Vec::new();
        let mut apps = Vec::new();
        for (topo, name) in [(&enrolled, "enrolled"), (&other, "other")] {
            proxies.push(Listener::spawn_proxy(
                &topo.pod,
                (Ipv6Addr::UNSPECIFIED, INBOUND_PORT).into(),
                &format!("{name}-proxy"),
            ));
            apps.push(Listener::spawn(
                &topo.pod,
                (Ipv6Addr::UNSPECIFIED, 8080).into(),
                &format!("{name}-app"),
            ));
        }
        assert_eq!(sk_lookup_programs(&other.pod), 0);
        assert_eq!(
            node.inbound_listeners().unwrap(),
            [(cookie, u16::try_from(libc::AF_INET6).unwrap())],
            "only the enrolled pod's listener is recorded"
        );
        for family in [Family::V4, Family::V6] {
            let (reply, _) = connect_as(&other.peer, 0, 0, other.pod_addr(family, 8080)).expect("other pod");
            assert_eq!(reply, "other-app", "{family:?}");
            let (reply, _) =
                connect_as(&enrolled.peer, 0, 0, enrolled.pod_addr(family, 8080)).expect("enrolled pod");
            assert_eq!(reply, "enrolled-proxy", "{family:?}");
        }
        assert!(proxies[1].take_accepted().is_empty());
    });
}

/// Two enrolled pods with identical addresses: each peer's connection reaches its own pod's
/// proxy (each pod's own `sk_lookup` stub hands the node's program its cookie, which keys its
/// own recorded listener).
#[test]
fn identical_pods_keep_their_own_inbound_listeners() {
    ebpf_test(|node| {
        let [a, b] = identical_topologies();
        let spec = sidecar(true);
        let cookies = [enroll(node, &a.pod, &spec), enroll(node, &b.pod, &spec)];
        assert_ne!(cookies[0], cookies[1]);
        let proxies = [(&a, "proxy-a"), (&b, "proxy-b")].map(|(topo, token)| {
            Listener::spawn_proxy(&topo.pod, (Ipv6Addr::UNSPECIFIED, INBOUND_PORT).into(), token)
        });
        for family in [Family::V4, Family::V6] {
            for (topo, proxy) in [(&a, &proxies[0]), (&b, &proxies[1])] {
                let dst = topo.pod_addr(family, 8080);
                let (reply, _) = connect_as(&topo.peer, 0, 0, dst).expect("peer connects");
                assert_eq!(reply, proxy.token(), "{family:?}");
                assert_eq!(proxy.take_one().original_dst.expect("original_dst"), dst);
            }
        }
    });
}

/// A proxy that was listening before its pod was enrolled (as after a reinstall of the node's
/// programs) is found by enrolling; unenrolling detaches the pod's `sk_lookup` program and the
/// app is reached directly again.
#[test]
fn early_listener_is_adopted_and_unenroll_detaches() {
    ebpf_test(|node| {
        let topo = Topology::new();
        let proxy = Listener::spawn_proxy(&topo.pod, (Ipv4Addr::UNSPECIFIED, INBOUND_PORT).into(), "inbound");
        let app = Listener::spawn(&topo.pod, topo.pod_addr(Family::V4, 8080), "pod-app");
        let cookie = enroll(node, &topo.pod, &sidecar(false));
        assert_eq!(
            node.inbound_listeners().unwrap(),
            [(cookie, u16::try_from(libc::AF_INET).unwrap())]
        );
        let dst = topo.pod_addr(Family::V4, 8080);

        let (reply, _) = connect_as(&topo.peer, 0, 0, dst).expect("peer connects");
        assert_eq!(reply, "inbound");
        assert_eq!(proxy.take_one().original_dst.expect("original_dst"), dst);

        assert!(node.unenroll(cookie).unwrap());
        assert_eq!(sk_lookup_programs(&topo.pod), 0, "unenroll detaches sk_lookup");
        assert!(!node.inbound_attached(cookie));
        assert!(node.inbound_listeners().unwrap().is_empty());
        let (reply, _) = connect_as(&topo.peer, 0, 0, dst).expect("peer connects");
        assert_eq!(reply, "pod-app");
        assert_eq!(app.take_accepted().len(), 1);
    });
}

/// A pod whose proxy's listener is unknown to the programs (here: it listens after enrollment
/// from outside the programs' cgroup) refuses inbound connections, as `REDIRECT` to a port
/// nobody listens on does, until the listener is registered by hand. This test's own process
/// makes the sockets: it is not in the test cgroup, so the sockops program never sees them.
#[test]
fn unknown_listener_refuses_until_registered() {
    let Some((world, mut node)) = installed_here() else {
        return;
    };
    let topo = Topology::new();
    let cookie = enroll(&mut node, &topo.pod, &sidecar(true));
    let listener = topo
        .pod
        .run(|| TcpListener::bind((Ipv6Addr::UNSPECIFIED, INBOUND_PORT)))
        .expect("the proxy listens");
    let handle = listener.try_clone().expect("dup the listener");
    let proxy = Listener::serve(listener, "inbound");
    let app = Listener::spawn(&topo.pod, (Ipv6Addr::UNSPECIFIED, 8080).into(), "pod-app");
    assert!(node.inbound_listeners().unwrap().is_empty());

    for family in [Family::V4, Family::V6] {
        let dst = topo.pod_addr(family, 8080);
        let err = connect_as(&topo.peer, 0, 0, dst).expect_err("no listener known: refused");
        assert_eq!(
            err.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "{family:?}: {err}"
        );
    }
    assert_eq!(node.stats().unwrap().inbound_refused, 2);

    node.register_inbound_listener(cookie, handle.as_fd())
        .unwrap_or_else(|e| panic!("register: {}", chain(&e)));
    for family in [Family::V4, Family::V6] {
        let dst = topo.pod_addr(family, 8080);
        let (reply, _) = connect_as(&topo.peer, 0, 0, dst).expect("peer connects");
        assert_eq!(reply, "inbound", "{family:?}");
        assert_eq!(proxy.take_one().original_dst.expect("original_dst"), dst);
    }
    assert!(app.take_accepted().is_empty());
    drop((proxy, app, handle, topo, node));
    finish(world);
}

/// A listener on the inbound port bound to loopback (istio-validation's `127.0.0.1:15006`)
/// serves only the pod itself: it is not recorded, and the peer is refused as it would be with
/// nothing listening on the inbound port.
#[test]
fn loopback_listener_is_not_the_inbound_listener() {
    ebpf_test(|node| {
        let topo = Topology::new();
        enroll(node, &topo.pod, &sidecar(false));
        let validator =
            Listener::spawn_proxy(&topo.pod, (Ipv4Addr::LOCALHOST, INBOUND_PORT).into(), "validator");
        assert!(node.inbound_listeners().unwrap().is_empty());
        let err = connect_as(&topo.peer, 0, 0, topo.pod_addr(Family::V4, 8080)).expect_err("refused");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
        assert!(validator.take_accepted().is_empty());
    });
}

/// Enrolling checks that the namespace given is the pod's, and uninstalling with pods still
/// enrolled detaches their `sk_lookup` programs and leaves no pin.
#[test]
fn uninstall_detaches_enrolled_pods() {
    let Some((world, mut node)) = installed_here() else {
        return;
    };
    let (a, b) = (NetNs::new(), NetNs::new());
    let plan = MapPlan::from_spec(&sidecar(true)).unwrap();
    let pod_a = a.run(PodNetns::current).unwrap();
    let netns_b = File::open(b.path()).unwrap();
    let err = node.enroll_netns(netns_b.as_fd(), &pod_a, &plan).unwrap_err();
    assert!(
        matches!(err, capture_ebpf::Error::NetnsMismatch { .. }),
        "{}",
        chain(&err)
    );
    assert_eq!(
        sk_lookup_programs(&b),
        0,
        "nothing attached on a refused enrollment"
    );
    let err = node.enroll(&pod_a, &plan).unwrap_err();
    assert!(matches!(err, capture_ebpf::Error::NetnsMismatch { .. }), "{err}");
    a.run(|| node.enroll(&pod_a, &plan))
        .unwrap_or_else(|e| panic!("enroll in the pod's netns: {}", chain(&e)));
    enroll(&mut node, &b, &sidecar(false));
    // Enrolling again (a new configuration) keeps the one attachment.
    enroll(&mut node, &b, &sidecar(true));
    assert_eq!((sk_lookup_programs(&a), sk_lookup_programs(&b)), (1, 1));
    drop(node);
    finish(world);
    assert_eq!((sk_lookup_programs(&a), sk_lookup_programs(&b)), (0, 0));
}
