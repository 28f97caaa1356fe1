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

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::{self, Write as _};
use std::path::PathBuf;
use std::process::{Command, Stdio};

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
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        if let Some(lock) = &self.lock_file {
            cmd.env("XTABLES_LOCKFILE", lock);
        }
        let mut child = cmd.spawn()?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            match pipe.write_all(text.as_bytes()) {
                // The program quit without reading all of its input (a restore that fails early):
                // its exit status and stderr say why, so wait for them.
                Err(e) if e.kind() != io::ErrorKind::BrokenPipe => return Err(e),
                _ => {}
            }
        }
        let out = child.wait_with_output()?;
        Ok(Output {
            success: out.status.success(),
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
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

fn jumps_to_own_chain(spec: &str) -> bool {
    let target = spec
        .rsplit_once("-j ")
        .map_or("", |(_, t)| t.split_whitespace().next().unwrap_or(""));
    OwnChain::ALL.iter().any(|c| c.as_str() == target)
}

/// Our rules among a built-in chain's rules: those the configuration adds, and any jump to one
/// of our chains.
fn ours_in_builtin<'a>(found: &'a [String], expected: &[String]) -> Vec<&'a String> {
    found
        .iter()
        .filter(|spec| expected.contains(spec) || jumps_to_own_chain(spec))
        .collect()
}

const BUILTINS: [&str; 5] = ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"];

/// How the kernel's rules compare with a configuration, for one family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// None of our chains or rules are present.
    Absent,
    /// Exactly the configuration's rules are present.
    Equal,
    /// Something of ours is present but differs; each entry says what.
    Differs(Vec<String>),
}

