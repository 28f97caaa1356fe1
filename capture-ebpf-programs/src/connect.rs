//! `cgroup/connect4` and `cgroup/connect6`: Istio's nat `OUTPUT` rules, decided at `connect()`.
//!
//! For a TCP connect in an enrolled network namespace the rules of istio-iptables'
//! `ISTIO_OUTPUT` chain are walked in Istio's order (capture-core's `plan` emits the same
//! order as iptables rules):
//!
//! 1. excluded outbound ports (`-o`) pass;
//! 2. connections from the inbound passthrough source (`127.0.0.6`, `::6`) pass;
//! 3. destinations on `lo` (the pod's own addresses, loopback): the proxy (first owner rule,
//!    or any owner when an included CIDR lies in loopback) calling anything but the loopback
//!    range and the tunnel port goes to the **inbound** port (the hairpin); everything else
//!    passes (unless an included CIDR lies in loopback);
//! 4. the proxy's uids and gids pass;
//! 5. the owner-group filter;
//! 6. the loopback range and excluded CIDRs (`-x`) pass;
//! 7. included ports (`-q`) and included CIDRs (`-i`) go to the **outbound** port;
//! 8. everything else passes.
//!
//! A redirected connection goes to `127.0.0.1` (`::1` for IPv6, `::ffff:127.0.0.1` for an
//! IPv4-mapped destination of a dual-stack socket), as nat `REDIRECT` sends locally generated
//! packets there, and its original destination is recorded under the socket's cookie.

use core::ptr::{read_volatile, write_volatile};

use aya_ebpf::EbpfContext;
use aya_ebpf::helpers::generated::{bpf_get_current_uid_gid, bpf_get_netns_cookie, bpf_get_socket_cookie};
use aya_ebpf::macros::cgroup_sock_addr;
use aya_ebpf::programs::SockAddrContext;
use capture_ebpf_common::{
    CIDRS_LOCAL, CIDRS_OUT_EXCLUDE, CIDRS_OUT_INCLUDE, FLAG_INCLUDES_LOOPBACK, FLAG_IPV6, FLAG_ONLY_GROUPS,
    OWNER_EXCLUDED_GROUP, OWNER_ONLY_GROUP, OWNER_PROXY_GID, OWNER_PROXY_UID, OwnerKey, PORTS_OUT_EXCLUDE,
    PORTS_OUT_INCLUDE, PodConfig, STAT_HAIRPIN, STAT_OUTBOUND, STAT_PASSED, STAT_STATE_FULL,
};

use crate::maps::{ORIG_BY_COOKIE, OWNERS, count_pod, in_cidrs, in_ports, pod_config};
use crate::net::{
    IPPROTO_TCP, Ip, LOCALHOST4, LOCALHOST4_MAPPED, LOCALHOST6, eq16, ip6_words, read_ip6, write_ip6,
};

#[cgroup_sock_addr(connect4)]
pub fn capture_connect4(ctx: SockAddrContext) -> i32 {
    connect(&ctx, false);
    // Always allow the connect: capture only ever changes where it goes.
    1
}

#[cgroup_sock_addr(connect6)]
pub fn capture_connect6(ctx: SockAddrContext) -> i32 {
    connect(&ctx, true);
    1
}

/// Where a connection goes.
enum Verdict {
    /// Untouched.
    Pass,
    /// To the proxy's outbound port.
    Outbound,
    /// To the proxy's inbound port (the proxy calling its own pod).
    Inbound,
}

#[inline(always)]
fn connect(ctx: &SockAddrContext, v6: bool) {
    let sa = ctx.sock_addr;
    // SAFETY: `sa` is the program's context, valid for the whole run; 4-byte reads of these
    // fields are allowed.
    let protocol = unsafe { read_volatile(&raw const (*sa).protocol) };
    if protocol != IPPROTO_TCP {
        return;
    }
    // SAFETY: the helper takes the program's context.
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let Some(cfg) = pod_config(netns) else {
        return;
    };
    // SAFETY: as above; each word of user_ip6 is read on its own.
    let (dst, port_raw, sk) = unsafe {
        let dst = if v6 {
            read_ip6(&raw const (*sa).user_ip6)
        } else {
            Ip::from_ip4(read_volatile(&raw const (*sa).user_ip4))
        };
        (
            dst,
            read_volatile(&raw const (*sa).user_port),
            read_volatile(&raw const (*sa).__bindgen_anon_1.sk),
        )
    };
    if sk.is_null() {
        return;
    }
    // SAFETY: `sk` is the context's non-null socket; its address fields allow 4-byte reads.
    let src = unsafe {
        if v6 {
            read_ip6(&raw const (*sk).src_ip6)
        } else {
            Ip::from_ip4(read_volatile(&raw const (*sk).src_ip4))
        }
    };
    let dport = u16::from_be(port_raw as u16);
    // SAFETY: a helper without arguments.
    let uid_gid = unsafe { bpf_get_current_uid_gid() };
    let (uid, gid) = (uid_gid as u32, (uid_gid >> 32) as u32);

    let (port, stat) = match decide(&cfg, netns, &dst, dport, &src, uid, gid) {
        Verdict::Pass => {
            count_pod(netns, STAT_PASSED);
            return;
        }
        Verdict::Outbound => (cfg.outbound_port, STAT_OUTBOUND),
        Verdict::Inbound => (cfg.inbound_port, STAT_HAIRPIN),
    };
    // SAFETY: the helper takes the program's context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if ORIG_BY_COOKIE.insert(cookie, dst.orig(dport), 0).is_err() {
        // Without a record the proxy could not learn the destination: leave it alone.
        count_pod(netns, STAT_STATE_FULL);
        return;
    }
    count_pod(netns, stat);
    // SAFETY: 4-byte writes of user_ip4, user_ip6[i] and user_port are allowed.
    unsafe {
        if v6 {
            let to = ip6_words(if dst.v4 { &LOCALHOST4_MAPPED } else { &LOCALHOST6 });
            write_ip6(&raw mut (*sa).user_ip6, to);
        } else {
            write_volatile(&raw mut (*sa).user_ip4, ip6_words(&LOCALHOST4)[0]);
        }
        write_volatile(&raw mut (*sa).user_port, u32::from(port.to_be()));
    }
}

