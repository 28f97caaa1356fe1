//! nftables rules as plain values.
//!
//! A [`Ruleset`] is what [`plan`](super::plan) derives from a spec: for each of our tables, the
//! chains to declare and the rule operations in transaction order (`add rule` appends and
//! `insert rule … index N`, interleaved across chains, as Istio's transaction has them).
//!
//! Every match and statement carries its whole meaning as data (addresses as [`Cidr`]s or
//! [`Nameserver`]s, ports as numbers, marks as [`Mark`]s), so the same values can be rendered as
//! `nft` text ([`Transaction`](super::Transaction)) or compiled into kernel expressions. The
//! only pure-spelling field is [`Keyword`], which picks between two spellings of one expression.

use std::net::IpAddr;

use crate::TableName;
/// nftables chain types: the netlink layer's, one definition for text and kernel.
pub use crate::nfnetlink::ChainType;
use crate::rules::{ChainName, CtState, Hook, OwnChain, OwnerMatch, Proto};
use crate::types::{Cidr, Family, Iface, Mark, Nameserver, Port, PortRange};

/// Our tables, in the order Istio's transaction writes them.
pub const TABLES: [TableName; 3] = [TableName::Nat, TableName::Mangle, TableName::Raw];

/// Everything capture writes into nftables, table by table in transaction order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruleset {
    /// Tables with at least one rule, in transaction order (nat, mangle, raw).
    pub tables: Vec<Table>,
}

impl Ruleset {
    /// The table, if this ruleset has rules in it.
    pub fn table(&self, name: TableName) -> Option<&Table> {
        self.tables.iter().find(|t| t.name == name)
    }
}

/// The address family of a table. Capture only uses `inet`: one table holds both IPv4 and IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TableFamily {
    /// `inet`: IPv4 and IPv6 (`NFPROTO_INET`).
    Inet,
}

impl TableFamily {
    /// The family as `nft` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inet => "inet",
        }
    }
}

/// One of our tables: its chains and the rule operations that fill them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// Always [`TableFamily::Inet`].
    pub family: TableFamily,
    /// Which table (`istio-proxy-nat`, `istio-proxy-mangle`, `istio-proxy-raw`).
    pub name: TableName,
    /// The chains to declare, in declaration order; only chains that get rules.
    pub chains: Vec<Chain>,
    /// Rule operations in the order they are applied.
    pub operations: Vec<Operation>,
}

impl Table {
    /// The table's nftables name, e.g. `istio-proxy-nat`.
    pub fn nft_name(&self) -> &'static str {
        table_name(self.name)
    }

    /// The declared chain, if there is one by that name.
    pub fn chain(&self, name: ChainName) -> Option<&Chain> {
        self.chains.iter().find(|c| c.name == name)
    }
}

/// The nftables name of one of our tables.
pub fn table_name(name: TableName) -> &'static str {
    match name {
        TableName::Nat => "istio-proxy-nat",
        TableName::Mangle => "istio-proxy-mangle",
        TableName::Raw => "istio-proxy-raw",
    }
}

/// The nftables name of a chain: `prerouting`, `output`, or ours in lower case with dashes
/// (`ISTIO_IN_REDIRECT` is `istio-in-redirect`).
pub fn chain_name(chain: ChainName) -> &'static str {
    match chain {
        ChainName::Builtin(Hook::Prerouting) => "prerouting",
        ChainName::Builtin(Hook::Output) => "output",
        ChainName::Own(own) => match own {
            OwnChain::Inbound => "istio-inbound",
            OwnChain::Redirect => "istio-redirect",
            OwnChain::InRedirect => "istio-in-redirect",
            OwnChain::Output => "istio-output",
            OwnChain::OutputDns => "istio-output-dns",
            OwnChain::Divert => "istio-divert",
            OwnChain::Tproxy => "istio-tproxy",
            OwnChain::Drop => "istio-drop",
        },
    }
}

/// A chain declaration: `add chain inet T name [{ type … hook … priority … ; }]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chain {
    /// The chain. In nftables a "built-in" name is just a name; `base` makes it a hook.
    pub name: ChainName,
    /// The hook, for a base chain; `None` for a regular chain reached only by jumps.
    pub base: Option<BaseChain>,
}

/// What makes a chain a base chain: where netfilter calls it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseChain {
    /// The chain type.
    pub kind: ChainType,
    /// The netfilter hook.
    pub hook: Hook,
    /// The priority at the hook (lower runs first): -300 raw, -150 mangle, -100 dstnat.
    pub priority: i32,
}

/// A rule added to a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// The chain the rule goes into.
    pub chain: ChainName,
    /// At the end, or before an existing rule.
    pub position: Position,
    /// The rule.
    pub rule: Rule,
}

/// Where an [`Operation`] puts its rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// `add rule`: at the end.
    Append,
    /// `insert rule … index N`: before the rule now at 0-based position `index`, which exists.
    Insert {
        /// The 0-based position.
        index: u32,
    },
}

/// Matches (all must hold), then statements (run in order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Conditions, in the order they are written and evaluated.
    pub matches: Vec<Match>,
    /// What the rule does, in order; a verdict, if any, comes last.
    pub statements: Vec<Statement>,
}

