//! Upgrading the node's programs under running pods (`capture-init ebpf upgrade`): the links
//! stay, their programs are swapped with `BPF_LINK_UPDATE`, and no connection made meanwhile
//! goes uncaptured or fails.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use capture_e2e::ebpf::{self, attached_to, sk_lookup_programs};
use capture_e2e::{APP_UID, Family, Topology, connect_as};

use capture_ebpf::{Node, PinDir};
use capture_ebpf_common::{LAYOUT_VERSION, STAT_OUTBOUND, STAT_PASSED};

use crate::capture_init::{Backend, CaptureInit, Run, ebpf_node};
use crate::support::{APP, ROOT, StopOnDrop, assert_lands, ebpf_row, inbound_proxy, outbound_proxy};

/// `capture-init ebpf upgrade <extra> --bpffs … --cgroup …` for the row's node.
fn upgrade(extra: &[&str]) -> Run {
    let world = ebpf::child_world().expect("inside ebpf_row");
    let (bpffs, cgroup) = (
        world.bpffs.display().to_string(),
        world.cgroup.display().to_string(),
    );
    let mut args = vec!["upgrade", "--bpffs", &bpffs, "--cgroup", &cgroup];
    args.extend(extra);
    ebpf_node(&args)
}

/// Program ids attached to the row's cgroup.
fn attached_ids() -> Vec<String> {
    let world = ebpf::child_world().expect("inside ebpf_row");
    let mut ids: Vec<String> = attached_to(&world.cgroup)
        .iter()
        .map(|l| l.split(' ').next().unwrap_or_default().to_owned())
        .collect();
    ids.sort();
    ids
}

/// Outbound and inbound connections in a loop while the programs are replaced three times:
/// every one lands on the proxy with its original destination, none fails; afterwards the
/// cgroup holds as many attachments as before, of other programs, and the pod one `sk_lookup`.
/// An upgrade to the programs already attached changes nothing.
#[test]
fn ebpf_upgrade_under_traffic_keeps_every_connection_captured() {
    ebpf_row(|| {
        let topo = Topology::new();
        let outbound = outbound_proxy(&topo, Family::V4);
        let inbound = inbound_proxy(&topo, Family::V4);
        CaptureInit::new(&topo.pod, Backend::Ebpf, Family::V4)
            .run()
            .ok()
            .says("eBPF capture applied");
        let out_dst = topo.peer_addr(Family::V4, 80);
        let in_dst = topo.pod_addr(Family::V4, 8080);
        assert_lands(&topo.pod, APP, out_dst, &outbound);
        assert_lands(&topo.peer, ROOT, in_dst, &inbound);
        upgrade(&[])
            .ok()
            .says("the programs in place are this capture's; nothing changed");
        let before = attached_ids();

        let stop = AtomicBool::new(false);
        let made = [AtomicUsize::new(0), AtomicUsize::new(0)];
        thread::scope(|scope| {
            let loops = [
                (&topo.pod, APP_UID, out_dst, outbound.token(), &made[0]),
                (&topo.peer, 0, in_dst, inbound.token(), &made[1]),
            ]
            .map(|(ns, uid, dst, token, made)| {
                let stop = &stop;
                scope.spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        let (reply, _) = connect_as(ns, uid, uid, dst).unwrap_or_else(|e| {
                            panic!("a connection to {dst} during the upgrade failed: {e}")
                        });
                        assert_eq!(
                            reply, token,
                            "a connection to {dst} during the upgrade was not captured"
                        );
                        made.fetch_add(1, Ordering::SeqCst);
                    }
                })
            });
            let _stop = StopOnDrop(&stop);
            let wait_for_more = || {
                let counts = made.each_ref().map(|m| m.load(Ordering::SeqCst));
                let deadline = Instant::now() + Duration::from_secs(20);
                while made
                    .iter()
                    .zip(counts)
                    .any(|(m, c)| m.load(Ordering::SeqCst) < c + 5)
                    && !loops.iter().any(thread::ScopedJoinHandle::is_finished)
                    && Instant::now() < deadline
                {
                    thread::sleep(Duration::from_millis(5));
                }
            };
            wait_for_more();
            for _ in 0..3 {
                upgrade(&["--always"]).ok().says(
                    "programs replaced on 11 cgroup hooks and for 1 pod, every pod captured throughout",
                );
                wait_for_more();
            }
            stop.store(true, Ordering::SeqCst);
            for handle in loops {
                handle.join().expect("a traffic thread");
            }
        });
        let counts = made.each_ref().map(|m| m.load(Ordering::SeqCst));
        assert!(counts.iter().all(|&c| c >= 20), "connections made: {counts:?}");
        let seen = outbound.take_accepted();
        assert_eq!(
            seen.len(),
            counts[0],
            "every outbound connection reached the proxy"
        );
        assert!(
            seen.iter()
                .all(|a| a.original_dst.as_ref().is_ok_and(|d| *d == out_dst)),
            "original destinations"
        );
        let seen = inbound.take_accepted();
        assert_eq!(
            seen.len(),
            counts[1],
            "every inbound connection reached the proxy"
        );
        assert!(seen.iter().all(|a| a.local == in_dst), "dialled addresses");

        let after = attached_ids();
        assert_eq!(after.len(), before.len(), "{before:?} -> {after:?}");
        assert!(
            after.iter().all(|id| !before.contains(id)),
            "{before:?} -> {after:?}"
        );
        assert_eq!(sk_lookup_programs(&topo.pod), 1);
        assert_lands(&topo.pod, APP, out_dst, &outbound);
        assert_lands(&topo.peer, ROOT, in_dst, &inbound);
        let pin_dir = ebpf::child_world().expect("inside ebpf_row").pin_dir;
        assert!(!pin_dir.join("upgrade").exists(), "the staging directory is gone");
    });
}

