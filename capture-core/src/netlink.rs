//! Kernel state that capture needs besides iptables rules, set through rtnetlink.
//!
//! Over 700 lines because it holds the whole synchronous rtnetlink client (socket, requests,
//! dumps, extended-ack parsing) next to its three uses; splitting it would only move the socket
//! into a file of its own with one user. Its tests are in `netlink/tests.rs`.
//!
//! istio-iptables runs the equivalent of these `ip` commands after its rules:
//!
//! | what | `ip` spelling | when |
//! |---|---|---|
//! | inbound passthrough source | `ip -6 addr add ::6/128 dev lo` | IPv6 capture is on |
//! | TPROXY policy rule | `ip [-6] rule add fwmark <mark> lookup <table>` | inbound mode is TPROXY |
//! | TPROXY local route | `ip [-6] route add local 0.0.0.0/0 (::/0) dev lo table <table>` | inbound mode is TPROXY |
//!
//! Here they are rtnetlink requests on a synchronous `NETLINK_ROUTE` socket, with two
//! guarantees Istio does not give:
//!
//! - **Idempotent.** Adding what is already there succeeds and changes nothing. For addresses and
//!   routes the kernel refuses duplicates itself (`EEXIST`). For policy rules it does not: a
//!   second `ip rule add` gets a new priority and a second rule. So [`ensure_tproxy_routes`]
//!   lists the family's rules first and adds one only when no identical rule exists.
//! - **Reversible.** Each `ensure_*` has a `remove_*` that succeeds when the thing is already
//!   gone, and removes duplicates left by earlier runs of istio-iptables.
//!
//! Every function opens its own socket, so it acts on the network namespace of the calling
//! thread (enter a pod's namespace with `setns` on that thread first). Changing anything needs
//! `CAP_NET_ADMIN` in that namespace; the `*_present` checks need no privilege.

use std::ffi::CStr;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv6Addr};

use netlink_packet_core::{
    DecodeError, ErrorMessage, NLM_F_ACK, NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_CREATE, NLM_F_DUMP,
    NLM_F_DUMP_INTR, NLM_F_EXCL, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload, NlasIterator,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::route::{
    RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleFlags, RuleMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::{Socket, SocketAddr};

use crate::{Family, Mark, RouteTable};

/// The address istio-iptables puts on `lo` when IPv6 capture is on: `::6/128`.
///
/// The sidecar uses it as the source of inbound connections it passes to the app, so that
/// capture can tell them apart (`-s ::6/128 -j RETURN`); `127.0.0.6` needs no such address
/// because all of `127.0.0.0/8` is local already.
pub const IPV6_PASSTHROUGH_ADDRESS: Ipv6Addr = Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 6);

/// The policy routing that sends TPROXY-diverted packets to the local stack.
///
/// Marked packets (`fwmark == mark`) look up `table`, whose only route is
/// `local 0.0.0.0/0 dev lo` (`local ::/0 dev lo` for IPv6). Both values come from the
/// validated spec ([`crate::InterceptMode::Tproxy`]), so the table is never one of the kernel's
/// own (`local`, `main`, `default`), which a catch-all local route would break.
///
/// # Examples
/// ```
/// use capture_core::netlink::TproxyRoutes;
/// use capture_core::{Mark, RouteTable};
///
/// let routes = TproxyRoutes { mark: Mark::new(1337), table: RouteTable::new(133) };
/// assert_eq!(routes.to_string(), "fwmark 1337 lookup 133");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TproxyRoutes {
    /// The packet mark set by the `TPROXY` target (`-t`, 1337 by default).
    pub mark: Mark,
    /// The routing table holding the catch-all local route (`-r`, 133 by default).
    pub table: RouteTable,
}

impl fmt::Display for TproxyRoutes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self { mark, table } = self;
        write!(f, "fwmark {mark} lookup {table}")
    }
}

