//! Loading the programs once per node, attaching them to a cgroup, and enrolling pods.
//!
//! ```text
//! Node::install(cgroup, pin_dir)   probe ─> load + verify all ─> pin maps ─> link + pin each program
//! Node::open(pin_dir)              maps from their pins (any process, any time later)
//! Node::open_for(cgroup, pin_dir)  the same, once every pinned link's program is known to act
//!                                  on `cgroup` (link info ─> its program among cgroup's effective ones)
//! node.enroll(&pod, &plan)         sk_lookup instance attached to the pod's netns (first time)
//!                                  ─> next generation's entries ─> POD_CONFIG switch ─> old entries removed
//! node.unenroll(cookie)            POD_CONFIG entry removed first ─> sk_lookup link detached
//!                                  ─> the pod's entries and inbound listeners removed
//! Node::uninstall(pin_dir)         link pins detached and removed ─> map pins removed ─> directory removed
//! ```
//!
//! The pin directory holds `links/<program>` (one cgroup bpf_link per program),
//! `inbound/<netns cookie>` (one network-namespace bpf_link per enrolled pod, for its own
//! instance of the `sk_lookup` program) and `maps/<MAP>`. Links are created with
//! `BPF_LINK_CREATE` in multi-attach mode, so other programs on the same cgroup hooks (another
//! agent's) are neither evicted nor block us, and a crashed loader leaves nothing attached that
//! a removal of the pins cannot undo.

use std::ffi::CString;
use std::fs::{self, File};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{HashMap, Map, MapData, MapError, PerCpuArray, SockHash};
use aya::programs::{CgroupSockAddr, CgroupSockopt, ProgramType, SkLookup, SockOps};
use aya::sys::{BpfHelper, is_helper_supported, is_map_supported, is_program_supported};
use aya::{EbpfLoader, maps::MapType};
use capture_ebpf_common::{
    AF_INET, AF_INET6, CIDRS, CidrKey, INBOUND_LISTENERS, ListenerKey, MAP_NAMES, NETNS_COOKIE_GLOBAL,
    ORIG_BY_COOKIE, ORIG_BY_PAIR, OWNERS, OrigDst, OwnerKey, POD_CONFIG, PORTS, PairKey, PodConfig, PortKey,
    STAT_COUNT, STATS, programs,
};

use crate::netns::{NetnsCookie, PodNetns};
use crate::{AttachedCgroup, Attachment, CgroupId, Error, MapPlan, OBJECT};

/// `BPF_FS_MAGIC` from `statfs(2)`.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// `CGROUP2_SUPER_MAGIC` from `statfs(2)`.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// How a program is attached; the value is the kernel's `bpf_attach_type`.
#[derive(Debug, Clone, Copy)]
enum Hook {
    Connect4 = 10,
    Connect6 = 11,
    SockOps = 3,
    GetSockopt = 21,
    GetPeerName4 = 29,
    GetPeerName6 = 30,
}

/// `BPF_SK_LOOKUP`: the attach type of the `sk_lookup` program, on a network namespace.
const SK_LOOKUP_ATTACH: u32 = 36;

/// Every cgroup program in the object with its hook (the `sk_lookup` program is attached per
/// pod, not to the cgroup).
const PROGRAMS: [(&str, Hook); 6] = [
    (programs::CONNECT4, Hook::Connect4),
    (programs::CONNECT6, Hook::Connect6),
    (programs::SOCKOPS, Hook::SockOps),
    (programs::GETSOCKOPT, Hook::GetSockopt),
    (programs::GETPEERNAME4, Hook::GetPeerName4),
    (programs::GETPEERNAME6, Hook::GetPeerName6),
];

/// The node's installed programs, reached through their pinned maps.
///
/// # Examples
/// ```no_run
/// use std::path::Path;
/// use capture_core::CaptureSpec;
/// use capture_ebpf::{MapPlan, Node, PodNetns};
///
/// let bpffs = Path::new("/sys/fs/bpf");
/// capture_ebpf::mount_bpffs(bpffs)?;
/// let cgroup = capture_ebpf::cgroup2_root()?;
/// let mut node = Node::install(&cgroup, &bpffs.join("capture"))?;
/// // In the pod's network namespace:
/// let pod = PodNetns::current()?;
/// node.enroll(&pod, &MapPlan::from_spec(&CaptureSpec::sidecar())?)?;
/// # Ok::<(), capture_ebpf::Error>(())
/// ```
pub struct Node {
    pin_dir: PathBuf,
    pod_config: HashMap<MapData, u64, PodConfig>,
    owners: HashMap<MapData, OwnerKey, u8>,
    ports: LpmTrie<MapData, PortKey, u8>,
    cidrs: LpmTrie<MapData, CidrKey, u8>,
    orig_by_cookie: HashMap<MapData, u64, OrigDst>,
    orig_by_pair: HashMap<MapData, PairKey, OrigDst>,
    stats: PerCpuArray<MapData, u64>,
    inbound_listeners: SockHash<MapData, ListenerKey>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("pin_dir", &self.pin_dir)
            .finish_non_exhaustive()
    }
}

/// Counters kept by the programs, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Connections redirected to the outbound port.
    pub outbound: u64,
    /// Connections redirected to the inbound port (the proxy calling its own pod).
    pub hairpin: u64,
    /// Connections of enrolled pods left alone.
    pub passed: u64,
    /// `SO_ORIGINAL_DST` answers.
    pub orig_dst: u64,
    /// `getpeername` answers with the original destination.
    pub peername: u64,
    /// Connections left alone because a per-connection map was full.
    pub state_full: u64,
    /// Inbound connections handed to the proxy's inbound listener.
    pub inbound: u64,
    /// Inbound connections refused because the pod's proxy had no inbound listener.
    pub inbound_refused: u64,
}

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
    // cgroup bpf_links (5.7), the getpeername hooks (5.8) and listening sockets in a sockhash
    // from sock_ops (5.7) have no cheap probe of their own; the helper probes above already require 5.15.
    Ok(())
}

