//! Explaining a connection on the eBPF backend: the programs' decision order
//! (capture-ebpf-programs' `connect.rs` `decide`, `sk_lookup.rs` `captured`) walked over a
//! [`MapPlan`], pure. Each check that holds is one [`Step`]; the last one decides.
//!
//! Kept in step with the programs by hand: a change to their order must change this too
//! (capture-init's e2e scenario table compares both with real traffic on every row).

use std::net::IpAddr;

use capture_core::explain::{Connection, Direction, Explanation, Reason, Step, Verdict, unmap};
use capture_core::{Cidr, DNS_PROXY_PORT, Family, Port, passthrough_source};
use capture_ebpf_common::{
    CIDRS_DNS, CIDRS_LOCAL, CIDRS_OUT_EXCLUDE, CIDRS_OUT_INCLUDE, DNS_PORT, FLAG_DNS, FLAG_DNS_ALL,
    FLAG_INBOUND_OFF, FLAG_INBOUND_ONLY, FLAG_INCLUDES_LOOPBACK, FLAG_IPV6, FLAG_ONLY_GROUPS,
    OWNER_EXCLUDED_GROUP, OWNER_ONLY_GROUP, OWNER_PROXY_GID, OWNER_PROXY_UID, PORTS_IN_EXCLUDE,
    PORTS_IN_INCLUDE, PORTS_OUT_EXCLUDE, PORTS_OUT_INCLUDE,
};

use crate::MapPlan;

struct Walk<'a> {
    plan: &'a MapPlan,
    program: &'static str,
    path: Vec<Step>,
}

impl Walk<'_> {
    fn step(&mut self, check: impl Into<String>) {
        self.path.push(Step {
            table: self.program.to_owned(),
            chain: String::new(),
            rule: check.into(),
        });
    }

    fn in_ports(&self, list: u16, port: u16) -> bool {
        self.plan.ports.iter().any(|p| {
            let shift = 16 - u32::from(p.bits.min(16));
            p.list == list && u32::from(p.port).checked_shr(shift) == u32::from(port).checked_shr(shift)
        })
    }

    fn in_cidrs(&self, list: u8, addr: &IpAddr) -> bool {
        self.plan
            .cidrs
            .iter()
            .any(|(l, net)| *l == list && net.family() == Family::of(addr) && net.contains(addr))
    }

    fn is_owner(&self, list: u32, id: u32) -> bool {
        self.plan.owners.contains(&(list, id))
    }

    fn flag(&self, flag: u32) -> bool {
        self.plan.config.flags & flag != 0
    }
}

/// Explains `conn` against the map contents `plan` (from a spec, or read back from the pinned
/// maps). The pod's own addresses count as local only when they are among `plan`'s CIDRs
/// ([`MapPlan::with_local_addrs`]) or the connection names `lo` as its interface.
pub fn explain(plan: &MapPlan, conn: &Connection) -> Explanation {
    let dst = conn.dst_ip();
    let plan = match &conn.iface {
        Some(i) if i.as_str() == "lo" && conn.direction == Direction::Outbound => {
            plan.clone().with_local_addrs(&[dst])
        }
        _ => plan.clone(),
    };
    let (verdict, reason, walk) = match conn.direction {
        Direction::Outbound => outbound(&plan, conn),
        Direction::Inbound => inbound(&plan, conn),
    };
    let rule = walk.path.last().cloned();
    let mut notes = Vec::new();
    if conn.direction == Direction::Inbound && matches!(verdict, Verdict::Captured { .. }) {
        notes.push(format!(
            "handed to the proxy's listener on port {} if it listens; refused (reset) if it does not",
            plan.config.inbound_port
        ));
    }
    Explanation {
        backend: "ebpf",
        verdict,
        reason,
        rule,
        path: walk.path,
        notes,
    }
}

fn port(n: u16) -> Port {
    Port::new(n.max(1))
}

