//! How a test runs `capture-init`: the default sidecar command plus changes, on a backend, and how
//! the run ended.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

#[cfg(feature = "ebpf")]
use capture_e2e::ebpf;
use capture_e2e::{Family, Flavor, NetNs, SIDECAR_ARGS};

use crate::support::assert_no_capture;

/// The binary under test.
pub(crate) const CAPTURE_INIT: &str = env!("CARGO_BIN_EXE_capture-init");

/// Which backend a scenario row runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    /// `--force-iptables-version legacy|nft` (the default backend).
    Iptables(Flavor),
    /// `--native-nftables`: Istio's nftables rule set, written over netlink.
    Nftables,
    /// `--backend ebpf --cgroup <test cgroup> --bpffs <test bpffs>`, in an
    /// [`ebpf_row`](crate::support::ebpf_row).
    #[cfg(feature = "ebpf")]
    Ebpf,
}

impl Backend {
    pub(crate) fn is_ebpf(self) -> bool {
        match self {
            Backend::Iptables(_) | Backend::Nftables => false,
            #[cfg(feature = "ebpf")]
            Backend::Ebpf => true,
        }
    }
}

/// How `capture-init` is pointed at the pod's network namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Via {
    /// `--network-namespace /run/netns/<pod>`, started from the test's namespace (CNI mode's way).
    Flag,
    /// Started inside the pod's namespace (the init container's way).
    Enter,
}

/// One `capture-init` invocation for a pod: the default sidecar command plus changes.
#[derive(Debug, Clone)]
pub(crate) struct CaptureInit<'a> {
    pod: &'a NetNs,
    via: Via,
    args: Vec<(String, Option<String>)>,
    /// A directory put first in `PATH`.
    path_first: Option<PathBuf>,
}

impl<'a> CaptureInit<'a> {
    /// The default sidecar command for `pod` in `flavor`, with `--dual-stack` for [`Family::V6`] (the
    /// pod has both families' addresses, so that is what turns IPv6 on).
    pub(crate) fn sidecar(pod: &'a NetNs, flavor: Flavor, family: Family) -> Self {
        Self::new(pod, Backend::Iptables(flavor), family)
    }

    /// The default sidecar command for `pod` on `backend`; see [`CaptureInit::sidecar`]. The eBPF
    /// backend is pointed at the test-owned cgroup and bpffs of the
    /// [`ebpf_row`](crate::support::ebpf_row) it runs in.
    pub(crate) fn new(pod: &'a NetNs, backend: Backend, family: Family) -> Self {
        let args: Vec<(String, Option<String>)> = SIDECAR_ARGS
            .chunks(2)
            .map(|pair| (pair[0].to_owned(), Some(pair[1].to_owned())))
            .collect();
        let init = Self {
            pod,
            via: Via::Flag,
            args,
            path_first: None,
        };
        let init = match backend {
            Backend::Iptables(flavor) => init.set("--force-iptables-version", flavor.as_str()),
            Backend::Nftables => init.switch("--native-nftables"),
            #[cfg(feature = "ebpf")]
            Backend::Ebpf => {
                let world = ebpf::child_world().expect("eBPF rows run inside ebpf_row's cgroup child");
                init.ebpf_at(&world.cgroup, &world.bpffs)
            }
        };
        match family {
            Family::V4 => init,
            Family::V6 => init.switch("--dual-stack"),
        }
    }

    /// A large TPROXY apply, which a kill can land in the middle of: `-m TPROXY` with 8,000
    /// excluded CIDRs.
    pub(crate) fn large_tproxy(self) -> Self {
        let cidrs: Vec<String> = (0..8000)
            .map(|i| format!("10.{}.{}.0/24", 64 + i / 256, i % 256))
            .collect();
        self.set("-m", "TPROXY").set("-x", &cidrs.join(","))
    }

    /// `--backend ebpf` with the programs attached to `cgroup` and pinned in `bpffs`.
    #[cfg(feature = "ebpf")]
    pub(crate) fn ebpf_at(self, cgroup: &Path, bpffs: &Path) -> Self {
        self.set("--backend", "ebpf")
            .set("--cgroup", &cgroup.display().to_string())
            .set("--bpffs", &bpffs.display().to_string())
    }

    /// Sets `flag` to `value`, replacing the base command's value if it has one.
    pub(crate) fn set(mut self, flag: &str, value: &str) -> Self {
        let value = Some(value.to_owned());
        match self.args.iter_mut().find(|(f, _)| f == flag) {
            Some((_, v)) => *v = value,
            None => self.args.push((flag.to_owned(), value)),
        }
        self
    }

    /// Removes `flag` (and its value), so that its default applies.
    #[cfg(feature = "ebpf")]
    pub(crate) fn unset(mut self, flag: &str) -> Self {
        self.args.retain(|(f, _)| f != flag);
        self
    }

    /// Adds a switch such as `--reconcile`.
    pub(crate) fn switch(mut self, flag: &str) -> Self {
        self.args.push((flag.to_owned(), None));
        self
    }

    pub(crate) fn via(mut self, via: Via) -> Self {
        self.via = via;
        self
    }

