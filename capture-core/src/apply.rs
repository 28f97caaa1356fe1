//! Applying a capture with `iptables-restore`: atomic, idempotent, reversible.
//!
//! - One `iptables-restore --noflush` per family (IPv4 first), never one `iptables` per rule.
//! - Before changing anything, the current state is read with `*-save` for every family and
//!   compared with what the spec needs: [`State::Equal`] does nothing, [`State::Absent`] applies
//!   istio-iptables' exact payload, [`State::Differs`] fails unless reconciling.
//! - Unless the namespace holds nothing to compare (a fresh pod's: no tables; a cleaned one's:
//!   only empty built-in chains), which [`Exec::pristine`] finds in-process: then the state is
//!   the empty dump `*-save` would print, and the apply costs exactly the two restores.
//! - Reconciling is one restore per family in which each table flushes and refills our chains
//!   inside a single `COMMIT`, so traffic is never uncaptured in between (Istio instead inserts
//!   DROP guardrails, removes and re-adds).
//! - If a later family fails, every table touched so far is put back as it was (a restore
//!   without `--noflush` of the text saved beforehand): no partial capture is left behind.
//!
//! | module | job |
//! |---|---|
//! | `exec` | the programs (`Flavor`), the `Exec` seam, sealed restore input |
//! | `saved` | parsing `iptables-save` |
//! | `pristine` | whether there is anything to compare, read without a program |
//! | `compare` | the expected state in `iptables-save`'s words; `State` |
//! | `payload` | reconcile and restore-ours payloads |
//! | `ours` | what in a table is capture's (shapes), shadowing rules |
//! | `host_state` | `::6` and TPROXY routing, shared with the nftables backend |
//! | `iptables` | the backend (`Iptables`) |
//! | here | `install`, `check`, `uninstall`: the whole namespace, under its lock |

mod compare;
mod error;
mod exec;
pub(crate) mod host_state;
mod iptables;
mod ours;
mod payload;
mod pristine;
mod saved;
#[cfg(test)]
mod tests;

pub use compare::{Difference, State};
pub use error::{ApplyError, Unusable};
pub use exec::{Exec, Flavor, Output, SystemExec};
pub use iptables::{Cleaned, Iptables};
pub use pristine::Pristine;
pub use saved::{SavedState, SavedTable};

use compare::{compare, expected};
use iptables::shadowing_in;

pub use crate::backend::Change;
use crate::lock::NetnsLock;
use crate::plan::plan;
use crate::spec::CaptureSpec;
use crate::types::Family;

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
    let added = host_state::Added::ensure(spec)?;
    let mut applied = match backend.apply(spec, options) {
        Ok(applied) => applied,
        Err(e) => {
            added.undo();
            return Err(e);
        }
    };
    // A rerun (nothing to change) also looks at the other flavor: our chains there mean two
    // captures, or a stale one that DEL or a flavor switch would trip over.
    if applied.changes.iter().all(|(_, c)| *c == Change::Unchanged) {
        let other = backend.other_flavor().flavor();
        for chain in backend.other_flavor_chains(spec.families()) {
            applied.warnings.push(format!(
                "capture chain {chain} also exists in iptables-{}; remove it with --cleanup-only --force-iptables-binary {}",
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
    differences.extend(host_state::missing(spec)?);
    Ok(differences)
}

/// Removes everything capture owns in the calling thread's namespace, whatever flags `spec` was
/// made from: capture's rules in both families of the backend's flavor and of the other flavor
/// (when it works here), the TPROXY policy routing of every mark those rules used (and of
/// `spec`'s), and `::6`. Succeeds when nothing is there; returns whether any rule of capture's
/// was there (and is gone now).
///
/// # Errors
/// As [`Iptables::cleanup`] (the rules are then as they were), [`ApplyError::Lock`], or
/// [`ApplyError::PartlyRemoved`] naming what is left when a later step fails.
pub fn uninstall<E: Exec + Clone>(backend: &Iptables<E>, spec: &CaptureSpec) -> Result<bool, ApplyError> {
    let _lock = NetnsLock::current()?;
    let cleaned = backend.cleanup(spec)?;
    let mut removed = !cleaned.families.is_empty();
    let mut marks = cleaned.marks;
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
            Ok(more) => {
                removed |= !more.families.is_empty();
                marks.extend(more.marks);
            }
            Err(e) => {
                return Err(partly(
                    format!("rules in iptables-{}", other.flavor().as_str()),
                    e,
                ));
            }
        }
    }
    host_state::remove(spec, &marks, &removed_so_far)?;
    Ok(removed)
}
