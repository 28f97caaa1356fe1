//! Unit tests for message building and error text, and privileged tests against the real
//! kernel. Each privileged test runs on its own thread inside a network namespace private to
//! that thread (`unshare(CLONE_NEWNET)`), so the machine's own namespace is never touched and
//! nothing is left behind: the namespace dies with the thread.

use std::panic;
use std::process::Command;

use super::*;
use crate::host::RunError;

const ISTIO: TproxyRoutes = TproxyRoutes {
    mark: Mark::new(1337),
    table: RouteTable::new(133),
};

/// Runs `body` on a fresh thread in a new, thread-private network namespace with `lo` up.
///
/// Returns `None` (after saying so) when not root, unless `CI` is set: there a skipped
/// privileged test would hide a broken setup, so it fails instead.
fn in_new_netns<T: Send>(test: &str, body: impl FnOnce() -> T + Send) -> Option<T> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        assert!(
            std::env::var_os("CI").is_none(),
            "{test}: needs root, and CI is set"
        );
        eprintln!("skipping {test}: needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN)");
        return None;
    }
    let result = crate::host::run_in_scratch_netns(|| {
        ip(&["link", "set", "lo", "up"]);
        Ok::<_, RunError>(body())
    });
    Some(result.unwrap_or_else(|e| match e {
        // The panic hook reported it on the test's thread already.
        RunError::Panicked(message) => panic::resume_unwind(Box::new(message)),
        e => panic!("{}", crate::chain(&e)),
    }))
}

/// Runs `ip` in the calling thread's namespace (a child inherits its thread's namespaces) and
/// returns its output; `ip` is used only here, to cross-check what netlink reports.
fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("ip prints UTF-8")
}

fn count_rules(family: Family, routes: &TproxyRoutes) -> usize {
    let op = Operation::ListRules(family);
    let mut socket = RouteSocket::open(op).unwrap();
    let rules = socket.dump(op, rule_dump_request(family)).unwrap();
    rules
        .iter()
        .filter(|m| matches!(m, RouteNetlinkMessage::NewRule(r) if is_tproxy_rule(r, family, routes)))
        .count()
}

fn count_routes(family: Family, table: RouteTable) -> usize {
    let op = Operation::ListRoutes(family);
    let lo = loopback_index(op).unwrap();
    let mut socket = RouteSocket::open(op).unwrap();
    let routes = socket.dump(op, route_dump_request(family)).unwrap();
    routes
        .iter()
        .filter(|m| matches!(m, RouteNetlinkMessage::NewRoute(r) if is_local_route(r, family, table, lo)))
        .count()
}

fn count_passthrough_addresses() -> usize {
    let lo = loopback_index(Operation::ListAddresses).unwrap();
    let addresses = addresses(Operation::ListAddresses).unwrap();
    addresses.iter().filter(|m| is_passthrough_address(m, lo)).count()
}

fn ip_family(family: Family) -> &'static str {
    match family {
        Family::V4 => "-4",
        Family::V6 => "-6",
    }
}

/// Ensure twice, check with netlink dumps and `ip`, remove twice, check again.
fn tproxy_routes_round_trip(routes: &TproxyRoutes, family: Family) {
    let other = match family {
        Family::V4 => Family::V6,
        Family::V6 => Family::V4,
    };
    let fam = ip_family(family);
    let table = routes.table.to_string();
    let rule_text = format!("fwmark {:#x} lookup {table}", routes.mark.get());

    assert!(!tproxy_routes_present(routes, family).unwrap());
    ensure_tproxy_routes(routes, family).unwrap();
    ensure_tproxy_routes(routes, family).unwrap();
    assert_eq!(count_rules(family, routes), 1, "one rule after two ensures");
    assert_eq!(
        count_routes(family, routes.table),
        1,
        "one route after two ensures"
    );
    assert!(tproxy_routes_present(routes, family).unwrap());
    assert!(
        !tproxy_routes_present(routes, other).unwrap(),
        "{other} untouched"
    );

    let rules = ip(&[fam, "rule", "show"]);
    assert_eq!(
        rules.matches(&rule_text).count(),
        1,
        "ip {fam} rule show:\n{rules}"
    );
    let shown = ip(&[fam, "route", "show", "table", &table]);
    assert!(
        shown.starts_with("local default dev lo"),
        "ip {fam} route show table {table}:\n{shown}"
    );
    assert_eq!(
        shown.lines().count(),
        1,
        "ip {fam} route show table {table}:\n{shown}"
    );

    remove_tproxy_routes(routes, family).unwrap();
    assert_eq!(count_rules(family, routes), 0);
    assert_eq!(count_routes(family, routes.table), 0);
    assert!(!tproxy_routes_present(routes, family).unwrap());
    assert!(!ip(&[fam, "rule", "show"]).contains(&rule_text));
    remove_tproxy_routes(routes, family).unwrap();
}

