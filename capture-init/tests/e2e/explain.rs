//! 14. `capture-init explain` predicts what the traffic tests observe (issue 13).
//!
//! Every [`assert_lands`](crate::support::assert_lands) of the table also asks `capture-init
//! explain` where the connection it just made lands, with the flags of the last successful run
//! for that pod ([`installed`]): pure (from the flags alone, in the pod's namespace, as a dry run
//! reads it) and `--from-kernel` (from what is installed, through `--network-namespace`). Both
//! must say what the listener saw: captured to the listener's port with the connection's
//! destination as original destination, or left alone when the listener is the destination
//! itself. After `--cleanup-only` only the `--from-kernel` answer is checked (nothing is
//! installed: it must say so).
//!
//! The tests below check what the table does not reach: drift, and explain's own answer when a
//! rule decides by the source (passthrough) or the gid alone.

use std::net::{IpAddr, SocketAddr};
use std::process::Command;

use capture_e2e::{Family, Listener, NetNs, Topology, require_root, test_matrix};

use crate::capture_init::{
    Backend, CAPTURE_INIT, CaptureInit, Installed, installed, installed_holding, run_clean,
};
#[cfg(feature = "ebpf")]
use crate::support::ebpf_row;
use crate::support::{APP, Identity, assert_lands, iptables, outbound_proxy, peer_app};

/// Where a connection was seen to land.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Landed {
    /// At its destination, untouched.
    Direct,
    /// Redirected to this port of the pod.
    Redirected(u16),
}

/// What the listener `on` says about a connection to `dst` it accepted.
pub(crate) fn landed(dst: SocketAddr, on: &Listener) -> Landed {
    let local = on.local_addr();
    let unmapped = |a: IpAddr| a.to_canonical();
    if local.port() == dst.port()
        && (unmapped(local.ip()) == unmapped(dst.ip()) || local.ip().is_unspecified())
    {
        Landed::Direct
    } else {
        Landed::Redirected(local.port())
    }
}

/// One field of explain's JSON object (a string without its quotes, a number, or `null`).
fn field<'a>(json: &'a str, key: &str) -> Option<&'a str> {
    let at = json.find(&format!("\"{key}\":"))? + key.len() + 3;
    let rest = &json[at..];
    if let Some(s) = rest.strip_prefix('"') {
        return s.find('"').map(|end| &s[..end]);
    }
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    Some(&rest[..end])
}

/// The connection's flags for `explain`.
fn connection_flags(
    outbound: bool,
    who: Identity,
    src: Option<IpAddr>,
    dst: SocketAddr,
    lo: bool,
) -> Vec<String> {
    let mut flags = vec![
        "--direction".to_owned(),
        if outbound { "outbound" } else { "inbound" }.to_owned(),
        "--dst".to_owned(),
        dst.to_string(),
        "--uid".to_owned(),
        who.0.to_string(),
        "--gid".to_owned(),
        who.1.to_string(),
        "--output".to_owned(),
        "json".to_owned(),
    ];
    if let Some(src) = src {
        flags.extend(["--src".to_owned(), src.to_string()]);
    }
    if lo {
        flags.extend(["--interface".to_owned(), "lo".to_owned()]);
    }
    flags
}

fn run_flags(installed: &Installed) -> Vec<String> {
    let mut flags = Vec::new();
    for (flag, value) in &installed.args {
        flags.push(flag.clone());
        flags.extend(value.clone());
    }
    flags
}

/// Runs `capture-init explain` and returns its one JSON line.
#[track_caller]
fn explain_json(mut cmd: Command) -> String {
    let run = run_clean_keep(&mut cmd);
    run.ok();
    let line = run.stdout.trim().to_owned();
    assert!(
        line.starts_with('{') && line.ends_with('}') && !line.contains('\n'),
        "{}: not one JSON object:\n{}",
        run.command,
        run.stdout
    );
    line
}

fn run_clean_keep(cmd: &mut Command) -> crate::capture_init::Run {
    let taken = std::mem::replace(cmd, Command::new("true"));
    run_clean(taken, None)
}

/// Asserts that `explain`'s `json` says the connection lands as `seen`.
#[track_caller]
fn assert_predicts(json: &str, dst: SocketAddr, seen: Landed, what: &str) {
    let verdict = field(json, "verdict").unwrap_or_default();
    let said = match verdict {
        "bypassed" => Landed::Direct,
        "captured" | "dns" => Landed::Redirected(
            field(json, "port")
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("{what}: no port in {json}")),
        ),
        other => panic!("{what}: verdict {other:?} in {json}"),
    };
    assert_eq!(
        said, seen,
        "{what} predicts {said:?}, the traffic went {seen:?}:\n{json}"
    );
    if let Landed::Redirected(_) = seen {
        let original: SocketAddr = field(json, "original_dst")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("{what}: no original_dst in {json}"));
        let canonical = SocketAddr::new(dst.ip().to_canonical(), dst.port());
        assert_eq!(original, canonical, "{what}: original destination:\n{json}");
    }
}

