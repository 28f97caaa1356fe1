//! State: idempotence, drift, `--reconcile`, `--cleanup-only`.

use capture_e2e::{Family, Flavor, NetNs, Topology, require_root, run_ok, test_matrix};

use crate::capture_init::{Backend, CaptureInit, Via};
use crate::support::{
    APP, assert_lands, assert_no_capture, assert_no_istio, has_ipv6_passthrough, iptables, nft_ruleset,
    outbound_proxy, peer_app, saves, sidecar_captured,
};
#[cfg(feature = "ebpf")]
use crate::support::{ebpf_pods, ebpf_row};

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
        Backend::Nftables => nft_ruleset(&topo.pod),
        #[cfg(feature = "ebpf")]
        Backend::Ebpf => ebpf_pods().ok().stdout.clone(),
    };
    let fresh = state();
    let again = init.run();
    again.ok();
    if backend.is_ebpf() {
        again.says("eBPF capture already in place, nothing changed");
    } else if backend == Backend::Nftables {
        again.says("native nftables capture already in place, nothing changed");
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
    let (init, fresh) = sidecar_captured(&topo, flavor);

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
        "nat ISTIO_INBOUND: rule 2 is '-p tcp -m tcp --dport 15091 -j RETURN' \
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

test_matrix!(backend: cleanup_needs_no_address);

/// `--cleanup-only` removes both families whatever it is told, so it does not decide IPv6: in a
/// namespace with no address but loopback (where a run without `--ipv6` cannot tell), it
/// removes an IPv4 capture, then a dual-stack one with its `::6`.
fn cleanup_needs_no_address(backend: Backend) {
    if !require_root() {
        return;
    }
    let ns = NetNs::new();
    let init = CaptureInit::new(&ns, backend, Family::V4);
    let cleanup = init.clone().switch("--cleanup-only");
    for ipv6 in ["off", "on"] {
        init.clone().set("--ipv6", ipv6).run().ok();
        assert_eq!(has_ipv6_passthrough(&ns), ipv6 == "on", "--ipv6 {ipv6}: ::6");
        cleanup.run().ok().says("removed");
        assert!(!has_ipv6_passthrough(&ns), "--ipv6 {ipv6}: ::6 removed");
        match backend {
            Backend::Iptables(_) | Backend::Nftables => assert_no_capture(&ns, backend),
            #[cfg(feature = "ebpf")]
            Backend::Ebpf => {
                let pods = ebpf_pods().ok().stdout.clone();
                assert!(
                    !pods.contains("netns-cookie"),
                    "--ipv6 {ipv6}: still enrolled:\n{pods}"
                );
            }
        }
    }
}

test_matrix!(backend: a_second_cleanup_says_nothing_to_remove);

/// Every backend says the same of a cleanup: "removed" when capture was there, "nothing to
/// remove" when it was not (a fresh namespace, or a second cleanup), exit 0 both times.
fn a_second_cleanup_says_nothing_to_remove(backend: Backend) {
    if !require_root() {
        return;
    }
    let topo = Topology::new();
    let init = CaptureInit::new(&topo.pod, backend, Family::V4);
    let cleanup = init.clone().switch("--cleanup-only");
    let nothing = |run: &crate::capture_init::Run| {
        run.ok().says("nothing to remove");
        assert!(!run.stderr.contains("removed"), "{}", run.stderr);
    };
    nothing(&cleanup.run());
    init.run().ok();
    let first = cleanup.run();
    first.ok().says("removed");
    assert!(!first.stderr.contains("nothing to remove"), "{}", first.stderr);
    nothing(&cleanup.run());
}

test_matrix!(backend: cleanup_dry_run_prints_what_cleanup_would_remove);

/// `--cleanup-only --dry-run` prints what cleanup would remove, read from the pod (not the
/// payload a run would apply), and changes nothing: for iptables the restore payloads cleanup
/// would run, for native nftables the tables it would delete, for eBPF the pod's map entries.
fn cleanup_dry_run_prints_what_cleanup_would_remove(backend: Backend) {
    if !require_root() {
        return;
    }
    let topo = Topology::new();
    let init = CaptureInit::new(&topo.pod, backend, Family::V6);
    let preview = || {
        let run = init.clone().switch("--cleanup-only").switch("--dry-run").run();
        run.ok();
        run.stdout.clone()
    };
    let empty = preview();
    assert!(
        empty.starts_with("# ") && empty.lines().all(|l| l.starts_with('#')),
        "nothing there yet:\n{empty}"
    );
    init.run().ok();
    let full = preview();
    let (must, must_not): (&[&str], &[&str]) = match backend {
        Backend::Iptables(flavor) => (
            &[
                &format!("# iptables-{}-restore --noflush\n*nat\n", flavor.as_str()),
                &format!("# ip6tables-{}-restore --noflush\n", flavor.as_str()),
                "-D OUTPUT -j ISTIO_OUTPUT\n",
                "-X ISTIO_OUTPUT\n",
                "# then: remove ::6/128 from lo\n",
            ],
            &["-A ISTIO_OUTPUT"],
        ),
        Backend::Nftables => (
            &[
                "delete table inet istio-proxy-nat\n",
                "# then: remove ::6/128 from lo\n",
            ],
            &["add table", "add rule"],
        ),
        #[cfg(feature = "ebpf")]
        Backend::Ebpf => (
            &[
                "# unenroll netns cookie ",
                "\nPOD_CONFIG outbound=15001 inbound=15006",
                "# then: remove ::6/128 from lo\n",
            ],
            &[],
        ),
    };
    for text in must {
        assert!(full.contains(text), "lacks {text:?}:\n{full}");
    }
    for text in must_not {
        assert!(!full.contains(text), "has {text:?}:\n{full}");
    }
    assert!(has_ipv6_passthrough(&topo.pod), "a dry run removes nothing");
    init.run().ok().says("already in place, nothing changed");
}
