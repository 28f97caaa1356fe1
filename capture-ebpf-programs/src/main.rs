//! capture's eBPF programs: one object, built for `bpfel-unknown-none` by capture-ebpf's build
//! script and embedded in the loader.
//!
//! | program | section | job |
//! |---|---|---|
//! | `capture_connect4` / `capture_connect6` | `cgroup/connect4`, `cgroup/connect6` | redirect an enrolled pod's TCP connect (and UDP DNS connect) as Istio's nat `OUTPUT` rules would, recording the original destination by socket cookie |
//! | `capture_sockops` | `sockops` | move the record to the established 4-tuple (with the netns cookie); delete both when the socket closes |
//! | `capture_getsockopt` | `cgroup/getsockopt` | answer `SO_ORIGINAL_DST` on the proxy's accepted socket; every other option passes untouched |
//! | `capture_getpeername4` / `capture_getpeername6` | `cgroup/getpeername4`, `cgroup/getpeername6` | the app sees its original peer, not the proxy |
//! | `capture_sendmsg4` / `capture_sendmsg6` | `cgroup/sendmsg4`, `cgroup/sendmsg6` | send an enrolled pod's unconnected UDP DNS queries to the DNS proxy, recording the resolver by socket cookie |
//! | `capture_recvmsg4` / `capture_recvmsg6` | `cgroup/recvmsg4`, `cgroup/recvmsg6` | the DNS proxy's UDP answer comes from the resolver the app asked |
//! | `capture_sock_release` | `cgroup/sock_release` | remove a released UDP socket's record |
//! | `capture_sk_msg` | `sk_msg` (attached to the `SPLICE` sockhash) | with `--sk-msg`, hand each message between an enrolled pod's app and proxy straight to the peer socket |
//! | `capture_sk_lookup` | `sk_lookup` | hand connections arriving at an enrolled pod to its proxy's inbound listener (loaded once per node; each pod netns runs a stub that tail calls into it) |
//!
//! Context fields are read and written with `read_volatile`/`write_volatile`: LLVM would
//! otherwise merge adjacent 4-byte context accesses into 8-byte ones the verifier rejects.
#![no_std]
#![no_main]

mod connect;
mod dns;
mod getpeername;
mod getsockopt;
mod maps;
mod net;
mod sk_lookup;
mod sockops;
mod splice;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    // The verifier rejects programs that can reach this: there is no unwinding in BPF.
    loop {}
}

/// Only helpers available to non-GPL programs are used.
#[unsafe(no_mangle)]
#[unsafe(link_section = "license")]
static LICENSE: [u8; 11] = *b"Apache-2.0\0";
