//! `capture-init status`: which backend holds capture in the pod, whether it equals a
//! configuration, its counters, and the exit status a readiness probe reads (0 present and
//! equal, 3 absent, 4 drifted, 5 more than one backend).

use capture_e2e::{Family, Flavor, Topology, require_root, test_matrix};
use serde_json::Value;

use crate::capture_init::{Backend, CaptureInit, Run, Via};
#[cfg(feature = "ebpf")]
use crate::support::ebpf_row;
use crate::support::{APP, assert_lands, outbound_proxy, peer_app};

/// Exit statuses of `capture-init status`.
const ABSENT: i32 = 3;
const DRIFTED: i32 = 4;
const CONFLICT: i32 = 5;

/// The first line of the text report, naming the backend found.
fn holder_line(backend: Backend) -> String {
    match backend {
        Backend::Iptables(flavor) => format!("capture: iptables ({}), IPv4\n", flavor.as_str()),
        Backend::Nftables => "capture: native nftables (tables inet istio-proxy-nat".to_owned(),
        #[cfg(feature = "ebpf")]
        Backend::Ebpf => "capture: eBPF (netns cookie ".to_owned(),
    }
}

fn json(run: &Run) -> Value {
    serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("{}: not JSON ({e}):\n{}", run.command, run.stdout))
}

test_matrix!(backend: status_names_the_backend_and_the_drift);

/// Absent: exit 3 saying so. After a run: exit 0 naming the backend, "configuration: equal"
/// with the run's flags. With other flags (`-p 15002`): exit 4 naming the difference. After
/// cleanup: exit 3 again. `--output json` says the same.
fn status_names_the_backend_and_the_drift(backend: Backend) {
    if !require_root() {
        return;
    }
    let topo = Topology::new();
    let init = CaptureInit::new(&topo.pod, backend, Family::V4);
    let absent = init.status(false, &[]);
    absent.code(ABSENT);
    assert!(absent.stdout.starts_with("capture: none ("), "{}", absent.stdout);
    init.status(true, &[]).code(ABSENT);
    assert_eq!(
        json(&init.status(false, &["--output", "json"]))["state"],
        "absent"
    );

    init.run().ok();
    let present = init.status(false, &[]);
    present.ok();
    assert!(
        present.stdout.starts_with(&holder_line(backend)),
        "{}",
        present.stdout
    );
    assert!(!present.stdout.contains("configuration:"), "{}", present.stdout);
    // Both ways into the pod: --network-namespace, and run inside it (as a probe would be).
    for via in [Via::Flag, Via::Enter] {
        let equal = init.clone().via(via).status(true, &[]);
        equal.ok();
        assert!(
            equal.stdout.starts_with(&holder_line(backend)),
            "{via:?}: {}",
            equal.stdout
        );
        assert!(
            equal.stdout.contains("\nconfiguration: equal\n"),
            "{via:?}: {}",
            equal.stdout
        );
    }

    let other = init.clone().set("-p", "15002");
    let drifted = other.status(true, &[]);
    drifted.code(DRIFTED);
    assert!(
        drifted.stdout.contains("\nconfiguration: drifted ("),
        "{}",
        drifted.stdout
    );
    let named = match backend {
        Backend::Iptables(_) => "--to-ports 15001' instead of '-p tcp -j REDIRECT --to-ports 15002'",
        Backend::Nftables => "chain istio-redirect",
        #[cfg(feature = "ebpf")]
        Backend::Ebpf => "outbound=15001",
    };
    assert!(
        drifted.stdout.contains(named),
        "lacks {named:?}:\n{}",
        drifted.stdout
    );
    let report = json(&other.status(true, &["--output", "json"]));
    assert_eq!(report["state"], "drifted", "{report}");
    assert_eq!(report["exit"], DRIFTED, "{report}");
    assert_eq!(report["configuration"]["equal"], false, "{report}");
    let expected_backend = match backend {
        Backend::Iptables(_) => "iptables",
        Backend::Nftables => "nftables",
        #[cfg(feature = "ebpf")]
        Backend::Ebpf => "ebpf",
    };
    assert_eq!(report["backends"][0]["backend"], expected_backend, "{report}");
    assert_eq!(report["backends"].as_array().map(Vec::len), Some(1), "{report}");

    init.clone().switch("--cleanup-only").run().ok();
    init.status(false, &[]).code(ABSENT);
}

