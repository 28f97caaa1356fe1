//! nf_tables over netlink, without nft, libnftables or libnftnl: the native nftables
//! backend's way into the kernel.
//!
//! A [`Batch`] of [`Table`]s, [`Chain`]s and [`Rule`]s (made of [`Expr`]s) goes to the kernel
//! as one transaction; [`list`] reads tables, chains and rules back as the same types, so that
//! "what is in the kernel" and "what we would write" compare with `==`.
//!
//! ```text
//! Batch { ops: [AddTable, FlushTable, AddChain, AddRule, …] } ─commit─> NETLINK_NETFILTER socket
//! list(family, table) ─> Listing { generation, tables, chains, rules } <─ NFT_MSG_GET* dumps
//! ```
//!
//! # Why our own encoder
//!
//! Checked in 2026 on crates.io, for a crate that speaks nf_tables netlink without C libraries
//! under a licence that can be linked into this Apache-2.0 code:
//!
//! - `rustables` 0.9: pure Rust netlink, but GPL-3.0.
//! - `nftnl` 0.9 (MIT/Apache-2.0): links libnftnl and libmnl, C libraries.
//! - `nftables` 0.6 (MIT/Apache-2.0): writes nft's JSON for the `nft` binary to run.
//! - `netlink-packet-netfilter` 0.4 (MIT, rust-netlink): pure Rust, but its nf_tables part
//!   (new in 0.3, August 2026) models 6 of the 10 expressions the rule set needs (no
//!   `counter`, `redir`, `tproxy` or `ct`), has message types for a batch but nothing that maps
//!   the kernel's answers back to its messages, and brings `derive_more` and `zerocopy` along.
//!
//! What Istio's rule set needs is small and fixed (three `inet` tables, ten expression kinds,
//! anonymous port sets), and the part that must be exact, that our messages are attribute for
//! attribute what nft 1.0.x sends so that `nft list ruleset` prints our rules as it prints its
//! own, is ours to check either way. So this module is its own encoder and decoder for exactly
//! those objects (about 3,000 lines with their documentation), over `netlink-sys`'s socket;
//! anything else a listing meets is kept as [`Expr::Unknown`], so it shows up in comparisons
//! instead of failing them.
//!
//! # What nft adds to what you write
//!
//! A rule's expressions are the kernel's, not nft's syntax; nft 1.0.x (checked with
//! `nft --debug=netlink` on every Istio golden) compiles the golden lines so:
//!
//! - in an `inet` table, a match on an `ip`/`ip6` header field is preceded by
//!   `meta nfproto ipv4|ipv6` (1 byte), and one on a `tcp`/`udp` field by `meta l4proto tcp|udp`
//!   (1 byte), right before the field's load, unless the rule already has that same match
//!   (Istio's explicit `meta l4proto tcp` is one);
//! - an address prefix of whole bytes loads and compares only those (`ip daddr 1.1.0.0/16`: 2
//!   bytes at offset 16, `/32` all 4); any other prefix, and `/0`, loads the whole address,
//!   masks it with `bitwise` and compares it with the host bits cleared ([`Expr::prefix`]);
//! - `tproxy ip to :P` adds no `meta nfproto` of its own; `redirect` and `tproxy` need the
//!   rule's `meta l4proto`, which Istio writes;
//! - interface names compare 16 NUL-padded bytes ([`ifname`]); `skuid`, `skgid`, marks and
//!   `ct mark` 4 bytes in host order; ports 2 bytes in network order;
//! - `ct state a,b` is a load, a `bitwise` mask of the states and `!= 0` ([`Expr::ct_state`]);
//! - `x != { … }` is a `lookup` with the invert flag into an anonymous constant set, created
//!   just before the rule with nft's user data ([`Set::ports`]);
//! - `redirect to :P`, `tproxy ip to :P`, `meta mark set N` and `ct zone set N` load their value
//!   with `immediate` into register 1 first (`ct zone` as 2 bytes);
//! - `insert rule … index N` becomes an insert before the rule then at index N, named by its
//!   transaction id ([`Position::Index`]); `flush table` is a rule deletion naming the table
//!   only.

mod attr;
mod batch;
mod decode;
mod encode;
mod expr;
mod list;
mod object;
mod socket;

use std::fmt;

use crate::netlink::{KernelSays, needs_cap};
use std::io;

pub use batch::{Batch, Op};
pub use expr::{
    Bytes, CmpOp, CtKey, CtState, Expr, L4Proto, MetaKey, PayloadBase, PortField, Register, Set, Verdict,
    ifname,
};
pub use list::{Listing, Outline, Session, list, list_tables, outline};
#[cfg(test)]
pub(crate) use socket::counted;
use nix::errno::Errno;
pub use object::{BaseChain, Chain, ChainType, Hook, NfProto, Policy, Position, Rule, Table};

