//! Rendering rules as `iptables-restore` input, spelled exactly as istio-iptables spells it.

use std::fmt::{self, Display, Formatter, Write as _};

use crate::rules::{CtState, Entry, Match, OwnerMatch, Position, Proto, Rule, RuleSet, Table, Target};
use crate::types::{Cidr, Family};

/// The `iptables-restore --noflush` payload for a rule set: for each table, `* table`, a `-N`
/// line per chain of ours, the rule operations in order, then `COMMIT`.
///
/// # Examples
/// ```
/// use capture_core::{CaptureSpec, Family, Restore, plan};
/// let text = Restore(&plan(&CaptureSpec::sidecar(), Family::V4)).to_string();
/// assert!(text.contains("-A ISTIO_OUTPUT -j ISTIO_REDIRECT\n"));
/// assert!(text.ends_with("COMMIT\n"));
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Restore<'a>(pub &'a RuleSet);

impl Display for Restore<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        for table in &self.0.tables {
            let Table { name, entries } = table;
            writeln!(f, "* {}", name.as_str())?;
            for chain in table.own_chains() {
                writeln!(f, "-N {}", chain.as_str())?;
            }
            for entry in entries {
                writeln!(f, "{}", EntryLine(entry))?;
            }
            writeln!(f, "COMMIT")?;
        }
        Ok(())
    }
}

/// One `-A CHAIN …` or `-I CHAIN n …` line, without the newline.
#[derive(Debug, Clone, Copy)]
pub struct EntryLine<'a>(pub &'a Entry);

impl Display for EntryLine<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let Entry {
            chain,
            position,
            rule,
        } = self.0;
        match position {
            Position::Append => write!(f, "-A {chain} {}", RuleSpec(rule)),
            Position::Insert(n) => write!(f, "-I {chain} {n} {}", RuleSpec(rule)),
        }
    }
}

/// A rule's options (matches then target), as iptables(8) takes them after the chain.
#[derive(Debug, Clone, Copy)]
pub struct RuleSpec<'a>(pub &'a Rule);

impl Display for RuleSpec<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let Rule { matches, target } = self.0;
        for m in matches {
            write!(f, "{} ", MatchSpec(m))?;
        }
        write!(f, "{}", TargetSpec(target))
    }
}

struct MatchSpec<'a>(&'a Match);

impl Display for MatchSpec<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self.0 {
            Match::Proto(Proto::Tcp) => f.write_str("-p tcp"),
            Match::Proto(Proto::Udp) => f.write_str("-p udp"),
            Match::Src(n) => write!(f, "{}-s {}", n.bang(), n.value),
            Match::Dst(n) => write!(f, "{}-d {}", n.bang(), n.value),
            Match::SrcServer(server) => write!(f, "-s {}", server.host_cidr()),
            Match::DstServer(server) => write!(f, "-d {}", server.host_cidr()),
            Match::InIface(iface) => write!(f, "-i {iface}"),
            Match::OutIface(iface) => write!(f, "-o {iface}"),
            Match::DstPort(n) => write!(f, "{}--dport {}", n.bang(), n.value),
            Match::SrcPort(port) => write!(f, "--sport {port}"),
            Match::DstPorts(n) => {
                let mut list = String::new();
                for (i, port) in n.value.iter().enumerate() {
                    if i > 0 {
                        list.push(',');
                    }
                    write!(list, "{port}")?;
                }
                write!(f, "-m multiport {}--dports {list}", n.bang())
            }
            Match::Owner(n) => match &n.value {
                OwnerMatch::Uid(uid) => write!(f, "-m owner {}--uid-owner {uid}", n.bang()),
                OwnerMatch::Gid(gid) => write!(f, "-m owner {}--gid-owner {gid}", n.bang()),
            },
            Match::Mark(n) => write!(f, "-m mark {}--mark {}", n.bang(), n.value),
            Match::Connmark(mark) => write!(f, "-m connmark --mark {mark}"),
            Match::CtState(states) => {
                f.write_str("-m conntrack --ctstate ")?;
                for (i, state) in states.iter().enumerate() {
                    if i > 0 {
                        f.write_char(',')?;
                    }
                    f.write_str(match state {
                        CtState::Invalid => "INVALID",
                        CtState::Related => "RELATED",
                        CtState::Established => "ESTABLISHED",
                    })?;
                }
                Ok(())
            }
        }
    }
}

