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
//! With DNS capture ([`FLAG_DNS`]) Istio's `ISTIO_OUTPUT_DNS` jump sits after the owner-group
//! rules: TCP and UDP to port 53 of a nameserver (any destination with [`FLAG_DNS_ALL`]) go to
//! the DNS proxy on `:15053`, and the loopback owner rules spare TCP port 53 (so the app's
//! query to a resolver on the pod's own address is captured, and only the proxy's gid calling
//! one there is hairpinned). For UDP only the excluded ports, the passthrough source, the
//! owners, the groups and the DNS rules can match; anything else passes untouched.
//!
//! A redirected connection goes to `127.0.0.1` (`::1` for IPv6, `::ffff:127.0.0.1` for an
//! IPv4-mapped destination of a dual-stack socket), as nat `REDIRECT` sends locally generated
//! packets there, and its original destination is recorded under the socket's cookie.
//!
//! `cgroup/sendmsg4` and `cgroup/sendmsg6` make the same decision for each datagram an
//! unconnected UDP socket sends with a destination (`sendto`): a DNS query goes to the DNS
//! proxy, and the resolver it was meant for is recorded under the socket's cookie (the last one
//! wins), for `recvmsg4/6` to give the proxy's answer that source. A UDP `connect` that is not
//! redirected removes the socket's record, so a reconnected socket never answers `getpeername`
//! with an old resolver.

use core::ptr::{read_volatile, write_volatile};

use aya_ebpf::EbpfContext;
use aya_ebpf::helpers::generated::{bpf_get_current_uid_gid, bpf_get_netns_cookie, bpf_get_socket_cookie};
use aya_ebpf::macros::cgroup_sock_addr;
use aya_ebpf::programs::SockAddrContext;
use capture_ebpf_common::{
    CIDRS_DNS, CIDRS_LOCAL, CIDRS_OUT_EXCLUDE, CIDRS_OUT_INCLUDE, DNS_PORT, DNS_PROXY_PORT, FLAG_DNS,
    FLAG_DNS_ALL, FLAG_INCLUDES_LOOPBACK, FLAG_IPV6, FLAG_ONLY_GROUPS, OWNER_EXCLUDED_GROUP,
    OWNER_ONLY_GROUP, OWNER_PROXY_GID, OWNER_PROXY_UID, OwnerKey, PORTS_OUT_EXCLUDE, PORTS_OUT_INCLUDE,
    PodConfig, STAT_BYPASS_CIDR, STAT_BYPASS_GID, STAT_BYPASS_GROUP, STAT_BYPASS_IPV6, STAT_BYPASS_LOOPBACK,
    STAT_BYPASS_NOT_INCLUDED, STAT_BYPASS_PASSTHROUGH, STAT_BYPASS_PORT, STAT_BYPASS_UID, STAT_DNS,
    STAT_HAIRPIN, STAT_OUTBOUND, STAT_PASSED, STAT_STATE_FULL,
};

use crate::maps::{ORIG_BY_COOKIE, OWNERS, count_pod, count_pod2, in_cidrs, in_ports, pod_config};
use crate::net::{
    IPPROTO_TCP, IPPROTO_UDP, Ip, LOCALHOST4, LOCALHOST4_MAPPED, LOCALHOST6, eq16, ip6_words, read_ip6,
    write_ip6,
};

#[cgroup_sock_addr(connect4)]
pub fn capture_connect4(ctx: SockAddrContext) -> i32 {
    redirect(&ctx, false, Call::Connect);
    // Always allow the connect: capture only ever changes where it goes.
    1
}

#[cgroup_sock_addr(connect6)]
pub fn capture_connect6(ctx: SockAddrContext) -> i32 {
    redirect(&ctx, true, Call::Connect);
    1
}

#[cgroup_sock_addr(sendmsg4)]
pub fn capture_sendmsg4(ctx: SockAddrContext) -> i32 {
    redirect(&ctx, false, Call::SendMsg);
    // Always allow the send: capture only ever changes where it goes.
    1
}

#[cgroup_sock_addr(sendmsg6)]
pub fn capture_sendmsg6(ctx: SockAddrContext) -> i32 {
    redirect(&ctx, true, Call::SendMsg);
    1
}

/// Which hook runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Call {
    /// `connect()`, TCP or UDP.
    Connect,
    /// A UDP datagram sent with a destination by an unconnected socket.
    SendMsg,
}

