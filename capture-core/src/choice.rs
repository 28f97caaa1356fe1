//! The choices every front end offers by name: `--ipv6 on`, `"iptables_flavor": "nft"`. One type
//! each, parsed with [`FromStr`] and displayed in the same spelling, so capture-init's flags,
//! capture-cni's configuration and the tests share one definition.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use crate::apply::Flavor;
use crate::error::ValueError;
use crate::istio::{NoUsableAddress, detect_ipv6};

/// Whether IPv6 capture is installed too (IPv4 capture always is).
///
/// capture-init's `--ipv6 auto` is [`Ipv6Mode::FirstAddress`], istio-iptables' rule; its
/// command line does not offer [`Ipv6Mode::Auto`]. capture-cni's `"ipv6"` takes every name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Ipv6Mode {
    /// Every family the pod has an address in: IPv6 when any of its non-loopback,
    /// non-link-local addresses is IPv6, whatever their order. The proxy must then listen on
    /// both families.
    #[default]
    Auto,
    /// Istio's rule (istio/istio#46625): the first non-loopback, non-link-local address
    /// decides (any IPv6 address with `dual_stack`).
    FirstAddress,
    /// Always.
    On,
    /// Never.
    Off,
}

impl Ipv6Mode {
    /// Every mode, in the order of [`Ipv6Mode::NAMES`].
    pub const ALL: [Self; 4] = [Self::Auto, Self::FirstAddress, Self::On, Self::Off];
    /// Every mode's name.
    pub const NAMES: &[&str] = &["auto", "first-address", "on", "off"];

    /// The mode's name: `auto`, `first-address`, `on` or `off`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::FirstAddress => "first-address",
            Self::On => "on",
            Self::Off => "off",
        }
    }

    /// Whether IPv6 capture is installed, given the pod's addresses in the order the kernel
    /// lists them (ignored by [`Ipv6Mode::On`] and [`Ipv6Mode::Off`]).
    ///
    /// # Errors
    /// [`NoUsableAddress`] when the mode detects and every address is loopback or link-local.
    pub fn decide(self, addrs: &[IpAddr], dual_stack: bool) -> Result<bool, NoUsableAddress> {
        match self {
            Self::Auto => detect_ipv6(addrs, true),
            Self::FirstAddress => detect_ipv6(addrs, dual_stack),
            Self::On => Ok(true),
            Self::Off => Ok(false),
        }
    }
}

impl Flavor {
    /// Both flavours, in the order of [`Flavor::NAMES`].
    pub const ALL: [Self; 2] = [Self::Legacy, Self::Nft];
    /// Both flavours' names.
    pub const NAMES: &[&str] = &["legacy", "nft"];
}

/// `Display` and `FromStr` for choices named by their `as_str`, all of them in `ALL` and their
/// names in `NAMES`.
macro_rules! named_choice {
    ($($choice:ty),+) => {$(
        impl fmt::Display for $choice {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $choice {
            type Err = ValueError;

            fn from_str(s: &str) -> Result<Self, ValueError> {
                by_name(s, Self::ALL, Self::as_str, Self::NAMES)
            }
        }
    )+};
}

named_choice!(Ipv6Mode, Flavor);

/// Which iptables flavour a front end drives: detected, or the one asked for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum FlavorChoice {
    /// Detect ([`Iptables::detect`](crate::Iptables::detect)): the flavour holding rules in
    /// the pod wins, else the node's `iptables` alternative, else nft.
    #[default]
    Auto,
    /// This flavour.
    Force(Flavor),
}

impl FlavorChoice {
    /// Every choice's name: `auto`, then [`Flavor::NAMES`].
    pub const NAMES: &[&str] = &["auto", "legacy", "nft"];

    /// The flavour asked for, if any.
    pub fn forced(self) -> Option<Flavor> {
        match self {
            Self::Auto => None,
            Self::Force(flavor) => Some(flavor),
        }
    }
}

impl From<Option<Flavor>> for FlavorChoice {
    fn from(flavor: Option<Flavor>) -> Self {
        flavor.map_or(Self::Auto, Self::Force)
    }
}

impl fmt::Display for FlavorChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Force(flavor) => flavor.fmt(f),
        }
    }
}

impl FromStr for FlavorChoice {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Self, ValueError> {
        match s {
            "auto" => Ok(Self::Auto),
            _ => s.parse().map(Self::Force).map_err(|_| ValueError::Choice {
                expected: Self::NAMES,
            }),
        }
    }
}

/// The value of `all` whose `name` is `s`.
fn by_name<T: Copy, const N: usize>(
    s: &str,
    all: [T; N],
    name: fn(T) -> &'static str,
    expected: &'static [&'static str],
) -> Result<T, ValueError> {
    all.into_iter()
        .find(|v| name(*v) == s)
        .ok_or(ValueError::Choice { expected })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for (mode, name) in Ipv6Mode::ALL.into_iter().zip(Ipv6Mode::NAMES) {
            assert_eq!(mode.to_string(), *name);
            assert_eq!(name.parse(), Ok(mode));
        }
        for (flavor, name) in Flavor::ALL.into_iter().zip(Flavor::NAMES) {
            assert_eq!(flavor.to_string(), *name);
            assert_eq!(name.parse(), Ok(flavor));
            assert_eq!(name.parse(), Ok(FlavorChoice::Force(flavor)));
        }
        assert_eq!("auto".parse(), Ok(FlavorChoice::Auto));
        assert_eq!(FlavorChoice::Auto.to_string(), "auto");
        assert_eq!(FlavorChoice::Force(Flavor::Nft).to_string(), "nft");
    }

    #[test]
    fn unknown_names_list_the_choices() {
        assert_eq!(
            "first".parse::<Ipv6Mode>().unwrap_err().to_string(),
            "not one of auto, first-address, on, off"
        );
        assert_eq!(
            "auto".parse::<Flavor>().unwrap_err().to_string(),
            "not one of legacy, nft"
        );
        assert_eq!(
            "Nft".parse::<FlavorChoice>().unwrap_err().to_string(),
            "not one of auto, legacy, nft"
        );
    }

    #[test]
    fn ipv6_decisions() {
        let a = |s: &str| s.parse::<IpAddr>().unwrap();
        let v4_first = [a("127.0.0.1"), a("10.1.0.5"), a("fd00::5")];
        assert_eq!(Ipv6Mode::Auto.decide(&v4_first, false), Ok(true));
        assert_eq!(Ipv6Mode::FirstAddress.decide(&v4_first, false), Ok(false));
        assert_eq!(Ipv6Mode::FirstAddress.decide(&v4_first, true), Ok(true));
        assert_eq!(Ipv6Mode::On.decide(&[], false), Ok(true));
        assert_eq!(Ipv6Mode::Off.decide(&v4_first, true), Ok(false));
        assert_eq!(Ipv6Mode::Auto.decide(&[a("::1")], false), Err(NoUsableAddress));
    }
}
