//! Unprivileged tests: what the encoder writes decodes to what was encoded, for every
//! expression kind; nft's value conventions; answers and error text. The kernel and nft
//! themselves are in `capture-core/tests/nfnetlink`.

use std::cell::Cell;
use std::net::Ipv6Addr;

use super::attr::{Message, Writer};
use super::encode::{self, msg, nft_type};
use super::socket::Owned;
use super::*;

fn inet_chain(name: &str) -> Chain {
    Chain {
        family: NfProto::Inet,
        table: "t".into(),
        name: name.into(),
        base: None,
    }
}

/// One rule with every expression kind, and a table and chains for it.
fn everything() -> Batch {
    let table = Table::new(NfProto::Inet, "t");
    let base = Chain {
        base: Some(BaseChain {
            kind: ChainType::Nat,
            hook: Hook::Output,
            priority: -100,
            policy: Policy::Drop,
        }),
        ..inet_chain("output")
    };
    let exprs = vec![
        Expr::meta(MetaKey::Oifname),
        Expr::cmp(CmpOp::Neq, ifname("lo")),
        Expr::payload(PayloadBase::Transport, 2, 2),
        Expr::Lookup {
            sreg: Register::R1,
            set: Set::ports(L4Proto::Tcp, PortField::Destination, [53, 15008]),
            invert: true,
        },
        Expr::Lookup {
            sreg: Register::R1,
            set: Set::ports(L4Proto::Udp, PortField::Source, [15053]),
            invert: false,
        },
        Expr::ct_state(CtState::NEW)[1].clone(),
        Expr::immediate(15001_u16.to_be_bytes()),
        Expr::Redirect {
            proto_min: Some(Register::R1),
            proto_max: None,
            flags: Expr::NAT_RANGE_PROTO_SPECIFIED,
        },
        Expr::Tproxy {
            family: NfProto::Ipv6,
            addr: None,
            port: Some(Register::R1),
        },
        Expr::Ct {
            key: CtKey::Mark,
            dreg: Register::R1,
        },
        Expr::CtSet {
            key: CtKey::Zone,
            sreg: Register::R1,
        },
        Expr::MetaSet {
            key: MetaKey::Mark,
            sreg: Register::R1,
        },
        Expr::Counter,
        Expr::Verdict(Verdict::Goto("c".into())),
    ];
    let mut batch = Batch::new();
    batch
        .add_table(table)
        .add_chain(base.clone())
        .add_chain(inet_chain("c"));
    batch.add_rule(Rule::new(&base, exprs));
    for verdict in [
        Verdict::Accept,
        Verdict::Drop,
        Verdict::Continue,
        Verdict::Return,
        Verdict::Jump("c".into()),
    ] {
        batch.add_rule(Rule {
            userdata: Some(Bytes::from(&b"\x00\x03hi\x00"[..])),
            ..Rule::new(&base, vec![Expr::Verdict(verdict)])
        });
    }
    batch
}

/// Decodes a batch's own messages as if the kernel had listed them.
fn decode_batch(bytes: &[u8]) -> (Vec<Table>, Vec<Chain>, Vec<Rule>) {
    let (mut tables, mut chains, mut rules) = (Vec::new(), Vec::new(), Vec::new());
    let mut sets: Vec<Set> = Vec::new();
    for message in Message::split(bytes).unwrap() {
        let Ok((family, attrs)) = message.nf_tables() else {
            continue;
        };
        let owned = Owned {
            family,
            attrs: attrs.0.to_vec(),
        };
        match message.kind {
            k if k == nft_type(msg::NEWTABLE) => tables.push(decode::table(&owned).unwrap()),
            k if k == nft_type(msg::NEWCHAIN) => chains.push(decode::chain(&owned).unwrap()),
            k if k == nft_type(msg::NEWSET) => sets.push(decode::set(&owned).unwrap().set.unwrap()),
            k if k == nft_type(msg::NEWSETELEM) => {
                let keys = decode::elements(&owned).unwrap().unwrap();
                sets.last_mut().unwrap().elements.extend(keys);
            }
            k if k == nft_type(msg::NEWRULE) => {
                // Every anonymous set is "__set%d" in a batch: the lookups take them in turn.
                let next = Cell::new(0);
                let rule = decode::rule(&owned, |name| {
                    assert_eq!(name, encode::ANONYMOUS_SET_NAME);
                    next.set(next.get() + 1);
                    sets.get(next.get() - 1)
                })
                .unwrap();
                sets.drain(..next.get());
                rules.push(rule);
            }
            _ => {}
        }
    }
    (tables, chains, rules)
}

#[test]
fn every_expression_decodes_to_what_was_encoded() {
    let batch = everything();
    let (tables, chains, rules) = decode_batch(&batch.encode().unwrap());
    let mut expected = (Vec::new(), Vec::new(), Vec::new());
    for op in batch.ops() {
        match op {
            Op::AddTable(t) => expected.0.push(t.clone()),
            Op::AddChain(c) => expected.1.push(c.clone()),
            Op::AddRule(r) => expected.2.push(r.clone()),
            _ => unreachable!(),
        }
    }
    assert_eq!((tables, chains, rules), expected);
}