/// Where a connection goes.
enum Verdict {
    /// Untouched, for the reason this `STAT_BYPASS_*` slot counts (TCP only: UDP passes are
    /// not counted).
    Pass(u32),
    /// To the proxy's outbound port.
    Outbound,
    /// To the proxy's inbound port (the proxy calling its own pod).
    Inbound,
    /// To the DNS proxy.
    Dns,
}

#[inline(always)]
fn redirect(ctx: &SockAddrContext, v6: bool, call: Call) {
    let sa = ctx.sock_addr;
    // SAFETY: `sa` is the program's context, valid for the whole run; 4-byte reads of these
    // fields are allowed.
    let protocol = unsafe { read_volatile(&raw const (*sa).protocol) };
    let udp = match protocol {
        IPPROTO_TCP => false,
        IPPROTO_UDP => true,
        _ => return,
    };
    // SAFETY: as above.
    let dport = u16::from_be(unsafe { read_volatile(&raw const (*sa).user_port) } as u16);
    if udp && dport != DNS_PORT {
        // Nothing but the DNS rules redirects UDP: most datagrams end here, before any lookup
        // of the pod.
        pass_udp(ctx, call);
        return;
    }
    // SAFETY: the helper takes the program's context.
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let Some(cfg) = pod_config(netns) else {
        return;
    };
    // SAFETY: as above; each word of user_ip6 is read on its own.
    let (dst, sk) = unsafe {
        let dst = if v6 {
            read_ip6(&raw const (*sa).user_ip6)
        } else {
            Ip::from_ip4(read_volatile(&raw const (*sa).user_ip4))
        };
        (dst, read_volatile(&raw const (*sa).__bindgen_anon_1.sk))
    };
    if sk.is_null() {
        return;
    }
    let verdict = if udp && cfg.flags & FLAG_DNS == 0 {
        Verdict::Pass(STAT_BYPASS_NOT_INCLUDED)
    } else {
        // SAFETY: `sk` is the context's non-null socket; its address fields allow 4-byte reads.
        let src = unsafe {
            if v6 {
                read_ip6(&raw const (*sk).src_ip6)
            } else {
                Ip::from_ip4(read_volatile(&raw const (*sk).src_ip4))
            }
        };
        // SAFETY: a helper without arguments.
        let uid_gid = unsafe { bpf_get_current_uid_gid() };
        let (uid, gid) = (uid_gid as u32, (uid_gid >> 32) as u32);
        decide(&cfg, netns, &dst, dport, &src, uid, gid, udp)
    };

    let (port, stat) = match verdict {
        Verdict::Pass(reason) => {
            if udp {
                pass_udp(ctx, call);
            } else {
                count_pod2(netns, STAT_PASSED, reason);
            }
            return;
        }
        Verdict::Outbound => (cfg.outbound_port, STAT_OUTBOUND),
        Verdict::Inbound => (cfg.inbound_port, STAT_HAIRPIN),
        Verdict::Dns => (DNS_PROXY_PORT, STAT_DNS),
    };
    // SAFETY: the helper takes the program's context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if ORIG_BY_COOKIE.insert(cookie, dst.orig(dport), 0).is_err() {
        // Without a record the proxy could not learn the destination (nor could a UDP client
        // be given the answer from it): leave it alone.
        count_pod(netns, STAT_STATE_FULL);
        aya_log_ebpf::warn!(
            ctx,
            "ORIG_BY_COOKIE is full: a connection of netns {} to port {} left uncaptured",
            netns,
            dport
        );
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

/// A UDP connect or datagram left alone. A socket connected elsewhere now (it may have been
/// connected to the DNS proxy before) loses its record: its `getpeername` and answers are its
/// own again.
#[inline(always)]
fn pass_udp(ctx: &SockAddrContext, call: Call) {
    if call == Call::Connect {
        // SAFETY: the helper takes the program's context.
        let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
        let _ = ORIG_BY_COOKIE.remove(cookie);
    }
}

/// Istio's `ISTIO_OUTPUT` chain (and `ISTIO_OUTPUT_DNS`) for one TCP connect, UDP connect or
/// UDP datagram of an enrolled pod.
#[expect(
    clippy::too_many_arguments,
    reason = "the inputs of one rule walk, all needed"
)]
#[inline(always)]
fn decide(
    cfg: &PodConfig,
    netns: u64,
    dst: &Ip,
    dport: u16,
    src: &Ip,
    uid: u32,
    gid: u32,
    udp: bool,
) -> Verdict {
    let generation = cfg.generation;
    if !dst.v4 && cfg.flags & FLAG_IPV6 == 0 {
        // No ip6tables rules without IPv6 capture.
        return Verdict::Pass(STAT_BYPASS_IPV6);
    }
    // `-o` excludes UDP as well as TCP.
    if in_ports(netns, generation, PORTS_OUT_EXCLUDE, dport) {
        return Verdict::Pass(STAT_BYPASS_PORT);
    }
    if src.is_passthrough() {
        return Verdict::Pass(STAT_BYPASS_PASSTHROUGH);
    }
    let dns = cfg.flags & FLAG_DNS != 0 && dport == DNS_PORT;
    let is_uid = is_owner(netns, generation, OWNER_PROXY_UID, uid);
    let is_gid = is_owner(netns, generation, OWNER_PROXY_GID, gid);
    if udp {
        // The hairpin and loopback rules are TCP only (with DNS capture); the proxy's own
        // queries go out untouched.
        if let Some(reason) = owner_passes(cfg, netns, is_uid, is_gid, gid) {
            return Verdict::Pass(reason);
        }
        return if dns_server(cfg, netns, dst) {
            Verdict::Dns
        } else {
            Verdict::Pass(STAT_BYPASS_NOT_INCLUDED)
        };
    }
    let in_loopback_range = in_loopback_range(cfg, dst);
    if in_cidrs(netns, generation, CIDRS_LOCAL, dst) {
        // "-o lo": the destination is this pod.
        let hairpin = if !in_loopback_range && dport != cfg.tunnel_port {
            Verdict::Inbound
        } else {
            Verdict::Pass(STAT_BYPASS_LOOPBACK)
        };
        if dns {
            // With DNS capture the "! --uid-owner … -j RETURN" rules spare TCP port 53 and the
            // uid hairpin rules skip it ("! --dports 53,15008"); the gid ones do not.
            if is_uid {
                return Verdict::Pass(STAT_BYPASS_UID);
            }
            if is_gid {
                return hairpin;
            }
        } else if cfg.flags & FLAG_INCLUDES_LOOPBACK != 0 {
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
            return Verdict::Pass(STAT_BYPASS_LOOPBACK);
        }
    }
    if let Some(reason) = owner_passes(cfg, netns, is_uid, is_gid, gid) {
        return Verdict::Pass(reason);
    }
    if dns && dns_server(cfg, netns, dst) {
        return Verdict::Dns;
    }
    if in_loopback_range {
        return Verdict::Pass(STAT_BYPASS_LOOPBACK);
    }
    if in_cidrs(netns, generation, CIDRS_OUT_EXCLUDE, dst) {
        return Verdict::Pass(STAT_BYPASS_CIDR);
    }
    if in_ports(netns, generation, PORTS_OUT_INCLUDE, dport)
        || in_cidrs(netns, generation, CIDRS_OUT_INCLUDE, dst)
    {
        return Verdict::Outbound;
    }
    Verdict::Pass(STAT_BYPASS_NOT_INCLUDED)
}

