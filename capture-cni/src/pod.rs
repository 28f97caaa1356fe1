//! Which pods are captured, and how their annotations change the capture.
//!
//! The annotations are Istio's, with Istio's CNI semantics (`cni/pkg/plugin/sidecar_redirect.go`):
//!
//! | annotation | overrides (`capture.*`) | istio-iptables |
//! |---|---|---|
//! | `sidecar.istio.io/interceptionMode` | `interception_mode` | `-m` (`REDIRECT` or `TPROXY`) |
//! | `traffic.sidecar.istio.io/includeOutboundIPRanges` | `include_outbound_ip_ranges` | `-i` |
//! | `traffic.sidecar.istio.io/excludeOutboundIPRanges` | `exclude_outbound_ip_ranges` | `-x` |
//! | `traffic.sidecar.istio.io/includeInboundPorts` | `include_inbound_ports` | `-b` |
//! | `traffic.sidecar.istio.io/excludeInboundPorts` | `exclude_inbound_ports` | `-d`, always plus 15020,15021,15090 |
//! | `traffic.sidecar.istio.io/includeOutboundPorts` | `include_outbound_ports` | `-q` |
//! | `traffic.sidecar.istio.io/excludeOutboundPorts` | `exclude_outbound_ports` | `-o` |
//! | `traffic.sidecar.istio.io/excludeInterfaces` | `exclude_interfaces` | `-c` |
//! | `istio.io/reroute-virtual-interfaces`, else `traffic.sidecar.istio.io/kubevirtInterfaces` | `reroute_virtual_interfaces` | `-k` |
//!
//! List items are trimmed of surrounding whitespace (`"10.0.0.0/8, 172.16.0.0/12"` works), and
//! empty items are dropped as istio-iptables drops them.

use std::collections::BTreeMap;

use capture_core::{CaptureSpec, Detected, Field, IstioConfig, SpecError, ValueError, Warning};

use crate::conf::{CaptureConf, ConfText, NetConf, PodSelection};
use crate::env::CniArgs;
use crate::error::Error;

/// `sidecar.istio.io/inject`: `"false"` opts a pod out.
pub const INJECT: &str = "sidecar.istio.io/inject";
/// `sidecar.istio.io/status`: set by the injector on every injected pod.
pub const STATUS: &str = "sidecar.istio.io/status";
/// `sidecar.istio.io/interceptionMode`.
pub const INTERCEPTION_MODE: &str = "sidecar.istio.io/interceptionMode";
/// `traffic.sidecar.istio.io/includeOutboundIPRanges`.
pub const INCLUDE_OUTBOUND_IP_RANGES: &str = "traffic.sidecar.istio.io/includeOutboundIPRanges";
/// `traffic.sidecar.istio.io/excludeOutboundIPRanges`.
pub const EXCLUDE_OUTBOUND_IP_RANGES: &str = "traffic.sidecar.istio.io/excludeOutboundIPRanges";
/// `traffic.sidecar.istio.io/includeInboundPorts`.
pub const INCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/includeInboundPorts";
/// `traffic.sidecar.istio.io/excludeInboundPorts`.
pub const EXCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeInboundPorts";
/// `traffic.sidecar.istio.io/includeOutboundPorts`.
pub const INCLUDE_OUTBOUND_PORTS: &str = "traffic.sidecar.istio.io/includeOutboundPorts";
/// `traffic.sidecar.istio.io/excludeOutboundPorts`.
pub const EXCLUDE_OUTBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeOutboundPorts";
/// `traffic.sidecar.istio.io/excludeInterfaces`.
pub const EXCLUDE_INTERFACES: &str = "traffic.sidecar.istio.io/excludeInterfaces";
/// `istio.io/reroute-virtual-interfaces`.
pub const REROUTE_VIRTUAL_INTERFACES: &str = "istio.io/reroute-virtual-interfaces";
/// `traffic.sidecar.istio.io/kubevirtInterfaces`: the deprecated spelling of
/// [`REROUTE_VIRTUAL_INTERFACES`], read only when that is absent.
pub const KUBEVIRT_INTERFACES: &str = "traffic.sidecar.istio.io/kubevirtInterfaces";

