//! The network configuration read from stdin: the spec's fields, and this plugin's own.
//!
//! ```json
//! {
//!   "cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "capture-cni",
//!   "capabilities": {"io.kubernetes.cri.pod-annotations": true},
//!   "exclude_namespaces": ["kube-system"],
//!   "pod_selection": "injected",
//!   "plugin_log_level": "info",
//!   "log_file": "/var/log/capture-cni.log",
//!   "log_format": "json",
//!   "run_dir": "/run/capture-cni",
//!   "capture": {"backend": "iptables", "iptables_flavor": "auto", "proxy_uid": 1337, "…": "…"}
//! }
//! ```
//!
//! Every plugin field is optional; the defaults are Istio's CNI defaults
//! (see [`CaptureConf`]). Unknown top-level keys are ignored (runtimes add their own, such as
//! `runtimeConfig` and `args`); unknown keys inside `capture` are rejected, so a typo is an
//! error rather than a silently ignored setting. Fields that hold settings (`capture`,
//! `runtimeConfig`, each GC attachment) must be JSON objects: serde's derived structs would
//! also take an array and fill the fields by position.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;

use capture_core::{FlavorChoice, Ipv6Mode, ValueError};
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The capability through which containerd passes a pod's annotations.
pub const POD_ANNOTATIONS_CAPABILITY: &str = "io.kubernetes.cri.pod-annotations";

/// Where the node's eBPF programs are pinned unless `capture.bpffs` says otherwise.
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf";

fn default_bpffs() -> PathBuf {
    PathBuf::from(DEFAULT_BPFFS)
}

/// Where lock files live unless `run_dir` says otherwise.
pub const DEFAULT_RUN_DIR: &str = "/run/capture-cni";

/// One plugin invocation's configuration (stdin), minus `cniVersion`, which is checked before
/// this is decoded.
#[derive(Debug, Clone, Deserialize)]
pub struct NetConf {
    /// The network's name.
    pub name: String,
    /// The plugin's binary name (`capture-cni`).
    #[serde(rename = "type")]
    pub plugin_type: String,
    /// The previous plugin's result, kept as raw JSON so that it is passed on unchanged.
    #[serde(rename = "prevResult", default)]
    pub prev_result: Option<Value>,
    /// What the runtime passes for the capabilities the plugin declares.
    #[serde(rename = "runtimeConfig", default, deserialize_with = "object")]
    pub runtime_config: RuntimeConfig,
    /// Pods in these namespaces are never captured (Istio's `exclude_namespaces`).
    #[serde(default, deserialize_with = "null_as_default")]
    pub exclude_namespaces: Vec<String>,
    /// Which pods are captured.
    #[serde(default)]
    pub pod_selection: PodSelection,
    /// How much is logged (Istio's `plugin_log_level`).
    #[serde(default)]
    pub plugin_log_level: LogLevel,
    /// A file that log lines are appended to, besides stderr; it is kept under about 10 MiB
    /// (at 10 MiB it becomes `<file>.1` and a new one starts), as Istio's plugin keeps its own.
    #[serde(default)]
    pub log_file: Option<PathBuf>,
    /// `text` (the default) or `json`: one JSON object per line, as Istio's plugin logs.
    #[serde(default)]
    pub log_format: LogFormat,
    /// Where per-namespace xtables lock files are kept (`/run/capture-cni`).
    #[serde(default = "default_run_dir")]
    pub run_dir: PathBuf,
    /// Istio's `native_nftables`: `true` is `capture.backend: "nftables"`.
    #[serde(default)]
    pub native_nftables: bool,
    /// The capture applied to every selected pod, before annotations.
    #[serde(default, deserialize_with = "object")]
    pub capture: CaptureConf,
    /// GC: the attachments still in use (spec 1.1.0 spelling).
    #[serde(rename = "cni.dev/valid-attachments", default, deserialize_with = "objects")]
    pub valid_attachments: Option<Vec<Attachment>>,
    /// GC: the same list under the key the spec-v1.1.0 text used; libcni sends both.
    #[serde(rename = "cni.dev/attachments", default, deserialize_with = "objects")]
    pub attachments: Option<Vec<Attachment>>,
}

