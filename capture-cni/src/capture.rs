//! Applying, checking and removing capture inside a pod's network namespace, with the same
//! iptables backend as capture-init.

use std::fs;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};

use capture_core::nft::Nftables;
use capture_core::{
    ApplyError, ApplyOptions, Backend, CaptureSpec, Detected, Family, Flavor, FlavorChoice, Iptables,
    Ipv6Mode, Outcome, SystemExec,
};

use crate::conf::{self, NetConf};
use crate::error::Error;
use crate::netns::{NetNs, NsId};
use crate::pod::PodCapture;

/// The lock file `iptables` uses for the namespace `id` (`XTABLES_LOCKFILE`), so that ADDs for
/// different pods never queue on the node's `/run/xtables.lock` (Kuma's idea, Istio's
/// pod-scoped lock).
pub fn lock_file(run_dir: &Path, id: NsId) -> PathBuf {
    capture_core::host::xtables_lock_file(run_dir, id)
}

/// How legacy iptables runs for the namespace `id`: with its own lock file in `run_dir`, or,
/// when `run_dir` cannot be made (a read-only `/run`), with iptables' default lock rather
/// than failing.
fn legacy_exec(run_dir: &Path, id: NsId) -> SystemExec {
    match fs::DirBuilder::new().recursive(true).mode(0o755).create(run_dir) {
        Ok(()) => SystemExec {
            lock_file: Some(lock_file(run_dir, id)),
        },
        Err(e) => {
            tracing::warn!(
                "cannot create {}: {e}; legacy iptables uses its default lock /run/xtables.lock",
                run_dir.display()
            );
            SystemExec::default()
        }
    }
}

/// The backend for the pod's namespace `id`, in the calling thread's namespace: the only
/// place that knows which backend the configuration names. Only legacy iptables takes the
/// xtables lock, so only it gets a lock file; detection only reads rules.
fn pod_backend(conf: &NetConf, id: NsId) -> Result<Box<dyn Backend>, Error> {
    match conf.backend() {
        conf::Backend::Nftables => return Ok(Box::new(Nftables)),
        conf::Backend::Ebpf => return ebpf_backend(conf),
        conf::Backend::Iptables => {}
    }
    let flavor = match conf.capture.iptables_flavor {
        FlavorChoice::Force(flavor) => flavor,
        FlavorChoice::Auto => Iptables::detect(SystemExec::default())
            .map_err(|e| Error::Apply(e.into()))?
            .flavor(),
    };
    let exec = match flavor {
        Flavor::Legacy => legacy_exec(&conf.run_dir, id),
        Flavor::Nft => SystemExec::default(),
    };
    Ok(Box::new(Iptables::new(exec, flavor)))
}

/// How the eBPF backend in a build without it says so.
#[cfg(not(feature = "ebpf"))]
const NO_EBPF: &str = "this capture-cni was built without the eBPF backend; build it with `cargo build -p capture-cni --features ebpf`";

/// The node's eBPF programs under `capture.bpffs`, acting on `capture.cgroup`; capture-cni never
/// loads them (the node agent, or `capture-init ebpf load`, does).
#[cfg(feature = "ebpf")]
fn ebpf(conf: &NetConf) -> capture_ebpf::Ebpf {
    capture_ebpf::Ebpf {
        pins: capture_ebpf::PinDir::new(&conf.capture.bpffs),
        cgroup: conf.capture.cgroup.clone(),
        unload_command: "capture-init ebpf unload",
        load_if_absent: false,
        mount_bpffs: false,
    }
}

#[cfg(feature = "ebpf")]
fn ebpf_backend(conf: &NetConf) -> Result<Box<dyn Backend>, Error> {
    Ok(Box::new(ebpf(conf)))
}

#[cfg(not(feature = "ebpf"))]
fn ebpf_backend(_: &NetConf) -> Result<Box<dyn Backend>, Error> {
    Err(Error::Apply(NO_EBPF.into()))
}

