//! Rendering rules as `iptables-restore` input, spelled exactly as istio-iptables spells it.
//!
//! Longer than 700 lines on purpose: two spellings of every match and target live side by side
//! (Istio's restore payload, and `iptables-save`'s canonical form that drift checks compare
//! with), so that a change to one is seen next to the other; about half the file is their tests.

use std::fmt::{self, Display, Formatter, Write as _};
use std::net::IpAddr;

use crate::rules::{CtState, Entry, Match, OwnerMatch, Position, Proto, Rule, RuleSet, Table, Target};
use crate::types::{Cidr, Family, Iface};

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
                write!(f, "-m multiport {}--dports ", n.bang())?;
                write_joined(f, ",", &n.value)
            }
            Match::Owner(n) => match &n.value {
                OwnerMatch::Uid(uid) => write!(f, "-m owner {}--uid-owner {uid}", n.bang()),
                OwnerMatch::Gid(gid) => write!(f, "-m owner {}--gid-owner {gid}", n.bang()),
            },
            Match::Mark(n) => write!(f, "-m mark {}--mark {}", n.bang(), n.value),
            Match::Connmark(mark) => write!(f, "-m connmark --mark {mark}"),
            Match::CtState(states) => {
                f.write_str("-m conntrack --ctstate ")?;
                write_joined(f, ",", states.iter().map(|s| s.name().to_ascii_uppercase()))
            }
        }
    }
}

/// Writes `items` with `sep` between them: the lists of both renderers (ports, conntrack states).
pub(crate) fn write_joined<T: Display>(
    f: &mut Formatter<'_>,
    sep: &str,
    items: impl IntoIterator<Item = T>,
) -> fmt::Result {
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            f.write_str(sep)?;
        }
        write!(f, "{item}")?;
    }
    Ok(())
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

/// A rule as `iptables-save` prints it once the kernel holds it. Comparing this with
/// `iptables-save` output tells whether the kernel holds exactly our rules; every rule shape below
/// was recorded from iptables 1.8.9, legacy and nft alike (`testdata/saved/`):
///
/// | given | printed |
/// |---|---|
/// | options in any order | `-s`, `-d`, `-i`, `-o`, `-p`, then matches and the target in order |
/// | `--dport`/`--sport` after `-p tcp` | an implicit `-m tcp` (`-m udp`) before them |
/// | `-d 0.0.0.0/0`, `-s ::/0` (any `/0`) | nothing; negated it stays: `! -d 0.0.0.0/0` (legacy only: nft refuses the rule) |
/// | `-d 10.1.2.3/8` | host bits cleared: `-d 10.0.0.0/8`; a bare address gets `/32` (`/128`) |
/// | IPv6 addresses | as inet_ntop(3) writes them: `::1.2.3.4`, `::127.0.0.53` (Rust: `::102:304`) |
/// | `-i +`, `-o +` (every interface) | nothing; `eth+` stays |
/// | `--dport 80:80` | `--dport 80` (a [`PortRange`](crate::PortRange) of one port renders so already); `1:65535` stays |
/// | `--dports 15008,53,53` | unchanged: order and repeats kept |
/// | `--mark 1338`, `--set-mark 1337` | hex: `--mark 0x53a`, `--set-xmark 0x539/0xffffffff` |
/// | `--uid-owner root` | the id: `--uid-owner 0` |
/// | `--ctstate ESTABLISHED,RELATED,…` | the kernel's order, each once: `INVALID`, `RELATED`, `ESTABLISHED` |
/// | `REDIRECT --to-port`, `TPROXY`, `CONNMARK` | `--to-ports`; `--on-port p --on-ip 0.0.0.0 --tproxy-mark 0x539/0xffffffff`; `--nfmask`/`--ctmask` |
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

/// `[!] -s|-d net/len` as `iptables-save` prints it, or nothing for a plain `/0`: iptables stores
/// "any address" as no address match at all.
fn saved_address(option: &str, negated: bool, cidr: &Cidr) -> Option<String> {
    if cidr.prefix() == 0 && !negated {
        return None;
    }
    let bang = if negated { "! " } else { "" };
    let addr = SavedAddr(cidr.network_addr());
    Some(format!("{bang}{option} {addr}/{}", cidr.prefix()))
}

/// `-i|-o iface`, or nothing for `+`, the wildcard that matches every interface.
fn saved_iface(option: &str, iface: &Iface) -> Option<String> {
    (iface.as_str() != "+").then(|| format!("{option} {iface}"))
}

