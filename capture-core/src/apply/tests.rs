//! Unit tests of the iptables backend against recorded `iptables-save` output and a model of
//! `iptables-restore`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Write as _};

use super::compare::*;
use super::exec::*;
use super::payload::*;
use super::saved::*;
use super::*;
use crate::plan::plan;
use crate::rules::TableName;

/// `iptables-save` after applying the default sidecar's IPv4 rules (iptables 1.8.9; legacy and
/// nft print the same rules).
const SAVED_SIDECAR: &str = include_str!("../../testdata/sidecar.v4.save");

fn sidecar_expected() -> BTreeMap<TableName, ExpectedTable> {
    expected(&plan(&CaptureSpec::sidecar(), Family::V4))
}

#[test]
fn saved_form_matches_iptables_save() {
    assert_eq!(
        compare(&sidecar_expected(), &SavedState::parse(SAVED_SIDECAR)),
        State::Equal
    );
}

#[test]
fn absent_when_only_foreign_rules() {
    let foreign = "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -j RETURN\nCOMMIT\n";
    assert_eq!(
        compare(&sidecar_expected(), &SavedState::parse(foreign)),
        State::Absent
    );
}

#[test]
fn drift_is_described() {
    let tampered = SAVED_SIDECAR.replace("--dport 15021 -j RETURN", "--dport 15022 -j RETURN");
    let State::Differs(details) = compare(&sidecar_expected(), &SavedState::parse(&tampered)) else {
        panic!("tampering must show")
    };
    assert_eq!(
        details,
        [
            "nat ISTIO_INBOUND: rule 3 is '-p tcp -m tcp --dport 15022 -j RETURN' \
          instead of '-p tcp -m tcp --dport 15021 -j RETURN'"
        ]
    );
    let fewer = SAVED_SIDECAR.replace("-A ISTIO_INBOUND -p tcp -m tcp --dport 15021 -j RETURN\n", "");
    let State::Differs(details) = compare(&sidecar_expected(), &SavedState::parse(&fewer)) else {
        panic!("a missing rule must show")
    };
    assert_eq!(
        details,
        [
            "nat ISTIO_INBOUND has 4 rules, 5 expected; rule 3 is '-p tcp -m tcp --dport 15020 -j RETURN' \
          instead of '-p tcp -m tcp --dport 15021 -j RETURN'"
        ]
    );
    let missing_jump = SAVED_SIDECAR.replace("-A OUTPUT -j ISTIO_OUTPUT\n", "");
    let State::Partial(details) = compare(&sidecar_expected(), &SavedState::parse(&missing_jump)) else {
        panic!("a missing jump must show")
    };
    assert_eq!(details, ["nat OUTPUT lacks '-j ISTIO_OUTPUT'"]);
}

/// The counts are said only when they differ, in words that agree with the number, and the
/// first rule that differs is named whichever list is longer.
#[test]
fn chain_rule_differences_read_right() {
    let differs = |found, expected, at, found_rule: Option<&str>, expected_rule: Option<&str>| {
        Difference::ChainRules {
            table: TableName::Nat,
            chain: "ISTIO_OUTPUT".into(),
            found,
            expected,
            at,
            found_rule: found_rule.map(str::to_owned),
            expected_rule: expected_rule.map(str::to_owned),
        }
        .to_string()
    };
    assert_eq!(
        differs(1, 1, 0, Some("-j RETURN"), Some("-j ISTIO_REDIRECT")),
        "nat ISTIO_OUTPUT: rule 1 is '-j RETURN' instead of '-j ISTIO_REDIRECT'"
    );
    assert_eq!(
        differs(1, 2, 1, None, Some("-j ISTIO_REDIRECT")),
        "nat ISTIO_OUTPUT has 1 rule, 2 expected; rule 2 '-j ISTIO_REDIRECT' is missing"
    );
    assert_eq!(
        differs(2, 1, 1, Some("-j RETURN"), None),
        "nat ISTIO_OUTPUT has 2 rules, 1 expected; rule 2 '-j RETURN' is not part of this configuration"
    );
    assert_eq!(
        differs(0, 1, 0, None, Some("-j RETURN")),
        "nat ISTIO_OUTPUT has no rules, 1 expected; rule 1 '-j RETURN' is missing"
    );
}

