//! The raw `bpf(2)` commands aya 0.14 does not make for us: cgroup and network-namespace
//! links that can be pinned, pinning and opening them, reading a link's info, and asking a
//! cgroup which programs act on it.
//!
//! aya cannot turn sockops and sockopt links into pinnable `FdLink`s, so these links are
//! created and pinned here. Commands, attach types and the `bpf_attr` layout are aya's
//! generated kernel bindings (`aya_obj::generated`), not hand-written offsets.
//!
//! | function | command |
//! |---|---|
//! | [`link_create`] | `BPF_LINK_CREATE` (multi-attach on cgroups; one link per namespace for `sk_lookup`) |
//! | [`link_detach`] | `BPF_LINK_DETACH` (5.9) |
//! | [`obj_pin`], [`obj_get`] | `BPF_OBJ_PIN`, `BPF_OBJ_GET` |
//! | [`link_info`] | `BPF_OBJ_GET_INFO_BY_FD` on a link |
//! | [`effective_programs`] | `BPF_PROG_QUERY` with `BPF_F_QUERY_EFFECTIVE` (4.15) |
//! | [`link_update`] | `BPF_LINK_UPDATE` with `BPF_F_REPLACE` (5.7; netns links 5.8) |
//! | [`prog_by_id`], [`prog_tag`], [`prog_runs`] | `BPF_PROG_GET_FD_BY_ID`, `BPF_OBJ_GET_INFO_BY_FD` on a program |
//! | [`prog_load_sk_lookup`] | `BPF_PROG_LOAD` (a pod's `sk_lookup` stub) |
//! | [`prog_array_set`], [`prog_array_get`] | `BPF_MAP_UPDATE_ELEM`, `_LOOKUP_ELEM`, `_DELETE_ELEM` on slot 0 of a program array |
//! | [`sk_msg_attach`], [`sk_msg_detach`], [`sk_msg_attached`] | `BPF_PROG_ATTACH`, `BPF_PROG_DETACH`, `BPF_PROG_QUERY` of `BPF_SK_MSG_VERDICT` on a sockhash |
//! | [`map_shape`], [`map_copy`] | `BPF_OBJ_GET_INFO_BY_FD` on a map; `BPF_MAP_GET_NEXT_KEY`, `_LOOKUP_ELEM`, `_UPDATE_ELEM` |

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd as _, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

pub(crate) use aya_obj::generated::bpf_attach_type as AttachType;
use aya_obj::generated::{
    BPF_F_QUERY_EFFECTIVE, BPF_F_REPLACE, bpf_attr, bpf_cmd, bpf_insn, bpf_link_info, bpf_link_type,
    bpf_map_info, bpf_map_type, bpf_prog_info, bpf_prog_type,
};

use crate::CgroupId;

/// What the programs need to know of a link: its program and, for a cgroup link, its cgroup.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LinkInfo {
    /// `bpf_link_info.type`.
    link_type: u32,
    /// The id of the link's program.
    pub prog_id: u32,
    /// `bpf_link_info.cgroup.cgroup_id` (meaningful for cgroup links only).
    cgroup_id: u64,
    /// `bpf_link_info.netns.netns_ino` (meaningful for netns links only).
    netns_ino: u32,
}

impl LinkInfo {
    /// The cgroup a cgroup link is attached to; `None` when it is not a cgroup link, or is
    /// attached to none (detached, or its cgroup released: the kernel reports id 0).
    pub fn cgroup(&self) -> Option<CgroupId> {
        (self.link_type == bpf_link_type::BPF_LINK_TYPE_CGROUP as u32 && self.cgroup_id != 0)
            .then_some(CgroupId(self.cgroup_id))
    }

    /// The inode of the network namespace a netns link (`sk_lookup`) is attached to; `None`
    /// when it is not a netns link, or its namespace is gone (the kernel detaches the link
    /// then and reports inode 0).
    pub fn netns(&self) -> Option<u32> {
        (self.link_type == bpf_link_type::BPF_LINK_TYPE_NETNS as u32 && self.netns_ino != 0)
            .then_some(self.netns_ino)
    }
}

/// A zeroed `union bpf_attr`: every command's unused fields must be zero.
fn zeroed_attr() -> bpf_attr {
    // SAFETY: bpf_attr is a C union of integer fields, for which all-zero bytes are valid.
    unsafe { std::mem::zeroed() }
}

