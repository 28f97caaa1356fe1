//! Netfilter rules as values.
//!
//! A [`RuleSet`] is what [`plan`](crate::plan) derives from a spec for one address family. It
//! keeps the *order of operations* (`-A` appends and `-I` inserts, interleaved across chains)
//! rather than each chain's final contents, because the restore payload istio-iptables writes
//! is in that order and ours must match it byte for byte. [`Table::chain_contents`] gives
//! the contents the kernel ends up with.

use std::collections::BTreeMap;
use std::fmt;

use crate::types::{Cidr, Family, Iface, Mark, Nameserver, Owner, Port, PortRange};

/// The rules for one address family, table by table in sorted order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSet {
    /// The family these rules are for.
    pub family: Family,
    /// Tables with at least one rule, in sorted order (mangle, nat, raw).
    pub tables: Vec<Table>,
}

/// One netfilter table's operations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// The table.
    pub name: TableName,
    /// Rule operations in the order they are applied.
    pub entries: Vec<Entry>,
}

/// A rule appended to, or inserted into, a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The chain the rule goes into.
    pub chain: ChainName,
    /// Where in the chain.
    pub position: Position,
    /// The rule.
    pub rule: Rule,
}

/// Where an [`Entry`] puts its rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// At the end (`-A`).
    Append,
    /// At this 1-based position (`-I CHAIN n`).
    Insert(u32),
}

/// Netfilter tables, in the order they are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TableName {
    /// `mangle`: TPROXY marking, INVALID drops.
    Mangle,
    /// `nat`: REDIRECT.
    Nat,
    /// `raw`: conntrack zones for DNS.
    Raw,
}

impl TableName {
    /// The table's name as iptables spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mangle => "mangle",
            Self::Nat => "nat",
            Self::Raw => "raw",
        }
    }
}

/// Built-in netfilter hooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Hook {
    /// `PREROUTING`.
    Prerouting,
    /// `OUTPUT`.
    Output,
}

/// The chains capture creates. Their names are istio-iptables' so that tools and people who
/// know Istio's `iptables-save` output read ours unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OwnChain {
    /// `ISTIO_INBOUND`: inbound classification.
    Inbound,
    /// `ISTIO_REDIRECT`: REDIRECT to the outbound port.
    Redirect,
    /// `ISTIO_IN_REDIRECT`: REDIRECT to the inbound port.
    InRedirect,
    /// `ISTIO_OUTPUT`: outbound classification.
    Output,
    /// `ISTIO_OUTPUT_DNS`: DNS redirect and conntrack zones.
    OutputDns,
    /// `ISTIO_DIVERT`: marks established TPROXY flows.
    Divert,
    /// `ISTIO_TPROXY`: the TPROXY target.
    Tproxy,
    /// `ISTIO_DROP`: drops INVALID packets.
    Drop,
}

impl OwnChain {
    /// Every chain capture may create.
    pub const ALL: [Self; 8] = [
        Self::Inbound,
        Self::Redirect,
        Self::InRedirect,
        Self::Output,
        Self::OutputDns,
        Self::Divert,
        Self::Tproxy,
        Self::Drop,
    ];

    /// The chain's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inbound => "ISTIO_INBOUND",
            Self::Redirect => "ISTIO_REDIRECT",
            Self::InRedirect => "ISTIO_IN_REDIRECT",
            Self::Output => "ISTIO_OUTPUT",
            Self::OutputDns => "ISTIO_OUTPUT_DNS",
            Self::Divert => "ISTIO_DIVERT",
            Self::Tproxy => "ISTIO_TPROXY",
            Self::Drop => "ISTIO_DROP",
        }
    }
}

/// A chain: built in, or one of ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ChainName {
    /// A built-in chain.
    Builtin(Hook),
    /// A chain capture creates.
    Own(OwnChain),
}

impl ChainName {
    /// The chain's name as iptables spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Builtin(Hook::Prerouting) => "PREROUTING",
            Self::Builtin(Hook::Output) => "OUTPUT",
            Self::Own(own) => own.as_str(),
        }
    }
}

impl fmt::Display for ChainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A match, negated or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neg<T> {
    /// Whether the match is inverted (`!`).
    pub negated: bool,
    /// What is matched.
    pub value: T,
}

impl<T> Neg<T> {
    /// A plain match.
    pub fn is(value: T) -> Self {
        Self {
            negated: false,
            value,
        }
    }

    /// An inverted match.
    pub fn not(value: T) -> Self {
        Self { negated: true, value }
    }

    pub(crate) fn bang(&self) -> &'static str {
        if self.negated { "! " } else { "" }
    }
}

/// Transport protocols.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

/// Whose socket a packet belongs to (iptables-extensions(8) `owner`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnerMatch {
    /// `--uid-owner`.
    Uid(Owner),
    /// `--gid-owner`.
    Gid(Owner),
}

/// Conntrack states (iptables-extensions(8) `conntrack --ctstate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtState {
    /// `INVALID`.
    Invalid,
    /// `RELATED`.
    Related,
    /// `ESTABLISHED`.
    Established,
}

