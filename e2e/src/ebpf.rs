//! Test-owned cgroups, bpffs mounts and eBPF installs, and running a test inside the cgroup.
//!
//! The eBPF programs act on sockets by the cgroup of the process that created them, so a test
//! that exercises them must create its sockets from a process inside the test's cgroup. The
//! test process itself never moves (its other tests run elsewhere): [`EbpfWorld::run_in_cgroup`]
//! re-executes the test binary for just the calling test, with the child placed in the cgroup
//! before `exec`, and the test function runs its body there ([`in_cgroup_child`] tells which
//! side it is on).
//!
//! | Helper | What it is | Removed on `Drop` |
//! |---|---|---|
//! | [`TestCgroup`] | `<cgroup2 mount>/capture-test-<pid>-<n>`, or one below a test cgroup ([`TestCgroup::under`]) | the directory (after its processes exited) |
//! | [`TestBpffs`] | a private bpffs instance on `$TMPDIR/capture-test-bpffs-<pid>-<n>` | unmounted, directory removed |
//! | [`EbpfWorld`] | both, with capture's programs installed on the cgroup and pinned in the bpffs | programs uninstalled first |
//! | [`EbpfWorld::empty`] | both, nothing installed: `capture-init --cgroup … --bpffs …` loads the programs | whatever is pinned uninstalled first |

use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{self, Command};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use capture_ebpf::{Node, PinDir};
use nix::mount::{MntFlags, umount2};

use crate::{NETNS_PREFIX, NetNs, run_ok};

/// Set in the child a test re-executes itself as; holds the pin directory of its programs.
pub const CHILD_ENV: &str = "CAPTURE_E2E_EBPF_CHILD";
/// Set in that child too; holds the test cgroup's directory.
pub const CGROUP_ENV: &str = "CAPTURE_E2E_EBPF_CGROUP";

static NEXT: AtomicU32 = AtomicU32::new(0);

