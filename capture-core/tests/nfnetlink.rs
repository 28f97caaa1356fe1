//! The nf_tables netlink layer against the real kernel and Debian's nft 1.0.x.
//!
//! Every test runs in fresh network namespaces private to a thread
//! (`capture_core::host::run_in_scratch_netns`), which die with it: the machine's own ruleset is
//! never read or touched, and nothing is left behind. Needs root (skipped otherwise, failing when
//! `CI` is set) and the `nft` binary, which only the tests run: to load Istio's goldens as Istio
//! does, and to print what the kernel holds as nft sees it.

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use capture_core::host::{RunError, run_in_scratch_netns};
use capture_core::nfnetlink::{
    BaseChain, Batch, Bytes, Chain, ChainType, CmpOp, CtKey, CtState, Error, Expr, Hook, L4Proto, Listing,
    MetaKey, NfProto, PayloadBase, Policy, PortField, Position, Register, Rule, Set, Subject, Table, Verdict,
    ifname, list,
};
use nix::errno::Errno;

#[derive(Debug)]
struct Failed(RunError);

impl From<RunError> for Failed {
    fn from(e: RunError) -> Self {
        Self(e)
    }
}

/// Runs `body` in a new, empty network namespace; `None` (after saying so) when not root,
/// unless `CI` is set: there a skipped privileged test would hide a broken setup.
fn in_scratch_netns<T: Send>(test: &str, body: impl FnOnce() -> T + Send) -> Option<T> {
    if !nix::unistd::geteuid().is_root() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{test}: needs root, and CI is set"
        );
        eprintln!("skipping {test}: needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN)");
        return None;
    }
    match run_in_scratch_netns(|| Ok::<_, Failed>(body())) {
        Ok(value) => Some(value),
        Err(Failed(RunError::Panicked(message))) => panic!("{test}: {message}"),
        Err(Failed(e)) => panic!("{test}: {}", capture_core::chain(&e)),
    }
}

