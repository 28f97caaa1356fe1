//! The bpf filesystem the node's pins live on: mounting one, and telling file systems apart by
//! their `statfs(2)` magic.

use std::fs;
use std::path::Path;

use nix::sys::statfs::{BPF_FS_MAGIC, FsType, statfs};

use crate::Error;

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
    Ok(fs_type(path)? == BPF_FS_MAGIC)
}

/// The type of the file system `path` is on.
pub(crate) fn fs_type(path: &Path) -> Result<FsType, Error> {
    let stat = statfs(path).map_err(|e| Error::Io {
        op: "statfs",
        path: path.to_owned(),
        source: e.into(),
    })?;
    Ok(stat.filesystem_type())
}