#[test]
fn reconcile_flushes_refills_and_drops_stale_chains_in_one_commit() {
    let saved = SavedState::parse(&SAVED_SIDECAR.replace(
        ":ISTIO_REDIRECT - [0:0]",
        ":ISTIO_REDIRECT - [0:0]\n:ISTIO_DROP - [0:0]",
    ));
    let rules = plan(&CaptureSpec::sidecar(), Family::V4);
    let payload = reconcile_payload(&rules, &expected(&rules), &saved);
    assert!(payload.starts_with("*nat\n:ISTIO_INBOUND - [0:0]\n"), "{payload}");
    assert!(
        payload.contains("-D PREROUTING -p tcp -j ISTIO_INBOUND\n-D OUTPUT -j ISTIO_OUTPUT\n"),
        "{payload}"
    );
    assert!(
        payload.ends_with("-A ISTIO_OUTPUT -j ISTIO_REDIRECT\n-X ISTIO_DROP\nCOMMIT\n"),
        "{payload}"
    );
    assert_eq!(payload.matches("COMMIT").count(), 1);
}

/// `iptables-save` after `-m TPROXY -c eth0 -k veth9` with the sidecar's other flags
/// (iptables 1.8.9 legacy).
const SAVED_TPROXY: &str = include_str!("../../testdata/tproxy-exclude-ifaces.v4.save");

/// A table-by-table model of what `iptables-restore --noflush` does with a payload, enough
/// for the payloads capture writes: `:CHAIN` creates or flushes, `-N`, `-A`, `-I [n]`, `-D`,
/// `-F`, `-X`.
fn simulate(state: &str, payload: &str) -> String {
    let mut tables: BTreeMap<String, Vec<(String, Vec<String>)>> = BTreeMap::new();
    let mut current = String::new();
    for line in state.lines() {
        if let Some(t) = line.strip_prefix('*') {
            current = t.to_owned();
            tables.entry(current.clone()).or_default();
        } else if let Some(decl) = line.strip_prefix(':') {
            let name = decl.split_whitespace().next().unwrap().to_owned();
            tables.get_mut(&current).unwrap().push((name, Vec::new()));
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let (chain, spec) = rule.split_once(' ').unwrap();
            let chains = tables.get_mut(&current).unwrap();
            chains
                .iter_mut()
                .find(|(n, _)| n == chain)
                .unwrap()
                .1
                .push(spec.to_owned());
        }
    }
    for line in payload.lines() {
        if let Some(t) = line.strip_prefix('*') {
            current = t.to_owned();
            tables.entry(current.clone()).or_default();
            continue;
        }
        let chains = tables.get_mut(&current).unwrap();
        let find = |chains: &mut Vec<(String, Vec<String>)>, name: &str| {
            chains
                .iter()
                .position(|(n, _)| n == name)
                .unwrap_or_else(|| panic!("no chain {name}: {line}"))
        };
        let words: Vec<&str> = line.splitn(3, ' ').collect();
        match words.as_slice() {
            ["COMMIT"] => {}
            [decl, ..] if decl.starts_with(':') => {
                let name = &decl[1..];
                match chains.iter_mut().find(|(n, _)| n == name) {
                    Some((_, rules)) => rules.clear(),
                    None => chains.push((name.to_owned(), Vec::new())),
                }
            }
            ["-N", name] => {
                assert!(chains.iter().all(|(n, _)| n != name), "chain {name} exists");
                chains.push(((*name).to_owned(), Vec::new()));
            }
            ["-A", chain, spec] => {
                let i = find(chains, chain);
                chains[i].1.push((*spec).to_owned());
            }
            ["-I", chain, rest] => {
                let i = find(chains, chain);
                let (at, spec) = match rest.split_once(' ') {
                    Some((n, spec)) if n.parse::<usize>().is_ok() => (n.parse::<usize>().unwrap(), spec),
                    _ => (1, *rest),
                };
                assert!(at <= chains[i].1.len() + 1, "index {at} too large: {line}");
                chains[i].1.insert(at - 1, spec.to_owned());
            }
            ["-D", chain, spec] => {
                let i = find(chains, chain);
                let at = chains[i]
                    .1
                    .iter()
                    .position(|r| r == spec)
                    .unwrap_or_else(|| panic!("no rule: {line}"));
                chains[i].1.remove(at);
            }
            ["-F", chain] => {
                let i = find(chains, chain);
                chains[i].1.clear();
            }
            ["-X", chain] => {
                let i = find(chains, chain);
                chains.remove(i);
            }
            _ => panic!("cannot simulate '{line}'"),
        }
    }
    let mut out = String::new();
    for (table, chains) in &tables {
        let _ = writeln!(out, "*{table}");
        for (name, _) in chains {
            let policy = if BUILTINS.contains(&name.as_str()) {
                "ACCEPT"
            } else {
                "-"
            };
            let _ = writeln!(out, ":{name} {policy} [0:0]");
        }
        for (name, rules) in chains {
            for rule in rules {
                let _ = writeln!(out, "-A {name} {rule}");
            }
        }
        out.push_str("COMMIT\n");
    }
    out
}

