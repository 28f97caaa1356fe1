//! The kernel state a capture needs besides its rules, shared by every netfilter backend
//! (iptables and native nftables): `::6/128` on `lo` with IPv6 (the inbound passthrough
//! source), and for TPROXY the `fwmark` rule and `local` route per family.

use std::collections::BTreeSet;

use super::ApplyError;
use crate::netlink::{self, NetlinkError, TproxyRoutes};
use crate::spec::{CaptureSpec, InboundPorts};
use crate::types::Family;

/// The TPROXY policy routing `spec` needs, if any.
pub(crate) fn tproxy_routes(spec: &CaptureSpec) -> Option<TproxyRoutes> {
    let (mark, table) = spec.tproxy()?;
    (spec.inbound.ports != InboundPorts::Off).then_some(TproxyRoutes { mark, table })
}

/// What [`Added::ensure`] added, so that a failure of the rules can take it away again.
#[derive(Debug, Default)]
pub(crate) struct Added {
    address: bool,
    routes: Vec<(Family, TproxyRoutes)>,
}

impl Added {
    /// Adds what `spec` needs and is not there yet (harmless without the rules).
    pub(crate) fn ensure(spec: &CaptureSpec) -> Result<Added, NetlinkError> {
        let mut added = Added::default();
        if spec.ipv6 {
            added.address = netlink::add_ipv6_passthrough_address()?;
        }
        if let Some(routes) = tproxy_routes(spec) {
            for &family in spec.families() {
                if !netlink::tproxy_routes_present(&routes, family)? {
                    if let Err(e) = netlink::ensure_tproxy_routes(&routes, family) {
                        added.undo();
                        return Err(e);
                    }
                    added.routes.push((family, routes));
                }
            }
        }
        Ok(added)
    }

    /// Removes what was added, best effort: the error that made the caller undo is the one
    /// worth reporting.
    pub(crate) fn undo(self) {
        for (family, routes) in &self.routes {
            let _ = netlink::remove_tproxy_routes(routes, *family);
        }
        if self.address {
            let _ = netlink::remove_ipv6_passthrough_address();
        }
    }
}

/// What of it is missing, one line each.
pub(crate) fn missing(spec: &CaptureSpec) -> Result<Vec<String>, NetlinkError> {
    let mut differences = Vec::new();
    if let Some(routes) = tproxy_routes(spec) {
        for &family in spec.families() {
            if !netlink::tproxy_routes_present(&routes, family)? {
                differences.push(format!("{family} TPROXY policy routing ({routes}) is missing"));
            }
        }
    }
    if spec.ipv6 && !netlink::ipv6_passthrough_address_present()? {
        differences.push("::6/128 is missing on lo".into());
    }
    Ok(differences)
}

/// Removes the TPROXY policy routing of every mark in `marks` (the marks the removed rules
/// used) and of `spec`'s, and `::6`. `removed` says what was removed before, for the error
/// that names what is left.
pub(crate) fn remove(spec: &CaptureSpec, marks: &BTreeSet<u32>, removed: &str) -> Result<(), ApplyError> {
    let partly = |left: String, source: ApplyError| ApplyError::PartlyRemoved {
        removed: removed.to_owned(),
        left,
        source: Box::new(source),
    };
    let mut routing: Vec<(Family, TproxyRoutes)> = Vec::new();
    for family in [Family::V4, Family::V6] {
        if let Some(routes) = spec.tproxy().map(|(mark, table)| TproxyRoutes { mark, table }) {
            routing.push((family, routes));
        }
        // No IPv6 in the namespace's kernel: nothing of IPv6 to remove.
        let Ok(rules) = netlink::tproxy_rules(family) else {
            continue;
        };
        for routes in rules.into_iter().filter(|r| marks.contains(&r.mark.get())) {
            if !routing.contains(&(family, routes)) {
                routing.push((family, routes));
            }
        }
    }
    for (family, routes) in routing {
        if let Err(e) = netlink::remove_tproxy_routes(&routes, family) {
            if family == Family::V6 && e.raw_os_error() == Some(libc::EAFNOSUPPORT) {
                continue;
            }
            return Err(partly(
                format!("{family} TPROXY policy routing ({routes})"),
                e.into(),
            ));
        }
    }
    match netlink::remove_ipv6_passthrough_address() {
        Ok(()) => Ok(()),
        // A namespace without IPv6 has no ::6.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EAFNOSUPPORT | libc::ENODEV)) && !spec.ipv6 => Ok(()),
        Err(e) => Err(partly("::6/128 on lo".into(), e.into())),
    }
}
