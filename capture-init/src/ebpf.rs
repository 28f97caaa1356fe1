//! The eBPF backend (`--backend ebpf`, built with the `ebpf` feature): enrolling the pod's
//! network namespace, and the node commands `capture-init ebpf load|unload|pods`.
//!
//! ```text
//! flags ─> CaptureSpec ─(owner names → ids)─> MapPlan::from_spec   (refused flags fail here, nothing changed)
//!   --dry-run: print the plan
//!   else: mount bpffs if needed ─> lock it ─> programs loaded? acting on --cgroup? else Node::install(--cgroup)
//!         ─> Node::enrolled(cookie) equal to the plan? nothing : Node::enroll (atomic switch)
//! ```
//!
//! Every run that changes the node's programs or maps holds an exclusive `flock` on the bpf
//! filesystem's root directory, so two pods set up at once on a fresh node do not both load
//! the programs.
//!
//! Programs already loaded are used only when they act on the processes of `--cgroup` (its
//! default: the cgroup v2 root), that is when they are attached to it or to one of its
//! ancestors; otherwise the run fails naming both cgroups, and nothing is enrolled. Using them
//! anyway would report capture applied while the pod's connections pass uncaptured.

use std::error::Error as _;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use capture_core::{CaptureSpec, Owner, OwnerGroups};
use capture_ebpf::{AttachedCgroup, MapEntries, MapPlan, NetnsCookie, Node, PodNetns};
use nix::fcntl::{Flock, FlockArg};

use crate::cli::{Args, DEFAULT_BPFFS, Invocation, NodeArgs, NodeCommand};

/// The directory under the bpf filesystem that holds the programs' pins.
const PIN_DIR: &str = "capture";

