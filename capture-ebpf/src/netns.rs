//! Identifying a pod: its network namespace cookie and its own addresses.

use std::net::IpAddr;
use std::os::fd::BorrowedFd;

use nix::errno::Errno;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, getsockopt, socket};
use nix::{getsockopt_impl, sockopt_impl};

use crate::{Error, MapPlan};

/// A network namespace's cookie: a 64-bit id the kernel never reuses while it runs, the key
/// of a pod's configuration (`bpf_get_netns_cookie` in the programs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetnsCookie(pub u64);

impl NetnsCookie {
    /// The cookie of the calling thread's network namespace.
    ///
    /// # Errors
    /// [`Error::Syscall`] when no socket can be made, or [`Error::Unsupported`] on kernels
    /// before 5.14, which lack `SO_NETNS_COOKIE`.
    ///
    /// # Minimum kernel version
    /// 5.14.
    pub fn current() -> Result<NetnsCookie, Error> {
        let fd = socket(
            AddressFamily::Inet,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(|e| Error::Syscall {
            call: "socket",
            source: e.into(),
        })?;
        let cookie = getsockopt(&fd, NetnsCookieOpt).map_err(|e| match e {
            Errno::ENOPROTOOPT => Error::Unsupported {
                feature: "SO_NETNS_COOKIE",
                min_kernel: "5.14",
            },
            e => Error::Syscall {
                call: "getsockopt(SO_NETNS_COOKIE)",
                source: e.into(),
            },
        })?;
        Ok(NetnsCookie(cookie))
    }
}

sockopt_impl!(
    /// `SO_NETNS_COOKIE`, which nix has no option type for: the socket's network namespace
    /// cookie.
    NetnsCookieOpt,
    GetOnly,
    libc::SOL_SOCKET,
    libc::SO_NETNS_COOKIE,
    u64
);

/// A pod as the programs know it: its network namespace cookie and its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNetns {
    /// The network namespace cookie.
    pub cookie: NetnsCookie,
    /// The addresses of the namespace's interfaces; connections to them go over `lo`.
    pub local_addrs: Vec<IpAddr>,
}

impl PodNetns {
    /// The calling thread's network namespace, made ready for `plan` and then read: with
    /// IPv6 capture, the proxy's inbound passthrough source `::6` is put on `lo` first (as
    /// istio-iptables does), so that the addresses read, and a rerun's comparison, include it.
    ///
    /// # Errors
    /// [`Error::Netlink`] when `::6` cannot be added, else as [`PodNetns::current`].
    pub fn set_up(plan: &MapPlan) -> Result<PodNetns, Error> {
        if plan.ipv6() {
            capture_core::netlink::ensure_ipv6_passthrough_address()?;
        }
        PodNetns::current()
    }

    /// [`PodNetns::set_up`] in the network namespace `netns`, from any namespace (on a
    /// short-lived thread that enters it).
    ///
    /// # Errors
    /// [`Error::Syscall`] when the namespace cannot be entered, else as [`PodNetns::set_up`].
    pub fn set_up_netns(netns: BorrowedFd<'_>, plan: &MapPlan) -> Result<PodNetns, Error> {
        in_netns(netns, || PodNetns::set_up(plan))
    }

    /// The calling thread's network namespace, as it is now.
    ///
    /// # Errors
    /// As [`NetnsCookie::current`], or [`Error::Syscall`] when the addresses cannot be listed.
    pub fn current() -> Result<PodNetns, Error> {
        let cookie = NetnsCookie::current()?;
        let mut local_addrs = capture_core::host::addresses().map_err(|e| Error::Syscall {
            call: "getifaddrs",
            source: e.into(),
        })?;
        local_addrs.sort_unstable();
        local_addrs.dedup();
        Ok(PodNetns { cookie, local_addrs })
    }
}

/// Runs `f` on a short-lived thread that enters the network namespace `netns` first; the
/// calling thread never moves (the host layer's [`capture_core::host::run_in`]).
pub(crate) fn in_netns<T: Send>(
    netns: BorrowedFd<'_>,
    f: impl FnOnce() -> Result<T, Error> + Send,
) -> Result<T, Error> {
    capture_core::host::run_in(netns, std::path::Path::new("(network namespace descriptor)"), f)
}
