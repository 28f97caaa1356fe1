//! The real plugin binary against network namespaces the tests create (needs root; skipped
//! with a message otherwise, and failing when `CI` is set).
//!
//! Everything happens inside namespaces made by `capture_e2e`; the root network namespace is
//! never changed. Namespaces are removed on `Drop`, also when a test fails.

#[path = "common/cni.rs"]
mod cni;

use std::path::Path;
use std::thread;

use capture_e2e::{
    APP_UID, Family, Flavor, INBOUND_PORT, Listener, NetNs, OUTBOUND_PORT, PROXY_UID, TempDir, Topology,
    connect_as, iptables_save_normalized, require_root,
};
use cni::{Reply, cni_env, invoke};
use serde_json::{Value, json};

const POD_ARGS: &str = "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-1";

fn flavor_name(flavor: Flavor) -> &'static str {
    match flavor {
        Flavor::Legacy => "legacy",
        Flavor::Nft => "nft",
    }
}

/// A chained request for an injected pod, with `annotations` added.
fn request(flavor: Flavor, run_dir: &Path, annotations: Value, prev: Option<Value>) -> String {
    let mut pod_annotations = json!({"sidecar.istio.io/status": "{\"containers\":[\"app\"]}"});
    for (k, v) in annotations.as_object().expect("an object") {
        pod_annotations[k] = v.clone();
    }
    let mut conf = json!({
        "cniVersion": "1.0.0",
        "name": "test-net",
        "type": "capture-cni",
        "run_dir": run_dir,
        "capture": {"iptables_flavor": flavor_name(flavor)},
        "runtimeConfig": {"io.kubernetes.cri.pod-annotations": pod_annotations},
    });
    if let Some(prev) = prev {
        conf["prevResult"] = prev;
    }
    conf.to_string()
}

/// `stdin` with its `capture` object replaced by `capture`.
fn with_capture(stdin: &str, capture: Value) -> String {
    let mut conf: Value = serde_json::from_str(stdin).expect("a request");
    conf["capture"] = capture;
    conf.to_string()
}

fn call(command: &str, netns: &Path, stdin: &str) -> Reply {
    invoke(&cni_env(command, netns.to_str().unwrap(), POD_ARGS), stdin)
}

fn saves(ns: &NetNs, flavor: Flavor) -> String {
    [Family::V4, Family::V6]
        .map(|f| iptables_save_normalized(ns, flavor, f))
        .concat()
}

/// A namespace with one address, on a veth pair whose both ends stay inside it.
fn pod_with_address(cidr: &str) -> NetNs {
    let ns = NetNs::new();
    ns.ip(&["link", "add", "eth0", "type", "veth", "peer", "name", "eth1"]);
    ns.ip(&["addr", "add", cidr, "dev", "eth0"]);
    ns
}

/// No rule and no chain of ours in either family or flavor.
#[track_caller]
fn assert_no_capture(ns: &NetNs) {
    for flavor in [Flavor::Legacy, Flavor::Nft] {
        let save = saves(ns, flavor);
        assert!(
            !save.lines().any(|l| l.starts_with("-A ") || l.contains("ISTIO")),
            "{}:\n{save}",
            flavor_name(flavor)
        );
    }
}

/// The primary plugin's result for the pod: its IPv4 address, then its IPv6 one.
fn prev_result(topo: &Topology) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "mac": "0a:58:0a:00:00:01", "sandbox": topo.pod.path()}],
        "ips": [
            {"address": format!("{}/24", topo.pod_ip(Family::V4)), "interface": 0},
            {"address": format!("{}/64", topo.pod_ip(Family::V6)), "interface": 0},
        ],
        "dns": {},
    })
}

