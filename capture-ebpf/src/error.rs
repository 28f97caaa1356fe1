//! The eBPF backend's errors.

use std::io;
use std::path::PathBuf;

use aya::maps::MapError;
use aya::pin::PinError;
use aya::programs::ProgramError;
use capture_core::SpecError;

use crate::{AttachedCgroup, CgroupId};

/// Everything that can go wrong planning, loading, attaching and enrolling.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spec does not validate.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// An owner is given by name; the kernel compares numeric ids.
    #[error("owner {name:?} in {field} is a name; the eBPF backend needs numeric ids")]
    OwnerName {
        /// The spec field (and istio-iptables flag) it came from.
        field: &'static str,
        /// The name as given.
        name: String,
    },
    /// An owner given by name that this system does not know ([`resolve_owners`](crate::resolve_owners)).
    #[error("invalid value {name:?} for {flag}: no such {kind}")]
    UnknownOwner {
        /// The flag or variable.
        flag: &'static str,
        /// The name.
        name: String,
        /// `user` or `group`.
        kind: &'static str,
    },
    /// A capture feature the eBPF backend does not implement yet.
    #[error("{feature} is not supported by the eBPF backend yet; use the iptables backend")]
    NotImplemented {
        /// What is missing.
        feature: &'static str,
    },
    /// The kernel lacks a program type, map type, helper or hook the programs need.
    #[error(
        "this kernel does not support {feature}; the eBPF backend needs Linux {min_kernel} or later for it"
    )]
    Unsupported {
        /// The missing feature.
        feature: &'static str,
        /// The first kernel release that has it.
        min_kernel: &'static str,
    },
    /// Probing for a kernel feature failed for another reason than its absence.
    #[error("probing kernel support for {feature} failed")]
    Probe {
        /// The feature probed.
        feature: &'static str,
        /// Why.
        #[source]
        source: ProgramError,
    },
    /// The embedded object is empty: capture-ebpf was built with `AYA_BUILD_SKIP=1`.
    #[error(
        "capture-ebpf was built without its eBPF object (AYA_BUILD_SKIP=1); rebuild it with the toolchain from scripts/setup"
    )]
    ObjectMissing,
    /// The object could not be parsed or its maps created.
    #[error("loading the eBPF object failed")]
    Load(#[source] Box<aya::EbpfError>),
    /// A program could not be found, loaded (verified) or attached.
    #[error("program {program}: {op} failed")]
    Program {
        /// The program's name.
        program: &'static str,
        /// `load`, `attach` or `take link`.
        op: &'static str,
        /// Why.
        #[source]
        source: ProgramError,
    },
    /// A map could not be opened, read or written.
    #[error("map {map}: {op} failed")]
    Map {
        /// The map's name.
        map: &'static str,
        /// What was done.
        op: &'static str,
        /// Why.
        #[source]
        source: MapError,
    },
    /// The pins were made by a capture whose maps mean something else.
    #[error(
        "eBPF pins under {} have {}, and this capture has map layout v{expected}: {}",
        pin_dir.display(),
        found.map_or_else(|| "no layout version (they come from an older capture)".to_owned(), |v| format!("map layout v{v}")),
        layout_advice(*found, pin_dir)
    )]
    Layout {
        /// The pin directory.
        pin_dir: PathBuf,
        /// The version the pins carry, if any.
        found: Option<u32>,
        /// This capture's version.
        expected: u32,
    },
    /// A pinned map cannot be carried over into this capture's programs.
    #[error(
        "cannot upgrade the eBPF programs under {}: map {map} {reason}; only unloading them (capture-init ebpf unload --bpffs {}) and loading this capture's replaces them, which stops capture on this node in between",
        pin_dir.display(),
        pin_dir.parent().unwrap_or(pin_dir).display()
    )]
    Migration {
        /// The pin directory.
        pin_dir: PathBuf,
        /// The map.
        map: &'static str,
        /// What stands in the way.
        reason: String,
    },
    /// A map has no room for the pod's entries; the pod keeps its previous configuration.
    #[error(
        "map {map} is full: enrolled pods hold its entries; `capture-init ebpf gc` reclaims those of pods whose network namespace is gone, and `capture-init ebpf pods` lists the rest"
    )]
    MapFull {
        /// The map's name.
        map: &'static str,
        /// The kernel's error (`ENOSPC`, or `E2BIG` for a hash map).
        #[source]
        source: MapError,
    },
    /// A text of a pod's metadata does not fit its field of the map value.
    #[error("{field} {value:?} is {} bytes, more than the {max} the eBPF pod metadata holds", value.len())]
    MetadataTooLong {
        /// Which text.
        field: &'static str,
        /// The text.
        value: String,
        /// The field's capacity in bytes.
        max: usize,
    },
    /// Pinning a link or map failed.
    #[error("pinning {path} failed")]
    Pin {
        /// Where.
        path: PathBuf,
        /// Why.
        #[source]
        source: PinError,
    },
    /// The pin directory's parent is not on a bpf filesystem.
    #[error(
        "{path} is not on a bpf filesystem; mount one there (mount -t bpf bpf {path}, or capture-init's --mount-bpffs), or fix the path"
    )]
    NotBpffs {
        /// The directory.
        path: PathBuf,
    },
    /// The directory to attach to is not a cgroup v2 directory.
    #[error("{path} is not a cgroup v2 directory; attach to a directory below the cgroup2 mount")]
    NotCgroup2 {
        /// The directory.
        path: PathBuf,
    },
    /// Programs are already pinned under this directory.
    #[error("capture's programs are already installed under {path}")]
    AlreadyLoaded {
        /// The pin directory.
        path: PathBuf,
    },
    /// The programs pinned under `pin_dir` do not act on the processes of `cgroup`: they are
    /// attached to another cgroup, which is neither `cgroup` nor one of its ancestors.
    #[error(
        "capture's programs under {pin_dir} are attached to {attached}, and {cgroup} (id {cgroup_id}) is neither that cgroup nor below it, so its processes would not be captured; uninstall the programs first, or use that cgroup"
    )]
    AttachedElsewhere {
        /// The pin directory.
        pin_dir: PathBuf,
        /// Where the programs are attached.
        attached: AttachedCgroup,
        /// The cgroup v2 directory they were expected to act on.
        cgroup: PathBuf,
        /// Its id.
        cgroup_id: CgroupId,
    },
    /// A program pinned under `pin_dir` is attached to no cgroup (its link was detached, or its
    /// cgroup removed), so it acts nowhere.
    #[error(
        "capture's program {program} under {pin_dir} is attached to no cgroup (its link was detached, or its cgroup removed), so nothing is captured; uninstall the programs and install them again"
    )]
    Detached {
        /// The pin directory.
        pin_dir: PathBuf,
        /// The program.
        program: &'static str,
    },
    /// The node's `sk_lookup` program is not in its program array, so no pod's stub reaches it.
    #[error(
        "capture's sk_lookup program is missing from {}, so no pod's inbound connections are captured; replace the programs in place (capture-init ebpf upgrade --always) or install them again",
        pin_dir.join("maps").join(capture_ebpf_common::SK_LOOKUP_PROGS).display()
    )]
    NoSkLookup {
        /// The pin directory.
        pin_dir: PathBuf,
    },
    /// No programs are pinned under this directory.
    #[error("capture's programs are not installed under {path}")]
    NotLoaded {
        /// The pin directory.
        path: PathBuf,
    },
    /// [`Node::enroll`](crate::Node::enroll) was called outside the pod's network namespace,
    /// or [`Node::enroll_netns`](crate::Node::enroll_netns) given another namespace.
    #[error(
        "the network namespace to enroll (cookie {}) is not the pod's (cookie {}); enroll from inside the pod's namespace",
        found.0,
        pod.0
    )]
    NetnsMismatch {
        /// The pod's namespace cookie.
        pod: crate::NetnsCookie,
        /// The cookie of the namespace given.
        found: crate::NetnsCookie,
    },
    /// The node lock ([`PinDir::lock`](crate::PinDir::lock)) could not be taken.
    #[error("cannot lock {path}")]
    Lock {
        /// The bpf filesystem's directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// `::6` could not be put on `lo` ([`PodNetns::set_up`](crate::PodNetns::set_up)).
    #[error(transparent)]
    Netlink(#[from] capture_core::netlink::NetlinkError),
    /// A file-system operation failed.
    #[error("{op} {path} failed")]
    Io {
        /// What was done.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A pod's `sk_lookup` stub (its netns cookie and a tail call into the node's program)
    /// could not be loaded.
    #[error("loading the pod's sk_lookup stub: {step} failed")]
    Stub {
        /// The step.
        step: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A system call failed.
    #[error("{call} failed")]
    Syscall {
        /// The call.
        call: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
}

impl From<capture_core::host::RunError> for Error {
    fn from(e: capture_core::host::RunError) -> Self {
        use capture_core::host::RunError;
        match e {
            RunError::Setns { source, .. } => Self::Syscall {
                call: "setns(CLONE_NEWNET)",
                source: source.into(),
            },
            RunError::Home(source) | RunError::Spawn(source) => Self::Syscall {
                call: "enter a network namespace on a thread",
                source,
            },
            RunError::Panicked(what) => Self::Syscall {
                call: "enter a network namespace on a thread",
                source: io::Error::other(format!("panicked: {what}")),
            },
        }
    }
}

/// What to do about pins of layout `found`.
fn layout_advice(found: Option<u32>, pin_dir: &std::path::Path) -> String {
    let bpffs = pin_dir.parent().unwrap_or(pin_dir).display();
    match found {
        Some(v) if capture_ebpf_common::UPGRADES_FROM.contains(&v) => format!(
            "upgrade them in place (capture-init ebpf upgrade --bpffs {bpffs}, or this capture's node agent), which keeps every pod captured"
        ),
        _ => format!(
            "their maps would be read with the wrong meaning; unload them first (capture-init ebpf unload --bpffs {bpffs}), which stops capture on this node until the programs are loaded again"
        ),
    }
}
