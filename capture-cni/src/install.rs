//! The node installer: copies the plugin binary into the CNI bin directory and chains the
//! plugin, last, into the node's primary network configuration.
//!
//! **Primary configuration.** The lexically first file in the configuration directory that
//! is a valid `.conf` (a JSON object with a `type`) or `.conflist` (a JSON object with a
//! non-empty `plugins` array) — the file the runtime itself uses, as Istio's installer picks it.
//!
//! **Insertion.**
//! - A `.conflist` keeps every top-level key (its `cniVersion` and `name` among them) and every
//!   other plugin, in order; any entry of type `capture-cni` is removed and ours is appended
//!   last.
//! - A single `.conf` becomes a list named and versioned as the conf was
//!   (`{"cniVersion": <its version>, "name": <its name>, "plugins": [<conf without
//!   cniVersion>, <ours>]}`), written as `<stem>.conflist`; the `.conf` is then removed.
//! - The file is written atomically (a temporary file in the same directory, mode 0600 as
//!   Istio now writes it, then rename) and only when its content changes, so a second run
//!   leaves it byte-identical; an existing file of another mode is narrowed to 0600. A
//!   symlinked configuration is edited through the link: its target is rewritten in the
//!   target's own directory and the link stays.
//!
//! **Nothing is written that would break the node.** Before the binary is copied or a file
//! touched, the settings are checked as ADD reads them ([`crate::plugin::check_entry`]), and
//! a list that already chains `istio-cni` is refused unless told what to do with it.
//!
//! **Staying on one file.** [`Installer`] remembers the file it chained into and keeps to it
//! while it exists: while the primary plugin rewrites it (briefly partial or invalid) the pass
//! fails and is retried, rather than chaining into the next file in the directory. Only a
//! valid file that sorts before it (which the runtime would now use) takes over. `uninstall`
//! removes our entry from every file in the directory that has one.
//!
//! **Where this differs from Istio's installer** (`cni/pkg/install`, fixtures in
//! `capture-core/testdata/istio/cni-install`):
//! - Istio names a list made from a single conf `k8s-pod-network`, version `0.3.1`; we keep
//!   the conf's own `name` and `cniVersion`, so the network and the spec version the runtime
//!   negotiates do not change when the plugin is chained.
//! - Istio re-serialises with every object's keys sorted; we keep the file's key order and
//!   only touch the `plugins` array.
//! - Istio replaces an entry of type `istio-cni`; we replace entries of type `capture-cni`.
//!   A list with an `istio-cni` entry is refused by default: two capture plugins in one
//!   chain fight over the pod's traffic, and the entry belongs to Istio's installer, which
//!   would put it back. `--remove-istio-cni` removes it when migrating from Istio's plugin
//!   (after Istio's installer is gone); `--allow-istio-cni` keeps both, with a warning.
//! - Our entry declares `capabilities: {"io.kubernetes.cri.pod-annotations": true}`: the pod's
//!   annotations come from the runtime, not from the API server, so no kubeconfig is needed.

use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

use crate::conf::POD_ANNOTATIONS_CAPABILITY;

/// The plugin's `type` (and binary name).
pub const PLUGIN_TYPE: &str = "capture-cni";
/// The `type` of Istio's own plugin.
pub const ISTIO_PLUGIN_TYPE: &str = "istio-cni";
/// The version and name Istio gives a list made from a single `.conf` that has none.
const FALLBACK_VERSION: &str = "0.3.1";
const FALLBACK_NAME: &str = "k8s-pod-network";
/// The mode of every configuration file written (Istio's, since istio/istio#59075).
pub const CONF_MODE: u32 = 0o600;
/// The mode of the installed binary.
pub const BINARY_MODE: u32 = 0o755;

