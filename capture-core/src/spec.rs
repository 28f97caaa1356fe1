//! The capture specification: what to redirect to the proxy, independent of any backend.

use std::net::{IpAddr, Ipv4Addr};

use crate::error::{Field, SpecError, ValueError};
use crate::types::{
    Accounts, Cidr, Family, Iface, MAX_OWNER_ID, Mark, Nameserver, Owner, Port, PortRange, RouteTable,
    SystemAccounts,
};

/// Everything that decides which connections reach the sidecar proxy.
///
/// Build one from istio-iptables flags with [`IstioConfig`](crate::IstioConfig), or directly;
/// call [`CaptureSpec::validate`] before planning rules from it.
///
/// # Examples
/// ```
/// use capture_core::{CaptureSpec, Family, plan, Restore};
/// let spec = CaptureSpec::sidecar();
/// spec.validate().unwrap();
/// let v4 = plan(&spec, Family::V4);
/// assert!(Restore(&v4).to_string().starts_with("* nat\n"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureSpec {
    /// The proxy's listening ports.
    pub proxy: ProxyPorts,
    /// The proxy's own identity; its traffic is never captured.
    pub owner: ProxyOwner,
    /// Which inbound connections are captured, and how.
    pub inbound: InboundCapture,
    /// Which outbound connections are captured.
    pub outbound: OutboundCapture,
    /// Interfaces with special treatment.
    pub interfaces: Interfaces,
    /// DNS capture to the agent's resolver on port 15053, if on.
    pub dns: Option<DnsCapture>,
    /// Drop packets conntrack marks INVALID (mangle `PREROUTING`).
    pub drop_invalid: bool,
    /// The IPv4 range treated as "this host's loopback" (`127.0.0.1/32` by default).
    pub ipv4_loopback: Cidr,
    /// Also capture IPv6 (the IPv4 rules are always installed).
    pub ipv6: bool,
}

/// The proxy's listening ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyPorts {
    /// Where captured outbound connections go (Envoy's 15001).
    pub outbound: Port,
    /// Where captured inbound connections go (Envoy's 15006).
    pub inbound: Port,
    /// The HBONE tunnel port (15008): inbound connections to it are never captured.
    pub tunnel: Port,
}

/// The proxy's user and group ids. Connections they open are not captured, so the proxy's
/// own upstream connections do not loop back into it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyOwner {
    /// User ids (istio-iptables `-u`), at least one.
    pub uids: Vec<Owner>,
    /// Group ids (istio-iptables `-g`), at least one.
    pub gids: Vec<Owner>,
}

/// How inbound connections reach the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterceptMode {
    /// nat `REDIRECT`: the proxy sees itself as the destination and asks for the original
    /// one with `SO_ORIGINAL_DST`; the app sees the proxy as the source.
    Redirect,
    /// mangle `TPROXY` with policy routing: the client's source address is preserved.
    Tproxy {
        /// Packet mark that routes diverted packets to `lo`.
        mark: Mark,
        /// The routing table holding `local 0.0.0.0/0 dev lo`.
        route_table: RouteTable,
    },
}

/// Which inbound destination ports are captured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InboundPorts {
    /// Every port except these (istio-iptables `-b '*' -d …`).
    All {
        /// Ports that reach the app directly.
        except: Vec<PortRange>,
    },
    /// Only these ports (istio-iptables `-b 80,443`).
    Only(Vec<PortRange>),
    /// No inbound capture (istio-iptables `-b ""`).
    Off,
}

/// Inbound capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundCapture {
    /// REDIRECT or TPROXY.
    pub mode: InterceptMode,
    /// Which ports.
    pub ports: InboundPorts,
}

/// Which outbound destinations are captured by address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboundCidrs {
    /// Every destination (istio-iptables `-i '*'`).
    All,
    /// Only these networks (istio-iptables `-i 10.0.0.0/8`).
    Only(Vec<Cidr>),
    /// None by address (istio-iptables `-i ""`); `include_ports` still apply.
    Off,
}

