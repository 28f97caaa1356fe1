//! `sockops`: the per-connection record's life.
//!
//! | callback | on a socket with a record under its cookie |
//! |---|---|
//! | `TCP_CONNECT_CB` (SYN about to leave) | ask for state callbacks, so the close below is seen |
//! | `ACTIVE_ESTABLISHED_CB` (client side up) | copy the record to its 4-tuple, with the netns cookie |
//! | `STATE_CB` to `TCP_CLOSE` | delete both records |
//!
//! So a closed connection leaves nothing behind, whether it was established or refused.
//!
//! On `ACTIVE_ESTABLISHED_CB` and `PASSIVE_ESTABLISHED_CB` of any socket it also hands over to
//! [`crate::splice`], which puts the app's and the proxy's sockets into `SPLICE` when the node
//! splices them (`NODE_SK_MSG`).
//!
//! It also records the proxy's inbound listener for the `sk_lookup` program: on
//! `TCP_LISTEN_CB` (a socket starts listening) in an enrolled pod, a socket on the pod's
//! inbound port that is not bound to a loopback address goes into `INBOUND_LISTENERS` under
//! the pod's netns cookie and its family, replacing the previous one. Whoever listens there
//! gets the pod's inbound traffic, as with `REDIRECT`; a listener of a `SO_REUSEPORT` group
//! stands for the group (the kernel picks among its members). The kernel drops the entry
//! when the socket closes.

use core::ptr::read_volatile;

use aya_ebpf::EbpfContext;
use aya_ebpf::bindings::{
    BPF_ANY, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB,
    BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB, BPF_SOCK_OPS_TCP_LISTEN_CB, BPF_TCP_CLOSE,
};
use aya_ebpf::helpers::generated::{bpf_get_netns_cookie, bpf_get_socket_cookie};
use aya_ebpf::macros::sock_ops;
use aya_ebpf::programs::SockOpsContext;
use capture_ebpf_common::{AF_INET, AF_INET6, ListenerKey, PairKey, STAT_STATE_FULL};

use crate::maps::{INBOUND_LISTENERS, ORIG_BY_COOKIE, ORIG_BY_PAIR, count_pod, pod_config};
use crate::net::{AF_INET_U32, AF_INET6_U32, Ip, LOCALHOST6, read_ip6};

#[sock_ops]
pub fn capture_sockops(ctx: SockOpsContext) -> u32 {
    sockops(&ctx);
    1
}

