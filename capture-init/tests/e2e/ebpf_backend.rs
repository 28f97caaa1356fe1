//! The eBPF backend's own life cycle: reruns, flag changes, cleanup, `ebpf load|unload|pods`,
//! programs attached elsewhere, refused flags, pods in parallel.

use std::fs;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::thread;

use capture_e2e::ebpf::{self, EbpfWorld};
use capture_e2e::{APP_UID, Family, Flavor, Listener, NetNs, Topology, connect_as, require_root, run_ok};

use crate::capture_init::{Backend, CaptureInit, Run, Via, ebpf_node};
use crate::support::{
    APP, ROOT, assert_lands, has_ipv6_passthrough, inbound_proxy, outbound_proxy, peer_app, pod_app,
};
use crate::support::{StopOnDrop, ebpf_pods, ebpf_row};

/// The cgroup programs a load attaches: connect4/6, sockops, getsockopt, getpeername4/6,
/// sendmsg4/6, recvmsg4/6 and sock_release.
const EBPF_PROGRAMS: usize = 11;

/// The first run loads the programs and enrolls the pod; the same command again (either way of
/// entering the pod) changes nothing and says so: same generation, same entries.
#[test]
fn ebpf_second_run_changes_nothing() {
    ebpf_row(|| {
        let topo = Topology::new();
        let init = CaptureInit::new(&topo.pod, Backend::Ebpf, Family::V6);
        init.run()
            .ok()
            .says("eBPF programs loaded, attached to")
            .says("eBPF capture applied");
        let fresh = ebpf_pods().ok().stdout.clone();
        assert!(fresh.contains("generation 1\n"), "{fresh}");
        assert!(
            fresh.contains("CIDRS local ::6/128"),
            "::6 is the pod's own: {fresh}"
        );
        for via in [Via::Flag, Via::Enter] {
            init.clone()
                .via(via)
                .run()
                .ok()
                .says("eBPF capture already in place, nothing changed")
                .never_says("loaded");
            assert_eq!(ebpf_pods().ok().stdout, fresh);
        }
    });
}

/// Other flags replace the pod's configuration in one switch while the app keeps connecting:
/// every connection lands on the proxy or, once `-o 80` is in force, on the peer; none fails.
#[test]
fn ebpf_flag_change_switches_traffic_atomically() {
    use std::sync::atomic::{AtomicBool, AtomicUsize};

    ebpf_row(|| {
        let topo = Topology::new();
        let outbound = outbound_proxy(&topo, Family::V4);
        let app = peer_app(&topo, Family::V4, 80);
        let init = CaptureInit::new(&topo.pod, Backend::Ebpf, Family::V4);
        init.run().ok().says("eBPF capture applied");
        let dst = topo.peer_addr(Family::V4, 80);
        assert_lands(&topo.pod, APP, dst, &outbound);

        let (stop, made) = (AtomicBool::new(false), AtomicUsize::new(0));
        thread::scope(|scope| {
            let traffic = scope.spawn(|| {
                while !stop.load(Ordering::SeqCst) {
                    let (reply, _) = connect_as(&topo.pod, APP_UID, APP_UID, dst)
                        .unwrap_or_else(|e| panic!("a connection during the update failed: {e}"));
                    assert!(
                        reply == outbound.token() || reply == app.token(),
                        "reached {reply:?}"
                    );
                    made.fetch_add(1, Ordering::SeqCst);
                }
            });
            // Stops the traffic however this thread leaves the scope, so a failure cannot hang it.
            let _stop = StopOnDrop(&stop);
            // Waits until `count` connections are made, or the traffic thread ended (failed).
            let wait_for = |count: usize| {
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
                while made.load(Ordering::SeqCst) < count
                    && !traffic.is_finished()
                    && std::time::Instant::now() < deadline
                {
                    thread::sleep(std::time::Duration::from_millis(5));
                }
            };
            wait_for(5);
            init.clone()
                .set("-o", "80")
                .run()
                .ok()
                .says("eBPF capture updated");
            wait_for(made.load(Ordering::SeqCst) + 5);
            stop.store(true, Ordering::SeqCst);
            traffic.join().expect("the traffic thread");
        });
        let captured = outbound.take_accepted();
        assert!(
            captured.len() >= 5,
            "captured before the update: {}",
            captured.len()
        );
        assert!(
            captured
                .iter()
                .all(|a| a.original_dst.as_ref().is_ok_and(|d| *d == dst))
        );
        assert!(app.take_accepted().len() >= 5, "direct after the update");
        assert_lands(&topo.pod, APP, dst, &app);
        let pods = ebpf_pods().ok().stdout.clone();
        assert!(pods.contains("generation 2\n"), "{pods}");
        assert!(pods.contains("PORTS out-exclude 80/16"), "{pods}");
    });
}

