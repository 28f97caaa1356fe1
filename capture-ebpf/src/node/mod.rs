//! A node's programs: loaded once, attached to a cgroup, pinned; and the pods enrolled in them.
//!
//! ```text
//! Node::load(cgroup, &pins)          probe ─> load + verify all ─> pin maps ─> sk_lookup into SK_LOOKUP_PROGS
//!                                    ─> link + pin each cgroup program
//! Node::open(&pins)                  maps from their pins (any process, any time later)
//! Node::open_for(cgroup, &pins)      the same, once every pinned link's program is known to act
//!                                    on `cgroup` (link info ─> its program among cgroup's effective ones)
//! Node::open_or_load(cgroup, &pins)  node lock ─> open_for if loaded, else load; the node keeps the lock
//! node.apply(&pod, &plan)            enrolled == planned? Unchanged : enroll ─> Applied | Updated
//! node.enroll(&pod, &plan)           the pod's sk_lookup stub (its cookie, a tail call) attached to its netns (first time)
//!                                    ─> next generation's entries ─> POD_CONFIG switch ─> old entries removed
//! node.unenroll(cookie)              POD_CONFIG entry removed first ─> sk_lookup link detached
//!                                    ─> the pod's entries and inbound listeners removed
//! Node::upgrade(cgroup, &pins)      this capture's programs on the pinned links, pods captured throughout (`upgrade`)
//! node.unload() / unload(&pins)      link pins detached and removed ─> map pins removed ─> directory removed
//! ```
//!
//! The pins' layout is [`PinDir`]'s. Links are created with `BPF_LINK_CREATE` in multi-attach
//! mode ([`crate::sys`]), so other programs on the same cgroup hooks (another agent's) are
//! neither evicted nor block us, and a crashed loader leaves nothing attached that a removal of
//! the pins cannot undo.
//!
//! | module | what |
//! |---|---|
//! | this one | loading, opening (and checking where the programs act), unloading |
//! | `enroll` | [`Node::apply`], [`Node::enroll`], [`Node::unenroll`], inbound listeners |
//! | `state` | reading the maps back: enrolled pods, their entries, counters |
//! | `upgrade` | [`Node::upgrade`]: new programs on the existing links, maps kept or migrated |
//! | `costs` | [`Node::program_costs`]: the kernel's run counts and times of each program |
//! | `meta` | who enrolled a pod ([`PodMetadata`](crate::PodMetadata)), CNI GC, entry counts |

mod costs;
mod enroll;
mod meta;
mod state;
mod stub;
mod upgrade;

use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;

use aya::EbpfLoader;
use aya::maps::lpm_trie::LpmTrie;
use aya::maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray, PerCpuHashMap, SockHash};
use aya::programs::{CgroupSock, CgroupSockAddr, CgroupSockopt, SkLookup, SkMsg, SockOps};
pub use capture_core::Change;
use capture_ebpf_common::{
    CIDRS, CidrKey, INBOUND_LISTENERS, LAYOUT, LAYOUT_VERSION, ListenerKey, MAP_NAMES, NODE_CONFIG,
    NODE_SK_MSG, NodeConfig, ORIG_BY_COOKIE, ORIG_BY_PAIR, OWNERS, OrigDst, OwnerKey, POD_CONFIG, POD_META,
    POD_STATS, PORTS, PairKey, PodConfig, PodMeta, PodStats, PortKey, SK_LOOKUP_PROGS, SPLICE, STATS,
    SpliceKey, programs,
};
pub use costs::ProgramCost;
pub use enroll::Enrollment;
pub use meta::NetnsLink;
pub use state::{Bypassed, MapUsage, Stats};
pub use upgrade::Upgrade;

