//! DNS capture to the agent's `:15053` (`--redirect-dns`, `--capture-all-dns`) with its conntrack
//! zones, and `--drop-invalid`.
//!
//! Every DNS scenario runs on every backend. The eBPF backend has no conntrack in the way: its
//! socket programs send the app's queries to the agent (connect4/6 for TCP and connected UDP,
//! sendmsg4/6 for unconnected UDP) and give the agent's UDP answers the nameserver's address
//! (recvmsg4/6), so what the app sees is checked on both; the conntrack zones are checked on the
//! netfilter backends only, and the agent sees a loopback source on eBPF (the socket's
//! destination is rewritten before the source is chosen), as for outbound TCP.
//!
//! The pod's resolv.conf names the peer as its nameserver. The peer runs the real DNS server (UDP
//! and TCP `:53`), and on a second address another one that resolv.conf does not name; the pod runs
//! the stand-in agent on loopback `:15053` (UDP and TCP) as the proxy's uid, as istio-agent does.
//! Every server answers with its token, so the client learns who answered, and over UDP from which
//! address the answer came.
//!
//! The conntrack zones (raw table, UDP only) are what keep the app's redirected queries and the
//! agent's own upstream queries apart: the app's query to a nameserver and the agent's answer from
//! `:15053` go in zone 2, the agent's queries to `:53` and the answers from the nameservers in zone
//! 1. The pod's `/proc/net/nf_conntrack` shows which zone each flow is in.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use capture_e2e::udp::{self, Answer, Responder};
use capture_e2e::{
    APP_UID, Family, Listener, NetNs, PROXY_UID, TempDir, Topology, connect_as, require_root, run_ok,
    test_matrix,
};
use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrLike, SockaddrStorage, recvfrom,
    sendto, setsockopt, socket, sockopt,
};
use nix::sys::time::TimeVal;

#[cfg(feature = "ebpf")]
use crate::capture_init::ebpf_node;
use crate::capture_init::{Backend, CaptureInit};
#[cfg(feature = "ebpf")]
use crate::support::ebpf_row;
use crate::support::{
    APP, Identity, PROXY, ROOT, assert_lands, inbound_proxy, outbound_proxy, peer_app, subnet_host,
};

/// The agent's DNS port, where `--redirect-dns` sends captured queries.
const AGENT_DNS_PORT: u16 = 15053;
/// The DNS port.
const DNS_PORT: u16 = 53;

test_matrix!(backend, family:
    dns_udp_to_the_nameserver_reaches_the_agent_and_answers_from_the_nameserver,
    dns_udp_from_a_connected_socket_reaches_the_agent,
    dns_tcp_to_the_nameserver_reaches_the_agent,
    dns_of_the_proxy_reaches_the_nameserver,
    dns_of_the_proxy_on_the_apps_port_is_not_redirected,
    dns_to_other_servers_is_captured_only_with_capture_all_dns,
    dns_to_a_resolver_in_the_pod_reaches_the_agent,
    dns_to_an_excluded_port_53_is_not_redirected,
    dns_udp_socket_connected_elsewhere_is_no_longer_redirected,
);

test_matrix!(backend: dns_udp_from_dual_stack_sockets_to_an_ipv4_nameserver);

// Dropping conntrack-INVALID packets is a netfilter rule: the eBPF backend refuses INVALID_DROP.
test_matrix!(netfilter, family: drop_invalid_drops_invalid_inbound_segments);

/// The app (uid 1000) → nameserver:53 over UDP reaches the agent's `:15053` (and not the
/// nameserver), and the agent's answer reaches the app from nameserver:53: conntrack undoes the
/// `REDIRECT` because the query and the answer are both in zone 2.
fn dns_udp_to_the_nameserver_reaches_the_agent_and_answers_from_the_nameserver(
    backend: Backend,
    family: Family,
) {
    if !require_root() {
        return;
    }
    let pod = DnsPod::new(family);
    pod.capture(backend).run().ok();

    let ns = pod.nameserver();
    let answer = pod.query(APP, ns);
    assert_eq!(answer.reply, pod.agent_udp.token(), "app → {ns} over UDP");
    assert_eq!(
        answer.from, ns,
        "the answer comes from the nameserver the app asked"
    );
    let seen = pod.agent_udp.take_one();
    assert_eq!(
        seen.peer,
        pod.redirected_from(backend, answer.local_port),
        "the agent sees the app"
    );
    assert!(pod.server_udp.take_received().is_empty());

    if backend.is_ebpf() {
        #[cfg(feature = "ebpf")]
        {
            // One query redirected (sendmsg), one answer given the nameserver's address (recvmsg).
            let world = capture_e2e::ebpf::child_world().expect("inside ebpf_row");
            let stats = ebpf_node(&["stats", "--bpffs", &world.bpffs.display().to_string()]);
            stats.ok();
            for line in ["dns_redirected 1\n", "dns_answers_from_resolver 1\n"] {
                assert!(stats.stdout.contains(line), "{line:?} in:\n{}", stats.stdout);
            }
        }
    } else {
        let flows = pod.udp_flows(answer.local_port, ns);
        let [flow] = flows.as_slice() else {
            panic!("one conntrack entry for the app's query expected:\n{flows:#?}");
        };
        flow.assert_zone(2)
            .assert_answered_by(SocketAddr::new(family.loopback(), AGENT_DNS_PORT));
    }
}

