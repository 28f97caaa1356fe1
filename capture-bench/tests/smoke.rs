//! The bench's correctness check, checked: a few hundred connections per mode through the real
//! `capture-init` (the workspace's `target/<profile>/capture-init`, or `CAPTURE_INIT`), every
//! captured one with the server's address as its original destination, none captured in the
//! direct and explicit modes (also from a pod enrolled in eBPF); and a wrong expectation fails
//! the run. Needs root.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use capture_e2e::require_root;
use serde_json::Value;

const BENCH: &str = env!("CARGO_BIN_EXE_capture-bench");

/// The capture-init binary the workspace's tests built next to this one.
fn capture_init() -> PathBuf {
    let path = std::env::var_os("CAPTURE_INIT").map_or_else(
        || {
            // target/<profile>/deps/smoke-<hash> -> target/<profile>/capture-init
            let exe = std::env::current_exe().expect("the test binary");
            exe.parent()
                .and_then(Path::parent)
                .expect("target/<profile>")
                .join("capture-init")
        },
        PathBuf::from,
    );
    assert!(
        path.is_file(),
        "no capture-init at {}: build it first (cargo build -p capture-init --features ebpf) or set CAPTURE_INIT",
        path.display()
    );
    path
}

/// Whether `capture_init` has the eBPF backend; without it (a local build without the feature)
/// the eBPF mode is left out, and in CI that fails.
fn has_ebpf(capture_init: &Path) -> bool {
    let built = Command::new(capture_init)
        .args(["ebpf", "--help"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        built || std::env::var_os("CI").is_none(),
        "{} has no eBPF backend: build it with --features ebpf",
        capture_init.display()
    );
    if !built {
        eprintln!(
            "leaving out the eBPF mode: {} is built without it",
            capture_init.display()
        );
    }
    built
}

/// Runs `capture-bench datapath` with `args` and checks it left no namespace, cgroup or mount.
fn bench(args: &[&str]) -> Output {
    let capture_init = capture_init();
    let child = Command::new(BENCH)
        .arg("datapath")
        .arg("--capture-init")
        .arg(&capture_init)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start capture-bench");
    let pid = child.id();
    let out = child.wait_with_output().expect("wait for capture-bench");
    let netns: Vec<_> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
                .filter(|n| n.starts_with(&format!("capture-test-{pid}-")))
                .collect()
        })
        .unwrap_or_default();
    assert!(netns.is_empty(), "namespaces left behind: {netns:?}");
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("read /proc/self/mounts");
    let cgroups = mounts
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.get(2) == Some(&"cgroup2"))
        .map(|f| PathBuf::from(f[1]))
        .expect("a cgroup2 mount");
    for tag in ["", "-skmsg"] {
        let cgroup = cgroups.join(format!("capture-bench-{pid}{tag}"));
        assert!(!cgroup.exists(), "{} left behind", cgroup.display());
        let bpffs = std::env::temp_dir().join(format!("capture-bench-bpffs-{pid}{tag}"));
        assert!(!bpffs.exists(), "{} left behind", bpffs.display());
    }
    out
}

fn modes(capture_init: &Path) -> &'static str {
    if has_ebpf(capture_init) {
        "direct,explicit,legacy,nft,native,ebpf,ebpf-skmsg,explicit-ebpf"
    } else {
        "direct,explicit,legacy,nft,native"
    }
}

#[test]
fn captured_connections_arrive_with_the_servers_address_in_every_mode() {
    if !require_root() {
        return;
    }
    let modes = modes(&capture_init());
    let out = bench(&[
        "--runs",
        "1",
        "--count",
        "300",
        "--metrics",
        "cps4,latency",
        "--modes",
        modes,
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "capture-bench failed: {stderr}");
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    let results = report["results"].as_array().expect("results");
    assert_eq!(results.len(), modes.split(',').count() * 2, "{report:#}");
    for result in results {
        let n = |key: &str| result[key].as_u64().expect("a count");
        let what = format!("{} {}: {result}", result["mode"], result["metric"]);
        let connections = if result["metric"] == "cps4" { 300 } else { 1 };
        assert_eq!(n("connections"), connections, "{what}");
        assert_eq!(n("mismatches"), 0, "{what}");
        let (captured, explicit) = match result["mode"].as_str().expect("a mode") {
            "direct" => (0, 0),
            "explicit" | "explicit-ebpf" => (0, connections),
            _ => (connections, 0),
        };
        assert_eq!((n("captured"), n("explicit")), (captured, explicit), "{what}");
        assert!(result["median"].as_f64().is_some_and(|v| v > 0.0), "{what}");
    }
}

#[test]
fn an_unexpected_original_destination_fails_the_run() {
    if !require_root() {
        return;
    }
    let capture_init = capture_init();
    let modes: Vec<_> = modes(&capture_init)
        .split(',')
        .filter(|m| !["direct", "explicit", "explicit-ebpf"].contains(m))
        .collect();
    for mode in modes {
        let out = bench(&[
            "--runs",
            "1",
            "--count",
            "20",
            "--metrics",
            "cps1",
            "--modes",
            mode,
            "--wrong-expectation",
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{mode}: a wrong expectation passed: {stderr}"
        );
        assert!(
            stderr.contains(&format!(
                "capture-bench: {mode} cps1: 20 of 20 captured connections had an original destination other than the expected"
            )),
            "{mode}: {stderr}"
        );
    }
}

/// `--program-costs` accounts each program per connection: the app's connect and the proxy's
/// are the two connect4 runs of a captured connection, its SYN to the proxy the one run of
/// the pod's `sk_lookup` stub.
#[test]
fn program_costs_count_each_programs_runs_per_connection() {
    if !require_root() || !has_ebpf(&capture_init()) {
        return;
    }
    let out = bench(&[
        "--runs",
        "1",
        "--count",
        "50",
        "--metrics",
        "cps1",
        "--modes",
        "ebpf",
        "--program-costs",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "capture-bench failed: {stderr}");
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    let costs = report["program_costs"].as_array().expect("program_costs");
    let per_connection = |program: &str| {
        let row = costs
            .iter()
            .find(|r| r["program"] == program)
            .unwrap_or_else(|| panic!("{program} in {costs:#?}"));
        assert!(row["ns_per_run"].as_f64().is_some_and(|ns| ns > 0.0), "{row}");
        row["runs_per_connection"].as_f64().expect("runs per connection")
    };
    assert!(
        (per_connection("capture_connect4") - 2.0).abs() < 1e-9,
        "{costs:#?}"
    );
    assert!(
        (per_connection("capture_sk_lookup") - 1.0).abs() < 1e-9,
        "{costs:#?}"
    );
    assert!(per_connection("capture_sockops") > 2.0, "{costs:#?}");
}
