//! The CNI protocol: one invocation, from environment and stdin to stdout and exit status.
//!
//! | command | does | prints on success |
//! |---|---|---|
//! | `VERSION` | nothing | `{"cniVersion", "supportedVersions"}` |
//! | `ADD` | applies capture in `CNI_NETNS` unless the pod is skipped | `prevResult`, in the configuration's version |
//! | `DEL` | removes it; succeeds when `CNI_NETNS` is empty or gone, whatever the configuration | nothing |
//! | `CHECK` | fails (code 101) when the pod's capture is missing or differs | nothing |
//! | `STATUS` | fails (code 50) when no usable iptables is found | nothing |
//! | `GC` | removes idle lock files; on eBPF unenrolls pods whose attachment is not valid, and pods whose namespace is gone | nothing |
//!
//! Failures print the spec's error object on stdout and exit 1.
//!
//! **Versions.** The configuration's `cniVersion` must be one of [`SUPPORTED`]
//! (code 1 otherwise; a configuration without one is `0.1.0`, as libcni reads it). `CHECK`
//! needs 0.4.0 or later, `STATUS` and `GC` 1.1.0 or later (code 1, as the reference `skel`).
//!
//! **`prevResult`** is kept as raw JSON and printed back unchanged (unknown keys, the 0.3.x
//! and 0.4.0 `ips[].version`, key order) with only `cniVersion` set to the configuration's.
//! A `prevResult` whose own `cniVersion` differs from the configuration's is refused with
//! code 1 on `ADD` and `CHECK`: the runtime passes the previous plugin's result, which that
//! plugin must have written in the configuration's version, so a mismatch means a broken
//! chain, and relabelling it would hand the next consumer a result in a format it did not
//! ask for. `DEL` ignores it (DEL must succeed). A `prevResult` without `cniVersion` is taken
//! to be in the configuration's version, as libcni does; one that is not an object is a
//! decode failure (code 6). With no `prevResult`, `ADD` prints `{"cniVersion": <version>}`.
//!
//! **`DEL` is never blocked by its configuration.** Only the runtime's environment is checked
//! (`CNI_COMMAND`, and `CNI_CONTAINERID`, `CNI_IFNAME` and `CNI_ARGS` as for every per-container
//! command): a runtime that breaks that contract is worth hearing about, and nothing in it
//! changes across a plugin upgrade or downgrade. A configuration that does not decode (bad
//! JSON, an unsupported `cniVersion`, a key a downgraded plugin does not know) or whose
//! settings do not validate is logged and replaced by the defaults: with the namespace gone
//! nothing is read at all, and in a live namespace the capture is removed as the defaults
//! describe it (`cleanup` removes every chain of ours whatever the settings).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Read;
use std::path::PathBuf;

use serde_json::{Map, Value, json};

use crate::capture;
use crate::conf::{CaptureConf, LogFormat, LogLevel, NetConf};
use crate::env::{Command, Env};
use crate::error::Error;
use crate::netns::NetNs;
use crate::pod::{Pod, PodCapture, skip_reason};
use crate::version::{IMPLIED_WHEN_MISSING, SUPPORTED, Version};

/// What an invocation writes and how it exits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Everything for stdout (a result, a version report, an error object, or nothing).
    pub stdout: String,
    /// The exit status: 0 on success, 1 on failure.
    pub exit: u8,
}

/// A failed invocation: the error and the version its reply is written in.
#[derive(Debug)]
pub struct Failure {
    /// The request's `cniVersion` if it had one, else the newest supported.
    pub version: String,
    /// What went wrong.
    pub error: Error,
}

/// A decoded request: the version it speaks and the configuration.
#[derive(Debug)]
pub struct Request {
    /// The configuration's `cniVersion`.
    pub version: Version,
    /// The configuration.
    pub conf: NetConf,
}

fn decode_error(msg: &str) -> serde_json::Error {
    <serde_json::Error as serde::de::Error>::custom(msg)
}