impl NetConf {
    /// The backend the configuration names: `capture.backend`, or nftables when Istio's
    /// `native_nftables` is set.
    pub fn backend(&self) -> Backend {
        if self.native_nftables {
            Backend::Nftables
        } else {
            self.capture.backend
        }
    }
}

impl Default for NetConf {
    /// Every plugin field at its default, for a `DEL` whose configuration cannot be decoded.
    fn default() -> Self {
        Self {
            name: String::new(),
            plugin_type: String::new(),
            prev_result: None,
            runtime_config: RuntimeConfig::default(),
            exclude_namespaces: Vec::new(),
            pod_selection: PodSelection::default(),
            plugin_log_level: LogLevel::default(),
            log_file: None,
            log_format: LogFormat::default(),
            run_dir: default_run_dir(),
            native_nftables: false,
            capture: CaptureConf::default(),
            valid_attachments: None,
            attachments: None,
        }
    }
}

impl NetConf {
    /// The pod's addresses as the previous plugin reported them: `prevResult.ips[].address`
    /// (CIDR strings, CNI 0.3.0 and later), in order. Entries that are not addresses are
    /// skipped; an empty list means prevResult does not say.
    pub fn prev_result_addresses(&self) -> Vec<IpAddr> {
        let ips = self
            .prev_result
            .as_ref()
            .and_then(|prev| prev.get("ips"))
            .and_then(Value::as_array);
        ips.into_iter()
            .flatten()
            .filter_map(|ip| ip.get("address")?.as_str())
            .filter_map(|cidr| cidr.split_once('/').map_or(cidr, |(addr, _)| addr).parse().ok())
            .collect()
    }
}

impl NetConf {
    /// The top-level keys the plugin reads, as its derived decoder lists them (renames
    /// included), so the installer can refuse a key ADD would ignore without a second list.
    pub fn fields() -> &'static [&'static str] {
        let fields = Cell::new(&[][..]);
        // The probe always fails after recording the list; only the list is wanted.
        let _ = Self::deserialize(FieldProbe(&fields));
        fields.get()
    }
}

/// A deserializer that records the field list a derived struct decoder offers it, then
/// fails.
struct FieldProbe<'a>(&'a Cell<&'static [&'static str]>);

impl<'de> Deserializer<'de> for FieldProbe<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("not a struct"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.set(fields);
        Err(de::Error::custom("field names recorded"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option
        unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
    }
}

fn default_run_dir() -> PathBuf {
    PathBuf::from(DEFAULT_RUN_DIR)
}

/// Decodes a struct-typed field from a JSON object only (see [`ObjectOnly`]).
fn object<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    T::deserialize(ObjectOnly(d))
}

/// Decodes an optional list of structs, each from a JSON object only.
fn objects<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Vec<T>>, D::Error> {
    struct Item<T>(T);
    impl<'de, T: Deserialize<'de>> Deserialize<'de> for Item<T> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            object(d).map(Item)
        }
    }
    let items = Option::<Vec<Item<T>>>::deserialize(d)?;
    Ok(items.map(|items| items.into_iter().map(|Item(t)| t).collect()))
}

/// A deserializer that offers a struct's visitor a map only. Derived struct visitors also
/// accept a sequence and fill the fields by position, so `"capture": ["iptables", "legacy",
/// 15002]` would otherwise be read as `backend`, `iptables_flavor` and `outbound_port`.
struct ObjectOnly<D>(D);

impl<'de, D: Deserializer<'de>> Deserializer<'de> for ObjectOnly<D> {
    type Error = D::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.0.deserialize_any(visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_map(AnObject(visitor))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option
        unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
    }
}

/// A struct's visitor that takes a map and nothing else.
struct AnObject<V>(V);

impl<'de, V: Visitor<'de>> Visitor<'de> for AnObject<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.0.visit_map(map)
    }
}

fn null_as_default<'de, D: Deserializer<'de>, T: Default + Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// The runtime-supplied part of the configuration that this plugin reads.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RuntimeConfig {
    /// The pod's annotations (containerd's `io.kubernetes.cri.pod-annotations` capability).
    #[serde(
        rename = "io.kubernetes.cri.pod-annotations",
        default,
        deserialize_with = "null_as_default"
    )]
    pub pod_annotations: BTreeMap<String, String>,
}

/// A container attachment named in a GC request.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Attachment {
    /// The container.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// Its interface.
    pub ifname: String,
}

