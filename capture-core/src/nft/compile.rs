//! The typed rule set compiled into nf_tables objects, expression for expression as nft 1.0.x
//! compiles Istio's transaction (see [`nfnetlink`](crate::nfnetlink) for what nft adds).
//!
//! Each chain gets its final contents, in order (the transaction's `insert … index N` already
//! applied), as appends: what the kernel then holds, and what `nft list ruleset` prints, is what
//! Istio's `nft -f` leaves.

use std::net::IpAddr;

use super::model::{
    Chain as NftChain, Cmp, Dir, Match, Net, Ports, Position as NftPosition, Rule as NftRule, Ruleset,
    Statement, Table as NftTable, Verdict as NftVerdict, chain_name,
};
use crate::nfnetlink::{
    BaseChain, Batch, Chain, CmpOp, CtKey, CtState as NfCtState, Expr, Hook as NfHook, L4Proto, MetaKey,
    NfProto, PayloadBase, Policy, PortField, Register, Rule, Set, Table, Verdict, ifname,
};
use crate::rules::{ChainName, CtState, Hook, OwnerMatch, Proto};
use crate::types::{Accounts, Family, Owner};

/// One of our tables as nf_tables objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compiled {
    /// The table.
    pub table: Table,
    /// Its chains, in declaration order.
    pub chains: Vec<Chain>,
    /// Its rules, chain by chain, each chain's in order.
    pub rules: Vec<Rule>,
}

impl Compiled {
    /// Adds the table, its chains and its rules to `batch`.
    pub fn add_to(&self, batch: &mut Batch) {
        batch.add_table(self.table.clone());
        for chain in &self.chains {
            batch.add_chain(chain.clone());
        }
        for rule in &self.rules {
            batch.add_rule(rule.clone());
        }
    }
}

/// Why a rule set cannot be compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    /// An owner name that the user or group database does not know.
    #[error("no such {} {name:?} (the rules compare numeric ids)", if *user { "user" } else { "group" })]
    UnknownOwner {
        /// The name.
        name: String,
        /// A user (else a group).
        user: bool,
    },
    /// A port range: nft compiles it into a `range` expression, which is not encoded yet.
    #[error("port range {low}-{high} is not supported by the native nftables backend yet")]
    PortRange {
        /// First port.
        low: u16,
        /// Last port.
        high: u16,
    },
}

/// Compiles every table of `rules`, owner names resolved through `accounts` (the kernel
/// compares ids).
///
/// # Errors
/// [`CompileError`] naming the value that cannot be compiled.
pub fn compile(rules: &Ruleset, accounts: &dyn Accounts) -> Result<Vec<Compiled>, CompileError> {
    rules.tables.iter().map(|t| compile_table(t, accounts)).collect()
}

fn compile_table(t: &NftTable, accounts: &dyn Accounts) -> Result<Compiled, CompileError> {
    let table = Table::new(NfProto::Inet, t.nft_name());
    let chains: Vec<Chain> = t.chains.iter().map(|c| chain(&table, c)).collect();
    let mut contents: Vec<(ChainName, Vec<&NftRule>)> =
        t.chains.iter().map(|c| (c.name, Vec::new())).collect();
    for op in &t.operations {
        let Some((_, rules)) = contents.iter_mut().find(|(name, _)| *name == op.chain) else {
            continue;
        };
        match op.position {
            NftPosition::Append => rules.push(&op.rule),
            NftPosition::Insert { index } => {
                let at = usize::try_from(index).map_or(rules.len(), |i| i.min(rules.len()));
                rules.insert(at, &op.rule);
            }
        }
    }
    let mut compiled = Vec::new();
    for ((_, rules), chain) in contents.iter().zip(&chains) {
        for rule in rules {
            compiled.push(Rule::new(chain, exprs(rule, accounts)?));
        }
    }
    Ok(Compiled {
        table,
        chains,
        rules: compiled,
    })
}

