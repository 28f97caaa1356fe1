//! Never failing open (issue 8): concurrent runs, runs killed mid-apply, cleanup with other flags,
//! failed cleanup, rules ahead of capture, the namespace lock.

use std::fs;
use std::path::Path;
use std::thread;

use capture_e2e::{
    Family, Flavor, NetNs, TempDir, Topology, iptables_save_normalized, require_root, run_ok, test_matrix,
};

use crate::capture_init::{Backend, CaptureInit, assert_concurrent_runs_serialise, finished};
use crate::support::{
    assert_no_istio, failing_ip6tables_restore, has_ipv6_passthrough, iptables, rules, saves,
    sidecar_captured,
};

test_matrix!(flavor:
    concurrent_runs_never_undo_each_other,
    killed_mid_apply_heals_on_rerun,
    killed_between_tables_heals_on_rerun,
    cleanup_with_other_flags_removes_everything,
    failed_cleanup_puts_everything_back,
    rules_ahead_of_capture_are_reported,
);

/// What a rerun says when it finds both families' rules exactly in place.
const IN_PLACE: [&str; 2] = [
    "IPv4 capture already in place, nothing changed",
    "IPv6 capture already in place, nothing changed",
];

/// A rerun of `init` finds both families' rules exactly in place.
#[track_caller]
fn rerun_changes_nothing(init: &CaptureInit) {
    init.run().ok().says(IN_PLACE[0]).says(IN_PLACE[1]);
}

/// Both families' `-A` lines.
fn all_rules(pod: &NetNs, flavor: Flavor) -> Vec<String> {
    saves(pod, flavor)
        .iter()
        .flat_map(|s| rules(s).into_iter().map(str::to_owned).collect::<Vec<_>>())
        .collect()
}

/// Two runs started together, with the same flags or with another `-p`, are serialised: the
/// capture in place afterwards is exactly the one of a run that succeeded, never nothing.
fn concurrent_runs_never_undo_each_other(flavor: Flavor) {
    if !require_root() {
        return;
    }
    let topo = Topology::new();
    let first = CaptureInit::sidecar(&topo.pod, flavor, Family::V6);
    assert_concurrent_runs_serialise(
        &first,
        Backend::Iptables(flavor),
        &IN_PLACE,
        "differ from this configuration",
    );
}

/// `capture-init` and its restore child killed (as a container is) at several points of a large
/// TPROXY apply: a plain rerun always completes the capture, and the one after it changes
/// nothing.
fn killed_mid_apply_heals_on_rerun(flavor: Flavor) {
    if !require_root() {
        return;
    }
    let topo = Topology::new();
    let init = CaptureInit::sidecar(&topo.pod, flavor, Family::V6).large_tproxy();
    let mut interrupted = 0;
    for delay_ms in [5, 15, 30, 50, 80, 120, 200] {
        let mut cmd = init.command();
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        cmd.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let mut child = cmd.spawn().expect("start capture-init");
        thread::sleep(std::time::Duration::from_millis(delay_ms));
        let group = nix::unistd::Pid::from_raw(-i32::try_from(child.id()).unwrap());
        let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
        let status = child.wait().expect("reap capture-init");
        interrupted += usize::from(!status.success());
        let rerun = init.run();
        rerun.ok();
        rerun_changes_nothing(&init);
        init.clone().switch("--cleanup-only").run().ok();
        assert_no_istio(&topo.pod, flavor);
    }
    assert!(
        interrupted > 0,
        "no run was killed before it finished: the apply is too fast to test"
    );
}

