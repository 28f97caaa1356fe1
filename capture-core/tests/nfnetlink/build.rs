//! Rules built by hand, expression by expression, the way nft 1.0.x encodes the same lines.

use capture_core::nfnetlink::{
    BaseChain, Chain, ChainType, CmpOp, CtKey, CtState, Expr, Hook, L4Proto, MetaKey, NfProto, PayloadBase,
    Policy, PortField, Position, Register, Rule, Set, Table, Verdict, ifname,
};

pub fn inet_table(name: &str) -> Table {
    Table::new(NfProto::Inet, name)
}

pub fn chain(table: &Table, name: &str, base: Option<(ChainType, Hook, i32)>) -> Chain {
    Chain {
        family: table.family,
        table: table.name.clone(),
        name: name.into(),
        base: base.map(|(kind, hook, priority)| BaseChain {
            kind,
            hook,
            priority,
            policy: Policy::Accept,
        }),
    }
}

pub fn l4proto(proto: L4Proto) -> [Expr; 2] {
    [
        Expr::meta(MetaKey::L4proto),
        Expr::cmp(CmpOp::Eq, [proto.number()]),
    ]
}

pub fn nfproto(family: NfProto) -> [Expr; 2] {
    [
        Expr::meta(MetaKey::Nfproto),
        Expr::cmp(CmpOp::Eq, [family.number()]),
    ]
}

pub fn owner(key: MetaKey, op: CmpOp, id: u32) -> [Expr; 2] {
    [Expr::meta(key), Expr::cmp(op, id.to_ne_bytes())]
}

pub fn port(field: PortField, op: CmpOp, port: u16) -> [Expr; 2] {
    [
        Expr::payload(PayloadBase::Transport, field.offset(), 2),
        Expr::cmp(op, port.to_be_bytes()),
    ]
}

pub fn ports_not_in(field: PortField, ports: &[u16]) -> [Expr; 2] {
    [
        Expr::payload(PayloadBase::Transport, field.offset(), 2),
        Expr::Lookup {
            sreg: Register::R1,
            set: Set::ports(L4Proto::Tcp, field, ports.iter().copied()),
            invert: true,
        },
    ]
}

pub fn redirect(to: u16) -> [Expr; 2] {
    [
        Expr::immediate(to.to_be_bytes()),
        Expr::Redirect {
            proto_min: Some(Register::R1),
            proto_max: None,
            flags: Expr::NAT_RANGE_PROTO_SPECIFIED,
        },
    ]
}

pub fn set_mark(mark: u32) -> [Expr; 2] {
    [
        Expr::immediate(mark.to_ne_bytes()),
        Expr::MetaSet {
            key: MetaKey::Mark,
            sreg: Register::R1,
        },
    ]
}

/// `ip daddr`/`ip saddr` (offset 16/12) with nft's `meta nfproto ipv4` before it.
pub fn ip4(offset: u32, addr: [u8; 4], prefix: u8, op: CmpOp) -> Vec<Expr> {
    let mut exprs = nfproto(NfProto::Ipv4).to_vec();
    exprs.extend(Expr::prefix(offset, &addr, prefix, op));
    exprs
}

/// `ip6 daddr`/`ip6 saddr` (offset 24/8) with nft's `meta nfproto ipv6` before it.
pub fn ip6(offset: u32, addr: std::net::Ipv6Addr, prefix: u8, op: CmpOp) -> Vec<Expr> {
    let mut exprs = nfproto(NfProto::Ipv6).to_vec();
    exprs.extend(Expr::prefix(offset, &addr.octets(), prefix, op));
    exprs
}

pub fn rule(chain: &Chain, parts: &[&[Expr]]) -> Rule {
    Rule::new(chain, parts.concat())
}

pub const COUNTER: &[Expr] = &[Expr::Counter];

pub fn verdict(v: Verdict) -> [Expr; 1] {
    [Expr::Verdict(v)]
}

