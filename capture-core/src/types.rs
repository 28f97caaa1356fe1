//! Validated value types shared by every front end (CLI flags, CNI annotations, tests).
//!
//! Each type parses with [`FromStr`] and displays in the spelling istio-iptables writes into its
//! rules, so a value that round-trips through a front end renders byte for byte as Istio's.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::num::NonZeroU16;
use std::str::FromStr;

use crate::error::ValueError;

/// An IP address family. Rules are planned and applied once per family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// IPv4, applied with `iptables-restore`.
    V4,
    /// IPv6, applied with `ip6tables-restore`.
    V6,
}

impl Family {
    /// The family of an address.
    pub fn of(addr: &IpAddr) -> Self {
        match addr {
            IpAddr::V4(_) => Self::V4,
            IpAddr::V6(_) => Self::V6,
        }
    }

    /// `0.0.0.0` or `::`.
    pub fn unspecified(self) -> IpAddr {
        match self {
            Self::V4 => Ipv4Addr::UNSPECIFIED.into(),
            Self::V6 => Ipv6Addr::UNSPECIFIED.into(),
        }
    }

    /// `127.0.0.1` or `::1`: where `REDIRECT` in nat `OUTPUT` sends a connection.
    pub fn loopback(self) -> IpAddr {
        match self {
            Self::V4 => Ipv4Addr::LOCALHOST.into(),
            Self::V6 => Ipv6Addr::LOCALHOST.into(),
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::V4 => "IPv4",
            Self::V6 => "IPv6",
        })
    }
}

fn all_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// A TCP/UDP port, 1 to 65535.
///
/// # Examples
/// ```
/// use capture_core::Port;
/// let p: Port = "15001".parse().unwrap();
/// assert_eq!(p.get(), 15001);
/// assert!("70000".parse::<Port>().is_err());
/// assert!("-1".parse::<Port>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Port(NonZeroU16);

impl Port {
    /// A port from a number known to be non-zero.
    ///
    /// # Panics
    /// When `port` is 0; meant for constants.
    pub const fn new(port: u16) -> Self {
        match NonZeroU16::new(port) {
            Some(p) => Self(p),
            None => panic!("port 0 is not a port"),
        }
    }

    /// The port number.
    pub const fn get(self) -> u16 {
        self.0.get()
    }
}

impl FromStr for Port {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // u16::from_str accepts a leading '+'; iptables does not, so insist on digits only.
        if !all_digits(s) {
            return Err(ValueError::Port);
        }
        s.parse::<u16>()
            .ok()
            .and_then(NonZeroU16::new)
            .map(Self)
            .ok_or(ValueError::Port)
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One port or an inclusive range written `low:high`, as iptables' `--dport` takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRange {
    /// First port.
    pub low: Port,
    /// Last port (equal to `low` for a single port).
    pub high: Port,
}

impl PortRange {
    /// A range holding a single port.
    pub const fn single(port: Port) -> Self {
        Self {
            low: port,
            high: port,
        }
    }

    /// Whether `port` lies in the range.
    pub fn contains(&self, port: u16) -> bool {
        (self.low.get()..=self.high.get()).contains(&port)
    }
}

impl FromStr for PortRange {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once(':') {
            None => Ok(Self::single(s.parse()?)),
            Some((low, high)) => {
                let (low, high): (Port, Port) = (low.parse()?, high.parse()?);
                if low > high {
                    return Err(ValueError::PortRange);
                }
                Ok(Self { low, high })
            }
        }
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.low == self.high {
            write!(f, "{}", self.low)
        } else {
            write!(f, "{}:{}", self.low, self.high)
        }
    }
}

