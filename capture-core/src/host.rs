//! The host layer every front end shares: entering a pod's network namespace, the pod's
//! addresses, and the pod-scoped xtables lock file.
//!
//! setns(2) with `CLONE_NEWNET` moves only the calling thread, so [`NetNs::run`] does the work
//! on a thread of its own that enters the pod's namespace, works, and goes back before it ends;
//! the rest of the process never leaves its namespace (ztunnel's `InpodNetns`). Programs started
//! from that thread (`iptables-restore`), threads it spawns and sockets it opens (netlink) belong
//! to the pod's namespace.

use std::fs::File;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd as _, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::thread;

use nix::sched::{CloneFlags, setns};
use nix::sys::statfs::{NSFS_MAGIC, fstatfs};

/// The identity of a namespace: the `(st_dev, st_ino)` of its nsfs inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NsId {
    /// The nsfs device.
    pub dev: u64,
    /// The namespace's inode number.
    pub ino: u64,
}

impl NsId {
    /// The calling thread's network namespace.
    ///
    /// # Errors
    /// When `/proc/thread-self/ns/net` cannot be read.
    pub fn current() -> io::Result<Self> {
        let meta = std::fs::metadata("/proc/thread-self/ns/net")?;
        Ok(Self {
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }
}

/// Why [`NetNs::open`] failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Nothing at the path: the namespace is gone (a normal state for CNI `DEL`).
    #[error("no such file or directory")]
    NotFound,
    /// The path exists but is not a network namespace (for example a bind mount that was
    /// detached, leaving its empty mount point).
    #[error("not a network namespace")]
    NotNetns,
    /// Any other failure.
    #[error(transparent)]
    Io(io::Error),
}

impl OpenError {
    /// Whether the namespace is simply not there any more.
    pub fn is_gone(&self) -> bool {
        matches!(self, Self::NotFound | Self::NotNetns)
    }
}

/// Why [`NetNs::run`] could not run its work in the namespace.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The worker thread could not enter the namespace (no `CAP_SYS_ADMIN`, or not a network
    /// namespace).
    #[error("cannot enter network namespace {}", path.display())]
    Setns {
        /// The namespace.
        path: PathBuf,
        /// Why.
        #[source]
        source: nix::Error,
    },
    /// The calling thread's own namespace could not be opened to come back to.
    #[error("cannot open the calling thread's network namespace")]
    Home(#[source] io::Error),
    /// No thread could be started.
    #[error("cannot start a thread")]
    Spawn(#[source] io::Error),
    /// The work panicked.
    #[error("panicked: {0}")]
    Panicked(String),
}

/// An open network namespace.
#[derive(Debug)]
pub struct NetNs {
    fd: OwnedFd,
    path: PathBuf,
    id: NsId,
}

impl NetNs {
    /// Opens the namespace at `path` (`/run/netns/<name>`, `/proc/<pid>/ns/net`, …), checking
    /// that it is one (nsfs).
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
        // A namespace of another kind (`/proc/<pid>/ns/mnt`) is nsfs too; setns would only say
        // EINVAL. NS_GET_NSTYPE (Linux 4.11) needs no privilege.
        // SAFETY: an ioctl without argument on a descriptor this function owns.
        let kind = unsafe { libc::ioctl(file.as_raw_fd(), libc::NS_GET_NSTYPE) };
        if kind != libc::CLONE_NEWNET {
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

    /// The namespace's descriptor.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Runs `f` on a new thread inside this namespace and returns its result.
    ///
    /// # Errors
    /// `f`'s own errors, or a [`RunError`] (converted into `E`) when the thread cannot enter
    /// the namespace or `f` panics.
    pub fn run<T: Send, E: Send + From<RunError>>(
        &self,
        f: impl FnOnce() -> Result<T, E> + Send,
    ) -> Result<T, E> {
        run_in(self.fd.as_fd(), &self.path, f)
    }
}

/// [`NetNs::run`] for a namespace known only by its descriptor `netns` (named `path` in
/// errors).
///
/// # Errors
/// As [`NetNs::run`].
pub fn run_in<T: Send, E: Send + From<RunError>>(
    netns: BorrowedFd<'_>,
    path: &Path,
    f: impl FnOnce() -> Result<T, E> + Send,
) -> Result<T, E> {
    on_thread("capture-netns", move || {
        let home = File::open("/proc/thread-self/ns/net").map_err(RunError::Home)?;
        setns(netns, CloneFlags::CLONE_NEWNET).map_err(|source| RunError::Setns {
            path: path.to_owned(),
            source,
        })?;
        let result = f();
        // The thread ends right after, but nothing of it should outlive its stay.
        setns(home.as_fd(), CloneFlags::CLONE_NEWNET).expect("returning to the original network namespace");
        result
    })
}

/// Runs `f` on a new thread inside a new, empty network namespace that goes away with the
/// thread: a backend can be tried there without reading the node's own rules.
///
/// # Errors
/// As [`NetNs::run`].
pub fn run_in_scratch_netns<T: Send, E: Send + From<RunError>>(
    f: impl FnOnce() -> Result<T, E> + Send,
) -> Result<T, E> {
    on_thread("capture-scratch", move || {
        nix::sched::unshare(CloneFlags::CLONE_NEWNET).map_err(|source| RunError::Setns {
            path: "(a new namespace)".into(),
            source,
        })?;
        f()
    })
}

fn on_thread<T: Send, E: Send + From<RunError>>(
    name: &str,
    f: impl FnOnce() -> Result<T, E> + Send,
) -> Result<T, E> {
    thread::scope(|scope| {
        let worker = thread::Builder::new()
            .name(name.into())
            .spawn_scoped(scope, f)
            .map_err(RunError::Spawn)?;
        worker.join().map_err(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into());
            RunError::Panicked(what)
        })?
    })
}

/// The addresses of the calling thread's network namespace, in the kernel's order.
///
/// # Errors
/// When `getifaddrs(3)` fails.
pub fn addresses() -> nix::Result<Vec<IpAddr>> {
    Ok(nix::ifaddrs::getifaddrs()?
        .filter_map(|ifa| ifa.address)
        .filter_map(|a| {
            a.as_sockaddr_in()
                .map(|v4| IpAddr::V4(v4.ip()))
                .or_else(|| a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
        })
        .collect())
}

/// The xtables lock file (`XTABLES_LOCKFILE`) private to the namespace `id`, in `dir`: legacy
/// iptables in different pods never queue on the node's `/run/xtables.lock` (contended by
/// kube-proxy). One name for capture-init and capture-cni, so either one's garbage collection
/// recognises the other's files.
pub fn xtables_lock_file(dir: &Path, id: NsId) -> PathBuf {
    dir.join(format!(
        "{XTABLES_LOCK_PREFIX}{}-{}{XTABLES_LOCK_SUFFIX}",
        id.dev, id.ino
    ))
}

/// Removes a lock file [`xtables_lock_file`] named; one that is not there (nft never makes one,
/// nor a run without a writable directory) is not an error.
///
/// # Errors
/// When the file exists but cannot be removed.
pub fn remove_xtables_lock_file(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if !matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory) => Err(e),
        _ => Ok(()),
    }
}