/// Why a batch or a listing failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A system call on the netlink socket failed.
    #[error("{call} on the nf_tables netlink socket failed")]
    Syscall {
        /// `socket`, `bind`, `send`, `recv`, `setsockopt(SO_SNDBUF)`, …
        call: &'static str,
        /// What it returned.
        #[source]
        io: io::Error,
    },
    /// The kernel refused a message; for a batch, nothing of it was applied.
    #[error("{subject} failed: {errno}{}{}", needs_cap(Some(*errno as i32)), KernelSays(kernel_message.as_deref()))]
    Refused {
        /// The refused message.
        subject: Box<Subject>,
        /// The kernel's error.
        errno: Errno,
        /// The kernel's extended acknowledgement text, when it gave one.
        kernel_message: Option<String>,
    },
    /// The batch expected a ruleset generation that is gone ([`Batch::expect_generation`]);
    /// nothing was applied.
    #[error("the ruleset changed after it was read (at generation {expected}); read it again")]
    Changed {
        /// The generation the batch was planned from.
        expected: u32,
    },
    /// A rule's [`Position::Index`] names no rule; nothing was sent.
    #[error("{subject}: no rule at index {index} (the batch has put {rules} in that chain before it)")]
    Position {
        /// The rule.
        subject: Box<Subject>,
        /// Its index.
        index: usize,
        /// How many rules the chain has at that point of the batch.
        rules: usize,
    },
    /// The kernel neither refused the batch nor acknowledged its last message.
    #[error("the kernel did not acknowledge the batch's last message (sequence {seq}) and reported no error")]
    Unanswered {
        /// The sequence number of the message sent with `NLM_F_ACK`.
        seq: u32,
    },
    /// An answer of the kernel could not be decoded.
    #[error("cannot decode the kernel's answer to {subject}")]
    Malformed {
        /// The request answered.
        subject: Box<Subject>,
        /// What is wrong with it.
        #[source]
        source: Malformed,
    },
    /// A listing kept being changed while it was read.
    #[error("the ruleset changed while it was listed, {attempts} times in a row")]
    Interrupted {
        /// How many listings were tried.
        attempts: u32,
    },
}

impl Error {
    /// The errno the kernel or a system call answered, if any.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            Self::Syscall { io, .. } => io.raw_os_error().map(Errno::from_raw),
            Self::Refused { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    pub(super) fn syscall(call: &'static str) -> impl FnOnce(io::Error) -> Self {
        move |io| Self::Syscall { call, io }
    }
}

/// What a kernel answer could not be decoded as, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {problem}")]
pub struct Malformed {
    /// The attribute or message.
    pub what: &'static str,
    /// What is wrong with it.
    pub problem: &'static str,
}

impl Malformed {
    pub(crate) fn new(what: &'static str, problem: &'static str) -> Self {
        Self { what, problem }
    }
}

/// One message of a batch, or one request, named for errors:
/// `adding rule 7 in inet istio-proxy-nat istio-output (expression 12: immediate)`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Subject {
    /// The batch as a whole (its begin and end messages).
    Batch,
    /// [`Op::AddTable`].
    AddTable {
        /// The table's family.
        family: NfProto,
        /// The table's name.
        table: String,
    },
    /// [`Op::DeleteTable`].
    DeleteTable {
        /// The table's family.
        family: NfProto,
        /// The table's name.
        table: String,
    },
    /// [`Op::FlushTable`].
    FlushTable {
        /// The table's family.
        family: NfProto,
        /// The table's name.
        table: String,
    },
    /// [`Op::AddChain`].
    AddChain {
        /// The table's family.
        family: NfProto,
        /// The table's name.
        table: String,
        /// The chain's name.
        chain: String,
    },
    /// [`Op::AddRule`].
    AddRule {
        /// The table's family.
        family: NfProto,
        /// The table's name.
        table: String,
        /// The chain's name.
        chain: String,
        /// Which of the rules the batch adds to this chain, from 1, in batch order.
        number: usize,
        /// The expression the kernel pointed at, from 1, with its name.
        expression: Option<(usize, String)>,
    },
    /// The anonymous set of an [`Op::AddRule`] (or its elements).
    AddSet {
        /// The table's family.
        family: NfProto,
        /// The table's name.
        table: String,
        /// The chain's name.
        chain: String,
        /// The rule's number, as in [`Subject::AddRule`].
        rule: usize,
    },
    /// A listing request.
    List {
        /// What was listed: `"tables"`, `"chains"`, `"sets"`, `"set elements"`, `"rules"`,
        /// `"generation"`.
        what: &'static str,
        /// The family listed.
        family: NfProto,
    },
}

impl Subject {
    fn add_table(table: &Table) -> Self {
        Self::AddTable {
            family: table.family,
            table: table.name.clone(),
        }
    }

    fn delete_table(family: NfProto, table: &str) -> Self {
        Self::DeleteTable {
            family,
            table: table.to_owned(),
        }
    }

    fn flush_table(family: NfProto, table: &str) -> Self {
        Self::FlushTable {
            family,
            table: table.to_owned(),
        }
    }

    fn add_chain(chain: &Chain) -> Self {
        Self::AddChain {
            family: chain.family,
            table: chain.table.clone(),
            chain: chain.name.clone(),
        }
    }

    fn add_rule(rule: &Rule, number: usize) -> Self {
        Self::AddRule {
            family: rule.family,
            table: rule.table.clone(),
            chain: rule.chain.clone(),
            number,
            expression: None,
        }
    }

    fn add_set(rule: &Rule, number: usize) -> Self {
        Self::AddSet {
            family: rule.family,
            table: rule.table.clone(),
            chain: rule.chain.clone(),
            rule: number,
        }
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Batch => f.write_str("committing the batch"),
            Self::AddTable { family, table } => write!(f, "adding table {family} {table}"),
            Self::DeleteTable { family, table } => write!(f, "deleting table {family} {table}"),
            Self::FlushTable { family, table } => write!(f, "flushing table {family} {table}"),
            Self::AddChain { family, table, chain } => write!(f, "adding chain {family} {table} {chain}"),
            Self::AddRule {
                family,
                table,
                chain,
                number,
                expression,
            } => {
                write!(f, "adding rule {number} in {family} {table} {chain}")?;
                match expression {
                    Some((index, name)) => write!(f, " (expression {index}: {name})"),
                    None => Ok(()),
                }
            }
            Self::AddSet {
                family,
                table,
                chain,
                rule,
            } => write!(
                f,
                "adding the anonymous set of rule {rule} in {family} {table} {chain}"
            ),
            Self::List { what, family } => write!(f, "listing the {what} of family {family}"),
        }
    }
}

#[cfg(test)]
mod tests;