/// An IP network: an address and a prefix length.
///
/// Host bits are kept as written (`10.0.0.1/8` stays `10.0.0.1/8`), as Go's `netip.ParsePrefix`
/// keeps them for istio-iptables; iptables masks them itself. A bare address means a host
/// route (`/32` or `/128`).
///
/// # Examples
/// ```
/// use capture_core::Cidr;
/// assert_eq!("10.0.0.1/8".parse::<Cidr>().unwrap().to_string(), "10.0.0.1/8");
/// assert_eq!("2001:DB8::/32".parse::<Cidr>().unwrap().to_string(), "2001:db8::/32");
/// assert!("10.0.0.0/33".parse::<Cidr>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// A network from its parts.
    ///
    /// # Errors
    /// [`ValueError::PrefixLength`] when `prefix` exceeds the family's address length.
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Self, ValueError> {
        let max = max_prefix(&addr);
        if prefix > max {
            return Err(ValueError::PrefixLength { max });
        }
        Ok(Self { addr, prefix })
    }

    /// A host route: the address with a full-length prefix.
    pub fn host(addr: IpAddr) -> Self {
        Self {
            addr,
            prefix: max_prefix(&addr),
        }
    }

    /// The address as written.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The address family.
    pub fn family(&self) -> Family {
        Family::of(&self.addr)
    }

    /// The network address: the address with its host bits cleared (`10.0.0.1/8` → `10.0.0.0`).
    pub fn network_addr(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
            }
        }
    }

    /// Whether `addr` lies inside this network (host bits of `self` are ignored).
    pub fn contains(&self, addr: &IpAddr) -> bool {
        Family::of(addr) == self.family()
            && Self {
                addr: *addr,
                prefix: self.prefix,
            }
            .network_addr()
                == self.network_addr()
    }

    /// Whether this network overlaps the loopback range of its family (127.0.0.0/8 or ::1).
    pub fn is_loopback(&self) -> bool {
        // Go's netip.Prefix.Addr().IsLoopback(): the address as written, not the network.
        self.addr.is_loopback()
    }
}

fn max_prefix(addr: &IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

impl FromStr for Cidr {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('/') {
            None => Ok(Self::host(s.parse().map_err(|_| ValueError::Address)?)),
            Some((addr, prefix)) => {
                let addr: IpAddr = addr.parse().map_err(|_| ValueError::Address)?;
                if !all_digits(prefix) || prefix.len() > 3 {
                    return Err(ValueError::Address);
                }
                let prefix: u16 = prefix.parse().map_err(|_| ValueError::Address)?;
                let max = max_prefix(&addr);
                let prefix = u8::try_from(prefix)
                    .ok()
                    .filter(|p| *p <= max)
                    .ok_or(ValueError::PrefixLength { max })?;
                Ok(Self { addr, prefix })
            }
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A process owner for iptables' `owner` match: a numeric id or a user/group name.
///
/// Names are kept as written so the rule reads as istio-iptables writes it; iptables resolves
/// them when the rules are loaded.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Owner {
    /// A numeric uid or gid.
    Id(u32),
    /// A user or group name.
    Name(String),
}

impl Owner {
    /// The numeric id, when given as a number.
    pub fn id(&self) -> Option<u32> {
        match self {
            Self::Id(id) => Some(*id),
            Self::Name(_) => None,
        }
    }
}

impl FromStr for Owner {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if all_digits(s) {
            return s.parse().map(Self::Id).map_err(|_| ValueError::Owner);
        }
        // POSIX portable user names, plus the trailing '$' Samba machine accounts use.
        let body = s.strip_suffix('$').unwrap_or(s);
        let valid = !body.is_empty()
            && s.len() <= 32
            && !body.starts_with('-')
            && body
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if valid {
            Ok(Self::Name(s.to_owned()))
        } else {
            Err(ValueError::Owner)
        }
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Id(id) => id.fmt(f),
            Self::Name(name) => f.write_str(name),
        }
    }
}

/// The largest id iptables' owner match takes: `4294967295` is `(uid_t)-1`, which means "no
/// id" to the kernel, so `--uid-owner 4294967295` is refused when the rules load.
pub const MAX_OWNER_ID: u32 = u32::MAX - 1;

/// The user and group databases owner names are resolved against.
///
/// iptables resolves a name in `--uid-owner`/`--gid-owner` when the rules load and refuses
/// the whole payload if it cannot; validation resolves names the same way first, so that a
/// dry run refuses exactly what applying would. [`SystemAccounts`] is the real one; tests
/// implement this to validate against a fixed table.
pub trait Accounts {
    /// The uid of the user `name`, if there is one.
    fn uid(&self, name: &str) -> Option<u32>;
    /// The gid of the group `name`, if there is one.
    fn gid(&self, name: &str) -> Option<u32>;
}

/// This machine's user and group databases, through NSS (`getpwnam_r`, `getgrnam_r`), as
/// iptables' owner match reads them.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemAccounts;

impl Accounts for SystemAccounts {
    fn uid(&self, name: &str) -> Option<u32> {
        lookup_id(name, true)
    }

    fn gid(&self, name: &str) -> Option<u32> {
        lookup_id(name, false)
    }
}