fn chain(table: &Table, c: &NftChain) -> Chain {
    Chain {
        family: table.family,
        table: table.name.clone(),
        name: chain_name(c.name).to_owned(),
        base: c.base.map(|b| BaseChain {
            kind: b.kind,
            hook: match b.hook {
                Hook::Prerouting => NfHook::Prerouting,
                Hook::Output => NfHook::Output,
            },
            priority: b.priority,
            policy: Policy::Accept,
        }),
    }
}

fn op(cmp: Cmp) -> CmpOp {
    match cmp {
        Cmp::Eq => CmpOp::Eq,
        Cmp::Ne => CmpOp::Neq,
    }
}

fn l4(proto: Proto) -> L4Proto {
    match proto {
        Proto::Tcp => L4Proto::Tcp,
        Proto::Udp => L4Proto::Udp,
    }
}

fn meta_cmp(key: MetaKey, cmp: CmpOp, data: impl Into<crate::nfnetlink::Bytes>) -> [Expr; 2] {
    [Expr::meta(key), Expr::cmp(cmp, data)]
}

/// An interface name as nft compares it: all 16 padded bytes, or for iptables' wildcard
/// `eth+` (nft's `eth*`) only the bytes before it.
fn iface(key: MetaKey, name: &str) -> [Expr; 2] {
    match name.strip_suffix('+') {
        Some(prefix) => meta_cmp(key, CmpOp::Eq, prefix.as_bytes()),
        None => meta_cmp(key, CmpOp::Eq, ifname(name)),
    }
}

fn owner_id(owner: &Owner, user: bool, accounts: &dyn Accounts) -> Result<u32, CompileError> {
    match owner {
        Owner::Id(id) => Ok(*id),
        Owner::Name(name) => if user {
            accounts.uid(name)
        } else {
            accounts.gid(name)
        }
        .ok_or_else(|| CompileError::UnknownOwner {
            name: name.clone(),
            user,
        }),
    }
}

fn exprs(rule: &NftRule, accounts: &dyn Accounts) -> Result<Vec<Expr>, CompileError> {
    let mut out = Vec::new();
    let mut l4proto: Option<Proto> = None;
    for m in &rule.matches {
        match m {
            Match::L4Proto(p) => {
                out.extend(meta_cmp(MetaKey::L4proto, CmpOp::Eq, [l4(*p).number()]));
                l4proto = Some(*p);
            }
            Match::IifName(name) => out.extend(iface(MetaKey::Iifname, name.as_str())),
            Match::OifName(name) => out.extend(iface(MetaKey::Oifname, name.as_str())),
            Match::Addr { dir, cmp, net } => out.extend(address(*dir, *cmp, net)),
            Match::Port {
                proto,
                dir,
                cmp,
                ports,
            } => {
                // nft's dependency: a transport field needs its protocol, once.
                if l4proto != Some(*proto) {
                    out.extend(meta_cmp(MetaKey::L4proto, CmpOp::Eq, [l4(*proto).number()]));
                    l4proto = Some(*proto);
                }
                out.extend(port(*proto, *dir, *cmp, ports)?);
            }
            Match::Owner { cmp, owner, .. } => {
                let (key, id) = match owner {
                    OwnerMatch::Uid(o) => (MetaKey::Skuid, owner_id(o, true, accounts)?),
                    OwnerMatch::Gid(o) => (MetaKey::Skgid, owner_id(o, false, accounts)?),
                };
                out.extend(meta_cmp(key, op(*cmp), id.to_ne_bytes()));
            }
            Match::Mark { cmp, mark } => {
                out.extend(meta_cmp(MetaKey::Mark, op(*cmp), mark.get().to_ne_bytes()))
            }
            Match::CtState(states) => {
                let bits = states
                    .iter()
                    .map(|s| match s {
                        CtState::Invalid => NfCtState::INVALID,
                        CtState::Related => NfCtState::RELATED,
                        CtState::Established => NfCtState::ESTABLISHED,
                    })
                    .fold(NfCtState(0), |a, b| a | b);
                out.extend(Expr::ct_state(bits));
            }
            Match::CtMark(mark) => out.extend([
                Expr::Ct {
                    key: CtKey::Mark,
                    dreg: Register::R1,
                },
                Expr::cmp(CmpOp::Eq, mark.get().to_ne_bytes()),
            ]),
        }
    }
    for s in &rule.statements {
        match s {
            Statement::Counter => out.push(Expr::Counter),
            Statement::Verdict(v) => out.push(Expr::Verdict(match v {
                NftVerdict::Accept => Verdict::Accept,
                NftVerdict::Drop => Verdict::Drop,
                NftVerdict::Return => Verdict::Return,
                NftVerdict::Jump(chain) => Verdict::Jump(chain_name(*chain).to_owned()),
            })),
            Statement::Redirect { to } => out.extend([
                Expr::immediate(to.get().to_be_bytes()),
                Expr::Redirect {
                    proto_min: Some(Register::R1),
                    proto_max: None,
                    flags: Expr::NAT_RANGE_PROTO_SPECIFIED,
                },
            ]),
            Statement::Tproxy { family, to } => out.extend([
                Expr::immediate(to.get().to_be_bytes()),
                Expr::Tproxy {
                    family: nfproto(*family),
                    addr: None,
                    port: Some(Register::R1),
                },
            ]),
            Statement::SetMark(mark) => out.extend([
                Expr::immediate(mark.get().to_ne_bytes()),
                Expr::MetaSet {
                    key: MetaKey::Mark,
                    sreg: Register::R1,
                },
            ]),
            Statement::SaveMark => out.extend([
                Expr::meta(MetaKey::Mark),
                Expr::CtSet {
                    key: CtKey::Mark,
                    sreg: Register::R1,
                },
            ]),
            Statement::RestoreMark => out.extend([
                Expr::Ct {
                    key: CtKey::Mark,
                    dreg: Register::R1,
                },
                Expr::MetaSet {
                    key: MetaKey::Mark,
                    sreg: Register::R1,
                },
            ]),
            Statement::SetCtZone(zone) => out.extend([
                Expr::immediate(zone.to_ne_bytes()),
                Expr::CtSet {
                    key: CtKey::Zone,
                    sreg: Register::R1,
                },
            ]),
        }
    }
    Ok(out)
}