struct TargetSpec<'a>(&'a Target);

impl Display for TargetSpec<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self.0 {
            Target::Jump(chain) => write!(f, "-j {chain}"),
            Target::Return => f.write_str("-j RETURN"),
            Target::Accept => f.write_str("-j ACCEPT"),
            Target::Drop => f.write_str("-j DROP"),
            Target::Redirect {
                to,
                abbreviated: false,
            } => write!(f, "-j REDIRECT --to-ports {to}"),
            Target::Redirect {
                to,
                abbreviated: true,
            } => write!(f, "-j REDIRECT --to-port {to}"),
            Target::Tproxy { mark, on_port } => {
                write!(f, "-j TPROXY --tproxy-mark {mark}/0xffffffff --on-port {on_port}")
            }
            Target::SetMark(mark) => write!(f, "-j MARK --set-mark {mark}"),
            Target::SaveMark => f.write_str("-j CONNMARK --save-mark"),
            Target::RestoreMark => f.write_str("-j CONNMARK --restore-mark"),
            Target::CtZone(zone) => write!(f, "-j CT --zone {zone}"),
        }
    }
}

/// A rule as `iptables-save` prints it once the kernel holds it: address, interface and
/// protocol options first, implicit `-m tcp`/`-m udp` before port options, host bits masked,
/// owner names resolved to ids, marks in hex, and targets with all their options. Comparing
/// this with `iptables-save` output tells whether the kernel holds exactly our rules; it was
/// checked against iptables 1.8.9, legacy and nft alike.
#[derive(Clone, Copy)]
pub struct Saved<'a> {
    /// The rule.
    pub rule: &'a Rule,
    /// Its family (TPROXY's implicit `--on-ip` differs).
    pub family: Family,
    /// Resolves an owner name to its id, as iptables does when it loads the rule.
    pub resolve: &'a dyn Fn(&OwnerMatch) -> Option<u32>,
}

impl fmt::Debug for Saved<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        f.debug_struct("Saved")
            .field("rule", self.rule)
            .field("family", &self.family)
            .finish_non_exhaustive()
    }
}

fn network(cidr: &Cidr) -> Cidr {
    Cidr::new(cidr.network_addr(), cidr.prefix()).expect("prefix of a valid network")
}

