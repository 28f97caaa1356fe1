//! The end-to-end scenarios of issues 3 and 5, against the real `capture-init` binary.
//!
//! Each test builds its own [`Topology`] (a pod and a peer network namespace joined by a veth pair, no
//! route anywhere else), runs `capture-init` for the pod and proves with real TCP connections where the
//! traffic lands. The proxy's listeners run as uid 1337 in the pod, as the sidecar does; applications
//! listen on the peer (`:80`, `:81`, `:82`) and in the pod (`:8080`, `:8082`, `:15021`).
//!
//! `capture-init` is started both ways a pod's namespace can be given to it: with
//! `--network-namespace /run/netns/<pod>` from the test's own namespace ([`Via::Flag`]), and already
//! inside the pod's namespace ([`Via::Enter`]).
//!
//! **One scenario table, every backend.** A scenario is a function of a [`Backend`] (and usually a
//! [`Family`]); [`scenario_tests!`] makes one test per row: `legacy_v4`, `nft_v4`, `ebpf_v4`, and the
//! same for `v6` (`--force-iptables-version legacy|nft`, or `--backend ebpf`). An eBPF row
//! ([`ebpf_row`]) runs its scenario in a child of this test binary inside a test-owned cgroup v2
//! directory, so `capture-init`, the proxy, the apps and the clients all run there; `capture-init`
//! loads the programs itself with `--cgroup <that cgroup> --bpffs <a private bpffs>`, and afterwards
//! `capture-init ebpf unload` must leave nothing attached and nothing pinned. The eBPF rows need the
//! feature `ebpf` (scripts/test turns it on). Scenarios the eBPF backend cannot pass yet (inbound
//! capture) carry their eBPF rows as ignored, switched on in one place.
//!
//! The base command is the injector's default sidecar command:
//! `-p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -x "" -b '*' -d 15090,15021,15020`.

use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::atomic::Ordering;
use std::thread;

#[cfg(feature = "ebpf")]
use capture_e2e::ebpf::{self, EbpfWorld};
use capture_e2e::{
    APP_UID, Accepted, Family, Flavor, INBOUND_PORT, Listener, NetNs, OUTBOUND_PORT, PROXY_UID, SIDECAR_ARGS,
    TempDir, Topology, connect_as, connect_as_from, connect_detailed, iptables_save_normalized,
    normalize_save, passthrough, require_root, run_ok, test_matrix,
};

/// The binary under test.
const CAPTURE_INIT: &str = env!("CARGO_BIN_EXE_capture-init");

/// Who connects: uid and gid.
type Identity = (u32, u32);
/// The application: captured.
const APP: Identity = (APP_UID, APP_UID);
/// The proxy: never captured outbound.
const PROXY: Identity = (PROXY_UID, PROXY_UID);
/// Root, for the peer's clients.
const ROOT: Identity = (0, 0);

/// Which backend a scenario row runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    /// `--force-iptables-version legacy|nft` (the default backend).
    Iptables(Flavor),
    /// `--backend ebpf --cgroup <test cgroup> --bpffs <test bpffs>`, in an [`ebpf_row`].
    #[cfg(feature = "ebpf")]
    Ebpf,
}

impl Backend {
    fn is_ebpf(self) -> bool {
        match self {
            Backend::Iptables(_) => false,
            #[cfg(feature = "ebpf")]
            Backend::Ebpf => true,
        }
    }
}

/// How `capture-init` is pointed at the pod's network namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    /// `--network-namespace /run/netns/<pod>`, started from the test's namespace (CNI mode's way).
    Flag,
    /// Started inside the pod's namespace (the init container's way).
    Enter,
}

/// One `capture-init` invocation for a pod: the default sidecar command plus changes.
#[derive(Debug, Clone)]
struct CaptureInit<'a> {
    pod: &'a NetNs,
    via: Via,
    args: Vec<(String, Option<String>)>,
    /// A directory put first in `PATH`.
    path_first: Option<PathBuf>,
}

impl<'a> CaptureInit<'a> {
    /// The default sidecar command for `pod` in `flavor`, with `--dual-stack` for [`Family::V6`] (the
    /// pod has both families' addresses, so that is what turns IPv6 on).
    fn sidecar(pod: &'a NetNs, flavor: Flavor, family: Family) -> Self {
        Self::new(pod, Backend::Iptables(flavor), family)
    }

    /// The default sidecar command for `pod` on `backend`; see [`CaptureInit::sidecar`]. The eBPF
    /// backend is pointed at the test-owned cgroup and bpffs of the [`ebpf_row`] it runs in.
    fn new(pod: &'a NetNs, backend: Backend, family: Family) -> Self {
        let args: Vec<(String, Option<String>)> = SIDECAR_ARGS
            .chunks(2)
            .map(|pair| (pair[0].to_owned(), Some(pair[1].to_owned())))
            .collect();
        let init = Self {
            pod,
            via: Via::Flag,
            args,
            path_first: None,
        };
        let init = match backend {
            Backend::Iptables(flavor) => init.set("--force-iptables-version", flavor_name(flavor)),
            #[cfg(feature = "ebpf")]
            Backend::Ebpf => {
                let world = ebpf::child_world().expect("eBPF rows run inside ebpf_row's cgroup child");
                init.ebpf_at(&world.cgroup, &world.bpffs)
            }
        };
        match family {
            Family::V4 => init,
            Family::V6 => init.switch("--dual-stack"),
        }
    }

    /// `--backend ebpf` with the programs attached to `cgroup` and pinned in `bpffs`.
    #[cfg(feature = "ebpf")]
    fn ebpf_at(self, cgroup: &Path, bpffs: &Path) -> Self {
        self.set("--backend", "ebpf")
            .set("--cgroup", &cgroup.display().to_string())
            .set("--bpffs", &bpffs.display().to_string())
    }

    /// Sets `flag` to `value`, replacing the base command's value if it has one.
    fn set(mut self, flag: &str, value: &str) -> Self {
        let value = Some(value.to_owned());
        match self.args.iter_mut().find(|(f, _)| f == flag) {
            Some((_, v)) => *v = value,
            None => self.args.push((flag.to_owned(), value)),
        }
        self
    }

    /// Removes `flag` (and its value), so that its default applies.
    #[cfg(feature = "ebpf")]
    fn unset(mut self, flag: &str) -> Self {
        self.args.retain(|(f, _)| f != flag);
        self
    }

    /// Adds a switch such as `--reconcile`.
    fn switch(mut self, flag: &str) -> Self {
        self.args.push((flag.to_owned(), None));
        self
    }

    fn via(mut self, via: Via) -> Self {
        self.via = via;
        self
    }

    fn path_first(mut self, dir: &Path) -> Self {
        self.path_first = Some(dir.to_owned());
        self
    }

    /// Runs the binary with a clean environment (only `PATH`), so nothing on the machine changes the
    /// result.
    fn run(&self) -> Run {
        run_clean(self.command(), self.path_first.as_deref())
    }

    /// The command [`CaptureInit::run`] runs, environment cleaned, to start it some other way.
    fn command(&self) -> Command {
        let cmd = match self.via {
            Via::Flag => {
                let mut cmd = Command::new(CAPTURE_INIT);
                cmd.arg("--network-namespace").arg(self.pod.path());
                cmd
            }
            Via::Enter => self.pod.command(CAPTURE_INIT),
        };
        let mut cmd = cmd;
        for (flag, value) in &self.args {
            cmd.arg(flag);
            if let Some(value) = value {
                cmd.arg(value);
            }
        }
        clean_env(&mut cmd, self.path_first.as_deref());
        cmd
    }
}

/// Gives `cmd` a clean environment: only `PATH`, with `path_first` first.
fn clean_env(cmd: &mut Command, path_first: Option<&Path>) {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    let path = match path_first {
        Some(dir) => {
            std::env::join_paths(std::iter::once(dir.to_owned()).chain(std::env::split_paths(&path)))
                .expect("PATH entries without ':'")
        }
        None => path,
    };
    cmd.env_clear().env("PATH", path);
}

/// Runs `cmd` with a clean environment (only `PATH`, with `path_first` first).
fn run_clean(mut cmd: Command, path_first: Option<&Path>) -> Run {
    clean_env(&mut cmd, path_first);
    let out = cmd.output();
    finished(&cmd, out)
}

