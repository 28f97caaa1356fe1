//! Two namespaces joined by a veth pair: a pod and the peer it talks to.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU16, Ordering};

use crate::{Family, NetNs};

static NEXT_TOPOLOGY: AtomicU16 = AtomicU16::new(0);

/// A pod namespace and a peer namespace joined by a veth pair (`eth0` on both sides).
///
/// | Netns  | IPv4          | IPv6          |
/// |--------|---------------|---------------|
/// | `pod`  | `10.<n>.0.1/24` | `fd00:<n>::1/64` |
/// | `peer` | `10.<n>.0.2/24` | `fd00:<n>::2/64` |
///
/// `n` (1..=254) is unique among the topologies alive in this process, so parallel tests use distinct
/// subnets; in the IPv6 address it is written with the same digits (`10.12.0.1` pairs with `fd00:12::1`).
/// IPv6 addresses are added with `nodad`, so they are usable at once. There are no default routes: each
/// side reaches only the other side's /24 and /64.
///
/// Dropping the topology removes both namespaces, which also removes the veth pair.
#[derive(Debug)]
pub struct Topology {
    /// The namespace whose traffic is captured.
    pub pod: NetNs,
    /// The namespace on the other end of the veth pair.
    pub peer: NetNs,
    index: u16,
}

impl Topology {
    /// Creates both namespaces, the veth pair and the addresses.
    ///
    /// # Panics
    ///
    /// When a namespace cannot be created or an `ip` command fails; the namespaces made so far are
    /// removed.
    #[must_use]
    pub fn new() -> Topology {
        Topology::with_index(NEXT_TOPOLOGY.fetch_add(1, Ordering::Relaxed) % 254 + 1)
    }

    /// Like [`Topology::new`], with the subnets of index `index` (1..=254), even if another live
    /// topology uses them: for tests that need two pods with identical addresses (each in its own
    /// namespaces, so they never meet).
    ///
    /// # Panics
    ///
    /// When `index` is out of range, or as [`Topology::new`].
    #[must_use]
    pub fn with_index(index: u16) -> Topology {
        assert!(
            (1..=254).contains(&index),
            "topology index {index} out of 1..=254"
        );
        let pod = NetNs::new();
        let peer = NetNs::new();
        // Both ends are created directly in their namespaces, so the root namespace never sees them.
        pod.ip(&[
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            peer.name(),
        ]);
        let topology = Topology { pod, peer, index };
        for (ns, host) in [(&topology.pod, 1), (&topology.peer, 2)] {
            let v4 = format!("{}/24", topology.v4(host));
            let v6 = format!("{}/64", topology.v6(host));
            ns.ip(&["addr", "add", &v4, "dev", "eth0"]);
            ns.ip(&["-6", "addr", "add", &v6, "dev", "eth0", "nodad"]);
            ns.ip(&["link", "set", "eth0", "up"]);
        }
        topology
    }

    /// The `n` in this topology's subnets.
    #[must_use]
    pub fn index(&self) -> u16 {
        self.index
    }

    /// The pod's address on the veth: `10.<n>.0.1` or `fd00:<n>::1`.
    #[must_use]
    pub fn pod_ip(&self, family: Family) -> IpAddr {
        self.ip(family, 1)
    }

    /// The peer's address on the veth: `10.<n>.0.2` or `fd00:<n>::2`.
    #[must_use]
    pub fn peer_ip(&self, family: Family) -> IpAddr {
        self.ip(family, 2)
    }

    /// `pod_ip(family):port`.
    #[must_use]
    pub fn pod_addr(&self, family: Family, port: u16) -> SocketAddr {
        SocketAddr::new(self.pod_ip(family), port)
    }

    /// `peer_ip(family):port`.
    #[must_use]
    pub fn peer_addr(&self, family: Family, port: u16) -> SocketAddr {
        SocketAddr::new(self.peer_ip(family), port)
    }

    fn ip(&self, family: Family, host: u8) -> IpAddr {
        match family {
            Family::V4 => self.v4(host).into(),
            Family::V6 => self.v6(host).into(),
        }
    }

    fn v4(&self, host: u8) -> Ipv4Addr {
        let n = u8::try_from(self.index).expect("the index is at most 254");
        Ipv4Addr::new(10, n, 0, host)
    }

    fn v6(&self, host: u8) -> Ipv6Addr {
        // The decimal digits of n read as hex, so 10.12.0.1 pairs with fd00:12::1.
        let n = u16::from_str_radix(&self.index.to_string(), 16).expect("at most three decimal digits");
        Ipv6Addr::new(0xfd00, n, 0, 0, 0, 0, 0, host.into())
    }
}

impl Default for Topology {
    fn default() -> Self {
        Topology::new()
    }
}
