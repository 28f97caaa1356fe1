//! [`MapPlan`]: what a pod's [`CaptureSpec`] becomes in the eBPF maps.
//!
//! Planning is pure: [`MapPlan::from_spec`] reads nothing but the spec, and
//! [`MapPlan::entries`] turns the plan into the exact map keys and values for one network
//! namespace cookie and generation. Only [`Node::enroll`](crate::Node::enroll) writes them.
//!
//! | spec | map entries |
//! |---|---|
//! | proxy ports, IPv6 on/off, IPv4 loopback range, first owner, inbound mode (`-b '*'`, a list, `""`) | [`PodConfig`] |
//! | `-u`, `-g`, owner groups | [`OwnerKey`]s in `OWNERS` |
//! | `-o`, `-q`, `-b`/`-d` port ranges | [`PortKey`] prefixes in the `PORTS` LPM trie (a range costs at most 30) |
//! | `-x`, `-i`, the pod's own addresses, the nameservers of DNS capture | [`CidrKey`]s in the `CIDRS` LPM trie |
//! | DNS capture (`--redirect-dns`, `--capture-all-dns`) | `FLAG_DNS`, `FLAG_DNS_ALL` in [`PodConfig`] |
//!
//! Lists have no fixed size: every entry of the spec becomes an entry of a map, and a map that
//! is full fails the enrollment instead of dropping entries.
//!
//! (Over 700 lines on purpose: the code is under 500; the rest is its unit tests, one per
//! spec field's map entries, which read best next to the planning they check.)

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use capture_core::{
    CaptureSpec, Cidr, DnsCapture, InboundPorts, OutboundCidrs, Owner, OwnerGroups, PortRange,
};
use capture_ebpf_common::{
    CIDR_KEY_FIXED_BITS, CIDRS_DNS, CIDRS_LOCAL, CIDRS_OUT_EXCLUDE, CIDRS_OUT_INCLUDE, CidrKey, FAMILY_V4,
    FAMILY_V6, FLAG_DNS, FLAG_DNS_ALL, FLAG_INBOUND_OFF, FLAG_INBOUND_ONLY, FLAG_INCLUDES_LOOPBACK,
    FLAG_IPV6, FLAG_ONLY_GROUPS, OWNER_EXCLUDED_GROUP, OWNER_ONLY_GROUP, OWNER_PROXY_GID, OWNER_PROXY_UID,
    OwnerKey, PORT_KEY_FIXED_BITS, PORTS_IN_EXCLUDE, PORTS_IN_INCLUDE, PORTS_OUT_EXCLUDE, PORTS_OUT_INCLUDE,
    PodConfig, PortKey,
};

use crate::Error;

/// A pod's capture configuration as eBPF map contents, for any network namespace.
///
/// # Examples
/// ```
/// use capture_core::CaptureSpec;
/// use capture_ebpf::MapPlan;
///
/// let plan = MapPlan::from_spec(&CaptureSpec::sidecar()).unwrap();
/// assert_eq!(plan.config.outbound_port, 15001);
/// let entries = plan.entries(42, 1);
/// assert!(entries.owners.iter().all(|k| k.netns == 42 && k.generation == 1));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapPlan {
    /// The pod's [`PodConfig`]; its `generation` is set by [`MapPlan::entries`].
    pub config: PodConfig,
    /// `(OWNER_* list, id)` pairs.
    pub owners: Vec<(u32, u32)>,
    /// Port prefixes of each `PORTS_*` list.
    pub ports: Vec<PortPrefix>,
    /// Networks of each `CIDRS_*` list, host bits cleared.
    pub cidrs: Vec<(u8, Cidr)>,
}

/// A block of ports sharing their first `bits` bits: one `PORTS` LPM-trie entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PortPrefix {
    /// `PORTS_*`.
    pub list: u16,
    /// The first port of the block.
    pub port: u16,
    /// How many leading bits of the port are fixed (16 for a single port).
    pub bits: u8,
}

/// The map keys and values of one pod at one generation: what enrolling writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapEntries {
    /// Value of `POD_CONFIG[netns]`.
    pub config: PodConfig,
    /// Keys of `OWNERS`.
    pub owners: Vec<OwnerKey>,
    /// LPM keys of `PORTS`: `(prefix length, data)`.
    pub ports: Vec<(u32, PortKey)>,
    /// LPM keys of `CIDRS`: `(prefix length, data)`.
    pub cidrs: Vec<(u32, CidrKey)>,
}