/// `--cleanup-only` unenrolls the pod (its connections go direct again) and takes `::6` off `lo`;
/// a second cleanup finds nothing to do.
#[test]
fn ebpf_cleanup_only_unenrolls() {
    ebpf_row(|| {
        let topo = Topology::new();
        let outbound = outbound_proxy(&topo, Family::V6);
        let app = peer_app(&topo, Family::V6, 80);
        let init = CaptureInit::new(&topo.pod, Backend::Ebpf, Family::V6);
        init.run().ok();
        assert!(has_ipv6_passthrough(&topo.pod));
        let dst = topo.peer_addr(Family::V6, 80);
        assert_lands(&topo.pod, APP, dst, &outbound);

        let cleanup = init.switch("--cleanup-only");
        cleanup.run().ok().says("eBPF capture removed");
        assert_lands(&topo.pod, APP, dst, &app);
        assert!(!has_ipv6_passthrough(&topo.pod));
        assert_eq!(ebpf_pods().ok().stdout, "", "no pod enrolled");
        cleanup
            .via(Via::Enter)
            .run()
            .ok()
            .says("not enrolled")
            .says("nothing to remove");
    });
}

/// `capture-init ebpf load` attaches the six programs (a second load changes nothing);
/// `ebpf unload` with a pod enrolled detaches everything, unpins everything and says the pod is
/// no longer captured, which it is not.
#[test]
fn ebpf_load_and_unload() {
    ebpf_row(|| {
        let world = ebpf::child_world().expect("inside ebpf_row");
        let (cgroup, bpffs) = (
            world.cgroup.display().to_string(),
            world.bpffs.display().to_string(),
        );
        ebpf_node(&["load", "--cgroup", &cgroup, "--bpffs", &bpffs])
            .ok()
            .says("eBPF programs loaded, attached to");
        assert_eq!(ebpf::attached_to(&world.cgroup).len(), EBPF_PROGRAMS);
        ebpf_node(&["load", "--cgroup", &cgroup, "--bpffs", &bpffs])
            .ok()
            .says("already loaded")
            .says("nothing changed");

        let topo = Topology::new();
        let outbound = outbound_proxy(&topo, Family::V4);
        let app = peer_app(&topo, Family::V4, 80);
        CaptureInit::new(&topo.pod, Backend::Ebpf, Family::V4)
            .run()
            .ok()
            .says("eBPF capture applied")
            .never_says("loaded");
        let dst = topo.peer_addr(Family::V4, 80);
        assert_lands(&topo.pod, APP, dst, &outbound);

        ebpf_node(&["unload", "--bpffs", &bpffs])
            .ok()
            .says("detached and unpinned")
            .says("1 enrolled pod is no longer captured");
        let attached = ebpf::attached_to(&world.cgroup);
        assert!(attached.is_empty(), "{attached:#?}");
        let pins = ebpf::pinned_in(&world.bpffs);
        assert!(pins.is_empty(), "{pins:#?}");
        assert_lands(&topo.pod, APP, dst, &app);
        ebpf_node(&["pods", "--bpffs", &bpffs])
            .code(1)
            .says("not installed");
        ebpf_node(&["unload", "--bpffs", &bpffs])
            .ok()
            .says("nothing to do");
    });
}

