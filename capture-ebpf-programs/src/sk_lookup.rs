//! `sk_lookup`: Istio's nat `PREROUTING` rules (`ISTIO_INBOUND`), decided at socket lookup.
//!
//! The program is attached to each enrolled pod's network namespace and runs when a TCP
//! connection arrives for a local address, before the kernel looks for a listener. The pod's
//! own connections (to itself, over `lo`) never pass nat `PREROUTING`'s rules, so they are left
//! alone: a connection is the pod's own when its source is one of the pod's addresses
//! (`CIDRS_LOCAL`: loopback and the addresses it had when enrolled) or the passthrough source
//! `127.0.0.6`/`::6`; the kernel drops packets from outside that claim a local source. (The
//! ingress interface does not tell: an IPv4 connection to the pod's own address arrives "on"
//! the interface holding that address.) For a connection from outside the pod:
//!
//! 1. IPv6 without IPv6 capture passes (no ip6tables rules);
//! 2. the tunnel port passes (`-p tcp --dport 15008 -j RETURN`, always Istio's first rule);
//! 3. with inbound capture off (`-b ""`) everything passes; with a port list (`-b 80,443`)
//!    ports not in it pass; otherwise the excluded ports (`-d`) pass;
//! 4. everything else is handed to the proxy's listener on the inbound port, which the
//!    sockops program recorded in `INBOUND_LISTENERS` when the proxy called `listen()`.
//!
//! The accepted socket keeps the address the peer dialled as its local address (no NAT), so
//! the proxy's `SO_ORIGINAL_DST` falls back to it: `capture_core::original_dst()` returns it and
//! Envoy's `original_dst` filter keeps it. A pod whose proxy has no inbound listener refuses the
//! connection (a reset), as `REDIRECT` to a port nobody listens on does.
//!
//! `sk_lookup` programs cannot call `bpf_get_netns_cookie`, and a netns link has no attach
//! cookie, so the program is loaded once per node into `SK_LOOKUP_PROGS` and each enrolled
//! pod's namespace runs a stub the loader assembles (`capture-ebpf/src/node/stub.rs`): it
//! writes the pod's cookie into `LOOKUP_NETNS` and tail calls into this program, which reads
//! it back ([`lookup_netns`]).

use core::ptr::read_volatile;

use aya_ebpf::bindings::sk_action::{SK_DROP, SK_PASS};
use aya_ebpf::macros::sk_lookup;
use aya_ebpf::programs::SkLookupContext;
use capture_ebpf_common::{
    AF_INET, AF_INET6, CIDRS_LOCAL, FLAG_INBOUND_OFF, FLAG_INBOUND_ONLY, FLAG_IPV6, ListenerKey,
    PORTS_IN_EXCLUDE, PORTS_IN_INCLUDE, PodConfig, STAT_INBOUND, STAT_INBOUND_REFUSED,
};

use crate::maps::{INBOUND_LISTENERS, LOOKUP_NETNS, count_pod, in_cidrs, in_ports, pod_config};
use crate::net::{AF_INET_U32, AF_INET6_U32, IPPROTO_TCP, Ip, read_ip6};

#[sk_lookup]
pub fn capture_sk_lookup(ctx: SkLookupContext) -> u32 {
    match lookup(&ctx) {
        // Assigned or left alone: the kernel goes on with the socket we chose, or its own.
        Verdict::Pass | Verdict::Assigned => SK_PASS,
        // No listener: the kernel answers a SYN nobody takes with a reset.
        Verdict::Refuse => SK_DROP,
    }
}

/// What happened to a connection.
enum Verdict {
    /// Not captured: the kernel's own lookup decides.
    Pass,
    /// Handed to the proxy's inbound listener.
    Assigned,
    /// Captured, but the proxy has no inbound listener.
    Refuse,
}

