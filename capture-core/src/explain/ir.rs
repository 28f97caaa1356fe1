//! The rules in the one form the walk reads, whichever backend (or dump) they come from, and
//! the walk itself.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::{Connection, Direction, Explanation, Reason, Step, Verdict};
use crate::nft::model as nft;
use crate::render::Saved;
use crate::rules::{
    ChainName, CtState, Hook, Match, Neg, OwnChain, OwnerMatch, Proto, RuleSet, TableName, Target,
};
use crate::spec::{CaptureSpec, DNS_PROXY_PORT};
use crate::types::{Cidr, Family, Iface, Owner, Port, PortRange, lookup_id, passthrough_source};

/// One condition of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Cond {
    /// The packet's family (nft's `ip`/`ip6` matches restrict an `inet` rule to one).
    Family(Family),
    /// `-p`, `meta l4proto`.
    Proto(Proto),
    /// `[!] -s`.
    Src(Neg<Cidr>),
    /// `[!] -d`.
    Dst(Neg<Cidr>),
    /// `[!] -i`.
    InIface(Neg<Iface>),
    /// `[!] -o`.
    OutIface(Neg<Iface>),
    /// `[!] --dport`, `--dports`: in any of the ranges.
    DstPort(Neg<Vec<PortRange>>),
    /// `[!] --sport`.
    SrcPort(Neg<Vec<PortRange>>),
    /// `-m owner [!] --uid-owner|--gid-owner`.
    Owner(Neg<OwnerMatch>),
    /// `-m mark [!] --mark`.
    Mark(Neg<u32>),
    /// `-m connmark --mark`.
    Connmark(u32),
    /// `-m conntrack --ctstate`.
    CtState(Vec<CtState>),
}

/// One thing a rule does, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Act {
    /// Into another chain.
    Jump(String),
    /// Back to the calling chain.
    Return,
    /// Ends the table's walk.
    Accept,
    /// Drops the packet.
    Drop,
    /// nat to a local port.
    Redirect(Port),
    /// Hands the packet to a local socket on the port.
    Tproxy(Port),
    /// Sets the packet mark.
    SetMark(u32),
    /// Copies the packet mark to the connection.
    SaveMark,
    /// Copies the connection's mark to the packet.
    RestoreMark,
    /// Counters, conntrack zones: nothing that changes where the packet goes.
    Nothing,
}

/// A rule: its text as the backend prints it, conditions and actions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IrRule {
    pub(crate) text: String,
    pub(crate) conds: Vec<Cond>,
    pub(crate) acts: Vec<Act>,
    /// The first word the walk does not understand; such a rule never matches.
    pub(crate) unknown: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct TableRules {
    name: Option<TableName>,
    /// `nat`, or `istio-proxy-nat`.
    label: String,
    /// The chains by name.
    chains: BTreeMap<String, Vec<IrRule>>,
    /// The base chains of `PREROUTING` and `OUTPUT` in this table, if any.
    prerouting: Option<String>,
    output: Option<String>,
}

/// Rules to walk: tables in hook priority order (raw, mangle, nat).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Walk {
    tables: Vec<TableRules>,
    /// Said about the rules themselves (rules not understood).
    notes: Vec<String>,
}

/// Raw, mangle, nat: the order netfilter runs them at a hook.
fn priority(name: TableName) -> u8 {
    match name {
        TableName::Raw => 0,
        TableName::Mangle => 1,
        TableName::Nat => 2,
    }
}

fn ranges(ports: &[Port]) -> Vec<PortRange> {
    ports.iter().map(|p| PortRange::single(*p)).collect()
}