/// Resolves a user (`user`) or group name as iptables' owner match does (NSS, through nix,
/// which grows its buffer for large groups instead of reporting them unknown).
pub(crate) fn lookup_id(name: &str, user: bool) -> Option<u32> {
    if user {
        nix::unistd::User::from_name(name)
            .ok()
            .flatten()
            .map(|u| u.uid.as_raw())
    } else {
        nix::unistd::Group::from_name(name)
            .ok()
            .flatten()
            .map(|g| g.gid.as_raw())
    }
}

/// A non-zero netfilter packet mark, written in decimal as istio-iptables writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mark(u32);

impl Mark {
    /// A mark from a known non-zero value.
    ///
    /// # Panics
    /// When `mark` is 0; meant for constants.
    pub const fn new(mark: u32) -> Self {
        assert!(mark != 0, "mark 0 means no mark");
        Self(mark)
    }

    /// The mark value.
    pub const fn get(self) -> u32 {
        self.0
    }
}

impl FromStr for Mark {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let value = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
            Some(hex) if !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
                u32::from_str_radix(hex, 16).ok()
            }
            Some(_) => None,
            None if all_digits(s) => s.parse().ok(),
            None => None,
        };
        value.filter(|v| *v != 0).map(Self).ok_or(ValueError::Mark)
    }
}

impl fmt::Display for Mark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A policy-routing table id for TPROXY's `ip rule fwmark … lookup <table>`.
///
/// The kernel's reserved tables (0 unspec, 253 default, 254 main, 255 local) are refused:
/// adding `local 0.0.0.0/0 dev lo` to one of them would hijack the pod's whole routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RouteTable(u32);

impl RouteTable {
    /// A table from a known usable id.
    ///
    /// # Panics
    /// When `table` is a reserved id; meant for constants.
    pub const fn new(table: u32) -> Self {
        assert!(!matches!(table, 0 | 253 | 254 | 255), "reserved routing table");
        Self(table)
    }

    /// The table id.
    pub const fn get(self) -> u32 {
        self.0
    }
}

impl FromStr for RouteTable {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let table: u32 = if all_digits(s) {
            s.parse().map_err(|_| ValueError::RouteTable)?
        } else {
            0
        };
        if matches!(table, 0 | 253 | 254 | 255) {
            return Err(ValueError::RouteTable);
        }
        Ok(Self(table))
    }
}

impl fmt::Display for RouteTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A network interface name as iptables' `-i`/`-o` take it (a trailing `+` is a wildcard).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Iface(String);

impl Iface {
    /// The name as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Iface {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // The kernel's dev_valid_name(): at most IFNAMSIZ-1 bytes, not "." or "..", no '/',
        // ':' or whitespace. And no '"': iptables-restore takes it as a quote, so the rule
        // would load with a different interface and without its target.
        let valid = !s.is_empty()
            && s.len() <= 15
            && s != "."
            && s != ".."
            && !s.bytes().any(|b| {
                b == b'/' || b == b':' || b == b'"' || b.is_ascii_whitespace() || b.is_ascii_control()
            });
        if valid {
            Ok(Self(s.to_owned()))
        } else {
            Err(ValueError::Interface)
        }
    }
}

impl fmt::Display for Iface {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A DNS server whose traffic is captured, with the text it was read from.
///
/// istio-iptables writes nameservers into its rules as read from resolv.conf, so
/// `::127.0.0.53` stays `::127.0.0.53/128` (a formatter would print `::7f00:35`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Nameserver {
    addr: IpAddr,
    text: String,
}

impl Nameserver {
    /// The server's address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The address family.
    pub fn family(&self) -> Family {
        Family::of(&self.addr)
    }

    /// The host network written as istio-iptables writes it: `<text>/32` or `<text>/128`.
    pub fn host_cidr(&self) -> String {
        format!("{}/{}", self.text, max_prefix(&self.addr))
    }
}

impl FromStr for Nameserver {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let addr = s.parse().map_err(|_| ValueError::Address)?;
        Ok(Self {
            addr,
            text: s.to_owned(),
        })
    }
}

