//! The container images `scripts/build-images` makes, run as a runtime runs them.
//!
//! Each test builds the images into its own podman storage (the scaffolding of `podman.rs`: a
//! test-owned node network namespace, `containers.conf` and storage) from the static binaries in
//! `CAPTURE_STATIC_DIR` (scripts/test builds them and sets it; without it the tests skip with a
//! message, and fail when `CI` is set). Needs root, podman, runc, setcap and busybox-static.
//!
//! - The init image in a pod, as Istio's `istio-init`: with exactly the security settings of
//!   deploy/init-container.yaml (uid 65534, every capability dropped but NET_ADMIN and NET_RAW,
//!   no_new_privs), on native nftables and on iptables-nft; then real connections from an app
//!   container and a uid-1337 container of the pod, and into the pod, land where Istio's
//!   sidecar capture sends them; the validation container of deploy/validation-init-container.yaml
//!   (uid 1337, no capability) fails before capture and passes after.
//! - The node image's installer chains the plugin into a node's conflist and copies the image's
//!   capture-cni to the node.

use super::{
    GATEWAY, IpAddr, Ipv4Addr, Listener, NETWORK, NetNs, OUTBOUND_PORT, PEER_PORT, Path, PathBuf, Podman,
    TempDir, Value, build_rootfs, check_tools, fs, json, require_root, set_child_subreaper,
};
use capture_e2e::{Family, Flavor, INBOUND_PORT, SIDECAR_ARGS, connect_as, iptables_save_normalized};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;

/// The init container's security settings (deploy/init-container.yaml): podman's flags for
/// `runAsUser`/`runAsGroup` 65534, `capabilities: {drop: [ALL], add: [NET_ADMIN, NET_RAW]}` and
/// `allowPrivilegeEscalation: false` (no_new_privs), `readOnlyRootFilesystem: true` (without
/// podman's tmpfs mounts, which Kubernetes does not add).
const INIT_SECURITY: [&str; 10] = [
    "--read-only",
    "--read-only-tmpfs=false",
    "--user",
    "65534:65534",
    "--cap-drop",
    "ALL",
    "--cap-add",
    "NET_ADMIN,NET_RAW",
    "--security-opt",
    "no-new-privileges",
];
/// The validation container's (deploy/validation-init-container.yaml): the proxy's uid, no
/// capability at all, no_new_privs, a read-only root.
const VALIDATION_SECURITY: [&str; 8] = [
    "--read-only",
    "--read-only-tmpfs=false",
    "--user",
    "1337:1337",
    "--cap-drop",
    "ALL",
    "--security-opt",
    "no-new-privileges",
];
/// A busybox image (the pod's infra container and, with another entrypoint, the app
/// containers).
const BUSYBOX_IMAGE: &str = "localhost/capture-test-busybox:latest";
/// The busybox image's entrypoint, the pod's infra process: waits, and exits on SIGTERM.
const INFRA_COMMAND: &str = "trap 'exit 0' TERM; while :; do sleep 1; done";
/// An inbound port the sidecar capture covers (`-b '*'`, not in `-d`).
const APP_PORT: u16 = 8080;

/// The static binaries, or `None` (skip) when they were not built.
fn static_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("CAPTURE_STATIC_DIR") {
        return Some(PathBuf::from(dir));
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CAPTURE_STATIC_DIR is not set: scripts/test builds the static binaries (scripts/build-static) and sets it"
    );
    eprintln!("skipping: CAPTURE_STATIC_DIR is not set (scripts/build-static builds the static binaries)");
    None
}

/// `version` of a workspace crate's Cargo.toml.
fn crate_version(krate: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(krate)
        .join("Cargo.toml");
    let toml = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    toml.lines()
        .find_map(|l| l.strip_prefix("version = \"")?.strip_suffix('"'))
        .unwrap_or_else(|| panic!("no version in {}", path.display()))
        .to_owned()
}

/// The images' references, as `scripts/build-images` tags them.
struct Images {
    init: String,
    node: String,
}