/// A [`Run`] from a finished command's output.
fn finished(cmd: &Command, out: std::io::Result<std::process::Output>) -> Run {
    let out = out.unwrap_or_else(|e| panic!("cannot run {CAPTURE_INIT}: {e}"));
    Run {
        command: format!("{cmd:?}"),
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `capture-init ebpf <args>`: a node command of the eBPF backend.
#[cfg(feature = "ebpf")]
fn ebpf_node(args: &[&str]) -> Run {
    let mut cmd = Command::new(CAPTURE_INIT);
    cmd.arg("ebpf").args(args);
    run_clean(cmd, None)
}

/// How a `capture-init` run ended.
#[derive(Debug)]
struct Run {
    command: String,
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Asserts the exit code.
    #[track_caller]
    fn code(&self, code: i32) -> &Self {
        assert_eq!(
            self.status.code(),
            Some(code),
            "{} ended with {}\nstdout:\n{}stderr:\n{}",
            self.command,
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }

    /// Asserts exit code 0.
    #[track_caller]
    fn ok(&self) -> &Self {
        self.code(0)
    }

    /// Asserts that stderr contains `text`.
    #[track_caller]
    fn says(&self, text: &str) -> &Self {
        assert!(
            self.stderr.contains(text),
            "{}: stderr lacks {text:?}:\n{}",
            self.command,
            self.stderr
        );
        self
    }

    /// Asserts that stderr does not contain `text`.
    #[cfg(feature = "ebpf")]
    #[track_caller]
    fn never_says(&self, text: &str) -> &Self {
        assert!(
            !self.stderr.contains(text),
            "{}: stderr has {text:?}:\n{}",
            self.command,
            self.stderr
        );
        self
    }
}

fn flavor_name(flavor: Flavor) -> &'static str {
    match flavor {
        Flavor::Legacy => "legacy",
        Flavor::Nft => "nft",
    }
}

/// The `iptables` program of a flavor and family, e.g. `ip6tables-nft`.
fn iptables(flavor: Flavor, family: Family) -> String {
    let base = match family {
        Family::V4 => "iptables",
        Family::V6 => "ip6tables",
    };
    format!("{base}-{}", flavor_name(flavor))
}

/// `-6` for IPv6 `ip` commands.
fn ip_family(family: Family) -> &'static str {
    match family {
        Family::V4 => "-4",
        Family::V6 => "-6",
    }
}

/// Both families' normalized saves.
fn saves(pod: &NetNs, flavor: Flavor) -> [String; 2] {
    [Family::V4, Family::V6].map(|family| iptables_save_normalized(pod, flavor, family))
}

/// The `-A` lines of a save.
fn rules(save: &str) -> Vec<&str> {
    save.lines().filter(|l| l.starts_with("-A ")).collect()
}

#[track_caller]
fn assert_no_istio(pod: &NetNs, flavor: Flavor) {
    for family in [Family::V4, Family::V6] {
        let save = iptables_save_normalized(pod, flavor, family);
        assert!(!save.contains("ISTIO"), "{family:?} rules left behind:\n{save}");
    }
}

/// Whether `::6` is on the pod's `lo`.
fn has_ipv6_passthrough(pod: &NetNs) -> bool {
    pod.ip(&["-6", "addr", "show", "dev", "lo"])
        .contains("inet6 ::6/128")
}

/// An address in the pod's subnet that nobody holds: `10.<n>.0.3` or `fd00:<n>::3`. Captured traffic to
/// it still reaches the proxy, since the redirect happens before anything is sent.
fn nobody(topo: &Topology, family: Family, port: u16) -> SocketAddr {
    let ip = match topo.peer_ip(family) {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            IpAddr::V4(Ipv4Addr::new(a, b, c, 3))
        }
        IpAddr::V6(v6) => {
            let mut segments = v6.segments();
            segments[7] = 3;
            IpAddr::V6(Ipv6Addr::from(segments))
        }
    };
    SocketAddr::new(ip, port)
}

/// The peer's address as a host CIDR for `-x`.
fn peer_cidr(topo: &Topology, family: Family) -> String {
    match family {
        Family::V4 => format!("{}/32", topo.peer_ip(family)),
        Family::V6 => format!("{}/128", topo.peer_ip(family)),
    }
}

/// The proxy's outbound listener, `:15001` as uid 1337.
fn outbound_proxy(topo: &Topology, family: Family) -> Listener {
    let addr = SocketAddr::new(family.unspecified(), OUTBOUND_PORT);
    Listener::spawn_as(&topo.pod, PROXY_UID, PROXY_UID, addr, "outbound-proxy")
}

/// The proxy's inbound listener, `:15006` as uid 1337.
fn inbound_proxy(topo: &Topology, family: Family) -> Listener {
    let addr = SocketAddr::new(family.unspecified(), INBOUND_PORT);
    Listener::spawn_as(&topo.pod, PROXY_UID, PROXY_UID, addr, "inbound-proxy")
}

/// An application listening on the peer's `port`.
fn peer_app(topo: &Topology, family: Family, port: u16) -> Listener {
    Listener::spawn(
        &topo.peer,
        topo.peer_addr(family, port),
        &format!("peer-app:{port}"),
    )
}

/// An application listening on the pod's `port`.
fn pod_app(topo: &Topology, family: Family, port: u16) -> Listener {
    Listener::spawn(&topo.pod, topo.pod_addr(family, port), &format!("pod-app:{port}"))
}

/// Connects from `ns` as `who` to `dst` and asserts that the connection landed on `on` and nowhere
/// else, with `dst` as its original destination; returns what `on` saw.
#[track_caller]
fn assert_lands(ns: &NetNs, who: Identity, dst: SocketAddr, on: &Listener) -> Accepted {
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
    seen
}