impl fmt::Display for Nameserver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// The address the proxy binds when it forwards inbound traffic to the app (inbound
/// passthrough): `127.0.0.6` or `::6`.
pub fn passthrough_source(family: Family) -> Cidr {
    match family {
        Family::V4 => Cidr::host(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 6))),
        Family::V6 => Cidr::host(IpAddr::V6(Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 6))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports() {
        for bad in ["70000", "-1", "abc", "", "0", "+80", " 80", "65536"] {
            assert_eq!(bad.parse::<Port>(), Err(ValueError::Port), "{bad:?}");
        }
        assert_eq!("65535".parse::<Port>().unwrap().get(), 65535);
        assert_eq!("8000:8080".parse::<PortRange>().unwrap().to_string(), "8000:8080");
        assert_eq!("9:9".parse::<PortRange>().unwrap().to_string(), "9");
        assert_eq!("90:80".parse::<PortRange>(), Err(ValueError::PortRange));
    }

    #[test]
    fn cidrs() {
        assert_eq!(
            "10.0.0.0/33".parse::<Cidr>(),
            Err(ValueError::PrefixLength { max: 32 })
        );
        assert_eq!(
            "::/129".parse::<Cidr>(),
            Err(ValueError::PrefixLength { max: 128 })
        );
        assert_eq!("10.0.0/8".parse::<Cidr>(), Err(ValueError::Address));
        assert_eq!("10.0.0.0/".parse::<Cidr>(), Err(ValueError::Address));
        assert_eq!("10.0.0.0/+8".parse::<Cidr>(), Err(ValueError::Address));
        assert_eq!("fe80::1%eth0/64".parse::<Cidr>(), Err(ValueError::Address));
        assert_eq!("10.1.2.3".parse::<Cidr>().unwrap().to_string(), "10.1.2.3/32");
        assert_eq!("::1".parse::<Cidr>().unwrap().to_string(), "::1/128");
        let net: Cidr = "10.0.0.1/8".parse().unwrap();
        assert!(net.contains(&"10.200.0.9".parse().unwrap()));
        assert!(!net.contains(&"11.0.0.1".parse().unwrap()));
        assert!(
            "0.0.0.0/0"
                .parse::<Cidr>()
                .unwrap()
                .contains(&"1.2.3.4".parse().unwrap())
        );
        assert!("127.1.2.3/32".parse::<Cidr>().unwrap().is_loopback());
    }

    #[test]
    fn owners() {
        assert_eq!("1337".parse::<Owner>(), Ok(Owner::Id(1337)));
        assert_eq!(
            "istio-proxy".parse::<Owner>(),
            Ok(Owner::Name("istio-proxy".into()))
        );
        for bad in ["", "-x", "a b", "a,b", "99999999999", "a/b"] {
            assert_eq!(bad.parse::<Owner>(), Err(ValueError::Owner), "{bad:?}");
        }
    }

    #[test]
    fn marks_tables_ifaces() {
        assert_eq!("1337".parse::<Mark>().unwrap().get(), 1337);
        assert_eq!("0x539".parse::<Mark>().unwrap().get(), 1337);
        for bad in ["0", "", "x", "0x", "4294967296", "-5"] {
            assert_eq!(bad.parse::<Mark>(), Err(ValueError::Mark), "{bad:?}");
        }
        assert_eq!("133".parse::<RouteTable>().unwrap().get(), 133);
        for bad in ["0", "254", "main", "-1"] {
            assert_eq!(bad.parse::<RouteTable>(), Err(ValueError::RouteTable), "{bad:?}");
        }
        assert!("eth0".parse::<Iface>().is_ok());
        assert!("veth+".parse::<Iface>().is_ok());
        for bad in ["", "a/b", "a:b", "sixteen-chars-xx", "..", "a b"] {
            assert_eq!(bad.parse::<Iface>(), Err(ValueError::Interface), "{bad:?}");
        }
        // Found by fuzzing: iptables-restore reads '"' as a quote, so `-o a"b -j RETURN` would
        // load as a rule on the interface `ab -j RETURN`, without its target.
        for bad in ["a\"b", "\"", "eth0\""] {
            assert_eq!(bad.parse::<Iface>(), Err(ValueError::Interface), "{bad:?}");
        }
        for odd in ["a'b", "a#b", "!ab", "a\\b", "é1"] {
            assert!(
                odd.parse::<Iface>().is_ok(),
                "{odd:?}: iptables takes it as written"
            );
        }
    }

    #[test]
    fn nameserver_keeps_text() {
        let ns: Nameserver = "::127.0.0.53".parse().unwrap();
        assert_eq!(ns.host_cidr(), "::127.0.0.53/128");
        assert_eq!(ns.family(), Family::V6);
    }
}
