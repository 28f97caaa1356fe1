use std::net::SocketAddr;

use super::*;
use crate::spec::{DnsCapture, InterceptMode, OutboundCidrs};
use crate::types::{Mark, PortRange, RouteTable};

fn out(dst: &str, uid: u32) -> Connection {
    Connection::outbound_tcp(dst.parse().unwrap(), uid)
}

fn inb(dst: &str) -> Connection {
    Connection {
        direction: Direction::Inbound,
        src: Some("10.0.0.9".parse().unwrap()),
        uid: 0,
        gid: 0,
        ..out(dst, 0)
    }
}

fn captured(port: u16, dst: &str) -> Verdict {
    Verdict::Captured {
        port: Port::new(port),
        original_dst: dst.parse::<SocketAddr>().unwrap(),
    }
}

/// Every backend the walk covers agrees, and names the reason.
#[track_caller]
fn both(spec: &CaptureSpec, conn: &Connection, verdict: Verdict, reason: Reason) -> Explanation {
    let ipt = iptables(spec, conn);
    assert_eq!((ipt.verdict, ipt.reason), (verdict, reason), "iptables: {ipt:#?}");
    let nft = nftables(spec, conn);
    assert_eq!((nft.verdict, nft.reason), (verdict, reason), "nftables: {nft:#?}");
    ipt
}

#[test]
fn sidecar_outbound() {
    let spec = CaptureSpec::sidecar();
    let e = both(
        &spec,
        &out("10.1.0.2:80", 1000),
        captured(15001, "10.1.0.2:80"),
        Reason::Outbound,
    );
    assert_eq!(
        e.rule.unwrap().rule,
        "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001"
    );
    assert_eq!(
        e.path.iter().map(|s| s.rule.as_str()).collect::<Vec<_>>(),
        [
            "-A OUTPUT -j ISTIO_OUTPUT",
            "-A ISTIO_OUTPUT -j ISTIO_REDIRECT",
            "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001"
        ]
    );
    let e = both(
        &spec,
        &out("10.1.0.2:80", 1337),
        Verdict::Bypassed,
        Reason::ProxyUid,
    );
    assert_eq!(
        e.rule.unwrap().rule,
        "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN"
    );
    let mut odd = out("10.1.0.2:80", 1000);
    odd.gid = 1337;
    both(&spec, &odd, Verdict::Bypassed, Reason::ProxyGid);
    both(
        &spec,
        &out("127.0.0.1:8080", 1000),
        Verdict::Bypassed,
        Reason::LocalToSelf,
    );
    let mut udp = out("10.1.0.2:9999", 1000);
    udp.proto = Proto::Udp;
    both(&spec, &udp, Verdict::Bypassed, Reason::NotIncluded);
    // IPv6 without IPv6 capture: no ip6tables rules at all. (Native nftables' inet tables
    // still capture it.)
    let v6 = out("[fd00::2]:80", 1000);
    assert_eq!(iptables(&spec, &v6).reason, Reason::NoCapture);
    assert_eq!(nftables(&spec, &v6).verdict, captured(15001, "[fd00::2]:80"));
    // A v4-mapped destination is IPv4.
    let e = iptables(&spec, &out("[::ffff:10.1.0.2]:80", 1000));
    assert_eq!(e.verdict, captured(15001, "10.1.0.2:80"));
}

