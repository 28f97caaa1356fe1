//! What a configuration needs in `iptables-save`'s words, and how the kernel's rules compare
//! with it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use super::ours;
use super::saved::SavedState;
use crate::render::Saved;
use crate::rules::{ChainName, OwnerMatch, RuleSet, TableName};
use crate::types::{Owner, lookup_id};

/// What the kernel must hold for one table, in `iptables-save` form.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct ExpectedTable {
    pub(super) own: BTreeMap<String, Vec<String>>,
    pub(super) builtin: BTreeMap<String, Vec<String>>,
}

pub(super) fn expected(rules: &RuleSet) -> BTreeMap<TableName, ExpectedTable> {
    let resolve = |owner: &OwnerMatch| match owner {
        OwnerMatch::Uid(Owner::Name(name)) => lookup_id(name, true),
        OwnerMatch::Gid(Owner::Name(name)) => lookup_id(name, false),
        _ => None,
    };
    let mut out = BTreeMap::new();
    for table in &rules.tables {
        let mut exp = ExpectedTable::default();
        for (chain, list) in table.chain_contents() {
            let specs = list
                .iter()
                .map(|r| {
                    Saved {
                        rule: r,
                        family: rules.family,
                        resolve: &resolve,
                    }
                    .to_string()
                })
                .collect();
            match chain {
                ChainName::Own(own) => exp.own.insert(own.as_str().to_owned(), specs),
                ChainName::Builtin(_) => exp.builtin.insert(chain.as_str().to_owned(), specs),
            };
        }
        out.insert(table.name, exp);
    }
    out
}

/// Our rules among a built-in chain's rules: those the configuration adds, and any jump to one
/// of our chains.
pub(super) fn ours_in_builtin<'a>(found: &'a [String], expected: &[String]) -> Vec<&'a String> {
    found
        .iter()
        .filter(|spec| expected.contains(spec) || ours::jumps_to_own_chain(spec))
        .collect()
}

pub(crate) const BUILTINS: [&str; 5] = ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"];

/// How the kernel's rules compare with a configuration, for one family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// None of our chains or rules are present.
    Absent,
    /// Exactly the configuration's rules are present.
    Equal,
    /// Part of exactly this configuration is present and nothing contradicts it: a run that
    /// was killed between two tables' `COMMIT`s, or a piece removed by hand. Each entry says
    /// what is missing; applying completes it.
    Partial(Vec<Difference>),
    /// Something of ours is present but differs; each entry says what.
    Differs(Vec<Difference>),
}

/// One way the kernel's rules differ from a configuration's, in `iptables-save`'s words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Difference {
    /// One of our chains is not there.
    MissingChain {
        /// The table.
        table: TableName,
        /// The chain.
        chain: String,
    },
    /// One of our chains holds other rules.
    ChainRules {
        /// The table.
        table: TableName,
        /// The chain.
        chain: String,
        /// How many rules it has.
        found: usize,
        /// How many this configuration has.
        expected: usize,
        /// The first rule that differs (0-based) and the two versions of it (`None`: no rule).
        at: usize,
        /// The rule there.
        found_rule: Option<String>,
        /// The rule expected there.
        expected_rule: Option<String>,
    },
    /// One of our chains is there that this configuration does not use.
    StaleChain {
        /// The table.
        table: TableName,
        /// The chain.
        chain: String,
    },
    /// A built-in chain lacks one of our rules.
    Lacks {
        /// The table.
        table: TableName,
        /// The built-in chain.
        builtin: String,
        /// The rule.
        rule: String,
    },
    /// A built-in chain has a rule of ours this configuration does not add.
    Extra {
        /// The table.
        table: TableName,
        /// The built-in chain.
        builtin: String,
        /// The rule.
        rule: String,
    },
    /// Our rules in a built-in chain are all expected ones, but out of order or repeated.
    OutOfOrder {
        /// The table.
        table: TableName,
        /// The built-in chain.
        builtin: String,
    },
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingChain { table, chain } => write!(f, "{} chain {chain} is missing", table.as_str()),
            Self::ChainRules {
                table,
                chain,
                found,
                expected,
                at,
                found_rule,
                expected_rule,
            } => {
                write!(f, "{} {chain}", table.as_str())?;
                // The counts only when they differ: "has 5 rules where 5 are expected" said
                // nothing but that one rule differs.
                if found == expected {
                    f.write_str(":")?;
                } else {
                    write!(
                        f,
                        " has {}, {expected} expected;",
                        crate::count(*found, "rule", "rules")
                    )?;
                }
                let n = at + 1;
                match (found_rule, expected_rule) {
                    (Some(found), Some(expected)) => {
                        write!(f, " rule {n} is '{found}' instead of '{expected}'")
                    }
                    (None, Some(expected)) => write!(f, " rule {n} '{expected}' is missing"),
                    (Some(found), None) => write!(f, " rule {n} '{found}' is not part of this configuration"),
                    (None, None) => write!(f, " rule {n} differs"),
                }
            }
            Self::StaleChain { table, chain } => write!(
                f,
                "{} chain {chain} is present but not part of this configuration",
                table.as_str()
            ),
            Self::Lacks { table, builtin, rule } => write!(f, "{} {builtin} lacks '{rule}'", table.as_str()),
            Self::Extra { table, builtin, rule } => write!(
                f,
                "{} {builtin} has '{rule}' which this configuration does not add",
                table.as_str()
            ),
            Self::OutOfOrder { table, builtin } => {
                write!(
                    f,
                    "{} {builtin}: our rules are out of order or repeated",
                    table.as_str()
                )
            }
        }
    }
}