impl Node {
    /// Loads the programs, pins their maps under `pin_dir/maps`, attaches every program to the
    /// cgroup v2 directory `cgroup` with a bpf_link and pins the links under `pin_dir/links`.
    ///
    /// Everything is probed and verified before anything is attached or pinned; if a later
    /// step fails, what was pinned is removed again.
    ///
    /// # Errors
    /// [`Error::ObjectMissing`], [`Error::Unsupported`] (from [`probe`]), [`Error::NotBpffs`]
    /// when `pin_dir`'s parent is not on bpffs, [`Error::AlreadyInstalled`], and the errors of
    /// loading, pinning and attaching.
    ///
    /// # Minimum kernel version
    /// 5.15 (see [`probe`]).
    pub fn install(cgroup: &Path, pin_dir: &Path) -> Result<Node, Error> {
        if OBJECT.is_empty() {
            return Err(Error::ObjectMissing);
        }
        probe()?;
        let parent = pin_dir.parent().unwrap_or(Path::new("/"));
        if !is_bpffs(parent)? {
            return Err(Error::NotBpffs {
                path: parent.to_owned(),
            });
        }
        if pin_dir.join("links").exists() {
            return Err(Error::AlreadyInstalled {
                path: pin_dir.to_owned(),
            });
        }
        if !is_cgroup2(cgroup)? {
            return Err(Error::NotCgroup2 {
                path: cgroup.to_owned(),
            });
        }
        let cgroup_dir = File::open(cgroup).map_err(|source| Error::Io {
            op: "open cgroup",
            path: cgroup.to_owned(),
            source,
        })?;

        let mut ebpf = EbpfLoader::new()
            .load(OBJECT)
            .map_err(|e| Error::Load(Box::new(e)))?;
        for (name, hook) in PROGRAMS {
            let program = ebpf.program_mut(name).ok_or(Error::Program {
                program: name,
                op: "find",
                source: aya::programs::ProgramError::NotLoaded,
            })?;
            let err = |source| Error::Program {
                program: name,
                op: "load",
                source,
            };
            match hook {
                Hook::SockOps => <&mut SockOps>::try_from(program).map_err(err)?.load(),
                Hook::GetSockopt => <&mut CgroupSockopt>::try_from(program).map_err(err)?.load(),
                _ => <&mut CgroupSockAddr>::try_from(program).map_err(err)?.load(),
            }
            .map_err(err)?;
        }
        // Verified here once, so that enrolling cannot meet a verifier error; each pod gets its
        // own instance (see `attach_inbound`), this one is dropped unattached.
        load_sk_lookup(&mut ebpf)?;

        let mut pins = Pins::new(pin_dir)?;
        for name in MAP_NAMES {
            let path = pin_dir.join("maps").join(name);
            let map = ebpf.map(name).ok_or_else(|| Error::Map {
                map: name,
                op: "find",
                source: MapError::InvalidName { name: name.into() },
            })?;
            map.pin(&path).map_err(|source| Error::Pin {
                path: path.clone(),
                source,
            })?;
            pins.files.push(path);
        }
        for (name, hook) in PROGRAMS {
            let program = ebpf.program(name).expect("loaded above");
            let fd = program.fd().map_err(|source| Error::Program {
                program: name,
                op: "get fd",
                source,
            })?;
            let link = link_create(fd.as_fd(), cgroup_dir.as_fd(), hook as u32).map_err(|source| {
                Error::Syscall {
                    call: "bpf(BPF_LINK_CREATE)",
                    source,
                }
            })?;
            let path = pin_dir.join("links").join(name);
            obj_pin(link.as_fd(), &path).map_err(|source| Error::Io {
                op: "pin link",
                path: path.clone(),
                source,
            })?;
            pins.files.push(path);
            // Closing our link fd leaves the pin holding the attachment.
        }
        pins.keep();
        drop(ebpf);
        Node::open(pin_dir)
    }

