//! Splicing the app's and the proxy's sockets (`NODE_SK_MSG`, `capture-init ebpf load --sk-msg`).
//!
//! | where | what |
//! |---|---|
//! | sockops, `ACTIVE_ESTABLISHED_CB` / `PASSIVE_ESTABLISHED_CB` | with the setting on, a socket of an enrolled pod whose peer is in the same pod and one of whose ends is the proxy's goes into `SPLICE` under its own [`SpliceKey`] |
//! | `capture_sk_msg` (attached to `SPLICE`) | each message sent on such a socket goes straight to the receive queue of the socket under the swapped key (`BPF_F_INGRESS`); no peer there: the message takes the ordinary path, and so does every later one of the socket (`SPLICE_PASSED`) |
//!
//! "The proxy's end" is the outbound or inbound port (the app's redirected connection, the
//! proxy's hairpin, and the sockets the proxy accepts for them) or the inbound passthrough
//! address (`127.0.0.6`, `::6`: the proxy calling its app). Other connections inside the pod
//! (the app's own loopback traffic) keep the kernel's ordinary path: capture never redirected
//! them. "In the same pod" is a loopback peer (`127.0.0.0/8`, `::1`) or one of the pod's own
//! addresses (`CIDRS_LOCAL`): a peer elsewhere (an inbound connection from another host)
//! never is.
//!
//! The kernel removes a socket from `SPLICE` when it closes, so the map needs no cleanup. Each
//! socket keeps the `sk_msg` program it met on insertion: replacing the program (an upgrade)
//! affects connections made from then on. Clearing the setting stops new insertions; connections
//! already spliced stay so until they close, so that no connection's bytes ever take both paths
//! (which could reorder them).

use core::ptr::read_volatile;

use aya_ebpf::EbpfContext;
use aya_ebpf::bindings::{BPF_ANY, BPF_F_INGRESS, sk_action::SK_PASS};
use aya_ebpf::helpers::generated::bpf_get_netns_cookie;
use aya_ebpf::macros::sk_msg;
use aya_ebpf::programs::{SkMsgContext, SockOpsContext};
use capture_ebpf_common::{
    CIDRS_LOCAL, PodConfig, STAT_SPLICED_MESSAGES, STAT_SPLICED_SOCKETS, STAT_STATE_FULL, SpliceKey,
};

use crate::maps::{SPLICE, SPLICE_PASSED, count_pod, in_cidrs, pod_config, sk_msg_on};
use crate::net::{AF_INET_U32, AF_INET6_U32, Ip, LOCALHOST6, eq16, read_ip6};

#[sk_msg]
pub fn capture_sk_msg(ctx: SkMsgContext) -> u32 {
    redirect(&ctx);
    // A message whose redirect failed (no peer) goes the ordinary way.
    SK_PASS
}

#[inline(always)]
fn redirect(ctx: &SkMsgContext) {
    let md = ctx.msg;
    // SAFETY: `md` is the program's context; these fields allow 4-byte reads.
    let (family, local_port, remote_port) = unsafe {
        (
            read_volatile(&raw const (*md).family),
            read_volatile(&raw const (*md).local_port),
            read_volatile(&raw const (*md).remote_port),
        )
    };
    // SAFETY: as above.
    let (local, remote) = unsafe {
        match family {
            AF_INET_U32 => (
                Ip::from_ip4(read_volatile(&raw const (*md).local_ip4)),
                Ip::from_ip4(read_volatile(&raw const (*md).remote_ip4)),
            ),
            AF_INET6_U32 => (
                read_ip6(&raw const (*md).local_ip6),
                read_ip6(&raw const (*md).remote_ip6),
            ),
            _ => return,
        }
    };
    // SAFETY: the helper takes the program's context (sk_msg may call it from 5.15).
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    // local_port is in host byte order; remote_port holds the network-order port in its upper
    // 16 bits.
    let (local_port, remote_port) = (local_port as u16, u16::from_be((remote_port >> 16) as u16));
    let own = SpliceKey {
        netns,
        local_addr: local.mapped(),
        remote_addr: remote.mapped(),
        local_port,
        remote_port,
        _pad: 0,
    };
    // A socket that sent the ordinary way once keeps doing so: its peer may hold those bytes
    // unread in its TCP queue, and would read a spliced message first.
    if SPLICE_PASSED.get_ptr(own).is_some() {
        return;
    }
    // The peer's key: this socket's ends swapped.
    let mut peer = SpliceKey {
        netns,
        local_addr: own.remote_addr,
        remote_addr: own.local_addr,
        local_port: remote_port,
        remote_port: local_port,
        _pad: 0,
    };
    if SPLICE.redirect_msg(ctx, &mut peer, u64::from(BPF_F_INGRESS)) == i64::from(SK_PASS) {
        count_pod(netns, STAT_SPLICED_MESSAGES);
    } else {
        // No peer (not spliced yet, or never): this and every later message the ordinary way.
        let _ = SPLICE_PASSED.insert(own, 1, 0);
    }
}

/// A TCP socket is established (either side): with the setting on, put it into `SPLICE` if it
/// is one end of an app-proxy connection inside an enrolled pod.
#[inline(always)]
pub fn established(ctx: &SockOpsContext) {
    if !sk_msg_on() {
        return;
    }
    // SAFETY: the helper takes the program's context.
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let Some(cfg) = pod_config(netns) else {
        return;
    };
    let Some((local, remote, local_port, remote_port)) = crate::sockops::endpoints(ctx) else {
        return;
    };
    let proxy_end = is_proxy_port(&cfg, local_port)
        || is_proxy_port(&cfg, remote_port)
        || local.is_passthrough()
        || remote.is_passthrough();
    if !proxy_end || !in_pod(netns, &cfg, &remote) {
        return;
    }
    let mut key = SpliceKey {
        netns,
        local_addr: local.mapped(),
        remote_addr: remote.mapped(),
        local_port,
        remote_port,
        _pad: 0,
    };
    // SAFETY: the context is a live bpf_sock_ops for the whole run.
    match SPLICE.update(&mut key, unsafe { &mut *ctx.ops }, u64::from(BPF_ANY)) {
        Ok(()) => count_pod(netns, STAT_SPLICED_SOCKETS),
        // The connection keeps the ordinary path.
        Err(_) => count_pod(netns, STAT_STATE_FULL),
    }
}

#[inline(always)]
fn is_proxy_port(cfg: &PodConfig, port: u16) -> bool {
    port == cfg.outbound_port || port == cfg.inbound_port
}

/// Whether `ip` is in the pod itself: loopback, or one of the pod's own addresses.
#[inline(always)]
fn in_pod(netns: u64, cfg: &PodConfig, ip: &Ip) -> bool {
    let loopback = if ip.v4 {
        ip.bytes[0] == 127
    } else {
        eq16(&ip.bytes, &LOCALHOST6)
    };
    loopback || in_cidrs(netns, cfg.generation, CIDRS_LOCAL, ip)
}