    pub(crate) fn path_first(mut self, dir: &Path) -> Self {
        self.path_first = Some(dir.to_owned());
        self
    }

    /// Runs the binary with a clean environment (only `PATH`), so nothing on the machine changes the
    /// result. A run that changed the pod's capture is recorded for `explain`'s checks
    /// ([`installed`]).
    pub(crate) fn run(&self) -> Run {
        let run = run_clean(self.command(), self.path_first.as_deref());
        self.record(&run);
        run
    }

    /// Records what a run left in the pod: its flags, and whether capture is there.
    fn record(&self, run: &Run) {
        let has = |flag: &str| {
            self.args
                .iter()
                .any(|(f, v)| f == flag && v.as_deref().is_none_or(|v| v != "false"))
        };
        if has("--dry-run") || has("-n") || has("--skip-rule-apply") {
            return;
        }
        let mut map = INSTALLED
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // A failed run leaves things as they were: nothing, when no run succeeded before.
        let present = match (run.status.success(), map.contains_key(self.pod.name())) {
            (true, _) => !has("--cleanup-only"),
            (false, false) => false,
            (false, true) => return,
        };
        let args = self
            .args
            .iter()
            .filter(|(f, _)| f != "--cleanup-only" && f != "--reconcile" && f != "--force-apply")
            .cloned()
            .collect();
        let addrs = self
            .pod
            .ip(&["-o", "addr", "show"])
            .split_whitespace()
            .filter_map(|w| w.split_once('/').and_then(|(a, _)| a.parse().ok()))
            .collect();
        let installed = Installed { args, present, addrs };
        map.insert(self.pod.name().to_owned(), installed);
    }

    /// `capture-init status --network-namespace <pod>` (or `capture-init status` in the pod, with
    /// [`Via::Enter`]) with `extra` (such as `--output json`):
    /// with `configuration`, this invocation's flags too (the capture to compare with), else only
    /// where the eBPF programs are pinned (`--bpffs`, for an eBPF row).
    pub(crate) fn status(&self, configuration: bool, extra: &[&str]) -> Run {
        let mut cmd = match self.via {
            Via::Flag => {
                let mut cmd = Command::new(CAPTURE_INIT);
                cmd.arg("status").arg("--network-namespace").arg(self.pod.path());
                cmd
            }
            Via::Enter => {
                let mut cmd = self.pod.command(CAPTURE_INIT);
                cmd.arg("status");
                cmd
            }
        };
        cmd.args(extra);
        for (flag, value) in &self.args {
            if configuration || flag == "--bpffs" {
                cmd.arg(flag);
                if let Some(value) = value {
                    cmd.arg(value);
                }
            }
        }
        run_clean(cmd, self.path_first.as_deref())
    }

    /// The command [`CaptureInit::run`] runs, environment cleaned, to start it some other way.
    pub(crate) fn command(&self) -> Command {
        let cmd = match self.via {
            Via::Flag => {
                let mut cmd = Command::new(CAPTURE_INIT);
                cmd.arg("--network-namespace").arg(self.pod.path());
                cmd
            }
            Via::Enter => self.pod.command(CAPTURE_INIT),
        };
        let mut cmd = cmd;
        for (flag, value) in &self.args {
            cmd.arg(flag);
            if let Some(value) = value {
                cmd.arg(value);
            }
        }
        clean_env(&mut cmd, self.path_first.as_deref());
        cmd
    }
}

/// What the last successful run for a pod's namespace left there: the flags `explain` is given
/// to predict where that pod's connections land.
#[derive(Debug, Clone)]
pub(crate) struct Installed {
    /// The run's flags (without `--cleanup-only`, `--reconcile`, `--force-apply`).
    pub(crate) args: Vec<(String, Option<String>)>,
    /// Whether capture is there (false after `--cleanup-only`).
    pub(crate) present: bool,
    /// The pod's addresses when it ran.
    pub(crate) addrs: Vec<std::net::IpAddr>,
}

/// [`Installed`] by pod namespace name, for this test process.
static INSTALLED: std::sync::Mutex<std::collections::BTreeMap<String, Installed>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// What capture-init last installed in the namespace named `pod`.
pub(crate) fn installed(pod: &str) -> Option<Installed> {
    let map = INSTALLED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    map.get(pod).cloned()
}

/// The pod (by namespace name) that holds `addr`, with what was installed there.
pub(crate) fn installed_holding(addr: std::net::IpAddr) -> Option<(String, Installed)> {
    let map = INSTALLED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    map.iter()
        .find(|(_, i)| i.addrs.contains(&addr))
        .map(|(name, i)| (name.clone(), i.clone()))
}

/// Gives `cmd` a clean environment: only `PATH`, with `path_first` first.
pub(crate) fn clean_env(cmd: &mut Command, path_first: Option<&Path>) {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    let path = match path_first {
        Some(dir) => {
            std::env::join_paths(std::iter::once(dir.to_owned()).chain(std::env::split_paths(&path)))
                .expect("PATH entries without ':'")
        }
        None => path,
    };
    cmd.env_clear().env("PATH", path);
}