/// A planned iptables match as a condition.
fn cond(m: &Match) -> Cond {
    match m {
        Match::Proto(p) => Cond::Proto(*p),
        Match::Src(n) => Cond::Src(n.clone()),
        Match::Dst(n) => Cond::Dst(n.clone()),
        Match::SrcServer(s) => Cond::Src(Neg::is(Cidr::host(s.addr()))),
        Match::DstServer(s) => Cond::Dst(Neg::is(Cidr::host(s.addr()))),
        Match::InIface(i) => Cond::InIface(Neg::is(i.clone())),
        Match::OutIface(i) => Cond::OutIface(Neg::is(i.clone())),
        Match::DstPort(n) => Cond::DstPort(Neg {
            negated: n.negated,
            value: vec![n.value],
        }),
        Match::SrcPort(p) => Cond::SrcPort(Neg::is(vec![*p])),
        Match::DstPorts(n) => Cond::DstPort(Neg {
            negated: n.negated,
            value: ranges(&n.value),
        }),
        Match::Owner(n) => Cond::Owner(n.clone()),
        Match::Mark(n) => Cond::Mark(Neg {
            negated: n.negated,
            value: n.value.get(),
        }),
        Match::Connmark(m) => Cond::Connmark(m.get()),
        Match::CtState(s) => Cond::CtState(s.clone()),
    }
}

fn act(target: &Target) -> Act {
    match target {
        Target::Jump(chain) => Act::Jump(chain.as_str().to_owned()),
        Target::Return => Act::Return,
        Target::Accept => Act::Accept,
        Target::Drop => Act::Drop,
        Target::Redirect { to, .. } => Act::Redirect(*to),
        Target::Tproxy { on_port, .. } => Act::Tproxy(*on_port),
        Target::SetMark(m) => Act::SetMark(m.get()),
        Target::SaveMark => Act::SaveMark,
        Target::RestoreMark => Act::RestoreMark,
        Target::CtZone(_) => Act::Nothing,
    }
}

fn resolve(owner: &OwnerMatch) -> Option<u32> {
    match owner {
        OwnerMatch::Uid(o) => o.id().or_else(|| named(o, true)),
        OwnerMatch::Gid(o) => o.id().or_else(|| named(o, false)),
    }
}

fn named(owner: &Owner, user: bool) -> Option<u32> {
    match owner {
        Owner::Name(name) => lookup_id(name, user),
        Owner::Id(id) => Some(*id),
    }
}

fn nft_cond(m: &nft::Match, out: &mut Vec<Cond>) {
    let neg = |cmp: nft::Cmp| cmp == nft::Cmp::Ne;
    match m {
        nft::Match::L4Proto(p) => out.push(Cond::Proto(*p)),
        nft::Match::IifName(i) => out.push(Cond::InIface(Neg::is(i.clone()))),
        nft::Match::OifName(i) => out.push(Cond::OutIface(Neg::is(i.clone()))),
        nft::Match::Addr { dir, cmp, net } => {
            out.push(Cond::Family(net.family()));
            let cidr = Cidr::new(net.addr(), net.prefix()).unwrap_or_else(|_| Cidr::host(net.addr()));
            let n = Neg {
                negated: neg(*cmp),
                value: cidr,
            };
            out.push(match dir {
                nft::Dir::Src => Cond::Src(n),
                nft::Dir::Dst => Cond::Dst(n),
            });
        }
        nft::Match::Port {
            proto,
            dir,
            cmp,
            ports,
        } => {
            out.push(Cond::Proto(*proto));
            let value = match ports {
                nft::Ports::Range(r) => vec![*r],
                nft::Ports::Set(ports) => ranges(ports),
            };
            let n = Neg {
                negated: neg(*cmp),
                value,
            };
            out.push(match dir {
                nft::Dir::Src => Cond::SrcPort(n),
                nft::Dir::Dst => Cond::DstPort(n),
            });
        }
        nft::Match::Owner { cmp, owner, .. } => out.push(Cond::Owner(Neg {
            negated: neg(*cmp),
            value: owner.clone(),
        })),
        nft::Match::Mark { cmp, mark } => out.push(Cond::Mark(Neg {
            negated: neg(*cmp),
            value: mark.get(),
        })),
        nft::Match::CtState(s) => out.push(Cond::CtState(s.clone())),
        nft::Match::CtMark(m) => out.push(Cond::Connmark(m.get())),
    }
}

fn nft_act(s: &nft::Statement) -> Act {
    match s {
        nft::Statement::Counter | nft::Statement::SetCtZone(_) => Act::Nothing,
        nft::Statement::Verdict(v) => match v {
            nft::Verdict::Accept => Act::Accept,
            nft::Verdict::Drop => Act::Drop,
            nft::Verdict::Return => Act::Return,
            nft::Verdict::Jump(c) => Act::Jump(nft::chain_name(*c).to_owned()),
        },
        nft::Statement::Redirect { to } => Act::Redirect(*to),
        nft::Statement::Tproxy { to, .. } => Act::Tproxy(*to),
        nft::Statement::SetMark(m) => Act::SetMark(m.get()),
        nft::Statement::SaveMark => Act::SaveMark,
        nft::Statement::RestoreMark => Act::RestoreMark,
    }
}