fn chains(text: &str) -> BTreeMap<TableName, BTreeMap<String, Vec<String>>> {
    SavedState::parse(text)
        .tables
        .into_iter()
        .map(|(name, t)| (name, t.chains))
        .collect()
}

/// Two families' rules behind a fake [`Exec`]: `*-save` prints a family's rules; a restore
/// of Istio's payload (it creates chains with `-N`) installs `SAVED_SIDECAR`, as the kernel
/// would print it; any other restore is carried out by [`simulate`]; `failing` fails without
/// changing anything. Every call is logged.
/// With `probes`, it answers [`Exec::pristine`] as the system does: no tables when it holds
/// no rules.
struct FakeKernel {
    rules: std::cell::RefCell<BTreeMap<bool, String>>,
    failing: &'static str,
    calls: std::cell::RefCell<Vec<String>>,
    probes: bool,
    legacy_unreadable: bool,
}

impl FakeKernel {
    fn failing(program: &'static str) -> Self {
        Self {
            rules: std::cell::RefCell::default(),
            failing: program,
            calls: std::cell::RefCell::default(),
            probes: false,
            legacy_unreadable: false,
        }
    }

    fn probing(self) -> Self {
        Self { probes: true, ..self }
    }

    fn with(self, v4: &str, v6: &str) -> Self {
        self.rules.borrow_mut().insert(false, v4.to_owned());
        self.rules.borrow_mut().insert(true, v6.to_owned());
        self
    }
}

impl Exec for &FakeKernel {
    fn pristine(&self, flavor: Flavor, families: &[Family]) -> Option<Pristine> {
        if self.legacy_unreadable && flavor == Flavor::Legacy {
            return None;
        }
        let rules = self.rules.borrow();
        let empty = families
            .iter()
            .all(|f| rules.get(&(*f == Family::V6)).is_none_or(String::is_empty));
        (self.probes && empty).then_some(Pristine::NoTables)
    }

    fn unusable(&self, flavor: Flavor) -> Option<String> {
        (self.legacy_unreadable && flavor == Flavor::Legacy).then(|| "permission denied".to_owned())
    }

    fn run(&self, program: &str, args: &[&str], stdin: Option<&str>) -> io::Result<Output> {
        if self.legacy_unreadable && program.contains("legacy") {
            self.calls.borrow_mut().push(program.to_owned());
            return Ok(Output {
                success: false,
                code: Some(1),
                stdout: String::new(),
                stderr: "permission denied".to_owned(),
            });
        }
        self.calls
            .borrow_mut()
            .push(format!("{program} {}", args.join(" ")).trim_end().to_owned());
        let output = |success: bool, stdout: String| Output {
            success,
            code: Some(if success { 0 } else { 1 }),
            stdout,
            stderr: if success {
                String::new()
            } else {
                "injected".to_owned()
            },
        };
        if program == self.failing {
            return Ok(output(false, String::new()));
        }
        if program == "iptables" {
            return Ok(output(true, "iptables v1.8.9 (nf_tables)\n".to_owned()));
        }
        let mut rules = self.rules.borrow_mut();
        let current = rules.entry(program.starts_with("ip6")).or_default();
        if program.ends_with("-save") {
            return Ok(output(true, current.clone()));
        }
        assert!(
            args.contains(&"--noflush"),
            "capture only restores with --noflush"
        );
        let payload = stdin.unwrap_or_default();
        *current = if payload.lines().any(|l| l.starts_with("-N ")) {
            SAVED_SIDECAR.to_owned()
        } else {
            simulate(current, payload)
        };
        Ok(output(true, String::new()))
    }
}