impl MapPlan {
    /// Plans the map contents for `spec`.
    ///
    /// The pod's own addresses (which Istio's rules reach through `-o lo`) are not in the spec;
    /// add them with [`MapPlan::with_local_addrs`].
    ///
    /// # Errors
    /// - [`Error::Spec`] when the spec does not validate;
    /// - [`Error::OwnerName`] for a uid, gid or group given by name: the kernel sees numbers,
    ///   and resolving names would read the host's user database;
    /// - [`Error::NotImplemented`] for capture features the eBPF backend does not do yet
    ///   (interface exclusion and rerouting, dropping INVALID packets), rather
    ///   than ignoring them.
    pub fn from_spec(spec: &CaptureSpec) -> Result<MapPlan, Error> {
        spec.validate()?;
        let CaptureSpec {
            proxy,
            owner,
            inbound,
            outbound,
            interfaces,
            dns,
            drop_invalid,
            ipv4_loopback,
            ipv6,
        } = spec;
        if !interfaces.exclude.is_empty() {
            return Err(Error::NotImplemented {
                feature: "excluded interfaces (-c)",
            });
        }
        if !interfaces.reroute.is_empty() {
            return Err(Error::NotImplemented {
                feature: "rerouted interfaces (-k)",
            });
        }
        if *drop_invalid {
            return Err(Error::NotImplemented {
                feature: "dropping INVALID packets (INVALID_DROP)",
            });
        }

        let mut owners = Vec::new();
        for uid in &owner.uids {
            owners.push((OWNER_PROXY_UID, id(uid, "proxy uid (-u)")?));
        }
        for gid in &owner.gids {
            owners.push((OWNER_PROXY_GID, id(gid, "proxy gid (-g)")?));
        }
        let mut flags = 0;
        match &outbound.owner_groups {
            OwnerGroups::All { except } => {
                for group in except {
                    owners.push((
                        OWNER_EXCLUDED_GROUP,
                        id(group, "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE")?,
                    ));
                }
            }
            OwnerGroups::Only(groups) => {
                flags |= FLAG_ONLY_GROUPS;
                for group in groups {
                    owners.push((OWNER_ONLY_GROUP, id(group, "ISTIO_OUTBOUND_OWNER_GROUPS")?));
                }
            }
        }
        owners.sort_unstable();
        owners.dedup();

        let mut ports = Vec::new();
        let mut add_ports = |list, ranges: &[PortRange]| {
            for range in ranges {
                ports.extend(
                    port_prefixes(range.low.get(), range.high.get()).map(|(port, bits)| PortPrefix {
                        list,
                        port,
                        bits,
                    }),
                );
            }
        };
        add_ports(PORTS_OUT_EXCLUDE, &outbound.exclude_ports);
        add_ports(PORTS_OUT_INCLUDE, &outbound.include_ports);
        // The sk_lookup program also lets the tunnel port through whatever the lists say, as
        // Istio's first ISTIO_INBOUND rule does.
        let inbound_flags = match &inbound.ports {
            InboundPorts::All { except } => {
                add_ports(PORTS_IN_EXCLUDE, &[PortRange::single(proxy.tunnel)]);
                add_ports(PORTS_IN_EXCLUDE, except);
                0
            }
            InboundPorts::Only(only) => {
                add_ports(PORTS_IN_INCLUDE, only);
                FLAG_INBOUND_ONLY
            }
            InboundPorts::Off => FLAG_INBOUND_OFF,
        };
        ports.sort_unstable();
        ports.dedup();

        let mut cidrs = Vec::new();
        // Destinations reached over lo whatever the pod's addresses: loopback, and the
        // unspecified address, which connect() treats as this host.
        for local in [
            cidr(Ipv4Addr::new(127, 0, 0, 0).into(), 8),
            cidr(Ipv4Addr::UNSPECIFIED.into(), 32),
            cidr(Ipv6Addr::LOCALHOST.into(), 128),
            cidr(Ipv6Addr::UNSPECIFIED.into(), 128),
        ] {
            cidrs.push((CIDRS_LOCAL, local));
        }
        for excluded in &outbound.exclude_cidrs {
            cidrs.push((CIDRS_OUT_EXCLUDE, masked(excluded)));
        }
        match &outbound.include {
            OutboundCidrs::All => {
                cidrs.push((CIDRS_OUT_INCLUDE, cidr(Ipv4Addr::UNSPECIFIED.into(), 0)));
                cidrs.push((CIDRS_OUT_INCLUDE, cidr(Ipv6Addr::UNSPECIFIED.into(), 0)));
            }
            OutboundCidrs::Only(included) => {
                for net in included {
                    cidrs.push((CIDRS_OUT_INCLUDE, masked(net)));
                }
                if included.iter().any(Cidr::is_loopback) {
                    flags |= FLAG_INCLUDES_LOOPBACK;
                }
            }
            OutboundCidrs::Off => {}
        }
        match dns {
            None => {}
            Some(DnsCapture::All) => flags |= FLAG_DNS | FLAG_DNS_ALL,
            Some(DnsCapture::Only(servers)) => {
                flags |= FLAG_DNS;
                for server in servers {
                    cidrs.push((CIDRS_DNS, Cidr::host(server.addr())));
                }
            }
        }
        dedup_cidrs(&mut cidrs);

        flags |= inbound_flags;
        if *ipv6 {
            flags |= FLAG_IPV6;
        }
        let loopback4 = match ipv4_loopback.network_addr() {
            IpAddr::V4(addr) => addr.octets(),
            // validate() insists on an IPv4 range.
            IpAddr::V6(_) => unreachable!("the IPv4 loopback range is IPv4"),
        };
        let first = &owner.uids[0];
        let config = PodConfig {
            generation: 0,
            flags,
            outbound_port: proxy.outbound.get(),
            inbound_port: proxy.inbound.get(),
            tunnel_port: proxy.tunnel.get(),
            loopback4_prefix: ipv4_loopback.prefix(),
            _pad0: 0,
            loopback4,
            first_owner_list: OWNER_PROXY_UID,
            first_owner_id: id(first, "proxy uid (-u)")?,
        };
        Ok(MapPlan {
            config,
            owners,
            ports,
            cidrs,
        })
    }