/// The `STAT_BYPASS_*` reason the owner rules let a connection pass for (the proxy's uids,
/// its gids, the owner-group filter, in Istio's order), if they do.
#[inline(always)]
fn owner_passes(cfg: &PodConfig, netns: u64, is_uid: bool, is_gid: bool, gid: u32) -> Option<u32> {
    if is_uid {
        Some(STAT_BYPASS_UID)
    } else if is_gid {
        Some(STAT_BYPASS_GID)
    } else if group_passes(cfg, netns, gid) {
        Some(STAT_BYPASS_GROUP)
    } else {
        None
    }
}

/// Whether the owner-group rules let a process of group `gid` pass.
#[inline(always)]
fn group_passes(cfg: &PodConfig, netns: u64, gid: u32) -> bool {
    if cfg.flags & FLAG_ONLY_GROUPS != 0 {
        !is_owner(netns, cfg.generation, OWNER_ONLY_GROUP, gid)
    } else {
        is_owner(netns, cfg.generation, OWNER_EXCLUDED_GROUP, gid)
    }
}

/// Whether port 53 of `dst` goes to the DNS proxy: every destination with `--capture-all-dns`,
/// else the pod's nameservers.
#[inline(always)]
fn dns_server(cfg: &PodConfig, netns: u64, dst: &Ip) -> bool {
    cfg.flags & FLAG_DNS_ALL != 0 || in_cidrs(netns, cfg.generation, CIDRS_DNS, dst)
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
