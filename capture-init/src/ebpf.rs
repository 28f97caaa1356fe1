//! The eBPF backend (`--backend ebpf`, built with the `ebpf` feature): enrolling the pod's
//! network namespace, and the node commands `capture-init ebpf load|unload|pods`.
//!
//! ```text
//! flags ─> CaptureSpec ─resolve_owners─> MapPlan::from_spec   (refused flags fail here, nothing changed)
//!   --dry-run: print the plan
//!   else: PinDir::mount ─> Node::open_or_load(--cgroup) ─> PodNetns::set_up ─> Node::apply ─> print the Change
//! ```
//!
//! capture-ebpf owns the backend's invariants (the pin layout and node lock in `PinDir`, the
//! refusal of programs that do not act on `--cgroup`, the rerun comparison); this module
//! chooses the directories from the flags and words outcomes and refusals with the flags
//! that fix them.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use capture_core::CaptureSpec;
use capture_ebpf::{AttachedCgroup, Change, MapPlan, NetnsCookie, Node, PinDir, PodNetns};

use crate::cli::{Args, DEFAULT_BPFFS, Invocation, NodeArgs, NodeCommand};

/// Why an eBPF run failed.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// Planning, loading, attaching or writing maps failed.
    #[error(transparent)]
    Ebpf(#[from] capture_ebpf::Error),
    /// `::6` could not be taken off `lo`.
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
        capture_core::chain(self)
    }
}

fn fail(e: &Failure) -> ExitCode {
    eprintln!("capture-init: {}", e.report());
    ExitCode::from(1)
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
    let plan = capture_ebpf::resolve_owners(spec)
        .and_then(|spec| MapPlan::from_spec(&spec))
        .map_err(|e| fail(&e.into()))?;
    if args.dry_run {
        print!("{plan}");
        return Ok(());
    }
    if args.skip_rule_apply {
        return Ok(());
    }
    let pins = pins(args.bpffs.as_deref());
    let outcome = (|| {
        pins.mount()?;
        let (mut node, _) = open_or_load(args.cgroup.as_deref(), &pins)?;
        let pod = PodNetns::set_up(&plan)?;
        Ok::<_, Failure>((node.apply(&pod, &plan)?, pod.cookie))
    })();
    let (change, cookie) = outcome.map_err(|e| fail(&e))?;
    eprintln!(
        "capture-init: eBPF capture {} (netns cookie {}, programs under {})",
        change.describe(),
        cookie.0,
        pins.path().display()
    );
    Ok(())
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
    let pins = pins(args.bpffs.as_deref());
    if !pins.is_loaded() {
        eprintln!(
            "capture-init: eBPF capture not loaded (nothing under {}), nothing to remove",
            pins.path().display()
        );
        return Ok(());
    }
    let _lock = pins.lock()?;
    let mut node = Node::open(&pins)?;
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
    let pins = PinDir::new(bpffs);
    pins.mount()?;
    let (node, change) = open_or_load(cgroup, &pins)?;
    if change == Change::Unchanged {
        eprintln!(
            "capture-init: eBPF programs already loaded under {}, attached to {}, nothing changed",
            pins.path().display(),
            node.attachment()?
        );
    }
    Ok(())
}

fn unload(bpffs: &Path) -> Result<(), Failure> {
    let pins = PinDir::new(bpffs);
    if !pins.is_loaded() {
        eprintln!(
            "capture-init: eBPF programs not loaded (nothing under {}), nothing to do",
            pins.path().display()
        );
        return Ok(());
    }
    let _lock = pins.lock()?;
    let node = Node::open(&pins)?;
    let pods = node.pods()?.len();
    node.unload()?;
    eprintln!(
        "capture-init: eBPF programs detached and unpinned from {}",
        pins.path().display()
    );
    if pods > 0 {
        eprintln!("capture-init: warning: {pods} enrolled pod(s) are no longer captured");
    }
    Ok(())
}

fn pods(bpffs: &Path) -> Result<(), Failure> {
    let node = Node::open(&PinDir::new(bpffs))?;
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

/// The pin directory under `--bpffs` (or its default).
fn pins(given: Option<&Path>) -> PinDir {
    PinDir::new(given.unwrap_or(Path::new(DEFAULT_BPFFS)))
}

/// [`Node::open_or_load`] for `--cgroup` (default: the cgroup v2 root), saying when it loaded
/// the programs and wording its refusals with the flags that fix them.
fn open_or_load(cgroup: Option<&Path>, pins: &PinDir) -> Result<(Node, Change), Failure> {
    let target = Target::new(cgroup)?;
    let (node, change) = Node::open_or_load(&target.path, pins).map_err(|e| match e {
        capture_ebpf::Error::AttachedElsewhere {
            pin_dir, attached, ..
        } => Failure::OtherCgroup {
            pin_dir,
            attached,
            target: target.clone(),
        },
        capture_ebpf::Error::Detached { pin_dir, program } => Failure::Detached { pin_dir, program },
        e => e.into(),
    })?;
    if change == Change::Applied {
        eprintln!(
            "capture-init: eBPF programs loaded, attached to {} and pinned under {}",
            target.path.display(),
            pins.path().display()
        );
    }
    Ok((node, change))
}
