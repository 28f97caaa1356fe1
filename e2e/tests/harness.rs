//! The harness cleans up after itself and reads iptables state the same way for both flavors.

use std::panic;

use super::{capture_default_sidecar, default_sidecar_payload};
use capture_e2e::{
    Family, Flavor, Listener, NETNS_PREFIX, NetNs, PROXY_UID, Topology, iptables_save_normalized,
    require_root,
};

#[test]
fn netns_is_named_and_removed_on_drop() {
    if !require_root() {
        return;
    }
    let ns = NetNs::new();
    let path = ns.path().to_owned();
    assert!(
        ns.name()
            .starts_with(&format!("{NETNS_PREFIX}-{}-", std::process::id()))
    );
    assert!(path.exists());
    let links = ns.ip(&["-o", "link", "show"]);
    assert!(
        links.contains("lo:") && links.contains("UP"),
        "lo is up in a new netns:\n{links}"
    );
    drop(ns);
    assert!(!path.exists(), "{} left behind", path.display());
}

#[test]
fn opened_netns_is_entered_and_left_to_its_owner() {
    if !require_root() {
        return;
    }
    let owner = NetNs::new();
    let opened = NetNs::open(owner.path()).expect("open a netns by path");
    let ino = |ns: &NetNs| {
        ns.run(|| {
            std::fs::metadata("/proc/thread-self/ns/net").map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        })
        .expect("stat own netns")
    };
    assert_eq!(ino(&opened), ino(&owner), "the same namespace");
    assert_eq!(opened.name(), owner.name());
    drop(opened);
    assert!(
        owner.path().exists(),
        "dropping an opened netns leaves its name alone"
    );
    let not_a_netns = NetNs::open("/proc/self/ns/mnt").expect_err("a mount namespace");
    assert!(
        not_a_netns.to_string().contains("not a network namespace"),
        "{not_a_netns}"
    );
    let not_a_namespace = NetNs::open("/proc/self/status").expect_err("a plain file");
    assert!(
        not_a_namespace.to_string().contains("not a namespace"),
        "{not_a_namespace}"
    );
}

#[test]
fn topology_is_removed_when_the_test_panics() {
    if !require_root() {
        return;
    }
    let mut paths = Vec::new();
    let result = panic::catch_unwind(panic::AssertUnwindSafe(|| {
        let topo = Topology::new();
        paths.extend([topo.pod.path().to_owned(), topo.peer.path().to_owned()]);
        panic!("deliberate panic with a live topology");
    }));
    assert!(result.is_err());
    assert_eq!(paths.len(), 2);
    for path in paths {
        assert!(!path.exists(), "{} left behind", path.display());
    }
}

#[test]
fn run_enters_the_netns_and_command_too() {
    if !require_root() {
        return;
    }
    let ns = NetNs::new();
    let own = |path: &str| std::fs::metadata(path).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
    let inside = ns
        .run(|| own("/proc/thread-self/ns/net"))
        .expect("stat own netns");
    assert_eq!(
        inside,
        own(ns.path().to_str().expect("utf-8 path")).expect("stat the mount")
    );
    assert_ne!(
        inside,
        own("/proc/thread-self/ns/net").expect("stat the test's netns")
    );
    let from_command = capture_e2e::run_ok(ns.command("readlink").arg("/proc/self/ns/net"));
    assert_eq!(from_command.trim(), format!("net:[{inside}]"));
}

/// A new namespace has no rule in any table, in either flavour or family, so whatever a test
/// finds there afterwards is what it put there.
#[test]
fn fresh_netns_has_no_rules() {
    if !require_root() {
        return;
    }
    let ns = NetNs::new();
    for family in [Family::V4, Family::V6] {
        for flavor in Flavor::ALL {
            let save = iptables_save_normalized(&ns, flavor, family);
            assert!(
                !save.lines().any(|l| l.starts_with("-A ")),
                "{flavor:?} {family:?} rules in a fresh netns:\n{save}"
            );
        }
    }
}