    /// Whether the plan captures IPv6 (`ENABLE_INBOUND_IPV6`).
    #[must_use]
    pub fn ipv6(&self) -> bool {
        self.config.flags & FLAG_IPV6 != 0
    }

    /// Adds the pod's own addresses: connections to them go over `lo` (the proxy's hairpin to
    /// its inbound port; the app's traffic to itself is left alone).
    #[must_use]
    pub fn with_local_addrs(mut self, addrs: &[IpAddr]) -> MapPlan {
        for addr in addrs {
            let addr = addr.to_canonical();
            self.cidrs.push((CIDRS_LOCAL, Cidr::host(addr)));
        }
        dedup_cidrs(&mut self.cidrs);
        self
    }

    /// The map keys and values for the pod whose network namespace cookie is `netns`, at
    /// configuration `generation`.
    pub fn entries(&self, netns: u64, generation: u32) -> MapEntries {
        let owners = self
            .owners
            .iter()
            .map(|&(list, id)| OwnerKey {
                netns,
                generation,
                list,
                id,
                _pad: 0,
            })
            .collect();
        let ports = self
            .ports
            .iter()
            .map(|p| {
                let key = PortKey {
                    netns,
                    generation,
                    list: p.list,
                    port: p.port.to_be_bytes(),
                };
                (PORT_KEY_FIXED_BITS + u32::from(p.bits), key)
            })
            .collect();
        let cidrs = self
            .cidrs
            .iter()
            .map(|(list, net)| {
                let (family, addr) = match net.addr() {
                    IpAddr::V4(a) => {
                        let mut addr = [0; 16];
                        addr[..4].copy_from_slice(&a.octets());
                        (FAMILY_V4, addr)
                    }
                    IpAddr::V6(a) => (FAMILY_V6, a.octets()),
                };
                let key = CidrKey {
                    netns,
                    generation,
                    list: *list,
                    family,
                    _pad: [0; 2],
                    addr,
                };
                (CIDR_KEY_FIXED_BITS + u32::from(net.prefix()), key)
            })
            .collect();
        MapEntries {
            config: PodConfig {
                generation,
                ..self.config
            },
            owners,
            ports,
            cidrs,
        }
    }

