//! `capture-bench`: the data path under each capture backend, side by side (issue 14).
//!
//! Every mode gets a world of its own: a pod namespace and a server namespace joined by a veth
//! pair, with no route anywhere else ([`Topology`]); the server (an echo server on `:8080`, a
//! stream sink on `:8081`) runs in the server namespace, the proxy and the clients in the pod, in
//! a process of their own per measurement (`capture-bench worker`, see `worker.rs`).
//!
//! | mode       | what the client does                                                          |
//! |------------|-------------------------------------------------------------------------------|
//! | `direct`   | connects to the server; no capture, no proxy on the way                       |
//! | `explicit` | connects to the proxy's plain listener, which relays to the server            |
//! | `legacy`, `nft` | connects to the server; iptables-legacy / iptables-nft `REDIRECT` sends it to the proxy |
//! | `native`   | the same, with capture-init's native nftables backend                         |
//! | `ebpf`     | the same, with the eBPF backend (node programs in a cgroup and bpffs of the bench's own; the clients and proxy run in that cgroup) |
//! | `explicit-ebpf` | as `explicit`, from a pod enrolled in the eBPF backend: the programs run on every connection, none is captured |
//! | `ebpf-skmsg` | the same, on a second eBPF node (cgroup and bpffs of its own) loaded with `--sk-msg`: the app's and the proxy's sockets are spliced |
//!
//! Capture is applied by the real `capture-init` binary (`--capture-init`) with Istio's default
//! sidecar flags. Every process is pinned to one CPU (`--cpu`, default the last). Measurements
//! run round-robin: every repetition measures each metric in every mode before the next.
//! Every captured connection's original destination is checked by the proxy; a mismatch, a
//! connection that capture should have sent to the proxy and did not (or the reverse), or a
//! failed connection fails the run. The result is JSON on stdout; progress goes to stderr.
//!
//! Each pod namespace lets TIME_WAIT sockets be reused (`net.ipv4.tcp_tw_reuse=1`), uses the
//! ports 1024–65000 and, where capture made it use conntrack, forgets closed connections after
//! 2 s (`nf_conntrack_tcp_timeout_time_wait`): thousands of short connections a second would
//! otherwise run out of ports, and fill the node's conntrack table. The eBPF mode's programs
//! are loaded into `<cgroup2 root>/capture-bench-<pid>` and a bpffs on
//! `$TMPDIR/capture-bench-bpffs-<pid>` (the `ebpf-skmsg` mode's into the same names ending in
//! `-skmsg`: the setting is node-wide); everything is removed at the end, also on failure and
//! on SIGINT, SIGTERM or SIGHUP (after the current measurement).
//!
//! ```text
//! capture-bench datapath --capture-init PATH [--modes direct,explicit,legacy,nft,native,ebpf,ebpf-skmsg,explicit-ebpf]
//!     [--metrics cps1,cps4,latency,stream] [--runs 5] [--duration 1] [--count N] [--cpu N]
//! capture-bench scale --capture-init PATH [--modes legacy,nft,native,ebpf]
//!     [--excluded 1,100,1000,5000] [--runs 5] [--duration 1] [--count N] [--cpu N]
//! ```

mod server;
mod worker;

use std::fs;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use capture_e2e::{Family, NetNs, SIDECAR_ARGS, Topology};
use clap::Parser;
use serde_json::{Value, json};

use crate::server::{ECHO_PORT, SINK_PORT, Server};
use crate::worker::{Metric, WorkerArgs};

/// Set by SIGINT, SIGTERM and SIGHUP: the run stops after the current measurement and cleans up.
static STOP: AtomicBool = AtomicBool::new(false);

#[derive(Debug, Parser)]
#[command(about = "Data-path benchmarks of the capture backends, in namespaces of their own")]
enum Cli {
    /// Connections/s, latency and stream throughput in every mode.
    Datapath(DatapathArgs),
    /// Captured connections/s with 1 to 5,000 excluded CIDRs (`-x`) per backend.
    Scale(ScaleArgs),
    /// One measurement in the current namespace (started by the other commands).
    #[command(hide = true)]
    Worker(WorkerArgs),
}