/// The version an error reply is written in: the request's, when it named one.
fn reply_version(raw: Option<&Value>) -> String {
    raw.and_then(|r| r.get("cniVersion"))
        .and_then(Value::as_str)
        .unwrap_or(Version::LATEST.as_str())
        .to_owned()
}

/// Decodes stdin for `command`: JSON (code 6), a supported version that has the command
/// (code 1), then the configuration's fields (code 7).
///
/// # Errors
/// A [`Failure`] carrying the version to reply in.
pub fn decode(input: &[u8], command: Command) -> Result<Request, Failure> {
    let raw: Value = serde_json::from_slice(input).map_err(|e| Failure {
        version: Version::LATEST.as_str().into(),
        error: Error::Decode(e),
    })?;
    let fail = |error| Failure {
        version: reply_version(Some(&raw)),
        error,
    };
    if !raw.is_object() {
        return Err(fail(Error::Decode(decode_error(
            "the network configuration must be a JSON object",
        ))));
    }
    let requested = match raw.get("cniVersion") {
        None => IMPLIED_WHEN_MISSING.to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    let version: Version = requested
        .parse()
        .map_err(|_| fail(Error::IncompatibleVersion { requested }))?;
    let since = match command {
        Command::Check => Some(Version::V0_4_0),
        Command::Status | Command::Gc => Some(Version::V1_1_0),
        _ => None,
    };
    if let Some(since) = since
        && version < since
    {
        return Err(fail(Error::CommandTooNew {
            command: command.as_str(),
            version,
            since,
        }));
    }
    let conf = NetConf::deserialize_from(&raw).map_err(|e| fail(Error::Config(e)))?;
    validate_network_name(&conf.name).map_err(fail)?;
    Ok(Request { version, conf })
}

impl NetConf {
    /// Decodes the configuration; an error names the field's path (`capture.proxy_uid: …`).
    fn deserialize_from(raw: &Value) -> Result<Self, serde_json::Error> {
        serde_path_to_error::deserialize(raw).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner().to_string();
            // serde quotes keys and values as given: escape what would break the line.
            let msg = if path == "." {
                inner
            } else {
                format!("{path}: {inner}")
            };
            decode_error(&escape_controls(&msg))
        })
    }
}

/// `text` with control characters escaped (`\n`, `\u{1b}`), so that it stays one line.
fn escape_controls(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// libcni's rule for network names.
fn validate_network_name(name: &str) -> Result<(), Error> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(Error::Config(decode_error(&format!(
            "invalid network name {name:?}: it must start with a letter or digit and contain only letters, digits, '_', '.' and '-'"
        ))))
    }
}

/// Checks that `prevResult` can be passed on as a result of `version`.
///
/// # Errors
/// [`Error::PrevResult`] (code 6) when it is not a result object, [`Error::PrevResultVersion`]
/// (code 1) when it names another version.
pub fn check_prev_result(prev: Option<&Value>, version: Version) -> Result<(), Error> {
    match prev {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Object(result)) => match result.get("cniVersion") {
            None => Ok(()),
            Some(Value::String(v)) if v == version.as_str() => Ok(()),
            Some(Value::String(v)) => Err(Error::PrevResultVersion {
                found: v.clone(),
                config: version,
            }),
            Some(_) => Err(Error::PrevResult("its cniVersion is not a string")),
        },
        Some(_) => Err(Error::PrevResult("it is not a JSON object")),
    }
}

/// The result `ADD` prints: `prevResult` unchanged but for `cniVersion`, or a minimal result.
pub fn add_result(prev: Option<&Value>, version: Version) -> Value {
    match prev {
        Some(Value::Object(result)) if result.contains_key("cniVersion") => {
            let mut out = result.clone();
            out["cniVersion"] = version.as_str().into();
            Value::Object(out)
        }
        Some(Value::Object(result)) => {
            let mut out = Map::with_capacity(result.len() + 1);
            out.insert("cniVersion".into(), version.as_str().into());
            out.extend(result.iter().map(|(k, v)| (k.clone(), v.clone())));
            Value::Object(out)
        }
        _ => json!({ "cniVersion": version.as_str() }),
    }
}

