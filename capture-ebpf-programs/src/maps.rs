//! The maps, named as `capture_ebpf_common` names them (the static's name is the map's name).

use core::ptr::read_volatile;

use aya_ebpf::bindings::BPF_F_NO_PREALLOC;
use aya_ebpf::macros::map;
use aya_ebpf::maps::lpm_trie::Key;
use aya_ebpf::maps::{
    Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, ProgramArray, SockHash,
};

use crate::net::Ip;
use capture_ebpf_common::{
    CIDR_KEY_FIXED_BITS, CidrKey, FAMILY_V4, FAMILY_V6, ListenerKey, MAX_CIDR_ENTRIES, MAX_CONNECTIONS,
    MAX_LISTENERS, MAX_OWNER_ENTRIES, MAX_POD_STATS, MAX_PODS, MAX_PORT_ENTRIES, MAX_SPLICE_PASSED,
    MAX_SPLICED, NODE_SK_MSG, NodeConfig, OrigDst, OwnerKey, PORT_KEY_FIXED_BITS, PairKey, PodConfig,
    PodMeta, PodStats, PortKey, STAT_COUNT, STAT_SLOTS, SpliceKey,
};

#[map]
pub static POD_CONFIG: HashMap<u64, PodConfig> = HashMap::with_max_entries(MAX_PODS, 0);

#[map]
pub static OWNERS: HashMap<OwnerKey, u8> = HashMap::with_max_entries(MAX_OWNER_ENTRIES, 0);

#[map]
pub static PORTS: LpmTrie<PortKey, u8> = LpmTrie::with_max_entries(MAX_PORT_ENTRIES, 0);

#[map]
pub static CIDRS: LpmTrie<CidrKey, u8> = LpmTrie::with_max_entries(MAX_CIDR_ENTRIES, 0);

#[map]
pub static ORIG_BY_COOKIE: HashMap<u64, OrigDst> = HashMap::with_max_entries(MAX_CONNECTIONS, 0);

#[map]
pub static ORIG_BY_PAIR: HashMap<PairKey, OrigDst> = HashMap::with_max_entries(MAX_CONNECTIONS, 0);

#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_SLOTS, 0);

#[map]
pub static INBOUND_LISTENERS: SockHash<ListenerKey> = SockHash::with_max_entries(MAX_LISTENERS, 0);

/// Userspace only (capture-cni's enrollments, CNI GC); no program reads it. Not preallocated:
/// most nodes' pods leave most of it unused.
#[map]
pub static POD_META: HashMap<u64, PodMeta> =
    HashMap::with_max_entries(MAX_PODS, aya_ebpf::bindings::BPF_F_NO_PREALLOC);

// Not preallocated: an entry costs memory (a value per CPU) only while its pod is enrolled.
// Only the loader inserts, so the programs never allocate.
#[map]
pub static POD_STATS: PerCpuHashMap<u64, PodStats> =
    PerCpuHashMap::with_max_entries(MAX_POD_STATS, BPF_F_NO_PREALLOC);

/// The node's `sk_lookup` program, in slot 0; no program here reads it: each pod's stub,
/// assembled by the loader, tail calls into it (`capture_ebpf_common::SK_LOOKUP_PROGS`).
#[map]
pub static SK_LOOKUP_PROGS: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// The network namespace cookie of the socket lookup in progress on this CPU, written by the
/// pod's stub right before its tail call (`capture_ebpf_common::LOOKUP_NETNS`).
#[map]
pub static LOOKUP_NETNS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// The node's settings, in slot 0 (`capture_ebpf_common::NODE_CONFIG`).
#[map]
pub static NODE_CONFIG: Array<NodeConfig> = Array::with_max_entries(1, 0);

/// The sockets of spliced connections; the `sk_msg` program is attached to it
/// (`capture_ebpf_common::SPLICE`).
#[map]
pub static SPLICE: SockHash<SpliceKey> = SockHash::with_max_entries(MAX_SPLICED, 0);