#[derive(Debug, clap::Args)]
struct Common {
    /// The capture-init binary that applies capture (built with the `ebpf` feature for the
    /// eBPF mode).
    #[arg(long)]
    capture_init: PathBuf,
    /// Repetitions of every measurement; the tables show their medians.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Seconds each measurement lasts.
    #[arg(long, default_value_t = 1.0)]
    duration: f64,
    /// A fixed amount of work per measurement instead of a duration: connections, round trips
    /// or 128 KiB chunks.
    #[arg(long)]
    count: Option<u64>,
    /// The CPU every process is pinned to (default: the last one).
    #[arg(long)]
    cpu: Option<usize>,
    /// Test only: the proxy expects the server's port + 1, so every captured connection is a
    /// mismatch and the run must fail.
    #[arg(long, hide = true)]
    wrong_expectation: bool,
}

#[derive(Debug, clap::Args)]
struct DatapathArgs {
    #[command(flatten)]
    common: Common,
    /// The modes, in the order of the tables.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "direct,explicit,legacy,nft,native,ebpf,ebpf-skmsg,explicit-ebpf"
    )]
    modes: Vec<Mode>,
    /// The metrics.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "cps1,cps4,latency,stream"
    )]
    metrics: Vec<Metric>,
    /// After the repetitions, one more 1-client connection measurement in each eBPF mode with
    /// the kernel counting the programs' runs and run time (`BPF_ENABLE_STATS`, which costs
    /// two clock reads a run, hence not during the others): the runs and nanoseconds of each
    /// program per connection.
    #[arg(long)]
    program_costs: bool,
}

#[derive(Debug, clap::Args)]
struct ScaleArgs {
    #[command(flatten)]
    common: Common,
    /// The capture backends.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "legacy,nft,native,ebpf"
    )]
    modes: Vec<Mode>,
    /// How many CIDRs each is given with `-x` (/32s in 172.16.0.0/12, none of them the server).
    #[arg(long, value_delimiter = ',', default_value = "1,100,1000,5000")]
    excluded: Vec<usize>,
    /// The metric.
    #[arg(long, value_enum, default_value = "cps1")]
    metric: Metric,
}

/// How the client reaches the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Mode {
    Direct,
    Explicit,
    Legacy,
    Nft,
    Native,
    Ebpf,
    /// The eBPF mode on a second node (cgroup and bpffs of its own) loaded with `--sk-msg`.
    EbpfSkmsg,
    /// The proxy addressed explicitly from a pod enrolled in the eBPF backend: every program
    /// runs on the connections, none is captured. Against `explicit`, what the programs' hooks
    /// cost; against `ebpf`, what capturing costs on top.
    ExplicitEbpf,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::Explicit => "explicit",
            Mode::Legacy => "legacy",
            Mode::Nft => "nft",
            Mode::Native => "native",
            Mode::Ebpf => "ebpf",
            Mode::EbpfSkmsg => "ebpf-skmsg",
            Mode::ExplicitEbpf => "explicit-ebpf",
        }
    }

    /// Whether the proxy should see the clients' connections as captured.
    fn captured(self) -> bool {
        !matches!(self, Mode::Direct | Mode::Explicit | Mode::ExplicitEbpf)
    }

    /// Whether the clients address the proxy's plain listener.
    fn explicit(self) -> bool {
        matches!(self, Mode::Explicit | Mode::ExplicitEbpf)
    }

    /// Whether the pod is enrolled in the node's eBPF programs (and the workers join their
    /// cgroup).
    fn ebpf(self) -> bool {
        matches!(self, Mode::Ebpf | Mode::EbpfSkmsg | Mode::ExplicitEbpf)
    }
}

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("{step}: {source}")]
    Io { step: String, source: io::Error },
    #[error("capture-init ({mode}) failed with {status}: {stderr}")]
    Apply {
        mode: &'static str,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("{mode} {metric}: the worker failed with {status}: {detail}")]
    Worker {
        mode: String,
        metric: &'static str,
        status: std::process::ExitStatus,
        detail: String,
    },
    #[error("{mode} {metric}: {detail}")]
    Check {
        mode: String,
        metric: &'static str,
        detail: String,
    },
    #[error("interrupted")]
    Interrupted,
}

