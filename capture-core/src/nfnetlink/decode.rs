//! nf_tables messages to objects: what the kernel lists, decoded into the types a batch
//! writes, leaving out what the kernel assigns (handles, use counts, set names) and counter
//! values.

use std::collections::BTreeSet;

use super::Malformed;
use super::attr::{Attrs, be32, required, string};
use super::expr::{Bytes, CmpOp, CtKey, Expr, MetaKey, PayloadBase, Register, Set, Verdict};
use super::object::{BaseChain, Chain, ChainType, Hook, NfProto, Policy, Position, Rule, Table};
use super::socket::Owned;

fn family(message: &Owned) -> Result<NfProto, Malformed> {
    NfProto::from_number(message.family).ok_or(Malformed::new("family", "it is not an nf_tables family"))
}

/// A `NEWTABLE` message of a listing.
pub(super) fn table(message: &Owned) -> Result<Table, Malformed> {
    let [_, name, flags, ..] = message.attrs().table::<3>()?;
    Ok(Table {
        family: family(message)?,
        name: string("table name", required("table name", name)?)?,
        flags: flags.map(|f| be32("table flags", f)).transpose()?.unwrap_or(0),
    })
}

/// A `NEWCHAIN` message of a listing.
pub(super) fn chain(message: &Owned) -> Result<Chain, Malformed> {
    let [_, table, _, name, hook, policy, _, kind, ..] = message.attrs().table::<8>()?;
    let base = match hook {
        None => None,
        Some(hook) => {
            let hook = Attrs(hook);
            if !hook.only(&[1, 2])? {
                return Err(Malformed::new(
                    "chain hook",
                    "it names devices, which this module does not model",
                ));
            }
            let [_, number, priority] = hook.table::<3>()?;
            let number = be32("hook number", required("hook number", number)?)?;
            let priority = be32("hook priority", required("hook priority", priority)?)?;
            let kind = string("chain type", required("chain type", kind)?)?;
            let policy = match policy.map(|p| be32("chain policy", p)).transpose()? {
                None | Some(1) => Policy::Accept,
                Some(0) => Policy::Drop,
                Some(_) => return Err(Malformed::new("chain policy", "it is neither accept nor drop")),
            };
            Some(BaseChain {
                kind: ChainType::from_name(&kind).ok_or(Malformed::new("chain type", "it is unknown"))?,
                hook: Hook::from_number(number).ok_or(Malformed::new("hook number", "it is unknown"))?,
                priority: priority.cast_signed(),
                policy,
            })
        }
    };
    Ok(Chain {
        family: family(message)?,
        table: string("chain table", required("chain table", table)?)?,
        name: string("chain name", required("chain name", name)?)?,
        base,
    })
}

/// A set as listed: where it is, and what it is when it is an anonymous set of keys (the only
/// kind [`Expr::Lookup`] holds).
#[derive(Debug)]
pub(super) struct ListedSet {
    pub(super) family: NfProto,
    pub(super) table: String,
    pub(super) name: String,
    /// `None` for named sets, maps, and sets with timeouts or expressions.
    pub(super) set: Option<Set>,
}

/// A `NEWSET` message of a listing (its elements come separately).
pub(super) fn set(message: &Owned) -> Result<ListedSet, Malformed> {
    let attrs = message.attrs();
    let [_, table, name, flags, key_type, key_len, ..] = attrs.table::<6>()?;
    let [.., userdata] = attrs.table::<14>()?;
    let flags = be32("set flags", required("set flags", flags)?)?;
    // TABLE NAME FLAGS KEY_TYPE KEY_LEN POLICY DESC ID GC_INTERVAL USERDATA PAD HANDLE, and
    // what newer kernels add for information: TYPE (the backend) and COUNT (of elements).
    let plain = attrs.only(&[1, 2, 3, 4, 5, 8, 9, 10, 12, 13, 14, 16, 19, 20])?;
    let anonymous = flags & !(Set::ANONYMOUS | Set::CONSTANT) == 0 && flags & Set::ANONYMOUS != 0;
    let set = if plain && anonymous {
        Some(Set {
            key_type: be32("set key type", required("set key type", key_type)?)?,
            key_len: be32("set key length", required("set key length", key_len)?)?,
            flags,
            elements: BTreeSet::new(),
            userdata: userdata.map(Bytes::from),
        })
    } else {
        None
    };
    Ok(ListedSet {
        family: family(message)?,
        table: string("set table", required("set table", table)?)?,
        name: string("set name", required("set name", name)?)?,
        set,
    })
}

