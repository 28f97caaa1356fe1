//! Types shared by capture's eBPF programs (`capture-ebpf-programs`) and their loader
//! (`capture-ebpf`): map names, map keys and values, and the constants both sides agree on.
//!
//! Every key and value is `#[repr(C)]` with explicit padding fields, so the bytes the loader
//! writes are the bytes the programs read, and no key carries uninitialised padding (hash maps
//! compare keys byte for byte). With the feature `user`, each type implements [`aya::Pod`].
//!
//! # Maps
//!
//! | map | type | key | value | written by | read by |
//! |---|---|---|---|---|---|
//! | [`POD_CONFIG`] | hash | netns cookie (`u64`) | [`PodConfig`] | loader (enroll) | all programs |
//! | [`OWNERS`] | hash | [`OwnerKey`] | `u8` (1) | loader | connect4/6 |
//! | [`PORTS`] | LPM trie | [`PortKey`] | `u8` (1) | loader | connect4/6 |
//! | [`CIDRS`] | LPM trie | [`CidrKey`] | `u8` (1) | loader | connect4/6 |
//! | [`ORIG_BY_COOKIE`] | hash | socket cookie (`u64`) | [`OrigDst`] | connect4/6, sendmsg4/6 (UDP DNS) | sockops, getpeername4/6, recvmsg4/6 |
//! | [`ORIG_BY_PAIR`] | hash | [`PairKey`] | [`OrigDst`] | sockops | getsockopt |
//! | [`INBOUND_LISTENERS`] | sockhash | [`ListenerKey`] | socket | sockops (listen), loader | sk_lookup |
//! | [`STATS`] | per-CPU array ([`STAT_SLOTS`]) | `u32` index (`STAT_*`) | `u64` | all programs | loader, tests |
//! | [`POD_STATS`] | per-CPU hash | netns cookie (`u64`) | [`PodStats`] | all programs (existing entries only) | loader (creates at enroll, deletes at unenroll), node agent |
//! | [`POD_META`] | hash | netns cookie (`u64`) | [`PodMeta`] | loader (enroll by capture-cni) | loader only (CNI GC, `ebpf pods`) |
//! | [`AYA_LOGS`] | ring buffer | | aya-log records | programs (rare events) | node agent |
//! | [`SK_LOOKUP_PROGS`] | prog array (1) | `u32` 0 | the node's `sk_lookup` program | loader (load, upgrade) | each pod's stub (tail call) |
//! | [`LOOKUP_NETNS`] | per-CPU array (1) | `u32` 0 | `u64` netns cookie | each pod's stub | sk_lookup |
//! | [`NODE_CONFIG`] | array (1) | `u32` 0 | [`NodeConfig`] | loader (`ebpf load --sk-msg`, `ebpf upgrade`) | sockops |
//! | [`SPLICE`] | sockhash | [`SpliceKey`] | socket | sockops (established, with [`NODE_SK_MSG`]) | sk_msg |
//! | [`SPLICE_PASSED`] | LRU hash | [`SpliceKey`] | `u8` (1) | sk_msg (a message found no peer) | sk_msg |
//!
//! Per-pod entries are keyed by the pod's network namespace cookie and a generation, so a
//! pod's configuration can be replaced by writing the next generation's entries and then
//! switching [`PodConfig::generation`] in one map update. Per-connection entries
//! ([`ORIG_BY_COOKIE`], [`ORIG_BY_PAIR`]) are removed by the sockops program when a TCP client
//! socket closes, and by the `sock_release` program when a UDP socket is released.
#![no_std]