/// An address as iptables prints it: inet_ntop(3). IPv6 differs from Rust's `Display` in one
/// way: an address whose first six groups are zero and whose seventh is not ends in dotted IPv4
/// (`::1.2.3.4`, `::127.0.0.53`), where Rust writes hex (`::102:304`); `::6` is `::6` in both.
struct SavedAddr(IpAddr);

impl Display for SavedAddr {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let v6 = match self.0 {
            IpAddr::V4(v4) => return write!(f, "{v4}"),
            IpAddr::V6(v6) => v6,
        };
        let words = v6.segments();
        // The first longest run of two or more zero groups is written `::`.
        let mut best: Option<(usize, usize)> = None;
        let mut i = 0;
        while i < words.len() {
            if words[i] != 0 {
                i += 1;
                continue;
            }
            let start = i;
            while i < words.len() && words[i] == 0 {
                i += 1;
            }
            let len = i - start;
            if len >= 2 && best.is_none_or(|(_, l)| len > l) {
                best = Some((start, len));
            }
        }
        let dotted_from = match best {
            Some((0, 6)) => Some(6),
            Some((0, 5)) if words[5] == 0xffff => Some(6),
            _ => None,
        };
        let hex_end = dotted_from.unwrap_or(words.len());
        let mut text = String::new();
        let mut i = 0;
        while i < hex_end {
            if let Some((start, len)) = best
                && i == start
            {
                // "::" stands for the run and both separators around it.
                text.push_str("::");
                i += len;
                continue;
            }
            if !text.is_empty() && !text.ends_with("::") {
                text.push(':');
            }
            write!(text, "{:x}", words[i])?;
            i += 1;
        }
        if dotted_from.is_some() {
            if !text.ends_with("::") {
                text.push(':');
            }
            let [.., a, b, c, d] = v6.octets();
            write!(text, "{a}.{b}.{c}.{d}")?;
        }
        f.write_str(&text)
    }
}

