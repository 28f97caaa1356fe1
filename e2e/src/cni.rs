//! Running a CNI network configuration list the way a container runtime does.
//!
//! Each plugin of the list is executed in turn from `CNI_PATH`, with the `CNI_*` environment
//! variables and its own configuration on stdin: the list's `name` and `cniVersion`, the
//! previous plugin's result as `prevResult`, and the `runtimeConfig` entries for the
//! capabilities it declares. ADD and CHECK go in list order, DEL in reverse (CNI spec 1.1,
//! "Network configuration list runtime semantics"). Plugins run inside the "node" network
//! namespace given to [`Runtime::new`], so a bridge plugin creates its bridge there and never in
//! the machine's own namespace.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::{Map, Value, json};

use crate::NetNs;

/// Where Debian's containernetworking-plugins package installs the reference plugins.
pub const DEBIAN_CNI_PLUGINS: &str = "/usr/lib/cni";

/// The CNI versions Debian's reference plugins speak (1.1.1 of the package stops at 1.0.0).
pub const DEBIAN_CNI_VERSIONS: [&str; 4] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0"];

/// A plugin invocation that failed: the spec's error object, or whatever the plugin printed.
#[derive(Debug, Clone, PartialEq)]
pub struct CniFailure {
    /// The plugin's `type`.
    pub plugin: String,
    /// The exit code.
    pub exit_code: Option<i32>,
    /// The error object the plugin printed on stdout, if it was JSON.
    pub error: Option<Value>,
    /// The plugin's stderr.
    pub stderr: String,
}

impl CniFailure {
    /// The error code (`code`) of the spec's error object.
    #[must_use]
    pub fn code(&self) -> Option<u64> {
        self.error.as_ref()?.get("code")?.as_u64()
    }

    /// The error message (`msg`) of the spec's error object.
    #[must_use]
    pub fn msg(&self) -> Option<&str> {
        self.error.as_ref()?.get("msg")?.as_str()
    }
}

/// One attachment: a container's network namespace and interface, as a runtime tracks it.
#[derive(Debug, Clone)]
pub struct Attachment {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS`: the path of the container's network namespace.
    pub netns: PathBuf,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_ARGS`, e.g. `IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web`.
    pub args: String,
    /// Values for the capabilities plugins declare (`io.kubernetes.cri.pod-annotations`, …).
    pub runtime_config: Map<String, Value>,
}

/// A runtime executing one configuration list from a node network namespace.
#[derive(Debug)]
pub struct Runtime<'a> {
    node: &'a NetNs,
    cni_path: Vec<PathBuf>,
    conflist: Value,
}

impl<'a> Runtime<'a> {
    /// A runtime for `conflist` whose plugins are looked up in `cni_path` and run in `node`.
    ///
    /// # Panics
    /// When `conflist` has no `plugins` array.
    #[must_use]
    pub fn new(node: &'a NetNs, cni_path: Vec<PathBuf>, conflist: Value) -> Self {
        assert!(
            conflist["plugins"].is_array(),
            "a configuration list needs plugins: {conflist}"
        );
        Self {
            node,
            cni_path,
            conflist,
        }
    }

    fn plugins(&self) -> &[Value] {
        self.conflist["plugins"].as_array().map_or(&[], Vec::as_slice)
    }

    /// The configuration a plugin receives on stdin.
    fn plugin_config(&self, plugin: &Value, prev: Option<&Value>, attachment: &Attachment) -> Value {
        let mut conf = plugin.as_object().cloned().unwrap_or_default();
        conf.insert("name".into(), self.conflist["name"].clone());
        conf.insert("cniVersion".into(), self.conflist["cniVersion"].clone());
        conf.remove("capabilities");
        if let Some(prev) = prev {
            conf.insert("prevResult".into(), prev.clone());
        }
        let mut runtime_config = Map::new();
        if let Some(caps) = plugin["capabilities"].as_object() {
            for (cap, enabled) in caps {
                if enabled.as_bool() == Some(true)
                    && let Some(value) = attachment.runtime_config.get(cap)
                {
                    runtime_config.insert(cap.clone(), value.clone());
                }
            }
        }
        if !runtime_config.is_empty() {
            conf.insert("runtimeConfig".into(), Value::Object(runtime_config));
        }
        Value::Object(conf)
    }

