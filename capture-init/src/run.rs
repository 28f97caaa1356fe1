//! Carrying out an invocation.

use std::ffi::OsString;
use std::io::Write as _;
use std::process::ExitCode;
#[cfg(not(test))]
use std::{
    ffi::{CStr, OsStr},
    os::unix::ffi::OsStrExt as _,
};

use capture_core::host::{self, NetNs, NsId, RunError};
use capture_core::nft::Nftables;
use capture_core::{ApplyOptions, Backend, BackendError, Flavor, Iptables, Outcome, SystemExec, chain};

use crate::cli::{self, Args, Invocation, NodeArgs, Parsed};
use crate::validate;

/// Exit status when validation finds that redirection does not work (Istio's).
const VALIDATION_FAILED: u8 = 126;

fn fail(message: impl std::fmt::Display) -> ExitCode {
    tracing::error!("{message}");
    ExitCode::from(1)
}

/// The process: what std's runtime would do before and after `fn main` that capture-init relies
/// on, around [`main`].
///
/// capture-init is a short-lived command, and std's runtime setup costs it more than a tenth of
/// a native nftables apply: to report a stack overflow of the main thread by name, it asks glibc
/// where the main thread's stack is (`pthread_getattr_np`), which reads and parses
/// `/proc/self/maps` (0.15 ms here). So the entry point is C's `main`, and this does the rest
/// of the runtime's work: standard streams that are closed are opened on `/dev/null` (so that
/// no socket becomes stdout or stderr), `SIGPIPE` is ignored (a closed pipe is an error to
/// report, not a signal that kills), the arguments are taken from `argv` (as they are on musl
/// too), a panic exits with status 101, and stdout is flushed at the end. A main-thread panic
/// names the thread `<unnamed>` instead of `main`, and a main-thread stack overflow ends in
/// SIGSEGV without std's one-line report; neither happens in a correct run.
///
/// # Safety
/// `argv` must point to `argc` NUL-terminated strings, as C's `main` receives them.
#[cfg(not(test))]
pub unsafe fn start(argc: libc::c_int, argv: *const *const libc::c_char) -> libc::c_int {
    for fd in 0..3 {
        // SAFETY: F_GETFD only reads the descriptor's flags; a closed one gives EBADF.
        let closed = unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::EBADF);
        // SAFETY: open(2) with a NUL-terminated path; the lower descriptors are open, so it
        // takes `fd`, which stays open (and inheritable, as std leaves it) for the process.
        if closed && unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) } == -1 {
            std::process::abort();
        }
    }
    // SAFETY: ignoring a signal installs no handler code.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    raise_permitted_capabilities();
    let len = usize::try_from(argc).unwrap_or(0);
    let argv: Vec<OsString> = (0..len)
        .map(|i| {
            // SAFETY: the caller passes `argc` valid strings in `argv`.
            let arg = unsafe { CStr::from_ptr(*argv.add(i)) };
            OsStr::from_bytes(arg.to_bytes()).to_owned()
        })
        .collect();
    // The panic hook has printed the message; std's runtime exits with 101 then.
    let code = std::panic::catch_unwind(move || main(argv)).unwrap_or(ExitCode::from(101));
    let _ = std::io::stdout().flush();
    // ExitCode has no stable accessor for its number.
    (0..=u8::MAX)
        .find(|&n| ExitCode::from(n) == code)
        .map_or(1, libc::c_int::from)
}

/// Makes the permitted capabilities effective. A non-root run (the image's default user) gets
/// NET_ADMIN and NET_RAW from the binary's file capabilities, which are permitted only
/// (`cap_net_admin,cap_net_raw+p`, images/): with the effective bit the kernel would refuse to
/// execute the binary wherever the runtime grants neither capability, as in the validation
/// container, which needs none. As root the runtime has made them effective already. A failure
/// changes nothing: the step that lacks the capability then fails naming itself.
#[cfg(not(test))]
fn raise_permitted_capabilities() {
    if let Ok(mut sets) = rustix::thread::capabilities(None)
        && sets.effective != sets.permitted
    {
        sets.effective = sets.permitted;
        let _ = rustix::thread::set_capabilities(None, sets);
    }
}