/// The app → nameserver:53 from a connected UDP socket (which only takes datagrams from its
/// peer) reaches the agent, gets the agent's answer from the nameserver, and its `getpeername`
/// shows the nameserver, not the agent.
fn dns_udp_from_a_connected_socket_reaches_the_agent(backend: Backend, family: Family) {
    if !require_root() {
        return;
    }
    let pod = DnsPod::new(family);
    pod.capture(backend).run().ok();

    let ns = pod.nameserver();
    let (answer, peer) = udp::exchange_connected_as(&pod.topo.pod, APP_UID, APP_UID, ns, b"dns query")
        .unwrap_or_else(|e| panic!("app → {ns} over connected UDP: {e}"));
    pod.explained(APP, ns, &answer);
    assert_eq!(
        answer.reply,
        pod.agent_udp.token(),
        "app → {ns} over connected UDP"
    );
    assert_eq!(
        answer.from, ns,
        "the answer comes from the nameserver the app asked"
    );
    assert_eq!(peer, ns, "getpeername shows the nameserver");
    assert_eq!(
        pod.agent_udp.take_one().peer,
        pod.redirected_from(backend, answer.local_port)
    );
    assert!(pod.server_udp.take_received().is_empty());

    // The proxy's connected socket reaches the nameserver itself.
    let (answer, peer) = udp::exchange_connected_as(&pod.topo.pod, PROXY_UID, PROXY_UID, ns, b"upstream")
        .unwrap_or_else(|e| panic!("proxy → {ns} over connected UDP: {e}"));
    pod.explained(PROXY, ns, &answer);
    assert_eq!(answer.reply, pod.server_udp.token());
    assert_eq!((answer.from, peer), (ns, ns));
    assert!(pod.agent_udp.take_received().is_empty());
}

/// IPv4 DNS through `AF_INET6` sockets, on an IPv4-only capture: the app's unconnected and
/// connected dual-stack sockets asking `::ffff:<nameserver>:53` reach the agent, and take its
/// answer as coming from `::ffff:<nameserver>:53` (and `getpeername` shows that address).
fn dns_udp_from_dual_stack_sockets_to_an_ipv4_nameserver(backend: Backend) {
    if !require_root() {
        return;
    }
    let pod = DnsPod::new(Family::V4);
    pod.capture(backend).run().ok();
    let ns = pod.nameserver();
    let IpAddr::V4(ip) = ns.ip() else {
        unreachable!("an IPv4 nameserver")
    };
    let mapped = SocketAddr::new(ip.to_ipv6_mapped().into(), DNS_PORT);

    let answer = pod.query(APP, mapped);
    assert_eq!(answer.reply, pod.agent_udp.token(), "app → {mapped} over UDP");
    assert_eq!(answer.from, mapped);
    assert_eq!(pod.agent_udp.take_one().peer.port(), answer.local_port);

    let (answer, peer) = udp::exchange_connected_as(&pod.topo.pod, APP_UID, APP_UID, mapped, b"dns query")
        .unwrap_or_else(|e| panic!("app → {mapped} over connected UDP: {e}"));
    pod.explained(APP, mapped, &answer);
    assert_eq!(
        answer.reply,
        pod.agent_udp.token(),
        "app → {mapped} over connected UDP"
    );
    assert_eq!((answer.from, peer), (mapped, mapped));
    assert_eq!(pod.agent_udp.take_one().peer.port(), answer.local_port);
    assert!(pod.server_udp.take_received().is_empty());
}

