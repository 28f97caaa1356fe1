//! The eBPF backend (`--backend ebpf`, built with the `ebpf` feature): choosing capture-ebpf's
//! [`Ebpf`] backend from the flags, and the node commands `capture-init ebpf load|upgrade|unload|gc|stats|pods`.
//!
//! capture-ebpf owns the backend (the pin layout and node lock in `PinDir`, the refusal of
//! programs that do not act on `--cgroup`, the rerun comparison, the messages); this module
//! only picks the directories from the flags.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use capture_ebpf::{Ebpf, Failure, MapPlan, NetnsLink, Node, PinDir};

use crate::cli::{Args, DEFAULT_BPFFS, NodeArgs, NodeCommand, SkMsgFlags};

/// How messages name the command that unloads the programs.
const UNLOAD: &str = "capture-init ebpf unload";

fn fail(e: &Failure) -> ExitCode {
    tracing::error!("{}", capture_core::chain(e));
    ExitCode::from(1)
}

/// The backend `--bpffs` and `--cgroup` describe.
///
/// # Errors
/// A `--cgroup` that is no cgroup v2 directory, when the run would attach to it (not for a dry
/// run, which reads nothing of the host, nor a cleanup, which attaches nothing).
pub fn backend(args: &Args) -> Result<Ebpf, CgroupFlag> {
    if let Some(cgroup) = &args.cgroup
        && !args.dry_run
        && !args.cleanup_only
    {
        check_cgroup(cgroup)?;
    }
    Ok(ebpf(
        args.bpffs.as_deref(),
        args.cgroup.as_deref(),
        args.mount_bpffs,
    ))
}

/// A `--cgroup` the programs cannot be attached to, said as the flag and the path rather than as
/// the syscall that would fail on it (`statfs`, `BPF_LINK_CREATE`).
#[derive(Debug, thiserror::Error)]
#[error("--cgroup {}: {problem}", path.display())]
pub struct CgroupFlag {
    /// The path given.
    path: PathBuf,
    /// What is wrong with it.
    problem: CgroupProblem,
}

/// What is wrong with a `--cgroup` path.
#[derive(Debug, thiserror::Error)]
enum CgroupProblem {
    /// Nothing is there.
    #[error("no such directory")]
    Missing,
    /// A file (such as `cgroup.procs`), or a directory on another file system.
    #[error("not a cgroup v2 directory")]
    NotCgroup2,
    /// It could not be looked at.
    #[error("cannot read it: {0}")]
    Unreadable(std::io::Error),
}

/// Whether `path` is a cgroup v2 directory the programs can be attached to.
fn check_cgroup(path: &Path) -> Result<(), CgroupFlag> {
    let problem = match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => CgroupProblem::Missing,
        Err(e) => CgroupProblem::Unreadable(e),
        Ok(meta) if !meta.is_dir() => CgroupProblem::NotCgroup2,
        Ok(_) => match capture_ebpf::CgroupId::of(path) {
            Ok(_) => return Ok(()),
            Err(capture_ebpf::Error::NotCgroup2 { .. }) => CgroupProblem::NotCgroup2,
            Err(capture_ebpf::Error::Io { source, .. }) => CgroupProblem::Unreadable(source),
            Err(_) => CgroupProblem::NotCgroup2,
        },
    };
    Err(CgroupFlag {
        path: path.to_owned(),
        problem,
    })
}

/// The backend under `bpffs` for reading only (`capture-init status`): it never loads.
pub fn reader(bpffs: &Path) -> Ebpf {
    Ebpf {
        load_if_absent: false,
        ..ebpf(Some(bpffs), None, false)
    }
}

fn ebpf(bpffs: Option<&Path>, cgroup: Option<&Path>, mount_bpffs: bool) -> Ebpf {
    Ebpf {
        pins: PinDir::new(bpffs.unwrap_or(Path::new(DEFAULT_BPFFS))),
        cgroup: cgroup.map(Path::to_owned),
        unload_command: UNLOAD,
        load_if_absent: true,
        mount_bpffs,
    }
}

