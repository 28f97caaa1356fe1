//! `--sk-msg`: the node splices the app's and the proxy's sockets with an `sk_msg` program
//! (`capture-init ebpf load --sk-msg`). Connections through the proxy must behave exactly as
//! without it: original destination, every byte in order both ways, half-close and EOF; the
//! counters show that the splice carried them, and stay zero with the setting off.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::thread;
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use capture_e2e::ebpf;
use capture_e2e::{APP_UID, Family, OUTBOUND_PORT, PROXY_UID, Topology, connect_as};
use capture_ebpf::{NetnsCookie, Node, PinDir};
use capture_ebpf_common::{LAYOUT_VERSION, STAT_SPLICED_MESSAGES, STAT_SPLICED_SOCKETS};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrStorage, bind, connect, socket};

use crate::capture_init::{Backend, CaptureInit, Run, ebpf_node};
use crate::support::{ROOT, StopOnDrop, assert_lands, ebpf_row, inbound_proxy, outbound_proxy};

/// Bytes sent each way per connection: far more than the socket buffers, so the transfer
/// runs for many messages while both sides read and write at once.
const TRANSFER: usize = 8 << 20;

/// What the server writes after it read the client's EOF: proof that its half of the
/// connection still works after the client's `shutdown(SHUT_WR)`.
const TRAILER: &[u8] = b"server-saw-eof";

/// `capture-init ebpf load <extra>` for the row's node.
fn load(extra: &[&str]) -> Run {
    node_command("load", extra)
}

/// `capture-init ebpf <command> <extra> --bpffs … --cgroup …` for the row's node.
fn node_command(command: &str, extra: &[&str]) -> Run {
    let world = ebpf::child_world().expect("inside ebpf_row");
    let (bpffs, cgroup) = (
        world.bpffs.display().to_string(),
        world.cgroup.display().to_string(),
    );
    let mut args = vec![command, "--bpffs", &bpffs, "--cgroup", &cgroup];
    args.extend(extra);
    ebpf_node(&args)
}

/// The row's node, opened afresh (to read its counters).
fn node() -> Node {
    let world = ebpf::child_world().expect("inside ebpf_row");
    Node::open(&PinDir::new(&world.bpffs)).expect("open the row's node")
}

/// `(sockets spliced, messages spliced)`: node-wide, and in the pod's own counters.
fn spliced(pod: NetnsCookie) -> [(u64, u64); 2] {
    let node = node();
    let stats = node.stats().expect("read the counters");
    let ours = node
        .pod_counters()
        .expect("read the pods' counters")
        .into_iter()
        .find(|(cookie, _)| *cookie == pod)
        .map(|(_, c)| {
            (
                c[STAT_SPLICED_SOCKETS as usize],
                c[STAT_SPLICED_MESSAGES as usize],
            )
        })
        .expect("the pod has counters");
    [(stats.spliced_sockets, stats.spliced_messages), ours]
}

/// The only enrolled pod's cookie.
fn the_pod() -> NetnsCookie {
    let pods = node().pods().expect("list the pods");
    assert_eq!(pods.len(), 1, "{pods:?}");
    pods[0].0
}

/// The `i`-th byte of the test stream: varied, so that a lost, doubled or reordered chunk shows.
fn byte(i: usize) -> u8 {
    let x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (x >> 56) as u8 ^ (i >> 12) as u8
}

/// One `read`, as an event loop (the proxy's, most apps') does it: `EAGAIN` means "nothing yet",
/// and the read is tried again.
///
/// A spliced socket's blocking read can return `EAGAIN` before its timeout: the kernel's
/// sockmap receive path (`tcp_bpf_recvmsg`) gives up after any wakeup that brought no data, such
/// as the socket's own send-buffer space being freed (seen on Linux 6.18). A blocking
/// application reading and writing one socket at once would see that error; an event loop
/// (nonblocking sockets and `poll`/`epoll`, as Envoy's) does not notice. See ARCHITECTURE.md,
/// "sk_msg splicing".
fn read(mut stream: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match stream.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {}
            other => return other,
        }
    }
}

