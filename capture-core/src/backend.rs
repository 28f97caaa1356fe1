//! The seam every capture backend implements: iptables here, eBPF in `capture-ebpf`, native
//! nftables next.
//!
//! A front end (capture-init, capture-cni) builds one backend by name from its flags or
//! configuration and from then on calls only [`Backend`]: it prints what the backend reports
//! and exits by its [`Change`]s, with no code of its own per backend.
//!
//! ```text
//! CaptureSpec ─> dyn Backend ─┬─ dry_run    the exact text or plan the backend would apply
//!                             ├─ install    -> Outcome { steps: [Step { change, message }], warnings }
//!                             ├─ check      -> every difference from the spec, one line each
//!                             └─ uninstall  -> Outcome (Removed | NothingToRemove)
//! ```
//!
//! Every method works on the network namespace of the calling thread and holds that
//! namespace's [`NetnsLock`](crate::NetnsLock) (or the backend's equivalent) while it reads or
//! writes, and a failed `install` or `uninstall` leaves the previous state as it was.

use std::fmt;

use crate::apply::{self, ApplyOptions, Exec, Iptables};
use crate::plan::plan;
use crate::render::Restore;
use crate::spec::CaptureSpec;

/// Why a backend failed: the backend's own error, whose message names the broken step or the
/// bad value and whose `source()` chain holds the causes ([`chain`](crate::chain) prints them
/// on one line). Front ends that react to a cause (a busy lock is worth a retry) downcast it.
pub type BackendError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What one step of [`Backend::install`] or [`Backend::uninstall`] did. Every backend gives
/// each variant the same meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The capture was installed where none was (eBPF node programs: they were loaded).
    Applied,
    /// The capture was already exactly right; nothing was written.
    Unchanged,
    /// A differing capture was replaced in place because reconciling was asked for.
    Reconciled,
    /// Part of exactly this configuration was present (an earlier run was killed half-way);
    /// the rest was added.
    Completed,
    /// A differing configuration of the backend's own was replaced with no reconcile asked
    /// for, because the backend replaces without a gap (eBPF: the pod moved to its next
    /// generation, say after its addresses changed).
    Updated,
    /// The capture was removed.
    Removed,
    /// There was nothing to remove.
    NothingToRemove,
}

impl Change {
    /// How capture-init and capture-cni say it.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Unchanged => "already in place, nothing changed",
            Self::Reconciled => "reconciled",
            Self::Completed => "completed (part of it was missing)",
            Self::Updated => "updated",
            Self::Removed => "removed",
            Self::NothingToRemove => "not there, nothing to remove",
        }
    }
}

/// One step of an [`Outcome`]: what changed, and the backend's line saying so (for example
/// `IPv4 capture applied (nft)`), which front ends print after their own prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// What the step did.
    pub change: Change,
    /// The line that says it, naming what the step was about.
    pub message: String,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// What [`Backend::install`] or [`Backend::uninstall`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The steps, in order.
    pub steps: Vec<Step>,
    /// Things that work but deserve an operator's look (foreign rules shadowing capture's, a
    /// file that could not be removed): one line each.
    pub warnings: Vec<String>,
}

impl Outcome {
    /// Whether no step changed anything.
    pub fn unchanged(&self) -> bool {
        self.steps
            .iter()
            .all(|s| matches!(s.change, Change::Unchanged | Change::NothingToRemove))
    }
}

/// A way of capturing a pod's traffic (see the [module](self) docs).
pub trait Backend {
    /// What applying `spec` would write, exactly as the backend would write it (for iptables,
    /// istio-iptables' restore payload), changing nothing and reading nothing of the host.
    ///
    /// # Errors
    /// When the backend refuses `spec` (a flag it cannot enforce).
    fn dry_run(&self, spec: &CaptureSpec) -> Result<String, BackendError>;

    /// Installs `spec` in the calling thread's network namespace: nothing when exactly it is
    /// there, an error naming the difference when another capture is there (unless
    /// `options.reconcile`).
    ///
    /// # Errors
    /// The broken step; the previous state is then as it was.
    fn install(&self, spec: &CaptureSpec, options: ApplyOptions) -> Result<Outcome, BackendError>;

    /// Everything in the calling thread's namespace that differs from what `spec` needs, one
    /// line each; empty when capture is complete.
    ///
    /// # Errors
    /// When the state cannot be read.
    fn check(&self, spec: &CaptureSpec) -> Result<Vec<String>, BackendError>;