#[test]
fn unknown_expressions_are_kept_as_listed() {
    // `log prefix "x"`: NFTA_LOG_PREFIX (2) "x".
    let mut data = Writer::default();
    data.put_str(2, "x");
    let log = Expr::Unknown {
        name: "log".into(),
        data: Bytes(data.into_bytes()),
    };
    // A payload write (with SREG) is a form this module does not model.
    let mut write = Writer::default();
    write.put_u32(5, 1);
    write.put_u32(2, 1);
    write.put_u32(3, 8);
    write.put_u32(4, 1);
    let payload_write = Expr::Unknown {
        name: "payload".into(),
        data: Bytes(write.into_bytes()),
    };
    let mut batch = Batch::new();
    batch.add_rule(Rule::new(&inet_chain("c"), vec![log, payload_write]));
    let (_, _, rules) = decode_batch(&batch.encode().unwrap());
    assert_eq!(rules, [Rule::new(&inet_chain("c"), batch_rule_exprs(&batch))]);
}

fn batch_rule_exprs(batch: &Batch) -> Vec<Expr> {
    match &batch.ops()[0] {
        Op::AddRule(rule) => rule.exprs.clone(),
        _ => unreachable!(),
    }
}

#[test]
fn redirect_lists_without_the_kernels_copy_of_its_register() {
    // The kernel lists REG_PROTO_MAX = REG_PROTO_MIN when only the minimum was given.
    let mut data = Writer::default();
    data.put_u32(1, 1);
    data.put_u32(2, 1);
    data.put_u32(3, 2);
    let mut rule = Writer::default();
    rule.message(nft_type(msg::NEWRULE), 0, 0, 1, 0, |rule| {
        rule.put_str(1, "t");
        rule.put_str(2, "c");
        rule.nest(4, |w| {
            w.nest(1, |w| {
                w.put_str(1, "redir");
                w.put(2 | 0x8000, &data.into_bytes());
            });
        });
    });
    let (_, _, rules) = decode_batch(&rule.into_bytes());
    assert_eq!(
        rules[0].exprs,
        [Expr::Redirect {
            proto_min: Some(Register::R1),
            proto_max: None,
            flags: 2
        }]
    );
}

#[test]
fn prefixes_load_what_nft_loads() {
    use CmpOp::Eq;
    let network = |offset, len| Expr::payload(PayloadBase::Network, offset, len);
    let mask = |m: &[u8]| Expr::Bitwise {
        sreg: Register::R1,
        dreg: Register::R1,
        len: u32::try_from(m.len()).unwrap(),
        mask: Bytes::from(m),
        xor: Bytes(vec![0; m.len()]),
    };
    // Whole bytes: only those, host bits cleared (127.0.0.1/8 is 127.0.0.0/8).
    assert_eq!(
        Expr::prefix(16, &[127, 0, 0, 1], 8, Eq),
        [network(16, 1), Expr::cmp(Eq, [127])]
    );
    assert_eq!(
        Expr::prefix(12, &[127, 0, 0, 6], 32, Eq),
        [network(12, 4), Expr::cmp(Eq, [127, 0, 0, 6])]
    );
    // Inside a byte, and /0: the whole address, masked.
    assert_eq!(
        Expr::prefix(16, &[10, 31, 0, 0], 12, Eq),
        [
            network(16, 4),
            mask(&[0xff, 0xf0, 0, 0]),
            Expr::cmp(Eq, [10, 16, 0, 0])
        ]
    );
    assert_eq!(
        Expr::prefix(16, &[1, 2, 3, 4], 0, Eq),
        [network(16, 4), mask(&[0; 4]), Expr::cmp(Eq, [0; 4])]
    );
    let v6: Ipv6Addr = "2001:db8::1".parse().unwrap();
    assert_eq!(
        Expr::prefix(24, &v6.octets(), 32, Eq),
        [network(24, 4), Expr::cmp(Eq, [0x20, 0x01, 0x0d, 0xb8])]
    );
    assert_eq!(Expr::prefix(24, &v6.octets(), 128, Eq).len(), 2);
}

#[test]
fn interface_names_are_sixteen_padded_bytes() {
    assert_eq!(ifname("lo").0, b"lo\0\0\0\0\0\0\0\0\0\0\0\0\0\0");
    assert_eq!(ifname("not-istio-nic").len(), 16);
    assert_eq!(&ifname("a-name-too-long-for-linux")[..], b"a-name-too-long\0");
}

#[test]
fn ct_state_masks_in_host_order() {
    let [load, mask, cmp] = Expr::ct_state(CtState::RELATED | CtState::ESTABLISHED);
    assert_eq!(
        load,
        Expr::Ct {
            key: CtKey::State,
            dreg: Register::R1
        }
    );
    assert!(matches!(mask, Expr::Bitwise { mask, .. } if mask.0 == 6_u32.to_ne_bytes()));
    assert_eq!(cmp, Expr::cmp(CmpOp::Neq, [0; 4]));
}

