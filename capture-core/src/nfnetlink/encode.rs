//! Objects to nf_tables messages, attribute for attribute as nft 1.0.x writes them (checked
//! against `nft --debug=mnl`), so that the kernel holds exactly what nft would have put there.

use std::collections::HashMap;

use super::attr::{BATCH_GENID, MSG_BATCH_BEGIN, MSG_BATCH_END, SUBSYS_NFTABLES, Writer};
use super::batch::{Batch, Op};
use super::expr::{Expr, Register, Set, Verdict};
use super::object::{Chain, NfProto, Policy, Position, Rule, Table};
use super::{Error, Subject};

pub(super) const NLM_F_REQUEST: u16 = 0x1;
pub(super) const NLM_F_ACK: u16 = 0x4;
pub(super) const NLM_F_DUMP: u16 = 0x300;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;

/// `NFT_MSG_*`.
pub(super) mod msg {
    pub(in super::super) const NEWTABLE: u8 = 0;
    pub(in super::super) const GETTABLE: u8 = 1;
    pub(in super::super) const DELTABLE: u8 = 2;
    pub(in super::super) const NEWCHAIN: u8 = 3;
    pub(in super::super) const GETCHAIN: u8 = 4;
    pub(in super::super) const NEWRULE: u8 = 6;
    pub(in super::super) const GETRULE: u8 = 7;
    pub(in super::super) const DELRULE: u8 = 8;
    pub(in super::super) const NEWSET: u8 = 9;
    pub(in super::super) const GETSET: u8 = 10;
    pub(in super::super) const NEWSETELEM: u8 = 12;
    pub(in super::super) const GETSETELEM: u8 = 13;
    pub(in super::super) const NEWGEN: u8 = 15;
    pub(in super::super) const GETGEN: u8 = 16;
}

/// The message type of an nf_tables message.
pub(super) fn nft_type(msg: u8) -> u16 {
    (SUBSYS_NFTABLES << 8) | u16::from(msg)
}

/// A batch as bytes, with what each message was, to name the one the kernel refuses.
#[derive(Debug)]
pub(super) struct Encoded {
    pub(super) bytes: Vec<u8>,
    /// The messages between begin and end, in order.
    pub(super) sent: Vec<Sent>,
}

/// One message of an [`Encoded`] batch.
#[derive(Debug)]
pub(super) struct Sent {
    pub(super) seq: u32,
    pub(super) subject: Subject,
    /// For a rule: each expression's start and end, relative to the message's start.
    pub(super) exprs: Vec<(usize, usize, String)>,
}

/// Encodes `batch` as `BATCH_BEGIN`, its messages, `BATCH_END`, numbered from `first_seq`.
pub(super) fn encode(batch: &Batch, first_seq: u32) -> Result<Encoded, Error> {
    let plan = Plan::new(batch)?;
    let mut out = Writer::default();
    let mut sent = Vec::new();
    let mut seq = first_seq;
    out.message(MSG_BATCH_BEGIN, NLM_F_REQUEST, seq, 0, SUBSYS_NFTABLES, |out| {
        if let Some(generation) = batch.generation {
            out.put_u32(BATCH_GENID, generation);
        }
    });
    let mut set_id = 0;
    for (index, op) in batch.ops.iter().enumerate() {
        match op {
            Op::AddTable(table) => {
                seq += 1;
                sent.push(table_message(&mut out, seq, table));
            }
            Op::DeleteTable { family, name } => {
                seq += 1;
                nft_message(&mut out, msg::DELTABLE, 0, seq, *family, |out| {
                    out.put_str(TABLE_NAME, name)
                });
                sent.push(Sent::plain(seq, Subject::delete_table(*family, name)));
            }
            Op::FlushTable { family, name } => {
                seq += 1;
                nft_message(&mut out, msg::DELRULE, 0, seq, *family, |out| {
                    out.put_str(RULE_TABLE, name)
                });
                sent.push(Sent::plain(seq, Subject::flush_table(*family, name)));
            }
            Op::AddChain(chain) => {
                seq += 1;
                sent.push(chain_message(&mut out, seq, chain));
            }
            Op::AddRule(rule) => {
                let number = plan.numbers[index];
                let mut set_ids = Vec::new();
                for expr in &rule.exprs {
                    if let Expr::Lookup { set, .. } = expr {
                        set_id += 1;
                        set_ids.push(set_id);
                        seq += 1;
                        sent.push(set_message(&mut out, seq, rule, number, set, set_id));
                        seq += 1;
                        sent.push(elements_message(&mut out, seq, rule, number, set, set_id));
                    }
                }
                seq += 1;
                let ids = RuleIds {
                    own: plan.rule_ids.get(&index).copied(),
                    position: plan
                        .positions
                        .get(&index)
                        .and_then(|target| plan.rule_ids.get(target).copied()),
                    sets: &set_ids,
                };
                sent.push(rule_message(&mut out, seq, rule, number, &ids));
            }
        }
    }
    // The kernel reports every refused message whatever its flags, and acknowledges the
    // messages that ask only once the batch is committed or aborted: so one acknowledgement, of
    // the last message, confirms the commit (nft asks for one per message; ~100 fewer answers
    // to build and read here).
    if !sent.is_empty() {
        out.add_flags_to_last(NLM_F_ACK);
    }
    out.message(MSG_BATCH_END, NLM_F_REQUEST, seq + 1, 0, SUBSYS_NFTABLES, |_| {});
    Ok(Encoded {
        bytes: out.into_bytes(),
        sent,
    })
}

