//! `--run-validation`: the probes pass with the rules in place and fail without them.

use capture_e2e::{Family, Flavor, Topology, require_root, test_matrix};

use crate::capture_init::{Backend, CaptureInit};
#[cfg(feature = "ebpf")]
use crate::support::ebpf_row;
use crate::support::{assert_no_istio, ip_family};

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