    /// Opens the maps of programs installed under `pin_dir`, wherever they are attached: for
    /// reading and removing. To enroll pods whose processes are in a given cgroup, use
    /// [`Node::open_for`], which checks that the programs act there.
    ///
    /// # Errors
    /// [`Error::NotInstalled`] when nothing is pinned there, or the map errors of opening.
    pub fn open(pin_dir: &Path) -> Result<Node, Error> {
        if !pin_dir.join("links").is_dir() {
            return Err(Error::NotInstalled {
                path: pin_dir.to_owned(),
            });
        }
        let open = |name: &'static str| -> Result<Map, Error> {
            let path = pin_dir.join("maps").join(name);
            let err = |source| Error::Map {
                map: name,
                op: "open pin",
                source,
            };
            Map::from_map_data(MapData::from_pin(path).map_err(err)?).map_err(err)
        };
        let typed = |name: &'static str, source| Error::Map {
            map: name,
            op: "open",
            source,
        };
        Ok(Node {
            pin_dir: pin_dir.to_owned(),
            pod_config: HashMap::try_from(open(POD_CONFIG)?).map_err(|e| typed(POD_CONFIG, e))?,
            owners: HashMap::try_from(open(OWNERS)?).map_err(|e| typed(OWNERS, e))?,
            ports: LpmTrie::try_from(open(PORTS)?).map_err(|e| typed(PORTS, e))?,
            cidrs: LpmTrie::try_from(open(CIDRS)?).map_err(|e| typed(CIDRS, e))?,
            orig_by_cookie: HashMap::try_from(open(ORIG_BY_COOKIE)?).map_err(|e| typed(ORIG_BY_COOKIE, e))?,
            orig_by_pair: HashMap::try_from(open(ORIG_BY_PAIR)?).map_err(|e| typed(ORIG_BY_PAIR, e))?,
            stats: PerCpuArray::try_from(open(STATS)?).map_err(|e| typed(STATS, e))?,
            inbound_listeners: SockHash::try_from(open(INBOUND_LISTENERS)?)
                .map_err(|e| typed(INBOUND_LISTENERS, e))?,
        })
    }

    /// [`Node::open`], once it is checked that every pinned program acts on the processes of
    /// the cgroup v2 directory `cgroup`: each link's program is among the cgroup's effective
    /// programs for its hook (`BPF_PROG_QUERY` with `BPF_F_QUERY_EFFECTIVE`), which it is when
    /// the link is attached to `cgroup` or to one of its ancestors. Programs attached elsewhere
    /// would leave the pods enrolled through them uncaptured, so they are refused rather than
    /// used.
    ///
    /// # Errors
    /// [`Error::AttachedElsewhere`] naming both cgroups, [`Error::Detached`] when a link is
    /// attached to no cgroup, [`Error::NotCgroup2`] when `cgroup` is not a cgroup v2
    /// directory, and the errors of [`Node::open`] and of reading the links.
    ///
    /// # Examples
    /// ```no_run
    /// use std::path::Path;
    /// use capture_ebpf::Node;
    ///
    /// let cgroup = capture_ebpf::cgroup2_root()?;
    /// let node = Node::open_for(&cgroup, Path::new("/sys/fs/bpf/capture"))?;
    /// # Ok::<(), capture_ebpf::Error>(())
    /// ```
    pub fn open_for(cgroup: &Path, pin_dir: &Path) -> Result<Node, Error> {
        let node = Node::open(pin_dir)?;
        let cgroup_id = CgroupId::of(cgroup)?;
        let dir = File::open(cgroup).map_err(|source| Error::Io {
            op: "open cgroup",
            path: cgroup.to_owned(),
            source,
        })?;
        for (program, hook) in PROGRAMS {
            let link = node.link_info(program)?;
            let Some(attached) = link.cgroup() else {
                return Err(Error::Detached {
                    pin_dir: pin_dir.to_owned(),
                    program,
                });
            };
            if attached == cgroup_id {
                continue;
            }
            let effective =
                effective_programs(dir.as_fd(), hook as u32).map_err(|source| Error::Syscall {
                    call: "bpf(BPF_PROG_QUERY)",
                    source,
                })?;
            if !effective.contains(&link.prog_id) {
                return Err(Error::AttachedElsewhere {
                    pin_dir: pin_dir.to_owned(),
                    attached: AttachedCgroup::find(attached),
                    cgroup: cgroup.to_owned(),
                    cgroup_id,
                });
            }
        }
        Ok(node)
    }

    /// The cgroup the programs are attached to, read from their pinned links; its directory is
    /// looked up below the cgroup v2 mount.
    ///
    /// # Errors
    /// [`Error::Io`] when a link pin cannot be opened, [`Error::Syscall`] when its info cannot
    /// be read.
    pub fn attachment(&self) -> Result<Attachment, Error> {
        let mut first = None;
        for (program, _) in PROGRAMS {
            match self.link_info(program)?.cgroup() {
                None => return Ok(Attachment::Detached { program }),
                Some(id) => {
                    first.get_or_insert(id);
                }
            }
        }
        let id = first.expect("there are programs");
        Ok(Attachment::Cgroup(AttachedCgroup::find(id)))
    }

    /// The info of `program`'s pinned cgroup link.
    fn link_info(&self, program: &'static str) -> Result<LinkInfo, Error> {
        let path = self.pin_dir.join("links").join(program);
        let link = obj_get(&path).map_err(|source| Error::Io {
            op: "open pinned link",
            path,
            source,
        })?;
        link_info(link.as_fd()).map_err(|source| Error::Syscall {
            call: "bpf(BPF_OBJ_GET_INFO_BY_FD)",
            source,
        })
    }

    /// The pin directory.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Enrolls a pod, or replaces its configuration: its connections are captured as `plan`
    /// says from the moment this returns. Call it in the pod's network namespace (the calling
    /// thread's); [`Node::enroll_netns`] takes the namespace as a descriptor instead.
    ///
    /// The first enrollment attaches the pod's own instance of the `sk_lookup` program to the
    /// namespace (inbound capture). Then the new entries are written under the next
    /// generation, the pod's [`PodConfig`] is switched to it in one map update, and the
    /// previous generation's entries are removed: a connection sees either the old or the new
    /// configuration, never a mix. Last, if no inbound listener of the pod is recorded yet, a
    /// proxy already listening on the inbound port is looked for (its socket is taken from its
    /// process with `pidfd_getfd(2)`, 5.6) and recorded; one that listens later is recorded by
    /// the programs.
    ///
    /// # Errors
    /// [`Error::NetnsMismatch`] when the calling thread is not in `pod`'s network namespace;
    /// [`Error::Map`] when a map is full or cannot be written (the new generation's entries
    /// are removed again and the pod keeps its previous configuration); the errors of loading
    /// and attaching the `sk_lookup` program; [`Error::Io`] when the namespace's socket tables
    /// cannot be read in the search for a listening proxy (the new configuration is in force
    /// then, and enrolling again finishes the search).
    ///
    /// # Minimum kernel version
    /// 5.15 (see [`probe`]).
    pub fn enroll(&mut self, pod: &PodNetns, plan: &MapPlan) -> Result<(), Error> {
        let path = Path::new("/proc/thread-self/ns/net");
        let netns = File::open(path).map_err(|source| Error::Io {
            op: "open",
            path: path.to_owned(),
            source,
        })?;
        check_netns(pod, NetnsCookie::current()?)?;
        self.enroll_checked(netns.as_fd(), pod, plan)
    }

    /// [`Node::enroll`] for the network namespace `netns` (a descriptor of `/run/netns/<name>`
    /// or `/proc/<pid>/ns/net`), from any namespace.
    ///
    /// # Errors
    /// As [`Node::enroll`]: [`Error::NetnsMismatch`] when `netns` is not `pod`'s namespace.
    pub fn enroll_netns(
        &mut self,
        netns: BorrowedFd<'_>,
        pod: &PodNetns,
        plan: &MapPlan,
    ) -> Result<(), Error> {
        check_netns(pod, netns_cookie_of(netns)?)?;
        self.enroll_checked(netns, pod, plan)
    }

    /// [`Node::enroll_netns`] once `netns` is known to be `pod`'s.
    fn enroll_checked(&mut self, netns: BorrowedFd<'_>, pod: &PodNetns, plan: &MapPlan) -> Result<(), Error> {
        let cookie = pod.cookie.0;
        let attached = self.attach_inbound(netns, pod.cookie)?;
        let previous = self.config(pod.cookie)?.map(|c| c.generation);
        let generation = match previous {
            Some(g) => g.wrapping_add(1).max(1),
            None => 1,
        };
        let entries = plan
            .clone()
            .with_local_addrs(&pod.local_addrs)
            .entries(cookie, generation);
        let written = self.write_entries(&entries);
        let switched = written.and_then(|()| {
            self.pod_config
                .insert(cookie, entries.config, 0)
                .map_err(|source| Error::Map {
                    map: POD_CONFIG,
                    op: "insert",
                    source,
                })
        });
        if let Err(e) = switched {
            let _ = self.remove_entries(cookie, |g| g == generation);
            if attached {
                let _ = detach_pinned(&self.inbound_link(pod.cookie));
            }
            return Err(e);
        }
        self.remove_entries(cookie, |g| g != generation)?;
        // A proxy listening from now on is recorded by sockops; one that listened before is
        // found and recorded here.
        if !self.inbound_listeners()?.iter().any(|(c, _)| *c == pod.cookie) {
            for adopted in crate::adopt::listeners(netns, entries.config.inbound_port)? {
                self.register_inbound_listener(pod.cookie, adopted.socket.as_fd())?;
            }
        }
        Ok(())
    }

    /// Attaches the pod's own `sk_lookup` instance to `netns` and pins its link, unless it is
    /// there already. Returns whether it attached one.
    fn attach_inbound(&self, netns: BorrowedFd<'_>, cookie: NetnsCookie) -> Result<bool, Error> {
        let path = self.inbound_link(cookie);
        if path.exists() {
            return Ok(false);
        }
        if OBJECT.is_empty() {
            return Err(Error::ObjectMissing);
        }
        let maps = self.pin_dir.join("maps");
        // The loader below would create and pin any map whose pin is missing.
        for name in MAP_NAMES {
            if !maps.join(name).exists() {
                return Err(Error::NotInstalled {
                    path: self.pin_dir.clone(),
                });
            }
        }
        let mut loader = EbpfLoader::new();
        for name in MAP_NAMES {
            loader.map_pin_path(name, maps.join(name));
        }
        let mut ebpf = loader
            .override_global(NETNS_COOKIE_GLOBAL, &cookie.0, true)
            .load(OBJECT)
            .map_err(|e| Error::Load(Box::new(e)))?;
        let program = load_sk_lookup(&mut ebpf)?;
        let fd = program.fd().map_err(|source| Error::Program {
            program: programs::SK_LOOKUP,
            op: "get fd",
            source,
        })?;
        let link = link_create(fd.as_fd(), netns, SK_LOOKUP_ATTACH).map_err(|source| Error::Syscall {
            call: "bpf(BPF_LINK_CREATE)",
            source,
        })?;
        let dir = self.pin_dir.join("inbound");
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(source) => {
                return Err(Error::Io {
                    op: "create directory",
                    path: dir,
                    source,
                });
            }
        }
        // If pinning fails, dropping `link` (the only reference) detaches the program.
        match obj_pin(link.as_fd(), &path) {
            Ok(()) => Ok(true),
            // Another enrollment of the same pod attached and pinned its instance first.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(source) => Err(Error::Io {
                op: "pin link",
                path,
                source,
            }),
        }
    }

    /// Where the pod's `sk_lookup` link is pinned.
    fn inbound_link(&self, cookie: NetnsCookie) -> PathBuf {
        self.pin_dir.join("inbound").join(cookie.0.to_string())
    }

    /// Whether the pod's `sk_lookup` instance is attached (its link is pinned).
    pub fn inbound_attached(&self, cookie: NetnsCookie) -> bool {
        self.inbound_link(cookie).exists()
    }

    /// Hands the proxy's listening socket `listener` to the programs as `pod`'s inbound
    /// listener, replacing the one recorded for its family.
    ///
    /// Rarely needed: a proxy that starts listening on the inbound port after enrollment is
    /// recorded by the sockops program at `listen()`, and enrolling looks for one that was
    /// already listening in a process it can see.
    ///
    /// # Errors
    /// [`Error::Syscall`] when the socket's address cannot be read; [`Error::Map`] when the
    /// socket is not a listening TCP socket (the kernel refuses it) or the map is full.
    pub fn register_inbound_listener(
        &mut self,
        cookie: NetnsCookie,
        listener: BorrowedFd<'_>,
    ) -> Result<(), Error> {
        let addr: nix::sys::socket::SockaddrStorage = nix::sys::socket::getsockname(listener.as_raw_fd())
            .map_err(|e| Error::Syscall {
                call: "getsockname",
                source: e.into(),
            })?;
        let family = if addr.as_sockaddr_in6().is_some() {
            AF_INET6
        } else {
            AF_INET
        };
        let key = ListenerKey {
            netns: cookie.0,
            family,
            _pad: [0; 6],
        };
        self.inbound_listeners
            .insert(key, listener.as_raw_fd(), 0)
            .map_err(|source| Error::Map {
                map: INBOUND_LISTENERS,
                op: "insert",
                source,
            })
    }

    /// The pods with a recorded inbound listener, with its family (`AF_INET` or `AF_INET6`).
    ///
    /// # Errors
    /// [`Error::Map`] when the map cannot be read.
    pub fn inbound_listeners(&self) -> Result<Vec<(NetnsCookie, u16)>, Error> {
        let mut keys: Vec<(NetnsCookie, u16)> = keys_of(self.inbound_listeners.keys(), INBOUND_LISTENERS)?
            .into_iter()
            .map(|k| (NetnsCookie(k.netns), k.family))
            .collect();
        keys.sort_unstable();
        Ok(keys)
    }

    /// Stops capturing a pod's connections and removes its entries: its configuration first
    /// (every program then leaves the pod alone), then its `sk_lookup` link, its owner, port
    /// and CIDR entries and its recorded inbound listeners. Returns whether it was enrolled.
    /// Works from any network namespace, also after the pod's is gone.
    ///
    /// # Errors
    /// [`Error::Map`] when a map cannot be read or written; [`Error::Syscall`] or [`Error::Io`]
    /// when the link cannot be detached or its pin removed.
    pub fn unenroll(&mut self, cookie: NetnsCookie) -> Result<bool, Error> {
        let enrolled = match self.pod_config.remove(&cookie.0) {
            Ok(()) => true,
            Err(e) if is_missing(&e) => false,
            Err(source) => {
                return Err(Error::Map {
                    map: POD_CONFIG,
                    op: "remove",
                    source,
                });
            }
        };
        // The program passes everything from here on; then it goes.
        detach_pinned(&self.inbound_link(cookie))?;
        self.remove_entries(cookie.0, |_| true)?;
        for family in [AF_INET, AF_INET6] {
            let key = ListenerKey {
                netns: cookie.0,
                family,
                _pad: [0; 6],
            };
            ignore_missing(self.inbound_listeners.remove(&key)).map_err(|source| Error::Map {
                map: INBOUND_LISTENERS,
                op: "remove",
                source,
            })?;
        }
        Ok(enrolled)
    }

    /// The configuration a pod is enrolled with, if any.
    ///
    /// # Errors
    /// [`Error::Map`] when the map cannot be read.
    pub fn config(&self, cookie: NetnsCookie) -> Result<Option<PodConfig>, Error> {
        match self.pod_config.get(&cookie.0, 0) {
            Ok(config) => Ok(Some(config)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(Error::Map {
                map: POD_CONFIG,
                op: "get",
                source,
            }),
        }
    }

    /// Every enrolled pod with its configuration, by cookie.
    ///
    /// # Errors
    /// [`Error::Map`] when the map cannot be read.
    pub fn pods(&self) -> Result<Vec<(NetnsCookie, PodConfig)>, Error> {
        let mut pods = self
            .pod_config
            .iter()
            .map(|item| item.map(|(k, v)| (NetnsCookie(k), v)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| Error::Map {
                map: POD_CONFIG,
                op: "iterate",
                source,
            })?;
        pods.sort_unstable_by_key(|(cookie, _)| *cookie);
        Ok(pods)
    }

    /// What a pod is enrolled with: its [`PodConfig`] and the owner, port and CIDR entries of
    /// the generation in force, each list sorted; `None` when it is not enrolled. Comparing it
    /// with [`MapPlan::entries`] at the same generation tells whether enrolling again would
    /// change anything.
    ///
    /// # Errors
    /// [`Error::Map`] when a map cannot be read.
    pub fn enrolled(&self, cookie: NetnsCookie) -> Result<Option<crate::MapEntries>, Error> {
        let Some(config) = self.config(cookie)? else {
            return Ok(None);
        };
        let (netns, generation) = (cookie.0, config.generation);
        let mut owners: Vec<OwnerKey> = keys_of(self.owners.keys(), OWNERS)?
            .into_iter()
            .filter(|k| k.netns == netns && k.generation == generation)
            .collect();
        let mut ports: Vec<(u32, PortKey)> = keys_of(self.ports.keys(), PORTS)?
            .into_iter()
            .map(|k| (k.prefix_len(), k.data()))
            .filter(|(_, k)| k.netns == netns && k.generation == generation)
            .collect();
        let mut cidrs: Vec<(u32, CidrKey)> = keys_of(self.cidrs.keys(), CIDRS)?
            .into_iter()
            .map(|k| (k.prefix_len(), k.data()))
            .filter(|(_, k)| k.netns == netns && k.generation == generation)
            .collect();
        owners.sort_unstable();
        ports.sort_unstable();
        cidrs.sort_unstable();
        Ok(Some(crate::MapEntries {
            config,
            owners,
            ports,
            cidrs,
        }))
    }

    /// How many per-connection records exist: `(by socket cookie, by 4-tuple)`. Both are
    /// removed when the client socket closes.
    ///
    /// # Errors
    /// [`Error::Map`] when a map cannot be read.
    pub fn connection_entries(&self) -> Result<(usize, usize), Error> {
        let by_cookie = count(self.orig_by_cookie.keys(), ORIG_BY_COOKIE)?;
        let by_pair = count(self.orig_by_pair.keys(), ORIG_BY_PAIR)?;
        Ok((by_cookie, by_pair))
    }

    /// How many entries the pod has in the configuration maps (owners, ports, CIDRs).
    ///
    /// # Errors
    /// [`Error::Map`] when a map cannot be read.
    pub fn pod_entries(&self, cookie: NetnsCookie) -> Result<usize, Error> {
        let netns = cookie.0;
        let owners = keys_of(self.owners.keys(), OWNERS)?
            .iter()
            .filter(|k| k.netns == netns)
            .count();
        let ports = keys_of(self.ports.keys(), PORTS)?
            .iter()
            .filter(|k| k.data().netns == netns)
            .count();
        let cidrs = keys_of(self.cidrs.keys(), CIDRS)?
            .iter()
            .filter(|k| k.data().netns == netns)
            .count();
        Ok(owners + ports + cidrs)
    }

    /// The programs' counters, summed over CPUs.
    ///
    /// # Errors
    /// [`Error::Map`] when the map cannot be read.
    pub fn stats(&self) -> Result<Stats, Error> {
        let mut sums = [0u64; STAT_COUNT as usize];
        for (index, sum) in (0..STAT_COUNT).zip(sums.iter_mut()) {
            let values = self.stats.get(&index, 0).map_err(|source| Error::Map {
                map: STATS,
                op: "get",
                source,
            })?;
            *sum = values.iter().sum();
        }
        let [
            outbound,
            hairpin,
            passed,
            orig_dst,
            peername,
            state_full,
            inbound,
            inbound_refused,
        ] = sums;
        Ok(Stats {
            outbound,
            hairpin,
            passed,
            orig_dst,
            peername,
            state_full,
            inbound,
            inbound_refused,
        })
    }

    /// Detaches and removes everything installed under `pin_dir`: the link pins (the last
    /// reference to each attachment), the map pins and the directory.
    ///
    /// # Errors
    /// [`Error::NotInstalled`], or [`Error::Io`] when a pin cannot be removed.
    pub fn uninstall(self) -> Result<(), Error> {
        let pin_dir = self.pin_dir.clone();
        drop(self);
        uninstall(&pin_dir)
    }

    fn write_entries(&mut self, entries: &crate::MapEntries) -> Result<(), Error> {
        for key in &entries.owners {
            self.owners.insert(key, 1, 0).map_err(|source| Error::Map {
                map: OWNERS,
                op: "insert",
                source,
            })?;
        }
        for (bits, key) in &entries.ports {
            self.ports
                .insert(&Key::new(*bits, *key), 1, 0)
                .map_err(|source| Error::Map {
                    map: PORTS,
                    op: "insert",
                    source,
                })?;
        }
        for (bits, key) in &entries.cidrs {
            self.cidrs
                .insert(&Key::new(*bits, *key), 1, 0)
                .map_err(|source| Error::Map {
                    map: CIDRS,
                    op: "insert",
                    source,
                })?;
        }
        Ok(())
    }

    /// Removes the pod's owner, port and CIDR entries whose generation matches.
    fn remove_entries(&mut self, netns: u64, generation: impl Fn(u32) -> bool) -> Result<(), Error> {
        let remove_err = |map| {
            move |source| Error::Map {
                map,
                op: "remove",
                source,
            }
        };
        for key in keys_of(self.owners.keys(), OWNERS)? {
            if key.netns == netns && generation(key.generation) {
                ignore_missing(self.owners.remove(&key)).map_err(remove_err(OWNERS))?;
            }
        }
        for key in keys_of(self.ports.keys(), PORTS)? {
            let data = key.data();
            if data.netns == netns && generation(data.generation) {
                ignore_missing(self.ports.remove(&key)).map_err(remove_err(PORTS))?;
            }
        }
        for key in keys_of(self.cidrs.keys(), CIDRS)? {
            let data = key.data();
            if data.netns == netns && generation(data.generation) {
                ignore_missing(self.cidrs.remove(&key)).map_err(remove_err(CIDRS))?;
            }
        }
        Ok(())
    }
}

/// Removes what [`Node::install`] pinned under `pin_dir`; see [`Node::uninstall`].
///
/// # Errors
/// [`Error::NotInstalled`], or [`Error::Io`] when a pin cannot be removed.
pub fn uninstall(pin_dir: &Path) -> Result<(), Error> {
    let links = pin_dir.join("links");
    if !links.is_dir() {
        return Err(Error::NotInstalled {
            path: pin_dir.to_owned(),
        });
    }
    let remove = |path: PathBuf| match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(Error::Io {
            op: "remove pin",
            path,
            source,
        }),
    };
    // Links first, each detached explicitly: the kernel drops a removed pin's reference only
    // after an RCU grace period, and the program would stay attached until then.
    for (name, _) in PROGRAMS {
        detach_pinned(&links.join(name))?;
    }
    let inbound = pin_dir.join("inbound");
    match fs::read_dir(&inbound) {
        Ok(entries) => {
            for entry in entries {
                let entry = entry.map_err(|source| Error::Io {
                    op: "read directory",
                    path: inbound.clone(),
                    source,
                })?;
                detach_pinned(&entry.path())?;
            }
            fs::remove_dir(&inbound).map_err(|source| Error::Io {
                op: "remove directory",
                path: inbound.clone(),
                source,
            })?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(Error::Io {
                op: "read directory",
                path: inbound,
                source,
            });
        }
    }
    for name in MAP_NAMES {
        remove(pin_dir.join("maps").join(name))?;
    }
    for dir in [links, pin_dir.join("maps"), pin_dir.to_owned()] {
        fs::remove_dir(&dir).map_err(|source| Error::Io {
            op: "remove directory",
            path: dir.clone(),
            source,
        })?;
    }
    Ok(())
}

