//! istio-iptables' configuration, flag for flag, and its mapping onto a [`CaptureSpec`].
//!
//! Values stay strings here, as Istio keeps them, so each front end (command line, CNI
//! annotations) fills the same struct and every value is parsed and rejected in one place.
//! Lists split on `,` and drop empty items, as Istio's do; whitespace is not trimmed.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use crate::error::{Field, SpecError, ValueError};
use crate::spec::{
    CaptureSpec, DnsCapture, InboundCapture, InboundPorts, InterceptMode, Interfaces, OutboundCapture,
    OutboundCidrs, OwnerGroups, ProxyOwner, ProxyPorts,
};
use crate::types::{Accounts, Cidr, Nameserver, SystemAccounts};

/// istio-iptables' settings, as strings and switches, with its defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IstioConfig {
    /// `-p`: outbound proxy port.
    pub envoy_port: String,
    /// `-z`: inbound capture port.
    pub inbound_capture_port: String,
    /// `-e`: tunnel port.
    pub inbound_tunnel_port: String,
    /// `-u`: proxy uids (comma list of numbers or names).
    pub proxy_uid: String,
    /// `-g`: proxy gids; empty means the same list as `proxy_uid`.
    pub proxy_gid: String,
    /// `-m`: `REDIRECT` or `TPROXY`.
    pub interception_mode: String,
    /// `-b`: inbound ports, `*` or a list.
    pub inbound_ports: String,
    /// `-d`: inbound ports excluded when `-b` is `*`.
    pub local_exclude_ports: String,
    /// `-c`: excluded interfaces.
    pub exclude_interfaces: String,
    /// `-i`: outbound CIDRs captured, `*` or a list.
    pub service_cidr: String,
    /// `-x`: outbound CIDRs excluded.
    pub service_exclude_cidr: String,
    /// `-q`: outbound ports always captured.
    pub outbound_ports: String,
    /// `-o`: outbound ports excluded.
    pub local_outbound_ports_exclude: String,
    /// `-k`: virtual interfaces rerouted as outbound.
    pub kube_virt_interfaces: String,
    /// `-t`: TPROXY mark.
    pub tproxy_mark: String,
    /// `-r`: TPROXY routing table.
    pub tproxy_route_table: String,
    /// `--redirect-dns`.
    pub redirect_dns: bool,
    /// `--capture-all-dns`.
    pub capture_all_dns: bool,
    /// `--drop-invalid`.
    pub drop_invalid: bool,
    /// `ISTIO_OUTBOUND_OWNER_GROUPS`.
    pub owner_groups_include: String,
    /// `ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE`.
    pub owner_groups_exclude: String,
    /// `ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR`.
    pub ipv4_loopback_cidr: String,
}

impl Default for IstioConfig {
    /// istio-iptables' defaults, with the proxy uid already resolved to 1337.
    fn default() -> Self {
        Self {
            envoy_port: "15001".into(),
            inbound_capture_port: "15006".into(),
            inbound_tunnel_port: "15008".into(),
            proxy_uid: "1337".into(),
            proxy_gid: String::new(),
            interception_mode: String::new(),
            inbound_ports: String::new(),
            local_exclude_ports: String::new(),
            exclude_interfaces: String::new(),
            service_cidr: String::new(),
            service_exclude_cidr: String::new(),
            outbound_ports: String::new(),
            local_outbound_ports_exclude: String::new(),
            kube_virt_interfaces: String::new(),
            tproxy_mark: "1337".into(),
            tproxy_route_table: "133".into(),
            redirect_dns: false,
            capture_all_dns: false,
            drop_invalid: false,
            owner_groups_include: "*".into(),
            owner_groups_exclude: String::new(),
            ipv4_loopback_cidr: "127.0.0.1/32".into(),
        }
    }
}

/// What istio-iptables learns from the pod rather than from flags.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Detected {
    /// Whether IPv6 rules are installed too (see [`detect_ipv6`]).
    pub ipv6: bool,
    /// Nameservers from the pod's resolv.conf (read only for `--redirect-dns` without
    /// `--capture-all-dns`).
    pub nameservers: Vec<Nameserver>,
}