/// A nameserver in the pod itself (`127.0.0.53`, systemd-resolved's, or `::1`): Istio's loopback
/// rules spare port 53 with DNS capture, so the app's UDP and TCP queries to it reach the agent
/// (TCP with that original destination), while the proxy's query reaches the resolver.
fn dns_to_a_resolver_in_the_pod_reaches_the_agent(backend: Backend, family: Family) {
    if !require_root() {
        return;
    }
    let pod = DnsPod::new(family);
    let local_ip: IpAddr = match family {
        Family::V4 => Ipv4Addr::new(127, 0, 0, 53).into(),
        Family::V6 => Ipv6Addr::LOCALHOST.into(),
    };
    let local = SocketAddr::new(local_ip, DNS_PORT);
    let resolver_udp = Responder::spawn(&pod.topo.pod, local, "resolver-udp");
    let resolver_tcp = Listener::spawn(&pod.topo.pod, local, "resolver-tcp");
    let resolv_conf = pod
        ._scratch
        .file("resolv-local.conf", &format!("nameserver {local_ip}\n"));
    CaptureInit::new(&pod.topo.pod, backend, family)
        .switch("--redirect-dns")
        .set("--resolv-conf", &resolv_conf.display().to_string())
        .run()
        .ok();

    let answer = pod.query(APP, local);
    assert_eq!(answer.reply, pod.agent_udp.token(), "app → {local} over UDP");
    assert_eq!(answer.from, local);
    assert_eq!(pod.agent_udp.take_one().peer.port(), answer.local_port);
    assert_lands(&pod.topo.pod, APP, local, &pod.agent_tcp);

    assert_eq!(pod.query(PROXY, local).reply, resolver_udp.token());
    assert_lands(&pod.topo.pod, PROXY, local, &resolver_tcp);
    assert!(pod.agent_udp.take_received().is_empty());
    // The nameserver of the pod's first resolv.conf is not one any more.
    assert_eq!(pod.query(APP, pod.nameserver()).reply, pod.server_udp.token());
}

/// `-o 53`: Istio's excluded outbound ports cover UDP too, so neither the app's UDP nor its TCP
/// query reaches the agent; both reach the nameserver.
fn dns_to_an_excluded_port_53_is_not_redirected(backend: Backend, family: Family) {
    if !require_root() {
        return;
    }
    let pod = DnsPod::new(family);
    pod.capture(backend).set("-o", "53").run().ok();
    let ns = pod.nameserver();
    assert_eq!(
        pod.query(APP, ns).reply,
        pod.server_udp.token(),
        "app → {ns} over UDP"
    );
    assert_eq!(
        connect_as(&pod.topo.pod, APP_UID, APP_UID, ns)
            .unwrap_or_else(|e| panic!("app → {ns} over TCP: {e}"))
            .0,
        pod.server_tcp.token()
    );
    crate::explain::assert_explained(&pod.topo.pod, APP, None, ns, crate::explain::Landed::Direct);
    assert!(pod.agent_udp.take_received().is_empty());
    assert!(pod.agent_tcp.take_accepted().is_empty());
}

/// A UDP socket connected to the nameserver (its queries captured), disconnected
/// (`connect(AF_UNSPEC)`) and connected to another DNS server (not captured without
/// `--capture-all-dns`): its query now reaches that server, whose answer it takes, and
/// `getpeername` shows that server, not the old nameserver.
///
/// The disconnect matters on eBPF: a UDP socket connected to the DNS proxy took a loopback source
/// address, which only a disconnect resets (docs/design/ebpf.md, DNS capture).
fn dns_udp_socket_connected_elsewhere_is_no_longer_redirected(backend: Backend, family: Family) {
    if !require_root() {
        return;
    }
    let pod = DnsPod::new(family);
    pod.capture(backend).run().ok();
    let (ns, other) = (pod.nameserver(), pod.other_server());
    let wildcard = SocketAddr::new(family.unspecified(), 0);
    let exchange = |socket: &UdpSocket, dst: SocketAddr| -> io::Result<(String, SocketAddr)> {
        socket.connect(dst)?;
        socket.send(b"dns query")?;
        let mut buf = [0u8; 64];
        let len = socket.recv(&mut buf)?;
        Ok((
            String::from_utf8_lossy(&buf[..len]).into_owned(),
            socket.peer_addr()?,
        ))
    };
    let (first, second) = pod
        .topo
        .pod
        .run_as(APP_UID, APP_UID, || {
            let socket = UdpSocket::bind(wildcard)?;
            socket.set_read_timeout(Some(Duration::from_secs(3)))?;
            let first = exchange(&socket, ns)?;
            disconnect(&socket)?;
            Ok((first, exchange(&socket, other)?))
        })
        .unwrap_or_else(|e| panic!("app → {ns}, then {other}, over one connected UDP socket: {e}"));
    assert_eq!(first, (pod.agent_udp.token().to_owned(), ns));
    assert_eq!(second, (pod.other_udp.token().to_owned(), other));
    assert_eq!(pod.agent_udp.take_received().len(), 1);
    assert_eq!(pod.other_udp.take_received().len(), 1);
}