/// The same payload saves the same way through legacy and nft, so one golden can serve both.
#[test]
fn both_flavors_save_the_default_sidecar_alike() {
    if !require_root() {
        return;
    }
    for family in [Family::V4, Family::V6] {
        let saves = Flavor::ALL.map(|flavor| {
            let ns = NetNs::new();
            capture_default_sidecar(&ns, flavor);
            iptables_save_normalized(&ns, flavor, family)
        });
        assert_eq!(saves[0], saves[1], "{family:?}: legacy and nft saves differ");
        assert!(
            saves[0].contains("-A ISTIO_OUTPUT -j ISTIO_REDIRECT"),
            "{}",
            saves[0]
        );
        let rules = default_sidecar_payload(family)
            .lines()
            .filter(|l| l.starts_with("-A "))
            .count();
        assert_eq!(
            saves[0].lines().filter(|l| l.starts_with("-A ")).count(),
            rules,
            "{}",
            saves[0]
        );
    }
}

/// A listener spawned as a uid owns its socket as that uid, as the proxy's listeners would.
#[test]
fn listener_socket_is_owned_by_the_given_uid() {
    if !require_root() {
        return;
    }
    let ns = NetNs::new();
    let listener = Listener::spawn_as(
        &ns,
        PROXY_UID,
        PROXY_UID,
        "0.0.0.0:15001".parse().unwrap(),
        "outbound",
    );
    // /proc/thread-self/net shows the netns of the reading thread; columns: sl local rem st ... uid.
    let tcp = ns
        .run(|| std::fs::read_to_string("/proc/thread-self/net/tcp"))
        .expect("read the netns tcp table");
    let owner = tcp
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cols| cols.get(1) == Some(&"00000000:3A99") && cols.get(3) == Some(&"0A"))
        .unwrap_or_else(|| panic!("no listener on :15001 in\n{tcp}"))[7];
    assert_eq!(owner, PROXY_UID.to_string());
    drop(listener);
}

/// Mount points at `/run/netns` or below it, as the calling thread's mount namespace sees them,
/// in mount order (`/run/netns` itself once per mount stacked there).
fn run_netns_mounts() -> Vec<String> {
    let mountinfo =
        std::fs::read_to_string("/proc/thread-self/mountinfo").expect("read the thread's mountinfo");
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .filter(|m| *m == "/run/netns" || m.starts_with("/run/netns/"))
        .map(str::to_owned)
        .collect()
}

/// Runs `f` on a thread of its own in a private copy of the test's mount namespace, with
/// `/run/netns` not a mount point there (as on a freshly booted machine), and returns its result.
///
/// Every mount is made private first (`MS_PRIVATE`, recursively), so what `f` mounts or unmounts
/// never reaches the machine's namespace; it all goes away with the thread. Files created in
/// `/run/netns` are on the machine's disk, though: `f` notes them in the list it is given, and
/// those still there when the thread has ended are removed, also when `f` panics.
fn in_fresh_mount_namespace<F, T>(f: F) -> T
where
    F: FnOnce(&std::sync::Mutex<Vec<std::path::PathBuf>>) -> T + Send,
    T: Send,
{
    use nix::mount::{MntFlags, MsFlags, mount, umount2};
    use nix::sched::{CloneFlags, unshare};

    let files = std::sync::Mutex::new(Vec::new());
    let result = std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("private-mount-ns".to_owned())
            .spawn_scoped(scope, || {
                // A thread leaves its process' mount namespace only with its own fs context.
                unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_FS)
                    .expect("unshare(CLONE_NEWNS | CLONE_FS)");
                mount(
                    None::<&str>,
                    "/",
                    None::<&str>,
                    MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                    None::<&str>,
                )
                .expect("make every mount private");
                // What others mounted at or under /run/netns is only detached from this copy.
                while let Some(last) = run_netns_mounts().pop() {
                    umount2("/run/netns", MntFlags::MNT_DETACH)
                        .or_else(|_| umount2(last.as_str(), MntFlags::MNT_DETACH))
                        .unwrap_or_else(|e| panic!("unmount {last}: {e}"));
                }
                f(&files)
            })
            .expect("spawn a thread for the mount namespace")
            .join()
    });
    // Outside that namespace nothing is mounted on them any more.
    for file in files
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
    {
        if file.exists() {
            let _ = std::fs::remove_file(&file);
        }
    }
    result.unwrap_or_else(|payload| panic::resume_unwind(payload))
}

/// Removes the iproute2 namespace `name` when dropped, also when the test panics.
struct IpNetns<'a>(&'a str);

impl Drop for IpNetns<'_> {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", self.0])
            .output();
    }
}