    /// The plan that map entries were written from (the inverse of [`MapPlan::entries`],
    /// with the pod's local addresses among the CIDRs), in the entries' order: how a pod's
    /// enrolled configuration (from [`Node::enrolled`](crate::Node::enrolled)) is shown.
    #[must_use]
    pub fn from_entries(entries: &MapEntries) -> MapPlan {
        let MapEntries {
            config,
            owners,
            ports,
            cidrs,
        } = entries;
        let owners = owners.iter().map(|k| (k.list, k.id)).collect();
        let ports = ports
            .iter()
            .map(|(bits, k)| PortPrefix {
                list: k.list,
                port: u16::from_be_bytes(k.port),
                bits: u8::try_from(bits.saturating_sub(PORT_KEY_FIXED_BITS)).unwrap_or(u8::MAX),
            })
            .collect();
        let cidrs = cidrs
            .iter()
            .filter_map(|(bits, k)| {
                let addr = match k.family {
                    FAMILY_V4 => IpAddr::V4(Ipv4Addr::new(k.addr[0], k.addr[1], k.addr[2], k.addr[3])),
                    _ => IpAddr::V6(Ipv6Addr::from(k.addr)),
                };
                let prefix = u8::try_from(bits.saturating_sub(CIDR_KEY_FIXED_BITS)).ok()?;
                Some((k.list, Cidr::new(addr, prefix).ok()?))
            })
            .collect();
        MapPlan {
            config: PodConfig {
                generation: 0,
                ..*config
            },
            owners,
            ports,
            cidrs,
        }
    }
}

impl fmt::Display for MapPlan {
    /// The plan as `--dry-run` shows it: one line per map entry, in map order.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            config,
            owners,
            ports,
            cidrs,
        } = self;
        writeln!(
            f,
            "POD_CONFIG outbound={} inbound={} tunnel={} flags={:#x} loopback4={}/{} first_owner={}:{}",
            config.outbound_port,
            config.inbound_port,
            config.tunnel_port,
            config.flags,
            Ipv4Addr::from(config.loopback4),
            config.loopback4_prefix,
            owner_list_name(config.first_owner_list),
            config.first_owner_id
        )?;
        for (list, id) in owners {
            writeln!(f, "OWNERS {} {id}", owner_list_name(*list))?;
        }
        for p in ports {
            let list = match p.list {
                PORTS_OUT_EXCLUDE => "out-exclude",
                PORTS_OUT_INCLUDE => "out-include",
                PORTS_IN_EXCLUDE => "in-exclude",
                _ => "in-include",
            };
            writeln!(f, "PORTS {list} {}/{}", p.port, p.bits)?;
        }
        for (list, net) in cidrs {
            let list = match *list {
                CIDRS_OUT_EXCLUDE => "out-exclude",
                CIDRS_OUT_INCLUDE => "out-include",
                CIDRS_DNS => "dns-server",
                _ => "local",
            };
            writeln!(f, "CIDRS {list} {net}")?;
        }
        Ok(())
    }
}

fn owner_list_name(list: u32) -> &'static str {
    match list {
        OWNER_PROXY_UID => "uid",
        OWNER_PROXY_GID => "gid",
        OWNER_EXCLUDED_GROUP => "excluded-group",
        _ => "only-group",
    }
}

fn id(owner: &Owner, field: &'static str) -> Result<u32, Error> {
    match owner {
        Owner::Id(id) => Ok(*id),
        Owner::Name(name) => Err(Error::OwnerName {
            field,
            name: name.clone(),
        }),
    }
}

fn cidr(addr: IpAddr, prefix: u8) -> Cidr {
    Cidr::new(addr, prefix).expect("a valid constant network")
}

/// The network with its host bits cleared, as an LPM trie stores it.
fn masked(net: &Cidr) -> Cidr {
    cidr(net.network_addr(), net.prefix())
}

fn dedup_cidrs(cidrs: &mut Vec<(u8, Cidr)>) {
    let mut seen = std::collections::HashSet::new();
    cidrs.retain(|entry| seen.insert(*entry));
}

/// The prefixes (first port, fixed bits) that cover `low..=high` exactly, fewest first-fit.
fn port_prefixes(low: u16, high: u16) -> impl Iterator<Item = (u16, u8)> {
    let (mut start, end) = (u32::from(low), u32::from(high));
    std::iter::from_fn(move || {
        if start > end {
            return None;
        }
        // The largest aligned block starting at `start` that does not pass `end`.
        let mut size: u32 = if start == 0 {
            1 << 16
        } else {
            1 << start.trailing_zeros()
        };
        while start + size - 1 > end {
            size >>= 1;
        }
        let prefix = (start as u16, (16 - size.trailing_zeros()) as u8);
        start += size;
        Some(prefix)
    })
}

