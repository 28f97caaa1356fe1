//! A real container runtime drives capture-cni: Debian's podman (4.3, `network_backend = "cni"`,
//! runc) starts busybox containers on a network whose conflist is Debian's `bridge` +
//! `host-local` with `capture-cni` last, and tears them down again.
//!
//! Everything happens inside a "node" network namespace the test creates, podman included, so
//! the bridge, the veths and the addresses never land in the machine's own namespace. Podman
//! gets its whole configuration from the test: `CONTAINERS_CONF` and `CONTAINERS_STORAGE_CONF`
//! name files in a scratch directory, which also holds the network configuration directory,
//! storage, libpod state and file locks; containers get a test-named cgroup parent. No
//! `containers.conf`, `storage.conf` or CNI configuration of the machine's is read, nothing in
//! `/etc` is written. Only runc's and libcni's state directories (`/run/runc`, `/var/lib/cni`)
//! cannot be moved; their entries go away with each container, and the directories too when
//! the test created them.
//!
//! Needs root, podman, runc and busybox-static (`scripts/setup`); skips with a message without
//! root, and fails when `CI` is set.

use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use capture_e2e::{
    Family, Flavor, Listener, NetNs, OUTBOUND_PORT, TempDir, iptables_save_normalized, require_root,
};
use nix::errno::Errno;
use nix::mount::{MntFlags, umount2};
use nix::sys::prctl::set_child_subreaper;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use serde_json::{Value, json};

#[path = "podman/images.rs"]
mod images;

/// The podman network (the conflist's `name`) and the bridge it makes in the node namespace.
const NETWORK: &str = "capture-podman";
const BRIDGE: &str = "cappod0";
/// The network's subnet is 10.251.1.0/24; the bridge holds the gateway address.
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 251, 1, 1);
const SUBNET: &str = "10.251.1.0/24";
/// A namespace in the plugin's `exclude_namespaces`, given to a container through podman's
/// `CNI_ARGS`.
const EXCLUDED_NAMESPACE: &str = "capture-excluded";
/// Where a connection from the containers goes: a port on the node, across the bridge.
const PEER_PORT: u16 = 80;
/// Every podman command is killed after this long (`timeout`), so a hang fails the test.
const PODMAN_TIMEOUT_SECS: u32 = 60;
/// How long a container's cleanup (conmon's exit command) may take after it exits.
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);
/// The static busybox of Debian's busybox-static, from which the containers' root is built.
const BUSYBOX: &str = "/bin/busybox";
/// runc's and libcni's state directories: podman has no setting for them that its cleanup
/// process (conmon's exit command) also gets. Removed after the test when it created them.
const RUNTIME_STATE_DIRS: [&str; 3] = ["/run/runc", "/var/lib/cni/results", "/var/lib/cni"];
/// The container's command: wait until the test asks it to exit, then exit 0.
const WAIT_FOR_STOP: &str = "while [ ! -e /tmp/stop ]; do sleep 0.1; done";

/// The tests of this binary that drive podman run one at a time: a failing one's cleanup kills
/// every child process of the test process.
static PODMAN_TESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Takes [`PODMAN_TESTS`], also after another test failed holding it.
fn one_podman_test() -> std::sync::MutexGuard<'static, ()> {
    PODMAN_TESTS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Where cargo put the plugin under test; podman finds it there through `cni_plugin_dirs`.
fn plugin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_capture-cni"))
        .parent()
        .expect("a directory")
        .to_owned()
}

/// Fails early, with the fix, when a tool the test drives is missing.
fn check_tools() {
    for tool in ["podman", "runc", "conmon", "timeout"] {
        let found = std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()));
        assert!(found, "{tool} is not installed; run scripts/setup");
    }
    let busybox = fs::read(BUSYBOX).unwrap_or_else(|e| panic!("{BUSYBOX}: {e}; run scripts/setup"));
    // The container has no loader: a dynamically linked busybox (package busybox) cannot run.
    assert!(
        !has_interpreter(&busybox),
        "{BUSYBOX} is not static; install busybox-static (scripts/setup)"
    );
}

