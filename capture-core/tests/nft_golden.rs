//! Parity with Istio's `--native-nftables` mode: every current upstream golden, byte for byte.
//!
//! The cases are the iptables goldens' (`cases::COMMON_CASES`, one table for both) plus the one
//! case only Istio's nftables tests have. The expected text is the transaction Istio hands to
//! `nft -f` (see testdata/istio/README.md); a mismatch prints a unified diff.

mod cases;
mod scratch;

use capture_core::nfnetlink::{Batch, Chain, Expr, NfProto, Rule, Verdict as NlVerdict, list};
use capture_core::nft::{Nftables, Statement, Transaction, Verdict, compile, current, plan, replacement};
use capture_core::{
    ApplyOptions, Backend, CaptureSpec, Detected, InterceptMode, IstioConfig, Mark, RouteTable,
    SystemAccounts,
};
use cases::{COMMON_CASES, Case, IstioAccounts, assert_same, golden_names, testdata};

/// Cases only Istio's nftables table has.
const NFT_ONLY_CASES: &[Case] = &[("inbound-ports-empty-tproxy", |c, _| {
    c.inbound_ports = String::new();
    c.interception_mode = "TPROXY".into();
})];

fn all_cases() -> impl Iterator<Item = &'static Case> {
    COMMON_CASES.iter().chain(NFT_ONLY_CASES)
}

fn spec_of(name: &str) -> CaptureSpec {
    let (_, edit) = all_cases()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no case {name:?} in the case table"));
    let mut cfg = IstioConfig::default();
    let mut detected = Detected::default();
    edit(&mut cfg, &mut detected);
    let (spec, _warnings) = cfg
        .to_spec_with(&detected, &IstioAccounts)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    spec
}

fn check(name: &str) {
    let golden = std::fs::read_to_string(testdata(&format!("nftables/capture/{name}.golden")))
        .unwrap_or_else(|e| panic!("{name}: reading the golden: {e}"));
    let text = Transaction(&plan(&spec_of(name))).to_string();
    assert_same(name, &golden, &text);
}

/// One test per golden, so a failure names its case; `TESTED` lists them for the coverage check.
macro_rules! goldens {
    ($($test:ident => $name:literal,)*) => {
        const TESTED: &[&str] = &[$($name),*];
        $(
            #[test]
            fn $test() {
                check($name);
            }
        )*
    };
}

goldens! {
    ipv6_empty_inbound_ports => "ipv6-empty-inbound-ports",
    ip_range => "ip-range",
    tproxy => "tproxy",
    ipv6_inbound_ports => "ipv6-inbound-ports",
    ipv6_virt_interfaces => "ipv6-virt-interfaces",
    ipv6_ipnets => "ipv6-ipnets",
    ipv6_uid_gid => "ipv6-uid-gid",
    ipv6_outbound_ports => "ipv6-outbound-ports",
    empty => "empty",
    kube_virt_interfaces => "kube-virt-interfaces",
    ipnets => "ipnets",
    ipnets_with_kube_virt_interfaces => "ipnets-with-kube-virt-interfaces",
    inbound_ports_include => "inbound-ports-include",
    inbound_ports_wildcard => "inbound-ports-wildcard",
    inbound_ports_tproxy => "inbound-ports-tproxy",
    inbound_ports_wildcard_tproxy => "inbound-ports-wildcard-tproxy",
    dns_uid_gid => "dns-uid-gid",
    ipv6_dns_uid_gid => "ipv6-dns-uid-gid",
    outbound_owner_groups => "outbound-owner-groups",
    outbound_owner_groups_exclude => "outbound-owner-groups-exclude",
    ipv6_dns_outbound_owner_groups => "ipv6-dns-outbound-owner-groups",
    ipv6_dns_outbound_owner_groups_exclude => "ipv6-dns-outbound-owner-groups-exclude",
    outbound_ports_include => "outbound-ports-include",
    loopback_outbound_iprange => "loopback-outbound-iprange",
    basic_exclude_nic => "basic-exclude-nic",
    drop_invalid => "drop-invalid",
    host_ipv4_loopback_cidr => "host-ipv4-loopback-cidr",
    inbound_ports_empty_tproxy => "inbound-ports-empty-tproxy",
}

#[test]
fn every_nft_golden_has_exactly_one_case() {
    let on_disk = golden_names(&testdata("nftables/capture"));
    let mut cases: Vec<String> = all_cases().map(|(name, _)| (*name).to_owned()).collect();
    cases.sort();
    assert_eq!(cases, on_disk, "every golden file has exactly one case");
    let mut tested: Vec<String> = TESTED.iter().map(|n| (*n).to_owned()).collect();
    tested.sort();
    assert_eq!(tested, on_disk, "every golden file has exactly one test");
}

/// nft refuses a transaction that jumps to a chain it does not declare: every case's ruleset
/// declares each chain it jumps to, and declares no chain without rules.
#[test]
fn every_jump_targets_a_declared_chain() {
    for (name, _) in all_cases() {
        let ruleset = plan(&spec_of(name));
        for table in &ruleset.tables {
            for op in &table.operations {
                assert!(
                    table.chain(op.chain).is_some(),
                    "{name}: rule in undeclared {:?}",
                    op.chain
                );
                for s in &op.rule.statements {
                    if let Statement::Verdict(Verdict::Jump(to)) = s {
                        assert!(table.chain(*to).is_some(), "{name}: jump to undeclared {to:?}");
                    }
                }
            }
            for chain in &table.chains {
                assert!(
                    table.operations.iter().any(|op| op.chain == chain.name),
                    "{name}: {:?} declared without rules",
                    chain.name
                );
            }
        }
    }
}