const EMPTY_NAT: &str =
    "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -d 10.9.9.9/32 -j RETURN\nCOMMIT\n";

#[test]
fn failure_in_ipv6_rolls_back_ipv4_only() {
    let kernel = FakeKernel::failing("ip6tables-legacy-restore").with(EMPTY_NAT, EMPTY_NAT);
    let mut spec = CaptureSpec::sidecar();
    spec.ipv6 = true;
    let err = Iptables::new(&kernel, Flavor::Legacy)
        .apply(&spec, ApplyOptions::default())
        .unwrap_err();
    assert!(
        matches!(&err, ApplyError::RolledBack { rolled_back, .. } if rolled_back == &[Family::V4]),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .ends_with("; nothing was left applied (changes to IPv4 were rolled back)"),
        "{err}"
    );
    // IPv6 read back unchanged, so the failing program is not run again to "undo" it.
    assert_eq!(
        *kernel.calls.borrow(),
        [
            "iptables-legacy-save",
            "ip6tables-legacy-save",
            "iptables-legacy-restore --noflush --wait 30",
            "ip6tables-legacy-restore --noflush --wait 30",
            "iptables-legacy-save",
            "iptables-legacy-restore --noflush --wait 30",
            "ip6tables-legacy-save",
        ]
    );
    // Our chains and rules are gone again; nothing else was touched.
    // (The fake's apply replaces the whole table, so only capture's absence can be checked.)
    let after = chains(&kernel.rules.borrow()[&false]);
    for (chain, rules) in &after[&TableName::Nat] {
        assert!(
            !chain.starts_with("ISTIO_") && rules.is_empty(),
            "{chain}: {rules:?}"
        );
    }
}

/// Nothing to compare: the two restores alone; a failing IPv6 one after them puts IPv4 back
/// to the nothing that was there (read back with `*-save`, as any rollback).
#[test]
fn a_pristine_namespace_is_applied_without_reading_and_rolled_back_to_nothing() {
    let mut spec = CaptureSpec::sidecar();
    spec.ipv6 = true;
    let kernel = FakeKernel::failing("none").probing();
    let applied = Iptables::new(&kernel, Flavor::Nft)
        .apply(&spec, ApplyOptions::default())
        .unwrap();
    assert_eq!(
        applied.changes,
        [(Family::V4, Change::Applied), (Family::V6, Change::Applied)]
    );
    assert_eq!(
        *kernel.calls.borrow(),
        ["iptables-nft-restore --noflush", "ip6tables-nft-restore --noflush"]
    );

    let kernel = FakeKernel::failing("ip6tables-legacy-restore").probing();
    let err = Iptables::new(&kernel, Flavor::Legacy)
        .apply(&spec, ApplyOptions::default())
        .unwrap_err();
    assert!(
        matches!(&err, ApplyError::RolledBack { rolled_back, .. } if rolled_back == &[Family::V4]),
        "{err:?}"
    );
    assert_eq!(
        *kernel.calls.borrow(),
        [
            "iptables-legacy-restore --noflush --wait 30",
            "ip6tables-legacy-restore --noflush --wait 30",
            "iptables-legacy-save",
            "iptables-legacy-restore --noflush --wait 30",
            "ip6tables-legacy-save",
        ]
    );
    for (chain, rules) in &chains(&kernel.rules.borrow()[&false])[&TableName::Nat] {
        assert!(
            !chain.starts_with("ISTIO_") && rules.is_empty(),
            "{chain}: {rules:?}"
        );
    }
}

