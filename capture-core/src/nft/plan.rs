//! Deriving the nftables ruleset from a [`CaptureSpec`].
//!
//! The steps below follow Istio's `--native-nftables` configurator (`istio-nftables`'
//! `capture.Run`) in order, because the transaction text is compared byte for byte with its
//! goldens. They are the iptables plan's steps (`crate::plan`) in nftables terms, with three
//! differences that shape the output:
//!
//! - one `inet` table per netfilter table holds both families: an address-specific rule is
//!   written for IPv4 and then, right after it, for IPv6 when IPv6 is on; rules without an
//!   address are written once;
//! - every rule counts (`counter`), in the place Istio puts it;
//! - iptables' 1-based `-I CHAIN n` becomes a 0-based `insert rule … index n-1`, and an insert
//!   at or past the chain's current end becomes an append (the kernel refuses an index that
//!   names no rule). The indexes are Istio's, including its quirks: the IPv6 twin of a TPROXY
//!   passthrough rule is inserted at the same index as the IPv4 one, so it lands before it.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr};

use super::model::{
    BaseChain, Chain, ChainType, Cmp, Dir, Keyword, Match, Net, Operation, Ports, Position, Rule, Ruleset,
    Statement, TABLES, Table, TableFamily, Verdict,
};
use crate::TableName::{self, Mangle, Nat, Raw};
use crate::plan::proxy_owners;
use crate::rules::{ChainName, CtState, Hook, OwnChain, OwnerMatch, Proto};
use crate::spec::{
    CaptureSpec, DNS_PORT, DNS_PROXY_PORT, DnsCapture, InboundPorts, InterceptMode, OutboundCidrs,
    OwnerGroups, TPROXY_OUTBOUND_MARK,
};
use crate::types::{Cidr, Family, Mark, Nameserver, PortRange, passthrough_source};

use ChainName::{Builtin, Own};
use Hook::{Output as OUTPUT, Prerouting as PREROUTING};
use OwnChain::{Divert, Drop, InRedirect, Inbound, Output, OutputDns, Redirect, Tproxy};

/// Plans the nftables ruleset `spec` needs: every table, both families (IPv6 when on).
///
/// `spec` must have passed [`CaptureSpec::validate`]; planning itself cannot fail. Every
/// chain a rule jumps to is declared, and only chains with rules are.
///
/// # Examples
/// ```
/// use capture_core::{CaptureSpec, TableName};
/// let ruleset = capture_core::nft::plan(&CaptureSpec::sidecar());
/// assert!(ruleset.table(TableName::Nat).is_some());
/// assert!(ruleset.table(TableName::Mangle).is_none());
/// ```
pub fn plan(spec: &CaptureSpec) -> Ruleset {
    let mut p = Planner {
        spec,
        ops: BTreeMap::new(),
    };
    p.exclude_interfaces();
    p.reroute_interfaces_return();
    p.drop_invalid();
    p.proxy_chains();
    p.inbound();
    p.outbound();
    p.tproxy_marks();
    let tables = TABLES
        .into_iter()
        .filter_map(|name| p.ops.remove(&name).map(|ops| table(name, ops)))
        .collect();
    Ruleset { tables }
}

/// Every chain a table may have, in the order Istio declares them, with base-chain hooks.
fn declared_chains(table: TableName) -> Vec<Chain> {
    let (prerouting, output, own): (_, _, &[OwnChain]) = match table {
        Nat => (
            (ChainType::Nat, -100),
            (ChainType::Nat, -100),
            &[Inbound, Redirect, InRedirect, Output, OutputDns],
        ),
        Mangle => (
            (ChainType::Filter, -150),
            (ChainType::Route, -150),
            &[Divert, Tproxy, Inbound, Drop],
        ),
        Raw => (
            (ChainType::Filter, -300),
            (ChainType::Filter, -300),
            &[Inbound, OutputDns],
        ),
    };
    let base = |hook, (kind, priority)| Chain {
        name: Builtin(hook),
        base: Some(BaseChain { kind, hook, priority }),
    };
    let mut chains = vec![base(PREROUTING, prerouting), base(OUTPUT, output)];
    chains.extend(own.iter().map(|&c| Chain {
        name: Own(c),
        base: None,
    }));
    chains
}

