//! Many pods at once: 20 pods set up in parallel end with exactly the default sidecar's rules.

use std::thread;

use capture_e2e::{Family, Flavor, Topology, normalize_save, require_root};

use crate::capture_init::{CaptureInit, Via};
use crate::support::saves;

/// The default sidecar's IPv4 rules as `iptables-save` shows them (both flavors), normalized.
fn sidecar_save_v4() -> String {
    normalize_save(include_str!("../../../capture-core/testdata/sidecar.v4.save"))
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