    /// Runs one plugin with `command` and returns its stdout as JSON (`Null` when empty).
    ///
    /// # Errors
    /// The plugin's failure.
    ///
    /// # Panics
    /// When the plugin is not found in `CNI_PATH` or cannot be started.
    pub fn exec(
        &self,
        command: &str,
        config: &Value,
        attachment: &Attachment,
    ) -> Result<Value, Box<CniFailure>> {
        let plugin = config["type"].as_str().expect("plugin type").to_owned();
        let binary = self
            .cni_path
            .iter()
            .map(|dir| dir.join(&plugin))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("plugin {plugin} not found in {:?}", self.cni_path));
        let path = std::env::join_paths(&self.cni_path).expect("CNI_PATH without ':'");
        let mut child = self
            .node
            .command(&binary)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &attachment.container_id)
            .env("CNI_NETNS", &attachment.netns)
            .env("CNI_IFNAME", &attachment.ifname)
            .env("CNI_ARGS", &attachment.args)
            .env("CNI_PATH", path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary.display()));
        let stdin = config.to_string();
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(stdin.as_bytes())
            .expect("write plugin stdin");
        let out = child.wait_with_output().expect("wait for the plugin");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let parsed = if stdout.trim().is_empty() {
            Ok(Value::Null)
        } else {
            serde_json::from_str(&stdout)
        };
        if out.status.success() {
            return Ok(
                parsed.unwrap_or_else(|e| panic!("{plugin} printed non-JSON on success ({e}): {stdout}"))
            );
        }
        Err(Box::new(CniFailure {
            plugin,
            exit_code: out.status.code(),
            error: parsed.ok(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }))
    }

    /// ADD: every plugin in order, each getting the previous result; returns the last result.
    ///
    /// # Errors
    /// The first plugin that fails.
    pub fn add(&self, attachment: &Attachment) -> Result<Value, Box<CniFailure>> {
        Ok(self.add_each(attachment)?.pop().unwrap_or(Value::Null))
    }

    /// ADD, returning every plugin's result in list order (a chained plugin's result can then
    /// be compared with the one it was given).
    ///
    /// # Errors
    /// The first plugin that fails.
    pub fn add_each(&self, attachment: &Attachment) -> Result<Vec<Value>, Box<CniFailure>> {
        let mut results: Vec<Value> = Vec::new();
        for plugin in self.plugins() {
            let config = self.plugin_config(plugin, results.last(), attachment);
            results.push(self.exec("ADD", &config, attachment)?);
        }
        Ok(results)
    }

    /// CHECK: every plugin in order, each given the ADD result as `prevResult`. CHECK exists
    /// from CNI 0.4.0 on; for older lists a runtime sends nothing, and neither does this.
    ///
    /// # Errors
    /// The first plugin that fails.
    pub fn check(&self, attachment: &Attachment, result: &Value) -> Result<(), Box<CniFailure>> {
        if matches!(
            self.conflist["cniVersion"].as_str(),
            Some("0.1.0" | "0.2.0" | "0.3.0" | "0.3.1")
        ) {
            return Ok(());
        }
        for plugin in self.plugins() {
            self.exec(
                "CHECK",
                &self.plugin_config(plugin, Some(result), attachment),
                attachment,
            )?;
        }
        Ok(())
    }

    /// DEL: every plugin in reverse order, given the ADD result when there is one.
    ///
    /// # Errors
    /// The first plugin that fails.
    pub fn del(&self, attachment: &Attachment, result: Option<&Value>) -> Result<(), Box<CniFailure>> {
        for plugin in self.plugins().iter().rev() {
            self.exec("DEL", &self.plugin_config(plugin, result, attachment), attachment)?;
        }
        Ok(())
    }
}

/// A `bridge` + `host-local` configuration list on subnet `10.250.<index>.0/24`, with
/// `extra` plugins chained after them; IPAM state goes to `data_dir`.
#[must_use]
pub fn bridge_conflist(version: &str, index: u8, data_dir: &Path, extra: &[Value]) -> Value {
    let mut plugins = vec![json!({
        "type": "bridge",
        "bridge": format!("capbr{index}"),
        "isGateway": true,
        "ipMasq": false,
        "ipam": {
            "type": "host-local",
            "ranges": [[{ "subnet": format!("10.250.{index}.0/24") }]],
            "dataDir": data_dir,
        },
    })];
    plugins.extend(extra.iter().cloned());
    json!({ "cniVersion": version, "name": format!("capture-test-{index}"), "plugins": plugins })
}