/// The backend the configuration asks for, in the calling thread's namespace.
///
/// # Errors
/// With `iptables_flavor: "auto"`, when neither flavor works.
pub fn backend(flavor: FlavorChoice, exec: SystemExec) -> Result<Iptables<SystemExec>, ApplyError> {
    match flavor {
        FlavorChoice::Auto => Iptables::detect(exec),
        FlavorChoice::Force(flavor) => Ok(Iptables::new(exec, flavor)),
    }
}

/// Whether the pod gets IPv6 capture (see [`Ipv6Mode`]), in the calling thread's (the pod's)
/// namespace.
fn ipv6(conf: &NetConf) -> Result<bool, Error> {
    match conf.capture.ipv6 {
        Ipv6Mode::On => Ok(true),
        Ipv6Mode::Off => Ok(false),
        // Any IPv6 address, prevResult's or the namespace's: one the primary plugin did not
        // report (from a router advertisement) carries traffic all the same.
        Ipv6Mode::Auto => {
            let mut addrs = conf.prev_result_addresses();
            addrs.extend(capture_core::host::addresses().map_err(Error::Addresses)?);
            capture_core::detect_ipv6(&addrs, true).map_err(Error::NoUsableAddress)
        }
        Ipv6Mode::FirstAddress => capture_core::detect_ipv6(
            &capture_core::host::addresses().map_err(Error::Addresses)?,
            conf.capture.dual_stack,
        )
        .map_err(Error::NoUsableAddress),
    }
}

/// The pod's spec, in the calling thread's (the pod's) namespace.
fn pod_spec(conf: &NetConf, capture: &PodCapture) -> Result<CaptureSpec, Error> {
    let detected = Detected {
        ipv6: ipv6(conf)?,
        nameservers: Vec::new(),
    };
    let (spec, warnings) = capture.to_spec(&detected)?;
    for warning in warnings {
        tracing::warn!("{warning}");
    }
    Ok(spec)
}

/// Who a pod is, as the runtime named it: recorded node-side with an eBPF enrollment, where
/// CNI GC finds it by its container id and interface.
#[derive(Debug, Clone, Copy)]
pub struct Attachment<'a> {
    /// `CNI_CONTAINERID`.
    pub container_id: &'a str,
    /// `CNI_IFNAME`.
    pub ifname: &'a str,
    /// `K8S_POD_NAMESPACE`.
    pub pod_namespace: Option<&'a str>,
    /// `K8S_POD_NAME`.
    pub pod_name: Option<&'a str>,
    /// `CNI_NETNS`.
    pub netns: &'a Path,
}

/// ADD on eBPF: the pod enrolled with its [`Attachment`] recorded.
#[cfg(feature = "ebpf")]
fn ebpf_add(conf: &NetConf, spec: &CaptureSpec, who: &Attachment<'_>) -> Result<Outcome, Error> {
    let meta = capture_ebpf::PodMetadata {
        container_id: who.container_id.to_owned(),
        ifname: who.ifname.to_owned(),
        pod_namespace: who.pod_namespace.map(str::to_owned),
        pod_name: who.pod_name.map(str::to_owned),
        netns_path: Some(who.netns.to_owned()),
    };
    ebpf(conf).install_pod(spec, &meta).map_err(Error::Apply)
}

#[cfg(not(feature = "ebpf"))]
fn ebpf_add(_: &NetConf, _: &CaptureSpec, _: &Attachment<'_>) -> Result<Outcome, Error> {
    Err(Error::Apply(NO_EBPF.into()))
}