/// Per-pod configuration, keyed by network namespace cookie.
pub const POD_CONFIG: &str = "POD_CONFIG";
/// The pod's proxy uids and gids and its owner-group filter.
pub const OWNERS: &str = "OWNERS";
/// Port lists (excluded and included ports), as prefixes of the 16-bit port.
pub const PORTS: &str = "PORTS";
/// Address lists (excluded and included CIDRs, the pod's local addresses).
pub const CIDRS: &str = "CIDRS";
/// Original destination of a redirected connection, by the client socket's cookie; for a UDP
/// socket, the resolver its last DNS query redirected to the DNS proxy was sent to.
pub const ORIG_BY_COOKIE: &str = "ORIG_BY_COOKIE";
/// Original destination of a redirected connection, by its established 4-tuple.
pub const ORIG_BY_PAIR: &str = "ORIG_BY_PAIR";
/// Counters, one slot per `STAT_*` index.
pub const STATS: &str = "STATS";
/// The proxy's listening sockets on the inbound port, by network namespace cookie and family.
pub const INBOUND_LISTENERS: &str = "INBOUND_LISTENERS";
/// Per-pod counters, by network namespace cookie: the `STAT_*` counters of [`STATS`] for that
/// pod's events alone. The loader creates a pod's entry when it enrolls it and deletes it when it
/// unenrolls it; the programs only add to entries that exist.
pub const POD_STATS: &str = "POD_STATS";
/// Who enrolled a pod and as what (CNI container id, interface, pod name), by network namespace
/// cookie. Userspace only: the programs never read it; it lives and dies with the pins.
pub const POD_META: &str = "POD_META";

/// The ring buffer of aya-log's records (aya-log-ebpf names it): written by the programs on
/// rare events only (a full map, an inbound connection refused), read by the node agent. Pinned
/// like the others, so programs loaded later (by an upgrade) write into the one the agent reads.
pub const AYA_LOGS: &str = "AYA_LOGS";

/// The node's one `sk_lookup` program, in slot 0 of a one-slot program array. Each enrolled
/// pod's network namespace gets a stub of a few instructions (assembled by the loader, not in
/// the object) that writes the pod's cookie into [`LOOKUP_NETNS`] and tail calls into slot 0:
/// `sk_lookup` programs cannot call `bpf_get_netns_cookie`, and netns links carry no attach
/// cookie, so this is how the one program learns whose lookup it runs for. Replacing the slot
/// replaces the program of every pod at once (`Node::upgrade`). The kernel empties a program
/// array when its last user reference (descriptor or pin) goes, so it lives pinned.
pub const SK_LOOKUP_PROGS: &str = "SK_LOOKUP_PROGS";
/// The network namespace cookie of the socket lookup in progress on this CPU: a per-CPU array
/// of one `u64`, written by a pod's stub right before its tail call into [`SK_LOOKUP_PROGS`],
/// read by the `sk_lookup` program (0 or no slot: not enrolled, the connection passes).
pub const LOOKUP_NETNS: &str = "LOOKUP_NETNS";

/// Node-wide settings: a one-entry array of [`NodeConfig`], written by the loader, read by the
/// programs.
pub const NODE_CONFIG: &str = "NODE_CONFIG";
/// The sockets of spliced connections (both ends in one pod, one of them the proxy's), by
/// [`SpliceKey`]: the `sk_msg` program is attached to it and hands each message sent on one
/// socket straight to its peer's receive queue. Sockops inserts the sockets on establishment
/// while [`NODE_SK_MSG`] is set; the kernel removes a socket when it closes.
pub const SPLICE: &str = "SPLICE";

/// Spliced sockets one of whose messages found no peer in [`SPLICE`] and took the ordinary
/// path, by their own [`SpliceKey`]: their later messages take it too, so that no connection's
/// bytes in one direction ever take both paths (the receiver could read a spliced message
/// before an earlier one still in its TCP queue). An LRU map: entries of closed sockets age out.
pub const SPLICE_PASSED: &str = "SPLICE_PASSED";

/// Every map, in the order the loader pins them.
pub const MAP_NAMES: [&str; 16] = [
    POD_CONFIG,
    OWNERS,
    PORTS,
    CIDRS,
    ORIG_BY_COOKIE,
    ORIG_BY_PAIR,
    STATS,
    INBOUND_LISTENERS,
    POD_STATS,
    POD_META,
    AYA_LOGS,
    SK_LOOKUP_PROGS,
    LOOKUP_NETNS,
    NODE_CONFIG,
    SPLICE,
    SPLICE_PASSED,
];

/// The pin of the one-entry array userspace writes [`LAYOUT_VERSION`] into when it loads the
/// programs (the programs never read it).
pub const LAYOUT: &str = "LAYOUT";

/// The version of the maps' keys and values and of their meaning. Bump it with any change to
/// them: pins of another version are refused, never read with the wrong meaning (the kernel
/// only checks key and value sizes).
pub const LAYOUT_VERSION: u32 = 5;