/// Detaches the link pinned at `path` (if any) and removes the pin.
fn detach_pinned(path: &Path) -> Result<(), Error> {
    match obj_get(path) {
        Ok(link) => link_detach(link.as_fd()).map_err(|source| Error::Syscall {
            call: "bpf(BPF_LINK_DETACH)",
            source,
        })?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(Error::Io {
                op: "open pinned link",
                path: path.to_owned(),
                source,
            });
        }
    }
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(Error::Io {
            op: "remove pin",
            path: path.to_owned(),
            source,
        }),
    }
}

/// Finds and loads (verifies) the `sk_lookup` program of `ebpf`.
fn load_sk_lookup(ebpf: &mut aya::Ebpf) -> Result<&mut SkLookup, Error> {
    let name = programs::SK_LOOKUP;
    let err = |source| Error::Program {
        program: name,
        op: "load",
        source,
    };
    let program: &mut SkLookup = ebpf
        .program_mut(name)
        .ok_or(Error::Program {
            program: name,
            op: "find",
            source: aya::programs::ProgramError::NotLoaded,
        })?
        .try_into()
        .map_err(err)?;
    program.load().map_err(err)?;
    Ok(program)
}

/// [`Error::NetnsMismatch`] unless `found` is `pod`'s namespace cookie.
fn check_netns(pod: &PodNetns, found: NetnsCookie) -> Result<(), Error> {
    if found == pod.cookie {
        Ok(())
    } else {
        Err(Error::NetnsMismatch {
            pod: pod.cookie,
            found,
        })
    }
}