/// `GC` on eBPF: unenrolls every pod capture-cni enrolled whose attachment (container id,
/// interface) is not in `valid`, then every pod whose network namespace is gone. Without a
/// `valid` list only the latter. Says what it did, for the log.
///
/// # Errors
/// [`Error::Gc`] when the node's maps cannot be read or written.
#[cfg(feature = "ebpf")]
pub fn ebpf_gc(conf: &NetConf, valid: Option<&[conf::Attachment]>) -> Result<String, Error> {
    let valid: Option<std::collections::BTreeSet<(&str, &str)>> = valid.map(|list| {
        list.iter()
            .map(|a| (a.container_id.as_str(), a.ifname.as_str()))
            .collect()
    });
    let backend = ebpf(conf);
    let collected = backend
        .collect(|meta| {
            valid
                .as_ref()
                .is_none_or(|v| v.contains(&(meta.container_id.as_str(), meta.ifname.as_str())))
        })
        .map_err(|e| Error::Gc(e.into()))?;
    let Some(collected) = collected else {
        return Ok(format!(
            "eBPF programs not loaded (nothing under {}), nothing to collect",
            backend.pins.path().display()
        ));
    };
    let unattached: Vec<String> = collected
        .unattached
        .iter()
        .map(|(cookie, meta)| {
            format!(
                "{} {} (pod {}, netns cookie {})",
                meta.container_id,
                meta.ifname,
                meta.pod(),
                cookie.0
            )
        })
        .collect();
    Ok(format!(
        "eBPF: unenrolled {} not in the valid list{}{}; reclaimed {} whose network namespace is gone",
        capture_core::count(unattached.len(), "attachment", "attachments"),
        if unattached.is_empty() { "" } else { ": " },
        unattached.join(", "),
        capture_core::count(collected.gone.len(), "pod", "pods")
    ))
}