#[inline(always)]
fn lookup(ctx: &SkLookupContext) -> Verdict {
    let lk = ctx.lookup;
    // SAFETY: `lk` is the program's context, valid for the whole run; these fields allow
    // 4-byte reads.
    let (family, protocol, local_port) = unsafe {
        (
            read_volatile(&raw const (*lk).family),
            read_volatile(&raw const (*lk).protocol),
            read_volatile(&raw const (*lk).local_port),
        )
    };
    if protocol != IPPROTO_TCP {
        return Verdict::Pass;
    }
    let netns = lookup_netns();
    let Some(cfg) = pod_config(netns) else {
        return Verdict::Pass;
    };
    // SAFETY: as above, one word at a time.
    let (v6, remote) = unsafe {
        match family {
            AF_INET_U32 => (false, Ip::from_ip4(read_volatile(&raw const (*lk).remote_ip4))),
            AF_INET6_U32 => (true, read_ip6(&raw const (*lk).remote_ip6)),
            _ => return Verdict::Pass,
        }
    };
    if remote.is_passthrough() || in_cidrs(netns, cfg.generation, CIDRS_LOCAL, &remote) {
        return Verdict::Pass;
    }
    // local_port is in host byte order.
    if !captured(&cfg, netns, v6, local_port as u16) {
        return Verdict::Pass;
    }
    let key = |family| ListenerKey {
        netns,
        family,
        _pad: [0; 6],
    };
    // An IPv4 connection may go to a dual-stack IPv6 listener when there is no IPv4 one;
    // the kernel refuses an IPV6_V6ONLY one (EAFNOSUPPORT).
    let assigned = if v6 {
        INBOUND_LISTENERS
            .redirect_sk_lookup(ctx, key(AF_INET6), 0)
            .is_ok()
    } else {
        INBOUND_LISTENERS.redirect_sk_lookup(ctx, key(AF_INET), 0).is_ok()
            || INBOUND_LISTENERS
                .redirect_sk_lookup(ctx, key(AF_INET6), 0)
                .is_ok()
    };
    if assigned {
        count_pod(netns, STAT_INBOUND);
        Verdict::Assigned
    } else {
        count_pod(netns, STAT_INBOUND_REFUSED);
        aya_log_ebpf::warn!(
            ctx,
            "inbound connection to port {} of netns {} refused: the proxy has no inbound listener",
            local_port,
            netns
        );
        Verdict::Refuse
    }
}

/// The network namespace cookie of the pod whose lookup this is, as its stub wrote it into
/// `LOOKUP_NETNS` right before the tail call into this program; 0 (no pod has it: the
/// connection passes) if the slot cannot be read.
///
/// One slot per CPU is enough: the stub and this program run back to back on one CPU (the
/// kernel runs `sk_lookup` programs with migration disabled, and a tail call is a jump, not a
/// reschedule point), and the lookups of arriving packets run in softirq context (TCP and UDP
/// receive), where softirqs do not nest on a CPU, so no other lookup's stub writes the slot in
/// between. (A lookup made in process context, such as netfilter's socket match in an
/// `OUTPUT` rule, could in principle be interrupted between stub and program by a softirq's
/// lookup on the same CPU; capture installs no such rule.)
#[inline(always)]
fn lookup_netns() -> u64 {
    match LOOKUP_NETNS.get_ptr(0) {
        // SAFETY: a pointer to this CPU's slot of a live per-CPU array element.
        Some(slot) => unsafe { read_volatile(slot) },
        None => 0,
    }
}

/// Istio's `ISTIO_INBOUND` chain for a TCP connection to `port` arriving from outside the pod.
#[inline(always)]
fn captured(cfg: &PodConfig, netns: u64, v6: bool, port: u16) -> bool {
    let flags = cfg.flags;
    if v6 && flags & FLAG_IPV6 == 0 {
        return false;
    }
    if port == cfg.tunnel_port || flags & FLAG_INBOUND_OFF != 0 {
        return false;
    }
    let generation = cfg.generation;
    if flags & FLAG_INBOUND_ONLY != 0 {
        in_ports(netns, generation, PORTS_IN_INCLUDE, port)
    } else {
        !in_ports(netns, generation, PORTS_IN_EXCLUDE, port)
    }
}