/// Runs the command and returns its exit status: 0 success, 1 error, 126 validation failure.
pub fn main(argv: impl IntoIterator<Item = OsString>) -> ExitCode {
    let argv: Vec<OsString> = argv.into_iter().collect();
    let early = cli::early_log_config(&argv);
    let args = match cli::parse(argv) {
        Ok(Parsed::Info(text)) => {
            println!("{}", text.trim_end());
            return ExitCode::SUCCESS;
        }
        Ok(Parsed::Node(node)) => {
            capture_log::init(early);
            return node_command(node);
        }
        Ok(Parsed::Status(status)) => {
            capture_log::init(early);
            return crate::status::main(*status);
        }
        Ok(Parsed::Explain(explain)) => {
            capture_log::init(early);
            return crate::explain::main(*explain);
        }
        Ok(Parsed::Run(args)) => args,
        Err(e) => {
            capture_log::init(early);
            return fail(chain(&e));
        }
    };
    capture_log::init(args.log_config());
    if let Some(level) = &args.log_output_level {
        level.report();
    }
    if !args.dry_run {
        log_settings(&args.settings);
    }
    match args.network_namespace.clone() {
        // The work runs on a thread that enters the namespace (the host layer's NetNs::run),
        // so the process itself never leaves its own.
        // A dry run reads nothing of the pod, except a cleanup's, which shows what is there.
        Some(path) if !args.dry_run || args.cleanup_only => {
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
        Err(e) => return fail(chain(&e)),
    };
    for warning in &invocation.warnings {
        tracing::warn!("{warning}");
    }
    match backend(&invocation.args) {
        Ok(backend) => run(&*backend, &invocation),
        Err(e) => fail(chain(&*e)),
    }
}

/// The backend the flags name: the only place that knows there is more than one.
fn backend(args: &Args) -> Result<Box<dyn Backend>, BackendError> {
    match args.backend {
        cli::Backend::Iptables if args.native_nftables => {
            if args.forced_flavor().is_some() {
                tracing::warn!("--native-nftables is set, so --force-iptables-binary is ignored");
            }
            Ok(Box::new(Nftables))
        }
        cli::Backend::Iptables => {
            // A dry run reads nothing of the host, so it detects nothing either; nor does
            // --skip-rule-apply, which only checks the configuration (as a dry run does) before
            // validating: the validation container has no capability to run iptables with.
            let reads_nothing = args.dry_run || (args.skip_rule_apply && !args.cleanup_only);
            let flavor = match (args.forced_flavor(), reads_nothing) {
                (Some(flavor), _) => {
                    tracing::debug!("iptables flavour {} (forced by the flags)", flavor.as_str());
                    flavor
                }
                (None, true) => Flavor::Nft,
                (None, false) => return Ok(Box::new(Iptables::detect(exec(args))?)),
            };
            Ok(Box::new(Iptables::new(exec(args), flavor)))
        }
        cli::Backend::Ebpf => ebpf_backend(args),
    }
}

#[cfg(feature = "ebpf")]
fn ebpf_backend(args: &Args) -> Result<Box<dyn Backend>, BackendError> {
    Ok(Box::new(crate::ebpf::backend(args)?))
}

#[cfg(not(feature = "ebpf"))]
fn ebpf_backend(_: &Args) -> Result<Box<dyn Backend>, BackendError> {
    // cli::parse refuses --backend ebpf in a build without it.
    Err(cli::CliError::Unsupported(cli::NO_EBPF).into())
}

#[cfg(feature = "ebpf")]
fn node_command(node: NodeArgs) -> ExitCode {
    crate::ebpf::node(node)
}

#[cfg(not(feature = "ebpf"))]
fn node_command(_: NodeArgs) -> ExitCode {
    // cli::parse refuses the node commands in a build without the eBPF backend.
    fail(chain(&cli::CliError::Unsupported(cli::NO_EBPF)))
}

/// A [`RunError`] with its causes, as the old in-process `setns` reported them.
fn error_chain(e: &RunError) -> String {
    match e {
        RunError::Setns { source, .. } => source.to_string(),
        other => other.to_string(),
    }
}

/// How iptables runs. In CNI mode every pod gets its own xtables lock file, so that concurrent
/// pod setups never queue on the node's `/run/xtables.lock` (Kuma's idea; Istio's pod-scoped
/// lock); removing the capture removes it.
fn exec(args: &Args) -> SystemExec {
    let lock_file = args
        .cni_mode
        .then(|| NsId::current().ok())
        .flatten()
        .map(|id| host::xtables_lock_file(&std::env::temp_dir(), id));
    SystemExec { lock_file }
}

fn print_outcome(outcome: &Outcome) {
    for warning in &outcome.warnings {
        tracing::warn!("{warning}");
    }
    for step in &outcome.steps {
        tracing::info!("{step}");
    }
}

/// Logs the effective configuration, every setting with where it came from (the command line,
/// a variable, the default), so a pod's log explains its capture. Long lists are summarised.
/// Each line is put together only when it is written (not when the level filters it out).
fn log_settings(settings: &[cli::Setting]) {
    tracing::info!(
        "settings from the command line: {}",
        SettingsLine {
            settings,
            wanted: |s| *s == cli::Source::CommandLine,
            with_var: false,
        }
    );
    tracing::info!(
        "settings from the environment: {}",
        SettingsLine {
            settings,
            wanted: |s| matches!(s, cli::Source::Env(_)),
            with_var: true,
        }
    );
    tracing::info!(
        "settings left at their defaults: {}",
        SettingsLine {
            settings,
            wanted: |s| *s == cli::Source::Default,
            with_var: false,
        }
    );
}

/// The settings of one source as one log line's text, `none` when there are none: written
/// out only when formatted.
struct SettingsLine<'a> {
    settings: &'a [cli::Setting],
    wanted: fn(&cli::Source) -> bool,
    /// Name the variable too, when it is not the setting's own name.
    with_var: bool,
}