impl Display for Saved<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let Rule { matches, target } = self.rule;
        let mut words: Vec<String> = Vec::new();
        // iptables-save prints the IP header options in a fixed order, then the match modules.
        for m in matches {
            words.extend(match m {
                Match::Src(n) => saved_address("-s", n.negated, &n.value),
                Match::SrcServer(s) => saved_address("-s", false, &Cidr::host(s.addr())),
                _ => None,
            });
        }
        for m in matches {
            words.extend(match m {
                Match::Dst(n) => saved_address("-d", n.negated, &n.value),
                Match::DstServer(s) => saved_address("-d", false, &Cidr::host(s.addr())),
                _ => None,
            });
        }
        for m in matches {
            if let Match::InIface(i) = m {
                words.extend(saved_iface("-i", i));
            }
        }
        for m in matches {
            if let Match::OutIface(i) = m {
                words.extend(saved_iface("-o", i));
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
                Match::CtState(states) => {
                    // The kernel keeps a bit mask; iptables prints its bits in this order.
                    let canonical: Vec<CtState> = [CtState::Invalid, CtState::Related, CtState::Established]
                        .into_iter()
                        .filter(|s| states.contains(s))
                        .collect();
                    words.push(MatchSpec(&Match::CtState(canonical)).to_string());
                }
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

/// Rule sets whose `iptables-restore` text and `iptables-save` output (iptables 1.8.9, legacy and
/// nft) are recorded in `testdata/saved/`: every option iptables spells differently from how it
/// was given, plus ordinary ones for contrast.
#[cfg(test)]
mod recorded {
    use std::path::PathBuf;

    use super::{Restore, Saved};
    use crate::apply::SavedState;
    use crate::rules::{
        ChainName, CtState, Entry, Hook, Match, Neg, OwnChain, OwnerMatch, Position, Proto, Rule, RuleSet,
        Table, TableName, Target,
    };
    use crate::types::{Cidr, Family, Iface, Mark, Owner, Port, PortRange};

    use ChainName::{Builtin, Own};
    use OwnChain::{Divert, InRedirect, Output, OutputDns, Redirect, Tproxy};

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }
    fn dst(s: &str) -> Match {
        Match::Dst(Neg::is(cidr(s)))
    }
    fn not_dst(s: &str) -> Match {
        Match::Dst(Neg::not(cidr(s)))
    }
    fn src(s: &str) -> Match {
        Match::Src(Neg::is(cidr(s)))
    }
    fn not_src(s: &str) -> Match {
        Match::Src(Neg::not(cidr(s)))
    }
    fn iface(s: &str) -> Iface {
        s.parse().unwrap()
    }
    fn ports(s: &str) -> PortRange {
        s.parse().unwrap()
    }
    fn tcp() -> Match {
        Match::Proto(Proto::Tcp)
    }
    fn udp() -> Match {
        Match::Proto(Proto::Udp)
    }
    fn redirect(port: u16) -> Target {
        Target::Redirect {
            to: Port::new(port),
            abbreviated: true,
        }
    }

    type Rules = Vec<(ChainName, Vec<Match>, Target)>;

    fn rule_set(family: Family, tables: Vec<(TableName, Rules)>) -> RuleSet {
        let tables = tables
            .into_iter()
            .map(|(name, rules)| Table {
                name,
                entries: rules
                    .into_iter()
                    .map(|(chain, matches, target)| Entry {
                        chain,
                        position: Position::Append,
                        rule: Rule::new(matches, target),
                    })
                    .collect(),
            })
            .collect();
        RuleSet { family, tables }
    }

    /// IPv4: addresses, ports, interfaces, marks, owners, states and targets.
    fn canonical_v4() -> RuleSet {
        let out = Own(Output);
        let nat = vec![
            (out, vec![dst("0.0.0.0/0")], Target::Jump(Own(Redirect))),
            (out, vec![src("0.0.0.0/0")], Target::Return),
            (out, vec![dst("10.1.2.3/0")], Target::Return),
            (out, vec![dst("10.1.2.3/8")], Target::Return),
            (out, vec![not_dst("10.1.2.3/8")], Target::Return),
            (out, vec![src("10.1.2.3/8")], Target::Return),
            (out, vec![dst("10.1.2.3")], Target::Return),
            (out, vec![Match::OutIface(iface("+"))], Target::Return),
            (out, vec![Match::OutIface(iface("eth+"))], Target::Return),
            (
                out,
                vec![tcp(), Match::DstPort(Neg::is(ports("1:65535")))],
                Target::Return,
            ),
            (
                out,
                vec![tcp(), Match::DstPort(Neg::not(ports("1:65535")))],
                Target::Return,
            ),
            (
                out,
                vec![tcp(), Match::DstPort(Neg::is(ports("80:80")))],
                Target::Return,
            ),
            (
                out,
                vec![tcp(), Match::DstPort(Neg::is(ports("80:90")))],
                Target::Return,
            ),
            (out, vec![udp(), Match::SrcPort(ports("53:53"))], Target::Return),
            (
                out,
                vec![
                    tcp(),
                    Match::DstPorts(Neg::is(vec![Port::new(15008), Port::new(53), Port::new(53)])),
                ],
                Target::Return,
            ),
            (
                out,
                vec![
                    tcp(),
                    Match::DstPorts(Neg::not(vec![Port::new(53), Port::new(15008)])),
                ],
                Target::Return,
            ),
            (out, vec![Match::Mark(Neg::is(Mark::new(1338)))], Target::Return),
            (
                out,
                vec![Match::Mark(Neg::not("0x53a".parse().unwrap()))],
                Target::Return,
            ),
            (out, vec![Match::Connmark(Mark::new(1337))], Target::Return),
            (
                out,
                vec![Match::Owner(Neg::is(OwnerMatch::Uid(Owner::Name("root".into()))))],
                Target::Return,
            ),
            (
                out,
                vec![Match::Owner(Neg::not(OwnerMatch::Gid(Owner::Id(1337))))],
                Target::Return,
            ),
            (
                out,
                vec![Match::CtState(vec![CtState::Established, CtState::Related])],
                Target::Return,
            ),
            (
                out,
                vec![Match::CtState(vec![CtState::Invalid, CtState::Invalid])],
                Target::Return,
            ),
            (
                out,
                vec![
                    Match::DstServer("10.0.0.10".parse().unwrap()),
                    udp(),
                    Match::DstPort(Neg::is(ports("53"))),
                ],
                redirect(15053),
            ),
            (
                out,
                vec![
                    Match::OutIface(iface("lo")),
                    not_dst("127.0.0.1/32"),
                    tcp(),
                    Match::DstPort(Neg::not(ports("15008"))),
                    Match::Owner(Neg::is(OwnerMatch::Uid(Owner::Id(1337)))),
                ],
                Target::Jump(Own(InRedirect)),
            ),
            (Own(Redirect), vec![tcp()], redirect(15001)),
            (
                Builtin(Hook::Prerouting),
                vec![Match::InIface(iface("eth1")), dst("0.0.0.0/0")],
                Target::Jump(Own(Redirect)),
            ),
            (
                Builtin(Hook::Prerouting),
                vec![Match::InIface(iface("+"))],
                Target::Return,
            ),
        ];
        let mangle = vec![
            (Own(Divert), vec![], Target::SetMark(Mark::new(1337))),
            (Own(Divert), vec![], Target::SaveMark),
            (Own(Divert), vec![], Target::RestoreMark),
            (Own(Divert), vec![], Target::Accept),
            (
                Own(Tproxy),
                vec![not_dst("127.0.0.1/32"), tcp()],
                Target::Tproxy {
                    mark: Mark::new(1337),
                    on_port: Port::new(15006),
                },
            ),
        ];
        let raw = vec![
            (
                Own(OutputDns),
                vec![
                    udp(),
                    Match::DstPort(Neg::is(ports("53"))),
                    Match::Owner(Neg::is(OwnerMatch::Uid(Owner::Id(1337)))),
                ],
                Target::CtZone(1),
            ),
            (
                Own(OutputDns),
                vec![
                    udp(),
                    Match::SrcPort(ports("53")),
                    Match::SrcServer("10.0.0.10".parse().unwrap()),
                ],
                Target::CtZone(2),
            ),
        ];
        rule_set(
            Family::V4,
            vec![
                (TableName::Mangle, mangle),
                (TableName::Nat, nat),
                (TableName::Raw, raw),
            ],
        )
    }

    /// IPv6: `::/0`, host bits and how addresses are written (inet_ntop(3), not Rust's `Display`).
    fn canonical_v6() -> RuleSet {
        let out = Own(Output);
        let ret = |m: Match| (out, vec![m], Target::Return);
        let nat = vec![
            (out, vec![dst("::/0")], Target::Jump(Own(Redirect))),
            ret(src("::/0")),
            ret(dst("2001:db8::1/0")),
            ret(dst("2001:db8::1/32")),
            ret(not_dst("2001:db8::1/32")),
            ret(dst("2001:DB8:0:0:1:0:0:1")),
            ret(dst("2001:db8:0:0:1::/80")),
            ret(dst("::ffff:10.1.2.3/104")),
            ret(dst("::ffff:10.1.2.3/128")),
            ret(dst("::ffff:0.0.0.0/96")),
            ret(dst("::1.2.3.4/128")),
            ret(dst("::0.1.0.0/128")),
            ret(Match::DstServer("::127.0.0.53".parse().unwrap())),
            ret(src("::6/128")),
            ret(dst("::ffff/128")),
            ret(dst("1:0:0:1:0:0:1:1/128")),
            ret(dst("1:0:1:1:1:1:1:1/128")),
            ret(dst("64:ff9b::1.2.3.4/128")),
            ret(dst("::ffff:0:1.2.3.4/128")),
            ret(dst("fe80::1/10")),
            ret(Match::OutIface(iface("+"))),
            (
                out,
                vec![tcp(), Match::DstPort(Neg::is(ports("1:65535")))],
                Target::Return,
            ),
        ];
        let mangle = vec![(
            Own(Tproxy),
            vec![not_dst("::1/128"), tcp()],
            Target::Tproxy {
                mark: Mark::new(1337),
                on_port: Port::new(15006),
            },
        )];
        rule_set(
            Family::V6,
            vec![(TableName::Mangle, mangle), (TableName::Nat, nat)],
        )
    }

    /// A negated any-address match keeps its `! -d 0.0.0.0/0`; only iptables-legacy loads it
    /// (iptables-nft-restore fails with "RULE_APPEND failed (Invalid argument)").
    fn negated_any_v4() -> RuleSet {
        let out = Own(Output);
        rule_set(
            Family::V4,
            vec![(
                TableName::Nat,
                vec![
                    (out, vec![not_dst("0.0.0.0/0")], Target::Return),
                    (out, vec![not_src("0.0.0.0/0")], Target::Return),
                ],
            )],
        )
    }

    /// [`negated_any_v4`] for IPv6.
    fn negated_any_v6() -> RuleSet {
        let out = Own(Output);
        rule_set(
            Family::V6,
            vec![(TableName::Nat, vec![(out, vec![not_dst("::/0")], Target::Return)])],
        )
    }

    /// Addresses are written as inet_ntop(3) writes them, for every address whose eight groups
    /// are each 0, 1 or ffff, and for ones ending in an IPv4 address.
    #[test]
    fn addresses_are_written_as_inet_ntop_writes_them() {
        use std::net::{Ipv4Addr, Ipv6Addr};

        unsafe extern "C" {
            // inet_ntop(3), from the C library (the libc crate does not bind it).
            #[link_name = "inet_ntop"]
            fn c_inet_ntop(
                af: libc::c_int,
                src: *const libc::c_void,
                dst: *mut libc::c_char,
                size: libc::socklen_t,
            ) -> *const libc::c_char;
        }

        fn inet_ntop(addr: Ipv6Addr) -> String {
            let octets = addr.octets();
            let mut buf = [0 as libc::c_char; 64];
            // SAFETY: `octets` is a 16-byte in6_addr, `buf` is larger than INET6_ADDRSTRLEN and
            // its length is passed.
            let out = unsafe {
                c_inet_ntop(
                    libc::AF_INET6,
                    octets.as_ptr().cast(),
                    buf.as_mut_ptr(),
                    libc::socklen_t::try_from(buf.len()).unwrap(),
                )
            };
            assert!(!out.is_null(), "inet_ntop failed for {addr}");
            // SAFETY: inet_ntop wrote a NUL-terminated string into `buf`.
            unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
                .to_str()
                .unwrap()
                .to_owned()
        }

        let mut checked = 0;
        for n in 0..3u32.pow(8) {
            let mut words = [0u16; 8];
            let mut rest = n;
            for word in &mut words {
                *word = [0, 1, 0xffff][(rest % 3) as usize];
                rest /= 3;
            }
            let addr = Ipv6Addr::from(words);
            assert_eq!(
                super::SavedAddr(addr.into()).to_string(),
                inet_ntop(addr),
                "{words:x?}"
            );
            checked += 1;
        }
        for v4 in [
            Ipv4Addr::new(1, 2, 3, 4),
            Ipv4Addr::new(127, 0, 0, 53),
            Ipv4Addr::new(0, 1, 0, 0),
        ] {
            for addr in [v4.to_ipv6_compatible(), v4.to_ipv6_mapped()] {
                assert_eq!(super::SavedAddr(addr.into()).to_string(), inet_ntop(addr));
                checked += 1;
            }
            assert_eq!(super::SavedAddr(v4.into()).to_string(), v4.to_string());
        }
        assert_eq!(checked, 6561 + 6);
    }

    type Case = (&'static str, fn() -> RuleSet, &'static [&'static str]);

    /// Name, rules, and the flavors whose `iptables-save` output is recorded.
    const CASES: &[Case] = &[
        ("canonical", canonical_v4, &["legacy", "nft"]),
        ("canonical", canonical_v6, &["legacy", "nft"]),
        ("negated-any", negated_any_v4, &["legacy"]),
        ("negated-any", negated_any_v6, &["legacy"]),
    ];

    fn testdata(name: &str, family: Family, suffix: &str) -> (PathBuf, String) {
        let v = match family {
            Family::V4 => "v4",
            Family::V6 => "v6",
        };
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("testdata/saved")
            .join(format!("{name}.{v}.{suffix}"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        (path, text)
    }

    /// What was recorded is our own payload for these rules.
    #[test]
    fn recorded_restores_are_our_payloads() {
        for (name, rules, _) in CASES {
            let rules = rules();
            let (path, recorded) = testdata(name, rules.family, "restore");
            assert_eq!(Restore(&rules).to_string(), recorded, "{}", path.display());
        }
    }

    /// [`Saved`] spells every rule as `iptables-save` printed it, chain by chain, both flavors.
    #[test]
    fn saved_is_what_iptables_save_printed() {
        let resolve = |owner: &OwnerMatch| match owner {
            OwnerMatch::Uid(Owner::Name(n)) | OwnerMatch::Gid(Owner::Name(n)) if n == "root" => Some(0),
            _ => None,
        };
        for (name, rules, flavors) in CASES {
            let rules = rules();
            for flavor in *flavors {
                let (path, text) = testdata(name, rules.family, &format!("{flavor}.save"));
                let recorded = SavedState::parse(&text);
                for table in &rules.tables {
                    let found = recorded
                        .tables
                        .get(&table.name)
                        .unwrap_or_else(|| panic!("{}: no {} table", path.display(), table.name.as_str()));
                    for (chain, list) in table.chain_contents() {
                        let ours: Vec<String> = list
                            .iter()
                            .map(|rule| {
                                Saved {
                                    rule,
                                    family: rules.family,
                                    resolve: &resolve,
                                }
                                .to_string()
                            })
                            .collect();
                        let theirs = found.chains.get(chain.as_str()).cloned().unwrap_or_default();
                        assert_eq!(ours, theirs, "{} {}", path.display(), chain.as_str());
                    }
                }
            }
        }
    }
}