/// Older layout versions whose maps mean the same in this one (maps were only added, or
/// resized): pins of these are upgraded in place (`Node::upgrade`), keeping every entry. A
/// version whose keys or values changed meaning needs its own migration and is not listed.
///
/// v1 -> v2 added `POD_STATS`, `POD_META`, two `STATS` slots (DNS), the `CIDRS` list of DNS servers and the
/// DNS flags of `PodConfig`; every v1 entry means the same in v2.
///
/// v2 -> v3 added `AYA_LOGS`, gave `STATS` and each `POD_STATS` value room for
/// [`STAT_SLOTS`] counters (the `STAT_BYPASS_*` ones added); a v2 `POD_STATS` value is copied into the first slots of the
/// wider one (`Node::upgrade`'s one value-size migration), every other entry means the same.
///
/// v3 -> v4 added [`SK_LOOKUP_PROGS`] and [`LOOKUP_NETNS`]: the node's one `sk_lookup` program
/// and a stub per pod replace v3's instance of the whole program per pod (its cookie in a
/// global). `Node::upgrade` puts the program in the new array and each pod's link on its stub;
/// every entry means the same.
///
/// v4 -> v5 added [`NODE_CONFIG`] (created with every setting off, so a v4 node keeps
/// behaving as it did), [`SPLICE`] with the `sk_msg` program attached to it, [`SPLICE_PASSED`],
/// and the
/// `STAT_SPLICED_*` counters (in slots v3 already had room for); every entry means the same.
pub const UPGRADES_FROM: &[u32] = &[1, 2, 3, 4];

/// How many pods (network namespaces) can be enrolled at once.
pub const MAX_PODS: u32 = 4096;
/// Capacity of [`OWNERS`]: owner entries of all pods. Four a pod at [`MAX_PODS`] (1.5 MiB
/// preallocated, at 96 bytes an entry, instead of 6 MiB for 65,536): Istio's sidecar writes two
/// (`-u 1337`, `-g 1337`), and enrollments run one at a time under the node lock, so only one pod
/// holds two generations' entries at once; the room left is for owner-group lists
/// (`ISTIO_OUTBOUND_OWNER_GROUPS*`), which few pods set. A full map fails the enrollment naming
/// it (the pod keeps its previous entries), and `Node::upgrade` carries a node's entries into
/// another capacity.
pub const MAX_OWNER_ENTRIES: u32 = 4 * MAX_PODS;
/// Capacity of [`PORTS`]: port prefixes of all pods.
pub const MAX_PORT_ENTRIES: u32 = 65536;
/// Capacity of [`CIDRS`]: CIDR entries of all pods.
pub const MAX_CIDR_ENTRIES: u32 = 65536;
/// Capacity of the per-connection maps: connections redirected and not yet closed, node-wide.
pub const MAX_CONNECTIONS: u32 = 65536;
/// Capacity of [`INBOUND_LISTENERS`]: one IPv4 and one IPv6 listener per pod.
pub const MAX_LISTENERS: u32 = 2 * MAX_PODS;
/// Capacity of [`SPLICE`]: two sockets per spliced connection, node-wide: 16,384 connections
/// spliced at once. A full map only leaves further connections on the ordinary loopback path
/// (counted as [`STAT_STATE_FULL`]). The map exists whether or not the setting is on, and its
/// bucket array costs 16 bytes an entry: 512 KiB here, not the 2 MiB of
/// [`MAX_CONNECTIONS`] connections.
pub const MAX_SPLICED: u32 = 2 * 16384;
/// Capacity of [`SPLICE_PASSED`] (preallocated, as LRU maps are: about 130 KiB). Only sockets
/// whose peer was not spliced in time land there (a first write racing the handshake's last ACK,
/// a full [`SPLICE`]), which are few.
pub const MAX_SPLICE_PASSED: u32 = 1024;