/// Which pods the plugin captures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PodSelection {
    /// Istio's rules: a Kubernetes pod (name and namespace in `CNI_ARGS`), not in an excluded
    /// namespace, not annotated `sidecar.istio.io/inject: "false"`, and carrying the
    /// injector's `sidecar.istio.io/status` annotation.
    #[default]
    Injected,
    /// Every container the plugin runs for, except those in excluded namespaces or annotated
    /// `sidecar.istio.io/inject: "false"`. For runtimes that pass no pod annotations (podman)
    /// or no Kubernetes identity.
    All,
}

/// How much is logged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Nothing.
    None,
    /// Failures only.
    Error,
    /// Failures and surprises.
    Warn,
    /// One line per command (the default).
    #[default]
    Info,
    /// Everything, including the configuration used.
    Debug,
}

impl LogLevel {
    /// The level's name as it is logged.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Error => "error",
            Self::Warn => "warn",
            Self::Info => "info",
            Self::Debug => "debug",
        }
    }
}

impl LogLevel {
    /// The level as capture-log's levels (every scope).
    pub fn levels(self) -> capture_log::Levels {
        capture_log::Levels::all(match self {
            Self::None => capture_log::LevelFilter::OFF,
            Self::Error => capture_log::LevelFilter::ERROR,
            Self::Warn => capture_log::LevelFilter::WARN,
            Self::Info => capture_log::LevelFilter::INFO,
            Self::Debug => capture_log::LevelFilter::DEBUG,
        })
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Tab-separated, for people.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl From<LogFormat> for capture_log::Format {
    fn from(format: LogFormat) -> Self {
        match format {
            LogFormat::Text => Self::Text,
            LogFormat::Json => Self::Json,
        }
    }
}

/// The backend that applies capture.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// `iptables-restore`, as capture-init and istio-iptables use it.
    #[default]
    Iptables,
    /// Istio's native nftables rule set, written over netlink in one transaction (no binary).
    Nftables,
    /// The node's eBPF programs (loaded by the node agent): the pod's network namespace is
    /// enrolled in their maps; no rule in the pod at all. Needs a build with the `ebpf` feature.
    Ebpf,
}

/// The capture every selected pod gets, before its annotations override parts of it.
///
/// Values that are lists take a comma-separated string (`"15020,15021"`, as the annotations
/// do) or a JSON array (`[15020, 15021]`); ports and ids take a number or a string.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CaptureConf {
    /// The backend: `"iptables"`, `"nftables"` or `"ebpf"`.
    pub backend: Backend,
    /// eBPF: the bpf filesystem the node's programs are pinned in (`/sys/fs/bpf`).
    #[serde(default = "default_bpffs")]
    pub bpffs: PathBuf,
    /// eBPF: the cgroup v2 directory the node's programs act on (default: the cgroup v2 root).
    #[serde(default)]
    pub cgroup: Option<PathBuf>,
    /// `"auto"` (detect, as capture-init does: the flavor holding rules in the pod wins, else
    /// the node's `iptables` alternative, else nft), `"legacy"` or `"nft"`.
    #[serde(deserialize_with = "by_name")]
    pub iptables_flavor: FlavorChoice,
    /// Where captured outbound connections go (istio-iptables `-p`): 15001.
    pub outbound_port: ConfText,
    /// Where captured inbound connections go (`-z`): 15006.
    pub inbound_port: ConfText,
    /// The tunnel port, never captured inbound (`-e`): 15008.
    pub tunnel_port: ConfText,
    /// The proxy's uid(s), whose traffic is not captured (`-u`): 1337. Istio's plugin takes
    /// it from the proxy container's `runAsUser`; there is no pod spec here.
    pub proxy_uid: ConfText,
    /// The proxy's gid(s) (`-g`): 1337.
    pub proxy_gid: ConfText,
    /// `"REDIRECT"` or `"TPROXY"` (`-m`).
    pub interception_mode: String,
    /// Outbound destinations captured, `"*"` or CIDRs (`-i`): `"*"`.
    pub include_outbound_ip_ranges: ConfText,
    /// Outbound destinations never captured (`-x`): none.
    pub exclude_outbound_ip_ranges: ConfText,
    /// Inbound ports captured, `"*"` or ports (`-b`): `"*"`.
    pub include_inbound_ports: ConfText,
    /// Inbound ports not captured (`-d`): 15020,15021,15090. Istio's 15020, 15021 and 15090
    /// are always added.
    pub exclude_inbound_ports: ConfText,
    /// Outbound ports always captured (`-q`): none.
    pub include_outbound_ports: ConfText,
    /// Outbound ports never captured (`-o`): 15020.
    pub exclude_outbound_ports: ConfText,
    /// Interfaces whose traffic is never captured (`-c`): none.
    pub exclude_interfaces: ConfText,
    /// Virtual interfaces whose inbound traffic is treated as outbound (`-k`): none.
    pub reroute_virtual_interfaces: ConfText,
    /// Capture DNS to the agent's resolver (Istio's `ISTIO_META_DNS_CAPTURE`, which sets
    /// `--redirect-dns` and `--capture-all-dns`): false.
    pub redirect_dns: bool,
    /// Drop packets conntrack marks INVALID (`INVALID_DROP`): false.
    pub drop_invalid: bool,
    /// `"auto"` (default), `"first-address"`, `"on"` or `"off"` (see [`Ipv6Mode`]). `"auto"`
    /// looks at prevResult's `ips` as well as the addresses of the pod's namespace (which also
    /// has any the primary plugin did not report).
    #[serde(deserialize_with = "by_name")]
    pub ipv6: Ipv6Mode,
    /// With `ipv6: "first-address"`, any IPv6 address turns IPv6 on (`ISTIO_DUAL_STACK`):
    /// false.
    pub dual_stack: bool,
    /// TPROXY packet mark (`-t`): 1337.
    pub tproxy_mark: ConfText,
    /// TPROXY routing table (`-r`): 133.
    pub tproxy_route_table: ConfText,
}

