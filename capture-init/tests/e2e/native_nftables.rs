//! The native nftables backend's own life cycle (`--native-nftables`): reruns, drift and
//! `--reconcile` in one transaction, tables a new configuration no longer needs, cleanup, and
//! living next to other software's iptables-nft rules and nftables tables. The scenarios it
//! shares with the other backends are rows of the common table (`native_v4`, `native_v6`).

use capture_e2e::{Family, Flavor, Topology, iptables_save_normalized, require_root, run_ok};

use crate::capture_init::{Backend, CaptureInit, Via, assert_concurrent_runs_serialise};
use crate::support::{
    APP, assert_lands, assert_no_capture, has_ipv6_passthrough, iptables, nft_ruleset, outbound_proxy,
    peer_app,
};

fn native(topo: &Topology) -> CaptureInit<'_> {
    CaptureInit::new(&topo.pod, Backend::Nftables, Family::V6)
}

/// `nft` in the pod.
fn nft(topo: &Topology, args: &[&str]) {
    run_ok(topo.pod.command("nft").args(args));
}

/// `nft -s list table inet NAME` in the pod.
fn table_text(topo: &Topology, name: &str) -> String {
    run_ok(
        topo.pod
            .command("nft")
            .args(["-s", "list", "table", "inet", name]),
    )
}

/// The names of the pod's nftables tables, `family name` each.
fn tables(topo: &Topology) -> Vec<String> {
    let out = topo
        .pod
        .command("nft")
        .args(["list", "tables"])
        .output()
        .expect("run nft");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("table "))
        .map(str::to_owned)
        .collect()
}

/// A rerun finds exactly its rules and changes nothing; a rule changed behind its back makes a
/// plain run fail naming the chain (changing nothing); `--reconcile` puts back exactly the fresh
/// rule set, in one transaction.
#[test]
fn rerun_is_a_no_op_drift_fails_and_reconcile_restores() {
    if !require_root() {
        return;
    }
    let topo = Topology::new();
    let outbound = outbound_proxy(&topo, Family::V4);
    let init = native(&topo);
    init.run()
        .ok()
        .says("native nftables capture applied (tables istio-proxy-nat)");
    let fresh = nft_ruleset(&topo.pod);
    init.run()
        .ok()
        .says("native nftables capture already in place, nothing changed");
    assert_eq!(nft_ruleset(&topo.pod), fresh);

    nft(
        &topo,
        &[
            "add",
            "rule",
            "inet",
            "istio-proxy-nat",
            "istio-inbound",
            "tcp",
            "dport",
            "15091",
            "return",
        ],
    );
    let tampered = nft_ruleset(&topo.pod);
    init.run()
        .code(1)
        .says("native nftables capture already present differs from this configuration")
        .says("inet istio-proxy-nat chain istio-inbound has 6 rules, 5 expected; rule 6 is not part of this configuration")
        .says("--reconcile");
    assert_eq!(nft_ruleset(&topo.pod), tampered, "a refused run changes nothing");

    init.clone()
        .switch("--reconcile")
        .run()
        .ok()
        .says("native nftables capture reconciled");
    assert_eq!(nft_ruleset(&topo.pod), fresh);
    assert_lands(&topo.pod, APP, topo.peer_addr(Family::V4, 80), &outbound);
}

/// Reconciling TPROXY capture into REDIRECT capture drops the mangle table, which REDIRECT does
/// not use, in the same transaction; reconciling back brings it again.
#[test]
fn a_table_the_new_configuration_does_not_need_goes_in_the_same_run() {
    if !require_root() {
        return;
    }
    let topo = Topology::new();
    let tproxy = native(&topo).set("-m", "TPROXY");
    tproxy.run().ok();
    assert_eq!(tables(&topo), ["inet istio-proxy-nat", "inet istio-proxy-mangle"]);
    native(&topo).switch("--reconcile").run().ok().says("reconciled");
    assert_eq!(tables(&topo), ["inet istio-proxy-nat"]);
    tproxy.clone().switch("--reconcile").run().ok().says("reconciled");
    assert_eq!(tables(&topo), ["inet istio-proxy-nat", "inet istio-proxy-mangle"]);
}