/// Takes the maps layout v4 added (the pods' stubs' `SK_LOOKUP_PROGS` and `LOOKUP_NETNS`) out
/// of the row's pins, as a node of an older layout has none. Their pins move to the bpffs'
/// root rather than going, so that the stubs of pods enrolled already keep working until the
/// upgrade switches them (a program array whose last pin goes is emptied), as an older node's
/// pods are captured by their own programs. Returns the moved pins, for [`remove_pins`].
fn take_away_stub_maps() -> Vec<std::path::PathBuf> {
    let world = ebpf::child_world().expect("inside ebpf_row");
    ["SK_LOOKUP_PROGS", "LOOKUP_NETNS"]
        .map(|name| {
            let kept = world.bpffs.join(format!("kept-{name}"));
            std::fs::rename(world.pin_dir.join("maps").join(name), &kept).expect("move a v4 map's pin aside");
            kept
        })
        .into()
}

fn remove_pins(pins: &[std::path::PathBuf]) {
    for pin in pins {
        std::fs::remove_file(pin).expect("remove a moved pin");
    }
}

/// The `sk_lookup` programs loaded that read the row's `POD_CONFIG`: the node's.
fn node_sk_lookup_programs() -> Vec<ebpf::ProgInfo> {
    let pin_dir = ebpf::child_world().expect("inside ebpf_row").pin_dir;
    let pod_config = ebpf::map_id(&pin_dir.join("maps/POD_CONFIG"));
    ebpf::programs()
        .into_iter()
        .filter(|p| p.prog_type == "sk_lookup" && p.map_ids.contains(&pod_config))
        .collect()
}

