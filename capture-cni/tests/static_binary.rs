//! The capture-cni that ships (`scripts/build-static`: x86_64-unknown-linux-musl, the eBPF backend
//! included) runs where the node's userland is nothing at all: in an empty chroot (no libc, no
//! loader, no iptables, no nft, no `/etc`) it answers VERSION, and with the native nftables
//! backend an ADD whose capture real traffic then meets, and a DEL.
//!
//! The binary comes from `CAPTURE_STATIC_DIR` (scripts/test builds it with scripts/build-static
//! and sets it). Without it the test skips with a message, and fails when `CI` is set. Needs root
//! (chroot, mounts, namespaces).

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use capture_e2e::{APP_UID, Family, Listener, OUTBOUND_PORT, TempDir, Topology, connect_as, require_root};
use serde_json::{Value, json};

/// The static capture-cni, or `None` (skip) when it was not built.
fn static_plugin() -> Option<PathBuf> {
    match std::env::var_os("CAPTURE_STATIC_DIR") {
        Some(dir) => Some(Path::new(&dir).join("capture-cni")),
        None => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CAPTURE_STATIC_DIR is not set: scripts/test builds the static binaries (scripts/build-static) and sets it"
            );
            eprintln!(
                "skipping: CAPTURE_STATIC_DIR is not set (scripts/build-static builds the static binaries)"
            );
            None
        }
    }
}

/// Runs the plugin as `/capture-cni` chrooted into `root`, with `/proc` and, at `/netns`, the
/// pod's network namespace bound in, in a private mount namespace (nothing is mounted in the
/// test's own).
fn in_chroot(root: &Path, netns: &Path, command: &str, stdin: &str) -> Output {
    let mut child = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount --bind /proc "$1/proc" && mount --bind "$2" "$1/netns" && exec chroot "$1" /capture-cni"#)
        .args(["sh".as_ref(), root.as_os_str(), netns.as_os_str()])
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", "static-test")
        .env("CNI_NETNS", "/netns")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/")
        .env("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web")
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start unshare");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write the request");
    child.wait_with_output().expect("wait for the plugin")
}

#[track_caller]
fn succeeded(out: &Output, what: &str) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{what}: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{what}: {e}: {stdout}"))
}

fn nft_ruleset(topo: &Topology) -> String {
    capture_e2e::run_ok(topo.pod.command("nft").args(["list", "ruleset"]))
}

#[test]
fn the_static_plugin_captures_from_an_empty_root() {
    let Some(plugin) = static_plugin() else {
        return;
    };
    if !require_root() {
        return;
    }
    let ldd = Command::new("ldd").arg(&plugin).output().expect("run ldd");
    let said = String::from_utf8_lossy(&ldd.stdout).into_owned() + &String::from_utf8_lossy(&ldd.stderr);
    assert!(
        said.contains("not a dynamic executable") || said.contains("statically linked"),
        "{}: {said}",
        plugin.display()
    );

    let root = TempDir::new("static-root");
    fs::copy(&plugin, root.path().join("capture-cni")).expect("copy the plugin into the root");
    fs::create_dir(root.path().join("proc")).expect("mkdir proc");
    fs::create_dir(root.path().join("run")).expect("mkdir run");
    fs::write(root.path().join("netns"), "").expect("the netns mount point");
    let entries: Vec<_> = fs::read_dir(root.path())
        .expect("list the root")
        .map(|e| e.expect("an entry").file_name())
        .collect();
    assert_eq!(entries.len(), 4, "nothing else in the root: {entries:?}");

    let topo = Topology::new();
    let version = succeeded(
        &in_chroot(
            root.path(),
            topo.pod.path(),
            "VERSION",
            r#"{"cniVersion":"1.0.0"}"#,
        ),
        "VERSION",
    );
    assert!(
        version["supportedVersions"]
            .as_array()
            .is_some_and(|v| v.contains(&json!("1.0.0"))),
        "{version}"
    );

    let request = json!({
        "cniVersion": "1.0.0",
        "name": "test-net",
        "type": "capture-cni",
        "run_dir": "/run",
        "capture": {"backend": "nftables"},
        "runtimeConfig": {"io.kubernetes.cri.pod-annotations": {"sidecar.istio.io/status": "{\"containers\":[\"app\"]}"}},
        "prevResult": {
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "eth0", "mac": "0a:58:0a:00:00:01", "sandbox": "/netns"}],
            "ips": [
                {"address": format!("{}/24", topo.pod_ip(Family::V4)), "interface": 0},
                {"address": format!("{}/64", topo.pod_ip(Family::V6)), "interface": 0},
            ],
            "dns": {},
        },
    })
    .to_string();
    let added = succeeded(&in_chroot(root.path(), topo.pod.path(), "ADD", &request), "ADD");
    assert_eq!(
        added["ips"][0]["address"],
        format!("{}/24", topo.pod_ip(Family::V4))
    );
    assert!(
        nft_ruleset(&topo).contains("table inet istio-proxy-nat"),
        "{}",
        nft_ruleset(&topo)
    );

    let outbound = Listener::spawn(
        &topo.pod,
        (Family::V6.unspecified(), OUTBOUND_PORT).into(),
        "outbound",
    );
    for family in [Family::V4, Family::V6] {
        let dst = topo.peer_addr(family, 80);
        let (reply, _) = connect_as(&topo.pod, APP_UID, APP_UID, dst).expect("the app connects");
        assert_eq!(reply, "outbound", "{family:?}");
        assert_eq!(
            outbound.take_one().original_dst.expect("an original destination"),
            dst
        );
    }

    let out = in_chroot(root.path(), topo.pod.path(), "DEL", &request);
    assert!(
        out.status.success(),
        "DEL: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !nft_ruleset(&topo).contains("istio-proxy"),
        "{}",
        nft_ruleset(&topo)
    );
}
