//! Errors for rejected capture input.

use std::fmt;

/// Which input a rejected value came from.
///
/// Front ends name fields their own way: `capture-init` prints the istio-iptables flag
/// (`-b/--istio-inbound-ports`), the CNI plugin the pod annotation. [`Field::flag`] gives the
/// istio-iptables spelling, which is also what [`SpecError`]'s `Display` uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    /// `-p/--envoy-port`.
    OutboundPort,
    /// `-z/--inbound-capture-port`.
    InboundPort,
    /// `-e/--inbound-tunnel-port`.
    TunnelPort,
    /// `-u/--proxy-uid`.
    ProxyUid,
    /// `-g/--proxy-gid`.
    ProxyGid,
    /// `-m/--istio-inbound-interception-mode`.
    InterceptionMode,
    /// `-b/--istio-inbound-ports`.
    InboundPorts,
    /// `-d/--istio-local-exclude-ports`.
    InboundExcludePorts,
    /// `-c/--istio-exclude-interfaces`.
    ExcludeInterfaces,
    /// `-i/--istio-service-cidr`.
    OutboundCidrs,
    /// `-x/--istio-service-exclude-cidr`.
    OutboundExcludeCidrs,
    /// `-q/--istio-outbound-ports`.
    OutboundPorts,
    /// `-o/--istio-local-outbound-ports-exclude`.
    OutboundExcludePorts,
    /// `-k/--kube-virt-interfaces`.
    RerouteInterfaces,
    /// `-t/--istio-inbound-tproxy-mark`.
    TproxyMark,
    /// `-r/--istio-inbound-tproxy-route-table`.
    TproxyRouteTable,
    /// `ISTIO_OUTBOUND_OWNER_GROUPS`.
    OwnerGroups,
    /// `ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE`.
    OwnerGroupsExclude,
    /// `ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR`.
    Ipv4LoopbackCidr,
    /// A nameserver read from resolv.conf.
    Nameserver,
    /// `--iptables-probe-port`.
    ProbePort,
}

impl Field {
    /// The istio-iptables flag (or environment variable) that sets this field.
    pub fn flag(self) -> &'static str {
        match self {
            Self::OutboundPort => "-p/--envoy-port",
            Self::InboundPort => "-z/--inbound-capture-port",
            Self::TunnelPort => "-e/--inbound-tunnel-port",
            Self::ProxyUid => "-u/--proxy-uid",
            Self::ProxyGid => "-g/--proxy-gid",
            Self::InterceptionMode => "-m/--istio-inbound-interception-mode",
            Self::InboundPorts => "-b/--istio-inbound-ports",
            Self::InboundExcludePorts => "-d/--istio-local-exclude-ports",
            Self::ExcludeInterfaces => "-c/--istio-exclude-interfaces",
            Self::OutboundCidrs => "-i/--istio-service-cidr",
            Self::OutboundExcludeCidrs => "-x/--istio-service-exclude-cidr",
            Self::OutboundPorts => "-q/--istio-outbound-ports",
            Self::OutboundExcludePorts => "-o/--istio-local-outbound-ports-exclude",
            Self::RerouteInterfaces => "-k/--kube-virt-interfaces",
            Self::TproxyMark => "-t/--istio-inbound-tproxy-mark",
            Self::TproxyRouteTable => "-r/--istio-inbound-tproxy-route-table",
            Self::OwnerGroups => "ISTIO_OUTBOUND_OWNER_GROUPS",
            Self::OwnerGroupsExclude => "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE",
            Self::Ipv4LoopbackCidr => "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR",
            Self::Nameserver => "nameserver",
            Self::ProbePort => "--iptables-probe-port",
        }
    }
}