/// A table from its planned operations: the chains that get rules, and inserts that would
/// land at or past a chain's end turned into appends.
fn table(name: TableName, planned: Vec<Operation>) -> Table {
    let chains = declared_chains(name)
        .into_iter()
        .filter(|c| planned.iter().any(|op| op.chain == c.name))
        .collect();
    let mut lengths: BTreeMap<ChainName, u32> = BTreeMap::new();
    let operations = planned
        .into_iter()
        .map(|mut op| {
            let len = lengths.entry(op.chain).or_default();
            if let Position::Insert { index } = op.position
                && index >= *len
            {
                op.position = Position::Append;
            }
            *len += 1;
            op
        })
        .collect();
    Table {
        family: TableFamily::Inet,
        name,
        chains,
        operations,
    }
}

struct Planner<'a> {
    spec: &'a CaptureSpec,
    ops: BTreeMap<TableName, Vec<Operation>>,
}

fn tcp() -> Match {
    Match::L4Proto(Proto::Tcp)
}

fn port(proto: Proto, dir: Dir, cmp: Cmp, ports: Ports) -> Match {
    Match::Port {
        proto,
        dir,
        cmp,
        ports,
    }
}

fn dport(proto: Proto, range: PortRange) -> Match {
    port(proto, Dir::Dst, Cmp::Eq, Ports::Range(range))
}

fn addr(dir: Dir, cmp: Cmp, net: Net) -> Match {
    Match::Addr { dir, cmp, net }
}

fn daddr(cmp: Cmp, cidr: Cidr) -> Match {
    addr(Dir::Dst, cmp, Net::Cidr(cidr))
}

fn owner(cmp: Cmp, owner: OwnerMatch) -> Match {
    Match::Owner {
        cmp,
        owner,
        keyword: Keyword::Implicit,
    }
}

fn mark(cmp: Cmp, mark: Mark) -> Match {
    Match::Mark { cmp, mark }
}

fn lo_out() -> Match {
    Match::OifName("lo".parse().expect("valid interface name"))
}

fn lo_in() -> Match {
    Match::IifName("lo".parse().expect("valid interface name"))
}

/// `counter` then the verdict: how almost every rule ends.
fn counted(verdict: Verdict) -> Vec<Statement> {
    vec![Statement::Counter, Statement::Verdict(verdict)]
}

fn ret() -> Vec<Statement> {
    counted(Verdict::Return)
}

fn jump(chain: OwnChain) -> Vec<Statement> {
    counted(Verdict::Jump(Own(chain)))
}