/// ADD, real traffic, CHECK, drift, DEL, DEL again: the whole life of one pod.
fn pod_lifecycle(flavor: Flavor) {
    if !require_root() {
        return;
    }
    let run = TempDir::new("run");
    let topo = Topology::new();
    assert_no_capture(&topo.pod);
    let prev = prev_result(&topo);
    let stdin = request(flavor, run.path(), json!({}), Some(prev.clone()));

    let reply = call("ADD", topo.pod.path(), &stdin);
    reply.ok();
    assert_eq!(reply.json(), prev, "prevResult passed through");

    let outbound = Listener::spawn(
        &topo.pod,
        (Family::V6.unspecified(), OUTBOUND_PORT).into(),
        "outbound",
    );
    let inbound = Listener::spawn(
        &topo.pod,
        (Family::V6.unspecified(), INBOUND_PORT).into(),
        "inbound",
    );
    let peer_app = Listener::spawn(&topo.peer, (Family::V6.unspecified(), 80).into(), "peer-app");
    for family in [Family::V4, Family::V6] {
        // The app's connection to peer:80 lands on the proxy, which learns peer:80.
        let dst = topo.peer_addr(family, 80);
        let (reply, _) = connect_as(&topo.pod, APP_UID, APP_UID, dst).expect("app connects");
        assert_eq!(reply, "outbound", "{family:?}");
        assert_eq!(outbound.take_one().original_dst.expect("original_dst"), dst);
        // The proxy's own connection goes straight out.
        let (reply, _) = connect_as(&topo.pod, PROXY_UID, PROXY_UID, dst).expect("proxy connects");
        assert_eq!(reply, "peer-app", "{family:?}");
        let _ = peer_app.take_one();
        // Inbound to any pod port reaches the inbound proxy.
        let dst = topo.pod_addr(family, 8080);
        let (reply, _) = connect_as(&topo.peer, 0, 0, dst).expect("peer connects to the pod");
        assert_eq!(reply, "inbound", "{family:?}");
        assert_eq!(inbound.take_one().original_dst.expect("original_dst"), dst);
    }

    let applied = saves(&topo.pod, flavor);
    assert!(applied.contains(":ISTIO_OUTPUT") && applied.contains("-j REDIRECT --to-ports 15001"));
    call("CHECK", topo.pod.path(), &stdin).ok();
    // ADD again (a runtime retry) changes nothing.
    call("ADD", topo.pod.path(), &stdin).ok();
    assert_eq!(saves(&topo.pod, flavor), applied);

    // Someone removes a rule: CHECK says what differs.
    let tables = match flavor {
        Flavor::Legacy => "iptables-legacy",
        Flavor::Nft => "iptables-nft",
    };
    capture_e2e::run_ok(topo.pod.command(tables).args([
        "-t",
        "nat",
        "-D",
        "ISTIO_INBOUND",
        "-p",
        "tcp",
        "--dport",
        "15021",
        "-j",
        "RETURN",
    ]));
    let failure = call("CHECK", topo.pod.path(), &stdin).error(101);
    let msg = failure["msg"].as_str().unwrap();
    assert!(msg.contains("ISTIO_INBOUND") && msg.contains("15021"), "{msg}");

    let del = call("DEL", topo.pod.path(), &stdin);
    del.ok();
    assert!(
        del.stderr.contains("pod shop/cart-1: capture removed"),
        "{}",
        del.stderr
    );
    assert_no_capture(&topo.pod);
    assert!(
        !topo
            .pod
            .ip(&["-6", "addr", "show", "dev", "lo"])
            .contains("::6/128")
    );
    // A second DEL finds nothing and says so, as capture-init's second cleanup does.
    let again = call("DEL", topo.pod.path(), &stdin);
    again.ok();
    assert!(
        again
            .stderr
            .contains("pod shop/cart-1: no capture there, nothing to remove"),
        "{}",
        again.stderr
    );
    let missing = call("CHECK", topo.pod.path(), &stdin).error(101);
    assert!(missing["msg"].as_str().unwrap().contains("missing"), "{missing}");
    // Uncaptured again: the app reaches the peer directly.
    let (reply, _) = connect_as(&topo.pod, APP_UID, APP_UID, topo.peer_addr(Family::V4, 80)).unwrap();
    assert_eq!(reply, "peer-app");
}

#[test]
fn pod_lifecycle_legacy() {
    pod_lifecycle(Flavor::Legacy);
}

#[test]
fn pod_lifecycle_nft() {
    pod_lifecycle(Flavor::Nft);
}