/// `VERSION`'s report, in the version asked for when it is supported, else the newest.
pub fn version_report(input: &[u8]) -> Value {
    let asked = serde_json::from_slice::<Value>(input)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str()?.parse::<Version>().ok())
        .unwrap_or(Version::LATEST);
    json!({
        "cniVersion": asked.as_str(),
        "supportedVersions": SUPPORTED.iter().map(|v| v.as_str()).collect::<Vec<_>>(),
    })
}

/// Runs one invocation. `var` reads the environment; `stdin` is read for every command.
pub fn run(var: impl Fn(&str) -> Option<OsString>, stdin: &mut dyn Read) -> Outcome {
    if var("CNI_COMMAND").is_none_or(|c| c.is_empty()) {
        // Not called by a runtime (and stdin may be a terminal): say what this is, as skel does.
        eprintln!(
            "capture-cni {}: a chained CNI plugin for sidecar traffic capture\n\
             CNI protocol versions supported: {}\n\
             Install with: capture-cni install --conf-dir /etc/cni/net.d --bin-dir /opt/cni/bin",
            env!("CARGO_PKG_VERSION"),
            Version::supported_list().join(", ")
        );
        return Outcome {
            stdout: String::new(),
            exit: 0,
        };
    }
    // stderr at info until the configuration names its level, format and file.
    capture_log::init(capture_log::Config::default());
    let mut input = Vec::new();
    let read = stdin.read_to_end(&mut input);
    let version = reply_version(serde_json::from_slice::<Value>(&input).ok().as_ref());
    let env = match Env::read(var) {
        Ok(Some(env)) => env,
        Ok(None) => unreachable!("CNI_COMMAND is set"),
        Err(error) => {
            tracing::error!("{}", capture_core::chain(&error));
            return failure(&Failure { version, error });
        }
    };
    if env.command == Command::Version {
        // VERSION needs nothing from its input, not even a readable one.
        return Outcome {
            stdout: format!("{}\n", version_report(&input)),
            exit: 0,
        };
    }
    if let Err(e) = read {
        let error = Error::Stdin(e);
        if env.command != Command::Del {
            return failure(&Failure { version, error });
        }
        // DEL goes on with what was read, as with a configuration that does not decode.
        tracing::warn!("{}", capture_core::chain(&error));
    }
    match handle(&env, &input) {
        Ok(Some(result)) => Outcome {
            stdout: format!("{result}\n"),
            exit: 0,
        },
        Ok(None) => Outcome {
            stdout: String::new(),
            exit: 0,
        },
        Err(f) => {
            tracing::error!("{}", capture_core::chain(&f.error));
            failure(&f)
        }
    }
}

fn failure(f: &Failure) -> Outcome {
    Outcome {
        stdout: format!("{}\n", f.error.reply(&f.version)),
        exit: 1,
    }
}

/// Carries out a decoded command. Returns what to print on success.
///
/// # Errors
/// A [`Failure`] with the spec code and the version to reply in.
pub fn handle(env: &Env, input: &[u8]) -> Result<Option<Value>, Failure> {
    if env.command == Command::Del {
        return del(env, input).map(|()| None);
    }
    let request = decode(input, env.command)?;
    let Request { version, conf } = &request;
    let fail = |error| Failure {
        version: version.as_str().into(),
        error,
    };
    configure_log(conf.plugin_log_level, conf.log_format, conf.log_file.clone(), env);
    match env.command {
        Command::Add => add(env, conf, *version).map_err(fail),
        Command::Del => unreachable!("DEL is handled above"),
        Command::Check => check(env, conf, *version).map(|()| None).map_err(fail),
        Command::Status => {
            let works = capture::status(conf).map_err(fail)?;
            tracing::debug!("ready: {works} works");
            Ok(None)
        }
        Command::Gc => {
            let attachments = conf
                .valid_attachments
                .as_ref()
                .or(conf.attachments.as_ref())
                .map_or(0, Vec::len);
            let removed = capture::collect_lock_files(&conf.run_dir);
            tracing::debug!("{attachments} valid attachments; removed {removed} idle lock files");
            if conf.backend() == crate::conf::Backend::Ebpf {
                let valid = conf.valid_attachments.as_ref().or(conf.attachments.as_ref());
                let done = capture::ebpf_gc(conf, valid.map(Vec::as_slice)).map_err(fail)?;
                tracing::info!("{done}");
            }
            Ok(None)
        }
        Command::Version => Ok(Some(version_report(input))),
    }
}