/// Why installing or uninstalling failed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// A file or directory operation failed.
    #[error("cannot {op} {}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// No valid network configuration in the directory yet.
    #[error(
        "no valid .conf or .conflist network configuration in {}; is the node's network plugin installed?",
        dir.display()
    )]
    NoPrimary {
        /// The configuration directory.
        dir: PathBuf,
    },
    /// The runtime would not run the plugin ([`chained`]).
    #[error("capture-cni is not chained: {reason}")]
    NotChained {
        /// What is missing.
        reason: String,
    },
    /// A configuration file that cannot be chained.
    #[error("{}: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The plugin settings would make ADD fail for every pod.
    #[error("plugin settings refused: {0}")]
    Settings(crate::Error),
    /// The list already chains Istio's plugin.
    #[error(
        "{} already chains istio-cni, and two capture plugins in one chain fight over the pod's traffic; \
         pass --remove-istio-cni to remove it (migrating from Istio's plugin) or --allow-istio-cni to keep both",
        path.display()
    )]
    IstioCni {
        /// The file.
        path: PathBuf,
    },
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> InstallError {
    let path = path.to_owned();
    move |source| InstallError::Io { op, path, source }
}

/// What to install.
#[derive(Debug, Clone)]
pub struct InstallOptions {
    /// The CNI configuration directory (`/etc/cni/net.d`).
    pub conf_dir: PathBuf,
    /// The CNI binary directory (`/opt/cni/bin`).
    pub bin_dir: PathBuf,
    /// The plugin binary to copy (the running one).
    pub binary: PathBuf,
    /// A file to chain into instead of the detected primary configuration.
    pub conf_file: Option<String>,
    /// Plugin settings merged into our entry (`exclude_namespaces`, `capture`, …).
    pub plugin_config: Map<String, Value>,
    /// Remove `istio-cni` entries.
    pub remove_istio_cni: bool,
    /// Chain next to an `istio-cni` entry (with a warning) instead of refusing.
    pub allow_istio_cni: bool,
}

/// What an install changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// The binary was written.
    pub binary_changed: bool,
    /// The configuration file touched, and whether its content changed.
    pub conf_file: Option<(PathBuf, bool)>,
    /// What the caller should say loudly (an `istio-cni` entry kept by `allow_istio_cni`).
    pub warnings: Vec<String>,
}

/// What an uninstall changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UninstallReport {
    /// The files our entry was removed from.
    pub removed_from: Vec<PathBuf>,
    /// The binary was removed.
    pub binary_removed: bool,
}

/// Our plugin entry: `type`, `name`, the pod-annotations capability, then `settings`
/// (without a `cniVersion`, which a list's plugins take from the list).
pub fn plugin_entry(settings: &Map<String, Value>) -> Value {
    let mut entry = Map::new();
    entry.insert("type".into(), PLUGIN_TYPE.into());
    entry.insert("name".into(), PLUGIN_TYPE.into());
    entry.insert("capabilities".into(), json!({ POD_ANNOTATIONS_CAPABILITY: true }));
    for (key, value) in settings {
        match key.as_str() {
            "type" | "cniVersion" => {}
            "capabilities" => {
                if let (Some(ours), Value::Object(theirs)) = (entry["capabilities"].as_object_mut(), value) {
                    for (k, v) in theirs {
                        ours.insert(k.clone(), v.clone());
                    }
                }
            }
            _ => {
                entry.insert(key.clone(), value.clone());
            }
        }
    }
    Value::Object(entry)
}

/// Checks plugin settings as ADD will read the entry made of them (the plugin's own decoder
/// and checks, [`crate::plugin::check_entry`]).
///
/// # Errors
/// The plugin's error, naming the field.
pub fn check_settings(settings: &Map<String, Value>) -> Result<(), crate::Error> {
    match plugin_entry(settings) {
        Value::Object(entry) => crate::plugin::check_entry(&entry),
        _ => unreachable!("plugin_entry makes an object"),
    }
}
/// A configuration file's content, by kind.
#[derive(Debug, Clone, PartialEq)]
pub enum NetworkConfig {
    /// A single plugin configuration (`.conf`): an object with a `type`.
    Single(Map<String, Value>),
    /// A plugin list (`.conflist`): an object with a non-empty `plugins` array.
    List(Map<String, Value>),
}

impl NetworkConfig {
    /// Classifies a parsed document by content.
    pub fn from_value(doc: Value) -> Option<Self> {
        let Value::Object(map) = doc else { return None };
        if map
            .get("plugins")
            .and_then(Value::as_array)
            .is_some_and(|p| !p.is_empty() && p.iter().all(Value::is_object))
        {
            Some(Self::List(map))
        } else if map
            .get("type")
            .and_then(Value::as_str)
            .is_some_and(|t| !t.is_empty())
        {
            Some(Self::Single(map))
        } else {
            None
        }
    }
}