/// The server side (the proxy or the app): echoes every byte as it comes, checks each against
/// the stream, and once it reads EOF writes [`TRAILER`] and shuts its side down.
fn echo(stream: TcpStream) -> io::Result<usize> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut buf = vec![0u8; 100_000];
    let mut seen = 0;
    loop {
        let n = read(&stream, &mut buf)?;
        if n == 0 {
            break;
        }
        for (k, b) in buf[..n].iter().enumerate() {
            if *b != byte(seen + k) {
                return Err(io::Error::other(format!(
                    "the server read byte {} as {b:#x}, sent as {:#x}",
                    seen + k,
                    byte(seen + k)
                )));
            }
        }
        (&stream).write_all(&buf[..n])?;
        seen += n;
    }
    (&stream).write_all(TRAILER)?;
    stream.shutdown(Shutdown::Write)?;
    Ok(seen)
}

/// The client side: writes [`TRANSFER`] bytes in chunks of many sizes on one thread, shuts its
/// side down, and reads on another: the echo of every byte in order, then [`TRAILER`], then EOF.
fn exchange(client: TcpStream, server: TcpStream) {
    client
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("set a read timeout");
    let mut writer = client.try_clone().expect("clone the client socket");
    thread::scope(|scope| {
        let served = scope.spawn(|| echo(server));
        let wrote = scope.spawn(move || -> io::Result<()> {
            let mut sent = 0;
            let mut size = 1;
            while sent < TRANSFER {
                let n = size.min(TRANSFER - sent);
                let chunk: Vec<u8> = (sent..sent + n).map(byte).collect();
                writer.write_all(&chunk)?;
                sent += n;
                size = size * 7 % 65_521 + 1;
            }
            writer.shutdown(Shutdown::Write)
        });
        let mut got = Vec::with_capacity(TRANSFER + TRAILER.len());
        let mut buf = vec![0u8; 100_000];
        loop {
            match read(&client, &mut buf).expect("the client reads to EOF") {
                0 => break,
                n => got.extend_from_slice(&buf[..n]),
            }
        }
        wrote
            .join()
            .expect("the writer thread")
            .expect("the client writes everything and shuts down");
        let served = served
            .join()
            .expect("the server thread")
            .expect("the server reads every byte intact, to EOF");
        assert_eq!(served, TRANSFER, "the server read everything the client sent");
        assert_eq!(
            got.len(),
            TRANSFER + TRAILER.len(),
            "the client read the echo and the trailer"
        );
        let wrong = (0..TRANSFER).find(|&i| got[i] != byte(i));
        assert_eq!(wrong, None, "the first echoed byte that differs");
        assert_eq!(
            &got[TRANSFER..],
            TRAILER,
            "the server wrote after the client's EOF"
        );
    });
    // Both sides closed: EOF seen both ways, nothing left behind.
    let mut rest = [0u8; 1];
    assert_eq!((&client).read(&mut rest).expect("read after EOF"), 0);
}

/// The app (uid 1000) connects to `dst`, captured to the proxy's outbound listener; returns the
/// two ends after checking the original destination the proxy reads.
fn outbound_pair(topo: &Topology, proxy: &TcpListener, dst: SocketAddr) -> (TcpStream, TcpStream) {
    let client = topo
        .pod
        .run_as(APP_UID, APP_UID, || TcpStream::connect(dst))
        .expect("the app connects");
    let (server, _) = proxy.accept().expect("the proxy accepts");
    assert_eq!(
        capture_core::original_dst(&server).expect("SO_ORIGINAL_DST"),
        dst,
        "the proxy reads the original destination"
    );
    (client, server)
}

/// The proxy (uid 1337) calls its app from the inbound passthrough source `127.0.0.6`, as
/// Istio's inbound passthrough does; returns the two ends.
fn inbound_pair(topo: &Topology, app: &TcpListener, dst: SocketAddr) -> (TcpStream, TcpStream) {
    let client = topo
        .pod
        .run_as(PROXY_UID, PROXY_UID, || {
            let fd = socket(
                AddressFamily::Inet,
                SockType::Stream,
                SockFlag::SOCK_CLOEXEC,
                None,
            )?;
            let src = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 6)), 0);
            bind(fd.as_raw_fd(), &SockaddrStorage::from(src))?;
            connect(fd.as_raw_fd(), &SockaddrStorage::from(dst))?;
            Ok(TcpStream::from(fd))
        })
        .expect("the proxy connects to its app");
    let (server, peer) = app.accept().expect("the app accepts");
    assert_eq!(peer.ip(), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 6)));
    (client, server)
}