/// A non-root run with capabilities cannot read legacy iptables' table list (nor can
/// `iptables-legacy-save`): with nothing in nft, detection picks nft without a program.
#[test]
fn detection_without_legacy_access_runs_nothing() {
    let mut kernel = FakeKernel::failing("none").probing();
    kernel.legacy_unreadable = true;
    let backend = Iptables::detect(&kernel).unwrap();
    assert_eq!(backend.flavor(), Flavor::Nft);
    assert_eq!(*kernel.calls.borrow(), Vec::<String>::new());
    // What reading the rules would have decided.
    kernel.probes = false;
    assert_eq!(Iptables::detect(&kernel).unwrap().flavor(), Flavor::Nft);
    assert!(kernel.calls.borrow().contains(&"iptables-legacy-save".to_owned()));
}

#[test]
fn failure_that_changed_nothing_is_reported_as_is() {
    let kernel = FakeKernel::failing("iptables-nft-restore");
    let err = Iptables::new(&kernel, Flavor::Nft)
        .apply(&CaptureSpec::sidecar(), ApplyOptions::default())
        .unwrap_err();
    assert!(matches!(err, ApplyError::Exec { code: Some(1), .. }), "{err:?}");
    assert_eq!(
        *kernel.calls.borrow(),
        [
            "iptables-nft-save",
            "iptables-nft-restore --noflush",
            "iptables-nft-save"
        ]
    );
}

#[test]
fn a_program_gets_all_of_its_input_and_reports_its_exit_status() {
    // Far more than a pipe holds: with a sealed memory file as stdin nothing blocks or breaks,
    // whether or not the program reads it.
    let input = "x".repeat(1 << 20);
    let out = SystemExec::default()
        .run("sh", &["-c", "echo boom >&2; exit 3"], Some(&input))
        .expect("runs");
    assert_eq!(
        out,
        Output {
            success: false,
            code: Some(3),
            stdout: String::new(),
            stderr: "boom\n".to_owned(),
        }
    );
    let out = SystemExec::default()
        .run("wc", &["-c"], Some(&input))
        .expect("runs");
    assert_eq!(out.stdout.trim(), (1 << 20).to_string());
}

#[test]
fn stdin_outlives_the_parent() {
    // The child reads its input after the writer is long gone: a pipe would give it EOF or a
    // truncated read; the memory file is whole.
    let fd = sealed_input("all of it\n").unwrap();
    let mut file = File::from(fd);
    let mut text = String::new();
    io::Read::read_to_string(&mut file, &mut text).unwrap();
    assert_eq!(text, "all of it\n");
    assert!(file.write_all(b"more").is_err(), "sealed against writes");
}

#[test]
fn cleanup_removes_only_ours() {
    let with_foreign = SAVED_SIDECAR.replace(
        "-A OUTPUT -j ISTIO_OUTPUT\n",
        "-A OUTPUT -j ISTIO_OUTPUT\n-A OUTPUT -d 8.8.8.8/32 -j RETURN\n",
    );
    let payload = cleanup_payload(&sidecar_expected(), &SavedState::parse(&with_foreign)).unwrap();
    assert!(!payload.contains("8.8.8.8"));
    assert!(payload.contains("-D OUTPUT -j ISTIO_OUTPUT\n"));
    assert!(payload.contains(":ISTIO_REDIRECT - [0:0]\n") && payload.contains("-X ISTIO_REDIRECT\n"));
    let after = chains(&simulate(&with_foreign, &payload));
    assert_eq!(after[&TableName::Nat]["OUTPUT"], ["-d 8.8.8.8/32 -j RETURN"]);
    assert!(after[&TableName::Nat].keys().all(|c| !c.starts_with("ISTIO_")));
    let bare = "*nat\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n";
    assert_eq!(
        cleanup_payload(&sidecar_expected(), &SavedState::parse(bare)),
        None
    );
}

