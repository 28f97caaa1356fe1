//! Reading a node's maps back: the enrolled pods, what each is enrolled with, and the
//! programs' counters.

use aya::maps::{IterableMap, MapData, MapError};
use capture_ebpf_common::{
    CIDRS, CidrKey, INBOUND_LISTENERS, ORIG_BY_COOKIE, ORIG_BY_PAIR, OWNERS, OwnerKey, POD_CONFIG, POD_STATS,
    PORTS, PodConfig, PodStats, PortKey, SPLICE, STAT_BYPASS_CIDR, STAT_BYPASS_GID, STAT_BYPASS_GROUP,
    STAT_BYPASS_IPV6, STAT_BYPASS_LOOPBACK, STAT_BYPASS_NOT_INCLUDED, STAT_BYPASS_PASSTHROUGH,
    STAT_BYPASS_PORT, STAT_BYPASS_UID, STAT_COUNT, STAT_DNS, STAT_DNS_ANSWER, STAT_HAIRPIN, STAT_INBOUND,
    STAT_INBOUND_REFUSED, STAT_ORIG_DST, STAT_OUTBOUND, STAT_PASSED, STAT_PEERNAME, STAT_SLOTS,
    STAT_SPLICED_MESSAGES, STAT_SPLICED_SOCKETS, STAT_STATE_FULL, STATS,
};

use super::{Node, keys_of};
use crate::{Error, MapEntries, NetnsCookie};

/// Counters kept by the programs, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Connections redirected to the outbound port.
    pub outbound: u64,
    /// Connections redirected to the inbound port (the proxy calling its own pod).
    pub hairpin: u64,
    /// TCP connections of enrolled pods left alone, for any reason.
    pub passed: u64,
    /// `SO_ORIGINAL_DST` answers.
    pub orig_dst: u64,
    /// `getpeername` answers with the original destination.
    pub peername: u64,
    /// Connections left alone because a per-connection map was full.
    pub state_full: u64,
    /// Inbound connections handed to the proxy's inbound listener.
    pub inbound: u64,
    /// Inbound connections refused because the pod's proxy had no inbound listener.
    pub inbound_refused: u64,
    /// DNS queries sent to the DNS proxy (TCP and UDP connects, unconnected UDP datagrams).
    pub dns: u64,
    /// UDP answers of the DNS proxy given back the resolver's address as their source.
    pub dns_answers: u64,
    /// Of [`Stats::passed`], why each was left alone.
    pub bypassed: Bypassed,
    /// Sockets spliced with `sk_msg` (two per app-proxy connection; `--sk-msg`).
    pub spliced_sockets: u64,
    /// Messages the `sk_msg` program handed straight to the peer socket.
    pub spliced_messages: u64,
}

/// Why TCP connections of enrolled pods were left alone (the `STAT_BYPASS_*` slots), summed
/// over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bypassed {
    /// Excluded destination port (`-o`).
    pub port: u64,
    /// From the inbound passthrough source (`127.0.0.6`, `::6`).
    pub passthrough: u64,
    /// To the pod itself or the loopback range, and not the proxy's hairpin.
    pub loopback: u64,
    /// A proxy uid's (`-u`).
    pub uid: u64,
    /// A proxy gid's (`-g`).
    pub gid: u64,
    /// Left alone by the owner-group filter.
    pub group: u64,
    /// Destination in an excluded CIDR (`-x`).
    pub cidr: u64,
    /// Neither port (`-q`) nor destination (`-i`) included.
    pub not_included: u64,
    /// An IPv6 destination of a pod without IPv6 capture.
    pub ipv6: u64,
}