/// Builds both images with `scripts/build-images` into `podman`'s storage (its configuration is
/// the script's whole environment), and a busybox image beside them.
fn build_images(podman: &Podman<'_>, static_dir: &Path) -> Images {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-images");
    let out = podman
        .command(&script)
        .arg("--static-dir")
        .arg(static_dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "scripts/build-images failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let context = podman.dir.join("busybox-image");
    build_rootfs(&context.join("rootfs"));
    let entrypoint = serde_json::to_string(&["/bin/sh", "-c", INFRA_COMMAND]).unwrap();
    fs::write(
        context.join("Containerfile"),
        format!("FROM scratch\nCOPY rootfs/ /\nENTRYPOINT {entrypoint}\n"),
    )
    .unwrap();
    let context_arg = context.display().to_string();
    podman.ok(
        &[
            "build",
            "--quiet",
            "--network",
            "none",
            "--pull=never",
            "--tag",
            BUSYBOX_IMAGE,
            &context_arg,
        ],
        &[],
    );
    Images {
        init: format!("localhost/capture-init:{}", crate_version("capture-init")),
        node: format!("localhost/capture-node:{}", crate_version("capture-cni")),
    }
}

/// A running pod on the test network: its infra container holds the network namespace.
struct Pod {
    name: String,
    netns: NetNs,
    ip: IpAddr,
}

impl Podman<'_> {
    /// Creates and starts pod `name` on the test network, the busybox image as its infra.
    fn pod(&self, name: &str) -> Pod {
        self.ok(
            &[
                "pod",
                "create",
                "--name",
                name,
                "--network",
                NETWORK,
                "--cgroup-parent",
                &self.cgroup_parent,
                // Its entrypoint is the infra process.
                "--infra-image",
                BUSYBOX_IMAGE,
            ],
            &[],
        );
        self.ok(&["pod", "start", name], &[]);
        let pod: Value = serde_json::from_str(&self.ok(&["pod", "inspect", name], &[])).unwrap();
        let infra = pod["InfraContainerID"]
            .as_str()
            .expect("an infra container")
            .to_owned();
        let inspect: Value = serde_json::from_str(&self.ok(&["inspect", &infra], &[])).unwrap();
        let settings = &inspect[0]["NetworkSettings"];
        let sandbox = PathBuf::from(settings["SandboxKey"].as_str().expect("a SandboxKey"));
        self.sandboxes.borrow_mut().push(sandbox.clone());
        let ip = settings["Networks"][NETWORK]["IPAddress"]
            .as_str()
            .and_then(|ip| ip.parse().ok())
            .unwrap_or_else(|| panic!("no address on {NETWORK}: {settings:#}"));
        let netns = NetNs::open(&sandbox).unwrap_or_else(|e| panic!("{}: {e}", sandbox.display()));
        Pod {
            name: name.to_owned(),
            netns,
            ip,
        }
    }

    /// Runs `image` with `args` to completion in `pod` (`podman run --pod`), with `security`'s
    /// flags: what an init container is.
    fn run_in_pod(
        &self,
        pod: &Pod,
        security: &[&str],
        image: &str,
        entrypoint: Option<&str>,
        args: &[&str],
    ) -> super::Run {
        let mut argv = vec!["run", "--rm", "--pod", &pod.name];
        argv.extend(security);
        if let Some(entrypoint) = entrypoint {
            argv.extend(["--entrypoint", entrypoint]);
        }
        argv.push(image);
        argv.extend(args);
        self.run(&argv, &[])
    }

    /// Connects from a busybox container in `pod`, as `user`, to the node's peer port and
    /// returns what the other end sent.
    #[track_caller]
    fn connect_from(&self, pod: &Pod, user: &str) -> String {
        let gateway = GATEWAY.to_string();
        let port = PEER_PORT.to_string();
        let run = self.run_in_pod(
            pod,
            &["--user", user],
            BUSYBOX_IMAGE,
            Some("/bin/nc"),
            &["-w", "5", &gateway, &port],
        );
        assert!(
            run.ok,
            "nc from {} as {user} failed ({}): {}{}",
            pod.name, run.status, run.stdout, run.stderr
        );
        run.stdout
    }
}

/// capture-init's arguments: Istio's sidecar capture as deploy/init-container.yaml passes it,
/// plus `extra`.
fn init_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    SIDECAR_ARGS
        .iter()
        .copied()
        .chain(["--log_output_level=default:info"])
        .chain(extra.iter().copied())
        .collect()
}

#[track_caller]
fn assert_ran(run: &super::Run, what: &str) {
    assert!(
        run.ok,
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        run.status, run.stdout, run.stderr
    );
}