/// What was being done when a [`NetlinkError`] happened, spelled like the `ip` command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Operation {
    /// `ip -6 addr add ::6/128 dev lo`.
    AddPassthroughAddress,
    /// `ip -6 addr del ::6/128 dev lo`.
    RemovePassthroughAddress,
    /// `ip -6 addr show`.
    ListAddresses,
    /// `ip rule add fwmark <mark> lookup <table>`.
    AddRule(Family, TproxyRoutes),
    /// `ip rule del fwmark <mark> lookup <table>`.
    RemoveRule(Family, TproxyRoutes),
    /// `ip rule show`.
    ListRules(Family),
    /// `ip route add local 0.0.0.0/0 dev lo table <table>`.
    AddRoute(Family, RouteTable),
    /// `ip route del local 0.0.0.0/0 dev lo table <table>`.
    RemoveRoute(Family, RouteTable),
    /// `ip route show table all`.
    ListRoutes(Family),
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lo_addr = Cidr6(IPV6_PASSTHROUGH_ADDRESS);
        match *self {
            Self::AddPassthroughAddress => write!(f, "adding address {lo_addr} to lo"),
            Self::RemovePassthroughAddress => write!(f, "removing address {lo_addr} from lo"),
            Self::ListAddresses => f.write_str("listing IPv6 addresses"),
            Self::AddRule(family, routes) => write!(f, "adding ip rule {routes} ({family})"),
            Self::RemoveRule(family, routes) => write!(f, "removing ip rule {routes} ({family})"),
            Self::ListRules(family) => write!(f, "listing ip rules ({family})"),
            Self::AddRoute(family, table) => {
                write!(
                    f,
                    "adding route local {} dev lo table {table} ({family})",
                    everything(family)
                )
            }
            Self::RemoveRoute(family, table) => {
                write!(
                    f,
                    "removing route local {} dev lo table {table} ({family})",
                    everything(family)
                )
            }
            Self::ListRoutes(family) => write!(f, "listing routes ({family})"),
        }
    }
}

/// `::6/128`, written the way `ip` writes it.
struct Cidr6(Ipv6Addr);

impl fmt::Display for Cidr6 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/128", self.0)
    }
}

fn everything(family: Family) -> &'static str {
    match family {
        Family::V4 => "0.0.0.0/0",
        Family::V6 => "::/0",
    }
}

/// Why a netlink operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetlinkError {
    /// A system call on the netlink socket (or the lookup of `lo`) failed.
    #[error("{op} failed: {call}: {io}{}", needs_cap(io.raw_os_error()))]
    Syscall {
        /// The operation that made the call.
        op: Operation,
        /// The call: `socket`, `bind`, `send`, `recv`, `if_nametoindex(lo)`.
        call: &'static str,
        /// The error the call returned.
        #[source]
        io: io::Error,
    },
    /// The kernel refused the request.
    #[error("{op} failed: {io}{}{}", KernelSays(kernel_message.as_deref()), needs_cap(io.raw_os_error()))]
    Kernel {
        /// The refused operation.
        op: Operation,
        /// The errno the kernel answered with.
        #[source]
        io: io::Error,
        /// The kernel's extended acknowledgement text, when it gave one
        /// (`"Nexthop device is not up"`).
        kernel_message: Option<String>,
    },
    /// The kernel's answer could not be decoded.
    #[error("{op} failed: cannot decode the kernel's answer")]
    Decode {
        /// The operation whose answer was undecodable.
        op: Operation,
        /// What the decoder said.
        #[source]
        source: DecodeError,
    },
    /// A listing kept being interrupted by concurrent changes (`NLM_F_DUMP_INTR`).
    #[error("{op} failed: the listing was interrupted by concurrent changes {attempts} times")]
    Interrupted {
        /// The listing.
        op: Operation,
        /// How many times it was tried.
        attempts: u32,
    },
}

impl NetlinkError {
    /// The operation that failed.
    pub fn operation(&self) -> Operation {
        match self {
            Self::Syscall { op, .. }
            | Self::Kernel { op, .. }
            | Self::Decode { op, .. }
            | Self::Interrupted { op, .. } => *op,
        }
    }

    /// The errno behind the failure, if there is one.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Self::Syscall { io, .. } | Self::Kernel { io, .. } => io.raw_os_error(),
            Self::Decode { .. } | Self::Interrupted { .. } => None,
        }
    }
}

/// The hint a netlink error gets when the errno is `EPERM`, for both netlink layers.
pub(crate) fn needs_cap(errno: Option<i32>) -> &'static str {
    if errno == Some(libc::EPERM) {
        " (needs CAP_NET_ADMIN in the network namespace)"
    } else {
        ""
    }
}

