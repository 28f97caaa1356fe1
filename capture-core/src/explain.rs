//! Which rule decides a connection, and where it lands: `capture-init explain`.
//!
//! A [`Connection`] (direction, addresses, protocol, the socket's owner, the interface) is
//! walked through rules the way netfilter walks a new connection's first packet: the tables of
//! a hook in priority order (raw, mangle, nat), each from its built-in chain through our jumps,
//! `RETURN`s and targets. The rules walked are the very rules capture installs ([`plan`](crate::plan()) for
//! iptables, [`nft::plan`](crate::nft::plan) for native nftables), or the ones read back from
//! `iptables-save` ([`Walk::from_saves`]), so the rule named as the one that decides is printed as
//! `iptables-save` (or `nft`) shows it. Only the matches and targets capture's renderers emit are
//! understood; a rule with anything else is reported and assumed not to match.
//!
//! The eBPF backend decides in its programs instead of rules; capture-ebpf mirrors their
//! decision order over its map plan and reports in the same [`Explanation`].

mod ir;
mod parse;

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use crate::rules::Proto;
use crate::spec::CaptureSpec;
use crate::types::{Family, Iface, Port};

pub use ir::Walk;

/// Which way a connection goes, seen from the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Opened by a process in the pod (nat `OUTPUT`, `connect()`).
    Outbound,
    /// Arriving at the pod from outside (`PREROUTING`, socket lookup).
    Inbound,
}

impl Direction {
    /// `outbound` or `inbound`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Outbound => "outbound",
            Self::Inbound => "inbound",
        }
    }
}

/// One connection to explain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    /// Which way it goes.
    pub direction: Direction,
    /// TCP or UDP.
    pub proto: Proto,
    /// The source address, if known: for outbound the socket's bound address (the passthrough
    /// source `127.0.0.6` matters), for inbound the peer.
    pub src: Option<IpAddr>,
    /// The source port, if known.
    pub src_port: Option<u16>,
    /// Where the connection is meant to go.
    pub dst: SocketAddr,
    /// The socket owner's uid (outbound).
    pub uid: u32,
    /// The socket owner's gid (outbound).
    pub gid: u32,
    /// The interface: for outbound the one it leaves by (`lo` for the pod's own addresses),
    /// for inbound the one it arrives on. `None`: some interface other than `lo` that no rule
    /// names.
    pub iface: Option<Iface>,
}

impl Connection {
    /// A TCP connection out of the pod to `dst` by a socket of `uid` (and a gid of the same
    /// number), from no particular address, by an interface no rule names.
    pub fn outbound_tcp(dst: SocketAddr, uid: u32) -> Self {
        Self {
            direction: Direction::Outbound,
            proto: Proto::Tcp,
            src: None,
            src_port: None,
            dst,
            uid,
            gid: uid,
            iface: None,
        }
    }
}

impl Connection {
    /// The connection's address family (an IPv4-mapped IPv6 destination is IPv4, as the
    /// kernel sends it).
    pub fn family(&self) -> Family {
        Family::of(&self.dst_ip())
    }

    /// The destination address, IPv4-mapped addresses as IPv4.
    pub fn dst_ip(&self) -> IpAddr {
        unmap(self.dst.ip())
    }

    /// The destination with an IPv4-mapped address as IPv4.
    pub fn dst_unmapped(&self) -> SocketAddr {
        SocketAddr::new(self.dst_ip(), self.dst.port())
    }

    /// The interface it leaves by or arrives on: as given, else `lo` for a loopback destination.
    pub fn effective_iface(&self) -> Option<Iface> {
        self.iface.clone().or_else(|| {
            (self.direction == Direction::Outbound && self.dst_ip().is_loopback())
                .then(|| "lo".parse().expect("valid interface name"))
        })
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it stands for.
pub fn unmap(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    }
}

/// Where a connection lands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Sent to the proxy on `port`; the proxy learns `original_dst`.
    Captured {
        /// The proxy's port (outbound, inbound or TPROXY port).
        port: Port,
        /// The destination the proxy reads back (`SO_ORIGINAL_DST`, or the local address).
        original_dst: SocketAddr,
    },
    /// DNS sent to the agent's resolver on `port` (15053).
    Dns {
        /// The resolver's port.
        port: Port,
        /// The nameserver the query was meant for.
        original_dst: SocketAddr,
    },
    /// Left alone: it goes where it was going.
    Bypassed,
    /// Dropped (or refused) before it reaches anyone.
    Dropped,
}

impl Verdict {
    /// `captured`, `dns`, `bypassed` or `dropped`: the JSON `verdict`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Captured { .. } => "captured",
            Self::Dns { .. } => "dns",
            Self::Bypassed => "bypassed",
            Self::Dropped => "dropped",
        }
    }

    /// The port it lands on, when it is redirected.
    pub fn port(&self) -> Option<Port> {
        match self {
            Self::Captured { port, .. } | Self::Dns { port, .. } => Some(*port),
            Self::Bypassed | Self::Dropped => None,
        }
    }

    /// The original destination, when it is redirected.
    pub fn original_dst(&self) -> Option<SocketAddr> {
        match self {
            Self::Captured { original_dst, .. } | Self::Dns { original_dst, .. } => Some(*original_dst),
            Self::Bypassed | Self::Dropped => None,
        }
    }
}