impl std::fmt::Display for SettingsLine<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut shown = self
            .settings
            .iter()
            .filter(|s| (self.wanted)(&s.source))
            .peekable();
        if shown.peek().is_none() {
            return f.write_str("none");
        }
        for (i, s) in shown.enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            let value = summarise(&s.value);
            match &s.source {
                cli::Source::Env(var) if self.with_var && *var != s.name => {
                    write!(f, "{var}={value} ({})", s.name)?;
                }
                _ => write!(f, "{}={value}", s.name)?,
            }
        }
        Ok(())
    }
}

/// A value as logged: an empty one quoted, a list of more than eight items as its first four
/// and a count.
fn summarise(value: &str) -> String {
    const SHOWN: usize = 4;
    if value.is_empty() {
        return "\"\"".to_owned();
    }
    let items: Vec<&str> = value.split(',').collect();
    if items.len() <= 2 * SHOWN {
        return value.to_owned();
    }
    format!(
        "{},… ({} items, {} more)",
        items[..SHOWN].join(","),
        items.len(),
        items.len() - SHOWN
    )
}

fn run(backend: &dyn Backend, invocation: &Invocation) -> ExitCode {
    let Invocation {
        args,
        spec,
        warnings: _,
    } = invocation;
    // A dry run changes nothing, whatever else is asked (it runs outside the pod's namespace).
    // --cleanup-only --dry-run: what cleanup would remove, read from the namespace.
    if args.dry_run && args.cleanup_only {
        return match std::io::stdout()
            .lock()
            .write_all(backend.cleanup_dry_run(spec).as_bytes())
        {
            Ok(()) => ExitCode::SUCCESS,
            Err(_) => ExitCode::from(1),
        };
    }
    if args.dry_run {
        return match backend.dry_run(spec) {
            Ok(text) => match std::io::stdout().lock().write_all(text.as_bytes()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(_) => ExitCode::from(1),
            },
            Err(e) => fail(chain(&*e)),
        };
    }
    if args.cleanup_only {
        return match backend.uninstall(spec) {
            Ok(outcome) => {
                print_outcome(&outcome);
                ExitCode::SUCCESS
            }
            Err(e) => fail(chain(&*e)),
        };
    }
    if args.skip_rule_apply {
        // The backend still has to accept the configuration.
        if let Err(e) = backend.dry_run(spec) {
            return fail(chain(&*e));
        }
    } else {
        let options = ApplyOptions {
            reconcile: args.reconcile,
            force: args.force_apply,
            strict: args.strict,
        };
        match backend.install(spec, options) {
            Ok(outcome) => print_outcome(&outcome),
            Err(e) => return fail(chain(&*e)),
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
        tracing::error!("{}", chain(&e));
        return ExitCode::from(VALIDATION_FAILED);
    }
    tracing::info!("validation passed");
    ExitCode::SUCCESS
}
