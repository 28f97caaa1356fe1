//! Deriving the rules for one address family from a [`CaptureSpec`].
//!
//! The order of operations below is istio-iptables' (`capture/run.go`), step for step, because
//! the restore payload is compared byte for byte with Istio's. Each step says why it exists.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr};

use crate::rules::{
    ChainName, CtState, Entry, Hook, Match, Neg, OwnChain, OwnerMatch, Position, Proto, Rule, RuleSet, Table,
    TableName, Target,
};
use crate::spec::{
    CaptureSpec, DNS_PORT, DNS_PROXY_PORT, DnsCapture, InboundPorts, InterceptMode, OutboundCidrs,
    OwnerGroups, TPROXY_OUTBOUND_MARK,
};
use crate::types::{Cidr, Family, Mark, Nameserver, Owner, Port, PortRange, passthrough_source};

use ChainName::{Builtin, Own};
use Hook::{Output as OUTPUT, Prerouting as PREROUTING};
use OwnChain::{Divert, Drop, InRedirect, Inbound, Output, OutputDns, Redirect, Tproxy};
use TableName::{Mangle, Nat, Raw};

/// Plans the rules `spec` needs in one address family.
///
/// `spec` must have passed [`CaptureSpec::validate`]; planning itself cannot fail.
///
/// # Examples
/// ```
/// use capture_core::{CaptureSpec, Family, TableName, plan};
/// let rules = plan(&CaptureSpec::sidecar(), Family::V6);
/// assert!(rules.table(TableName::Nat).is_some());
/// assert!(rules.table(TableName::Mangle).is_none());
/// ```
pub fn plan(spec: &CaptureSpec, family: Family) -> RuleSet {
    let mut p = Planner {
        family,
        spec,
        tables: BTreeMap::new(),
    };
    p.exclude_interfaces();
    p.reroute_interfaces_return();
    p.drop_invalid();
    p.proxy_chains();
    p.inbound();
    p.outbound();
    p.tproxy_marks();
    RuleSet {
        family,
        tables: p
            .tables
            .into_iter()
            .map(|(name, entries)| Table { name, entries })
            .collect(),
    }
}

struct Planner<'a> {
    family: Family,
    spec: &'a CaptureSpec,
    tables: BTreeMap<TableName, Vec<Entry>>,
}

fn tcp() -> Match {
    Match::Proto(Proto::Tcp)
}

fn udp() -> Match {
    Match::Proto(Proto::Udp)
}

fn dport(port: Port) -> Match {
    Match::DstPort(Neg::is(PortRange::single(port)))
}

fn jump(chain: OwnChain) -> Target {
    Target::Jump(Own(chain))
}

fn gid(owner: &Owner) -> OwnerMatch {
    OwnerMatch::Gid(owner.clone())
}

/// The proxy's uids, then its gids: the order of Istio's owner rules, in both planners.
pub(crate) fn proxy_owners(spec: &CaptureSpec) -> Vec<OwnerMatch> {
    let uids = spec.owner.uids.iter().cloned().map(OwnerMatch::Uid);
    uids.chain(spec.owner.gids.iter().cloned().map(OwnerMatch::Gid))
        .collect()
}