/// Why: the kind of rule (or program check) that decided. Its [`Reason::code`] is stable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// An outbound connection captured to the outbound port.
    Outbound,
    /// An inbound connection captured to the inbound port (REDIRECT, TPROXY, socket lookup).
    Inbound,
    /// The proxy calling its own pod: sent back to the inbound port.
    Hairpin,
    /// DNS to the agent's resolver.
    Dns,
    /// The proxy's own uid (`-u`).
    ProxyUid,
    /// The proxy's own gid (`-g`).
    ProxyGid,
    /// An excluded outbound port (`-o`).
    ExcludedPort,
    /// An excluded inbound port (`-d`).
    ExcludedInboundPort,
    /// The tunnel (HBONE) port (`-e`).
    TunnelPort,
    /// An excluded destination CIDR (`-x`).
    ExcludedCidr,
    /// The loopback range (`127.0.0.1/32`, `::1`).
    Loopback,
    /// A process other than the proxy talking to its own pod over `lo`.
    LocalToSelf,
    /// From the inbound passthrough source (`127.0.0.6`, `::6`).
    Passthrough,
    /// The owner-group filter (`ISTIO_OUTBOUND_OWNER_GROUPS[_EXCLUDE]`).
    OwnerGroup,
    /// An excluded interface (`-c`).
    ExcludedInterface,
    /// Marked by the proxy, or already handled by its socket (TPROXY bookkeeping).
    ProxyMark,
    /// No rule captures it: not an included CIDR or port, not an inbound port, not TCP.
    NotIncluded,
    /// No capture at all for this family or direction (no rules, IPv6 off, `-b ""`).
    NoCapture,
    /// Dropped as INVALID (`--drop-invalid`).
    Invalid,
    /// Captured, but nobody listens on the proxy's inbound port (eBPF refuses it).
    NoListener,
}

impl Reason {
    /// The stable name of the reason: the JSON `reason`.
    pub fn code(self) -> &'static str {
        match self {
            Self::Outbound => "outbound",
            Self::Inbound => "inbound",
            Self::Hairpin => "hairpin",
            Self::Dns => "dns",
            Self::ProxyUid => "proxy-uid",
            Self::ProxyGid => "proxy-gid",
            Self::ExcludedPort => "excluded-port",
            Self::ExcludedInboundPort => "excluded-inbound-port",
            Self::TunnelPort => "tunnel-port",
            Self::ExcludedCidr => "excluded-cidr",
            Self::Loopback => "loopback",
            Self::LocalToSelf => "local-to-self",
            Self::Passthrough => "passthrough",
            Self::OwnerGroup => "owner-group",
            Self::ExcludedInterface => "excluded-interface",
            Self::ProxyMark => "proxy-mark",
            Self::NotIncluded => "not-included",
            Self::NoCapture => "no-capture",
            Self::Invalid => "invalid",
            Self::NoListener => "no-listener",
        }
    }

    /// The reason in words.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Outbound => "an outbound destination the rules capture (-i, -q)",
            Self::Inbound => "an inbound port the rules capture (-b)",
            Self::Hairpin => "the proxy calling its own pod goes back to its inbound port",
            Self::Dns => "DNS capture to the agent's resolver",
            Self::ProxyUid => "the socket belongs to the proxy's uid (-u)",
            Self::ProxyGid => "the socket belongs to the proxy's gid (-g)",
            Self::ExcludedPort => "the destination port is excluded (-o)",
            Self::ExcludedInboundPort => "the destination port is excluded from inbound capture (-d)",
            Self::TunnelPort => "the tunnel port is never captured (-e)",
            Self::ExcludedCidr => "the destination is in an excluded CIDR (-x)",
            Self::Loopback => "the destination is in the loopback range",
            Self::LocalToSelf => "a process other than the proxy talking to its own pod over lo",
            Self::Passthrough => "from the inbound passthrough source (the proxy forwarding to the app)",
            Self::OwnerGroup => {
                "the owner-group filter (ISTIO_OUTBOUND_OWNER_GROUPS, ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE)"
            }
            Self::ExcludedInterface => "the interface is excluded (-c)",
            Self::ProxyMark => "a packet of the proxy's own (marked) traffic",
            Self::NotIncluded => "no rule captures it (not an included CIDR, port or protocol)",
            Self::NoCapture => "there is no capture for this family or direction",
            Self::Invalid => "conntrack considers it INVALID (--drop-invalid)",
            Self::NoListener => "captured, but the proxy has no inbound listener",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// One step of the walk: a rule that matched (or, for eBPF, a check that held).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The table (`nat`, `istio-proxy-nat`) or program (`connect4`).
    pub table: String,
    /// The chain (`ISTIO_OUTPUT`), empty for a program.
    pub chain: String,
    /// The rule as `iptables-save` or `nft` prints it, or the program's check in words.
    pub rule: String,
}

/// What decided a connection and where it lands, on one backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    /// The backend: `iptables`, `nftables` or `ebpf`.
    pub backend: &'static str,
    /// Where it lands.
    pub verdict: Verdict,
    /// Why.
    pub reason: Reason,
    /// The rule (or check) that decided; `None` when none did (the chain ended).
    pub rule: Option<Step>,
    /// The rules that matched on the way, the deciding one last.
    pub path: Vec<Step>,
    /// Things the explanation assumed or could not read.
    pub notes: Vec<String>,
}

/// Explains `conn` against the iptables rules `spec` installs.
pub fn iptables(spec: &CaptureSpec, conn: &Connection) -> Explanation {
    let family = conn.family();
    let walk = if spec.families().contains(&family) {
        Walk::from_rules(&crate::plan(spec, family))
    } else {
        Walk::default()
    };
    walk.explain("iptables", Some(spec), conn)
}

/// Explains `conn` against the native nftables rules `spec` installs.
pub fn nftables(spec: &CaptureSpec, conn: &Connection) -> Explanation {
    Walk::from_nft(&crate::nft::plan(spec)).explain("nftables", Some(spec), conn)
}

#[cfg(test)]
mod tests;