/// Inbound ports Istio's plugin never captures, whatever the annotation says: the agent's
/// status port, the health port and Envoy's Prometheus port.
pub const ALWAYS_EXCLUDED_INBOUND_PORTS: [&str; 3] = ["15020", "15021", "15090"];

/// The pod an invocation is for, as far as the runtime tells.
#[derive(Debug, Clone, Copy)]
pub struct Pod<'a> {
    /// `K8S_POD_NAME`.
    pub name: Option<&'a str>,
    /// `K8S_POD_NAMESPACE`.
    pub namespace: Option<&'a str>,
    /// `runtimeConfig["io.kubernetes.cri.pod-annotations"]`.
    pub annotations: &'a BTreeMap<String, String>,
}

impl<'a> Pod<'a> {
    /// The pod described by `CNI_ARGS` and the configuration's runtime part.
    pub fn new(args: &'a CniArgs, conf: &'a NetConf) -> Self {
        Self {
            name: args.pod_name(),
            namespace: args.pod_namespace(),
            annotations: &conf.runtime_config.pod_annotations,
        }
    }

    /// `namespace/name`, for logs.
    pub fn display_name(&self) -> String {
        format!(
            "{}/{}",
            self.namespace.unwrap_or("<none>"),
            self.name.unwrap_or("<none>")
        )
    }
}

/// Why a pod is left alone (its result is passed through, nothing is applied).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// `CNI_ARGS` has no `K8S_POD_NAME` or no `K8S_POD_NAMESPACE`.
    NotKubernetesPod,
    /// The namespace is in `exclude_namespaces`.
    ExcludedNamespace(String),
    /// `sidecar.istio.io/inject` is false.
    InjectionDisabled,
    /// No `sidecar.istio.io/status`: the injector did not add a sidecar.
    NotInjected,
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotKubernetesPod => {
                f.write_str("not a Kubernetes pod (no K8S_POD_NAME/K8S_POD_NAMESPACE in CNI_ARGS)")
            }
            Self::ExcludedNamespace(ns) => write!(f, "namespace {ns:?} is excluded"),
            Self::InjectionDisabled => write!(f, "annotation {INJECT} is false"),
            Self::NotInjected => write!(f, "no {STATUS} annotation (no sidecar injected)"),
        }
    }
}

/// Go's `strconv.ParseBool` false spellings, which Istio uses for `sidecar.istio.io/inject`.
fn go_false(s: &str) -> bool {
    matches!(s, "0" | "f" | "F" | "false" | "FALSE" | "False")
}

/// Decides whether `pod` is captured: `None` to capture, or why it is skipped.
pub fn skip_reason(conf: &NetConf, pod: &Pod<'_>) -> Option<Skip> {
    if let Some(ns) = pod.namespace
        && conf.exclude_namespaces.iter().any(|x| x == ns)
    {
        return Some(Skip::ExcludedNamespace(ns.to_owned()));
    }
    if pod.annotations.get(INJECT).is_some_and(|v| go_false(v)) {
        return Some(Skip::InjectionDisabled);
    }
    match conf.pod_selection {
        PodSelection::All => None,
        PodSelection::Injected if pod.name.is_none() || pod.namespace.is_none() => {
            Some(Skip::NotKubernetesPod)
        }
        PodSelection::Injected if !pod.annotations.contains_key(STATUS) => Some(Skip::NotInjected),
        PodSelection::Injected => None,
    }
}

/// Where a value came from, to name it in an error.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    Annotation { key: &'static str, value: String },
    Conf { key: &'static str },
}

/// The istio-iptables configuration for one pod, with where each value came from.
#[derive(Debug, Clone)]
pub struct PodCapture {
    /// The settings, as istio-iptables would take them.
    pub config: IstioConfig,
    sources: Vec<(Field, Source)>,
}

/// Splits on `,`, trims each item and drops empty ones.
fn normalize_list(s: &str) -> String {
    s.split(',')
        .map(str::trim)
        .filter(|i| !i.is_empty())
        .collect::<Vec<_>>()
        .join(",")
}

