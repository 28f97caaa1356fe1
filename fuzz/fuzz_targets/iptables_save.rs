//! `iptables-save` output as the iptables backend reads it: `SavedState::parse`, then the
//! comparison with a planned spec (`Iptables::apply` compares before it changes anything),
//! reconciling (`--reconcile`, including a failing restore and its rollback) and cleanup,
//! against a stand-in for the iptables programs that prints the input as the current rules.
//! No panic; the tables' rollback text parses back to the same chains; every payload capture
//! writes is well formed.

#![no_main]

use std::sync::OnceLock;

use capture_core::apply::SavedState;
use capture_core::{ApplyOptions, CaptureSpec, Flavor, Iptables};
use capture_fuzz::{FakeIptables, FuzzAccounts, assert_restore_lines, istio_config};
use libfuzzer_sys::fuzz_target;

/// Specs whose rules the input is compared with: Istio's sidecar, and one using most features
/// (TPROXY, IPv6, DNS, owner groups, interfaces).
fn specs() -> &'static [CaptureSpec] {
    static SPECS: OnceLock<Vec<CaptureSpec>> = OnceLock::new();
    SPECS.get_or_init(|| {
        let busy = "istio-inbound-interception-mode=TPROXY\nistio-inbound-ports=*\n\
                    istio-local-exclude-ports=15090,15021\nistio-service-cidr=10.0.0.0/8,fd00::/8\n\
                    istio-service-exclude-cidr=10.96.0.1/32\nistio-outbound-ports=3306\n\
                    istio-local-outbound-ports-exclude=15020\nistio-exclude-interfaces=eth1\n\
                    kube-virt-interfaces=tap0\nredirect-dns=true\ncapture-all-dns=true\n\
                    drop-invalid=true\nISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE=888,java\nproxy-uid=root\n\
                    ipv6=true";
        let (busy, detected) = istio_config(busy);
        vec![
            CaptureSpec::sidecar(),
            busy.to_spec_with(&detected, &FuzzAccounts)
                .expect("a valid spec")
                .0,
        ]
    })
}

fn chains(state: &SavedState) -> Vec<(&str, &std::collections::BTreeMap<String, Vec<String>>)> {
    state
        .tables
        .iter()
        .map(|(name, table)| (name.as_str(), &table.chains))
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let saved = SavedState::parse(&text);
    let _ = saved.own_chains();
    // Rolling back restores each table's dumped text; read back, it must hold the same rules.
    let rollback: String = saved.tables.values().map(|t| t.text.as_str()).collect();
    let reread = SavedState::parse(&rollback);
    assert_eq!(
        chains(&reread),
        chains(&saved),
        "rollback text reads back differently"
    );

    // One spec and one way for restores to go per input, chosen by its length, so an input
    // costs one run of the backend rather than four (rendering the expected rules dominates).
    let spec = &specs()[data.len() % 2];
    let fake = FakeIptables {
        v4: text.clone().into_owned(),
        v6: text.into_owned(),
        fail_restore: (data.len() % 4 >= 2).then_some(1),
        ..FakeIptables::default()
    };
    let backend = Iptables::new(&fake, Flavor::Legacy);
    let reconcile = ApplyOptions {
        reconcile: true,
        ..ApplyOptions::default()
    };
    let _ = backend.apply(spec, reconcile);
    let _ = backend.apply(spec, ApplyOptions::default());
    let _ = backend.cleanup(spec);
    for (_, args, payload) in fake.restores.borrow().iter() {
        // A rollback replays the dump as read; everything else capture wrote itself.
        if args.iter().any(|a| a == "--noflush") {
            assert_restore_lines(payload);
        }
    }
});
