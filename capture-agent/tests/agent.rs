//! The node agent end to end: the real `capture-agent` binary on a test cgroup and a private
//! bpffs, its HTTP socket in a network namespace of the test's own (requests come from a thread
//! that entered it, never from the root namespace).
//!
//! Each test runs its body in a child of the test binary inside the test cgroup (the harness's
//! `EbpfWorld::run_in_cgroup`), so the agent, the pods' processes and their sockets all belong
//! to it. The parent removes what the agent left pinned, the bpffs and the cgroup afterwards,
//! also when the child failed; the child kills its agent and removes its namespaces on the way
//! out, also when it panics.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use capture_core::{
    ApplyOptions, Backend, CaptureSpec, Cidr, OutboundCidrs, Owner, OwnerGroups, Port, PortRange,
};
use capture_e2e::ebpf::{self, ChildWorld, EbpfWorld};
use capture_e2e::{
    APP_UID, Family, Listener, NetNs, PROXY_UID, TempDir, Topology, connect_as, connect_as_from, require_root,
};
use capture_ebpf::{Ebpf, PinDir};
use capture_ebpf_common::LAYOUT_VERSION;

/// Where the agent listens, inside its own namespace.
const LISTEN: &str = "127.0.0.1:15120";

/// Runs `body` inside a fresh test cgroup with a private bpffs (nothing loaded: the agent
/// loads the programs), in a child process; skips without root.
fn agent_row(body: impl FnOnce(&ChildWorld)) {
    if let Some(world) = ebpf::child_world() {
        body(&world);
        return;
    }
    if !require_root() {
        return;
    }
    // Dropped after the child: unloads whatever is pinned, then the bpffs and the cgroup go.
    let world = EbpfWorld::empty();
    world.run_in_cgroup();
}

/// A running `capture-agent`, killed (and waited for) when dropped.
struct Agent {
    child: Option<Child>,
    log: TempDir,
    /// The namespace its HTTP socket is in; dropped after the process.
    ns: NetNs,
}

