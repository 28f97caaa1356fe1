//! Whether a namespace holds anything an `*-save` would list, read in-process.
//!
//! A fresh pod's namespace usually holds no table at all, and a cleaned one only tables whose
//! built-in chains are empty. Either way `iptables-save` would print nothing that compares
//! (no chain of ours, no rule of anyone's), so the apply is the full payload with nothing to
//! warn about, and the `*-save` processes (each costing what a restore costs) tell nothing. This
//! module finds that out without them:
//!
//! - legacy: the tables in `/proc/thread-self/net/ip_tables_names` (`ip6_tables_names`), none
//!   when the file is absent (no x_tables in the kernel yet); a table's `IPT_SO_GET_INFO` says
//!   how many entries it has, and one policy per built-in chain plus the closing error entry is
//!   a table without rules or chains of its own;
//! - nft: a listing (over capture-core's own nf_tables netlink) of the families `ip`, `ip6` (as
//!   `iptables-nft-save` reads them) and `inet` (the native nftables backend's): no table, or
//!   tables whose every chain is a base chain named as a built-in one, without rules.
//!
//! Anything else (a rule, a chain of anyone's, a table the listing cannot decode, a failed read)
//! is "not pristine", and the caller reads the rules with `*-save` as before.

use std::io;
use std::os::fd::AsRawFd as _;

use super::compare::BUILTINS;
use super::exec::Flavor;
use crate::nfnetlink::{self, Listing, NfProto};
use crate::types::Family;

/// What [`Exec::pristine`](super::Exec::pristine) found: nothing to compare, in one of two
/// ways.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pristine {
    /// No table at all.
    NoTables,
    /// Tables whose only chains are built-in ones without rules (what a cleanup leaves).
    EmptyBuiltins,
}

impl Pristine {
    /// Both together: no tables only when neither has any.
    fn and(self, other: Self) -> Self {
        match (self, other) {
            (Self::NoTables, Self::NoTables) => Self::NoTables,
            _ => Self::EmptyBuiltins,
        }
    }
}

/// Why the namespace could not be read (the caller then reads it with `*-save`).
#[derive(Debug, thiserror::Error)]
pub(super) enum ProbeError {
    /// The legacy table list could not be read.
    #[error("cannot read {path}")]
    Names {
        path: &'static str,
        #[source]
        source: io::Error,
    },
    /// A legacy table's entry count could not be read.
    #[error("cannot read the {family} legacy table {table} (IPT_SO_GET_INFO)")]
    Info {
        family: Family,
        table: String,
        #[source]
        source: io::Error,
    },
    /// The nf_tables listing failed.
    #[error("cannot list the {family} nftables tables")]
    Nft {
        family: NfProto,
        #[source]
        source: nfnetlink::Error,
    },
}

/// Whether `flavor`'s save programs would list nothing for `families` in the calling thread's
/// namespace but empty built-in chains (see the module docs).
pub(super) fn probe(flavor: Flavor, families: &[Family]) -> Option<Pristine> {
    let found = match flavor {
        Flavor::Legacy => legacy(families),
        Flavor::Nft => nft(families),
    };
    found.unwrap_or_else(|e| {
        tracing::debug!(
            "{}: only iptables-{}-save can tell what is there",
            crate::chain(&e),
            flavor.as_str()
        );
        None
    })
}

/// Why `flavor`'s IPv4 save program is certain to fail here: `iptables-legacy-save` cannot list
/// the tables without reading `ip_tables_names` (0440, root), which a run as another user with
/// only `CAP_NET_ADMIN` and `CAP_NET_RAW` (the image's) cannot, any more than this process.
pub(super) fn unusable(flavor: Flavor) -> Option<String> {
    if flavor != Flavor::Legacy {
        return None;
    }
    match std::fs::File::open(V4_NAMES) {
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Some(format!("cannot read {V4_NAMES}: {e}")),
        _ => None,
    }
}

const V4_NAMES: &str = "/proc/thread-self/net/ip_tables_names";

fn legacy(families: &[Family]) -> Result<Option<Pristine>, ProbeError> {
    let mut found = Pristine::NoTables;
    for &family in families {
        let path = match family {
            Family::V4 => V4_NAMES,
            Family::V6 => "/proc/thread-self/net/ip6_tables_names",
        };
        let names = match std::fs::read_to_string(path) {
            Ok(names) => names,
            // x_tables of this family is not loaded: no table anywhere.
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(source) => return Err(ProbeError::Names { path, source }),
        };
        for table in names.lines().filter(|l| !l.is_empty()) {
            let info = get_info(family, table).map_err(|source| ProbeError::Info {
                family,
                table: table.to_owned(),
                source,
            })?;
            if !info.only_empty_builtins() {
                return Ok(None);
            }
            found = Pristine::EmptyBuiltins;
        }
    }
    Ok(Some(found))
}

fn nft(families: &[Family]) -> Result<Option<Pristine>, ProbeError> {
    let mut found = Pristine::NoTables;
    let protos = families
        .iter()
        .map(|family| match family {
            Family::V4 => NfProto::Ipv4,
            Family::V6 => NfProto::Ipv6,
        })
        .chain([NfProto::Inet]);
    for family in protos {
        let listing = nfnetlink::list(family, None).map_err(|source| ProbeError::Nft { family, source })?;
        match nft_listing(&listing) {
            Some(this) => found = found.and(this),
            None => return Ok(None),
        }
    }
    Ok(Some(found))
}

