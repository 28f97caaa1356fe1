//! The restore payloads beyond Istio's own: reconcile (flush and refill in one `COMMIT`), and
//! putting capture's part of a table back as it was (rollback, cleanup), touching nothing else.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use super::compare::{BUILTINS, ExpectedTable, ours_in_builtin};
use super::ours;
use super::saved::{SavedState, SavedTable};
use crate::rules::{OwnChain, RuleSet, TableName};

/// One restore per table that empties our chains (`:CHAIN - [0:0]` flushes an existing chain
/// under `--noflush`), deletes our old rules from built-in chains, adds the new rules and
/// removes chains no longer used, all inside the table's single `COMMIT`.
pub(super) fn reconcile_payload(
    rules: &RuleSet,
    expected: &BTreeMap<TableName, ExpectedTable>,
    saved: &SavedState,
) -> String {
    let mut out = String::new();
    let mut names: BTreeSet<TableName> = rules.tables.iter().map(|t| t.name).collect();
    names.extend(saved.own_chains().into_iter().map(|(t, _)| t));
    let empty = ExpectedTable::default();
    for name in names {
        let exp = expected.get(&name).unwrap_or(&empty);
        let found = saved.tables.get(&name);
        let present = |chain: &str| found.is_some_and(|f| f.chains.contains_key(chain));
        let stale: Vec<&str> = OwnChain::ALL
            .iter()
            .map(|c| c.as_str())
            .filter(|c| present(c) && !exp.own.contains_key(*c))
            .collect();
        let _ = writeln!(out, "*{}", name.as_str());
        for chain in exp.own.keys().map(String::as_str).chain(stale.iter().copied()) {
            let _ = writeln!(out, ":{chain} - [0:0]");
        }
        if let Some(found) = found {
            for builtin in BUILTINS {
                let none = Vec::new();
                let want = exp.builtin.get(builtin).unwrap_or(&none);
                for spec in ours_in_builtin(found.chains.get(builtin).unwrap_or(&none), want) {
                    let _ = writeln!(out, "-D {builtin} {spec}");
                }
            }
        }
        if let Some(table) = rules.table(name) {
            for entry in &table.entries {
                let _ = writeln!(out, "{}", crate::render::EntryLine(entry));
            }
        }
        for chain in stale {
            let _ = writeln!(out, "-X {chain}");
        }
        out.push_str("COMMIT\n");
    }
    out
}

/// Capture's part of one saved table: our chains with their rules, and per built-in chain the
/// positions and rules that are ours (recognised as in [`ours::is_ours`], shapes included).
#[derive(Debug, PartialEq, Eq)]
pub(super) struct OursInTable<'a> {
    own: BTreeMap<&'a str, &'a [String]>,
    builtin: BTreeMap<&'static str, Vec<(usize, &'a String)>>,
}

pub(super) fn ours_in_table<'a>(
    name: TableName,
    table: Option<&'a SavedTable>,
    expected: Option<&ExpectedTable>,
) -> OursInTable<'a> {
    let mut own = BTreeMap::new();
    let mut builtin = BTreeMap::new();
    let Some(table) = table else {
        return OursInTable { own, builtin };
    };
    for (chain, rules) in &table.chains {
        if ours::is_own_chain(chain) {
            own.insert(chain.as_str(), rules.as_slice());
        }
    }
    for chain in BUILTINS {
        let want = expected
            .and_then(|e| e.builtin.get(chain))
            .map(Vec::as_slice)
            .unwrap_or_default();
        let Some(rules) = table.chains.get(chain) else {
            continue;
        };
        let list: Vec<(usize, &String)> = rules
            .iter()
            .enumerate()
            .filter(|(_, spec)| ours::is_ours(name, chain, spec, want, true))
            .collect();
        if !list.is_empty() {
            builtin.insert(chain, list);
        }
    }
    OursInTable { own, builtin }
}