/// A raw descriptor as the kernel's `__u32` field takes it.
fn fd_u32(fd: BorrowedFd<'_>) -> u32 {
    u32::try_from(fd.as_raw_fd()).expect("an open descriptor is not negative")
}

/// `bpf(BPF_LINK_CREATE)` attaching `prog` to `target` (a cgroup directory, or a network
/// namespace for `sk_lookup`) at `attach_type`; cgroup links are always multi-attach.
pub(crate) fn link_create(
    prog: BorrowedFd<'_>,
    target: BorrowedFd<'_>,
    attach_type: AttachType,
) -> io::Result<OwnedFd> {
    let mut attr = zeroed_attr();
    attr.link_create.__bindgen_anon_1.prog_fd = fd_u32(prog);
    attr.link_create.__bindgen_anon_2.target_fd = fd_u32(target);
    attr.link_create.attach_type = attach_type as u32;
    let fd = bpf(bpf_cmd::BPF_LINK_CREATE, &mut attr)?;
    // SAFETY: BPF_LINK_CREATE returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `bpf(BPF_LINK_DETACH)`: detaches a link's program now, whoever else holds the link
/// (Linux 5.9).
pub(crate) fn link_detach(link: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = zeroed_attr();
    attr.link_detach.link_fd = fd_u32(link);
    bpf(bpf_cmd::BPF_LINK_DETACH, &mut attr).map(|_| ())
}

/// `path` as the NUL-terminated string `BPF_OBJ_PIN` and `BPF_OBJ_GET` take.
fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

/// `bpf(BPF_OBJ_PIN)`: pins `fd` at `path` (on bpffs).
pub(crate) fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let path = c_path(path)?;
    let mut attr = zeroed_attr();
    attr.__bindgen_anon_4.pathname = path.as_ptr() as u64;
    attr.__bindgen_anon_4.bpf_fd = fd_u32(fd);
    bpf(bpf_cmd::BPF_OBJ_PIN, &mut attr).map(|_| ())
}

/// `bpf(BPF_OBJ_GET)`: opens the object pinned at `path`, read-write.
pub(crate) fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let path = c_path(path)?;
    let mut attr = zeroed_attr();
    attr.__bindgen_anon_4.pathname = path.as_ptr() as u64;
    let fd = bpf(bpf_cmd::BPF_OBJ_GET, &mut attr)?;
    // SAFETY: BPF_OBJ_GET returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `bpf(BPF_OBJ_GET_INFO_BY_FD)` on a link.