/// Why an eBPF run failed.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// Planning, loading, attaching or writing maps failed.
    #[error(transparent)]
    Ebpf(#[from] capture_ebpf::Error),
    /// An owner given by name that this system does not know.
    #[error("invalid value {name:?} for {flag}: no such {kind}")]
    UnknownOwner {
        /// The flag or variable.
        flag: &'static str,
        /// The name.
        name: String,
        /// `user` or `group`.
        kind: &'static str,
    },
    /// `::6` could not be put on or taken off `lo`.
    #[error(transparent)]
    Netlink(#[from] capture_core::netlink::NetlinkError),
    /// The programs already loaded are attached to a cgroup that does not hold `--cgroup`.
    #[error(
        "eBPF programs under {} are attached to {attached}, and {} is neither that cgroup nor below it, so its processes would not be captured; unload them first (capture-init ebpf unload --bpffs {}){}",
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
    },
    /// A loaded program's link is attached to no cgroup, so nothing is captured.
    #[error(
        "eBPF program {program} under {} is attached to no cgroup (its link was detached, or its cgroup removed), so nothing is captured; unload the programs (capture-init ebpf unload --bpffs {}) and load them again",
        pin_dir.display(),
        bpffs_of(pin_dir).display()
    )]
    Detached {
        /// The pin directory.
        pin_dir: PathBuf,
        /// The program.
        program: &'static str,
    },
    /// The node lock could not be taken.
    #[error("cannot lock {path}")]
    Lock {
        /// The bpf filesystem's directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
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
    /// `--cgroup PATH`, else the cgroup v2 root.
    fn new(given: Option<&Path>) -> Result<Target, Failure> {
        Ok(match given {
            Some(path) => Target {
                path: path.to_owned(),
                default: false,
            },
            None => Target {
                path: capture_ebpf::cgroup2_root()?,
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

impl Failure {
    /// The message with its causes, one line.
    fn report(&self) -> String {
        let mut text = self.to_string();
        let mut source = self.source();
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        text
    }
}

fn fail(e: &Failure) -> ExitCode {
    eprintln!("capture-init: {}", e.report());
    ExitCode::from(1)
}

/// What a run did to the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Applied,
    Unchanged,
    Updated,
}

/// `--backend ebpf`: enrolls (or with `--cleanup-only` unenrolls) the network namespace this
/// process is in; `--run-validation` follows in the caller.
///
/// # Errors
/// The exit status of a failed run, after printing why.
pub fn run(invocation: &Invocation) -> Result<(), ExitCode> {
    let Invocation { args, spec, .. } = invocation;
    // A dry run changes nothing, whatever else is asked (it runs outside the pod's namespace).
    if args.cleanup_only && !args.dry_run {
        return cleanup(args, spec).map_err(|e| fail(&e));
    }
    // Plan first: a flag the eBPF backend refuses fails before anything is loaded.
    let plan = numeric_owners(spec)
        .and_then(|spec| Ok(MapPlan::from_spec(&spec)?))
        .map_err(|e| fail(&e))?;
    if args.dry_run {
        print!("{plan}");
        return Ok(());
    }
    if args.skip_rule_apply {
        return Ok(());
    }
    let bpffs = bpffs(args.bpffs.as_deref());
    let pin_dir = bpffs.join(PIN_DIR);
    let outcome = (|| {
        capture_ebpf::mount_bpffs(&bpffs)?;
        let _lock = lock(&bpffs)?;
        let mut node = open_or_load(args.cgroup.as_deref(), &pin_dir)?;
        if spec.ipv6 {
            // The proxy's IPv6 inbound passthrough source, as with iptables; before the pod's
            // addresses are read, so that a rerun sees the same ones.
            capture_core::netlink::ensure_ipv6_passthrough_address()?;
        }
        let pod = PodNetns::current()?;
        let outcome = match node.enrolled(pod.cookie)? {
            Some(current) if current == planned(&plan, &pod, current.config.generation) => Outcome::Unchanged,
            Some(_) => {
                node.enroll(&pod, &plan)?;
                Outcome::Updated
            }
            None => {
                node.enroll(&pod, &plan)?;
                Outcome::Applied
            }
        };
        Ok::<_, Failure>((outcome, pod.cookie))
    })();
    let (outcome, cookie) = outcome.map_err(|e| fail(&e))?;
    let what = match outcome {
        Outcome::Applied => "applied",
        Outcome::Unchanged => "already in place, nothing changed",
        Outcome::Updated => "updated",
    };
    eprintln!(
        "capture-init: eBPF capture {what} (netns cookie {}, programs under {})",
        cookie.0,
        pin_dir.display()
    );
    Ok(())
}

/// The entries enrolling `pod` with `plan` writes, sorted as [`Node::enrolled`] returns them.
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

/// `--cleanup-only`: the pod's entries are removed, so its connections are no longer captured,
/// and `::6` is taken off `lo` when IPv6 is on (as with iptables).
fn cleanup(args: &Args, spec: &CaptureSpec) -> Result<(), Failure> {
    unenroll(args)?;
    if spec.ipv6 {
        capture_core::netlink::remove_ipv6_passthrough_address()?;
    }
    Ok(())
}

fn unenroll(args: &Args) -> Result<(), Failure> {
    let bpffs = bpffs(args.bpffs.as_deref());
    let pin_dir = bpffs.join(PIN_DIR);
    if !loaded(&pin_dir) {
        eprintln!(
            "capture-init: eBPF capture not loaded (nothing under {}), nothing to remove",
            pin_dir.display()
        );
        return Ok(());
    }
    let _lock = lock(&bpffs)?;
    let mut node = Node::open(&pin_dir)?;
    let cookie = NetnsCookie::current()?;
    if node.unenroll(cookie)? {
        eprintln!("capture-init: eBPF capture removed (netns cookie {})", cookie.0);
    } else {
        eprintln!(
            "capture-init: eBPF capture not enrolled (netns cookie {}), nothing to remove",
            cookie.0
        );
    }
    Ok(())
}

/// `capture-init ebpf load|unload|pods`.
pub fn node(args: NodeArgs) -> ExitCode {
    let result = match args.command {
        NodeCommand::Load { cgroup, bpffs } => load(cgroup.as_deref(), &bpffs),
        NodeCommand::Unload { bpffs } => unload(&bpffs),
        NodeCommand::Pods { bpffs } => pods(&bpffs),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn load(cgroup: Option<&Path>, bpffs: &Path) -> Result<(), Failure> {
    capture_ebpf::mount_bpffs(bpffs)?;
    let _lock = lock(bpffs)?;
    let pin_dir = bpffs.join(PIN_DIR);
    if loaded(&pin_dir) {
        let node = open_for(&Target::new(cgroup)?, &pin_dir)?;
        eprintln!(
            "capture-init: eBPF programs already loaded under {}, attached to {}, nothing changed",
            pin_dir.display(),
            node.attachment()?
        );
        return Ok(());
    }
    open_or_load(cgroup, &pin_dir)?;
    Ok(())
}

fn unload(bpffs: &Path) -> Result<(), Failure> {
    let pin_dir = bpffs.join(PIN_DIR);
    if !loaded(&pin_dir) {
        eprintln!(
            "capture-init: eBPF programs not loaded (nothing under {}), nothing to do",
            pin_dir.display()
        );
        return Ok(());
    }
    let _lock = lock(bpffs)?;
    let node = Node::open(&pin_dir)?;
    let pods = node.pods()?.len();
    node.uninstall()?;
    eprintln!(
        "capture-init: eBPF programs detached and unpinned from {}",
        pin_dir.display()
    );
    if pods > 0 {
        eprintln!("capture-init: warning: {pods} enrolled pod(s) are no longer captured");
    }
    Ok(())
}

fn pods(bpffs: &Path) -> Result<(), Failure> {
    let node = Node::open(&bpffs.join(PIN_DIR))?;
    for (cookie, _) in node.pods()? {
        // A pod unenrolled since the listing is skipped.
        let Some(entries) = node.enrolled(cookie)? else {
            continue;
        };
        println!(
            "netns-cookie {} generation {}",
            cookie.0, entries.config.generation
        );
        for line in MapPlan::from_entries(&entries).to_string().lines() {
            println!("  {line}");
        }
    }
    Ok(())
}

fn bpffs(given: Option<&Path>) -> PathBuf {
    given.map_or_else(|| PathBuf::from(DEFAULT_BPFFS), Path::to_owned)
}

/// Whether programs are pinned under `pin_dir` (their link pins are there).
fn loaded(pin_dir: &Path) -> bool {
    pin_dir.join("links").is_dir()
}

/// The node's programs under `pin_dir`, loaded and attached to `cgroup` (default: the cgroup
/// v2 root) first if they are not there; if they are, they must act on `cgroup`. Call with the
/// node lock held.
fn open_or_load(cgroup: Option<&Path>, pin_dir: &Path) -> Result<Node, Failure> {
    let target = Target::new(cgroup)?;
    if loaded(pin_dir) {
        return open_for(&target, pin_dir);
    }
    let node = Node::install(&target.path, pin_dir)?;
    eprintln!(
        "capture-init: eBPF programs loaded, attached to {} and pinned under {}",
        target.path.display(),
        pin_dir.display()
    );
    Ok(node)
}

/// [`Node::open_for`], its refusals worded with the flags that fix them.
fn open_for(target: &Target, pin_dir: &Path) -> Result<Node, Failure> {
    Node::open_for(&target.path, pin_dir).map_err(|e| match e {
        capture_ebpf::Error::AttachedElsewhere {
            pin_dir, attached, ..
        } => Failure::OtherCgroup {
            pin_dir,
            attached,
            target: target.clone(),
        },
        capture_ebpf::Error::Detached { pin_dir, program } => Failure::Detached { pin_dir, program },
        e => e.into(),
    })
}

/// Takes the node lock: an exclusive `flock` on the bpf filesystem's directory, released when
/// the returned value is dropped (or the process ends).
fn lock(bpffs: &Path) -> Result<Flock<File>, Failure> {
    let err = |source| Failure::Lock {
        path: bpffs.to_owned(),
        source,
    };
    let dir = File::open(bpffs).map_err(err)?;
    Flock::lock(dir, FlockArg::LockExclusive).map_err(|(_, errno)| err(errno.into()))
}

/// The spec with every owner given by name replaced by its id, as iptables resolves `-u`/`-g`
/// names when it loads the rules; the eBPF programs compare numbers.
fn numeric_owners(spec: &CaptureSpec) -> Result<CaptureSpec, Failure> {
    let mut spec = spec.clone();
    for uid in &mut spec.owner.uids {
        resolve(uid, "-u/--proxy-uid", true)?;
    }
    for gid in &mut spec.owner.gids {
        resolve(gid, "-g/--proxy-gid", false)?;
    }
    let (groups, var) = match &mut spec.outbound.owner_groups {
        OwnerGroups::All { except } => (except, "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE"),
        OwnerGroups::Only(groups) => (groups, "ISTIO_OUTBOUND_OWNER_GROUPS"),
    };
    for group in groups {
        resolve(group, var, false)?;
    }
    Ok(spec)
}

fn resolve(owner: &mut Owner, flag: &'static str, user: bool) -> Result<(), Failure> {
    let Owner::Name(name) = owner else {
        return Ok(());
    };
    let id = if user {
        nix::unistd::User::from_name(name)
            .ok()
            .flatten()
            .map(|u| u.uid.as_raw())
    } else {
        nix::unistd::Group::from_name(name)
            .ok()
            .flatten()
            .map(|g| g.gid.as_raw())
    };
    match id {
        Some(id) => {
            *owner = Owner::Id(id);
            Ok(())
        }
        None => Err(Failure::UnknownOwner {
            flag,
            name: name.clone(),
            kind: if user { "user" } else { "group" },
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_names_become_ids() {
        let mut spec = CaptureSpec::sidecar();
        spec.owner.uids = vec![Owner::Name("root".into()), Owner::Id(1337)];
        spec.owner.gids = vec![Owner::Name("root".into())];
        spec.outbound.owner_groups = OwnerGroups::All {
            except: vec![Owner::Name("root".into())],
        };
        let spec = numeric_owners(&spec).unwrap();
        assert_eq!(spec.owner.uids, [Owner::Id(0), Owner::Id(1337)]);
        assert_eq!(spec.owner.gids, [Owner::Id(0)]);
        assert_eq!(
            spec.outbound.owner_groups,
            OwnerGroups::All {
                except: vec![Owner::Id(0)]
            }
        );
        let mut unknown = CaptureSpec::sidecar();
        unknown.owner.gids = vec![Owner::Name("no-such-group-capture".into())];
        assert_eq!(
            numeric_owners(&unknown).unwrap_err().report(),
            "invalid value \"no-such-group-capture\" for -g/--proxy-gid: no such group"
        );
    }
}
