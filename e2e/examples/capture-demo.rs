//! A live demonstration of capture on a throwaway pod: creates a pod and a peer network
//! namespace joined by a veth pair (no route anywhere else), applies Istio's default sidecar
//! capture in the pod with the real `capture-init`, runs the example transparent proxy
//! (`capture-core/examples/transparent-proxy.rs`) on 15001/15006 as uid 1337, sends a few
//! connections, prints where each one landed (through the proxy, with the original destination
//! it forwarded to, or directly) and the proxy's log, then removes everything it created.
//!
//! Usage: `capture-demo [PATH-TO-capture-init [FLAGS…]]` (default: the `capture-init` cargo
//! built beside this example, in the directory above `examples/`; the proxy is the
//! `transparent-proxy` example beside this one). Needs root. `scripts/demo` builds all three
//! and runs it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use capture_e2e::{
    APP_UID, Family, Listener, PROXY_UID, ProxyProcess, SIDECAR_ARGS, Topology, connect_as, connect_as_from,
    passthrough,
};

fn main() -> ExitCode {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("capture-demo: needs root (network namespaces and iptables)");
        return ExitCode::from(1);
    }
    // capture-demo [CAPTURE-INIT [FLAGS…]]: FLAGS (say `--native-nftables`) choose the backend.
    let flags: Vec<String> = std::env::args().skip(2).collect();
    let capture_init = std::env::args_os().nth(1).map(PathBuf::from).unwrap_or_else(|| {
        let exe = std::env::current_exe().expect("own path");
        // target/<profile>/examples/capture-demo → target/<profile>/capture-init
        let examples = exe.parent().expect("a directory holds the example");
        examples.with_file_name("capture-init")
    });
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    // target/<profile>/examples/capture-demo → target/<profile>/examples/transparent-proxy
    let proxy = std::env::current_exe()
        .expect("own path")
        .with_file_name("transparent-proxy");
    if !proxy.exists() {
        eprintln!(
            "capture-demo: no proxy at {}: build it with `cargo build -p capture-core --example transparent-proxy`",
            proxy.display()
        );
        return ExitCode::from(1);
    }
    match demo(&capture_init, &proxy, &flags) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("capture-demo: {e}");
            ExitCode::from(1)
        }
    }
}

fn capture_init(bin: &PathBuf, topo: &Topology, extra: &[&str]) -> Result<(), String> {
    let netns = topo.pod.path().display().to_string();
    let mut args: Vec<&str> = SIDECAR_ARGS.to_vec();
    args.extend(["--dual-stack", "--network-namespace", &netns]);
    args.extend(extra);
    println!(
        "$ capture-init {}",
        args.iter().map(|a| shell_word(a)).collect::<Vec<_>>().join(" ")
    );
    let out = Command::new(bin)
        .args(&args)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    for line in String::from_utf8_lossy(&out.stderr).lines() {
        println!("  {line}");
    }
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("capture-init exited with {}", out.status))
    }
}

fn shell_word(word: &str) -> String {
    if word.is_empty() || word.contains(['*', ' ']) {
        format!("'{word}'")
    } else {
        word.to_owned()
    }
}

/// Whether the flags ask for `-m TPROXY`, whose inbound listener must be transparent.
fn tproxy(flags: &[&str]) -> bool {
    flags
        .windows(2)
        .any(|w| matches!(w[0], "-m" | "--istio-inbound-interception-mode") && w[1] == "TPROXY")
}