/// `includeOutboundIPRanges: 0.0.0.0/0,::/0`, the usual spelling of "everything": ADD, then
/// CHECK and a second ADD find exactly these rules in place, although `iptables-save` shows
/// `-d 0.0.0.0/0` and `-d ::/0` as no address option at all.
fn any_destination_annotation_checks_clean(flavor: Flavor) {
    if !require_root() {
        return;
    }
    let run = TempDir::new("run");
    let topo = Topology::new();
    let stdin = request(
        flavor,
        run.path(),
        json!({"traffic.sidecar.istio.io/includeOutboundIPRanges": "0.0.0.0/0,::/0"}),
        Some(prev_result(&topo)),
    );
    call("ADD", topo.pod.path(), &stdin).ok();
    let applied = saves(&topo.pod, flavor);
    assert_eq!(
        applied.matches("-A ISTIO_OUTPUT -j ISTIO_REDIRECT\n").count(),
        2,
        "both families redirect every destination:\n{applied}"
    );
    call("CHECK", topo.pod.path(), &stdin).ok();
    call("ADD", topo.pod.path(), &stdin).ok();
    assert_eq!(saves(&topo.pod, flavor), applied);
    call("DEL", topo.pod.path(), &stdin).ok();
    assert_no_capture(&topo.pod);
}

#[test]
fn any_destination_annotation_checks_clean_legacy() {
    any_destination_annotation_checks_clean(Flavor::Legacy);
}

#[test]
fn any_destination_annotation_checks_clean_nft() {
    any_destination_annotation_checks_clean(Flavor::Nft);
}

#[test]
fn del_after_the_namespace_is_gone_succeeds() {
    if !require_root() {
        return;
    }
    let run = TempDir::new("run");
    let ns = pod_with_address("10.250.0.1/24");
    let path = ns.path().to_owned();
    let stdin = request(Flavor::Nft, run.path(), json!({}), None);
    call("ADD", &path, &stdin).ok();
    drop(ns);
    assert!(!path.exists());
    let reply = call("DEL", &path, &stdin);
    assert_eq!((reply.code, reply.stdout.as_str()), (0, ""), "{}", reply.stderr);
}

#[test]
fn bad_input_changes_nothing_in_the_namespace() {
    if !require_root() {
        return;
    }
    let run = TempDir::new("run");
    let topo = Topology::new();
    let before = saves(&topo.pod, Flavor::Nft) + &saves(&topo.pod, Flavor::Legacy);
    let bad_annotation = request(
        Flavor::Nft,
        run.path(),
        json!({"traffic.sidecar.istio.io/excludeOutboundPorts": "15020,99999"}),
        None,
    );
    let reply = call("ADD", topo.pod.path(), &bad_annotation).error(7);
    assert!(reply["msg"].as_str().unwrap().contains("excludeOutboundPorts"));
    let mut old_prev = prev_result(&topo);
    old_prev["cniVersion"] = "0.4.0".into();
    call(
        "ADD",
        topo.pod.path(),
        &request(Flavor::Nft, run.path(), json!({}), Some(old_prev)),
    )
    .error(1);
    call("ADD", topo.pod.path(), "{\"cniVersion\":").error(6);
    let unsupported = request(Flavor::Nft, run.path(), json!({}), None).replace("1.0.0", "0.2.0");
    call("ADD", topo.pod.path(), &unsupported).error(1);
    let mut no_netns = cni_env("ADD", "", POD_ARGS);
    no_netns.retain(|(k, _)| *k != "CNI_NETNS");
    invoke(&no_netns, &request(Flavor::Nft, run.path(), json!({}), None)).error(4);
    // Settings ADD would refuse do not block DEL.
    let broken = with_capture(
        &request(Flavor::Nft, run.path(), json!({}), None),
        json!({"iptables_flavor": "nft", "interception_mode": "NAT"}),
    );
    call("DEL", topo.pod.path(), &broken).ok();
    assert_eq!(
        saves(&topo.pod, Flavor::Nft) + &saves(&topo.pod, Flavor::Legacy),
        before
    );
}