/// Runs an eBPF row: in the test process, makes a test-owned cgroup v2 directory and bpffs, runs
/// this same test again in a child inside the cgroup (where `body` runs: `capture-init` loads the
/// programs there and every process and socket of the scenario belongs to the cgroup), then
/// checks that the programs left no per-connection state and that `capture-init ebpf unload`
/// leaves no program attached to the cgroup and nothing pinned.
#[cfg(feature = "ebpf")]
fn ebpf_row(body: impl FnOnce()) {
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

/// Without the feature `ebpf` the table has no eBPF rows; CI must not pass without them.
#[cfg(not(feature = "ebpf"))]
#[test]
fn ebpf_rows_are_built() {
    assert!(
        std::env::var_os("CI").is_none(),
        "the scenario table's eBPF rows need capture-init's feature `ebpf`: \
         cargo test --workspace --features capture-init/ebpf (as scripts/test does)"
    );
    eprintln!("skipping the eBPF rows: built without capture-init's feature `ebpf`");
}

// ── 1. Outbound ──────────────────────────────────────────────────────────────────────────────────

test_matrix!(backend, family:
    outbound_app_is_captured_proxy_is_not,
    outbound_excluded_port_goes_direct,
    outbound_excluded_cidr_goes_direct,
    outbound_ports_captured_without_cidrs,
    outbound_excluded_cidr_wins_over_captured_port,
);

/// The app (uid 1000) → peer:80 lands on :15001, which learns peer:80; the proxy's uid and the proxy's
/// gid each go straight to the peer.
fn outbound_app_is_captured_proxy_is_not(backend: Backend, family: Family) {
    if !require_root() {
        return;
    }
    let topo = Topology::new();
    let outbound = outbound_proxy(&topo, family);
    let app = peer_app(&topo, family, 80);
    CaptureInit::new(&topo.pod, backend, family).run().ok();

    let dst = topo.peer_addr(family, 80);
    let seen = assert_lands(&topo.pod, APP, dst, &outbound);
    // Both backends send a captured connection to loopback: REDIRECT in nat OUTPUT rewrites the
    // destination, eBPF's connect hook the address the app dials.
    assert_eq!(seen.local, SocketAddr::new(family.loopback(), OUTBOUND_PORT));
    if !backend.is_ebpf() {
        // REDIRECT leaves the source the route chose alone.
        assert_eq!(seen.peer.ip(), topo.pod_ip(family));
    }
    assert_lands(&topo.pod, PROXY, dst, &app);
    assert_lands(&topo.pod, (PROXY_UID, APP_UID), dst, &app);
    assert_lands(&topo.pod, (APP_UID, PROXY_UID), dst, &app);
}

/// `-o 81`: the app → peer:81 goes straight to the peer; peer:80 is still captured.
fn outbound_excluded_port_goes_direct(backend: Backend, family: Family) {
    if !require_root() {
        return;
    }
    let topo = Topology::new();
    let outbound = outbound_proxy(&topo, family);
    let app81 = peer_app(&topo, family, 81);
    CaptureInit::new(&topo.pod, backend, family)
        .set("-o", "81")
        .run()
        .ok();

    assert_lands(&topo.pod, APP, topo.peer_addr(family, 81), &app81);
    assert_lands(&topo.pod, APP, topo.peer_addr(family, 80), &outbound);
}

/// `-x <peer>/32` (`/128`): the app → peer:80 goes straight to the peer; another address of the subnet
/// is still captured.
fn outbound_excluded_cidr_goes_direct(backend: Backend, family: Family) {
    if !require_root() {
        return;
    }
    let topo = Topology::new();
    let outbound = outbound_proxy(&topo, family);
    let app = peer_app(&topo, family, 80);
    CaptureInit::new(&topo.pod, backend, family)
        .set("-x", &peer_cidr(&topo, family))
        .run()
        .ok();

    assert_lands(&topo.pod, APP, topo.peer_addr(family, 80), &app);
    assert_lands(&topo.pod, APP, nobody(&topo, family, 80), &outbound);
}

/// `-i "" -q 82`: no destination is captured by address, but port 82 is captured wherever it goes.
fn outbound_ports_captured_without_cidrs(backend: Backend, family: Family) {
    if !require_root() {
        return;
    }
    let topo = Topology::new();
    let outbound = outbound_proxy(&topo, family);
    let app = peer_app(&topo, family, 80);
    CaptureInit::new(&topo.pod, backend, family)
        .set("-i", "")
        .set("-q", "82")
        .run()
        .ok();

    assert_lands(&topo.pod, APP, topo.peer_addr(family, 82), &outbound);
    assert_lands(&topo.pod, APP, topo.peer_addr(family, 80), &app);
}

/// `-x <peer>/32 -q 82`: peer:82 goes DIRECT. istio-iptables appends the `-x` RETURN rules to
/// ISTIO_OUTPUT before the `-q` redirect rules, so an excluded CIDR wins over a captured port; we keep
/// Istio's order. Port 82 to any other address is still captured.
fn outbound_excluded_cidr_wins_over_captured_port(backend: Backend, family: Family) {
    if !require_root() {
        return;
    }
    let topo = Topology::new();
    let outbound = outbound_proxy(&topo, family);
    let app82 = peer_app(&topo, family, 82);
    CaptureInit::new(&topo.pod, backend, family)
        .set("-x", &peer_cidr(&topo, family))
        .set("-q", "82")
        .run()
        .ok();

    assert_lands(&topo.pod, APP, topo.peer_addr(family, 82), &app82);
    assert_lands(&topo.pod, APP, nobody(&topo, family, 82), &outbound);
}

test_matrix!(backend: outbound_dual_stack_sockets_to_an_ipv4_peer);

/// IPv4 through dual-stack sockets, on an IPv4-only capture: an `AF_INET6` app socket dialling
/// `::ffff:<peer>:80` is captured as IPv4, and the app's `getpeername()` still says the mapped
/// peer; a dual-stack proxy listener (`[::]:15001`) learns the original destination of that and of
/// a plain `AF_INET` app connection as plain IPv4.
fn outbound_dual_stack_sockets_to_an_ipv4_peer(backend: Backend) {
    if !require_root() {
        return;
    }
    let topo = Topology::new();
    let outbound = Listener::spawn_as(
        &topo.pod,
        PROXY_UID,
        PROXY_UID,
        SocketAddr::new(Family::V6.unspecified(), OUTBOUND_PORT),
        "outbound-proxy",
    );
    let app = peer_app(&topo, Family::V4, 80);
    CaptureInit::new(&topo.pod, backend, Family::V4).run().ok();

    let peer = topo.peer_addr(Family::V4, 80);
    let IpAddr::V4(peer_ip) = peer.ip() else {
        unreachable!("an IPv4 peer")
    };
    let mapped = SocketAddr::new(peer_ip.to_ipv6_mapped().into(), 80);
    let conn = connect_detailed(&topo.pod, APP_UID, APP_UID, mapped).expect("the AF_INET6 app connects");
    assert_eq!(conn.reply, outbound.token(), "the AF_INET6 app is captured");
    assert_eq!(
        conn.peer, mapped,
        "getpeername() shows the mapped original destination"
    );
    let seen = outbound.take_one();
    assert_eq!(
        *seen.original_dst.as_ref().expect("original_dst"),
        peer,
        "the proxy learns the IPv4 destination"
    );

    let conn = connect_detailed(&topo.pod, APP_UID, APP_UID, peer).expect("the AF_INET app connects");
    assert_eq!(conn.reply, outbound.token());
    assert_eq!(conn.peer, peer);
    let seen = outbound.take_one();
    assert_eq!(*seen.original_dst.as_ref().expect("original_dst"), peer);
    assert_eq!(
        seen.local,
        SocketAddr::new(Ipv4Addr::LOCALHOST.to_ipv6_mapped().into(), OUTBOUND_PORT),
        "the proxy's socket is AF_INET6, its local address v4-mapped"
    );
    assert!(
        app.take_accepted().is_empty(),
        "the peer sees no captured traffic"
    );
}

// ── 2. Inbound ───────────────────────────────────────────────────────────────────────────────────

test_matrix!(backend, family:
    inbound_is_captured_except_excluded_ports,
    inbound_only_listed_ports,
);

/// The peer → pod:8080 lands on :15006, which learns pod:8080; `-d` port 15021 reaches the app
/// directly. capture-init runs inside the pod's namespace here.
fn inbound_is_captured_except_excluded_ports(backend: Backend, family: Family) {
    if !require_root() {
        return;
    }
    let topo = Topology::new();
    let inbound = inbound_proxy(&topo, family);
    let app = pod_app(&topo, family, 8080);
    let health = pod_app(&topo, family, 15021);
    CaptureInit::new(&topo.pod, backend, family)
        .via(Via::Enter)
        .run()
        .ok();

    let seen = assert_lands(&topo.peer, ROOT, topo.pod_addr(family, 8080), &inbound);
    // REDIRECT in nat PREROUTING rewrites the destination to the incoming interface's address
    // and the proxy port; eBPF's sk_lookup hands the connection over unchanged. original_dst()
    // (checked by assert_lands) is pod:8080 either way.
    let local_port = if backend.is_ebpf() { 8080 } else { INBOUND_PORT };
    assert_eq!(seen.local, topo.pod_addr(family, local_port));
    assert_eq!(seen.peer.ip(), topo.peer_ip(family));
    assert_lands(&topo.peer, ROOT, topo.pod_addr(family, 15021), &health);
    assert!(app.take_accepted().is_empty());
}

/// `-b 8080`: only pod:8080 is captured; pod:8082 reaches the app directly.
fn inbound_only_listed_ports(backend: Backend, family: Family) {
    if !require_root() {
        return;
    }
    let topo = Topology::new();
    let inbound = inbound_proxy(&topo, family);
    let app8082 = pod_app(&topo, family, 8082);
    CaptureInit::new(&topo.pod, backend, family)
        .set("-b", "8080")
        .via(Via::Enter)
        .run()
        .ok();

    assert_lands(&topo.peer, ROOT, topo.pod_addr(family, 8080), &inbound);
    assert_lands(&topo.peer, ROOT, topo.pod_addr(family, 8082), &app8082);
}

// ── 3. Loopback ──────────────────────────────────────────────────────────────────────────────────

test_matrix!(backend, family: loopback);

/// Inside the pod: the app → 127.0.0.1 (`::1`) and → its own pod IP are not captured; the proxy →
/// pod:8080 from 127.0.0.6 (`::6`) is inbound passthrough and reaches the app; the proxy → pod:8080
/// from its pod IP hairpins to :15006 with pod:8080 as original destination.
fn loopback(backend: Backend, family: Family) {
    if !require_root() {
        return;
    }
    let topo = Topology::new();
    let outbound = outbound_proxy(&topo, family);
    let inbound = inbound_proxy(&topo, family);
    let app = pod_app(&topo, family, 8080);
    let local_app = Listener::spawn(
        &topo.pod,
        SocketAddr::new(family.loopback(), 9000),
        "local-app:9000",
    );
    CaptureInit::new(&topo.pod, backend, family)
        .via(Via::Enter)
        .run()
        .ok();

    let pod8080 = topo.pod_addr(family, 8080);
    assert_lands(
        &topo.pod,
        APP,
        SocketAddr::new(family.loopback(), 9000),
        &local_app,
    );
    assert_lands(&topo.pod, APP, pod8080, &app);

    let (reply, client) = connect_as_from(&topo.pod, PROXY_UID, PROXY_UID, passthrough(family), pod8080)
        .expect("the proxy connects from the passthrough address");
    assert_eq!(reply, app.token());
    assert_eq!(app.take_one().peer, client);
    assert_eq!(client.ip(), passthrough(family));

    assert_lands(&topo.pod, PROXY, pod8080, &inbound);
    assert!(outbound.take_accepted().is_empty());
}

// ── 4. IPv6 detection and TPROXY ────────────────────────────────────────────────────────────────

test_matrix!(flavor: ipv6_follows_dual_stack_and_ipv6_flag);

/// The pod has IPv4 and IPv6 addresses, IPv4 first. Without `--dual-stack` only IPv4 is captured, as
/// Istio decides from the first address; `--dual-stack --ipv6 off` still leaves IPv6 alone;
/// `--dual-stack` adds IPv6 (and `::6` on `lo`) without touching IPv4.
fn ipv6_follows_dual_stack_and_ipv6_flag(flavor: Flavor) {
    if !require_root() {
        return;
    }
    let topo = Topology::new();
    let v4_only = CaptureInit::sidecar(&topo.pod, flavor, Family::V4);
    // Istio's detection is kept, but the uncaptured IPv6 address is named (issue 8 item 10).
    v4_only
        .run()
        .ok()
        .says("IPv4 capture applied")
        .says(&format!(
            "warning: the pod has IPv6 address {} but IPv6 capture is off",
            topo.pod_ip(Family::V6)
        ))
        .says("pass --dual-stack");
    let [v4, v6] = saves(&topo.pod, flavor);
    assert!(v4.contains("-A ISTIO_OUTPUT"), "{v4}");
    assert!(!v6.contains("ISTIO"), "IPv6 rules without --dual-stack:\n{v6}");
    assert!(!has_ipv6_passthrough(&topo.pod));

    let run = v4_only.clone().switch("--dual-stack").set("--ipv6", "off").run();
    run.ok().says("IPv4 capture already in place, nothing changed");
    assert!(!run.stderr.contains("IPv6"), "{}", run.stderr);
    assert_eq!(saves(&topo.pod, flavor), [v4.clone(), v6]);

    CaptureInit::sidecar(&topo.pod, flavor, Family::V6)
        .run()
        .ok()
        .says("IPv4 capture already in place, nothing changed")
        .says("IPv6 capture applied");
    let [v4_after, v6_after] = saves(&topo.pod, flavor);
    assert_eq!(v4_after, v4);
    assert!(
        v6_after.contains("-A ISTIO_OUTPUT -s ::6/128 -o lo -j RETURN"),
        "{v6_after}"
    );
    assert!(has_ipv6_passthrough(&topo.pod));
}

test_matrix!(flavor, family: tproxy);

/// `-m TPROXY`: the peer → pod:8080 reaches the transparent inbound proxy, which sees the peer's own
/// address as client and pod:8080 as its local address and original destination; excluded ports and
/// outbound capture work as before. capture-init installs the `fwmark` rule and the `local` route in
/// table 133 and `--cleanup-only` removes them with the rules.
fn tproxy(flavor: Flavor, family: Family) {
    if !require_root() {
        return;
    }
    let topo = Topology::new();
    let inbound = Listener::spawn_transparent(
        &topo.pod,
        SocketAddr::new(family.unspecified(), INBOUND_PORT),
        "inbound-proxy",
    );
    let outbound = outbound_proxy(&topo, family);
    let app = pod_app(&topo, family, 8080);
    let health = pod_app(&topo, family, 15021);
    let init = CaptureInit::sidecar(&topo.pod, flavor, family).set("-m", "TPROXY");
    init.run().ok();

    let f = ip_family(family);
    let rules = topo.pod.ip(&[f, "rule", "show"]);
    assert!(rules.contains("fwmark 0x539 lookup 133"), "{rules}");
    let table = topo.pod.ip(&[f, "route", "show", "table", "133"]);
    assert!(table.contains("local default dev lo"), "{table}");

    let pod8080 = topo.pod_addr(family, 8080);
    let seen = assert_lands(&topo.peer, ROOT, pod8080, &inbound);
    assert_eq!(
        seen.peer.ip(),
        topo.peer_ip(family),
        "TPROXY keeps the client's address"
    );
    assert_eq!(
        seen.local, pod8080,
        "TPROXY delivers without rewriting the destination"
    );
    assert!(app.take_accepted().is_empty());
    assert_lands(&topo.peer, ROOT, topo.pod_addr(family, 15021), &health);
    assert_lands(&topo.pod, APP, topo.peer_addr(family, 80), &outbound);

    init.clone().switch("--cleanup-only").run().ok();
    assert_no_istio(&topo.pod, flavor);
    let rules = topo.pod.ip(&[f, "rule", "show"]);
    assert!(!rules.contains("lookup 133"), "{rules}");
    let table = topo.pod.ip(&[f, "route", "show", "table", "133"]);
    assert!(table.trim().is_empty(), "{table}");
}

// ── 6. State: idempotence, drift, reconcile, cleanup ────────────────────────────────────────────

test_matrix!(flavor:
    second_run_changes_nothing,
    drift_fails_and_reconcile_restores,
    cleanup_removes_everything
);

/// Running the same command twice leaves identical rules in both families; the second run says so.
fn second_run_changes_nothing(flavor: Flavor) {
    if !require_root() {
        return;
    }
    let topo = Topology::new();
    let init = CaptureInit::sidecar(&topo.pod, flavor, Family::V6);
    init.run()
        .ok()
        .says("IPv4 capture applied")
        .says("IPv6 capture applied");
    let fresh = saves(&topo.pod, flavor);
    init.run()
        .ok()
        .says("IPv4 capture already in place, nothing changed")
        .says("IPv6 capture already in place, nothing changed");
    assert_eq!(saves(&topo.pod, flavor), fresh);
}

test_matrix!(backend, family: any_destination_is_captured_and_reruns_as_no_op);

/// `-i 0.0.0.0/0` (`-i 0.0.0.0/0,::/0` with IPv6), the usual spelling of "everything" in
/// `includeOutboundIPRanges`: the app → peer:80 is captured, and the same command again finds its
/// rules in place and changes nothing, although `iptables-save` shows `-d 0.0.0.0/0` and `-d ::/0` as
/// no address option at all.
fn any_destination_is_captured_and_reruns_as_no_op(backend: Backend, family: Family) {
    if !require_root() {
        return;
    }
    let topo = Topology::new();
    let outbound = outbound_proxy(&topo, family);
    let include = match family {
        Family::V4 => "0.0.0.0/0",
        Family::V6 => "0.0.0.0/0,::/0",
    };
    let init = CaptureInit::new(&topo.pod, backend, family).set("-i", include);
    init.run().ok();
    assert_lands(&topo.pod, APP, topo.peer_addr(family, 80), &outbound);

    let state = || match backend {
        Backend::Iptables(flavor) => saves(&topo.pod, flavor).join(""),
        #[cfg(feature = "ebpf")]
        Backend::Ebpf => ebpf_pods().ok().stdout.clone(),
    };
    let fresh = state();
    let again = init.run();
    again.ok();
    if backend.is_ebpf() {
        again.says("eBPF capture already in place, nothing changed");
    } else {
        again.says("IPv4 capture already in place, nothing changed");
        if family == Family::V6 {
            again.says("IPv6 capture already in place, nothing changed");
        }
    }
    assert_eq!(state(), fresh, "a rerun changes nothing");
    assert_lands(&topo.pod, APP, topo.peer_addr(family, 80), &outbound);
}

/// A chain changed behind capture-init's back makes a plain run fail naming the difference (and change
/// nothing); `--reconcile` puts back exactly the fresh rules, in both families.
fn drift_fails_and_reconcile_restores(flavor: Flavor) {
    if !require_root() {
        return;
    }
    let topo = Topology::new();
    let init = CaptureInit::sidecar(&topo.pod, flavor, Family::V6);
    init.run().ok();
    let fresh = saves(&topo.pod, flavor);

    run_ok(topo.pod.command(iptables(flavor, Family::V4)).args([
        "-t",
        "nat",
        "-R",
        "ISTIO_INBOUND",
        "2",
        "-p",
        "tcp",
        "--dport",
        "15091",
        "-j",
        "RETURN",
    ]));
    run_ok(topo.pod.command(iptables(flavor, Family::V6)).args([
        "-t",
        "nat",
        "-D",
        "OUTPUT",
        "-j",
        "ISTIO_OUTPUT",
    ]));
    let tampered = saves(&topo.pod, flavor);
    assert_ne!(tampered, fresh);

    init.run().code(1).says(
        "nat ISTIO_INBOUND has 5 rules where 5 are expected; rule 2 is '-p tcp -m tcp --dport 15091 -j RETURN' \
         instead of '-p tcp -m tcp --dport 15090 -j RETURN'",
    );
    assert_eq!(
        saves(&topo.pod, flavor),
        tampered,
        "a refused run changes nothing"
    );

    init.clone()
        .switch("--reconcile")
        .run()
        .ok()
        .says("IPv4 capture reconciled")
        // Only a jump was missing in IPv6: nothing contradicted the configuration, so it is
        // completed, as a plain run would.
        .says("IPv6 capture completed");
    assert_eq!(saves(&topo.pod, flavor), fresh);
}

/// `--cleanup-only` removes every rule in both families and `::6`, after which the app reaches the peer
/// directly; a second cleanup finds nothing to do and succeeds.
fn cleanup_removes_everything(flavor: Flavor) {
    if !require_root() {
        return;
    }
    let topo = Topology::new();
    let outbound = outbound_proxy(&topo, Family::V4);
    let app = peer_app(&topo, Family::V4, 80);
    let init = CaptureInit::sidecar(&topo.pod, flavor, Family::V6);
    init.run().ok();
    let dst = topo.peer_addr(Family::V4, 80);
    assert_lands(&topo.pod, APP, dst, &outbound);

    let cleanup = init.clone().switch("--cleanup-only");
    cleanup.run().ok().says("capture removed");
    assert_no_istio(&topo.pod, flavor);
    assert!(!has_ipv6_passthrough(&topo.pod));
    assert_lands(&topo.pod, APP, dst, &app);

    cleanup.via(Via::Enter).run().ok();
    assert_no_istio(&topo.pod, flavor);
}

// ── 7. Rollback ─────────────────────────────────────────────────────────────────────────────────

test_matrix!(flavor: failure_between_families_rolls_back);

/// IPv4 is applied for real, then `ip6tables-<flavor>-restore` (a script first in `PATH`) fails: the
/// run exits 1 saying it rolled back, and neither family nor `lo` keeps anything of the capture.
fn failure_between_families_rolls_back(flavor: Flavor) {
    if !require_root() {
        return;
    }
    let topo = Topology::new();
    let fake = TempDir::new("fake-ip6tables");
    fake.script(
        &format!("{}-restore", iptables(flavor, Family::V6)),
        "#!/bin/sh\necho 'ip6tables-restore: line 2 failed (injected)' >&2\nexit 1\n",
    );
    let before = saves(&topo.pod, flavor);

    let run = CaptureInit::sidecar(&topo.pod, flavor, Family::V6)
        .path_first(fake.path())
        .run();
    run.code(1)
        .says("line 2 failed (injected)")
        .says("changes to IPv4 were rolled back");
    assert_no_istio(&topo.pod, flavor);
    // Legacy keeps the nat table it instantiated, empty; no rule may remain.
    let after = saves(&topo.pod, flavor);
    assert_eq!(
        after.each_ref().map(|s| rules(s)),
        before.each_ref().map(|s| rules(s))
    );
    assert!(!has_ipv6_passthrough(&topo.pod));
}

// ── 8. Validation ───────────────────────────────────────────────────────────────────────────────

/// Gives the pod a default route via the peer for each family capture covers, so the outbound probe
/// (to a documentation address) has somewhere to go; it cannot leave the peer.
fn default_route_via_peer(topo: &Topology, family: Family) {
    let families: &[Family] = match family {
        Family::V4 => &[Family::V4],
        Family::V6 => &[Family::V4, Family::V6],
    };
    for &f in families {
        topo.pod.ip(&[
            ip_family(f),
            "route",
            "add",
            "default",
            "via",
            &topo.peer_ip(f).to_string(),
        ]);
    }
}

test_matrix!(backend, family: validation_passes_with_rules);

/// `--run-validation` after applying: both probes (hairpin and outbound) pass in every family.
fn validation_passes_with_rules(backend: Backend, family: Family) {
    if !require_root() {
        return;
    }
    let topo = Topology::new();
    default_route_via_peer(&topo, family);
    let run = CaptureInit::new(&topo.pod, backend, family)
        .switch("--run-validation")
        .run();
    run.ok().says("validation passed");
    assert!(!run.stderr.contains("not validated"), "{}", run.stderr);
}

mod validation_fails_without_rules {
    use capture_e2e::Family;

    #[test]
    fn v4() {
        super::validation_fails_without_rules(Family::V4);
    }

    #[test]
    fn dual_stack() {
        super::validation_fails_without_rules(Family::V6);
    }
}

/// `--skip-rule-apply --run-validation` with no rules in place exits 126.
fn validation_fails_without_rules(family: Family) {
    if !require_root() {
        return;
    }
    let topo = Topology::new();
    default_route_via_peer(&topo, family);
    CaptureInit::sidecar(&topo.pod, Flavor::Nft, family)
        .switch("--skip-rule-apply")
        .switch("--run-validation")
        .set("--probe-timeout", "500ms")
        .run()
        .code(126)
        .says("iptables validation failed");
    assert_no_istio(&topo.pod, Flavor::Nft);
}

// ── 9. Many pods at once ────────────────────────────────────────────────────────────────────────

/// The default sidecar's IPv4 rules as `iptables-save` shows them (both flavors), normalized.
fn sidecar_save_v4() -> String {
    normalize_save(include_str!("../../testdata/sidecar.v4.save"))
}

/// 20 pods set up at the same time, alternating flavors and the two ways of entering the namespace,
/// each end with exactly the default sidecar's rules in both families.
#[test]
fn twenty_pods_in_parallel() {
    if !require_root() {
        return;
    }
    let v4 = sidecar_save_v4();
    let v6 = v4
        .replace("127.0.0.6/32", "::6/128")
        .replace("127.0.0.1/32", "::1/128");
    let expected = [v4, v6];
    thread::scope(|scope| {
        let pods: Vec<_> = (0..20)
            .map(|i| {
                let expected = &expected;
                scope.spawn(move || {
                    let flavor = if i % 2 == 0 { Flavor::Legacy } else { Flavor::Nft };
                    let via = if i % 4 < 2 { Via::Flag } else { Via::Enter };
                    let topo = Topology::new();
                    CaptureInit::sidecar(&topo.pod, flavor, Family::V6)
                        .via(via)
                        .run()
                        .ok();
                    // A fresh namespace has no other table, so this is the whole save.
                    assert_eq!(
                        &saves(&topo.pod, flavor),
                        expected,
                        "pod {i} ({flavor:?}, {via:?})"
                    );
                })
            })
            .collect();
        for (i, pod) in pods.into_iter().enumerate() {
            if let Err(panic) = pod.join() {
                eprintln!("pod {i} failed");
                std::panic::resume_unwind(panic);
            }
        }
    });
}

// ── 10. The eBPF backend's own life cycle ────────────────────────────────────────────────────────

/// `capture-init ebpf pods --bpffs <the row's bpffs>`.
#[cfg(feature = "ebpf")]
fn ebpf_pods() -> Run {
    let world = ebpf::child_world().expect("inside ebpf_row");
    ebpf_node(&["pods", "--bpffs", &world.bpffs.display().to_string()])
}

/// The first run loads the programs and enrolls the pod; the same command again (either way of
/// entering the pod) changes nothing and says so: same generation, same entries.
#[cfg(feature = "ebpf")]
#[test]
fn ebpf_second_run_changes_nothing() {
    ebpf_row(|| {
        let topo = Topology::new();
        let init = CaptureInit::new(&topo.pod, Backend::Ebpf, Family::V6);
        init.run()
            .ok()
            .says("eBPF programs loaded, attached to")
            .says("eBPF capture applied");
        let fresh = ebpf_pods().ok().stdout.clone();
        assert!(fresh.contains("generation 1\n"), "{fresh}");
        assert!(
            fresh.contains("CIDRS local ::6/128"),
            "::6 is the pod's own: {fresh}"
        );
        for via in [Via::Flag, Via::Enter] {
            init.clone()
                .via(via)
                .run()
                .ok()
                .says("eBPF capture already in place, nothing changed")
                .never_says("loaded");
            assert_eq!(ebpf_pods().ok().stdout, fresh);
        }
    });
}

/// Other flags replace the pod's configuration in one switch while the app keeps connecting:
/// every connection lands on the proxy or, once `-o 80` is in force, on the peer; none fails.
#[cfg(feature = "ebpf")]
#[test]
fn ebpf_flag_change_switches_traffic_atomically() {
    use std::sync::atomic::{AtomicBool, AtomicUsize};

    ebpf_row(|| {
        let topo = Topology::new();
        let outbound = outbound_proxy(&topo, Family::V4);
        let app = peer_app(&topo, Family::V4, 80);
        let init = CaptureInit::new(&topo.pod, Backend::Ebpf, Family::V4);
        init.run().ok().says("eBPF capture applied");
        let dst = topo.peer_addr(Family::V4, 80);
        assert_lands(&topo.pod, APP, dst, &outbound);

        let (stop, made) = (AtomicBool::new(false), AtomicUsize::new(0));
        thread::scope(|scope| {
            let traffic = scope.spawn(|| {
                while !stop.load(Ordering::SeqCst) {
                    let (reply, _) = connect_as(&topo.pod, APP_UID, APP_UID, dst)
                        .unwrap_or_else(|e| panic!("a connection during the update failed: {e}"));
                    assert!(
                        reply == outbound.token() || reply == app.token(),
                        "reached {reply:?}"
                    );
                    made.fetch_add(1, Ordering::SeqCst);
                }
            });
            // Stops the traffic however this thread leaves the scope, so a failure cannot hang it.
            let _stop = StopOnDrop(&stop);
            // Waits until `count` connections are made, or the traffic thread ended (failed).
            let wait_for = |count: usize| {
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
                while made.load(Ordering::SeqCst) < count
                    && !traffic.is_finished()
                    && std::time::Instant::now() < deadline
                {
                    thread::sleep(std::time::Duration::from_millis(5));
                }
            };
            wait_for(5);
            init.clone()
                .set("-o", "80")
                .run()
                .ok()
                .says("eBPF capture updated");
            wait_for(made.load(Ordering::SeqCst) + 5);
            stop.store(true, Ordering::SeqCst);
            traffic.join().expect("the traffic thread");
        });
        let captured = outbound.take_accepted();
        assert!(
            captured.len() >= 5,
            "captured before the update: {}",
            captured.len()
        );
        assert!(
            captured
                .iter()
                .all(|a| a.original_dst.as_ref().is_ok_and(|d| *d == dst))
        );
        assert!(app.take_accepted().len() >= 5, "direct after the update");
        assert_lands(&topo.pod, APP, dst, &app);
        let pods = ebpf_pods().ok().stdout.clone();
        assert!(pods.contains("generation 2\n"), "{pods}");
        assert!(pods.contains("PORTS out-exclude 80/16"), "{pods}");
    });
}

/// Sets the flag when dropped.
#[cfg(feature = "ebpf")]
struct StopOnDrop<'a>(&'a std::sync::atomic::AtomicBool);