/// Names of the programs in the object, as the loader finds them.
pub mod programs {
    /// `cgroup/connect4`: outbound IPv4 redirection.
    pub const CONNECT4: &str = "capture_connect4";
    /// `cgroup/connect6`: outbound IPv6 (and IPv4-mapped) redirection.
    pub const CONNECT6: &str = "capture_connect6";
    /// `sockops`: moves the original destination to the connection's 4-tuple, cleans up on close.
    pub const SOCKOPS: &str = "capture_sockops";
    /// `cgroup/getsockopt`: answers `SO_ORIGINAL_DST` on the proxy's accepted socket.
    pub const GETSOCKOPT: &str = "capture_getsockopt";
    /// `cgroup/getpeername4`: the app sees its original IPv4 peer.
    pub const GETPEERNAME4: &str = "capture_getpeername4";
    /// `cgroup/getpeername6`: the app sees its original IPv6 (or IPv4-mapped) peer.
    pub const GETPEERNAME6: &str = "capture_getpeername6";
    /// `sk_lookup`: hands connections arriving at an enrolled pod to the proxy's inbound
    /// listener; loaded once per node into [`SK_LOOKUP_PROGS`](crate::SK_LOOKUP_PROGS), reached
    /// from each enrolled pod's network namespace through its stub.
    pub const SK_LOOKUP: &str = "capture_sk_lookup";
    /// `cgroup/sendmsg4`: an unconnected UDP DNS query goes to the DNS proxy.
    pub const SENDMSG4: &str = "capture_sendmsg4";
    /// `cgroup/sendmsg6`: the same for IPv6.
    pub const SENDMSG6: &str = "capture_sendmsg6";
    /// `cgroup/recvmsg4`: the DNS proxy's answer is seen coming from the resolver asked.
    pub const RECVMSG4: &str = "capture_recvmsg4";
    /// `cgroup/recvmsg6`: the same for IPv6 (and IPv4-mapped) sockets.
    pub const RECVMSG6: &str = "capture_recvmsg6";
    /// `cgroup/sock_release`: removes a released UDP socket's record.
    pub const SOCK_RELEASE: &str = "capture_sock_release";
    /// `sk_msg`: hands a message sent on a spliced socket to its peer's receive queue; attached
    /// to [`SPLICE`](crate::SPLICE), not to the cgroup.
    pub const SK_MSG: &str = "capture_sk_msg";
}

/// [`NodeConfig::flags`]: splice connections between an enrolled pod's app and its proxy with
/// the `sk_msg` program (`capture-init ebpf load --sk-msg`). Connections established while it
/// is set stay spliced until they close; clearing it affects new connections only.
pub const NODE_SK_MSG: u32 = 1 << 0;

/// The value of [`NODE_CONFIG`]'s one entry: the node's settings. All zero (every setting
/// off) when the map is created.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeConfig {
    /// `NODE_*` bits.
    pub flags: u32,
    /// Zero.
    pub _pad: u32,
}

/// Key of [`SPLICE`]: one socket of a spliced connection, as that socket sees it. Its peer's key
/// is the same with local and remote swapped. Addresses are 16 bytes, IPv4 written
/// IPv4-mapped, so an `AF_INET` app and a dual-stack proxy socket pair up; the network
/// namespace cookie keeps identical 4-tuples of two pods apart.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpliceKey {
    /// The network namespace cookie of the socket (and of its peer).
    pub netns: u64,
    /// The socket's own address.
    pub local_addr: [u8; 16],
    /// Its peer's address.
    pub remote_addr: [u8; 16],
    /// The socket's own port, host byte order.
    pub local_port: u16,
    /// Its peer's port, host byte order.
    pub remote_port: u16,
    /// Zero.
    pub _pad: u32,
}

