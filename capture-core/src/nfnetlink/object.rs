//! The nf_tables objects a batch writes and a listing reads: tables, chains and rules, as
//! plain values.
//!
//! They hold configuration only. What the kernel assigns (handles, anonymous set names, use
//! counts) and what changes on its own (counter values) is not part of them, so a listing of
//! what nft wrote equals the objects that describe it.

use std::fmt;
use std::hash::{Hash, Hasher};

use super::expr::{Bytes, Expr};

/// An nf_tables family (`NFPROTO_*`): `inet`, `ip`, `ip6`, …
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum NfProto {
    /// `NFPROTO_UNSPEC` (0): every family, in listings; no family, in `tproxy`.
    Unspec,
    /// `inet` (1): IPv4 and IPv6 in one table.
    Inet,
    /// `ip` (2): IPv4.
    Ipv4,
    /// `arp` (3).
    Arp,
    /// `netdev` (5).
    Netdev,
    /// `bridge` (7).
    Bridge,
    /// `ip6` (10): IPv6.
    Ipv6,
}

impl NfProto {
    /// The `NFPROTO_*` number.
    pub fn number(self) -> u8 {
        match self {
            Self::Unspec => 0,
            Self::Inet => 1,
            Self::Ipv4 => 2,
            Self::Arp => 3,
            Self::Netdev => 5,
            Self::Bridge => 7,
            Self::Ipv6 => 10,
        }
    }

    /// The family of an `NFPROTO_*` number.
    pub fn from_number(n: u8) -> Option<Self> {
        Some(match n {
            0 => Self::Unspec,
            1 => Self::Inet,
            2 => Self::Ipv4,
            3 => Self::Arp,
            5 => Self::Netdev,
            7 => Self::Bridge,
            10 => Self::Ipv6,
            _ => return None,
        })
    }
}

impl fmt::Display for NfProto {
    /// nft's spelling: `inet`, `ip`, `ip6`, `arp`, `netdev`, `bridge` (`unspec` for 0).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Unspec => "unspec",
            Self::Inet => "inet",
            Self::Ipv4 => "ip",
            Self::Arp => "arp",
            Self::Netdev => "netdev",
            Self::Bridge => "bridge",
            Self::Ipv6 => "ip6",
        })
    }
}

/// A table: `add table inet istio-proxy-nat`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Table {
    /// Its family.
    pub family: NfProto,
    /// Its name.
    pub name: String,
    /// `NFT_TABLE_F_*` (dormant 1, owner 2, persist 4); nft writes 0.
    pub flags: u32,
}

impl Table {
    /// A table with no flags, as `add table FAMILY NAME` makes it.
    pub fn new(family: NfProto, name: impl Into<String>) -> Self {
        Self {
            family,
            name: name.into(),
            flags: 0,
        }
    }
}

impl fmt::Display for Table {
    /// `table inet istio-proxy-nat`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "table {} {}", self.family, self.name)
    }
}

/// A netfilter hook a base chain is attached to (`NF_INET_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Hook {
    /// `prerouting` (0).
    Prerouting,
    /// `input` (1).
    Input,
    /// `forward` (2).
    Forward,
    /// `output` (3).
    Output,
    /// `postrouting` (4).
    Postrouting,
}

impl Hook {
    pub(super) fn number(self) -> u32 {
        match self {
            Self::Prerouting => 0,
            Self::Input => 1,
            Self::Forward => 2,
            Self::Output => 3,
            Self::Postrouting => 4,
        }
    }

    pub(super) fn from_number(n: u32) -> Option<Self> {
        Some(match n {
            0 => Self::Prerouting,
            1 => Self::Input,
            2 => Self::Forward,
            3 => Self::Output,
            4 => Self::Postrouting,
            _ => return None,
        })
    }
}

/// A base chain's type: which hook function the kernel attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ChainType {
    /// `filter`.
    Filter,
    /// `nat`: sees the first packet of each connection only.
    Nat,
    /// `route`: reroutes packets whose mark or addresses it changes (output hook only).
    Route,
}

