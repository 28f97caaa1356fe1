//! Where a node's programs live on bpffs, and the lock that serialises changing them.
//!
//! ```text
//! <bpffs>/                       the node lock: an exclusive flock(2) on this directory
//! └── capture/                   PinDir::new(bpffs)  (PinDir::at for another name)
//!     ├── links/<program>        one cgroup bpf_link per program (their presence = loaded)
//!     ├── maps/<MAP>             every map of the object
//!     └── inbound/<netns cookie> each enrolled pod's own sk_lookup link
//! ```
//!
//! The lock is on the bpf filesystem's directory rather than the pin directory, which does not
//! exist before the first load: two pods set up at once on a fresh node must not both load the
//! programs. Every change to the pins (load, enroll, unenroll, unload) is made holding it;
//! reading needs no lock.

use std::fs::{self, File};
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use capture_ebpf_common::{LAYOUT, MAP_NAMES};
use nix::fcntl::{Flock, FlockArg};

use crate::node::PROGRAMS;
use crate::sys::{link_detach, obj_get};
use crate::{Error, NetnsCookie};

/// The pin directory of a node's programs: the layout below it, and the node lock.
///
/// # Examples
/// ```
/// use std::path::Path;
/// use capture_ebpf::PinDir;
///
/// let pins = PinDir::new(Path::new("/sys/fs/bpf"));
/// assert_eq!(pins.path(), Path::new("/sys/fs/bpf/capture"));
/// assert_eq!(pins.link("capture_connect4"), Path::new("/sys/fs/bpf/capture/links/capture_connect4"));
/// assert_eq!(pins.bpffs(), Path::new("/sys/fs/bpf"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinDir {
    path: PathBuf,
}

impl PinDir {
    /// The directory name [`PinDir::new`] uses below the bpf filesystem.
    pub const NAME: &str = "capture";

    /// `<bpffs>/capture`: where capture-init (and any other front end) pins the programs.
    #[must_use]
    pub fn new(bpffs: &Path) -> PinDir {
        PinDir {
            path: bpffs.join(Self::NAME),
        }
    }

    /// The pin directory `path` itself; its parent is the bpf filesystem (and holds the lock).
    #[must_use]
    pub fn at(path: impl Into<PathBuf>) -> PinDir {
        PinDir { path: path.into() }
    }

    /// The directory.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The bpf filesystem directory it is in (its parent), which the node lock is taken on.
    #[must_use]
    pub fn bpffs(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("/"))
    }

    /// `links/`: one pinned cgroup link per program.
    #[must_use]
    pub fn links(&self) -> PathBuf {
        self.path.join("links")
    }

    /// `links/<program>`.
    #[must_use]
    pub fn link(&self, program: &str) -> PathBuf {
        self.links().join(program)
    }

    /// `maps/`: every map of the object.
    #[must_use]
    pub fn maps(&self) -> PathBuf {
        self.path.join("maps")
    }

    /// `maps/<name>`.
    #[must_use]
    pub fn map(&self, name: &str) -> PathBuf {
        self.maps().join(name)
    }

    /// `inbound/`: the enrolled pods' `sk_lookup` links.
    #[must_use]
    pub fn inbound(&self) -> PathBuf {
        self.path.join("inbound")
    }

    /// `inbound/<netns cookie>`: the pod's `sk_lookup` link.
    #[must_use]
    pub fn inbound_link(&self, cookie: NetnsCookie) -> PathBuf {
        self.inbound().join(cookie.0.to_string())
    }

    /// `upgrade/`: new maps while [`Node::upgrade`](crate::Node::upgrade) switches to them.
    #[must_use]
    pub fn staging(&self) -> PathBuf {
        self.path.join("upgrade")
    }

    /// Whether programs are pinned here (their link pins are).
    #[must_use]
    pub fn is_loaded(&self) -> bool {
        self.links().is_dir()
    }

    /// Mounts a bpf filesystem on [`PinDir::bpffs`] unless one is there ([`crate::mount_bpffs`]).
    ///
    /// # Errors
    /// As [`crate::mount_bpffs`].
    pub fn mount(&self) -> Result<(), Error> {
        crate::mount_bpffs(self.bpffs())
    }

    /// Takes the node lock: an exclusive `flock` on [`PinDir::bpffs`], waiting for another
    /// holder; released when the returned value is dropped (or the process ends).
    ///
    /// # Errors
    /// [`Error::Lock`] when the directory cannot be opened or locked.
    pub fn lock(&self) -> Result<NodeLock, Error> {
        let bpffs = self.bpffs();
        let err = |source| Error::Lock {
            path: bpffs.to_owned(),
            source,
        };
        let dir = File::open(bpffs).map_err(err)?;
        let flock = Flock::lock(dir, FlockArg::LockExclusive).map_err(|(_, errno)| err(errno.into()))?;
        Ok(NodeLock { _flock: flock })
    }
}