impl Default for CaptureConf {
    /// Istio's CNI defaults.
    fn default() -> Self {
        Self {
            backend: Backend::Iptables,
            bpffs: default_bpffs(),
            cgroup: None,
            iptables_flavor: FlavorChoice::Auto,
            outbound_port: ConfText::from("15001"),
            inbound_port: ConfText::from("15006"),
            tunnel_port: ConfText::from("15008"),
            proxy_uid: ConfText::from("1337"),
            proxy_gid: ConfText::from("1337"),
            interception_mode: "REDIRECT".into(),
            include_outbound_ip_ranges: ConfText::from("*"),
            exclude_outbound_ip_ranges: ConfText::default(),
            include_inbound_ports: ConfText::from("*"),
            exclude_inbound_ports: ConfText::from("15020,15021,15090"),
            include_outbound_ports: ConfText::default(),
            exclude_outbound_ports: ConfText::from("15020"),
            exclude_interfaces: ConfText::default(),
            reroute_virtual_interfaces: ConfText::default(),
            redirect_dns: false,
            drop_invalid: false,
            ipv6: Ipv6Mode::Auto,
            dual_stack: false,
            tproxy_mark: ConfText::from("1337"),
            tproxy_route_table: ConfText::from("133"),
        }
    }
}

/// Deserializes one of capture-core's named choices ([`FlavorChoice`], [`Ipv6Mode`]) from its
/// name, refusing any other with serde's message for an unknown variant.
fn by_name<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr<Err = ValueError>,
{
    let name = String::deserialize(d)?;
    name.parse().map_err(|e| match e {
        ValueError::Choice { expected } => de::Error::unknown_variant(&name, expected),
        other => de::Error::custom(other),
    })
}

/// A configuration value in istio-iptables' string form: a string as given, a number in
/// decimal, or an array joined with `,`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfText(pub String);

impl ConfText {
    /// The value as istio-iptables would take it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for ConfText {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

impl fmt::Display for ConfText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ConfText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TextVisitor { item: false }).map(ConfText)
    }
}

/// One array item of a [`ConfText`]: a string or a non-negative integer.
struct Scalar(String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TextVisitor { item: true }).map(Scalar)
    }
}

/// Reads a [`ConfText`] (`item: false`), or one item of its array (`item: true`: no `null`,
/// no nested array).
struct TextVisitor {
    item: bool,
}