pub(crate) fn link_info(link: BorrowedFd<'_>) -> io::Result<LinkInfo> {
    // SAFETY: bpf_link_info is a C struct of integers and unions of integers; all-zero bytes
    // are valid.
    let mut info: bpf_link_info = unsafe { std::mem::zeroed() };
    let mut attr = zeroed_attr();
    attr.info.bpf_fd = fd_u32(link);
    attr.info.info_len = u32::try_from(size_of::<bpf_link_info>()).expect("the struct is small");
    attr.info.info = (&raw mut info) as u64;
    bpf(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(LinkInfo {
        link_type: info.type_,
        prog_id: info.prog_id,
        // SAFETY: every member of the union is plain integers; for a link that is not a
        // cgroup link the value is meaningless and `LinkInfo::cgroup` ignores it.
        cgroup_id: unsafe { info.__bindgen_anon_1.cgroup.cgroup_id },
        // SAFETY: as above; meaningful for netns links only (`LinkInfo::netns`).
        netns_ino: unsafe { info.__bindgen_anon_1.netns.netns_ino },
    })
}

/// `bpf(BPF_PROG_QUERY)` with `BPF_F_QUERY_EFFECTIVE`: the ids of the programs that run for
/// the processes of the cgroup `cgroup` at `attach_type`, its own and its ancestors' (Linux
/// 4.15).
pub(crate) fn effective_programs(cgroup: BorrowedFd<'_>, attach_type: AttachType) -> io::Result<Vec<u32>> {
    let mut ids = vec![0u32; 64];
    loop {
        let mut attr = zeroed_attr();
        attr.query.__bindgen_anon_1.target_fd = fd_u32(cgroup);
        attr.query.attach_type = attach_type as u32;
        attr.query.query_flags = BPF_F_QUERY_EFFECTIVE;
        attr.query.prog_ids = ids.as_mut_ptr() as u64;
        // In: room in prog_ids; out: how many there are.
        attr.query.__bindgen_anon_2.prog_cnt =
            u32::try_from(ids.len()).expect("the buffer holds fewer than 2^32 ids");
        let result = bpf(bpf_cmd::BPF_PROG_QUERY, &mut attr);
        // SAFETY: the kernel wrote the count into the union member it was given in.
        let count = unsafe { attr.query.__bindgen_anon_2.prog_cnt } as usize;
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

/// `bpf(BPF_PROG_ATTACH)` of the `sk_msg` program `prog` to the socket map `map`
/// (`BPF_SK_MSG_VERDICT`), replacing the one attached there, if any. The map holds the program
/// as long as the map lives (no link); sockets inserted from now on run it.
pub(crate) fn sk_msg_attach(prog: BorrowedFd<'_>, map: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = zeroed_attr();
    attr.__bindgen_anon_5.__bindgen_anon_1.target_fd = fd_u32(map);
    attr.__bindgen_anon_5.attach_bpf_fd = fd_u32(prog);
    attr.__bindgen_anon_5.attach_type = AttachType::BPF_SK_MSG_VERDICT as u32;
    bpf(bpf_cmd::BPF_PROG_ATTACH, &mut attr).map(|_| ())
}

/// `bpf(BPF_PROG_DETACH)` of the `sk_msg` program `prog` from the socket map `map`.
pub(crate) fn sk_msg_detach(prog: BorrowedFd<'_>, map: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = zeroed_attr();
    attr.__bindgen_anon_5.__bindgen_anon_1.target_fd = fd_u32(map);
    attr.__bindgen_anon_5.attach_bpf_fd = fd_u32(prog);
    attr.__bindgen_anon_5.attach_type = AttachType::BPF_SK_MSG_VERDICT as u32;
    bpf(bpf_cmd::BPF_PROG_DETACH, &mut attr).map(|_| ())
}

/// The id of the `sk_msg` program attached to the socket map `map` (`BPF_PROG_QUERY`, Linux
/// 5.19); `None` when there is none.
pub(crate) fn sk_msg_attached(map: BorrowedFd<'_>) -> io::Result<Option<u32>> {
    let mut ids = [0u32; 1];
    let mut attr = zeroed_attr();
    attr.query.__bindgen_anon_1.target_fd = fd_u32(map);
    attr.query.attach_type = AttachType::BPF_SK_MSG_VERDICT as u32;
    attr.query.prog_ids = ids.as_mut_ptr() as u64;
    attr.query.__bindgen_anon_2.prog_cnt = 1;
    bpf(bpf_cmd::BPF_PROG_QUERY, &mut attr)?;
    // SAFETY: the kernel wrote the count into the union member it was given in.
    let count = unsafe { attr.query.__bindgen_anon_2.prog_cnt };
    Ok((count > 0).then_some(ids[0]))
}

/// A new one-entry `BPF_MAP_TYPE_ARRAY` of one `u32` holding `value` (the layout version a
/// node's pins carry).
pub(crate) fn version_map_create(value: u32) -> io::Result<OwnedFd> {
    let mut attr = zeroed_attr();
    attr.__bindgen_anon_1.map_type = bpf_map_type::BPF_MAP_TYPE_ARRAY as u32;
    attr.__bindgen_anon_1.key_size = 4;
    attr.__bindgen_anon_1.value_size = 4;
    attr.__bindgen_anon_1.max_entries = 1;
    let mut name = [0 as libc::c_char; 16];
    for (slot, byte) in name.iter_mut().zip(b"capture_layout") {
        *slot = *byte as libc::c_char;
    }
    attr.__bindgen_anon_1.map_name = name;
    let fd = bpf(bpf_cmd::BPF_MAP_CREATE, &mut attr)?;
    // SAFETY: BPF_MAP_CREATE returned a new file descriptor that nothing else owns.
    let map = unsafe { OwnedFd::from_raw_fd(fd) };
    let (key, value) = (0u32, value);
    let mut attr = zeroed_attr();
    attr.__bindgen_anon_2.map_fd = fd_u32(map.as_fd());
    attr.__bindgen_anon_2.key = (&raw const key) as u64;
    attr.__bindgen_anon_2.__bindgen_anon_1.value = (&raw const value) as u64;
    bpf(bpf_cmd::BPF_MAP_UPDATE_ELEM, &mut attr)?;
    Ok(map)
}

/// `bpf(BPF_PROG_LOAD)` of an `sk_lookup` program: its descriptor, or the verifier's log as
/// the error when it refuses the program.
pub(crate) fn prog_load_sk_lookup(
    insns: &[bpf_insn],
    license: &std::ffi::CStr,
    name: &str,
) -> io::Result<OwnedFd> {
    let load = |log: &mut [u8]| {
        let mut attr = zeroed_attr();
        let insn_cnt =
            u32::try_from(insns.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let mut prog_name = [0 as libc::c_char; 16];
        for (slot, byte) in prog_name.iter_mut().take(15).zip(name.bytes()) {
            *slot = byte as libc::c_char;
        }
        attr.__bindgen_anon_3.prog_type = bpf_prog_type::BPF_PROG_TYPE_SK_LOOKUP as u32;
        attr.__bindgen_anon_3.expected_attach_type = AttachType::BPF_SK_LOOKUP as u32;
        attr.__bindgen_anon_3.insns = insns.as_ptr() as u64;
        attr.__bindgen_anon_3.insn_cnt = insn_cnt;
        attr.__bindgen_anon_3.license = license.as_ptr() as u64;
        attr.__bindgen_anon_3.prog_name = prog_name;
        if !log.is_empty() {
            attr.__bindgen_anon_3.log_level = 1;
            attr.__bindgen_anon_3.log_buf = log.as_mut_ptr() as u64;
            attr.__bindgen_anon_3.log_size = u32::try_from(log.len()).expect("the log buffer is small");
        }
        bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr)
    };
    match load(&mut []) {
        // SAFETY: BPF_PROG_LOAD returned a new file descriptor that nothing else owns.
        Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
        Err(e) if e.raw_os_error() == Some(libc::EACCES) || e.raw_os_error() == Some(libc::EINVAL) => {
            // Again with the verifier's log, to say why.
            let mut log = vec![0u8; 1 << 20];
            match load(&mut log) {
                // SAFETY: as above.
                Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
                Err(again) => {
                    let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
                    let text = String::from_utf8_lossy(&log[..end]);
                    let last = text
                        .lines()
                        .rev()
                        .find(|l| !l.trim().is_empty())
                        .unwrap_or_default();
                    Err(io::Error::new(again.kind(), format!("{again}: verifier: {last}")))
                }
            }
        }
        Err(e) => Err(e),
    }
}

/// Puts the program `prog` into slot 0 of the program array `map`, or empties the slot
/// (`None`): every tail call into the slot runs the new program from now on.
pub(crate) fn prog_array_set(map: BorrowedFd<'_>, prog: Option<BorrowedFd<'_>>) -> io::Result<()> {
    let key = 0u32;
    let mut attr = zeroed_attr();
    attr.__bindgen_anon_2.map_fd = fd_u32(map);
    attr.__bindgen_anon_2.key = (&raw const key) as u64;
    match prog {
        Some(prog) => {
            // A program array's values are program descriptors going in, ids coming out.
            let value = fd_u32(prog);
            attr.__bindgen_anon_2.__bindgen_anon_1.value = (&raw const value) as u64;
            bpf(bpf_cmd::BPF_MAP_UPDATE_ELEM, &mut attr).map(|_| ())
        }
        None => match bpf(bpf_cmd::BPF_MAP_DELETE_ELEM, &mut attr) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            other => other.map(|_| ()),
        },
    }
}

/// The id of the program in slot 0 of the program array `map`; `None` when the slot is empty.
pub(crate) fn prog_array_get(map: BorrowedFd<'_>) -> io::Result<Option<u32>> {
    let (key, mut id) = (0u32, 0u32);
    let mut attr = zeroed_attr();
    attr.__bindgen_anon_2.map_fd = fd_u32(map);
    attr.__bindgen_anon_2.key = (&raw const key) as u64;
    attr.__bindgen_anon_2.__bindgen_anon_1.value = (&raw mut id) as u64;
    match bpf(bpf_cmd::BPF_MAP_LOOKUP_ELEM, &mut attr) {
        Ok(_) => Ok(Some(id)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The `u32` in entry 0 of a map made by [`version_map_create`].
pub(crate) fn version_map_read(map: BorrowedFd<'_>) -> io::Result<u32> {
    let (key, mut value) = (0u32, 0u32);
    let mut attr = zeroed_attr();
    attr.__bindgen_anon_2.map_fd = fd_u32(map);
    attr.__bindgen_anon_2.key = (&raw const key) as u64;
    attr.__bindgen_anon_2.__bindgen_anon_1.value = (&raw mut value) as u64;
    bpf(bpf_cmd::BPF_MAP_LOOKUP_ELEM, &mut attr)?;
    Ok(value)
}

/// `bpf(BPF_LINK_UPDATE)`: the link runs `new` from now on, if it still runs `old`
/// (`BPF_F_REPLACE`), atomically for every event the link sees.
pub(crate) fn link_update(link: BorrowedFd<'_>, new: BorrowedFd<'_>, old: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = zeroed_attr();
    attr.link_update.link_fd = fd_u32(link);
    attr.link_update.__bindgen_anon_1.new_prog_fd = fd_u32(new);
    attr.link_update.flags = BPF_F_REPLACE;
    attr.link_update.__bindgen_anon_2.old_prog_fd = fd_u32(old);
    bpf(bpf_cmd::BPF_LINK_UPDATE, &mut attr).map(|_| ())
}

/// `bpf(BPF_PROG_GET_FD_BY_ID)`: a descriptor of the loaded program `id`.
pub(crate) fn prog_by_id(id: u32) -> io::Result<OwnedFd> {
    let mut attr = zeroed_attr();
    attr.__bindgen_anon_6.__bindgen_anon_1.prog_id = id;
    let fd = bpf(bpf_cmd::BPF_PROG_GET_FD_BY_ID, &mut attr)?;
    // SAFETY: BPF_PROG_GET_FD_BY_ID returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A program's tag: the hash of its instructions with map references left out, so two loads
/// of the same code have the same tag.
pub(crate) fn prog_tag(prog: BorrowedFd<'_>) -> io::Result<[u8; 8]> {
    prog_info(prog).map(|info| info.tag)
}

/// How often a program ran and for how long in all (`run_cnt`, `run_time_ns`): the kernel
/// counts both only while `kernel.bpf_stats_enabled` is 1 (or someone holds
/// `BPF_ENABLE_STATS`), so they cover those times alone.
pub(crate) fn prog_runs(prog: BorrowedFd<'_>) -> io::Result<(u64, u64)> {
    prog_info(prog).map(|info| (info.run_cnt, info.run_time_ns))
}

/// `bpf(BPF_OBJ_GET_INFO_BY_FD)` on a program, without the arrays it can point to.
fn prog_info(prog: BorrowedFd<'_>) -> io::Result<bpf_prog_info> {
    // SAFETY: bpf_prog_info is a C struct of integers; all-zero bytes are valid.
    let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
    let mut attr = zeroed_attr();
    attr.info.bpf_fd = fd_u32(prog);
    attr.info.info_len = u32::try_from(size_of::<bpf_prog_info>()).expect("the struct is small");
    attr.info.info = (&raw mut info) as u64;
    bpf(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(info)
}

/// What decides whether a map's entries fit another map: its type, key and value sizes,
/// capacity and flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MapShape {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub map_flags: u32,
}

/// `bpf(BPF_OBJ_GET_INFO_BY_FD)` on a map.
pub(crate) fn map_shape(map: BorrowedFd<'_>) -> io::Result<MapShape> {
    // SAFETY: bpf_map_info is a C struct of integers; all-zero bytes are valid.
    let mut info: bpf_map_info = unsafe { std::mem::zeroed() };
    let mut attr = zeroed_attr();
    attr.info.bpf_fd = fd_u32(map);
    attr.info.info_len = u32::try_from(size_of::<bpf_map_info>()).expect("the struct is small");
    attr.info.info = (&raw mut info) as u64;
    bpf(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(MapShape {
        map_type: info.type_,
        key_size: info.key_size,
        value_size: info.value_size,
        max_entries: info.max_entries,
        map_flags: info.map_flags,
    })
}

/// Copies every entry of `from` into `to` (maps of the same type and key size), as bytes;
/// with `only_missing`, entries `to` already has are left as they are. `to_value_size` is
/// `to`'s value size: when larger than `from`'s, each value (each CPU's, for a per-CPU map) is
/// written into the first bytes of the wider one, the rest zero. Returns how many were
/// written.
pub(crate) fn map_copy(
    from: BorrowedFd<'_>,
    to: BorrowedFd<'_>,
    shape: MapShape,
    to_value_size: u32,
    only_missing: bool,
) -> io::Result<usize> {
    if to_value_size < shape.value_size {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "values would shrink from {} to {to_value_size} bytes",
                shape.value_size
            ),
        ));
    }
    let per_cpu = [
        bpf_map_type::BPF_MAP_TYPE_PERCPU_ARRAY,
        bpf_map_type::BPF_MAP_TYPE_PERCPU_HASH,
        bpf_map_type::BPF_MAP_TYPE_LRU_PERCPU_HASH,
    ]
    .iter()
    .any(|t| *t as u32 == shape.map_type);
    // Per-CPU values come one per possible CPU, each padded to 8 bytes.
    let (cpus, from_len, to_len) = if per_cpu {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        (
            cpus,
            (shape.value_size as usize).next_multiple_of(8),
            (to_value_size as usize).next_multiple_of(8),
        )
    } else {
        (1, shape.value_size as usize, to_value_size as usize)
    };
    let value_len = from_len * cpus;
    let mut wide = vec![0u8; to_len * cpus];
    let mut key = vec![0u8; shape.key_size as usize];
    let mut next = vec![0u8; shape.key_size as usize];
    let mut value = vec![0u8; value_len];
    let mut first = true;
    let mut copied = 0;
    loop {
        let mut attr = zeroed_attr();
        attr.__bindgen_anon_2.map_fd = fd_u32(from);
        // No key: the first one.
        attr.__bindgen_anon_2.key = if first { 0 } else { key.as_ptr() as u64 };
        attr.__bindgen_anon_2.__bindgen_anon_1.next_key = next.as_mut_ptr() as u64;
        match bpf(bpf_cmd::BPF_MAP_GET_NEXT_KEY, &mut attr) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(copied),
            Err(e) => return Err(e),
        }
        first = false;
        std::mem::swap(&mut key, &mut next);
        let mut attr = zeroed_attr();
        attr.__bindgen_anon_2.map_fd = fd_u32(from);
        attr.__bindgen_anon_2.key = key.as_ptr() as u64;
        attr.__bindgen_anon_2.__bindgen_anon_1.value = value.as_mut_ptr() as u64;
        match bpf(bpf_cmd::BPF_MAP_LOOKUP_ELEM, &mut attr) {
            Ok(_) => {}
            // Deleted since it was listed.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(e),
        }
        let written = if to_len == from_len {
            &value
        } else {
            for (to, from) in wide.chunks_exact_mut(to_len).zip(value.chunks_exact(from_len)) {
                to[..from_len].copy_from_slice(from);
            }
            &wide
        };
        let mut attr = zeroed_attr();
        attr.__bindgen_anon_2.map_fd = fd_u32(to);
        attr.__bindgen_anon_2.key = key.as_ptr() as u64;
        attr.__bindgen_anon_2.__bindgen_anon_1.value = written.as_ptr() as u64;
        attr.__bindgen_anon_2.flags = if only_missing {
            u64::from(aya_obj::generated::BPF_NOEXIST)
        } else {
            0
        };
        match bpf(bpf_cmd::BPF_MAP_UPDATE_ELEM, &mut attr) {
            Ok(_) => copied += 1,
            Err(e) if only_missing && e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(e),
        }
    }
}

fn bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<libc::c_int> {
    // SAFETY: `attr` is a live, zero-initialised bpf_attr with the command's fields set, and
    // its size is passed along; any pointer in it (a path, or a buffer the kernel fills, whose
    // size is in the attr as well) outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_int,
            std::ptr::from_mut(attr),
            size_of::<bpf_attr>(),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(libc::c_int::try_from(rc).expect("a file descriptor fits a c_int"))
    }
}