/// The cookie of the network namespace `netns`, read on a short-lived thread that enters it.
fn netns_cookie_of(netns: BorrowedFd<'_>) -> Result<NetnsCookie, Error> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                nix::sched::setns(netns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                    Error::Syscall {
                        call: "setns(CLONE_NEWNET)",
                        source: e.into(),
                    }
                })?;
                NetnsCookie::current()
            })
            .join()
            .expect("the netns thread does not panic")
    })
}

/// Mounts a bpf filesystem on `dir` (created if missing) unless one is already there.
///
/// # Errors
/// [`Error::Io`] when the directory cannot be made, [`Error::Syscall`] when mounting fails
/// (it needs `CAP_SYS_ADMIN`).
pub fn mount_bpffs(dir: &Path) -> Result<(), Error> {
    fs::create_dir_all(dir).map_err(|source| Error::Io {
        op: "create directory",
        path: dir.to_owned(),
        source,
    })?;
    if is_bpffs(dir)? {
        return Ok(());
    }
    nix::mount::mount(
        Some("bpf"),
        dir,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        Some("mode=0700"),
    )
    .map_err(|e| Error::Syscall {
        call: "mount(bpf)",
        source: e.into(),
    })
}

/// Whether `path` is on a bpf filesystem.
///
/// # Errors
/// [`Error::Io`] when `statfs(2)` fails (for example, the path does not exist).
pub fn is_bpffs(path: &Path) -> Result<bool, Error> {
    Ok(statfs_magic(path)? == BPF_FS_MAGIC)
}