#[cfg(test)]
mod tests {
    use capture_core::{DnsCapture, Port};

    use super::*;

    fn plan(edit: impl FnOnce(&mut CaptureSpec)) -> MapPlan {
        let mut spec = CaptureSpec::sidecar();
        edit(&mut spec);
        MapPlan::from_spec(&spec).unwrap()
    }

    fn covered(prefixes: &[(u16, u8)]) -> Vec<u16> {
        let mut ports: Vec<u16> = prefixes
            .iter()
            .flat_map(|&(port, bits)| {
                let size = 1u32 << (16 - u32::from(bits));
                (u32::from(port)..u32::from(port) + size).map(|p| p as u16)
            })
            .collect();
        ports.sort_unstable();
        ports
    }

    #[test]
    fn port_ranges_become_exact_prefixes() {
        assert_eq!(port_prefixes(80, 80).collect::<Vec<_>>(), [(80, 16)]);
        assert_eq!(
            port_prefixes(8000, 8080).collect::<Vec<_>>(),
            [(8000, 10), (8064, 12), (8080, 16)]
        );
        for (low, high) in [(1, 65535), (1, 1), (1023, 1025), (15000, 15099), (65535, 65535)] {
            let prefixes: Vec<_> = port_prefixes(low, high).collect();
            assert_eq!(
                covered(&prefixes),
                (low..=high).collect::<Vec<_>>(),
                "{low}:{high}"
            );
            assert!(prefixes.len() <= 30, "{low}:{high} took {}", prefixes.len());
        }
    }

    #[test]
    fn sidecar_defaults() {
        let plan = plan(|_| {});
        assert_eq!(
            plan.config,
            PodConfig {
                generation: 0,
                flags: 0,
                outbound_port: 15001,
                inbound_port: 15006,
                tunnel_port: 15008,
                loopback4_prefix: 32,
                _pad0: 0,
                loopback4: [127, 0, 0, 1],
                first_owner_list: OWNER_PROXY_UID,
                first_owner_id: 1337,
            }
        );
        assert_eq!(plan.owners, [(OWNER_PROXY_UID, 1337), (OWNER_PROXY_GID, 1337)]);
        assert_eq!(
            plan.to_string(),
            "POD_CONFIG outbound=15001 inbound=15006 tunnel=15008 flags=0x0 loopback4=127.0.0.1/32 first_owner=uid:1337\n\
             OWNERS uid 1337\n\
             OWNERS gid 1337\n\
             PORTS in-exclude 15008/16\n\
             PORTS in-exclude 15020/16\n\
             PORTS in-exclude 15021/16\n\
             PORTS in-exclude 15090/16\n\
             CIDRS local 127.0.0.0/8\n\
             CIDRS local 0.0.0.0/32\n\
             CIDRS local ::1/128\n\
             CIDRS local ::/128\n\
             CIDRS out-include 0.0.0.0/0\n\
             CIDRS out-include ::/0\n"
        );
    }

    #[test]
    fn lists_are_not_truncated() {
        // Merbridge keeps 20 entries per list and drops the rest; every entry must survive.
        let excluded: Vec<Cidr> = (0..500u32)
            .map(|i| Cidr::new(Ipv4Addr::from(0x0a00_0000 | (i << 8)).into(), 24).unwrap())
            .collect();
        let ports: Vec<PortRange> = (1..=300).map(|p| PortRange::single(Port::new(p))).collect();
        let plan = plan(|s| {
            s.outbound.exclude_cidrs = excluded.clone();
            s.outbound.exclude_ports = ports.clone();
            s.owner.uids = (1000..1100).map(Owner::Id).collect();
        });
        let count = |list| plan.cidrs.iter().filter(|(l, _)| *l == list).count();
        assert_eq!(count(CIDRS_OUT_EXCLUDE), 500);
        assert_eq!(
            plan.ports.iter().filter(|p| p.list == PORTS_OUT_EXCLUDE).count(),
            300
        );
        assert_eq!(
            plan.owners.iter().filter(|(l, _)| *l == OWNER_PROXY_UID).count(),
            100
        );
        assert_eq!(plan.config.first_owner_id, 1000);
    }