/// `connect(AF_UNSPEC)`: dissolves a UDP socket's association, and resets the source address its
/// `connect` chose unless it was bound to one.
fn disconnect(socket: &UdpSocket) -> io::Result<()> {
    let unspec = libc::sockaddr {
        sa_family: libc::AF_UNSPEC as libc::sa_family_t,
        sa_data: [0; 14],
    };
    let len = libc::socklen_t::try_from(size_of::<libc::sockaddr>()).expect("a small sockaddr");
    // SAFETY: a live socket descriptor, and a sockaddr of the length passed.
    let rc = unsafe { libc::connect(socket.as_raw_fd(), &raw const unspec, len) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The app → nameserver:53 over TCP reaches the agent's `:15053`, which learns nameserver:53 as the
/// original destination.
fn dns_tcp_to_the_nameserver_reaches_the_agent(backend: Backend, family: Family) {
    if !require_root() {
        return;
    }
    let pod = DnsPod::new(family);
    pod.capture(backend).run().ok();

    let seen = assert_lands(&pod.topo.pod, APP, pod.nameserver(), &pod.agent_tcp);
    assert_eq!(seen.local, SocketAddr::new(family.loopback(), AGENT_DNS_PORT));
    assert!(pod.server_tcp.take_accepted().is_empty());
}

/// The proxy's uid, and its gid alone, → nameserver:53 reach the nameserver itself over UDP and
/// TCP; the UDP flow is in zone 1 and the nameserver's answer landed in it (raw PREROUTING matches
/// the answer by its source, the nameserver: istio/istio#46935).
fn dns_of_the_proxy_reaches_the_nameserver(backend: Backend, family: Family) {
    if !require_root() {
        return;
    }
    let pod = DnsPod::new(family);
    pod.capture(backend).run().ok();

    let ns = pod.nameserver();
    for who in [PROXY, (APP_UID, PROXY_UID)] {
        let answer = pod.query(who, ns);
        assert_eq!(answer.reply, pod.server_udp.token(), "{who:?} → {ns} over UDP");
        assert_eq!(answer.from, ns);
        assert_eq!(pod.server_udp.take_one().peer, pod.pod_addr(answer.local_port));
        if !backend.is_ebpf() {
            let flows = pod.udp_flows(answer.local_port, ns);
            let [flow] = flows.as_slice() else {
                panic!("one conntrack entry for {who:?}'s query expected:\n{flows:#?}");
            };
            flow.assert_zone(1).assert_answered_by(ns);
        }

        assert_lands(&pod.topo.pod, who, ns, &pod.server_tcp);
    }
    assert!(pod.agent_udp.take_received().is_empty());
    assert!(pod.agent_tcp.take_accepted().is_empty());
}

/// What the zones are for (istio/istio#33469): the app's query from port P to nameserver:53 was
/// redirected to the agent; the agent's own query to nameserver:53 from the same port P is the
/// same 4-tuple, but in another zone, so it does not ride the app's conntrack entry (and its
/// `REDIRECT`) back to the agent: it reaches the nameserver, and both entries are there.
fn dns_of_the_proxy_on_the_apps_port_is_not_redirected(backend: Backend, family: Family) {
    if !require_root() {
        return;
    }
    let pod = DnsPod::new(family);
    pod.capture(backend).run().ok();

    let ns = pod.nameserver();
    let app = pod.query(APP, ns);
    assert_eq!(app.reply, pod.agent_udp.token());
    // The app's socket is closed; its conntrack entry (30 s) is not.
    let from = SocketAddr::new(family.unspecified(), app.local_port);
    let proxy = exchange_from_freed_port(&pod.topo.pod, PROXY, from, ns);
    assert_eq!(
        proxy.reply,
        pod.server_udp.token(),
        "the proxy's query on the app's 4-tuple went back to the agent"
    );
    assert_eq!(proxy.from, ns);
    assert_eq!(
        pod.agent_udp.take_one().peer,
        pod.redirected_from(backend, app.local_port)
    );
    assert_eq!(pod.server_udp.take_one().peer, pod.pod_addr(app.local_port));
    if backend.is_ebpf() {
        // No conntrack entry decides anything on eBPF.
        return;
    }

    let mut flows = pod.udp_flows(app.local_port, ns);
    flows.sort_by_key(|flow| flow.zone());
    let [zone1, zone2] = flows.as_slice() else {
        panic!(
            "two conntrack entries for {ns} from port {} expected:\n{flows:#?}",
            app.local_port
        );
    };
    zone1.assert_zone(1).assert_answered_by(ns);
    zone2
        .assert_zone(2)
        .assert_answered_by(SocketAddr::new(family.loopback(), AGENT_DNS_PORT));
}

/// A UDP query from `ns` as `who`, from `from`, whose port a socket that was just closed held.
///
/// Until then `bind` may fail with `EADDRINUSE` for a moment: a process another test forks keeps a
/// copy of every descriptor of this process until it execs.
#[track_caller]
fn exchange_from_freed_port(ns: &NetNs, who: Identity, from: SocketAddr, dst: SocketAddr) -> Answer {
    let (uid, gid) = who;
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match udp::exchange_from_as(ns, uid, gid, from, dst, b"upstream query") {
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(10));
            }
            answer => return answer.unwrap_or_else(|e| panic!("{uid}:{gid} → {dst} from {from}: {e}")),
        }
    }
}

