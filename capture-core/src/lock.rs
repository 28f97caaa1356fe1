//! One capture run at a time per network namespace.
//!
//! Every run reads the namespace's rules, compares them with its configuration, applies, and
//! may roll back: two runs interleaving those steps destroy each other's capture (the loser's
//! rollback restores a snapshot taken before the winner applied). [`NetnsLock`] serialises the
//! whole sequence.
//!
//! The lock is an `flock` on the network namespace's own nsfs inode (`/proc/thread-self/ns/net`,
//! or a `/run/netns/…` bind mount of it): every process that opens the namespace, in any mount
//! namespace or container, opens the same inode. So capture-init in an init container and
//! capture-cni on the node exclude each other without a shared directory, no lock file is ever
//! created or left behind, and a read-only `/run` cannot get in the way.
//!
//! The descriptor is deliberately inherited by the `iptables-restore` children: if the run is
//! killed while a restore is still committing, the lock stays held until that child is done, so
//! the next run never reads a half-written state.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg, OFlag};
use nix::sys::stat::Mode;

/// How long a run waits for another one in the same namespace (as `iptables --wait 30`).
pub const LOCK_WAIT: Duration = Duration::from_secs(30);

/// Why the namespace lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// The namespace file could not be opened or locked.
    #[error("cannot lock network namespace {}", path.display())]
    Io {
        /// The namespace file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Another run held it for too long.
    #[error(
        "another capture run in network namespace {} still holds its lock after {}s; retry when it has finished",
        path.display(), waited.as_secs()
    )]
    Busy {
        /// The namespace file.
        path: PathBuf,
        /// How long this run waited.
        waited: Duration,
    },
}

/// An exclusive lock on a network namespace, released on drop (and when every child that
/// inherited it has exited).
#[derive(Debug)]
pub struct NetnsLock {
    _lock: Flock<File>,
}

impl NetnsLock {
    /// Locks the calling thread's network namespace, waiting up to [`LOCK_WAIT`].
    ///
    /// # Errors
    /// [`LockError::Busy`] when another run holds it that long; [`LockError::Io`] otherwise.
    pub fn current() -> Result<Self, LockError> {
        Self::path("/proc/thread-self/ns/net", LOCK_WAIT)
    }

    /// Locks the network namespace at `path` (an nsfs file), waiting up to `wait`.
    ///
    /// # Errors
    /// As [`NetnsLock::current`].
    pub fn path(path: impl AsRef<Path>, wait: Duration) -> Result<Self, LockError> {
        let path = path.as_ref();
        let io_error = |source: io::Error| LockError::Io {
            path: path.to_owned(),
            source,
        };
        // No O_CLOEXEC: the restore children inherit the lock (see the module docs).
        let fd = nix::fcntl::open(path, OFlag::O_RDONLY, Mode::empty()).map_err(|e| io_error(e.into()))?;
        let mut file = File::from(fd);
        let started = Instant::now();
        let mut waited = false;
        loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => {
                    if waited {
                        tracing::debug!("got the network namespace's lock after {:?}", started.elapsed());
                    }
                    return Ok(Self { _lock: lock });
                }
                Err((back, nix::Error::EWOULDBLOCK)) if started.elapsed() < wait => {
                    if !waited {
                        tracing::debug!(
                            "another capture run holds the network namespace's lock; waiting up to {wait:?}"
                        );
                        waited = true;
                    }
                    file = back;
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err((_, nix::Error::EWOULDBLOCK)) => {
                    return Err(LockError::Busy {
                        path: path.to_owned(),
                        waited: started.elapsed(),
                    });
                }
                Err((_, e)) => return Err(io_error(e.into())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_waits_and_gives_up_naming_the_namespace() {
        let _held = NetnsLock::current().expect("lock our own namespace");
        // Another open file description of the same namespace inode, as another process has.
        let err = std::thread::spawn(|| NetnsLock::path("/proc/self/ns/net", Duration::from_millis(30)))
            .join()
            .unwrap()
            .unwrap_err();
        assert!(matches!(err, LockError::Busy { .. }), "{err:?}");
        assert!(
            err.to_string()
                .starts_with("another capture run in network namespace /proc/self/ns/net"),
            "{err}"
        );
    }
}