impl<'de> Visitor<'de> for TextVisitor {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.item {
            "a string or a non-negative integer"
        } else {
            "a string, a non-negative integer, or an array of them"
        })
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_unit<E: de::Error>(self) -> Result<String, E> {
        if self.item {
            return Err(E::invalid_type(de::Unexpected::Unit, &self));
        }
        Ok(String::new())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<String, A::Error> {
        if self.item {
            return Err(de::Error::invalid_type(de::Unexpected::Seq, &self));
        }
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Scalar>()? {
            items.push(item.0);
        }
        Ok(items.join(","))
    }
}

#[cfg(test)]
mod tests {
    use capture_core::Flavor;
    use serde_json::json;

    use super::*;

    fn conf(v: Value) -> Result<NetConf, serde_json::Error> {
        serde_json::from_value(v)
    }

    #[test]
    fn defaults_are_istios() {
        let c = conf(json!({"name": "n", "type": "capture-cni"})).unwrap();
        assert_eq!(c.capture, CaptureConf::default());
        assert_eq!(c.capture.exclude_inbound_ports.as_str(), "15020,15021,15090");
        assert_eq!(c.capture.exclude_outbound_ports.as_str(), "15020");
        assert_eq!(c.pod_selection, PodSelection::Injected);
        assert_eq!(c.plugin_log_level, LogLevel::Info);
        assert_eq!(c.run_dir, PathBuf::from(DEFAULT_RUN_DIR));
        assert!(c.exclude_namespaces.is_empty() && c.prev_result.is_none());
    }

    #[test]
    fn values_take_strings_numbers_and_arrays() {
        let c = conf(json!({
            "name": "n", "type": "capture-cni",
            "exclude_namespaces": null,
            "capture": {
                "proxy_uid": 1000670000,
                "exclude_inbound_ports": [3333, "4444"],
                "include_outbound_ip_ranges": "10.0.0.0/8,192.168.0.0/16",
                "exclude_interfaces": null,
                "interception_mode": "TPROXY",
                "iptables_flavor": "nft",
                "ipv6": "off"
            },
            "runtimeConfig": {"io.kubernetes.cri.pod-annotations": {"a": "b"}, "portMappings": []},
        }))
        .unwrap();
        assert_eq!(c.capture.proxy_uid.as_str(), "1000670000");
        assert_eq!(c.capture.exclude_inbound_ports.as_str(), "3333,4444");
        assert_eq!(c.capture.exclude_interfaces.as_str(), "");
        assert_eq!(c.capture.iptables_flavor, FlavorChoice::Force(Flavor::Nft));
        assert_eq!(c.runtime_config.pod_annotations["a"], "b");
    }

    #[test]
    fn the_backend_is_named_in_capture_or_by_istios_native_nftables() {
        let base = json!({"name": "n", "type": "t"});
        assert_eq!(conf(base.clone()).unwrap().backend(), Backend::Iptables);
        let mut named = base.clone();
        named["capture"] = json!({"backend": "nftables"});
        assert_eq!(conf(named).unwrap().backend(), Backend::Nftables);
        let mut istio = base;
        istio["native_nftables"] = json!(true);
        assert_eq!(conf(istio).unwrap().backend(), Backend::Nftables);
    }

    #[test]
    fn typos_and_wrong_types_are_rejected() {
        let e = conf(json!({"name": "n", "type": "t", "capture": {"proxy_user": 1}})).unwrap_err();
        assert!(e.to_string().contains("unknown field `proxy_user`"), "{e}");
        // An unknown backend is named (eBPF is a backend now, issue 11).
        let e = conf(json!({"name": "n", "type": "t", "capture": {"backend": "bpf"}})).unwrap_err();
        assert!(e.to_string().contains("bpf"), "{e}");
        assert!(conf(json!({"name": "n", "type": "t", "capture": {"proxy_uid": -1}})).is_err());
        assert!(conf(json!({"type": "t"})).is_err());
        // Unknown top-level keys are the runtime's or another tool's business.
        assert!(conf(json!({"name": "n", "type": "t", "ipam": {}, "args": {"cni": {}}})).is_ok());
    }