use crate::bpffs::is_bpffs;
use crate::cgroup::is_cgroup2;
use crate::pin_dir::{NodeLock, PinDir, Pins};
use crate::sys::{
    AttachType, LinkInfo, effective_programs, link_create, link_info, obj_get, obj_pin, prog_array_get,
    prog_array_set, sk_msg_attach, sk_msg_attached, version_map_create, version_map_read,
};
use crate::{AttachedCgroup, Attachment, CgroupId, Error, OBJECT, probe};

/// How a cgroup program is attached.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Hook {
    Connect4,
    Connect6,
    SockOps,
    GetSockopt,
    GetPeerName4,
    GetPeerName6,
    SendMsg4,
    SendMsg6,
    RecvMsg4,
    RecvMsg6,
    SockRelease,
}

impl Hook {
    /// The kernel's `bpf_attach_type` for the hook.
    fn attach_type(self) -> AttachType {
        match self {
            Hook::Connect4 => AttachType::BPF_CGROUP_INET4_CONNECT,
            Hook::Connect6 => AttachType::BPF_CGROUP_INET6_CONNECT,
            Hook::SockOps => AttachType::BPF_CGROUP_SOCK_OPS,
            Hook::GetSockopt => AttachType::BPF_CGROUP_GETSOCKOPT,
            Hook::GetPeerName4 => AttachType::BPF_CGROUP_INET4_GETPEERNAME,
            Hook::GetPeerName6 => AttachType::BPF_CGROUP_INET6_GETPEERNAME,
            Hook::SendMsg4 => AttachType::BPF_CGROUP_UDP4_SENDMSG,
            Hook::SendMsg6 => AttachType::BPF_CGROUP_UDP6_SENDMSG,
            Hook::RecvMsg4 => AttachType::BPF_CGROUP_UDP4_RECVMSG,
            Hook::RecvMsg6 => AttachType::BPF_CGROUP_UDP6_RECVMSG,
            Hook::SockRelease => AttachType::BPF_CGROUP_INET_SOCK_RELEASE,
        }
    }
}

/// Every cgroup program in the object with its hook (the `sk_lookup` program is attached per
/// pod, not to the cgroup).
pub(crate) const PROGRAMS: [(&str, Hook); 11] = [
    (programs::CONNECT4, Hook::Connect4),
    (programs::CONNECT6, Hook::Connect6),
    (programs::SOCKOPS, Hook::SockOps),
    (programs::GETSOCKOPT, Hook::GetSockopt),
    (programs::GETPEERNAME4, Hook::GetPeerName4),
    (programs::GETPEERNAME6, Hook::GetPeerName6),
    (programs::SENDMSG4, Hook::SendMsg4),
    (programs::SENDMSG6, Hook::SendMsg6),
    (programs::RECVMSG4, Hook::RecvMsg4),
    (programs::RECVMSG6, Hook::RecvMsg6),
    (programs::SOCK_RELEASE, Hook::SockRelease),
];