/// Compiled for the kernel, each case is object for object what nft 1.0.x makes of Istio's
/// golden (`nft -f` in one scratch namespace, listed back over netlink), and written by our
/// encoder into another namespace it prints as the same `nft list ruleset`, which is the
/// listing committed in testdata/nftables-listing/ (so nft lists our rules without error).
#[test]
fn every_golden_compiles_to_what_nft_makes_of_it() {
    let test = "every_golden_compiles_to_what_nft_makes_of_it";
    let names = scratch::goldens();
    assert_eq!(names.len(), 28);
    for name in names {
        let compiled =
            compile(&plan(&spec_of(&name)), &IstioAccounts).unwrap_or_else(|e| panic!("{name}: {e}"));
        let Some((theirs, text)) = scratch::in_scratch_netns(test, || {
            scratch::load(&scratch::golden_script(&name));
            let tables: Vec<_> = compiled
                .iter()
                .map(|c| list(NfProto::Inet, Some(&c.table.name)).unwrap())
                .collect();
            (tables, scratch::ruleset())
        }) else {
            return;
        };
        for (ours, listed) in compiled.iter().zip(&theirs) {
            let table = &ours.table.name;
            assert_eq!(
                listed.tables,
                std::slice::from_ref(&ours.table),
                "{name}: table {table}"
            );
            assert_eq!(listed.chains, ours.chains, "{name}: chains of {table}");
            for (i, (l, o)) in listed.rules.iter().zip(&ours.rules).enumerate() {
                assert_eq!(l, o, "{name}: rule {i} of {table} (chain {})", o.chain);
            }
            assert_eq!(listed.rules.len(), ours.rules.len(), "{name}: rules of {table}");
        }
        let our_text = scratch::in_scratch_netns(test, || {
            let mut batch = Batch::new();
            for table in &compiled {
                table.add_to(&mut batch);
            }
            batch
                .commit()
                .unwrap_or_else(|e| panic!("{name}: {}", capture_core::chain(&e)));
            scratch::ruleset()
        })
        .unwrap();
        assert_same(&format!("{name}: nft list ruleset"), &text, &our_text);
        // And what nft 1.0.x prints is the committed listing (CAPTURE_BLESS=1 writes it anew).
        let listing = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata/nftables-listing")
            .join(format!("{name}.txt"));
        if std::env::var_os("CAPTURE_BLESS").is_some() {
            std::fs::write(&listing, &our_text).unwrap();
        }
        let committed = std::fs::read_to_string(&listing)
            .unwrap_or_else(|e| panic!("{}: {e} (CAPTURE_BLESS=1 writes it)", listing.display()));
        assert_same(&format!("{name}: committed nft listing"), &committed, &our_text);
    }
}

/// Everything the namespace's nf_tables holds, as objects and as nft prints it.
fn state() -> (capture_core::nfnetlink::Listing, String) {
    let mut listing = list(NfProto::Unspec, None).unwrap();
    listing.generation = 0;
    (listing, scratch::ruleset())
}

/// TPROXY capture in place (three families' worth of rules in nat and mangle); a reconcile to
/// REDIRECT capture, whose one transaction deletes both tables and adds the new nat table, is
/// refused by the kernel at its last rule (a jump to a chain that does not exist): nothing of
/// it happened, in any table or family.
#[test]
fn a_refused_replacement_leaves_every_table_as_it_was() {
    let test = "a_refused_replacement_leaves_every_table_as_it_was";
    scratch::in_scratch_netns(test, || {
        lo_up();
        let mut before = CaptureSpec::sidecar();
        before.ipv6 = true;
        before.inbound.mode = InterceptMode::Tproxy {
            mark: Mark::new(1337),
            route_table: RouteTable::new(133),
        };
        Nftables
            .install(&before, ApplyOptions::default())
            .unwrap_or_else(|e| panic!("{}", capture_core::chain(&*e)));
        let old = state();
        assert!(old.1.contains("table inet istio-proxy-mangle"), "{}", old.1);

        let (present, generation) = current().unwrap();
        let mut after = CaptureSpec::sidecar();
        after.ipv6 = true;
        let compiled = compile(&plan(&after), &SystemAccounts).unwrap();
        let mut batch = replacement(&present, &compiled, generation);
        let nat = &compiled[0];
        let output: &Chain = nat.chains.iter().find(|c| c.name == "istio-output").unwrap();
        batch.add_rule(Rule::new(
            output,
            vec![Expr::Verdict(NlVerdict::Jump("no-such-chain".into()))],
        ));
        let e = batch.commit().unwrap_err();
        let said = capture_core::chain(&e);
        assert!(said.contains("istio-output"), "{said}");
        assert_eq!(state(), old, "a refused transaction changes nothing");
    });
}

/// Brings `lo` up in the calling thread's namespace (TPROXY's local route needs it).
fn lo_up() {
    scratch::run("ip", &["link", "set", "lo", "up"]);
}
