//! The nf_tables netlink layer against the real kernel and Debian's nft 1.0.x.
//!
//! Every test runs in fresh network namespaces private to a thread
//! (`capture_core::host::run_in_scratch_netns`), which die with it: the machine's own ruleset is
//! never read or touched, and nothing is left behind. Needs root (skipped otherwise, failing when
//! `CI` is set) and the `nft` binary, which only the tests run: to load Istio's goldens as Istio
//! does, and to print what the kernel holds as nft sees it.

#[path = "../scratch/mod.rs"]
mod scratch;

use capture_core::nfnetlink::{
    Batch, Chain, ChainType, Error, Expr, Hook, Listing, NfProto, Op, Position, Rule, Subject, Table,
    Verdict, list,
};
use nix::errno::Errno;

#[track_caller]
fn assert_same_text(what: &str, expected: &str, actual: &str) {
    if expected != actual {
        let diff = similar::TextDiff::from_lines(expected, actual);
        panic!("{what}\n{}", diff.unified_diff().header("expected", "actual"));
    }
}

mod build;

use scratch::{golden_script, goldens, in_scratch_netns, load, ruleset};

use build::every_kind;

/// What nft 1.0.x prints for [`every_kind`].
const EVERY_KIND: &str = include_str!("every-kind.txt");

/// [`every_kind`] in nft's syntax.
const EVERY_KIND_SCRIPT: &str = include_str!("every-kind.nft");

/// That `listing` holds exactly these objects, rules listed chain by chain; names the first
/// difference.
#[track_caller]
fn assert_listed(listing: &Listing, tables: &[Table], chains: &[Chain], rules: &[Rule]) {
    assert_eq!(listing.tables, tables);
    assert_eq!(listing.chains, chains);
    let mut expected = Vec::new();
    for chain in chains {
        expected.extend(
            rules
                .iter()
                .filter(|r| (r.family, &r.table, &r.chain) == (chain.family, &chain.table, &chain.name)),
        );
    }
    for (i, (listed, rule)) in listing.rules.iter().zip(&expected).enumerate() {
        assert_eq!(listed, *rule, "rule {i} of the listing");
    }
    assert_eq!(listing.rules.len(), expected.len(), "number of rules");
}

fn commit_all(tables: &[Table], chains: &[Chain], rules: &[Rule]) {
    let mut batch = Batch::new();
    for t in tables {
        batch.add_table(t.clone());
    }
    for c in chains {
        batch.add_chain(c.clone());
    }
    for r in rules {
        batch.add_rule(r.clone());
    }
    batch
        .commit()
        .unwrap_or_else(|e| panic!("{}", capture_core::chain(&e)));
}

#[test]
fn every_expression_kind_lists_as_nft_prints_it() {
    let test = "every_expression_kind_lists_as_nft_prints_it";
    let Some(ours) = in_scratch_netns(test, || {
        let (tables, chains, rules) = every_kind();
        commit_all(&tables, &chains, &rules);
        assert_listed(&list(NfProto::Inet, None).unwrap(), &tables, &chains, &rules);
        ruleset()
    }) else {
        return;
    };
    assert_same_text("nft list ruleset after our batch", EVERY_KIND, &ours);
    // nft's own encoding of the same rules lists the same, and decodes to the same objects.
    let theirs = in_scratch_netns(test, || {
        load(EVERY_KIND_SCRIPT);
        let (tables, chains, rules) = every_kind();
        assert_listed(&list(NfProto::Inet, None).unwrap(), &tables, &chains, &rules);
        ruleset()
    })
    .unwrap();
    assert_same_text("nft list ruleset after nft -f", EVERY_KIND, &theirs);
}

/// The messages of an encoded batch: type and everything after the netlink header.
fn messages(batch: &[u8]) -> Vec<(u16, Vec<u8>)> {
    let mut out = Vec::new();
    let mut rest = batch;
    while !rest.is_empty() {
        let len = u32::from_ne_bytes(rest[..4].try_into().unwrap()) as usize;
        out.push((u16::from_ne_bytes([rest[4], rest[5]]), rest[16..len].to_vec()));
        rest = &rest[len..];
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn batch_encodes_golden_lines_byte_for_byte_as_nft() {
    let mut batch = Batch::new();
    for op in build::tproxy_subset() {
        batch.push(op);
    }
    let ours = messages(&batch.encode().unwrap());
    let nft: Vec<(u16, String)> = include_str!("tproxy-subset.hex")
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let (kind, payload) = l.split_once(' ').unwrap();
            (kind.parse().unwrap(), payload.to_owned())
        })
        .collect();
    for (i, ((kind, payload), (nft_kind, nft_payload))) in ours.iter().zip(&nft).enumerate() {
        assert_eq!(
            (*kind, hex(payload)),
            (*nft_kind, nft_payload.clone()),
            "message {i} of the batch (0 is its begin message)"
        );
    }
    assert_eq!(ours.len(), nft.len(), "number of messages");
}