/// Without `--capture-all-dns` only the nameservers of resolv.conf are captured to `:15053`: the
/// app's UDP query to another DNS server reaches it, and TCP to it is ordinary outbound traffic
/// (`:15001`). With `--capture-all-dns` both go to the agent, and the UDP answer still comes from
/// the server the app asked.
fn dns_to_other_servers_is_captured_only_with_capture_all_dns(backend: Backend, family: Family) {
    if !require_root() {
        return;
    }
    let pod = DnsPod::new(family);
    let outbound = outbound_proxy(&pod.topo, family);
    pod.capture(backend).run().ok();
    let other = pod.other_server();
    let answer = pod.query(APP, other);
    assert_eq!(answer.reply, pod.other_udp.token(), "app → {other} over UDP");
    assert_eq!(answer.from, other);
    assert_eq!(pod.other_udp.take_one().peer, pod.pod_addr(answer.local_port));
    assert_lands(&pod.topo.pod, APP, other, &outbound);
    assert!(pod.agent_udp.take_received().is_empty());
    assert!(pod.agent_tcp.take_accepted().is_empty());

    let pod = DnsPod::new(family);
    let outbound = outbound_proxy(&pod.topo, family);
    pod.capture(backend).switch("--capture-all-dns").run().ok();
    let other = pod.other_server();
    let answer = pod.query(APP, other);
    assert_eq!(
        answer.reply,
        pod.agent_udp.token(),
        "app → {other} over UDP, all DNS captured"
    );
    assert_eq!(answer.from, other);
    assert_eq!(
        pod.agent_udp.take_one().peer,
        pod.redirected_from(backend, answer.local_port)
    );
    if !backend.is_ebpf() {
        let flows = pod.udp_flows(answer.local_port, other);
        let [flow] = flows.as_slice() else {
            panic!("one conntrack entry for the app's query expected:\n{flows:#?}");
        };
        flow.assert_zone(2)
            .assert_answered_by(SocketAddr::new(family.loopback(), AGENT_DNS_PORT));
    }
    assert_lands(&pod.topo.pod, APP, other, &pod.agent_tcp);
    assert!(pod.other_udp.take_received().is_empty());
    assert!(outbound.take_accepted().is_empty());
    // The proxy's own queries still go where they are sent.
    assert_eq!(pod.query(PROXY, other).reply, pod.other_udp.token());
}