/// Asks `explain` (pure and `--from-kernel`) where `who`'s connection from `ns` to `dst` lands and
/// asserts it says `seen`; does nothing when no run of capture-init is recorded for the pod.
#[track_caller]
pub(crate) fn assert_explained(
    ns: &NetNs,
    who: Identity,
    src: Option<IpAddr>,
    dst: SocketAddr,
    seen: Landed,
) {
    assert_explained_proto(ns, who, "tcp", src, dst, seen);
}

/// [`assert_explained`] for a UDP datagram (`--protocol udp`).
#[track_caller]
pub(crate) fn assert_explained_udp(ns: &NetNs, who: Identity, dst: SocketAddr, seen: Landed) {
    assert_explained_proto(ns, who, "udp", None, dst, seen);
}

#[track_caller]
fn assert_explained_proto(
    ns: &NetNs,
    who: Identity,
    protocol: &str,
    src: Option<IpAddr>,
    dst: SocketAddr,
    seen: Landed,
) {
    let dst_ip = dst.ip().to_canonical();
    let (pod, installed, outbound) = match installed(ns.name()) {
        Some(i) => (ns.name().to_owned(), i, true),
        None => match installed_holding(dst_ip) {
            Some((pod, i)) => (pod, i, false),
            None => return,
        },
    };
    let lo = outbound && (dst_ip.is_loopback() || installed.addrs.contains(&dst_ip));
    let mut conn = connection_flags(outbound, who, src, dst, lo);
    conn.extend(["--protocol".to_owned(), protocol.to_owned()]);
    let what = format!(
        "explain {} {protocol} {}:{} → {dst} in {pod}",
        if outbound { "outbound" } else { "inbound" },
        who.0,
        who.1
    );
    let netns_path = std::path::Path::new("/run/netns").join(&pod);
    if installed.present {
        // Pure: in the pod's namespace only so that `--ipv6 auto` decides as the run did.
        let mut pure = Command::new("ip");
        pure.args(["netns", "exec", &pod, CAPTURE_INIT, "explain"])
            .args(run_flags(&installed))
            .args(&conn);
        assert_predicts(&explain_json(pure), dst, seen, &format!("{what} (pure)"));
    }
    let mut kernel = Command::new(CAPTURE_INIT);
    kernel
        .arg("explain")
        .args(run_flags(&installed))
        .arg("--network-namespace")
        .arg(&netns_path)
        .arg("--from-kernel")
        .args(&conn);
    let run = run_clean_keep(&mut kernel);
    if run.status.code() == Some(1) && run.stderr.contains(" have map layout v") {
        // eBPF pins of an older map layout (the upgrade tests make one): this capture-init
        // refuses to read them, as it refuses to enroll into them, naming the upgrade.
        assert!(run.stderr.contains("capture-init ebpf upgrade"), "{}", run.stderr);
        return;
    }
    run.ok();
    let json = run.stdout.trim().to_owned();
    assert_predicts(&json, dst, seen, &format!("{what} (--from-kernel)"));
    if installed.present {
        assert_eq!(
            field(&json, "drift"),
            Some("[]"),
            "{what}: installed as the flags say, yet drift:\n{json}"
        );
    }
}

test_matrix!(
    backend,
    family: explain_names_the_proxy_gid,
);

/// The proxy's gid alone (`-g 1337`, another uid) is named as the reason, on every backend.
fn explain_names_the_proxy_gid(backend: Backend, family: Family) {
    if !require_root() {
        return;
    }
    let topo = Topology::new();
    let _outbound = outbound_proxy(&topo, family);
    let app = peer_app(&topo, family, 80);
    CaptureInit::new(&topo.pod, backend, family).run().ok();
    let dst = topo.peer_addr(family, 80);
    assert_lands(&topo.pod, (1000, 1337), dst, &app);
    let installed = installed(topo.pod.name()).expect("the run is recorded");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", topo.pod.name(), CAPTURE_INIT, "explain"])
        .args(run_flags(&installed))
        .args(connection_flags(true, (1000, 1337), None, dst, false));
    let json = explain_json(cmd);
    assert_eq!(field(&json, "reason"), Some("proxy-gid"), "{json}");
}