/// [`PodConfig::flags`]: capture IPv6 connections too (istio-iptables `ISTIO_DUAL_STACK`,
/// `--ipv6`). IPv4, including IPv4-mapped IPv6 destinations, is always captured.
pub const FLAG_IPV6: u32 = 1 << 0;
/// [`PodConfig::flags`]: an included CIDR lies in loopback, so the app's loopback traffic is
/// not exempted (Istio drops its `-o lo ! --uid-owner … -j RETURN` rules then).
pub const FLAG_INCLUDES_LOOPBACK: u32 = 1 << 1;
/// [`PodConfig::flags`]: only processes in one of the [`OWNER_ONLY_GROUP`] groups are captured.
pub const FLAG_ONLY_GROUPS: u32 = 1 << 2;
/// [`PodConfig::flags`]: no inbound capture (`-b ""`). Without this flag and
/// [`FLAG_INBOUND_ONLY`], every inbound port but [`PORTS_IN_EXCLUDE`] is captured (`-b '*'`).
pub const FLAG_INBOUND_OFF: u32 = 1 << 3;
/// [`PodConfig::flags`]: only the inbound ports in [`PORTS_IN_INCLUDE`] are captured
/// (`-b 80,443`).
pub const FLAG_INBOUND_ONLY: u32 = 1 << 4;
/// [`PodConfig::flags`]: DNS capture (`--redirect-dns`): TCP and UDP to port [`DNS_PORT`] of the
/// [`CIDRS_DNS`] servers go to the DNS proxy on [`DNS_PROXY_PORT`], and the loopback owner rules
/// spare TCP port 53 as Istio's do then.
pub const FLAG_DNS: u32 = 1 << 5;
/// [`PodConfig::flags`]: with [`FLAG_DNS`], port 53 of every destination goes to the DNS proxy
/// (`--capture-all-dns`), not only the [`CIDRS_DNS`] servers.
pub const FLAG_DNS_ALL: u32 = 1 << 6;

/// The DNS port, host byte order.
pub const DNS_PORT: u16 = 53;
/// The port the agent's DNS proxy listens on (127.0.0.1 and ::1), host byte order.
pub const DNS_PROXY_PORT: u16 = 15053;

/// What a pod's connections are redirected to and how its loopback rules behave.
///
/// The value of [`POD_CONFIG`], keyed by the pod's network namespace cookie
/// (`SO_NETNS_COOKIE`, `bpf_get_netns_cookie`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodConfig {
    /// The generation of this pod's [`OWNERS`], [`PORTS`] and [`CIDRS`] entries in force.
    pub generation: u32,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// The proxy's outbound port (15001), host byte order.
    pub outbound_port: u16,
    /// The proxy's inbound port (15006), host byte order.
    pub inbound_port: u16,
    /// The tunnel port (15008), never hairpinned to the inbound port.
    pub tunnel_port: u16,
    /// Prefix length of [`PodConfig::loopback4`].
    pub loopback4_prefix: u8,
    /// Zero.
    pub _pad0: u8,
    /// The IPv4 "this host" range (127.0.0.1/32 by default), network byte order.
    pub loopback4: [u8; 4],
    /// [`OWNER_PROXY_UID`] or [`OWNER_PROXY_GID`]: the list of the first owner rule Istio emits,
    /// which alone decides loopback traffic unless [`FLAG_INCLUDES_LOOPBACK`] is set.
    pub first_owner_list: u32,
    /// The id of that first owner.
    pub first_owner_id: u32,
}

/// [`OwnerKey::list`]: a proxy uid (`-u`); its connections are not captured.
pub const OWNER_PROXY_UID: u32 = 1;
/// [`OwnerKey::list`]: a proxy gid (`-g`); its connections are not captured.
pub const OWNER_PROXY_GID: u32 = 2;
/// [`OwnerKey::list`]: a group whose connections are not captured
/// (`ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE`).
pub const OWNER_EXCLUDED_GROUP: u32 = 3;
/// [`OwnerKey::list`]: a group whose connections are captured when [`FLAG_ONLY_GROUPS`] is set
/// (`ISTIO_OUTBOUND_OWNER_GROUPS`).
pub const OWNER_ONLY_GROUP: u32 = 4;

/// Key of [`OWNERS`]: one uid or gid in one list of one pod.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OwnerKey {
    /// The pod's network namespace cookie.
    pub netns: u64,
    /// The pod configuration generation this entry belongs to.
    pub generation: u32,
    /// `OWNER_*`.
    pub list: u32,
    /// The uid or gid.
    pub id: u32,
    /// Zero.
    pub _pad: u32,
}

/// [`PortKey::list`]: outbound TCP destination ports never captured (`-o`).
pub const PORTS_OUT_EXCLUDE: u16 = 1;
/// [`PortKey::list`]: outbound TCP destination ports always captured (`-q`).
pub const PORTS_OUT_INCLUDE: u16 = 2;
/// [`PortKey::list`]: inbound ports that reach the app directly (`-d` with `-b '*'`).
pub const PORTS_IN_EXCLUDE: u16 = 3;
/// [`PortKey::list`]: the only inbound ports captured (`-b 80,443`).
pub const PORTS_IN_INCLUDE: u16 = 4;