/// Whether a 64-bit little-endian ELF file has a `PT_INTERP` program header (names a loader).
fn has_interpreter(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let u16_at = |at: usize| elf.get(at..at + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |at: usize| {
        elf.get(at..at + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    };
    let u64_at = |at: usize| {
        elf.get(at..at + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    };
    assert_eq!(
        elf.get(..5),
        Some(&b"\x7fELF\x02"[..]),
        "{BUSYBOX} is a 64-bit ELF file"
    );
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38)) else {
        panic!("{BUSYBOX}: a truncated ELF header");
    };
    let phoff = usize::try_from(phoff).expect("a small offset");
    (0..usize::from(phnum)).any(|i| u32_at(phoff + i * usize::from(phentsize)) == Some(PT_INTERP))
}

/// capture-cni's `capture` settings in the conflist of [`podman_drives_capture_cni`].
fn iptables_capture() -> Value {
    json!({ "iptables_flavor": "nft" })
}

/// The conflist podman reads from its network configuration directory: the bridge, then
/// capture-cni with `capture` settings when given.
fn conflist(dir: &Path, capture: Option<&Value>) -> Value {
    let mut plugins = vec![json!({
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": true,
                "ipMasq": false,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{ "subnet": SUBNET, "gateway": GATEWAY.to_string() }]],
                    "dataDir": dir.join("ipam"),
                },
    })];
    if let Some(capture) = capture {
        plugins.push(json!({
                "type": "capture-cni",
                // Podman passes no pod annotations, and only K8S_POD_NAME as identity.
                "pod_selection": "all",
                "exclude_namespaces": [EXCLUDED_NAMESPACE],
                "run_dir": dir.join("run"),
                "plugin_log_level": "debug",
                "log_file": dir.join("capture-cni.log"),
                "capture": capture,
        }));
    }
    json!({ "cniVersion": "1.0.0", "name": NETWORK, "plugins": plugins })
}

/// Podman's own configuration: every path in the scratch directory.
fn containers_conf(dir: &Path) -> String {
    let p = |sub: &str| dir.join(sub).display().to_string();
    format!(
        r#"[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
pids_limit = 0

[network]
network_backend = "cni"
network_config_dir = "{net}"
cni_plugin_dirs = ["{plugins}", "/usr/lib/cni"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "none"
lock_type = "file"
tmp_dir = "{tmp}"
static_dir = "{static_dir}"
volume_path = "{volumes}"
"#,
        net = p("net.d"),
        plugins = plugin_dir().display(),
        tmp = p("podman-tmp"),
        static_dir = p("storage/libpod"),
        volumes = p("storage/volumes"),
    )
}

fn storage_conf(dir: &Path) -> String {
    format!(
        "[storage]\ndriver = \"vfs\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
        dir.join("storage").display(),
        dir.join("storage-run").display()
    )
}

/// A root filesystem of one static busybox and the applets the test uses.
fn build_rootfs(root: &Path) {
    for sub in ["bin", "etc", "tmp", "proc", "sys", "dev", "run"] {
        fs::create_dir_all(root.join(sub)).unwrap();
    }
    fs::copy(BUSYBOX, root.join("bin/busybox")).unwrap();
    fs::set_permissions(root.join("bin/busybox"), fs::Permissions::from_mode(0o755)).unwrap();
    for applet in ["sh", "sleep", "nc", "id", "cat"] {
        symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/:/bin/sh\nproxy:x:1337:1337:proxy:/:/bin/sh\n",
    )
    .unwrap();
    fs::write(root.join("etc/group"), "root:x:0:\nproxy:x:1337:\n").unwrap();
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
}

/// What a podman command did.
#[derive(Debug)]
struct Run {
    ok: bool,
    status: String,
    stdout: String,
    stderr: String,
}

/// A running container, as podman describes it.
#[derive(Debug)]
struct Container {
    name: String,
    id: String,
    /// Its network namespace, as podman mounted it (`/run/netns/netns-…`).
    sandbox: PathBuf,
    ip: IpAddr,
    rootfs: PathBuf,
    /// The plugin's lock file for this namespace while capture is in place.
    lock_file: PathBuf,
}

/// Podman configured by the test, run inside the node namespace. `Drop` removes every
/// container, process, mount, namespace and cgroup it made.
struct Podman<'a> {
    node: &'a NetNs,
    dir: PathBuf,
    cgroup_parent: String,
    /// Runtime state directories that did not exist before the test.
    created_state_dirs: Vec<PathBuf>,
    sandboxes: std::cell::RefCell<Vec<PathBuf>>,
}

impl<'a> Podman<'a> {
    fn new(node: &'a NetNs, dir: &Path) -> Self {
        let cgroup_parent = format!("/capture-test-podman-{}", std::process::id());
        Self::with(node, dir, Some(&iptables_capture()), cgroup_parent)
    }

    /// Podman whose network is the bridge alone (no capture-cni), containers' cgroups below a
    /// test-named parent.
    fn bridge_only(node: &'a NetNs, dir: &Path) -> Self {
        let cgroup_parent = format!("/capture-test-podman-{}", std::process::id());
        Self::with(node, dir, None, cgroup_parent)
    }

