//! Owners given by name, turned into the ids the programs compare.
//!
//! iptables resolves `-m owner --uid-owner NAME` when it loads the rules; the eBPF programs
//! compare numbers, so the front end resolves names (through NSS, in its own mount namespace)
//! before planning: [`MapPlan::from_spec`](crate::MapPlan::from_spec) refuses names.

use capture_core::{CaptureSpec, Owner, OwnerGroups};

use crate::Error;

/// `spec` with every owner given by name (`-u`, `-g`, the owner-group lists) replaced by its
/// id, as this system's user and group databases give it.
///
/// # Errors
/// [`Error::UnknownOwner`] naming the flag or variable of a name that is not known.
///
/// # Examples
/// ```
/// use capture_core::{CaptureSpec, Owner};
///
/// let mut spec = CaptureSpec::sidecar();
/// spec.owner.uids = vec![Owner::Name("root".into())];
/// let spec = capture_ebpf::resolve_owners(&spec).unwrap();
/// assert_eq!(spec.owner.uids, [Owner::Id(0)]);
/// ```
pub fn resolve_owners(spec: &CaptureSpec) -> Result<CaptureSpec, Error> {
    let mut spec = spec.clone();
    for uid in &mut spec.owner.uids {
        resolve(uid, "-u/--proxy-uid", true)?;
    }
    for gid in &mut spec.owner.gids {
        resolve(gid, "-g/--proxy-gid", false)?;
    }
    let (groups, var) = match &mut spec.outbound.owner_groups {
        OwnerGroups::All { except } => (except, "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE"),
        OwnerGroups::Only(groups) => (groups, "ISTIO_OUTBOUND_OWNER_GROUPS"),
    };
    for group in groups {
        resolve(group, var, false)?;
    }
    Ok(spec)
}

fn resolve(owner: &mut Owner, flag: &'static str, user: bool) -> Result<(), Error> {
    let Owner::Name(name) = owner else {
        return Ok(());
    };
    // The same databases, the same way, as validation and iptables' owner match.
    let accounts = capture_core::SystemAccounts;
    let id = if user {
        capture_core::Accounts::uid(&accounts, name)
    } else {
        capture_core::Accounts::gid(&accounts, name)
    };
    match id {
        Some(id) => {
            *owner = Owner::Id(id);
            Ok(())
        }
        None => Err(Error::UnknownOwner {
            flag,
            name: name.clone(),
            kind: if user { "user" } else { "group" },
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_names_become_ids() {
        let mut spec = CaptureSpec::sidecar();
        spec.owner.uids = vec![Owner::Name("root".into()), Owner::Id(1337)];
        spec.owner.gids = vec![Owner::Name("root".into())];
        spec.outbound.owner_groups = OwnerGroups::All {
            except: vec![Owner::Name("root".into())],
        };
        let spec = resolve_owners(&spec).unwrap();
        assert_eq!(spec.owner.uids, [Owner::Id(0), Owner::Id(1337)]);
        assert_eq!(spec.owner.gids, [Owner::Id(0)]);
        assert_eq!(
            spec.outbound.owner_groups,
            OwnerGroups::All {
                except: vec![Owner::Id(0)]
            }
        );
        let mut unknown = CaptureSpec::sidecar();
        unknown.owner.gids = vec![Owner::Name("no-such-group-capture".into())];
        assert_eq!(
            resolve_owners(&unknown).unwrap_err().to_string(),
            "invalid value \"no-such-group-capture\" for -g/--proxy-gid: no such group"
        );
    }
}
