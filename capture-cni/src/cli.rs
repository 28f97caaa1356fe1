//! The binary's entry point: the CNI plugin when a runtime runs it (no arguments; `CNI_COMMAND`
//! and stdin), the node installer with clap subcommands `install` / `uninstall`.

use std::ffi::OsString;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::builder::TypedValueParser as _;
use clap::{Args, Parser, Subcommand};
use serde_json::{Map, Value};

use crate::install::{self, InstallError, InstallOptions, Installer};
use crate::plugin;

const LONG_ABOUT: &str = "\
Run without arguments, capture-cni is the CNI plugin: the container runtime sets CNI_COMMAND and \
the other CNI variables and writes the network configuration to its stdin. The commands below put \
the plugin on a node and take it off again.";

const INSTALL_LONG_ABOUT: &str = "\
Copy this binary to BIN-DIR/capture-cni (0755) and chain the plugin last into the node's primary \
network configuration: the lexically first valid .conf/.conflist in CONF-DIR, or CONF-DIR/NAME. A \
.conf becomes a .conflist. Writes are atomic (0600); a second run changes nothing. The settings \
are checked as the plugin will read them before anything is written. With --watch it keeps to the \
file it chained into, and on SIGTERM/SIGINT removes its entry and the binary (unless \
--keep-on-exit).";

/// The command line of the installer.
#[derive(Debug, Parser)]
#[command(
    name = "capture-cni",
    version,
    about = "Chained CNI plugin that applies a sidecar's traffic capture in each pod's network namespace",
    long_about = LONG_ABOUT,
    override_usage = "capture-cni            (the CNI plugin, run by the container runtime)\n       capture-cni <COMMAND>",
    max_term_width = 100
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// How much each scope logs, as Istio's flag: scope:level pairs (default:info,
    /// default:debug,cni:warn, all:none). Levels: none, error, warn, info, debug.
    #[arg(long = "log_output_level", env = "LOG_OUTPUT_LEVEL", value_name = "SCOPE:LEVEL,...", global = true, value_parser = capture_log::OutputLevel::parse)]
    log_output_level: Option<capture_log::OutputLevel>,
    /// Write the log (stderr) as one JSON object per line, with RFC 3339 times.
    #[arg(long = "log_as_json", env = "LOG_AS_JSON", value_name = "BOOL", global = true, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = clap::builder::BoolishValueParser::new())]
    log_as_json: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Copy this binary into the CNI binary directory and chain the plugin into the node's
    /// network configuration
    #[command(long_about = INSTALL_LONG_ABOUT, args_override_self = true)]
    Install(Install),
    /// Remove the capture-cni entry from every configuration that has one, then the binary
    #[command(args_override_self = true)]
    Uninstall(Location),
    /// Exit 0 when the runtime will run the plugin (the configuration it uses ends with our
    /// entry and the binary is there), else 1 naming what is missing: a readiness probe
    #[command(args_override_self = true)]
    Chained(Location),
}

/// Where the node's CNI configuration and binaries are.
#[derive(Debug, Args)]
struct Location {
    /// CNI configuration directory.
    #[arg(long, value_name = "DIR", default_value = "/etc/cni/net.d")]
    conf_dir: PathBuf,
    /// CNI binary directory.
    #[arg(long, value_name = "DIR", default_value = "/opt/cni/bin")]
    bin_dir: PathBuf,
    /// The configuration file in CONF-DIR to use instead of the detected primary one.
    #[arg(long, value_name = "NAME")]
    conf_file: Option<String>,
}

