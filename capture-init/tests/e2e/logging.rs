//! The log of a run: with `--log_as_json --log_output_level=default:debug`, every line is one
//! JSON object, and together they say the effective configuration (every setting and where it
//! came from), each decision (IPv6, the iptables flavour, the state found) and the payload
//! written; a rerun says that it found everything in place and writes nothing.

use capture_e2e::{Family, Flavor, Topology, require_root, test_matrix};
use serde_json::Value;

use crate::capture_init::{Backend, CaptureInit};
#[cfg(feature = "ebpf")]
use crate::support::ebpf_row;

test_matrix!(backend: a_json_debug_run_says_its_configuration_decisions_and_payload);

/// The run's log lines, each parsed (a line that is not JSON fails the test).
#[track_caller]
fn events(stderr: &str) -> Vec<Value> {
    stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("a log line that is not JSON ({e}): {l}")))
        .collect()
}

/// The first event whose message starts with `start`, at `level`.
#[track_caller]
fn find<'a>(events: &'a [Value], level: &str, start: &str) -> &'a Value {
    events
        .iter()
        .find(|e| e["level"] == level && e["msg"].as_str().is_some_and(|m| m.starts_with(start)))
        .unwrap_or_else(|| panic!("no {level} event starting {start:?} in {events:#?}"))
}

fn a_json_debug_run_says_its_configuration_decisions_and_payload(backend: Backend) {
    if !require_root() {
        return;
    }
    let topo = Topology::new();
    let init = CaptureInit::new(&topo.pod, backend, Family::V4)
        .switch("--log_as_json")
        .set("--log_output_level", "default:debug");
    let first = init.run();
    first.ok();
    let log = events(&first.stderr);
    let flags = find(&log, "info", "settings from the command line: ")["msg"]
        .as_str()
        .unwrap();
    for setting in [
        "--envoy-port=15001",
        "--proxy-uid=1337",
        "--istio-service-exclude-cidr=\"\"",
    ] {
        assert!(flags.contains(setting), "{setting} in {flags}");
    }
    find(
        &log,
        "info",
        "settings left at their defaults: --inbound-tunnel-port=15008",
    );
    find(
        &log,
        "info",
        "IPv6 off (istio-iptables' rule: the pod's first usable address decides)",
    );
    let (scope, state, payload, step) = match backend {
        Backend::Iptables(flavor) => {
            find(&log, "debug", &format!("iptables flavour {}", flavor.as_str()));
            // A fresh pod's namespace holds no tables: nothing to compare, no *-save run.
            let nothing = match flavor {
                Flavor::Nft => "no nftables tables (ip, ip6, inet) in the namespace: nothing to compare",
                Flavor::Legacy => "no legacy iptables tables in the namespace: nothing to compare",
            };
            assert_eq!(find(&log, "debug", nothing)["scope"], "iptables");
            let restore = format!("iptables-{}-restore input (IPv4, applied):\n* nat\n", flavor.as_str());
            ("iptables", "IPv4: no rules of capture's are there", restore, "IPv4 capture applied")
        }
        Backend::Nftables => (
            "nftables",
            "none of capture's nftables tables are there",
            "nftables transaction (applied; one netlink batch, in nft -f form):\nadd table inet istio-proxy-nat".to_owned(),
            "native nftables capture applied",
        ),
        #[cfg(feature = "ebpf")]
        Backend::Ebpf => (
            "ebpf",
            "eBPF programs already loaded",
            "eBPF map entries written (applied, netns cookie ".to_owned(),
            "eBPF capture applied",
        ),
    };
    #[cfg(feature = "ebpf")]
    let state = if backend.is_ebpf() { "" } else { state };
    if !state.is_empty() {
        assert_eq!(find(&log, "debug", state)["scope"], scope);
    }
    assert_eq!(find(&log, "info", &payload)["scope"], scope);
    find(&log, "info", step);

    // A rerun finds everything in place: it says so, and writes nothing.
    let second = init.run();
    second.ok();
    let log = events(&second.stderr);
    let found = match backend {
        Backend::Iptables(_) => "IPv4: capture's rules are all there",
        Backend::Nftables => "capture's nftables tables are there as configured",
        #[cfg(feature = "ebpf")]
        Backend::Ebpf => "the pod's map entries are as configured",
    };
    assert_eq!(find(&log, "debug", found)["scope"], scope);
    find(&log, "info", "settings from the command line: ");
    assert!(
        !log.iter().any(|e| e["msg"]
            .as_str()
            .is_some_and(|m| m.starts_with(&payload[..payload.find(" (").unwrap()]))),
        "a rerun writes no payload: {log:#?}"
    );
}
