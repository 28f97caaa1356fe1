//! The harness's own suites, one test binary: the harness itself (`harness`), what the kernel
//! answers to `SO_ORIGINAL_DST` (`original_dst`), the CNI runner with real plugins (`cni_chain`),
//! and capture-ebpf's programs driven through its library (`ebpf`, `ebpf_inbound`). Each test
//! builds its own namespaces, so they run in parallel.
//!
//! Capture itself, through the real binaries, is tested where those live: the scenario table in
//! `capture-init/tests/e2e/`, the CNI plugin in `capture-cni/tests/`. The harness and kernel tests
//! here use a hand-written payload instead of capture's renderer, so that what they check does not
//! depend on the code under test: the default sidecar rules of
//! `istio-iptables -p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -x "" -b '*' -d 15090,15021,15020`
//! (istio-capture.md §2.1).

/// `per_family!(scenario: v4, v6)`: the tests `v4` and `v6`, which run `scenario(Family::V4)`
/// and `scenario(Family::V6)`.
#[cfg(feature = "ebpf")]
macro_rules! per_family {
    ($scenario:ident: $v4:ident, $v6:ident) => {
        #[test]
        fn $v4() {
            $scenario(capture_e2e::Family::V4);
        }

        #[test]
        fn $v6() {
            $scenario(capture_e2e::Family::V6);
        }
    };
}

mod cni_chain;
#[cfg(feature = "ebpf")]
mod ebpf;
#[cfg(feature = "ebpf")]
mod ebpf_inbound;
mod harness;
mod original_dst;

use capture_e2e::{Family, Flavor, NetNs, iptables_restore};

/// The IPv4 restore payload of the default sidecar, as istio-iptables emits it.
const DEFAULT_SIDECAR_V4: &str = "\
* nat
-N ISTIO_INBOUND
-N ISTIO_REDIRECT
-N ISTIO_IN_REDIRECT
-N ISTIO_OUTPUT
-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN
-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A ISTIO_INBOUND -p tcp --dport 15090 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15021 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15020 -j RETURN
-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
-A ISTIO_OUTPUT -j ISTIO_REDIRECT
COMMIT
";

/// The default sidecar payload for `family`; IPv6 swaps in `::6/128` and `::1/128` as istio-iptables does.
fn default_sidecar_payload(family: Family) -> String {
    match family {
        Family::V4 => DEFAULT_SIDECAR_V4.to_owned(),
        Family::V6 => DEFAULT_SIDECAR_V4
            .replace("127.0.0.6/32", "::6/128")
            .replace("127.0.0.1/32", "::1/128"),
    }
}

/// Applies the default sidecar rules for both families in `pod`, as istio-iptables does on a dual-stack
/// pod: v4 payload, v6 payload, then `::6/128` on `lo` (the source of inbound passthrough).
fn capture_default_sidecar(pod: &NetNs, flavor: Flavor) {
    for family in [Family::V4, Family::V6] {
        iptables_restore(pod, flavor, family, &default_sidecar_payload(family));
    }
    pod.ip(&["-6", "addr", "add", "::6/128", "dev", "lo", "nodad"]);
}

#[test]
fn v6_payload_substitutes_loopback_addresses() {
    let v6 = default_sidecar_payload(Family::V6);
    assert!(!v6.contains("127.0.0."), "{v6}");
    assert_eq!(v6.matches("::1/128").count(), 3, "{v6}");
    assert_eq!(v6.matches("-s ::6/128").count(), 1, "{v6}");
}