    /// Podman whose network's capture-cni has `capture` settings and whose containers' cgroups
    /// are made below `cgroup_parent` (relative to each hierarchy's root).
    fn with(node: &'a NetNs, dir: &Path, capture: Option<&Value>, cgroup_parent: String) -> Self {
        let created_state_dirs = RUNTIME_STATE_DIRS
            .iter()
            .map(PathBuf::from)
            .filter(|d| !d.exists())
            .collect();
        for sub in [
            "net.d",
            "ipam",
            "run",
            "podman-tmp",
            "storage",
            "storage-run",
            "out",
        ] {
            fs::create_dir_all(dir.join(sub)).unwrap();
        }
        fs::write(dir.join("containers.conf"), containers_conf(dir)).unwrap();
        fs::write(dir.join("storage.conf"), storage_conf(dir)).unwrap();
        fs::write(
            dir.join("net.d").join(format!("{NETWORK}.conflist")),
            serde_json::to_string_pretty(&conflist(dir, capture)).unwrap(),
        )
        .unwrap();
        Self {
            node,
            dir: dir.to_owned(),
            cgroup_parent,
            created_state_dirs,
            sandboxes: std::cell::RefCell::default(),
        }
    }

    /// `program` in the node namespace with the test's podman configuration as its whole
    /// environment (and `PATH`).
    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = self.node.command(program);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &self.dir)
            .env("TMPDIR", self.dir.join("podman-tmp"))
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", self.dir.join("storage.conf"));
        cmd
    }

    /// Runs `podman args…` in the node namespace with the test's configuration and `env`.
    fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        // Files, not pipes: conmon outlives `podman run -d`, and an inherited pipe would keep
        // the reader waiting.
        let out_path = self.dir.join("out").join(format!("{n}.out"));
        let err_path = self.dir.join("out").join(format!("{n}.err"));
        let mut child = self
            .command("timeout")
            .args(["--kill-after=5", &PODMAN_TIMEOUT_SECS.to_string(), "podman"])
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(fs::File::create(&out_path).unwrap())
            .stderr(fs::File::create(&err_path).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run podman {args:?}: {e}"));
        // While it runs, collect the conmon processes that exit meanwhile (the test is their
        // subreaper): podman waits for a container's conmon to be gone, and an unreaped zombie
        // keeps a foreground `podman run` waiting ~20 s for it.
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for podman") {
                break status;
            }
            reap_zombies_except(child.id());
            thread::sleep(Duration::from_millis(20));
        };
        Run {
            ok: status.success(),
            status: status.to_string(),
            stdout: fs::read_to_string(out_path).unwrap_or_default(),
            stderr: fs::read_to_string(err_path).unwrap_or_default(),
        }
    }

    /// Runs podman and returns its stdout; panics with its stderr and the plugin's log otherwise.
    #[track_caller]
    fn ok(&self, args: &[&str], env: &[(&str, &str)]) -> String {
        let run = self.run(args, env);
        assert!(
            run.ok,
            "podman {args:?} failed ({}):\nstdout: {}\nstderr: {}\ncapture-cni log:\n{}",
            run.status,
            run.stdout,
            run.stderr,
            self.plugin_log()
        );
        run.stdout
    }

    fn plugin_log(&self) -> String {
        fs::read_to_string(self.dir.join("capture-cni.log")).unwrap_or_default()
    }

    /// Starts a container named `name` on the test network, with `env` in podman's environment
    /// (`CNI_ARGS`), and waits until it runs.
    fn start(&self, name: &str, env: &[(&str, &str)]) -> Container {
        let rootfs = self.dir.join(format!("rootfs-{name}"));
        build_rootfs(&rootfs);
        let rootfs_arg = rootfs.display().to_string();
        let id = self
            .ok(
                &[
                    "run",
                    "--detach",
                    "--rm",
                    "--name",
                    name,
                    "--network",
                    NETWORK,
                    "--cgroup-parent",
                    &self.cgroup_parent,
                    "--rootfs",
                    &rootfs_arg,
                    "/bin/sh",
                    "-c",
                    WAIT_FOR_STOP,
                ],
                env,
            )
            .trim()
            .to_owned();
        let inspect: Value = serde_json::from_str(&self.ok(&["inspect", name], &[])).unwrap();
        let settings = &inspect[0]["NetworkSettings"];
        let sandbox = PathBuf::from(settings["SandboxKey"].as_str().expect("a SandboxKey"));
        self.sandboxes.borrow_mut().push(sandbox.clone());
        let ip = settings["Networks"][NETWORK]["IPAddress"]
            .as_str()
            .and_then(|ip| ip.parse().ok())
            .unwrap_or_else(|| panic!("no address on {NETWORK}: {settings:#}"));
        assert_eq!(inspect[0]["Id"], id.as_str());
        let meta = fs::metadata(&sandbox).unwrap();
        let lock_file = self
            .dir
            .join("run")
            .join(format!("xtables-{}-{}.lock", meta.dev(), meta.ino()));
        Container {
            name: name.to_owned(),
            id,
            sandbox,
            ip,
            rootfs,
            lock_file,
        }
    }

    /// `podman exec` of `command` in `container`, as `user` when given.
    fn exec(&self, container: &Container, user: Option<&str>, command: &[&str]) -> Run {
        let mut args = vec!["exec"];
        if let Some(user) = user {
            args.extend(["--user", user]);
        }
        args.push(&container.name);
        args.extend(command);
        self.run(&args, &[])
    }

    /// Connects from `container` to the node's peer port with busybox `nc` and returns what
    /// the other end sent.
    #[track_caller]
    fn connect(&self, container: &Container, user: Option<&str>) -> String {
        let gateway = GATEWAY.to_string();
        let port = PEER_PORT.to_string();
        let run = self.exec(container, user, &["nc", "-w", "5", &gateway, &port]);
        assert!(
            run.ok,
            "nc from {} as {user:?} failed ({}): {}{}",
            container.name, run.status, run.stdout, run.stderr
        );
        run.stdout
    }

    fn exists(&self, container: &Container) -> bool {
        self.run(&["container", "exists", &container.name], &[]).ok
    }

    /// Processes whose command line mentions the scratch directory: conmon, podman.
    fn processes(&self) -> Vec<(i32, String)> {
        processes_mentioning(&self.dir)
    }
}