/// A TCP segment with no flags, from the peer to a closed port of the pod: conntrack calls it
/// INVALID whatever it has seen before. With the default sidecar rules it reaches the pod's TCP
/// stack, which answers with a RST; with `--drop-invalid` it is dropped in PREROUTING and nothing
/// comes back, while captured traffic in both directions still works.
fn drop_invalid_drops_invalid_inbound_segments(backend: Backend, family: Family) {
    if !require_root() {
        return;
    }
    let topo = Topology::new();
    let inbound = inbound_proxy(&topo, family);
    let outbound = outbound_proxy(&topo, family);
    let app = peer_app(&topo, family, 80);
    let closed = topo.pod_addr(family, 8081);
    let init = CaptureInit::new(&topo.pod, backend, family);

    init.run().ok();
    assert!(
        flagless_segment_is_reset(&topo, family, closed, Duration::from_secs(3)),
        "without --drop-invalid the pod answers a flagless segment to {closed} with a RST"
    );

    init.clone().switch("--cleanup-only").run().ok();
    let init = init.switch("--drop-invalid");
    init.run().ok();
    assert!(
        !flagless_segment_is_reset(&topo, family, closed, Duration::from_millis(300)),
        "with --drop-invalid a flagless segment to {closed} reached the pod's TCP stack"
    );
    assert_lands(&topo.peer, ROOT, topo.pod_addr(family, 8080), &inbound);
    assert_lands(&topo.pod, APP, topo.peer_addr(family, 80), &outbound);
    assert_lands(&topo.pod, PROXY, topo.peer_addr(family, 80), &app);
}

/// A topology whose pod has a resolv.conf naming the peer, the stand-in agent on `:15053` in the
/// pod, and DNS servers on the peer. Fields drop in order: the servers first, the namespaces last.
#[derive(Debug)]
struct DnsPod {
    family: Family,
    /// The agent's UDP `:15053` on loopback, as the proxy's uid.
    agent_udp: Responder,
    /// The agent's TCP `:15053` on loopback, as the proxy's uid.
    agent_tcp: Listener,
    /// The nameserver of resolv.conf: the peer's address, UDP `:53`.
    server_udp: Responder,
    /// The nameserver's TCP `:53`.
    server_tcp: Listener,
    /// A DNS server resolv.conf does not name, UDP `:53` on a second address of the peer.
    other_udp: Responder,
    resolv_conf: PathBuf,
    _scratch: TempDir,
    topo: Topology,
}

impl DnsPod {
    fn new(family: Family) -> DnsPod {
        let topo = Topology::new();
        let scratch = TempDir::new("dns");
        let resolv_conf = scratch.file(
            "resolv.conf",
            &format!(
                "search default.svc.cluster.local svc.cluster.local\nnameserver {}\noptions ndots:5\n",
                topo.peer_ip(family)
            ),
        );
        let other = other_peer_ip(&topo, family);
        match other {
            IpAddr::V4(v4) => topo.peer.ip(&["addr", "add", &format!("{v4}/24"), "dev", "eth0"]),
            IpAddr::V6(v6) => {
                topo.peer
                    .ip(&["-6", "addr", "add", &format!("{v6}/64"), "dev", "eth0", "nodad"])
            }
        };
        let agent = SocketAddr::new(family.loopback(), AGENT_DNS_PORT);
        let server = topo.peer_addr(family, DNS_PORT);
        DnsPod {
            family,
            agent_udp: Responder::spawn_as(&topo.pod, PROXY_UID, PROXY_UID, agent, "agent-dns-udp"),
            agent_tcp: Listener::spawn_as(&topo.pod, PROXY_UID, PROXY_UID, agent, "agent-dns-tcp"),
            server_udp: Responder::spawn(&topo.peer, server, "nameserver-udp"),
            server_tcp: Listener::spawn(&topo.peer, server, "nameserver-tcp"),
            other_udp: Responder::spawn(&topo.peer, SocketAddr::new(other, DNS_PORT), "other-dns-udp"),
            resolv_conf,
            _scratch: scratch,
            topo,
        }
    }