/// Runs nft in the calling thread's namespace (a child inherits its thread's namespaces).
fn nft(args: &[&str]) -> String {
    let out = Command::new("nft")
        .args(args)
        .output()
        .expect("run nft (scripts/setup installs the nftables package)");
    assert!(
        out.status.success(),
        "nft {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("nft prints UTF-8")
}

fn ruleset() -> String {
    nft(&["list", "ruleset"])
}

fn golden(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata/istio/nftables/capture")
        .join(format!("{name}.golden"))
}

fn goldens() -> Vec<String> {
    let dir = golden("x").parent().unwrap().to_owned();
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter_map(|n| n.strip_suffix(".golden").map(str::to_owned))
        .collect();
    names.sort();
    names
}

#[track_caller]
fn assert_same_text(what: &str, expected: &str, actual: &str) {
    if expected != actual {
        let diff = similar::TextDiff::from_lines(expected, actual);
        panic!("{what}\n{}", diff.unified_diff().header("expected", "actual"));
    }
}

fn inet_table(name: &str) -> Table {
    Table::new(NfProto::Inet, name)
}

fn chain(table: &Table, name: &str, base: Option<(ChainType, Hook, i32)>) -> Chain {
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

fn l4proto(proto: L4Proto) -> [Expr; 2] {
    [
        Expr::meta(MetaKey::L4proto),
        Expr::cmp(CmpOp::Eq, [proto.number()]),
    ]
}

fn nfproto(family: NfProto) -> [Expr; 2] {
    [
        Expr::meta(MetaKey::Nfproto),
        Expr::cmp(CmpOp::Eq, [family.number()]),
    ]
}

fn owner(key: MetaKey, op: CmpOp, id: u32) -> [Expr; 2] {
    [Expr::meta(key), Expr::cmp(op, id.to_ne_bytes())]
}

fn port(field: PortField, op: CmpOp, port: u16) -> [Expr; 2] {
    [
        Expr::payload(PayloadBase::Transport, field.offset(), 2),
        Expr::cmp(op, port.to_be_bytes()),
    ]
}

fn ports_not_in(field: PortField, ports: &[u16]) -> [Expr; 2] {
    [
        Expr::payload(PayloadBase::Transport, field.offset(), 2),
        Expr::Lookup {
            sreg: Register::R1,
            set: Set::ports(L4Proto::Tcp, field, ports.iter().copied()),
            invert: true,
        },
    ]
}

fn redirect(to: u16) -> [Expr; 2] {
    [
        Expr::immediate(to.to_be_bytes()),
        Expr::Redirect {
            proto_min: Some(Register::R1),
            proto_max: None,
            flags: Expr::NAT_RANGE_PROTO_SPECIFIED,
        },
    ]
}

fn set_mark(mark: u32) -> [Expr; 2] {
    [
        Expr::immediate(mark.to_ne_bytes()),
        Expr::MetaSet {
            key: MetaKey::Mark,
            sreg: Register::R1,
        },
    ]
}

/// `ip daddr`/`ip saddr` (offset 16/12) with nft's `meta nfproto ipv4` before it.
fn ip4(offset: u32, addr: [u8; 4], prefix: u8, op: CmpOp) -> Vec<Expr> {
    let mut exprs = nfproto(NfProto::Ipv4).to_vec();
    exprs.extend(Expr::prefix(offset, &addr, prefix, op));
    exprs
}

/// `ip6 daddr`/`ip6 saddr` (offset 24/8) with nft's `meta nfproto ipv6` before it.
fn ip6(offset: u32, addr: std::net::Ipv6Addr, prefix: u8, op: CmpOp) -> Vec<Expr> {
    let mut exprs = nfproto(NfProto::Ipv6).to_vec();
    exprs.extend(Expr::prefix(offset, &addr.octets(), prefix, op));
    exprs
}

fn rule(chain: &Chain, parts: &[&[Expr]]) -> Rule {
    Rule::new(chain, parts.concat())
}

const COUNTER: &[Expr] = &[Expr::Counter];

fn verdict(v: Verdict) -> [Expr; 1] {
    [Expr::Verdict(v)]
}

/// Every expression kind, in a table with base and regular chains.
fn every_kind() -> (Vec<Table>, Vec<Chain>, Vec<Rule>) {
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
        rule(
            &pre,
            &[&[
                Expr::meta(MetaKey::Mark),
                Expr::CtSet {
                    key: CtKey::Mark,
                    sreg: Register::R1,
                },
            ]],
        ),
        rule(
            &route,
            &[&[
                Expr::Ct {
                    key: CtKey::Mark,
                    dreg: Register::R1,
                },
                Expr::cmp(CmpOp::Eq, 1337_u32.to_ne_bytes()),
                Expr::Ct {
                    key: CtKey::Mark,
                    dreg: Register::R1,
                },
                Expr::MetaSet {
                    key: MetaKey::Mark,
                    sreg: Register::R1,
                },
            ]],
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

/// What nft 1.0.x prints for [`every_kind`].
const EVERY_KIND: &str = r#"table inet capture-test {
	chain prerouting {
		type filter hook prerouting priority mangle; policy accept;
		meta l4proto tcp ct state established,related counter packets 0 bytes 0 jump istio-divert
		meta l4proto tcp ip daddr != 127.0.0.1 tproxy ip to :15006 meta mark set 0x00000539 counter packets 0 bytes 0 accept
		ct mark set meta mark
	}

	chain output {
		type nat hook output priority -100; policy accept;
		oifname "lo" counter packets 0 bytes 0 jump istio-output
	}

	chain route-out {
		type route hook output priority mangle; policy accept;
		ct mark 0x00000539 meta mark set ct mark
		udp dport 53 ct zone set 1
	}

	chain input {
		type filter hook input priority filter; policy drop;
		ct state invalid counter packets 0 bytes 0 drop
	}

	chain istio-output {
		iifname != "eth0" counter packets 0 bytes 0 return
		ip daddr != 127.0.0.1 tcp dport != { 53, 15008 } meta skuid 1337 counter packets 0 bytes 0 redirect to :15001
		ip daddr 10.16.0.0/12 meta skgid != 1337 goto istio-divert
		ip6 daddr 2001:db8::/32 counter packets 0 bytes 0 accept
	}

	chain istio-divert {
		meta mark 0x00000539 meta mark set 0x0000053a
	}
}
"#;

/// [`every_kind`] in nft's syntax.
const EVERY_KIND_SCRIPT: &str = r#"add table inet capture-test
add chain inet capture-test prerouting { type filter hook prerouting priority -150 ; }
add chain inet capture-test output { type nat hook output priority -100 ; }
add chain inet capture-test route-out { type route hook output priority -150 ; }
add chain inet capture-test input { type filter hook input priority 0 ; policy drop ; }
add chain inet capture-test istio-output
add chain inet capture-test istio-divert
add rule inet capture-test output oifname lo counter jump istio-output
add rule inet capture-test istio-output iifname != eth0 counter return
add rule inet capture-test istio-output meta l4proto tcp ip daddr != 127.0.0.1/32 tcp dport != { 53, 15008 } skuid 1337 counter redirect to :15001
add rule inet capture-test istio-output ip daddr 10.16.0.0/12 skgid != 1337 goto istio-divert
add rule inet capture-test istio-output ip6 daddr 2001:db8::/32 counter accept
add rule inet capture-test istio-divert mark 1337 meta mark set 1338
add rule inet capture-test prerouting meta l4proto tcp ct state related,established counter jump istio-divert
add rule inet capture-test prerouting meta l4proto tcp ip daddr != 127.0.0.1/32 tproxy ip to :15006 meta mark set 1337 counter accept
add rule inet capture-test prerouting ct mark set mark
add rule inet capture-test route-out ct mark 1337 meta mark set ct mark
add rule inet capture-test route-out udp dport 53 ct zone set 1
add rule inet capture-test input ct state invalid counter drop
"#;

/// That `listing` holds exactly these objects, rules listed chain by chain; names the first
/// difference.
#[track_caller]
fn assert_listed(listing: &Listing, tables: &[Table], chains: &[Chain], rules: &[Rule]) {
    assert_eq!(listing.tables, tables);
    assert_eq!(listing.chains, chains);
    let mut expected = Vec::new();
    for chain in chains {
        expected.extend(
            rules
                .iter()
                .filter(|r| (r.family, &r.table, &r.chain) == (chain.family, &chain.table, &chain.name)),
        );
    }
    for (i, (listed, rule)) in listing.rules.iter().zip(&expected).enumerate() {
        assert_eq!(listed, *rule, "rule {i} of the listing");
    }
    assert_eq!(listing.rules.len(), expected.len(), "number of rules");
}

fn commit_all(tables: &[Table], chains: &[Chain], rules: &[Rule]) {
    let mut batch = Batch::new();
    for t in tables {
        batch.add_table(t.clone());
    }
    for c in chains {
        batch.add_chain(c.clone());
    }
    for r in rules {
        batch.add_rule(r.clone());
    }
    batch
        .commit()
        .unwrap_or_else(|e| panic!("{}", capture_core::chain(&e)));
}

#[test]
fn every_expression_kind_lists_as_nft_prints_it() {
    let test = "every_expression_kind_lists_as_nft_prints_it";
    let Some(ours) = in_scratch_netns(test, || {
        let (tables, chains, rules) = every_kind();
        commit_all(&tables, &chains, &rules);
        assert_listed(&list(NfProto::Inet, None).unwrap(), &tables, &chains, &rules);
        ruleset()
    }) else {
        return;
    };
    assert_same_text("nft list ruleset after our batch", EVERY_KIND, &ours);
    // nft's own encoding of the same rules lists the same, and decodes to the same objects.
    let theirs = in_scratch_netns(test, || {
        load(EVERY_KIND_SCRIPT);
        let (tables, chains, rules) = every_kind();
        assert_listed(&list(NfProto::Inet, None).unwrap(), &tables, &chains, &rules);
        ruleset()
    })
    .unwrap();
    assert_same_text("nft list ruleset after nft -f", EVERY_KIND, &theirs);
}

/// `nft -f` of a script.
fn load(script: &str) {
    let file = tempfile(script);
    nft(&["-f", file.to_str().unwrap()]);
    fs::remove_file(file).unwrap();
}

fn tempfile(text: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "capture-nfnetlink-{}-{:?}.nft",
        std::process::id(),
        std::thread::current().id()
    ));
    fs::write(&path, text).unwrap();
    path
}