/// Whether `path` is on a cgroup v2 file system.
pub(crate) fn is_cgroup2(path: &Path) -> Result<bool, Error> {
    Ok(statfs_magic(path)? == CGROUP2_SUPER_MAGIC)
}

fn statfs_magic(path: &Path) -> Result<i64, Error> {
    let stat = nix::sys::statfs::statfs(path).map_err(|e| Error::Io {
        op: "statfs",
        path: path.to_owned(),
        source: e.into(),
    })?;
    Ok(stat.filesystem_type().0)
}

/// The cgroup v2 mount point, from `/proc/self/mounts` (`/sys/fs/cgroup` on a unified host,
/// `/sys/fs/cgroup/unified` on a hybrid one).
///
/// # Errors
/// [`Error::Io`] when the mount table cannot be read, [`Error::Unsupported`] when no cgroup2
/// file system is mounted.
pub fn cgroup2_root() -> Result<PathBuf, Error> {
    let mounts = fs::read_to_string("/proc/self/mounts").map_err(|source| Error::Io {
        op: "read",
        path: "/proc/self/mounts".into(),
        source,
    })?;
    cgroup2_mount_in(&mounts).ok_or(Error::Unsupported {
        feature: "a mounted cgroup v2 hierarchy",
        min_kernel: "4.5",
    })
}

