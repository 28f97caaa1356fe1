//! The eBPF backend behind capture-core's [`Backend`] seam: what capture-init's
//! `--backend ebpf` and capture-cni drive, with no eBPF code of their own.
//!
//! ```text
//! install:   resolve_owners ─> MapPlan::from_spec        (refused flags fail here, nothing changed)
//!            PinDir::mount ─> Node::open_or_load(cgroup) ─> PodNetns::set_up ─> Node::apply
//! check:     Node::open ─> Node::enrollment
//! uninstall: Node::unenroll, and ::6 off lo with IPv6
//! install_pod: install, plus Node::set_metadata (capture-cni's ADD: container id, ifname, pod)
//! collect:   node lock ─> Node::unenroll_unless(attachment kept) ─> Node::gc   (CNI GC)
//! forget:    node lock ─> Node::unenroll_unless(not this attachment)          (CNI DEL, netns gone)
//! ```

use std::path::{Path, PathBuf};

use capture_core::{ApplyOptions, Backend, BackendError, CaptureSpec, Change, Outcome, Step};

use crate::{AttachedCgroup, Enrollment, Error, MapPlan, NetnsCookie, Node, PinDir, PodMetadata, PodNetns};

/// Why an eBPF run failed, worded with the front end's commands that fix it.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// Planning, loading, attaching or writing maps failed.
    #[error(transparent)]
    Ebpf(#[from] Error),
    /// `::6` could not be taken off `lo`.
    #[error(transparent)]
    Netlink(#[from] capture_core::netlink::NetlinkError),
    /// The programs already loaded are attached to a cgroup that does not hold the target.
    #[error(
        "eBPF programs under {} are attached to {attached}, and {} is neither that cgroup nor below it, so its processes would not be captured; unload them first ({unload} --bpffs {}){}",
        pin_dir.display(),
        target.describe(),
        bpffs_of(pin_dir).display(),
        attached.path.as_ref().map(|p| format!(" or pass --cgroup {}", p.display())).unwrap_or_default()
    )]
    OtherCgroup {
        /// The pin directory.
        pin_dir: PathBuf,
        /// Where the programs are attached.
        attached: AttachedCgroup,
        /// The cgroup the run was for.
        target: Target,
        /// The command that unloads the programs.
        unload: &'static str,
    },
    /// The node's programs are not loaded, and this front end does not load them (capture-cni:
    /// the node agent, or `capture-init ebpf load`, does).
    #[error(
        "eBPF programs are not loaded under {} (the node agent loads them, or run capture-init ebpf load --bpffs {}); nothing was enrolled",
        pin_dir.display(),
        bpffs_of(pin_dir).display()
    )]
    NotLoaded {
        /// The pin directory.
        pin_dir: PathBuf,
    },
    /// A loaded program's link is attached to no cgroup, so nothing is captured.
    #[error(
        "eBPF program {program} under {} is attached to no cgroup (its link was detached, or its cgroup removed), so nothing is captured; unload the programs ({unload} --bpffs {}) and load them again",
        pin_dir.display(),
        bpffs_of(pin_dir).display()
    )]
    Detached {
        /// The pin directory.
        pin_dir: PathBuf,
        /// The program.
        program: &'static str,
        /// The command that unloads the programs.
        unload: &'static str,
    },
}

/// The cgroup v2 directory a run is for: `--cgroup`, or its default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The directory.
    pub path: PathBuf,
    /// Whether it is the default (no `--cgroup` given).
    pub default: bool,
}

impl Target {
    /// `given`, else the cgroup v2 root.
    ///
    /// # Errors
    /// When no cgroup v2 hierarchy is mounted.
    pub fn new(given: Option<&Path>) -> Result<Target, Error> {
        Ok(match given {
            Some(path) => Target {
                path: path.to_owned(),
                default: false,
            },
            None => Target {
                path: crate::cgroup2_root()?,
                default: true,
            },
        })
    }

    /// How a message names it.
    fn describe(&self) -> String {
        if self.default {
            format!("the cgroup v2 root {} (--cgroup's default)", self.path.display())
        } else {
            format!("--cgroup {}", self.path.display())
        }
    }
}

