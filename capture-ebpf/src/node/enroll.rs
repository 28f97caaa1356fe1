//! Enrolling pods: [`Node::apply`] (enroll unless already exactly so), [`Node::enroll`],
//! [`Node::unenroll`], and the pods' inbound listeners.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::Path;

use aya::maps::lpm_trie::Key;
use capture_ebpf_common::{
    AF_INET, AF_INET6, CIDRS, INBOUND_LISTENERS, LOOKUP_NETNS, ListenerKey, OWNERS, POD_CONFIG, POD_STATS,
    PORTS, SK_LOOKUP_PROGS, STAT_SLOTS,
};

use super::{Node, ignore_missing, is_missing, keys_of, map_error};
use crate::netns::in_netns;
use crate::pin_dir::{create_dir, detach_pinned};
use crate::sys::{AttachType, link_create, obj_get, obj_pin};
use crate::{Change, Error, MapEntries, MapPlan, NetnsCookie, PodNetns};

/// Whether a pod is enrolled, and as what ([`Node::enrollment`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enrollment {
    /// The pod is not enrolled.
    Absent,
    /// The pod is enrolled exactly as the plan says, at this generation.
    Equal,
    /// The pod is enrolled with other entries (other flags, or its addresses changed).
    Differs,
    /// The pod's entries are the plan's, but its `sk_lookup` stub is not attached (its link
    /// pin is gone, and the link with it): its inbound connections are not captured.
    Unattached,
}

impl Node {
    /// Enrolls a pod unless it is enrolled exactly as `plan` says already: the entries in
    /// force ([`Node::enrolled`]) are compared with what enrolling would write at that
    /// generation, the pod's current addresses included. Equal means nothing is written and
    /// the generation does not move. Call it in the pod's network namespace, as
    /// [`Node::enroll`]; [`Node::apply_netns`] takes the namespace as a descriptor.
    ///
    /// # Errors
    /// As [`Node::enroll`].
    pub fn apply(&mut self, pod: &PodNetns, plan: &MapPlan) -> Result<Change, Error> {
        check_netns(pod, NetnsCookie::current()?)?;
        self.apply_with(pod, plan, |node| node.enroll(pod, plan))
    }

    /// [`Node::apply`] for the network namespace `netns` (a descriptor of `/run/netns/<name>`
    /// or `/proc/<pid>/ns/net`), from any namespace.
    ///
    /// # Examples
    /// What a CNI plugin does on ADD, from the node's namespace:
    /// ```no_run
    /// use std::fs::File;
    /// use std::os::fd::AsFd;
    /// use std::path::Path;
    /// use capture_core::CaptureSpec;
    /// use capture_ebpf::{MapPlan, Node, PinDir, PodNetns};
    ///
    /// let pins = PinDir::new(Path::new("/sys/fs/bpf"));
    /// pins.mount()?;
    /// let (mut node, _) = Node::open_or_load(&capture_ebpf::cgroup2_root()?, &pins)?;
    /// let plan = MapPlan::from_spec(&capture_ebpf::resolve_owners(&CaptureSpec::sidecar())?)?;
    /// let netns = File::open("/var/run/netns/cni-1234").expect("the pod's netns");
    /// let pod = PodNetns::set_up_netns(netns.as_fd(), &plan)?;
    /// let change = node.apply_netns(netns.as_fd(), &pod, &plan)?;
    /// # Ok::<(), capture_ebpf::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`Node::enroll_netns`].
    pub fn apply_netns(
        &mut self,
        netns: BorrowedFd<'_>,
        pod: &PodNetns,
        plan: &MapPlan,
    ) -> Result<Change, Error> {
        check_netns(pod, in_netns(netns, NetnsCookie::current)?)?;
        self.apply_with(pod, plan, |node| node.enroll_checked(netns, pod, plan))
    }

