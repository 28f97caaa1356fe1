//! The native nftables backend behind the [`Backend`] seam: Istio's `--native-nftables` rule
//! set, written over nf_tables netlink in one transaction, with no nft, libnftables or iptables
//! binary.
//!
//! ```text
//! install: NetnsLock ─> compile(plan(spec)) ─> list our three tables ─> compare
//!            Equal: nothing │ Absent: add │ Differs: fail, or with reconcile delete ours + add
//!          ─> ::6, TPROXY routing ─> ONE batch (all tables, both families), expecting the
//!             generation that was read: it commits whole or not at all
//! check:   the same comparison, plus the routing and ::6
//! uninstall: delete whichever of our tables exist (one batch), then routing and ::6
//! ```
//!
//! Unlike Istio's nft mode, which flushes and rewrites blindly, a rerun reads the state first:
//! exactly this configuration is left alone, another one is refused unless reconciling, and a
//! table a new configuration no longer needs goes in the same transaction. A killed run leaves
//! either the old state or the new one: the kernel applies a batch atomically.

use std::collections::BTreeSet;

use super::compile::{CompileError, Compiled, compile};
use super::model::{TABLES, table_name};
use super::{Transaction, plan};
use crate::apply::ApplyError;
use crate::apply::host_state;
use crate::backend::{Backend, BackendError, Change, Outcome, Step};
use crate::lock::{LockError, NetnsLock};
use crate::logged::Bounded;
use crate::netlink::NetlinkError;
use crate::nfnetlink::{self, Batch, Expr, Listing, MetaKey, NfProto, Session};
use crate::{ApplyOptions, CaptureSpec, SystemAccounts};

/// The native nftables backend (`--native-nftables`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Nftables;

/// Why the native nftables backend failed; the kernel's state is then as it was.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// The network namespace's lock could not be taken.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The rule set cannot be compiled (an owner name nobody knows).
    #[error(transparent)]
    Compile(#[from] CompileError),
    /// Reading our tables, or committing the transaction, failed.
    #[error(transparent)]
    Netlink(#[from] nfnetlink::Error),
    /// `::6` or the TPROXY routing could not be added.
    #[error(transparent)]
    Routing(#[from] NetlinkError),
    /// Removing the routing or `::6` failed after the tables were deleted.
    #[error(transparent)]
    Cleanup(#[from] ApplyError),
    /// Our tables hold another configuration.
    #[error(
        "native nftables capture already present differs from this configuration: {}; rerun with --reconcile to replace it, or --cleanup-only to remove it",
        details.join("; ")
    )]
    Drift {
        /// What differs, one entry per table or chain.
        details: Vec<String>,
    },
}

/// How our tables compare with a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// None of our tables exists.
    Absent,
    /// Exactly the configuration's tables, chains and rules.
    Equal,
    /// Something of ours exists and differs: each entry says what.
    Differs(Vec<String>),
}

fn compare(expected: &[Compiled], present: &[Listing]) -> State {
    let mut differences = Vec::new();
    let mut anything = false;
    for listing in present {
        let Some(table) = listing.tables.first() else {
            continue;
        };
        anything = true;
        let Some(want) = expected.iter().find(|c| c.table.name == table.name) else {
            differences.push(format!(
                "table inet {} is present but not part of this configuration",
                table.name
            ));
            continue;
        };
        if listing.chains != want.chains {
            differences.push(chains_differ(&table.name, &listing.chains, &want.chains));
            continue;
        }
        for chain in &want.chains {
            let found: Vec<_> = listing.rules_of(chain).collect();
            let wanted: Vec<_> = want.rules.iter().filter(|r| r.chain == chain.name).collect();
            if found.len() != wanted.len() || found.iter().zip(&wanted).any(|(f, w)| f != w) {
                let at = found.iter().zip(&wanted).position(|(f, w)| f != w);
                differences.push(rules_differ(
                    &table.name,
                    &chain.name,
                    found.len(),
                    wanted.len(),
                    at,
                ));
            }
        }
    }
    for want in expected {
        if !present
            .iter()
            .any(|l| l.tables.iter().any(|t| t.name == want.table.name))
        {
            differences.push(format!("table inet {} is missing", want.table.name));
        }
    }
    if !anything {
        State::Absent
    } else if differences.is_empty() {
        State::Equal
    } else {
        State::Differs(differences)
    }
}

/// The marks our rules set (`meta mark set N`): the TPROXY marks whose routing goes with them.
fn marks(present: &[Listing]) -> BTreeSet<u32> {
    present
        .iter()
        .flat_map(|l| &l.rules)
        .flat_map(|r| r.exprs.windows(2))
        .filter_map(|pair| match pair {
            [
                Expr::Immediate { data, .. },
                Expr::MetaSet {
                    key: MetaKey::Mark, ..
                },
            ] => Some(u32::from_ne_bytes(data.get(..4)?.try_into().ok()?)),
            _ => None,
        })
        .collect()
}

/// The tables of `present` that exist.
fn existing(present: &[Listing]) -> impl Iterator<Item = &nfnetlink::Table> {
    present.iter().filter_map(|l| l.tables.first())
}