    /// The default sidecar command with `--redirect-dns` and this pod's resolv.conf.
    fn capture(&self, backend: Backend) -> CaptureInit<'_> {
        CaptureInit::new(&self.topo.pod, backend, self.family)
            .switch("--redirect-dns")
            .set("--resolv-conf", &self.resolv_conf.display().to_string())
    }

    /// nameserver:53.
    fn nameserver(&self) -> SocketAddr {
        self.topo.peer_addr(self.family, DNS_PORT)
    }

    /// The other DNS server's `:53`.
    fn other_server(&self) -> SocketAddr {
        SocketAddr::new(other_peer_ip(&self.topo, self.family), DNS_PORT)
    }

    /// The pod's address with `port`: where the pod's unbound UDP sockets send from.
    fn pod_addr(&self, port: u16) -> SocketAddr {
        self.topo.pod_addr(self.family, port)
    }

    /// Where the agent sees a redirected query of an unbound socket with `port` come from:
    /// the pod's address on netfilter (REDIRECT keeps the source the route chose), loopback on
    /// eBPF (the destination is loopback before the source is chosen).
    fn redirected_from(&self, backend: Backend, port: u16) -> SocketAddr {
        if backend.is_ebpf() {
            SocketAddr::new(self.family.loopback(), port)
        } else {
            self.pod_addr(port)
        }
    }

    /// A UDP query from the pod as `who` to `dst`; panics when nothing answers.
    #[track_caller]
    fn query(&self, who: Identity, dst: SocketAddr) -> Answer {
        let (uid, gid) = who;
        let answer = udp::exchange_as(&self.topo.pod, uid, gid, dst, b"dns query")
            .unwrap_or_else(|e| panic!("{uid}:{gid} → {dst} over UDP: {e}"));
        self.explained(who, dst, &answer);
        answer
    }

    /// `capture-init explain` must predict who answered `who`'s UDP query to `dst`: the agent,
    /// or the server asked.
    #[track_caller]
    fn explained(&self, who: Identity, dst: SocketAddr, answer: &Answer) {
        let landed = if answer.reply == self.agent_udp.token() {
            crate::explain::Landed::Redirected(self.agent_udp.local_addr().port())
        } else {
            crate::explain::Landed::Direct
        };
        crate::explain::assert_explained_udp(&self.topo.pod, who, dst, landed);
    }

    /// The pod's UDP conntrack entries whose original direction is pod:`port` → `dst`.
    fn udp_flows(&self, port: u16, dst: SocketAddr) -> Vec<Flow> {
        let table = run_ok(self.topo.pod.command("cat").arg("/proc/net/nf_conntrack"));
        let original = tuple(self.pod_addr(port), dst);
        table
            .lines()
            .filter(|line| line.split_whitespace().nth(2) == Some("udp"))
            .filter(|line| line.find("src=") == line.find(&original))
            .map(|line| Flow(line.to_owned()))
            .collect()
    }
}

/// A second address of the peer, `10.<n>.0.4` or `fd00:<n>::4`, for a DNS server that resolv.conf
/// does not name.
fn other_peer_ip(topo: &Topology, family: Family) -> IpAddr {
    subnet_host(topo, family, 4)
}

/// `src=… dst=… sport=… dport=… ` as `/proc/net/nf_conntrack` prints a tuple (IPv6 in full, with
/// leading zeros).
fn tuple(src: SocketAddr, dst: SocketAddr) -> String {
    format!(
        "src={} dst={} sport={} dport={} ",
        conntrack_ip(src.ip()),
        conntrack_ip(dst.ip()),
        src.port(),
        dst.port()
    )
}

fn conntrack_ip(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => v6
            .segments()
            .iter()
            .map(|s| format!("{s:04x}"))
            .collect::<Vec<_>>()
            .join(":"),
    }
}

/// One line of the pod's `/proc/net/nf_conntrack`.
#[derive(Debug)]
struct Flow(String);

impl Flow {
    /// The conntrack zone (`zone=N`; 0 when not printed).
    fn zone(&self) -> u16 {
        self.0
            .split_whitespace()
            .find_map(|field| field.strip_prefix("zone="))
            .map_or(0, |zone| zone.parse().expect("a numeric zone"))
    }

    #[track_caller]
    fn assert_zone(&self, zone: u16) -> &Self {
        assert_eq!(self.zone(), zone, "conntrack zone of {}", self.0);
        self
    }

    /// Asserts that the answer was seen in this entry, coming from `from`.
    #[track_caller]
    fn assert_answered_by(&self, from: SocketAddr) -> &Self {
        assert!(
            !self.0.contains("[UNREPLIED]"),
            "no answer was seen in this entry: {}",
            self.0
        );
        let reply = self.0.rfind("src=").map(|at| &self.0[at..]);
        let expected = format!("src={} ", conntrack_ip(from.ip()));
        let sport = format!(" sport={} ", from.port());
        assert!(
            reply.is_some_and(|r| r.starts_with(&expected) && r.contains(&sport)),
            "the answer should come from {from}: {}",
            self.0
        );
        self
    }
}

/// The peer's source port for [`flagless_segment_is_reset`].
const PROBE_PORT: u16 = 47_474;
/// TCP's RST flag.
const TCP_RST: u8 = 0x04;