fn outbound<'a>(plan: &'a MapPlan, conn: &Connection) -> (Verdict, Reason, Walk<'a>) {
    let dst = conn.dst_ip();
    let dport = conn.dst.port();
    let v6 = matches!(conn.dst.ip(), IpAddr::V6(_));
    let udp = conn.proto == capture_core::rules::Proto::Udp;
    let program = match (udp, v6) {
        (false, false) => "connect4",
        (false, true) => "connect6",
        (true, false) => "connect4/sendmsg4",
        (true, true) => "connect6/sendmsg6",
    };
    let mut w = Walk {
        plan,
        program,
        path: Vec::new(),
    };
    let original_dst = conn.dst_unmapped();
    let cfg = plan.config;
    let pass = |w: Walk<'a>, reason| (Verdict::Bypassed, reason, w);
    if udp && dport != DNS_PORT {
        w.step("UDP to a port other than 53: only DNS is redirected");
        return pass(w, Reason::NotIncluded);
    }
    if udp && !w.flag(FLAG_DNS) {
        w.step("UDP without DNS capture");
        return pass(w, Reason::NotIncluded);
    }
    let ipv4 = Family::of(&dst) == Family::V4;
    if !ipv4 && !w.flag(FLAG_IPV6) {
        w.step("IPv6 destination without IPv6 capture");
        return pass(w, Reason::NoCapture);
    }
    if w.in_ports(PORTS_OUT_EXCLUDE, dport) {
        w.step(format!("port {dport} is in PORTS_OUT_EXCLUDE (-o)"));
        return pass(w, Reason::ExcludedPort);
    }
    let src = conn.src.map(unmap);
    if src.is_some_and(|s| passthrough_source(Family::of(&s)).contains(&s)) {
        w.step("the source is the passthrough address (127.0.0.6, ::6)");
        return pass(w, Reason::Passthrough);
    }
    let dns = w.flag(FLAG_DNS) && dport == DNS_PORT;
    let is_uid = w.is_owner(OWNER_PROXY_UID, conn.uid);
    let is_gid = w.is_owner(OWNER_PROXY_GID, conn.gid);
    let dns_verdict = Verdict::Dns {
        port: DNS_PROXY_PORT,
        original_dst,
    };
    if udp {
        if let Some(reason) = owner_passes(&mut w, conn, is_uid, is_gid) {
            return pass(w, reason);
        }
        return if dns_server(&w, &dst) {
            w.step(format!(
                "{dst} is a DNS server: to the DNS proxy on :{DNS_PROXY_PORT}"
            ));
            (dns_verdict, Reason::Dns, w)
        } else {
            w.step(format!("{dst} is not one of the pod's nameservers"));
            pass(w, Reason::NotIncluded)
        };
    }
    let in_loopback_range = match dst {
        IpAddr::V4(_) => {
            Cidr::new(IpAddr::V4(cfg.loopback4.into()), cfg.loopback4_prefix).is_ok_and(|c| c.contains(&dst))
        }
        IpAddr::V6(v6) => v6.is_loopback(),
    };
    let hairpin = Verdict::Captured {
        port: port(cfg.inbound_port),
        original_dst,
    };
    if w.in_cidrs(CIDRS_LOCAL, &dst) {
        let can_hairpin = !in_loopback_range && dport != cfg.tunnel_port;
        let to_hairpin = |mut w: Walk<'a>, who: &str| {
            if can_hairpin {
                w.step(format!(
                    "{who} calling its own pod ({dst}, CIDRS_LOCAL): to the inbound port"
                ));
                (hairpin, Reason::Hairpin, w)
            } else {
                w.step(format!(
                    "{who} calling its own pod on the loopback range or the tunnel port: left alone"
                ));
                (Verdict::Bypassed, Reason::Loopback, w)
            }
        };
        if dns {
            if is_uid {
                w.step(format!("DNS to its own pod from the proxy's uid {}", conn.uid));
                return pass(w, Reason::ProxyUid);
            }
            if is_gid {
                return to_hairpin(w, "the proxy's gid");
            }
        } else if w.flag(FLAG_INCLUDES_LOOPBACK) {
            if is_uid || is_gid {
                return to_hairpin(w, "the proxy");
            }
        } else {
            let first = if cfg.first_owner_list == OWNER_PROXY_UID {
                conn.uid
            } else {
                conn.gid
            };
            if first == cfg.first_owner_id {
                return to_hairpin(w, "the proxy");
            }
            w.step(format!(
                "{dst} is the pod's own (CIDRS_LOCAL) and the socket is not the proxy's: left alone"
            ));
            return pass(w, Reason::LocalToSelf);
        }
    }
    if let Some(reason) = owner_passes(&mut w, conn, is_uid, is_gid) {
        return pass(w, reason);
    }
    if dns && dns_server(&w, &dst) {
        w.step(format!(
            "{dst} is a DNS server: to the DNS proxy on :{DNS_PROXY_PORT}"
        ));
        return (dns_verdict, Reason::Dns, w);
    }
    if in_loopback_range {
        w.step(format!("{dst} is in the loopback range"));
        return pass(w, Reason::Loopback);
    }
    if w.in_cidrs(CIDRS_OUT_EXCLUDE, &dst) {
        w.step(format!("{dst} is in CIDRS_OUT_EXCLUDE (-x)"));
        return pass(w, Reason::ExcludedCidr);
    }
    if w.in_ports(PORTS_OUT_INCLUDE, dport) {
        w.step(format!(
            "port {dport} is in PORTS_OUT_INCLUDE (-q): to the outbound port"
        ));
    } else if w.in_cidrs(CIDRS_OUT_INCLUDE, &dst) {
        w.step(format!(
            "{dst} is in CIDRS_OUT_INCLUDE (-i): to the outbound port"
        ));
    } else {
        w.step(format!("{dst}:{dport} is in no included CIDR or port"));
        return pass(w, Reason::NotIncluded);
    }
    let captured = Verdict::Captured {
        port: port(cfg.outbound_port),
        original_dst,
    };
    (captured, Reason::Outbound, w)
}