/// The same, deterministically: the IPv4 restore commits its first table (mangle) and then it and
/// capture-init are killed, leaving mangle's TPROXY rules without the nat ones. A plain rerun
/// completes exactly this configuration.
fn killed_between_tables_heals_on_rerun(flavor: Flavor) {
    if !require_root() {
        return;
    }
    let topo = Topology::new();
    let init = CaptureInit::sidecar(&topo.pod, flavor, Family::V6).set("-m", "TPROXY");
    let fake = TempDir::new("fake-iptables");
    let program = format!("{}-restore", iptables(flavor, Family::V4));
    fake.script(
        &program,
        &format!(
            "#!/bin/sh\n# Commits the first table of its input only, then dies with its parent.\n\
             awk '/^\\*/ {{ n++ }} n <= 1' | /usr/sbin/{program} \"$@\"\nkill -9 $PPID\nkill -9 $$\n"
        ),
    );
    let killed = init.clone().path_first(fake.path()).run();
    assert!(
        killed.status.code().is_none(),
        "capture-init was killed: {killed:?}"
    );
    let [v4, _] = saves(&topo.pod, flavor);
    assert!(
        v4.contains(":ISTIO_TPROXY") && !v4.contains(":ISTIO_OUTPUT"),
        "mangle only:\n{v4}"
    );
    init.run()
        .ok()
        .says("IPv4 capture completed")
        .says("IPv6 capture applied");
    rerun_changes_nothing(&init);
}

/// Cleanup given the default flags after `-m TPROXY -c eth0 -k veth9` removes every rule, the
/// TPROXY policy routing of both families and `::6`; chains in the other flavour go too.
fn cleanup_with_other_flags_removes_everything(flavor: Flavor) {
    if !require_root() {
        return;
    }
    let topo = Topology::new();
    let before = all_rules(&topo.pod, flavor);
    let rules_of = |family: &str| run_ok(topo.pod.command("ip").args([family, "rule", "show"]));
    let ip_rules = [rules_of("-4"), rules_of("-6")];
    CaptureInit::sidecar(&topo.pod, flavor, Family::V6)
        .set("-m", "TPROXY")
        .set("-c", "eth0")
        .set("-k", "veth9")
        .run()
        .ok();
    assert!(rules_of("-4").contains("fwmark 0x539 lookup 133"));
    // A stale chain of ours in the other flavour, as a flavour switch leaves behind.
    let other = flavor.other();
    run_ok(
        topo.pod
            .command(iptables(other, Family::V4))
            .args(["-t", "nat", "-N", "ISTIO_OUTPUT"]),
    );

    CaptureInit::sidecar(&topo.pod, flavor, Family::V6)
        .switch("--cleanup-only")
        .run()
        .ok()
        .says("capture removed");
    assert_eq!(all_rules(&topo.pod, flavor), before, "rules left behind");
    assert_no_istio(&topo.pod, flavor);
    assert_no_istio(&topo.pod, other);
    assert_eq!([rules_of("-4"), rules_of("-6")], ip_rules, "ip rules left behind");
    for family in ["-4", "-6"] {
        let routes = run_ok(
            topo.pod
                .command("ip")
                .args([family, "route", "show", "table", "all"]),
        );
        assert!(
            !routes.contains("table 133"),
            "{family} routes left behind:\n{routes}"
        );
    }
    assert!(!has_ipv6_passthrough(&topo.pod));
}

/// `ip6tables-<flavor>-restore` failing during `--cleanup-only` puts the IPv4 rules back: the run
/// exits 1 saying so, and the pod is exactly as captured as before.
fn failed_cleanup_puts_everything_back(flavor: Flavor) {
    if !require_root() {
        return;
    }
    let topo = Topology::new();
    let (init, fresh) = sidecar_captured(&topo, flavor);
    let fake = failing_ip6tables_restore(flavor);
    init.clone()
        .switch("--cleanup-only")
        .path_first(fake.path())
        .run()
        .code(1)
        .says("line 2 failed (injected)")
        .says("nothing was removed (the removal from IPv4 was put back)");
    assert_eq!(
        saves(&topo.pod, flavor).each_ref().map(|s| rules(s)),
        fresh.each_ref().map(|s| rules(s))
    );
    rerun_changes_nothing(&init);
}