/// `DEL` on eBPF when the pod's namespace is gone: unenrolls the pod recorded for the
/// attachment (`container_id`, `ifname`), if any. Says what it did.
///
/// # Errors
/// [`Error::Gc`] when the node's maps cannot be read or written.
#[cfg(feature = "ebpf")]
pub fn ebpf_forget(conf: &NetConf, container_id: &str, ifname: &str) -> Result<Option<String>, Error> {
    let collected = ebpf(conf)
        .forget(container_id, ifname)
        .map_err(|e| Error::Gc(e.into()))?;
    Ok(collected.map(|cookies| {
        format!(
            "eBPF capture of {container_id} {ifname} removed (netns cookie {})",
            cookies
                .iter()
                .map(|c| c.0.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    }))
}

/// `DEL` on eBPF in a build without it: nothing can have been enrolled.
#[cfg(not(feature = "ebpf"))]
pub fn ebpf_forget(_: &NetConf, _: &str, _: &str) -> Result<Option<String>, Error> {
    Ok(None)
}

/// `GC` on eBPF in a build without it: nothing can have been enrolled.
#[cfg(not(feature = "ebpf"))]
pub fn ebpf_gc(_: &NetConf, _: Option<&[conf::Attachment]>) -> Result<String, Error> {
    Ok("this capture-cni was built without the eBPF backend, nothing to collect".to_owned())
}

/// `ADD`: installs the pod's capture. Rules already exactly in place are left as they are;
/// different capture rules make it fail without changing anything.
///
/// # Errors
/// Entering the namespace, reading the pod's addresses, or applying.
pub fn add(ns: &NetNs, conf: &NetConf, capture: &PodCapture, who: &Attachment<'_>) -> Result<Outcome, Error> {
    ns.run(|| {
        let spec = pod_spec(conf, capture)?;
        if conf.backend() == conf::Backend::Ebpf {
            return ebpf_add(conf, &spec, who);
        }
        let backend = pod_backend(conf, ns.id())?;
        backend
            .install(&spec, ApplyOptions::default())
            .map_err(Error::Apply)
    })
}

/// `DEL`: removes the pod's capture (rules in both families, TPROXY routing, `::6`) and the
/// namespace's lock file. Succeeds when nothing is there; returns whether capture was there.
///
/// # Errors
/// Entering the namespace or removing the rules.
pub fn del(ns: &NetNs, conf: &NetConf, capture: &PodCapture) -> Result<bool, Error> {
    let removed = ns.run(|| {
        // The pod's addresses decide only whether ::6 is removed; without them, leave it.
        let detected = Detected {
            ipv6: ipv6(conf).unwrap_or(false),
            nameservers: Vec::new(),
        };
        let (spec, _) = capture.to_spec(&detected)?;
        let backend = pod_backend(conf, ns.id())?;
        let outcome = backend.uninstall(&spec).map_err(Error::Apply)?;
        for warning in &outcome.warnings {
            tracing::warn!("{warning}");
        }
        Ok::<bool, Error>(!outcome.unchanged())
    })?;
    remove_lock_file(&lock_file(&conf.run_dir, ns.id()));
    Ok(removed)
}

fn remove_lock_file(path: &Path) {
    if let Err(e) = capture_core::host::remove_xtables_lock_file(path) {
        tracing::warn!("cannot remove {}: {e}", path.display());
    }
}

/// `CHECK`: compares the pod's rules and routes with what the configuration asks for
/// ([`capture_core::check`]: also foreign rules that switch capture off ahead of ours, and our
/// chains in the other iptables flavour).
///
/// # Errors
/// [`Error::CheckFailed`] listing every difference; entering the namespace or reading the rules.
pub fn check(ns: &NetNs, conf: &NetConf, capture: &PodCapture) -> Result<(), Error> {
    ns.run(|| {
        let spec = pod_spec(conf, capture)?;
        let backend = pod_backend(conf, ns.id())?;
        let differences = backend.check(&spec).map_err(Error::Apply)?;
        if differences.is_empty() {
            Ok(())
        } else {
            Err(Error::CheckFailed { differences })
        }
    })
}

/// `STATUS`: whether the configured backend works on this node, tried in a scratch network
/// namespace so the node's own (possibly very large) rule set is never read. Says what works.
///
/// # Errors
/// [`Error::Unavailable`] when no usable iptables is found, or nf_tables cannot be listed.
pub fn status(conf: &NetConf) -> Result<String, Error> {
    if conf.backend() == conf::Backend::Ebpf {
        return ebpf_status(conf);
    }
    let flavor = conf.capture.iptables_flavor;
    let native = conf.backend() == conf::Backend::Nftables;
    crate::netns::run_in_scratch_netns(move || {
        if native {
            capture_core::nft::current().map_err(|e| Error::Unavailable(e.into()))?;
            return Ok("native nftables".to_owned());
        }
        let backend = backend(flavor, SystemExec::default()).map_err(|e| Error::Unavailable(e.into()))?;
        // A forced flavor is not probed by `backend`; make sure it can read rules.
        backend
            .save(Family::V4)
            .map_err(|e| Error::Unavailable(e.into()))?;
        Ok(format!("iptables {}", backend.flavor().as_str()))
    })
}

/// STATUS on eBPF: ready when the node's programs are loaded and act on the configured cgroup.
#[cfg(feature = "ebpf")]
fn ebpf_status(conf: &NetConf) -> Result<String, Error> {
    let backend = ebpf(conf);
    backend.ready().map_err(|e| Error::Unavailable(e.into()))?;
    Ok(format!("eBPF (programs under {})", backend.pins.path().display()))
}

#[cfg(not(feature = "ebpf"))]
fn ebpf_status(_: &NetConf) -> Result<String, Error> {
    Err(Error::Unavailable(NO_EBPF.into()))
}

/// `GC`: removes lock files no `iptables` holds. They are the only node-side state of the
/// iptables and nftables backends; the rules themselves live and die with each pod's namespace,
/// so there is nothing else to collect for them (the eBPF backend's is [`ebpf_gc`]).
pub fn collect_lock_files(run_dir: &Path) -> usize {
    let Ok(entries) = fs::read_dir(run_dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        let is_lock = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(capture_core::host::is_xtables_lock_file);
        if !is_lock {
            continue;
        }
        let Ok(file) = fs::File::open(&path) else { continue };
        // iptables holds an flock while it works; a file nobody holds is idle.
        if nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).is_ok() {
            remove_lock_file(&path);
            removed += 1;
        }
    }
    removed
}
