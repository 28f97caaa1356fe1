//! Why applying or removing a capture failed.

use std::io;

use super::exec::Flavor;
use crate::lock::LockError;
use crate::netlink;
use crate::types::Family;

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
