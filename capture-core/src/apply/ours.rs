//! What in a saved table is capture's, whatever configuration wrote it, and what foreign rules
//! can keep packets from reaching it.
//!
//! Cleanup and rollback must find every rule capture owns even when they are given other flags
//! than the apply that wrote them (`--cleanup-only` with defaults after `-m TPROXY -c eth0`).
//! Capture's rules are recognised by name (our chains, and jumps to them) and, in built-in
//! chains, by the few shapes `plan` writes there:
//!
//! | table, chain | shape |
//! |---|---|
//! | nat/mangle `PREROUTING` | `-i IFACE -j RETURN` (excluded and KubeVirt interfaces) |
//! | nat/mangle `OUTPUT` | `-o IFACE -j RETURN` (excluded interfaces) |
//! | mangle `PREROUTING` | `-p tcp -m mark --mark M -j CONNMARK --save-mark …` |
//! | mangle `OUTPUT` | `-o lo -p tcp -m mark --mark M -j RETURN` |
//! | mangle `OUTPUT` | `! -d LOOPBACK -o lo -p tcp -m owner --uid-owner/--gid-owner N -j MARK --set-xmark 0x53a/0xffffffff` |
//! | mangle `OUTPUT` | `-p tcp -m connmark --mark M -j CONNMARK --restore-mark …` |
//!
//! In a pod's network namespace these shapes are capture's (or istio-iptables'): nothing else
//! writes interface RETURNs or TPROXY mark plumbing there.

use std::collections::BTreeSet;

use crate::rules::{OwnChain, TableName};

use super::compare::BUILTINS;
use super::saved::{SavedState, SavedTable};

/// The chain a rule jumps or goes to, if any.
pub(super) fn target(spec: &str) -> Option<&str> {
    let words: Vec<&str> = spec.split_whitespace().collect();
    words
        .iter()
        .rposition(|w| *w == "-j" || *w == "-g")
        .and_then(|i| words.get(i + 1).copied())
}

pub(super) fn is_own_chain(name: &str) -> bool {
    OwnChain::ALL.iter().any(|c| c.as_str() == name)
}

/// Whether a rule jumps (or goes) to one of our chains.
pub(super) fn jumps_to_own_chain(spec: &str) -> bool {
    target(spec).is_some_and(is_own_chain)
}

/// Whether a rule in a built-in chain has one of the shapes only capture writes there.
pub(super) fn has_our_shape(table: TableName, chain: &str, spec: &str) -> bool {
    let words: Vec<&str> = spec.split_whitespace().collect();
    let iface_return = |flag: &str| matches!(words.as_slice(), [f, _, "-j", "RETURN"] if *f == flag);
    match (table, chain) {
        (TableName::Nat, "PREROUTING") => iface_return("-i"),
        (TableName::Nat, "OUTPUT") => iface_return("-o"),
        (TableName::Mangle, "PREROUTING") => {
            iface_return("-i")
                || matches!(
                    words.as_slice(),
                    [
                        "-p",
                        "tcp",
                        "-m",
                        "mark",
                        "--mark",
                        _,
                        "-j",
                        "CONNMARK",
                        "--save-mark",
                        ..
                    ]
                )
        }
        (TableName::Mangle, "OUTPUT") => {
            iface_return("-o")
                || matches!(
                    words.as_slice(),
                    ["-o", "lo", "-p", "tcp", "-m", "mark", "--mark", _, "-j", "RETURN"]
                        | [
                            "-p",
                            "tcp",
                            "-m",
                            "connmark",
                            "--mark",
                            _,
                            "-j",
                            "CONNMARK",
                            "--restore-mark",
                            ..
                        ]
                        | [
                            "!",
                            "-d",
                            _,
                            "-o",
                            "lo",
                            "-p",
                            "tcp",
                            "-m",
                            "owner",
                            "--uid-owner" | "--gid-owner",
                            _,
                            "-j",
                            "MARK",
                            "--set-xmark",
                            "0x53a/0xffffffff"
                        ]
                )
        }
        _ => false,
    }
}

/// Whether a rule of a built-in chain is capture's: one `expected` lists, a jump to our chains,
/// or (with `by_shape`) one of the shapes capture writes.
pub(super) fn is_ours(
    table: TableName,
    chain: &str,
    spec: &str,
    expected: &[String],
    by_shape: bool,
) -> bool {
    expected.iter().any(|e| e == spec)
        || jumps_to_own_chain(spec)
        || (by_shape && has_our_shape(table, chain, spec))
}

/// The marks capture's TPROXY rules in a saved mangle table use (`ISTIO_DIVERT`'s `MARK`,
/// `ISTIO_TPROXY`'s `--tproxy-mark`, the `CONNMARK` plumbing), so that cleanup can find the
/// policy routing that goes with them whatever flags it is given.
pub(super) fn tproxy_marks(saved: &SavedState) -> BTreeSet<u32> {
    let mut marks = BTreeSet::new();
    let Some(mangle) = saved.tables.get(&TableName::Mangle) else {
        return marks;
    };
    let mut take = |value: &str| {
        let number = value.split('/').next().unwrap_or(value);
        let parsed = number
            .strip_prefix("0x")
            .map_or_else(|| number.parse().ok(), |hex| u32::from_str_radix(hex, 16).ok());
        if let Some(mark) = parsed {
            marks.insert(mark);
        }
    };
    for (chain, rules) in &mangle.chains {
        for spec in rules {
            let words: Vec<&str> = spec.split_whitespace().collect();
            let value_after = |flag: &str| {
                words
                    .iter()
                    .position(|w| *w == flag)
                    .and_then(|i| words.get(i + 1))
            };
            let ours_chain = chain == OwnChain::Divert.as_str() || chain == OwnChain::Tproxy.as_str();
            if ours_chain {
                if let Some(v) = value_after("--set-xmark").or_else(|| value_after("--tproxy-mark")) {
                    take(v);
                }
            } else if BUILTINS.contains(&chain.as_str())
                && has_our_shape(TableName::Mangle, chain, spec)
                && words.contains(&"CONNMARK")
                && let Some(v) = value_after("--mark")
            {
                take(v);
            }
        }
    }
    marks
}