/// Why a single value was rejected, independent of where it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// Not a decimal number in 1..=65535.
    #[error("not a port number (1-65535)")]
    Port,
    /// A `low:high` range whose bounds are reversed.
    #[error("port range is reversed (low must not exceed high)")]
    PortRange,
    /// Not an address, or not `address/prefix`.
    #[error("not an IP address or CIDR")]
    Address,
    /// A prefix length larger than the address allows.
    #[error("prefix length is larger than {max}")]
    PrefixLength {
        /// 32 for IPv4, 128 for IPv6.
        max: u8,
    },
    /// `*` where only explicit values make sense.
    #[error("'*' is not allowed here")]
    Wildcard,
    /// Neither a number nor a user or group name.
    #[error("not a numeric id or a valid user/group name")]
    Owner,
    /// A user name the system does not know.
    #[error("no such user")]
    NoSuchUser,
    /// A group name the system does not know.
    #[error("no such group")]
    NoSuchGroup,
    /// A name from the user list, taken as a group because no group list was given
    /// (istio-iptables' `-g` defaults to `-u`), that is not also a group.
    #[error("no such group (when no group list is given, the user list is used as groups)")]
    NoSuchGroupFromUsers,
    /// A numeric uid or gid iptables' owner match refuses: 4294967295 means "no id".
    #[error("not a usable id (0-4294967294)")]
    OwnerId,
    /// Not a number in 1..=0xffffffff (decimal or 0x-hex).
    #[error("not a non-zero 32-bit mark")]
    Mark,
    /// Not a usable policy-routing table id.
    #[error("not a routing table id (1-4294967295, except 253 default, 254 main, 255 local)")]
    RouteTable,
    /// Not a Linux interface name iptables-restore reads as written.
    #[error("not an interface name (1-15 characters, no '/', ':', '\"' or whitespace)")]
    Interface,
    /// Interception mode that is not REDIRECT or TPROXY.
    #[error("interception mode must be REDIRECT or TPROXY")]
    InterceptionMode,
    /// More owner groups than the owner match can take in one rule.
    #[error("{count} groups given, at most 64 are supported")]
    TooManyGroups {
        /// How many were given.
        count: usize,
    },
    /// The host-loopback CIDR is not inside 127.0.0.0/8 with a mask of /8 to /32.
    #[error("must be an IPv4 loopback CIDR inside 127.0.0.0/8 with a prefix of /8 to /32")]
    LoopbackCidr,
    /// A list that must name at least one value is empty.
    #[error("must not be empty")]
    Empty,
    /// Two proxy ports that must differ are equal.
    #[error("must differ from {other}")]
    SamePort {
        /// The flag of the other port.
        other: &'static str,
    },
    /// A name that is none of a choice's names ([`Ipv6Mode`](crate::Ipv6Mode),
    /// [`FlavorChoice`](crate::FlavorChoice), [`Flavor`](crate::Flavor)).
    #[error("not one of {}", .expected.join(", "))]
    Choice {
        /// The names accepted.
        expected: &'static [&'static str],
    },
}

/// A rejected capture input: the field, the value as given, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid value {value:?} for {}: {reason}", field.flag())]
pub struct SpecError {
    /// Where the value came from.
    pub field: Field,
    /// The offending value, as the user wrote it (one list item, or the whole list).
    pub value: String,
    /// Why it was rejected: part of the message, as a value's reason is no separate cause.
    pub reason: ValueError,
}

impl SpecError {
    /// Builds an error for `field` with the offending `value`.
    pub fn new(field: Field, value: impl fmt::Display, reason: ValueError) -> Self {
        Self {
            field,
            value: value.to_string(),
            reason,
        }
    }
}

/// An error and its sources on one line, `message: cause: cause`: how every binary and test
/// prints an error. A cause whose text the line already holds is not repeated (an errno that
/// a message shows before its hint, as `NetlinkError` does).
#[must_use]
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let said = cause.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = cause.source();
    }
    text
}

/// `n` things in words that agree with the number: `count(1, "pod", "pods")` is `1 pod`,
/// `count(0, …)` is `no pods`; how every message counts.
///
/// # Examples
/// ```
/// assert_eq!(capture_core::count(1, "rule", "rules"), "1 rule");
/// assert_eq!(capture_core::count(3, "entry", "entries"), "3 entries");
/// assert_eq!(capture_core::count(0, "pod", "pods"), "no pods");
/// ```
#[must_use]
pub fn count(n: usize, one: &str, many: &str) -> String {
    match n {
        0 => format!("no {many}"),
        1 => format!("1 {one}"),
        n => format!("{n} {many}"),
    }
}

#[cfg(test)]
mod tests {
    use super::chain;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot lock /x")]
    struct Outer(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("adding a rule failed: {0} (needs CAP_NET_ADMIN)")]
    struct Shows(#[source] std::io::Error);

    #[test]
    fn chain_prints_each_cause_once() {
        let io = || std::io::Error::from_raw_os_error(libc::EPERM);
        assert_eq!(
            chain(&Outer(io())),
            "cannot lock /x: Operation not permitted (os error 1)"
        );
        assert_eq!(
            chain(&Shows(io())),
            "adding a rule failed: Operation not permitted (os error 1) (needs CAP_NET_ADMIN)"
        );
    }
}