/// An `NLMSG_ERROR` answering message `seq` with `errno`, an extended acknowledgement text and
/// the offset of the blamed attribute.
fn refusal(seq: u32, errno: i32, text: &str, offset: u32) -> Vec<u8> {
    let mut out = Writer::default();
    out.message(2, 0x100 | 0x200, seq, 0, 0, |_| {});
    // message wrote an nfgenmsg after the 16-byte nlmsghdr; an error message has the code
    // there instead.
    let mut bytes = out.into_bytes();
    bytes.truncate(16);
    bytes.extend_from_slice(&(-errno).to_ne_bytes());
    // The answered message's header, capped.
    bytes.extend_from_slice(&36_u32.to_ne_bytes());
    bytes.extend_from_slice(&nft_type(msg::NEWRULE).to_ne_bytes());
    bytes.extend_from_slice(&0_u16.to_ne_bytes());
    bytes.extend_from_slice(&seq.to_ne_bytes());
    bytes.extend_from_slice(&0_u32.to_ne_bytes());
    let mut tlvs = Writer::default();
    tlvs.put_str(1, text);
    tlvs.put(2, &offset.to_ne_bytes());
    bytes.extend_from_slice(&tlvs.into_bytes());
    let len = u32::try_from(bytes.len()).unwrap();
    bytes[..4].copy_from_slice(&len.to_ne_bytes());
    bytes
}

#[test]
fn refusal_names_the_rule_and_the_expression() {
    let batch = everything();
    let encoded = encode::encode(&batch, 1).unwrap();
    let rule = encoded
        .sent
        .iter()
        .find(|s| matches!(s.subject, Subject::AddRule { number: 1, .. }))
        .unwrap();
    // The kernel blames the fourth expression (the second lookup).
    let (begin, _, _) = rule.exprs[3];
    let answer = refusal(rule.seq, libc::ENOENT, "", u32::try_from(begin + 4).unwrap());
    let err = socket::blame(&encoded, &Message::split(&answer).unwrap(), None).unwrap_err();
    assert_eq!(
        err.to_string(),
        "adding rule 1 in inet t output (expression 4: lookup) failed: ENOENT: No such file or directory"
    );
    let answer = refusal(rule.seq - 1, libc::EINVAL, "bad set", 0);
    let err = socket::blame(&encoded, &Message::split(&answer).unwrap(), None).unwrap_err();
    assert_eq!(
        err.to_string(),
        "adding the anonymous set of rule 1 in inet t output failed: EINVAL: Invalid argument (kernel: bad set)"
    );
    // An error for the begin message: the batch as a whole.
    let answer = refusal(1, libc::EPERM, "", 0);
    let err = socket::blame(&encoded, &Message::split(&answer).unwrap(), None).unwrap_err();
    assert_eq!(
        err.to_string(),
        "committing the batch failed: EPERM: Operation not permitted (needs CAP_NET_ADMIN in the network namespace)"
    );
    let answer = refusal(1, libc::ERESTART, "", 0);
    let err = socket::blame(&encoded, &Message::split(&answer).unwrap(), Some(7)).unwrap_err();
    assert!(matches!(err, Error::Changed { expected: 7 }), "{err:?}");
    // No acknowledgement of the last message, and no error: the verdict was lost.
    let last = encoded.sent.last().unwrap().seq;
    let err = socket::blame(&encoded, &[], None).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "the kernel did not acknowledge the batch's last message (sequence {last}) and reported no error"
        )
    );
    let ack = refusal(last, 0, "", 0);
    socket::blame(&encoded, &Message::split(&ack).unwrap(), None).unwrap();
}

#[test]
fn only_the_last_message_of_a_batch_asks_for_an_acknowledgement() {
    let encoded = encode::encode(&everything(), 1).unwrap();
    let messages = Message::split(&encoded.bytes).unwrap();
    let asking: Vec<u32> = messages
        .iter()
        .filter(|m| m.flags & encode::NLM_F_ACK != 0)
        .map(|m| m.seq)
        .collect();
    assert_eq!(asking, [encoded.sent.last().unwrap().seq]);
    assert!(messages.len() > 3, "begin, several messages, end");
}

#[test]
fn subjects_read_like_nft_commands() {
    let subject = Subject::AddChain {
        family: NfProto::Ipv6,
        table: "x".into(),
        chain: "y".into(),
    };
    assert_eq!(subject.to_string(), "adding chain ip6 x y");
    let subject = Subject::List {
        what: "rules",
        family: NfProto::Inet,
    };
    assert_eq!(subject.to_string(), "listing the rules of family inet");
    assert_eq!(
        Subject::FlushTable {
            family: NfProto::Inet,
            table: "t".into()
        }
        .to_string(),
        "flushing table inet t"
    );
}