/// A `--noflush` restore that puts capture's part of the tables `names` back as it is in
/// `before`, starting from `now`, and touches nothing else: our chains get their old contents
/// (or go), our rules in built-in chains are deleted and the old ones inserted again at their
/// old places among the foreign rules. `None` when capture's part is already as it was.
/// Rollback and cleanup use it, so neither ever undoes a change someone else made.
pub(super) fn restore_ours_payload(
    before: &SavedState,
    now: &SavedState,
    names: &BTreeSet<TableName>,
    expected: &BTreeMap<TableName, ExpectedTable>,
) -> Option<String> {
    let mut out = String::new();
    for &name in names {
        let exp = expected.get(&name);
        let old_table = before.tables.get(&name);
        let new_table = now.tables.get(&name);
        let old = ours_in_table(name, old_table, exp);
        let new = ours_in_table(name, new_table, exp);
        let same_builtin = old.builtin.len() == new.builtin.len()
            && old.builtin.iter().all(|(chain, list)| {
                new.builtin
                    .get(chain)
                    .is_some_and(|n| n.iter().map(|(_, s)| s).eq(list.iter().map(|(_, s)| s)))
            });
        if old.own == new.own && same_builtin {
            continue;
        }
        let _ = writeln!(out, "*{}", name.as_str());
        let chains: BTreeSet<&str> = old.own.keys().chain(new.own.keys()).copied().collect();
        for chain in &chains {
            let _ = writeln!(out, ":{chain} - [0:0]");
        }
        for (chain, list) in &new.builtin {
            for (_, spec) in list {
                let _ = writeln!(out, "-D {chain} {spec}");
            }
        }
        for (chain, rules) in &old.own {
            for spec in *rules {
                let _ = writeln!(out, "-A {chain} {spec}");
            }
        }
        for (chain, list) in &old.builtin {
            let foreign_now = new_table.and_then(|t| t.chains.get(*chain)).map_or(0, |rules| {
                rules.len() - new.builtin.get(chain).map_or(0, Vec::len)
            });
            let mut foreign_before = 0;
            let mut previous = 0;
            for (inserted, (index, spec)) in list.iter().enumerate() {
                // Foreign rules that stood before this one then (as many as are still there).
                foreign_before += index - previous;
                previous = index + 1;
                let at = foreign_before.min(foreign_now) + inserted + 1;
                let _ = writeln!(out, "-I {chain} {at} {spec}");
            }
        }
        for chain in new.own.keys().filter(|c| !old.own.contains_key(*c)) {
            let _ = writeln!(out, "-X {chain}");
        }
        out.push_str("COMMIT\n");
    }
    (!out.is_empty()).then_some(out)
}

/// `now` with capture's part removed, whatever configuration wrote it: what cleanup leaves.
pub(super) fn without_ours(now: &SavedState, expected: &BTreeMap<TableName, ExpectedTable>) -> SavedState {
    let mut bare = now.clone();
    for (name, table) in &mut bare.tables {
        let mine = ours_in_table(*name, now.tables.get(name), expected.get(name));
        for (chain, list) in &mine.builtin {
            let drop: BTreeSet<usize> = list.iter().map(|(i, _)| *i).collect();
            if let Some(rules) = table.chains.get_mut(*chain) {
                let mut i = 0;
                rules.retain(|_| {
                    i += 1;
                    !drop.contains(&(i - 1))
                });
            }
        }
        table.chains.retain(|chain, _| !ours::is_own_chain(chain));
    }
    bare
}

/// Removes capture's rules from built-in chains, then flushes and deletes our chains: everything
/// capture may have written, recognised whatever flags wrote it.
pub(super) fn cleanup_payload(
    expected: &BTreeMap<TableName, ExpectedTable>,
    saved: &SavedState,
) -> Option<String> {
    let names: BTreeSet<TableName> = saved.tables.keys().copied().collect();
    restore_ours_payload(&without_ours(saved, expected), saved, &names, expected)
}