/// Something accepted but probably not meant; front ends print these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Warning {
    /// `-m` was neither REDIRECT nor TPROXY; Istio treats it as REDIRECT, and so do we.
    UnknownInterceptionMode(String),
    /// `-d` was given but `-b` is not `*`, so it has no effect.
    ExcludePortsIgnored,
    /// `ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE` was given but the include list is not `*`.
    OwnerGroupsExcludeIgnored,
    /// `--redirect-dns` without `--capture-all-dns` and no nameserver found: DNS capture off.
    DnsCaptureDisabled,
    /// A resolv.conf `nameserver` line that is not an address.
    BadNameserver(String),
    /// The pod has this IPv6 address but Istio's detection (first address decides) left IPv6
    /// capture off: its IPv6 traffic bypasses the proxy.
    Ipv6Uncaptured(std::net::Ipv6Addr),
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownInterceptionMode(mode) => write!(
                f,
                "interception mode {mode:?} is neither REDIRECT nor TPROXY; using REDIRECT as istio-iptables does"
            ),
            Self::ExcludePortsIgnored => {
                f.write_str("-d/--istio-local-exclude-ports has no effect unless -b/--istio-inbound-ports is '*'")
            }
            Self::OwnerGroupsExcludeIgnored => f.write_str(
                "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE has no effect unless ISTIO_OUTBOUND_OWNER_GROUPS is '*'",
            ),
            Self::DnsCaptureDisabled => f.write_str(
                "--redirect-dns is set without --capture-all-dns and no nameserver was found; DNS capture is off",
            ),
            Self::BadNameserver(line) => write!(f, "ignoring resolv.conf nameserver {line:?}: not an IP address"),
            Self::Ipv6Uncaptured(addr) => write!(
                f,
                "the pod has IPv6 address {addr} but IPv6 capture is off (its first address is IPv4); its IPv6 traffic is not captured: pass --dual-stack (ISTIO_DUAL_STACK=true) or --ipv6 on"
            ),
        }
    }
}

fn items(s: &str) -> impl Iterator<Item = &str> {
    s.split(',').filter(|item| !item.is_empty())
}

fn list<T: FromStr<Err = ValueError>>(field: Field, s: &str) -> Result<Vec<T>, SpecError> {
    items(s)
        .map(|item| item.parse().map_err(|reason| SpecError::new(field, item, reason)))
        .collect()
}

fn one<T: FromStr<Err = ValueError>>(field: Field, s: &str) -> Result<T, SpecError> {
    s.parse().map_err(|reason| SpecError::new(field, s, reason))
}

fn cidrs(field: Field, s: &str) -> Result<Vec<Cidr>, SpecError> {
    // '*' only means "all" on its own; inside a list it is a mistake worth naming as such.
    items(s)
        .map(|item| {
            item.parse()
                .map_err(|e| SpecError::new(field, item, if item == "*" { ValueError::Wildcard } else { e }))
        })
        .collect()
}

impl IstioConfig {
    /// Builds and validates the spec these settings describe.
    ///
    /// # Errors
    /// A [`SpecError`] naming the first flag whose value is rejected.
    ///
    /// # Examples
    /// ```
    /// use capture_core::{Detected, IstioConfig};
    /// let mut cfg = IstioConfig::default();
    /// cfg.inbound_ports = "70000".into();
    /// let err = cfg.to_spec(&Detected::default()).unwrap_err();
    /// assert_eq!(err.to_string(), "invalid value \"70000\" for -b/--istio-inbound-ports: not a port number (1-65535)");
    /// ```
    pub fn to_spec(&self, detected: &Detected) -> Result<(CaptureSpec, Vec<Warning>), SpecError> {
        self.to_spec_with(detected, &SystemAccounts)
    }