/// `capture-cni install`.
#[derive(Debug, Args)]
struct Install {
    #[command(flatten)]
    location: Location,
    /// A JSON object of plugin settings merged into the entry (exclude_namespaces,
    /// pod_selection, plugin_log_level, log_file, capture).
    // An empty value is taken, and refused as an install error (exit 1) like any other bad
    // file, rather than by clap as a usage error (exit 2).
    #[arg(long, value_name = "FILE", value_parser = clap::builder::OsStringValueParser::new().map(PathBuf::from))]
    plugin_config: Option<PathBuf>,
    /// Remove an istio-cni entry (when migrating from Istio's plugin); without this or
    /// --allow-istio-cni a configuration with one is refused.
    #[arg(long, conflicts_with = "allow_istio_cni")]
    remove_istio_cni: bool,
    /// Chain next to an istio-cni entry (with a warning): two capture plugins in one chain
    /// fight over the pod's traffic.
    #[arg(long)]
    allow_istio_cni: bool,
    /// Keep running and re-install whenever the configuration loses the entry (e.g. when the
    /// primary plugin rewrites it); on SIGTERM/SIGINT remove the entry and the binary, and
    /// exit.
    #[arg(long)]
    watch: bool,
    /// With --watch: on SIGTERM/SIGINT leave the plugin installed (for upgrades, when the
    /// next installer takes over).
    #[arg(long, requires = "watch")]
    keep_on_exit: bool,
    /// How often --watch looks, in seconds.
    #[arg(long, value_name = "SECS", default_value = "2", value_parser = positive_secs)]
    interval: Duration,
}

fn positive_secs(s: &str) -> Result<Duration, String> {
    match s.parse() {
        Ok(secs) if secs > 0 => Ok(Duration::from_secs(secs)),
        _ => Err("not a positive number of seconds".into()),
    }
}

/// Runs the binary with `argv` and returns its exit status.
pub fn main(argv: impl IntoIterator<Item = OsString>) -> ExitCode {
    let argv: Vec<OsString> = argv.into_iter().collect();
    if argv.len() <= 1 {
        let outcome = plugin::run(|name| std::env::var_os(name), &mut std::io::stdin().lock());
        let mut out = std::io::stdout().lock();
        // If stdout is gone there is nobody left to tell.
        let _ = out.write_all(outcome.stdout.as_bytes());
        let _ = out.flush();
        return ExitCode::from(outcome.exit);
    }
    // A command line the parser refuses still logs its error as the logging flags ask.
    let early = capture_log::Config::from_argv(&argv, capture_log::Levels::default());
    let cli = match Cli::try_parse_from(argv) {
        Ok(cli) => cli,
        // `--help`, `--version` and `help` print to stdout and exit 0.
        Err(e) if e.exit_code() == 0 => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            capture_log::init(early);
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or_default();
            tracing::error!("{}", first.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    capture_log::init(capture_log::Config {
        format: capture_log::Format::json(cli.log_as_json),
        levels: cli
            .log_output_level
            .as_ref()
            .map(|l| l.levels.clone())
            .unwrap_or_default(),
        file: None,
    });
    if let Some(level) = &cli.log_output_level {
        level.report();
    }
    match cli.command {
        Command::Install(install) => install.run(),
        Command::Uninstall(location) => uninstall(&location),
        Command::Chained(location) => chained(&location),
    }
}

fn chained(location: &Location) -> ExitCode {
    let Location {
        conf_dir,
        bin_dir,
        conf_file,
    } = location;
    match install::chained(conf_dir, bin_dir, conf_file.as_deref()) {
        Ok(path) => {
            tracing::info!("chained in {}", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("{}", capture_core::chain(&e));
            ExitCode::FAILURE
        }
    }
}

fn uninstall(location: &Location) -> ExitCode {
    let Location {
        conf_dir,
        bin_dir,
        conf_file,
    } = location;
    match install::uninstall(conf_dir, bin_dir, conf_file.as_deref()) {
        Ok(report) => {
            print_uninstall(&report, conf_dir);
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("uninstall failed: {}", capture_core::chain(&e));
            ExitCode::FAILURE
        }
    }
}

fn print_uninstall(report: &install::UninstallReport, conf_dir: &std::path::Path) {
    for path in &report.removed_from {
        tracing::info!("removed from {}", path.display());
    }
    if report.removed_from.is_empty() {
        tracing::info!("no entry in {}", conf_dir.display());
    }
    if report.binary_removed {
        tracing::info!("removed the plugin binary");
    }
}

impl Install {
    /// Exit 1 for every failure: settings, configuration, I/O (usage errors are clap's, 2).
    fn run(&self) -> ExitCode {
        let opts = match self.options() {
            Ok(opts) => opts,
            Err(msg) => {
                tracing::error!("install failed: {msg}");
                return ExitCode::FAILURE;
            }
        };
        if !self.watch {
            return match install_once(opts) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("install failed: {}", capture_core::chain(&e));
                    ExitCode::FAILURE
                }
            };
        }
        watch(opts, self.interval, self.keep_on_exit)
    }

    fn options(&self) -> Result<InstallOptions, String> {
        let plugin_config = match &self.plugin_config {
            None => Map::new(),
            Some(path) if path.as_os_str().is_empty() => {
                return Err("--plugin-config \"\": no file named (an empty path)".to_owned());
            }
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read --plugin-config {}: {e}", path.display()))?;
                match serde_json::from_str::<Value>(&text) {
                    Ok(Value::Object(map)) => map,
                    Ok(_) => return Err(format!("--plugin-config {}: not a JSON object", path.display())),
                    Err(e) => return Err(format!("--plugin-config {}: {e}", path.display())),
                }
            }
        };
        if let Some(path) = &self.plugin_config {
            install::check_settings(&plugin_config)
                .map_err(|e| format!("--plugin-config {}: {e}", path.display()))?;
        }
        let binary = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
        Ok(InstallOptions {
            conf_dir: self.location.conf_dir.clone(),
            bin_dir: self.location.bin_dir.clone(),
            binary,
            conf_file: self.location.conf_file.clone(),
            plugin_config,
            remove_istio_cni: self.remove_istio_cni,
            allow_istio_cni: self.allow_istio_cni,
        })
    }
}