/// Programs already pinned but attached to a cgroup that does not hold the one given are refused,
/// never used: the pod's processes would not be captured. Here they are attached to D, a child
/// of the test cgroup C, while this process, the app and its clients are in C. Enrolling with
/// `--cgroup C` (or the default, the cgroup v2 root) and `ebpf load --cgroup C` exit 1 naming
/// both cgroups and the fix, and enroll nothing; once loaded at C, the same run captures, and a
/// run for D (below C) uses them.
#[test]
fn ebpf_programs_attached_elsewhere_are_refused() {
    ebpf_row(|| {
        let world = ebpf::child_world().expect("inside ebpf_row");
        let sub = ebpf::TestCgroup::under(&world.cgroup);
        let (c, d, bpffs) = (
            world.cgroup.display().to_string(),
            sub.path().display().to_string(),
            world.bpffs.display().to_string(),
        );
        ebpf_node(&["load", "--cgroup", &d, "--bpffs", &bpffs])
            .ok()
            .says(&format!("eBPF programs loaded, attached to {d}"));
        assert_eq!(ebpf::attached_to(sub.path()).len(), EBPF_PROGRAMS);
        // The kernel's id of the links' cgroup is D's inode number.
        let d_id = std::os::unix::fs::MetadataExt::ino(&fs::metadata(sub.path()).unwrap());
        let links = world.pin_dir.join("links");
        for link in fs::read_dir(&links).unwrap() {
            let info = run_ok(
                Command::new("bpftool")
                    .args(["link", "show", "pinned"])
                    .arg(link.unwrap().path()),
            );
            assert!(info.contains(&format!("cgroup_id {d_id} ")), "{info}");
        }

        let topo = Topology::new();
        let outbound = outbound_proxy(&topo, Family::V6);
        let app = peer_app(&topo, Family::V6, 80);
        let dst = topo.peer_addr(Family::V6, 80);
        let init = CaptureInit::new(&topo.pod, Backend::Ebpf, Family::V6);
        let refused = |run: &Run, target: &str| {
            run.code(1)
                .never_says("applied")
                .says(&format!(
                    "eBPF programs under {} are attached to cgroup {d} (id {d_id}), and {target} is neither that cgroup nor below it",
                    world.pin_dir.display()
                ))
                .says(&format!(
                    "unload them first (capture-init ebpf unload --bpffs {bpffs}) or pass --cgroup {d}"
                ));
            run.one_error_line();
        };
        let run = init.run();
        // Whatever the run says, the app's connection (made in C, not under D) is not captured…
        assert_lands(&topo.pod, APP, dst, &app);
        // …so the run must fail rather than report capture applied.
        refused(&run, &format!("--cgroup {c}"));
        assert_eq!(ebpf_pods().ok().stdout, "", "nothing enrolled");
        assert_eq!(ebpf::sk_lookup_programs(&topo.pod), 0, "no inbound link");

        // The default --cgroup, the cgroup v2 root, is checked the same way (the programs are
        // pinned, so this run cannot attach anything to the host's root).
        assert!(links.is_dir());
        let root = capture_ebpf::cgroup2_root().expect("a cgroup2 mount");
        refused(
            &init.clone().unset("--cgroup").run(),
            &format!("the cgroup v2 root {} (--cgroup's default)", root.display()),
        );
        refused(
            &ebpf_node(&["load", "--cgroup", &c, "--bpffs", &bpffs]),
            &format!("--cgroup {c}"),
        );
        ebpf_node(&["load", "--cgroup", &d, "--bpffs", &bpffs])
            .ok()
            .says(&format!(
                "already loaded under {}, attached to cgroup {d}",
                world.pin_dir.display()
            ))
            .says("nothing changed");
        assert_eq!(ebpf_pods().ok().stdout, "", "nothing enrolled");

        ebpf_node(&["unload", "--bpffs", &bpffs]).ok();
        assert!(ebpf::attached_to(sub.path()).is_empty());
        init.run()
            .ok()
            .says(&format!("eBPF programs loaded, attached to {c}"))
            .says("eBPF capture applied");
        assert_lands(&topo.pod, APP, dst, &outbound);
        // Programs attached above the cgroup given act on it too.
        init.clone()
            .set("--cgroup", &d)
            .run()
            .ok()
            .says("eBPF capture already in place, nothing changed");
    });
}