impl Sent {
    fn plain(seq: u32, subject: Subject) -> Self {
        Self {
            seq,
            subject,
            exprs: Vec::new(),
        }
    }
}

/// What the batch's order implies, worked out before encoding: nft's rule numbering and the
/// rules that `insert … index N` refers to.
struct Plan {
    /// For each op that adds a rule: its number among the rules the batch adds to its chain.
    numbers: Vec<usize>,
    /// Rule ids (`NFTA_RULE_ID`), given to the rules that a later rule is inserted before,
    /// in the order nft gives them: the order of first reference, from 1.
    rule_ids: HashMap<usize, u32>,
    /// For each rule inserted by index: the op of the rule it goes before.
    positions: HashMap<usize, usize>,
}

impl Plan {
    fn new(batch: &Batch) -> Result<Self, Error> {
        let mut chains: HashMap<(NfProto, &str, &str), Vec<usize>> = HashMap::new();
        let mut counts: HashMap<(NfProto, &str, &str), usize> = HashMap::new();
        let mut plan = Self {
            numbers: vec![0; batch.ops.len()],
            rule_ids: HashMap::new(),
            positions: HashMap::new(),
        };
        for (index, op) in batch.ops.iter().enumerate() {
            let rule = match op {
                Op::DeleteTable { family, name } | Op::FlushTable { family, name } => {
                    chains.retain(|(f, t, _), _| (f, t) != (family, &name.as_str()));
                    continue;
                }
                Op::AddTable(_) | Op::AddChain(_) => continue,
                Op::AddRule(rule) => rule,
            };
            let key = (rule.family, rule.table.as_str(), rule.chain.as_str());
            let count = counts.entry(key).or_default();
            *count += 1;
            plan.numbers[index] = *count;
            let rules = chains.entry(key).or_default();
            match rule.position {
                Position::Append | Position::Before(_) | Position::After(_) => rules.push(index),
                Position::Prepend => rules.insert(0, index),
                Position::Index(at) => {
                    let Some(&target) = rules.get(at) else {
                        return Err(Error::Position {
                            subject: Box::new(Subject::add_rule(rule, *count)),
                            index: at,
                            rules: rules.len(),
                        });
                    };
                    let next = u32::try_from(plan.rule_ids.len() + 1).expect("fewer than 2^32 rules");
                    plan.rule_ids.entry(target).or_insert(next);
                    plan.positions.insert(index, target);
                    rules.insert(at, index);
                }
            }
        }
        Ok(plan)
    }
}

/// An nf_tables message of type `msg` about `family`, with the flags `extra` too;
/// `attrs` writes its attributes.
fn nft_message(
    out: &mut Writer,
    msg: u8,
    extra: u16,
    seq: u32,
    family: NfProto,
    attrs: impl FnOnce(&mut Writer),
) {
    let flags = NLM_F_REQUEST | extra;
    out.message(nft_type(msg), flags, seq, family.number(), 0, attrs);
}