/// Many pods at once: each ADD succeeds and each namespace ends with exactly its own rules
/// (each pod excludes a different outbound port).
fn parallel_adds(flavor: Flavor) {
    if !require_root() {
        return;
    }
    const PODS: u16 = 20;
    let run = TempDir::new("run");
    let pods: Vec<NetNs> = (0..PODS)
        .map(|i| pod_with_address(&format!("10.251.{i}.1/24")))
        .collect();
    let port = |i: u16| 20000 + i;
    let replies: Vec<Reply> = thread::scope(|scope| {
        let handles: Vec<_> = pods
            .iter()
            .zip(0..)
            .map(|(ns, i)| {
                let stdin = request(
                    flavor,
                    run.path(),
                    json!({"traffic.sidecar.istio.io/excludeOutboundPorts": port(i).to_string()}),
                    None,
                );
                scope.spawn(move || call("ADD", ns.path(), &stdin))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, reply) in (0..).zip(&replies) {
        reply.ok();
        let save = iptables_save_normalized(&pods[usize::from(i)], flavor, Family::V4);
        assert!(
            save.contains(&format!("--dport {} -j RETURN", port(i))),
            "pod {i}:\n{save}"
        );
        for other in (0..PODS).filter(|o| *o != i) {
            assert!(
                !save.contains(&format!("--dport {} ", port(other))),
                "pod {i} has pod {other}'s rule"
            );
        }
        // The same rule set as every other pod, but for that one port.
        let normalized = save.replace(&port(i).to_string(), "PORT");
        let first =
            iptables_save_normalized(&pods[0], flavor, Family::V4).replace(&port(0).to_string(), "PORT");
        assert_eq!(normalized, first, "pod {i}");
    }
    if flavor == Flavor::Legacy {
        // One lock file per namespace, none of them the node's.
        let locks = std::fs::read_dir(run.path()).unwrap().count();
        assert_eq!(locks, usize::from(PODS));
    }
    for (ns, i) in pods.iter().zip(0..) {
        let stdin = request(
            flavor,
            run.path(),
            json!({"traffic.sidecar.istio.io/excludeOutboundPorts": port(i).to_string()}),
            None,
        );
        call("DEL", ns.path(), &stdin).ok();
    }
    assert_eq!(
        std::fs::read_dir(run.path()).unwrap().count(),
        0,
        "DEL removes the lock files"
    );
}

#[test]
fn parallel_adds_legacy() {
    parallel_adds(Flavor::Legacy);
}

#[test]
fn parallel_adds_nft() {
    parallel_adds(Flavor::Nft);
}

#[test]
fn status_reports_the_backend_usable_or_code_50() {
    if !require_root() {
        return;
    }
    let stdin = json!({"cniVersion": "1.1.0", "name": "test-net", "type": "capture-cni"}).to_string();
    let reply = invoke(&[("CNI_COMMAND", "STATUS"), ("CNI_PATH", "/opt/cni/bin")], &stdin);
    assert_eq!((reply.code, reply.stdout.as_str()), (0, ""), "{}", reply.stderr);
    // With no iptables programs to be found, the plugin is not available.
    let mut cmd = std::process::Command::new(cni::BIN);
    let out = {
        use std::io::Write as _;
        let mut child = cmd
            .env_clear()
            .env("CNI_COMMAND", "STATUS")
            .env("PATH", "/nonexistent")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    };
    assert_eq!(out.status.code(), Some(1));
    let reply: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reply["code"], 50, "{reply}");
}

/// A plugin downgrade leaves a configuration the plugin no longer decodes: DEL still removes
/// what ADD applied, as the defaults describe it.
#[test]
fn del_with_a_configuration_that_no_longer_decodes_removes_capture() {
    if !require_root() {
        return;
    }
    let run = TempDir::new("run");
    for (flavor, broken) in [
        (Flavor::Nft, json!({"ipv7": "on"})),
        (Flavor::Legacy, json!(null)),
        (Flavor::Nft, json!(["iptables", "nft"])),
    ] {
        let topo = Topology::new();
        let stdin = request(flavor, run.path(), json!({}), Some(prev_result(&topo)));
        call("ADD", topo.pod.path(), &stdin).ok();
        assert!(saves(&topo.pod, flavor).contains(":ISTIO_OUTPUT"));
        let reply = call("DEL", topo.pod.path(), &with_capture(&stdin, broken.clone()));
        assert_eq!(
            (reply.code, reply.stdout.as_str()),
            (0, ""),
            "{broken}: {}",
            reply.stderr
        );
        assert!(
            reply.stderr.contains("capture"),
            "{broken}: the warning names the field: {}",
            reply.stderr
        );
        assert_no_capture(&topo.pod);
    }
    // Not even JSON: the same.
    let topo = Topology::new();
    let stdin = request(Flavor::Nft, run.path(), json!({}), Some(prev_result(&topo)));
    call("ADD", topo.pod.path(), &stdin).ok();
    call("DEL", topo.pod.path(), &stdin[..stdin.len() / 2]).ok();
    assert_no_capture(&topo.pod);
}

/// Only legacy iptables needs the lock file: nft and detection never create `run_dir`, and
/// legacy falls back to iptables' own lock when `run_dir` cannot be made (a read-only `/run`).
#[test]
fn run_dir_is_needed_only_by_legacy_and_never_blocks() {
    if !require_root() {
        return;
    }
    let scratch = TempDir::new("run");
    let absent = scratch.path().join("absent");
    // A path under a regular file: mkdir fails for root too.
    std::fs::write(scratch.path().join("file"), "").unwrap();
    let unwritable = scratch.path().join("file").join("run");
    for run_dir in [&absent, &unwritable] {
        for flavor in ["nft", "auto"] {
            let topo = Topology::new();
            let stdin = with_capture(
                &request(Flavor::Nft, run_dir, json!({}), Some(prev_result(&topo))),
                json!({"iptables_flavor": flavor}),
            );
            let reply = call("ADD", topo.pod.path(), &stdin);
            reply.ok();
            assert!(!reply.stderr.contains("lock"), "{flavor}: {}", reply.stderr);
            assert!(
                saves(&topo.pod, Flavor::Nft).contains(":ISTIO_OUTPUT"),
                "{flavor}"
            );
            call("CHECK", topo.pod.path(), &stdin).ok();
            call("DEL", topo.pod.path(), &stdin).ok();
            assert_no_capture(&topo.pod);
            assert!(!absent.exists(), "{flavor} created {}", absent.display());
        }
    }
    let topo = Topology::new();
    let stdin = request(Flavor::Legacy, &unwritable, json!({}), Some(prev_result(&topo)));
    let reply = call("ADD", topo.pod.path(), &stdin);
    reply.ok();
    assert!(
        reply.stderr.contains(unwritable.to_str().unwrap()) && reply.stderr.contains("/run/xtables.lock"),
        "the fallback is a warning naming both locks: {}",
        reply.stderr
    );
    assert!(saves(&topo.pod, Flavor::Legacy).contains(":ISTIO_OUTPUT"));
    call("CHECK", topo.pod.path(), &stdin).ok();
    call("DEL", topo.pod.path(), &stdin).ok();
    assert_no_capture(&topo.pod);
}

#[track_caller]
fn assert_ipv6_capture(ns: &NetNs, want: bool, what: &str) {
    let save = iptables_save_normalized(ns, Flavor::Nft, Family::V6);
    assert_eq!(save.contains(":ISTIO_OUTPUT"), want, "{what}:\n{save}");
    assert!(
        iptables_save_normalized(ns, Flavor::Nft, Family::V4).contains(":ISTIO_OUTPUT"),
        "{what}"
    );
    assert_eq!(
        ns.ip(&["-6", "addr", "show", "dev", "lo"]).contains("::6/128"),
        want,
        "{what}"
    );
}

/// The pod's addresses are IPv4 first, IPv6 second (`Topology` adds them in that order, and
/// prevResult lists them so). Every family it has is captured unless `capture.ipv6` asks for
/// Istio's first-address rule.
#[test]
fn dual_stack_pod_is_captured_in_every_family_it_has() {
    if !require_root() {
        return;
    }
    let run = TempDir::new("run");
    let topo = Topology::new();
    let capture = |extra: Value| {
        let mut capture = json!({"iptables_flavor": "nft"});
        for (k, v) in extra.as_object().unwrap() {
            capture[k] = v.clone();
        }
        capture
    };
    let stdin = with_capture(
        &request(Flavor::Nft, run.path(), json!({}), Some(prev_result(&topo))),
        capture(json!({})),
    );
    call("ADD", topo.pod.path(), &stdin).ok();
    assert_ipv6_capture(&topo.pod, true, "default, from prevResult");
    let any = |port| (Family::V6.unspecified(), port).into();
    let outbound = Listener::spawn(&topo.pod, any(OUTBOUND_PORT), "outbound");
    let inbound = Listener::spawn(&topo.pod, any(INBOUND_PORT), "inbound");
    let peer_app = Listener::spawn(&topo.peer, any(80), "peer-app");
    let dst = topo.peer_addr(Family::V6, 80);
    let (reply, _) = connect_as(&topo.pod, APP_UID, APP_UID, dst).expect("app connects over IPv6");
    assert_eq!(reply, "outbound");
    assert_eq!(outbound.take_one().original_dst.expect("original_dst"), dst);
    let dst = topo.pod_addr(Family::V6, 8080);
    let (reply, _) = connect_as(&topo.peer, 0, 0, dst).expect("peer connects over IPv6");
    assert_eq!(reply, "inbound");
    assert_eq!(inbound.take_one().original_dst.expect("original_dst"), dst);
    call("CHECK", topo.pod.path(), &stdin).ok();
    call("DEL", topo.pod.path(), &stdin).ok();
    assert_no_capture(&topo.pod);
    drop((outbound, inbound, peer_app));

    // Without ips in prevResult (or without prevResult), or with only the IPv4 one, the
    // namespace's IPv6 address still counts.
    let mut no_ips = prev_result(&topo);
    no_ips.as_object_mut().unwrap().shift_remove("ips");
    let mut v4_only = prev_result(&topo);
    v4_only["ips"].as_array_mut().unwrap().pop();
    for prev in [Some(no_ips), None, Some(v4_only)] {
        let stdin = with_capture(
            &request(Flavor::Nft, run.path(), json!({}), prev),
            capture(json!({})),
        );
        call("ADD", topo.pod.path(), &stdin).ok();
        assert_ipv6_capture(&topo.pod, true, "default, from the namespace");
        call("DEL", topo.pod.path(), &stdin).ok();
    }

    // Istio's rule on request: the first address is IPv4, so no IPv6 capture...
    let first = with_capture(
        &request(Flavor::Nft, run.path(), json!({}), Some(prev_result(&topo))),
        capture(json!({"ipv6": "first-address"})),
    );
    call("ADD", topo.pod.path(), &first).ok();
    assert_ipv6_capture(&topo.pod, false, "first-address");
    call("CHECK", topo.pod.path(), &first).ok();
    call("DEL", topo.pod.path(), &first).ok();
    // ...unless dual_stack (ISTIO_DUAL_STACK) says any IPv6 address counts.
    let dual = with_capture(
        &first,
        capture(json!({"ipv6": "first-address", "dual_stack": true})),
    );
    call("ADD", topo.pod.path(), &dual).ok();
    assert_ipv6_capture(&topo.pod, true, "first-address with dual_stack");
    call("DEL", topo.pod.path(), &dual).ok();
    assert_no_capture(&topo.pod);
}

/// Issue 8 item 9: CHECK fails, naming the rule, when capture is switched off around our rules
/// (a foreign RETURN or ACCEPT ahead of our jumps, our chains in the other flavour); DEL then
/// removes capture from both flavours, so the next ADD succeeds.
fn check_sees_capture_switched_off(flavor: Flavor) {
    if !require_root() {
        return;
    }
    let run = TempDir::new("run");
    let topo = Topology::new();
    let stdin = request(flavor, run.path(), json!({}), Some(prev_result(&topo)));
    call("ADD", topo.pod.path(), &stdin).ok();
    call("CHECK", topo.pod.path(), &stdin).ok();
    let (tables, other) = match flavor {
        Flavor::Legacy => ("iptables-legacy", "iptables-nft"),
        Flavor::Nft => ("iptables-nft", "iptables-legacy"),
    };
    let pod_ip = format!("{}/32", topo.pod_ip(Family::V4));
    let tamperings: [(&str, &[&str], &str); 3] = [
        (
            tables,
            &["-t", "nat", "-I", "OUTPUT", "-j", "RETURN"],
            "nat OUTPUT rule 1 '-j RETURN'",
        ),
        (
            tables,
            &["-t", "nat", "-I", "PREROUTING", "-d", &pod_ip, "-j", "ACCEPT"],
            "nat PREROUTING rule 1",
        ),
        (
            other,
            &["-t", "nat", "-N", "ISTIO_OUTPUT"],
            "capture chain IPv4 nat ISTIO_OUTPUT also exists in",
        ),
    ];
    for (program, args, says) in tamperings {
        capture_e2e::run_ok(topo.pod.command(program).args(args));
        let failure = call("CHECK", topo.pod.path(), &stdin).error(101);
        let msg = failure["msg"].as_str().unwrap();
        assert!(msg.contains(says), "{args:?}: {msg}");
        if program == tables {
            let mut undo: Vec<&str> = args.to_vec();
            undo[2] = "-D";
            capture_e2e::run_ok(topo.pod.command(program).args(&undo));
            call("CHECK", topo.pod.path(), &stdin).ok();
        }
    }
    // The other flavour's stale chain is still there: DEL removes both, ADD works again.
    call("DEL", topo.pod.path(), &stdin).ok();
    assert_no_capture(&topo.pod);
    call("ADD", topo.pod.path(), &stdin).ok();
    call("CHECK", topo.pod.path(), &stdin).ok();
    call("DEL", topo.pod.path(), &stdin).ok();
}

#[test]
fn check_sees_capture_switched_off_legacy() {
    check_sees_capture_switched_off(Flavor::Legacy);
}

#[test]
fn check_sees_capture_switched_off_nft() {
    check_sees_capture_switched_off(Flavor::Nft);
}

/// `nft -s list ruleset` in `ns`.
fn nft_ruleset(ns: &NetNs) -> String {
    let out = ns
        .command("nft")
        .args(["-s", "list", "ruleset"])
        .output()
        .expect("run nft (scripts/setup installs the nftables package)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The native nftables backend, chosen by `capture.backend: "nftables"` or by Istio's
/// `native_nftables: true`: ADD writes the tables (and no iptables rule), real traffic is
/// captured with its original destination, ADD again changes nothing, CHECK passes and then
/// names a rule removed behind its back, DEL deletes the tables, a second DEL succeeds, STATUS
/// reports the backend usable.
#[test]
fn pod_lifecycle_native_nftables() {
    if !require_root() {
        return;
    }
    let run = TempDir::new("run");
    for select in [
        |stdin: &str| with_capture(stdin, json!({"backend": "nftables"})),
        |stdin: &str| {
            let mut conf: Value = serde_json::from_str(stdin).unwrap();
            conf["native_nftables"] = json!(true);
            conf.to_string()
        },
    ] {
        let topo = Topology::new();
        let stdin = select(&request(
            Flavor::Nft,
            run.path(),
            json!({}),
            Some(prev_result(&topo)),
        ));
        call("ADD", topo.pod.path(), &stdin).ok();
        let applied = nft_ruleset(&topo.pod);
        assert!(applied.contains("table inet istio-proxy-nat"), "{applied}");
        assert_no_capture(&topo.pod);

        let outbound = Listener::spawn(
            &topo.pod,
            (Family::V6.unspecified(), OUTBOUND_PORT).into(),
            "outbound",
        );
        for family in [Family::V4, Family::V6] {
            let dst = topo.peer_addr(family, 80);
            let (reply, _) = connect_as(&topo.pod, APP_UID, APP_UID, dst).expect("app connects");
            assert_eq!(reply, "outbound", "{family:?}");
            assert_eq!(outbound.take_one().original_dst.expect("original_dst"), dst);
        }

        call("ADD", topo.pod.path(), &stdin).ok();
        assert_eq!(nft_ruleset(&topo.pod), applied, "a retried ADD changes nothing");
        call("CHECK", topo.pod.path(), &stdin).ok();
        capture_e2e::run_ok(topo.pod.command("nft").args([
            "flush",
            "chain",
            "inet",
            "istio-proxy-nat",
            "istio-inbound",
        ]));
        let failure = call("CHECK", topo.pod.path(), &stdin).error(101);
        let msg = failure["msg"].as_str().unwrap();
        assert!(msg.contains("istio-inbound"), "{msg}");

        call("DEL", topo.pod.path(), &stdin).ok();
        assert!(!nft_ruleset(&topo.pod).contains("istio-proxy"));
        call("DEL", topo.pod.path(), &stdin).ok();
        let mut status: Value = serde_json::from_str(&stdin).unwrap();
        status["cniVersion"] = json!("1.1.0");
        status.as_object_mut().unwrap().remove("prevResult");
        call("STATUS", topo.pod.path(), &status.to_string()).ok();
    }
}