impl PodCapture {
    /// Combines the configuration's defaults with the pod's annotations.
    ///
    /// # Errors
    /// [`Error::Annotation`] or [`Error::ConfigValue`] for an interception mode other than
    /// `REDIRECT` or `TPROXY`; every other value is checked by [`PodCapture::to_spec`].
    pub fn new(conf: &CaptureConf, annotations: &BTreeMap<String, String>) -> Result<Self, Error> {
        let mut sources = Vec::new();
        let mut pick = |field: Field, conf_key: &'static str, value: &ConfText, keys: &[&'static str]| {
            for key in keys {
                if let Some(v) = annotations.get(*key) {
                    sources.push((
                        field,
                        Source::Annotation {
                            key,
                            value: v.clone(),
                        },
                    ));
                    return normalize_list(v);
                }
            }
            sources.push((field, Source::Conf { key: conf_key }));
            normalize_list(value.as_str())
        };

        let mode_conf = ConfText(conf.interception_mode.clone());
        let interception_mode = pick(
            Field::InterceptionMode,
            "interception_mode",
            &mode_conf,
            &[INTERCEPTION_MODE],
        );
        let service_cidr = pick(
            Field::OutboundCidrs,
            "include_outbound_ip_ranges",
            &conf.include_outbound_ip_ranges,
            &[INCLUDE_OUTBOUND_IP_RANGES],
        );
        let service_exclude_cidr = pick(
            Field::OutboundExcludeCidrs,
            "exclude_outbound_ip_ranges",
            &conf.exclude_outbound_ip_ranges,
            &[EXCLUDE_OUTBOUND_IP_RANGES],
        );
        let inbound_ports = pick(
            Field::InboundPorts,
            "include_inbound_ports",
            &conf.include_inbound_ports,
            &[INCLUDE_INBOUND_PORTS],
        );
        let exclude_inbound = pick(
            Field::InboundExcludePorts,
            "exclude_inbound_ports",
            &conf.exclude_inbound_ports,
            &[EXCLUDE_INBOUND_PORTS],
        );
        let outbound_ports = pick(
            Field::OutboundPorts,
            "include_outbound_ports",
            &conf.include_outbound_ports,
            &[INCLUDE_OUTBOUND_PORTS],
        );
        let local_outbound_ports_exclude = pick(
            Field::OutboundExcludePorts,
            "exclude_outbound_ports",
            &conf.exclude_outbound_ports,
            &[EXCLUDE_OUTBOUND_PORTS],
        );
        let exclude_interfaces = pick(
            Field::ExcludeInterfaces,
            "exclude_interfaces",
            &conf.exclude_interfaces,
            &[EXCLUDE_INTERFACES],
        );
        let kube_virt_interfaces = pick(
            Field::RerouteInterfaces,
            "reroute_virtual_interfaces",
            &conf.reroute_virtual_interfaces,
            &[REROUTE_VIRTUAL_INTERFACES, KUBEVIRT_INTERFACES],
        );
        for (field, key, value) in [
            (Field::OutboundPort, "outbound_port", &conf.outbound_port),
            (Field::InboundPort, "inbound_port", &conf.inbound_port),
            (Field::TunnelPort, "tunnel_port", &conf.tunnel_port),
            (Field::ProxyUid, "proxy_uid", &conf.proxy_uid),
            (Field::ProxyGid, "proxy_gid", &conf.proxy_gid),
            (Field::TproxyMark, "tproxy_mark", &conf.tproxy_mark),
            (
                Field::TproxyRouteTable,
                "tproxy_route_table",
                &conf.tproxy_route_table,
            ),
        ] {
            pick(field, key, value, &[]);
        }

        // Istio's plugin always adds its own ports, keeping the first occurrence of each.
        let mut excluded: Vec<&str> = Vec::new();
        for port in exclude_inbound
            .split(',')
            .chain(ALWAYS_EXCLUDED_INBOUND_PORTS)
            .filter(|p| !p.is_empty())
        {
            if !excluded.contains(&port) {
                excluded.push(port);
            }
        }