// NFTA_TABLE_*
const TABLE_NAME: u16 = 1;
const TABLE_FLAGS: u16 = 2;
// NFTA_CHAIN_*
const CHAIN_TABLE: u16 = 1;
const CHAIN_NAME: u16 = 3;
const CHAIN_HOOK: u16 = 4;
const CHAIN_POLICY: u16 = 5;
const CHAIN_TYPE: u16 = 7;
const HOOK_HOOKNUM: u16 = 1;
const HOOK_PRIORITY: u16 = 2;
// NFTA_RULE_*
const RULE_TABLE: u16 = 1;
const RULE_CHAIN: u16 = 2;
const RULE_EXPRESSIONS: u16 = 4;
const RULE_POSITION: u16 = 6;
const RULE_USERDATA: u16 = 7;
const RULE_ID: u16 = 9;
const RULE_POSITION_ID: u16 = 10;
// NFTA_SET_*
const SET_TABLE: u16 = 1;
const SET_NAME: u16 = 2;
const SET_FLAGS: u16 = 3;
const SET_KEY_TYPE: u16 = 4;
const SET_KEY_LEN: u16 = 5;
const SET_DESC: u16 = 9;
const SET_ID: u16 = 10;
const SET_USERDATA: u16 = 13;
const SET_DESC_SIZE: u16 = 1;
// NFTA_SET_ELEM_LIST_* and NFTA_SET_ELEM_*
const ELEM_LIST_TABLE: u16 = 1;
const ELEM_LIST_SET: u16 = 2;
const ELEM_LIST_ELEMENTS: u16 = 3;
const ELEM_LIST_SET_ID: u16 = 4;
const ELEM_KEY: u16 = 1;
// NFTA_LIST_ELEM, NFTA_EXPR_*, NFTA_DATA_*, NFTA_VERDICT_*
const LIST_ELEM: u16 = 1;
const EXPR_NAME: u16 = 1;
const EXPR_DATA: u16 = 2;
const DATA_VALUE: u16 = 1;
const DATA_VERDICT: u16 = 2;
const VERDICT_CODE: u16 = 1;
const VERDICT_CHAIN: u16 = 2;
// NFTA_META_* and NFTA_CT_*: the key is 2 in both.
const KEY_AND_REGISTER_KEY: u16 = 2;
const META_DREG: u16 = 1;
const META_SREG: u16 = 3;
const CT_DREG: u16 = 1;
const CT_SREG: u16 = 4;

/// The name nft gives an anonymous set; the kernel replaces `%d` with a free number.
pub(super) const ANONYMOUS_SET_NAME: &str = "__set%d";

fn table_message(out: &mut Writer, seq: u32, table: &Table) -> Sent {
    nft_message(out, msg::NEWTABLE, NLM_F_CREATE, seq, table.family, |out| {
        out.put_str(TABLE_NAME, &table.name);
        out.put_u32(TABLE_FLAGS, table.flags);
    });
    Sent::plain(seq, Subject::add_table(table))
}

fn chain_message(out: &mut Writer, seq: u32, chain: &Chain) -> Sent {
    nft_message(out, msg::NEWCHAIN, NLM_F_CREATE, seq, chain.family, |out| {
        out.put_str(CHAIN_TABLE, &chain.table);
        out.put_str(CHAIN_NAME, &chain.name);
        if let Some(base) = &chain.base {
            out.put_str(CHAIN_TYPE, base.kind.as_str());
            // nft sends a policy only when one is written; accept is the kernel's default.
            if base.policy == Policy::Drop {
                out.put_u32(CHAIN_POLICY, 0);
            }
            out.nest(CHAIN_HOOK, |out| {
                out.put_u32(HOOK_HOOKNUM, base.hook.number());
                out.put(HOOK_PRIORITY, &base.priority.to_be_bytes());
            });
        }
    });
    Sent::plain(seq, Subject::add_chain(chain))
}