impl CtState {
    /// The state's name as conntrack and nft write it (`established`); iptables writes it in
    /// capitals.
    pub fn name(self) -> &'static str {
        match self {
            Self::Invalid => "invalid",
            Self::Related => "related",
            Self::Established => "established",
        }
    }
}

/// One rule condition. Rendered in the order a [`Rule`] lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    /// `-p tcp|udp` (iptables(8)).
    Proto(Proto),
    /// `[!] -s addr/len` (iptables(8)).
    Src(Neg<Cidr>),
    /// `[!] -d addr/len` (iptables(8)).
    Dst(Neg<Cidr>),
    /// `-s server/32|128` for a nameserver, written as it was read (iptables(8)).
    SrcServer(Nameserver),
    /// `-d server/32|128` for a nameserver, written as it was read (iptables(8)).
    DstServer(Nameserver),
    /// `-i iface` (iptables(8)).
    InIface(Iface),
    /// `-o iface` (iptables(8)).
    OutIface(Iface),
    /// `[!] --dport p` after `-p` (iptables-extensions(8) `tcp`/`udp`).
    DstPort(Neg<PortRange>),
    /// `--sport p` after `-p` (iptables-extensions(8) `tcp`/`udp`).
    SrcPort(PortRange),
    /// `-m multiport [!] --dports a,b` (iptables-extensions(8) `multiport`).
    DstPorts(Neg<Vec<Port>>),
    /// `-m owner [!] --uid-owner|--gid-owner x` (iptables-extensions(8) `owner`).
    Owner(Neg<OwnerMatch>),
    /// `-m mark [!] --mark m` (iptables-extensions(8) `mark`).
    Mark(Neg<Mark>),
    /// `-m connmark --mark m` (iptables-extensions(8) `connmark`).
    Connmark(Mark),
    /// `-m conntrack --ctstate s,…` (iptables-extensions(8) `conntrack`).
    CtState(Vec<CtState>),
}

/// What a rule does with a matching packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `-j CHAIN`.
    Jump(ChainName),
    /// `-j RETURN`.
    Return,
    /// `-j ACCEPT`.
    Accept,
    /// `-j DROP`.
    Drop,
    /// `-j REDIRECT --to-ports p` (iptables-extensions(8) `REDIRECT`). istio-iptables spells
    /// the option `--to-port` in its UDP DNS rule; `abbreviated` keeps that spelling.
    Redirect {
        /// The local port.
        to: Port,
        /// Spell the option `--to-port` (iptables accepts the abbreviation).
        abbreviated: bool,
    },
    /// `-j TPROXY --tproxy-mark m/0xffffffff --on-port p` (iptables-extensions(8) `TPROXY`).
    Tproxy {
        /// Mark set on diverted packets.
        mark: Mark,
        /// The proxy's inbound port.
        on_port: Port,
    },
    /// `-j MARK --set-mark m` (iptables-extensions(8) `MARK`).
    SetMark(Mark),
    /// `-j CONNMARK --save-mark` (iptables-extensions(8) `CONNMARK`).
    SaveMark,
    /// `-j CONNMARK --restore-mark` (iptables-extensions(8) `CONNMARK`).
    RestoreMark,
    /// `-j CT --zone n` (iptables-extensions(8) `CT`).
    CtZone(u16),
}

/// Conditions and a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// All must match.
    pub matches: Vec<Match>,
    /// The action.
    pub target: Target,
}

impl Rule {
    /// A rule from its matches and target.
    pub fn new(matches: impl Into<Vec<Match>>, target: Target) -> Self {
        Self {
            matches: matches.into(),
            target,
        }
    }
}

impl RuleSet {
    /// The table, if this set has rules in it.
    pub fn table(&self, name: TableName) -> Option<&Table> {
        self.tables.iter().find(|t| t.name == name)
    }
}

impl Table {
    /// Our chains in the order the restore payload declares them: by each chain's first rule,
    /// then chains that are only jumped to.
    pub fn own_chains(&self) -> Vec<OwnChain> {
        let mut chains = Vec::new();
        for entry in &self.entries {
            if let ChainName::Own(own) = entry.chain
                && !chains.contains(&own)
            {
                chains.push(own);
            }
        }
        for entry in &self.entries {
            if let Target::Jump(ChainName::Own(own)) = entry.rule.target
                && !chains.contains(&own)
            {
                chains.push(own);
            }
        }
        chains
    }

    /// Each chain's rules as the kernel holds them once every entry has been applied to an
    /// empty chain, in rule order.
    pub fn chain_contents(&self) -> BTreeMap<ChainName, Vec<&Rule>> {
        let mut chains: BTreeMap<ChainName, Vec<&Rule>> = BTreeMap::new();
        for own in self.own_chains() {
            chains.entry(ChainName::Own(own)).or_default();
        }
        for entry in &self.entries {
            let rules = chains.entry(entry.chain).or_default();
            match entry.position {
                Position::Append => rules.push(&entry.rule),
                Position::Insert(n) => {
                    let at = usize::try_from(n.saturating_sub(1))
                        .unwrap_or(usize::MAX)
                        .min(rules.len());
                    rules.insert(at, &entry.rule);
                }
            }
        }
        chains
    }
}
