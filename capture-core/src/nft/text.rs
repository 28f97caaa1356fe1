//! Rendering a [`Ruleset`] as `nft -f` input, spelled exactly as Istio's `--native-nftables`
//! transaction (knftables' dump format: one command a line, no blank lines, no comments).

use std::fmt::{self, Display, Formatter};

use super::model::{
    BaseChain, Chain, Cmp, Dir, Keyword, Match, Net, Operation, Ports, Position, Rule, Ruleset, Statement,
    TABLES, Table, TableFamily, Verdict, chain_name, table_name,
};
use crate::TableName;
use crate::render::write_joined;
use crate::rules::{Hook, OwnerMatch, Proto};
use crate::types::Family;

/// The transaction that installs a ruleset: per table `add table`, `flush table` (so a rerun
/// replaces the table's contents), `add chain` for each chain, then the rule operations.
///
/// # Examples
/// ```
/// use capture_core::CaptureSpec;
/// use capture_core::nft::{Transaction, plan};
/// let text = Transaction(&plan(&CaptureSpec::sidecar())).to_string();
/// assert!(text.starts_with("add table inet istio-proxy-nat\nflush table inet istio-proxy-nat\n"));
/// assert!(text.contains("add rule inet istio-proxy-nat istio-output counter jump istio-redirect\n"));
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Transaction<'a>(pub &'a Ruleset);

impl Display for Transaction<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        for table in &self.0.tables {
            let Table {
                family,
                name,
                chains,
                operations,
            } = table;
            let (family, name) = (family.as_str(), table_name(*name));
            writeln!(f, "add table {family} {name}")?;
            writeln!(f, "flush table {family} {name}")?;
            for chain in chains {
                writeln!(f, "add chain {family} {name} {}", ChainSpec(chain))?;
            }
            for op in operations {
                let Operation {
                    chain,
                    position,
                    rule,
                } = op;
                let chain = chain_name(*chain);
                match position {
                    Position::Append => writeln!(f, "add rule {family} {name} {chain} {rule}")?,
                    Position::Insert { index } => {
                        writeln!(f, "insert rule {family} {name} {chain} index {index} {rule}")?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// The transaction that removes our tables, as Istio's cleanup writes it: `add table` then
/// `delete table` for each, so that deleting a table that is not there is not an error.
///
/// # Examples
/// ```
/// use capture_core::nft::Cleanup;
/// let text = Cleanup::all().to_string();
/// assert!(text.starts_with("add table inet istio-proxy-nat\ndelete table inet istio-proxy-nat\n"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cleanup {
    /// The tables' family.
    pub family: TableFamily,
    /// The tables to remove, in order.
    pub tables: Vec<TableName>,
}

impl Cleanup {
    /// Every table capture may create, in Istio's order (nat, mangle, raw).
    pub fn all() -> Self {
        Self {
            family: TableFamily::Inet,
            tables: TABLES.to_vec(),
        }
    }
}

impl Display for Cleanup {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let Self { family, tables } = self;
        let family = family.as_str();
        for table in tables {
            let name = table_name(*table);
            writeln!(f, "add table {family} {name}")?;
            writeln!(f, "delete table {family} {name}")?;
        }
        Ok(())
    }
}

/// A chain's name and, for a base chain, its `{ type … hook … priority … ; }` block.
struct ChainSpec<'a>(&'a Chain);

impl Display for ChainSpec<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let Chain { name, base } = self.0;
        f.write_str(chain_name(*name))?;
        if let Some(BaseChain { kind, hook, priority }) = base {
            let hook = match hook {
                Hook::Prerouting => "prerouting",
                Hook::Output => "output",
            };
            write!(
                f,
                " {{ type {} hook {hook} priority {priority} ; }}",
                kind.as_str()
            )?;
        }
        Ok(())
    }
}

/// Matches then statements, separated by single spaces.
impl Display for Rule {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let Self { matches, statements } = self;
        let mut first = true;
        let words = matches
            .iter()
            .map(|m| m as &dyn Display)
            .chain(statements.iter().map(|s| s as &dyn Display));
        for word in words {
            if !first {
                f.write_str(" ")?;
            }
            first = false;
            word.fmt(f)?;
        }
        Ok(())
    }
}

fn proto(p: Proto) -> &'static str {
    match p {
        Proto::Tcp => "tcp",
        Proto::Udp => "udp",
    }
}

fn ne(cmp: Cmp) -> &'static str {
    match cmp {
        Cmp::Eq => "",
        Cmp::Ne => "!= ",
    }
}

fn ip(family: Family) -> &'static str {
    match family {
        Family::V4 => "ip",
        Family::V6 => "ip6",
    }
}

impl Display for Net {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cidr(cidr) => cidr.fmt(f),
            Self::Server(server) => f.write_str(&server.host_cidr()),
        }
    }
}