/// `--cleanup-only` deletes the tables, the TPROXY policy routing and `::6`, after which the app
/// reaches the peer directly; a second cleanup (from inside the pod) finds nothing and succeeds.
#[test]
fn cleanup_deletes_the_tables_the_routing_and_the_passthrough_address() {
    if !require_root() {
        return;
    }
    let topo = Topology::new();
    let outbound = outbound_proxy(&topo, Family::V4);
    let app = peer_app(&topo, Family::V4, 80);
    let init = native(&topo).set("-m", "TPROXY");
    init.run().ok();
    let dst = topo.peer_addr(Family::V4, 80);
    assert_lands(&topo.pod, APP, dst, &outbound);
    assert!(has_ipv6_passthrough(&topo.pod));

    let cleanup = init.clone().switch("--cleanup-only");
    cleanup
        .run()
        .ok()
        .says("native nftables capture removed (tables istio-proxy-nat, istio-proxy-mangle)");
    assert_no_capture(&topo.pod, Backend::Nftables);
    assert!(tables(&topo).is_empty(), "{:?}", tables(&topo));
    assert!(!has_ipv6_passthrough(&topo.pod));
    for f in ["-4", "-6"] {
        let rules = topo.pod.ip(&[f, "rule", "show"]);
        assert!(!rules.contains("lookup 133"), "{rules}");
    }
    assert_lands(&topo.pod, APP, dst, &app);

    cleanup
        .via(Via::Enter)
        .run()
        .ok()
        .says("native nftables capture not there, nothing to remove");
}

/// Other software's iptables-nft rules and nftables tables in the pod stay as they are through
/// our apply and cleanup, and capture works next to them; the iptables backend's cleanup leaves
/// our nftables tables alone.
#[test]
fn other_softwares_rules_and_tables_are_left_alone_both_ways() {
    if !require_root() {
        return;
    }
    let topo = Topology::new();
    let outbound = outbound_proxy(&topo, Family::V4);
    run_ok(topo.pod.command(iptables(Flavor::Nft, Family::V4)).args([
        "-t", "filter", "-A", "INPUT", "-p", "tcp", "--dport", "9", "-j", "ACCEPT",
    ]));
    nft(&topo, &["add", "table", "inet", "other"]);
    nft(
        &topo,
        &[
            "add",
            "chain",
            "inet",
            "other",
            "out",
            "{ type filter hook output priority 0 ; }",
        ],
    );
    nft(
        &topo,
        &[
            "add", "rule", "inet", "other", "out", "tcp", "dport", "9", "counter",
        ],
    );
    let theirs_iptables = iptables_save_normalized(&topo.pod, Flavor::Nft, Family::V4);
    let theirs = || table_text(&topo, "other");
    let theirs_nft = theirs();

    let init = native(&topo);
    init.run().ok();
    assert_lands(&topo.pod, APP, topo.peer_addr(Family::V4, 80), &outbound);
    assert_eq!(theirs(), theirs_nft);
    assert_eq!(
        iptables_save_normalized(&topo.pod, Flavor::Nft, Family::V4),
        theirs_iptables
    );

    // The iptables backend's cleanup is for iptables' rules only.
    let ours = table_text(&topo, "istio-proxy-nat");
    CaptureInit::sidecar(&topo.pod, Flavor::Nft, Family::V6)
        .switch("--cleanup-only")
        .run()
        .ok();
    assert_eq!(table_text(&topo, "istio-proxy-nat"), ours);
    assert_eq!(
        iptables_save_normalized(&topo.pod, Flavor::Nft, Family::V4),
        theirs_iptables
    );

    init.clone().switch("--cleanup-only").run().ok();
    assert_eq!(theirs(), theirs_nft);
    assert_eq!(
        iptables_save_normalized(&topo.pod, Flavor::Nft, Family::V4),
        theirs_iptables
    );
    assert_eq!(tables(&topo), ["ip filter", "inet other"], "only theirs is left");
}

/// Two runs started together, with the same flags or with another `-p`, are serialised by the
/// namespace lock: afterwards the tables are exactly those of a run that succeeded, and the
/// other run either found them in place or refused naming the difference.
#[test]
fn concurrent_runs_never_undo_each_other() {
    if !require_root() {
        return;
    }
    let topo = Topology::new();
    assert_concurrent_runs_serialise(
        &native(&topo),
        Backend::Nftables,
        &["native nftables capture already in place, nothing changed"],
        "differs from this configuration",
    );
}

/// `capture-init` killed (as a container is) at several points of a large TPROXY apply: one
/// netlink transaction holds all of it, so the namespace holds either none of the tables or all
/// of them; a plain rerun always succeeds and the one after it changes nothing.
#[test]
fn killed_mid_apply_leaves_all_or_nothing() {
    if !require_root() {
        return;
    }
    let topo = Topology::new();
    let init = native(&topo).large_tproxy();
    for delay_ms in [1, 3, 5, 8, 12, 20, 40] {
        let mut cmd = init.command();
        cmd.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let mut child = cmd.spawn().expect("start capture-init");
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill();
        child.wait().expect("reap capture-init");
        let found = tables(&topo);
        assert!(
            found.is_empty() || found == ["inet istio-proxy-nat", "inet istio-proxy-mangle"],
            "after a kill at {delay_ms} ms: {found:?}"
        );
        let rerun = init.run();
        rerun.ok();
        init.run()
            .ok()
            .says("native nftables capture already in place, nothing changed");
        init.clone().switch("--cleanup-only").run().ok();
        assert_no_capture(&topo.pod, Backend::Nftables);
    }
}