#[test]
fn excluded_ports_cidrs_and_includes() {
    let mut spec = CaptureSpec::sidecar();
    spec.outbound.exclude_ports = vec![PortRange::single(Port::new(81))];
    spec.outbound.exclude_cidrs = vec!["10.2.0.0/16".parse().unwrap()];
    let e = both(
        &spec,
        &out("10.1.0.2:81", 1000),
        Verdict::Bypassed,
        Reason::ExcludedPort,
    );
    assert_eq!(
        e.rule.unwrap().rule,
        "-A ISTIO_OUTPUT -p tcp -m tcp --dport 81 -j RETURN"
    );
    both(
        &spec,
        &out("10.2.3.4:80", 1000),
        Verdict::Bypassed,
        Reason::ExcludedCidr,
    );
    spec.outbound.include = OutboundCidrs::Only(vec!["10.3.0.0/16".parse().unwrap()]);
    spec.outbound.include_ports = vec![PortRange::single(Port::new(82))];
    both(
        &spec,
        &out("10.1.0.2:80", 1000),
        Verdict::Bypassed,
        Reason::NotIncluded,
    );
    both(
        &spec,
        &out("10.3.0.1:80", 1000),
        captured(15001, "10.3.0.1:80"),
        Reason::Outbound,
    );
    both(
        &spec,
        &out("10.1.0.2:82", 1000),
        captured(15001, "10.1.0.2:82"),
        Reason::Outbound,
    );
}

#[test]
fn inbound_redirect_and_tproxy() {
    let spec = CaptureSpec::sidecar();
    let e = both(
        &spec,
        &inb("10.1.0.1:8080"),
        captured(15006, "10.1.0.1:8080"),
        Reason::Inbound,
    );
    assert_eq!(
        e.rule.unwrap().rule,
        "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006"
    );
    both(
        &spec,
        &inb("10.1.0.1:15021"),
        Verdict::Bypassed,
        Reason::ExcludedInboundPort,
    );
    both(
        &spec,
        &inb("10.1.0.1:15008"),
        Verdict::Bypassed,
        Reason::TunnelPort,
    );
    let mut off = spec.clone();
    off.inbound.ports = crate::InboundPorts::Off;
    both(&off, &inb("10.1.0.1:8080"), Verdict::Bypassed, Reason::NoCapture);

    let mut tproxy = spec.clone();
    tproxy.inbound.mode = InterceptMode::Tproxy {
        mark: Mark::new(1337),
        route_table: RouteTable::new(133),
    };
    let e = both(
        &tproxy,
        &inb("10.1.0.1:8080"),
        captured(15006, "10.1.0.1:8080"),
        Reason::Inbound,
    );
    assert!(e.rule.unwrap().rule.contains("-j TPROXY --on-port 15006"));
    // The app calling its own pod over lo is not diverted on the way back in.
    let mut own = out("10.1.0.1:8080", 1000);
    own.iface = Some("lo".parse().unwrap());
    both(&tproxy, &own, Verdict::Bypassed, Reason::LocalToSelf);
    // The proxy calling its own pod: the hairpin to the inbound port.
    own.uid = 1337;
    own.gid = 1337;
    both(&tproxy, &own, captured(15006, "10.1.0.1:8080"), Reason::Hairpin);
    both(&spec, &own, captured(15006, "10.1.0.1:8080"), Reason::Hairpin);
}

#[test]
fn dns() {
    let mut spec = CaptureSpec::sidecar();
    spec.dns = Some(DnsCapture::Only(vec!["10.96.0.10".parse().unwrap()]));
    let mut q = out("10.96.0.10:53", 1000);
    q.proto = Proto::Udp;
    let e = both(
        &spec,
        &q,
        Verdict::Dns {
            port: Port::new(15053),
            original_dst: "10.96.0.10:53".parse().unwrap(),
        },
        Reason::Dns,
    );
    assert_eq!(
        e.rule.unwrap().rule,
        "-A ISTIO_OUTPUT_DNS -d 10.96.0.10/32 -p udp -m udp --dport 53 -j REDIRECT --to-ports 15053"
    );
    q.uid = 1337;
    q.gid = 1337;
    both(&spec, &q, Verdict::Bypassed, Reason::ProxyUid);
    let mut other = out("10.96.0.11:53", 1000);
    other.proto = Proto::Udp;
    both(&spec, &other, Verdict::Bypassed, Reason::NotIncluded);
}