/// Waits until no socket is left in `SPLICE` (the kernel removes each as it closes).
fn wait_unspliced() {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = node().sk_msg().expect("read the setting").sockets;
        if left == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "{left} sockets left spliced");
        thread::sleep(Duration::from_millis(50));
    }
}

/// With the node loaded without `--sk-msg` a large transfer through the proxy is intact and
/// nothing is spliced; after `ebpf load --sk-msg` on the loaded node the same transfers
/// (outbound app → proxy, inbound proxy → app from 127.0.0.6) are intact, with half-close and
/// EOF as before, and the node's and the pod's counters show the splice carried them. Closed
/// connections leave nothing in the map; `--no-sk-msg` stops splicing new connections.
#[test]
fn ebpf_sk_msg_splices_app_and_proxy_with_every_byte_and_eof() {
    ebpf_row(|| {
        load(&[]).ok().says("eBPF programs loaded");
        let topo = Topology::new();
        CaptureInit::new(&topo.pod, Backend::Ebpf, Family::V4)
            .run()
            .ok()
            .says("eBPF capture applied");
        let pod = the_pod();
        let proxy = topo
            .pod
            .run_as(PROXY_UID, PROXY_UID, || {
                TcpListener::bind((Ipv4Addr::UNSPECIFIED, OUTBOUND_PORT))
            })
            .expect("the proxy listens");
        let app = topo
            .pod
            .run(|| TcpListener::bind(topo.pod_addr(Family::V4, 8080)))
            .expect("the app listens");
        let out_dst = topo.peer_addr(Family::V4, 80);
        let in_dst = topo.pod_addr(Family::V4, 8080);
        assert!(!node().sk_msg().expect("read the setting").enabled);

        let (client, server) = outbound_pair(&topo, &proxy, out_dst);
        exchange(client, server);
        let (client, server) = inbound_pair(&topo, &app, in_dst);
        exchange(client, server);
        assert_eq!(spliced(pod), [(0, 0); 2], "nothing spliced without --sk-msg");

        load(&["--sk-msg"])
            .ok()
            .says("sk_msg splicing of app-proxy connections turned on")
            .never_says("nothing changed");
        load(&["--sk-msg"]).ok().says("already on, nothing changed");
        let state = node().sk_msg().expect("read the setting");
        assert!(state.enabled && state.attached != Some(false), "{state:?}");

        let (client, server) = outbound_pair(&topo, &proxy, out_dst);
        assert_eq!(node().sk_msg().expect("read the setting").sockets, 2);
        exchange(client, server);
        let [(sockets, messages), (pod_sockets, pod_messages)] = spliced(pod);
        assert_eq!(sockets, 2, "the app's socket and the proxy's");
        assert_eq!(pod_sockets, 2, "counted for the pod");
        // Each side sends hundreds of writes (up to 64 KiB); they went socket to socket.
        assert!(
            messages > 200 && pod_messages == messages,
            "{messages} {pod_messages}"
        );
        wait_unspliced();

        let (client, server) = inbound_pair(&topo, &app, in_dst);
        exchange(client, server);
        let [(sockets, after), _] = spliced(pod);
        assert_eq!(sockets, 4, "the proxy's socket from 127.0.0.6 and the app's");
        assert!(after > messages + 200, "{after} after {messages}");
        wait_unspliced();

        let world = ebpf::child_world().expect("inside ebpf_row");
        let stats = ebpf_node(&["stats", "--bpffs", &world.bpffs.display().to_string()]);
        stats.ok();
        for line in [
            "spliced_sockets 4\n",
            "sk_msg splicing: on, no sockets spliced now\n",
        ] {
            assert!(stats.stdout.contains(line), "{line:?} in {}", stats.stdout);
        }

        // `capture-init status` shows the pod's count with its other counters.
        let status = CaptureInit::new(&topo.pod, Backend::Ebpf, Family::V4).status(false, &[]);
        let counted = format!("spliced_messages {after}");
        assert!(status.stdout.contains(&counted), "{counted} in {}", status.stdout);

        load(&["--no-sk-msg"]).ok().says("turned off");
        let (client, server) = outbound_pair(&topo, &proxy, out_dst);
        exchange(client, server);
        assert_eq!(spliced(pod)[0].0, 4, "no new socket spliced");
    });
}