/// The bpf filesystem a pin directory is in.
fn bpffs_of(pin_dir: &Path) -> &Path {
    pin_dir.parent().unwrap_or(pin_dir)
}

/// What CNI GC ([`Ebpf::collect`]) unenrolled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Collected {
    /// Pods whose attachment the runtime no longer names, with what was recorded for them.
    pub unattached: Vec<(NetnsCookie, PodMetadata)>,
    /// Pods whose network namespace is gone.
    pub gone: Vec<NetnsCookie>,
}

/// The eBPF backend: the node's programs under `pins`, acting on `cgroup`.
#[derive(Debug, Clone)]
pub struct Ebpf {
    /// Where the programs and maps are pinned.
    pub pins: PinDir,
    /// The cgroup v2 directory the programs act on (`None`: the cgroup v2 root).
    pub cgroup: Option<PathBuf>,
    /// The front end's command that unloads the programs, for messages
    /// (`capture-init ebpf unload`).
    pub unload_command: &'static str,
    /// Whether `install` mounts bpffs and loads the programs when none are pinned
    /// (capture-init), or requires them loaded (capture-cni, where the node agent owns them).
    pub load_if_absent: bool,
    /// Whether `install` mounts a bpf filesystem on the pins' parent when none is there; else
    /// such a path is refused ([`Error::NotBpffs`]), so a typo never makes a second program set.
    pub mount_bpffs: bool,
}

impl Ebpf {
    /// The plan for `spec`: owner names resolved, flags the programs cannot enforce refused.
    ///
    /// # Errors
    /// A flag the programs cannot enforce, or an owner name that does not resolve.
    pub fn plan(spec: &CaptureSpec) -> Result<MapPlan, Error> {
        MapPlan::from_spec(&crate::resolve_owners(spec)?)
    }

    /// [`Node::open_or_load`] for the target cgroup, with its refusals worded with the flags
    /// and commands that fix them, and the step that says when the programs were loaded.
    ///
    /// # Errors
    /// As [`Node::open_or_load`].
    pub fn open_or_load(&self) -> Result<(Node, Option<Step>), Failure> {
        let target = Target::new(self.cgroup.as_deref())?;
        let unload = self.unload_command;
        let (node, change) = Node::open_or_load(&target.path, &self.pins).map_err(|e| match e {
            Error::AttachedElsewhere {
                pin_dir, attached, ..
            } => Failure::OtherCgroup {
                pin_dir,
                attached,
                target: target.clone(),
                unload,
            },
            Error::Detached { pin_dir, program } => Failure::Detached {
                pin_dir,
                program,
                unload,
            },
            e => e.into(),
        })?;
        let loaded = (change == Change::Applied).then(|| Step {
            change,
            message: format!(
                "eBPF programs loaded, attached to {} and pinned under {}",
                target.path.display(),
                self.pins.path().display()
            ),
        });
        Ok((node, loaded))
    }

    /// [`Backend::install`] for a pod enrolled by a CNI plugin: the pod's [`PodMetadata`] is
    /// recorded with its enrollment ([`Node::set_metadata`]), so that CNI GC
    /// ([`Ebpf::collect`]) finds it by its attachment. Call it in the pod's network namespace.
    ///
    /// # Errors
    /// As [`Backend::install`], and [`Error::MetadataTooLong`] before anything is changed.
    pub fn install_pod(&self, spec: &CaptureSpec, meta: &PodMetadata) -> Result<Outcome, BackendError> {
        let plan = Ebpf::plan(spec)?;
        meta.to_value()?;
        Ok(self.enroll(&plan, Some(meta))?)
    }

    /// CNI GC: unenrolls every pod a CNI plugin enrolled ([`Ebpf::install_pod`]) whose
    /// attachment `keep` does not keep, then every pod whose network namespace is gone
    /// ([`Node::gc`]). `None` when the programs are not loaded (nothing to collect).
    ///
    /// # Errors
    /// When the node lock cannot be taken or the maps read or written.
    pub fn collect(&self, keep: impl Fn(&PodMetadata) -> bool) -> Result<Option<Collected>, Failure> {
        if !self.pins.is_loaded() {
            return Ok(None);
        }
        let _lock = self.pins.lock()?;
        let mut node = Node::open(&self.pins)?;
        let unattached = node.unenroll_unless(keep)?;
        let gone = node.gc()?;
        Ok(Some(Collected { unattached, gone }))
    }