    #[test]
    fn settings_are_objects_never_arrays() {
        for (field, value) in [
            ("capture", json!(["iptables", "legacy", 15002])),
            ("capture", json!([])),
            ("capture", json!(null)),
            ("runtimeConfig", json!([{"a": "b"}])),
            ("cni.dev/valid-attachments", json!([["c0ffee", "eth0"]])),
            (
                "cni.dev/attachments",
                json!([{"containerID": "c0ffee", "ifname": "eth0"}, ["x", "y"]]),
            ),
        ] {
            let mut v = json!({"name": "n", "type": "t"});
            v[field] = value.clone();
            let e = serde_path_to_error::deserialize::<_, NetConf>(&v).unwrap_err();
            assert!(e.path().to_string().starts_with(field), "{field}: {value}: {e}");
            assert!(
                e.to_string().contains("expected a JSON object"),
                "{field}: {value}: {e}"
            );
        }
        let c = conf(json!({
            "name": "n", "type": "t",
            "capture": {"iptables_flavor": "legacy"},
            "cni.dev/valid-attachments": [{"containerID": "c0ffee", "ifname": "eth0"}],
        }))
        .unwrap();
        assert_eq!(c.capture.iptables_flavor, FlavorChoice::Force(Flavor::Legacy));
        assert_eq!(c.valid_attachments.unwrap()[0].ifname, "eth0");
        // Nested errors still name their path.
        let v = json!({"name": "n", "type": "t", "capture": {"proxy_uid": -1}});
        let e = serde_path_to_error::deserialize::<_, NetConf>(&v).unwrap_err();
        assert_eq!(e.path().to_string(), "capture.proxy_uid");
    }

    #[test]
    fn ipv6_modes() {
        for (text, mode) in [
            ("auto", Ipv6Mode::Auto),
            ("first-address", Ipv6Mode::FirstAddress),
            ("on", Ipv6Mode::On),
            ("off", Ipv6Mode::Off),
        ] {
            let c = conf(json!({"name": "n", "type": "t", "capture": {"ipv6": text}})).unwrap();
            assert_eq!(c.capture.ipv6, mode);
        }
        assert_eq!(CaptureConf::default().ipv6, Ipv6Mode::Auto);
        assert!(conf(json!({"name": "n", "type": "t", "capture": {"ipv6": "first"}})).is_err());
    }

    #[test]
    fn unknown_names_are_refused_naming_the_choices() {
        for (capture, message) in [
            (
                json!({"ipv6": "first"}),
                "capture.ipv6: unknown variant `first`, expected one of `auto`, `first-address`, `on`, `off`",
            ),
            (
                json!({"iptables_flavor": "x"}),
                "capture.iptables_flavor: unknown variant `x`, expected one of `auto`, `legacy`, `nft`",
            ),
        ] {
            let v = json!({"name": "n", "type": "t", "capture": capture});
            let e = serde_path_to_error::deserialize::<_, NetConf>(&v).unwrap_err();
            assert_eq!(e.to_string(), message);
        }
        let v = json!({"name": "n", "type": "t", "capture": {"ipv6": 6}});
        let e = serde_path_to_error::deserialize::<_, NetConf>(&v).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("capture.ipv6: invalid type: integer `6`"),
            "{e}"
        );
    }

    #[test]
    fn fields_are_the_decoders_own_names() {
        let fields = NetConf::fields();
        for key in [
            "name",
            "type",
            "prevResult",
            "runtimeConfig",
            "exclude_namespaces",
            "capture",
        ] {
            assert!(fields.contains(&key), "{key}: {fields:?}");
        }
        assert!(!fields.contains(&"plugin_type") && !fields.contains(&"cniVersion"));
    }

    #[test]
    fn prev_result_addresses_in_order() {
        let with = |prev: Value| NetConf {
            prev_result: Some(prev),
            ..NetConf::default()
        };
        let c = with(json!({"ips": [
            {"address": "10.1.0.5/16", "gateway": "10.1.0.1"},
            {"version": "6", "address": "fd00::5/64"},
            {"address": "not an address"},
            {"gateway": "10.1.0.1"},
        ]}));
        let want: Vec<IpAddr> = vec!["10.1.0.5".parse().unwrap(), "fd00::5".parse().unwrap()];
        assert_eq!(c.prev_result_addresses(), want);
        assert!(with(json!({"interfaces": []})).prev_result_addresses().is_empty());
        assert!(with(json!({"ips": {}})).prev_result_addresses().is_empty());
        assert!(NetConf::default().prev_result_addresses().is_empty());
    }
}