/// Sends from the peer to `dst` one TCP segment with no flags set (a raw socket; the kernel writes
/// the IP header) and reports whether a RST came back from `dst` within `wait`.
///
/// No flags at all is a combination conntrack's TCP tracker classifies INVALID before it looks
/// up any state, and a closed port's TCP stack answers it with a RST: the RST shows that the
/// segment reached the pod's TCP stack.
fn flagless_segment_is_reset(topo: &Topology, family: Family, dst: SocketAddr, wait: Duration) -> bool {
    let src = topo.peer_ip(family);
    let segment = flagless_segment(src, dst);
    topo.peer.run(|| {
        let domain = match family {
            Family::V4 => AddressFamily::Inet,
            Family::V6 => AddressFamily::Inet6,
        };
        let fd = socket(domain, SockType::Raw, SockFlag::SOCK_CLOEXEC, SockProtocol::Tcp)
            .expect("a raw TCP socket in the peer");
        setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::new(0, 20_000)).expect("set SO_RCVTIMEO");
        let to = SockaddrStorage::from(SocketAddr::new(dst.ip(), 0));
        sendto(fd.as_raw_fd(), &segment, &to, MsgFlags::empty())
            .unwrap_or_else(|e| panic!("send the flagless segment to {dst}: {e}"));
        let deadline = Instant::now() + wait;
        let mut buf = [0u8; 2048];
        while Instant::now() < deadline {
            let (len, from) = match recvfrom::<SockaddrStorage>(fd.as_raw_fd(), &mut buf) {
                Ok(got) => got,
                Err(Errno::EAGAIN | Errno::EINTR) => continue,
                Err(e) => panic!("receive on the raw socket: {e}"),
            };
            let from_ip = from.as_ref().and_then(|from| match from.family() {
                Some(AddressFamily::Inet) => from.as_sockaddr_in().map(|a| IpAddr::V4(a.ip())),
                Some(AddressFamily::Inet6) => from.as_sockaddr_in6().map(|a| IpAddr::V6(a.ip())),
                _ => None,
            });
            // IPv4 raw sockets receive the IP header too, IPv6 ones only the payload.
            let tcp = match family {
                Family::V4 => buf.get(usize::from(buf[0] & 0x0f) * 4..len),
                Family::V6 => buf.get(..len),
            };
            let Some(tcp) = tcp.filter(|tcp| tcp.len() >= 20) else {
                continue;
            };
            let sport = u16::from_be_bytes([tcp[0], tcp[1]]);
            let dport = u16::from_be_bytes([tcp[2], tcp[3]]);
            if from_ip == Some(dst.ip())
                && sport == dst.port()
                && dport == PROBE_PORT
                && tcp[13] & TCP_RST != 0
            {
                return true;
            }
        }
        false
    })
}

/// A 20-byte TCP header from `src`:[`PROBE_PORT`] to `dst` with no flags and a valid checksum.
fn flagless_segment(src: IpAddr, dst: SocketAddr) -> Vec<u8> {
    let mut segment = Vec::with_capacity(20);
    segment.extend(PROBE_PORT.to_be_bytes());
    segment.extend(dst.port().to_be_bytes());
    segment.extend(0x0bad_cafe_u32.to_be_bytes()); // sequence number
    segment.extend(0u32.to_be_bytes()); // acknowledgement number
    segment.push(5 << 4); // data offset: 5 words, no options
    segment.push(0); // no flags
    segment.extend(1024u16.to_be_bytes()); // window
    segment.extend([0, 0]); // checksum, filled in below
    segment.extend([0, 0]); // urgent pointer
    let sum = tcp_checksum(src, dst.ip(), &segment);
    segment[16..18].copy_from_slice(&sum.to_be_bytes());
    segment
}

/// The Internet checksum of `segment` with the TCP pseudo-header of `src` → `dst`.
fn tcp_checksum(src: IpAddr, dst: IpAddr, segment: &[u8]) -> u16 {
    let len = u32::try_from(segment.len()).expect("a short segment");
    let mut pseudo = Vec::new();
    match (src, dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            pseudo.extend(src.octets());
            pseudo.extend(dst.octets());
            pseudo.extend([0, 6]);
            pseudo.extend(u16::try_from(len).expect("a short segment").to_be_bytes());
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            pseudo.extend(src.octets());
            pseudo.extend(dst.octets());
            pseudo.extend(len.to_be_bytes());
            pseudo.extend([0, 0, 0, 6]);
        }
        _ => panic!("{src} and {dst} are of different families"),
    }
    pseudo.extend(segment);
    let mut sum: u32 = pseudo
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], pair.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).expect("folded to 16 bits")
}
