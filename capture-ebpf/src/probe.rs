//! Probing the kernel for every program type, map type and helper the programs use, before
//! anything is loaded: a miss names the feature and the first kernel that has it.

use aya::maps::MapType;
use aya::programs::ProgramType;
use aya::sys::{BpfHelper, is_helper_supported, is_map_supported, is_program_supported};

use crate::Error;

/// Checks that the kernel has every program type, map type and helper the programs use,
/// without changing anything.
///
/// # Errors
/// [`Error::Unsupported`] naming the first missing feature and the kernel that brings it, or
/// [`Error::Probe`] when a probe itself fails.
pub fn probe() -> Result<(), Error> {
    let program_types = [
        (ProgramType::CgroupSockAddr, "cgroup sock_addr programs", "4.17"),
        (ProgramType::SockOps, "sock_ops programs", "4.13"),
        (ProgramType::CgroupSockopt, "cgroup sockopt programs", "5.3"),
        (ProgramType::CgroupSock, "cgroup sock programs", "4.10"),
        (ProgramType::SkLookup, "sk_lookup programs", "5.9"),
    ];
    for (program_type, feature, min_kernel) in program_types {
        let supported =
            is_program_supported(program_type).map_err(|source| Error::Probe { feature, source })?;
        if !supported {
            return Err(Error::Unsupported { feature, min_kernel });
        }
    }
    let map_types = [
        (MapType::LpmTrie, "LPM trie maps", "4.11"),
        (MapType::PerCpuArray, "per-CPU array maps", "4.6"),
        (MapType::SockHash, "sockhash maps", "4.18"),
    ];
    for (map_type, feature, min_kernel) in map_types {
        let supported = is_map_supported(map_type).map_err(|source| Error::Probe {
            feature,
            source: source.into(),
        })?;
        if !supported {
            return Err(Error::Unsupported { feature, min_kernel });
        }
    }
    let helpers = [
        (
            ProgramType::CgroupSockAddr,
            BpfHelper::BPF_FUNC_get_netns_cookie,
            "bpf_get_netns_cookie in cgroup sock_addr programs",
            "5.7",
        ),
        (
            ProgramType::CgroupSockAddr,
            BpfHelper::BPF_FUNC_get_socket_cookie,
            "bpf_get_socket_cookie in cgroup sock_addr programs",
            "5.7",
        ),
        (
            ProgramType::CgroupSockAddr,
            BpfHelper::BPF_FUNC_get_current_uid_gid,
            "bpf_get_current_uid_gid in cgroup sock_addr programs",
            "4.17",
        ),
        (
            ProgramType::SockOps,
            BpfHelper::BPF_FUNC_get_netns_cookie,
            "bpf_get_netns_cookie in sock_ops programs",
            "5.15",
        ),
        (
            ProgramType::SockOps,
            BpfHelper::BPF_FUNC_sock_ops_cb_flags_set,
            "bpf_sock_ops_cb_flags_set",
            "4.16",
        ),
        (
            ProgramType::CgroupSockopt,
            BpfHelper::BPF_FUNC_get_netns_cookie,
            "bpf_get_netns_cookie in cgroup sockopt programs",
            "5.8",
        ),
        (
            ProgramType::SockOps,
            BpfHelper::BPF_FUNC_sock_hash_update,
            "bpf_sock_hash_update in sock_ops programs",
            "4.18",
        ),
        (
            ProgramType::CgroupSock,
            BpfHelper::BPF_FUNC_get_socket_cookie,
            "bpf_get_socket_cookie in cgroup sock programs",
            "5.7",
        ),
        (
            ProgramType::SkLookup,
            BpfHelper::BPF_FUNC_sk_assign,
            "bpf_sk_assign in sk_lookup programs",
            "5.9",
        ),
    ];
    for (program_type, helper, feature, min_kernel) in helpers {
        let supported =
            is_helper_supported(program_type, helper).map_err(|source| Error::Probe { feature, source })?;
        if !supported {
            return Err(Error::Unsupported { feature, min_kernel });
        }
    }
    // cgroup bpf_links (5.7), the getpeername hooks (5.8), the UDP sendmsg (4.18) and recvmsg
    // (5.2) hooks, sock_release (5.9) and listening sockets in a sockhash from sock_ops (5.7)
    // have no cheap probe of their own; the helper probes above already require 5.15.
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_feature_and_kernel() {
        let e = Error::Unsupported {
            feature: "bpf_get_netns_cookie in sock_ops programs",
            min_kernel: "5.15",
        };
        assert_eq!(
            e.to_string(),
            "this kernel does not support bpf_get_netns_cookie in sock_ops programs; \
             the eBPF backend needs Linux 5.15 or later for it"
        );
    }
}