/// On a fresh machine `/run/netns` is no mount point. `ip netns add` (podman does the same) then
/// bind-mounts it onto itself, recursively, and makes it shared; a namespace the harness mounted
/// before must still be removed without a trace.
#[test]
fn netns_is_removed_after_iproute2_turns_run_netns_into_a_mount() {
    if !require_root() {
        return;
    }
    in_fresh_mount_namespace(|files| {
        assert_eq!(run_netns_mounts(), Vec::<String>::new(), "fresh state");
        let ns = NetNs::new();
        let path = ns.path().to_owned();
        let ns_name = ns.name().to_owned();
        files.lock().unwrap().push(path.clone());
        let other = format!("{NETNS_PREFIX}-{}-iproute2", std::process::id());
        {
            let _guard = IpNetns(&other);
            capture_e2e::run_ok(std::process::Command::new("ip").args(["netns", "add", &other]));
            capture_e2e::run_ok(std::process::Command::new("ip").args(["netns", "del", &other]));
        }
        drop(ns);
        assert!(!path.exists(), "{} left behind", path.display());
        assert_eq!(
            run_netns_mounts(),
            ["/run/netns"],
            "only /run/netns itself stays a mount point"
        );
        // Other tests' namespaces may come and go meanwhile: only these two names are ours.
        let names = capture_e2e::run_ok(std::process::Command::new("ip").args(["netns", "list"]));
        for name in [ns_name.as_str(), other.as_str()] {
            assert!(
                !names.lines().any(|l| l.split(' ').next() == Some(name)),
                "{name} left: {names}"
            );
        }
    });
}

/// A mount stacked onto `/run/netns` after the namespace was made (a bind mount of the directory
/// onto itself, not recursive) hides its mount; `Drop` still finds it, unmounts it and removes the name.
#[test]
fn netns_drop_finds_its_mount_under_a_later_run_netns_mount() {
    if !require_root() {
        return;
    }
    in_fresh_mount_namespace(|files| {
        use nix::mount::{MsFlags, mount};

        let ns = NetNs::new();
        let path = ns.path().to_owned();
        files.lock().unwrap().push(path.clone());
        let name = ns.name().to_owned();
        mount(
            Some("/run/netns"),
            "/run/netns",
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .expect("bind-mount /run/netns onto itself");
        assert!(
            run_netns_mounts().contains(&format!("/run/netns/{name}")),
            "the namespace's mount is still there, hidden: {:?}",
            run_netns_mounts()
        );
        drop(ns);
        assert!(!path.exists(), "{} left behind", path.display());
        let left: Vec<_> = run_netns_mounts()
            .into_iter()
            .filter(|m| m != "/run/netns")
            .collect();
        assert_eq!(left, Vec::<String>::new(), "no namespace mount left");
    });
}

/// `capture-core/testdata/saved/` holds payloads with what iptables 1.8.9 saved after restoring them (capture-core's
/// `Saved` is checked against those files); the iptables installed here must still save them alike, in
/// each recorded flavor.
#[test]
fn recorded_saves_hold_for_the_installed_iptables() {
    if !require_root() {
        return;
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../capture-core/testdata/saved");
    let mut checked = Vec::new();
    let mut restores: Vec<_> = std::fs::read_dir(&dir)
        .expect("read capture-core/testdata/saved")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "restore"))
        .collect();
    restores.sort();
    for restore in restores {
        let payload = std::fs::read_to_string(&restore).expect("read the payload");
        let family = if restore.to_string_lossy().ends_with(".v6.restore") {
            Family::V6
        } else {
            Family::V4
        };
        for (flavor, name) in [(Flavor::Legacy, "legacy"), (Flavor::Nft, "nft")] {
            let recorded = restore.with_extension(format!("{name}.save"));
            let Ok(recorded_text) = std::fs::read_to_string(&recorded) else {
                continue;
            };
            let ns = NetNs::new();
            capture_e2e::iptables_restore(&ns, flavor, family, &payload);
            assert_eq!(
                iptables_save_normalized(&ns, flavor, family),
                capture_e2e::normalize_save(&recorded_text),
                "{} saves differently here; see capture-core/testdata/saved/README.md",
                recorded.display()
            );
            checked.push(recorded);
        }
    }
    assert_eq!(checked.len(), 6, "recordings checked: {checked:?}");
}