fn compare(expected: &BTreeMap<TableName, ExpectedTable>, saved: &SavedState) -> State {
    let empty = ExpectedTable::default();
    let mut differences = Vec::new();
    let mut anything_ours = false;
    let tables: BTreeSet<TableName> = expected.keys().chain(saved.tables.keys()).copied().collect();
    for name in tables {
        let exp = expected.get(&name).unwrap_or(&empty);
        let found = saved.tables.get(&name);
        let t = name.as_str();
        for (chain, rules) in &exp.own {
            match found.and_then(|f| f.chains.get(chain)) {
                None => differences.push(format!("{t} chain {chain} is missing")),
                Some(actual) => {
                    anything_ours = true;
                    if actual != rules {
                        differences.push(describe_chain_difference(t, chain, rules, actual));
                    }
                }
            }
        }
        if let Some(found) = found {
            for chain in found.chains.keys() {
                if OwnChain::ALL.iter().any(|c| c.as_str() == chain) && !exp.own.contains_key(chain) {
                    anything_ours = true;
                    differences.push(format!(
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
                    .ne(want.iter().map(String::as_str))
                {
                    for missing in want.iter().filter(|w| !actual.contains(w)) {
                        differences.push(format!("{t} {builtin} lacks '{missing}'"));
                    }
                    for extra in ours.iter().filter(|o| !want.contains(o)) {
                        differences.push(format!(
                            "{t} {builtin} has '{extra}' which this configuration does not add"
                        ));
                    }
                    if want.iter().all(|w| actual.contains(w)) && ours.iter().all(|o| want.contains(o)) {
                        differences.push(format!("{t} {builtin}: our rules are out of order or repeated"));
                    }
                }
            }
        } else {
            for (builtin, want) in &exp.builtin {
                if !want.is_empty() {
                    differences.push(format!("{t} {builtin} lacks '{}'", want[0]));
                }
            }
        }
    }
    if !anything_ours {
        State::Absent
    } else if differences.is_empty() {
        State::Equal
    } else {
        State::Differs(differences)
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

/// Removes our rules from built-in chains, then flushes and deletes our chains.
fn cleanup_payload(expected: &BTreeMap<TableName, ExpectedTable>, saved: &SavedState) -> Option<String> {
    let mut out = String::new();
    let empty = ExpectedTable::default();
    for (name, found) in &saved.tables {
        let exp = expected.get(name).unwrap_or(&empty);
        let mut lines = Vec::new();
        for builtin in BUILTINS {
            let none = Vec::new();
            let want = exp.builtin.get(builtin).unwrap_or(&none);
            for spec in ours_in_builtin(found.chains.get(builtin).unwrap_or(&none), want) {
                lines.push(format!("-D {builtin} {spec}"));
            }
        }
        let own: Vec<&str> = OwnChain::ALL
            .iter()
            .map(|c| c.as_str())
            .filter(|c| found.chains.contains_key(*c))
            .collect();
        lines.extend(own.iter().map(|c| format!("-F {c}")));
        lines.extend(own.iter().map(|c| format!("-X {c}")));
        if !lines.is_empty() {
            let _ = writeln!(out, "*{}", name.as_str());
            for line in lines {
                let _ = writeln!(out, "{line}");
            }
            out.push_str("COMMIT\n");
        }
    }
    (!out.is_empty()).then_some(out)
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
}

/// How to treat rules that are already present.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyOptions {
    /// Replace differing capture rules instead of failing.
    pub reconcile: bool,
    /// Apply the payload even when the rules look right (fails if our chains exist, as
    /// istio-iptables' `--force-apply` does).
    pub force: bool,
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

    /// Installs `spec`'s rules in every family it covers, or changes nothing.
    ///
    /// # Errors
    /// [`ApplyError::Drift`] (nothing changed) when differing rules are present and
    /// `options.reconcile` is off; any failure after a change comes back with the change undone.
    pub fn apply(
        &self,
        spec: &CaptureSpec,
        options: ApplyOptions,
    ) -> Result<Vec<(Family, Change)>, ApplyError> {
        // Read and judge every family before touching any.
        let mut work = Vec::new();
        for &family in spec.families() {
            let rules = plan(spec, family);
            let exp = expected(&rules);
            let saved = self.save(family)?;
            let state = compare(&exp, &saved);
            let payload = match (&state, options) {
                (State::Equal, ApplyOptions { force: false, .. }) => None,
                (
                    State::Differs(details),
                    ApplyOptions {
                        reconcile: false,
                        force: false,
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
                    },
                ) => Some((reconcile_payload(&rules, &exp, &saved), Change::Reconciled)),
                _ => Some((Restore(&rules).to_string(), Change::Applied)),
            };
            work.push((family, rules, saved, payload));
        }
        let mut done: Vec<(Family, &RuleSet, &SavedState)> = Vec::new();
        let mut changes = Vec::new();
        for (family, rules, saved, payload) in &work {
            let Some((payload, change)) = payload else {
                changes.push((*family, Change::Unchanged));
                continue;
            };
            done.push((*family, rules, saved));
            if let Err(e) = self.restore(*family, payload, true) {
                return Err(self.roll_back(e, &done));
            }
            changes.push((*family, *change));
        }
        Ok(changes)
    }

    /// Puts every table a failed apply may have touched back as it was saved beforehand.
    ///
    /// A family whose rules read back unchanged is left alone: the restore that failed usually
    /// committed nothing, and running the same program again to "undo" it would most likely fail
    /// the same way and report a partial capture that is not there. When nothing needed undoing,
    /// the original error is returned as it is.
    fn roll_back(&self, error: ApplyError, done: &[(Family, &RuleSet, &SavedState)]) -> ApplyError {
        let mut rolled_back = Vec::new();
        for (family, rules, saved) in done {
            let mut touched: BTreeSet<TableName> = rules.tables.iter().map(|t| t.name).collect();
            touched.extend(saved.own_chains().into_iter().map(|(t, _)| t));
            let unchanged = self.save(*family).is_ok_and(|now| {
                touched.iter().all(|name| {
                    now.tables.get(name).map(|t| &t.chains) == saved.tables.get(name).map(|t| &t.chains)
                })
            });
            if unchanged {
                continue;
            }
            let mut text = String::new();
            for name in touched {
                match saved.tables.get(&name) {
                    Some(table) => text.push_str(&table.text),
                    None => {
                        let _ = write!(text, "*{}\nCOMMIT\n", name.as_str());
                    }
                }
            }
            if let Err(rollback) = self.restore(*family, &text, false) {
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

    /// Removes what `spec` creates (our rules in built-in chains, any jump to our chains, and
    /// our chains) from both families, leaving every other rule alone. Succeeds when there is
    /// nothing to remove.
    ///
    /// # Errors
    /// When the rules cannot be read or the removal fails. IPv6 is skipped when the kernel
    /// has no IPv6 iptables and `spec` does not use IPv6.
    pub fn cleanup(&self, spec: &CaptureSpec) -> Result<(), ApplyError> {
        for family in [Family::V4, Family::V6] {
            let saved = match self.save(family) {
                Ok(saved) => saved,
                Err(_) if family == Family::V6 && !spec.ipv6 => continue,
                Err(e) => return Err(e),
            };
            if let Some(payload) = cleanup_payload(&expected(&plan(spec, family)), &saved) {
                self.restore(family, &payload, true)?;
            }
        }
        Ok(())
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
/// netlink state this call added is removed again.
///
/// # Errors
/// As [`Iptables::apply`], or [`ApplyError::Netlink`].
pub fn install<E: Exec>(
    backend: &Iptables<E>,
    spec: &CaptureSpec,
    options: ApplyOptions,
) -> Result<Vec<(Family, Change)>, ApplyError> {
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
    backend.apply(spec, options).inspect_err(|_| {
        // Best effort: the rules error is the one worth reporting.
        if let Some(routes) = tproxy_routes(spec) {
            for family in &added_routes {
                let _ = netlink::remove_tproxy_routes(&routes, *family);
            }
        }
        if added_address {
            let _ = netlink::remove_ipv6_passthrough_address();
        }
    })
}

/// Removes everything `spec` installs: the rules in both families, the TPROXY routing, and
/// `::6` when `spec` uses IPv6. Succeeds when nothing is there.
///
/// # Errors
/// As [`Iptables::cleanup`], or [`ApplyError::Netlink`].
pub fn uninstall<E: Exec>(backend: &Iptables<E>, spec: &CaptureSpec) -> Result<(), ApplyError> {
    backend.cleanup(spec)?;
    if let Some(routes) = tproxy_routes(spec) {
        for family in [Family::V4, Family::V6] {
            netlink::remove_tproxy_routes(&routes, family)?;
        }
    }
    if spec.ipv6 {
        netlink::remove_ipv6_passthrough_address()?;
    }
    Ok(())
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
        let State::Differs(details) = compare(&sidecar_expected(), &SavedState::parse(&missing_jump)) else {
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

    /// Two families' rules behind a fake [`Exec`]: `*-save` prints a family's rules, a
    /// `--noflush` restore installs `SAVED_SIDECAR`, a plain restore puts back its input, and
    /// `failing` fails without changing anything. Every call is logged.
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
            *current = if args.contains(&"--noflush") {
                SAVED_SIDECAR.to_owned()
            } else {
                stdin.unwrap_or_default().to_owned()
            };
            Ok(output(true, String::new()))
        }
    }

    #[test]
    fn failure_in_ipv6_rolls_back_ipv4_only() {
        let kernel = FakeKernel::failing("ip6tables-legacy-restore");
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
                "iptables-legacy-restore --wait 30",
                "ip6tables-legacy-save",
            ]
        );
        assert_eq!(kernel.rules.borrow()[&false], "*nat\nCOMMIT\n");
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
    fn a_program_that_stops_reading_reports_its_exit_status() {
        // Far more than a pipe holds, so the write fails with EPIPE once `sh` has exited.
        let input = "x".repeat(1 << 20);
        let out = SystemExec::default()
            .run("sh", &["-c", "echo boom >&2; exit 3"], Some(&input))
            .expect("a broken stdin pipe is not an error of its own");
        assert_eq!(
            out,
            Output {
                success: false,
                code: Some(3),
                stdout: String::new(),
                stderr: "boom\n".to_owned(),
            }
        );
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
        assert!(payload.contains("-F ISTIO_REDIRECT\n") && payload.contains("-X ISTIO_REDIRECT\n"));
        let bare = "*nat\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n";
        assert_eq!(
            cleanup_payload(&sidecar_expected(), &SavedState::parse(bare)),
            None
        );
    }
}