impl Walk {
    /// The iptables rules of one family, as [`plan`](crate::plan) derives them; rule texts as
    /// `iptables-save` prints them.
    pub fn from_rules(rules: &RuleSet) -> Self {
        let mut tables: Vec<TableRules> = rules
            .tables
            .iter()
            .map(|table| {
                let chains = table
                    .chain_contents()
                    .into_iter()
                    .map(|(chain, list)| {
                        let rules = list
                            .into_iter()
                            .map(|rule| {
                                let saved = Saved {
                                    rule,
                                    family: rules.family,
                                    resolve: &resolve,
                                };
                                IrRule {
                                    text: format!("-A {chain} {saved}"),
                                    conds: rule.matches.iter().map(cond).collect(),
                                    acts: vec![act(&rule.target)],
                                    unknown: None,
                                }
                            })
                            .collect();
                        (chain.as_str().to_owned(), rules)
                    })
                    .collect();
                TableRules {
                    name: Some(table.name),
                    label: table.name.as_str().to_owned(),
                    chains,
                    prerouting: Some("PREROUTING".to_owned()),
                    output: Some("OUTPUT".to_owned()),
                }
            })
            .collect();
        tables.sort_by_key(|t| t.name.map(priority));
        Self {
            tables,
            notes: Vec::new(),
        }
    }

    /// Rules read back from `iptables-save`: each table's chains with their rules as written
    /// after `-A CHAIN `. Rules the walk does not understand are noted and never match.
    pub fn from_saves<'a>(
        tables: impl IntoIterator<Item = (TableName, &'a BTreeMap<String, Vec<String>>)>,
        family: Family,
    ) -> Self {
        let mut notes = Vec::new();
        let mut out: Vec<TableRules> = tables
            .into_iter()
            .map(|(name, chains)| {
                let chains = chains
                    .iter()
                    .map(|(chain, specs)| {
                        let rules = specs
                            .iter()
                            .map(|spec| {
                                let text = format!("-A {chain} {spec}");
                                match super::parse::parse_rule_spec(spec, family) {
                                    Ok((conds, acts)) => IrRule {
                                        text,
                                        conds,
                                        acts,
                                        unknown: None,
                                    },
                                    Err(word) => {
                                        notes.push(format!(
                                            "{} rule not understood ({word:?}), assumed not to match: {text}",
                                            name.as_str()
                                        ));
                                        IrRule {
                                            text,
                                            conds: Vec::new(),
                                            acts: Vec::new(),
                                            unknown: Some(word),
                                        }
                                    }
                                }
                            })
                            .collect();
                        (chain.clone(), rules)
                    })
                    .collect();
                TableRules {
                    name: Some(name),
                    label: name.as_str().to_owned(),
                    chains,
                    prerouting: Some("PREROUTING".to_owned()),
                    output: Some("OUTPUT".to_owned()),
                }
            })
            .collect();
        out.sort_by_key(|t| t.name.map(priority));
        Self { tables: out, notes }
    }