impl ChainType {
    /// The name nf_tables knows it by.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Filter => "filter",
            Self::Nat => "nat",
            Self::Route => "route",
        }
    }

    pub(super) fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "filter" => Self::Filter,
            "nat" => Self::Nat,
            "route" => Self::Route,
            _ => return None,
        })
    }
}

/// What a base chain does with packets that reach its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Policy {
    /// `policy accept`, the default.
    #[default]
    Accept,
    /// `policy drop`.
    Drop,
}

/// What makes a chain a base chain: `{ type nat hook output priority -100 ; }`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BaseChain {
    /// `type`.
    pub kind: ChainType,
    /// `hook`.
    pub hook: Hook,
    /// `priority`: lower runs first.
    pub priority: i32,
    /// `policy`.
    pub policy: Policy,
}

/// A chain: `add chain inet istio-proxy-nat output { type nat hook output priority -100 ; }`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Chain {
    /// Its table's family.
    pub family: NfProto,
    /// Its table's name.
    pub table: String,
    /// Its name.
    pub name: String,
    /// Hook, type and priority for a base chain; `None` for a regular chain, which only
    /// jumps and gotos reach.
    pub base: Option<BaseChain>,
}

impl fmt::Display for Chain {
    /// `chain inet istio-proxy-nat output`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "chain {} {} {}", self.family, self.table, self.name)
    }
}

/// Where a new rule goes in its chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Position {
    /// At the end: `add rule …`. Listed rules have this position, in their listed order.
    #[default]
    Append,
    /// At the start: `insert rule …`.
    Prepend,
    /// Before the rule now at this index: `insert rule … index N`, as nft resolves it. The
    /// index counts the rules this batch has put in the chain so far, so use it in chains the
    /// batch creates or flushes (a rule placed by handle counts as appended); as in nft, an
    /// index with no rule there is an error.
    Index(usize),
    /// Before the rule with this kernel handle: `insert rule … handle H`.
    Before(u64),
    /// After the rule with this kernel handle: `add rule … handle H`.
    After(u64),
}

/// A rule: `add rule inet istio-proxy-nat output counter jump istio-output`.
///
/// Two rules are equal when they are the same rule of the same chain: same expressions and
/// user data. Where a batch puts them ([`Rule::position`]) and the kernel's [`Rule::handle`]
/// are not part of that; a listing gives rules in their order instead.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Its table's family.
    pub family: NfProto,
    /// Its table's name.
    pub table: String,
    /// Its chain's name.
    pub chain: String,
    /// Its expressions, in order.
    pub exprs: Vec<Expr>,
    /// Where a batch puts it (listed rules: [`Position::Append`]).
    pub position: Position,
    /// nft's user data (a `comment`); nft writes none otherwise.
    pub userdata: Option<Bytes>,
    /// The kernel's handle of a listed rule, for [`Position::Before`] and [`Position::After`];
    /// a batch ignores it.
    pub handle: Option<u64>,
}

impl Rule {
    /// A rule appended to `chain`, without user data.
    pub fn new(chain: &Chain, exprs: Vec<Expr>) -> Self {
        Self {
            family: chain.family,
            table: chain.table.clone(),
            chain: chain.name.clone(),
            exprs,
            position: Position::Append,
            userdata: None,
            handle: None,
        }
    }

    /// What equality and hashing compare.
    fn value(&self) -> impl PartialEq + Hash + '_ {
        let Self {
            family,
            table,
            chain,
            exprs,
            position: _,
            userdata,
            handle: _,
        } = self;
        (family, table, chain, exprs, userdata)
    }
}

impl PartialEq for Rule {
    fn eq(&self, other: &Self) -> bool {
        self.value() == other.value()
    }
}

impl Eq for Rule {}

impl Hash for Rule {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.value().hash(state);
    }
}