/// Whether a file name is one [`xtables_lock_file`] makes.
pub fn is_xtables_lock_file(name: &str) -> bool {
    name.strip_prefix(XTABLES_LOCK_PREFIX)
        .and_then(|rest| rest.strip_suffix(XTABLES_LOCK_SUFFIX))
        .and_then(|ids| ids.split_once('-'))
        .is_some_and(|(dev, ino)| dev.parse::<u64>().is_ok() && ino.parse::<u64>().is_ok())
}

const XTABLES_LOCK_PREFIX: &str = "xtables-";
const XTABLES_LOCK_SUFFIX: &str = ".lock";

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Failed(RunError);

    impl From<RunError> for Failed {
        fn from(e: RunError) -> Self {
            Self(e)
        }
    }

    #[test]
    fn missing_and_non_namespace_paths() {
        assert!(matches!(
            NetNs::open(Path::new("/nonexistent/netns")),
            Err(OpenError::NotFound)
        ));
        let not_ns = NetNs::open(Path::new("/proc/self/status"));
        assert!(matches!(not_ns, Err(OpenError::NotNetns)), "{not_ns:?}");
        assert!(not_ns.unwrap_err().is_gone());
        for other_kind in ["/proc/self/ns/mnt", "/proc/self/ns/user", "/proc/self/ns/uts"] {
            let opened = NetNs::open(Path::new(other_kind));
            assert!(
                matches!(opened, Err(OpenError::NotNetns)),
                "{other_kind}: {opened:?}"
            );
        }
    }

    #[test]
    fn own_namespace_opens_and_runs() {
        let ns = NetNs::open(Path::new("/proc/self/ns/net")).unwrap();
        let same = NetNs::open(Path::new("/proc/thread-self/ns/net")).unwrap();
        assert_eq!(ns.id(), same.id());
        assert_eq!(NsId::current().unwrap(), ns.id());
        // Entering one's own namespace needs CAP_SYS_ADMIN all the same.
        if nix::unistd::geteuid().is_root() {
            assert_eq!(ns.run(|| Ok::<_, Failed>(7)).unwrap(), 7);
            let panicked = ns.run(|| -> Result<(), Failed> { panic!("boom") });
            assert!(matches!(panicked, Err(Failed(RunError::Panicked(m))) if m == "boom"));
        }
    }

    #[test]
    fn lock_file_names() {
        let id = NsId {
            dev: 4,
            ino: 4026532178,
        };
        let path = xtables_lock_file(Path::new("/run/capture-cni"), id);
        assert_eq!(path, Path::new("/run/capture-cni/xtables-4-4026532178.lock"));
        assert!(is_xtables_lock_file("xtables-4-4026532178.lock"));
        assert!(!is_xtables_lock_file("xtables-4.lock"));
        assert!(!is_xtables_lock_file("capture-xtables-4-5.lock"));
    }
}