/// One pod captured by the init image with the backend `backend_args` choose; `rules` tells
/// whether the pod's namespace holds that backend's rules.
fn capture_a_pod(
    podman: &Podman<'_>,
    images: &Images,
    name: &str,
    backend_args: &[&str],
    rules: fn(&NetNs) -> bool,
) {
    let pod = podman.pod(name);
    // deploy/validation-init-container.yaml's arguments, whichever backend captured the pod.
    let validate = init_args(&["--run-validation", "--skip-rule-apply", "--probe-timeout", "2s"]);

    // The validation container, before capture: it runs (no capability needed to execute the
    // image's binary) and fails as Istio's does, 126.
    let before = podman.run_in_pod(&pod, &VALIDATION_SECURITY, &images.init, None, &validate);
    assert_eq!(
        before.status, "exit status: 126",
        "validation before capture:\n{}{}",
        before.stdout, before.stderr
    );

    // The init container, as non-root with NET_ADMIN and NET_RAW and no_new_privs.
    let init = podman.run_in_pod(&pod, &INIT_SECURITY, &images.init, None, &init_args(backend_args));
    assert_ran(&init, &format!("the init container ({backend_args:?})"));
    assert!(rules(&pod.netns), "capture rules in the pod ({backend_args:?})");

    let after = podman.run_in_pod(&pod, &VALIDATION_SECURITY, &images.init, None, &validate);
    assert_ran(&after, "the validation container after capture");
    assert!(after.stderr.contains("validation passed"), "{}", after.stderr);

    // The stand-in proxy in the pod's namespace, the peer on the node.
    let any = |port| SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port);
    let to_peer = SocketAddr::new(IpAddr::V4(GATEWAY), PEER_PORT);
    let peer = Listener::spawn(podman.node, to_peer, "peer");
    let proxy = Listener::spawn_proxy(&pod.netns, any(OUTBOUND_PORT), "proxy");
    let inbound = Listener::spawn_proxy(&pod.netns, any(INBOUND_PORT), "inbound");

    // The app (root, as most images run) connects to the peer: the proxy gets it.
    assert_eq!(podman.connect_from(&pod, "0:0"), "proxy");
    let seen = proxy.take_one();
    assert_eq!(seen.original_dst.expect("an original destination"), to_peer);
    assert!(peer.take_accepted().is_empty(), "captured, not direct");
    // An app uid other than root too.
    assert_eq!(podman.connect_from(&pod, "1000:1000"), "proxy");
    assert_eq!(
        proxy.take_one().original_dst.expect("an original destination"),
        to_peer
    );

    // The proxy's uid is not captured: straight to the peer.
    assert_eq!(podman.connect_from(&pod, "1337:1337"), "peer");
    assert_eq!(peer.take_one().peer.ip(), pod.ip);
    assert!(proxy.take_accepted().is_empty(), "uid 1337 is never captured");

    // Inbound from the node to an app port lands on 15006 with that original destination.
    let to_app = SocketAddr::new(pod.ip, APP_PORT);
    let (token, _) = connect_as(podman.node, 0, 0, to_app).expect("connect to the pod");
    assert_eq!(token, "inbound");
    assert_eq!(
        inbound.take_one().original_dst.expect("an original destination"),
        to_app
    );

    drop((proxy, inbound, peer));
    podman.ok(&["pod", "rm", "--force", "--time", "0", &pod.name], &[]);
}

fn has_native_tables(ns: &NetNs) -> bool {
    let nft = capture_e2e::run_ok(ns.command("nft").args(["list", "tables"]));
    nft.contains("table inet istio-proxy-nat")
}

fn has_iptables_nft_rules(ns: &NetNs) -> bool {
    iptables_save_normalized(ns, Flavor::Nft, Family::V4).contains("-j ISTIO_OUTPUT")
}

/// The init image captures a pod as Istio's istio-init would, as uid 65534 with only NET_ADMIN
/// and NET_RAW and no_new_privs, on native nftables and on iptables-nft; the validation
/// container, as uid 1337 without any capability, tells a captured pod from one that is not.
#[test]
fn init_image_captures_a_pod_as_non_root() {
    if !require_root() {
        return;
    }
    let Some(static_dir) = static_dir() else {
        return;
    };
    check_tools();
    let _serial = super::one_podman_test();
    set_child_subreaper(true).expect("PR_SET_CHILD_SUBREAPER");
    let scratch = TempDir::new("podman-images");
    {
        let node = NetNs::new();
        let podman = Podman::bridge_only(&node, scratch.path());
        let images = build_images(&podman, &static_dir);

        // No shell in the image: nothing but what capture-init runs.
        let shell = podman.run(
            &[
                "run",
                "--rm",
                "--network",
                "none",
                "--entrypoint",
                "/bin/sh",
                &images.init,
            ],
            &[],
        );
        assert!(!shell.ok, "the init image has no shell: {}", shell.stdout);

        capture_a_pod(
            &podman,
            &images,
            "capture-native",
            &["--native-nftables"],
            has_native_tables,
        );
        capture_a_pod(
            &podman,
            &images,
            // The manifest's own arguments: the flavour is detected (the image's `iptables` is
            // iptables-nft).
            "capture-iptables-nft",
            &[],
            has_iptables_nft_rules,
        );
    }
}