/// The first `cgroup2` mount point in a mount table (`/proc/self/mounts` format; spaces in
/// paths are written `\040`).
fn cgroup2_mount_in(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_, dir, fstype) = (fields.next()?, fields.next()?, fields.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(dir.replace("\\040", " ")))
    })
}

/// Pins made by an unfinished install, removed on drop unless kept.
#[derive(Debug)]
struct Pins {
    dirs: Vec<PathBuf>,
    files: Vec<PathBuf>,
}

impl Pins {
    fn new(pin_dir: &Path) -> Result<Pins, Error> {
        let mut pins = Pins {
            dirs: Vec::new(),
            files: Vec::new(),
        };
        for dir in [pin_dir.to_owned(), pin_dir.join("maps"), pin_dir.join("links")] {
            match fs::create_dir(&dir) {
                Ok(()) => pins.dirs.push(dir),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(source) => {
                    return Err(Error::Io {
                        op: "create directory",
                        path: dir,
                        source,
                    });
                }
            }
        }
        Ok(pins)
    }

    fn keep(mut self) {
        self.dirs.clear();
        self.files.clear();
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        let Self { dirs, files } = self;
        for file in files.iter().rev() {
            let _ = fs::remove_file(file);
        }
        for dir in dirs.iter().rev() {
            let _ = fs::remove_dir(dir);
        }
    }
}