impl Rule {
    /// A rule from its matches and statements.
    pub fn new(matches: impl Into<Vec<Match>>, statements: impl Into<Vec<Statement>>) -> Self {
        Self {
            matches: matches.into(),
            statements: statements.into(),
        }
    }
}

/// A comparison: equal or not equal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    /// Implicit `==` (written as nothing).
    Eq,
    /// `!=`.
    Ne,
}

/// Which end of a packet: source or destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// `saddr`, `sport`.
    Src,
    /// `daddr`, `dport`.
    Dst,
}

/// An address with a prefix length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Net {
    /// A network as configured; host bits are kept (`127.0.0.1/8`), as Istio writes it.
    Cidr(Cidr),
    /// A nameserver's host network, written as resolv.conf spells the address
    /// (`::127.0.0.53/128`).
    Server(Nameserver),
}

impl Net {
    /// The address as given (host bits included).
    pub fn addr(&self) -> IpAddr {
        match self {
            Self::Cidr(c) => c.addr(),
            Self::Server(s) => s.addr(),
        }
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        match self {
            Self::Cidr(c) => c.prefix(),
            Self::Server(s) => match s.family() {
                Family::V4 => 32,
                Family::V6 => 128,
            },
        }
    }

    /// The address family, which decides `ip` or `ip6`.
    pub fn family(&self) -> Family {
        Family::of(&self.addr())
    }
}

/// Transport ports to compare with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ports {
    /// One port (`53`) or an inclusive range (`8000-8080`).
    Range(PortRange),
    /// An anonymous set: `{ 53, 15008 }`, in this order.
    Set(Vec<Port>),
}

impl Ports {
    /// A single port.
    pub fn one(port: Port) -> Self {
        Self::Range(PortRange::single(port))
    }
}

/// How a `meta` expression is spelled. `skuid 1337` and `meta skuid 1337` are the same
/// expression; Istio writes the `meta` keyword in its raw table only, so the model keeps which.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keyword {
    /// Without `meta` (`skuid 1337`).
    Implicit,
    /// With `meta` (`meta skuid 1337`).
    Meta,
}

/// One rule condition (nft(8) "EXPRESSIONS").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    /// `meta l4proto tcp|udp`: the transport protocol, after any IPv6 extension headers.
    L4Proto(Proto),
    /// `iifname NAME`: the input interface, by name.
    IifName(Iface),
    /// `oifname NAME`: the output interface, by name.
    OifName(Iface),
    /// `ip|ip6 saddr|daddr [!=] NET`: the family is the address's; in an `inet` table it also
    /// restricts the rule to that family.
    Addr {
        /// Source or destination.
        dir: Dir,
        /// Equal or not.
        cmp: Cmp,
        /// The network.
        net: Net,
    },
    /// `tcp|udp sport|dport [!=] PORTS`: implies the protocol (nft adds the dependency).
    Port {
        /// The transport header.
        proto: Proto,
        /// Source or destination port.
        dir: Dir,
        /// Equal (in the set) or not.
        cmp: Cmp,
        /// The ports.
        ports: Ports,
    },
    /// `[meta] skuid|skgid [!=] OWNER`: the owner of the sending socket (local output only).
    Owner {
        /// Equal or not.
        cmp: Cmp,
        /// User or group, by id or name (`nft` resolves names when it reads the rule).
        owner: OwnerMatch,
        /// With or without the `meta` keyword.
        keyword: Keyword,
    },
    /// `mark [!=] M`: the packet mark (`meta mark`).
    Mark {
        /// Equal or not.
        cmp: Cmp,
        /// The mark.
        mark: Mark,
    },
    /// `ct state S,…`: any of these conntrack states.
    CtState(Vec<CtState>),
    /// `ct mark M`: the connection's mark.
    CtMark(Mark),
}

/// How a rule ends the packet's walk through the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// `accept`.
    Accept,
    /// `drop`.
    Drop,
    /// `return`: back to the calling chain (or the chain policy).
    Return,
    /// `jump CHAIN`: into a regular chain of the same table.
    Jump(ChainName),
}

/// What a rule does (nft(8) "STATEMENTS").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Statement {
    /// `counter`: packet and byte counters.
    Counter,
    /// A verdict.
    Verdict(Verdict),
    /// `redirect to :PORT`: destination NAT to this host's primary address (nat chains only).
    Redirect {
        /// The local port.
        to: Port,
    },
    /// `tproxy ip|ip6 to :PORT`: hand the packet to a local socket on the port, keeping
    /// addresses (prerouting only).
    Tproxy {
        /// The family the statement is for (`ip` or `ip6`).
        family: Family,
        /// The local port.
        to: Port,
    },
    /// `meta mark set M`: set the packet mark.
    SetMark(Mark),
    /// `ct mark set mark`: copy the packet mark to the connection.
    SaveMark,
    /// `meta mark set ct mark`: copy the connection's mark to the packet.
    RestoreMark,
    /// `ct zone set N`: put the packet in conntrack zone N (before conntrack, raw priority).
    SetCtZone(u16),
}