/// Where the plugin is chained, if the runtime will run it: the file the runtime uses
/// (`conf_file` in `conf_dir`, else the primary configuration) ends with our entry, and our
/// binary is in `bin_dir`. What the installer DaemonSet's readiness probe asks
/// (`capture-cni chained`).
///
/// # Errors
/// [`InstallError::NotChained`] naming what is missing; errors reading the directory.
pub fn chained(conf_dir: &Path, bin_dir: &Path, conf_file: Option<&str>) -> Result<PathBuf, InstallError> {
    let not = |reason: String| InstallError::NotChained { reason };
    let (path, config) = match conf_file {
        Some(name) => {
            let path = conf_dir.join(name);
            if !path.exists() {
                return Err(not(format!("{} does not exist", path.display())));
            }
            match read_config(&path, false)? {
                Some(config) => (path, config),
                None => return Err(not(format!("{} is not a network configuration", path.display()))),
            }
        }
        None => primary_config(conf_dir)?.ok_or_else(|| {
            not(format!(
                "no valid network configuration in {}",
                conf_dir.display()
            ))
        })?,
    };
    let last_is_ours = match &config {
        NetworkConfig::List(list) => list["plugins"]
            .as_array()
            .and_then(|p| p.last())
            .is_some_and(is_ours),
        NetworkConfig::Single(_) => false,
    };
    if !last_is_ours {
        return Err(not(format!(
            "{} (the configuration the runtime uses) does not end with a {PLUGIN_TYPE} entry",
            path.display()
        )));
    }
    let binary = bin_dir.join(PLUGIN_TYPE);
    if !binary.is_file() {
        return Err(not(format!("{} is missing", binary.display())));
    }
    Ok(path)
}

/// Chains `entry` last into `config` and returns the resulting list. Pure; the fixtures'
/// tests call it directly.
pub fn insert_entry(config: &NetworkConfig, entry: &Value, remove_istio_cni: bool) -> Value {
    match config {
        NetworkConfig::List(list) => {
            let mut out = list.clone();
            let plugins = out["plugins"].as_array_mut().expect("a list has plugins");
            plugins.retain(|p| !(is_ours(p) || (remove_istio_cni && has_type(p, ISTIO_PLUGIN_TYPE))));
            plugins.push(entry.clone());
            Value::Object(out)
        }
        NetworkConfig::Single(conf) => {
            let mut inner = conf.clone();
            let version = inner
                .shift_remove("cniVersion")
                .unwrap_or_else(|| FALLBACK_VERSION.into());
            let name = inner.get("name").cloned().unwrap_or_else(|| FALLBACK_NAME.into());
            json!({ "cniVersion": version, "name": name, "plugins": [inner, entry] })
        }
    }
}

/// Removes every entry of ours from a list. Returns the new document and whether anything
/// was removed; a single conf has no entry of ours.
pub fn remove_entry(config: &NetworkConfig) -> (Value, bool) {
    match config {
        NetworkConfig::List(list) => {
            let mut out = list.clone();
            let plugins = out["plugins"].as_array_mut().expect("a list has plugins");
            let before = plugins.len();
            plugins.retain(|p| !is_ours(p));
            let changed = plugins.len() != before;
            (Value::Object(out), changed)
        }
        NetworkConfig::Single(conf) => (Value::Object(conf.clone()), false),
    }
}

fn has_type(plugin: &Value, ty: &str) -> bool {
    plugin.get("type").and_then(Value::as_str) == Some(ty)
}

fn is_ours(plugin: &Value) -> bool {
    has_type(plugin, PLUGIN_TYPE)
}

fn has_istio_cni(config: &NetworkConfig) -> bool {
    match config {
        NetworkConfig::List(list) => list["plugins"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| has_type(p, ISTIO_PLUGIN_TYPE))),
        NetworkConfig::Single(conf) => conf.get("type").and_then(Value::as_str) == Some(ISTIO_PLUGIN_TYPE),
    }
}

/// The file text: two-space indented JSON and a final newline.
pub fn render(doc: &Value) -> String {
    let mut text = serde_json::to_string_pretty(doc).expect("a JSON value always serialises");
    text.push('\n');
    text
}

fn is_config_name(name: &str) -> bool {
    !name.starts_with('.') && (name.ends_with(".conf") || name.ends_with(".conflist"))
}