impl Display for Ports {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            Self::Range(r) if r.low == r.high => r.low.fmt(f),
            Self::Range(r) => write!(f, "{}-{}", r.low, r.high),
            Self::Set(ports) => {
                f.write_str("{ ")?;
                write_joined(f, ", ", ports)?;
                f.write_str(" }")
            }
        }
    }
}

impl Display for Match {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            Self::L4Proto(p) => write!(f, "meta l4proto {}", proto(*p)),
            Self::IifName(iface) => write!(f, "iifname {iface}"),
            Self::OifName(iface) => write!(f, "oifname {iface}"),
            Self::Addr { dir, cmp, net } => {
                let key = match dir {
                    Dir::Src => "saddr",
                    Dir::Dst => "daddr",
                };
                write!(f, "{} {key} {}{net}", ip(net.family()), ne(*cmp))
            }
            Self::Port {
                proto: p,
                dir,
                cmp,
                ports,
            } => {
                let key = match dir {
                    Dir::Src => "sport",
                    Dir::Dst => "dport",
                };
                write!(f, "{} {key} {}{ports}", proto(*p), ne(*cmp))
            }
            Self::Owner { cmp, owner, keyword } => {
                let meta = match keyword {
                    Keyword::Implicit => "",
                    Keyword::Meta => "meta ",
                };
                let (key, who) = match owner {
                    OwnerMatch::Uid(o) => ("skuid", o),
                    OwnerMatch::Gid(o) => ("skgid", o),
                };
                write!(f, "{meta}{key} {}{who}", ne(*cmp))
            }
            Self::Mark { cmp, mark } => write!(f, "mark {}{mark}", ne(*cmp)),
            Self::CtState(states) => {
                f.write_str("ct state ")?;
                write_joined(f, ",", states.iter().map(|s| s.name()))
            }
            Self::CtMark(mark) => write!(f, "ct mark {mark}"),
        }
    }
}

impl Display for Verdict {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            Self::Accept => f.write_str("accept"),
            Self::Drop => f.write_str("drop"),
            Self::Return => f.write_str("return"),
            Self::Jump(chain) => write!(f, "jump {}", chain_name(*chain)),
        }
    }
}