    #[test]
    fn cidrs_are_masked_and_typed_by_family() {
        let plan = plan(|s| {
            s.outbound.include =
                OutboundCidrs::Only(vec!["10.1.2.3/8".parse().unwrap(), "fd00::1/64".parse().unwrap()]);
            s.outbound.exclude_cidrs = vec!["192.168.0.1/16".parse().unwrap()];
        });
        let entries = plan.entries(7, 3);
        let find = |list, family| {
            entries
                .cidrs
                .iter()
                .filter(|(_, k)| k.list == list && k.family == family)
                .map(|(bits, k)| (*bits, k.addr))
                .collect::<Vec<_>>()
        };
        let v4 = |a: [u8; 4]| {
            let mut addr = [0; 16];
            addr[..4].copy_from_slice(&a);
            addr
        };
        assert_eq!(find(CIDRS_OUT_INCLUDE, FAMILY_V4), [(128 + 8, v4([10, 0, 0, 0]))]);
        assert_eq!(
            find(CIDRS_OUT_INCLUDE, FAMILY_V6),
            [(128 + 64, "fd00::".parse::<Ipv6Addr>().unwrap().octets())]
        );
        assert_eq!(
            find(CIDRS_OUT_EXCLUDE, FAMILY_V4),
            [(128 + 16, v4([192, 168, 0, 0]))]
        );
        assert!(
            entries
                .cidrs
                .iter()
                .all(|(_, k)| k.netns == 7 && k.generation == 3)
        );
        assert_eq!(entries.config.generation, 3);
        assert_eq!(plan.config.flags & FLAG_INCLUDES_LOOPBACK, 0);
    }

    #[test]
    fn flags_follow_the_spec() {
        let plan = plan(|s| {
            s.ipv6 = true;
            s.outbound.include = OutboundCidrs::Only(vec!["127.0.0.0/8".parse().unwrap()]);
            s.outbound.owner_groups = OwnerGroups::Only(vec![Owner::Id(7), Owner::Id(8)]);
        });
        assert_eq!(
            plan.config.flags,
            FLAG_IPV6 | FLAG_INCLUDES_LOOPBACK | FLAG_ONLY_GROUPS
        );
        assert!(plan.owners.contains(&(OWNER_ONLY_GROUP, 7)));
        let plan = plan_ok(|s| {
            s.outbound.owner_groups = OwnerGroups::All {
                except: vec![Owner::Id(9)],
            }
        });
        assert!(plan.owners.contains(&(OWNER_EXCLUDED_GROUP, 9)));
        assert_eq!(plan.config.flags, 0);
    }

    fn plan_ok(edit: impl FnOnce(&mut CaptureSpec)) -> MapPlan {
        plan(edit)
    }

    #[test]
    fn ports_keep_istio_lists() {
        let plan = plan(|s| {
            s.outbound.exclude_ports = vec!["8000:8080".parse().unwrap()];
            s.outbound.include_ports = vec!["3306".parse().unwrap()];
            s.inbound.ports = InboundPorts::Only(vec!["80".parse().unwrap()]);
        });
        let list = |l| {
            plan.ports
                .iter()
                .filter(|p| p.list == l)
                .map(|p| (p.port, p.bits))
                .collect::<Vec<_>>()
        };
        assert_eq!(list(PORTS_OUT_EXCLUDE), [(8000, 10), (8064, 12), (8080, 16)]);
        assert_eq!(list(PORTS_OUT_INCLUDE), [(3306, 16)]);
        assert_eq!(list(PORTS_IN_INCLUDE), [(80, 16)]);
        assert!(list(PORTS_IN_EXCLUDE).is_empty());
        let (bits, key) = plan.entries(1, 1).ports[0];
        assert_eq!(bits, PORT_KEY_FIXED_BITS + 10);
        assert_eq!(key.port, 8000u16.to_be_bytes());
    }