fn owner_passes(w: &mut Walk<'_>, conn: &Connection, is_uid: bool, is_gid: bool) -> Option<Reason> {
    if is_uid {
        w.step(format!("uid {} is the proxy's (OWNERS, -u)", conn.uid));
        return Some(Reason::ProxyUid);
    }
    if is_gid {
        w.step(format!("gid {} is the proxy's (OWNERS, -g)", conn.gid));
        return Some(Reason::ProxyGid);
    }
    let passes = if w.flag(FLAG_ONLY_GROUPS) {
        !w.is_owner(OWNER_ONLY_GROUP, conn.gid)
    } else {
        w.is_owner(OWNER_EXCLUDED_GROUP, conn.gid)
    };
    if passes {
        w.step(format!(
            "gid {} is left alone by the owner-group filter",
            conn.gid
        ));
        return Some(Reason::OwnerGroup);
    }
    None
}

fn dns_server(w: &Walk<'_>, dst: &IpAddr) -> bool {
    w.flag(FLAG_DNS_ALL) || w.in_cidrs(CIDRS_DNS, dst)
}

fn inbound<'a>(plan: &'a MapPlan, conn: &Connection) -> (Verdict, Reason, Walk<'a>) {
    let mut w = Walk {
        plan,
        program: "sk_lookup",
        path: Vec::new(),
    };
    let pass = |w: Walk<'a>, reason| (Verdict::Bypassed, reason, w);
    if conn.proto != capture_core::rules::Proto::Tcp {
        w.step("not TCP");
        return pass(w, Reason::NotIncluded);
    }
    let remote = conn.src.map(unmap);
    if let Some(remote) = remote
        && (passthrough_source(Family::of(&remote)).contains(&remote) || w.in_cidrs(CIDRS_LOCAL, &remote))
    {
        w.step(format!("the source {remote} is the pod's own"));
        return pass(w, Reason::LocalToSelf);
    }
    let port_n = conn.dst.port();
    let v6 = matches!(conn.dst.ip(), IpAddr::V6(_));
    let cfg = plan.config;
    if v6 && !w.flag(FLAG_IPV6) {
        w.step("IPv6 without IPv6 capture");
        return pass(w, Reason::NoCapture);
    }
    if port_n == cfg.tunnel_port {
        w.step(format!("port {port_n} is the tunnel port"));
        return pass(w, Reason::TunnelPort);
    }
    if w.flag(FLAG_INBOUND_OFF) {
        w.step("inbound capture is off (-b \"\")");
        return pass(w, Reason::NoCapture);
    }
    if w.flag(FLAG_INBOUND_ONLY) {
        if !w.in_ports(PORTS_IN_INCLUDE, port_n) {
            w.step(format!("port {port_n} is not in PORTS_IN_INCLUDE (-b)"));
            return pass(w, Reason::NotIncluded);
        }
        w.step(format!(
            "port {port_n} is in PORTS_IN_INCLUDE (-b): to the inbound listener"
        ));
    } else {
        if w.in_ports(PORTS_IN_EXCLUDE, port_n) {
            w.step(format!("port {port_n} is in PORTS_IN_EXCLUDE (-d)"));
            return pass(w, Reason::ExcludedInboundPort);
        }
        w.step(format!(
            "port {port_n} is captured (-b '*'): to the inbound listener"
        ));
    }
    let captured = Verdict::Captured {
        port: port(cfg.inbound_port),
        original_dst: conn.dst_unmapped(),
    };
    (captured, Reason::Inbound, w)
}

