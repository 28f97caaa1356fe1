//! Entering a pod's network namespace from a dedicated thread (ztunnel's `InpodNetns`).
//!
//! setns(2) with `CLONE_NEWNET` moves only the calling thread, so the work runs on a thread of
//! its own that enters the pod's namespace, works, and goes back before it ends; the rest of
//! the process never leaves the node's namespace. Programs started from that thread
//! (`iptables-restore`) and sockets it opens (netlink) belong to the pod's namespace.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::thread;

use nix::sched::{CloneFlags, setns};
use nix::sys::statfs::{NSFS_MAGIC, fstatfs};

use crate::error::Error;

/// The identity of a namespace: the `(st_dev, st_ino)` of its nsfs inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NsId {
    /// The nsfs device.
    pub dev: u64,
    /// The namespace's inode number.
    pub ino: u64,
}

/// An open network namespace.
#[derive(Debug)]
pub struct NetNs {
    fd: OwnedFd,
    path: PathBuf,
    id: NsId,
}

/// Why [`NetNs::open`] failed.
#[derive(Debug)]
pub enum OpenError {
    /// Nothing at the path: the namespace is gone (a normal state for `DEL`).
    NotFound,
    /// The path exists but is not a network namespace (for example a bind mount that was
    /// detached, leaving its empty mount point).
    NotNetns,
    /// Any other failure.
    Io(io::Error),
}

impl OpenError {
    /// This failure as the plugin's error for `path`.
    pub fn into_error(self, path: &Path) -> Error {
        match self {
            Self::NotFound => Error::NetnsOpen {
                path: path.to_owned(),
                source: io::ErrorKind::NotFound.into(),
            },
            Self::NotNetns => Error::NotNetns {
                path: path.to_owned(),
            },
            Self::Io(source) => Error::NetnsOpen {
                path: path.to_owned(),
                source,
            },
        }
    }

    /// Whether the namespace is simply not there any more.
    pub fn is_gone(&self) -> bool {
        matches!(self, Self::NotFound | Self::NotNetns)
    }
}

impl NetNs {
    /// Opens the namespace at `path` (`/run/netns/<name>`, `/proc/<pid>/ns/net`, …).
    ///
    /// # Errors
    /// [`OpenError`]: missing, not a namespace, or unreadable.
    pub fn open(path: &Path) -> Result<Self, OpenError> {
        let file = File::open(path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => OpenError::NotFound,
            _ => OpenError::Io(e),
        })?;
        let fs = fstatfs(&file).map_err(|e| OpenError::Io(e.into()))?;
        if fs.filesystem_type() != NSFS_MAGIC {
            return Err(OpenError::NotNetns);
        }
        let meta = file.metadata().map_err(OpenError::Io)?;
        Ok(Self {
            id: NsId {
                dev: meta.dev(),
                ino: meta.ino(),
            },
            fd: file.into(),
            path: path.to_owned(),
        })
    }

    /// The namespace's identity.
    pub fn id(&self) -> NsId {
        self.id
    }

    /// The path it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on a new thread inside this namespace and returns its result.
    ///
    /// # Errors
    /// [`Error::Setns`] when the thread cannot enter the namespace (a different namespace
    /// type, or no `CAP_SYS_ADMIN`); [`Error::Internal`] when `f` panics.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> Result<T, Error> + Send) -> Result<T, Error> {
        let target = self.fd.as_fd();
        let path = &self.path;
        thread::scope(|scope| {
            let worker = thread::Builder::new()
                .name("capture-cni-netns".into())
                .spawn_scoped(scope, move || {
                    let home = File::open("/proc/thread-self/ns/net").map_err(|source| Error::NetnsOpen {
                        path: "/proc/thread-self/ns/net".into(),
                        source,
                    })?;
                    setns(target, CloneFlags::CLONE_NEWNET).map_err(|source| Error::Setns {
                        path: path.clone(),
                        source,
                    })?;
                    let result = f();
                    // The thread ends right after, but nothing of it should outlive its stay.
                    setns(home.as_fd(), CloneFlags::CLONE_NEWNET)
                        .expect("returning to the node's network namespace");
                    result
                })
                .map_err(|e| Error::Internal(format!("cannot spawn a thread: {e}")))?;
            worker.join().map_err(|panic| {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".into());
                Error::Internal(what)
            })?
        })
    }
}

/// Runs `f` on a new thread inside a new, empty network namespace that goes away with the
/// thread. `STATUS` uses it to try the backend without reading the node's own rules.
///
/// # Errors
/// [`Error::Setns`] when the namespace cannot be made; [`Error::Internal`] when `f` panics.
pub fn run_in_scratch_netns<T: Send>(f: impl FnOnce() -> Result<T, Error> + Send) -> Result<T, Error> {
    thread::scope(|scope| {
        let worker = thread::Builder::new()
            .name("capture-cni-scratch".into())
            .spawn_scoped(scope, move || {
                nix::sched::unshare(CloneFlags::CLONE_NEWNET).map_err(|source| Error::Setns {
                    path: "(a new namespace)".into(),
                    source,
                })?;
                f()
            })
            .map_err(|e| Error::Internal(format!("cannot spawn a thread: {e}")))?;
        worker
            .join()
            .map_err(|_| Error::Internal("a panic while probing the backend".into()))?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_non_namespace_paths() {
        assert!(matches!(
            NetNs::open(Path::new("/nonexistent/netns")),
            Err(OpenError::NotFound)
        ));
        let not_ns = NetNs::open(Path::new("/proc/self/status"));
        assert!(matches!(not_ns, Err(OpenError::NotNetns)), "{not_ns:?}");
        assert!(not_ns.unwrap_err().is_gone());
    }

    #[test]
    fn own_namespace_opens_and_runs() {
        let ns = NetNs::open(Path::new("/proc/self/ns/net")).unwrap();
        let same = NetNs::open(Path::new("/proc/thread-self/ns/net")).unwrap();
        assert_eq!(ns.id(), same.id());
        // Entering one's own namespace needs CAP_SYS_ADMIN all the same.
        if nix::unistd::geteuid().is_root() {
            assert_eq!(ns.run(|| Ok(7)).unwrap(), 7);
            assert!(
                matches!(ns.run(|| -> Result<(), Error> { panic!("boom") }), Err(Error::Internal(m)) if m == "boom")
            );
        }
    }
}
