//! Helpers for end-to-end tests that move real packets between network namespaces.
//!
//! Every test builds its own world and tears it down on `Drop`, also when it panics:
//!
//! | Helper                       | What it is                                                              |
//! |------------------------------|-------------------------------------------------------------------------|
//! | [`require_root`]             | skip locally without root, fail in CI (`CI` set)                        |
//! | [`NetNs`]                    | a named netns `capture-test-<pid>-<n>` under `/run/netns`, `lo` up       |
//! |                              | ([`NetNs::open`]: a runtime's namespace, left to its owner on `Drop`)   |
//! | [`Topology`]                 | a pod netns and a peer netns joined by a veth pair, no other routes     |
//! | [`Listener`]                 | a TCP listener that records peer, local and original destination;       |
//! |                              | `spawn_transparent` for the inbound proxy of TPROXY mode                |
//! | [`connect_as`]               | a client connection from a netns as a given uid/gid                     |
//! | [`iptables_restore`]         | `iptables-restore --noflush` in a netns, legacy or nft, v4 or v6        |
//! | [`iptables_save_normalized`] | `iptables-save` without counters and comments, for comparisons          |
//! | [`TempDir`]                  | a scratch directory under `$TMPDIR`, removed on `Drop`                  |
//! | [`passthrough`]              | the proxy's inbound passthrough source, `127.0.0.6` or `::6`            |
//! | [`ProxyProcess`]             | the example transparent proxy running in a pod as uid 1337, its log     |
//! | `ebpf` (feature `ebpf`)      | test cgroups and bpffs mounts with capture's eBPF programs installed,   |
//! |                              | and running a test's body in a child process inside the cgroup          |
//!
//! Nothing here touches the root network namespace: addresses, routes, links and rules are only ever
//! created inside namespaces made by [`NetNs::new`].

mod client;
pub mod cni;
#[cfg(feature = "ebpf")]
pub mod ebpf;
mod iptables;
mod listener;
mod netns;
mod proxy;
mod recorder;
mod tempdir;
mod topology;
pub mod udp;

use std::net::IpAddr;
use std::process::Command;

pub use capture_core::{Family, Flavor};
pub use client::{Connected, assume_identity, connect_as, connect_as_from, connect_detailed};
pub use iptables::{iptables_restore, iptables_save_normalized, normalize_save};
pub use listener::{Accepted, Listener};
pub use netns::{NETNS_PREFIX, NetNs};
pub use proxy::ProxyProcess;
pub use tempdir::TempDir;
pub use topology::Topology;

/// The uid (and gid) of the sidecar proxy, whose traffic the default rules never capture.
pub const PROXY_UID: u32 = 1337;
/// An ordinary application uid (and gid), whose outbound traffic is captured.
pub const APP_UID: u32 = 1000;
/// The proxy port that captured outbound traffic is redirected to (`istio-iptables -p`).
pub const OUTBOUND_PORT: u16 = 15001;
/// The proxy port that captured inbound traffic is redirected to (`istio-iptables -z`).
pub const INBOUND_PORT: u16 = 15006;

/// The source address the proxy binds when it forwards inbound traffic to the app: `127.0.0.6` or
/// `::6` ([`capture_core::passthrough_source`]).
#[must_use]
pub fn passthrough(family: Family) -> IpAddr {
    capture_core::passthrough_source(family).addr()
}

/// The command Istio's sidecar injector gives istio-iptables, flag and value in turn:
/// `-p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -x "" -b '*' -d 15090,15021,15020`.
pub const SIDECAR_ARGS: [&str; 16] = [
    "-p",
    "15001",
    "-z",
    "15006",
    "-u",
    "1337",
    "-m",
    "REDIRECT",
    "-i",
    "*",
    "-x",
    "",
    "-b",
    "*",
    "-d",
    "15090,15021,15020",
];

/// Returns whether the test may run privileged steps.
///
/// Without root it prints a skip message and returns `false`, so the test can return early. With the
/// environment variable `CI` set it panics instead: privileged tests must run in CI, and a skip there would
/// hide that they did not.
///
/// # Panics
///
/// When not running as root and `CI` is set.
///
/// # Examples
///
/// ```no_run
/// #[test]
/// fn moves_packets() {
///     if !capture_e2e::require_root() {
///         return;
///     }
///     // ...
/// }
/// ```
#[must_use]
pub fn require_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    let test = std::thread::current().name().unwrap_or("<unnamed>").to_owned();
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: needs root, and CI is set so it may not skip; run the tests as root (sudo -E)"
    );
    eprintln!("skipping {test}: needs root (run as root, e.g. `sudo -E cargo test -p capture-e2e`)");
    false
}

/// Runs `cmd`, panics with its stderr unless it exits 0, and returns its stdout.
///
/// # Panics
///
/// When the program cannot be started or exits with a non-zero status.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap_or_else(|e| panic!("{cmd:?} printed non-UTF-8: {e}"))
}

