//! The iptables backend: detecting the flavor, judging every family before changing any, and
//! applying, rolling back and cleaning up through `iptables-restore --noflush`.

use std::collections::{BTreeMap, BTreeSet};

use super::compare::{ExpectedTable, State, compare, expected};
use super::error::Unusable;
use super::exec::{Exec, Flavor};
use super::ours;
use super::payload::{cleanup_payload, reconcile_payload, restore_ours_payload};
use super::pristine::Pristine;
use super::saved::SavedState;
use super::{Applied, ApplyError, ApplyOptions};
use crate::backend::Change;
use crate::logged::Bounded;
use crate::plan::plan;
use crate::render::Restore;
use crate::rules::{RuleSet, TableName};
use crate::spec::CaptureSpec;
use crate::types::Family;

/// The iptables backend.
#[derive(Debug, Clone)]
pub struct Iptables<E: Exec> {
    exec: E,
    flavor: Flavor,
}

/// What [`Iptables::cleanup`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cleaned {
    /// The TPROXY marks the removed rules used.
    pub marks: BTreeSet<u32>,
    /// The families that had rules of capture's, which are gone now.
    pub families: Vec<Family>,
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

    /// How the programs are run.
    pub fn exec(&self) -> &E {
        &self.exec
    }

    /// Picks the flavor as Istio does, with Kuma's refinement: the flavor that already holds
    /// rules (ours first, then anyone's) wins, so rules never end up split across both;
    /// otherwise the system's `iptables` alternative; otherwise nft.
    ///
    /// When neither flavor holds anything in IPv4 (what this compares) and the namespace says
    /// so without a program ([`Exec::pristine`]), no `*-save` runs: the system's alternative
    /// is read from where its `iptables` link points.
    ///
    /// # Errors
    /// [`ApplyError::NoIptables`] when neither flavor can list its rules.
    pub fn detect(exec: E) -> Result<Self, ApplyError> {
        if let Some(flavor) = pristine_pick(&exec) {
            return Ok(Self::new(exec, flavor));
        }
        let mut counts = Vec::new();
        let mut problems = Vec::new();
        for flavor in [Flavor::Nft, Flavor::Legacy] {
            match exec.run(flavor.save(Family::V4), &[], None) {
                Ok(out) if out.success => {
                    let state = SavedState::parse(&out.stdout);
                    let ours = !state.own_chains().is_empty();
                    let rules = out.stdout.lines().filter(|l| l.starts_with("-A ")).count();
                    tracing::debug!(
                        program = flavor.save(Family::V4),
                        rules,
                        capture_chains = ours,
                        "iptables flavour {} is usable",
                        flavor.as_str()
                    );
                    counts.push((flavor, ours, rules));
                }
                Ok(out) => problems.push(Unusable {
                    program: flavor.save(Family::V4),
                    reason: out.stderr.trim().to_owned(),
                }),
                Err(e) => problems.push(Unusable {
                    program: flavor.save(Family::V4),
                    reason: e.to_string(),
                }),
            }
        }
        for problem in &problems {
            tracing::debug!("iptables flavour not usable: {problem}");
        }
        let pick = counts
            .iter()
            .find(|(_, ours, _)| *ours)
            .inspect(|(f, ..)| tracing::debug!("iptables flavour {}: it holds capture's chains", f.as_str()))
            .or_else(|| {
                counts
                    .iter()
                    .filter(|(_, _, rules)| *rules > 0)
                    .max_by_key(|(_, _, rules)| *rules)
                    .inspect(|(f, _, n)| {
                        tracing::debug!("iptables flavour {}: it holds the most rules ({n})", f.as_str());
                    })
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
                let pick = if available.contains(&preferred) {
                    Some(preferred)
                } else {
                    available.first().copied()
                };
                if let Some(f) = pick {
                    tracing::debug!(
                        "iptables flavour {}: no rules in either, and the system's iptables is {}",
                        f.as_str(),
                        preferred.as_str()
                    );
                }
                pick
            });
        pick.map(|flavor| Self::new(exec, flavor))
            .ok_or(ApplyError::NoIptables { tried: problems })
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
    /// `options.reconcile` is off; [`ApplyError::Shadowed`] (nothing changed) with
    /// `options.strict`; any failure after a change comes back with the change undone.
    pub fn apply(&self, spec: &CaptureSpec, options: ApplyOptions) -> Result<Applied, ApplyError> {
        // Read and judge every family before touching any. A namespace that holds nothing to
        // compare reads as the empty dump its `*-save` would print (and rolls back to it).
        let pristine = self.exec.pristine(self.flavor, spec.families());
        if let Some(found) = pristine {
            let saves = match spec.families() {
                [one] => format!("{} does not run", self.flavor.save(*one)),
                _ => format!(
                    "neither {} nor {} runs",
                    self.flavor.save(Family::V4),
                    self.flavor.save(Family::V6)
                ),
            };
            tracing::debug!(
                "{}: nothing to compare, so {saves}",
                describe_pristine(found, self.flavor)
            );
        }
        let mut work = Vec::new();
        let mut warnings = Vec::new();
        for &family in spec.families() {
            let rules = plan(spec, family);
            let exp = expected(&rules);
            let saved = match pristine {
                Some(_) => SavedState::default(),
                None => self.save(family)?,
            };
            let state = compare(&exp, &saved);
            log_state(family, self.flavor, &state);
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
            tracing::info!(
                "{} input ({family}, {}):\n{}",
                self.flavor.restore(*family),
                change.describe(),
                Bounded(payload)
            );
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
                        failure: Box::new(error),
                        rollback: Box::new(rollback),
                    };
                }
            };
            let Some(payload) = payload else { continue };
            tracing::warn!("{family}: putting capture's rules back as they were: {error}");
            tracing::info!(
                "{} input ({family}, rollback):\n{}",
                self.flavor.restore(*family),
                Bounded(&payload)
            );
            if let Err(rollback) = self.restore(*family, &payload, true) {
                return ApplyError::RollbackFailed {
                    failure: Box::new(error),
                    rollback: Box::new(rollback),
                };
            }
            rolled_back.push(*family);
        }
        if rolled_back.is_empty() {
            return error;
        }
        ApplyError::RolledBack {
            failure: Box::new(error),
            rolled_back,
        }
    }

    /// Removes everything capture wrote in both families, whatever configuration wrote it (our
    /// chains, jumps to them, and capture's rule shapes in built-in chains; see the `ours` module),
    /// leaving every other rule alone. Succeeds when there is nothing to remove. Both families
    /// are read before either is changed, and if the second removal fails the first is put
    /// back, so a failure leaves the rules as they were.
    ///
    /// Returns the TPROXY marks the removed rules used (for the policy routing that goes with
    /// them) and the families it removed rules from.
    ///
    /// # Errors
    /// When the rules cannot be read or the removal fails. IPv6 is skipped when the kernel
    /// has no IPv6 iptables and `spec` does not use IPv6.
    pub fn cleanup(&self, spec: &CaptureSpec) -> Result<Cleaned, ApplyError> {
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
            match cleanup_payload(&exp, &saved) {
                Some(payload) => work.push((family, exp, saved, payload)),
                None => tracing::debug!(
                    "{family}: no rules of capture's to remove ({})",
                    self.flavor.as_str()
                ),
            }
        }
        let mut done: Vec<(Family, &BTreeMap<TableName, ExpectedTable>, &SavedState)> = Vec::new();
        for (family, exp, saved, payload) in &work {
            done.push((*family, exp, saved));
            tracing::info!(
                "{} input ({family}, cleanup):\n{}",
                self.flavor.restore(*family),
                Bounded(payload)
            );
            if let Err(error) = self.restore(*family, payload, true) {
                return Err(self.put_back(error, &done));
            }
        }
        Ok(Cleaned {
            marks,
            families: work.iter().map(|(family, ..)| *family).collect(),
        })
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
                        failure: Box::new(error),
                        rollback: Box::new(rollback),
                    };
                }
            }
        }
        if rolled_back.is_empty() {
            return error;
        }
        ApplyError::CleanupRolledBack {
            failure: Box::new(error),
            rolled_back,
        }
    }
}

