//! Named network namespaces owned by one test.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io;
use std::os::fd::{AsFd as _, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{self, Command};
use std::sync::atomic::{AtomicU32, Ordering};
use std::{panic, thread};

use capture_core::chain;
use capture_core::host::{self, RunError};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::mount::{MntFlags, MsFlags, mount, umount2};

use crate::{assume_identity, run_ok};

/// Every namespace the harness creates is named `capture-test-<pid>-<n>`, so leaks can be found with
/// `ip netns ls | grep capture-test`.
pub const NETNS_PREFIX: &str = "capture-test";

/// Where `ip netns` keeps its named namespaces; the harness uses the same place so `ip -n` works.
const NETNS_DIR: &str = "/run/netns";

static NEXT_NETNS: AtomicU32 = AtomicU32::new(0);

/// A named network namespace, created for one test and removed on `Drop`.
///
/// It is made the way `ip netns add` makes one: `/run/netns` is made a shared mount point of its own
/// (`share_netns_dir`), a helper thread calls `unshare(CLONE_NEWNET)`, and the new namespace is
/// bind-mounted onto `/run/netns/<name>`. So `ip -n <name> …` and `ip netns exec <name> …` work on it,
/// a leaked one shows up in `ip netns ls`, and when iproute2 or podman set up `/run/netns` later they
/// find it already done and do not stack a mount over ours. Only the helper thread ever enters the
/// new namespace; the test's own thread stays where it is.
///
/// `lo` is up in a new namespace.
#[derive(Debug)]
pub struct NetNs {
    name: String,
    path: PathBuf,
    /// Keeps the namespace open for [`NetNs::run`] and [`NetNs::command`] even if the mount goes away.
    fd: OwnedFd,
    /// For namespaces this harness made, the `/run/netns` mount their name was mounted in, which
    /// `Drop` unmounts it through even when a later mount over `/run/netns` hides it. `None` for
    /// [`NetNs::open`]ed ones, whose name `Drop` leaves alone.
    mounted_in: Option<File>,
}

impl NetNs {
    /// Creates a namespace named `capture-test-<pid>-<n>` and brings `lo` up in it.
    ///
    /// # Panics
    ///
    /// When the namespace cannot be created or mounted (this needs root), or `ip link set lo up` fails.
    #[must_use]
    pub fn new() -> NetNs {
        let n = NEXT_NETNS.fetch_add(1, Ordering::Relaxed);
        let name = format!("{NETNS_PREFIX}-{}-{n}", process::id());
        let path = Path::new(NETNS_DIR).join(&name);

        // The namespace lives on after the thread that made it, held open by `fd`.
        let fd: OwnedFd =
            host::run_in_scratch_netns(|| Ok::<_, RunError>(File::open("/proc/thread-self/ns/net")))
                .unwrap_or_else(|e| panic!("{}; needs root (CAP_SYS_ADMIN)", chain(&e)))
                .unwrap_or_else(|e| panic!("cannot open the new netns: {e}"))
                .into();

        // Held until the name is mounted, so concurrent NetNs::new and `ip netns add` do not stack
        // /run/netns mounts.
        let lock = share_netns_dir();
        let mounted_in = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
            .open(NETNS_DIR)
            .unwrap_or_else(|e| panic!("cannot open {NETNS_DIR}: {e}"));
        // create_new: a file left by a crashed run whose pid was reused must not be silently shared.
        File::create_new(&path).unwrap_or_else(|e| {
            panic!(
                "cannot create {}: {e}; a leaked namespace? see e2e/README.md",
                path.display()
            )
        });
        let source = format!("/proc/self/fd/{}", fd.as_raw_fd());
        if let Err(e) = mount(
            Some(source.as_str()),
            &path,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        ) {
            let _ = fs::remove_file(&path);
            panic!("cannot bind-mount the new netns onto {}: {e}", path.display());
        }
        drop(lock);

        // From here on Drop cleans up, also when bringing up lo panics.
        let ns = NetNs {
            name,
            path,
            fd,
            mounted_in: Some(mounted_in),
        };
        run_ok(ns.command("ip").args(["link", "set", "lo", "up"]));
        ns
    }

    /// Opens a network namespace made by someone else (a container runtime's `/run/netns/…`,
    /// `/proc/<pid>/ns/net`), to run code, commands and listeners in it like in one of ours.
    ///
    /// `Drop` only closes the descriptor: the name and mount stay its owner's business. While the
    /// `NetNs` lives the namespace itself stays alive, even after its owner removes it, so what
    /// is left in it can still be inspected.
    ///
    /// # Errors
    ///
    /// When `path` cannot be opened, or is not a network namespace.
    pub fn open(path: impl AsRef<Path>) -> io::Result<NetNs> {
        let path = path.as_ref().to_owned();
        let fd: OwnedFd = File::open(&path)?.into();
        // NS_GET_NSTYPE on a file that is no namespace fails with ENOTTY.
        // SAFETY: an ioctl without argument on a descriptor we own.
        let kind = unsafe { libc::ioctl(fd.as_raw_fd(), libc::NS_GET_NSTYPE) };
        if kind == -1 {
            return Err(io::Error::other(format!(
                "{} is not a namespace: {}",
                path.display(),
                io::Error::last_os_error()
            )));
        }
        if kind != libc::CLONE_NEWNET {
            return Err(io::Error::other(format!(
                "{} is not a network namespace",
                path.display()
            )));
        }
        let name = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        Ok(NetNs {
            name,
            path,
            fd,
            mounted_in: None,
        })
    }

    /// The namespace's name, as `ip netns` shows it.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind mount that names the namespace: `/run/netns/<name>`.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on a new thread that has entered this namespace ([`host::run_in`]), and returns
    /// its result.
    ///
    /// Sockets created by `f` belong to this namespace for their whole life, whichever thread uses them
    /// later. A panic in `f` is resumed on the calling thread. `f` keeps the thread's credentials
    /// (the thread goes back to the test's namespace afterwards); [`NetNs::run_as`] runs as
    /// another user.
    ///
    /// # Panics
    ///
    /// When the thread cannot be spawned or cannot enter the namespace, or when `f` panics.
    pub fn run<F, T>(&self, f: F) -> T
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        host::run_in(self.fd.as_fd(), &self.path, || Ok(f())).unwrap_or_else(|e| match e {
            // Already reported by the panic hook on the worker thread: resumed without a second report.
            RunError::Panicked(message) => panic::resume_unwind(Box::new(message)),
            e => panic!("{}", chain(&e)),
        })
    }

    /// Runs `f` as [`NetNs::run`] does, on a thread that has taken `uid`/`gid` first
    /// ([`assume_identity`]), and returns its result.
    ///
    /// That thread is one of its own, started from the namespace's thread and thrown away after
    /// `f`: once its credentials are dropped it could not go back to the test's namespace, and
    /// no other code runs as `uid`. Sockets `f` creates are owned by `uid`.
    ///
    /// # Errors
    ///
    /// When the credentials cannot be taken (without root, `EPERM`), or `f` fails.
    ///
    /// # Panics
    ///
    /// As [`NetNs::run`].
    pub fn run_as<F, T>(&self, uid: u32, gid: u32, f: F) -> io::Result<T>
    where
        F: FnOnce() -> io::Result<T> + Send,
        T: Send,
    {
        self.run(|| {
            thread::scope(|scope| {
                scope
                    .spawn(|| {
                        assume_identity(uid, gid)?;
                        f()
                    })
                    .join()
                    .unwrap_or_else(|payload| panic::resume_unwind(payload))
            })
        })
    }

    /// Returns a [`Command`] for `program` that enters this namespace just before `exec`.
    ///
    /// Unlike `ip netns exec`, it does not remount `/sys` or read `/etc/netns`; it only switches the
    /// network namespace.
    ///
    /// # Panics
    ///
    /// When the namespace descriptor cannot be duplicated for the child.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let fd = self.fd.try_clone().expect("dup the netns descriptor");
        let mut cmd = Command::new(program);
        // Not capture_core::host: it enters on a thread of its own for the length of a closure,
        // but this `Command` is spawned later by the caller, from its own thread and often to
        // outlive the call (listeners, proxies), so the child itself switches between fork and
        // exec.
        // SAFETY: the hook runs in the forked child before exec. It only calls setns(2), which is
        // async-signal-safe, and builds an io::Error from errno, which does not allocate.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) == -1 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }

    /// Runs `ip <args>` in this namespace and returns its stdout.
    ///
    /// # Panics
    ///
    /// When `ip` fails; the panic message carries its stderr.
    pub fn ip(&self, args: &[&str]) -> String {
        run_ok(self.command("ip").args(args))
    }
}