    /// [`IstioConfig::to_spec`], with owner names resolved against `accounts` instead of this
    /// machine's user and group databases.
    ///
    /// # Errors
    /// A [`SpecError`] naming the first flag whose value is rejected.
    pub fn to_spec_with(
        &self,
        detected: &Detected,
        accounts: &dyn Accounts,
    ) -> Result<(CaptureSpec, Vec<Warning>), SpecError> {
        let mut warnings = Vec::new();
        let proxy = ProxyPorts {
            outbound: one(Field::OutboundPort, &self.envoy_port)?,
            inbound: one(Field::InboundPort, &self.inbound_capture_port)?,
            tunnel: one(Field::TunnelPort, &self.inbound_tunnel_port)?,
        };
        let uids = list(Field::ProxyUid, &self.proxy_uid)?;
        let gid_text = if self.proxy_gid.is_empty() {
            &self.proxy_uid
        } else {
            &self.proxy_gid
        };
        let gids = list(Field::ProxyGid, gid_text)?;

        let mark = one(Field::TproxyMark, &self.tproxy_mark)?;
        let route_table = one(Field::TproxyRouteTable, &self.tproxy_route_table)?;
        let mode = match self.interception_mode.as_str() {
            "TPROXY" => InterceptMode::Tproxy { mark, route_table },
            "REDIRECT" | "" => InterceptMode::Redirect,
            other => {
                warnings.push(Warning::UnknownInterceptionMode(other.to_owned()));
                InterceptMode::Redirect
            }
        };
        let except = list(Field::InboundExcludePorts, &self.local_exclude_ports)?;
        let ports = match self.inbound_ports.as_str() {
            "*" => InboundPorts::All { except },
            s if items(s).next().is_none() => InboundPorts::Off,
            s => {
                if !except.is_empty() {
                    warnings.push(Warning::ExcludePortsIgnored);
                }
                InboundPorts::Only(list(Field::InboundPorts, s)?)
            }
        };

        let exclude_cidrs = cidrs(Field::OutboundExcludeCidrs, &self.service_exclude_cidr)?;
        let include = match self.service_cidr.as_str() {
            "*" => OutboundCidrs::All,
            s if items(s).next().is_none() => OutboundCidrs::Off,
            s => OutboundCidrs::Only(cidrs(Field::OutboundCidrs, s)?),
        };
        let group_excludes = list(Field::OwnerGroupsExclude, &self.owner_groups_exclude)?;
        let owner_groups = match self.owner_groups_include.as_str() {
            s if s == "*" || items(s).next().is_none() => OwnerGroups::All {
                except: group_excludes,
            },
            s => {
                if !group_excludes.is_empty() {
                    warnings.push(Warning::OwnerGroupsExcludeIgnored);
                }
                OwnerGroups::Only(list(Field::OwnerGroups, s)?)
            }
        };
        let outbound = OutboundCapture {
            include,
            exclude_cidrs,
            include_ports: list(Field::OutboundPorts, &self.outbound_ports)?,
            exclude_ports: list(Field::OutboundExcludePorts, &self.local_outbound_ports_exclude)?,
            owner_groups,
        };
        let interfaces = Interfaces {
            exclude: list(Field::ExcludeInterfaces, &self.exclude_interfaces)?,
            reroute: list(Field::RerouteInterfaces, &self.kube_virt_interfaces)?,
        };
        let dns = match (self.redirect_dns, self.capture_all_dns) {
            (false, _) => None,
            (true, true) => Some(DnsCapture::All),
            (true, false) if detected.nameservers.is_empty() => {
                warnings.push(Warning::DnsCaptureDisabled);
                None
            }
            (true, false) => Some(DnsCapture::Only(detected.nameservers.clone())),
        };
        let spec = CaptureSpec {
            proxy,
            owner: ProxyOwner { uids, gids },
            inbound: InboundCapture { mode, ports },
            outbound,
            interfaces,
            dns,
            drop_invalid: self.drop_invalid,
            ipv4_loopback: one(Field::Ipv4LoopbackCidr, &self.ipv4_loopback_cidr)?,
            ipv6: detected.ipv6,
        };
        spec.validate_with(accounts).map_err(|mut e| {
            // istio-iptables passes the -u list as -g when -g is not given; say so when a user
            // name turns out not to be a group as well.
            if e.field == Field::ProxyGid && e.reason == ValueError::NoSuchGroup && self.proxy_gid.is_empty()
            {
                e.reason = ValueError::NoSuchGroupFromUsers;
            }
            e
        })?;
        Ok((spec, warnings))
    }
}