fn set_message(out: &mut Writer, seq: u32, rule: &Rule, number: usize, set: &Set, id: u32) -> Sent {
    nft_message(out, msg::NEWSET, NLM_F_CREATE, seq, rule.family, |out| {
        out.put_str(SET_TABLE, &rule.table);
        out.put_str(SET_NAME, ANONYMOUS_SET_NAME);
        out.put_u32(SET_FLAGS, set.flags);
        out.put_u32(SET_KEY_TYPE, set.key_type);
        out.put_u32(SET_KEY_LEN, set.key_len);
        out.put_u32(SET_ID, id);
        // nft sizes a constant set to its elements, which lets the kernel pick a compact backend.
        let size = u32::try_from(set.elements.len()).expect("fewer than 2^32 elements");
        out.nest(SET_DESC, |out| out.put_u32(SET_DESC_SIZE, size));
        if let Some(userdata) = &set.userdata {
            out.put(SET_USERDATA, userdata);
        }
    });
    Sent::plain(seq, Subject::add_set(rule, number))
}

fn elements_message(out: &mut Writer, seq: u32, rule: &Rule, number: usize, set: &Set, id: u32) -> Sent {
    nft_message(out, msg::NEWSETELEM, NLM_F_CREATE, seq, rule.family, |out| {
        out.put_str(ELEM_LIST_TABLE, &rule.table);
        out.put_str(ELEM_LIST_SET, ANONYMOUS_SET_NAME);
        out.put_u32(ELEM_LIST_SET_ID, id);
        out.nest(ELEM_LIST_ELEMENTS, |out| {
            // libnftnl numbers the list's entries from 1; the kernel reads any type.
            for (i, element) in (1..).zip(&set.elements) {
                out.nest(i, |out| out.nest(ELEM_KEY, |out| out.put(DATA_VALUE, element)));
            }
        });
    });
    Sent::plain(seq, Subject::add_set(rule, number))
}

/// The transaction ids a rule message refers to.
struct RuleIds<'a> {
    /// Its own id, when a later rule is inserted before it.
    own: Option<u32>,
    /// The id of the rule it is inserted before.
    position: Option<u32>,
    /// The ids of its anonymous sets, in the order of its lookups.
    sets: &'a [u32],
}

fn rule_message(out: &mut Writer, seq: u32, rule: &Rule, number: usize, ids: &RuleIds<'_>) -> Sent {
    let append = matches!(rule.position, Position::Append | Position::After(_));
    let extra = NLM_F_CREATE | if append { NLM_F_APPEND } else { 0 };
    // Where the message starts: each expression's place is told relative to it.
    let start = out.len();
    let mut exprs = Vec::new();
    nft_message(out, msg::NEWRULE, extra, seq, rule.family, |out| {
        out.put_str(RULE_TABLE, &rule.table);
        out.put_str(RULE_CHAIN, &rule.chain);
        let mut sets = ids.sets.iter();
        out.nest(RULE_EXPRESSIONS, |out| {
            for expr in &rule.exprs {
                let begin = out.len() - start;
                let set_id = matches!(expr, Expr::Lookup { .. })
                    .then(|| sets.next().copied())
                    .flatten();
                out.nest(LIST_ELEM, |out| {
                    out.put_str(EXPR_NAME, expr.name());
                    expr_data(out, expr, set_id);
                });
                exprs.push((begin, out.len() - start, expr.name().to_owned()));
            }
        });
        if let Position::Before(handle) | Position::After(handle) = rule.position {
            out.put_u64(RULE_POSITION, handle);
        }
        if let Some(userdata) = &rule.userdata {
            out.put(RULE_USERDATA, userdata);
        }
        if let Some(id) = ids.own {
            out.put_u32(RULE_ID, id);
        }
        if let Some(id) = ids.position {
            out.put_u32(RULE_POSITION_ID, id);
        }
    });
    Sent {
        seq,
        subject: Subject::add_rule(rule, number),
        exprs,
    }
}