impl Display for Saved<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let Rule { matches, target } = self.rule;
        let mut words: Vec<String> = Vec::new();
        // iptables-save prints the IP header options in a fixed order, then the match modules.
        for m in matches {
            match m {
                Match::Src(n) => words.push(format!("{}-s {}", n.bang(), network(&n.value))),
                Match::SrcServer(s) => words.push(format!("-s {}", Cidr::host(s.addr()))),
                _ => {}
            }
        }
        for m in matches {
            match m {
                Match::Dst(n) => words.push(format!("{}-d {}", n.bang(), network(&n.value))),
                Match::DstServer(s) => words.push(format!("-d {}", Cidr::host(s.addr()))),
                _ => {}
            }
        }
        for m in matches {
            if let Match::InIface(i) = m {
                words.push(format!("-i {i}"));
            }
        }
        for m in matches {
            if let Match::OutIface(i) = m {
                words.push(format!("-o {i}"));
            }
        }
        let mut proto = None;
        for m in matches {
            if let Match::Proto(p) = m {
                proto = Some(*p);
                words.push(MatchSpec(m).to_string());
            }
        }
        let mut in_port_module = false;
        for m in matches {
            let is_port = matches!(m, Match::DstPort(_) | Match::SrcPort(_));
            if is_port && !in_port_module {
                words.push(match proto {
                    Some(Proto::Udp) => "-m udp".to_owned(),
                    _ => "-m tcp".to_owned(),
                });
            }
            in_port_module = is_port;
            match m {
                Match::Src(_)
                | Match::SrcServer(_)
                | Match::Dst(_)
                | Match::DstServer(_)
                | Match::InIface(_)
                | Match::OutIface(_)
                | Match::Proto(_) => {}
                Match::Owner(n) => {
                    let (option, owner) = match &n.value {
                        OwnerMatch::Uid(o) => ("--uid-owner", o),
                        OwnerMatch::Gid(o) => ("--gid-owner", o),
                    };
                    let id = owner.id().or_else(|| (self.resolve)(&n.value));
                    let shown = id.map_or_else(|| owner.to_string(), |id| id.to_string());
                    words.push(format!("-m owner {}{option} {shown}", n.bang()));
                }
                Match::Mark(n) => words.push(format!("-m mark {}--mark {:#x}", n.bang(), n.value.get())),
                Match::Connmark(mark) => words.push(format!("-m connmark --mark {:#x}", mark.get())),
                other => words.push(MatchSpec(other).to_string()),
            }
        }
        let target = match target {
            Target::Redirect { to, abbreviated: _ } => format!("-j REDIRECT --to-ports {to}"),
            Target::Tproxy { mark, on_port } => {
                let on_ip = match self.family {
                    Family::V4 => "0.0.0.0",
                    Family::V6 => "::",
                };
                format!(
                    "-j TPROXY --on-port {on_port} --on-ip {on_ip} --tproxy-mark {:#x}/0xffffffff",
                    mark.get()
                )
            }
            Target::SetMark(mark) => format!("-j MARK --set-xmark {:#x}/0xffffffff", mark.get()),
            Target::SaveMark => "-j CONNMARK --save-mark --nfmask 0xffffffff --ctmask 0xffffffff".to_owned(),
            Target::RestoreMark => {
                "-j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff".to_owned()
            }
            other => TargetSpec(other).to_string(),
        };
        words.push(target);
        f.write_str(&words.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{ChainName, Hook, Neg, OwnChain};
    use crate::types::{Mark, Owner, Port, PortRange};

    fn line(m: Vec<Match>, t: Target) -> String {
        RuleSpec(&Rule::new(m, t)).to_string()
    }

    #[test]
    fn matches_plain_and_negated() {
        let lo = "127.0.0.1/32".parse().unwrap();
        assert_eq!(
            line(vec![Match::Dst(Neg::is(lo))], Target::Return),
            "-d 127.0.0.1/32 -j RETURN"
        );
        assert_eq!(
            line(vec![Match::Dst(Neg::not(lo))], Target::Return),
            "! -d 127.0.0.1/32 -j RETURN"
        );
        let p = PortRange::single(Port::new(53));
        assert_eq!(
            line(
                vec![Match::Proto(Proto::Tcp), Match::DstPort(Neg::not(p))],
                Target::Accept
            ),
            "-p tcp ! --dport 53 -j ACCEPT"
        );
        assert_eq!(
            line(
                vec![Match::DstPorts(Neg::not(vec![Port::new(53), Port::new(15008)]))],
                Target::Drop
            ),
            "-m multiport ! --dports 53,15008 -j DROP"
        );
        assert_eq!(
            line(
                vec![Match::Owner(Neg::not(OwnerMatch::Gid(Owner::Name(
                    "java".into()
                ))))],
                Target::Return
            ),
            "-m owner ! --gid-owner java -j RETURN"
        );
        assert_eq!(
            line(vec![Match::Mark(Neg::not(Mark::new(1338)))], Target::Return),
            "-m mark ! --mark 1338 -j RETURN"
        );
        assert_eq!(
            line(
                vec![Match::CtState(vec![CtState::Related, CtState::Established])],
                Target::SaveMark
            ),
            "-m conntrack --ctstate RELATED,ESTABLISHED -j CONNMARK --save-mark"
        );
    }

    #[test]
    fn targets() {
        let t = |t| line(vec![], t);
        assert_eq!(
            t(Target::Redirect {
                to: Port::new(15053),
                abbreviated: true
            }),
            "-j REDIRECT --to-port 15053"
        );
        assert_eq!(
            t(Target::Tproxy {
                mark: Mark::new(1337),
                on_port: Port::new(15006)
            }),
            "-j TPROXY --tproxy-mark 1337/0xffffffff --on-port 15006"
        );
        assert_eq!(t(Target::CtZone(2)), "-j CT --zone 2");
        assert_eq!(
            t(Target::Jump(ChainName::Own(OwnChain::Divert))),
            "-j ISTIO_DIVERT"
        );
        assert_eq!(t(Target::RestoreMark), "-j CONNMARK --restore-mark");
    }

    #[test]
    fn insert_line() {
        let entry = Entry {
            chain: ChainName::Builtin(Hook::Prerouting),
            position: Position::Insert(1),
            rule: Rule::new(vec![Match::InIface("eth1".parse().unwrap())], Target::Return),
        };
        assert_eq!(EntryLine(&entry).to_string(), "-I PREROUTING 1 -i eth1 -j RETURN");
    }
}