/// The node's loaded programs, reached through their pinned maps.
///
/// # Examples
/// ```no_run
/// use std::path::Path;
/// use capture_core::CaptureSpec;
/// use capture_ebpf::{MapPlan, Node, PinDir, PodNetns};
///
/// let pins = PinDir::new(Path::new("/sys/fs/bpf"));
/// pins.mount()?;
/// let (mut node, _) = Node::open_or_load(&capture_ebpf::cgroup2_root()?, &pins)?;
/// // In the pod's network namespace:
/// let plan = MapPlan::from_spec(&CaptureSpec::sidecar())?;
/// let pod = PodNetns::set_up(&plan)?;
/// let change = node.apply(&pod, &plan)?;
/// # Ok::<(), capture_ebpf::Error>(())
/// ```
pub struct Node {
    pins: PinDir,
    /// The node lock, when [`Node::open_or_load`] took it.
    _lock: Option<NodeLock>,
    pod_config: HashMap<MapData, u64, PodConfig>,
    owners: HashMap<MapData, OwnerKey, u8>,
    ports: LpmTrie<MapData, PortKey, u8>,
    cidrs: LpmTrie<MapData, CidrKey, u8>,
    orig_by_cookie: HashMap<MapData, u64, OrigDst>,
    orig_by_pair: HashMap<MapData, PairKey, OrigDst>,
    stats: PerCpuArray<MapData, u64>,
    inbound_listeners: SockHash<MapData, ListenerKey>,
    pod_stats: PerCpuHashMap<MapData, u64, PodStats>,
    pod_meta: HashMap<MapData, u64, PodMeta>,
    node_config: Array<MapData, NodeConfig>,
    splice: SockHash<MapData, SpliceKey>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("pins", &self.pins)
            .field("locked", &self._lock.is_some())
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Loads the programs, pins their maps under `pins`' `maps/`, attaches every program to the
    /// cgroup v2 directory `cgroup` with a bpf_link and pins the links under `links/`. Call it
    /// holding the node lock ([`PinDir::lock`]), or use [`Node::open_or_load`], which does.
    ///
    /// Everything is probed and verified before anything is attached or pinned; if a later
    /// step fails, what was pinned is removed again.
    ///
    /// # Errors
    /// [`Error::ObjectMissing`], [`Error::Unsupported`] (from [`probe`]), [`Error::NotBpffs`]
    /// when the pin directory's parent is not on bpffs, [`Error::AlreadyLoaded`], and the errors of
    /// loading, pinning and attaching.
    ///
    /// # Minimum kernel version
    /// 5.15 (see [`probe`]).
    pub fn load(cgroup: &Path, pins: &PinDir) -> Result<Node, Error> {
        if OBJECT.is_empty() {
            return Err(Error::ObjectMissing);
        }
        probe()?;
        let parent = pins.bpffs();
        if !is_bpffs(parent)? {
            return Err(Error::NotBpffs {
                path: parent.to_owned(),
            });
        }
        if pins.links().exists() {
            return Err(Error::AlreadyLoaded {
                path: pins.path().to_owned(),
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
        load_cgroup_programs(&mut ebpf)?;
        // Loaded and verified once for the node; each pod's stub tail calls into it.
        let sk_lookup = load_sk_lookup(&mut ebpf)?
            .fd()
            .map_err(|source| Error::Program {
                program: programs::SK_LOOKUP,
                op: "get fd",
                source,
            })?
            .as_fd()
            .try_clone_to_owned()
            .map_err(|source| Error::Syscall { call: "dup", source })?;
        let sk_msg = load_sk_msg(&mut ebpf)?
            .fd()
            .map_err(|source| Error::Program {
                program: programs::SK_MSG,
                op: "get fd",
                source,
            })?
            .as_fd()
            .try_clone_to_owned()
            .map_err(|source| Error::Syscall { call: "dup", source })?;

        let mut made = Pins::new(pins)?;
        let layout = pins.map(LAYOUT);
        let version = version_map_create(LAYOUT_VERSION).map_err(|source| Error::Syscall {
            call: "bpf(BPF_MAP_CREATE)",
            source,
        })?;
        obj_pin(version.as_fd(), &layout).map_err(|source| Error::Io {
            op: "pin map",
            path: layout.clone(),
            source,
        })?;
        made.push(layout);
        for name in MAP_NAMES {
            let path = pins.map(name);
            let map = ebpf.map(name).ok_or_else(|| Error::Map {
                map: name,
                op: "find",
                source: MapError::InvalidName { name: name.into() },
            })?;
            map.pin(&path).map_err(|source| Error::Pin {
                path: path.clone(),
                source,
            })?;
            made.push(path);
        }
        // The array is pinned now, so its slot outlives this process (the kernel empties a
        // program array whose last descriptor and pin are gone).
        let progs_pin = pins.map(SK_LOOKUP_PROGS);
        let progs = obj_get(&progs_pin).map_err(|source| Error::Io {
            op: "open pinned map",
            path: progs_pin.clone(),
            source,
        })?;
        prog_array_set(progs.as_fd(), Some(sk_lookup.as_fd())).map_err(|source| Error::Io {
            op: "put the sk_lookup program into",
            path: progs_pin,
            source,
        })?;
        // Held by the pinned map from now on, before sockops can put a socket into it.
        let splice_pin = pins.map(SPLICE);
        let splice = obj_get(&splice_pin).map_err(|source| Error::Io {
            op: "open pinned map",
            path: splice_pin.clone(),
            source,
        })?;
        sk_msg_attach(sk_msg.as_fd(), splice.as_fd()).map_err(|source| Error::Io {
            op: "attach the sk_msg program to",
            path: splice_pin,
            source,
        })?;
        for (name, hook) in PROGRAMS {
            let program = ebpf.program(name).expect("loaded above");
            let fd = program.fd().map_err(|source| Error::Program {
                program: name,
                op: "get fd",
                source,
            })?;
            let link = link_create(fd.as_fd(), cgroup_dir.as_fd(), hook.attach_type()).map_err(|source| {
                Error::Syscall {
                    call: "bpf(BPF_LINK_CREATE)",
                    source,
                }
            })?;
            let path = pins.link(name);
            obj_pin(link.as_fd(), &path).map_err(|source| Error::Io {
                op: "pin link",
                path: path.clone(),
                source,
            })?;
            made.push(path);
            // Closing our link fd leaves the pin holding the attachment.
        }
        made.keep();
        drop(ebpf);
        Node::open(pins)
    }

    /// Opens the maps of programs loaded under `pins`, wherever they are attached: for
    /// reading and removing. To enroll pods whose processes are in a given cgroup, use
    /// [`Node::open_for`], which checks that the programs act there.
    ///
    /// # Errors
    /// [`Error::NotLoaded`] when nothing is pinned there, or the map errors of opening.
    pub fn open(pins: &PinDir) -> Result<Node, Error> {
        if !pins.is_loaded() {
            return Err(Error::NotLoaded {
                path: pins.path().to_owned(),
            });
        }
        check_layout(pins)?;
        let open = |name: &'static str| -> Result<Map, Error> {
            let path = pins.map(name);
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
            pins: pins.clone(),
            _lock: None,
            pod_config: HashMap::try_from(open(POD_CONFIG)?).map_err(|e| typed(POD_CONFIG, e))?,
            owners: HashMap::try_from(open(OWNERS)?).map_err(|e| typed(OWNERS, e))?,
            ports: LpmTrie::try_from(open(PORTS)?).map_err(|e| typed(PORTS, e))?,
            cidrs: LpmTrie::try_from(open(CIDRS)?).map_err(|e| typed(CIDRS, e))?,
            orig_by_cookie: HashMap::try_from(open(ORIG_BY_COOKIE)?).map_err(|e| typed(ORIG_BY_COOKIE, e))?,
            orig_by_pair: HashMap::try_from(open(ORIG_BY_PAIR)?).map_err(|e| typed(ORIG_BY_PAIR, e))?,
            stats: PerCpuArray::try_from(open(STATS)?).map_err(|e| typed(STATS, e))?,
            inbound_listeners: SockHash::try_from(open(INBOUND_LISTENERS)?)
                .map_err(|e| typed(INBOUND_LISTENERS, e))?,
            pod_stats: PerCpuHashMap::try_from(open(POD_STATS)?).map_err(|e| typed(POD_STATS, e))?,
            pod_meta: HashMap::try_from(open(POD_META)?).map_err(|e| typed(POD_META, e))?,
            node_config: Array::try_from(open(NODE_CONFIG)?).map_err(|e| typed(NODE_CONFIG, e))?,
            splice: SockHash::try_from(open(SPLICE)?).map_err(|e| typed(SPLICE, e))?,
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
    /// attached to no cgroup, [`Error::NoSkLookup`] when the `sk_lookup` program is not where
    /// the pods' stubs call it, [`Error::NotCgroup2`] when `cgroup` is not a cgroup v2
    /// directory, and the errors of [`Node::open`] and of reading the links.
    ///
    /// # Examples
    /// ```no_run
    /// use std::path::Path;
    /// use capture_ebpf::{Node, PinDir};
    ///
    /// let cgroup = capture_ebpf::cgroup2_root()?;
    /// let node = Node::open_for(&cgroup, &PinDir::new(Path::new("/sys/fs/bpf")))?;
    /// # Ok::<(), capture_ebpf::Error>(())
    /// ```
    pub fn open_for(cgroup: &Path, pins: &PinDir) -> Result<Node, Error> {
        let node = Node::open(pins)?;
        check_acts_on(cgroup, pins, false)?;
        node.check_sk_lookup()?;
        Ok(node)
    }

    /// Checks that the node's `sk_lookup` program is in `SK_LOOKUP_PROGS`, where every pod's
    /// stub tail-calls it: with the slot empty each stub lets every connection pass.
    ///
    /// # Errors
    /// [`Error::NoSkLookup`] when the slot is empty; [`Error::Io`] when the array cannot be
    /// opened or read.
    pub fn check_sk_lookup(&self) -> Result<(), Error> {
        let pin = self.pins.map(SK_LOOKUP_PROGS);
        let io = |op| {
            let path = pin.clone();
            move |source| Error::Io { op, path, source }
        };
        let programs = obj_get(&pin).map_err(io("open pinned map"))?;
        match prog_array_get(programs.as_fd()).map_err(io("read program array"))? {
            Some(_) => Ok(()),
            None => Err(Error::NoSkLookup {
                pin_dir: self.pins.path().to_owned(),
            }),
        }
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
            match pinned_link_info(&self.pins, program)?.cgroup() {
                None => return Ok(Attachment::Detached { program }),
                Some(id) => {
                    first.get_or_insert(id);
                }
            }
        }
        let id = first.expect("there are programs");
        Ok(Attachment::Cgroup(AttachedCgroup::find(id)))
    }

    /// The pin directory.
    pub fn pins(&self) -> &PinDir {
        &self.pins
    }

    /// The node's programs under `pins`, loaded and attached to `cgroup` first if nothing is
    /// pinned there; programs already pinned are used only when they act on `cgroup`
    /// ([`Node::open_for`]). Takes the node lock ([`PinDir::lock`]) first and keeps it until
    /// the node is dropped, so that two callers on a fresh node do not both load the programs
    /// and enrolling happens under the same lock. Returns [`Change::Applied`] when it loaded
    /// the programs, [`Change::Unchanged`] when they were there.
    ///
    /// # Errors
    /// [`Error::Lock`], and those of [`Node::open_for`] and [`Node::load`].
    pub fn open_or_load(cgroup: &Path, pins: &PinDir) -> Result<(Node, Change), Error> {
        let lock = pins.lock()?;
        let (mut node, change) = if pins.is_loaded() {
            (Node::open_for(cgroup, pins)?, Change::Unchanged)
        } else {
            (Node::load(cgroup, pins)?, Change::Applied)
        };
        node._lock = Some(lock);
        Ok((node, change))
    }

    /// Detaches and removes everything loaded under the pin directory: the link pins (the last
    /// reference to each attachment), the map pins and the directory. Call it holding the node
    /// lock.
    ///
    /// # Errors
    /// [`Error::NotLoaded`], or [`Error::Io`] when a pin cannot be removed.
    pub fn unload(self) -> Result<(), Error> {
        let pins = self.pins.clone();
        drop(self);
        crate::unload(&pins)
    }
}

/// Whether the node splices app-proxy connections with `sk_msg` ([`Node::sk_msg`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SkMsgState {
    /// The setting (`NODE_SK_MSG`): connections established while it is on are spliced.
    pub enabled: bool,
    /// Whether an `sk_msg` program is attached to `SPLICE`; `None` when the kernel cannot
    /// tell (`BPF_PROG_QUERY` on socket maps needs Linux 5.19).
    pub attached: Option<bool>,
    /// Sockets in `SPLICE` now (two per spliced connection).
    pub sockets: usize,
}

impl std::fmt::Display for SkMsgState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", if self.enabled { "on" } else { "off" })?;
        if self.attached == Some(false) {
            write!(f, " (no sk_msg program attached: nothing is spliced)")?;
        }
        write!(
            f,
            ", {} spliced now",
            capture_core::count(self.sockets, "socket", "sockets")
        )
    }
}