#[cfg(test)]
mod tests {
    use capture_core::{CaptureSpec, explain};

    use super::*;

    fn out(dst: &str, uid: u32) -> Connection {
        Connection::outbound_tcp(dst.parse().unwrap(), uid)
    }

    /// The eBPF walk agrees with the iptables walk wherever the backends behave alike.
    #[test]
    fn agrees_with_the_rules() {
        let mut spec = CaptureSpec::sidecar();
        spec.ipv6 = true;
        spec.outbound.exclude_ports = vec!["81".parse().unwrap()];
        spec.outbound.exclude_cidrs = vec!["10.2.0.0/16".parse().unwrap()];
        let plan = MapPlan::from_spec(&spec).unwrap();
        let lo: capture_core::Iface = "lo".parse().unwrap();
        let mut conns = vec![
            out("10.1.0.2:80", 1000),
            out("10.1.0.2:81", 1000),
            out("10.2.0.2:80", 1000),
            out("10.1.0.2:80", 1337),
            out("[fd00::2]:80", 1000),
            out("[::ffff:10.1.0.2]:80", 1000),
            out("127.0.0.1:15000", 1000),
        ];
        for (dst, uid) in [("10.1.0.1:8080", 1000), ("10.1.0.1:8080", 1337)] {
            let mut c = out(dst, uid);
            c.iface = Some(lo.clone());
            conns.push(c);
        }
        for port in [8080, 15008, 15021] {
            let mut c = out(&format!("10.1.0.1:{port}"), 0);
            c.direction = Direction::Inbound;
            c.src = Some("10.1.0.2".parse().unwrap());
            conns.push(c);
        }
        for conn in conns {
            let ebpf = explain(&plan, &conn);
            let ipt = explain::iptables(&spec, &conn);
            assert_eq!(
                (ebpf.verdict, ebpf.reason),
                (ipt.verdict, ipt.reason),
                "{conn:?}\n{ebpf:#?}\n{ipt:#?}"
            );
        }
    }
}
