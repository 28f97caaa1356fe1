//! Garbage collection: pods whose network namespace is gone are unenrolled ([`Node::gc`]) at
//! start, every `--gc-interval`, and shortly after a namespace pin disappears from a watched
//! directory (inotify). The kernel tears a namespace down asynchronously, after its last
//! reference goes, so after a deletion gc is retried with backoff until as many pods were
//! reclaimed as pins were deleted, or [`RETRIES`] passes were made (a deleted namespace that
//! was never enrolled is never reclaimed).
//!
//! Each periodic pass also re-checks that the programs are loaded and act on the cgroup,
//! which `/readyz` reports.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use capture_ebpf::{NetnsCookie, Node};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use tokio::io::unix::AsyncFd;
use tokio::time::{Instant, sleep_until};

use crate::state::Agent;

/// The first retry after a deletion; each next one waits twice as long.
const FIRST_RETRY: Duration = Duration::from_millis(50);
/// Passes after a deletion: 50 ms doubling 9 times is about 25 s in all.
const RETRIES: u32 = 10;

/// One garbage collection under the node lock: the pods reclaimed.
///
/// # Errors
/// When the lock cannot be taken or the maps cannot be read or written.
pub fn collect(agent: &Agent) -> Result<Vec<NetnsCookie>, capture_ebpf::Error> {
    let pins = &agent.backend.pins;
    let _lock = pins.lock()?;
    let mut node = Node::open(pins)?;
    node.gc()
}

/// Runs [`collect`] on the blocking pool, logs and counts what it did; returns how many pods
/// it reclaimed.
async fn pass(agent: &Arc<Agent>, why: &'static str) -> usize {
    let worker = Arc::clone(agent);
    let result = tokio::task::spawn_blocking(move || collect(&worker))
        .await
        .unwrap_or_else(|e| {
            Err(capture_ebpf::Error::Io {
                op: "run gc for",
                path: agent.backend.pins.path().to_owned(),
                source: io::Error::other(e.to_string()),
            })
        });
    agent.gc_runs.fetch_add(1, Ordering::Relaxed);
    match result {
        Ok(reclaimed) => {
            for cookie in &reclaimed {
                tracing::info!(
                    netns_cookie = cookie.0,
                    why,
                    "reclaimed a pod whose network namespace is gone"
                );
            }
            agent
                .gc_reclaimed
                .fetch_add(reclaimed.len() as u64, Ordering::Relaxed);
            reclaimed.len()
        }
        Err(e) => {
            agent.gc_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(why, "garbage collection failed: {}", capture_core::chain(&e));
            0
        }
    }
}

/// Collects garbage forever: at once, every `interval`, and after deletions in `dirs`.
pub async fn run(agent: Arc<Agent>, dirs: Vec<PathBuf>, interval: Duration) {
    let mut watcher = match Watcher::new(&dirs) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(
                "cannot watch network namespace directories, gc runs every {interval:?} only: {e}"
            );
            None
        }
    };
    let mut ticks = tokio::time::interval(interval);
    // A slow pass delays the next one rather than making a burst of them.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut retry = Retry::default();
    loop {
        tokio::select! {
            _ = ticks.tick() => {
                pass(&agent, "periodic").await;
                let backend = agent.backend.clone();
                let ready = tokio::task::spawn_blocking(move || backend.ready().map_err(|e| capture_core::chain(&e)))
                    .await
                    .unwrap_or_else(|e| Err(e.to_string()));
                if let Err(reason) = &ready {
                    tracing::warn!("eBPF programs not usable: {reason}");
                }
                agent.set_programs(ready);
            }
            deleted = next_deletions(watcher.as_mut()) => retry.deleted(deleted, Instant::now()),
            () = wait(retry.next) => {
                let reclaimed = pass(&agent, "network namespace deleted").await;
                retry.passed(reclaimed, Instant::now());
            }
        }
    }
}

/// When to collect again after deletions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Retry {
    /// Deleted pins not matched by a reclaimed pod yet.
    pending: usize,
    /// Passes made since the last deletion.
    tries: u32,
    /// The wait before the next pass.
    backoff: Duration,
    /// When the next pass is due; `None`: none is.
    next: Option<Instant>,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            pending: 0,
            tries: 0,
            backoff: FIRST_RETRY,
            next: None,
        }
    }
}

impl Retry {
    /// `count` pins were deleted: a pass soon, and the full number of retries again.
    fn deleted(&mut self, count: usize, now: Instant) {
        if count > 0 {
            self.pending += count;
            self.tries = 0;
            self.backoff = FIRST_RETRY;
            self.next = Some(now + self.backoff);
        }
    }

    /// A pass reclaimed `reclaimed` pods: done when that matches the deletions or the retries
    /// are used up, else again after twice the wait.
    fn passed(&mut self, reclaimed: usize, now: Instant) {
        self.pending = self.pending.saturating_sub(reclaimed);
        self.tries += 1;
        if self.pending == 0 || self.tries >= RETRIES {
            *self = Retry::default();
        } else {
            self.backoff *= 2;
            self.next = Some(now + self.backoff);
        }
    }
}