impl Node {
    /// The node's `sk_msg` setting, whether its program is in place, and how many sockets are
    /// spliced.
    ///
    /// # Errors
    /// [`Error::Map`] when a map cannot be read.
    pub fn sk_msg(&self) -> Result<SkMsgState, Error> {
        let config = self
            .node_config
            .get(&0, 0)
            .map_err(map_error(NODE_CONFIG, "get"))?;
        let attached = sk_msg_attached(self.splice.fd().as_fd())
            .ok()
            .map(|id| id.is_some());
        Ok(SkMsgState {
            enabled: config.flags & NODE_SK_MSG != 0,
            attached,
            sockets: keys_of(self.splice.keys(), SPLICE)?.len(),
        })
    }

    /// Turns the `sk_msg` splice of app-proxy connections on or off for the connections
    /// established from now on (those spliced already stay so until they close). Returns
    /// whether the setting changed.
    ///
    /// # Errors
    /// [`Error::Map`] when the map cannot be read or written.
    pub fn set_sk_msg(&mut self, on: bool) -> Result<bool, Error> {
        let mut config = self
            .node_config
            .get(&0, 0)
            .map_err(map_error(NODE_CONFIG, "get"))?;
        if (config.flags & NODE_SK_MSG != 0) == on {
            return Ok(false);
        }
        config.flags = if on {
            config.flags | NODE_SK_MSG
        } else {
            config.flags & !NODE_SK_MSG
        };
        self.node_config
            .set(0, config, 0)
            .map_err(map_error(NODE_CONFIG, "update"))?;
        Ok(true)
    }
}