pub(super) fn shadowing_in(
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
    /// What [`Iptables::cleanup`] would run, of this flavor and the other, changing nothing: a
    /// `# <program> --noflush` line and the restore payload per flavor and family that holds
    /// rules of capture's (empty when none does), and the TPROXY marks those rules use.
    ///
    /// # Errors
    /// When this flavor's IPv4 rules cannot be read (no privilege, no iptables); the other
    /// flavor and IPv6 count as empty when they cannot be.
    pub fn cleanup_preview(&self, spec: &CaptureSpec) -> Result<(String, BTreeSet<u32>), ApplyError> {
        let mut out = String::new();
        let mut marks = BTreeSet::new();
        for backend in [self.clone(), self.other_flavor()] {
            for family in [Family::V4, Family::V6] {
                let saved = match backend.save(family) {
                    Ok(saved) => saved,
                    Err(e) if backend.flavor == self.flavor && family == Family::V4 => return Err(e),
                    Err(_) => continue,
                };
                marks.extend(ours::tproxy_marks(&saved));
                if let Some(payload) = cleanup_payload(&expected(&plan(spec, family)), &saved) {
                    let program = backend.flavor.restore(family);
                    out.push_str(&format!("# {program} --noflush\n{payload}"));
                }
            }
        }
        Ok((out, marks))
    }

    /// The same backend on the other iptables flavor.
    pub(super) fn other_flavor(&self) -> Self {
        Self::new(self.exec.clone(), self.flavor.other())
    }

    /// Our chains held by the other flavor, per family, as `"IPv4 nat ISTIO_OUTPUT"`. A flavor
    /// that cannot list its rules (not installed, no kernel support) holds none.
    pub(super) fn other_flavor_chains(&self, families: &[Family]) -> Vec<String> {
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

/// [`Iptables::detect`]'s pick when neither flavor holds anything in IPv4 (so neither holds
/// rules, nor chains of ours) and `exec` can tell without a program: the system's `iptables`
/// alternative; nft when legacy iptables is certain to fail (as reading the rules would find);
/// each only when its programs are there. `None`: detect by reading the rules.
fn pristine_pick<E: Exec>(exec: &E) -> Option<Flavor> {
    let nft = exec.pristine(Flavor::Nft, &[Family::V4])?;
    let nft_found = describe_pristine(nft, Flavor::Nft);
    let (pick, why) = match exec.pristine(Flavor::Legacy, &[Family::V4]) {
        Some(legacy) => {
            let (system, how) = system_flavor(exec);
            let why = format!(
                "no rules in either ({nft_found}; {}), and the system's iptables is {} ({how})",
                describe_pristine(legacy, Flavor::Legacy),
                system.as_str()
            );
            (system, why)
        }
        None => {
            let reason = exec.unusable(Flavor::Legacy)?;
            (
                Flavor::Nft,
                format!("{nft_found}, and legacy iptables is not usable: {reason}"),
            )
        }
    };
    on_path(pick.save(Family::V4))?;
    tracing::debug!("iptables flavour {}: {why}", pick.as_str());
    Some(pick)
}

/// The flavor of the system's `iptables` (its alternative) and how that was found: from where
/// the `iptables` on `PATH` finally points (`xtables-nft-multi` or `xtables-legacy-multi`),
/// else from what `iptables --version` says, else nft.
fn system_flavor<E: Exec>(exec: &E) -> (Flavor, String) {
    let Some(link) = on_path("iptables") else {
        // As running it would fail.
        return (Flavor::Nft, "no iptables on PATH".to_owned());
    };
    if let Ok(target) = std::fs::canonicalize(&link) {
        let flavor = match target.file_name().and_then(|n| n.to_str()) {
            Some("xtables-nft-multi") => Some(Flavor::Nft),
            Some("xtables-legacy-multi") => Some(Flavor::Legacy),
            _ => None,
        };
        if let Some(flavor) = flavor {
            return (flavor, format!("{} is {}", link.display(), target.display()));
        }
    }
    match exec.run("iptables", &["--version"], None) {
        Ok(out) if out.success && out.stdout.contains("legacy") => (Flavor::Legacy, out.stdout.trim().to_owned()),
        Ok(out) if out.success => (Flavor::Nft, out.stdout.trim().to_owned()),
        _ => (Flavor::Nft, "iptables --version did not run".to_owned()),
    }
}

/// Where `program` is on `PATH` (`/bin:/usr/bin` without one), as running it would find it.
fn on_path(program: &str) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;

    let path = std::env::var_os("PATH").unwrap_or_else(|| "/bin:/usr/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// What [`Exec::pristine`] found, in words.
fn describe_pristine(found: Pristine, flavor: Flavor) -> &'static str {
    match (flavor, found) {
        (Flavor::Nft, Pristine::NoTables) => "no nftables tables (ip, ip6, inet) in the namespace",
        (Flavor::Nft, Pristine::EmptyBuiltins) => "only nftables tables with empty built-in chains",
        (Flavor::Legacy, Pristine::NoTables) => "no legacy iptables tables in the namespace",
        (Flavor::Legacy, Pristine::EmptyBuiltins) => "only legacy iptables tables with empty built-in chains",
    }
}

/// The state found, as one debug event.
fn log_state(family: Family, flavor: Flavor, state: &State) {
    match state {
        State::Absent => tracing::debug!("{family}: no rules of capture's are there ({})", flavor.as_str()),
        State::Equal => tracing::debug!("{family}: capture's rules are all there ({})", flavor.as_str()),
        State::Partial(missing) => tracing::debug!(
            "{family}: part of capture's rules are there, {} missing ({})",
            missing.len(),
            flavor.as_str()
        ),
        State::Differs(details) => tracing::debug!(
            "{family}: other capture rules are there ({}): {}",
            flavor.as_str(),
            details
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        ),
    }
}