async fn wait(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn next_deletions(watcher: Option<&mut Watcher>) -> usize {
    match watcher {
        Some(w) => w.deletions().await,
        None => std::future::pending().await,
    }
}

/// The inotify descriptor, for [`AsyncFd`].
struct Fd(Inotify);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// What a watch is for.
#[derive(Debug, Clone)]
enum Watch {
    /// A namespace directory: deletions in it count.
    Dir,
    /// The parent of missing namespace directories, until they appear.
    Parent(Vec<PathBuf>),
}

/// inotify watches on the namespace directories (and on the parents of missing ones).
struct Watcher {
    fd: AsyncFd<Fd>,
    watches: HashMap<WatchDescriptor, Watch>,
}

const DIR_EVENTS: AddWatchFlags = AddWatchFlags::IN_DELETE
    .union(AddWatchFlags::IN_MOVED_FROM)
    .union(AddWatchFlags::IN_DELETE_SELF)
    .union(AddWatchFlags::IN_ONLYDIR);
const PARENT_EVENTS: AddWatchFlags = AddWatchFlags::IN_CREATE
    .union(AddWatchFlags::IN_MOVED_TO)
    .union(AddWatchFlags::IN_ONLYDIR);

impl Watcher {
    fn new(dirs: &[PathBuf]) -> io::Result<Watcher> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        // SAFETY: `Fd` owns the inotify descriptor and always returns that one; it is closed
        // only when the `AsyncFd` (its owner) is dropped.
        let fd = unsafe { AsyncFd::register(Fd(inotify)) }.map_err(io::Error::from)?;
        let mut watcher = Watcher {
            fd,
            watches: HashMap::new(),
        };
        for dir in dirs {
            watcher.watch(dir);
        }
        Ok(watcher)
    }

    /// Watches `dir`, or its parent until it appears.
    fn watch(&mut self, dir: &Path) {
        let inotify = &self.fd.get_ref().0;
        match inotify.add_watch(dir, DIR_EVENTS) {
            Ok(wd) => {
                tracing::info!(dir = %dir.display(), "watching for deleted network namespaces");
                self.watches.insert(wd, Watch::Dir);
            }
            Err(nix::errno::Errno::ENOENT) => {
                let Some(parent) = dir.parent() else { return };
                match inotify.add_watch(parent, PARENT_EVENTS) {
                    Ok(wd) => {
                        tracing::info!(dir = %dir.display(), "network namespace directory missing, watching for it");
                        if let Watch::Parent(dirs) =
                            self.watches.entry(wd).or_insert(Watch::Parent(Vec::new()))
                        {
                            dirs.push(dir.to_owned());
                        }
                    }
                    Err(e) => tracing::warn!(dir = %dir.display(), "cannot watch for the directory: {e}"),
                }
            }
            Err(e) => tracing::warn!(dir = %dir.display(), "cannot watch: {e}"),
        }
    }

    /// Waits for events; returns how many namespace pins were deleted.
    async fn deletions(&mut self) -> usize {
        loop {
            let mut guard = match self.fd.readable().await {
                Ok(guard) => guard,
                Err(e) => {
                    tracing::warn!("inotify failed: {e}");
                    return std::future::pending().await;
                }
            };
            let events = match guard.try_io(|fd| fd.get_ref().0.read_events().map_err(io::Error::from)) {
                Ok(Ok(events)) => events,
                Ok(Err(e)) => {
                    tracing::warn!("cannot read inotify events: {e}");
                    continue;
                }
                Err(_would_block) => continue,
            };
            let mut deleted = 0;
            let mut appeared = Vec::new();
            for event in events {
                match self.watches.get(&event.wd) {
                    Some(Watch::Dir) => {
                        if event
                            .mask
                            .intersects(AddWatchFlags::IN_DELETE | AddWatchFlags::IN_MOVED_FROM)
                        {
                            deleted += 1;
                        }
                        if event.mask.contains(AddWatchFlags::IN_IGNORED) {
                            self.watches.remove(&event.wd);
                        }
                    }
                    Some(Watch::Parent(dirs)) => {
                        let name = event.name.as_deref().map(OsStr::new);
                        appeared.extend(dirs.iter().filter(|d| d.file_name() == name).cloned());
                    }
                    None => {}
                }
            }
            for dir in appeared {
                self.watch(&dir);
            }
            if deleted > 0 {
                return deleted;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_with_backoff_until_every_deletion_is_reclaimed() {
        let now = Instant::now();
        let mut retry = Retry::default();
        retry.deleted(0, now);
        assert_eq!(retry.next, None, "no deletion, no pass");
        retry.deleted(2, now);
        assert_eq!(retry.next, Some(now + FIRST_RETRY));
        retry.passed(0, now);
        assert_eq!(
            retry.next,
            Some(now + 2 * FIRST_RETRY),
            "the namespace is not torn down yet"
        );
        retry.passed(1, now);
        assert_eq!((retry.pending, retry.next), (1, Some(now + 4 * FIRST_RETRY)));
        retry.passed(1, now);
        assert_eq!(retry, Retry::default(), "both reclaimed: done");
    }

    #[test]
    fn gives_up_after_the_bound_and_a_new_deletion_starts_over() {
        let now = Instant::now();
        let mut retry = Retry::default();
        retry.deleted(1, now);
        for _ in 1..RETRIES {
            retry.passed(0, now);
            assert!(retry.next.is_some());
        }
        retry.passed(0, now);
        assert_eq!(
            retry,
            Retry::default(),
            "a namespace never enrolled is given up on"
        );
        retry.deleted(1, now);
        retry.passed(0, now);
        retry.deleted(1, now);
        assert_eq!(
            (retry.pending, retry.tries, retry.next),
            (2, 0, Some(now + FIRST_RETRY))
        );
    }
}