    /// CNI DEL without the pod's namespace: unenrolls the pods recorded
    /// ([`Ebpf::install_pod`]) for the attachment `container_id`, `ifname`. `None` when none
    /// is, or the programs are not loaded.
    ///
    /// # Errors
    /// When the node lock cannot be taken or the maps read or written.
    pub fn forget(&self, container_id: &str, ifname: &str) -> Result<Option<Vec<NetnsCookie>>, Failure> {
        if !self.pins.is_loaded() {
            return Ok(None);
        }
        let _lock = self.pins.lock()?;
        let mut node = Node::open(&self.pins)?;
        let removed = node.unenroll_unless(|m| m.container_id != container_id || m.ifname != ifname)?;
        Ok((!removed.is_empty()).then(|| removed.into_iter().map(|(cookie, _)| cookie).collect()))
    }

    fn enroll(&self, plan: &MapPlan, meta: Option<&PodMetadata>) -> Result<Outcome, Failure> {
        if !self.load_if_absent && !self.pins.is_loaded() {
            return Err(Failure::NotLoaded {
                pin_dir: self.pins.path().to_owned(),
            });
        }
        if self.mount_bpffs {
            self.pins.mount()?;
        }
        let (mut node, loaded) = self.open_or_load()?;
        if loaded.is_none() {
            tracing::debug!(pins = %self.pins.path().display(), "eBPF programs already loaded, using them");
        }
        let pod = PodNetns::set_up(plan)?;
        let change = node.apply(&pod, plan)?;
        if change == Change::Unchanged {
            tracing::debug!(
                netns_cookie = pod.cookie.0,
                "the pod's map entries are as configured"
            );
        } else {
            tracing::info!(
                "eBPF map entries written ({}, netns cookie {}):\n{}",
                change.describe(),
                pod.cookie.0,
                capture_core::logged::Bounded(&plan.to_string())
            );
        }
        if let Some(meta) = meta
            && let Err(e) = node.set_metadata(pod.cookie, meta)
        {
            // A pod enrolled by this call is not left enrolled without its metadata.
            if change == Change::Applied {
                let _ = node.unenroll(pod.cookie);
            }
            return Err(e.into());
        }
        let mut steps: Vec<Step> = loaded.into_iter().collect();
        steps.push(Step {
            change,
            message: format!(
                "eBPF capture {} (netns cookie {}, programs under {})",
                change.describe(),
                pod.cookie.0,
                self.pins.path().display()
            ),
        });
        Ok(Outcome {
            steps,
            warnings: Vec::new(),
        })
    }

    fn unenroll(&self, spec: &CaptureSpec) -> Result<Outcome, Failure> {
        let step = if self.pins.is_loaded() {
            let _lock = self.pins.lock()?;
            let mut node = Node::open(&self.pins)?;
            let cookie = NetnsCookie::current()?;
            if node.unenroll(cookie)? {
                Step {
                    change: Change::Removed,
                    message: format!("eBPF capture removed (netns cookie {})", cookie.0),
                }
            } else {
                Step {
                    change: Change::NothingToRemove,
                    message: format!(
                        "eBPF capture not enrolled (netns cookie {}), nothing to remove",
                        cookie.0
                    ),
                }
            }
        } else {
            Step {
                change: Change::NothingToRemove,
                message: format!(
                    "eBPF capture not loaded (nothing under {}), nothing to remove",
                    self.pins.path().display()
                ),
            }
        };
        // `::6` goes whatever the flags say (cleanup removes what any configuration added),
        // as with the netfilter backends; a namespace without IPv6 has none.
        match capture_core::netlink::remove_ipv6_passthrough_address() {
            Err(e) if spec.ipv6 || !matches!(e.raw_os_error(), Some(libc::EAFNOSUPPORT | libc::ENODEV)) => {
                return Err(e.into());
            }
            _ => {}
        }
        Ok(Outcome {
            steps: vec![step],
            warnings: Vec::new(),
        })
    }