/// Which processes' outbound traffic is captured, by group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnerGroups {
    /// Every group but these (`ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE`).
    All {
        /// Groups whose traffic is never captured.
        except: Vec<Owner>,
    },
    /// Only processes in one of these groups (`ISTIO_OUTBOUND_OWNER_GROUPS`), at most 64.
    Only(Vec<Owner>),
}

/// Outbound capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundCapture {
    /// Destinations captured by address.
    pub include: OutboundCidrs,
    /// Destinations never captured (checked before `include` and `include_ports`).
    pub exclude_cidrs: Vec<Cidr>,
    /// TCP destination ports always captured, whatever the address (istio-iptables `-q`).
    pub include_ports: Vec<PortRange>,
    /// TCP and UDP destination ports never captured (istio-iptables `-o`).
    pub exclude_ports: Vec<PortRange>,
    /// Owner-group filter.
    pub owner_groups: OwnerGroups,
}

/// Interfaces with special treatment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Interfaces {
    /// Traffic in or out of these is never captured (istio-iptables `-c`).
    pub exclude: Vec<Iface>,
    /// Traffic arriving on these is captured as outbound (istio-iptables `-k`, KubeVirt).
    pub reroute: Vec<Iface>,
}

/// DNS capture: UDP and TCP port 53 to the agent's DNS proxy on 15053, with conntrack zones
/// that keep the proxied and the direct flows apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsCapture {
    /// Every port-53 connection (`--capture-all-dns`).
    All,
    /// Only traffic to these nameservers (from the pod's resolv.conf); never empty.
    Only(Vec<Nameserver>),
}

/// The port the agent's DNS proxy listens on.
pub const DNS_PROXY_PORT: Port = Port::new(15053);
/// The DNS port.
pub const DNS_PORT: Port = Port::new(53);
/// Mark the proxy's outbound loopback packets carry in TPROXY mode, so they are not diverted
/// back to it (hard-coded in istio-iptables).
pub const TPROXY_OUTBOUND_MARK: Mark = Mark::new(1338);
/// Istio's limit on owner groups in one rule.
pub const MAX_OWNER_GROUPS: usize = 64;

impl CaptureSpec {
    /// istio-iptables' flag defaults: ports 15001/15006/15008, uid and gid 1337, no inbound
    /// and no outbound capture by address, mark 1337 and table 133 for TPROXY.
    pub fn istio_defaults() -> Self {
        Self {
            proxy: ProxyPorts {
                outbound: Port::new(15001),
                inbound: Port::new(15006),
                tunnel: Port::new(15008),
            },
            owner: ProxyOwner {
                uids: vec![Owner::Id(1337)],
                gids: vec![Owner::Id(1337)],
            },
            inbound: InboundCapture {
                mode: InterceptMode::Redirect,
                ports: InboundPorts::Off,
            },
            outbound: OutboundCapture {
                include: OutboundCidrs::Off,
                exclude_cidrs: Vec::new(),
                include_ports: Vec::new(),
                exclude_ports: Vec::new(),
                owner_groups: OwnerGroups::All { except: Vec::new() },
            },
            interfaces: Interfaces::default(),
            dns: None,
            drop_invalid: false,
            ipv4_loopback: Cidr::host(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            ipv6: false,
        }
    }

    /// The capture Istio's sidecar injector asks for:
    /// `-p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -x "" -b '*' -d 15090,15021,15020`.
    pub fn sidecar() -> Self {
        let mut spec = Self::istio_defaults();
        spec.inbound.ports = InboundPorts::All {
            except: [15090, 15021, 15020]
                .map(|p| PortRange::single(Port::new(p)))
                .to_vec(),
        };
        spec.outbound.include = OutboundCidrs::All;
        spec
    }

    /// The TPROXY parameters, when inbound capture uses TPROXY.
    pub fn tproxy(&self) -> Option<(Mark, RouteTable)> {
        match self.inbound.mode {
            InterceptMode::Tproxy { mark, route_table } => Some((mark, route_table)),
            InterceptMode::Redirect => None,
        }
    }

    /// The families rules are installed for: IPv4 always, IPv6 when on.
    pub fn families(&self) -> &'static [Family] {
        if self.ipv6 {
            &[Family::V4, Family::V6]
        } else {
            &[Family::V4]
        }
    }