/// The kernel's extended-ack text in a message, ` (kernel: …)`, when it gave one.
pub(crate) struct KernelSays<'a>(pub(crate) Option<&'a str>);

impl fmt::Display for KernelSays<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(message) if !message.is_empty() => write!(f, " (kernel: {message})"),
            _ => Ok(()),
        }
    }
}

/// Puts [`IPV6_PASSTHROUGH_ADDRESS`] (`::6/128`) on `lo`, as `ip -6 addr add ::6/128 dev lo`.
///
/// Succeeds without change when the address is already there.
///
/// # Errors
/// When `lo` is missing, IPv6 is disabled in the namespace, or the caller lacks
/// `CAP_NET_ADMIN`.
pub fn ensure_ipv6_passthrough_address() -> Result<(), NetlinkError> {
    add_ipv6_passthrough_address().map(drop)
}

/// Takes [`IPV6_PASSTHROUGH_ADDRESS`] off `lo`, as `ip -6 addr del ::6/128 dev lo`.
///
/// Succeeds without change when the address is not there.
///
/// # Errors
/// When `lo` is missing or the caller lacks `CAP_NET_ADMIN`.
pub fn remove_ipv6_passthrough_address() -> Result<(), NetlinkError> {
    // IPv6 answers a missing address with EADDRNOTAVAIL ("ipv6: address not found").
    change_passthrough_address(
        Operation::RemovePassthroughAddress,
        RouteNetlinkMessage::DelAddress,
        0,
        &[libc::EADDRNOTAVAIL, libc::ENOENT, libc::ESRCH],
    )
}

/// Sends `message` (adding or deleting) for [`IPV6_PASSTHROUGH_ADDRESS`] on `lo`; the errnos
/// in `tolerated` mean the address is already as asked.
fn change_passthrough_address(
    op: Operation,
    message: fn(AddressMessage) -> RouteNetlinkMessage,
    flags: u16,
    tolerated: &[i32],
) -> Result<(), NetlinkError> {
    let mut socket = RouteSocket::open(op)?;
    let msg = passthrough_address_message(loopback_index(op)?);
    socket.request(op, message(msg), flags, tolerated)
}