    /// The calling thread's network namespace's cookie and map entries, when it is enrolled
    /// (`None` also when the programs are not loaded). Reads only; takes no lock.
    ///
    /// # Errors
    /// When the pinned maps or the namespace's cookie cannot be read.
    pub fn enrolled_entries(&self) -> Result<Option<(NetnsCookie, crate::MapEntries)>, Failure> {
        if !self.pins.is_loaded() {
            return Ok(None);
        }
        let node = Node::open(&self.pins)?;
        let cookie = NetnsCookie::current()?;
        Ok(node.enrolled(cookie)?.map(|entries| (cookie, entries)))
    }

    /// Whether the node's programs are loaded and act on the target cgroup: what a front end
    /// that does not load them (capture-cni's STATUS) reports as ready.
    ///
    /// # Errors
    /// [`Failure::NotLoaded`], or why the pinned programs cannot be used.
    pub fn ready(&self) -> Result<(), Failure> {
        if !self.pins.is_loaded() {
            return Err(Failure::NotLoaded {
                pin_dir: self.pins.path().to_owned(),
            });
        }
        let target = Target::new(self.cgroup.as_deref())?;
        Node::open_for(&target.path, &self.pins)?;
        Ok(())
    }

    fn differences(&self, plan: &MapPlan) -> Result<Vec<String>, Failure> {
        if !self.pins.is_loaded() {
            return Ok(vec![format!(
                "eBPF programs are not loaded (nothing under {})",
                self.pins.path().display()
            )]);
        }
        let target = Target::new(self.cgroup.as_deref())?;
        let node = Node::open_for(&target.path, &self.pins)?;
        let pod = PodNetns::current()?;
        let cookie = pod.cookie.0;
        Ok(match node.enrollment(&pod, plan)? {
            Enrollment::Equal => Vec::new(),
            Enrollment::Absent => vec![format!("eBPF capture is not enrolled (netns cookie {cookie})")],
            Enrollment::Unattached => vec![format!(
                "the pod's sk_lookup program is not attached (no link pinned at {}), so its inbound connections are not captured (netns cookie {cookie})",
                self.pins.inbound_link(pod.cookie).display()
            )],
            Enrollment::Differs => std::iter::once(format!(
                "eBPF capture is enrolled with another configuration (netns cookie {cookie})"
            ))
            .chain(node.entry_differences(&pod, plan)?)
            .collect(),
        })
    }
}

impl Backend for Ebpf {
    fn dry_run(&self, spec: &CaptureSpec) -> Result<String, BackendError> {
        Ok(Ebpf::plan(spec)?.to_string())
    }

    /// Rerunning with other flags moves the pod to its next generation in one map update (no
    /// gap), so `options` change nothing here.
    fn install(&self, spec: &CaptureSpec, _options: ApplyOptions) -> Result<Outcome, BackendError> {
        // Plan first: a flag the eBPF backend refuses fails before anything is loaded.
        let plan = Ebpf::plan(spec)?;
        Ok(self.enroll(&plan, None)?)
    }

    fn check(&self, spec: &CaptureSpec) -> Result<Vec<String>, BackendError> {
        let plan = Ebpf::plan(spec)?;
        Ok(self.differences(&plan)?)
    }

    fn uninstall(&self, spec: &CaptureSpec) -> Result<Outcome, BackendError> {
        Ok(self.unenroll(spec)?)
    }

    /// The pod's map entries cleanup would delete (as `--dry-run` prints a plan), after a
    /// `# unenroll netns cookie N` line; `::6` when it is on `lo`.
    fn cleanup_dry_run(&self, _spec: &CaptureSpec) -> String {
        let mut out = match self.enrolled_entries() {
            Ok(Some((cookie, entries))) => {
                format!(
                    "# unenroll netns cookie {}\n{}",
                    cookie.0,
                    MapPlan::from_entries(&entries)
                )
            }
            Ok(None) => "# this network namespace is not enrolled, nothing to unenroll\n".to_owned(),
            Err(e) => format!(
                "# cannot read the pod's enrollment ({}); cleanup deletes this network namespace's \
                 entries from the node's maps (capture-init ebpf pods lists them) and its sk_lookup link\n",
                capture_core::chain(&e)
            ),
        };
        if capture_core::netlink::ipv6_passthrough_address_present().unwrap_or(false) {
            out.push_str("# then: remove ::6/128 from lo\n");
        }
        out
    }
}