/// Issue 8 item 5: cleanup with the default flags after `-m TPROXY -c eth0 -k veth9` removes
/// the interface RETURNs and the TPROXY mark plumbing too, and learns the mark.
#[test]
fn cleanup_with_other_flags_removes_everything_capture_wrote() {
    let with_foreign = SAVED_TPROXY.replace(
        "-A OUTPUT -o eth0 -j RETURN\n-A OUTPUT -j ISTIO_OUTPUT\n",
        "-A OUTPUT -o eth0 -j RETURN\n-A OUTPUT -p udp -j RETURN\n-A OUTPUT -j ISTIO_OUTPUT\n",
    );
    let saved = SavedState::parse(&with_foreign);
    let payload = cleanup_payload(&sidecar_expected(), &saved).unwrap();
    let after = chains(&simulate(&with_foreign, &payload));
    for (table, chains) in &after {
        for (chain, rules) in chains {
            let expected: &[&str] = match (table, chain.as_str()) {
                (TableName::Nat, "OUTPUT") => &["-p udp -j RETURN"],
                _ => &[],
            };
            assert_eq!(rules, expected, "{table:?} {chain}");
            assert!(!chain.starts_with("ISTIO_"), "{chain}");
        }
    }
    assert_eq!(ours::tproxy_marks(&saved), BTreeSet::from([0x539]));
}

/// Rollback puts capture's part back exactly, at its old places among foreign rules, and
/// leaves rules someone else added in between alone.
#[test]
fn restoring_ours_touches_nothing_else() {
    let before_text = SAVED_TPROXY
        .replace(
            "-A PREROUTING -i eth0 -j RETURN\n-A PREROUTING -p tcp -j ISTIO_INBOUND\n",
            "-A PREROUTING -i eth0 -j RETURN\n-A PREROUTING -s 10.1.0.0/16 -j ACCEPT\n-A PREROUTING -p tcp -j ISTIO_INBOUND\n",
        )
        .replace("COMMIT\n# Completed", "-A OUTPUT -p udp -j LOG\nCOMMIT\n# Completed");
    let before = SavedState::parse(&before_text);
    let exp = sidecar_expected();
    // A cleanup ran, then someone appended a rule of their own.
    let cleaned = simulate(&before_text, &cleanup_payload(&exp, &before).unwrap());
    let now_text = cleaned.replace(
        "-A PREROUTING -s 10.1.0.0/16 -j ACCEPT\n",
        "-A PREROUTING -s 10.1.0.0/16 -j ACCEPT\n-A PREROUTING -p icmp -j ACCEPT\n",
    );
    let now = SavedState::parse(&now_text);
    let names: BTreeSet<TableName> = before.tables.keys().copied().collect();
    let payload = restore_ours_payload(&before, &now, &names, &exp).unwrap();
    let restored = chains(&simulate(&now_text, &payload));
    let mut want = chains(&before_text);
    want.get_mut(&TableName::Mangle)
        .unwrap()
        .get_mut("PREROUTING")
        .unwrap()
        .insert(3, "-p icmp -j ACCEPT".into());
    // Our rules are in their old order relative to the foreign rules that were there.
    let mangle = &restored[&TableName::Mangle]["PREROUTING"];
    let pos = |r: &str| mangle.iter().position(|x| x == r).unwrap();
    assert!(pos("-i eth0 -j RETURN") < pos("-s 10.1.0.0/16 -j ACCEPT"));
    assert!(pos("-s 10.1.0.0/16 -j ACCEPT") < pos("-p tcp -j ISTIO_INBOUND"));
    assert_eq!(restored[&TableName::Nat], want[&TableName::Nat]);
    for (chain, rules) in &want[&TableName::Mangle] {
        let mut got = restored[&TableName::Mangle][chain].clone();
        let mut rules = rules.clone();
        got.sort();
        rules.sort();
        assert_eq!(got, rules, "mangle {chain}");
    }
    assert_eq!(restore_ours_payload(&before, &before, &names, &exp), None);
}