impl Agent {
    /// Starts the agent on the row's cgroup and bpffs, watching `/run/netns` (where the
    /// harness pins its namespaces) unless `extra` names a `--netns-dir`, and collecting
    /// garbage every `gc_interval` seconds.
    fn start(world: &ChildWorld, gc_interval: u64, extra: &[&str]) -> Agent {
        let ns = NetNs::new();
        let log = TempDir::new("agent-log");
        let stderr = File::create(log.path().join("stderr")).expect("create the log file");
        let mut cmd = ns.command(env!("CARGO_BIN_EXE_capture-agent"));
        cmd.arg("--cgroup")
            .arg(&world.cgroup)
            .arg("--bpffs")
            .arg(&world.bpffs)
            .args(["--listen", LISTEN, "--gc-interval"])
            .arg(gc_interval.to_string())
            .args(extra)
            .env("CAPTURE_AGENT_LOG_LEVEL", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        if !extra.contains(&"--netns-dir") {
            cmd.args(["--netns-dir", "/run/netns"]);
        }
        let child = cmd.spawn().expect("start capture-agent");
        Agent {
            child: Some(child),
            log,
            ns,
        }
    }

    /// What the agent logged so far.
    fn log(&self) -> String {
        std::fs::read_to_string(self.log.path().join("stderr")).unwrap_or_default()
    }

    /// `GET path` from inside the agent's namespace: the status and the body.
    fn get(&self, path: &str) -> std::io::Result<(u16, String)> {
        let addr: SocketAddr = LISTEN.parse().expect("an address");
        self.ns.run(|| {
            let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            stream.set_read_timeout(Some(Duration::from_secs(10)))?;
            write!(stream, "GET {path} HTTP/1.1\r\nHost: agent\r\n\r\n")?;
            let mut text = String::new();
            stream.read_to_string(&mut text)?;
            let (head, body) = text
                .split_once("\r\n\r\n")
                .ok_or_else(|| std::io::Error::other(format!("no head end in {text:?}")))?;
            assert!(head.contains("\r\nConnection: close"), "{head}");
            let status = head
                .strip_prefix("HTTP/1.1 ")
                .and_then(|rest| rest.get(..3))
                .and_then(|code| code.parse().ok())
                .ok_or_else(|| std::io::Error::other(format!("bad status line in {head:?}")))?;
            Ok((status, body.to_owned()))
        })
    }

    /// `GET path`, which must answer `status`.
    #[track_caller]
    fn expect(&self, path: &str, status: u16) -> String {
        let (got, body) = self
            .get(path)
            .unwrap_or_else(|e| panic!("GET {path}: {e}\n--- agent log\n{}", self.log()));
        assert_eq!(got, status, "GET {path}: {body}\n--- agent log\n{}", self.log());
        body
    }

    /// Waits until `/readyz` answers 200 (at most 30 s; the first load verifies every program).
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, _)) = self.get("/readyz") {
                return;
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().expect("wait")) {
                panic!("capture-agent exited with {status}:\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "not ready after 30 s:\n{}", self.log());
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The current metrics, parsed.
    fn metrics(&self) -> Metrics {
        parse_metrics(&self.expect("/metrics", 200))
    }

    /// Waits (at most 30 s) for the agent to exit by itself.
    fn wait_exit(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("capture-agent did not exit:\n{}", self.log());
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM and waits (at most 10 s) for the exit.
    fn terminate(mut self) -> ExitStatus {
        self.term()
    }

    /// [`Agent::terminate`], and what the agent logged up to its exit.
    fn terminate_logged(mut self) -> (ExitStatus, String) {
        let status = self.term();
        (status, self.log())
    }

    fn term(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("a pid"));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("capture-agent did not exit on SIGTERM:\n{}", self.log());
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Series (`name{labels}`, as written) to values.
type Metrics = BTreeMap<String, f64>;

/// Parses the exposition: every line is a `#` comment or `name{labels} value`.
fn parse_metrics(text: &str) -> Metrics {
    let mut series = Metrics::new();
    for line in text.lines() {
        if line.starts_with('#') {
            assert!(
                line.starts_with("# HELP ") || line.starts_with("# TYPE ") || line.starts_with("# "),
                "{line:?}"
            );
            continue;
        }
        let (key, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value in {line:?}"));
        let value: f64 = value.parse().unwrap_or_else(|e| panic!("{line:?}: {e}"));
        let name = key.split('{').next().expect("a name");
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                && !name.starts_with(|c: char| c.is_ascii_digit()),
            "bad metric name in {line:?}"
        );
        if let Some(labels) = key.strip_prefix(name) {
            assert!(
                labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')),
                "bad labels in {line:?}"
            );
        }
        assert!(series.insert(key.to_owned(), value).is_none(), "{key} twice");
    }
    series
}

/// A series' value, 0 when absent.
fn value(metrics: &Metrics, key: &str) -> f64 {
    metrics.get(key).copied().unwrap_or(0.0)
}

/// The eBPF backend capture-init's `--backend ebpf` and capture-cni drive, on the row's
/// programs, never loading them (the agent did).
fn backend(world: &ChildWorld) -> Ebpf {
    Ebpf {
        pins: PinDir::new(&world.bpffs),
        cgroup: Some(world.cgroup.clone()),
        unload_command: "capture-init ebpf unload",
        load_if_absent: false,
        mount_bpffs: false,
    }
}

/// Enrolls `pod` with Istio's default sidecar capture; returns its netns cookie.
fn enroll(world: &ChildWorld, pod: &NetNs) -> u64 {
    enroll_with(world, pod, &CaptureSpec::sidecar())
}

/// Enrolls `pod` with `spec` (again: its configuration is replaced); returns its netns cookie.
fn enroll_with(world: &ChildWorld, pod: &NetNs, spec: &CaptureSpec) -> u64 {
    let backend = backend(world);
    let outcome = pod
        .run(|| backend.install(spec, ApplyOptions::default()))
        .unwrap_or_else(|e| panic!("enroll {}: {}", pod.name(), capture_core::chain(&*e)));
    let message = &outcome.steps.last().expect("a step").message;
    message
        .split("netns cookie ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no cookie in {message:?}"))
}

/// The pins are there and the programs attached to the row's cgroup (`bpftool cgroup tree`).
fn attached(world: &ChildWorld) -> Vec<String> {
    assert!(PinDir::new(&world.bpffs).is_loaded(), "the programs are pinned");
    let programs = ebpf::attached_to(&world.cgroup);
    assert_eq!(programs.len(), 11, "one link per cgroup program: {programs:?}");
    programs
}

/// The outbound proxy's listener, `:15001` as uid 1337.
fn outbound_proxy(topo: &Topology) -> Listener {
    Listener::spawn_proxy(
        &topo.pod,
        SocketAddr::new(Family::V4.unspecified(), 15001),
        "outbound-proxy",
    )
}

/// Connects from the pod as `uid` to `dst`; returns what answered.
fn connect(topo: &Topology, uid: u32, dst: SocketAddr) -> String {
    connect_as(&topo.pod, uid, uid, dst)
        .unwrap_or_else(|e| panic!("{uid} → {dst}: {e}"))
        .0
}

/// Ready after loading, healthy, and the metrics parse, with every family the agent promises.
#[test]
fn agent_loads_the_programs_and_serves_health_readiness_and_metrics() {
    agent_row(|world| {
        let mut agent = Agent::start(world, 3600, &[]);
        agent.wait_ready();
        assert_eq!(agent.expect("/healthz", 200), "ok\n");
        assert_eq!(agent.expect("/readyz", 200), "ready\n");
        agent.expect("/nothing", 404);
        attached(world);
        let metrics = agent.metrics();
        for key in [
            "capture_maps_readable",
            "capture_connections_total{direction=\"outbound\"}",
            "capture_passed_total",
            "capture_bypassed_total{reason=\"uid\"}",
            "capture_inbound_refused_total",
            "capture_pods_enrolled",
            "capture_map_entries{map=\"POD_CONFIG\"}",
            "capture_map_capacity{map=\"POD_STATS\"}",
            "capture_gc_reclaimed_pods_total",
            "capture_program_runs_total{program=\"capture_connect4\"}",
            "capture_program_run_seconds_total{program=\"capture_sockops\"}",
            "capture_program_runs_total{program=\"capture_sk_lookup\"}",
        ] {
            assert!(metrics.contains_key(key), "no {key} in {metrics:?}");
        }
        assert_eq!(value(&metrics, "capture_maps_readable"), 1.0);
        assert_eq!(value(&metrics, "capture_pods_enrolled"), 0.0);
        assert_eq!(
            value(&metrics, "capture_map_capacity{map=\"POD_CONFIG\"}"),
            4096.0
        );
        assert!(
            agent.log().contains("eBPF programs loaded, attached to"),
            "{}",
            agent.log()
        );
    });
}

/// One captured and one bypassed (proxy uid) connection move the node's and the pod's
/// counters by exactly one each.
#[test]
fn agent_counts_a_pods_captured_and_bypassed_connections() {
    agent_row(|world| {
        let mut agent = Agent::start(world, 3600, &[]);
        agent.wait_ready();
        let topo = Topology::new();
        let proxy = outbound_proxy(&topo);
        let app = Listener::spawn(&topo.peer, topo.peer_addr(Family::V4, 80), "peer-app");
        let cookie = enroll(world, &topo.pod);
        let pod = |name: &str, label: &str| {
            let sep = if label.is_empty() { "" } else { "," };
            format!("capture_pod_{name}_total{{netns_cookie=\"{cookie}\"{sep}{label}}}")
        };
        let before = agent.metrics();
        assert_eq!(value(&before, "capture_pods_enrolled"), 1.0);
        let outbound = pod("connections", "direction=\"outbound\"");
        assert!(
            before.contains_key(&outbound),
            "the pod's series exist from enrollment: {before:?}"
        );

        let dst = topo.peer_addr(Family::V4, 80);
        assert_eq!(connect(&topo, APP_UID, dst), proxy.token(), "the app is captured");
        assert_eq!(
            connect(&topo, PROXY_UID, dst),
            app.token(),
            "the proxy bypasses capture"
        );

        let after = agent.metrics();
        let delta = |key: &str| value(&after, key) - value(&before, key);
        assert_eq!(delta("capture_connections_total{direction=\"outbound\"}"), 1.0);
        assert_eq!(delta("capture_passed_total"), 1.0);
        assert_eq!(delta("capture_bypassed_total{reason=\"uid\"}"), 1.0);
        assert_eq!(delta(&outbound), 1.0);
        assert_eq!(delta(&pod("passed", "")), 1.0);
        assert_eq!(delta(&pod("bypassed", "reason=\"uid\"")), 1.0);
        assert_eq!(delta(&pod("connections", "direction=\"inbound\"")), 0.0);
        assert_eq!(value(&after, "capture_map_entries{map=\"POD_STATS\"}"), 1.0);
    });
}

/// One connection left alone for each reason the connect walk has moves that reason's
/// `capture_bypassed_total{reason=…}` (node-wide and the pod's) by exactly one, the total
/// `capture_passed_total` by one each, and `capture-init ebpf stats` prints the same counts.
#[test]
fn agent_counts_each_bypass_reason_once() {
    const PROXY_GID: u32 = 1338;
    const EXCLUDED_GROUP: u32 = 4242;
    const EXCLUDED_PORT: u16 = 9090;
    agent_row(|world| {
        let mut agent = Agent::start(world, 3600, &[]);
        agent.wait_ready();
        let topo = Topology::new();
        let _proxy = outbound_proxy(&topo);
        let peer = topo.peer_addr(Family::V4, 80);
        let app = Listener::spawn(&topo.peer, peer, "peer-app");
        let excluded = Listener::spawn(
            &topo.peer,
            topo.peer_addr(Family::V4, EXCLUDED_PORT),
            "peer-excluded",
        );
        let peer6 = topo.peer_addr(Family::V6, 80);
        let app6 = Listener::spawn(&topo.peer, peer6, "peer-app6");
        let local = Listener::spawn(&topo.pod, topo.pod_addr(Family::V4, 8080), "pod-app");
        let loopback = Listener::spawn(
            &topo.pod,
            "127.0.0.1:8081".parse().expect("an address"),
            "pod-loopback",
        );

        // The peer's port 80 is excluded by address; every rule before that one still has its
        // say, so each of these passes for its own reason.
        let mut spec = CaptureSpec::sidecar();
        spec.owner.gids = vec![Owner::Id(PROXY_GID)];
        spec.outbound.owner_groups = OwnerGroups::All {
            except: vec![Owner::Id(EXCLUDED_GROUP)],
        };
        spec.outbound.exclude_ports = vec![PortRange::single(Port::new(EXCLUDED_PORT))];
        spec.outbound.exclude_cidrs = vec![Cidr::new(topo.peer_ip(Family::V4), 32).expect("a CIDR")];
        let cookie = enroll_with(world, &topo.pod, &spec);
        let before = agent.metrics();
        let stats_before = stats(world);
        let reason = |r: &str| format!("capture_bypassed_total{{reason=\"{r}\"}}");
        let pod_reason =
            |r: &str| format!("capture_pod_bypassed_total{{netns_cookie=\"{cookie}\",reason=\"{r}\"}}");
        for r in [
            "port",
            "passthrough",
            "loopback",
            "uid",
            "gid",
            "group",
            "cidr",
            "not_included",
            "ipv6",
        ] {
            assert!(before.contains_key(&reason(r)), "no {} in {before:?}", reason(r));
            assert!(
                before.contains_key(&pod_reason(r)),
                "no {} in {before:?}",
                pod_reason(r)
            );
        }

        let reply = |uid, gid, dst| {
            connect_as(&topo.pod, uid, gid, dst)
                .unwrap_or_else(|e| panic!("{uid}:{gid} → {dst}: {e}"))
                .0
        };
        let mut expected = vec![];
        assert_eq!(
            reply(APP_UID, APP_UID, topo.peer_addr(Family::V4, EXCLUDED_PORT)),
            excluded.token()
        );
        expected.push(("port", "passed_excluded_port"));
        let (answer, _) = connect_as_from(
            &topo.pod,
            PROXY_UID,
            PROXY_GID,
            "127.0.0.6".parse().expect("an address"),
            topo.pod_addr(Family::V4, 8080),
        )
        .expect("passthrough connect");
        assert_eq!(answer, local.token());
        expected.push(("passthrough", "passed_passthrough_source"));
        assert_eq!(
            reply(APP_UID, APP_UID, "127.0.0.1:8081".parse().expect("an address")),
            loopback.token()
        );
        expected.push(("loopback", "passed_loopback"));
        assert_eq!(reply(PROXY_UID, PROXY_UID, peer), app.token());
        expected.push(("uid", "passed_proxy_uid"));
        assert_eq!(reply(APP_UID, PROXY_GID, peer), app.token());
        expected.push(("gid", "passed_proxy_gid"));
        assert_eq!(reply(APP_UID, EXCLUDED_GROUP, peer), app.token());
        expected.push(("group", "passed_owner_group"));
        assert_eq!(reply(APP_UID, APP_UID, peer), app.token());
        expected.push(("cidr", "passed_excluded_cidr"));
        // No IPv6 capture for this pod.
        assert_eq!(reply(APP_UID, APP_UID, peer6), app6.token());
        expected.push(("ipv6", "passed_ipv6_not_captured"));
        // Only another network included: the peer is simply not included.
        let mut narrow = CaptureSpec::sidecar();
        narrow.outbound.include = OutboundCidrs::Only(vec![
            Cidr::new("192.0.2.0".parse().expect("an address"), 24).expect("a CIDR"),
        ]);
        assert_eq!(enroll_with(world, &topo.pod, &narrow), cookie);
        assert_eq!(reply(APP_UID, APP_UID, peer), app.token());
        expected.push(("not_included", "passed_not_included"));

        let after = agent.metrics();
        let stats_after = stats(world);
        let delta = |key: &str| value(&after, key) - value(&before, key);
        for (r, line) in &expected {
            assert_eq!(delta(&reason(r)), 1.0, "{}", reason(r));
            assert_eq!(delta(&pod_reason(r)), 1.0, "{}", pod_reason(r));
            assert_eq!(
                stat(&stats_after, line) - stat(&stats_before, line),
                1,
                "{line} in\n{stats_after}"
            );
        }
        let passed = expected.len() as f64;
        assert_eq!(delta("capture_passed_total"), passed);
        assert_eq!(
            delta(&format!("capture_pod_passed_total{{netns_cookie=\"{cookie}\"}}")),
            passed
        );
        assert_eq!(delta("capture_connections_total{direction=\"outbound\"}"), 0.0);
    });
}

/// An inbound connection refused because the pod's proxy has no inbound listener is logged by
/// the `sk_lookup` program (aya-log, the pinned `AYA_LOGS` ring buffer of the pod's own
/// instance) and the agent writes the record to its log, naming the port and the pod. The
/// agent runs with `--log-json`: every line it writes is one JSON object.
#[test]
fn agent_logs_an_inbound_connection_refused_for_lack_of_a_listener() {
    agent_row(|world| {
        let mut agent = Agent::start(world, 3600, &["--log-json"]);
        agent.wait_ready();
        let topo = Topology::new();
        let cookie = enroll(world, &topo.pod);
        let dst = topo.pod_addr(Family::V4, 8080);
        let refused = connect_as(&topo.peer, 0, 0, dst).expect_err("no proxy listens on 15006");
        assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused, "{refused}");
        let line = format!(
            "inbound connection to port 8080 of netns {cookie} refused: the proxy has no inbound listener"
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while !agent.log().contains(&line) {
            assert!(
                Instant::now() < deadline,
                "no {line:?} within 10 s:\n{}",
                agent.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
        let logged = agent.log();
        let records: Vec<serde_json::Value> = logged
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect();
        for r in &records {
            assert!(
                r["time"].as_str().is_some_and(|t| t.ends_with('Z')) && r["level"].is_string(),
                "{r}"
            );
        }
        let record = records
            .iter()
            .find(|r| r["msg"].as_str().is_some_and(|m| m.contains(&line)))
            .expect("found above");
        assert_eq!(
            (record["level"].as_str(), record["scope"].as_str()),
            (Some("warn"), Some("ebpf")),
            "{record}"
        );
        assert_eq!(value(&agent.metrics(), "capture_inbound_refused_total"), 1.0);
    });
}

/// What `capture-init ebpf stats` prints for the row's pins (its counters' lines).
fn stats(world: &ChildWorld) -> String {
    let stats = capture_ebpf::Node::open(&PinDir::new(&world.bpffs))
        .and_then(|node| node.stats())
        .unwrap_or_else(|e| panic!("read the counters: {e}"));
    stats.to_string()
}

/// The value of one `name value` line of [`stats`].
fn stat(stats: &str, name: &str) -> u64 {
    stats
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{stats}"))
}

/// A pod whose namespace is deleted without unenrolling is reclaimed by the inotify path alone
/// (the periodic gc is an hour away), and its series go.
#[test]
fn agent_reclaims_a_pod_whose_namespace_is_deleted_without_a_manual_gc() {
    agent_row(|world| {
        let mut agent = Agent::start(world, 3600, &[]);
        agent.wait_ready();
        let live = Topology::new();
        enroll(world, &live.pod);
        let gone_cookie = {
            let gone = Topology::new();
            enroll(world, &gone.pod)
        };
        // The namespaces' names were removed (as `ip netns del` does) when `gone` dropped.
        let deadline = Instant::now() + Duration::from_secs(15);
        let metrics = loop {
            let metrics = agent.metrics();
            // The pod leaves POD_CONFIG first, its counters after, and is counted once the whole
            // pass ends; a scrape is not atomic with the pass: wait for all of it, so the
            // reading below is not taken in between.
            let done = value(&metrics, "capture_pods_enrolled") == 1.0
                && value(&metrics, "capture_gc_reclaimed_pods_total") == 1.0
                && value(&metrics, "capture_map_entries{map=\"POD_STATS\"}") == 1.0
                && !metrics
                    .keys()
                    .any(|k| k.contains(&format!("netns_cookie=\"{gone_cookie}\"")));
            if done || Instant::now() > deadline {
                break metrics;
            }
            thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(
            value(&metrics, "capture_pods_enrolled"),
            1.0,
            "not reclaimed within 15 s:\n{}",
            agent.log()
        );
        assert_eq!(value(&metrics, "capture_gc_reclaimed_pods_total"), 1.0);
        assert!(
            !metrics
                .keys()
                .any(|k| k.contains(&format!("netns_cookie=\"{gone_cookie}\""))),
            "{metrics:?}"
        );
        assert_eq!(value(&metrics, "capture_map_entries{map=\"POD_STATS\"}"), 1.0);
        assert!(
            agent.log().contains(&format!("netns_cookie={gone_cookie}")),
            "the reclaimed pod is logged:\n{}",
            agent.log()
        );
    });
}

/// A namespace directory missing at start (no pod on the node yet) is watched for: once it
/// appears, a deletion in it starts a gc (the periodic one is an hour away, and it is the only
/// directory watched).
#[test]
fn agent_watches_a_namespace_directory_that_appears_later() {
    agent_row(|world| {
        let base = TempDir::new("agent-netns-dir");
        let dir = base.path().join("netns");
        let mut agent = Agent::start(world, 3600, &["--netns-dir", path(&dir)]);
        agent.wait_ready();
        let runs = |agent: &Agent| value(&agent.metrics(), "capture_gc_runs_total");
        // The gc at start.
        let deadline = Instant::now() + Duration::from_secs(10);
        while runs(&agent) < 1.0 {
            assert!(Instant::now() < deadline, "no gc at start:\n{}", agent.log());
            thread::sleep(Duration::from_millis(20));
        }
        std::fs::create_dir(&dir).expect("create the directory");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !agent.log().contains(&format!(
            "watching for deleted network namespaces\tdir={}",
            dir.display()
        )) {
            assert!(
                Instant::now() < deadline,
                "the new directory is not watched:\n{}",
                agent.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
        let before = runs(&agent);
        let pin = dir.join("cni-1234");
        std::fs::write(&pin, "").expect("a namespace pin");
        std::fs::remove_file(&pin).expect("delete it");
        let deadline = Instant::now() + Duration::from_secs(10);
        while runs(&agent) <= before {
            assert!(
                Instant::now() < deadline,
                "no gc after the deletion:\n{}",
                agent.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
    });
}

/// SIGTERM: exit 0 with everything left loaded and the pod still captured; a second agent
/// reuses the pins (ready again, the same six links, no second program set).
#[test]
fn agent_exits_on_sigterm_leaving_pods_captured_and_a_restart_reuses_the_pins() {
    agent_row(|world| {
        let mut first = Agent::start(world, 3600, &[]);
        first.wait_ready();
        let topo = Topology::new();
        let proxy = outbound_proxy(&topo);
        enroll(world, &topo.pod);
        let dst = topo.peer_addr(Family::V4, 80);
        assert_eq!(connect(&topo, APP_UID, dst), proxy.token());
        let programs = attached(world);

        let status = first.terminate();
        assert_eq!(status.code(), Some(0), "{status}");
        assert_eq!(attached(world), programs, "the same links stay attached");
        assert_eq!(connect(&topo, APP_UID, dst), proxy.token(), "still captured");

        let mut second = Agent::start(world, 3600, &[]);
        second.wait_ready();
        assert!(second.log().contains("reusing them"), "{}", second.log());
        assert_eq!(attached(world), programs, "no second program set");
        assert_eq!(value(&second.metrics(), "capture_pods_enrolled"), 1.0);
        assert_eq!(connect(&topo, APP_UID, dst), proxy.token());
    });
}

/// A new agent on a node loaded by an older capture (pins of map layout v1) upgrades it in
/// place: the enrolled pod stays captured, the same links carry the new programs, the layout is
/// this capture's, and a restart after that changes nothing.
#[test]
fn agent_upgrades_the_programs_of_an_older_capture_in_place() {
    agent_row(|world| {
        let mut first = Agent::start(world, 3600, &[]);
        first.wait_ready();
        let topo = Topology::new();
        let proxy = outbound_proxy(&topo);
        enroll(world, &topo.pod);
        let dst = topo.peer_addr(Family::V4, 80);
        assert_eq!(first.terminate().code(), Some(0));
        let before = attached(world);
        let layout = world.pin_dir.join("maps/LAYOUT");
        let out = Command::new("bpftool")
            .args(["map", "update", "pinned"])
            .arg(&layout)
            .args(["key", "0", "0", "0", "0", "value", "1", "0", "0", "0"])
            .output()
            .expect("run bpftool");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

        let mut second = Agent::start(world, 3600, &[]);
        second.wait_ready();
        let log = second.log();
        assert!(
            log.contains("eBPF programs upgraded: programs replaced on 11 cgroup hooks and for 1 pod"),
            "{log}"
        );
        assert!(
            log.contains(&format!("map layout v1 -> v{LAYOUT_VERSION}")),
            "{log}"
        );
        let after = attached(world);
        assert_eq!(
            after.len(),
            before.len(),
            "the same links: {before:?} -> {after:?}"
        );
        assert_ne!(after, before, "new programs on them");
        assert_eq!(connect(&topo, APP_UID, dst), proxy.token(), "still captured");
        assert_eq!(second.terminate().code(), Some(0));

        let mut third = Agent::start(world, 3600, &[]);
        third.wait_ready();
        assert!(!third.log().contains("upgraded"), "{}", third.log());
        assert_eq!(attached(world), after);
    });
}

/// Pins of another map layout are refused, as capture-init refuses them: exit 1 naming both
/// versions, nothing unloaded or reloaded.
#[test]
fn agent_refuses_pins_of_another_map_layout() {
    agent_row(|world| {
        let mut first = Agent::start(world, 3600, &[]);
        first.wait_ready();
        assert_eq!(first.terminate().code(), Some(0));
        let programs = attached(world);
        // What a capture with map layout v999 would have pinned.
        let layout = world.pin_dir.join("maps/LAYOUT");
        let out = Command::new("bpftool")
            .args(["map", "update", "pinned"])
            .arg(&layout)
            .args(["key", "0", "0", "0", "0", "value", "0xe7", "0x03", "0", "0"])
            .output()
            .expect("run bpftool");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let mut second = Agent::start(world, 3600, &[]);
        let status = second.wait_exit();
        assert_eq!(status.code(), Some(1), "{status}");
        let log = second.log();
        assert!(
            log.contains("map layout v999") && log.contains(&format!("map layout v{LAYOUT_VERSION}")),
            "{log}"
        );
        assert!(
            log.contains("capture-init ebpf unload"),
            "names the way out: {log}"
        );
        assert_eq!(attached(world), programs, "nothing unloaded or reloaded");
    });
}

/// With `--cni-conf-dir`, `/readyz` is 503 naming why until the plugin is chained into the
/// node's configuration, then 200; the entry is capture-cni's installer's.
#[test]
fn agent_is_ready_only_once_the_cni_plugin_is_chained() {
    agent_row(|world| {
        let dirs = TempDir::new("agent-cni");
        let (conf, bin) = (dirs.path().join("net.d"), dirs.path().join("bin"));
        std::fs::create_dir_all(&conf).expect("conf dir");
        let plugin = dirs.file("capture-cni", "#!/bin/sh\n");
        let mut agent = Agent::start(
            world,
            3600,
            &[
                "--cni-conf-dir",
                path(&conf),
                "--cni-bin-dir",
                path(&bin),
                "--cni-plugin",
                path(&plugin),
                "--cni-interval",
                "1",
            ],
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        let body = loop {
            match agent.get("/readyz") {
                Ok((503, body)) if body.contains("no valid .conf or .conflist") => break body,
                Ok((200, body)) => panic!("ready without a CNI configuration: {body}"),
                _ => {}
            }
            assert!(Instant::now() < deadline, "no CNI reason:\n{}", agent.log());
            thread::sleep(Duration::from_millis(50));
        };
        assert!(body.starts_with("CNI plugin not chained: "), "{body}");
        assert_eq!(body.lines().count(), 1, "{body:?}");
        std::fs::write(
            conf.join("10-bridge.conflist"),
            r#"{"cniVersion":"1.0.0","name":"k8s","plugins":[{"type":"bridge"}]}"#,
        )
        .expect("write the primary configuration");
        agent.wait_ready();
        let chained = std::fs::read_to_string(conf.join("10-bridge.conflist")).expect("read");
        assert!(chained.contains("\"type\": \"capture-cni\""), "{chained}");
        assert!(bin.join("capture-cni").is_file());
    });
}

/// On SIGTERM the agent removes the plugin's entry and binary (it is the node's installer);
/// with `--cni-keep-on-exit` (upgrades: the next agent takes over) it leaves both.
#[test]
fn agent_removes_the_cni_plugin_on_sigterm_unless_kept() {
    agent_row(|world| {
        let dirs = TempDir::new("agent-cni");
        let (conf, bin) = (dirs.path().join("net.d"), dirs.path().join("bin"));
        std::fs::create_dir_all(&conf).expect("conf dir");
        let plugin = dirs.file("capture-cni", "#!/bin/sh\n");
        let list = conf.join("10-bridge.conflist");
        std::fs::write(
            &list,
            r#"{"cniVersion":"1.0.0","name":"k8s","plugins":[{"type":"bridge"}]}"#,
        )
        .expect("write the primary configuration");
        let chained = || {
            std::fs::read_to_string(&list)
                .expect("read")
                .contains("\"type\": \"capture-cni\"")
        };
        let flags = |keep: bool| {
            let mut flags = vec![
                "--cni-conf-dir",
                path(&conf),
                "--cni-bin-dir",
                path(&bin),
                "--cni-plugin",
                path(&plugin),
                "--cni-interval",
                "1",
            ];
            if keep {
                flags.push("--cni-keep-on-exit");
            }
            flags
        };
        let mut kept = Agent::start(world, 3600, &flags(true));
        kept.wait_ready();
        assert!(chained() && bin.join("capture-cni").is_file());
        assert_eq!(kept.terminate().code(), Some(0));
        assert!(chained(), "--cni-keep-on-exit leaves the entry");
        assert!(bin.join("capture-cni").is_file(), "and the binary");

        let mut agent = Agent::start(world, 3600, &flags(false));
        agent.wait_ready();
        let (status, log) = agent.terminate_logged();
        assert_eq!(status.code(), Some(0), "{log}");
        assert!(!chained(), "entry removed: {log}");
        assert!(!bin.join("capture-cni").exists(), "binary removed: {log}");
    });
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}