/// What every log line of the invocation starts with: the command and the container.
/// Logs at the configuration's level and format, to stderr and its file, every line with the
/// command and the container.
fn configure_log(level: LogLevel, format: LogFormat, file: Option<PathBuf>, env: &Env) {
    capture_log::init(capture_log::Config {
        format: format.into(),
        levels: level.levels(),
        file: file.map(|path| capture_log::LogFile {
            path,
            max_bytes: capture_log::LogFile::DEFAULT_MAX_BYTES,
        }),
    });
    capture_log::set_context(log_context(env, None));
}

/// The fields every line of this invocation carries; the pod's once it is known.
fn log_context(env: &Env, pod: Option<&Pod<'_>>) -> Vec<(&'static str, String)> {
    let mut fields = vec![("command", env.command.to_string())];
    if let Some(id) = &env.container_id {
        fields.push(("container_id", id.clone()));
    }
    if let Some(netns) = &env.netns {
        fields.push(("netns", netns.display().to_string()));
    }
    if let Some(ifname) = &env.ifname {
        fields.push(("ifname", ifname.clone()));
    }
    if let Some(pod) = pod {
        fields.extend(pod.namespace.map(|ns| ("pod_namespace", ns.to_owned())));
        fields.extend(pod.name.map(|name| ("pod", name.to_owned())));
    }
    fields
}

fn add(env: &Env, conf: &NetConf, version: Version) -> Result<Option<Value>, Error> {
    check_prev_result(conf.prev_result.as_ref(), version)?;
    let result = add_result(conf.prev_result.as_ref(), version);
    // The settings are checked for every pod, so a broken configuration shows at once rather
    // than at the first injected pod.
    check_settings(conf)?;
    let pod = Pod::new(&env.args, conf);
    capture_log::set_context(log_context(env, Some(&pod)));
    if let Some(skip) = skip_reason(conf, &pod) {
        tracing::info!("pod {} skipped: {skip}", pod.display_name());
        return Ok(Some(result));
    }
    let (capture, ns) = pod_capture(env, conf, &pod)?;
    let who = capture::Attachment {
        container_id: env.container_id.as_deref().unwrap_or_default(),
        ifname: env.ifname.as_deref().unwrap_or_default(),
        pod_namespace: pod.namespace,
        pod_name: pod.name,
        netns: env.netns.as_deref().unwrap_or(std::path::Path::new("")),
    };
    let outcome = capture::add(&ns, conf, &capture, &who)?;
    for warning in &outcome.warnings {
        tracing::warn!("{warning}");
    }
    for step in &outcome.steps {
        tracing::info!("pod {}: {step}", pod.display_name());
    }
    Ok(Some(result))
}

/// The check ADD makes of a decoded configuration's settings for every pod, whatever its
/// annotations: the capture they describe must be one `to_spec` accepts.
///
/// # Errors
/// [`Error::ConfigValue`] naming the `capture.*` field.
pub fn check_settings(conf: &NetConf) -> Result<(), Error> {
    PodCapture::new(&conf.capture, &BTreeMap::new())?.to_spec(&capture_core::Detected::default())?;
    Ok(())
}

