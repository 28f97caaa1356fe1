//! Reading one rule of an `iptables-save` dump back into conditions and actions: the options
//! capture's rules use, as `iptables-save` prints them (see [`Saved`](crate::render::Saved)).

use super::ir::{Act, Cond};
use crate::rules::{CtState, Neg, OwnerMatch, Proto};
use crate::types::{Cidr, Family, Iface, Owner, Port, PortRange};

/// Splits a saved rule into words, keeping a quoted comment as one.
fn words(spec: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    for c in spec.chars() {
        match c {
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                if !word.is_empty() {
                    out.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        out.push(word);
    }
    out
}

fn port_range(s: &str) -> Option<PortRange> {
    match s.split_once(':') {
        Some((low, high)) => Some(PortRange {
            low: low.parse().ok()?,
            high: high.parse().ok()?,
        }),
        None => s.parse().ok().map(PortRange::single),
    }
}

fn number(s: &str) -> Option<u32> {
    let value = s.split('/').next()?;
    match value.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => value.parse().ok(),
    }
}

fn cidr(s: &str, family: Family) -> Option<Cidr> {
    let c: Cidr = match s.parse() {
        Ok(c) => c,
        Err(_) => Cidr::host(s.parse().ok()?),
    };
    (c.family() == family).then_some(c)
}

/// The conditions and actions of one rule as `iptables-save` writes it after `-A CHAIN `, or
/// the first word that is not understood.
///
/// # Errors
/// The first word (option or value) this reader does not know.
pub(crate) fn parse_rule_spec(spec: &str, family: Family) -> Result<(Vec<Cond>, Vec<Act>), String> {
    let words = words(spec);
    let mut conds = Vec::new();
    let mut acts = Vec::new();
    let mut module = String::new();
    let mut negated = false;
    let mut i = 0;
    let bad = |w: &str| w.to_owned();
    while i < words.len() {
        let word = words[i].as_str();
        let value = words.get(i + 1).map(String::as_str);
        let take = |i: &mut usize| -> Result<&str, String> {
            *i += 1;
            value.ok_or_else(|| bad(word))
        };
        let neg = std::mem::take(&mut negated);
        match word {
            "!" => {
                negated = true;
            }
            "-s" | "-d" => {
                let v = take(&mut i)?;
                let c = cidr(v, family).ok_or_else(|| bad(v))?;
                let n = Neg {
                    negated: neg,
                    value: c,
                };
                conds.push(if word == "-s" { Cond::Src(n) } else { Cond::Dst(n) });
            }
            "-i" | "-o" => {
                let v = take(&mut i)?;
                let iface: Iface = v.parse().map_err(|_| bad(v))?;
                let n = Neg {
                    negated: neg,
                    value: iface,
                };
                conds.push(if word == "-i" {
                    Cond::InIface(n)
                } else {
                    Cond::OutIface(n)
                });
            }
            "-p" => {
                let v = take(&mut i)?;
                let p = match v {
                    "tcp" | "6" => Proto::Tcp,
                    "udp" | "17" => Proto::Udp,
                    _ => return Err(bad(v)),
                };
                if neg {
                    return Err(bad("! -p"));
                }
                conds.push(Cond::Proto(p));
            }
            "-m" => {
                let v = take(&mut i)?;
                match v {
                    "tcp" | "udp" | "multiport" | "owner" | "mark" | "connmark" | "conntrack" | "comment" => {
                        module = v.to_owned();
                    }
                    _ => return Err(bad(v)),
                }
            }
            "--comment" => {
                take(&mut i)?;
            }
            "--dport" | "--sport" | "--dports" | "--sports" => {
                let v = take(&mut i)?;
                let list = v
                    .split(',')
                    .map(port_range)
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| bad(v))?;
                let n = Neg {
                    negated: neg,
                    value: list,
                };
                conds.push(if word.starts_with("--d") {
                    Cond::DstPort(n)
                } else {
                    Cond::SrcPort(n)
                });
            }
            "--uid-owner" | "--gid-owner" => {
                let v = take(&mut i)?;
                let owner: Owner = v.parse().map_err(|_| bad(v))?;
                let value = if word == "--uid-owner" {
                    OwnerMatch::Uid(owner)
                } else {
                    OwnerMatch::Gid(owner)
                };
                conds.push(Cond::Owner(Neg { negated: neg, value }));
            }
            "--mark" => {
                let v = take(&mut i)?;
                let m = number(v).ok_or_else(|| bad(v))?;
                if module == "connmark" {
                    conds.push(Cond::Connmark(m));
                } else {
                    conds.push(Cond::Mark(Neg {
                        negated: neg,
                        value: m,
                    }));
                }
            }
            "--ctstate" => {
                let v = take(&mut i)?;
                let states = v
                    .split(',')
                    .map(|s| match s {
                        "INVALID" => Some(CtState::Invalid),
                        "RELATED" => Some(CtState::Related),
                        "ESTABLISHED" => Some(CtState::Established),
                        _ => None,
                    })
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| bad(v))?;
                conds.push(Cond::CtState(states));
            }
            "-j" => {
                let target = take(&mut i)?;
                let rest = &words[i + 1..];
                let opt = |name: &str| {
                    rest.iter()
                        .position(|w| w == name)
                        .and_then(|p| rest.get(p + 1))
                        .map(String::as_str)
                };
                let port = |name: &str| -> Result<Port, String> {
                    let v = opt(name).ok_or_else(|| bad(name))?;
                    v.parse().map_err(|_| bad(v))
                };
                acts.push(match target {
                    "RETURN" => Act::Return,
                    "ACCEPT" => Act::Accept,
                    "DROP" => Act::Drop,
                    "REDIRECT" => Act::Redirect(port("--to-ports")?),
                    "TPROXY" => Act::Tproxy(port("--on-port")?),
                    "MARK" => {
                        let v = opt("--set-xmark")
                            .or_else(|| opt("--set-mark"))
                            .ok_or_else(|| bad("MARK"))?;
                        Act::SetMark(number(v).ok_or_else(|| bad(v))?)
                    }
                    "CONNMARK" if rest.iter().any(|w| w == "--save-mark") => Act::SaveMark,
                    "CONNMARK" if rest.iter().any(|w| w == "--restore-mark") => Act::RestoreMark,
                    "CT" => Act::Nothing,
                    t if t
                        .chars()
                        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_' || c == '-') =>
                    {
                        if !rest.is_empty() {
                            return Err(bad(&rest[0]));
                        }
                        Act::Jump(t.to_owned())
                    }
                    t => return Err(bad(t)),
                });
                return Ok((conds, acts));
            }
            other => return Err(bad(other)),
        }
        i += 1;
    }
    // No target: a rule that only counts.
    Ok((conds, acts))
}