/// The nameservers of a resolv.conf, with a warning for each line that is not an address.
pub fn parse_resolv_conf(text: &str) -> (Vec<Nameserver>, Vec<Warning>) {
    let mut servers = Vec::new();
    let mut warnings = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(addr) = words.next() else { continue };
        // A zone (fe80::1%eth0) cannot be written into an iptables rule.
        match addr.parse::<Nameserver>() {
            Ok(server) if !addr.contains('%') => servers.push(server),
            _ => warnings.push(Warning::BadNameserver(addr.to_owned())),
        }
    }
    (servers, warnings)
}

/// No usable address to decide the IP family from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no non-loopback, non-link-local address found to decide whether the pod uses IPv6")]
pub struct NoUsableAddress;

/// Istio's IPv6 decision from the pod's addresses, loopback and link-local ones skipped: the
/// first usable address decides, or with `dual_stack` any IPv6 address turns IPv6 on.
///
/// # Errors
/// [`NoUsableAddress`] when every address is loopback or link-local.
pub fn detect_ipv6(addrs: &[IpAddr], dual_stack: bool) -> Result<bool, NoUsableAddress> {
    let usable = |a: &&IpAddr| match a {
        IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_link_local(),
        IpAddr::V6(v6) => !v6.is_loopback() && !v6.is_unicast_link_local(),
    };
    let mut usable = addrs.iter().filter(usable).peekable();
    let first = **usable.peek().ok_or(NoUsableAddress)?;
    if dual_stack {
        Ok(usable.any(IpAddr::is_ipv6))
    } else {
        Ok(first.is_ipv6())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Owner;

    fn spec_err(edit: impl FnOnce(&mut IstioConfig)) -> SpecError {
        let mut cfg = IstioConfig::default();
        edit(&mut cfg);
        cfg.to_spec(&Detected::default()).unwrap_err()
    }

    #[test]
    fn bad_values_name_flag_and_value() {
        let e = spec_err(|c| c.local_exclude_ports = "15090,abc".into());
        assert_eq!(
            (e.field, e.value.as_str(), e.reason),
            (Field::InboundExcludePorts, "abc", ValueError::Port)
        );
        let e = spec_err(|c| c.service_exclude_cidr = "*".into());
        assert_eq!(
            (e.field, e.reason),
            (Field::OutboundExcludeCidrs, ValueError::Wildcard)
        );
        let e = spec_err(|c| c.service_cidr = "10.0.0.0/33".into());
        assert_eq!(
            e.to_string(),
            "invalid value \"10.0.0.0/33\" for -i/--istio-service-cidr: prefix length is larger than 32"
        );
        let e = spec_err(|c| c.proxy_uid = "no such".into());
        assert_eq!(e.field, Field::ProxyUid);
        let e = spec_err(|c| c.ipv4_loopback_cidr = "10.0.0.1/32".into());
        assert_eq!(e.field, Field::Ipv4LoopbackCidr);
        let e = spec_err(|c| {
            c.owner_groups_include = (0..65).map(|g| g.to_string()).collect::<Vec<_>>().join(",")
        });
        assert_eq!(e.reason, ValueError::TooManyGroups { count: 65 });
    }

    #[test]
    fn empty_items_dropped_and_host_bits_kept() {
        let cfg = IstioConfig {
            inbound_ports: "*".into(),
            local_exclude_ports: "15090,,15021,".into(),
            service_cidr: "10.0.0.1/8".into(),
            ..IstioConfig::default()
        };
        let (spec, warnings) = cfg.to_spec(&Detected::default()).unwrap();
        assert!(warnings.is_empty());
        assert_eq!(
            spec.inbound.ports,
            InboundPorts::All {
                except: vec!["15090".parse().unwrap(), "15021".parse().unwrap()]
            }
        );
        assert_eq!(
            spec.outbound.include,
            OutboundCidrs::Only(vec!["10.0.0.1/8".parse().unwrap()])
        );
    }

    #[test]
    fn quirks_kept_with_warnings() {
        let cfg = IstioConfig {
            interception_mode: "FOO".into(),
            inbound_ports: "80".into(),
            local_exclude_ports: "81".into(),
            redirect_dns: true,
            ..IstioConfig::default()
        };
        let (spec, warnings) = cfg.to_spec(&Detected::default()).unwrap();
        assert_eq!(spec.inbound.mode, InterceptMode::Redirect);
        assert_eq!(spec.dns, None);
        assert_eq!(
            warnings,
            [
                Warning::UnknownInterceptionMode("FOO".into()),
                Warning::ExcludePortsIgnored,
                Warning::DnsCaptureDisabled
            ]
        );
    }

    /// Users and groups as a fixed table: `alice` is a user but not a group, `staff` both.
    struct Table;

    impl Accounts for Table {
        fn uid(&self, name: &str) -> Option<u32> {
            match name {
                "alice" => Some(1001),
                "staff" => Some(1002),
                _ => None,
            }
        }

        fn gid(&self, name: &str) -> Option<u32> {
            (name == "staff").then_some(50)
        }
    }

    fn table_err(edit: impl FnOnce(&mut IstioConfig)) -> SpecError {
        let mut cfg = IstioConfig::default();
        edit(&mut cfg);
        cfg.to_spec_with(&Detected::default(), &Table).unwrap_err()
    }

    #[test]
    fn owner_ids_iptables_refuses_are_rejected() {
        // (uid_t)-1 is "no id": iptables' owner match takes 0 to 4294967294.
        for (edit, field) in [
            (
                (|c| c.proxy_uid = "4294967295".into()) as fn(&mut IstioConfig),
                Field::ProxyUid,
            ),
            (|c| c.proxy_gid = "1337,4294967295".into(), Field::ProxyGid),
            (
                |c| c.owner_groups_include = "4294967295".into(),
                Field::OwnerGroups,
            ),
            (
                |c| c.owner_groups_exclude = "4294967295".into(),
                Field::OwnerGroupsExclude,
            ),
        ] {
            let e = spec_err(edit);
            assert_eq!(
                (e.field, e.value.as_str(), e.reason),
                (field, "4294967295", ValueError::OwnerId)
            );
        }
        assert_eq!(
            spec_err(|c| c.proxy_uid = "4294967295".into()).to_string(),
            "invalid value \"4294967295\" for -u/--proxy-uid: not a usable id (0-4294967294)"
        );
        let cfg = IstioConfig {
            proxy_uid: "0,4294967294".into(),
            owner_groups_exclude: "4294967294".into(),
            ..IstioConfig::default()
        };
        cfg.to_spec(&Detected::default()).unwrap();
    }

    #[test]
    fn owner_names_resolve_as_iptables_resolves_them() {
        let e = table_err(|c| c.proxy_uid = "bob".into());
        assert_eq!(
            (e.field, e.value.as_str(), e.reason),
            (Field::ProxyUid, "bob", ValueError::NoSuchUser)
        );
        // -g is looked up in the group database, even for a name that is a user.
        let e = table_err(|c| c.proxy_gid = "alice".into());
        assert_eq!(
            (e.field, e.value.as_str(), e.reason),
            (Field::ProxyGid, "alice", ValueError::NoSuchGroup)
        );
        let e = table_err(|c| c.owner_groups_include = "staff,dev".into());
        assert_eq!(
            (e.field, e.value.as_str(), e.reason),
            (Field::OwnerGroups, "dev", ValueError::NoSuchGroup)
        );
        let e = table_err(|c| c.owner_groups_exclude = "888,dev".into());
        assert_eq!(
            (e.field, e.value.as_str(), e.reason),
            (Field::OwnerGroupsExclude, "dev", ValueError::NoSuchGroup)
        );
        // Known names pass and stay names: iptables writes them into the rule as given.
        let cfg = IstioConfig {
            proxy_uid: "alice,staff".into(),
            proxy_gid: "staff".into(),
            owner_groups_include: "staff,7".into(),
            ..IstioConfig::default()
        };
        let (spec, _) = cfg.to_spec_with(&Detected::default(), &Table).unwrap();
        assert_eq!(
            spec.owner.uids,
            [Owner::Name("alice".into()), Owner::Name("staff".into())]
        );
        // The system's databases: root is a user and a group everywhere.
        let e = spec_err(|c| c.proxy_uid = "no-such-user-capture".into());
        assert_eq!((e.field, e.reason), (Field::ProxyUid, ValueError::NoSuchUser));
        let cfg = IstioConfig {
            proxy_uid: "root".into(),
            owner_groups_exclude: "root".into(),
            ..IstioConfig::default()
        };
        cfg.to_spec(&Detected::default()).unwrap();
    }

    #[test]
    fn a_user_name_that_is_no_group_fails_as_the_defaulted_gid() {
        // istio-iptables passes -u as -g when -g is empty, and iptables then refuses the name
        // as a group.
        let e = table_err(|c| c.proxy_uid = "alice".into());
        assert_eq!(
            (e.field, e.value.as_str(), e.reason),
            (Field::ProxyGid, "alice", ValueError::NoSuchGroupFromUsers)
        );
        assert_eq!(
            e.to_string(),
            "invalid value \"alice\" for -g/--proxy-gid: no such group (when no group list is given, \
             the user list is used as groups)"
        );
        // A name that is both passes; so does -g given explicitly.
        let staff = IstioConfig {
            proxy_uid: "staff".into(),
            ..IstioConfig::default()
        };
        staff.to_spec_with(&Detected::default(), &Table).unwrap();
        let explicit = IstioConfig {
            proxy_uid: "alice".into(),
            proxy_gid: "1337".into(),
            ..IstioConfig::default()
        };
        explicit.to_spec_with(&Detected::default(), &Table).unwrap();
    }

    #[test]
    fn gid_defaults_to_uid_list() {
        let cfg = IstioConfig {
            proxy_uid: "3,4".into(),
            ..IstioConfig::default()
        };
        let (spec, _) = cfg.to_spec(&Detected::default()).unwrap();
        assert_eq!(spec.owner.gids, spec.owner.uids);
    }

    #[test]
    fn resolv_conf() {
        let (servers, warnings) = parse_resolv_conf(
            "# c\nsearch a.b\nnameserver 10.96.0.10\nnameserver ::127.0.0.53\nnameserver x\n",
        );
        assert_eq!(
            servers.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["10.96.0.10", "::127.0.0.53"]
        );
        assert_eq!(warnings, [Warning::BadNameserver("x".into())]);
    }

    #[test]
    fn ipv6_detection() {
        let a = |s: &str| s.parse::<IpAddr>().unwrap();
        let lo_ll = [a("127.0.0.1"), a("::1"), a("fe80::1"), a("169.254.1.1")];
        assert_eq!(detect_ipv6(&lo_ll, false), Err(NoUsableAddress));
        assert_eq!(
            detect_ipv6(&[a("fe80::1"), a("10.1.0.5"), a("fd00::5")], false),
            Ok(false)
        );
        assert_eq!(detect_ipv6(&[a("fd00::5"), a("10.1.0.5")], false), Ok(true));
        assert_eq!(detect_ipv6(&[a("10.1.0.5"), a("fd00::5")], true), Ok(true));
        assert_eq!(detect_ipv6(&[a("10.1.0.5")], true), Ok(false));
    }
}