/// A node loaded by a layout v4 capture (no `NODE_CONFIG`, `SPLICE`, `SPLICE_PASSED`, no `sk_msg` program) is
/// upgraded in place while its pod's app keeps connecting out: the maps are created, the
/// layout becomes this capture's, every connection made meanwhile lands on the proxy with its
/// original destination, and `--sk-msg` on the upgrade turns splicing on. Then an upgrade of the
/// programs (`--always`, which attaches a new `sk_msg` program to the same `SPLICE`) keeps the
/// setting, and the next connection is spliced by the new program. The v4 node is made from a
/// current one by moving the three maps' pins aside and writing 4 into its layout version.
#[test]
fn ebpf_upgrade_carries_a_layout_v4_node_to_sk_msg() {
    ebpf_row(|| {
        let topo = Topology::new();
        let outbound = outbound_proxy(&topo, Family::V4);
        let inbound = inbound_proxy(&topo, Family::V4);
        CaptureInit::new(&topo.pod, Backend::Ebpf, Family::V4)
            .run()
            .ok()
            .says("eBPF capture applied");
        let pod = the_pod();
        let world = ebpf::child_world().expect("inside ebpf_row");
        let kept: Vec<_> = ["NODE_CONFIG", "SPLICE", "SPLICE_PASSED"]
            .iter()
            .map(|name| {
                let kept = world.bpffs.join(format!("kept-{name}"));
                std::fs::rename(world.pin_dir.join("maps").join(name), &kept)
                    .expect("move a v5 map's pin aside");
                kept
            })
            .collect();
        let layout = world.pin_dir.join("maps/LAYOUT").display().to_string();
        capture_e2e::run_ok(std::process::Command::new("bpftool").args([
            "map", "update", "pinned", &layout, "key", "0", "0", "0", "0", "value", "4", "0", "0", "0",
        ]));
        load(&["--sk-msg"]).code(1).says(&format!(
            "have map layout v4, and this capture has map layout v{LAYOUT_VERSION}"
        ));
        let out_dst = topo.peer_addr(Family::V4, 80);
        let in_dst = topo.pod_addr(Family::V4, 8080);

        let stop = AtomicBool::new(false);
        let made = AtomicUsize::new(0);
        thread::scope(|scope| {
            let traffic = scope.spawn(|| {
                while !stop.load(Ordering::SeqCst) {
                    let (reply, _) = connect_as(&topo.pod, APP_UID, APP_UID, out_dst).unwrap_or_else(|e| {
                        panic!("a connection to {out_dst} during the upgrade failed: {e}")
                    });
                    assert_eq!(
                        reply,
                        outbound.token(),
                        "a connection during the upgrade was not captured"
                    );
                    made.fetch_add(1, Ordering::SeqCst);
                }
            });
            let _stop = StopOnDrop(&stop);
            node_command("upgrade", &["--sk-msg"])
                .ok()
                .says("programs replaced on 11 cgroup hooks and for 1 pod, every pod captured throughout")
                .says("maps created: NODE_CONFIG, SPLICE, SPLICE_PASSED")
                .says(&format!("map layout v4 -> v{LAYOUT_VERSION}"))
                .says("sk_msg splicing of app-proxy connections turned on");
            let deadline = Instant::now() + Duration::from_secs(10);
            let after = made.load(Ordering::SeqCst) + 5;
            while made.load(Ordering::SeqCst) < after && !traffic.is_finished() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(5));
            }
            stop.store(true, Ordering::SeqCst);
            traffic.join().expect("the traffic thread");
        });
        assert!(
            made.load(Ordering::SeqCst) >= 5,
            "connections made during the upgrade"
        );
        let seen = outbound.take_accepted();
        assert_eq!(
            seen.len(),
            made.load(Ordering::SeqCst),
            "every one reached the proxy"
        );
        assert!(
            seen.iter()
                .all(|a| a.original_dst.as_ref().is_ok_and(|d| *d == out_dst)),
            "with its original destination"
        );
        for pin in &kept {
            std::fs::remove_file(pin).expect("remove a moved pin");
        }
        assert_lands(&topo.peer, ROOT, in_dst, &inbound);
        drop(outbound);

        let proxy = topo
            .pod
            .run_as(PROXY_UID, PROXY_UID, || {
                TcpListener::bind((Ipv4Addr::UNSPECIFIED, OUTBOUND_PORT))
            })
            .expect("the proxy listens");
        let before = spliced(pod)[0];
        let (client, server) = outbound_pair(&topo, &proxy, out_dst);
        exchange(client, server);
        let (sockets, messages) = spliced(pod)[0];
        assert_eq!(sockets, before.0 + 2, "the upgraded node splices");
        assert!(messages > before.1 + 200, "{messages} after {}", before.1);

        node_command("upgrade", &["--always"])
            .ok()
            .says("programs replaced on 11 cgroup hooks and for 1 pod")
            .never_says("sk_msg");
        assert!(node().sk_msg().expect("read the setting").enabled, "kept on");
        let (client, server) = outbound_pair(&topo, &proxy, out_dst);
        exchange(client, server);
        let (again, more) = spliced(pod)[0];
        assert_eq!(again, sockets + 2, "spliced by the new sk_msg program");
        assert!(more > messages + 200, "{more} after {messages}");
    });
}