impl std::fmt::Display for Stats {
    /// One counter a line, `name value`, as `capture-init ebpf stats` prints them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self {
            outbound,
            hairpin,
            passed,
            orig_dst,
            peername,
            state_full,
            inbound,
            inbound_refused,
            dns,
            dns_answers,
            bypassed:
                Bypassed {
                    port,
                    passthrough,
                    loopback,
                    uid,
                    gid,
                    group,
                    cidr,
                    not_included,
                    ipv6,
                },
            spliced_sockets,
            spliced_messages,
        } = self;
        writeln!(f, "outbound_redirected {outbound}")?;
        writeln!(f, "hairpin_redirected {hairpin}")?;
        writeln!(f, "passed {passed}")?;
        writeln!(f, "original_dst_answers {orig_dst}")?;
        writeln!(f, "getpeername_answers {peername}")?;
        writeln!(f, "passed_state_map_full {state_full}")?;
        writeln!(f, "inbound_redirected {inbound}")?;
        writeln!(f, "inbound_refused_no_listener {inbound_refused}")?;
        writeln!(f, "dns_redirected {dns}")?;
        writeln!(f, "dns_answers_from_resolver {dns_answers}")?;
        writeln!(f, "passed_excluded_port {port}")?;
        writeln!(f, "passed_passthrough_source {passthrough}")?;
        writeln!(f, "passed_loopback {loopback}")?;
        writeln!(f, "passed_proxy_uid {uid}")?;
        writeln!(f, "passed_proxy_gid {gid}")?;
        writeln!(f, "passed_owner_group {group}")?;
        writeln!(f, "passed_excluded_cidr {cidr}")?;
        writeln!(f, "passed_not_included {not_included}")?;
        writeln!(f, "passed_ipv6_not_captured {ipv6}")?;
        writeln!(f, "spliced_sockets {spliced_sockets}")?;
        write!(f, "spliced_messages {spliced_messages}")
    }
}

// A slot the programs count must have its field in `Stats`.
const _: () = assert!(
    STAT_COUNT as usize * size_of::<u64>() == size_of::<Stats>(),
    "Stats has one field per STATS slot"
);
const _: () = assert!(STAT_COUNT <= STAT_SLOTS, "STATS has room for every counter");