/// Runs `cmd` with a clean environment (only `PATH`, with `path_first` first).
pub(crate) fn run_clean(mut cmd: Command, path_first: Option<&Path>) -> Run {
    clean_env(&mut cmd, path_first);
    let out = cmd.output();
    finished(&cmd, out)
}

/// Races `first` eight times against a second run, with the same flags or with another `-p` in
/// turn, on `backend`: in each round at least one run succeeds, a rerun of each that did says
/// every line of `in_place`, a run that lost says `loser_says` (its configuration differs from
/// the winner's), and a cleanup leaves nothing of capture's.
pub(crate) fn assert_concurrent_runs_serialise(
    first: &CaptureInit,
    backend: Backend,
    in_place: &[&str],
    loser_says: &str,
) {
    for round in 0..8 {
        let second = if round % 2 == 0 {
            first.clone()
        } else {
            first.clone().set("-p", "15002")
        };
        let (ra, rb) = race(first, &second);
        let winners: Vec<&CaptureInit> = [(first, &ra), (&second, &rb)]
            .into_iter()
            .filter(|(_, r)| r.status.success())
            .map(|(init, _)| init)
            .collect();
        assert!(
            !winners.is_empty(),
            "round {round}: both failed:\n{}\n{}",
            ra.stderr,
            rb.stderr
        );
        for init in &winners {
            let rerun = init.run();
            rerun.ok();
            for line in in_place {
                rerun.says(line);
            }
        }
        if winners.len() == 1 {
            let loser = if ra.status.success() { &rb } else { &ra };
            loser.code(1).says(loser_says);
        }
        first.clone().switch("--cleanup-only").run().ok();
        assert_no_capture(first.pod, backend);
    }
}

/// Starts `a` and `b` at the same moment and waits for both: how the lock tests race two runs.
pub(crate) fn race(a: &CaptureInit, b: &CaptureInit) -> (Run, Run) {
    let (mut a, mut b) = (a.command(), b.command());
    std::thread::scope(|s| {
        let ra = s.spawn(|| {
            let out = a.output();
            finished(&a, out)
        });
        let rb = s.spawn(|| {
            let out = b.output();
            finished(&b, out)
        });
        (ra.join().unwrap(), rb.join().unwrap())
    })
}

/// A [`Run`] from a finished command's output.
pub(crate) fn finished(cmd: &Command, out: std::io::Result<std::process::Output>) -> Run {
    let out = out.unwrap_or_else(|e| panic!("cannot run {CAPTURE_INIT}: {e}"));
    Run {
        command: format!("{cmd:?}"),
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `capture-init ebpf <args>`: a node command of the eBPF backend.
#[cfg(feature = "ebpf")]
pub(crate) fn ebpf_node(args: &[&str]) -> Run {
    let mut cmd = Command::new(CAPTURE_INIT);
    cmd.arg("ebpf").args(args);
    let run = run_clean(cmd, None);
    if args.first() == Some(&"unload") && run.status.success() {
        // No pod of the node is captured any more.
        let mut map = INSTALLED
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for installed in map.values_mut() {
            if installed
                .args
                .iter()
                .any(|(f, v)| f == "--backend" && v.as_deref() == Some("ebpf"))
            {
                installed.present = false;
            }
        }
    }
    run
}

/// How a `capture-init` run ended.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) command: String,
    pub(crate) status: ExitStatus,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Run {
    /// Asserts the exit code.
    #[track_caller]
    pub(crate) fn code(&self, code: i32) -> &Self {
        assert_eq!(
            self.status.code(),
            Some(code),
            "{} ended with {}\nstdout:\n{}stderr:\n{}",
            self.command,
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }

    /// Asserts exit code 0.
    #[track_caller]
    pub(crate) fn ok(&self) -> &Self {
        self.code(0)
    }

    /// Asserts that stderr contains `text`.
    #[track_caller]
    pub(crate) fn says(&self, text: &str) -> &Self {
        assert!(
            self.stderr.contains(text),
            "{}: stderr lacks {text:?}:\n{}",
            self.command,
            self.stderr
        );
        self
    }

    /// Asserts that the run failed with one clear line: exactly one error, the last line, and
    /// no warning (the lines before it are the log of the configuration).
    #[cfg(feature = "ebpf")]
    #[track_caller]
    pub(crate) fn one_error_line(&self) -> &Self {
        let lines: Vec<&str> = self.stderr.lines().collect();
        let errors = lines.iter().filter(|l| l.contains("\terror\t")).count();
        assert!(
            errors == 1
                && lines.last().is_some_and(|l| l.contains("\terror\t"))
                && !self.stderr.contains("\twarn\t"),
            "{}: one error line expected, last:\n{}",
            self.command,
            self.stderr
        );
        self
    }

    /// Asserts that stderr does not contain `text`.
    #[cfg(feature = "ebpf")]
    #[track_caller]
    pub(crate) fn never_says(&self, text: &str) -> &Self {
        assert!(
            !self.stderr.contains(text),
            "{}: stderr has {text:?}:\n{}",
            self.command,
            self.stderr
        );
        self
    }
}