#[inline(always)]
fn sockops(ctx: &SockOpsContext) {
    let ops = ctx.ops;
    // SAFETY: `ops` is the program's context; 4-byte reads of `op` are allowed.
    let op = unsafe { read_volatile(&raw const (*ops).op) };
    match op {
        BPF_SOCK_OPS_TCP_CONNECT_CB => {
            if ORIG_BY_COOKIE.get_ptr(cookie(ctx)).is_some() {
                // SAFETY: as above, for the flags field.
                let flags = unsafe { read_volatile(&raw const (*ops).bpf_sock_ops_cb_flags) };
                let _ = ctx.set_cb_flags((flags | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
            }
        }
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => {
            if let Some(orig) = ORIG_BY_COOKIE.get_ptr(cookie(ctx)) {
                // SAFETY: a live map value, copied out at once.
                let orig = unsafe { *orig };
                if let Some(key) = pair_key(ctx)
                    && ORIG_BY_PAIR.insert(key, orig, 0).is_err()
                {
                    count_pod(key.netns, STAT_STATE_FULL);
                    aya_log_ebpf::warn!(
                        ctx,
                        "ORIG_BY_PAIR is full: the proxy cannot learn the original destination of a connection of netns {}",
                        key.netns
                    );
                }
            }
            crate::splice::established(ctx);
        }
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => crate::splice::established(ctx),
        BPF_SOCK_OPS_STATE_CB => {
            // SAFETY: args[1] of a state callback is the new state; 4-byte reads are allowed.
            let new_state = unsafe { read_volatile(&raw const (*ops).__bindgen_anon_1.args[1]) };
            if new_state == BPF_TCP_CLOSE
                && ORIG_BY_COOKIE.remove(cookie(ctx)).is_ok()
                && let Some(key) = pair_key(ctx)
            {
                let _ = ORIG_BY_PAIR.remove(key);
            }
        }
        BPF_SOCK_OPS_TCP_LISTEN_CB => listen(ctx),
        _ => {}
    }
}

/// A socket started listening: record it if it is an enrolled pod's inbound listener.
#[inline(always)]
fn listen(ctx: &SockOpsContext) {
    // SAFETY: the helper takes the program's context.
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let Some(cfg) = pod_config(netns) else {
        return;
    };
    let ops = ctx.ops;
    // SAFETY: `ops` is the program's context; these fields allow 4-byte reads.
    let (family, local_port) = unsafe {
        (
            read_volatile(&raw const (*ops).family),
            read_volatile(&raw const (*ops).local_port),
        )
    };
    // local_port is in host byte order.
    if local_port != u32::from(cfg.inbound_port) {
        return;
    }
    // A listener bound to loopback (istio-validation's 127.0.0.1:15006) only serves the pod
    // itself; it must not take connections from outside.
    // SAFETY: as above.
    let (family, loopback) = unsafe {
        match family {
            AF_INET_U32 => {
                let ip = Ip::from_ip4(read_volatile(&raw const (*ops).local_ip4));
                (AF_INET, ip.bytes[0] == 127)
            }
            AF_INET6_U32 => {
                let ip = read_ip6(&raw const (*ops).local_ip6);
                let loopback = if ip.v4 {
                    ip.bytes[0] == 127
                } else {
                    crate::net::eq16(&ip.bytes, &LOCALHOST6)
                };
                (AF_INET6, loopback)
            }
            _ => return,
        }
    };
    if loopback {
        return;
    }
    let mut key = ListenerKey {
        netns,
        family,
        _pad: [0; 6],
    };
    // SAFETY: the context is a live bpf_sock_ops for the whole run.
    if INBOUND_LISTENERS
        .update(&mut key, unsafe { &mut *ops }, u64::from(BPF_ANY))
        .is_err()
    {
        count_pod(netns, STAT_STATE_FULL);
        aya_log_ebpf::warn!(
            ctx,
            "INBOUND_LISTENERS is full: the inbound listener of netns {} not recorded",
            netns
        );
    }
}

#[inline(always)]
fn cookie(ctx: &SockOpsContext) -> u64 {
    // SAFETY: the helper takes the program's context.
    unsafe { bpf_get_socket_cookie(ctx.as_ptr()) }
}

/// The client socket's connection as [`PairKey`]: client = local end, proxy = remote end.
#[inline(always)]
fn pair_key(ctx: &SockOpsContext) -> Option<PairKey> {
    let (local, remote, local_port, remote_port) = endpoints(ctx)?;
    // SAFETY: the helper takes the program's context.
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    Some(PairKey {
        netns,
        client_addr: local.mapped(),
        proxy_addr: remote.mapped(),
        client_port: local_port,
        proxy_port: remote_port,
        _pad: 0,
    })
}

/// The socket's local and remote address and port (ports in host byte order); `None` for a
/// family other than IPv4 and IPv6.
#[inline(always)]
pub fn endpoints(ctx: &SockOpsContext) -> Option<(Ip, Ip, u16, u16)> {
    let ops = ctx.ops;
    // SAFETY: `ops` is the program's context; every field below allows 4-byte reads.
    let (family, local_port, remote_port) = unsafe {
        (
            read_volatile(&raw const (*ops).family),
            read_volatile(&raw const (*ops).local_port),
            read_volatile(&raw const (*ops).remote_port),
        )
    };
    // SAFETY: as above.
    let (local, remote) = unsafe {
        match family {
            AF_INET_U32 => (
                Ip::from_ip4(read_volatile(&raw const (*ops).local_ip4)),
                Ip::from_ip4(read_volatile(&raw const (*ops).remote_ip4)),
            ),
            AF_INET6_U32 => (
                read_ip6(&raw const (*ops).local_ip6),
                read_ip6(&raw const (*ops).remote_ip6),
            ),
            _ => return None,
        }
    };
    // local_port is in host byte order; remote_port holds the network-order port in its upper
    // 16 bits.
    Some((
        local,
        remote,
        local_port as u16,
        u16::from_be((remote_port >> 16) as u16),
    ))
}
