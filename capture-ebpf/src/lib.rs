//! The eBPF capture backend: the same [`CaptureSpec`](capture_core::CaptureSpec) as the
//! iptables backend, enforced by cgroup socket programs instead of NAT.
//!
//! ```text
//! CaptureSpec ─MapPlan::from_spec─> MapPlan ─entries(netns cookie, generation)─> map keys/values
//!                                                   └──── Node::enroll writes them ────┘
//! ```
//!
//! One set of programs per node ([`Node::load`]: loaded once, attached to a cgroup v2
//! directory with bpf_links, pinned on bpffs under a [`PinDir`]), configuration per pod
//! ([`Node::enroll`], keyed by the pod's network namespace cookie, plus the pod's own
//! `sk_lookup` link). Connections from network namespaces that are not enrolled are never
//! touched.
//!
//! A front end (capture-init, capture-cni) needs nothing else to enroll a pod:
//!
//! ```text
//! resolve_owners(&spec) ─> MapPlan::from_spec ─> PinDir::new(bpffs).mount()
//!   ─> Node::open_or_load(cgroup, &pins)        node lock; programs loaded, or checked to act on cgroup
//!   ─> PodNetns::set_up(&plan)                  in the pod's netns: ::6 on lo (IPv6), cookie, addresses
//!   ─> node.apply(&pod, &plan) -> Change        Applied | Unchanged | Updated
//! ```
//!
//! `load`/`unload` are the node's programs, `enroll`/`unenroll` a pod's configuration, as
//! `capture-init ebpf load|unload` and `--cleanup-only` name them.
//!
//! | program | does |
//! |---|---|
//! | `cgroup/connect4`, `connect6` | redirects an app's TCP connect to the proxy's outbound port (or the proxy's own-pod call to its inbound port) as Istio's nat `OUTPUT` rules would; IPv4-mapped destinations count as IPv4 |
//! | `sockops` | keys the original destination by the connection's 4-tuple and netns cookie; removes every per-connection entry when the socket closes |
//! | `cgroup/getsockopt` | answers `SO_ORIGINAL_DST` (`SOL_IP`, `SOL_IPV6`) on the proxy's accepted socket, so [`capture_core::original_dst()`] works unchanged; touches no other option |
//! | `cgroup/getpeername4`, `getpeername6` | the app sees its original peer, not the proxy |
//! | `cgroup/sendmsg4`, `sendmsg6` (and connect4/6 for TCP and connected UDP) | DNS capture: an app's port-53 query goes to the DNS proxy on `:15053`, the resolver is recorded by socket cookie |
//! | `cgroup/recvmsg4`, `recvmsg6` | DNS capture: the DNS proxy's UDP answer comes from the resolver the app asked |
//! | `cgroup/sock_release` | removes a released UDP socket's record |
//! | `sockops` at `listen()` | records the proxy's listener on the inbound port of an enrolled pod |
//! | `sk_lookup` (once per node, reached from each enrolled pod's network namespace through its stub) | hands connections from outside the pod to that listener unless Istio's inbound rules exempt them; the proxy's socket keeps the dialled address, so [`capture_core::original_dst()`] returns it |
//!
//! # Minimum kernel version
//! 5.15 (`bpf_get_netns_cookie` in sock_ops programs; `sk_lookup` needs 5.9); [`probe`] checks
//! each feature.

//!
//! | module | what |
//! |---|---|
//! | `backend` | [`Ebpf`]: capture-core's `Backend` seam (install, check, uninstall) |
//! | `maps` | [`MapPlan`]: the spec as map contents (pure) |
//! | `explain` | [`explain::explain`]: the programs' decision for one connection, over a map plan (pure) |
//! | `meta` | [`PodMetadata`]: who enrolled a pod (CNI container id, interface, pod name) |
//! | `owners` | [`resolve_owners`]: names to ids before planning |
//! | `node` | [`Node`]: load, open, enroll, read back, unload |
//! | `pin_dir` | [`PinDir`]: the pin layout and the node lock; [`unload`] |
//! | `probe` | [`probe`]: kernel features, before anything is loaded |
//! | `bpffs`, `cgroup` | mounting bpffs; cgroup v2 directories and ids |
//! | `netns` | [`PodNetns`], [`NetnsCookie`]: a pod as the programs know it |
//! | `adopt` | finding a proxy that was listening before its pod was enrolled |
//! | `sys` | the raw `bpf(2)` commands aya does not make |

mod adopt;
mod backend;
mod bpffs;
mod cgroup;
mod error;
pub mod explain;
mod maps;
mod meta;
mod netns;
mod node;
mod owners;
mod pin_dir;
mod probe;
mod sys;

pub use backend::{Collected, Ebpf, Failure, Target};
pub use bpffs::{is_bpffs, mount_bpffs};
pub use cgroup::{AttachedCgroup, Attachment, CgroupId, cgroup2_root};
pub use error::Error;
pub use maps::{MapEntries, MapPlan, PortPrefix};
pub use meta::PodMetadata;
pub use netns::{NetnsCookie, PodNetns};
pub use node::{
    Bypassed, Change, Enrollment, MapUsage, NetnsLink, Node, ProgramCost, SkMsgState, Stats, Upgrade,
};
pub use owners::resolve_owners;
pub use pin_dir::{NodeLock, PinDir, unload};
pub use probe::probe;

/// The programs' object, built by `build.rs` (empty when built with `AYA_BUILD_SKIP=1`).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/capture-ebpf-programs"));