/// Flags the eBPF backend cannot honour yet fail with one line naming them, before anything is
/// loaded: nothing attached, nothing pinned.
#[test]
fn ebpf_refuses_flags_it_cannot_honour() {
    if ebpf::in_cgroup_child().is_some() || !require_root() {
        return;
    }
    let world = EbpfWorld::empty();
    let pod = NetNs::new();
    type Edit = fn(CaptureInit<'_>) -> CaptureInit<'_>;
    let cases: [(Edit, &str); 3] = [
        (|i| i.set("-c", "eth1"), "excluded interfaces (-c)"),
        (|i| i.set("-k", "eth1"), "rerouted interfaces (-k)"),
        (|i| i.switch("--drop-invalid"), "INVALID_DROP"),
    ];
    for (edit, feature) in cases {
        let init = CaptureInit::sidecar(&pod, Flavor::Nft, Family::V4)
            .ebpf_at(world.cgroup.path(), world.bpffs.path())
            .set("--ipv6", "off");
        let run = edit(init).run();
        run.code(1)
            .says(feature)
            .says("not supported by the eBPF backend yet; use the iptables backend");
        run.one_error_line();
    }
    assert!(world.attached().is_empty());
    assert!(world.bpffs.contents().is_empty());
}

/// Six pods set up at once on a node where nothing is loaded yet: exactly one run loads the
/// programs (the others wait for its lock), every pod is captured, all six are listed.
#[test]
fn ebpf_pods_in_parallel() {
    ebpf_row(|| {
        let runs: Vec<(Topology, Run)> = thread::scope(|scope| {
            let pods: Vec<_> = (0..6)
                .map(|i| {
                    scope.spawn(move || {
                        let topo = Topology::new();
                        let via = if i % 2 == 0 { Via::Flag } else { Via::Enter };
                        let run = CaptureInit::new(&topo.pod, Backend::Ebpf, Family::V4)
                            .via(via)
                            .run();
                        (topo, run)
                    })
                })
                .collect();
            pods.into_iter()
                .map(|p| p.join().expect("a pod's setup"))
                .collect()
        });
        let loads = runs
            .iter()
            .filter(|(_, run)| run.ok().stderr.contains("eBPF programs loaded"))
            .count();
        assert_eq!(loads, 1, "exactly one run loads the programs");
        for (topo, run) in &runs {
            run.says("eBPF capture applied");
            let outbound = outbound_proxy(topo, Family::V4);
            assert_lands(&topo.pod, APP, topo.peer_addr(Family::V4, 80), &outbound);
        }
        let pods = ebpf_pods().ok().stdout.clone();
        assert_eq!(pods.matches("netns-cookie ").count(), 6, "{pods}");
    });
}

/// `capture-init ebpf <command> --bpffs <the row's bpffs>`.
fn node_command(command: &str) -> Run {
    let world = ebpf::child_world().expect("inside ebpf_row");
    ebpf_node(&[command, "--bpffs", &world.bpffs.display().to_string()])
}

/// Runs `ebpf gc` until it reclaims something (a deleted namespace is torn down by the kernel
/// shortly after its last reference goes, not at once), at most 10 s.
fn gc_until_reclaimed() -> Run {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let run = node_command("gc");
        run.ok();
        if run.stderr.contains("reclaimed") || std::time::Instant::now() > deadline {
            return run;
        }
        thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A pod whose network namespace was deleted without `--cleanup-only` keeps its entries until
/// `ebpf gc` reclaims them (its `sk_lookup` link, which the kernel detaches when the namespace
/// goes, tells); a live pod is left alone and stays captured; a second gc finds nothing.
#[test]
fn ebpf_gc_reclaims_pods_whose_network_namespace_is_gone() {
    ebpf_row(|| {
        let live = Topology::new();
        let outbound = outbound_proxy(&live, Family::V4);
        CaptureInit::new(&live.pod, Backend::Ebpf, Family::V4).run().ok();
        {
            let gone = Topology::new();
            CaptureInit::new(&gone.pod, Backend::Ebpf, Family::V4).run().ok();
            assert_eq!(ebpf_pods().ok().stdout.matches("netns-cookie").count(), 2);
        }
        gc_until_reclaimed().says("reclaimed 1 pod whose network namespace is gone (netns cookie ");
        assert_eq!(ebpf_pods().ok().stdout.matches("netns-cookie").count(), 1);
        assert_lands(&live.pod, APP, live.peer_addr(Family::V4, 80), &outbound);
        node_command("gc").ok().says("nothing to reclaim");
        node_command("stats").ok();
    });
}

/// Found on main: pods enrolled with thousands of CIDRs and deleted without cleanup filled the
/// CIDR map, and the next enrollment failed with a bare "No space left on device". Now it fails
/// naming the map and the command that reclaims it (the pod keeps nothing half-written), and
/// after `ebpf gc` the same enrollment succeeds.
#[test]
fn ebpf_full_map_names_gc_and_gc_makes_room() {
    ebpf_row(|| {
        let cidrs: Vec<String> = (0..8000)
            .map(|i| format!("10.{}.{}.0/24", 64 + i / 256, i % 256))
            .collect();
        let cidrs = cidrs.join(",");
        {
            let gone: Vec<Topology> = (0..8).map(|_| Topology::new()).collect();
            for topo in &gone {
                CaptureInit::new(&topo.pod, Backend::Ebpf, Family::V4)
                    .set("-x", &cidrs)
                    .run()
                    .ok();
            }
        }
        let topo = Topology::new();
        let init = CaptureInit::new(&topo.pod, Backend::Ebpf, Family::V4).set("-x", &cidrs);
        init.run()
            .code(1)
            .says("map CIDRS is full")
            .says("capture-init ebpf gc");
        gc_until_reclaimed().says("reclaimed");
        // The kernel may tear the eight namespaces down over several gc rounds.
        for _ in 0..100 {
            if node_command("stats").ok().stdout.contains("pods enrolled: 0\n") {
                break;
            }
            thread::sleep(std::time::Duration::from_millis(50));
            node_command("gc").ok();
        }
        init.run().ok().says("eBPF capture applied");
    });
}

/// Pins whose maps have another layout (another version, or none: an older capture) are never
/// read with the wrong meaning: enrolling exits 1 naming both versions and the way out, and
/// `ebpf unload` still removes them.
#[test]
fn ebpf_pins_of_another_map_layout_are_refused_not_reused() {
    ebpf_row(|| {
        let topo = Topology::new();
        let init = CaptureInit::new(&topo.pod, Backend::Ebpf, Family::V4);
        init.run().ok();
        let world = ebpf::child_world().expect("inside ebpf_row");
        let layout = world.pin_dir.join("maps/LAYOUT");
        // What a capture with map layout v999 would have pinned.
        run_ok(
            Command::new("bpftool")
                .args(["map", "update", "pinned"])
                .arg(&layout)
                .args(["key", "0", "0", "0", "0", "value", "0xe7", "0x03", "0", "0"]),
        );
        init.run()
            .code(1)
            .says(&format!(
                "have map layout v999, and this capture has map layout v{}",
                capture_ebpf_common::LAYOUT_VERSION
            ))
            .says("unload them first");
        fs::remove_file(&layout).expect("remove the LAYOUT pin");
        init.run()
            .code(1)
            .says("no layout version (they come from an older capture)");
        node_command("unload").ok().says("detached and unpinned");
        init.run()
            .ok()
            .says("eBPF programs loaded")
            .says("eBPF capture applied");
    });
}

/// A `--bpffs` that is not a bpf filesystem (a typo) is refused, nothing mounted and nothing
/// loaded, instead of silently starting a second set of programs there; `--mount-bpffs` mounts
/// one when that is what is wanted.
#[test]
fn ebpf_bpffs_is_mounted_only_when_asked() {
    ebpf_row(|| {
        let topo = Topology::new();
        let dir = capture_e2e::TempDir::new("not-bpffs");
        let path = dir.path().display().to_string();
        let init = CaptureInit::new(&topo.pod, Backend::Ebpf, Family::V4).set("--bpffs", &path);
        init.run()
            .code(1)
            .says("is not on a bpf filesystem")
            .says("--mount-bpffs");
        assert!(
            !capture_ebpf::is_bpffs(dir.path()).unwrap(),
            "nothing was mounted"
        );
        assert!(
            fs::read_dir(dir.path()).unwrap().next().is_none(),
            "nothing was pinned"
        );

        init.clone()
            .switch("--mount-bpffs")
            .run()
            .ok()
            .says("eBPF capture applied");
        ebpf_node(&["unload", "--bpffs", &path]).ok();
        nix::mount::umount(dir.path()).expect("unmount the bpffs --mount-bpffs made");
    });
}

/// `ebpf pods` says per pod where its network namespace is (inode, and the path the runtime gave
/// when a CNI plugin enrolled it), who enrolled it (the CNI container id, interface and pod
/// namespace/name, for a pod capture-cni's ADD enrolled through `Ebpf::install_pod`), and whether
/// an inbound listener is recorded, before the configuration.
#[test]
fn ebpf_pods_shows_the_netns_the_cni_attachment_and_the_inbound_listener() {
    use std::os::unix::fs::MetadataExt as _;

    ebpf_row(|| {
        let world = ebpf::child_world().expect("inside ebpf_row");
        let by_init = Topology::new();
        CaptureInit::new(&by_init.pod, Backend::Ebpf, Family::V4)
            .run()
            .ok()
            .says("eBPF capture applied");
        // What capture-cni's ADD does in the pod's namespace.
        let by_cni = Topology::new();
        let backend = capture_ebpf::Ebpf {
            pins: capture_ebpf::PinDir::new(&world.bpffs),
            cgroup: Some(world.cgroup.clone()),
            unload_command: "capture-init ebpf unload",
            load_if_absent: false,
            mount_bpffs: false,
        };
        let meta = capture_ebpf::PodMetadata {
            container_id: "c0ffee0123".into(),
            ifname: "eth0".into(),
            pod_namespace: Some("shop".into()),
            pod_name: Some("cart-1".into()),
            netns_path: Some(by_cni.pod.path().to_owned()),
        };
        let mut spec = capture_core::CaptureSpec::sidecar();
        spec.ipv6 = false;
        let ns = capture_core::host::NetNs::open(by_cni.pod.path()).expect("open the pod's netns");
        ns.run::<_, capture_ebpf::Error>(|| {
            Ok(backend
                .install_pod(&spec, &meta)
                .map_err(|e| capture_core::chain(&*e)))
        })
        .expect("enter the pod")
        .expect("enroll the pod as capture-cni does");
        let _inbound = inbound_proxy(&by_cni, Family::V4);

        let pods = ebpf_pods().ok().stdout.clone();
        let inode = |ns: &NetNs| fs::metadata(ns.path()).expect("stat the netns").ino();
        let cni_block = format!(
            "  netns inode {} path {}\n  cni container c0ffee0123 ifname eth0 pod shop/cart-1\n  inbound listener ipv4\n  POD_CONFIG ",
            inode(&by_cni.pod),
            by_cni.pod.path().display()
        );
        assert!(pods.contains(&cni_block), "{cni_block}\nnot in\n{pods}");
        let init_block = format!(
            "  netns inode {}\n  inbound listener none recorded\n  POD_CONFIG ",
            inode(&by_init.pod)
        );
        assert!(pods.contains(&init_block), "{init_block}\nnot in\n{pods}");
        assert_eq!(pods.matches("cni container").count(), 1, "{pods}");

        CaptureInit::new(&by_init.pod, Backend::Ebpf, Family::V4)
            .switch("--cleanup-only")
            .run()
            .ok();
        ns.run::<_, capture_ebpf::Error>(|| {
            Ok(capture_core::Backend::uninstall(&backend, &spec).map_err(|e| capture_core::chain(&*e)))
        })
        .expect("enter the pod")
        .expect("unenroll the pod");
    });
}

/// A `--cgroup` that is no cgroup v2 directory (missing, its `cgroup.procs` file, a plain
/// directory) is one line naming the flag, the path and what is wrong with it, for a pod run and
/// for `ebpf load`/`upgrade`, before anything is loaded: nothing attached, nothing pinned.
#[test]
fn ebpf_cgroup_that_is_no_cgroup_directory_names_the_flag() {
    if ebpf::in_cgroup_child().is_some() || !require_root() {
        return;
    }
    let world = EbpfWorld::empty();
    let pod = NetNs::new();
    let plain = capture_e2e::TempDir::new("not-cgroup");
    let missing = world.cgroup.path().join("missing");
    let procs = world.cgroup.path().join("cgroup.procs");
    let bpffs = world.bpffs.path().display().to_string();
    for (path, problem) in [
        (missing.as_path(), "no such directory"),
        (procs.as_path(), "not a cgroup v2 directory"),
        (plain.path(), "not a cgroup v2 directory"),
    ] {
        let cgroup = path.display().to_string();
        let expected = format!("\terror\t--cgroup {cgroup}: {problem}");
        let pod_run = CaptureInit::sidecar(&pod, Flavor::Nft, Family::V4)
            .ebpf_at(path, world.bpffs.path())
            .set("--ipv6", "off")
            .run();
        let load = ebpf_node(&["load", "--cgroup", &cgroup, "--bpffs", &bpffs]);
        let upgrade = ebpf_node(&["upgrade", "--cgroup", &cgroup, "--bpffs", &bpffs]);
        for run in [pod_run, load, upgrade] {
            run.code(1);
            run.one_error_line().says(&expected);
        }
    }
    assert!(world.attached().is_empty());
    assert!(world.bpffs.contents().is_empty());
}

/// Every pod's `sk_lookup` link runs a stub of a few instructions (its netns cookie and a tail
/// call) and the node's `sk_lookup` program is loaded once whatever the pod count: of the
/// loaded `sk_lookup` programs, one reads the node's `POD_CONFIG`, the one in
/// `SK_LOOKUP_PROGS`. Each pod's inbound connections still follow its own configuration: its
/// own inbound port, its own excluded ports.
#[test]
fn ebpf_pods_share_one_sk_lookup_program_each_with_its_own_config() {
    ebpf_row(|| {
        let (a, b, c) = (Topology::new(), Topology::new(), Topology::new());
        let a_proxy = inbound_proxy(&a, Family::V4);
        let b_proxy = Listener::spawn_proxy(
            &b.pod,
            SocketAddr::new(Family::V4.unspecified(), 15016),
            "b-inbound-proxy",
        );
        let a_app = pod_app(&a, Family::V4, 8080);
        let b_app = pod_app(&b, Family::V4, 8080);
        CaptureInit::new(&a.pod, Backend::Ebpf, Family::V4).run().ok();
        CaptureInit::new(&b.pod, Backend::Ebpf, Family::V4)
            .set("-z", "15016")
            .set("-d", "15090,15021,15020,8080")
            .run()
            .ok();
        assert_lands(&a.peer, ROOT, a.pod_addr(Family::V4, 8080), &a_proxy);
        assert_lands(&b.peer, ROOT, b.pod_addr(Family::V4, 8080), &b_app);
        assert_lands(&b.peer, ROOT, b.pod_addr(Family::V4, 9090), &b_proxy);
        assert!(a_app.take_accepted().is_empty(), "a's 8080 is captured");
        assert!(a_proxy.take_accepted().is_empty() && b_proxy.take_accepted().is_empty());

        let pin_dir = ebpf::child_world().expect("inside ebpf_row").pin_dir;
        let full_programs = || {
            let pod_config = ebpf::map_id(&pin_dir.join("maps/POD_CONFIG"));
            ebpf::programs()
                .into_iter()
                .filter(|p| p.prog_type == "sk_lookup" && p.map_ids.contains(&pod_config))
                .collect::<Vec<_>>()
        };
        let before = full_programs();
        assert_eq!(before.len(), 1, "one sk_lookup program for two pods: {before:?}");
        CaptureInit::new(&c.pod, Backend::Ebpf, Family::V4).run().ok();
        assert_eq!(full_programs(), before, "a third pod loads no sk_lookup program");
        assert!(before[0].insns > 500, "the node's program: {:?}", before[0]);

        let progs = ebpf::map_id(&pin_dir.join("maps/SK_LOOKUP_PROGS"));
        let stubs: Vec<ebpf::ProgInfo> = fs::read_dir(pin_dir.join("inbound"))
            .expect("the pods' link pins")
            .map(|e| ebpf::linked_program(&e.expect("a link pin").path()))
            .collect();
        assert_eq!(stubs.len(), 3, "{stubs:?}");
        for stub in &stubs {
            assert_eq!(stub.prog_type, "sk_lookup", "{stub:?}");
            assert!(stub.insns < 32, "a pod's program is the stub: {stub:?}");
            assert!(stub.map_ids.contains(&progs), "{stub:?}");
        }
        for sk_lookup in [&a.pod, &b.pod, &c.pod].map(ebpf::sk_lookup_programs) {
            assert_eq!(sk_lookup, 1);
        }
    });
}

/// `ebpf stats` gives each program's runs and run time while the kernel counts them (held on
/// here with `BPF_ENABLE_STATS`, which ends with its descriptor, rather than by flipping the
/// node-wide sysctl): a captured outbound connection runs connect4 and sockops, a captured
/// inbound one the pod's `sk_lookup` stub, and the proxy's `SO_ORIGINAL_DST` getsockopt.
#[test]
fn ebpf_stats_gives_each_programs_runs_and_time_while_the_kernel_counts() {
    ebpf_row(|| {
        let topo = Topology::new();
        let outbound = outbound_proxy(&topo, Family::V4);
        let inbound = inbound_proxy(&topo, Family::V4);
        let _app = pod_app(&topo, Family::V4, 8080);
        let _peer = peer_app(&topo, Family::V4, 80);
        CaptureInit::new(&topo.pod, Backend::Ebpf, Family::V4).run().ok();
        let _counting = capture_e2e::enable_bpf_run_time_stats().expect("BPF_ENABLE_STATS");
        let before = program_costs();
        assert_lands(&topo.pod, APP, topo.peer_addr(Family::V4, 80), &outbound);
        assert_lands(&topo.peer, ROOT, topo.pod_addr(Family::V4, 8080), &inbound);
        let after = program_costs();
        for program in [
            "capture_connect4",
            "capture_sockops",
            "capture_getsockopt",
            "capture_sk_lookup",
        ] {
            let ((instances, runs, time), (_, runs_before, time_before)) = (after[program], before[program]);
            assert_eq!(instances, 1, "{program}: {after:?}");
            assert!(
                runs > runs_before && time > time_before,
                "{program} ran, in {after:?}"
            );
        }
        // The cgroup programs, the sk_msg program on SPLICE (attached with the setting off too;
        // it runs only for spliced sockets) and the stubs.
        assert_eq!(
            after.len(),
            EBPF_PROGRAMS + 2,
            "every program and the stubs: {after:?}"
        );
        assert_eq!(after["capture_sk_msg"].1, 0, "nothing is spliced: {after:?}");
    });
}

/// `ebpf stats`' program lines as name → (instances, runs, run time).
fn program_costs() -> std::collections::BTreeMap<String, (u64, u64, u64)> {
    let stats = node_command("stats").ok().stdout.clone();
    let mut costs = std::collections::BTreeMap::new();
    for line in stats.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let number = |i: usize| {
            words[i]
                .parse::<u64>()
                .unwrap_or_else(|e| panic!("{line:?}: {e}"))
        };
        if let [
            "program",
            name,
            "instances",
            _,
            "runs",
            _,
            "run_time_ns",
            _,
            "mean_ns",
            _,
        ] = words.as_slice()
        {
            costs.insert((*name).to_owned(), (number(3), number(5), number(7)));
        }
    }
    costs
}