#[cfg(feature = "ebpf")]
impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// `--cleanup-only` unenrolls the pod (its connections go direct again) and takes `::6` off `lo`;
/// a second cleanup finds nothing to do.
#[cfg(feature = "ebpf")]
#[test]
fn ebpf_cleanup_only_unenrolls() {
    ebpf_row(|| {
        let topo = Topology::new();
        let outbound = outbound_proxy(&topo, Family::V6);
        let app = peer_app(&topo, Family::V6, 80);
        let init = CaptureInit::new(&topo.pod, Backend::Ebpf, Family::V6);
        init.run().ok();
        assert!(has_ipv6_passthrough(&topo.pod));
        let dst = topo.peer_addr(Family::V6, 80);
        assert_lands(&topo.pod, APP, dst, &outbound);

        let cleanup = init.switch("--cleanup-only");
        cleanup.run().ok().says("eBPF capture removed");
        assert_lands(&topo.pod, APP, dst, &app);
        assert!(!has_ipv6_passthrough(&topo.pod));
        assert_eq!(ebpf_pods().ok().stdout, "", "no pod enrolled");
        cleanup
            .via(Via::Enter)
            .run()
            .ok()
            .says("not enrolled")
            .says("nothing to remove");
    });
}

/// `capture-init ebpf load` attaches the six programs (a second load changes nothing);
/// `ebpf unload` with a pod enrolled detaches everything, unpins everything and says the pod is
/// no longer captured, which it is not.
#[cfg(feature = "ebpf")]
#[test]
fn ebpf_load_and_unload() {
    ebpf_row(|| {
        let world = ebpf::child_world().expect("inside ebpf_row");
        let (cgroup, bpffs) = (
            world.cgroup.display().to_string(),
            world.bpffs.display().to_string(),
        );
        ebpf_node(&["load", "--cgroup", &cgroup, "--bpffs", &bpffs])
            .ok()
            .says("eBPF programs loaded, attached to");
        assert_eq!(ebpf::attached_to(&world.cgroup).len(), 6);
        ebpf_node(&["load", "--cgroup", &cgroup, "--bpffs", &bpffs])
            .ok()
            .says("already loaded")
            .says("nothing changed");

        let topo = Topology::new();
        let outbound = outbound_proxy(&topo, Family::V4);
        let app = peer_app(&topo, Family::V4, 80);
        CaptureInit::new(&topo.pod, Backend::Ebpf, Family::V4)
            .run()
            .ok()
            .says("eBPF capture applied")
            .never_says("loaded");
        let dst = topo.peer_addr(Family::V4, 80);
        assert_lands(&topo.pod, APP, dst, &outbound);

        ebpf_node(&["unload", "--bpffs", &bpffs])
            .ok()
            .says("detached and unpinned")
            .says("1 enrolled pod(s) are no longer captured");
        let attached = ebpf::attached_to(&world.cgroup);
        assert!(attached.is_empty(), "{attached:#?}");
        let pins = ebpf::pinned_in(&world.bpffs);
        assert!(pins.is_empty(), "{pins:#?}");
        assert_lands(&topo.pod, APP, dst, &app);
        ebpf_node(&["pods", "--bpffs", &bpffs])
            .code(1)
            .says("not installed");
        ebpf_node(&["unload", "--bpffs", &bpffs])
            .ok()
            .says("nothing to do");
    });
}