impl AsRef<Path> for PinDir {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

/// The node lock ([`PinDir::lock`]), held until dropped.
#[derive(Debug)]
pub struct NodeLock {
    _flock: Flock<File>,
}

/// Removes what [`Node::load`](crate::Node::load) pinned under `pins`; see
/// [`Node::unload`](crate::Node::unload). Call it holding the node lock.
///
/// # Errors
/// [`Error::NotLoaded`], or [`Error::Io`] when a pin cannot be removed.
pub fn unload(pins: &PinDir) -> Result<(), Error> {
    if !pins.is_loaded() {
        return Err(Error::NotLoaded {
            path: pins.path().to_owned(),
        });
    }
    // Links first, each detached explicitly: the kernel drops a removed pin's reference only
    // after an RCU grace period, and the program would stay attached until then.
    for (name, _) in PROGRAMS {
        detach_pinned(&pins.link(name))?;
    }
    let inbound = pins.inbound();
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
    for name in MAP_NAMES.into_iter().chain([LAYOUT]) {
        remove_pin(&pins.map(name))?;
    }
    // What an upgrade killed half-way left.
    clear_staging(&pins.staging())?;
    for dir in [pins.links(), pins.maps(), pins.path().to_owned()] {
        fs::remove_dir(&dir).map_err(|source| Error::Io {
            op: "remove directory",
            path: dir.clone(),
            source,
        })?;
    }
    Ok(())
}

/// Removes what an earlier, interrupted upgrade left in the staging directory.
pub(crate) fn clear_staging(staging: &Path) -> Result<(), Error> {
    let entries = match fs::read_dir(staging) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(Error::Io {
                op: "read directory",
                path: staging.to_owned(),
                source,
            });
        }
    };
    for entry in entries.flatten() {
        remove_pin(&entry.path())?;
    }
    fs::remove_dir(staging).map_err(|source| Error::Io {
        op: "remove directory",
        path: staging.to_owned(),
        source,
    })
}

/// Detaches the link pinned at `path` (if any) and removes the pin.
pub(crate) fn detach_pinned(path: &Path) -> Result<(), Error> {
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
    remove_pin(path)
}

/// Removes the pin at `path`; one that is not there is no error.
pub(crate) fn remove_pin(path: &Path) -> Result<(), Error> {
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

/// Creates the directory `dir`; one that exists already is no error. Returns whether it made
/// it.
pub(crate) fn create_dir(dir: &Path) -> Result<bool, Error> {
    match fs::create_dir(dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(source) => Err(Error::Io {
            op: "create directory",
            path: dir.to_owned(),
            source,
        }),
    }
}

/// Pins made by an unfinished load, removed on drop unless kept.
#[derive(Debug)]
pub(crate) struct Pins {
    dirs: Vec<PathBuf>,
    files: Vec<PathBuf>,
}

impl Pins {
    /// Creates the pin directory and its `maps/` and `links/` (those that are missing).
    pub fn new(pins: &PinDir) -> Result<Pins, Error> {
        let mut made = Pins {
            dirs: Vec::new(),
            files: Vec::new(),
        };
        for dir in [pins.path().to_owned(), pins.maps(), pins.links()] {
            if create_dir(&dir)? {
                made.dirs.push(dir);
            }
        }
        Ok(made)
    }

    /// Records a pin made, to be removed if the load fails.
    pub fn push(&mut self, file: PathBuf) {
        self.files.push(file);
    }

    /// The load succeeded: everything stays.
    pub fn keep(mut self) {
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
