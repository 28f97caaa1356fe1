//! `cgroup/getsockopt`: `SO_ORIGINAL_DST` for proxies that ask the kernel, as with iptables.
//!
//! The program runs after the kernel's own getsockopt, for every getsockopt of every socket in
//! the cgroup. It returns at once, touching nothing, unless the option is `SO_ORIGINAL_DST`
//! (80) at the level that matches the socket: `SOL_IP` on an IPv4 socket or a dual-stack
//! socket with an IPv4-mapped address, `SOL_IPV6` on a real IPv6 socket. Other options keep
//! the kernel's answer and length, however large (iptables' `IPT_SO_GET_ENTRIES` included):
//! neither `optlen` nor `retval` is written for them.
//!
//! It answers only when the accepted socket's 4-tuple, with its network namespace cookie, has a
//! record from a redirected connect; then it writes a `sockaddr_in` or `sockaddr_in6`, sets
//! `optlen` and clears the kernel's error (`ENOENT` without a conntrack entry).

use core::ptr::{read_volatile, write_unaligned, write_volatile};

use aya_ebpf::EbpfContext;
use aya_ebpf::helpers::generated::bpf_get_netns_cookie;
use aya_ebpf::macros::cgroup_sockopt;
use aya_ebpf::programs::SockoptContext;
use capture_ebpf_common::{AF_INET, AF_INET6, OrigDst, PairKey, STAT_ORIG_DST};

use crate::maps::{ORIG_BY_PAIR, count_pod};
use crate::net::{AF_INET_U32, AF_INET6_U32, IPPROTO_TCP, Ip, read_ip6};

/// `SO_ORIGINAL_DST` (and `IP6T_SO_ORIGINAL_DST`).
const SO_ORIGINAL_DST: i32 = 80;
/// `SOL_IP`.
const SOL_IP: i32 = 0;
/// `SOL_IPV6`.
const SOL_IPV6: i32 = 41;

#[cgroup_sockopt(getsockopt)]
pub fn capture_getsockopt(ctx: SockoptContext) -> i32 {
    getsockopt(&ctx);
    // Never fail a getsockopt: 1 keeps the kernel's (or our) answer.
    1
}

#[inline(always)]
fn getsockopt(ctx: &SockoptContext) {
    let so = ctx.sockopt;
    // SAFETY: `so` is the program's context; 4-byte reads of optname and level are allowed.
    let (optname, level) = unsafe {
        (
            read_volatile(&raw const (*so).optname),
            read_volatile(&raw const (*so).level),
        )
    };
    if optname != SO_ORIGINAL_DST || (level != SOL_IP && level != SOL_IPV6) {
        return;
    }
    // SAFETY: as above, for the socket pointer.
    let sk = unsafe { read_volatile(&raw const (*so).__bindgen_anon_1.sk) };
    if sk.is_null() {
        return;
    }
    // SAFETY: `sk` is the context's non-null socket; these fields allow reads of their size.
    let (family, protocol, local_port, remote_port) = unsafe {
        (
            read_volatile(&raw const (*sk).family),
            read_volatile(&raw const (*sk).protocol),
            read_volatile(&raw const (*sk).src_port),
            read_volatile(&raw const (*sk).dst_port),
        )
    };
    if protocol != IPPROTO_TCP {
        return;
    }
    // SAFETY: as above.
    let (local, remote) = unsafe {
        match family {
            AF_INET_U32 => (
                Ip::from_ip4(read_volatile(&raw const (*sk).src_ip4)),
                Ip::from_ip4(read_volatile(&raw const (*sk).dst_ip4)),
            ),
            AF_INET6_U32 => (
                read_ip6(&raw const (*sk).src_ip6),
                read_ip6(&raw const (*sk).dst_ip6),
            ),
            _ => return,
        }
    };
    // The level must match what the connection is: IPv4 (possibly on a dual-stack socket)
    // answers at SOL_IP with a sockaddr_in, IPv6 at SOL_IPV6 with a sockaddr_in6.
    if local.v4 != (level == SOL_IP) {
        return;
    }
    // SAFETY: the helper takes the program's context.
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let key = PairKey {
        netns,
        client_addr: remote.mapped(),
        proxy_addr: local.mapped(),
        client_port: u16::from_be(remote_port),
        proxy_port: local_port as u16,
        _pad: 0,
    };
    // SAFETY: the value is copied out at once.
    let Some(orig) = ORIG_BY_PAIR.get_ptr(key).map(|p| unsafe { *p }) else {
        return;
    };
    // SAFETY: the context's optval/optval_end pointers and the optlen/retval fields; optval is
    // written only after the bounds check against optval_end the verifier requires.
    unsafe {
        let optval = read_volatile(&raw const (*so).__bindgen_anon_2.optval).cast::<u8>();
        let end = read_volatile(&raw const (*so).__bindgen_anon_3.optval_end).cast::<u8>();
        let len = if local.v4 {
            if orig.family != AF_INET || optval.wrapping_add(16) > end {
                return;
            }
            write_unaligned(optval.cast::<[u8; 16]>(), sockaddr_in(&orig));
            16
        } else {
            if orig.family != AF_INET6 || optval.wrapping_add(28) > end {
                return;
            }
            write_unaligned(optval.cast::<[u8; 28]>(), sockaddr_in6(&orig));
            28
        };
        write_volatile(&raw mut (*so).optlen, len);
        write_volatile(&raw mut (*so).retval, 0);
    }
    count_pod(netns, STAT_ORIG_DST);
}

/// `struct sockaddr_in` for an IPv4 original destination.
#[inline(always)]
fn sockaddr_in(orig: &OrigDst) -> [u8; 16] {
    let f = AF_INET.to_ne_bytes();
    let p = orig.port.to_be_bytes();
    let a = &orig.addr;
    [
        f[0], f[1], p[0], p[1], a[0], a[1], a[2], a[3], 0, 0, 0, 0, 0, 0, 0, 0,
    ]
}

/// `struct sockaddr_in6` for an IPv6 original destination (no flow info, no scope).
#[inline(always)]
fn sockaddr_in6(orig: &OrigDst) -> [u8; 28] {
    let f = AF_INET6.to_ne_bytes();
    let p = orig.port.to_be_bytes();
    let a = &orig.addr;
    [
        f[0], f[1], p[0], p[1], 0, 0, 0, 0, a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9],
        a[10], a[11], a[12], a[13], a[14], a[15], 0, 0, 0, 0,
    ]
}