/// Programs already pinned but attached to a cgroup that does not hold the one given are refused,
/// never used: the pod's processes would not be captured. Here they are attached to D, a child
/// of the test cgroup C, while this process, the app and its clients are in C. Enrolling with
/// `--cgroup C` (or the default, the cgroup v2 root) and `ebpf load --cgroup C` exit 1 naming
/// both cgroups and the fix, and enroll nothing; once loaded at C, the same run captures, and a
/// run for D (below C) uses them.
#[cfg(feature = "ebpf")]
#[test]
fn ebpf_programs_attached_elsewhere_are_refused() {
    ebpf_row(|| {
        let world = ebpf::child_world().expect("inside ebpf_row");
        let sub = ebpf::TestCgroup::under(&world.cgroup);
        let (c, d, bpffs) = (
            world.cgroup.display().to_string(),
            sub.path().display().to_string(),
            world.bpffs.display().to_string(),
        );
        ebpf_node(&["load", "--cgroup", &d, "--bpffs", &bpffs])
            .ok()
            .says(&format!("eBPF programs loaded, attached to {d}"));
        assert_eq!(ebpf::attached_to(sub.path()).len(), 6);
        // The kernel's id of the links' cgroup is D's inode number.
        let d_id = std::os::unix::fs::MetadataExt::ino(&fs::metadata(sub.path()).unwrap());
        let links = world.pin_dir.join("links");
        for link in fs::read_dir(&links).unwrap() {
            let info = run_ok(
                Command::new("bpftool")
                    .args(["link", "show", "pinned"])
                    .arg(link.unwrap().path()),
            );
            assert!(info.contains(&format!("cgroup_id {d_id} ")), "{info}");
        }

        let topo = Topology::new();
        let outbound = outbound_proxy(&topo, Family::V6);
        let app = peer_app(&topo, Family::V6, 80);
        let dst = topo.peer_addr(Family::V6, 80);
        let init = CaptureInit::new(&topo.pod, Backend::Ebpf, Family::V6);
        let refused = |run: &Run, target: &str| {
            run.code(1)
                .never_says("applied")
                .says(&format!(
                    "eBPF programs under {} are attached to cgroup {d} (id {d_id}), and {target} is neither that cgroup nor below it",
                    world.pin_dir.display()
                ))
                .says(&format!(
                    "unload them first (capture-init ebpf unload --bpffs {bpffs}) or pass --cgroup {d}"
                ));
            assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
        };
        let run = init.run();
        // Whatever the run says, the app's connection (made in C, not under D) is not captured…
        assert_lands(&topo.pod, APP, dst, &app);
        // …so the run must fail rather than report capture applied.
        refused(&run, &format!("--cgroup {c}"));
        assert_eq!(ebpf_pods().ok().stdout, "", "nothing enrolled");
        assert_eq!(ebpf::sk_lookup_programs(&topo.pod), 0, "no inbound link");

        // The default --cgroup, the cgroup v2 root, is checked the same way (the programs are
        // pinned, so this run cannot attach anything to the host's root).
        assert!(links.is_dir());
        let root = capture_ebpf::cgroup2_root().expect("a cgroup2 mount");
        refused(
            &init.clone().unset("--cgroup").run(),
            &format!("the cgroup v2 root {} (--cgroup's default)", root.display()),
        );
        refused(
            &ebpf_node(&["load", "--cgroup", &c, "--bpffs", &bpffs]),
            &format!("--cgroup {c}"),
        );
        ebpf_node(&["load", "--cgroup", &d, "--bpffs", &bpffs])
            .ok()
            .says(&format!(
                "already loaded under {}, attached to cgroup {d}",
                world.pin_dir.display()
            ))
            .says("nothing changed");
        assert_eq!(ebpf_pods().ok().stdout, "", "nothing enrolled");

        ebpf_node(&["unload", "--bpffs", &bpffs]).ok();
        assert!(ebpf::attached_to(sub.path()).is_empty());
        init.run()
            .ok()
            .says(&format!("eBPF programs loaded, attached to {c}"))
            .says("eBPF capture applied");
        assert_lands(&topo.pod, APP, dst, &outbound);
        // Programs attached above the cgroup given act on it too.
        init.clone()
            .set("--cgroup", &d)
            .run()
            .ok()
            .says("eBPF capture already in place, nothing changed");
    });
}

