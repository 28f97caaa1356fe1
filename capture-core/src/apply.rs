//! Applying a capture with `iptables-restore`: atomic, idempotent, reversible.
//!
//! - One `iptables-restore --noflush` per family (IPv4 first), never one `iptables` per rule.
//! - Before changing anything, the current state is read with `*-save` for every family and
//!   compared with what the spec needs: [`State::Equal`] does nothing, [`State::Absent`] applies
//!   istio-iptables' exact payload, [`State::Differs`] fails unless reconciling.
//! - Reconciling is one restore per family in which each table flushes and refills our chains
//!   inside a single `COMMIT`, so traffic is never uncaptured in between (Istio instead inserts
//!   DROP guardrails, removes and re-adds).
//! - If a later family fails, every table touched so far is put back as it was (a restore
//!   without `--noflush` of the text saved beforehand): no partial capture is left behind.

mod ours;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Seek as _, Write as _};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::sys::memfd::{MFdFlags, memfd_create};

use crate::lock::{LockError, NetnsLock};
use crate::netlink::{self, TproxyRoutes};
use crate::plan::plan;
use crate::render::{Restore, Saved};
use crate::rules::{ChainName, OwnChain, OwnerMatch, RuleSet, TableName};
use crate::spec::{CaptureSpec, InboundPorts};
use crate::types::{Family, Owner, lookup_id};

/// Which iptables implementation holds the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flavor {
    /// x_tables, through `iptables-legacy-*`.
    Legacy,
    /// nf_tables, through `iptables-nft-*`.
    Nft,
}

impl Flavor {
    /// The flavor's name as `--force-iptables-version` takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Legacy => "legacy",
            Self::Nft => "nft",
        }
    }

    /// The restore program for a family.
    pub fn restore(self, family: Family) -> &'static str {
        match (self, family) {
            (Self::Legacy, Family::V4) => "iptables-legacy-restore",
            (Self::Legacy, Family::V6) => "ip6tables-legacy-restore",
            (Self::Nft, Family::V4) => "iptables-nft-restore",
            (Self::Nft, Family::V6) => "ip6tables-nft-restore",
        }
    }

    /// The save program for a family.
    pub fn save(self, family: Family) -> &'static str {
        match (self, family) {
            (Self::Legacy, Family::V4) => "iptables-legacy-save",
            (Self::Legacy, Family::V6) => "ip6tables-legacy-save",
            (Self::Nft, Family::V4) => "iptables-nft-save",
            (Self::Nft, Family::V6) => "ip6tables-nft-save",
        }
    }
}

/// What a program printed and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// Whether it exited 0.
    pub success: bool,
    /// Exit code, if it exited.
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Runs programs; the seam tests replace.
pub trait Exec {
    /// Runs `program` with `args`, feeding `stdin` if given.
    ///
    /// # Errors
    /// When the program cannot be started or its pipes fail.
    fn run(&self, program: &str, args: &[&str], stdin: Option<&str>) -> io::Result<Output>;
}

/// Runs programs on this machine, in the calling thread's network namespace.
#[derive(Debug, Clone, Default)]
pub struct SystemExec {
    /// A private xtables lock file (`XTABLES_LOCKFILE`), so that capture in a pod's network
    /// namespace does not contend with the node's own iptables users for `/run/xtables.lock`.
    pub lock_file: Option<PathBuf>,
}