impl Planner<'_> {
    fn add(
        &mut self,
        table: TableName,
        chain: ChainName,
        position: Position,
        matches: Vec<Match>,
        target: Target,
    ) {
        let rule = Rule::new(matches, target);
        self.tables.entry(table).or_default().push(Entry {
            chain,
            position,
            rule,
        });
    }

    fn append(&mut self, table: TableName, chain: ChainName, matches: Vec<Match>, target: Target) {
        self.add(table, chain, Position::Append, matches, target);
    }

    fn insert(&mut self, table: TableName, chain: ChainName, at: u32, matches: Vec<Match>, target: Target) {
        self.add(table, chain, Position::Insert(at), matches, target);
    }

    /// The "this host" range: the configured IPv4 loopback CIDR, or `::1/128`.
    fn loopback(&self) -> Cidr {
        match self.family {
            Family::V4 => self.spec.ipv4_loopback,
            Family::V6 => Cidr::host(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        }
    }

    fn in_family<'c>(&self, cidrs: impl IntoIterator<Item = &'c Cidr>) -> Vec<Cidr> {
        cidrs
            .into_iter()
            .filter(|c| c.family() == self.family)
            .copied()
            .collect()
    }

    fn tproxy_mark(&self) -> Option<Mark> {
        self.spec.tproxy().map(|(mark, _)| mark)
    }

    /// Excluded interfaces bypass capture in both directions, before anything else matches:
    /// in nat, and in mangle too when TPROXY captures there.
    fn exclude_interfaces(&mut self) {
        let tables: &[TableName] = if self.tproxy_mark().is_some() {
            &[Nat, Mangle]
        } else {
            &[Nat]
        };
        for &table in tables {
            for iface in &self.spec.interfaces.exclude {
                self.append(
                    table,
                    Builtin(PREROUTING),
                    vec![Match::InIface(iface.clone())],
                    Target::Return,
                );
                self.append(
                    table,
                    Builtin(OUTPUT),
                    vec![Match::OutIface(iface.clone())],
                    Target::Return,
                );
            }
        }
    }

    /// Traffic arriving on a virtual (KubeVirt) interface is not inbound traffic; the outbound
    /// step below inserts its redirect in front of this RETURN.
    fn reroute_interfaces_return(&mut self) {
        for iface in &self.spec.interfaces.reroute {
            self.insert(
                Nat,
                Builtin(PREROUTING),
                1,
                vec![Match::InIface(iface.clone())],
                Target::Return,
            );
        }
    }

    /// Out-of-window packets are dropped rather than answered with a reset.
    fn drop_invalid(&mut self) {
        if self.spec.drop_invalid {
            self.append(
                Mangle,
                Builtin(PREROUTING),
                vec![Match::CtState(vec![CtState::Invalid])],
                jump(Drop),
            );
            self.append(Mangle, Own(Drop), vec![], Target::Drop);
        }
    }

    /// The tunnel port is never captured; the two redirect chains point at the proxy.
    fn proxy_chains(&mut self) {
        let ports = self.spec.proxy;
        self.append(
            Nat,
            Own(Inbound),
            vec![tcp(), dport(ports.tunnel)],
            Target::Return,
        );
        self.append(
            Nat,
            Own(Redirect),
            vec![tcp()],
            Target::Redirect {
                to: ports.outbound,
                abbreviated: false,
            },
        );
        self.append(
            Nat,
            Own(InRedirect),
            vec![tcp()],
            Target::Redirect {
                to: ports.inbound,
                abbreviated: false,
            },
        );
    }

    fn inbound(&mut self) {
        let spec = self.spec;
        if spec.inbound.ports == InboundPorts::Off {
            return;
        }
        let table = match spec.inbound.mode {
            InterceptMode::Tproxy { mark, route_table: _ } => {
                self.append(Mangle, Own(Divert), vec![], Target::SetMark(mark));
                self.append(Mangle, Own(Divert), vec![], Target::Accept);
                let not_local = Match::Dst(Neg::not(self.loopback()));
                let target = Target::Tproxy {
                    mark,
                    on_port: spec.proxy.inbound,
                };
                self.append(Mangle, Own(Tproxy), vec![not_local, tcp()], target);
                Mangle
            }
            InterceptMode::Redirect => Nat,
        };
        self.append(table, Builtin(PREROUTING), vec![tcp()], jump(Inbound));
        let tproxy = self.tproxy_mark().is_some();
        let established = || Match::CtState(vec![CtState::Related, CtState::Established]);
        match &spec.inbound.ports {
            InboundPorts::All { except } => {
                for port in except {
                    self.append(
                        table,
                        Own(Inbound),
                        vec![tcp(), Match::DstPort(Neg::is(*port))],
                        Target::Return,
                    );
                }
                if tproxy {
                    // Packets of connections the proxy already owns go straight to its socket.
                    self.append(Mangle, Own(Inbound), vec![tcp(), established()], jump(Divert));
                    self.append(Mangle, Own(Inbound), vec![tcp()], jump(Tproxy));
                } else {
                    self.append(Nat, Own(Inbound), vec![tcp()], jump(InRedirect));
                }
            }
            InboundPorts::Only(ports) => {
                for port in ports {
                    let port = Match::DstPort(Neg::is(*port));
                    if tproxy {
                        self.append(
                            Mangle,
                            Own(Inbound),
                            vec![tcp(), port.clone(), established()],
                            jump(Divert),
                        );
                        self.append(Mangle, Own(Inbound), vec![tcp(), port], jump(Tproxy));
                    } else {
                        self.append(Nat, Own(Inbound), vec![tcp(), port], jump(InRedirect));
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
        let lo = self.loopback();
        let lo_iface = || Match::OutIface("lo".parse().expect("valid interface name"));
        self.append(Nat, Builtin(OUTPUT), vec![], jump(Output));

        // Excluded ports come first, before connections back to self are redirected.
        for port in &out.exclude_ports {
            let port = Match::DstPort(Neg::is(*port));
            self.append(Nat, Own(Output), vec![tcp(), port.clone()], Target::Return);
            self.append(Nat, Own(Output), vec![udp(), port], Target::Return);
        }

        // The proxy forwards inbound traffic to the app from the passthrough source address.
        let passthrough = Match::Src(Neg::is(passthrough_source(self.family)));
        self.append(Nat, Own(Output), vec![lo_iface(), passthrough], Target::Return);

        // An include CIDR inside loopback means the user wants app-to-self traffic captured.
        let includes_loopback =
            matches!(&out.include, OutboundCidrs::Only(cidrs) if cidrs.iter().any(Cidr::is_loopback));
        let tunnel = spec.proxy.tunnel;
        for owner in proxy_owners(spec) {
            // The proxy calling the app through a VIP that resolved to this pod goes back to the
            // inbound listener. With DNS capture the uid form also spares port 53 (Istio keeps
            // the gid form as it was).
            let spare = if dns.is_some() && matches!(owner, OwnerMatch::Uid(_)) {
                Match::DstPorts(Neg::not(vec![DNS_PORT, tunnel]))
            } else {
                Match::DstPort(Neg::not(PortRange::single(tunnel)))
            };
            let matches = vec![
                lo_iface(),
                Match::Dst(Neg::not(lo)),
                tcp(),
                spare,
                Match::Owner(Neg::is(owner.clone())),
            ];
            self.append(Nat, Own(Output), matches, jump(InRedirect));
            // The app talking to itself over lo is not captured.
            if !includes_loopback {
                let mut matches = vec![lo_iface()];
                if dns.is_some() {
                    matches.extend([tcp(), Match::DstPort(Neg::not(PortRange::single(DNS_PORT)))]);
                }
                matches.push(Match::Owner(Neg::not(owner.clone())));
                self.append(Nat, Own(Output), matches, Target::Return);
            }
            // Everything else the proxy sends leaves untouched (no loops), whatever the protocol.
            self.append(
                Nat,
                Own(Output),
                vec![Match::Owner(Neg::is(owner))],
                Target::Return,
            );
        }

        match &out.owner_groups {
            OwnerGroups::All { except } => {
                for group in except {
                    self.append(
                        Nat,
                        Own(Output),
                        vec![Match::Owner(Neg::is(gid(group)))],
                        Target::Return,
                    );
                }
            }
            OwnerGroups::Only(groups) => {
                let matches = groups.iter().map(|g| Match::Owner(Neg::not(gid(g)))).collect();
                self.append(Nat, Own(Output), matches, Target::Return);
            }
        }

        if let Some(dns) = dns {
            self.dns(dns);
        }

        // Applications that talk to the proxy (or to each other) over localhost.
        self.append(Nat, Own(Output), vec![Match::Dst(Neg::is(lo))], Target::Return);
        for cidr in self.in_family(&out.exclude_cidrs) {
            self.append(Nat, Own(Output), vec![Match::Dst(Neg::is(cidr))], Target::Return);
        }
        for port in &out.include_ports {
            self.append(
                Nat,
                Own(Output),
                vec![tcp(), Match::DstPort(Neg::is(*port))],
                jump(Redirect),
            );
        }
        let reroute = &spec.interfaces.reroute;
        match &out.include {
            OutboundCidrs::All => {
                self.append(Nat, Own(Output), vec![], jump(Redirect));
                for iface in reroute {
                    self.insert(
                        Nat,
                        Builtin(PREROUTING),
                        1,
                        vec![Match::InIface(iface.clone())],
                        jump(Redirect),
                    );
                }
            }
            OutboundCidrs::Only(cidrs) => {
                for cidr in self.in_family(cidrs) {
                    for iface in reroute {
                        let matches = vec![Match::InIface(iface.clone()), Match::Dst(Neg::is(cidr))];
                        self.insert(Nat, Builtin(PREROUTING), 1, matches, jump(Redirect));
                    }
                    self.append(Nat, Own(Output), vec![Match::Dst(Neg::is(cidr))], jump(Redirect));
                }
            }
            OutboundCidrs::Off => {}
        }
    }

    /// DNS to the agent's resolver, and conntrack zones that keep the app↔agent and the
    /// agent↔upstream halves of a UDP exchange from sharing one conntrack entry.
    fn dns(&mut self, dns: &DnsCapture) {
        let spec = self.spec;
        let servers: Vec<_> = match dns {
            DnsCapture::All => Vec::new(),
            DnsCapture::Only(servers) => servers.iter().filter(|s| s.family() == self.family).collect(),
        };
        let all = matches!(dns, DnsCapture::All);
        self.append(Raw, Builtin(OUTPUT), vec![], jump(OutputDns));
        if all || !servers.is_empty() {
            self.append(Nat, Own(Output), vec![], jump(OutputDns));
        }
        let to_agent = |abbreviated| Target::Redirect {
            to: DNS_PROXY_PORT,
            abbreviated,
        };
        let server_dst = |s: &Nameserver| Match::DstServer(s.clone());
        for (proto, abbreviated) in [(tcp(), false), (udp(), true)] {
            if all {
                self.append(
                    Nat,
                    Own(OutputDns),
                    vec![proto, dport(DNS_PORT)],
                    to_agent(abbreviated),
                );
            } else {
                for s in &servers {
                    let matches = vec![proto.clone(), dport(DNS_PORT), server_dst(s)];
                    self.append(Nat, Own(OutputDns), matches, to_agent(abbreviated));
                }
            }
        }

        for owner in proxy_owners(spec) {
            let upstream = vec![udp(), dport(DNS_PORT), Match::Owner(Neg::is(owner.clone()))];
            self.append(Raw, Own(OutputDns), upstream, Target::CtZone(1));
            let reply = vec![
                udp(),
                Match::SrcPort(PortRange::single(DNS_PROXY_PORT)),
                Match::Owner(Neg::is(owner)),
            ];
            self.append(Raw, Own(OutputDns), reply, Target::CtZone(2));
        }
        let sport53 = || Match::SrcPort(PortRange::single(DNS_PORT));
        if all {
            self.append(Raw, Builtin(PREROUTING), vec![], jump(Inbound));
            self.append(
                Raw,
                Own(OutputDns),
                vec![udp(), dport(DNS_PORT)],
                Target::CtZone(2),
            );
            self.append(Raw, Own(Inbound), vec![udp(), sport53()], Target::CtZone(1));
        } else if !servers.is_empty() {
            self.append(Raw, Builtin(PREROUTING), vec![], jump(Inbound));
            for s in &servers {
                self.append(
                    Raw,
                    Own(OutputDns),
                    vec![udp(), dport(DNS_PORT), server_dst(s)],
                    Target::CtZone(2),
                );
                let from_server = Match::SrcServer((*s).clone());
                self.append(
                    Raw,
                    Own(Inbound),
                    vec![udp(), sport53(), from_server],
                    Target::CtZone(1),
                );
            }
        }
    }

    /// TPROXY bookkeeping: keep the proxy's own marked flows and its loopback calls to the app
    /// out of the inbound diversion.
    fn tproxy_marks(&mut self) {
        let Some(mark) = self.tproxy_mark() else { return };
        let spec = self.spec;
        let lo_out = || Match::OutIface("lo".parse().expect("valid interface name"));
        let lo_in = || Match::InIface("lo".parse().expect("valid interface name"));
        self.append(
            Mangle,
            Builtin(PREROUTING),
            vec![tcp(), Match::Mark(Neg::is(mark))],
            Target::SaveMark,
        );
        self.append(
            Mangle,
            Builtin(OUTPUT),
            vec![tcp(), lo_out(), Match::Mark(Neg::is(mark))],
            Target::Return,
        );
        let lo = self.loopback();
        for owner in proxy_owners(spec) {
            let matches = vec![
                Match::Dst(Neg::not(lo)),
                tcp(),
                lo_out(),
                Match::Owner(Neg::is(owner)),
            ];
            self.append(
                Mangle,
                Builtin(OUTPUT),
                matches,
                Target::SetMark(TPROXY_OUTBOUND_MARK),
            );
        }
        self.append(
            Mangle,
            Builtin(OUTPUT),
            vec![tcp(), Match::Connmark(mark)],
            Target::RestoreMark,
        );
        self.insert(
            Mangle,
            Own(Inbound),
            1,
            vec![tcp(), Match::Mark(Neg::is(mark))],
            Target::Return,
        );
        let passthrough = Match::Src(Neg::is(passthrough_source(self.family)));
        self.insert(
            Mangle,
            Own(Inbound),
            2,
            vec![tcp(), passthrough, lo_in()],
            Target::Return,
        );
        let unmarked = Match::Mark(Neg::not(TPROXY_OUTBOUND_MARK));
        self.insert(
            Mangle,
            Own(Inbound),
            3,
            vec![tcp(), lo_in(), unmarked],
            Target::Return,
        );
    }
}