/// The keys of a `NEWSETELEM` message of a listing, or `None` when an element is more than
/// a key (a range end, a timeout, a map's value).
pub(super) fn elements(message: &Owned) -> Result<Option<Vec<Bytes>>, Malformed> {
    let [_, _, _, list, ..] = message.attrs().table::<4>()?;
    let mut keys = Vec::new();
    for element in Attrs(required("set elements", list)?).iter() {
        let element = Attrs(element?.1);
        let [_, key, _, flags] = element.table::<4>()?;
        let flags = flags.map(|f| be32("element flags", f)).transpose()?.unwrap_or(0);
        if !element.only(&[1, 3])? || flags != 0 {
            return Ok(None);
        }
        keys.push(value(required("element key", key)?)?);
    }
    Ok(Some(keys))
}

/// A `NEWRULE` message of a listing; `set` finds an anonymous set of the rule's table by its
/// kernel name.
pub(super) fn rule<'s>(message: &Owned, set: impl Fn(&str) -> Option<&'s Set>) -> Result<Rule, Malformed> {
    let [_, table, chain, handle, exprs, _, _, userdata] = message.attrs().table::<8>()?;
    let mut decoded = Vec::new();
    if let Some(exprs) = exprs {
        for element in Attrs(exprs).iter() {
            let [_, name, data] = Attrs(element?.1).table::<3>()?;
            let name = string("expression name", required("expression name", name)?)?;
            let data = data.unwrap_or_default();
            let expr = match known(&name, Attrs(data), &set)? {
                Some(expr) => expr,
                None => Expr::Unknown {
                    name,
                    data: Bytes::from(data),
                },
            };
            decoded.push(expr);
        }
    }
    Ok(Rule {
        family: family(message)?,
        table: string("rule table", required("rule table", table)?)?,
        chain: string("rule chain", required("rule chain", chain)?)?,
        exprs: decoded,
        position: Position::Append,
        userdata: userdata.map(Bytes::from),
        handle: handle
            .map(|h| h.try_into().map(u64::from_be_bytes))
            .transpose()
            .map_err(|_| Malformed::new("rule handle", "it is not 8 bytes long"))?,
    })
}

/// `NFTA_DATA_VALUE` inside an `NFTA_DATA_*` nest.
fn value(data: &[u8]) -> Result<Bytes, Malformed> {
    let [_, value, ..] = Attrs(data).table::<2>()?;
    Ok(Bytes::from(required("data value", value)?))
}

fn register(what: &'static str, value: Option<&[u8]>) -> Result<Register, Malformed> {
    Ok(Register(be32(what, required(what, value)?)?))
}

fn number(what: &'static str, value: Option<&[u8]>) -> Result<u32, Malformed> {
    be32(what, required(what, value)?)
}

/// What a `meta` or `ct` expression does with its key: loads it into a register, or sets it
/// from one.
enum KeyRegister {
    Load(Register),
    Set(Register),
}

/// The register of a `meta` or `ct` expression: exactly one of `dreg` (a load) and `sreg` (a
/// set), else `None`.
fn key_register(
    what: &'static str,
    dreg: Option<&[u8]>,
    sreg: Option<&[u8]>,
) -> Result<Option<KeyRegister>, Malformed> {
    Ok(match (dreg, sreg) {
        (Some(_), None) => Some(KeyRegister::Load(register(what, dreg)?)),
        (None, Some(_)) => Some(KeyRegister::Set(register(what, sreg)?)),
        _ => None,
    })
}