/// Checks a plugin entry as the installer writes it (no `cniVersion`, which a list's plugins
/// take from the list) the way ADD will read it: [`decode`] and [`check_settings`]. Stricter
/// than ADD in one way: a top-level key the plugin does not read is refused (ADD must ignore
/// the runtime's own keys; an entry the installer writes has none, so such a key is a typo).
/// `capabilities` and `cniVersion` are the spec's.
///
/// # Errors
/// [`Error::Config`] or [`Error::ConfigValue`], naming the field.
pub fn check_entry(entry: &Map<String, Value>) -> Result<(), Error> {
    let fields = NetConf::fields();
    if let Some(key) = entry
        .keys()
        .find(|k| !fields.contains(&k.as_str()) && !matches!(k.as_str(), "capabilities" | "cniVersion"))
    {
        let e: serde_json::Error = serde::de::Error::unknown_field(key, fields);
        return Err(Error::Config(decode_error(&escape_controls(&e.to_string()))));
    }
    let mut conf = entry.clone();
    conf.insert("cniVersion".into(), Version::LATEST.as_str().into());
    let input = serde_json::to_vec(&conf).expect("a JSON object always serialises");
    let Request { conf, .. } = decode(&input, Command::Add).map_err(|f| f.error)?;
    check_settings(&conf)
}

/// The log settings of a configuration that does not decode, each field read on its own.
fn log_settings(input: &[u8]) -> (LogLevel, LogFormat, Option<PathBuf>) {
    let raw = serde_json::from_slice::<Value>(input).ok();
    let field = |key| raw.as_ref()?.get(key).cloned();
    let level = field("plugin_log_level")
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default();
    let format = field("log_format")
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default();
    let file = field("log_file").and_then(|v| serde_json::from_value(v).ok());
    (level, format, file)
}

/// `DEL`: succeeds whatever the configuration says (see the module's documentation).
fn del(env: &Env, input: &[u8]) -> Result<(), Failure> {
    let decoded = decode(input, Command::Del);
    let defaults;
    let (conf, version) = match &decoded {
        Ok(Request { version, conf }) => {
            configure_log(conf.plugin_log_level, conf.log_format, conf.log_file.clone(), env);
            (conf, version.as_str().to_owned())
        }
        Err(failure) => {
            let (level, format, file) = log_settings(input);
            configure_log(level, format, file, env);
            tracing::warn!("{}; DEL goes on with the default settings", failure.error);
            defaults = NetConf::default();
            (&defaults, failure.version.clone())
        }
    };
    let fail = |error| Failure {
        version: version.clone(),
        error,
    };
    let pod = Pod::new(&env.args, conf);
    capture_log::set_context(log_context(env, Some(&pod)));
    // ADD's skip decision, when the configuration says what it was.
    if decoded.is_ok()
        && let Some(skip) = skip_reason(conf, &pod)
    {
        tracing::debug!("pod {} skipped: {skip}", pod.display_name());
        return Ok(());
    }
    let Some(path) = env.netns.as_deref() else {
        tracing::info!(
            "pod {}: no network namespace, nothing to remove",
            pod.display_name()
        );
        forget_ebpf_attachment(env, conf, &pod);
        return Ok(());
    };
    let ns = match NetNs::open(path) {
        Ok(ns) => ns,
        Err(e) if e.is_gone() => {
            tracing::info!(
                "pod {}: {} is gone, nothing to remove",
                pod.display_name(),
                path.display()
            );
            forget_ebpf_attachment(env, conf, &pod);
            return Ok(());
        }
        Err(e) => return Err(fail(crate::netns::open_error(e, path))),
    };
    // Settings ADD would have refused: the configuration alone names the same chains; if
    // even that is refused (a value only a newer plugin knows), the defaults do.
    let usable = |conf: &CaptureConf, annotations| {
        PodCapture::new(conf, annotations)
            .and_then(|c| c.to_spec(&capture_core::Detected::default()).map(|_| c))
    };
    let no_annotations = BTreeMap::new();
    let capture = usable(&conf.capture, pod.annotations)
        .or_else(|e| {
            tracing::warn!("{e}; removing capture as the configuration alone describes it");
            usable(&conf.capture, &no_annotations)
        })
        .or_else(|e| {
            tracing::warn!("{e}; removing capture as the defaults describe it");
            usable(&CaptureConf::default(), &no_annotations)
        })
        .map_err(fail)?;
    if capture::del(&ns, conf, &capture).map_err(fail)? {
        tracing::info!("pod {}: capture removed", pod.display_name());
    } else {
        tracing::info!("pod {}: no capture there, nothing to remove", pod.display_name());
    }
    Ok(())
}

