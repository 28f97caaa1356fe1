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
//! - nft: an outline (over capture-core's own nf_tables netlink, one socket, the tables and
//!   chains without sets or decoded rules) of the families `ip`, `ip6` (as `iptables-nft-save`
//!   reads them) and `inet` (the native nftables backend's): no table, or tables whose every
//!   chain is a base chain named as a built-in one, without rules.
//!
//! Anything else (a rule, a chain of anyone's, a table the listing cannot decode, a failed read)
//! is "not pristine", and the caller reads the rules with `*-save` as before.

use std::io;
use std::os::fd::AsRawFd as _;

use super::compare::BUILTINS;
use super::exec::Flavor;
use crate::nfnetlink::{self, NfProto, Outline};
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
    #[error("cannot list the {families} nftables tables")]
    Nft {
        families: String,
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
    let protos: Vec<NfProto> = families
        .iter()
        .map(|family| match family {
            Family::V4 => NfProto::Ipv4,
            Family::V6 => NfProto::Ipv6,
        })
        .chain([NfProto::Inet])
        .collect();
    let outline = nfnetlink::outline(&protos).map_err(|source| ProbeError::Nft {
        families: protos.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
        source,
    })?;
    Ok(nft_outline(&outline))
}

/// What an outline holds, if it is pristine.
pub(super) fn nft_outline(outline: &Outline) -> Option<Pristine> {
    if outline.tables.is_empty() {
        return Some(Pristine::NoTables);
    }
    let only_builtins = outline
        .chains
        .iter()
        .all(|c| c.base.is_some() && BUILTINS.contains(&c.name.as_str()));
    (only_builtins && outline.rules == 0).then_some(Pristine::EmptyBuiltins)
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
    use crate::host::RunError;
    use crate::nfnetlink::{BaseChain, Chain, ChainType, Hook, Policy, Table};

    /// Runs `body` in a fresh network namespace private to a new thread; `None` (after saying
    /// so) when not root, unless `CI` is set.
    fn in_scratch_netns<T: Send>(test: &str, body: impl FnOnce() -> T + Send) -> Option<T> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            assert!(std::env::var_os("CI").is_none(), "{test}: needs root, and CI is set");
            eprintln!("skipping {test}: needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN)");
            return None;
        }
        let result = crate::host::run_in_scratch_netns(|| Ok::<_, RunError>(body()));
        Some(result.unwrap_or_else(|e| match e {
            RunError::Panicked(message) => std::panic::resume_unwind(Box::new(message)),
            e => panic!("{}", crate::chain(&e)),
        }))
    }

    fn nft(script: &str) {
        let out = std::process::Command::new("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write as _;
                child.stdin.take().expect("piped").write_all(script.as_bytes())?;
                child.wait_with_output()
            })
            .expect("run nft");
        assert!(out.status.success(), "nft: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// The probe's sockets and requests, and its answer.
    fn counted_probe(families: &[Family]) -> (Option<Pristine>, (u32, u32)) {
        let (sockets, requests) = nfnetlink::counted();
        let found = probe(Flavor::Nft, families);
        let (s, r) = nfnetlink::counted();
        (found, (s - sockets, r - requests))
    }

    #[test]
    fn the_nft_probe_is_one_socket_and_a_fresh_namespace_two_requests() {
        in_scratch_netns("the_nft_probe_is_one_socket_and_a_fresh_namespace_two_requests", || {
            let both = [Family::V4, Family::V6];
            // The generation and the tables of every family at once: nothing more to ask.
            assert_eq!(counted_probe(&both), (Some(Pristine::NoTables), (1, 2)));
            // What a cleanup leaves (and a netdev table, whose device-bound chain is not
            // decoded): the chains and the rules too, then the generation again.
            nft("add table ip nat
                 add chain ip nat OUTPUT { type nat hook output priority -100; }
                 add table ip6 nat
                 add chain ip6 nat OUTPUT { type nat hook output priority -100; }
                 add table netdev other
                 add chain netdev other ingress { type filter hook ingress device lo priority 0; }
                 add rule netdev other ingress counter");
            assert_eq!(counted_probe(&both), (Some(Pristine::EmptyBuiltins), (1, 5)));
            // A rule, a chain of anyone's: there is something to compare.
            nft("add rule ip6 nat OUTPUT counter");
            assert_eq!(counted_probe(&both).0, None);
            assert_eq!(counted_probe(&[Family::V4]).0, Some(Pristine::EmptyBuiltins));
            nft("add table inet mine
                 add chain inet mine c");
            assert_eq!(counted_probe(&[Family::V4]).0, None);
        });
    }

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
        let empty = Outline::default();
        assert_eq!(nft_outline(&empty), Some(Pristine::NoTables));
        let cleaned = Outline {
            tables: vec![Table::new(NfProto::Ipv4, "nat")],
            chains: vec![chain("PREROUTING", true), chain("OUTPUT", true)],
            ..Outline::default()
        };
        assert_eq!(nft_outline(&cleaned), Some(Pristine::EmptyBuiltins));
        let bare_table = Outline {
            tables: vec![Table::new(NfProto::Ipv4, "nat")],
            ..Outline::default()
        };
        assert_eq!(nft_outline(&bare_table), Some(Pristine::EmptyBuiltins));
        for odd in [chain("FOREIGN", false), chain("OUTPUT", false), chain("ISTIO_OUTPUT", true)] {
            let outline = Outline {
                chains: vec![chain("OUTPUT", true), odd.clone()],
                ..cleaned.clone()
            };
            assert_eq!(nft_outline(&outline), None, "{odd:?}");
        }
        let with_rule = Outline {
            rules: 1,
            ..cleaned.clone()
        };
        assert_eq!(nft_outline(&with_rule), None);
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