    /// Checks the cross-field rules a spec built by hand could break, and that every owner
    /// is one iptables' owner match takes: an id up to [`MAX_OWNER_ID`], or a name this
    /// machine's user or group database knows (iptables resolves names when the rules load
    /// and refuses the payload otherwise). A spec that passes can always be planned,
    /// rendered and loaded.
    ///
    /// # Errors
    /// A [`SpecError`] naming the first offending field and value.
    pub fn validate(&self) -> Result<(), SpecError> {
        self.validate_with(&SystemAccounts)
    }

    /// [`CaptureSpec::validate`], with owner names resolved against `accounts` instead of
    /// this machine's databases.
    ///
    /// # Errors
    /// A [`SpecError`] naming the first offending field and value.
    pub fn validate_with(&self, accounts: &dyn Accounts) -> Result<(), SpecError> {
        let Self {
            proxy,
            owner,
            inbound,
            outbound,
            interfaces: _,
            dns,
            drop_invalid: _,
            ipv4_loopback,
            ipv6: _,
        } = self;
        if proxy.outbound == proxy.inbound {
            return Err(SpecError::new(
                Field::OutboundPort,
                proxy.outbound,
                ValueError::SamePort {
                    other: Field::InboundPort.flag(),
                },
            ));
        }
        if owner.uids.is_empty() {
            return Err(SpecError::new(Field::ProxyUid, "", ValueError::Empty));
        }
        if owner.gids.is_empty() {
            return Err(SpecError::new(Field::ProxyGid, "", ValueError::Empty));
        }
        check_owners(Field::ProxyUid, &owner.uids, accounts)?;
        check_owners(Field::ProxyGid, &owner.gids, accounts)?;
        if matches!(&inbound.ports, InboundPorts::Only(ports) if ports.is_empty()) {
            return Err(SpecError::new(Field::InboundPorts, "", ValueError::Empty));
        }
        if matches!(&outbound.include, OutboundCidrs::Only(cidrs) if cidrs.is_empty()) {
            return Err(SpecError::new(Field::OutboundCidrs, "", ValueError::Empty));
        }
        if let OwnerGroups::Only(groups) = &outbound.owner_groups {
            if groups.is_empty() {
                return Err(SpecError::new(Field::OwnerGroups, "", ValueError::Empty));
            }
            if groups.len() > MAX_OWNER_GROUPS {
                let list = groups
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",");
                return Err(SpecError::new(
                    Field::OwnerGroups,
                    list,
                    ValueError::TooManyGroups { count: groups.len() },
                ));
            }
        }
        match &outbound.owner_groups {
            OwnerGroups::Only(groups) => check_owners(Field::OwnerGroups, groups, accounts)?,
            OwnerGroups::All { except } => check_owners(Field::OwnerGroupsExclude, except, accounts)?,
        }
        if matches!(dns, Some(DnsCapture::Only(servers)) if servers.is_empty()) {
            return Err(SpecError::new(Field::Nameserver, "", ValueError::Empty));
        }
        let loopback_net: Cidr =
            Cidr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8).expect("valid constant");
        if ipv4_loopback.family() != Family::V4
            || ipv4_loopback.prefix() < 8
            || !loopback_net.contains(&ipv4_loopback.addr())
        {
            return Err(SpecError::new(
                Field::Ipv4LoopbackCidr,
                ipv4_loopback,
                ValueError::LoopbackCidr,
            ));
        }
        Ok(())
    }
}

