//! Cgroup v2 directories as the kernel names them: by id.
//!
//! A cgroup link's info (`BPF_OBJ_GET_INFO_BY_FD`) gives the id of the cgroup it is attached
//! to, never a path; the id is the cgroup directory's inode number (kernfs hands out the node
//! id as the inode on 64-bit kernels, and `bpftool link show` prints the same number as
//! `cgroup_id`). So a directory is turned into an id with `stat(2)`, and an id back into a
//! directory, for messages, by looking for that inode below the cgroup v2 mount.

use std::fmt;
use std::fs;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use nix::sys::statfs::CGROUP2_SUPER_MAGIC;

use crate::Error;
use crate::bpffs::fs_type;

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

/// Whether `path` is on a cgroup v2 file system.
pub(crate) fn is_cgroup2(path: &Path) -> Result<bool, Error> {
    Ok(fs_type(path)? == CGROUP2_SUPER_MAGIC)
}

/// A cgroup's id: the kernel's `cgroup_id`, the inode number of its cgroup v2 directory.
/// Ids are not reused while the kernel runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CgroupId(pub u64);

impl CgroupId {
    /// The id of the cgroup v2 directory `dir`.
    ///
    /// # Errors
    /// [`Error::NotCgroup2`] when `dir` is not a cgroup v2 directory, [`Error::Io`] when it
    /// cannot be read.
    pub fn of(dir: &Path) -> Result<CgroupId, Error> {
        if !is_cgroup2(dir)? {
            return Err(Error::NotCgroup2 { path: dir.to_owned() });
        }
        let meta = fs::metadata(dir).map_err(|source| Error::Io {
            op: "stat",
            path: dir.to_owned(),
            source,
        })?;
        Ok(CgroupId(meta.ino()))
    }

    /// The directory of this cgroup below the cgroup v2 mount `root`, if there is one: not
    /// when the cgroup was removed, or lies outside this process's cgroup namespace.
    pub(crate) fn find_below(self, root: &Path) -> Option<PathBuf> {
        let dev = fs::metadata(root).ok()?.dev();
        let mut dirs = vec![root.to_owned()];
        while let Some(dir) = dirs.pop() {
            let Ok(meta) = fs::symlink_metadata(&dir) else {
                continue;
            };
            if meta.dev() == dev && meta.ino() == self.0 {
                return Some(dir);
            }
            // Unreadable directories are skipped: the search only improves a message.
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            dirs.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
        None
    }
}

impl fmt::Display for CgroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The cgroup a node's programs are attached to: its id, and its directory when it is found
/// below this process's cgroup v2 mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachedCgroup {
    /// The cgroup's id.
    pub id: CgroupId,
    /// Its directory, if found.
    pub path: Option<PathBuf>,
}

impl AttachedCgroup {
    /// The cgroup `id`, with its directory looked up below the cgroup v2 mount.
    pub(crate) fn find(id: CgroupId) -> AttachedCgroup {
        let path = cgroup2_root().ok().and_then(|root| id.find_below(&root));
        AttachedCgroup { id, path }
    }
}

impl fmt::Display for AttachedCgroup {
    /// `cgroup <dir> (id <id>)`, or `cgroup id <id>` with why there is no directory.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self { id, path } = self;
        match path {
            Some(path) => write!(f, "cgroup {} (id {id})", path.display()),
            None => write!(f, "cgroup id {id} (removed, or outside this cgroup namespace)"),
        }
    }
}

/// Where a node's programs are attached ([`Node::attachment`](crate::Node::attachment)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attachment {
    /// Every program's link is attached to this cgroup (links are made together on one
    /// cgroup and cannot move).
    Cgroup(AttachedCgroup),
    /// This program's link is attached to no cgroup: someone detached it (`bpftool link
    /// detach`), or its cgroup was removed. The program acts nowhere.
    Detached {
        /// The program.
        program: &'static str,
    },
}

impl fmt::Display for Attachment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Attachment::Cgroup(cgroup) => cgroup.fmt(f),
            Attachment::Detached { program } => write!(f, "no cgroup (the link of {program} is detached)"),
        }
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
    fn attached_cgroups_are_named_by_path_and_id() {
        let found = AttachedCgroup {
            id: CgroupId(4711),
            path: Some("/sys/fs/cgroup/kubepods".into()),
        };
        assert_eq!(found.to_string(), "cgroup /sys/fs/cgroup/kubepods (id 4711)");
        let gone = AttachedCgroup {
            id: CgroupId(4711),
            path: None,
        };
        assert_eq!(
            gone.to_string(),
            "cgroup id 4711 (removed, or outside this cgroup namespace)"
        );
        assert_eq!(
            Attachment::Detached {
                program: "capture_connect4"
            }
            .to_string(),
            "no cgroup (the link of capture_connect4 is detached)"
        );
    }

    #[test]
    fn a_directory_is_found_by_its_inode() {
        let base = std::env::temp_dir().join(format!("capture-cgroup-find-{}", std::process::id()));
        let deep = base.join("a").join("b");
        fs::create_dir_all(&deep).unwrap();
        let id = CgroupId(fs::metadata(&deep).unwrap().ino());
        let (found, none) = (id.find_below(&base), CgroupId(0).find_below(&base));
        fs::remove_dir_all(&base).unwrap();
        assert_eq!(found, Some(deep));
        assert_eq!(none, None);
    }
}