/// A foreign `RETURN` ahead of capture's jump switches capture off for what it matches: a rerun
/// warns naming the rule (and with `--strict` fails), and so does a chain of ours in the other
/// flavour.
fn rules_ahead_of_capture_are_reported(flavor: Flavor) {
    if !require_root() {
        return;
    }
    let topo = Topology::new();
    let init = CaptureInit::sidecar(&topo.pod, flavor, Family::V4);
    init.run().ok();
    run_ok(
        topo.pod
            .command(iptables(flavor, Family::V4))
            .args(["-t", "nat", "-I", "OUTPUT", "-j", "RETURN"]),
    );
    init.run()
        .ok()
        .says("warn\tIPv4: nat OUTPUT rule 1 '-j RETURN' comes before capture's rules and can end the packet's traversal");
    init.clone()
        .switch("--strict")
        .run()
        .code(1)
        .says("capture would not see all traffic: IPv4: nat OUTPUT rule 1 '-j RETURN'");
    run_ok(
        topo.pod
            .command(iptables(flavor, Family::V4))
            .args(["-t", "nat", "-D", "OUTPUT", "1"]),
    );
    init.run()
        .ok()
        .says("IPv4 capture already in place, nothing changed");

    let other = flavor.other();
    run_ok(
        topo.pod
            .command(iptables(other, Family::V4))
            .args(["-t", "nat", "-N", "ISTIO_OUTPUT"]),
    );
    init.run().ok().says(&format!(
        "warn\tcapture chain IPv4 nat ISTIO_OUTPUT also exists in iptables-{}",
        other.as_str()
    ));
    run_ok(
        topo.pod
            .command(iptables(other, Family::V4))
            .args(["-t", "nat", "-X", "ISTIO_OUTPUT"]),
    );
}

/// The namespace lock is the namespace's own nsfs inode: whoever holds it through any path to
/// the namespace (here the test, through `/run/netns/<pod>`, as capture-cni opens `CNI_NETNS`)
/// makes capture-init wait, and capture-init goes on once it is released.
#[test]
fn capture_init_waits_for_the_namespace_lock() {
    if !require_root() {
        return;
    }
    let topo = Topology::new();
    let init = CaptureInit::sidecar(&topo.pod, Flavor::Nft, Family::V4);
    let held =
        capture_core::NetnsLock::path(topo.pod.path(), std::time::Duration::ZERO).expect("lock the pod");
    let mut cmd = init.command();
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().expect("start capture-init");
    thread::sleep(std::time::Duration::from_millis(500));
    assert!(
        !iptables_save_normalized(&topo.pod, Flavor::Nft, Family::V4).contains("ISTIO"),
        "capture-init applied while another run held the namespace"
    );
    drop(held);
    let run = finished(&cmd, child.wait_with_output());
    run.ok().says("IPv4 capture applied");
}

/// With `--cni-mode`, legacy iptables uses a lock file private to the pod; `--cleanup-only`
/// removes it with the capture, so apply/cleanup cycles leave nothing behind.
#[test]
fn cni_mode_cleanup_removes_its_lock_file() {
    if !require_root() {
        return;
    }
    use std::os::unix::fs::MetadataExt as _;
    let topo = Topology::new();
    let ns = fs::metadata(topo.pod.path()).expect("stat the pod's namespace");
    // The runs' environment has no TMPDIR: the lock file goes to /tmp.
    let lock = Path::new("/tmp").join(format!("xtables-{}-{}.lock", ns.dev(), ns.ino()));
    let init = CaptureInit::sidecar(&topo.pod, Flavor::Legacy, Family::V4).switch("--cni-mode");
    init.run().ok();
    assert!(lock.exists(), "{} is the pod's lock file", lock.display());
    init.clone().switch("--cleanup-only").run().ok();
    assert!(!lock.exists(), "{} left behind", lock.display());
}