    /// The native nftables rules [`nft::plan`](crate::nft::plan) derives (one `inet` table
    /// holds both families); rule texts as `nft list ruleset` prints them.
    pub fn from_nft(ruleset: &nft::Ruleset) -> Self {
        let mut tables: Vec<TableRules> = ruleset
            .tables
            .iter()
            .map(|table| {
                let mut chains: BTreeMap<String, Vec<IrRule>> = BTreeMap::new();
                let (mut prerouting, mut output) = (None, None);
                for chain in &table.chains {
                    let name = nft::chain_name(chain.name).to_owned();
                    if let Some(base) = chain.base {
                        match base.hook {
                            Hook::Prerouting => prerouting = Some(name.clone()),
                            Hook::Output => output = Some(name.clone()),
                        }
                    }
                    chains.entry(name).or_default();
                }
                for op in &table.operations {
                    let mut conds = Vec::new();
                    for m in &op.rule.matches {
                        nft_cond(m, &mut conds);
                    }
                    let rule = IrRule {
                        text: op.rule.to_string(),
                        conds,
                        acts: op.rule.statements.iter().map(nft_act).collect(),
                        unknown: None,
                    };
                    let list = chains.entry(nft::chain_name(op.chain).to_owned()).or_default();
                    match op.position {
                        nft::Position::Append => list.push(rule),
                        nft::Position::Insert { index } => {
                            let at = usize::try_from(index).unwrap_or(usize::MAX).min(list.len());
                            list.insert(at, rule);
                        }
                    }
                }
                TableRules {
                    name: Some(table.name),
                    label: table.nft_name().to_owned(),
                    chains,
                    prerouting,
                    output,
                }
            })
            .collect();
        tables.sort_by_key(|t| t.name.map(priority));
        Self {
            tables,
            notes: Vec::new(),
        }
    }

    /// Our native nftables tables as listed from the kernel (`present`), read through the rules
    /// a configuration installs (`model`, compiled as `compiled`): a listed rule that is one of
    /// them walks as that rule (printed as `nft` prints it); any other is reported and never
    /// matches. Tables that are not ours are left out.
    pub fn from_nft_listing(
        model: &nft::Ruleset,
        compiled: &[crate::nft::Compiled],
        present: &[crate::nfnetlink::Listing],
    ) -> Self {
        let planned = Self::from_nft(model);
        // Each compiled rule with the walkable rule it was compiled from.
        let mut known: Vec<(&crate::nfnetlink::Rule, &IrRule)> = Vec::new();
        for c in compiled {
            let Some(table) = planned.tables.iter().find(|t| t.label == c.table.name) else {
                continue;
            };
            for chain in &c.chains {
                let rules = c.rules.iter().filter(|r| r.chain == chain.name);
                if let Some(walkable) = table.chains.get(&chain.name) {
                    known.extend(rules.zip(walkable));
                }
            }
        }
        let mut notes = Vec::new();
        let mut tables = Vec::new();
        for listing in present {
            let Some(table) = listing.tables.first() else {
                continue;
            };
            let Some(name) = nft::TABLES
                .into_iter()
                .find(|t| nft::table_name(*t) == table.name)
            else {
                continue;
            };
            let mut rules = TableRules {
                name: Some(name),
                label: table.name.clone(),
                ..TableRules::default()
            };
            for chain in &listing.chains {
                if let Some(base) = &chain.base {
                    match base.hook {
                        crate::nfnetlink::Hook::Prerouting => rules.prerouting = Some(chain.name.clone()),
                        crate::nfnetlink::Hook::Output => rules.output = Some(chain.name.clone()),
                        _ => {}
                    }
                }
                let walkable = listing
                    .rules_of(chain)
                    .enumerate()
                    .map(|(i, listed)| match known.iter().find(|(c, _)| *c == listed) {
                        Some((_, rule)) => (*rule).clone(),
                        None => {
                            let text = format!("rule {} of {chain}", i + 1);
                            notes.push(format!(
                                "{text} is not one these flags install: not understood, assumed not to match"
                            ));
                            IrRule {
                                text,
                                conds: Vec::new(),
                                acts: Vec::new(),
                                unknown: Some("not one these flags install".to_owned()),
                            }
                        }
                    })
                    .collect();
                rules.chains.insert(chain.name.clone(), walkable);
            }
            tables.push(rules);
        }
        tables.sort_by_key(|t| t.name.map(priority));
        Self { tables, notes }
    }

    /// Whether a rule with this text (as the rules print it) is among these rules.
    pub fn has_rule(&self, text: &str) -> bool {
        self.tables
            .iter()
            .flat_map(|t| t.chains.values().flatten())
            .any(|r| r.text == text)
    }

    /// Whether there are no rules at all.
    pub fn is_empty(&self) -> bool {
        self.tables.iter().all(|t| t.chains.values().all(Vec::is_empty))
    }

