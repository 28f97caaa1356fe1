//! Carrying out an invocation.

use std::ffi::OsString;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use capture_core::host::{self, NetNs, NsId, RunError};
use capture_core::{ApplyOptions, Iptables, Restore, SystemExec, plan};

use crate::cli::{self, Args, Backend, Invocation, NodeArgs, Parsed};
use crate::validate;

/// Exit status when validation finds that redirection does not work (Istio's).
const VALIDATION_FAILED: u8 = 126;

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("capture-init: {message}");
    ExitCode::from(1)
}

/// Runs the command and returns its exit status: 0 success, 1 error, 126 validation failure.
pub fn main(argv: impl IntoIterator<Item = OsString>) -> ExitCode {
    let args = match cli::parse(argv) {
        Ok(Parsed::Info(text)) => {
            println!("{}", text.trim_end());
            return ExitCode::SUCCESS;
        }
        Ok(Parsed::Node(node)) => return node_command(node),
        Ok(Parsed::Run(args)) => args,
        Err(e) => return fail(e),
    };
    match args.network_namespace.clone() {
        // The work runs on a thread that enters the namespace (the host layer's NetNs::run),
        // so the process itself never leaves its own.
        Some(path) if !args.dry_run => {
            let entered = NetNs::open(&path).map_err(|e| e.to_string()).and_then(|ns| {
                ns.run(|| Ok::<_, RunError>(resolve_and_run(args)))
                    .map_err(|e| error_chain(&e))
            });
            entered.unwrap_or_else(|e| {
                fail(format_args!(
                    "cannot enter network namespace {}: {e}",
                    path.display()
                ))
            })
        }
        _ => resolve_and_run(args),
    }
}

/// Resolves the configuration (in the pod's namespace: IPv6 detection reads its addresses) and
/// carries it out on the chosen backend.
fn resolve_and_run(args: Box<Args>) -> ExitCode {
    let invocation = match cli::resolve(*args) {
        Ok(invocation) => invocation,
        Err(e) => return fail(e),
    };
    for warning in &invocation.warnings {
        eprintln!("capture-init: warning: {warning}");
    }
    match invocation.args.backend {
        Backend::Iptables => run(&invocation),
        Backend::Ebpf => run_ebpf(&invocation),
    }
}

#[cfg(feature = "ebpf")]
fn node_command(node: NodeArgs) -> ExitCode {
    crate::ebpf::node(node)
}

#[cfg(not(feature = "ebpf"))]
fn node_command(_: NodeArgs) -> ExitCode {
    // cli::parse refuses the node commands in a build without the eBPF backend.
    fail(cli::CliError::Unsupported(cli::NO_EBPF))
}

#[cfg(feature = "ebpf")]
fn run_ebpf(invocation: &Invocation) -> ExitCode {
    if let Err(status) = crate::ebpf::run(invocation) {
        return status;
    }
    let Invocation { args, spec, .. } = invocation;
    if args.run_validation && !args.dry_run && !args.cleanup_only {
        return validation(spec, args);
    }
    ExitCode::SUCCESS
}

#[cfg(not(feature = "ebpf"))]
fn run_ebpf(_: &Invocation) -> ExitCode {
    // cli::parse refuses --backend ebpf in a build without it.
    fail(cli::CliError::Unsupported(cli::NO_EBPF))
}

/// A [`RunError`] with its causes, as the old in-process `setns` reported them.
fn error_chain(e: &RunError) -> String {
    match e {
        RunError::Setns { source, .. } => source.to_string(),
        other => other.to_string(),
    }
}

/// In CNI mode every pod gets its own xtables lock file, so that concurrent pod setups never
/// queue on the node's `/run/xtables.lock` (Kuma's idea; Istio's pod-scoped lock).
fn pod_lock_file(args: &Args) -> Option<PathBuf> {
    if !args.cni_mode {
        return None;
    }
    Some(host::xtables_lock_file(
        &std::env::temp_dir(),
        NsId::current().ok()?,
    ))
}

fn run(invocation: &Invocation) -> ExitCode {
    let Invocation {
        args,
        spec,
        warnings: _,
    } = invocation;
    if args.dry_run {
        let mut out = std::io::stdout().lock();
        for family in spec.families() {
            if write!(out, "{}", Restore(&plan(spec, *family))).is_err() {
                return ExitCode::from(1);
            }
        }
        return ExitCode::SUCCESS;
    }
    let exec = SystemExec {
        lock_file: pod_lock_file(args),
    };
    let backend = match args.force_iptables_version {
        Some(flavor) => Iptables::new(exec, flavor),
        None => match Iptables::detect(exec) {
            Ok(backend) => backend,
            Err(e) => return fail(e),
        },
    };
    if args.cleanup_only {
        return match capture_core::uninstall(&backend, spec) {
            Ok(()) => {
                // The pod-private xtables lock file goes with the capture (as capture-cni's DEL
                // removes its own), so cleanup leaves nothing behind.
                if let Some(lock) = pod_lock_file(args)
                    && let Err(e) = host::remove_xtables_lock_file(&lock)
                {
                    eprintln!("capture-init: warning: cannot remove {}: {e}", lock.display());
                }
                eprintln!("capture-init: capture removed ({})", backend.flavor().as_str());
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        };
    }
    if !args.skip_rule_apply {
        let options = ApplyOptions {
            reconcile: args.reconcile,
            force: args.force_apply,
            strict: args.strict,
        };
        match capture_core::install(&backend, spec, options) {
            Ok(applied) => {
                for warning in &applied.warnings {
                    eprintln!("capture-init: warning: {warning}");
                }
                for (family, change) in applied.changes {
                    eprintln!(
                        "capture-init: {family} capture {} ({})",
                        change.describe(),
                        backend.flavor().as_str()
                    );
                }
            }
            Err(e) => return fail(e),
        }
    }
    if args.run_validation {
        return validation(spec, args);
    }
    ExitCode::SUCCESS
}

/// `--run-validation`: 0 when the probes pass, 126 when they do not.
fn validation(spec: &capture_core::CaptureSpec, args: &Args) -> ExitCode {
    if let Err(e) = validate::run(spec, args) {
        eprintln!("capture-init: {e}");
        return ExitCode::from(VALIDATION_FAILED);
    }
    eprintln!("capture-init: validation passed");
    ExitCode::SUCCESS
}