impl Display for Statement {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            Self::Counter => f.write_str("counter"),
            Self::Verdict(v) => v.fmt(f),
            Self::Redirect { to } => write!(f, "redirect to :{to}"),
            Self::Tproxy { family, to } => write!(f, "tproxy {} to :{to}", ip(*family)),
            Self::SetMark(mark) => write!(f, "meta mark set {mark}"),
            Self::SaveMark => f.write_str("ct mark set mark"),
            Self::RestoreMark => f.write_str("meta mark set ct mark"),
            Self::SetCtZone(zone) => write!(f, "ct zone set {zone}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nft::model::ChainType;
    use crate::rules::{ChainName, CtState, OwnChain};
    use crate::types::{Mark, Owner, Port, PortRange};

    fn net(s: &str) -> Net {
        Net::Cidr(s.parse().unwrap())
    }

    #[test]
    fn cleanup_removes_every_table_tolerating_absence() {
        assert_eq!(
            Cleanup::all().to_string(),
            "add table inet istio-proxy-nat\n\
             delete table inet istio-proxy-nat\n\
             add table inet istio-proxy-mangle\n\
             delete table inet istio-proxy-mangle\n\
             add table inet istio-proxy-raw\n\
             delete table inet istio-proxy-raw\n"
        );
        let only_raw = Cleanup {
            family: TableFamily::Inet,
            tables: vec![TableName::Raw],
        };
        assert_eq!(
            only_raw.to_string(),
            "add table inet istio-proxy-raw\ndelete table inet istio-proxy-raw\n"
        );
    }

    #[test]
    fn each_match_renders_as_istio_spells_it() {
        let p = |n| Port::new(n);
        let cases: Vec<(Match, &str)> = vec![
            (Match::L4Proto(Proto::Udp), "meta l4proto udp"),
            (Match::IifName("lo".parse().unwrap()), "iifname lo"),
            (Match::OifName("eth0".parse().unwrap()), "oifname eth0"),
            (
                Match::Addr {
                    dir: Dir::Src,
                    cmp: Cmp::Eq,
                    net: net("127.0.0.6/32"),
                },
                "ip saddr 127.0.0.6/32",
            ),
            (
                Match::Addr {
                    dir: Dir::Dst,
                    cmp: Cmp::Ne,
                    net: net("::1/128"),
                },
                "ip6 daddr != ::1/128",
            ),
            (
                Match::Addr {
                    dir: Dir::Dst,
                    cmp: Cmp::Ne,
                    net: net("127.0.0.1/8"),
                },
                "ip daddr != 127.0.0.1/8",
            ),
            (
                Match::Addr {
                    dir: Dir::Dst,
                    cmp: Cmp::Eq,
                    net: Net::Server("::127.0.0.53".parse().unwrap()),
                },
                "ip6 daddr ::127.0.0.53/128",
            ),
            (
                Match::Port {
                    proto: Proto::Tcp,
                    dir: Dir::Dst,
                    cmp: Cmp::Ne,
                    ports: Ports::Set(vec![p(53), p(15008)]),
                },
                "tcp dport != { 53, 15008 }",
            ),
            (
                Match::Port {
                    proto: Proto::Udp,
                    dir: Dir::Src,
                    cmp: Cmp::Eq,
                    ports: Ports::one(p(15053)),
                },
                "udp sport 15053",
            ),
            (
                Match::Port {
                    proto: Proto::Tcp,
                    dir: Dir::Dst,
                    cmp: Cmp::Eq,
                    ports: Ports::Range(PortRange {
                        low: p(8000),
                        high: p(8080),
                    }),
                },
                "tcp dport 8000-8080",
            ),
            (
                Match::Owner {
                    cmp: Cmp::Ne,
                    owner: OwnerMatch::Uid(Owner::Id(1337)),
                    keyword: Keyword::Implicit,
                },
                "skuid != 1337",
            ),
            (
                Match::Owner {
                    cmp: Cmp::Eq,
                    owner: OwnerMatch::Gid(Owner::Name("java".into())),
                    keyword: Keyword::Meta,
                },
                "meta skgid java",
            ),
            (
                Match::Mark {
                    cmp: Cmp::Ne,
                    mark: Mark::new(1338),
                },
                "mark != 1338",
            ),
            (
                Match::CtState(vec![CtState::Related, CtState::Established]),
                "ct state related,established",
            ),
            (Match::CtState(vec![CtState::Invalid]), "ct state invalid"),
            (Match::CtMark(Mark::new(1337)), "ct mark 1337"),
        ];
        for (m, text) in cases {
            assert_eq!(m.to_string(), text, "{m:?}");
        }
    }

    #[test]
    fn each_statement_renders_as_istio_spells_it() {
        let cases = [
            (Statement::Counter, "counter"),
            (Statement::Verdict(Verdict::Accept), "accept"),
            (Statement::Verdict(Verdict::Drop), "drop"),
            (Statement::Verdict(Verdict::Return), "return"),
            (
                Statement::Verdict(Verdict::Jump(ChainName::Own(OwnChain::InRedirect))),
                "jump istio-in-redirect",
            ),
            (Statement::Redirect { to: Port::new(15001) }, "redirect to :15001"),
            (
                Statement::Tproxy {
                    family: Family::V6,
                    to: Port::new(15006),
                },
                "tproxy ip6 to :15006",
            ),
            (Statement::SetMark(Mark::new(1337)), "meta mark set 1337"),
            (Statement::SaveMark, "ct mark set mark"),
            (Statement::RestoreMark, "meta mark set ct mark"),
            (Statement::SetCtZone(2), "ct zone set 2"),
        ];
        for (s, text) in cases {
            assert_eq!(s.to_string(), text, "{s:?}");
        }
    }

    #[test]
    fn transaction_declares_then_appends_and_inserts() {
        let ret = Rule::new([], [Statement::Counter, Statement::Verdict(Verdict::Return)]);
        let prerouting = ChainName::Builtin(Hook::Prerouting);
        let ruleset = Ruleset {
            tables: vec![Table {
                family: TableFamily::Inet,
                name: TableName::Mangle,
                chains: vec![
                    Chain {
                        name: prerouting,
                        base: Some(BaseChain {
                            kind: ChainType::Filter,
                            hook: Hook::Prerouting,
                            priority: -150,
                        }),
                    },
                    Chain {
                        name: ChainName::Own(OwnChain::Drop),
                        base: None,
                    },
                ],
                operations: vec![
                    Operation {
                        chain: prerouting,
                        position: Position::Append,
                        rule: ret.clone(),
                    },
                    Operation {
                        chain: prerouting,
                        position: Position::Insert { index: 0 },
                        rule: ret,
                    },
                ],
            }],
        };
        assert_eq!(
            Transaction(&ruleset).to_string(),
            "add table inet istio-proxy-mangle\n\
             flush table inet istio-proxy-mangle\n\
             add chain inet istio-proxy-mangle prerouting { type filter hook prerouting priority -150 ; }\n\
             add chain inet istio-proxy-mangle istio-drop\n\
             add rule inet istio-proxy-mangle prerouting counter return\n\
             insert rule inet istio-proxy-mangle prerouting index 0 counter return\n"
        );
        assert_eq!(Transaction(&Ruleset { tables: vec![] }).to_string(), "");
    }
}