/// Reads and classifies a configuration file by its extension: a `.conf` must be a single
/// configuration and a `.conflist` a list (a list in a `.conf` is taken as a list when the
/// file is named explicitly).
fn read_config(path: &Path, strict_extension: bool) -> Result<Option<NetworkConfig>, InstallError> {
    let text = fs::read_to_string(path).map_err(io_err("read", path))?;
    let Ok(doc) = serde_json::from_str::<Value>(&text) else {
        return Ok(None);
    };
    let config = NetworkConfig::from_value(doc);
    let list_file = path.extension().is_some_and(|e| e == "conflist");
    Ok(config.filter(|c| {
        !strict_extension
            || matches!(
                (c, list_file),
                (NetworkConfig::List(_), true) | (NetworkConfig::Single(_), false)
            )
    }))
}

/// The `.conf`/`.conflist` names in `conf_dir`, sorted.
fn config_names(conf_dir: &Path) -> Result<Vec<String>, InstallError> {
    let mut names: Vec<String> = fs::read_dir(conf_dir)
        .map_err(io_err("read directory", conf_dir))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| is_config_name(n))
        .collect();
    names.sort();
    Ok(names)
}

/// The node's primary network configuration: the lexically first valid `.conf`/`.conflist`.
///
/// # Errors
/// When the directory cannot be read.
pub fn primary_config(conf_dir: &Path) -> Result<Option<(PathBuf, NetworkConfig)>, InstallError> {
    for name in config_names(conf_dir)? {
        let path = conf_dir.join(&name);
        if !path.is_file() {
            continue;
        }
        if let Some(config) = read_config(&path, true)? {
            return Ok(Some((path, config)));
        }
    }
    Ok(None)
}

/// The file a write to `path` changes: `path`, or the file a symlink at `path` leads to (a
/// configuration is edited through its link; the binary is not: a link there is replaced).
fn through_links(path: &Path) -> Result<PathBuf, InstallError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            fs::canonicalize(path).map_err(io_err("follow the symlink", path))
        }
        _ => Ok(path.to_owned()),
    }
}

/// Writes `bytes` to `path` atomically with `mode`, unless the file already holds exactly
/// them. Returns whether it wrote.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<bool, InstallError> {
    if fs::read(path).is_ok_and(|old| old == bytes) {
        // Same content; make sure the mode is right too.
        let perm = fs::metadata(path).map_err(io_err("stat", path))?.permissions();
        if perm.mode() & 0o7777 != mode {
            fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_err("chmod", path))?;
        }
        return Ok(false);
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    // A dot file without .conf/.conflist: never taken for a configuration, even half-written.
    let tmp = dir.join(format!(".{name}.capture-cni-{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io_err("create", &tmp))?;
        // The umask may have narrowed the mode given to open, and an old file of the same
        // name may have had another.
        f.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io_err("chmod", &tmp))?;
        f.write_all(bytes).map_err(io_err("write", &tmp))?;
        f.sync_all().map_err(io_err("sync", &tmp))?;
        fs::rename(&tmp, path).map_err(io_err("rename into place", path))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map(|()| true)
}

/// Installs the binary and chains the plugin into the primary configuration, once (see
/// [`Installer`] for repeated passes).
///
/// # Errors
/// As [`Installer::install`].
pub fn install(opts: &InstallOptions) -> Result<Report, InstallError> {
    Installer::new(opts.clone()).install()
}

/// The installer across passes: it remembers the file it chained into and keeps to it.
#[derive(Debug, Clone)]
pub struct Installer {
    opts: InstallOptions,
    file: Option<PathBuf>,
}

impl Installer {
    /// An installer that has not chained into any file yet.
    pub fn new(opts: InstallOptions) -> Self {
        Self { opts, file: None }
    }

    /// Its options.
    pub fn options(&self) -> &InstallOptions {
        &self.opts
    }

