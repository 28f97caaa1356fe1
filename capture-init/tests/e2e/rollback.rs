//! Rollback: a failure between families leaves nothing of the capture.

use capture_e2e::{Family, Flavor, Topology, require_root, test_matrix};

use crate::capture_init::CaptureInit;
use crate::support::{assert_no_istio, failing_ip6tables_restore, has_ipv6_passthrough, rules, saves};

test_matrix!(flavor: failure_between_families_rolls_back);

/// IPv4 is applied for real, then `ip6tables-<flavor>-restore` (a script first in `PATH`) fails: the
/// run exits 1 saying it rolled back, and neither family nor `lo` keeps anything of the capture.
fn failure_between_families_rolls_back(flavor: Flavor) {
    if !require_root() {
        return;
    }
    let topo = Topology::new();
    let fake = failing_ip6tables_restore(flavor);
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