/// Issue 8 item 2: a run killed between two tables' COMMITs leaves the mangle table without
/// the nat one; a rerun with the same configuration completes it instead of calling it drift.
#[test]
fn part_of_this_configuration_is_completed_not_drift() {
    let mut spec = CaptureSpec::sidecar();
    spec.inbound.mode = crate::InterceptMode::Tproxy {
        mark: crate::Mark::new(1337),
        route_table: crate::RouteTable::new(133),
    };
    let rules = plan(&spec, Family::V4);
    let exp = expected(&rules);
    let full = kernel_form(&exp, &[TableName::Mangle, TableName::Nat]);
    let nat_gone = format!(
        "{}*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n",
        kernel_form(&exp, &[TableName::Mangle])
    );
    assert_eq!(compare(&exp, &SavedState::parse(&full)), State::Equal);
    let state = compare(&exp, &SavedState::parse(&nat_gone));
    let State::Partial(missing) = state else {
        panic!("nat missing is partial: {state:?}\n{nat_gone}")
    };
    assert!(
        missing.iter().any(|m| m == "nat chain ISTIO_OUTPUT is missing"),
        "{missing:?}"
    );
    let completed = simulate(
        &nat_gone,
        &reconcile_payload(&rules, &exp, &SavedState::parse(&nat_gone)),
    );
    // The reconcile payload writes Istio's spelling; compare chain by chain in that spelling.
    assert_eq!(
        chains(&completed)[&TableName::Mangle].keys().collect::<Vec<_>>(),
        chains(&nat_gone)[&TableName::Mangle].keys().collect::<Vec<_>>()
    );
    // A differing rule is still drift.
    let nat_gone_tampered = nat_gone.replace("--dport 15021 -j RETURN", "--dport 15022 -j RETURN");
    assert!(matches!(
        compare(&exp, &SavedState::parse(&nat_gone_tampered)),
        State::Differs(_)
    ));
}

/// What the kernel would print for the tables `only` of `exp` (in iptables-save's words).
fn kernel_form(exp: &BTreeMap<TableName, ExpectedTable>, only: &[TableName]) -> String {
    let mut out = String::new();
    for (name, table) in exp.iter().filter(|(n, _)| only.contains(n)) {
        let _ = writeln!(out, "*{}", name.as_str());
        for chain in BUILTINS {
            let _ = writeln!(out, ":{chain} ACCEPT [0:0]");
        }
        for chain in table.own.keys() {
            let _ = writeln!(out, ":{chain} - [0:0]");
        }
        for (chain, specs) in table.builtin.iter().chain(&table.own) {
            for spec in specs {
                let _ = writeln!(out, "-A {chain} {spec}");
            }
        }
        out.push_str("COMMIT\n");
    }
    out
}

/// Issue 8 item 6: a failing IPv6 removal puts the IPv4 removal back.
#[test]
fn cleanup_is_all_or_nothing_across_families() {
    let kernel = FakeKernel::failing("ip6tables-nft-restore").with(SAVED_SIDECAR, SAVED_SIDECAR);
    let mut spec = CaptureSpec::sidecar();
    spec.ipv6 = true;
    let err = Iptables::new(&kernel, Flavor::Nft).cleanup(&spec).unwrap_err();
    assert!(
        matches!(&err, ApplyError::CleanupRolledBack { rolled_back, .. } if rolled_back == &[Family::V4]),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .ends_with("nothing was removed (the removal from IPv4 was put back)"),
        "{err}"
    );
    assert_eq!(chains(&kernel.rules.borrow()[&false]), chains(SAVED_SIDECAR));
}

/// Issue 8 item 9: a foreign rule ahead of our jump that can end traversal is reported.
#[test]
fn foreign_rules_ahead_of_capture_are_found() {
    let exp = sidecar_expected();
    let shadowed = SAVED_SIDECAR.replace(
        "-A OUTPUT -j ISTIO_OUTPUT\n",
        "-A OUTPUT -j RETURN\n-A OUTPUT -j ISTIO_OUTPUT\n",
    );
    assert_eq!(
        shadowing_in(&exp, &SavedState::parse(&shadowed), false),
        ["nat OUTPUT rule 1 '-j RETURN' comes before capture's rules and can end the packet's traversal"]
    );
    let logged = SAVED_SIDECAR.replace(
        "-A OUTPUT -j ISTIO_OUTPUT\n",
        "-A OUTPUT -j LOG\n-A OUTPUT -j ISTIO_OUTPUT\n-A OUTPUT -j ACCEPT\n",
    );
    assert!(shadowing_in(&exp, &SavedState::parse(&logged), false).is_empty());
    // Before a first apply every foreign rule in a hooked chain will precede ours.
    assert_eq!(shadowing_in(&exp, &SavedState::parse(EMPTY_NAT), true).len(), 1);
    assert_eq!(
        shadowing_in(&exp, &SavedState::parse(SAVED_SIDECAR), false),
        Vec::<String>::new()
    );
}