/// Whether a map operation failed only because the key is not there. aya 0.14 reports a
/// missing key of a hash map or socket map as the syscall's `ENOENT`, not as `KeyNotFound`.
fn is_missing(error: &MapError) -> bool {
    match error {
        MapError::KeyNotFound => true,
        MapError::SyscallError(e) => e.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

fn ignore_missing(result: Result<(), MapError>) -> Result<(), MapError> {
    match result {
        Err(e) if is_missing(&e) => Ok(()),
        other => other,
    }
}

fn keys_of<K>(keys: impl Iterator<Item = Result<K, MapError>>, map: &'static str) -> Result<Vec<K>, Error> {
    keys.collect::<Result<Vec<_>, _>>().map_err(|source| Error::Map {
        map,
        op: "iterate",
        source,
    })
}

fn count<K>(keys: impl Iterator<Item = Result<K, MapError>>, map: &'static str) -> Result<usize, Error> {
    keys_of(keys, map).map(|k| k.len())
}

/// A `union bpf_attr` image: the fields a command uses, the rest zero.
#[derive(Debug)]
#[repr(C, align(8))]
struct Attr([u8; 64]);

impl Attr {
    fn new() -> Attr {
        Attr([0; 64])
    }

    fn set(&mut self, offset: usize, bytes: &[u8]) -> &mut Attr {
        self.0[offset..offset + bytes.len()].copy_from_slice(bytes);
        self
    }
}

/// `bpf(BPF_LINK_CREATE)` attaching `prog` to the cgroup `target` at `attach_type`, in
/// multi-attach mode (cgroup links always are).
fn link_create(prog: BorrowedFd<'_>, target: BorrowedFd<'_>, attach_type: u32) -> io::Result<OwnedFd> {
    // link_create: __u32 prog_fd, __u32 target_fd, __u32 attach_type, __u32 flags.
    let mut attr = Attr::new();
    attr.set(0, &prog.as_raw_fd().to_ne_bytes())
        .set(4, &target.as_raw_fd().to_ne_bytes())
        .set(8, &attach_type.to_ne_bytes());
    let fd = bpf(28, &mut attr)?;
    // SAFETY: BPF_LINK_CREATE returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `bpf(BPF_OBJ_PIN)`: pins `fd` at `path` (on bpffs).
fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let path = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // obj_pin: __aligned_u64 pathname, __u32 bpf_fd, __u32 file_flags.
    let mut attr = Attr::new();
    attr.set(0, &(path.as_ptr() as u64).to_ne_bytes())
        .set(8, &fd.as_raw_fd().to_ne_bytes());
    bpf(6, &mut attr).map(|_| ())
}

/// `bpf(BPF_OBJ_GET)`: opens the object pinned at `path`.
fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let path = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // obj_get: __aligned_u64 pathname, __u32 bpf_fd (0), __u32 file_flags (0: read-write).
    let mut attr = Attr::new();
    attr.set(0, &(path.as_ptr() as u64).to_ne_bytes());
    let fd = bpf(7, &mut attr)?;
    // SAFETY: BPF_OBJ_GET returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The start of a `struct bpf_link_info` for a cgroup link: the common fields, then the
/// union's `cgroup` member, which begins at offset 16 (the union holds 64-bit fields).
#[derive(Debug, Default)]
#[repr(C)]
struct LinkInfo {
    link_type: u32,
    id: u32,
    prog_id: u32,
    _pad: u32,
    cgroup_id: u64,
    attach_type: u32,
    _pad2: u32,
}

/// `BPF_LINK_TYPE_CGROUP`.
const LINK_TYPE_CGROUP: u32 = 3;

impl LinkInfo {
    /// The cgroup a cgroup link is attached to; `None` when it is not a cgroup link, or is
    /// attached to none (detached, or its cgroup released: the kernel reports id 0).
    fn cgroup(&self) -> Option<CgroupId> {
        (self.link_type == LINK_TYPE_CGROUP && self.cgroup_id != 0).then_some(CgroupId(self.cgroup_id))
    }
}

/// `bpf(BPF_OBJ_GET_INFO_BY_FD)` on a link.
fn link_info(link: BorrowedFd<'_>) -> io::Result<LinkInfo> {
    let mut info = LinkInfo::default();
    // info: __u32 bpf_fd, __u32 info_len, __aligned_u64 info. The kernel fills at most
    // info_len bytes, so a prefix of its struct is enough.
    let len = u32::try_from(size_of::<LinkInfo>()).expect("32 fits");
    let mut attr = Attr::new();
    attr.set(0, &link.as_raw_fd().to_ne_bytes())
        .set(4, &len.to_ne_bytes())
        .set(8, &((&raw mut info) as u64).to_ne_bytes());
    bpf(15, &mut attr)?;
    Ok(info)
}

/// `bpf(BPF_PROG_QUERY)` with `BPF_F_QUERY_EFFECTIVE`: the ids of the programs that run for
/// the processes of the cgroup `cgroup` at `attach_type`, its own and its ancestors' (Linux
/// 4.15).
fn effective_programs(cgroup: BorrowedFd<'_>, attach_type: u32) -> io::Result<Vec<u32>> {
    const QUERY_EFFECTIVE: u32 = 1;
    let mut ids = vec![0u32; 64];
    loop {
        // query: __u32 target_fd, __u32 attach_type, __u32 query_flags, __u32 attach_flags,
        // __aligned_u64 prog_ids, __u32 prog_cnt (in: room in prog_ids; out: how many).
        let room = u32::try_from(ids.len()).expect("the buffer holds fewer than 2^32 ids");
        let mut attr = Attr::new();
        attr.set(0, &cgroup.as_raw_fd().to_ne_bytes())
            .set(4, &attach_type.to_ne_bytes())
            .set(8, &QUERY_EFFECTIVE.to_ne_bytes())
            .set(16, &(ids.as_mut_ptr() as u64).to_ne_bytes())
            .set(24, &room.to_ne_bytes());
        let result = bpf(16, &mut attr);
        let count = u32::from_ne_bytes(attr.0[24..28].try_into().expect("four bytes")) as usize;
        match result {
            Ok(_) => {
                ids.truncate(count);
                return Ok(ids);
            }
            // More programs than room: the count is what is needed (it may grow meanwhile).
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => ids.resize(count.max(ids.len() * 2), 0),
            Err(e) => return Err(e),
        }
    }
}

/// `bpf(BPF_LINK_DETACH)`: detaches a link's program now, whoever else holds the link
/// (Linux 5.9).
fn link_detach(link: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = Attr::new();
    attr.set(0, &link.as_raw_fd().to_ne_bytes());
    bpf(34, &mut attr).map(|_| ())
}

fn bpf(cmd: libc::c_int, attr: &mut Attr) -> io::Result<libc::c_int> {
    // SAFETY: `attr` is a live, zero-padded bpf_attr image larger than the command's part of
    // the union, and its size is passed along; any pointer in it (a path, or a buffer the
    // kernel fills, whose size is in the attr as well) outlives the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.0.as_mut_ptr(), size_of::<Attr>()) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(libc::c_int::try_from(rc).expect("a file descriptor fits a c_int"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup2_mount_is_found_on_unified_and_hybrid_hosts() {
        let hybrid = "tmpfs /sys/fs/cgroup tmpfs ro,nosuid 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0\n\
                      cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n";
        assert_eq!(
            cgroup2_mount_in(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified = "cgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0\n";
        assert_eq!(cgroup2_mount_in(unified), Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(
            cgroup2_mount_in("cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\n"),
            None
        );
        assert_eq!(
            cgroup2_mount_in("none /mnt/my\\040cg cgroup2 rw 0 0\n"),
            Some(PathBuf::from("/mnt/my cg"))
        );
    }

    #[test]
    fn netns_mismatch_names_both_cookies() {
        let e = Error::NetnsMismatch {
            pod: NetnsCookie(7),
            found: NetnsCookie(9),
        };
        assert_eq!(
            e.to_string(),
            "the network namespace to enroll (cookie 9) is not the pod's (cookie 7); \
             enroll from inside the pod's namespace"
        );
    }

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
