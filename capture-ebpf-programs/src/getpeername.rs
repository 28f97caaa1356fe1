//! `cgroup/getpeername4` and `cgroup/getpeername6`: the app sees where it connected.
//!
//! A socket redirected by connect4/6 is connected to the proxy; its record under the socket
//! cookie (kept until the socket closes) holds the original destination, which replaces the
//! proxy's address in the answer, as iptables' NAT never showed the proxy to the app.

use core::ptr::write_volatile;

use aya_ebpf::EbpfContext;
use aya_ebpf::helpers::generated::{bpf_get_netns_cookie, bpf_get_socket_cookie};
use aya_ebpf::macros::cgroup_sock_addr;
use aya_ebpf::programs::SockAddrContext;
use capture_ebpf_common::{AF_INET, STAT_PEERNAME};

use crate::maps::{ORIG_BY_COOKIE, count_pod};
use crate::net::{ip6_words, write_ip6};

#[cgroup_sock_addr(getpeername4)]
pub fn capture_getpeername4(ctx: SockAddrContext) -> i32 {
    getpeername(&ctx, false);
    // getpeername programs must return 1.
    1
}

#[cgroup_sock_addr(getpeername6)]
pub fn capture_getpeername6(ctx: SockAddrContext) -> i32 {
    getpeername(&ctx, true);
    1
}

#[inline(always)]
fn getpeername(ctx: &SockAddrContext, v6: bool) {
    // SAFETY: the helper takes the program's context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: the value is copied out at once.
    let Some(orig) = ORIG_BY_COOKIE.get_ptr(cookie).map(|p| unsafe { *p }) else {
        return;
    };
    let sa = ctx.sock_addr;
    let a = orig.addr;
    // SAFETY: 4-byte writes of user_ip4, user_ip6[i] and user_port are allowed.
    unsafe {
        if v6 {
            let words = if orig.family == AF_INET {
                ip6_words(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3]])
            } else {
                ip6_words(&a)
            };
            write_ip6(&raw mut (*sa).user_ip6, words);
        } else {
            if orig.family != AF_INET {
                return;
            }
            write_volatile(&raw mut (*sa).user_ip4, ip6_words(&a)[0]);
        }
        write_volatile(&raw mut (*sa).user_port, u32::from(orig.port.to_be()));
    }
    // SAFETY: the helper takes the program's context.
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    count_pod(netns, STAT_PEERNAME);
}