fn io_step(step: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let step = step.into();
    move |source| Error::Io { step, source }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli {
        Cli::Worker(args) => worker::run(args).map_err(io_step("worker")),
        Cli::Datapath(args) => orchestrate(&args.common, || datapath(args)),
        Cli::Scale(args) => orchestrate(&args.common, || scale(args)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("capture-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Pins the process, catches the signals that would skip the cleanup, runs `section` and
/// prints its JSON.
fn orchestrate(common: &Common, section: impl FnOnce() -> Result<Value, Error>) -> Result<(), Error> {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(signal, on_signal as *const () as libc::sighandler_t) };
    }
    // Before any thread starts: every thread and child inherits the calling thread's mask.
    let cpus = thread::available_parallelism().map_or(1, usize::from);
    let cpu = common.cpu.unwrap_or(cpus - 1);
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu)
        .and_then(|()| nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set))
        .map_err(|e| io_step(format!("pin to CPU {cpu}"))(e.into()))?;
    let mut out = section()?;
    out["cpu"] = json!(cpu);
    out["runs"] = json!(common.runs);
    out["duration_s"] = json!(common.duration);
    out["count"] = json!(common.count);
    println!("{out}");
    Ok(())
}

/// The eBPF backend's node programs, loaded into a cgroup and a bpffs of the bench's own;
/// unloaded, unmounted and removed on `Drop`.
#[derive(Debug)]
struct EbpfNode {
    capture_init: PathBuf,
    cgroup: PathBuf,
    bpffs: PathBuf,
    mounted: bool,
}