/// An expression of a kind and form this module models, or `None`.
fn known<'s>(
    name: &str,
    data: Attrs<'_>,
    set: impl Fn(&str) -> Option<&'s Set>,
) -> Result<Option<Expr>, Malformed> {
    let expr = match name {
        "meta" => {
            let [_, dreg, key, sreg] = data.table::<4>()?;
            let key = MetaKey::from_number(number("meta key", key)?);
            match key_register("meta register", dreg, sreg)? {
                Some(KeyRegister::Load(dreg)) => Expr::Meta { key, dreg },
                Some(KeyRegister::Set(sreg)) => Expr::MetaSet { key, sreg },
                None => return Ok(None),
            }
        }
        "payload" => {
            if !data.only(&[1, 2, 3, 4])? {
                return Ok(None);
            }
            let [_, dreg, base, offset, len] = data.table::<5>()?;
            Expr::Payload {
                dreg: register("payload register", dreg)?,
                base: PayloadBase::from_number(number("payload base", base)?),
                offset: number("payload offset", offset)?,
                len: number("payload length", len)?,
            }
        }
        "cmp" => {
            let [_, sreg, op, operand] = data.table::<4>()?;
            let Some(op) = CmpOp::from_number(number("cmp operator", op)?) else {
                return Ok(None);
            };
            Expr::Cmp {
                sreg: register("cmp register", sreg)?,
                op,
                data: value(required("cmp data", operand)?)?,
            }
        }
        "bitwise" => {
            let [_, sreg, dreg, len, mask, xor, op, _] = data.table::<8>()?;
            // NFT_BITWISE_BOOL (mask and xor) is 0, and what kernels before 5.6 mean.
            if op.map(|o| be32("bitwise operator", o)).transpose()?.unwrap_or(0) != 0 {
                return Ok(None);
            }
            Expr::Bitwise {
                sreg: register("bitwise register", sreg)?,
                dreg: register("bitwise register", dreg)?,
                len: number("bitwise length", len)?,
                mask: value(required("bitwise mask", mask)?)?,
                xor: value(required("bitwise xor", xor)?)?,
            }
        }
        "lookup" => {
            let [_, set_name, sreg, dreg, _, flags] = data.table::<6>()?;
            let flags = flags.map(|f| be32("lookup flags", f)).transpose()?.unwrap_or(0);
            let Some(set) = set(&string("lookup set", required("lookup set", set_name)?)?) else {
                return Ok(None);
            };
            if dreg.is_some() || flags & !1 != 0 {
                return Ok(None);
            }
            Expr::Lookup {
                sreg: register("lookup register", sreg)?,
                set: set.clone(),
                invert: flags & 1 != 0,
            }
        }
        "immediate" => {
            let [_, dreg, immediate] = data.table::<3>()?;
            let dreg = register("immediate register", dreg)?;
            let [_, data_value, data_verdict] = Attrs(required("immediate data", immediate)?).table::<3>()?;
            match (data_value, data_verdict) {
                (Some(bytes), None) => Expr::Immediate {
                    dreg,
                    data: Bytes::from(bytes),
                },
                (None, Some(verdict_attrs)) if dreg == Register::VERDICT => match verdict(verdict_attrs)? {
                    Some(v) => Expr::Verdict(v),
                    None => return Ok(None),
                },
                _ => return Ok(None),
            }
        }
        // Its packet and byte counts are state, not configuration.
        "counter" => Expr::Counter,
        "redir" => {
            if !data.only(&[1, 2, 3])? {
                return Ok(None);
            }
            let [_, min, max, flags] = data.table::<4>()?;
            let proto_min = min.map(|r| be32("redir register", r).map(Register)).transpose()?;
            let proto_max = max.map(|r| be32("redir register", r).map(Register)).transpose()?;
            Expr::Redirect {
                proto_min,
                // The kernel lists the last port's register as the first's when none was given.
                proto_max: proto_max.filter(|max| Some(*max) != proto_min),
                flags: flags.map(|f| be32("redir flags", f)).transpose()?.unwrap_or(0),
            }
        }
        "tproxy" => {
            let [_, tproxy_family, addr, port] = data.table::<4>()?;
            let tproxy_family = number("tproxy family", tproxy_family)?;
            let Some(tproxy_family) = u8::try_from(tproxy_family).ok().and_then(NfProto::from_number) else {
                return Ok(None);
            };
            Expr::Tproxy {
                family: tproxy_family,
                addr: addr
                    .map(|r| be32("tproxy register", r).map(Register))
                    .transpose()?,
                port: port
                    .map(|r| be32("tproxy register", r).map(Register))
                    .transpose()?,
            }
        }
        "ct" => {
            let [_, dreg, key, direction, sreg] = data.table::<5>()?;
            if direction.is_some() {
                return Ok(None);
            }
            let key = CtKey::from_number(number("ct key", key)?);
            match key_register("ct register", dreg, sreg)? {
                Some(KeyRegister::Load(dreg)) => Expr::Ct { key, dreg },
                Some(KeyRegister::Set(sreg)) => Expr::CtSet { key, sreg },
                None => return Ok(None),
            }
        }
        _ => return Ok(None),
    };
    Ok(Some(expr))
}

/// `NFTA_DATA_VERDICT`'s contents.
fn verdict(attrs: &[u8]) -> Result<Option<Verdict>, Malformed> {
    let [_, code, chain, ..] = Attrs(attrs).table::<3>()?;
    let code = number("verdict code", code)?.cast_signed();
    let chain = || string("verdict chain", required("verdict chain", chain)?);
    Ok(Some(match code {
        1 => Verdict::Accept,
        0 => Verdict::Drop,
        -1 => Verdict::Continue,
        -5 => Verdict::Return,
        -3 => Verdict::Jump(chain()?),
        -4 => Verdict::Goto(chain()?),
        _ => return Ok(None),
    }))
}