impl Planner<'_> {
    fn add(&mut self, table: TableName, chain: ChainName, position: Position, rule: Rule) {
        let op = Operation {
            chain,
            position,
            rule,
        };
        self.ops.entry(table).or_default().push(op);
    }

    fn append(
        &mut self,
        table: TableName,
        chain: ChainName,
        matches: Vec<Match>,
        statements: Vec<Statement>,
    ) {
        self.add(table, chain, Position::Append, Rule::new(matches, statements));
    }

    fn insert(
        &mut self,
        table: TableName,
        chain: ChainName,
        index: u32,
        matches: Vec<Match>,
        statements: Vec<Statement>,
    ) {
        let position = Position::Insert { index };
        self.add(table, chain, position, Rule::new(matches, statements));
    }

    /// IPv4, then IPv6 when it is on: the order of a rule and its IPv6 twin.
    fn families(&self) -> &'static [Family] {
        self.spec.families()
    }

    /// The "this host" range of a family: the configured IPv4 loopback CIDR, or `::1/128`.
    fn loopback(&self, family: Family) -> Cidr {
        match family {
            Family::V4 => self.spec.ipv4_loopback,
            Family::V6 => Cidr::host(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        }
    }

    /// The networks of `cidrs` in rule order: the IPv4 ones, then the IPv6 ones when IPv6 is on.
    fn by_family<'c>(&self, cidrs: &'c [Cidr]) -> impl Iterator<Item = Cidr> + 'c {
        let families = self.families();
        families
            .iter()
            .flat_map(move |f| cidrs.iter().filter(move |c| c.family() == *f))
            .copied()
    }

    fn tproxy_mark(&self) -> Option<Mark> {
        self.spec.tproxy().map(|(mark, _)| mark)
    }

    /// Excluded interfaces bypass capture in both directions, before anything else matches.
    fn exclude_interfaces(&mut self) {
        let ifaces = &self.spec.interfaces.exclude;
        let tables: &[TableName] = if self.tproxy_mark().is_some() {
            &[Nat, Mangle]
        } else {
            &[Nat]
        };
        for &table in tables {
            for iface in ifaces {
                self.append(
                    table,
                    Builtin(PREROUTING),
                    vec![Match::IifName(iface.clone())],
                    ret(),
                );
                self.append(table, Builtin(OUTPUT), vec![Match::OifName(iface.clone())], ret());
            }
        }
    }

    /// Traffic arriving on a virtual (KubeVirt) interface is not inbound traffic; the outbound
    /// step inserts its redirect in front of this return.
    fn reroute_interfaces_return(&mut self) {
        for iface in self.spec.interfaces.reroute.clone() {
            self.insert(Nat, Builtin(PREROUTING), 0, vec![Match::IifName(iface)], ret());
        }
    }

    /// Out-of-window packets are dropped rather than answered with a reset.
    fn drop_invalid(&mut self) {
        if self.spec.drop_invalid {
            let invalid = Match::CtState(vec![CtState::Invalid]);
            self.append(Mangle, Builtin(PREROUTING), vec![tcp(), invalid], jump(Drop));
            self.append(Mangle, Own(Drop), vec![], counted(Verdict::Drop));
        }
    }

    /// The tunnel port is never captured; the two redirect chains point at the proxy.
    fn proxy_chains(&mut self) {
        let ports = self.spec.proxy;
        let tunnel = dport(Proto::Tcp, PortRange::single(ports.tunnel));
        self.append(Nat, Own(Inbound), vec![tcp(), tunnel], ret());
        for (chain, to) in [(Redirect, ports.outbound), (InRedirect, ports.inbound)] {
            let redirect = vec![Statement::Counter, Statement::Redirect { to }];
            self.append(Nat, Own(chain), vec![tcp()], redirect);
        }
    }

    fn inbound(&mut self) {
        let spec = self.spec;
        if spec.inbound.ports == InboundPorts::Off {
            return;
        }
        let tproxy = match spec.inbound.mode {
            InterceptMode::Tproxy { mark, route_table: _ } => Some(mark),
            InterceptMode::Redirect => None,
        };
        let table = if let Some(mark) = tproxy {
            self.append(
                Mangle,
                Own(Divert),
                vec![],
                vec![Statement::Counter, Statement::SetMark(mark)],
            );
            self.append(Mangle, Own(Divert), vec![], counted(Verdict::Accept));
            for &family in self.families() {
                let not_local = daddr(Cmp::Ne, self.loopback(family));
                let statements = vec![
                    Statement::Tproxy {
                        family,
                        to: spec.proxy.inbound,
                    },
                    Statement::SetMark(mark),
                    Statement::Counter,
                    Statement::Verdict(Verdict::Accept),
                ];
                self.append(Mangle, Own(Tproxy), vec![tcp(), not_local], statements);
            }
            Mangle
        } else {
            Nat
        };
        self.append(table, Builtin(PREROUTING), vec![tcp()], jump(Inbound));
        let established = || Match::CtState(vec![CtState::Related, CtState::Established]);
        match &spec.inbound.ports {
            InboundPorts::All { except } => {
                for p in except {
                    self.append(table, Own(Inbound), vec![tcp(), dport(Proto::Tcp, *p)], ret());
                }
                if tproxy.is_some() {
                    // Packets of connections the proxy already owns go straight to its socket.
                    self.append(Mangle, Own(Inbound), vec![tcp(), established()], jump(Divert));
                    self.append(Mangle, Own(Inbound), vec![tcp()], jump(Tproxy));
                } else {
                    self.append(Nat, Own(Inbound), vec![tcp()], jump(InRedirect));
                }
            }
            InboundPorts::Only(ports) => {
                for p in ports {
                    let p = dport(Proto::Tcp, *p);
                    if tproxy.is_some() {
                        let matches = vec![tcp(), established(), p.clone()];
                        self.append(Mangle, Own(Inbound), matches, jump(Divert));
                        self.append(Mangle, Own(Inbound), vec![tcp(), p], jump(Tproxy));
                    } else {
                        self.append(Nat, Own(Inbound), vec![tcp(), p], jump(InRedirect));
                    }
                }
            }
            InboundPorts::Off => {}
        }
    }

    fn outbound(&mut self) {
        let spec = self.spec;
        let out = &spec.outbound;
        let dns = spec.dns.as_ref();
        self.append(Nat, Builtin(OUTPUT), vec![], jump(Output));

        // Excluded ports come first, before connections back to self are redirected.
        for &p in &out.exclude_ports {
            for proto in [Proto::Tcp, Proto::Udp] {
                self.append(Nat, Own(Output), vec![dport(proto, p)], ret());
            }
        }

        // The proxy forwards inbound traffic to the app from the passthrough source address.
        for &family in self.families() {
            let passthrough = addr(Dir::Src, Cmp::Eq, Net::Cidr(passthrough_source(family)));
            self.append(Nat, Own(Output), vec![lo_out(), passthrough], ret());
        }

        // An include CIDR inside loopback means the user wants app-to-self traffic captured.
        let includes_loopback =
            matches!(&out.include, OutboundCidrs::Only(cidrs) if cidrs.iter().any(Cidr::is_loopback));
        let tunnel = spec.proxy.tunnel;
        for who in proxy_owners(spec) {
            // The proxy calling the app through a VIP that resolved to this pod goes back to the
            // inbound listener. With DNS capture the uid form also spares port 53 (Istio keeps
            // the gid form as it was).
            let spared = if dns.is_some() && matches!(who, OwnerMatch::Uid(_)) {
                Ports::Set(vec![DNS_PORT, tunnel])
            } else {
                Ports::one(tunnel)
            };
            for &family in self.families() {
                let matches = vec![
                    lo_out(),
                    tcp(),
                    daddr(Cmp::Ne, self.loopback(family)),
                    port(Proto::Tcp, Dir::Dst, Cmp::Ne, spared.clone()),
                    owner(Cmp::Eq, who.clone()),
                ];
                self.append(Nat, Own(Output), matches, jump(InRedirect));
            }
            // The app talking to itself over lo is not captured (TCP DNS to a local server is).
            if !includes_loopback {
                let mut matches = vec![lo_out()];
                if dns.is_some() {
                    let not_dns = port(Proto::Tcp, Dir::Dst, Cmp::Ne, Ports::one(DNS_PORT));
                    matches.extend([tcp(), not_dns]);
                }
                matches.push(owner(Cmp::Ne, who.clone()));
                self.append(Nat, Own(Output), matches, ret());
            }
            // Everything else the proxy sends leaves untouched (no loops), whatever the protocol.
            self.append(Nat, Own(Output), vec![owner(Cmp::Eq, who)], ret());
        }

        match &out.owner_groups {
            OwnerGroups::All { except } => {
                for group in except {
                    let matches = vec![owner(Cmp::Eq, OwnerMatch::Gid(group.clone()))];
                    self.append(Nat, Own(Output), matches, ret());
                }
            }
            OwnerGroups::Only(groups) => {
                let matches = groups
                    .iter()
                    .map(|g| owner(Cmp::Ne, OwnerMatch::Gid(g.clone())))
                    .collect();
                self.append(Nat, Own(Output), matches, ret());
            }
        }

        if let Some(dns) = dns {
            self.dns(dns);
        }

        // Applications that talk to the proxy (or to each other) over localhost.
        for &family in self.families() {
            let local = daddr(Cmp::Eq, self.loopback(family));
            self.append(Nat, Own(Output), vec![local], ret());
        }
        for cidr in self.by_family(&out.exclude_cidrs).collect::<Vec<_>>() {
            self.append(Nat, Own(Output), vec![daddr(Cmp::Eq, cidr)], ret());
        }
        for &p in &out.include_ports {
            self.append(Nat, Own(Output), vec![dport(Proto::Tcp, p)], jump(Redirect));
        }
        let reroute = spec.interfaces.reroute.clone();
        match &out.include {
            OutboundCidrs::All => {
                self.append(Nat, Own(Output), vec![], jump(Redirect));
                for iface in reroute {
                    let matches = vec![Match::IifName(iface)];
                    self.insert(Nat, Builtin(PREROUTING), 0, matches, jump(Redirect));
                }
            }
            OutboundCidrs::Only(cidrs) => {
                for cidr in self.by_family(cidrs).collect::<Vec<_>>() {
                    for iface in &reroute {
                        let matches = vec![Match::IifName(iface.clone()), daddr(Cmp::Eq, cidr)];
                        self.insert(Nat, Builtin(PREROUTING), 0, matches, jump(Redirect));
                    }
                    self.append(Nat, Own(Output), vec![daddr(Cmp::Eq, cidr)], jump(Redirect));
                }
            }
            OutboundCidrs::Off => {}
        }
    }

    /// DNS to the agent's resolver, and conntrack zones that keep the app↔agent and the
    /// agent↔upstream halves of a UDP exchange from sharing one conntrack entry.
    fn dns(&mut self, dns: &DnsCapture) {
        let spec = self.spec;
        // Nameservers of a family that is off get no rules, and so no jump to an empty chain.
        let servers: Vec<Nameserver> = match dns {
            DnsCapture::All => Vec::new(),
            DnsCapture::Only(servers) => self
                .families()
                .iter()
                .flat_map(|f| servers.iter().filter(move |s| s.family() == *f))
                .cloned()
                .collect(),
        };
        let all = matches!(dns, DnsCapture::All);
        let server = |dir, s: &Nameserver| addr(dir, Cmp::Eq, Net::Server(s.clone()));
        let dns_port = |proto| dport(proto, PortRange::single(DNS_PORT));
        let to_agent = || vec![Statement::Counter, Statement::Redirect { to: DNS_PROXY_PORT }];
        let zone = |n| vec![Statement::Counter, Statement::SetCtZone(n)];

        self.append(Raw, Builtin(OUTPUT), vec![], jump(OutputDns));
        if all || !servers.is_empty() {
            self.append(Nat, Own(Output), vec![], jump(OutputDns));
        }
        if all {
            self.append(Nat, Own(OutputDns), vec![tcp(), dns_port(Proto::Tcp)], to_agent());
            self.append(Nat, Own(OutputDns), vec![dns_port(Proto::Udp)], to_agent());
        } else {
            for proto in [Proto::Tcp, Proto::Udp] {
                for s in &servers {
                    let matches = vec![server(Dir::Dst, s), dns_port(proto)];
                    self.append(Nat, Own(OutputDns), matches, to_agent());
                }
            }
        }

        let from_agent = Ports::one(DNS_PROXY_PORT);
        for who in proxy_owners(spec) {
            let who = Match::Owner {
                cmp: Cmp::Eq,
                owner: who,
                keyword: Keyword::Meta,
            };
            let upstream = vec![dns_port(Proto::Udp), who.clone()];
            self.append(Raw, Own(OutputDns), upstream, zone(1));
            let reply = vec![port(Proto::Udp, Dir::Src, Cmp::Eq, from_agent.clone()), who];
            self.append(Raw, Own(OutputDns), reply, zone(2));
        }
        let sport53 = || port(Proto::Udp, Dir::Src, Cmp::Eq, Ports::one(DNS_PORT));
        if all {
            self.append(Raw, Builtin(PREROUTING), vec![], jump(Inbound));
            self.append(Raw, Own(OutputDns), vec![dns_port(Proto::Udp)], zone(2));
            self.append(Raw, Own(Inbound), vec![sport53()], zone(1));
        } else if !servers.is_empty() {
            self.append(Raw, Builtin(PREROUTING), vec![], jump(Inbound));
            for s in &servers {
                let query = vec![dns_port(Proto::Udp), server(Dir::Dst, s)];
                self.append(Raw, Own(OutputDns), query, zone(2));
                let answer = vec![sport53(), server(Dir::Src, s)];
                self.append(Raw, Own(Inbound), answer, zone(1));
            }
        }
    }

    /// TPROXY bookkeeping: keep the proxy's own marked flows and its loopback calls to the app
    /// out of the inbound diversion.
    fn tproxy_marks(&mut self) {
        let Some(tproxy_mark) = self.tproxy_mark() else {
            return;
        };
        let spec = self.spec;
        let marked = || mark(Cmp::Eq, tproxy_mark);
        let counted_then = |s| vec![Statement::Counter, s];
        self.append(
            Mangle,
            Builtin(PREROUTING),
            vec![tcp(), marked()],
            counted_then(Statement::SaveMark),
        );
        self.append(Mangle, Builtin(OUTPUT), vec![lo_out(), tcp(), marked()], ret());
        for who in proxy_owners(spec) {
            for &family in self.families() {
                let matches = vec![
                    lo_out(),
                    tcp(),
                    daddr(Cmp::Ne, self.loopback(family)),
                    owner(Cmp::Eq, who.clone()),
                ];
                let set = counted_then(Statement::SetMark(TPROXY_OUTBOUND_MARK));
                self.append(Mangle, Builtin(OUTPUT), matches, set);
            }
        }
        self.append(
            Mangle,
            Builtin(OUTPUT),
            vec![tcp(), Match::CtMark(tproxy_mark)],
            counted_then(Statement::RestoreMark),
        );
        self.insert(Mangle, Own(Inbound), 0, vec![tcp(), marked()], ret());
        for &family in self.families() {
            let passthrough = addr(Dir::Src, Cmp::Eq, Net::Cidr(passthrough_source(family)));
            self.insert(Mangle, Own(Inbound), 1, vec![lo_in(), tcp(), passthrough], ret());
        }
        let unmarked = mark(Cmp::Ne, TPROXY_OUTBOUND_MARK);
        self.insert(Mangle, Own(Inbound), 2, vec![lo_in(), tcp(), unmarked], ret());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Owner;

    fn jumps(ruleset: &Ruleset) -> Vec<(TableName, ChainName)> {
        let mut out = Vec::new();
        for t in &ruleset.tables {
            for op in &t.operations {
                for s in &op.rule.statements {
                    if let Statement::Verdict(Verdict::Jump(c)) = s {
                        out.push((t.name, *c));
                    }
                }
            }
        }
        out
    }

    #[test]
    fn inserts_past_the_end_become_appends() {
        let mut spec = CaptureSpec::istio_defaults();
        spec.interfaces.reroute = vec!["eth1".parse().unwrap(), "eth2".parse().unwrap()];
        let nat = plan(&spec);
        let nat = nat.table(Nat).unwrap();
        let prerouting: Vec<_> = nat
            .operations
            .iter()
            .filter(|op| op.chain == Builtin(PREROUTING))
            .map(|op| op.position)
            .collect();
        assert_eq!(
            prerouting,
            [Position::Append, Position::Insert { index: 0 }],
            "the first insert into an empty chain appends"
        );
    }

    #[test]
    fn nameservers_of_a_family_that_is_off_leave_no_dangling_jump() {
        let mut spec = CaptureSpec::sidecar();
        spec.dns = Some(DnsCapture::Only(vec!["::127.0.0.53".parse().unwrap()]));
        spec.ipv6 = false;
        let ruleset = plan(&spec);
        let jumps = jumps(&ruleset);
        for (table, chain) in &jumps {
            let t = ruleset.table(*table).unwrap();
            assert!(
                t.chain(*chain).is_some(),
                "{table:?} jumps to undeclared {chain:?}"
            );
        }
        assert!(!jumps.contains(&(Nat, Own(OutputDns))));
        assert!(!jumps.contains(&(Raw, Own(Inbound))));
        // The proxy's own DNS traffic still gets its conntrack zones.
        assert!(jumps.contains(&(Raw, Own(OutputDns))));
    }

    #[test]
    fn rules_carry_addresses_and_ports_as_values() {
        let mut spec = CaptureSpec::sidecar();
        spec.ipv6 = true;
        spec.outbound.exclude_cidrs = vec!["10.0.0.1/8".parse().unwrap(), "fd00::/8".parse().unwrap()];
        let ruleset = plan(&spec);
        let nat = ruleset.table(Nat).unwrap();
        let excluded: Vec<(IpAddr, u8)> = nat
            .operations
            .iter()
            .filter(|op| op.chain == Own(Output) && op.rule.statements == ret())
            .filter_map(|op| match op.rule.matches.as_slice() {
                [
                    Match::Addr {
                        dir: Dir::Dst,
                        cmp: Cmp::Eq,
                        net,
                    },
                ] => Some((net.addr(), net.prefix())),
                _ => None,
            })
            .collect();
        assert_eq!(
            excluded,
            [
                ("127.0.0.1".parse().unwrap(), 32),
                ("::1".parse().unwrap(), 128),
                ("10.0.0.1".parse().unwrap(), 8),
                ("fd00::".parse().unwrap(), 8),
            ]
        );
    }

    #[test]
    fn owner_names_stay_names() {
        let mut spec = CaptureSpec::istio_defaults();
        spec.outbound.owner_groups = OwnerGroups::Only(vec![Owner::Name("java".into()), Owner::Id(202)]);
        let ruleset = plan(&spec);
        let text = super::super::Transaction(&ruleset).to_string();
        assert!(text.contains(" istio-output skgid != java skgid != 202 counter return\n"));
    }
}