#[test]
fn tproxy_routes_ipv4_idempotent_and_reversible() {
    in_new_netns("tproxy_routes_ipv4_idempotent_and_reversible", || {
        tproxy_routes_round_trip(&ISTIO, Family::V4);
    });
}

#[test]
fn tproxy_routes_ipv6_idempotent_and_reversible() {
    in_new_netns("tproxy_routes_ipv6_idempotent_and_reversible", || {
        tproxy_routes_round_trip(&ISTIO, Family::V6);
    });
}

#[test]
fn tproxy_routes_table_above_255() {
    // Tables above 255 travel only in the 32-bit attribute; the 8-bit header field is 0.
    let routes = TproxyRoutes {
        mark: Mark::new(0x4000),
        table: RouteTable::new(100_000),
    };
    in_new_netns("tproxy_routes_table_above_255", || {
        tproxy_routes_round_trip(&routes, Family::V4);
        tproxy_routes_round_trip(&routes, Family::V6);
    });
}

#[test]
fn tproxy_routes_both_families_coexist() {
    in_new_netns("tproxy_routes_both_families_coexist", || {
        for family in [Family::V4, Family::V6] {
            ensure_tproxy_routes(&ISTIO, family).unwrap();
        }
        for family in [Family::V4, Family::V6] {
            assert!(tproxy_routes_present(&ISTIO, family).unwrap());
        }
        remove_tproxy_routes(&ISTIO, Family::V4).unwrap();
        assert!(!tproxy_routes_present(&ISTIO, Family::V4).unwrap());
        assert!(tproxy_routes_present(&ISTIO, Family::V6).unwrap());
        assert_eq!(count_rules(Family::V6, &ISTIO), 1);
        assert_eq!(count_routes(Family::V6, ISTIO.table), 1);
    });
}

#[test]
fn remove_clears_istio_duplicates_and_keeps_foreign_rules() {
    in_new_netns("remove_clears_istio_duplicates_and_keeps_foreign_rules", || {
        // What istio-iptables leaves after running twice: two identical rules.
        ip(&["rule", "add", "fwmark", "1337", "lookup", "133"]);
        ip(&["rule", "add", "fwmark", "1337", "lookup", "133"]);
        // Rules that share mark and table but select more are someone else's.
        ip(&[
            "rule",
            "add",
            "from",
            "10.0.0.0/8",
            "fwmark",
            "1337",
            "lookup",
            "133",
        ]);
        ip(&["rule", "add", "not", "fwmark", "1337", "lookup", "133"]);
        ip(&["rule", "add", "fwmark", "1337/0xff", "lookup", "133"]);
        ip(&["rule", "add", "iif", "lo", "fwmark", "1337", "lookup", "133"]);
        ip(&[
            "rule",
            "add",
            "fwmark",
            "1337",
            "lookup",
            "133",
            "suppress_prefixlength",
            "0",
        ]);
        assert_eq!(count_rules(Family::V4, &ISTIO), 2);

        ensure_tproxy_routes(&ISTIO, Family::V4).unwrap();
        assert_eq!(count_rules(Family::V4, &ISTIO), 2, "ensure adds no third copy");

        remove_tproxy_routes(&ISTIO, Family::V4).unwrap();
        assert_eq!(count_rules(Family::V4, &ISTIO), 0);
        let left = ip(&["rule", "show"]);
        assert!(left.contains("from 10.0.0.0/8 fwmark 0x539 lookup 133"), "{left}");
        assert!(left.contains("not from all fwmark 0x539 lookup 133"), "{left}");
        assert!(left.contains("fwmark 0x539/0xff lookup 133"), "{left}");
        assert!(left.contains("from all fwmark 0x539 iif lo lookup 133"), "{left}");
        assert!(left.contains("lookup 133 suppress_prefixlength 0"), "{left}");
        assert!(!tproxy_routes_present(&ISTIO, Family::V4).unwrap());

        // A rule another tool added by hand counts as ours: ensure adds nothing.
        ip(&["rule", "add", "priority", "100", "fwmark", "1337", "table", "133"]);
        ensure_tproxy_routes(&ISTIO, Family::V4).unwrap();
        assert_eq!(count_rules(Family::V4, &ISTIO), 1);
    });
}