    /// The file the last successful pass chained into.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// The file to chain into and its content: `conf_file`, else the primary configuration,
    /// except that while the file of the last pass exists, a later file is never taken (that
    /// file being invalid is an error to retry: the primary plugin is rewriting it).
    fn locate(&self) -> Result<(PathBuf, NetworkConfig), InstallError> {
        let opts = &self.opts;
        if let Some(name) = &opts.conf_file {
            let path = opts.conf_dir.join(name);
            let config = read_config(&path, false)?.ok_or_else(|| InstallError::Invalid {
                path: path.clone(),
                reason: "not a network configuration (a .conf needs \"type\", a .conflist \"plugins\")"
                    .into(),
            })?;
            return Ok((path, config));
        }
        let primary = primary_config(&opts.conf_dir)?;
        if let Some(file) = &self.file
            && fs::symlink_metadata(file).is_ok()
        {
            // The runtime uses the first valid file: one before ours takes over; the first
            // valid one being after ours means ours is not valid right now.
            match primary {
                Some((path, config)) if path <= *file => return Ok((path, config)),
                _ => {
                    return Err(InstallError::Invalid {
                        path: file.clone(),
                        reason: "not a valid network configuration now (being rewritten?); \
                                 retrying this file, not moving to a later one"
                            .into(),
                    });
                }
            }
        }
        primary.ok_or_else(|| InstallError::NoPrimary {
            dir: opts.conf_dir.clone(),
        })
    }

    /// One pass: checks the settings and the file, then copies the binary and chains the
    /// plugin. Nothing is written when a check fails.
    ///
    /// # Errors
    /// [`InstallError::Settings`] for settings ADD would refuse; [`InstallError::NoPrimary`]
    /// when there is no configuration to chain into yet; [`InstallError::Invalid`] for a file
    /// that cannot be chained (the remembered one included); [`InstallError::IstioCni`];
    /// I/O errors.
    pub fn install(&mut self) -> Result<Report, InstallError> {
        let opts = &self.opts;
        check_settings(&opts.plugin_config).map_err(InstallError::Settings)?;
        let binary = fs::read(&opts.binary).map_err(io_err("read", &opts.binary))?;
        let (path, config) = self.locate()?;
        let mut warnings = Vec::new();
        if has_istio_cni(&config) && !opts.remove_istio_cni {
            if !opts.allow_istio_cni {
                return Err(InstallError::IstioCni { path });
            }
            warnings.push(format!(
                "{} also chains istio-cni (--allow-istio-cni): two capture plugins in one chain fight over the pod's traffic",
                path.display()
            ));
        }
        let doc = insert_entry(&config, &plugin_entry(&opts.plugin_config), opts.remove_istio_cni);

        fs::create_dir_all(&opts.bin_dir).map_err(io_err("create directory", &opts.bin_dir))?;
        let binary_changed = write_atomic(&opts.bin_dir.join(PLUGIN_TYPE), &binary, BINARY_MODE)?;
        let single = path.extension().is_some_and(|e| e == "conf");
        let target = if single {
            path.with_extension("conflist")
        } else {
            path.clone()
        };
        let changed = write_atomic(&through_links(&target)?, render(&doc).as_bytes(), CONF_MODE)?;
        if target != path {
            fs::remove_file(&path).map_err(io_err("remove", &path))?;
        }
        self.file = Some(target.clone());
        Ok(Report {
            binary_changed,
            conf_file: Some((target, changed || single)),
            warnings,
        })
    }
}

/// Removes our entry from every configuration in `conf_dir` that has one (and from
/// `conf_file`, whatever its name), then our binary. Each file is left a list.
///
/// # Errors
/// I/O errors. No configuration or binary is not an error.
pub fn uninstall(
    conf_dir: &Path,
    bin_dir: &Path,
    conf_file: Option<&str>,
) -> Result<UninstallReport, InstallError> {
    let mut names = match config_names(conf_dir) {
        Ok(names) => names,
        Err(InstallError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    if let Some(name) = conf_file
        && !names.iter().any(|n| n == name)
    {
        names.push(name.to_owned());
    }
    let mut report = UninstallReport::default();
    for name in names {
        let path = conf_dir.join(name);
        if !path.is_file() {
            continue;
        }
        let config = match read_config(&path, false) {
            Ok(Some(config)) => config,
            Ok(None) => continue,
            Err(InstallError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let (doc, changed) = remove_entry(&config);
        if changed {
            write_atomic(&through_links(&path)?, render(&doc).as_bytes(), CONF_MODE)?;
            report.removed_from.push(path);
        }
    }
    let binary = bin_dir.join(PLUGIN_TYPE);
    match fs::remove_file(&binary) {
        Ok(()) => report.binary_removed = true,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("remove", &binary)(e)),
    }
    Ok(report)
}