/// Bits of [`PortKey`] before the port: netns, generation and list are always matched in full.
pub const PORT_KEY_FIXED_BITS: u32 = 112;

/// Data of an LPM-trie key of [`PORTS`]: a port prefix in one list of one pod.
///
/// A port range is stored as the few prefixes that cover it exactly (`8000:8080` is
/// `8000/10`, `8064/12`, `8080/16`), so any range costs at most 30 entries.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortKey {
    /// The pod's network namespace cookie.
    pub netns: u64,
    /// The pod configuration generation this entry belongs to.
    pub generation: u32,
    /// `PORTS_*`.
    pub list: u16,
    /// The port, network byte order (so prefixes are high bits first).
    pub port: [u8; 2],
}

/// [`CidrKey::list`]: destinations never captured (`-x`, plus the IPv4 loopback range).
pub const CIDRS_OUT_EXCLUDE: u8 = 1;
/// [`CidrKey::list`]: destinations captured (`-i`).
pub const CIDRS_OUT_INCLUDE: u8 = 2;
/// [`CidrKey::list`]: addresses of the pod itself, whose traffic goes over `lo`.
pub const CIDRS_LOCAL: u8 = 3;
/// [`CidrKey::list`]: the pod's nameservers (resolv.conf), whose port 53 goes to the DNS proxy
/// when [`FLAG_DNS`] is set without [`FLAG_DNS_ALL`].
pub const CIDRS_DNS: u8 = 4;

/// [`CidrKey::family`] for IPv4 (the address in the first 4 bytes).
pub const FAMILY_V4: u8 = 4;
/// [`CidrKey::family`] for IPv6.
pub const FAMILY_V6: u8 = 6;

/// Bits of [`CidrKey`] before the address: netns, generation, list, family and padding are
/// always matched in full.
pub const CIDR_KEY_FIXED_BITS: u32 = 128;

/// Data of an LPM-trie key of [`CIDRS`]: a network in one list of one pod.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CidrKey {
    /// The pod's network namespace cookie.
    pub netns: u64,
    /// The pod configuration generation this entry belongs to.
    pub generation: u32,
    /// `CIDRS_*`.
    pub list: u8,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// Zero.
    pub _pad: [u8; 2],
    /// The network address, host bits cleared; IPv4 uses the first 4 bytes, the rest are zero.
    pub addr: [u8; 16],
}

/// `AF_INET`, as [`OrigDst::family`] stores it.
pub const AF_INET: u16 = 2;
/// `AF_INET6`, as [`OrigDst::family`] stores it.
pub const AF_INET6: u16 = 10;

/// Where a redirected connection was going.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrigDst {
    /// The address: IPv4 in the first 4 bytes (rest zero), or IPv6.
    pub addr: [u8; 16],
    /// The port, host byte order.
    pub port: u16,
    /// [`AF_INET`] (also for an IPv4-mapped destination of a dual-stack socket) or [`AF_INET6`].
    pub family: u16,
    /// Zero.
    pub _pad: u32,
}

/// Key of [`ORIG_BY_PAIR`]: an established redirected connection as the client sees it.
///
/// Addresses are 16 bytes, IPv4 written IPv4-mapped (`::ffff:a.b.c.d`), so an `AF_INET`
/// client and a dual-stack `AF_INET6` proxy socket build the same key. The network namespace
/// cookie keeps identical 4-tuples of two pods apart.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PairKey {
    /// The network namespace cookie of both sockets (client and proxy share the pod's netns).
    pub netns: u64,
    /// The client's (app's) address.
    pub client_addr: [u8; 16],
    /// The proxy's address (127.0.0.1 or ::1 after redirection).
    pub proxy_addr: [u8; 16],
    /// The client's port, host byte order.
    pub client_port: u16,
    /// The proxy's port, host byte order.
    pub proxy_port: u16,
    /// Zero.
    pub _pad: u32,
}