fn print_warnings(report: &install::Report) {
    for warning in &report.warnings {
        tracing::warn!("{warning}");
    }
}

fn install_once(opts: InstallOptions) -> Result<(), InstallError> {
    let bin_dir = opts.bin_dir.clone();
    let report = Installer::new(opts).install()?;
    print_warnings(&report);
    if report.binary_changed {
        tracing::info!("installed {}", bin_dir.join(install::PLUGIN_TYPE).display());
    }
    if let Some((path, changed)) = &report.conf_file {
        let what = if *changed { "chained into" } else { "already in" };
        tracing::info!("{what} {}", path.display());
    }
    Ok(())
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn request_stop(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// Re-installs every `interval` until SIGTERM or SIGINT, keeping to the file it chained into.
/// A missing primary configuration (the node's network plugin not installed yet) is waited
/// for, not fatal. On the signal the entry and the binary are removed, unless `keep_on_exit`.
fn watch(opts: InstallOptions, interval: Duration, keep_on_exit: bool) -> ExitCode {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    let action = SigAction::new(
        SigHandler::Handler(request_stop),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for signal in [Signal::SIGTERM, Signal::SIGINT] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        if let Err(e) = unsafe { sigaction(signal, &action) } {
            tracing::error!("cannot handle {signal}: {e}");
        }
    }
    let mut installer = Installer::new(opts);
    let mut last_error = String::new();
    let mut last_warnings = Vec::new();
    while !STOP.load(Ordering::Relaxed) {
        match installer.install() {
            Ok(report) => {
                last_error.clear();
                if report.warnings != last_warnings {
                    print_warnings(&report);
                    last_warnings.clone_from(&report.warnings);
                }
                if let Some((path, true)) = &report.conf_file {
                    tracing::info!("chained into {}", path.display());
                }
                if report.binary_changed {
                    tracing::info!(
                        "installed {}",
                        installer.options().bin_dir.join(install::PLUGIN_TYPE).display()
                    );
                }
            }
            Err(e) => {
                let msg = capture_core::chain(&e);
                if msg != last_error {
                    tracing::warn!("{msg}; retrying every {}s", interval.as_secs());
                    last_error = msg;
                }
            }
        }
        let step = Duration::from_millis(100);
        let mut waited = Duration::ZERO;
        while waited < interval && !STOP.load(Ordering::Relaxed) {
            std::thread::sleep(step);
            waited += step;
        }
    }
    let opts = installer.options();
    if keep_on_exit {
        tracing::info!("stopping; the plugin stays installed (--keep-on-exit)");
        return ExitCode::SUCCESS;
    }
    tracing::info!("stopping; removing the plugin (--keep-on-exit keeps it)");
    match install::uninstall(&opts.conf_dir, &opts.bin_dir, opts.conf_file.as_deref()) {
        Ok(report) => {
            print_uninstall(&report, &opts.conf_dir);
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("uninstall failed: {}", capture_core::chain(&e));
            ExitCode::FAILURE
        }
    }
}