test_matrix!(backend: status_counters_move_with_captured_traffic);

/// A captured connection moves the counters of the backend that has them: the packets of the
/// iptables rule that redirects to 15001, the pod's eBPF `outbound` counter. Native nftables
/// rules carry no counters, and the report says so.
fn status_counters_move_with_captured_traffic(backend: Backend) {
    if !require_root() {
        return;
    }
    let topo = Topology::new();
    let outbound = outbound_proxy(&topo, Family::V4);
    let _app = peer_app(&topo, Family::V4, 80);
    let init = CaptureInit::new(&topo.pod, backend, Family::V4);
    init.run().ok();
    let counter = || {
        let run = init.status(false, &["--output", "json"]);
        run.ok();
        let report = json(&run);
        let counters = report["counters"].as_array().cloned().unwrap_or_default();
        let value = counters.iter().find_map(|c| match backend {
            Backend::Iptables(_) => (c["family"] == "ipv4"
                && c["rule"] == "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001")
                .then(|| c["packets"].as_u64().expect("packets")),
            Backend::Nftables => None,
            #[cfg(feature = "ebpf")]
            Backend::Ebpf => (c["name"] == "outbound").then(|| c["value"].as_u64().expect("value")),
        });
        (value, counters.len())
    };
    let (before, _) = counter();
    assert_lands(&topo.pod, APP, topo.peer_addr(Family::V4, 80), &outbound);
    let (after, listed) = counter();
    if backend == Backend::Nftables {
        assert_eq!((before, after, listed), (None, None, 0));
        let text = init.status(false, &[]);
        assert!(
            text.stdout.contains("counters: native nftables rules have none"),
            "{}",
            text.stdout
        );
        return;
    }
    let (before, after) = (
        before.expect("the counter is listed"),
        after.expect("the counter is listed"),
    );
    assert!(after > before, "the counter moved: {before} -> {after}");
    let text = init.status(false, &[]);
    assert!(text.stdout.contains("counters: "), "{}", text.stdout);
}

/// iptables rules and native nftables tables in one pod fight over its traffic: exit 5 naming
/// both.
#[test]
fn status_of_two_backends_at_once_is_a_conflict() {
    if !require_root() {
        return;
    }
    let topo = Topology::new();
    CaptureInit::new(&topo.pod, Backend::Iptables(Flavor::Nft), Family::V4)
        .run()
        .ok();
    let native = CaptureInit::new(&topo.pod, Backend::Nftables, Family::V4);
    native.run().ok();
    let run = native.status(false, &[]);
    run.code(CONFLICT);
    assert!(
        run.stdout.starts_with("capture: held by 2 backends at once")
            && run.stdout.contains("iptables (nft), IPv4")
            && run.stdout.contains("native nftables"),
        "{}",
        run.stdout
    );
}

/// eBPF programs attached to a cgroup below the configuration's (D under the row's C) do not
/// capture C's processes: with that configuration, status reports a drift naming both cgroups
/// (exit 4), not a failure to read; with D as `--cgroup` it is equal.
#[cfg(feature = "ebpf")]
#[test]
fn status_of_ebpf_programs_on_another_cgroup_is_a_drift() {
    ebpf_row(|| {
        let world = capture_e2e::ebpf::child_world().expect("inside ebpf_row");
        let sub = capture_e2e::ebpf::TestCgroup::under(&world.cgroup);
        let topo = Topology::new();
        let on_d = CaptureInit::new(&topo.pod, Backend::Ebpf, Family::V4).ebpf_at(sub.path(), &world.bpffs);
        on_d.run().ok();
        on_d.status(true, &[]).ok();
        let on_c = CaptureInit::new(&topo.pod, Backend::Ebpf, Family::V4);
        let drifted = on_c.status(true, &[]);
        drifted.code(DRIFTED);
        assert!(
            drifted
                .stdout
                .contains(&format!("are attached to cgroup {}", sub.path().display()))
                && drifted
                    .stdout
                    .contains(&format!("{} (id ", world.cgroup.display())),
            "{}",
            drifted.stdout
        );
        on_d.clone().switch("--cleanup-only").run().ok();
    });
}