    fn apply_with(
        &mut self,
        pod: &PodNetns,
        plan: &MapPlan,
        enroll: impl FnOnce(&mut Node) -> Result<(), Error>,
    ) -> Result<Change, Error> {
        let change = match self.enrollment(pod, plan)? {
            Enrollment::Equal => return Ok(Change::Unchanged),
            Enrollment::Differs | Enrollment::Unattached => Change::Updated,
            Enrollment::Absent => Change::Applied,
        };
        enroll(self)?;
        Ok(change)
    }

    /// Whether `pod` is enrolled exactly as `plan` says: the entries in force
    /// ([`Node::enrolled`]) compared with what enrolling would write at their generation, the
    /// pod's current addresses included, and its `sk_lookup` stub attached.
    ///
    /// # Errors
    /// [`Error::Map`] when the maps cannot be read.
    pub fn enrollment(&self, pod: &PodNetns, plan: &MapPlan) -> Result<Enrollment, Error> {
        Ok(match self.enrolled(pod.cookie)? {
            Some(current) if current == planned(plan, pod, current.config.generation) => {
                if self.inbound_attached(pod.cookie) {
                    Enrollment::Equal
                } else {
                    Enrollment::Unattached
                }
            }
            Some(_) => Enrollment::Differs,
            None => Enrollment::Absent,
        })
    }

    /// How `pod`'s entries in force differ from what enrolling `plan` would write, one line
    /// per map entry (as `--dry-run` prints them) that only one side has; empty when equal or
    /// not enrolled.
    ///
    /// # Errors
    /// [`Error::Map`] when the maps cannot be read.
    pub fn entry_differences(&self, pod: &PodNetns, plan: &MapPlan) -> Result<Vec<String>, Error> {
        let Some(current) = self.enrolled(pod.cookie)? else {
            return Ok(Vec::new());
        };
        let wanted = planned(plan, pod, current.config.generation);
        let here = MapPlan::from_entries(&current).to_string();
        let want = MapPlan::from_entries(&wanted).to_string();
        let mut differences: Vec<String> = here
            .lines()
            .filter(|l| !want.lines().any(|w| w == *l))
            .map(|l| format!("enrolled {l} is not in the configuration"))
            .collect();
        differences.extend(
            want.lines()
                .filter(|w| !here.lines().any(|l| l == *w))
                .map(|w| format!("the configuration's {w} is not enrolled")),
        );
        Ok(differences)
    }

    /// Enrolls a pod, or replaces its configuration: its connections are captured as `plan`
    /// says from the moment this returns. Call it in the pod's network namespace (the calling
    /// thread's); [`Node::enroll_netns`] takes the namespace as a descriptor instead.
    ///
    /// The first enrollment attaches the pod's `sk_lookup` stub to the namespace (inbound
    /// capture): a few instructions that hand the pod's cookie to the node's `sk_lookup`
    /// program, loaded once with the others. Then the new entries are written under the next
    /// generation, the pod's [`PodConfig`](capture_ebpf_common::PodConfig) is switched to it in one map update, and the
    /// previous generation's entries are removed: a connection sees either the old or the new
    /// configuration, never a mix. Last, if no inbound listener of the pod is recorded yet, a
    /// proxy already listening on the inbound port is looked for (its socket is taken from its
    /// process with `pidfd_getfd(2)`, 5.6) and recorded; one that listens later is recorded by
    /// the programs.
    ///
    /// # Errors
    /// [`Error::NetnsMismatch`] when the calling thread is not in `pod`'s network namespace;
    /// [`Error::Map`] when a map is full or cannot be written (the new generation's entries
    /// are removed again and the pod keeps its previous configuration); the errors of loading
    /// and attaching the `sk_lookup` program; [`Error::Io`] when the namespace's socket tables
    /// cannot be read in the search for a listening proxy (the new configuration is in force
    /// then, and enrolling again finishes the search).
    ///
    /// # Minimum kernel version
    /// 5.15 (see [`probe`](crate::probe)).
    pub fn enroll(&mut self, pod: &PodNetns, plan: &MapPlan) -> Result<(), Error> {
        let path = Path::new("/proc/thread-self/ns/net");
        let netns = File::open(path).map_err(|source| Error::Io {
            op: "open",
            path: path.to_owned(),
            source,
        })?;
        check_netns(pod, NetnsCookie::current()?)?;
        self.enroll_checked(netns.as_fd(), pod, plan)
    }

