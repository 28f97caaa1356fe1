//! The binary's entry point: the CNI plugin when a runtime runs it (`CNI_COMMAND` set), the
//! node installer with `install` / `uninstall`.

use std::ffi::OsString;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Map, Value};

use crate::install::{self, InstallError, InstallOptions};
use crate::plugin;

const USAGE: &str = "\
Usage:
  capture-cni                     (run by the container runtime: CNI_COMMAND and stdin)
  capture-cni install   [--conf-dir DIR] [--bin-dir DIR] [--conf-file NAME]
                        [--plugin-config FILE] [--remove-istio-cni] [--watch [--interval SECS]]
  capture-cni uninstall [--conf-dir DIR] [--bin-dir DIR] [--conf-file NAME]

install copies this binary to BIN-DIR/capture-cni (0755) and chains the plugin last into the
node's primary network configuration: the lexically first valid .conf/.conflist in CONF-DIR,
or CONF-DIR/NAME. A .conf becomes a .conflist. Writes are atomic; a second run changes nothing.

  --conf-dir DIR        CNI configuration directory (default /etc/cni/net.d)
  --bin-dir DIR         CNI binary directory (default /opt/cni/bin)
  --conf-file NAME      chain into this file instead of the detected primary one
  --plugin-config FILE  a JSON object of plugin settings merged into the entry
                        (exclude_namespaces, pod_selection, plugin_log_level, log_file, capture)
  --remove-istio-cni    also remove an istio-cni entry (when migrating from Istio's plugin)
  --watch               keep running and re-install whenever the configuration loses the entry
                        (e.g. when the primary plugin rewrites it); exits on SIGTERM/SIGINT
  --interval SECS       how often --watch looks (default 2)

uninstall removes exactly the capture-cni entry and the binary.
";

/// Runs the binary with `argv` and returns its exit status.
pub fn main(argv: impl IntoIterator<Item = OsString>) -> ExitCode {
    let args: Vec<OsString> = argv.into_iter().skip(1).collect();
    match args.first().and_then(|a| a.to_str()) {
        None => {
            let outcome = plugin::run(|name| std::env::var_os(name), &mut std::io::stdin().lock());
            let mut out = std::io::stdout().lock();
            // If stdout is gone there is nobody left to tell.
            let _ = out.write_all(outcome.stdout.as_bytes());
            let _ = out.flush();
            ExitCode::from(outcome.exit)
        }
        Some("install" | "uninstall") => match Installer::parse(&args) {
            Ok(installer) => installer.run(),
            Err(msg) => {
                eprintln!("capture-cni: {msg}\n\n{USAGE}");
                ExitCode::from(2)
            }
        },
        Some("-h" | "--help" | "help") => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some("-V" | "--version") => {
            println!("capture-cni {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("capture-cni: unknown command {other:?}\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

#[derive(Debug)]
struct Installer {
    uninstall: bool,
    conf_dir: PathBuf,
    bin_dir: PathBuf,
    conf_file: Option<String>,
    plugin_config: Option<PathBuf>,
    remove_istio_cni: bool,
    watch: bool,
    interval: Duration,
}

impl Installer {
    fn parse(args: &[OsString]) -> Result<Self, String> {
        let mut me = Self {
            uninstall: args[0] == "uninstall",
            conf_dir: "/etc/cni/net.d".into(),
            bin_dir: "/opt/cni/bin".into(),
            conf_file: None,
            plugin_config: None,
            remove_istio_cni: false,
            watch: false,
            interval: Duration::from_secs(2),
        };
        let mut rest = args[1..].iter();
        while let Some(arg) = rest.next() {
            let arg = arg.to_str().ok_or("arguments must be UTF-8")?;
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) => (f, Some(v.to_owned())),
                None => (arg, None),
            };
            let mut value = || -> Result<String, String> {
                inline
                    .clone()
                    .or_else(|| rest.next().and_then(|v| v.to_str()).map(str::to_owned))
                    .ok_or_else(|| format!("{flag} needs a value"))
            };
            match flag {
                "--conf-dir" => me.conf_dir = value()?.into(),
                "--bin-dir" => me.bin_dir = value()?.into(),
                "--conf-file" => me.conf_file = Some(value()?),
                "--plugin-config" if !me.uninstall => me.plugin_config = Some(value()?.into()),
                "--remove-istio-cni" if !me.uninstall => me.remove_istio_cni = true,
                "--watch" if !me.uninstall => me.watch = true,
                "--interval" if !me.uninstall => {
                    let v = value()?;
                    let secs: u64 = v
                        .parse()
                        .ok()
                        .filter(|s| *s > 0)
                        .ok_or_else(|| format!("--interval {v:?}: not a positive number of seconds"))?;
                    me.interval = Duration::from_secs(secs);
                }
                other => return Err(format!("unknown option {other:?}")),
            }
        }
        Ok(me)
    }

    fn run(&self) -> ExitCode {
        if self.uninstall {
            return match install::uninstall(&self.conf_dir, &self.bin_dir, self.conf_file.as_deref()) {
                Ok(report) => {
                    match &report.conf_file {
                        Some((path, true)) => eprintln!("capture-cni: removed from {}", path.display()),
                        Some((path, false)) => eprintln!("capture-cni: not in {}", path.display()),
                        None => eprintln!("capture-cni: no network configuration found"),
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("capture-cni: uninstall failed: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        let opts = match self.options() {
            Ok(opts) => opts,
            Err(msg) => {
                eprintln!("capture-cni: {msg}");
                return ExitCode::from(2);
            }
        };
        if !self.watch {
            return match install_once(&opts) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("capture-cni: install failed: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        watch(&opts, self.interval)
    }

    fn options(&self) -> Result<InstallOptions, String> {
        let plugin_config = match &self.plugin_config {
            None => Map::new(),
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
        let binary = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
        Ok(InstallOptions {
            conf_dir: self.conf_dir.clone(),
            bin_dir: self.bin_dir.clone(),
            binary,
            conf_file: self.conf_file.clone(),
            plugin_config,
            remove_istio_cni: self.remove_istio_cni,
        })
    }
}

fn install_once(opts: &InstallOptions) -> Result<(), InstallError> {
    let report = install::install(opts)?;
    if report.binary_changed {
        eprintln!(
            "capture-cni: installed {}",
            opts.bin_dir.join(install::PLUGIN_TYPE).display()
        );
    }
    if let Some((path, changed)) = &report.conf_file {
        let what = if *changed { "chained into" } else { "already in" };
        eprintln!("capture-cni: {what} {}", path.display());
    }
    Ok(())
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn request_stop(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// Re-installs every `interval` until SIGTERM or SIGINT. A missing primary configuration
/// (the node's network plugin not installed yet) is waited for, not fatal.
fn watch(opts: &InstallOptions, interval: Duration) -> ExitCode {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    let action = SigAction::new(
        SigHandler::Handler(request_stop),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for signal in [Signal::SIGTERM, Signal::SIGINT] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        if let Err(e) = unsafe { sigaction(signal, &action) } {
            eprintln!("capture-cni: cannot handle {signal}: {e}");
        }
    }
    let mut last_error = String::new();
    while !STOP.load(Ordering::Relaxed) {
        match install::install(opts) {
            Ok(report) => {
                last_error.clear();
                if let Some((path, true)) = &report.conf_file {
                    eprintln!("capture-cni: chained into {}", path.display());
                }
                if report.binary_changed {
                    eprintln!(
                        "capture-cni: installed {}",
                        opts.bin_dir.join(install::PLUGIN_TYPE).display()
                    );
                }
            }
            Err(e) => {
                let msg = e.to_string();
                if msg != last_error {
                    eprintln!("capture-cni: {msg}; retrying every {}s", interval.as_secs());
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
    eprintln!("capture-cni: stopping; the plugin stays installed (run `capture-cni uninstall` to remove it)");
    ExitCode::SUCCESS
}