        let config = IstioConfig {
            envoy_port: normalize_list(conf.outbound_port.as_str()),
            inbound_capture_port: normalize_list(conf.inbound_port.as_str()),
            inbound_tunnel_port: normalize_list(conf.tunnel_port.as_str()),
            proxy_uid: normalize_list(conf.proxy_uid.as_str()),
            proxy_gid: normalize_list(conf.proxy_gid.as_str()),
            interception_mode,
            inbound_ports,
            local_exclude_ports: excluded.join(","),
            exclude_interfaces,
            service_cidr,
            service_exclude_cidr,
            outbound_ports,
            local_outbound_ports_exclude,
            kube_virt_interfaces,
            tproxy_mark: normalize_list(conf.tproxy_mark.as_str()),
            tproxy_route_table: normalize_list(conf.tproxy_route_table.as_str()),
            redirect_dns: conf.redirect_dns,
            capture_all_dns: conf.redirect_dns,
            drop_invalid: conf.drop_invalid,
            ..IstioConfig::default()
        };
        let capture = Self { config, sources };
        // istio-iptables treats any other mode as REDIRECT; Istio's plugin rejects it.
        if !matches!(capture.config.interception_mode.as_str(), "REDIRECT" | "TPROXY") {
            return Err(capture.error(SpecError::new(
                Field::InterceptionMode,
                &capture.config.interception_mode,
                ValueError::InterceptionMode,
            )));
        }
        Ok(capture)
    }

    /// Builds and validates the capture for a pod whose IP families are `detected`.
    ///
    /// # Errors
    /// [`Error::Annotation`] naming the annotation and its value, or [`Error::ConfigValue`]
    /// naming the configuration field, for the first value that is rejected.
    pub fn to_spec(&self, detected: &Detected) -> Result<(CaptureSpec, Vec<Warning>), Error> {
        self.config.to_spec(detected).map_err(|e| self.error(e))
    }

    /// The annotations that set a value, as `key=value`, in the order they are read.
    pub fn annotations_used(&self) -> Vec<String> {
        self.sources
            .iter()
            .filter_map(|(_, source)| match source {
                Source::Annotation { key, value } => Some(format!("{key}={value:?}")),
                Source::Conf { .. } => None,
            })
            .collect()
    }

    /// Names the annotation or configuration field a rejected value came from.
    fn error(&self, e: SpecError) -> Error {
        let source = self
            .sources
            .iter()
            .find(|(field, _)| *field == e.field)
            .map(|(_, source)| source);
        match source {
            Some(Source::Annotation { key, value }) => Error::Annotation {
                annotation: key,
                value: value.clone(),
                item: e.value,
                reason: e.reason,
            },
            Some(Source::Conf { key }) => Error::ConfigValue {
                field: format!("capture.{key}"),
                value: e.value,
                reason: e.reason,
            },
            None => Error::ConfigValue {
                field: e.field.flag().to_owned(),
                value: e.value,
                reason: e.reason,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn capture(pairs: &[(&str, &str)]) -> Result<PodCapture, Error> {
        PodCapture::new(&CaptureConf::default(), &annotations(pairs))
    }

    #[test]
    fn defaults_are_istios_cni_flags() {
        let c = capture(&[]).unwrap().config;
        assert_eq!(
            (
                c.service_cidr.as_str(),
                c.inbound_ports.as_str(),
                c.local_exclude_ports.as_str(),
                c.local_outbound_ports_exclude.as_str(),
                c.interception_mode.as_str(),
                c.envoy_port.as_str(),
                c.proxy_uid.as_str(),
                c.proxy_gid.as_str(),
            ),
            (
                "*",
                "*",
                "15020,15021,15090",
                "15020",
                "REDIRECT",
                "15001",
                "1337",
                "1337"
            )
        );
    }

    #[test]
    fn excluded_inbound_ports_always_get_istios_ports_once() {
        let c = capture(&[(EXCLUDE_INBOUND_PORTS, "3333, 15021,4444")])
            .unwrap()
            .config;
        assert_eq!(c.local_exclude_ports, "3333,15021,4444,15020,15090");
        let c = capture(&[(EXCLUDE_INBOUND_PORTS, "")]).unwrap().config;
        assert_eq!(c.local_exclude_ports, "15020,15021,15090");
    }

    #[test]
    fn reroute_prefers_the_new_annotation() {
        let both = [
            (REROUTE_VIRTUAL_INTERFACES, "net1"),
            (KUBEVIRT_INTERFACES, "old0"),
        ];
        assert_eq!(capture(&both).unwrap().config.kube_virt_interfaces, "net1");
        let old = [(KUBEVIRT_INTERFACES, "old0,old1")];
        assert_eq!(capture(&old).unwrap().config.kube_virt_interfaces, "old0,old1");
    }

    #[test]
    fn invalid_annotations_name_the_annotation_and_value() {
        let e = capture(&[(INTERCEPTION_MODE, "NONE")]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid value \"NONE\" for annotation sidecar.istio.io/interceptionMode: \
             interception mode must be REDIRECT or TPROXY"
        );
        let spec_err =
            |pairs: &[(&str, &str)]| capture(pairs).unwrap().to_spec(&Detected::default()).unwrap_err();
        let e = spec_err(&[(INCLUDE_OUTBOUND_IP_RANGES, "10.0.0.0/8,10.0.0.0/40")]);
        assert_eq!(
            e.to_string(),
            "invalid value \"10.0.0.0/8,10.0.0.0/40\" for annotation \
             traffic.sidecar.istio.io/includeOutboundIPRanges (item \"10.0.0.0/40\"): prefix length is larger than 32"
        );
        for (key, value) in [
            (EXCLUDE_OUTBOUND_IP_RANGES, "*"),
            (INCLUDE_INBOUND_PORTS, "http"),
            (EXCLUDE_INBOUND_PORTS, "70000"),
            (INCLUDE_OUTBOUND_PORTS, "1:0"),
            (EXCLUDE_OUTBOUND_PORTS, "-1"),
            (EXCLUDE_INTERFACES, "a/b"),
            (REROUTE_VIRTUAL_INTERFACES, "this-name-is-too-long"),
        ] {
            match spec_err(&[(key, value)]) {
                Error::Annotation {
                    annotation, value: v, ..
                } => assert_eq!((annotation, v.as_str()), (key, value)),
                other => panic!("{key}={value}: {other:?}"),
            }
        }
    }

    #[test]
    fn invalid_conf_values_name_the_field() {
        let conf = CaptureConf {
            proxy_uid: ConfText::from("-5"),
            ..CaptureConf::default()
        };
        let e = PodCapture::new(&conf, &BTreeMap::new())
            .unwrap()
            .to_spec(&Detected::default())
            .unwrap_err();
        assert!(
            matches!(&e, Error::ConfigValue { field, .. } if field == "capture.proxy_uid"),
            "{e:?}"
        );
    }

    #[test]
    fn selection_follows_istio() {
        let conf: NetConf = serde_json::from_value(serde_json::json!({
            "name": "n", "type": "capture-cni", "exclude_namespaces": ["kube-system"]
        }))
        .unwrap();
        let injected = annotations(&[(STATUS, "{}")]);
        let pod = |ns: Option<&'static str>, a: &'static BTreeMap<String, String>| Pod {
            name: Some("p"),
            namespace: ns,
            annotations: a,
        };
        let injected: &'static BTreeMap<String, String> = Box::leak(Box::new(injected));
        let none: &'static BTreeMap<String, String> = Box::leak(Box::default());
        let off: &'static BTreeMap<String, String> =
            Box::leak(Box::new(annotations(&[(STATUS, "{}"), (INJECT, "false")])));
        assert_eq!(skip_reason(&conf, &pod(Some("shop"), injected)), None);
        assert_eq!(
            skip_reason(&conf, &pod(None, injected)),
            Some(Skip::NotKubernetesPod)
        );
        assert_eq!(
            skip_reason(&conf, &pod(Some("kube-system"), injected)),
            Some(Skip::ExcludedNamespace("kube-system".into()))
        );
        assert_eq!(
            skip_reason(&conf, &pod(Some("shop"), none)),
            Some(Skip::NotInjected)
        );
        assert_eq!(
            skip_reason(&conf, &pod(Some("shop"), off)),
            Some(Skip::InjectionDisabled)
        );
        let all = NetConf {
            pod_selection: PodSelection::All,
            ..conf
        };
        assert_eq!(skip_reason(&all, &pod(None, none)), None);
        assert_eq!(
            skip_reason(&all, &pod(Some("shop"), off)),
            Some(Skip::InjectionDisabled)
        );
    }
}