/// [`node_sk_lookup_programs`] once a replaced program is gone: the kernel frees a program
/// array it no longer has a reference to (and the program in it) in deferred work, so the old
/// program may still be listed for a moment after the upgrade returns. Gives up after 5 s and
/// returns what is listed then.
fn settled_node_sk_lookup_programs() -> Vec<ebpf::ProgInfo> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let programs = node_sk_lookup_programs();
        if programs.len() <= 1 || Instant::now() >= deadline {
            return programs;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// The program on each pod's `sk_lookup` link, by link pin name (the pod's cookie).
fn pod_programs() -> Vec<(String, ebpf::ProgInfo)> {
    let pin_dir = ebpf::child_world().expect("inside ebpf_row").pin_dir;
    let mut pods: Vec<_> = std::fs::read_dir(pin_dir.join("inbound"))
        .expect("the pods' link pins")
        .map(|e| {
            let e = e.expect("a link pin");
            (
                e.file_name().to_string_lossy().into_owned(),
                ebpf::linked_program(&e.path()),
            )
        })
        .collect();
    pods.sort_by(|x, y| x.0.cmp(&y.0));
    pods
}

/// A node loaded by a layout v3 capture (each pod its own instance of the whole `sk_lookup`
/// program; no `SK_LOOKUP_PROGS`, no `LOOKUP_NETNS`) is upgraded in place while a peer keeps
/// connecting into one of its two pods: the two maps are created, the node's program goes into
/// the array, each pod's link is switched to its stub, and no connection goes uncaptured. Then
/// an upgrade of the programs (`--always`) is one update of the array: every pod's link keeps
/// its stub, the array holds a new program, and the pods stay captured. The v3 node is made
/// from a current one by taking the two maps' pins away (the pods' programs, which refer to
/// them, keep running as a v3 pod's own program does).
#[test]
fn ebpf_upgrade_carries_a_layout_v3_node_to_one_sk_lookup_program() {
    ebpf_row(|| {
        let (a, b) = (Topology::new(), Topology::new());
        let a_in = inbound_proxy(&a, Family::V4);
        let b_in = inbound_proxy(&b, Family::V4);
        let b_out = outbound_proxy(&b, Family::V4);
        CaptureInit::new(&a.pod, Backend::Ebpf, Family::V4).run().ok();
        CaptureInit::new(&b.pod, Backend::Ebpf, Family::V4).run().ok();
        let world = ebpf::child_world().expect("inside ebpf_row");
        let kept = take_away_stub_maps();
        let layout = world.pin_dir.join("maps/LAYOUT").display().to_string();
        capture_e2e::run_ok(std::process::Command::new("bpftool").args([
            "map", "update", "pinned", &layout, "key", "0", "0", "0", "0", "value", "3", "0", "0", "0",
        ]));
        let a_dst = a.pod_addr(Family::V4, 8080);
        assert_lands(&a.peer, ROOT, a_dst, &a_in);
        let before = pod_programs();

        let stop = AtomicBool::new(false);
        let made = AtomicUsize::new(0);
        thread::scope(|scope| {
            let traffic = scope.spawn(|| {
                while !stop.load(Ordering::SeqCst) {
                    let (reply, _) = connect_as(&a.peer, 0, 0, a_dst)
                        .unwrap_or_else(|e| panic!("a connection to {a_dst} during the upgrade failed: {e}"));
                    assert_eq!(
                        reply,
                        a_in.token(),
                        "a connection during the upgrade was not captured"
                    );
                    made.fetch_add(1, Ordering::SeqCst);
                }
            });
            let _stop = StopOnDrop(&stop);
            upgrade(&[])
                .ok()
                .says("programs replaced on 11 cgroup hooks and for 2 pods, every pod captured throughout")
                .says("maps created: SK_LOOKUP_PROGS, LOOKUP_NETNS")
                .says(&format!("map layout v3 -> v{LAYOUT_VERSION}"));
            let deadline = Instant::now() + Duration::from_secs(10);
            let after = made.load(Ordering::SeqCst) + 5;
            while made.load(Ordering::SeqCst) < after && !traffic.is_finished() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(5));
            }
            stop.store(true, Ordering::SeqCst);
            traffic.join().expect("the traffic thread");
        });
        assert!(
            made.load(Ordering::SeqCst) >= 5,
            "connections made during the upgrade"
        );
        assert_eq!(a_in.take_accepted().len(), made.load(Ordering::SeqCst));
        // The old maps go: only the new ones can be what the pods use now.
        remove_pins(&kept);
        let switched = pod_programs();
        let progs = ebpf::map_id(&world.pin_dir.join("maps/SK_LOOKUP_PROGS"));
        assert_eq!(switched.len(), 2);
        for ((pod, old), (_, new)) in before.iter().zip(&switched) {
            assert_ne!(old.id, new.id, "pod {pod}'s link has a new program");
            assert!(new.insns < 32 && new.map_ids.contains(&progs), "{new:?}");
        }
        assert_eq!(settled_node_sk_lookup_programs().len(), 1);
        assert_lands(&a.peer, ROOT, a_dst, &a_in);
        assert_lands(&b.peer, ROOT, b.pod_addr(Family::V4, 8080), &b_in);
        assert_lands(&b.pod, APP, b.peer_addr(Family::V4, 80), &b_out);
        upgrade(&[]).ok().says("nothing changed");

        let program = node_sk_lookup_programs();
        upgrade(&["--always"])
            .ok()
            .says("programs replaced on 11 cgroup hooks and for 2 pods");
        assert_eq!(pod_programs(), switched, "every pod keeps its stub");
        let replaced = settled_node_sk_lookup_programs();
        assert_eq!(replaced.len(), 1, "{replaced:?}");
        assert_ne!(replaced[0].id, program[0].id, "the array holds a new program");
        assert_lands(&a.peer, ROOT, a_dst, &a_in);
        assert_lands(&b.peer, ROOT, b.pod_addr(Family::V4, 8080), &b_in);
    });
}