#[test]
fn index_with_no_rule_there_is_refused_before_sending() {
    let table = build::inet_table("t");
    let chain = build::chain(&table, "c", None);
    let mut batch = Batch::new();
    batch.add_table(table).add_chain(chain.clone());
    batch.add_rule(Rule::new(&chain, vec![Expr::Counter]));
    batch.add_rule(build::at(
        Position::Index(1),
        Rule::new(&chain, vec![Expr::Counter]),
    ));
    let err = batch.encode().unwrap_err();
    assert_eq!(
        err.to_string(),
        "adding rule 2 in inet t c: no rule at index 1 (the batch has put 1 in that chain before it)"
    );
}

/// Rules in the order a chain holds them after `rules` are added in turn.
fn chain_order(rules: Vec<Rule>) -> Vec<Rule> {
    let mut chains: Vec<(String, Vec<Rule>)> = Vec::new();
    for rule in rules {
        let at = match chains.iter().position(|(name, _)| *name == rule.chain) {
            Some(at) => at,
            None => {
                chains.push((rule.chain.clone(), Vec::new()));
                chains.len() - 1
            }
        };
        let list = &mut chains[at].1;
        match rule.position {
            Position::Index(i) => list.insert(
                i,
                Rule {
                    position: Position::Append,
                    ..rule
                },
            ),
            _ => list.push(rule),
        }
    }
    chains.into_iter().flat_map(|(_, rules)| rules).collect()
}

#[test]
fn golden_rules_decode_as_built_by_hand() {
    let test = "golden_rules_decode_as_built_by_hand";
    let Some(listing) = in_scratch_netns(test, || {
        load(&golden_script("tproxy"));
        list(NfProto::Inet, None).unwrap()
    }) else {
        return;
    };
    let (mut nat, mut mangle) = (Vec::new(), Vec::new());
    for op in build::tproxy_subset() {
        match op {
            Op::AddRule(rule) if rule.table == "istio-proxy-nat" => nat.push(rule),
            Op::AddRule(rule) => mangle.push(rule),
            Op::AddChain(chain) if chain.table == "istio-proxy-mangle" => {
                assert!(listing.chains.contains(&chain), "{chain} is not listed as built");
            }
            _ => {}
        }
    }
    // Some of nat's rules, each where nft put it ...
    for rule in &nat {
        assert!(listing.rules.contains(rule), "not listed as built: {rule:?}");
    }
    // ... and all of mangle, in order, the rules inserted by index included.
    let listed: Vec<&Rule> = listing
        .rules
        .iter()
        .filter(|r| r.table == "istio-proxy-mangle")
        .collect();
    let built = chain_order(mangle);
    assert_eq!(listed.len(), built.len(), "rules of istio-proxy-mangle");
    for (i, (listed, built)) in listed.into_iter().zip(&built).enumerate() {
        assert_eq!(listed, built, "rule {i} of istio-proxy-mangle");
    }

    let listing = in_scratch_netns(test, || {
        load(&golden_script("ipv6-ipnets"));
        list(NfProto::Inet, Some("istio-proxy-nat")).unwrap()
    })
    .unwrap();
    let prerouting: Vec<Rule> = listing
        .rules
        .iter()
        .filter(|r| r.chain == "prerouting")
        .cloned()
        .collect();
    assert_eq!(prerouting, build::ipv6_ipnets_prerouting());
}

#[test]
fn every_golden_round_trips_through_decoder_and_encoder() {
    let test = "every_golden_round_trips_through_decoder_and_encoder";
    let names = goldens();
    assert_eq!(names.len(), 28, "Istio's capture goldens");
    for name in names {
        // What nft made of the golden: as objects, and as nft prints it.
        let Some((theirs, text)) = in_scratch_netns(test, || {
            load(&golden_script(&name));
            (list(NfProto::Unspec, None).unwrap(), ruleset())
        }) else {
            return;
        };
        let unknown: Vec<&Expr> = theirs
            .rules
            .iter()
            .flat_map(|r| &r.exprs)
            .filter(|e| matches!(e, Expr::Unknown { .. }))
            .collect();
        assert!(unknown.is_empty(), "{name}: expressions not decoded: {unknown:?}");
        // The same objects, written by our encoder into a fresh namespace.
        let (ours, our_text) = in_scratch_netns(test, || {
            Batch::recreate(&theirs)
                .commit()
                .unwrap_or_else(|e| panic!("{name}: {}", capture_core::chain(&e)));
            (list(NfProto::Unspec, None).unwrap(), ruleset())
        })
        .unwrap();
        assert_same_text(
            &format!("{name}: nft list ruleset of nft's and of ours"),
            &text,
            &our_text,
        );
        assert_eq!(
            Listing {
                generation: 0,
                ..ours
            },
            Listing {
                generation: 0,
                ..theirs
            },
            "{name}: listings"
        );
    }
}