fn tables_named(compiled: &[Compiled]) -> String {
    compiled
        .iter()
        .map(|c| c.table.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The one transaction that replaces whatever of our tables `present` holds with `compiled`,
/// valid only if the ruleset is still at `generation`: traffic is never uncaptured in between,
/// a table the new configuration no longer needs goes with it, and the kernel applies all of it
/// or nothing.
pub fn replacement(present: &[Listing], compiled: &[Compiled], generation: u32) -> Batch {
    let mut batch = Batch::new();
    batch.expect_generation(generation);
    for table in existing(present) {
        batch.delete_table(table);
    }
    for table in compiled {
        table.add_to(&mut batch);
    }
    batch
}

/// Our three tables as the kernel holds them now (empty listings for absent ones), and the
/// ruleset generation they were read at.
///
/// # Errors
/// When the tables cannot be listed.
pub fn current() -> Result<(Vec<Listing>, u32), nfnetlink::Error> {
    current_on(&mut Session::open()?)
}

/// [`current`] over `session`, which the batch that follows is then committed on.
fn current_on(session: &mut Session) -> Result<(Vec<Listing>, u32), nfnetlink::Error> {
    let names = TABLES.map(table_name);
    let listings = session.list_tables(NfProto::Inet, &names)?;
    let generation = listings.first().map_or(0, |l| l.generation);
    Ok((listings, generation))
}

fn install(spec: &CaptureSpec, options: ApplyOptions) -> Result<Outcome, NftError> {
    let _lock = NetnsLock::current()?;
    let compiled = compile(&plan(spec), &SystemAccounts)?;
    let mut session = Session::open()?;
    let (present, generation) = current_on(&mut session)?;
    let state = compare(&compiled, &present);
    match &state {
        State::Equal => tracing::debug!("capture's nftables tables are there as configured"),
        State::Absent => tracing::debug!("none of capture's nftables tables are there"),
        State::Differs(details) => {
            tracing::debug!("capture's nftables tables differ: {}", details.join("; "));
        }
    }
    let change = match state {
        State::Equal => Change::Unchanged,
        State::Absent => Change::Applied,
        State::Differs(details) if !options.reconcile => return Err(NftError::Drift { details }),
        State::Differs(_) => Change::Reconciled,
    };
    if change != Change::Unchanged {
        let batch = replacement(&present, &compiled, generation);
        tracing::info!(
            "nftables transaction ({}; one netlink batch, in nft -f form):\n{}",
            change.describe(),
            Bounded(&Transaction(&plan(spec)).to_string())
        );
        let added = host_state::Added::ensure(spec)?;
        if let Err(e) = batch.commit_on(&mut session) {
            added.undo();
            return Err(e.into());
        }
    } else {
        // The rules are right; the routing and ::6 may still be missing.
        host_state::Added::ensure(spec)?;
    }
    Ok(Outcome {
        steps: vec![Step {
            change,
            message: format!(
                "native nftables capture {} (tables {})",
                change.describe(),
                tables_named(&compiled)
            ),
        }],
        warnings: Vec::new(),
    })
}

fn check(spec: &CaptureSpec) -> Result<Vec<String>, NftError> {
    let _lock = NetnsLock::current()?;
    let compiled = compile(&plan(spec), &SystemAccounts)?;
    let (present, _) = current()?;
    let mut differences = match compare(&compiled, &present) {
        State::Equal => Vec::new(),
        State::Absent => vec!["native nftables capture tables are missing".to_owned()],
        State::Differs(details) => details,
    };
    differences.extend(host_state::missing(spec)?);
    Ok(differences)
}

fn uninstall(spec: &CaptureSpec) -> Result<Outcome, NftError> {
    let _lock = NetnsLock::current()?;
    let mut session = Session::open()?;
    let (present, generation) = current_on(&mut session)?;
    let names: Vec<&str> = existing(&present).map(|t| t.name.as_str()).collect();
    tracing::debug!(
        "capture's nftables tables found: {}",
        if names.is_empty() {
            "none".to_owned()
        } else {
            names.join(", ")
        }
    );
    if !names.is_empty() {
        let mut batch = Batch::new();
        batch.expect_generation(generation);
        for table in existing(&present) {
            batch.delete_table(table);
        }
        batch.commit_on(&mut session)?;
    }
    let removed = if names.is_empty() {
        "no native nftables tables were there".to_owned()
    } else {
        format!("tables {} deleted", names.join(", "))
    };
    host_state::remove(spec, &marks(&present), &removed)?;
    let step = if names.is_empty() {
        Step {
            change: Change::NothingToRemove,
            message: "native nftables capture not there, nothing to remove".to_owned(),
        }
    } else {
        Step {
            change: Change::Removed,
            message: format!("native nftables capture removed (tables {})", names.join(", ")),
        }
    };
    Ok(Outcome {
        steps: vec![step],
        warnings: Vec::new(),
    })
}

/// A chain's rules that differ from the configuration's: the counts only when they differ (in
/// words that agree with them), then the first rule that differs, is missing or is extra.
fn rules_differ(table: &str, chain: &str, found: usize, expected: usize, at: Option<usize>) -> String {
    let counts = if found == expected {
        ":".to_owned()
    } else {
        format!(
            " has {}, {expected} expected;",
            crate::count(found, "rule", "rules")
        )
    };
    let which = match at {
        Some(i) => format!("rule {} differs", i + 1),
        None if found > expected => format!("rule {} is not part of this configuration", expected + 1),
        None => format!("rule {} is missing", found + 1),
    };
    format!("inet {table} chain {chain}{counts} {which}")
}

/// A table's chains that differ from the configuration's: by name when the names differ, else
/// the first chain whose hook, type, priority or policy does.
fn chains_differ(table: &str, found: &[nfnetlink::Chain], expected: &[nfnetlink::Chain]) -> String {
    let names = |chains: &[nfnetlink::Chain]| {
        chains
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (found_names, expected_names) = (names(found), names(expected));
    if found_names != expected_names {
        return format!(
            "table inet {table} has chains {found_names}; this configuration has {expected_names}"
        );
    }
    let base = |chain: &nfnetlink::Chain| match &chain.base {
        Some(b) => format!(
            "type {} hook {} priority {} policy {}",
            b.kind.as_str(),
            format!("{:?}", b.hook).to_lowercase(),
            b.priority,
            format!("{:?}", b.policy).to_lowercase()
        ),
        None => "a regular chain".to_owned(),
    };
    found
        .iter()
        .zip(expected)
        .find(|(f, e)| f != e)
        .map(|(f, e)| {
            format!(
                "inet {table} chain {} is {} instead of {}",
                f.name,
                base(f),
                base(e)
            )
        })
        .unwrap_or_else(|| format!("table inet {table}'s chains differ"))
}

impl Backend for Nftables {
    fn dry_run(&self, spec: &CaptureSpec) -> Result<String, BackendError> {
        Ok(Transaction(&plan(spec)).to_string())
    }

    fn install(&self, spec: &CaptureSpec, options: ApplyOptions) -> Result<Outcome, BackendError> {
        Ok(install(spec, options)?)
    }

    fn check(&self, spec: &CaptureSpec) -> Result<Vec<String>, BackendError> {
        Ok(check(spec)?)
    }

    fn uninstall(&self, spec: &CaptureSpec) -> Result<Outcome, BackendError> {
        Ok(uninstall(spec)?)
    }

    fn cleanup_dry_run(&self, spec: &CaptureSpec) -> String {
        match current() {
            Ok((present, _)) => {
                let mut out: String = existing(&present)
                    .map(|table| format!("delete table inet {}\n", table.name))
                    .collect();
                if out.is_empty() {
                    out.push_str("# no native nftables tables of capture's (inet istio-proxy-*)\n");
                }
                out.push_str(&crate::backend::host_state_preview(spec, &marks(&present)));
                out
            }
            Err(e) => format!(
                "# cannot read the current nftables tables ({}); cleanup deletes the tables inet \
                 istio-proxy-nat, istio-proxy-mangle and istio-proxy-raw, the TPROXY policy routing \
                 of their marks, and ::6/128 on lo\n",
                crate::chain(&e)
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::RunError;

    /// An install and an uninstall of a fresh namespace, each with the nf_tables sockets it
    /// opened: in a new network namespace private to a thread (`None` when not root, unless
    /// `CI` is set).
    #[test]
    fn an_install_lists_and_commits_on_one_socket() {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            assert!(std::env::var_os("CI").is_none(), "needs root, and CI is set");
            eprintln!("skipping an_install_lists_and_commits_on_one_socket: needs root");
            return;
        }
        let sockets = |f: &dyn Fn() -> Change| {
            let (before, _) = nfnetlink::counted();
            let change = f();
            (change, nfnetlink::counted().0 - before)
        };
        let found = crate::host::run_in_scratch_netns(|| {
            let spec = CaptureSpec::sidecar();
            let installed = sockets(&|| install(&spec, ApplyOptions::default()).unwrap().steps[0].change);
            let removed = sockets(&|| uninstall(&spec).unwrap().steps[0].change);
            Ok::<_, RunError>((installed, removed))
        });
        let (installed, removed) = found.unwrap_or_else(|e| match e {
            RunError::Panicked(message) => std::panic::resume_unwind(Box::new(message)),
            e => panic!("{}", crate::chain(&e)),
        });
        assert_eq!(installed, (Change::Applied, 1));
        assert_eq!(removed, (Change::Removed, 1));
    }

    /// The counts only when they differ, in words that agree with them; the rule named.
    #[test]
    fn rule_differences_read_right() {
        let t = "istio-proxy-nat";
        assert_eq!(
            rules_differ(t, "output", 5, 5, Some(1)),
            "inet istio-proxy-nat chain output: rule 2 differs"
        );
        assert_eq!(
            rules_differ(t, "output", 6, 5, None),
            "inet istio-proxy-nat chain output has 6 rules, 5 expected; rule 6 is not part of this configuration"
        );
        assert_eq!(
            rules_differ(t, "output", 1, 2, None),
            "inet istio-proxy-nat chain output has 1 rule, 2 expected; rule 2 is missing"
        );
    }
}