    #[test]
    fn entries_read_back_give_the_plan() {
        let plan = plan(|s| {
            s.outbound.exclude_ports = vec!["8000:8080".parse().unwrap()];
            s.outbound.include = OutboundCidrs::Only(vec!["10.1.2.3/8".parse().unwrap()]);
            s.outbound.exclude_cidrs = vec!["fd00::1/64".parse().unwrap()];
            s.ipv6 = true;
        })
        .with_local_addrs(&["10.1.0.1".parse().unwrap(), "fd00:1::1".parse().unwrap()]);
        let back = MapPlan::from_entries(&plan.entries(9, 4));
        assert_eq!(back.config, plan.config);
        assert_eq!(back.owners, plan.owners);
        assert_eq!(back.ports, plan.ports);
        assert_eq!(back.cidrs, plan.cidrs);
        assert_eq!(back.to_string(), plan.to_string());
    }

    #[test]
    fn inbound_mode_is_a_flag() {
        let mode = |p: MapPlan| p.config.flags & (FLAG_INBOUND_OFF | FLAG_INBOUND_ONLY);
        assert_eq!(
            mode(plan(|_| {})),
            0,
            "-b '*' captures all but the excluded ports"
        );
        let only = plan(|s| s.inbound.ports = InboundPorts::Only(vec!["8080".parse().unwrap()]));
        assert_eq!(mode(only.clone()), FLAG_INBOUND_ONLY);
        assert!(only.ports.iter().all(|p| p.list != PORTS_IN_EXCLUDE));
        assert_eq!(
            mode(plan(|s| s.inbound.ports = InboundPorts::Off)),
            FLAG_INBOUND_OFF
        );
    }

    #[test]
    fn local_addrs_are_hosts() {
        let plan = plan(|_| {}).with_local_addrs(&[
            "10.1.0.1".parse().unwrap(),
            "::ffff:10.1.0.1".parse().unwrap(),
            "fd00:1::1".parse().unwrap(),
        ]);
        let locals: Vec<String> = plan
            .cidrs
            .iter()
            .filter(|(l, _)| *l == CIDRS_LOCAL)
            .map(|(_, c)| c.to_string())
            .collect();
        assert_eq!(
            locals,
            [
                "127.0.0.0/8",
                "0.0.0.0/32",
                "::1/128",
                "::/128",
                "10.1.0.1/32",
                "fd00:1::1/128"
            ]
        );
    }

    #[test]
    fn dns_capture_is_two_flags_and_the_nameservers() {
        let all = plan(|s| s.dns = Some(DnsCapture::All));
        assert_eq!(
            all.config.flags & (FLAG_DNS | FLAG_DNS_ALL),
            FLAG_DNS | FLAG_DNS_ALL
        );
        assert!(all.cidrs.iter().all(|(list, _)| *list != CIDRS_DNS));

        let only = plan(|s| {
            s.dns = Some(DnsCapture::Only(vec![
                "10.96.0.10".parse().unwrap(),
                "fd00::a".parse().unwrap(),
                "10.96.0.10".parse().unwrap(),
            ]))
        });
        assert_eq!(only.config.flags & (FLAG_DNS | FLAG_DNS_ALL), FLAG_DNS);
        let servers: Vec<String> = only
            .cidrs
            .iter()
            .filter(|(list, _)| *list == CIDRS_DNS)
            .map(|(_, net)| net.to_string())
            .collect();
        assert_eq!(servers, ["10.96.0.10/32", "fd00::a/128"]);
        assert!(only.to_string().contains("CIDRS dns-server 10.96.0.10/32\n"));
        let entries = only.entries(7, 3);
        assert_eq!(MapPlan::from_entries(&entries), only);

        let off = plan(|_| {});
        assert_eq!(off.config.flags & (FLAG_DNS | FLAG_DNS_ALL), 0);
    }

    #[test]
    fn unsupported_features_are_refused_not_ignored() {
        let refuse = |edit: fn(&mut CaptureSpec)| {
            let mut spec = CaptureSpec::sidecar();
            edit(&mut spec);
            MapPlan::from_spec(&spec).unwrap_err()
        };
        assert!(matches!(
            refuse(|s| s.interfaces.exclude = vec!["eth1".parse().unwrap()]),
            Error::NotImplemented { .. }
        ));
        // A name the system knows (validation refuses unknown ones before this).
        let err = refuse(|s| s.owner.uids = vec!["root".parse().unwrap()]);
        assert_eq!(
            err.to_string(),
            "owner \"root\" in proxy uid (-u) is a name; the eBPF backend needs numeric ids"
        );
        assert!(matches!(refuse(|s| s.owner.gids.clear()), Error::Spec(_)));
    }
}