/// Adds [`IPV6_PASSTHROUGH_ADDRESS`] to `lo` in one request: `true` when this call added it,
/// `false` when it was there already.
///
/// # Errors
/// When `lo` is missing or the caller lacks `CAP_NET_ADMIN`.
pub fn add_ipv6_passthrough_address() -> Result<bool, NetlinkError> {
    match change_passthrough_address(
        Operation::AddPassthroughAddress,
        RouteNetlinkMessage::NewAddress,
        NLM_F_CREATE | NLM_F_EXCL,
        &[],
    ) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether `lo` has [`IPV6_PASSTHROUGH_ADDRESS`], for drift checks.
///
/// # Errors
/// When `lo` is missing or the listing fails.
pub fn ipv6_passthrough_address_present() -> Result<bool, NetlinkError> {
    let op = Operation::ListAddresses;
    let lo = loopback_index(op)?;
    Ok(addresses(op)?.iter().any(|msg| is_passthrough_address(msg, lo)))
}

/// Installs TPROXY's policy routing for one family: the local route, then the rule.
///
/// The equivalent of `ip route add local 0.0.0.0/0 dev lo table <table>` followed by
/// `ip rule add fwmark <mark> lookup <table>` (`::/0` and `ip -6` for IPv6), except that an
/// existing identical route or rule is kept rather than duplicated. The route goes first so that
/// the rule never points at an empty table.
///
/// A rule counts as identical when it has the same family, mark (with a full mask), table and
/// action, and no other selector (`from`, `iif`, `not`, …); its priority does not matter.
///
/// # Errors
/// When the caller lacks `CAP_NET_ADMIN`, `lo` is missing, or (IPv6) `lo` is down or IPv6 is
/// disabled.
///
/// # Examples
/// ```no_run
/// use capture_core::netlink::{TproxyRoutes, ensure_tproxy_routes, tproxy_routes_present};
/// use capture_core::{Family, Mark, RouteTable};
///
/// let routes = TproxyRoutes { mark: Mark::new(1337), table: RouteTable::new(133) };
/// for family in [Family::V4, Family::V6] {
///     ensure_tproxy_routes(&routes, family)?;
///     assert!(tproxy_routes_present(&routes, family)?);
/// }
/// # Ok::<(), capture_core::netlink::NetlinkError>(())
/// ```
pub fn ensure_tproxy_routes(routes: &TproxyRoutes, family: Family) -> Result<(), NetlinkError> {
    let op = Operation::AddRoute(family, routes.table);
    let mut socket = RouteSocket::open(op)?;
    let route = local_route_message(family, routes.table, loopback_index(op)?);
    socket.request(
        op,
        RouteNetlinkMessage::NewRoute(route),
        NLM_F_CREATE | NLM_F_EXCL,
        &[libc::EEXIST],
    )?;

    let existing = socket.dump(Operation::ListRules(family), rule_dump_request(family))?;
    if existing
        .iter()
        .any(|msg| matches!(msg, RouteNetlinkMessage::NewRule(rule) if is_tproxy_rule(rule, family, routes)))
    {
        return Ok(());
    }
    // NLM_F_EXCL alone does not stop a duplicate: the kernel gives a rule without a priority
    // the next free one, and then it differs from the existing rule. Hence the listing above.
    let op = Operation::AddRule(family, *routes);
    socket.request(
        op,
        RouteNetlinkMessage::NewRule(tproxy_rule_message(family, routes)),
        NLM_F_CREATE | NLM_F_EXCL,
        &[libc::EEXIST],
    )
}

/// Removes TPROXY's policy routing for one family: every identical rule, then the local route.
///
/// Succeeds when nothing is there. Rules with extra selectors (`from 10.0.0.0/8 fwmark …`) are
/// not ours and stay.
///
/// # Errors
/// When the caller lacks `CAP_NET_ADMIN` or a listing fails.
pub fn remove_tproxy_routes(routes: &TproxyRoutes, family: Family) -> Result<(), NetlinkError> {
    let list = Operation::ListRules(family);
    let mut socket = RouteSocket::open(list)?;
    let op = Operation::RemoveRule(family, *routes);
    for msg in socket.dump(list, rule_dump_request(family))? {
        let RouteNetlinkMessage::NewRule(rule) = msg else {
            continue;
        };
        if !is_tproxy_rule(&rule, family, routes) {
            continue;
        }
        // Name the rule by its priority as well, so the kernel deletes exactly this one and
        // not another rule that merely shares mark and table.
        let mut del = tproxy_rule_message(family, routes);
        del.attributes.extend(
            rule.attributes
                .iter()
                .filter(|a| matches!(a, RuleAttribute::Priority(_)))
                .cloned(),
        );
        socket.request(op, RouteNetlinkMessage::DelRule(del), 0, &[libc::ENOENT])?;
    }

    let op = Operation::RemoveRoute(family, routes.table);
    let mut route = local_route_message(family, routes.table, loopback_index(op)?);
    // Like `ip route del`: any scope and protocol match.
    route.header.scope = RouteScope::NoWhere;
    route.header.protocol = RouteProtocol::Unspec;
    // IPv4 answers a missing route or table with ESRCH, IPv6 with ENOENT.
    socket.request(
        op,
        RouteNetlinkMessage::DelRoute(route),
        0,
        &[libc::ESRCH, libc::ENOENT],
    )
}

/// Whether both the TPROXY rule and its local route are installed for `family`, for drift
/// checks.
///
/// # Errors
/// When `lo` is missing or a listing fails.
pub fn tproxy_routes_present(routes: &TproxyRoutes, family: Family) -> Result<bool, NetlinkError> {
    let op = Operation::ListRules(family);
    let mut socket = RouteSocket::open(op)?;
    let rule = socket
        .dump(op, rule_dump_request(family))?
        .iter()
        .any(|msg| matches!(msg, RouteNetlinkMessage::NewRule(r) if is_tproxy_rule(r, family, routes)));
    if !rule {
        return Ok(false);
    }
    let op = Operation::ListRoutes(family);
    let lo = loopback_index(op)?;
    let route = socket.dump(op, route_dump_request(family))?.iter().any(
        |msg| matches!(msg, RouteNetlinkMessage::NewRoute(r) if is_local_route(r, family, routes.table, lo)),
    );
    Ok(route)
}

fn address_family(family: Family) -> AddressFamily {
    match family {
        Family::V4 => AddressFamily::Inet,
        Family::V6 => AddressFamily::Inet6,
    }
}

/// The 8-bit table field of rule and route headers: the id when it fits, else `RT_TABLE_UNSPEC`
/// with the real id in the 32-bit table attribute, as iproute2 does.
fn header_table(table: RouteTable) -> u8 {
    u8::try_from(table.get()).unwrap_or(RouteHeader::RT_TABLE_UNSPEC)
}

fn loopback_index(op: Operation) -> Result<u32, NetlinkError> {
    const LO: &CStr = c"lo";
    // SAFETY: `LO` is a valid NUL-terminated string that outlives the call, which only reads it.
    let index = unsafe { libc::if_nametoindex(LO.as_ptr()) };
    if index == 0 {
        return Err(NetlinkError::Syscall {
            op,
            call: "if_nametoindex(lo)",
            io: io::Error::last_os_error(),
        });
    }
    Ok(index)
}

fn passthrough_address_message(lo: u32) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.family = AddressFamily::Inet6;
    msg.header.prefix_len = 128;
    msg.header.index = lo;
    let addr = IpAddr::V6(IPV6_PASSTHROUGH_ADDRESS);
    msg.attributes.push(AddressAttribute::Local(addr));
    msg.attributes.push(AddressAttribute::Address(addr));
    msg
}

