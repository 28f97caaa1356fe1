//! The example proxy (`capture-core/examples/transparent-proxy.rs`) as the pod's sidecar, on
//! every backend: connections really reach their destinations through it.
//!
//! The example binary is built by the test itself (`cargo build -p capture-core --example
//! transparent-proxy`, into this test's own target directory and profile): cargo builds the
//! examples of the package under test only, and `CARGO_BIN_EXE_*` names only binaries. When
//! `cargo test --workspace` has built it already, that build does nothing.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use capture_e2e::{
    Family, INBOUND_PORT, NetNs, OUTBOUND_PORT, ProxyProcess, Topology, passthrough, require_root,
    test_matrix,
};

use crate::capture_init::{Backend, CaptureInit};
#[cfg(feature = "ebpf")]
use crate::support::ebpf_row;
use crate::support::{APP, Identity};

/// How long a step may take before the test gives up.
const PATIENCE: Duration = Duration::from_secs(10);

test_matrix!(backend, family: proxies_both_ways);
test_matrix!(netfilter, family: proxies_both_ways_with_tproxy);

/// `-m REDIRECT` on iptables and nftables, and the eBPF backend (which answers `SO_ORIGINAL_DST`
/// from its getsockopt hook and delivers inbound like TPROXY, by `sk_lookup`).
fn proxies_both_ways(backend: Backend, family: Family) {
    through_the_proxy(backend, family, false);
}

/// `-m TPROXY`: inbound connections reach the proxy's transparent listener undisturbed; the
/// original destination is the accepted socket's local address.
fn proxies_both_ways_with_tproxy(backend: Backend, family: Family) {
    through_the_proxy(backend, family, true);
}

/// The pod is captured, the example proxy runs in it (started as root, it binds and drops to
/// uid 1337), then: the app (uid 1000) connects to a peer port nobody listens on (the proxy logs
/// the refused connect and keeps serving), the app talks to an echo server on the peer, and a
/// client on the peer talks to an echo app in the pod. Each exchange must echo end to end, the proxy's log must
/// name the client and the original destination with the bytes both ways, and the server must
/// see the proxy's connection (from the pod; inbound, from the passthrough source), not the
/// client's.
fn through_the_proxy(backend: Backend, family: Family, tproxy: bool) {
    if !require_root() {
        return;
    }
    let topo = Topology::new();
    let mut init = CaptureInit::new(&topo.pod, backend, family);
    if tproxy {
        init = init.set("-m", "TPROXY");
    }
    init.run().ok();
    // After capture-init: the eBPF backend learns the inbound listener when it starts listening.
    let proxy = ProxyProcess::start(
        &topo.pod,
        transparent_proxy(),
        if tproxy { &["--transparent"] } else { &[][..] },
    );
    proxy.wait_for(&format!(
        "listening on [::]:{OUTBOUND_PORT} (outbound) and [::]:{INBOUND_PORT} (inbound"
    ));

    // A destination nobody listens on: the proxy logs the failure and goes on.
    let refused = topo.peer_addr(family, 81);
    let (uid, gid) = APP;
    let mut stream = topo
        .pod
        .run_as(uid, gid, || TcpStream::connect_timeout(&refused, PATIENCE))
        .unwrap_or_else(|e| panic!("app -> {refused}: {e}"));
    let client = stream.local_addr().expect("the app's address");
    stream.set_read_timeout(Some(PATIENCE)).expect("a read timeout");
    // The proxy closes the connection it cannot forward: end of file (or a reset).
    let mut answer = Vec::new();
    if let Err(e) = stream.read_to_end(&mut answer) {
        assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "app -> {refused}: {e}");
    }
    assert!(
        answer.is_empty(),
        "app -> {refused}: an answer from nobody: {answer:?}"
    );
    proxy.wait_for(&format!(
        "outbound {client} -> {refused} (original destination): connect failed: Connection refused"
    ));

    // Outbound: app in the pod -> peer:80, redirected to 15001.
    let dst = topo.peer_addr(family, 80);
    let server = echo_once(&topo.peer, dst);
    let message = format!("outbound to {dst}\n");
    let (echoed, client) = exchange(&topo.pod, APP, dst, message.as_bytes())
        .unwrap_or_else(|e| panic!("app -> {dst}: {e}\nproxy log:\n{}", proxy.log()));
    assert_eq!(
        String::from_utf8_lossy(&echoed),
        message,
        "app -> {dst}: the echo"
    );
    let seen = server
        .join()
        .expect("echo thread")
        .expect("the peer's echo server");
    assert_eq!(
        seen.ip(),
        topo.pod_ip(family),
        "the peer sees a connection from the pod"
    );
    assert_ne!(
        seen, client,
        "the peer sees the proxy's connection, not the app's"
    );
    let n = message.len();
    proxy.wait_for(&format!(
        "outbound {client} -> {dst} (original destination): {n} bytes sent, {n} bytes back"
    ));

    // Inbound: client on the peer -> pod:8080, captured to 15006.
    let dst = topo.pod_addr(family, 8080);
    let app = echo_once(&topo.pod, dst);
    let message = format!("inbound to {dst}\n");
    let (echoed, client) = exchange(&topo.peer, (0, 0), dst, message.as_bytes())
        .unwrap_or_else(|e| panic!("peer -> {dst}: {e}\nproxy log:\n{}", proxy.log()));
    assert_eq!(
        String::from_utf8_lossy(&echoed),
        message,
        "peer -> {dst}: the echo"
    );
    let seen = app.join().expect("echo thread").expect("the pod's echo app");
    assert_eq!(
        seen.ip(),
        passthrough(family),
        "the app sees the proxy's connection from the passthrough source"
    );
    let n = message.len();
    proxy.wait_for(&format!(
        "inbound {client} -> {dst} (original destination): {n} bytes sent, {n} bytes back"
    ));

    drop(proxy);
    init.switch("--cleanup-only").run().ok();
}