#[test]
fn saved_rules_read_back_walk_the_same() {
    let mut spec = CaptureSpec::sidecar();
    spec.outbound.exclude_ports = vec![PortRange::single(Port::new(81))];
    spec.dns = Some(DnsCapture::All);
    spec.inbound.mode = InterceptMode::Tproxy {
        mark: Mark::new(1337),
        route_table: RouteTable::new(133),
    };
    let rules = crate::plan(&spec, Family::V4);
    let pure = Walk::from_rules(&rules);
    let saves: Vec<(crate::TableName, std::collections::BTreeMap<String, Vec<String>>)> =
        pure.tables_for_test().into_iter().collect();
    let read = Walk::from_saves(saves.iter().map(|(t, c)| (*t, c)), Family::V4);
    assert!(read.notes_for_test().is_empty(), "{:?}", read.notes_for_test());
    for conn in [
        out("10.1.0.2:80", 1000),
        out("10.1.0.2:81", 1000),
        out("10.1.0.2:80", 1337),
        inb("10.1.0.1:8080"),
        inb("10.1.0.1:15020"),
    ] {
        assert_eq!(
            read.explain("iptables", Some(&spec), &conn),
            pure.explain("iptables", Some(&spec), &conn),
            "{conn:?}"
        );
    }
    // A rule with an option the walk does not know is reported and never matches.
    let mut chains = std::collections::BTreeMap::new();
    chains.insert(
        "OUTPUT".to_owned(),
        vec!["-m statistic --mode random -j ISTIO_OUTPUT".to_owned()],
    );
    let odd = Walk::from_saves([(crate::TableName::Nat, &chains)], Family::V4);
    let e = odd.explain("iptables", None, &out("10.1.0.2:80", 1000));
    assert_eq!(e.reason, Reason::NoCapture);
    assert!(
        e.notes[0].contains("not understood (\"statistic\")"),
        "{:?}",
        e.notes
    );
}

#[test]
fn listed_nftables_rules_walk_as_the_rules_they_were_compiled_from() {
    let spec = CaptureSpec::sidecar();
    let model = crate::nft::plan(&spec);
    let compiled = crate::nft::compile(&model, &crate::SystemAccounts).unwrap();
    let listing = |c: &crate::nft::Compiled, drop_last_of: Option<&str>| {
        let mut rules = c.rules.clone();
        if let Some(chain) = drop_last_of {
            let last = rules.iter().rposition(|r| r.chain == chain).unwrap();
            rules.remove(last);
        }
        crate::nfnetlink::Listing {
            generation: 1,
            tables: vec![c.table.clone()],
            chains: c.chains.clone(),
            rules,
        }
    };
    let app = out("10.1.0.2:80", 1000);
    let as_installed: Vec<_> = compiled.iter().map(|c| listing(c, None)).collect();
    let read = Walk::from_nft_listing(&model, &compiled, &as_installed);
    assert_eq!(read, Walk::from_nft(&model));
    assert_eq!(read.explain("nftables", Some(&spec), &app), nftables(&spec, &app));

    // Without the last rule of istio-output (its jump to istio-redirect) nothing captures it.
    let drifted: Vec<_> = compiled
        .iter()
        .map(|c| listing(c, Some("istio-output")))
        .collect();
    let e = Walk::from_nft_listing(&model, &compiled, &drifted).explain("nftables", Some(&spec), &app);
    assert_eq!((e.verdict, e.reason), (Verdict::Bypassed, Reason::NotIncluded));

    // A rule the flags do not install is reported and never matches.
    let mut foreign = compiled.clone();
    let nat = &mut foreign[0];
    let extra = nat.rules.iter().position(|r| r.chain == "istio-output").unwrap();
    let mut rule = nat.rules[extra].clone();
    rule.exprs.pop();
    nat.rules.insert(extra, rule);
    let listed: Vec<_> = foreign.iter().map(|c| listing(c, None)).collect();
    let walk = Walk::from_nft_listing(&model, &compiled, &listed);
    assert_eq!(
        walk.notes_for_test(),
        [
            "rule 1 of chain inet istio-proxy-nat istio-output is not one these flags install: not understood, assumed not to match"
        ]
    );
}