/// `capture-init ebpf load|upgrade|unload|gc|stats|pods`.
pub fn node(args: NodeArgs) -> ExitCode {
    if let NodeCommand::Load {
        cgroup: Some(cgroup), ..
    }
    | NodeCommand::Upgrade {
        cgroup: Some(cgroup), ..
    } = &args.command
        && let Err(e) = check_cgroup(cgroup)
    {
        tracing::error!("{e}");
        return ExitCode::from(1);
    }
    let result = match args.command {
        NodeCommand::Load {
            cgroup,
            bpffs,
            mount_bpffs,
            sk_msg,
        } => load(cgroup.as_deref(), &bpffs, mount_bpffs, sk_msg),
        NodeCommand::Upgrade {
            cgroup,
            bpffs,
            always,
            sk_msg,
        } => upgrade(cgroup.as_deref(), &bpffs, always, sk_msg),
        NodeCommand::Unload { bpffs } => unload(&bpffs),
        NodeCommand::Pods { bpffs } => pods(&bpffs),
        NodeCommand::Gc { bpffs } => gc(&bpffs),
        NodeCommand::Stats { bpffs } => stats(&bpffs),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn load(cgroup: Option<&Path>, bpffs: &Path, mount_bpffs: bool, sk_msg: SkMsgFlags) -> Result<(), Failure> {
    let backend = ebpf(Some(bpffs), cgroup, mount_bpffs);
    if mount_bpffs {
        backend.pins.mount()?;
    }
    // The node keeps the node lock open_or_load took, for the setting too.
    let (mut node, loaded) = backend.open_or_load()?;
    if let Some(loaded) = &loaded {
        tracing::info!("{loaded}");
    }
    let switched = set_sk_msg(&mut node, sk_msg)?;
    if loaded.is_none() && !switched {
        tracing::info!(
            "eBPF programs already loaded under {}, attached to {}, nothing changed",
            backend.pins.path().display(),
            node.attachment()?
        );
    }
    Ok(())
}

fn upgrade(cgroup: Option<&Path>, bpffs: &Path, always: bool, sk_msg: SkMsgFlags) -> Result<(), Failure> {
    let cgroup = match cgroup {
        Some(cgroup) => cgroup.to_owned(),
        None => capture_ebpf::cgroup2_root()?,
    };
    let pins = PinDir::new(bpffs);
    let upgrade = Node::upgrade(&cgroup, &pins, always)?;
    tracing::info!("{upgrade}");
    if sk_msg_setting(sk_msg).is_some() {
        let _lock = pins.lock()?;
        set_sk_msg(&mut Node::open(&pins)?, sk_msg)?;
    }
    Ok(())
}

/// The setting `--sk-msg` / `--no-sk-msg` ask for; `None` to keep the node's.
fn sk_msg_setting(flags: SkMsgFlags) -> Option<bool> {
    match (flags.sk_msg, flags.no_sk_msg) {
        (true, _) => Some(true),
        (_, true) => Some(false),
        _ => None,
    }
}

/// Applies `--sk-msg` / `--no-sk-msg` to the node and says what changed; whether it changed.
fn set_sk_msg(node: &mut Node, flags: SkMsgFlags) -> Result<bool, Failure> {
    let Some(on) = sk_msg_setting(flags) else {
        return Ok(false);
    };
    let changed = node.set_sk_msg(on)?;
    let state = if on { "on" } else { "off" };
    if changed {
        tracing::info!(
            "sk_msg splicing of app-proxy connections turned {state} (for connections established from now on)"
        );
    } else {
        tracing::info!("sk_msg splicing of app-proxy connections already {state}, nothing changed");
    }
    Ok(changed)
}

fn unload(bpffs: &Path) -> Result<(), Failure> {
    let pins = PinDir::new(bpffs);
    if !pins.is_loaded() {
        tracing::info!(
            "eBPF programs not loaded (nothing under {}), nothing to do",
            pins.path().display()
        );
        return Ok(());
    }
    let _lock = pins.lock()?;
    // Pins of another map layout cannot be read, but can be unloaded: that is the way out.
    let pods = match Node::open(&pins) {
        Ok(node) => {
            let pods = node.pods()?.len();
            node.unload()?;
            pods
        }
        Err(capture_ebpf::Error::Layout { .. }) => {
            capture_ebpf::unload(&pins)?;
            0
        }
        Err(e) => return Err(e.into()),
    };
    tracing::info!(
        "eBPF programs detached and unpinned from {}",
        pins.path().display()
    );
    if pods > 0 {
        let (pods, are) = (
            capture_core::count(pods, "enrolled pod", "enrolled pods"),
            if pods == 1 { "is" } else { "are" },
        );
        tracing::warn!("{pods} {are} no longer captured");
    }
    Ok(())
}

fn gc(bpffs: &Path) -> Result<(), Failure> {
    let pins = PinDir::new(bpffs);
    if !pins.is_loaded() {
        tracing::info!(
            "eBPF programs not loaded (nothing under {}), nothing to reclaim",
            pins.path().display()
        );
        return Ok(());
    }
    let _lock = pins.lock()?;
    let mut node = Node::open(&pins)?;
    let reclaimed = node.gc()?;
    if reclaimed.is_empty() {
        tracing::info!("every enrolled pod's network namespace exists, nothing to reclaim");
    } else {
        let cookies: Vec<String> = reclaimed.iter().map(|c| c.0.to_string()).collect();
        tracing::info!(
            "reclaimed {} whose network namespace is gone (netns {} {})",
            capture_core::count(reclaimed.len(), "pod", "pods"),
            if cookies.len() == 1 { "cookie" } else { "cookies" },
            cookies.join(", ")
        );
    }
    for cookie in node.unverifiable()? {
        tracing::warn!(
            "pod with netns cookie {} has no sk_lookup link pinned, so whether its namespace exists cannot be told; left enrolled",
            cookie.0
        );
    }
    Ok(())
}

fn stats(bpffs: &Path) -> Result<(), Failure> {
    let node = Node::open(&PinDir::new(bpffs))?;
    let stats = node.stats()?;
    let (connections, pairs) = node.connection_entries()?;
    println!("{stats}");
    println!("pods enrolled: {}", node.pods()?.len());
    println!("connections tracked: {connections} by cookie, {pairs} by address pair");
    println!("sk_msg splicing: {}", node.sk_msg()?);
    // What each program has cost: the kernel counts only while kernel.bpf_stats_enabled is 1
    // or someone holds BPF_ENABLE_STATS (which the sysctl does not show), so runs may stay 0.
    for cost in node.program_costs()? {
        println!(
            "program {} instances {} runs {} run_time_ns {} mean_ns {}",
            cost.program,
            cost.instances,
            cost.runs,
            cost.run_time_ns,
            cost.mean_ns()
        );
    }
    Ok(())
}

fn pods(bpffs: &Path) -> Result<(), Failure> {
    let node = Node::open(&PinDir::new(bpffs))?;
    let pods = node.pods()?;
    if pods.is_empty() {
        tracing::info!("no pod is enrolled");
    }
    let listeners = node.inbound_listeners()?;
    for (cookie, _) in pods {
        // A pod unenrolled since the listing is skipped.
        let Some(entries) = node.enrolled(cookie)? else {
            continue;
        };
        println!(
            "netns-cookie {} generation {}",
            cookie.0, entries.config.generation
        );
        let meta = node.metadata(cookie)?;
        let path = meta
            .as_ref()
            .and_then(|m| m.netns_path.as_ref())
            .map(|p| format!(" path {}", p.display()))
            .unwrap_or_default();
        match node.netns_link(cookie)? {
            NetnsLink::Attached { inode } => println!("  netns inode {inode}{path}"),
            NetnsLink::Gone => println!("  netns gone{path} (capture-init ebpf gc reclaims the pod)"),
            NetnsLink::NotPinned => println!("  netns unknown{path} (no sk_lookup link pinned)"),
        }
        if let Some(meta) = &meta {
            println!(
                "  cni container {} ifname {} pod {}",
                meta.container_id,
                meta.ifname,
                meta.pod()
            );
        }
        let families: Vec<&str> = listeners
            .iter()
            .filter(|(c, _)| *c == cookie)
            .map(|(_, family)| {
                if *family == libc::AF_INET6 as u16 {
                    "ipv6"
                } else {
                    "ipv4"
                }
            })
            .collect();
        if families.is_empty() {
            println!("  inbound listener none recorded");
        } else {
            println!("  inbound listener {}", families.join(" "));
        }
        for line in MapPlan::from_entries(&entries).to_string().lines() {
            println!("  {line}");
        }
    }
    Ok(())
}