/// Targets that never end a packet's walk through a chain: the next rule is always reached.
const NON_TERMINAL: [&str; 17] = [
    "LOG",
    "NFLOG",
    "ULOG",
    "MARK",
    "CONNMARK",
    "CT",
    "NOTRACK",
    "TRACE",
    "TOS",
    "DSCP",
    "TCPMSS",
    "CLASSIFY",
    "AUDIT",
    "CHECKSUM",
    "TEE",
    "CONNSECMARK",
    "SECMARK",
];

/// Whether a foreign rule in `table` can end a packet's traversal of the built-in chain it is in:
/// any terminal target, or a jump to a chain that can (a `RETURN` there only returns to the
/// caller). A goto (`-g`) ends the caller's traversal unless the chain it goes to never ends
/// one, which is rare enough to count it always.
fn can_end(table: &SavedTable, spec: &str, depth: usize) -> bool {
    let words: Vec<&str> = spec.split_whitespace().collect();
    let Some(t) = target(spec) else {
        return false;
    };
    if NON_TERMINAL.contains(&t) {
        return false;
    }
    let is_goto = words
        .iter()
        .rposition(|w| *w == "-g")
        .is_some_and(|g| words.get(g + 1) == Some(&t));
    match table.chains.get(t) {
        Some(_) if is_goto => true,
        // A user chain: it ends the walk only if something inside it does.
        Some(rules) if depth < 16 => rules
            .iter()
            .any(|r| target(r) != Some("RETURN") && can_end(table, r, depth + 1)),
        Some(_) => true,
        None => true,
    }
}

/// Foreign rules that stand before capture's rules in a built-in chain capture hooks and can end
/// a packet's traversal there, so that capture never sees those packets: one line each, naming
/// the table, chain, position and rule. `expected` gives, per built-in chain, the rules this
/// configuration adds; `appending` says capture's rules are about to be appended (a first apply),
/// so every foreign rule already in a hooked chain will precede them.
pub(super) fn shadowing(
    name: TableName,
    table: &SavedTable,
    expected: &std::collections::BTreeMap<String, Vec<String>>,
    appending: bool,
) -> Vec<String> {
    let mut found = Vec::new();
    for chain in BUILTINS {
        let Some(want) = expected.get(chain).filter(|w| !w.is_empty()) else {
            continue;
        };
        let rules = table.chains.get(chain).map(Vec::as_slice).unwrap_or_default();
        let last_ours = rules
            .iter()
            .rposition(|r| is_ours(name, chain, r, want, false))
            .map(|i| i + 1);
        let end = if appending { Some(rules.len()) } else { last_ours };
        let Some(end) = end else { continue };
        for (i, spec) in rules.iter().enumerate().take(end) {
            if !is_ours(name, chain, spec, want, true) && can_end(table, spec, 0) {
                found.push(format!(
                    "{} {chain} rule {} '{spec}' comes before capture's rules and can end the packet's traversal",
                    name.as_str(),
                    i + 1
                ));
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_are_recognised_and_foreign_rules_are_not() {
        use TableName::{Mangle, Nat};
        assert!(has_our_shape(Nat, "PREROUTING", "-i eth0 -j RETURN"));
        assert!(has_our_shape(Nat, "OUTPUT", "-o eth0 -j RETURN"));
        assert!(!has_our_shape(Nat, "OUTPUT", "-i eth0 -j RETURN"));
        assert!(!has_our_shape(Nat, "PREROUTING", "-i eth0 -p tcp -j RETURN"));
        assert!(!has_our_shape(Nat, "OUTPUT", "-d 8.8.8.8/32 -j RETURN"));
        assert!(has_our_shape(
            Mangle,
            "PREROUTING",
            "-p tcp -m mark --mark 0x539 -j CONNMARK --save-mark --nfmask 0xffffffff --ctmask 0xffffffff"
        ));
        assert!(has_our_shape(
            Mangle,
            "OUTPUT",
            "! -d 127.0.0.1/32 -o lo -p tcp -m owner --gid-owner 1337 -j MARK --set-xmark 0x53a/0xffffffff"
        ));
        assert!(!has_our_shape(
            Mangle,
            "OUTPUT",
            "-j MARK --set-xmark 0x1/0xffffffff"
        ));
    }

    #[test]
    fn targets_that_end_traversal() {
        let table = SavedState::parse(
            "*nat\n:OUTPUT ACCEPT [0:0]\n:LOGONLY - [0:0]\n:ACCEPTS - [0:0]\n\
             -A LOGONLY -j LOG\n-A LOGONLY -j RETURN\n-A ACCEPTS -d 10.0.0.0/8 -j ACCEPT\nCOMMIT\n",
        )
        .tables
        .remove(&TableName::Nat)
        .unwrap();
        for (spec, ends) in [
            ("-j RETURN", true),
            ("-d 10.0.0.1/32 -j ACCEPT", true),
            ("-j DNAT --to-destination 1.2.3.4", true),
            ("-j LOG --log-prefix x", false),
            ("-p tcp", false),
            ("-j LOGONLY", false),
            ("-j ACCEPTS", true),
            ("-g LOGONLY", true),
        ] {
            assert_eq!(can_end(&table, spec, 0), ends, "{spec}");
        }
    }
}