impl PartialEq<str> for Difference {
    fn eq(&self, other: &str) -> bool {
        self.to_string().as_str() == other
    }
}

impl PartialEq<&str> for Difference {
    fn eq(&self, other: &&str) -> bool {
        self == *other
    }
}

/// Whether `part` is `whole` with some entries left out, order kept.
pub(super) fn is_subsequence(part: &[&String], whole: &[String]) -> bool {
    let mut rest = whole.iter();
    part.iter().all(|p| rest.any(|w| w == *p))
}

pub(super) fn compare(expected: &BTreeMap<TableName, ExpectedTable>, saved: &SavedState) -> State {
    let empty = ExpectedTable::default();
    let mut missing = Vec::new();
    let mut conflicts = Vec::new();
    let mut anything_ours = false;
    let tables: BTreeSet<TableName> = expected.keys().chain(saved.tables.keys()).copied().collect();
    for name in tables {
        let exp = expected.get(&name).unwrap_or(&empty);
        let found = saved.tables.get(&name);
        let table = name;
        for (chain, rules) in &exp.own {
            match found.and_then(|f| f.chains.get(chain)) {
                None => missing.push(Difference::MissingChain {
                    table,
                    chain: chain.clone(),
                }),
                Some(actual) => {
                    anything_ours = true;
                    if actual != rules {
                        conflicts.push(describe_chain_difference(table, chain, rules, actual));
                    }
                }
            }
        }
        if let Some(found) = found {
            for chain in found.chains.keys() {
                if ours::is_own_chain(chain) && !exp.own.contains_key(chain) {
                    anything_ours = true;
                    conflicts.push(Difference::StaleChain {
                        table,
                        chain: chain.clone(),
                    });
                }
            }
            for builtin in BUILTINS {
                let none = Vec::new();
                let want = exp.builtin.get(builtin).unwrap_or(&none);
                let actual = found.chains.get(builtin).unwrap_or(&none);
                let ours = ours_in_builtin(actual, want);
                anything_ours |= !ours.is_empty();
                if ours
                    .iter()
                    .map(|s| s.as_str())
                    .eq(want.iter().map(String::as_str))
                {
                    continue;
                }
                let lacking = want
                    .iter()
                    .filter(|w| !actual.contains(w))
                    .map(|w| Difference::Lacks {
                        table,
                        builtin: builtin.to_owned(),
                        rule: w.clone(),
                    });
                if is_subsequence(&ours, want) {
                    missing.extend(lacking);
                    continue;
                }
                conflicts.extend(lacking);
                for extra in ours.iter().filter(|o| !want.contains(o)) {
                    conflicts.push(Difference::Extra {
                        table,
                        builtin: builtin.to_owned(),
                        rule: (*extra).clone(),
                    });
                }
                if ours.iter().all(|o| want.contains(o)) {
                    conflicts.push(Difference::OutOfOrder {
                        table,
                        builtin: builtin.to_owned(),
                    });
                }
            }
        } else {
            for (builtin, want) in &exp.builtin {
                if let Some(first) = want.first() {
                    missing.push(Difference::Lacks {
                        table,
                        builtin: builtin.clone(),
                        rule: first.clone(),
                    });
                }
            }
        }
    }
    if !anything_ours {
        State::Absent
    } else if conflicts.is_empty() && missing.is_empty() {
        State::Equal
    } else if conflicts.is_empty() {
        State::Partial(missing)
    } else {
        conflicts.extend(missing);
        State::Differs(conflicts)
    }
}

pub(super) fn describe_chain_difference(
    table: TableName,
    chain: &str,
    want: &[String],
    actual: &[String],
) -> Difference {
    let at = want
        .iter()
        .zip(actual)
        .position(|(w, a)| w != a)
        .unwrap_or(want.len().min(actual.len()));
    Difference::ChainRules {
        table,
        chain: chain.to_owned(),
        found: actual.len(),
        expected: want.len(),
        at,
        found_rule: actual.get(at).cloned(),
        expected_rule: want.get(at).cloned(),
    }
}