fn nfproto(family: Family) -> NfProto {
    match family {
        Family::V4 => NfProto::Ipv4,
        Family::V6 => NfProto::Ipv6,
    }
}

/// `ip|ip6 saddr|daddr [!=] NET`, with nft's `meta nfproto` before it.
fn address(dir: Dir, cmp: Cmp, net: &Net) -> Vec<Expr> {
    let (family, offset, bytes) = match (net.addr(), dir) {
        (IpAddr::V4(a), Dir::Src) => (NfProto::Ipv4, 12, a.octets().to_vec()),
        (IpAddr::V4(a), Dir::Dst) => (NfProto::Ipv4, 16, a.octets().to_vec()),
        (IpAddr::V6(a), Dir::Src) => (NfProto::Ipv6, 8, a.octets().to_vec()),
        (IpAddr::V6(a), Dir::Dst) => (NfProto::Ipv6, 24, a.octets().to_vec()),
    };
    let mut out = meta_cmp(MetaKey::Nfproto, CmpOp::Eq, [family.number()]).to_vec();
    out.extend(Expr::prefix(offset, &bytes, net.prefix(), op(cmp)));
    out
}

/// `tcp|udp sport|dport [!=] PORTS`.
fn port(proto: Proto, dir: Dir, cmp: Cmp, ports: &Ports) -> Result<Vec<Expr>, CompileError> {
    let field = match dir {
        Dir::Src => PortField::Source,
        Dir::Dst => PortField::Destination,
    };
    let load = Expr::payload(PayloadBase::Transport, field.offset(), 2);
    Ok(match ports {
        Ports::Range(r) if r.low == r.high => {
            vec![load, Expr::cmp(op(cmp), r.low.get().to_be_bytes())]
        }
        Ports::Range(r) => {
            return Err(CompileError::PortRange {
                low: r.low.get(),
                high: r.high.get(),
            });
        }
        Ports::Set(ports) => vec![
            load,
            Expr::Lookup {
                sreg: Register::R1,
                set: Set::ports(l4(proto), field, ports.iter().map(|p| p.get())),
                invert: cmp == Cmp::Ne,
            },
        ],
    })
}