impl Drop for Podman<'_> {
    fn drop(&mut self) {
        // Pods and containers first: what podman still knows it tears down (CNI DEL).
        let rm = self.run(&["pod", "rm", "--force", "--all", "--time", "0"], &[]);
        if !rm.ok {
            eprintln!("podman pod rm --all: {}\n{}", rm.status, rm.stderr);
        }
        let rm = self.run(&["rm", "--force", "--all", "--time", "0"], &[]);
        if !rm.ok {
            eprintln!("podman rm --all: {}\n{}", rm.status, rm.stderr);
        }
        // conmon and its exit command finish on their own (and, the test being their
        // subreaper, become its zombies); give them a moment.
        let deadline = Instant::now() + Duration::from_secs(15);
        while (reap_children() || !self.processes().is_empty()) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(100));
        }
        let mut leftovers = self.processes();
        leftovers.extend(children());
        for (pid, cmdline) in leftovers {
            eprintln!("podman test: killing leftover {pid}: {cmdline}");
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while reap_children() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
        }
        for mount in mounts_under(&self.dir) {
            eprintln!("podman test: unmounting leftover {}", mount.display());
            let _ = umount2(&mount, MntFlags::MNT_DETACH);
        }
        for sandbox in self.sandboxes.borrow().iter() {
            if sandbox.exists() {
                eprintln!("podman test: removing leftover {}", sandbox.display());
                let _ = umount2(sandbox, MntFlags::MNT_DETACH);
                let _ = fs::remove_file(sandbox);
            }
        }
        for dir in cgroup_dirs(&self.cgroup_parent) {
            // Children first: conmon's cgroup and any container's runc left behind.
            if let Ok(children) = fs::read_dir(&dir) {
                for child in children.flatten().filter(|c| c.path().is_dir()) {
                    let _ = fs::remove_dir(child.path());
                }
            }
            if let Err(e) = fs::remove_dir(&dir) {
                eprintln!("podman test: cannot remove cgroup {}: {e}", dir.display());
            }
        }
        for dir in &self.created_state_dirs {
            // Only when empty: another runtime may have started to use it meanwhile.
            let _ = fs::remove_dir(dir);
        }
    }
}

/// Reaps every child that has exited; returns whether a child is still running (`false` once
/// the test has no child process at all).
///
/// The test is its own subreaper: conmon daemonizes, and without it conmon's and its exit
/// command's zombies would wait for the machine's init to collect them.
fn reap_children() -> bool {
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => return true,
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => return false,
        }
    }
}

/// Reaps this process's children that have exited, except `keep`.
fn reap_zombies_except(keep: u32) {
    let me = std::process::id().to_string();
    let Ok(entries) = fs::read_dir("/proc") else {
        return;
    };
    for pid in entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
    {
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid …
        let mut fields = stat
            .rsplit_once(") ")
            .map(|(_, rest)| rest.split(' '))
            .into_iter()
            .flatten();
        let (state, ppid) = (fields.next(), fields.next());
        if pid != keep && state == Some("Z") && ppid == Some(me.as_str()) {
            let _ = waitpid(
                Pid::from_raw(i32::try_from(pid).expect("a pid")),
                Some(WaitPidFlag::WNOHANG),
            );
        }
    }
}

/// `(pid, command line)` of this process's children.
fn children() -> Vec<(i32, String)> {
    let me = std::process::id().to_string();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // pid (comm) state ppid …; comm may hold spaces and parentheses.
            let ppid = stat.rsplit_once(") ")?.1.split(' ').nth(1)?;
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            (ppid == me).then(|| (pid, String::from_utf8_lossy(&cmdline).replace('\0', " ")))
        })
        .collect()
}