/// IPv6 and dual-stack: with IPv6 capture, the app's `AF_INET6` connection (redirected to
/// `[::1]:15001`) and its `AF_INET` one (to `127.0.0.1:15001`, accepted by the proxy's
/// dual-stack listener as `::ffff:127.0.0.1`) are both spliced, every byte intact with EOF, and
/// the proxy reads each original destination.
#[test]
fn ebpf_sk_msg_splices_ipv6_and_dual_stack_connections() {
    ebpf_row(|| {
        load(&["--sk-msg"])
            .ok()
            .says("eBPF programs loaded")
            .says("turned on");
        let topo = Topology::new();
        CaptureInit::new(&topo.pod, Backend::Ebpf, Family::V6)
            .run()
            .ok()
            .says("eBPF capture applied");
        let pod = the_pod();
        let proxy = topo
            .pod
            .run_as(PROXY_UID, PROXY_UID, || {
                TcpListener::bind((std::net::Ipv6Addr::UNSPECIFIED, OUTBOUND_PORT))
            })
            .expect("the proxy listens");
        for (spliced_before, family) in [(0, Family::V6), (2, Family::V4)] {
            let dst = topo.peer_addr(family, 80);
            let (client, server) = outbound_pair(&topo, &proxy, dst);
            exchange(client, server);
            let [(sockets, messages), (pod_sockets, _)] = spliced(pod);
            assert_eq!(sockets, spliced_before + 2, "{family:?}: both ends spliced");
            assert_eq!(pod_sockets, sockets);
            assert!(messages > 200, "{family:?}: {messages}");
        }
        wait_unspliced();
    });
}

/// The proxy's hairpin (uid 1337 calling its own pod's address, redirected to the inbound port
/// as Istio's `-o lo ! -d 127.0.0.1/32 --uid-owner 1337` rule does): the connection lands on
/// the inbound listener with its original destination and is spliced, bytes and EOF intact.
/// The inbound listener is itself in `INBOUND_LISTENERS` (a socket map), so the socket it
/// accepts starts life as the child of a socket-map listener.
#[test]
fn ebpf_sk_msg_splices_the_proxys_hairpin() {
    ebpf_row(|| {
        load(&["--sk-msg"]).ok().says("turned on");
        let topo = Topology::new();
        CaptureInit::new(&topo.pod, Backend::Ebpf, Family::V4)
            .run()
            .ok()
            .says("eBPF capture applied");
        let pod = the_pod();
        let inbound = topo
            .pod
            .run_as(PROXY_UID, PROXY_UID, || {
                TcpListener::bind((Ipv4Addr::UNSPECIFIED, capture_e2e::INBOUND_PORT))
            })
            .expect("the proxy listens on its inbound port");
        let dst = topo.pod_addr(Family::V4, 8080);
        let client = topo
            .pod
            .run_as(PROXY_UID, PROXY_UID, || TcpStream::connect(dst))
            .expect("the proxy calls its own pod");
        let (server, _) = inbound.accept().expect("the inbound listener accepts");
        assert_eq!(capture_core::original_dst(&server).expect("SO_ORIGINAL_DST"), dst);
        exchange(client, server);
        let [(sockets, messages), _] = spliced(pod);
        assert_eq!(sockets, 2, "both ends of the hairpin spliced");
        assert!(messages > 200, "{messages}");
        wait_unspliced();
    });
}