/// Every expression kind, in a table with base and regular chains.
pub fn every_kind() -> (Vec<Table>, Vec<Chain>, Vec<Rule>) {
    let t = inet_table("capture-test");
    let pre = chain(
        &t,
        "prerouting",
        Some((ChainType::Filter, Hook::Prerouting, -150)),
    );
    let mut out = chain(&t, "output", Some((ChainType::Nat, Hook::Output, -100)));
    out.base.as_mut().unwrap().policy = Policy::Accept;
    let route = chain(&t, "route-out", Some((ChainType::Route, Hook::Output, -150)));
    let mut input = chain(&t, "input", Some((ChainType::Filter, Hook::Input, 0)));
    input.base.as_mut().unwrap().policy = Policy::Drop;
    let regular = chain(&t, "istio-output", None);
    let other = chain(&t, "istio-divert", None);
    let lo = ifname("lo");
    let rules = vec![
        rule(
            &out,
            &[
                &[Expr::meta(MetaKey::Oifname), Expr::cmp(CmpOp::Eq, lo.clone())],
                COUNTER,
                &verdict(Verdict::Jump("istio-output".into())),
            ],
        ),
        rule(
            &regular,
            &[
                &[
                    Expr::meta(MetaKey::Iifname),
                    Expr::cmp(CmpOp::Neq, ifname("eth0")),
                ],
                COUNTER,
                &verdict(Verdict::Return),
            ],
        ),
        rule(
            &regular,
            &[
                &l4proto(L4Proto::Tcp),
                &ip4(16, [127, 0, 0, 1], 32, CmpOp::Neq),
                &ports_not_in(PortField::Destination, &[53, 15008]),
                &owner(MetaKey::Skuid, CmpOp::Eq, 1337),
                COUNTER,
                &redirect(15001),
            ],
        ),
        rule(
            &regular,
            &[
                &ip4(16, [10, 16, 0, 0], 12, CmpOp::Eq),
                &owner(MetaKey::Skgid, CmpOp::Neq, 1337),
                &verdict(Verdict::Goto("istio-divert".into())),
            ],
        ),
        rule(
            &regular,
            &[
                &ip6(24, "2001:db8::".parse().unwrap(), 32, CmpOp::Eq),
                COUNTER,
                &verdict(Verdict::Accept),
            ],
        ),
        rule(
            &other,
            &[
                &[
                    Expr::meta(MetaKey::Mark),
                    Expr::cmp(CmpOp::Eq, 1337_u32.to_ne_bytes()),
                ],
                &set_mark(1338),
            ],
        ),
        rule(
            &pre,
            &[
                &l4proto(L4Proto::Tcp),
                &Expr::ct_state(CtState::RELATED | CtState::ESTABLISHED),
                COUNTER,
                &verdict(Verdict::Jump("istio-divert".into())),
            ],
        ),
        rule(
            &pre,
            &[
                &l4proto(L4Proto::Tcp),
                &ip4(16, [127, 0, 0, 1], 32, CmpOp::Neq),
                &[
                    Expr::immediate(15006_u16.to_be_bytes()),
                    Expr::Tproxy {
                        family: NfProto::Ipv4,
                        addr: None,
                        port: Some(Register::R1),
                    },
                ],
                &set_mark(1337),
                COUNTER,
                &verdict(Verdict::Accept),
            ],
        ),
        rule(&pre, &[&save_mark()]),
        rule(
            &route,
            &[
                &[ct_mark(), Expr::cmp(CmpOp::Eq, 1337_u32.to_ne_bytes())],
                &restore_mark(),
            ],
        ),
        rule(
            &route,
            &[
                &l4proto(L4Proto::Udp),
                &port(PortField::Destination, CmpOp::Eq, 53),
                &[
                    Expr::immediate(1_u16.to_ne_bytes()),
                    Expr::CtSet {
                        key: CtKey::Zone,
                        sreg: Register::R1,
                    },
                ],
            ],
        ),
        rule(
            &input,
            &[
                &Expr::ct_state(CtState::INVALID),
                COUNTER,
                &verdict(Verdict::Drop),
            ],
        ),
    ];
    (vec![t], vec![pre, out, route, input, regular, other], rules)
}

/// `oifname NAME` / `iifname NAME`.
pub fn iface(key: MetaKey, op: CmpOp, name: &str) -> [Expr; 2] {
    [Expr::meta(key), Expr::cmp(op, ifname(name))]
}

/// `mark N`.
pub fn mark(op: CmpOp, mark: u32) -> [Expr; 2] {
    [Expr::meta(MetaKey::Mark), Expr::cmp(op, mark.to_ne_bytes())]
}

/// `tproxy ip to :PORT` / `tproxy ip6 to :PORT`.
pub fn tproxy(family: NfProto, port: u16) -> [Expr; 2] {
    [
        Expr::immediate(port.to_be_bytes()),
        Expr::Tproxy {
            family,
            addr: None,
            port: Some(Register::R1),
        },
    ]
}

/// `ct mark`, loaded into register 1.
pub fn ct_mark() -> Expr {
    Expr::Ct {
        key: CtKey::Mark,
        dreg: Register::R1,
    }
}