/// Checks that every program pinned under `pins` acts on the cgroup `cgroup` (see
/// [`Node::open_for`]); with `missing_ok`, a hook without a pinned link (one added since the
/// programs were loaded, for an upgrade) is skipped.
fn check_acts_on(cgroup: &Path, pins: &PinDir, missing_ok: bool) -> Result<(), Error> {
    let cgroup_id = CgroupId::of(cgroup)?;
    let dir = File::open(cgroup).map_err(|source| Error::Io {
        op: "open cgroup",
        path: cgroup.to_owned(),
        source,
    })?;
    for (program, hook) in PROGRAMS {
        if missing_ok && !pins.link(program).exists() {
            continue;
        }
        let link = pinned_link_info(pins, program)?;
        let Some(attached) = link.cgroup() else {
            return Err(Error::Detached {
                pin_dir: pins.path().to_owned(),
                program,
            });
        };
        if attached == cgroup_id {
            continue;
        }
        let effective =
            effective_programs(dir.as_fd(), hook.attach_type()).map_err(|source| Error::Syscall {
                call: "bpf(BPF_PROG_QUERY)",
                source,
            })?;
        if !effective.contains(&link.prog_id) {
            return Err(Error::AttachedElsewhere {
                pin_dir: pins.path().to_owned(),
                attached: AttachedCgroup::find(attached),
                cgroup: cgroup.to_owned(),
                cgroup_id,
            });
        }
    }
    Ok(())
}