    /// Walks `conn` through the rules. `spec`, when given, names the reasons more precisely
    /// (which gids are the proxy's, which port is the tunnel).
    pub fn explain(
        &self,
        backend: &'static str,
        spec: Option<&CaptureSpec>,
        conn: &Connection,
    ) -> Explanation {
        let family = conn.family();
        let dst = conn.dst_ip();
        let outbound = conn.direction == Direction::Outbound;
        let iface = conn.effective_iface();
        let mut pkt = Packet {
            family,
            proto: conn.proto,
            src: conn.src.map(super::unmap),
            sport: conn.src_port,
            dst,
            dport: conn.dst.port(),
            uid: outbound.then_some(conn.uid),
            gid: outbound.then_some(conn.gid),
            iif: if outbound { None } else { iface.clone() },
            oif: if outbound { iface.clone() } else { None },
            mark: 0,
            ctmark: 0,
        };
        let hook = if outbound { Hook::Output } else { Hook::Prerouting };
        let mut path = Vec::new();
        let mut first = self.run_hook(hook, &mut pkt, &mut path, false);
        let lo = iface.as_ref().is_some_and(|i| i.as_str() == "lo");
        if outbound && lo && first.capture.is_none() {
            // Over lo the packet comes back in through PREROUTING, where mangle (TPROXY) sees
            // it again; nat does not (the connection has its NAT binding already).
            let mut again = pkt.clone();
            again.iif = iface.clone();
            again.oif = None;
            again.uid = None;
            again.gid = None;
            let second = self.run_hook(Hook::Prerouting, &mut again, &mut path, true);
            if second.capture.is_some() {
                first = second;
            }
        }
        let notes = self.notes.clone();
        let original_dst = conn.dst_unmapped();
        let (verdict, reason, rule) = match first.capture {
            Some((Act::Redirect(port), step)) => {
                let reason = if port == DNS_PROXY_PORT {
                    Reason::Dns
                } else if step.chain == OwnChain::Redirect.as_str()
                    || step.chain == nft::chain_name(ChainName::Own(OwnChain::Redirect))
                {
                    Reason::Outbound
                } else if outbound {
                    Reason::Hairpin
                } else {
                    Reason::Inbound
                };
                let verdict = if reason == Reason::Dns {
                    Verdict::Dns { port, original_dst }
                } else {
                    Verdict::Captured { port, original_dst }
                };
                (verdict, reason, Some(step))
            }
            Some((Act::Tproxy(port), step)) => (
                Verdict::Captured { port, original_dst },
                Reason::Inbound,
                Some(step),
            ),
            Some((_, step)) => (Verdict::Dropped, Reason::Invalid, Some(step)),
            None => match first.bypass {
                Some((step, rule)) => {
                    let reason = classify(&rule, &step.chain, spec, &pkt);
                    (Verdict::Bypassed, reason, Some(step))
                }
                None if first.entered_own => (Verdict::Bypassed, Reason::NotIncluded, None),
                None => (Verdict::Bypassed, Reason::NoCapture, None),
            },
        };
        Explanation {
            backend,
            verdict,
            reason,
            rule,
            path,
            notes,
        }
    }

    /// Runs the tables of `hook`, in priority order; `mangle_only` for a loopback packet's
    /// second pass.
    fn run_hook(&self, hook: Hook, pkt: &mut Packet, path: &mut Vec<Step>, mangle_only: bool) -> HookResult {
        let mut result = HookResult::default();
        for table in &self.tables {
            if mangle_only && table.name != Some(TableName::Mangle) {
                continue;
            }
            let base = match hook {
                Hook::Prerouting => table.prerouting.as_deref(),
                Hook::Output => table.output.as_deref(),
            };
            let Some(base) = base else { continue };
            let mut walk = TableWalk::default();
            let end = self.run_chain(table, base, pkt, path, &mut walk, 0);
            let decisive = table.name != Some(TableName::Raw);
            match end {
                Flow::Terminal(act @ (Act::Redirect(_) | Act::Tproxy(_) | Act::Drop), step) => {
                    result.capture = Some((act, step));
                    return result;
                }
                _ if !decisive => {}
                _ => {
                    if walk.entered_own || result.bypass.is_none() {
                        if walk.entered_own {
                            result.entered_own = true;
                            result.bypass = walk.last_return.clone();
                        } else if walk.last_return.is_some() {
                            result.bypass = walk.last_return.clone();
                        }
                    }
                }
            }
        }
        result
    }