/// A pinned map whose entries cannot be carried over (here: OWNERS replaced by a map with
/// other key and value sizes) stops the upgrade before anything is switched: it names the map
/// and what differs, and every attachment keeps its program.
#[test]
fn ebpf_upgrade_refuses_a_map_it_cannot_carry_over_and_changes_nothing() {
    ebpf_row(|| {
        let topo = Topology::new();
        let outbound = outbound_proxy(&topo, Family::V4);
        CaptureInit::new(&topo.pod, Backend::Ebpf, Family::V4).run().ok();
        let pin_dir = ebpf::child_world().expect("inside ebpf_row").pin_dir;
        let owners = pin_dir.join("maps/OWNERS");
        let kept = pin_dir.join("maps/OWNERS_kept");
        std::fs::rename(&owners, &kept).expect("move the OWNERS pin aside");
        capture_e2e::run_ok(
            std::process::Command::new("bpftool")
                .args(["map", "create"])
                .arg(&owners)
                .args([
                    "type", "hash", "key", "4", "value", "1", "entries", "16", "name", "OWNERS",
                ]),
        );
        let before = attached_ids();
        let run = upgrade(&["--always"]);
        run.code(1)
            .says("cannot upgrade the eBPF programs under")
            .says("map OWNERS has another type, key or value size");
        run.one_error_line();
        assert_eq!(attached_ids(), before, "nothing was switched");
        assert!(!pin_dir.join("upgrade").exists(), "the staging directory is gone");
        std::fs::rename(&kept, &owners).expect("put the OWNERS pin back");
        assert_lands(&topo.pod, APP, topo.peer_addr(Family::V4, 80), &outbound);
    });
}