/// `NFTA_EXPR_DATA` of one expression, its attributes in nft's order.
fn expr_data(out: &mut Writer, expr: &Expr, set_id: Option<u32>) {
    if let Expr::Unknown { data, .. } = expr {
        // Kept as listed, nested flag and all.
        out.put(EXPR_DATA | 0x8000, data);
        return;
    }
    out.nest(EXPR_DATA, |out| match expr {
        Expr::Meta { key, dreg } => key_and_register(out, key.number(), META_DREG, *dreg),
        Expr::MetaSet { key, sreg } => key_and_register(out, key.number(), META_SREG, *sreg),
        Expr::Payload {
            dreg,
            base,
            offset,
            len,
        } => {
            out.put_u32(1, dreg.0);
            out.put_u32(2, base.number());
            out.put_u32(3, *offset);
            out.put_u32(4, *len);
        }
        Expr::Cmp { sreg, op, data } => {
            out.put_u32(1, sreg.0);
            out.put_u32(2, op.number());
            out.nest(3, |out| out.put(DATA_VALUE, data));
        }
        Expr::Bitwise {
            sreg,
            dreg,
            len,
            mask,
            xor,
        } => {
            out.put_u32(1, sreg.0);
            out.put_u32(2, dreg.0);
            out.put_u32(3, *len);
            out.nest(4, |out| out.put(DATA_VALUE, mask));
            out.nest(5, |out| out.put(DATA_VALUE, xor));
        }
        Expr::Lookup { sreg, invert, .. } => {
            out.put_u32(2, sreg.0);
            out.put_str(1, ANONYMOUS_SET_NAME);
            if let Some(id) = set_id {
                out.put_u32(4, id);
            }
            if *invert {
                out.put_u32(5, 1);
            }
        }
        Expr::Immediate { dreg, data } => {
            out.put_u32(1, dreg.0);
            out.nest(2, |out| out.put(DATA_VALUE, data));
        }
        Expr::Verdict(verdict) => {
            out.put_u32(1, 0);
            out.nest(2, |out| out.nest(DATA_VERDICT, |out| verdict_attrs(out, verdict)));
        }
        Expr::Counter => {}
        Expr::Redirect {
            proto_min,
            proto_max,
            flags,
        } => {
            if let Some(reg) = proto_min {
                out.put_u32(1, reg.0);
            }
            if let Some(reg) = proto_max {
                out.put_u32(2, reg.0);
            }
            if *flags != 0 {
                out.put_u32(3, *flags);
            }
        }
        Expr::Tproxy { family, addr, port } => {
            out.put_u32(1, u32::from(family.number()));
            if let Some(reg) = addr {
                out.put_u32(2, reg.0);
            }
            if let Some(reg) = port {
                out.put_u32(3, reg.0);
            }
        }
        Expr::Ct { key, dreg } => key_and_register(out, key.number(), CT_DREG, *dreg),
        Expr::CtSet { key, sreg } => key_and_register(out, key.number(), CT_SREG, *sreg),
        Expr::Unknown { .. } => unreachable!("written above"),
    });
}

/// The attributes of a `meta` or `ct` expression, which share a layout: the key, then the
/// register it is loaded into or set from.
fn key_and_register(out: &mut Writer, key: u32, register_attr: u16, register: Register) {
    out.put_u32(KEY_AND_REGISTER_KEY, key);
    out.put_u32(register_attr, register.0);
}

fn verdict_attrs(out: &mut Writer, verdict: &Verdict) {
    let (code, chain): (i32, Option<&str>) = match verdict {
        Verdict::Accept => (1, None),
        Verdict::Drop => (0, None),
        Verdict::Continue => (-1, None),
        Verdict::Return => (-5, None),
        Verdict::Jump(chain) => (-3, Some(chain)),
        Verdict::Goto(chain) => (-4, Some(chain)),
    };
    out.put(VERDICT_CODE, &code.to_be_bytes());
    if let Some(chain) = chain {
        out.put_str(VERDICT_CHAIN, chain);
    }
}

/// A request for a listing (`NLM_F_DUMP`) or the generation, with its filter attributes.
pub(super) fn request(kind: u8, seq: u32, family: NfProto, attrs: &[(u16, &str)]) -> Vec<u8> {
    let mut out = Writer::default();
    let dump = if kind == msg::GETGEN { 0 } else { NLM_F_DUMP };
    out.message(
        nft_type(kind),
        NLM_F_REQUEST | dump,
        seq,
        family.number(),
        0,
        |out| {
            for (kind, value) in attrs {
                out.put_str(*kind, value);
            }
        },
    );
    out.into_bytes()
}