fn demo(bin: &PathBuf, proxy_bin: &Path, flags: &[&str]) -> Result<(), String> {
    // Dropping the topology removes both namespaces (and with them the veth pair and every
    // rule), also on an early return.
    let topo = Topology::new();
    let (pod4, peer4) = (topo.pod_ip(Family::V4), topo.peer_ip(Family::V4));
    let (pod6, peer6) = (topo.pod_ip(Family::V6), topo.peer_ip(Family::V6));
    println!("pod  netns {}: {pod4}, {pod6}", topo.pod.name());
    println!("peer netns {}: {peer4}, {peer6}", topo.peer.name());
    println!();
    capture_init(bin, &topo, flags)?;
    println!();

    // The sidecar: the example proxy. Started as root, it binds 15001 and 15006 and then runs
    // as uid 1337, which capture leaves alone.
    let proxy_args: &[&str] = if tproxy(flags) { &["--transparent"] } else { &[] };
    println!(
        "$ transparent-proxy --user {PROXY_UID}:{PROXY_UID}{}",
        proxy_args.iter().map(|a| format!(" {a}")).collect::<String>()
    );
    let proxy = ProxyProcess::start(&topo.pod, proxy_bin, proxy_args);
    for line in proxy.lines() {
        println!("  {line}");
    }
    println!();

    let any = |family: Family, port| SocketAddr::new(family.unspecified(), port);
    let peer_app = Listener::spawn(&topo.peer, any(Family::V6, 80), "peer app :80");
    let pod_app = Listener::spawn(&topo.pod, any(Family::V6, 8080), "pod app :8080");
    let pod_status = Listener::spawn(&topo.pod, any(Family::V6, 15021), "pod app :15021");
    let listeners = [&peer_app, &pod_app, &pod_status];

    type Connect<'a> = Box<dyn Fn() -> std::io::Result<(String, SocketAddr)> + 'a>;
    let cases: Vec<(String, Connect)> = vec![
        (
            format!("app   (uid {APP_UID}) in pod  -> {peer4}:80"),
            Box::new(|| connect_as(&topo.pod, APP_UID, APP_UID, SocketAddr::new(peer4, 80))),
        ),
        (
            format!("app   (uid {APP_UID}) in pod  -> [{peer6}]:80"),
            Box::new(|| connect_as(&topo.pod, APP_UID, APP_UID, SocketAddr::new(peer6, 80))),
        ),
        (
            format!("proxy (uid {PROXY_UID}) in pod  -> {peer4}:80"),
            Box::new(|| connect_as(&topo.pod, PROXY_UID, PROXY_UID, SocketAddr::new(peer4, 80))),
        ),
        (
            format!("client in peer        -> {pod4}:8080"),
            Box::new(|| connect_as(&topo.peer, APP_UID, APP_UID, SocketAddr::new(pod4, 8080))),
        ),
        (
            format!("client in peer        -> {pod4}:15021 (excluded)"),
            Box::new(|| connect_as(&topo.peer, APP_UID, APP_UID, SocketAddr::new(pod4, 15021))),
        ),
        (
            format!("proxy from 127.0.0.6  -> {pod4}:8080 (passthrough)"),
            Box::new(|| {
                connect_as_from(
                    &topo.pod,
                    PROXY_UID,
                    PROXY_UID,
                    passthrough(Family::V4),
                    SocketAddr::new(pod4, 8080),
                )
            }),
        ),
    ];
    let logged_before = proxy.lines().len();
    for (what, connect) in &cases {
        let line = match connect() {
            Ok((reply, client)) => {
                let seen = listeners.iter().flat_map(|l| l.take_accepted()).next();
                match seen {
                    // The app saw another connection than the client's: the proxy's.
                    Some(seen)
                        if SocketAddr::new(seen.peer.ip().to_canonical(), seen.peer.port()) != client =>
                    {
                        let logged = proxy.wait_for(&format!(" {client} -> "));
                        match original_destination(&logged) {
                            Some(orig) => format!(
                                "captured: reached {reply} through the proxy, original destination {orig}"
                            ),
                            None => format!("captured: reached {reply} through the proxy"),
                        }
                    }
                    Some(_) => format!("reached {reply} directly"),
                    None => format!("reached {reply}"),
                }
            }
            Err(e) => format!("failed: {e}"),
        };
        println!("{what:<52} {line}");
    }
    println!();
    println!("the proxy logged:");
    for line in proxy.lines().iter().skip(logged_before) {
        println!("  {line}");
    }
    println!();
    drop(cases);
    let cleanup: Vec<&str> = flags.iter().copied().chain(["--cleanup-only"]).collect();
    capture_init(bin, &topo, &cleanup)?;
    drop((proxy, peer_app, pod_app, pod_status));
    drop(topo);
    println!("removed both network namespaces");
    Ok(())
}

/// The original destination in a line of the proxy's log: `… -> DST (original destination): …`.
fn original_destination(line: &str) -> Option<&str> {
    let (before, _) = line.split_once(" (original destination)")?;
    before.rsplit_once(" -> ").map(|(_, dst)| dst)
}