/// A node loaded by the previous release (map layout v1: no `POD_STATS`, an 8-slot `STATS`, no
/// POD_META, no DNS hooks) is upgraded in place: the enrolled pod stays captured, the hooks v2 added are
/// attached, `POD_STATS` and `POD_META` are created (with the pod's counters), `STATS` is migrated with its
/// entries, and the layout becomes this capture's. Before the upgrade, enrolling refuses the old
/// pins and names the upgrade. The v1 node is made from a current one by taking away what later
/// layouts added.
#[test]
fn ebpf_upgrade_carries_a_layout_v1_node_to_the_current_layout() {
    ebpf_row(|| {
        let topo = Topology::new();
        let outbound = outbound_proxy(&topo, Family::V4);
        CaptureInit::new(&topo.pod, Backend::Ebpf, Family::V4).run().ok();
        let pin_dir = ebpf::child_world().expect("inside ebpf_row").pin_dir;
        let bpftool = |args: &[&str]| capture_e2e::run_ok(std::process::Command::new("bpftool").args(args));
        let v2_hooks = [
            "capture_sendmsg4",
            "capture_sendmsg6",
            "capture_recvmsg4",
            "capture_recvmsg6",
            "capture_sock_release",
        ];
        for name in v2_hooks {
            let pin = pin_dir.join("links").join(name);
            bpftool(&["link", "detach", "pinned", &pin.display().to_string()]);
            std::fs::remove_file(&pin).expect("remove a v2 link pin");
        }
        for map in ["POD_STATS", "POD_META", "AYA_LOGS"] {
            std::fs::remove_file(pin_dir.join("maps").join(map)).expect("remove a map v1 had not");
        }
        let kept = take_away_stub_maps();
        let stats = pin_dir.join("maps/STATS").display().to_string();
        std::fs::remove_file(&stats).expect("remove STATS");
        bpftool(&[
            "map",
            "create",
            &stats,
            "type",
            "percpu_array",
            "key",
            "4",
            "value",
            "8",
            "entries",
            "8",
            "name",
            "STATS",
        ]);
        let layout = pin_dir.join("maps/LAYOUT").display().to_string();
        bpftool(&[
            "map", "update", "pinned", &layout, "key", "0", "0", "0", "0", "value", "1", "0", "0", "0",
        ]);
        assert_eq!(attached_ids().len(), 6, "a v1 node has six hooks");

        let other = Topology::new();
        CaptureInit::new(&other.pod, Backend::Ebpf, Family::V4)
            .run()
            .code(1)
            .says(&format!(
                "have map layout v1, and this capture has map layout v{LAYOUT_VERSION}"
            ))
            .says("upgrade them in place (capture-init ebpf upgrade");
        assert_lands(&topo.pod, APP, topo.peer_addr(Family::V4, 80), &outbound);

        upgrade(&[])
            .ok()
            .says("programs replaced on 6 cgroup hooks and for 1 pod")
            .says("programs attached to new hooks: capture_sendmsg4, capture_sendmsg6, capture_recvmsg4, capture_recvmsg6, capture_sock_release")
            .says("maps created: POD_STATS, POD_META, AYA_LOGS, SK_LOOKUP_PROGS, LOOKUP_NETNS")
            .says("map STATS resized, 8 entries carried over")
            .says(&format!("map layout v1 -> v{LAYOUT_VERSION}"));
        remove_pins(&kept);
        assert_eq!(attached_ids().len(), 11);
        upgrade(&[]).ok().says("nothing changed");
        assert_lands(&topo.pod, APP, topo.peer_addr(Family::V4, 80), &outbound);
        let other_proxy = outbound_proxy(&other, Family::V4);
        CaptureInit::new(&other.pod, Backend::Ebpf, Family::V4)
            .run()
            .ok()
            .says("eBPF capture applied");
        assert_lands(&other.pod, APP, other.peer_addr(Family::V4, 80), &other_proxy);
        let world = ebpf::child_world().expect("inside ebpf_row");
        let stats = ebpf_node(&["stats", "--bpffs", &world.bpffs.display().to_string()]);
        stats.ok();
    });
}

/// How many CPUs the kernel keeps per-CPU map values for (`/sys/devices/system/cpu/possible`).
fn possible_cpus() -> u64 {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible").expect("read possible CPUs");
    text.trim()
        .split(',')
        .map(|range| match range.split_once('-') {
            Some((a, b)) => b.parse::<u64>().expect("a CPU") - a.parse::<u64>().expect("a CPU") + 1,
            None => 1,
        })
        .sum()
}