/// `ct mark set mark`.
pub fn save_mark() -> [Expr; 2] {
    [
        Expr::meta(MetaKey::Mark),
        Expr::CtSet {
            key: CtKey::Mark,
            sreg: Register::R1,
        },
    ]
}

/// `meta mark set ct mark`.
pub fn restore_mark() -> [Expr; 2] {
    [
        ct_mark(),
        Expr::MetaSet {
            key: MetaKey::Mark,
            sreg: Register::R1,
        },
    ]
}

/// The ops that start a table's part of a transaction: add it, flush it, add its chains.
fn table_ops(table: &Table, chains: &[&Chain]) -> Vec<capture_core::nfnetlink::Op> {
    use capture_core::nfnetlink::Op;

    let mut ops = vec![
        Op::AddTable(table.clone()),
        Op::FlushTable {
            family: table.family,
            name: table.name.clone(),
        },
    ];
    ops.extend(chains.iter().map(|&c| Op::AddChain(c.clone())));
    ops
}

pub fn at(position: Position, mut rule: Rule) -> Rule {
    rule.position = position;
    rule
}

const LOOPBACK6: std::net::Ipv6Addr = std::net::Ipv6Addr::LOCALHOST;
const PASSTHROUGH6: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 6);

fn jump(chain: &str) -> [Expr; 1] {
    verdict(Verdict::Jump(chain.into()))
}