/// Istio's `ISTIO_OUTPUT` chain for one TCP connect of an enrolled pod.
#[inline(always)]
fn decide(cfg: &PodConfig, netns: u64, dst: &Ip, dport: u16, src: &Ip, uid: u32, gid: u32) -> Verdict {
    let generation = cfg.generation;
    if !dst.v4 && cfg.flags & FLAG_IPV6 == 0 {
        // No ip6tables rules without IPv6 capture.
        return Verdict::Pass;
    }
    if in_ports(netns, generation, PORTS_OUT_EXCLUDE, dport) {
        return Verdict::Pass;
    }
    if src.is_passthrough() {
        return Verdict::Pass;
    }
    let is_uid = is_owner(netns, generation, OWNER_PROXY_UID, uid);
    let is_gid = is_owner(netns, generation, OWNER_PROXY_GID, gid);
    let in_loopback_range = in_loopback_range(cfg, dst);
    if in_cidrs(netns, generation, CIDRS_LOCAL, dst) {
        // "-o lo": the destination is this pod.
        let hairpin = if !in_loopback_range && dport != cfg.tunnel_port {
            Verdict::Inbound
        } else {
            Verdict::Pass
        };
        if cfg.flags & FLAG_INCLUDES_LOOPBACK != 0 {
            if is_uid || is_gid {
                return hairpin;
            }
        } else {
            // Istio's first owner rule pair ends every loopback connection: its hairpin rule
            // takes the proxy, its "! --uid-owner … -j RETURN" everything else.
            let first = if cfg.first_owner_list == OWNER_PROXY_UID {
                uid
            } else {
                gid
            };
            if first == cfg.first_owner_id {
                return hairpin;
            }
            return Verdict::Pass;
        }
    }
    if is_uid || is_gid {
        return Verdict::Pass;
    }
    if cfg.flags & FLAG_ONLY_GROUPS != 0 {
        if !is_owner(netns, generation, OWNER_ONLY_GROUP, gid) {
            return Verdict::Pass;
        }
    } else if is_owner(netns, generation, OWNER_EXCLUDED_GROUP, gid) {
        return Verdict::Pass;
    }
    if in_loopback_range || in_cidrs(netns, generation, CIDRS_OUT_EXCLUDE, dst) {
        return Verdict::Pass;
    }
    if in_ports(netns, generation, PORTS_OUT_INCLUDE, dport)
        || in_cidrs(netns, generation, CIDRS_OUT_INCLUDE, dst)
    {
        return Verdict::Outbound;
    }
    Verdict::Pass
}

/// `-d <ipv4 loopback cidr>` (`127.0.0.1/32` by default) or `-d ::1/128`.
#[inline(always)]
fn in_loopback_range(cfg: &PodConfig, dst: &Ip) -> bool {
    if dst.v4 {
        let prefix = u32::from(cfg.loopback4_prefix);
        if prefix == 0 {
            return true;
        }
        let mask = u32::MAX << (32 - prefix.min(32));
        let addr = u32::from_be_bytes([dst.bytes[0], dst.bytes[1], dst.bytes[2], dst.bytes[3]]);
        let net = u32::from_be_bytes(cfg.loopback4);
        addr & mask == net & mask
    } else {
        eq16(&dst.bytes, &LOCALHOST6)
    }
}

#[inline(always)]
fn is_owner(netns: u64, generation: u32, list: u32, id: u32) -> bool {
    let key = OwnerKey {
        netns,
        generation,
        list,
        id,
        _pad: 0,
    };
    // The value (always 1) is read rather than only the pointer tested: LLVM would otherwise
    // OR two lookups' pointers together, which the verifier refuses.
    // SAFETY: a live map value, read at once.
    OWNERS
        .get_ptr(key)
        .is_some_and(|v| unsafe { read_volatile(v) } != 0)
}