    /// Removes the capture from the calling thread's namespace, whatever flags `spec` was made
    /// from; succeeds when nothing is there.
    ///
    /// # Errors
    /// The broken step, naming what is left.
    fn uninstall(&self, spec: &CaptureSpec) -> Result<Outcome, BackendError>;

    /// What [`uninstall`](Backend::uninstall) would remove from the calling thread's
    /// namespace, changing nothing (`--cleanup-only --dry-run`): read from the current state
    /// where it can be (for iptables, the restore payloads cleanup would run), else, after a
    /// `#` line saying why, what cleanup removes in general. `#` starts every line that is not
    /// the backend's own input.
    fn cleanup_dry_run(&self, spec: &CaptureSpec) -> String;
}

/// The host state every netfilter cleanup also removes, as `#` lines: the TPROXY policy
/// routing of `marks` (and `spec`'s) and `::6`, as far as it can be read.
pub(crate) fn host_state_preview(spec: &CaptureSpec, marks: &std::collections::BTreeSet<u32>) -> String {
    use crate::netlink;
    use crate::types::Family;
    let mut out = String::new();
    for family in [Family::V4, Family::V6] {
        let Ok(rules) = netlink::tproxy_rules(family) else {
            continue;
        };
        for routes in rules {
            let ours = marks.contains(&routes.mark.get())
                || spec.tproxy().is_some_and(|(mark, _)| mark == routes.mark);
            if ours {
                out.push_str(&format!(
                    "# then: remove the {family} TPROXY policy routing ({routes})\n"
                ));
            }
        }
    }
    if netlink::ipv6_passthrough_address_present().unwrap_or(false) {
        out.push_str("# then: remove ::6/128 from lo\n");
    }
    out
}

impl<E: Exec + Clone> Backend for Iptables<E> {
    fn dry_run(&self, spec: &CaptureSpec) -> Result<String, BackendError> {
        Ok(spec
            .families()
            .iter()
            .map(|family| Restore(&plan(spec, *family)).to_string())
            .collect())
    }

    fn install(&self, spec: &CaptureSpec, options: ApplyOptions) -> Result<Outcome, BackendError> {
        let applied = apply::install(self, spec, options)?;
        let flavor = self.flavor().as_str();
        Ok(Outcome {
            steps: applied
                .changes
                .into_iter()
                .map(|(family, change)| Step {
                    change,
                    message: format!("{family} capture {} ({flavor})", change.describe()),
                })
                .collect(),
            warnings: applied.warnings,
        })
    }

    fn check(&self, spec: &CaptureSpec) -> Result<Vec<String>, BackendError> {
        Ok(apply::check(self, spec)?)
    }

    fn cleanup_dry_run(&self, spec: &CaptureSpec) -> String {
        match self.cleanup_preview(spec) {
            Ok((payloads, marks)) => {
                let mut out = payloads;
                if out.is_empty() {
                    out.push_str("# no rules of capture's in either family or iptables flavour\n");
                }
                out.push_str(&host_state_preview(spec, &marks));
                out
            }
            Err(e) => format!(
                "# cannot read the current rules ({}); cleanup removes, in both families and both \
                 iptables flavours, capture's chains (ISTIO_*), the jumps to them, capture's rules \
                 in built-in chains, the TPROXY policy routing of their marks, and ::6/128 on lo\n",
                crate::chain(&e)
            ),
        }
    }

    fn uninstall(&self, spec: &CaptureSpec) -> Result<Outcome, BackendError> {
        let removed = apply::uninstall(self, spec)?;
        let mut warnings = Vec::new();
        // The pod-private xtables lock file goes with the capture, so cleanup leaves nothing.
        if let Some(lock) = self.exec().lock_file()
            && let Err(e) = crate::host::remove_xtables_lock_file(lock)
        {
            warnings.push(format!("cannot remove {}: {e}", lock.display()));
        }
        let flavor = self.flavor().as_str();
        let step = if removed {
            Step {
                change: Change::Removed,
                message: format!("capture removed ({flavor})"),
            }
        } else {
            Step {
                change: Change::NothingToRemove,
                message: format!("capture not there ({flavor}), nothing to remove"),
            }
        };
        Ok(Outcome {
            steps: vec![step],
            warnings,
        })
    }
}