/// The info of `program`'s pinned cgroup link.
impl Node {
    /// The id of the program on the node's pinned `connect4` link: a program that uses the
    /// pinned `AYA_LOGS` ring buffer, by which aya-log's `EbpfLogger::init_from_id` finds it.
    ///
    /// # Errors
    /// [`Error::Io`] when the link is not pinned, [`Error::Syscall`] when it cannot be read.
    pub fn log_program_id(pins: &PinDir) -> Result<u32, Error> {
        Ok(pinned_link_info(pins, programs::CONNECT4)?.prog_id)
    }
}

fn pinned_link_info(pins: &PinDir, program: &'static str) -> Result<LinkInfo, Error> {
    let path = pins.link(program);
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

/// Loads (verifies) every cgroup program of `ebpf`.
fn load_cgroup_programs(ebpf: &mut aya::Ebpf) -> Result<(), Error> {
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
            Hook::SockRelease => <&mut CgroupSock>::try_from(program).map_err(err)?.load(),
            _ => <&mut CgroupSockAddr>::try_from(program).map_err(err)?.load(),
        }
        .map_err(err)?;
    }
    Ok(())
}

/// Finds and loads (verifies) the `sk_msg` program of `ebpf`.
fn load_sk_msg(ebpf: &mut aya::Ebpf) -> Result<&mut SkMsg, Error> {
    load_program(ebpf, programs::SK_MSG, SkMsg::load)
}