/// The node image's installer, run as the DaemonSet runs it with a throwaway conf dir and bin
/// dir mounted: it chains the plugin last into the node's conflist with the ConfigMap's
/// settings, and copies the image's capture-cni (the static build) to the node's bin dir.
#[test]
fn node_image_installs_the_plugin() {
    if !require_root() {
        return;
    }
    let Some(static_dir) = static_dir() else {
        return;
    };
    check_tools();
    let _serial = super::one_podman_test();
    set_child_subreaper(true).expect("PR_SET_CHILD_SUBREAPER");
    let scratch = TempDir::new("podman-node-image");
    {
        let node = NetNs::new();
        let podman = Podman::bridge_only(&node, scratch.path());
        let images = build_images(&podman, &static_dir);
        let host = scratch.path().join("host");
        let (conf, bin, config) = (host.join("net.d"), host.join("bin"), host.join("config"));
        for dir in [&conf, &bin, &config] {
            fs::create_dir_all(dir).unwrap();
        }
        let primary = json!({
            "cniVersion": "1.0.0",
            "name": "node-net",
            "plugins": [{ "type": "bridge", "bridge": "cni0", "ipam": { "type": "host-local" } }],
        });
        fs::write(conf.join("10-node.conflist"), primary.to_string()).unwrap();
        let settings =
            json!({ "exclude_namespaces": ["kube-system"], "capture": { "iptables_flavor": "nft" } });
        fs::write(config.join("plugin.json"), settings.to_string()).unwrap();
        let mounts = [
            format!("{}:/host/etc/cni/net.d", conf.display()),
            format!("{}:/host/opt/cni/bin", bin.display()),
            format!("{}:/etc/capture-cni:ro", config.display()),
        ];
        // The installer DaemonSet's securityContext: root for the two root-owned hostPaths, no
        // capability, no privilege escalation, a read-only root filesystem.
        let mut base = vec![
            "run",
            "--rm",
            "--network",
            "none",
            "--user",
            "0:0",
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
            "--read-only",
        ];
        for mount in &mounts {
            base.extend(["--volume", mount]);
        }
        base.push(images.node.as_str());
        let location = ["--conf-dir=/host/etc/cni/net.d", "--bin-dir=/host/opt/cni/bin"];
        // The readiness probe: not ready before the plugin is chained.
        let probe = [&base[..], &["chained"], &location[..]].concat();
        let before = podman.run(&probe, &[]);
        assert!(!before.ok, "ready before installing: {}", before.stderr);
        assert!(before.stderr.contains("not chained"), "{}", before.stderr);
        let install = [
            &base[..],
            &["install"],
            &location[..],
            &["--plugin-config=/etc/capture-cni/plugin.json"],
        ]
        .concat();
        podman.ok(&install, &[]);
        let after = podman.run(&probe, &[]);
        assert!(after.ok, "not ready after installing: {}", after.stderr);

        let doc: Value =
            serde_json::from_str(&fs::read_to_string(conf.join("10-node.conflist")).unwrap()).unwrap();
        let plugins = doc["plugins"].as_array().expect("plugins");
        assert_eq!(plugins.len(), 2, "{doc:#}");
        assert_eq!(plugins[0]["type"], "bridge", "{doc:#}");
        let ours = &plugins[1];
        assert_eq!(ours["type"], "capture-cni", "{doc:#}");
        assert_eq!(ours["exclude_namespaces"], json!(["kube-system"]), "{doc:#}");
        assert_eq!(ours["capture"]["iptables_flavor"], "nft", "{doc:#}");
        let installed = bin.join("capture-cni");
        assert_eq!(
            fs::read(&installed).unwrap(),
            fs::read(static_dir.join("capture-cni")).unwrap(),
            "the image's capture-cni is the static build"
        );
        assert_eq!(
            fs::metadata(&installed).unwrap().permissions().mode() & 0o777,
            0o755
        );

        // capture-agent is in the image too, and runs there.
        let agent = podman.run(
            &[
                "run",
                "--rm",
                "--network",
                "none",
                "--entrypoint",
                "/usr/local/bin/capture-agent",
                &images.node,
                "--help",
            ],
            &[],
        );
        assert_ran(&agent, "capture-agent --help in the node image");
    }
}