/// A rule changed behind capture's back: `--from-kernel` reports the drift and explains against
/// what is installed (the app's connection is no longer captured), pure explains the flags.
#[test]
fn from_kernel_reports_drift_and_explains_what_is_installed() {
    if !require_root() {
        return;
    }
    let flavor = capture_e2e::Flavor::Nft;
    let topo = Topology::new();
    let _outbound = outbound_proxy(&topo, Family::V4);
    let app = peer_app(&topo, Family::V4, 80);
    let init = CaptureInit::new(&topo.pod, Backend::Iptables(flavor), Family::V4).set("--ipv6", "off");
    init.run().ok();
    // Someone lets every connection of uid 1000 pass, ahead of capture's redirect.
    capture_e2e::run_ok(topo.pod.command(iptables(flavor, Family::V4)).args([
        "-t",
        "nat",
        "-I",
        "ISTIO_OUTPUT",
        "1",
        "-m",
        "owner",
        "--uid-owner",
        "1000",
        "-j",
        "RETURN",
    ]));
    let dst = topo.peer_addr(Family::V4, 80);
    let (reply, _) = capture_e2e::connect_as(&topo.pod, APP.0, APP.1, dst).expect("connect");
    assert_eq!(reply, app.token());
    let _ = app.take_one();

    let installed = installed(topo.pod.name()).expect("the run is recorded");
    let mut kernel = Command::new(CAPTURE_INIT);
    kernel
        .arg("explain")
        .args(run_flags(&installed))
        .arg("--network-namespace")
        .arg(topo.pod.path())
        .arg("--from-kernel")
        .args(connection_flags(true, APP, None, dst, false));
    let json = explain_json(kernel);
    assert_eq!(field(&json, "verdict"), Some("bypassed"), "{json}");
    assert_eq!(
        field(&json, "rule"),
        Some("-A ISTIO_OUTPUT -m owner --uid-owner 1000 -j RETURN"),
        "{json}"
    );
    assert!(json.contains("\"drift\":[\"IPv4: "), "{json}");

    // The text says so in words.
    let mut text = Command::new(CAPTURE_INIT);
    text.arg("explain")
        .args(run_flags(&installed))
        .arg("--network-namespace")
        .arg(topo.pod.path())
        .arg("--from-kernel")
        .args(["--dst", &dst.to_string(), "--uid", "1000"]);
    let run = run_clean(text, None);
    run.ok();
    assert!(
        run.stdout.contains("iptables, as installed: not captured"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("  drift: IPv4: "), "{}", run.stdout);

    let mut pure = Command::new("ip");
    pure.args(["netns", "exec", topo.pod.name(), CAPTURE_INIT, "explain"])
        .args(run_flags(&installed))
        .args(connection_flags(true, APP, None, dst, false));
    assert_eq!(field(&explain_json(pure), "verdict"), Some("captured"));
}

/// Native nftables: a rule of capture's deleted behind its back. `--from-kernel` walks the
/// tables as listed (the app's connection is no longer captured, as the traffic shows) and
/// reports the drift; pure explain still says what the flags install.
#[test]
fn from_kernel_walks_the_listed_nftables_rules() {
    if !require_root() {
        return;
    }
    let topo = Topology::new();
    let _outbound = outbound_proxy(&topo, Family::V4);
    let app = peer_app(&topo, Family::V4, 80);
    let init = CaptureInit::new(&topo.pod, Backend::Nftables, Family::V4).set("--ipv6", "off");
    init.run().ok();
    let listed = capture_e2e::run_ok(topo.pod.command("nft").args([
        "-a",
        "list",
        "chain",
        "inet",
        "istio-proxy-nat",
        "istio-output",
    ]));
    let handle = listed
        .lines()
        .filter(|l| l.contains("jump istio-redirect"))
        .filter_map(|l| l.rsplit_once("# handle ").map(|(_, h)| h.trim().to_owned()))
        .next_back()
        .unwrap_or_else(|| panic!("no redirect jump in:\n{listed}"));
    capture_e2e::run_ok(topo.pod.command("nft").args([
        "delete",
        "rule",
        "inet",
        "istio-proxy-nat",
        "istio-output",
        "handle",
        &handle,
    ]));
    let dst = topo.peer_addr(Family::V4, 80);
    let (reply, _) = capture_e2e::connect_as(&topo.pod, APP.0, APP.1, dst).expect("connect");
    assert_eq!(
        reply,
        app.token(),
        "without its redirect jump the app goes direct"
    );
    let _ = app.take_one();

    let installed = installed(topo.pod.name()).expect("the run is recorded");
    let mut kernel = Command::new(CAPTURE_INIT);
    kernel
        .arg("explain")
        .args(run_flags(&installed))
        .arg("--network-namespace")
        .arg(topo.pod.path())
        .arg("--from-kernel")
        .args(connection_flags(true, APP, None, dst, false));
    let json = explain_json(kernel);
    assert_eq!(field(&json, "source"), Some("kernel"), "{json}");
    assert_eq!(field(&json, "verdict"), Some("bypassed"), "{json}");
    assert_eq!(field(&json, "reason"), Some("not-included"), "{json}");
    assert!(
        json.contains("\"drift\":[\"inet istio-proxy-nat chain istio-output has "),
        "{json}"
    );

    let mut pure = Command::new("ip");
    pure.args(["netns", "exec", topo.pod.name(), CAPTURE_INIT, "explain"])
        .args(run_flags(&installed))
        .args(connection_flags(true, APP, None, dst, false));
    assert_eq!(field(&explain_json(pure), "verdict"), Some("captured"));
}
