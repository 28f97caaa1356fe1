//! `cgroup/recvmsg4`, `cgroup/recvmsg6` and `cgroup/sock_release`: the UDP half of DNS capture.
//!
//! A UDP query that connect4/6 or sendmsg4/6 sent to the DNS proxy left the resolver it was
//! meant for under the socket's cookie. When that socket receives a datagram from the DNS proxy
//! (`127.0.0.1:15053`, `::1:15053`, `::ffff:127.0.0.1:15053`), `recvmsg` reports the resolver as
//! its source instead, as conntrack undoes `REDIRECT` for the answer: resolvers that check where
//! an answer comes from (musl's unconnected socket) accept it. A connected socket's own peer
//! filter passes the answer anyway (it is connected to the proxy); its `getpeername` is answered
//! by getpeername4/6 from the same record.
//!
//! The record lives as long as the socket: `sock_release` removes a UDP socket's record when
//! the socket is released (TCP records are the sockops program's, removed on `TCP_CLOSE`).

use core::ptr::{read_volatile, write_volatile};

use aya_ebpf::EbpfContext;
use aya_ebpf::helpers::generated::{bpf_get_netns_cookie, bpf_get_socket_cookie};
use aya_ebpf::macros::{cgroup_sock, cgroup_sock_addr};
use aya_ebpf::programs::{SockAddrContext, SockContext};
use capture_ebpf_common::{AF_INET, DNS_PROXY_PORT, STAT_DNS_ANSWER};

use crate::maps::{ORIG_BY_COOKIE, count_pod};
use crate::net::{IPPROTO_UDP, Ip, LOCALHOST4, LOCALHOST6, eq16, ip6_words, read_ip6, write_ip6};

#[cgroup_sock_addr(recvmsg4)]
pub fn capture_recvmsg4(ctx: SockAddrContext) -> i32 {
    recvmsg(&ctx, false);
    // recvmsg programs must return 1.
    1
}

#[cgroup_sock_addr(recvmsg6)]
pub fn capture_recvmsg6(ctx: SockAddrContext) -> i32 {
    recvmsg(&ctx, true);
    1
}

#[inline(always)]
fn recvmsg(ctx: &SockAddrContext, v6: bool) {
    let sa = ctx.sock_addr;
    // SAFETY: `sa` is the program's context; 4-byte reads of user_port and of each word of
    // user_ip4/user_ip6 are allowed.
    let port = u16::from_be(unsafe { read_volatile(&raw const (*sa).user_port) } as u16);
    if port != DNS_PROXY_PORT {
        return;
    }
    // SAFETY: as above.
    let from = unsafe {
        if v6 {
            read_ip6(&raw const (*sa).user_ip6)
        } else {
            Ip::from_ip4(read_volatile(&raw const (*sa).user_ip4))
        }
    };
    let from_proxy = if from.v4 {
        from.bytes[0] == LOCALHOST4[0]
            && from.bytes[1] == LOCALHOST4[1]
            && from.bytes[2] == LOCALHOST4[2]
            && from.bytes[3] == LOCALHOST4[3]
    } else {
        eq16(&from.bytes, &LOCALHOST6)
    };
    if !from_proxy {
        return;
    }
    // SAFETY: the helper takes the program's context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: the value is copied out at once.
    let Some(orig) = ORIG_BY_COOKIE.get_ptr(cookie).map(|p| unsafe { *p }) else {
        return;
    };
    if (orig.family == AF_INET) != from.v4 {
        return;
    }
    let a = orig.addr;
    // SAFETY: 4-byte writes of user_ip4, user_ip6[i] and user_port are allowed in recvmsg.
    unsafe {
        if v6 {
            let words = if from.v4 {
                ip6_words(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3]])
            } else {
                ip6_words(&a)
            };
            write_ip6(&raw mut (*sa).user_ip6, words);
        } else {
            write_volatile(&raw mut (*sa).user_ip4, ip6_words(&a)[0]);
        }
        write_volatile(&raw mut (*sa).user_port, u32::from(orig.port.to_be()));
    }
    // SAFETY: the helper takes the program's context.
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    count_pod(netns, STAT_DNS_ANSWER);
}

#[cgroup_sock(sock_release)]
pub fn capture_sock_release(ctx: SockContext) -> i32 {
    release(&ctx);
    // sock_release programs must return 1.
    1
}

#[inline(always)]
fn release(ctx: &SockContext) {
    // SAFETY: `sock` is the program's context; 4-byte reads of `protocol` are allowed.
    let protocol = unsafe { read_volatile(&raw const (*ctx.sock).protocol) };
    if protocol != IPPROTO_UDP {
        return;
    }
    // SAFETY: the helper takes the program's context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let _ = ORIG_BY_COOKIE.remove(cookie);
}