impl Node {
    /// The configuration a pod is enrolled with, if any.
    ///
    /// # Errors
    /// [`Error::Map`] when the map cannot be read.
    pub fn config(&self, cookie: NetnsCookie) -> Result<Option<PodConfig>, Error> {
        match self.pod_config.get(&cookie.0, 0) {
            Ok(config) => Ok(Some(config)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(Error::Map {
                map: POD_CONFIG,
                op: "get",
                source,
            }),
        }
    }

    /// Every enrolled pod with its configuration, by cookie.
    ///
    /// # Errors
    /// [`Error::Map`] when the map cannot be read.
    pub fn pods(&self) -> Result<Vec<(NetnsCookie, PodConfig)>, Error> {
        let mut pods = self
            .pod_config
            .iter()
            .map(|item| item.map(|(k, v)| (NetnsCookie(k), v)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| Error::Map {
                map: POD_CONFIG,
                op: "iterate",
                source,
            })?;
        pods.sort_unstable_by_key(|(cookie, _)| *cookie);
        Ok(pods)
    }

    /// What a pod is enrolled with: its [`PodConfig`] and the owner, port and CIDR entries of
    /// the generation in force, each list sorted; `None` when it is not enrolled. Comparing it
    /// with [`MapPlan::entries`](crate::MapPlan::entries) at the same generation tells whether enrolling again would
    /// change anything.
    ///
    /// # Errors
    /// [`Error::Map`] when a map cannot be read.
    pub fn enrolled(&self, cookie: NetnsCookie) -> Result<Option<MapEntries>, Error> {
        let Some(config) = self.config(cookie)? else {
            return Ok(None);
        };
        let (netns, generation) = (cookie.0, config.generation);
        let mut owners: Vec<OwnerKey> = keys_of(self.owners.keys(), OWNERS)?
            .into_iter()
            .filter(|k| k.netns == netns && k.generation == generation)
            .collect();
        let mut ports: Vec<(u32, PortKey)> = keys_of(self.ports.keys(), PORTS)?
            .into_iter()
            .map(|k| (k.prefix_len(), k.data()))
            .filter(|(_, k)| k.netns == netns && k.generation == generation)
            .collect();
        let mut cidrs: Vec<(u32, CidrKey)> = keys_of(self.cidrs.keys(), CIDRS)?
            .into_iter()
            .map(|k| (k.prefix_len(), k.data()))
            .filter(|(_, k)| k.netns == netns && k.generation == generation)
            .collect();
        owners.sort_unstable();
        ports.sort_unstable();
        cidrs.sort_unstable();
        Ok(Some(MapEntries {
            config,
            owners,
            ports,
            cidrs,
        }))
    }

    /// How many per-connection records exist: `(by socket cookie, by 4-tuple)`. Both are
    /// removed when the client socket closes.
    ///
    /// # Errors
    /// [`Error::Map`] when a map cannot be read.
    pub fn connection_entries(&self) -> Result<(usize, usize), Error> {
        let by_cookie = count(self.orig_by_cookie.keys(), ORIG_BY_COOKIE)?;
        let by_pair = count(self.orig_by_pair.keys(), ORIG_BY_PAIR)?;
        Ok((by_cookie, by_pair))
    }

    /// How many entries the pod has in the configuration maps (owners, ports, CIDRs).
    ///
    /// # Errors
    /// [`Error::Map`] when a map cannot be read.
    pub fn pod_entries(&self, cookie: NetnsCookie) -> Result<usize, Error> {
        let netns = cookie.0;
        let owners = keys_of(self.owners.keys(), OWNERS)?
            .iter()
            .filter(|k| k.netns == netns)
            .count();
        let ports = keys_of(self.ports.keys(), PORTS)?
            .iter()
            .filter(|k| k.data().netns == netns)
            .count();
        let cidrs = keys_of(self.cidrs.keys(), CIDRS)?
            .iter()
            .filter(|k| k.data().netns == netns)
            .count();
        Ok(owners + ports + cidrs)
    }

    /// The programs' counters, summed over CPUs.
    ///
    /// # Errors
    /// [`Error::Map`] when the map cannot be read.
    pub fn stats(&self) -> Result<Stats, Error> {
        let sum = |index: u32| -> Result<u64, Error> {
            let values = self.stats.get(&index, 0).map_err(|source| Error::Map {
                map: STATS,
                op: "get",
                source,
            })?;
            Ok(values.iter().sum())
        };
        Ok(Stats {
            outbound: sum(STAT_OUTBOUND)?,
            hairpin: sum(STAT_HAIRPIN)?,
            passed: sum(STAT_PASSED)?,
            orig_dst: sum(STAT_ORIG_DST)?,
            peername: sum(STAT_PEERNAME)?,
            state_full: sum(STAT_STATE_FULL)?,
            inbound: sum(STAT_INBOUND)?,
            inbound_refused: sum(STAT_INBOUND_REFUSED)?,
            dns: sum(STAT_DNS)?,
            dns_answers: sum(STAT_DNS_ANSWER)?,
            bypassed: Bypassed {
                port: sum(STAT_BYPASS_PORT)?,
                passthrough: sum(STAT_BYPASS_PASSTHROUGH)?,
                loopback: sum(STAT_BYPASS_LOOPBACK)?,
                uid: sum(STAT_BYPASS_UID)?,
                gid: sum(STAT_BYPASS_GID)?,
                group: sum(STAT_BYPASS_GROUP)?,
                cidr: sum(STAT_BYPASS_CIDR)?,
                not_included: sum(STAT_BYPASS_NOT_INCLUDED)?,
                ipv6: sum(STAT_BYPASS_IPV6)?,
            },
            spliced_sockets: sum(STAT_SPLICED_SOCKETS)?,
            spliced_messages: sum(STAT_SPLICED_MESSAGES)?,
        })
    }
}

/// How full one map is ([`Node::occupancy`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapUsage {
    /// The map's name (`capture_ebpf_common`'s).
    pub map: &'static str,
    /// Entries in it now.
    pub entries: usize,
    /// Its capacity (`max_entries`), as the kernel reports it.
    pub capacity: u32,
}

impl Node {
    /// The programs' counters, summed over CPUs, indexed by `STAT_*`: for a front end that
    /// names each slot itself (the node agent's metrics table), so that a new slot needs no new
    /// field here.
    ///
    /// # Errors
    /// [`Error::Map`] when the map cannot be read.
    pub fn counters(&self) -> Result<PodStats, Error> {
        let mut counters = [0; STAT_SLOTS as usize];
        for (index, counter) in (0..STAT_COUNT).zip(counters.iter_mut()) {
            let values = self.stats.get(&index, 0).map_err(|source| Error::Map {
                map: STATS,
                op: "get",
                source,
            })?;
            *counter = values.iter().sum();
        }
        Ok(counters)
    }