/// `(pid, command line)` of every process whose command line mentions `dir`.
fn processes_mentioning(dir: &Path) -> Vec<(i32, String)> {
    let needle = dir.display().to_string();
    let me = std::process::id();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| u32::try_from(pid) != Ok(me))
        .filter_map(|pid| {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            cmdline.contains(&needle).then_some((pid, cmdline))
        })
        .collect()
}

/// Mount points at or under `dir`, deepest first.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|m| m.starts_with(dir))
        .collect();
    found.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    found
}

/// `cgroup_parent` in every mounted cgroup hierarchy (v1 controllers and the v2 tree).
fn cgroup_dirs(cgroup_parent: &str) -> Vec<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let (mount_point, fstype) = (fields.nth(1)?, fields.next()?);
            matches!(fstype, "cgroup" | "cgroup2")
                .then(|| Path::new(mount_point).join(cgroup_parent.trim_start_matches('/')))
        })
        .filter(|d| d.exists())
        .collect()
}

#[track_caller]
fn assert_no_capture_rules(ns: &NetNs, what: &str) {
    for flavor in [Flavor::Nft, Flavor::Legacy] {
        let save = iptables_save_normalized(ns, flavor, Family::V4);
        assert!(
            !save.contains("ISTIO"),
            "{what}: no capture rules ({flavor:?}):\n{save}"
        );
    }
}

/// Files of `dir` whose name is an address: host-local's reservations.
fn reservations(ipam: &Path) -> Vec<String> {
    fs::read_dir(ipam.join(NETWORK))
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                .filter(|n| n.parse::<IpAddr>().is_ok())
                .collect()
        })
        .unwrap_or_default()
}

/// libcni's cached ADD result for a container on the test network.
fn cached_result(container: &Container) -> PathBuf {
    PathBuf::from(format!("/var/lib/cni/results/{NETWORK}-{}-eth0", container.id))
}

/// After `container` is gone: the plugin removed its rules, the runtime its namespace, veth,
/// address, cached result, and the plugin its lock file.
#[track_caller]
fn assert_torn_down(podman: &Podman<'_>, container: &Container, netns: &NetNs) {
    assert!(!podman.exists(container), "{} is removed", container.name);
    assert!(
        !container.sandbox.exists(),
        "podman removed {}",
        container.sandbox.display()
    );
    // The namespace lives on while the test holds it open, so what DEL left can be seen.
    assert_no_capture_rules(netns, &format!("{} after DEL", container.name));
    assert!(
        !netns.ip(&["-o", "link"]).contains("eth0"),
        "{}: bridge's DEL removed the veth",
        container.name
    );
    assert!(
        !container.lock_file.exists(),
        "{}: DEL removed {}",
        container.name,
        container.lock_file.display()
    );
    assert!(
        !reservations(&podman.dir.join("ipam")).contains(&container.ip.to_string()),
        "{}: host-local released {}",
        container.name,
        container.ip
    );
    assert!(
        !cached_result(container).exists(),
        "{}: libcni removed its cached result",
        container.name
    );
}