/// The example proxy, built once per test process.
fn transparent_proxy() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        // This test runs from <target>/[<triple>/]<profile>/deps/; the example lands in
        // <target>/[<triple>/]<profile>/examples/.
        let exe = std::env::current_exe().expect("the test's own path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("the test binary lies in <profile>/deps");
        let target_dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .parent()
            .expect("CARGO_TARGET_TMPDIR is <target>/tmp");
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") => "dev",
            Some(name) => name,
            None => panic!("no profile directory in {}", exe.display()),
        };
        let mut cargo = Command::new(env!("CARGO"));
        cargo
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["build", "--quiet", "--locked", "--offline", "-p", "capture-core"])
            .args([
                "--example",
                "transparent-proxy",
                "--profile",
                profile,
                "--target-dir",
            ])
            .arg(target_dir);
        if let Some(triple) = profile_dir.parent().filter(|dir| *dir != target_dir) {
            cargo
                .arg("--target")
                .arg(triple.file_name().expect("a target triple"));
        }
        let out = cargo
            .output()
            .unwrap_or_else(|e| panic!("cannot run {cargo:?}: {e}"));
        assert!(
            out.status.success(),
            "{cargo:?} failed with {}:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        profile_dir.join("examples").join("transparent-proxy")
    })
}

/// An echo server on `addr` in `ns` for one connection: reads to the end, writes it back,
/// closes; returns the client address it saw.
fn echo_once(ns: &NetNs, addr: SocketAddr) -> JoinHandle<io::Result<SocketAddr>> {
    let listener = ns
        .run(|| TcpListener::bind(addr))
        .unwrap_or_else(|e| panic!("cannot listen on {addr} in {}: {e}", ns.name()));
    listener.set_nonblocking(true).expect("a non-blocking listener");
    thread::spawn(move || {
        let deadline = Instant::now() + PATIENCE;
        let (mut conn, peer) = loop {
            match listener.accept() {
                Ok(accepted) => break accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(20));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("nobody connected to {addr}"),
                    ));
                }
                Err(e) => return Err(e),
            }
        };
        conn.set_nonblocking(false)?;
        conn.set_read_timeout(Some(PATIENCE))?;
        let mut request = Vec::new();
        conn.read_to_end(&mut request)?;
        conn.write_all(&request)?;
        Ok(peer)
    })
}

/// Connects from `ns` as `who` to `dst`, sends `message`, closes its sending side and reads the
/// answer to the end; returns the answer and the client's own address.
fn exchange(ns: &NetNs, who: Identity, dst: SocketAddr, message: &[u8]) -> io::Result<(Vec<u8>, SocketAddr)> {
    let (uid, gid) = who;
    let mut stream = ns.run_as(uid, gid, || TcpStream::connect_timeout(&dst, PATIENCE))?;
    let local = stream.local_addr()?;
    stream.set_read_timeout(Some(PATIENCE))?;
    stream.write_all(message)?;
    stream.shutdown(Shutdown::Write)?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    Ok((answer, local))
}
