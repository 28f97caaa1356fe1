//! Traffic capture for service-mesh sidecars.
//!
//! A [`CaptureSpec`] says which connections of a pod go to its sidecar proxy. [`plan`] turns
//! it into netfilter rules for one address family ([`RuleSet`], plain data), and [`Restore`]
//! renders those as the `iptables-restore` payload istio-iptables would write, byte for byte.
//! [`IstioConfig`] maps istio-iptables' flags onto a spec.
//!
//! ```text
//! istio flags ─> IstioConfig ─> CaptureSpec ─plan(family)─> RuleSet ─Restore─> iptables-restore text
//! ```
//!
//! A proxy needs none of that, only [`original_dst()`]: with `default-features = false` the
//! crate is that function alone (libc and socket2, no netlink crates). Everything else is the
//! default feature `apply`.

pub mod original_dst;
pub use original_dst::original_dst;

/// Marks every item it wraps `#[cfg(feature = "apply")]`: the modules and re-exports below are
/// the crate without the proxy's part.
macro_rules! with_apply {
    ($($item:item)*) => {$(
        #[cfg(feature = "apply")]
        $item
    )*};
}

with_apply! {
pub mod apply;
pub mod backend;
mod choice;
mod error;
pub mod explain;
pub mod host;
pub mod istio;
pub mod lock;
pub mod logged;
pub mod netlink;
pub mod nfnetlink;
pub mod nft;
mod plan;
pub mod render;
pub mod rules;
mod spec;
mod types;

pub use apply::{
    Applied, ApplyError, ApplyOptions, Change, Flavor, Iptables, State, SystemExec, check, install, uninstall,
};
pub use backend::{Backend, BackendError, Outcome, Step};
pub use choice::{FlavorChoice, Ipv6Mode};
pub use error::{Field, SpecError, ValueError, chain, count};
pub use istio::{Detected, IstioConfig, NoUsableAddress, Warning, detect_ipv6, parse_resolv_conf};
pub use lock::{LockError, NetnsLock};
pub use plan::plan;
pub use render::Restore;
pub use rules::{RuleSet, TableName};
pub use spec::{
    CaptureSpec, DNS_PORT, DNS_PROXY_PORT, DnsCapture, InboundCapture, InboundPorts, InterceptMode,
    Interfaces, MAX_OWNER_GROUPS, OutboundCapture, OutboundCidrs, OwnerGroups, ProxyOwner, ProxyPorts,
    TPROXY_OUTBOUND_MARK,
};
pub use types::{
    Accounts, Cidr, Family, Iface, MAX_OWNER_ID, Mark, Nameserver, Owner, Port, PortRange, RouteTable,
    SystemAccounts, passthrough_source,
};
}