/// What a listing holds, if it is pristine.
pub(super) fn nft_listing(listing: &Listing) -> Option<Pristine> {
    if listing.tables.is_empty() {
        return Some(Pristine::NoTables);
    }
    let only_builtins = listing
        .chains
        .iter()
        .all(|c| c.base.is_some() && BUILTINS.contains(&c.name.as_str()));
    (only_builtins && listing.rules.is_empty()).then_some(Pristine::EmptyBuiltins)
}

/// `struct ipt_getinfo` (and `ip6t_getinfo`, the same), from `linux/netfilter_ipv4/ip_tables.h`.
#[repr(C)]
#[derive(Debug)]
struct GetInfo {
    name: [u8; 32],
    valid_hooks: u32,
    hook_entry: [u32; 5],
    underflow: [u32; 5],
    num_entries: u32,
    size: u32,
}

impl GetInfo {
    /// A table's entries are one policy per built-in chain, two per chain of its own (its head
    /// and its closing return), one per rule, and the closing error entry: exactly the
    /// policies and the error entry means nothing else.
    fn only_empty_builtins(&self) -> bool {
        self.num_entries == self.valid_hooks.count_ones() + 1
    }
}

/// `IPT_SO_GET_INFO` (`IPT_BASE_CTL`), at `SOL_IP`; `IP6T_SO_GET_INFO` at `SOL_IPV6` is the
/// same number.
const SO_GET_INFO: libc::c_int = 64;

/// One legacy table's header, as `iptables-legacy-save` reads it first.
fn get_info(family: Family, table: &str) -> io::Result<GetInfo> {
    use socket2::{Domain, Protocol, Socket, Type};

    let (domain, level) = match family {
        Family::V4 => (Domain::IPV4, libc::SOL_IP),
        Family::V6 => (Domain::IPV6, libc::SOL_IPV6),
    };
    let socket = Socket::new(domain, Type::RAW, Some(Protocol::from(libc::IPPROTO_RAW)))?;
    let mut info = GetInfo {
        name: [0; 32],
        valid_hooks: 0,
        hook_entry: [0; 5],
        underflow: [0; 5],
        num_entries: 0,
        size: 0,
    };
    // The name is NUL-terminated within its 32 bytes.
    if table.len() >= info.name.len() {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    info.name[..table.len()].copy_from_slice(table.as_bytes());
    let size = size_of::<GetInfo>() as libc::socklen_t;
    let mut len = size;
    // SAFETY: `info` is a live, writable `GetInfo` of `len` bytes, laid out as the kernel's
    // `struct ipt_getinfo`; the kernel writes at most `len` bytes and updates `len`.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            level,
            SO_GET_INFO,
            (&raw mut info).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if len != size {
        return Err(io::Error::from(io::ErrorKind::InvalidData));
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nfnetlink::{BaseChain, Chain, ChainType, Hook, Policy, Rule, Table};

    fn chain(name: &str, base: bool) -> Chain {
        Chain {
            family: NfProto::Ipv4,
            table: "nat".into(),
            name: name.into(),
            base: base.then_some(BaseChain {
                hook: Hook::Output,
                kind: ChainType::Nat,
                priority: -100,
                policy: Policy::Accept,
            }),
        }
    }

    #[test]
    fn only_empty_builtin_base_chains_are_pristine() {
        let empty = Listing::default();
        assert_eq!(nft_listing(&empty), Some(Pristine::NoTables));
        let cleaned = Listing {
            tables: vec![Table::new(NfProto::Ipv4, "nat")],
            chains: vec![chain("PREROUTING", true), chain("OUTPUT", true)],
            ..Listing::default()
        };
        assert_eq!(nft_listing(&cleaned), Some(Pristine::EmptyBuiltins));
        let bare_table = Listing {
            tables: vec![Table::new(NfProto::Ipv4, "nat")],
            ..Listing::default()
        };
        assert_eq!(nft_listing(&bare_table), Some(Pristine::EmptyBuiltins));
        for odd in [chain("FOREIGN", false), chain("OUTPUT", false), chain("ISTIO_OUTPUT", true)] {
            let listing = Listing {
                chains: vec![chain("OUTPUT", true), odd.clone()],
                ..cleaned.clone()
            };
            assert_eq!(nft_listing(&listing), None, "{odd:?}");
        }
        let with_rule = Listing {
            rules: vec![Rule::new(&chain("OUTPUT", true), Vec::new())],
            ..cleaned.clone()
        };
        assert_eq!(nft_listing(&with_rule), None);
    }

    #[test]
    fn entries_beyond_the_policies_are_rules_or_chains() {
        let info = |valid_hooks, num_entries| GetInfo {
            name: [0; 32],
            valid_hooks,
            hook_entry: [0; 5],
            underflow: [0; 5],
            num_entries,
            size: 0,
        };
        // nat: PREROUTING, INPUT, OUTPUT, POSTROUTING.
        assert!(info(0b11011, 5).only_empty_builtins());
        assert!(!info(0b11011, 6).only_empty_builtins(), "a rule");
        assert!(!info(0b11011, 7).only_empty_builtins(), "a chain of its own");
    }
}