/// Every owner in `list` is an id iptables takes or a name `accounts` resolves: users for
/// `-u`, groups for everything else.
fn check_owners(field: Field, list: &[Owner], accounts: &dyn Accounts) -> Result<(), SpecError> {
    let users = field == Field::ProxyUid;
    for owner in list {
        let reason = match owner {
            Owner::Id(id) if *id > MAX_OWNER_ID => ValueError::OwnerId,
            Owner::Id(_) => continue,
            Owner::Name(name) => {
                let id = if users {
                    accounts.uid(name)
                } else {
                    accounts.gid(name)
                };
                match id {
                    Some(id) if id <= MAX_OWNER_ID => continue,
                    Some(_) => ValueError::OwnerId,
                    None if users => ValueError::NoSuchUser,
                    None => ValueError::NoSuchGroup,
                }
            }
        };
        return Err(SpecError::new(field, owner, reason));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        CaptureSpec::istio_defaults().validate().unwrap();
        CaptureSpec::sidecar().validate().unwrap();
    }

    #[test]
    fn cross_field_rules() {
        let mut spec = CaptureSpec::sidecar();
        spec.ipv4_loopback = "10.0.0.1/32".parse().unwrap();
        let err = spec.validate().unwrap_err();
        assert_eq!(
            (err.field, err.reason),
            (Field::Ipv4LoopbackCidr, ValueError::LoopbackCidr)
        );
        assert_eq!(
            err.to_string(),
            "invalid value \"10.0.0.1/32\" for ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR: must be an IPv4 loopback \
             CIDR inside 127.0.0.0/8 with a prefix of /8 to /32"
        );

        let mut spec = CaptureSpec::sidecar();
        spec.outbound.owner_groups = OwnerGroups::Only((0..65).map(Owner::Id).collect());
        assert_eq!(
            spec.validate().unwrap_err().reason,
            ValueError::TooManyGroups { count: 65 }
        );

        let mut spec = CaptureSpec::sidecar();
        spec.proxy.inbound = spec.proxy.outbound;
        assert_eq!(spec.validate().unwrap_err().field, Field::OutboundPort);

        let mut spec = CaptureSpec::sidecar();
        spec.owner.uids.clear();
        assert_eq!(spec.validate().unwrap_err().field, Field::ProxyUid);
    }

    #[test]
    fn owners_are_ones_iptables_loads() {
        struct Nobody;
        impl Accounts for Nobody {
            fn uid(&self, _: &str) -> Option<u32> {
                None
            }
            fn gid(&self, name: &str) -> Option<u32> {
                // A database entry iptables would still refuse.
                (name == "minus-one").then_some(u32::MAX)
            }
        }
        let mut spec = CaptureSpec::sidecar();
        spec.owner.uids = vec![Owner::Id(1337), Owner::Id(u32::MAX)];
        let err = spec.validate_with(&Nobody).unwrap_err();
        assert_eq!(
            (err.field, err.value.as_str(), err.reason),
            (Field::ProxyUid, "4294967295", ValueError::OwnerId)
        );
        let mut spec = CaptureSpec::sidecar();
        spec.owner.uids = vec![Owner::Name("istio-proxy".into())];
        let err = spec.validate_with(&Nobody).unwrap_err();
        assert_eq!((err.field, err.reason), (Field::ProxyUid, ValueError::NoSuchUser));
        let mut spec = CaptureSpec::sidecar();
        spec.outbound.owner_groups = OwnerGroups::Only(vec![Owner::Name("minus-one".into())]);
        let err = spec.validate_with(&Nobody).unwrap_err();
        assert_eq!((err.field, err.reason), (Field::OwnerGroups, ValueError::OwnerId));
        let mut spec = CaptureSpec::sidecar();
        spec.outbound.owner_groups = OwnerGroups::All {
            except: vec![Owner::Name("wheel-not-here".into())],
        };
        let err = spec.validate_with(&Nobody).unwrap_err();
        assert_eq!(
            (err.field, err.reason),
            (Field::OwnerGroupsExclude, ValueError::NoSuchGroup)
        );
        // Ids need no database.
        CaptureSpec::sidecar().validate_with(&Nobody).unwrap();
    }
}