#[test]
fn passthrough_address_added_once_and_removed() {
    in_new_netns("passthrough_address_added_once_and_removed", || {
        assert!(!ipv6_passthrough_address_present().unwrap());
        ensure_ipv6_passthrough_address().unwrap();
        ensure_ipv6_passthrough_address().unwrap();
        assert_eq!(count_passthrough_addresses(), 1);
        assert!(ipv6_passthrough_address_present().unwrap());
        let shown = ip(&["-6", "addr", "show", "dev", "lo"]);
        assert_eq!(shown.matches("inet6 ::6/128").count(), 1, "{shown}");

        remove_ipv6_passthrough_address().unwrap();
        assert_eq!(count_passthrough_addresses(), 0);
        assert!(!ipv6_passthrough_address_present().unwrap());
        assert!(!ip(&["-6", "addr", "show", "dev", "lo"]).contains("::6/128"));
        remove_ipv6_passthrough_address().unwrap();
        // ::1 is untouched.
        assert!(ip(&["-6", "addr", "show", "dev", "lo"]).contains("inet6 ::1/128"));
    });
}

#[test]
fn passthrough_address_added_by_ip_is_accepted() {
    in_new_netns("passthrough_address_added_by_ip_is_accepted", || {
        ip(&["-6", "addr", "add", "::6/128", "dev", "lo"]);
        ensure_ipv6_passthrough_address().unwrap();
        assert_eq!(count_passthrough_addresses(), 1);
    });
}

#[test]
fn ipv6_route_on_down_lo_reports_the_kernel_message() {
    in_new_netns("ipv6_route_on_down_lo_reports_the_kernel_message", || {
        ip(&["link", "set", "lo", "down"]);
        let err = ensure_tproxy_routes(&ISTIO, Family::V6).unwrap_err();
        assert_eq!(err.operation(), Operation::AddRoute(Family::V6, ISTIO.table));
        let NetlinkError::Kernel { kernel_message, .. } = &err else {
            panic!("{err:?}")
        };
        assert!(
            kernel_message.as_deref().is_some_and(|m| m.contains("not up")),
            "{err}"
        );
        let text = err.to_string();
        assert!(
            text.starts_with("adding route local ::/0 dev lo table 133 (IPv6) failed: "),
            "{text}"
        );
    });
}

#[test]
fn without_cap_net_admin_the_error_says_so() {
    in_new_netns("without_cap_net_admin_the_error_says_so", || {
        // The raw syscall changes this thread's credentials only (glibc's setresuid would
        // change every thread's), and leaving uid 0 drops its capabilities.
        // SAFETY: setresuid takes three integers and touches no memory of ours.
        let rc = unsafe { libc::syscall(libc::SYS_setresuid, 65534, 65534, 65534) };
        assert_eq!(rc, 0, "setresuid: {}", io::Error::last_os_error());

        let err = ensure_tproxy_routes(&ISTIO, Family::V4).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{err}");
        assert!(err.to_string().contains("needs CAP_NET_ADMIN"), "{err}");
        let err = remove_ipv6_passthrough_address().unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{err}");
        // Looking needs no privilege.
        assert!(!tproxy_routes_present(&ISTIO, Family::V4).unwrap());
    });
}

#[test]
fn operations_read_like_ip_commands() {
    let cases = [
        (Operation::AddPassthroughAddress, "adding address ::6/128 to lo"),
        (
            Operation::RemovePassthroughAddress,
            "removing address ::6/128 from lo",
        ),
        (
            Operation::AddRule(Family::V4, ISTIO),
            "adding ip rule fwmark 1337 lookup 133 (IPv4)",
        ),
        (
            Operation::RemoveRule(Family::V6, ISTIO),
            "removing ip rule fwmark 1337 lookup 133 (IPv6)",
        ),
        (
            Operation::AddRoute(Family::V4, ISTIO.table),
            "adding route local 0.0.0.0/0 dev lo table 133 (IPv4)",
        ),
        (
            Operation::RemoveRoute(Family::V6, ISTIO.table),
            "removing route local ::/0 dev lo table 133 (IPv6)",
        ),
        (Operation::ListRules(Family::V6), "listing ip rules (IPv6)"),
    ];
    for (op, text) in cases {
        assert_eq!(op.to_string(), text);
    }
}