/// Everything the kernel holds, and nft's text of it.
fn state() -> (Listing, String) {
    let listing = list(NfProto::Unspec, None).unwrap();
    (
        Listing {
            generation: 0,
            ..listing
        },
        ruleset(),
    )
}

#[test]
fn batch_refused_part_way_changes_nothing_and_names_the_rule() {
    in_scratch_netns(
        "batch_refused_part_way_changes_nothing_and_names_the_rule",
        || {
            load(&golden_script("tproxy"));
            let before = state();
            assert!(before.0.rules.len() > 40, "the golden is loaded");

            let nat = build::inet_table("istio-proxy-nat");
            let fresh = build::inet_table("capture-fresh");
            let fresh_chain = build::chain(&fresh, "output", Some((ChainType::Filter, Hook::Output, 0)));
            let output = before
                .0
                .chains
                .iter()
                .find(|c| c.table == nat.name && c.name == "istio-output")
                .unwrap();
            let mut batch = Batch::new();
            // Valid changes to a new table and to the loaded ones, across families ...
            batch.add_table(fresh).add_chain(fresh_chain.clone());
            batch.add_rule(Rule::new(
                &fresh_chain,
                vec![Expr::Counter, Expr::Verdict(Verdict::Accept)],
            ));
            batch.flush_table(&nat);
            batch.add_table(Table::new(NfProto::Ipv6, "capture-fresh6"));
            batch.add_rule(Rule::new(
                output,
                vec![Expr::Counter, Expr::Verdict(Verdict::Return)],
            ));
            // ... then a jump to a chain that does not exist, then more valid ones.
            batch.add_rule(Rule::new(
                output,
                vec![
                    Expr::Counter,
                    Expr::Verdict(Verdict::Jump("no-such-chain".into())),
                ],
            ));
            batch.add_rule(Rule::new(output, vec![Expr::Counter]));
            let err = batch.commit().unwrap_err();
            let Error::Refused { subject, errno, .. } = &err else {
                panic!("{err:?}");
            };
            assert_eq!(*errno, Errno::ENOENT);
            assert_eq!(
                **subject,
                Subject::AddRule {
                    family: NfProto::Inet,
                    table: "istio-proxy-nat".into(),
                    chain: "istio-output".into(),
                    number: 2,
                    expression: Some((2, "immediate".into())),
                }
            );
            assert_eq!(
                capture_core::chain(&err),
                "adding rule 2 in inet istio-proxy-nat istio-output (expression 2: immediate) failed: \
             ENOENT: No such file or directory"
            );
            let after = state();
            assert_eq!(after.0, before.0, "the listing after the refused batch");
            assert_same_text("nft list ruleset after the refused batch", &before.1, &after.1);
        },
    );
}

#[test]
fn tables_of_every_family_are_deleted_in_one_batch() {
    in_scratch_netns("tables_of_every_family_are_deleted_in_one_batch", || {
        let tables = [
            Table::new(NfProto::Inet, "capture-a"),
            Table::new(NfProto::Ipv4, "capture-b"),
            Table::new(NfProto::Ipv6, "capture-c"),
        ];
        let mut batch = Batch::new();
        for table in &tables {
            let chain = build::chain(table, "output", Some((ChainType::Nat, Hook::Output, -100)));
            batch.add_table(table.clone()).add_chain(chain.clone());
            batch.add_rule(Rule::new(&chain, build::redirect(15001).to_vec()));
        }
        batch.commit().unwrap();
        assert_eq!(list(NfProto::Unspec, None).unwrap().tables, tables);

        // Deleting a table that is not there fails the whole batch ...
        let mut batch = Batch::new();
        batch
            .delete_table(&tables[0])
            .delete_table(&Table::new(NfProto::Inet, "absent"));
        let err = batch.commit().unwrap_err();
        assert_eq!(
            capture_core::chain(&err),
            "deleting table inet absent failed: ENOENT: No such file or directory"
        );
        assert_eq!(list(NfProto::Unspec, None).unwrap().tables, tables);

        // ... unless it is added first, as Istio's cleanup does.
        let mut batch = Batch::new();
        let absent = Table::new(NfProto::Inet, "absent");
        batch.add_table(absent.clone()).delete_table(&absent);
        for table in &tables {
            batch.delete_table(table);
        }
        batch.commit().unwrap();
        let left = list(NfProto::Unspec, None).unwrap();
        assert_eq!(
            (left.tables.len(), left.chains.len(), left.rules.len()),
            (0, 0, 0)
        );
        assert_eq!(ruleset(), "");
    });
}