fn is_passthrough_address(msg: &RouteNetlinkMessage, lo: u32) -> bool {
    let RouteNetlinkMessage::NewAddress(addr) = msg else {
        return false;
    };
    let wanted = IpAddr::V6(IPV6_PASSTHROUGH_ADDRESS);
    addr.header.index == lo
        && addr.header.prefix_len == 128
        && addr.attributes.iter().any(
            |a| matches!(a, AddressAttribute::Address(ip) | AddressAttribute::Local(ip) if *ip == wanted),
        )
}

fn addresses(op: Operation) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
    let mut socket = RouteSocket::open(op)?;
    let mut request = AddressMessage::default();
    request.header.family = AddressFamily::Inet6;
    socket.dump(op, RouteNetlinkMessage::GetAddress(request))
}

fn tproxy_rule_message(family: Family, routes: &TproxyRoutes) -> RuleMessage {
    let mut msg = RuleMessage::default();
    msg.header.family = address_family(family);
    msg.header.table = header_table(routes.table);
    msg.header.action = RuleAction::ToTable;
    msg.attributes.push(RuleAttribute::FwMark(routes.mark.get()));
    msg.attributes.push(RuleAttribute::Table(routes.table.get()));
    msg
}

fn rule_dump_request(family: Family) -> RouteNetlinkMessage {
    let mut msg = RuleMessage::default();
    msg.header.family = address_family(family);
    RouteNetlinkMessage::GetRule(msg)
}

/// Whether a listed rule is exactly `fwmark <mark> lookup <table>`, at any priority.
fn is_tproxy_rule(rule: &RuleMessage, family: Family, routes: &TproxyRoutes) -> bool {
    fwmark_lookup(rule, family) == Some((routes.mark.get(), routes.table.get()))
}

/// The mark and table of a rule that is exactly `fwmark <mark> lookup <table>` in `family`.
fn fwmark_lookup(rule: &RuleMessage, family: Family) -> Option<(u32, u32)> {
    let h = &rule.header;
    if h.family != address_family(family)
        || h.action != RuleAction::ToTable
        || h.src_len != 0
        || h.dst_len != 0
        || h.tos != 0
        || h.flags.contains(RuleFlags::Invert)
    {
        return None;
    }
    let mut table = u32::from(h.table);
    let mut mark = None;
    for attribute in &rule.attributes {
        match attribute {
            RuleAttribute::Table(t) => table = *t,
            RuleAttribute::FwMark(m) => mark = Some(*m),
            // The kernel lists the full mask `fwmark N` implies, and `suppress_prefixlength`
            // and `suppress_ifgroup` as -1 (unset) on every rule.
            RuleAttribute::FwMask(u32::MAX)
            | RuleAttribute::SuppressPrefixLen(u32::MAX)
            | RuleAttribute::SuppressIfGroup(u32::MAX)
            | RuleAttribute::Priority(_)
            | RuleAttribute::Protocol(_) => {}
            // Any other selector (iif, oif, from, to, uidrange, a partial mask, …) or an
            // attribute this crate cannot name makes it someone else's rule.
            _ => return None,
        }
    }
    mark.map(|m| (m, table))
}