impl Default for NetNs {
    fn default() -> Self {
        NetNs::new()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let Self {
            name,
            path,
            fd: _,
            mounted_in,
        } = self;
        let Some(dir) = mounted_in else {
            return;
        };
        // Drop must not panic (that would abort during unwinding), so problems are only reported.
        // First every mount the name shows (ours, and copies a recursive bind of /run/netns made),
        // then, through the directory it was made in, ours if a later mount over /run/netns hid it.
        let through_dir = PathBuf::from(format!("/proc/self/fd/{}/{name}", dir.as_raw_fd()));
        for target in [path.as_path(), through_dir.as_path()] {
            if let Err(e) = unmount_all(target) {
                eprintln!(
                    "capture-e2e: cannot unmount netns {name} at {}: {e}; see e2e/README.md",
                    target.display()
                );
            }
        }
        match fs::remove_file(&path) {
            Ok(()) => {}
            // Someone ran `ip netns del` on it already.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => eprintln!(
                "capture-e2e: cannot remove {}: {e}; see e2e/README.md",
                path.display()
            ),
        }
    }
}

/// Makes [`NETNS_DIR`] a mount point with shared propagation, as `ip netns add` does, and returns
/// it locked (`flock`, as iproute2 locks it) until the caller has mounted its name.
///
/// On a freshly booted machine `/run/netns` is a plain directory. Whoever makes it a mount point
/// (`ip netns add`, podman) bind-mounts it onto itself recursively, which hides namespaces already
/// mounted in it under the new mount: their names then cannot be removed (`EBUSY`). Shared
/// propagation also lets an unmount in one mount namespace unmount the copies in the others.
///
/// # Panics
///
/// When the directory cannot be created, locked or mounted.
fn share_netns_dir() -> Flock<File> {
    fs::create_dir_all(NETNS_DIR).unwrap_or_else(|e| panic!("cannot create {NETNS_DIR}: {e}"));
    let dir = File::open(NETNS_DIR).unwrap_or_else(|e| panic!("cannot open {NETNS_DIR}: {e}"));
    let lock = Flock::lock(dir, FlockArg::LockExclusive)
        .unwrap_or_else(|(_, e)| panic!("cannot lock {NETNS_DIR}: {e}"));
    let mut bound = false;
    loop {
        let shared = mount(
            None::<&str>,
            NETNS_DIR,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        );
        match shared {
            Ok(()) => return lock,
            // EINVAL: not a mount point yet.
            Err(Errno::EINVAL) if !bound => {
                mount(
                    Some(NETNS_DIR),
                    NETNS_DIR,
                    None::<&str>,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None::<&str>,
                )
                .unwrap_or_else(|e| panic!("cannot bind-mount {NETNS_DIR} onto itself: {e}"));
                bound = true;
            }
            Err(e) => panic!("cannot make {NETNS_DIR} a shared mount: {e}"),
        }
    }
}

/// Unmounts (`MNT_DETACH`, like `ip netns del`) every mount stacked on `target`, until none is left.
///
/// A process still inside the namespace keeps it alive, not its name.
fn unmount_all(target: &Path) -> nix::Result<()> {
    // More than a few stacked mounts means something keeps mounting there; do not spin.
    for _ in 0..16 {
        match umount2(target, MntFlags::MNT_DETACH) {
            Ok(()) => {}
            // Not (or no longer) a mount point, or gone.
            Err(Errno::EINVAL | Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    Err(Errno::EBUSY)
}