/// Flags the eBPF backend cannot honour yet fail with one line naming them, before anything is
/// loaded: nothing attached, nothing pinned.
#[cfg(feature = "ebpf")]
#[test]
fn ebpf_refuses_flags_it_cannot_honour() {
    if ebpf::in_cgroup_child().is_some() || !require_root() {
        return;
    }
    let world = EbpfWorld::empty();
    let pod = NetNs::new();
    type Edit = fn(CaptureInit<'_>) -> CaptureInit<'_>;
    let cases: [(Edit, &str); 4] = [
        (
            |i| i.switch("--redirect-dns").switch("--capture-all-dns"),
            "DNS capture",
        ),
        (|i| i.set("-c", "eth1"), "excluded interfaces (-c)"),
        (|i| i.set("-k", "eth1"), "rerouted interfaces (-k)"),
        (|i| i.switch("--drop-invalid"), "INVALID_DROP"),
    ];
    for (edit, feature) in cases {
        let init = CaptureInit::sidecar(&pod, Flavor::Nft, Family::V4)
            .ebpf_at(world.cgroup.path(), world.bpffs.path())
            .set("--ipv6", "off");
        let run = edit(init).run();
        run.code(1)
            .says(feature)
            .says("not supported by the eBPF backend yet; use the iptables backend");
        assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    }
    assert!(world.attached().is_empty());
    assert!(world.bpffs.contents().is_empty());
}

/// Six pods set up at once on a node where nothing is loaded yet: exactly one run loads the
/// programs (the others wait for its lock), every pod is captured, all six are listed.
#[cfg(feature = "ebpf")]
#[test]
fn ebpf_pods_in_parallel() {
    ebpf_row(|| {
        let runs: Vec<(Topology, Run)> = thread::scope(|scope| {
            let pods: Vec<_> = (0..6)
                .map(|i| {
                    scope.spawn(move || {
                        let topo = Topology::new();
                        let via = if i % 2 == 0 { Via::Flag } else { Via::Enter };
                        let run = CaptureInit::new(&topo.pod, Backend::Ebpf, Family::V4)
                            .via(via)
                            .run();
                        (topo, run)
                    })
                })
                .collect();
            pods.into_iter()
                .map(|p| p.join().expect("a pod's setup"))
                .collect()
        });
        let loads = runs
            .iter()
            .filter(|(_, run)| run.ok().stderr.contains("eBPF programs loaded"))
            .count();
        assert_eq!(loads, 1, "exactly one run loads the programs");
        for (topo, run) in &runs {
            run.says("eBPF capture applied");
            let outbound = outbound_proxy(topo, Family::V4);
            assert_lands(&topo.pod, APP, topo.peer_addr(Family::V4, 80), &outbound);
        }
        let pods = ebpf_pods().ok().stdout.clone();
        assert_eq!(pods.matches("netns-cookie ").count(), 6, "{pods}");
    });
}

// ── 9. Never failing open (issue 8) ─────────────────────────────────────────────────────────────

test_matrix!(flavor:
    concurrent_runs_never_undo_each_other,
    killed_mid_apply_heals_on_rerun,
    killed_between_tables_heals_on_rerun,
    cleanup_with_other_flags_removes_everything,
    failed_cleanup_puts_everything_back,
    rules_ahead_of_capture_are_reported,
);

/// A rerun of `init` finds both families' rules exactly in place.
#[track_caller]
fn rerun_changes_nothing(init: &CaptureInit) {
    init.run()
        .ok()
        .says("IPv4 capture already in place, nothing changed")
        .says("IPv6 capture already in place, nothing changed");
}

fn other_flavor(flavor: Flavor) -> Flavor {
    match flavor {
        Flavor::Legacy => Flavor::Nft,
        Flavor::Nft => Flavor::Legacy,
    }
}

/// Both families' `-A` lines.
fn all_rules(pod: &NetNs, flavor: Flavor) -> Vec<String> {
    saves(pod, flavor)
        .iter()
        .flat_map(|s| rules(s).into_iter().map(str::to_owned).collect::<Vec<_>>())
        .collect()
}

/// Two runs started together, with the same flags or with another `-p`, are serialised: the
/// capture in place afterwards is exactly the one of a run that succeeded, never nothing.
fn concurrent_runs_never_undo_each_other(flavor: Flavor) {
    if !require_root() {
        return;
    }
    let topo = Topology::new();
    let first = CaptureInit::sidecar(&topo.pod, flavor, Family::V6);
    for round in 0..8 {
        let second = if round % 2 == 0 {
            first.clone()
        } else {
            first.clone().set("-p", "15002")
        };
        let mut a = first.command();
        let mut b = second.command();
        let (ra, rb) = thread::scope(|s| {
            let ra = s.spawn(|| {
                let out = a.output();
                finished(&a, out)
            });
            let rb = s.spawn(|| {
                let out = b.output();
                finished(&b, out)
            });
            (ra.join().unwrap(), rb.join().unwrap())
        });
        let winners: Vec<(&CaptureInit, &Run)> = [(&first, &ra), (&second, &rb)]
            .into_iter()
            .filter(|(_, r)| r.status.success())
            .collect();
        assert!(
            !winners.is_empty(),
            "round {round}: both failed:\n{}\n{}",
            ra.stderr,
            rb.stderr
        );
        for (init, _) in &winners {
            rerun_changes_nothing(init);
        }
        if winners.len() == 1 {
            let loser = if ra.status.success() { &rb } else { &ra };
            loser.code(1).says("differ from this configuration");
        }
        first.clone().switch("--cleanup-only").run().ok();
        assert_no_istio(&topo.pod, flavor);
    }
}

/// `capture-init` and its restore child killed (as a container is) at several points of a large
/// TPROXY apply: a plain rerun always completes the capture, and the one after it changes
/// nothing.
fn killed_mid_apply_heals_on_rerun(flavor: Flavor) {
    if !require_root() {
        return;
    }
    let topo = Topology::new();
    let cidrs: Vec<String> = (0..8000)
        .map(|i| format!("10.{}.{}.0/24", 64 + i / 256, i % 256))
        .collect();
    let init = CaptureInit::sidecar(&topo.pod, flavor, Family::V6)
        .set("-m", "TPROXY")
        .set("-x", &cidrs.join(","));
    let mut interrupted = 0;
    for delay_ms in [5, 15, 30, 50, 80, 120, 200] {
        let mut cmd = init.command();
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        cmd.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let mut child = cmd.spawn().expect("start capture-init");
        thread::sleep(std::time::Duration::from_millis(delay_ms));
        let group = nix::unistd::Pid::from_raw(-i32::try_from(child.id()).unwrap());
        let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
        let status = child.wait().expect("reap capture-init");
        interrupted += usize::from(!status.success());
        let rerun = init.run();
        rerun.ok();
        rerun_changes_nothing(&init);
        init.clone().switch("--cleanup-only").run().ok();
        assert_no_istio(&topo.pod, flavor);
    }
    assert!(
        interrupted > 0,
        "no run was killed before it finished: the apply is too fast to test"
    );
}

/// The same, deterministically: the IPv4 restore commits its first table (mangle) and then it and
/// capture-init are killed, leaving mangle's TPROXY rules without the nat ones. A plain rerun
/// completes exactly this configuration.
fn killed_between_tables_heals_on_rerun(flavor: Flavor) {
    if !require_root() {
        return;
    }
    let topo = Topology::new();
    let init = CaptureInit::sidecar(&topo.pod, flavor, Family::V6).set("-m", "TPROXY");
    let fake = TempDir::new("fake-iptables");
    let program = format!("{}-restore", iptables(flavor, Family::V4));
    fake.script(
        &program,
        &format!(
            "#!/bin/sh\n# Commits the first table of its input only, then dies with its parent.\n\
             awk '/^\\*/ {{ n++ }} n <= 1' | /usr/sbin/{program} \"$@\"\nkill -9 $PPID\nkill -9 $$\n"
        ),
    );
    let killed = init.clone().path_first(fake.path()).run();
    assert!(
        killed.status.code().is_none(),
        "capture-init was killed: {killed:?}"
    );
    let [v4, _] = saves(&topo.pod, flavor);
    assert!(
        v4.contains(":ISTIO_TPROXY") && !v4.contains(":ISTIO_OUTPUT"),
        "mangle only:\n{v4}"
    );
    init.run()
        .ok()
        .says("IPv4 capture completed")
        .says("IPv6 capture applied");
    rerun_changes_nothing(&init);
}

/// Cleanup given the default flags after `-m TPROXY -c eth0 -k veth9` removes every rule, the
/// TPROXY policy routing of both families and `::6`; chains in the other flavour go too.
fn cleanup_with_other_flags_removes_everything(flavor: Flavor) {
    if !require_root() {
        return;
    }
    let topo = Topology::new();
    let before = all_rules(&topo.pod, flavor);
    let rules_of = |family: &str| run_ok(topo.pod.command("ip").args([family, "rule", "show"]));
    let ip_rules = [rules_of("-4"), rules_of("-6")];
    CaptureInit::sidecar(&topo.pod, flavor, Family::V6)
        .set("-m", "TPROXY")
        .set("-c", "eth0")
        .set("-k", "veth9")
        .run()
        .ok();
    assert!(rules_of("-4").contains("fwmark 0x539 lookup 133"));
    // A stale chain of ours in the other flavour, as a flavour switch leaves behind.
    let other = other_flavor(flavor);
    run_ok(
        topo.pod
            .command(iptables(other, Family::V4))
            .args(["-t", "nat", "-N", "ISTIO_OUTPUT"]),
    );

    CaptureInit::sidecar(&topo.pod, flavor, Family::V6)
        .switch("--cleanup-only")
        .run()
        .ok()
        .says("capture removed");
    assert_eq!(all_rules(&topo.pod, flavor), before, "rules left behind");
    assert_no_istio(&topo.pod, flavor);
    assert_no_istio(&topo.pod, other);
    assert_eq!([rules_of("-4"), rules_of("-6")], ip_rules, "ip rules left behind");
    for family in ["-4", "-6"] {
        let routes = run_ok(
            topo.pod
                .command("ip")
                .args([family, "route", "show", "table", "all"]),
        );
        assert!(
            !routes.contains("table 133"),
            "{family} routes left behind:\n{routes}"
        );
    }
    assert!(!has_ipv6_passthrough(&topo.pod));
}

/// `ip6tables-<flavor>-restore` failing during `--cleanup-only` puts the IPv4 rules back: the run
/// exits 1 saying so, and the pod is exactly as captured as before.
fn failed_cleanup_puts_everything_back(flavor: Flavor) {
    if !require_root() {
        return;
    }
    let topo = Topology::new();
    let init = CaptureInit::sidecar(&topo.pod, flavor, Family::V6);
    init.run().ok();
    let fresh = saves(&topo.pod, flavor);
    let fake = TempDir::new("fake-ip6tables");
    fake.script(
        &format!("{}-restore", iptables(flavor, Family::V6)),
        "#!/bin/sh\necho 'ip6tables-restore: line 2 failed (injected)' >&2\nexit 1\n",
    );
    init.clone()
        .switch("--cleanup-only")
        .path_first(fake.path())
        .run()
        .code(1)
        .says("line 2 failed (injected)")
        .says("nothing was removed (the removal from IPv4 was put back)");
    assert_eq!(
        saves(&topo.pod, flavor).each_ref().map(|s| rules(s)),
        fresh.each_ref().map(|s| rules(s))
    );
    rerun_changes_nothing(&init);
}

/// A foreign `RETURN` ahead of capture's jump switches capture off for what it matches: a rerun
/// warns naming the rule (and with `--strict` fails), and so does a chain of ours in the other
/// flavour.
fn rules_ahead_of_capture_are_reported(flavor: Flavor) {
    if !require_root() {
        return;
    }
    let topo = Topology::new();
    let init = CaptureInit::sidecar(&topo.pod, flavor, Family::V4);
    init.run().ok();
    run_ok(
        topo.pod
            .command(iptables(flavor, Family::V4))
            .args(["-t", "nat", "-I", "OUTPUT", "-j", "RETURN"]),
    );
    init.run()
        .ok()
        .says("warning: IPv4: nat OUTPUT rule 1 '-j RETURN' comes before capture's rules and can end the packet's traversal");
    init.clone()
        .switch("--strict")
        .run()
        .code(1)
        .says("capture would not see all traffic: IPv4: nat OUTPUT rule 1 '-j RETURN'");
    run_ok(
        topo.pod
            .command(iptables(flavor, Family::V4))
            .args(["-t", "nat", "-D", "OUTPUT", "1"]),
    );
    init.run()
        .ok()
        .says("IPv4 capture already in place, nothing changed");

    let other = other_flavor(flavor);
    run_ok(
        topo.pod
            .command(iptables(other, Family::V4))
            .args(["-t", "nat", "-N", "ISTIO_OUTPUT"]),
    );
    init.run().ok().says(&format!(
        "warning: capture chain IPv4 nat ISTIO_OUTPUT also exists in iptables-{}",
        flavor_name(other)
    ));
    run_ok(
        topo.pod
            .command(iptables(other, Family::V4))
            .args(["-t", "nat", "-X", "ISTIO_OUTPUT"]),
    );
}

/// The namespace lock is the namespace's own nsfs inode: whoever holds it through any path to
/// the namespace (here the test, through `/run/netns/<pod>`, as capture-cni opens `CNI_NETNS`)
/// makes capture-init wait, and capture-init goes on once it is released.
#[test]
fn capture_init_waits_for_the_namespace_lock() {
    if !require_root() {
        return;
    }
    let topo = Topology::new();
    let init = CaptureInit::sidecar(&topo.pod, Flavor::Nft, Family::V4);
    let held =
        capture_core::NetnsLock::path(topo.pod.path(), std::time::Duration::ZERO).expect("lock the pod");
    let mut cmd = init.command();
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().expect("start capture-init");
    thread::sleep(std::time::Duration::from_millis(500));
    assert!(
        !iptables_save_normalized(&topo.pod, Flavor::Nft, Family::V4).contains("ISTIO"),
        "capture-init applied while another run held the namespace"
    );
    drop(held);
    let run = finished(&cmd, child.wait_with_output());
    run.ok().says("IPv4 capture applied");
}

/// With `--cni-mode`, legacy iptables uses a lock file private to the pod; `--cleanup-only`
/// removes it with the capture, so apply/cleanup cycles leave nothing behind.
#[test]
fn cni_mode_cleanup_removes_its_lock_file() {
    if !require_root() {
        return;
    }
    use std::os::unix::fs::MetadataExt as _;
    let topo = Topology::new();
    let ns = fs::metadata(topo.pod.path()).expect("stat the pod's namespace");
    // The runs' environment has no TMPDIR: the lock file goes to /tmp.
    let lock = Path::new("/tmp").join(format!("capture-xtables-{}-{}.lock", ns.dev(), ns.ino()));
    let init = CaptureInit::sidecar(&topo.pod, Flavor::Legacy, Family::V4).switch("--cni-mode");
    init.run().ok();
    assert!(lock.exists(), "{} is the pod's lock file", lock.display());
    init.clone().switch("--cleanup-only").run().ok();
    assert!(!lock.exists(), "{} left behind", lock.display());
}