    /// [`Node::enroll`] for the network namespace `netns` (a descriptor of `/run/netns/<name>`
    /// or `/proc/<pid>/ns/net`), from any namespace.
    ///
    /// # Errors
    /// As [`Node::enroll`]: [`Error::NetnsMismatch`] when `netns` is not `pod`'s namespace.
    pub fn enroll_netns(
        &mut self,
        netns: BorrowedFd<'_>,
        pod: &PodNetns,
        plan: &MapPlan,
    ) -> Result<(), Error> {
        check_netns(pod, in_netns(netns, NetnsCookie::current)?)?;
        self.enroll_checked(netns, pod, plan)
    }

    /// [`Node::enroll_netns`] once `netns` is known to be `pod`'s.
    fn enroll_checked(&mut self, netns: BorrowedFd<'_>, pod: &PodNetns, plan: &MapPlan) -> Result<(), Error> {
        let cookie = pod.cookie.0;
        let attached = self.attach_inbound(netns, pod.cookie)?;
        let previous = self.config(pod.cookie)?.map(|c| c.generation);
        let generation = match previous {
            Some(g) => g.wrapping_add(1).max(1),
            None => 1,
        };
        let entries = plan
            .clone()
            .with_local_addrs(&pod.local_addrs)
            .entries(cookie, generation);
        let counters = match previous {
            Some(_) => Ok(()),
            None => self.create_pod_stats(cookie),
        };
        let written = counters.and_then(|()| self.write_entries(&entries));
        let switched = written.and_then(|()| {
            self.pod_config
                .insert(cookie, entries.config, 0)
                .map_err(map_error(POD_CONFIG, "insert"))
        });
        if let Err(e) = switched {
            let _ = self.remove_entries(cookie, |g| g == generation);
            if previous.is_none() {
                let _ = ignore_missing(self.pod_stats.remove(&cookie));
            }
            if attached {
                let _ = detach_pinned(&self.pins.inbound_link(pod.cookie));
            }
            return Err(e);
        }
        self.remove_entries(cookie, |g| g != generation)?;
        // A proxy listening from now on is recorded by sockops; one that listened before is
        // found and recorded here.
        if !self.inbound_listeners()?.iter().any(|(c, _)| *c == pod.cookie) {
            for adopted in crate::adopt::listeners(netns, entries.config.inbound_port)? {
                self.register_inbound_listener(pod.cookie, adopted.socket.as_fd())?;
            }
        }
        Ok(())
    }

    /// Creates the pod's zeroed [`POD_STATS`] entry unless it has one (the programs only add to
    /// entries that exist).
    pub(super) fn create_pod_stats(&mut self, cookie: u64) -> Result<(), Error> {
        let cpus = aya::util::nr_cpus().map_err(|(_, source)| Error::Io {
            op: "read",
            path: "/sys/devices/system/cpu/possible".into(),
            source,
        })?;
        let zero =
            aya::maps::PerCpuValues::try_from(vec![[0; STAT_SLOTS as usize]; cpus]).map_err(|source| {
                Error::Io {
                    op: "make per-CPU values for",
                    path: self.pins.map(POD_STATS),
                    source,
                }
            })?;
        // BPF_NOEXIST: counters a pod already has are kept.
        match self
            .pod_stats
            .insert(cookie, zero, u64::from(aya_obj::generated::BPF_NOEXIST))
        {
            Err(aya::maps::MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EEXIST) => {
                Ok(())
            }
            other => other.map_err(map_error(POD_STATS, "insert")),
        }
    }