#[test]
fn batch_planned_from_an_old_generation_is_refused() {
    in_scratch_netns("batch_planned_from_an_old_generation_is_refused", || {
        let table = build::inet_table("capture-gen");
        let mut batch = Batch::new();
        batch.add_table(table.clone());
        batch.commit().unwrap();
        let read = list(NfProto::Inet, None).unwrap();

        // Someone else changes the ruleset after it was read ...
        let mut other = Batch::new();
        other.add_table(build::inet_table("someone-else"));
        other.commit().unwrap();

        // ... so a batch planned from what was read changes nothing.
        let mut batch = Batch::new();
        batch.delete_table(&table).expect_generation(read.generation);
        let err = batch.commit().unwrap_err();
        assert!(
            matches!(err, Error::Changed { expected } if expected == read.generation),
            "{err:?}"
        );
        assert_eq!(list(NfProto::Inet, None).unwrap().tables.len(), 2);

        let now = list(NfProto::Inet, None).unwrap();
        batch.expect_generation(now.generation).commit().unwrap();
        assert_eq!(
            list(NfProto::Inet, None).unwrap().tables,
            [build::inet_table("someone-else")]
        );
    });
}

#[test]
fn rules_go_before_and_after_listed_handles() {
    in_scratch_netns("rules_go_before_and_after_listed_handles", || {
        let table = build::inet_table("capture-handles");
        let chain = build::chain(&table, "c", None);
        let numbered = |n: u32| Rule::new(&chain, build::set_mark(n).to_vec());
        let mut batch = Batch::new();
        batch.add_table(table).add_chain(chain.clone());
        batch.add_rule(numbered(1)).add_rule(numbered(2));
        batch.commit().unwrap();
        let listed = list(NfProto::Inet, None).unwrap().rules;
        let second = listed[1].handle.expect("listed rules have handles");
        assert_ne!(listed[0].handle, listed[1].handle);

        let mut batch = Batch::new();
        batch.add_rule(build::at(Position::Before(second), numbered(3)));
        batch.add_rule(build::at(Position::After(second), numbered(4)));
        batch.add_rule(build::at(Position::Prepend, numbered(5)));
        batch.commit().unwrap();
        let rules = list(NfProto::Inet, None).unwrap().rules;
        assert_eq!(rules, [5, 1, 3, 2, 4].map(numbered));
    });
}

#[test]
fn large_batch_is_acknowledged_whole() {
    in_scratch_netns("large_batch_is_acknowledged_whole", || {
        // 3,000 rules with a set each: 9,000 messages, about 1.5 MiB, far past the socket
        // buffers' defaults.
        let table = build::inet_table("capture-large");
        let chain = build::chain(&table, "c", None);
        let mut batch = Batch::new();
        batch.add_table(table).add_chain(chain.clone());
        for n in 0..3000_u16 {
            let mut exprs =
                build::ports_not_in(capture_core::nfnetlink::PortField::Destination, &[n, n + 1]).to_vec();
            exprs.push(Expr::Counter);
            batch.add_rule(Rule::new(&chain, exprs));
        }
        let bytes = batch.encode().unwrap().len();
        assert!(bytes > 1 << 20, "{bytes} bytes");
        batch.commit().unwrap();
        assert_eq!(list(NfProto::Inet, None).unwrap().rules.len(), 3000);
    });
}

/// Listing a table that does not exist lists nothing (a filtered dump of it is refused with
/// ENOENT, which must not read as "changed while listed").
#[test]
fn a_missing_table_lists_as_nothing() {
    let Some(listing) = in_scratch_netns("a_missing_table_lists_as_nothing", || {
        list(NfProto::Inet, Some("istio-proxy-nat")).map_err(|e| capture_core::chain(&e))
    }) else {
        return;
    };
    let listing = listing.unwrap();
    assert!(listing.tables.is_empty() && listing.chains.is_empty() && listing.rules.is_empty());
}