    fn run_chain(
        &self,
        table: &TableRules,
        chain: &str,
        pkt: &mut Packet,
        path: &mut Vec<Step>,
        walk: &mut TableWalk,
        depth: usize,
    ) -> Flow {
        let Some(rules) = table.chains.get(chain) else {
            return Flow::End;
        };
        if depth > 16 {
            return Flow::End;
        }
        for rule in rules {
            if rule.unknown.is_some() || !rule.conds.iter().all(|c| pkt.matches(c)) {
                continue;
            }
            let step = Step {
                table: table.label.clone(),
                chain: chain.to_owned(),
                rule: rule.text.clone(),
            };
            path.push(step.clone());
            for a in &rule.acts {
                match a {
                    Act::Nothing => {}
                    Act::SetMark(m) => pkt.mark = *m,
                    Act::SaveMark => pkt.ctmark = pkt.mark,
                    Act::RestoreMark => pkt.mark = pkt.ctmark,
                    Act::Return => {
                        walk.last_return = Some((step.clone(), rule.clone()));
                        return Flow::End;
                    }
                    Act::Jump(to) => {
                        if is_own(to) {
                            walk.entered_own = true;
                        }
                        if let Flow::Terminal(act, step) =
                            self.run_chain(table, to, pkt, path, walk, depth + 1)
                        {
                            return Flow::Terminal(act, step);
                        }
                        // Back from the chain: on with the next rule.
                        break;
                    }
                    terminal @ (Act::Accept | Act::Drop | Act::Redirect(_) | Act::Tproxy(_)) => {
                        if *terminal == Act::Accept {
                            walk.last_return = Some((step.clone(), rule.clone()));
                        }
                        return Flow::Terminal(terminal.clone(), step);
                    }
                }
            }
        }
        Flow::End
    }
}

/// Ours, in either spelling (`ISTIO_OUTPUT`, `istio-output`).
fn is_own(chain: &str) -> bool {
    chain.starts_with("ISTIO_") || chain.starts_with("istio-")
}

#[derive(Debug, Default)]
struct TableWalk {
    entered_own: bool,
    last_return: Option<(Step, IrRule)>,
}

#[derive(Debug, Default)]
struct HookResult {
    capture: Option<(Act, Step)>,
    bypass: Option<(Step, IrRule)>,
    entered_own: bool,
}

enum Flow {
    /// The chain ended, or a rule returned from it.
    End,
    /// A rule ended the table's walk.
    Terminal(Act, Step),
}

/// The first packet of the connection, as the rules see it.
#[derive(Debug, Clone)]
struct Packet {
    family: Family,
    proto: Proto,
    src: Option<IpAddr>,
    sport: Option<u16>,
    dst: IpAddr,
    dport: u16,
    uid: Option<u32>,
    gid: Option<u32>,
    iif: Option<Iface>,
    oif: Option<Iface>,
    mark: u32,
    ctmark: u32,
}

fn iface_is(pkt_iface: Option<&Iface>, rule: &Iface) -> bool {
    let rule = rule.as_str();
    match pkt_iface {
        Some(i) => match rule.strip_suffix('+') {
            Some(prefix) => i.as_str().starts_with(prefix),
            None => i.as_str() == rule,
        },
        // An unnamed interface is neither lo nor one the rules name.
        None => rule == "+",
    }
}

impl Packet {
    fn matches(&self, cond: &Cond) -> bool {
        let neg = |negated: bool, hit: bool| hit != negated;
        match cond {
            Cond::Family(f) => *f == self.family,
            Cond::Proto(p) => *p == self.proto,
            // An address match of the other family never matches (nft), nor does its negation.
            Cond::Src(n) => {
                n.value.family() == self.family
                    && neg(n.negated, self.src.is_some_and(|s| n.value.contains(&s)))
            }
            Cond::Dst(n) => n.value.family() == self.family && neg(n.negated, n.value.contains(&self.dst)),
            Cond::InIface(n) => neg(n.negated, iface_is(self.iif.as_ref(), &n.value)),
            Cond::OutIface(n) => neg(n.negated, iface_is(self.oif.as_ref(), &n.value)),
            Cond::DstPort(n) => neg(n.negated, n.value.iter().any(|r| r.contains(self.dport))),
            Cond::SrcPort(n) => match self.sport {
                Some(p) => neg(n.negated, n.value.iter().any(|r| r.contains(p))),
                // An unknown (ephemeral) source port is none the rules name.
                None => n.negated,
            },
            Cond::Owner(n) => {
                // Packets without a local socket match no owner rule, negated or not.
                let (id, want) = match &n.value {
                    OwnerMatch::Uid(o) => (self.uid, named(o, true)),
                    OwnerMatch::Gid(o) => (self.gid, named(o, false)),
                };
                match id {
                    Some(id) => neg(n.negated, want == Some(id)),
                    None => false,
                }
            }
            Cond::Mark(n) => neg(n.negated, self.mark == n.value),
            Cond::Connmark(m) => self.ctmark == *m,
            // The first packet of a new connection.
            Cond::CtState(_) => false,
        }
    }
}