fn unique_name() -> String {
    format!(
        "{NETNS_PREFIX}-{}-{}",
        process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A cgroup v2 directory of the test's own, below the cgroup2 mount (found in `/proc/self/mounts`).
#[derive(Debug)]
pub struct TestCgroup {
    path: PathBuf,
}

impl TestCgroup {
    /// Creates `<cgroup2 mount>/capture-test-<pid>-<n>`.
    ///
    /// # Panics
    ///
    /// When no cgroup2 file system is mounted, or the directory cannot be made (needs root).
    #[must_use]
    pub fn new() -> TestCgroup {
        let root = capture_ebpf::cgroup2_root().expect("a mounted cgroup2 hierarchy");
        let path = root.join(unique_name());
        fs::create_dir(&path).unwrap_or_else(|e| panic!("cannot create cgroup {}: {e}", path.display()));
        TestCgroup { path }
    }

    /// Creates `<parent>/capture-test-<pid>-<n>`: a child of a cgroup the test owns (a cgroup
    /// with processes may have children; the new one has none, so it can always be removed).
    ///
    /// # Panics
    ///
    /// When the directory cannot be made.
    #[must_use]
    pub fn under(parent: &Path) -> TestCgroup {
        let path = parent.join(unique_name());
        fs::create_dir(&path).unwrap_or_else(|e| panic!("cannot create cgroup {}: {e}", path.display()));
        TestCgroup { path }
    }

    /// The cgroup's directory.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes `cmd`'s process join this cgroup between `fork` and `exec`, so everything it runs,
    /// and every socket it creates, belongs to the cgroup.
    ///
    /// # Panics
    ///
    /// When `cgroup.procs` cannot be opened.
    pub fn enter_on_exec(&self, cmd: &mut Command) {
        let procs = self.path.join("cgroup.procs");
        let file = OpenOptions::new()
            .write(true)
            .open(&procs)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", procs.display()));
        // SAFETY: the hook runs in the forked child before exec and only calls write(2), which is
        // async-signal-safe; "0" names the writing process. The file stays open in the closure.
        unsafe {
            cmd.pre_exec(move || {
                if libc::write(file.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }

    /// The processes in the cgroup.
    ///
    /// # Panics
    ///
    /// When `cgroup.procs` cannot be read.
    #[must_use]
    pub fn procs(&self) -> Vec<u32> {
        fs::read_to_string(self.path.join("cgroup.procs"))
            .expect("read cgroup.procs")
            .lines()
            .filter_map(|l| l.parse().ok())
            .collect()
    }
}

impl Default for TestCgroup {
    fn default() -> Self {
        TestCgroup::new()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let Self { path } = self;
        // A process that just exited may take a moment to leave the cgroup.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match fs::remove_dir(&*path) {
                Ok(()) => return,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    eprintln!("capture-e2e: cannot remove cgroup {}: {e}", path.display());
                    return;
                }
            }
        }
    }
}

/// A bpffs instance of the test's own, mounted on a fresh directory under `$TMPDIR`.
#[derive(Debug)]
pub struct TestBpffs {
    path: PathBuf,
}

impl TestBpffs {
    /// Mounts a new bpffs on `$TMPDIR/capture-test-bpffs-<pid>-<n>`.
    ///
    /// # Panics
    ///
    /// When the directory cannot be made or the mount fails (needs root).
    #[must_use]
    pub fn new() -> TestBpffs {
        let path = std::env::temp_dir().join(unique_name().replace(NETNS_PREFIX, "capture-test-bpffs"));
        fs::create_dir(&path).unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        let bpffs = TestBpffs { path };
        capture_ebpf::mount_bpffs(&bpffs.path).expect("mount a bpffs for the test");
        bpffs
    }

    /// The mount point.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Everything pinned in it, recursively, as paths relative to the mount point; the
    /// iterator files the kernel puts in every new bpffs (`maps.debug`, `progs.debug`) are left out.
    #[must_use]
    pub fn contents(&self) -> Vec<PathBuf> {
        pinned_in(&self.path)
    }
}

/// Everything pinned in the bpffs mounted on `mount`, as [`TestBpffs::contents`] lists it.
///
/// # Panics
///
/// When the directory cannot be read.
#[must_use]
pub fn pinned_in(mount: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, base: &Path, out: &mut Vec<PathBuf>) {
        for entry in fs::read_dir(dir).expect("read the bpffs") {
            let path = entry.expect("a directory entry").path();
            if dir == base && path.extension().is_some_and(|e| e == "debug") {
                continue;
            }
            out.push(path.strip_prefix(base).expect("below the mount").to_owned());
            if path.is_dir() {
                walk(&path, base, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(mount, mount, &mut out);
    out
}

impl Default for TestBpffs {
    fn default() -> Self {
        TestBpffs::new()
    }
}

impl Drop for TestBpffs {
    fn drop(&mut self) {
        let Self { path } = self;
        if let Err(e) = umount2(path.as_path(), MntFlags::MNT_DETACH) {
            eprintln!("capture-e2e: cannot unmount bpffs {}: {e}", path.display());
        }
        if let Err(e) = fs::remove_dir(&*path) {
            eprintln!("capture-e2e: cannot remove {}: {e}", path.display());
        }
    }
}

/// capture's programs installed on a test cgroup and pinned in a test bpffs.
///
/// Dropping it uninstalls the programs (if [`EbpfWorld::uninstall`] did not already), then
/// removes the bpffs and the cgroup.
#[derive(Debug)]
pub struct EbpfWorld {
    /// Where the programs are pinned (`<bpffs>/capture`).
    pub pin_dir: PathBuf,
    installed: bool,
    // Field order is drop order: the bpffs goes before the cgroup.
    /// The bpffs the programs are pinned in.
    pub bpffs: TestBpffs,
    /// The cgroup the programs are attached to.
    pub cgroup: TestCgroup,
}

impl EbpfWorld {
    /// Creates a cgroup and a bpffs and installs the programs.
    ///
    /// # Panics
    ///
    /// When any step fails; what was made is removed again.
    #[must_use]
    pub fn new() -> EbpfWorld {
        let cgroup = TestCgroup::new();
        let bpffs = TestBpffs::new();
        let pin_dir = bpffs.path().join("capture");
        let mut world = EbpfWorld {
            pin_dir,
            installed: false,
            bpffs,
            cgroup,
        };
        Node::load(world.cgroup.path(), &world.pins()).unwrap_or_else(|e| panic!("install: {}", chain(&e)));
        world.installed = true;
        world
    }

    /// Creates a cgroup and a bpffs and installs nothing: for tests in which `capture-init`
    /// loads the programs itself (`--cgroup`, `--bpffs`). Whatever is pinned in the bpffs when
    /// it is dropped is uninstalled first.
    ///
    /// # Panics
    ///
    /// When the cgroup or the bpffs cannot be made.
    #[must_use]
    pub fn empty() -> EbpfWorld {
        let cgroup = TestCgroup::new();
        let bpffs = TestBpffs::new();
        EbpfWorld {
            pin_dir: bpffs.path().join("capture"),
            installed: false,
            bpffs,
            cgroup,
        }
    }

    /// Opens the installed programs' maps.
    ///
    /// # Panics
    ///
    /// When they cannot be opened.
    #[must_use]
    pub fn node(&self) -> Node {
        Node::open(&self.pins()).unwrap_or_else(|e| panic!("open: {}", chain(&e)))
    }

    /// The pin directory, as capture-ebpf lays it out.
    #[must_use]
    pub fn pins(&self) -> PinDir {
        PinDir::at(&self.pin_dir)
    }

    /// Runs the calling test again in a child process inside the cgroup, where
    /// [`in_cgroup_child`] returns the pin directory, and waits for it.
    ///
    /// # Panics
    ///
    /// When the child cannot be started or fails; the panic carries its output.
    pub fn run_in_cgroup(&self) {
        let test = thread::current()
            .name()
            .expect("libtest names test threads")
            .to_owned();
        let exe = std::env::current_exe().expect("the test binary");
        let mut cmd = Command::new(exe);
        // --include-ignored: a test run with --ignored runs its body in the child too.
        cmd.args([
            test.as_str(),
            "--exact",
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &self.pin_dir)
        .env(CGROUP_ENV, self.cgroup.path());
        self.cgroup.enter_on_exec(&mut cmd);
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("cannot run {test} in a child: {e}"));
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "{test} failed in its cgroup child ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
            out.status
        );
    }

    /// `bpftool cgroup tree <cgroup>`: the programs attached to the cgroup, one per line.
    ///
    /// # Panics
    ///
    /// When bpftool fails.
    #[must_use]
    pub fn attached(&self) -> Vec<String> {
        attached_to(self.cgroup.path())
    }

    /// Uninstalls the programs.
    ///
    /// # Panics
    ///
    /// When uninstalling fails.
    pub fn uninstall(&mut self) {
        if std::mem::take(&mut self.installed) {
            capture_ebpf::unload(&self.pins()).unwrap_or_else(|e| panic!("uninstall: {}", chain(&e)));
        }
    }
}

/// What `bpftool prog show` says of a loaded program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgInfo {
    /// The program's id.
    pub id: u64,
    /// Its type as bpftool names it (`sk_lookup`, `cgroup_sock_addr`, …).
    pub prog_type: String,
    /// How many instructions it has once verified (`bytes_xlated` / 8).
    pub insns: u64,
    /// The ids of the maps it references.
    pub map_ids: Vec<u64>,
}

impl ProgInfo {
    fn from_json(p: &serde_json::Value) -> ProgInfo {
        ProgInfo {
            id: p["id"].as_u64().expect("a program id"),
            prog_type: p["type"].as_str().unwrap_or_default().to_owned(),
            insns: p["bytes_xlated"].as_u64().unwrap_or_default() / 8,
            map_ids: p["map_ids"]
                .as_array()
                .map(|ids| ids.iter().filter_map(serde_json::Value::as_u64).collect())
                .unwrap_or_default(),
        }
    }
}

/// `bpftool -j <args>`, parsed.
fn bpftool_json(args: &[&str]) -> serde_json::Value {
    let out = run_ok(Command::new("bpftool").arg("-j").args(args));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("bpftool {args:?} printed no JSON: {e}: {out}"))
}

/// Every loaded program (`bpftool prog show`).
///
/// # Panics
///
/// When bpftool fails.
#[must_use]
pub fn programs() -> Vec<ProgInfo> {
    bpftool_json(&["prog", "show"])
        .as_array()
        .expect("a list of programs")
        .iter()
        .map(ProgInfo::from_json)
        .collect()
}

/// The program on the link pinned at `pin`.
///
/// # Panics
///
/// When bpftool fails.
#[must_use]
pub fn linked_program(pin: &Path) -> ProgInfo {
    let link = bpftool_json(&["link", "show", "pinned", &pin.display().to_string()]);
    let id = link["prog_id"]
        .as_u64()
        .expect("the link's program id")
        .to_string();
    ProgInfo::from_json(&bpftool_json(&["prog", "show", "id", &id]))
}

/// The id of the map pinned at `pin`.
///
/// # Panics
///
/// When bpftool fails.
#[must_use]
pub fn map_id(pin: &Path) -> u64 {
    bpftool_json(&["map", "show", "pinned", &pin.display().to_string()])["id"]
        .as_u64()
        .expect("a map id")
}

/// `bpftool cgroup tree <cgroup>`: the programs attached to the cgroup, one per line.
///
/// # Panics
///
/// When bpftool fails.
#[must_use]
pub fn attached_to(cgroup: &Path) -> Vec<String> {
    let out = run_ok(Command::new("bpftool").arg("cgroup").arg("tree").arg(cgroup));
    // Besides headers and the cgroup's path, each line is "<prog id> <attach type> <flags> <name>".
    out.lines()
        .filter(|l| {
            l.split_whitespace()
                .next()
                .is_some_and(|id| id.parse::<u32>().is_ok())
        })
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

impl Default for EbpfWorld {
    fn default() -> Self {
        EbpfWorld::new()
    }
}

impl Drop for EbpfWorld {
    fn drop(&mut self) {
        // Installed by the test, or by a capture-init the test ran.
        if (std::mem::take(&mut self.installed) || self.pins().is_loaded())
            && let Err(e) = capture_ebpf::unload(&self.pins())
        {
            eprintln!(
                "capture-e2e: cannot uninstall from {}: {}",
                self.pin_dir.display(),
                chain(&e)
            );
        }
    }
}

/// How many `sk_lookup` programs are attached to the network namespace `ns`
/// (`BPF_PROG_QUERY` with `BPF_SK_LOOKUP` on the namespace).
///
/// # Panics
///
/// When the namespace cannot be opened or the query fails.
#[must_use]
pub fn sk_lookup_programs(ns: &NetNs) -> u32 {
    let netns = fs::File::open(ns.path()).unwrap_or_else(|e| panic!("open {}: {e}", ns.path().display()));
    // query: __u32 target_fd, __u32 attach_type, __u32 query_flags, __u32 attach_flags,
    // __aligned_u64 prog_ids, __u32 prog_cnt; the rest of the 64 bytes zero.
    let mut attr = [0u8; 64];
    attr[0..4].copy_from_slice(&netns.as_raw_fd().to_ne_bytes());
    attr[4..8].copy_from_slice(&36u32.to_ne_bytes()); // BPF_SK_LOOKUP
    // SAFETY: `attr` is a zeroed bpf_attr image with the query's fields set and no pointer
    // (prog_ids 0: only the count is asked for); its size is passed along.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, 16, attr.as_mut_ptr(), attr.len()) }; // BPF_PROG_QUERY
    assert!(
        rc == 0,
        "BPF_PROG_QUERY(sk_lookup) on {} failed: {}",
        ns.name(),
        io::Error::last_os_error()
    );
    u32::from_ne_bytes(attr[24..28].try_into().expect("four bytes"))
}

/// In the child made by [`EbpfWorld::run_in_cgroup`]: the pin directory of the programs.
#[must_use]
pub fn in_cgroup_child() -> Option<PathBuf> {
    std::env::var_os(CHILD_ENV).map(|dir: OsString| PathBuf::from(dir))
}

/// The test-owned paths a child made by [`EbpfWorld::run_in_cgroup`] works with.
#[derive(Debug, Clone)]
pub struct ChildWorld {
    /// The cgroup the child runs in (and the programs are attached to).
    pub cgroup: PathBuf,
    /// The bpffs mount.
    pub bpffs: PathBuf,
    /// The pin directory under it (`<bpffs>/capture`).
    pub pin_dir: PathBuf,
}

/// In the child made by [`EbpfWorld::run_in_cgroup`]: its cgroup, bpffs and pin directory.
#[must_use]
pub fn child_world() -> Option<ChildWorld> {
    let pin_dir = in_cgroup_child()?;
    let cgroup = PathBuf::from(std::env::var_os(CGROUP_ENV)?);
    let bpffs = pin_dir.parent()?.to_owned();
    Some(ChildWorld {
        cgroup,
        bpffs,
        pin_dir,
    })
}

pub use capture_core::chain;