/// Every policy rule of exactly TPROXY's shape (`fwmark M lookup T`, no other selector, `T` not
/// one of the kernel's own tables) in `family`, so that cleanup can find the routing of a TPROXY
/// capture whatever flags it is given.
///
/// # Errors
/// When the listing fails.
pub fn tproxy_rules(family: Family) -> Result<Vec<TproxyRoutes>, NetlinkError> {
    let op = Operation::ListRules(family);
    let mut socket = RouteSocket::open(op)?;
    Ok(socket
        .dump(op, rule_dump_request(family))?
        .iter()
        .filter_map(|msg| match msg {
            RouteNetlinkMessage::NewRule(rule) => fwmark_lookup(rule, family),
            _ => None,
        })
        .filter_map(|(mark, table)| {
            let table = table.to_string().parse::<RouteTable>().ok()?;
            Some(TproxyRoutes {
                mark: Mark::new(mark),
                table,
            })
        })
        .collect())
}

fn local_route_message(family: Family, table: RouteTable, lo: u32) -> RouteMessage {
    let mut msg = RouteMessage::default();
    msg.header.address_family = address_family(family);
    msg.header.destination_prefix_length = 0;
    msg.header.table = header_table(table);
    // What `ip route add local …` sends: protocol boot, host scope.
    msg.header.protocol = RouteProtocol::Boot;
    msg.header.scope = RouteScope::Host;
    msg.header.kind = RouteType::Local;
    msg.attributes.push(RouteAttribute::Table(table.get()));
    msg.attributes.push(RouteAttribute::Oif(lo));
    msg
}

fn route_dump_request(family: Family) -> RouteNetlinkMessage {
    let mut msg = RouteMessage::default();
    msg.header.address_family = address_family(family);
    RouteNetlinkMessage::GetRoute(msg)
}

