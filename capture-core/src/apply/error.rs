//! Why applying or removing a capture failed.

use std::io;

use super::compare::Difference;
use super::exec::Flavor;
use crate::lock::LockError;
use crate::netlink;
use crate::types::Family;

/// Why applying or removing a capture failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A program could not be started.
    #[error("cannot run {program} (is the iptables package installed?)")]
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
        joined(details, "; "), flavor = flavor.as_str()
    )]
    Drift {
        /// The family.
        family: Family,
        /// The flavor holding them.
        flavor: Flavor,
        /// What differs.
        details: Vec<Difference>,
    },
    /// No iptables flavor works here.
    #[error("no usable iptables found: {}", joined(tried, "; "))]
    NoIptables {
        /// Each flavor's `*-save` and why it did not work.
        tried: Vec<Unusable>,
    },
    /// Applying a later family failed; the earlier changes were put back. The failure is part
    /// of the message (it is what happened), not a cause of the rollback.
    #[error(
        "{failure}; nothing was left applied (changes to {} were rolled back)",
        joined(rolled_back, " and ")
    )]
    RolledBack {
        /// The failure.
        failure: Box<ApplyError>,
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
    #[error(
        "{failure}; nothing was removed (the removal from {} was put back)",
        joined(rolled_back, " and ")
    )]
    CleanupRolledBack {
        /// The failure.
        failure: Box<ApplyError>,
        /// The families put back.
        rolled_back: Vec<Family>,
    },
    /// A cleanup step after the rules failed: what was removed, what is left.
    #[error("{removed}, but {left} could not be removed and is still there")]
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
    #[error("{failure}; rolling back also failed, capture may be partly applied: {rollback}")]
    RollbackFailed {
        /// The failure.
        failure: Box<ApplyError>,
        /// The rollback's failure.
        rollback: Box<ApplyError>,
    },
}

/// A flavor's `*-save` that does not work here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unusable {
    /// The program.
    pub program: &'static str,
    /// What it said, or why it could not run.
    pub reason: String,
}

impl std::fmt::Display for Unusable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.program, self.reason)
    }
}

/// `items` joined with `separator`, for a message.
fn joined<T: std::fmt::Display>(items: &[T], separator: &str) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(separator)
}