#[test]
fn error_messages_name_the_operation_and_the_fix() {
    let err = NetlinkError::Kernel {
        op: Operation::AddRule(Family::V4, ISTIO),
        io: io::Error::from_raw_os_error(libc::EPERM),
        kernel_message: None,
    };
    assert_eq!(
        err.to_string(),
        "adding ip rule fwmark 1337 lookup 133 (IPv4) failed: Operation not permitted (os error 1) \
         (needs CAP_NET_ADMIN in the network namespace)"
    );
    let err = NetlinkError::Kernel {
        op: Operation::AddRoute(Family::V6, ISTIO.table),
        io: io::Error::from_raw_os_error(libc::ENETDOWN),
        kernel_message: Some("Nexthop device is not up".into()),
    };
    assert_eq!(
        err.to_string(),
        "adding route local ::/0 dev lo table 133 (IPv6) failed: Network is down (os error 100) \
         (kernel: Nexthop device is not up)"
    );
    assert!(std::error::Error::source(&err).is_some());
}

#[test]
fn extended_ack_text_is_found_after_the_capped_request() {
    let mut payload = vec![0u8; 16]; // the echoed request header
    payload[..4].copy_from_slice(&40u32.to_ne_bytes());
    let text = b"Nexthop device is not up\0";
    let nla_len = 4 + text.len();
    payload.extend_from_slice(&(nla_len as u16).to_ne_bytes());
    payload.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
    payload.extend_from_slice(text);
    payload.resize(payload.len().next_multiple_of(4), 0);

    let capped = NLM_F_CAPPED | NLM_F_ACK_TLVS;
    assert_eq!(
        extended_ack_message(capped, &payload).as_deref(),
        Some("Nexthop device is not up")
    );
    assert_eq!(
        extended_ack_message(NLM_F_CAPPED, &payload),
        None,
        "no TLVs flagged"
    );
    assert_eq!(extended_ack_message(capped, &payload[..10]), None, "truncated");
    // Uncapped: the whole 40-byte request is echoed before the attributes.
    let mut uncapped = payload[..16].to_vec();
    uncapped.resize(40, 0);
    uncapped.extend_from_slice(&payload[16..]);
    assert_eq!(
        extended_ack_message(NLM_F_ACK_TLVS, &uncapped).as_deref(),
        Some("Nexthop device is not up")
    );
}

#[test]
fn rule_identity_ignores_priority_and_refuses_extra_selectors() {
    let base = {
        let mut rule = tproxy_rule_message(Family::V4, &ISTIO);
        rule.attributes.push(RuleAttribute::Priority(32765));
        // As the kernel lists every rule: -1 means unset.
        rule.attributes.push(RuleAttribute::FwMask(u32::MAX));
        rule.attributes.push(RuleAttribute::SuppressPrefixLen(u32::MAX));
        rule.attributes.push(RuleAttribute::SuppressIfGroup(u32::MAX));
        rule.attributes
            .push(RuleAttribute::Protocol(RouteProtocol::Unspec));
        rule
    };
    assert!(is_tproxy_rule(&base, Family::V4, &ISTIO));
    assert!(!is_tproxy_rule(&base, Family::V6, &ISTIO));
    let other_table = TproxyRoutes {
        table: RouteTable::new(134),
        ..ISTIO
    };
    assert!(!is_tproxy_rule(&base, Family::V4, &other_table));
    let other_mark = TproxyRoutes {
        mark: Mark::new(1338),
        ..ISTIO
    };
    assert!(!is_tproxy_rule(&base, Family::V4, &other_mark));

    let variants: [fn(&mut RuleMessage); 6] = [
        |r| r.attributes.push(RuleAttribute::SuppressPrefixLen(0)),
        |r| r.attributes.push(RuleAttribute::Iifname("eth0".into())),
        |r| r.attributes.push(RuleAttribute::FwMask(0xff)),
        |r| r.header.src_len = 8,
        |r| r.header.flags = RuleFlags::Invert,
        |r| r.header.action = RuleAction::Goto,
    ];
    for change in variants {
        let mut rule = base.clone();
        change(&mut rule);
        assert!(!is_tproxy_rule(&rule, Family::V4, &ISTIO), "{rule:?}");
    }

    // Tables above 255: header 0 (RT_TABLE_UNSPEC), id in the attribute.
    let big = TproxyRoutes {
        table: RouteTable::new(100_000),
        ..ISTIO
    };
    let rule = tproxy_rule_message(Family::V4, &big);
    assert_eq!(rule.header.table, 0);
    assert!(is_tproxy_rule(&rule, Family::V4, &big));
}