/// Whether a listed route is `local <everything> dev lo table <table>`.
fn is_local_route(route: &RouteMessage, family: Family, table: RouteTable, lo: u32) -> bool {
    let h = &route.header;
    let mut route_table = u32::from(h.table);
    let mut oif = None;
    for attribute in &route.attributes {
        match attribute {
            RouteAttribute::Table(t) => route_table = *t,
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    h.address_family == address_family(family)
        && h.destination_prefix_length == 0
        && h.kind == RouteType::Local
        && route_table == table.get()
        && oif == Some(lo)
}

/// How often a listing interrupted by concurrent changes is restarted before giving up.
const DUMP_ATTEMPTS: u32 = 5;

/// A `NETLINK_ROUTE` socket in the calling thread's network namespace, with its own sequence
/// numbers.
struct RouteSocket {
    socket: Socket,
    sequence: u32,
}

impl RouteSocket {
    fn open(op: Operation) -> Result<Self, NetlinkError> {
        let syscall = |call| move |io| NetlinkError::Syscall { op, call, io };
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(syscall("socket"))?;
        socket.bind_auto().map_err(syscall("bind"))?;
        // Error messages from the kernel ("Nexthop device is not up") and no echo of our
        // request in them. Both are optional: kernels without them just say less.
        let _ = socket.set_ext_ack(true);
        let _ = socket.set_cap_ack(true);
        Ok(Self { socket, sequence: 0 })
    }

    fn send(&mut self, op: Operation, msg: RouteNetlinkMessage, flags: u16) -> Result<u32, NetlinkError> {
        self.sequence += 1;
        let mut packet = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::InnerMessage(msg));
        packet.header.flags = NLM_F_REQUEST | flags;
        packet.header.sequence_number = self.sequence;
        packet.finalize();
        let mut buf = vec![0; packet.buffer_len()];
        packet.serialize(&mut buf);
        let kernel = SocketAddr::new(0, 0);
        self.socket
            .send_to(&buf, &kernel, 0)
            .map_err(|io| NetlinkError::Syscall { op, call: "send", io })?;
        Ok(self.sequence)
    }

    /// Receives one datagram and splits it into messages answering `sequence`.
    fn receive(
        &mut self,
        op: Operation,
        sequence: u32,
    ) -> Result<Vec<NetlinkMessage<RouteNetlinkMessage>>, NetlinkError> {
        let (datagram, _) =
            self.socket
                .recv_from_full()
                .map_err(|io| NetlinkError::Syscall { op, call: "recv", io })?;
        let mut messages = Vec::new();
        let mut rest = &datagram[..];
        while !rest.is_empty() {
            let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(rest)
                .map_err(|source| NetlinkError::Decode { op, source })?;
            // Messages are 4-byte aligned; the last one may lack its padding.
            let len = (msg.header.length as usize).next_multiple_of(4).min(rest.len());
            if len == 0 {
                break;
            }
            rest = &rest[len..];
            // Answers to an earlier request on this socket, if any are left, are not ours.
            if msg.header.sequence_number == sequence {
                messages.push(msg);
            }
        }
        Ok(messages)
    }

    /// Sends a request asking for an acknowledgement and waits for it. Errnos in `tolerated`
    /// count as success: they mean the request's work is already done.
    fn request(
        &mut self,
        op: Operation,
        msg: RouteNetlinkMessage,
        flags: u16,
        tolerated: &[i32],
    ) -> Result<(), NetlinkError> {
        let sequence = self.send(op, msg, NLM_F_ACK | flags)?;
        loop {
            for reply in self.receive(op, sequence)? {
                if let NetlinkPayload::Error(error) = &reply.payload {
                    return match error.code {
                        None => Ok(()),
                        Some(code) if tolerated.contains(&-code.get()) => Ok(()),
                        Some(_) => Err(kernel_error(op, reply.header.flags, error)),
                    };
                }
            }
        }
    }

    /// Lists objects (`NLM_F_DUMP`), restarting when the kernel flags the listing as
    /// inconsistent because something changed while it ran.
    fn dump(
        &mut self,
        op: Operation,
        msg: RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        for _ in 0..DUMP_ATTEMPTS {
            let sequence = self.send(op, msg.clone(), NLM_F_DUMP)?;
            let mut found = Vec::new();
            let mut interrupted = false;
            'datagrams: loop {
                for reply in self.receive(op, sequence)? {
                    interrupted |= reply.header.flags & NLM_F_DUMP_INTR != 0;
                    match reply.payload {
                        NetlinkPayload::InnerMessage(inner) => found.push(inner),
                        NetlinkPayload::Done(_) => break 'datagrams,
                        NetlinkPayload::Error(error) if error.code.is_some() => {
                            return Err(kernel_error(op, reply.header.flags, &error));
                        }
                        _ => {}
                    }
                }
            }
            if !interrupted {
                return Ok(found);
            }
        }
        Err(NetlinkError::Interrupted {
            op,
            attempts: DUMP_ATTEMPTS,
        })
    }
}

fn kernel_error(op: Operation, flags: u16, error: &ErrorMessage) -> NetlinkError {
    NetlinkError::Kernel {
        op,
        io: error.to_io(),
        kernel_message: extended_ack_message(flags, &error.header),
    }
}

/// `NLMSGERR_ATTR_MSG`: the human-readable text of an extended acknowledgement.
const NLMSGERR_ATTR_MSG: u16 = 1;

/// The kernel's text in an `NLMSG_ERROR` payload (after the errno), if it sent one.
///
/// The payload is the request's header (`NLM_F_CAPPED`) or the whole request, then, with
/// `NLM_F_ACK_TLVS`, attributes (see netlink(7), "Extended ACK").
fn extended_ack_message(flags: u16, payload: &[u8]) -> Option<String> {
    const HEADER_LEN: usize = 16;
    if flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    let request_len = if flags & NLM_F_CAPPED != 0 {
        HEADER_LEN
    } else {
        let len = payload.get(..4)?;
        u32::from_ne_bytes(len.try_into().ok()?) as usize
    };
    let attributes = payload.get(request_len.next_multiple_of(4)..)?;
    NlasIterator::new(attributes)
        .map_while(Result::ok)
        .find_map(|nla| {
            (nla.kind() == NLMSGERR_ATTR_MSG).then(|| {
                let text = nla.value().split(|&b| b == 0).next().unwrap_or_default();
                String::from_utf8_lossy(text).into_owned()
            })
        })
}

#[cfg(test)]
mod tests;