/// The objects of `tproxy-subset.nft` (lines of tproxy.golden), in its order: each element is
/// one line's change.
pub fn tproxy_subset() -> Vec<capture_core::nfnetlink::Op> {
    use CmpOp::{Eq, Neq};
    use MetaKey::{Iifname, Oifname, Skgid, Skuid};
    use capture_core::nfnetlink::Op;

    let tcp = l4proto(L4Proto::Tcp);
    let not_lo4 = ip4(16, [127, 0, 0, 1], 32, Neq);
    let not_lo6 = ip6(24, LOOPBACK6, 128, Neq);
    let nat = inet_table("istio-proxy-nat");
    let n_output = chain(&nat, "output", Some((ChainType::Nat, Hook::Output, -100)));
    let n_redirect = chain(&nat, "istio-redirect", None);
    let n_in_redirect = chain(&nat, "istio-in-redirect", None);
    let n_output2 = chain(&nat, "istio-output", None);
    let mut ops = table_ops(&nat, &[&n_output, &n_redirect, &n_in_redirect, &n_output2]);
    // The proxy calling its own pod through a VIP, one rule per family.
    let to_in_redirect = |not_lo: &[Expr]| {
        rule(
            &n_output2,
            &[
                &iface(Oifname, Eq, "lo"),
                &tcp,
                not_lo,
                &ports_not_in(PortField::Destination, &[53, 15008]),
                &owner(Skuid, Eq, 1337),
                COUNTER,
                &jump("istio-in-redirect"),
            ],
        )
    };
    let nat_rules = [
        rule(
            &n_output,
            &[
                &iface(Oifname, Eq, "not-istio-nic"),
                COUNTER,
                &verdict(Verdict::Return),
            ],
        ),
        rule(&n_redirect, &[&tcp, COUNTER, &redirect(15001)]),
        rule(&n_output, &[COUNTER, &jump("istio-output")]),
        to_in_redirect(&not_lo4),
        to_in_redirect(&not_lo6),
        rule(
            &n_output2,
            &[&ip4(16, [1, 1, 0, 0], 16, Eq), COUNTER, &verdict(Verdict::Return)],
        ),
        rule(
            &n_output2,
            &[&ip4(16, [9, 9, 0, 0], 16, Eq), COUNTER, &jump("istio-redirect")],
        ),
    ];
    ops.extend(nat_rules.into_iter().map(Op::AddRule));

    let mangle = inet_table("istio-proxy-mangle");
    let pre = chain(
        &mangle,
        "prerouting",
        Some((ChainType::Filter, Hook::Prerouting, -150)),
    );
    let out = chain(&mangle, "output", Some((ChainType::Route, Hook::Output, -150)));
    let divert = chain(&mangle, "istio-divert", None);
    let tp = chain(&mangle, "istio-tproxy", None);
    let inbound = chain(&mangle, "istio-inbound", None);
    ops.extend(table_ops(&mangle, &[&pre, &out, &divert, &tp, &inbound]));
    let accept = verdict(Verdict::Accept);
    let ret = verdict(Verdict::Return);
    // One rule per family each: TPROXY to :15006, the proxy's loopback traffic marked, and the
    // passthrough source returned (inserted at index 1).
    let to_tproxy = |not_lo: &[Expr], family| {
        rule(
            &tp,
            &[
                &tcp,
                not_lo,
                &tproxy(family, 15006),
                &set_mark(1337),
                COUNTER,
                &accept,
            ],
        )
    };
    let mark_proxy_on_lo = |not_lo: &[Expr], key| {
        rule(
            &out,
            &[
                &iface(Oifname, Eq, "lo"),
                &tcp,
                not_lo,
                &owner(key, Eq, 1337),
                COUNTER,
                &set_mark(1338),
            ],
        )
    };
    let passthrough = |src: &[Expr]| {
        at(
            Position::Index(1),
            rule(&inbound, &[&iface(Iifname, Eq, "lo"), &tcp, src, COUNTER, &ret]),
        )
    };
    let mangle_rules = [
        rule(&pre, &[&iface(Iifname, Eq, "not-istio-nic"), COUNTER, &ret]),
        rule(&out, &[&iface(Oifname, Eq, "not-istio-nic"), COUNTER, &ret]),
        rule(&divert, &[COUNTER, &set_mark(1337)]),
        rule(&divert, &[COUNTER, &accept]),
        to_tproxy(&not_lo4, NfProto::Ipv4),
        to_tproxy(&not_lo6, NfProto::Ipv6),
        rule(&pre, &[&tcp, COUNTER, &jump("istio-inbound")]),
        rule(
            &inbound,
            &[
                &tcp,
                &Expr::ct_state(CtState::RELATED | CtState::ESTABLISHED),
                COUNTER,
                &jump("istio-divert"),
            ],
        ),
        rule(&inbound, &[&tcp, COUNTER, &jump("istio-tproxy")]),
        rule(&pre, &[&tcp, &mark(Eq, 1337), COUNTER, &save_mark()]),
        rule(
            &out,
            &[&iface(Oifname, Eq, "lo"), &tcp, &mark(Eq, 1337), COUNTER, &ret],
        ),
        mark_proxy_on_lo(&not_lo4, Skuid),
        mark_proxy_on_lo(&not_lo6, Skuid),
        mark_proxy_on_lo(&not_lo4, Skgid),
        mark_proxy_on_lo(&not_lo6, Skgid),
        rule(
            &out,
            &[
                &tcp,
                &[ct_mark(), Expr::cmp(Eq, 1337_u32.to_ne_bytes())],
                COUNTER,
                &restore_mark(),
            ],
        ),
        at(
            Position::Index(0),
            rule(&inbound, &[&tcp, &mark(Eq, 1337), COUNTER, &ret]),
        ),
        passthrough(&ip4(12, [127, 0, 0, 6], 32, Eq)),
        passthrough(&ip6(8, PASSTHROUGH6, 128, Eq)),
        at(
            Position::Index(2),
            rule(
                &inbound,
                &[&iface(Iifname, Eq, "lo"), &tcp, &mark(Neq, 1338), COUNTER, &ret],
            ),
        ),
    ];
    ops.extend(mangle_rules.into_iter().map(Op::AddRule));
    ops
}

/// The prerouting chain of ipv6-ipnets.golden, in the order its `add` and `insert … index 0`
/// lines leave it.
pub fn ipv6_ipnets_prerouting() -> Vec<Rule> {
    let nat = inet_table("istio-proxy-nat");
    let pre = chain(&nat, "prerouting", Some((ChainType::Nat, Hook::Prerouting, -100)));
    let net: std::net::Ipv6Addr = "2001:db8::".parse().unwrap();
    let redirect_from = |iface_name: &str| {
        rule(
            &pre,
            &[
                &iface(MetaKey::Iifname, CmpOp::Eq, iface_name),
                &ip6(24, net, 32, CmpOp::Eq),
                COUNTER,
                &jump("istio-redirect"),
            ],
        )
    };
    let return_from = |iface_name: &str| {
        rule(
            &pre,
            &[
                &iface(MetaKey::Iifname, CmpOp::Eq, iface_name),
                COUNTER,
                &verdict(Verdict::Return),
            ],
        )
    };
    vec![
        redirect_from("eth1"),
        redirect_from("eth0"),
        return_from("eth1"),
        return_from("eth0"),
        rule(&pre, &[&l4proto(L4Proto::Tcp), COUNTER, &jump("istio-inbound")]),
    ]
}
