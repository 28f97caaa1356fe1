//! The maps, named as `capture_ebpf_common` names them (the static's name is the map's name).

use aya_ebpf::macros::map;
use aya_ebpf::maps::{HashMap, LpmTrie, PerCpuArray};
use capture_ebpf_common::{
    CidrKey, MAX_CIDR_ENTRIES, MAX_CONNECTIONS, MAX_OWNER_ENTRIES, MAX_PODS, MAX_PORT_ENTRIES, OrigDst,
    OwnerKey, PairKey, PodConfig, PortKey, STAT_COUNT,
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
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_COUNT, 0);

/// Adds one to a `STAT_*` counter of this CPU.
#[inline(always)]
pub fn count(stat: u32) {
    if let Some(slot) = STATS.get_ptr_mut(stat) {
        // SAFETY: the pointer is this CPU's slot of a live per-CPU array element, and BPF
        // programs do not preempt each other on one CPU.
        unsafe { *slot += 1 };
    }
}

/// The configuration of the pod whose network namespace has this cookie, if enrolled.
#[inline(always)]
pub fn pod_config(netns: u64) -> Option<PodConfig> {
    // SAFETY: the value is copied out at once; a concurrent update can only make it a
    // mix of two valid configurations' bytes for this one call, as with any map read.
    POD_CONFIG.get_ptr(netns).map(|p| unsafe { *p })
}