/// Finds and loads (verifies) the `sk_lookup` program of `ebpf`.
fn load_sk_lookup(ebpf: &mut aya::Ebpf) -> Result<&mut SkLookup, Error> {
    load_program(ebpf, programs::SK_LOOKUP, SkLookup::load)
}

/// Finds the program `name` of `ebpf` as a `P` and loads (verifies) it with `load`.
fn load_program<'a, P>(
    ebpf: &'a mut aya::Ebpf,
    name: &'static str,
    load: fn(&mut P) -> Result<(), aya::programs::ProgramError>,
) -> Result<&'a mut P, Error>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let err = |source| Error::Program {
        program: name,
        op: "load",
        source,
    };
    let program: &mut P = ebpf
        .program_mut(name)
        .ok_or(Error::Program {
            program: name,
            op: "find",
            source: aya::programs::ProgramError::NotLoaded,
        })?
        .try_into()
        .map_err(err)?;
    load(program).map_err(err)?;
    Ok(program)
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
    keys.collect::<Result<Vec<_>, _>>()
        .map_err(map_error(map, "iterate"))
}

/// An [`Error::Map`] for `op` on `map`, for `map_err`.
/// [`Error::Layout`] unless the pins under `pins` carry this capture's [`LAYOUT_VERSION`].
fn check_layout(pins: &PinDir) -> Result<(), Error> {
    let found = layout_of(pins)?;
    if found == Some(LAYOUT_VERSION) {
        Ok(())
    } else {
        Err(Error::Layout {
            pin_dir: pins.path().to_owned(),
            found,
            expected: LAYOUT_VERSION,
        })
    }
}

/// The layout version the pins under `pins` carry; `None` for pins of a capture older than
/// layout versions.
fn layout_of(pins: &PinDir) -> Result<Option<u32>, Error> {
    let path = pins.map(LAYOUT);
    match obj_get(&path) {
        Ok(map) => Ok(Some(version_map_read(map.as_fd()).map_err(|source| {
            Error::Io {
                op: "read map",
                path: path.clone(),
                source,
            }
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Io {
            op: "open pinned map",
            path,
            source,
        }),
    }
}

fn map_error(map: &'static str, op: &'static str) -> impl FnOnce(MapError) -> Error {
    move |source| {
        let full = matches!(
            &source,
            MapError::SyscallError(e) if matches!(e.io_error.raw_os_error(), Some(libc::ENOSPC | libc::E2BIG))
        );
        if full && op == "insert" {
            Error::MapFull { map, source }
        } else {
            Error::Map { map, op, source }
        }
    }
}