/// What kind of rule let the connection pass.
fn classify(rule: &IrRule, chain: &str, spec: Option<&CaptureSpec>, pkt: &Packet) -> Reason {
    let lo = |i: &Iface| i.as_str() == "lo";
    let has = |f: &dyn Fn(&Cond) -> bool| rule.conds.iter().any(f);
    let inbound_chain = chain == OwnChain::Inbound.as_str() || chain == "istio-inbound";
    if has(&|c| matches!(c, Cond::Src(n) if !n.negated && n.value == passthrough_source(pkt.family))) {
        return Reason::Passthrough;
    }
    if has(&|c| matches!(c, Cond::OutIface(n) if lo(&n.value)))
        && has(&|c| matches!(c, Cond::Owner(n) if n.negated))
    {
        return Reason::LocalToSelf;
    }
    if has(&|c| matches!(c, Cond::InIface(n) if lo(&n.value)))
        && has(&|c| matches!(c, Cond::Mark(n) if n.negated))
    {
        return Reason::LocalToSelf;
    }
    if has(&|c| matches!(c, Cond::Mark(n) if !n.negated)) {
        return Reason::ProxyMark;
    }
    for c in &rule.conds {
        if let Cond::Owner(n) = c {
            return match (&n.value, n.negated) {
                (OwnerMatch::Uid(_), false) => Reason::ProxyUid,
                (OwnerMatch::Gid(o), false) => {
                    let proxy =
                        spec.is_none_or(|s| s.owner.gids.iter().any(|g| named(g, false) == named(o, false)));
                    if proxy {
                        Reason::ProxyGid
                    } else {
                        Reason::OwnerGroup
                    }
                }
                (_, true) => Reason::OwnerGroup,
            };
        }
    }
    if has(&|c| matches!(c, Cond::InIface(n) | Cond::OutIface(n) if !lo(&n.value))) {
        return Reason::ExcludedInterface;
    }
    if has(&|c| matches!(c, Cond::DstPort(n) if !n.negated)) {
        if inbound_chain {
            let tunnel = spec.map_or(15008, |s| s.proxy.tunnel.get());
            return if pkt.dport == tunnel {
                Reason::TunnelPort
            } else {
                Reason::ExcludedInboundPort
            };
        }
        return Reason::ExcludedPort;
    }
    for c in &rule.conds {
        if let Cond::Dst(n) = c
            && !n.negated
        {
            return if n.value.is_loopback() {
                Reason::Loopback
            } else {
                Reason::ExcludedCidr
            };
        }
    }
    Reason::NotIncluded
}

#[cfg(test)]
impl Walk {
    /// Each table's chains as `iptables-save` would list them (rule text after `-A CHAIN `).
    pub(crate) fn tables_for_test(&self) -> Vec<(TableName, BTreeMap<String, Vec<String>>)> {
        self.tables
            .iter()
            .map(|t| {
                let chains = t
                    .chains
                    .iter()
                    .map(|(chain, rules)| {
                        let prefix = format!("-A {chain} ");
                        let specs = rules
                            .iter()
                            .map(|r| r.text.strip_prefix(&prefix).unwrap_or(&r.text).to_owned())
                            .collect();
                        (chain.clone(), specs)
                    })
                    .collect();
                (t.name.expect("an iptables table"), chains)
            })
            .collect()
    }

    pub(crate) fn notes_for_test(&self) -> &[String] {
        &self.notes
    }
}