/// A node loaded by a layout v2 capture (`STATS` of 10 slots, `POD_STATS` values of 10
/// counters, no `AYA_LOGS`) is upgraded in place: `AYA_LOGS` is created, `STATS` is migrated with its counts, each pod's `POD_STATS`
/// entry is copied into the first slots of the wider value (its counts kept, the new slots
/// zero), the layout becomes this capture's, and the new programs count into the migrated map.
/// The v2 node is made from a current one by putting maps of v2's shapes in place.
#[test]
fn ebpf_upgrade_carries_a_layout_v2_node_keeping_its_pods_counters() {
    ebpf_row(|| {
        let topo = Topology::new();
        let outbound = outbound_proxy(&topo, Family::V4);
        CaptureInit::new(&topo.pod, Backend::Ebpf, Family::V4).run().ok();
        let world = ebpf::child_world().expect("inside ebpf_row");
        let pin_dir = world.pin_dir.clone();
        let pins = PinDir::new(&world.bpffs);
        let cookie = {
            let node = Node::open(&pins).expect("open the node");
            let pods = node.pods().expect("list pods");
            assert_eq!(pods.len(), 1, "{pods:?}");
            pods[0].0
        };
        let bpftool = |args: &[&str]| capture_e2e::run_ok(std::process::Command::new("bpftool").args(args));
        let bytes = |values: &[u64]| -> Vec<String> {
            values
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .map(|b| b.to_string())
                .collect()
        };
        let pin = |name: &str| pin_dir.join("maps").join(name).display().to_string();

        // v2 had no log ring buffer, and a program per pod.
        std::fs::remove_file(pin("AYA_LOGS")).expect("remove AYA_LOGS");
        let kept = take_away_stub_maps();
        // v2's STATS: 10 slots, 3 connections passed on each CPU.
        std::fs::remove_file(pin("STATS")).expect("remove STATS");
        bpftool(&[
            "map",
            "create",
            &pin("STATS"),
            "type",
            "percpu_array",
            "key",
            "4",
            "value",
            "8",
            "entries",
            "10",
            "name",
            "STATS",
        ]);
        let mut args = vec![
            "map".to_owned(),
            "update".into(),
            "pinned".into(),
            pin("STATS"),
            "key".into(),
        ];
        args.extend(
            bytes(&[])
                .into_iter()
                .chain(STAT_PASSED.to_le_bytes().map(|b| b.to_string())),
        );
        args.push("value".into());
        args.extend(bytes(&[3]));
        bpftool(&args.iter().map(String::as_str).collect::<Vec<_>>());

        // v2's POD_STATS: 10 counters a value; the pod had 5 outbound and 7 passed on each CPU.
        std::fs::remove_file(pin("POD_STATS")).expect("remove POD_STATS");
        bpftool(&[
            "map",
            "create",
            &pin("POD_STATS"),
            "type",
            "percpu_hash",
            "key",
            "8",
            "value",
            "80",
            "entries",
            "4096",
            "flags",
            "1",
            "name",
            "POD_STATS",
        ]);
        let mut old = [0u64; 10];
        old[STAT_OUTBOUND as usize] = 5;
        old[STAT_PASSED as usize] = 7;
        let mut args = vec![
            "map".to_owned(),
            "update".into(),
            "pinned".into(),
            pin("POD_STATS"),
            "key".into(),
        ];
        args.extend(bytes(&[cookie.0]));
        args.push("value".into());
        args.extend(bytes(&old));
        bpftool(&args.iter().map(String::as_str).collect::<Vec<_>>());
        bpftool(&[
            "map",
            "update",
            "pinned",
            &pin("LAYOUT"),
            "key",
            "0",
            "0",
            "0",
            "0",
            "value",
            "2",
            "0",
            "0",
            "0",
        ]);

        let other = Topology::new();
        CaptureInit::new(&other.pod, Backend::Ebpf, Family::V4)
            .run()
            .code(1)
            .says(&format!(
                "have map layout v2, and this capture has map layout v{LAYOUT_VERSION}"
            ));

        upgrade(&[])
            .ok()
            .says("programs replaced on 11 cgroup hooks and for 1 pod")
            .says("maps created: AYA_LOGS, SK_LOOKUP_PROGS, LOOKUP_NETNS")
            .says("map STATS resized, 10 entries carried over")
            .says("map POD_STATS resized, 1 entry carried over")
            .says(&format!("map layout v2 -> v{LAYOUT_VERSION}"));
        remove_pins(&kept);
        upgrade(&[]).ok().says("nothing changed");

        let cpus = possible_cpus();
        let node = Node::open(&pins).expect("open the upgraded node");
        assert_eq!(node.stats().expect("stats").passed, 3 * cpus);
        let counters = |node: &Node| {
            node.pod_counters()
                .expect("pod counters")
                .into_iter()
                .find(|(c, _)| *c == cookie)
                .expect("the pod's counters")
                .1
        };
        let kept = counters(&node);
        assert_eq!(kept[STAT_OUTBOUND as usize], 5 * cpus, "{kept:?}");
        assert_eq!(kept[STAT_PASSED as usize], 7 * cpus, "{kept:?}");
        assert!(
            kept.iter()
                .enumerate()
                .all(|(i, v)| *v == 0 || i == STAT_OUTBOUND as usize || i == STAT_PASSED as usize),
            "the new slots start at zero: {kept:?}"
        );
        assert_lands(&topo.pod, APP, topo.peer_addr(Family::V4, 80), &outbound);
        assert_eq!(
            counters(&node)[STAT_OUTBOUND as usize],
            5 * cpus + 1,
            "the new programs count into the migrated map"
        );
    });
}