/// Spliced sockets that sent a message the ordinary way (`capture_ebpf_common::SPLICE_PASSED`).
#[map]
pub static SPLICE_PASSED: LruHashMap<SpliceKey, u8> = LruHashMap::with_max_entries(MAX_SPLICE_PASSED, 0);

/// Whether the node splices app-proxy connections (`NODE_SK_MSG`).
#[inline(always)]
pub fn sk_msg_on() -> bool {
    NODE_CONFIG.get(0).is_some_and(|c| {
        // SAFETY: a reference to a live map value.
        unsafe { read_volatile(&raw const c.flags) & NODE_SK_MSG != 0 }
    })
}

/// Adds one to a `STAT_*` counter of this CPU, node-wide only; events of a pod use
/// [`count_pod`].
#[inline(always)]
pub fn count(stat: u32) {
    if let Some(slot) = STATS.get_ptr_mut(stat) {
        // SAFETY: the pointer is this CPU's slot of a live per-CPU array element, and BPF
        // programs do not preempt each other on one CPU.
        unsafe { *slot += 1 };
    }
}

/// Adds one to a `STAT_*` counter of this CPU, node-wide and in the counters of the pod whose
/// network namespace cookie is `netns` (when it has an entry: enrolled pods do).
#[inline(always)]
pub fn count_pod(netns: u64, stat: u32) {
    count(stat);
    if stat >= STAT_COUNT {
        return;
    }
    if let Some(counters) = POD_STATS.get_ptr_mut(netns) {
        // SAFETY: the pointer is this CPU's value of a live per-CPU hash entry, `stat` is in
        // bounds (checked above), and BPF programs do not preempt each other on one CPU.
        unsafe { (*counters)[stat as usize] += 1 };
    }
}

/// Adds one to two `STAT_*` counters of this CPU (a total and its reason), node-wide and in
/// the pod's counters, with one lookup of the pod's entry.
#[inline(always)]
pub fn count_pod2(netns: u64, total: u32, reason: u32) {
    count(total);
    count(reason);
    if total >= STAT_COUNT || reason >= STAT_COUNT {
        return;
    }
    if let Some(counters) = POD_STATS.get_ptr_mut(netns) {
        // SAFETY: as in `count_pod`; both indexes are in bounds (checked above).
        unsafe {
            (*counters)[total as usize] += 1;
            (*counters)[reason as usize] += 1;
        }
    }
}

/// The configuration of the pod whose network namespace has this cookie, if enrolled.
#[inline(always)]
pub fn pod_config(netns: u64) -> Option<PodConfig> {
    // SAFETY: the value is copied out at once; a concurrent update can only make it a
    // mix of two valid configurations' bytes for this one call, as with any map read.
    POD_CONFIG.get_ptr(netns).map(|p| unsafe { *p })
}

/// Whether `port` is in the pod's port list `list` (a `PORTS_*`) at `generation`.
#[inline(always)]
pub fn in_ports(netns: u64, generation: u32, list: u16, port: u16) -> bool {
    let key = Key::new(
        PORT_KEY_FIXED_BITS + 16,
        PortKey {
            netns,
            generation,
            list,
            port: port.to_be_bytes(),
        },
    );
    PORTS.get(&key).is_some_and(|v| {
        // SAFETY: a reference to a live map value.
        unsafe { read_volatile(v) != 0 }
    })
}

/// Whether `ip` is in the pod's address list `list` (a `CIDRS_*`) at `generation`.
#[inline(always)]
pub fn in_cidrs(netns: u64, generation: u32, list: u8, ip: &Ip) -> bool {
    let (family, bits) = if ip.v4 { (FAMILY_V4, 32) } else { (FAMILY_V6, 128) };
    let key = Key::new(
        CIDR_KEY_FIXED_BITS + bits,
        CidrKey {
            netns,
            generation,
            list,
            family,
            _pad: [0; 2],
            addr: ip.bytes,
        },
    );
    CIDRS.get(&key).is_some_and(|v| {
        // SAFETY: a reference to a live map value.
        unsafe { read_volatile(v) != 0 }
    })
}