/// Instantiates each `fn $test(…)` once per row of a test matrix, as the module `$test` with one
/// test per row. The dimensions come first, the functions after the colon:
///
/// | Invocation                               | Function                  | Tests                                         |
/// |------------------------------------------|---------------------------|-----------------------------------------------|
/// | `test_matrix!(flavor: f, …)`             | `fn f(Flavor)`            | `f::legacy`, `f::nft`                         |
/// | `test_matrix!(flavor, family: f, …)`     | `fn f(Flavor, Family)`    | `f::{legacy,nft}_{v4,v6}`                     |
/// | `test_matrix!(backend: f, …)`            | `fn f(Backend)`           | `f::legacy`, `f::nft`, `f::ebpf`              |
/// | `test_matrix!(backend, family: f, …)`    | `fn f(Backend, Family)`   | `f::{legacy,nft,ebpf}_{v4,v6}`                |
///
/// The `backend` dimension is for suites that run one scenario on every backend (capture-init's
/// scenario table): the invoking module has in scope a `Backend` with the variants
/// `Iptables(Flavor)` and `Ebpf`, and a function `ebpf_row(impl FnOnce())` that runs an eBPF row
/// (in its test cgroup). The `ebpf` rows exist when the invoking crate's feature `ebpf` is on.
///
/// # Examples
///
/// ```
/// use capture_e2e::{Family, Flavor, test_matrix};
///
/// test_matrix!(flavor, family: saves_alike);
///
/// fn saves_alike(flavor: Flavor, family: Family) {
///     // ... runs four times: saves_alike::legacy_v4, saves_alike::legacy_v6, ...
/// #   let _ = (flavor, family);
/// }
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! test_matrix {
    (flavor: $($test:ident),+ $(,)?) => {$(
        $crate::test_matrix!(@rows $test [use $crate::Flavor;]
            legacy: super::$test(Flavor::Legacy);
            nft: super::$test(Flavor::Nft);
        );
    )+};
    (flavor, family: $($test:ident),+ $(,)?) => {$(
        $crate::test_matrix!(@rows $test [use $crate::{Family, Flavor};]
            legacy_v4: super::$test(Flavor::Legacy, Family::V4);
            legacy_v6: super::$test(Flavor::Legacy, Family::V6);
            nft_v4: super::$test(Flavor::Nft, Family::V4);
            nft_v6: super::$test(Flavor::Nft, Family::V6);
        );
    )+};
    (backend: $($test:ident),+ $(,)?) => {$(
        $crate::test_matrix!(@rows $test [use $crate::Flavor; use super::Backend;]
            legacy: super::$test(Backend::Iptables(Flavor::Legacy));
            nft: super::$test(Backend::Iptables(Flavor::Nft));
            native: super::$test(Backend::Nftables);
            #[cfg(feature = "ebpf")]
            ebpf: super::ebpf_row(|| super::$test(Backend::Ebpf));
        );
    )+};
    (netfilter, family: $($test:ident),+ $(,)?) => {$(
        $crate::test_matrix!(@netfilter_family_rows $test);
    )+};
    (backend, family: $($test:ident),+ $(,)?) => {$(
        $crate::test_matrix!(@netfilter_family_rows $test
            #[cfg(feature = "ebpf")]
            ebpf_v4: super::ebpf_row(|| super::$test(Backend::Ebpf, Family::V4));
            #[cfg(feature = "ebpf")]
            ebpf_v6: super::ebpf_row(|| super::$test(Backend::Ebpf, Family::V6));
        );
    )+};
    // The rows of every netfilter backend in both families, then `$more` rows.
    (@netfilter_family_rows $test:ident $($more:tt)*) => {
        $crate::test_matrix!(@rows $test [use $crate::{Family, Flavor}; use super::Backend;]
            legacy_v4: super::$test(Backend::Iptables(Flavor::Legacy), Family::V4);
            legacy_v6: super::$test(Backend::Iptables(Flavor::Legacy), Family::V6);
            nft_v4: super::$test(Backend::Iptables(Flavor::Nft), Family::V4);
            nft_v6: super::$test(Backend::Iptables(Flavor::Nft), Family::V6);
            native_v4: super::$test(Backend::Nftables, Family::V4);
            native_v6: super::$test(Backend::Nftables, Family::V6);
            $($more)*
        );
    };
    // The module `$test`: its imports, then one test per row, named by the row and calling it.
    (@rows $test:ident [$($import:item)*] $($(#[$attr:meta])* $row:ident: $call:expr;)+) => {
        mod $test {
            $($import)*

            $(
                $(#[$attr])*
                #[test]
                fn $row() {
                    $call;
                }
            )+
        }
    };
}

/// Makes the kernel count every BPF program's runs and run time until the returned descriptor
/// is dropped (`bpf(BPF_ENABLE_STATS, BPF_STATS_RUN_TIME)`, Linux 5.8), without touching the
/// node-wide `kernel.bpf_stats_enabled` sysctl.
///
/// # Errors
/// When the kernel refuses (no `CAP_SYS_ADMIN`, an older kernel).
pub fn enable_bpf_run_time_stats() -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd as _;
    const BPF_ENABLE_STATS: libc::c_long = 32;
    // union bpf_attr's enable_stats: { __u32 type }, BPF_STATS_RUN_TIME = 0; the rest zero.
    let attr = [0u8; 16];
    // SAFETY: bpf(2) reads `attr.len()` bytes from a live buffer.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_ENABLE_STATS, attr.as_ptr(), attr.len()) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidData))?;
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}