/// Capture that lost its inbound half is not "unchanged". A pod whose `sk_lookup` link is gone
/// (its pin removed, the link with it): `status` with the run's flags says it is drifted and
/// why, and a rerun attaches the stub again. The node's `sk_lookup` program missing from
/// `SK_LOOKUP_PROGS` (every stub would let every connection pass): every enrollment, a rerun
/// included, fails naming the array and the fix, and `ebpf upgrade --always` puts it back.
#[test]
fn ebpf_lost_inbound_capture_is_found_and_put_back() {
    ebpf_row(|| {
        let topo = Topology::new();
        let proxy = inbound_proxy(&topo, Family::V4);
        let app = crate::support::pod_app(&topo, Family::V4, 8080);
        let init = CaptureInit::new(&topo.pod, Backend::Ebpf, Family::V4);
        init.run().ok();
        assert_lands(&topo.peer, ROOT, topo.pod_addr(Family::V4, 8080), &proxy);

        let world = ebpf::child_world().expect("inside ebpf_row");
        let links: Vec<_> = std::fs::read_dir(world.pin_dir.join("inbound"))
            .expect("the pods' link pins")
            .map(|e| e.expect("a link pin").path())
            .collect();
        assert_eq!(links.len(), 1, "{links:?}");
        std::fs::remove_file(&links[0]).expect("remove the link pin");
        // The kernel frees the unpinned link after an RCU grace period.
        let deadline = Instant::now() + Duration::from_secs(5);
        while sk_lookup_programs(&topo.pod) != 0 {
            assert!(Instant::now() < deadline, "the link outlived its pin");
            thread::sleep(Duration::from_millis(20));
        }
        // Uncaptured now (explain's model, which assert_lands also asks, still says captured).
        let (uid, gid) = ROOT;
        let (reply, _) = connect_as(&topo.peer, uid, gid, topo.pod_addr(Family::V4, 8080)).expect("connect");
        assert_eq!(reply, app.token(), "the app answers, not the proxy");
        let _accepted = app.take_one();
        let drifted = init.status(true, &[]);
        drifted.code(4);
        assert!(
            drifted.stdout.contains("sk_lookup program is not attached"),
            "{}",
            drifted.stdout
        );
        init.run().ok().says("eBPF capture updated");
        assert_eq!(sk_lookup_programs(&topo.pod), 1);
        init.status(true, &[]).ok();
        assert_lands(&topo.peer, ROOT, topo.pod_addr(Family::V4, 8080), &proxy);

        let array = world.pin_dir.join("maps/SK_LOOKUP_PROGS");
        let emptied = std::process::Command::new("bpftool")
            .args(["map", "delete", "pinned"])
            .arg(&array)
            .args(["key", "0", "0", "0", "0"])
            .output()
            .expect("run bpftool");
        assert!(emptied.status.success(), "{emptied:?}");
        let refused = init.run();
        // (The run's own IPv6 warning comes before; the error is its one error line, last.)
        assert_eq!(
            refused.stderr.matches("\terror\t").count(),
            1,
            "{}",
            refused.stderr
        );
        refused
            .code(1)
            .says("sk_lookup program is missing from")
            .says("SK_LOOKUP_PROGS")
            .says("ebpf upgrade --always");
        upgrade(&["--always"]).ok();
        init.run().ok();
        assert_lands(&topo.peer, ROOT, topo.pod_addr(Family::V4, 8080), &proxy);
    });
}