impl Exec for SystemExec {
    fn run(&self, program: &str, args: &[&str], stdin: Option<&str>) -> io::Result<Output> {
        let mut cmd = Command::new(program);
        cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.stdin(match stdin {
            Some(text) => Stdio::from(sealed_input(text)?),
            None => Stdio::null(),
        });
        if let Some(lock) = &self.lock_file {
            cmd.env("XTABLES_LOCKFILE", lock);
        }
        let out = cmd.spawn()?.wait_with_output()?;
        Ok(Output {
            success: out.status.success(),
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

/// The whole of `text` in a sealed memory file, read from its start: a child reading it as
/// stdin always gets complete input, even if this process dies while the child runs (a pipe
/// being written would end early, and `iptables-restore` would commit the tables it got).
fn sealed_input(text: &str) -> io::Result<OwnedFd> {
    let fd = memfd_create(
        c"capture-restore",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )?;
    let mut file = File::from(fd);
    file.write_all(text.as_bytes())?;
    let seals =
        SealFlag::F_SEAL_WRITE | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_SEAL;
    fcntl(&file, FcntlArg::F_ADD_SEALS(seals))?;
    file.rewind()?;
    Ok(file.into())
}

/// Why applying or removing a capture failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A program could not be started.
    #[error("cannot run {program}: {source} (is the iptables package installed?)")]
    Spawn {
        /// The program.
        program: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A program failed.
    #[error("{program} {} failed{}: {}", args.join(" "), code.map(|c| format!(" with exit code {c}")).unwrap_or_default(), stderr.trim())]
    Exec {
        /// The program.
        program: &'static str,
        /// Its arguments.
        args: Vec<String>,
        /// Its exit code.
        code: Option<i32>,
        /// What it printed on stderr.
        stderr: String,
    },
    /// Capture rules from another configuration are present.
    #[error(
        "capture rules already present ({family}, {flavor}) differ from this configuration: {}; rerun with --reconcile to replace them, or --cleanup-only to remove them",
        details.join("; "), flavor = flavor.as_str()
    )]
    Drift {
        /// The family.
        family: Family,
        /// The flavor holding them.
        flavor: Flavor,
        /// What differs.
        details: Vec<String>,
    },
    /// No iptables flavor works here.
    #[error("no usable iptables found: {0}")]
    NoIptables(String),
    /// Applying a later family failed; the earlier changes were put back.
    #[error("{source}; nothing was left applied (changes to {} were rolled back)", rolled_back.iter().map(ToString::to_string).collect::<Vec<_>>().join(" and "))]
    RolledBack {
        /// The failure.
        #[source]
        source: Box<ApplyError>,
        /// The families whose changes were undone.
        rolled_back: Vec<Family>,
    },
    /// Kernel state beyond rules (addresses, policy routing) could not be changed.
    #[error(transparent)]
    Netlink(#[from] netlink::NetlinkError),
    /// The network namespace's lock could not be taken.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// Foreign rules would keep packets from capture's rules (`--strict`); nothing was changed.
    #[error("capture would not see all traffic: {}; nothing was changed (without --strict this is a warning)", details.join("; "))]
    Shadowed {
        /// One entry per rule or chain.
        details: Vec<String>,
    },
    /// Removing a later family failed; the earlier removals were put back.
    #[error("{source}; nothing was removed (the removal from {} was put back)", rolled_back.iter().map(ToString::to_string).collect::<Vec<_>>().join(" and "))]
    CleanupRolledBack {
        /// The failure.
        #[source]
        source: Box<ApplyError>,
        /// The families put back.
        rolled_back: Vec<Family>,
    },
    /// A cleanup step after the rules failed: what was removed, what is left.
    #[error("{removed}, but {left} could not be removed and is still there: {source}")]
    PartlyRemoved {
        /// What was removed.
        removed: String,
        /// What is left.
        left: String,
        /// Why.
        #[source]
        source: Box<ApplyError>,
    },
    /// Applying failed and so did putting things back.
    #[error("{source}; rolling back also failed, capture may be partly applied: {rollback}")]
    RollbackFailed {
        /// The failure.
        #[source]
        source: Box<ApplyError>,
        /// The rollback's failure.
        rollback: Box<ApplyError>,
    },
}

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

fn table_name(name: &str) -> Option<TableName> {
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

/// What the kernel must hold for one table, in `iptables-save` form.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct ExpectedTable {
    own: BTreeMap<String, Vec<String>>,
    builtin: BTreeMap<String, Vec<String>>,
}

fn expected(rules: &RuleSet) -> BTreeMap<TableName, ExpectedTable> {
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
fn ours_in_builtin<'a>(found: &'a [String], expected: &[String]) -> Vec<&'a String> {
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
    Partial(Vec<String>),
    /// Something of ours is present but differs; each entry says what.
    Differs(Vec<String>),
}

/// Whether `part` is `whole` with some entries left out, order kept.
fn is_subsequence(part: &[&String], whole: &[String]) -> bool {
    let mut rest = whole.iter();
    part.iter().all(|p| rest.any(|w| w == *p))
}

fn compare(expected: &BTreeMap<TableName, ExpectedTable>, saved: &SavedState) -> State {
    let empty = ExpectedTable::default();
    let mut missing = Vec::new();
    let mut conflicts = Vec::new();
    let mut anything_ours = false;
    let tables: BTreeSet<TableName> = expected.keys().chain(saved.tables.keys()).copied().collect();
    for name in tables {
        let exp = expected.get(&name).unwrap_or(&empty);
        let found = saved.tables.get(&name);
        let t = name.as_str();
        for (chain, rules) in &exp.own {
            match found.and_then(|f| f.chains.get(chain)) {
                None => missing.push(format!("{t} chain {chain} is missing")),
                Some(actual) => {
                    anything_ours = true;
                    if actual != rules {
                        conflicts.push(describe_chain_difference(t, chain, rules, actual));
                    }
                }
            }
        }
        if let Some(found) = found {
            for chain in found.chains.keys() {
                if ours::is_own_chain(chain) && !exp.own.contains_key(chain) {
                    anything_ours = true;
                    conflicts.push(format!(
                        "{t} chain {chain} is present but not part of this configuration"
                    ));
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
                    .map(|w| format!("{t} {builtin} lacks '{w}'"));
                if is_subsequence(&ours, want) {
                    missing.extend(lacking);
                    continue;
                }
                conflicts.extend(lacking);
                for extra in ours.iter().filter(|o| !want.contains(o)) {
                    conflicts.push(format!(
                        "{t} {builtin} has '{extra}' which this configuration does not add"
                    ));
                }
                if ours.iter().all(|o| want.contains(o)) {
                    conflicts.push(format!("{t} {builtin}: our rules are out of order or repeated"));
                }
            }
        } else {
            for (builtin, want) in &exp.builtin {
                if let Some(first) = want.first() {
                    missing.push(format!("{t} {builtin} lacks '{first}'"));
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

fn describe_chain_difference(table: &str, chain: &str, want: &[String], actual: &[String]) -> String {
    let at = want
        .iter()
        .zip(actual)
        .position(|(w, a)| w != a)
        .unwrap_or(want.len().min(actual.len()));
    let show = |list: &[String]| {
        list.get(at)
            .map_or_else(|| "nothing".to_owned(), |r| format!("'{r}'"))
    };
    format!(
        "{table} {chain} has {} rules where {} are expected; rule {} is {} instead of {}",
        actual.len(),
        want.len(),
        at + 1,
        show(actual),
        show(want)
    )
}

/// One restore per table that empties our chains (`:CHAIN - [0:0]` flushes an existing chain
/// under `--noflush`), deletes our old rules from built-in chains, adds the new rules and
/// removes chains no longer used, all inside the table's single `COMMIT`.
fn reconcile_payload(
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
struct OursInTable<'a> {
    own: BTreeMap<&'a str, &'a [String]>,
    builtin: BTreeMap<&'static str, Vec<(usize, &'a String)>>,
}

fn ours_in_table<'a>(
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
fn restore_ours_payload(
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
fn without_ours(now: &SavedState, expected: &BTreeMap<TableName, ExpectedTable>) -> SavedState {
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
fn cleanup_payload(expected: &BTreeMap<TableName, ExpectedTable>, saved: &SavedState) -> Option<String> {
    let names: BTreeSet<TableName> = saved.tables.keys().copied().collect();
    restore_ours_payload(&without_ours(saved, expected), saved, &names, expected)
}

/// What applying did for one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The rules were installed.
    Applied,
    /// The rules were already exactly right; nothing was run.
    Unchanged,
    /// Differing rules were replaced in place.
    Reconciled,
    /// Part of exactly this configuration was present (an earlier run was killed half-way);
    /// the rest was added.
    Completed,
}

impl Change {
    /// How capture-init and capture-cni say it.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Unchanged => "already in place, nothing changed",
            Self::Reconciled => "reconciled",
            Self::Completed => "completed (part of it was missing)",
        }
    }
}

/// How to treat rules that are already present.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyOptions {
    /// Replace differing capture rules instead of failing.
    pub reconcile: bool,
    /// Apply the payload even when the rules look right (fails if our chains exist, as
    /// istio-iptables' `--force-apply` does).
    pub force: bool,
    /// Fail, changing nothing, when foreign rules would keep packets from capture's rules
    /// (see [`Applied::warnings`]) instead of only warning.
    pub strict: bool,
}

/// What [`Iptables::apply`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Per family, in order.
    pub changes: Vec<(Family, Change)>,
    /// Foreign rules ahead of capture's in the built-in chains it hooks that can end a packet's
    /// traversal (so those packets are not captured), and our chains found in the other
    /// iptables flavour: one line each.
    pub warnings: Vec<String>,
}

/// The iptables backend.
#[derive(Debug, Clone)]
pub struct Iptables<E: Exec> {
    exec: E,
    flavor: Flavor,
}

impl<E: Exec> Iptables<E> {
    /// A backend driving `flavor` through `exec`.
    pub fn new(exec: E, flavor: Flavor) -> Self {
        Self { exec, flavor }
    }

    /// The flavor in use.
    pub fn flavor(&self) -> Flavor {
        self.flavor
    }

    /// Picks the flavor as Istio does, with Kuma's refinement: the flavor that already holds
    /// rules (ours first, then anyone's) wins, so rules never end up split across both;
    /// otherwise the system's `iptables` alternative; otherwise nft.
    ///
    /// # Errors
    /// [`ApplyError::NoIptables`] when neither flavor can list its rules.
    pub fn detect(exec: E) -> Result<Self, ApplyError> {
        let mut counts = Vec::new();
        let mut problems = Vec::new();
        for flavor in [Flavor::Nft, Flavor::Legacy] {
            match exec.run(flavor.save(Family::V4), &[], None) {
                Ok(out) if out.success => {
                    let state = SavedState::parse(&out.stdout);
                    let ours = !state.own_chains().is_empty();
                    let rules = out.stdout.lines().filter(|l| l.starts_with("-A ")).count();
                    counts.push((flavor, ours, rules));
                }
                Ok(out) => problems.push(format!("{}: {}", flavor.save(Family::V4), out.stderr.trim())),
                Err(e) => problems.push(format!("{}: {e}", flavor.save(Family::V4))),
            }
        }
        let pick = counts
            .iter()
            .find(|(_, ours, _)| *ours)
            .or_else(|| {
                counts
                    .iter()
                    .filter(|(_, _, rules)| *rules > 0)
                    .max_by_key(|(_, _, rules)| *rules)
            })
            .map(|(f, _, _)| *f)
            .or_else(|| {
                let available: Vec<Flavor> = counts.iter().map(|(f, _, _)| *f).collect();
                let system = exec
                    .run("iptables", &["--version"], None)
                    .ok()
                    .filter(|o| o.success);
                let preferred = match system {
                    Some(o) if o.stdout.contains("legacy") => Flavor::Legacy,
                    _ => Flavor::Nft,
                };
                if available.contains(&preferred) {
                    Some(preferred)
                } else {
                    available.first().copied()
                }
            });
        pick.map(|flavor| Self::new(exec, flavor))
            .ok_or_else(|| ApplyError::NoIptables(problems.join("; ")))
    }

    fn run(&self, program: &'static str, args: &[&str], stdin: Option<&str>) -> Result<String, ApplyError> {
        let out = self
            .exec
            .run(program, args, stdin)
            .map_err(|source| ApplyError::Spawn { program, source })?;
        if !out.success {
            return Err(ApplyError::Exec {
                program,
                args: args.iter().map(|a| (*a).to_owned()).collect(),
                code: out.code,
                stderr: out.stderr,
            });
        }
        Ok(out.stdout)
    }

    /// Reads the family's current rules.
    ///
    /// # Errors
    /// When the save program fails.
    pub fn save(&self, family: Family) -> Result<SavedState, ApplyError> {
        self.run(self.flavor.save(family), &[], None)
            .map(|text| SavedState::parse(&text))
    }

    fn restore(&self, family: Family, payload: &str, noflush: bool) -> Result<(), ApplyError> {
        let mut args = Vec::new();
        if noflush {
            args.push("--noflush");
        }
        // Legacy iptables serialises writers with a lock file; nft does not need it.
        if self.flavor == Flavor::Legacy {
            args.extend(["--wait", "30"]);
        }
        self.run(self.flavor.restore(family), &args, Some(payload))
            .map(drop)
    }

    /// Compares the kernel's rules with what `spec` needs in `family`.
    ///
    /// # Errors
    /// When the rules cannot be read.
    pub fn state(&self, spec: &CaptureSpec, family: Family) -> Result<State, ApplyError> {
        Ok(compare(&expected(&plan(spec, family)), &self.save(family)?))
    }

    /// Foreign rules in `family` that stand before capture's rules in the built-in chains it
    /// hooks and can end a packet's traversal there: one line each.
    ///
    /// # Errors
    /// When the rules cannot be read.
    pub fn shadowing(&self, spec: &CaptureSpec, family: Family) -> Result<Vec<String>, ApplyError> {
        Ok(shadowing_in(
            &expected(&plan(spec, family)),
            &self.save(family)?,
            false,
        ))
    }

    /// Installs `spec`'s rules in every family it covers, or changes nothing.
    ///
    /// # Errors
    /// [`ApplyError::Drift`] (nothing changed) when differing rules are present and
    /// `options.reconcile` is off; [`ApplyError::Shadowed`] (nothing changed) with
    /// `options.strict`; any failure after a change comes back with the change undone.
    pub fn apply(&self, spec: &CaptureSpec, options: ApplyOptions) -> Result<Applied, ApplyError> {
        // Read and judge every family before touching any.
        let mut work = Vec::new();
        let mut warnings = Vec::new();
        for &family in spec.families() {
            let rules = plan(spec, family);
            let exp = expected(&rules);
            let saved = self.save(family)?;
            let state = compare(&exp, &saved);
            let payload = match (&state, options) {
                (State::Equal, ApplyOptions { force: false, .. }) => None,
                (State::Partial(_), ApplyOptions { force: false, .. }) => {
                    Some((reconcile_payload(&rules, &exp, &saved), Change::Completed))
                }
                (
                    State::Differs(details),
                    ApplyOptions {
                        reconcile: false,
                        force: false,
                        ..
                    },
                ) => {
                    return Err(ApplyError::Drift {
                        family,
                        flavor: self.flavor,
                        details: details.clone(),
                    });
                }
                (
                    State::Differs(_),
                    ApplyOptions {
                        reconcile: true,
                        force: false,
                        ..
                    },
                ) => Some((reconcile_payload(&rules, &exp, &saved), Change::Reconciled)),
                _ => Some((Restore(&rules).to_string(), Change::Applied)),
            };
            let appending = !matches!(state, State::Equal);
            warnings.extend(
                shadowing_in(&exp, &saved, appending)
                    .into_iter()
                    .map(|w| format!("{family}: {w}")),
            );
            work.push((family, rules, exp, saved, payload));
        }
        if options.strict && !warnings.is_empty() {
            return Err(ApplyError::Shadowed { details: warnings });
        }
        let mut done: Vec<(Family, &BTreeMap<TableName, ExpectedTable>, &RuleSet, &SavedState)> = Vec::new();
        let mut changes = Vec::new();
        for (family, rules, exp, saved, payload) in &work {
            let Some((payload, change)) = payload else {
                changes.push((*family, Change::Unchanged));
                continue;
            };
            done.push((*family, exp, rules, saved));
            if let Err(e) = self.restore(*family, payload, true) {
                return Err(self.roll_back(e, &done));
            }
            changes.push((*family, *change));
        }
        Ok(Applied { changes, warnings })
    }

    /// Puts capture's part of every table a failed apply may have touched back as it was
    /// before, and nothing else (see [`restore_ours_payload`]).
    ///
    /// A family whose rules read back as they were is left alone: the restore that failed
    /// usually committed nothing. When nothing needed undoing, the original error is returned
    /// as it is.
    fn roll_back(
        &self,
        error: ApplyError,
        done: &[(Family, &BTreeMap<TableName, ExpectedTable>, &RuleSet, &SavedState)],
    ) -> ApplyError {
        let mut rolled_back = Vec::new();
        for (family, exp, rules, saved) in done {
            let mut touched: BTreeSet<TableName> = rules.tables.iter().map(|t| t.name).collect();
            touched.extend(saved.own_chains().into_iter().map(|(t, _)| t));
            let payload = match self.save(*family) {
                Ok(now) => restore_ours_payload(saved, &now, &touched, exp),
                Err(rollback) => {
                    return ApplyError::RollbackFailed {
                        source: Box::new(error),
                        rollback: Box::new(rollback),
                    };
                }
            };
            let Some(payload) = payload else { continue };
            if let Err(rollback) = self.restore(*family, &payload, true) {
                return ApplyError::RollbackFailed {
                    source: Box::new(error),
                    rollback: Box::new(rollback),
                };
            }
            rolled_back.push(*family);
        }
        if rolled_back.is_empty() {
            return error;
        }
        ApplyError::RolledBack {
            source: Box::new(error),
            rolled_back,
        }
    }

    /// Removes everything capture wrote in both families, whatever configuration wrote it (our
    /// chains, jumps to them, and capture's rule shapes in built-in chains; see [`ours`]),
    /// leaving every other rule alone. Succeeds when there is nothing to remove. Both families
    /// are read before either is changed, and if the second removal fails the first is put
    /// back, so a failure leaves the rules as they were.
    ///
    /// Returns the TPROXY marks the removed rules used (for the policy routing that goes with
    /// them).
    ///
    /// # Errors
    /// When the rules cannot be read or the removal fails. IPv6 is skipped when the kernel
    /// has no IPv6 iptables and `spec` does not use IPv6.
    pub fn cleanup(&self, spec: &CaptureSpec) -> Result<BTreeSet<u32>, ApplyError> {
        let mut work = Vec::new();
        let mut marks = BTreeSet::new();
        for family in [Family::V4, Family::V6] {
            let saved = match self.save(family) {
                Ok(saved) => saved,
                Err(_) if family == Family::V6 && !spec.ipv6 => continue,
                Err(e) => return Err(e),
            };
            marks.extend(ours::tproxy_marks(&saved));
            let exp = expected(&plan(spec, family));
            if let Some(payload) = cleanup_payload(&exp, &saved) {
                work.push((family, exp, saved, payload));
            }
        }
        let mut done: Vec<(Family, &BTreeMap<TableName, ExpectedTable>, &SavedState)> = Vec::new();
        for (family, exp, saved, payload) in &work {
            done.push((*family, exp, saved));
            if let Err(error) = self.restore(*family, payload, true) {
                return Err(self.put_back(error, &done));
            }
        }
        Ok(marks)
    }

    /// Undoes a cleanup that failed part-way: capture's part of each family is restored from
    /// what was read before.
    fn put_back(
        &self,
        error: ApplyError,
        done: &[(Family, &BTreeMap<TableName, ExpectedTable>, &SavedState)],
    ) -> ApplyError {
        let mut rolled_back = Vec::new();
        for (family, exp, saved) in done {
            let names: BTreeSet<TableName> = saved.tables.keys().copied().collect();
            let result =
                self.save(*family)
                    .and_then(|now| match restore_ours_payload(saved, &now, &names, exp) {
                        Some(payload) => self.restore(*family, &payload, true).map(|()| true),
                        None => Ok(false),
                    });
            match result {
                Ok(true) => rolled_back.push(*family),
                Ok(false) => {}
                Err(rollback) => {
                    return ApplyError::RollbackFailed {
                        source: Box::new(error),
                        rollback: Box::new(rollback),
                    };
                }
            }
        }
        if rolled_back.is_empty() {
            return error;
        }
        ApplyError::CleanupRolledBack {
            source: Box::new(error),
            rolled_back,
        }
    }
}

fn shadowing_in(
    expected: &BTreeMap<TableName, ExpectedTable>,
    saved: &SavedState,
    appending: bool,
) -> Vec<String> {
    let mut found = Vec::new();
    for (name, exp) in expected {
        if let Some(table) = saved.tables.get(name) {
            found.extend(ours::shadowing(*name, table, &exp.builtin, appending));
        }
    }
    found
}

impl<E: Exec + Clone> Iptables<E> {
    /// The same backend on the other iptables flavor.
    fn other_flavor(&self) -> Self {
        let other = match self.flavor {
            Flavor::Legacy => Flavor::Nft,
            Flavor::Nft => Flavor::Legacy,
        };
        Self::new(self.exec.clone(), other)
    }

    /// Our chains held by the other flavor, per family, as `"IPv4 nat ISTIO_OUTPUT"`. A flavor
    /// that cannot list its rules (not installed, no kernel support) holds none.
    fn other_flavor_chains(&self, families: &[Family]) -> Vec<String> {
        let other = self.other_flavor();
        let mut found = Vec::new();
        for &family in families {
            if let Ok(saved) = other.save(family) {
                for (table, chain) in saved.own_chains() {
                    found.push(format!("{family} {} {chain}", table.as_str()));
                }
            }
        }
        found
    }
}

/// What `spec` needs besides rules: `::6` on `lo` with IPv6 (the inbound passthrough source),
/// and for TPROXY the `fwmark` rule and `local` route per family.
fn tproxy_routes(spec: &CaptureSpec) -> Option<TproxyRoutes> {
    let (mark, table) = spec.tproxy()?;
    (spec.inbound.ports != InboundPorts::Off).then_some(TproxyRoutes { mark, table })
}

/// Installs everything `spec` needs in the calling thread's network namespace: kernel state
/// through netlink first (harmless without the rules), then the rules. If the rules fail, the
/// netlink state this call added is removed again. The whole run holds the namespace's
/// [`NetnsLock`], so concurrent runs (capture-init and capture-cni alike) never interleave.
///
/// # Errors
/// As [`Iptables::apply`], [`ApplyError::Lock`] or [`ApplyError::Netlink`].
pub fn install<E: Exec + Clone>(
    backend: &Iptables<E>,
    spec: &CaptureSpec,
    options: ApplyOptions,
) -> Result<Applied, ApplyError> {
    let _lock = NetnsLock::current()?;
    let mut added_address = false;
    let mut added_routes = Vec::new();
    if spec.ipv6 && !netlink::ipv6_passthrough_address_present()? {
        netlink::ensure_ipv6_passthrough_address()?;
        added_address = true;
    }
    if let Some(routes) = tproxy_routes(spec) {
        for &family in spec.families() {
            if !netlink::tproxy_routes_present(&routes, family)? {
                netlink::ensure_tproxy_routes(&routes, family)?;
                added_routes.push(family);
            }
        }
    }
    let undo_netlink = || {
        // Best effort: the rules error is the one worth reporting.
        if let Some(routes) = tproxy_routes(spec) {
            for family in &added_routes {
                let _ = netlink::remove_tproxy_routes(&routes, *family);
            }
        }
        if added_address {
            let _ = netlink::remove_ipv6_passthrough_address();
        }
    };
    let mut applied = backend.apply(spec, options).inspect_err(|_| undo_netlink())?;
    // A rerun (nothing to change) also looks at the other flavor: our chains there mean two
    // captures, or a stale one that DEL or a flavor switch would trip over.
    if applied.changes.iter().all(|(_, c)| *c == Change::Unchanged) {
        let other = backend.other_flavor().flavor();
        for chain in backend.other_flavor_chains(spec.families()) {
            applied.warnings.push(format!(
                "capture chain {chain} also exists in iptables-{}; remove it with --cleanup-only --force-iptables-version {}",
                other.as_str(),
                other.as_str()
            ));
        }
        if options.strict && !applied.warnings.is_empty() {
            return Err(ApplyError::Shadowed {
                details: applied.warnings,
            });
        }
    }
    Ok(applied)
}

/// Everything that differs from what `spec` needs in the calling thread's namespace: missing or
/// differing rules per family, foreign rules that keep packets from capture's rules, our chains
/// in the other iptables flavor, missing TPROXY routing and `::6`. Empty when capture is
/// complete. Holds the namespace's lock while it reads, so it never sees a run half-way.
///
/// # Errors
/// When the rules or routes cannot be read.
pub fn check<E: Exec + Clone>(backend: &Iptables<E>, spec: &CaptureSpec) -> Result<Vec<String>, ApplyError> {
    let _lock = NetnsLock::current()?;
    let flavor = backend.flavor().as_str();
    let mut differences = Vec::new();
    for &family in spec.families() {
        let rules = plan(spec, family);
        let exp = expected(&rules);
        let saved = backend.save(family)?;
        match compare(&exp, &saved) {
            State::Equal => {}
            State::Absent => differences.push(format!("{family} capture rules are missing ({flavor})")),
            State::Partial(details) | State::Differs(details) => {
                differences.extend(details.into_iter().map(|d| format!("{family}: {d}")));
            }
        }
        differences.extend(
            shadowing_in(&exp, &saved, false)
                .into_iter()
                .map(|d| format!("{family}: {d}")),
        );
    }
    let other = backend.other_flavor().flavor().as_str();
    for chain in backend.other_flavor_chains(spec.families()) {
        differences.push(format!("capture chain {chain} also exists in iptables-{other}"));
    }
    if let Some(routes) = tproxy_routes(spec) {
        for &family in spec.families() {
            if !netlink::tproxy_routes_present(&routes, family)? {
                differences.push(format!("{family} TPROXY policy routing ({routes}) is missing"));
            }
        }
    }
    if spec.ipv6 && !netlink::ipv6_passthrough_address_present()? {
        differences.push("::6/128 is missing on lo".into());
    }
    Ok(differences)
}

/// Removes everything capture owns in the calling thread's namespace, whatever flags `spec` was
/// made from: capture's rules in both families of the backend's flavor and of the other flavor
/// (when it works here), the TPROXY policy routing of every mark those rules used (and of
/// `spec`'s), and `::6`. Succeeds when nothing is there.
///
/// # Errors
/// As [`Iptables::cleanup`] (the rules are then as they were), [`ApplyError::Lock`], or
/// [`ApplyError::PartlyRemoved`] naming what is left when a later step fails.
pub fn uninstall<E: Exec + Clone>(backend: &Iptables<E>, spec: &CaptureSpec) -> Result<(), ApplyError> {
    let _lock = NetnsLock::current()?;
    let mut marks = backend.cleanup(spec)?;
    let other = backend.other_flavor();
    let removed_so_far = format!("rules removed from iptables-{}", backend.flavor().as_str());
    let partly = |left: String, source: ApplyError| ApplyError::PartlyRemoved {
        removed: removed_so_far.clone(),
        left,
        source: Box::new(source),
    };
    // The other flavor only counts when it can list its rules at all.
    if other.save(Family::V4).is_ok() {
        match other.cleanup(spec) {
            Ok(more) => marks.extend(more),
            Err(e) => {
                return Err(partly(
                    format!("rules in iptables-{}", other.flavor().as_str()),
                    e,
                ));
            }
        }
    }
    let mut routing: Vec<(Family, TproxyRoutes)> = Vec::new();
    for family in [Family::V4, Family::V6] {
        if let Some(routes) = spec.tproxy().map(|(mark, table)| TproxyRoutes { mark, table }) {
            routing.push((family, routes));
        }
        // No IPv6 in the namespace's kernel: nothing of IPv6 to remove.
        let Ok(rules) = netlink::tproxy_rules(family) else {
            continue;
        };
        for routes in rules.into_iter().filter(|r| marks.contains(&r.mark.get())) {
            if !routing.contains(&(family, routes)) {
                routing.push((family, routes));
            }
        }
    }
    for (family, routes) in routing {
        if let Err(e) = netlink::remove_tproxy_routes(&routes, family) {
            if family == Family::V6 && e.raw_os_error() == Some(libc::EAFNOSUPPORT) {
                continue;
            }
            return Err(partly(
                format!("{family} TPROXY policy routing ({routes})"),
                e.into(),
            ));
        }
    }
    match netlink::remove_ipv6_passthrough_address() {
        Ok(()) => Ok(()),
        // A namespace without IPv6 has no ::6.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EAFNOSUPPORT | libc::ENODEV)) && !spec.ipv6 => Ok(()),
        Err(e) => Err(partly("::6/128 on lo".into(), e.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::CaptureSpec;

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
                "nat ISTIO_INBOUND has 5 rules where 5 are expected; rule 3 is '-p tcp -m tcp --dport 15022 -j RETURN' \
              instead of '-p tcp -m tcp --dport 15021 -j RETURN'"
            ]
        );
        let missing_jump = SAVED_SIDECAR.replace("-A OUTPUT -j ISTIO_OUTPUT\n", "");
        let State::Partial(details) = compare(&sidecar_expected(), &SavedState::parse(&missing_jump)) else {
            panic!("a missing jump must show")
        };
        assert_eq!(details, ["nat OUTPUT lacks '-j ISTIO_OUTPUT'"]);
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
    struct FakeKernel {
        rules: std::cell::RefCell<BTreeMap<bool, String>>,
        failing: &'static str,
        calls: std::cell::RefCell<Vec<String>>,
    }

    impl FakeKernel {
        fn failing(program: &'static str) -> Self {
            Self {
                rules: std::cell::RefCell::default(),
                failing: program,
                calls: std::cell::RefCell::default(),
            }
        }

        fn with(self, v4: &str, v6: &str) -> Self {
            self.rules.borrow_mut().insert(false, v4.to_owned());
            self.rules.borrow_mut().insert(true, v6.to_owned());
            self
        }
    }

    impl Exec for &FakeKernel {
        fn run(&self, program: &str, args: &[&str], stdin: Option<&str>) -> io::Result<Output> {
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
}