/// [`STATS`] slot: connections redirected to the outbound port.
pub const STAT_OUTBOUND: u32 = 0;
/// [`STATS`] slot: connections redirected to the inbound port (the proxy calling its own pod).
pub const STAT_HAIRPIN: u32 = 1;
/// [`STATS`] slot: TCP connections of enrolled pods left alone by the rules, whatever the
/// reason: the sum of the `STAT_BYPASS_*` slots (plus what was counted before they existed).
pub const STAT_PASSED: u32 = 2;
/// [`STATS`] slot: `SO_ORIGINAL_DST` answered.
pub const STAT_ORIG_DST: u32 = 3;
/// [`STATS`] slot: `getpeername` answered with the original destination.
pub const STAT_PEERNAME: u32 = 4;
/// [`STATS`] slot: a connection left alone because a per-connection map was full (for
/// [`SPLICE`]: a socket left unspliced, its connection captured all the same).
pub const STAT_STATE_FULL: u32 = 5;
/// [`STATS`] slot: inbound connections handed to the proxy's inbound listener.
pub const STAT_INBOUND: u32 = 6;
/// [`STATS`] slot: inbound connections refused because the pod's proxy had no inbound
/// listener (as `REDIRECT` to a port nobody listens on is).
pub const STAT_INBOUND_REFUSED: u32 = 7;
/// [`STATS`] slot: DNS queries sent to the DNS proxy: TCP connects, connected UDP sockets
/// (at `connect`) and unconnected UDP datagrams (each `sendmsg`).
pub const STAT_DNS: u32 = 8;
/// [`STATS`] slot: UDP answers from the DNS proxy whose source was given back as the resolver
/// the app asked (`recvmsg`).
pub const STAT_DNS_ANSWER: u32 = 9;
/// [`STATS`] slot: a TCP connection left alone because its destination port is excluded
/// (`-o`).
pub const STAT_BYPASS_PORT: u32 = 10;
/// [`STATS`] slot: a TCP connection left alone because it comes from the inbound passthrough
/// source (`127.0.0.6`, `::6`).
pub const STAT_BYPASS_PASSTHROUGH: u32 = 11;
/// [`STATS`] slot: a TCP connection left alone because it goes to the pod itself or to the
/// loopback range and is not the proxy's hairpin (the `-o lo` and `-d 127.0.0.1/32` rules).
pub const STAT_BYPASS_LOOPBACK: u32 = 12;
/// [`STATS`] slot: a TCP connection of a proxy uid (`-u`) left alone.
pub const STAT_BYPASS_UID: u32 = 13;
/// [`STATS`] slot: a TCP connection of a proxy gid (`-g`) left alone.
pub const STAT_BYPASS_GID: u32 = 14;
/// [`STATS`] slot: a TCP connection left alone by the owner-group filter (an excluded group,
/// or not one of the only groups captured).
pub const STAT_BYPASS_GROUP: u32 = 15;
/// [`STATS`] slot: a TCP connection left alone because its destination is in an excluded CIDR
/// (`-x`).
pub const STAT_BYPASS_CIDR: u32 = 16;
/// [`STATS`] slot: a TCP connection left alone because neither its port (`-q`) nor its
/// destination (`-i`) is included.
pub const STAT_BYPASS_NOT_INCLUDED: u32 = 17;
/// [`STATS`] slot: a TCP connection to an IPv6 destination of a pod without IPv6 capture.
pub const STAT_BYPASS_IPV6: u32 = 18;
/// [`STATS`] slot: sockets put into [`SPLICE`] (two per spliced connection).
pub const STAT_SPLICED_SOCKETS: u32 = 19;
/// [`STATS`] slot: messages (`sendmsg` calls, or the chunks of a large one) the `sk_msg`
/// program handed straight to the peer socket.
pub const STAT_SPLICED_MESSAGES: u32 = 20;
/// Number of [`STATS`] slots the programs count.
pub const STAT_COUNT: u32 = 21;
/// Number of slots [`STATS`] and each [`POD_STATS`] value have room for: more than
/// [`STAT_COUNT`], so that a new counter needs no migration of either map.
pub const STAT_SLOTS: u32 = 32;

/// Value of [`POD_STATS`]: one pod's counters on one CPU, indexed by `STAT_*` as [`STATS`] is
/// (slots from [`STAT_COUNT`] on stay zero).
pub type PodStats = [u64; STAT_SLOTS as usize];

/// Capacity of [`POD_STATS`]: one entry per enrolled pod.
pub const MAX_POD_STATS: u32 = MAX_PODS;