impl EbpfNode {
    /// Loads a node; with `sk_msg`, with `--sk-msg` (its cgroup and bpffs names end in
    /// `-skmsg`).
    fn load(capture_init: &Path, sk_msg: bool) -> Result<EbpfNode, Error> {
        let mounts = fs::read_to_string("/proc/self/mounts").map_err(io_step("read /proc/self/mounts"))?;
        let root = mounts
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.get(2) == Some(&"cgroup2"))
            .and_then(|f| f.get(1).map(PathBuf::from))
            .ok_or_else(|| io_step("find the cgroup2 mount")(io::ErrorKind::NotFound.into()))?;
        let pid = std::process::id();
        let tag = if sk_msg { "-skmsg" } else { "" };
        let cgroup = root.join(format!("capture-bench-{pid}{tag}"));
        let bpffs = std::env::temp_dir().join(format!("capture-bench-bpffs-{pid}{tag}"));
        fs::create_dir(&cgroup).map_err(io_step(format!("create cgroup {}", cgroup.display())))?;
        let mut node = EbpfNode {
            capture_init: capture_init.to_owned(),
            cgroup,
            bpffs,
            mounted: false,
        };
        fs::create_dir(&node.bpffs).map_err(io_step(format!("create {}", node.bpffs.display())))?;
        nix::mount::mount(
            Some("bpf"),
            &node.bpffs,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|e| io_step(format!("mount a bpffs on {}", node.bpffs.display()))(e.into()))?;
        node.mounted = true;
        let mut load = Command::new(capture_init);
        load.args(["ebpf", "load", "--cgroup"])
            .arg(&node.cgroup)
            .arg("--bpffs")
            .arg(&node.bpffs);
        if sk_msg {
            load.arg("--sk-msg");
        }
        run_capture_init(&mut load, "ebpf load")?;
        Ok(node)
    }

    /// What `capture-init ebpf stats` prints for this node.
    fn stats(&self) -> Result<String, Error> {
        let out = Command::new(&self.capture_init)
            .args(["ebpf", "stats", "--bpffs"])
            .arg(&self.bpffs)
            .output()
            .map_err(io_step("run capture-init ebpf stats"))?;
        if !out.status.success() {
            return Err(Error::Apply {
                mode: "ebpf stats",
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Each program's runs and run time so far, from `capture-init ebpf stats`.
    fn costs(&self) -> Result<std::collections::BTreeMap<String, (u64, u64)>, Error> {
        let mut costs = std::collections::BTreeMap::new();
        for line in self.stats()?.lines() {
            if let [
                "program",
                name,
                "instances",
                _,
                "runs",
                runs,
                "run_time_ns",
                time,
                ..,
            ] = line.split_whitespace().collect::<Vec<_>>().as_slice()
                && let (Ok(runs), Ok(time)) = (runs.parse(), time.parse())
            {
                costs.insert((*name).to_owned(), (runs, time));
            }
        }
        Ok(costs)
    }

    /// The node's `spliced_sockets` counter (`capture-init ebpf stats`).
    fn spliced_sockets(&self) -> Result<u64, Error> {
        let stdout = self.stats()?;
        stdout
            .lines()
            .find_map(|l| l.strip_prefix("spliced_sockets "))
            .and_then(|n| n.trim().parse().ok())
            .ok_or_else(|| Error::Check {
                mode: Mode::EbpfSkmsg.name().to_owned(),
                metric: "stats",
                detail: format!("no spliced_sockets in capture-init ebpf stats: {stdout}"),
            })
    }

    /// `--backend ebpf` and where the programs are.
    fn args(&self) -> Vec<String> {
        vec![
            "--backend".into(),
            "ebpf".into(),
            "--cgroup".into(),
            self.cgroup.display().to_string(),
            "--bpffs".into(),
            self.bpffs.display().to_string(),
        ]
    }
}

impl Drop for EbpfNode {
    fn drop(&mut self) {
        if self.mounted {
            let unload = Command::new(&self.capture_init)
                .args(["ebpf", "unload", "--bpffs"])
                .arg(&self.bpffs)
                .output();
            if !unload.as_ref().is_ok_and(|o| o.status.success()) {
                eprintln!(
                    "capture-bench: cannot unload the eBPF programs from {}",
                    self.bpffs.display()
                );
            }
            if let Err(e) = nix::mount::umount2(&self.bpffs, nix::mount::MntFlags::MNT_DETACH) {
                eprintln!("capture-bench: cannot unmount {}: {e}", self.bpffs.display());
            }
        }
        let _ = fs::remove_dir(&self.bpffs);
        // The workers that were in it may take a moment to leave.
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Err(e) = fs::remove_dir(&self.cgroup) {
            if e.raw_os_error() != Some(libc::EBUSY) || Instant::now() > deadline {
                eprintln!(
                    "capture-bench: cannot remove cgroup {}: {e}",
                    self.cgroup.display()
                );
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

fn run_capture_init(cmd: &mut Command, mode: &'static str) -> Result<(), Error> {
    let out = cmd
        .output()
        .map_err(io_step(format!("run {}", cmd.get_program().display())))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    Err(Error::Apply {
        mode,
        status: out.status,
        stderr: stderr.lines().last().unwrap_or("").to_owned(),
    })
}

/// One mode's world: its namespaces, its server and the capture applied in its pod.
#[derive(Debug)]
struct World {
    label: String,
    mode: Mode,
    /// Held for its listeners' threads; dropped before the namespaces.
    _server: Server,
    topology: Topology,
    /// The eBPF mode's cgroup, which the workers join.
    cgroup: Option<PathBuf>,
}

impl World {
    fn new(common: &Common, mode: Mode, excluded: usize, ebpf: Option<&EbpfNode>) -> Result<World, Error> {
        let topology = Topology::new();
        let server_ip = topology.peer_ip(Family::V4);
        let server = Server::start(&topology.peer, server_ip).map_err(io_step("start the server"))?;
        let pod = &topology.pod;
        // Many short connections from one address to one server: TIME_WAIT sockets may be
        // reused, and there are ports enough (both per namespace).
        set_sysctl(pod, "net/ipv4/tcp_tw_reuse", "1")?;
        set_sysctl(pod, "net/ipv4/ip_local_port_range", "1024 65000")?;
        apply(common, pod, mode, excluded, ebpf)?;
        let cgroup = ebpf.filter(|_| mode.ebpf()).map(|node| node.cgroup.clone());
        // Conntrack keeps a closed connection for 120 s by default; at thousands of connections
        // a second that fills the (node-wide) table. Where capture made the pod use conntrack,
        // closed connections are forgotten after 2 s.
        let time_wait = "net/netfilter/nf_conntrack_tcp_timeout_time_wait";
        if pod.run(|| Path::new("/proc/sys").join(time_wait).exists()) {
            set_sysctl(pod, time_wait, "2")?;
        }
        let label = if excluded > 0 {
            format!("{} -x {excluded}", mode.name())
        } else {
            mode.name().to_owned()
        };
        Ok(World {
            label,
            mode,
            _server: server,
            topology,
            cgroup,
        })
    }

    fn target(&self, metric: Metric) -> SocketAddr {
        let port = if metric == Metric::Stream {
            SINK_PORT
        } else {
            ECHO_PORT
        };
        self.topology.peer_addr(Family::V4, port)
    }

    /// Runs one measurement in a worker process and checks what its proxy saw.
    fn measure(&self, common: &Common, metric: Metric) -> Result<Value, Error> {
        if STOP.load(Ordering::SeqCst) {
            return Err(Error::Interrupted);
        }
        let target = self.target(metric);
        let expect = if common.wrong_expectation {
            SocketAddr::new(target.ip(), target.port() + 1)
        } else {
            target
        };
        let exe = std::env::current_exe().map_err(io_step("find the bench's own binary"))?;
        let mut cmd = self.topology.pod.command(exe);
        cmd.args(["worker", "--metric", metric.name(), "--duration"])
            .arg(common.duration.to_string())
            .arg("--target")
            .arg(target.to_string())
            .arg("--expect")
            .arg(expect.to_string());
        if self.mode.explicit() {
            cmd.arg("--explicit");
        }
        if let Some(count) = common.count {
            cmd.arg("--count").arg(count.to_string());
        }
        if let Some(cgroup) = &self.cgroup {
            enter_on_exec(&mut cmd, cgroup)?;
        }
        // SAFETY: prctl(2) is async-signal-safe; the worker dies with the bench.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        // The server's threads are this process's, idle between measurements: its CPU time
        // over the worker's run is the server's share of the connections' cost.
        let server_before = worker::cpu_time_us();
        let out = cmd.output().map_err(io_step("run the worker"))?;
        let server_cpu_us = worker::cpu_time_us()
            .zip(server_before)
            .map(|(after, before)| after.saturating_sub(before));
        let fail = |detail: String| Error::Worker {
            mode: self.label.clone(),
            metric: metric.name(),
            status: out.status,
            detail,
        };
        if !out.status.success() {
            return Err(fail(String::from_utf8_lossy(&out.stderr).trim().to_owned()));
        }
        let seen: Value = serde_json::from_slice(&out.stdout).map_err(|e| {
            fail(format!(
                "no JSON on stdout ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            ))
        })?;
        self.check(metric, expect, &seen)?;
        let mut seen = seen;
        seen["server_cpu_us"] = json!(server_cpu_us);
        Ok(seen)
    }

    fn check(&self, metric: Metric, expect: SocketAddr, seen: &Value) -> Result<(), Error> {
        let n = |key: &str| seen[key].as_u64().unwrap_or(u64::MAX);
        // Mismatches first: the proxy closes those connections, so they fail as well.
        let problem = if n("mismatches") > 0 {
            Some(format!(
                "{} of {} captured connections had an original destination other than the expected {expect} (first: {})",
                n("mismatches"),
                n("captured"),
                seen["first_mismatch"].as_str().unwrap_or("?")
            ))
        } else if n("errors") > 0 {
            Some(format!(
                "{} of {} connections failed: {}",
                n("errors"),
                n("connections"),
                seen["error"].as_str().unwrap_or("")
            ))
        } else if n("proxy_errors") > 0 {
            Some(format!(
                "the proxy failed to relay {} connections",
                n("proxy_errors")
            ))
        } else {
            let (captured, explicit) = match self.mode {
                Mode::Direct => (0, 0),
                m if m.explicit() => (0, n("connections")),
                _ => (n("connections"), 0),
            };
            (n("captured") != captured || n("explicit") != explicit).then(|| {
                format!(
                    "the proxy saw {} captured and {} explicit connections of {}, expected {captured} and {explicit}",
                    n("captured"),
                    n("explicit"),
                    n("connections")
                )
            })
        };
        problem.map_or(Ok(()), |detail| {
            Err(Error::Check {
                mode: self.label.clone(),
                metric: metric.name(),
                detail,
            })
        })
    }
}

/// Writes `value` to `/proc/sys/<key>` in `ns`.
fn set_sysctl(ns: &NetNs, key: &str, value: &str) -> Result<(), Error> {
    ns.run(|| fs::write(Path::new("/proc/sys").join(key), value))
        .map_err(io_step(format!("set {key} in {}", ns.name())))
}

/// Applies Istio's default sidecar capture in `pod` with the mode's backend, `-x` given
/// `excluded` CIDRs.
fn apply(
    common: &Common,
    pod: &NetNs,
    mode: Mode,
    excluded: usize,
    ebpf: Option<&EbpfNode>,
) -> Result<(), Error> {
    let mut args: Vec<String> = SIDECAR_ARGS.iter().map(|a| (*a).to_owned()).collect();
    let x = args
        .iter()
        .position(|a| a == "-x")
        .expect("the sidecar flags have -x")
        + 1;
    args[x] = excluded_cidrs(excluded);
    match mode {
        Mode::Legacy | Mode::Nft => args.extend(["--force-iptables-version".into(), mode.name().into()]),
        Mode::Native => args.push("--native-nftables".into()),
        Mode::Ebpf | Mode::EbpfSkmsg | Mode::ExplicitEbpf => {
            args.extend(ebpf.expect("the eBPF node is loaded for the eBPF modes").args());
        }
        Mode::Direct | Mode::Explicit => return Ok(()),
    }
    args.push("--log_output_level=all:warn".into());
    run_capture_init(pod.command(&common.capture_init).args(&args), mode.name())
}

/// `n` /32s in 172.16.0.0/12, comma-separated.
fn excluded_cidrs(n: usize) -> String {
    (0..n)
        .map(|i| {
            let i = u32::try_from(i).expect("fewer than 2^20 CIDRs");
            let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 16, 0, 1)) + i);
            format!("{ip}/32")
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Makes `cmd`'s process join `cgroup` between `fork` and `exec`.
fn enter_on_exec(cmd: &mut Command, cgroup: &Path) -> Result<(), Error> {
    let procs = cgroup.join("cgroup.procs");
    let file = fs::OpenOptions::new()
        .write(true)
        .open(&procs)
        .map_err(io_step(format!("open {}", procs.display())))?;
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
    Ok(())
}

/// The eBPF nodes the modes need: the plain one (`ebpf`) and the one loaded with `--sk-msg`
/// (`ebpf-skmsg`).
#[derive(Debug, Default)]
struct EbpfNodes {
    plain: Option<EbpfNode>,
    sk_msg: Option<EbpfNode>,
}

impl EbpfNodes {
    /// The node of `mode`, if it is an eBPF mode.
    fn of(&self, mode: Mode) -> Option<&EbpfNode> {
        match mode {
            Mode::Ebpf | Mode::ExplicitEbpf => self.plain.as_ref(),
            Mode::EbpfSkmsg => self.sk_msg.as_ref(),
            _ => None,
        }
    }
}

/// The eBPF nodes, when a mode needs them.
fn ebpf_node(common: &Common, modes: &[Mode]) -> Result<EbpfNodes, Error> {
    let mut nodes = EbpfNodes::default();
    if modes.contains(&Mode::Ebpf) || modes.contains(&Mode::ExplicitEbpf) {
        nodes.plain = Some(EbpfNode::load(&common.capture_init, false)?);
    }
    if modes.contains(&Mode::EbpfSkmsg) {
        nodes.sk_msg = Some(EbpfNode::load(&common.capture_init, true)?);
    }
    Ok(nodes)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => values[n / 2],
        _ => f64::midpoint(values[n / 2 - 1], values[n / 2]),
    }
}

/// Measures `metrics` in every world, round-robin over `common.runs` repetitions, and returns
/// one result per world and metric.
fn round_robin(common: &Common, worlds: &[World], metrics: &[Metric]) -> Result<Vec<Value>, Error> {
    let mut samples = vec![vec![Vec::new(); metrics.len()]; worlds.len()];
    for run in 1..=common.runs {
        eprintln!("capture-bench: repetition {run} of {}", common.runs);
        for (m, &metric) in metrics.iter().enumerate() {
            for (w, world) in worlds.iter().enumerate() {
                samples[w][m].push(world.measure(common, metric)?);
            }
        }
    }
    let mut results = Vec::new();
    for (w, world) in worlds.iter().enumerate() {
        for (m, &metric) in metrics.iter().enumerate() {
            let seen = &samples[w][m];
            let values: Vec<f64> = seen
                .iter()
                .map(|s| s["value"].as_f64().unwrap_or(f64::NAN))
                .collect();
            let p99: Vec<f64> = seen.iter().filter_map(|s| s["p99"].as_f64()).collect();
            // The CPU time per connection of the worker (clients, proxy) and the server
            // (connection metrics only): robust where a rate is not, on a machine with other load.
            let cpu: Vec<f64> = seen
                .iter()
                .filter(|_| matches!(metric, Metric::Cps1 | Metric::Cps4))
                .filter_map(|s| {
                    let cpu = s["cpu_us"].as_f64()? + s["server_cpu_us"].as_f64()?;
                    Some(cpu / s["connections"].as_f64().filter(|&n| n > 0.0)?)
                })
                .collect();
            let sum = |key: &str| seen.iter().map(|s| s[key].as_u64().unwrap_or(0)).sum::<u64>();
            results.push(json!({
                "mode": world.mode.name(),
                "label": world.label,
                "metric": metric.name(),
                "unit": metric.unit(),
                "median": median(values.clone()),
                "samples": values,
                "p99_median": if p99.is_empty() { Value::Null } else { json!(median(p99)) },
                "cpu_us_per_connection": if cpu.is_empty() { Value::Null } else { json!(median(cpu)) },
                "connections": sum("connections"),
                "captured": sum("captured"),
                "explicit": sum("explicit"),
                "mismatches": sum("mismatches"),
            }));
        }
    }
    Ok(results)
}

fn datapath(args: &DatapathArgs) -> Result<Value, Error> {
    let common = &args.common;
    // Declared first, dropped last: after every namespace and worker is gone.
    let ebpf = ebpf_node(common, &args.modes)?;
    let worlds = args
        .modes
        .iter()
        .map(|&mode| World::new(common, mode, 0, ebpf.of(mode)))
        .collect::<Result<Vec<_>, _>>()?;
    let results = round_robin(common, &worlds, &args.metrics)?;
    let mut out = json!({"section": "datapath", "results": results});
    // The splice mode measures the splice only if the splice carried its connections.
    if let Some(node) = &ebpf.sk_msg {
        let spliced = node.spliced_sockets()?;
        if spliced == 0 {
            return Err(Error::Check {
                mode: Mode::EbpfSkmsg.name().to_owned(),
                metric: "all",
                detail: "no socket was spliced: the mode measured the plain eBPF path".to_owned(),
            });
        }
        out["ebpf_skmsg_spliced_sockets"] = json!(spliced);
    }
    if args.program_costs {
        out["program_costs"] = json!(program_costs(common, &worlds, &ebpf)?);
    }
    Ok(out)
}

/// One 1-client connection measurement in each eBPF world with the kernel counting, and what
/// each program cost per connection in it (`--program-costs`).
fn program_costs(common: &Common, worlds: &[World], nodes: &EbpfNodes) -> Result<Vec<Value>, Error> {
    let mut rows = Vec::new();
    for world in worlds {
        let Some(node) = nodes.of(world.mode) else {
            continue;
        };
        eprintln!("capture-bench: program costs in {}", world.label);
        let _counting = capture_e2e::enable_bpf_run_time_stats().map_err(io_step("bpf(BPF_ENABLE_STATS)"))?;
        let before = node.costs()?;
        let seen = world.measure(common, Metric::Cps1)?;
        let after = node.costs()?;
        #[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
        let connections = seen["connections"].as_u64().unwrap_or(0).max(1) as f64;
        for (program, (runs, time)) in after {
            let (runs_before, time_before) = before.get(&program).copied().unwrap_or((0, 0));
            let (runs, time) = (runs.saturating_sub(runs_before), time.saturating_sub(time_before));
            if runs == 0 {
                continue;
            }
            #[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
            let (runs, time) = (runs as f64, time as f64);
            rows.push(json!({
                "mode": world.mode.name(),
                "program": program,
                "runs_per_connection": runs / connections,
                "ns_per_run": time / runs,
                "ns_per_connection": time / connections,
            }));
        }
    }
    Ok(rows)
}

fn scale(args: &ScaleArgs) -> Result<Value, Error> {
    let common = &args.common;
    let ebpf = ebpf_node(common, &args.modes)?;
    let mut worlds = Vec::new();
    for &excluded in &args.excluded {
        for &mode in args.modes.iter().filter(|m| m.captured()) {
            eprintln!("capture-bench: {} with {excluded} excluded CIDRs", mode.name());
            let world = World::new(common, mode, excluded, ebpf.of(mode))?;
            worlds.push((excluded, world));
        }
    }
    let (counts, worlds): (Vec<usize>, Vec<World>) = worlds.into_iter().unzip();
    let mut results = round_robin(common, &worlds, &[args.metric])?;
    for (result, excluded) in results.iter_mut().zip(counts) {
        result["excluded"] = json!(excluded);
    }
    Ok(json!({"section": "scale", "results": results}))
}