    /// Attaches the pod's `sk_lookup` stub (its cookie, then a tail call into the node's
    /// program: `stub`) to `netns` and pins its link, unless it is there already. Returns
    /// whether it attached one.
    fn attach_inbound(&self, netns: BorrowedFd<'_>, cookie: NetnsCookie) -> Result<bool, Error> {
        let path = self.pins.inbound_link(cookie);
        if path.exists() {
            return Ok(false);
        }
        let open = |name| {
            let pin = self.pins.map(name);
            obj_get(&pin).map_err(|source| match source.kind() {
                io::ErrorKind::NotFound => Error::NotLoaded {
                    path: self.pins.path().to_owned(),
                },
                _ => Error::Io {
                    op: "open pinned map",
                    path: pin,
                    source,
                },
            })
        };
        let (lookup_netns, programs) = (open(LOOKUP_NETNS)?, open(SK_LOOKUP_PROGS)?);
        let fd = super::stub::load(cookie, lookup_netns.as_fd(), programs.as_fd())?;
        let link =
            link_create(fd.as_fd(), netns, AttachType::BPF_SK_LOOKUP).map_err(|source| Error::Syscall {
                call: "bpf(BPF_LINK_CREATE)",
                source,
            })?;
        create_dir(&self.pins.inbound())?;
        // If pinning fails, dropping `link` (the only reference) detaches the program.
        match obj_pin(link.as_fd(), &path) {
            Ok(()) => Ok(true),
            // Another enrollment of the same pod attached and pinned its stub first.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(source) => Err(Error::Io {
                op: "pin link",
                path,
                source,
            }),
        }
    }

    /// Whether the pod's `sk_lookup` stub is attached (its link is pinned).
    pub fn inbound_attached(&self, cookie: NetnsCookie) -> bool {
        self.pins.inbound_link(cookie).exists()
    }

    /// Hands the proxy's listening socket `listener` to the programs as `pod`'s inbound
    /// listener, replacing the one recorded for its family.
    ///
    /// Rarely needed: a proxy that starts listening on the inbound port after enrollment is
    /// recorded by the sockops program at `listen()`, and enrolling looks for one that was
    /// already listening in a process it can see.
    ///
    /// # Errors
    /// [`Error::Syscall`] when the socket's address cannot be read; [`Error::Map`] when the
    /// socket is not a listening TCP socket (the kernel refuses it) or the map is full.
    pub fn register_inbound_listener(
        &mut self,
        cookie: NetnsCookie,
        listener: BorrowedFd<'_>,
    ) -> Result<(), Error> {
        let addr: nix::sys::socket::SockaddrStorage = nix::sys::socket::getsockname(listener.as_raw_fd())
            .map_err(|e| Error::Syscall {
                call: "getsockname",
                source: e.into(),
            })?;
        let family = if addr.as_sockaddr_in6().is_some() {
            AF_INET6
        } else {
            AF_INET
        };
        let key = ListenerKey {
            netns: cookie.0,
            family,
            _pad: [0; 6],
        };
        self.inbound_listeners
            .insert(key, listener.as_raw_fd(), 0)
            .map_err(|source| Error::Map {
                map: INBOUND_LISTENERS,
                op: "insert",
                source,
            })
    }

    /// The pods with a recorded inbound listener, with its family (`AF_INET` or `AF_INET6`).
    ///
    /// # Errors
    /// [`Error::Map`] when the map cannot be read.
    pub fn inbound_listeners(&self) -> Result<Vec<(NetnsCookie, u16)>, Error> {
        let mut keys: Vec<(NetnsCookie, u16)> = keys_of(self.inbound_listeners.keys(), INBOUND_LISTENERS)?
            .into_iter()
            .map(|k| (NetnsCookie(k.netns), k.family))
            .collect();
        keys.sort_unstable();
        Ok(keys)
    }

    /// Stops capturing a pod's connections and removes its entries: its configuration first
    /// (every program then leaves the pod alone), then its `sk_lookup` link, its owner, port
    /// and CIDR entries, its recorded inbound listeners and its metadata. Returns whether it was enrolled.
    /// Works from any network namespace, also after the pod's is gone.
    ///
    /// # Errors
    /// [`Error::Map`] when a map cannot be read or written; [`Error::Syscall`] or [`Error::Io`]
    /// when the link cannot be detached or its pin removed.
    pub fn unenroll(&mut self, cookie: NetnsCookie) -> Result<bool, Error> {
        Ok(self.unenroll_all(&[cookie])?.first().copied().unwrap_or(false))
    }

    /// [`Node::unenroll`] of several pods, their entries removed in one pass over each map
    /// (a pass over a full LPM trie costs as much for one pod as for many). Says per pod
    /// whether it was enrolled.
    pub(super) fn unenroll_all(&mut self, cookies: &[NetnsCookie]) -> Result<Vec<bool>, Error> {
        let mut enrolled = Vec::with_capacity(cookies.len());
        for &cookie in cookies {
            enrolled.push(match self.pod_config.remove(&cookie.0) {
                Ok(()) => true,
                Err(e) if is_missing(&e) => false,
                Err(source) => {
                    return Err(Error::Map {
                        map: POD_CONFIG,
                        op: "remove",
                        source,
                    });
                }
            });
            // The program passes everything from here on; then it goes.
            detach_pinned(&self.pins.inbound_link(cookie))?;
        }
        let netns: std::collections::BTreeSet<u64> = cookies.iter().map(|c| c.0).collect();
        self.remove_entries_where(|n, _| netns.contains(&n))?;
        for &cookie in cookies {
            for family in [AF_INET, AF_INET6] {
                let key = ListenerKey {
                    netns: cookie.0,
                    family,
                    _pad: [0; 6],
                };
                ignore_missing(self.inbound_listeners.remove(&key)).map_err(|source| Error::Map {
                    map: INBOUND_LISTENERS,
                    op: "remove",
                    source,
                })?;
            }
            ignore_missing(self.pod_stats.remove(&cookie.0)).map_err(map_error(POD_STATS, "remove"))?;
        }
        self.remove_metadata(cookies)?;
        Ok(enrolled)
    }

    /// Unenrolls every pod whose network namespace is gone (deleted without `--cleanup-only`
    /// or CNI DEL): the kernel detaches a pod's `sk_lookup` link when its namespace goes, so a
    /// pinned link attached to no namespace marks the pod's entries as garbage. Returns the
    /// reclaimed pods. A pod whose link pin is missing is left alone (its namespace cannot be
    /// told), and reported by [`Node::unverifiable`]. Metadata of pods not enrolled goes too.
    ///
    /// # Errors
    /// When the maps or a link cannot be read or the entries removed.
    pub fn gc(&mut self) -> Result<Vec<NetnsCookie>, Error> {
        let mut gone = Vec::new();
        for (cookie, _) in self.pods()? {
            if self.netns_of(cookie)? == Some(None) {
                gone.push(cookie);
            }
        }
        if !gone.is_empty() {
            self.unenroll_all(&gone)?;
        }
        self.remove_orphan_metadata()?;
        Ok(gone)
    }

    /// Enrolled pods whose `sk_lookup` link pin is missing, so [`Node::gc`] cannot tell whether
    /// their namespace exists.
    ///
    /// # Errors
    /// When the maps cannot be read.
    pub fn unverifiable(&self) -> Result<Vec<NetnsCookie>, Error> {
        let mut found = Vec::new();
        for (cookie, _) in self.pods()? {
            if self.netns_of(cookie)?.is_none() {
                found.push(cookie);
            }
        }
        Ok(found)
    }

    /// The inode of the network namespace a pod's `sk_lookup` link is attached to: `None` when
    /// the link pin is missing, `Some(None)` when the link is attached to no namespace (gone).
    pub(super) fn netns_of(&self, cookie: NetnsCookie) -> Result<Option<Option<u32>>, Error> {
        let path = self.pins.inbound_link(cookie);
        let link = match obj_get(&path) {
            Ok(link) => link,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(Error::Io {
                    op: "open pinned link",
                    path,
                    source,
                });
            }
        };
        let info = crate::sys::link_info(link.as_fd()).map_err(|source| Error::Io {
            op: "read link info of",
            path,
            source,
        })?;
        Ok(Some(info.netns()))
    }

    fn write_entries(&mut self, entries: &MapEntries) -> Result<(), Error> {
        for key in &entries.owners {
            self.owners
                .insert(key, 1, 0)
                .map_err(map_error(OWNERS, "insert"))?;
        }
        for (bits, key) in &entries.ports {
            let key = Key::new(*bits, *key);
            self.ports
                .insert(&key, 1, 0)
                .map_err(map_error(PORTS, "insert"))?;
        }
        for (bits, key) in &entries.cidrs {
            let key = Key::new(*bits, *key);
            self.cidrs
                .insert(&key, 1, 0)
                .map_err(map_error(CIDRS, "insert"))?;
        }
        Ok(())
    }

    /// Removes the pod's owner, port and CIDR entries whose generation matches.
    fn remove_entries(&mut self, netns: u64, generation: impl Fn(u32) -> bool) -> Result<(), Error> {
        self.remove_entries_where(|n, g| n == netns && generation(g))
    }

    /// Removes the owner, port and CIDR entries whose (netns cookie, generation) `doomed`
    /// picks: one pass over each map.
    fn remove_entries_where(&mut self, doomed: impl Fn(u64, u32) -> bool) -> Result<(), Error> {
        let remove_err = |map| map_error(map, "remove");
        for key in keys_of(self.owners.keys(), OWNERS)? {
            if doomed(key.netns, key.generation) {
                ignore_missing(self.owners.remove(&key)).map_err(remove_err(OWNERS))?;
            }
        }
        for key in keys_of(self.ports.keys(), PORTS)? {
            let data = key.data();
            if doomed(data.netns, data.generation) {
                ignore_missing(self.ports.remove(&key)).map_err(remove_err(PORTS))?;
            }
        }
        for key in keys_of(self.cidrs.keys(), CIDRS)? {
            let data = key.data();
            if doomed(data.netns, data.generation) {
                ignore_missing(self.cidrs.remove(&key)).map_err(remove_err(CIDRS))?;
            }
        }
        Ok(())
    }
}

/// The entries enrolling `pod` with `plan` writes at `generation`, sorted as
/// [`Node::enrolled`] returns them.
fn planned(plan: &MapPlan, pod: &PodNetns, generation: u32) -> MapEntries {
    let mut entries = plan
        .clone()
        .with_local_addrs(&pod.local_addrs)
        .entries(pod.cookie.0, generation);
    entries.owners.sort_unstable();
    entries.ports.sort_unstable();
    entries.cidrs.sort_unstable();
    entries
}

/// [`Error::NetnsMismatch`] unless `found` is `pod`'s namespace cookie.
fn check_netns(pod: &PodNetns, found: NetnsCookie) -> Result<(), Error> {
    if found == pod.cookie {
        Ok(())
    } else {
        Err(Error::NetnsMismatch {
            pod: pod.cookie,
            found,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netns_mismatch_names_both_cookies() {
        let e = Error::NetnsMismatch {
            pod: NetnsCookie(7),
            found: NetnsCookie(9),
        };
        assert_eq!(
            e.to_string(),
            "the network namespace to enroll (cookie 9) is not the pod's (cookie 7); \
             enroll from inside the pod's namespace"
        );
    }
}