/// Key of [`INBOUND_LISTENERS`]: the proxy's listener of one family in one pod.
///
/// An `AF_INET6` listener that is not `IPV6_V6ONLY` also takes IPv4 connections when the pod
/// has no `AF_INET` one.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListenerKey {
    /// The pod's network namespace cookie.
    pub netns: u64,
    /// The listening socket's family: [`AF_INET`] or [`AF_INET6`].
    pub family: u16,
    /// Zero.
    pub _pad: [u8; 6],
}

/// Capacity of [`PodMeta::container_id`] in bytes.
pub const META_CONTAINER_ID_MAX: usize = 128;
/// Capacity of [`PodMeta::ifname`] in bytes (`IFNAMSIZ`).
pub const META_IFNAME_MAX: usize = 16;
/// Capacity of [`PodMeta::pod_namespace`] in bytes (a Kubernetes namespace is a DNS label).
pub const META_POD_NAMESPACE_MAX: usize = 64;
/// Capacity of [`PodMeta::pod_name`] in bytes (a Kubernetes name is a DNS subdomain).
pub const META_POD_NAME_MAX: usize = 256;
/// Capacity of [`PodMeta::netns_path`] in bytes.
pub const META_NETNS_PATH_MAX: usize = 256;

/// [`PodMeta::source`]: enrolled by capture-cni (ADD); CNI GC may unenroll it.
pub const META_SOURCE_CNI: u16 = 1;

/// The value of [`POD_META`]: who enrolled a pod and as what. Each text is UTF-8, its length
/// in the matching `*_len` field, the rest of its array zero; length 0 is "not given".
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodMeta {
    /// `META_SOURCE_*`.
    pub source: u16,
    /// Bytes used in [`PodMeta::container_id`].
    pub container_id_len: u16,
    /// Bytes used in [`PodMeta::ifname`].
    pub ifname_len: u16,
    /// Bytes used in [`PodMeta::pod_namespace`].
    pub pod_namespace_len: u16,
    /// Bytes used in [`PodMeta::pod_name`].
    pub pod_name_len: u16,
    /// Bytes used in [`PodMeta::netns_path`].
    pub netns_path_len: u16,
    /// Zero.
    pub _pad: [u8; 4],
    /// The CNI container id (`CNI_CONTAINERID`).
    pub container_id: [u8; META_CONTAINER_ID_MAX],
    /// The CNI interface name (`CNI_IFNAME`).
    pub ifname: [u8; META_IFNAME_MAX],
    /// `K8S_POD_NAMESPACE` from `CNI_ARGS`.
    pub pod_namespace: [u8; META_POD_NAMESPACE_MAX],
    /// `K8S_POD_NAME` from `CNI_ARGS`.
    pub pod_name: [u8; META_POD_NAME_MAX],
    /// The network namespace's path as the runtime gave it (`CNI_NETNS`).
    pub netns_path: [u8; META_NETNS_PATH_MAX],
}

#[cfg(feature = "user")]
mod user {
    use super::{
        CidrKey, ListenerKey, NodeConfig, OrigDst, OwnerKey, PairKey, PodConfig, PodMeta, PortKey, SpliceKey,
    };

    // SAFETY: each type is #[repr(C)], made only of integers and byte arrays, with explicit
    // padding fields so that no byte is uninitialised; every bit pattern is a valid value.
    unsafe impl aya::Pod for PodConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for OwnerKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for PortKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for CidrKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for OrigDst {}
    // SAFETY: as above.
    unsafe impl aya::Pod for PairKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ListenerKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for PodMeta {}
    // SAFETY: as above.
    unsafe impl aya::Pod for NodeConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for SpliceKey {}
}

// Layouts are part of the contract between the programs and the loader.
const _: () = {
    assert!(size_of::<PodConfig>() == 28);
    assert!(size_of::<OwnerKey>() == 24);
    assert!(size_of::<PortKey>() == 16);
    assert!(size_of::<CidrKey>() == 32);
    assert!(size_of::<OrigDst>() == 24);
    assert!(size_of::<PairKey>() == 48);
    assert!(size_of::<ListenerKey>() == 16);
    assert!(size_of::<PodMeta>() == 736);
    assert!(size_of::<NodeConfig>() == 8);
    assert!(size_of::<SpliceKey>() == 48);
};
