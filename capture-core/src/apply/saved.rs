//! Reading `iptables-save` output: the tables capture uses, chain by chain.

use std::collections::{BTreeMap, BTreeSet};

use crate::rules::{OwnChain, TableName};

/// One table of an `iptables-save` dump: each chain's rules, as written after `-A CHAIN `.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SavedTable {
    /// Chains by name, rules in order.
    pub chains: BTreeMap<String, Vec<String>>,
    /// The table's text as dumped (for rollback).
    pub text: String,
}

/// An `iptables-save` dump of the tables capture uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SavedState {
    /// Tables present in the dump.
    pub tables: BTreeMap<TableName, SavedTable>,
}

pub(super) fn table_name(name: &str) -> Option<TableName> {
    match name {
        "mangle" => Some(TableName::Mangle),
        "nat" => Some(TableName::Nat),
        "raw" => Some(TableName::Raw),
        _ => None,
    }
}

impl SavedState {
    /// Parses `iptables-save` output; tables capture never uses are skipped.
    pub fn parse(text: &str) -> Self {
        let mut tables = BTreeMap::new();
        let mut current: Option<(TableName, SavedTable)> = None;
        for line in text.lines() {
            if let Some(name) = line.strip_prefix('*') {
                current = table_name(name.trim()).map(|t| (t, SavedTable::default()));
            }
            let Some((_, table)) = current.as_mut() else {
                continue;
            };
            if line.starts_with('#') {
                continue;
            }
            table.text.push_str(line);
            table.text.push('\n');
            if let Some(decl) = line.strip_prefix(':') {
                let chain = decl.split_whitespace().next().unwrap_or_default();
                table.chains.entry(chain.to_owned()).or_default();
            } else if let Some(rule) = line.strip_prefix("-A ") {
                let (chain, spec) = rule.split_once(' ').unwrap_or((rule, ""));
                table
                    .chains
                    .entry(chain.to_owned())
                    .or_default()
                    .push(spec.to_owned());
            } else if line == "COMMIT" {
                let (name, table) = current.take().expect("inside a table");
                tables.insert(name, table);
            }
        }
        Self { tables }
    }

    /// Our chains present in any table.
    pub fn own_chains(&self) -> Vec<(TableName, String)> {
        let ours: BTreeSet<&str> = OwnChain::ALL.iter().map(|c| c.as_str()).collect();
        let mut found = Vec::new();
        for (name, table) in &self.tables {
            for chain in table.chains.keys() {
                if ours.contains(chain.as_str()) {
                    found.push((*name, chain.clone()));
                }
            }
        }
        found
    }
}