    /// Every enrolled pod's own counters ([`POD_STATS`]), summed over CPUs and indexed by
    /// `STAT_*` as [`Node::counters`], by cookie.
    ///
    /// # Errors
    /// [`Error::Map`] when the map cannot be read.
    pub fn pod_counters(&self) -> Result<Vec<(NetnsCookie, PodStats)>, Error> {
        let mut pods = Vec::new();
        for item in self.pod_stats.iter() {
            let (cookie, per_cpu) = item.map_err(|source| Error::Map {
                map: POD_STATS,
                op: "iterate",
                source,
            })?;
            let mut sum = [0u64; STAT_SLOTS as usize];
            for cpu in per_cpu.iter() {
                for (total, value) in sum.iter_mut().zip(cpu) {
                    *total += value;
                }
            }
            pods.push((NetnsCookie(cookie), sum));
        }
        pods.sort_unstable_by_key(|(cookie, _)| *cookie);
        Ok(pods)
    }

    /// How full each map with a variable number of entries is (the array [`STATS`] is always
    /// full and left out). Each map's keys are walked, one `bpf(2)` call per entry.
    ///
    /// # Errors
    /// [`Error::Map`] when a map cannot be read.
    pub fn occupancy(&self) -> Result<Vec<MapUsage>, Error> {
        fn usage<K: aya::Pod>(
            name: &'static str,
            map: &MapData,
            keys: impl Iterator<Item = Result<K, MapError>>,
        ) -> Result<MapUsage, Error> {
            let info = map.info().map_err(|source| Error::Map {
                map: name,
                op: "read info of",
                source,
            })?;
            Ok(MapUsage {
                map: name,
                entries: count(keys, name)?,
                capacity: info.max_entries(),
            })
        }
        Ok(vec![
            usage(POD_CONFIG, self.pod_config.map(), self.pod_config.keys())?,
            usage(OWNERS, self.owners.map(), self.owners.keys())?,
            usage(PORTS, self.ports.map(), self.ports.keys())?,
            usage(CIDRS, self.cidrs.map(), self.cidrs.keys())?,
            usage(
                ORIG_BY_COOKIE,
                self.orig_by_cookie.map(),
                self.orig_by_cookie.keys(),
            )?,
            usage(ORIG_BY_PAIR, self.orig_by_pair.map(), self.orig_by_pair.keys())?,
            usage(
                INBOUND_LISTENERS,
                self.inbound_listeners.map(),
                self.inbound_listeners.keys(),
            )?,
            usage(POD_STATS, self.pod_stats.map(), self.pod_stats.keys())?,
            usage(SPLICE, self.splice.map(), self.splice.keys())?,
        ])
    }
}

fn count<K>(keys: impl Iterator<Item = Result<K, MapError>>, map: &'static str) -> Result<usize, Error> {
    keys_of(keys, map).map(|k| k.len())
}