/// `bpf(2)` on a pinned map, for [`ebpf_sk_msg_a_socket_that_sent_unspliced_never_splices`]: the
/// test plays the kernel's timing (a peer spliced only after a first message) with the map
/// itself. `value` is a socket's descriptor for a sockhash update; `None` deletes `key`.
fn sockhash_op(pin: &std::path::Path, key: &capture_ebpf_common::SpliceKey, value: Option<&TcpStream>) {
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: the attribute buffers are zeroed and sized beyond what the commands read; the
    // pointers in them outlive the calls.
    unsafe {
        let path = std::ffi::CString::new(pin.as_os_str().as_bytes()).expect("a path");
        let mut attr = [0u64; 16];
        attr[0] = path.as_ptr() as u64;
        let map = libc::syscall(libc::SYS_bpf, 7, attr.as_mut_ptr(), 128); // BPF_OBJ_GET
        assert!(map >= 0, "open {}: {}", pin.display(), io::Error::last_os_error());
        let fd = value.map(|s| u32::try_from(s.as_raw_fd()).expect("a descriptor"));
        let mut attr = [0u64; 16];
        attr[0] = map as u64; // map_fd (and padding)
        attr[1] = std::ptr::from_ref(key) as u64;
        if let Some(fd) = &fd {
            attr[2] = std::ptr::from_ref(fd) as u64;
        }
        let cmd = if fd.is_some() { 2 } else { 3 }; // BPF_MAP_UPDATE_ELEM, BPF_MAP_DELETE_ELEM
        let done = libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), 128);
        let error = io::Error::last_os_error();
        libc::close(map as i32);
        assert_eq!(done, 0, "bpf command {cmd} on {}: {error}", pin.display());
    }
}

/// The `SpliceKey` of a socket as its `sk_msg` and sockops see it.
fn splice_key(netns: NetnsCookie, socket: &TcpStream) -> capture_ebpf_common::SpliceKey {
    let mapped = |a: SocketAddr| match a.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    let (local, remote) = (
        socket.local_addr().expect("local address"),
        socket.peer_addr().expect("peer address"),
    );
    capture_ebpf_common::SpliceKey {
        netns: netns.0,
        local_addr: mapped(local),
        remote_addr: mapped(remote),
        local_port: local.port(),
        remote_port: remote.port(),
        _pad: 0,
    }
}

/// A spliced socket that sent a message the ordinary way (its peer not in `SPLICE` yet, as when
/// the app writes before the handshake's last ACK made the proxy's socket) keeps sending that
/// way once the peer is there: the proxy reads both messages in order, and neither is counted
/// as spliced. (Spliced, the second would sit in the proxy's sockmap queue, which the kernel
/// reads before its TCP queue: the proxy would read it first.) Replies the other way, to a
/// socket in the map all along, are spliced.
#[test]
fn ebpf_sk_msg_a_socket_that_sent_unspliced_never_splices() {
    ebpf_row(|| {
        load(&["--sk-msg"]).ok().says("turned on");
        let topo = Topology::new();
        CaptureInit::new(&topo.pod, Backend::Ebpf, Family::V4)
            .run()
            .ok()
            .says("eBPF capture applied");
        let pod = the_pod();
        let proxy = topo
            .pod
            .run_as(PROXY_UID, PROXY_UID, || {
                TcpListener::bind((Ipv4Addr::UNSPECIFIED, OUTBOUND_PORT))
            })
            .expect("the proxy listens");
        let (mut client, mut server) = outbound_pair(&topo, &proxy, topo.peer_addr(Family::V4, 80));
        let splice = ebpf::child_world()
            .expect("inside ebpf_row")
            .pin_dir
            .join("maps/SPLICE");
        let server_key = splice_key(pod, &server);
        sockhash_op(&splice, &server_key, None);
        client.write_all(b"first,").expect("the app writes");
        sockhash_op(&splice, &server_key, Some(&server));
        client.write_all(b"second").expect("the app writes again");
        let mut got = [0u8; 12];
        server
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("a timeout");
        let mut read_so_far = 0;
        while read_so_far < got.len() {
            match read(&server, &mut got[read_so_far..]).expect("the proxy reads") {
                0 => break,
                n => read_so_far += n,
            }
        }
        assert_eq!(&got[..read_so_far], b"first,second", "in order");
        assert_eq!(spliced(pod)[0].1, 0, "neither message spliced");
        server.write_all(b"reply").expect("the proxy replies");
        let mut reply = [0u8; 5];
        client.read_exact(&mut reply).expect("the app reads the reply");
        assert_eq!(&reply, b"reply");
        assert_eq!(spliced(pod)[0].1, 1, "the reply spliced");
    });
}