/// Waits until `container` has exited and podman's cleanup (conmon's exit command: network
/// teardown, then `--rm`) is done.
fn wait_for_exit(podman: &Podman<'_>, container: &Container) {
    let deadline = Instant::now() + EXIT_TIMEOUT;
    loop {
        let busy = processes_mentioning(&podman.dir)
            .iter()
            .any(|(_, cmdline)| cmdline.contains(&container.id));
        reap_children();
        if !busy && !podman.exists(container) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} did not exit and get cleaned up within {EXIT_TIMEOUT:?}; capture-cni log:\n{}",
            container.name,
            podman.plugin_log()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// Whether the plugin's log has a line of `command` for container `id` that says `message`.
fn logged(log: &str, command: &str, id: &str, message: &str) -> bool {
    let who = format!("command={command} container_id={id}");
    log.lines().any(|l| l.contains(message) && l.contains(&who))
}

fn scenario(node: &NetNs, podman: &Podman<'_>) {
    let any = |port| SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port);
    let to_peer = SocketAddr::new(IpAddr::V4(GATEWAY), PEER_PORT);

    // A: an ordinary container. Podman passes K8S_POD_NAME only; pod_selection "all" captures it.
    let a = podman.start("capture-a", &[]);
    let a_ns = NetNs::open(&a.sandbox).unwrap_or_else(|e| panic!("{}: {e}", a.sandbox.display()));
    let peer = Listener::spawn(node, to_peer, "peer");
    let proxy = Listener::spawn_proxy(&a_ns, any(OUTBOUND_PORT), "proxy");
    let rules = iptables_save_normalized(&a_ns, Flavor::Nft, Family::V4);
    assert!(rules.contains("-j ISTIO_OUTPUT"), "capture in A:\n{rules}");
    // (iptables-nft takes no xtables lock, so ADD leaves no lock file to look for here.)
    let log = podman.plugin_log();
    assert!(
        logged(
            &log,
            "ADD",
            &a.id,
            "pod <none>/capture-a: IPv4 capture applied (nft)"
        ),
        "{log}"
    );

    // The application (root) connects to the peer: the proxy in A's namespace gets it.
    assert_eq!(podman.connect(&a, None), "proxy");
    let seen = proxy.take_one();
    assert_eq!(seen.original_dst.expect("an original destination"), to_peer);
    assert_eq!(seen.peer.ip(), a.ip);
    assert!(peer.take_accepted().is_empty(), "captured, not direct");

    // The proxy's own uid is not captured: the connection goes straight to the peer.
    assert_eq!(podman.connect(&a, Some("1337:1337")), "peer");
    assert_eq!(peer.take_one().peer.ip(), a.ip);
    assert!(proxy.take_accepted().is_empty(), "uid 1337 is never captured");

    // B: identity from podman's CNI_ARGS, in an excluded namespace: left alone, traffic direct.
    let cni_args = format!("K8S_POD_NAMESPACE={EXCLUDED_NAMESPACE}");
    let b = podman.start("capture-b", &[("CNI_ARGS", &cni_args)]);
    let b_ns = NetNs::open(&b.sandbox).unwrap_or_else(|e| panic!("{}: {e}", b.sandbox.display()));
    assert_no_capture_rules(&b_ns, "B (excluded namespace)");
    assert!(!b.lock_file.exists(), "a skipped pod needs no lock");
    let skipped =
        format!("pod {EXCLUDED_NAMESPACE}/capture-b skipped: namespace \"{EXCLUDED_NAMESPACE}\" is excluded");
    assert!(podman.plugin_log().contains(&skipped), "{}", podman.plugin_log());
    assert_eq!(podman.connect(&b, None), "peer");
    assert_eq!(peer.take_one().peer.ip(), b.ip);

    // A exits by itself: conmon's exit command runs podman's cleanup, which runs DEL, then --rm.
    drop(proxy);
    fs::write(a.rootfs.join("tmp/stop"), "").unwrap();
    wait_for_exit(podman, &a);
    assert!(
        logged(
            &podman.plugin_log(),
            "DEL",
            &a.id,
            "pod <none>/capture-a: capture removed"
        ),
        "{}",
        podman.plugin_log()
    );
    assert_torn_down(podman, &a, &a_ns);

    // B exits by itself too. Its DEL comes from the same exit command, which inherits podman's
    // CNI_ARGS through conmon: DEL sees the namespace and skips the pod, as ADD did.
    fs::write(b.rootfs.join("tmp/stop"), "").unwrap();
    wait_for_exit(podman, &b);
    let del_b = format!("pod {EXCLUDED_NAMESPACE}/capture-b skipped");
    assert!(
        logged(&podman.plugin_log(), "DEL", &b.id, &del_b),
        "the cleanup's DEL got CNI_ARGS:\n{}",
        podman.plugin_log()
    );
    assert_torn_down(podman, &b, &b_ns);

    // C is removed by force while it runs: `podman rm -f` tears its network down itself.
    let c = podman.start("capture-c", &[]);
    let c_ns = NetNs::open(&c.sandbox).unwrap_or_else(|e| panic!("{}: {e}", c.sandbox.display()));
    let rules = iptables_save_normalized(&c_ns, Flavor::Nft, Family::V4);
    assert!(rules.contains("-j ISTIO_OUTPUT"), "capture in C:\n{rules}");
    podman.ok(&["rm", "--force", "--time", "0", &c.name], &[]);
    assert!(
        logged(
            &podman.plugin_log(),
            "DEL",
            &c.id,
            "pod <none>/capture-c: capture removed"
        ),
        "{}",
        podman.plugin_log()
    );
    assert_torn_down(podman, &c, &c_ns);

    // The node: nothing captured there, the bridge still up with its gateway and no ports left.
    assert_no_capture_rules(node, "node");
    assert_eq!(
        node.ip(&["-o", "link", "show", "master", BRIDGE]).trim(),
        "",
        "no veth left on {BRIDGE}"
    );
    assert!(
        node.ip(&["-o", "-4", "addr", "show", "dev", BRIDGE])
            .contains(&format!("{GATEWAY}/24")),
        "{BRIDGE} keeps the gateway address"
    );
    assert_eq!(
        reservations(&podman.dir.join("ipam")),
        Vec::<String>::new(),
        "no address reserved"
    );
    let locks: Vec<_> = fs::read_dir(podman.dir.join("run"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(locks.is_empty(), "run_dir is empty: {locks:?}");
    assert_eq!(
        podman.ok(&["ps", "--all", "--quiet"], &[]).trim(),
        "",
        "no container left"
    );

    // And nothing of the test in the machine's own namespace.
    let root_links = capture_e2e::run_ok(Command::new("ip").args(["-o", "link"]));
    assert!(!root_links.contains(BRIDGE), "no {BRIDGE} in the root namespace");
    let root_addrs = capture_e2e::run_ok(Command::new("ip").args(["-o", "addr"]));
    assert!(
        !root_addrs.contains("10.251.1."),
        "no test address in the root namespace"
    );
    drop(peer);
}

/// Podman runs capture-cni as the last plugin of a real network: captured traffic reaches a
/// proxy in the container's namespace with its original destination, uid 1337 and an excluded
/// namespace (from podman's `CNI_ARGS`) go direct, and DEL — on exit (`--rm`) and on
/// `podman rm -f` — leaves nothing behind.
#[test]
fn podman_drives_capture_cni() {
    if !require_root() {
        return;
    }
    check_tools();
    let _serial = one_podman_test();
    // conmon daemonizes; as subreaper the test collects it and its exit command itself.
    set_child_subreaper(true).expect("PR_SET_CHILD_SUBREAPER");
    let scratch = TempDir::new("podman");
    let dir = scratch.path().to_owned();
    let (node_name, sandboxes, cgroup_parent) = {
        let node = NetNs::new();
        let podman = Podman::new(&node, &dir);
        scenario(&node, &podman);
        let sandboxes = podman.sandboxes.borrow().clone();
        (node.name().to_owned(), sandboxes, podman.cgroup_parent.clone())
    };
    drop(scratch);

    // After the cleanup: no process, mount, namespace or cgroup of the test is left.
    assert_eq!(processes_mentioning(&dir), Vec::new(), "no conmon or podman left");
    assert!(!reap_children(), "no child process left: {:?}", children());
    assert_eq!(mounts_under(&dir), Vec::<PathBuf>::new(), "no mount left");
    assert!(!dir.exists(), "scratch directory removed");
    let netns = capture_e2e::run_ok(Command::new("ip").args(["netns", "ls"]));
    assert!(!netns.contains(&node_name), "node namespace removed: {netns}");
    for sandbox in &sandboxes {
        let name = sandbox.file_name().unwrap().to_string_lossy();
        assert!(!netns.contains(&*name), "{name} removed: {netns}");
    }
    assert_eq!(
        cgroup_dirs(&cgroup_parent),
        Vec::<PathBuf>::new(),
        "cgroups removed"
    );
}

/// The `0::` line of `/proc/<pid>/cgroup`: the process's cgroup v2 path, from the v2 root.
#[cfg(feature = "ebpf")]
fn cgroup_v2_of(pid: u64) -> String {
    let cgroups = fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("read /proc/<pid>/cgroup");
    cgroups
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or_else(|| panic!("no cgroup v2 line in {cgroups}"))
        .to_owned()
}

/// Podman on the eBPF backend: the node's programs are loaded on a test cgroup (v2) and bpffs,
/// podman puts the container below that cgroup (`--cgroup-parent`), and capture-cni with
/// `capture.backend: "ebpf"` enrolls its namespace. The app's connection reaches the proxy in
/// the container's namespace with its original destination, uid 1337 goes direct, no iptables
/// rule, chain or nftables table is anywhere in the container's namespace, and `podman rm -f`
/// (DEL) unenrolls it. The test's body runs in a child inside the cgroup, so the proxy's
/// `SO_ORIGINAL_DST` is answered by the programs too.
#[cfg(feature = "ebpf")]
#[test]
fn podman_drives_capture_cni_on_ebpf() {
    use capture_e2e::ebpf::{EbpfWorld, child_world};
    use capture_ebpf::{Node, PinDir};

    let Some(world) = child_world() else {
        if !require_root() {
            return;
        }
        check_tools();
        let world = EbpfWorld::empty();
        world.run_in_cgroup();
        capture_ebpf::unload(&world.pins()).unwrap_or_else(|e| panic!("unload: {}", capture_core::chain(&e)));
        let attached = world.attached();
        assert!(attached.is_empty(), "programs left attached: {attached:#?}");
        let pins = world.bpffs.contents();
        assert!(pins.is_empty(), "pins left behind: {pins:#?}");
        return;
    };
    set_child_subreaper(true).expect("PR_SET_CHILD_SUBREAPER");
    let pins = PinDir::new(&world.bpffs);
    pins.mount()
        .unwrap_or_else(|e| panic!("mount: {}", capture_core::chain(&e)));
    drop(
        Node::open_or_load(&world.cgroup, &pins)
            .unwrap_or_else(|e| panic!("load: {}", capture_core::chain(&e))),
    );
    // The containers' cgroups go below the test cgroup in the v2 hierarchy (and below a
    // directory of the same name in each v1 one, removed afterwards).
    let test_cgroup = world
        .cgroup
        .file_name()
        .expect("a cgroup name")
        .to_string_lossy()
        .into_owned();
    let cgroup_parent = format!("/{test_cgroup}/podman");
    let capture = json!({"backend": "ebpf", "bpffs": world.bpffs, "cgroup": world.cgroup});
    let scratch = TempDir::new("podman-ebpf");
    // Dropped after podman's cleanup (which removes `<hierarchy>/<test cgroup>/podman`), also
    // when the test fails: the v1 hierarchies' `<test cgroup>` directories runc made are ours to
    // remove; the v2 one is the test cgroup itself.
    struct V1Parents<'a>(String, &'a Path);
    impl Drop for V1Parents<'_> {
        fn drop(&mut self) {
            for dir in cgroup_dirs(&self.0).into_iter().filter(|d| d != self.1) {
                if let Err(e) = fs::remove_dir(&dir) {
                    eprintln!("podman test: cannot remove cgroup {}: {e}", dir.display());
                }
            }
        }
    }
    let v1_parents = V1Parents(format!("/{test_cgroup}"), &world.cgroup);
    {
        let node = NetNs::new();
        let podman = Podman::with(&node, scratch.path(), Some(&capture), cgroup_parent.clone());
        let a = podman.start("capture-ebpf-a", &[]);
        let inspect: Value = serde_json::from_str(&podman.ok(&["inspect", &a.name], &[])).unwrap();
        let pid = inspect[0]["State"]["Pid"].as_u64().expect("the container's pid");
        let cgroup = cgroup_v2_of(pid);
        assert!(
            cgroup.starts_with(&format!("{cgroup_parent}/")),
            "the container runs below {cgroup_parent} in the cgroup v2 hierarchy: {cgroup}"
        );

        let a_ns = NetNs::open(&a.sandbox).unwrap_or_else(|e| panic!("{}: {e}", a.sandbox.display()));
        let maps = Node::open(&pins).unwrap_or_else(|e| panic!("open: {}", capture_core::chain(&e)));
        let [(cookie, _)] = maps.pods().unwrap()[..] else {
            panic!("one pod enrolled: {:?}", maps.pods());
        };
        let meta = maps
            .metadata(cookie)
            .unwrap()
            .expect("ADD recorded the attachment");
        assert_eq!(
            (meta.container_id.as_str(), meta.ifname.as_str()),
            (a.id.as_str(), "eth0")
        );
        for save in ["iptables-save", "ip6tables-save", "iptables-legacy-save"] {
            let out = capture_e2e::run_ok(&mut a_ns.command(save));
            assert!(
                out.lines().all(|l| l.starts_with('#')),
                "{save}: no rule or chain in the container's namespace:\n{out}"
            );
        }
        let nft = capture_e2e::run_ok(a_ns.command("nft").args(["list", "ruleset"]));
        assert!(
            nft.trim().is_empty(),
            "no nftables table in the container:\n{nft}"
        );

        let any = |port| SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port);
        let to_peer = SocketAddr::new(IpAddr::V4(GATEWAY), PEER_PORT);
        let peer = Listener::spawn(&node, to_peer, "peer");
        let proxy = Listener::spawn_proxy(&a_ns, any(OUTBOUND_PORT), "proxy");
        assert_eq!(podman.connect(&a, None), "proxy");
        let seen = proxy.take_one();
        assert_eq!(seen.original_dst.expect("an original destination"), to_peer);
        // connect4 rewrote the destination to 127.0.0.1 before the route was chosen.
        assert!(seen.peer.ip().is_loopback(), "{}", seen.peer);
        assert!(peer.take_accepted().is_empty(), "captured, not direct");
        assert_eq!(podman.connect(&a, Some("1337:1337")), "peer");
        assert!(proxy.take_accepted().is_empty(), "uid 1337 is never captured");

        drop(proxy);
        podman.ok(&["rm", "--force", "--time", "0", &a.name], &[]);
        assert!(maps.pods().unwrap().is_empty(), "DEL unenrolled the container");
        assert_eq!(maps.pod_entries(cookie).unwrap(), 0);
        assert_eq!(maps.metadata(cookie).unwrap(), None);
        assert!(!maps.inbound_attached(cookie), "no sk_lookup pin left");
        drop(peer);
    }
    drop(v1_parents);
    assert_eq!(
        cgroup_dirs(&cgroup_parent),
        Vec::<PathBuf>::new(),
        "cgroups removed"
    );
    assert_eq!(
        cgroup_dirs(&format!("/{test_cgroup}")),
        std::slice::from_ref(&world.cgroup),
        "only the test cgroup is left, for the harness to remove"
    );
}