/// DEL without the pod's namespace on eBPF: the pod's entries are node state that outlives it,
/// so the enrollment recorded for the attachment is removed now rather than at the next GC. A
/// failure is logged, never returned: DEL must not be blocked, and GC still reclaims the pod.
fn forget_ebpf_attachment(env: &Env, conf: &NetConf, pod: &Pod<'_>) {
    if conf.backend() != crate::conf::Backend::Ebpf {
        return;
    }
    let (Some(container_id), Some(ifname)) = (env.container_id.as_deref(), env.ifname.as_deref()) else {
        return;
    };
    match capture::ebpf_forget(conf, container_id, ifname) {
        Ok(Some(done)) => tracing::info!("pod {}: {done}", pod.display_name()),
        Ok(None) => {}
        Err(e) => tracing::warn!(
            "pod {}: {}; GC reclaims it later",
            pod.display_name(),
            capture_core::chain(&e)
        ),
    }
}

fn check(env: &Env, conf: &NetConf, version: Version) -> Result<(), Error> {
    check_prev_result(conf.prev_result.as_ref(), version)?;
    let pod = Pod::new(&env.args, conf);
    capture_log::set_context(log_context(env, Some(&pod)));
    if let Some(skip) = skip_reason(conf, &pod) {
        tracing::debug!("pod {} skipped: {skip}", pod.display_name());
        return Ok(());
    }
    let (capture, ns) = pod_capture(env, conf, &pod)?;
    capture::check(&ns, conf, &capture)
}

/// For ADD and CHECK: the pod's settings, then its namespace. Settings that can never be
/// applied (the pod's annotations included) are a configuration error (code 7), found before
/// the namespace is touched.
fn pod_capture(env: &Env, conf: &NetConf, pod: &Pod<'_>) -> Result<(PodCapture, NetNs), Error> {
    let capture = PodCapture::new(&conf.capture, pod.annotations)?;
    capture.to_spec(&capture_core::Detected::default())?;
    let annotations = capture.annotations_used();
    tracing::info!(
        backend = ?conf.backend(),
        "pod {}: capture from the configuration{}",
        pod.display_name(),
        if annotations.is_empty() {
            String::new()
        } else {
            format!(" and the annotations {}", annotations.join(", "))
        }
    );
    tracing::debug!("pod {}: {:?}", pod.display_name(), capture.config);
    let path = env
        .netns
        .as_deref()
        .unwrap_or_else(|| panic!("Env::read requires CNI_NETNS for {}", env.command));
    let ns = NetNs::open(path).map_err(|e| crate::netns::open_error(e, path))?;
    Ok((capture, ns))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by fuzzing: a key or value with a control character made a multi-line message,
    /// which also forged lines in the plugin's log.
    #[test]
    fn decode_errors_are_one_line_whatever_the_keys() {
        for conf in [
            r#"{"cniVersion":"1.0.0","name":"n","type":"t","capture":{"tunne\np/rt":15008}}"#,
            r#"{"cniVersion":"1.0.0","name":"n","type":"t","pod_selection":"all\r\nforged"}"#,
        ] {
            let failure = decode(conf.as_bytes(), Command::Add).unwrap_err();
            let msg = failure.error.to_string();
            assert_eq!(failure.error.cni_code(), 7, "{msg}");
            assert!(!msg.contains(['\n', '\r']), "{msg:?}");
        }
        let failure = decode(
            br#"{"cniVersion":"1.0.0","name":"n","type":"t","capture":{"tunne\np/rt":1}}"#,
            Command::Add,
        )
        .unwrap_err();
        let msg = failure.error.to_string();
        assert!(
            msg.starts_with(
                r"invalid network configuration: capture.tunne\np/rt: unknown field `tunne\np/rt`"
            ),
            "{msg}"
        );
    }
}
